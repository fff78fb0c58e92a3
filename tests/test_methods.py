"""The method seam: KgCoOp's and PromptSRC's losses against direct formulas, the frozen features a loss sees, GPA
(weights, averaged prompts after a run, state across kill-and-resume), callbacks and outside plugins."""
import json
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from promptclip.backbone import FrozenCLIP
from promptclip.config import build_config
from promptclip.engine.runner import build_model, prepare_data, run
from promptclip.errors import ConfigError
from promptclip.losses import ModelOutput, PrepareContext
from promptclip.methods.kgcoop import KgCoOpConfig, KnowledgeGuidance
from promptclip.methods.promptsrc import GPAConfig, PromptSRCConfig, SelfRegulation, gaussian_weights
from promptclip.runs import default_run_dir as run_dir_for

CPU = torch.device("cpu")
torch.manual_seed(0)


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1).float()


def config(root, tmp_path, *presets, **overrides):
    base = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 2,
            "train.epochs": 3, "train.batch_size": 8, "data.augment": "false", "train.device": "cpu",
            "output.root": tmp_path / "runs", "output.cache_dir": tmp_path / "cache"}
    base.update(overrides)
    return build_config(presets, [f"{k}={v}" for k, v in base.items()])


# ------------------------------------------------------------------------------------------------- KgCoOp
@pytest.mark.parametrize("conditioned", [False, True])
def test_kgcoop_loss_is_one_minus_mean_cosine(conditioned):
    zeroshot = unit(5, 8)
    text = unit(3, 5, 8) if conditioned else unit(5, 8)  # CoCoOp's per-image class features, or CoOp's
    loss = KnowledgeGuidance(KgCoOpConfig())
    loss.zeroshot = zeroshot
    out = ModelOutput(logits=torch.zeros(3, 5), image_features=unit(3, 8), text_features=text)
    rows = text.reshape(-1, 5, 8)
    cosines = [float(rows[b, c].double() @ zeroshot[c].double()) for b in range(len(rows)) for c in range(5)]
    assert torch.isclose(loss(out, torch.zeros(3, dtype=torch.long)), torch.tensor(1 - sum(cosines) / len(cosines)),
                         atol=1e-6)
    loss.zeroshot = zeroshot[:4]  # prepared on other classes
    with pytest.raises(ConfigError, match="prepare"):
        loss(out, torch.zeros(3, dtype=torch.long))


def test_kgcoop_zero_shot_features_are_the_templates_mean(tiny):
    context = PrepareContext(tiny, ["cat", "dog"], "a photo of a {}.", "OxfordPets", CPU, 1, lambda: None)
    loss = KnowledgeGuidance(KgCoOpConfig(templates=["a photo of a {}.", "art of the {}."]))
    loss.prepare(context)
    with torch.no_grad():
        per_template = [F.normalize(tiny.encode_text_ids(tiny.tokenize([t.format(c) for c in ("cat", "dog")])).float(),
                                    dim=-1) for t in ("a photo of a {}.", "art of the {}.")]
    assert torch.allclose(loss.zeroshot, F.normalize(sum(per_template) / 2, dim=-1), atol=1e-6)


# ---------------------------------------------------------------------------------------------- PromptSRC
def test_promptsrc_loss_against_its_three_formulas():
    b, c, e = 4, 6, 8
    text, zeroshot, image, frozen = unit(c, e), unit(c, e), unit(b, e), unit(b, e)
    scale = torch.tensor(20.0)
    logits = scale * image @ text.t()
    calls = []
    out = ModelOutput(logits=logits, image_features=image, text_features=text, logit_scale=scale,
                      frozen_source=lambda: calls.append(1) or frozen)
    loss = SelfRegulation(PromptSRCConfig(temperature=2.0))
    loss.zeroshot = zeroshot
    value = loss(out, torch.zeros(b, dtype=torch.long))
    l1_text = (text.double() - zeroshot.double()).abs().mean()
    l1_image = (image.double() - frozen.double()).abs().mean()
    p_zs = torch.softmax(scale.double() * frozen.double() @ zeroshot.double().t() / 2.0, dim=-1)
    log_p = torch.log_softmax(logits.double() / 2.0, dim=-1)
    kl = (p_zs * (p_zs.log() - log_p)).sum() * 4.0 / (b * c)  # KL(zero-shot ‖ prompted) · T² / (B·C)
    assert torch.isclose(value.double(), 25 * l1_text + 10 * l1_image + kl, atol=1e-5)
    assert calls == [1]  # the frozen image features were computed once


