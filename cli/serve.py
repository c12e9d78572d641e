"""Serve a trained model over HTTP with OpenAI's completions API, batching concurrent requests.

    uv run diffusionlm-serve                                   # the quick-start run on 127.0.0.1:8000
    uv run diffusionlm-serve --set inference.checkpoint=runs/mine/export --set server.port=0
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"prompt": "Once upon a time", "max_tokens": 32, "stream": true}'

Open http://127.0.0.1:8000/ to watch the canvas fill in. The server listens at once and answers
503 until the model has loaded; a model that cannot be loaded stops it (exit 2). SIGTERM or
Ctrl-C stops accepting connections and lets in-flight requests finish (server.drain_timeout_s).
"""

from __future__ import annotations

import argparse
import signal
import sys

from cli.utils import run_cli
from config.serve import ServeConfig


def _run(config: ServeConfig, args: argparse.Namespace) -> int:
    import uvicorn

    from diffusionlm.serving.app import create_app
    from diffusionlm.serving.listen import bind, url_of
    from diffusionlm.utils.threads import apply_num_threads

    print(f"num_threads: {apply_num_threads(config.inference.num_threads)}", file=sys.stderr, flush=True)

    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_load_error(err: BaseException) -> None:
        failures.append(err)
        server.should_exit = True

    app = create_app(config, on_load_error=stop_on_load_error)
    server = uvicorn.Server(uvicorn.Config(app, log_level="debug" if args.debug else "info", access_log=args.debug,
                                           timeout_graceful_shutdown=config.server.drain_timeout_s))
    sock = bind(config.server.host, config.server.port)
    print(f"diffusionlm-serve: {config.inference.checkpoint} on {url_of(sock)}/ (loading the model)", flush=True)
    # uvicorn drains on SIGTERM, then raises the signal again under the handler it found; with
    # this one in place a drained server exits 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failures:
        raise failures[0]
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, ServeConfig, prog="diffusionlm-serve", description=__doc__, default_config="serve.toml",
                   argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
