"""The installed package: every top-level package and the shipped resources resolve from any
working directory, not only from the repository root."""

from __future__ import annotations

import subprocess
import sys

PACKAGES = ["diffusionlm", "cli", "config", "ddp", "logger", "benchmarking", "profiling", "databuilder"]


def test_packages_and_resources_import_outside_the_repo(tmp_path):
    code = "; ".join([
        *(f"import {name}" for name in PACKAGES),
        "from config.io import resource_path",
        "assert resource_path('train.toml').is_file(), resource_path('train.toml')",
        "from diffusionlm.tokenizer.io import load_tokenizer",
        "tok = load_tokenizer()",
        "assert tok.decode(tok.encode('Once upon a time')) == 'Once upon a time'",
    ])
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
