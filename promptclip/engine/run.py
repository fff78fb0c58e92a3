"""One run, start to finish: config → data → model → train → save prompts → evaluate → ``result.json``.

A run folder holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``prompts.safetensors`` + ``prompts.json``,
``checkpoint/`` while training, and ``result.json`` once finished. A finished run is not repeated; an interrupted
one resumes from its last checkpoint.
"""
from __future__ import annotations

import datetime
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

import torch

from .. import linear_probe
from ..backbone import FrozenCLIP
from ..config import Config, load_resolved, to_yaml
from ..data.base import Dataset, load_dataset
from ..data.fewshot import dataset_checksum, few_shot, subsample_classes
from ..data.loaders import eval_loader, transform_for
from ..errors import ConfigError
from ..learners.base import build_learner
from ..losses import LOSSES, PrepareContext
from ..model import PromptedCLIP
from ..utils import atomic_write_json, atomic_write_text, seed_everything, versions
from .cache import feature_loader, frozen_features, single_pass_features
from .evaluate import metrics_from_predictions, predict_loader
from .precision import resolve_device, resolve_precision
from .prompts import load_prompts, save_prompts
from .trainer import train

log = logging.getLogger("promptclip")
RESULT = "result.json"


def dataset_label(cfg: Config) -> str:
    """The dataset's name in folder names: the folder for imagefolder, the file stem for a description YAML."""
    if cfg.data.name == "imagefolder" and cfg.data.root:
        return Path(cfg.data.root).name
    return Path(cfg.data.name).stem if cfg.data.name.endswith((".yaml", ".yml")) else cfg.data.name


def run_dir_for(cfg: Config) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir)
    shots = f"shots_{cfg.data.shots}" if cfg.data.shots > 0 else "all_shots"
    dataset = dataset_label(cfg)
    return Path(cfg.output.root) / cfg.method_name / dataset / cfg.data.subsample / shots / f"seed_{cfg.seed}"


def prepare_data(cfg: Config, shots: Optional[int] = None, subsample: Optional[str] = None,
                 split_dir: Optional[Path] = None) -> Dataset:
    """Read the dataset, draw the few-shot split (before class subsampling, as the reference does), subsample."""
    ds = load_dataset(cfg.data.name, cfg.data.root, split_dir=split_dir, **cfg.data.options)
    for note in ds.notes:
        log.info("%s", note)
    shots = cfg.data.shots if shots is None else shots
    if shots > 0 and ds.train:
        ds = few_shot(ds, shots, cfg.seed, Path(cfg.output.cache_dir))
    return subsample_classes(ds, cfg.data.subsample if subsample is None else subsample)


def build_model(cfg: Config, backbone: FrozenCLIP, dataset: Dataset) -> PromptedCLIP:
    text = build_learner(cfg.text, backbone, dataset.classnames, dataset.template)
    vision = build_learner(cfg.vision, backbone, dataset.classnames, dataset.template) if cfg.vision else None
    losses = {name: LOSSES.get(name)(opts) for name, opts in cfg.losses.items()}
    return PromptedCLIP(backbone, text, vision, losses)


def load_backbone(cfg: Config, device: torch.device) -> FrozenCLIP:
    return FrozenCLIP.load(cfg.model.name, cfg.model.pretrained, device=device, cache_dir=cfg.model.cache_dir)


def read_result(run_dir: Union[str, Path]) -> Optional[dict]:
    path = Path(run_dir) / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def run(cfg: Config, progress: bool = True, on_epoch_end: Optional[Callable[[int], None]] = None,
        backbone: Optional[FrozenCLIP] = None, distributed=None) -> dict:
    """Train and evaluate one configuration; returns (and writes) its result. A finished run is read back."""
    run_dir = run_dir_for(cfg)
    done = read_result(run_dir)
    if done is not None:
        log.info("%s already finished (%s); skipping.", run_dir, RESULT)
        return done
    is_main = distributed is None or distributed.is_main
    if cfg.text is None:
        raise ConfigError("No text learner: set text.name (coop, zeroshot, ...) or use a preset (-c coop).")
    device = distributed.device if distributed is not None else resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    seed_everything(cfg.seed)
    started = time.time()
    dataset = prepare_data(cfg, split_dir=run_dir)
    backbone = backbone if backbone is not None else load_backbone(cfg, device)
    if linear_probe.is_linear_probe(cfg):  # logistic regression on frozen features instead of prompts
        if not is_main:
            return {}
        fields = linear_probe.fit_linear_probe(cfg, backbone, dataset, device, precision, run_dir, progress)
        return _finish(run_dir, cfg, dataset, {**fields, "train_seconds": round(time.time() - started, 2)})
    model = build_model(cfg, backbone, dataset).to(device)
    log.info("%s on %s (%d classes, %d training images): %s", cfg.method_name, dataset.name,
             dataset.num_classes, len(dataset.train), model.parameter_report())
    if model.losses:
        context = PrepareContext(backbone=backbone, num_classes=dataset.num_classes,
                                 train_loader=_prototype_loader(cfg, backbone, dataset),
                                 cache_dir=Path(cfg.output.cache_dir),
                                 cache_key=_draw_key(cfg, dataset), device=device,
                                 image_features=single_pass_features(backbone, cfg.output.cache_dir, cfg.seed,
                                                                     device, precision, progress))
        for loss in model.losses.values():
            loss.prepare(context)
    last = {}
    if cfg.train.epochs > 0 and not model.trainable_parameters():
        log.info("%s has no parameters to train: evaluating only.", cfg.method_name)
    elif cfg.train.epochs > 0:
        last = train(model, dataset.train, cfg, device, precision, run_dir, progress, on_epoch_end,
                     **(distributed.train_hooks(dataset.train, cfg) if distributed is not None else {}))
    fields = {"num_parameters": sum(p.numel() for p in model.trainable_parameters()), "train_loss": last.get("loss"),
              "train_seconds": round(time.time() - started, 2)}
    if cfg.train.evaluate:  # every process evaluates its shard when distributed
        fields["test"] = evaluate_model(model, dataset, cfg, device, precision, progress, distributed=distributed)
    if not is_main:
        return {}
    save_prompts(model, run_dir, cfg.method_name, {"dataset": dataset.name, "subsample": cfg.data.subsample})
    return _finish(run_dir, cfg, dataset, fields)


