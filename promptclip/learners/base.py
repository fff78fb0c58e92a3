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
from ..registry import Registry

#: name → Learner subclass. Register with ``@LEARNERS.register("name")``.
LEARNERS: Registry = Registry("learner")


@dataclass
class LearnerConfig:
    """Options every learner has; subclasses add their own fields."""

    #: the learner trains on (or fits to) the few-shot training split; false runs need no shot count
    uses_training_data: ClassVar[bool] = True
    name: str = ""


class Learner(nn.Module):
    """Base class. Subclasses set ``Config`` and ``sides`` and implement the hooks for their sides."""

    Config: ClassVar[type] = LearnerConfig
    sides: ClassVar[Tuple[str, ...]] = ("text",)
    #: class features depend on the image features (CoCoOp): they cannot be computed once per evaluation
    image_conditioned: ClassVar[bool] = False

    def __init__(self, cfg, backbone: FrozenCLIP, classnames: List[str], template: str = "a photo of a {}."):
        super().__init__()
        self.cfg = cfg
        self.classnames = list(classnames)
        self.template = template

    def set_classnames(self, backbone: FrozenCLIP, classnames: List[str], template: Optional[str] = None) -> None:
        """Re-target the learner to another class set (new classes, another dataset), keeping learned prompts."""
        self.classnames = list(classnames)
        if template is not None:
            self.template = template

    def text_features(self, backbone: FrozenCLIP, image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class features ``[C, E]`` (``[B, C, E]`` if image-conditioned), not necessarily normalised."""
        raise ConfigError(f"Learner {type(self).__name__} does not prompt the text tower.")

    def vision_prompts(self, backbone: FrozenCLIP) -> Optional[VisionPrompts]:
        """Prompt tokens for the image tower, or None."""
        return None


def build_learner(cfg, backbone: FrozenCLIP, classnames: List[str], template: str) -> Learner:
    cls = LEARNERS.get(cfg.name)
    return cls(cfg, backbone, classnames, template)
