"""MaPLe, IVLP and VPT/VFPT: where prompt tokens enter each tower and which slots deeper layers replace.

The token sequence entering every transformer block is recorded with forward pre-hooks and compared with the
prompts computed independently from the learners' parameters.
"""
import contextlib

import numpy as np
import pytest
import torch

from promptclip.backbone import FrozenCLIP
from promptclip.errors import ConfigError
from promptclip.learners.ivlp import IVLP, IVLPConfig
from promptclip.learners.maple import MaPLe, MaPLeConfig
from promptclip.learners.vpt import VPT, VPTConfig, fourier_prompts

CLASSES = ["cat", "golden_retriever", "space shuttle"]


@pytest.fixture(scope="module")
def load():
    cache = {}

    def get(name="tiny-vit"):
        if name not in cache:
            cache[name] = FrozenCLIP.load(name)
        return cache[name]

    return get


@contextlib.contextmanager
def block_inputs(blocks):
    """Record the sequence ``[N, L, D]`` entering each block (what its first op, ``ln_1``, receives)."""
    seen = []
    handles = [b.ln_1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
               for b in blocks]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def text_blocks(backbone):
    return backbone.model.transformer.resblocks


def vision_blocks(backbone):
    return backbone.model.visual.transformer.resblocks


def images(backbone, n=2):
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))


def num_patches(backbone):
    return (backbone.image_size // backbone.patch_size) ** 2


def close(a, b):
    return torch.allclose(a, b.expand_as(a), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------ MaPLe
@pytest.mark.parametrize("name, depth", [("tiny-vit", 2), ("tiny-vit-wide", 2), ("tiny-vit-wide", 3)])
def test_maple_text_slots(load, name, depth):
    b = load(name)
    torch.manual_seed(0)
    m = MaPLe(MaPLeConfig(depth=depth), b, CLASSES)
    n = 2
    assert m.ctx.shape == (n, b.text_width) and m.text_deep.tokens.shape == (depth - 1, n, b.text_width)
    with block_inputs(text_blocks(b)) as seen, torch.no_grad():
        m.text_features(b)
    pos = b.model.positional_embedding
    assert close(seen[0][:, 1:1 + n], m.ctx + pos[1:1 + n])
    for i in range(1, depth):
        assert close(seen[i][:, 1:1 + n], m.text_deep.tokens[i - 1].detach())  # replaced, no positional embedding
    if depth < b.num_text_layers:  # after the last prompted layer the slots are carried on, not replaced
        assert not close(seen[depth][:, 1:1 + n], m.text_deep.tokens[-1].detach())


@pytest.mark.parametrize("name, depth", [("tiny-vit", 2), ("tiny-vit-wide", 2), ("tiny-vit-wide", 3)])
def test_maple_vision_slots_are_coupled_text_prompts(load, name, depth):
    b = load(name)
    torch.manual_seed(0)
    m = MaPLe(MaPLeConfig(depth=depth), b, CLASSES)
    n, x = 2, images(b)
    assert len(m.couplings) == depth
    assert all(f.weight.shape == (b.vision_width, b.text_width) for f in m.couplings)
    text = [m.ctx.detach()] + list(m.text_deep.tokens.detach())
    coupled = [p @ f.weight.detach().t() + f.bias.detach() for p, f in zip(text, m.couplings)]
    with block_inputs(vision_blocks(b)) as plain, torch.no_grad():
        b.encode_image(x)
    with block_inputs(vision_blocks(b)) as seen, torch.no_grad():
        b.encode_image(x, m.vision_prompts(b))
    assert seen[0].shape[1] == 1 + num_patches(b) + n
    assert close(seen[0][:, :-n], plain[0])  # CLS and patches untouched, prompts appended after them
    assert close(seen[0][:, -n:], b.model.visual.ln_pre(coupled[0]))  # before ln_pre
    for i in range(1, depth):
        assert close(seen[i][:, -n:], coupled[i])
    if depth < b.num_vision_layers:
        assert not close(seen[depth][:, -n:], coupled[-1])


def test_maple_keeps_of_a_and_matches_zero_shot_at_init(load):
    """n_ctx=2 from "a photo of a": the context is "a photo", "of a" stays fixed, so at init (no deep prompts) the
    class features are the zero-shot features of "a photo of a {class}."."""
    b = load()
    m = MaPLe(MaPLeConfig(depth=1), b, CLASSES)
    assert m.infix == "of a"
    expected = b.encode_text_ids(b.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]))
    with torch.no_grad():
        assert torch.allclose(m.text_features(b), expected, atol=1e-5)


