"""Which device and precision a run uses. Torch is imported inside the functions, so that the run identity
(:mod:`promptclip.runs`, torch-free for the light commands) can resolve ``precision: auto`` by the engine's own rule."""
from __future__ import annotations

from typing import Literal, get_args

from .errors import ConfigError

#: train.precision (auto: fp32 on CPU, bf16 on a GPU with native bf16, else fp16)
Precision = Literal["fp32", "bf16", "fp16", "auto"]


def resolve_device(name: str = "auto"):
    """The ``torch.device`` for ``train.device`` (auto: cuda when available, else cpu)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA GPU is visible; use train.device=cpu (or auto).")
    return device


def native_bf16(device) -> bool:
    """Whether a CUDA device computes in bf16 natively (Ampere or newer, or ROCm) rather than by emulation."""
    import torch

    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device) -> str:
    """The precision a run uses: ``auto`` is fp32 on CPU (bf16 autocast is often several times slower there), bf16
    on a GPU with native bf16, else fp16 (with a grad scaler)."""
    if precision not in get_args(Precision):
        raise ConfigError(f"train.precision must be one of {', '.join(get_args(Precision))}, not {precision!r}.")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU (it uses a grad scaler); on CPU use bf16 or fp32.")
    return precision
