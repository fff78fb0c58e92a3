"""Values are checked when the config is built: choices, numbers, ranges, and CoOp's n_ctx against its init."""
import dataclasses
import math
from typing import Literal, Union, get_args, get_origin, get_type_hints

import pytest
import torch
import yaml

from promptclip.backbone import VisionPrompts
from promptclip.cli import main
from promptclip.config import Config, build_config, to_yaml
from promptclip.errors import BackboneError, ConfigError
from promptclip.learners import LEARNERS, LearnerConfig, build_learner
from promptclip.learners.coop import CoOpConfig
from promptclip.learners.ivlp import IVLP, IVLPConfig
from promptclip.learners.vpt import VPTConfig
from promptclip.learners.zeroshot import ZeroShotConfig
from promptclip.options.learners import LinearProbeConfig
from promptclip.registry import LOSSES


def refused(presets, override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(presets, [override])


def all_config_classes():
    """Every options dataclass: the run config's sections, each learner's and each loss's."""
    hints = get_type_hints(Config)
    sections = [hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])]
    return [Config, *sections, *(LEARNERS.config(n) for n in LEARNERS.names()),
            *(LOSSES.config(n) for n in LOSSES.names())]


def leaf_types(tp):
    return [t for a in get_args(tp) for t in leaf_types(a)] if get_origin(tp) in (Union, list) else [tp]


# ------------------------------------------------------------------------------------------------------- choices
@pytest.mark.parametrize("presets, override, message", [
    (["coop"], "optim.scheduler=cosin", r"optim.scheduler must be one of cosine, constant, not 'cosin'\. "
                                        r"Did you mean 'cosine'\?"),
    (["coop"], "optim.name=adamm", "optim.name must be one of sgd, adam, adamw, not 'adamm'. Did you mean 'adam'"),
    (["coop"], "train.precision=fp8", "train.precision must be one of fp32, bf16, fp16, auto, not 'fp8'"),
    (["coop"], "data.subsample=neww", "data.subsample must be one of all, base, new, not 'neww'. Did you mean 'new'"),
    (["coop"], "text.position=ende", "text.position must be one of end, middle, front, not 'ende'. Did you mean 'end'"),
    (["dapt"], "vision.placement=after_clss", "vision.placement must be one of after_cls, after_patches"),
    (["dapt"], "vision.init=unifrom", "vision.init must be one of normal, uniform, not 'unifrom'. Did you mean"),
    (["vfpt"], "vision.fourier=bth", "vision.fourier must be one of none, both, hidden, sequence.*'both'"),
    (["dapt"], "losses.dapt_inter.form=logg", "losses.dapt_inter.form must be one of reference, log.*'log'"),
    (["zeroshot"], "text.templates=ensembel",
     "text.templates must be one of dataset, ensemble, imagenet80.*'ensemble'"),
    (["zeroshot"], "text.templates=[a photo]", "text.templates need exactly one '{}'"),
    (["coop"], "optim.scheduler=true", "optim.scheduler must be one of cosine, constant, not True"),
])
def test_choices_are_checked_with_a_suggestion(presets, override, message):
    refused(presets, override, message)


def test_valid_choices_pass():
    cfg = build_config(["dapt"], ["optim.scheduler=constant", "optim.name=adamw", "train.precision=auto",
                                  "data.subsample=new", "text.position=front", "vision.placement=after_patches",
                                  "vision.fourier=hidden", "losses.dapt_inter.form=log"])
    assert (cfg.optim.scheduler, cfg.train.precision, cfg.vision.fourier) == ("constant", "auto", "hidden")
    assert build_config(["zeroshot"], ['text.templates=["a {}.", "b {}."]']).text.templates == ["a {}.", "b {}."]


def test_every_choice_default_is_valid_and_vpt_placements_match_the_backbone():
    for cls in all_config_classes():
        instance, hints = cls(), get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for tp in leaf_types(hints[f.name]):
                if get_origin(tp) is Literal and isinstance(getattr(instance, f.name), str):
                    assert getattr(instance, f.name) in get_args(tp), (cls.__name__, f.name)
    token = {0: torch.zeros(1, 4)}
    for placement in get_args(get_type_hints(VPTConfig)["placement"]):  # the backbone takes every choice ...
        assert VisionPrompts(token, placement=placement).placement == placement
    with pytest.raises(BackboneError, match="placement"):  # ... and nothing else
        VisionPrompts(token, placement="middle")


