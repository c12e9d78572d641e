"""The block sampler against an independent, straightforward implementation of LLaDA's loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from config.schemas import ModelConfig
from diffusionlm.errors import InputError
from diffusionlm.inference.generate import generate
from diffusionlm.models.transformer import TransformerLM

VOCAB, MASK_ID, EOS_ID, EOT_ID = 64, 63, 62, 61


def small_model(seed: int = 0, head_scale: float = 0.4) -> TransformerLM:
    """A random-weight model whose LM head has weight std `head_scale`: large enough that the
    distributions are peaked (argmax and confidence rankings have clear gaps, not float-rounding
    ties), small enough that sampling at temperature 1 still varies with the seed."""
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB, context_length=256, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                         mask_token_id=MASK_ID, eot_token_id=EOS_ID)
    model = TransformerLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale / model.lm_head.init_std)
    return model


@pytest.fixture(scope="module")
def model() -> TransformerLM:
    torch.set_num_threads(1)
    return small_model()


def reference_generate(model, prompt, *, schedule, cfg_scale, mask_id):
    """LLaDA's generate() at temperature 0 with low_confidence remasking, written out plainly
    for one prompt, plus the documented rule that the mask id is never sampled. `schedule` is
    the hand-computed plan: per block, the number of tokens each of its steps commits."""
    prompt_length = prompt.shape[1]
    gen_length = sum(sum(block) for block in schedule)
    x = torch.full((1, prompt_length + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt_length] = prompt
    prompt_index = x != mask_id
    end = prompt_length
    for per_step in schedule:
        end += sum(per_step)
        for count in per_step:
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                logits, un_logits = model(torch.cat([x, un_x])).chunk(2)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x)
            logits[..., mask_id] = float("-inf")
            x0 = logits.argmax(dim=-1)
            p = F.softmax(logits.double(), dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
            x0_p[:, end:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(float("-inf"), dtype=torch.float64))
            select = torch.topk(confidence[0], k=count).indices
            x[0, select] = x0[0, select]
    return x


# (gen_length, block_length, steps) -> per block, the tokens committed at each of its steps,
# worked out by hand: blocks of block_length (the last one shorter), steps shared in proportion
# to block length and never more than a block's tokens, each block's masks split evenly over
# its steps with the remainder going to the earliest steps.
SCHEDULES = {
    (32, 8, 32): [[1] * 8] * 4,
    (32, 8, 16): [[2] * 4] * 4,
    (32, 32, 32): [[1] * 32],
    (32, 32, 16): [[2] * 16],
    (64, 8, 64): [[1] * 8] * 8,
    (64, 8, 32): [[2] * 4] * 8,
    (64, 32, 64): [[1] * 32] * 2,
    (64, 32, 32): [[2] * 16] * 2,
    (64, 64, 32): [[2] * 32],
    (100, 8, 100): [[1] * 8] * 12 + [[1] * 4],
    (100, 8, 50): [[2] * 4] * 12 + [[2] * 2],
    (100, 32, 100): [[1] * 32] * 3 + [[1] * 4],
    (100, 32, 50): [[2] * 16] * 3 + [[2] * 2],
    (100, 100, 50): [[2] * 50],
    (21, 8, 10): [[3, 3, 2], [2, 2, 2, 2], [2, 2, 1]],  # 10 steps: 3 + 4 + 3; remainders first
    (30, 8, 11): [[4, 4], [3, 3, 2], [3, 3, 2], [2, 2, 2]],  # step marks 11 * (8, 16, 24, 30) // 30 = 2, 5, 8, 11
    (10, 4, 20): [[1] * 4, [1] * 4, [1] * 2],  # 8 + 8 + 4 steps capped at each block's length
}
GRID = [(*key, cfg) for key in SCHEDULES for cfg in (0.0, 1.5)]


@torch.no_grad()
@pytest.mark.parametrize(("gen_length", "block_length", "steps", "cfg_scale"), GRID)
def test_greedy_low_confidence_matches_reference_semantics(model, gen_length, block_length, steps, cfg_scale):
    schedule = SCHEDULES[gen_length, block_length, steps]
    prompt = torch.randint(0, 60, (1, 7), generator=torch.Generator().manual_seed(gen_length + steps))
    expected = reference_generate(model, prompt, schedule=schedule, cfg_scale=cfg_scale, mask_id=MASK_ID)
    result = generate(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                      cfg_scale=cfg_scale, mask_id=MASK_ID)
    assert result.committed_per_step == [count for block in schedule for count in block]
    assert result.nfe == sum(len(block) for block in schedule)
    assert torch.equal(result.tokens, expected)


def test_committed_tokens_never_change(model):
    prompt = torch.randint(0, 60, (2, 5), generator=torch.Generator().manual_seed(1))
    seen: dict[int, int] = {}

    def check(info):
        for position, token in enumerate(info.canvas[0].tolist()):
            if token != MASK_ID:
                assert seen.setdefault(position, token) == token

    generate(model, prompt, steps=16, gen_length=32, block_length=8, temperature=1.0, mask_id=MASK_ID,
             remasking="random", generator=torch.Generator().manual_seed(0), on_step=check)
    assert len(seen) == 5 + 32


def biased_model(*bias: tuple[int | slice, float]) -> TransformerLM:
    """A model whose logits are 0 everywhere except the (ids, value) pairs of `bias`, at every position."""
    model = small_model(seed=5, head_scale=0.0)
    offset = torch.zeros(VOCAB)
    for ids, value in bias:
        offset[ids] = value
    model.lm_head.register_forward_hook(lambda module, args, out: out + offset)
    return model


@pytest.mark.parametrize("remasking", ["low_confidence", "random", "margin", "entropy"])
def test_no_mask_or_padded_id_is_ever_emitted(remasking):
    model = biased_model((MASK_ID, 8.0), (slice(50, VOCAB), 8.0))  # the forbidden ids are the favourites
    prompt = torch.randint(0, 50, (3, 4), generator=torch.Generator().manual_seed(2))
    result = generate(model, prompt, steps=24, gen_length=48, block_length=16, temperature=1.0, remasking=remasking,
                      mask_id=MASK_ID, vocab_limit=50, generator=torch.Generator().manual_seed(0))
    generated = result.tokens[:, 4:]
    assert not (generated == MASK_ID).any()
    assert int(generated.max()) < 50


def fill_order(confidence_eos_eot_inf: bool) -> list[int]:
    """Greedy decode of 16 tokens, one per step, where EOS (positions 0-3) and EOT (4-7) are the
    most confident predictions; returns the generated positions in the order they were filled."""
    model = small_model(seed=5, head_scale=0.0)
    offset = torch.zeros(16, VOCAB)
    offset[0:4, EOS_ID] = 12.0
    offset[4:8, EOT_ID] = 12.0
    offset[8:, 10] = 3.0
    model.lm_head.register_forward_hook(lambda module, args, out: out + offset)
    filled: list[int] = []
    previous = torch.full((16,), MASK_ID)

    def record(info):
        now = info.canvas[0, 3:]
        filled.extend(torch.nonzero((previous == MASK_ID) & (now != MASK_ID)).flatten().tolist())
        previous.copy_(now)

    generate(model, torch.tensor([[1, 2, 3]]), steps=16, gen_length=16, block_length=16, mask_id=MASK_ID,
             eos_token_id=EOS_ID, eot_token_id=EOT_ID, confidence_eos_eot_inf=confidence_eos_eot_inf, on_step=record)
    return filled


def test_confidence_eos_eot_inf_commits_both_eos_and_eot_last():
    assert set(fill_order(confidence_eos_eot_inf=False)[:8]) == set(range(8))  # without it: first
    assert set(fill_order(confidence_eos_eot_inf=True)[8:]) == set(range(8))  # with it: EOS and EOT last


def test_logits_eos_inf_never_samples_eos():
    model = biased_model((EOS_ID, 8.0))
    result = generate(model, torch.tensor([[1, 2, 3]]), steps=8, gen_length=16, block_length=8, temperature=1.0,
                      mask_id=MASK_ID, eos_token_id=EOS_ID, logits_eos_inf=True,
                      generator=torch.Generator().manual_seed(0))
    assert not (result.tokens == EOS_ID).any()


def test_stop_at_eos_cuts_each_row_at_its_first_eos():
    model = biased_model((EOS_ID, 2.0))
    result = generate(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), steps=32, gen_length=32, block_length=8,
                      temperature=1.0, mask_id=MASK_ID, eos_token_id=EOS_ID, stop_at_eos=True,
                      generator=torch.Generator().manual_seed(0))
    for row, kept in zip(result.tokens, result.generated_lengths.tolist()):
        generated = row[3:].tolist()
        assert EOS_ID in generated
        assert kept == generated.index(EOS_ID)
    assert all(EOS_ID not in ids for ids in result.generated())


def test_left_padded_batch_equals_each_prompt_alone(model):
    prompts = [[5, 9, 13, 2, 7, 30], [11, 4], [8, 8, 21, 40]]
    width = max(map(len, prompts))
    padded = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    kwargs = dict(steps=24, gen_length=24, block_length=8, mask_id=MASK_ID, cfg_scale=1.0)
    batched = generate(model, padded, attention_mask=mask, **kwargs)
    for row, prompt in enumerate(prompts):
        alone = generate(model, torch.tensor([prompt]), **kwargs)
        assert batched.tokens[row, width:].tolist() == alone.tokens[0, len(prompt):].tolist()


@pytest.mark.parametrize("kv_cache", ["none", "dual"])
def test_per_row_generators_sample_each_row_as_if_alone(model, kv_cache):
    prompts = [[5, 9, 13, 2, 7, 30], [11, 4], [8, 8, 21, 40]]
    seeds = [3, 4, 3]
    width = max(map(len, prompts))
    padded = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    kwargs = dict(steps=12, gen_length=24, block_length=8, mask_id=MASK_ID, temperature=1.0, top_p=0.95,
                  remasking="random", kv_cache=kv_cache)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    batched = generate(model, padded, attention_mask=mask, generator=generators, **kwargs)
    for row, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = generate(model, torch.tensor([prompt]), generator=torch.Generator().manual_seed(seed), **kwargs)
        assert batched.tokens[row, width:].tolist() == alone.tokens[0, len(prompt):].tolist()
    assert batched.tokens[0, width:].tolist() != batched.tokens[2, width:].tolist()  # same seed, other prompt


def test_one_generator_per_row_must_match_the_batch(model):
    with pytest.raises(ValueError, match="2 generators for a batch of 1 rows"):
        generate(model, torch.tensor([[1, 2]]), steps=4, gen_length=4, block_length=4, mask_id=MASK_ID,
                 temperature=1.0, generator=[torch.Generator(), torch.Generator()])


def test_same_seed_same_sample_different_seed_different_sample(model):
    kwargs = dict(steps=16, gen_length=32, block_length=16, temperature=1.0, mask_id=MASK_ID, top_p=0.9)
    prompt = torch.tensor([[1, 2, 3]])
    first = generate(model, prompt, generator=torch.Generator().manual_seed(7), **kwargs).tokens
    again = generate(model, prompt, generator=torch.Generator().manual_seed(7), **kwargs).tokens
    other = generate(model, prompt, generator=torch.Generator().manual_seed(8), **kwargs).tokens
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_uneven_last_block_is_shorter_and_fully_decoded(model):
    result = generate(model, torch.tensor([[1, 2]]), steps=10, gen_length=21, block_length=8, mask_id=MASK_ID)
    assert [(b.length, b.steps) for b in result.blocks] == [(8, 3), (8, 4), (5, 3)]
    assert not (result.tokens == MASK_ID).any()


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(steps=3, block_length=8), "fewer than the number of blocks"),
    (dict(block_length=0), "block_length must be positive"),
    (dict(block_length=-4), "block_length must be positive"),
    (dict(remasking="top_k"), "unknown strategy"),
    (dict(gen_length=300), "exceeds the model's context_length"),
    (dict(kv_cache="full"), "unknown mode"),
])
def test_bad_arguments_raise_input_error(model, kwargs, message):
    arguments = dict(steps=32, gen_length=32, block_length=8, mask_id=MASK_ID) | kwargs
    with pytest.raises(InputError, match=message):
        generate(model, torch.tensor([[1, 2, 3]]), **arguments)


def test_threshold_decoding_rejects_entropy_scores_that_never_reach_it(model):
    with pytest.raises(InputError, match="threshold needs a confidence in"):
        generate(model, torch.tensor([[1, 2]]), steps=8, gen_length=8, block_length=8, mask_id=MASK_ID,
                 remasking="entropy", threshold=0.9)
