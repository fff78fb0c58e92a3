"""Learned prompts on disk: ``prompts.safetensors`` (tensors) + ``prompts.json`` (what they belong to).

The tensors are every learner's state: prompts, and what a method prepared from the data (a cache model's keys and
values), whose shapes ``prompts.json`` records and loading checks."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..backbone import FrozenCLIP, state_mismatch
from ..config import registered_config
from ..errors import BackboneError, PromptclipError
from ..learners.base import LEARNERS, StateMismatch
from ..model import ModelParts, PromptedCLIP, create_model
from ..registry import LOSSES
from ..runs import PROMPTS, PROMPTS_META
from ..utils import atomic_write_bytes, atomic_write_json, versions

FORMAT_VERSION = 1
REDO = "redo that run (its training command with --replace), or pass the right run folder"
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def prompt_tensors(model: PromptedCLIP) -> Dict[str, torch.Tensor]:
    """Every learned tensor, keyed ``text.<name>`` / ``vision.<name>``."""
    return {f"{side}.{key}": value.detach().float().cpu().contiguous()
            for side, learner in model.learners().items() for key, value in learner.state_dict().items()}


def save_prompts(model: PromptedCLIP, directory: Union[str, Path], method: str = "", extra: Optional[dict] = None):
    """Write the prompts and their metadata atomically into ``directory``."""
    directory = Path(directory)
    tensors = prompt_tensors(model)
    atomic_write_bytes(directory / PROMPTS, save_safetensors(tensors))
    meta = {
        "format": FORMAT_VERSION,
        "method": method,
        "learners": {side: dataclasses.asdict(l.cfg) for side, l in model.learners().items()},
        "losses": {name: dataclasses.asdict(loss.cfg) for name, loss in model.losses.items()},
        "backbone": model.backbone.describe(),
        "classnames": model.classnames,
        "template": model.text.template,
        "dataset": model.text.dataset,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "num_parameters": sum(v.numel() for v in tensors.values()),
        "versions": versions(),
        **(extra or {}),
    }
    atomic_write_json(directory / PROMPTS_META, meta)


def _meta_problem(meta) -> str:
    """What is wrong with the content of a prompts.json, or ''."""
    if not isinstance(meta, dict):
        return f"it holds {_JSON_TYPES.get(type(meta), 'something')} instead of an object"
    missing = [k for k in ("learners", "backbone", "classnames", "template") if k not in meta]
    if missing:
        return f"{', '.join(missing)} missing"
    learners, backbone, classnames = meta["learners"], meta["backbone"], meta["classnames"]
    if not (isinstance(learners, dict) and "text" in learners and set(learners) <= {"text", "vision"}
            and all(isinstance(v, dict) for v in learners.values())):
        return "learners must map text (and optionally vision) to their options"
    if not (isinstance(backbone, dict) and isinstance(backbone.get("model"), str)
            and isinstance(backbone.get("pretrained"), (str, type(None)))
            and all(isinstance(backbone.get(k), int) for k in ("text_width", "embed_dim"))
            and isinstance(backbone.get("vision_width"), (int, type(None)))):
        return "backbone must hold model, pretrained, text_width, vision_width and embed_dim"
    if not (isinstance(classnames, list) and classnames and all(isinstance(c, str) for c in classnames)):
        return "classnames must be a non-empty list of names"
    if not isinstance(meta["template"], str):
        return "template must be a string"
    losses = meta.get("losses", {})
    if not (isinstance(losses, dict) and all(isinstance(v, dict) for v in losses.values())):
        return "losses must map loss names to their options"
    shapes = meta.get("shapes", {})
    if not (isinstance(shapes, dict) and all(isinstance(v, list) and all(isinstance(d, int) for d in v)
                                             for v in shapes.values())):
        return "shapes must map tensor names to lists of sizes"
    return ""


def read_meta(directory: Union[str, Path]) -> dict:
    """The checked content of ``directory/prompts.json``."""
    directory = Path(directory)
    path = directory / PROMPTS_META
    if not directory.is_dir():
        raise PromptclipError(f"Run folder {directory} does not exist (or is not a folder): give a run folder that "
                              f"finished training.")
    if not path.is_file():
        raise PromptclipError(f"No saved prompts in {directory}: {PROMPTS_META} is missing. Give a run folder that "
                              f"finished training (it holds {PROMPTS} and {PROMPTS_META}).")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        what = "is empty" if path.stat().st_size == 0 else f"is not valid JSON ({err})"
        raise PromptclipError(f"{path} {what}: {REDO}.") from None
    problem = _meta_problem(meta)
    if problem:
        raise PromptclipError(f"{path} is not saved-prompt metadata ({problem}): {REDO}.")
    version = meta.get("format", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PromptclipError(f"{path} has format {version!r}; this promptclip reads format {FORMAT_VERSION}: "
                              f"upgrade promptclip, or {REDO}.")
    return meta


def _read_tensors(directory: Path, meta: dict) -> Dict[str, torch.Tensor]:
    """The tensors of ``directory/prompts.safetensors``, checked against the shapes its prompts.json records."""
    path = directory / PROMPTS
    if not path.is_file():
        raise PromptclipError(f"{path} is missing (its {PROMPTS_META} is there): {REDO}.")
    try:
        tensors = load_safetensors(path.read_bytes())
    except SafetensorError as err:
        what = "is empty" if path.stat().st_size == 0 else f"is damaged or incomplete ({err})"
        raise PromptclipError(f"{path} {what}: {REDO}.") from None
    mismatch = "shapes" in meta and state_mismatch({k: v.shape for k, v in tensors.items()}, meta["shapes"])
    if mismatch:
        raise PromptclipError(f"{path} does not match its {PROMPTS_META} ({mismatch}): {REDO}.")
    return tensors


def _backbone_source(meta: dict, directory: Path) -> Tuple[str, Optional[str]]:
    """(model name, pretrained) recorded in prompts.json. A checkpoint file or ``local-dir:`` folder named by a
    relative path is looked up inside the run folder and must stay in it; an absolute path is the file the
    prompts were learned on, only read (with ``weights_only=True``)."""
    import open_clip

    name, pretrained = meta["backbone"]["model"], meta["backbone"]["pretrained"]

    def inside(value: str, what: str) -> str:
        if os.path.isabs(value):
            return value
        root = directory.resolve()
        path = (root / value).resolve()
        if root != path and root not in path.parents:
            raise PromptclipError(f"{directory / PROMPTS_META} names the {what} {value!r}, a relative path that leads "
                                  f"out of the run folder, where relative paths must stay: write its absolute path "
                                  f"there, or pass the right run folder.")
        return str(path)

    if name.startswith("local-dir:"):
        name = "local-dir:" + inside(name[len("local-dir:"):], "model folder")
    elif pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        pretrained = inside(pretrained, "weights file")
        if not os.path.isfile(pretrained):
            raise PromptclipError(
                f"{directory / PROMPTS_META} says the prompts were learned on the weights file {pretrained}, which does "
                f"not exist here: put that file there, or pass the backbone yourself "
                f"(load_prompts(run_dir, backbone=FrozenCLIP.load({name!r}, WEIGHTS_FILE))).")
    return name, pretrained


def check_backbone(meta: dict, backbone: FrozenCLIP, source) -> None:
    saved, here = meta["backbone"], backbone.describe()
    if saved["model"] != here["model"] or any(saved[k] != here[k] for k in ("text_width", "vision_width", "embed_dim")):
        raise BackboneError(
            f"The prompts in {source} were learned on {saved['model']} (text width {saved['text_width']}, vision "
            f"width {saved['vision_width']}); this backbone is {here['model']} (text width {here['text_width']}, "
            f"vision width {here['vision_width']}). Load them with model.name={saved['model']}.")


def load_prompts(directory: Union[str, Path], backbone: Optional[FrozenCLIP] = None,
                 device: Union[str, torch.device] = "cpu") -> PromptedCLIP:
    """Rebuild the model a run saved (on its own backbone unless one is given). Only reads: nothing in the run
    folder's metadata becomes a path to write."""
    directory = Path(directory)
    meta = read_meta(directory)
    tensors = _read_tensors(directory, meta)
    if backbone is None:
        backbone = FrozenCLIP.load(*_backbone_source(meta, directory), device=device)
    check_backbone(meta, backbone, directory)
    options = {side: _options(directory, "learner", side, value) for side, value in meta["learners"].items()}
    losses = {name: _options(directory, "loss", name, value) for name, value in meta.get("losses", {}).items()}
    parts = ModelParts(options["text"], meta["classnames"], meta["template"], str(meta.get("dataset") or ""),
                       options.get("vision"), losses)
    try:
        return create_model(parts, backbone, state=tensors).to(device)
    except StateMismatch as err:
        learner, mismatch = err.args
        raise PromptclipError(f"{directory / PROMPTS} does not fit {learner} its {PROMPTS_META} describes "
                              f"({mismatch}): {REDO}.") from None


def _options(directory: Path, kind: str, key: str, options: dict):
    """The typed options of the ``kind`` (learner or loss) recorded under ``key`` in prompts.json."""
    registry, name = (LEARNERS, options.get("name")) if kind == "learner" else (LOSSES, key)
    try:
        return registered_config(kind, options, key, name=name)
    except PromptclipError as err:
        todo = (f"use the promptclip version that trained the run, or {REDO}" if name in registry
                else f"import the plugin that registers that {kind}, or use the promptclip that trained the run")
        raise PromptclipError(f"{directory / PROMPTS_META} holds {key} {kind} options this promptclip cannot "
                              f"build ({err}): {todo}.") from None
