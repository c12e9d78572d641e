"""One JSON object per line on a stream (stdout by default): easy to read, grep and parse.

Non-finite floats are written as strings ("nan", "inf") so every line stays valid JSON.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TextIO

from logger.base import MetricValue


def _json_safe(value: MetricValue) -> MetricValue:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class ConsoleLogger:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        # Resolved at call time so a redirected sys.stdout (pytest's capsys) is honoured.
        return self._stream if self._stream is not None else sys.stdout

    def log(self, metrics: dict[str, MetricValue], step: int) -> None:
        record = {"step": step, **{key: _json_safe(value) for key, value in metrics.items()}}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def log_artifact(self, path: str | Path, name: str, type: str) -> None:
        self.log({"artifact.name": name, "artifact.type": type, "artifact.path": str(path)}, step=-1)

    def finish(self) -> None:
        self.stream.flush()
