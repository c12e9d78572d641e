"""scripts/fetch_data.sh: copies and verifies the GPT-2 tokenizer files, refuses bad ones."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_data.sh"


def run_fetch(dest: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATA_DIR": str(dest)}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_copies_and_verifies_local_gpt2_files(shared_data, tmp_path):
    result = run_fetch(tmp_path / "data", "--from", str(shared_data))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "gpt2_vocab.json").read_bytes() == (shared_data / "gpt2_vocab.json").read_bytes()
    assert (tmp_path / "data" / "gpt2_merges.txt").read_bytes() == (shared_data / "gpt2_merges.txt").read_bytes()


def test_rejects_files_with_the_wrong_checksum(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "gpt2_vocab.json").write_text("{}")
    (src / "gpt2_merges.txt").write_text("a b\n")
    result = run_fetch(tmp_path / "data", "--from", str(src))
    assert result.returncode == 2
    assert "sha256" in result.stderr and "gpt2_vocab.json" in result.stderr
    assert not (tmp_path / "data" / "gpt2_vocab.json").exists()


def test_missing_source_file_is_named(tmp_path):
    result = run_fetch(tmp_path / "data", "--from", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "nowhere/gpt2_vocab.json: not found" in result.stderr
