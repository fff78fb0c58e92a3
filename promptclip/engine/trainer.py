"""The training loop: SGD/Adam/AdamW, warm-up + cosine per epoch or step, autocast, accumulation, a loss's own
gradient rule, resumable checkpoints, and its progress (log lines, which go to the run's log.txt, and on a terminal
bars that show them on the console)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from tqdm.auto import tqdm

from ..config import OptimConfig
from ..data.loaders import train_batches
from ..errors import ConfigError, TrainingError
from ..hooks import Callback
from ..model import PromptedCLIP
from ..runs import CHECKPOINT, METRICS
from ..utils import atomic_write_bytes, atomic_write_text
from .inputs import TrainingInputs
from .precision import autocast
from .setup import RunSetup

log = logging.getLogger("promptclip")
LINE_EVERY_STEPS = 20  # off a terminal, a progress line every this many steps (as Dassl prints) ...
LINE_EVERY_SECONDS = 30.0  # ... or after this many seconds, whichever comes first


def lr_at(cfg: OptimConfig, epoch: int, epochs: int, step: int = 0, steps: int = 1) -> float:
    """The reference schedule: ``warmup_epochs`` at ``warmup_lr``, then cosine from ``lr`` to ``min_lr`` over
    ``epochs`` shifted by the warm-up: per epoch (Dassl: the last epoch never reaches ``min_lr``), or with
    ``schedule_unit: step`` per optimiser step, ``step`` of the ``steps`` in each epoch (CLIP-LoRA's
    CosineAnnealingLR)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    if cfg.scheduler == "constant":
        return cfg.lr
    done, total = epoch - cfg.warmup_epochs, epochs
    if cfg.schedule_unit == "step":
        done, total = done * steps + step, (epochs - cfg.warmup_epochs) * steps
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * done / total))


def build_optimizer(cfg: OptimConfig, groups: List[dict]) -> torch.optim.Optimizer:
    """The optimiser over parameter ``groups`` (``{"params": [...], "lr_scale": s}``: a group's rate is the
    schedule's times ``lr_scale``)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    adam = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle and the global random stream (e.g. prompt dropout) depend only on (seed, epoch), so a resumed run
    repeats them exactly; augmentations are seeded per image (:func:`~promptclip.data.loaders.view_seeds`)."""
    return seed * 100_003 + epoch


