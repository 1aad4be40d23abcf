# NAT (masquerading) rewrite of one packet: the kernel's ip_vs_nat_xmit / handle_response with
# the protocols' dnat/snat handlers (ip_vs_proto_tcp.c, _udp.c, _sctp.c) and ip_vs_nat_icmp.
from libc.stdint cimport uint8_t, uint16_t, uint64_t
from libc.string cimport memcpy
from ipvsflow.forward.checksum cimport rd16, wr16, csum_replace, csum_replace16
from ipvsflow.forward.common cimport frame_t, NO_OFF

# Rewrite the destination (snat=0: in direction, to the real server) or the source (snat=1:
# replies, back to VIP:vport) address of fr's IP header to addr16 (IPv4 mapped for af 4) and
# the matching TCP/UDP/SCTP port to port, fixing every checksum. ICMP errors are handed to
# nat_icmp. cnt: the forwarder's counters (C_CSUM_SKIPPED, C_ICMP_NAT).
cdef void nat_rewrite_any(frame_t *fr, bint snat, const uint8_t *addr16, uint16_t port,
                          uint64_t *cnt) noexcept nogil


cdef inline void nat_rewrite(frame_t *fr, bint snat, const uint8_t *addr16, uint16_t port,
                             uint64_t *cnt) noexcept nogil:
    """nat_rewrite_any, with the common case inline in the forwarder: TCP, and UDP with a
    checksum, where only incremental updates of fixed-size fields are needed (constant sizes
    per address family, so the copies and RFC 1624 sums compile to a few instructions).
    Everything else (ICMP, SCTP, UDP without checksum, no L4 header) goes to nat_rewrite_any.
    The arithmetic is step for step that of nat_rewrite_any, so the bytes are the same."""
    cdef uint8_t *ip
    cdef uint8_t *l4
    cdef uint8_t olda[16]
    cdef uint16_t oldp, c
    cdef int ck, poff, aoff
    if fr.l4 == NO_OFF or (fr.proto != 6 and fr.proto != 17):
        nat_rewrite_any(fr, snat, addr16, port, cnt)
        return
    l4 = fr.f + fr.l4
    ck = 16 if fr.proto == 6 else 6
    if fr.proto == 17 and rd16(l4 + 6) == 0:
        nat_rewrite_any(fr, snat, addr16, port, cnt)
        return
    ip = fr.f + fr.l3
    poff = 0 if snat else 2
    if fr.af == 4:
        aoff = 12 if snat else 16
        memcpy(olda, ip + aoff, 4)
        memcpy(ip + aoff, addr16 + 12, 4)
        wr16(ip + 10, csum_replace(rd16(ip + 10), olda, addr16 + 12, 4))
        oldp = rd16(l4 + poff)
        wr16(l4 + poff, port)
        c = csum_replace(rd16(l4 + ck), olda, addr16 + 12, 4)
    else:
        aoff = 8 if snat else 24
        memcpy(olda, ip + aoff, 16)
        memcpy(ip + aoff, addr16, 16)
        oldp = rd16(l4 + poff)
        wr16(l4 + poff, port)
        c = csum_replace(rd16(l4 + ck), olda, addr16, 16)
    c = csum_replace16(c, oldp, port)
    if c == 0 and ck == 6:
        c = 0xffff                  # UDP: a computed 0 is sent as 0xffff (RFC 768)
    wr16(l4 + ck, c)

# ip_vs_nat_icmp(_v6): an ICMP error about a connection's packet. out=0 (from the client): outer
# destination and inner source become the real server (inner source port = port); out=1 (from
# the real server): outer source and inner destination become the VIP (inner destination port
# = port). The inner L4 checksum is left alone, as the kernel does.
cdef void nat_icmp(frame_t *fr, bint out, const uint8_t *addr16, uint16_t port,
                   uint64_t *cnt) noexcept nogil
