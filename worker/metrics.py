"""Worker metrics (names and labels from ARCHITECTURE.md; labels bounded by the spec,
never per charger: charger ids, message ids and id tags go to the logs)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WS_CONNECTIONS = Gauge("chargeyard_ws_connections", "Open charger WebSocket connections", ["protocol"])
WS_CLOSED = Counter("chargeyard_ws_connections_closed_total", "Closed charger connections", ["reason"])
WS_REFUSED = Counter("chargeyard_ws_handshakes_refused_total", "Refused WebSocket handshakes", ["reason"])
MESSAGES = Counter("chargeyard_ocpp_messages_total", "OCPP messages",
                   ["protocol", "direction", "action", "type"])
CALL_ERRORS = Counter("chargeyard_ocpp_call_errors_total", "CALLERRORs sent to chargers", ["protocol", "code"])
HANDLE = Histogram("chargeyard_ocpp_handle_duration_seconds",
                   "Time from a charger CALL to its reply (includes the durable batch wait)", ["action"],
                   buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                            0.5, 1.0, 2.5))
BATCH_ROWS = Histogram("chargeyard_db_batch_rows", "Rows per store commit",
                       buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
BATCH_COMMIT = Histogram("chargeyard_db_batch_commit_duration_seconds", "Store commit duration",
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
WRITE_QUEUE = Gauge("chargeyard_db_write_queue_depth", "Store operations waiting for a commit")
LENIENCY = Counter("chargeyard_leniency_relaxed_total", "Validation rules relaxed by a leniency profile",
                   ["rule"])
BOOTS_PENDING = Counter("chargeyard_boot_pending_total", "BootNotifications answered Pending (overload)")
EVENTS_SPOOLED = Gauge("chargeyard_events_spooled", "Events waiting in the local spool for the bus")

BUILD_INFO = Gauge("chargeyard_build_info", "Build information (value 1)", ["version", "codec"])


class Children:
    """``metric.labels(...)`` costs microseconds; the hot path looks children up here."""

    __slots__ = ("metric", "cache")

    def __init__(self, metric: object) -> None:
        self.metric = metric
        self.cache: dict[tuple, object] = {}

    def __call__(self, *labels: str):  # type: ignore[no-untyped-def]
        child = self.cache.get(labels)
        if child is None:
            child = self.cache[labels] = self.metric.labels(*labels)  # type: ignore[attr-defined]
        return child


messages = Children(MESSAGES)
handle = Children(HANDLE)
call_errors = Children(CALL_ERRORS)
