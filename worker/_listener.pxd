# Declares the compiled listener's class, so that the writer's compiled reply loop
# (``_writer.pyx``) sends a committed reply with a C call into a session (``_committed``).

from picows.picows cimport WSFrame, WSListener, WSTransport


cdef class Listener(WSListener):
    cdef public WSTransport transport
    cdef public object codec, writer, _backlog, _frag
    cdef public dict handlers
    cdef public dict _counts_in, _counts_out
    cdef public Py_ssize_t max_frame
    cdef public double _tokens, _last, _rate, _burst, _alive, _ping_at

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame)
    cdef inline bint _take(self)
    cdef _process_c(self, data)
    cdef _dispatch_c(self, call)
    cdef _committed(self, message_id, action, payload, double t0)
