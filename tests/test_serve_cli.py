"""`diffusionlm-serve` as a process: config printing, a bad model is exit 2, SIGTERM drains."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import BUILTIN, MODEL_NAME, TIMEOUT_S, metric, write_export

from cli.serve import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_print_config_shows_the_server_defaults(capsys):
    assert main(["--print-config"]) == 0
    out = capsys.readouterr().out
    assert '[server]' in out and 'host = "127.0.0.1"' in out and "max_batch_size" in out


def start(*overrides: str) -> tuple[subprocess.Popen, str]:
    """The server on a free port; returns the process and its URL (read from its first line)."""
    args = [sys.executable, "-m", "cli.serve", "--set", "server.port=0", "--set", "inference.device=cpu", *overrides]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    line = process.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not found:
        process.kill()
        raise AssertionError(f"no URL in the first line: {line!r}; stderr: {process.stderr.read()}")
    return process, found.group(0)


def test_a_checkpoint_that_cannot_load_stops_the_server_with_exit_2(tmp_path, capsys):
    missing = json.dumps(str(tmp_path / "missing"))
    assert main(["--set", "server.port=0", "--set", "inference.device=cpu", "--set",
                 f"inference.checkpoint={missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_port_in_use_is_exit_2(capsys, loopback):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["--set", f"server.port={taken.getsockname()[1]}"]) == 2
    assert "server.host/server.port: cannot listen on 127.0.0.1:" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_lets_every_accepted_request_finish(tmp_path, loopback):
    export = write_export(tmp_path / "export")
    process, url = start("--set", f"inference.checkpoint={json.dumps(str(export))}",
                         "--set", "server.max_batch_size=2", "--set", f"server.model_name={json.dumps(MODEL_NAME)}")
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while httpx.get(url + "/health", timeout=TIMEOUT_S).status_code != 200:
            assert time.monotonic() < deadline and process.poll() is None, "the server did not become ready"
            time.sleep(0.05)
        count, results = 6, {}
        prompt_tokens = sum(len(BUILTIN.encode(f"Story {i}")) for i in range(count))

        def call(i: int) -> None:
            body = {"prompt": f"Story {i}", "max_tokens": 32, "steps": 32, "block_length": 16, "seed": i}
            results[i] = httpx.post(url + "/v1/completions", json=body, timeout=TIMEOUT_S)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        while True:  # every request accepted (prompt tokens counted), some still queued or running
            text = httpx.get(url + "/metrics", timeout=TIMEOUT_S).text
            if metric(text, "diffusionlm_prompt_tokens_total") == prompt_tokens:
                break
            assert time.monotonic() < deadline, "the requests were not all accepted"
            time.sleep(0.02)
        assert metric(text, "diffusionlm_queue_depth") + metric(text, "diffusionlm_running_sequences") > 0
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(TIMEOUT_S)
        assert process.wait(TIMEOUT_S) == 0
    finally:
        process.kill()
    assert sorted(results) == list(range(count))
    for response in results.values():
        assert response.status_code == 200
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
