"""The alert state machine: events in, alerts raised and cleared; pure logic.

| kind                  | raised when                                                   | cleared when |
|-----------------------|---------------------------------------------------------------|--------------|
| `charger_offline`     | disconnected and not back within `offline_after` (a takeover, | it connects again |
|                       | or the close of a connection older than the current one, is not an outage) | |
| `no_heartbeat`        | connected and nothing heard for 3 x the heartbeat interval     | anything heard, or a disconnect (offline takes over) |
| `connector_faulted`   | status Faulted                                                 | a non-faulted status |
| `transaction_stalled` | active and no meter value for `stall_after`                    | a meter value, or the end |
| `meter_anomaly`       | the register goes backwards, or rises faster than `max_kw`     | the transaction ends |
| `auth_failures`       | `auth_failures` rejected id tags / failed logins within `auth_window` | `auth_window` without one |

When a fact happened is the event's ``time`` (the charger's clock where OCPP gives one);
"now" is the injected ``clock`` (seconds since the epoch), so the timers are deterministic
in tests. ``tick()`` checks the timers; call it after applying each batch of events (so an
event that is already in the batch, e.g. a reconnect after a backlog, wins over a timer).

State is kept per charger in msgspec Structs; ``take_changes()`` hands over the alerts
that changed and the encoded state of every charger touched, which the service stores
in one transaction with the events' ids; ``restore()`` loads them after a restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from typing import Any, Callable

import msgspec

from ...store.events import (ChargerConnected, ChargerDisconnected, ChargerSecurityEvent, ChargerStatus, Event,
                             TransactionEnded, TransactionMeter, TransactionStarted, data_of)

KINDS = ("charger_offline", "no_heartbeat", "connector_faulted", "transaction_stalled", "meter_anomaly",
         "auth_failures")

# security event types that count as authentication failures: the CSMS's own (rejected id
# tags, refused logins) and OCPP 2.0.1's SecurityEventNotification types of that nature
AUTH_FAILURE_TYPES = frozenset({"IdTagRejected", "LoginFailed", "FailedToAuthenticateAtCsms",
                                "CSMSFailedToAuthenticate", "InvalidChargingStationCertificate"})


class MonitorSettings(msgspec.Struct, frozen=True, kw_only=True):
    offline_after: float = 120.0  # --offline-after
    heartbeat_interval: float = 300.0  # --heartbeat-interval (no_heartbeat after 3x)
    heartbeat_factor: float = 3.0
    stall_after: float = 900.0  # --stall-after
    max_kw: float = 350.0  # --max-kw
    auth_failures: int = 5
    auth_window: float = 300.0


class Alert(msgspec.Struct, kw_only=True):
    id: str
    kind: str
    charger_id: str
    connector_id: int | None = None
    raised_at: str
    cleared_at: str | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)
    subject: str = ""  # what the alert is about within the charger (connector, transaction)

    @property
    def active(self) -> bool:
        return self.cleared_at is None

    def api(self) -> dict:
        """An item of ``GET /api/v1/alerts``."""
        return {"id": self.id, "kind": self.kind, "charger_id": self.charger_id, "connector_id": self.connector_id,
                "raised_at": self.raised_at, "cleared_at": self.cleared_at, "detail": self.detail}


class TxState(msgspec.Struct, array_like=True):
    connector_id: int
    last_activity: float  # start or last meter value (event time)
    last_wh: float | None = None
    last_at: float | None = None  # time of last_wh


class ChargerState(msgspec.Struct):
    connected: bool = False
    epoch: int = 0
    last_seen: float | None = None
    disconnected_at: float | None = None
    txs: dict[str, TxState] = msgspec.field(default_factory=dict)
    auth: list[float] = msgspec.field(default_factory=list)
    # the last transactions ended: a late replayed start or reading of one of them (another
    # worker's relay publishing again after its restart) must not bring it back to stall
    ended: list[str] = msgspec.field(default_factory=list)


ENDED_KEPT = 16  # per charger: far more than the transactions a charger ends while a relay restarts


_state_enc = msgspec.json.Encoder()
_state_dec = msgspec.json.Decoder(ChargerState)


def _iso(ts: float) -> str:
    t = dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(tzinfo=None)
    return t.isoformat(timespec="milliseconds") + "Z"


def _alert_id(kind: str, charger_id: str, subject: str, raised_at: str) -> str:
    return hashlib.blake2b(f"{kind}\x1f{charger_id}\x1f{subject}\x1f{raised_at}".encode(),
                           digest_size=16).hexdigest()


class Monitor:
    def __init__(self, settings: MonitorSettings | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or MonitorSettings()
        self.clock = clock
        self.chargers: dict[str, ChargerState] = {}
        self.open: dict[tuple[str, str, str], Alert] = {}  # (kind, charger, subject) -> alert
        self._changed: dict[str, Alert] = {}
        self._dirty: set[str] = set()

    # -- alerts --------------------------------------------------------------------------
    def _raise(self, kind: str, charger_id: str, subject: str = "", connector_id: int | None = None,
               **detail: Any) -> None:
        key = (kind, charger_id, subject)
        if key in self.open:
            return
        raised = _iso(self.clock())
        a = Alert(id=_alert_id(kind, charger_id, subject, raised), kind=kind, charger_id=charger_id,
                  connector_id=connector_id, raised_at=raised, detail=detail, subject=subject)
        self.open[key] = a
        self._changed[a.id] = a

    def _clear(self, kind: str, charger_id: str, subject: str = "") -> None:
        a = self.open.pop((kind, charger_id, subject), None)
        if a is not None:  # a new object: listeners may keep the raised one
            a = msgspec.structs.replace(a, cleared_at=_iso(self.clock()))
            self._changed[a.id] = a

    def _state(self, charger_id: str) -> ChargerState:
        st = self.chargers.get(charger_id)
        if st is None:
            st = self.chargers[charger_id] = ChargerState()
        self._dirty.add(charger_id)
        return st

    # -- events --------------------------------------------------------------------------
    def apply(self, event: Event) -> None:
        d = data_of(event)
        if d is None:
            return
        cid = event.charger_id
        t = event.time.timestamp()
        st = self._state(cid)
        if st.last_seen is None or t > st.last_seen:
            st.last_seen = t
        if not isinstance(d, ChargerDisconnected):
            self._clear("no_heartbeat", cid)
        if isinstance(d, ChargerConnected):
            if d.epoch == 0 or d.epoch >= st.epoch:
                st.connected, st.epoch, st.disconnected_at = True, max(st.epoch, d.epoch), None
                self._clear("charger_offline", cid)
        elif isinstance(d, ChargerDisconnected):
            if d.takeover or (d.epoch and d.epoch < st.epoch):
                return  # replaced by a newer connection: not an outage
            st.connected, st.disconnected_at = False, t
            self._clear("no_heartbeat", cid)
        elif isinstance(d, ChargerStatus):
            subject = f"{d.evse_id}/{d.connector_id}"
            if d.status == "Faulted":
                self._raise("connector_faulted", cid, subject, d.connector_id, evse_id=d.evse_id,
                            error_code=d.error_code, info=d.info)
            else:
                self._clear("connector_faulted", cid, subject)
        elif isinstance(d, TransactionStarted):
            tx = st.txs.get(d.transaction_id)
            if tx is None and d.transaction_id not in st.ended:
                st.txs[d.transaction_id] = TxState(d.connector_id, t, d.meter_start_wh,
                                                   t if d.meter_start_wh is not None else None)
        elif isinstance(d, TransactionMeter):
            self._meter(cid, st, d, t)
        elif isinstance(d, TransactionEnded):
            st.txs.pop(d.transaction_id, None)
            if d.transaction_id not in st.ended:
                st.ended.append(d.transaction_id)
                del st.ended[:-ENDED_KEPT]
            self._clear("transaction_stalled", cid, d.transaction_id)
            self._clear("meter_anomaly", cid, d.transaction_id)
        elif isinstance(d, ChargerSecurityEvent):
            if d.type in AUTH_FAILURE_TYPES:
                st.auth.append(t)
                self._prune_auth(st, self.clock())
                if len(st.auth) >= self.settings.auth_failures:
                    self._raise("auth_failures", cid, failures=len(st.auth), last_type=d.type)

    def _meter(self, cid: str, st: ChargerState, d: TransactionMeter, t: float) -> None:
        tx = st.txs.get(d.transaction_id)
        if tx is None:  # its start was not seen (e.g. consumed before this service existed)
            if d.transaction_id in st.ended:
                return  # a late copy of a reading of a transaction that has ended
            tx = st.txs[d.transaction_id] = TxState(d.connector_id, t)
        tx.last_activity = max(tx.last_activity, t)
        self._clear("transaction_stalled", cid, d.transaction_id)
        if tx.last_wh is not None and tx.last_at is not None:
            if t < tx.last_at:
                return  # an older reading arriving late says nothing about the register now
            delta = d.energy_wh - tx.last_wh
            elapsed = max(t - tx.last_at, 1.0)
            limit_wh = self.settings.max_kw * 1000.0 * elapsed / 3600.0
            if delta < -0.001:
                self._raise("meter_anomaly", cid, d.transaction_id, d.connector_id, reason="backwards",
                            transaction_id=d.transaction_id, previous_wh=tx.last_wh, energy_wh=d.energy_wh)
            elif delta > limit_wh:
                self._raise("meter_anomaly", cid, d.transaction_id, d.connector_id, reason="jump",
                            transaction_id=d.transaction_id, previous_wh=tx.last_wh, energy_wh=d.energy_wh,
                            seconds=round(t - tx.last_at, 3), max_kw=self.settings.max_kw)
        tx.last_wh, tx.last_at = d.energy_wh, t

    def _prune_auth(self, st: ChargerState, now: float) -> None:
        horizon = now - self.settings.auth_window
        if st.auth and st.auth[0] < horizon:
            st.auth[:] = [x for x in st.auth if x >= horizon]

    # -- timers --------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.clock()
        s = self.settings
        silent = s.heartbeat_factor * s.heartbeat_interval
        for cid, st in self.chargers.items():
            if st.connected:
                if st.last_seen is not None and now - st.last_seen >= silent:
                    self._raise("no_heartbeat", cid, silent_s=round(now - st.last_seen, 3))
            elif st.disconnected_at is not None and now - st.disconnected_at >= s.offline_after:
                self._raise("charger_offline", cid, disconnected_at=_iso(st.disconnected_at))
            for tx_id, tx in st.txs.items():
                if now - tx.last_activity >= s.stall_after:
                    self._raise("transaction_stalled", cid, tx_id, tx.connector_id, transaction_id=tx_id,
                                last_activity=_iso(tx.last_activity))
            if st.auth:
                before = len(st.auth)
                self._prune_auth(st, now)
                if len(st.auth) != before:
                    self._dirty.add(cid)
                if not st.auth:
                    self._clear("auth_failures", cid)

    # -- persistence ---------------------------------------------------------------------
    def take_changes(self) -> tuple[list[Alert], dict[str, bytes | None]]:
        """Alerts raised or cleared, and the state of each charger touched, since the last call."""
        alerts = list(self._changed.values())
        states = {cid: _state_enc.encode(self.chargers[cid]) for cid in self._dirty if cid in self.chargers}
        self._changed.clear()
        self._dirty.clear()
        return alerts, states  # type: ignore[return-value]

    def restore(self, states: dict[str, bytes], open_alerts: list[Alert]) -> None:
        self.chargers = {cid: _state_dec.decode(doc) for cid, doc in states.items()}
        self.open = {(a.kind, a.charger_id, a.subject): a for a in open_alerts if a.cleared_at is None}
        self._changed.clear()
        self._dirty.clear()

    def active_counts(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for kind, _, _ in self.open:
            out[kind] += 1
        return out
