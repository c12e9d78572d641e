"""Only rank 0 talks: in data-parallel runs every rank computes the same (all-reduced)
metrics, and N copies of each line would be noise."""

from __future__ import annotations

from pathlib import Path

from logger.base import Logger, MetricValue


class RankZeroLogger:
    def __init__(self, inner: Logger, rank: int) -> None:
        self.inner, self.rank = inner, rank

    def log(self, metrics: dict[str, MetricValue], step: int) -> None:
        if self.rank == 0:
            self.inner.log(metrics, step)

    def log_artifact(self, path: str | Path, name: str, type: str) -> None:
        if self.rank == 0:
            self.inner.log_artifact(path, name, type)

    def finish(self) -> None:
        if self.rank == 0:
            self.inner.finish()
