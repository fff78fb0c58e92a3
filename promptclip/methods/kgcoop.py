"""KgCoOp (Yao et al., CVPR 2023): CoOp (or CoCoOp) whose class features are kept near zero-shot CLIP's.

``L = CE + λ · (1 − mean_c cos(w_c, w_c^zs))``: ``w_c`` the prompted class features, ``w_c^zs`` the frozen
zero-shot ones from hand-written templates. Image-conditioned class features ``[B, C, E]`` (CoCoOp) are compared
per image and averaged over the batch too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import bounded
from ..losses import AnchoredLossConfig, ModelOutput, ZeroShotAnchoredLoss
from ..registry import LOSSES


@dataclass
class KgCoOpConfig(AnchoredLossConfig):
    """λ and the zero-shot templates (the reference: the dataset's own, ``templates: dataset``, the default)."""

    weight: float = bounded(8.0, ge=0)  # λ (8.0 in the reference's trainer)
    templates_option: ClassVar[str] = "losses.kgcoop.templates"


@LOSSES.register("kgcoop")
class KnowledgeGuidance(ZeroShotAnchoredLoss):
    """``1 − mean cos(prompted class features, zero-shot class features)``."""

    Config = KgCoOpConfig

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        text = output.text_features.float()
        return 1.0 - F.cosine_similarity(text, self.anchors(text), dim=-1).mean()
