"""The import graph of src/perm, read from the source with ``ast``: no cycle, and the SFT policy without the RM."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` of every module and package under src/perm."""
    out = {}
    for path in sorted((SRC / "perm").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: perm modules it imports}``: every ``import perm.x`` and ``from perm.x import y`` in its file,
    top level or inside functions; ``from perm.x import y`` names module ``perm.x.y`` where there is one."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == "perm"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from . import x, from .y import z
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "perm":
                    continue
                subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files}
                if subs:
                    edges |= subs
                if len(subs) < len(node.names):
                    edges.add(target)
        graph[name] = {e for e in edges if e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v) :] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for v in graph.get(todo.pop(), ()):
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen


def test_the_graph_sees_top_level_and_function_level_imports():
    graph = import_graph()
    assert "perm.models" in graph["perm.prefix"]  # top level
    assert "perm.models" in graph["perm.reward"] and "perm.prefix" in graph["perm.reward"]
    assert "perm.models" in graph["perm.policy"]  # top level
    assert "perm.pipeline" in graph["perm.cli"]  # inside a function
    assert "perm.stages.analyze" in graph["perm.stages"]  # from perm.stages import analyze, ...
    assert "perm.bon" in graph["perm.analysis"]  # from perm import bon


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_perm():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_sft_policy_does_not_import_the_reward_model_module():
    graph = import_graph()
    assert "perm.reward" not in reachable(graph, "perm.policy")
    assert "perm.prefix" not in reachable(graph, "perm.policy")


def stage_modules() -> set[str]:
    """The stage modules: perm.stages.<name> without a leading underscore (_context, _grid, _plan and
    _checkpoints are the helpers they share, not stages)."""
    return {n for n in module_files()
            if n.startswith("perm.stages.") and not n.rpartition(".")[2].startswith("_")}


def test_no_stage_module_imports_another():
    """Stages meet through Context.need and the shared helpers, never by importing each other, not even
    through another module (the stage package itself imports every stage)."""
    graph, stages = import_graph(), stage_modules()
    assert "perm.stages.train_rm" in stages and "perm.stages._grid" not in stages
    found = {m: sorted(reachable(graph, m) & (stages | {"perm.stages"}) - {m}) for m in sorted(stages)}
    assert not {m: s for m, s in found.items() if s}, "stage modules importing other stages"


def test_the_sibling_check_sees_a_sibling_import():
    graph = {"perm.stages.score": {"perm.stages._grid"}, "perm.stages._grid": {"perm.stages.sample"}}
    assert "perm.stages.sample" in reachable(graph, "perm.stages.score")


@pytest.mark.parametrize("module", ["perm.rm_jobs", "perm.launch", "perm.members", "perm.stages.train_members"])
def test_a_job_module_imports_first_in_a_fresh_process(module):
    """`python -m perm.launch` imports a job's module first: no cycle through perm.stages' package init may
    leave it partially initialised."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
