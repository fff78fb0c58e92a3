"""The set-up of one run that every stage reads: its config, device, precision, folder, progress and processes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import Config


@dataclass
class RunSetup:
    cfg: Config
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    run_dir: Path
    progress: bool = True  # bars on a terminal (see trainer.show_bars)
    #: this process's place among several (:class:`~promptclip.engine.distributed.Distributed`), None alone
    distributed: Optional[Any] = None

    @property
    def is_main(self) -> bool:
        """Only the main process writes files."""
        return self.distributed is None or self.distributed.is_main
