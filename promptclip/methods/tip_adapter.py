"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): zero-shot CLIP plus a key-value cache of the few-shot
training images.

As computed here, for normalised image features ``f [B, E]``, normalised zero-shot class weights ``W [C, E]``, cache
keys ``K [N, E]`` and one-hot cache values ``V [N, C]``::

    logits = τ · f Wᵀ + α · exp(−β · (1 − f Kᵀ)) V

with ``τ`` the backbone's logit scale (the reference's fixed 100), ``β`` the sharpness and ``α`` the residual ratio
(gaopengcuhk/Tip-Adapter main.py:27-63, utils.py:99-129). ``K`` is the mean over ``augment_epoch`` augmented views
of each training image's normalised frozen feature, renormalised (utils.py:38-71, which averages the unnormalised
features instead); ``V`` the one-hot labels (utils.py:62).

``tip_adapter`` is training-free. ``tip_adapter_f`` makes ``K`` a parameter, initialised from the cache keys, and
trains it by cross-entropy on these logits with α, β fixed at the dataset's initial values (main.py:66-106); the
engine's loop trains it, and the keys are not renormalised (as in the reference).

``hparams: fixed`` uses the reference's per-dataset ``init_alpha``/``init_beta`` (configs/<dataset>.yaml:20-21).
``hparams: val`` runs the reference's grid after training (utils.py:99-129): ``β_i = 0.1 + i (S_β − 0.1) / n_β``
(i < n_β = 200) outside, ``α_j = 0.1 + j (S_α − 0.1) / n_α`` (j < n_α = 20) inside, top-1 accuracy with a strict
``>`` (ties keep the first point), on the few-shot validation split only; a dataset without one keeps the fixed
values. The cache term is computed in float32 with autocast off (the reference: fp16 throughout).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import normalize
from ..learners.base import LEARNERS
from ..learners.features import FeatureMethod, imagenet_ensemble
from ..options.methods import TipAdapterConfig, TipAdapterFConfig

log = logging.getLogger("promptclip")

@dataclass(frozen=True)
class TipHyperParameters:
    """One dataset's values in the reference's configs/<dataset>.yaml: ``init_beta``, ``init_alpha`` (L20-21) and
    the grid's upper ends ``search_scale`` (L17, excluded from the grid)."""

    beta: float
    alpha: float
    beta_scale: float
    alpha_scale: float


#: the reference's configs/<dataset>.yaml by canonical dataset name
TIP_HPARAMS: Dict[str, TipHyperParameters] = {
    "ImageNet": TipHyperParameters(1.0, 1.17, 7.0, 3.0),
    "Caltech101": TipHyperParameters(1.0, 3.0, 12.0, 5.0),
    "DescribableTextures": TipHyperParameters(1.0, 2.0, 13.0, 13.0),
    "EuroSAT": TipHyperParameters(1.0, 2.0, 12.0, 10.0),
    "FGVCAircraft": TipHyperParameters(1.0, 5.0, 30.0, 30.0),
    "Food101": TipHyperParameters(1.0, 1.17, 10.0, 10.0),
    "OxfordFlowers": TipHyperParameters(1.0, 10.0, 50.0, 50.0),
    "OxfordPets": TipHyperParameters(1.0, 1.17, 7.0, 3.0),
    "StanfordCars": TipHyperParameters(1.0, 3.0, 20.0, 10.0),
    "SUN397": TipHyperParameters(1.0, 1.17, 12.0, 10.0),
    "UCF101": TipHyperParameters(1.0, 3.0, 7.0, 3.0),
}
#: other datasets: ImageNet's values (the reference's general-purpose config)
DEFAULT_HPARAMS = TIP_HPARAMS["ImageNet"]


def tip_hparams(dataset: str) -> TipHyperParameters:
    """The reference's values for canonical dataset name ``dataset`` (:data:`DEFAULT_HPARAMS` for others)."""
    return TIP_HPARAMS.get(dataset, DEFAULT_HPARAMS)


def reference_grid(scale: float, steps: int) -> List[float]:
    """``0.1 + i (scale − 0.1) / steps`` for ``i < steps`` (utils.py:100-101: the upper end is excluded)."""
    return [0.1 + i * (scale - 0.1) / steps for i in range(steps)]


