"""The layout's rules, read from the code itself (the ``ast`` of every module).

* Imports run one way: ``cli`` → ``probe`` → ``features`` → ``base``. A module
  may import its own layer or a lower one, never a higher one.
* No import cycle between our modules, direct or through others. An import of
  ``a.b.c`` is an edge to the module ``a.b.c`` (not to the packages above it),
  and imports inside functions count like module-level ones; imports under
  ``if TYPE_CHECKING:`` do not (they never run: annotations only).
* Only ``cli`` prints: library code reports through callbacks and return values.
* Modules stay at most 600 lines, function bodies at most 80.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("base", "features", "probe", "cli")  # lowest first
MAX_MODULE_LINES = 600
MAX_BODY_LINES = 80


def module_files() -> dict[str, Path]:
    out = {}
    for top in LAYERS:
        for path in sorted((REPO / top).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if not MODULES[module].name == "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    """(imported module of ours, line) for every import statement in ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from probe import moments` imports probe.moments
                    yield sub, node.lineno
                elif target in MODULES:
                    yield target, node.lineno


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in imports_of(m) if t != m} for m in MODULES}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_the_walker_sees_every_layer_and_real_imports() -> None:
    # Guards the rules below against passing vacuously.
    assert {m.split(".")[0] for m in MODULES} == set(LAYERS)
    edges = graph()
    assert "base.errors" in edges["features.store"]
    assert "cli.app" in edges["cli.fit"]


def test_imports_run_one_way() -> None:
    bad = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}"
           for m in MODULES for t, line in imports_of(m) if layer(t) > layer(m)]
    assert not bad, "imports against the layering cli -> probe -> features -> base:\n" + "\n".join(bad)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = _cycles(graph())
    assert not cycles, "modules that import each other (directly or in a loop): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def _calls_print(tree: ast.AST) -> Iterator[int]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            yield node.lineno
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(n in ("rich.console", "rich.progress") for n in names):
                yield node.lineno


def test_only_cli_prints() -> None:
    bad = [f"{MODULES[m].relative_to(REPO)}:{line}" for m in MODULES if not m.startswith("cli")
           for line in _calls_print(ast.parse(MODULES[m].read_text(encoding="utf-8")))]
    assert not bad, "library code that prints or drives a console (report through a callback instead): " + \
        ", ".join(bad)


def test_modules_are_short() -> None:
    long = {str(p.relative_to(REPO)): n for p in MODULES.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring is documentation, not body
    return body[-1].end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_bodies_are_short(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    long = {f"{fn.name} (line {fn.lineno})": n for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n := _body_lines(fn)) > MAX_BODY_LINES}
    assert not long, f"function bodies over {MAX_BODY_LINES} lines: {long}"
