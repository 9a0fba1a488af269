"""The worker's password checks: a verifier that survives a reconnect storm.

Hashes (scrypt, parameters in the hash string) are made and checked by
``chargeyard.store.passwords``. A reconnect storm must not queue thousands of scrypt
runs on the event loop, so :class:`PasswordVerifier`

* runs scrypt in a small thread pool (scrypt releases the GIL), never on the event loop,
  with a bounded number of checks in flight: beyond it a handshake is told to retry;
* remembers every successful (charger, password) check for the process lifetime as an
  HMAC-SHA256 under a per-process random key, bound to the stored hash it matched: a
  charger reconnecting with the same password costs one HMAC. A rotated or deleted
  password changes or removes the stored hash, so its cached entry no longer matches.

Passwords never appear in a log line, an exception message or a repr.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from ...store.passwords import (DEFAULT_LN, MAX_LEN, MIN_LEN, PasswordError, check_rule, generate_password,
                                hash_password, needs_rehash, verify_password)


class VerifierBusy(Exception):
    """Too many checks in flight: tell the charger to retry (HTTP 503)."""


class PasswordVerifier:
    """Checks a presented password against a charger's stored hashes (see module doc)."""

    def __init__(self, threads: int = 2, max_in_flight: int = 64) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cy-pwcheck")
        self._key = os.urandom(32)
        # charger id -> (the stored hash it matched, HMAC of the password)
        self._known: dict[str, tuple[str, bytes]] = {}
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.slow_checks = 0   # scrypt runs (for the bench and the logs)
        self.fast_checks = 0   # HMAC hits

    def _mac(self, charger_id: str, password: str) -> bytes:
        return hmac.digest(self._key, charger_id.encode() + b"\0" + password.encode(), "sha256")

    def known(self, charger_id: str, password: str, hashes: Iterable[str]) -> str | None:
        """The stored hash this password was already verified against, if any (one HMAC)."""
        hit = self._known.get(charger_id)
        if hit is None or hit[0] not in hashes:
            return None
        if hmac.compare_digest(hit[1], self._mac(charger_id, password)):
            self.fast_checks += 1
            return hit[0]
        return None

    async def verify(self, charger_id: str, password: str, hashes: Iterable[str]) -> str | None:
        """The stored hash (of ``hashes``) that ``password`` matches, else None. Raises
        :class:`VerifierBusy` rather than queue more than ``max_in_flight`` scrypt runs."""
        hashes = tuple(hashes)
        if not hashes:
            return None
        hit = self.known(charger_id, password, hashes)
        if hit is not None:
            return hit
        if self.in_flight >= self.max_in_flight:
            raise VerifierBusy()
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            for stored in hashes:
                self.slow_checks += 1
                if await loop.run_in_executor(self._pool, verify_password, password, stored):
                    if len(self._known) > 1_000_000:  # bounded: one entry per charger
                        self._known.clear()
                    self._known[charger_id] = (stored, self._mac(charger_id, password))
                    return stored
            return None
        finally:
            self.in_flight -= 1

    def forget(self, charger_id: str) -> None:
        """Drop the cached check (rotation, deregistration)."""
        self._known.pop(charger_id, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["PasswordError", "VerifierBusy", "PasswordVerifier", "check_rule", "generate_password",
           "hash_password", "verify_password", "needs_rehash", "MIN_LEN", "MAX_LEN", "DEFAULT_LN"]
