"""The training loop: SGD/AdamW, warm-up + cosine per epoch, autocast, accumulation, resumable checkpoints."""
from __future__ import annotations

import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, List, Optional

import torch
from tqdm.auto import tqdm

from ..config import Config, OptimConfig
from ..data.base import Item
from ..data.loaders import train_loader, transform_for
from ..errors import ConfigError, TrainingError
from ..model import PromptedCLIP
from ..runs import CHECKPOINT, METRICS
from ..utils import atomic_write_bytes, atomic_write_text
from .precision import autocast

log = logging.getLogger("promptclip")


def lr_at(cfg: OptimConfig, epoch: int, epochs: int) -> float:
    """The reference schedule: ``warmup_epochs`` at ``warmup_lr``, then cosine over ``epochs`` shifted by the
    warm-up (stepped per epoch, so the last epoch never reaches 0)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    if cfg.scheduler == "constant":
        return cfg.lr
    if cfg.scheduler != "cosine":
        raise ConfigError(f"optim.scheduler must be cosine or constant, not {cfg.scheduler!r}.")
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / epochs))


def build_optimizer(cfg: OptimConfig, params: List[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ConfigError(f"optim.name must be sgd or adamw, not {cfg.name!r}.")


def epoch_seed(seed: int, epoch: int) -> int:
    """Shuffling and augmentation depend only on (seed, epoch), so a resumed run repeats them exactly."""
    return seed * 100_003 + epoch


def save_checkpoint(path: Path, epoch: int, model: PromptedCLIP, optimizer, scaler) -> None:
    state = {"epoch": epoch, "learners": {side: l.state_dict() for side, l in model.learners().items()},
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, model: PromptedCLIP, optimizer, scaler, device) -> int:
    """Restore a checkpoint and return the number of finished epochs; a damaged one restores nothing and gives 0."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        learners = {side: state["learners"][side] for side in model.learners()}
        epoch = int(state["epoch"])
    except Exception as err:  # noqa: BLE001  (a damaged checkpoint only costs the epochs it held)
        log.warning("%s is damaged (%s); training from the start.", path, str(err).splitlines()[0] if str(err)
                    else type(err).__name__)
        return 0
    for side, learner in model.learners().items():
        learner.load_state_dict(learners[side])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return epoch


def _non_finite(what: str, epoch: int, step: int, steps: int, saved: int, cfg: Config, precision: str
                ) -> TrainingError:
    """The error for a diverged run: where it happened, what was kept, and what to change."""
    kept = f"the last checkpoint holds epoch {saved}" if saved else "no checkpoint was written"
    fp32 = " or use train.precision=fp32" if precision != "fp32" else ""
    return TrainingError(f"{what} at epoch {epoch + 1}/{cfg.train.epochs}, step {step + 1}/{steps} (optim.lr="
                         f"{cfg.optim.lr:g}, train.precision={precision}). Nothing of this epoch was saved; {kept}. "
                         f"Lower optim.lr{fp32} and rerun: a run with other settings starts clean.")


def _keep_metrics_before(path: Path, epoch: int) -> None:
    """Drop metric lines of epochs a resumed run will repeat (and a line cut short by a kill)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", 0) < epoch:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(model: PromptedCLIP, items: List[Item], cfg: Config, device: torch.device, precision: str,
          run_dir: Path, progress: bool = True, on_epoch_end: Optional[Callable[[int], None]] = None,
          sampler_factory: Optional[Callable] = None, wrap: Optional[Callable] = None,
          batch_size: Optional[int] = None, is_main: bool = True) -> dict:
    """Train the model's prompts on ``items``; resumes from ``run_dir/checkpoint`` if present.

    ``sampler_factory(epoch)``, ``wrap(model)``, ``batch_size`` (this process's share of ``train.batch_size``) and
    ``is_main`` (only the main process writes metrics and checkpoints) are the hooks distributed training uses.
    """
    tc = cfg.train
    params = model.trainable_parameters()
    if not params:
        raise ConfigError(f"{cfg.method_name} has nothing to train; set train.epochs=0 to only evaluate.")
    optimizer = build_optimizer(cfg.optim, params)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    ckpt = run_dir / CHECKPOINT
    metrics_path = run_dir / METRICS
    start = 0  # epochs already trained
    if ckpt.exists():
        start = load_checkpoint(ckpt, model, optimizer, scaler, device)
        if start:
            log.info("Resuming %s from epoch %d/%d.", run_dir, start, tc.epochs)
    if is_main:
        _keep_metrics_before(metrics_path, start)
    forward = wrap(model) if wrap is not None else model
    transform = transform_for(model.backbone, train=cfg.data.augment)
    accum = max(1, tc.accum_steps)
    bar = tqdm(range(start, tc.epochs), desc=f"train {cfg.method_name}", initial=start, total=tc.epochs,
               leave=False, disable=not progress)
    last = {}
    saved = start  # epochs in the checkpoint on disk
    for epoch in bar:
        lr = lr_at(cfg.optim, epoch, tc.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        sampler = sampler_factory(epoch) if sampler_factory is not None else None
        loader = train_loader(items, transform, batch_size or tc.batch_size, generator, cfg.data.num_workers, sampler)
        model.train()
        started = time.time()
        totals: dict = {}
        correct = seen = 0
        steps = len(loader) if not tc.max_steps_per_epoch else min(len(loader), tc.max_steps_per_epoch * accum)
        optimizer.zero_grad(set_to_none=True)
        for step, (images, labels) in enumerate(loader):
            if step >= steps:
                break
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, precision):
                out = forward(images, labels)
            if not torch.isfinite(out.loss.detach()):
                raise _non_finite(f"The loss became {float(out.loss.detach())}", epoch, step, steps, saved, cfg, precision)
            loss = out.loss / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if (step + 1) % accum == 0 or step + 1 == steps:
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for name, value in {"loss": out.loss.detach(), **out.terms}.items():
                totals[name] = totals.get(name, 0.0) + float(value) * len(labels)
            correct += int((out.logits.argmax(-1) == labels).sum())
            seen += len(labels)
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise _non_finite("The prompts became non-finite", epoch, steps - 1, steps, saved, cfg, precision)
        last = {"epoch": epoch, "lr": lr, **{k: v / max(seen, 1) for k, v in totals.items()},
                "train_accuracy": 100.0 * correct / max(seen, 1), "seconds": round(time.time() - started, 3)}
        bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['train_accuracy']:.1f}")
        finished = epoch + 1
        if is_main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(last) + "\n")
            if tc.checkpoint_every and (finished % tc.checkpoint_every == 0 or finished == tc.epochs):
                save_checkpoint(ckpt, finished, model, optimizer, scaler)
                saved = finished
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return last
