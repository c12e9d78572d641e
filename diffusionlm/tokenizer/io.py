"""Tokenizer files: `vocab.json` + `merges.txt` in GPT-2's format, and `special_tokens.json`.

GPT-2 stores token bytes as printable Unicode: each byte maps to one visible character (the
printable Latin-1 bytes to themselves, the rest, like the space, to U+0100 onwards: " the"
is "Ġthe"), so both files are plain text with space-separated merges. We read and write
exactly that format, so GPT-2's own files load as-is and ours open in other tools.
`special_tokens.json` (`{token: id}`) records which ids our trainer gave its special tokens.

Every problem with a file is an `InputError` naming the file (and line, where there is one).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from config.special_tokens import DEFAULT_SPECIAL_TOKENS
from diffusionlm.errors import InputError
from diffusionlm.tokenizer.tokenizer import Tokenizer
from diffusionlm.utils.atomic import atomic_write_text
from diffusionlm.utils.files import read_user_text

VOCAB_FILE, MERGES_FILE, SPECIAL_TOKENS_FILE = "vocab.json", "merges.txt", "special_tokens.json"
MERGES_HEADER = "#version: 0.2"
REGENERATE_BUILTIN = "uv run diffusionlm-train-tokenizer --set output_dir=diffusionlm/data/tokenizer"


def gpt2_byte_alphabet() -> list[str]:
    """The printable character GPT-2 uses for each byte value 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet: dict[int, str] = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in alphabet:
            alphabet[byte] = chr(256 + shifted)
            shifted += 1
    return [alphabet[byte] for byte in range(256)]


_ALPHABET = gpt2_byte_alphabet()
# bytes -> printable: read the bytes as Latin-1, then swap each character for its printable one.
_TO_PRINTABLE = {byte: char for byte, char in enumerate(_ALPHABET)}
# printable -> bytes: the reverse, with every other code point below 256 sent above 255 so the
# final Latin-1 encode rejects it (a raw space is not valid in these files).
_FROM_PRINTABLE = {code: "\uffff" for code in range(256)} | {ord(char): chr(byte) for byte, char in enumerate(_ALPHABET)}


def token_to_printable(token: bytes) -> str:
    return token.decode("latin-1").translate(_TO_PRINTABLE)


def printable_to_token(text: str) -> bytes:
    """Bytes of a token written in GPT-2's printable form; ValueError for a foreign character."""
    return text.translate(_FROM_PRINTABLE).encode("latin-1")


def _read_json_object(path: Path, what: str) -> dict:
    try:
        data = json.loads(read_user_text(path, what))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object {{token: id}}, got {type(data).__name__}")
    return data


def _check_id(path: Path, token: str, token_id: object) -> int:
    if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
        raise InputError(f"{path}: token {token!r} has id {token_id!r}; ids must be non-negative integers")
    return token_id


def read_vocab(path: str | os.PathLike) -> dict[int, bytes]:
    """`vocab.json` ({printable token: id}) -> {id: bytes}; ids must be 0..n-1 without gaps."""
    path = Path(path)
    vocab: dict[int, bytes] = {}
    for token, token_id in _read_json_object(path, "vocab").items():
        token_id = _check_id(path, token, token_id)
        if token_id in vocab:
            raise InputError(f"{path}: id {token_id} is used twice (second time by {token!r})")
        try:
            vocab[token_id] = printable_to_token(token)
        except UnicodeEncodeError:
            raise InputError(f"{path}: token {token!r} is not in GPT-2's printable byte encoding") from None
    if len(vocab) and max(vocab) != len(vocab) - 1:
        missing = min(set(range(len(vocab))) - set(vocab))
        raise InputError(f"{path}: ids must be 0..{len(vocab) - 1} with no gaps, but id {missing} is missing")
    return vocab


