"""What every registered prompt learner must do, checked over the registry so a new learner is covered unedited.

Each learner is built from its own ``Config`` defaults on the 2-layer tiny-vit. The only override is that options
named ``*depth`` (prompted layers, counted from the input) are capped at the tiny towers' layer count. Whether the
learner is combined with another comes from its ``sides``: a vision-only learner gets the zero-shot text learner, a
text (or two-tower) learner stands alone. ``Config.uses_training_data`` says whether it has anything to train, and a
learner that is not ``image_conditioned`` must give the same logits from class features computed once. Every model
is built by the engine's factory and prepared on random stand-in features (training views and a validation
split), so a method that builds state from the data (a cache model) is covered too; a ``training_free`` one has
nothing to train by gradient.
"""
import dataclasses

import pytest
import torch

import promptclip.learners  # noqa: F401  (the built-in learners; the registry's first lookup loads every plugin)
from promptclip.engine.prompts import load_prompts, prompt_tensors, save_prompts
from promptclip.errors import ConfigError, PromptclipError
from promptclip.hooks import PrepareContext
from promptclip.learners.base import LEARNERS, Learner, build_learner
from promptclip.learners.features import FeatureMethod
from promptclip.model import ModelParts, PromptedCLIP, create_model

CLASSES = ["cat", "golden_retriever", "space shuttle"]
NEW_CLASSES = ["airplane", "car", "bird", "ship"]
TEMPLATE = "a blurry photo of a {}."  # not the default, so a save that drops the template changes zero-shot logits
DATASET = "DescribableTextures"
BUILT_IN = {"coop", "cocoop", "maple", "ivlp", "vpt", "zeroshot"}


def provides_prompts(cls) -> bool:
    """Whether ``cls`` implements a hook of the prompt interface (``text_features`` or ``vision_prompts``).

    A closed-form learner (``fits_in_closed_form``, the linear probe) is fitted by the engine through ``fit`` on
    frozen features and holds no prompts for these tests to check (``test_the_registry_is_covered`` holds it to
    implementing no hook and refusing construction as a prompt learner)."""
    return cls.text_features is not Learner.text_features or cls.vision_prompts is not Learner.vision_prompts


PROMPT_LEARNERS = [name for name in LEARNERS.names() if not LEARNERS.get(name).Config.fits_in_closed_form]
#: options that take a learner down another code path, checked like its defaults (VFPT's Fourier prompts; deep
#: prompts after the patches before ln_pre with per-image dropout)
VARIANTS = {"vpt": ({"fourier": "both", "depth": 2},
                    {"placement": "after_patches", "before_ln_pre": True, "depth": 2, "dropout": 0.1})}
CASES = [pytest.param(name, {}, id=name) for name in PROMPT_LEARNERS] + [
    pytest.param(name, options, id=f"{name}-" + "-".join(f"{k}={v}" for k, v in options.items()))
    for name, variants in VARIANTS.items() for options in variants]
TRAINED = [case for case in CASES if LEARNERS.get(case.values[0]).Config.uses_training_data
           and not LEARNERS.get(case.values[0]).Config.training_free]


def tiny_config(name: str, backbone, options: dict):
    """``name``'s Config from its defaults and ``options``, with ``*depth`` options capped at the tiny towers' layer
    count."""
    cls = LEARNERS.get(name)
    layers = min(backbone.num_text_layers, backbone.num_vision_layers)
    cfg = cls.Config(**options)
    if cfg.name != name:
        pytest.fail(f"learner {name!r}: its Config's name defaults to {cfg.name!r}; saved prompts record that name "
                    f"and are rebuilt from it, so set `name: str = {name!r}` in {cls.Config.__name__}.")
    depths = {f.name: min(getattr(cfg, f.name), layers) for f in dataclasses.fields(cfg)
              if f.name.endswith("depth") and isinstance(getattr(cfg, f.name), int)}
    return dataclasses.replace(cfg, **depths)