def test_maple_depth_beyond_tower_is_an_error(load):
    with pytest.raises(ConfigError, match=r"text.depth=9 > 2 text layers \(use 1..2\); text.depth=9 > 2 vision layers"):
        MaPLe(MaPLeConfig(depth=9), load(), CLASSES)


# ------------------------------------------------------------------------------------------------------------- IVLP
def test_ivlp_independent_slots(load):
    b = load("tiny-vit-wide")
    torch.manual_seed(0)
    learner = IVLP(IVLPConfig(n_text=3, init=None, text_depth=3, n_vision=4, vision_depth=2), b, CLASSES)
    x = images(b)
    with block_inputs(text_blocks(b)) as seen, torch.no_grad():
        learner.text_features(b)
    for i in (1, 2):
        assert close(seen[i][:, 1:4], learner.text_deep.tokens[i - 1].detach())
    vision = learner.vision_deep.tokens.detach()
    with block_inputs(vision_blocks(b)) as seen, torch.no_grad():
        b.encode_image(x, learner.vision_prompts(b))
    assert seen[0].shape[1] == 1 + num_patches(b) + 4
    assert close(seen[0][:, -4:], b.model.visual.ln_pre(vision[0]))
    assert close(seen[1][:, -4:], vision[1])
    assert not close(seen[2][:, -4:], vision[1])  # vision_depth=2: carried on at layer 2
    # no coupling: the image tower does not depend on the text prompts
    features = b.encode_image(x, learner.vision_prompts(b)).sum()
    grads = torch.autograd.grad(features, [learner.ctx, learner.text_deep.tokens, learner.vision_deep.tokens],
                                allow_unused=True)
    assert grads[0] is None and grads[1] is None and grads[2].abs().sum() > 0


def test_ivlp_text_only_and_errors(load):
    b = load()
    text_only = IVLP(IVLPConfig(n_vision=0, text_depth=2), b, CLASSES)
    assert text_only.sides == ("text",) and text_only.vision_prompts(b) is None
    assert IVLP.sides == ("text", "vision")  # the class attribute is untouched
    with pytest.raises(ConfigError, match="vpt"):
        IVLP(IVLPConfig(n_text=0, text_depth=2, vision_depth=2), b, CLASSES)
    with pytest.raises(ConfigError, match="text.vision_depth=12"):
        IVLP(IVLPConfig(text_depth=2, vision_depth=12), b, CLASSES)


# -------------------------------------------------------------------------------------------------------------- VPT
def test_vpt_shallow_after_cls_after_ln_pre(load):
    b = load()
    torch.manual_seed(0)
    v = VPT(VPTConfig(n_tokens=5, depth=1), b, CLASSES)
    x = images(b)
    tokens = v.prompts.tokens.detach()[0]
    with block_inputs(vision_blocks(b)) as plain, torch.no_grad():
        b.encode_image(x)
    with block_inputs(vision_blocks(b)) as seen, torch.no_grad():
        b.encode_image(x, v.vision_prompts(b))
    assert seen[0].shape[1] == 1 + 5 + num_patches(b)
    assert close(seen[0][:, :1], plain[0][:, :1]) and close(seen[0][:, 6:], plain[0][:, 1:])
    assert close(seen[0][:, 1:6], tokens)  # inserted after ln_pre: the raw tokens
    with torch.no_grad():  # shallow: layer 1 receives block 0's output unchanged (prompts carried on)
        assert close(seen[1], vision_blocks(b)[0](seen[0]))


