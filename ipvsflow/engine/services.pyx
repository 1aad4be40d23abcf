# Virtual services and real servers (the kernel's ip_vs_ctl.c side of IPVS), binding of
# connection entries to real servers (ip_vs_bind_dest / ip_vs_unbind_dest in ip_vs_conn.c), and
# the dispatch to the per-scheduler modules (sched_*.pyx, one per ip_vs_<name>.c).
#
# Storage
#   engine_t.dests  array of dest_t, cap_dests slots; n_dests slots handed out. A dest id is its
#                   index and never changes: a deleted dest stays in its slot ("the trash": not
#                   AVAILABLE, unlinked from its service's list), so decisions and entries that
#                   name it keep resolving, and re-adding the same addr:port to the same service
#                   revives it (same id, counters intact, AVAILABLE again, back at the list head),
#                   as ip_vs_trash_get_dest does. Slots are not reused: the kernel frees an
#                   unreferenced trashed dest only after 1-3 minutes idle, which changes nothing
#                   but its stats (ipvsadm -L --stats), so keeping them is the simpler exact choice.
#   engine_t.svcs   array of service_t, cap_svcs slots (a power of two), n_svcs handed out. A
#                   deleted service keeps its slot (used = 0); adding a service with the same
#                   identity (proto, address, port / fwmark, af) takes that slot again, so a
#                   service id is stable per identity and a trashed dest can find its service.
#                   The same allocation carries, after the cap_svcs services, the lookup index:
#                   an open-addressing table of service ids rebuilt on every service add/delete
#                   (rare), so svc_find is one or two probes per packet.
#   A service's dest list is a doubly linked list through dest_t.next/prev, newest first
#   (list_add_rcu at the head): every scheduler's tie-break depends on this order.
cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset, memcmp, memcpy

from ipvsflow.engine.defs cimport (
    engine_t, service_t, dest_t, sched_fn,
    DEST_F_AVAILABLE, DEST_F_OVERLOAD,
    SCHED_RR, SCHED_WRR, SCHED_LC, SCHED_WLC, SCHED_SED, SCHED_NQ, SCHED_FO, SCHED_OVF,
    SCHED_SH, SCHED_DH, SCHED_MH,
)
from ipvsflow.engine.conntab cimport (
    conn_entry, CONN_NONE, CF_FWD_MASK, CF_MASQ, CF_TUNNEL, CF_DROUTE, CF_NOOUTPUT, CF_INACTIVE, CF_TEMPLATE,
    CF_ONE_PACKET,
)
from ipvsflow.io.batch cimport pkt_desc
from ipvsflow.engine.sched_common cimport sched_ops
from ipvsflow.engine.sched_rr cimport rr_register
from ipvsflow.engine.sched_wrr cimport wrr_register
from ipvsflow.engine.sched_lc cimport lc_register
from ipvsflow.engine.sched_wlc cimport wlc_register
from ipvsflow.engine.sched_sed cimport sed_register
from ipvsflow.engine.sched_nq cimport nq_register
from ipvsflow.engine.sched_fo cimport fo_register
from ipvsflow.engine.sched_ovf cimport ovf_register
from ipvsflow.engine.sched_sh cimport sh_register
from ipvsflow.engine.sched_dh cimport dh_register
from ipvsflow.engine.sched_mh cimport mh_register, mh_too_many, MH_TAB_SIZE

import ipaddress

from ipvsflow.config import (
    ConfigError, SCHEDULERS, FWD_NAMES, PROTO_NAMES,
    SVC_F_PERSISTENT, SVC_F_ONEPACKET, SVC_F_HASHED,
)

cdef enum:
    N_SCHED = 16
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_SCTP = 132
    FTPPORT = 21
    FTPDATA = 20
    IP_PROT_SOCK = 1024         # net.ipv4.ip_unprivileged_port_start default (inet_port_requires_bind_service)
    MAX_WEIGHT = 65535          # ipvsadm: "illegal weight specified" above this
    DEFAULT_PERSIST_TIMEOUT = 300
    INITIAL_DESTS = 64
    INITIAL_SVCS = 16

# ---- scheduler table ---------------------------------------------------------------------------

cdef sched_ops SCHED_TABLE[N_SCHED]
memset(SCHED_TABLE, 0, sizeof(SCHED_TABLE))
rr_register(&SCHED_TABLE[SCHED_RR])
wrr_register(&SCHED_TABLE[SCHED_WRR])
lc_register(&SCHED_TABLE[SCHED_LC])
wlc_register(&SCHED_TABLE[SCHED_WLC])
sed_register(&SCHED_TABLE[SCHED_SED])
nq_register(&SCHED_TABLE[SCHED_NQ])
fo_register(&SCHED_TABLE[SCHED_FO])
ovf_register(&SCHED_TABLE[SCHED_OVF])
sh_register(&SCHED_TABLE[SCHED_SH])
dh_register(&SCHED_TABLE[SCHED_DH])
mh_register(&SCHED_TABLE[SCHED_MH])

