"""Supervised fine-tuning rows: a prompt/response pair -> one padded sequence + its prompt length.

The template is deliberately plain, and `diffusionlm-infer` uses the same one:

    encode(prompt) + encode(response) + [<|endoftext|>] + [<|endoftext|>] * padding

The prompt and the response are encoded separately, so the prompt/answer boundary is a token
boundary and a prompt given to the sampler tokenizes exactly as it did in training; any
separator ("Q: ... A:", a chat marker, a special token added with the tokenizer trainer's
`special_tokens`) belongs in the prompt text itself. Each pair is one sequence padded with
`<|endoftext|>` to `context_length` (LLaDA's SFT, Sec. 2.3): the pads are part of the answer,
supervised, so the model learns to end its answer and fill the rest of the canvas with
end-of-text. A response that does not fit is cut at the context (its end-of-text lost with
it); a prompt that leaves no room for a single answer token is an error.

The objective (`diffusion_loss(prompt_lengths=...)`) never masks the first prompt_length
tokens of a row and normalises each row's loss by its answer length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffusionlm.data.packing import pad_document
from diffusionlm.errors import InputError


@dataclass
class SFTBatch:
    """A batch of SFT rows: ids (B, L) and prompt_lengths (B,).

    It offers what the training loop and validation use of a batch tensor (`to`,
    `pin_memory`, `numel`, `shape`), so they move and count it like a plain batch of ids.
    `to` moves the ids only: the prompt lengths stay on the host, where the objective decides
    how many tokens of each row to mask without a device sync.
    """

    ids: torch.Tensor
    prompt_lengths: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SFTBatch:
        return SFTBatch(self.ids.to(device, non_blocking=non_blocking), self.prompt_lengths)

    def pin_memory(self) -> SFTBatch:
        return SFTBatch(self.ids.pin_memory(), self.prompt_lengths)

    def numel(self) -> int:
        return self.ids.numel()


class SFTPairEncoder:
    """Encodes a (prompt, response) pair to (prompt ids, response ids); picklable for worker processes.

    `OrderedEncoder` appends the end-of-text token to the response.
    """

    def __init__(self, encode: Callable[[str], list[int]], context_length: int, label: str) -> None:
        self.encode, self.context_length, self.label = encode, context_length, label

    def __call__(self, pair: tuple[str, str]) -> tuple[list[int], list[int]]:
        prompt, response = pair
        prompt_ids = self.encode(prompt)
        if len(prompt_ids) >= self.context_length:
            raise InputError(f"dataset {self.label}: a prompt of {len(prompt_ids)} tokens leaves no room for its "
                             f"answer in context_length {self.context_length} (prompt starts {prompt[:40]!r})")
        return prompt_ids, self.encode(response)


def pad_pair(prompt_ids: list[int], answer_ids: list[int], context_length: int,
             eot_token_id: int) -> tuple[list[int], int]:
    """(prompt + answer, cut or padded with eot to context_length; the prompt's length)."""
    return pad_document(prompt_ids + answer_ids, context_length, eot_token_id), len(prompt_ids)
