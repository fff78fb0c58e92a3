"""Mixed precision: autocast around the frozen backbone, prompt parameters kept in fp32 (which device and precision a
run uses is decided in :mod:`promptclip.devices`)."""
from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
