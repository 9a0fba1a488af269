"""Billing: tariffs, and a CDR for every ended transaction (consumer group ``chargeyard-billing``)."""

from .pricing import CDR, minor_unit, price, unpriced
from .service import Billing
from .tariffs import Tariff, TariffError, match

__all__ = ["CDR", "Billing", "Tariff", "TariffError", "match", "minor_unit", "price", "unpriced"]