# ------------------------------------------------------------------------------------------------------ numbers
def test_numbers_parse_from_strings_in_overrides():
    cfg = build_config(["coop"], ["optim.lr=1e-3", "optim.warmup_lr=1E-5", "train.epochs=1e2", "text.n_ctx=8",
                                  "optim.weight_decay=5e-4", "optim.betas=[0.9, 9.99e-1]"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float) and cfg.optim.warmup_lr == 1e-5
    assert cfg.train.epochs == 100 and isinstance(cfg.train.epochs, int) and cfg.text.n_ctx == 8
    assert cfg.optim.betas == [0.9, 0.999] and cfg.optim.weight_decay == 5e-4


def test_numbers_parse_from_strings_in_yaml_files(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("inherit: coop\noptim: {lr: 2e-3}\ntrain: {batch_size: '8', epochs: 1e1}\n"
                    "losses: {dapt_inter: {weight: 1e-2}}\n")
    cfg = build_config([str(path)])
    assert (cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs) == (0.002, 8, 10)
    assert cfg.losses["dapt_inter"].weight == 0.01
    assert yaml.safe_load(to_yaml(cfg))["optim"]["lr"] == 0.002  # saved as a number


@pytest.mark.parametrize("override, message", [
    ("optim.lr=fast", "optim.lr must be a number > 0, got 'fast'"),
    ("train.epochs=2.5", r"train.epochs must be an integer >= 0, got 2\.5"),
    ("train.epochs=1e-1", r"train.epochs must be an integer >= 0, got 0\.1"),
    ("train.batch_size=true", "train.batch_size must be an integer >= 1, got True"),
])
def test_non_numbers_are_refused(override, message):
    refused(["coop"], override, message)


@pytest.mark.parametrize("value", ["nan", ".nan", ".NaN", "NaN", '"nan"', "inf", ".inf", "-.inf", "-inf",
                                   "'Infinity'", "1e999"])
def test_nan_and_inf_are_refused(value):
    refused(["coop"], f"optim.lr={value}", r"optim.lr must be a finite number > 0, got (nan|inf|-inf)\.")


@pytest.mark.parametrize("presets, override, message", [
    (["coop"], "optim.momentum=.inf", r"optim.momentum must be a finite number in \[0, 1\], got inf"),
    (["coop"], "optim.weight_decay=nan", "optim.weight_decay must be a finite number >= 0, got nan"),
    (["coop"], "optim.betas=[0.9, .nan]", r"optim.betas\[1\] must be a finite number in \[0, 1\), got nan"),
    (["coop"], "text.init_std=inf", "text.init_std must be a finite number > 0, got inf"),
    (["coop"], "train.epochs=.inf", "train.epochs must be an integer >= 0, got inf"),
    (["dapt"], "losses.dapt_inter.t=nan", "losses.dapt_inter.t must be a finite number > 0, got nan"),
    (["dapt"], "vision.dropout=nan", r"vision.dropout must be a finite number in \[0, 1\), got nan"),
    (["linear_probe"], "text.C=.inf", "text.C must be a finite number > 0, got inf"),
])
def test_every_float_field_refuses_non_finite_values(presets, override, message):
    refused(presets, override, message)


def test_non_finite_values_in_yaml_files_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inherit: dapt\nlosses: {dapt_intra: {weight: .nan}}\n")
    with pytest.raises(ConfigError, match="losses.dapt_intra.weight must be a finite number >= 0, got nan"):
        build_config([str(path)])


# ------------------------------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("presets, override, message", [
    (["coop"], "text.n_ctx=0", "text.n_ctx must be >= 1, got 0."),
    (["coop"], "train.batch_size=0", "train.batch_size must be >= 1, got 0."),
    (["coop"], "train.eval_batch_size=0", "train.eval_batch_size must be >= 1, got 0."),
    (["coop"], "train.epochs=-1", "train.epochs must be >= 0, got -1."),
    (["coop"], "train.accum_steps=0", "train.accum_steps must be >= 1, got 0."),
    (["coop"], "train.checkpoint_every=-1", "train.checkpoint_every must be >= 0, got -1."),
    (["coop"], "train.max_steps_per_epoch=-2", "train.max_steps_per_epoch must be >= 0, got -2."),
    (["coop"], "optim.lr=0", "optim.lr must be > 0, got 0."),
    (["coop"], "optim.lr=-1e-3", r"optim.lr must be > 0, got -0\.001\."),
    (["coop"], "optim.warmup_epochs=-1", "optim.warmup_epochs must be >= 0, got -1."),
    (["coop"], "optim.warmup_lr=0", "optim.warmup_lr must be > 0, got 0."),
    (["coop"], "optim.momentum=1.5", r"optim.momentum must be in \[0, 1\], got 1\.5\."),
    (["coop"], "optim.weight_decay=-1e-4", "optim.weight_decay must be >= 0"),
    (["coop"], "optim.betas=[0.9, 1.0]", r"optim.betas\[1\] must be in \[0, 1\), got 1\.0\."),
    (["coop"], "data.num_workers=-1", "data.num_workers must be >= 0, got -1."),
    (["coop"], "seed=-1", "seed must be >= 0, got -1."),
    (["coop"], "text.init_std=0", "text.init_std must be > 0, got 0."),
    (["cocoop"], "text.n_ctx=0", "text.n_ctx must be >= 1, got 0."),
    (["cocoop"], "text.chunk_size=-1", "text.chunk_size must be >= 0, got -1."),
    (["cocoop"], "text.memory_budget_mb=0", "text.memory_budget_mb must be > 0, got 0."),
    (["maple"], "text.depth=0", "text.depth must be >= 1, got 0."),
    (["ivlp"], "text.n_text=0", "text.n_text must be >= 1, got 0."),
    (["ivlp"], "text.n_vision=-1", "text.n_vision must be >= 0, got -1."),
    (["ivlp"], "text.vision_depth=0", "text.vision_depth must be >= 1, got 0."),
    (["dapt"], "vision.n_tokens=0", "vision.n_tokens must be >= 1, got 0."),
    (["dapt"], "vision.depth=0", "vision.depth must be >= 1, got 0."),
    (["dapt"], "vision.dropout=1", r"vision.dropout must be in \[0, 1\), got 1\."),
    (["vfpt"], "vision.fourier_fraction=1.5", r"vision.fourier_fraction must be in \[0, 1\], got 1\.5\."),
    (["dapt"], "losses.dapt_inter.weight=-0.1", r"losses.dapt_inter.weight must be >= 0, got -0\.1\."),
    (["dapt"], "losses.dapt_intra.weight=-1", "losses.dapt_intra.weight must be >= 0, got -1."),
    (["dapt"], "losses.dapt_inter.t=0", "losses.dapt_inter.t must be > 0, got 0."),
    (["linear_probe"], "text.C=0", "text.C must be > 0, got 0."),
    (["linear_probe"], "text.default_C=-1", "text.default_C must be > 0, got -1."),
    (["linear_probe"], "text.search_steps=-1", "text.search_steps must be >= 0, got -1."),
    (["linear_probe"], "text.max_iter=0", "text.max_iter must be >= 1, got 0."),
])
def test_ranges(presets, override, message):
    refused(presets, override, message)


