"""Weights & Biases backend. `WANDB_MODE=offline` logs to a local run directory with no
network; `wandb sync` uploads it later. wandb is imported lazily so other backends never pay
for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from logger.base import MetricValue


class WandbLogger:
    def __init__(self, *, project: str, run_name: str, run_dir: str | Path, config: dict[str, Any],
                 entity: str | None = None, tags: list[str] | None = None, log_artifacts: bool = True) -> None:
        import wandb

        self._wandb = wandb
        self._log_artifacts = log_artifacts
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, entity=entity, name=run_name, dir=str(run_dir), config=config,
                              tags=tags or None, reinit="finish_previous")
        self._finished = False

    def log(self, metrics: dict[str, MetricValue], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_artifact(self, path: str | Path, name: str, type: str) -> None:
        if not self._log_artifacts:
            return
        artifact = self._wandb.Artifact(name=name, type=type)
        path = Path(path)
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.run.finish()
