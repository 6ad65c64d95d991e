"""The package's shape (docs/internals/architecture.md): every module in its tier, imports
only downward or within a tier, the three paths apart, no cycle, modules of a readable
size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "turbo_tasks"
# About 400 (channels' largest module, layers.py, has 417): docs/internals/architecture.md.
MAX_LINES = 420

# Each module's tier and, where it belongs to one, its path. A module may import modules of
# its own tier or a lower one; in the paths tier, only modules of its own path. Keep this
# table and the module map in docs/internals/architecture.md in step.
FOUNDATION, TRANSPORT, STREAMS, PATHS, GLUE = range(5)
TIERS: dict[str, tuple[int, str]] = {
    # 0. Data and rules: no turbo_tasks concept above them.
    **dict.fromkeys(
        (
            "exceptions", "conf", "markup", "snapshots", "signing", "jobs", "codec",
            "suppression", "request_context", "models", "_guard", "_green", "metrics",
            "tracing", "_compat", "_compat.consumer", "_compat.db", "_compat.kombu",
            "_compat.layers",
        ),
        (FOUNDATION, ""),
    ),
    # 1. Moving jobs and frames: the broker, the outbox, the commit batch; the channel
    # layer, its history, the refresh windows.
    **dict.fromkeys(("publish", "outbox", "batching"), (TRANSPORT, "write")),
    **dict.fromkeys(("layers", "history", "refreshes"), (TRANSPORT, "fan-out")),
    # Announced by the worker (fan-out) and the web (subscribe) alike; what waits for
    # the workers (the status command, the metrics view).
    "presence": (TRANSPORT, ""),
    "backlog": (TRANSPORT, ""),
    # 2. What users declare: streams, their actions, how frames render, the registry.
    **dict.fromkeys(
        ("rendering", "actions", "streams", "registry", "components"), (STREAMS, "")
    ),
    # 3. The three paths, and the request side of a view.
    **dict.fromkeys(("signals", "bulk"), (PATHS, "write")),
    **dict.fromkeys(("delivery", "tasks"), (PATHS, "fan-out")),
    **dict.fromkeys(
        ("permissions", "gaps", "storm", "consumers", "routing"), (PATHS, "subscribe")
    ),
    **dict.fromkeys(("http", "middleware"), (PATHS, "request")),
    # 4. Where Django, Celery and pytest plug in.
    **dict.fromkeys(
        (
            "", "apps", "checks", "testing", "templatetags", "templatetags.turbo_tasks",
            "templatetags.turbo_streams",
            "management", "management.commands", "management.commands.turbo_tasks_relay",
            "management.commands.turbo_tasks_rerun",
            "management.commands.turbo_tasks_status", "status", "views",
        ),
        (GLUE, ""),
    ),
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The turbo_tasks modules ``path`` imports at run time (``if TYPE_CHECKING`` excluded),
    at module level or inside functions."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    # "import turbo_tasks.x" also runs turbo_tasks/__init__.py, which is not an edge we
    # count: the package's __init__ only re-exports.
    return {
        name: {m for m in _imports(path, modules) if m != "turbo_tasks"}
        for name, path in paths.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _short(module: str) -> str:
    return module.removeprefix("turbo_tasks").removeprefix(".")


def _wrong_directions(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported in sorted(graph.items()):
        tier, path = TIERS[_short(module)]
        for other in sorted(imported):
            other_tier, other_path = TIERS[_short(other)]
            if other_tier > tier or (tier == other_tier == PATHS and path != other_path):
                wrong.append(f"{_short(module)} ({path or tier}) imports {_short(other)}")
    return wrong


def test_every_module_has_a_tier() -> None:
    modules = {_short(m) for m in _graph() if not m.startswith("turbo_tasks.migrations")}
    assert modules - set(TIERS) == set(), "add new modules to TIERS and the architecture page"
    assert set(TIERS) - modules == set()


def test_imports_go_down_the_tiers_and_paths_stay_apart() -> None:
    graph = {m: deps for m, deps in _graph().items() if not m.startswith("turbo_tasks.migr")}
    assert _wrong_directions(graph) == []


def test_direction_check_finds_an_upward_and_a_cross_path_import() -> None:
    graph = {
        "turbo_tasks.jobs": {"turbo_tasks.streams"},
        "turbo_tasks.signals": {"turbo_tasks.delivery"},
        "turbo_tasks.streams": {"turbo_tasks.jobs"},
    }
    assert _wrong_directions(graph) == [
        "jobs (0) imports streams",
        "signals (write) imports delivery",
    ]


def test_package_has_no_import_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_modules_stay_readable() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_package_data_pattern_matches_a_file() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["turbo_tasks"]
    assert [p for p in patterns if not list(PACKAGE.glob(p))] == []
