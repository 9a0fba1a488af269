"""core/twins.py: which of a compiled module and its pure-Python twin ``load`` returns,
under each environment switch and each forced choice, and the ``twin`` fixture built on it.

A made-up package stands in for the real pairs (so these tests do not depend on which
extensions exist or are being moved): ``thing`` has a "compiled" ``_thing``, ``loose`` has
none (not built), and ``_broken`` exists but fails to import.
"""

from __future__ import annotations

import sys

import pytest

from chargeyard.core import twins
from tests.conftest import Twin

PKG = "chargeyard_twins_fixture_pkg"


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    d = root / PKG
    d.mkdir()
    (d / "__init__.py").write_text("")
    (d / "thing.py").write_text("IMPL = 'pure'\n")
    (d / "_thing.py").write_text("IMPL = 'compiled'\n")
    (d / "loose.py").write_text("IMPL = 'pure'\n")
    (d / "broken.py").write_text("IMPL = 'pure'\n")
    (d / "_broken.py").write_text("from math import no_such_name\n")
    sys.path.insert(0, str(root))
    yield PKG
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
        del sys.modules[name]


@pytest.fixture
def env(monkeypatch):
    """A clean slate: neither switch set; ``env(PURE=..., REQUIRE_EXT=...)`` sets them."""
    monkeypatch.delenv("CHARGEYARD_PURE", raising=False)
    monkeypatch.delenv("CHARGEYARD_REQUIRE_EXT", raising=False)

    def set_(**kw: str) -> None:
        for k, v in kw.items():
            monkeypatch.setenv(f"CHARGEYARD_{k}", v)

    return set_


def test_compiled_name():
    assert twins.compiled_name("chargeyard.store.logrows") == "chargeyard.store._logrows"
    assert twins.compiled_name("chargeyard.store.sqlite.wal") == "chargeyard.store.sqlite._wal"


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("YES", True), ("True", True),
                                       ("0", False), ("", False), ("no", False), ("false", False)])
def test_switches_read_the_environment(env, value, on):
    env(PURE=value, REQUIRE_EXT=value)
    assert twins.pure_requested() is on
    assert twins.require_ext() is on


def test_default_is_the_compiled_module(pkg, env):
    assert twins.load(f"{pkg}.thing").IMPL == "compiled"


def test_pure_switch_selects_the_twin(pkg, env):
    env(PURE="1")
    assert twins.load(f"{pkg}.thing").IMPL == "pure"


def test_not_built_falls_back_to_the_twin(pkg, env):
    assert twins.load(f"{pkg}.loose").IMPL == "pure"


def test_require_ext_makes_not_built_an_error(pkg, env):
    env(REQUIRE_EXT="1")
    with pytest.raises(ImportError):
        twins.load(f"{pkg}.loose")
    assert twins.load(f"{pkg}.thing").IMPL == "compiled"


def test_require_ext_with_pure_switch_gives_the_twin(pkg, env):
    # the pure run of `make test` may also set REQUIRE_EXT: the twins are what it asked for
    env(PURE="1", REQUIRE_EXT="1")
    assert twins.load(f"{pkg}.loose").IMPL == "pure"


def test_forced_choices_ignore_the_environment(pkg, env):
    env(PURE="1")
    assert twins.load(f"{pkg}.thing", pure=False).IMPL == "compiled"
    env(PURE="0", REQUIRE_EXT="1")
    assert twins.load(f"{pkg}.thing", pure=True).IMPL == "pure"
    assert twins.load(f"{pkg}.loose", pure=True).IMPL == "pure"


def test_forced_compiled_that_is_not_built_raises(pkg, env):
    with pytest.raises(ImportError):
        twins.load(f"{pkg}.loose", pure=False)


def test_the_fixture_loads_each_side(pkg, twin):
    assert twin(f"{pkg}.thing").IMPL == twin.id
    assert twin.load(f"{pkg}.thing") is twins.load(f"{pkg}.thing", pure=twin.pure)


def test_the_fixture_skips_a_compiled_module_not_built(pkg, env):
    with pytest.raises(pytest.skip.Exception, match="not built"):
        Twin(pure=False)(f"{pkg}.loose")
    assert Twin(pure=True)(f"{pkg}.loose").IMPL == "pure"


def test_the_fixture_fails_when_the_extension_is_required(pkg, env):
    env(REQUIRE_EXT="1")
    with pytest.raises(ModuleNotFoundError):
        Twin(pure=False)(f"{pkg}.loose")


def test_the_fixture_never_skips_a_broken_extension(pkg, env):
    # present but failing to import is a bug, not "not built"
    with pytest.raises(ImportError, match="no_such_name"):
        Twin(pure=False)(f"{pkg}.broken")
