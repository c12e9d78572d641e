"""The canvas page in a real headless Chromium: submit a prompt, watch masks turn into text."""

from __future__ import annotations

import shutil

import pytest
import torch
from serve_helpers import TIMEOUT_S, LiveServer, serve_config, write_export

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("loopback"),
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")]


def test_the_page_shows_masked_positions_then_the_final_text(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    torch.set_num_threads(1)
    live = LiveServer(serve_config(write_export(tmp_path / "export")))
    try:
        live.wait_ready()
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(live.url + "/", timeout=TIMEOUT_S * 1000)
                page.fill("#prompt", "Once upon a time")
                for field, value in (("max_tokens", "16"), ("steps", "16"), ("block_length", "8")):
                    page.fill(f"#{field}", value)
                page.click("#go")
                page.wait_for_selector("body[data-state=done]", timeout=TIMEOUT_S * 1000)
                page.screenshot(path=str(tmp_path / "page.png"))
                final = page.inner_text("#final")
                stats = page.inner_text("#stats")
                masked_seen = int(page.get_attribute("#canvas", "data-masked-seen"))
                masked_at_end = int(page.get_attribute("#canvas", "data-masked"))
                boxes_at_end = page.locator("#canvas .mask").count()
            finally:
                browser.close()
    finally:
        live.close()
    assert final.startswith("Once upon a time") and len(final) > len("Once upon a time")
    assert masked_seen == 15  # after the first of 16 one-token steps
    assert masked_at_end == 0 and boxes_at_end == 0
    assert "NFE 16" in stats and "tokens/s" in stats
    assert (tmp_path / "page.png").stat().st_size > 0
