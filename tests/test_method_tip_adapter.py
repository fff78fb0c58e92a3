"""Tip-Adapter and Tip-Adapter-F: the cache logits against a hand-written formula, the cache keys, the reference's
(β, α) grid search on validation only (and its fallback), and end-to-end runs on a coloured image folder: save and
load, predict, a warm feature cache, and kill-and-resume for Tip-Adapter-F."""
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from bench_fixtures import coloured_folder
from method_checks import check_loads_and_predicts
from promptclip import load_run
from promptclip.config import build_config
from promptclip.engine import cache as cache_module
from promptclip.engine import runner
from promptclip.data.benchmarks import BENCHMARKS
from promptclip.hooks import PrepareContext
from promptclip.methods.tip_adapter import TipAdapter, TipAdapterConfig, TipAdapterF, TipAdapterFConfig
from promptclip.runs import default_run_dir

CPU = torch.device("cpu")
CLASSES = ["cat", "golden_retriever", "space shuttle"]
LEARNERS = [(TipAdapter, TipAdapterConfig), (TipAdapterF, TipAdapterFConfig)]


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).float()


def labelled(n, seed):
    """``n`` random normalised features of the tiny model's width and labels cycling over the classes."""
    return unit(n, 32, seed=seed), torch.arange(n) % len(CLASSES)


def context(backbone, dataset="OxfordPets", view=None, val=None):
    """A context as the engine gives it: the benchmark's own template (CoOp's per-dataset one)."""
    return PrepareContext(backbone, CLASSES, BENCHMARKS[dataset].template, dataset, CPU, 1,
                          lambda: view(0), view, val)


# --------------------------------------------------------------------------------------------- the formulas
@pytest.mark.parametrize("cls, config", LEARNERS)
def test_logits_are_zero_shot_plus_the_cache_term(tiny, cls, config):
    learner = cls(config(), tiny, CLASSES, dataset="OxfordPets")
    f, w, keys = unit(4, 32, seed=1), unit(3, 32, seed=2), unit(6, 32, seed=3)
    cache_labels = [0, 1, 2, 2, 0, 1]
    learner.keys = torch.nn.Parameter(keys) if isinstance(learner.keys, torch.nn.Parameter) else keys
    learner.values = F.one_hot(torch.tensor(cache_labels), 3).float()
    learner.alpha.fill_(1.7)
    learner.beta.fill_(1.5)
    tau = 3.0
    expected = torch.zeros(4, 3, dtype=torch.float64)
    for b in range(4):
        for c in range(3):
            zeroshot = tau * sum(float(f[b, e]) * float(w[c, e]) for e in range(32))
            cache = sum(torch.exp(torch.tensor(-1.5 * (1 - float(f[b] @ keys[n])), dtype=torch.float64))
                        for n in range(6) if cache_labels[n] == c)
            expected[b, c] = zeroshot + 1.7 * float(cache)
    with torch.no_grad():
        logits = learner.head(f, w, torch.tensor(tau))
    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls, config", LEARNERS)
def test_cache_keys_are_the_renormalised_mean_of_the_views(tiny, cls, config):
    asked = []

    def view(v):
        asked.append(v)
        return labelled(6, seed=10 + v)

    learner = cls(config(augment_epoch=4), tiny, CLASSES, dataset="OxfordPets")
    learner.prepare(context(tiny, view=view))
    assert sorted(set(asked)) == [0, 1, 2, 3]
    views = [labelled(6, seed=10 + v)[0].double() for v in range(4)]
    for n in range(6):
        mean = sum(v[n] for v in views) / 4
        torch.testing.assert_close(learner.keys[n].detach().double(), mean / mean.norm(), rtol=0, atol=1e-6)
    assert learner.values.tolist() == [[1.0 if c == n % 3 else 0.0 for c in range(3)] for n in range(6)]
    assert isinstance(learner.keys, torch.nn.Parameter) == (cls is TipAdapterF)
    assert [n for n, p in learner.named_parameters() if p.requires_grad] == (["keys"] if cls is TipAdapterF else [])
    # α, β: the reference's init_alpha / init_beta for OxfordPets (configs/oxford_pets.yaml)
    assert (float(learner.alpha), float(learner.beta)) == (pytest.approx(1.17), 1.0)


