"""`diffusionlm-make-data` config: which source to tokenize (the trainer's own `[data]` section)
and what to write (`[output]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.schemas import MEMMAP_DATASET, DataConfig, Section


class OutputConfig(Section):
    """`[output]`: where the tokenized data goes and in which formats."""

    output_dir: Path = Field(description="created whole at the end (written beside it as .NAME.partial until then)")
    formats: list[Literal["memmap", "parquet"]] = Field(
        default_factory=lambda: ["memmap", "parquet"], min_length=1,
        description="memmap: SPLIT.dat + SPLIT.dat.json; parquet: parquet/SPLIT-*.parquet + a dataset card")
    rows_per_shard: int = Field(100_000, gt=0, description="parquet rows (documents) per shard file")
    include_text: bool = Field(False, description="parquet: keep each row's text beside its token ids")
    overwrite: bool = Field(False, description="replace an existing output_dir (only once the new one is complete)")
    progress: bool = Field(True, description="progress bar with tokens/s and ETA on stderr")


class MakeDataConfig(BaseModel):
    """Tokenize `data.train_split` and `data.val_split` (when set) of the `[data]` source."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: DataConfig
    output: OutputConfig

    @model_validator(mode="after")
    def _check_source(self) -> MakeDataConfig:
        if self.data.dataset_name == MEMMAP_DATASET or self.data.token_field is not None:
            raise ValueError("data: make-data reads text; this source is already tokenized")
        return self
