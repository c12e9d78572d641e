"""`diffusionlm-bench-serve` config: concurrent loopback clients against the server, batching
on and off in the same run.

`[inference]` is the served model and the sampler settings every request uses (as in
`diffusionlm-serve`); `[server]` is the batching server (the sequential run is the same server
with `max_batch_size = 1`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from config.schemas import BenchmarkConfig, InferenceConfig, Section
from config.serve import ServerConfig


class ServeBenchSection(Section):
    """`[bench_serve]`: the load."""

    clients: int = Field(16, gt=0, description="concurrent clients")
    requests_per_client: int = Field(4, gt=0, description="requests each client sends, one after the other")
    max_tokens: int = Field(32, gt=0, description="tokens generated per request")
    prompts: list[str] = Field(default_factory=lambda: ["Once upon a time", "Tom and his dog", "The little girl"],
                               min_length=1, description="cycled over the requests")
    timeout_s: float = Field(600.0, gt=0, description="bound on each run (batched, sequential)")


class BenchServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    bench_serve: ServeBenchSection = Field(default_factory=ServeBenchSection)
