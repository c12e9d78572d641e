"""Wiring: build everything a run needs from a `TrainConfig`, then hand it to the loop.

    config -> tokenizer check -> device -> run directory (config.toml, tokenizer/)
           -> [pre-trained weights to fine-tune from] -> data, validation -> model
           -> parallelize (compile, DDP/FSDP2, optimizer) -> logger -> [restore checkpoint] -> train_loop -> export/model.safetensors -> a sample

Nothing here computes a loss or steps an optimizer; see `loop.py` for that. In a
data-parallel run every rank builds its own trainer: the model is initialised from the same
seed everywhere, noise and data come from per-rank streams, and rank 0 writes the files,
with every rank's optimizer, RNG and loader state gathered into its checkpoints.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from config.io import write_config
from config.train import TrainConfig
from ddp.utils import all_reduce_mean, all_reduce_mean_metrics, broadcast_object, gather_to_rank_zero
from diffusionlm.data.batches import Batches, build_batches
from diffusionlm.diffusion.forward_process import NoiseGenerators
from diffusionlm.errors import InputError
from diffusionlm.inference.predictor import StoredWeights, load_weights, read_weights
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.tokenizer.checks import check_tokenizer_matches_model
from diffusionlm.tokenizer.io import load_tokenizer, save_tokenizer
from diffusionlm.tokenizer.tokenizer import Tokenizer
from diffusionlm.training.export import export_safetensors
from diffusionlm.training.grad_sync import GradSync
from diffusionlm.training.loop import LoopHooks, LoopState, StepSettings, train_loop
from diffusionlm.training.objective import Objective, build_objective
from diffusionlm.training.parallelize import Parallelized, parallelize
from diffusionlm.training.rng import capture_rng_state, rank_seed, restore_rng_state
from diffusionlm.training.sample import sample_text
from diffusionlm.training.throughput import FlopCounter, model_flops_per_token, peak_flops
from diffusionlm.training.validation import Validator
from diffusionlm.utils.checkpoint import (
    Checkpointer,
    check_same_model,
    optimizer_shard,
    remove_unfinished_saves,
    resolve_and_load,
)
from diffusionlm.utils.device import autocast_context, resolve_device
from diffusionlm.utils.files import check_output_dir
from diffusionlm.utils.run_layout import (
    EXPORT_DIRNAME,
    RUN_CONFIG_FILENAME,
    TOKENIZER_DIRNAME,
    list_checkpoints,
    run_dir_of,
)
from diffusionlm.utils.threads import apply_num_threads
from logger import Logger, build_logger
from profiling import nvtx
from profiling.trace import StepProfiler


@dataclass
class Trainer:
    """Everything one run is made of, built and (on resume) restored by `build_trainer`."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    tokenizer: Tokenizer
    parallel: Parallelized
    train_batches: Batches
    validator: Validator | None
    objective: Objective
    noise_generator: NoiseGenerators
    logger: Logger
    checkpointer: Checkpointer
    state: LoopState = field(default_factory=LoopState)
    rank: int = 0
    world_size: int = 1

    @property
    def model(self) -> torch.nn.Module:
        """What the loop calls: the model, or its data-parallel wrapper."""
        return self.parallel.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.parallel.optimizer

    @property
    def grad_sync(self) -> GradSync:
        return self.parallel.grad_sync


@dataclass
class TrainResult:
    run_dir: Path
    final_checkpoint: Path | None
    export_dir: Path | None
    state: LoopState
    sample: str | None


def load_configured_tokenizer(config: TrainConfig) -> Tokenizer:
    """The configured tokenizer, checked against `[model]` (special ids, vocabulary size)."""
    tok = config.data.tokenizer
    tokenizer = load_tokenizer(tok.vocab_path, tok.merges_path, tok.special_tokens_path, tok.special_tokens)
    source = str(tok.vocab_path) if tok.vocab_path is not None else "the built-in tokenizer"
    check_tokenizer_matches_model(config.model, tokenizer, source)
    return tokenizer


