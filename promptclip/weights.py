"""The backbone's weights: the open_clip model a name and ``model.pretrained`` mean, built with them, and weights files.

:func:`create_open_clip` builds the open_clip model that :meth:`promptclip.backbone.FrozenCLIP.load` wraps, from an
open_clip tag, a local weights file or random weights. A file open_clip cannot load is read here, safely, to say what
is wrong with it, down to the models its shapes fit; the messages are templates and small functions beside the
checks, so the loading reads in a few lines. What a name means without a model (configs, architectures, whether the
weights are on this machine) is :mod:`promptclip.architecture`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .architecture import SCHEMAS, TINY_MODELS, register_tiny_configs, tower_configs, weights_tag
from .errors import BackboneError
from .registry import suggest

log = logging.getLogger("promptclip")


# ------------------------------------------------------------------------------------------------- creation
def create_open_clip(name: str, pretrained: Optional[str] = None, device="cpu",
                     cache_dir: Optional[str] = None) -> Tuple[nn.Module, Callable, Optional[str]]:
    """open_clip's model ``name``, its tokenizer, and the weights it holds: an open_clip tag, the absolute path of a
    checkpoint file, or None (random weights, or a ``hf-hub:``/``local-dir:`` name with its own). See
    :meth:`promptclip.backbone.FrozenCLIP.load`."""
    import open_clip

    register_tiny_configs()
    pretrained, tag, checkpoint = weights_tag(pretrained), None, None
    if name.startswith(SCHEMAS):
        if pretrained is not None:
            log.warning("model.pretrained=%r is ignored: %r names its own weights.", pretrained, name)
        pretrained = None
    else:
        tag, checkpoint = _open_clip_weights(name, pretrained)
        pretrained = checkpoint or tag
    quick_gelu = tag == "openai" and "quickgelu" not in name.lower()  # OpenAI weights were trained with QuickGELU
    model = _create_model(name, pretrained, quiet=name in TINY_MODELS or checkpoint is not None, pretrained=tag,
                          device=device, cache_dir=cache_dir, weights_only=True, force_quick_gelu=quick_gelu)
    if checkpoint is not None:  # a file: loaded here, where a failure can be explained
        _load_checkpoint(model, checkpoint, name)
    if pretrained is None and not name.startswith(SCHEMAS) and name not in TINY_MODELS:
        log.warning("%s has random weights (no model.pretrained given): accuracies are meaningless.", name)
    return model, open_clip.get_tokenizer(name), pretrained


def _open_clip_weights(name: str, pretrained: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """``(tag, file)`` that ``model.pretrained`` means for the open_clip model ``name``: an open_clip tag, a checked
    local weights file, or neither (random weights)."""
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        raise BackboneError(_unknown_model(name, known))
    tags = open_clip.list_pretrained_tags_by_model(name)
    file = os.path.expanduser(pretrained) if pretrained is not None else None
    if file is not None and (os.path.isfile(file) or (os.path.exists(file) and pretrained not in tags)):
        return None, _checked_checkpoint(file)
    if pretrained is not None and pretrained not in tags:
        raise BackboneError(_unknown_weights(name, pretrained, tags))
    return pretrained, None


def _create_model(name: str, weights: Optional[str], quiet: bool, **options) -> nn.Module:
    """``open_clip.create_model(name, **options)``, random weights drawn from a fixed seed so that saved prompts
    reload onto the very same random backbone; a failure is a BackboneError naming ``weights``."""
    import open_clip

    try:
        with _quiet_root_logger(quiet), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return open_clip.create_model(name, **options)
    except (FileNotFoundError, ValueError) as err:
        raise BackboneError(f"Could not load {name!r}: {err}") from None
    except Exception as err:
        if name.startswith("local-dir:"):  # the folder's weights failed to load: say which file, and why
            raise BackboneError(_local_dir_problem(name, err)) from None
        if not isinstance(err, RuntimeError):
            raise
        raise BackboneError(_creation_problem(name, weights, err)) from None


@contextlib.contextmanager
def _quiet_root_logger(quiet: bool):
    """Silence open_clip's root-logger 'initialized randomly' warning for the built-in tiny configs."""
    root = logging.getLogger()
    level = root.level
    if quiet:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _unknown_model(name: str, known: Sequence[str]) -> str:
    return (f"Unknown CLIP model {name!r}.{suggest(name, known)} "
            f"`python -c 'import open_clip; print(open_clip.list_models())'` lists them all; "
            f"built-in tiny configs: {', '.join(TINY_MODELS)}.")


