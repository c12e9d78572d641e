"""Fast-dLLM prefix/dual KV caches and confidence-threshold parallel decoding."""

from __future__ import annotations

import pytest
import torch
from test_generate import MASK_ID, reference_generate, small_model

from diffusionlm.inference.cache import BlockDenoiser
from diffusionlm.inference.generate import generate


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return small_model(seed=11)


def denoiser_settings(cfg_scale: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Two rows, one left-padded by 3, each a prompt followed by masks and a few committed tokens;
    with the BlockDenoiser arguments that describe them."""
    canvas = torch.randint(0, 60, (2, 40), generator=torch.Generator().manual_seed(0))
    canvas[:, 12:] = MASK_ID
    canvas[:, 14:16] = torch.tensor([[3, 4], [5, 6]])
    attention_mask = torch.ones(2, 40, dtype=torch.bool)
    attention_mask[1, :3] = False
    prompt_mask = torch.zeros(2, 40, dtype=torch.bool)
    prompt_mask[:, :12] = attention_mask[:, :12]
    positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
    return canvas, dict(cfg_scale=cfg_scale, mask_id=MASK_ID, prompt_mask=prompt_mask,
                        attention_mask=attention_mask, positions=positions)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_cached_forward_equals_uncached_forward_when_nothing_changed(model, mode, cfg_scale):
    canvas, kwargs = denoiser_settings(cfg_scale)
    cached = BlockDenoiser(model, kv_cache=mode, **kwargs)
    plain = BlockDenoiser(model, kv_cache="none", **kwargs)
    for denoiser in (cached, plain):
        denoiser.start_block(12, 20)
    full = plain(canvas)
    first = cached(canvas)  # the block's first step: a full forward that records the cache
    reused = cached(canvas)  # a cached step on the same canvas
    assert torch.allclose(first, full, atol=1e-5)
    assert torch.allclose(reused, full, atol=1e-4)
    assert cached.nfe == 2


@torch.no_grad()
def test_cache_is_refreshed_at_each_block_boundary(model):
    canvas, kwargs = denoiser_settings()
    denoiser = BlockDenoiser(model, kv_cache="dual", **kwargs)
    plain = BlockDenoiser(model, kv_cache="none", **kwargs)
    denoiser.start_block(12, 20)
    denoiser(canvas)
    canvas[:, 12:20] = 7  # the block is decoded; the next block must see it
    denoiser.start_block(20, 28)
    plain.start_block(20, 28)
    assert torch.allclose(denoiser(canvas), plain(canvas), atol=1e-5)


def test_no_cache_and_no_threshold_is_the_baseline_exactly(model):
    prompt = torch.randint(0, 60, (1, 6), generator=torch.Generator().manual_seed(3))
    expected = reference_generate(model, prompt, schedule=[[2] * 8] * 4, cfg_scale=0.0, mask_id=MASK_ID)
    result = generate(model, prompt, steps=32, gen_length=64, block_length=16, cfg_scale=0.0, mask_id=MASK_ID,
                      kv_cache="none", threshold=None)
    assert torch.equal(result.tokens, expected)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_with_the_step_schedule_keeps_the_step_count(model, mode):
    prompt = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(4))
    result = generate(model, prompt, steps=32, gen_length=64, block_length=16, mask_id=MASK_ID, kv_cache=mode)
    assert result.nfe == 32
    assert not (result.tokens == MASK_ID).any()
    assert result.committed_per_step == [2 * 2] * 32  # 2 tokens per step, for both rows


def test_first_block_step_with_cache_matches_baseline(model):
    """Every block starts with a full forward, so with one step per block the cache changes nothing."""
    prompt = torch.randint(0, 60, (1, 6), generator=torch.Generator().manual_seed(5))
    kwargs = dict(steps=4, gen_length=32, block_length=8, mask_id=MASK_ID)
    baseline = generate(model, prompt, **kwargs).tokens
    assert torch.equal(generate(model, prompt, kv_cache="dual", **kwargs).tokens, baseline)
    assert torch.equal(generate(model, prompt, kv_cache="prefix", **kwargs).tokens, baseline)


@pytest.mark.parametrize("mode", ["none", "prefix", "dual"])
def test_threshold_decoding_is_valid_and_needs_fewer_forward_passes(mode):
    model = small_model(seed=12)
    confident = torch.zeros(16, 64)
    confident[:8, 10] = 30.0  # the first half of every block is certain, the rest is not
    model.lm_head.register_forward_hook(lambda module, args, out: out + confident)
    prompt = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(6))
    kwargs = dict(steps=64, gen_length=64, block_length=16, mask_id=MASK_ID, vocab_limit=60)
    baseline = generate(model, prompt, **kwargs)
    fast = generate(model, prompt, kv_cache=mode, threshold=0.9, **kwargs)
    assert not (fast.tokens == MASK_ID).any()
    assert int(fast.tokens[:, 6:].max()) < 60
    assert torch.equal(fast.tokens[:, :6], prompt)
    assert sum(fast.committed_per_step) == 2 * 64
    assert fast.nfe < baseline.nfe == 64
    assert fast.tokens_per_forward > 1.0


def test_threshold_of_one_commits_one_token_per_step_per_row(model):
    prompt = torch.randint(0, 60, (1, 4), generator=torch.Generator().manual_seed(7))
    result = generate(model, prompt, steps=8, gen_length=16, block_length=8, mask_id=MASK_ID, threshold=1.0,
                      temperature=1.0, remasking="random", generator=torch.Generator().manual_seed(0))
    assert result.nfe == 16
    assert result.committed_per_step == [1] * 16


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_refreshing_at_every_step_is_the_uncached_sampler_exactly(model, mode, threshold):
    prompt = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(5))
    kwargs = dict(steps=32, gen_length=64, block_length=16, mask_id=MASK_ID, threshold=threshold)
    plain = generate(model, prompt, kv_cache="none", **kwargs)
    refreshed = generate(model, prompt, kv_cache=mode, cache_refresh_every=1, **kwargs)
    assert torch.equal(refreshed.tokens, plain.tokens) and refreshed.nfe == plain.nfe


@torch.no_grad()
def test_a_refresh_inside_the_block_sees_the_committed_tokens(model):
    canvas, kwargs = denoiser_settings()
    stale, refreshed = (BlockDenoiser(model, kv_cache="dual", refresh_every=every, **kwargs) for every in (None, 2))
    plain = BlockDenoiser(model, kv_cache="none", **kwargs)
    for denoiser in (stale, refreshed, plain):
        denoiser.start_block(12, 20)
        denoiser(canvas)  # step 1: a full forward for all three
    canvas[:, 16:18] = 9  # commit two tokens of the block; the suffix keys now lag behind
    assert not torch.allclose(stale(canvas), plain(canvas), atol=1e-4)  # step 2: block only, stale suffix
    assert not torch.allclose(refreshed(canvas), plain(canvas), atol=1e-4)  # so is `refreshed`'s step 2
    assert torch.allclose(refreshed(canvas), plain(canvas), atol=1e-5)  # its step 3 is a refresh
    assert refreshed.nfe == 3


@torch.no_grad()
def test_the_dual_cache_step_compiles_without_graph_breaks(model):
    canvas, kwargs = denoiser_settings()
    denoiser = BlockDenoiser(model, kv_cache="dual", **kwargs)
    denoiser.start_block(12, 20)
    denoiser(canvas)  # records the cache
    denoiser.cache.write_at(denoiser._write_index)
    explanation = torch._dynamo.explain(model.forward_hidden)(canvas[:, 12:20], kwargs["attention_mask"],
                                                              kwargs["positions"][:, 12:20], kv_cache=denoiser.cache)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "threshold"), [("none", None), ("dual", 0.3)])
def test_compiled_sampler_gives_the_eager_tokens(model, mode, threshold):
    prompt = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(6))
    kwargs = dict(steps=16, gen_length=32, block_length=16, mask_id=MASK_ID, kv_cache=mode, threshold=threshold)
    eager = generate(model, prompt, **kwargs)
    compiled = generate(model, prompt, compile=True, **kwargs)
    assert torch.equal(compiled.tokens, eager.tokens) and compiled.nfe == eager.nfe
