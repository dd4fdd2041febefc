"""The package's layout is its architecture: subpackages by concern, imports in one direction only.

Each subpackage (or top-level module) may import only the layers below it; HEROS, BOSS and
Zenoh are imported by the adapter (``actor/``) and the test support (``testing/``) alone; no
module imports itself back through others; and the service imports without HEROS.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "herocollector"

_CORE = {
    "errors",
    "heartbeat",
    "decode",
    "run",
    "output",
    "collector",
    "argument_types",
    "arguments",
    "config",
    "events",
    "journal",
}

ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "heartbeat": set(),
    "decode": {"errors"},
    "journal": {"errors"},
    "run": {"errors", "decode", "heartbeat"},
    "output": {"errors", "decode", "run"},
    "collector": {"errors", "decode", "run", "output"},
    "argument_types": {"errors", "run"},
    "arguments": {"errors", "decode", "run", "output", "collector", "argument_types"},
    "config": {"errors", "decode", "run", "output", "collector", "argument_types", "arguments"},
    "events": {"errors"},
    "service": _CORE,
    "actor": _CORE | {"service"},
    "cli": _CORE | {"service", "actor"},
    "testing": _CORE | {"service", "actor"},
    "__init__": {"collector", "errors", "run", "service", "config", "actor"},
    "__main__": {"cli"},
}
"""What each layer may import (besides itself); top-level modules count as layers of their own."""

HEROS_PACKAGES = ("heros", "herostools", "boss", "zenoh")
HEROS_LAYERS = {"actor", "testing"}
LONG_FILES_ALLOWED = {"decode/kernel.py", "testing/fuzz.py", "testing/numpy_decoder.py"}
"""The kernels, and the fuzzer with its independent NumPy oracle."""
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in relative.parts if p != "__init__"] or ["__init__"]
        found[".".join(["herocollector", *parts])] = path
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str, *, top_level_only: bool) -> set[str]:
    """The herocollector modules (and third-party top-level packages) ``module`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.If) and top_level_only:
            continue
    return names


def _internal(names: set[str], modules: dict[str, Path]) -> set[str]:
    return {name for name in names if name in modules}


def test_each_layer_imports_only_the_layers_below_it() -> None:
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        layer = _layer(module)
        assert layer in ALLOWED, f"{module}: the layer {layer!r} is not in the architecture table"
        for imported in _internal(_imports(path, module, top_level_only=False), modules):
            target = _layer(imported)
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{module} imports {imported} ({layer} → {target})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_only_the_adapter_and_the_test_support_import_heros() -> None:
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        if _layer(module) in HEROS_LAYERS:
            continue
        for imported in _imports(path, module, top_level_only=False):
            if imported.split(".")[0] in HEROS_PACKAGES:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {m: _internal(_imports(p, m, top_level_only=True), modules) - {m} for m, p in modules.items()}
    # A package's __init__ is imported on the way to its modules; that edge is no cycle of the code.
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[str] = []

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycles.append(" → ".join([*visiting[visiting.index(node) :], node]))
            return
        visiting.append(node)
        for target in sorted(graph[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for module in sorted(graph):
        visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_is_over_600_lines() -> None:
    long = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and relative not in LONG_FILES_ALLOWED:
            long.append(f"{relative}: {lines} lines")
    assert not long, "\n".join(long)


@pytest.mark.parametrize(
    "module", ["herocollector.service", "herocollector.service.core", "herocollector", "herocollector.collector"]
)
def test_the_service_and_the_library_import_without_heros(module: str) -> None:
    probe = (
        f"import {module}, sys; "
        "loaded = sorted(m for m in ('heros', 'herostools', 'boss', 'zenoh') if m in sys.modules); "
        "print(','.join(loaded))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", f"importing {module} loaded {result.stdout.strip()}"


def test_the_command_line_loads_no_part_of_the_service_it_does_not_run() -> None:
    """Every ``herocollector`` process builds the whole parser; none starts workers or a metrics server.

    So the service's core (workers, journal groups, following, compaction, the Prometheus
    client) is not imported to parse a command line, nor by ``collect`` (which uses the
    catch-up scan's ``finished_runs``): each command line costs its imports, not the actor's.
    """
    probe = (
        "import sys; from herocollector.cli import collect, main; main.build_parser(); "
        "loaded = sorted(m for m in ('herocollector.service.core', 'herocollector.service.runner', "
        "'herocollector.service.follow', 'prometheus_client') if m in sys.modules); print(','.join(loaded))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", f"building the command line loaded {result.stdout.strip()}"