def build(name: str, backbone, options: dict) -> Learner:
    try:
        return build_learner(tiny_config(name, backbone, options), backbone, CLASSES, TEMPLATE, DATASET)
    except PromptclipError as err:
        pytest.fail(f"learner {name!r} cannot be built from its Config defaults on {backbone.name} ({err}). The "
                    f"conformance tests build every registered learner that way, capping only options named `*depth` "
                    f"at the backbone's layer count: give every option of {LEARNERS.get(name).Config.__name__} a "
                    f"default that works on a small ViT, and name layer counts `...depth`.")


def stand_in_context(backbone) -> PrepareContext:
    """Random normalised features, 4 per class, for any view of the training split and for the validation split."""
    def features(seed: int):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(4 * len(CLASSES)) % len(CLASSES)
        return torch.nn.functional.normalize(torch.randn(len(labels), backbone.embed_dim, generator=g), dim=-1), labels

    return PrepareContext(backbone, CLASSES, TEMPLATE, DATASET, torch.device("cpu"), 2, lambda: features(100),
                          lambda view: features(100 + view), lambda: features(99))


def build_model(name: str, backbone, options: dict) -> PromptedCLIP:
    """``name`` alone, or as the vision learner beside zero-shot text if it does not prompt the text tower, built by
    the factory and prepared (:func:`stand_in_context`)."""
    torch.manual_seed(0)
    cfg = build(name, backbone, options).cfg
    text, vision = (cfg, None) if "text" in LEARNERS.get(name).sides else (build("zeroshot", backbone, {}).cfg, cfg)
    context = stand_in_context(backbone)
    model = create_model(ModelParts(text, CLASSES, TEMPLATE, DATASET, vision), backbone, context)
    for learner in model.learners().values():
        learner.after_training(context)
    return model


def batch(n: int = 6):
    """Random images with fixed labels, every class present."""
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % len(CLASSES)


def learned_parameters(model: PromptedCLIP) -> dict:
    return {f"{side}.{n}": p for side, learner in model.learners().items() for n, p in learner.named_parameters()}


def sgd_steps(model: PromptedCLIP, steps: int, step_length: float = 5e-3) -> None:
    """Plain SGD on one batch. The learning rate makes the first step ``step_length`` long: on the random tiny towers
    the learners' gradient norms span 10 to 300, so no single rate suits them all."""
    x, y = batch()
    parameters = model.trainable_parameters()
    optimizer = torch.optim.SGD(parameters, lr=0.0)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        model(x, y).loss.backward()
        if step == 0:
            gradient_norm = torch.cat([p.grad.flatten() for p in parameters]).norm().item()
            optimizer.param_groups[0]["lr"] = step_length / gradient_norm
        optimizer.step()


def eval_loss(model: PromptedCLIP) -> float:
    """The loss in eval mode (no dropout), so that before and after are comparable."""
    model.eval()
    with torch.no_grad():
        return model(*batch()).loss.item()


