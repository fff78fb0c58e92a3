"""Where the authors' code makes a choice the papers leave open, promptclip follows the code (issue 10, "Fidelity"):

- CoOp's zero-shot ensemble leaves the dataset's own template out on ImageNet (trainers/zsclip.py, ZeroshotCLIP2);
- MaPLe's couplings of layers 1..J−1 start as copies of one Linear (trainers/maple.py, _get_clones);
- VPT/DAPT prompt dropout draws a mask per image (mlvlab/DAPT trainers/dapt.py, PromptLearner.forward_vis);
- KgCoOp anchors to its own per-dataset templates (htyao89/KgCoOp trainers/kgcoop.py, CUSTOM_TEMPLATES), which differ
  from CoOp's on DescribableTextures.

Each is checked against a computation that does not go through the code under test.
"""
import pytest
import torch
import torch.nn.functional as F

from fake_datasets import make_fake_dataset

from promptclip.backbone import FrozenCLIP, VisionPrompts
from promptclip.config import build_config
from promptclip.data import load_dataset
from promptclip.errors import BackboneError, ConfigError
from promptclip.hooks import PrepareContext
from promptclip.registry import LOSSES
from promptclip.learners.maple import MaPLe, MaPLeConfig
from promptclip.learners.vpt import VPT, VPTConfig, fourier_prompts
from promptclip.learners.zeroshot import ZeroShot, ZeroShotConfig
from promptclip.methods.kgcoop import KGCOOP_TEMPLATES
from promptclip.model import PromptedCLIP
from promptclip.templates import resolve_templates

CLASSES = ["cat", "golden_retriever", "space shuttle"]
#: CoOp's IMAGENET_TEMPLATES_SELECT, written out here rather than imported
SEVEN = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
         "a {} in a video game.", "art of the {}.", "a photo of the small {}."]


# --------------------------------------------------------------------------------------------- zero-shot ensemble
@pytest.mark.parametrize("dataset, template, expected", [
    ("ImageNet", "a photo of a {}.", SEVEN),
    ("ImageNetV2", "a photo of a {}.", SEVEN + ["a photo of a {}."]),  # the reference compares the name exactly
    ("ImageNetSketch", "a photo of a {}.", SEVEN + ["a photo of a {}."]),
    ("EuroSAT", "a centered satellite photo of {}.", SEVEN + ["a centered satellite photo of {}."]),
    ("", "a photo of a {}.", SEVEN + ["a photo of a {}."]),  # an unnamed dataset is not ImageNet
])
def test_ensemble_templates_leave_out_the_dataset_template_on_imagenet_only(dataset, template, expected):
    assert resolve_templates("ensemble", template, dataset) == expected


def open_clip_ensemble(backbone, classnames, templates):
    """CLIP's prompt ensembling through open_clip's own tokenizer and text forward."""
    per_template = []
    for template in templates:
        ids = backbone.tokenizer([template.format(c.replace("_", " ")) for c in classnames])
        per_template.append(F.normalize(backbone.model.encode_text(ids), dim=-1))
    return F.normalize(sum(per_template) / len(per_template), dim=-1)


def test_ensemble_class_features_follow_the_dataset(tiny):
    learner = ZeroShot(ZeroShotConfig(templates="ensemble"), tiny, CLASSES, "a photo of a {}.", "ImageNet")
    with torch.no_grad():
        imagenet = learner.text_features(tiny)
        torch.testing.assert_close(imagenet, open_clip_ensemble(tiny, CLASSES, SEVEN), atol=1e-5, rtol=1e-5)
        learner.set_classnames(tiny, CLASSES, "a photo of a {}.", dataset="ImageNetV2")  # same classes, 8 templates
        shifted = learner.text_features(tiny)
        eight = open_clip_ensemble(tiny, CLASSES, SEVEN + ["a photo of a {}."])
    torch.testing.assert_close(shifted, eight, atol=1e-5, rtol=1e-5)
    assert (imagenet - shifted).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- MaPLe couplings
def same_linear(a, b):
    return torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


@pytest.fixture(scope="module")
def wide():
    return FrozenCLIP.load("tiny-vit-wide")  # 3 layers per tower: depth 3 has two deep couplings


