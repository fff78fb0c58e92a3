"""The training loop: SGD/AdamW, warm-up + cosine per epoch, autocast, accumulation, resumable checkpoints, and its
progress (log lines, which go to the run's log.txt, and on a terminal bars that show them on the console)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from tqdm.auto import tqdm

from ..callbacks import Callback
from ..config import Config, OptimConfig
from ..data.base import Item
from ..data.loaders import image_loader, train_batches, transform_for, view_index, view_seeds
from ..errors import ConfigError, TrainingError
from ..model import PromptedCLIP
from ..runs import CHECKPOINT, METRICS
from ..utils import atomic_write_bytes, atomic_write_text
from .cache import TrainingViews
from .precision import autocast

log = logging.getLogger("promptclip")
LINE_EVERY_STEPS = 20  # off a terminal, a progress line every this many steps (as Dassl prints) ...
LINE_EVERY_SECONDS = 30.0  # ... or after this many seconds, whichever comes first


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
    """The shuffle and the global random stream (e.g. prompt dropout) depend only on (seed, epoch), so a resumed run
    repeats them exactly; augmentations are seeded per image (:func:`~promptclip.data.loaders.view_seeds`)."""
    return seed * 100_003 + epoch


def save_checkpoint(path: Path, epoch: int, model: PromptedCLIP, optimizer, scaler,
                    callbacks: Optional[Dict[str, Callback]] = None) -> None:
    state = {"epoch": epoch, "learners": {side: l.state_dict() for side, l in model.learners().items()},
             "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
             "callbacks": {name: cb.state_dict() for name, cb in (callbacks or {}).items()}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, model: PromptedCLIP, optimizer, scaler, device,
                    callbacks: Optional[Dict[str, Callback]] = None) -> int:
    """Restore a checkpoint and return the number of finished epochs; a damaged one restores nothing and gives 0."""
    callbacks = callbacks or {}
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        learners = {side: state["learners"][side] for side in model.learners()}
        callback_states = {name: state["callbacks"][name] for name in callbacks}
        epoch = int(state["epoch"])
    except Exception as err:  # noqa: BLE001  (a damaged checkpoint only costs the epochs it held)
        log.warning("%s is damaged (%s); training from the start.", path, str(err).splitlines()[0] if str(err)
                    else type(err).__name__)
        return 0
    for side, learner in model.learners().items():
        learner.load_state_dict(learners[side])
    for name, callback in callbacks.items():
        callback.load_state_dict(callback_states[name])
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


def show_bars(progress: bool) -> bool:
    """Bars redraw in place with carriage returns, so they are drawn only on a terminal."""
    return progress and sys.stderr.isatty()


#: set on the records of progress lines: while bars are drawn they go to ``log.txt`` but not to the console
PROGRESS_LINE = "promptclip_progress_line"


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and any(
        handler.stream is stream for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__))


def console_loggers() -> List[logging.Logger]:
    """promptclip's logger and those its lines propagate to, where a handler prints them on stdout or stderr."""
    found, logger = [], log
    while logger is not None:
        if any(_is_console(h) for h in logger.handlers):
            found.append(logger)
        logger = logger.parent if logger.propagate else None
    return found


class _AboveBars(logging.Handler):
    """A console handler's lines printed above the bars (``tqdm.write``), so a log line never breaks a bar; the
    progress lines, which the bars show, are left out."""

    def __init__(self, console: logging.StreamHandler):
        super().__init__(console.level)
        self.console = console
        self.filters = [*console.filters, lambda record: not getattr(record, PROGRESS_LINE, False)]

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.console.format(record), file=self.console.stream)
        except Exception:  # noqa: BLE001  (logging's own rule: a failing handler reports, never raises)
            self.handleError(record)


