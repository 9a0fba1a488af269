"""The WAL's sync thread: makes small batches durable off the event loop.

A batch that commits on the event loop's thread (``sqlite/batch.py``) commits at
``synchronous=NORMAL``: its WAL frames reach the kernel, and the loop goes on at once. This
thread then ``fdatasync``s the WAL file, and reports which commits that covered; the batch's
``apply`` returns (and its chargers get their replies) only then, as at ``FULL``. While a
sync runs the loop reads, handles and commits the next messages, instead of sleeping
through the disk in each COMMIT; a sync covers every commit made before it started, so
commits made during one share the next. ``sqlite/wal.py`` drives it.

Protocol (one writer, the loop; one syncer, the thread):

* the loop numbers its commits and, after commit ``n``, calls ``request(n)``: it stores
  ``n`` and writes to an eventfd;
* the thread reads that eventfd (every request since its last read), loads the highest
  ``n``, syncs, stores it as ``synced`` (or the sync's ``errno`` and that ``n``), and writes
  to a second eventfd, which the loop watches (``done_fd``);
* the loop calls ``collect()``: (synced, failed up to, errno).

``_walsync.pyx`` is the same thread compiled, which runs without the GIL: a Python thread
needs the GIL back after each sync, and on a busy core waits for it up to the interpreter's
switch interval; this one signals the loop without it. Chosen by
``core.twins.load("chargeyard.store.walsync")``.
"""

from __future__ import annotations

import os
import threading

__all__ = ["WalSync"]


class WalSync:
    """``WalSync(wal_fd)``: syncs ``wal_fd`` (owned: closed by ``close``) on request."""

    impl = "python"

    def __init__(self, wal_fd: int) -> None:
        self.wal_fd = wal_fd
        self.request_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.done_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._lock = threading.Lock()
        self._committed = 0
        self._synced = 0
        self._failed = 0  # the highest commit a failed sync was for
        self._errno = 0
        self._stop = False

    def request(self, n: int) -> None:
        """Commit ``n`` (increasing) is in the WAL: sync it."""
        self._committed = n
        os.eventfd_write(self.request_fd, 1)

    def run(self) -> None:
        """The thread's body, until ``stop()``."""
        while True:
            try:
                os.eventfd_read(self.request_fd)
            except InterruptedError:
                continue
            if self._stop:
                return
            target = self._committed
            try:
                os.fdatasync(self.wal_fd)
            except OSError as e:
                with self._lock:
                    self._failed, self._errno = target, e.errno or -1
            else:
                with self._lock:
                    self._synced = target
            os.eventfd_write(self.done_fd, 1)

    def collect(self) -> tuple[int, int, int]:
        """After ``done_fd`` is readable: (highest commit synced, highest commit a failed
        sync was for, its errno); the failure is reported once."""
        try:
            os.eventfd_read(self.done_fd)
        except BlockingIOError:
            pass
        with self._lock:
            failed, err = self._failed, self._errno
            self._failed = self._errno = 0
            return self._synced, failed, err

    def stop(self) -> None:
        """Ask the thread to end (it does after its sync in progress)."""
        self._stop = True
        os.eventfd_write(self.request_fd, 1)

    def close(self) -> None:
        """After the thread ended: close the descriptors."""
        for fd in (self.request_fd, self.done_fd, self.wal_fd):
            try:
                os.close(fd)
            except OSError:
                pass
