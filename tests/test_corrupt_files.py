"""Every file promptclip reads, damaged or wrong: one clear line naming the file, or a recomputed cache."""
import argparse
import json
import logging
import random
import warnings
import zipfile

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from promptclip.backbone import FrozenCLIP
from promptclip.data.base import Item
from promptclip.engine.cache import FeatureCache
from promptclip.engine.predict import predict
from promptclip.engine.prompts import load_prompts, save_prompts
from promptclip.errors import BackboneError, DataError, PromptclipError
from promptclip.learners.base import LEARNERS
from promptclip.learners.coop import CoOpConfig
from promptclip.model import PromptedCLIP
from promptclip.runs import PROMPTS, PROMPTS_META
from promptclip.architecture import TINY_CONFIG_DIR


def random_bytes(n=4096):
    """Seeded bytes that start like no known format."""
    return b"\x07" + random.Random(0).randbytes(n - 1)


def assert_one_line(err, path):
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "weights_only" not in message, message


# ------------------------------------------------------------------------------------------ model checkpoints
def tiny_state(tiny):
    return {k: v.contiguous() for k, v in tiny.model.state_dict().items()}


def write_checkpoint(kind, tiny, folder):
    """A bad ``model.pretrained`` file of ``kind`` in ``folder``; returns its path."""
    path = folder / {"json": "weights.json", "text": "weights.txt", "zip": "weights.zip",
                     "truncated safetensors": "weights.safetensors", "torch named safetensors": "w.safetensors",
                     "directory": "weights"}.get(kind, "weights.pt")
    if kind == "random bytes":
        path.write_bytes(random_bytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "json":
        path.write_text(json.dumps({"model_cfg": {"embed_dim": 32}}))
    elif kind == "text":
        path.write_text("<html><body>Sign in to download this file</body></html>\n")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("weights/readme.txt", "not a checkpoint")
    elif kind == "python objects":
        torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": tiny.model.state_dict()}, path)
    elif kind == "truncated torch":
        torch.save(tiny.model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == "truncated safetensors":
        save_file(tiny_state(tiny), path)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == "safetensors named .pt":
        save_file(tiny_state(tiny), path)
    elif kind == "torch named safetensors":
        torch.save(tiny.model.state_dict(), path)
    elif kind == "nested":
        torch.save({"model": tiny.model.state_dict(), "epoch": 3}, path)
    elif kind == "extra entry":
        torch.save({"epoch": 3, **tiny.model.state_dict()}, path)
    elif kind == "list":
        torch.save([torch.zeros(3)], path)
    elif kind == "torchscript":
        with warnings.catch_warnings():  # torch.jit.script is deprecated, but such files exist (OpenAI's weights)
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    elif kind == "other names":
        torch.save({"vision_model.embeddings.weight": torch.zeros(3)}, path)
    elif kind == "directory":
        path.mkdir()
    return path


BAD_CHECKPOINTS = {
    "random bytes": "neither a PyTorch nor a safetensors file",
    "empty": "is empty",
    "json": "is a text file, not weights.*local-dir:",
    "text": "is a text file, not weights",
    "zip": "zip archive but not a PyTorch checkpoint",
    "python objects": r"not a plain state dict.*argparse\.Namespace.*torch\.save\(model\.state_dict\(\)",
    "truncated torch": "damaged or incomplete",
    "truncated safetensors": "damaged or incomplete",
    "safetensors named .pt": r"safetensors file but its name.*rename it to end in \.safetensors",
    "torch named safetensors": r"PyTorch file but its name.*rename it to end in \.pt",
    "nested": "no tensors at its top level.*under 'model'",
    "extra entry": r"does not match model\.name=tiny-vit exactly \(tensors: 1 unexpected \(epoch\)\)",
    "list": "holds a list, not a state dict",
    "torchscript": "TorchScript archive",
    "other names": "not an open_clip checkpoint",
    "directory": "is a folder, not a weights file",
}


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_file_is_one_clear_line(tiny, tmp_path, kind):
    path = write_checkpoint(kind, tiny, tmp_path)
    with pytest.raises(BackboneError, match=BAD_CHECKPOINTS[kind]) as err:
        FrozenCLIP.load("tiny-vit", pretrained=str(path))
    assert_one_line(err, path)
    assert err.value.__cause__ is None and (err.value.__suppress_context__ or err.value.__context__ is None)


def test_missing_checkpoint_path_says_what_to_check(tmp_path):
    path = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(BackboneError, match="does not exist: check model.pretrained") as err:
        FrozenCLIP.load("tiny-vit", pretrained=str(path))
    assert_one_line(err, path)


@pytest.mark.parametrize("kind, weights", [("random bytes", "open_clip_model.safetensors"),
                                           ("python objects", "open_clip_pytorch_model.bin"),
                                           ("empty", "open_clip_pytorch_model.bin")])
def test_bad_weights_in_a_local_dir_model(tiny, tmp_path, kind, weights):
    config = json.loads((TINY_CONFIG_DIR / "tiny-vit.json").read_text())
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    write_checkpoint(kind, tiny, tmp_path).rename(tmp_path / weights)
    with pytest.raises(BackboneError, match=BAD_CHECKPOINTS[kind]) as err:
        FrozenCLIP.load(f"local-dir:{tmp_path}")
    assert_one_line(err, tmp_path / weights)


# ---------------------------------------------------------------------------------------------- saved prompts
CLASSES = ["cat", "dog", "car"]


@pytest.fixture
def run_dir(tiny, tmp_path):
    """A run folder holding CoOp prompts learned on tiny-vit with random weights."""
    model = PromptedCLIP(tiny, LEARNERS.get("coop")(CoOpConfig(n_ctx=4), tiny, CLASSES))
    folder = tmp_path / "run"
    save_prompts(model, folder, "coop")
    return folder


def edit_meta(run_dir, change):
    meta = json.loads((run_dir / PROMPTS_META).read_text())
    (run_dir / PROMPTS_META).write_text(json.dumps(change(meta)))


def test_saved_prompts_load(run_dir):
    assert load_prompts(run_dir).classnames == CLASSES


def damage_tensors(run_dir, how):
    path = run_dir / PROMPTS
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-5])
    else:
        path.write_bytes(random_bytes())
    return path


