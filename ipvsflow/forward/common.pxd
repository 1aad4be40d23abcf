# Declarations shared by the forwarders (nat.pyx, tun.pyx, xmit.pyx): the frame being built, the
# per-forwarder C state, counters and link-layer helpers. Only types, constants and inline code.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from ipvsflow.forward.checksum cimport wr16, rd16

cdef enum:
    NO_OFF = 0xffff
    LT_ANY = 0xffff             # sink without a link type of its own: frames keep theirs

# Tunnel types (the kernel's IP_VS_CONN_F_TUNNEL_TYPE_*)
cdef enum:
    TUN_IPIP = 0
    TUN_GUE = 1
    TUN_GRE = 2

# Counters, in the order of xmit.COUNTER_NAMES.
cdef enum:
    C_PACKETS = 0           # packets handed to forward()
    C_FORWARDED             # written to the sink
    C_DROPPED               # written nowhere (engine drops + the forwarder's own drops)
    C_PASSED                # handed to the local stack (engine pass, invalid, LOCALNODE)
    C_LOCAL_WRITTEN         # of those, written to the local sink
    # forwarded, by method
    C_NAT_IN
    C_NAT_OUT
    C_DR
    C_TUN
    C_BYPASS
    C_ROUTED                # replies of non-NAT connections, routed unchanged (TTL only)
    # passed, by kind
    C_PASS                  # engine action pass
    C_INVALID               # engine action invalid (unparsable)
    C_LOCALNODE             # connection to a local real server
    # dropped, by reason
    C_ENGINE_DROP           # the engine decided drop
    C_TTL_EXPIRED           # TTL / hop limit would reach 0 (kernel: ICMP time exceeded + drop)
    C_TOO_BIG               # larger than the configured MTU with DF / IPv6 (ICMP frag needed)
    C_NO_NEIGHBOUR          # DR: real server's MAC unknown
    C_NO_TUNNEL_SOURCE      # TUN across address families without a tunnel source address
    C_BAD_DECISION          # forward decision without method / real server / IP header
    C_LINKTYPE              # frame cannot be written in the sink's link type
    # notes (the packet is still written)
    C_CSUM_SKIPPED          # checksum not computable (truncated capture or IP fragment)
    C_L2_UNRESOLVED         # next hop MAC unknown: the frame's MACs were kept
    C_DR_NO_L2              # DR into a link type without a destination MAC
    C_COPIED                # frames copied into the output buffer (read-only input or growth)
    C_IN_PLACE              # frames rewritten in place
    C_ICMP_NAT              # ICMP errors NATed (inner header rewritten too)
    C_LOCAL_UNWRITABLE      # passed, but not representable in the local sink's link type
    C_POST_NAT              # NAT replies already showing VIP:vport (captured in front of the
                            # director): written as captured
    C_COUNT

# Per-real-server data the forwarders need (indexed by the engine's dest id).
ctypedef struct dest_ent:
    uint8_t addr[16]        # IPv4 mapped
    uint8_t af              # 0: unknown id
    uint8_t tun_type        # TUN_*
    uint8_t tun_csum        # GUE/GRE: send a checksum (--tun-csum / --tun-remcsum)
    uint8_t _pad
    uint16_t tun_port       # GUE destination port

# A frame under construction. Offsets are from f.
ctypedef struct frame_t:
    uint8_t *f
    uint32_t len            # captured bytes of the output frame
    uint32_t l3             # offset of the IP header the IPVS rewrite applies to (inner for TUN)
    uint32_t l4             # offset of its L4 header, NO_OFF when none
    uint32_t avail          # captured bytes from l3 to the end of the frame
    uint16_t iplen          # that IP packet's length per its header
    uint8_t af
    uint8_t proto
    uint8_t frag            # FRAG_* bits of the packet


# ---- link layer -----------------------------------------------------------------------------

cdef inline int l2_hdr_len(uint16_t lt) noexcept nogil:
    """Length of the link-layer header the forwarder writes for link type lt; -1: unsupported."""
    if lt == 1:
        return 14
    if lt == 101 or lt == 228 or lt == 229 or lt == 12 or lt == 14:
        return 0
    if lt == 113:
        return 16
    if lt == 276:
        return 20
    if lt == 0 or lt == 108:
        return 4
    return -1


