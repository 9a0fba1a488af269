# cython: language_level=3
"""Compiled twin of the writer's per-message part in ``writer.py`` (read its docstrings):
``Pending``, ``Lane`` and ``reply_all``, the same names, fields and behaviour. An item is
made and queued in C, and a committed reply goes to a compiled session with a C call
(``Listener._committed``, declared in ``_listener.pxd``). The rest of the writer
(``BatchWriter``) is plain Python in ``writer.py``.
Keep the two in step; tests/worker/test_writer.py runs both."""

cimport cython

from chargeyard.worker._listener cimport Listener

import logging

cdef object _log = logging.getLogger("chargeyard.worker.writer")


@cython.final
@cython.no_gc
cdef class Pending:
    """``writer.Pending`` compiled: one op in the writer's queue. Not GC-tracked, like its
    twin (``gc=False``): the writer empties its queues on close, so no cycle through an
    item is left behind."""

    cdef public object op, future, target, message_id, action, response
    cdef public double added_at, t0
    cdef public long long seq

    def __init__(self, op, future, double added_at, long long seq, target=None, message_id=None,
                 action=None, response=None, double t0=0.0):
        self.op, self.future, self.added_at, self.seq = op, future, added_at, seq
        self.target, self.message_id, self.action, self.response, self.t0 = (
            target, message_id, action, response, t0)

    def __repr__(self):
        return (f"Pending({self.op!r}, {self.future!r}, {self.added_at!r}, {self.seq!r}, {self.target!r}, "
                f"{self.message_id!r}, {self.action!r}, {self.response!r}, {self.t0!r})")


def reply_all(list items, list results):
    """``writer.reply_all`` compiled: a committed batch's replies, with a direct C call into
    a compiled session's ``_committed`` (any other target: its ``committed``). So a subclass
    of Listener must not override ``committed``: Session does not. ``items`` are this
    module's ``Pending`` (the compiled lane's)."""
    cdef Py_ssize_t i, n = min(len(items), len(results))
    cdef Pending item
    for i in range(n):
        item = <Pending?>items[i]
        fut = item.future
        if fut is None:
            target = item.target
            try:
                if isinstance(target, Listener):
                    (<Listener>target)._committed(item.message_id, item.action, item.response, item.t0)
                else:
                    target.committed(item.message_id, item.action, item.response, item.t0)
            except Exception:
                _log.exception("reply after commit failed")
        elif not fut.done():
            fut.set_result(results[i])


@cython.final
cdef class Lane:
    """``writer.Lane`` compiled: an item goes into the writer's queue in C while the writer
    is open and the queue has room."""

    cdef public object writer, queue, time, wake, filled
    cdef public Py_ssize_t batch_max, max_queued
    cdef public long long seq
    cdef public bint open, idle
    cdef object _append, _popleft

    pending = Pending  # the record this lane queues

    def __init__(self, writer, queue, Py_ssize_t batch_max, Py_ssize_t max_queued):
        self.writer, self.queue, self.batch_max, self.max_queued = writer, queue, batch_max, max_queued
        self._append, self._popleft = queue.append, queue.popleft
        self.seq = 0
        self.open = self.idle = False
        self.time = self.wake = self.filled = None

    def add_reply(self, op, target, message_id, action, response, double t0):
        cdef Py_ssize_t n = len(self.queue)
        if not self.open or n >= self.max_queued:
            self.writer._add_reply(op, target, message_id, action, response, t0)
            return
        self.seq += 1
        cdef Pending item = Pending.__new__(Pending)  # fields set here, without __init__'s parsing
        item.op, item.added_at, item.seq = op, self.time(), self.seq
        item.target, item.message_id, item.action, item.response, item.t0 = (
            target, message_id, action, response, t0)
        self._append(item)
        if self.idle:
            self.idle = False
            self.wake()
        if n + 1 >= self.batch_max:
            self.filled()

    def take(self, Py_ssize_t n):
        cdef list batch = []
        cdef Py_ssize_t i
        for i in range(n):
            batch.append(self._popleft())
        return batch

    @staticmethod
    def ops(list items):
        cdef list out = []
        for item in items:
            out.append((<Pending?>item).op)
        return out
