"""Memory profiling: the CUDA caching allocator's history and snapshots, peaks, and a summary.

On CUDA these wrap torch's allocator tools: `start_history` records every allocation with its
stack, `dump_snapshot` writes the pickle that https://pytorch.org/memory_viz renders. On CPU
there is no allocator history, so those two are no-ops (they return False/None), while `peaks`
and `summary` report the process's resident set, which is what bounds a CPU run.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


def _cuda(device: torch.device | str | None) -> bool:
    return torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")


def start_history(device: torch.device | str | None = None, max_entries: int = 100_000) -> bool:
    """Start recording allocations (CUDA); returns whether recording started."""
    if not _cuda(device):
        return False
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    return True


def stop_history(device: torch.device | str | None = None) -> None:
    if _cuda(device):
        torch.cuda.memory._record_memory_history(enabled=None)


def dump_snapshot(path: str | Path, device: torch.device | str | None = None) -> Path | None:
    """Write the allocator snapshot (with the recorded history) to `path`; None on CPU."""
    if not _cuda(device):
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.cuda.memory._dump_snapshot(str(path))
    return path


def _peak_rss_bytes() -> int:
    """Peak resident set of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peaks(device: torch.device | str | None = None) -> dict[str, int]:
    """Peak bytes since the last `reset_peaks`: allocated and reserved on CUDA, resident set on CPU."""
    if _cuda(device):
        return {"max_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "max_reserved_bytes": torch.cuda.max_memory_reserved(device)}
    return {"max_rss_bytes": _peak_rss_bytes()}


def reset_peaks(device: torch.device | str | None = None) -> None:
    """Restart the CUDA peak counters (the CPU peak resident set cannot be reset portably)."""
    if _cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def summary(device: torch.device | str | None = None) -> str:
    """One line: current and peak allocated/reserved memory on CUDA, the peak resident set on CPU."""
    mib = 1 << 20
    if _cuda(device):
        return (f"cuda memory: allocated {torch.cuda.memory_allocated(device) / mib:.0f} MiB "
                f"(peak {torch.cuda.max_memory_allocated(device) / mib:.0f}), reserved "
                f"{torch.cuda.memory_reserved(device) / mib:.0f} MiB (peak {torch.cuda.max_memory_reserved(device) / mib:.0f})")
    return f"cpu memory: peak resident set {_peak_rss_bytes() / mib:.0f} MiB"
