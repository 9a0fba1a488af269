"""The services' metrics (names from ARCHITECTURE.md; labels bounded by the spec)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CDRS = Counter("chargeyard_billing_cdrs", "CDRs written (one per ended transaction)")
UNPRICED = Counter("chargeyard_billing_unpriced", "Ended transactions no tariff matched (CDR with zero amounts)")
UNBILLABLE = Counter("chargeyard_billing_missing_transactions",
                     "transaction.ended events whose transaction the store does not have")
ALERTS_ACTIVE = Gauge("chargeyard_alerts_active", "Open alerts", ["kind"])
ALERTS_RAISED = Counter("chargeyard_alerts_raised", "Alerts raised", ["kind"])
WEBHOOK_ERRORS = Counter("chargeyard_alert_webhook_errors", "Failed alert webhook POSTs (retried)")
CONSUMER_LAG = Gauge("chargeyard_consumer_lag", "Events on the topic not yet consumed", ["group"])
CONSUMED = Counter("chargeyard_events_consumed", "Events a service applied (after dedupe)", ["group"])
DUPLICATES = Counter("chargeyard_events_duplicates", "Events a service skipped as already applied", ["group"])
