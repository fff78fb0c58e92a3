"""Learner pairs, composition errors, ResNet towers, presets, ViT-B/16 counts.

What every learner must do on its own (gradients, training, save → load...) is in test_learners_conformance.py.
"""
import pytest
import torch

from promptclip.backbone import FrozenCLIP
from promptclip.config import CONFIG_DIR, build_config
from promptclip.errors import BackboneError, ConfigError
from promptclip.learners import LEARNERS, build_learner
from promptclip.registry import LOSSES
from promptclip.model import PromptedCLIP

CLASSES = ["cat", "golden_retriever", "space shuttle"]


@pytest.fixture(scope="module")
def rn():
    return FrozenCLIP.load("tiny-rn")


@pytest.fixture(scope="module")
def vit_b16():
    return FrozenCLIP.load("ViT-B-16", pretrained=None)


def learner(backbone, options):
    torch.manual_seed(0)
    cls = LEARNERS.get(options["name"])
    return cls(cls.Config(**options), backbone, CLASSES)


def batch(n=6):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % len(CLASSES)


@pytest.mark.parametrize("text, vision", [({"name": "coop", "n_ctx": 4}, {"name": "vpt", "n_tokens": 4}),
                                          ({"name": "ivlp", "text_depth": 2, "n_vision": 0}, {"name": "vpt"})])
def test_a_text_and_a_vision_learner_learn_together(tiny, text, vision):
    """Both learners of a pair get gradients, the backbone none (test_learners_conformance checks learners alone)."""
    model = PromptedCLIP(tiny, learner(tiny, text), learner(tiny, vision))
    model(*batch()).loss.backward()
    for side in ("text", "vision"):
        grads = [p.grad for p in model.learners()[side].parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), side
    assert all(p.grad is None for p in model.backbone.parameters())


@pytest.mark.parametrize("options", [{"name": "vpt"}, {"name": "maple", "depth": 2},
                                     {"name": "ivlp", "text_depth": 2, "vision_depth": 2}])
def test_vision_prompts_on_a_resnet_are_refused(rn, options):
    with pytest.raises(BackboneError, match="need a ViT image tower"):
        learner(rn, options)


def test_text_only_learners_work_on_a_resnet(rn):
    x, y = batch(2)
    for options in ({"name": "cocoop"}, {"name": "ivlp", "text_depth": 2, "n_vision": 0}):
        out = PromptedCLIP(rn, learner(rn, options))(x, y)
        assert out.logits.shape == (2, len(CLASSES)) and torch.isfinite(out.loss)


def test_composition_errors(tiny):
    vpt = learner(tiny, {"name": "vpt"})
    for deep in ({"name": "maple", "depth": 2}, {"name": "ivlp", "text_depth": 2, "vision_depth": 2}):
        with pytest.raises(ConfigError, match="already prompts the image tower.*vision=null"):
            PromptedCLIP(tiny, learner(tiny, deep), vpt)
    with pytest.raises(ConfigError, match="does not prompt the text tower"):
        PromptedCLIP(tiny, vpt)
    zeroshot = learner(tiny, {"name": "zeroshot"})
    with pytest.raises(ConfigError, match="prompts both towers.*text.name=maple"):
        PromptedCLIP(tiny, zeroshot, learner(tiny, {"name": "maple", "depth": 2}))
    with pytest.raises(ConfigError, match="does not prompt the image tower"):  # IVLP without vision tokens
        PromptedCLIP(tiny, zeroshot, learner(tiny, {"name": "ivlp", "text_depth": 2, "n_vision": 0}))


MY_PRESETS = ["methods/cocoop", "methods/maple", "methods/maple_xd", "methods/ivlp", "methods/vpt_deep_clip",
              "methods/vpt_shallow", "methods/vfpt", "methods/dapt"] + \
    sorted(f"dapt/{p.stem}" for p in (CONFIG_DIR / "dapt").glob("*.yaml"))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_DIR / "methods").glob("*.yaml")))
def test_method_presets_parse(preset):
    assert build_config([f"methods/{preset}"], ["data.root=/tmp"]).text is not None


def test_presets_build_on_vit_b16(vit_b16):
    assert len(MY_PRESETS) == 8 + 11
    for name in MY_PRESETS:
        cfg = build_config([name], ["data.root=/tmp"])
        text = build_learner(cfg.text, vit_b16, CLASSES, "a photo of a {}.")
        vision = build_learner(cfg.vision, vit_b16, CLASSES, "a photo of a {}.") if cfg.vision else None
        PromptedCLIP(vit_b16, text, vision, {k: LOSSES.get(k)(v) for k, v in cfg.losses.items()})


@pytest.mark.parametrize("dataset, lr, beta_v, beta_t", [("DescribableTextures", 20, 100, 0.01),
                                                         ("EuroSAT", 20, 100, 10), ("ImageNet", 2, 0.01, 0.01),
                                                         ("OxfordFlowers", 0.002, 10, 0.01)])
def test_dapt_dataset_presets(dataset, lr, beta_v, beta_t):
    cfg = build_config([f"dapt/{dataset}"], ["data.root=/tmp"])
    assert (cfg.optim.lr, cfg.losses["dapt_intra"].weight, cfg.losses["dapt_inter"].weight) == (lr, beta_v, beta_t)
    assert cfg.losses["dapt_inter"].t == 2.0 and cfg.text.n_ctx == 16 and cfg.vision.n_tokens == 16


@pytest.mark.parametrize("options, count", [
    ({"name": "cocoop"}, 35_360),  # 4·512 + (512·32 + 32) + (32·512 + 512)
    ({"name": "maple"}, 3_555_072),  # 9·2·512 + 9·(512·768 + 768)
    ({"name": "ivlp"}, 30_720),  # 12·2·512 + 12·2·768
    ({"name": "vpt", "n_tokens": 8, "depth": 12}, 73_728),  # 12·8·768
])
def test_vit_b16_parameter_counts(vit_b16, options, count):
    assert sum(p.numel() for p in learner(vit_b16, options).parameters()) == count


def test_vit_b16_widths_and_vpt_init(vit_b16):
    maple = learner(vit_b16, {"name": "maple"})
    assert maple.vision_prompts(vit_b16).tokens[8].shape == (2, 768) and maple.text_deep.tokens.shape == (8, 2, 512)
    assert 0.0624 < learner(vit_b16, {"name": "vpt"}).prompts.tokens.abs().max() <= 0.0625  # sqrt(6 / (3·16² + 768))


@pytest.mark.parametrize("preset, overrides", [("coop", []), ("cocoop", []), ("maple", ["text.depth=2"]),
                                               ("vpt_deep_clip", ["vision.depth=2"]), ("dapt", []), ("kgcoop", []),
                                               ("promptsrc", ["text.text_depth=2", "text.vision_depth=2"])])
def test_benchmark_step_runs_each_kind_of_method(tiny, preset, overrides):
    from promptclip.bench import speed

    row = speed.learner_step(tiny, torch.device("cpu"), preset, overrides, num_classes=3, batch=2, repeats=1)
    assert row["seconds"] > 0 and row["ratio"] > 0 and row["forward_seconds"] > 0 and row["parameters"] > 0
    assert row["operation"] == f"{preset}: train step, 3 classes, batch 2, fp32"
