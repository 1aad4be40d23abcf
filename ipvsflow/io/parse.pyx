"""One-pass L2/L3/L4 header parser over pkt_desc (nogil, no allocation, never reads past caplen).

Bounds: ``n`` is the captured length; ``lim`` is the end of what may be read for the current
header, i.e. min(caplen, end of the IP packet per its header). Multi-byte fields are big-endian
on the wire and are loaded byte by byte (the compiler turns these into single bswapped loads).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset

from ipvsflow.io.batch cimport (
    pkt_desc, OK, FRAGMENT, NOT_IP, UNKNOWN_LINKTYPE, TRUNC_L2, TRUNC_L3, BAD_IP_VERSION, BAD_IHL,
    BAD_IP_LEN, TRUNC_EXTHDR, TRUNC_L4, BAD_L4_HDR, TRUNC_ICMP_INNER, BAD_ICMP_INNER,
    FRAG_IS, FRAG_MF, FRAG_NONFIRST, SCTP_ABORT_AFTER_COOKIE,
)

cdef enum:
    # More VLAN tags than this and the frame is reported as NOT_IP (keeps l2_len in 8 bits).
    MAX_VLAN_TAGS = 8
    NO_OFF = 0xffff


# What the parser writes before looking at a packet: no offsets, no chunk, everything else 0.
cdef pkt_desc BLANK
memset(&BLANK, 0, sizeof(pkt_desc))
BLANK.l3_off = NO_OFF
BLANK.l4_off = NO_OFF
BLANK.ic_l3_off = NO_OFF
BLANK.sctp_chunk = 0xff

# The same for an untagged Ethernet/IPv4 frame without options (the fast path): what every such
# packet has in common.
cdef pkt_desc FAST4
memcpy(&FAST4, &BLANK, sizeof(pkt_desc))
FAST4.l3_off = 14
FAST4.l4_off = 34
FAST4.af = 4
FAST4.l2_len = 14
FAST4.src[10] = 0xff
FAST4.src[11] = 0xff
FAST4.dst[10] = 0xff
FAST4.dst[11] = 0xff

cdef inline void set_v4(uint8_t *dst, const uint8_t *a) noexcept nogil:
    # dst was zeroed by the reset; only the ::ffff: marker and the 4 address bytes are written.
    dst[10] = 0xff
    dst[11] = 0xff
    memcpy(dst + 12, a, 4)


cdef inline int af_to_ipver(uint32_t af) noexcept nogil:
    # BSD loopback AF values: AF_INET is 2 everywhere, AF_INET6 is 24 (Net/Open BSD), 28 (FreeBSD)
    # or 30 (Darwin).
    if af == 2:
        return 4
    if af == 24 or af == 28 or af == 30:
        return 6
    return 0


cdef inline int walk_ext6(const uint8_t *d, uint32_t *ppos, uint32_t lim, uint8_t *pnh,
                          uint8_t *pfrag, uint16_t *pfoff, uint32_t *pfid) noexcept nogil:
    """Skip IPv6 extension headers (hop-by-hop, routing, fragment, AH, destination options)
    starting at ppos[0] with next header pnh[0], as the kernel's ipv6_skip_exthdr does.
    Stops after a non-first fragment header. Returns 0, or 1 when a header runs past lim."""
    cdef uint32_t pos = ppos[0]
    cdef uint32_t hl
    cdef uint16_t fw
    cdef uint8_t nh = pnh[0]
    cdef int rc = 0
    while True:
        if nh == 0 or nh == 43 or nh == 60:
            if pos + 8 > lim:
                rc = 1
                break
            hl = (<uint32_t> d[pos + 1] + 1) << 3
            if pos + hl > lim:
                rc = 1
                break
            nh = d[pos]
            pos += hl
        elif nh == 44:
            if pos + 8 > lim:
                rc = 1
                break
            fw = rd16(d + pos + 2)
            pfrag[0] = FRAG_IS
            if fw & 1:
                pfrag[0] |= FRAG_MF
            pfoff[0] = fw >> 3
            pfid[0] = rd32(d + pos + 4)
            nh = d[pos]
            pos += 8
            if pfoff[0] != 0:
                pfrag[0] |= FRAG_NONFIRST
                break
        elif nh == 51:
            if pos + 8 > lim:
                rc = 1
                break
            hl = (<uint32_t> d[pos + 1] + 2) << 2
            if pos + hl > lim:
                rc = 1
                break
            nh = d[pos]
            pos += hl
        else:
            break
    ppos[0] = pos
    pnh[0] = nh
    return rc


cdef inline bint has_ports(uint8_t proto) noexcept nogil:
    return proto == 6 or proto == 17 or proto == 132


cdef inline void parse_icmp_inner(pkt_desc *p, const uint8_t *d, uint32_t q, uint32_t lim,
                                  int ver) noexcept nogil:
    """Embedded packet of an ICMP/ICMPv6 error starting at offset q (what the kernel's
    ip_vs_in_icmp / ip_vs_in_icmp_v6 look at: inner addresses, protocol and the first 4 bytes
    of the inner L4 header)."""
    cdef uint32_t ihl, pos
    cdef uint8_t nh, frag = 0
    cdef uint16_t foff = 0
    cdef uint32_t fid = 0
    if q >= lim:
        p.status = TRUNC_ICMP_INNER
        return
    if (d[q] >> 4) != ver:
        p.status = BAD_ICMP_INNER
        return
    if ver == 4:
        if q + 20 > lim:
            p.status = TRUNC_ICMP_INNER
            return
        ihl = (<uint32_t> d[q] & 15) << 2
        if ihl < 20:
            p.status = BAD_ICMP_INNER
            return
        p.ic_proto = d[q + 9]
        set_v4(p.ic_src, d + q + 12)
        set_v4(p.ic_dst, d + q + 16)
        p.ic_l3_off = <uint16_t> q
        if rd16(d + q + 6) & 0x1fff:
            return      # non-first fragment embedded: no L4 header, no ports
        pos = q + ihl
    else:
        if q + 40 > lim:
            p.status = TRUNC_ICMP_INNER
            return
        memcpy(p.ic_src, d + q + 8, 16)
        memcpy(p.ic_dst, d + q + 24, 16)
        p.ic_l3_off = <uint16_t> q
        nh = d[q + 6]
        pos = q + 40
        if walk_ext6(d, &pos, lim, &nh, &frag, &foff, &fid):
            p.ic_proto = nh
            p.status = TRUNC_ICMP_INNER
            return
        p.ic_proto = nh
        if frag & FRAG_NONFIRST:
            return
    if has_ports(p.ic_proto):
        if pos + 4 > lim:
            p.status = TRUNC_ICMP_INNER
            return
        p.ic_sport = rd16(d + pos)
        p.ic_dport = rd16(d + pos + 2)


cdef inline void parse_l4(pkt_desc *p, const uint8_t *d, uint32_t l4, uint32_t ipend,
                          uint32_t n) noexcept nogil:
    """L4 header at offset l4 of an IP packet ending (per its header) at ipend."""
    cdef uint32_t lim = ipend if ipend < n else n
    cdef uint32_t avail = lim - l4 if lim > l4 else 0
    cdef uint32_t l4len = ipend - l4
    cdef const uint8_t *h = d + l4
    cdef uint32_t doff, ulen, clen, nxt
    cdef uint8_t proto = p.proto
    if l4 > NO_OFF - 64:
        # Only reachable with ~64 KiB of IPv6 extension headers: offsets would not fit 16 bits.
        p.status = TRUNC_EXTHDR
        return
    p.l4_off = <uint16_t> l4
    p.l4_len = <uint16_t> (l4len if l4len <= 0xffff else 0xffff)
    if proto == 6:
        if avail < 20:
            p.status = TRUNC_L4
            return
        p.sport = rd16(h)
        p.dport = rd16(h + 2)
        p.tcp_flags = h[13]
        doff = (<uint32_t> h[12] >> 4) << 2
        # A first fragment holds only part of the L4 payload: length checks against it are void.
        if doff < 20 or (doff > l4len and not (p.frag & FRAG_MF)):
            p.status = BAD_L4_HDR
    elif proto == 17:
        if avail < 8:
            p.status = TRUNC_L4
            return
        p.sport = rd16(h)
        p.dport = rd16(h + 2)
        ulen = rd16(h + 4)
        if ulen < 8 or (ulen > l4len and not (p.frag & FRAG_MF)):
            p.status = BAD_L4_HDR
    elif proto == 132:
        if avail < 12:
            p.status = TRUNC_L4
            return
        p.sport = rd16(h)
        p.dport = rd16(h + 2)
        if l4len >= 16:
            if avail < 16:
                p.status = TRUNC_L4
                return
            p.sctp_chunk = h[12]
            # ip_vs_proto_sctp.c set_sctp_state: a COOKIE_ECHO/COOKIE_ACK bundled with a
            # following ABORT (at ALIGN(chunk length, 4)) counts as ABORT.
            if h[12] == 10 or h[12] == 11:
                clen = rd16(h + 14)
                if clen >= 4:
                    nxt = 12 + ((clen + 3) & ~(<uint32_t> 3))
                    if nxt + 4 <= avail and h[nxt] == 6:
                        p.sctp_flags = SCTP_ABORT_AFTER_COOKIE
    elif proto == 1:
        if avail >= 2:
            p.icmp_type = h[0]
            p.icmp_code = h[1]
        if avail < 8:
            p.status = TRUNC_L4
            return
        # dest unreachable, source quench, time exceeded, parameter problem
        if h[0] == 3 or h[0] == 4 or h[0] == 11 or h[0] == 12:
            parse_icmp_inner(p, d, l4 + 8, lim, 4)
    elif proto == 58:
        if avail >= 2:
            p.icmp_type = h[0]
            p.icmp_code = h[1]
        if avail < 8:
            p.status = TRUNC_L4
            return
        # error messages: dest unreachable, packet too big, time exceeded, parameter problem
        if 1 <= h[0] <= 4:
            parse_icmp_inner(p, d, l4 + 8, lim, 6)


cdef inline void parse_ipv4(pkt_desc *p, const uint8_t *d, uint32_t off, uint32_t n,
                            uint32_t wire) noexcept nogil:
    cdef const uint8_t *ip = d + off
    cdef uint32_t rem = n - off
    cdef uint32_t ihl, tot
    cdef uint16_t fw
    p.af = 4
    p.l3_off = <uint16_t> off
    if rem < 20:
        p.status = TRUNC_L3
        return
    ihl = (<uint32_t> ip[0] & 15) << 2
    tot = rd16(ip + 2)
    if tot == 0:
        # Captured before segmentation offload (TSO/GSO, BIG TCP): the stack leaves the total
        # length 0 and the packet runs to the end of the frame (as Wireshark assumes too).
        tot = wire - off
    p.l3_len = <uint16_t> (tot if tot <= 0xffff else 0xffff)
    p.ttl = ip[8]
    p.proto = ip[9]
    p.frag_id = rd16(ip + 4)
    set_v4(p.src, ip + 12)
    set_v4(p.dst, ip + 16)
    fw = rd16(ip + 6)
    if fw & 0x3fff:
        p.frag = FRAG_IS
        if fw & 0x2000:
            p.frag |= FRAG_MF
        p.frag_off = fw & 0x1fff
        if p.frag_off:
            p.frag |= FRAG_NONFIRST
    if ihl < 20 or off + ihl > wire:
        p.status = BAD_IHL
        return
    if tot < ihl or off + tot > wire:
        p.status = BAD_IP_LEN
        return
    if ihl > rem:
        p.status = TRUNC_L3        # options cut by the snaplen
        return
    if p.frag & FRAG_NONFIRST:
        p.status = FRAGMENT
        return
    parse_l4(p, d, off + ihl, off + tot, n)


cdef inline void parse_ipv6(pkt_desc *p, const uint8_t *d, uint32_t off, uint32_t n,
                            uint32_t wire) noexcept nogil:
    cdef const uint8_t *ip = d + off
    cdef uint32_t rem = n - off
    cdef uint32_t iplen, ipend, lim, pos
    cdef uint8_t nh
    p.af = 6
    p.l3_off = <uint16_t> off
    if rem < 40:
        p.status = TRUNC_L3
        return
    iplen = 40 + <uint32_t> rd16(ip + 4)
    if iplen == 40 and wire - off > 40:
        # Payload length 0: a jumbogram (RFC 2675) or a GSO/BIG TCP packet captured before
        # segmentation; either way the packet runs to the end of the frame.
        iplen = wire - off
    p.l3_len = <uint16_t> (iplen if iplen <= 0xffff else 0xffff)
    p.ttl = ip[7]
    memcpy(p.src, ip + 8, 16)
    memcpy(p.dst, ip + 24, 16)
    nh = ip[6]
    ipend = off + iplen
    if ipend > wire:
        p.proto = nh
        p.status = BAD_IP_LEN
        return
    lim = ipend if ipend < n else n
    pos = off + 40
    if walk_ext6(d, &pos, lim, &nh, &p.frag, &p.frag_off, &p.frag_id):
        p.proto = nh
        p.status = TRUNC_EXTHDR
        return
    p.proto = nh
    if p.frag & FRAG_NONFIRST:
        p.status = FRAGMENT
        return
    parse_l4(p, d, pos, ipend, n)


cdef void parse_full(pkt_desc *p) noexcept nogil:
    cdef const uint8_t *d = p.data
    cdef uint32_t n = p.caplen
    cdef uint32_t wire = p.wirelen if p.wirelen > p.caplen else p.caplen
    cdef uint32_t off = 0
    cdef uint32_t et = 0
    cdef uint32_t v
    cdef int ipver = 0          # 0: decided by the version nibble (raw IP)
    cdef int tags = 0
    cdef uint16_t lt = p.linktype
    # Everything from status on belongs to the parser: start from the blank template (a
    # constant-size copy compiles to a few vector moves; memset here became a slow rep stos).
    memcpy(<char *> &p.status, <const char *> &BLANK.status,
           sizeof(pkt_desc) - <size_t> (<char *> &BLANK.status - <char *> &BLANK))

    if lt == 1:                 # Ethernet
        if n < 14:
            p.status = TRUNC_L2
            return
        et = rd16(d + 12)
        off = 14
    elif lt == 113:             # Linux cooked v1: protocol at 14
        if n < 16:
            p.status = TRUNC_L2
            return
        et = rd16(d + 14)
        off = 16
    elif lt == 276:             # Linux cooked v2: protocol at 0
        if n < 20:
            p.status = TRUNC_L2
            return
        et = rd16(d)
        off = 20
    elif lt == 101 or lt == 12 or lt == 14:
        ipver = 0
    elif lt == 228:
        ipver = 4
    elif lt == 229:
        ipver = 6
    elif lt == 0 or lt == 108:  # BSD null (host byte order of the writer) / OpenBSD loop (network)
        if n < 4:
            p.status = TRUNC_L2
            return
        if lt == 108:
            v = rd32(d)
        else:
            v = (<uint32_t> d[0]) | (<uint32_t> d[1] << 8) | (<uint32_t> d[2] << 16) | (<uint32_t> d[3] << 24)
            if v & 0xffff0000U:
                v = rd32(d)
        off = 4
        p.l2_len = 4
        ipver = af_to_ipver(v)
        if ipver == 0:
            p.status = NOT_IP
            return
    else:
        p.status = UNKNOWN_LINKTYPE
        return

    if off and ipver == 0:
        # ethertype-based link layers: 802.1Q / 802.1ad / old QinQ tags, then IPv4 / IPv6
        while et == 0x8100 or et == 0x88a8 or et == 0x9100:
            if n < off + 4:
                p.l2_len = <uint8_t> off
                p.status = TRUNC_L2
                return
            if tags >= MAX_VLAN_TAGS:
                p.l2_len = <uint8_t> off
                p.status = NOT_IP
                return
            if tags == 0:
                p.vlan_outer = rd16(d + off) & 0xfff
            elif tags == 1:
                p.vlan_inner = rd16(d + off) & 0xfff
            tags += 1
            et = rd16(d + off + 2)
            off += 4
        p.vlan_count = <uint8_t> (tags if tags < 2 else 2)
        p.l2_len = <uint8_t> off
        if et == 0x0800:
            ipver = 4
        elif et == 0x86dd:
            ipver = 6
        else:
            p.status = NOT_IP
            return

    if n <= off:
        p.status = TRUNC_L3
        return
    v = d[off] >> 4
    if ipver == 0:
        if v != 4 and v != 6:
            p.status = BAD_IP_VERSION
            return
        ipver = <int> v
    elif <int> v != ipver:
        p.status = BAD_IP_VERSION
        return
    if ipver == 4:
        parse_ipv4(p, d, off, n, wire)
    else:
        parse_ipv6(p, d, off, n, wire)


cdef const pkt_desc *fast4_template() noexcept nogil:
    return &FAST4


cdef void parse_packet(pkt_desc *p) noexcept nogil:
    if not parse_eth_ipv4_fast(p, &FAST4):
        parse_full(p)


cdef void parse_burst(pkt_desc *p, uint32_t n) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        parse_packet(&p[i])
