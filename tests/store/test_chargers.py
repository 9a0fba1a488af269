"""Charger credentials and security events (store/chargers.py) on SQLite, ScyllaDB's
store (on the session's CQL server) and the in-memory reference: the same behaviour."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from chargeyard.store.chargers import ChargerCredentials, MemoryChargerCredentials, SecurityEvent
from chargeyard.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "memory", "scylla"])
def make(request, tmp_path):
    if request.param == "scylla":  # the session's CQL server (tests/store/conftest.py)
        import uuid

        from chargeyard.store import make_store

        hosts = request.getfixturevalue("cassandra").hosts
        options = {"scylla_hosts": hosts, "keyspace": "cy_creds_" + uuid.uuid4().hex[:12]}
        asyncio.run(make_store("scylla", **options).migrate())
        return lambda: make_store("scylla", **options)
    if request.param == "memory":
        class Mem(MemoryChargerCredentials):
            async def __aenter__(self):
                return self

            async def __aexit__(self, *a):
                return None
        return Mem
    return lambda: SqliteStore(tmp_path / "c.db")


def test_credentials_round_trip(make):
    async def main():
        async with make() as s:
            assert await s.get_charger_credentials("CP1") is None
            c = ChargerCredentials(charger_id="CP1", security_profile=2, password_hash="scrypt$a")
            await s.put_charger_credentials(c)
            assert await s.get_charger_credentials("CP1") == c
            c2 = msgspec.structs.replace(c, pending_password_hash="scrypt$b", previous_password_hash="scrypt$0")
            await s.put_charger_credentials(c2)
            got = await s.get_charger_credentials("CP1")
            assert got == c2 and got.hashes() == ("scrypt$a", "scrypt$b", "scrypt$0")
            await s.put_charger_credentials(ChargerCredentials(charger_id="CP0", security_profile=3))
            assert await s.registered_charger_ids() == ["CP0", "CP1"]
            assert await s.registered_charger_ids(limit=1) == ["CP0"]
            assert await s.delete_charger_credentials("CP1")
            assert not await s.delete_charger_credentials("CP1")
            assert await s.get_charger_credentials("CP1") is None

    asyncio.run(main())


def test_security_events_newest_first(make):
    async def main():
        async with make() as s:
            for i in range(3):
                await s.add_security_event(SecurityEvent(charger_id="CP1", type=f"T{i}", at=f"2026-01-0{i + 1}T00:00:00Z",
                                                         tech_info="x" if i else ""))
            await s.add_security_event(SecurityEvent(charger_id="CP2", type="Other", at="2026-01-01T00:00:00Z"))
            got = await s.list_security_events("CP1")
            assert [e.type for e in got] == ["T2", "T1", "T0"] and got[0].tech_info == "x"
            assert [e.type for e in await s.list_security_events("CP1", limit=1)] == ["T2"]

    asyncio.run(main())


def test_verifier_is_part_of_the_record_and_updated_alone(make):
    """The stored password verifier (ADR 0019): put/get carry it, put_charger_verifier
    changes only it, never registers an unknown id, and a deregistration takes it along."""
    async def main():
        async with make() as s:
            c = ChargerCredentials(charger_id="CP1", security_profile=1, password_hash="scrypt$a")
            await s.put_charger_credentials(c)
            assert (await s.get_charger_credentials("CP1")).verifier == ""
            await s.put_charger_verifier("CP1", "v1$mac-1")
            assert await s.get_charger_credentials("CP1") == msgspec.structs.replace(c, verifier="v1$mac-1")
            rotated = msgspec.structs.replace(c, pending_password_hash="scrypt$b", verifier="v1$mac-1")
            await s.put_charger_credentials(rotated)  # a rotation step keeps it (bound to its hash)
            assert await s.get_charger_credentials("CP1") == rotated
            await s.put_charger_verifier("CP-unknown", "v1$mac-2")
            assert await s.get_charger_credentials("CP-unknown") is None
            assert "CP-unknown" not in await s.registered_charger_ids()
            assert await s.delete_charger_credentials("CP1")
            await s.put_charger_credentials(c)  # registered again: no verifier from before
            assert (await s.get_charger_credentials("CP1")).verifier == ""

    asyncio.run(main())
