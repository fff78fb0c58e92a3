"""KgCoOp (Yao et al., CVPR 2023): CoOp (or CoCoOp) whose class features are kept near zero-shot CLIP's.

``L = CE + λ · (1 − mean_c cos(w_c, w_c^zs))``: ``w_c`` the prompted class features, ``w_c^zs`` the frozen
zero-shot ones from hand-written templates. Image-conditioned class features ``[B, C, E]`` (CoCoOp) are compared
per image and averaged over the batch too.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from ..losses import ModelOutput, PrepareContext, ZeroShotAnchoredLoss
from ..options.methods import KgCoOpConfig
from ..registry import LOSSES

#: KgCoOp's own per-dataset templates (htyao89/KgCoOp, trainers/kgcoop.py ``CUSTOM_TEMPLATES``). They are CoOp's
#: but for DescribableTextures, where CoOp has "{} texture.".
KGCOOP_TEMPLATES: Dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}


@LOSSES.register("kgcoop")
class KnowledgeGuidance(ZeroShotAnchoredLoss):
    """``1 − mean cos(prompted class features, zero-shot class features)``."""

    Config = KgCoOpConfig

    def prepare(self, context: PrepareContext) -> None:
        templates = self.cfg.templates
        if templates == "dataset":
            templates = [KGCOOP_TEMPLATES.get(context.dataset, context.template)]
        self.zeroshot = context.zeroshot_class_features(templates, self.cfg.normalize_each_template)

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        text = output.text_features.float()
        return 1.0 - F.cosine_similarity(text, self.anchors(text), dim=-1).mean()