def test_frozen_features_and_zeroshot_logits_of_a_prompted_model(digits_root, tmp_path):
    cfg = config(digits_root, tmp_path, "promptsrc", **{"text.text_depth": 2, "text.vision_depth": 2})
    dataset = prepare_data(cfg)
    model = build_model(cfg, FrozenCLIP.load("tiny-vit"), dataset)
    images = torch.randn(3, 3, 32, 32)
    calls = []
    encode = model.backbone.encode_image

    def counting(x, prompts=None, adapters=None):
        calls.append(prompts is None)
        return encode(x, prompts, adapters)

    model.backbone.encode_image = counting
    out = model(images)
    assert calls == [False]  # forward runs the prompted tower only; frozen features are on demand
    zeroshot = unit(len(dataset.classnames), model.backbone.embed_dim)
    first, again = out.frozen_image_features, out.zeroshot_logits(zeroshot)
    assert calls == [False, True] and out.frozen_image_features is first and not first.requires_grad
    with torch.no_grad():
        expected = F.normalize(encode(images), dim=-1)
    assert torch.allclose(first, expected, atol=1e-6) and not torch.allclose(first, out.image_features, atol=1e-3)
    assert torch.allclose(again, model.backbone.logit_scale * expected @ zeroshot.t(), atol=1e-4)


# ---------------------------------------------------------------------------------------------------- GPA
def test_gpa_weights_are_the_normalised_gaussian():
    weights = gaussian_weights(20, 15.0, 1.0)
    pdf = [math.exp(-0.5 * (e - 15) ** 2) for e in range(1, 21)]
    assert torch.allclose(weights, torch.tensor([p / sum(pdf) for p in pdf], dtype=torch.float64), atol=1e-12)
    assert int(weights.argmax()) == 14 and math.isclose(float(weights.sum()), 1.0)
    with pytest.raises(ConfigError, match="callbacks.gpa"):
        gaussian_weights(5, 500.0, 0.1)


def _gpa_run(root, tmp_path, on_epoch_end=None, **extra):
    cfg = config(root, tmp_path, "promptsrc", **{"text.text_depth": 2, "text.vision_depth": 2, "optim.lr": 0.05,
                                                 "callbacks.gpa.mean": 2, "callbacks.gpa.std": 1, **extra})
    return cfg, run(cfg, progress=False, on_epoch_end=on_epoch_end)


@pytest.mark.slow
def test_gpa_saves_and_tests_the_gaussian_average_of_the_epochs_prompts(digits_root, tmp_path, monkeypatch):
    seen = []
    from promptclip.methods import promptsrc

    real = promptsrc.GaussianPromptAggregation.on_epoch_end

    def record(self, epoch, model):
        seen.append({k: p.detach().clone() for k, p in self.prompts(model).items()})
        real(self, epoch, model)

    monkeypatch.setattr(promptsrc.GaussianPromptAggregation, "on_epoch_end", record)
    cfg, result = _gpa_run(digits_root, tmp_path)
    weights = gaussian_weights(3, 2.0, 1.0)
    saved = load_file(str(run_dir_for(cfg) / "prompts.safetensors"))
    assert len(seen) == 3 and set(saved) == set(seen[0])
    for name, tensor in saved.items():
        expected = sum(float(w) * epoch[name].double() for w, epoch in zip(weights, seen)).float()
        assert torch.allclose(tensor, expected, atol=1e-6), name
        assert not torch.allclose(tensor, seen[-1][name], atol=1e-5), name  # not simply the last epoch
    assert "test" in result


