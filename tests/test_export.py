"""``promptclip export``: a finished run as an adapter folder in PEFT's layout, loaded in a fresh process with the
run's very logits and predictions (a prompt learner and a cache model whose state is shaped by the data), its
config and model card, the refusals (unfinished run, non-empty folder, local weights), and the errors for a
damaged or foreign adapter_config.json."""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from bench_fixtures import TINY, coloured_folder
from promptclip import load_run
from promptclip.backbone import FrozenCLIP
from promptclip.config import build_config
from promptclip.data.loaders import open_image
from promptclip.engine import run
from promptclip.engine.export import add_export_command, export_run
from promptclip.engine.predict import predict
from promptclip.errors import PromptclipError
from promptclip.runs import default_run_dir

METHODS = {"coop": ["train.epochs=1", "data.shots=2"], "tip_adapter": ["data.shots=2", "text.augment_epoch=1"]}
FRESH = """
import json, sys, torch
torch.set_num_threads(2)
import promptclip
from promptclip.data.loaders import open_image
from promptclip.engine.predict import predict
folders, paths, out = json.loads(sys.argv[1])
for name, folder in folders.items():
    loaded = promptclip.load_run(folder, device="cpu")
    images = torch.stack([loaded.transform(open_image(p)) for p in paths])
    torch.save(loaded.logits(images), f"{out}/{name}.pt")
    with open(f"{out}/{name}.json", "w") as f:
        json.dump(predict(folder, paths, topk=2, device="cpu"), f)
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """``(data root, {method: (run folder, result)})``: a finished CoOp and Tip-Adapter run on coloured images."""
    root = tmp_path_factory.mktemp("export")
    data = coloured_folder(root / "data")
    found = {}
    for method, extra in METHODS.items():
        cfg = build_config([method], [*TINY, "data.name=imagefolder", f"data.root={data}",
                                      f"output.root={root / 'runs'}", f"output.cache_dir={root / 'cache'}", *extra])
        found[method] = (default_run_dir(cfg), run(cfg, progress=False))
    return data, found


def images_of(data):
    return sorted((data / "test").rglob("*.png"))


def logits_of(folder, paths):
    loaded = load_run(folder, device="cpu")
    return loaded.logits(torch.stack([loaded.transform(open_image(str(p))) for p in paths]))


@pytest.mark.slow
def test_an_export_loads_in_a_fresh_process_with_the_runs_logits_and_predictions(made, tmp_path):
    data, found = made
    paths = [str(p) for p in images_of(data)]
    expected = {m: (logits_of(d, paths), predict(d, paths, topk=2, device="cpu")) for m, (d, _) in found.items()}
    assert not torch.equal(expected["coop"][0], expected["tip_adapter"][0])
    moved = {}
    for method, (run_dir, _) in found.items():
        export_run(run_dir, tmp_path / "made" / method)
        assert (tmp_path / "made" / method / "adapter_model.safetensors").read_bytes() == \
            (run_dir / "prompts.safetensors").read_bytes()
        moved[method] = str(shutil.move(str(tmp_path / "made" / method), str(tmp_path / "moved" / method)))
    runs_root = found["coop"][0].parents[5]
    runs_root.rename(runs_root.with_name("hidden"))  # the export needs nothing of the run folder
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", FRESH, json.dumps([moved, paths, str(tmp_path)])], check=True,
                       env=env, cwd=tmp_path, timeout=120)
    finally:
        runs_root.with_name("hidden").rename(runs_root)
    for method, (logits, predictions) in expected.items():
        assert torch.equal(torch.load(tmp_path / f"{method}.pt"), logits)
        got = json.loads((tmp_path / f"{method}.json").read_text())
        assert [[p["path"], [list(t) for t in p["top"]]] for p in predictions] == \
            [[p["path"], p["top"]] for p in got]


def test_the_config_and_model_card_say_what_the_adapter_is_and_how_it_did(made, tmp_path):
    _, found = made
    run_dir, result = found["tip_adapter"]
    out = export_run(run_dir, tmp_path / "tip")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    meta = json.loads((run_dir / "prompts.json").read_text())
    assert (config["peft_type"], config["base_model_name_or_path"], config["revision"]) == ("PROMPTCLIP", "tiny-vit",
                                                                                            None)
    assert {k: config[k] for k in meta} == meta  # everything prompts.json holds
    assert config["shapes"]["text.values"] == [6, 3]  # the cache's shape follows the data: 2 shots × 3 classes
    assert set(config["exported_with"]) >= {"promptclip", "open_clip"}
    assert config["run"]["test"] == result["test"] and config["training"]["data.shots"] == 2
    card = (out / "README.md").read_text()
    assert f"| test | data | all | {result['test']['accuracy']:.2f} | {result['test']['macro_f1']:.2f} | 1 |" in card
    assert 'promptclip.load_run("tip")' in card and "promptclip predict tip img.jpg" in card
    assert 'upload_folder(repo_id="YOUR_NAME/REPO", folder_path="tip", repo_type="model")' in card


def test_an_unfinished_run_a_full_folder_and_the_run_folder_itself_are_refused(made, tmp_path):
    _, found = made
    run_dir, _ = found["coop"]
    unfinished = shutil.copytree(run_dir, tmp_path / "unfinished")
    (unfinished / "result.json").unlink()
    with pytest.raises(PromptclipError, match="has not finished training"):
        export_run(unfinished, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "adapter_model.safetensors").write_bytes(b"stale")
    with pytest.raises(PromptclipError, match="is not empty .*--overwrite"):
        export_run(run_dir, full)
    assert (full / "adapter_model.safetensors").read_bytes() == b"stale"
    export_run(run_dir, full, overwrite=True)
    assert (full / "adapter_model.safetensors").read_bytes() == (run_dir / "prompts.safetensors").read_bytes()
    with pytest.raises(PromptclipError, match="is the run folder itself"):
        export_run(run_dir, run_dir, overwrite=True)


@pytest.mark.slow
def test_local_weights_are_refused_or_recorded_by_sha256_and_checked_on_load(made, tmp_path):
    data, found = made
    weights = tmp_path / "weights" / "tiny.pt"
    weights.parent.mkdir()
    torch.save(FrozenCLIP.load("tiny-vit").model.state_dict(), weights)  # the very weights the run was trained on
    run_dir = shutil.copytree(found["coop"][0], tmp_path / "local-run")
    meta = json.loads((run_dir / "prompts.json").read_text())
    meta["backbone"]["pretrained"] = str(weights)
    (run_dir / "prompts.json").write_text(json.dumps(meta))
    with pytest.raises(PromptclipError, match=f"local weights file {re.escape(str(weights))}.*--allow-local-weights"):
        export_run(run_dir, tmp_path / "out")
    out = export_run(run_dir, tmp_path / "out", allow_local_weights=True)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert config["revision"] == config["backbone"]["pretrained"] == "tiny.pt"
    assert config["weights_sha256"] in (out / "README.md").read_text()
    with pytest.raises(PromptclipError, match="does not exist here"):
        load_run(out, device="cpu")
    shutil.copy(weights, out / "tiny.pt")
    paths = images_of(data)[:4]
    assert torch.equal(logits_of(out, paths), logits_of(found["coop"][0], paths))
    (out / "tiny.pt").write_bytes(weights.read_bytes() + b"other weights")
    with pytest.raises(PromptclipError, match="is not the weights file .* sha256"):
        load_run(out, device="cpu")


def test_a_damaged_or_foreign_adapter_config_is_named(made, tmp_path):
    data, found = made
    image = images_of(data)[0]
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "task_type": "CAUSAL_LM",
                                                          "base_model_name_or_path": "meta-llama/Llama-2-7b-hf"}))
    save_file({"base_model.model.q_proj.lora_A.weight": torch.zeros(8, 16)}, str(lora / "adapter_model.safetensors"))
    for load in (lambda d: load_run(d, device="cpu"), lambda d: predict(d, [image], device="cpu")):
        with pytest.raises(PromptclipError, match="PEFT adapter of type LORA for meta-llama/Llama-2-7b-hf, not a "
                                                  "promptclip adapter"):
            load(lora)
    out = export_run(found["coop"][0], tmp_path / "coop")
    config_file, text = out / "adapter_config.json", (out / "adapter_config.json").read_text()
    config_file.write_text(text[: len(text) // 2])
    with pytest.raises(PromptclipError, match="adapter_config.json is not valid JSON.*export the run again"):
        load_run(out, device="cpu")
    config_file.write_text(json.dumps({**json.loads(text), "adapter_format": 99}))
    with pytest.raises(PromptclipError, match="adapter_format 99.*upgrade promptclip"):
        load_run(out, device="cpu")
    config_file.write_text(text)
    save_file({"text.ctx": torch.zeros(3, 32)}, str(out / "adapter_model.safetensors"))
    with pytest.raises(PromptclipError, match="adapter_model.safetensors does not match its adapter_config.json"):
        predict(out, [image], device="cpu")


def test_the_export_command(made, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="promptclip")
    add_export_command(parser.add_subparsers(required=True))
    run_dir = made[1]["coop"][0]
    args = parser.parse_args(["export", str(run_dir), str(tmp_path / "out")])
    assert args.func(args) == 0 and "promptclip predict" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["method"] == "coop"
    with pytest.raises(PromptclipError, match="--overwrite"):
        args.func(args)
    args = parser.parse_args(["export", str(run_dir), str(tmp_path / "out"), "--overwrite"])
    assert args.func(args) == 0
