"""Training objectives beyond cross-entropy, registered by name and usable with any learner.

The composed model computes ``CE + Σ weight_i · loss_i(output, labels)``. A loss that needs data before training
(DAPT's class prototypes) implements ``prepare(context)``; the engine calls it once with a :class:`PrepareContext`.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional, Tuple, get_args

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch import nn

from .config import bounded
from .errors import ConfigError
from .registry import Registry
from .utils import atomic_write_bytes

log = logging.getLogger("promptclip")

#: name → ExtraLoss subclass. Register with ``@LOSSES.register("name")``.
LOSSES: Registry = Registry("loss")


@dataclass
class ModelOutput:
    """What the composed model computed for a batch; losses read what they need from it."""

    logits: torch.Tensor  # [B, C]
    image_features: torch.Tensor  # [B, E], normalised
    text_features: torch.Tensor  # [C, E] or [B, C, E], normalised
    loss: Optional[torch.Tensor] = None
    terms: Optional[dict] = None  # name → detached value, for logs


@dataclass
class PrepareContext:
    """What a loss may use once before training."""

    backbone: Any  # FrozenCLIP
    train_loader: Any  # the few-shot training split with the training transform
    num_classes: int
    cache_dir: Optional[Path]
    cache_key: str  # identifies (dataset, shots, seed, backbone, transform)
    device: torch.device
    #: image features of a loader under the frozen encoder (the engine's feature cache when available)
    image_features: Optional[Callable] = None


@dataclass
class LossConfig:
    weight: float = bounded(1.0, ge=0)


class ExtraLoss(nn.Module):
    """Base class for an additional loss term."""

    Config: ClassVar[type] = LossConfig

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def prepare(self, context: PrepareContext) -> None:
        """Compute what the loss needs from the data before training (default: nothing)."""

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------------------ DAPT
# Cho et al., ICCV 2023: L = CE + β_v · L_intra + β_t · L_inter. Both terms work with any learner.
DispersionForm = Literal["reference", "log"]
DISPERSION_FORMS = get_args(DispersionForm)


def pairwise_dispersion(features: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``mean over pairs m<n of exp(−t · ‖w_m − w_n‖²)`` of ``features [..., C, E]``, one value per leading index."""
    count = features.shape[-2]
    if count < 2:
        raise ConfigError("dapt_inter spreads class features apart and needs at least two classes.")
    sq = features.pow(2).sum(-1)
    dist2 = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * features @ features.transpose(-1, -2)).clamp_min(0)
    m, n = torch.triu_indices(count, count, offset=1, device=features.device)
    return torch.exp(-t * dist2[..., m, n]).mean(-1)


@dataclass
class InterDispersionConfig(LossConfig):
    weight: float = bounded(0.1, ge=0)  # β_t
    t: float = bounded(2.0, gt=0)
    #: reference: the mean Gaussian potential (DAPT's code, which produced the published numbers); log: its log
    form: DispersionForm = "reference"


@LOSSES.register("dapt_inter")
class InterDispersion(ExtraLoss):
    """DAPT's text inter-dispersion: pushes the normalised class features ``w̃_c`` apart.

    ``reference`` (default) is DAPT's code, ``mean_{m<n} exp(−t‖w̃_m − w̃_n‖²)`` (``torch.pdist``, no log). ``log`` is
    the paper's formula, Wang & Isola's uniformity loss ``log mean_{m<n} exp(−t‖w̃_m − w̃_n‖²)``: same minimiser, but
    its gradient is the reference's divided by the mean, so the two need different β_t. Image-conditioned class
    features ``[B, C, E]`` (CoCoOp) get the term per image, averaged over the batch.
    """

    Config = InterDispersionConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.form not in DISPERSION_FORMS:
            raise ConfigError(f"losses.dapt_inter.form must be one of {DISPERSION_FORMS}, not {cfg.form!r}.")

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        value = pairwise_dispersion(output.text_features.float(), self.cfg.t)
        return (value.log() if self.cfg.form == "log" else value).mean()


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class, the mean of the L2-normalised ``features`` (not renormalised): DAPT's prototypes ``s_c``."""
    features = F.normalize(features.float(), dim=-1)
    labels = labels.to(features.device).long()
    sums = torch.zeros(num_classes, features.shape[1], device=features.device).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        log.warning("dapt_intra: %d class(es) have no training image; their prototype is zero.",
                    int((counts == 0).sum()))
    return sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)


def frozen_image_features(context: PrepareContext) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot image features (no prompts) and labels of ``context.train_loader``."""
    if context.image_features is not None:
        return context.image_features(context.train_loader)
    features, labels = [], []
    with torch.no_grad():
        for images, targets in context.train_loader:
            features.append(context.backbone.encode_image(images.to(context.device)).float())
            labels.append(targets.to(context.device))
    return torch.cat(features), torch.cat(labels)


@dataclass
class IntraDispersionConfig(LossConfig):
    weight: float = bounded(0.1, ge=0)  # β_v


@LOSSES.register("dapt_intra")
class IntraDispersion(ExtraLoss):
    """DAPT's image intra-dispersion: ``F.mse_loss(z̃_i, s_{y_i})``, pulling each (prompted, normalised) image feature
    towards its class prototype, the mean normalised zero-shot feature of the class's training images.

    :meth:`prepare` computes the prototypes once (frozen encoder, training transform) and caches them as
    ``<cache_dir>/dapt-prototypes-<hash of cache_key>.safetensors``.
    """

    Config = IntraDispersionConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("prototypes", torch.empty(0), persistent=False)

    def prepare(self, context: PrepareContext) -> None:
        path = None
        if context.cache_dir is not None:
            digest = hashlib.sha1(context.cache_key.encode()).hexdigest()[:16]
            path = Path(context.cache_dir) / f"dapt-prototypes-{digest}.safetensors"
        cached = self._read_cache(path, context) if path is not None and path.is_file() else None
        if cached is not None:
            self.prototypes = cached.to(context.device)
            return
        features, labels = frozen_image_features(context)
        prototypes = class_prototypes(features, labels, context.num_classes)
        if path is not None:
            atomic_write_bytes(path, save_safetensors({"prototypes": prototypes.cpu().contiguous()},
                                                      metadata={"cache_key": context.cache_key}))
        self.prototypes = prototypes.to(context.device)

    @staticmethod
    def _read_cache(path: Path, context: PrepareContext) -> Optional[torch.Tensor]:
        """The cached prototypes for ``context``, or None (another key, or a damaged file: recomputed)."""
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("cache_key") != context.cache_key:
                    return None
                prototypes = f.get_tensor("prototypes")
        except (SafetensorError, OSError) as err:
            log.warning("DAPT prototype cache file %s is unreadable (%s); computing the prototypes again.", path, err)
            return None
        if prototypes.dim() != 2 or prototypes.shape[0] != context.num_classes:
            log.warning("DAPT prototype cache file %s holds %s prototypes for %d classes; computing them again.",
                        path, list(prototypes.shape), context.num_classes)
            return None
        return prototypes

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        if self.prototypes.numel() == 0:
            raise ConfigError("dapt_intra has no class prototypes: call prepare(context) before training "
                              "(promptclip's engine does).")
        if self.prototypes.shape[0] <= int(labels.max()):
            raise ConfigError(f"dapt_intra has prototypes for {self.prototypes.shape[0]} classes but got label "
                              f"{int(labels.max())}: prepare it on this training set.")
        image = output.image_features.float()
        return F.mse_loss(image, self.prototypes[labels.to(self.prototypes.device)].to(image.device))
