"""OCPP 1.6 transaction ids (integers the CSMS hands out at StartTransaction)."""

from __future__ import annotations

import asyncio

from ..store.base import Store

__all__ = ["TxIds"]


class TxIds:
    """Transaction ids reserved from the store in blocks, so the workers of a cluster never
    collide and a StartTransaction rarely waits for the store. A restart abandons the rest
    of its block: ids jump, they never repeat."""

    def __init__(self, store: Store, block: int = 1000) -> None:
        self.store = store
        self.block = block
        self._next = 0
        self._last = -1
        self._lock = asyncio.Lock()

    async def next(self) -> int:
        if self._next > self._last:
            async with self._lock:
                if self._next > self._last:
                    self._next, self._last = await self.store.allocate_tx_ids(self.block)
        n = self._next
        self._next += 1
        return n