# name -> SCHED_* for every scheduler ipvsadm knows; those without an implementation here are
# refused by svc_apply with a ConfigError naming them.
SCHED_IDS = {name: i for i, name in enumerate(SCHEDULERS)}
assert SCHED_IDS["rr"] == SCHED_RR and SCHED_IDS["ovf"] == SCHED_OVF and SCHED_IDS["mh"] == SCHED_MH


def available_schedulers():
    """Names of the schedulers this build implements, in SCHED_* order."""
    return [n for n, i in SCHED_IDS.items() if i < N_SCHED and SCHED_TABLE[i].schedule != NULL]


# ---- service lookup index ---------------------------------------------------------------------

ctypedef struct svc_index:
    uint32_t mask               # slot count - 1
    int32_t n_null              # services with port 0 (the kernel's nullsvc_counter)
    int32_t n_ftp               # services with port 21 (ftpsvc_counter)
    int32_t n_fwm               # fwmark services
    int32_t slots[1]            # mask + 1 entries: service id or -1


cdef inline size_t _index_bytes(uint32_t cap_svcs) noexcept nogil:
    # two slots per service capacity keeps the load factor <= 0.5
    return sizeof(svc_index) + (2 * cap_svcs) * sizeof(int32_t)


cdef inline svc_index *_index(const engine_t *e) noexcept nogil:
    return <svc_index *>(<char *>e.svcs + e.cap_svcs * sizeof(service_t))


cdef inline uint32_t _mix32(uint32_t h) noexcept nogil:
    h ^= h >> 16
    h *= <uint32_t>0x7feb352d
    h ^= h >> 15
    h *= <uint32_t>0x846ca68bu
    h ^= h >> 16
    return h


cdef inline uint32_t _load32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint32_t _hash_addr(uint8_t af, uint8_t proto, const uint8_t *addr, uint16_t port) noexcept nogil:
    cdef uint32_t h = (<uint32_t>proto << 24) ^ (<uint32_t>af << 16) ^ port
    h = _mix32(h ^ _load32(addr))
    h = _mix32(h ^ _load32(addr + 4))
    h = _mix32(h ^ _load32(addr + 8))
    h = _mix32(h ^ _load32(addr + 12))
    return h


cdef inline uint32_t _hash_fwm(uint8_t af, uint32_t fwmark) noexcept nogil:
    return _mix32(fwmark * <uint32_t>0x9e3779b1u ^ (<uint32_t>af << 8) ^ 0xfe)


cdef void _index_rebuild(engine_t *e) noexcept nogil:
    cdef svc_index *ix = _index(e)
    cdef uint32_t nslots = 2 * e.cap_svcs
    cdef uint32_t i, h
    cdef service_t *s
    ix.mask = nslots - 1
    ix.n_null = 0
    ix.n_ftp = 0
    ix.n_fwm = 0
    for i in range(nslots):
        ix.slots[i] = -1
    for i in range(e.n_svcs):
        s = &e.svcs[i]
        if not s.used:
            continue
        if s.port == FTPPORT:
            ix.n_ftp += 1
        elif s.port == 0:
            ix.n_null += 1
        if s.fwmark:
            ix.n_fwm += 1
            h = _hash_fwm(s.af, s.fwmark)
        else:
            h = _hash_addr(s.af, s.proto, s.addr, s.port)
        h &= ix.mask
        while ix.slots[h] >= 0:
            h = (h + 1) & ix.mask
        ix.slots[h] = <int32_t>i


cdef inline int32_t _find_addr(const engine_t *e, const svc_index *ix, uint8_t proto, uint8_t af,
                               const uint8_t *vaddr, uint16_t vport) noexcept nogil:
    cdef uint32_t h = _hash_addr(af, proto, vaddr, vport) & ix.mask
    cdef int32_t id
    cdef const service_t *s
    while True:
        id = ix.slots[h]
        if id < 0:
            return -1
        s = &e.svcs[id]
        if (s.fwmark == 0 and s.port == vport and s.proto == proto and s.af == af
                and memcmp(s.addr, vaddr, 16) == 0):
            return id
        h = (h + 1) & ix.mask


cdef inline int32_t _find_fwm(const engine_t *e, const svc_index *ix, uint8_t af,
                              uint32_t fwmark) noexcept nogil:
    cdef uint32_t h = _hash_fwm(af, fwmark) & ix.mask
    cdef int32_t id
    cdef const service_t *s
    while True:
        id = ix.slots[h]
        if id < 0:
            return -1
        s = &e.svcs[id]
        if s.fwmark == fwmark and s.af == af:
            return id
        h = (h + 1) & ix.mask


