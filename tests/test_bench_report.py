"""``report`` against tables computed by hand from hand-written result files."""
import csv
import json
import math

import pytest

from bench_fixtures import cli
from promptclip.bench import report as report_module
from promptclip.bench.report import write_report


def write_result(root, run_id, method, dataset, subsample, shots, seed, accuracy, model="ViT-B-16",
                 pretrained="openai", evals=None):
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "method": method, "dataset": dataset, "subsample": subsample, "shots": shots, "seed": seed, "model": model,
        "pretrained": pretrained, "num_classes": 10, "test": {"accuracy": accuracy, "num_images": 100}}))
    for (label, sub), acc in (evals or {}).items():
        (folder / "evals").mkdir(exist_ok=True)
        (folder / "evals" / f"{label}-{sub}-0000.json").write_text(
            json.dumps({"label": label, "subsample": sub, "test": {"accuracy": acc}}))


def write_manifest(root, name, kind, runs):
    """runs: (method, dataset, subsample, shots, seed, [evaluations (dataset, subsample)])."""
    entries = []
    for method, dataset, subsample, shots, seed, evaluations in runs:
        run_id = f"{method}/{dataset}/{subsample}/shots_{shots}/seed_{seed}"
        entries.append({"id": run_id, "method": method, "dataset": dataset, "subsample": subsample, "shots": shots,
                        "seed": seed, "model": "ViT-B-16", "pretrained": "openai", "dir": run_id,
                        "evaluations": [{"dataset": d, "subsample": s, "file": f"{run_id}/evals/{d}-{s}-0000.json"}
                                        for d, s in evaluations]})
    (root / f"protocol-{name}.json").write_text(json.dumps({"protocol": name, "kind": kind, "runs": entries}))


def rows(path):
    with open(path) as f:
        return {(r["method"], r["shots"], r["dataset"], r["metric"]): r for r in csv.DictReader(f)}


@pytest.fixture
def few_shot_dir(tmp_path):
    """coop, 16 shots, seeds 1-3 on DTD (60, 70, 80) and EuroSAT (50, 40, seed 3 missing); zero-shot once."""
    plan = [("coop", d, "all", 16, s, []) for d in ("DescribableTextures", "EuroSAT") for s in (1, 2, 3)]
    plan += [("zeroshot", d, "all", 0, 1, []) for d in ("DescribableTextures", "EuroSAT")]
    write_manifest(tmp_path, "fs", "few_shot", plan)
    for seed, acc in zip((1, 2, 3), (60.0, 70.0, 80.0)):
        write_result(tmp_path, f"coop/DescribableTextures/all/shots_16/seed_{seed}", "coop", "DescribableTextures",
                     "all", 16, seed, acc)
    for seed, acc in zip((1, 2), (50.0, 40.0)):
        write_result(tmp_path, f"coop/EuroSAT/all/shots_16/seed_{seed}", "coop", "EuroSAT", "all", 16, seed, acc)
    for dataset, acc in (("DescribableTextures", 44.0), ("EuroSAT", 48.0)):
        write_result(tmp_path, f"zeroshot/{dataset}/all/shots_0/seed_1", "zeroshot", dataset, "all", 0, 1, acc)
    return tmp_path


@pytest.mark.slow
def test_few_shot_table_by_hand(few_shot_dir):
    report = write_report(few_shot_dir)
    table = rows(few_shot_dir / "report" / "fs.csv")
    dtd = table[("coop", "16", "DescribableTextures", "accuracy")]
    assert float(dtd["mean"]) == pytest.approx(70.0)
    assert float(dtd["std"]) == pytest.approx(math.sqrt(200 / 3), abs=1e-4)  # population std of 60, 70, 80
    eurosat = table[("coop", "16", "EuroSAT", "accuracy")]
    assert (float(eurosat["mean"]), float(eurosat["std"]), eurosat["seeds"], eurosat["planned_seeds"]) == \
        (45.0, 5.0, "2", "3")
    assert float(table[("coop", "16", "average", "accuracy")]["mean"]) == pytest.approx((70.0 + 45.0) / 2)
    assert float(table[("zeroshot", "0", "average", "accuracy")]["mean"]) == pytest.approx(46.0)
    text = report.markdown.read_text()
    assert "| coop | 16 | 70.00 ± 8.16 (n=3) | 45.00 ± 5.00 (n=2)† | 57.50† | — | — |" in text
    assert report.missing == ["coop/EuroSAT/all/shots_16/seed_3: not finished"]
    assert "- coop/EuroSAT/all/shots_16/seed_3: not finished" in text and "Runs finished: 7 of 8." in text
    assert [p.name for p in report.plots] == ["fs-per_dataset.png", "fs-average.png"]
    assert all(p.stat().st_size > 1000 for p in report.plots)