def test_range_edges_and_shots_pass():
    cfg = build_config(["dapt"], ["train.epochs=0", "optim.momentum=1", "optim.weight_decay=0", "vision.dropout=0",
                                  "optim.warmup_epochs=0", "train.checkpoint_every=0", "data.shots=0",
                                  "vision.fourier_fraction=1", "losses.dapt_inter.weight=0"])
    assert cfg.train.epochs == 0 and cfg.optim.momentum == 1.0 and cfg.data.shots == 0
    assert build_config(["coop"], ["data.shots=-1"]).data.shots == -1  # 0 or negative: the whole training split
    assert build_config(["linear_probe"], ["text.C=null"]).text.C is None


def test_every_number_field_declares_its_range():
    """data.shots alone is unbounded (0 or negative means all); every default lies in its range."""
    for cls in all_config_classes():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not {int, float} & set(leaf_types(hints[f.name])) or (cls.__name__, f.name) == ("DataConfig", "shots"):
                continue
            bounds = f.metadata.get("bounds")
            assert bounds is not None, f"{cls.__name__}.{f.name} has no range"
            default = getattr(cls(), f.name)
            for value in default if isinstance(default, list) else [default]:
                assert value is None or (math.isfinite(value) and value in bounds), (cls.__name__, f.name)


