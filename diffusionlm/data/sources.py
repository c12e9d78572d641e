"""Row sources: turn `[data]` into a streaming `datasets.IterableDataset` of text rows.

Three kinds of `dataset_name`, all opened with streaming so nothing is downloaded or
materialised up front:
- "builtin": the procedural story corpus (`diffusionlm.data.corpus`) wrapped with
  `IterableDataset.from_generator`, so it flows through exactly the same code as any dataset;
  "builtin_reverse" the same for the digit-reversal SFT task (`diffusionlm.data.tasks`);
- a packaged loader ("json", "text", "parquet", "csv", "arrow") with `data_files`, or a local
  directory of such files. The "text" loader yields one row per line; `[data].document_separator`
  regroups a text file's lines into documents (`diffusionlm.data.documents`). Files on the Hub
  are named `hf://datasets/OWNER/NAME/PATH`;
- a Hugging Face Hub name (+ `dataset_config`). The Hub is probed first with a short timeout so
  a machine without network fails in seconds with one clear line instead of hanging in retries.

A row is one text (`[data].format = "text"`) or a (prompt, response) pair (`"sft"`).
Every failure the user can fix becomes an `InputError` naming the dataset, split and field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow

from config.schemas import DOCUMENT_PER_LINE, DataConfig
from diffusionlm.data import corpus, tasks
from diffusionlm.data.documents import group_lines
from diffusionlm.errors import InputError

BUILTIN = "builtin"
BUILTIN_REVERSE = "builtin_reverse"
PACKAGED_LOADERS = ("json", "text", "parquet", "csv", "arrow")


# Bound once at import: a stream left suspended is finalised at interpreter exit, when the
# `datasets` module's attributes may already be torn down.
_ROW_READ_ERRORS = (pyarrow.ArrowException, datasets.exceptions.DatasetGenerationError)


@dataclass(frozen=True)
class BuiltinSplit:
    """One split of the built-in corpus: shard i holds `stories_per_shard` stories from seed
    `first_seed + i`. Train and validation seeds never overlap, so neither do their streams."""

    first_seed: int
    num_shards: int
    stories_per_shard: int

    @property
    def num_stories(self) -> int:
        return self.num_shards * self.stories_per_shard


# train: 65,536 stories (~36 MB of text, roughly 8M tokens with a small story tokenizer), in
# 64 shards so the shard order reshuffles every epoch; that is more than 3,000 steps of 8 x 256
# tokens before the first repeat. validation: 512 stories in one shard.
BUILTIN_SPLITS = {
    "train": BuiltinSplit(first_seed=0, num_shards=64, stories_per_shard=1024),
    "validation": BuiltinSplit(first_seed=1_000_000, num_shards=1, stories_per_shard=512),
}


def _builtin_rows(seeds: list[int], stories_per_shard: int) -> Iterator[dict[str, str]]:
    """Generator behind the builtin dataset; `datasets` shards it over the `seeds` list."""
    for seed in seeds:
        for story in corpus.iter_stories(seed, stories_per_shard):
            yield {"text": story}


def _reverse_rows(seeds: list[int], examples_per_shard: int, held_out: bool) -> Iterator[dict[str, str]]:
    """Generator behind the builtin_reverse dataset (validation rows are the held-out strings)."""
    for seed in seeds:
        yield from tasks.iter_reverse_examples(seed, examples_per_shard, held_out=held_out)


@dataclass(frozen=True)
class RowSource:
    """An opened split: the streaming dataset plus what identifies it in logs and errors."""

    dataset: datasets.IterableDataset
    label: str  # "json[train]" or "roneneldan/TinyStories[validation]": used in every message
    fields: dict[str, str]  # config key -> column: {"text_field": ...} or {"prompt_field": ..., "response_field": ...}
    provenance: dict
    document_separator: str = DOCUMENT_PER_LINE  # how a text file's lines become documents (documents.py)

    @property
    def num_shards(self) -> int:
        return self.dataset.num_shards

    def iter_texts(self, shard_order: Sequence[int]) -> Iterator[str | tuple[str, ...]]:
        """Every row, shard by shard in `shard_order`, checked for type: its text, or for SFT
        its (prompt, response) pair."""
        for shard in shard_order:
            rows = self.dataset if self.num_shards == 1 else self.dataset.shard(self.num_shards, shard)
            if len(self.fields) == 1:
                yield from group_lines((self._text(row, *self.fields.items()) for row in self._read(rows)),
                                       self.document_separator)
            else:
                for row in self._read(rows):
                    yield tuple(self._text(row, field) for field in self.fields.items())

    def _read(self, rows: datasets.IterableDataset) -> Iterator[dict]:
        """Iterate `rows`, turning the loaders' decoding errors into one-line `InputError`s."""
        try:
            yield from rows
        except UnicodeDecodeError as err:
            raise InputError(f"dataset {self.label}: data is not valid UTF-8 ({err.reason} at byte {err.start})") from None
        except _ROW_READ_ERRORS as err:
            raise InputError(f"dataset {self.label}: cannot read rows: {_first_line(err)}") from None

    def iter_token_rows(self, shard_order: Sequence[int], token_field: str) -> Iterator[list[int]]:
        """The token ids of every pre-tokenized row (column `token_field`), shard by shard."""
        for shard in shard_order:
            rows = self.dataset if self.num_shards == 1 else self.dataset.shard(self.num_shards, shard)
            for row in self._read(rows):
                ids = self._field(row, token_field, "token_field", list, "a list of token ids")
                if ids and not isinstance(ids[0], int):
                    raise InputError(f"dataset {self.label}: field {token_field!r} holds {type(ids[0]).__name__}s, "
                                     "expected token ids")
                yield ids

    def _text(self, row: dict, field: tuple[str, str]) -> str:
        """row[column] for field = (config key, column), checked to be a string."""
        key, column = field
        return self._field(row, column, key, str, "a string")

    def _field(self, row: dict, name: str, setting: str, kind: type, expected: str):
        try:
            value = row[name]
        except KeyError:
            raise InputError(
                f"dataset {self.label}: row has no field {name!r} (fields: {sorted(row)}); set [data].{setting}"
            ) from None
        if not isinstance(value, kind):
            # The json loader fills a field that some rows lack with None.
            held = "null (missing in this row)" if value is None else type(value).__name__
            raise InputError(f"dataset {self.label}: field {name!r} holds {held}, expected {expected}")
        return value


