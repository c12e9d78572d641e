"""Tokenize a text source once, for training many times: a `.dat` memmap and/or parquet shards.

    uv run diffusionlm-make-data                                     # the built-in corpus
    uv run diffusionlm-make-data --set data.dataset_name=text \\
        --set 'data.data_files={train="../shared/data/tinystories_train.txt"}' --set data.val_split=null ...

The same tokenizer and row separators as training (`[data]` is the trainer's own section), in
`data.num_workers` processes; a progress bar shows tokens/s and the ETA. The output folder
appears only when complete; an interrupted run leaves nothing there, and a rerun starts over.
"""

from __future__ import annotations

import argparse

from cli.utils import run_cli
from config.make_data import MakeDataConfig


def _run(config: MakeDataConfig, args: argparse.Namespace) -> None:
    from databuilder.build import make_data
    from diffusionlm.tokenizer.io import load_tokenizer

    tok = config.data.tokenizer
    tokenizer = load_tokenizer(tok.vocab_path, tok.merges_path, tok.special_tokens_path, tok.special_tokens)
    for report in make_data(config, tokenizer):
        print(f"{report.split}: {report.documents:,} documents, {report.tokens:,} tokens in {report.seconds:.1f} s "
              f"({report.tokens / max(report.seconds, 1e-9):,.0f} tokens/s)")
        for path in report.files:
            print(f"  {path}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, MakeDataConfig, prog="diffusionlm-make-data", description=__doc__,
                   default_config="make_data.toml", argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
