"""Each protocol end to end on fake benchmark trees with the tiny model; kill and resume; dry run; GPU dispatch."""
import csv
import json

import pytest
import yaml

from bench_fixtures import TINY, cli, fake_benchmarks
from promptclip.bench.protocols import write_manifest
from promptclip.bench.report import write_report
from promptclip.bench.sweep import plan_sweep, run_planned, run_sweep, status

TWO = "datasets=[DescribableTextures,EuroSAT]"
ZERO_SHOT_ONCE = "{preset: zeroshot, shots: [0], seeds: [1]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_benchmarks(tmp_path_factory.mktemp("data"), ["DescribableTextures", "EuroSAT", "ImageNet",
                                                             "ImageNetV2", "ImageNetA"])


def common(data, root):
    return [*TINY, f"data.root={data}", f"output.root={root}", f"output.cache_dir={root / 'cache'}"]


def table(root, name):
    with open(root / "report" / f"{name}.csv") as f:
        return {(r["method"], r["shots"], r["dataset"], r["metric"]): r for r in csv.DictReader(f)}


def evaluation_file(run_dir, name):
    """``evals/<dataset>-<subsample>-<fingerprint>.json``: exactly one per evaluation asked for."""
    (path,) = (run_dir / "evals").glob(f"{name}-*.json")
    return path


def accuracy(run_dir, evaluation=None):
    path = run_dir / "result.json" if evaluation is None else evaluation_file(run_dir, evaluation)
    return json.loads(path.read_text())["test"]["accuracy"]


@pytest.mark.slow
def test_few_shot_end_to_end(data, tmp_path, capsys):
    root = tmp_path / "runs"
    args = [*common(data, root), TWO, "shots=[2]", "seeds=[1,2]", "coop:train.epochs=1",
            f"methods=[{ZERO_SHOT_ONCE}, linear_probe, coop]"]
    assert cli("bench", "few_shot", *args, "--no-progress") == 0
    manifest = json.loads((root / "protocol-few_shot.json").read_text())
    assert len(manifest["runs"]) == 2 + 2 * 2 * 2  # zero-shot once per dataset; probe and CoOp × 2 seeds
    coop = root / "coop/tiny-vit_random/EuroSAT/all/shots_2/seed_2"
    assert "epochs: 1" in (coop / "config.yaml").read_text() and (coop / "prompts.safetensors").is_file()
    assert cli("report", str(root)) == 0
    rows = table(root, "few_shot")
    seeds = [accuracy(root / f"coop/tiny-vit_random/EuroSAT/all/shots_2/seed_{s}") for s in (1, 2)]
    assert float(rows[("coop", "2", "EuroSAT", "accuracy")]["mean"]) == pytest.approx(sum(seeds) / 2, abs=1e-4)
    assert rows[("zeroshot", "0", "DescribableTextures", "accuracy")]["seeds"] == "1"
    assert ("linear_probe", "2", "average", "accuracy") in rows
    capsys.readouterr()
    assert cli("bench", "few_shot", *args, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "10 done" in out and "done      coop/tiny-vit_random/EuroSAT/all/shots_2/seed_2" in out
    assert cli("bench", "few_shot", *args, "--dry-run", "--shard", "1/4") == 0
    shard_ids = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("done ")]
    assert shard_ids == [r["id"] for r in manifest["runs"]][1::4]


@pytest.mark.slow
def test_few_shot_sweeps_and_reports_the_methods_on_features(data, tmp_path):
    """The seven run in a sweep on the same draws as CoOp, are reported, and the report names their mode."""
    root = tmp_path / "runs"
    methods = ["clip_adapter", "tip_adapter", "tip_adapter_f", "taskres", "lp_plus_plus", "zs_lp", "gda"]
    fast = ["clip_adapter:train.epochs=1", "tip_adapter_f:train.epochs=1", "taskres:train.epochs=1",
            "zs_lp:train.epochs=1", "lp_plus_plus:text.iterations=5", "gda:text.views=2",
            "tip_adapter:text.augment_epoch=2", "tip_adapter_f:text.augment_epoch=2"]
    assert cli("bench", "few_shot", *common(data, root), "datasets=[EuroSAT]", "shots=[2]", "seeds=[1]",
               f"methods=[coop, {', '.join(methods)}]", "coop:train.epochs=1", *fast, "--no-progress") == 0
    assert cli("report", str(root)) == 0
    rows = table(root, "few_shot")
    for method in ["coop", *methods]:
        run_dir = root / f"{method}/tiny-vit_random/EuroSAT/all/shots_2/seed_1"
        assert float(rows[(method, "2", "EuroSAT", "accuracy")]["mean"]) == pytest.approx(accuracy(run_dir), abs=1e-4)
        assert (run_dir / "prompts.safetensors").is_file() and (run_dir / "identity.json").is_file(), method
    text = (root / "report" / "report.md").read_text()
    assert "Hyper-parameters (text.hparams): fixed for " + ", ".join(sorted(methods)) + "." in text


