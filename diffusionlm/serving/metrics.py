"""The server's Prometheus metrics (GET /metrics), on a registry of its own so that several
servers in one process (tests, the benchmark) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("diffusionlm_requests", "completion requests by outcome (ok, bad_request, "
                                "rejected, disconnected, error)", ["status"], registry=registry)
        self.prompt_tokens = Counter("diffusionlm_prompt_tokens", "prompt tokens of accepted requests",
                                     registry=registry)
        self.completion_tokens = Counter("diffusionlm_completion_tokens", "tokens returned to clients",
                                         registry=registry)
        self.queue_depth = Gauge("diffusionlm_queue_depth", "sequences waiting for a sampler call", registry=registry)
        self.running = Gauge("diffusionlm_running_sequences", "sequences in the current sampler call",
                             registry=registry)
        self.batch_size = Histogram("diffusionlm_batch_size", "sequences per sampler call", buckets=_BATCH_BUCKETS,
                                    registry=registry)
        self.nfe = Counter("diffusionlm_forward_passes", "denoiser forward passes (NFE)", registry=registry)
        self.tokens_per_forward = Gauge("diffusionlm_tokens_per_forward",
                                        "generated tokens per sequence per forward pass, last sampler call",
                                        registry=registry)
        self.latency = Histogram("diffusionlm_request_latency_seconds", "time from arrival to the last byte",
                                 buckets=_LATENCY_BUCKETS, registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
