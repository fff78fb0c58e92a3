"""What a learner is: a module that declares which prompts go where, for the backbone to apply.

A learner never touches open_clip. Text learners return class features through ``backbone.encode_text``; vision
learners return :class:`~promptclip.backbone.VisionPrompts` for ``backbone.encode_image``. A learner that prompts
both towers (MaPLe, IVLP) sets ``sides = ("text", "vision")``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional, Tuple

import torch
from torch import nn

from ..backbone import FrozenCLIP, VisionPrompts
from ..errors import ConfigError
from ..registry import LEARNERS



@dataclass
class LearnerConfig:
    """Options every learner has; subclasses add their own fields."""

    #: the learner trains on (or fits to) the few-shot training split; false runs need no shot count
    uses_training_data: ClassVar[bool] = True
    name: str = ""

    @property
    def transfers_to_new_classes(self) -> bool:
        """Whether what it learns applies to classes it was not trained on (base-to-new, cross-dataset)."""
        return True


class Learner(nn.Module):
    """Base class. Subclasses set ``Config`` and ``sides`` and implement the hooks for their sides."""

    Config: ClassVar[type] = LearnerConfig
    sides: ClassVar[Tuple[str, ...]] = ("text",)
    #: class features depend on the image features (CoCoOp): they cannot be computed once per evaluation
    image_conditioned: ClassVar[bool] = False
    #: trained by :meth:`fit` on frozen features in closed form (the linear probe) instead of by gradient steps on
    #: prompts; such a learner is a method of its own, with no prompts to combine or save
    fits_in_closed_form: ClassVar[bool] = False

    @classmethod
    def fit(cls, cfg, backbone: FrozenCLIP, dataset, device: torch.device, precision: str, run_dir, progress: bool
            ) -> dict:
        """Fit a closed-form learner (``fits_in_closed_form``) on ``dataset``, save it in ``run_dir`` and return its
        result fields (``test`` metrics included when ``cfg.train.evaluate``)."""
        raise NotImplementedError(f"{cls.__name__} trains by gradient steps, not in closed form.")

    def __init__(self, cfg, backbone: FrozenCLIP, classnames: List[str], template: str = "a photo of a {}.",
                 dataset: str = ""):
        super().__init__()
        self.cfg = cfg
        self.classnames = list(classnames)
        self.template = template
        #: the canonical name of the dataset the class names come from ("" if unknown); template ensembles differ
        self.dataset = dataset

    def set_classnames(self, backbone: FrozenCLIP, classnames: List[str], template: Optional[str] = None,
                       dataset: Optional[str] = None) -> None:
        """Re-target the learner to another class set (new classes, another dataset), keeping learned prompts."""
        self.classnames = list(classnames)
        if template is not None:
            self.template = template
        if dataset is not None:
            self.dataset = dataset

    def text_features(self, backbone: FrozenCLIP, image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class features ``[C, E]`` (``[B, C, E]`` if image-conditioned), not necessarily normalised."""
        raise ConfigError(f"Learner {type(self).__name__} does not prompt the text tower.")

    def vision_prompts(self, backbone: FrozenCLIP) -> Optional[VisionPrompts]:
        """Prompt tokens for the image tower, or None."""
        return None


def build_learner(cfg, backbone: FrozenCLIP, classnames: List[str], template: str, dataset: str = "") -> Learner:
    cls = LEARNERS.get(cfg.name)
    return cls(cfg, backbone, classnames, template, dataset)
