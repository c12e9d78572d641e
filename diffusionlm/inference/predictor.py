"""Load a trained model and its tokenizer, check an `[inference]` config against them, and
turn prompts into text.

Accepted model sources:
- a run directory: its newest complete `checkpoints/step_*.pt`, or `export/` when the run has
  no checkpoints;
- a checkpoint file (`.pt`);
- an export directory (`model.safetensors` + `config.json`) or its `model.safetensors`.

Checkpoints load with `torch.load(weights_only=True)` and exports with safetensors, so an
untrusted file cannot execute code. The tokenizer is the run's `tokenizer/` folder, or the
built-in one when the run has none. Every problem is an `InputError` naming the file or field.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from config.io import format_validation_error
from config.schemas import NOISE_EPSILON, InferenceConfig, ModelConfig
from diffusionlm.errors import InputError
from diffusionlm.inference.generate import GenerationResult, StepInfo, generate
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.tokenizer.checks import check_tokenizer_matches_model
from diffusionlm.tokenizer.io import MERGES_FILE, SPECIAL_TOKENS_FILE, VOCAB_FILE, load_tokenizer
from diffusionlm.tokenizer.tokenizer import Tokenizer
from diffusionlm.utils.checkpoint import load_checkpoint
from diffusionlm.utils.device import autocast_context, resolve_device
from diffusionlm.utils.run_layout import (
    EXPORT_CONFIG_FILENAME,
    EXPORT_DIRNAME,
    EXPORT_WEIGHTS_FILENAME,
    RUN_CONFIG_FILENAME,
    TOKENIZER_DIRNAME,
    list_checkpoints,
)

TRAIN_HINT = "train a model first with `uv run diffusionlm-train` (or point inference.checkpoint at a run directory)"
# Prefixes torch.compile and DDP wrappers put in front of parameter names.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


@dataclass
class ModelSource:
    """Where the weights come from and the run directory around them (for the tokenizer)."""

    weights: Path
    kind: str  # "checkpoint" | "export"
    run_dir: Path


def find_model_source(path: str | Path, field: str = "inference.checkpoint") -> ModelSource:
    """Resolve a run directory, checkpoint file or export directory to its weights file; errors name `field`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{field}: {path} does not exist; {TRAIN_HINT}")
    if path.is_file():
        if path.suffix == ".safetensors":
            return ModelSource(path, "export", _run_dir_of_export(path.parent))
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return ModelSource(path, "checkpoint", run_dir)
    if (path / EXPORT_WEIGHTS_FILENAME).is_file():
        return ModelSource(path / EXPORT_WEIGHTS_FILENAME, "export", _run_dir_of_export(path))
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return ModelSource(checkpoints[-1], "checkpoint", path)
    if (path / EXPORT_DIRNAME / EXPORT_WEIGHTS_FILENAME).is_file():
        return ModelSource(path / EXPORT_DIRNAME / EXPORT_WEIGHTS_FILENAME, "export", path)
    raise InputError(f"{field}: {path} has no checkpoints/step_*.pt and no export/{EXPORT_WEIGHTS_FILENAME}; "
                     f"{TRAIN_HINT}")


def _run_dir_of_export(export_dir: Path) -> Path:
    return export_dir.parent if export_dir.name == EXPORT_DIRNAME else export_dir


def _model_config(raw: object, source: Path) -> ModelConfig:
    if not isinstance(raw, dict):
        raise InputError(f"{source}: has no [model] config to rebuild the architecture from")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as err:
        raise InputError(format_validation_error(err, f"{source} [model]")) from None


def _read_checkpoint(weights: Path, device: torch.device) -> tuple[ModelConfig, dict, int | None, dict]:
    checkpoint = load_checkpoint(weights, map_location=device)
    config = checkpoint["config"] if isinstance(checkpoint["config"], dict) else {}
    return _model_config(config.get("model"), weights), checkpoint["model"], int(checkpoint["step"]), config


