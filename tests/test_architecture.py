"""Guard rails of the layout (issue 22): the layering cannot slide back unnoticed.

Each check names its offenders (file:line) so the failure says what to move. `lint-imports` checks
the layers contract in pyproject.toml ([tool.importlinter]); the AST checks here cover what it does
not: cycles among single modules counting function-level imports, imports of the `lrt` root from
inside lrt, sizes, `"pointwise"` string tests outside the family, and the one-source helpers
(version, "did you mean").
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "lrt"

MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300
POINTWISE_ALLOWED = {"lrt/families/__init__.py", "lrt/families/pointwise.py"}


# ---- the module graph ---------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    """Every module of lrt by dotted name (a package by its own name, not `.__init__`)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if MODULES[module].name != "__init__.py":
        base = base[:-1]  # a plain module's package
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(name: str) -> str | None:
    """The lrt module that defines `name` (a dotted module or an attribute of one)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported lrt module, line) for every import statement anywhere in the module: top level,
    inside functions and under `if TYPE_CHECKING`, as import-linter counts them."""
    out = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            # `from lrt import configio` imports the package lrt and its submodule lrt.configio
            targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
        else:
            continue
        for t in targets:
            owner = _owner(t)
            if owner and owner != module:
                out.append((owner, node.lineno))
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """importer -> {imported: first line}, over lrt's own modules."""
    graph: dict[str, dict[str, int]] = {m: {} for m in MODULES}
    for m in MODULES:
        for dep, line in _imports(m):
            graph[m].setdefault(dep, line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's SCCs (iterative: no recursion limit), the cyclic ones only (size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                scc = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    scc.append(w)
                    if w == v:
                        break
                if len(scc) > 1:
                    out.append(sorted(scc))
    return sorted(out, key=lambda s: (-len(s), s))


def _cycle_through(graph: dict[str, dict[str, int]], scc: list[str]) -> list[str]:
    """One shortest cycle through the SCC's first module, as [start, ..., start] (BFS)."""
    members, start = set(scc), scc[0]
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])  # type: ignore[arg-type]
                    return path[::-1] + [start]
                if w in members and w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle of {scc}")


