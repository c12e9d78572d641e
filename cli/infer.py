"""Generate text with a trained masked-diffusion model (LLaDA-style sampler).

    uv run diffusionlm-infer                                    # the quick-start run (runs/quickstart)
    uv run diffusionlm-infer --prompt "Tom and his dog" --stream
    uv run diffusionlm-infer --set inference.kv_cache=dual --set inference.threshold=0.9
    uv run diffusionlm-infer --checkpoint runs/quickstart/export

Prints the prompt and its continuation, then one JSON line with the parameters (params.*),
the text (text.prompt, text.output) and the cost (metrics.latency_ms, metrics.tokens_per_s,
metrics.nfe, metrics.tokens_per_forward). --stream redraws the canvas after every denoising
step on a terminal, masks shown as "_".
"""

from __future__ import annotations

import argparse
import json
import sys

from cli.utils import run_cli
from config.infer import InferConfig

MASK_PLACEHOLDER = "_"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default=None, help="text to continue (overrides inference.prompt)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="run directory, checkpoint .pt or export/ directory (overrides inference.checkpoint)")
    parser.add_argument("--stream", action="store_true",
                        help="show the canvas filling in, step by step (only on a terminal)")


def _adjust_config(overrides: list[str], args: argparse.Namespace) -> None:
    """Fold --prompt/--checkpoint into the overrides, as TOML strings, so they are validated like the file."""
    if args.prompt is not None:
        overrides.append(f"inference.prompt={json.dumps(args.prompt, ensure_ascii=False)}")
    if args.checkpoint is not None:
        overrides.append(f"inference.checkpoint={json.dumps(args.checkpoint, ensure_ascii=False)}")


class CanvasStream:
    """Redraws the generated span in place after each step (ANSI save/restore cursor)."""

    def __init__(self, predictor, mask_id: int, prompt_length: int) -> None:
        self.predictor, self.mask_id, self.prompt_length = predictor, mask_id, prompt_length
        sys.stdout.write("\x1b[s")

    def __call__(self, info) -> None:
        text = self.predictor.canvas_text(info.canvas[0, self.prompt_length:], self.mask_id, MASK_PLACEHOLDER)
        sys.stdout.write(f"\x1b[u\x1b[J{text}")
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.write("\x1b[u\x1b[J")
        sys.stdout.flush()


def _run(config: InferConfig, args: argparse.Namespace) -> int:
    from diffusionlm.inference.predictor import Predictor, find_model_source
    from diffusionlm.utils.threads import apply_num_threads
    from profiling.trace import StepProfiler

    inference = config.inference
    num_threads = apply_num_threads(inference.num_threads)
    predictor = Predictor.load(inference.checkpoint, inference.device)
    encoded = predictor.encode_prompts([inference.prompt], inference)
    stream = None
    if args.stream and sys.stdout.isatty():
        sys.stdout.write(inference.prompt)
        stream = CanvasStream(predictor, predictor.mask_id(inference), len(encoded[0]))
    # [profiling] counts sampler steps; its files go to the run directory the weights came from.
    profiler = StepProfiler(config.profiling, find_model_source(inference.checkpoint).run_dir, predictor.device)
    events = profiler.at_step(0)

    def on_step(info) -> None:
        events.update(profiler.at_step(info.step))
        if stream is not None:
            stream(info)

    try:
        # Reporting a step reads a device value; only pay for it when someone listens.
        callback = on_step if stream is not None or profiler.active else None
        sample = predictor.sample_ids(encoded, inference, on_step=callback, prompts=[inference.prompt])
    finally:
        events.update(profiler.close())
        if stream is not None:
            stream.close()
    completion = sample.completions[0]
    print(("" if stream is not None else inference.prompt) + completion.text)
    record = {f"params.{key}": value for key, value in inference.model_dump(mode="json").items()}
    record |= {
        "params.weights": str(predictor.source),
        "params.gen_length": sample.result.gen_length,
        "params.num_threads": num_threads,
        "text.prompt": completion.prompt,
        "text.output": completion.text,
        "metrics.latency_ms": round(sample.latency_s * 1000, 3),
        "metrics.tokens_per_s": round(sample.tokens_per_s, 3),
        "metrics.nfe": sample.result.nfe,
        "metrics.tokens_per_forward": round(sample.result.tokens_per_forward, 4),
        **events,
    }
    print(json.dumps(record, ensure_ascii=False), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, InferConfig, prog="diffusionlm-infer", description=__doc__, default_config="infer.toml",
                   add_arguments=_add_arguments, adjust_config=_adjust_config, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
