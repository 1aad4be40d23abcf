"""IP tunnelling: outer headers as ip_vs_tunnel_xmit(_v6) builds them (see tun.pxd).

Outer IPv4: TOS = the inner DSCP with ECN encapsulated (INET_ECN_encapsulate: CE becomes
ECT(0)), DF copied from an IPv4 inner header when pmtu_disc is on (0 for an IPv6 inner packet),
identification 0 when DF is set (ip_select_ident without a socket) and a running counter
otherwise, TTL = the inner TTL after the director's decrement, protocol IPIP (4) or IPv6 (41).
Outer IPv6: traffic class as above, flow label 0, hop limit = inner TTL / hop limit, next header
4 or 41. GUE adds a UDP header (source port from a flow hash in 32768..60999 as
udp_flow_src_port, destination --tun-port, checksum 0 unless --tun-csum) and a 4-byte GUE
header (version 0, no options, proto = 4/41); GRE adds a 4-byte header (protocol 0x0800/0x86dd)
or 8 bytes with the checksum bit.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from ipvsflow.forward.checksum cimport rd16, wr16, csum_sum, csum_finish, pseudo_sum
from ipvsflow.forward.common cimport (
    frame_t, dest_ent, NO_OFF, TUN_IPIP, TUN_GUE, TUN_GRE, C_CSUM_SKIPPED,
)
from ipvsflow.forward.crc32c cimport crc32c_update

cdef enum:
    PORT_MIN = 32768        # net.ipv4.ip_local_port_range defaults
    PORT_MAX = 60999


cdef uint32_t tun_encap_len(const dest_ent *de) noexcept nogil:
    cdef uint32_t n = 20 if de.af == 4 else 40
    if de.tun_type == TUN_GUE:
        n += 8 + 4
    elif de.tun_type == TUN_GRE:
        n += 8 if de.tun_csum else 4
    return n


cdef inline uint8_t ecn_encapsulate(uint8_t tos) noexcept nogil:
    # INET_ECN_encapsulate(outer = inner dsfield, inner)
    cdef uint8_t outer = tos & 0xfc
    if (tos & 3) == 3:
        return outer | 2
    return outer | (tos & 3)


cdef inline uint16_t flow_port(const frame_t *fr) noexcept nogil:
    """udp_flow_src_port: a per-flow hash (CRC-32C of the inner addresses, protocol and ports)
    scaled into the local port range."""
    cdef const uint8_t *ip = fr.f + fr.l3
    cdef uint32_t h = 0xffffffff
    cdef uint64_t x
    if fr.af == 4:
        h = crc32c_update(h, ip + 12, 8)
    else:
        h = crc32c_update(h, ip + 8, 32)
    h = crc32c_update(h, &fr.proto, 1)
    if fr.l4 != NO_OFF and (fr.proto == 6 or fr.proto == 17 or fr.proto == 132) and \
            fr.avail >= fr.l4 - fr.l3 + 4:
        h = crc32c_update(h, fr.f + fr.l4, 4)
    h = ~h
    h ^= h << 16
    x = (<uint64_t> h * (PORT_MAX - PORT_MIN)) >> 32
    return <uint16_t> (x + PORT_MIN)


cdef void tun_encap(uint8_t *o, const frame_t *fr, const dest_ent *de, const uint8_t *src16,
                    bint pmtu_disc, uint16_t ip_id, uint64_t *cnt) noexcept nogil:
    cdef const uint8_t *inner = fr.f + fr.l3
    cdef uint8_t tos, ttl, nextp
    cdef uint16_t df = 0
    cdef uint32_t hl = 20 if de.af == 4 else 40
    cdef uint32_t total = tun_encap_len(de) + fr.iplen
    cdef uint8_t *t = o + hl                   # tunnel header (GUE's UDP, GRE)
    cdef uint32_t s
    cdef uint16_t c
    cdef bint whole = fr.avail >= fr.iplen
    if fr.af == 4:
        tos = inner[1]
        ttl = inner[8]
        if pmtu_disc:
            df = rd16(inner + 6) & 0x4000
        nextp = 4
    else:
        tos = ((inner[0] & 0x0f) << 4) | (inner[1] >> 4)
        ttl = inner[7]
        nextp = 41
    tos = ecn_encapsulate(tos)
    if de.tun_type == TUN_GUE:
        wr16(t, flow_port(fr))
        wr16(t + 2, de.tun_port)
        wr16(t + 4, <uint16_t> (total - hl))
        wr16(t + 6, 0)
        t[8] = 0                                # C=0, version 0, hlen 0
        t[9] = nextp
        t[10] = 0
        t[11] = 0
        nextp = 17
    elif de.tun_type == TUN_GRE:
        wr16(t, 0x8000 if de.tun_csum else 0)
        wr16(t + 2, 0x0800 if nextp == 4 else 0x86dd)
        if de.tun_csum:
            wr16(t + 4, 0)
            wr16(t + 6, 0)
            if whole:
                s = csum_sum(t, 8, 0)
                s = csum_sum(inner, fr.iplen, s)
                wr16(t + 4, csum_finish(s))
            else:
                cnt[C_CSUM_SKIPPED] += 1
        nextp = 47
    if de.af == 4:
        o[0] = 0x45
        o[1] = tos
        wr16(o + 2, <uint16_t> total)
        wr16(o + 4, 0 if df else ip_id)
        wr16(o + 6, df)
        o[8] = ttl
        o[9] = nextp
        wr16(o + 10, 0)
        memcpy(o + 12, src16 + 12, 4)
        memcpy(o + 16, de.addr + 12, 4)
        wr16(o + 10, csum_finish(csum_sum(o, 20, 0)))
    else:
        o[0] = 0x60 | (tos >> 4)
        o[1] = (tos & 0x0f) << 4
        o[2] = 0
        o[3] = 0
        wr16(o + 4, <uint16_t> (total - 40))
        o[6] = nextp
        o[7] = ttl
        memcpy(o + 8, src16, 16)
        memcpy(o + 24, de.addr, 16)
    if de.tun_type == TUN_GUE and de.tun_csum:
        if whole:
            s = pseudo_sum(de.af, o + (12 if de.af == 4 else 8), o + (16 if de.af == 4 else 24),
                           total - hl, 17)
            s = csum_sum(t, 12, s)
            s = csum_sum(inner, fr.iplen, s)
            c = csum_finish(s)
            wr16(t + 6, c if c else 0xffff)
        else:
            cnt[C_CSUM_SKIPPED] += 1