@contextlib.contextmanager
def console_through_bars(bars: bool):
    """While bars are drawn, console handlers print through tqdm and leave the progress lines to the other handlers
    (``log.txt``); without bars, nothing changes."""
    swapped = [(logger, list(logger.handlers)) for logger in console_loggers()] if bars else []
    for logger, handlers in swapped:
        logger.handlers = [_AboveBars(h) if _is_console(h) else h for h in handlers]
    try:
        yield
    finally:
        for logger, handlers in swapped:
            logger.handlers = handlers


def duration(seconds: float) -> str:
    """``42s``, ``4m12s``, ``2h05m``."""
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Training progress: a log line every ``LINE_EVERY_STEPS`` steps or ``LINE_EVERY_SECONDS`` seconds and one per
    finished epoch, always (they go to ``log.txt``); with ``progress`` on a terminal, also an epoch bar and a step bar
    (rate, ETA), which show those lines on the console in their place (:func:`console_through_bars`)."""

    def __init__(self, progress: bool, desc: str, start: int, epochs: int):
        self.bars = show_bars(progress)
        self.epochs = epochs
        self.epoch_bar = tqdm(total=epochs, initial=start, desc=desc, unit="epoch", leave=False,
                              disable=not self.bars, dynamic_ncols=True)
        self.step_bar = None
        self.begun, self.steps_done = time.time(), 0

    def start_epoch(self, epoch: int, steps: int, lr: float) -> None:
        self.epoch, self.steps, self.lr, self.last_line = epoch, steps, lr, time.time()
        self.step_bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step", leave=False,
                             disable=not self.bars, dynamic_ncols=True)

    def eta(self, step: int) -> str:
        """The rest of the run at this process's mean time per step so far (epoch set-up included)."""
        left = max(0, self.steps - step - 1 + (self.epochs - self.epoch - 1) * self.steps)
        return duration((time.time() - self.begun) / max(self.steps_done, 1) * left)

    def step(self, step: int, loss: float, accuracy: float) -> None:
        self.steps_done += 1
        self.step_bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.1f}", refresh=False)
        self.step_bar.update(1)
        now = time.time()
        due = (step + 1) % LINE_EVERY_STEPS == 0 or now - self.last_line >= LINE_EVERY_SECONDS
        if step + 1 < self.steps and due:
            self.last_line = now
            log.info("epoch %d/%d step %d/%d loss %.3f acc %.1f%% lr %.4g eta %s", self.epoch + 1, self.epochs,
                     step + 1, self.steps, loss, accuracy, self.lr, self.eta(step), extra={PROGRESS_LINE: True})

    def end_epoch(self, metrics: dict) -> None:
        self.step_bar.close()
        self.epoch_bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['train_accuracy']:.1f}",
                                   refresh=False)
        self.epoch_bar.update(1)
        log.info("epoch %d/%d done: loss %.3f acc %.1f%% lr %.4g (%s), eta %s", self.epoch + 1, self.epochs,
                 metrics["loss"], metrics["train_accuracy"], self.lr, duration(metrics["seconds"]),
                 self.eta(self.steps - 1), extra={PROGRESS_LINE: True})

    def close(self) -> None:
        if self.step_bar is not None:
            self.step_bar.close()
        self.epoch_bar.close()


