"""Class prompts with learnable context slots: the assembly CoOp, CoCoOp and MaPLe share."""
from __future__ import annotations

from typing import List, Optional, Tuple, get_args

import torch
from torch import nn

from ..backbone import FrozenCLIP
from ..templates import prompt_classname
from ..errors import ConfigError
from ..options.base import Position, check_init_words



class ClassPrompts(nn.Module):
    """Token embeddings of ``"{X × n_ctx} {infix} {class}{suffix}"`` per class, ready to receive context vectors.

    ``assemble(ctx)`` places the context at the class's context slots: ``[SOS, ctx, class, suffix, EOT]`` (end),
    ``[SOS, ctx[:n/2], class, ctx[n/2:], …]`` (middle) or ``[SOS, class, ctx, …]`` (front). The EOT position does
    not move. Buffers are cut after the longest EOT (the backbone truncates there anyway). ``infix`` is fixed text
    between the context and the class name (MaPLe learns "a photo" and keeps "of a"); it moves with the class name.
    """

    def __init__(self, backbone: FrozenCLIP, classnames: List[str], n_ctx: int, position: str = "end",
                 suffix: str = ".", infix: str = ""):
        super().__init__()
        if position not in get_args(Position):
            raise ConfigError(f"Class token position must be one of {get_args(Position)}, not {position!r}.")
        self.n_ctx, self.position = n_ctx, position
        names = [" ".join(filter(None, (infix, prompt_classname(c)))) for c in classnames]
        placeholder = " ".join(["X"] * n_ctx)
        ids = backbone.tokenize([f"{placeholder} {name}{suffix}".strip() for name in names])
        eot = backbone.eot_index(ids)
        length = int(eot.max()) + 1
        with torch.no_grad():
            embeddings = backbone.embed_tokens(ids[:, :length]).float()
        name_lens = [len(backbone.tokenizer.encode(name)) for name in names] if n_ctx else [0] * len(names)
        src, ctx_index, is_ctx = self._layout(length, name_lens)
        rearranged = embeddings.gather(1, src.unsqueeze(-1).expand(-1, -1, embeddings.shape[-1]))
        self.register_buffer("fixed", rearranged, persistent=False)
        self.register_buffer("ctx_index", ctx_index, persistent=False)
        self.register_buffer("is_ctx", is_ctx, persistent=False)
        self.register_buffer("eot", eot, persistent=False)

    def _layout(self, length: int, name_lens: List[int]):
        """Per class: the source position of each output token, and which outputs are context slot k."""
        n = self.n_ctx
        src = torch.arange(length).repeat(len(name_lens), 1)
        ctx_index = torch.zeros_like(src)
        is_ctx = torch.zeros_like(src, dtype=torch.bool)
        for c, k in enumerate(name_lens):
            ctx_pos = list(range(1, 1 + n))
            if self.position == "end":
                order = [0, *ctx_pos, *range(1 + n, 1 + n + k)]
            elif self.position == "middle":
                h = n // 2
                order = [0, *ctx_pos[:h], *range(1 + n, 1 + n + k), *ctx_pos[h:]]
            else:
                order = [0, *range(1 + n, 1 + n + k), *ctx_pos]
            src[c, :len(order)] = torch.tensor(order)
            for out_pos, source in enumerate(order):
                if 1 <= source <= n:
                    is_ctx[c, out_pos] = True
                    ctx_index[c, out_pos] = source - 1
        return src, ctx_index, is_ctx

    @property
    def num_classes(self) -> int:
        return self.fixed.shape[0]

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``[..., C, L, D]`` from context ``[n, D]``, ``[C, n, D]`` or ``[..., 1|C, n, D]``."""
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0)
        ctx = ctx.expand(*ctx.shape[:-3], self.num_classes, *ctx.shape[-2:])
        rows = torch.arange(self.num_classes, device=ctx.device).unsqueeze(1)
        placed = ctx[..., rows, self.ctx_index, :]
        return torch.where(self.is_ctx.unsqueeze(-1), placed.to(self.fixed.dtype), self.fixed)

    def assemble_pairs(self, ctx: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``[N, L, D]``: row ``k`` is class ``classes[k]`` with its own context ``ctx[k]``
        (``[N, n, D]``). Lets CoCoOp build its image × class prompts one chunk at a time."""
        rows = torch.arange(len(classes), device=ctx.device).unsqueeze(1)
        placed = ctx[rows, self.ctx_index[classes], :]
        return torch.where(self.is_ctx[classes].unsqueeze(-1), placed.to(self.fixed.dtype), self.fixed[classes])


def context_from_words(backbone: FrozenCLIP, words: str) -> torch.Tensor:
    """Token embeddings of ``words`` (the context initialisation "a photo of a")."""
    n = len(backbone.tokenizer.encode(words))
    ids = backbone.tokenize([words])
    with torch.no_grad():
        return backbone.embed_tokens(ids)[0, 1:1 + n].float().clone()


def initial_context(backbone: FrozenCLIP, n_ctx: int, words: Optional[str] = None, std: float = 0.02,
                    option: str = "text.n_ctx") -> Tuple[torch.Tensor, str]:
    """A starting context ``[n_ctx, D_t]`` and the fixed words left between it and the class name.

    With ``words`` ("a photo of a") the first ``n_ctx`` word embeddings become the context and the remaining words stay
    as fixed text: n_ctx=4 learns all four, MaPLe's n_ctx=2 learns "a photo" and keeps "of a {class}.". Without words
    the context is ``N(0, std²)`` and nothing is kept. ``option`` names the context length in errors.
    """
    if not words:
        return torch.empty(n_ctx, backbone.text_width).normal_(std=std), ""
    check_init_words(n_ctx, words, option)
    split = words.split()
    learned = " ".join(split[:n_ctx])
    tokens = len(backbone.tokenizer.encode(learned))
    if tokens != n_ctx:
        raise ConfigError(f"{option}={n_ctx} context vectors cannot start from the first {n_ctx} words of "
                          f"text.init={words!r}: each must be one token, but {learned!r} is {tokens} tokens. "
                          f"Lower {option} or set text.init=null for a random start.")
    return context_from_words(backbone, learned), " ".join(split[n_ctx:])
