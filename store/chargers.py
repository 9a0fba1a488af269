"""Charger credentials and security events: the records and the store methods for them.

A registered charger (``PUT /api/v1/chargers/{id}``) has a minimum security profile and,
for profiles 1 and 2, a password kept only as a salted memory-hard hash (the hash string
names its own parameters, see ``chargeyard.worker.security.passwords``). Rotation keeps
three hashes so that no charger is ever locked out half-way:

* ``password_hash``: the password in force;
* ``pending_password_hash``: sent to the charger, not yet accepted by it;
* ``previous_password_hash``: the one in force before the charger accepted the new one,
  still valid until the charger authenticates with the new password.

``verifier`` remembers the last successful password check so that a restarted worker
(or any other) need not run scrypt again (ADR 0019): an HMAC-SHA256, under a key the
store never holds, of the charger id, the stored hash it matched and the password
(``chargeyard.worker.security.authcache``). Bound to the hash, it stops matching when a
rotation or a re-registration replaces that hash; useless without the key.

Backends implement :class:`ChargerCredentialStore` beside :class:`~.base.Store`; the
contract is in ``tests/store/test_chargers.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import msgspec


class ChargerCredentials(msgspec.Struct, frozen=True, kw_only=True):
    charger_id: str
    security_profile: int = 1
    password_hash: str = ""
    pending_password_hash: str = ""
    previous_password_hash: str = ""
    verifier: str = ""      # "" when none; see the module doc

    def hashes(self) -> tuple[str, ...]:
        """Every hash a login may match, the one in force first."""
        return tuple(h for h in (self.password_hash, self.pending_password_hash,
                                 self.previous_password_hash) if h)


class SecurityEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A SecurityEventNotification as received (1.6 security extension / 2.0.1)."""
    charger_id: str
    type: str
    at: str                 # the charger's timestamp, ISO 8601 as sent
    tech_info: str = ""
    received_at: str = ""   # ISO 8601 UTC, set by the store


class ChargerCredentialStore(ABC):
    """Store methods for registered chargers; mixed into the backends."""

    @abstractmethod
    async def get_charger_credentials(self, charger_id: str) -> ChargerCredentials | None: ...

    @abstractmethod
    async def put_charger_credentials(self, creds: ChargerCredentials) -> None:
        """Insert or replace the whole record (its ``verifier`` too)."""

    @abstractmethod
    async def put_charger_verifier(self, charger_id: str, verifier: str) -> None:
        """Replace only the ``verifier`` of a registered charger (nothing for an unknown
        id: a deregistration racing a login does not bring the charger back)."""

    @abstractmethod
    async def delete_charger_credentials(self, charger_id: str) -> bool:
        """True if the charger was registered."""

    @abstractmethod
    async def registered_charger_ids(self, limit: int = 10_000) -> list[str]:
        """Registered charger ids, at most ``limit`` (a worker at profile 0 keeps them to
        let every other id in without a lookup)."""

    @abstractmethod
    async def add_security_event(self, event: SecurityEvent) -> None: ...

    @abstractmethod
    async def list_security_events(self, charger_id: str, limit: int = 100) -> list[SecurityEvent]:
        """Newest first."""


class MemoryChargerCredentials(ChargerCredentialStore):
    """In-memory implementation, for tests and as the reference behaviour."""

    def __init__(self) -> None:
        self._creds: dict[str, ChargerCredentials] = {}
        self._events: dict[str, list[SecurityEvent]] = {}

    async def get_charger_credentials(self, charger_id: str) -> ChargerCredentials | None:
        return self._creds.get(charger_id)

    async def put_charger_credentials(self, creds: ChargerCredentials) -> None:
        self._creds[creds.charger_id] = creds

    async def put_charger_verifier(self, charger_id: str, verifier: str) -> None:
        creds = self._creds.get(charger_id)
        if creds is not None:
            self._creds[charger_id] = msgspec.structs.replace(creds, verifier=verifier)

    async def delete_charger_credentials(self, charger_id: str) -> bool:
        return self._creds.pop(charger_id, None) is not None

    async def registered_charger_ids(self, limit: int = 10_000) -> list[str]:
        return sorted(self._creds)[:limit]

    async def add_security_event(self, event: SecurityEvent) -> None:
        self._events.setdefault(event.charger_id, []).append(event)

    async def list_security_events(self, charger_id: str, limit: int = 100) -> list[SecurityEvent]:
        return list(reversed(self._events.get(charger_id, [])))[:limit]


__all__ = ["ChargerCredentials", "SecurityEvent", "ChargerCredentialStore", "MemoryChargerCredentials"]
