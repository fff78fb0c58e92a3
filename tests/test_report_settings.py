"""``report`` never pools runs of different settings, and writes paper-ready tables: hand-built run folders."""
import csv
import json
import re


from promptclip.bench.report import write_report

DTD = "DescribableTextures"


def settings(dataset=DTD, shots=4, seed=1, subsample="all", **changes):
    base = {"data.name": dataset, "data.root": "/data", "data.shots": shots, "data.subsample": subsample,
            "model.name": "ViT-B-16", "model.pretrained": "openai", "optim.lr": 0.002, "seed": seed,
            "train.epochs": 3}
    return {**base, **changes}


def run(root, run_id, method="coop", dataset=DTD, shots=4, seed=1, accuracy=50.0, subsample="all", evals=(),
        identity=None, **fields):
    """A finished run folder: identity.json (settings), result.json and evaluation files."""
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "identity.json").write_text(json.dumps({
        "fingerprint": run_id, "version": 2,
        "settings": identity or settings(dataset, shots, seed, subsample)}))
    (folder / "result.json").write_text(json.dumps({
        "method": method, "dataset": dataset, "subsample": subsample, "shots": shots, "seed": seed,
        "model": "ViT-B-16", "pretrained": "openai", "test": {"accuracy": accuracy, "macro_f1": accuracy - 1},
        **fields}))
    for i, evaluation in enumerate(evals):
        (folder / "evals").mkdir(exist_ok=True)
        (folder / "evals" / f"e{i}.json").write_text(json.dumps(evaluation))
    return folder


def table_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_runs_of_other_settings_are_separate_labelled_rows_never_one_mean(tmp_path):
    """The user's folder: DTD coop runs of 3, 5 and 60 epochs, several of them seed 1."""
    for i, (epochs, seed, acc) in enumerate([(3, 1, 10.0), (3, 2, 12.0), (5, 1, 30.0), (60, 1, 60.0),
                                             (60, 2, 64.0)]):
        run(tmp_path, f"r{i}", seed=seed, accuracy=acc, identity=settings(seed=seed, **{"train.epochs": epochs}))
    report = write_report(tmp_path, plots=False)
    text = report.markdown.read_text()
    assert "| coop [train.epochs=3] | 4 | 11.00 ± 1.00 (n=2) |" in text
    assert "| coop [train.epochs=5] | 4 | 30.00 ± — (n=1) |" in text
    assert "| coop [train.epochs=60] | 4 | 62.00 ± 2.00 (n=2) |" in text
    means = {r["method"]: float(r["mean"]) for r in table_rows(tmp_path / "report" / f"{tmp_path.name}.csv")
             if r["dataset"] == DTD}
    assert means == {"coop [train.epochs=3]": 11.0, "coop [train.epochs=5]": 30.0, "coop [train.epochs=60]": 62.0}
    assert "population std (ddof 0" in text


def test_duplicate_seeds_are_an_error_line_and_never_averaged(tmp_path):
    run(tmp_path, "a", seed=1, accuracy=40.0)
    run(tmp_path, "b", seed=1, accuracy=80.0)  # a copy of the same experiment and seed
    run(tmp_path, "c", seed=2, accuracy=50.0)
    report = write_report(tmp_path, plots=False)
    text = report.markdown.read_text()
    assert "| coop | 4 | duplicate seeds | — |" in text
    (line,) = [m for m in report.missing if "seed 1 appears 2 times" in m]
    assert "(a, b)" in line and "not averaged" in line
    (cell,) = [r for r in table_rows(tmp_path / "report" / f"{tmp_path.name}.csv") if r["dataset"] == DTD]
    assert (cell["mean"], cell["duplicate_seeds"]) == ("", "a b")
    assert "two runs of one experiment have the same seed" in text


def test_an_evaluation_on_the_runs_own_folder_under_another_label_is_not_transfer(tmp_path):
    own = {"data.name": "imagefolder", "data.root": "/home/u/myimgs"}
    identity = {**settings(), **own}
    run(tmp_path, "a", dataset="myimgs", accuracy=70.0, identity=identity, evals=[
        {"label": "myimgs-072c77", "dataset": "myimgs", "subsample": "all", "settings": dict(own),
         "test": {"accuracy": 70.0}}])
    run(tmp_path, "b", dataset="myimgs", seed=2, accuracy=72.0, identity={**identity, "seed": 2}, evals=[
        {"label": "other-1a2b3c", "dataset": "myimgs", "subsample": "all",
         "settings": {"data.name": "imagefolder", "data.root": "/home/u/elsewhere/myimgs"},
         "test": {"accuracy": 20.0}}])
    report = write_report(tmp_path, plots=False)
    text = report.markdown.read_text()
    kinds = sorted(name.split("(")[-1].rstrip(")") for name in re.findall(r"^## .*$", text, re.M))
    assert kinds == ["cross dataset", "few shot"]  # run a (own folder) is few-shot; run b has a real target
    assert "myimgs-072c77" not in text  # the run's own folder under another label: never a target
    assert "| coop | 4 | myimgs | 72.00 ± — (n=1) | 20.00 ± — (n=1) | 20.00 |" in text


