"""The training loop and trainer wiring, on tiny models that train in seconds on the CPU."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from test_train_fixtures import tiny_config

from config.schemas import ModelConfig, OptimizerConfig
from diffusionlm.diffusion.forward_process import apply_mask
from diffusionlm.diffusion.loss import masked_token_loss
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.training.grad_sync import LocalGradSync
from diffusionlm.training.loop import NonFiniteLossError, StepSettings, train_step
from diffusionlm.training.objective import DiffusionObjective
from diffusionlm.training.optim import build_optimizer
from diffusionlm.training.trainer import build_trainer, run_training
from diffusionlm.training.validation import Validator
from diffusionlm.utils.run_layout import list_checkpoints

SPEC_KEYS = ("metrics.loss", "metrics.loss_avg", "metrics.lr", "metrics.grad_l2_norm", "metrics.tokens_per_s", "metrics.mask_ratio",
             "metrics.data_wait_frac")
VAL_KEYS = ("metrics.val_loss", "metrics.val_elbo_ppl", "metrics.val_bpb")


pytestmark = pytest.mark.usefixtures("one_thread")


def _metric_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_tiny_model_memorises_tiny_corpus_and_reconstructs_masked_tokens():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=40, context_length=8, d_model=32, num_layers=2, num_heads=2, d_ff=64,
                         mask_token_id=39, eot_token_id=38)
    corpus = torch.randint(0, 38, (2, 8), generator=torch.Generator().manual_seed(1))
    model = TransformerLM(config)
    optimizer_cfg = OptimizerConfig(max_learning_rate=3e-3, min_learning_rate=3e-4, warmup_iters=10,
                                    cosine_cycle_iters=1000, weight_decay=0.0, grad_clip_max_l2_norm=None)
    optimizer = build_optimizer(model, optimizer_cfg)
    objective = DiffusionObjective(mask_token_id=39, noise_epsilon=1e-3, random_trunc_prob=0.0, antithetic=True,
                                   mask_rate_floor=0.0, mask_rate_ceiling=1.0,
                                   weighting="elbo")
    settings = StepSettings(device=torch.device("cpu"), grad_accum_steps=1, optimizer_cfg=optimizer_cfg,
                            autocast=contextlib.nullcontext)
    generator = torch.Generator().manual_seed(0)
    for step in range(1000):
        train_step(model, optimizer, lambda: corpus, objective=objective, noise_generator=generator,
                   grad_sync=LocalGradSync(), settings=settings, schedule_step=step)

    # With half the tokens visible the two sequences are told apart, so a model that has
    # memorised them reconstructs every masked token (near t = 1 nothing could).
    model.eval()
    p_mask = torch.full((2,), 0.5)
    noisy, is_masked = apply_mask(corpus, p_mask, 39, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        loss = masked_token_loss(model, corpus, noisy, is_masked, p_mask)
        predicted = model(noisy).argmax(-1)
    assert is_masked.sum() >= 4
    assert loss.item() < 0.25
    assert torch.equal(predicted[is_masked], corpus[is_masked])


def test_run_logs_every_spec_metric_and_writes_run_directory(tmp_path, capsys):
    result = run_training(build_trainer(tiny_config(tmp_path)))
    lines = _metric_lines(capsys.readouterr().out)
    train_lines = [line for line in lines if "metrics.loss" in line]
    val_lines = [line for line in lines if "metrics.val_loss" in line]
    assert train_lines and val_lines
    for key in SPEC_KEYS:
        assert key in train_lines[0], key
    assert any(key.startswith("metrics.lr/") for key in train_lines[0])
    for key in VAL_KEYS:
        assert key in val_lines[0], key
    for key in ("metrics.data/tokens_per_s", "metrics.data/shuffle_buffer_fill"):
        assert all(key in line for line in train_lines), key
    provenance = [line for line in lines if "data.provenance.dataset_name" in line]
    assert len(provenance) == 1 and provenance[0]["data.provenance.dataset_name"] == "builtin"
    assert provenance[0]["data.provenance.split"] == "train" and provenance[0]["data.provenance.fingerprint"]
    assert val_lines[0]["metrics.val_elbo_ppl"] == pytest.approx(2.718281828 ** val_lines[0]["metrics.val_loss"], rel=1e-6)
    run_dir = tmp_path / "tiny"
    assert result.run_dir == run_dir
    assert (run_dir / "config.toml").is_file()
    assert {p.name for p in (run_dir / "tokenizer").iterdir()} == {"vocab.json", "merges.txt", "special_tokens.json"}
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000008.pt", "step_00000012.pt"]
    assert {p.name for p in (run_dir / "export").iterdir()} == {"model.safetensors", "config.json"}


def test_validation_is_identical_for_the_same_model(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path))
    first = trainer.validator.evaluate(trainer.model)
    second = trainer.validator.evaluate(trainer.model)
    assert first == second
    trainer.train_batches.close()


@pytest.mark.parametrize("causal", [False, True])
def test_validation_of_a_uniform_model_costs_log_vocab_nats_per_token(causal):
    """A zero LM head predicts every token with probability 1/V, so each scored token costs
    ln V nats: val_loss = ln 40, val_elbo_ppl = 40 and, at 2 bytes per token, val_bpb =
    log2(40) / 2. The diffusion bound is exact here too: with noise_epsilon = 1 - 1e-9 every
    token is masked and weighted 1/p = 1 (a causal model scores all but the first token)."""
    model = TransformerLM(ModelConfig(vocab_size=40, context_length=8, d_model=16, num_layers=1, num_heads=2,
                                      d_ff=32, mask_token_id=39, eot_token_id=38, causal=causal))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    batches = [torch.randint(0, 38, (4, 8), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    validator = Validator(iter(batches), 2, causal=causal, mask_id=39, noise_epsilon=1 - 1e-9,
                          count_text_bytes=lambda ids: 2 * len(ids), seed=0, device=torch.device("cpu"),
                          autocast=contextlib.nullcontext, source="test")
    assert validator.num_sequences == 8
    assert validator.evaluate(model) == pytest.approx(
        {"metrics.val_loss": 3.6888794541, "metrics.val_elbo_ppl": 40.0, "metrics.val_bpb": 2.6609640474})


def test_loss_avg_is_the_mean_of_the_step_losses_since_the_last_log_line(tmp_path, capsys):
    def losses(log_every: int) -> dict[int, tuple[float, float]]:
        config = tiny_config(tmp_path / str(log_every), logging={"log_every": log_every})
        run_training(build_trainer(config))
        return {line["step"]: (line["metrics.loss"], line["metrics.loss_avg"])
                for line in _metric_lines(capsys.readouterr().out) if "metrics.loss" in line}

    every_step, every_fourth = losses(1), losses(4)
    assert all(loss == average for loss, average in every_step.values())  # a window of one step
    assert sorted(every_fourth) == [4, 8, 12]  # validation at step 6 falls inside a window
    for end, (loss, average) in every_fourth.items():
        assert loss == every_step[end][0]
        assert average == pytest.approx(sum(every_step[step][0] for step in range(end - 3, end + 1)) / 4, rel=1e-6)


def test_max_train_iteration_counts_micro_steps_with_gradient_accumulation(tmp_path):
    config = tiny_config(tmp_path, training={"grad_accum_steps": 3, "max_train_iteration": 12,
                                             "skip_validation": True})
    result = run_training(build_trainer(config))
    assert result.state.iteration == 12
    assert result.state.optimizer_step == 4
    assert result.final_checkpoint.name == "step_00000012.pt"


def test_params_and_optimizer_state_stay_float32_with_bfloat16_dtype(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, training={"dtype": "bfloat16", "max_train_iteration": 4,
                                                            "skip_validation": True}))
    run_training(trainer)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    state_dtypes = {t.dtype for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)}
    assert state_dtypes == {torch.float32}


def _forward_hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_activation_norm_hooks_are_absent_when_disabled(tmp_path, capsys, monkeypatch):
    trainer = build_trainer(tiny_config(tmp_path, training={"max_train_iteration": 4, "skip_validation": True}))
    model = trainer.model
    original_register = torch.nn.Module.register_forward_hook
    registered = []

    def recording_register(self, *args, **kwargs):
        registered.append(self)
        return original_register(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "register_forward_hook", recording_register)
    run_training(trainer)
    assert registered == []
    assert _forward_hook_count(model) == 0
    assert not any(k.startswith("metrics.activation_rms") for line in _metric_lines(capsys.readouterr().out) for k in line)


def test_activation_and_weight_norms_are_logged_when_enabled(tmp_path, capsys):
    config = tiny_config(tmp_path, training={"max_train_iteration": 4, "skip_validation": True},
                         logging={"log_activation_norms": True, "log_weight_norms": True})
    trainer = build_trainer(config)
    run_training(trainer)
    line = next(x for x in _metric_lines(capsys.readouterr().out) if "metrics.loss" in x)
    assert "metrics.activation_rms/block_1" in line
    assert "metrics.weight_norm/lm_head.weight" in line
    assert _forward_hook_count(trainer.model) == 0  # removed when the loop ends


def test_causal_model_trains_with_next_token_loss_through_the_same_loop(tmp_path, capsys):
    config = tiny_config(tmp_path, model={"causal": True}, training={"max_train_iteration": 4})
    result = run_training(build_trainer(config))
    lines = _metric_lines(capsys.readouterr().out)
    train_line = next(x for x in lines if "metrics.loss" in x)
    assert "metrics.mask_ratio" not in train_line
    assert result.state.optimizer_step == 4


def _poison(trainer) -> None:
    with torch.no_grad():
        trainer.model.lm_head.weight.fill_(float("nan"))


def test_non_finite_loss_stops_without_writing_a_checkpoint(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path, training={"nan_policy": "stop", "skip_validation": True}))
    _poison(trainer)
    with pytest.raises(NonFiniteLossError, match="nan_policy"):
        run_training(trainer)
    assert list_checkpoints(tmp_path / "tiny") == []


def test_non_finite_step_is_caught_before_a_checkpoint_even_between_log_steps(tmp_path):
    # The finiteness check stays on the device until the loop reads it: here first at the save.
    trainer = build_trainer(tiny_config(tmp_path, training={"nan_policy": "stop", "skip_validation": True},
                                        logging={"log_every": 100}))
    _poison(trainer)
    with pytest.raises(NonFiniteLossError, match=r"at iteration 1 \(loss=nan.*seen at iteration 4.*No checkpoint"):
        run_training(trainer)
    assert list_checkpoints(tmp_path / "tiny") == []


def test_non_finite_loss_under_skip_policy_skips_and_counts_steps(tmp_path, capsys):
    trainer = build_trainer(tiny_config(tmp_path, training={"nan_policy": "skip", "max_train_iteration": 4,
                                                            "skip_validation": True}))
    _poison(trainer)
    embedding_before = trainer.model.embedding.weight.detach().clone()
    result = run_training(trainer)
    assert result.state.skipped_steps == 4 and result.state.optimizer_step == 0
    assert torch.equal(trainer.model.embedding.weight, embedding_before)
    last = [x for x in _metric_lines(capsys.readouterr().out) if "metrics.loss" in x][-1]
    assert last["metrics.skipped_steps"] == 4
    assert last["metrics.loss_avg"] == "nan"  # no finite step to average
