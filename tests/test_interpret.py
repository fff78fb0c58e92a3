"""`promptclip interpret`: nearest words and prompt norms of tiny runs, checked against direct computations."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from promptclip.backbone import FrozenCLIP
from promptclip.cli import main
from promptclip.interpret import format_interpretation, interpret_run, nearest_tokens

KEYS = {"run", "method", "backbone", "learners", "image_conditioned", "topk", "token_embedding_norm", "context",
        "text_layers", "vision_layers", "vision_placement", "vision_reference", "parameters"}


@pytest.fixture(scope="module")
def runs(digits_root, tmp_path_factory):
    """One finished run folder per preset: 1 epoch on 2 shots of digits, tiny-vit with random weights."""
    root = tmp_path_factory.mktemp("interpret")
    common = [f"data.root={digits_root}", "model.name=tiny-vit", "model.pretrained=null", "data.shots=2",
              "train.epochs=1", "train.batch_size=8", "train.device=cpu", "train.evaluate=false",
              f"output.cache_dir={root / 'cache'}"]
    presets = {"coop": ["text.n_ctx=4"], "coop_csc": ["text.n_ctx=2"], "cocoop": [], "maple": ["text.depth=2"],
               "vpt_shallow": ["vision.n_tokens=3"], "zeroshot": [], "linear_probe": []}
    folders = {}
    for preset, extra in presets.items():
        folders[preset] = root / preset
        assert main(["-q", "train", "-c", preset, *common, *extra, f"output.dir={folders[preset]}"]) == 0
    return folders


@pytest.fixture(scope="module")
def table():
    """The token-embedding table, read straight from open_clip's module (not through the backbone's lookup)."""
    return FrozenCLIP.load("tiny-vit").model.token_embedding.weight.detach().double()


def test_nearest_words_equal_a_brute_force_search(runs, table, tiny):
    result = interpret_run(runs["coop"], topk=3)
    ctx = load_file(runs["coop"] / "prompts.safetensors")["text.ctx"].double()
    distances = (ctx[:, None, :] - table[None]).norm(dim=-1)  # [n_ctx, V]
    assert [v["slot"] for v in result["context"]["vectors"]] == [0, 1, 2, 3]
    for vector, row, own in zip(result["context"]["vectors"], distances, ctx):
        expected = row.argsort()[:3].tolist()
        assert [n["id"] for n in vector["nearest"]] == expected
        assert [n["distance"] for n in vector["nearest"]] == pytest.approx(row[expected].tolist(), abs=1e-6)
        assert [n["token"] for n in vector["nearest"]] == [tiny.tokenizer.decode([i]).strip() for i in expected]
        assert vector["norm"] == pytest.approx(own.norm().item(), rel=1e-9)
        assert vector["class"] is None


def test_class_specific_context_is_listed_per_class(runs, table):
    result = interpret_run(runs["coop_csc"], topk=2)
    context = result["context"]
    ctx = load_file(runs["coop_csc"] / "prompts.safetensors")["text.ctx"].double()  # [C, 2, D]
    assert context["class_specific"] and len(context["vectors"]) == ctx.shape[0] * 2
    classnames = json.loads((runs["coop_csc"] / "prompts.json").read_text())["classnames"]
    last = context["vectors"][-1]
    assert (last["class"], last["slot"]) == (classnames[-1], 1)
    assert last["nearest"][0]["id"] == (ctx[-1, 1] - table).norm(dim=-1).argmin().item()


def test_a_context_vector_on_a_word_reports_that_word_at_distance_zero(runs, table, tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["coop"], run)
    tensors = load_file(run / "prompts.safetensors")
    photo, dog = (tiny.tokenizer.encode(word)[0] for word in ("photo", "dog"))
    tensors["text.ctx"][1] = table[photo].float()
    tensors["text.ctx"][3] = table[dog].float()
    save_file(tensors, run / "prompts.safetensors")
    vectors = interpret_run(run)["context"]["vectors"]
    for slot, word, token_id in ((1, "photo", photo), (3, "dog", dog)):
        first = vectors[slot]["nearest"][0]
        assert (first["token"], first["id"]) == (word, token_id)
        assert first["distance"] == pytest.approx(0.0, abs=1e-6)
        assert vectors[slot]["nearest"][1]["distance"] > 1e-3


def test_nearest_tokens_in_chunks_equal_one_pass(monkeypatch):
    vectors, table = torch.randn(7, 5), torch.randn(40, 5)
    whole = nearest_tokens(vectors, table, 4)
    monkeypatch.setattr("promptclip.interpret.DISTANCE_BUDGET", 80)  # two vectors per chunk
    chunked = nearest_tokens(vectors, table, 4)
    assert torch.equal(whole[1], chunked[1]) and torch.allclose(whole[0], chunked[0])
    assert torch.equal(whole[1], torch.cdist(vectors.double(), table.double()).argsort(-1)[:, :4])


def test_json_has_the_documented_keys(runs, capsys):
    assert main(["-q", "interpret", str(runs["coop"]), "--json", "--topk", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == KEYS
    assert result["learners"] == {"text": "coop"} and result["topk"] == 2
    assert set(result["token_embedding_norm"]) == {"vocabulary", "mean", "median", "min", "max"}
    assert set(result["context"]) == {"tensor", "class_specific", "n_ctx", "fixed_text", "image_conditioned", "vectors"}
    vector = result["context"]["vectors"][0]
    assert set(vector) == {"class", "slot", "norm", "nearest"} and len(vector["nearest"]) == 2
    assert set(vector["nearest"][0]) == {"token", "id", "distance"}
    assert result["text_layers"] == [] and result["vision_layers"] == [] and result["vision_placement"] is None

    assert main(["-q", "interpret", str(runs["coop"])]) == 0
    text = capsys.readouterr().out
    assert "nearest tokens by Euclidean distance" in text and "text.ctx" in text
    assert vector["nearest"][0]["token"] in text


def test_maple_norms_equal_a_direct_computation(runs, table):
    result = interpret_run(runs["maple"])
    tensors = {k: v.double() for k, v in load_file(runs["maple"] / "prompts.safetensors").items()}
    layers = {0: tensors["text.ctx"], 1: tensors["text.text_deep.tokens"][0]}
    assert [e["layer"] for e in result["text_layers"]] == [0, 1]
    for entry in result["text_layers"]:
        assert entry["norms"] == pytest.approx(layers[entry["layer"]].norm(dim=-1).tolist(), rel=1e-9)
    for entry in result["vision_layers"]:  # the couplings' outputs F_i(P_i), what the image tower receives
        i = entry["layer"]
        out = layers[i] @ tensors[f"text.couplings.{i}.weight"].t() + tensors[f"text.couplings.{i}.bias"]
        assert entry["norms"] == pytest.approx(out.norm(dim=-1).tolist(), rel=1e-5)
    assert [e["layer"] for e in result["vision_layers"]] == [0, 1]
    assert result["vision_placement"] == {"placement": "after_patches", "before_ln_pre": True}
    assert result["context"]["fixed_text"] == "of a"
    norms = table.norm(dim=-1)
    assert result["token_embedding_norm"]["mean"] == pytest.approx(norms.mean().item(), rel=1e-6)
    assert result["token_embedding_norm"]["vocabulary"] == table.shape[0]
    visual = FrozenCLIP.load("tiny-vit").model.visual
    assert result["vision_reference"]["class_embedding_norm"] == pytest.approx(
        visual.class_embedding.double().norm().item(), rel=1e-9)
    assert result["vision_reference"]["positional_embedding_norm"]["mean"] == pytest.approx(
        visual.positional_embedding.double().norm(dim=-1).mean().item(), rel=1e-9)
    assert "vision prompt tokens per layer" in format_interpretation(result)


def test_vision_prompts_and_meta_net_norms(runs):
    vpt = interpret_run(runs["vpt_shallow"])
    tokens = load_file(runs["vpt_shallow"] / "prompts.safetensors")["vision.prompts.tokens"].double()
    assert vpt["context"] is None and vpt["learners"] == {"text": "zeroshot", "vision": "vpt"}
    assert vpt["vision_layers"] == [{"layer": 0, "norms": pytest.approx(tokens[0].norm(dim=-1).tolist(), rel=1e-6)}]
    assert vpt["vision_placement"] == {"placement": "after_cls", "before_ln_pre": False}

    cocoop = interpret_run(runs["cocoop"])
    tensors = load_file(runs["cocoop"] / "prompts.safetensors")
    assert cocoop["image_conditioned"] and cocoop["context"]["image_conditioned"]
    assert {p["name"]: p["shape"] for p in cocoop["parameters"]} == {k: list(v.shape) for k, v in tensors.items()}
    for p in cocoop["parameters"]:
        assert p["norm"] == pytest.approx(tensors[p["name"]].double().norm().item(), rel=1e-9)
    assert "meta-net shift" in format_interpretation(cocoop)


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "is not a run folder"),
    ("unfinished", "has not finished training (no prompts.safetensors)"),
    ("linear_probe", "is a linear-probe run"),
    ("zeroshot", "learned nothing (zeroshot"),
])
def test_runs_without_learned_prompts_are_clear_errors(runs, tmp_path, capsys, case, message):
    folder = {"missing": tmp_path / "nowhere", "empty": tmp_path, "linear_probe": runs["linear_probe"],
              "zeroshot": runs["zeroshot"], "unfinished": tmp_path / "unfinished"}[case]
    if case == "unfinished":  # a run stopped before it saved its prompts
        shutil.copytree(runs["coop"], folder)
        for name in ("prompts.safetensors", "prompts.json", "result.json"):
            (folder / name).unlink()
    assert main(["-q", "interpret", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptclip: error:") and message in err and "Traceback" not in err


def test_topk_must_be_positive(runs, capsys):
    assert main(["-q", "interpret", str(runs["coop"]), "--topk", "0"]) == 2
    assert "--topk must be at least 1" in capsys.readouterr().err