def test_latex_tables_are_booktabs_with_escaped_specials(tmp_path):
    run(tmp_path, "a", dataset="my_data&more", accuracy=41.2,
        identity=settings(dataset="my_data&more"))
    report = write_report(tmp_path, plots=False)
    (main,) = [p for p in report.latex if p.name.endswith("-table-accuracy.tex")]
    latex = main.read_text()
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert r"my\_data\&more" in latex and r"41.20 $\pm$ -- (n=1)" in latex
    assert r"\caption{Test accuracy (\%)" in latex
    body = latex.replace(r"\_", "").replace(r"\&", "").replace(r"\%", "").replace(r"\#", "")
    table = body[body.index(r"\midrule"):body.index(r"\bottomrule")]
    assert not re.search(r"(?<!\\)[_%#]", table) and table.count("&") == 5  # 6 columns
    assert latex.count(r"\begin{tabular}") == latex.count(r"\end{tabular}") == 1
    wide = table_rows(main.with_suffix(".csv"))
    assert wide[0]["my_data&more"] == "41.20 ± — (n=1)"
    assert main.with_suffix(".md").read_text().startswith("### Test accuracy (%)")


def manifest(root, runs, overrides, kind="few_shot"):
    entries = [{"id": i, "method": m, "dataset": d, "subsample": s, "shots": k, "seed": seed, "model": "ViT-B-16",
                "pretrained": "openai", "dir": i,
                "evaluations": [{"dataset": d, "subsample": "new", "file": f"{i}/evals/e0.json"}]
                if kind == "base_to_new" else []}
               for i, m, d, s, k, seed in runs]
    (root / "protocol-p.json").write_text(json.dumps({"protocol": "p", "kind": kind, "overrides": overrides,
                                                      "runs": entries}))


def test_deviations_list_the_overrides_and_the_shots_shortfall_with_marked_cells(tmp_path):
    shortfall = {"shots": 16, "of": 47, "classes": {"banded": 12, "blotchy": 9, "braided": 15}}
    plan = [(f"{m}/{d}/1", m, d, "all", 16, 1) for m in ("coop", "maple") for d in (DTD, "EuroSAT")]
    manifest(tmp_path, plan, ["train.epochs=5", "maple:text.depth=2", "seeds=[1]", "output.root=/x"])
    for run_id, method, dataset, _, shots, seed in plan:
        extra = {"shortfall": shortfall} if dataset == DTD else {}
        run(tmp_path, run_id, method, dataset, shots, seed, identity=settings(dataset, shots), **extra)
    report = write_report(tmp_path, plots=False)
    text = report.markdown.read_text()
    section = text[text.index("### Deviations from the protocol"):]
    assert "`train.epochs=5`: changes the settings of every run" in section
    assert "`maple:text.depth=2`: changes the settings of the runs of maple" in section
    assert "`seeds=[1]`: changes the protocol's plan" in section
    assert "`output.root=/x`: every run; does not change results" in section
    assert ("DescribableTextures, 16 shots: 3 of 47 classes have fewer images (all used; cells marked ‡): "
            "banded (12), blotchy (9), braided (15)") in section
    assert "| coop§ | 16 | 50.00 ± — (n=1)‡ | 50.00 ± — (n=1) |" in text
    assert "‡ some classes had fewer training images than the shots" in text
    assert "§ a command-line override changed these runs' settings" in text
    cells = {(r["method"], r["dataset"]): r["marks"] for r in table_rows(tmp_path / "report" / "p.csv")}
    assert cells[("maple", DTD)] == "‡" and cells[("maple", "EuroSAT")] == ""


def test_a_failed_run_is_listed_with_its_reason(tmp_path):
    manifest(tmp_path, [("coop/1", "coop", DTD, "all", 4, 1), ("coop/2", "coop", DTD, "all", 4, 2)], [])
    run(tmp_path, "coop/1")
    failed = tmp_path / "coop/2"
    failed.mkdir(parents=True)
    (failed / "failed.json").write_text(json.dumps({"error": "non-finite loss at epoch 3", "at": "2024-05-01"}))
    report = write_report(tmp_path, plots=False)
    assert report.missing == ["coop/2: failed: non-finite loss at epoch 3 (at 2024-05-01)"]
    (tmp_path / "protocol-p.json").unlink()  # a plain folder of runs: failed runs are found too
    report = write_report(tmp_path, plots=False)
    assert "- coop/2: failed: non-finite loss at epoch 3 (at 2024-05-01)" in report.markdown.read_text()