@pytest.mark.parametrize("how, message", [("missing", "is missing"), ("empty", "is empty"),
                                          ("truncated", "damaged or incomplete"),
                                          ("random bytes", "damaged or incomplete")])
def test_damaged_prompt_tensors(run_dir, how, message):
    path = damage_tensors(run_dir, how)
    with pytest.raises(PromptclipError, match=f"{message}.*--replace") as err:
        load_prompts(run_dir)
    assert_one_line(err, path)


DROP = object()


def change(*keys, to):
    """An edit of prompts.json's content: ``meta[k1][k2]... = to`` (or deleted for DROP)."""
    def edit(meta):
        *parents, last = keys
        inner = meta
        for key in parents:
            inner = inner[key]
        if to is DROP:
            del inner[last]
        else:
            inner[last] = to
        return meta
    return edit


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("{not json", "is not valid JSON"),
    (change("learners", to=DROP), "learners missing"),
    (change("backbone", to=DROP), "backbone missing"),
    (change("classnames", to=DROP), "classnames missing"),
    (lambda meta: [meta], "holds an array instead of an object"),
    (change("backbone", "text_width", to=DROP), "backbone must hold"),
    (change("classnames", to=[]), "classnames must be a non-empty list"),
    (change("format", to=99), "format 99.*upgrade promptclip"),
    (change("learners", "text", "name", to="nosuchlearner"), "cannot build.*nosuchlearner.*import the plugin"),
    (change("learners", "text", "n_ctx", to=6), r"does not fit the text learner.*4×64 instead of 6×64"),
    (change("shapes", "text.ctx", to=[5, 64]), r"does not match its prompts\.json"),
])
def test_bad_prompt_metadata(run_dir, content, message):
    path = run_dir / PROMPTS_META
    if isinstance(content, str):
        path.write_text(content)
    else:
        edit_meta(run_dir, content)
    with pytest.raises(PromptclipError, match=message) as err:
        load_prompts(run_dir)
    assert_one_line(err, path.parent)


