"""The frozen CLIP backbone: the one module that touches open_clip's internals.

Learners never reach into open_clip. They hand this module prompt *embeddings* and per-layer prompt tokens:

- ``encode_text(embeddings, eot_index, deep={layer: tokens})`` adds positional embeddings, runs the causal text
  transformer on the sequence cut after the longest EOT (exact, because a token only attends to earlier ones),
  replaces the tokens right after SOS at the given deeper layers, and pools at EOT.
- ``encode_image(images, VisionPrompts(...))`` inserts prompt tokens (shared by the batch or per image) after CLS or
  after the patches, before or after ``ln_pre``, and replaces those slots at deeper layers.

Both towers run open_clip's blocks through :func:`_run_block`, which computes each attention projection as one matrix
product where torch's batch-first attention would run one per token position.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BackboneError
from .registry import suggest

log = logging.getLogger("promptclip")

TINY_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODELS = tuple(sorted(p.stem for p in TINY_CONFIG_DIR.glob("*.json")))
PLACEMENTS = ("after_cls", "after_patches")


@dataclass
class VisionPrompts:
    """Prompt tokens for the image tower.

    ``tokens[0]`` (``[n, D_v]`` shared, or ``[B, n, D_v]`` per image) is inserted at the input; ``tokens[i]`` for
    ``i >= 1`` replaces the same ``n`` slots before block ``i`` (deep prompts). Layers without an entry carry the
    slots on. ``placement`` puts the slots right after CLS (VPT) or after the patch tokens (MaPLe/IVLP);
    ``before_ln_pre`` chooses whether they pass through ``ln_pre``.

    ``per_image``, if given, maps each layer's tokens expanded to the batch (``[B, n, D_v]``) to the tokens used:
    randomness that must differ between the images of a batch (VPT's and DAPT's prompt dropout) without the learner
    knowing the batch size.
    """

    tokens: Dict[int, torch.Tensor]
    placement: str = "after_cls"
    before_ln_pre: bool = True
    per_image: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __post_init__(self):
        if 0 not in self.tokens:
            raise BackboneError("VisionPrompts needs tokens for layer 0 (the input); deeper layers are optional.")
        if self.placement not in PLACEMENTS:
            raise BackboneError(f"Vision prompt placement must be one of {PLACEMENTS}, not {self.placement!r}.")
        counts = {t.shape[-2] for t in self.tokens.values()}
        if len(counts) != 1:
            raise BackboneError(f"Every layer's vision prompts must have the same token count, got {sorted(counts)}.")

    def for_batch(self, layer: int, batch: int) -> torch.Tensor:
        """Layer ``layer``'s tokens for a batch of ``batch`` images: ``[n, D_v]`` or ``[batch, n, D_v]``."""
        tokens = self.tokens[layer]
        if tokens.dim() == 3 and tokens.shape[0] != batch:
            raise BackboneError(f"Per-image vision prompts for layer {layer} hold {tokens.shape[0]} images, but the "
                                f"batch has {batch}: give one prompt set per image, or [n, D_v] tokens to share.")
        return tokens if self.per_image is None else self.per_image(_expand(tokens, batch))


def _register_tiny_configs() -> None:
    import open_clip

    if TINY_MODELS[0] not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG_DIR)


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


