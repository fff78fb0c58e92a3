"""Protocol files: validation with clear errors (the run configs' typed validator), expansion into runs (schedules,
rules, scoped overrides), shards."""
import re

import pytest

from promptclip.bench.protocol_files import load_protocol, parse_protocol, split_overrides
from promptclip.bench.protocols import expand
from promptclip.bench.sweep import parse_shard, shard
from promptclip.errors import ConfigError

ELEVEN = ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft",
          "SUN397", "DescribableTextures", "EuroSAT", "UCF101"]


def runs_of(name, *overrides):
    protocol_keys, common, scoped = split_overrides(["data.root=/data", *overrides])
    return {r.id: r for r in expand(load_protocol(name, protocol_keys), common, scoped)}


@pytest.mark.slow
def test_few_shot_protocol_follows_the_reference_schedule():
    runs = runs_of("few_shot")
    assert len(runs) == 11 + 12 * 11 * 5 * 3  # zero-shot once per dataset; 12 methods × 5 shots × 3 seeds
    epochs = {k: runs[f"coop/ViT-B-16_openai/DescribableTextures/all/shots_{k}/seed_1"].config.train.epochs
              for k in (1, 2, 4, 8, 16)}
    assert epochs == {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
    assert runs["coop/ViT-B-16_openai/ImageNet/all/shots_16/seed_3"].config.train.epochs == 50
    assert {r.key.shots for r in runs.values() if r.key.method == "zeroshot"} == {0}
    assert {r.key.seed for r in runs.values() if r.key.method == "zeroshot"} == {1}
    eurosat = runs["dapt/ViT-B-16_openai/EuroSAT/all/shots_2/seed_1"].config  # DAPT's lr / β_v / β_t, then epochs
    assert (eurosat.optim.lr, eurosat.losses["dapt_intra"].weight, eurosat.losses["dapt_inter"].weight) == (20, 100, 10)
    assert eurosat.train.epochs == 100
    gpa = {name: runs[f"promptsrc_fewshot/ViT-B-16_openai/{name}/all/shots_16/seed_1"].config.callbacks["gpa"]
           for name in ("ImageNet", "EuroSAT")}  # PromptSRC's two Gaussians, by dataset
    assert (gpa["ImageNet"].mean, gpa["ImageNet"].std, gpa["EuroSAT"].mean, gpa["EuroSAT"].std) == (30, 30, 45, 5)
    assert runs["kgcoop/ViT-B-16_openai/EuroSAT/all/shots_1/seed_1"].config.losses["kgcoop"].weight == 8
    probe = runs["linear_probe/ViT-B-16_openai/Caltech101/all/shots_4/seed_2"].config
    assert probe.text.name == "linear_probe" and probe.data.shots == 4 and probe.seed == 2
    assert str(probe.output.dir).endswith("runs/few_shot/linear_probe/ViT-B-16_openai/Caltech101/all/shots_4/seed_2")


FEATURE_METHODS = ("clip_adapter", "tip_adapter", "tip_adapter_f", "taskres", "lp_plus_plus", "zs_lp", "gda")


@pytest.mark.slow
def test_few_shot_protocol_runs_the_methods_on_features_with_fixed_hyperparameters():
    runs = runs_of("few_shot")

    def cfg(method, dataset="DescribableTextures", shots=16):
        return runs[f"{method}/ViT-B-16_openai/{dataset}/all/shots_{shots}/seed_1"].config

    assert {cfg(m).text.hparams for m in FEATURE_METHODS} == {"fixed"}  # the protocol's `hparams: fixed`
    assert {k: cfg("clip_adapter", shots=k).train.epochs for k in (1, 2, 16)} == {1: 50, 2: 100, 16: 200}
    assert cfg("clip_adapter", "ImageNet").train.epochs == 50
    assert {k: cfg("taskres", shots=k).train.epochs for k in (4, 8)} == {4: 100, 8: 200}
    assert (cfg("taskres", "ImageNet").optim.lr, cfg("taskres").optim.lr) == (0.0002, 0.002)
    assert (cfg("tip_adapter_f", "EuroSAT").train.epochs, cfg("tip_adapter_f").train.epochs) == (100, 20)
    assert cfg("tip_adapter").train.epochs == cfg("gda").train.epochs == cfg("lp_plus_plus").train.epochs == 0
    searched = runs_of("few_shot", "hparams=val", "datasets=[EuroSAT]", "shots=[1]", "seeds=[1]")
    modes = {r.key.method: getattr(r.config.text, "hparams", None) for r in searched.values()}
    assert {m: modes[m] for m in FEATURE_METHODS} == dict.fromkeys(FEATURE_METHODS, "val")
    assert modes["coop"] is None  # a method without the option is untouched


@pytest.mark.slow
def test_base_to_new_protocol_trains_on_base_and_evaluates_new():
    runs = runs_of("base_to_new")
    coop = runs["coop_b2n/ViT-B-16_openai/ImageNet/base/shots_16/seed_1"]
    assert coop.config.train.epochs == 50 and coop.config.text.n_ctx == 4
    assert runs["coop_b2n/ViT-B-16_openai/DescribableTextures/base/shots_16/seed_2"].config.train.epochs == 200
    assert all(r.config.data.subsample == "base" for r in runs.values())
    evaluation = coop.evaluations[0]
    assert (evaluation.dataset, evaluation.subsample) == ("ImageNet", "new")
    assert evaluation.overrides == ["data.subsample=new"]
    assert evaluation.file.parent == coop.run_dir / "evals"
    assert re.fullmatch(r"ImageNet-new-[0-9a-f]{8}\.json", evaluation.file.name)


def test_transfer_protocols_share_their_runs():
    xd, dg = runs_of("cross_dataset"), runs_of("domain_generalization")
    assert set(xd) == set(dg)
    for run_id in xd:
        assert xd[run_id].config == dg[run_id].config
    assert [e.dataset for e in xd["cocoop/ViT-B-16_openai/ImageNet/all/shots_16/seed_1"].evaluations] == ELEVEN[1:]
    assert [e.dataset for e in dg["cocoop/ViT-B-16_openai/ImageNet/all/shots_16/seed_1"].evaluations] == \
        ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
    assert "data.name=\"ImageNetA\"" in dg["cocoop/ViT-B-16_openai/ImageNet/all/shots_16/seed_1"].evaluations[2] \
        .overrides


def test_overrides_change_the_protocol_every_run_or_one_method():
    runs = runs_of("few_shot", "datasets=[EuroSAT]", "shots=[1]", "seeds=[7]", "optim.weight_decay=0.1",
                   "coop:train.epochs=3", "methods=[coop, linear_probe]")
    coop_id, probe_id = (f"{m}/ViT-B-16_openai/EuroSAT/all/shots_1/seed_7" for m in ("coop", "linear_probe"))
    assert sorted(runs) == [coop_id, probe_id]
    coop, probe = runs[coop_id].config, runs[probe_id].config
    assert coop.train.epochs == 3 and probe.train.epochs == 0  # the scoped override beats the shots rule
    assert coop.optim.weight_decay == probe.optim.weight_decay == 0.1
    assert coop.data.root == "/data"


def test_dataset_entries_with_their_own_data_settings(tmp_path):
    protocol = parse_protocol({
        "kind": "few_shot", "shots": [2], "methods": ["coop", {"preset": "coop", "name": "coop_lr", "config":
                                                               {"optim.lr": 0.5}}],
        "datasets": ["EuroSAT", {"name": "mine", "data": {"name": "imagefolder", "root": str(tmp_path)}}],
        "config": {"output.root": str(tmp_path / "runs")}}, "mine", "inline")
    runs = {r.id: r for r in expand(protocol)}
    mine = runs["coop_lr/ViT-B-16_openai/mine/all/shots_2/seed_1"]
    assert (mine.config.data.name, mine.config.data.root, mine.config.optim.lr) == ("imagefolder", str(tmp_path), 0.5)
    assert mine.config.method == "coop_lr"
    assert runs["coop/ViT-B-16_openai/mine/all/shots_2/seed_1"].config.optim.lr == 0.002
    assert mine.run_dir == tmp_path / "runs" / "coop_lr" / "ViT-B-16_openai" / "mine" / "all" / "shots_2" / "seed_1"


@pytest.mark.parametrize("change, message", [
    ({"kind": "fewshot"}, "bad.yaml: kind must be one of few_shot, base_to_new, cross_dataset, "
                          "domain_generalization, not 'fewshot'. Did you mean 'few_shot'?"),
    ({"method": ["coop"]}, "Unknown config key 'method' of a protocol. Did you mean 'methods'?"),
    ({"shots": [1, "two"]}, "shots[1] must be an integer, got 'two'"),
    ({"shots": []}, "shots: must not be an empty list"),
    ({"seeds": [-1]}, "seeds[0] must be >= 0"),
    ({"config": {"seed": 3}}, "seed is set by the protocol: use seeds instead"),
    ({"config": {"data.shots": 3}}, "data.shots is set by the protocol: use shots instead"),
    ({"rules": [{"when": {"shot": 1}, "set": {"train.epochs": 1}}]},
     "Unknown config key 'rules[0].when.shot'. Did you mean 'rules[0].when.shots'"),
    ({"rules": [{"when": {"shots": 1}}]}, "a rule needs `set`"),
    ({"evaluations": [{"subsample": "newer"}]}, "evaluations[0].subsample must be one of all, base, new"),
    ({"methods": [{"preset": "coop", "shot": [1]}]}, "Unknown config key 'methods[0].shot'. Did you mean "
                                                     "'methods[0].shots'"),
    ({"datasets": [{"data": {"root": "/x"}}]}, "datasets[0]: a dataset needs a name"),
    ({"kind": None}, "bad.yaml: `kind` is missing"),
    ({"methods": [{"name": "x"}]}, "a method needs a preset"),
    ({"config": {"optim.lrr": 1}}, "Unknown config key 'optim.lrr'"),
    ({"methods": ["coop", "coop"]}, "two methods resolve to the run folder coop/ViT-B-16_openai/EuroSAT"),
    ({"methods": ["linear_probe"], "evaluations": [{"subsample": "new"}]}, "linear_probe classifies its training"),
    ({"methods": ["coop_csc"], "evaluations": [{"subsample": "new"}]}, "coop classifies its training classes only"),
])
def test_protocol_errors_name_the_problem(change, message):
    data = {"kind": "few_shot", "datasets": ["EuroSAT"], "methods": ["coop"], **change}
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand(parse_protocol(data, "bad", "bad.yaml"))


@pytest.mark.slow
def test_command_line_errors():
    with pytest.raises(ConfigError, match="seed is set by the protocol; use seeds"):
        split_overrides(["seed=3"])
    protocol_keys, common, scoped = split_overrides(["cop:train.epochs=1"])
    with pytest.raises(ConfigError, match="Did you mean 'coop'"):
        expand(load_protocol("few_shot"), common, scoped)
    with pytest.raises(ConfigError, match="No protocol file or protocol named 'fewshot'. Did you mean 'few_shot'"):
        load_protocol("fewshot")
    with pytest.raises(ConfigError, match="0 <= i < n"):
        parse_shard("4/4")


@pytest.mark.slow
def test_shards_are_disjoint_and_cover_the_sweep():
    runs = list(runs_of("base_to_new").values())
    parts = [shard(runs, *parse_shard(f"{i}/3")) for i in range(3)]
    ids = [r.id for part in parts for r in part]
    assert sorted(ids) == sorted(r.id for r in runs) and len(ids) == len(set(ids))
    assert [r.id for r in shard(runs, 1, 3)] == [r.id for r in runs_of("base_to_new").values()][1::3]