cdef int32_t svc_find(engine_t *e, uint8_t proto, uint8_t af, const uint8_t *vaddr, uint16_t vport,
                      uint32_t fwmark) noexcept nogil:
    cdef svc_index *ix
    cdef int32_t id
    if e.svcs == NULL:
        return -1
    ix = _index(e)
    if fwmark and ix.n_fwm:
        id = _find_fwm(e, ix, af, fwmark)
        if id >= 0:
            return id
    id = _find_addr(e, ix, proto, af, vaddr, vport)
    # A TCP packet to the FTP data port or an unprivileged port of a VIP with an FTP service finds
    # the FTP service (it may be an FTP data connection); ip_vs_schedule / ip_vs_leave decide.
    if (id < 0 and proto == IPPROTO_TCP and ix.n_ftp
            and (vport == FTPDATA or vport >= IP_PROT_SOCK)):
        id = _find_addr(e, ix, proto, af, vaddr, FTPPORT)
    # the catch-all (port zero) service of that VIP
    if id < 0 and ix.n_null:
        id = _find_addr(e, ix, proto, af, vaddr, 0)
    return id


# ---- scheduling and binding ---------------------------------------------------------------------

cdef int32_t svc_schedule(engine_t *e, int32_t svc, const pkt_desc *p) noexcept nogil:
    cdef service_t *s
    cdef sched_fn fn
    if svc < 0 or <uint32_t>svc >= e.n_svcs:
        return -1
    s = &e.svcs[svc]
    if not s.used:
        return -1
    fn = SCHED_TABLE[s.sched].schedule
    if fn == NULL:
        return -1
    return fn(e, s, p)


cdef inline uint32_t _totalconns(const dest_t *d) noexcept nogil:
    # ip_vs_dest_totalconns: templates (persistconns) do not count
    return d.activeconns + d.inactconns


cdef void dest_bind(engine_t *e, uint32_t dest, conn_entry *cp) noexcept nogil:
    cdef dest_t *d = &e.dests[dest]
    cdef uint32_t conn_flags = d.conn_flags
    d.refcnt += 1
    if cp.proto != IPPROTO_UDP:
        conn_flags &= ~(<uint32_t>CF_ONE_PACKET)
    cp.flags = <uint16_t>(cp.flags | conn_flags)
    cp.dest = dest
    if not (cp.flags & CF_TEMPLATE):
        # counted by the flags the entry now carries; the protocol moves it on state changes
        if cp.flags & CF_INACTIVE:
            d.inactconns += 1
        else:
            d.activeconns += 1
    else:
        d.persistconns += 1
    if d.u_threshold != 0 and _totalconns(d) >= d.u_threshold:
        d.flags |= DEST_F_OVERLOAD


cdef void dest_unbind(engine_t *e, conn_entry *cp) noexcept nogil:
    cdef dest_t *d
    if cp.dest == CONN_NONE or cp.dest >= e.n_dests:
        return
    d = &e.dests[cp.dest]
    if not (cp.flags & CF_TEMPLATE):
        if cp.flags & CF_INACTIVE:
            d.inactconns -= 1
        else:
            d.activeconns -= 1
    else:
        d.persistconns -= 1
    if d.l_threshold != 0:
        if _totalconns(d) < d.l_threshold:
            d.flags &= ~(<uint32_t>DEST_F_OVERLOAD)
    elif d.u_threshold != 0:
        # u32 arithmetic, as the kernel's int * 4 < u32 * 3
        if _totalconns(d) * 4 < d.u_threshold * 3:
            d.flags &= ~(<uint32_t>DEST_F_OVERLOAD)
    else:
        d.flags &= ~(<uint32_t>DEST_F_OVERLOAD)
    d.refcnt -= 1


# ---- allocation -----------------------------------------------------------------------------

cdef inline void _sync_ct(engine_t *e) noexcept nogil:
    # the connection table reads real-server addresses straight from the dest array
    if e.ct != NULL and e.dests != NULL:
        e.ct.dest_addr = &e.dests[0].addr[0]
        e.ct.dest_stride = sizeof(dest_t)


cdef int svc_table_init(engine_t *e) except -1:
    e.dests = NULL
    e.svcs = NULL
    e.n_dests = 0
    e.n_svcs = 0
    e.cap_dests = 0
    e.cap_svcs = 0
    e.dests = <dest_t *>calloc(INITIAL_DESTS, sizeof(dest_t))
    if e.dests == NULL:
        raise MemoryError()
    e.cap_dests = INITIAL_DESTS
    e.svcs = <service_t *>calloc(1, INITIAL_SVCS * sizeof(service_t) + _index_bytes(INITIAL_SVCS))
    if e.svcs == NULL:
        free(e.dests)
        e.dests = NULL
        e.cap_dests = 0
        raise MemoryError()
    e.cap_svcs = INITIAL_SVCS
    _index_rebuild(e)
    _sync_ct(e)
    return 0


