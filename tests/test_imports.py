"""The import graph of chargeyard: no cycles, and imports point one way.

Every ``.py`` and ``.pyx`` (with its ``.pxd`` and the ``.pxi`` files it includes) under
the folders that pyproject's ``package-dir`` maps to ``chargeyard.*`` is read from source,
so lazy imports inside functions, imports under ``TYPE_CHECKING`` and the compiled modules
all count, and so do ``twins.load("chargeyard.x.y")`` and
``importlib.import_module("chargeyard.x.y")`` calls with a literal name. Nothing is
imported to build the graph.

The rules (docs/architecture.md, Layout):

* ``core`` imports nothing of ours;
* ``store`` imports only ``core``;
* ``router`` never imports ``worker``;
* ``worker`` imports only ``core``, ``store`` and ``router.registry``;
* ``services`` imports only ``core`` and ``store`` (the operator API mounts their routes);
* nothing but ``bench`` imports ``bench``;
* and no cycle among the modules, whatever the kind of import.

Importing ``chargeyard.a.b`` also runs ``chargeyard/a/__init__.py``: that implicit edge
counts for cycles, not for the direction rules (they are about what a module names).
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = "chargeyard"
# the subpackage -> the subpackages it may import (besides itself); None: no limit
ALLOWED: dict[str, set[str] | None] = {
    "core": set(),
    "store": {"core"},
    "worker": {"core", "store", "router.registry"},
    "services": {"core", "store"},  # so the router may mount their routes (router never imports worker)
}
FORBIDDEN: dict[str, set[str]] = {"router": {"worker"}}
BENCH = "bench"
# calls whose first argument, a literal module name, is an import
IMPORT_CALLS = {"load", "import_module", "__import__"}


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module (one of ours)
    where: str  # path:line
    implicit: bool = False  # a parent package's __init__, run by importing dst
    note: str = ""  # "in a function", "TYPE_CHECKING", "twins.load(...)"

    def __str__(self) -> str:
        return f"{self.where}: {self.src} -> {self.dst}" + (f" [{self.note}]" if self.note else "")

    def order(self) -> tuple[str, int]:
        path, _, line = self.where.rpartition(":")
        return path, int(line)


@dataclass(repr=False)
class Graph:
    modules: dict[str, Path] = field(default_factory=dict)  # dotted name -> source file
    packages: set[str] = field(default_factory=set)
    edges: list[Edge] = field(default_factory=list)

    def __repr__(self) -> str:  # pytest prints the fixture under a failure
        return f"<Graph: {len(self.modules)} modules, {len(self.edges)} imports>"

    def out(self) -> dict[str, set[str]]:
        adj: dict[str, set[str]] = {m: set() for m in self.modules}
        for e in self.edges:
            if e.src != e.dst:
                adj[e.src].add(e.dst)
        return adj


# -- where the modules are ----------------------------------------------------------------

def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """``chargeyard.x`` -> folder, as pyproject's ``[tool.setuptools.package-dir]`` maps them."""
    with open(root / "pyproject.toml", "rb") as f:
        conf = tomllib.load(f)
    mapping = conf["tool"]["setuptools"].get("package-dir", {})
    return {pkg: root / folder for pkg, folder in mapping.items() if pkg.startswith(TOP)}


def discover(dirs: dict[str, Path]) -> Graph:
    """Every module under the mapped folders (nested folders are subpackages)."""
    g = Graph()
    # deeper mappings first, so chargeyard.core's files are not also claimed by chargeyard
    for pkg, folder in sorted(dirs.items(), key=lambda kv: -kv[0].count(".")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix not in (".py", ".pyx") or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(folder).with_suffix("")
            if any(p.startswith(".") for p in rel.parts):
                continue
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([pkg, *parts])
            if name in g.modules:  # claimed by a deeper mapping
                continue
            g.modules[name] = path
            if path.name == "__init__.py":
                g.packages.add(name)
    return g


# -- reading imports ----------------------------------------------------------------------

def _package_of(module: str, g: Graph) -> str:
    return module if module in g.packages else module.rpartition(".")[0]


def _absolute(module: str, level: int, target: str | None, g: Graph) -> str:
    if not level:
        return target or ""
    base = _package_of(module, g).split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _resolve(name: str, g: Graph) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``a.b.C`` -> ``a.b``)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in g.modules:
            return cand
        parts.pop()
    return None


# (file, line, level, module, names, note): one import statement or literal import call
Raw = tuple[Path, int, int, "str | None", list[str], str]


