"""Python access to the Internet checksum helpers of checksum.pxd (tests, tools).

The forwarders use the inline C versions; these wrappers run the very same code.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from ipvsflow.forward.checksum cimport csum_sum, csum_finish, csum_replace


cdef const uint8_t *_ptr(const uint8_t[::1] v):
    return &v[0] if v.shape[0] else <const uint8_t *> b""


def ones_sum(data, uint32_t initial=0):
    """Folded one's complement sum (not inverted) of ``data`` as 16-bit network-order words."""
    cdef const uint8_t[::1] v = memoryview(data).cast("B")
    return csum_sum(_ptr(v), <size_t> v.shape[0], initial)


def internet_checksum(data, uint32_t initial=0):
    """RFC 1071 checksum of ``data`` (``initial``: a folded partial sum, e.g. a pseudo-header)."""
    cdef const uint8_t[::1] v = memoryview(data).cast("B")
    return csum_finish(csum_sum(_ptr(v), <size_t> v.shape[0], initial))


def checksum_replace(int check, old, new):
    """RFC 1624 update of ``check`` after the bytes ``old`` became ``new`` (even, equal lengths,
    16-bit aligned in the covered data)."""
    cdef const uint8_t[::1] o = memoryview(bytes(old)).cast("B")
    cdef const uint8_t[::1] n = memoryview(bytes(new)).cast("B")
    if o.shape[0] != n.shape[0] or o.shape[0] % 2:
        raise ValueError("old and new must have the same, even length")
    if not 0 <= check <= 0xffff:
        raise ValueError("check must be a 16-bit value")
    return csum_replace(<uint16_t> check, _ptr(o), _ptr(n), <int> o.shape[0])
