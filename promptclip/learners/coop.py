"""CoOp (Zhou et al., IJCV 2022): learnable context vectors in front of (or around) each class name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError
from .base import LEARNERS, Learner, LearnerConfig
from .prompts import ClassPrompts, context_from_words


@dataclass
class CoOpConfig(LearnerConfig):
    name: str = "coop"
    n_ctx: int = 16
    #: initialise the context from these words ("a photo of a"); n_ctx becomes their token count
    init: Optional[str] = None
    #: one context per class (CSC) instead of one shared context
    class_specific: bool = False
    #: where the class name goes: end, middle or front
    position: str = "end"
    init_std: float = 0.02


@LEARNERS.register("coop")
class CoOp(Learner):
    """Context ``[n_ctx, D_t]`` (or ``[C, n_ctx, D_t]``) is the only parameter."""

    Config = CoOpConfig

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}."):
        super().__init__(cfg, backbone, classnames, template)
        if cfg.init:
            if cfg.class_specific:
                raise ConfigError("Class-specific context (text.class_specific=true) starts from random vectors; "
                                  "remove text.init or set text.class_specific=false.")
            ctx = context_from_words(backbone, cfg.init)
        else:
            shape = (len(classnames), cfg.n_ctx) if cfg.class_specific else (cfg.n_ctx,)
            ctx = torch.empty(*shape, backbone.text_width).normal_(std=cfg.init_std)
        self.ctx = nn.Parameter(ctx)
        self.prompts = ClassPrompts(backbone, classnames, self.n_ctx, cfg.position)

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    def set_classnames(self, backbone, classnames, template=None):
        if self.cfg.class_specific and list(classnames) != self.classnames:
            raise ConfigError("Class-specific CoOp learned one context per training class; it cannot be used for "
                              "other classes. Train with text.class_specific=false to transfer to new classes.")
        super().set_classnames(backbone, classnames, template)
        self.prompts = ClassPrompts(backbone, classnames, self.n_ctx, self.cfg.position).to(self.ctx.device)

    def text_features(self, backbone, image_features=None):
        return backbone.encode_text(self.prompts.assemble(self.ctx), self.prompts.eot)
