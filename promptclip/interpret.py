"""What a learned prompt means: nearest words for text context vectors, norms for everything else.

Text context vectors live in the space of the backbone's token embeddings, so CoOp's own analysis applies: for each
vector, the tokens whose embeddings lie nearest in Euclidean distance. Image-conditioned shifts, deep prompts and
vision prompts have no vocabulary to compare with; for them this module reports only what can be measured without
images, their L2 norms, beside reference scales of the frozen backbone. ``docs/interpret.md`` explains each number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import torch

from .backbone import FrozenCLIP
from .errors import BackboneError, ConfigError, PromptclipError
from .runs import CLASSIFIER, CONFIG, IDENTITY, PROMPTS

#: context vectors compared with the whole vocabulary at once (bounds the distance matrix to ~256 MB in float64)
DISTANCE_BUDGET = 2 ** 25


def _check_topk(topk: int) -> None:
    if topk < 1:
        raise ConfigError(f"--topk must be at least 1, not {topk}.")


def _stats(values: torch.Tensor) -> Dict[str, float]:
    values = values.double().flatten()
    return {"mean": values.mean().item(), "median": values.median().item(), "min": values.min().item(),
            "max": values.max().item()}


def _norms(tokens: torch.Tensor) -> list:
    """L2 norm of each vector along the last dimension, as (nested) lists."""
    return tokens.detach().double().norm(dim=-1).cpu().tolist()


def token_table(backbone: FrozenCLIP) -> torch.Tensor:
    """The token-embedding table ``[V, D_t]`` for the tokenizer's ``V`` ids, through the backbone's own lookup."""
    vocab = getattr(backbone.tokenizer, "vocab_size", None)
    if not isinstance(vocab, int) or not hasattr(backbone.tokenizer, "decode"):
        raise BackboneError(f"Interpreting prompts needs a tokenizer that can decode token ids (open_clip's "
                            f"SimpleTokenizer); {backbone.name} uses {type(backbone.tokenizer).__name__}.")
    with torch.no_grad():
        return backbone.embed_tokens(torch.arange(vocab, device=backbone.logit_scale.device)).float()


def token_text(backbone: FrozenCLIP, token_id: int) -> str:
    """A token id as readable text: byte-level BPE decoded, the ``</w>`` end-of-word mark dropped."""
    return backbone.tokenizer.decode([token_id]).strip()


@torch.no_grad()
def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor, topk: int):
    """``(distances, ids)``, each ``[N, k]``: the ``k`` rows of ``table [V, D]`` nearest to each of ``vectors [N, D]``
    in Euclidean distance, nearest first. Computed in float64, so a vector equal to a row is at distance ~1e-8."""
    table = table.double()
    table_sq = table.pow(2).sum(-1)
    k = min(topk, table.shape[0])
    distances, ids = [], []
    for chunk in vectors.double().split(max(1, DISTANCE_BUDGET // table.shape[0])):
        squared = chunk.pow(2).sum(-1, keepdim=True) + table_sq - 2 * chunk @ table.t()
        values, index = squared.clamp_(min=0).topk(k, dim=-1, largest=False)
        distances.append(values.sqrt())
        ids.append(index)
    return torch.cat(distances), torch.cat(ids)


def _context(learner, backbone: FrozenCLIP, table: torch.Tensor, topk: int) -> Optional[dict]:
    """Nearest words of the learner's input context ``ctx`` (``[n, D_t]`` shared, ``[C, n, D_t]`` per class)."""
    ctx = getattr(learner, "ctx", None)
    if not isinstance(ctx, torch.Tensor) or ctx.shape[-1] != table.shape[-1]:
        return None
    ctx = ctx.detach().float()
    class_specific = ctx.dim() == 3
    flat = ctx.reshape(-1, ctx.shape[-1])
    distances, ids = nearest_tokens(flat.to(table.device), table, topk)
    norms = _norms(flat)
    vectors = []
    for row, (dist, idx) in enumerate(zip(distances.tolist(), ids.tolist())):
        cls, slot = divmod(row, ctx.shape[-2])
        vectors.append({"class": learner.classnames[cls] if class_specific else None, "slot": slot,
                        "norm": norms[row],
                        "nearest": [{"token": token_text(backbone, i), "id": i, "distance": d}
                                    for i, d in zip(idx, dist)]})
    return {"tensor": "text.ctx", "class_specific": class_specific, "n_ctx": ctx.shape[-2],
            "fixed_text": getattr(learner, "infix", ""), "image_conditioned": learner.image_conditioned,
            "vectors": vectors}