def count_parameters(config: TrainConfig) -> tuple[int, int]:
    """(total, non-embedding) parameters, from a model built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = TransformerLM(config.model)
    return model.num_parameters(), model.num_parameters(exclude_embedding=True)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (model initialisation); the diffusion
    noise has its own `NoiseGenerators`, saved in every checkpoint."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _new_run_dir(config: TrainConfig) -> Path:
    # Rank 0's clock names the run, so ranks that start a second apart agree.
    name = config.logging.run_name or broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
    run_dir = config.checkpoint.runs_path / name
    if list_checkpoints(run_dir):
        raise InputError(f"{run_dir}: this run directory already holds checkpoints; continue it with "
                         f"--resume latest, or choose another logging.run_name")
    return run_dir


def _write_run_files(config: TrainConfig, run_dir: Path, tokenizer: Tokenizer) -> None:
    """config.toml and the tokenizer files, so the run directory is self-contained for inference."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(config, run_dir / RUN_CONFIG_FILENAME)
    save_tokenizer(run_dir / TOKENIZER_DIRNAME, tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)


def build_trainer(config: TrainConfig, *, resume: str | None = None, rank: int = 0, world_size: int = 1) -> Trainer:
    """Build (and on `resume`, restore) a run. Every user-fixable problem is an InputError
    raised before the run directory is touched, except a bad checkpoint, which never alters it.

    `resume="latest"` for a run that has no checkpoint yet (killed before its first save)
    starts it from the beginning, with a one-line notice. With world_size > 1 the process group
    must be initialised (see `ddp.utils`); `[ddp]` then chooses the data-parallel implementation."""
    check_output_dir(config.checkpoint.runs_path, "checkpoint.runs_path")
    tokenizer = load_configured_tokenizer(config)
    device = resolve_device(config.training.device)
    training = config.training
    apply_num_threads(training.num_threads)

    checkpoint = checkpoint_file = None
    default_run_dir = (config.checkpoint.runs_path / config.logging.run_name) if config.logging.run_name else None
    if resume == "latest" and default_run_dir is not None and not list_checkpoints(default_run_dir):
        if rank == 0:
            print(f"--resume latest: {default_run_dir} has no checkpoint yet; starting the run from the beginning",
                  file=sys.stderr, flush=True)
        resume = None
    if resume is not None:
        checkpoint_file, checkpoint = resolve_and_load(resume, default_run_dir, map_location="cpu")
        check_same_model(checkpoint, config.model.model_dump(mode="json"), checkpoint_file)
        _check_same_world_size(checkpoint, world_size, checkpoint_file)
        run_dir = run_dir_of(checkpoint_file)
    else:
        run_dir = _new_run_dir(config)
    # Fine-tuning: read (and check) the pre-trained weights before any slow work; a resumed run
    # has its own weights in the checkpoint.
    init_weights = _read_init_weights(config, device) if training.init_from is not None and resume is None else None

    # Data first: a dataset that cannot be opened (a Hub name offline, a missing file) fails
    # within seconds, before minutes go into initialising a large model.
    batch_settings = {"context_length": config.model.context_length, "batch_size": training.batch_size,
                      "rank": rank, "world_size": world_size, "seed": training.seed}
    train_batches = build_batches(config.data, tokenizer, config.model.eot_token_id, split=config.data.train_split,
                                  loop=True, pin_memory=device.type == "cuda", **batch_settings)
    validator = None
    if not training.skip_validation:
        val_batches = build_batches(config.data, tokenizer, config.model.eot_token_id, split=config.data.val_split,
                                    loop=False, **batch_settings)
        try:
            validator = Validator(val_batches, training.max_val_iteration, causal=config.model.causal,
                                  mask_id=config.model.mask_token_id, noise_epsilon=training.noise_epsilon,
                                  count_text_bytes=tokenizer.count_text_bytes, seed=training.seed, device=device,
                                  autocast=lambda: autocast_context(device, training.dtype),
                                  source=f"data.val_split {config.data.val_split!r}")
        finally:
            val_batches.close()

    seed_everything(training.seed)  # the same model initialisation on every rank
    model = TransformerLM(config.model).to(device)
    noise_generator = NoiseGenerators.seeded(rank_seed(training.seed, rank), device)  # but this rank's own noise
    if rank:
        seed_everything(rank_seed(training.seed, rank))  # and its own global streams from here on
    if init_weights is not None:
        load_weights(model, init_weights.state, init_weights.source.weights, init_weights.config)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    parallel = parallelize(model, config.optimizer, config.ddp, compile=training.compile)

    state = LoopState()
    if checkpoint is not None:
        _restore_optimizer(parallel, optimizer_shard(checkpoint, rank, world_size, checkpoint_file), checkpoint_file)
        train_batches.load_state_dict(checkpoint["data"][rank])
        rng = checkpoint["rng"]
        restore_rng_state(rng[rank] if rank in rng else rng, noise_generator)  # {rank: state} when world_size > 1
        state = LoopState(iteration=checkpoint["step"], optimizer_step=checkpoint["scheduler_step"],
                          skipped_steps=checkpoint["skipped_steps"])
    if rank == 0:
        _write_run_files(config, run_dir, tokenizer)
        remove_unfinished_saves(run_dir)
    config_dict = config.model_dump(mode="json")
    return Trainer(config=config, run_dir=run_dir, device=device, tokenizer=tokenizer, parallel=parallel,
                   train_batches=train_batches, validator=validator,
                   objective=build_objective(config.model, training), noise_generator=noise_generator,
                   logger=build_logger(config.logging, config.wandb, run_dir=run_dir, config=config_dict, rank=rank),
                   checkpointer=Checkpointer(run_dir, config.checkpoint.keep_last_n, config_dict, rank,
                                             resumed_from=checkpoint_file),
                   state=state, rank=rank, world_size=world_size)