def test_missing_metadata_and_missing_run_folder(run_dir, tmp_path):
    (run_dir / PROMPTS_META).unlink()
    with pytest.raises(PromptclipError, match=f"{PROMPTS_META} is missing") as err:
        load_prompts(run_dir)
    assert_one_line(err, run_dir)
    with pytest.raises(PromptclipError, match="does not exist") as err:
        load_prompts(tmp_path / "nowhere")
    assert_one_line(err, tmp_path / "nowhere")


def tree(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize("field, value", [("pretrained", "../weights.pt"), ("pretrained", "sub/../../weights.pt"),
                                          ("model", "local-dir:../model")])
def test_relative_paths_in_metadata_stay_inside_the_run_folder(tiny, run_dir, field, value):
    torch.save(tiny.model.state_dict(), run_dir.parent / "weights.pt")  # exists, but outside the run folder
    (run_dir.parent / "model").mkdir()
    edit_meta(run_dir, change("backbone", field, to=value))
    before = tree(run_dir.parent)
    with pytest.raises(PromptclipError, match="leads out of the run folder") as err:
        load_prompts(run_dir)
    assert_one_line(err, run_dir / PROMPTS_META)
    assert tree(run_dir.parent) == before  # nothing created


def test_weights_named_in_metadata(tiny, run_dir, tmp_path):
    torch.save(tiny.model.state_dict(), run_dir / "weights.pt")
    edit_meta(run_dir, change("backbone", "pretrained", to="weights.pt"))
    assert load_prompts(run_dir).backbone.pretrained == str((run_dir / "weights.pt").resolve())
    # an absolute path is the file the prompts were learned on: read (weights only), never created
    missing = tmp_path / "elsewhere" / "weights.pt"
    edit_meta(run_dir, change("backbone", "pretrained", to=str(missing)))
    before = tree(tmp_path)
    with pytest.raises(PromptclipError, match="does not exist here") as err:
        load_prompts(run_dir)
    assert_one_line(err, missing)
    assert tree(tmp_path) == before
    edit_meta(run_dir, change("backbone", "pretrained", to=str(run_dir / PROMPTS_META)))
    with pytest.raises(BackboneError, match="is a text file"):
        load_prompts(run_dir)


# ------------------------------------------------------------------------------------------------------ caches
def test_corrupt_feature_cache_file_is_recomputed_with_one_warning(tmp_path, caplog):
    items = [Item(str(tmp_path / f"{i}.png"), i % 2) for i in range(3)]
    features, labels = torch.randn(3, 4), torch.tensor([0, 1, 0])
    cache = FeatureCache(tmp_path)
    cache.directory.mkdir(parents=True)
    cache.path("k").write_bytes(random_bytes())
    calls = []

    def compute():
        calls.append(1)
        return features, labels

    with caplog.at_level(logging.WARNING, logger="promptclip"):
        got, _ = cache.get("k", items, compute)
        again, _ = cache.get("k", items, compute)
    assert len(calls) == 1 and torch.equal(got, features) and torch.equal(again, features)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(logged) == 1 and str(cache.path("k")) in logged[0] and "again" in logged[0]


def test_predict_names_an_image_that_is_missing_or_not_an_image(run_dir, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(good)
    (result,) = predict(run_dir, [good], topk=2, device="cpu")
    assert result["path"] == str(good) and len(result["top"]) == 2
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path, message in [(tmp_path / "missing.jpg", "does not exist"), (text, "not an image"),
                          (tmp_path, "is a folder")]:
        with pytest.raises(DataError, match=message) as err:
            predict(run_dir, [good, path], device="cpu")
        assert_one_line(err, path)
