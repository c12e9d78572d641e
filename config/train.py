"""`diffusionlm-train` config: one TOML with the sections below, validated before any work starts.

Checks that need more than the file itself (the tokenizer's special ids against `[model]`,
whether CUDA exists) run when the trainer is built, with the same one-line `InputError`s.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.schemas import (
    CheckpointConfig,
    DataConfig,
    DDPConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    TrainingConfig,
    WandbConfig,
)
from diffusionlm.errors import InputError
from diffusionlm.tokenizer.special_tokens import EOT_TOKEN, MASK_TOKEN


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
        return self


class SpecialTokenSource(Protocol):
    """What the compatibility check needs from a tokenizer."""

    special_tokens: dict[str, int]
    vocab_size: int


def check_tokenizer_matches_model(model: ModelConfig, tokenizer: SpecialTokenSource, source: str) -> None:
    """Raise InputError unless the tokenizer's special ids equal `[model]`'s and fit its vocab.

    A mismatch would train the model to predict the wrong mask/eot ids, silently; `source`
    names the tokenizer files in the message.
    """
    for token, field in ((MASK_TOKEN, "mask_token_id"), (EOT_TOKEN, "eot_token_id")):
        token_id = tokenizer.special_tokens.get(token)
        if token_id is None:
            raise InputError(f"{source}: tokenizer has no {token} special token (needed for model.{field})")
        if token_id != getattr(model, field):
            raise InputError(f"model.{field}: {getattr(model, field)} does not match the tokenizer's {token} "
                             f"id {token_id} ({source})")
    if tokenizer.vocab_size > model.vocab_size:
        raise InputError(f"model.vocab_size: {model.vocab_size} is smaller than the tokenizer's vocabulary "
                         f"({tokenizer.vocab_size} tokens, {source})")
