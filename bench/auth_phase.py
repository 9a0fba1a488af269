"""The compare suite's authenticated reconnect storm (issue 22, ADR 0019): what a worker
restart costs when every charger authenticates with a password.

1. ``chargers`` chargers are registered with a password in a fresh SQLite store (one
   hash for all: registration is not what is measured; each charger's verifier is its
   own, bound to its id);
2. Chargeyard starts on that data dir with ``--security-profile 1 --unknown-chargers
   reject`` and the generator connects every charger with HTTP Basic: the first
   connection costs one scrypt run each (``first_connect``);
3. the generator holds its chargers down, the server stops and a new process starts on
   the same data dir (same store, same key file): a cold process, a warm verifier store;
4. every charger reconnects at once (``rejoin``), measured like the unauthenticated
   storm (``runner.measure_storm``). The server's ``chargeyard_ws_password_checks_total``
   tells how the storm's checks were decided (scrypt runs should be none).

``suite.compare`` puts its absorb time beside the unauthenticated storm's, as a ratio.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tempfile
import time

from . import runner

PASSWORD = "bench-storm-password-01"
PREFIX = "authstorm"
# below the worker's 64 password checks in flight: the first connections queue at the
# generator instead of being told 503 and backing off (that would measure the back-off)
FIRST_CONNECT_CONCURRENCY = 32


def _log(msg: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def _register(db_path: str, n: int) -> None:
    from chargeyard.store.chargers import ChargerCredentials
    from chargeyard.store.passwords import hash_password
    from chargeyard.store.sqlite import SqliteStore

    h = hash_password(PASSWORD)
    async with SqliteStore(db_path) as s:
        for i in range(n):
            await s.put_charger_credentials(ChargerCredentials(charger_id=f"{PREFIX}-{i:07d}",
                                                               security_profile=1, password_hash=h))


def password_checks(metrics_text: str | None) -> dict[str, float]:
    """``chargeyard_ws_password_checks_total`` by ``via`` from a /metrics text."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^chargeyard_ws_password_checks_total\{via="(\w+)"\} ([0-9.e+]+)$', metrics_text or "", re.M)}


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def authenticated_spec(spec: dict, data_dir: str) -> dict | None:
    """The Chargeyard target's command on a fixed data dir (kept across the restart), at
    security profile 1; None when the command has no ``{data_dir}`` to fix."""
    if "{data_dir}" not in spec["cmd"]:
        return None
    return dict(spec, label=spec["label"] + ", profile 1",
                cmd=spec["cmd"].replace("{data_dir}", data_dir)
                + " --security-profile 1 --unknown-chargers reject")


def measure(spec: dict, chargers: int, cfg: dict, o, logdir: str) -> dict:
    """Steps 1-4 of the module doc against the Chargeyard target ``spec``."""
    data_dir = tempfile.mkdtemp(prefix="cy-bench-auth-")
    out: dict = {"chargers": chargers}
    try:
        auth = authenticated_spec(spec, data_dir)
        if auth is None:
            return {"unavailable": "the Chargeyard command has no {data_dir} to keep across a restart"}
        asyncio.run(_register(f"{data_dir}/chargeyard.db", chargers))
        gcfg = dict(cfg, password=PASSWORD)
        srv = runner.start_server("chargeyard-auth", auth, o.server_cpus, logdir, o.ready_timeout_s)
        pool = None
        try:
            pool = runner.GenPool(srv.url, chargers, dict(gcfg, connect_concurrency=FIRST_CONNECT_CONCURRENCY),
                                  o.gen_procs, o.gen_cpus, logdir, prefix=PREFIX, server_cpus=o.server_cpus)
            first = pool.wait_ready(timeout=900)
            first["password_checks"] = password_checks(srv.metrics())
            out["first_connect"] = first
            _log(f"auth storm: {first['connected']} chargers first connected in {first['setup_s']:.1f} s "
                 f"(scrypt each: {first['password_checks'].get('scrypt', 0):.0f} runs)")
            # the restart: chargers stay down while the server stops and a new one starts
            pool.command({"cmd": "hold"}, 30)
            srv.stop()
            deadline = time.monotonic() + 30
            while sum(r["ready"] for r in pool.command({"cmd": "ping"}, 30)) and time.monotonic() < deadline:
                time.sleep(0.1)
            srv = runner.start_server("chargeyard-auth", auth, o.server_cpus, logdir, o.ready_timeout_s)
            before = password_checks(srv.metrics())
            storm = runner.measure_storm(srv, pool, o.storm_timeout_s, {"cmd": "rejoin", "url": srv.url})
            storm["password_checks"] = _delta(before, password_checks(srv.metrics()))
            out["storm"] = storm
            _log(f"auth storm of {storm['chargers']} after a restart: absorbed in {storm['absorb_s']} s, "
                 f"password checks {storm['password_checks']}")
        finally:
            if pool is not None:
                pool.close()
            srv.stop()
    except Exception as exc:  # keep the rest of the comparison
        out["error"] = f"{type(exc).__name__}: {exc}"
        _log(f"auth storm: ERROR {out['error']}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return out


__all__ = ["measure", "password_checks", "authenticated_spec", "PASSWORD"]
