"""The code's layout as CONTRIBUTING.md describes it: no import cycles between the project's modules,
counting the imports written inside functions (which would otherwise hide one)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("sdar_envs", "sdar_train", "skills", "servers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its file (top level or inside functions)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                found = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in found:
                while target and target not in files:  # `from pkg import name`: the module, or the package
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own submodules (an __init__ re-exporting them) are one unit
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_project_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert "sdar_train.trainer" in graph and "sdar_train.models" in graph["sdar_train.policy"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_harness_does_not_import_the_replication_kit():
    """``sdar_train.miniature`` drives the harness; nothing outside it (harness, envs, skills, servers)
    imports it, so the harness reads without the kit."""
    kit = "sdar_train.miniature"
    graph = import_graph()
    assert any(m.startswith(kit + ".") for m in graph)
    users = sorted(
        m for m, targets in graph.items() if not m.startswith(kit) and any(t.startswith(kit) for t in targets)
    )
    assert not users, f"harness modules importing the kit: {users}"
