"""KgCoOp (Yao et al., CVPR 2023): CoOp (or CoCoOp) whose class features are kept near zero-shot CLIP's.

``L = CE + λ · (1 − mean_c cos(w_c, w_c^zs))``: ``w_c`` the prompted class features, ``w_c^zs`` the frozen
zero-shot ones from hand-written templates. Image-conditioned class features ``[B, C, E]`` (CoCoOp) are compared
per image and averaged over the batch too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Union

import torch
import torch.nn.functional as F

from ..config import bounded
from ..errors import ConfigError
from ..losses import ExtraLoss, LossConfig, ModelOutput, PrepareContext
from ..registry import LOSSES


@dataclass
class KgCoOpConfig(LossConfig):
    weight: float = bounded(8.0, ge=0)  # λ (8.0 in the reference's trainer)
    #: the zero-shot class features' templates: a choice of the zeroshot learner ("dataset", "ensemble",
    #: "imagenet80", "imagenet60") or a list; the reference uses the dataset's own template
    templates: Union[Literal["dataset", "ensemble", "imagenet80", "imagenet60"], List[str]] = "dataset"


@LOSSES.register("kgcoop")
class KnowledgeGuidance(ExtraLoss):
    """``1 − mean cos(prompted class features, zero-shot class features)``."""

    Config = KgCoOpConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("zeroshot", torch.empty(0), persistent=False)

    def prepare(self, context: PrepareContext) -> None:
        self.zeroshot = context.zeroshot_class_features(self.cfg.templates)

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        text = output.text_features.float()
        if self.zeroshot.numel() == 0 or self.zeroshot.shape[0] != text.shape[-2]:
            raise ConfigError("The kgcoop loss has no zero-shot class features for these classes: call "
                              "prepare(context) on the training classes before training (promptclip's engine does).")
        return 1.0 - F.cosine_similarity(text, self.zeroshot.to(text.device), dim=-1).mean()
