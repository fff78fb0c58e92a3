"""A run's log to TensorBoard and W&B (``output.report_to``): per-step loss and learning rate, per-epoch loss terms
and train accuracy (what ``metrics.jsonl`` holds), the final test metrics and the resolved config.

One :class:`RunReporter` per run folder, on the main process only; the runner opens it once the folder is the run's
own and closes it when the run ends, and the trainer feeds it. Global steps are ``epoch * steps_per_epoch + step``;
a resumed run logs from its checkpoint's epoch on, and TensorBoard hides what the killed segment logged from there
(``purge_step``), so no step shows twice. ``report_to`` is not part of a run's identity.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from ..config import Config, to_yaml
from ..errors import PromptclipError
from ..runs import TENSORBOARD_DIR, WANDB_RUN
from ..utils import atomic_write_json

log = logging.getLogger("promptclip")
TEST_METRICS = ("accuracy", "macro_f1")


def _import(tool: str):
    """The module behind ``tool``, or an error naming the extra that installs it."""
    try:
        if tool == "tensorboard":
            import torch.utils.tensorboard as tensorboard  # needs the tensorboard package

            return tensorboard
        import wandb

        return wandb
    except ImportError as err:
        raise PromptclipError(f"output.report_to names {tool}, which cannot be imported ({err}). Install it with "
                              f"pip install 'promptclip[{tool}]', or remove {tool} from output.report_to.") from None


def _flat(data: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"optim.lr": 0.002, ...}``: the config as TensorBoard hyper-parameters (scalars and strings; the rest as
    JSON)."""
    if isinstance(data, dict) and data:
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    value = data if isinstance(data, (bool, int, float, str)) else json.dumps(data)
    return {prefix[:-1]: value}


class RunReporter:
    """Writes one run's log to the tools in ``cfg.output.report_to`` (checked importable at construction, so a
    missing package fails before anything is trained). Used as a context manager: :meth:`open` starts the W&B run
    once the folder is the run's own, TensorBoard's writer opens when training begins (it needs the resumed step),
    the exit closes both (the W&B run ends with exit code 1 when the run failed)."""

    def __init__(self, cfg: Config, run_dir: Path, resumed: bool):
        self.tools = list(dict.fromkeys(cfg.output.report_to))
        self.modules = {tool: _import(tool) for tool in self.tools}
        self.cfg, self.run_dir, self.resumed = cfg, Path(run_dir), resumed
        self.config = yaml.safe_load(to_yaml(cfg))  # plain types, as config.yaml holds them
        self.tensorboard = None  # opened by begin (it needs the resumed step) or finish
        self.wandb = None
        self.wandb_from = 0  # W&B drops steps below those a resumed online run already holds: not sent
        self.steps_per_epoch = 0

    def __enter__(self) -> "RunReporter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.close(failed=kind is not None)

    # ------------------------------------------------------------------------------------------ opening, closing
    def open(self) -> None:
        """Start the W&B run (resuming the stored one on a resumed run); called once the folder is the run's own.
        A run that starts clean drops what an earlier run in this folder reported (``run_files.clear`` does too)."""
        if not self.resumed:
            shutil.rmtree(self.run_dir / TENSORBOARD_DIR, ignore_errors=True)
            (self.run_dir / WANDB_RUN).unlink(missing_ok=True)
        if "wandb" in self.tools:
            self.wandb = self._start_wandb()

    def _start_wandb(self):
        wandb = self.modules["wandb"]
        stored = self.run_dir / WANDB_RUN
        try:
            record = json.loads(stored.read_text()) if stored.is_file() else {}
        except (OSError, ValueError) as err:
            log.warning("%s is unreadable (%s); this segment starts a new W&B run.", stored, err)
            record = {}
        run_id = (record.get("id") if isinstance(record, dict) else None) or uuid.uuid4().hex[:12]
        try:
            run = wandb.init(dir=str(self.run_dir), project=os.environ.get("WANDB_PROJECT") or "promptclip",
                             name=self._name(), id=run_id, resume="allow", config=self.config)
        except Exception as err:  # noqa: BLE001  (wandb's errors vary by cause: login, network, settings)
            raise PromptclipError(f"W&B could not start a run for {self.run_dir}: {err}. Log in (wandb login), or "
                                  f"set WANDB_MODE=offline to write it locally (upload it later with wandb sync), "
                                  f"or remove wandb from output.report_to.") from None
        atomic_write_json(stored, {"id": run.id})
        self.wandb_from = int(run.step or 0)
        log.info("Reporting to W&B: run %s (%s) in %s.", run.id, run.settings.mode, self.run_dir / "wandb")
        return run

    def _name(self) -> str:
        """The run's folder below ``output.root`` (``coop/ViT-B-16_openai/.../seed_1``), else the folder's name."""
        try:
            return str(self.run_dir.resolve().relative_to(Path(self.cfg.output.root).resolve()))
        except ValueError:
            return self.run_dir.name

    def _open_tensorboard(self, purge_step: Optional[int]):
        writer = self.modules["tensorboard"].SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)
        if not purge_step:  # the first segment, or everything logged before is hidden: the config again
            writer.add_text("config", "```yaml\n" + to_yaml(self.cfg) + "```", 0)
        log.info("Reporting to TensorBoard: tensorboard --logdir %s", self.run_dir / TENSORBOARD_DIR)
        return writer

    def close(self, failed: bool = False) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
            self.wandb = None

    # ------------------------------------------------------------------------------------------ what is logged
    def begin(self, start_epoch: int, steps_per_epoch: int) -> None:
        """Training starts after ``start_epoch`` finished epochs of ``steps_per_epoch`` steps: TensorBoard hides any
        step from there on that an earlier segment logged."""
        self.steps_per_epoch = steps_per_epoch
        if "tensorboard" in self.tools and self.tensorboard is None:
            self.tensorboard = self._open_tensorboard(start_epoch * steps_per_epoch)

    def step(self, epoch: int, step: int, loss: float, lr: float) -> None:
        """One training step's loss (this process's batch) and learning rate."""
        self._scalars({"train/loss": loss, "train/lr": lr}, epoch * self.steps_per_epoch + step)

    def epoch(self, metrics: dict) -> None:
        """An epoch's line of ``metrics.jsonl`` (loss terms, train accuracy, lr, seconds), at its last step."""
        values = {f"epoch/{k}": v for k, v in metrics.items() if k != "epoch" and isinstance(v, (int, float))}
        self._scalars(values, (metrics["epoch"] + 1) * self.steps_per_epoch - 1)
        if self.tensorboard is not None:
            self.tensorboard.flush()  # a killed run keeps every finished epoch

    def finish(self, result: dict) -> None:
        """The run's final test metrics (``result.json``'s), after its last step; the config as TensorBoard
        hyper-parameters beside them."""
        test = {f"test/{k}": float(result["test"][k]) for k in TEST_METRICS if k in result.get("test", {})}
        step = self.cfg.train.epochs * self.steps_per_epoch
        if "tensorboard" in self.tools and self.tensorboard is None:
            self.tensorboard = self._open_tensorboard(None)  # a run without gradient steps
        self._scalars(test, step)
        if self.tensorboard is not None:
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(_flat(self.config), test):
                self.tensorboard.file_writer.add_summary(summary, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.summary.update(test)

    def _scalars(self, values: Dict[str, float], step: int) -> None:
        if self.tensorboard is not None:
            for tag, value in values.items():
                self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None and step >= self.wandb_from and values:
            self.wandb.log(values, step=step)
