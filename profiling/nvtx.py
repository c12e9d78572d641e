"""Named ranges around the phases of a training step and of sampling, for Nsight Systems and
for torch.profiler traces.

    TRANSFORMERLM_NVTX=1 TRANSFORMERLM_NVTX_LEVEL=fine nsys profile uv run diffusionlm-train ...

Levels, each including the ones above it:
- coarse: one range per training step (`train_step`), per validation, per sampler block (`sample_block`);
- fine: the phases inside them: `data`, `forward`, `backward`, `grad_sync`, `optimizer`;
  `sample_step`, `cache_refresh`;
- verbose: one range per Transformer block call (`block.<i>`), through module hooks.

`DIFFUSIONLM_NVTX` / `DIFFUSIONLM_NVTX_LEVEL` are accepted as aliases (the `TRANSFORMERLM_*`
names win when both are set). The environment is read by the entry points
(`cli.utils.run_cli` passes `os.environ` to `configure_from_env`), never from library code,
which only calls `range(...)`.

Off (the default) costs one integer comparison per range: `range` returns a shared null
context and the `nvtx` package is neither imported nor called. While a torch.profiler trace
is recording (`profiling.trace`), ranges up to `fine` are also emitted as
`torch.profiler.record_function`, so the trace shows our phase names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from diffusionlm.errors import InputError

COARSE, FINE, VERBOSE = 1, 2, 3
LEVELS = {"coarse": COARSE, "fine": FINE, "verbose": VERBOSE}
ENABLE_VARIABLES = ("TRANSFORMERLM_NVTX", "DIFFUSIONLM_NVTX")
LEVEL_VARIABLES = ("TRANSFORMERLM_NVTX_LEVEL", "DIFFUSIONLM_NVTX_LEVEL")
DOMAIN = "diffusionlm"

_NULL = contextlib.nullcontext()
_nvtx_level = 0  # ranges at or below this level go to NVTX (0: off)
_record_level = 0  # ... and to torch.profiler.record_function (0: no trace recording)
_nvtx: Any = None  # the `nvtx` module, imported only once enabled


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        if environ.get(name, "") != "":
            return name, environ[name]
    return None


def configure_from_env(environ: Mapping[str, str]) -> None:
    """Turn NVTX ranges on or off from TRANSFORMERLM_NVTX(_LEVEL) or their DIFFUSIONLM_ aliases."""
    enabled = _first(environ, ENABLE_VARIABLES)
    level = _first(environ, LEVEL_VARIABLES)
    if enabled is not None and enabled[1].lower() not in ("0", "1", "true", "false"):
        raise InputError(f"{enabled[0]}={enabled[1]!r}: expected 1 or 0")
    if level is not None and level[1].lower() not in LEVELS:
        raise InputError(f"{level[0]}={level[1]!r}: expected one of {', '.join(LEVELS)}")
    configure(enabled is not None and enabled[1].lower() in ("1", "true"),
              level[1].lower() if level is not None else "coarse")


def configure(enabled: bool, level: str = "coarse") -> None:
    """Emit NVTX ranges up to `level` (or none)."""
    global _nvtx_level, _nvtx
    if enabled and _nvtx is None:
        import nvtx

        _nvtx = nvtx
    _nvtx_level = LEVELS[level] if enabled else 0


def record_ranges(level: int) -> None:
    """Emit ranges up to `level` as torch.profiler record_functions too (0: stop); used by traces."""
    global _record_level
    _record_level = level


def enabled(level: int) -> bool:
    """Whether ranges at `level` are emitted anywhere (to skip building names or hooks otherwise)."""
    return level <= _nvtx_level or level <= _record_level


def range(name: str, level: int = FINE) -> contextlib.AbstractContextManager:
    """A context that marks `name` in NVTX and/or the running trace, or does nothing."""
    if level > _nvtx_level and level > _record_level:
        return _NULL
    return _Range(name, level)


class _Range:
    __slots__ = ("_record", "level", "name")

    def __init__(self, name: str, level: int) -> None:
        self.name, self.level, self._record = name, level, None

    def __enter__(self) -> None:
        if self.level <= _nvtx_level:
            _nvtx.push_range(self.name, domain=DOMAIN)
        if self.level <= _record_level:
            import torch

            self._record = torch.profiler.record_function(self.name)
            self._record.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._record is not None:
            self._record.__exit__(*exc)
        if self.level <= _nvtx_level:
            _nvtx.pop_range(domain=DOMAIN)


def annotate_blocks(blocks) -> list:
    """At `verbose`, wrap every module in `blocks` in a `block.<i>` range through forward hooks;
    returns the hook handles (none when verbose is off, so the forward pass is untouched)."""
    if not enabled(VERBOSE):
        return []
    handles = []
    for index, block in enumerate(blocks):
        opened: list = []

        def pre_hook(module, args, opened=opened, name=f"block.{index}"):
            opened.append(range(name, VERBOSE))
            opened[-1].__enter__()

        def post_hook(module, args, output, opened=opened):
            opened.pop().__exit__(None, None, None)

        handles += [block.register_forward_pre_hook(pre_hook), block.register_forward_hook(post_hook)]
    return handles