def test_vpt_deep_replaces_each_layer(load):
    b = load()
    torch.manual_seed(0)
    v = VPT(VPTConfig(n_tokens=3, depth=2, placement="after_patches", before_ln_pre=True), b, CLASSES)
    x = images(b)
    tokens = v.prompts.tokens.detach()
    with block_inputs(vision_blocks(b)) as seen, torch.no_grad():
        b.encode_image(x, v.vision_prompts(b))
    assert close(seen[0][:, -3:], b.model.visual.ln_pre(tokens[0]))
    assert close(seen[1][:, -3:], tokens[1])
    with torch.no_grad():  # everything but the replaced slots comes from block 0
        assert close(seen[1][:, :-3], vision_blocks(b)[0](seen[0])[:, :-3])


def test_vpt_init_and_dropout(load):
    b = load()
    torch.manual_seed(0)
    v = VPT(VPTConfig(n_tokens=64, depth=2, dropout=0.5), b, CLASSES)
    bound = (6 / (3 * b.patch_size ** 2 + b.vision_width)) ** 0.5
    assert v.prompts.tokens.abs().max() <= bound and v.prompts.tokens.abs().max() > 0.95 * bound
    v.train()  # per image (the default): dropout runs on the prompts expanded to the batch, inside encode_image
    dropped = v.vision_prompts(b).for_batch(0, 3)
    assert dropped.shape == (3, 64, b.vision_width) and not torch.equal(dropped[0], dropped[1])
    shared = VPT(VPTConfig(n_tokens=64, depth=2, dropout=0.5, dropout_mode="shared"), b, CLASSES).train()
    assert not torch.equal(shared.vision_prompts(b).tokens[0], shared.prompts.tokens[0])
    v.eval()
    assert torch.equal(v.vision_prompts(b).tokens[0], v.prompts.tokens[0])
    normal = VPT(VPTConfig(n_tokens=64, init="normal", init_std=0.02), b, CLASSES)
    assert abs(normal.prompts.tokens.std().item() - 0.02) < 0.002


@pytest.mark.parametrize("variant, numpy_fft", [
    ("both", lambda a: np.fft.fft(np.fft.fft(a, axis=-1), axis=-2).real),
    ("hidden", lambda a: np.fft.fft(a, axis=-1).real),
    ("sequence", lambda a: np.fft.fft(a, axis=-2).real),
])
def test_fourier_prompts_match_numpy(load, variant, numpy_fft):
    a = np.random.default_rng(0).standard_normal((5, 12))
    assert np.allclose(fourier_prompts(torch.tensor(a), variant).numpy(), numpy_fft(a), atol=1e-10)
    b = load()
    torch.manual_seed(0)
    v = VPT(VPTConfig(n_tokens=5, depth=2, fourier=variant, fourier_fraction=0.5), b, CLASSES)
    assert v.n_fourier == 2  # floor(0.5 · 5)
    raw = v.prompts.tokens.detach()
    for layer, tokens in v.vision_prompts(b).tokens.items():  # every prompted layer, Fourier tokens first
        assert np.allclose(tokens[:2].detach().numpy(), numpy_fft(raw[layer, :2].double().numpy()), atol=1e-5)
        assert torch.equal(tokens[2:], raw[layer, 2:])


def test_vpt_option_errors(load):
    b = load()
    for bad, match in [({"placement": "middle"}, "placement"), ({"fourier": "2d"}, "fourier"),
                       ({"init": "zeros"}, "init"), ({"fourier_fraction": 1.5}, "fourier_fraction"),
                       ({"depth": 3}, "vision.depth=3")]:
        with pytest.raises(ConfigError, match=match):
            VPT(VPTConfig(**bad), b, CLASSES)