def test_base_to_new_h_from_averaged_base_and_new(tmp_path):
    """DTD B (80, 90) N (40, 50); EuroSAT B (60) N (70), its seed 2 lacks the new evaluation."""
    new = [("DescribableTextures", "new")]
    plan = [("coop", "DescribableTextures", "base", 16, s, new) for s in (1, 2)]
    plan += [("coop", "EuroSAT", "base", 16, s, [("EuroSAT", "new")]) for s in (1, 2)]
    write_manifest(tmp_path, "b2n", "base_to_new", plan)
    for seed, b, n in ((1, 80.0, 40.0), (2, 90.0, 50.0)):
        write_result(tmp_path, f"coop/DescribableTextures/base/shots_16/seed_{seed}", "coop", "DescribableTextures",
                     "base", 16, seed, b, evals={("DescribableTextures", "new"): n})
    write_result(tmp_path, "coop/EuroSAT/base/shots_16/seed_1", "coop", "EuroSAT", "base", 16, 1, 60.0,
                 evals={("EuroSAT", "new"): 70.0})
    write_result(tmp_path, "coop/EuroSAT/base/shots_16/seed_2", "coop", "EuroSAT", "base", 16, 2, 62.0)
    report = write_report(tmp_path, tmp_path / "out")
    table = rows(tmp_path / "out" / "b2n.csv")
    h = lambda b, n: 2 * b * n / (b + n)  # noqa: E731
    assert float(table[("coop", "16", "DescribableTextures", "H")]["mean"]) == pytest.approx(h(85, 45), abs=1e-4)
    assert float(table[("coop", "16", "EuroSAT", "base")]["mean"]) == pytest.approx(61.0)
    assert float(table[("coop", "16", "EuroSAT", "new")]["mean"]) == pytest.approx(70.0)
    b, n = (85 + 61) / 2, (45 + 70) / 2
    assert float(table[("coop", "16", "average", "base")]["mean"]) == pytest.approx(b)
    assert float(table[("coop", "16", "average", "H")]["mean"]) == pytest.approx(h(b, n), abs=1e-4)
    assert h(b, n) != pytest.approx((h(85, 45) + h(61, 70)) / 2, abs=1e-2)  # not the mean of per-dataset H
    # CoOp's DTD numbers: 79.44 / 41.18 / 54.24
    dtd_h = table[("coop", "16", "DescribableTextures", "H")]
    assert float(dtd_h["published"]) == 54.24 and dtd_h["published_status"].startswith("published")
    assert float(dtd_h["difference"]) == pytest.approx(h(85, 45) - 54.24, abs=1e-4)
    text = report.markdown.read_text()
    assert "| coop | 16 | DescribableTextures | 85.00 ± 5.00 (n=2) | 45.00 ± 5.00 (n=2) | 58.85 | " \
        "79.44 / 41.18 / 54.24" in text
    assert report.missing == ["coop/EuroSAT/base/shots_16/seed_2: evaluation on EuroSAT (new classes) missing"]
    assert "| coop | 16 | EuroSAT | 61.00 ± 1.00 (n=2) | 70.00 ± — (n=1)† |" in text


def test_transfer_table_and_confirmed_published_numbers(tmp_path):
    targets = [("ImageNetV2", "all"), ("ImageNetA", "all")]
    write_manifest(tmp_path, "dg", "domain_generalization",
                   [("coop", "ImageNet", "all", 16, s, targets) for s in (1, 2)])
    for seed, (src, v2, a) in zip((1, 2), ((71.0, 64.0, 49.0), (72.0, 65.0, 50.0))):
        write_result(tmp_path, f"coop/ImageNet/all/shots_16/seed_{seed}", "coop", "ImageNet", "all", 16, seed, src,
                     evals={("ImageNetV2", "all"): v2, ("ImageNetA", "all"): a})
    report = write_report(tmp_path, plots=False)
    table = rows(tmp_path / "report" / "dg.csv")
    v2 = table[("coop", "16", "ImageNetV2", "accuracy")]
    assert float(v2["mean"]) == 64.5 and v2["published_status"] == "published"
    assert float(v2["difference"]) == pytest.approx(64.5 - 64.20)
    assert float(table[("coop", "16", "average", "accuracy")]["mean"]) == pytest.approx((64.5 + 49.5) / 2)
    text = report.markdown.read_text()
    assert "| coop | 16 | ImageNet | 71.50 ± 0.50 (n=2) | 64.50 ± 0.50 (n=2) | 49.50 ± 0.50 (n=2) | 57.00 |" in text
    assert "| ↳ Δ (ours − published) |  |  | -0.01 | +0.30 | -0.21 | — |" in text
    assert report.plots == [] and report.missing == []