@LEARNERS.register("tip_adapter")
class TipAdapter(FeatureMethod):
    """Zero-shot logits plus the cache's; the cache keys are a buffer (training-free)."""

    Config: ClassVar[type] = TipAdapterConfig
    searches: ClassVar[bool] = True
    data_shaped: ClassVar[Tuple[str, ...]] = ("keys", "values")

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        keys = torch.zeros(0, backbone.embed_dim)
        if self.cfg.training_free:
            self.register_buffer("keys", keys)
        else:
            self.keys = nn.Parameter(keys)
        self.register_buffer("values", torch.zeros(0, len(classnames)))
        fixed = self.fixed_hparams()
        self.register_buffer("alpha", torch.tensor(fixed[0]))
        self.register_buffer("beta", torch.tensor(fixed[1]))
        self._searched = False

    def fixed_hparams(self) -> Tuple[float, float]:
        """(α, β) without a search: the options, else the reference's initial values for the dataset."""
        ref = tip_hparams(self.dataset)
        return (ref.alpha if self.cfg.alpha is None else self.cfg.alpha,
                ref.beta if self.cfg.beta is None else self.cfg.beta)

    def dataset_templates(self, dataset: str, template: str) -> List[str]:
        return imagenet_ensemble(dataset, template)

    def prepare(self, context) -> None:
        """Zero-shot weights, then the cache: keys from ``augment_epoch`` training views, one-hot values."""
        super().prepare(context)
        views, labels = context.train_views(self.cfg.augment_epoch)
        keys = normalize(views.float().mean(0)).to(context.device)  # the views are normalised already
        self.keys = keys if self.cfg.training_free else nn.Parameter(keys.clone())
        self.values = F.one_hot(labels.long(), context.num_classes).float().to(context.device)

    def head(self, image_features, class_features, logit_scale):
        with torch.autocast(image_features.device.type, enabled=False):
            f = image_features.float()
            zeroshot = logit_scale.float() * f @ class_features.float().t()
            return zeroshot + self.alpha * self.cache_logits(f, self.beta)

    def cache_logits(self, features: torch.Tensor, beta) -> torch.Tensor:
        """``exp(−β (1 − f Kᵀ)) V`` for normalised float32 ``features``."""
        return torch.exp(-beta * (1 - features @ self.keys.t())) @ self.values

    def after_training(self, context) -> None:
        """``hparams: val``: the reference's (β, α) grid on the validation split (never test)."""
        self._searched = False
        if self.cfg.hparams != "val":
            return
        validation = context.validation()
        if validation is None:
            alpha, beta = self.fixed_hparams()
            log.info("%s has no validation split of its own: %s keeps alpha=%g, beta=%g (no search).",
                     context.dataset, self.cfg.name, alpha, beta)
            return
        features, labels = validation
        alpha, beta = self.search(features.to(self.keys.device).float(), labels.to(self.keys.device),
                                  context.backbone.logit_scale)
        self.alpha.fill_(alpha)
        self.beta.fill_(beta)
        self._searched = True
        log.info("%s: alpha=%g, beta=%g chosen on the validation split.", self.cfg.name, alpha, beta)

    @torch.no_grad()
    def search(self, features: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor) -> Tuple[float, float]:
        """(α, β) of the grid with the most correct ``labels``: β outside, α inside, the first best kept."""
        ref = tip_hparams(self.dataset)
        alphas = reference_grid(ref.alpha_scale, self.cfg.alpha_steps)
        alpha_column = torch.tensor(alphas, device=features.device).view(-1, 1, 1)
        zeroshot = logit_scale.float().to(features.device) * features @ normalize(self.zeroshot).t()
        best, chosen = -1, (0.0, 0.0)  # the first grid point replaces it
        for beta in reference_grid(ref.beta_scale, self.cfg.beta_steps):
            logits = zeroshot + alpha_column * self.cache_logits(features, beta)  # [alphas, M, C]
            correct = (logits.argmax(-1) == labels).sum(-1)
            j = int(correct.argmax())  # the first of equal counts, as the reference's strict ">"
            if int(correct[j]) > best:
                best, chosen = int(correct[j]), (alphas[j], beta)
        return chosen

    def hyperparameters(self) -> Dict[str, float]:
        return {"alpha": float(self.alpha), "beta": float(self.beta)} if self._searched else {}


@LEARNERS.register("tip_adapter_f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter whose cache keys are learned (main.py:66-141); α, β stay fixed while they train."""

    Config: ClassVar[type] = TipAdapterFConfig
