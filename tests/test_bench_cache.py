"""The feature cache (equal to fresh features, reused, invalidated) and the linear probe that uses it."""
import json
import logging
import os

import pytest
import torch

from bench_fixtures import TINY, coloured_folder
from promptclip.backbone import FrozenCLIP
from promptclip.config import build_config
from promptclip.data.loaders import eval_loader, transform_for
from promptclip.engine import cache as cache_module
from promptclip.engine.cache import TrainingViews, frozen_features
from promptclip.engine.evaluation import evaluate
from promptclip.engine.runner import build_model, evaluate_model, prepare_data, run
from promptclip.hooks import PrepareContext
from promptclip.methods.dapt import class_prototypes
from promptclip.runs import default_run_dir as run_dir_for

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return coloured_folder(tmp_path_factory.mktemp("coloured"))


@pytest.fixture
def counted(monkeypatch):
    """Counts the passes through the image encoder that the cache makes."""
    calls = []
    real = cache_module.encode_loader

    def encode(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "encode_loader", encode)
    return calls


def config(folder, tmp_path, *presets, extra=()):
    return build_config(presets or ("zeroshot",), [*TINY, "data.name=imagefolder", f"data.root={folder}",
                                                   f"output.root={tmp_path / 'runs'}",
                                                   f"output.cache_dir={tmp_path / 'cache'}", "data.shots=4", *extra])


def features(backbone, items, tmp_path):
    return frozen_features(backbone, items, tmp_path / "cache", 7, 0, CPU, "fp32", progress=False)


def fresh(backbone, items):
    loader = eval_loader(items, transform_for(backbone, train=False), 7)
    with torch.no_grad():
        return torch.cat([torch.nn.functional.normalize(backbone.encode_image(x), dim=-1) for x, _ in loader])


def test_cached_features_equal_fresh_ones_and_are_reused(folder, tmp_path, counted):
    cfg = config(folder, tmp_path)
    items = prepare_data(cfg).test
    backbone = FrozenCLIP.load("tiny-vit")
    first, labels = features(backbone, items, tmp_path)
    again, labels_again = features(backbone, items, tmp_path)
    assert len(counted) == 1  # the second call read the file
    assert torch.equal(first, again) and torch.equal(labels, labels_again)
    assert labels.tolist() == [i.label for i in items]
    assert torch.allclose(first, fresh(backbone, items), atol=1e-6)
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 1


@pytest.mark.slow
def test_cache_is_invalidated_by_backbone_transform_and_images(folder, tmp_path, counted):
    items = prepare_data(config(folder, tmp_path)).test
    backbone = FrozenCLIP.load("tiny-vit")
    base, _ = features(backbone, items, tmp_path)
    other_weights = FrozenCLIP.load("tiny-vit")
    with torch.no_grad():
        other_weights.model.visual.proj.add_(0.5)  # random weights are told apart by their hash
    assert not torch.allclose(features(other_weights, items, tmp_path)[0], base)
    features(FrozenCLIP.load("tiny-vit-wide"), items, tmp_path)
    assert len(counted) == 3
    backbone.image_mean = (0.0, 0.0, 0.0)  # another normalisation: another transform signature
    changed, _ = features(backbone, items, tmp_path)
    assert not torch.allclose(changed, base) and torch.allclose(changed, fresh(backbone, items), atol=1e-6)
    assert len(counted) == 4
    path = items[0].path
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))  # an image changed on disk
    features(backbone, items, tmp_path)
    assert len(counted) == 5
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 5