def _expand(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """``[n, D]`` → ``[batch, n, D]``; ``[batch, n, D]`` passes through."""
    return tokens.unsqueeze(0).expand(batch, -1, -1) if tokens.dim() == 2 else tokens


def _replace_slots(x: torch.Tensor, start: int, tokens: torch.Tensor) -> torch.Tensor:
    """``x`` with positions ``start:start+n`` replaced by ``tokens`` (out of place, so autograd sees both)."""
    tokens = _expand(tokens, x.shape[0]).to(x.dtype)
    n = tokens.shape[1]
    return torch.cat([x[:, :start], tokens, x[:, start + n:]], dim=1)


def _insert_slots(x: torch.Tensor, start: int, tokens: torch.Tensor) -> torch.Tensor:
    tokens = _expand(tokens, x.shape[0]).to(x.dtype)
    return torch.cat([x[:, :start], tokens, x[:, start:]], dim=1)


def _is_standard_block(block: nn.Module) -> bool:
    """Whether ``block`` is open_clip's plain self-attention block, the one :func:`_run_block` reproduces."""
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    return (type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
            and isinstance(attn, nn.MultiheadAttention) and attn.batch_first and attn.in_proj_weight is not None
            and attn.bias_k is None and not attn.add_zero_attn)


def _run_block(block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``block(x, attn_mask=attn_mask)`` for ``x [N, L, D]``, with open_clip's standard block written out.

    Off its inference fast path (whenever a gradient flows, and under autocast) torch's batch-first
    ``nn.MultiheadAttention`` projects a transposed ``[L, N, D]`` view, which runs as one small matrix product per
    position (a ``bmm``, forward and backward); here the q/k/v projection is one matrix product over all ``N·L``
    tokens, as in CLIP's sequence-first reference. Same result up to rounding.
    """
    if not _is_standard_block(block):
        return block(x, attn_mask=attn_mask)
    attn = block.attn
    n, length, width = x.shape
    y = block.ln_1(x)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).view(
        n, length, 3, attn.num_heads, width // attn.num_heads).permute(2, 0, 3, 1, 4)
    mask = attn_mask.to(y.dtype) if attn_mask is not None else None
    h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n, length, width)
    x = x + block.ls_1(F.linear(h, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


# ------------------------------------------------------------------------------------------ checkpoint files
def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _checked_checkpoint(path: str) -> str:
    """``path`` made absolute, after the checks that need no reading: a folder, a special or an empty file."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise BackboneError(f"model.pretrained={path} is a folder, not a weights file: pass the file inside it (e.g. "
                            f"{os.path.join(path, 'open_clip_pytorch_model.bin')}), or use model.name=local-dir:{path} "
                            f"for a folder holding open_clip_config.json and the weights.")
    if not os.path.isfile(path):
        raise BackboneError(f"model.pretrained={path} is not a regular file: pass a weights file.")
    if os.path.getsize(path) == 0:
        raise BackboneError(f"Checkpoint file {path} is empty (0 bytes; an interrupted download or copy?): "
                            f"download or copy it again.")
    if not os.access(path, os.R_OK):
        raise BackboneError(f"Checkpoint file {path} cannot be read (permission denied): fix its permissions.")
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
    damaged = (f"Checkpoint file {path} is damaged or incomplete (an interrupted download or copy?): "
               f"download or copy it again.")
    if kind == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(path)
        except SafetensorError:
            raise BackboneError(damaged) from None
    elif kind == "torch":
        try:
            with open(path, "rb") as f:  # a file object: torch.load picks no reader by the name
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            if not found:
                raise BackboneError(damaged) from None
            raise BackboneError(
                f"Checkpoint file {path} is not a plain state dict: besides tensors it holds pickled Python objects "
                f"({found.group(1)}), which promptclip does not unpickle because that can run arbitrary code. Where "
                f"the file was made, save the weights alone (torch.save(model.state_dict(), 'weights.pt'), or a "
                f".safetensors file), or get the model's open_clip weights file (open_clip_pytorch_model.bin or "
                f".safetensors).") from None
        except (RuntimeError, EOFError, ValueError, OSError):
            raise BackboneError(damaged) from None
    else:
        raise BackboneError({
            "damaged-zip": damaged,
            "torchscript": f"Checkpoint file {path} is a TorchScript archive (a whole scripted model, like OpenAI's "
                           f"original .pt files), not a state dict: get the model's open_clip weights file "
                           f"(open_clip_pytorch_model.bin or .safetensors), or save the scripted model's "
                           f"state_dict() with torch.save.",
            "zip": f"Checkpoint file {path} is a zip archive but not a PyTorch checkpoint: unpack it and pass the "
                   f"weights file inside, or check the path.",
            "text": f"Checkpoint file {path} is a text file, not weights: model.pretrained needs a state dict "
                    f"(.bin, .pt, .pth or .safetensors); a folder with open_clip_config.json and weights loads "
                    f"with model.name=local-dir:FOLDER.",
            "unknown": f"Checkpoint file {path} is neither a PyTorch nor a safetensors file (damaged, or not a "
                       f"checkpoint at all): check the path, or download or copy the file again.",
        }[kind])
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
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    v = {**dataclasses.asdict(CLIPVisionCfg()), **cfg.get("vision_cfg", {})}
    t = {**dataclasses.asdict(CLIPTextCfg()), **cfg.get("text_cfg", {})}
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


def weights_status(name: str, pretrained: Optional[str], cache_dir: Optional[str] = None) -> Tuple[bool, str]:
    """Whether the weights ``FrozenCLIP.load(name, pretrained)`` needs are on this machine, without loading or
    downloading anything: ``(available, where)``."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    def in_hub_cache(repo: str, files: Sequence[str]) -> Optional[str]:
        for file in files:
            found = try_to_load_from_cache(repo, file, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
        return None

    weights = (open_clip.constants.HF_SAFE_WEIGHTS_NAME, open_clip.constants.HF_WEIGHTS_NAME)
    pretrained = None if pretrained in (None, "", "none", "random") else str(pretrained)
    if name.startswith("local-dir:"):
        folder = os.path.expanduser(name[len("local-dir:"):])
        return os.path.isdir(folder), f"local folder {folder}" + ("" if os.path.isdir(folder) else " (missing)")
    if name.startswith("hf-hub:"):
        found = in_hub_cache(name[len("hf-hub:"):], weights)
        return found is not None, found or f"{name}: not in the Hugging Face cache (needs a download)"
    if pretrained is None:
        return True, "random weights (nothing to download)"
    file = os.path.expanduser(pretrained)
    if os.path.isfile(file) or pretrained not in open_clip.list_pretrained_tags_by_model(name):
        return os.path.isfile(file), f"local file {file}" + ("" if os.path.isfile(file) else " (missing)")
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if cfg.get("hf_hub"):
        repo, file = os.path.split(cfg["hf_hub"])  # "org/repo/" (default weights file) or "org/repo/file"
        found = in_hub_cache(repo, [file] if file else weights)
        if found:
            return True, found
    if cfg.get("url"):
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(target):
            return True, target
    return False, f"{name} {pretrained}: not in the local caches (needs a download)"


# ------------------------------------------------------------------------------------------------ architecture
def model_config(name: str, cache_dir: Optional[str] = None) -> Optional[dict]:
    """The open_clip model config of ``name`` without building the model or reading weights: an open_clip name or a
    built-in tiny config, ``local-dir:`` (its ``open_clip_config.json``), ``hf-hub:`` (only if cached). None where it
    is not on this machine or the name is unknown."""
    import json

    import open_clip

    if name.startswith(("local-dir:", "hf-hub:")):
        if name.startswith("local-dir:"):
            path = Path(os.path.expanduser(name[len("local-dir:"):])) / "open_clip_config.json"
        else:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name[len("hf-hub:"):], "open_clip_config.json", cache_dir=cache_dir)
            path = Path(found) if isinstance(found, str) else None
        if path is None or not path.is_file():
            return None
        try:
            config = json.loads(path.read_text()).get("model_cfg")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return None
        return config if isinstance(config, dict) else None
    _register_tiny_configs()
    return open_clip.get_model_config(name)


@dataclass(frozen=True)
class Architecture:
    """What prompt learners need to know of a backbone: its towers' layer counts and widths. ``text_layers`` is None
    for a text tower prompts cannot reach (not a causal open_clip transformer), ``vision_layers`` for an image tower
    other than a class-token ViT, with ``vision_problem`` saying why. Read from the model config by :meth:`of`
    (no weights, no model), or from a loaded :class:`FrozenCLIP`; the learners check configs against it."""

    name: str
    text_layers: Optional[int]
    text_width: Optional[int]
    vision_layers: Optional[int]
    vision_width: Optional[int]
    vision_problem: Optional[str] = None

    @classmethod
    def of(cls, name: str, cache_dir: Optional[str] = None) -> Optional["Architecture"]:
        """The architecture of model ``name`` from its config (see :func:`model_config`); None where unknown."""
        config = model_config(name, cache_dir)
        return None if config is None else cls.from_config(name, config)

    @classmethod
    def from_config(cls, name: str, config: dict) -> "Architecture":
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        v = {**dataclasses.asdict(CLIPVisionCfg()), **config.get("vision_cfg", {})}
        t = {**dataclasses.asdict(CLIPTextCfg()), **config.get("text_cfg", {})}
        causal = not (t["hf_model_name"] or t["no_causal_mask"] or t["embed_cls"] or t["pool_type"] != "argmax")
        problem = None
        if v["timm_model_name"] or isinstance(v["layers"], (list, tuple)):
            problem = (f"vision prompts need a ViT image tower; {name} has "
                       f"{'a timm tower' if v['timm_model_name'] else 'a ResNet'}")
        elif v["attentional_pool"] or v["pool_type"] != "tok":
            problem = f"vision prompts are supported for ViTs that pool the class token; {name} does not"
        return cls(name, t["layers"] if causal else None, t["width"] if causal else None,
                   None if problem else v["layers"], None if problem else v["width"], problem)

    @classmethod
    def of_backbone(cls, backbone: "FrozenCLIP") -> "Architecture":
        """The architecture of a loaded backbone (what :meth:`of` reads from its config)."""
        text = backbone._text is not None
        try:
            backbone.require_vision_prompts()
            problem = None
        except BackboneError as err:
            problem = str(err)
        return cls(backbone.name, backbone.num_text_layers if text else None, backbone.text_width if text else None,
                   None if problem else backbone.num_vision_layers, None if problem else backbone.vision_width,
                   problem)


class FrozenCLIP(nn.Module):
    """A frozen open_clip model in eval mode with prompt hooks. Build it with :meth:`FrozenCLIP.load`."""

    def __init__(self, model: nn.Module, tokenizer, name: str, pretrained: Optional[str]):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self._text = self._find_text_tower()
        self.register_buffer("logit_scale", model.logit_scale.detach().exp().clone(), persistent=False)
        visual = model.visual
        self.is_vit = all(hasattr(visual, a) for a in ("conv1", "class_embedding", "positional_embedding",
                                                       "transformer", "ln_pre", "ln_post"))
        self._own_vit_forward = (self.is_vit and getattr(visual, "attn_pool", None) is None
                                 and getattr(visual, "pool_type", "tok") == "tok")
        pp = getattr(visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", getattr(visual, "image_size", 224))
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.image_mean = tuple(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.image_std = tuple(pp.get("std", (0.26862954, 0.26130258, 0.27577711)))

    # ----------------------------------------------------------------------------------------------- creation
    @classmethod
    def load(cls, name: str, pretrained: Optional[str] = None, device="cpu",
             cache_dir: Optional[str] = None) -> "FrozenCLIP":
        """Create ``name`` with weights from an open_clip tag (``openai``), a local file, or none (random).

        ``name`` may be an open_clip model name, ``hf-hub:org/repo``, ``local-dir:/path`` or a built-in tiny
        config (``tiny-vit``, ``tiny-vit-wide``, ``tiny-vit-deep``, ``tiny-rn``: random weights, for tests and the
        demo).
        """
        import open_clip

        _register_tiny_configs()
        kwargs = {"device": device, "cache_dir": cache_dir, "weights_only": True}
        checkpoint = None
        pretrained = None if pretrained in (None, "", "none", "random") else str(pretrained)
        has_schema = name.startswith(("hf-hub:", "local-dir:"))
        if not has_schema:
            known = open_clip.list_models()
            if name not in known:
                raise BackboneError(f"Unknown CLIP model {name!r}.{suggest(name, known)} "
                                    f"`python -c 'import open_clip; print(open_clip.list_models())'` lists them all; "
                                    f"built-in tiny configs: {', '.join(TINY_MODELS)}.")
            tags = open_clip.list_pretrained_tags_by_model(name)
            file = os.path.expanduser(pretrained) if pretrained is not None else None
            if file is not None and (os.path.isfile(file) or (os.path.exists(file) and pretrained not in tags)):
                checkpoint = pretrained = _checked_checkpoint(file)
            elif pretrained is not None and pretrained not in tags:
                if any(ch in pretrained for ch in "/\\."):
                    raise BackboneError(f"Checkpoint file {pretrained!r} does not exist: check model.pretrained "
                                        f"(a weights file, or a tag of {name}).")
                raise BackboneError(f"Model {name!r} has no pretrained tag {pretrained!r}.{suggest(pretrained, tags)} "
                                    f"Its tags: {', '.join(tags) or 'none'}; or pass a local checkpoint file.")
            if pretrained == "openai" and "quickgelu" not in name.lower():
                kwargs["force_quick_gelu"] = True  # OpenAI weights were trained with QuickGELU
            kwargs["pretrained"] = None if checkpoint is not None else pretrained  # a file: loaded below
        elif pretrained is not None:
            log.warning("model.pretrained=%r is ignored: %r names its own weights.", pretrained, name)
            pretrained = None
        try:
            # random weights come from a fixed seed, so saved prompts reload onto the very same random backbone
            with _quiet_root_logger(name in TINY_MODELS or checkpoint is not None), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = open_clip.create_model(name, **kwargs)
        except (FileNotFoundError, ValueError) as err:
            raise BackboneError(f"Could not load {name!r}: {err}") from None
        except Exception as err:
            if name.startswith("local-dir:"):  # the folder's weights failed to load: say which file, and why
                raise BackboneError(_local_dir_problem(name, err)) from None
            if not isinstance(err, RuntimeError):
                raise
            if "download" in str(err).lower() or "offline" in str(err).lower():
                offline = os.environ.get("HF_HUB_OFFLINE") == "1"
                local = ("download the repository's files into a folder and use model.name=local-dir:/that/folder"
                         if has_schema else "pass a local file: model.pretrained=/path/to/open_clip_pytorch_model.bin")
                raise BackboneError(
                    f"The weights for {name!r} (pretrained={pretrained!r}) must be downloaded and "
                    f"{'HF_HUB_OFFLINE=1 is set' if offline else 'the download failed (no network?)'}. "
                    f"Download them on a machine with network (open_clip caches them under ~/.cache/huggingface), "
                    f"or {local}."
                ) from None
            raise BackboneError(f"Could not create {name!r} with pretrained={pretrained!r}: {err}") from None
        if checkpoint is not None:
            _load_checkpoint(model, checkpoint, name)
        if pretrained is None and not has_schema and name not in TINY_MODELS:
            log.warning("%s has random weights (no model.pretrained given): accuracies are meaningless.", name)
        tokenizer = open_clip.get_tokenizer(name)
        return cls(model, tokenizer, name, pretrained)

    def train(self, mode: bool = True):
        """The backbone stays in eval mode (no dropout, frozen norms) whatever the composed model does."""
        return super().train(False)

    # ---------------------------------------------------------------------------------------------- text side
    def _find_text_tower(self):
        m = self.model
        tower = m.text if hasattr(m, "text") else m
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
        if not all(hasattr(tower, a) for a in needed):
            return None
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        if tower.attn_mask is None or pool != "argmax" or getattr(tower, "cls_emb", None) is not None:
            return None
        return SimpleNamespace(token_embedding=tower.token_embedding, positional_embedding=tower.positional_embedding,
                               blocks=tower.transformer.resblocks, ln_final=tower.ln_final,
                               projection=tower.text_projection, mask=tower.attn_mask)

    def _require_text(self):
        if self._text is None:
            raise BackboneError(
                f"{self.name}'s text tower is not a causal open_clip transformer with EOT pooling "
                f"(e.g. SigLIP or a Hugging Face text model); prompt learning supports CLIP-style text towers only.")
        return self._text

    @property
    def text_width(self) -> int:
        return self._require_text().positional_embedding.shape[-1]

    @property
    def context_length(self) -> int:
        return self._require_text().positional_embedding.shape[0]

    @property
    def num_text_layers(self) -> int:
        return len(self._require_text().blocks)

    @property
    def embed_dim(self) -> int:
        proj = self._require_text().projection
        if proj is None:
            return self.text_width
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[N, L]``; a text longer than the context is an error naming it (open_clip would cut it)."""
        texts = list(texts)
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:
            too_long = [(t, len(encode(t)) + 2) for t in texts if len(encode(t)) + 2 > self.context_length]
            if too_long:
                shown = "; ".join(f"{t!r} ({n} tokens)" for t, n in too_long[:3])
                raise BackboneError(
                    f"{len(too_long)} prompt(s) exceed the {self.context_length}-token context of {self.name}: "
                    f"{shown}. "
                    f"Shorten those class names or use fewer context tokens (text.n_ctx).")
        return self.tokenizer(texts).to(self.logit_scale.device)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[N, L, D_t]`` (without positional embeddings)."""
        return self._require_text().token_embedding(ids)

    @staticmethod
    def eot_index(ids: torch.Tensor) -> torch.Tensor:
        """Position of EOT in each sequence (its id is the largest in CLIP's vocabulary)."""
        return ids.argmax(dim=-1)

    def encode_text(self, embeddings: torch.Tensor, eot_index: torch.Tensor,
                    deep: Optional[Dict[int, torch.Tensor]] = None, truncate: bool = True) -> torch.Tensor:
        """Text features ``[N, E]`` (not normalised) from prompt embeddings ``[N, L, D_t]``.

        ``deep[i]`` (``[n, D_t]`` or ``[N, n, D_t]``) replaces positions ``1..n`` before block ``i`` (``i >= 1``).
        With ``truncate`` the sequence is cut after the longest EOT: identical output, less work.
        """
        t = self._require_text()
        if deep and min(deep) < 1:
            raise BackboneError("Deep text prompts start at layer 1; layer 0 prompts belong in the embeddings.")
        length = int(eot_index.max()) + 1 if truncate else embeddings.shape[1]
        x = embeddings[:, :length] + t.positional_embedding[:length].to(embeddings.dtype)
        mask = t.mask[:length, :length]
        for i, block in enumerate(t.blocks):
            if deep and i in deep:
                x = _replace_slots(x, 1, deep[i])
            x = _run_block(block, x, mask)
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        if t.projection is not None:
            x = t.projection(x) if isinstance(t.projection, nn.Linear) else x @ t.projection.to(x.dtype)
        return x

    def encode_text_ids(self, ids: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Text features of plain token ids (zero-shot prompts)."""
        return self.encode_text(self.embed_tokens(ids), self.eot_index(ids), truncate=truncate)

    # -------------------------------------------------------------------------------------------- image side
    @property
    def vision_width(self) -> Optional[int]:
        return self.model.visual.class_embedding.shape[-1] if self.is_vit else None

    @property
    def num_vision_layers(self) -> Optional[int]:
        return len(self.model.visual.transformer.resblocks) if self.is_vit else None

    @property
    def patch_size(self) -> Optional[int]:
        return self.model.visual.conv1.kernel_size[0] if self.is_vit else None

    def vision_input_embeddings(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """A ViT's class embedding ``[D_v]`` and positional embeddings ``[1 + patches, D_v]`` (None otherwise): the
        scale the image tower's own input tokens have, beside which vision prompts can be read."""
        if not self.is_vit:
            return None
        return self.model.visual.class_embedding.detach(), self.model.visual.positional_embedding.detach()

    def require_vision_prompts(self, who: str = "vision prompts") -> None:
        """Raise unless the image tower is a ViT whose forward this module can reproduce with prompts."""
        v = self.model.visual
        if not self.is_vit:
            raise BackboneError(f"{who} need a ViT image tower; {self.name} has {type(v).__name__}. "
                                f"Use a ViT model (e.g. ViT-B-16) or a text-only learner (coop, cocoop).")
        if getattr(v, "attn_pool", None) is not None or getattr(v, "pool_type", "tok") != "tok":
            raise BackboneError(f"{who} are supported for ViTs that pool the class token; {self.name} does not.")

    def encode_image(self, images: torch.Tensor, prompts: Optional[VisionPrompts] = None) -> torch.Tensor:
        """Image features ``[B, E]`` (not normalised), with optional prompt tokens.

        A ViT that pools its class token runs through :func:`_run_block` even without prompts (open_clip's forward
        takes the slow batched path under autocast); other image towers run open_clip's own forward.
        """
        if prompts is None and not self._own_vit_forward:
            return self.model.encode_image(images)
        self.require_vision_prompts()
        v = self.model.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls_token = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_token, x], dim=1) + v.positional_embedding.to(x.dtype)
        if prompts is None:
            x = v.ln_pre(x)
        else:
            start = 1 if prompts.placement == "after_cls" else x.shape[1]
            tokens = prompts.for_batch(0, x.shape[0])
            x = (v.ln_pre(_insert_slots(x, start, tokens)) if prompts.before_ln_pre else
                 _insert_slots(v.ln_pre(x), start, tokens))
        for i, block in enumerate(v.transformer.resblocks):
            if prompts is not None and i > 0 and i in prompts.tokens:
                x = _replace_slots(x, start, prompts.for_batch(i, x.shape[0]))
            x = _run_block(block, x)
        pooled = v.ln_post(x[:, 0])
        return pooled @ v.proj if v.proj is not None else pooled

    # ------------------------------------------------------------------------------------------- bookkeeping
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def architecture(self) -> "Architecture":
        return Architecture.of_backbone(self)

    def describe(self) -> dict:
        """What a saved prompt file records so it is only loaded onto the same backbone."""
        return {"model": self.name, "pretrained": self.pretrained, "text_width": self.text_width,
                "vision_width": self.vision_width, "embed_dim": self.embed_dim}


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
