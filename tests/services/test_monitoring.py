"""services/monitoring: the six alert kinds on a deterministic clock, and restarts."""

from __future__ import annotations

import asyncio
import datetime as dt

from chargeyard.services.monitoring import Monitor, MonitorSettings
from chargeyard.services.monitoring.service import GROUP, Monitoring
from chargeyard.store import events as ev

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self, t: dt.datetime = T0) -> None:
        self.t = t.timestamp()

    def __call__(self) -> float:
        return self.t

    def at(self, seconds: float) -> dt.datetime:
        """The event time ``seconds`` after T0, and the clock moved there."""
        self.t = T0.timestamp() + seconds
        return T0 + dt.timedelta(seconds=seconds)


S = MonitorSettings(offline_after=120, heartbeat_interval=60, stall_after=900, max_kw=22, auth_failures=3,
                    auth_window=300)


def open_kinds(m: Monitor) -> list[tuple[str, str, str]]:
    return sorted(m.open)


def step(m: Monitor, *events: ev.Event) -> list:
    for e in events:
        m.apply(e)
    m.tick()
    return m.take_changes()[0]


def test_offline_after_threshold_and_cleared_on_reconnect():
    c = Clock()
    m = Monitor(S, c)
    step(m, ev.connected("cp", c.at(0), "ocpp1.6", 1))
    step(m, ev.disconnected("cp", c.at(10), 1, "lost"))
    c.at(129.9)
    assert step(m) == [] and open_kinds(m) == []
    c.at(130)
    (a,) = step(m)
    assert (a.kind, a.charger_id, a.cleared_at, a.raised_at) == ("charger_offline", "cp", None,
                                                                 "2025-03-01T08:02:10.000Z")
    (b,) = step(m, ev.connected("cp", c.at(200), "ocpp1.6", 2))
    assert b.id == a.id and b.cleared_at == "2025-03-01T08:03:20.000Z"
    assert open_kinds(m) == []


def test_takeover_is_not_an_outage():
    c = Clock()
    m = Monitor(S, c)
    step(m, ev.connected("cp", c.at(0), "ocpp1.6", 1))
    # same node: the old session closes as a takeover
    step(m, ev.disconnected("cp", c.at(5), 1, "takeover"), ev.connected("cp", c.at(5), "ocpp1.6", 2))
    # across nodes, the new connection may be reported before the old one's close
    step(m, ev.connected("cp", c.at(6), "ocpp1.6", 3), ev.disconnected("cp", c.at(6.5), 2, "lost"))
    c.at(1000)
    changed = step(m, ev.heartbeat("cp", c.at(1000)))
    assert changed == [] and open_kinds(m) == []


def test_no_heartbeat_after_three_intervals():
    c = Clock()
    m = Monitor(S, c)
    step(m, ev.connected("cp", c.at(0), "ocpp1.6", 1), ev.heartbeat("cp", c.at(10)))
    c.at(189)
    assert step(m) == []
    c.at(190)
    (a,) = step(m)
    assert a.kind == "no_heartbeat"
    (b,) = step(m, ev.heartbeat("cp", c.at(200)))
    assert b.kind == "no_heartbeat" and b.cleared_at is not None


def test_connector_faulted_and_cleared_by_available():
    c = Clock()
    m = Monitor(S, c)
    (a,) = step(m, ev.status("cp", c.at(0), 0, 1, "Faulted", "GroundFailure"))
    assert (a.kind, a.connector_id, a.detail["error_code"]) == ("connector_faulted", 1, "GroundFailure")
    assert step(m, ev.status("cp", c.at(1), 0, 2, "Available")) == []  # another connector
    assert step(m, ev.status("cp", c.at(2), 0, 1, "Faulted", "GroundFailure")) == []  # already open
    (b,) = step(m, ev.status("cp", c.at(3), 0, 1, "Available"))
    assert b.id == a.id and b.cleared_at is not None


def test_transaction_stalled():
    c = Clock()
    m = Monitor(S, c)
    step(m, ev.tx_started("cp", c.at(0), "7", 1, "TAG", 0.0), ev.tx_meter("cp", c.at(60), "7", 1, 100.0))
    c.at(959)
    assert step(m) == []
    c.at(960)
    (a,) = step(m)
    assert (a.kind, a.detail["transaction_id"]) == ("transaction_stalled", "7")
    (b,) = step(m, ev.tx_meter("cp", c.at(961), "7", 1, 200.0))
    assert b.cleared_at is not None
    step(m, ev.tx_ended("cp", c.at(962), "7", 200.0))
    c.at(5000)
    assert step(m) == []