def open_source(config: DataConfig, split: str) -> RowSource:
    """Open `split` of the dataset `config` describes, streaming."""
    name = config.dataset_name
    label = f"{name}[{split}]"
    fields = ({"prompt_field": config.prompt_field, "response_field": config.response_field}
              if config.format == "sft" else {"text_field": config.text_field})
    if name in (BUILTIN, BUILTIN_REVERSE):
        dataset, files, fingerprint = _open_builtin(name, split, label)
    else:
        dataset, files, fingerprint = _open_datasets(config, split, label)
    provenance = {
        "dataset_name": name,
        "dataset_config": config.dataset_config,
        "split": split,
        "data_files": files,
        "fingerprint": fingerprint,
        "num_shards": dataset.num_shards,
        "format": config.format,
        **fields,
        "document_separator": config.document_separator,
    }
    return RowSource(dataset, label, fields, provenance, config.document_separator)


def _open_builtin(name: str, split: str, label: str) -> tuple[datasets.IterableDataset, list[str], str]:
    if split not in BUILTIN_SPLITS:
        raise InputError(f"dataset {label}: the {name} dataset has splits {sorted(BUILTIN_SPLITS)}, not {split!r}")
    layout = BUILTIN_SPLITS[split]
    seeds = list(range(layout.first_seed, layout.first_seed + layout.num_shards))
    string = datasets.Value("string")
    if name == BUILTIN:
        generator, module, columns = _builtin_rows, corpus, ("text",)
        gen_kwargs = {"seeds": seeds, "stories_per_shard": layout.stories_per_shard}
    else:
        generator, module, columns = _reverse_rows, tasks, ("prompt", "response")
        gen_kwargs = {"seeds": seeds, "examples_per_shard": layout.stories_per_shard, "held_out": split != "train"}
    dataset = datasets.IterableDataset.from_generator(
        generator, features=datasets.Features({column: string for column in columns}), gen_kwargs=gen_kwargs)
    # The rows are a function of the generator's code and the split layout: hash both.
    digest = hashlib.sha256(Path(module.__file__).read_bytes())
    digest.update(repr(layout).encode())
    return dataset, [], digest.hexdigest()[:16]


