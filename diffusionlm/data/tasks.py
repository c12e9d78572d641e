"""A built-in supervised fine-tuning task: reverse a string of digits.

    {"prompt": "reverse 4071:", "response": "1704"}

Why this task: it is generated procedurally (offline, deterministic, unlimited), it is
algorithmic, so a model that answers *held-out* prompts exactly right has learned the rule
rather than memorised pairs, and a tiny model learns it in a short CPU run. Digits are single
tokens in every byte-level BPE tokenizer trained on prose (the shipped one included), so the
reversal is a reversal of tokens too.

Held-out by construction: a digit string belongs to the validation split iff its CRC-32 is a
multiple of `HELD_OUT_MODULUS`, and the train split never yields such a string, so the two
splits are disjoint whatever their sizes.

Standard library only, like `corpus.py`.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

NUM_DIGITS = 4  # fixed, so every answer digit sits at a fixed distance from its source digit
HELD_OUT_MODULUS = 8  # one digit string in eight (1,250 of 10,000) is held out for validation


def reverse_example(digits: str) -> dict[str, str]:
    """The prompt/response pair for one digit string."""
    return {"prompt": f"reverse {digits}:", "response": digits[::-1]}


def is_held_out(digits: str) -> bool:
    return zlib.crc32(digits.encode()) % HELD_OUT_MODULUS == 0


def iter_reverse_examples(seed: int, num_examples: int, *, held_out: bool) -> Iterator[dict[str, str]]:
    """`num_examples` pairs from `random.Random(seed)`, all held-out strings or none."""
    rng = random.Random(seed)
    produced = 0
    while produced < num_examples:
        digits = "".join(rng.choice("0123456789") for _ in range(NUM_DIGITS))
        if is_held_out(digits) == held_out:
            produced += 1
            yield reverse_example(digits)
