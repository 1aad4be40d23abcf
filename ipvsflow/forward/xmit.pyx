"""Forwarder: applies the engine's decisions to the packets of a burst (the kernel's
ip_vs_xmit.c transmitters plus handle_response), writing the rewritten frames to a sink.

Per packet, by decision (action, direction, connection's forwarding method):

=========================  ===================================================================
drop                        written nowhere (counted ``engine_drop``)
pass, invalid               handed to the local stack: the ``local_sink`` if given, unchanged
in + LOCALNODE              same (the real server is the director itself)
in + MASQ                   NAT: destination -> real server address, port -> decision.dport
out + MASQ                  NAT reply: source -> decision.vaddr:vport
in + DROUTE                 DR: destination MAC -> the real server's, source MAC -> director's
in + TUNNEL                 TUN: IPIP / GUE / GRE encapsulation towards the real server
in + BYPASS                 routed to the packet's own destination
out + non-MASQ              routed unchanged (a DR/TUN reply passing a director on its path)
=========================  ===================================================================

Every forwarded packet has its TTL / hop limit decremented first, as the kernel does on each of
these paths (``decrement_ttl`` in ``__ip_vs_get_out_rt`` for the transmitters, ``ip_forward``
for replies); a packet whose TTL is 1 or less is dropped (``ttl_expired``; the kernel also sends
ICMP time exceeded, which is not built here). For tunnels the inner header is decremented and
its new TTL copied to the outer header.

Link layer: frames are written in the sink's link type (converted when it differs). On Ethernet
output the destination MAC becomes the next hop's (the real server for NAT/DR/TUN, the
packet's destination otherwise) when the neighbour table knows it, and the source MAC the
director's (``director_mac``, by default the frame's original destination MAC, i.e. the
director's interface). DR without a known MAC is dropped (``no_neighbour``); the other methods
keep the frame's MACs (``l2_unresolved``). Neighbours come from the ``neighbours`` mapping and,
unless ``learn_neighbours=False``, from the capture: the source MAC of every IP packet (and ARP
sender) for its source address, as an ARP/ND cache would learn it.

NAT replies that already carry VIP:vport as their source were captured after the director's
SNAT (a capture in front of the director, DESIGN.md "Capture point"): they are the director's
output already and are written as captured (``post_nat``).

Frames are rewritten in place when the batch's memory is writable (its ``owner`` exposes a
writable buffer) and the frame keeps its size and link type; otherwise (read-only mapped files,
encapsulation, link-type conversion) they are copied into a buffer owned by the forwarder. The
batch's descriptors are not re-parsed.
"""
import ipaddress

import numpy as np

from cpython.buffer cimport (
    PyObject_GetBuffer, PyBuffer_Release, PyObject_CheckBuffer, PyBUF_SIMPLE, PyBUF_WRITABLE,
)
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.pycapsule cimport PyCapsule_New
from libc.string cimport memcmp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memcpy, memset

from ipvsflow.io.batch cimport (
    PacketBatch, pkt_desc, OK, FRAGMENT, NOT_IP, UNKNOWN_LINKTYPE, TRUNC_L2, TRUNC_L3,
    BAD_IP_VERSION,
)
from ipvsflow.io.writer cimport PcapWriter, frame_rec
from ipvsflow.engine.defs cimport (
    decision_t, ACT_NEW, ACT_HIT, ACT_RESCHED, ACT_DROP, ACT_PASS, ACT_INVALID, DIR_IN, DIR_OUT,
)
from ipvsflow.engine.conntab cimport CF_MASQ, CF_LOCALNODE, CF_TUNNEL, CF_DROUTE, CF_BYPASS
from ipvsflow.forward.checksum cimport (
    rd16, wr16, csum_replace16, csum_fold48, ld16, st16, net16, TTL_ONE, IPVSFLOW_HOST_BE,
)
from ipvsflow.forward.common cimport (
    NO_OFF, LT_ANY, TUN_IPIP, TUN_GUE, TUN_GRE, dest_ent, frame_t,
    l2_hdr_len, lt_carries, set_l2_proto, build_l2, l2_src_mac, sll_outgoing,
    C_PACKETS, C_FORWARDED, C_DROPPED, C_PASSED, C_LOCAL_WRITTEN, C_NAT_IN, C_NAT_OUT, C_DR,
    C_TUN, C_BYPASS, C_ROUTED, C_PASS, C_INVALID, C_LOCALNODE, C_ENGINE_DROP, C_TTL_EXPIRED,
    C_TOO_BIG, C_NO_NEIGHBOUR, C_NO_TUNNEL_SOURCE, C_BAD_DECISION, C_LINKTYPE, C_CSUM_SKIPPED,
    C_L2_UNRESOLVED, C_DR_NO_L2, C_COPIED, C_IN_PLACE, C_ICMP_NAT, C_LOCAL_UNWRITABLE, C_POST_NAT, C_COUNT,
)
from ipvsflow.forward.neigh cimport (
    neigh_table, neigh_ent, neigh_new, neigh_free, neigh_set, neigh_get, NEIGH_LEARNED,
    NEIGH_STATIC, NEIGH_EMPTY,
)
from ipvsflow.forward.nat cimport nat_rewrite, nat_addr_delta, nat_l4_update
from ipvsflow.forward.tun cimport tun_encap_len, tun_encap
from ipvsflow.forward.sinks cimport NullSink
from ipvsflow.forward.sinks import check_linktype

#: Counter names, in the order of the C counters (common.pxd C_*).
COUNTER_NAMES = (
    "packets", "forwarded", "dropped", "passed", "local_written",
    "nat_in", "nat_out", "dr", "tun", "bypass", "routed",
    "pass", "invalid", "localnode",
    "engine_drop", "ttl_expired", "too_big", "no_neighbour", "no_tunnel_source",
    "bad_decision", "linktype",
    "csum_skipped", "l2_unresolved", "dr_no_l2", "copied", "in_place", "icmp_nat",
    "local_unwritable", "post_nat",
)
#: What each counter means (for reports).
COUNTER_HELP = {
    "packets": "packets given to forward()",
    "forwarded": "written to the sink",
    "dropped": "written nowhere (see drop_reasons)",
    "passed": "kept by the director: engine pass, invalid, LOCALNODE connections",
    "local_written": "passed packets written to the local sink",
    "nat_in": "NAT, client to real server (destination rewritten)",
    "nat_out": "NAT, real server to client (source rewritten to VIP:vport)",
    "dr": "direct routing (MAC rewritten)",
    "tun": "tunnelled (IPIP / GUE / GRE)",
    "bypass": "cache bypass, routed to the packet's own destination",
    "routed": "replies of DR/TUN connections routed unchanged",
    "pass": "engine action pass",
    "invalid": "engine action invalid (unparsable)",
    "localnode": "connections to a real server on the director itself",
    "engine_drop": "the engine dropped it",
    "ttl_expired": "TTL / hop limit would reach 0 (the kernel sends ICMP time exceeded)",
    "too_big": "larger than the MTU with DF set, or IPv6 (ICMP fragmentation needed)",
    "no_neighbour": "DR: the real server's MAC is unknown",
    "no_tunnel_source": "tunnel across address families without a tunnel_source",
    "bad_decision": "forward decision without method, real server or parsed IP header",
    "linktype": "cannot be written in the sink's link type",
    "csum_skipped": "checksum not computable (truncated capture or fragment); left as is",
    "l2_unresolved": "next hop MAC unknown: the frame's MACs were kept",
    "dr_no_l2": "DR written in a link type without destination MAC",
    "copied": "frames copied to the output buffer",
    "in_place": "frames rewritten in place",
    "icmp_nat": "ICMP errors NATed with their embedded header",
    "local_unwritable": "passed packets the local sink's link type cannot carry",
    "post_nat": "NAT replies already showing VIP:vport (captured after the director), kept",
}
METHOD_COUNTERS = ("nat_in", "nat_out", "dr", "tun", "bypass", "routed")
DROP_COUNTERS = ("engine_drop", "ttl_expired", "too_big", "no_neighbour", "no_tunnel_source",
                 "bad_decision", "linktype")
