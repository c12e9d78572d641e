"""`diffusionlm-serve` config: which model, where to listen, how requests are batched.

`[inference]` names the model (`checkpoint`, `device`) and gives the sampler settings a request
gets when it leaves them out (`steps`, `block_length`, `temperature`, ...). A request's prompt
and `max_tokens` replace `inference.prompt` and `inference.total_length`, and a request without a
`seed` gets a fresh random one, so the server does not use those three keys.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from config.schemas import InferenceConfig, Section


class ServerConfig(Section):
    """`[server]`: the HTTP endpoint and the batching scheduler."""

    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 exposes the server to the network")
    port: int = Field(8000, ge=0, le=65535, description="0: any free port (the URL is printed)")
    model_name: str | None = Field(None, description="id in /v1/models; defaults to the run directory's name")
    max_batch_size: int = Field(8, gt=0, description="most sequences (prompts x n) decoded in one sampler call")
    max_wait_ms: float = Field(20.0, ge=0, description="how long the oldest queued request waits for company "
                               "(counted from its arrival or from the end of the last sampler call, the later)")
    max_queue: int = Field(256, gt=0, description="queued sequences beyond which requests get 429")
    default_max_tokens: int = Field(16, gt=0, description="max_tokens of a request that leaves it out (OpenAI's 16)")
    max_n: int = Field(16, gt=0, description="largest n (choices per prompt) a request may ask for")
    drain_timeout_s: float = Field(60.0, gt=0, description="on SIGTERM, how long in-flight requests may finish")


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    server: ServerConfig = Field(default_factory=ServerConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
