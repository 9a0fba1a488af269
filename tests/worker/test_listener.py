"""The per-message listener's two twins (worker/listener.py, worker/_listener.pyx): the same
surface and the same token bucket. Their frame handling runs end to end in tests/e2e, which
`make test` runs with each twin; the reply bytes are the codec's (tests/core/test_codec.py),
the writer's reply loop is in tests/worker/test_writer.py."""

from __future__ import annotations

import time

import pytest

from chargeyard.core import twins
from chargeyard.worker import listener
from tests.support import twin_modules

SURFACE = {"on_ws_frame", "_take_token", "_process", "_dispatch", "committed"}


def _with_compiled(pure, name):
    """``[pure]``, and the compiled listener module's ``name`` when it is built (required
    under ``CHARGEYARD_REQUIRE_EXT``)."""
    return [pure] + [getattr(m, name) for m in twin_modules("chargeyard.worker.listener")[1:]]


def _twins():
    return _with_compiled(listener.Listener, "Listener")


def test_sessions_take_the_compiled_listener_unless_pure(monkeypatch):
    monkeypatch.setenv("CHARGEYARD_PURE", "1")
    assert twins.load("chargeyard.worker.listener").Listener is listener.Listener
    monkeypatch.delenv("CHARGEYARD_PURE")
    assert twins.load("chargeyard.worker.listener").Listener is _twins()[-1]
    from chargeyard.worker import session
    assert session.Listener in _twins() and session.LISTENER_IMPL == session.Listener.impl


def test_twins_share_fields_and_methods():
    twins = _twins()
    for cls in twins:
        assert SURFACE <= set(dir(cls)), cls
        for field in listener.Listener.__slots__:
            assert hasattr(cls, field), (cls, field)


@pytest.mark.parametrize("cls", _twins(), ids=lambda c: c.impl)
def test_token_bucket(cls):
    lis = cls()
    lis._rate, lis._burst, lis._tokens, lis._last = 100.0, 3.0, 3.0, time.monotonic()
    assert [lis._take_token() for _ in range(4)] == [True, True, True, False]
    start = lis._last
    assert abs(start - time.monotonic()) < 0.05  # the same clock as time.monotonic
    time.sleep(0.05)  # 100/s: about 5 tokens back, capped at the burst of 3
    assert [lis._take_token() for _ in range(4)] == [True, True, True, False]
    assert 0.0 <= lis._tokens < 1.0


def test_the_handle_histogram_is_counted_alike():
    """The compiled listener counts chargeyard_ocpp_handle_duration_seconds without calling
    metrics.handle: the same buckets (bisect_left of the bounds) and sum."""
    from chargeyard.worker import metrics
    impls = _with_compiled(metrics.handle, "observe")
    if len(impls) == 1:
        pytest.skip("the compiled listener is not built")
    observe = impls[1]
    values = [0.0, 1e-9, 2.6, 100.0]
    for b in metrics.handle.BOUNDS:
        values += [b, b * (1 - 1e-12), b * (1 + 1e-12)]
    for action, count in (("TwinA", metrics.handle), ("TwinB", observe)):
        metrics.handle.data.pop(action, None)
        for v in values:
            count(action, v)
    a, b = metrics.handle.data["TwinA"], metrics.handle.data["TwinB"]
    assert a == b and sum(a[:-1]) == len(values)
    del metrics.handle.data["TwinA"], metrics.handle.data["TwinB"]


def test_sessions_keep_the_listeners_committed():
    """The compiled reply loop calls a session's C-level _committed directly, so a session
    class must not override committed."""
    from chargeyard.worker.session import Session
    assert "committed" not in vars(Session)
