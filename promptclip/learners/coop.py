"""CoOp (Zhou et al., IJCV 2022): learnable context vectors in front of (or around) each class name."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import ConfigError
from ..options.learners import CoOpConfig
from .base import LEARNERS, Learner
from .prompts import ClassPrompts, context_from_words


@LEARNERS.register("coop")
class CoOp(Learner):
    """Context ``[n_ctx, D_t]`` (or ``[C, n_ctx, D_t]``) is the only parameter."""

    Config = CoOpConfig

    @classmethod
    def resolve(cls, cfg, backbone):
        """The context length of ``text.init``: one vector per token of the init words."""
        if not cfg.init:
            return cfg
        tokens = len(context_from_words(backbone, cfg.init))
        if cfg.n_ctx not in (None, tokens):
            raise ConfigError(f"text.n_ctx={cfg.n_ctx}, but CoOp learns one context vector per token of "
                              f"text.init={cfg.init!r}, which has {tokens}: set text.n_ctx={tokens} (or null), or "
                              f"text.init=null for {cfg.n_ctx} random vectors.")
        return dataclasses.replace(cfg, n_ctx=tokens)

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        if cfg.init:
            ctx = context_from_words(backbone, cfg.init)
        else:
            shape = (len(classnames), cfg.n_ctx) if cfg.class_specific else (cfg.n_ctx,)
            ctx = torch.empty(*shape, backbone.text_width).normal_(std=cfg.init_std)
        self.ctx = nn.Parameter(ctx)
        self.prompts = ClassPrompts(backbone, classnames, self.n_ctx, cfg.position)

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    def set_classnames(self, backbone, classnames, template=None, dataset=None):
        if self.cfg.class_specific and list(classnames) != self.classnames:
            raise ConfigError("Class-specific CoOp learned one context per training class; it cannot be used for "
                              "other classes. Train with text.class_specific=false to transfer to new classes.")
        super().set_classnames(backbone, classnames, template, dataset)
        self.prompts = ClassPrompts(backbone, classnames, self.n_ctx, self.cfg.position).to(self.ctx.device)

    def text_features(self, backbone, image_features=None):
        return backbone.encode_text(self.prompts.assemble(self.ctx), self.prompts.eot)
