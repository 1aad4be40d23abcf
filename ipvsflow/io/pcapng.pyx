"""pcapng reader: every section (either byte order), every interface with its own link type,
if_tsresol and if_tsoffset; enhanced, simple and obsolete packet blocks; other blocks skipped.

Zero-copy like the pcap reader: packet data points into the mapped file. ``pkt_desc.ifindex`` is
the interface's number in file order (counting across sections, as Wireshark numbers them), so
interface 0 of the second section gets a new number. Simple packet blocks carry no timestamp:
their ts_ns is 0 (as tshark shows them).
"""
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport realloc, free

from ipvsflow.io.batch cimport PacketBatch, pkt_desc
from ipvsflow.io.pcap cimport CaptureReader, FileBuffer

PCAPNG_SHB_TYPE = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

cdef enum:
    BT_IDB = 1
    BT_OPB = 2
    BT_SPB = 3
    BT_EPB = 6
    BT_SHB = 0x0A0D0D0A
    BYTE_ORDER_MAGIC = 0x1A2B3C4D
    OPT_ENDOFOPT = 0
    OPT_IF_TSRESOL = 9
    OPT_IF_TSOFFSET = 14


cdef extern from *:
    void __builtin_prefetch(const void *addr) nogil


cdef inline uint32_t ld32(const uint8_t *b, bint big) noexcept nogil:
    if big:
        return (<uint32_t> b[0] << 24) | (<uint32_t> b[1] << 16) | (<uint32_t> b[2] << 8) | b[3]
    return (<uint32_t> b[3] << 24) | (<uint32_t> b[2] << 16) | (<uint32_t> b[1] << 8) | b[0]


cdef inline uint16_t ld16(const uint8_t *b, bint big) noexcept nogil:
    if big:
        return <uint16_t> ((<uint16_t> b[0] << 8) | b[1])
    return <uint16_t> ((<uint16_t> b[1] << 8) | b[0])


cdef inline int64_t ts_to_ns(const iface_t *ifc, uint32_t hi, uint32_t lo) noexcept nogil:
    cdef uint64_t ts = (<uint64_t> hi << 32) | lo
    cdef uint64_t ns
    if ifc.ts_kind == 0:
        ns = ts * ifc.mult
    elif ifc.ts_kind == 1:
        ns = <uint64_t> ((<uint128_t> ts * 1000000000) / ifc.div)
    else:
        ns = <uint64_t> ((<uint128_t> ts * 1000000000) >> ifc.shift)
    return <int64_t> ns + ifc.offset_ns