def test_maple_deep_couplings_start_equal_by_default(wide):
    torch.manual_seed(0)
    maple = MaPLe(MaPLeConfig(depth=3), wide, CLASSES)
    assert maple.cfg.coupling_init == "reference"
    first, *deep = maple.couplings
    assert len(deep) == 2 and same_linear(deep[0], deep[1])
    assert not torch.equal(first.weight, deep[0].weight)
    params = [p for c in maple.couplings for p in c.parameters()]
    assert len({p.data_ptr() for p in params}) == len(params)  # copies, not one shared module


def test_maple_independent_couplings_option(wide):
    torch.manual_seed(0)
    maple = MaPLe(MaPLeConfig(depth=3, coupling_init="independent"), wide, CLASSES)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert not torch.equal(maple.couplings[a].weight, maple.couplings[b].weight)
    with pytest.raises(ConfigError, match="coupling_init"):
        MaPLe(MaPLeConfig(depth=3, coupling_init="tied"), wide, CLASSES)


def test_maple_equal_couplings_train_independently(wide):
    torch.manual_seed(0)
    maple = MaPLe(MaPLeConfig(depth=3), wide, CLASSES)
    before = [(c.weight.detach().clone(), c.bias.detach().clone()) for c in maple.couplings]
    optimizer = torch.optim.SGD(maple.couplings[1].parameters(), lr=1.0)
    maple.couplings[1](torch.randn(4, wide.text_width)).square().sum().backward()
    optimizer.step()
    changed = [not torch.equal(c.weight, w) or not torch.equal(c.bias, b) for c, (w, b) in zip(maple.couplings, before)]
    assert changed == [False, True, False]
    # through the image tower: layers 1 and 2 get different gradients, so a shared start does not tie them
    maple.zero_grad()
    images = torch.randn(2, 3, wide.image_size, wide.image_size)
    wide.encode_image(images, maple.vision_prompts(wide)).square().sum().backward()
    assert not torch.allclose(maple.couplings[1].weight.grad, maple.couplings[2].weight.grad)


# --------------------------------------------------------------------------------------- per-image prompt dropout
def recorded(module):
    """Outputs of ``module`` (the learner's dropout), in call order."""
    outputs = []
    handle = module.register_forward_hook(lambda _m, _a, out: outputs.append(out.detach().clone()))
    return outputs, handle


def vpt_model(backbone, **options):
    torch.manual_seed(0)
    text = ZeroShot(ZeroShotConfig(), backbone, CLASSES)
    vision = VPT(VPTConfig(n_tokens=6, placement="after_cls", before_ln_pre=False, **options), backbone, CLASSES)
    return PromptedCLIP(backbone, text, vision)


def images_for(backbone, n=4):
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fourier", ["none", "both"])
def test_per_image_dropout_equals_each_image_alone_with_its_mask(tiny, fourier):
    p, batch = 0.5, 4
    model = vpt_model(tiny, depth=2, dropout=p, fourier=fourier, fourier_fraction=0.5)
    assert model.vision.cfg.dropout_mode == "per_image"
    model.train()
    images = images_for(tiny, batch)
    dropped, handle = recorded(model.vision.dropout)
    with torch.no_grad():
        logits = model(images).logits
    handle.remove()
    raw = model.vision.prompts.tokens.detach()
    assert [d.shape for d in dropped] == [(batch, 6, tiny.vision_width)] * 2  # layers 0 and 1, one mask per image
    for layer, out in enumerate(dropped):
        kept = out != 0
        torch.testing.assert_close(out[kept], (raw[layer].expand_as(out) / (1 - p))[kept])  # inverted dropout
        assert all(not torch.equal(kept[0], kept[b]) for b in range(1, batch))  # every image its own mask
    # each image alone, with its own (already dropped) prompts as fixed shared tokens: the same logits
    with torch.no_grad():
        text = F.normalize(model.text.text_features(tiny), dim=-1)
        for b in range(batch):
            tokens = {layer: out[b] for layer, out in enumerate(dropped)}
            if fourier != "none":
                tokens = {layer: torch.cat([fourier_prompts(t[:3], fourier), t[3:]]) for layer, t in tokens.items()}
            alone = tiny.encode_image(images[b:b + 1], VisionPrompts(tokens, "after_cls", before_ln_pre=False))
            expected = tiny.logit_scale * F.normalize(alone, dim=-1) @ text.t()
            torch.testing.assert_close(logits[b:b + 1], expected, atol=1e-5, rtol=1e-5)


