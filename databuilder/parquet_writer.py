"""Writer of parquet shards of token ids (optionally with the text), plus their dataset card.

Each row is one document: `input_ids` (int32, ending with `eot`, exactly the ids the streaming
loader would produce for it) and, with `include_text`, `text`. Shard names follow the Hugging
Face convention `SPLIT-00000-of-00003.parquet`, so `datasets.load_dataset("parquet",
data_dir=...)` and `load_dataset(<folder>)` find the splits; the total is only known at the end,
so shards are renamed once the split is complete. Every shard carries the tokenizer's
fingerprint in its schema metadata, which the trainer checks before reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from diffusionlm.data.batches import PARQUET_METADATA_KEY

TOKEN_COLUMN = "input_ids"


class ParquetShardWriter:
    """Collects rows of one split and writes a shard every `rows_per_shard` rows."""

    def __init__(self, folder: Path, split: str, rows_per_shard: int, include_text: bool, meta: dict) -> None:
        self.folder, self.split = folder, split
        self.rows_per_shard, self.include_text = rows_per_shard, include_text
        self.metadata = {PARQUET_METADATA_KEY: json.dumps(meta).encode()}
        self.num_documents = self.num_tokens = 0
        self._ids: list[list[int]] = []
        self._texts: list[str] = []
        self._shards: list[Path] = []

    def add(self, ids: list[int], text: str) -> None:
        self._ids.append(ids)
        if self.include_text:
            self._texts.append(text)
        self.num_documents += 1
        self.num_tokens += len(ids)
        if len(self._ids) >= self.rows_per_shard:
            self._write_shard()

    def _write_shard(self) -> None:
        columns = {TOKEN_COLUMN: pa.array(self._ids, type=pa.list_(pa.int32()))}
        if self.include_text:
            columns["text"] = pa.array(self._texts, type=pa.string())
        table = pa.table(columns).replace_schema_metadata(self.metadata)
        path = self.folder / f".{self.split}-{len(self._shards):05d}.parquet"
        pq.write_table(table, path)
        self._shards.append(path)
        self._ids, self._texts = [], []

    def finish(self) -> list[Path]:
        """Write the last shard and give every shard its final `-of-N` name."""
        if self._ids:
            self._write_shard()
        final = []
        for index, path in enumerate(self._shards):
            final.append(path.with_name(f"{self.split}-{index:05d}-of-{len(self._shards):05d}.parquet"))
            path.rename(final[-1])
        return final


def write_dataset_card(folder: Path, splits: dict[str, dict], meta: dict) -> Path:
    """README.md with the YAML header `datasets` reads (splits -> files) and what the ids mean."""
    yaml = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        yaml += [f"  - split: {split}", f'    path: "{split}-*.parquet"']
    yaml.append("---")
    rows = "\n".join(f"| {split} | {info['documents']:,} | {info['tokens']:,} | {info['shards']} |"
                     for split, info in splits.items())
    text = "\n".join(yaml) + f"""

# Token ids made by diffusionlm-make-data

Source: `{json.dumps(meta['source'])}`

Each row is one document: `{TOKEN_COLUMN}` holds its token ids followed by `<|endoftext|>`
(id {meta['eot_token_id']}), the same ids diffusionlm's streaming loader produces, so the rows
concatenated in order give the `.dat` memmap of the same run. Tokenizer fingerprint
`{meta['tokenizer_fingerprint']}` ({meta['vocab_size']} tokens).

| split | documents | tokens | shards |
|---|---:|---:|---:|
{rows}

Load: `datasets.load_dataset("parquet", data_dir="<this folder>")`. Train on it with
`[data] dataset_name = "parquet"`, `data_files = {{ train = "<this folder>/train-*.parquet", ... }}`,
`token_field = "{TOKEN_COLUMN}"`.
"""
    path = folder / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
