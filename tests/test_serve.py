"""diffusionlm-serve against a live uvicorn server on 127.0.0.1, called with the official
`openai` client (and raw HTTP where the client hides the wire)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
import torch
from serve_helpers import BUILTIN, MODEL_NAME, TIMEOUT_S, LiveServer, metric, serve_config, write_export

from config.schemas import InferenceConfig
from diffusionlm.inference.predictor import Predictor

PROMPT = "Once upon a time"
# Talks to itself over 127.0.0.1: skips, saying why, where loopback is down.
pytestmark = pytest.mark.usefixtures("loopback")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return write_export(tmp_path_factory.mktemp("serve") / "export")


@pytest.fixture(scope="module")
def server(export_dir):
    torch.set_num_threads(1)
    live = LiveServer(serve_config(export_dir, max_wait_ms=150))
    try:
        live.wait_ready()
        yield live
    finally:
        live.close()


def make_client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)


@pytest.fixture
def client(server):
    with make_client(server) as client:
        yield client


def concurrently(server: LiveServer, calls: list) -> list:
    """Run `call(client)` for each call at once (one client each, released together by a barrier)."""
    clients = [make_client(server) for _ in calls]
    barrier, results = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(TIMEOUT_S)
        results[i] = calls[i](clients[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    for client in clients:
        client.close()
    return results


def complete(client, prompt=PROMPT, **kwargs):
    extra = {key: kwargs.pop(key) for key in ("steps", "block_length", "remasking", "threshold", "kv_cache",
                                             "cfg_scale", "stream_canvas") if key in kwargs}
    return client.completions.create(model=MODEL_NAME, prompt=prompt, extra_body=extra or None, **kwargs)


def test_a_completion_has_openai_shape_and_the_sampler_text(client, export_dir):
    completion = complete(client, max_tokens=12)
    assert completion.object == "text_completion" and completion.model == MODEL_NAME
    assert completion.id.startswith("cmpl-")
    [choice] = completion.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    prompt_ids = BUILTIN.encode(PROMPT)
    assert completion.usage.prompt_tokens == len(prompt_ids)
    assert 0 < completion.usage.completion_tokens <= 12
    predictor = Predictor.load(export_dir, "cpu")
    inference = InferenceConfig(checkpoint=export_dir, steps=8, block_length=8, total_length=len(prompt_ids) + 12,
                                device="cpu")
    expected = predictor.sample_ids(predictor.encode_prompts([PROMPT], inference), inference, prompts=[PROMPT])
    assert choice.text == expected.completions[0].text
    assert completion.model_extra["diffusion"]["nfe"] == 8


def test_models_lists_the_served_model_and_health_is_ok(client, server):
    assert [model.id for model in client.models.list()] == [MODEL_NAME]
    assert httpx.get(server.url + "/health", timeout=TIMEOUT_S).json() == {"status": "ok", "model": MODEL_NAME}


def stream_texts(client, **kwargs) -> tuple[list[str], list]:
    chunks = list(complete(client, stream=True, **kwargs))
    return [chunk.choices[0].text for chunk in chunks if chunk.choices], chunks


def test_a_stream_sends_final_text_block_by_block_and_adds_up_to_the_completion(client):
    settings = dict(max_tokens=24, steps=24, block_length=4, extra_body=None)
    settings.pop("extra_body")
    whole = complete(client, **settings).choices[0].text
    texts, chunks = stream_texts(client, **settings)
    assert "".join(texts) == whole
    assert sum(1 for text in texts if text) > 1
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])


def test_a_stop_string_across_two_chunks_ends_the_stream_before_it(client):
    settings = dict(max_tokens=32, steps=32, block_length=4)
    texts, _ = stream_texts(client, **settings)
    full, bounds = "".join(texts), []
    for text in texts[:-1]:
        bounds.append((bounds[-1] if bounds else 0) + len(text))
    stop = None
    for bound in bounds:  # a stop string whose first occurrence straddles a chunk boundary
        candidate = full[bound - 2:bound + 2]
        first = full.find(candidate)
        if len(candidate) == 4 and first < bound < first + 4:
            stop = candidate
            break
    assert stop is not None, f"no chunk boundary to test in {texts!r}"
    expected = full[:full.find(stop)]
    texts, chunks = stream_texts(client, stop=[stop], **settings)
    assert "".join(texts) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert complete(client, stop=stop, **settings).choices[0].text == expected


def test_n_choices_come_from_consecutive_seeds(client):
    settings = dict(max_tokens=12, temperature=1.0, remasking="random")
    completion = complete(client, n=3, seed=5, **settings)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    texts = [choice.text for choice in completion.choices]
    assert len(set(texts)) > 1
    assert complete(client, seed=7, **settings).choices[0].text == texts[2]


def test_seeded_requests_give_the_same_text_batched_or_alone(client, server):
    prompts = ["Once upon a time", "Tom", "The little dog ran to the park and", "Mia"]
    settings = dict(max_tokens=16, temperature=1.0, top_p=0.95, remasking="random", kv_cache="dual")
    results = concurrently(server, [lambda c, i=i: complete(c, prompts[i], seed=100 + i, **settings)
                                    for i in range(len(prompts))])
    assert max(result.model_extra["diffusion"]["batch_size"] for result in results) > 1
    for i, prompt in enumerate(prompts):
        alone = complete(client, prompt, seed=100 + i, **settings)
        assert alone.model_extra["diffusion"]["batch_size"] == 1
        assert alone.choices[0].text == results[i].choices[0].text


def test_requests_with_different_settings_are_not_batched_together(server):
    results = concurrently(server, [lambda c, i=i: complete(c, max_tokens=8, steps=8 if i % 2 else 4)
                                    for i in range(4)])
    sizes = [results[i].model_extra["diffusion"]["batch_size"] for i in range(4)]
    nfes = [results[i].model_extra["diffusion"]["nfe"] for i in range(4)]
    assert nfes == [4, 8, 4, 8]
    assert all(size <= 2 for size in sizes) and max(sizes) == 2


def test_echo_puts_the_prompt_in_front(client):
    plain = complete(client, max_tokens=8).choices[0].text
    assert complete(client, max_tokens=8, echo=True).choices[0].text == PROMPT + plain


def test_a_prompt_list_gets_one_choice_per_prompt(client):
    completion = complete(client, prompt=["Tom", "Mia"], max_tokens=8, n=2)
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert completion.choices[0].text == complete(client, prompt="Tom", max_tokens=8).choices[0].text


def test_stream_canvas_shows_masks_filling_in(client):
    chunks = list(complete(client, stream=True, stream_canvas=True, max_tokens=16, steps=16, block_length=8))
    canvases = [chunk.choices[0].model_extra["canvas"] for chunk in chunks
                if chunk.choices and chunk.choices[0].model_extra.get("canvas")]
    assert [canvas["step"] for canvas in canvases] == list(range(1, 17))
    masked = [sum(token is None for token in canvas["tokens"]) for canvas in canvases]
    assert masked == list(range(15, -1, -1))  # one token per step
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].model_extra["diffusion"]["nfe"] == 16


BAD_REQUESTS = [
    (dict(max_tokens=8, extra_body={"bogus": 1}), "bogus: unknown key"),
    (dict(max_tokens=8, temperature=-1.0), "temperature"),
    (dict(max_tokens=8, extra_body={"remasking": "sideways"}), "remasking"),
    (dict(max_tokens=95), "context"),
    (dict(max_tokens=32, extra_body={"steps": 2, "block_length": 8}), "blocks"),
    (dict(max_tokens=8, extra_body={"threshold": 0.9, "remasking": "entropy"}), "threshold"),
    (dict(max_tokens=8, extra_body={"stream_canvas": True}), "stream_canvas"),
    (dict(max_tokens=8, n=99), "max_n"),
    (dict(prompt="a <|mask|> b", max_tokens=8), "mask token"),
    (dict(prompt=[], max_tokens=8), "prompt"),
]


@pytest.mark.parametrize(("kwargs", "fragment"), BAD_REQUESTS)
def test_bad_input_is_a_400_with_openai_error_json(client, kwargs, fragment):
    kwargs = {"prompt": PROMPT} | kwargs
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, **kwargs)
    assert caught.value.status_code == 400
    assert fragment in caught.value.body["message"]
    assert caught.value.body["type"] == "invalid_request_error"


def test_a_bad_field_is_named_in_param(client):
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, max_tokens=8, temperature=-1.0)
    assert caught.value.body["param"] == "temperature"


def test_malformed_json_and_unknown_model_and_path(server, client):
    response = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=TIMEOUT_S)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=4)
    response = httpx.get(server.url + "/v1/nothing", timeout=TIMEOUT_S)
    assert response.status_code == 404 and "error" in response.json()


def test_a_full_queue_is_a_429(export_dir):
    live = LiveServer(serve_config(export_dir, max_queue=1))
    try:
        live.wait_ready()
        with make_client(live) as client, pytest.raises(openai.RateLimitError) as caught:
            complete(client, max_tokens=4, n=2)
        assert caught.value.body["code"] == "queue_full"
    finally:
        live.close()


def test_requests_get_503_until_the_model_has_loaded(export_dir):
    gate = threading.Event()

    def slow_load() -> Predictor:
        gate.wait(TIMEOUT_S)
        return Predictor.load(export_dir, "cpu")

    live = LiveServer(serve_config(export_dir), load=slow_load)
    try:
        assert httpx.get(live.url + "/health", timeout=TIMEOUT_S).status_code == 503
        with make_client(live) as client:
            with pytest.raises(openai.InternalServerError) as caught:
                complete(client, max_tokens=4)
            assert caught.value.status_code == 503 and "loading" in caught.value.body["message"]
            gate.set()
            live.wait_ready()
            assert complete(client, max_tokens=4).choices[0].finish_reason in ("stop", "length")
    finally:
        gate.set()
        live.close()


def test_a_client_that_disconnects_mid_stream_is_dropped(server):
    metrics_url = server.url + "/metrics"
    before = httpx.get(metrics_url, timeout=TIMEOUT_S).text
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 80, "steps": 80, "block_length": 8,
            "stream": True, "stream_canvas": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=TIMEOUT_S) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ") and json.loads(first[6:])["choices"]
    deadline = time.monotonic() + TIMEOUT_S
    disconnected = 'diffusionlm_requests_total{status="disconnected"}'
    while True:
        after = httpx.get(metrics_url, timeout=TIMEOUT_S).text
        if metric(after, disconnected) == metric(before, disconnected) + 1 and metric(after, "diffusionlm_running_sequences") == 0:
            break
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.05)
    # the sampler call stopped early: fewer than the request's 80 forward passes were spent on it
    assert metric(after, "diffusionlm_forward_passes_total") - metric(before, "diffusionlm_forward_passes_total") < 80


def test_metrics_count_requests_tokens_and_batches(server, client):
    complete(client, max_tokens=8)
    text = httpx.get(server.url + "/metrics", timeout=TIMEOUT_S).text
    assert metric(text, 'diffusionlm_requests_total{status="ok"}') >= 1
    assert metric(text, "diffusionlm_completion_tokens_total") >= 1
    assert metric(text, "diffusionlm_prompt_tokens_total") >= len(BUILTIN.encode(PROMPT))
    assert metric(text, "diffusionlm_batch_size_count") >= 1
    assert metric(text, "diffusionlm_forward_passes_total") >= 8
    assert metric(text, "diffusionlm_request_latency_seconds_count") >= 1
    assert "diffusionlm_queue_depth" in text


def test_the_page_streams_the_canvas_from_the_completions_endpoint(server):
    response = httpx.get(server.url + "/", timeout=TIMEOUT_S)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '"/v1/completions"' in page and "stream_canvas: true" in page and "stream: true" in page
