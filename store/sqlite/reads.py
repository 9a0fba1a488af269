"""The operator API's reads: rows of ``sql.py``'s queries into the shapes ``base.Store``
documents. Each function runs on the store thread, on the connection it is given, after
the readings it looks at are folded (``SqliteStore._read``)."""

from __future__ import annotations

import sqlite3
import time

import msgspec

from ..base import StoreError, from_us
from . import sql
from ..logrows import unpack_chunk

__all__ = ["charger", "chargers", "chunks", "id_tag_status", "meter_samples", "transaction", "transactions"]


def _charger_dict(row: tuple) -> dict:
    charger_id, protocol, vendor, model, serial, firmware, last_seen, last_boot = row
    return {"id": charger_id, "protocol": protocol, "vendor": vendor, "model": model, "serial": serial,
            "firmware": firmware, "last_seen": from_us(last_seen), "last_boot": from_us(last_boot)}


def charger(conn: sqlite3.Connection, charger_id: str) -> dict | None:
    row = conn.execute(sql.CHARGER_GET, (charger_id,)).fetchone()
    connectors = conn.execute(sql.CONNECTORS_GET, (charger_id,)).fetchall()
    readings = conn.execute(sql.LAST_READINGS, (charger_id,)).fetchall()
    if row is None and not connectors and not readings:
        return None
    d = _charger_dict(row if row is not None else (charger_id, "", "", "", "", "", None, None))
    d["connectors"] = [{"evse_id": e, "connector_id": c, "status": s, "error_code": ec, "info": i,
                        "at": from_us(at)} for e, c, s, ec, i, at in connectors]
    d["last_readings"] = [{"connector_id": c, "energy_wh": wh, "at": from_us(at), "tx_id": tx}
                          for c, wh, at, tx in readings]
    return d


def chargers(conn: sqlite3.Connection) -> list[dict]:
    return [_charger_dict(r) for r in conn.execute(sql.CHARGER_LIST).fetchall()]


def _tx_dict(row: tuple) -> dict:
    """A row of ``sql.TX_SELECT`` -> the API shape, meter_start_wh and energy_wh by the rule in
    store/base.py (``MeterSample``)."""
    (charger_id, tx_id, connector_id, evse_id, id_tag, kind, start, stop, started_at, stopped_at, stop_reason,
     stop_id_tag, reservation_id, low, high, last_wh, last_at) = row
    meter_start = start if start is not None else low
    if meter_start is None:
        energy = None
    elif kind == 16 and stop is not None and start is not None:
        energy = stop - start
    else:
        energy = max(meter_start, meter_start if high is None else high,
                     meter_start if stop is None else stop) - meter_start
    return {"charger_id": charger_id, "tx_id": tx_id, "connector_id": connector_id, "evse_id": evse_id,
            "id_tag": id_tag, "meter_start_wh": meter_start, "meter_stop_wh": stop, "energy_wh": energy,
            "started_at": from_us(started_at), "stopped_at": from_us(stopped_at), "stop_reason": stop_reason,
            "active": stopped_at is None, "stop_id_tag": stop_id_tag, "reservation_id": reservation_id,
            "last_reading_wh": last_wh, "last_reading_at": from_us(last_at)}


def transactions(conn: sqlite3.Connection, charger_id: str | None, active: bool | None, limit: int) -> list[dict]:
    args: list = [] if charger_id is None else [charger_id]
    args.append(max(0, int(limit)))
    return [_tx_dict(r) for r in conn.execute(sql.tx_page(charger_id is not None, active), args).fetchall()]


def transaction(conn: sqlite3.Connection, charger_id: str, tx_id: str) -> dict | None:
    row = conn.execute(sql.TX_GET, (charger_id, tx_id)).fetchone()
    return None if row is None else _tx_dict(row)


def chunks(conn: sqlite3.Connection, charger_id: str, tx_id: str) -> list[tuple[bytes]]:
    """A transaction's chunks, for ``meter_samples`` (which unpacks them off the store thread,
    and out of a fold's write transaction)."""
    return conn.execute(sql.CHUNK_ROWS, (charger_id, tx_id)).fetchall()


def meter_samples(chunk_rows: list[tuple[bytes]], charger_id: str, limit: int) -> list[dict]:
    """A transaction's samples from its chunks: a key's sample is its first reading."""
    first: dict[tuple[int, int], float] = {}
    for (data,) in chunk_rows:
        try:
            readings = unpack_chunk(data)
        except msgspec.DecodeError as e:  # only a damaged file or a foreign writer
            raise StoreError(f"sqlite: a meter_chunks row of {charger_id!r} is unreadable: {e}") from e
        for connector, at, wh, _ in readings:
            first.setdefault((at, connector), wh)
    keys = sorted(first)[:max(0, int(limit))]
    return [{"connector_id": c, "at": from_us(at), "energy_wh": first[at, c]} for at, c in keys]


def id_tag_status(conn: sqlite3.Connection, tag: str) -> str | None:
    row = conn.execute(sql.ID_TAG_GET, (tag,)).fetchone()
    if row is None:
        return None
    return _effective_status(*row)


def _effective_status(status: str, expiry: int | None) -> str:
    if expiry is not None and expiry < time.time_ns() // 1000 and status == "Accepted":
        return "Expired"
    return status


def id_tags(conn: sqlite3.Connection, after: str | None, limit: int) -> list[dict]:
    rows = conn.execute(sql.ID_TAG_PAGE, (after or "", int(limit))).fetchall()
    return [{"id_tag": tag, "status": _effective_status(status, expiry), "expiry": from_us(expiry)}
            for tag, status, expiry in rows]
