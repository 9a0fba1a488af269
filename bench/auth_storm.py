"""Reconnect storm with authenticated chargers (security profile 1): what the password
checks cost the node

* ``cold``: the first connection of each charger (one scrypt each, in the verifier's
  thread pool);
* ``warm``: a reconnect to the same process (its own verifier: one HMAC each);
* ``restarted``: a reconnect to a new process on the same data dir (the stored
  verifiers, ADR 0019: one HMAC each, no scrypt);
* ``restarted_new_key``: the same after deleting the cache key file, so the stored
  verifiers are void: what every restart cost before ADR 0019 (one scrypt each).

    .venv/bin/python -m chargeyard.bench.auth_storm [--chargers 300] [--concurrency 300]

It registers ``--chargers`` chargers straight into a fresh SQLite store (one hash for
all: registration is not what is measured), starts ``chargeyard run --security-profile
1``, connects every charger at once with HTTP Basic (honouring ``Retry-After`` on 503),
closes them all and connects them again, per phase. Per phase it prints the storm's
duration, handshakes/s, the refusals by status, the node's CPU seconds and its password
checks by kind; the last line is one JSON object. Not a test: the figures depend on the
machine.
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


def _checks(http_port: int) -> dict[str, float]:
    import urllib.request

    from chargeyard.bench.auth_phase import password_checks

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        return password_checks(r.read().decode())


async def _phase(a: argparse.Namespace, name: str, url: str, pid: int, http_port: int) -> dict:
    checks0, cpu0 = _checks(http_port), _cpu(pid)
    seconds, refusals, conns = await _storm(url, a.chargers, a.concurrency, a.timeout)
    cpu = _cpu(pid) - cpu0
    checks = {k: v - checks0.get(k, 0) for k, v in _checks(http_port).items()}
    print(f"{name}: {a.chargers} authenticated chargers in {seconds:.2f} s "
          f"({a.chargers / seconds:.1f}/s), node CPU {cpu:.2f} s, refused {refusals or 'none'}, "
          f"password checks {checks}")
    await _close(conns)
    await asyncio.sleep(0.5)
    return {"seconds": round(seconds, 2), "handshakes_per_s": round(a.chargers / seconds, 1),
            "refused": refusals, "node_cpu_s": round(cpu, 2), "password_checks": checks}


class _Node:
    """``chargeyard run --security-profile 1`` on ``data``, started and stopped."""

    def __init__(self, data: Path) -> None:
        import urllib.request

        self.ws_port, self.http_port = _free_port(), _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "chargeyard.cli", "run", "--host", "127.0.0.1",
                                      "--ws-port", str(self.ws_port), "--http-port", str(self.http_port),
                                      "--data-dir", str(data), "--security-profile", "1", "--log-level", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        self.url = f"ws://127.0.0.1:{self.ws_port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=300, help="handshakes in flight from the generator")
    ap.add_argument("--timeout", type=float, default=30.0, help="per handshake")
    a = ap.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="cy-auth-storm-"))
    asyncio.run(_register(data, a.chargers))
    out: dict = {"chargers": a.chargers}
    node: _Node | None = None
    try:
        # (phase, restart the node before it, delete the cache key before that restart)
        for phase, restart, new_key in (("cold", True, False), ("warm", False, False),
                                        ("restarted", True, False), ("restarted_new_key", True, True)):
            if restart:
                if node is not None:
                    node.stop()
                if new_key:
                    from chargeyard.worker.security.authcache import KEY_FILE_NAME

                    (data / KEY_FILE_NAME).unlink()
                node = _Node(data)
            out[phase] = asyncio.run(_phase(a, phase, node.url, node.proc.pid, node.http_port))
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
