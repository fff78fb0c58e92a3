"""Callbacks, registered by name with ``@CALLBACKS.register("name")`` and configured beside the losses
(``callbacks: {gpa: {...}}``). The contract (:class:`~promptclip.hooks.Callback`) lives with the other method hooks.
"""
from __future__ import annotations

from typing import Dict

from .hooks import Callback, CallbackConfig
from .registry import CALLBACKS

__all__ = ["CALLBACKS", "Callback", "CallbackConfig", "build_callbacks"]


def build_callbacks(configs: Dict[str, object]) -> Dict[str, Callback]:
    return {name: CALLBACKS.get(name)(cfg) for name, cfg in configs.items()}
