"""The method seam beyond prompts: extra losses (registered by name, usable with any learner) and what they see.

The composed model computes ``CE + Σ weight_i · loss_i(output, labels)``. A loss that needs something before
training (DAPT's class prototypes, KgCoOp's zero-shot class features) implements ``prepare(context)``; the engine
calls it once with a :class:`~promptclip.hooks.PrepareContext`. At each step a loss reads the
:class:`~promptclip.hooks.ModelOutput` (both in :mod:`promptclip.hooks`).
"""
from __future__ import annotations

from typing import ClassVar, Dict

import torch
from torch import nn

from .errors import ConfigError
from .learners.base import load_exactly
from .hooks import ModelOutput, PrepareContext
from .options.base import AnchoredLossConfig, LossConfig

class ExtraLoss(nn.Module):
    """Base class for an additional loss term."""

    Config: ClassVar[type] = LossConfig
    #: reads ``ModelOutput.frozen_image_features``: the engine then gives them from its feature cache of the
    #: training views instead of running the unprompted image tower at every step
    uses_frozen_image_features: ClassVar[bool] = False
    #: the term is not added to the loss: its gradient is taken on its own and :meth:`combine_gradients` merges it
    #: with the main loss's before each step (ProGrad); at most one loss of a model has a gradient rule
    gradient_rule: ClassVar[bool] = False
    #: the learning rate of this loss's own parameters (a head it trains, DePT's) relative to the schedule's
    lr_scale: float = 1.0

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def prepare(self, context: PrepareContext) -> None:
        """Compute what the loss needs from the data before training (default: nothing)."""

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fuse(self, logits: torch.Tensor, image_features: torch.Tensor, on_training_classes: bool) -> torch.Tensor:
        """The logits at test time once this term has had its say: a plug-in that trains a head of its own (DePT's)
        fuses it in here, knowing whether the classes are those it was trained on. Default: unchanged. A loss's
        persistent parameters and buffers are saved with the run's prompts and loaded back with them."""
        return logits

    def load_learned(self, state: Dict[str, torch.Tensor]) -> None:
        """Load this loss's saved tensors (``losses.<name>.*`` of the run's prompts); a loss whose tensors are sized
        by the data (a head over the training classes) sizes them from ``state`` first."""
        load_exactly(self, state)

    def combine_gradients(self, main: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """One parameter's gradient from the main loss's (``main``) and this term's (``own``), both unscaled;
        called only when :attr:`gradient_rule` is set."""
        raise NotImplementedError


class ZeroShotAnchoredLoss(ExtraLoss):
    """A loss measured against frozen zero-shot class features (KgCoOp, PromptSRC), prepared once for the training
    classes from ``cfg.templates``."""

    Config: ClassVar[type] = AnchoredLossConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("zeroshot", torch.empty(0), persistent=False)

    def prepare(self, context: PrepareContext) -> None:
        self.zeroshot = context.zeroshot_class_features(self.cfg.templates, self.cfg.normalize_each_template)

    def anchors(self, text_features: torch.Tensor) -> torch.Tensor:
        """The zero-shot class features ``[C, E]`` for class features ``text_features`` (``[..., C, E]``)."""
        if self.zeroshot.numel() == 0 or self.zeroshot.shape[0] != text_features.shape[-2]:
            raise ConfigError(f"{type(self).__name__} has no zero-shot class features for these classes: call "
                              f"prepare(context) on the training classes before training (promptclip's engine does).")
        return self.zeroshot.to(text_features.device)
