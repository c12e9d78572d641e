"""The HTTP application: OpenAI's completions API over the batching scheduler, plus the canvas
page, health and Prometheus metrics.

    POST /v1/completions   OpenAI completions (+ steps, block_length, remasking, threshold,
                           kv_cache, cfg_scale, stream_canvas); `stream: true` answers with
                           server-sent events in OpenAI's chunk format
    GET  /v1/models        the one served model
    GET  /health           200 once the model is loaded, 503 while loading (or if it failed)
    GET  /metrics          Prometheus text
    GET  /                 a page that shows the canvas filling in live

The model loads in a thread after the server starts listening, so a client can watch /health
go from 503 to 200. Errors are OpenAI's error JSON: 400 for bad input (never a 500), 404 for
an unknown model or path, 429 when the queue is full, 503 while loading.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from config.serve import ServeConfig
from diffusionlm.inference.predictor import Predictor, find_model_source
from diffusionlm.serving.engine import BatchRunner, make_rows
from diffusionlm.serving.metrics import ServerMetrics
from diffusionlm.serving.protocol import (
    APIError,
    CompletionRequest,
    choice,
    completion_body,
    completion_id,
    parse_request,
    sampler_settings,
    usage,
)
from diffusionlm.serving.scheduler import BatchScheduler, Job

logger = logging.getLogger(__name__)
_STATUS_LABELS = {400: "bad_request", 404: "bad_request", 429: "rejected", 503: "unavailable"}


class ServerState:
    """What the handlers share: the config, the model once loaded, the scheduler, the metrics."""

    def __init__(self, config: ServeConfig, load: Callable[[], Predictor],
                 on_load_error: Callable[[BaseException], None] | None) -> None:
        self.config, self._load, self._on_load_error = config, load, on_load_error
        self.metrics = ServerMetrics()
        self.predictor: Predictor | None = None
        self.scheduler: BatchScheduler | None = None
        self.load_error: BaseException | None = None
        self.model_name = config.server.model_name or "loading"
        self._tasks: list[asyncio.Task] = []

    async def load(self) -> None:
        try:
            predictor = await asyncio.to_thread(self._load)
            name = self.config.server.model_name or find_model_source(self.config.inference.checkpoint).run_dir.name
        except Exception as err:  # noqa: BLE001 - reported on /health and to the CLI
            self.load_error = err
            logger.error("loading the model failed: %s", err)
            if self._on_load_error is not None:
                self._on_load_error(err)
            return
        server = self.config.server
        self.scheduler = BatchScheduler(BatchRunner(predictor, self.metrics), max_batch_size=server.max_batch_size,
                                        max_wait_s=server.max_wait_ms / 1000, max_queue=server.max_queue,
                                        metrics=self.metrics)
        self._tasks.append(asyncio.create_task(self.scheduler.run()))
        self.model_name, self.predictor = name, predictor

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.load()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.close)

    def ready(self) -> Predictor:
        if self.predictor is None:
            detail = f"failed to load: {self.load_error}" if self.load_error else "still loading"
            raise APIError(503, f"the model is {detail}", type="server_error", code="model_not_ready")
        return self.predictor


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def _until_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the request body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Responder:
    """Turns one job's events into an OpenAI response or stream."""

    def __init__(self, state: ServerState, job: Job, request: CompletionRequest, prompt_tokens: int) -> None:
        self.state, self.job, self.request, self.prompt_tokens = state, job, request, prompt_tokens
        self.id, self.created, self.started = completion_id(), int(time.time()), time.perf_counter()
        prompts = request.prompts()
        self.prefix = {row.index: prompts[row.index // request.n] if request.echo else "" for row in job.rows}

    def _body(self, choices: list[dict], usage_: dict | None = None, **extra) -> dict:
        return completion_body(self.id, self.state.model_name, choices, usage_, self.created, **extra)

    async def _events(self) -> AsyncIterator[tuple]:
        while True:
            event = await self.job.events.get()
            yield event
            if event[0] in ("done", "error"):
                return

    def _finished(self, status: str) -> None:
        self.state.metrics.requests.labels(status).inc()
        if status == "ok":
            self.state.metrics.latency.observe(time.perf_counter() - self.started)
        elif status == "disconnected":
            self.state.scheduler.cancel(self.job)

    async def _collect(self) -> dict:
        texts, finish = dict(self.prefix), {}
        async for event in self._events():
            if event[0] == "text":
                _, index, text, reason = event
                texts[index] += text
                finish[index] = reason
            elif event[0] == "error":
                raise event[1]
            elif event[0] == "done":
                stats = dict(event[1])
        choices = [choice(index, texts[index], finish.get(index)) for index in sorted(texts)]
        return self._body(choices, usage(self.prompt_tokens, stats.pop("completion_tokens")), diffusion=stats)

    async def respond(self, http_request: Request) -> Response:
        """The whole completion as one JSON object; a client that disconnects first is dropped."""
        collect = asyncio.ensure_future(self._collect())
        gone = asyncio.ensure_future(_until_disconnect(http_request))
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():
            collect.cancel()
            self._finished("disconnected")
            return Response(status_code=499)
        gone.cancel()
        body = collect.result()  # an APIError goes to the app's handler, which counts it
        self._finished("ok")
        return JSONResponse(body)

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events: a chunk per newly final piece of text, then `[DONE]`."""
        status = "disconnected"
        seen: set[int] = set()
        try:
            async for event in self._events():
                if event[0] == "text":
                    _, index, text, reason = event
                    if index not in seen:
                        seen.add(index)
                        text = self.prefix[index] + text
                    yield _sse(self._body([choice(index, text, reason)]))
                elif event[0] == "canvas":
                    _, index, step, pieces = event
                    yield _sse(self._body([choice(index, "", None, canvas={"step": step, "tokens": pieces})]))
                elif event[0] == "error":
                    status = _STATUS_LABELS.get(event[1].status, "error")
                    yield _sse(event[1].body())
                elif event[0] == "done":
                    stats = dict(event[1])
                    tokens = stats.pop("completion_tokens")
                    options = self.request.stream_options
                    if (options is not None and options.include_usage) or self.request.stream_canvas:
                        yield _sse(self._body([], usage(self.prompt_tokens, tokens), diffusion=stats))
                    status = "ok"
            yield _sse("[DONE]")
        finally:
            self._finished(status)


def _read_page() -> str:
    return (resources.files("diffusionlm.serving") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(config: ServeConfig, load: Callable[[], Predictor] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The application. `load` builds the predictor (default: `config.inference.checkpoint` on
    `config.inference.device`); `on_load_error` is told when it fails."""
    if load is None:
        def load() -> Predictor:
            return Predictor.load(config.inference.checkpoint, config.inference.device)
    state = ServerState(config, load, on_load_error)
    page = _read_page()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.start()
        yield
        await state.stop()

    app = FastAPI(title="diffusionlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state

    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        state.metrics.requests.labels(_STATUS_LABELS.get(err.status, "error")).inc()
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, err: Exception) -> JSONResponse:
        logger.exception("request failed")
        state.metrics.requests.labels("error").inc()
        return JSONResponse(APIError(500, f"{type(err).__name__}: {err}", type="server_error").body(), status_code=500)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(err.status_code, str(err.detail)).body(), status_code=err.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.predictor is None:
            status = "failed" if state.load_error else "loading"
            return JSONResponse({"status": status, "error": str(state.load_error or "")}, status_code=503)
        return JSONResponse({"status": "ok", "model": state.model_name})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        predictor = state.ready()
        return JSONResponse({"object": "list", "data": [{
            "id": state.model_name, "object": "model", "created": 0, "owned_by": "diffusionlm",
            "max_model_len": predictor.config.context_length}]})

    @app.post("/v1/completions")
    async def completions(http_request: Request) -> Response:
        predictor = state.ready()
        try:
            body = await http_request.json()
        except ValueError:
            raise APIError(400, "the request body is not valid JSON") from None
        request = parse_request(body)
        if request.model is not None and request.model != state.model_name:
            raise APIError(404, f"model {request.model!r} does not exist; this server serves {state.model_name!r}",
                           param="model", code="model_not_found")
        if request.n > config.server.max_n:
            raise APIError(400, f"n ({request.n}) is above this server's max_n ({config.server.max_n})", param="n")
        if request.stream_canvas and not request.stream:
            raise APIError(400, "stream_canvas needs stream: true", param="stream_canvas")
        settings = sampler_settings(request, config.inference, config.server.default_max_tokens)
        rows, prompt_tokens = make_rows(predictor, request, settings)
        job = Job(rows, settings, request.stop_strings(), request.stream, request.stream_canvas,
                  asyncio.get_running_loop())
        state.scheduler.submit(job)
        state.metrics.prompt_tokens.inc(prompt_tokens)
        responder = _Responder(state, job, request, prompt_tokens)
        if request.stream:
            return StreamingResponse(responder.stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await responder.respond(http_request)

    return app