def _raw_imports(path: Path) -> list[Raw]:
    if path.suffix == ".py":
        return _py_imports(path)
    pxd = path.with_suffix(".pxd")  # a compiled module's declarations cimport too
    return _pyx_imports(path) + (_pyx_imports(pxd) if pxd.is_file() else [])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _py_imports(path: Path) -> list[Raw]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    lazy: set[int] = set()
    typing_only: set[int] = set()
    for node in ast.walk(tree):  # which lines are inside a function, or under TYPE_CHECKING
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            lazy.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                typing_only.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))

    def note(line: int) -> str:
        return "TYPE_CHECKING" if line in typing_only else "in a function" if line in lazy else ""

    out: list[Raw] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((path, node.lineno, 0, a.name, [], note(node.lineno)) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((path, node.lineno, node.level, node.module, [a.name for a in node.names],
                        note(node.lineno)))
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            arg = node.args[0]
            if (fname in IMPORT_CALLS and isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    and arg.value.startswith(TOP + ".")):
                call = f"{fname}({arg.value!r})"
                out.append((path, node.lineno, 0, arg.value, [], call))
                if fname == "load":  # twins.load: the compiled module too
                    pkg, _, leaf = arg.value.rpartition(".")
                    out.append((path, node.lineno, 0, f"{pkg}._{leaf}", [], call))
    return out


_FROM = re.compile(r"^\s*from\s+(\.*)([\w.]*)\s+c?import\s+(.*)$")
_IMPORT = re.compile(r"^\s*c?import\s+(.*)$")
_INCLUDE = re.compile(r"""^\s*include\s+["']([^"']+)["']""")


def _names(tail: str) -> list[str]:
    tail = tail.split("#", 1)[0].strip().strip("()\\")
    return [n.strip().split(" as ")[0].strip() for n in tail.split(",") if n.strip().strip("()")]


def _pyx_imports(path: Path, seen: set[Path] | None = None) -> list[Raw]:
    """Import and cimport lines of a Cython file, and of the ``.pxi`` files it includes."""
    seen = seen if seen is not None else set()
    seen.add(path)
    out: list[Raw] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line, lineno = lines[i], i + 1
        i += 1
        if m := _INCLUDE.match(line):
            inc = (path.parent / m.group(1)).resolve()
            if inc.is_file() and inc not in seen:
                out.extend(_pyx_imports(inc, seen))
            continue
        if m := _FROM.match(line):
            tail = m.group(3)
            if "(" in tail:  # a parenthesised list may span lines
                while ")" not in tail and i < len(lines):
                    tail += " " + lines[i]
                    i += 1
            out.append((path, lineno, len(m.group(1)), m.group(2) or None, _names(tail), ""))
        elif m := _IMPORT.match(line):
            out.extend((path, lineno, 0, n, [], "") for n in _names(m.group(1)))
    return out


def build(root: Path = ROOT) -> Graph:
    g = discover(package_dirs(root))
    for module, path in g.modules.items():
        for file, lineno, level, target, names, note in _raw_imports(path):
            absolute = _absolute(module, level, target, g)
            if absolute != TOP and not absolute.startswith(TOP + "."):
                continue
            dsts = []
            if names:  # from X import a, b: each a submodule X.a, or a name in X
                for n in names:
                    sub = f"{absolute}.{n}"
                    dsts.append(sub if sub in g.modules else absolute)
            else:
                dsts.append(absolute)
            for name in dict.fromkeys(dsts):
                dst = _resolve(name, g)
                if dst is None:
                    continue
                where = f"{file.resolve().relative_to(root.resolve())}:{lineno}"
                g.edges.append(Edge(module, dst, where, note=note))
                # the parent packages' __init__ run too, unless the importer is inside them
                parts = dst.split(".")
                for k in range(1, len(parts)):
                    parent = ".".join(parts[:k])
                    if parent in g.modules and not (module == parent or module.startswith(parent + ".")):
                        g.edges.append(Edge(module, parent, where, implicit=True, note="package __init__"))
    return g


# -- the checks ---------------------------------------------------------------------------

def subpackage(module: str, g: Graph) -> str:
    """``chargeyard.store.sqlite.wal`` -> ``store``; the top-level modules (app/) -> ``app``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and f"{TOP}.{parts[1]}" in g.packages else "app"


def _matches(dst: str, allowed: str) -> bool:
    full = f"{TOP}.{allowed}"
    return dst == full or dst.startswith(full + ".")


def violations(g: Graph) -> list[str]:
    bad = []
    for e in sorted(set(g.edges), key=Edge.order):
        if e.implicit:
            continue
        src, dst = subpackage(e.src, g), subpackage(e.dst, g)
        if src == dst:
            continue
        if dst == BENCH:
            bad.append(f"{e}  (nothing but bench imports bench)")
            continue
        allowed = ALLOWED.get(src)
        if allowed is not None and not any(_matches(e.dst, a) for a in allowed):
            bad.append(f"{e}  ({src} may import only {', '.join(sorted(allowed)) or 'nothing of ours'})")
        if any(_matches(e.dst, f) for f in FORBIDDEN.get(src, ())):
            bad.append(f"{e}  ({src} never imports {', '.join(sorted(FORBIDDEN[src]))})")
    return bad


def strongly_connected(adj: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for start in sorted(adj):
        if start in index:
            continue
        work = [(start, iter(sorted(adj[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(adj[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))
    return comps


def cycles(g: Graph) -> list[str]:
    """One line per cycle group: its modules, and the import lines that join them."""
    adj = g.out()
    out = []
    for comp in strongly_connected(adj):
        members = set(comp)
        edges = {e for e in g.edges if e.src in members and e.dst in members and e.src != e.dst}
        lines = [str(e) for e in sorted(edges, key=Edge.order)]
        out.append(f"cycle among {', '.join(comp)}:\n    " + "\n    ".join(lines))
    return out


# -- the tests ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph() -> Graph:
    return build()


def test_the_graph_covers_the_product(graph):
    # a scanner that finds nothing would pass everything
    subs = {subpackage(m, graph) for m in graph.modules}
    assert {"app", "core", "worker", "router", "store"} <= subs, subs
    assert any(m.endswith("._codec") for m in graph.modules), "the .pyx modules are read too"
    assert any(subpackage(e.src, graph) == "worker" and subpackage(e.dst, graph) == "core"
               for e in graph.edges)


def test_no_import_cycles(graph):
    found = cycles(graph)
    if found:
        pytest.fail("import cycles (lazy and TYPE_CHECKING imports count):\n" + "\n".join(found),
                    pytrace=False)


def test_imports_point_one_way(graph):
    bad = violations(graph)
    if bad:
        pytest.fail("imports against the layering (docs/architecture.md):\n" + "\n".join(bad), pytrace=False)


# -- the checker itself, on a made-up tree --------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Graph:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.package-dir]\n"chargeyard" = "app"\n"chargeyard.core" = "core"\n'
        '"chargeyard.worker" = "worker"\n"chargeyard.store" = "store"\n"chargeyard.router" = "router"\n'
        '"chargeyard.bench" = "bench"\n')
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for folder in ("app", "core", "worker", "store", "router", "bench"):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    return build(tmp_path)


def test_checker_sees_lazy_type_checking_and_cython_imports(tmp_path):
    g = _tree(tmp_path, {
        "worker/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "worker/b.py": "def f():\n    from chargeyard.worker import c\n",
        "worker/c.py": "import chargeyard.worker.a as a\n",
        "store/x.py": "from ..core import twins\nR = twins.load('chargeyard.store.y')\n",
        "store/y.py": "",
        "store/_y.pyx": "from libc.string cimport memcpy\nfrom .x import (\n    R,\n)\ninclude 'z.pxi'\n",
        "store/z.pxi": "from chargeyard.router import api\n",
        "store/_y.pxd": "from chargeyard.core.twins cimport T\n",
        "core/twins.py": "",
        "router/api.py": "",
    })
    edges = {(e.src, e.dst) for e in g.edges if not e.implicit}
    assert {("chargeyard.worker.a", "chargeyard.worker.b"), ("chargeyard.worker.b", "chargeyard.worker.c"),
            ("chargeyard.worker.c", "chargeyard.worker.a"), ("chargeyard.store.x", "chargeyard.core.twins"),
            ("chargeyard.store.x", "chargeyard.store.y"), ("chargeyard.store.x", "chargeyard.store._y"),
            ("chargeyard.store._y", "chargeyard.store.x"),
            ("chargeyard.store._y", "chargeyard.router.api"),
            ("chargeyard.store._y", "chargeyard.core.twins")} <= edges, edges
    found = cycles(g)
    assert len(found) == 2, found
    assert any("among chargeyard.worker.a, chargeyard.worker.b, chargeyard.worker.c:" in c for c in found)
    assert any("among chargeyard.store._y, chargeyard.store.x:" in c for c in found)
    bad = violations(g)
    assert len(bad) == 1, bad
    assert bad[0].startswith("store/z.pxi:1: chargeyard.store._y -> chargeyard.router.api"), bad


def test_checker_direction_rules(tmp_path):
    g = _tree(tmp_path, {
        "core/c.py": "import chargeyard.store.s\n",
        "store/s.py": "from chargeyard.core import c\nfrom chargeyard.router.registry import R\n",
        "router/registry.py": "", "router/api.py": "def f():\n    import chargeyard.worker.w\n",
        "worker/w.py": "from chargeyard.router.registry import R\nfrom chargeyard.store import s\n"
                       "from chargeyard.core.c import x\nfrom chargeyard.router import api\n",
        "app/cli.py": "from chargeyard.bench.cli import main\nimport chargeyard.worker.w\n",
        "bench/cli.py": "from chargeyard.store import s\n",
    })
    bad = "\n".join(violations(g))
    for expected in ("core/c.py:1: chargeyard.core.c -> chargeyard.store.s",
                     "store/s.py:2: chargeyard.store.s -> chargeyard.router.registry",
                     "router/api.py:2: chargeyard.router.api -> chargeyard.worker.w",
                     "worker/w.py:4: chargeyard.worker.w -> chargeyard.router.api",
                     "app/cli.py:1: chargeyard.cli -> chargeyard.bench.cli"):
        assert expected in bad, bad
    assert len(violations(g)) == 5, bad
