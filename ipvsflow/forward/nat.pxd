# NAT (masquerading) rewrite of one packet: the kernel's ip_vs_nat_xmit / handle_response with
# the protocols' dnat/snat handlers (ip_vs_proto_tcp.c, _udp.c, _sctp.c) and ip_vs_nat_icmp.
from libc.stdint cimport uint8_t, uint16_t, uint64_t
from ipvsflow.forward.common cimport frame_t

# Rewrite the destination (snat=0: in direction, to the real server) or the source (snat=1:
# replies, back to VIP:vport) address of fr's IP header to addr16 (IPv4 mapped for af 4) and
# the matching TCP/UDP/SCTP port to port, fixing every checksum. ICMP errors are handed to
# nat_icmp. cnt: the forwarder's counters (C_CSUM_SKIPPED, C_ICMP_NAT).
cdef void nat_rewrite(frame_t *fr, bint snat, const uint8_t *addr16, uint16_t port,
                      uint64_t *cnt) noexcept nogil
# ip_vs_nat_icmp(_v6): an ICMP error about a connection's packet. out=0 (from the client): outer
# destination and inner source become the real server (inner source port = port); out=1 (from
# the real server): outer source and inner destination become the VIP (inner destination port
# = port). The inner L4 checksum is left alone, as the kernel does.
cdef void nat_icmp(frame_t *fr, bint out, const uint8_t *addr16, uint16_t port,
                   uint64_t *cnt) noexcept nogil