cdef void svc_table_free(engine_t *e) noexcept:
    cdef uint32_t i
    cdef service_t *s
    if e.svcs != NULL:
        for i in range(e.n_svcs):
            s = &e.svcs[i]
            if s.used and SCHED_TABLE[s.sched].done_service != NULL:
                SCHED_TABLE[s.sched].done_service(e, s)
        free(e.svcs)
    if e.dests != NULL:
        free(e.dests)
    e.svcs = NULL
    e.dests = NULL
    e.n_svcs = e.cap_svcs = 0
    e.n_dests = e.cap_dests = 0


cdef int32_t _new_dest_slot(engine_t *e) except -1:
    cdef uint32_t ncap
    cdef dest_t *nd
    if e.n_dests == e.cap_dests:
        if e.cap_dests >= 0x40000000:
            raise MemoryError("real-server table full")
        ncap = e.cap_dests * 2 if e.cap_dests else INITIAL_DESTS
        nd = <dest_t *>realloc(e.dests, ncap * sizeof(dest_t))
        if nd == NULL:
            raise MemoryError()
        memset(&nd[e.cap_dests], 0, (ncap - e.cap_dests) * sizeof(dest_t))
        e.dests = nd
        e.cap_dests = ncap
        _sync_ct(e)
    e.n_dests += 1
    memset(&e.dests[e.n_dests - 1], 0, sizeof(dest_t))
    return <int32_t>(e.n_dests - 1)


cdef int32_t _new_svc_slot(engine_t *e) except -1:
    cdef uint32_t ncap
    cdef service_t *ns
    if e.n_svcs == e.cap_svcs:
        if e.cap_svcs >= 0x1000000:
            raise MemoryError("service table full")
        ncap = e.cap_svcs * 2
        # the index trailer is rebuilt, so only the services are carried over
        ns = <service_t *>calloc(1, ncap * sizeof(service_t) + _index_bytes(ncap))
        if ns == NULL:
            raise MemoryError()
        memcpy(ns, e.svcs, e.n_svcs * sizeof(service_t))
        free(e.svcs)
        e.svcs = ns
        e.cap_svcs = ncap
        _index_rebuild(e)
    e.n_svcs += 1
    memset(&e.svcs[e.n_svcs - 1], 0, sizeof(service_t))
    return <int32_t>(e.n_svcs - 1)


# ---- list operations --------------------------------------------------------------------------

cdef void _list_add_head(engine_t *e, service_t *s, int32_t d) noexcept nogil:
    cdef dest_t *dp = &e.dests[d]
    dp.prev = -1
    dp.next = s.dest_head
    if s.dest_head >= 0:
        e.dests[s.dest_head].prev = d
    s.dest_head = d
    s.num_dests += 1


cdef void _list_del(engine_t *e, service_t *s, int32_t d) noexcept nogil:
    # Leaves dp.prev/dp.next naming the old neighbours (a scheduler's del_dest hook reads them).
    cdef dest_t *dp = &e.dests[d]
    if dp.prev >= 0:
        e.dests[dp.prev].next = dp.next
    else:
        s.dest_head = dp.next
    if dp.next >= 0:
        e.dests[dp.next].prev = dp.prev
    s.num_dests -= 1


# ---- commands ---------------------------------------------------------------------------------

cdef object _err(object cmd, str msg):
    # same shape as ipvsflow.config's parser errors: "source:lineno: why (in: 'line')"
    src = getattr(cmd, "source", "") or ""
    lineno = getattr(cmd, "lineno", 0) or 0
    line = (getattr(cmd, "line", "") or "").strip()
    where = f"{src}:{lineno}: " if lineno else (f"{src}: " if src else "")
    return ConfigError(f"{where}{msg} (in: {line!r})" if line else f"{where}{msg}")


cdef object _int(object cmd, object value, str what):
    if isinstance(value, bool):
        raise _err(cmd, f"{what} {value!r} is not an integer")
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise _err(cmd, f"{what} {value!r} is not an integer")


cdef bytes _addr16(object addr, int af):
    """16-byte form of an address (IPv4 mapped as ::ffff:a.b.c.d)."""
    if af == 6:
        return addr.packed
    return b"\x00" * 10 + b"\xff\xff" + addr.packed


cdef object _parse_addr(object cmd, object text, str what):
    try:
        return ipaddress.ip_address(str(text).strip("[]"))
    except ValueError:
        raise _err(cmd, f"bad {what} address {text!r}")


cdef str _addr_text(const uint8_t *a, int af):
    cdef bytes b = (<const char *>a)[:16]
    if af == 6:
        return str(ipaddress.IPv6Address(b))
    return str(ipaddress.IPv4Address(b[12:16]))


cdef str _endpoint(const uint8_t *a, int af, int port):
    if af == 6:
        return f"[{_addr_text(a, af)}]:{port}"
    return f"{_addr_text(a, af)}:{port}"


cdef str _svc_name(const service_t *s):
    if s.fwmark:
        return f"FWM {s.fwmark}" + (" IPv6" if s.af == 6 else "")
    return f"{PROTO_NAMES.get(s.proto, str(s.proto))} {_endpoint(s.addr, s.af, s.port)}"


