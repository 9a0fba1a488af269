"""Id-tag authorization for the handlers: the store's status of a tag, cached briefly."""

from __future__ import annotations

import time

from ..store.base import Store

__all__ = ["Authorization"]


class Authorization:
    """Id-tag status with a short cache; unknown tags are Invalid unless configured.

    The cache spares the store a read per Authorize/StartTransaction of a busy tag; the
    operator API calls ``forget`` when it changes a tag, so a change applies at once on
    this node (and within ``ttl`` on the others)."""

    def __init__(self, store: Store, accept_unknown: bool, ttl: float = 5.0) -> None:
        self.store = store
        self.accept_unknown = accept_unknown
        self.ttl = ttl
        self._cache: dict[str, tuple[float, str]] = {}

    async def status(self, tag: str) -> str:
        hit = self._cache.get(tag)
        t = time.monotonic()
        if hit is not None and hit[0] > t:
            return hit[1]
        status = await self.store.get_id_tag(tag)
        if status is None:
            status = "Accepted" if self.accept_unknown else "Invalid"
        if len(self._cache) > 100_000:  # bounded: a storm of random tags must not grow it
            self._cache.clear()
        self._cache[tag] = (t + self.ttl, status)
        return status

    def forget(self, tag: str) -> None:
        self._cache.pop(tag, None)
