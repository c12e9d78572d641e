"""Shared config sub-models: one class per TOML section, reused by every entry point's schema.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored
setting. Cross-field checks that only involve one section live on that section; checks that
span sections (for example the tokenizer's special ids against `[model]`) live on the entry
point's schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config.special_tokens import DEFAULT_SPECIAL_TOKENS


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Device = Literal["auto", "cpu", "cuda"] | str
# The choice lists and defaults that more than one section (or the library) relies on, written once.
Precision = Literal["float32", "bfloat16"]
# CPU threads for torch; None (the default everywhere) resolves to $OMP_NUM_THREADS, else the
# machine's usable cores (diffusionlm.utils.threads, applied and reported at start).
NumThreads = Annotated[Annotated[int, Field(gt=0)] | None,
                       Field(description="torch CPU threads; unset: $OMP_NUM_THREADS, else all usable cores")]
AUTOCAST_PRECISION: Precision = "bfloat16"  # CUDA autocast dtype unless configured otherwise
RemaskingStrategy = Literal["low_confidence", "random", "margin", "entropy"]
KVCacheMode = Literal["none", "prefix", "dual"]
CompileMode = Literal["off", "blocks", "model"]
NOISE_EPSILON = 1e-3  # floor of the mask probability: p_mask = (1 - eps) * t + eps
# How the diffusion loss weighs a sequence's masked tokens: "elbo" divides each by p_mask (the
# ELBO's own Monte-Carlo weight), "masked_mean" averages them (the self-normalised estimator).
LossWeighting = Literal["elbo", "masked_mean"]

# `[data].document_separator` values with a meaning of their own; any other string is a separator.
DOCUMENT_PER_LINE = "line"
DOCUMENT_PER_BLANK_LINE = "blank_line"


class ModelConfig(Section):
    """`[model]`: the Transformer's architecture and the token ids it reserves."""

    vocab_size: int = Field(gt=0, description="embedding rows; may be padded above the tokenizer's size")
    context_length: int = Field(gt=0, description="longest sequence the model is trained/used on")
    d_model: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    d_ff: int = Field(gt=0, description="SwiGLU hidden width")
    rope_theta: float = Field(10000.0, gt=0)
    causal: bool = Field(False, description="true: autoregressive baseline trained with next-token loss")
    mask_token_id: int = Field(ge=0, description="id of <|mask|>, the diffusion mask token")
    eot_token_id: int = Field(ge=0, description="id of <|endoftext|>, appended after every document")

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if (self.d_model // self.num_heads) % 2:
            raise ValueError(f"head dim d_model/num_heads = {self.d_model // self.num_heads} must be even for RoPE")
        for name in ("mask_token_id", "eot_token_id"):
            if getattr(self, name) >= self.vocab_size:
                raise ValueError(f"{name} ({getattr(self, name)}) must be < vocab_size ({self.vocab_size})")
        return self


class TokenizerConfig(Section):
    """`[data.tokenizer]`: tokenizer files. Leave all three out to use the tokenizer shipped
    with the package for the built-in corpus."""

    vocab_path: Path | None = None
    merges_path: Path | None = None
    special_tokens_path: Path | None = Field(None, description="special_tokens.json written by our trainer")
    special_tokens: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS),
        description="used when special_tokens_path is absent (e.g. GPT-2 files); missing ones are appended",
    )

    @model_validator(mode="after")
    def _check_paths(self) -> TokenizerConfig:
        given = [self.vocab_path is not None, self.merges_path is not None]
        if any(given) and not all(given):
            raise ValueError("vocab_path and merges_path must be given together (or both left out for the built-in tokenizer)")
        for name in ("vocab_path", "merges_path", "special_tokens_path"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: file not found: {path}")
        return self


class AdamWGroupConfig(Section):
    """An AdamW parameter group used beside Muon (`[optimizer.muon.head|embed|scalar]`)."""

    max_learning_rate: float = Field(gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class MuonGroupConfig(Section):
    """`[optimizer.muon.hidden]`: Muon for every 2-D weight matrix except the embedding and the LM head."""

    max_learning_rate: float = Field(0.02, gt=0)
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(5, gt=0, description="Newton-Schulz iterations")
    ns_dtype: Precision = Field("bfloat16", description="Newton-Schulz matmul precision")
    weight_decay: float = Field(0.0, ge=0)


class MuonConfig(Section):
    """`[optimizer.muon.*]`: one Muon group for hidden matrices and three AdamW groups."""

    hidden: MuonGroupConfig = Field(default_factory=MuonGroupConfig)
    head: AdamWGroupConfig = Field(default_factory=lambda: AdamWGroupConfig(max_learning_rate=0.008))
    embed: AdamWGroupConfig = Field(default_factory=lambda: AdamWGroupConfig(max_learning_rate=0.1))
    scalar: AdamWGroupConfig = Field(default_factory=lambda: AdamWGroupConfig(max_learning_rate=0.004))


class OptimizerConfig(Section):
    """`[optimizer]`: AdamW or Muon, the warmup+cosine schedule, and gradient clipping.

    With Muon, every group's learning rate follows the same schedule shape, scaled by the
    group's own `max_learning_rate` relative to this section's.
    """

    optimizer_name: Literal["adamw", "muon"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    decay_norms_and_embeddings: bool = Field(False, description="apply weight decay to norms/embeddings too")
    max_learning_rate: float = Field(3e-4, gt=0)
    min_learning_rate: float = Field(3e-5, ge=0)
    warmup_iters: int = Field(100, ge=0)
    cosine_cycle_iters: int = Field(1000, gt=0, description="step at which the cosine reaches min_learning_rate")
    grad_clip_max_l2_norm: float | None = Field(1.0, gt=0, description="leave out to disable clipping")
    muon: MuonConfig = Field(default_factory=MuonConfig)

    @model_validator(mode="after")
    def _check_schedule(self) -> OptimizerConfig:
        if self.cosine_cycle_iters <= self.warmup_iters:
            raise ValueError(
                f"cosine_cycle_iters ({self.cosine_cycle_iters}) must be > warmup_iters ({self.warmup_iters})"
            )
        if self.min_learning_rate > self.max_learning_rate:
            raise ValueError("min_learning_rate must be <= max_learning_rate")
        return self


class TrainingConfig(Section):
    """`[training]`: the loop. `max_train_iteration` counts micro-steps (forward/backward
    passes); the optimizer steps every `grad_accum_steps` of them."""

    device: Device = "auto"
    dtype: Precision = Field(AUTOCAST_PRECISION, description="autocast dtype on CUDA; CPU runs fp32")
    compile: CompileMode = Field(
        "off", description='"off", "blocks" (each Transformer block) or "model" (the whole forward, one graph)')
    num_threads: NumThreads = None
    seed: int = 0
    batch_size: int = Field(gt=0)
    grad_accum_steps: int = Field(1, gt=0)
    max_train_iteration: int = Field(gt=0)
    max_val_iteration: int = Field(10, gt=0, description="validation batches per evaluation")
    val_freq_iteration: int = Field(100, gt=0)
    ckpting_save_iter: int = Field(500, gt=0)
    skip_validation: bool = False
    noise_epsilon: float = Field(NOISE_EPSILON, ge=0, lt=1, description="p_mask = (1-eps)*t + eps")
    random_trunc_prob: float = Field(0.0, ge=0, le=1, description="probability of cutting a batch to a random length")
    antithetic_time: bool = Field(True, description="stratify t across the batch (lower-variance loss)")
    mask_rate_floor: float = Field(
        0.2, ge=0, lt=1, description="training draws t from U[floor, ceiling) (0 is LLaDA's; benchmarking/RESULTS.md "
                                     "has the measurement); evaluation still covers the full range")
    mask_rate_ceiling: float = Field(
        0.9, gt=0, le=1, description="training draws t from U[floor, ceiling) (1 is LLaDA's; benchmarking/RESULTS.md "
                                     "has the measurement); evaluation still covers the full range")
    loss_weighting: LossWeighting = Field(
        "elbo", description='"elbo": masked tokens weighted 1/p_mask; "masked_mean": averaged per sequence')
    nan_policy: Literal["stop", "skip"] = Field("stop", description="on a non-finite loss: stop, or skip the step")
    sample_at_end: bool = Field(True, description="print a short sample from the final model")
    init_from: Path | None = Field(
        None, description="fine-tune: start from these weights (run directory, checkpoint .pt or export/)")

    @model_validator(mode="after")
    def _check_mask_rates(self) -> TrainingConfig:
        if self.mask_rate_floor >= self.mask_rate_ceiling:
            raise ValueError(f"mask_rate_floor ({self.mask_rate_floor}) must be < mask_rate_ceiling "
                             f"({self.mask_rate_ceiling})")
        return self

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_from_bool(cls, value: object) -> object:
        """Configs and run directories written before the modes existed say `compile = true/false`;
        true meant compiling each block."""
        if isinstance(value, bool):
            return "blocks" if value else "off"
        return value


# `[data].dataset_name` for a token file written by diffusionlm-make-data (`data_files` names the .dat files).
MEMMAP_DATASET = "memmap"


class DataConfig(Section):
    """`[data]`: a streaming `datasets` source, its tokenizer, and how rows become sequences."""

    dataset_name: str = Field(
        "builtin", description='"builtin" (procedural stories), a Hub name, json/text/parquet, or "memmap" (.dat files)')
    dataset_config: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    train_split: str = "train"
    val_split: str | None = "validation"
    text_field: str = "text"
    format: Literal["text", "sft"] = Field(
        "text", description='"text": documents; "sft": prompt/response pairs for supervised fine-tuning (pad mode)')
    prompt_field: str = Field("prompt", description='sft: column holding the prompt')
    response_field: str = Field("response", description='sft: column holding the response')
    document_separator: str = Field(
        DOCUMENT_PER_LINE, min_length=1,
        description='text files: "line" (a document per line), "blank_line", or a separator such as "<|endoftext|>"')
    token_field: str | None = Field(
        None, description="pre-tokenized rows (diffusionlm-make-data parquet): the column of token ids, used as is")
    memmap_windows: Literal["random", "sequential"] = Field(
        "random", description='"memmap" training windows: a seeded shuffle per epoch, or in file order')
    mode: Literal["pack", "pad"] = Field("pack", description="pack rows into full windows, or one row per sequence")
    shuffle_buffer_size: int = Field(1000, ge=0)
    shuffle_seed: int = 0
    num_workers: int = Field(0, ge=0, description="tokenizer worker processes (0: in the training process)")
    hub_timeout_s: float = Field(10.0, gt=0, description="seconds to wait for the Hugging Face Hub before failing (offline check)")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)

    @model_validator(mode="after")
    def _check_source_options(self) -> DataConfig:
        if self.document_separator != DOCUMENT_PER_LINE and self.dataset_name != "text":
            raise ValueError(f'document_separator applies to dataset_name = "text" only (this one is '
                             f'{self.dataset_name!r}, whose rows are already documents); leave it "line"')
        if self.dataset_name == MEMMAP_DATASET:
            if self.data_files is None:
                raise ValueError('dataset_name = "memmap" needs data_files: the .dat file(s), e.g. '
                                 '{ train = "out/train.dat", validation = "out/validation.dat" }')
            if self.mode != "pack" or self.token_field is not None:
                raise ValueError('dataset_name = "memmap" holds one token stream: use mode = "pack" and no token_field')
        if self.format == "sft" and self.mode != "pad":
            raise ValueError('format = "sft" needs mode = "pad": each prompt/response pair is one sequence, padded '
                             'with <|endoftext|> (packing several pairs into one window is not supported)')
        return self


def require_text_rows(data: DataConfig | None, entry_point: str) -> None:
    """For entry points that read `[data]` as text only: an SFT dataset is a training format."""
    if data is not None and data.format != "text":
        raise ValueError(f'data.format = "{data.format}" is for diffusionlm-train; {entry_point} reads text rows '
                         '(format = "text")')


class LoggingConfig(Section):
    """`[logging]`: where metrics go."""

    backend: Literal["console", "wandb", "noop"] = "console"
    run_name: str | None = Field(None, description="run directory name; leave out for a timestamped one")
    log_every: int = Field(10, gt=0)
    log_activation_norms: bool = False
    log_weight_norms: bool = False
    peak_tflops: float | None = Field(
        None, gt=0, description="one device's peak TFLOP/s for metrics.mfu; left out: known GPUs' bf16 peak, none on CPU")


class WandbConfig(Section):
    """`[wandb]`: used when `logging.backend = "wandb"`. Set WANDB_MODE=offline to log without network."""

    project: str = "diffusionlm"
    entity: str | None = None
    tags: list[str] = Field(default_factory=list)
    log_artifacts: bool = True


class DDPConfig(Section):
    """`[ddp]`: data-parallel training."""

    impl: Literal["custom", "torch", "fsdp2"] = "custom"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    bucket_size_mb: float = Field(25.0, gt=0)
    shard_optimizer_state: bool = True
    nproc_per_node: int = Field(1, gt=0, description="local processes started by diffusionlm-train-ddp")
    timeout_s: float = Field(600.0, gt=0, description="collective timeout, so a dead rank cannot hang the rest")


class CheckpointConfig(Section):
    """`[checkpoint]`: run directories and what is kept."""

    runs_path: Path = Path("runs")
    keep_last_n: int = Field(3, gt=0)
    export_safetensors: bool = Field(True, description="write model.safetensors + config.json at the end")


class InferenceConfig(Section):
    """`[inference]`: the sampler (LLaDA semantics) and its fast paths."""

    checkpoint: Path = Field(Path("runs/quickstart"),
                             description="run directory (newest checkpoint), a checkpoint .pt, or an export/ directory")
    prompt: str = ""
    steps: int = Field(64, gt=0)
    total_length: int = Field(128, gt=0, description="prompt + generated tokens")
    block_length: int = Field(32, gt=0, description="a final block shorter than this takes the remainder")
    temperature: float = Field(0.0, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    cfg_scale: float = Field(0.0, ge=0)
    remasking: RemaskingStrategy = "low_confidence"
    mask_id: int | None = Field(None, description="defaults to the tokenizer's <|mask|>")
    eos_token_id: int | None = Field(None, description="defaults to the tokenizer's <|endoftext|>")
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    stop_at_eos: bool = True
    kv_cache: KVCacheMode = "none"
    threshold: float | None = Field(None, gt=0, le=1, description="parallel decoding: commit tokens with confidence >= this")
    cache_refresh_every: int | None = Field(None, gt=0, description="kv_cache: also refresh every n steps inside a block")
    compile: bool = Field(False, description="torch.compile the fixed-shape forwards (CUDA graphs on CUDA)")
    seed: int = 0
    device: Device = "auto"
    dtype: Precision = Field(AUTOCAST_PRECISION, description="autocast dtype on CUDA; CPU runs fp32")
    num_threads: NumThreads = None


class ProfilingConfig(Section):
    """`[profiling]`: a torch.profiler trace over steps A..B and a CUDA memory snapshot at step N,
    written into the run directory's profiling/ folder and named in the log. Steps count
    training iterations (micro-steps) or, for inference, sampler steps (forward passes)."""

    trace_start_step: int | None = Field(None, ge=0, description="the trace starts after this many steps")
    trace_end_step: int | None = Field(None, gt=0, description="... and is written once this many are done")
    memory_snapshot_step: int | None = Field(
        None, gt=0, description="write the allocator snapshot after this many steps (CUDA; history from the start)")
    record_shapes: bool = Field(False, description="trace: record operator input shapes (larger trace)")

    @model_validator(mode="after")
    def _check_trace_window(self) -> ProfilingConfig:
        if (self.trace_start_step is None) != (self.trace_end_step is None):
            raise ValueError("trace_start_step and trace_end_step are set together (or both left out)")
        if self.trace_start_step is not None and self.trace_end_step <= self.trace_start_step:
            raise ValueError(f"trace_end_step ({self.trace_end_step}) must be > trace_start_step ({self.trace_start_step})")
        return self


class BenchmarkConfig(Section):
    """`[benchmark]`: repetitions and which variants to time."""

    warmup_steps: int = Field(3, ge=0)
    timed_steps: int = Field(10, gt=0)
    num_threads: NumThreads = None
