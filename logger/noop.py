"""A logger that drops everything: for non-zero ranks and for runs that want no output."""

from __future__ import annotations

from pathlib import Path

from logger.base import MetricValue


class NoopLogger:
    def log(self, metrics: dict[str, MetricValue], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, name: str, type: str) -> None:
        pass

    def finish(self) -> None:
        pass
