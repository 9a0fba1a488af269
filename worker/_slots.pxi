# Included by the compiled worker modules (``include "_slots.pxi"``): a field of a msgspec
# Struct read from its slot. Cython reads an attribute of an object it does not know through
# the generic getattr (a type lookup, then a call of the descriptor), which the per-message
# path avoids; a Struct keeps its fields in slots, whose offsets its member descriptors hold
# (CPython's ``PyMemberDescrObject``).
# Each module checks at import, on instances it builds, that the slots read what getattr
# reads (and refuses to load otherwise).

from cpython.object cimport PyObject
from types import MemberDescriptorType

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member


cdef Py_ssize_t _offset(cls, str name):
    """The slot offset of a field (-1: not a slot, read through getattr)."""
    d = cls.__dict__.get(name)
    if type(d) is not MemberDescriptorType:
        return -1
    return (<PyMemberDescrObject*>d).d_member.offset


cdef inline object _field(o, cls, Py_ssize_t off, str name):
    """``getattr(o, name)``, from the slot at ``off`` when ``o`` is exactly a ``cls``."""
    cdef PyObject* v
    if off >= 0 and type(o) is cls:
        v = (<PyObject**>((<char*><PyObject*>o) + off))[0]
        if v != NULL:
            return <object>v
    return getattr(o, name)


def _check_slots(str module, cases):
    """At import: ``(instance, its type, offset, name)`` cases read the same object from the
    slot as through getattr, or the module refuses to load."""
    for o, cls, off, name in cases:
        if off < 0 or _field(o, cls, off, name) is not getattr(o, name):
            raise ImportError(f"{module}: {cls.__name__}.{name} is not read from its slot")
