"""`diffusionlm-bench-train` config: our training step against the plain reference model, same shapes.

Relative paths are resolved from the directory the command runs in (the repo root, where
`../shared/reference` sits beside the checkout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from config.schemas import BenchmarkConfig, Device


class BenchTrainConfig(BaseModel):
    """Which shapes, device and variants to time; `[benchmark]` holds repetitions and threads."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    reference_path: Path = Path("../shared/reference/ref_bench.py")
    preset: Literal["auto", "cpu-small", "gpt2-small"] = "auto"
    device: Device = "auto"
    compile: bool = Field(False, description="also time ours compiled (training.compile = \"model\") and the reference compiled")
    rounds: int = Field(6, gt=0, description="alternations of reference and ours")
    peak_tflops: float | None = Field(None, gt=0, description="device peak for MFU; unset: known CUDA devices only")
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
