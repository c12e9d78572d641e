"""Serving under load: N concurrent loopback clients, each sending R completion requests one
after the other, against the same server with request batching on (`server.max_batch_size`)
and off (1), in one run, on one loaded model.

Per run: requests answered, wall time, requests/s, generated tokens/s, p50/p99 latency, the
mean sampler batch, and tokens per forward pass (per sequence, and over the whole batch: the
batching gain). Every request carries a distinct seed and is checked to come back exactly
once; greedy requests must get the same text in both runs.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch

from config.bench_serve import BenchServeConfig
from config.serve import ServeConfig
from diffusionlm.inference.predictor import Predictor
from diffusionlm.serving.app import create_app
from diffusionlm.serving.listen import BackgroundServer
from diffusionlm.utils.threads import apply_num_threads


@dataclass
class Outcome:
    tag: str
    status: int
    latency_s: float
    body: dict


@dataclass
class RunResult:
    mode: str
    max_batch_size: int
    requests: int
    answered: int
    wall_s: float
    requests_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    tokens_per_forward: float
    batch_tokens_per_forward: float


def _post(url: str, body: dict, timeout_s: float) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _client(url: str, bodies: list[dict], deadline: float, outcomes: list[Outcome]) -> None:
    for body in bodies:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        start = time.perf_counter()
        try:
            status, payload = _post(url, body, left)
        except OSError as err:  # timeout or a dropped connection: the request is lost
            status, payload = 0, {"error": str(err)}
        outcomes.append(Outcome(body["user"], status, time.perf_counter() - start, payload))


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return {line.split()[0]: float(line.split()[-1]) for line in lines if line and not line.startswith("#")}


def _requests(config: BenchServeConfig) -> list[list[dict]]:
    """Each client's request bodies; the `user` field tags a request, the seed is unique."""
    load, prompts = config.bench_serve, config.bench_serve.prompts
    return [[{"prompt": prompts[(c * load.requests_per_client + i) % len(prompts)], "max_tokens": load.max_tokens,
              "seed": c * load.requests_per_client + i, "user": f"{c}-{i}"}
             for i in range(load.requests_per_client)] for c in range(load.clients)]


def run_mode(predictor: Predictor, config: BenchServeConfig, mode: str, max_batch_size: int
             ) -> tuple[RunResult, dict[str, str]]:
    """One server, the whole load; returns the result and each request's text by tag."""
    load = config.bench_serve
    server_config = ServeConfig(server=config.server.model_copy(update={"max_batch_size": max_batch_size}),
                                inference=config.inference)
    app = create_app(server_config, load=lambda: predictor)
    with BackgroundServer(app, timeout_s=load.timeout_s) as server:
        state, deadline = app.state.server, time.monotonic() + load.timeout_s
        while state.predictor is None and time.monotonic() < deadline:
            time.sleep(0.01)
        _post(server.url, {"prompt": load.prompts[0], "max_tokens": load.max_tokens, "user": "warmup"}, 60)
        before = _metrics(server.url)
        bodies, outcomes = _requests(config), []
        threads = [threading.Thread(target=_client, args=(server.url, own, deadline, outcomes)) for own in bodies]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        wall = time.perf_counter() - start
        after = _metrics(server.url)
    tags = [outcome.tag for outcome in outcomes]
    if len(set(tags)) != len(tags):
        raise RuntimeError(f"{mode}: a request came back twice")
    answered = [outcome for outcome in outcomes if outcome.status == 200]
    if len({outcome.body["id"] for outcome in answered}) != len(answered):
        raise RuntimeError(f"{mode}: two requests got the same completion id")
    latencies = sorted(outcome.latency_s * 1000 for outcome in answered) or [float("nan")]
    tokens = sum(outcome.body["usage"]["completion_tokens"] for outcome in answered)
    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    calls = max(delta.get("diffusionlm_batch_size_count", 0.0), 1.0)
    nfe = max(delta.get("diffusionlm_forward_passes_total", 0.0), 1.0)
    per_sequence = statistics.mean(outcome.body["diffusion"]["tokens_per_forward"] for outcome in answered) \
        if answered else float("nan")
    result = RunResult(
        mode=mode, max_batch_size=max_batch_size, requests=load.clients * load.requests_per_client,
        answered=len(answered), wall_s=round(wall, 3), requests_per_s=round(len(answered) / wall, 3),
        tokens_per_s=round(tokens / wall, 2), p50_ms=round(statistics.median(latencies), 1),
        p99_ms=round(latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))], 1),
        mean_batch=round(delta.get("diffusionlm_batch_size_sum", 0.0) / calls, 2),
        tokens_per_forward=round(per_sequence, 3), batch_tokens_per_forward=round(tokens / nfe, 3))
    return result, {outcome.tag: outcome.body["choices"][0]["text"] for outcome in answered}


def run_benchmark(config: BenchServeConfig) -> tuple[list[RunResult], dict]:
    apply_num_threads(config.benchmark.num_threads)
    predictor = Predictor.load(config.inference.checkpoint, config.inference.device)
    batched, batched_texts = run_mode(predictor, config, "batched", config.server.max_batch_size)
    sequential, sequential_texts = run_mode(predictor, config, "sequential", 1)
    same = sum(batched_texts.get(tag) == text for tag, text in sequential_texts.items())
    shared = {"weights": str(predictor.source), "device": str(predictor.device), "clients": config.bench_serve.clients,
              "requests_per_client": config.bench_serve.requests_per_client,
              "max_tokens": config.bench_serve.max_tokens, "steps": config.inference.steps,
              "block_length": config.inference.block_length, "threads": torch.get_num_threads(),
              "speedup": round(batched.tokens_per_s / max(sequential.tokens_per_s, 1e-9), 2),
              "same_text": f"{same}/{len(sequential_texts)}"}
    return [batched, sequential], shared


def format_table(results: list[RunResult], shared: dict) -> str:
    head = (f"{'mode':<11}{'batch':>6}{'answered':>10}{'wall s':>9}{'req/s':>8}{'tok/s':>9}{'p50 ms':>9}"
            f"{'p99 ms':>9}{'mean batch':>11}{'tok/fwd/seq':>12}{'tok/fwd':>9}")
    lines = [f"serving {shared['weights']} on {shared['device']} ({shared['threads']} threads): "
             f"{shared['clients']} clients x {shared['requests_per_client']} requests, {shared['max_tokens']} tokens, "
             f"{shared['steps']} steps, block {shared['block_length']}", head]
    for r in results:
        lines.append(f"{r.mode:<11}{r.max_batch_size:>6}{f'{r.answered}/{r.requests}':>10}{r.wall_s:>9.2f}"
                     f"{r.requests_per_s:>8.2f}{r.tokens_per_s:>9.1f}{r.p50_ms:>9.0f}{r.p99_ms:>9.0f}"
                     f"{r.mean_batch:>11.2f}{r.tokens_per_forward:>12.3f}{r.batch_tokens_per_forward:>9.2f}")
    lines.append(f"batching speedup (tokens/s): {shared['speedup']}x; same text in both runs: {shared['same_text']}")
    return "\n".join(lines)
