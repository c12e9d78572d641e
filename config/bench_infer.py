"""`diffusionlm-bench-infer` config: the sampler's fast paths against the baseline, one model.

`[inference]` is the baseline sampler (kv_cache and threshold there are ignored: each variant
sets its own). A `[data]` section is optional: when present, the prompts are the first
`prompt_tokens` tokens of validation sequences, otherwise every prompt is `inference.prompt`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from config.schemas import BenchmarkConfig, DataConfig, InferenceConfig, Section

Variant = Literal["baseline", "prefix", "dual", "threshold", "prefix+threshold", "dual+threshold"]
ALL_VARIANTS: list[Variant] = ["baseline", "prefix", "dual", "threshold", "prefix+threshold", "dual+threshold"]


class InferBenchSection(Section):
    """`[bench_infer]`: which variants, how many prompts, and the quality signal's budget."""

    variants: list[Variant] = Field(default_factory=lambda: list(ALL_VARIANTS))
    threshold: float = Field(0.9, gt=0, le=1, description="confidence threshold of the parallel-decoding variants")
    num_prompts: int = Field(4, gt=0, description="prompts decoded together as one batch")
    prompt_tokens: int = Field(8, ge=0, description="prompt length when prompts come from [data]")
    quality_mc_num: int = Field(32, gt=0, description="LLaDA likelihood draws per generated sequence (quality)")
    quality_mc_batch_size: int = Field(8, gt=0)


class BenchInferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    bench_infer: InferBenchSection = Field(default_factory=InferBenchSection)
    data: DataConfig | None = None
