"""NAT (masquerading) packet rewrite: addresses, ports and checksums, see nat.pxd.

Checksums are updated incrementally (RFC 1624) where the kernel does so (IPv4 header, TCP,
UDP); the kernel's exceptions are followed: a UDP checksum of 0 is computed in full
(udp_dnat_handler's "full checksum calculation" branch, and 0 then becomes 0xffff), the SCTP
CRC-32C is recomputed whenever the port changes (sctp_dnat_handler), and an ICMP error's
checksum covers the rewritten inner header.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from ipvsflow.io.batch cimport FRAG_IS
from ipvsflow.forward.checksum cimport (
    rd16, wr16, csum_replace, csum_replace16, csum_sum, csum_finish, pseudo_sum,
)
from ipvsflow.forward.common cimport (
    frame_t, NO_OFF, C_CSUM_SKIPPED, C_ICMP_NAT,
)
from ipvsflow.forward.crc32c cimport sctp_cksum


cdef inline int addr_off(uint8_t af, bint src) noexcept nogil:
    if af == 4:
        return 12 if src else 16
    return 8 if src else 24


cdef inline bint whole_packet(const frame_t *fr) noexcept nogil:
    """The capture holds the complete IP packet and it is not a fragment."""
    return fr.avail >= fr.iplen and not (fr.frag & FRAG_IS)


cdef inline void set_addr(uint8_t *ip, uint8_t af, bint src, const uint8_t *addr16,
                          uint8_t *old) noexcept nogil:
    """Write the address (keeping the old one in old) and fix the IPv4 header checksum."""
    cdef int off = addr_off(af, src)
    cdef int alen = 4 if af == 4 else 16
    cdef const uint8_t *na = addr16 + (12 if af == 4 else 0)
    memcpy(old, ip + off, alen)
    memcpy(ip + off, na, alen)
    if af == 4:
        wr16(ip + 10, csum_replace(rd16(ip + 10), old, na, 4))


cdef void nat_rewrite_any(frame_t *fr, bint snat, const uint8_t *addr16, uint16_t port,
                          uint64_t *cnt) noexcept nogil:
    cdef uint8_t *ip = fr.f + fr.l3
    cdef uint8_t *l4
    cdef uint8_t olda[16]
    cdef const uint8_t *na = addr16 + (12 if fr.af == 4 else 0)
    cdef int alen = 4 if fr.af == 4 else 16
    cdef int poff = 0 if snat else 2
    cdef uint16_t oldp, c
    cdef uint32_t l4len, s
    cdef uint32_t v
    # ICMP errors (IPv4 types 3, 4, 11, 12; ICMPv6 1-4) carry the connection's packet inside
    if fr.l4 != NO_OFF and (fr.proto == 1 or fr.proto == 58):
        if (fr.proto == 1 and (fr.f[fr.l4] == 3 or fr.f[fr.l4] == 4 or fr.f[fr.l4] == 11 or fr.f[fr.l4] == 12)) or \
                (fr.proto == 58 and 1 <= fr.f[fr.l4] <= 4):
            nat_icmp(fr, snat, addr16, port, cnt)
            return
    set_addr(ip, fr.af, snat, addr16, olda)
    if fr.l4 == NO_OFF:
        return
    l4 = fr.f + fr.l4
    l4len = <uint32_t> fr.iplen - (fr.l4 - fr.l3)
    if fr.proto == 6:
        oldp = rd16(l4 + poff)
        wr16(l4 + poff, port)
        c = csum_replace(rd16(l4 + 16), olda, na, alen)
        wr16(l4 + 16, csum_replace16(c, oldp, port))
    elif fr.proto == 17:
        oldp = rd16(l4 + poff)
        wr16(l4 + poff, port)
        if rd16(l4 + 6) != 0:
            c = csum_replace(rd16(l4 + 6), olda, na, alen)
            c = csum_replace16(c, oldp, port)
            wr16(l4 + 6, c if c else 0xffff)
        elif whole_packet(fr):
            s = pseudo_sum(fr.af, ip + addr_off(fr.af, True), ip + addr_off(fr.af, False), l4len, 17)
            s = csum_sum(l4, l4len, s)
            c = csum_finish(s)
            wr16(l4 + 6, c if c else 0xffff)
        else:
            cnt[C_CSUM_SKIPPED] += 1      # stays 0: "no checksum" (valid for IPv4)
    elif fr.proto == 132:
        oldp = rd16(l4 + poff)
        if oldp != port:
            wr16(l4 + poff, port)
            if whole_packet(fr) and l4len >= 12:
                v = sctp_cksum(l4, l4len)
                l4[8] = v & 0xff
                l4[9] = (v >> 8) & 0xff
                l4[10] = (v >> 16) & 0xff
                l4[11] = v >> 24
            else:
                cnt[C_CSUM_SKIPPED] += 1
    elif fr.proto == 58 and fr.avail >= fr.l4 - fr.l3 + 4:
        # ICMPv6 (not an error): its checksum covers the pseudo-header
        wr16(l4 + 2, csum_replace(rd16(l4 + 2), olda, na, alen))


cdef inline int inner6_l4(const uint8_t *d, uint32_t pos, uint32_t lim, uint8_t *pnh) noexcept nogil:
    """Walk an embedded IPv6 packet's extension headers from pos (first header after the fixed
    header). Returns the L4 offset, or -1 when it is not reachable (cut short, or a non-first
    fragment)."""
    cdef uint8_t nh = pnh[0]
    cdef uint32_t hl
    while True:
        if nh == 0 or nh == 43 or nh == 60:
            if pos + 8 > lim:
                return -1
            hl = (<uint32_t> d[pos + 1] + 1) << 3
            nh = d[pos]
            pos += hl
        elif nh == 44:
            if pos + 8 > lim:
                return -1
            if rd16(d + pos + 2) & 0xfff8:
                return -1
            nh = d[pos]
            pos += 8
        elif nh == 51:
            if pos + 8 > lim:
                return -1
            hl = (<uint32_t> d[pos + 1] + 2) << 2
            nh = d[pos]
            pos += hl
        else:
            break
    pnh[0] = nh
    return <int> pos


cdef void nat_icmp(frame_t *fr, bint out, const uint8_t *addr16, uint16_t port,
                   uint64_t *cnt) noexcept nogil:
    cdef uint8_t *ip = fr.f + fr.l3
    cdef uint32_t lim = fr.avail                       # bytes readable from ip
    cdef uint32_t icmp = fr.l4 - fr.l3                 # offsets below are from ip
    cdef uint32_t inner = icmp + 8
    cdef uint32_t ports
    cdef int alen = 4 if fr.af == 4 else 16
    cdef const uint8_t *na = addr16 + (12 if fr.af == 4 else 0)
    cdef uint8_t olda[16]
    cdef uint8_t oldi[16]
    cdef uint16_t ck, oldw, oldp
    cdef uint8_t nh
    cdef int pos
    cnt[C_ICMP_NAT] += 1
    if icmp + 4 > lim:
        set_addr(ip, fr.af, out, addr16, olda)
        return
    ck = rd16(ip + icmp + 2)
    set_addr(ip, fr.af, out, addr16, olda)
    if fr.af == 6:
        ck = csum_replace(ck, olda, na, alen)          # pseudo-header
    # inner address: the destination when the error comes from the real server (out), the
    # source when it comes from the client
    if fr.af == 4 and inner + 20 <= lim:
        memcpy(oldi, ip + inner + (16 if out else 12), 4)
        memcpy(ip + inner + (16 if out else 12), na, 4)
        ck = csum_replace(ck, oldi, na, 4)
        oldw = rd16(ip + inner + 10)
        wr16(ip + inner + 10, csum_replace(oldw, oldi, na, 4))
        ck = csum_replace16(ck, oldw, rd16(ip + inner + 10))
        nh = ip[inner + 9]
        ports = inner + ((<uint32_t> ip[inner] & 15) << 2)
        pos = <int> ports if not (rd16(ip + inner + 6) & 0x1fff) else -1
    elif fr.af == 6 and inner + 40 <= lim:
        memcpy(oldi, ip + inner + (24 if out else 8), 16)
        memcpy(ip + inner + (24 if out else 8), na, 16)
        ck = csum_replace(ck, oldi, na, 16)
        nh = ip[inner + 6]
        pos = inner6_l4(ip, inner + 40, lim, &nh)
    else:
        wr16(ip + icmp + 2, ck)
        return
    if pos >= 0 and (nh == 6 or nh == 17 or nh == 132) and <uint32_t> pos + 4 <= lim:
        oldp = rd16(ip + pos + (2 if out else 0))
        wr16(ip + pos + (2 if out else 0), port)
        ck = csum_replace16(ck, oldp, port)
    wr16(ip + icmp + 2, ck)
