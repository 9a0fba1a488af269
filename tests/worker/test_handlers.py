"""The handler tables (``worker/handlers/``): one named function per charger-initiated
action of each version, and the modules of the worker import each other one way."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from chargeyard.core.directions import CHARGER_INITIATED
from chargeyard.core.messages import v16, v21, v201
from chargeyard.router.registry import LocalRegistry
from chargeyard.worker.authorization import Authorization
from chargeyard.worker.writer import BatchWriter
from chargeyard.worker.events import Events
from chargeyard.worker.handlers import all_handlers, ocpp16, ocpp21, ocpp201
from chargeyard.worker.handlers.common import Fixed
from chargeyard.worker.leniency import Leniency
from chargeyard.worker.services import Services
from chargeyard.worker.settings import WorkerSettings
from chargeyard.worker.txids import TxIds

WORKER = Path(__file__).resolve().parents[2] / "worker"
MESSAGES = {"1.6": v16, "2.0.1": v201, "2.1": v21}
MODULES = {"1.6": ocpp16, "2.0.1": ocpp201, "2.1": ocpp21}


@pytest.fixture(scope="module")
def tables():
    store = object()
    services = Services(WorkerSettings(), BatchWriter(store), Authorization(store, False),  # type: ignore[arg-type]
                        TxIds(store), Leniency(), Events(LocalRegistry(), "w", lambda coro: None))  # type: ignore[arg-type]
    return all_handlers(services)


@pytest.mark.parametrize("version", list(MESSAGES))
def test_every_charger_initiated_action_has_a_handler(tables, version):
    messages = MESSAGES[version]
    expected = {a for a in CHARGER_INITIATED[version] if a in messages.REQUESTS}
    assert set(tables[version]) == expected


@pytest.mark.parametrize("version", list(MESSAGES))
def test_handlers_are_named_functions_of_their_module(tables, version):
    """A handler is a module-level function with a name that says what it handles, a
    fixed default answer, or (1.6 MeterValues) the compiled common path bound per worker."""
    for action, handler in tables[version].items():
        if isinstance(handler, Fixed):
            response = handler.response
            assert response is None or type(response) is MESSAGES[version].RESPONSES[action], action
            continue
        if version == "1.6" and action == "MeterValues":
            assert handler.__name__ == "meter_values"
            continue
        assert inspect.isfunction(handler) and handler.__name__ != "<lambda>", action
        assert handler.__module__.startswith("chargeyard.worker.handlers.ocpp"), action
        params = list(inspect.signature(handler).parameters)
        assert params[:2] == ["session", "req"], action


def _imports(path: Path) -> set[str]:
    """The modules a file imports, as dotted names; relative imports resolved inside
    ``chargeyard.worker``. Every import counts, those under TYPE_CHECKING too."""
    package = ["chargeyard", "worker", *path.parent.relative_to(WORKER).parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _worker_modules(path: Path) -> set[str]:
    """The ``chargeyard.worker`` modules (first level) a file imports."""
    prefix = "chargeyard.worker."
    return {name[len(prefix):].split(".")[0] for name in _imports(path) if name.startswith(prefix)}


def test_handlers_session_and_server_do_not_import_each_other():
    for f in sorted((WORKER / "handlers").glob("*.py")):
        assert not {"session", "server", "listener"} & _worker_modules(f), f.name
    assert not {"server", "handlers"} & _worker_modules(WORKER / "session.py")
    for f in WORKER.glob("*.py"):
        if f.name != "server.py":
            assert "server" not in _worker_modules(f), f.name


def test_the_worker_imports_only_core_store_and_the_registry():
    """Not the app (``chargeyard`` top-level modules), nor the router beyond its registry."""
    for f in [*WORKER.glob("*.py"), *(WORKER / "handlers").glob("*.py")]:
        for name in _imports(f):
            if not name.startswith("chargeyard"):
                continue
            parts = name.split(".")
            assert len(parts) > 1 and parts[1] in ("core", "store", "worker", "router"), (f.name, name)
            if parts[1] == "router":
                assert parts[:3] == ["chargeyard", "router", "registry"], (f.name, name)