cdef class PcapngReader(CaptureReader):
    """pcapng reader; see the module docstring. ``sections`` counts section headers read."""

    def __init__(self, FileBuffer buf, uint32_t burst=256, path=None):
        cdef const uint8_t *h = buf.base
        cdef bint big
        cdef uint32_t blen
        if buf.size < 12:
            raise self._fail("truncated pcapng section header: %d bytes" % buf.size)
        if ld32(h, False) != BT_SHB:
            raise self._fail("not a pcapng file (first block type %s)" % bytes(buf.head(4)).hex())
        if ld32(h + 8, False) == BYTE_ORDER_MAGIC:
            big = False
        elif ld32(h + 8, True) == BYTE_ORDER_MAGIC:
            big = True
        else:
            raise self._fail("corrupt pcapng section header: bad byte-order magic %s"
                             % bytes(buf.head(12)[8:12]).hex())
        blen = ld32(h + 4, big)
        if buf.size < 28 or blen > buf.size:
            raise self._fail("truncated pcapng section header: %d bytes, block length %d"
                             % (buf.size, blen))
        self.big = big
        self.pos = 0

    def __dealloc__(self):
        free(self.ifaces)
        self.ifaces = NULL

    cdef int _add_iface(self, size_t off, const uint8_t *body, uint32_t bodylen) except -2:
        """Interface description block at file offset ``off``; sets _error when corrupt."""
        cdef bint big = self.big
        cdef uint32_t o = 8
        cdef uint16_t code, olen
        cdef uint8_t res
        cdef int64_t offset_s = 0
        cdef iface_t *ifc
        cdef uint32_t k
        cdef uint128_t p10
        if bodylen < 8:
            self._error = "corrupt pcapng interface description block at byte offset %d: too short" % off
            return -1
        if self.n_ifaces == self.ifaces_cap:
            k = self.ifaces_cap * 2 if self.ifaces_cap else 4
            ifc = <iface_t *> realloc(self.ifaces, k * sizeof(iface_t))
            if ifc == NULL:
                raise MemoryError()
            self.ifaces = ifc
            self.ifaces_cap = k
        res = 6
        while o + 4 <= bodylen:
            code = ld16(body + o, big)
            olen = ld16(body + o + 2, big)
            if code == OPT_ENDOFOPT:
                break
            if o + 4 + olen > bodylen:
                self._error = ("corrupt pcapng interface description block at byte offset %d: "
                               "option %d runs past the block" % (off, code))
                return -1
            if code == OPT_IF_TSRESOL and olen >= 1:
                res = body[o + 4]
            elif code == OPT_IF_TSOFFSET and olen >= 8:
                offset_s = <int64_t> ((<uint64_t> ld32(body + o + 4, big) << 32) | ld32(body + o + 8, big)) \
                    if big else <int64_t> ((<uint64_t> ld32(body + o + 8, big) << 32) | ld32(body + o + 4, big))
            o += 4 + ((olen + 3) & ~3)
        ifc = &self.ifaces[self.n_ifaces]
        ifc.global_id = <uint32_t> len(self._linktypes)
        ifc.linktype = ld16(body, big)
        ifc.snaplen = ld32(body + 4, big)
        ifc.offset_ns = offset_s * 1000000000
        ifc.mult = 1
        ifc.div = 1
        ifc.shift = 0
        if res & 0x80:
            ifc.ts_kind = 2                      # 2^-k seconds
            ifc.shift = res & 0x7f
        elif res <= 9:
            ifc.ts_kind = 0                      # 10^-k seconds, k <= 9: multiply up to ns
            ifc.mult = 1
            for k in range(9 - res):
                ifc.mult *= 10
        else:
            ifc.ts_kind = 1                      # finer than ns: divide down
            p10 = 1
            for k in range(min(res, 38)):
                p10 *= 10
            ifc.div = p10
        self.n_ifaces += 1
        self._linktypes.append(ifc.linktype)
        return 0

    cdef int _fill(self, PacketBatch b) except -1:
        cdef const uint8_t *base = self.buf.base
        cdef size_t size = self.buf.size
        cdef size_t pos = self.pos
        cdef uint32_t i = 0
        cdef uint32_t cap = b.capacity
        cdef uint64_t index = self.packets
        cdef const uint8_t *h
        cdef const uint8_t *body
        cdef uint32_t btype, blen, bodylen, ifid, caplen, origlen, tsh, tsl, bom
        cdef iface_t *ifc
        cdef pkt_desc *p
        cdef bint big = self.big
        err = None
        while i < cap and pos < size:
            h = base + pos
            __builtin_prefetch(h + 1024)      # see PcapReader._fill
            if size - pos < 12:
                err = ("truncated pcapng block at byte offset %d: %d bytes left, a block needs "
                       "at least 12" % (pos, size - pos))
                break
            btype = ld32(h, big)
            if btype == BT_SHB:
                bom = ld32(h + 8, False)
                if bom == BYTE_ORDER_MAGIC:
                    big = False
                elif ld32(h + 8, True) == BYTE_ORDER_MAGIC:
                    big = True
                else:
                    err = ("corrupt pcapng section header at byte offset %d: bad byte-order magic"
                           % pos)
                    break
                self.big = big
            blen = ld32(h + 4, big)
            if blen < 12 or blen & 3:
                err = "corrupt pcapng block at byte offset %d: block length %d" % (pos, blen)
                break
            if blen > size - pos:
                err = ("truncated pcapng block at byte offset %d: block length %d, only %d bytes "
                       "left in the file" % (pos, blen, size - pos))
                break
            if ld32(h + blen - 4, big) != blen:
                err = ("corrupt pcapng block at byte offset %d: leading length %d, trailing "
                       "length %d" % (pos, blen, ld32(h + blen - 4, big)))
                break
            body = h + 8
            bodylen = blen - 12
            if btype == BT_EPB or btype == BT_OPB:
                if bodylen < 20:
                    err = "corrupt pcapng packet block at byte offset %d: too short" % pos
                    break
                if btype == BT_EPB:
                    ifid = ld32(body, big)
                else:
                    ifid = ld16(body, big)
                if ifid >= self.n_ifaces:
                    err = ("corrupt pcapng packet block at byte offset %d: interface %d, but the "
                           "section has %d" % (pos, ifid, self.n_ifaces))
                    break
                caplen = ld32(body + 12, big)
                if caplen > bodylen - 20:
                    err = ("corrupt pcapng packet block at byte offset %d: captured length %d "
                           "exceeds the block" % (pos, caplen))
                    break
                ifc = &self.ifaces[ifid]
                p = &b.pkts[i]
                p.data = body + 20
                p.caplen = caplen
                p.wirelen = ld32(body + 16, big)
                p.ts_ns = ts_to_ns(ifc, ld32(body + 4, big), ld32(body + 8, big))
                p.index = index + i
                p.ifindex = ifc.global_id
                p.linktype = ifc.linktype
                i += 1
            elif btype == BT_SPB:
                if bodylen < 4:
                    err = "corrupt pcapng simple packet block at byte offset %d: too short" % pos
                    break
                if self.n_ifaces == 0:
                    err = ("corrupt pcapng simple packet block at byte offset %d: no interface "
                           "in this section" % pos)
                    break
                ifc = &self.ifaces[0]
                origlen = ld32(body, big)
                caplen = bodylen - 4
                if origlen < caplen:
                    caplen = origlen
                if ifc.snaplen and ifc.snaplen < caplen:
                    caplen = ifc.snaplen
                p = &b.pkts[i]
                p.data = body + 4
                p.caplen = caplen
                p.wirelen = origlen
                p.ts_ns = 0
                p.index = index + i
                p.ifindex = ifc.global_id
                p.linktype = ifc.linktype
                i += 1
            elif btype == BT_IDB:
                if self._add_iface(pos, body, bodylen) < 0:
                    err = self._error
                    self._error = None
                    break
            elif btype == BT_SHB:
                if bodylen < 16:
                    err = "corrupt pcapng section header at byte offset %d: too short" % pos
                    break
                if ld16(body + 4, big) != 1:
                    err = ("unsupported pcapng version %d.%d in the section header at byte offset %d"
                           % (ld16(body + 4, big), ld16(body + 6, big), pos))
                    break
                self.n_ifaces = 0
                self.sections += 1
            pos += blen
        b.count = i
        self.packets += i
        self.pos = pos
        if err is not None:
            self._error = err
        return 0
