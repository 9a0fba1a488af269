"""Reconnect storm with authenticated chargers (security profile 1): what the password
checks cost the node, cold (the first connection of each charger to this process: one
scrypt each, in the verifier's thread pool) and warm (a reconnect with the password this
process already verified: one HMAC each).

    .venv/bin/python -m chargeyard.bench.auth_storm [--chargers 300] [--concurrency 300]

It registers ``--chargers`` chargers straight into a fresh SQLite store (one hash for
all: registration is not what is measured), starts ``chargeyard run --security-profile
1``, connects every charger at once with HTTP Basic (honouring ``Retry-After`` on 503),
then closes them all and connects them again. Per phase it prints the storm's duration,
handshakes/s, the refusals by status and the node's CPU seconds; the last line is one
JSON object. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSWORD = "storm-password-000001"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _register(data_dir: Path, n: int) -> None:
    from chargeyard.store.chargers import ChargerCredentials
    from chargeyard.store.passwords import hash_password
    from chargeyard.store.sqlite import SqliteStore

    h = hash_password(PASSWORD)
    async with SqliteStore(data_dir / "chargeyard.db") as s:
        for i in range(n):
            await s.put_charger_credentials(ChargerCredentials(charger_id=f"AUTH-{i:05d}", security_profile=1,
                                                               password_hash=h))


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def _storm(url: str, n: int, concurrency: int, timeout: float) -> tuple[float, dict, list]:
    import websockets

    sem = asyncio.Semaphore(concurrency)
    refusals: dict[str, int] = {}
    conns: list = []

    async def one(i: int) -> None:
        cid = f"AUTH-{i:05d}"
        auth = "Basic " + base64.b64encode(f"{cid}:{PASSWORD}".encode()).decode()
        while True:
            async with sem:
                try:
                    ws = await websockets.connect(f"{url}/ocpp/{cid}", subprotocols=["ocpp1.6"],
                                                  additional_headers={"Authorization": auth},
                                                  open_timeout=timeout)
                    conns.append(ws)
                    return
                except websockets.InvalidStatus as exc:
                    status = exc.response.status_code
                    refusals[str(status)] = refusals.get(str(status), 0) + 1
                    wait = float(exc.response.headers.get("Retry-After", "1"))
                except (OSError, asyncio.TimeoutError) as exc:
                    refusals[type(exc).__name__] = refusals.get(type(exc).__name__, 0) + 1
                    wait = 0.5
            await asyncio.sleep(wait * (0.5 + (i % 100) / 100))  # jittered, as chargers do

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, refusals, conns


async def _close(conns: list) -> None:
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def _run(a: argparse.Namespace, url: str, pid: int) -> dict:
    out: dict = {"chargers": a.chargers}
    for phase in ("cold", "warm"):
        cpu0 = _cpu(pid)
        seconds, refusals, conns = await _storm(url, a.chargers, a.concurrency, a.timeout)
        cpu = _cpu(pid) - cpu0
        out[phase] = {"seconds": round(seconds, 2), "handshakes_per_s": round(a.chargers / seconds, 1),
                      "refused": refusals, "node_cpu_s": round(cpu, 2)}
        print(f"{phase}: {a.chargers} authenticated chargers in {seconds:.2f} s "
              f"({a.chargers / seconds:.1f}/s), node CPU {cpu:.2f} s, refused {refusals or 'none'}")
        await _close(conns)
        await asyncio.sleep(0.5)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=300, help="handshakes in flight from the generator")
    ap.add_argument("--timeout", type=float, default=30.0, help="per handshake")
    a = ap.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="cy-auth-storm-"))
    asyncio.run(_register(data, a.chargers))
    ws_port, http_port = _free_port(), _free_port()
    node = subprocess.Popen([sys.executable, "-m", "chargeyard.cli", "run", "--host", "127.0.0.1",
                             "--ws-port", str(ws_port), "--http-port", str(http_port), "--data-dir", str(data),
                             "--security-profile", "1", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        out = asyncio.run(_run(a, f"ws://127.0.0.1:{ws_port}", node.pid))
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(15)
        except subprocess.TimeoutExpired:
            node.kill()
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
