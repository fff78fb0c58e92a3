"""CLIP-Adapter (Gao et al., IJCV 2023): a bottleneck MLP on the frozen image features, blended residually.

As the head computes it, with ``f`` the normalised frozen image feature ``[B, E]``, ``W`` the normalised zero-shot
class weights ``[C, E]`` (one template per dataset) and ``τ`` CLIP's logit scale::

    A(f)   = ReLU(ReLU(f · W1ᵀ) · W2ᵀ)              W1: [E/r, E], W2: [E, E/r], no biases, r = reduction (4)
    g      = ratio · A(f) + (1 − ratio) · f          ratio 0.2
    logits = τ · normalize(g) · Wᵀ

Reference: gaopengcuhk/CLIP-Adapter clip_adapter.py (HEAD 08d07f8b): ``Adapter`` L55-67 (two bias-free linears, a
ReLU after each), ``CustomCLIP`` L89-97 (``Adapter(1024, 4)``: the width is hard-coded to RN50's 1024, here it is
``backbone.embed_dim``), ``forward`` L100-115 (ratio 0.2 hard-coded at L104, the blend, normalisation after it at
L109, ``logit_scale.exp()`` at L112), ``CUSTOM_TEMPLATES`` L18-34 (one template per dataset, no ensemble: CoOp's
per-dataset templates, which are the datasets' own here).

The reference feeds the raw encoder output to the adapter; the cached features here are normalised. The blend is
positively homogeneous (bias-free ReLU MLP), so ``normalize(g(c·x)) = normalize(g(x))`` for ``c > 0``: logits and
gradients are the same. Only the adapter trains. The reference has no validation: it tests the last epoch, so
``hparams: val`` runs the fixed defaults like ``fixed`` (nothing is searched).
"""
from __future__ import annotations


import torch
from torch import nn

from ..backbone import normalize
from ..errors import ConfigError
from ..learners.base import LEARNERS, scaled_cosine
from ..learners.features import FeatureMethod
from ..options.methods import CLIPAdapterConfig


@LEARNERS.register("clip_adapter")
class CLIPAdapter(FeatureMethod):
    """Zero-shot class weights from the dataset's template; a trained bottleneck MLP blended into the image side."""

    Config = CLIPAdapterConfig

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        width, hidden = backbone.embed_dim, backbone.embed_dim // cfg.reduction
        if hidden < 1:
            raise ConfigError(f"text.reduction={cfg.reduction} leaves no hidden unit for {backbone.name}'s "
                              f"{width}-dim features: use a reduction of at most {width}.")
        self.adapter = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.ReLU(),
                                     nn.Linear(hidden, width, bias=False), nn.ReLU())

    def head(self, image_features: torch.Tensor, class_features: torch.Tensor,
             logit_scale: torch.Tensor) -> torch.Tensor:
        ratio = self.cfg.ratio
        blended = ratio * self.adapter(image_features) + (1 - ratio) * image_features
        return scaled_cosine(normalize(blended), class_features, logit_scale)
