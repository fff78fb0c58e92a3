"""What a model name means, from configs and caches alone: nothing here builds a model, reads weights or downloads.

The built-in tiny configs, the open_clip model config of a name (:func:`model_config`), the :class:`Architecture`
that the learners check their configs against, and whether the weights a name needs are on this machine
(:func:`weights_status`). Building the model and reading weights files is :mod:`promptclip.weights`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

TINY_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODELS = tuple(sorted(p.stem for p in TINY_CONFIG_DIR.glob("*.json")))
#: model names that name their own weights (``model.pretrained`` is ignored for them)
SCHEMAS = ("hf-hub:", "local-dir:")
#: ``model.pretrained`` values that mean random weights
RANDOM_WEIGHTS = (None, "", "none", "random")


def register_tiny_configs() -> None:
    """Make the built-in tiny configs known to open_clip by name."""
    import open_clip

    if TINY_MODELS[0] not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG_DIR)


def weights_tag(pretrained) -> Optional[str]:
    """``model.pretrained`` as a tag or a path; None for random weights."""
    return None if pretrained in RANDOM_WEIGHTS else str(pretrained)


def model_config(name: str, cache_dir: Optional[str] = None) -> Optional[dict]:
    """The open_clip model config of ``name`` without building the model or reading weights: an open_clip name or a
    built-in tiny config, ``local-dir:`` (its ``open_clip_config.json``), ``hf-hub:`` (only if cached). None where it
    is not on this machine or the name is unknown."""
    import open_clip

    if name.startswith(SCHEMAS):
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
    register_tiny_configs()
    return open_clip.get_model_config(name)


def tower_configs(config: dict) -> Tuple[dict, dict]:
    """The vision and text tower configs of an open_clip model config, with open_clip's defaults filled in."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    return ({**dataclasses.asdict(CLIPVisionCfg()), **config.get("vision_cfg", {})},
            {**dataclasses.asdict(CLIPTextCfg()), **config.get("text_cfg", {})})


@dataclass(frozen=True)
class Architecture:
    """What prompt learners need to know of a backbone: its towers' layer counts and widths. ``text_layers`` is None
    for a text tower prompts cannot reach (not a causal open_clip transformer), ``vision_layers`` for an image tower
    other than a class-token ViT, with ``vision_problem`` saying why. Read from the model config by :meth:`of`
    (no weights, no model), or from a loaded backbone (``FrozenCLIP.architecture``); the learners check configs
    against it."""

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
        v, t = tower_configs(config)
        causal = not (t["hf_model_name"] or t["no_causal_mask"] or t["embed_cls"] or t["pool_type"] != "argmax")
        problem = None
        if v["timm_model_name"] or isinstance(v["layers"], (list, tuple)):
            problem = (f"vision prompts need a ViT image tower; {name} has "
                       f"{'a timm tower' if v['timm_model_name'] else 'a ResNet'}")
        elif v["attentional_pool"] or v["pool_type"] != "tok":
            problem = f"vision prompts are supported for ViTs that pool the class token; {name} does not"
        return cls(name, t["layers"] if causal else None, t["width"] if causal else None,
                   None if problem else v["layers"], None if problem else v["width"], problem)


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
    pretrained = weights_tag(pretrained)
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
