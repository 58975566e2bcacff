"""The package's layout, kept so: no import cycle, layers that import only downwards, short files.

The graph is built from the source (``ast``), every ``import`` counted — those inside functions
too, since a lazy import is still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "blendmask_edu"
MAX_LINES = 350

# What each area may not import (the layers below it never reach up).
FORBIDDEN = {
    "modeling": ("data", "training", "evaluation", "assignments", "cli"),
    "data": ("modeling", "training", "evaluation", "assignments", "cli"),
    "training": ("evaluation", "assignments", "cli"),
    "evaluation": ("training", "assignments", "cli"),
    "assignments": ("training.engine", "cli"),  # the course kit sits on the library, below the CLI
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: Set[str]) -> Set[str]:
    """The package modules that ``path`` imports (``from a import b`` counts ``a.b`` when b is a
    module, else ``a``), relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module → the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> Dict[str, Set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules (first = last), or [] when there is none.
    A package's ``__init__`` importing its own submodules is not a cycle of concern; the
    package node stands for its ``__init__.py`` only."""
    state: Dict[str, int] = {}  # 1 on the path, 2 done
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "blendmask_edu.modeling.fcos" in graph["blendmask_edu.modeling.detector"]
    assert "blendmask_edu.data.files" in graph["blendmask_edu.data.coco"]  # `from .files import`


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " → ".join(cycle)


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_layers_import_only_downwards(area):
    prefix = f"blendmask_edu.{area}"
    wrong = sorted(f"{module} imports {target}"
                   for module, targets in import_graph().items() if module.startswith(prefix)
                   for target in targets
                   for other in FORBIDDEN[area] if target.startswith(f"blendmask_edu.{other}"))
    assert not wrong, "\n".join(wrong)


def test_only_the_command_line_imports_the_command_line():
    wrong = sorted(f"{module} imports {target}" for module, targets in import_graph().items()
                   if not module.startswith("blendmask_edu.cli") and module != "blendmask_edu.__main__"
                   for target in targets if target.startswith("blendmask_edu.cli"))
    assert not wrong, "\n".join(wrong)


def test_no_library_file_is_long():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