def _check_same_world_size(checkpoint: dict, world_size: int, path: Path) -> None:
    """Each rank's data stream is a function of (rank, world_size), so its saved position only
    means something for the same number of ranks. (Model and optimizer state would load anywhere.)"""
    saved = len(checkpoint["data"])
    if saved != world_size:
        raise InputError(f"{path}: written by a run with {saved} rank(s), this run has {world_size}; the data "
                         f"streams are split per rank, so resume it with {saved} rank(s)")


# The `[model]` fields that fix the weights' shapes or the meaning of their token ids: a
# fine-tuning run must keep them. context_length, rope_theta and causal may change.
INIT_FROM_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "mask_token_id", "eot_token_id")


def _read_init_weights(config: TrainConfig, device: torch.device) -> StoredWeights:
    """`training.init_from`'s weights, checked to fit `[model]` (InputError naming the first field that differs)."""
    stored = read_weights(config.training.init_from, device, field="training.init_from")
    for key in INIT_FROM_FIELDS:
        saved, wanted = getattr(stored.config, key), getattr(config.model, key)
        if saved != wanted:
            raise InputError(f"training.init_from: {stored.source.weights} has model.{key} = {saved!r} but the "
                             f"config says {wanted!r}; fine-tuning needs the same model shape")
    return stored


def _save_hook(trainer: Trainer):
    """Collective: every rank contributes its optimizer share, RNG and loader state; rank 0 writes."""
    parallel = trainer.parallel

    def save(state: LoopState, metrics: dict[str, float]) -> None:
        model_state, optimizer_state = parallel.full_model_state(), parallel.optimizer_state()
        rngs = gather_to_rank_zero(capture_rng_state(trainer.noise_generator))
        loaders = gather_to_rank_zero(trainer.train_batches.state_dict())
        if trainer.rank != 0:
            return
        trainer.checkpointer.save(
            step=state.iteration, scheduler_step=state.optimizer_step, skipped_steps=state.skipped_steps,
            model_state=model_state, optimizer_shards={0: optimizer_state},
            rng=rngs[0] if trainer.world_size == 1 else dict(enumerate(rngs)), data=dict(enumerate(loaders)),
            metrics=metrics)
    return save


def _restore_optimizer(parallel: Parallelized, state: dict, source: Path) -> None:
    """Restore moments and step counts from `state` but keep this run's hyperparameters.

    torch's `load_state_dict` would bring back the saved groups' learning rates, betas and
    weight decay, silently overriding a changed `[optimizer]` section that config.toml records
    as in force; resuming to extend a run (a longer cosine) must use the new values.
    """
    optimizer = parallel.optimizer
    saved_groups = state["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise InputError(f"{source}: the checkpoint's optimizer has {len(saved_groups)} parameter groups, this config "
                         f"builds {len(optimizer.param_groups)} (was optimizer.optimizer_name changed?)")
    groups = [{**saved, **{key: value for key, value in current.items() if key != "params"}}
              for saved, current in zip(saved_groups, optimizer.param_groups)]
    parallel.load_optimizer_state({**state, "param_groups": groups})


