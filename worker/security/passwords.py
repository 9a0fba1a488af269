"""The worker's password checks: a verifier that survives a reconnect storm.

Hashes (scrypt, parameters in the hash string) are made and checked by
``chargeyard.store.passwords``. A reconnect storm must not queue thousands of scrypt
runs on the event loop, so :class:`PasswordVerifier`

* runs scrypt in a small thread pool (scrypt releases the GIL), never on the event loop,
  with a bounded number of checks in flight: beyond it a handshake is told to retry;
* remembers every successful (charger, password) check as a verifier
  (``chargeyard.worker.security.authcache``): an HMAC-SHA256 under the cache key, bound
  to the stored hash it matched. It keeps the verifier in this process and hands it to
  ``on_verified`` (the worker stores it beside the charger's credentials), so a charger
  reconnecting with the same password, here or to a restarted or another worker with
  the same key and store, costs one HMAC. A rotated or deleted password changes or
  removes the stored hash, so its verifier no longer matches (ADR 0019).

Passwords never appear in a log line, an exception message or a repr.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from ...store.passwords import (DEFAULT_LN, MAX_LEN, MIN_LEN, PasswordError, check_rule, generate_password,
                                hash_password, needs_rehash, verify_password)
from ..metrics import PASSWORD_CHECKS
from .authcache import CacheKey, make_verifier, match_verifier

_VIA_SCRYPT = PASSWORD_CHECKS.labels("scrypt")
_VIA_STORED = PASSWORD_CHECKS.labels("stored_verifier")
_VIA_PROCESS = PASSWORD_CHECKS.labels("process_verifier")


class VerifierBusy(Exception):
    """Too many checks in flight: tell the charger to retry (HTTP 503)."""


class PasswordVerifier:
    """Checks a presented password against a charger's stored hashes (see module doc)."""

    def __init__(self, threads: int = 2, max_in_flight: int = 64, *, cache_key: CacheKey | None = None,
                 on_verified: Callable[[str, str], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cy-pwcheck")
        self.cache_key = cache_key or CacheKey.per_process()
        # called with (charger id, verifier) after each scrypt success, when the key outlives
        # this process (a per-process key's verifier would be useless to anyone else)
        self.on_verified = on_verified
        self._known: dict[str, str] = {}  # charger id -> verifier of its last success here
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.slow_checks = 0    # scrypt runs (for the bench and the logs)
        self.fast_checks = 0    # hits of this process's verifier (one HMAC)
        self.stored_checks = 0  # hits of the stored verifier (one HMAC; e.g. after a restart)

    def known(self, charger_id: str, password: str, hashes: Iterable[str], stored_verifier: str = "") -> str | None:
        """The stored hash this password was already verified against, by this process or
        (``stored_verifier``) by any worker with the same cache key; None otherwise."""
        hashes = tuple(hashes)
        mine = self._known.get(charger_id)
        if mine:
            hit = match_verifier(self.cache_key, mine, charger_id, password, hashes)
            if hit is not None:
                self.fast_checks += 1
                _VIA_PROCESS.inc()
                return hit
        if stored_verifier and stored_verifier != mine:
            hit = match_verifier(self.cache_key, stored_verifier, charger_id, password, hashes)
            if hit is not None:
                self.stored_checks += 1
                _VIA_STORED.inc()
                self._remember(charger_id, stored_verifier)
                return hit
        return None

    def _remember(self, charger_id: str, verifier: str) -> None:
        if len(self._known) > 1_000_000:  # bounded: one entry per charger
            self._known.clear()
        self._known[charger_id] = verifier

    async def verify(self, charger_id: str, password: str, hashes: Iterable[str],
                     stored_verifier: str = "") -> str | None:
        """The stored hash (of ``hashes``) that ``password`` matches, else None. Raises
        :class:`VerifierBusy` rather than queue more than ``max_in_flight`` scrypt runs."""
        hashes = tuple(hashes)
        if not hashes:
            return None
        hit = self.known(charger_id, password, hashes, stored_verifier)
        if hit is not None:
            return hit
        if self.in_flight >= self.max_in_flight:
            raise VerifierBusy()
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            for stored in hashes:
                self.slow_checks += 1
                _VIA_SCRYPT.inc()
                if await loop.run_in_executor(self._pool, verify_password, password, stored):
                    verifier = make_verifier(self.cache_key, charger_id, stored, password)
                    self._remember(charger_id, verifier)
                    if self.on_verified is not None and self.cache_key.shared:
                        self.on_verified(charger_id, verifier)
                    return stored
            return None
        finally:
            self.in_flight -= 1

    def forget(self, charger_id: str) -> None:
        """Drop this process's verifier (rotation, deregistration; the stored one is
        bound to the hash, which those change)."""
        self._known.pop(charger_id, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["PasswordError", "VerifierBusy", "PasswordVerifier", "check_rule", "generate_password",
           "hash_password", "verify_password", "needs_rehash", "MIN_LEN", "MAX_LEN", "DEFAULT_LN"]