def b2n_run(root, run_id, method, dataset, shots, seed, base, new):
    identity = settings(dataset, shots, seed, "base")
    run(root, run_id, method, dataset, shots, seed, base, "base", identity=identity, evals=[
        {"label": dataset, "dataset": dataset, "subsample": "new", "test": {"accuracy": new, "macro_f1": new - 2},
         "settings": {"data.name": dataset, "data.root": "/data"}}])


def test_base_to_new_has_a_shots_column_each_dataset_once_and_published_rows(tmp_path):
    for shots in (4, 16):
        for seed in (1, 2):
            b2n_run(tmp_path, f"{shots}/{seed}/d", "coop", DTD, shots, seed, 80.0 + seed, 40.0 + seed)
            b2n_run(tmp_path, f"{shots}/{seed}/e", "coop", "EuroSAT", shots, seed, 90.0, 60.0)
    report = write_report(tmp_path)
    text = report.markdown.read_text()
    main = text[text.index("### Base-to-new"):text.index("### Macro-F1")]
    assert "| method | shots | dataset | base (B) | new (N) | H |" in main
    rows = [line for line in main.splitlines() if line.startswith("| coop")]
    assert [(r.split(" | ")[1], r.split(" | ")[2]) for r in rows] == [
        (s, d) for s in ("4", "16") for d in (DTD, "EuroSAT", "average")]
    assert "| coop | 16 | DescribableTextures | 81.50 ± 0.50 (n=2) | 41.50 ± 0.50 (n=2) | 55.00 | " \
           "79.44 / 41.18 / 54.24" in main  # the published per-dataset row beside ours
    assert "| coop | 16 | EuroSAT | 90.00 ± 0.00 (n=2) | 60.00 ± 0.00 (n=2) | 72.00 | 92.19 / 54.74 / 68.69" in main
    f1 = text[text.index("### Macro-F1"):]
    assert "| method | shots | dataset | base (B) | new (N) |" in f1
    assert "| coop | 4 | DescribableTextures | 80.50 ± 0.50 (n=2) | 39.50 ± 0.50 (n=2) |" in f1
    (bars,) = report.plots
    assert bars.name == f"{tmp_path.name}-bars.png" and bars.stat().st_size > 20_000


def test_few_shot_plots_with_error_bars_and_several_methods(tmp_path):
    for method, offset in (("coop", 0.0), ("kgcoop", 5.0)):
        for shots in (1, 2, 4):
            for seed in (1, 2, 3):
                for dataset in (DTD, "EuroSAT"):
                    run(tmp_path, f"{method}/{dataset}/{shots}/{seed}", method, dataset, shots, seed,
                        40.0 + 5 * shots + offset + seed, identity=settings(dataset, shots, seed))
    run(tmp_path, f"zeroshot/{DTD}", "zeroshot", DTD, 0, 1, 30.0, identity=settings(DTD, 0))
    report = write_report(tmp_path)
    assert [p.name for p in report.plots] == [f"{tmp_path.name}-per_dataset.png", f"{tmp_path.name}-average.png"]
    assert all(p.stat().st_size > 20_000 for p in report.plots)
    text = report.markdown.read_text()
    assert "| coop | 4 | 62.00 ± 0.82 (n=3) | 62.00 ± 0.82 (n=3) | 62.00 |" in text


def test_the_report_says_how_the_methods_on_features_chose_their_hyperparameters(tmp_path):
    for seed in (1, 2):
        run(tmp_path, f"tip_adapter/s{seed}", "tip_adapter", seed=seed,
            identity=settings(seed=seed, **{"text.hparams": "val"}))
        run(tmp_path, f"gda/s{seed}", "gda", seed=seed, identity=settings(seed=seed, **{"text.hparams": "fixed"}))
        run(tmp_path, f"coop/s{seed}", seed=seed)
    text = write_report(tmp_path, plots=False).markdown.read_text()
    line = next(line for line in text.splitlines() if line.startswith("Hyper-parameters (text.hparams)"))
    assert line.startswith("Hyper-parameters (text.hparams): fixed for gda; val for tip_adapter.")
    assert "never on test" in line and "coop" not in line
    run(tmp_path / "prompts_only", "coop/s1")
    assert "Hyper-parameters" not in write_report(tmp_path / "prompts_only", plots=False).markdown.read_text()