def _show_cycle(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    hops = [f"{a} -> {b} ({_rel(MODULES[a])}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "\n      ".join(hops)


# ---- (a) the layers contract ----------------------------------------------------------------------
def test_lint_imports_layers_contract():
    """`lint-imports` (import-linter) keeps the contract of pyproject.toml: imports point down only."""
    pytest.importorskip("importlinter", reason="import-linter is a test dependency: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                        "sys.argv[0] = 'lint-imports'; c()", "--no-cache"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    report = r.stdout[r.stdout.find("Contracts"):] if "Contracts" in r.stdout else r.stdout
    print(report + r.stderr)
    assert r.returncode == 0, f"lint-imports found broken contracts:\n{report}{r.stderr}"


# ---- (b) no cycle, function-level imports included ----------------------------------------------------
def test_no_import_cycle_counting_function_level_imports():
    graph = import_graph()
    sccs = strongly_connected(graph)
    lines = [f"  {len(s)} modules: {', '.join(s)}\n    e.g. {_show_cycle(graph, _cycle_through(graph, s))}" for s in sccs]
    print("\n".join(lines) or "no import cycle")
    assert not sccs, "import cycles among lrt's modules (function-level imports count):\n" + "\n".join(lines)


def test_the_graph_sees_function_level_and_relative_imports():
    """The cycle check would be blind without these: a lazy import inside a function is an edge,
    and so is a relative one."""
    g = import_graph()
    assert "lrt.config" in g["lrt"]  # lrt/__init__.py imports it inside __getattr__ only
    fake = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}, "e": {"e": 5}}
    assert strongly_connected(fake) == [["a", "b", "c"]]
    assert _cycle_through(fake, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_nothing_inside_lrt_imports_the_package_root():
    """The root lazily reaches config, rerank and train: a low module importing it drags them in
    (and closes cycles). Low modules take the version from lrt.version."""
    bad = []
    for m, tree in TREES.items():
        if m == "lrt":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "lrt" for a in node.names):
                bad.append(f"  {_rel(MODULES[m])}:{node.lineno}: import lrt")
            elif isinstance(node, ast.ImportFrom) and _absolute(m, node) == "lrt":
                names = ", ".join(a.name for a in node.names)
                bad.append(f"  {_rel(MODULES[m])}:{node.lineno}: from lrt import {names} "
                           f"(write `from lrt.<module> import ...`; the version: lrt.version)")
    print("\n".join(bad) or "no import of the lrt root")
    assert not bad, "modules inside lrt import the package root:\n" + "\n".join(bad)


def test_import_lrt_is_cheap():
    """`import lrt` (the public API, PEP 562 lazy) loads lrt.version and the lrt.train package's
    docstring-only __init__ (made callable as `lrt.train(recipe)`): no torch, no config."""
    code = "import sys, lrt; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('lrt')))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "['lrt', 'lrt.train', 'lrt.version']", out


# ---- (c) sizes ---------------------------------------------------------------------------------------
def test_largest_module_and_class():
    too_long = []
    for m, path in MODULES.items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            too_long.append(f"  module {_rel(path)}: {n} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(TREES[m]):
            if isinstance(node, ast.ClassDef):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                size = node.end_lineno - first + 1  # type: ignore[operator]
                if size > MAX_CLASS_LINES:
                    too_long.append(f"  class {_rel(path)}:{node.lineno} {node.name}: {size} lines (max {MAX_CLASS_LINES})")
    print("\n".join(too_long) or "every module and class within the limits")
    assert not too_long, "too long:\n" + "\n".join(too_long)


# ---- (d) "pointwise" is asked of the family, not tested as a string --------------------------------------
def _is_pointwise(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value == "pointwise"
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):  # mode in ("pointwise", ...)
        return any(_is_pointwise(e) for e in node.elts)
    return False


def pointwise_tests(tree: ast.AST) -> list[int]:
    """Lines comparing with the literal "pointwise": ==, !=, in, not in (either side), and
    `case "pointwise":`."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, operands, operands[1:]):
                if isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) and (_is_pointwise(left) or _is_pointwise(right)):
                    lines.append(node.lineno)
                    break
        elif isinstance(node, ast.MatchValue) and _is_pointwise(node.value):
            lines.append(node.lineno)
    return sorted(lines)


def test_pointwise_string_tests_only_in_the_family():
    hits = {}
    for m, path in MODULES.items():
        lines = pointwise_tests(TREES[m])
        if lines:
            hits[_rel(path)] = lines
    bad = [f"  {f}: lines {', '.join(map(str, ls))}" for f, ls in sorted(hits.items()) if f not in POINTWISE_ALLOWED]
    print(f"{sum(len(v) for v in hits.values())} comparisons in {len(hits)} files; outside the family:\n" + "\n".join(bad))
    assert not bad, ('comparisons with "pointwise" outside lrt/families/{__init__,pointwise}.py '
                     "(ask the family: families.get(mode) / families.of_meta(meta)):\n" + "\n".join(bad))


def test_pointwise_detector_sees_every_form():
    src = ('a == "pointwise"\n"pointwise" != b\nc in ("pointwise", "x")\nd not in ["pointwise"]\n'
           'e == "first_token"\nf = {"pointwise": 1}\nmatch g:\n    case "pointwise":\n        pass\n')
    assert pointwise_tests(ast.parse(src)) == [1, 2, 3, 4, 8]


# ---- one source for the version and for "did you mean" ---------------------------------------------------
def _strings(tree: ast.AST) -> list[tuple[str, int]]:
    """Every string literal (f-string parts included) that is not a docstring."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [(n.value, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_the_version_is_written_once():
    from lrt.version import __version__

    bad = [f"  {_rel(MODULES[m])}:{line}" for m, tree in TREES.items() if m != "lrt.version"
           for s, line in _strings(tree) if s == __version__]
    project = REPO.joinpath("pyproject.toml").read_text(encoding="utf-8")
    if f'version = "{__version__}"' in project:
        bad.append('  pyproject.toml: [project] version (use dynamic = ["version"])')
    print("\n".join(bad) or "the version lives in lrt/version.py only")
    assert not bad, f"the version {__version__!r} is written outside lrt/version.py (import lrt.version):\n" + "\n".join(bad)


def test_did_you_mean_is_worded_in_one_place():
    bad = [f"  {_rel(MODULES[m])}:{line}" for m, tree in TREES.items() if m != "lrt.suggest"
           for s, line in _strings(tree) if "did you mean" in s.lower()]
    print("\n".join(bad) or "only lrt/suggest.py words the hint")
    assert not bad, 'write the hint with lrt.suggest.did_you_mean, not by hand:\n' + "\n".join(bad)


def test_import_graph_helpers_agree_with_import_linter_on_a_known_edge():
    """A sanity check of the hand-written graph: edges import-linter also reports."""
    g = import_graph()
    assert "lrt.errors" in g["lrt.configio"] and "lrt.suggest" in g["lrt.configio"]
    assert "lrt.modeling" in g["lrt.objective.module"]


def test_argparse_lives_in_the_cli_only():
    """Library modules take arguments, not argv: every parser is in lrt.cli (one module per command)."""
    bad = []
    for m, tree in TREES.items():
        if m == "lrt.cli" or m.startswith("lrt.cli."):
            continue
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if "argparse" in names:
                bad.append(f"  {_rel(MODULES[m])}:{node.lineno}")
    print("\n".join(bad) or "argparse only in lrt.cli")
    assert not bad, "library modules import argparse (move the parser to lrt/cli/<command>.py):\n" + "\n".join(bad)