TUNNEL_TYPES = {"ipip": TUN_IPIP, "gue": TUN_GUE, "gre": TUN_GRE}

cdef enum:
    M_NAT_IN = 1
    M_NAT_OUT
    M_DR
    M_TUN
    M_BYPASS
    M_ROUTED

cdef enum:
    OUT_NONE = 0
    OUT_FWD = 1
    OUT_LOCAL = 2
    # nothing done yet, the burst loop steps out for (then redoes the packet):
    OUT_ROOM = 3                # a bigger copy buffer
    OUT_REFRESH = 4             # refresh_dests (a real-server id not seen yet)

cdef enum:
    # per-packet output buffer reserve beyond the captured bytes: a new link-layer header
    # (20, SLL2) and the largest encapsulation (IPv6 + UDP + GUE = 52)
    FRAME_SLACK = 128
    ARENA_MIN = 1 << 16
    # copy buffers outgrown during a burst: kept until the next burst (a sink may hold
    # pointers to its frames until it is flushed); doubling from ARENA_MIN, 48 is beyond 2^64
    MAX_RETIRED = 48

ctypedef frame_rec out_rec

ctypedef struct fwd_state:
    dest_ent *dests
    uint32_t n_dests
    neigh_table *neigh
    uint8_t dmac[6]
    uint8_t have_dmac
    uint8_t learn
    uint8_t have_last           # learning: the last pair stored, to skip repeats cheaply
    uint8_t last_mac[6]
    uint8_t last_addr[16]
    uint8_t src4[16]
    uint8_t src6[16]
    uint8_t have_src4
    uint8_t have_src6
    uint8_t pmtu_disc
    uint16_t ip_id
    uint32_t mtu                # 0: no MTU check
    uint64_t cnt[C_COUNT]
    # per forward() call
    uint8_t *arena
    size_t arena_cap
    size_t arena_pos
    uint8_t *retired[MAX_RETIRED]
    uint32_t n_retired
    uint8_t may_refresh         # this burst may still ask for refresh_dests
    out_rec *outs
    uint32_t outs_cap
    const uint8_t *wbase        # writable range of the batch's memory (NULL: none)
    size_t wlen
    uint16_t out_lt             # sink's link type, LT_ANY: the frame's own
    uint16_t local_lt
    uint8_t have_local
    # last neighbour lookup (the next hop repeats across a burst): valid until the table
    # changes (neigh_set may move the slots), so every neigh_set here clears nc_valid
    uint8_t nc_valid
    uint8_t fast_nat            # this burst may take _fast_nat_run (writable memory, Ethernet out)
    uint8_t nc_addr[16]
    const uint8_t *nc_mac

# numpy view of the full decision record (the engine's public dtype may omit the forwarding
# fields); built from the C struct so offsets always agree.
cdef decision_t _dproto
cdef char *_dbase = <char *> &_dproto

DECISION_DTYPE = np.dtype({
    "names": ["pkt", "ts_ns", "conn", "reuse_of", "rs", "svc", "action", "reason", "dir",
              "proto", "state", "old_state", "flags", "dport", "vport", "fwd", "vaddr"],
    "formats": ["<u8", "<i8", "<u8", "<u8", "<i4", "<i4", "u1", "u1", "u1", "u1", "u1", "u1",
                "u1", "<u2", "<u2", "u1", ("u1", (16,))],
    "offsets": [<char *> &_dproto.pkt - _dbase, <char *> &_dproto.ts_ns - _dbase,
                <char *> &_dproto.conn - _dbase, <char *> &_dproto.reuse_of - _dbase,
                <char *> &_dproto.rs - _dbase, <char *> &_dproto.svc - _dbase,
                <char *> &_dproto.action - _dbase, <char *> &_dproto.reason - _dbase,
                <char *> &_dproto.dir - _dbase, <char *> &_dproto.proto - _dbase,
                <char *> &_dproto.state - _dbase, <char *> &_dproto.old_state - _dbase,
                <char *> &_dproto.flags - _dbase, <char *> &_dproto.dport - _dbase,
                <char *> &_dproto.vport - _dbase, <char *> &_dproto.fwd - _dbase,
                <char *> &_dproto.vaddr - _dbase],
    "itemsize": sizeof(decision_t),
})

_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"


# ---- per packet ---------------------------------------------------------------------------

cdef inline bint _unicast_mac(const uint8_t *m) noexcept nogil:
    return not (m[0] & 1) and (m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) != 0


cdef inline bint _specified(const uint8_t *a) noexcept nogil:
    cdef int i
    cdef int start = 12 if (a[10] == 0xff and a[11] == 0xff) else 0
    for i in range(start, 16):
        if a[i]:
            return True
    return False


cdef bint _learn(fwd_state *s, const pkt_desc *p) noexcept nogil:
    """ARP/ND-cache learning: the frame's source MAC for the packet's source address, or an
    ARP sender's pair. True: the table was written (its slots may have moved)."""
    cdef const uint8_t *mac
    cdef const uint8_t *d = p.data
    cdef uint32_t o
    cdef uint8_t a[16]
    if p.af != 0 and p.status != TRUNC_L3 and p.status != BAD_IP_VERSION:
        mac = l2_src_mac(d, p.caplen, p.linktype)
        if mac == NULL:
            return False
        if s.have_last and memcmp(s.last_mac, mac, 6) == 0 and memcmp(s.last_addr, p.src, 16) == 0:
            return False
        if _unicast_mac(mac) and _specified(p.src):
            neigh_set(s.neigh, p.src, mac, NEIGH_LEARNED)
            s.nc_valid = 0
            memcpy(s.last_mac, mac, 6)
            memcpy(s.last_addr, p.src, 16)
            s.have_last = 1
            return True
    elif p.status == NOT_IP and p.linktype == 1 and p.l2_len >= 14:
        o = p.l2_len
        # ARP for IPv4 over Ethernet: htype 1, ptype 0x0800, hlen 6, plen 4
        if rd16(d + o - 2) == 0x0806 and p.caplen >= o + 28 and rd16(d + o) == 1 and \
                rd16(d + o + 2) == 0x0800 and d[o + 4] == 6 and d[o + 5] == 4:
            memset(a, 0, 10)
            a[10] = 0xff
            a[11] = 0xff
            memcpy(a + 12, d + o + 14, 4)
            if _unicast_mac(d + o + 8) and _specified(a):
                neigh_set(s.neigh, a, d + o + 8, NEIGH_LEARNED)
                s.nc_valid = 0
                s.have_last = 0
                return True
    return False


