"""Outbox micro-benchmark: what the transactional outbox adds to a SQLite batch commit of
1.6 MeterValues (one MeterSample, so one ``transaction.meter`` event, per message).

    taskset -c 0 .venv/bin/python -m chargeyard.bench.outbox_encode

Each batch holds ``--rows`` MeterSamples of as many chargers (of 1,000), each with its own
transaction and a millisecond timestamp, as the worker's writer builds them; folding is
off, so the figures are the commit path alone. Five stores commit the same batches in
turn, round after round (the machine's drift falls on all of them alike):

* no outbox;
* the outbox, its envelopes encoded by the compiled twin (``Rows.outbox_rows`` of
  ``store/_logrows.pyx``), and by the pure-Python twin (``store/events.py``);
* the outbox's write alone: the envelopes built before the clock starts;
* the alternative of ADR 0021, compact rows (what the readings log packs) written alone,
  the envelopes left to the relay: that write, plus the relay's encoding, is its cost.

CPU is the process's user + system time (``getrusage``), with the worker's GC tuning
(``app/node.py``'s ``tune_gc``). Then, without a store, the per-event cost of the steps
alone and their bytes, and the ratios (compiled / pure; the alternative's estimate:
compact write + building compact rows + the compiled encoding, over the compiled outbox).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import msgspec

from chargeyard.core import twins
from chargeyard.node import tune_gc
from chargeyard.store.base import MeterSample, to_us
from chargeyard.store.sqlite import SqliteStore

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
CHARGERS = 1000
_pack = msgspec.msgpack.Encoder().encode  # as store/sqlite/outbox.py packs a batch's rows


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def batches(rows: int, commits: int) -> list[list[MeterSample]]:
    """MeterValues as a saturated worker commits them: consecutive chargers, each its own
    transaction, a reading per message with the charger's millisecond timestamp."""
    out, k = [], 0
    for _ in range(commits):
        batch = []
        for _ in range(rows):
            k += 1
            c = (k * 7) % CHARGERS
            batch.append(MeterSample(f"CP{c:05d}", str(100_000 + c), T0 + dt.timedelta(milliseconds=k),
                                     1000.0 + k * 0.5, 1))
        out.append(batch)
    return out


def _encoder(pure: bool) -> Callable[[list, list], list] | None:
    """One twin's ``Rows.outbox_rows`` (None: the compiled one is not built)."""
    try:
        return twins.load("chargeyard.store.logrows", pure=pure).Rows.outbox_rows
    except ImportError:
        return None


def _compact(batch: list[MeterSample]) -> list[tuple[str, bytes]]:
    """The alternative of ADR 0021: an outbox row per reading as the readings log packs it
    (transaction, connector, µs, Wh), the envelope built later by the relay."""
    return [(o.charger_id, _pack((o.tx_id, o.connector_id, to_us(o.at), o.energy_wh))) for o in batch]


def _prebuilt(rows_of: dict[int, list]) -> Callable[[list, list], list]:
    """An encoder that costs nothing: the batch's rows, built before the clock started (so
    the commit measures the outbox's write alone)."""
    def encode(ops: list, results: list) -> list:
        return rows_of[id(ops)]
    return encode


async def commits(tmp: Path, rows: int, commits_per_round: int, rounds: int, synchronous: str) -> dict:
    """CPU µs per message committed, per variant; the variants take turns, a round each."""
    compiled, pure = _encoder(False), _encoder(True)
    variants: dict[str, Any] = {"no outbox": None, "outbox compiled": compiled, "outbox pure": pure,
                                "outbox write alone": "envelopes", "compact rows write alone": "compact"}
    if compiled is None:
        del variants["outbox compiled"]
    stores: dict[str, SqliteStore] = {}
    for name, encoder in variants.items():
        store = SqliteStore(tmp / f"{name.replace(' ', '-')}.db", synchronous=synchronous, fold_rows=10**9,
                            idle_fold_rows=10**9, outbox=None if encoder is None else "w1")
        await store.open()
        stores[name] = store
    cpu = dict.fromkeys(stores, 0.0)
    names = list(stores)
    try:
        for r in range(rounds + 1):  # round 0 warms up
            work = batches(rows, commits_per_round if r else 20)
            results = [None] * rows
            for name in names[r % len(names):] + names[:r % len(names)]:  # each variant first in turn
                store, encoder = stores[name], variants[name]
                if encoder == "envelopes":
                    encoder = _prebuilt({id(b): pure(b, results) for b in work})
                elif encoder == "compact":
                    encoder = _prebuilt({id(b): _compact(b) for b in work})
                if encoder is not None:
                    store.batches.encode_events = encoder
                gc.collect()
                gc.freeze()  # the batches are the worker's input, not its garbage: never scanned
                c0 = _cpu()
                for batch in work:
                    await store.apply(batch)
                if r:
                    cpu[name] += _cpu() - c0
                gc.unfreeze()
    finally:
        for store in stores.values():
            await store.close()
    n = rows * commits_per_round * rounds
    return {name: c / n * 1e6 for name, c in cpu.items()}


