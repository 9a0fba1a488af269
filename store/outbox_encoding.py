"""The outbox rows of a committed batch: ``(charger id, encoded envelope)`` for every
event the batch reports, in op order, what a backend writes to its outbox.

The same events, and the same bytes, as ``store.events.encode`` of ``from_op``'s. A
saturated worker encodes one per message, so this is ``Rows.outbox_rows`` of
``store/logrows.py``'s twins, compiled unless ``CHARGEYARD_PURE`` (ADR 0021); the pure
twin's is ``store.events.encoded_python``. Its own module because the twins import
``store.events``.
"""

from __future__ import annotations

from typing import Any, Callable

from ..core import twins

_outbox_rows: Callable[[list[Any], list[Any]], list[tuple[str, bytes]]] | None = None


def encoded(ops: list[Any], results: list[Any]) -> list[tuple[str, bytes]]:
    global _outbox_rows
    if _outbox_rows is None:  # on first use, so that CHARGEYARD_PURE set after import counts
        _outbox_rows = twins.load("chargeyard.store.logrows").Rows.outbox_rows
    return _outbox_rows(ops, results)
