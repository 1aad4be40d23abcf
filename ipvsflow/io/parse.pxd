# The one-pass, allocation-free packet parser. The reader sets data, caplen, wirelen, ts_ns,
# index, ifindex and linktype; the parser fills every other field (fwmark is left alone). It never
# reads past caplen and never fails: problems are reported in pkt_desc.status.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy
from ipvsflow.io.batch cimport pkt_desc, OK, BAD_L4_HDR

cdef void parse_packet(pkt_desc *p) noexcept nogil
cdef void parse_burst(pkt_desc *p, uint32_t n) noexcept nogil
# The general parser, without the fast path's shortcut (parse_packet = fast path, else this).
cdef void parse_full(pkt_desc *p) noexcept nogil
cdef const pkt_desc *fast4_template() noexcept nogil


cdef inline uint16_t rd16(const uint8_t *b) noexcept nogil:
    return <uint16_t> ((<uint16_t> b[0] << 8) | b[1])


cdef inline uint32_t rd32(const uint8_t *b) noexcept nogil:
    return (<uint32_t> b[0] << 24) | (<uint32_t> b[1] << 16) | (<uint32_t> b[2] << 8) | b[3]


cdef inline void _fast4_write(pkt_desc *p, const pkt_desc *t, size_t first, const uint8_t *d,
                              uint32_t status, uint32_t tot, uint8_t proto,
                              uint8_t flags) noexcept nogil:
    """The fast path's stores, once per protocol (so each has its constants in place)."""
    cdef uint32_t sa, da
    # both ports in one load (sport in the high half)
    cdef uint32_t ports = rd32(d + 34)
    cdef uint8_t ttl = d[22]
    cdef uint16_t frag_id = rd16(d + 18)
    memcpy(&sa, d + 26, 4)
    memcpy(&da, d + 30, 4)
    # the fields this case always has, then the ones read from the packet
    if first < sizeof(pkt_desc):
        memcpy(<char *> p + first, <const char *> t + first, sizeof(pkt_desc) - first)
    p.status = <uint16_t> status
    p.l3_len = <uint16_t> tot
    p.l4_len = <uint16_t> (tot - 20)
    p.sport = <uint16_t> (ports >> 16)
    p.dport = <uint16_t> ports
    p.proto = proto
    p.tcp_flags = flags
    p.ttl = ttl
    p.frag_id = frag_id
    memcpy(p.src + 12, &sa, 4)
    memcpy(p.dst + 12, &da, 4)


# Inline, so a reader can parse each packet as it fills it in without a call.
cdef inline bint parse_eth_ipv4_fast_from(pkt_desc *p, const pkt_desc *t, const uint8_t *d,
                                          uint32_t n, uint32_t wire, size_t first) noexcept nogil:
    """parse_eth_ipv4_fast_at, taking from t every byte from offset ``first`` on (at most
    offsetof(status)): a reader whose t also holds its own reader fields (ifindex, fwmark,
    linktype) has them written with the rest, in one copy. first = sizeof(pkt_desc): the
    caller has written t already (t is not read). On 0, nothing (more) was written.
    Every header byte is loaded before the first store: p's fields may alias the frame as far
    as the compiler knows, so a store in between would force the loads again."""
    cdef uint32_t tot, lim, ulen, doff, status = OK
    cdef uint8_t proto
    if n < 14 + 20 + 8:
        return 0
    # ethertype 0x0800, version 4 with IHL 5 (d[12..14] = 08 00 45)
    if (rd32(d + 12) >> 8) != 0x080045:
        return 0
    tot = rd16(d + 16)
    # no fragment bits (DF allowed), a total length that holds the header and fits the frame
    if (rd16(d + 20) & 0x3fff) or tot < 20 or 14 + tot > wire:
        return 0
    proto = d[23]
    lim = 14 + tot if 14 + tot < n else n
    if proto == 17:
        if lim < 14 + 20 + 8:
            return 0
        ulen = rd16(d + 38)
        if ulen < 8 or ulen > tot - 20:
            status = BAD_L4_HDR
        _fast4_write(p, t, first, d, status, tot, 17, 0)
        return 1
    if proto == 6:
        if lim < 14 + 20 + 20:
            return 0
        doff = (<uint32_t> d[46] >> 4) << 2
        if doff < 20 or doff > tot - 20:
            status = BAD_L4_HDR
        _fast4_write(p, t, first, d, status, tot, 6, d[47])
        return 1
    return 0


cdef inline bint parse_eth_ipv4_fast_at(pkt_desc *p, const pkt_desc *t, const uint8_t *d,
                                        uint32_t n, uint32_t wire) noexcept nogil:
    """parse_eth_ipv4_fast for an Ethernet frame whose data, caplen and max(wirelen, caplen)
    the caller holds already (a reader that has just filled them in)."""
    return parse_eth_ipv4_fast_from(p, t, d, n, wire,
                                    <size_t> (<const char *> &t.status - <const char *> t))


cdef inline bint parse_eth_ipv4_fast(pkt_desc *p, const pkt_desc *t) noexcept nogil:
    """The common case in a straight line: Ethernet (no VLAN tag), IPv4 without options and
    not a fragment, a complete UDP or TCP header. Writes every parser field, exactly what the
    full parser would, and returns 1; returns 0 (nothing written) for anything else.
    t is fast4_template(): the fields every such packet has in common."""
    if p.linktype != 1:
        return 0
    return parse_eth_ipv4_fast_at(p, t, p.data, p.caplen,
                                  p.wirelen if p.wirelen > p.caplen else p.caplen)
