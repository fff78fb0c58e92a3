"""Zero-shot CLIP: hand-written templates, no parameters (also the fixed text side of vision-only learners)."""
from __future__ import annotations

import logging
from typing import List

import torch

from ..backbone import normalize
from ..options.learners import ZeroShotConfig
from ..templates import fill, resolve_templates
from .base import LEARNERS, Learner


log = logging.getLogger("promptclip")
TEMPLATE_SOURCES = {"dataset": "the dataset's CoOp template", "ensemble": "CoOp's 7 ImageNet templates + the "
                    "dataset's, except on ImageNet", "imagenet80": "CLIP's 80 ImageNet templates",
                    "imagenet60": "PromptSRC's 60 of CLIP's ImageNet templates"}


@torch.no_grad()
def zeroshot_class_features(backbone, classnames: List[str], templates: List[str],
                            normalize_each: bool = True) -> torch.Tensor:
    """Frozen class features ``[C, E]``: per class, the mean over ``templates`` of the normalised text features,
    renormalised (CLIP's prompt ensembling). ``normalize_each=False`` averages the raw features instead, as
    PromptSRC does. The one helper for every zero-shot reference (zero-shot CLIP, KgCoOp, PromptSRC...)."""
    per_template = []
    for template in templates:
        features = backbone.encode_text_ids(backbone.tokenize(fill(template, classnames))).float()
        per_template.append(normalize(features) if normalize_each else features)
    return normalize(torch.stack(per_template).mean(0))


@LEARNERS.register("zeroshot")
class ZeroShot(Learner):
    """Class features = mean over templates of normalised template features, renormalised (cached)."""

    Config = ZeroShotConfig

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        self._cache = None

    def set_classnames(self, backbone, classnames, template=None, dataset=None):
        super().set_classnames(backbone, classnames, template, dataset)
        self._cache = None

    def compute(self, backbone) -> torch.Tensor:
        templates = resolve_templates(self.cfg.templates, self.template, self.dataset)
        source = self.cfg.templates if isinstance(self.cfg.templates, str) else "your list"
        log.info("zero-shot class features: the mean over %d template%s (%s), e.g. %r", len(templates),
                 "s" if len(templates) > 1 else "", TEMPLATE_SOURCES.get(source, source), templates[0])
        return zeroshot_class_features(backbone, self.classnames, templates)

    def text_features(self, backbone, image_features=None):
        if self._cache is None or self._cache.device != backbone.logit_scale.device:
            self._cache = self.compute(backbone)
        return self._cache
