"""Callbacks: method-owned hooks at epoch end and training end, with state that checkpoints resume exactly.

A callback is configured beside the losses (``callbacks: {gpa: {...}}``) and registered by name with
``@CALLBACKS.register("name")``. The engine calls :meth:`Callback.prepare` once before training,
:meth:`~Callback.on_epoch_end` after every epoch (before the checkpoint is written, so the checkpoint holds the
state after that epoch) and :meth:`~Callback.on_train_end` once when training is over, before the prompts are saved
and evaluated. ``state_dict`` must hold tensors, numbers, strings and containers of them (checkpoints load with
``weights_only=True``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict

from .losses import PrepareContext
from .registry import CALLBACKS

__all__ = ["CALLBACKS", "Callback", "CallbackConfig", "build_callbacks"]


@dataclass
class CallbackConfig:
    """Options every callback has (none yet); subclasses add their own fields."""


class Callback:
    """Base class: every hook does nothing."""

    Config: ClassVar[type] = CallbackConfig

    def __init__(self, cfg):
        self.cfg = cfg

    def prepare(self, context: PrepareContext, model) -> None:
        """Once before training (also before a resumed run's checkpoint is restored)."""

    def on_epoch_end(self, epoch: int, model) -> None:
        """After epoch ``epoch`` (0-based) has been trained."""

    def on_train_end(self, model) -> None:
        """After the last epoch (also when a resumed run had nothing left to train), before the prompts are saved."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


def build_callbacks(configs: Dict[str, object]) -> Dict[str, Callback]:
    return {name: CALLBACKS.get(name)(cfg) for name, cfg in configs.items()}
