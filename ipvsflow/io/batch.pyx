"""PacketBatch: a fixed-capacity burst of packet descriptors (one C struct per packet).

Readers fill ``pkts[0:count]`` at C level (``data``, ``caplen``, ``wirelen``, ``ts_ns``,
``index``, ``ifindex``, ``linktype``) and call ``parse_burst``; every later stage reads the
structs directly. Python sees the descriptors through :meth:`PacketBatch.to_numpy`, a
structured-array view over the same memory (no copy).
"""
import socket

import numpy as np

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

from ipvsflow.io.batch cimport (
    pkt_desc, PacketBatch, FRAG_IS, FRAG_MF, FRAG_NONFIRST, SCTP_ABORT_AFTER_COOKIE,
)
from ipvsflow.io.parse cimport parse_burst

DEFAULT_CAPACITY = 256

# Python-visible copies of the C-level constants of batch.pxd (re-exported by ipvsflow.io).
CONSTANTS = {
    "FRAG_IS": FRAG_IS,
    "FRAG_MF": FRAG_MF,
    "FRAG_NONFIRST": FRAG_NONFIRST,
    "SCTP_ABORT_AFTER_COOKIE": SCTP_ABORT_AFTER_COOKIE,
}

cdef pkt_desc _proto
cdef char *_base = <char *> &_proto

# (name, numpy format, byte offset) for every pkt_desc field, in struct order. Addresses are
# ('u1', 16) sub-arrays; the ``data`` pointer is exposed as uint64.
_FIELDS = [
    ("data", "u8", <char *> &_proto.data - _base),
    ("ts_ns", "i8", <char *> &_proto.ts_ns - _base),
    ("index", "u8", <char *> &_proto.index - _base),
    ("caplen", "u4", <char *> &_proto.caplen - _base),
    ("wirelen", "u4", <char *> &_proto.wirelen - _base),
    ("ifindex", "u4", <char *> &_proto.ifindex - _base),
    ("fwmark", "u4", <char *> &_proto.fwmark - _base),
    ("linktype", "u2", <char *> &_proto.linktype - _base),
    ("status", "u2", <char *> &_proto.status - _base),
    ("l3_off", "u2", <char *> &_proto.l3_off - _base),
    ("l4_off", "u2", <char *> &_proto.l4_off - _base),
    ("l3_len", "u2", <char *> &_proto.l3_len - _base),
    ("l4_len", "u2", <char *> &_proto.l4_len - _base),
    ("vlan_outer", "u2", <char *> &_proto.vlan_outer - _base),
    ("vlan_inner", "u2", <char *> &_proto.vlan_inner - _base),
    ("sport", "u2", <char *> &_proto.sport - _base),
    ("dport", "u2", <char *> &_proto.dport - _base),
    ("af", "u1", <char *> &_proto.af - _base),
    ("proto", "u1", <char *> &_proto.proto - _base),
    ("tcp_flags", "u1", <char *> &_proto.tcp_flags - _base),
    ("sctp_chunk", "u1", <char *> &_proto.sctp_chunk - _base),
    ("sctp_flags", "u1", <char *> &_proto.sctp_flags - _base),
    ("frag", "u1", <char *> &_proto.frag - _base),
    ("icmp_type", "u1", <char *> &_proto.icmp_type - _base),
    ("icmp_code", "u1", <char *> &_proto.icmp_code - _base),
    ("vlan_count", "u1", <char *> &_proto.vlan_count - _base),
    ("ttl", "u1", <char *> &_proto.ttl - _base),
    ("ic_proto", "u1", <char *> &_proto.ic_proto - _base),
    ("l2_len", "u1", <char *> &_proto.l2_len - _base),
    ("ic_sport", "u2", <char *> &_proto.ic_sport - _base),
    ("ic_dport", "u2", <char *> &_proto.ic_dport - _base),
    ("frag_id", "u4", <char *> &_proto.frag_id - _base),
    ("frag_off", "u2", <char *> &_proto.frag_off - _base),
    ("ic_l3_off", "u2", <char *> &_proto.ic_l3_off - _base),
    ("src", ("u1", (16,)), <char *> &_proto.src - _base),
    ("dst", ("u1", (16,)), <char *> &_proto.dst - _base),
    ("ic_src", ("u1", (16,)), <char *> &_proto.ic_src - _base),
    ("ic_dst", ("u1", (16,)), <char *> &_proto.ic_dst - _base),
]

PKT_DESC_SIZE = sizeof(pkt_desc)

#: numpy dtype of one pkt_desc (explicit offsets and itemsize, so it matches the C layout).
PKT_DTYPE = np.dtype({
    "names": [f[0] for f in _FIELDS],
    "formats": [f[1] for f in _FIELDS],
    "offsets": [f[2] for f in _FIELDS],
    "itemsize": sizeof(pkt_desc),
})

_ADDR_FIELDS = ("src", "dst", "ic_src", "ic_dst")
_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"


def addr_to_str(addr):
    """Render a 16-byte address: IPv4-mapped (::ffff:a.b.c.d) as dotted quad, else IPv6 text."""
    b = bytes(addr)
    if len(b) != 16:
        raise ValueError(f"address must be 16 bytes, got {len(b)}")
    if b[:12] == _V4_PREFIX:
        return socket.inet_ntop(socket.AF_INET, b[12:])
    return socket.inet_ntop(socket.AF_INET6, b)


def str_to_addr(text):
    """Parse an IPv4 or IPv6 address into its 16-byte form (IPv4 mapped as ::ffff:a.b.c.d)."""
    s = str(text).strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    try:
        if ":" in s:
            return socket.inet_pton(socket.AF_INET6, s)
        return _V4_PREFIX + socket.inet_pton(socket.AF_INET, s)
    except OSError:
        raise ValueError(f"not an IP address: {text!r}") from None


