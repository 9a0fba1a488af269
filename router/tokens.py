"""API bearer tokens: scopes and per-charger ACLs.

Scopes nest: ``admin`` ⊇ ``command`` ⊇ ``read``. A grant may carry an ACL, a list
of charger-id globs (``fnmatch``, case-sensitive); without one it covers every
charger. Tokens are only ever stored hashed (SHA-256 hex) in Redis; a file may
hold them in clear or as ``sha256:<hex>``. ``POST /api/v1/tokens`` generates the secret
(256 random bits), shows it once and stores its hash; the token's id is that hash.

Secrets are never compared with each other: a presented token is hashed and its hash
looked up, so a lookup's timing depends on SHA-256 output an attacker cannot steer, not
on how much of a real secret a guess matches.

``authorize(token, scope, charger_id=None)`` answers ``"ok"``, ``"unauthenticated"``
(no or unknown token: HTTP 401) or ``"forbidden"`` (scope or ACL: HTTP 403). With
``charger_id=None`` only the scope is checked; list endpoints filter with
``Grant.covers``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from .registry import RegistryUnavailable

log = logging.getLogger("chargeyard.router.tokens")

Verdict = Literal["ok", "unauthenticated", "forbidden"]
SCOPES = ("read", "command", "admin")
_IMPLIED = {"read": {"read"}, "command": {"read", "command"}, "admin": set(SCOPES)}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_key(token: str) -> str:
    return f"cy:token:{{{token_hash(token)}}}"


def _check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    out = frozenset(scopes)
    bad = out - set(SCOPES)
    if bad:
        raise ValueError(f"unknown scope(s) {sorted(bad)}; known: {', '.join(SCOPES)}")
    return out


@dataclass(frozen=True, slots=True)
class Grant:
    scopes: frozenset[str]
    chargers: tuple[str, ...] = ()  # globs; empty = every charger

    def has(self, scope: str) -> bool:
        return any(scope in _IMPLIED[s] for s in self.scopes)

    def covers(self, charger_id: str) -> bool:
        return not self.chargers or any(fnmatchcase(charger_id, g) for g in self.chargers)


class TokenStore(ABC):
    @abstractmethod
    async def grant(self, token: str) -> Grant | None:
        """The grant of ``token``, or None if unknown/revoked."""

    async def authorize(self, token: str | None, scope: str, charger_id: str | None = None) -> Verdict:
        if scope not in _IMPLIED:
            raise ValueError(f"unknown scope {scope!r}")
        if not token:
            return "unauthenticated"
        g = await self.grant(token)
        if g is None:
            return "unauthenticated"
        if not g.has(scope):
            return "forbidden"
        if charger_id is not None and not g.covers(charger_id):
            return "forbidden"
        return "ok"

    async def close(self) -> None:
        return None


def _parse_grants(data: Mapping) -> dict[str, Grant]:
    """``{token|"sha256:<hex>": [scopes] | {"scopes": [...], "chargers": [...]}}``,
    optionally under a top-level ``tokens`` key. Returns hash -> Grant."""
    table = data.get("tokens", data)
    if not isinstance(table, Mapping):
        raise ValueError("tokens must be a table token -> scopes")
    out: dict[str, Grant] = {}
    for tok, spec in table.items():
        if isinstance(spec, str):
            spec = [spec]
        if isinstance(spec, list):
            scopes, chargers = spec, []
        elif isinstance(spec, Mapping):
            scopes, chargers = spec.get("scopes", []), spec.get("chargers", [])
        else:
            raise ValueError(f"bad grant for a token: {spec!r}")
        if isinstance(chargers, str):
            chargers = [chargers]
        h = tok[7:].lower() if tok.startswith("sha256:") else token_hash(tok)
        out[h] = Grant(_check_scopes(scopes), tuple(chargers))
    return out


def _load_file(path: Path) -> dict[str, Grant]:
    """A JSON or TOML (by suffix) tokens file -> token hash -> Grant."""
    raw = path.read_bytes()
    data = tomllib.loads(raw.decode()) if path.suffix.lower() == ".toml" else json.loads(raw)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a table of tokens")
    return _parse_grants(data)


class FileTokens(TokenStore):
    """Tokens from a JSON or TOML file (by suffix), re-read when it changes (checked
    at most every ``reload_s``)."""

    def __init__(self, path: str | Path, reload_s: float = 1.0) -> None:
        self.path = Path(path)
        self.reload_s = reload_s
        self._grants = self._load()  # a broken file at start is an error
        self._mtime = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return -1

    def _load(self) -> dict[str, Grant]:
        return _load_file(self.path)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.reload_s:
            return
        self._checked = now
        mtime = self._stat()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self._grants = self._load() if mtime != -1 else {}
        except (OSError, ValueError) as exc:  # keep the last good table
            log.error("tokens file %s unreadable, keeping previous tokens: %s", self.path, exc)

    async def grant(self, token: str) -> Grant | None:
        self._maybe_reload()
        return self._grants.get(token_hash(token))


class RedisTokens(TokenStore):
    """Tokens in Redis: hash ``cy:token:{<sha256>}`` with ``scopes`` (comma list) and
    ``chargers`` (JSON list of globs). Read on every request (``cache_s=0``, the
    default) so a revoke is seen by every node at once; ``cache_s`` <= 1 s caps the
    delay if the read rate matters more."""

    def __init__(self, url: str, cache_s: float = 0.0, *, seed_file: str | Path | None = None,
                 op_timeout: float = 1.0) -> None:
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisClusterException, RedisError
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.retry import Retry

        self._redis_error = (RedisError, RedisClusterException)

        if not 0 <= cache_s <= 1.0:
            raise ValueError("cache_s must be within [0, 1] seconds")
        self.cache_s = cache_s
        opts = dict(decode_responses=True, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                    socket_connect_timeout=op_timeout / 2, socket_timeout=op_timeout)
        if url.split("://", 1)[0].endswith("+cluster"):  # as RedisRegistry
            self._r = aioredis.RedisCluster.from_url(url.replace("+cluster://", "://", 1), **opts)
        else:
            self._r = aioredis.Redis.from_url(url, **opts)
        self._cache: dict[str, tuple[float, Grant | None]] = {}
        # a tokens file (FileTokens format) copied into Redis before the first check;
        # only tokens missing from Redis are written, so edits made in Redis stay
        self._seed: dict[str, Grant] | None = _load_file(Path(seed_file)) if seed_file else None
        self._seed_lock = asyncio.Lock()

    async def seed(self, grants: Mapping[str, Grant]) -> int:
        """Write grants (token hash -> Grant) that Redis does not have yet."""
        n = 0
        for h, g in grants.items():
            key = f"cy:token:{{{h}}}"
            if await self._r.hsetnx(key, "scopes", ",".join(sorted(g.scopes))):
                await self._r.hset(key, "chargers", json.dumps(list(g.chargers)))
                n += 1
        return n

    async def _ensure_seeded(self) -> None:
        if self._seed is None:
            return
        async with self._seed_lock:
            if self._seed is None:
                return
            try:
                n = await self.seed(self._seed)
            except (*self._redis_error, OSError, asyncio.TimeoutError) as exc:
                raise RegistryUnavailable(f"token store unavailable: {exc}") from exc
            log.info("seeded %d API tokens into redis", n)
            self._seed = None

    async def add(self, token: str, scopes: Iterable[str], chargers: Iterable[str] = ()) -> None:
        s = _check_scopes(scopes)
        await self._r.hset(token_key(token), mapping={
            "scopes": ",".join(sorted(s)), "chargers": json.dumps(list(chargers))})
        self._cache.pop(token_hash(token), None)

    async def revoke(self, token: str) -> bool:
        return await self.revoke_id(token_hash(token))

    async def revoke_id(self, token_id: str) -> bool:
        """Revoke by the token's id (its SHA-256 hex): what ``DELETE /tokens/{id}`` gets,
        so the secret never travels in a URL."""
        self._cache.pop(token_id, None)
        return bool(await self._r.delete(f"cy:token:{{{token_id}}}"))

    async def grant(self, token: str) -> Grant | None:
        await self._ensure_seeded()
        h = token_hash(token)
        if self.cache_s:
            hit = self._cache.get(h)
            if hit is not None and time.monotonic() - hit[0] < self.cache_s:
                return hit[1]
        try:
            rec = await self._r.hgetall(f"cy:token:{{{h}}}")
        except (*self._redis_error, OSError, asyncio.TimeoutError) as exc:
            raise RegistryUnavailable(f"token store unavailable: {exc}") from exc
        g = None
        if rec:
            try:
                scopes = [s for s in rec.get("scopes", "").split(",") if s]
                g = Grant(_check_scopes(scopes), tuple(json.loads(rec.get("chargers") or "[]")))
            except ValueError:
                log.error("malformed token record %s", h[:12])
        if self.cache_s:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[h] = (time.monotonic(), g)
        return g

    async def close(self) -> None:
        await self._r.aclose()


__all__ = ["TokenStore", "FileTokens", "RedisTokens", "Grant", "Verdict", "SCOPES", "token_hash"]
