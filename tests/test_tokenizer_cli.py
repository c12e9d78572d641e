"""The tokenizer command lines: a good run writes three files; every bad input is exit 2, one line, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli import bench_tokenizer, train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT = "The cat sat on the mat.\nThe dog didn't.\n<|endoftext|>\n" * 40


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _train_config(tmp_path: Path, corpus: Path, **extra) -> Path:
    values = {"input_path": str(corpus), "output_dir": str(tmp_path / "out"), "vocab_size": 300,
              "heldout_bytes": 200, "progress": False, **extra}
    path = tmp_path / "train_tokenizer.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()), encoding="utf-8")
    return path


def _assert_one_line_input_error(capsys, code: int, expected: str) -> None:
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert expected in err


def test_train_writes_three_files_and_reports(tmp_path, corpus, capsys):
    assert train_tokenizer.main(["--config", str(_train_config(tmp_path, corpus))]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["merges.txt", "special_tokens.json", "vocab.json"]
    assert "bytes/token" in out and "vocab size" in out
    specials = json.loads((tmp_path / "out" / "special_tokens.json").read_text(encoding="utf-8"))
    assert list(specials) == ["<|endoftext|>", "<|mask|>"]


def test_shipped_config_trains_on_the_builtin_corpus(tmp_path, capsys):
    code = train_tokenizer.main(["--set", f"output_dir={tmp_path / 'out'}", "--set", "builtin_num_stories=300",
                                 "--set", "vocab_size=400", "--set", "heldout_bytes=4096"])
    assert code == 0
    assert "bytes of the built-in corpus (builtin_num_stories = 300)" in capsys.readouterr().out
    assert (tmp_path / "out" / "vocab.json").is_file()


def test_builtin_corpus_error_names_the_setting_not_a_temp_file(tmp_path, capsys):
    code = train_tokenizer.main(["--set", f"output_dir={tmp_path / 'out'}", "--set", "builtin_num_stories=2",
                                 "--set", "heldout_bytes=1000000"])
    _assert_one_line_input_error(capsys, code, "the built-in corpus (builtin_num_stories = 2): holding out the last")
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file_is_exit_2(tmp_path, corpus, capsys):
    existing = tmp_path / "tok"
    existing.write_text("a file")
    code = train_tokenizer.main(["--config", str(_train_config(tmp_path, corpus, output_dir=str(existing)))])
    _assert_one_line_input_error(capsys, code, f"output_dir: {existing} is a file, not a folder")
    assert existing.read_text() == "a file"


def test_output_dir_under_a_file_is_exit_2(tmp_path, corpus, capsys):
    code = train_tokenizer.main(["--config", str(_train_config(tmp_path, corpus, output_dir=str(corpus / "tok")))])
    _assert_one_line_input_error(capsys, code, f"output_dir: {corpus / 'tok'} cannot be created: {corpus} is a file")


def test_output_dir_in_a_read_only_folder_is_exit_2(tmp_path, corpus, capsys, read_only_dir):
    code = train_tokenizer.main(["--config", str(_train_config(tmp_path, corpus, output_dir=str(read_only_dir / "tok")))])
    _assert_one_line_input_error(capsys, code, f"output_dir: cannot create {read_only_dir / 'tok'}: {read_only_dir} "
                                               f"is not writable")


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"vocab_size": 257}, "vocab_size 257 is too small"),
        ({"vocab_sise": 300}, "vocab_sise: unknown key"),
        ({"vocab_size": "big"}, "vocab_size: Input should be a valid integer"),
        ({"special_tokens": ["<|a|>", "<|a|>"]}, "special tokens must be distinct"),
    ],
)
def test_bad_config_value_is_exit_2_and_writes_nothing(tmp_path, corpus, capsys, extra, expected):
    code = train_tokenizer.main(["--config", str(_train_config(tmp_path, corpus, **extra))])
    _assert_one_line_input_error(capsys, code, expected)
    assert not (tmp_path / "out").exists()


def test_set_on_a_missing_key_is_exit_2(tmp_path, corpus, capsys):
    code = train_tokenizer.main(["--config", str(_train_config(tmp_path, corpus)), "--set", "merges=5"])
    _assert_one_line_input_error(capsys, code, "--set merges: no key 'merges'")


def test_missing_input_file_is_exit_2(tmp_path, corpus, capsys):
    code = train_tokenizer.main(["--config", str(_train_config(tmp_path, corpus)), "--set", f"input_path={tmp_path / 'no.txt'}"])
    _assert_one_line_input_error(capsys, code, "input_path: file not found: ")
    assert not (tmp_path / "out").exists()


def test_non_utf8_input_is_exit_2_naming_the_file(tmp_path, corpus, capsys):
    corpus.write_bytes(TEXT.encode() + "caf\xe9\n".encode("latin-1") + b"x" * 300)
    code = train_tokenizer.main(["--config", str(_train_config(tmp_path, corpus))])
    _assert_one_line_input_error(capsys, code, f"{corpus}: not valid UTF-8")
    assert not (tmp_path / "out").exists()


def test_real_process_exits_2_without_traceback(tmp_path, corpus):
    done = subprocess.run(
        [sys.executable, "-m", "cli.train_tokenizer", "--config", str(_train_config(tmp_path, corpus, vocab_size=10))],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["diffusionlm-train-tokenizer: error: vocab_size 10 is too small: "
                                                "it must be at least 256 bytes + 2 special tokens = 258"]


@pytest.fixture()
def bench_config(tmp_path, corpus) -> Path:
    """A bench config whose inputs exist, with GPT-2-style files written by our own trainer."""
    pytest.importorskip("tiktoken")
    pytest.importorskip("tokenizers")
    assert train_tokenizer.main(["--config", str(_train_config(tmp_path, corpus))]) == 0
    keys = ["train_corpus_path", "small_corpus_path", "encode_path", "stream_source_path"]
    lines = [f'{key} = "{corpus}"' for key in keys]
    lines += [f'gpt2_vocab_path = "{tmp_path / "out" / "vocab.json"}"', f'gpt2_merges_path = "{tmp_path / "out" / "merges.txt"}"']
    path = tmp_path / "bench.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("vocab.json", '{"a": 0', "vocab.json: line 1: invalid JSON"),
        ("merges.txt", "h e x\n", "merges.txt: line 1: expected two tokens"),
    ],
)
def test_bench_with_malformed_tokenizer_file_is_exit_2(tmp_path, bench_config, capsys, name, content, expected):
    capsys.readouterr()
    (tmp_path / "out" / name).write_text(content, encoding="utf-8")
    _assert_one_line_input_error(capsys, bench_tokenizer.main(["--config", str(bench_config)]), expected)


def test_bench_with_missing_data_file_is_exit_2(tmp_path, bench_config, capsys):
    capsys.readouterr()
    code = bench_tokenizer.main(["--config", str(bench_config), "--set", f"encode_path={tmp_path / 'gone.txt'}"])
    _assert_one_line_input_error(capsys, code, "encode_path: file not found: ")