def _provenance_record(provenance: dict) -> dict[str, float | int | str]:
    """The training data's provenance as flat `data.provenance.*` keys, logged once per run so
    a run's metrics can always be traced to the exact dataset, split, files and settings."""
    return {f"data.provenance.{key}": value if isinstance(value, (int, float, str)) else json.dumps(value)
            for key, value in provenance.items()}


def run_training(trainer: Trainer) -> TrainResult:
    """Train to `max_train_iteration`, export the weights, print a sample; returns where things are."""
    config, training = trainer.config, trainer.config.training
    settings = StepSettings(device=trainer.device, grad_accum_steps=training.grad_accum_steps,
                            optimizer_cfg=config.optimizer,
                            autocast=lambda: autocast_context(trainer.device, training.dtype),
                            clip_grad_norm=trainer.parallel.clip_grad_norm, global_mean=all_reduce_mean,
                            nan_policy=training.nan_policy)
    batches = trainer.train_batches
    trainer.logger.log(_provenance_record(batches.provenance()) | {"params.num_threads": torch.get_num_threads()},
                       step=trainer.state.iteration)
    profiler = StepProfiler(config.profiling, trainer.run_dir, trainer.device) if trainer.rank == 0 else None
    peak = peak_flops(trainer.device, config.logging.peak_tflops)
    flops = FlopCounter(model_flops_per_token(config.model), peak * trainer.world_size if peak else None)
    block_ranges = nvtx.annotate_blocks(getattr(trainer.model, "module", trainer.model).blocks)  # inside a DDP wrapper
    try:
        state = train_loop(
            trainer.model, trainer.optimizer, lambda: next(batches), objective=trainer.objective,
            noise_generator=trainer.noise_generator, grad_sync=trainer.grad_sync, settings=settings,
            validator=trainer.validator, logger=trainer.logger,
            hooks=LoopHooks(save_checkpoint=_save_hook(trainer), loader_metrics=batches.metrics,
                            last_checkpoint=lambda: trainer.checkpointer.last_saved,
                            reduce_metrics=all_reduce_mean_metrics,
                            at_step=profiler.at_step if profiler is not None else lambda iteration: {}),
            state=trainer.state, max_iteration=training.max_train_iteration, log_every=config.logging.log_every,
            val_every=training.val_freq_iteration, save_every=training.ckpting_save_iter,
            log_activation_norms=config.logging.log_activation_norms,
            log_weight_norms=config.logging.log_weight_norms, rank=trainer.rank, world_size=trainer.world_size,
            flops=flops)
        export_dir = sample = None
        final_model = trainer.parallel.full_model()  # collective; the unsharded model on rank 0
        if trainer.rank == 0:
            if config.checkpoint.export_safetensors:
                export_dir = export_safetensors(final_model, config.model, trainer.run_dir / EXPORT_DIRNAME)
                trainer.logger.log_artifact(export_dir, name="model", type="model")
            if training.sample_at_end:
                sample = sample_text(final_model.to(trainer.device), trainer.tokenizer, config.model, trainer.device)
                trainer.logger.log({"sample": sample}, step=state.iteration)
                print(f"--- sample from the final model ---\n{sample}\n---", file=sys.stderr, flush=True)
        return TrainResult(run_dir=trainer.run_dir, final_checkpoint=trainer.checkpointer.last_saved,
                           export_dir=export_dir, state=state, sample=sample)
    finally:
        for handle in block_ranges:
            handle.remove()
        if profiler is not None and (events := profiler.close()):
            trainer.logger.log(events, step=trainer.state.iteration)
        batches.close()
        trainer.logger.finish()


def train(config: TrainConfig, *, resume: str | None = None) -> TrainResult:
    """Build and run a single-process training run (the library entry point behind `diffusionlm-train`)."""
    return run_training(build_trainer(config, resume=resume))