cdef inline const uint8_t *_neigh_lookup(fwd_state *s, const uint8_t *a) noexcept nogil:
    """neigh_get, remembering the last answer (NULL included)."""
    if s.nc_valid and memcmp(s.nc_addr, a, 16) == 0:
        return s.nc_mac
    s.nc_mac = neigh_get(s.neigh, a)
    memcpy(s.nc_addr, a, 16)
    s.nc_valid = 1
    return s.nc_mac


cdef inline void _drop(fwd_state *s, int reason) noexcept nogil:
    s.cnt[reason] += 1
    s.cnt[C_DROPPED] += 1


cdef void _to_local(fwd_state *s, const pkt_desc *p, out_rec *o, int kind) noexcept nogil:
    """A packet for the director's own stack: to the local sink, unchanged (converted only when
    the sink's link type differs)."""
    cdef uint16_t lt = s.local_lt
    cdef int l2
    cdef uint8_t *f
    cdef uint32_t body
    if s.have_local and lt != LT_ANY and lt != p.linktype and \
            s.arena_pos + p.caplen + FRAME_SLACK > s.arena_cap:
        o.kind = OUT_ROOM
        return
    s.cnt[kind] += 1
    s.cnt[C_PASSED] += 1
    if not s.have_local:
        return
    o.ts_ns = p.ts_ns
    if lt == LT_ANY or lt == p.linktype:
        o.data = p.data
        o.caplen = p.caplen
        o.wirelen = p.wirelen
        o.kind = OUT_LOCAL
        return
    if p.af == 0 or p.l3_off == NO_OFF or p.l3_off >= p.caplen or not lt_carries(lt, p.af):
        s.cnt[C_LOCAL_UNWRITABLE] += 1
        return
    l2 = l2_hdr_len(lt)
    f = s.arena + s.arena_pos
    build_l2(f, lt, p.af, p.data if p.linktype == 1 else NULL,
             l2_src_mac(p.data, p.caplen, p.linktype))
    if lt == 113:
        wr16(f, 0)                  # PACKET_HOST: received by the director
    elif lt == 276:
        f[10] = 0
    body = p.caplen - p.l3_off
    memcpy(f + l2, p.data + p.l3_off, body)
    s.arena_pos += l2 + body
    o.data = f
    o.caplen = <uint32_t> l2 + body
    o.wirelen = <uint32_t> l2 + (p.wirelen - p.l3_off if p.wirelen > p.l3_off else body)
    o.kind = OUT_LOCAL


cdef inline void _ttl_dec(uint8_t *ip, uint8_t af) noexcept nogil:
    cdef uint16_t old
    if af == 4:
        old = rd16(ip + 8)
        ip[8] -= 1
        wr16(ip + 10, csum_replace16(rd16(ip + 10), old, rd16(ip + 8)))   # ip_decrease_ttl
    else:
        ip[7] -= 1


cdef extern from *:
    """
    static inline uint64_t ipvsflow_ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline void ipvsflow_st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
    static inline void ipvsflow_st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
    """
    uint64_t ld64 "ipvsflow_ld64"(const uint8_t *p) noexcept nogil
    void st64 "ipvsflow_st64"(uint8_t *p, uint64_t v) noexcept nogil
    void st32 "ipvsflow_st32"(uint8_t *p, uint32_t v) noexcept nogil


cdef inline uint64_t _mac48(const uint8_t *m) noexcept nogil:
    """A MAC's 6 bytes as the first 6 bytes of a native word in memory (the other two zero)."""
    cdef uint64_t w = 0
    memcpy(&w, m, 6)
    return w


cdef inline uint32_t _fold2(uint64_t s) noexcept nogil:
    """csum_fold48 for a sum below 2^20: two 16-bit folds reach 0xffff (the second adds at
    most 16 to a value below 16)."""
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return <uint32_t> s


cdef inline uint64_t _swap_addr(uint8_t *at, const uint8_t *addr16, uint8_t af) noexcept nogil:
    """The address at ``at`` becomes addr16 (IPv4 mapped for af 4); returns the change for
    the checksums (nat_addr_delta). af is a constant at each call: the offsets stay constant."""
    cdef uint64_t delta
    if af == 4:
        delta = nat_addr_delta(at, addr16 + 12, 4)
        memcpy(at, addr16 + 12, 4)
    else:
        delta = nat_addr_delta(at, addr16, 16)
        memcpy(at, addr16, 16)
    return delta


