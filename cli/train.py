"""Train a masked-diffusion language model (or, with `[model].causal = true`, the autoregressive baseline).

    uv run diffusionlm-train                                   # quick start on the built-in corpus
    uv run diffusionlm-train --config config/resources/train_tinystories.toml
    uv run diffusionlm-train --resume latest                   # continue the run named in the config
    uv run diffusionlm-train --resume runs/quickstart/checkpoints/step_00000200.pt
    uv run diffusionlm-train --dry-run                         # validate, count parameters, exit
    uv run diffusionlm-train --config config/resources/train_sft.toml --init-from runs/quickstart   # fine-tune

Metrics are printed as JSON lines on stdout; checkpoints, the resolved config, the tokenizer
files and the exported weights go to <runs_path>/<run_name>/.
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.utils import run_cli
from config.train import TrainConfig


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """--resume, --init-from and --dry-run (shared with diffusionlm-train-ddp)."""
    parser.add_argument("--resume", metavar="PATH|latest", default=None,
                        help="continue from a checkpoint file, a run directory's newest checkpoint, or "
                             "'latest' (the newest checkpoint of runs_path/run_name)")
    parser.add_argument("--init-from", metavar="PATH", default=None,
                        help="fine-tune: start from the weights of a run directory, checkpoint .pt or export/ "
                             "(overrides training.init_from; the model shape must match)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and tokenizer, build the model on the meta device, "
                             "print its parameter count and exit")


def adjust_train_config(overrides: list[str], args: argparse.Namespace) -> None:
    """Fold --init-from into the overrides, as a TOML string, so it is validated and recorded like the file."""
    if args.init_from is not None:
        overrides.append(f"training.init_from={json.dumps(args.init_from, ensure_ascii=False)}")


def dry_run(config: TrainConfig) -> int:
    from diffusionlm.training.trainer import count_parameters, load_configured_tokenizer
    from diffusionlm.utils.device import resolve_device

    load_configured_tokenizer(config)
    device = resolve_device(config.training.device)
    total, non_embedding = count_parameters(config)
    print(f"config OK; device {device}; model parameters: {total:,} ({non_embedding:,} non-embedding)")
    return 0


def report_result(result) -> None:
    print(f"run directory: {result.run_dir}\nfinal checkpoint: {result.final_checkpoint}"
          + (f"\nexported weights: {result.export_dir}" if result.export_dir else ""), file=sys.stderr)


def _run(config: TrainConfig, args: argparse.Namespace) -> int:
    from diffusionlm.training.trainer import train

    if args.dry_run:
        return dry_run(config)
    report_result(train(config, resume=args.resume))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, TrainConfig, prog="diffusionlm-train", description=__doc__,
                   default_config="train.toml", add_arguments=add_train_arguments,
                   adjust_config=adjust_train_config, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
