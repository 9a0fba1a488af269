"""Password-check micro-benchmark: what a reconnect storm of authenticated chargers costs.

    taskset -c 1 .venv/bin/python -m chargeyard.bench.passwords [--seconds 3] [--threads 2]

Prints scrypt hashes/s at the stored cost (one cold check: the first login of a charger
after a restart), the same through ``PasswordVerifier``'s thread pool from the event loop,
and cached checks/s (a charger reconnecting with the password this process already
verified: one HMAC-SHA256). The last line is one JSON object with every figure. Not a
test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from chargeyard.worker.security.authcache import make_verifier
from chargeyard.worker.security.passwords import DEFAULT_LN, PasswordVerifier, hash_password, verify_password

PASSWORD = "0123456789abcdef0123"


def _rate(fn, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while (el := time.perf_counter() - t0) < seconds or n < 3:
        fn()
        n += 1
    return n / el


async def _pool_rate(threads: int, seconds: float, stored: str) -> float:
    v = PasswordVerifier(threads=threads, max_in_flight=10_000)
    n, t0 = 0, time.perf_counter()
    while (el := time.perf_counter() - t0) < seconds:
        # distinct ids: every check is cold
        await asyncio.gather(*(v.verify(f"CP{n + i}", PASSWORD, [stored]) for i in range(threads * 2)))
        n += threads * 2
    v.close()
    return n / el


async def _cached_rate(seconds: float, stored: str, chargers: int = 1000) -> float:
    v = PasswordVerifier(threads=1)
    for i in range(chargers):  # warm: as after the first connection of each
        v._known[f"CP{i}"] = make_verifier(v.cache_key, f"CP{i}", stored, PASSWORD)
    n, t0 = 0, time.perf_counter()
    while (el := time.perf_counter() - t0) < seconds:
        for i in range(chargers):
            await v.verify(f"CP{i}", PASSWORD, (stored,))
        n += chargers
    assert v.slow_checks == 0
    v.close()
    return n / el


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ln", type=int, default=DEFAULT_LN, help="log2 of scrypt's n (default: the stored cost)")
    a = ap.parse_args(argv)
    stored = hash_password(PASSWORD, ln=a.ln)
    out = {"scrypt": stored.split("$")[1],
           "hashes_per_s": round(_rate(lambda: verify_password(PASSWORD, stored), a.seconds), 1)}
    out["pool_checks_per_s"] = round(asyncio.run(_pool_rate(a.threads, a.seconds, stored)), 1)
    out["pool_threads"] = a.threads
    out["cached_checks_per_s"] = round(asyncio.run(_cached_rate(a.seconds, stored)))
    print(f"scrypt {out['scrypt']}: {out['hashes_per_s']:.1f} hashes/s on one thread, "
          f"{out['pool_checks_per_s']:.1f} cold checks/s through the pool ({a.threads} threads), "
          f"{out['cached_checks_per_s']:,} cached checks/s (HMAC)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