cdef int _check_index(PacketBatch b, Py_ssize_t i) except -1:
    if i < 0 or i >= b.count:
        raise IndexError(f"packet {i} out of range (batch holds {b.count})")
    return 0


cdef class _DescriptorView:
    """Buffer over a batch's first ``count`` descriptors; holds the batch alive."""
    cdef PacketBatch batch
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self, PacketBatch batch):
        self.batch = batch

    def __getbuffer__(self, Py_buffer *buf, int flags):
        self.shape[0] = <Py_ssize_t> self.batch.count * sizeof(pkt_desc)
        self.strides[0] = 1
        buf.buf = <void *> self.batch.pkts
        buf.obj = self
        buf.len = self.shape[0]
        buf.readonly = 0
        buf.itemsize = 1
        buf.format = "B"
        buf.ndim = 1
        buf.shape = self.shape
        buf.strides = self.strides
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass


cdef class PacketBatch:
    """A burst of up to ``capacity`` packets.

    ``pkts`` is allocated once (calloc) and never reallocated. ``owner`` keeps the memory the
    packets point into alive (the mapped capture file, a bytes buffer, a ring block).
    """

    def __cinit__(self, uint32_t capacity=256):
        if capacity == 0:
            raise ValueError("PacketBatch capacity must be at least 1")
        self.pkts = <pkt_desc *> calloc(capacity, sizeof(pkt_desc))
        if self.pkts == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.count = 0
        self.owner = None

    def __dealloc__(self):
        free(self.pkts)
        self.pkts = NULL

    def __len__(self):
        return self.count

    def __repr__(self):
        return f"<PacketBatch count={self.count} capacity={self.capacity}>"

    def to_numpy(self):
        """Structured array (dtype PKT_DTYPE) viewing the first ``count`` descriptors in place.

        The array references this batch, so it stays valid as long as the array lives. Addresses
        are ('u1', 16) sub-arrays; ``data`` is the packet pointer as uint64.
        """
        return np.frombuffer(_DescriptorView(self), dtype=PKT_DTYPE)

    def packet_bytes(self, Py_ssize_t i):
        """A copy of packet ``i``'s captured bytes."""
        if i < 0:
            i += self.count
        _check_index(self, i)
        return PyBytes_FromStringAndSize(<const char *> self.pkts[i].data, self.pkts[i].caplen)

    def row(self, Py_ssize_t i):
        """Packet ``i``'s descriptor as a dict (addresses as text, ``None`` when absent)."""
        if i < 0:
            i += self.count
        _check_index(self, i)
        rec = self.to_numpy()[i]
        out = {}
        for name in PKT_DTYPE.names:
            v = rec[name]
            if name in _ADDR_FIELDS:
                out[name] = None
            else:
                out[name] = int(v)
        cdef pkt_desc *p = &self.pkts[i]
        if p.af:
            out["src"] = addr_to_str(rec["src"].tobytes())
            out["dst"] = addr_to_str(rec["dst"].tobytes())
        if p.ic_l3_off != 0xffff:
            out["ic_src"] = addr_to_str(rec["ic_src"].tobytes())
            out["ic_dst"] = addr_to_str(rec["ic_dst"].tobytes())
        return out

    def parse(self):
        """(Re)parse every packet of the batch in place (readers already do this)."""
        with nogil:
            parse_burst(self.pkts, self.count)

    @staticmethod
    def from_packets(packets, int linktype=1, uint64_t first_index=0):
        """Build and parse a batch from Python data (for tests and slow sources).

        ``packets`` is a sequence of tuples ``(ts_ns, data[, wirelen[, ifindex[, linktype]]])``;
        ``wirelen`` defaults to ``len(data)``, ``ifindex`` to 0 and the link type to
        ``linktype``. All packet bytes are copied into one buffer owned by the batch; packet
        ``i`` gets ``index = first_index + i``.
        """
        items = list(packets)
        cdef Py_ssize_t n = len(items)
        cdef PacketBatch b = PacketBatch(max(n, 1))
        chunks = []
        offsets = []
        cdef Py_ssize_t total = 0
        for it in items:
            if not 2 <= len(it) <= 5:
                raise ValueError("packet tuples are (ts_ns, data[, wirelen[, ifindex[, linktype]]])")
            data = bytes(it[1])
            if len(data) > 0xffffffff:
                raise ValueError("packet too large")
            offsets.append(total)
            chunks.append(data)
            total += len(data)
        buf = b"".join(chunks)
        cdef const uint8_t *base = <const uint8_t *> PyBytes_AS_STRING(buf)
        cdef pkt_desc *p
        cdef Py_ssize_t i
        for i in range(n):
            it = items[i]
            p = &b.pkts[i]
            p.data = base + <Py_ssize_t> offsets[i]
            p.caplen = <uint32_t> len(chunks[i])
            p.wirelen = <uint32_t> (it[2] if len(it) > 2 and it[2] is not None else len(chunks[i]))
            p.ifindex = <uint32_t> (it[3] if len(it) > 3 and it[3] is not None else 0)
            lt = it[4] if len(it) > 4 and it[4] is not None else linktype
            if not 0 <= lt <= 0xffff:
                raise ValueError(f"link type {lt} out of range")
            p.linktype = <uint16_t> lt
            p.ts_ns = <int64_t> it[0]
            p.index = first_index + <uint64_t> i
        b.count = <uint32_t> n
        b.owner = buf
        with nogil:
            parse_burst(b.pkts, b.count)
        return b