cdef uint32_t _fast_nat_run(fwd_state *s, const pkt_desc *pk, const decision_t *dec,
                            out_rec *outs, uint32_t i, uint32_t m, bint learn) noexcept nogil:
    """The live director's common case, packets [i, m) while they are it: a TCP packet, or UDP
    with a checksum, of a NAT connection (either direction), IPv4 or IPv6 without extension
    headers, rewritten in place in an Ethernet frame whose next hop is known. Does what
    _forward_one does with each, to the byte and the counter; returns the first packet it
    leaves to _forward_one (learned from already when ``learn``), m when none.

    Burst constants live in locals (a store into the frame would otherwise reload them from
    the state). One's complement sums commute and are never zero here (the new address is
    not), so the merged updates give the step-by-step bytes: the TTL - 1 and the address
    change share one update of the IPv4 header checksum, and (0xffff - w) + (w - TTL_ONE) is
    the constant 0xffff - TTL_ONE (the TTL is above 1: no borrow); the address change is
    folded once, to 17 bits, for both sums, which then need two folds each."""
    cdef const uint8_t *wlo = s.wbase
    cdef const uint8_t *whi = s.wbase + s.wlen
    cdef const dest_ent *dests = s.dests
    cdef uint32_t n_dests = s.n_dests
    cdef uint32_t mtu = s.mtu if s.mtu else 0xffffffff
    cdef bint have_dmac = s.have_dmac
    cdef uint64_t dmacw = _mac48(s.dmac)
    # the next hop MAC of the last real server (by its entry); replies use _neigh_lookup's
    cdef const dest_ent *c_de = NULL
    cdef uint64_t c_dew = 0
    cdef uint32_t i0 = i
    cdef uint64_t n_out = 0
    cdef const pkt_desc *p
    cdef const decision_t *d
    cdef out_rec *o
    cdef const dest_ent *de
    cdef const uint8_t *addr
    cdef const uint8_t *mac
    cdef uint8_t *f
    cdef uint8_t *ip
    cdef uint8_t *l4
    cdef uint16_t port, np, cw
    cdef uint32_t caplen, ck, c, aoff, poff, snat
    cdef uint64_t delta, macw, a0
    cdef uint8_t af, proto, dr
    while i < m:
        p = &pk[i]
        d = &dec[i]
        if learn and _learn(s, p):
            c_de = NULL                 # the table changed: forget the cached next hop
        f = <uint8_t *> p.data
        caplen = p.caplen
        proto = p.proto
        af = p.af
        dr = d.dir
        if not (d.fwd == CF_MASQ and <uint8_t> (d.action - ACT_NEW) <= ACT_RESCHED - ACT_NEW and
                (<uint32_t> p.linktype | (<uint32_t> p.status << 16)) == (1 | (OK << 16)) and
                p.l3_off == p.l2_len and (proto == 6 or proto == 17) and
                p.l4_off != NO_OFF and p.ttl > 1 and
                f >= wlo and f + caplen <= whi and p.l3_len <= mtu):
            break
        ip = f + p.l3_off
        l4 = f + p.l4_off
        if af != 4 and not (af == 6 and p.l4_off == p.l3_off + 40):
            break
        ck = 16 if proto == 6 else 6
        cw = ld16(l4 + ck)
        if cw == 0 and ck == 6:
            break                       # UDP without checksum
        if dr == DIR_IN:
            if <uint32_t> d.rs >= n_dests:
                break                   # (a negative id too)
            de = &dests[d.rs]
            if de.af != af:
                break
            if de != c_de:
                mac = _neigh_lookup(s, de.addr)
                if mac == NULL:
                    break
                c_de = de
                c_dew = _mac48(mac)
            macw = c_dew
            addr = de.addr
            port = d.dport
            snat = 0
        elif dr == DIR_OUT:
            if memcmp(p.src, d.vaddr, 16) == 0 and p.sport == d.vport:
                break                   # captured after the director's SNAT
            mac = _neigh_lookup(s, p.dst)
            if mac == NULL:
                break
            macw = _mac48(mac)
            addr = d.vaddr
            port = d.vport
            snat = 1
        else:
            break
        # (0xffff - x) + (0xffff - y) + ... as 0x1fffe + ... - x - y: the same value, never
        # negative on the way
        np = net16(port)
        if snat:
            delta = _swap_addr(ip + 12, addr, 4) if af == 4 else _swap_addr(ip + 8, addr, 6)
            poff = 0
            n_out += 1
        else:
            delta = _swap_addr(ip + 16, addr, 4) if af == 4 else _swap_addr(ip + 24, addr, 6)
            poff = 2
        delta = (delta & 0xffff) + (delta >> 16)
        if af == 4:
            ip[8] -= 1
            st16(ip + 10, <uint16_t> ~_fold2(<uint64_t> (0x1fffe - TTL_ONE) + delta - ld16(ip + 10)))
        else:
            ip[7] -= 1                  # hop limit (no header checksum)
        c = ~_fold2(<uint64_t> 0x1fffe + np + delta - cw - ld16(l4 + poff)) & 0xffff
        if c == 0 and ck == 6:
            c = 0xffff                  # UDP: a computed 0 is sent as 0xffff (RFC 768)
        st16(l4 + ck, <uint16_t> c)
        st16(l4 + poff, np)
        # destination MAC: the next hop's; source: the director's (director_mac, else the
        # frame's destination, its interface)
        if IPVSFLOW_HOST_BE:
            if have_dmac:
                st64(f, macw | (dmacw >> 48))
                st32(f + 8, <uint32_t> (dmacw >> 16))
            else:
                a0 = ld64(f)
                st64(f, macw | (a0 >> 48))
                st32(f + 8, <uint32_t> (a0 >> 16))
        else:
            if have_dmac:
                st64(f, macw | (dmacw << 48))
                st32(f + 8, <uint32_t> (dmacw >> 16))
            else:
                a0 = ld64(f)
                st64(f, macw | (a0 << 48))
                st32(f + 8, <uint32_t> (a0 >> 16))
        o = &outs[i]
        o.data = f
        o.caplen = caplen
        o.wirelen = p.wirelen
        o.ts_ns = p.ts_ns
        o.kind = OUT_FWD
        i += 1
    if i != i0:
        s.cnt[C_IN_PLACE] += i - i0
        s.cnt[C_NAT_IN] += i - i0 - n_out
        s.cnt[C_NAT_OUT] += n_out
    return i


