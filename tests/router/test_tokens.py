"""API tokens: scopes nest, ACL globs, file reload, Redis revoke seen at once."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from chargeyard.router.registry import RegistryUnavailable
from chargeyard.router.tokens import FileTokens, RedisTokens, token_hash

GRANTS = {
    "reader": ["read"],
    "operator": {"scopes": ["command"], "chargers": ["CP-*", "DEPOT-1"]},
    f"sha256:{token_hash('boss')}": {"scopes": ["admin"]},
}


async def _matrix(store) -> None:
    a = store.authorize
    assert await a(None, "read") == "unauthenticated"
    assert await a("", "read") == "unauthenticated"
    assert await a("nope", "read") == "unauthenticated"
    assert await a("reader", "read") == "ok"
    assert await a("reader", "read", "ANY-1") == "ok"
    assert await a("reader", "command", "CP-1") == "forbidden"
    assert await a("operator", "command", "CP-1") == "ok"
    assert await a("operator", "read", "DEPOT-1") == "ok"  # command implies read
    assert await a("operator", "command", "DEPOT-2") == "forbidden"  # outside its ACL
    assert await a("operator", "command", "cp-1") == "forbidden"  # globs are case-sensitive
    assert await a("operator", "admin") == "forbidden"
    assert await a("boss", "admin") == "ok"
    assert await a("boss", "command", "X") == "ok"
    with pytest.raises(ValueError):
        await a("boss", "superuser")


def test_file_tokens_json(tmp_path, arun):
    p = tmp_path / "tokens.json"
    p.write_text(json.dumps({"tokens": GRANTS}))
    arun(_matrix(FileTokens(p)))


def test_file_tokens_toml(tmp_path, arun):
    p = tmp_path / "tokens.toml"
    p.write_text(f"""
[tokens]
reader = ["read"]
"sha256:{token_hash('boss')}" = {{ scopes = ["admin"] }}

[tokens.operator]
scopes = ["command"]
chargers = ["CP-*", "DEPOT-1"]
""")
    arun(_matrix(FileTokens(p)))


def test_file_tokens_reload_and_bad_files(tmp_path, arun):
    p = tmp_path / "tokens.json"
    p.write_text(json.dumps({"t1": ["read"]}))
    store = FileTokens(p, reload_s=0.0)

    async def body():
        assert await store.authorize("t1", "read") == "ok"
        p.write_text(json.dumps({"t2": ["read"]}))
        os.utime(p, ns=(1, 10**18))  # make the change visible whatever the fs granularity
        assert await store.authorize("t1", "read") == "unauthenticated"  # revoked by edit
        assert await store.authorize("t2", "read") == "ok"
        p.write_text("{broken")
        os.utime(p, ns=(1, 2 * 10**18))
        assert await store.authorize("t2", "read") == "ok"  # last good table stays

    arun(body())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"t": ["root"]}))
    with pytest.raises(ValueError):
        FileTokens(bad)


def test_redis_tokens_revoke_seen_by_every_node(srv, arun):
    async def body():
        admin, node2 = RedisTokens(srv.url), RedisTokens(srv.url)
        try:
            await admin.add("reader", ["read"])
            await admin.add("operator", ["command"], ["CP-*", "DEPOT-1"])
            await admin.add("boss", ["admin"])
            await _matrix(node2)
            # only the hash is stored
            raw = [k for k in ("reader", "operator", "boss")]
            for tok in raw:  # only the hash is stored
                assert await admin._r.exists(f"cy:token:{{{tok}}}") == 0
                assert await admin._r.exists(f"cy:token:{{{token_hash(tok)}}}") == 1
            assert await node2.authorize("operator", "command", "CP-9") == "ok"
            assert await admin.revoke("operator") is True
            assert await node2.authorize("operator", "command", "CP-9") == "unauthenticated"
            assert await admin.revoke("operator") is False
        finally:
            await admin.close()
            await node2.close()

    arun(body())


def test_redis_tokens_cache_bounded_and_outage(fresh_valkey, arun):
    async def body():
        admin, cached = RedisTokens(fresh_valkey.url), RedisTokens(fresh_valkey.url, cache_s=0.3)
        try:
            await admin.add("t", ["read"])
            assert await cached.authorize("t", "read") == "ok"
            await admin.revoke("t")
            await asyncio.sleep(0.35)
            assert await cached.authorize("t", "read") == "unauthenticated"
            with pytest.raises(ValueError):
                RedisTokens(fresh_valkey.url, cache_s=5)
            await asyncio.to_thread(fresh_valkey.kill)
            with pytest.raises(RegistryUnavailable):
                await admin.authorize("t", "read")
        finally:
            await admin.close()
            await cached.close()

    arun(body())


def test_redis_tokens_seeded_from_file(valkey, flush, tmp_path, arun):
    p = tmp_path / "tokens.json"
    p.write_text(json.dumps({"tokens": GRANTS}))

    async def body():
        node = RedisTokens(valkey.url, seed_file=p)
        try:
            await _matrix(node)
            assert await node.revoke("reader") is True
            assert await node.authorize("reader", "read") == "unauthenticated"
            assert await node.authorize("boss", "admin") == "ok"
        finally:
            await node.close()

    arun(body())
