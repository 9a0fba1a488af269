"""The verified-credential cache shared by every worker (ADR 0019).

After a successful scrypt check the worker stores, in the charger's credentials row,

    verifier = "v1$" + base64(HMAC-SHA256(cache key, charger id, stored hash, password))

so that the next check of the same password, by this process, by a restarted one or by
any other worker on the same store, costs one HMAC instead of one scrypt run. The cache
key (a "pepper") is never in the store:

* ``--auth-cache-key`` (better: its environment variable, from a Secret) or
  ``--auth-cache-key-file``: the one key every worker of a cluster shares;
* neither: ``<data-dir>/auth-cache.key``, 32 random bytes (hex) made at first start with
  mode 0600 (one node: it survives restarts with the SQLite store beside it).

What it guarantees: a wrong password never matches (it would need an HMAC collision); a
rotated, replaced or deleted hash invalidates the verifier (the hash is in the MAC); a
verifier made under another key never matches; a leaked store without the key gives an
offline guesser nothing cheaper than scrypt (the verifier is a keyed MAC of a
high-entropy key the store does not hold). With the key too, the verifier costs one HMAC
per guess: keep the key out of store backups.

Keys and passwords never appear in a log line, an exception message or a repr.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import secrets
import stat
import struct
from dataclasses import dataclass, field

log = logging.getLogger("chargeyard.worker.security")

KEY_FILE_NAME = "auth-cache.key"
MIN_KEY_CHARS = 32
_VERSION = "v1$"
_DOMAIN = b"chargeyard auth cache v1"


class CacheKeyError(ValueError):
    """The configured cache key is missing, unreadable or too short (never quotes it)."""


@dataclass(frozen=True, slots=True)
class CacheKey:
    """The pepper and where it came from (``source`` is safe to log, ``secret`` is not)."""
    secret: bytes = field(repr=False)
    source: str
    shared: bool  # survives this process (a file or a configured key), so worth storing

    @classmethod
    def per_process(cls) -> "CacheKey":
        """A random key that dies with the process (no settings: tests, tools)."""
        return cls(os.urandom(32), "per-process random key", shared=False)


def _field(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def make_verifier(key: CacheKey, charger_id: str, stored_hash: str, password: str) -> str:
    """The verifier of a check that succeeded (length-prefixed fields: no two inputs alias)."""
    msg = _DOMAIN + _field(charger_id.encode()) + _field(stored_hash.encode()) + \
        _field(password.encode("utf-8", "surrogatepass"))
    return _VERSION + base64.b64encode(hmac.digest(key.secret, msg, "sha256")).decode()


def match_verifier(key: CacheKey, verifier: str, charger_id: str, password: str,
                   hashes: tuple[str, ...]) -> str | None:
    """The stored hash (of ``hashes``) that ``verifier`` vouches ``password`` for, else None.
    Each comparison is constant-time; at most one HMAC per hash (three at most)."""
    if not verifier.startswith(_VERSION):
        return None
    got = verifier.encode()
    for stored in hashes:
        if hmac.compare_digest(got, make_verifier(key, charger_id, stored, password).encode()):
            return stored
    return None


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CacheKeyError(f"auth cache key file {path}: {exc.strerror or exc}") from None
    if len(text) < MIN_KEY_CHARS:
        raise CacheKeyError(f"auth cache key file {path}: the key must have at least {MIN_KEY_CHARS} "
                            "characters (e.g. `openssl rand -hex 32`)")
    if stat.S_ISREG(mode) and mode & 0o077:
        log.warning("auth cache key file %s is readable by group or others (mode %o): make it 0600",
                    path, stat.S_IMODE(mode))
    return text


def _create_key_file(path: str) -> None:
    """Write a new random key at ``path`` unless one is there (atomic: two workers
    starting on one data dir at once end up with the same key)."""
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs stands
            log.info("auth cache: generated a new key in %s (mode 0600)", path)
        except FileExistsError:
            pass
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load_cache_key(key: str = "", key_file: str = "", data_dir: str = "") -> CacheKey:
    """The configured cache key: ``key``, else the file ``key_file`` (which must exist),
    else ``<data_dir>/auth-cache.key`` (made if missing), else a per-process key."""
    if key:
        if len(key) < MIN_KEY_CHARS:
            raise CacheKeyError(f"--auth-cache-key must have at least {MIN_KEY_CHARS} characters")
        return CacheKey(key.encode(), "--auth-cache-key", shared=True)
    if key_file:
        return CacheKey(_read_key_file(key_file), key_file, shared=True)
    if data_dir:
        path = os.path.join(data_dir, KEY_FILE_NAME)
        if not os.path.exists(path):
            try:
                os.makedirs(data_dir, exist_ok=True)
                _create_key_file(path)
            except OSError as exc:
                raise CacheKeyError(f"auth cache key file {path}: {exc.strerror or exc}") from None
        return CacheKey(_read_key_file(path), path, shared=True)
    return CacheKey.per_process()


__all__ = ["CacheKey", "CacheKeyError", "KEY_FILE_NAME", "load_cache_key", "make_verifier", "match_verifier"]
