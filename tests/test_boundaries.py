"""The layering a reader relies on: the core imports no Discord, and no module imports itself
back through others."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

# The money core and everything it stands on: usable from the CLI, tests and other front ends.
DISCORD_FREE = (
    "bot.jobs",
    "bot.lease",
    "bot.approvals",
    "bot.progress",
    "bot.store",
    "bot.segmind.client",
    "bot.params",
    "bot.quota",
    "bot.request",
    "bot.cli",
    "bot.balance",
    "bot.charts",
    "bot.recovery",
    "bot.reconcile",
    "bot.discrepancies",
)


@pytest.mark.parametrize("module", DISCORD_FREE)
def test_core_module_loads_no_discord(module: str) -> None:
    code = (
        f"import {module}, sys; "
        "leaked = sorted(m for m in sys.modules if m == 'discord' or m.startswith('discord.')); "
        "assert not leaked, leaked"
    )
    # A fresh interpreter: this test process has long imported discord.
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module of ours that `path` imports anywhere: at the top, in functions, under
    `if TYPE_CHECKING:` — a cycle a type checker sees is still a tangle for a reader."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from bot.chat import reports` imports the submodule; `from bot.store import Job`
            # the package.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }
    known = set(files)
    return {name: _imports(path, name, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_finds_a_cycle_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_bot_and_cogs() -> None:
    graph = import_graph()
    assert "bot.jobs" in graph and "cogs.veo" in graph  # the walk saw the packages
    assert "bot.store" in graph["bot.jobs"]
    assert cycles(graph) == []


def test_bench_and_harness_do_not_import_the_tests() -> None:
    """The bench and the shared harness stand on their own: `tests/` may change freely."""
    offenders = []
    for folder in ("bench", "harness"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                if any(name == "tests" or name.startswith("tests.") for name in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
