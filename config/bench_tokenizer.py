"""`diffusionlm-bench-tokenizer` config: the corpora and reference files the tokenizer benchmark reads.

Relative paths are resolved from the directory the command runs in (the repo root, where
`../shared/data` sits beside the checkout).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from config.special_tokens import DEFAULT_SPECIAL_TOKENS

_DATA = Path("../shared/data")


class BenchTokenizerConfig(BaseModel):
    """Training time/RSS against HF `tokenizers`, encode speed against `tiktoken`, streaming memory."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    train_corpus_path: Path = _DATA / "tinystories_train.txt"
    train_vocab_size: int = Field(10000, gt=0)
    special_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS))
    num_processes: int | None = Field(None, gt=0, description="our pre-tokenization workers (default: CPU count)")
    small_corpus_path: Path = _DATA / "corpus.en"
    small_num_merges: int = Field(500, gt=0)
    encode_path: Path = _DATA / "english_general.txt"
    gpt2_vocab_path: Path = _DATA / "gpt2_vocab.json"
    gpt2_merges_path: Path = _DATA / "gpt2_merges.txt"
    encode_repeats: int = Field(3, gt=0, description="best of this many encodes, each with a cold cache")
    stream_source_path: Path = _DATA / "tinystories_valid.txt"
    stream_megabytes: int = Field(100, gt=0, description="size of the generated stream fed to encode_iterable")

    @field_validator(
        "train_corpus_path", "small_corpus_path", "encode_path", "gpt2_vocab_path", "gpt2_merges_path",
        "stream_source_path",
    )
    @classmethod
    def _file_exists(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"file not found: {path} (relative paths start from the current directory)")
        return path
