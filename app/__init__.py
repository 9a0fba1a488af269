"""Chargeyard: an OCPP central system (CSMS) for EV charging networks."""

__version__ = "0.1.0"
