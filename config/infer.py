"""`diffusionlm-infer` config: the `[inference]` section (which model, which prompt, how to sample).

Checks that need the model (total_length against its context, the mask id against its
tokenizer) run when the checkpoint is loaded, with the same one-line `InputError`s.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from config.schemas import InferenceConfig, ProfilingConfig


class InferConfig(BaseModel):
    """Everything one sampling run needs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    profiling: ProfilingConfig = Field(default_factory=ProfilingConfig)
