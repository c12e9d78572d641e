"""`diffusionlm-train` config: one TOML with the sections below, validated before any work starts.

Checks that need more than the file itself (the tokenizer's special ids against `[model]`,
whether CUDA exists) run when the trainer is built, with the same one-line `InputError`s.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.schemas import (
    CheckpointConfig,
    DataConfig,
    DDPConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ProfilingConfig,
    TrainingConfig,
    WandbConfig,
)


class TrainConfig(BaseModel):
    """Everything one training run needs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: ModelConfig
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    training: TrainingConfig
    data: DataConfig = Field(default_factory=DataConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    ddp: DDPConfig = Field(default_factory=DDPConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    profiling: ProfilingConfig = Field(default_factory=ProfilingConfig)

    @model_validator(mode="after")
    def _check_cross_section(self) -> TrainConfig:
        training = self.training
        if training.max_train_iteration % training.grad_accum_steps:
            raise ValueError(f"training.max_train_iteration ({training.max_train_iteration}) must be a multiple of "
                             f"training.grad_accum_steps ({training.grad_accum_steps}): it counts micro-steps")
        if not training.skip_validation and self.data.val_split is None:
            raise ValueError("data.val_split is unset: name a validation split or set training.skip_validation = true")
        if self.model.causal and training.random_trunc_prob > 0:
            raise ValueError("training.random_trunc_prob must be 0 when model.causal = true (a diffusion-only option)")
        if self.data.format == "sft":
            if self.model.causal:
                raise ValueError('data.format = "sft" trains the masked-diffusion SFT objective; model.causal must be false')
            if training.random_trunc_prob > 0:
                raise ValueError('training.random_trunc_prob must be 0 when data.format = "sft" (it would cut answers)')
        return self