def test_shared_dropout_option_and_eval(tiny):
    model = vpt_model(tiny, depth=1, dropout=0.5, dropout_mode="shared")
    model.train()
    dropped, handle = recorded(model.vision.dropout)
    prompts = model.vision_prompts()
    assert prompts.per_image is None and dropped[0].shape == (6, tiny.vision_width)  # one mask for the batch
    assert not torch.equal(dropped[0], model.vision.prompts.tokens[0])
    handle.remove()
    per_image = vpt_model(tiny, depth=1, dropout=0.5)
    per_image.eval()  # no dropout at evaluation: the raw prompts, shared, computed once
    prompts = per_image.vision_prompts()
    assert prompts.per_image is None and torch.equal(prompts.tokens[0], per_image.vision.prompts.tokens[0])
    images = images_for(tiny)
    with torch.no_grad():
        torch.testing.assert_close(per_image(images).logits, per_image(images).logits, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="dropout_mode"):
        VPT(VPTConfig(dropout_mode="batch"), tiny, CLASSES)


def test_per_image_tokens_must_match_the_batch(tiny):
    tokens = torch.zeros(3, 2, tiny.vision_width)
    with pytest.raises(BackboneError, match="hold 3 images, but the batch has 2"):
        tiny.encode_image(images_for(tiny, 2), VisionPrompts({0: tokens}))


# ------------------------------------------------------------------------------------------- KgCoOp's templates
#: htyao89/KgCoOp trainers/kgcoop.py CUSTOM_TEMPLATES (lines 37–54), written out here after reading it
KGCOOP_REFERENCE = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}


def test_kgcoop_table_is_the_references_for_all_15_datasets():
    from promptclip.data.benchmarks import BENCHMARKS

    assert KGCOOP_TEMPLATES == KGCOOP_REFERENCE
    assert set(KGCOOP_TEMPLATES) == set(BENCHMARKS)  # keyed by our canonical names, so every benchmark finds its own
    differ = {n for n, b in BENCHMARKS.items() if b.template != KGCOOP_TEMPLATES[n]}
    assert differ == {"DescribableTextures"}  # the one place where KgCoOp's table is not CoOp's


def kgcoop_anchors(tiny, ds, *overrides):
    cfg = build_config(["kgcoop"], list(overrides))
    loss = LOSSES.get("kgcoop")(cfg.losses["kgcoop"])
    loss.prepare(PrepareContext(tiny, ds.classnames, ds.template, ds.name, torch.device("cpu"), 1, lambda: None))
    return loss.zeroshot


def test_kgcoop_preset_anchors_dtd_to_kgcoops_template(tiny, tmp_path):
    make_fake_dataset("DescribableTextures", tmp_path, n_per_class=2)
    ds = load_dataset("dtd", tmp_path)
    assert ds.template == "{} texture."  # CoOp's, which zero-shot CLIP and CoOp keep using
    with torch.no_grad():
        expected = open_clip_ensemble(tiny, ds.classnames, ["a photo of a {}, a type of texture."])
        coop = open_clip_ensemble(tiny, ds.classnames, ["{} texture."])
        anchors = kgcoop_anchors(tiny, ds)
        torch.testing.assert_close(anchors, expected, atol=1e-5, rtol=1e-5)
        assert (anchors - coop).abs().max() > 1e-3
        # an explicit choice still wins over the table
        torch.testing.assert_close(kgcoop_anchors(tiny, ds, "losses.kgcoop.templates=['{} texture.']"), coop,
                                   atol=1e-5, rtol=1e-5)


def test_kgcoop_anchors_a_dataset_outside_its_table_to_the_datasets_template(tiny):
    template = "a photo of a {}, a machine part."
    loss = LOSSES.get("kgcoop")(build_config(["kgcoop"]).losses["kgcoop"])
    loss.prepare(PrepareContext(tiny, CLASSES, template, "parts", torch.device("cpu"), 1, lambda: None))
    with torch.no_grad():
        torch.testing.assert_close(loss.zeroshot, open_clip_ensemble(tiny, CLASSES, [template]), atol=1e-5,
                                   rtol=1e-5)
