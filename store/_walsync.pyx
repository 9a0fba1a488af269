# cython: language_level=3
"""The WAL's sync thread, compiled: its loop runs without the GIL. Same protocol and API
as its pure-Python twin, ``walsync.py`` (read that one first)."""

from libc.errno cimport errno, EINTR
from libc.stdint cimport uint64_t

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int fdatasync(int fd)
    int close(int fd)

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_CLOEXEC
    int EFD_NONBLOCK

cdef extern from *:
    """
    static inline unsigned long long cy_ws_load(unsigned long long *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void cy_ws_store(unsigned long long *p, unsigned long long v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline unsigned long long cy_ws_take(unsigned long long *p) {
        return __atomic_exchange_n(p, 0, __ATOMIC_ACQ_REL);
    }
    """
    unsigned long long cy_ws_load(unsigned long long *p) nogil
    void cy_ws_store(unsigned long long *p, unsigned long long v) nogil
    unsigned long long cy_ws_take(unsigned long long *p) nogil


cdef inline void _signal(int fd) noexcept nogil:
    cdef uint64_t one = 1
    while write(fd, &one, 8) < 0 and errno == EINTR:
        pass


cdef class WalSync:
    cdef readonly int wal_fd, request_fd, done_fd
    # written by one thread, read by the other: atomics
    cdef unsigned long long _committed, _synced, _failed, _errno, _stop

    impl = "cython"

    def __cinit__(self, int wal_fd):
        self.wal_fd = wal_fd
        self.request_fd = eventfd(0, EFD_CLOEXEC)
        self.done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
        if self.request_fd < 0 or self.done_fd < 0:
            raise OSError(errno, "eventfd failed")

    def request(self, unsigned long long n):
        cy_ws_store(&self._committed, n)
        _signal(self.request_fd)

    def run(self):
        with nogil:
            self._run()

    cdef void _run(self) noexcept nogil:
        cdef uint64_t got
        cdef unsigned long long target
        while True:
            if read(self.request_fd, &got, 8) < 0:
                if errno == EINTR:
                    continue
                return  # the descriptor is gone: nothing more can be asked
            if cy_ws_load(&self._stop):
                return
            target = cy_ws_load(&self._committed)
            if fdatasync(self.wal_fd) != 0:
                cy_ws_store(&self._errno, <unsigned long long>(errno if errno else -1))
                cy_ws_store(&self._failed, target)
            else:
                cy_ws_store(&self._synced, target)
            _signal(self.done_fd)

    def collect(self):
        cdef uint64_t got
        read(self.done_fd, &got, 8)  # non-blocking: EAGAIN when already read
        # taken, not read then reset: a failure stored in between would be lost. The thread
        # stores errno before the commit, so a failure taken here has its errno (or a later one's)
        failed = cy_ws_take(&self._failed)
        err = cy_ws_take(&self._errno) if failed else 0
        return cy_ws_load(&self._synced), failed, <long long>err

    def stop(self):
        cy_ws_store(&self._stop, 1)
        _signal(self.request_fd)

    def close(self):
        close(self.request_fd)
        close(self.done_fd)
        close(self.wal_fd)
