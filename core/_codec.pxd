# Declares the compiled codec's class, so other compiled modules call it in C (the worker's
# listener: ``from chargeyard.core._codec cimport Codec``). Python callers see the same
# API as the pure twin ``codec.py``.

cdef class Codec:
    cdef readonly object tables
    cdef readonly str version
    cdef list _by_len
    cdef object _inbound
    cdef object _enc
    cdef object _encode
    cdef bint _draft6
    cdef dict _empty_object

    cdef _decode(self, b, const char* p, Py_ssize_t n)
    cpdef bytes encode_result(self, str message_id, payload)
