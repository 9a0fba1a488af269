"""services/billing: tariff matching, exact pricing, idempotent CDRs."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import pytest

from chargeyard.services.billing import Tariff, TariffError, match, price
from chargeyard.services.billing.service import GROUP, Billing
from chargeyard.services.billing.service import price_transaction
from chargeyard.services.billing.tariffs import from_json, to_json
from chargeyard.store import events as ev

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def tariff(tid="t", **kw) -> Tariff:
    kw.setdefault("currency", "EUR")
    prices = ("per_kwh", "per_minute", "session_fee", "vat_percent")
    return Tariff(tariff_id=tid, **{k: Decimal(v) if k in prices else v for k, v in kw.items()})


def test_worked_example_from_the_issue():
    t = tariff(per_kwh="0.30", per_minute="0", session_fee="1.00", vat_percent="19")
    cdr = price(t, "cp", "1", 2000.0, T0, T0 + dt.timedelta(minutes=30))
    assert cdr.api() == {"tariff_id": "t", "currency": "EUR", "energy_wh": 2000.0, "duration_s": 1800,
                         "energy_cost": "0.60", "time_cost": "0.00", "session_fee": "1.00", "net": "1.60",
                         "vat": "0.30", "total": "1.90"}


@pytest.mark.parametrize("per_kwh,wh,want", [
    ("0.5", 10.0, "0.00"),  # 0.005 -> half-even -> 0.00
    ("0.5", 30.0, "0.02"),  # 0.015 -> 0.02
    ("0.5", 50.0, "0.02"),  # 0.025 -> 0.02
    ("0.1", 0.1, "0.00"),
    ("0.30", 1234.5, "0.37"),  # 0.37035
])
def test_each_line_rounds_half_even(per_kwh, wh, want):
    cdr = price(tariff(per_kwh=per_kwh), "cp", "1", wh, T0, T0)
    assert cdr.energy_cost == want and cdr.total == want


def test_minor_units_and_time_cost():
    jpy = tariff(currency="JPY", per_kwh="25", per_minute="3", vat_percent="10")
    cdr = price(jpy, "cp", "1", 2500.0, T0, T0 + dt.timedelta(seconds=90))
    assert (cdr.energy_cost, cdr.time_cost, cdr.net, cdr.vat, cdr.total) == ("62", "4", "66", "7", "73")
    kwd = tariff(currency="KWD", per_kwh="0.0125")
    assert price(kwd, "cp", "1", 1000.0, T0, T0).total == "0.012"  # 3 places, 0.0125 half-even


def test_float_free_arithmetic():
    t = from_json("f", {"currency": "EUR", "per_kwh": 0.1, "vat_percent": 0.0})
    assert t.per_kwh == Decimal("0.1")
    cdr = price(t, "cp", "1", 3000.0, T0, T0)  # 0.1 * 3 = 0.3 exactly, not 0.30000000000000004
    assert cdr.energy_cost == "0.30"
    assert to_json(t)["per_kwh"] == "0.1"


def test_most_specific_glob_wins():
    ts = [tariff("all", chargers=["*"]), tariff("de", chargers=["DE-*"]), tariff("ber", chargers=["DE-BER-*"]),
          tariff("one", chargers=["DE-BER-7"]), tariff("q", chargers=["DE-BER-?"])]
    assert match(ts, "DE-BER-7", T0).tariff_id == "one"
    assert match(ts, "DE-BER-8", T0).tariff_id == "q"  # one position pinned beats any tail
    assert match(ts, "DE-BER-80", T0).tariff_id == "ber"
    assert match(ts, "DE-MUC-1", T0).tariff_id == "de"
    assert match(ts, "FR-1", T0).tariff_id == "all"
    assert match([tariff("x", chargers=["FR-*"])], "DE-1", T0) is None
    # the order of the list never matters
    assert match(list(reversed(ts)), "DE-BER-8", T0).tariff_id == "q"


def test_validity_window_and_ties():
    old = tariff("old", valid_to=T0)
    new = tariff("new", valid_from=T0)
    assert match([old, new], "cp", T0 - dt.timedelta(seconds=1)).tariff_id == "old"
    assert match([old, new], "cp", T0).tariff_id == "new"  # valid_to is exclusive
    a, b = tariff("a"), tariff("b")
    assert match([b, a], "cp", T0).tariff_id == "a"
    later = tariff("z", valid_from=T0 - dt.timedelta(days=1))
    assert match([a, later], "cp", T0).tariff_id == "z"  # a tie goes to the latest valid_from


@pytest.mark.parametrize("body,msg", [
    ({"currency": "euro"}, "currency"), ({"currency": "EUR", "per_kwh": "-1"}, "per_kwh"),
    ({"currency": "EUR", "per_kwh": "NaN"}, "per_kwh"), ({"currency": "EUR", "chargers": []}, "chargers"),
    ({"currency": "EUR", "valid_from": "2025-01-01T00:00:00"}, "time zone"),
    ({"currency": "EUR", "valid_from": "2025-01-02T00:00:00Z", "valid_to": "2025-01-01T00:00:00Z"}, "after"),
])
def test_bad_tariffs_are_refused(body, msg):
    with pytest.raises(TariffError, match=msg):
        from_json("x", body)


class Transactions:
    def __init__(self):
        self.txs: dict[tuple[str, str], dict] = {}

    def add(self, cid, tx, wh, minutes):
        self.txs[(cid, tx)] = {"charger_id": cid, "tx_id": tx, "energy_wh": wh, "active": False,
                               "started_at": "2025-03-01T08:00:00Z",
                               "stopped_at": (T0 + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")}

    async def get_transaction(self, cid, tx):
        return self.txs.get((cid, tx))


def test_billing_is_idempotent_and_prices_the_store_transaction(services_store):
    async def main():
        txs = Transactions()
        txs.add("DE-1", "1", 2000.0, 30)
        txs.add("FR-1", "2", 500.0, 10)
        async with services_store() as store:
            await store.put_tariff(tariff("de", chargers=["DE-*"], per_kwh="0.30", session_fee="1.00",
                                          vat_percent="19"))
            billing = Billing(store, txs)
            ended = ev.tx_ended("DE-1", T0, "1", 999999.0)  # the event's meter value is not what is billed
            meter = ev.tx_meter("DE-1", T0, "1", 1, 5.0)
            other = ev.tx_ended("FR-1", T0, "2")
            cdrs = await billing.handle([meter, ended, other, ended])
            assert [(c.charger_id, c.tariff_id, c.total) for c in cdrs] == [("DE-1", "de", "1.90"),
                                                                             ("FR-1", None, "0.00")]
            assert await billing.handle([ended, other]) == []  # replayed
            # only what billing acts on is kept by id: the readings cost it nothing
            assert await store.seen(GROUP, [meter.id, ended.id]) == {ended.id}
            # a second transaction.ended for the same transaction (another id) changes nothing
            again = ev.Event("other-id", "transaction.ended", ev.SOURCE, T0, "DE-1", ev.TransactionEnded("1"))
            assert await billing.handle([again]) == []
        async with services_store() as store:  # restarted
            billing = Billing(store, txs)
            assert await billing.handle([ended]) == []
            assert len(await store.list_cdrs()) == 2
            cdr = await store.get_cdr("DE-1", "1")
            assert cdr.total == "1.90" and cdr.energy_wh == 2000.0 and cdr.duration_s == 1800
            assert (await store.get_tariff("de")).per_kwh == Decimal("0.30")
            assert [t.tariff_id for t in await store.list_tariffs()] == ["de"]
            assert await store.delete_tariff("de") and not await store.delete_tariff("de")
    asyncio.run(main())


def test_missing_transaction_gets_no_cdr(services_store):
    async def main():
        async with services_store() as store:
            assert await Billing(store, Transactions()).handle([ev.tx_ended("x", T0, "9")]) == []
            assert await store.get_cdr("x", "9") is None
    asyncio.run(main())


def test_price_transaction_without_tariff():
    tx = {"charger_id": "c", "tx_id": "1", "energy_wh": None, "started_at": None, "stopped_at": None}
    cdr = price_transaction(tx, [], "JPY")
    assert (cdr.tariff_id, cdr.currency, cdr.total, cdr.energy_wh, cdr.duration_s) == (None, "JPY", "0", 0.0, 0)