def test_meter_anomaly_backwards_and_jump():
    c = Clock()
    m = Monitor(S, c)
    step(m, ev.tx_started("cp", c.at(0), "7", 1, "TAG", 1000.0))
    # 22 kW for 60 s = 366.7 Wh at most
    assert step(m, ev.tx_meter("cp", c.at(60), "7", 1, 1366.0)) == []
    (a,) = step(m, ev.tx_meter("cp", c.at(120), "7", 1, 1300.0))
    assert (a.kind, a.detail["reason"]) == ("meter_anomaly", "backwards")
    (b,) = step(m, ev.tx_ended("cp", c.at(121), "7"))
    assert b.cleared_at is not None
    step(m, ev.tx_started("cp", c.at(200), "8", 1, "TAG", 0.0))
    (j,) = step(m, ev.tx_meter("cp", c.at(260), "8", 1, 1000.0))
    assert j.detail["reason"] == "jump" and j.detail["max_kw"] == 22
    # a late, older reading is no anomaly
    step(m, ev.tx_started("cp", c.at(300), "9", 1, "TAG", 0.0), ev.tx_meter("cp", c.at(400), "9", 1, 50.0))
    assert step(m, ev.tx_meter("cp", c.at(350), "9", 1, 10.0)) == []


def test_auth_failures_window():
    c = Clock()
    m = Monitor(S, c)
    assert step(m, ev.security_event("cp", c.at(0), "IdTagRejected"), ev.security_event("cp", c.at(1), "LoginFailed")) == []
    assert step(m, ev.security_event("cp", c.at(2), "SettingSystemTime")) == []  # not an auth failure
    (a,) = step(m, ev.security_event("cp", c.at(3), "IdTagRejected"))
    assert a.kind == "auth_failures" and a.detail["failures"] == 3
    c.at(302)
    assert step(m) == []  # 0 s and 1 s left the window; the one at 3 s keeps it open
    c.at(304)
    (b,) = step(m)
    assert b.cleared_at is not None


def test_state_survives_a_restart(services_store):
    async def main():
        c = Clock()
        async with services_store() as store:
            mon = await Monitoring(store, S, clock=c).open()
            await mon.handle([ev.connected("cp", c.at(0), "ocpp1.6", 1), ev.status("cp", c.at(0), 0, 1, "Faulted")])
            d = ev.disconnected("cp", c.at(10), 1, "lost")
            await mon.handle([d])
        async with services_store() as store:  # restarted
            mon = await Monitoring(store, S, clock=c).open()
            assert [k for k, _, _ in mon.monitor.open] == ["connector_faulted"]
            assert await mon.handle([d]) == []  # a redelivered event is skipped
            c.at(130)
            (a,) = await mon.tick()  # the timer that ran before the restart fires
            assert a.kind == "charger_offline"
            active = await store.list_alerts(active=True)
            assert sorted(x.kind for x in active) == ["charger_offline", "connector_faulted"]
            await mon.handle([ev.status("cp", c.at(131), 0, 1, "Available"), ev.connected("cp", c.at(131), "x", 2)])
            assert await store.list_alerts(active=True) == []
            assert len(await store.list_alerts(charger_id="cp")) == 2
            assert all(x.api()["cleared_at"] for x in await store.list_alerts())
    asyncio.run(main())


def test_a_replayed_run_of_transaction_events_changes_nothing(services_store):
    """Transaction events are applied without an id check (nearly every event is a reading:
    none is looked up or kept by id). A replayed run of them (a relay publishing again after
    its restart, perhaps after another worker's newer events) changes no state and raises
    nothing: not even a late reading of an ended transaction, which must not come back to
    stall. Charger events keep the id check: a replayed Faulted does not raise again."""
    async def main():
        c = Clock()
        async with services_store() as store:
            mon = await Monitoring(store, S, clock=c).open()
            run = [ev.connected("cp", c.at(0), "ocpp1.6", 1), ev.tx_started("cp", c.at(0), "7", 1, meter_start_wh=0),
                   ev.tx_meter("cp", c.at(60), "7", 1, 100.0), ev.tx_meter("cp", c.at(120), "7", 1, 200.0),
                   ev.tx_ended("cp", c.at(180), "7", 300.0)]
            assert await mon.handle(run) == []
            faulted = ev.status("cp", c.at(200), 0, 1, "Faulted")
            (a,) = await mon.handle([faulted, ev.status("cp", c.at(201), 0, 1, "Available")])
            assert a.kind == "connector_faulted" and a.cleared_at  # raised and cleared in one batch
            # the readings were never kept by id; the charger events were
            assert await store.seen(GROUP, [e.id for e in run[2:4]]) == set()
            assert await store.seen(GROUP, [run[0].id, faulted.id]) == {run[0].id, faulted.id}
            assert await mon.handle(run[2:4]) == []  # late readings of the ended transaction
            assert mon.monitor.chargers["cp"].txs == {}
            assert await mon.handle(run[1:] + [faulted]) == []  # the whole run again
            assert mon.monitor.chargers["cp"].txs == {}
            c.at(180 + 3600)  # far past stall_after: no transaction stalls (the charger is silent)
            assert [a.kind for a in await mon.tick()] == ["no_heartbeat"]
    asyncio.run(main())
