"""Monitoring: alerts raised and cleared from the events (consumer group ``chargeyard-monitoring``).

``alerts`` (the pure state machine and the Alert Struct), ``service`` (Monitoring, the
event handler over a store), ``webhook``. This file imports only ``alerts``, which
imports no storage (``services/storage.py`` uses its Struct)."""

from .alerts import KINDS, Alert, Monitor, MonitorSettings

__all__ = ["KINDS", "Alert", "Monitor", "MonitorSettings"]
