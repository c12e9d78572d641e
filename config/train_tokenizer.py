"""`diffusionlm-train-tokenizer` config: which text to train a byte-level BPE on, and where to write it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from config.special_tokens import DEFAULT_SPECIAL_TOKENS


class TrainTokenizerConfig(BaseModel):
    """Train a tokenizer on a UTF-8 text file, or on the built-in story corpus when no file is given."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    input_path: Path | None = Field(None, description="UTF-8 text file; leave out to train on the built-in corpus")
    builtin_seed: int = Field(0, description="seed of the built-in corpus stories")
    builtin_num_stories: int = Field(10000, gt=0, description="stories generated when input_path is left out")
    vocab_size: int = Field(1024, gt=0, description="bytes + merges + special tokens (fewer if the corpus runs out of pairs)")
    special_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS))
    output_dir: Path = Path("runs/tokenizer")
    num_processes: int | None = Field(None, gt=0, description="pre-tokenization workers (default: CPU count)")
    heldout_bytes: int = Field(65536, ge=0, description="tail of the input kept out of training to measure bytes/token")
    progress: bool = True

    @field_validator("input_path")
    @classmethod
    def _input_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"file not found: {path}")
        return path

    @field_validator("special_tokens")
    @classmethod
    def _distinct_special_tokens(cls, tokens: list[str]) -> list[str]:
        if any(not token for token in tokens):
            raise ValueError("special tokens must be non-empty strings")
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"special tokens must be distinct, got {tokens}")
        return tokens
