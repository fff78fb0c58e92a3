"""What a learner is: a module that declares which prompts go where, for the backbone to apply.

A learner never touches open_clip. Text learners return class features through ``backbone.encode_text``; vision
learners return :class:`~promptclip.backbone.VisionPrompts` for ``backbone.encode_image``. A learner that prompts
both towers (MaPLe, IVLP) sets ``sides = ("text", "vision")``.

The model is two stages, as timm cuts ``forward_features`` from ``forward_head``: the image tower (prompted or not)
gives normalised image features, and the text learner's :meth:`Learner.head` turns them into logits (by default
``τ · cos(image, class)``). A method on features (an adapter, a cache model, a probe) leaves the towers alone and
overrides ``head``; what it needs from the data it takes in :meth:`Learner.prepare`, once before training, and
keeps in tensors that are saved with it (``data_shaped`` names those whose size comes from the data).
"""
from __future__ import annotations

from typing import ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..backbone import BlockAdapter, FrozenCLIP, VisionPrompts
from ..errors import ConfigError
from ..options.base import LearnerConfig
from ..registry import LEARNERS
from ..architecture import Architecture
from ..weights import state_mismatch


class StateMismatch(ValueError):
    """Saved tensors that do not fit the learner they are loaded into (names and shapes in the message)."""


class Learner(nn.Module):
    """Base class. Subclasses set ``Config`` and ``sides`` and implement the hooks for their sides."""

    Config: ClassVar[type] = LearnerConfig
    sides: ClassVar[Tuple[str, ...]] = ("text",)
    #: class features depend on the image features (CoCoOp): they cannot be computed once per evaluation
    image_conditioned: ClassVar[bool] = False

    #: state entries (top-level parameters or buffers) whose first dimension comes from the training data (a cache
    #: of N keys): sized from the saved tensors when a run is loaded; the other dimensions must match
    data_shaped: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    def resolve(cls, cfg, backbone: FrozenCLIP):
        """``cfg`` with the options that depend on the backbone resolved (CoOp's context length from its init
        words): the factory builds the learner from the result and saves it, so no learner writes into its
        config."""
        return cfg

    @classmethod
    def architecture_problems(cls, cfg, arch: Architecture) -> List[str]:
        """What of ``cfg`` the backbone ``arch`` cannot run (more prompted layers than a tower has ...), one phrase
        each; :func:`check_architecture` joins them. Read from the model config, so a dry run checks before any
        weights load."""
        return []

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

    def vision_adapters(self, backbone: FrozenCLIP) -> Optional[Dict[int, BlockAdapter]]:
        """Changes of the image tower's attention projections by block index (CLIP-LoRA's deltas), or None."""
        return None

    def prepare(self, context) -> None:
        """Once before training, with the :class:`~promptclip.hooks.PrepareContext` the losses get: build what the
        learner needs from the data (a cache model, class means). Default: nothing."""

    def after_training(self, context) -> None:
        """Once after training (right after :meth:`prepare` for a method with nothing to train), before the run
        is evaluated and saved: e.g. a hyper-parameter search on ``context.validation()``. Default: nothing."""

    def hyperparameters(self) -> Dict[str, float]:
        """Values the learner chose from data (a search on validation), recorded in ``result.json``."""
        return {}

    def head(self, image_features: torch.Tensor, class_features: torch.Tensor,
             logit_scale: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` from normalised image features ``[B, E]`` and this learner's class features; only the
        text learner's head is used. Default: ``τ · cos``."""
        return scaled_cosine(image_features, class_features, logit_scale)

    def load_learned(self, state: Dict[str, torch.Tensor]) -> None:
        """Load saved state: entries named in ``data_shaped`` are first sized as saved (only their first dimension
        may differ), then every entry must fit exactly. A misfit raises :class:`StateMismatch` naming it."""
        for name in self.data_shaped:
            current = getattr(self, name)
            if name in state and state[name].shape[1:] == current.shape[1:]:
                fresh = torch.zeros(state[name].shape, dtype=current.dtype, device=current.device)
                setattr(self, name, nn.Parameter(fresh, current.requires_grad)
                        if isinstance(current, nn.Parameter) else fresh)
        load_exactly(self, state)


def load_exactly(module: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """``module.load_state_dict(state, strict=True)``, a misfit first raised as :class:`StateMismatch` naming every
    tensor that does not fit."""
    mismatch = state_mismatch({k: v.shape for k, v in state.items()},
                              {k: v.shape for k, v in module.state_dict().items()})
    if mismatch:
        raise StateMismatch(mismatch)
    module.load_state_dict(state, strict=True)


def scaled_cosine(image_features: torch.Tensor, class_features: torch.Tensor, logit_scale: torch.Tensor
                  ) -> torch.Tensor:
    """``τ · image @ class.T`` for normalised features; per image for image-conditioned ``[B, C, E]`` classes."""
    class_features = class_features.to(image_features.dtype)
    if class_features.dim() == 3:
        return logit_scale * torch.einsum("be,bce->bc", image_features, class_features)
    return logit_scale * image_features @ class_features.t()


def architecture_error(arch: Architecture, problems: List[str]) -> str:
    """One message for all of ``problems``, with the way out."""
    return (f"{arch.name} cannot run these settings: {'; '.join(problems)}. Lower them, or use a deeper backbone "
            f"(offline: model.name=tiny-vit-deep, 12 layers per tower).")


def check_architecture(arch: Architecture, *learner_cfgs) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``learner_cfgs`` on ``arch`` (none: return)."""
    problems = [p for c in learner_cfgs for p in LEARNERS.get(c.name).architecture_problems(c, arch)]
    if problems:
        raise ConfigError(architecture_error(arch, problems))


def build_learner(cfg, backbone: FrozenCLIP, classnames: List[str], template: str, dataset: str = "") -> Learner:
    """The registered learner ``cfg.name`` built from ``cfg`` with its backbone-dependent options resolved."""
    cls = LEARNERS.get(cfg.name)
    return cls(cls.resolve(cfg, backbone), backbone, classnames, template, dataset)