cdef void _forward_one(fwd_state *s, const pkt_desc *p, const decision_t *d,
                       out_rec *o) noexcept nogil:
    cdef int method
    cdef uint8_t fwd = d.fwd
    cdef const dest_ent *de = NULL
    cdef const uint8_t *src = NULL
    cdef const uint8_t *nh
    cdef const uint8_t *mac = NULL
    cdef uint8_t olddst[6]
    cdef uint16_t olt, act = d.action
    cdef uint8_t oaf
    cdef uint32_t encap = 0, ol2, body, wbody, newlen
    cdef bint same_lt, inplace
    cdef bint post_nat = False
    cdef uint8_t *f
    cdef frame_t fr
    # (the caller has learned from the packet and tried _fast_nat_run)
    if s.may_refresh and d.rs >= 0 and <uint32_t> d.rs >= s.n_dests:
        o.kind = OUT_REFRESH
        return
    o.kind = OUT_NONE
    if act == ACT_DROP:
        _drop(s, C_ENGINE_DROP)
        return
    if act == ACT_PASS:
        _to_local(s, p, o, C_PASS)
        return
    if act == ACT_INVALID:
        _to_local(s, p, o, C_INVALID)
        return
    if act != ACT_NEW and act != ACT_HIT and act != ACT_RESCHED:
        _drop(s, C_BAD_DECISION)
        return
    if d.dir == DIR_IN:
        if fwd == CF_LOCALNODE:
            _to_local(s, p, o, C_LOCALNODE)
            return
        if fwd == CF_MASQ:
            method = M_NAT_IN
        elif fwd == CF_DROUTE:
            method = M_DR
        elif fwd == CF_TUNNEL:
            method = M_TUN
        elif fwd == CF_BYPASS:
            method = M_BYPASS
        else:
            _drop(s, C_BAD_DECISION)
            return
    elif d.dir == DIR_OUT:
        method = M_NAT_OUT if fwd == CF_MASQ else M_ROUTED
    else:
        _drop(s, C_BAD_DECISION)
        return
    if (p.status != OK and p.status != FRAGMENT) or p.af == 0 or p.l3_off == NO_OFF or \
            <uint32_t> p.l3_off + (20 if p.af == 4 else 40) > p.caplen:
        _drop(s, C_BAD_DECISION)
        return
    if method == M_NAT_IN or method == M_DR or method == M_TUN:
        if d.rs < 0 or <uint32_t> d.rs >= s.n_dests or s.dests[d.rs].af == 0:
            _drop(s, C_BAD_DECISION)
            return
        de = &s.dests[d.rs]
        if method != M_TUN and de.af != p.af:
            _drop(s, C_BAD_DECISION)       # only tunnels cross address families
            return
    if method == M_NAT_OUT and memcmp(p.src, d.vaddr, 16) == 0 and \
            (p.sport == d.vport or not (p.proto == 6 or p.proto == 17 or p.proto == 132)):
        # a reply that already carries VIP:vport was captured after the director's SNAT (a
        # capture in front of the director): it is the director's output as it stands
        post_nat = True
    # decrement_ttl (ip_vs_xmit.c) / ip_forward: a packet that would leave with TTL 0 dies here
    elif p.ttl <= 1:
        _drop(s, C_TTL_EXPIRED)
        return
    oaf = de.af if method == M_TUN else p.af
    if method == M_TUN:
        encap = tun_encap_len(de)
        if oaf == 4:
            src = s.src4 if s.have_src4 else (p.dst if p.af == 4 else NULL)
        else:
            src = s.src6 if s.have_src6 else (p.dst if p.af == 6 else NULL)
        if src == NULL:
            _drop(s, C_NO_TUNNEL_SOURCE)
            return
        if encap + p.l3_len > (0xffff if oaf == 4 else 0xffff + 40):
            _drop(s, C_TOO_BIG)
            return
    # ensure_mtu_is_adequate: IPv4 with DF, and IPv6, do not fit a smaller MTU
    if s.mtu and p.l3_len + encap > s.mtu and \
            (p.af == 6 or (rd16(p.data + p.l3_off + 6) & 0x4000)):
        _drop(s, C_TOO_BIG)
        return
    olt = s.out_lt if s.out_lt != LT_ANY else p.linktype
    same_lt = olt == p.linktype
    if not lt_carries(olt, oaf) or (same_lt and p.l2_len != p.l3_off):
        _drop(s, C_LINKTYPE)
        return
    if method == M_NAT_IN or method == M_DR or method == M_TUN:
        nh = de.addr
    else:
        nh = p.dst
    if olt == 1 and not (post_nat and same_lt):
        mac = _neigh_lookup(s, nh)
        if mac == NULL and method == M_DR:
            _drop(s, C_NO_NEIGHBOUR)
            return

    inplace = (s.wbase != NULL and same_lt and encap == 0 and p.data >= s.wbase and
               p.data + p.caplen <= s.wbase + s.wlen)
    if inplace:
        f = <uint8_t *> p.data
        ol2 = p.l3_off
        newlen = p.caplen
        o.wirelen = p.wirelen
        s.cnt[C_IN_PLACE] += 1
    else:
        if s.arena_pos + p.caplen + FRAME_SLACK > s.arena_cap:
            o.kind = OUT_ROOM
            return
        ol2 = p.l3_off if same_lt else <uint32_t> l2_hdr_len(olt)
        body = p.caplen - p.l3_off
        wbody = p.wirelen - p.l3_off if p.wirelen > p.l3_off else body
        if method == M_TUN:
            # the outer header says how long the packet is: no link-layer trailer inside it
            if body > p.l3_len:
                body = p.l3_len
            wbody = p.l3_len
        f = s.arena + s.arena_pos
        if same_lt:
            memcpy(f, p.data, ol2)
        else:
            build_l2(f, olt, oaf, NULL, NULL)
        memcpy(f + ol2 + encap, p.data + p.l3_off, body)
        newlen = ol2 + encap + body
        s.arena_pos += newlen
        o.wirelen = ol2 + encap + wbody
        if o.wirelen < newlen:
            o.wirelen = newlen
        s.cnt[C_COPIED] += 1
    fr.f = f
    fr.l3 = ol2 + encap
    fr.l4 = NO_OFF if p.l4_off == NO_OFF else <uint32_t> p.l4_off - p.l3_off + fr.l3
    fr.len = newlen
    fr.avail = newlen - fr.l3
    fr.iplen = p.l3_len
    fr.af = p.af
    fr.proto = p.proto
    fr.frag = p.frag
    if post_nat:
        s.cnt[C_POST_NAT] += 1
        s.cnt[C_NAT_OUT] += 1
    else:
        _ttl_dec(f + fr.l3, p.af)
        if method == M_NAT_IN:
            nat_rewrite(&fr, False, de.addr, d.dport, s.cnt)
            s.cnt[C_NAT_IN] += 1
        elif method == M_NAT_OUT:
            nat_rewrite(&fr, True, d.vaddr, d.vport, s.cnt)
            s.cnt[C_NAT_OUT] += 1
        elif method == M_TUN:
            tun_encap(f + ol2, &fr, de, src, s.pmtu_disc, s.ip_id, s.cnt)
            s.ip_id += 1
            s.cnt[C_TUN] += 1
        elif method == M_DR:
            s.cnt[C_DR] += 1
        elif method == M_BYPASS:
            s.cnt[C_BYPASS] += 1
        else:
            s.cnt[C_ROUTED] += 1
    if same_lt and oaf != p.af:
        set_l2_proto(f, olt, ol2, oaf)
    if post_nat and same_lt:
        pass                                # the frame as the director sent it
    elif olt == 1:
        if mac != NULL:
            if s.have_dmac:
                memcpy(f + 6, s.dmac, 6)
            elif p.linktype == 1:
                memcpy(olddst, p.data, 6)   # the director's interface (read before overwriting)
                memcpy(f + 6, olddst, 6)
            memcpy(f, mac, 6)
        else:
            s.cnt[C_L2_UNRESOLVED] += 1
            if not same_lt and s.have_dmac:
                memcpy(f + 6, s.dmac, 6)
    else:
        if olt == 113 or olt == 276:
            sll_outgoing(f, olt, s.dmac if s.have_dmac else NULL)
        if method == M_DR:
            s.cnt[C_DR_NO_L2] += 1
    o.data = f
    o.caplen = newlen
    o.ts_ns = p.ts_ns
    o.kind = OUT_FWD


# Two entries, so that the compiler keeps _fast_nat_run out of line: inlined into
# Forwarder._run (its only caller otherwise) it took about 5 instructions more per packet
# (registers spilled around the larger loop).
cdef uint32_t _fast_nat_learn(fwd_state *s, const pkt_desc *pk, const decision_t *dec,
                              out_rec *outs, uint32_t i, uint32_t m) noexcept nogil:
    return _fast_nat_run(s, pk, dec, outs, i, m, True)


cdef uint32_t _fast_nat_plain(fwd_state *s, const pkt_desc *pk, const decision_t *dec,
                              out_rec *outs, uint32_t i, uint32_t m) noexcept nogil:
    return _fast_nat_run(s, pk, dec, outs, i, m, False)


cdef uint32_t _forward_copying(fwd_state *s, const pkt_desc *pk, const decision_t *dec,
                               out_rec *outs, uint32_t i, uint32_t m, uint32_t *nfwd,
                               bint learn) noexcept nogil:
    """Packets [i, m) by _forward_one (learning from each when ``learn``) until one asks for
    something (OUT_ROOM / OUT_REFRESH, having done nothing); returns its index, m when all are
    done. nfwd: add the forwarded. _forward_one's only call site, so that it is inlined into
    this small loop and keeps its registers (the copying path's per-packet loop)."""
    cdef uint32_t n = 0
    cdef uint8_t k
    while i < m:
        if learn:
            _learn(s, &pk[i])
        _forward_one(s, &pk[i], &dec[i], &outs[i])
        k = outs[i].kind
        if k >= OUT_ROOM:
            break
        n += k == OUT_FWD
        i += 1
    nfwd[0] += n
    return i


# Called through a pointer, so that the compiler keeps _forward_copying out of line with
# _forward_one inlined into its small loop: inlined into the larger Forwarder._run, the copying
# path took about 12 instructions more per packet (registers spilled).
ctypedef uint32_t (*forward_copying_t)(fwd_state *, const pkt_desc *, const decision_t *, out_rec *,
                                       uint32_t, uint32_t, uint32_t *, bint) noexcept nogil
cdef forward_copying_t _forward_copying_fn = _forward_copying


cdef uint32_t _forward_range(fwd_state *s, const pkt_desc *pk, const decision_t *dec,
                             out_rec *outs, uint32_t i, uint32_t m, uint32_t *nfwd) noexcept nogil:
    """Packets [i, m) until one asks for something (OUT_ROOM / OUT_REFRESH, having done
    nothing); returns its index, m when all are done. nfwd: add the forwarded."""
    cdef uint32_t j, stop
    cdef bint learn = s.learn
    cdef bint fast = s.fast_nat
    cdef bint lrn
    while i < m:
        stop = m
        lrn = learn
        if fast:
            if dec[i].fwd == CF_MASQ:   # (other methods: not worth the call)
                if learn:
                    j = _fast_nat_learn(s, pk, dec, outs, i, m)
                else:
                    j = _fast_nat_plain(s, pk, dec, outs, i, m)
                nfwd[0] += j - i
                i = j
                if i == m:
                    break
                lrn = False             # (learned from already)
            stop = i + 1
        j = _forward_copying_fn(s, pk, dec, outs, i, stop, nfwd, lrn)
        if j != stop:
            return j
        i = j
    return i


