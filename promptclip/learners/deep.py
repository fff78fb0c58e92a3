"""Deep prompts: per-layer prompt stacks and the deep text side that MaPLe and IVLP share.

A *deep* prompt gives a transformer layer its own prompt tokens: the backbone inserts the layer-0 tokens into the
input and, before each deeper layer ``i``, replaces the same slots with layer ``i``'s tokens.
"""
from __future__ import annotations

from typing import Dict, List, Optional, get_args

import torch
from torch import nn

from ..backbone import FrozenCLIP
from ..errors import ConfigError
from ..options.base import Init
from .base import Learner
from .prompts import ClassPrompts, initial_context



def depth_problems(depth: int, num_layers: Optional[int], option: str, tower: str) -> List[str]:
    """``[why]`` if ``depth`` prompted layers (counted from the input) do not fit a tower of ``num_layers``, else
    ``[]``; a tower prompts cannot reach (``None``) is reported by the check of that tower."""
    if num_layers is None or 1 <= depth <= num_layers:
        return []
    return [f"{option}={depth} > {num_layers} {tower} layers (use 1..{num_layers})"]


def vision_problems(arch) -> List[str]:
    """``[why]`` if the image tower of ``arch`` cannot take vision prompts (not a class-token ViT), else ``[]``."""
    return [arch.vision_problem] if arch.vision_problem else []


class LayerPrompts(nn.Module):
    """Independent prompt tokens ``[n, width]`` for each of ``layers``, in one parameter ``[len(layers), n, width]``.

    ``init="normal"`` draws ``N(0, scale²)`` (MaPLe, IVLP); ``"uniform"`` draws ``U(−scale, scale)`` (VPT).
    """

    def __init__(self, layers: range, n: int, width: int, init: str = "normal", scale: float = 0.02):
        super().__init__()
        if init not in get_args(Init):
            raise ConfigError(f"Prompt init must be one of {get_args(Init)}, not {init!r}.")
        if n < 1:
            raise ConfigError(f"Prompts need at least one token per layer, got {n}.")
        tokens = torch.empty(len(layers), n, width)
        if init == "normal":
            tokens.normal_(std=scale)
        else:
            tokens.uniform_(-scale, scale)
        self.tokens = nn.Parameter(tokens)
        self.first = layers.start

    def per_layer(self) -> Dict[int, torch.Tensor]:
        """``{layer: tokens [n, width]}``, the form the backbone takes."""
        return {self.first + k: t for k, t in enumerate(self.tokens)}


class DeepTextLearner(Learner):
    """Text side of MaPLe and IVLP: ``[SOS, ctx, infix, class, ".", EOT]`` at the input, and at layers
    ``1..depth−1`` the ``n`` slots after SOS replaced by that layer's own tokens (``N(0, 0.02²)``).

    ``ctx`` starts from the first ``n`` words of ``init`` (the rest stay as the fixed ``infix``) or at random.
    Subclasses call :meth:`_build_text` and add the vision side.
    """

    def _build_text(self, backbone: FrozenCLIP, n_ctx: int, depth: int, init: Optional[str],
                    std: float = 0.02, n_option: str = "text.n_ctx") -> None:
        """The text prompts; ``depth`` was checked against the tower by :func:`check_architecture`."""
        ctx, self.infix = initial_context(backbone, n_ctx, init, std, n_option)
        self.ctx = nn.Parameter(ctx)
        self.text_deep = LayerPrompts(range(1, depth), n_ctx, backbone.text_width, scale=std)
        self.prompts = ClassPrompts(backbone, self.classnames, n_ctx, infix=self.infix)

    def text_layers(self) -> Dict[int, torch.Tensor]:
        """Every prompted text layer's tokens, the input context included: ``{0: ctx, 1: P_1, …}``."""
        return {0: self.ctx, **self.text_deep.per_layer()}

    def set_classnames(self, backbone: FrozenCLIP, classnames: List[str], template: Optional[str] = None,
                       dataset: Optional[str] = None) -> None:
        super().set_classnames(backbone, classnames, template, dataset)
        self.prompts = ClassPrompts(backbone, classnames, self.ctx.shape[0], infix=self.infix).to(self.ctx.device)

    def text_features(self, backbone: FrozenCLIP, image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        return backbone.encode_text(self.prompts.assemble(self.ctx), self.prompts.eot,
                                    deep=self.text_deep.per_layer())