class Checkpoint:
    """A run's resumable state in ``path``: the learners, the optimizer, the grad scaler and the callbacks."""

    def __init__(self, path: Path, model: PromptedCLIP, optimizer, scaler: torch.amp.GradScaler,
                 callbacks: Dict[str, Callback]):
        self.path, self.model, self.optimizer, self.scaler, self.callbacks = path, model, optimizer, scaler, callbacks

    def save(self, epoch: int) -> None:
        learners = {side: learner.state_dict() for side, learner in self.model.learners().items()}
        state = {"epoch": epoch, "learners": learners,
                 "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "callbacks": {name: cb.state_dict() for name, cb in self.callbacks.items()}}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())

    def restore(self, device: torch.device) -> int:
        """Restore the checkpoint, if any, and return the number of finished epochs; a damaged one restores nothing
        and gives 0."""
        if not self.path.exists():
            return 0
        epoch = self._load(device)
        if epoch:
            log.info("Resuming %s after epoch %d.", self.path.parent.parent, epoch)
        return epoch

    def _load(self, device: torch.device) -> int:
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
            learners = {side: state["learners"][side] for side in self.model.learners()}
            callback_states = {name: state["callbacks"][name] for name in self.callbacks}
            epoch = int(state["epoch"])
        except Exception as err:  # noqa: BLE001  (a damaged checkpoint only costs the epochs it held)
            log.warning("%s is damaged (%s); training from the start.", self.path,
                        str(err).splitlines()[0] if str(err) else type(err).__name__)
            return 0
        for side, learner in self.model.learners().items():
            learner.load_state_dict(learners[side])
        for name, callback in self.callbacks.items():
            callback.load_state_dict(callback_states[name])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return epoch


def _non_finite(what: str, epoch: int, step: int, steps: int, saved: int, setup: RunSetup) -> TrainingError:
    """The error for a diverged run: where it happened, what was kept, and what to change."""
    cfg, precision = setup.cfg, setup.precision
    kept = f"the last checkpoint holds epoch {saved}" if saved else "no checkpoint was written"
    fp32 = " or use train.precision=fp32" if precision != "fp32" else ""
    return TrainingError(f"{what} at epoch {epoch + 1}/{cfg.train.epochs}, step {step + 1}/{steps} (optim.lr="
                         f"{cfg.optim.lr:g}, train.precision={precision}). Nothing of this epoch was saved; {kept}. "
                         f"Lower optim.lr{fp32} and rerun: a run with other settings starts clean.")


def _keep_metrics_before(setup: RunSetup, epoch: int) -> None:
    """Drop metric lines of epochs a resumed run will repeat (and a line cut short by a kill); main process only."""
    path = setup.run_dir / METRICS
    if not setup.is_main or not path.exists():
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


def epoch_batches(epoch: int, num_items: int, setup: RunSetup) -> Tuple[List[List[int]], bool]:
    """This process's batches of item indices for ``epoch`` (a shuffle that depends only on (seed, epoch)), capped
    at ``train.max_steps_per_epoch`` optimizer steps; and whether that cap cut the epoch short."""
    tc, dist = setup.cfg.train, setup.distributed
    generator = torch.Generator().manual_seed(epoch_seed(setup.cfg.seed, epoch))
    sampler = dist.sampler(num_items, setup.cfg.seed, epoch) if dist is not None else None
    batch_size = dist.local_batch_size(tc.batch_size) if dist is not None else tc.batch_size
    batches = train_batches(num_items, batch_size, generator, sampler)
    steps = min(len(batches), tc.max_steps_per_epoch * max(1, tc.accum_steps)) if tc.max_steps_per_epoch \
        else len(batches)
    return batches[:steps], steps < len(batches)


class EpochMeter:
    """An epoch's loss terms and accuracy, weighted by batch size."""

    def __init__(self):
        self.totals: Dict[str, float] = {}
        self.correct = self.seen = 0

    def add(self, loss: float, out, labels: torch.Tensor) -> None:
        for name, value in {"loss": loss, **out.terms}.items():
            self.totals[name] = self.totals.get(name, 0.0) + float(value) * len(labels)
        self.correct += int((out.logits.argmax(-1) == labels).sum())
        self.seen += len(labels)

    @property
    def loss(self) -> float:
        return self.totals["loss"] / self.seen

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.seen, 1)

    def summary(self) -> dict:
        return {**{k: v / max(self.seen, 1) for k, v in self.totals.items()}, "train_accuracy": self.accuracy}