# ---- the Python API -------------------------------------------------------------------------

def _mac_bytes(mac, what):
    if isinstance(mac, (bytes, bytearray)) and len(mac) == 6:
        return bytes(mac)
    text = str(mac).strip().lower().replace("-", ":")
    parts = text.split(":")
    if len(parts) == 1 and len(text) == 12:
        parts = [text[i:i + 2] for i in range(0, 12, 2)]
    try:
        if len(parts) != 6 or not all(1 <= len(x) <= 2 for x in parts):
            raise ValueError
        return bytes(int(x, 16) for x in parts)
    except ValueError:
        raise ValueError(f"{what}: not a MAC address: {mac!r}") from None


def _addr16(addr, what):
    try:
        a = ipaddress.ip_address(str(addr).strip().strip("[]"))
    except ValueError:
        raise ValueError(f"{what}: not an IP address: {addr!r}") from None
    if a.version == 4:
        return _V4_PREFIX + a.packed, 4
    if a.ipv4_mapped is not None:
        return a.packed, 4
    return a.packed, 6


def _addr_text(bytes a16):
    if a16[:12] == _V4_PREFIX:
        return str(ipaddress.IPv4Address(a16[12:]))
    return str(ipaddress.IPv6Address(a16))


def _mac_text(bytes m):
    return ":".join(f"{b:02x}" for b in m)


def _tunnel_spec(spec, what):
    """(type, port, csum) from "ipip" / "gre" / "gue:PORT" / {"type":, "port":, "csum":}."""
    if isinstance(spec, str):
        name, _, port = spec.partition(":")
        spec = {"type": name, "port": port or 0}
    if not isinstance(spec, dict):
        raise TypeError(f"{what}: a tunnel is 'ipip', 'gre', 'gue:PORT' or a dict, not {spec!r}")
    unknown = set(spec) - {"type", "port", "csum"}
    if unknown:
        raise ValueError(f"{what}: unknown tunnel keys {sorted(unknown)} (type, port, csum)")
    name = str(spec.get("type", "ipip")).lower()
    if name not in TUNNEL_TYPES:
        raise ValueError(f"{what}: unknown tunnel type {name!r} (ipip, gue, gre)")
    try:
        port = int(spec.get("port") or 0)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: tunnel port must be a number") from None
    if name == "gue" and not 1 <= port <= 65535:
        raise ValueError(f"{what}: a GUE tunnel needs a destination port 1..65535 (gue:PORT)")
    if name != "gue" and port:
        raise ValueError(f"{what}: only GUE tunnels take a port")
    csum = bool(spec.get("csum", False))
    if csum and name == "ipip":
        raise ValueError(f"{what}: IPIP has no checksum option")
    return TUNNEL_TYPES[name], port, csum


cdef Py_ssize_t _forward_burst(object fwd, PacketBatch batch, const decision_t *dec, uint32_t m,
                               PcapWriter sink) except -1:
    cdef Forwarder f = <Forwarder?> fwd
    if m > batch.count:
        raise ValueError(f"{m} packets asked of a batch of {batch.count}")
    f.s.out_lt = LT_ANY if sink is None else f._sink_linktype(sink, "sink")
    if m == 0:
        return 0
    return f._forward(batch, dec, 0, m, sink, None, False)


