"""Packaging: what pyproject.toml and setup.py declare matches the tree, and a normal
(non-editable) wheel holds one import package, ``chargeyard``, with every compiled
extension setup.py lists, and works when unpacked outside the source tree.

Nothing here names an extension or a package: the lists come from setup.py and
pyproject.toml, so moving or adding a module changes the test with it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
with open(ROOT / "pyproject.toml", "rb") as _f:
    PYPROJECT = tomllib.load(_f)
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
PACKAGES: list[str] = SETUPTOOLS["packages"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS.get("package-dir", {})
PACKAGE_DATA: dict[str, list[str]] = SETUPTOOLS.get("package-data", {})

# setup.py run with setup() and cythonize() replaced: its Extension objects, unbuilt
_LIST_EXTENSIONS = """
import json, runpy, sys
import setuptools, Cython.Build
seen = {}
Cython.Build.cythonize = lambda exts, *a, **kw: exts
setuptools.setup = lambda **kw: seen.update(kw)
sys.argv = ["setup.py"]
runpy.run_path("setup.py", run_name="__main__")
print(json.dumps([[e.name, list(e.sources)] for e in seen.get("ext_modules") or []]))
"""


def folder_of(package: str) -> Path:
    """The source folder of a package, as setuptools maps it (the nearest package-dir)."""
    parts = package.split(".")
    for k in range(len(parts), 0, -1):
        head = ".".join(parts[:k])
        if head in PACKAGE_DIR:
            return ROOT / PACKAGE_DIR[head] / Path(*parts[k:])
    return ROOT / Path(*parts)


def setup_extensions() -> dict[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "CHARGEYARD_NO_EXT"}
    res = subprocess.run([sys.executable, "-c", _LIST_EXTENSIONS], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


EXTENSIONS = setup_extensions()


def test_setup_builds_every_cython_module_in_the_tree():
    assert EXTENSIONS, "setup.py lists no extension"
    listed = {src for sources in EXTENSIONS.values() for src in sources if src.endswith(".pyx")}
    in_tree = {p.relative_to(ROOT).as_posix() for pkg in PACKAGE_DIR.values()
               for p in (ROOT / pkg).rglob("*.pyx")}
    assert listed == in_tree, f"only in setup.py: {listed - in_tree}; never built: {in_tree - listed}"
    for name, sources in EXTENSIONS.items():
        pkg, _, leaf = name.rpartition(".")
        assert pkg in PACKAGES, f"{name}: its package {pkg} is not in pyproject's packages"
        # the compiled module sits beside its twin (core/twins.py's convention)
        assert (folder_of(pkg) / f"{leaf}.pyx").as_posix() == (ROOT / sources[0]).as_posix(), (name, sources)


def test_every_package_in_the_tree_is_listed():
    in_tree = set()
    for pkg, folder in PACKAGE_DIR.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            in_tree.add(".".join([pkg, *rel]))
    listed = set(PACKAGES)
    assert in_tree <= listed, f"packages missing from pyproject.toml: {sorted(in_tree - listed)}"
    assert all(folder_of(p).is_dir() for p in listed), [p for p in listed if not folder_of(p).is_dir()]


def test_package_data_lists_only_what_exists():
    for pkg, patterns in PACKAGE_DATA.items():
        assert pkg in PACKAGES, f"package-data for {pkg}, which is not a listed package"
        for pattern in patterns:
            assert list(folder_of(pkg).glob(pattern)), f"{pkg}: {pattern!r} matches nothing"


def test_make_test_selects_suites_that_exist():
    make = (ROOT / "Makefile").read_text()
    m = re.search(r"^PURE_SUITES\s*:?=\s*(.+)$", make, re.M)
    assert m, "Makefile: PURE_SUITES"
    for path in m.group(1).split():
        target = ROOT / path
        tests = [target] if target.is_file() else list(target.rglob("test_*.py"))
        assert tests, f"Makefile's PURE_SUITES names {path}, which holds no tests"


def test_wheel_layout_and_import(tmp_path):
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, timeout=600, cwd=tmp_path)
    wheel = next(out.glob("chargeyard-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        z.extractall(tmp_path / "site")
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"chargeyard"}, tops

    for ext in EXTENSIONS:  # every compiled module setup.py builds
        stem = ext.replace(".", "/")
        assert any(re.fullmatch(re.escape(stem) + r"\.[^/]*so", n) for n in names), f"{ext} not in the wheel"
    for pkg in PACKAGES:
        prefix = pkg.replace(".", "/") + "/"
        if (folder_of(pkg) / "__init__.py").exists():
            assert prefix + "__init__.py" in names, pkg
        else:  # a data folder (no __init__): its files are there
            assert any(n.startswith(prefix) for n in names), pkg
    for pkg, patterns in PACKAGE_DATA.items():
        for pattern in patterns:
            for f in folder_of(pkg).glob(pattern):
                assert pkg.replace(".", "/") + "/" + f.name in names, f"{f.name} of {pkg} not in the wheel"
    assert re.search(r"^chargeyard = chargeyard\.cli:main$", entry_points, re.M), entry_points
    assert re.search(r"^chargeyard-bench = chargeyard\.bench\.cli:main$", entry_points, re.M), entry_points

    # unpacked outside the tree: every module imports from there, the extensions compiled
    site = tmp_path / "site"
    modules = sorted({n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")})
    code = f"""
import importlib, sys
sys.path.insert(0, {str(site)!r})
site, failed = {str(site)!r}, []
for name in {sorted(EXTENSIONS)!r}:
    m = importlib.import_module(name)
    assert m.__file__.startswith(site) and m.__file__.endswith(".so"), m.__file__
for name in {modules!r}:
    try:
        m = importlib.import_module(name)
    except ModuleNotFoundError as exc:  # an optional extra (e.g. scylla) not installed
        if exc.name.split(".")[0] == "chargeyard":
            failed.append(f"{{name}}: {{exc!r}}")
        continue
    except Exception as exc:
        failed.append(f"{{name}}: {{exc!r}}")
        continue
    if not m.__file__.startswith(site):
        failed.append(f"{{name}} loaded from {{m.__file__}}")
assert not failed, "\\n".join(failed)
import chargeyard.core as c
print(c.Codec('2.0.1').decode(b'[2,"1","Heartbeat",{{}}]'))
"""
    env = dict(os.environ, CHARGEYARD_REQUIRE_EXT="1", CHARGEYARD_PURE="")
    res = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-5000:]
    assert "HeartbeatRequest" in res.stdout


def test_no_placeholder_packages():
    """A listed package holds code or data: not just an ``__init__.py`` with a docstring."""
    empty = []
    for pkg in PACKAGES:
        folder = folder_of(pkg)
        others = [p for p in folder.iterdir() if p.name != "__init__.py" and p.name != "__pycache__"]
        init = folder / "__init__.py"
        body = ast.parse(init.read_text()).body if init.exists() else []
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        if not others and not body:
            empty.append(pkg)
    assert not empty, f"placeholder packages: {empty}"
