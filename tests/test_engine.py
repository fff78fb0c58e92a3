"""The training engine end to end on digits with the tiny CLIP: learning, saving, resuming, bad input."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score

from promptclip.config import OptimConfig, build_config
from promptclip.engine import evaluate_run, load_prompts, run
from promptclip.runs import default_run_dir as run_dir_for
from promptclip.engine.evaluation import metrics_from_predictions, predict_loader
from promptclip.engine.trainer import lr_at
from promptclip.errors import BackboneError, DataError
from promptclip.data.loaders import eval_loader, transform_for
from promptclip.engine.runner import prepare_data


def config(root, tmp_path, *presets, **overrides):
    base = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 4,
            "train.epochs": 2, "train.batch_size": 8, "data.augment": "false", "optim.name": "adamw",
            "optim.lr": 0.01, "optim.weight_decay": 0, "train.device": "cpu", "output.root": tmp_path / "runs",
            "output.cache_dir": tmp_path / "cache"}
    if presets != ("zeroshot",):
        base["text.n_ctx"] = 4
    base.update(overrides)
    return build_config(presets or ("coop",), [f"{k}={v}" for k, v in base.items()])


@pytest.mark.slow
def test_coop_beats_zero_shot_on_digits(digits_root, tmp_path):
    """The demo's setting: 16 shots on the random tiny-vit-wide, whose frozen features a linear probe reads at ~46%."""
    wide = {"model.name": "tiny-vit-wide", "optim.lr": 0.002}
    zero = run(config(digits_root, tmp_path, "zeroshot", **wide, **{"train.epochs": 0}), progress=False)
    shared, csc = (run(config(digits_root, tmp_path, preset, **wide, **{"data.shots": 16, "train.epochs": 40}),
                       progress=False) for preset in ("coop", "coop_csc"))
    assert shared["test"]["num_images"] == zero["test"]["num_images"] > 500
    # chance is 10%: its standard deviation over ~540 images is ~1.3 points, so 15 points is far beyond chance
    assert shared["test"]["accuracy"] > zero["test"]["accuracy"] + 15
    assert csc["test"]["accuracy"] > zero["test"]["accuracy"] + 15


@pytest.mark.slow
def test_run_folder_contents_and_skip_when_finished(digits_root, tmp_path):
    cfg = config(digits_root, tmp_path)
    result = run(cfg, progress=False)
    folder = run_dir_for(cfg)
    for name in ("config.yaml", "metrics.jsonl", "result.json", "prompts.safetensors", "prompts.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "checkpoint").exists()
    meta = json.loads((folder / "prompts.json").read_text())
    assert meta["classnames"] == ["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"]
    assert meta["backbone"]["model"] == "tiny-vit" and meta["shapes"] == {"text.ctx": [4, 64]}
    assert {"torch", "open_clip", "promptclip"} <= set(meta["versions"])
    assert [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert result["num_train_images"] == 40 and len(result["test"]["per_class_accuracy"]) == 10
    mtime = (folder / "result.json").stat().st_mtime_ns
    assert run(cfg, progress=False) == result
    assert (folder / "result.json").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_saved_prompts_give_identical_logits(digits_root, tmp_path):
    cfg = config(digits_root, tmp_path, **{"train.evaluate": "false"})
    run(cfg, progress=False)
    folder = run_dir_for(cfg)
    model = load_prompts(folder)
    again = load_prompts(folder)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images).logits, again(images).logits, rtol=0, atol=0)


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_result(digits_root, tmp_path):
    full = config(digits_root, tmp_path, **{"train.epochs": 4, "output.dir": tmp_path / "full",
                                            "data.augment": "true"})
    cut = config(digits_root, tmp_path, **{"train.epochs": 4, "output.dir": tmp_path / "cut", "data.augment": "true"})
    expected = run(full, progress=False)

    def stop_after_second_epoch(epoch):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(cut, progress=False, on_epoch_end=stop_after_second_epoch)
    assert (tmp_path / "cut" / "checkpoint" / "last.pt").is_file()
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = run(cut, progress=False)
    assert resumed["test"] == expected["test"]
    assert resumed["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3]
    a, b = load_prompts(tmp_path / "full"), load_prompts(tmp_path / "cut")
    torch.testing.assert_close(a.text.ctx, b.text.ctx)


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch(digits_root, tmp_path):
    common = {"train.epochs": 1, "optim.name": "sgd", "optim.lr": 0.5, "optim.warmup_epochs": 0,
              "optim.momentum": 0, "optim.weight_decay": 0, "train.evaluate": "false"}
    run(config(digits_root, tmp_path, **common, **{"train.batch_size": 8, "output.dir": tmp_path / "a"}),
        progress=False)
    run(config(digits_root, tmp_path, **common, **{"train.batch_size": 4, "train.accum_steps": 2,
                                                   "output.dir": tmp_path / "b"}), progress=False)
    a, b = load_prompts(tmp_path / "a").text.ctx, load_prompts(tmp_path / "b").text.ctx
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)  # summation order differs, nothing else


