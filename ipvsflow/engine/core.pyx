# The IPVS engine core: per-packet processing as Linux IPVS 6.x does it (net/netfilter/ipvs/
# ip_vs_core.c: ip_vs_out_hook then ip_vs_in_hook on LOCAL_IN, ip_vs_conn.c: entries, timers and
# expiry), one decision record per packet, and the Python API (Engine).
#
# Time is the packet timestamp: before each packet, every entry whose deadline is <= its
# timestamp expires, in deadline order (the kernel's per-entry timers), so an offline replay is
# deterministic. "expire now" moves an entry's deadline to the current time; the entry is
# unlinked (and its server's counters updated) before the next packet, exactly as the kernel's
# timer fires right after the packet that expired it (reference section 8).
#
# Hot path: _process_burst runs without the GIL over C structs only. It hashes each packet's
# key and prefetches its index slot and entry a few packets ahead of the one it processes, in
# order (a packet may create the entry the next one finds). A packet on an existing entry with
# nothing else to decide takes _fast_hit; every other one _process_general. The table's and
# the protocols' per-packet functions are the inline versions from their .pxd files.
cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, INT64_MAX
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset, memcmp
from posix.mman cimport (mmap, munmap, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS,
                         MAP_NORESERVE, MAP_FAILED)

from ipvsflow.engine.defs cimport (
    engine_t, dest_t, service_t, decision_t,
    ACT_NEW, ACT_HIT, ACT_RESCHED, ACT_DROP, ACT_PASS, ACT_INVALID,
    DIR_NONE, DIR_IN, DIR_OUT, DF_REUSE, DF_TEMPLATE, DF_ICMP, DF_NOOUTPUT,
    DEST_F_AVAILABLE, DEST_F_OVERLOAD,
    REUSE_2015, REUSE_2016, REUSE_2020, REUSE_2021,
)
from ipvsflow.engine.conntab cimport (
    conntab, conn_entry, conn_key, CONN_NONE,
    CF_FWD_MASK, CF_MASQ, CF_BYPASS, CF_NOOUTPUT, CF_INACTIVE, CF_TEMPLATE, CF_ONE_PACKET, CF_NFCT,
    XF_USED, XF_IN_HASHED, XF_OUT_HASHED, XF_TIMER, XF_EXPIRE_LATER, XF_ENGINE1,
    ct_new, ct_free_table, ct_alloc, ct_release, ct_key_in_of,
    ct_hash_in, ct_hash_out, ct_unhash, ct_timer_del, ct_timer_next, ct_timer_pop, ct_index_bytes,
    ct_prefault,
    # per-packet operations: the .pxd's inline versions (a cross-module call is an indirect
    # call that the C compiler cannot inline)
    ct_key_hash_i as ct_key_hash, ct_lookup_in_i as ct_lookup_in, ct_lookup_out_i as ct_lookup_out,
    ct_prefetch_in_i as ct_prefetch_in, ct_prefetch_out_i as ct_prefetch_out,
    ct_prefetch_entry_i as ct_prefetch_entry, ct_peek_in_i as ct_peek_in, ct_peek_out_i as ct_peek_out,
    ct_timer_set_i as ct_timer_set, ct_timer_set_e, _ct_in_eq, _ct_key_word, ct_hash_raw_k, ct_eq16,
    ct_index, ct_prefetch_slot_s, ct_prefetch_entry_at, _ct_peek_s,
)
from ipvsflow.engine.services cimport (
    svc_find, svc_schedule, dest_bind, dest_unbind, svc_table_init, svc_table_free, svc_apply,
)
from ipvsflow.engine.proto_tcp cimport (
    tcp_register, tcp_state_active, TCP_S_LAST, tcp_state_table, tcp_set_state_i, tcp_timeout_i,
    tcp_is_new_conn_i,
)
from ipvsflow.engine.proto_udp cimport udp_register, udp_set_state_i, udp_timeout_i
from ipvsflow.engine.proto_sctp cimport sctp_register
from ipvsflow.engine.proto_ah_esp cimport ah_esp_register, PORT_ISAKMP
from ipvsflow.engine.classify cimport Classifier, mark_table, classify_burst
from ipvsflow.io.batch cimport pkt_desc, PacketBatch
from cpython.pycapsule cimport PyCapsule_New

import functools
import ipaddress

import numpy as np

from ipvsflow.config import (
    Command, Config, ConfigError, SYSCTL_DEFAULTS, DEFAULT_TIMEOUTS, FWD_NAMES, SCHEDULERS,
    SVC_F_SCHED1, SVC_F_SCHED2, SVC_F_SCHED3,
)
from ipvsflow.engine import names as _names
from ipvsflow.engine import variants as _variants

cdef enum:
    NS = 1000000000
    IPPROTO_IP = 0
    IPPROTO_ICMP = 1
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_ESP = 50
    IPPROTO_AH = 51
    IPPROTO_ICMPV6 = 58
    IPPROTO_SCTP = 132
    FTPPORT = 21
    FTPDATA = 20
    SVC_F_PERSISTENT = 0x0001
    SVC_F_ONEPACKET = 0x0004
    CTPL_S_ASSURED = 1
    STATE_NONE = 0xFF
    HZ = 250                    # Debian's CONFIG_HZ; bounds ipvsadm --set values as the kernel does
    INT_MAX = 0x7FFFFFFF

# ParseStatus values (ipvsflow/io/batch.pxd)
cdef enum:
    PS_OK = 0
    PS_FRAGMENT = 1
    PS_NOT_IP = 2
    PS_UNKNOWN_LINKTYPE = 3
    PS_TRUNC_L2 = 4
    PS_TRUNC_L3 = 5
    PS_BAD_IP_VERSION = 6
    PS_BAD_IHL = 7
    PS_BAD_IP_LEN = 8
    PS_TRUNC_EXTHDR = 9
    PS_TRUNC_L4 = 10
    PS_BAD_L4_HDR = 11
    PS_TRUNC_ICMP_INNER = 12
    PS_BAD_ICMP_INNER = 13

# Branch hints for the packet path. Besides the branch layout, they tell the C compiler which
# calls are the hot ones: without them it takes the fast path's helpers for cold code and
# leaves them out of line once the module's inlining budget is spent.
cdef extern from *:
    """
    #define ipvs_likely(x) __builtin_expect(!!(x), 1)
    #define ipvs_unlikely(x) __builtin_expect(!!(x), 0)
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define IPVS_LE 1
    #else
    #define IPVS_LE 0
    #endif
    """
    # 1: little-endian; adjacent narrow fields may be written as one wider store
    bint IPVS_LE
    bint likely "ipvs_likely"(bint x) noexcept nogil
    bint unlikely "ipvs_unlikely"(bint x) noexcept nogil

