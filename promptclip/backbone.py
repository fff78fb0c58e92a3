"""The frozen CLIP backbone: the one module that touches open_clip's internals.

Learners never reach into open_clip. They hand this module prompt *embeddings* and per-layer prompt tokens:

- ``encode_text(embeddings, eot_index, deep={layer: tokens})`` adds positional embeddings, runs the causal text
  transformer on the sequence cut after the longest EOT (exact, because a token only attends to earlier ones),
  replaces the tokens right after SOS at the given deeper layers, and pools at EOT.
- ``encode_image(images, VisionPrompts(...))`` inserts prompt tokens after CLS or after the patches, before or after
  ``ln_pre``, and replaces those slots at deeper layers.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Optional, Sequence

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
    """

    tokens: Dict[int, torch.Tensor]
    placement: str = "after_cls"
    before_ln_pre: bool = True

    def __post_init__(self):
        if 0 not in self.tokens:
            raise BackboneError("VisionPrompts needs tokens for layer 0 (the input); deeper layers are optional.")
        if self.placement not in PLACEMENTS:
            raise BackboneError(f"Vision prompt placement must be one of {PLACEMENTS}, not {self.placement!r}.")
        counts = {t.shape[-2] for t in self.tokens.values()}
        if len(counts) != 1:
            raise BackboneError(f"Every layer's vision prompts must have the same token count, got {sorted(counts)}.")

    @property
    def num_tokens(self) -> int:
        return self.tokens[0].shape[-2]


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
        config (``tiny-vit``, ``tiny-vit-wide``, ``tiny-rn``: random weights, for tests and the demo).
        """
        import open_clip

        _register_tiny_configs()
        kwargs = {"device": device, "cache_dir": cache_dir}
        pretrained = None if pretrained in (None, "", "none", "random") else str(pretrained)
        has_schema = name.startswith(("hf-hub:", "local-dir:"))
        if not has_schema:
            known = open_clip.list_models()
            if name not in known:
                raise BackboneError(f"Unknown CLIP model {name!r}.{suggest(name, known)} "
                                    f"`python -c 'import open_clip; print(open_clip.list_models())'` lists them all; "
                                    f"built-in tiny configs: {', '.join(TINY_MODELS)}.")
            if pretrained is not None and not os.path.isfile(os.path.expanduser(pretrained)):
                tags = open_clip.list_pretrained_tags_by_model(name)
                if pretrained not in tags:
                    if any(ch in pretrained for ch in "/\\."):
                        raise BackboneError(f"Checkpoint file {pretrained!r} does not exist.")
                    raise BackboneError(f"Model {name!r} has no pretrained tag {pretrained!r}.{suggest(pretrained, tags)} "
                                        f"Its tags: {', '.join(tags) or 'none'}; or pass a local checkpoint file.")
            if pretrained == "openai" and "quickgelu" not in name.lower():
                kwargs["force_quick_gelu"] = True  # OpenAI weights were trained with QuickGELU
            if pretrained is not None and os.path.isfile(os.path.expanduser(pretrained)):
                pretrained = os.path.expanduser(pretrained)
            kwargs["pretrained"] = pretrained
        elif pretrained is not None:
            log.warning("model.pretrained=%r is ignored: %r names its own weights.", pretrained, name)
            pretrained = None
        try:
            # random weights come from a fixed seed, so saved prompts reload onto the very same random backbone
            with _quiet_root_logger(name in TINY_MODELS), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = open_clip.create_model(name, **kwargs)
        except RuntimeError as err:
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
        except (FileNotFoundError, ValueError) as err:
            raise BackboneError(f"Could not load {name!r}: {err}") from None
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
                    f"{len(too_long)} prompt(s) exceed the {self.context_length}-token context of {self.name}: {shown}. "
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
            x = block(x, attn_mask=mask)
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

    def require_vision_prompts(self, who: str = "vision prompts") -> None:
        """Raise unless the image tower is a ViT whose forward this module can reproduce with prompts."""
        v = self.model.visual
        if not self.is_vit:
            raise BackboneError(f"{who} need a ViT image tower; {self.name} has {type(v).__name__}. "
                                f"Use a ViT model (e.g. ViT-B-16) or a text-only learner (coop, cocoop).")
        if getattr(v, "attn_pool", None) is not None or getattr(v, "pool_type", "tok") != "tok":
            raise BackboneError(f"{who} are supported for ViTs that pool the class token; {self.name} does not.")

    def encode_image(self, images: torch.Tensor, prompts: Optional[VisionPrompts] = None) -> torch.Tensor:
        """Image features ``[B, E]`` (not normalised), with optional prompt tokens."""
        if prompts is None:
            return self.model.encode_image(images)
        self.require_vision_prompts()
        v = self.model.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls_token = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_token, x], dim=1) + v.positional_embedding.to(x.dtype)
        start = 1 if prompts.placement == "after_cls" else x.shape[1]
        if prompts.before_ln_pre:
            x = v.ln_pre(_insert_slots(x, start, prompts.tokens[0]))
        else:
            x = _insert_slots(v.ln_pre(x), start, prompts.tokens[0])
        for i, block in enumerate(v.transformer.resblocks):
            if i > 0 and i in prompts.tokens:
                x = _replace_slots(x, start, prompts.tokens[i])
            x = block(x)
        pooled = v.ln_post(x[:, 0])
        return pooled @ v.proj if v.proj is not None else pooled

    # ------------------------------------------------------------------------------------------- bookkeeping
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict:
        """What a saved prompt file records so it is only loaded onto the same backbone."""
        return {"model": self.name, "pretrained": self.pretrained, "text_width": self.text_width,
                "vision_width": self.vision_width, "embed_dim": self.embed_dim}


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