@pytest.mark.slow
def test_bf16_autocast_keeps_prompts_fp32(digits_root, tmp_path):
    result = run(config(digits_root, tmp_path, **{"train.precision": "bf16", "train.epochs": 1}), progress=False)
    assert np.isfinite(result["train_loss"])
    assert load_prompts(run_dir_for(config(digits_root, tmp_path, **{"train.precision": "bf16"}))).text.ctx.dtype \
        == torch.float32


def test_reference_learning_rate_schedule():
    cfg = OptimConfig(lr=0.002, warmup_epochs=1, warmup_lr=1e-5)
    lrs = [lr_at(cfg, e, 10) for e in range(10)]
    assert lrs[0] == 1e-5 and lrs[1] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] > 0


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = torch.tensor(rng.integers(0, 5, 200))
    preds = torch.where(torch.rand(200) < 0.6, labels, torch.tensor(rng.integers(0, 5, 200)))
    m = metrics_from_predictions(preds, labels, 5)
    assert m["accuracy"] == pytest.approx(100 * float((preds == labels).float().mean()))
    assert m["macro_f1"] == pytest.approx(100 * f1_score(labels, preds, average="macro"))
    for c in range(5):
        assert m["per_class_accuracy"][c] == pytest.approx(100 * float((preds[labels == c] == c).float().mean()),
                                                           abs=1e-3)


@pytest.mark.slow
def test_evaluating_on_new_classes(digits_root, tmp_path):
    cfg = config(digits_root, tmp_path, **{"data.subsample": "base"})
    result = run(cfg, progress=False)
    assert result["num_classes"] == 5
    new = evaluate_run(run_dir_for(cfg), ["data.subsample=new"], progress=False)
    assert new["test"]["num_images"] > 0 and len(new["test"]["per_class_accuracy"]) == 5
    (saved,) = (run_dir_for(cfg) / "evals").glob(f"{digits_root.name}-*-new-*.json")
    assert json.loads(saved.read_text())["test"] == new["test"]
    again = evaluate_run(run_dir_for(cfg), ["data.subsample=new"], progress=False)
    assert again["cached"] and again["test"] == new["test"]


def test_more_shots_than_a_class_has_uses_all_and_warns(tmp_path, caplog):
    for cls, n in (("a", 2), ("b", 5)):
        for split in ("train", "test"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "data" / split / cls / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="promptclip"):
        ds = prepare_data(config(tmp_path / "data", tmp_path, **{"data.shots": 4}))
    assert sorted(i.label for i in ds.train) == [0, 0, 1, 1, 1, 1]
    assert "1 of the 2 classes in use have fewer training images than the 4 shots ('a' has 2)" in caplog.text


def test_corrupt_image_is_named(digits_root, tmp_path):
    root = tmp_path / "digits"
    shutil.copytree(digits_root, root)
    bad = sorted((root / "test" / "one").iterdir())[0]
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=bad.name):
        run(config(root, tmp_path, **{"train.epochs": 0}), progress=False)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_data_folder(tmp_path, make):
    root = tmp_path / "data"
    if make == "empty":
        root.mkdir()
    with pytest.raises(DataError, match=str(root)):
        run(config(root, tmp_path, **{"train.epochs": 0}), progress=False)


@pytest.mark.slow
def test_prompts_from_another_backbone_are_refused(digits_root, tmp_path):
    from promptclip.backbone import FrozenCLIP

    cfg = config(digits_root, tmp_path, **{"train.epochs": 1})
    run(cfg, progress=False)
    with pytest.raises(BackboneError, match="tiny-vit-wide.*model.name=tiny-vit|tiny-vit.*tiny-vit-wide"):
        load_prompts(run_dir_for(cfg), FrozenCLIP.load("tiny-vit-wide"))


def test_evaluation_computes_class_features_once(digits_root, tmp_path, tiny):
    cfg = config(digits_root, tmp_path)
    ds = prepare_data(cfg)
    from promptclip.engine.runner import build_model

    model = build_model(cfg, tiny, ds)
    calls = []
    original = model.text.text_features
    model.text.text_features = lambda *a, **k: calls.append(1) or original(*a, **k)
    loader = eval_loader(ds.test[:64], transform_for(tiny, False), 16)
    logits, labels = predict_loader(model, loader, torch.device("cpu"), progress=False)
    assert logits.shape == (64, 10) and len(calls) == 1


@pytest.mark.slow
def test_resnet_backbone_runs_text_learners(digits_root, tmp_path):
    result = run(config(digits_root, tmp_path, **{"model.name": "tiny-rn", "train.epochs": 1}), progress=False)
    assert result["model"] == "tiny-rn" and result["test"]["num_images"] > 0


def test_a_method_without_parameters_only_evaluates(digits_root, tmp_path):
    """A sweep-wide train.epochs must not break zero-shot runs in the same sweep."""
    result = run(config(digits_root, tmp_path, "zeroshot", **{"train.epochs": 3}), progress=False)
    assert result["num_parameters"] == 0 and result["train_loss"] is None and result["test"]["num_images"] > 500
