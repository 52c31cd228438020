"""The house's structure (docs/architecture.md "Layout"): imports follow the data flow,
no module imports another back in a circle, and no module or function is too long to
read at once."""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.unit._signatures import REPO

#: bottom to top: a module may import its own layer and the ones below, never one above
LAYERS: tuple[tuple[str, ...], ...] = (
    ("agent.model", "agent.clock", "agent.boot", "agent.durations", "agent.schema",
     "agent.cli"),
    ("agent.state", "agent.report", "agent.execute"),
    ("agent.sources",),
    ("agent.detect",),
    ("remediations",),
    ("agent.policy",),
    ("agent.guards",),
    ("agent.config",),
    ("agent.pipeline",),
    ("agent.daemon", "agent.simulate"),
    ("agent.commands", "agent.__main__"),
)
PACKAGES = ("agent", "remediations", "coordinator")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path) -> Iterator[str]:
    """Every module of ours `path` imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def layer(module: str) -> int | None:
    found = [(len(prefix), i) for i, names in enumerate(LAYERS) for prefix in names
             if module == prefix or module.startswith(prefix + ".")]
    return max(found)[1] if found else None


def ours(module: str) -> bool:
    return module.split(".", maxsplit=1)[0] in PACKAGES


def test_every_module_has_a_layer() -> None:
    assert [m for m in modules() if layer(m) is None and m.split(".")[0] != "coordinator"
            and m not in ("agent",)] == []


def test_no_import_runs_back_up_the_flow() -> None:
    back_up = [f"{m} imports {t}" for m, path in modules().items() for t in imports(path)
               if ours(t) and layer(m) is not None and layer(t) is not None
               and layer(t) > layer(m)]  # type: ignore[operator]
    assert back_up == []


def test_no_import_circle() -> None:
    """Tarjan's strongly connected components over the module graph: none of two or more
    (a package's __init__ counts as the package)."""
    mods = modules()
    graph = {m: sorted({t for t in imports(p) if t in mods and t != m}) for m, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_modules_and_functions_are_short() -> None:
    long = []
    for path in [*modules().values(), *sorted((REPO / "bench").glob("*.py"))]:
        text = path.read_text()
        where = path.relative_to(REPO)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{where}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{where}: {node.name}() {size} lines")
    assert long == []


def test_the_layers_are_real() -> None:
    """The checks above can fail: an import of the daemon from a source would be caught."""
    assert layer("agent.sources.kmsg") < layer("agent.daemon.loop")  # type: ignore[operator]
    assert layer("agent.detect.catalog") == layer("agent.detect")
    assert not ours("json") and ours("remediations.page")


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.split()
    return [REPO / f for f in listed
            if f.endswith((".py", ".md", ".toml", ".service", ".jsonl", ".txt", ".cfg"))
            or f.startswith(".ci/")]


def test_the_design_it_points_to_is_in_the_repository() -> None:
    """Code, tests and docs point at docs/ (docs/architecture.md), never at a document a
    clone does not have; every docs/ file they name exists."""
    outside = re.compile(r"\b(?:DESIGN|STYLE)\.md\b|\.\./shared\b")
    named = re.compile(r"\bdocs/[\w/.-]+\.md\b")
    wrong = []
    for path in _tracked_text_files():
        if path.name == "test_structure.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        where = path.relative_to(REPO)
        wrong += [f"{where}: {m.group(0)}" for m in outside.finditer(text)]
        wrong += [f"{where}: {m.group(0)} does not exist" for m in named.finditer(text)
                  if "NAME" not in m.group(0) and not (REPO / m.group(0)).is_file()]
    assert wrong == []