cdef int _prefix_len(const uint8_t *mask, int af):
    cdef int i, n = 0
    cdef int start = 12 if af == 4 else 0
    for i in range(start, 16):
        n += bin(mask[i]).count("1")
    return n


cdef void _set_netmask(service_t *s, int af, int plen):
    cdef int i, bits
    memset(s.netmask, 0, 16)
    if af == 4:
        for i in range(12):
            s.netmask[i] = 0xff    # keep the ::ffff: prefix of mapped addresses
        bits = plen
        for i in range(12, 16):
            s.netmask[i] = 0xff if bits >= 8 else ((0xff << (8 - bits)) & 0xff if bits > 0 else 0)
            bits -= 8
    else:
        bits = plen
        for i in range(16):
            s.netmask[i] = 0xff if bits >= 8 else ((0xff << (8 - bits)) & 0xff if bits > 0 else 0)
            bits -= 8


cdef tuple _svc_identity(object cmd, object vs):
    """(proto, af, addr16, port, fwmark) of a command's virtual service, validated."""
    if vs is None:
        raise _err(cmd, "no virtual service given")
    fwmark = _int(cmd, vs.fwmark, "fwmark")
    if fwmark:
        if not 0 < fwmark <= 0xFFFFFFFF:
            raise _err(cmd, f"fwmark {fwmark} out of range 1..4294967295")
        af = 6 if _int(cmd, vs.af, "address family") == 6 else 4
        return (0, af, b"\x00" * 16, 0, fwmark)
    proto = _int(cmd, vs.proto, "protocol")
    if proto not in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP):
        raise _err(cmd, f"protocol {proto} is not TCP, UDP or SCTP")
    if not vs.addr:
        raise _err(cmd, "virtual service has no address")
    a = _parse_addr(cmd, vs.addr, "virtual service")
    af = a.version
    port = _int(cmd, vs.port, "port")
    if not 0 <= port <= 65535:
        raise _err(cmd, f"port {port} out of range 0..65535")
    return (proto, af, _addr16(a, af), port, 0)


cdef int32_t _lookup_svc(engine_t *e, tuple ident):
    cdef bytes a = ident[2]
    cdef const uint8_t *ap = a
    cdef int32_t id
    cdef svc_index *ix = _index(e)
    if ident[4]:
        return _find_fwm(e, ix, ident[1], ident[4])
    return _find_addr(e, ix, ident[0], ident[1], ap, ident[3])


cdef int32_t _slot_of_identity(engine_t *e, tuple ident):
    """A deleted service slot with this identity, or -1."""
    cdef bytes a = ident[2]
    cdef const uint8_t *ap = a
    cdef uint32_t i
    cdef service_t *s
    for i in range(e.n_svcs):
        s = &e.svcs[i]
        if s.used:
            continue
        if ident[4]:
            if s.fwmark == ident[4] and s.af == ident[1]:
                return <int32_t>i
        elif (s.fwmark == 0 and s.proto == ident[0] and s.af == ident[1] and s.port == ident[3]
              and memcmp(s.addr, ap, 16) == 0):
            return <int32_t>i
    return -1


cdef int _sched_id(object cmd, object name) except -1:
    name = str(name or "wlc")
    sid = SCHED_IDS.get(name)
    if sid is None:
        raise _err(cmd, f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})")
    if SCHED_TABLE[sid].schedule == NULL:
        raise _err(cmd, f"scheduler {name!r} is not available in this version "
                        f"(available: {', '.join(available_schedulers())})")
    return sid


cdef tuple _svc_settings(object cmd, object vs, int af, int proto, int port, int fwmark):
    """(sched id, flags, timeout, netmask prefix) of an -A/-E command, validated."""
    sid = _sched_id(cmd, vs.scheduler)
    flags = _int(cmd, vs.flags, "service flags")
    if flags < 0 or flags > 0xFFFFFFFF:
        raise _err(cmd, f"bad service flags {flags:#x}")
    flags &= ~SVC_F_HASHED
    timeout = _int(cmd, vs.timeout, "persistence timeout")
    if timeout < 0 or timeout > 0xFFFFFFFF:
        raise _err(cmd, f"persistence timeout {timeout} out of range")
    if timeout and not (flags & SVC_F_PERSISTENT):
        flags |= SVC_F_PERSISTENT
    if (flags & SVC_F_PERSISTENT) and timeout == 0:
        timeout = DEFAULT_PERSIST_TIMEOUT      # ipvsadm -p without a value
    if not fwmark and port == 0 and not (flags & SVC_F_PERSISTENT):
        raise _err(cmd, "zero port specified for non-persistent service")
    if (flags & SVC_F_ONEPACKET) and not fwmark and proto != IPPROTO_UDP:
        raise _err(cmd, "one-packet scheduling is only for UDP virtual services")
    pe = getattr(vs, "pe", "") or ""
    if pe:
        raise _err(cmd, f"persistence engine {pe!r} is not available")
    maxlen = 128 if af == 6 else 32
    plen = _int(cmd, vs.netmask, "netmask") or maxlen
    if not 1 <= plen <= maxlen:
        raise _err(cmd, f"netmask /{plen} out of range 1..{maxlen}")
    return (sid, flags, timeout, plen)