def steps(rows: int, commits_per_round: int) -> dict:
    """CPU µs per event of the outbox's steps alone, without a store."""
    work = batches(rows, commits_per_round)
    results = [None] * rows
    n = rows * len(work)
    out: dict[str, float] = {}
    encoded: list = []
    for name, encoder in (("encoded compiled", _encoder(False)), ("encoded pure", _encoder(True)),
                          ("compact rows", lambda b, _: _compact(b))):
        if encoder is None:
            continue
        for batch in work[:20]:
            encoder(batch, results)
        t0 = time.process_time()
        done = [encoder(batch, results) for batch in work]
        out[name] = (time.process_time() - t0) / n * 1e6
        out[f"{name}: bytes/event"] = sum(len(p) for enc in done for _, p in enc) / n
        if name == "encoded pure":
            encoded = done
    t0 = time.process_time()
    for enc in encoded:
        _pack(enc)
    out["pack envelopes"] = (time.process_time() - t0) / n * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100, help="MeterSamples per batch")
    ap.add_argument("--commits", type=int, default=200, help="commits per variant per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (the variants take turns)")
    ap.add_argument("--synchronous", default="NORMAL", help="FULL adds the fsync's kernel time to every variant")
    a = ap.parse_args()
    tune_gc()  # as a worker runs (ADR 0009)
    tmp = Path(tempfile.mkdtemp(prefix="chargeyard-outbox-bench-"))
    try:
        per_msg = asyncio.run(commits(tmp, a.rows, a.commits, a.rounds, a.synchronous))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = per_msg["no outbox"]
    print(f"commit of {a.rows} MeterValues a batch, synchronous={a.synchronous}, CPU us/msg:")
    for name, us in per_msg.items():
        extra = "" if name == "no outbox" else f"  outbox +{us - base:5.2f} us/msg (+{(us / base - 1) * 100:3.0f} %)"
        print(f"  {name:25} {us:6.2f}{extra}")
    st = steps(a.rows, a.commits)
    print("steps alone, CPU us/event (bytes/event):")
    for name, v in st.items():
        if not name.endswith("bytes/event"):
            size = st.get(f"{name}: bytes/event")
            print(f"  {name:25} {v:6.2f}" + (f"  ({size:.0f} B)" if size else ""))
    ratios = {}
    if "outbox compiled" in per_msg:
        ratios["outbox cost, compiled / pure"] = (per_msg["outbox compiled"] - base) / (per_msg["outbox pure"] - base)
        ratios["encoding, compiled / pure"] = st["encoded compiled"] / st["encoded pure"]
        # the alternative: compact rows on the commit, envelopes encoded (compiled) by the relay
        ratios["compact + relay encoding / compiled outbox"] = (
            (per_msg["compact rows write alone"] - base + st["compact rows"] + st["encoded compiled"])
            / (per_msg["outbox compiled"] - base))
    for name, v in ratios.items():
        print(f"  {name}: {v:.2f}")
    print(json.dumps({"outbox_encode": {"rows": a.rows, "synchronous": a.synchronous, "commit_us_per_msg": per_msg,
                                        "steps_us_per_event": st, "ratios": ratios}}))


if __name__ == "__main__":
    main()
