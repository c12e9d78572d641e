"""The logger protocol every backend implements.

Metric keys are flat strings such as `metrics.loss` or `metrics.lr/hidden`; values are
numbers (or short strings such as a sample). `step` is the training micro-step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

MetricValue = float | int | str


@runtime_checkable
class Logger(Protocol):
    def log(self, metrics: dict[str, MetricValue], step: int) -> None:
        """Record one set of metrics at `step`."""

    def log_artifact(self, path: str | Path, name: str, type: str) -> None:
        """Attach a file or directory (checkpoint, tokenizer files, samples) to the run."""

    def finish(self) -> None:
        """Flush and close; safe to call more than once."""