def read_merges(path: str | os.PathLike, vocab: dict[int, bytes]) -> list[tuple[bytes, bytes]]:
    """`merges.txt` (one `A B` pair per line, an optional `#version` first line) -> pairs of bytes.

    Both tokens and their concatenation must be in `vocab`.
    """
    path = Path(path)
    known = set(vocab.values())
    merges: list[tuple[bytes, bytes]] = []
    for line_number, line in enumerate(read_user_text(path, "merges").splitlines(), start=1):
        if not line or (line_number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise InputError(f"{path}: line {line_number}: expected two tokens separated by one space, got {line!r}")
        try:
            first, second = (printable_to_token(part) for part in parts)
        except UnicodeEncodeError:
            raise InputError(f"{path}: line {line_number}: {line!r} is not in GPT-2's printable byte encoding") from None
        for token in (first, second, first + second):
            if token not in known:
                raise InputError(f"{path}: line {line_number}: token {token_to_printable(token)!r} is not in the vocabulary")
        merges.append((first, second))
    return merges


def read_special_tokens(path: str | os.PathLike, vocab: dict[int, bytes]) -> dict[str, int]:
    """`special_tokens.json` ({token: id}); adds tokens missing from `vocab` at their ids.

    An id must either hold the same token in `vocab` or extend it without leaving a gap; two
    tokens may not share an id.
    """
    path = Path(path)
    specials: dict[str, int] = {}
    owners: dict[int, str] = {}
    for token, token_id in _read_json_object(path, "special tokens").items():
        token_id = _check_id(path, token, token_id)
        if token_id in owners:
            raise InputError(f"{path}: {token!r} and {owners[token_id]!r} both have id {token_id}")
        owners[token_id] = token
        specials[token] = token_id
        token_bytes = token.encode("utf-8")
        if token_id in vocab and vocab[token_id] != token_bytes:
            raise InputError(
                f"{path}: {token!r} has id {token_id}, which the vocabulary uses for {token_to_printable(vocab[token_id])!r}"
            )
    for token_id in sorted(owners):
        if token_id not in vocab:
            if token_id != len(vocab):
                raise InputError(
                    f"{path}: {owners[token_id]!r} has id {token_id}, leaving a gap after the vocabulary's last id {len(vocab) - 1}"
                )
            vocab[token_id] = owners[token_id].encode("utf-8")
    return specials


def save_tokenizer(
    output_dir: str | os.PathLike,
    vocab: dict[int, bytes],
    merges: list[tuple[bytes, bytes]],
    special_tokens: dict[str, int],
) -> list[Path]:
    """Write vocab.json, merges.txt and special_tokens.json into `output_dir`, each atomically.

    All three texts are built before the first write, so a bad tokenizer writes nothing.
    """
    printable = {token_to_printable(vocab[token_id]): token_id for token_id in sorted(vocab)}
    if len(printable) != len(vocab):
        raise ValueError("vocabulary holds the same bytes under two ids; vocab.json cannot represent that")
    texts = {
        VOCAB_FILE: json.dumps(printable),
        MERGES_FILE: "".join(
            [MERGES_HEADER + "\n"] + [f"{token_to_printable(a)} {token_to_printable(b)}\n" for a, b in merges]
        ),
        SPECIAL_TOKENS_FILE: json.dumps(special_tokens, ensure_ascii=False, indent=2) + "\n",
    }
    paths = []
    for name, text in texts.items():
        paths.append(Path(output_dir) / name)
        atomic_write_text(paths[-1], text)
    return paths


def builtin_tokenizer_dir() -> Path:
    """Where the package ships the tokenizer trained on the built-in corpus."""
    return Path(str(resources.files("diffusionlm") / "data" / "tokenizer"))


def load_tokenizer(
    vocab_path: str | os.PathLike | None = None,
    merges_path: str | os.PathLike | None = None,
    special_tokens_path: str | os.PathLike | None = None,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
) -> Tokenizer:
    """Build a Tokenizer from files; with no paths at all, the package's built-in tokenizer.

    Special tokens come from `special_tokens_path` when given (ids as written by the trainer),
    otherwise from `special_tokens`: those already in the vocabulary keep their id, the others
    are appended.
    """
    if vocab_path is None and merges_path is None and special_tokens_path is None:
        folder = builtin_tokenizer_dir()
        if not (folder / VOCAB_FILE).is_file():
            raise InputError(f"{folder}: the built-in tokenizer is missing; regenerate it with `{REGENERATE_BUILTIN}`")
        vocab_path, merges_path, special_tokens_path = folder / VOCAB_FILE, folder / MERGES_FILE, folder / SPECIAL_TOKENS_FILE
    if vocab_path is None or merges_path is None:
        raise InputError("tokenizer: vocab_path and merges_path must be given together")
    vocab = read_vocab(vocab_path)
    merges = read_merges(merges_path, vocab)
    if special_tokens_path is not None:
        special_tokens = list(read_special_tokens(special_tokens_path, vocab))
    return Tokenizer(vocab, merges, special_tokens)