cdef int _sched_bind(engine_t *e, service_t *s, int sid) except -1:
    s.sched = <uint8_t>sid
    s.rr_cursor = -1
    s.wrr_cl = -1
    s.wrr_cw = 0
    s.wrr_mw = 0
    s.wrr_di = 0
    s.sched_data = NULL
    if SCHED_TABLE[sid].init_service != NULL:
        if SCHED_TABLE[sid].init_service(e, s) != 0:
            raise MemoryError("scheduler state")
    return 0


cdef void _sched_unbind(engine_t *e, service_t *s) noexcept:
    if SCHED_TABLE[s.sched].done_service != NULL:
        SCHED_TABLE[s.sched].done_service(e, s)
    s.sched_data = NULL


cdef object _add_service(engine_t *e, object cmd):
    vs = cmd.service
    ident = _svc_identity(cmd, vs)
    proto, af, a16, port, fwmark = ident
    settings = _svc_settings(cmd, vs, af, proto, port, fwmark)
    cdef int32_t sid = _lookup_svc(e, ident)
    if sid >= 0:
        raise _err(cmd, f"service {_svc_name(&e.svcs[sid])} already exists")
    sid = _slot_of_identity(e, ident)
    if sid < 0:
        sid = _new_svc_slot(e)
    cdef service_t *s = &e.svcs[sid]
    cdef bytes ab = a16
    memset(s, 0, sizeof(service_t))
    memcpy(s.addr, <const char *>ab, 16)
    s.port = port
    s.af = af
    s.proto = proto
    s.fwmark = fwmark
    s.flags = settings[1]
    s.timeout_s = settings[2]
    _set_netmask(s, af, settings[3])
    s.dest_head = -1
    s.num_dests = 0
    _sched_bind(e, s, settings[0])
    s.used = 1
    _index_rebuild(e)
    return sid


cdef int32_t _existing_svc(engine_t *e, object cmd) except? -2:
    ident = _svc_identity(cmd, cmd.service)
    cdef int32_t sid = _lookup_svc(e, ident)
    if sid < 0:
        vs = cmd.service
        if ident[4]:
            name = f"FWM {ident[4]}" + (" IPv6" if ident[1] == 6 else "")
        else:
            name = f"{PROTO_NAMES.get(ident[0], ident[0])} " + (
                f"[{vs.addr}]:{ident[3]}" if ident[1] == 6 else f"{vs.addr}:{ident[3]}")
        raise _err(cmd, f"service {name} does not exist")
    return sid


cdef object _edit_service(engine_t *e, object cmd):
    cdef int32_t sid = _existing_svc(e, cmd)
    cdef service_t *s = &e.svcs[sid]
    settings = _svc_settings(cmd, cmd.service, s.af, s.proto, s.port, s.fwmark)
    if settings[0] != s.sched:
        if settings[0] == SCHED_MH and mh_too_many(s.num_dests):
            raise _err(cmd, f"scheduler mh maps at most {MH_TAB_SIZE} real servers; service "
                            f"{_svc_name(s)} has {s.num_dests}")
        # ip_vs_edit_service: unbind the old scheduler, bind the new one (fresh state)
        _sched_unbind(e, s)
        _sched_bind(e, s, settings[0])
    s.flags = settings[1]
    s.timeout_s = settings[2]
    _set_netmask(s, s.af, settings[3])
    return sid


cdef void _trash_dest(engine_t *e, service_t *s, int32_t d, bint sched_hook) noexcept:
    # __ip_vs_unlink_dest + __ip_vs_del_dest: not AVAILABLE, off the list, into the trash
    cdef dest_t *dp = &e.dests[d]
    dp.flags &= ~(<uint32_t>DEST_F_AVAILABLE)
    _list_del(e, s, d)
    if sched_hook and SCHED_TABLE[s.sched].del_dest != NULL:
        SCHED_TABLE[s.sched].del_dest(e, s, d)
    dp.next = -1
    dp.prev = -1


cdef object _del_service(engine_t *e, int32_t sid):
    cdef service_t *s = &e.svcs[sid]
    _sched_unbind(e, s)
    while s.dest_head >= 0:
        _trash_dest(e, s, s.dest_head, False)
    s.used = 0
    _index_rebuild(e)
    return sid


cdef tuple _dest_identity(object cmd, const service_t *s):
    """(af, addr16, port) of a command's real server, with ipvsadm's port rule applied."""
    rs = cmd.dest
    if rs is None:
        raise _err(cmd, "no real server given")
    a = _parse_addr(cmd, rs.addr, "real server")
    af = a.version
    port = _int(cmd, rs.port, "real server port")
    if not 0 <= port <= 65535:
        raise _err(cmd, f"real server port {port} out of range 0..65535")
    if cmd.op in ("add-dest", "edit-dest"):
        fwd = _int(cmd, rs.fwd, "forwarding method")
        # ipvsadm: for DR and tunnel servers of a non-fwmark service the port is the service's
        if not s.fwmark and fwd in (CF_DROUTE, CF_TUNNEL):
            port = s.port
    return (af, _addr16(a, af), port, a)


