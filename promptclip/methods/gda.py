"""GDA (Wang et al., ICLR 2024, "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation"): Gaussian
discriminant analysis on frozen features, blended with zero-shot CLIP; nothing is trained.

From the views' features ``V [N',D]`` (10 augmented views per shot, kept as samples) and labels, as the reference
(mrflogs/ICLR24, main_few_shots.py:L38-83) computes them:

- ``μ_c = mean_{i∈c} v_i`` (L56); ``Z = v_i − μ_{y_i}`` pooled, ``Σ̂ = cov(Z)`` (÷ N'−1);
- ``Σ⁻¹ = D · pinv((N'−1)·Σ̂ + tr(Σ̂)·I)``, the "KS" shrinkage estimator (L58-60): the precision of
  ``((N'−1)·Σ̂ + tr(Σ̂)·I) / D``, i.e. of Σ̂ scaled by (N'−1)/D, so ``f·Wᵀ + b`` is LDA's discriminant times
  ``D/(N'−1)`` (plus the prior), a scale that α absorbs;
- ``W = Σ⁻¹μ [C,D]``, ``b_c = log(1/C) − ½ μ_cᵀΣ⁻¹μ_c`` (uniform prior, L62-64);
- ``logits = τ · f·Tᵀ + α · (f·Wᵀ + b)``, ``τ`` CLIP's logit scale (100 in the reference), ``T`` the zero-shot
  weights (L67-81).

``α``: ``hparams: fixed`` takes ``alpha`` (0.1: the reference's fallback ``best_alpha`` and the log-middle of its
grid); ``val`` picks from the reference's grid ``{1e-4, …, 100}`` by accuracy on ``context.validation()``, the first
best winning (strict ``>``, L67-81). Where there is none (ImageNet, whose val the reference takes from test, L137)
it keeps ``alpha``.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Tuple

import torch

from ..learners.base import LEARNERS, scaled_cosine
from ..learners.features import FeatureMethod, imagenet_ensemble
from ..options.methods import GDAConfig

log = logging.getLogger("promptclip")


def gaussian_discriminant(features: torch.Tensor, labels: torch.Tensor, classes: int
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(W [C,D], b [C])`` of shared-covariance GDA with the KS precision, computed in float64."""
    features = features.double()
    dim = features.shape[1]
    counts = torch.bincount(labels, minlength=classes).clamp(min=1).double()
    means = torch.zeros(classes, dim, dtype=torch.float64, device=features.device).index_add_(0, labels, features)
    means = means / counts[:, None]
    residuals = features - means[labels]
    covariance = torch.cov(residuals.t())
    eye = torch.eye(dim, dtype=torch.float64, device=features.device)
    precision = dim * torch.linalg.pinv((len(residuals) - 1) * covariance + covariance.trace() * eye)
    weight = means @ precision  # Σ⁻¹ is symmetric: row c is (Σ⁻¹μ_c)ᵀ
    bias = math.log(1.0 / classes) - 0.5 * (weight * means).sum(-1)
    return weight.float(), bias.float()


@LEARNERS.register("gda")
class GDA(FeatureMethod):
    """Zero-shot logits plus ``α ·`` GDA's linear logits; ``W``, ``b`` and ``α`` are saved buffers."""

    Config = GDAConfig
    searches = True

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        self.register_buffer("weight", torch.zeros(len(classnames), backbone.embed_dim))
        self.register_buffer("bias", torch.zeros(len(classnames)))
        self.register_buffer("alpha", torch.tensor(float(cfg.alpha)))
        self.searched = False

    def dataset_templates(self, dataset: str, template: str) -> List[str]:
        return imagenet_ensemble(dataset, template)

    def prepare(self, context) -> None:
        super().prepare(context)
        views, labels = context.train_views(self.cfg.views)
        features = views.flatten(0, 1).to(self.zeroshot.device)
        labels = labels.repeat(self.cfg.views).to(features.device)
        self.weight, self.bias = gaussian_discriminant(features, labels, context.num_classes)

    def after_training(self, context) -> None:
        if self.cfg.hparams != "val":
            return
        validation = context.validation()
        if validation is None:
            log.info("%s: no validation split of its own; keeping alpha=%g (hparams: fixed).", self.cfg.name,
                     self.cfg.alpha)
            return
        features, labels = (t.to(self.weight.device) for t in validation)
        features = features.float()
        zeroshot = scaled_cosine(features, self.zeroshot, context.backbone.logit_scale.to(features.device))
        discriminant = features @ self.weight.t() + self.bias
        best, chosen = 0.0, self.cfg.alpha  # the reference's start: a grid point must beat 0 accuracy
        for alpha in self.cfg.alphas:
            accuracy = ((zeroshot + alpha * discriminant).argmax(-1) == labels).float().mean().item()
            if accuracy > best:
                best, chosen = accuracy, alpha
        self.alpha = torch.tensor(float(chosen), device=self.weight.device)
        self.searched = True

    def hyperparameters(self) -> Dict[str, float]:
        return {"alpha": self.alpha.item()} if self.searched else {}

    def head(self, image_features, class_features, logit_scale):
        discriminant = image_features @ self.weight.t() + self.bias
        return scaled_cosine(image_features, class_features, logit_scale) + self.alpha * discriminant