def eval_logits(model: PromptedCLIP, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(images).logits


def test_the_registry_is_covered(tiny):
    trained = {case.values[0] for case in TRAINED}
    assert BUILT_IN <= set(PROMPT_LEARNERS) and BUILT_IN & trained == BUILT_IN - {"zeroshot"}
    hookless = [name for name in PROMPT_LEARNERS if not provides_prompts(LEARNERS.get(name))]
    assert not hookless, (f"{hookless}: implement text_features and/or vision_prompts (a prompt learner), or set "
                          f"fits_in_closed_form and implement fit (a method fitted on frozen features)")
    for name in sorted(set(LEARNERS.names()) - set(PROMPT_LEARNERS)):
        cls = LEARNERS.get(name)
        assert not provides_prompts(cls), f"{name} is fitted in closed form but also declares prompts"
        try:
            cls(cls.Config(), tiny, CLASSES)
        except ConfigError:
            continue  # not a prompt learner, and it says so when one tries to use it as such
        pytest.fail(f"learner {name!r} implements neither text_features nor vision_prompts, yet it builds, so the "
                    f"conformance tests do not cover it: implement the hook of each tower it prompts (see "
                    f"promptclip.learners.base.Learner), or raise a ConfigError in __init__ if it holds no prompts.")


@pytest.mark.parametrize("name, options", CASES)
def test_gradients_reach_only_the_learners(tiny, name, options):
    model = build_model(name, tiny, options)
    model.train()
    loss = model(*batch()).loss
    learned = learned_parameters(model)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in learned.values()}
    assert all(not p.requires_grad for p in model.backbone.parameters())
    if not LEARNERS.get(name).Config.uses_training_data or LEARNERS.get(name).Config.training_free:
        assert not learned and not loss.requires_grad
        return
    assert learned
    loss.backward()
    for key, p in learned.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, key
    assert all(p.grad is None for p in model.backbone.parameters())


@pytest.mark.parametrize("name, options", TRAINED)
def test_sgd_steps_lower_the_loss(tiny, name, options):
    model = build_model(name, tiny, options)
    before = eval_loss(model)
    # a head on frozen features has a gradient norm of 1-10 on the tiny towers (prompts: 10-300), so a longer step
    sgd_steps(model, steps=5, step_length=1e-1 if isinstance(model.text, FeatureMethod) else 5e-3)
    assert eval_loss(model) < 0.97 * before


@pytest.mark.parametrize("name, options", CASES)
def test_save_load_gives_the_logits_of_the_saved_model(tiny, name, options, tmp_path):
    model = build_model(name, tiny, options)
    images, _ = batch(3)
    initial = eval_logits(model, images)
    if model.trainable_parameters():  # move away from the initialisation, which a lossy load could fall back to
        sgd_steps(model, steps=1)
        assert not torch.allclose(eval_logits(model, images), initial, atol=1e-5)
    save_prompts(model, tmp_path, name)
    torch.manual_seed(1)  # the loaded learners start from other random values before their state is loaded
    loaded = load_prompts(tmp_path, backbone=tiny)
    torch.testing.assert_close(eval_logits(loaded, images), eval_logits(model, images), rtol=0, atol=1e-6)
    for side, learner in model.learners().items():
        again = loaded.learners()[side]
        assert (type(again), again.cfg, again.classnames, again.template, again.dataset) == \
            (type(learner), learner.cfg, CLASSES, TEMPLATE, DATASET)


@pytest.mark.parametrize("name, options", CASES)
def test_new_classes_keep_the_learned_prompts(tiny, name, options):
    model = build_model(name, tiny, options)
    if model.trainable_parameters():
        sgd_steps(model, steps=1)
    images, _ = batch(3)
    logits = eval_logits(model, images)
    learned = prompt_tensors(model)
    if not model.text.cfg.transfers_to_new_classes:  # built from the training classes: it says so
        with pytest.raises(ConfigError, match="other classes"):
            model.set_classnames(NEW_CLASSES)
        return
    model.set_classnames(NEW_CLASSES)
    assert eval_logits(model, images).shape == (3, len(NEW_CLASSES))
    kept = prompt_tensors(model)
    assert kept.keys() == learned.keys() and all(torch.equal(kept[k], v) for k, v in learned.items())
    model.set_classnames(CLASSES)
    torch.testing.assert_close(eval_logits(model, images), logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, options", CASES)
def test_eval_mode_is_deterministic(tiny, name, options):
    model = build_model(name, tiny, options)
    images, _ = batch(3)
    first = eval_logits(model, images)
    assert torch.equal(eval_logits(model, images), first)
    if not model.image_conditioned:  # evaluation computes such class features once, for every batch
        with torch.no_grad():
            once = model.head(model.image_features(images), model.class_features()).logits
        assert torch.equal(once, first)
