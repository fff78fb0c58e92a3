"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted per image by a small meta-network."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..options.learners import CoCoOpConfig
from .base import LEARNERS, Learner
from .prompts import ClassPrompts, initial_context

#: activation floats kept per token and text layer in a forward + backward (qkv, attention, 4× MLP, norms, residuals)
FLOATS_PER_TOKEN_LAYER = 20


@LEARNERS.register("cocoop")
class CoCoOp(Learner):
    """``π_i = meta(z_i)`` with ``meta = Linear(d, d//16) → ReLU → Linear(d//16, D_t)`` on the normalised image
    feature; image ``i`` gets the prompts ``[SOS, ctx + π_i, class, ".", EOT]`` for every class.

    All ``B × C`` prompts go through the text encoder batched, in chunks (see :class:`CoCoOpConfig`): the result equals
    the reference's per-image loop. ViT-B/16, n_ctx=4: ``2,048 + 33,312 = 35,360`` parameters.
    """

    Config = CoCoOpConfig
    image_conditioned = True

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        ctx, self.infix = initial_context(backbone, cfg.n_ctx, cfg.init, cfg.init_std)
        self.ctx = nn.Parameter(ctx)
        d = backbone.embed_dim
        hidden = max(1, d // 16)
        self.meta = nn.Sequential(OrderedDict(linear1=nn.Linear(d, hidden), relu=nn.ReLU(inplace=True),
                                              linear2=nn.Linear(hidden, backbone.text_width)))
        self.prompts = ClassPrompts(backbone, classnames, cfg.n_ctx, infix=self.infix)

    def set_classnames(self, backbone, classnames, template=None, dataset=None):
        super().set_classnames(backbone, classnames, template, dataset)
        self.prompts = ClassPrompts(backbone, classnames, self.cfg.n_ctx, infix=self.infix).to(self.ctx.device)

    def chunk_size(self, backbone, training: bool) -> int:
        """Sequences per text-encoder call: ``cfg.chunk_size``, or as many as fit ``cfg.memory_budget_mb``."""
        if self.cfg.chunk_size > 0:
            return self.cfg.chunk_size
        layers = backbone.num_text_layers if training else 1
        per_sequence = 4 * FLOATS_PER_TOKEN_LAYER * self.prompts.fixed.shape[1] * backbone.text_width * layers
        return max(1, int(self.cfg.memory_budget_mb * 2 ** 20 // per_sequence))

    def text_features(self, backbone, image_features=None):
        """Class features ``[B, C, E]`` for normalised image features ``[B, d]``."""
        if image_features is None:
            raise ConfigError("CoCoOp's class features depend on the image: pass the image features "
                              "(PromptedCLIP does; evaluation cannot precompute them once).")
        shift = self.meta(image_features.to(self.meta.linear1.weight.dtype))
        ctx = self.ctx + shift.unsqueeze(1)  # [B, n_ctx, D_t]
        batch, classes = ctx.shape[0], self.prompts.num_classes
        training = torch.is_grad_enabled() and self.ctx.requires_grad
        pairs = torch.arange(batch * classes, device=ctx.device)
        features = [self._encode(backbone, ctx[chunk // classes], chunk % classes, training)
                    for chunk in pairs.split(self.chunk_size(backbone, training))]
        return torch.cat(features).view(batch, classes, -1)

    def _encode(self, backbone, ctx: torch.Tensor, classes: torch.Tensor, training: bool) -> torch.Tensor:
        """Features of class ``classes[k]`` with context ``ctx[k]``."""
        embeddings, eot = self.prompts.assemble_pairs(ctx, classes), self.prompts.eot[classes]
        if training and self.cfg.checkpoint:
            return checkpoint(backbone.encode_text, embeddings, eot, use_reentrant=False)
        return backbone.encode_text(embeddings, eot)
