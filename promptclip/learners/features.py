"""The base of methods on frozen features (CLIP-Adapter, Tip-Adapter, TaskRes, LP++, GDA, ...).

They leave both towers frozen: the image tower's normalised features come from the feature cache (training views,
test split), and the method is its :meth:`~promptclip.learners.base.Learner.head` plus what :meth:`prepare` builds
from the data. The zero-shot class weights ``[C, E]`` they start from are prepared once from the method's
templates and saved with the rest of its state, so a loaded run needs no text tower pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Literal

import torch

from ..errors import ConfigError
from ..templates import TemplateChoice, check_templates
from .base import Learner, LearnerConfig

#: fixed: the published defaults, no validation data read; val: the reference's search on the few-shot validation
#: split (min(shots, 4) per class, as CoOp draws it), never on test
HyperParameters = Literal["fixed", "val"]


@dataclass
class FeatureMethodConfig(LearnerConfig):
    """Options every method on features has."""

    #: the zero-shot class weights' templates: "dataset" (the method's reference choice for the dataset), a named
    #: set ("ensemble", "imagenet80", "imagenet60") or a list of templates with one "{}" each
    templates: TemplateChoice = "dataset"
    hparams: HyperParameters = "fixed"

    @property
    def transfers_to_new_classes(self) -> bool:
        return False  # built from the training classes' features

    def __post_init__(self):
        check_templates(self.templates, "text.templates")


class FeatureMethod(Learner):
    """Zero-shot class weights as class features (``text_features``); subclasses add a head and its state."""

    Config: ClassVar[type] = FeatureMethodConfig

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        self.register_buffer("zeroshot", torch.zeros(len(classnames), backbone.embed_dim))

    def dataset_templates(self, dataset: str, template: str) -> List[str]:
        """The reference's templates for ``dataset`` (``templates: dataset``); default: the dataset's own."""
        return [template]

    def prepare(self, context) -> None:
        templates = self.cfg.templates
        if templates == "dataset":
            templates = self.dataset_templates(context.dataset, context.template)
        self.zeroshot = context.zeroshot_class_features(templates).float()

    def text_features(self, backbone, image_features=None) -> torch.Tensor:
        return self.zeroshot

    def set_classnames(self, backbone, classnames, template=None, dataset=None):
        if list(classnames) != self.classnames:
            raise ConfigError(f"{self.cfg.name} is built from the training classes' few-shot features; it cannot "
                              f"classify other classes. Evaluate it on its training classes.")
        super().set_classnames(backbone, classnames, template, dataset)
