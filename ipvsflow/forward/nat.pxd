# NAT (masquerading) rewrite of one packet: the kernel's ip_vs_nat_xmit / handle_response with
# the protocols' dnat/snat handlers (ip_vs_proto_tcp.c, _udp.c, _sctp.c) and ip_vs_nat_icmp.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from ipvsflow.forward.checksum cimport (
    rd16, wr16, csum_replace, csum_replace16, csum_fold48, ld16, ld32, st16, net16,
)
from ipvsflow.forward.common cimport frame_t, NO_OFF

# Rewrite the destination (snat=0: in direction, to the real server) or the source (snat=1:
# replies, back to VIP:vport) address of fr's IP header to addr16 (IPv4 mapped for af 4) and
# the matching TCP/UDP/SCTP port to port, fixing every checksum. ICMP errors are handed to
# nat_icmp. cnt: the forwarder's counters (C_CSUM_SKIPPED, C_ICMP_NAT).
cdef void nat_rewrite_any(frame_t *fr, bint snat, const uint8_t *addr16, uint16_t port,
                          uint64_t *cnt) noexcept nogil


cdef inline uint64_t nat_addr_delta(const uint8_t *old, const uint8_t *new, int n) noexcept nogil:
    """The change of an n-byte address (4 or 16) for an incremental checksum update (RFC 1624
    eqn. 3, ~m + m'), unfolded: native 32-bit words, one load each (a one's complement sum of
    byte-swapped words is the byte-swapped sum, RFC 1071 2(B); a 32-bit word adds its two
    16-bit halves, 2^16 = 1 mod 0xffff)."""
    cdef uint64_t d = 0
    cdef int k
    for k in range(0, n, 4):
        d += <uint32_t> ~ld32(old + k) + <uint64_t> ld32(new + k)
    return d


cdef inline void nat_l4_update(uint8_t *l4, int ck, int poff, uint16_t port,
                               uint64_t delta) noexcept nogil:
    """TCP/UDP (with a checksum at l4 + ck): the port at l4 + poff becomes ``port`` and the
    checksum follows it and the address change ``delta`` (nat_addr_delta), in one fold. The
    sums are never zero (the new address is not), so this is the step-by-step result."""
    cdef uint16_t np = net16(port)
    cdef uint32_t c = ~csum_fold48(<uint64_t> (0xffff - ld16(l4 + ck)) +
                                   (0xffff - ld16(l4 + poff)) + np + delta) & 0xffff
    if c == 0 and ck == 6:
        c = 0xffff                  # UDP: a computed 0 is sent as 0xffff (RFC 768)
    st16(l4 + ck, <uint16_t> c)
    st16(l4 + poff, np)


cdef inline void nat_rewrite(frame_t *fr, bint snat, const uint8_t *addr16, uint16_t port,
                             uint64_t *cnt) noexcept nogil:
    """nat_rewrite_any, with the common case inline in the forwarder: TCP, and UDP with a
    checksum, where only incremental updates of fixed-size fields are needed. Everything else
    (ICMP, SCTP, UDP without checksum, no L4 header) goes to nat_rewrite_any. Gives the bytes
    nat_rewrite_any gives."""
    cdef uint8_t *ip
    cdef uint8_t *l4
    cdef uint64_t delta
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
        delta = nat_addr_delta(ip + aoff, addr16 + 12, 4)
        st16(ip + 10, <uint16_t> ~csum_fold48(<uint64_t> (0xffff - ld16(ip + 10)) + delta))
        memcpy(ip + aoff, addr16 + 12, 4)
    else:
        aoff = 8 if snat else 24
        delta = nat_addr_delta(ip + aoff, addr16, 16)
        memcpy(ip + aoff, addr16, 16)
    nat_l4_update(l4, ck, poff, port, delta)

# ip_vs_nat_icmp(_v6): an ICMP error about a connection's packet. out=0 (from the client): outer
# destination and inner source become the real server (inner source port = port); out=1 (from
# the real server): outer source and inner destination become the VIP (inner destination port
# = port). The inner L4 checksum is left alone, as the kernel does.
cdef void nat_icmp(frame_t *fr, bint out, const uint8_t *addr16, uint16_t port,
                   uint64_t *cnt) noexcept nogil
