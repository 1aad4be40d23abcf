# IP tunnelling (the kernel's ip_vs_tunnel_xmit / ip_vs_tunnel_xmit_v6): IPIP, GUE and GRE
# encapsulation of the connection's packet, outer header built as the kernel builds it.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from ipvsflow.forward.common cimport frame_t, dest_ent

# Bytes the encapsulation puts in front of the inner IP header for this real server.
cdef uint32_t tun_encap_len(const dest_ent *de) noexcept nogil
# Write the outer headers at o (tun_encap_len(de) bytes, right before the inner IP header of
# fr, whose TTL was already decremented). src16/dst16: outer addresses (IPv4 mapped when the
# real server is IPv4). ip_id: outer IPv4 identification when DF is clear.
cdef void tun_encap(uint8_t *o, const frame_t *fr, const dest_ent *de, const uint8_t *src16,
                    bint pmtu_disc, uint16_t ip_id, uint64_t *cnt) noexcept nogil