def train(model: PromptedCLIP, inputs: TrainingInputs, setup: RunSetup, callbacks: Optional[Dict[str, Callback]] = None,
          on_epoch_end: Optional[Callable[[int], None]] = None) -> dict:
    """Train the model's learnable parameters on ``inputs``, resuming from the run's checkpoint if present;
    ``callbacks`` run after every epoch (their state is checkpointed) and at the end; ``setup.reporter`` hears every
    step and epoch. Returns the last epoch's metrics. Under DDP each process takes its share of every batch."""
    cfg, tc, device, callbacks = setup.cfg, setup.cfg.train, setup.device, callbacks or {}
    params = model.trainable_parameters()
    if not params:
        raise ConfigError(f"{cfg.method_name} has nothing to train; set train.epochs=0 to only evaluate.")
    optimizer = build_optimizer(cfg.optim, model.parameter_groups())
    scaler = torch.amp.GradScaler("cuda", enabled=setup.precision == "fp16")
    checkpoint = Checkpoint(setup.run_dir / CHECKPOINT, model, optimizer, scaler, callbacks)
    start = saved = checkpoint.restore(device)  # epochs already trained; those in the checkpoint on disk
    _keep_metrics_before(setup, start)
    forward = setup.distributed.wrap(model) if setup.distributed is not None else model
    shown, last = Progress(setup.progress, f"train {cfg.method_name}", start, tc.epochs), {}
    stepper = Stepper(model, params, optimizer, scaler, tc.accum_steps)
    setup.reporter.begin(start, len(epoch_batches(start, len(inputs), setup)[0]))
    try:
        for epoch in range(start, tc.epochs):
            batches, cut_short = epoch_batches(epoch, len(inputs), setup)
            updates = math.ceil(len(batches) / tc.accum_steps)
            lr, started, meter = _start_epoch(epoch, optimizer, setup, updates), time.time(), EpochMeter()
            model.train()
            shown.start_epoch(epoch, len(batches), lr)
            for step, (kwargs, labels) in enumerate(inputs.epoch(epoch, batches, cut_short)):
                if cfg.optim.schedule_unit == "step" and step % tc.accum_steps == 0:
                    lr = lr_at(cfg.optim, epoch, tc.epochs, step // tc.accum_steps, updates)
                    set_lr(optimizer, lr)
                labels = labels.to(device, non_blocking=True)
                with autocast(device, setup.precision):
                    out = forward(labels=labels, **{k: v.to(device, non_blocking=True) for k, v in kwargs.items()})
                loss_value = float(out.loss.detach())  # the step's one device sync, also the logged value
                if not math.isfinite(loss_value):
                    raise _non_finite(f"The loss became {loss_value}", epoch, step, len(batches), saved, setup)
                stepper.backward(out, last_of_update=(step + 1) % tc.accum_steps == 0 or step + 1 == len(batches))
                meter.add(loss_value, out, labels)
                setup.reporter.step(epoch, step, loss_value, lr)
                shown.step(step, meter.loss, meter.accuracy)
            if not all(bool(torch.isfinite(p).all()) for p in params):
                raise _non_finite("The prompts became non-finite", epoch, len(batches) - 1, len(batches), saved, setup)
            last = {"epoch": epoch, "lr": lr, **meter.summary(), "seconds": round(time.time() - started, 3)}
            shown.end_epoch(last)
            saved = _end_epoch(epoch, last, model, checkpoint, setup, callbacks) or saved
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    finally:
        shown.close()
    for callback in callbacks.values():
        callback.on_train_end(model)
    return last


class Stepper:
    """Backward passes and optimiser steps, with accumulation and the grad scaler. A model whose loss declares a
    gradient rule (:attr:`~promptclip.losses.ExtraLoss.gradient_rule`, ProGrad) gets that loss's gradient
    separately (``autograd.grad``, accumulated like the main one, averaged over DDP processes) and the rule combines
    it with the main gradient, unscaled, before each step."""

    def __init__(self, model: PromptedCLIP, params: List[torch.nn.Parameter], optimizer, scaler, accum: int):
        self.params, self.optimizer, self.scaler, self.accum = params, optimizer, scaler, accum
        self.rule = model.gradient_rule()
        self.own: Optional[List[Optional[torch.Tensor]]] = None

    def backward(self, out, last_of_update: bool) -> None:
        if self.rule is not None:
            grads = torch.autograd.grad(self.scaler.scale(out.separate / self.accum), self.params,
                                        retain_graph=True, allow_unused=True)
            self.own = list(grads) if self.own is None else [
                g if a is None else a if g is None else a + g for a, g in zip(self.own, grads)]
        self.scaler.scale(out.loss / self.accum).backward()
        if last_of_update:
            if self.rule is not None:
                self._combine()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)

    def _combine(self) -> None:
        self.scaler.unscale_(self.optimizer)
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        for param, own in zip(self.params, self.own):
            if own is None or param.grad is None:
                continue
            own = own / scale
            if distributed:
                torch.distributed.all_reduce(own)
                own /= torch.distributed.get_world_size()
            param.grad = self.rule.combine_gradients(param.grad, own)
        self.own = None


def _start_epoch(epoch: int, optimizer: torch.optim.Optimizer, setup: RunSetup, updates: int) -> float:
    """Set the epoch's (first optimiser step's) learning rate and the global random stream (prompt dropout);
    returns the rate."""
    lr = lr_at(setup.cfg.optim, epoch, setup.cfg.train.epochs, 0, updates)
    set_lr(optimizer, lr)
    torch.manual_seed(epoch_seed(setup.cfg.seed, epoch))
    optimizer.zero_grad(set_to_none=True)
    return lr


def _end_epoch(epoch: int, metrics: dict, model: PromptedCLIP, checkpoint: Checkpoint, setup: RunSetup,
               callbacks: Dict[str, Callback]) -> int:
    """Run the callbacks; on the main process append the metrics and save a due checkpoint. Returns the epochs
    the checkpoint now holds (0: none saved)."""
    finished, every = epoch + 1, setup.cfg.train.checkpoint_every
    for callback in callbacks.values():
        callback.on_epoch_end(epoch, model)
    if not setup.is_main:
        return 0
    with (setup.run_dir / METRICS).open("a") as f:
        f.write(json.dumps(metrics) + "\n")
    setup.reporter.epoch(metrics)
    if every and (finished % every == 0 or finished == setup.cfg.train.epochs):
        checkpoint.save(finished)
        return finished
    return 0
