"""Presets, inheritance, dotted overrides and validation with suggestions."""
import pytest
import yaml

from promptclip.config import Config, build_config, from_dict, load_resolved, parse_override, preset_names, to_yaml
from promptclip.errors import ConfigError


def test_preset_inheritance_and_overrides():
    cfg = build_config(["coop_csc"], ["optim.lr=0.01", "data.shots=4", "text.position=middle", "vision=null"])
    assert cfg.text.name == "coop" and cfg.text.class_specific and cfg.text.n_ctx == 16  # from coop via inherit
    assert cfg.text.position == "middle" and cfg.optim.lr == 0.01 and cfg.data.shots == 4
    assert cfg.method_name == "coop_csc"


def test_override_values_are_read_as_yaml():
    assert parse_override("optim.betas=[0.8, 0.9]") == {"optim": {"betas": [0.8, 0.9]}}
    assert parse_override("model.pretrained=null") == {"model": {"pretrained": None}}
    assert parse_override("data.options.template=a photo of a {}.") == \
        {"data": {"options": {"template": "a photo of a {}."}}}


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "Did you mean 'optim.lr'"),
    ("tarin.epochs=3", "Did you mean 'train'"),
    ("text.n_ctxx=3", "of learner 'coop'.*'text.n_ctx'"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("train.epochs=2.5", "train.epochs must be an integer"),
    ("text.name=cooop", "Did you mean 'coop'"),
    ("losses.dapt_interr.weight=1", "Unknown loss 'dapt_interr'"),
    ("noequals", "key.sub=value"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(["coop"], [override])


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="coop"):
        build_config(["cop"])


def test_switching_learner_drops_the_old_learners_options():
    cfg = build_config(["coop", "zeroshot"])
    assert cfg.text.name == "zeroshot" and cfg.train.epochs == 0


def test_resolved_config_round_trips(tmp_path):
    cfg = build_config(["coop"], ["data.root=/data", "seed=3"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_resolved(path) == cfg
    assert yaml.safe_load(path.read_text())["text"]["n_ctx"] == 16


def test_every_preset_parses():
    from promptclip.config import preset_names

    names = [n for n in preset_names() if not n.startswith("protocols/")]
    assert "methods/coop" in names
    for name in names:
        cfg = build_config([name], ["data.root=/tmp"])
        assert isinstance(cfg, Config) and cfg.text is not None, name


def test_from_dict_rejects_non_mappings():
    with pytest.raises(ConfigError, match="optim must be a mapping"):
        from_dict(Config, {"optim": 3})


def test_user_preset_folders_come_first(tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "mycoop.yaml").write_text("inherit: coop\nmethod: mycoop\noptim: {lr: 0.123}\n")
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "mine.yaml").write_text("kind: few_shot\ndatasets: [EuroSAT]\nmethods: [mycoop]\n")
    monkeypatch.setenv("PROMPTCLIP_PRESETS", str(tmp_path))
    cfg = build_config(["mycoop"])
    assert (cfg.method, cfg.optim.lr, cfg.text.name) == ("mycoop", 0.123, "coop")
    assert "methods/mycoop" in preset_names() and not any(n.startswith("protocols/") for n in preset_names())
    from promptclip.bench.protocol_files import find_protocol

    assert find_protocol("mine") == tmp_path / "protocols" / "mine.yaml"


def test_the_wheel_lists_every_package():
    """setup.cfg names the packages (so that configs/ can ship as promptclip.configs): none may be missing."""
    import configparser
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    parser = configparser.ConfigParser()
    parser.read(root / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "promptclip").rglob("__init__.py")}
    assert listed == found | {"promptclip.configs"}
