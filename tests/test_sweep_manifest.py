"""A sweep's manifest is never silently replaced: another plan on the same folder is refused with the differences,
merged with --merge (new runs only), or replaced with --replace; each advice in the refusal is followed here."""
import json

import pytest

from promptclip.bench.protocols import write_manifest
from promptclip.bench.sweep import plan_sweep
from promptclip.errors import ConfigError


def plan(root, *extra):
    return plan_sweep("few_shot", ["datasets=[EuroSAT]", "shots=[2]", "methods=[coop]", "data.root=/data",
                                   f"output.root={root}", *extra])


def written(p, **flags):
    return json.loads(write_manifest(p.protocol, p.runs, p.root, p.overrides, **flags).read_text())


def test_another_plan_is_refused_merged_or_replaced(tmp_path):
    first = plan(tmp_path, "seeds=[1]")
    manifest = written(first)
    path = tmp_path / "protocol-few_shot.json"
    (run_id,) = [r["id"] for r in manifest["runs"]]

    other = plan(tmp_path, "seeds=[1]", "train.epochs=5")
    for flags in ({}, {"merge": True}):  # the same run with other settings: no merge reconciles it
        with pytest.raises(ConfigError) as err:
            written(other, **flags)
        assert f"other settings: {run_id}" in str(err.value) and "--merge" not in str(err.value)
        assert json.loads(path.read_text()) == manifest
    assert written(other, replace=True)["overrides"][-1] == "train.epochs=5"  # the advised --replace

    written(first, replace=True)
    more = plan(tmp_path, "seeds=[2]")
    with pytest.raises(ConfigError, match="only in the new plan: coop/.*seed_2(.|\n)*only in the existing plan: "
                                          "coop/.*seed_1(.|\n)*add its runs to the existing plan with --merge"):
        written(more)
    merged = written(more, merge=True)  # the advised --merge: one report over both
    assert [r["id"] for r in merged["runs"]] == [run_id, run_id.replace("seed_1", "seed_2")]
    assert merged["overrides"] == [*first.overrides, "seeds=[2]"]
    assert written(plan(tmp_path / "elsewhere", "seeds=[2]"))["runs"]  # the advised folder of its own


def test_the_same_plan_again_and_every_shard_of_it_write_one_manifest(tmp_path):
    whole = written(plan(tmp_path, "seeds=[1,2]"))
    assert written(plan_sweep("few_shot", ["datasets=[EuroSAT]", "shots=[2]", "methods=[coop]", "data.root=/data",
                                           f"output.root={tmp_path}", "seeds=[1,2]"], "1/2")) == whole
