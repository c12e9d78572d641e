"""`diffusionlm-bench-infer` config: the sampler's fast paths against the baseline, one model.

`[inference]` is the baseline sampler (kv_cache and threshold there are ignored: each variant
sets its own). A `[data]` section is optional: when present, the prompts are the first
`prompt_tokens` tokens of validation sequences, otherwise every prompt is `inference.prompt`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config.schemas import BenchmarkConfig, DataConfig, InferenceConfig, KVCacheMode, Section, require_text_rows

ALL_VARIANTS = ["baseline", "prefix", "dual", "threshold", "prefix+threshold", "dual+threshold"]
_PART = re.compile(r"prefix|dual|threshold|refresh(\d+)|compile")


@dataclass(frozen=True)
class VariantSettings:
    """What a variant name asks of the sampler: its parts joined by "+" (in any order), from
    `prefix` or `dual` (the KV cache), `threshold` (parallel decoding at
    `bench_infer.threshold`), `refreshN` (refresh the cache every N steps inside a block) and
    `compile` (compiled fixed-shape forwards). "baseline" is LLaDA's plain sampler."""

    kv_cache: KVCacheMode = "none"
    threshold: bool = False
    refresh_every: int | None = None
    compile: bool = False


def parse_variant(name: str) -> VariantSettings:
    if name == "baseline":
        return VariantSettings()
    fields: dict = {}
    for part in name.split("+"):
        match = _PART.fullmatch(part)
        if match is None or (part in ("prefix", "dual") and "kv_cache" in fields):
            raise ValueError(f"variant {name!r}: unknown or repeated part {part!r} (parts: prefix or dual, threshold, "
                             f"refreshN, compile, joined by '+'; or 'baseline')")
        if part in ("prefix", "dual"):
            fields["kv_cache"] = part
        elif match.group(1) is not None:
            fields["refresh_every"] = int(match.group(1))
        else:
            fields[part] = True
    if fields.get("refresh_every") is not None and "kv_cache" not in fields:
        raise ValueError(f"variant {name!r}: refreshN needs a cache (prefix or dual)")
    if fields.get("refresh_every") == 0:
        raise ValueError(f"variant {name!r}: refresh0 is not an interval (use refresh1 or more)")
    return VariantSettings(**fields)


class InferBenchSection(Section):
    """`[bench_infer]`: which variants, how many prompts, rounds, and the quality signal's budget."""

    variants: list[str] = Field(default_factory=lambda: list(ALL_VARIANTS))
    rounds: int = Field(3, gt=0, description="variants alternate this many times (each round times every variant)")
    threshold: float = Field(0.9, gt=0, le=1, description="confidence threshold of the parallel-decoding variants")
    num_prompts: int = Field(4, gt=0, description="prompts decoded together as one batch")
    prompt_tokens: int = Field(8, ge=0, description="prompt length when prompts come from [data]")
    quality_mc_num: int = Field(32, gt=0, description="LLaDA likelihood draws per generated sequence (quality)")
    quality_mc_batch_size: int = Field(8, gt=0)

    @field_validator("variants")
    @classmethod
    def _known(cls, variants: list[str]) -> list[str]:
        for name in variants:
            parse_variant(name)
        if len(set(variants)) != len(variants):
            raise ValueError("variants: a variant is listed twice")
        return variants


class BenchInferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    bench_infer: InferBenchSection = Field(default_factory=InferBenchSection)
    data: DataConfig | None = None

    @model_validator(mode="after")
    def _check_data(self) -> BenchInferConfig:
        require_text_rows(self.data, "diffusionlm-bench-infer")
        return self
