"""Build the configured logger, wrapped so only rank 0 writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config.schemas import LoggingConfig, WandbConfig
from logger.base import Logger
from logger.console_logger import ConsoleLogger
from logger.noop import NoopLogger
from logger.rank_zero import RankZeroLogger


def build_logger(logging_cfg: LoggingConfig, wandb_cfg: WandbConfig, *, run_dir: str | Path,
                 config: dict[str, Any], rank: int = 0) -> Logger:
    """Console, W&B or no-op backend per `[logging].backend`; ranks other than 0 get a no-op."""
    if rank != 0:
        return RankZeroLogger(NoopLogger(), rank)
    if logging_cfg.backend == "console":
        inner: Logger = ConsoleLogger()
    elif logging_cfg.backend == "wandb":
        from logger.wandb_logger import WandbLogger

        inner = WandbLogger(project=wandb_cfg.project, entity=wandb_cfg.entity, tags=wandb_cfg.tags,
                            run_name=logging_cfg.run_name or Path(run_dir).name, run_dir=run_dir,
                            config=config, log_artifacts=wandb_cfg.log_artifacts)
    else:
        inner = NoopLogger()
    return RankZeroLogger(inner, rank)