def _unknown_weights(name: str, pretrained: str, tags: Sequence[str]) -> str:
    """``pretrained`` is neither a file nor a tag of ``name``: a missing file if it looks like a path, else a tag."""
    if any(ch in pretrained for ch in "/\\."):
        return (f"Checkpoint file {pretrained!r} does not exist: check model.pretrained (a weights file, or a tag of "
                f"{name}).")
    return (f"Model {name!r} has no pretrained tag {pretrained!r}.{suggest(pretrained, tags)} "
            f"Its tags: {', '.join(tags) or 'none'}; or pass a local checkpoint file.")


def _creation_problem(name: str, weights: Optional[str], err: RuntimeError) -> str:
    """Why open_clip could not create ``name``: weights it could not download, or open_clip's own words."""
    if "download" not in str(err).lower() and "offline" not in str(err).lower():
        return f"Could not create {name!r} with pretrained={weights!r}: {err}"
    why = "HF_HUB_OFFLINE=1 is set" if os.environ.get("HF_HUB_OFFLINE") == "1" else "the download failed (no network?)"
    local = ("download the repository's files into a folder and use model.name=local-dir:/that/folder"
             if name.startswith(SCHEMAS) else
             "pass a local file: model.pretrained=/path/to/open_clip_pytorch_model.bin")
    return (f"The weights for {name!r} (pretrained={weights!r}) must be downloaded and {why}. Download them on a "
            f"machine with network (open_clip caches them under ~/.cache/huggingface), or {local}.")


# ------------------------------------------------------------------------------------------ checkpoint files
_DAMAGED = ("Checkpoint file {path} is damaged or incomplete (an interrupted download or copy?): download or copy it "
            "again.")
#: what to do with a file that :func:`_file_format` finds is not a state dict, by its format
_NOT_A_STATE_DICT = {
    "damaged-zip": _DAMAGED,
    "torchscript": "Checkpoint file {path} is a TorchScript archive (a whole scripted model, like OpenAI's original "
                   ".pt files), not a state dict: get the model's open_clip weights file (open_clip_pytorch_model.bin "
                   "or .safetensors), or save the scripted model's state_dict() with torch.save.",
    "zip": "Checkpoint file {path} is a zip archive but not a PyTorch checkpoint: unpack it and pass the weights file "
           "inside, or check the path.",
    "text": "Checkpoint file {path} is a text file, not weights: model.pretrained needs a state dict (.bin, .pt, .pth "
            "or .safetensors); a folder with open_clip_config.json and weights loads with model.name=local-dir:FOLDER.",
    "unknown": "Checkpoint file {path} is neither a PyTorch nor a safetensors file (damaged, or not a checkpoint at "
               "all): check the path, or download or copy the file again.",
}
_PICKLED = ("Checkpoint file {path} is not a plain state dict: besides tensors it holds pickled Python objects "
            "({what}), which promptclip does not unpickle because that can run arbitrary code. Where the file was "
            "made, save the weights alone (torch.save(model.state_dict(), 'weights.pt'), or a .safetensors file), or "
            "get the model's open_clip weights file (open_clip_pytorch_model.bin or .safetensors).")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


#: the checks of a weights path that need no reading, in order: (whether it fails, what to say)
_PATH_PROBLEMS = (
    (os.path.isdir, "model.pretrained={path} is a folder, not a weights file: pass the file inside it (e.g. {inside}), "
                    "or use model.name=local-dir:{path} for a folder holding open_clip_config.json and the weights."),
    (lambda path: not os.path.isfile(path), "model.pretrained={path} is not a regular file: pass a weights file."),
    (lambda path: os.path.getsize(path) == 0,
     "Checkpoint file {path} is empty (0 bytes; an interrupted download or copy?): download or copy it again."),
    (lambda path: not os.access(path, os.R_OK),
     "Checkpoint file {path} cannot be read (permission denied): fix its permissions."),
)


def _checked_checkpoint(path: str) -> str:
    """``path`` made absolute, after the checks that need no reading: a folder, a special or an empty file."""
    path = os.path.abspath(path)
    for fails, message in _PATH_PROBLEMS:
        if fails(path):
            raise BackboneError(message.format(path=path, inside=os.path.join(path, "open_clip_pytorch_model.bin")))
    return path