cdef int32_t _find_dest(engine_t *e, const service_t *s, int af, bytes a16, int port, bint trash):
    """The dest with this address in the service's list (trash=False) or in its trash (True)."""
    cdef const uint8_t *ap = a16
    cdef uint32_t i
    cdef int32_t d
    cdef dest_t *dp
    cdef int32_t sid = <int32_t>(s - e.svcs)
    if not trash:
        d = s.dest_head
        while d >= 0:
            dp = &e.dests[d]
            if dp.af == af and dp.port == port and memcmp(dp.addr, ap, 16) == 0:
                return d
            d = dp.next
        return -1
    for i in range(e.n_dests):
        dp = &e.dests[i]
        if (dp.svc == sid and not (dp.flags & DEST_F_AVAILABLE) and dp.af == af
                and dp.port == port and memcmp(dp.addr, ap, 16) == 0):
            return <int32_t>i
    return -1


cdef tuple _dest_settings(object cmd, const service_t *s, int af):
    rs = cmd.dest
    weight = _int(cmd, rs.weight, "weight")
    if not 0 <= weight <= MAX_WEIGHT:
        raise _err(cmd, f"weight {weight} out of range 0..{MAX_WEIGHT}")
    fwd = _int(cmd, rs.fwd, "forwarding method")
    if fwd not in FWD_NAMES:
        raise _err(cmd, f"unknown forwarding method {fwd}")
    u = _int(cmd, rs.u_threshold, "upper threshold")
    l = _int(cmd, rs.l_threshold, "lower threshold")
    if not 0 <= u <= 0xFFFFFFFF or not 0 <= l <= 0xFFFFFFFF:
        raise _err(cmd, "connection thresholds must be in 0..4294967295")
    if l > u:
        raise _err(cmd, f"lower threshold {l} is higher than upper threshold {u}")
    if af != s.af and fwd != CF_TUNNEL:
        raise _err(cmd, "different address family is allowed only for tunneling servers")
    return (weight, fwd, u, l)


cdef void _update_dest(engine_t *e, service_t *s, int32_t d, int32_t weight, uint32_t fwd,
                       uint32_t u, uint32_t l, bint add) noexcept:
    # __ip_vs_update_dest
    cdef dest_t *dp = &e.dests[d]
    cdef uint32_t conn_flags
    if add or weight != 0:
        dp.last_weight = weight         # latest non-zero weight (mh)
    dp.weight = weight
    conn_flags = (fwd & CF_FWD_MASK) | CF_INACTIVE
    if (conn_flags & CF_FWD_MASK) != CF_MASQ:
        conn_flags |= CF_NOOUTPUT
    dp.conn_flags = conn_flags          # applies to entries bound from now on
    dp.fwd = <uint8_t>fwd
    dp.flags |= DEST_F_AVAILABLE
    if u == 0 or u > dp.u_threshold:
        dp.flags &= ~(<uint32_t>DEST_F_OVERLOAD)
    dp.u_threshold = u
    dp.l_threshold = l
    if add:
        _list_add_head(e, s, d)
        if SCHED_TABLE[s.sched].add_dest != NULL:
            SCHED_TABLE[s.sched].add_dest(e, s, d)
    else:
        if SCHED_TABLE[s.sched].upd_dest != NULL:
            SCHED_TABLE[s.sched].upd_dest(e, s, d)


cdef object _add_dest(engine_t *e, object cmd):
    cdef int32_t sid = _existing_svc(e, cmd)
    cdef service_t *s = &e.svcs[sid]
    af, a16, port, a = _dest_identity(cmd, s)
    st = _dest_settings(cmd, s, af)
    # ip_vs_new_dest: unicast only (IPv6: not link-local either)
    if (a.is_multicast or a.is_unspecified or (af == 4 and int(a) == 0xFFFFFFFF)
            or (af == 6 and a.is_link_local)):
        raise _err(cmd, f"real server address {a} is not a unicast address")
    cdef dest_t *dp
    cdef int32_t d = _find_dest(e, s, af, a16, port, False)
    if d >= 0:
        raise _err(cmd, f"real server {_endpoint(e.dests[d].addr, af, port)} already exists in "
                        f"service {_svc_name(s)}")
    if s.sched == SCHED_MH and mh_too_many(s.num_dests + 1):
        # the kernel's Maglev table cannot take more servers than slots (-EINVAL on rebuild)
        raise _err(cmd, f"scheduler mh maps at most {MH_TAB_SIZE} real servers; service "
                        f"{_svc_name(s)} is full")
    d = _find_dest(e, s, af, a16, port, True)
    if d < 0:
        d = _new_dest_slot(e)
        dp = &e.dests[d]
        memcpy(dp.addr, <const char *>(<bytes>a16), 16)
        dp.port = port
        dp.af = af
        dp.svc = sid
        dp.next = -1
        dp.prev = -1
    _update_dest(e, s, d, st[0], st[1], st[2], st[3], True)
    return d


