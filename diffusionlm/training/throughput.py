"""Model FLOPs and MFU: the one formula behind the training log's `metrics.mfu` and
`diffusionlm-bench-train`'s MFU column.

    MFU = tokens/s * flops_per_token / peak FLOP/s,
    flops_per_token = 6 * N_non_embedding + 12 * num_layers * d_model * context_length

(`models.transformer.flops_per_token`: forward + backward matmuls plus bidirectional
attention scores). The peak is the accelerator's dense bf16 rate, from `logging.peak_tflops`
or, for the GPUs below, looked up by name; on CPU there is no meaningful peak, so only the
achieved TFLOP/s is logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from config.schemas import ModelConfig
from diffusionlm.models.transformer import TransformerLM, flops_per_token

MFU_FORMULA = "MFU = tokens/s * (6 * N_non_embedding + 12 * num_layers * d_model * T) / peak FLOP/s"
# Dense bf16 tensor-core TFLOP/s by device-name fragment (SXM parts; PCIe H100 is ~756).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def model_flops_per_token(config: ModelConfig) -> int:
    """Training FLOPs per token of a model with `config` at its full context length."""
    with torch.device("meta"):
        num_params = TransformerLM(config).num_parameters(exclude_embedding=True)
    return flops_per_token(config, num_params, config.context_length)


def peak_flops(device: torch.device, peak_tflops: float | None = None) -> float | None:
    """FLOP/s of one `device`: the configured value, else the table's for a known GPU, else None."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for fragment, tflops in PEAK_BF16_TFLOPS.items() if fragment in name), None)


def mfu(tokens_per_s: float, flops_per_token: int, peak: float) -> float:
    return tokens_per_s * flops_per_token / peak


@dataclass(frozen=True)
class FlopCounter:
    """Turns a tokens/s figure into achieved TFLOP/s and, when the peak is known, MFU."""

    flops_per_token: int
    peak: float | None  # FLOP/s of all devices the tokens/s counts together

    def metrics(self, tokens_per_s: float) -> dict[str, float]:
        out = {"metrics.model_tflops": tokens_per_s * self.flops_per_token / 1e12}
        if self.peak:
            out["metrics.mfu"] = mfu(tokens_per_s, self.flops_per_token, self.peak)
        return out