def _vision_reference(backbone: FrozenCLIP) -> Optional[dict]:
    """Scales of the image tower's own input tokens: its class embedding and positional embeddings (a ViT only)."""
    embeddings = backbone.vision_input_embeddings()
    if embeddings is None:
        return None
    cls, positional = embeddings
    return {"class_embedding_norm": cls.double().norm().item(),
            "positional_embedding_norm": _stats(positional.double().norm(dim=-1))}


@torch.no_grad()
def interpret_model(model, topk: int = 5) -> dict:
    """The interpretation of a loaded :class:`~promptclip.model.PromptedCLIP` (see :func:`interpret_run`)."""
    from .engine.prompts import prompt_tensors

    _check_topk(topk)
    model.eval()
    backbone, text = model.backbone, model.text
    table = token_table(backbone)
    layers = text.text_layers() if hasattr(text, "text_layers") else {}  # deep text prompts (MaPLe, IVLP)
    prompts = model.vision_prompts()
    return {
        "learners": {side: learner.cfg.name for side, learner in model.learners().items()},
        "image_conditioned": model.image_conditioned,
        "topk": topk,
        "token_embedding_norm": {"vocabulary": table.shape[0], **_stats(table.norm(dim=-1))},
        "context": _context(text, backbone, table, topk),
        "text_layers": [{"layer": layer, "norms": _norms(tokens)} for layer, tokens in sorted(layers.items())],
        "vision_layers": [] if prompts is None else
        [{"layer": layer, "norms": _norms(tokens)} for layer, tokens in sorted(prompts.tokens.items())],
        "vision_placement": None if prompts is None else
        {"placement": prompts.placement, "before_ln_pre": prompts.before_ln_pre},
        "vision_reference": _vision_reference(backbone),
        "parameters": [{"name": name, "shape": list(value.shape), "norm": value.double().norm().item()}
                       for name, value in prompt_tensors(model).items()],
    }


def _learned_meta(run_dir: Path) -> dict:
    """The run's checked prompts.json; an error for a folder without learned prompts: no run, an unfinished one, a
    linear probe, zero-shot CLIP."""
    from .engine.prompts import read_meta

    if not run_dir.is_dir():
        raise PromptclipError(f"Run folder {run_dir} does not exist (or is not a folder): give a run folder that "
                              f"finished training.")
    closed_form = (run_dir / CLASSIFIER).is_file()
    if not closed_form and (run_dir / CONFIG).is_file():
        from .engine.runner import read_run_config

        closed_form = read_run_config(run_dir).text.fits_in_closed_form
    if closed_form:
        raise PromptclipError(f"{run_dir} is a linear-probe run: it fits a classifier on frozen image features and "
                              f"learns no prompts, so there is nothing to interpret. Give a prompt-learning run "
                              f"(coop, cocoop, maple, ivlp, vpt...).")
    if not (run_dir / PROMPTS).is_file():
        if (run_dir / CONFIG).is_file() or (run_dir / IDENTITY).is_file():
            raise PromptclipError(f"{run_dir} has not finished training (no {PROMPTS}): run its train command again; "
                                  f"it resumes where it stopped.")
        raise PromptclipError(f"{run_dir} is not a run folder (no {CONFIG}, no {PROMPTS}): give a folder made by "
                              f"promptclip train (`promptclip runs runs` lists them).")
    meta = read_meta(run_dir)
    if meta.get("shapes") == {}:
        names = " + ".join(str(options.get("name")) for options in meta["learners"].values())
        raise PromptclipError(f"{run_dir} learned nothing ({names}: hand-written templates, no learned tensors), so "
                              f"there is nothing to interpret. Give a prompt-learning run (coop, cocoop, maple, "
                              f"ivlp, vpt...).")
    return meta