@pytest.mark.slow
def test_base_to_new_end_to_end(data, tmp_path):
    root = tmp_path / "runs"
    assert cli("bench", "base_to_new", *common(data, root), TWO, "shots=[2]", "seeds=[1]", "coop_b2n:train.epochs=1",
               f"methods=[{ZERO_SHOT_ONCE}, coop_b2n]", "--no-progress") == 0
    run_dir = root / "coop_b2n/tiny-vit_random/EuroSAT/base/shots_2/seed_1"
    base = json.loads((run_dir / "result.json").read_text())
    new = json.loads(evaluation_file(run_dir, "EuroSAT-new").read_text())
    assert (base["num_classes"], len(new["test"]["per_class_accuracy"])) == (2, 2)  # EuroSAT's 4 fake classes
    write_report(root)
    rows = table(root, "base_to_new")
    b, n = base["test"]["accuracy"], new["test"]["accuracy"]
    h = 2 * b * n / (b + n) if b + n else 0.0
    assert float(rows[("coop_b2n", "2", "EuroSAT", "H")]["mean"]) == pytest.approx(h, abs=1e-4)
    dtd = root / "coop_b2n/tiny-vit_random/DescribableTextures/base/shots_2/seed_1"
    b_avg = (b + accuracy(dtd)) / 2
    n_avg = (n + accuracy(dtd, "DescribableTextures-new")) / 2
    assert float(rows[("coop_b2n", "2", "average", "H")]["mean"]) == pytest.approx(2 * b_avg * n_avg / (b_avg + n_avg),
                                                                               abs=1e-4)


@pytest.mark.slow
def test_cross_dataset_then_domain_generalization_share_the_runs(data, tmp_path):
    root = tmp_path / "runs"
    args = [*common(data, root), "shots=[2]", "seeds=[1]", "coop_b2n:train.epochs=1",
            f"methods=[{ZERO_SHOT_ONCE}, coop_b2n]"]
    assert cli("bench", "cross_dataset", *args, "evaluations=[{datasets: [DescribableTextures, EuroSAT]}]",
               "--no-progress") == 0
    run_dir = root / "coop_b2n/tiny-vit_random/ImageNet/all/shots_2/seed_1"
    trained = (run_dir / "result.json").stat().st_mtime_ns
    assert cli("bench", "domain_generalization", *args, "evaluations=[{datasets: [ImageNetV2, ImageNetA]}]",
               "--no-progress") == 0
    assert (run_dir / "result.json").stat().st_mtime_ns == trained  # the same run, only new evaluations
    assert sorted(p.name.rsplit("-", 1)[0] for p in (run_dir / "evals").iterdir()) == \
        ["DescribableTextures-all", "EuroSAT-all", "ImageNetA-all", "ImageNetV2-all"]
    assert len(json.loads(evaluation_file(run_dir, "ImageNetA-all").read_text())["test"]["per_class_accuracy"]) == 3
    write_report(root)
    dg = table(root, "domain_generalization")
    assert float(dg[("coop_b2n", "2", "ImageNetV2", "accuracy")]["mean"]) == pytest.approx(
        accuracy(run_dir, "ImageNetV2-all"), abs=1e-4)
    assert float(table(root, "cross_dataset")[("zeroshot", "0", "ImageNet", "accuracy")]["mean"]) == pytest.approx(
        accuracy(root / "zeroshot/tiny-vit_random/ImageNet/all/shots_0/seed_1"), abs=1e-4)


class Killed(BaseException):
    """Stands for a kill in the middle of a run (like KeyboardInterrupt, not an error the sweep records and passes)."""