def _file_format(path: str) -> str:
    """What a weights file holds by its first bytes: safetensors, torch, torchscript, zip, damaged-zip, text or
    unknown."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "damaged-zip"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch" if any(n.endswith("data.pkl") for n in names) else "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"  # a pickle: torch.save's legacy format
    if len(head) > 8 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= os.path.getsize(path):
        return "safetensors"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # a character cut at the 512th byte is still text
        text = head[:err.start].decode("utf-8") if err.start >= len(head) - 3 else ""
    return "text" if text and all(c.isprintable() or c.isspace() for c in text) else "unknown"


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file, read safely (safetensors, or ``torch.load(weights_only=True)``); a file that
    is not a plain state dict is a BackboneError saying what it is instead."""
    kind = _file_format(path)
    if kind not in ("safetensors", "torch"):
        raise BackboneError(_NOT_A_STATE_DICT[kind].format(path=path))
    return _plain_state_dict(_read_safetensors(path) if kind == "safetensors" else _read_torch(path), path)


def _read_safetensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError:
        raise BackboneError(_DAMAGED.format(path=path)) from None


def _read_torch(path: str):
    """What a torch.save file holds, unpickling nothing but tensors and containers."""
    try:
        with open(path, "rb") as f:  # a file object: torch.load picks no reader by the name
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise BackboneError(_PICKLED.format(path=path, what=found.group(1)) if found else
                            _DAMAGED.format(path=path)) from None
    except (RuntimeError, EOFError, ValueError, OSError):
        raise BackboneError(_DAMAGED.format(path=path)) from None