cdef object _edit_dest(engine_t *e, object cmd):
    cdef int32_t sid = _existing_svc(e, cmd)
    cdef service_t *s = &e.svcs[sid]
    af, a16, port, a = _dest_identity(cmd, s)
    st = _dest_settings(cmd, s, af)
    cdef int32_t d = _find_dest(e, s, af, a16, port, False)
    if d < 0:
        raise _err(cmd, f"real server {_endpoint(<const uint8_t *>(<bytes>a16), af, port)} does not "
                        f"exist in service {_svc_name(s)}")
    _update_dest(e, s, d, st[0], st[1], st[2], st[3], False)
    return d


cdef object _del_dest(engine_t *e, object cmd):
    cdef int32_t sid = _existing_svc(e, cmd)
    cdef service_t *s = &e.svcs[sid]
    af, a16, port, a = _dest_identity(cmd, s)
    cdef int32_t d = _find_dest(e, s, af, a16, port, False)
    if d < 0:
        raise _err(cmd, f"real server {_endpoint(<const uint8_t *>(<bytes>a16), af, port)} does not "
                        f"exist in service {_svc_name(s)}")
    _trash_dest(e, s, d, True)
    return d


cdef object svc_apply(engine_t *e, object cmd):
    op = getattr(cmd, "op", None)
    if e.svcs == NULL or e.dests == NULL:
        raise ConfigError("service table not initialised")
    if op == "add-service":
        return _add_service(e, cmd)
    if op == "edit-service":
        return _edit_service(e, cmd)
    if op == "del-service":
        return _del_service(e, _existing_svc(e, cmd))
    if op == "add-dest":
        return _add_dest(e, cmd)
    if op == "edit-dest":
        return _edit_dest(e, cmd)
    if op == "del-dest":
        return _del_dest(e, cmd)
    if op == "clear":
        for i in range(e.n_svcs):
            if e.svcs[i].used:
                _del_service(e, i)
        return -1
    raise _err(cmd, f"{op!r} is not a service or real-server command")


# ---- listings ---------------------------------------------------------------------------------

cdef list svc_describe(engine_t *e):
    cdef list out = []
    cdef uint32_t i
    cdef int32_t d
    cdef service_t *s
    cdef const char *sname
    for i in range(e.n_svcs):
        s = &e.svcs[i]
        dests = []
        d = s.dest_head
        while d >= 0:
            dests.append(d)
            d = e.dests[d].next
        sname = SCHED_TABLE[s.sched].name
        out.append({
            "id": <int>i,
            "used": bool(s.used),
            "proto": s.proto,
            "af": s.af,
            "addr": "" if s.fwmark else _addr_text(s.addr, s.af),
            "port": s.port,
            "fwmark": s.fwmark,
            "name": _svc_name(s),
            "sched": sname.decode() if sname != NULL else SCHEDULERS[s.sched],
            "flags": s.flags,
            "persistent": bool(s.flags & SVC_F_PERSISTENT),
            "timeout": s.timeout_s,
            "netmask": _prefix_len(s.netmask, s.af),
            "dests": dests,
            "num_dests": s.num_dests,
            "conns": s.conns,
            "inpkts": s.inpkts,
            "outpkts": s.outpkts,
            "inbytes": s.inbytes,
            "outbytes": s.outbytes,
        })
    return out


cdef list dest_describe(engine_t *e):
    cdef list out = []
    cdef uint32_t i
    cdef dest_t *d
    for i in range(e.n_dests):
        d = &e.dests[i]
        out.append({
            "id": <int>i,
            "svc": d.svc,
            "addr": _addr_text(d.addr, d.af),
            "port": d.port,
            "af": d.af,
            "endpoint": _endpoint(d.addr, d.af, d.port),
            "fwd": d.fwd,
            "fwd_name": FWD_NAMES.get(d.fwd, str(d.fwd)),
            "weight": d.weight,
            "last_weight": d.last_weight,
            "u_threshold": d.u_threshold,
            "l_threshold": d.l_threshold,
            "activeconns": d.activeconns,
            "inactconns": d.inactconns,
            "persistconns": d.persistconns,
            "refcnt": d.refcnt,
            "conn_flags": d.conn_flags,
            "available": bool(d.flags & DEST_F_AVAILABLE),
            "overload": bool(d.flags & DEST_F_OVERLOAD),
            "conns": d.conns,
            "inpkts": d.inpkts,
            "outpkts": d.outpkts,
            "inbytes": d.inbytes,
            "outbytes": d.outbytes,
        })
    return out