def _open_datasets(config: DataConfig, split: str, label: str) -> tuple[datasets.IterableDataset, list[str], str]:
    name = config.dataset_name
    is_local = name in PACKAGED_LOADERS or Path(name).is_dir()
    if name in PACKAGED_LOADERS and config.data_files is None:
        raise InputError(f'[data].data_files: dataset_name = "{name}" needs data_files (a path, glob or list)')
    for repo in ([] if is_local else [name]) + _hub_repos(config.data_files):
        _check_hub_reachable(repo, config.hub_timeout_s)
    # Grouping lines into documents needs their line breaks, to keep the newlines inside a document.
    options = {"keep_linebreaks": True} if config.document_separator != DOCUMENT_PER_LINE else {}
    try:
        builder = datasets.load_dataset_builder(name, config.dataset_config, data_files=config.data_files, **options)
        dataset = builder.as_streaming_dataset(split=split)
    except StopIteration:  # the json loader inferring features from no file, or from empty ones
        raise InputError(f"dataset {label}: data.data_files = {json.dumps(config.data_files)} gives this split "
                         f"no rows (no file matches, or the files are empty)") from None
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        raise InputError(f"dataset {label}: {_first_line(err)}") from None
    except ValueError as err:  # unknown split or config name
        raise InputError(f"dataset {label}: {_first_line(err)}") from None
    except ConnectionError as err:
        raise InputError(f"dataset {label}: {_first_line(err)}; {_OFFLINE_HINT}") from None
    files = [str(f) for f in (builder.config.data_files or {}).get(split, [])]
    return dataset, files, _fingerprint(name, config.dataset_config, split, files)


_OFFLINE_HINT = (
    "set HF_DATASETS_OFFLINE=1 to use a cached copy, or use local files "
    '(dataset_name = "json" / "text" / "parquet" with data_files)'
)


def _check_hub_reachable(name: str, timeout_s: float) -> None:
    """Fail fast, with one line, when the Hub cannot be reached or does not know `name`.

    Skipped in offline mode (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), where `datasets` reads its cache.
    """
    if datasets.config.HF_HUB_OFFLINE:
        return
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        huggingface_hub.HfApi().dataset_info(name, timeout=timeout_s)
    except GatedRepoError:
        raise InputError(f"dataset_name {name!r}: gated on the Hub; accept its terms and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise InputError(f"dataset_name {name!r}: not found on the Hugging Face Hub (or private: log in)") from None
    except Exception as err:  # any transport failure (DNS, refused, timeout, proxy) means: no Hub
        raise InputError(
            f"dataset_name {name!r}: cannot reach the Hugging Face Hub ({type(err).__name__}: {_first_line(err)}); "
            f"{_OFFLINE_HINT}"
        ) from None


def _hub_repos(data_files: str | list | dict | None) -> list[str]:
    """The Hub datasets that `data_files` names with `hf://datasets/OWNER/NAME/...` paths."""
    if isinstance(data_files, dict):
        files = [file for value in data_files.values() for file in ([value] if isinstance(value, str) else value)]
    else:
        files = [data_files] if isinstance(data_files, str) else list(data_files or [])
    repos = {match.group(1) for file in files if (match := _HF_DATASET_PATH.match(file))}
    return sorted(repos)


_HF_DATASET_PATH = re.compile(r"hf://datasets/([^/@]+/[^/@]+)")


def _fingerprint(name: str, dataset_config: str | None, split: str, files: list[str]) -> str:
    """Hash of what identifies the data: names, plus size and mtime of every local file.

    Hub files are URLs that carry the resolved revision, so their names alone pin the data.
    """
    entries = []
    for file in files:
        if os.path.exists(file):
            stat = os.stat(file)
            entries.append([file, stat.st_size, stat.st_mtime_ns])
        else:
            entries.append([file])
    blob = json.dumps([name, dataset_config, split, entries])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
