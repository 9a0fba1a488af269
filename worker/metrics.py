"""Worker metrics (names and labels as docs/architecture.md lists them; labels bounded by
the spec, never per charger: charger ids, message ids and id tags go to the logs)."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

WS_CONNECTIONS = Gauge("chargeyard_ws_connections", "Open charger WebSocket connections", ["protocol"])
WS_CLOSED = Counter("chargeyard_ws_connections_closed_total", "Closed charger connections", ["reason"])
WS_REFUSED = Counter("chargeyard_ws_handshakes_refused_total", "Refused WebSocket handshakes", ["reason"])
# reason: one of worker/security/handshake.py REASONS
AUTH_FAILURES = Counter("chargeyard_ws_auth_failures_total", "Charger handshakes refused by authentication",
                        ["reason"])
# how each password check was decided: "scrypt" (a memory-hard run), "stored_verifier" (the
# verifier another or an earlier worker stored, ADR 0019), "process_verifier" (this process's)
PASSWORD_CHECKS = Counter("chargeyard_ws_password_checks_total", "Charger password checks by how they were decided",
                          ["via"])
CALL_ERRORS = Counter("chargeyard_ocpp_call_errors_total", "CALLERRORs sent to chargers", ["protocol", "code"])
BATCH_ROWS = Histogram("chargeyard_db_batch_rows", "Rows per store commit",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
BATCH_COMMIT = Histogram("chargeyard_db_batch_commit_duration_seconds", "Store commit duration",
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
WRITE_QUEUE = Gauge("chargeyard_db_write_queue_depth", "Store operations waiting for a commit")
DEFERRED = Gauge("chargeyard_db_deferred_rows",
                 "Rows the store holds for deferred work (SQLite: readings logged and not yet folded)")
LENIENCY = Counter("chargeyard_leniency_relaxed_total", "Validation rules relaxed by a leniency profile",
                   ["rule"])
BOOTS_PENDING = Counter("chargeyard_boot_pending_total", "BootNotifications answered Pending (overload)")
EVENTS_SPOOLED = Gauge("chargeyard_events_spooled", "Events waiting in the local spool for the bus")

BUILD_INFO = Gauge("chargeyard_build_info", "Build information (value 1)", ["version", "codec"])


class Children:
    """``metric.labels(...)`` validates and joins its labels and takes a lock on every call;
    the hot path looks its children up in this dict instead."""

    __slots__ = ("metric", "cache")

    def __init__(self, metric: object) -> None:
        self.metric = metric
        self.cache: dict[tuple, object] = {}

    def __call__(self, *labels: str):  # type: ignore[no-untyped-def]
        child = self.cache.get(labels)
        if child is None:
            child = self.cache[labels] = self.metric.labels(*labels)  # type: ignore[attr-defined]
        return child


call_errors = Children(CALL_ERRORS)


# -- per-message metrics ------------------------------------------------------------
# Every message touches these, so they are plain dict counters on the event loop
# thread, turned into Prometheus families only when /metrics is scraped: a
# prometheus_client child takes a lock per increment, which the loop thread does not need.


class _Messages:
    """chargeyard_ocpp_messages_total{protocol,direction,action,type}"""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], dict[str, int]] = {}  # (protocol, direction, type) -> action -> n

    def by_action(self, protocol: str, direction: str, kind: str) -> dict[str, int]:
        """The action -> count dict of one (protocol, direction, type): the hot path keeps
        it and counts with ``d[action] = d.get(action, 0) + 1`` (no call, no key tuple)."""
        d = self.counts.get((protocol, direction, kind))
        if d is None:
            d = self.counts[(protocol, direction, kind)] = {}
        return d

    def __call__(self, protocol: str, direction: str, action: str, kind: str) -> None:
        d = self.by_action(protocol, direction, kind)
        d[action] = d.get(action, 0) + 1


class _Handle:
    """chargeyard_ocpp_handle_duration_seconds{action}, buckets from 0.1 ms."""

    BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self) -> None:
        self.data: dict[str, list] = {}  # action -> [bucket counts..., +Inf count, sum]

    def __call__(self, action: str, seconds: float) -> None:
        d = self.data.get(action)
        if d is None:
            d = self.data[action] = [0] * (len(self.BOUNDS) + 1) + [0.0]
        d[bisect_left(self.BOUNDS, seconds)] += 1
        d[-1] += seconds


messages = _Messages()
handle = _Handle()


class _Collector:
    def collect(self):  # type: ignore[no-untyped-def]
        fam = CounterMetricFamily("chargeyard_ocpp_messages", "OCPP messages",
                                  labels=["protocol", "direction", "action", "type"])
        for (protocol, direction, kind), d in list(messages.counts.items()):
            for action, n in list(d.items()):
                fam.add_metric([protocol, direction, action, kind], n)
        yield fam
        hist = HistogramMetricFamily("chargeyard_ocpp_handle_duration_seconds",
                                     "Time from a charger CALL to its reply (includes the durable batch wait)",
                                     labels=["action"])
        for action, d in list(handle.data.items()):
            cum, buckets = 0, []
            for bound, n in zip((*handle.BOUNDS, float("inf")), d[:-1]):
                cum += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
            hist.add_metric([action], buckets, d[-1])
        yield hist


REGISTRY.register(_Collector())