def interpret_run(run_dir: Union[str, Path], topk: int = 5, device: str = "cpu") -> dict:
    """What a finished run's prompts mean, as a JSON-ready dict.

    ``context``: for each input text context vector (CoOp's shared or per-class context, CoCoOp's base context,
    MaPLe's/IVLP's layer-0 context) its norm and the ``topk`` nearest tokens of the vocabulary (Euclidean distance);
    ``text_layers`` / ``vision_layers``: the L2 norm of every prompt token per layer (for vision, the tokens the image
    tower receives, e.g. MaPLe's coupling outputs); ``parameters``: the norm of every learned tensor (CoCoOp's
    meta-net, MaPLe's couplings...); ``token_embedding_norm`` / ``vision_reference``: the backbone's own scales.
    """
    from .devices import resolve_device
    from .engine.prompts import load_prompts

    _check_topk(topk)
    run_dir = Path(run_dir)
    meta = _learned_meta(run_dir)
    model = load_prompts(run_dir, device=resolve_device(device))
    return {"run": str(run_dir), "method": meta.get("method", ""), "backbone": meta["backbone"],
            **interpret_model(model, topk)}


def _number(value: float) -> str:
    return f"{value:.3f}"


def _row_norms(norms: list) -> str:
    return " ".join(_number(n) for n in norms)


def format_interpretation(result: dict) -> str:
    """A readable report of :func:`interpret_run`'s dict."""
    backbone = result["backbone"]
    learners = ", ".join(f"{side} {name}" for side, name in result["learners"].items())
    lines = [f"run: {result['run']}",
             f"method: {result['method'] or '?'} (learners: {learners}); backbone: {backbone['model']} "
             f"({backbone['pretrained'] or 'random weights'})"]
    table = result["token_embedding_norm"]
    lines.append(f"token embeddings: {table['vocabulary']:,} in the vocabulary, L2 norm mean {_number(table['mean'])}, "
                 f"median {_number(table['median'])}, range {_number(table['min'])}–{_number(table['max'])}")
    context = result["context"]
    if context is not None:
        fixed = f", then the fixed text {context['fixed_text']!r}" if context["fixed_text"] else ""
        lines += ["", f"text context ({context['n_ctx']} vectors{' per class' if context['class_specific'] else ''}"
                      f"{fixed}): nearest tokens by Euclidean distance"]
        if context["image_conditioned"]:
            lines.append("  (the base context only: each image adds its own meta-net shift before the text tower)")
        label = "class / slot" if context["class_specific"] else "slot"
        names = [f"{v['class']} / {v['slot']}" if context["class_specific"] else str(v["slot"])
                 for v in context["vectors"]]
        width = max(len(name) for name in [label, *names])
        lines.append(f"  {label:<{width}}  {'norm':>6}  nearest (distance)")
        for name, vector in zip(names, context["vectors"]):
            words = ", ".join(f"{n['token'] or '<' + str(n['id']) + '>'} ({n['distance']:.3f})"
                              for n in vector["nearest"])
            lines.append(f"  {name:<{width}}  {_number(vector['norm']):>6}  {words}")
    for key, title in (("text_layers", "text prompts per layer (layer 0 = the context above)"),
                       ("vision_layers", "vision prompt tokens per layer, as the image tower receives them")):
        if result[key]:
            lines += ["", f"{title}: L2 norm of each token"]
            lines += [f"  layer {entry['layer']:>2}: {_row_norms(entry['norms'])}" for entry in result[key]]
    placement = result["vision_placement"]
    if placement is not None:
        where = "before" if placement["before_ln_pre"] else "after"
        lines.append(f"  inserted {placement['placement'].replace('_', ' ')}, {where} ln_pre")
    reference = result["vision_reference"]
    if result["vision_layers"] and reference is not None:
        positional = reference["positional_embedding_norm"]
        lines.append(f"  for scale: the class embedding's norm is {_number(reference['class_embedding_norm'])}, the "
                     f"positional embeddings' mean norm {_number(positional['mean'])}")
    lines += ["", "learned tensors: shape and L2 (Frobenius) norm"]
    width = max((len(p["name"]) for p in result["parameters"]), default=0)
    lines += [f"  {p['name']:<{width}}  {'×'.join(map(str, p['shape'])):>12}  {_number(p['norm'])}"
              for p in result["parameters"]]
    return "\n".join(lines)
