"""The compiled training step: forward and loss trace to one graph, and compiling changes nothing."""

from __future__ import annotations

import pytest
import torch

from config.schemas import DDPConfig, ModelConfig, OptimizerConfig, TrainingConfig
from diffusionlm.diffusion.forward_process import NoiseGenerators, draw_training_masks
from diffusionlm.diffusion.loss import masked_token_loss
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.training.parallelize import parallelize

CONFIG = ModelConfig(vocab_size=32, context_length=16, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                     mask_token_id=31, eot_token_id=30)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    torch._dynamo.reset()


def _draw(seed: int):
    x0 = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(seed))
    t = torch.tensor([0.3, 0.8])
    return x0, draw_training_masks(x0, t, 1e-3, 31, generators=NoiseGenerators.of(torch.Generator().manual_seed(seed)))


def test_forward_and_loss_trace_to_one_graph_without_breaks():
    torch.manual_seed(0)
    model = TransformerLM(CONFIG)
    x0, draw = _draw(0)
    explanation = torch._dynamo.explain(masked_token_loss)(model, x0, draw.noisy, draw.is_masked, draw.p_mask,
                                                           num_masked=draw.num_masked)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.slow  # two cold compiles: ~35 s on a loaded 2-core machine
def test_compile_modes_give_the_eager_loss_and_gradients():
    draws = [_draw(seed) for seed in (0, 1)]  # two mask counts: the second recompiles with a dynamic row count
    results = {}
    for mode in ("off", "model"):
        torch.manual_seed(0)
        model = parallelize(TransformerLM(CONFIG), OptimizerConfig(), DDPConfig(), compile=mode).model
        results[mode] = []
        for x0, draw in draws:
            loss = masked_token_loss(model, x0, draw.noisy, draw.is_masked, draw.p_mask, num_masked=draw.num_masked)
            results[mode].append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    for (eager_loss, eager_grads), (compiled_loss, compiled_grads) in zip(results["off"], results["model"]):
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
        for compiled, eager in zip(compiled_grads, eager_grads):
            torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("old", "mode"), [(True, "blocks"), (False, "off")])
def test_boolean_compile_settings_map_to_modes(old, mode):
    assert TrainingConfig(batch_size=1, max_train_iteration=1, compile=old).compile == mode


def test_unknown_compile_mode_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match="compile"):
        TrainingConfig(batch_size=1, max_train_iteration=1, compile="graph")