def test_no_published_numbers_for_another_backbone_and_no_manifest(tmp_path):
    write_result(tmp_path, "a", "coop", "DescribableTextures", "base", 16, 1, 80.0, model="tiny-vit",
                 pretrained=None, evals={("DescribableTextures", "new"): 40.0})
    report = write_report(tmp_path, plots=False)  # no manifest: every result.json; the kind is inferred
    table = rows(tmp_path / "report" / f"{tmp_path.name}.csv")
    assert float(table[("coop", "16", "DescribableTextures", "H")]["mean"]) == pytest.approx(160 / 3, abs=1e-4)
    assert table[("coop", "16", "DescribableTextures", "H")]["published"] == ""
    assert "tiny-vit (random weights)" in report.markdown.read_text()


def test_plots_are_skipped_with_a_message_without_matplotlib(few_shot_dir, monkeypatch, capsys):
    monkeypatch.setattr(report_module, "_matplotlib_available", lambda: False)
    assert cli("report", str(few_shot_dir), "--out", str(few_shot_dir / "r")) == 0
    assert "Plots skipped: matplotlib is not installed" in (few_shot_dir / "r" / "report.md").read_text()
    assert not list((few_shot_dir / "r").glob("*.png"))
    assert "| coop | 16 |" in capsys.readouterr().out


def test_a_folder_of_ad_hoc_runs_never_merges_shots_or_class_subsets(tmp_path):
    for shots, accs in ((1, (40.0, 44.0)), (2, (50.0, 52.0)), (4, (60.0, 61.0))):
        for seed, acc in enumerate(accs, 1):
            write_result(tmp_path, f"coop/all/{shots}/{seed}", "coop", "EuroSAT", "all", shots, seed, acc)
    write_result(tmp_path, "coop/base/16/1", "coop", "EuroSAT", "base", 16, 1, 90.0,
                 evals={("EuroSAT", "new"): 70.0})
    write_result(tmp_path, "coop/new/16/1", "coop", "EuroSAT", "new", 16, 1, 99.0)  # trained on the new half
    report = write_report(tmp_path, plots=False)
    text = report.markdown.read_text()
    assert "Not a sweep folder" in text
    few_shot = rows(tmp_path / "report" / f"{tmp_path.name}-few_shot-ViT-B-16_openai-all.csv")
    assert {shots: float(few_shot[("coop", shots, "EuroSAT", "accuracy")]["mean"]) for shots in ("1", "2", "4")} == \
        {"1": 42.0, "2": 51.0, "4": 60.5}
    b2n = rows(tmp_path / "report" / f"{tmp_path.name}-base_to_new-ViT-B-16_openai-base.csv")
    assert float(b2n[("coop", "16", "EuroSAT", "base")]["mean"]) == 90.0  # not averaged with the new-class run
    trained_on_new = rows(tmp_path / "report" / f"{tmp_path.name}-few_shot-ViT-B-16_openai-new.csv")
    assert float(trained_on_new[("coop", "16", "EuroSAT", "accuracy")]["mean"]) == 99.0


def test_every_metric_a_run_has_reaches_the_long_table_and_its_own_table(tmp_path):
    for seed, (acc, f1, seconds) in enumerate(((80.0, 70.0, 10.0), (90.0, 74.0, 14.0)), 1):
        folder = tmp_path / f"coop/{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({
            "method": "coop", "dataset": "EuroSAT", "subsample": "all", "shots": 4, "seed": seed, "model": "m",
            "pretrained": None, "num_parameters": 2048, "train_seconds": seconds,
            "test": {"accuracy": acc, "macro_f1": f1}}))
    report = write_report(tmp_path, plots=False)
    text = report.markdown.read_text()
    assert "### Macro-F1 (%)" in text and "| coop | 4 | 72.00 ± 2.00 (n=2) |" in text
    assert "| coop | 4 | 2,048 |" in text and "| coop | 4 | 12.0 |" in text
    with open(tmp_path / "report" / f"{tmp_path.name}-runs.csv") as f:
        long = list(csv.DictReader(f))
    assert {(r["seed"], r["metric"]) for r in long} == {(s, m) for s in ("1", "2") for m in
                                                        ("accuracy", "macro_f1", "parameters", "train_seconds")}
    assert float(next(r["value"] for r in long if (r["seed"], r["metric"]) == ("2", "macro_f1"))) == 74.0
