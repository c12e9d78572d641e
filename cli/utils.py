"""The one command-line contract every entry point follows.

    --config PATH        TOML config (default: the entry point's config/resources/*.toml)
    --set a.b=value      repeatable override, validated like the file
    --print-config       print the resolved config as TOML and exit 0
    --debug              show full tracebacks

Exit codes: 0 success, 2 bad input (config, data, prompt, checkpoint, tokenizer files),
1 runtime failure, 130 interrupted. Errors are one line on stderr; tracebacks only with
--debug.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from config.io import dump_config, load_config, resource_path
from diffusionlm.errors import InputError
from profiling import nvtx

ConfigT = TypeVar("ConfigT", bound=BaseModel)

EXIT_OK, EXIT_RUNTIME, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser(prog: str, description: str | None, default_config: str | None) -> argparse.ArgumentParser:
    """The shared arguments; entry points add their own on the returned parser."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_path = str(resource_path(default_config)) if default_config else None
    parser.add_argument("--config", type=Path, default=default_path, required=default_path is None,
                        help=f"TOML config file (default: {default_path})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optimizer.max_learning_rate=3e-4 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    parser.add_argument("--debug", action="store_true", help="show full Python tracebacks on errors")
    return parser


def report_error(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def run_cli(
    run: Callable[[ConfigT, argparse.Namespace], int | None],
    schema: type[ConfigT],
    *,
    prog: str,
    description: str | None = None,
    default_config: str | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    adjust_config: Callable[[dict, argparse.Namespace], None] | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse arguments, load and validate the config, call `run(config, args)`, map errors to exit codes.

    `adjust_config` may fold entry-point flags (like `--prompt`) into the raw overrides before
    validation, so they are checked exactly like the file.
    """
    parser = build_parser(prog, description, default_config)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if adjust_config is not None:
            adjust_config(args.overrides, args)
        config = load_config(schema, args.config, args.overrides)
        nvtx.configure_from_env(os.environ)  # the one place the NVTX switches are read (profiling/nvtx.py)
        if args.print_config:
            sys.stdout.write(dump_config(config))
            return EXIT_OK
        code = run(config, args)
        return EXIT_OK if code is None else int(code)
    except InputError as err:
        if args.debug:
            traceback.print_exc()
        report_error(prog, str(err))
        return EXIT_INPUT
    except KeyboardInterrupt:
        report_error(prog, "interrupted")
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the CLI boundary turns any failure into one line
        if args.debug:
            traceback.print_exc()
        report_error(prog, f"{type(err).__name__}: {err} (rerun with --debug for the traceback)")
        return EXIT_RUNTIME


def print_result_records(results: Sequence[object], shared: dict) -> None:
    """One JSON line per benchmark result (a dataclass): the run's shared parameters as
    `params.*`, the result's fields as `metrics.*`."""
    for result in results:
        record = {f"params.{k}": v for k, v in shared.items()}
        record |= {f"metrics.{k}": v for k, v in dataclasses.asdict(result).items()}
        print(json.dumps(record), flush=True)