def test_imagenet_zero_shot_weights_are_the_seven_template_mean(tiny):
    select = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
              "a {} in a video game.", "art of the {}.", "a photo of the small {}."]
    learner = TipAdapter(TipAdapterConfig(), tiny, CLASSES, dataset="ImageNet")
    learner.prepare(context(tiny, "ImageNet", view=lambda v: labelled(6, seed=v)))
    with torch.no_grad():
        per_template = [F.normalize(tiny.encode_text_ids(tiny.tokenize(
            [t.format(c.replace("_", " ")) for c in CLASSES])).double(), dim=-1) for t in select]
    expected = F.normalize(sum(per_template) / 7, dim=-1)
    torch.testing.assert_close(learner.zeroshot.double(), expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the search
def brute_force(features, labels, zeroshot, keys, values, tau, beta_scale, alpha_scale, beta_steps, alpha_steps):
    """The reference's grid in float64: β outside, α inside, a strict ">" on the number correct."""
    best, chosen = -1, None
    affinity = features.double() @ keys.double().t()
    zs = tau * features.double() @ zeroshot.double().t()
    for i in range(beta_steps):
        beta = 0.1 + i * (beta_scale - 0.1) / beta_steps
        for j in range(alpha_steps):
            alpha = 0.1 + j * (alpha_scale - 0.1) / alpha_steps
            logits = zs + alpha * torch.exp(-beta * (1 - affinity)) @ values.double()
            correct = int((logits.argmax(-1) == labels).sum())
            if correct > best:
                best, chosen = correct, (alpha, beta)
    return chosen


def prepared_for_search(tiny, val, hparams="val", dataset="OxfordPets"):
    learner = TipAdapter(TipAdapterConfig(hparams=hparams, augment_epoch=1, beta_steps=12, alpha_steps=6), tiny,
                         CLASSES, dataset=dataset)
    learner.prepare(context(tiny, dataset, view=lambda v: labelled(9, seed=40), val=val))
    return learner


def test_the_search_picks_the_validation_optimum_not_the_test_one(tiny):
    val, test = labelled(30, seed=50), labelled(30, seed=51)
    seen = []
    learner = prepared_for_search(tiny, lambda: seen.append(1) or val)
    args = (learner.zeroshot, learner.keys, learner.values, float(tiny.logit_scale), 7.0, 3.0, 12, 6)
    on_val, on_test = brute_force(*val, *args), brute_force(*test, *args)
    assert on_val != on_test  # a search that read the test split would choose another point
    learner.after_training(context(tiny, view=lambda v: labelled(9, seed=40), val=lambda: seen.append(1) or val))
    assert seen == [1]
    assert (float(learner.alpha), float(learner.beta)) == pytest.approx(on_val)
    assert learner.hyperparameters() == pytest.approx({"alpha": on_val[0], "beta": on_val[1]})


def test_without_a_validation_split_the_fixed_values_are_kept(tiny, caplog):
    learner = prepared_for_search(tiny, lambda: None, dataset="OxfordFlowers")
    with caplog.at_level(logging.INFO, logger="promptclip"):
        learner.after_training(context(tiny, "OxfordFlowers", val=lambda: None))
    assert (float(learner.alpha), float(learner.beta)) == (10.0, 1.0)  # configs/oxford_flowers.yaml init values
    assert learner.hyperparameters() == {}
    assert "no validation split" in caplog.text


def test_fixed_hparams_read_no_validation_data(tiny):
    def refuse():
        raise AssertionError("hparams: fixed read the validation split")

    learner = prepared_for_search(tiny, refuse, hparams="fixed", dataset="FGVCAircraft")
    learner.after_training(context(tiny, "FGVCAircraft", val=refuse))
    assert (float(learner.alpha), float(learner.beta), learner.hyperparameters()) == (5.0, 1.0, {})


# ------------------------------------------------------------------------------------------------ end to end
def config(root, tmp_path, preset, *extra, cache=None):
    return build_config([preset], ["data.name=imagefolder", f"data.root={root}", "model.name=tiny-vit",
                                   "model.pretrained=null", "train.device=cpu", "data.shots=2", "text.hparams=val",
                                   "text.augment_epoch=3", "text.beta_steps=10", "text.alpha_steps=4",
                                   f"output.root={tmp_path}/runs", f"output.cache_dir={cache or tmp_path / 'cache'}",
                                   *extra])


def images_of(loaded, paths):
    return torch.stack([loaded.transform(Image.open(p).convert("RGB")) for p in paths])


@pytest.mark.parametrize("preset, extra", [("tip_adapter", ()),
                                           ("tip_adapter_f", ("train.epochs=2", "optim.lr=0.01"))])
@pytest.mark.slow
def test_a_run_searches_on_val_saves_loads_and_predicts(tmp_path, monkeypatch, preset, extra):
    root = coloured_folder(tmp_path / "data")
    cfg = config(root, tmp_path, preset, *extra)
    built, searched = [], []

    def keep(*args, **kwargs):
        model = build_model(*args, **kwargs)
        built.append((model, model.text.keys.detach().clone()))
        return model

    def record(self, features, labels, logit_scale):
        searched.append((features.clone(), labels.clone()))
        return search(self, features, labels, logit_scale)

    build_model, search = runner.build_model, TipAdapter.search
    monkeypatch.setattr(runner, "build_model", keep)
    monkeypatch.setattr(TipAdapter, "search", record)
    result = runner.run(cfg, progress=False)
    (model, cache_keys), = built
    assert result["num_parameters"] == (0 if preset == "tip_adapter" else cache_keys.numel())
    assert torch.equal(model.text.keys, cache_keys) == (preset == "tip_adapter")  # Tip-Adapter-F trained its keys
    assert result["hyperparameters"] == pytest.approx({"text.alpha": float(model.text.alpha),
                                                        "text.beta": float(model.text.beta)})

    loaded = load_run(default_run_dir(cfg), device="cpu")
    model.eval()
    splits = {s: sorted((root / s).rglob("*.png")) for s in ("val", "test")}
    with torch.no_grad():
        features = {s: model.image_features(images_of(loaded, paths)) for s, paths in splits.items()}
    (seen, seen_labels), = searched  # once, on the few-shot validation split (2 of the 3 val images per class)
    assert len(seen) == 6
    for row, label in zip(seen, seen_labels):
        match = int((features["val"] - row).abs().amax(-1).argmin())
        assert float((features["val"][match] - row).abs().max()) < 1e-5
        assert loaded.classnames[int(label)] == splits["val"][match].parent.name
        assert float((features["test"] - row).abs().amax(-1).min()) > 1e-3  # no test image

    saved = load_file(str(default_run_dir(cfg) / "prompts.safetensors"))
    assert torch.equal(saved["text.keys"], model.text.keys.detach())
    assert torch.equal(loaded.model.text.keys.detach(), model.text.keys.detach())
    assert saved["text.values"].shape == (6, 3) and torch.equal(saved["text.alpha"], model.text.alpha)
    check_loads_and_predicts(model, cfg, root, result, atol=1e-6)


def test_a_warm_feature_cache_gives_the_cold_runs_result(tmp_path, monkeypatch):
    root = coloured_folder(tmp_path / "data")
    calls = []
    real = cache_module.encode_loader
    monkeypatch.setattr(cache_module, "encode_loader", lambda *a, **k: calls.append(1) or real(*a, **k))
    cold = config(root, tmp_path / "cold", "tip_adapter", cache=tmp_path / "cache")
    warm = config(root, tmp_path / "warm", "tip_adapter", cache=tmp_path / "cache")
    first = runner.run(cold, progress=False)
    encoded = len(calls)
    assert encoded == 5  # three training views, the validation and the test split
    second = runner.run(warm, progress=False)
    assert len(calls) == encoded  # every feature came from the cache
    assert (second["test"], second["hyperparameters"]) == (first["test"], first["hyperparameters"])
    a, b = (load_file(str(default_run_dir(c) / "prompts.safetensors")) for c in (cold, warm))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_tip_adapter_f_survives_kill_and_resume(tmp_path):
    root = coloured_folder(tmp_path / "data")
    extra = ("train.epochs=3", "optim.lr=0.01")
    straight = runner.run(config(root, tmp_path / "straight", "tip_adapter_f", *extra), progress=False)

    def kill_after_second(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    killed = config(root, tmp_path / "killed", "tip_adapter_f", *extra)
    with pytest.raises(KeyboardInterrupt):
        runner.run(killed, progress=False, on_epoch_end=kill_after_second)
    resumed = runner.run(killed, progress=False)
    lines = (default_run_dir(killed) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]  # epochs 0 and 1 came from the checkpoint
    assert (resumed["test"], resumed["hyperparameters"]) == (straight["test"], straight["hyperparameters"])
    a = load_file(str(next((tmp_path / "straight").rglob("prompts.safetensors"))))
    b = load_file(str(next((tmp_path / "killed").rglob("prompts.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
