"""CoCoOp: the batched, chunked image × class text encoding equals the reference's per-image loop."""
import pytest
import torch
import torch.nn.functional as F

from promptclip.errors import ConfigError
from promptclip.learners.cocoop import CoCoOp, CoCoOpConfig
from promptclip.model import PromptedCLIP

CLASSES = ["cat", "golden_retriever", "space shuttle", "tree frog", "mug"]


@pytest.fixture
def backbone(tiny):
    return tiny


@pytest.fixture
def image_features(backbone):
    return F.normalize(torch.randn(4, backbone.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)


def build(backbone, **options):
    torch.manual_seed(0)
    return CoCoOp(CoCoOpConfig(**options), backbone, CLASSES)


def per_image_loop(learner, backbone, image_features):
    """The reference: for each image, shift the context by meta(z_i) and encode the C class prompts."""
    out = []
    for z in image_features:
        ctx = learner.ctx + learner.meta(z.unsqueeze(0))  # [n_ctx, D_t]
        out.append(backbone.encode_text(learner.prompts.assemble(ctx), learner.prompts.eot))
    return torch.stack(out)


@pytest.mark.parametrize("chunk_size", [1, 7, 0])
def test_batched_equals_per_image_loop(backbone, image_features, chunk_size):
    learner = build(backbone, chunk_size=chunk_size)
    with torch.no_grad():
        batched = learner.text_features(backbone, image_features)
        loop = per_image_loop(learner, backbone, image_features)
    assert batched.shape == (4, len(CLASSES), backbone.embed_dim)
    assert torch.allclose(batched, loop, atol=1e-5)
    # the shift really is per image: two images get different class features
    assert not torch.allclose(batched[0], batched[1], atol=1e-4)


def test_logits_equal_loop_through_model(backbone):
    learner = build(backbone, chunk_size=3)
    model = PromptedCLIP(backbone, learner)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x)
        z = F.normalize(backbone.encode_image(x), dim=-1)
        text = F.normalize(per_image_loop(learner, backbone, z), dim=-1)
        expected = backbone.logit_scale * torch.einsum("be,bce->bc", z, text)
    assert torch.allclose(out.logits, expected, atol=1e-4)


def test_matches_zero_shot_prompt_when_shift_is_zero(backbone, image_features):
    """With the meta-net's output at zero, the prompts are exactly "a photo of a {class}."."""
    learner = build(backbone)
    with torch.no_grad():
        learner.meta.linear2.weight.zero_()
        learner.meta.linear2.bias.zero_()
        features = learner.text_features(backbone, image_features)
    expected = backbone.encode_text_ids(backbone.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]))
    assert torch.allclose(features, expected.expand_as(features), atol=1e-5)


def test_checkpointing_gives_the_same_gradients(backbone, image_features):
    grads = []
    for checkpoint in (False, True):
        learner = build(backbone, chunk_size=4, checkpoint=checkpoint)
        learner.text_features(backbone, image_features).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in learner.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert all(g.abs().sum() > 0 for g in grads[0])


def test_chunk_size_from_memory_budget(backbone):
    learner = build(backbone, memory_budget_mb=1.0)
    length, width, layers = learner.prompts.fixed.shape[1], backbone.text_width, backbone.num_text_layers
    per_sequence = 4 * 20 * length * width
    assert learner.chunk_size(backbone, training=False) == 2 ** 20 // per_sequence
    assert learner.chunk_size(backbone, training=True) == 2 ** 20 // (per_sequence * layers)
    assert build(backbone, memory_budget_mb=1e-6).chunk_size(backbone, training=False) == 1
    assert build(backbone, chunk_size=9).chunk_size(backbone, training=True) == 9


def test_parameters_and_new_classes(backbone, image_features):
    learner = build(backbone)
    d = backbone.embed_dim
    hidden = max(1, d // 16)
    expected = 4 * backbone.text_width + (d * hidden + hidden) + (hidden * backbone.text_width + backbone.text_width)
    assert sum(p.numel() for p in learner.parameters()) == expected
    learner.set_classnames(backbone, ["airplane", "car"])
    with torch.no_grad():
        assert learner.text_features(backbone, image_features).shape == (4, 2, backbone.embed_dim)
    with pytest.raises(ConfigError, match="depend on the image"):
        learner.text_features(backbone)
    with pytest.raises(ConfigError, match="n_ctx=6"):
        build(backbone, n_ctx=6)  # "a photo of a" has only 4 words
