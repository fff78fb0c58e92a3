"""The base of methods on frozen features (CLIP-Adapter, Tip-Adapter, TaskRes, LP++, GDA, ...).

They leave both towers frozen: the image tower's normalised features come from the feature cache (training views,
test split), and the method is its :meth:`~promptclip.learners.base.Learner.head` plus what :meth:`prepare` builds
from the data. The zero-shot class weights ``[C, E]`` they start from are prepared once from the method's
templates and saved with the rest of its state, so a loaded run needs no text tower pass.
"""
from __future__ import annotations

import logging
from typing import ClassVar, List, Sequence

import torch

from ..errors import ConfigError
from ..options.base import FeatureMethodConfig
from ..templates import COOP_ENSEMBLE, fill, resolve_templates
from .base import Learner

log = logging.getLogger("promptclip")


def imagenet_ensemble(dataset: str, template: str, with_photo: bool = False) -> List[str]:
    """The templates of the feature-method references: the dataset's own (CoOp's per-dataset template, which they
    all share), and on ImageNet CoOp's 7-template ensemble instead (Tip-Adapter, LP++, GDA), ``with_photo`` plus
    "a photo of a {}." (TaskRes, CLAP)."""
    if dataset != "ImageNet":
        return [template]
    return list(COOP_ENSEMBLE) + (["a photo of a {}."] if with_photo else [])


@torch.no_grad()
def raw_template_mean(backbone, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[C, E]``: per class, the mean over ``templates`` of the raw (unnormalised) text features, as TaskRes and
    CLAP average them (CLIP's own ensembling normalises each first)."""
    return torch.stack([backbone.encode_text_ids(backbone.tokenize(fill(t, classnames))).float()
                        for t in templates]).mean(0)


class FeatureMethod(Learner):
    """Zero-shot class weights as class features (``text_features``); subclasses add a head and its state."""

    Config: ClassVar[type] = FeatureMethodConfig
    #: its reference searches hyper-parameters on validation (``hparams: val`` does something)
    searches: ClassVar[bool] = False

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        self.register_buffer("zeroshot", torch.zeros(len(classnames), backbone.embed_dim))

    def dataset_templates(self, dataset: str, template: str) -> List[str]:
        """The reference's templates for ``dataset`` (``templates: dataset``); default: the dataset's own."""
        return [template]

    def templates(self, context) -> List[str]:
        """The zero-shot templates of ``cfg.templates`` for the context's dataset."""
        if self.cfg.templates == "dataset":
            return self.dataset_templates(context.dataset, context.template)
        return resolve_templates(self.cfg.templates, context.template, context.dataset)

    def prepare(self, context) -> None:
        self.zeroshot = context.zeroshot_class_features(self.templates(context)).float()
        self.note_hparams()

    def note_hparams(self) -> None:
        """Say so when ``hparams: val`` asks a method whose reference searches nothing."""
        if self.cfg.hparams == "val" and not self.searches:
            log.info("%s: its reference searches nothing on validation; hparams=val runs its fixed defaults.",
                     self.cfg.name)

    def text_features(self, backbone, image_features=None) -> torch.Tensor:
        return self.zeroshot

    def set_classnames(self, backbone, classnames, template=None, dataset=None):
        if list(classnames) != self.classnames:
            raise ConfigError(f"{self.cfg.name} is built from the training classes' few-shot features; it cannot "
                              f"classify other classes. Evaluate it on its training classes.")
        super().set_classnames(backbone, classnames, template, dataset)
