"""The `[profiling]` section over a run: a torch.profiler trace for steps A..B and a memory
snapshot at step N, written into `<run>/profiling/` and reported as log events.

The caller reports progress with `at_step(steps_done)` before its first step and after every
step; the trace records what happens between the report that reaches A and the one that
reaches B, with our `profiling.nvtx` range names (up to `fine`) as events, and is written as
Chrome-trace JSON (chrome://tracing, https://ui.perfetto.dev).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from config.schemas import ProfilingConfig
from profiling import memory, nvtx

PROFILING_DIRNAME = "profiling"


class StepProfiler:
    def __init__(self, config: ProfilingConfig, run_dir: Path, device: torch.device) -> None:
        self.config, self.device = config, device
        self.folder = run_dir / PROFILING_DIRNAME
        self._profiler: torch.profiler.profile | None = None
        self._trace_done = config.trace_start_step is None
        self._snapshot_done = config.memory_snapshot_step is None
        if not self._snapshot_done:
            memory.start_history(device)

    @property
    def active(self) -> bool:
        """Whether a trace or snapshot is still to come (callers may skip reporting steps otherwise)."""
        return not (self._trace_done and self._snapshot_done)

    def at_step(self, steps_done: int) -> dict[str, str]:
        """Start or finish what is due after `steps_done` steps; returns log events naming written files."""
        config, events = self.config, {}
        if not self._trace_done and self._profiler is None and config.trace_start_step <= steps_done < config.trace_end_step:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities, record_shapes=config.record_shapes)
            self._profiler.__enter__()
            nvtx.record_ranges(nvtx.FINE)
        elif self._profiler is not None and steps_done >= config.trace_end_step:
            events["profiling.trace"] = str(self._finish_trace())
        if not self._snapshot_done and steps_done >= config.memory_snapshot_step:
            self._snapshot_done = True
            path = memory.dump_snapshot(self.folder / f"memory_snapshot_step_{steps_done}.pickle", self.device)
            memory.stop_history(self.device)
            events["profiling.memory_snapshot"] = str(path) if path else "not written (CUDA only)"
            events["profiling.memory"] = memory.summary(self.device)
        return events

    def _finish_trace(self) -> Path:
        nvtx.record_ranges(0)
        self._profiler.__exit__(None, None, None)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"trace_steps_{self.config.trace_start_step}-{self.config.trace_end_step}.json"
        partial = path.with_name(f".{path.name}.tmp")  # the exporter writes in place: rename when complete
        self._profiler.export_chrome_trace(str(partial))
        os.replace(partial, path)
        self._profiler, self._trace_done = None, True
        return path

    def close(self) -> dict[str, str]:
        """Write a trace the run ended inside (it covers the steps that ran) and stop the memory
        history; returns the log events, like `at_step`."""
        events = {"profiling.trace": str(self._finish_trace())} if self._profiler is not None else {}
        if not self._snapshot_done:
            memory.stop_history(self.device)
        return events
