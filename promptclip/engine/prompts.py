"""Learned prompts on disk: ``prompts.safetensors`` (tensors) + ``prompts.json`` (what they belong to).

The tensors are every learner's state: prompts, and what a method prepared from the data (a cache model's keys and
values), whose shapes ``prompts.json`` records and loading checks. A folder made by ``promptclip export`` holds the
same two things in PEFT's layout (``adapter_model.safetensors`` + ``adapter_config.json``) and loads the same way."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..backbone import FrozenCLIP
from ..config import default_cache_dir, registered_config
from ..errors import BackboneError, PromptclipError
from ..learners.base import LEARNERS, StateMismatch
from ..model import ModelParts, PromptedCLIP, create_model
from ..registry import LOSSES
from ..runs import ADAPTER_CONFIG, ADAPTER_FORMAT, ADAPTER_MODEL, PEFT_TYPE, PROMPTS, PROMPTS_META, weights_digest
from ..utils import atomic_write_bytes, atomic_write_json, versions
from ..weights import state_mismatch

FORMAT_VERSION = 1
REDO = "redo that run (its training command with --replace), or pass the right run folder"
REEXPORT = ("export the run again (promptclip export RUN_DIR DIR --overwrite), or fetch the folder again from where "
            "it was shared")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def prompt_tensors(model: PromptedCLIP) -> Dict[str, torch.Tensor]:
    """Every learned tensor, keyed ``text.<name>`` / ``vision.<name>``, and a loss's own (a plug-in's head)
    ``losses.<loss>.<name>``."""
    owners = {**model.learners(), **{f"losses.{name}": loss for name, loss in model.losses.items()}}
    return {f"{owner}.{key}": value.detach().float().cpu().contiguous()
            for owner, module in owners.items() for key, value in module.state_dict().items()}


def save_prompts(model: PromptedCLIP, directory: Union[str, Path], method: str = "", extra: Optional[dict] = None):
    """Write the prompts and their metadata atomically into ``directory``."""
    directory = Path(directory)
    tensors = prompt_tensors(model)
    atomic_write_bytes(directory / PROMPTS, save_safetensors(tensors))
    meta = {
        "format": FORMAT_VERSION,
        "method": method,
        "learners": {side: dataclasses.asdict(learner.cfg) for side, learner in model.learners().items()},
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


class Layout(NamedTuple):
    """Which files of a folder hold the prompts, and how to redo them when they are damaged."""

    meta: str
    tensors: str
    redo: str


RUN_LAYOUT = Layout(PROMPTS_META, PROMPTS, REDO)
EXPORT_LAYOUT = Layout(ADAPTER_CONFIG, ADAPTER_MODEL, REEXPORT)


def layout(directory: Union[str, Path]) -> Layout:
    """A run folder's files, or an export's: a folder with adapter_config.json and no prompts.json is an export."""
    directory = Path(directory)
    is_export = (directory / ADAPTER_CONFIG).is_file() and not (directory / PROMPTS_META).is_file()
    return EXPORT_LAYOUT if is_export else RUN_LAYOUT


def local_weights_sha256(path: Union[str, Path]) -> str:
    """The sha256 of a local checkpoint file (kept in the cache folder by path, size and mtime, as training does)."""
    return weights_digest(Path(path).resolve(), default_cache_dir())


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


def _check_adapter(config, path: Path) -> None:
    """Refuse an adapter_config.json that is not a promptclip adapter's (PEFT's LoRA for an LLM ...) or is newer."""
    if not isinstance(config, dict):
        return  # _meta_problem says what it holds
    peft_type, base = config.get("peft_type"), config.get("base_model_name_or_path")
    if peft_type != PEFT_TYPE:
        what = f"a PEFT adapter of type {peft_type}" if isinstance(peft_type, str) else "an adapter without peft_type"
        raise PromptclipError(f"{path} describes {what}{f' for {base}' if isinstance(base, str) else ''}, not a "
                              f"promptclip adapter (peft_type {PEFT_TYPE}): promptclip loads run folders and folders "
                              f"made by promptclip export. Load this one with the library that made it (e.g. peft).")
    version = config.get("adapter_format")
    if not isinstance(version, int) or isinstance(version, bool) or version > ADAPTER_FORMAT:
        raise PromptclipError(f"{path} has adapter_format {version!r}; this promptclip reads adapter_format "
                              f"{ADAPTER_FORMAT}: upgrade promptclip, or {REEXPORT}.")


def read_meta(directory: Union[str, Path]) -> dict:
    """The checked content of ``directory/prompts.json`` (an exported folder: of its adapter_config.json)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PromptclipError(f"Run folder {directory} does not exist (or is not a folder): give a run folder that "
                              f"finished training, or a folder made by promptclip export.")
    files = layout(directory)
    path = directory / files.meta
    if not path.is_file():
        raise PromptclipError(f"No saved prompts in {directory}: {PROMPTS_META} is missing. Give a run folder that "
                              f"finished training (it holds {PROMPTS} and {PROMPTS_META}), or a folder made by "
                              f"promptclip export (it holds {ADAPTER_MODEL} and {ADAPTER_CONFIG}).")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        what = "is empty" if path.stat().st_size == 0 else f"is not valid JSON ({err})"
        raise PromptclipError(f"{path} {what}: {files.redo}.") from None
    if files is EXPORT_LAYOUT:
        _check_adapter(meta, path)
    problem = _meta_problem(meta)
    if problem:
        raise PromptclipError(f"{path} is not saved-prompt metadata ({problem}): {files.redo}.")
    version = meta.get("format", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PromptclipError(f"{path} has format {version!r}; this promptclip reads format {FORMAT_VERSION}: "
                              f"upgrade promptclip, or {files.redo}.")
    return meta


def read_tensors(directory: Union[str, Path], meta: dict) -> Tuple[bytes, Dict[str, torch.Tensor]]:
    """The bytes and tensors of ``directory/prompts.safetensors`` (an export's adapter_model.safetensors), checked
    against the shapes its metadata records."""
    directory = Path(directory)
    files = layout(directory)
    path = directory / files.tensors
    if not path.is_file():
        raise PromptclipError(f"{path} is missing (its {files.meta} is there): {files.redo}.")
    data = path.read_bytes()
    try:
        tensors = load_safetensors(data)
    except SafetensorError as err:
        what = "is empty" if not data else f"is damaged or incomplete ({err})"
        raise PromptclipError(f"{path} {what}: {files.redo}.") from None
    mismatch = "shapes" in meta and state_mismatch({k: v.shape for k, v in tensors.items()}, meta["shapes"])
    if mismatch:
        raise PromptclipError(f"{path} does not match its {files.meta} ({mismatch}): {files.redo}.")
    return data, tensors


def _backbone_source(meta: dict, directory: Path) -> Tuple[str, Optional[str]]:
    """(model name, pretrained) recorded in prompts.json (or adapter_config.json). A checkpoint file or ``local-dir:``
    folder named by a relative path is looked up inside the folder and must stay in it; an absolute path is the file
    the prompts were learned on, only read (with ``weights_only=True``). An export's recorded sha256 is checked."""
    import open_clip

    name, pretrained = meta["backbone"]["model"], meta["backbone"]["pretrained"]
    source = directory / layout(directory).meta

    def inside(value: str, what: str) -> str:
        if os.path.isabs(value):
            return value
        root = directory.resolve()
        path = (root / value).resolve()
        if root != path and root not in path.parents:
            raise PromptclipError(f"{source} names the {what} {value!r}, a relative path that leads "
                                  f"out of the run folder, where relative paths must stay: write its absolute path "
                                  f"there, or pass the right run folder.")
        return str(path)

    if name.startswith("local-dir:"):
        name = "local-dir:" + inside(name[len("local-dir:"):], "model folder")
    elif pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        pretrained = inside(pretrained, "weights file")
        expected = meta.get("weights_sha256")
        sha = f" (sha256 {expected})" if isinstance(expected, str) else ""
        if not os.path.isfile(pretrained):
            raise PromptclipError(
                f"{source} says the prompts were learned on the weights file {pretrained}{sha}, which does "
                f"not exist here: put that file there, or pass the backbone yourself "
                f"(load_prompts(run_dir, backbone=FrozenCLIP.load({name!r}, WEIGHTS_FILE))).")
        if sha and local_weights_sha256(pretrained) != expected:
            raise PromptclipError(f"{pretrained} is not the weights file the prompts in {directory} were learned on: "
                                  f"{source} records sha256 {expected}, the file has another. Put the file with "
                                  f"that sha256 there.")
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
    _, tensors = read_tensors(directory, meta)
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
        files = layout(directory)
        raise PromptclipError(f"{directory / files.tensors} does not fit {learner} its {files.meta} describes "
                              f"({mismatch}): {files.redo}.") from None


def _options(directory: Path, kind: str, key: str, options: dict):
    """The typed options of the ``kind`` (learner or loss) recorded under ``key`` in prompts.json."""
    registry, name = (LEARNERS, options.get("name")) if kind == "learner" else (LOSSES, key)
    try:
        return registered_config(kind, options, key, name=name)
    except PromptclipError as err:
        todo = (f"use the promptclip version that trained the run, or {layout(directory).redo}" if name in registry
                else f"import the plugin that registers that {kind}, or use the promptclip that trained the run")
        raise PromptclipError(f"{directory / layout(directory).meta} holds {key} {kind} options this promptclip cannot "
                              f"build ({err}): {todo}.") from None
