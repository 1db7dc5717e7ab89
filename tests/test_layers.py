"""The house stays drawn: each module imports only from its own layer or the layers below, and no
import - at the top of a module or inside a function - closes a circle.

The layers are declared once, here, bottom first (design.md §2 "Layers"). A module belongs to the
layer of the longest name below that matches it, so ``quantlab.executors.shipping`` (how a model
and a data set travel to a worker: ground that the workload stands on) sits below the executors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

LAYERS: list[tuple[str, ...]] = [
    # ground: errors, safe files, histograms, the graph, data set adapters, the embedded default
    ("quantlab.errors", "quantlab.lazy", "quantlab.atomic", "quantlab.heap", "quantlab.histogram", "quantlab.graph",
     "quantlab.data",
     "quantlab.defaults", "quantlab.executors.shipping"),
    ("quantlab.preprocess",),
    ("quantlab.weights", "quantlab.plugins", "quantlab.report", "quantlab.calibrators"),
    ("quantlab.workload",),  # what model, what data: every command takes these from here
    ("quantlab.collector", "quantlab.device", "quantlab.statistics", "quantlab.table", "quantlab.formats",
     "quantlab.cachetool",
     "quantlab.qdq", "quantlab.precision", "quantlab.backends", "quantlab.roundtrip"),
    ("quantlab.executors",),
    # the graph run node by node on FP32 and INT8 paths, and the weight-side corrections judged with it
    ("quantlab.interpreter", "quantlab.corrections"),
    ("quantlab.calibrate",),  # the pipeline: range choosers plug in through entry points, never imported
    ("quantlab.evaluation",),
    ("quantlab.tune",),
    ("quantlab.cli", "quantlab.__main__", "quantlab"),  # the front ends (``quantlab`` re-exports lazily)
]

SOURCES = {"quantlab": REPO / "quantlab", "quantlab.calibrators": REPO / "calibrators"}


def module_files() -> dict[str, Path]:
    """Every module of the package (calibrators/ installs as quantlab.calibrators), by dotted name."""
    found = {}
    for prefix, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


MODULES = module_files()


def layer_of(module: str) -> int:
    best, level = "", None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, level = name, index
    assert level is not None, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return level


def imports_of(module: str, path: Path) -> set[str]:
    """The quantlab modules ``module`` imports anywhere in its file (lazy imports included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from . import x`` may name a submodule: count it when it is one
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # an attribute of a module: the module
                name = name.rpartition(".")[0]
            if name.startswith("quantlab") and name != module:
                found.add(name)
    return found


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_nothing_from_a_higher_layer(module):
    upward = sorted(name for name in GRAPH[module] if layer_of(name) > layer_of(module))
    assert upward == [], f"{module} (layer {layer_of(module)}) imports from higher layers: {upward}"


def test_no_import_closes_a_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(GRAPH.get(module, ())):
            if state.get(name) == 1:
                cycles.append(path[path.index(name):] + [name])
            elif name not in state:
                visit(name, path + [name])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    """The rules above must be able to fail: an import inside a function counts like any other."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from .tune.pipeline import tune\n    return tune\n", encoding="utf-8")
    imported = imports_of("quantlab.probe", probe)
    assert "quantlab.tune.pipeline" in imported
    assert layer_of("quantlab.tune.pipeline") > layer_of("quantlab.calibrate")