def sweep_plan(data, root):
    """A small few-shot sweep, planned as ``bench`` plans it."""
    return plan_sweep("few_shot", [*common(data, root), TWO, "shots=[1]", "seeds=[1,2]", "coop:train.epochs=2",
                                   f"methods=[{ZERO_SHOT_ONCE}, coop]"])


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_repeating_finished_runs(data, tmp_path):
    reference = tmp_path / "uninterrupted"
    run_planned(sweep_plan(data, reference), progress=False)  # the library writes the manifest
    assert len(json.loads((reference / "protocol-few_shot.json").read_text())["runs"]) == 6
    write_report(reference, plots=False)

    root = tmp_path / "killed"
    plan = sweep_plan(data, root)
    runs = plan.runs
    root.mkdir(parents=True)
    write_manifest(plan.protocol, runs, root, [])
    epochs = []

    def kill_at_third_epoch(epoch):
        epochs.append(epoch)
        if len(epochs) == 3:  # the first CoOp run has finished; the second has a checkpoint after epoch 0
            raise Killed()

    with pytest.raises(Killed):
        run_sweep(runs, progress=False, on_epoch_end=kill_at_third_epoch)
    assert [status(r) for r in runs] == ["done", "done", "done", "resume", "todo", "todo"]
    finished = {r.id: (r.run_dir / "result.json").stat().st_mtime_ns for r in runs if status(r) == "done"}
    outcome = run_sweep(runs, progress=False)
    assert sorted(outcome.skipped) == sorted(finished) and len(outcome.finished) == 3
    assert {i: (root / i / "result.json").stat().st_mtime_ns for i in finished} == finished
    metrics = (runs[3].run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [0, 1]  # resumed after epoch 0, not restarted
    write_report(root, plots=False)
    assert table(root, "few_shot") == table(reference, "few_shot")


@pytest.mark.slow
def test_runs_dispatched_to_worker_processes(data, tmp_path):
    """--gpus N: each run in its own process (here on the CPU); results equal the in-process ones."""
    root = tmp_path / "runs"
    args = [TWO, "methods=[zeroshot]", "shots=[0]", "seeds=[1]", "--no-progress"]
    assert cli("bench", "few_shot", *common(data, root), *args, "--gpus", "2") == 0
    parallel = {d: accuracy(root / f"zeroshot/tiny-vit_random/{d}/all/shots_0/seed_1")
                for d in ("DescribableTextures", "EuroSAT")}
    assert "test accuracy" in (root / "zeroshot/tiny-vit_random/EuroSAT/all/shots_0/seed_1/sweep.log").read_text()
    other = tmp_path / "sequential"
    assert cli("bench", "few_shot", *common(data, other), *args) == 0
    assert parallel == {d: accuracy(other / f"zeroshot/tiny-vit_random/{d}/all/shots_0/seed_1") for d in parallel}


@pytest.mark.slow
def test_kgcoop_and_promptsrc_run_in_both_protocols(data, tmp_path):
    """The new methods' presets through the protocols that list them (depth cut to the tiny towers' 2 layers)."""
    root = tmp_path / "runs"
    tiny_depth = ["text.text_depth=2", "text.vision_depth=2", "train.epochs=1", "train.max_steps_per_epoch=1"]
    for protocol, src in (("base_to_new", "promptsrc"), ("few_shot", "promptsrc_fewshot")):
        assert cli("bench", protocol, *common(data, root / protocol), TWO, "shots=[2]", "seeds=[1]",
                   f"methods=[kgcoop, {src}]", "kgcoop:train.epochs=1", "kgcoop:train.max_steps_per_epoch=1",
                   *[f"{src}:{o}" for o in tiny_depth], "--no-progress") == 0
        write_report(root / protocol)
        rows = table(root / protocol, protocol)
        metric = "H" if protocol == "base_to_new" else "accuracy"
        for method in ("kgcoop", src):
            for dataset in ("DescribableTextures", "EuroSAT"):
                assert rows[(method, "2", dataset, metric)]["mean"] != "", (protocol, method, dataset)
    fewshot = root / "few_shot/promptsrc_fewshot/tiny-vit_random"
    gpa = {name: yaml.safe_load((fewshot / name / "all/shots_2/seed_1/config.yaml").read_text())["callbacks"]["gpa"]
           for name in ("DescribableTextures", "EuroSAT")}
    assert gpa == {"DescribableTextures": {"mean": 45, "std": 5}, "EuroSAT": {"mean": 45, "std": 5}}
