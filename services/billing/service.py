"""The billing service: on ``transaction.ended`` it prices the store's transaction.

The price comes from the store's authoritative transaction (its ``energy_wh``,
``started_at``, ``stopped_at``), never from a sum of events: duplicates, reordering or a
missed ``transaction.meter`` cannot change a bill. The first CDR of a transaction is
final: a replayed event, a restarted consumer or a second ``transaction.ended`` (2.0.1
and 1.6 paths) yields the same CDR, once.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

from ...store.events import Event, TransactionEnded, data_of
from .. import metrics as m
from ..storage import BillingStore
from .pricing import CDR, price, unpriced
from .tariffs import Tariff, match

log = logging.getLogger("chargeyard.billing")

GROUP = "chargeyard-billing"


class TransactionSource(Protocol):
    """What billing reads of the main store (``chargeyard.store.Store`` has it)."""

    async def get_transaction(self, charger_id: str, tx_id: str) -> dict | None: ...


def _time(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def price_transaction(tx: dict, tariffs: list[Tariff], default_currency: str = "EUR") -> CDR:
    """A CDR for one of the store's transactions (``Store.get_transaction``'s dict)."""
    started, stopped = _time(tx.get("started_at")), _time(tx.get("stopped_at"))
    at = started or stopped or dt.datetime.now(dt.timezone.utc)
    tariff = match(tariffs, tx["charger_id"], at)
    if tariff is None:
        return unpriced(default_currency, tx["charger_id"], tx["tx_id"], tx.get("energy_wh"), started, stopped)
    return price(tariff, tx["charger_id"], tx["tx_id"], tx.get("energy_wh"), started, stopped)


class Billing:
    """Applies batches of events (from Kafka or in-process); ``handle`` is idempotent."""

    def __init__(self, store: BillingStore, transactions: TransactionSource, *, default_currency: str = "EUR",
                 group: str = GROUP) -> None:
        self.store = store
        self.transactions = transactions
        self.default_currency = default_currency
        self.group = group

    async def handle(self, events: list[Event]) -> list[CDR]:
        """Price the transactions these events end; store the CDRs and the events' ids in
        one transaction. Returns the CDRs written now."""
        # Only transaction.ended has an effect here, so only its ids are checked and kept:
        # the meter readings that make up nearly every batch cost billing nothing.
        ended = [e for e in events if e.type == TransactionEnded.TYPE]
        m.CONSUMED.labels(self.group).inc(len(events) - len(ended))
        if not ended:
            return []
        seen = await self.store.seen(self.group, [e.id for e in ended])
        fresh = [e for e in ended if e.id not in seen]
        if len(fresh) < len(ended):
            m.DUPLICATES.labels(self.group).inc(len(ended) - len(fresh))
        cdrs: list[CDR] = []
        done: set[tuple[str, str]] = set()
        tariffs: list[Tariff] | None = None
        for e in fresh:
            d = data_of(e)
            assert isinstance(d, TransactionEnded)
            key = (e.charger_id, d.transaction_id)
            if key in done or await self.store.get_cdr(*key) is not None:
                continue
            done.add(key)
            tx = await self.transactions.get_transaction(*key)
            if tx is None:
                m.UNBILLABLE.inc()
                log.error("transaction %s of %s ended but the store does not have it: no CDR", key[1], key[0])
                continue
            if tariffs is None:
                tariffs = await self.store.list_tariffs()
            cdr = price_transaction(tx, tariffs, self.default_currency)
            cdrs.append(cdr)
        await self.store.commit_billing(self.group, [e.id for e in fresh], cdrs)
        for c in cdrs:
            m.CDRS.inc()
            if c.tariff_id is None:
                m.UNPRICED.inc()
                log.warning("no tariff matches transaction %s of %s: CDR with zero amounts", c.tx_id, c.charger_id)
        m.CONSUMED.labels(self.group).inc(len(fresh))
        return cdrs
