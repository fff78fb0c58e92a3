"""Learned prompts on disk: ``prompts.safetensors`` (tensors) + ``prompts.json`` (what they belong to)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..backbone import FrozenCLIP
from ..config import registered_config
from ..errors import BackboneError, PromptclipError
from ..learners.base import build_learner
from ..model import PromptedCLIP
from ..utils import atomic_write_bytes, atomic_write_json, versions

FORMAT_VERSION = 1
TENSORS, META = "prompts.safetensors", "prompts.json"


def prompt_tensors(model: PromptedCLIP) -> Dict[str, torch.Tensor]:
    """Every learned tensor, keyed ``text.<name>`` / ``vision.<name>``."""
    return {f"{side}.{key}": value.detach().float().cpu().contiguous()
            for side, learner in model.learners().items() for key, value in learner.state_dict().items()}


def save_prompts(model: PromptedCLIP, directory: Union[str, Path], method: str = "", extra: Optional[dict] = None):
    """Write the prompts and their metadata atomically into ``directory``."""
    directory = Path(directory)
    tensors = prompt_tensors(model)
    atomic_write_bytes(directory / TENSORS, save_safetensors(tensors))
    meta = {
        "format": FORMAT_VERSION,
        "method": method,
        "learners": {side: dataclasses.asdict(l.cfg) for side, l in model.learners().items()},
        "backbone": model.backbone.describe(),
        "classnames": model.classnames,
        "template": model.text.template,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "num_parameters": sum(v.numel() for v in tensors.values()),
        "versions": versions(),
        **(extra or {}),
    }
    atomic_write_json(directory / META, meta)


def read_meta(directory: Union[str, Path]) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise PromptclipError(f"No saved prompts in {directory}: {META} is missing. Give a run folder that finished "
                              f"training (it holds {TENSORS} and {META}).")
    return json.loads(path.read_text())


def check_backbone(meta: dict, backbone: FrozenCLIP, source) -> None:
    saved, here = meta["backbone"], backbone.describe()
    if saved["model"] != here["model"] or any(saved[k] != here[k] for k in ("text_width", "vision_width", "embed_dim")):
        raise BackboneError(
            f"The prompts in {source} were learned on {saved['model']} (text width {saved['text_width']}, vision "
            f"width {saved['vision_width']}); this backbone is {here['model']} (text width {here['text_width']}, "
            f"vision width {here['vision_width']}). Load them with model.name={saved['model']}.")


def load_prompts(directory: Union[str, Path], backbone: Optional[FrozenCLIP] = None,
                 device: Union[str, torch.device] = "cpu") -> PromptedCLIP:
    """Rebuild the model a run saved (on its own backbone unless one is given)."""
    directory = Path(directory)
    meta = read_meta(directory)
    if backbone is None:
        backbone = FrozenCLIP.load(meta["backbone"]["model"], meta["backbone"]["pretrained"], device=device)
    check_backbone(meta, backbone, directory)
    tensors = load_safetensors((directory / TENSORS).read_bytes())
    learners = {}
    for side, options in meta["learners"].items():
        cfg = registered_config("learner", options, side)
        learner = build_learner(cfg, backbone, meta["classnames"], meta["template"])
        prefix = f"{side}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            learner.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise PromptclipError(f"{directory / TENSORS} does not match its {META} ({side} learner): {err}") from None
        learners[side] = learner
    return PromptedCLIP(backbone, learners["text"], learners.get("vision")).to(device)
