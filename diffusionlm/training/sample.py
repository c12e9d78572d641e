"""A short sample from the model at the end of a run: the quickest check that it learned.

Diffusion models are sampled with the LLaDA sampler; the causal baseline decodes greedily
left to right. The prompt is the end-of-text token, i.e. "start a new document".
"""

from __future__ import annotations

import torch
from torch import nn

from config.schemas import ModelConfig
from diffusionlm.inference.generate import generate
from diffusionlm.tokenizer.tokenizer import Tokenizer

SAMPLE_LENGTH = 64
SAMPLE_BLOCK_LENGTH = 32
# LLaDA's confidence-ordered decoding at a moderate temperature: random-order sampling at
# temperature 1 commits many low-probability tokens early and reads as word salad, while
# greedy decoding of a small model tends to repeat itself. Seeded, so a run's sample is
# reproducible.
SAMPLE_TEMPERATURE = 0.7
SAMPLE_REMASKING = "low_confidence"
SAMPLE_SEED = 0


@torch.no_grad()
def sample_text(model: nn.Module, tokenizer: Tokenizer, model_config: ModelConfig, device: torch.device) -> str:
    """A seeded sample of up to SAMPLE_LENGTH tokens after an end-of-text prompt."""
    was_training = model.training
    model.eval()
    length = min(SAMPLE_LENGTH, model_config.context_length - 1)
    prompt = torch.tensor([[model_config.eot_token_id]], device=device)
    if model_config.causal:
        generated = _greedy_autoregressive(model, prompt, length, model_config.eot_token_id)[0, 1:]
    else:
        result = generate(model, prompt, steps=length, gen_length=length,
                          block_length=min(SAMPLE_BLOCK_LENGTH, length), temperature=SAMPLE_TEMPERATURE,
                          remasking=SAMPLE_REMASKING, mask_id=model_config.mask_token_id, eos_token_id=model_config.eot_token_id,
                          stop_at_eos=True, vocab_limit=tokenizer.vocab_size,
                          generator=torch.Generator(device=device).manual_seed(SAMPLE_SEED))
        kept = int(result.generated_lengths[0])
        generated = result.tokens[0, result.prompt_length:result.prompt_length + kept]
    model.train(was_training)
    special_ids = set(tokenizer.special_tokens.values())
    return tokenizer.decode([i for i in generated.tolist() if i not in special_ids], skip_unknown=True)


def _greedy_autoregressive(model: nn.Module, prompt: torch.Tensor, length: int, eot_token_id: int) -> torch.Tensor:
    """Append the argmax next token `length` times (no KV cache: a few dozen short forwards)."""
    ids = prompt
    for _ in range(length):
        next_id = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
        if next_id.item() == eot_token_id:
            break
    return ids
