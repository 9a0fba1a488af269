"""The stored password verifiers (worker/security/authcache.py, ADR 0019): a restarted
worker (new process, same store and key) admits a reconnect storm without one scrypt
run, and the verifier never lets a wrong password, a rotated hash or another key in."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import stat
from types import SimpleNamespace

import msgspec
import pytest
import websockets

from chargeyard.store.chargers import ChargerCredentials
from chargeyard.store.passwords import hash_password
from chargeyard.store.sqlite import SqliteStore
from chargeyard.worker.security.authcache import (KEY_FILE_NAME, CacheKey, CacheKeyError, load_cache_key,
                                                  make_verifier, match_verifier)
from chargeyard.worker.security.service import ChargerSecurity, SecurityConfigError
from chargeyard.worker.security.tls import PeerIdentity
from chargeyard.worker.server import parse_charger_id
from tests.cassandra.fixtures import cassandra  # noqa: F401  (the session's CQL server, for the scylla case)
from tests.support import NodeProc

PW = "storm-password-000001"
PEER = PeerIdentity(address="127.0.0.1")


def basic(cid: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{cid}:{password}".encode()).decode()


# -- the verifier itself ---------------------------------------------------------------

def test_verifier_binds_key_charger_hash_and_password():
    k1, k2 = CacheKey(b"k" * 32, "test", True), CacheKey(b"j" * 32, "test", True)
    h1, h2 = "scrypt$ln=10,r=8,p=1$a$b", "scrypt$ln=10,r=8,p=1$c$d"
    v = make_verifier(k1, "CP1", h1, PW)
    assert v.startswith("v1$") and PW not in v
    assert match_verifier(k1, v, "CP1", PW, (h2, h1)) == h1
    assert match_verifier(k1, v, "CP1", PW + "x", (h1,)) is None      # wrong password
    assert match_verifier(k1, v, "CP2", PW, (h1,)) is None             # another charger
    assert match_verifier(k1, v, "CP1", PW, (h2,)) is None             # hash rotated away
    assert match_verifier(k2, v, "CP1", PW, (h1,)) is None             # another key
    assert match_verifier(k1, "", "CP1", PW, (h1,)) is None
    # length-prefixed fields: moving a character from one field to the next changes the MAC
    assert make_verifier(k1, "CP1", h1, PW) != make_verifier(k1, "CP1" + h1[:1], h1[1:], PW)
    assert "k" * 32 not in repr(k1)


def test_key_file_made_once_0600_and_shared(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    a = load_cache_key(data_dir=str(tmp_path))
    path = tmp_path / KEY_FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and a.shared and a.source == str(path)
    assert load_cache_key(data_dir=str(tmp_path)).secret == a.secret   # a restart reads the same key
    assert load_cache_key(key_file=str(path)).secret == a.secret
    assert load_cache_key(key="x" * 40).secret != a.secret              # the configured key wins
    with pytest.raises(CacheKeyError):
        load_cache_key(key_file=str(tmp_path / "missing.key"))        # a given file is never made up
    short = tmp_path / "short.key"
    short.write_text("0123456789")
    with pytest.raises(CacheKeyError) as exc:
        load_cache_key(key_file=str(short))
    assert "0123456789" not in str(exc.value)
    with pytest.raises(CacheKeyError):
        load_cache_key(key="too-short")
    assert not load_cache_key().shared
    assert a.secret.decode() not in caplog.text


# -- a restarted worker on the same store ----------------------------------------------

def _settings(data_dir, **kw):
    base = dict(security_profile=1, unknown_chargers="reject", tls_cert="", tls_key="", tls_client_ca="",
                trusted_proxies="", ca_cert="", ca_key="", data_dir=str(data_dir), auth_cache_key="",
                auth_cache_key_file="")
    return SimpleNamespace(**{**base, **kw})


async def _storm(sec: ChargerSecurity, ids, password=PW):
    decisions = await asyncio.gather(*(sec.auth.decide(cid, basic(cid, password), PEER) for cid in ids))
    for _ in range(500):  # the verifiers' store writes (background tasks)
        if not sec._tasks:
            break
        await asyncio.sleep(0.01)
    return [d.status for d in decisions]


@pytest.fixture(params=["sqlite", "scylla"])
def open_store(request, tmp_path):
    """A store factory: SQLite, or the ScyllaDB store on the session's Cassandra
    (tests/cassandra; a fresh keyspace)."""
    if request.param == "scylla":
        import uuid

        from chargeyard.store import make_store

        options = {"scylla_hosts": request.getfixturevalue("cassandra").hosts,
                   "keyspace": "cy_authcache_" + uuid.uuid4().hex[:12]}
        asyncio.run(make_store("scylla", **options).migrate())
        return lambda: make_store("scylla", **options)
    return lambda: SqliteStore(tmp_path / "c.db")


def test_restarted_worker_absorbs_the_storm_without_scrypt(tmp_path, caplog, open_store):
    caplog.set_level(logging.DEBUG)
    ids = [f"CP{i:03d}" for i in range(30)]
    data = tmp_path / "data"

    async def main():
        async with open_store() as store:
            h = hash_password(PW, ln=10)
            for cid in ids:
                await store.put_charger_credentials(ChargerCredentials(charger_id=cid, password_hash=h))

            first = ChargerSecurity(_settings(data), store, parse_charger_id)
            assert await _storm(first, ids) == [101] * len(ids)
            assert first.auth.verifier.slow_checks == len(ids)        # cold: one scrypt each
            first.close()
            stored = await store.get_charger_credentials(ids[0])
            assert stored.verifier.startswith("v1$") and PW not in stored.verifier

            # the worker restarts: a new verifier, same store, same key file
            second = ChargerSecurity(_settings(data), store, parse_charger_id)
            assert await _storm(second, ids) == [101] * len(ids)
            v = second.auth.verifier
            assert (v.slow_checks, v.stored_checks) == (0, len(ids))

            # a wrong password is still refused after a hit exists, and runs scrypt
            d = await second.auth.decide(ids[0], basic(ids[0], "wrong-password-00001"), PEER)
            assert (d.status, d.reason, v.slow_checks) == (401, "bad_password", 1)
            second.close()

            # another key (a misconfigured worker) cannot use the verifiers: scrypt again
            other = ChargerSecurity(_settings(data, auth_cache_key="another-key-" + "z" * 30), store,
                                    parse_charger_id)
            assert await _storm(other, ids[:5]) == [101] * 5
            assert (other.auth.verifier.slow_checks, other.auth.verifier.stored_checks) == (5, 0)
            other.close()

    asyncio.run(main())
    assert PW not in caplog.text


def test_rotation_and_reregistration_invalidate_the_stored_verifier(tmp_path):
    async def main():
        async with SqliteStore(tmp_path / "c.db") as store:
            h_old, new_pw = hash_password(PW, ln=10), "rotated-password-0002"
            h_new = hash_password(new_pw, ln=10)
            await store.put_charger_credentials(ChargerCredentials(charger_id="CP1", password_hash=h_old))
            warm = ChargerSecurity(_settings(tmp_path), store, parse_charger_id)
            assert await _storm(warm, ["CP1"]) == [101]
            warm.close()

            # the rotation is complete: only the new hash is in force (the verifier row stays)
            creds = await store.get_charger_credentials("CP1")
            await store.put_charger_credentials(msgspec.structs.replace(creds, password_hash=h_new))
            sec = ChargerSecurity(_settings(tmp_path), store, parse_charger_id)
            d = await sec.auth.decide("CP1", basic("CP1", PW), PEER)
            assert d.status == 401 and sec.auth.verifier.stored_checks == 0   # old password: out
            assert await _storm(sec, ["CP1"], new_pw) == [101]
            assert sec.auth.verifier.slow_checks == 2
            sec.close()

            # re-registered with the same password: a new salted hash, the old verifier is void
            await store.delete_charger_credentials("CP1")
            await store.put_charger_credentials(ChargerCredentials(charger_id="CP1", password_hash=h_old))
            sec = ChargerSecurity(_settings(tmp_path), store, parse_charger_id)
            assert await _storm(sec, ["CP1"]) == [101]
            assert (sec.auth.verifier.slow_checks, sec.auth.verifier.stored_checks) == (1, 0)
            sec.close()

    asyncio.run(main())


def test_a_missing_configured_key_file_refuses_to_start(tmp_path):
    from chargeyard.store.chargers import MemoryChargerCredentials

    with pytest.raises(SecurityConfigError):
        ChargerSecurity(_settings(tmp_path, auth_cache_key_file=str(tmp_path / "none.key")),
                        MemoryChargerCredentials(), parse_charger_id)


# -- real processes: `chargeyard run`, stopped and started again -----------------------

def _checks(node: NodeProc) -> dict[str, float]:
    status, text = node.get("/metrics")
    assert status == 200
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^chargeyard_ws_password_checks_total\{via="(\w+)"\} ([0-9.e+]+)$', text, re.M)}


async def _connect_all(node: NodeProc, ids, password=PW) -> list[int]:
    async def one(cid):
        try:
            async with websockets.connect(node.ws(cid), subprotocols=["ocpp1.6"], open_timeout=30,
                                          additional_headers={"Authorization": basic(cid, password)}):
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
    return list(await asyncio.gather(*(one(cid) for cid in ids)))


def _wait_for_stored_verifiers(db, n: int, timeout: float = 15.0) -> None:
    import sqlite3
    import time

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            have = conn.execute("SELECT count(*) FROM charger_credentials WHERE verifier != ''").fetchone()[0]
        if have >= n:
            return
        assert time.monotonic() < deadline, f"{have}/{n} verifiers stored"
        time.sleep(0.05)


def test_node_restart_storm_runs_no_scrypt(tmp_path):
    data = tmp_path / "d"
    ids = [f"CP-R{i}" for i in range(8)]
    args = ("--security-profile", "1", "--unknown-chargers", "reject")
    node = NodeProc(data, *args).start()
    try:
        for cid in ids:
            assert node.request("PUT", f"/api/v1/chargers/{cid}", {"security_profile": 1, "password": PW})[0] == 201
        assert asyncio.run(_connect_all(node, ids)) == [101] * len(ids)
        assert _checks(node)["scrypt"] == len(ids)
        _wait_for_stored_verifiers(data / "chargeyard.db", len(ids))  # written after the handshake
    finally:
        node.stop()
    assert stat.S_IMODE(os.stat(data / KEY_FILE_NAME).st_mode) == 0o600

    node = NodeProc(data, *args).start()  # a new process: nothing cached in memory
    try:
        assert asyncio.run(_connect_all(node, ids)) == [101] * len(ids)
        checks = _checks(node)
        assert checks["scrypt"] == 0 and checks["stored_verifier"] == len(ids)
        assert asyncio.run(_connect_all(node, ids[:1], "wrong-password-00001")) == [401]
        assert _checks(node)["scrypt"] == 1
    finally:
        node.stop()
    assert PW not in "\n".join(node.log)
