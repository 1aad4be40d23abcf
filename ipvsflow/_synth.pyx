# cython: language_level=3
"""The few inherently sequential steps of the traffic synthesizer (ipvsflow.synth).

Everything else there is vectorised numpy; these loops are per connection (port allocation,
ISN ordering on a reused 4-tuple) or per byte of small SCTP packets (CRC32c), and run without
the GIL.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.string cimport memcpy

import numpy as np

cdef uint32_t _CRC32C[256]


cdef void _crc_init() noexcept nogil:
    # Castagnoli polynomial, reflected (RFC 9260 appendix B).
    cdef uint32_t c
    cdef int i, k
    for i in range(256):
        c = <uint32_t>i
        for k in range(8):
            if c & 1:
                c = (c >> 1) ^ 0x82F63B78U
            else:
                c >>= 1
        _CRC32C[i] = c


_crc_init()


cdef inline uint32_t _crc32c(const uint8_t *p, int64_t n) noexcept nogil:
    cdef uint32_t c = 0xFFFFFFFFU
    cdef int64_t i
    for i in range(n):
        c = _CRC32C[(c ^ p[i]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFFU


def crc32c(const uint8_t[::1] data):
    """CRC32c of a byte buffer (checks against known vectors in the tests)."""
    cdef uint32_t c
    with nogil:
        c = _crc32c(&data[0], data.shape[0]) if data.shape[0] else 0
    return c


def sctp_checksums(uint8_t[::1] buf, const int64_t[::1] start, const int64_t[::1] length):
    """Fill the CRC32c checksum of each SCTP packet in ``buf``.

    Packet i's SCTP common header starts at ``start[i]`` and the packet (header and chunks,
    padding included) is ``length[i]`` bytes. The checksum field (bytes 8..11) must be zero on
    entry; the CRC is stored there least-significant byte first, as Linux's
    ``sctp_compute_cksum`` does.
    """
    cdef Py_ssize_t i, n = start.shape[0]
    cdef int64_t s, l
    cdef uint32_t c
    cdef Py_ssize_t size = buf.shape[0]
    for i in range(n):
        if start[i] < 0 or length[i] < 12 or start[i] + length[i] > size:
            raise ValueError(f"SCTP packet {i} lies outside the frame buffer")
    with nogil:
        for i in range(n):
            s = start[i]
            l = length[i]
            c = _crc32c(&buf[s], l)
            buf[s + 8] = c & 0xFF
            buf[s + 9] = (c >> 8) & 0xFF
            buf[s + 10] = (c >> 16) & 0xFF
            buf[s + 11] = (c >> 24) & 0xFF


def assign_ports(const int64_t[::1] group, const int64_t[::1] t_start, const int64_t[::1] t_free,
                 const int32_t[::1] first_try, int n_ports, bint sequential, int32_t[::1] out):
    """Pick an ephemeral port index (0 .. n_ports-1) for each connection, as a client's stack would.

    Connections come in the order they must be served: sorted by ``group`` (one group per
    client and protocol: one port space), then by start time. A port is free for a connection
    when its previous user's ``t_free`` is at or before the connection's ``t_start``.
    ``sequential``: the group's cursor starts at ``first_try`` of its first connection and
    advances past each port handed out (Linux's incrementing search); otherwise each
    connection starts its search at its own ``first_try`` (random allocation). The search skips
    busy ports; when every port is busy the connection gets -1 (EADDRNOTAVAIL).
    Returns the number of connections that got no port.
    """
    cdef Py_ssize_t n = group.shape[0]
    if t_start.shape[0] != n or t_free.shape[0] != n or first_try.shape[0] != n or out.shape[0] != n:
        raise ValueError("assign_ports: array lengths differ")
    if n_ports <= 0:
        raise ValueError("assign_ports: empty port range")
    busy_np = np.zeros(n_ports, dtype=np.int64)
    stamp_np = np.full(n_ports, -1, dtype=np.int64)
    cdef int64_t[::1] busy = busy_np
    cdef int64_t[::1] stamp = stamp_np
    cdef Py_ssize_t i, s
    cdef int64_t g = -1, cur_group = 0, full_until = 0, min_busy
    cdef int64_t cursor = 0, p
    cdef int64_t exhausted = 0
    cdef bint found
    with nogil:
        for i in range(n):
            if i == 0 or group[i] != cur_group:
                g += 1
                cur_group = group[i]
                cursor = first_try[i] % n_ports
                full_until = -1
            if not sequential:
                cursor = first_try[i] % n_ports
            if t_start[i] < full_until:
                out[i] = -1
                exhausted += 1
                continue
            found = False
            min_busy = 0x7FFFFFFFFFFFFFFFLL
            for s in range(n_ports):
                p = cursor + s
                if p >= n_ports:
                    p -= n_ports
                if stamp[p] != g or busy[p] <= t_start[i]:
                    out[i] = <int32_t>p
                    stamp[p] = g
                    busy[p] = t_free[i]
                    cursor = p + 1
                    if cursor >= n_ports:
                        cursor = 0
                    found = True
                    break
                if busy[p] < min_busy:
                    min_busy = busy[p]
            if not found:
                out[i] = -1
                exhausted += 1
                full_until = min_busy
    return exhausted


def order_isns(const int64_t[::1] order, const int64_t[::1] key, uint32_t[::1] isn,
               const uint32_t[::1] used):
    """Make each reuse of a 4-tuple start beyond the sequence space of the previous connection.

    ``order`` lists connections sorted by 4-tuple ``key``, then start time. A connection whose
    ISN is not after (in serial-number order) the previous connection's final sequence number
    ``isn + used`` gets ``isn + used + 65537``, as Linux does when it reuses a TIME_WAIT
    4-tuple (``tcp_twsk_unique``: snd_nxt + 65535 + 2). Returns the number of ISNs moved.
    """
    cdef Py_ssize_t n = order.shape[0], k
    cdef int64_t i, prev
    cdef uint32_t end
    cdef int64_t moved = 0
    cdef Py_ssize_t m = key.shape[0]
    if isn.shape[0] != m or used.shape[0] != m:
        raise ValueError("order_isns: array lengths differ")
    for k in range(n):
        if order[k] < 0 or order[k] >= m:
            raise ValueError("order_isns: index out of range")
    with nogil:
        for k in range(1, n):
            i = order[k]
            prev = order[k - 1]
            if key[i] != key[prev]:
                continue
            end = isn[prev] + used[prev]
            if <int32_t>(isn[i] - end) <= 0:
                isn[i] = end + 65537
                moved += 1
    return moved


def scatter_rows(uint8_t[::1] buf, const int64_t[::1] off, const uint8_t[:, ::1] rows):
    """Copy row i of ``rows`` to ``buf[off[i]:off[i] + rows.shape[1]]`` (frame headers into the
    chunk buffer)."""
    cdef Py_ssize_t i, n = rows.shape[0], w = rows.shape[1], size = buf.shape[0]
    if off.shape[0] != n:
        raise ValueError("scatter_rows: offsets and rows differ in length")
    for i in range(n):
        if off[i] < 0 or off[i] + w > size:
            raise ValueError(f"scatter_rows: row {i} lies outside the buffer")
    if w == 0:
        return
    with nogil:
        for i in range(n):
            memcpy(&buf[off[i]], &rows[i, 0], w)
