"""The set-up of one run that every stage reads: its config, device, precision, folder, progress and processes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import Config


class Silent:
    """The reporter of a run that reports nowhere (no ``output.report_to``): the trainer's hooks do nothing."""

    def begin(self, start_epoch: int, steps_per_epoch: int) -> None:
        """Training starts (or resumes) at ``start_epoch``."""

    def step(self, epoch: int, step: int, loss: float, lr: float) -> None:
        """One optimizer-loop step."""

    def epoch(self, metrics: dict) -> None:
        """One finished epoch's ``metrics.jsonl`` line."""


@dataclass
class RunSetup:
    cfg: Config
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    run_dir: Path
    progress: bool = True  # bars on a terminal (see trainer.show_bars)
    #: this process's place among several (:class:`~promptclip.engine.distributed.Distributed`), None alone
    distributed: Optional[Any] = None
    #: the run's :class:`~promptclip.engine.reporting.RunReporter` (``output.report_to``), or one that reports nowhere
    reporter: Any = field(default_factory=Silent)

    @property
    def is_main(self) -> bool:
        """Only the main process writes files."""
        return self.distributed is None or self.distributed.is_main
