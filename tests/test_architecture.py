"""The package's shape: imports point down the stages (no cycles, no upward import, deferred ones included), a
deferred import says why, and the package root holds only the shared contracts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cxrseg"

# Lowest first: a module may import from its own layer's package or a lower layer, never from a higher one.
LAYERS = [
    {"cxrseg.errors", "cxrseg.constants"},
    {"cxrseg.files", "cxrseg.parallel", "cxrseg.labels"},
    {"cxrseg.config", "cxrseg.model", "cxrseg.plots"},
    {"cxrseg.imageio", "cxrseg.hub"},
    {"cxrseg.data"},
    {"cxrseg.prepare", "cxrseg.synthetic"},
    {"cxrseg.postprocessing"},
    {"cxrseg.inference"},
    {"cxrseg.evaluation"},
    {"cxrseg.training"},
    {"cxrseg.app"},
    {"cxrseg.cli", "cxrseg.__main__", "cxrseg"},  # the command line, and the public API in cxrseg/__init__
]
DEFERRED_REASONS = ("start-up", "optional", "gradio", "pydicom")  # what a comment on a deferred import must say


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer entry a module belongs to: its top-level package (cxrseg.data.splits → cxrseg.data)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def layer(module: str) -> int:
    name = unit(module)
    for rank, names in enumerate(LAYERS):
        if name in names:
            return rank
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported cxrseg module, line, deferred) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxrseg"):
            for alias in node.names:  # `from cxrseg.hub import card` imports the module cxrseg.hub.card
                candidate = f"{node.module}.{alias.name}"
                target = candidate if (SRC / candidate.replace(".", "/")).with_suffix(".py").exists() else node.module
                found.append((target, node.lineno, id(node) not in top_level))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cxrseg"):
                    found.append((alias.name, node.lineno, id(node) not in top_level))
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: imports(path) for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    upward = [
        f"{module}:{line} imports {target}"
        for target, line, _ in GRAPH[module]
        if layer(target) > layer(module) and unit(target) != unit(module)
    ]
    assert not upward


def test_no_import_cycles():
    edges = {
        name: {target for target, _, _ in found if target in MODULES and target != name}
        for name, found in GRAPH.items()
    }
    edges = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles


def test_deferred_imports_say_why():
    unexplained = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for _, line, deferred in GRAPH[name]:
            # the comment may stand on the import, above the block of imports it opens, or on its `if TYPE_CHECKING:`
            first = line - 1
            while first > 0 and lines[first - 1].strip().startswith(("from ", "import ", "#", "if TYPE_CHECKING:")):
                first -= 1
            text = "\n".join(
                lines[max(first - 1, 0) : line]
            ).lower()  # and the line that opens it (`if TYPE_CHECKING:`)
            if deferred and not any(reason in text for reason in DEFERRED_REASONS):
                unexplained.append(f"{name}:{line}")
    assert not unexplained


def test_the_package_root_holds_only_the_shared_contracts():
    root_modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root_modules) <= 11, root_modules
