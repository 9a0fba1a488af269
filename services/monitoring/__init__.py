"""Monitoring: alerts raised and cleared from the events (consumer group ``chargeyard-monitoring``)."""

from .alerts import KINDS, Alert, Monitor, MonitorSettings
from .service import Monitoring

__all__ = ["KINDS", "Alert", "Monitor", "MonitorSettings", "Monitoring"]