# The hinted lookup's address compare: an entry's caddr, vaddr (32 bytes from a 16-byte
# boundary: the slab is page-aligned, entries 80 bytes, caddr first) against a key's a, b.
# SSE2: the entry's halves are the compares' memory operands, one branch for all 32 bytes.
cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static inline int ipvs_eq32_a(const uint8_t *e, const uint8_t *k) {
        __m128i x = _mm_cmpeq_epi8(_mm_load_si128((const __m128i *)e), _mm_loadu_si128((const __m128i *)k));
        __m128i y = _mm_cmpeq_epi8(_mm_load_si128((const __m128i *)(e + 16)),
                                   _mm_loadu_si128((const __m128i *)(k + 16)));
        return _mm_movemask_epi8(_mm_and_si128(x, y)) == 0xFFFF;
    }
    #else
    static inline int ipvs_eq32_a(const uint8_t *e, const uint8_t *k) {
        return memcmp(e, k, 32) == 0;
    }
    #endif
    """
    bint eq32_a "ipvs_eq32_a"(const uint8_t *e, const uint8_t *k) noexcept nogil

cdef int64_t EXPIRE_LATER_NS = 60 * <int64_t>NS
cdef int64_t FRESH_NS = 3 * <int64_t>NS
cdef enum:
    XF_FRESH = XF_ENGINE1       # entry created by an ICMP error (schedule_icmp): no transition yet
MAX_CONNS = 0xFFFF0000 - 1          # entry ids stay below the table's internal tags

# ---- protocol table (the kernel's ip_vs_proto_table) -------------------------------------------

cdef proto_ops PROTOS[256]
memset(PROTOS, 0, sizeof(PROTOS))
tcp_register(&PROTOS[IPPROTO_TCP])
udp_register(&PROTOS[IPPROTO_UDP])
sctp_register(&PROTOS[IPPROTO_SCTP])
ah_esp_register(&PROTOS[IPPROTO_AH], IPPROTO_AH)
ah_esp_register(&PROTOS[IPPROTO_ESP], IPPROTO_ESP)
# the burst pipeline's key of a packet by its protocol, in one table look-up: none (not
# modelled), its ports, or (AH/ESP) the UDP/500 connection's
cdef enum:
    KK_NONE = 0
    KK_PORTS = 1
    KK_ISAKMP = 2
cdef uint8_t KEY_KIND[256]
for _i in range(256):
    KEY_KIND[_i] = (KK_NONE if not PROTOS[_i].modelled
                    else KK_ISAKMP if _i == IPPROTO_AH or _i == IPPROTO_ESP else KK_PORTS)
# _fast_hit indexes the statistics by direction
cdef dest_t _dproto_dest
cdef service_t _dproto_svc
if not (<char *>&_dproto_dest.outpkts - <char *>&_dproto_dest.inpkts == 8
        and <char *>&_dproto_dest.outbytes - <char *>&_dproto_dest.inbytes == 8
        and <char *>&_dproto_svc.outpkts - <char *>&_dproto_svc.inpkts == 8
        and <char *>&_dproto_svc.outbytes - <char *>&_dproto_svc.inbytes == 8
        and IP_VS_DIR_OUTPUT - IP_VS_DIR_INPUT == 1 and DIR_OUT - DIR_IN == 1):
    raise ImportError("ipvsflow.engine.core: statistics fields or direction codes reordered")
# _key_from_pkt writes a key's pa .. _pad as one word: they must follow each other, in order
cdef conn_key _kproto
if not (<char *>&_kproto.pb - <char *>&_kproto.pa == 2 and <char *>&_kproto.proto - <char *>&_kproto.pa == 4
        and <char *>&_kproto.af - <char *>&_kproto.pa == 5
        and <char *>&_kproto.is_template - <char *>&_kproto.pa == 6
        and <char *>&_kproto._pad - <char *>&_kproto.pa == 7):
    raise ImportError("conn_key: pa, pb, proto, af, is_template, _pad are not one packed word")
cdef conn_entry _eproto
if <char *>&_eproto.vport - <char *>&_eproto.cport != 2:
    raise ImportError("conn_entry: cport, vport are not one packed word")
if (<char *>&_eproto.caddr[0] - <char *>&_eproto != 0 or <char *>&_eproto.vaddr[0] - <char *>&_eproto != 16
        or sizeof(conn_entry) % 16 or <char *>&_kproto.b[0] - <char *>&_kproto.a[0] != 16):
    raise ImportError("eq32_a: conn_entry caddr, vaddr or conn_key a, b are not 32 bytes from a 16-byte boundary")
# _pkt_key_word reads sport, dport as one word and af, proto as another
cdef pkt_desc _pproto
if not (<char *>&_pproto.dport - <char *>&_pproto.sport == 2 and <char *>&_pproto.af - <char *>&_pproto.sport == 4
        and <char *>&_pproto.proto - <char *>&_pproto.sport == 5):
    raise ImportError("pkt_desc: sport, dport, af, proto do not follow each other")
cdef decision_t _drec
if not (<char *>&_eproto.dport - <char *>&_eproto.vport == 2
        and <char *>&_drec.reason - <char *>&_drec.action == 1 and <char *>&_drec.dir - <char *>&_drec.action == 2
        and <char *>&_drec.proto - <char *>&_drec.action == 3
        and <char *>&_drec.old_state - <char *>&_drec.state == 1 and <char *>&_drec.flags - <char *>&_drec.state == 2
        and <char *>&_drec._pad - <char *>&_drec.state == 3 and <char *>&_drec.vport - <char *>&_drec.dport == 2
        and CF_NOOUTPUT == DF_NOOUTPUT << 4):
    raise ImportError("_dec_hit: conn_entry vport, dport or decision_t action .. proto, state .. _pad, "
                      "dport, vport do not follow each other")
if not (<char *>&_drec._pad - <char *>&_drec.flags == 1 and <char *>&_drec._pad2[0] - <char *>&_drec.fwd == 1):
    raise ImportError("decision_t: flags, _pad or fwd, _pad2 do not follow each other")

# tcp_states[] and tcp_states_dos[], for the inline TCP transition
cdef const uint8_t *TCP_TABLES[2]
TCP_TABLES[0] = tcp_state_table(False)
TCP_TABLES[1] = tcp_state_table(True)


# The protocol hooks of the packet path. TCP and UDP, nearly all traffic, run the protocol
# files' inline versions (an ops-table call is an indirect call the C compiler cannot inline);
# the other protocols go through the ops table. `ops` is the packet's protocol (AH/ESP packets
# run on their UDP/500 entry with AH/ESP's ops), cp.proto the entry's.
cdef inline bint _is_new_conn(const proto_ops *ops, const pkt_desc *p) noexcept nogil:
    if ops.protocol == IPPROTO_TCP:
        return tcp_is_new_conn_i(p)
    if ops.protocol == IPPROTO_UDP:
        return False
    return ops.is_new_conn(p)


cdef inline void _set_state(engine_t *e, const proto_ops *ops, conn_entry *cp, int direction,
                            const pkt_desc *p) noexcept nogil:
    if ops.protocol == IPPROTO_TCP:
        tcp_set_state_i(e, TCP_TABLES[e.secure_tcp > 1], cp, direction, p.tcp_flags)
    elif ops.protocol == IPPROTO_UDP:
        udp_set_state_i(e, cp, direction)
    else:
        ops.state_transition(e, cp, direction, p)


cdef inline int64_t _proto_timeout(const engine_t *e, const conn_entry *cp) noexcept nogil:
    if cp.proto == IPPROTO_TCP:
        return tcp_timeout_i(e, cp)
    if cp.proto == IPPROTO_UDP:
        return udp_timeout_i(e)
    return PROTOS[cp.proto].timeout(e, cp)


# ---- small helpers ----------------------------------------------------------------------------

cdef inline bint _avail(const engine_t *e, uint32_t dest) noexcept nogil:
    return (e.dests[dest].flags & DEST_F_AVAILABLE) != 0


cdef inline uint32_t _addr_bits(const uint8_t *a) noexcept nogil:
    # 8-bit fingerprint of a 16-byte address for the 256-bit prefilters
    cdef uint32_t w0, w1, w2, w3, h
    memcpy(&w0, a, 4)
    memcpy(&w1, a + 4, 4)
    memcpy(&w2, a + 8, 4)
    memcpy(&w3, a + 12, 4)
    h = (w0 ^ w1 ^ w2 ^ w3) * <uint32_t>0x9E3779B1
    return h >> 24


cdef inline bint _filter_hit(const uint64_t *f, const uint8_t *a) noexcept nogil:
    cdef uint32_t b = _addr_bits(a)
    return (f[b >> 6] >> (b & 63)) & 1


cdef inline void _filter_add(uint64_t *f, const uint8_t *a) noexcept nogil:
    cdef uint32_t b = _addr_bits(a)
    f[b >> 6] |= (<uint64_t>1) << (b & 63)


cdef inline uint64_t _pkt_key_word(const pkt_desc *p) noexcept nogil:
    # _ct_key_word of a packet's ports, protocol and af (not a template): on little-endian
    # from two loads, the ports as they are and af, proto swapped into proto, af
    cdef uint32_t ports
    cdef uint16_t ap
    if IPVS_LE:
        memcpy(&ports, &p.sport, 4)
        memcpy(&ap, &p.af, 2)
        ap = <uint16_t>((ap >> 8) | (ap << 8))
        return (<uint64_t>ports) | ((<uint64_t>ap) << 32)
    return _ct_key_word(p.sport, p.dport, p.proto, p.af, 0)


cdef inline void _key_from_pkt(const uint64_t *hkeys, conn_key *k, const pkt_desc *p,
                               bint isakmp) noexcept nogil:
    # in-index key of a client -> VIP packet, hashed (ct_key_hash); the same fields are the
    # out-index key of a real server -> client packet (a = source, b = destination). AH/ESP:
    # the UDP/500 connection. The hash's word of ports, protocol, af and template flag is
    # built once in a register; on little-endian it is also those fields' bytes (pa .. _pad).
    # hkeys: the table's hash seed words (t.hkeys); isakmp: p is AH/ESP (KEY_KIND)
    cdef uint64_t w
    if isakmp:
        w = _ct_key_word(PORT_ISAKMP, PORT_ISAKMP, IPPROTO_UDP, p.af, 0)
    else:
        w = _pkt_key_word(p)
    memcpy(k.a, p.src, 16)
    memcpy(k.b, p.dst, 16)
    if IPVS_LE:
        memcpy(&k.pa, &w, 8)
    else:
        k.pa = <uint16_t>w
        k.pb = <uint16_t>(w >> 16)
        k.proto = <uint8_t>(w >> 32)
        k.af = <uint8_t>(w >> 40)
        k.is_template = 0
        k._pad = 0
    k.hash = ct_hash_raw_k(k.a, k.b, w, hkeys)


cdef inline void _key_swapped(conn_key *k, const pkt_desc *p) noexcept nogil:
    # in-index key of the connection a VIP -> client reply belongs to
    memset(k, 0, sizeof(conn_key))
    memcpy(k.a, p.dst, 16)
    memcpy(k.b, p.src, 16)
    if p.proto == IPPROTO_AH or p.proto == IPPROTO_ESP:
        k.pa = PORT_ISAKMP
        k.pb = PORT_ISAKMP
        k.proto = IPPROTO_UDP
    else:
        k.pa = p.dport
        k.pb = p.sport
        k.proto = p.proto
    k.af = p.af


cdef inline uint8_t _status_reason(uint16_t status) noexcept nogil:
    if status == PS_FRAGMENT:
        return R_FRAGMENT
    if status == PS_NOT_IP:
        return R_NOT_IP
    if status == PS_UNKNOWN_LINKTYPE:
        return R_UNKNOWN_LINKTYPE
    if (status == PS_TRUNC_L2 or status == PS_TRUNC_L3 or status == PS_TRUNC_EXTHDR
            or status == PS_TRUNC_L4 or status == PS_TRUNC_ICMP_INNER):
        return R_TRUNCATED
    return R_MALFORMED


cdef inline bint _is_icmp_error(const pkt_desc *p) noexcept nogil:
    # the errors ip_vs_in_icmp handles: DEST_UNREACH, SOURCE_QUENCH, TIME_EXCEEDED;
    # ICMPv6: every non-informational type
    if p.proto == IPPROTO_ICMP:
        return p.icmp_type == 3 or p.icmp_type == 4 or p.icmp_type == 11
    if p.proto == IPPROTO_ICMPV6:
        return p.icmp_type < 128
    return False


cdef inline bint _is_unicast(const uint8_t *a, uint8_t af) noexcept nogil:
    # ip_vs_addr_is_unicast for a forwarded destination (not local to the director)
    cdef int i
    cdef bint zero = True
    if af == 4:
        if a[12] >= 224:
            return False            # multicast, class E and 255.255.255.255
        return not (a[12] == 0 and a[13] == 0 and a[14] == 0 and a[15] == 0)
    if a[0] == 0xff:
        return False
    for i in range(16):
        if a[i]:
            zero = False
    return not zero


cdef inline void _dec_init(decision_t *d, const pkt_desc *p) noexcept nogil:
    d.pkt = p.index
    d.ts_ns = p.ts_ns
    d.conn = 0
    d.reuse_of = 0
    d.rs = -1
    d.svc = -1
    d.action = ACT_PASS
    d.reason = R_NONE
    d.dir = DIR_NONE
    d.proto = p.proto
    d.state = STATE_NONE
    d.old_state = STATE_NONE
    d.flags = 0
    d._pad = 0
    d.dport = 0
    d.vport = 0
    d.fwd = 0xFF
    d._pad2[0] = 0
    d._pad2[1] = 0
    d._pad2[2] = 0
    memset(d.vaddr, 0, 16)


cdef inline void _dec_entry(const engine_t *e, decision_t *d, const conn_entry *cp) noexcept nogil:
    # the connection as the forwarders need it (the entry may be gone by then)
    d.conn = cp.serial
    d.dport = cp.dport
    d.vport = cp.vport
    d.fwd = cp.flags & CF_FWD_MASK
    memcpy(d.vaddr, cp.vaddr, 16)
    if cp.dest != CONN_NONE:
        d.rs = <int32_t>cp.dest
        d.svc = e.dests[cp.dest].svc
    d.state = cp.state
    if cp.flags & CF_NOOUTPUT:
        d.flags |= DF_NOOUTPUT
    else:
        d.flags &= ~(<uint8_t>DF_NOOUTPUT)


# ---- timers and expiry (ip_vs_conn.c) -----------------------------------------------------------
cdef inline void _timer_set(core_t *c, uint32_t id, int64_t deadline) noexcept nogil:
    ct_timer_set(c.e.ct, id, deadline)
    if deadline < c.next_due:
        c.next_due = deadline


cdef inline void _timer_set_e(core_t *c, conn_entry *cp, uint32_t id, int64_t deadline) noexcept nogil:
    # _timer_set for an entry a lookup just returned (cp = &entries[id], id in range)
    ct_timer_set_e(c.e.ct, cp, id, deadline)
    if deadline < c.next_due:
        c.next_due = deadline



cdef inline int64_t _timeout(const core_t *c, const conn_entry *cp) noexcept nogil:
    # cp->timeout as the kernel holds it when ip_vs_conn_put re-arms the timer: templates carry
    # the persistence timeout their service had when they were created (ip_vs_sched_persist;
    # a later edit of -p leaves them alone) until "expire later" set 60 s for good; connections
    # get the timeout of the state their last transition set.
    cdef const engine_t *e = &c.e
    if cp.flags & CF_TEMPLATE:
        if (cp.xflags & XF_EXPIRE_LATER) or cp.dest == CONN_NONE:
            return EXPIRE_LATER_NS
        if c.tpl_timeout != NULL:
            return <int64_t>c.tpl_timeout[cp - e.ct.entries] * NS
        return <int64_t>e.svcs[e.dests[cp.dest].svc].timeout_s * NS
    if cp.xflags & XF_FRESH:
        return FRESH_NS             # ip_vs_conn_new: 3 s until a state transition sets one
    return _proto_timeout(e, cp)


cdef void _conn_expire(core_t *c, uint32_t id, int64_t fire_ns, bint dropped) noexcept nogil:
    # ip_vs_conn_expire. `dropped`: deleted with cp->timeout = 0 (ip_vs_conn_del of a
    # controlled entry), which also drops a controller left with nothing to control.
    cdef conntab *t = c.e.ct
    cdef conn_entry *cp = &t.entries[id]
    cdef conn_entry *ctp
    cdef uint32_t ctl
    if cp.n_control > 0:
        # expire later: 60 s, and that timeout stays with the entry
        cp.xflags |= XF_EXPIRE_LATER
        _timer_set(c, id, fire_ns + EXPIRE_LATER_NS)
        return
    if (cp.xflags & XF_OUT_HASHED) and c.nat_hashed > 0:
        c.nat_hashed -= 1
    ct_unhash(t, id)
    ctl = cp.control
    if ctl != CONN_NONE:
        # ip_vs_control_del
        cp.control = CONN_NONE
        ctp = &t.entries[ctl]
        if ctp.n_control > 0:
            ctp.n_control -= 1
        if (dropped and ctp.n_control == 0
                and (not (ctp.flags & CF_TEMPLATE) or not (ctp.state & CTPL_S_ASSURED))):
            _conn_del(c, ctl, fire_ns)
    if cp.dest != CONN_NONE:
        dest_unbind(&c.e, cp)
    ct_release(t, id)
    c.n_expired += 1


cdef void _conn_del(core_t *c, uint32_t id, int64_t now) noexcept nogil:
    # ip_vs_conn_del: only an entry whose timer is still pending
    cdef conntab *t = c.e.ct
    cdef conn_entry *cp = &t.entries[id]
    if not (cp.xflags & XF_USED) or not (cp.xflags & XF_TIMER):
        return
    ct_timer_del(t, id)
    _conn_expire(c, id, now, cp.control != CONN_NONE)


cdef void _expire_due(core_t *c, int64_t now) noexcept nogil:
    # every timer with deadline <= now fires, earliest first. c.next_due is a lower bound of the
    # earliest deadline (every deadline set goes through _timer_set), so most packets skip this.
    cdef conntab *t = c.e.ct
    cdef uint32_t id
    cdef int64_t fire
    if now < c.next_due:
        return
    while ct_timer_next(t) <= now:
        id = ct_timer_pop(t, now)
        if id == CONN_NONE:
            break
        fire = t.entries[id].deadline_ns
        if fire > now:
            fire = now
        _conn_expire(c, id, fire, False)
    c.next_due = ct_timer_next(t)



cdef inline void _expire_now(core_t *c, uint32_t id) noexcept nogil:
    # ip_vs_conn_expire_now: a pending timer in the future moves to now
    cdef conn_entry *cp = &c.e.ct.entries[id]
    if (cp.xflags & XF_TIMER) and cp.deadline_ns > c.e.now_ns:
        _timer_set(c, id, c.e.now_ns)


cdef inline void _conn_put(core_t *c, uint32_t id) noexcept nogil:
    # ip_vs_conn_put: re-arm to now + timeout; one-packet entries expire at once
    cdef conn_entry *cp = &c.e.ct.entries[id]
    if cp.flags & CF_ONE_PACKET:
        _conn_expire(c, id, c.e.now_ns, False)
    else:
        _timer_set(c, id, c.e.now_ns + _timeout(c, cp))


cdef void _flush_nodest(core_t *c) noexcept nogil:
    # ip_vs_expire_nodest_conn_flush: delete every entry whose server is not AVAILABLE and that
    # controls nobody, then its controller if that now controls nobody
    cdef conntab *t = c.e.ct
    cdef conn_entry *cp
    cdef uint32_t id, ctl
    cdef uint64_t ctl_serial
    cdef int64_t now = c.flush_ns
    c.flush_pending = 0
    for id in range(t.hwm):
        cp = &t.entries[id]
        if not (cp.xflags & XF_USED) or (cp.flags & CF_ONE_PACKET):
            continue
        if cp.dest == CONN_NONE or _avail(&c.e, cp.dest):
            continue
        if cp.n_control > 0:
            continue
        ctl = cp.control
        ctl_serial = t.entries[ctl].serial if ctl != CONN_NONE else 0
        _conn_del(c, id, now)
        if ctl != CONN_NONE:
            cp = &t.entries[ctl]
            if (cp.xflags & XF_USED) and cp.serial == ctl_serial and cp.n_control == 0:
                _conn_del(c, ctl, now)


cdef inline void _clock(core_t *c, int64_t ts) noexcept nogil:
    if likely(ts >= c.e.now_ns and c.clock_set):
        c.e.now_ns = ts
    elif not c.clock_set:
        c.e.now_ns = ts
        c.clock_set = 1
    else:
        c.n_ts_backwards += 1       # out-of-order capture: the clock never runs backwards


cdef inline void _step_clock(core_t *c, int64_t ts) noexcept nogil:
    _clock(c, ts)
    if unlikely(c.flush_pending):
        _flush_nodest(c)
    if unlikely(c.e.now_ns >= c.next_due):
        _expire_due(c, c.e.now_ns)


cdef void _step_clock_slow(core_t *c, int64_t ts) noexcept nogil:
    _step_clock(c, ts)


cdef inline void _step_clock_burst(core_t *c, int64_t ts) noexcept nogil:
    # _step_clock inside a burst, which _burst_clock_start has prepared (the clock is set and no
    # flush is pending: only apply() queues one): the common case is one test, the clock moving
    # forward (or staying) short of the next deadline
    if likely((ts >= c.e.now_ns) & (ts < c.next_due)):
        c.e.now_ns = ts
    else:
        _step_clock_slow(c, ts)


cdef inline void _burst_clock_start(core_t *c, int64_t ts0) noexcept nogil:
    # what _step_clock does for a burst's first packet (ts0) beyond _step_clock_burst's test, in
    # its order: the clock set or moved to ts0 (a backwards ts0 is left to the packet's own step,
    # which counts it), then the pending flush; the packet's own step then runs the expiries
    if unlikely(not c.clock_set or c.flush_pending):
        if not c.clock_set or ts0 >= c.e.now_ns:
            _clock(c, ts0)
        if c.flush_pending:
            _flush_nodest(c)


# ---- netfilter conntrack model (old_ct) ---------------------------------------------------------

cdef inline bint _tracking(const core_t *c) noexcept nogil:
    return c.nf != NULL and c.e.conntrack != 0 and c.e.ct_model == CT_MODEL_TRACKER


cdef inline bint _old_ct(const core_t *c, const conn_entry *cp, int nf) noexcept nogil:
    # ip_vs_conn_uses_old_conntrack: the packet carries a confirmed conntrack (see variants.py);
    # nf: what the netfilter model said about this packet (NF_R_*), -1 when the protocol's
    # tracker is not modelled (then the simple rule applies)
    if c.e.conntrack == 0 or c.e.ct_model == CT_MODEL_NEVER:
        return False
    if c.e.ct_model == CT_MODEL_TRACKER and nf >= 0:
        return (nf & NF_R_CONFIRMED) != 0
    if c.e.ct_model == CT_MODEL_ALWAYS:
        return True
    if cp.flags & CF_NOOUTPUT:
        return True                 # the tracker saw the client side only: still confirmed
    return not PROTOS[cp.proto].tracker_reopens(cp)


cdef inline bint _uses_ct(const core_t *c, const conn_entry *cp, int nf) noexcept nogil:
    # ip_vs_conn_uses_conntrack (2016-2020): the entry has NFCT and the packet a conntrack
    if not (cp.flags & CF_NFCT) or c.e.conntrack == 0:
        return False
    if c.e.ct_model == CT_MODEL_TRACKER and nf >= 0:
        return nf != 0
    return c.e.ct_model != CT_MODEL_NEVER


# ---- statistics ------------------------------------------------------------------------------

cdef inline void _in_stats(engine_t *e, const conn_entry *cp, const pkt_desc *p) noexcept nogil:
    cdef dest_t *d
    cdef service_t *s
    if cp.dest == CONN_NONE or not _avail(e, cp.dest):
        return
    d = &e.dests[cp.dest]
    d.inpkts += 1
    d.inbytes += p.l3_len
    s = &e.svcs[d.svc]
    s.inpkts += 1
    s.inbytes += p.l3_len


cdef inline void _out_stats(engine_t *e, const conn_entry *cp, const pkt_desc *p) noexcept nogil:
    cdef dest_t *d
    cdef service_t *s
    if cp.dest == CONN_NONE or not _avail(e, cp.dest):
        return
    d = &e.dests[cp.dest]
    d.outpkts += 1
    d.outbytes += p.l3_len
    s = &e.svcs[d.svc]
    s.outpkts += 1
    s.outbytes += p.l3_len


cdef inline void _conn_stats(engine_t *e, const conn_entry *cp, int32_t svc) noexcept nogil:
    # ip_vs_conn_stats
    e.dests[cp.dest].conns += 1
    e.svcs[svc].conns += 1


# ---- entries and scheduling (ip_vs_conn_new, ip_vs_schedule, ip_vs_sched_persist, ip_vs_leave) --

cdef uint32_t _conn_new(core_t *c, uint8_t proto, uint8_t af, const uint8_t *caddr, uint16_t cport,
                        const uint8_t *vaddr, uint16_t vport, uint16_t dport, uint16_t flags,
                        uint32_t dest) noexcept nogil:
    cdef conntab *t = c.e.ct
    cdef conn_entry *cp
    cdef uint32_t id = ct_alloc(t)
    if id == CONN_NONE:
        return CONN_NONE
    cp = &t.entries[id]
    if c.nf != NULL:
        c.nf[id].state = 0          # no conntrack known for this entry yet
    memcpy(cp.caddr, caddr, 16)
    memcpy(cp.vaddr, vaddr, 16)
    cp.cport = cport
    cp.vport = vport
    cp.dport = dport
    cp.proto = proto
    cp.af = af
    cp.flags = flags
    cp.state = 0
    cp.dest = CONN_NONE
    cp.control = CONN_NONE
    cp.n_control = 0
    if dest != CONN_NONE:
        dest_bind(&c.e, dest, cp)
    if c.e.conntrack:
        cp.flags |= CF_NFCT
    if not (cp.flags & CF_ONE_PACKET):
        ct_hash_in(t, id)
        if ((cp.flags & CF_FWD_MASK) == CF_MASQ and cp.dest != CONN_NONE
                and not (cp.flags & CF_TEMPLATE)):
            ct_hash_out(t, id)
            c.nat_hashed += 1
    return id


cdef bint _check_template(core_t *c, uint32_t tid) noexcept nogil:
    # ip_vs_check_template: an unusable template is re-hashed under a key that never matches
    # (vport = dport = 0xffff, cport = 0) and left to expire; its timer is not refreshed
    cdef conntab *t = c.e.ct
    cdef conn_entry *ct = &t.entries[tid]
    cdef uint32_t dest = ct.dest
    if (dest == CONN_NONE or not _avail(&c.e, dest)
            or (c.e.expire_quiescent_template and c.e.dests[dest].weight == 0)):
        if ct.vport != 0xffff:
            ct_unhash(t, tid)
            ct.dport = 0xffff
            ct.vport = 0xffff
            ct.cport = 0
            ct_hash_in(t, tid)
        return False
    return True


cdef uint32_t _leave(core_t *c, const pkt_desc *p, int32_t svc, decision_t *d,
                     uint8_t drop_reason) noexcept nogil:
    # ip_vs_leave: the service exists but no server was chosen
    cdef service_t *s = &c.e.svcs[svc]
    cdef uint32_t id
    cdef uint16_t flags
    if c.e.cache_bypass and s.fwmark and _is_unicast(p.dst, p.af):
        flags = CF_BYPASS
        if (s.flags & SVC_F_ONEPACKET) and p.proto == IPPROTO_UDP:
            flags |= CF_ONE_PACKET
        id = _conn_new(c, p.proto, s.af, p.src, p.sport, p.dst, p.dport, 0, flags, CONN_NONE)
        if id == CONN_NONE:
            d.action = ACT_DROP
            d.reason = R_TABLE_FULL
            return CONN_NONE
        if d.reason == R_NONE:
            d.reason = R_CACHE_BYPASS
        return id
    if s.port == FTPPORT and p.dport != FTPPORT:
        d.action = ACT_PASS
        d.reason = R_FTP_OTHER_PORT
        return CONN_NONE
    d.action = ACT_DROP             # ICMP port unreachable to the client
    d.reason = drop_reason
    return CONN_NONE


cdef uint32_t _sched_persist(core_t *c, const pkt_desc *p, int32_t svc, decision_t *d) noexcept nogil:
    # ip_vs_sched_persist
    cdef engine_t *e = &c.e
    cdef conntab *t = e.ct
    cdef service_t *s = &e.svcs[svc]
    cdef conn_key k
    cdef uint8_t snet[16]
    cdef uint8_t tvaddr[16]
    cdef uint8_t tproto = p.proto
    cdef uint16_t tvport = 0
    cdef uint16_t tdport = 0
    cdef uint16_t cdport
    cdef uint16_t flags = 0
    cdef uint32_t tid, id, fw
    cdef int32_t dest
    cdef int i
    for i in range(16):
        snet[i] = p.src[i] & s.netmask[i]
    memcpy(tvaddr, p.dst, 16)
    if p.dport == s.port:
        if s.port != FTPPORT:
            tvport = p.dport
    elif s.fwmark:
        # fwmark template: <IPPROTO_IP, snet, 0, fwmark as the address, 0>
        tproto = IPPROTO_IP
        memset(tvaddr, 0, 16)
        fw = s.fwmark
        tvaddr[0] = (fw >> 24) & 0xff
        tvaddr[1] = (fw >> 16) & 0xff
        tvaddr[2] = (fw >> 8) & 0xff
        tvaddr[3] = fw & 0xff
    memset(&k, 0, sizeof(conn_key))
    memcpy(k.a, snet, 16)
    memcpy(k.b, tvaddr, 16)
    k.pa = 0
    k.pb = tvport
    k.proto = tproto
    k.af = s.af
    k.is_template = 1
    ct_key_hash(t, &k)
    tid = ct_lookup_in(t, &k)
    if tid == CONN_NONE or not _check_template(c, tid):
        dest = svc_schedule(e, svc, p)
        if dest < 0:
            return _leave(c, p, svc, d, R_NO_DEST)
        if p.dport == s.port and s.port != FTPPORT:
            tdport = e.dests[dest].port
        tid = _conn_new(c, tproto, s.af, snet, 0, tvaddr, tvport, tdport, CF_TEMPLATE, <uint32_t>dest)
        if tid == CONN_NONE:
            d.action = ACT_DROP
            d.reason = R_TABLE_FULL
            return CONN_NONE
        if c.tpl_timeout != NULL:
            c.tpl_timeout[tid] = s.timeout_s        # ct->timeout = svc->timeout
    else:
        dest = <int32_t>t.entries[tid].dest
    cdport = p.dport
    if cdport == s.port and e.dests[dest].port:
        cdport = e.dests[dest].port
    if (s.flags & SVC_F_ONEPACKET) and p.proto == IPPROTO_UDP:
        flags = CF_ONE_PACKET
    id = _conn_new(c, p.proto, p.af, p.src, p.sport, p.dst, p.dport, cdport, flags, <uint32_t>dest)
    if id == CONN_NONE:
        _conn_put(c, tid)
        d.action = ACT_DROP
        d.reason = R_TABLE_FULL
        return CONN_NONE
    # ip_vs_control_add, then the template's timer restarts with its timeout
    t.entries[id].control = tid
    t.entries[tid].n_control += 1
    _conn_put(c, tid)
    _conn_stats(e, &t.entries[id], svc)
    d.flags |= DF_TEMPLATE
    return id


cdef uint32_t _schedule(core_t *c, const pkt_desc *p, int32_t svc, decision_t *d) noexcept nogil:
    # ip_vs_schedule; returns the new entry or CONN_NONE with the decision filled
    cdef engine_t *e = &c.e
    cdef service_t *s = &e.svcs[svc]
    cdef int32_t dest
    cdef uint32_t id
    cdef uint16_t flags = 0
    cdef uint16_t dport
    if p.sport == FTPDATA:
        d.action = ACT_PASS          # never schedule active FTP data connections
        d.reason = R_FTP_DATA
        return CONN_NONE
    if s.flags & SVC_F_PERSISTENT:
        return _sched_persist(c, p, svc, d)
    if not s.fwmark and p.dport != s.port:
        # only port-0 and FTP services are found for another port; port 0 needs persistence
        return _leave(c, p, svc, d, R_PORT_ZERO)
    dest = svc_schedule(e, svc, p)
    if dest < 0:
        return _leave(c, p, svc, d, R_NO_DEST)
    if (s.flags & SVC_F_ONEPACKET) and p.proto == IPPROTO_UDP:
        flags = CF_ONE_PACKET
    dport = e.dests[dest].port if e.dests[dest].port else p.dport
    id = _conn_new(c, p.proto, p.af, p.src, p.sport, p.dst, p.dport, dport, flags, <uint32_t>dest)
    if id == CONN_NONE:
        d.action = ACT_DROP
        d.reason = R_TABLE_FULL
        return CONN_NONE
    _conn_stats(e, &e.ct.entries[id], svc)
    return id


# ---- the hooks -------------------------------------------------------------------------------

cdef void _handle_response(core_t *c, const proto_ops *ops, uint32_t id, const pkt_desc *p,
                           decision_t *d) noexcept nogil:
    # handle_response: NAT replies are un-NATed; since v5.11 replies of DR/TUN entries get the
    # same statistics and OUTPUT transition. No AVAILABLE check on this path (errata 3).
    cdef engine_t *e = &c.e
    cdef conn_entry *cp = &e.ct.entries[id]
    d.dir = DIR_OUT
    d.old_state = cp.state
    if _tracking(c) and ops.nf_track != NULL:
        ops.nf_track(&c.nf[id], IP_VS_DIR_OUTPUT, p, e.now_ns)
    _out_stats(e, cp, p)
    _set_state(e, ops, cp, IP_VS_DIR_OUTPUT, p)
    cp.xflags &= ~(<uint8_t>XF_FRESH)
    d.action = ACT_HIT
    _dec_entry(e, d, cp)
    _conn_put(c, id)


cdef bint _nat_rs_no_conn(core_t *c, const pkt_desc *p) noexcept nogil:
    # ip_vs_has_real_service: the source is a linked NAT real server of a service of this
    # protocol (TCP, UDP and SCTP only)
    cdef engine_t *e = &c.e
    cdef uint32_t i
    cdef dest_t *dp
    cdef service_t *s
    if not (p.proto == IPPROTO_TCP or p.proto == IPPROTO_UDP or p.proto == IPPROTO_SCTP):
        return False
    for i in range(e.n_dests):
        dp = &e.dests[i]
        if not (dp.flags & DEST_F_AVAILABLE) or dp.fwd != CF_MASQ:
            continue
        if dp.af != p.af or dp.port != p.sport or memcmp(dp.addr, p.src, 16) != 0:
            continue
        s = &e.svcs[dp.svc]
        if s.fwmark or s.proto == p.proto:
            return True
    return False


cdef void _local_reset(core_t *c, uint32_t id, const pkt_desc *p) noexcept nogil:
    # A TCP segment IPVS let through reaches the director's own stack, which (no socket on
    # VIP:vport) answers with an RST. That RST leaves through ip_vs_out_hook (LOCAL_OUT); since
    # v5.11 its non-NAT rule (source = vaddr:vport) matches a DR/TUN entry of the tuple, so the
    # OUTPUT transition runs and ip_vs_conn_put re-arms the timer: an entry just expired by the
    # server-status block stays, in CLOSE, for 10 s (observed on 6.1).
    cdef engine_t *e = &c.e
    cdef conn_entry *cp
    cdef pkt_desc rst
    if id == CONN_NONE or p.proto != IPPROTO_TCP or (p.tcp_flags & 0x04):
        return
    cp = &e.ct.entries[id]
    if not (cp.xflags & XF_USED) or (cp.flags & CF_FWD_MASK) == CF_MASQ or not e.dr_reply_inspection:
        return
    rst = p[0]
    # tcp_v4_send_reset: RST (seq = the segment's ack) or, without ACK, RST+ACK
    rst.tcp_flags = 0x04 if (p.tcp_flags & 0x10) else 0x14
    if _tracking(c) and PROTOS[IPPROTO_TCP].nf_track != NULL:
        PROTOS[IPPROTO_TCP].nf_track(&c.nf[id], IP_VS_DIR_OUTPUT, &rst, e.now_ns)
    _out_stats(e, cp, &rst)
    _set_state(e, &PROTOS[IPPROTO_TCP], cp, IP_VS_DIR_OUTPUT, &rst)
    cp.xflags &= ~(<uint8_t>XF_FRESH)
    _conn_put(c, id)


cdef int _reuse_block(core_t *c, const proto_ops *ops, uint32_t id, decision_t *d,
                      int nf) noexcept nogil:
    # A SYN/INIT on an existing entry (ip_vs_in_hook, section 6.1 and its history, 6.6).
    # Returns 0: the packet stays on the entry; 1: the entry was expired, schedule the packet
    # anew (d.reason says why); 2: the packet was dropped (decision filled).
    cdef engine_t *e = &c.e
    cdef conn_entry *cp = &e.ct.entries[id]
    cdef int mode = e.conn_reuse_mode
    cdef bint weight0 = (e.expire_nodest_conn != 0 and cp.dest != CONN_NONE
                         and e.dests[cp.dest].weight == 0)
    cdef bint resched = False
    cdef bint oldct = False
    cdef uint8_t reason = R_NONE
    cdef uint8_t variant = e.reuse_variant
    if variant != REUSE_2021 and mode == 0:
        return 0                    # before v5.16 conn_reuse_mode 0 disables the whole block
    if weight0:
        resched = True
        reason = R_REUSE_WEIGHT0
        if variant == REUSE_2016:
            oldct = _uses_ct(c, cp, nf)
        elif variant != REUSE_2015:
            oldct = _old_ct(c, cp, nf)
    elif mode != 0 and ops.is_new_conn_expected(cp, mode, c.close_expected):
        reason = R_REUSE_EXPECTED
        if variant == REUSE_2015:
            resched = True
        else:
            oldct = _uses_ct(c, cp, nf) if variant == REUSE_2016 else _old_ct(c, cp, nf)
            # a controlling entry that uses conntrack is not rescheduled while it controls others
            resched = cp.n_control == 0 or not oldct
    if not resched:
        return 0
    if not oldct and (variant == REUSE_2020 or variant == REUSE_2021):
        cp.flags &= ~(<uint16_t>CF_NFCT)   # expiring the old entry must not kill the new conntrack
    if cp.n_control == 0:
        _expire_now(c, id)
    if oldct:
        d.action = ACT_DROP
        d.reason = R_CONNTRACK_DROP
        _dec_entry(e, d, cp)
        return 2
    d.reason = reason
    return 1


cdef void _in_hook(core_t *c, const proto_ops *ops, const pkt_desc *p, uint32_t id,
                   decision_t *d) noexcept nogil:
    cdef engine_t *e = &c.e
    cdef conntab *t = e.ct
    cdef conn_entry *cp
    cdef int r
    cdef int32_t svc
    cdef uint8_t refuse
    cdef bint from_nodest = False
    cdef bint replaced = False
    cdef bint old_ct
    cdef bint tracking = _tracking(c) and ops.nf_track != NULL
    cdef int nf = -1
    cdef uint32_t old_id = CONN_NONE
    d.dir = DIR_IN
    if id != CONN_NONE:
        cp = &t.entries[id]
        d.old_state = cp.state
        old_id = id
        if tracking:
            # netfilter (PREROUTING) sees the packet before IPVS (LOCAL_IN)
            nf = ops.nf_track(&c.nf[id], IP_VS_DIR_INPUT, p, e.now_ns)
        if _is_new_conn(ops, p):
            d.flags |= DF_REUSE
            d.reuse_of = cp.serial
            r = _reuse_block(c, ops, id, d, nf)
            if r == 2:
                return
            if r == 1:
                id = CONN_NONE
                replaced = True
    if id != CONN_NONE:
        cp = &t.entries[id]
        if cp.dest != CONN_NONE and not _avail(e, cp.dest):
            # check the server status
            if e.nodest_block_v59 and e.expire_nodest_conn:
                old_ct = _old_ct(c, cp, nf)
                if not old_ct:
                    cp.flags &= ~(<uint16_t>CF_NFCT)
                _expire_now(c, id)
                if old_ct:
                    d.action = ACT_DROP
                    d.reason = R_NODEST_CONNTRACK
                    _dec_entry(e, d, cp)
                    return
                d.reuse_of = cp.serial
                d.reason = R_DEST_DELETED
                id = CONN_NONE
                replaced = True
                from_nodest = True
            else:
                # dropped silently; the timer is not refreshed (before v5.9 this check ran
                # after scheduling and also expired the entry with expire_nodest_conn)
                if not e.nodest_block_v59 and e.expire_nodest_conn:
                    _expire_now(c, id)
                if tracking and (nf & NF_R_NEW):
                    c.nf[id].state = 0  # the dropped packet's new conntrack is never confirmed
                d.action = ACT_DROP
                d.reason = R_DEST_UNAVAILABLE
                _dec_entry(e, d, cp)
                return
    if id == CONN_NONE:
        # ip_vs_try_to_schedule -> protocol conn_schedule -> ip_vs_schedule
        refuse = ops.conn_schedule(e, p)
        svc = svc_find(e, p.proto, p.af, p.dst, p.dport, p.fwmark)
        if refuse or svc < 0:
            d.action = ACT_PASS
            if from_nodest:
                d.reason = R_NODEST_EXPIRED
                _local_reset(c, old_id, p)
            elif refuse == R_RELATED_ONLY:
                d.reason = refuse
            elif svc < 0:
                d.reason = R_NO_SERVICE
                if not replaced:
                    d.dir = DIR_NONE
            else:
                d.reason = refuse
            if svc >= 0:
                d.svc = svc
            return
        d.svc = svc
        id = _schedule(c, p, svc, d)
        if id == CONN_NONE:
            return
        d.action = ACT_RESCHED if replaced else ACT_NEW
        if tracking:
            if old_id != CONN_NONE:
                c.nf[id] = c.nf[old_id]     # the tuple's conntrack after this packet
            else:
                ops.nf_track(&c.nf[id], IP_VS_DIR_INPUT, p, e.now_ns)
    else:
        d.action = ACT_HIT
    cp = &t.entries[id]
    _in_stats(e, cp, p)
    _set_state(e, ops, cp, IP_VS_DIR_INPUT, p)
    cp.xflags &= ~(<uint8_t>XF_FRESH)
    _dec_entry(e, d, cp)
    _conn_put(c, id)


cdef void _icmp(core_t *c, const pkt_desc *p, decision_t *d) noexcept nogil:
    # An ICMP error (DEST_UNREACH, SOURCE_QUENCH, TIME_EXCEEDED; ICMPv6 errors) is mapped to the
    # connection of the packet it embeds. ip_vs_out_icmp (out hook) first: an error from a real
    # server about a client packet (embedded client -> real server for NAT; client -> VIP for
    # DR/TUN since v5.11, when the director is on the reply path); then ip_vs_in_icmp: an error
    # from the client about a reply (embedded VIP -> client). The error is forwarded (NAT-ed)
    # with the statistics of its direction; the connection's state and timer do not change.
    # In front of the director a real server's error shows as VIP -> client about client ->
    # VIP (a NAT director rewrote it so): it goes as that entry's replies go there.
    cdef engine_t *e = &c.e
    cdef conntab *t = e.ct
    cdef conn_key k
    cdef uint32_t id
    cdef int32_t svc
    cdef conn_entry *cp
    cdef pkt_desc q
    d.flags |= DF_ICMP
    if not (p.ic_proto == IPPROTO_TCP or p.ic_proto == IPPROTO_UDP or p.ic_proto == IPPROTO_SCTP):
        d.action = ACT_PASS
        d.reason = R_ICMP_UNRELATED
        return
    if p.af == 6 and (p.frag & 1):
        d.action = ACT_DROP         # an error message is never fragmented (ip_vs_in_icmp_v6)
        d.reason = R_ICMP_FRAGMENTED
        return
    # the embedded packet, reversed: a = its destination, b = its source
    memset(&k, 0, sizeof(conn_key))
    memcpy(k.a, p.ic_dst, 16)
    memcpy(k.b, p.ic_src, 16)
    k.pa = p.ic_dport
    k.pb = p.ic_sport
    k.proto = p.ic_proto
    k.af = p.af
    ct_key_hash(t, &k)
    # ip_vs_out_icmp
    id = ct_lookup_out(t, &k) if c.nat_hashed else CONN_NONE
    if id == CONN_NONE and c.dr_inspect and e.dr_reply_inspection:
        id = _lookup_swapped_nonnat(c, &k)
    if id != CONN_NONE:
        _icmp_reply_hit(e, &t.entries[id], p, d)
        return
    # ip_vs_in_icmp
    d.dir = DIR_IN
    id = ct_lookup_in(t, &k) if k.pa else CONN_NONE
    if id == CONN_NONE and (c.vip_filter_off or _filter_hit(c.vip_filter, p.src)):
        id = _lookup_swapped(c, &k)
        if id != CONN_NONE and memcmp(t.entries[id].vaddr, p.src, 16) == 0:
            _icmp_front_reply(c, p, id, d)
            return
        id = CONN_NONE
    if id == CONN_NONE:
        if not e.schedule_icmp:
            d.action = ACT_PASS
            d.reason = R_ICMP_NO_CONN
            return
        # schedule_icmp: the embedded tuple schedules a new connection as its client's packet
        # would (without the SYN/INIT admission rule); the ICMP is forwarded to its server
        q = p[0]
        memcpy(q.src, p.ic_dst, 16)
        memcpy(q.dst, p.ic_src, 16)
        q.sport = p.ic_dport
        q.dport = p.ic_sport
        q.proto = p.ic_proto
        q.tcp_flags = 0
        svc = svc_find(e, q.proto, q.af, q.dst, q.dport, q.fwmark)
        if svc < 0:
            d.action = ACT_PASS
            d.reason = R_ICMP_NO_CONN
            return
        d.svc = svc
        id = _schedule(c, &q, svc, d)
        if id == CONN_NONE:
            return
        cp = &t.entries[id]
        cp.xflags |= XF_FRESH
        _in_stats(e, cp, p)
        d.action = ACT_NEW
        _dec_entry(e, d, cp)
        d.state = STATE_NONE
        _conn_put(c, id)
        return
    cp = &t.entries[id]
    _in_stats(e, cp, p)
    d.action = ACT_HIT
    _dec_entry(e, d, cp)
    d.state = STATE_NONE


cdef void _icmp_reply_hit(engine_t *e, conn_entry *cp, const pkt_desc *p, decision_t *d) noexcept nogil:
    # an ICMP error forwarded in the reply direction of cp: out statistics, no state change
    d.dir = DIR_OUT
    _out_stats(e, cp, p)
    d.action = ACT_HIT
    _dec_entry(e, d, cp)
    d.state = STATE_NONE


cdef uint32_t _lookup_swapped(core_t *c, const conn_key *k) noexcept nogil:
    # the entry of the embedded client -> VIP tuple: in-index key (b, pb, a, pa)
    cdef conn_key k2
    memset(&k2, 0, sizeof(conn_key))
    memcpy(k2.a, k.b, 16)
    memcpy(k2.b, k.a, 16)
    k2.pa = k.pb
    k2.pb = k.pa
    k2.proto = k.proto
    k2.af = k.af
    ct_key_hash(c.e.ct, &k2)
    return ct_lookup_in(c.e.ct, &k2)


cdef uint32_t _lookup_swapped_nonnat(core_t *c, const conn_key *k) noexcept nogil:
    # the non-NAT out rule for the embedded client -> VIP tuple
    cdef uint32_t id = _lookup_swapped(c, k)
    if id != CONN_NONE and (c.e.ct.entries[id].flags & CF_FWD_MASK) == CF_MASQ:
        return CONN_NONE
    return id


cdef void _icmp_front_reply(core_t *c, const pkt_desc *p, uint32_t id, decision_t *d) noexcept nogil:
    # A real server's error about a client packet as captured in front of the director: VIP ->
    # client, quoting client -> VIP. A NAT director sent it so (handle_response_icmp rewrote
    # the outer source and the quoted packet): it is a reply of entry id, as its TCP/UDP/SCTP
    # replies are there. A DR/TUN server's error reaches the director only where its replies
    # do (dr_replies="inspect", v5.11+), and there ip_vs_out_icmp has matched it already;
    # otherwise it is one of the replies the director never sees.
    cdef engine_t *e = &c.e
    cdef conn_entry *cp = &e.ct.entries[id]
    if (cp.flags & CF_FWD_MASK) == CF_MASQ:
        _icmp_reply_hit(e, cp, p, d)
        return
    d.dir = DIR_OUT
    d.action = ACT_PASS
    d.reason = R_DR_REPLY_IGNORED if c.dr_inspect else R_DR_REPLY_NOT_SEEN
    d.old_state = cp.state
    _dec_entry(e, d, cp)


cdef inline void _dec_hit(decision_t *d, const pkt_desc *p, const conn_entry *cp, int32_t svc,
                          uint8_t dir, uint8_t old_state) noexcept nogil:
    # the whole record of a packet forwarded on an entry with a real server, in one pass
    # (what _dec_init and _dec_entry write for it)
    cdef uint16_t cf = cp.flags
    cdef uint32_t fw, w4
    d.pkt = p.index
    d.ts_ns = p.ts_ns
    d.conn = cp.serial
    d.reuse_of = 0
    d.rs = <int32_t>cp.dest
    d.svc = svc
    if IPVS_LE:
        # the narrow fields as words: action .. proto, state .. _pad (DF_NOOUTPUT is
        # CF_NOOUTPUT >> 4), dport with vport (the entry's vport, dport swapped), fwd with _pad2
        w4 = ACT_HIT | (R_NONE << 8) | ((<uint32_t>dir) << 16) | ((<uint32_t>p.proto) << 24)
        memcpy(&d.action, &w4, 4)
        w4 = (<uint32_t>cp.state) | ((<uint32_t>old_state) << 8) | ((<uint32_t>(cf & CF_NOOUTPUT)) << 12)
        memcpy(&d.state, &w4, 4)
        memcpy(&w4, &cp.vport, 4)
        w4 = (w4 >> 16) | (w4 << 16)
        memcpy(&d.dport, &w4, 4)
        fw = cf & CF_FWD_MASK
        memcpy(&d.fwd, &fw, 4)
    else:
        d.action = ACT_HIT
        d.reason = R_NONE
        d.dir = dir
        d.proto = p.proto
        d.state = cp.state
        d.old_state = old_state
        d.dport = cp.dport
        d.vport = cp.vport
        d.flags = DF_NOOUTPUT if (cp.flags & CF_NOOUTPUT) else 0
        d._pad = 0
        d.fwd = cp.flags & CF_FWD_MASK
        d._pad2[0] = 0
        d._pad2[1] = 0
        d._pad2[2] = 0
    memcpy(d.vaddr, cp.vaddr, 16)


cdef inline void _hit_stats(dest_t *dp, service_t *s, int direction, uint64_t l3_len) noexcept nogil:
    # in or out statistics without a branch (directions mix at random in a capture):
    # inpkts, outpkts, inbytes, outbytes follow each other in both structs
    (&dp.inpkts)[direction] += 1
    (&dp.inbytes)[direction] += l3_len
    (&s.inpkts)[direction] += 1
    (&s.inbytes)[direction] += l3_len


cdef inline bint _fast_hit(core_t *c, const proto_ops *ops, const pkt_desc *p, uint32_t id,
                           int direction, decision_t *d) noexcept nogil:
    # The common case in one pass: a packet on an existing entry bound to an available real
    # server, with nothing else to decide (not a SYN/INIT that may reuse the entry, no
    # netfilter model to run). Does exactly what _in_hook (IP_VS_DIR_INPUT) or
    # _handle_response (IP_VS_DIR_OUTPUT) do with such a packet; False: nothing done, take them.
    # One protocol dispatch: the checks that may refuse come before any change, in any order.
    # A TCP or UDP packet's entry has its protocol (the lookups compare it); AH/ESP run on a
    # UDP entry (_proto_timeout of cp).
    cdef engine_t *e = &c.e
    cdef conn_entry *cp = &e.ct.entries[id]
    cdef uint32_t dest = cp.dest
    cdef uint8_t old_state = cp.state
    cdef uint8_t proto = p.proto
    cdef uint64_t l3_len = p.l3_len
    cdef int64_t tmo
    cdef dest_t *dp
    cdef service_t *s
    if unlikely(dest == CONN_NONE or (_tracking(c) and ops.nf_track != NULL)):
        return False
    dp = &e.dests[dest]
    if unlikely(not (dp.flags & DEST_F_AVAILABLE)):
        return False
    s = &e.svcs[dp.svc]
    # the state transition, and the timeout _conn_put re-arms: a hashed entry is neither a
    # one-packet entry nor (found by these lookups) a template, and XF_FRESH goes, so its
    # timeout is its protocol state's
    if proto == IPPROTO_TCP:
        if unlikely(direction == IP_VS_DIR_INPUT and tcp_is_new_conn_i(p)):
            return False
        _hit_stats(dp, s, direction, l3_len)
        tcp_set_state_i(e, TCP_TABLES[e.secure_tcp > 1], cp, direction, p.tcp_flags)
        tmo = tcp_timeout_i(e, cp)
    elif proto == IPPROTO_UDP:
        _hit_stats(dp, s, direction, l3_len)
        udp_set_state_i(e, cp, direction)
        tmo = udp_timeout_i(e)
    else:
        if unlikely(direction == IP_VS_DIR_INPUT and ops.is_new_conn(p)):
            return False
        _hit_stats(dp, s, direction, l3_len)
        ops.state_transition(e, cp, direction, p)
        tmo = _proto_timeout(e, cp)
    cp.xflags &= ~(<uint8_t>XF_FRESH)
    _dec_hit(d, p, cp, dp.svc, DIR_IN + direction, old_state)
    _timer_set_e(c, cp, id, e.now_ns + tmo)
    return True


cdef inline uint32_t _lookup_in_hinted(conntab *t, const conn_key *k, uint32_t hint) noexcept nogil:
    # ct_lookup_in for a packet whose entry the burst pipeline has peeked: an index holds at
    # most one in-hashed entry per in-key (an equal key takes over the slot and unflags the
    # older entry), so a hint that is in-hashed under an equal key is what the probe would
    # return. It saves the probe; a stale or colliding hint (the table changed since the
    # peek, or another key had the same signature) fails the check and takes the lookup.
    # k is a staged packet key (is_template 0): _ct_in_eq with the ports compared as one word
    # and the template test a bit test
    cdef const conn_entry *e
    cdef uint32_t ep, kp
    if hint != CONN_NONE:
        e = &t.entries[hint]
        memcpy(&ep, &e.cport, 4)        # cport, vport
        memcpy(&kp, &k.pa, 4)           # pa, pb
        if ((e.xflags & XF_IN_HASHED) != 0 and ep == kp and e.proto == k.proto and e.af == k.af
                and (e.flags & CF_TEMPLATE) == 0 and eq32_a(e.caddr, k.a)):
            return hint
    return ct_lookup_in(t, k)


cdef inline void _process_packet(core_t *c, const pkt_desc *p, key_slot *slot,
                                 decision_t *d) noexcept nogil:
    # slot.key.hash != 0: the packet parsed, its protocol is modelled (so it is no ICMP error),
    # and slot.key is its hashed in-key (_stage_key); slot.hint: the entry its peek found
    # (_stage_entry); slot.rs: its source passes rs_filter. Inline: the fast path becomes part
    # of the burst loop; everything else is in _process_general.
    cdef conn_key *key = &slot.key
    cdef uint32_t hash = key.hash
    cdef uint32_t hint = slot.hint
    cdef uint16_t pa = key.pa
    cdef bint rs = slot.rs
    cdef uint32_t id = CONN_NONE
    cdef int direction = IP_VS_DIR_INPUT
    cdef bint in_done = False
    _step_clock_burst(c, p.ts_ns)
    if likely(hash != 0):
        # the lookups of the general path, in its order: a NAT real server's packet is first
        # looked up as a reply (out index), any other as a client's (in index)
        if rs and (c.nat_hashed != 0 or c.e.nat_icmp_send != 0):
            if c.nat_hashed:
                id = ct_lookup_out(c.e.ct, key)
                direction = IP_VS_DIR_OUTPUT
        elif likely(pa != 0):
            id = _lookup_in_hinted(c.e.ct, key, hint)
            in_done = True
        if likely(id != CONN_NONE) and likely(_fast_hit(c, &PROTOS[p.proto], p, id, direction, d)):
            return
        if direction == IP_VS_DIR_OUTPUT:
            id = CONN_NONE              # the general path does the out-lookup again
    _dec_init(d, p)
    _process_general(c, p, key, d, id, in_done)


cdef void _process_general(core_t *c, const pkt_desc *p, conn_key *key, decision_t *d,
                           uint32_t in_id, bint in_done) noexcept nogil:
    # Every packet the fast path did not finish. in_done: the packet's source cannot be a NAT
    # real server (the out hook has nothing to do) and in_id is its in-lookup's result.
    cdef engine_t *e = &c.e
    cdef conntab *t = e.ct
    cdef const proto_ops *ops
    cdef uint32_t id
    cdef conn_entry *cp
    cdef conn_key k2
    if p.status != PS_OK:
        d.action = ACT_INVALID
        d.reason = _status_reason(p.status)
        return
    if (p.proto == IPPROTO_ICMP or p.proto == IPPROTO_ICMPV6) and _is_icmp_error(p):
        _icmp(c, p, d)
        return
    ops = &PROTOS[p.proto]
    if not ops.modelled:
        d.action = ACT_PASS
        d.reason = R_PROTO_NOT_MODELLED if ops.registered else R_NOT_IPVS_PROTO
        return
    # ip_vs_out_hook (LOCAL_IN, before the in hook): NAT replies from the real server
    if in_done:
        pass
    elif c.nat_hashed and _filter_hit(c.rs_filter, p.src):
        id = ct_lookup_out(t, key)
        if id != CONN_NONE:
            _handle_response(c, ops, id, p, d)
            return
        if e.nat_icmp_send and _nat_rs_no_conn(c, p):
            if not (p.proto == IPPROTO_TCP and (p.tcp_flags & 0x04)):
                d.action = ACT_DROP     # ICMP port unreachable to the real server
                d.reason = R_NAT_ICMP_SEND
                d.dir = DIR_OUT
                return
    elif e.nat_icmp_send and _filter_hit(c.rs_filter, p.src) and _nat_rs_no_conn(c, p):
        if not (p.proto == IPPROTO_TCP and (p.tcp_flags & 0x04)):
            d.action = ACT_DROP
            d.reason = R_NAT_ICMP_SEND
            d.dir = DIR_OUT
            return
    # __ip_vs_conn_in_get: a packet with client port 0 matches only NO_CPORT entries (FTP's
    # templates of data connections, not modelled), never an ordinary connection
    if in_done:
        id = in_id
    else:
        id = ct_lookup_in(t, key) if key.pa else CONN_NONE
    if id == CONN_NONE and (c.vip_filter_off or _filter_hit(c.vip_filter, p.src)):
        # a reply VIP:vport -> client captured in front of the director
        _key_swapped(&k2, p)
        ct_key_hash(t, &k2)
        id = ct_lookup_in(t, &k2)
        if id != CONN_NONE:
            cp = &t.entries[id]
            if (cp.flags & CF_FWD_MASK) != CF_MASQ and not (c.dr_inspect and e.dr_reply_inspection):
                if c.dr_inspect and _tracking(c) and ops.nf_track != NULL:
                    # on the director's path: netfilter sees it even though IPVS ignores it
                    ops.nf_track(&c.nf[id], IP_VS_DIR_OUTPUT, p, e.now_ns)
                d.dir = DIR_OUT
                d.action = ACT_PASS
                d.reason = R_DR_REPLY_IGNORED if c.dr_inspect else R_DR_REPLY_NOT_SEEN
                d.old_state = cp.state
                _dec_entry(e, d, cp)
                return
            _handle_response(c, ops, id, p, d)
            return
    _in_hook(c, ops, p, id, d)


cdef inline void _stage_key(core_t *c, const pkt_desc *p, key_slot *sl, const uint64_t *hkeys,
                            const uint64_t *si, uint64_t mi) noexcept nogil:
    # burst pipeline, first stage: the packet's in-key (the out-key of a reply from a real
    # server has the same fields), hashed once for every lookup of the packet, into its ring
    # slot sl, and the index slots its lookups will read prefetched. hash 0 (never a real
    # signature): no key. The turn's constants in locals (stores into the slot would reload
    # them): hkeys the table's hash seeds, si the in index's slot array while it is settled
    # (mask mi), else NULL.
    cdef conn_key *k = &sl.key
    cdef uint8_t kind = KEY_KIND[p.proto]
    cdef bint rs, out
    if likely(p.status == PS_OK and kind != KK_NONE):
        _key_from_pkt(hkeys, k, p, kind == KK_ISAKMP)
        rs = _filter_hit(c.rs_filter, p.src)
        out = rs and c.nat_hashed != 0
        sl.rs = rs
        sl.out = out
        # a real server's packet is a reply the out index finds: its in-lookup (only after an
        # out miss) is not worth a line
        if out:
            ct_prefetch_out(c.e.ct, k.hash)
        elif si != NULL:
            ct_prefetch_slot_s(si, mi, k.hash)
        else:
            ct_prefetch_in(c.e.ct, k.hash)
    else:
        k.hash = 0


cdef inline void _stage_entry(core_t *c, key_slot *sl, const uint64_t *si, uint64_t mi,
                              const uint8_t *ents) noexcept nogil:
    # second stage: the entry the first lookup will find, from its slot prefetched
    # PF_SLOT_AHEAD - PF_ENTRY_AHEAD packets earlier. Only a hint: the real lookups run in
    # packet order. si, mi as for _stage_key; ents: the table's entries.
    cdef uint32_t id = CONN_NONE
    cdef uint32_t h = sl.key.hash
    if h != 0:
        if sl.out:
            id = ct_peek_out(c.e.ct, h)
        elif si != NULL:
            id = _ct_peek_s(si, mi, h)
        else:
            id = ct_peek_in(c.e.ct, h)
        if id != CONN_NONE:
            ct_prefetch_entry_at(ents, id)
    sl.hint = id


cdef inline void _stage_control(core_t *c, uint32_t r) noexcept nogil:
    # third stage: the persistence template that controls the entry prefetched
    # PF_ENTRY_AHEAD - PF_CTL_AHEAD packets earlier (a state change to ESTABLISHED marks it
    # ASSURED; without this it is a second miss for that packet). Only a hint, as the others.
    cdef uint32_t id = c.ring[r].hint, ctl
    if id != CONN_NONE:
        ctl = c.e.ct.entries[id].control
        if ctl != CONN_NONE:
            ct_prefetch_entry(c.e.ct, ctl)


cdef enum:
    PF_CHUNK = 8                # packets per turn of the burst pipeline's stages

if (KEY_RING % PF_CHUNK or PF_SLOT_AHEAD % PF_CHUNK or PF_ENTRY_AHEAD % PF_CHUNK
        or PF_CHUNK > PF_SLOT_AHEAD - PF_ENTRY_AHEAD or PF_SLOT_AHEAD + PF_CHUNK > KEY_RING):
    raise ImportError("burst pipeline: PF_CHUNK must divide KEY_RING and the distances, and fit between them")


cdef void _process_burst(core_t *c, const pkt_desc *pkts, uint32_t n, decision_t *out) noexcept nogil:
    # Rolling software pipeline (the rte_hash bulk-lookup idea without its stalls): while
    # packet j is processed, the slots of packet j + PF_SLOT_AHEAD and the entry of packet
    # j + PF_ENTRY_AHEAD are being fetched, so misses are always in flight and none is waited
    # for. Each packet is still processed in order with the real lookups (a packet may create
    # the entry the next one finds). Even a table of a few thousand entries gains from it
    # (the other core's work evicts it from L1/L2); one of a thousand loses nothing.
    # _process_packet has this one call site: with a second one, the C compiler (core.c
    # exhausts its inlining budget) leaves the fast path out of line.
    # At 1M connections ~60% of the loop's time is spent at the stages' memory operations
    # (slot prefetch, peek, entry prefetch): it is bound by the rate of random DRAM accesses
    # (a slot and an entry per packet), not by the distances (24/8, 32/16 and 48/24 measure
    # the same as 16/8); each burst refills the pipeline (~2 ns per packet at 256).
    # The stages run a chunk of PF_CHUNK packets at a time, each in its own loop, ahead of the
    # chunk's packets: the per-packet bounds tests go, and each loop keeps its few values in
    # registers, walking its ring slots by pointer: a turn's packets start at a multiple of
    # PF_CHUNK and are at most PF_CHUNK (the first key and entry turns: from 0, at most
    # PF_SLOT_AHEAD + PF_CHUNK), and PF_CHUNK divides KEY_RING, so they never wrap. The
    # distances then vary within a chunk (a slot is peeked a chunk after its prefetch, an
    # entry prefetched 1 to 8 packets before its packet's turn).
    cdef uint32_t j, k, end, lim
    cdef uint32_t ks = 0, ke = 0                # next packet for the key / entry stage
    cdef key_slot *sl
    cdef const pkt_desc *pk
    cdef bint ctl_stage = c.tpl_bytes != 0      # only once there is a persistent service
    cdef conntab *t = c.e.ct
    cdef const uint64_t *hkeys = t.hkeys
    cdef const uint8_t *ents = <const uint8_t *>t.entries
    cdef const ct_index *ixi = <const ct_index *>t.in_idx
    cdef const uint64_t *si                     # a turn's in index slots (NULL: migrating)
    cdef uint64_t mi
    if n:
        _burst_clock_start(c, pkts[0].ts_ns)
    j = 0
    while j < n:
        end = j + PF_CHUNK if n - j > PF_CHUNK else n
        lim = end + PF_SLOT_AHEAD if n - end > PF_SLOT_AHEAD else n
        # the index grows only while packets are processed: fixed during the stages
        si = ixi.s if ixi.os == NULL else NULL
        mi = ixi.mask
        pk = &pkts[ks]
        sl = &c.ring[ks & KEY_RING_MASK]
        while ks < lim:
            _stage_key(c, pk, sl, hkeys, si, mi)
            ks += 1
            pk += 1
            sl += 1
        lim = end + PF_ENTRY_AHEAD if n - end > PF_ENTRY_AHEAD else n
        sl = &c.ring[ke & KEY_RING_MASK]
        while ke < lim:
            _stage_entry(c, sl, si, mi, ents)
            ke += 1
            sl += 1
        if ctl_stage:
            lim = end + PF_CTL_AHEAD if n - end > PF_CTL_AHEAD else n
            for k in range(j + PF_CTL_AHEAD, lim):
                _stage_control(c, k & KEY_RING_MASK)
        sl = &c.ring[j & KEY_RING_MASK]
        for k in range(j, end):
            _process_packet(c, &pkts[k], sl, &out[k])
            sl += 1
        j = end


# ---- decision dtype -----------------------------------------------------------------------------

cdef decision_t _dproto
cdef Py_ssize_t _doff(void *field):
    return <Py_ssize_t>(<char *>field - <char *>&_dproto)

DECISION_DTYPE = np.dtype({
    "names": ["pkt", "ts_ns", "conn", "reuse_of", "rs", "svc", "action", "reason", "dir",
              "proto", "state", "old_state", "flags", "dport", "vport", "fwd", "vaddr"],
    "formats": ["<u8", "<i8", "<u8", "<u8", "<i4", "<i4", "u1", "u1", "u1", "u1", "u1", "u1", "u1",
                "<u2", "<u2", "u1", ("u1", (16,))],
    "offsets": [_doff(&_dproto.pkt), _doff(&_dproto.ts_ns), _doff(&_dproto.conn),
                _doff(&_dproto.reuse_of), _doff(&_dproto.rs), _doff(&_dproto.svc),
                _doff(&_dproto.action), _doff(&_dproto.reason), _doff(&_dproto.dir),
                _doff(&_dproto.proto), _doff(&_dproto.state), _doff(&_dproto.old_state),
                _doff(&_dproto.flags), _doff(&_dproto.dport), _doff(&_dproto.vport),
                _doff(&_dproto.fwd), _doff(&_dproto.vaddr[0])],
    "itemsize": sizeof(decision_t),
})

REASON_COUNT = R_COUNT


def reason_codes():
    """name -> code of the reason enum compiled into the engine (checked against names.py)."""
    return {
        "": R_NONE, "fragment": R_FRAGMENT, "not_ip": R_NOT_IP,
        "unknown_linktype": R_UNKNOWN_LINKTYPE, "truncated": R_TRUNCATED, "malformed": R_MALFORMED,
        "not_ipvs_proto": R_NOT_IPVS_PROTO, "proto_not_modelled": R_PROTO_NOT_MODELLED,
        "no_service": R_NO_SERVICE, "not_syn": R_NOT_SYN, "rst_no_conn": R_RST_NO_CONN,
        "ftp_data": R_FTP_DATA, "ftp_other_port": R_FTP_OTHER_PORT,
        "dr_reply_not_seen": R_DR_REPLY_NOT_SEEN, "dr_reply_ignored": R_DR_REPLY_IGNORED,
        "nodest_expired": R_NODEST_EXPIRED, "no_dest": R_NO_DEST, "port_zero": R_PORT_ZERO,
        "conntrack_drop": R_CONNTRACK_DROP, "dest_unavailable": R_DEST_UNAVAILABLE,
        "nodest_conntrack_drop": R_NODEST_CONNTRACK, "table_full": R_TABLE_FULL,
        "nat_icmp_send": R_NAT_ICMP_SEND, "reuse_expected": R_REUSE_EXPECTED,
        "reuse_weight0": R_REUSE_WEIGHT0, "dest_deleted": R_DEST_DELETED,
        "cache_bypass": R_CACHE_BYPASS, "not_init": R_NOT_INIT, "abort_no_conn": R_ABORT_NO_CONN,
        "icmp_no_conn": R_ICMP_NO_CONN, "icmp_unrelated": R_ICMP_UNRELATED,
        "icmp_fragmented": R_ICMP_FRAGMENTED, "related_only": R_RELATED_ONLY,
    }


# ---- Python-side rendering helpers --------------------------------------------------------------

cdef str _addr_text(const uint8_t *a, int af):
    cdef bytes b = (<const char *>a)[:16]
    if af == 6:
        return str(ipaddress.IPv6Address(b))
    return str(ipaddress.IPv4Address(b[12:16]))


cdef str _endpoint(const uint8_t *a, int af, int port):
    if af == 6:
        return f"[{_addr_text(a, af)}]:{port}"
    return f"{_addr_text(a, af)}:{port}"


_fmt = str.__mod__     # printf-style formatting done by Python itself


def _i32(x):
    # C int of a u32 difference (ipvsadm's comparators subtract unsigned values into an int)
    x &= 0xFFFFFFFF
    return x - 0x100000000 if x & 0x80000000 else x


def _addr_words(bytes a16, int af):
    if af == 6:
        return [int.from_bytes(a16[i:i + 4], "big") for i in range(0, 16, 4)]
    return [int.from_bytes(a16[12:16], "big")]


def _cmp_services(s1, s2):
    # libipvs ipvs_cmp_services
    r = _i32(s1["fwmark"] - s2["fwmark"])
    if r:
        return r
    r = s1["_af_sock"] - s2["_af_sock"]
    if r:
        return r
    r = s1["proto"] - s2["proto"]
    if r:
        return r
    for w1, w2 in zip(s1["_words"], s2["_words"]):
        r = _i32(w1 - w2)
        if r:
            return r
    return s1["port"] - s2["port"]


def _cmp_dests(d1, d2):
    # libipvs ipvs_cmp_dests
    r = 0
    for w1, w2 in zip(d1["_words"], d2["_words"]):
        r = _i32(w1 - w2)
        if r:
            return r
    return d1["port"] - d2["port"]


def _largenum(int64_t i, bint exact=False):
    # ipvsadm print_largenum
    if exact:
        s = str(i)
        return _fmt("%*d", (9 if len(s) <= 8 else len(s) + 1, i))
    if i < 100000000:
        return _fmt("%9d", i)
    if i < 1000000000:
        return _fmt("%8dK", i // 1000)
    if i < 100000000000:
        return _fmt("%8dM", i // 1000000)
    if i < 100000000000000:
        return _fmt("%8dG", i // 1000000000)
    return _fmt("%8dT", i // 1000000000000)


_SYSCTLS = tuple(SYSCTL_DEFAULTS)
_DR_REPLIES = ("ignore", "inspect")


# ---- the Python API ----------------------------------------------------------------------------

cdef int _engine_burst(object engine, PacketBatch batch, uint32_t m, decision_t *out) except -1:
    cdef Engine e = <Engine?> engine
    if m > batch.count:
        raise ValueError(f"{m} packets asked of a batch of {batch.count}")
    return e._run(batch.pkts, m, out)


cdef class Engine:
    """The IPVS connection engine.

    ``Engine(config, *, capacity=256, max_conns=1 << 24, seed=0, dr_replies="ignore")`` builds
    the services and real servers of ``config`` (one add per server, in order, as
    ``ipvsadm -R`` does), its sysctls, ``ipvsadm --set`` timeouts and kernel variant
    (:mod:`ipvsflow.engine.variants`). ``capacity`` is the initial size of the decision buffer
    (it grows to the largest burst), ``max_conns`` the connection-table limit (entries beyond
    it are dropped with reason ``table_full``), ``seed`` the table's hash seed.
    ``dr_replies``: "ignore" (default) treats VIP -> client replies of DR/TUN connections as
    not seen by the director (the director is not on the reply path: they pass, reason
    ``dr_reply_not_seen``); "inspect" says they do pass the director, as when it is the real
    servers' gateway: kernels since 5.11 then run the OUTPUT state machine on them (clearing
    NOOUTPUT), older ones ignore them (reason ``dr_reply_ignored``).
    """
    cdef core_t *c
    cdef object _dec
    cdef decision_t *_decp
    cdef uint32_t _dec_cap
    cdef object _view               # _dec[:_view_len], handed out again while the length repeats
    cdef uint32_t _view_len
    cdef dict _variant
    cdef str _dr_replies
    cdef str _ct_model
    cdef object _kernel
    cdef Classifier _classifier      # firewall marks (Config.marks) for fwmark services; None: no rules

    def __cinit__(self):
        self.c = <core_t *>calloc(1, sizeof(core_t))
        if self.c == NULL:
            raise MemoryError()
        self._decp = NULL
        self._dec_cap = 0

    def __dealloc__(self):
        if self.c != NULL:
            if self.c.nf != NULL:
                munmap(self.c.nf, self.c.nf_bytes)
                self.c.nf = NULL
            if self.c.tpl_timeout != NULL:
                munmap(self.c.tpl_timeout, self.c.tpl_bytes)
                self.c.tpl_timeout = NULL
            if self.c.e.ct != NULL:
                ct_free_table(self.c.e.ct)
                self.c.e.ct = NULL
            svc_table_free(&self.c.e)
            free(self.c)
            self.c = NULL

    def __init__(self, config=None, *, capacity=256, max_conns=1 << 24, seed=0, dr_replies="ignore"):
        if config is None:
            config = Config()
        if not isinstance(config, Config):
            raise TypeError(f"config must be an ipvsflow.config.Config, not {type(config).__name__}")
        if dr_replies not in _DR_REPLIES:
            raise ValueError(f"dr_replies must be one of {_DR_REPLIES}, not {dr_replies!r}")
        capacity = int(capacity)
        max_conns = int(max_conns)
        if capacity < 1 or capacity > 1 << 24:
            raise ValueError(f"capacity {capacity} out of range 1..{1 << 24}")
        if max_conns < 1 or max_conns > MAX_CONNS:
            raise ValueError(f"max_conns {max_conns} out of range 1..{MAX_CONNS}")
        if self.c.e.ct != NULL or self.c.e.svcs != NULL:
            raise RuntimeError("Engine.__init__ called twice")
        cdef engine_t *e = &self.c.e
        e.ct = ct_new(<uint64_t>max_conns, 1024, <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF))
        if e.ct == NULL:
            raise MemoryError(f"cannot reserve a connection table for {max_conns} entries")
        svc_table_init(e)
        e.ct.dest_addr = &e.dests[0].addr[0]
        e.ct.dest_stride = sizeof(dest_t)
        self._dr_replies = dr_replies
        self.c.dr_inspect = dr_replies == "inspect"
        self._ct_model = "tracker"
        e.ct_model = CT_MODEL_TRACKER
        self._ensure_cap(capacity)
        # kernel defaults first, then the configuration
        self._set_kernel(config.kernel)
        for name, value in SYSCTL_DEFAULTS.items():
            self.set_sysctl(name, value)
        self._set_default_timeouts()
        for name, value in (config.sysctls or {}).items():
            self.set_sysctl(name, value)
        self.set_timeouts(*tuple(config.timeouts))
        for vs in config.services:
            self.apply(Command(op="add-service", service=vs, line=f"-A {vs.name()}",
                               source="<config>"))
            for rs in vs.dests:
                self.apply(Command(op="add-dest", service=vs, dest=rs,
                                   line=f"-a {vs.name()} -r {rs.endpoint()}", source="<config>"))
        self._rebuild_filters()
        self._classifier = Classifier(config.marks) if config.marks else None

    # -- setup ---------------------------------------------------------------------------------

    cdef int _ensure_cap(self, uint32_t n) except -1:
        cdef uint8_t[::1] raw
        if n <= self._dec_cap and self._dec is not None:
            return 0
        cap = max(n, self._dec_cap * 2, 1)
        arr = np.zeros(cap, dtype=DECISION_DTYPE)
        raw = arr.view(np.uint8)
        self._dec = arr
        self._decp = <decision_t *>&raw[0]
        self._dec_cap = cap
        self._view = None
        return 0

    cdef int _run(self, const pkt_desc *pk, uint32_t m, decision_t *out) except -1:
        # process()'s work: the firewall's prerouting marks (before IPVS sees the packets),
        # then the burst pipeline
        cdef core_t *c = self.c
        cdef const mark_table *marks = NULL
        if self._classifier is not None:
            marks = &self._classifier.t
        if m:
            with nogil:
                if marks != NULL:
                    classify_burst(marks, <pkt_desc *> pk, m)
                _process_burst(c, pk, m, out)
        return 0

    def _burst_entry(self):
        """A capsule of the C entry (``core.pxd: engine_burst_fn``) for loops in C."""
        return PyCapsule_New(<void *> _engine_burst, b"ipvsflow.engine_burst", NULL)

    cdef int _nf_alloc(self) except -1:
        # the netfilter-conntrack model's per-entry state, reserved like the entry slab
        # (untouched pages cost nothing)
        cdef uint64_t n
        cdef void *m
        if self.c.nf != NULL:
            return 0
        n = self.c.e.ct.max_entries * sizeof(nf_state)
        m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if m == MAP_FAILED:
            raise MemoryError("cannot reserve the conntrack-model table")
        self.c.nf = <nf_state *>m
        self.c.nf_bytes = n
        return 0

    cdef int _tpl_alloc(self) except -1:
        # per-template timeouts, needed once a persistent service exists; reserved like nf
        cdef uint64_t n
        cdef void *m
        if self.c.tpl_timeout != NULL:
            return 0
        n = self.c.e.ct.max_entries * sizeof(uint32_t)
        m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        if m == MAP_FAILED:
            raise MemoryError("cannot reserve the template timeout table")
        self.c.tpl_timeout = <uint32_t *>m
        self.c.tpl_bytes = n
        return 0

    def _set_kernel(self, kernel):
        v = _variants.variant_for(kernel)
        cdef engine_t *e = &self.c.e
        e.reuse_variant = v["reuse_variant"]
        e.nodest_block_v59 = v["nodest_block_v59"]
        e.nodest_flush = v["nodest_flush"]
        e.tcp_active_v48 = v["tcp_active_v48"]
        e.dr_reply_inspection = v["dr_reply_inspection"]
        self.c.close_expected = v["close_expected"]
        self._variant = v
        self._kernel = kernel

    def _set_default_timeouts(self):
        from ipvsflow.engine import proto_tcp, proto_udp
        cdef engine_t *e = &self.c.e
        cdef int i
        for i in range(12):
            e.tcp_timeout[i] = <int64_t>proto_tcp.DEFAULT_TIMEOUTS[i] * NS
        e.udp_timeout = <int64_t>proto_udp.DEFAULT_TIMEOUT * NS
        from ipvsflow.engine import proto_sctp
        for i in range(15):
            e.sctp_timeout[i] = <int64_t>proto_sctp.DEFAULT_TIMEOUTS[i] * NS

    def _rebuild_filters(self):
        cdef core_t *c = self.c
        cdef engine_t *e = &c.e
        cdef uint32_t i
        memset(c.rs_filter, 0, sizeof(c.rs_filter))
        memset(c.vip_filter, 0, sizeof(c.vip_filter))
        c.vip_filter_off = 0
        for i in range(e.n_dests):
            _filter_add(c.rs_filter, e.dests[i].addr)
        for i in range(e.n_svcs):
            if e.svcs[i].fwmark:
                c.vip_filter_off = 1
            _filter_add(c.vip_filter, e.svcs[i].addr)

    # -- processing ----------------------------------------------------------------------------

    def process(self, PacketBatch batch not None, start=0, stop=None):
        """Run packets ``[start, stop)`` of ``batch`` through the engine.

        Returns one decision per packet as a numpy structured array (``DECISION_DTYPE``) that is
        a view over the engine's own decision memory: it stays readable while you hold it, but
        the next ``process`` call overwrites it (copy it to keep it).
        """
        cdef uint32_t n = batch.count
        # exact ints (the usual case) convert directly; int() for anything else with __index__/__int__
        cdef Py_ssize_t s = 0 if start is None else (start if type(start) is int else int(start))
        cdef Py_ssize_t t = n if stop is None else (stop if type(stop) is int else int(stop))
        if s < 0 or t > n or s > t:
            raise ValueError(f"packet range [{start}, {stop}) is not within the batch's {n} packets")
        cdef uint32_t m = <uint32_t>(t - s)
        self._ensure_cap(m)
        self._run(batch.pkts + s, m, self._decp)
        # the same view object while the length repeats: slicing a structured array costs as
        # much per call as processing ~10 packets, and every view shows the same memory anyway
        if self._view is None or self._view_len != m:
            self._view = self._dec[:m]
            self._view_len = m
        return self._view

    def advance(self, int64_t ts_ns):
        """Move the clock to ``ts_ns`` (never backwards) and run what falls due: the pending
        expire_nodest_conn flush and every expiry with deadline <= ts_ns."""
        cdef core_t *c = self.c
        with nogil:
            _step_clock(c, ts_ns)

    def apply(self, cmd):
        """Apply an ipvsflow.config.Command at the current clock (call advance() first to place
        it in time). Service/real-server edits go through the service table with the kernel's
        side effects; deleting a server with expire_nodest_conn set (kernel >= 5.9) flushes its
        entries before the next packet. ConfigError on a bad request."""
        if not isinstance(cmd, Command):
            raise TypeError(f"apply() takes an ipvsflow.config.Command, not {type(cmd).__name__}")
        op = cmd.op
        if op == "set-timeouts":
            if cmd.timeouts is None or len(cmd.timeouts) != 3:
                raise ConfigError(f"{cmd.source}:{cmd.lineno}: --set needs three timeouts (tcp tcpfin udp)")
            self.set_timeouts(*cmd.timeouts)
            return None
        if op == "sysctl":
            if cmd.sysctl is None or len(cmd.sysctl) != 2:
                raise ConfigError(f"{cmd.source}:{cmd.lineno}: --sysctl needs name=value")
            self.set_sysctl(cmd.sysctl[0], cmd.sysctl[1])
            return None
        cdef engine_t *e = &self.c.e
        cdef uint32_t i
        before = [bool(e.dests[i].flags & DEST_F_AVAILABLE) for i in range(e.n_dests)]
        result = svc_apply(e, cmd)
        if self.c.tpl_timeout == NULL and any(
                e.svcs[i].flags & SVC_F_PERSISTENT for i in range(e.n_svcs)):
            self._tpl_alloc()
        e.ct.dest_addr = &e.dests[0].addr[0]
        e.ct.dest_stride = sizeof(dest_t)
        removed = any(before[i] and not (e.dests[i].flags & DEST_F_AVAILABLE)
                      for i in range(len(before)))
        if removed and e.expire_nodest_conn and e.nodest_flush:
            # __ip_vs_del_dest queues ip_vs_expire_nodest_conn_flush one jiffy later
            self.c.flush_pending = 1
            self.c.flush_ns = e.now_ns
        self._rebuild_filters()
        return result

    def set_sysctl(self, name, value):
        """Set one of /proc/sys/net/ipv4/vs (the names of ipvsflow.config.SYSCTL_DEFAULTS)."""
        if name not in _SYSCTLS:
            raise ConfigError(f"unknown sysctl {name!r} (known: {', '.join(_SYSCTLS)})")
        try:
            v = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"sysctl {name}: value {value!r} is not an integer")
        if not -0x80000000 <= v <= 0x7FFFFFFF:
            raise ConfigError(f"sysctl {name}: value {v} out of range")
        cdef engine_t *e = &self.c.e
        if name == "secure_tcp":
            if not 0 <= v <= 3:
                raise ConfigError(f"sysctl secure_tcp: value {v} out of range 0..3")
            # update_defense_level: 2 ("on while low on memory") reverts to 1 when memory is fine
            e.secure_tcp = 1 if v == 2 else v
        elif name == "conn_reuse_mode":
            e.conn_reuse_mode = v
        elif name == "expire_nodest_conn":
            e.expire_nodest_conn = v
        elif name == "expire_quiescent_template":
            e.expire_quiescent_template = v
        elif name == "conntrack":
            e.conntrack = v
            if v and e.ct_model == CT_MODEL_TRACKER:
                self._nf_alloc()
        elif name == "sloppy_tcp":
            e.sloppy_tcp = v
        elif name == "sloppy_sctp":
            e.sloppy_sctp = v
        elif name == "schedule_icmp":
            e.schedule_icmp = v
        elif name == "nat_icmp_send":
            e.nat_icmp_send = v
        elif name == "cache_bypass":
            e.cache_bypass = v

    def get_sysctl(self, name):
        if name not in _SYSCTLS:
            raise ConfigError(f"unknown sysctl {name!r}")
        cdef engine_t *e = &self.c.e
        return {"conn_reuse_mode": e.conn_reuse_mode, "expire_nodest_conn": e.expire_nodest_conn,
                "expire_quiescent_template": e.expire_quiescent_template, "conntrack": e.conntrack,
                "secure_tcp": e.secure_tcp, "sloppy_tcp": e.sloppy_tcp, "sloppy_sctp": e.sloppy_sctp,
                "schedule_icmp": e.schedule_icmp, "nat_icmp_send": e.nat_icmp_send,
                "cache_bypass": e.cache_bypass}[name]

    def set_timeouts(self, tcp, tcpfin, udp):
        """ipvsadm --set tcp tcpfin udp (seconds; 0 leaves a value unchanged). They set the
        ESTABLISHED, FIN_WAIT and UDP timeouts for transitions from now on."""
        vals = []
        for what, v in (("tcp", tcp), ("tcpfin", tcpfin), ("udp", udp)):
            try:
                iv = int(v)
            except (TypeError, ValueError):
                raise ConfigError(f"--set {what}: {v!r} is not a number of seconds")
            if iv < 0 or iv > INT_MAX // HZ:
                raise ConfigError(f"--set {what}: {iv} out of range 0..{INT_MAX // HZ}")
            vals.append(iv)
        cdef engine_t *e = &self.c.e
        if vals[0]:
            e.tcp_timeout[1] = <int64_t>vals[0] * NS        # ESTABLISHED
        if vals[1]:
            e.tcp_timeout[4] = <int64_t>vals[1] * NS        # FIN_WAIT
        if vals[2]:
            e.udp_timeout = <int64_t>vals[2] * NS

    def timeouts(self):
        """Current (tcp, tcpfin, udp) in seconds, as ipvsadm -L --timeout shows them."""
        cdef engine_t *e = &self.c.e
        return (e.tcp_timeout[1] // NS, e.tcp_timeout[4] // NS, e.udp_timeout // NS)

    # -- state -------------------------------------------------------------------------------

    @property
    def now_ns(self):
        """The engine clock (ns; 0 before the first packet or advance())."""
        return self.c.e.now_ns if self.c.clock_set else 0

    @property
    def conn_count(self):
        """Live entries (connections and persistence templates)."""
        return self.c.e.ct.live

    @property
    def variant(self):
        """The kernel-variant switches in force (see ipvsflow.engine.variants)."""
        return dict(self._variant)

    @property
    def kernel(self):
        return self._variant["kernel"]

    @property
    def dr_replies(self):
        return self._dr_replies

    @property
    def ct_model(self):
        """How old_ct is modelled: "tracker" (default), "simple", "never" or "always" (see
        ipvsflow.engine.variants)."""
        return self._ct_model

    @ct_model.setter
    def ct_model(self, value):
        if value not in _variants.CT_MODELS:
            raise ValueError(f"ct_model must be one of {tuple(_variants.CT_MODELS)}, not {value!r}")
        self._ct_model = value
        self.c.e.ct_model = _variants.CT_MODELS[value]
        if self.c.e.conntrack and self.c.e.ct_model == CT_MODEL_TRACKER:
            self._nf_alloc()

    @property
    def counters(self):
        """Engine-level counters: timestamps that ran backwards, entries expired."""
        return {"ts_backwards": self.c.n_ts_backwards, "expired": self.c.n_expired}

    def prefault(self, conns):
        """Commit the memory of the first ``conns`` connection entries now, so the first
        packets of a live director do not wait for the kernel to hand out fresh pages.
        Returns the bytes committed (the connection table itself is unchanged)."""
        conns = int(conns)
        if conns < 0:
            raise ValueError("conns must be >= 0")
        cdef uint64_t n = <uint64_t> conns
        with nogil:
            n = ct_prefault(self.c.e.ct, n)
        return n

    def memory(self):
        """Bytes per connection: the entry slab (80 B per id handed out) plus both indexes and
        the timer structure, over the live entries."""
        cdef conntab *t = self.c.e.ct
        live = t.live
        slab = <uint64_t>t.hwm * sizeof(conn_entry)
        idx = ct_index_bytes(t)
        return {
            "conn_count": live,
            "entry_bytes": sizeof(conn_entry),
            "slab_bytes": slab,
            "index_bytes": idx,
            "bytes_per_conn": (slab + idx) / live if live else 0.0,
            "decision_bytes": self._dec_cap * sizeof(decision_t),
            "dest_bytes": self.c.e.cap_dests * sizeof(dest_t),
        }

    # -- listings ------------------------------------------------------------------------------

    cdef dict _dest_dict(self, uint32_t i):
        cdef engine_t *e = &self.c.e
        cdef dest_t *d = &e.dests[i]
        return {
            "id": <int>i, "svc": d.svc, "addr": _addr_text(d.addr, d.af), "port": d.port,
            "af": d.af, "endpoint": _endpoint(d.addr, d.af, d.port),
            "fwd": FWD_NAMES.get(d.fwd, str(d.fwd)), "weight": d.weight,
            "u_threshold": d.u_threshold, "l_threshold": d.l_threshold,
            "activeconns": d.activeconns, "inactconns": d.inactconns,
            "persistconns": d.persistconns, "refcnt": d.refcnt,
            "available": bool(d.flags & DEST_F_AVAILABLE),
            "overload": bool(d.flags & DEST_F_OVERLOAD),
            "conns": d.conns, "inpkts": d.inpkts, "outpkts": d.outpkts,
            "inbytes": d.inbytes, "outbytes": d.outbytes,
            "_words": _addr_words((<const char *>d.addr)[:16], d.af),
        }

    cdef dict _svc_dict(self, uint32_t i):
        cdef engine_t *e = &self.c.e
        cdef service_t *s = &e.svcs[i]
        cdef int32_t d
        sched = SCHEDULERS[s.sched] if s.sched < len(SCHEDULERS) else str(s.sched)
        dests = []
        d = s.dest_head
        while d >= 0:
            dests.append(self._dest_dict(d))
            d = e.dests[d].next
        if s.fwmark:
            name = f"FWM  {s.fwmark}" + (" IPv6" if s.af == 6 else "")
            addr = ""
        else:
            addr = _addr_text(s.addr, s.af)
            name = _fmt("%-4s %s", (_names.proto_name(s.proto), _endpoint(s.addr, s.af, s.port)))
            if s.af != 6:
                name = name[:33]
        plen = 0
        for k in range(12 if s.af == 4 else 0, 16):
            plen += bin(s.netmask[k]).count("1")
        return {
            "id": <int>i, "name": name, "proto": s.proto, "af": s.af, "addr": addr,
            "port": s.port, "fwmark": s.fwmark, "scheduler": sched, "flags": s.flags,
            "persistent": bool(s.flags & SVC_F_PERSISTENT), "timeout": s.timeout_s,
            "netmask": plen, "ops": bool(s.flags & SVC_F_ONEPACKET),
            "conns": s.conns, "inpkts": s.inpkts, "outpkts": s.outpkts,
            "inbytes": s.inbytes, "outbytes": s.outbytes, "dests": dests,
            "_words": _addr_words((<const char *>s.addr)[:16], s.af),
            "_af_sock": 10 if s.af == 6 else 2,
        }

    def services(self):
        """Virtual services (in creation order) with their real servers in list order
        (newest first, the order every scheduler tie-break uses)."""
        cdef uint32_t i
        out = []
        for i in range(self.c.e.n_svcs):
            if self.c.e.svcs[i].used:
                sd = self._svc_dict(i)
                out.append(_public(sd))
        return out

    def dests(self):
        """Every real server by id (decision ``rs`` values index this list), including deleted
        ones still referenced by connections (``available`` False)."""
        cdef uint32_t i
        return [_public(self._dest_dict(i)) for i in range(self.c.e.n_dests)]

    def stats(self):
        """Services with their servers' counters and statistics, totals and table size."""
        cdef uint32_t i
        cdef engine_t *e = &self.c.e
        svcs = [_public(self._svc_dict(i)) for i in range(e.n_svcs) if e.svcs[i].used]
        tot = {"conns": 0, "inpkts": 0, "outpkts": 0, "inbytes": 0, "outbytes": 0}
        for i in range(e.n_dests):
            tot["conns"] += e.dests[i].conns
            tot["inpkts"] += e.dests[i].inpkts
            tot["outpkts"] += e.dests[i].outpkts
            tot["inbytes"] += e.dests[i].inbytes
            tot["outbytes"] += e.dests[i].outbytes
        return {"services": svcs, "totals": tot, "conn_count": e.ct.live,
                "now_ns": self.now_ns, "counters": self.counters}

    def _sorted_services(self):
        cdef uint32_t i
        svcs = [self._svc_dict(i) for i in range(self.c.e.n_svcs) if self.c.e.svcs[i].used]
        svcs.sort(key=functools.cmp_to_key(_cmp_services))
        for s in svcs:
            s["dests"].sort(key=functools.cmp_to_key(_cmp_dests))
        return svcs

    def _svc_line_flags(self, s):
        out = ""
        flags = s["flags"]
        if flags & (SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3):
            names = []
            if s["scheduler"] in ("sh", "mh"):
                p = s["scheduler"]
                if flags & SVC_F_SCHED1:
                    names.append(f"{p}-fallback")
                if flags & SVC_F_SCHED2:
                    names.append(f"{p}-port")
            else:
                if flags & SVC_F_SCHED1:
                    names.append("flag-1")
                if flags & SVC_F_SCHED2:
                    names.append("flag-2")
            if flags & SVC_F_SCHED3:
                names.append("flag-3")
            out += " (" + ",".join(names) + ")"
        if s["persistent"]:
            out += _fmt(" persistent %u", s["timeout"])
            if s["af"] == 4 and s["netmask"] != 32:
                mask = (0xFFFFFFFF << (32 - s["netmask"])) & 0xFFFFFFFF
                out += " mask " + str(ipaddress.IPv4Address(mask))
            elif s["af"] == 6 and s["netmask"] != 128:
                out += _fmt(" mask %i", s["netmask"])
        if s["ops"]:
            out += " ops"
        return out

    def format_list(self):
        """``ipvsadm -L -n`` text (services and servers sorted as ipvsadm sorts them)."""
        lines = ["IP Virtual Server version 1.2.1 (size=4096)",
                 "Prot LocalAddress:Port Scheduler Flags",
                 "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
        for s in self._sorted_services():
            lines.append(f"{s['name']} {s['scheduler']}{self._svc_line_flags(s)}")
            for d in s["dests"]:
                dname = d["endpoint"] if d["af"] == 6 else d["endpoint"][:28]
                lines.append(_fmt("  -> %-28s %-7s %-6d %-10u %-10u", (
                    dname, d["fwd"], d["weight"], d["activeconns"], d["inactconns"])))
        return "\n".join(lines) + "\n"

    def format_stats(self, exact=False):
        """``ipvsadm -L -n --stats`` text (``exact``: --exact)."""
        lines = ["IP Virtual Server version 1.2.1 (size=4096)",
                 _fmt("%-33s %8s %8s %8s %8s %8s", ("Prot LocalAddress:Port", "Conns", "InPkts",
                                                     "OutPkts", "InBytes", "OutBytes")),
                 "  -> RemoteAddress:Port"]
        keys = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
        for s in self._sorted_services():
            lines.append(_fmt("%-33s", s["name"]) + "".join(_largenum(s[k], exact) for k in keys))
            for d in s["dests"]:
                dname = d["endpoint"] if d["af"] == 6 else d["endpoint"][:28]
                lines.append(_fmt("  -> %-28s", dname) + "".join(_largenum(d[k], exact) for k in keys))
        return "\n".join(lines) + "\n"

    def connections(self, now_ns=None):
        """The connection table as /proc/net/ip_vs_conn holds it, after advancing the clock to
        ``now_ns`` (default: the engine clock), in creation order. ``expire`` is whole seconds
        left, as the kernel prints it."""
        cdef core_t *c = self.c
        cdef conntab *t = c.e.ct
        cdef engine_t *e = &c.e
        cdef conn_entry *cp
        cdef uint32_t id
        cdef int64_t now
        if now_ns is not None:
            self.advance(int(now_ns))
        elif c.clock_set:
            self.advance(e.now_ns)
        now = e.now_ns
        rows = []
        for id in range(t.hwm):
            cp = &t.entries[id]
            if not (cp.xflags & XF_USED) or (cp.flags & CF_ONE_PACKET):
                continue
            template = bool(cp.flags & CF_TEMPLATE)
            if cp.dest != CONN_NONE:
                daf = e.dests[cp.dest].af
                daddr = _addr_text(e.dests[cp.dest].addr, daf)
                dest_ep = _endpoint(e.dests[cp.dest].addr, daf, cp.dport)
            else:
                daf = cp.af
                daddr = "::" if cp.af == 6 else "0.0.0.0"
                dest_ep = f"[{daddr}]:{cp.dport}" if cp.af == 6 else f"{daddr}:{cp.dport}"
            if template and cp.proto == IPPROTO_IP and cp.af == 4:
                # fwmark template: the mark is stored in the first 4 bytes of the address
                vtext = str(ipaddress.IPv4Address((<const char *>cp.vaddr)[:4]))
                virtual = f"{vtext}:{cp.vport}"
            else:
                vtext = _addr_text(cp.vaddr, cp.af)
                virtual = _endpoint(cp.vaddr, cp.af, cp.vport)
            left = (cp.deadline_ns - now) // 1000000 // 1000 if (cp.xflags & XF_TIMER) else 0
            if left < 0:
                left = 0
            ctl_serial = t.entries[cp.control].serial if cp.control != CONN_NONE else 0
            rows.append({
                "pro": _names.proto_name(cp.proto),
                "expire": int(left),
                "state": _names.state_name(cp.proto, cp.state, template),
                "source": _endpoint(cp.caddr, cp.af, cp.cport),
                "virtual": virtual,
                "destination": dest_ep,
                "serial": cp.serial,
                "flags": cp.flags,
                "dest": <int>cp.dest if cp.dest != CONN_NONE else -1,
                "template": template,
                "control": ctl_serial,
                "n_control": cp.n_control,
                "proto": cp.proto,
                "af": cp.af,
                "caddr": _addr_text(cp.caddr, cp.af), "cport": cp.cport,
                "vaddr": vtext, "vport": cp.vport,
                "daddr": daddr, "dport": cp.dport,
                "state_code": cp.state,
                "deadline_ns": cp.deadline_ns,
                "fwd": FWD_NAMES.get(cp.flags & CF_FWD_MASK, "Bypass"),
                "nooutput": bool(cp.flags & CF_NOOUTPUT),
                "inactive": bool(cp.flags & CF_INACTIVE),
            })
        rows.sort(key=lambda r: r["serial"])
        return rows

    def format_connections(self, now_ns=None):
        """``ipvsadm -L -n -c`` text."""
        lines = ["IPVS connection entries",
                 _fmt("pro expire %-11s %-18s %-18s %s", ("state", "source", "virtual", "destination"))]
        for r in self.connections(now_ns):
            exp = r["expire"]
            lines.append(_fmt("%-3s %-6s %-11s %-18s %-18s %s", (
                r["pro"], _fmt("%02d:%02d", (exp // 60, exp % 60)), r["state"], r["source"],
                r["virtual"], r["destination"])))
        return "\n".join(lines) + "\n"

    # -- invariants ---------------------------------------------------------------------------

    def check_invariants(self):
        """Raise AssertionError listing what is wrong: dest counters that differ from a recount
        over the table, live entries past their deadline or without a timer, hashed entries the
        indexes cannot find, wrong n_control counts, inconsistent active/inactive flags, ..."""
        cdef core_t *c = self.c
        cdef engine_t *e = &c.e
        cdef conntab *t = e.ct
        cdef conn_entry *cp
        cdef conn_entry *ctp
        cdef conn_key k
        cdef uint32_t id, i, found
        cdef dest_t *d
        problems = []
        nd = e.n_dests
        active = [0] * nd
        inact = [0] * nd
        persist = [0] * nd
        refs = [0] * nd
        nctl = {}
        live = 0
        for id in range(t.hwm):
            cp = &t.entries[id]
            if not (cp.xflags & XF_USED):
                continue
            live += 1
            tag = f"entry {id} (serial {cp.serial})"
            if cp.flags & CF_ONE_PACKET:
                problems.append(f"{tag}: one-packet entry outlived its packet")
            if not (cp.xflags & XF_TIMER):
                problems.append(f"{tag}: no timer armed")
            elif c.clock_set and cp.deadline_ns < e.now_ns:
                problems.append(f"{tag}: past its deadline ({cp.deadline_ns} < now {e.now_ns})")
            if cp.dest != CONN_NONE:
                if cp.dest >= nd:
                    problems.append(f"{tag}: dest {cp.dest} out of range")
                else:
                    refs[cp.dest] += 1
                    if cp.flags & CF_TEMPLATE:
                        persist[cp.dest] += 1
                    elif cp.flags & CF_INACTIVE:
                        inact[cp.dest] += 1
                    else:
                        active[cp.dest] += 1
            if cp.control != CONN_NONE:
                if cp.control >= t.hwm or not (t.entries[cp.control].xflags & XF_USED):
                    problems.append(f"{tag}: controller {cp.control} is not a live entry")
                else:
                    nctl[cp.control] = nctl.get(cp.control, 0) + 1
            if not (cp.flags & CF_TEMPLATE):
                if cp.proto == IPPROTO_TCP:
                    if cp.state >= TCP_S_LAST:
                        problems.append(f"{tag}: TCP state {cp.state} out of range")
                    elif cp.dest != CONN_NONE and bool(cp.flags & CF_INACTIVE) == bool(
                            tcp_state_active(e, cp.state)):
                        problems.append(f"{tag}: INACTIVE flag disagrees with state "
                                        f"{_names.state_name(6, cp.state)}")
                elif cp.proto == IPPROTO_UDP:
                    if cp.state != 0:
                        problems.append(f"{tag}: UDP state {cp.state}")
                    if cp.dest != CONN_NONE and not (cp.flags & CF_INACTIVE):
                        problems.append(f"{tag}: UDP entry counted active")
            if cp.xflags & XF_IN_HASHED:
                ct_key_in_of(t, id, &k)
                found = ct_lookup_in(t, &k)
                if found != id:
                    problems.append(f"{tag}: in-index finds {found} for its key")
            if cp.xflags & XF_OUT_HASHED:
                if cp.dest == CONN_NONE or cp.dest >= nd:
                    problems.append(f"{tag}: in the out index without a real server")
                else:
                    memset(&k, 0, sizeof(conn_key))
                    memcpy(k.a, e.dests[cp.dest].addr, 16)
                    memcpy(k.b, cp.caddr, 16)
                    k.pa = cp.dport
                    k.pb = cp.cport
                    k.proto = cp.proto
                    k.af = cp.af
                    ct_key_hash(t, &k)
                    found = ct_lookup_out(t, &k)
                    # or a newer entry with the same reply tuple hides it (the kernel's
                    # chain order: the newest first)
                    if found != id and not (
                            found != CONN_NONE and found < t.hwm and (t.entries[found].xflags & XF_USED)
                            and (t.entries[found].xflags & XF_OUT_HASHED)
                            and t.entries[found].serial > cp.serial):
                        problems.append(f"{tag}: out-index finds {found} for its key")
            elif ((cp.flags & CF_FWD_MASK) == CF_MASQ and cp.dest != CONN_NONE
                  and not (cp.flags & CF_TEMPLATE) and (cp.xflags & XF_IN_HASHED)):
                problems.append(f"{tag}: NAT entry missing from the out index")
        for id in range(t.hwm):
            cp = &t.entries[id]
            if (cp.xflags & XF_USED) and cp.n_control != nctl.get(id, 0):
                problems.append(f"entry {id}: n_control {cp.n_control} but {nctl.get(id, 0)} "
                                f"entries name it")
        if live != t.live:
            problems.append(f"table counts {t.live} live entries, {live} found")
        for i in range(nd):
            d = &e.dests[i]
            if (d.activeconns, d.inactconns, d.persistconns) != (active[i], inact[i], persist[i]):
                problems.append(
                    f"dest {i} {_endpoint(d.addr, d.af, d.port)}: counters "
                    f"(active {d.activeconns}, inactive {d.inactconns}, persist {d.persistconns}) "
                    f"!= recount ({active[i]}, {inact[i]}, {persist[i]})")
            if d.refcnt != refs[i]:
                problems.append(f"dest {i}: refcnt {d.refcnt} != {refs[i]} bound entries")
            if d.svc < 0 or <uint32_t>d.svc >= e.n_svcs:
                problems.append(f"dest {i}: service {d.svc} out of range")
        if c.nat_hashed < sum(1 for id in range(t.hwm)
                              if (t.entries[id].xflags & XF_USED) and (t.entries[id].xflags & XF_OUT_HASHED)):
            problems.append("out-index entry count below the number of out-hashed entries")
        if problems:
            more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
            raise AssertionError("engine invariants violated:\n  " + "\n  ".join(problems[:20]) + more)


def _public(d):
    out = {k: v for k, v in d.items() if not k.startswith("_")}
    if "dests" in out:
        out["dests"] = [_public(x) for x in out["dests"]]
    return out
