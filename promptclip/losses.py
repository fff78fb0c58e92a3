"""The method seam beyond prompts: extra losses (registered by name, usable with any learner) and what they see.

The composed model computes ``CE + Σ weight_i · loss_i(output, labels)``. A loss that needs something before
training (DAPT's class prototypes, KgCoOp's zero-shot class features) implements ``prepare(context)``; the engine
calls it once with a :class:`~promptclip.hooks.PrepareContext`. At each step a loss reads the
:class:`~promptclip.hooks.ModelOutput` (both in :mod:`promptclip.hooks`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .config import bounded
from .errors import ConfigError
from .hooks import ModelOutput, PrepareContext
from .registry import LOSSES
from .templates import TemplateChoice, check_templates

log = logging.getLogger("promptclip")

@dataclass
class LossConfig:
    weight: float = bounded(1.0, ge=0)


class ExtraLoss(nn.Module):
    """Base class for an additional loss term."""

    Config: ClassVar[type] = LossConfig
    #: reads ``ModelOutput.frozen_image_features``: the engine then gives them from its feature cache of the
    #: training views instead of running the unprompted image tower at every step
    uses_frozen_image_features: ClassVar[bool] = False

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def prepare(self, context: PrepareContext) -> None:
        """Compute what the loss needs from the data before training (default: nothing)."""

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class AnchoredLossConfig(LossConfig):
    #: the frozen class features' templates: a named set ("dataset", "ensemble", "imagenet80", "imagenet60") or a
    #: list of templates with one "{}" each
    templates: TemplateChoice = "dataset"
    #: normalise each template's features before averaging them (CLIP's ensembling); false averages the raw ones
    normalize_each_template: bool = True
    #: the option's full name, for messages
    templates_option: ClassVar[str] = "templates"

    def __post_init__(self):
        check_templates(self.templates, self.templates_option)


class ZeroShotAnchoredLoss(ExtraLoss):
    """A loss measured against frozen zero-shot class features (KgCoOp, PromptSRC), prepared once for the training
    classes from ``cfg.templates``."""

    Config: ClassVar[type] = AnchoredLossConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("zeroshot", torch.empty(0), persistent=False)

    def prepare(self, context: PrepareContext) -> None:
        self.zeroshot = context.zeroshot_class_features(self.cfg.templates, self.cfg.normalize_each_template)

    def anchors(self, text_features: torch.Tensor) -> torch.Tensor:
        """The zero-shot class features ``[C, E]`` for class features ``text_features`` (``[..., C, E]``)."""
        if self.zeroshot.numel() == 0 or self.zeroshot.shape[0] != text_features.shape[-2]:
            raise ConfigError(f"{type(self).__name__} has no zero-shot class features for these classes: call "
                              f"prepare(context) on the training classes before training (promptclip's engine does).")
        return self.zeroshot.to(text_features.device)


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


@dataclass
class IntraDispersionConfig(LossConfig):
    weight: float = bounded(0.1, ge=0)  # β_v


@LOSSES.register("dapt_intra")
class IntraDispersion(ExtraLoss):
    """DAPT's image intra-dispersion: ``F.mse_loss(z̃_i, s_{y_i})``, pulling each (prompted, normalised) image feature
    towards its class prototype, the mean normalised zero-shot feature of the class's training images.

    :meth:`prepare` computes the prototypes from the training split's frozen features (one training-transform
    view, through the engine's feature cache).
    """

    Config = IntraDispersionConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("prototypes", torch.empty(0), persistent=False)

    def prepare(self, context: PrepareContext) -> None:
        features, labels = context.train_features()
        self.prototypes = class_prototypes(features.to(context.device), labels, context.num_classes)

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        if self.prototypes.numel() == 0:
            raise ConfigError("dapt_intra has no class prototypes: call prepare(context) before training "
                              "(promptclip's engine does).")
        if self.prototypes.shape[0] <= int(labels.max()):
            raise ConfigError(f"dapt_intra has prototypes for {self.prototypes.shape[0]} classes but got label "
                              f"{int(labels.max())}: prepare it on this training set.")
        image = output.image_features.float()
        return F.mse_loss(image, self.prototypes[labels.to(self.prototypes.device)].to(image.device))
