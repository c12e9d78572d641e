"""`make_data`: tokenize each split of a source once, into a `.dat` memmap and/or parquet shards.

The rows are read exactly as the trainer reads them (`open_source`, documents included), in
stored order, and encoded with the same `OrderedEncoder` the streaming loader uses, in
`num_workers` processes: the ids are those of training, `eot` after every document.

Output is all or nothing: everything is written into a sibling folder `.NAME.partial` and
renamed to `output_dir` only when every split is complete (with `overwrite`, the old folder is
swapped out at that moment). Ctrl-C or an error removes the partial folder; after a SIGKILL
it stays under its hidden name, which no config points at, and the next run deletes it before
starting over. There is no resume: a rerun rebuilds from the start, which is the clear
contract for a job of minutes to hours.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from config.io import write_config
from config.make_data import MakeDataConfig
from config.special_tokens import EOT_TOKEN
from databuilder.memmap_writer import MemmapWriter
from databuilder.parquet_writer import ParquetShardWriter, write_dataset_card
from diffusionlm.data.encoding import OrderedEncoder
from diffusionlm.data.sources import RowSource, open_source
from diffusionlm.errors import InputError
from diffusionlm.tokenizer.tokenizer import Tokenizer
from diffusionlm.utils.files import check_output_dir

CHUNK_ROWS = 256  # rows per worker task: large enough to amortise the inter-process hand-off


@dataclass
class SplitReport:
    split: str
    documents: int
    tokens: int
    seconds: float
    files: list[Path] = field(default_factory=list)


def partial_dir(output_dir: Path) -> Path:
    return output_dir.parent / f".{output_dir.name}.partial"


def _prepare_output(config: MakeDataConfig) -> Path:
    """Check the output location before any work; returns the fresh partial folder."""
    output_dir = config.output.output_dir
    check_output_dir(output_dir, "output.output_dir")
    if output_dir.exists() and not config.output.overwrite:
        raise InputError(f"output.output_dir: {output_dir} already exists; set output.overwrite = true to replace "
                         f"it, or choose another folder")
    partial = partial_dir(output_dir)
    if partial.exists():
        shutil.rmtree(partial)
        print(f"removed {partial}, the unfinished output of an interrupted run", file=sys.stderr)
    partial.mkdir(parents=True)
    return partial


def _publish(partial: Path, output_dir: Path) -> None:
    """Move the finished folder into place; an old one is replaced only now."""
    old = output_dir.parent / f".{output_dir.name}.old"
    if output_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(output_dir, old)
    os.rename(partial, output_dir)
    if old.exists():
        shutil.rmtree(old)


def _total_bytes(source: RowSource) -> int | None:
    """Bytes of the local files behind `source` (for the ETA), or None when unknown (Hub, builtin)."""
    files = [Path(name) for name in source.provenance["data_files"]]
    if not files or not all(path.is_file() for path in files):
        return None
    return sum(path.stat().st_size for path in files)


def _encoded_rows(source: RowSource, encoder: OrderedEncoder) -> Iterator[tuple[str, list[int]]]:
    """(text, ids + [eot]) for every row of `source` in stored order."""
    texts_in_flight: collections.deque[str] = collections.deque()

    def texts() -> Iterator[str]:
        for text in source.iter_texts(range(source.num_shards)):
            texts_in_flight.append(text)
            yield text

    for ids in encoder.encode_stream(texts()):  # results come back in submission order
        yield texts_in_flight.popleft(), ids


def _tokenizer_meta(tokenizer: Tokenizer) -> dict:
    """What the trainer checks before reading the ids back (the tokenizer that made them)."""
    return {"tokenizer_fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
            "eot_token_id": tokenizer.token_id(EOT_TOKEN)}


def _write_split(config: MakeDataConfig, tokenizer: Tokenizer, encoder: OrderedEncoder, split: str,
                 folder: Path) -> SplitReport:
    output = config.output
    source = open_source(config.data, split)
    meta = {**_tokenizer_meta(tokenizer), "source": source.provenance}
    memmap = MemmapWriter(folder / f"{split}.dat", tokenizer.vocab_size) if "memmap" in output.formats else None
    parquet = None
    if "parquet" in output.formats:
        (folder / "parquet").mkdir(exist_ok=True)
        parquet = ParquetShardWriter(folder / "parquet", split, output.rows_per_shard, output.include_text, meta)
    started = time.perf_counter()
    documents = tokens = 0
    progress = tqdm(total=_total_bytes(source), unit="B", unit_scale=True, desc=f"{source.label}",
                    disable=not output.progress, mininterval=1.0 if sys.stderr.isatty() else 10.0, file=sys.stderr)
    try:
        for text, ids in _encoded_rows(source, encoder):
            if memmap is not None:
                memmap.add(ids)
            if parquet is not None:
                parquet.add(ids, text)
            documents += 1
            tokens += len(ids)
            progress.update(len(text.encode("utf-8")) + 1)
            if documents % 1024 == 0:
                progress.set_postfix(tokens_per_s=f"{tokens / (time.perf_counter() - started):,.0f}", refresh=False)
        if documents == 0:
            raise InputError(f"dataset {source.label}: the split has no rows; nothing to tokenize")
        report = SplitReport(split, documents, tokens, time.perf_counter() - started)
        if memmap is not None:
            report.files += [memmap.path, memmap.finish(meta)]
        if parquet is not None:
            report.files += parquet.finish()
        return report
    finally:
        progress.close()
        if memmap is not None:
            memmap.close()  # a no-op after finish(); on failure the caller removes the whole folder


def make_data(config: MakeDataConfig, tokenizer: Tokenizer) -> list[SplitReport]:
    """Tokenize `data.train_split` and `data.val_split` into `output.output_dir`; returns one report per split."""
    splits = [config.data.train_split] + ([config.data.val_split] if config.data.val_split else [])
    tokenizer.token_id(EOT_TOKEN)  # a tokenizer without <|endoftext|> cannot separate rows: fail before any work
    partial = _prepare_output(config)
    encoder = OrderedEncoder(tokenizer.encode, tokenizer.token_id(EOT_TOKEN), config.data.num_workers,
                             chunk_rows=CHUNK_ROWS)
    try:
        reports = [_write_split(config, tokenizer, encoder, split, partial) for split in splits]
        if "parquet" in config.output.formats:
            meta = {**_tokenizer_meta(tokenizer),
                    "source": {"dataset_name": config.data.dataset_name, "data_files": config.data.data_files}}
            shards = {r.split: {"documents": r.documents, "tokens": r.tokens,
                                "shards": sum(1 for f in r.files if f.suffix == ".parquet")} for r in reports}
            write_dataset_card(partial / "parquet", shards, meta)
        write_config(config, partial / "make_data.toml")
        _publish(partial, config.output.output_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        encoder.close()
    output_dir = config.output.output_dir
    for report in reports:
        report.files = [output_dir / path.relative_to(partial) for path in report.files]
    return reports
