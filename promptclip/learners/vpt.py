"""VPT (Jia et al., ECCV 2022) as a vision-side learner, with VFPT's Fourier prompts (Zeng et al., NeurIPS 2024)."""
from __future__ import annotations

import math
from typing import get_args

import torch
from torch import nn

from ..backbone import FrozenCLIP, VisionPrompts
from ..errors import ConfigError
from ..options.learners import Fourier, VPTConfig
from .base import LEARNERS, Learner, check_architecture
from .deep import LayerPrompts, depth_problems, vision_problems


def fourier_prompts(x: torch.Tensor, variant: str = "both") -> torch.Tensor:
    """VFPT's transform of prompts ``[..., n, D]``: the real part of the FFT over the hidden dimension (``hidden``),
    the token dimension (``sequence``) or both, hidden first (``both``). No parameters, no normalisation."""
    if variant == "hidden":
        return torch.fft.fft(x, dim=-1).real
    if variant == "sequence":
        return torch.fft.fft(x, dim=-2).real
    if variant == "both":
        return torch.fft.fft(torch.fft.fft(x, dim=-1), dim=-2).real
    raise ConfigError(f"Fourier variant must be one of {get_args(Fourier)[1:]}, not {variant!r}.")


def vpt_uniform_bound(backbone: FrozenCLIP) -> float:
    """VPT's Xavier-style init range ``sqrt(6 / (3·p² + D_v))`` (0.0625 for ViT-B/16)."""
    return math.sqrt(6.0 / (3 * backbone.patch_size ** 2 + backbone.vision_width))


@LEARNERS.register("vpt")
class VPT(Learner):
    """Prompt tokens ``[n_tokens, D_v]`` for layers ``0..depth−1``: inserted at the input, replaced at deeper layers,
    carried on after the last prompted layer. No positional embedding.

    With ``fourier`` the first ``floor(α·n)`` tokens of every prompted layer pass through :func:`fourier_prompts`
    after dropout. With ``dropout_mode="per_image"`` dropout (and so the Fourier transform) runs on the prompts
    expanded to the batch, ``[B, n, D_v]``, so each image gets its own mask; ``"shared"`` draws one ``[n, D_v]`` mask
    per layer for the whole batch. Without active dropout (eval, or ``dropout=0``) both compute shared prompts once.
    """

    Config = VPTConfig
    sides = ("vision",)

    @classmethod
    def architecture_problems(cls, cfg, arch):
        return vision_problems(arch) + depth_problems(cfg.depth, arch.vision_layers, "vision.depth", "vision")

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        backbone.require_vision_prompts("VPT prompts")
        check_architecture(backbone.architecture, cfg)
        scale = vpt_uniform_bound(backbone) if cfg.init == "uniform" else cfg.init_std
        self.prompts = LayerPrompts(range(cfg.depth), cfg.n_tokens, backbone.vision_width, cfg.init, scale)
        self.dropout = nn.Dropout(cfg.dropout)
        self.n_fourier = math.floor(cfg.fourier_fraction * cfg.n_tokens) if cfg.fourier != "none" else 0

    def _layer_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Dropout, then the Fourier transform of the first tokens: ``[..., n, D_v]`` → ``[..., n, D_v]``."""
        tokens = self.dropout(tokens)
        if not self.n_fourier:
            return tokens
        fourier = fourier_prompts(tokens[..., :self.n_fourier, :], self.cfg.fourier)
        return torch.cat([fourier, tokens[..., self.n_fourier:, :]], dim=-2)

    def vision_prompts(self, backbone) -> VisionPrompts:
        layers = self.prompts.per_layer()
        options = {"placement": self.cfg.placement, "before_ln_pre": self.cfg.before_ln_pre}
        if self.training and self.cfg.dropout > 0 and self.cfg.dropout_mode == "per_image":
            return VisionPrompts(layers, per_image=self._layer_tokens, **options)
        return VisionPrompts({layer: self._layer_tokens(t) for layer, t in layers.items()}, **options)
