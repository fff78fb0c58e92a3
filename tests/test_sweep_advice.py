"""Every piece of advice the protocol and sweep code gives is followed, and then the plan builds: the fix is read from
the message itself ("did you mean", "give one of them a name", "use seeds instead", ...), applied, and planned."""
import re

import pytest

from bench_fixtures import TINY
from promptclip.bench.sweep import plan_problems, plan_sweep
from promptclip.errors import ConfigError

B2N_DIGITS = "datasets=[{name: digits, data: {name: imagefolder, root: data/digits}}]"


def advice(protocol, overrides, pattern):
    """The error planning ``overrides`` gives, and what ``pattern`` (one group) reads from it as the fix."""
    with pytest.raises(ConfigError) as err:
        plan_sweep(protocol, overrides)
    found = re.search(pattern, str(err.value))
    assert found, str(err.value)
    return found.group(1)


@pytest.fixture
def base(tmp_path):
    return [*TINY, f"output.root={tmp_path}", "seeds=[1]", "shots=[2]", B2N_DIGITS]


def test_two_methods_in_one_folder_get_the_advised_name(base):
    name = advice("few_shot", [*base, "methods=[coop, coop]"], r"name: (\w+)\}")
    plan = plan_sweep("few_shot", [*base, f"methods=[coop, {{preset: coop, name: {name}}}]"])
    assert sorted(r.key.method for r in plan.runs) == ["coop", name]


def test_zero_shot_in_a_few_shot_protocol_needs_no_advice(base):
    plan = plan_sweep("few_shot", [*base, "methods=[coop, zeroshot]", "seeds=[1,2]", "shots=[1,2]"])
    zeroshot = sorted(r.id for r in plan.runs if r.key.method == "zeroshot")
    assert zeroshot == [f"zeroshot/tiny-vit_random/digits/all/shots_0/seed_{s}" for s in (1, 2)]  # the 0-shot row
    assert len(plan.runs) == 4 + 2


def test_a_misspelt_method_scope_is_corrected(base):
    scope = advice("few_shot", [*base, "methods=[coop]", "cop:train.epochs=1"], r"Did you mean '(\w+)'")
    plan = plan_sweep("few_shot", [*base, "methods=[coop]", f"{scope}:train.epochs=1"])
    assert plan.runs[0].config.train.epochs == 1


def test_a_misspelt_protocol_is_corrected(base):
    name = advice("few_shoot", [*base, "methods=[coop]"], r"Did you mean '(\w+)'")
    assert plan_sweep(name, [*base, "methods=[coop]"]).protocol.name == "few_shot"


def test_a_key_the_protocol_owns_points_to_the_protocol_key(base):
    fix = advice("few_shot", [*base, "methods=[coop]", "seed=3"], r"e\.g\. (seeds=\[\d+\])")
    assert [r.key.seed for r in plan_sweep("few_shot", [*base, "methods=[coop]", fix]).runs] == [1]
    key = advice("few_shot", [*base, "methods=[coop]", "config={seed: 3}"], r"use (\w+) instead")
    assert [r.key.seed for r in plan_sweep("few_shot", [*base, "methods=[coop]", f"{key}=[3]"]).runs] == [3]


def test_a_method_without_a_preset_is_shown_one(base):
    entry = advice("few_shot", [*base, "methods=[{name: mine}]"], r"\(e\.g\. (\{preset: \w+\})\)")
    assert len(plan_sweep("few_shot", [*base, f"methods=[{entry}]"]).runs) == 1


def test_grid_advice(base):
    one = advice("few_shot", [*base, "methods=[coop]", "grid={optim.lr: 0.01}"], r"one value: (\[[^\]]+\])")
    assert len(plan_sweep("few_shot", [*base, "methods=[coop]", f"grid={{optim.lr: {one}}}"]).runs) == 1
    key = advice("few_shot", [*base, "methods=[coop]", "grid={optim.lr: [0.1, 0.2]}", "optim.lr=0.3"],
                 r"e\.g\. grid=\{([\w.]+): \[\.\.\.\]\}")
    assert len(plan_sweep("few_shot", [*base, "methods=[coop]", f"grid={{{key}: [0.1, 0.2, 0.3]}}"]).runs) == 3
    entry = advice("few_shot", [*base, "methods=[coop, kgcoop]", "grid={losses.kgcoop.weight: [1, 8]}"],
                   r"(\{preset: \.\.\., grid: \{[\w.]+: \[\.\.\.\]\}\})")
    fixed = entry.replace("preset: ...", "preset: kgcoop").replace("[...]", "[1, 8]")
    plan = plan_sweep("few_shot", [*base, f"methods=[coop, {fixed}]"])
    assert sorted(r.key.method for r in plan.runs) == ["coop", "kgcoop", "kgcoop"]


def test_removal_advice(base):
    advice("few_shot", [*base, "methods=[coop, {preset: linear_probe, grid: {optim.lr: [0.1, 0.2]}}]"],
           r"(Remove its grid)")
    assert len(plan_sweep("few_shot", [*base, "methods=[coop, linear_probe]"]).runs) == 2
    advice("base_to_new", [*base, "methods=[coop_b2n, coop_csc]"], r"(Remove it from this protocol)")
    assert len(plan_sweep("base_to_new", [*base, "methods=[coop_b2n]"]).runs) == 1


def test_too_deep_settings_are_fixed_as_advised(base):
    deep = [*base, "methods=[coop_b2n, maple, promptsrc]"]
    problems, unknown = plan_problems(plan_sweep("base_to_new", deep).runs)
    assert unknown == [] and sorted(problems) == [f"{m}/tiny-vit_random/digits/base/shots_2/seed_1"
                                                  for m in ("maple", "promptsrc")]
    assert problems[sorted(problems)[1]] == ["text.text_depth=9 > 2 text layers (use 1..2)",
                                             "text.vision_depth=9 > 2 vision layers (use 1..2)"]
    with pytest.raises(ConfigError) as err:
        from promptclip.bench.sweep import check_plan

        check_plan(plan_sweep("base_to_new", deep).runs)
    lowered = re.search(r"e\.g\. METHOD:(text\.depth=\d+)", str(err.value)).group(1)
    model = re.search(r"(model\.name=[\w-]+)", str(err.value)).group(1)
    fixed = plan_sweep("base_to_new", [*deep, f"maple:{lowered}", "promptsrc:text.text_depth=2",
                                       "promptsrc:text.vision_depth=2"])
    assert plan_problems(fixed.runs) == ({}, [])
    assert plan_problems(plan_sweep("base_to_new", [*deep, model]).runs) == ({}, [])
