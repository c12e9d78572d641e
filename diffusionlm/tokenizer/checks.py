"""The contract between a tokenizer and a model: the special ids the model was built around."""

from __future__ import annotations

from config.schemas import ModelConfig
from config.special_tokens import EOT_TOKEN, MASK_TOKEN
from diffusionlm.errors import InputError
from diffusionlm.tokenizer.tokenizer import Tokenizer


def check_tokenizer_matches_model(model: ModelConfig, tokenizer: Tokenizer, source: str) -> None:
    """Raise InputError unless the tokenizer's special ids equal `[model]`'s and fit its vocab.

    A mismatch would train the model to predict the wrong mask/eot ids, silently; `source`
    names the tokenizer files in the message.
    """
    for token, field in ((MASK_TOKEN, "mask_token_id"), (EOT_TOKEN, "eot_token_id")):
        token_id = tokenizer.special_tokens.get(token)
        if token_id is None:
            raise InputError(f"{source}: tokenizer has no {token} special token (needed for model.{field})")
        if token_id != getattr(model, field):
            raise InputError(f"model.{field}: {getattr(model, field)} does not match the tokenizer's {token} "
                             f"id {token_id} ({source})")
    if tokenizer.vocab_size > model.vocab_size:
        raise InputError(f"model.vocab_size: {model.vocab_size} is smaller than the tokenizer's vocabulary "
                         f"({tokenizer.vocab_size} tokens, {source})")