@pytest.mark.slow
def test_gpa_state_survives_kill_and_resume(digits_root, tmp_path):
    _, straight = _gpa_run(digits_root, tmp_path / "straight")

    def kill_after_second(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _gpa_run(digits_root, tmp_path / "killed", kill_after_second)
    cfg, resumed = _gpa_run(digits_root, tmp_path / "killed")
    metrics = [json.loads(line)["epoch"] for line in (run_dir_for(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [0, 1, 2]  # epochs 0 and 1 came from the checkpoint, only epoch 2 was trained again
    assert resumed["test"]["accuracy"] == straight["test"]["accuracy"]
    a = load_file(str(next((tmp_path / "straight").rglob("prompts.safetensors"))))
    b = load_file(str(next((tmp_path / "killed").rglob("prompts.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------- config and plugins
def test_callbacks_are_validated_like_losses(digits_root, tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'gpa'"):
        config(digits_root, tmp_path, "coop", **{"callbacks.gpaa.mean": 3})
    with pytest.raises(ConfigError, match="callbacks.gpa.std"):
        config(digits_root, tmp_path, "promptsrc", **{"callbacks.gpa.std": 0})
    assert config(digits_root, tmp_path, "promptsrc_xd").callbacks["gpa"] == GPAConfig(mean=6, std=10)


@pytest.mark.slow
def test_an_outside_plugin_registers_without_editing_promptclip(tmp_path):
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from promptclip.losses import ExtraLoss, LossConfig
        from promptclip.registry import LOSSES

        @LOSSES.register("my_loss")
        class MyLoss(ExtraLoss):
            Config = LossConfig
    '''))
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('half-installed')\n")
    code = ("from promptclip.config import build_config; "
            "print(type(build_config(['coop'], ['losses.my_loss.weight=2']).losses['my_loss']).__name__)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PROMPTCLIP_PLUGINS": "my_plugin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "LossConfig", done.stderr
    env["PROMPTCLIP_PLUGINS"] = "broken_plugin"
    failed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "broken_plugin" in failed.stderr and "half-installed" in failed.stderr
    twice = ("from promptclip.plugins import load_plugins\nfor _ in range(2):\n    try:\n        load_plugins()\n"
             "    except Exception as err:\n        print(type(err).__name__)")
    again = subprocess.run([sys.executable, "-c", twice], env=env, capture_output=True, text=True)
    assert again.stdout.split() == ["PromptclipError", "PromptclipError"], again.stderr  # never half-filled silently


def test_a_run_made_with_an_unloaded_plugin_is_not_called_damaged(tmp_path):
    from promptclip.config import to_yaml
    from promptclip.engine.runner import read_run_config
    from promptclip.runs import CorruptFile

    text = to_yaml(build_config(["coop"], [])).replace("losses: {}", "losses:\n  ghost_loss: {weight: 1.0}")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(Exception) as caught:
        read_run_config(tmp_path)
    assert not isinstance(caught.value, CorruptFile)
    assert "ghost_loss" in str(caught.value) and "PROMPTCLIP_PLUGINS" in str(caught.value)
    assert "--replace" not in str(caught.value)  # the run is fine: never advise deleting it


@pytest.mark.slow
@pytest.mark.parametrize("presets,extra", [(("kgcoop",), {}), (("cocoop",), {"losses.kgcoop.weight": 8})])
def test_kgcoop_trains_on_coop_and_on_cocoop(digits_root, tmp_path, presets, extra):
    cfg = config(digits_root, tmp_path, *presets, **{"train.epochs": 1, "train.max_steps_per_epoch": 2,
                                                     "train.batch_size": 4, **extra})
    result = run(cfg, progress=False)
    (line,) = (run_dir_for(cfg) / "metrics.jsonl").read_text().splitlines()
    metrics = json.loads(line)
    assert 0 < metrics["kgcoop"] < 2 and math.isclose(metrics["loss"], metrics["ce"] + 8 * metrics["kgcoop"],
                                                      rel_tol=1e-4)
    assert result["test"]["num_images"] > 0


@pytest.mark.slow
def test_promptsrc_frozen_image_features_come_from_the_view_cache(digits_root, tmp_path, monkeypatch):
    """PromptSRC's image term reads the training views' frozen features: a warm cache runs no unprompted image
    tower, and gives the same prompts as the cold run that filled it."""
    from promptclip.engine import cache as cache_module

    calls = []
    real = cache_module.encode_loader
    monkeypatch.setattr(cache_module, "encode_loader", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = {"output.cache_dir": tmp_path / "cache", "data.augment": "true", "train.epochs": 2}
    cold, _ = _gpa_run(digits_root, tmp_path / "cold", **shared)
    assert len(calls) == 2  # one view per epoch
    warm, _ = _gpa_run(digits_root, tmp_path / "warm", **shared)
    assert len(calls) == 2  # both views were in the cache
    a, b = (load_file(str(run_dir_for(cfg) / "prompts.safetensors")) for cfg in (cold, warm))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cached_frozen_features_are_those_of_the_very_images_of_the_step(digits_root, tmp_path, monkeypatch):
    """The cached view features given to the loss match the unprompted tower on the step's own augmented images."""
    checked = []
    real = SelfRegulation.forward

    def check(self, output, labels):
        direct = output.frozen_source()  # the unprompted tower on this step's images
        checked.append(float((output.frozen_image_features - direct).abs().max()))
        return real(self, output, labels)

    monkeypatch.setattr(SelfRegulation, "forward", check)
    _gpa_run(digits_root, tmp_path, **{"data.augment": "true", "train.epochs": 2, "train.batch_size": 4,
                                       "train.max_steps_per_epoch": 3})
    assert len(checked) == 6 and max(checked) < 1e-5


@pytest.mark.parametrize("preset, key", [("kgcoop", "losses.kgcoop.templates"),
                                         ("promptsrc", "losses.promptsrc.templates")])
def test_template_lists_of_the_losses_are_checked_with_the_config(preset, key):
    with pytest.raises(ConfigError, match=re.escape(f"{key} need exactly one '{{}}'")):
        build_config([preset], [f"{key}=[a photo]"])
    assert build_config([preset], [f"{key}=['a photo of {{}}.']"]).losses[preset].templates == ["a photo of {}."]