# --------------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("args, message", [
    (["-c", "coop", "optim.scheduler=cosin"], "optim.scheduler must be one of cosine, constant, not 'cosin'. "
                                              "Did you mean 'cosine'?"),
    (["-c", "coop", "train.precision=fp8"], "train.precision must be one of fp32, bf16, fp16, auto, not 'fp8'."),
    (["-c", "coop", "text.n_ctx=0"], "text.n_ctx must be >= 1, got 0."),
    (["-c", "coop", "optim.lr=nan"], "optim.lr must be a finite number > 0, got nan."),
    (["-c", "cocoop", "text.n_ctx=6"], "text.n_ctx=6 context vectors start from the first 6 words of "
                                       "text.init='a photo of a', which has 4"),
])
def test_cli_config_refuses_bad_values_on_one_line(capsys, args, message):
    assert main(["config", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("promptclip: error: ")


def test_cli_config_prints_parsed_numbers(capsys):
    assert main(["config", "-c", "coop", "optim.lr=1e-3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 0.001


# ------------------------------------------------------------------------------------------- n_ctx versus init
def test_coop_n_ctx_defaults_from_init():
    assert CoOpConfig().n_ctx == 16 and build_config([], []).text.n_ctx == 16
    assert CoOpConfig(init="a photo of a").n_ctx is None  # resolved by the learner, which has the tokenizer
    assert build_config([], ["text.init=a photo of a"]).text.n_ctx is None


def test_coop_learner_records_the_learned_count_without_writing_into_the_config(tiny):
    cfg = build_config([], ["text.init=a photo of a"])
    learner = build_learner(cfg.text, tiny, ["dog"], "a photo of a {}.")
    assert learner.n_ctx == 4 and dataclasses.asdict(learner.cfg)["n_ctx"] == 4  # what prompts.json records
    assert cfg.text.n_ctx is None and yaml.safe_load(to_yaml(cfg))["text"]["n_ctx"] is None  # the run's own config


def test_coop_preset_with_an_init_learns_the_init(tiny):
    cfg = build_config(["coop"], ["text.init=a photo of a"])  # the preset leaves n_ctx to the init
    assert build_learner(cfg.text, tiny, ["dog"], "a photo of a {}.").cfg.n_ctx == 4 and cfg.text.n_ctx is None
    assert build_config(["coop"], []).text.n_ctx == 16


def test_coop_refuses_n_ctx_that_differs_from_the_init(tiny):
    cfg = build_config(["coop"], ["text.init=a photo of a", "text.n_ctx=16"])
    with pytest.raises(ConfigError, match=r"text.n_ctx=16, but CoOp learns one context vector per token of "
                                          r"text.init='a photo of a', which has 4: set text.n_ctx=4 \(or null\)"):
        build_learner(cfg.text, tiny, ["dog"], "a photo of a {}.")


def test_coop_class_specific_with_init_is_refused_at_build():
    refused(["coop_csc"], "text.init=a photo of a", "class_specific=false")


@pytest.mark.parametrize("preset", ["coop", "coop_b2n", "coop_csc", "dapt", "cocoop", "maple", "ivlp"])
def test_presets_record_the_context_they_learn(tiny, preset):
    overrides = {"maple": ["text.depth=2"], "ivlp": ["text.text_depth=2", "text.vision_depth=2"]}.get(preset, [])
    cfg = build_config([preset], overrides)
    learner = build_learner(cfg.text, tiny, ["dog", "cat"], "a photo of a {}.")
    count = cfg.text.n_text if preset == "ivlp" else cfg.text.n_ctx
    assert learner.ctx.shape[-2] == count


@pytest.mark.parametrize("preset, override, message", [
    ("cocoop", "text.n_ctx=6", "text.n_ctx=6 context vectors start from the first 6 words of text.init='a photo of "
                               "a', which has 4: set text.n_ctx to at most 4, or text.init=null"),
    ("maple", "text.n_ctx=5", "text.n_ctx=5 .* which has 4"),
    ("ivlp", "text.n_text=5", "text.n_text=5 .* which has 4: set text.n_text to at most 4"),
])
def test_deep_learners_refuse_more_context_than_init_words_at_build(preset, override, message):
    refused([preset], override, message)
    assert build_config([preset], [override, "text.init=null"]).text.init is None


def test_multi_token_init_word_names_the_option(tiny):
    with pytest.raises(ConfigError, match="text.n_text=1 .* each must be one token"):
        IVLP(IVLPConfig(n_text=1, init="zqxjvw photo", text_depth=2, vision_depth=2), tiny, ["dog"])


# ---------------------------------------------------------------------------------------------- training data
def test_uses_training_data_flag():
    assert LearnerConfig.uses_training_data and CoOpConfig.uses_training_data and LinearProbeConfig().uses_training_data
    assert not ZeroShotConfig.uses_training_data
    assert not build_config(["zeroshot"]).text.uses_training_data
    assert "uses_training_data" not in dataclasses.asdict(ZeroShotConfig())  # not a config key
