"""The layout's rules, read from the code itself (the ``ast`` of every module).

* Imports run one way: ``cli`` → ``probe`` → ``features`` → ``base``. A module
  may import its own layer or a lower one, never a higher one.
* Inside ``probe`` the folders are layers too (``PROBE_LAYERS``, lowest first): the
  closed-form math, the records, the diagnostics, preprocessing, the trainer's
  machinery, domain sources, methods, fitting, run folders, the pipeline, the
  estimator, the API, reports, studies. A module imports its own folder or a lower one.
* No import cycle between our modules, direct or through others. An import of
  ``a.b.c`` is an edge to the module ``a.b.c`` (not to the packages above it).
  Every import counts: at module level, inside functions, and under
  ``if TYPE_CHECKING:`` (an annotation-only import is still a dependency, and one
  that runs the day someone needs the name at run time).
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
#: the folders (and top-level modules) of probe, lowest first
PROBE_LAYERS = ("moments", "records", "diagnostics", "preprocessing", "train", "domains", "methods", "fitting",
                "runs", "pipeline", "estimator", "api", "reports", "study")
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


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    """(imported module of ours, line) for every import statement in ``module``, those
    under ``if TYPE_CHECKING:`` included."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
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


def probe_layer(module: str) -> int | None:
    """The position of a probe module's folder in PROBE_LAYERS (None: probe itself)."""
    parts = module.split(".")
    return PROBE_LAYERS.index(parts[1]) if parts[0] == "probe" and len(parts) > 1 else None


def test_the_walker_sees_every_layer_and_real_imports() -> None:
    # Guards the rules below against passing vacuously.
    assert {m.split(".")[0] for m in MODULES} == set(LAYERS)
    assert {m.split(".")[1] for m in MODULES if m.startswith("probe.")} == set(PROBE_LAYERS)
    edges = graph()
    assert "base.errors" in edges["features.store"]
    assert "cli.app" in edges["cli.fit"]
    assert "probe.train.data" in edges["probe.methods.base"]  # an import under TYPE_CHECKING counts


def test_probe_folders_import_downwards() -> None:
    bad = [f"{MODULES[m].relative_to(REPO)}:{line} imports {t}"
           for m in MODULES if probe_layer(m) is not None
           for t, line in imports_of(m) if probe_layer(t) is not None and probe_layer(t) > probe_layer(m)]
    assert not bad, ("probe imports against its folder order " + " < ".join(PROBE_LAYERS) + ":\n"
                     + "\n".join(bad))


def test_settings_import_alone_when_a_method_imports_the_trainer_data(tmp_path: Path) -> None:
    # The cycle this guards against: a method module importing probe.train.data at run time
    # made `import probe.train.settings` fail when settings imported the methods' registry.
    import subprocess
    import sys

    plugin = tmp_path / "plugin_method.py"
    plugin.write_text("from probe.train.data import Batch\nfrom probe.methods.base import GradientMethod\n")
    code = "import plugin_method, probe.train.settings; import probe.train.settings as s; print(s.Settings().steps)"
    for first in ("import probe.train.settings", "import plugin_method"):
        proc = subprocess.run([sys.executable, "-c", f"{first}; {code}"], capture_output=True, text=True,
                              cwd=tmp_path, env={"PYTHONPATH": f"{REPO}:{tmp_path}", "PATH": "/usr/bin:/bin"},
                              timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "1000", proc.stderr[-2000:]


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
