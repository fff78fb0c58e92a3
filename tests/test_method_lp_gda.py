"""LP++, ZS-LP and GDA: logits against hand-written formulas, GDA's KS estimator against numpy and against analytic
LDA, LP++'s solver against a plain re-implementation of the reference loop (step sizes, momentum, accumulated α
gradient, best-validation iteration), ZS-LP's zero-shot start, the validation searches (validation only, never
another split), the presets, and end-to-end runs on a coloured image folder (fit, evaluate, save, load, predict)."""
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench_fixtures import coloured_folder
from method_checks import check_loads_and_predicts
from promptclip.config import build_config
from promptclip.engine import runner
from promptclip.hooks import PrepareContext
from promptclip.methods.gda import GDAConfig
from promptclip.methods.lp_plus_plus import LPPlusPlusConfig
from promptclip.methods.zs_lp import ZSLPConfig
from promptclip.model import ModelParts, create_model
from promptclip.runs import default_run_dir

CPU = torch.device("cpu")
CLASSES = ["cat", "golden_retriever", "space shuttle"]
TEMPLATE = "a photo of a {}."
#: CoOp's IMAGENET_TEMPLATES_SELECT, written out so the test does not read the module's list
SELECT = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
          "a {} in a video game.", "art of the {}.", "a photo of the small {}."]


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def clusters(views, per_class, dim, seed=0, spread=0.15, classes=3):
    """Normalised features around one random centre per class: ``[views, classes·per_class, dim]`` and labels."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    labels = torch.arange(classes * per_class) % classes
    noise = spread * torch.randn(views, len(labels), dim, generator=g)
    return F.normalize(centres[labels] + noise, dim=-1), labels


class Spy:
    """A PrepareContext over given training views and validation split that records every accessor it serves."""

    def __init__(self, backbone, views, labels, validation=None, classes=CLASSES, dataset="Caltech101"):
        self.calls = []

        def view(v):
            self.calls.append(f"train_view {v}")
            return views[v], labels

        def val():
            self.calls.append("validation")
            return validation

        self.context = PrepareContext(backbone, classes, TEMPLATE, dataset, CPU, 0, lambda: view(0), view, val)


def raw_text(backbone, template, classes=CLASSES):
    prompts = [template.format(c.replace("_", " ")) for c in classes]
    with torch.no_grad():
        return backbone.encode_text_ids(backbone.tokenize(prompts)).float()


def build(cfg, backbone, context, classes=CLASSES, dataset="Caltech101"):
    model = create_model(ModelParts(cfg, classes, TEMPLATE, dataset), backbone, context)
    model.text.after_training(context)
    return model.eval()


# ------------------------------------------------------------------------------------------------------- GDA
def test_gda_logits_are_the_hand_written_ks_discriminant(tiny):
    views, labels = clusters(3, 2, tiny.embed_dim)
    model = build(GDAConfig(views=3, alpha=0.7), tiny, Spy(tiny, views, labels).context)
    x = views.reshape(-1, tiny.embed_dim).double().numpy()
    y = labels.repeat(3).numpy()
    mu = np.stack([x[y == c].mean(0) for c in range(3)])
    z = x - mu[y]
    scatter = z.T @ z
    dim = x.shape[1]
    precision = dim * np.linalg.inv(scatter + np.trace(scatter / (len(z) - 1)) * np.eye(dim))
    weight = mu @ precision
    bias = math.log(1 / 3) - 0.5 * np.einsum("cd,de,ce->c", mu, precision, mu)
    text = F.normalize(raw_text(tiny, TEMPLATE), dim=-1).double().numpy()
    f = unit(5, dim, seed=3)
    expected = 100.0 * f.double().numpy() @ text.T + 0.7 * (f.double().numpy() @ weight.T + bias)
    with torch.no_grad():
        logits = model.head(f).logits
    np.testing.assert_allclose(logits.double().numpy(), expected, rtol=1e-4, atol=1e-3)


def test_gda_is_analytic_lda_up_to_the_ks_scale(tiny):
    """Two Gaussians with known μ, Σ: (N'−1)/D · (f·Wᵀ + b − log ½) → xᵀΣ⁻¹μ_c − ½μ_cᵀΣ⁻¹μ_c as N' grows."""
    dim, n = tiny.embed_dim, 40000
    g = torch.Generator().manual_seed(7)
    means = torch.zeros(2, dim, dtype=torch.float64)
    means[0, 0], means[1, 0], means[1, 1] = 1.0, -1.0, 0.5
    scale = 0.5 + 1.5 * torch.rand(dim, generator=g, dtype=torch.float64)  # Σ = diag(scale²)
    labels = torch.arange(2 * n) % 2
    samples = (means[labels] + scale * torch.randn(2, 2 * n, dim, generator=g, dtype=torch.float64)).float()
    model = build(GDAConfig(views=2), tiny, Spy(tiny, samples, labels, classes=["cat", "dog"]).context, ["cat", "dog"])
    x = means[labels[:6]] + scale * torch.randn(6, dim, generator=g, dtype=torch.float64)
    inverse = torch.diag(scale ** -2)
    analytic = x @ inverse @ means.t() - 0.5 * torch.einsum("cd,de,ce->c", means, inverse, means)
    fitted = (x.float() @ model.text.weight.t() + model.text.bias - math.log(0.5)).double() * (4 * n - 1) / dim
    assert (fitted - analytic).norm() / analytic.norm() < 0.03


def test_gda_alpha_search_reads_only_validation_and_picks_its_optimum(tiny):
    views, labels = clusters(2, 3, tiny.embed_dim, seed=1)
    held_out, truth = clusters(1, 4, tiny.embed_dim, seed=1)  # same centres: GDA is right on these
    held_out = held_out[0]
    zeroshot = F.normalize(raw_text(tiny, TEMPLATE), dim=-1)
    agree = (held_out @ zeroshot.t()).argmax(-1)  # validation labelled as zero-shot CLIP sees it: α → small
    assert not torch.equal(agree, truth)
    spy = Spy(tiny, views, labels, validation=(held_out, agree))
    model = build(GDAConfig(views=2, hparams="val"), tiny, spy.context)
    assert spy.calls == ["train_view 0", "train_view 1", "validation"]

    def first_best(target):  # the reference's loop: strict >, starting from accuracy 0
        best, chosen = 0.0, 0.1
        gda = held_out @ model.text.weight.t() + model.text.bias
        for alpha in [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]:
            accuracy = ((100.0 * held_out @ zeroshot.t() + alpha * gda).argmax(-1) == target).float().mean().item()
            if accuracy > best:
                best, chosen = accuracy, alpha
        return chosen

    assert model.text.alpha.item() == pytest.approx(first_best(agree)) == pytest.approx(1e-4)
    assert first_best(truth) > 1e-2  # a search on the true labels would have picked another α
    assert model.text.hyperparameters() == {"alpha": pytest.approx(1e-4)}


def test_gda_without_validation_keeps_the_fixed_alpha(tiny, caplog):
    views, labels = clusters(2, 2, tiny.embed_dim)
    with caplog.at_level(logging.INFO, logger="promptclip"):
        model = build(GDAConfig(views=2, hparams="val", alpha=0.1), tiny, Spy(tiny, views, labels).context)
    assert model.text.alpha.item() == pytest.approx(0.1) and model.text.hyperparameters() == {}
    assert "no validation split" in caplog.text


# ------------------------------------------------------------------------------------------------------- LP++
def reference_lp_plus_plus(features, labels, text_weights, bias, iterations, every=10):
    """The reference's loop as it is written (nn.Linear, torch SGD, α's gradient never zeroed): every iterate."""
    n, dim = features.shape
    classes = text_weights.shape[0]
    probe = torch.nn.Linear(dim, classes)
    probe.weight.data = F.one_hot(labels, classes).float().t() @ features
    probe.bias.data = bias.clone()
    text = features @ text_weights.t()
    own = [text[labels == c, c].mean() for c in range(classes)]
    alpha = (250 * torch.stack(own).mean() * torch.ones(1, classes)).requires_grad_()
    lr_w = 4 * n / np.linalg.eigvalsh((features.t() @ features).double().numpy()).max()
    lr_alpha = n / (4 * (text ** 2).sum(0).max().item())
    optimizer = torch.optim.SGD(probe.parameters(), lr_w, momentum=0.9)
    states = []
    for it in range(iterations):
        loss = F.cross_entropy(probe(features) + torch.ones(n, 1) @ alpha * text, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (it + 1) % every == 0:
            alpha.data -= lr_alpha * alpha.grad.data
        states.append((probe.weight.detach().clone(), probe.bias.detach().clone(), alpha.detach()[0].clone()))
    return states, lr_w, lr_alpha


def lp_plus_plus(backbone, cfg, views, labels, validation=None, seed=3):
    """The fitted model, the bias it started from and the accessors it read."""
    torch.manual_seed(seed)
    spy = Spy(backbone, views, labels, validation)
    model = build(cfg, backbone, spy.context)
    torch.manual_seed(seed)  # the solver's one random draw: nn.Linear's default bias init
    dim = backbone.embed_dim
    bias = torch.empty(len(CLASSES)).uniform_(-dim ** -0.5, dim ** -0.5)
    return model, bias, spy.calls


def test_lp_plus_plus_follows_the_reference_loop_and_step_sizes(tiny):
    views, labels = clusters(1, 2, tiny.embed_dim, seed=2)
    model, bias, _ = lp_plus_plus(tiny, LPPlusPlusConfig(iterations=25), views, labels)
    zeroshot = F.normalize(raw_text(tiny, TEMPLATE), dim=-1)
    states, lr_w, lr_alpha = reference_lp_plus_plus(views[0], labels, zeroshot, bias, 25)
    chosen = model.text.hyperparameters()
    assert chosen["lr_w"] == pytest.approx(lr_w, rel=1e-5) and chosen["lr_alpha"] == pytest.approx(lr_alpha, rel=1e-5)
    assert chosen["iteration"] == 25
    weight, bias_last, alpha = states[-1]
    torch.testing.assert_close(model.text.weight, weight, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.text.bias, bias_last, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.text.alpha, alpha, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(states[-1][2], states[0][2])  # α moved (at iterations 10 and 20)


def test_lp_plus_plus_logits_are_the_unscaled_blend(tiny):
    views, labels = clusters(1, 2, tiny.embed_dim)
    model, _, _ = lp_plus_plus(tiny, LPPlusPlusConfig(iterations=1), views, labels)
    dim = tiny.embed_dim
    weight, bias, alpha = unit(3, dim, seed=4) * 3, torch.tensor([0.3, -0.2, 0.1]), torch.tensor([40.0, 60.0, 55.0])
    model.text.weight, model.text.bias, model.text.alpha = weight, bias, alpha
    f = unit(4, dim, seed=5)
    text = F.normalize(raw_text(tiny, TEMPLATE), dim=-1)
    expected = f @ weight.t() + bias + alpha * (f @ text.t())
    with torch.no_grad():
        torch.testing.assert_close(model.head(f).logits, expected, rtol=1e-5, atol=1e-5)


def test_lp_plus_plus_keeps_the_best_validation_iteration(tiny, caplog):
    views, labels = clusters(1, 2, tiny.embed_dim)
    val_features, val_labels = clusters(1, 4, tiny.embed_dim)  # held-out points of the same classes
    val_features = val_features[0]
    cfg = LPPlusPlusConfig(iterations=40, hparams="val")
    model, bias, calls = lp_plus_plus(tiny, cfg, views, labels, (val_features, val_labels))
    assert calls == ["train_view 0", "validation"]
    zeroshot = F.normalize(raw_text(tiny, TEMPLATE), dim=-1)
    states, _, _ = reference_lp_plus_plus(views[0], labels, zeroshot, bias, 40)
    accuracies = [((val_features @ w.t() + b + a * (val_features @ zeroshot.t())).argmax(-1) == val_labels)
                  .float().mean().item() for w, b, a in states]
    best = max(i for i, acc in enumerate(accuracies) if acc == max(accuracies))  # >=: the later iteration wins
    assert best != len(states) - 1  # so keeping the last would fail this test
    assert model.text.hyperparameters()["iteration"] == best + 1
    torch.testing.assert_close(model.text.weight, states[best][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.text.alpha, states[best][2], rtol=1e-4, atol=1e-4)
    with caplog.at_level(logging.INFO, logger="promptclip"):  # no validation split: the last iteration
        fallback, _, _ = lp_plus_plus(tiny, cfg, views, labels, None)
    assert fallback.text.hyperparameters()["iteration"] == 40 and "no validation split" in caplog.text
    torch.testing.assert_close(fallback.text.weight, states[-1][0], rtol=1e-4, atol=1e-4)


def test_lp_plus_plus_and_gda_read_one_view_per_shot_and_ten(tiny):
    views, labels = clusters(10, 1, tiny.embed_dim)
    lp, gda = Spy(tiny, views, labels), Spy(tiny, views, labels)
    build(LPPlusPlusConfig(iterations=1), tiny, lp.context)
    build(GDAConfig(), tiny, gda.context)
    assert lp.calls == ["train_view 0"] and gda.calls == [f"train_view {v}" for v in range(10)]


# ------------------------------------------------------------------------------------------------------- ZS-LP
def test_zs_lp_starts_at_the_raw_template_mean_and_zero_shot_logits(tiny):
    templates = ["a photo of a {}.", "art of the {}."]
    context = PrepareContext(tiny, CLASSES, TEMPLATE, "Caltech101", CPU, 1, lambda: None)
    model = build(ZSLPConfig(templates=templates), tiny, context)
    raw = torch.stack([raw_text(tiny, t) for t in templates]).mean(0)
    torch.testing.assert_close(model.text.weight.detach(), raw, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3), atol=1e-2)  # unnormalised, as in CLAP
    f = unit(4, tiny.embed_dim, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(model.head(f).logits, 100.0 * f @ F.normalize(raw, dim=-1).t(), rtol=1e-5,
                                   atol=1e-4)
    single = build(ZSLPConfig(), tiny, context)  # the dataset's template: zero-shot CLIP's logits
    with torch.no_grad():
        zeroshot = 100.0 * f @ F.normalize(raw_text(tiny, TEMPLATE), dim=-1).t()
        torch.testing.assert_close(single.head(f).logits, zeroshot, rtol=1e-5, atol=1e-4)
    assert [n for n, p in single.named_parameters() if p.requires_grad] == ["text.weight"]


def test_reference_templates(tiny):
    lp = build(LPPlusPlusConfig(iterations=1), tiny, Spy(tiny, *clusters(1, 1, tiny.embed_dim)).context)
    zs = build(ZSLPConfig(), tiny, PrepareContext(tiny, CLASSES, TEMPLATE, "Caltech101", CPU, 1, lambda: None))
    assert lp.text.dataset_templates("ImageNet", TEMPLATE) == SELECT
    assert zs.text.dataset_templates("ImageNet", TEMPLATE) == SELECT + ["a photo of a {}."]
    for learner in (lp.text, zs.text):
        assert learner.dataset_templates("DescribableTextures", "{} texture.") == ["{} texture."]


def test_presets_carry_the_reference_recipes():
    zs = build_config(["zs_lp"], [])
    assert (zs.optim.name, zs.optim.lr, zs.optim.momentum, zs.optim.weight_decay, zs.optim.scheduler,
            zs.optim.warmup_epochs, zs.optim.warmup_lr) == ("sgd", 0.1, 0.9, 0.0, "cosine", 1, 1e-5)
    assert (zs.train.epochs, zs.train.batch_size, zs.train.views, zs.data.augment) == (300, 256, 20, True)
    lp, gda = build_config(["lp_plus_plus"], []), build_config(["gda"], [])
    assert (lp.train.epochs, lp.text.views, lp.text.iterations, lp.text.alpha_every, lp.text.momentum) == \
        (0, 1, 300, 10, 0.9)
    assert (gda.train.epochs, gda.text.views, gda.text.alpha) == (0, 10, 0.1)
    assert gda.text.alphas == [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
    assert lp.text.hparams == gda.text.hparams == "fixed"  # every preset reads no validation data; val is opt-in


# -------------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("preset, overrides, chosen", [
    ("lp_plus_plus", ["text.hparams=val"], "text.iteration"),
    ("gda", ["text.views=3", "text.hparams=val"], "text.alpha"),
    ("zs_lp", ["train.epochs=2", "train.views=2", "train.batch_size=4"], None)])
@pytest.mark.slow
def test_a_run_fits_evaluates_and_loads_back(tmp_path, monkeypatch, preset, overrides, chosen):
    root = coloured_folder(tmp_path / "data")
    cfg = build_config([preset], ["data.name=imagefolder", f"data.root={root}", "model.name=tiny-vit",
                                  "model.pretrained=null", "train.device=cpu", "data.shots=2",
                                  f"output.root={tmp_path}/runs", f"output.cache_dir={tmp_path}/cache", *overrides])
    built = []

    def keep(*args, **kwargs):
        model = build_model(*args, **kwargs)
        built.append((model, {k: v.detach().clone() for k, v in model.text.state_dict().items()}))
        return model

    build_model = runner.build_model
    monkeypatch.setattr(runner, "build_model", keep)
    result = runner.run(cfg, progress=False)
    (model, prepared), = built
    if preset == "zs_lp":
        assert result["num_parameters"] == model.text.weight.numel()
        assert not torch.equal(model.text.weight.detach(), prepared["weight"])  # trained from its zero-shot start
    else:
        assert result["num_parameters"] == 0 and model.text.weight.abs().sum() > 0
        assert chosen in result["hyperparameters"]

    check_loads_and_predicts(model, cfg, root, result)
    again = runner.evaluate_run(default_run_dir(cfg), progress=False)
    assert again["test"]["accuracy"] == pytest.approx(result["test"]["accuracy"])