def _finish(run_dir: Path, cfg: Config, dataset: Dataset, fields: dict) -> dict:
    """Write ``result.json`` (the run's identity, then ``fields``) and drop the checkpoint."""
    result = {
        "method": cfg.method_name, "dataset": dataset.name, "subsample": cfg.data.subsample,
        "shots": cfg.data.shots, "seed": cfg.seed, "model": cfg.model.name, "pretrained": cfg.model.pretrained,
        "num_classes": dataset.num_classes, "num_train_images": len(dataset.train),
        "draw_checksum": dataset_checksum(dataset), **fields, "versions": versions(),
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if "test" in result:
        log.info("%s on %s: test accuracy %.2f%%", cfg.method_name, dataset.name, result["test"]["accuracy"])
    atomic_write_json(run_dir / RESULT, result)
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # the result and prompts are final now
    return result


def _draw_key(cfg: Config, dataset: Dataset) -> str:
    return f"{dataset.name}-{cfg.data.subsample}-shots_{cfg.data.shots}-seed_{cfg.seed}-{cfg.model.name}-" \
           f"{cfg.model.pretrained}-{dataset_checksum(dataset)}"


def _prototype_loader(cfg: Config, backbone: FrozenCLIP, dataset: Dataset):
    """The training split with the training transform, in a fixed order (for DAPT prototypes)."""
    return eval_loader(dataset.train, transform_for(backbone, train=True), cfg.train.eval_batch_size,
                       cfg.data.num_workers)


def evaluate_model(model: PromptedCLIP, dataset: Dataset, cfg: Config, device, precision, progress=True,
                   split: str = "test", distributed=None) -> Dict:
    """Metrics on ``split``. Image features that do not depend on prompts come from the feature cache; with
    ``distributed``, each process predicts its shard of the items and the predictions are gathered."""
    items = dataset.split(split)
    if not items:
        raise ConfigError(f"{dataset.name} has no {split} images to evaluate on.")
    if distributed is not None:
        items = distributed.shard(items)
    batch, workers = cfg.train.eval_batch_size, cfg.data.num_workers
    if not items:  # more processes than images
        preds, labels = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    elif model.prompts_vision:
        loader = eval_loader(items, transform_for(model.backbone, train=False), batch, workers)
        logits, labels = predict_loader(model, loader, device, precision, f"eval {dataset.name}", progress=progress)
        preds = logits.argmax(-1)
    else:
        features, labels = frozen_features(model.backbone, items, cfg.output.cache_dir, batch, workers, device,
                                           precision, f"features {dataset.name}", progress)
        logits, labels = predict_loader(model, feature_loader(features, labels, batch), device, precision,
                                        f"eval {dataset.name}", image_features=lambda cached: cached,
                                        progress=progress)
        preds = logits.argmax(-1)
    if distributed is not None:
        preds, labels = distributed.gather(preds, labels)
    return metrics_from_predictions(preds, labels, len(model.classnames))


def evaluate_run(run_dir: Union[str, Path], overrides: Sequence[str] = (), progress: bool = True,
                 force: bool = False, label: Optional[str] = None) -> dict:
    """Evaluate a finished run's prompts on another class set or dataset (``data.name``, ``data.subsample``...).

    The result goes to ``run_dir/evals/<dataset>-<subsample>.json`` (``<label>-<subsample>.json`` when a label is
    given, e.g. to tell two image folders apart); an existing one is returned unless ``force``.
    """
    from ..config import merge, parse_override, from_dict, to_dict

    run_dir = Path(run_dir)
    base = load_resolved(run_dir / "config.yaml")
    data = to_dict(base)
    for text in overrides:
        data = merge(data, parse_override(text))
    cfg = from_dict(Config, data)
    dataset_name = label or dataset_label(cfg)
    out = run_dir / "evals" / f"{dataset_name}-{cfg.data.subsample}.json"
    if out.is_file() and not force:
        return json.loads(out.read_text())
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model = load_prompts(run_dir, load_backbone(cfg, device), device)
    dataset = prepare_data(cfg, shots=0, split_dir=run_dir)
    model.set_classnames(dataset.classnames, dataset.template)
    metrics = evaluate_model(model, dataset, cfg, device, precision, progress)
    result = {"run": str(run_dir), "method": cfg.method_name, "dataset": dataset.name,
              "subsample": cfg.data.subsample, "seed": cfg.seed, "test": metrics,
              "finished_at": datetime.datetime.now().isoformat(timespec="seconds")}
    atomic_write_json(out, result)
    return result
