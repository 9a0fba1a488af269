"""Small asyncio helpers shared by the worker and the services."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has finished unwinding, so a close()
    never returns while the task still holds a connection or a file. A task that has
    already ended is only reaped (its exception, if any, is not raised again here)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
