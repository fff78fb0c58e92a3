"""Training from cached views: a view is seeded per image, so cold, warm and uncached training agree exactly, methods
share the cache, ``train.views=K`` encodes K views, and an interrupted run resumes to the same prompts."""
import pytest
import torch

from promptclip.backbone import FrozenCLIP
from promptclip.config import build_config
from promptclip.data.loaders import ImageItems, transform_for, view_seeds
from promptclip.engine import load_prompts, prepare_data, run


def config(root, tmp_path, preset="coop", **overrides):
    base = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 2,
            "train.epochs": 3, "train.batch_size": 4, "optim.name": "adamw", "optim.lr": 0.01,
            "optim.weight_decay": 0, "train.device": "cpu", "train.eval_batch_size": 7,
            "output.root": tmp_path / "runs", "output.cache_dir": tmp_path / "cache"}
    if preset in ("coop", "cocoop"):
        base["text.n_ctx"] = 4
    base.update(overrides)
    return build_config([preset], [f"{k}={v}" for k, v in base.items()])


@pytest.fixture
def counted():
    """A tiny backbone whose image tower counts the images it encodes."""
    backbone = FrozenCLIP.load("tiny-vit")
    images = []
    encode = backbone.encode_image
    backbone.encode_image = lambda x, prompts=None, adapters=None: images.append(len(x)) or encode(x, prompts, adapters)
    return backbone, images


def views_stored(tmp_path, cache="cache", evaluated=True):
    """Feature files in the cache, less the test split's."""
    return len(list((tmp_path / cache / "features").glob("*.safetensors"))) - evaluated


@pytest.mark.slow
def test_a_warm_cache_gives_the_cold_runs_prompts_and_result(digits_root, tmp_path, counted):
    backbone, images = counted
    cold = run(config(digits_root, tmp_path, **{"output.dir": tmp_path / "cold"}), progress=False, backbone=backbone)
    test_images = cold["test"]["num_images"]
    assert sum(images) == 3 * 20 + test_images and views_stored(tmp_path) == 3  # one view per epoch
    warm = run(config(digits_root, tmp_path, **{"output.dir": tmp_path / "warm"}), progress=False, backbone=backbone)
    assert sum(images) == 3 * 20 + test_images  # every view and the test features came from the cache
    assert warm["test"] == cold["test"] and warm["train_loss"] == cold["train_loss"]
    assert torch.equal(load_prompts(tmp_path / "cold").text.ctx, load_prompts(tmp_path / "warm").text.ctx)


@pytest.mark.slow
def test_training_without_the_cache_gives_the_same_prompts(digits_root, tmp_path):
    cached = run(config(digits_root, tmp_path, **{"output.dir": tmp_path / "a"}), progress=False)
    uncached = run(config(digits_root, tmp_path, **{"output.dir": tmp_path / "b", "output.cache_dir": tmp_path / "c2",
                                                     "output.cache_views": "false"}), progress=False)
    assert views_stored(tmp_path) == 3 and views_stored(tmp_path, "c2") == 0
    assert uncached["test"] == cached["test"] and uncached["train_loss"] == cached["train_loss"]
    assert torch.equal(load_prompts(tmp_path / "a").text.ctx, load_prompts(tmp_path / "b").text.ctx)


@pytest.mark.slow
def test_methods_in_a_sweep_share_the_views(digits_root, tmp_path, counted):
    """CoCoOp's 2 epochs see the views CoOp's first 2 epochs encoded; another seed is another draw and other views;
    a method that prompts the image tower encodes images itself and stores nothing."""
    backbone, images = counted
    fast = {"train.evaluate": "false"}
    run(config(digits_root, tmp_path, **fast), progress=False, backbone=backbone)
    assert sum(images) == 3 * 20
    run(config(digits_root, tmp_path, "cocoop", **fast, **{"train.epochs": 2, "train.batch_size": 2}),
        progress=False, backbone=backbone)
    assert sum(images) == 3 * 20 and views_stored(tmp_path, evaluated=False) == 3
    run(config(digits_root, tmp_path, "cocoop", **fast, **{"train.epochs": 2, "train.batch_size": 2, "seed": 2}),
        progress=False, backbone=backbone)
    assert sum(images) == 5 * 20 and views_stored(tmp_path, evaluated=False) == 5
    run(config(digits_root, tmp_path, "vpt_shallow", **fast, **{"train.epochs": 1, "vision.n_tokens": 2}),
        progress=False, backbone=backbone)
    assert sum(images) == 6 * 20 and views_stored(tmp_path, evaluated=False) == 5


def test_k_views_are_encoded_once_each_and_shared_with_fresh_views(digits_root, tmp_path, counted):
    backbone, images = counted
    fast = {"train.evaluate": "false", "train.epochs": 5}
    run(config(digits_root, tmp_path, **fast, **{"train.views": 2, "output.dir": tmp_path / "k"}), progress=False,
        backbone=backbone)
    assert sum(images) == 2 * 20 and views_stored(tmp_path, evaluated=False) == 2
    run(config(digits_root, tmp_path, **fast, **{"output.dir": tmp_path / "fresh"}), progress=False, backbone=backbone)
    assert sum(images) == 5 * 20 and views_stored(tmp_path, evaluated=False) == 5  # epochs 0, 1 are views 0, 1


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_an_interrupted_run_with_cached_views_resumes_to_the_same_prompts(digits_root, tmp_path):
    fast = {"train.evaluate": "false", "train.epochs": 4}
    full = run(config(digits_root, tmp_path, **fast, **{"output.dir": tmp_path / "full"}), progress=False)

    def stop_after_second_epoch(epoch):
        if epoch == 1:
            raise Interrupt

    cut = config(digits_root, tmp_path, **fast, **{"output.dir": tmp_path / "cut",
                                                   "output.cache_dir": tmp_path / "other_cache"})
    with pytest.raises(Interrupt):
        run(cut, progress=False, on_epoch_end=stop_after_second_epoch)
    resumed = run(cut, progress=False)
    assert resumed["train_loss"] == full["train_loss"]
    assert torch.equal(load_prompts(tmp_path / "full").text.ctx, load_prompts(tmp_path / "cut").text.ctx)


def test_an_images_view_does_not_depend_on_the_loader_order(digits_root, tmp_path, tiny):
    items = prepare_data(config(digits_root, tmp_path)).train[:6]
    transform = transform_for(tiny, train=True)
    seeds = view_seeds(items, 1, 0)
    assert view_seeds(items[::-1], 1, 0) == seeds[::-1] and len(set(seeds)) == 6
    forward, backward = ImageItems(items, transform, seeds), ImageItems(items[::-1], transform, seeds[::-1])
    assert all(torch.equal(forward[i][0], backward[5 - i][0]) for i in range(6))
    next_view = ImageItems(items, transform, view_seeds(items, 1, 1))
    assert not all(torch.equal(forward[i][0], next_view[i][0]) for i in range(6))
    state = torch.get_rng_state()
    forward[0]
    assert torch.equal(torch.get_rng_state(), state)  # the global random stream is untouched
