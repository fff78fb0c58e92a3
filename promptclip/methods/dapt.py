"""DAPT (Cho et al., ICCV 2023): ``L = CE + β_v · L_intra + β_t · L_inter``, two losses that work with any learner.

``dapt_inter`` spreads the class features apart (a Gaussian kernel between them); ``dapt_intra`` pulls each image
feature towards its class's prototype, the mean frozen feature of the class's training images. The preset
``dapt`` pairs them with CoOp and VPT as the paper does.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import ExtraLoss, ModelOutput, PrepareContext
from ..options.methods import InterDispersionConfig, IntraDispersionConfig
from ..registry import LOSSES

log = logging.getLogger("promptclip")

def pairwise_dispersion(features: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``mean over pairs m<n of exp(−t · ‖w_m − w_n‖²)`` of ``features [..., C, E]``, one value per leading index."""
    count = features.shape[-2]
    if count < 2:
        raise ConfigError("dapt_inter spreads class features apart and needs at least two classes.")
    sq = features.pow(2).sum(-1)
    dist2 = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * features @ features.transpose(-1, -2)).clamp_min(0)
    m, n = torch.triu_indices(count, count, offset=1, device=features.device)
    return torch.exp(-t * dist2[..., m, n]).mean(-1)


@LOSSES.register("dapt_inter")
class InterDispersion(ExtraLoss):
    """DAPT's text inter-dispersion: pushes the normalised class features ``w̃_c`` apart.

    ``reference`` (default) is DAPT's code, ``mean_{m<n} exp(−t‖w̃_m − w̃_n‖²)`` (``torch.pdist``, no log). ``log`` is
    the paper's formula, Wang & Isola's uniformity loss ``log mean_{m<n} exp(−t‖w̃_m − w̃_n‖²)``: same minimiser, but
    its gradient is the reference's divided by the mean, so the two need different β_t. Image-conditioned class
    features ``[B, C, E]`` (CoCoOp) get the term per image, averaged over the batch.
    """

    Config = InterDispersionConfig

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
