"""Every example in every ``--help`` runs: each is read from the help text, parsed as the command parses it and
built through the command's own code path (the config of train/zeroshot/config, the evaluation config of eval, the
sweep plan of bench, checked against the backbone's architecture); those that are cheap here are also run."""
import re
import shlex

import pytest

from bench_fixtures import coloured_folder
from promptclip import cli
from promptclip.bench import commands
from promptclip.bench.sweep import plan_problems, plan_sweep
from promptclip.engine.runner import evaluation_config, finished_run
from promptclip.model import config_problems
from promptclip.architecture import Architecture


def parsers(parser=None, path=()):
    """``(command path, parser)`` for every subcommand, nested ones (``data check``) included."""
    parser = parser or cli.build_parser()
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            yield (*path, name), sub
            yield from parsers(sub, (*path, name))


def examples():
    """Every ``promptclip ...`` line of every help's examples block, and the override lists given after "e.g."."""
    found = []
    for path, parser in parsers():
        text = parser.format_help()
        block = text.split("\nexamples:\n", 1)[1] if "\nexamples:\n" in text else ""
        found += [shlex.split(line.strip(), comments=True) for line in block.splitlines()
                  if line.startswith("  promptclip ")]
        for action in parser._actions:
            listed = re.search(r"e\.g\. ((?:[\w.]+=\S+\s*)+)$", " ".join((action.help or "").split()))
            if listed:
                found.append(["promptclip", *path, *(["RUN_DIR"] if path == ("eval",) else []),
                              *listed.group(1).split()])
    for line in commands.BENCH_HELP.split("overrides:", 1)[1].split("\n\n")[0].splitlines():
        example = re.split(r"\s{2,}", line.strip())[0]
        if "=" in example:  # not a description's second line
            found.append(["promptclip", "bench", "few_shot", *shlex.split(example)])
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished CoOp run (one short epoch) on a coloured image folder (what RUN_DIR stands for)."""
    from promptclip.config import build_config
    from promptclip.engine import run

    root = tmp_path_factory.mktemp("help")
    folder = coloured_folder(root / "colours", classes=4)
    cfg = build_config(["coop"], ["train.epochs=1", "train.max_steps_per_epoch=1", "data.shots=2",
                                  "model.name=tiny-vit",
                                  "model.pretrained=null", "data.name=imagefolder", f"data.root={folder}",
                                  f"output.dir={root / 'run'}", f"output.cache_dir={root / 'cache'}",
                                  "train.device=cpu"])
    run(cfg, progress=False)
    return root / "run", next((folder / "test" / "c0").glob("*.png"))


def test_every_command_with_options_has_examples():
    names = {path[0] for path in (e[1:] for e in EXAMPLES)}
    assert {"train", "zeroshot", "eval", "predict", "interpret", "demo", "config", "runs", "bench", "report", "export",
            "cache"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("argv", EXAMPLES, ids=[" ".join(e[1:])[:70] for e in EXAMPLES])
def test_the_example_parses_and_builds(argv, run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run, image = run_dir
    argv = [str(run) if a == "RUN_DIR" else str(image) if a == "IMAGE.png" else a for a in argv[1:]]
    args = cli.parse(argv)
    command = argv[0]
    if command in ("train", "zeroshot", "config"):
        cfg = cli._config(args, ["zeroshot"] if command == "zeroshot" else [])
        assert config_problems(cfg, Architecture.of(cfg.model.name)) == []
        if command == "config":
            assert cli.main(argv) == 0 and capsys.readouterr().out
    elif command == "eval":
        base, _ = finished_run(args.run_dir)
        assert evaluation_config(base, args.overrides, str(args.run_dir)).model.name == "tiny-vit"
        if "data.name=ImageNetV2" not in argv:  # the others evaluate here; ImageNetV2 is not on this machine
            assert cli.main(argv) == 0 and "accuracy" in capsys.readouterr().out
    elif command == "bench":
        plan = plan_sweep(args.protocol, args.overrides, args.shard)
        assert plan.runs and plan_problems(plan.runs) == ({}, [])
    elif command == "export":
        assert cli.main(argv) == 0 and "Exported" in capsys.readouterr().out
    elif command == "cache":  # du and a prune to 20 GB leave the suite's own cache as it is
        assert cli.main(argv) == 0 and capsys.readouterr().out
    elif command in ("predict", "interpret", "runs"):
        if command == "runs":
            (tmp_path / "runs").mkdir()
        assert cli.main(argv) == 0 and capsys.readouterr().out
    else:  # demo trains for minutes, report needs a finished sweep: both parse to their handlers
        assert args.func.__name__ in ("cmd_demo", "report_command"), argv