def _read_run_config(run_dir: Path) -> dict:
    """The run's resolved training config (config.toml), or {} when the export stands alone."""
    try:
        return tomllib.loads((run_dir / RUN_CONFIG_FILENAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _read_export(weights: Path, device: torch.device) -> tuple[ModelConfig, dict, None, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path = weights.parent / EXPORT_CONFIG_FILENAME
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{config_path}: missing; an export needs config.json beside {EXPORT_WEIGHTS_FILENAME}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{config_path}: unreadable export config ({err})") from None
    try:
        state = load_file(weights, device=str(device))
    except (SafetensorError, OSError) as err:
        raise InputError(f"{weights}: corrupt or truncated safetensors file ({err})") from None
    return (_model_config(raw.get("model") if isinstance(raw, dict) else None, config_path), state, None,
            _read_run_config(_run_dir_of_export(weights.parent)))


@dataclass
class StoredWeights:
    """A model's weights read from a checkpoint or an export, with the config to rebuild it."""

    config: ModelConfig
    state: dict
    step: int | None  # micro-steps done (checkpoints only)
    run_config: dict  # the training config the weights came from ({} when unknown)
    source: ModelSource


def read_weights(path: str | Path, device: torch.device, field: str = "inference.checkpoint") -> StoredWeights:
    """The weights at a run directory, checkpoint file or export directory (see `find_model_source`)."""
    source = find_model_source(path, field)
    read = _read_checkpoint if source.kind == "checkpoint" else _read_export
    config, state, step, run_config = read(source.weights, device)
    return StoredWeights(config, state, step, run_config, source)


def load_weights(model: nn.Module, state: dict, source: Path, config: ModelConfig) -> None:
    """Copy `state` into `model`, naming the first parameter that is missing, extra or mis-shaped."""
    if not isinstance(state, dict):
        raise InputError(f"{source}: the model state is not a dict of tensors")
    for prefix in _WRAPPER_PREFIXES:
        if state and all(name.startswith(prefix) for name in state):
            state = {name[len(prefix):]: tensor for name, tensor in state.items()}
    expected = model.state_dict()
    summary = (f"vocab_size={config.vocab_size}, d_model={config.d_model}, num_layers={config.num_layers}, "
               f"num_heads={config.num_heads}, d_ff={config.d_ff}")
    for name, tensor in expected.items():
        if name not in state:
            raise InputError(f"{source}: parameter {name} is missing from the checkpoint; it does not match its "
                             f"model config ({summary})")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise InputError(f"{source}: parameter {name} has shape {tuple(state[name].shape)} but the model config "
                             f"({summary}) needs {tuple(tensor.shape)}; checkpoint and config do not match")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise InputError(f"{source}: unexpected parameter {extra[0]} (and {len(extra) - 1} more) for the model config "
                         f"({summary}); checkpoint and config do not match")
    model.load_state_dict(state)


def load_run_tokenizer(run_dir: Path) -> Tokenizer:
    """The run's `tokenizer/` files, or the built-in tokenizer when the run has none."""
    folder = run_dir / TOKENIZER_DIRNAME
    if not (folder / VOCAB_FILE).is_file():
        return load_tokenizer()
    specials = folder / SPECIAL_TOKENS_FILE
    return load_tokenizer(folder / VOCAB_FILE, folder / MERGES_FILE, specials if specials.is_file() else None)


@dataclass
class Completion:
    """One prompt's output: `text` is the decoded generated span (cut at EOS if asked)."""

    prompt: str
    text: str
    token_ids: list[int]


@dataclass
class SampleResult:
    completions: list[Completion]
    result: GenerationResult
    latency_s: float

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens (before any EOS cut) per second of wall time, over the batch."""
        return self.result.gen_length * self.result.tokens.shape[0] / max(self.latency_s, 1e-9)


class Predictor:
    """A loaded model + tokenizer on one device: checks configs, generates text."""

    def __init__(self, model: TransformerLM, tokenizer: Tokenizer, device: torch.device, *, source: Path,
                 step: int | None = None, run_config: dict | None = None) -> None:
        self.model, self.tokenizer, self.device, self.source, self.step = model, tokenizer, device, source, step
        self.run_config = run_config or {}  # the training config the weights came from, when known
        self._check_tokenizer()

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Predictor:
        target = resolve_device(device, field="inference.device")
        stored = read_weights(path, target)
        model = TransformerLM(stored.config).to(target)
        load_weights(model, stored.state, stored.source.weights, stored.config)
        return cls(model.eval(), load_run_tokenizer(stored.source.run_dir), target, source=stored.source.weights,
                   step=stored.step, run_config=stored.run_config)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def training_noise_epsilon(self) -> float:
        """The mask-probability floor the model was trained with (the default when unknown)."""
        return float(self.run_config.get("training", {}).get("noise_epsilon", NOISE_EPSILON))

    def _check_tokenizer(self) -> None:
        check_tokenizer_matches_model(self.config, self.tokenizer, str(self.source))

    def mask_id(self, inference: InferenceConfig) -> int:
        """`inference.mask_id`, which must be the model's mask token (default)."""
        mask_id, model_mask = inference.mask_id, self.config.mask_token_id
        if mask_id is None:
            return model_mask
        if mask_id < self.tokenizer.vocab_size and mask_id not in self.tokenizer.special_tokens.values():
            text = self.tokenizer.decode([mask_id])
            raise InputError(f"inference.mask_id ({mask_id}) is a normal token of the tokenizer ({text!r}); "
                             f"the model's mask token is {model_mask}")
        if mask_id != model_mask:
            raise InputError(f"inference.mask_id ({mask_id}) is not the model's mask token ({model_mask})")
        return mask_id

    def eos_id(self, inference: InferenceConfig) -> int:
        eos = inference.eos_token_id
        if eos is None:
            return self.config.eot_token_id  # checked at load to be the tokenizer's <|endoftext|>
        if not 0 <= eos < self.tokenizer.vocab_size:
            raise InputError(f"inference.eos_token_id ({eos}) is not a token of the tokenizer (0..{self.tokenizer.vocab_size - 1})")
        return eos

    def encode_prompts(self, prompts: list[str], inference: InferenceConfig) -> list[list[int]]:
        """Token ids of each prompt, checked to leave room for generation inside the context."""
        context = self.config.context_length
        if inference.total_length > context:
            raise InputError(f"inference.total_length ({inference.total_length}) exceeds the model's context_length "
                             f"({context})")
        encoded = [self.tokenizer.encode(prompt) for prompt in prompts]
        for ids in encoded:
            if len(ids) >= inference.total_length:
                raise InputError(f"inference.prompt is {len(ids)} tokens long, which leaves no room to generate within "
                                 f"total_length ({inference.total_length}); shorten it or raise total_length")
        return encoded

    def sample_ids(self, encoded: list[list[int]], inference: InferenceConfig,
                   on_step: Callable[[StepInfo], None] | None = None, *, prompts: list[str] | None = None,
                   seeds: list[int] | None = None) -> SampleResult:
        """Generate a continuation of each tokenized prompt (`encode_prompts`; a left-padded batch
        when there are several). `seeds` (one per prompt) gives each row its own generator, so a
        row's text does not depend on the rest of the batch; without them one generator seeded
        with `inference.seed` serves the batch."""
        mask_id, eos_id = self.mask_id(inference), self.eos_id(inference)
        width = max(map(len, encoded))
        prompt_ids = torch.tensor([[eos_id] * (width - len(ids)) + ids for ids in encoded], dtype=torch.long,
                                  device=self.device).view(len(encoded), width)
        attention_mask = None
        if any(len(ids) != width for ids in encoded):
            attention_mask = torch.tensor([[False] * (width - len(ids)) + [True] * len(ids) for ids in encoded],
                                          device=self.device)
        if seeds is None:
            generator = torch.Generator(device=self.device).manual_seed(inference.seed)
        else:
            generator = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]
        start = time.perf_counter()
        with autocast_context(self.device, inference.dtype):
            result = generate(
                self.model, prompt_ids, steps=inference.steps, gen_length=inference.total_length - width,
                block_length=inference.block_length, temperature=inference.temperature, top_p=inference.top_p,
                remasking=inference.remasking, cfg_scale=inference.cfg_scale, mask_id=mask_id,
                eos_token_id=eos_id, eot_token_id=self.config.eot_token_id, logits_eos_inf=inference.logits_eos_inf,
                confidence_eos_eot_inf=inference.confidence_eos_eot_inf, stop_at_eos=inference.stop_at_eos,
                attention_mask=attention_mask, generator=generator, vocab_limit=self.tokenizer.vocab_size,
                kv_cache=inference.kv_cache, threshold=inference.threshold,
                cache_refresh_every=inference.cache_refresh_every, compile=inference.compile, on_step=on_step,
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        latency = time.perf_counter() - start
        prompts = prompts or [self.tokenizer.decode(ids) for ids in encoded]
        completions = [Completion(prompt, self.tokenizer.decode(ids), ids)
                       for prompt, ids in zip(prompts, result.generated())]
        return SampleResult(completions, result, latency)

    def canvas_text(self, canvas_row: torch.Tensor, mask_id: int, placeholder: str = "_") -> str:
        """A canvas row as text with each mask shown as `placeholder` (for streaming)."""
        pieces, run = [], []
        for token in canvas_row.tolist():
            if token == mask_id:
                if run:
                    pieces.append(self.tokenizer.decode(run))
                    run = []
                pieces.append(placeholder)
            else:
                run.append(token)
        if run:
            pieces.append(self.tokenizer.decode(run))
        return "".join(pieces)