cdef class Forwarder:
    """Rewrite and write out packets per the engine's decisions.

    ``Forwarder(engine, neighbours=None, director_mac=None, local_sink=None, *,
    learn_neighbours=True, tunnel="ipip", tunnels=None, tunnel_source=None, mtu=None,
    pmtu_disc=True, in_place=True, max_neighbours=1 << 20)``

    * ``engine``: the Engine (anything with ``dests()``): real-server id -> address.
    * ``neighbours``: ``{ip: mac}`` static neighbour entries (MAC as text or 6 bytes).
    * ``director_mac``: source MAC of forwarded Ethernet frames (default: each frame's
      original destination MAC, the director's interface).
    * ``local_sink``: PcapWriter / NullSink for packets the director keeps (pass, invalid,
      LOCALNODE connections); None: they are only counted.
    * ``tunnel``: encapsulation of TUN real servers: ``"ipip"``, ``"gre"``, ``"gue:PORT"`` or
      ``{"type": ..., "port": ..., "csum": bool}`` (ipvsadm --tun-type/--tun-port/--tun-csum);
      ``tunnels`` overrides it per real-server address.
    * ``tunnel_source``: the director's outer source address(es) for tunnels (one IPv4 and/or
      one IPv6, a string or a list); by default the packet's destination (the VIP) when the
      families match; across families it is required (else ``no_tunnel_source`` drops).
    * ``mtu``: route MTU towards the real servers; None: no check.
    * ``pmtu_disc``: the pmtu_disc sysctl (copy DF into the outer IPv4 header).
    * ``in_place``: rewrite writable batch memory in place (else always copy).

    One Forwarder is not meant to be used from several threads at once (forward() works on
    its own buffers without the GIL). If a sink's write raises (e.g. a timestamp outside the
    pcap range), the exception propagates and the rest of that burst is not written.
    """
    cdef fwd_state s
    cdef object engine
    cdef object _local_sink
    cdef tuple _tun_default
    cdef dict _tunnels
    cdef bint _in_place

    def __cinit__(self):
        memset(&self.s, 0, sizeof(fwd_state))

    def __dealloc__(self):
        free(self.s.dests)
        free(self.s.arena)
        self._free_retired()
        free(self.s.outs)
        neigh_free(self.s.neigh)
        self.s.dests = NULL
        self.s.arena = NULL
        self.s.outs = NULL
        self.s.neigh = NULL

    def __init__(self, engine, neighbours=None, director_mac=None, local_sink=None, *,
                 learn_neighbours=True, tunnel="ipip", tunnels=None, tunnel_source=None,
                 mtu=None, pmtu_disc=True, in_place=True, max_neighbours=1 << 20):
        if not callable(getattr(engine, "dests", None)):
            raise TypeError("engine must provide dests() (an ipvsflow Engine)")
        if self.s.neigh != NULL:
            raise RuntimeError("Forwarder.__init__ called twice")
        max_neighbours = int(max_neighbours)
        if not 1 <= max_neighbours <= 1 << 28:
            raise ValueError("max_neighbours out of range 1..2**28")
        self.engine = engine
        self.s.neigh = neigh_new(<uint32_t> max_neighbours)
        if self.s.neigh == NULL:
            raise MemoryError()
        cdef bytes a, m
        for ip, mac in (neighbours or {}).items():
            a, _ = _addr16(ip, "neighbours")
            m = _mac_bytes(mac, f"neighbours[{ip!r}]")
            neigh_set(self.s.neigh, a, m, NEIGH_STATIC)
            self.s.nc_valid = 0
        if director_mac is not None:
            m = _mac_bytes(director_mac, "director_mac")
            memcpy(self.s.dmac, <const char *> m, 6)
            self.s.have_dmac = 1
        self.s.learn = bool(learn_neighbours)
        self._tun_default = _tunnel_spec(tunnel, "tunnel")
        self._tunnels = {}
        for addr, spec in (tunnels or {}).items():
            a, _ = _addr16(addr, "tunnels")
            self._tunnels[a] = _tunnel_spec(spec, f"tunnels[{addr!r}]")
        if tunnel_source is not None:
            srcs = [tunnel_source] if isinstance(tunnel_source, str) else list(tunnel_source)
            for t in srcs:
                a, af = _addr16(t, "tunnel_source")
                if af == 4:
                    if self.s.have_src4:
                        raise ValueError("tunnel_source: more than one IPv4 address")
                    memcpy(self.s.src4, <const char *> a, 16)
                    self.s.have_src4 = 1
                else:
                    if self.s.have_src6:
                        raise ValueError("tunnel_source: more than one IPv6 address")
                    memcpy(self.s.src6, <const char *> a, 16)
                    self.s.have_src6 = 1
        if mtu is not None:
            mtu = int(mtu)
            if not 68 <= mtu <= 0xffff + 40:
                raise ValueError(f"mtu {mtu} out of range 68..65575")
            self.s.mtu = <uint32_t> mtu
        self.s.pmtu_disc = bool(pmtu_disc)
        self._in_place = bool(in_place)
        self._local_sink = None
        if local_sink is not None:
            self._sink_linktype(local_sink, "local_sink")
            self._local_sink = local_sink
        self.refresh_dests()

    # -- configuration ----------------------------------------------------------------------

    cdef uint16_t _sink_linktype(self, sink, what) except? 0:
        cdef uint32_t lt
        if isinstance(sink, PcapWriter):
            lt = (<PcapWriter> sink).linktype
            if lt > 0xfffe or l2_hdr_len(<uint16_t> lt) < 0:
                check_linktype(lt)      # raises with the list of what can be written
            return <uint16_t> lt
        if isinstance(sink, NullSink):
            return <uint16_t> (<NullSink> sink)._linktype
        raise TypeError(f"{what} must be an ipvsflow PcapWriter or NullSink, not "
                        f"{type(sink).__name__}")

    def _burst_entry(self):
        """A capsule of the C entry (``xmit.pxd: forward_burst_fn``) for loops in C."""
        return PyCapsule_New(<void *> _forward_burst, b"ipvsflow.forward_burst", NULL)

    def refresh_dests(self):
        """Re-read the engine's real servers (done automatically when a decision names a real
        server id the forwarder has not seen yet)."""
        dests = list(self.engine.dests())
        n = max((int(d["id"]) for d in dests), default=-1) + 1
        cdef dest_ent *t = <dest_ent *> calloc(max(n, 1), sizeof(dest_ent))
        if t == NULL:
            raise MemoryError()
        cdef bytes a
        cdef dest_ent *e
        try:
            for d in dests:
                i = int(d["id"])
                if i < 0:
                    continue
                a, af = _addr16(d["addr"], "engine dest")
                e = &t[i]
                memcpy(e.addr, <const char *> a, 16)
                e.af = af
                ty, port, csum = self._tunnels.get(a, self._tun_default)
                e.tun_type = ty
                e.tun_port = port
                e.tun_csum = csum
        except BaseException:
            free(t)
            raise
        free(self.s.dests)
        self.s.dests = t
        self.s.n_dests = <uint32_t> n

    # -- forwarding -------------------------------------------------------------------------

    def forward(self, PacketBatch batch not None, decisions, start=0, stop=None, sink=None):
        """Apply ``decisions`` (one per packet of ``batch[start:stop]``, as
        ``Engine.process(batch, start, stop)`` returns them) and write the frames: forwarded
        ones to ``sink`` (PcapWriter / NullSink; None: discarded), the director's own to the
        local sink. Returns the number of packets forwarded by this call."""
        cdef uint32_t n = batch.count
        cdef Py_ssize_t s0 = 0 if start is None else int(start)
        cdef Py_ssize_t s1 = n if stop is None else int(stop)
        if s0 < 0 or s1 > n or s0 > s1:
            raise ValueError(f"packet range [{start}, {stop}) is not within the batch's {n} packets")
        cdef uint32_t m = <uint32_t> (s1 - s0)
        if not isinstance(decisions, np.ndarray) or decisions.dtype.itemsize != sizeof(decision_t) \
                or decisions.ndim != 1:
            raise TypeError(f"decisions must be a 1-d numpy array of {sizeof(decision_t)}-byte "
                            "decision records (Engine.process output or forward.DECISION_DTYPE)")
        if len(decisions) != m:
            raise ValueError(f"{len(decisions)} decisions for {m} packets")
        cdef uint16_t out_lt = LT_ANY
        cdef PcapWriter pw = None
        cdef NullSink ns = None
        if sink is not None:
            out_lt = self._sink_linktype(sink, "sink")
        self.s.out_lt = out_lt
        if sink is not None:
            if isinstance(sink, PcapWriter):
                pw = <PcapWriter> sink
            else:
                ns = <NullSink> sink
        if m == 0:
            return 0
        cdef Py_buffer dbuf
        try:
            PyObject_GetBuffer(decisions, &dbuf, PyBUF_SIMPLE)
        except (BufferError, ValueError):
            decisions = np.ascontiguousarray(decisions)     # a strided view: compact it
            PyObject_GetBuffer(decisions, &dbuf, PyBUF_SIMPLE)
        try:
            return self._forward(batch, <const decision_t *> dbuf.buf, s0, m, pw, ns, True)
        finally:
            PyBuffer_Release(&dbuf)

    cdef object _forward(self, PacketBatch batch, const decision_t *dec, Py_ssize_t s0, uint32_t m,
                         PcapWriter pw, NullSink ns, bint check):
        # check: decisions from a caller, matched to the packets first (the C entry's are the
        # engine's own for those packets). The copy buffer grows and the real servers are
        # re-read from within the burst loop, when a packet needs it.
        cdef const pkt_desc *pk = batch.pkts + s0
        cdef uint32_t i
        if check:
            for i in range(m):
                if dec[i].pkt != pk[i].index:
                    raise ValueError(f"decision {i} is for packet {dec[i].pkt}, but packet "
                                     f"{s0 + i} of the batch is input packet {pk[i].index}")
        self._reserve(0, m)
        # writable batch memory: the export is held until the end (no resize meanwhile)
        cdef Py_buffer wbuf
        cdef bint have_w = False
        self.s.wbase = NULL
        self.s.wlen = 0
        owner = batch.owner
        if self._in_place and owner is not None and type(owner) is not bytes and \
                PyObject_CheckBuffer(owner):
            try:
                PyObject_GetBuffer(owner, &wbuf, PyBUF_WRITABLE)
                have_w = True
            except (BufferError, TypeError, ValueError):
                pass
            if have_w and wbuf.len > 0:
                self.s.wbase = <const uint8_t *> wbuf.buf
                self.s.wlen = <size_t> wbuf.len
        try:
            return self._run(batch, dec, s0, m, pw, ns)
        finally:
            self.s.wbase = NULL
            if have_w:
                PyBuffer_Release(&wbuf)

    cdef object _run(self, PacketBatch batch, const decision_t *dec, Py_ssize_t s0, uint32_t m,
                     PcapWriter pw, NullSink ns):
        cdef const pkt_desc *pk = batch.pkts + s0
        cdef uint32_t i
        cdef PcapWriter lpw = None
        cdef NullSink lns = None
        self.s.have_local = self._local_sink is not None
        if self._local_sink is not None:
            self.s.local_lt = self._sink_linktype(self._local_sink, "local_sink")
            if isinstance(self._local_sink, PcapWriter):
                lpw = <PcapWriter> self._local_sink
            else:
                lns = <NullSink> self._local_sink
        cdef fwd_state *st = &self.s
        cdef out_rec *outs = st.outs
        cdef uint64_t before = st.cnt[C_FORWARDED]
        cdef uint8_t k = OUT_NONE
        self._free_retired()
        st.arena_pos = 0
        cdef uint32_t nfwd = 0
        cdef uint64_t nbytes = 0
        st.nc_valid = 0
        st.may_refresh = 1
        st.fast_nat = st.wbase != NULL and (st.out_lt == LT_ANY or st.out_lt == 1)
        # packets and forwarded are counted per burst (forwarded: the OUT_FWD records)
        st.cnt[C_PACKETS] += m
        i = 0
        while True:
            with nogil:
                i = _forward_range(st, pk, dec, outs, i, m, &nfwd)
            if i == m:
                break
            k = outs[i].kind
            # packet i did nothing: make what it asks for, then redo it
            if k == OUT_REFRESH:
                st.may_refresh = 0          # once per burst (an id the engine does not have
                self.refresh_dests()        # is then a bad decision)
            else:
                self._grow_arena(pk[i].caplen + FRAME_SLACK)
        st.cnt[C_FORWARDED] += nfwd
        cdef out_rec *o
        if not st.have_local:
            # forwarded frames only: one call for the burst (the order is the same)
            if pw is not None:
                pw.write_recs(outs, m, OUT_FWD)
            elif ns is not None and nfwd:
                for i in range(m):
                    if outs[i].kind == OUT_FWD:
                        nbytes += outs[i].caplen
                ns.take_many(nfwd, nbytes)
            return st.cnt[C_FORWARDED] - before
        for i in range(m):
            o = &outs[i]
            if o.kind == OUT_FWD:
                if pw is not None:
                    pw.write_raw(o.data, o.caplen, o.wirelen, o.ts_ns)
                else:
                    nbytes += o.caplen
            elif o.kind == OUT_LOCAL:
                if lpw is not None:
                    lpw.write_raw(o.data, o.caplen, o.wirelen, o.ts_ns)
                else:
                    lns.take(o.caplen)
                st.cnt[C_LOCAL_WRITTEN] += 1
        if ns is not None and nfwd:
            ns.take_many(nfwd, nbytes)
        return st.cnt[C_FORWARDED] - before

    cdef int _grow_arena(self, size_t need) except -1:
        """A new, bigger copy buffer for the rest of the burst; the full one is retired (its
        frames stay valid until the next burst)."""
        cdef fwd_state *st = &self.s
        cdef size_t cap = 2 * st.arena_cap
        cdef uint8_t *a
        if cap < need:
            cap = need
        if cap < ARENA_MIN:
            cap = ARENA_MIN
        if st.arena != NULL and st.arena_pos > 0:
            if st.n_retired == MAX_RETIRED:
                raise MemoryError()
            a = <uint8_t *> malloc(cap)
            if a == NULL:
                raise MemoryError()
            st.retired[st.n_retired] = st.arena
            st.n_retired += 1
        else:
            a = <uint8_t *> realloc(st.arena, cap)
            if a == NULL:
                raise MemoryError()
        st.arena = a
        st.arena_cap = cap
        st.arena_pos = 0
        return 0

    cdef void _free_retired(self) noexcept:
        while self.s.n_retired:
            self.s.n_retired -= 1
            free(self.s.retired[self.s.n_retired])

    cdef int _reserve(self, size_t need, uint32_t m) except -1:
        cdef uint8_t *a
        cdef out_rec *r
        if need > self.s.arena_cap:
            a = <uint8_t *> realloc(self.s.arena, need)
            if a == NULL:
                raise MemoryError()
            self.s.arena = a
            self.s.arena_cap = need
        if m > self.s.outs_cap:
            r = <out_rec *> realloc(self.s.outs, m * sizeof(out_rec))
            if r == NULL:
                raise MemoryError()
            self.s.outs = r
            self.s.outs_cap = m
        return 0

    def copy_burst(self, PacketBatch batch not None, start=0, stop=None):
        """Copy packets ``[start, stop)`` into the output buffer and nothing else: the
        forwarder's memory traffic without any rewrite (the benchmarks' baseline). Returns the
        bytes copied."""
        cdef uint32_t n = batch.count
        cdef Py_ssize_t s0 = 0 if start is None else int(start)
        cdef Py_ssize_t s1 = n if stop is None else int(stop)
        if s0 < 0 or s1 > n or s0 > s1:
            raise ValueError(f"packet range [{start}, {stop}) is not within the batch's {n} packets")
        cdef size_t need = 0
        cdef Py_ssize_t i
        for i in range(s0, s1):
            need += batch.pkts[i].caplen
        self._reserve(need, <uint32_t> (s1 - s0))
        cdef size_t pos = 0
        cdef const pkt_desc *p
        with nogil:
            for i in range(s0, s1):
                p = &batch.pkts[i]
                memcpy(self.s.arena + pos, p.data, p.caplen)
                self.s.outs[i - s0].data = self.s.arena + pos
                self.s.outs[i - s0].caplen = p.caplen
                pos += p.caplen
        return pos

    def learn(self, PacketBatch batch not None, start=0, stop=None):
        """Learn neighbours from packets ``[start, stop)`` without forwarding them (e.g. a
        first pass over a capture, so DR finds real servers seen later in it)."""
        cdef uint32_t n = batch.count
        cdef Py_ssize_t s0 = 0 if start is None else int(start)
        cdef Py_ssize_t s1 = n if stop is None else int(stop)
        if s0 < 0 or s1 > n or s0 > s1:
            raise ValueError(f"packet range [{start}, {stop}) is not within the batch's {n} packets")
        cdef Py_ssize_t i
        with nogil:
            for i in range(s0, s1):
                _learn(&self.s, &batch.pkts[i])

    # -- introspection ----------------------------------------------------------------------

    @property
    def counters(self):
        """Counters since creation (or reset_counters): totals, ``by_method``,
        ``drop_reasons`` and notes (see COUNTER_NAMES)."""
        flat = {name: int(self.s.cnt[i]) for i, name in enumerate(COUNTER_NAMES)}
        flat["by_method"] = {k: flat[k] for k in METHOD_COUNTERS}
        flat["drop_reasons"] = {k: flat[k] for k in DROP_COUNTERS}
        flat["neighbours"] = int(self.s.neigh.count)
        flat["neighbours_refused"] = int(self.s.neigh.full_events)
        return flat

    def reset_counters(self):
        memset(self.s.cnt, 0, sizeof(self.s.cnt))

    def neighbours(self):
        """The neighbour table: ``{address: (mac, "static" | "learned")}``."""
        cdef uint32_t i
        cdef neigh_ent *e
        out = {}
        for i in range(self.s.neigh.cap):
            e = &self.s.neigh.slots[i]
            if e.kind != NEIGH_EMPTY:
                out[_addr_text(PyBytes_FromStringAndSize(<char *> e.addr, 16))] = (
                    _mac_text(PyBytes_FromStringAndSize(<char *> e.mac, 6)),
                    "static" if e.kind == NEIGH_STATIC else "learned")
        return out

    @property
    def local_sink(self):
        return self._local_sink
