"""Billing: tariffs, and a CDR for every ended transaction (consumer group ``chargeyard-billing``).

``tariffs`` (Tariff, matching), ``pricing`` (CDR, exact arithmetic) and ``service``
(Billing, the event handler). This file imports only the first two, which import no
storage: ``services/storage.py`` uses their Structs, and ``service`` uses the storage.
"""

from .pricing import CDR, minor_unit, price, unpriced
from .tariffs import Tariff, TariffError, match

__all__ = ["CDR", "Tariff", "TariffError", "match", "minor_unit", "price", "unpriced"]
