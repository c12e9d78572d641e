"""`diffusionlm-eval` config: which model, which text, which likelihood estimator.

The text is `[eval].text_file` when given, otherwise the `[data]` source's validation split
(by default the built-in story corpus), tokenized with the run's tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.schemas import (
    AUTOCAST_PRECISION,
    DataConfig,
    Device,
    NumThreads,
    Precision,
    Section,
    require_text_rows,
)


class EvalSection(Section):
    """`[eval]`: the model, the sequences scored and the estimator's Monte-Carlo budget."""

    checkpoint: Path = Field(Path("runs/quickstart"),
                             description="run directory (newest checkpoint), a checkpoint .pt, or an export/ directory")
    device: Device = "auto"
    dtype: Precision = Field(AUTOCAST_PRECISION, description="autocast dtype on CUDA; CPU runs fp32")
    num_threads: NumThreads = None
    method: Literal["auto", "elbo", "conditional", "exact"] = Field(
        "auto", description="auto: exact for causal models, elbo otherwise")
    text_file: Path | None = Field(None, description="UTF-8 text to score; leave out for [data]'s validation split")
    sequence_length: int = Field(128, gt=1, description="tokens per scored sequence")
    max_sequences: int = Field(1024, gt=0, description="at most this many sequences (the built-in validation split "
                                                      "holds 584 of 128 tokens)")
    batch_size: int = Field(8, gt=0, description="sequences per forward batch")
    num_samples: int = Field(4, gt=0, description="elbo: Monte-Carlo noise draws per sequence (more text beats "
                                                  "more draws: see benchmarking/RESULTS.md)")
    samples_per_forward: int | None = Field(None, gt=0, description="elbo: draws per forward pass (memory knob)")
    noise_epsilon: float | None = Field(None, ge=0, lt=1,
                                       description="elbo: t is stratified over [eps, 1]; default: the run's training.noise_epsilon")
    mc_num: int = Field(32, gt=0, description="conditional: Monte-Carlo draws per sequence (LLaDA's mc_num)")
    mc_batch_size: int = Field(8, gt=0, description="conditional: draws per forward pass; must divide mc_num")
    prompt_tokens: int = Field(32, ge=0, description="conditional: leading tokens of each sequence used as the prompt")
    cfg_scale: float = Field(0.0, ge=0, description="conditional: classifier-free guidance weight")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> EvalSection:
        if self.mc_num % self.mc_batch_size:
            raise ValueError(f"mc_num ({self.mc_num}) must be a multiple of mc_batch_size ({self.mc_batch_size})")
        if self.method == "conditional" and self.prompt_tokens >= self.sequence_length:
            raise ValueError(f"prompt_tokens ({self.prompt_tokens}) must be < sequence_length ({self.sequence_length})")
        if self.text_file is not None and not self.text_file.is_file():
            what = "is a directory, not a text file" if self.text_file.is_dir() else "file not found"
            raise ValueError(f"text_file: {self.text_file} {what}")
        return self


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    eval: EvalSection = Field(default_factory=EvalSection)
    data: DataConfig = Field(default_factory=DataConfig)

    @model_validator(mode="after")
    def _check_data(self) -> EvalConfig:
        require_text_rows(self.data, "diffusionlm-eval")
        return self
