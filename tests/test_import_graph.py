"""The import graph is one-way: entry points -> library -> config -> base (see README, Layout).

Every `import` statement of the project's own modules counts, including the lazy ones inside
functions, because a lazy import still ties the two modules together. Importing `a.b.c` also
runs `a/__init__` and `a/b/__init__`, so those package edges count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "benchmarking", "config", "diffusionlm", "ddp", "logger", "profiling", "databuilder")
# Lowest layer first; a module may import its own layer and the ones below it.
LAYERS = ("base", "config", "library", "entry")


def layer_of(module: str) -> str:
    top = module.split(".")[0]
    if module == "diffusionlm" or module == "diffusionlm.errors" or module.startswith("diffusionlm.utils"):
        return "base"
    if top == "config":
        return "config"
    if top in ("cli", "benchmarking"):
        return "entry"
    return "library"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports, with the packages each import passes through."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known)
    # A module's own parent packages are initialised before it whatever it imports: not an edge.
    ancestors = {".".join(this.split(".")[:i]) for i in range(1, this.count(".") + 2)}
    return found - ancestors


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that returns to its start, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between sub-packages (`diffusionlm.training`, `config`, `ddp`, ...)."""
    def unit(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if parts[0] == "diffusionlm" else parts[0]

    edges: dict[str, set[str]] = {}
    for source, targets in graph.items():
        edges.setdefault(unit(source), set()).update(unit(t) for t in targets if unit(t) != unit(source))
    return edges


def test_no_module_imports_a_higher_layer():
    wrong = [f"{source} ({layer_of(source)}) imports {target} ({layer_of(target)})"
             for source, targets in import_graph().items() for target in sorted(targets)
             if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(source))]
    assert not wrong, "wrong-way imports:\n" + "\n".join(wrong)


def test_modules_have_no_import_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_subpackages_have_no_import_cycle():
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, f"sub-package cycle: {' -> '.join(cycle)}"


def test_library_never_imports_an_entry_point():
    entry = [f"{s} imports {t}" for s, ts in import_graph().items() if layer_of(s) != "entry"
             for t in ts if layer_of(t) == "entry"]
    assert not entry


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_cycle_finder_finds_exactly_the_cycles(graph, expected):
    assert find_cycle(graph) == expected


def test_graph_sees_lazy_and_package_imports():
    """A function-level import counts, and importing `a.b.c` counts `a.b` (its __init__ runs)."""
    graph = import_graph()
    assert "diffusionlm.training.trainer" in graph["cli.train"]  # imported inside cli.train._run
    assert "diffusionlm.tokenizer" in graph["diffusionlm.training.trainer"]


def test_config_loads_without_torch():
    """Schemas are plain data: validating or printing a config never pulls in the library's torch."""
    code = ("import sys, importlib, pkgutil, config\n"
            "for info in pkgutil.iter_modules(config.__path__): importlib.import_module(f'config.{info.name}')\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
