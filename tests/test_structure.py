"""The runtime stays readable: no import cycle between its modules, no function past a screenful."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_DIR

RUNTIME = REPO_DIR / "runtime"
LONGEST_FUNCTION = 70  # lines; the aim is ~60, this leaves room for a docstring


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports() -> dict[str, set[str]]:
    """Each runtime module -> the runtime modules it imports (at any depth of its code)."""
    modules = {module_name(path): path for path in RUNTIME.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, path + [target])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_runtime_modules_import_each_other_without_a_cycle():
    graph = runtime_imports()
    assert "runtime.loop" in graph and graph["runtime.loop"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_runtime_function_is_longer_than_a_screenful():
    long = []
    for path in sorted(RUNTIME.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(REPO_DIR)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_the_worker_and_its_warden_import_no_redis_client():
    """They never talk to Redis: the client (with asyncio, ssl, cryptography) cost the worker 10 MB."""
    check = "import sys, runtime.warden, runtime.serve; print(sorted({'redis', 'asyncio', 'ssl'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO_DIR, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
