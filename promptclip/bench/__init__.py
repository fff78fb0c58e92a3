"""Benchmarks: protocol files → runs, the resumable sweep, reports beside published numbers."""
from .protocols import Protocol, RunSpec, expand, load_protocol, split_overrides
from .report import write_report
from .sweep import run_sweep, shard

__all__ = ["Protocol", "RunSpec", "expand", "load_protocol", "split_overrides", "write_report", "run_sweep", "shard"]