def test_damaged_cache_contents_are_recomputed_with_a_warning(folder, tmp_path, counted, caplog):
    """Zeroed bytes inside a cached matrix (header and labels intact) are caught by the stored checksum."""
    items = prepare_data(config(folder, tmp_path)).test
    backbone = FrozenCLIP.load("tiny-vit")
    good, _ = features(backbone, items, tmp_path)
    (path,) = (tmp_path / "cache" / "features").glob("*.safetensors")
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    start, _ = json.loads(data[8:8 + size])["features"]["data_offsets"]
    data[8 + size + start:8 + size + start + 64] = bytes(64)  # the first rows of the features, labels untouched
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="promptclip"):
        again, _ = features(backbone, items, tmp_path)
    assert len(counted) == 2  # recomputed, not read
    assert torch.equal(again, good)
    assert [r.getMessage() for r in caplog.records if "checksum" in r.getMessage()] == \
        [f"Feature cache file {path} does not match the checksum stored with it (damaged on disk); computing the "
         f"features again."]
    features(backbone, items, tmp_path)
    assert len(counted) == 2  # the recomputed entry was stored again, sound


def test_evaluation_through_the_cache_equals_the_image_path(folder, tmp_path):
    cfg = config(folder, tmp_path, "coop", extra=["text.n_ctx=4"])
    dataset = prepare_data(cfg)
    model = build_model(cfg, FrozenCLIP.load("tiny-vit"), dataset)
    cached = evaluate_model(model, dataset, cfg, CPU, "fp32", progress=False)
    direct = evaluate(model, eval_loader(dataset.test, transform_for(model.backbone, train=False), 7), CPU,
                      progress=False)
    assert cached == direct and cached["num_images"] == len(dataset.test)
    assert list((tmp_path / "cache" / "features").glob("*.safetensors"))


def test_dapt_prototypes_come_from_the_first_training_view_coop_cached(folder, tmp_path, counted):
    """The training features a loss prepares with are view 0 of the training views, shared through the cache."""
    one_epoch = ["train.epochs=1", "train.batch_size=4"]
    run(config(folder, tmp_path, "coop", extra=one_epoch), progress=False)
    coop_passes = len(counted)  # view 0 of the training split, then the test split
    cfg = config(folder, tmp_path, "dapt", extra=[*one_epoch, "text.n_ctx=4", "vision.n_tokens=2"])
    dataset = prepare_data(cfg)
    model = build_model(cfg, FrozenCLIP.load("tiny-vit"), dataset)
    views = TrainingViews(model.backbone, dataset.train, cfg.seed, 0, True, 5, 0, CPU, "fp32", tmp_path / "cache",
                          progress=False)
    model.losses["dapt_intra"].prepare(PrepareContext(model.backbone, dataset.classnames, dataset.template,
                                                      dataset.name, CPU, 1, lambda: views.features(0)))
    assert len(counted) == coop_passes  # no image-tower pass: CoOp's first view was in the cache
    features, labels = views.features(0)
    expected = class_prototypes(features, labels, dataset.num_classes)
    assert torch.equal(model.losses["dapt_intra"].prototypes, expected)


def _keys(tmp_path):
    return [p.stem for p in (tmp_path / "cache" / "features").glob("*.safetensors")]


@pytest.mark.slow
def test_linear_probe_is_a_method_sharing_cached_features(folder, tmp_path):
    zero = run(config(folder, tmp_path, "zeroshot"), progress=False)
    assert len(_keys(tmp_path)) == 1  # the test split
    cfg = config(folder, tmp_path, "linear_probe")
    probe = run(cfg, progress=False)
    assert len(_keys(tmp_path)) == 3  # + train and val; the test features were reused
    assert probe["method"] == "linear_probe" and probe["num_train_images"] == 12
    assert probe["test"]["num_images"] == zero["test"]["num_images"] == 15
    assert probe["test"]["accuracy"] > 80  # separable colours
    assert probe["val_accuracy"] > 80 and 1e-6 <= probe["C"] <= 1e6  # C searched on the validation split
    assert (run_dir_for(cfg) / "linear_probe.safetensors").is_file()
    fixed = run(config(folder, tmp_path / "fixed", "linear_probe", extra=["text.C=0.5"]), progress=False)
    assert fixed["C"] == 0.5 and "val_accuracy" not in fixed
    two = coloured_folder(tmp_path / "two", classes=2, seed=1)  # sklearn's binary case has a single row
    binary = run(config(two, tmp_path / "two_runs", "linear_probe"), progress=False)
    assert binary["num_classes"] == 2 and binary["test"]["accuracy"] > 80