def _plain_state_dict(obj, path: str) -> Dict[str, torch.Tensor]:
    """``obj`` read from ``path`` as the mapping of names to tensors open_clip loads, or a BackboneError saying what
    it holds instead."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint, as open_clip reads it
    if not isinstance(obj, dict) or not obj:
        what = "an empty mapping" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise BackboneError(f"Checkpoint file {path} holds {what}, not a state dict (parameter names → tensors): "
                            f"save model.state_dict() with torch.save or safetensors.")
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = [k for k, v in obj.items() if isinstance(v, dict) and any(isinstance(t, torch.Tensor)
                                                                           for t in v.values())]
        where = f"; the weights seem to be under {nested[0]!r}: save that entry alone" if nested else ""
        raise BackboneError(f"Checkpoint file {path} holds no tensors at its top level (keys: "
                            f"{', '.join(map(str, list(obj)[:5]))}), so it is not a state dict{where}.")
    if str(next(iter(obj))).startswith("module"):
        obj = {k[7:]: v for k, v in obj.items()}  # saved from DistributedDataParallel, as open_clip strips it
    return obj


def state_mismatch(found: Dict[str, Sequence[int]], expected: Dict[str, Sequence[int]], limit: int = 2) -> str:
    """'' when ``found`` has exactly the tensor names and shapes of ``expected``, else the first differences."""
    def shape(dims) -> str:
        return "×".join(map(str, dims)) or "scalar"

    def first(keys, show=str) -> str:
        return ", ".join(show(k) for k in keys[:limit]) + (", ..." if len(keys) > limit else "")

    other = [k for k in expected if k in found and list(found[k]) != list(expected[k])]
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    parts = [f"{len(keys)} {what} ({first(keys, show)})" for keys, what, show in (
        (other, "of another shape", lambda k: f"{k} {shape(found[k])} instead of {shape(expected[k])}"),
        (missing, "missing", str), (extra, "unexpected", str)) if keys]
    return "tensors: " + "; ".join(parts) if parts else ""


def _count_blocks(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def _state_fingerprint(state: dict) -> Optional[tuple]:
    """(embed dim, vision width, layers, patch, image size, text width, layers, context, vocabulary) of a standard
    open_clip CLIP state dict, or None."""
    try:
        text = (state["token_embedding.weight"].shape[1], _count_blocks(state, "transformer.resblocks."),
                state["positional_embedding"].shape[0], state["token_embedding.weight"].shape[0])
        if "visual.conv1.weight" in state and "visual.class_embedding" in state:
            width, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
            grid = round(math.sqrt(state["visual.positional_embedding"].shape[0] - 1))
            vision = (width, _count_blocks(state, "visual.transformer.resblocks."), patch, patch * grid)
        else:
            grid = round(math.sqrt(state["visual.attnpool.positional_embedding"].shape[0] - 1))
            vision = (state["visual.layer1.0.conv1.weight"].shape[0],
                      tuple(_count_blocks(state, f"visual.layer{i}.") for i in range(1, 5)), None, 32 * grid)
        return (state["text_projection"].shape[1], *vision, *text)
    except (KeyError, IndexError, AttributeError):
        return None


def _config_fingerprint(cfg: dict) -> Optional[tuple]:
    """:func:`_state_fingerprint` of an open_clip model config, or None for towers from timm or Hugging Face."""
    v, t = tower_configs(cfg)
    if v["timm_model_name"] or t["hf_model_name"] or cfg.get("custom_text"):
        return None
    resnet = isinstance(v["layers"], (list, tuple))
    size = v["image_size"][0] if isinstance(v["image_size"], (list, tuple)) else v["image_size"]
    return (cfg.get("embed_dim"), v["width"], tuple(v["layers"]) if resnet else v["layers"],
            None if resnet else v["patch_size"], size, t["width"], t["layers"], t["context_length"], t["vocab_size"])


def _models_fitting(state: dict) -> list:
    """open_clip model names whose architecture has the shapes of ``state``."""
    import open_clip

    fingerprint = _state_fingerprint(state)
    if fingerprint is None:
        return []
    return [n for n in open_clip.list_models() if _config_fingerprint(open_clip.get_model_config(n)) == fingerprint]


def _checkpoint_problem(path: str, model: nn.Module, name: str, err: Exception) -> str:
    """Why open_clip could not load ``path`` into ``model``, found by reading the file."""
    state = _read_state_dict(path)
    safetensors = _file_format(path) == "safetensors"
    if path.endswith(".safetensors") != safetensors:
        return (f"Checkpoint file {path} is a {'safetensors' if safetensors else 'PyTorch'} file but its name says "
                f"otherwise (open_clip picks the reader by the extension): rename it to end in "
                f"{'.safetensors' if safetensors else '.pt'}.")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if not set(state) & set(expected):
        return (f"Checkpoint file {path} holds no tensor of {name} (its tensors are named like "
                f"{', '.join(list(state)[:2])}): it is not an open_clip checkpoint (Hugging Face transformers or timm "
                f"weights need converting to open_clip's names), or model.name is wrong.")
    shapes = {k: getattr(v, "shape", ()) for k, v in state.items()}
    mismatch = state_mismatch(shapes, expected)
    if not mismatch:
        return (f"Could not load checkpoint file {path} into {name} ({_first_line(err)}): check that it holds "
                f"open_clip weights for {name}.")
    fits = _models_fitting(state)
    if name in fits or not (fits or any(k in shapes and shapes[k] != v for k, v in expected.items())):
        return (f"Checkpoint file {path} does not match model.name={name} exactly ({mismatch}): save the model's "
                f"whole state_dict() and nothing else.")
    hint = (f"They fit model.name={' or '.join(fits[:3])}." if fits else
            "Check model.name: it must be the architecture the weights were saved from.")
    return f"Checkpoint file {path} holds weights of another architecture than model.name={name} ({mismatch}). {hint}"


def _local_dir_problem(name: str, err: Exception) -> str:
    """Why open_clip could not load the weights of a ``local-dir:`` model, found by reading its weights files."""
    folder = Path(name[len("local-dir:"):])
    for path in [*sorted(folder.glob("*.safetensors")), *sorted(folder.glob("*.bin")), *sorted(folder.glob("*.pth"))]:
        _read_state_dict(_checked_checkpoint(str(path)))
    return (f"The weights in {folder} do not fit the model its open_clip_config.json describes ({_first_line(err)}): "
            f"check that the config and the weights belong together.")


def _load_checkpoint(model: nn.Module, path: str, name: str) -> None:
    """Load ``path`` into ``model`` through open_clip (``weights_only=True``); a failure says what is wrong."""
    import open_clip

    try:
        with warnings.catch_warnings():  # torch.load's notice about TorchScript archives: refused below anyway
            warnings.filterwarnings("ignore", message=".*TorchScript archive")
            open_clip.load_checkpoint(model, path, strict=True, weights_only=True, device="cpu")
        return
    except Exception as err:  # torch, safetensors and open_clip fail in many ways: reading the file tells which
        failure = err
    raise BackboneError(_checkpoint_problem(path, model, name, failure))
