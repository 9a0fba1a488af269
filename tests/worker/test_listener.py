"""The per-message listener's two twins (worker/listener.py, worker/_listener.pyx): the same
surface and the same token bucket. Their frame handling runs end to end in tests/e2e, which
`make test` runs with each twin."""

from __future__ import annotations

import time

import pytest

from chargeyard.worker import listener

SURFACE = {"on_ws_frame", "_take_token", "_process", "_dispatch", "committed"}


def _with_compiled(pure, name):
    """``[pure]``, and the compiled listener module's ``name`` when it is built."""
    try:
        from chargeyard.worker import _listener
    except ImportError:
        return [pure]
    return [pure, getattr(_listener, name)]


def _twins():
    return _with_compiled(listener.Listener, "Listener")


def test_select_follows_the_switches(monkeypatch):
    monkeypatch.setenv("CHARGEYARD_PURE", "1")
    assert listener.select() is listener.Listener
    monkeypatch.delenv("CHARGEYARD_PURE")
    assert listener.select() is _twins()[-1]


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
    twins = _with_compiled(metrics.handle, "observe")
    if len(twins) == 1:
        pytest.skip("the compiled listener is not built")
    observe = twins[1]
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


def _reply_alls():
    from chargeyard.worker import batching
    return _with_compiled(batching.reply_all, "reply_all")


def test_the_worker_replies_with_the_compiled_loop_unless_pure(monkeypatch):
    monkeypatch.setenv("CHARGEYARD_PURE", "1")
    assert listener.select_reply_all() is _reply_alls()[0]
    monkeypatch.delenv("CHARGEYARD_PURE")
    assert listener.select_reply_all() is _reply_alls()[-1]


@pytest.mark.parametrize("reply_all", _reply_alls(), ids=lambda f: type(f).__name__)
def test_reply_all_twins(reply_all, caplog):
    """Replies in order, a failing target logged and skipped, futures resolved unless done,
    and zip's length (the shorter of items and results)."""
    import asyncio

    class Target:
        def __init__(self, fail=False):
            self.got, self.fail = [], fail

        def committed(self, message_id, action, response, t0):
            if self.fail:
                raise RuntimeError("boom")
            self.got.append((message_id, action, response, t0))

    async def main():
        loop = asyncio.get_running_loop()
        a, bad = Target(), Target(fail=True)
        f1, f2 = loop.create_future(), loop.create_future()
        f2.set_result("already")
        cancelled = loop.create_future()
        cancelled.cancel()
        items = [(None, None, 0.0, 1, a, "m1", "MeterValues", "r1", 1.5),
                 ("op", f1, 0.0, 2),
                 (None, None, 0.0, 3, bad, "m2", "MeterValues", "r2", 2.5),
                 ("op", f2, 0.0, 4),
                 ("op", cancelled, 0.0, 5),
                 (None, None, 0.0, 6, a, "m3", "Heartbeat", "r3", 3.5),
                 (None, None, 0.0, 7, a, "m4", "Heartbeat", "r4", 4.5)]  # no result: not answered
        reply_all(items, [None, "one", None, "two", "three", None])
        assert a.got == [("m1", "MeterValues", "r1", 1.5), ("m3", "Heartbeat", "r3", 3.5)]
        assert f1.result() == "one" and f2.result() == "already" and cancelled.cancelled()
    with caplog.at_level("ERROR", logger="chargeyard.worker.batching"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ["reply after commit failed"]


def test_sessions_keep_the_listeners_committed():
    """The compiled reply loop calls a session's C-level _committed directly, so a session
    class must not override committed."""
    from chargeyard.worker.session import Session
    assert "committed" not in vars(Session)


def test_the_compiled_reply_frame_is_the_codecs():
    """An empty-object CALLRESULT is written without the encoder; every id and payload
    gives the codec's bytes (ids that need escaping, non-ASCII ids and payloads with fields
    go to the codec)."""
    try:
        from chargeyard.worker._listener import result
    except ImportError:
        pytest.skip("the pure-Python build")
    import msgspec

    from chargeyard.core.codec import Codec
    from chargeyard.core.messages import v16, v201

    class Tagged(msgspec.Struct, tag="t"):
        pass

    class Array(msgspec.Struct, array_like=True):
        pass
    ids = ["m1", "", "a b", 'q"uote', "back\\slash", "tab\t", "\x7f", "é", "😀", "x" * 36, "~!@#$%^&*()"]
    payloads = [v16.MeterValuesResponse(), v16.StopTransactionResponse(),  # no fields; all fields optional
                v16.StopTransactionResponse(id_tag_info=v16.StopTransactionResponseIdTagInfo(status="Accepted")),
                v16.StatusNotificationResponse(), v201.MeterValuesResponse(),
                v16.HeartbeatResponse(current_time=__import__("datetime").datetime(2026, 1, 1)), {}, {"a": 1},
                Tagged(), Array(), None]
    for version in ("1.6", "2.0.1"):
        codec = Codec(version)
        for mid in ids:
            for payload in payloads:
                assert result(codec, mid, payload) == codec.encode_result(mid, payload), (mid, payload)