cdef inline bint lt_carries(uint16_t lt, uint8_t af) noexcept nogil:
    """Link type lt can carry an IP packet of family af."""
    if lt == 228:
        return af == 4
    if lt == 229:
        return af == 6
    return l2_hdr_len(lt) >= 0


cdef inline void set_l2_proto(uint8_t *f, uint16_t lt, uint32_t l2len, uint8_t af) noexcept nogil:
    """Write the network-protocol field of an existing link-layer header for family af."""
    cdef uint16_t et = 0x0800 if af == 4 else 0x86dd
    cdef uint32_t v = 2 if af == 4 else 24      # BSD AF_INET / AF_INET6 (NetBSD/OpenBSD value)
    if lt == 1:
        if l2len >= 14:
            wr16(f + l2len - 2, et)             # after any VLAN tags
    elif lt == 113:
        wr16(f + 14, et)
    elif lt == 276:
        wr16(f, et)
    elif lt == 0:
        # the writer's host order: keep the order the header already uses (big if the high
        # half is set), little otherwise
        if f[0] == 0 and f[1] == 0 and (f[2] or f[3]):
            f[0] = 0; f[1] = 0; f[2] = 0; f[3] = <uint8_t> v
        else:
            f[0] = <uint8_t> v; f[1] = 0; f[2] = 0; f[3] = 0
    elif lt == 108:
        f[0] = 0; f[1] = 0; f[2] = 0; f[3] = <uint8_t> v


cdef inline void build_l2(uint8_t *f, uint16_t lt, uint8_t af, const uint8_t *dst_mac,
                          const uint8_t *src_mac) noexcept nogil:
    """Write a fresh link-layer header of type lt (length l2_hdr_len(lt)) for a packet the
    director sends. dst_mac/src_mac may be NULL (written as zeros)."""
    cdef uint16_t et = 0x0800 if af == 4 else 0x86dd
    if lt == 1:
        if dst_mac != NULL:
            memcpy(f, dst_mac, 6)
        else:
            memset(f, 0, 6)
        if src_mac != NULL:
            memcpy(f + 6, src_mac, 6)
        else:
            memset(f + 6, 0, 6)
        wr16(f + 12, et)
    elif lt == 113:
        wr16(f, 4)                  # PACKET_OUTGOING
        wr16(f + 2, 1)              # ARPHRD_ETHER
        wr16(f + 4, 6)
        memset(f + 6, 0, 8)
        if src_mac != NULL:
            memcpy(f + 6, src_mac, 6)
        wr16(f + 14, et)
    elif lt == 276:
        wr16(f, et)
        memset(f + 2, 0, 6)         # reserved, interface index
        wr16(f + 8, 1)              # ARPHRD_ETHER
        f[10] = 4                   # PACKET_OUTGOING
        f[11] = 6
        memset(f + 12, 0, 8)
        if src_mac != NULL:
            memcpy(f + 12, src_mac, 6)
    elif lt == 0:
        f[0] = 2 if af == 4 else 24
        f[1] = 0; f[2] = 0; f[3] = 0
    elif lt == 108:
        f[0] = 0; f[1] = 0; f[2] = 0
        f[3] = 2 if af == 4 else 24


cdef inline void sll_outgoing(uint8_t *f, uint16_t lt, const uint8_t *src_mac) noexcept nogil:
    """Mark a Linux cooked header as a packet the director sends, with its MAC if known."""
    if lt == 113:
        wr16(f, 4)                  # PACKET_OUTGOING
        if src_mac != NULL and rd16(f + 4) == 6:
            memcpy(f + 6, src_mac, 6)
    elif lt == 276:
        f[10] = 4
        if src_mac != NULL and f[11] == 6:
            memcpy(f + 12, src_mac, 6)


cdef inline const uint8_t *l2_src_mac(const uint8_t *d, uint32_t caplen, uint16_t lt) noexcept nogil:
    """The frame's source MAC, or NULL when its link type carries none."""
    if lt == 1 and caplen >= 14:
        return d + 6
    if lt == 113 and caplen >= 16 and rd16(d + 4) == 6:
        return d + 6
    if lt == 276 and caplen >= 20 and d[11] == 6:
        return d + 12
    return NULL
