"""The frozen CLIP backbone: the one module that reaches inside open_clip's models.

Learners never reach into open_clip. They hand this module prompt *embeddings* and per-layer prompt tokens:

- ``encode_text(embeddings, eot_index, deep={layer: tokens})`` adds positional embeddings, runs the causal text
  transformer on the sequence cut after the longest EOT (exact, because a token only attends to earlier ones),
  replaces the tokens right after SOS at the given deeper layers, and pools at EOT.
- ``encode_image(images, VisionPrompts(...))`` inserts prompt tokens (shared by the batch or per image) after CLS or
  after the patches, before or after ``ln_pre``, and replaces those slots at deeper layers.
- ``adapters={layer: BlockAdapter}`` (either tower) changes a block's attention projections without touching the
  frozen weights (CLIP-LoRA's low-rank deltas).

Both towers run open_clip's blocks through :func:`_run_block`, which computes each attention projection as one matrix
product where torch's batch-first attention would run one per token position. The model and its weights come from
:mod:`promptclip.weights` (weights files and their diagnostics); what a name means without a model (model configs,
:class:`~promptclip.architecture.Architecture`, ``weights_status``) from :mod:`promptclip.architecture`.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Dict, Optional, Sequence, Tuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BackboneError
from .options.learners import Placement
from .architecture import Architecture
from .weights import create_open_clip



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
    placement: Placement = "after_cls"
    before_ln_pre: bool = True
    per_image: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __post_init__(self):
        if 0 not in self.tokens:
            raise BackboneError("VisionPrompts needs tokens for layer 0 (the input); deeper layers are optional.")
        if self.placement not in get_args(Placement):
            raise BackboneError(f"Vision prompt placement must be one of {get_args(Placement)}, not "
                                f"{self.placement!r}.")
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


class BlockAdapter:
    """A learned change of one block's attention projections that leaves the frozen weights untouched (CLIP-LoRA).

    The written-out block calls :meth:`in_proj` for the packed q/k/v projection (``[N, L, D]`` → ``[N, L, 3D]``)
    and :meth:`out_proj` for the output projection, with the block's frozen weight and bias; the defaults are the
    frozen projections themselves.
    """

    def in_proj(self, y: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(y, weight, bias)

    def out_proj(self, h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(h, weight, bias)


def _run_block(block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
               adapter: Optional[BlockAdapter] = None) -> torch.Tensor:
    """``block(x, attn_mask=attn_mask)`` for ``x [N, L, D]``, with open_clip's standard block written out (and the
    attention projections changed by ``adapter``, if given).

    Off its inference fast path (whenever a gradient flows, and under autocast) torch's batch-first
    ``nn.MultiheadAttention`` projects a transposed ``[L, N, D]`` view, which runs as one small matrix product per
    position (a ``bmm``, forward and backward); here the q/k/v projection is one matrix product over all ``N·L``
    tokens, as in CLIP's sequence-first reference. Same result up to rounding.
    """
    if not _is_standard_block(block):
        if adapter is not None:
            raise BackboneError(f"This backbone's {type(block).__name__} blocks are not open_clip's standard "
                                f"residual attention blocks, whose attention weights can be adapted.")
        return block(x, attn_mask=attn_mask)
    attn, adapter = block.attn, adapter if adapter is not None else _FROZEN
    n, length, width = x.shape
    y = block.ln_1(x)
    q, k, v = adapter.in_proj(y, attn.in_proj_weight, attn.in_proj_bias).view(
        n, length, 3, attn.num_heads, width // attn.num_heads).permute(2, 0, 3, 1, 4)
    mask = attn_mask.to(y.dtype) if attn_mask is not None else None
    h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(n, length, width)
    x = x + block.ls_1(adapter.out_proj(h, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


_FROZEN = BlockAdapter()


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
        model, tokenizer, weights = create_open_clip(name, pretrained, device, cache_dir)
        return cls(model, tokenizer, name, weights)

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
                    deep: Optional[Dict[int, torch.Tensor]] = None, truncate: bool = True,
                    adapters: Optional[Dict[int, BlockAdapter]] = None) -> torch.Tensor:
        """Text features ``[N, E]`` (not normalised) from prompt embeddings ``[N, L, D_t]``.

        ``deep[i]`` (``[n, D_t]`` or ``[N, n, D_t]``) replaces positions ``1..n`` before block ``i`` (``i >= 1``);
        ``adapters[i]`` changes block ``i``'s attention projections. With ``truncate`` the sequence is cut after the
        longest EOT: identical output, less work.
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
            x = _run_block(block, x, mask, adapters.get(i) if adapters else None)
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        if t.projection is not None:
            x = t.projection(x) if isinstance(t.projection, nn.Linear) else x @ t.projection.to(x.dtype)
        return x

    def encode_text_ids(self, ids: torch.Tensor, truncate: bool = True,
                        adapters: Optional[Dict[int, BlockAdapter]] = None) -> torch.Tensor:
        """Text features of plain token ids (zero-shot prompts; through ``adapters`` if given)."""
        return self.encode_text(self.embed_tokens(ids), self.eot_index(ids), truncate=truncate, adapters=adapters)

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

    def encode_image(self, images: torch.Tensor, prompts: Optional[VisionPrompts] = None,
                     adapters: Optional[Dict[int, BlockAdapter]] = None) -> torch.Tensor:
        """Image features ``[B, E]`` (not normalised), with optional prompt tokens and attention ``adapters`` by
        block index.

        A ViT that pools its class token runs through :func:`_run_block` even without prompts (open_clip's forward
        takes the slow batched path under autocast); other image towers run open_clip's own forward.
        """
        if prompts is None and not adapters and not self._own_vit_forward:
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
            x = _run_block(block, x, adapter=adapters.get(i) if adapters else None)
        pooled = v.ln_post(x[:, 0])
        return pooled @ v.proj if v.proj is not None else pooled

    # ------------------------------------------------------------------------------------------- bookkeeping
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def architecture(self) -> Architecture:
        """This backbone's layer counts and widths, the facts :meth:`Architecture.of` reads from a config."""
        text = self._text is not None
        try:
            self.require_vision_prompts()
            problem = None
        except BackboneError as err:
            problem = str(err)
        return Architecture(self.name, self.num_text_layers if text else None, self.text_width if text else None,
                            None if problem else self.num_vision_layers, None if problem else self.vision_width,
                            problem)

    def describe(self) -> dict:
        """What a saved prompt file records so it is only loaded onto the same backbone."""
        return {"model": self.name, "pretrained": self.pretrained, "text_width": self.text_width,
                "vision_width": self.vision_width, "embed_dim": self.embed_dim}


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
