"""The wire format: OpenAI's completions request and response shapes, plus the diffusion extras.

A request is validated like a config file (unknown fields are errors, each message names the
field), then split into what only the client sees (prompt, n, stop, echo, stream) and the
sampler settings (`SamplerSettings`). Requests with equal settings can share one sampler call.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.io import format_validation_error
from config.schemas import InferenceConfig, KVCacheMode, RemaskingStrategy


class APIError(Exception):
    """An error the server answers with OpenAI's error JSON and an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions. OpenAI's fields, then the sampler's (sent by OpenAI clients as
    `extra_body`). A sampler field left out takes the server's `[inference]` value."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | Annotated[list[str], Field(min_length=1)]
    max_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, gt=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    user: str | None = None
    # diffusion extras
    steps: int | None = Field(None, gt=0)
    block_length: int | None = Field(None, gt=0)
    remasking: RemaskingStrategy | None = None
    threshold: float | None = Field(None, gt=0, le=1)
    kv_cache: KVCacheMode | None = None
    cfg_scale: float | None = Field(None, ge=0)
    stream_canvas: bool = Field(False, description="stream the whole canvas after every step (masks as null)")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [stop for stop in stops if stop]


_SAMPLER_FIELDS = ("temperature", "top_p", "steps", "block_length", "remasking", "threshold", "kv_cache", "cfg_scale")


@dataclass(frozen=True)
class SamplerSettings:
    """Everything that shapes one sampler call; requests with equal settings batch together.

    `inference` is the server's `[inference]` with the request's fields applied; `gen_length`
    is the request's max_tokens.
    """

    inference: InferenceConfig
    gen_length: int

    @property
    def batch_invariant(self) -> bool:
        """Whether each row's text is independent of the other rows of its batch (given its
        seed). Not so for threshold decoding with random draws: a block runs until every row
        has filled it, and a row that filled it early keeps drawing from its generator."""
        inference = self.inference
        random = inference.temperature > 0 or inference.remasking == "random"
        return inference.threshold is None or not random

    def key(self) -> tuple:
        """Hashable identity of the settings (InferenceConfig itself is not hashable)."""
        return (self.gen_length, *sorted(self.inference.model_dump(mode="json").items()))


def _validate(schema: type[BaseModel], data: dict) -> BaseModel:
    """`schema` from `data`, or a 400 whose message and `param` name the first bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        location = err.errors()[0]["loc"]
        raise APIError(400, format_validation_error(err, "request"),
                       param=str(location[0]) if location else None) from None


def parse_request(body: object) -> CompletionRequest:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return _validate(CompletionRequest, body)


def sampler_settings(request: CompletionRequest, defaults: InferenceConfig, default_max_tokens: int
                     ) -> SamplerSettings:
    """The server defaults overridden by the request's sampler fields, validated together."""
    overrides = {name: getattr(request, name) for name in _SAMPLER_FIELDS if name in request.model_fields_set}
    inference = _validate(InferenceConfig, defaults.model_dump() | overrides)
    return SamplerSettings(inference, request.max_tokens or default_max_tokens)


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion_body(request_id: str, model: str, choices: list[dict], usage: dict | None, created: int | None = None,
                    **extra: Any) -> dict[str, Any]:
    """A `text_completion` object (the whole response, or one streamed chunk)."""
    body = {"id": request_id, "object": "text_completion", "created": created or int(time.time()), "model": model,
            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body | extra


def choice(index: int, text: str, finish_reason: str | None, **extra: Any) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason} | extra


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