def train(model: PromptedCLIP, items: List[Item], cfg: Config, device: torch.device, precision: str,
          run_dir: Path, progress: bool = True, on_epoch_end: Optional[Callable[[int], None]] = None,
          sampler_factory: Optional[Callable] = None, wrap: Optional[Callable] = None,
          batch_size: Optional[int] = None, is_main: bool = True, views: Optional[TrainingViews] = None,
          callbacks: Optional[Dict[str, Callback]] = None) -> dict:
    """Train the model's prompts on ``items``; resumes from ``run_dir/checkpoint`` if present.

    ``views`` gives each epoch's frozen image features: in place of the images for a model that does not prompt the
    image tower; beside them, as ``ModelOutput.frozen_image_features``, for one that does (PromptSRC's image term),
    so those come from the feature cache too. ``callbacks`` run after every epoch (their state goes into the
    checkpoint) and once at the end. ``sampler_factory(epoch)``, ``wrap(model)``, ``batch_size`` (this process's
    share of ``train.batch_size``) and ``is_main`` (only the main process writes metrics and checkpoints) are the
    hooks distributed training uses.
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
        start = load_checkpoint(ckpt, model, optimizer, scaler, device, callbacks)
        if start:
            log.info("Resuming %s from epoch %d/%d.", run_dir, start, tc.epochs)
    if is_main:
        _keep_metrics_before(metrics_path, start)
    forward = wrap(model) if wrap is not None else model
    feed_features = views is not None and not model.prompts_vision
    transform = transform_for(model.backbone, train=cfg.data.augment)
    accum = max(1, tc.accum_steps)
    shown = Progress(progress, f"train {cfg.method_name}", start, tc.epochs)
    last = {}
    saved = start  # epochs in the checkpoint on disk
    try:
        for epoch in range(start, tc.epochs):
            lr = lr_at(cfg.optim, epoch, tc.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(epoch_seed(cfg.seed, epoch))
            generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
            sampler = sampler_factory(epoch) if sampler_factory is not None else None
            started = time.time()
            batches = train_batches(len(items), batch_size or tc.batch_size, generator, sampler)
            steps = len(batches) if not tc.max_steps_per_epoch else min(len(batches), tc.max_steps_per_epoch * accum)
            if views is not None:
                cut = [i for batch in batches[:steps] for i in batch] if steps < len(batches) else None
                features, targets = views.features(epoch, cut)
            if feed_features:
                data = ((features[b], targets[b]) for b in map(torch.tensor, batches[:steps]))
            else:
                seeds = view_seeds(items, cfg.seed, view_index(epoch, tc.views)) if cfg.data.augment else None
                data = image_loader(items, transform, batches[:steps], cfg.data.num_workers, seeds)
            model.train()
            totals: dict = {}
            correct = seen = 0
            shown.start_epoch(epoch, steps, lr)
            optimizer.zero_grad(set_to_none=True)
            for step, (inputs, labels) in enumerate(data):
                inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                with autocast(device, precision):
                    if feed_features:
                        out = forward(None, labels, image_features=inputs)
                    elif views is not None:  # the same views' frozen features, for the losses that compare to them
                        frozen = features[torch.tensor(batches[step])].to(device, non_blocking=True)
                        out = forward(inputs, labels, frozen_image_features=frozen)
                    else:
                        out = forward(inputs, labels)
                loss_value = float(out.loss.detach())  # the step's one device sync, also the logged value
                if not math.isfinite(loss_value):
                    raise _non_finite(f"The loss became {loss_value}", epoch, step, steps, saved, cfg, precision)
                loss = out.loss / accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
                if (step + 1) % accum == 0 or step + 1 == steps:
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for name, value in {"loss": loss_value, **out.terms}.items():
                    totals[name] = totals.get(name, 0.0) + float(value) * len(labels)
                correct += int((out.logits.argmax(-1) == labels).sum())
                seen += len(labels)
                shown.step(step, totals["loss"] / seen, 100.0 * correct / seen)
            if not all(bool(torch.isfinite(p).all()) for p in params):
                raise _non_finite("The prompts became non-finite", epoch, steps - 1, steps, saved, cfg, precision)
            last = {"epoch": epoch, "lr": lr, **{k: v / max(seen, 1) for k, v in totals.items()},
                    "train_accuracy": 100.0 * correct / max(seen, 1), "seconds": round(time.time() - started, 3)}
            shown.end_epoch(last)
            finished = epoch + 1
            for callback in (callbacks or {}).values():
                callback.on_epoch_end(epoch, model)
            if is_main:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
                if tc.checkpoint_every and (finished % tc.checkpoint_every == 0 or finished == tc.epochs):
                    save_checkpoint(ckpt, finished, model, optimizer, scaler, callbacks)
                    saved = finished
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    finally:
        shown.close()
    for callback in (callbacks or {}).values():
        callback.on_train_end(model)
    return last
