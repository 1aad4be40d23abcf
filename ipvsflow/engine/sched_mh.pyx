# Maglev hashing scheduling (net/netfilter/ipvs/ip_vs_mh.c; Eisenbud et al., NSDI 2016, 3.4).
#
# Table of M = 4093 slots, each naming a real server. Per dest, in list order (newest first):
# offset = hsiphash(v, key1) % M, skip = hsiphash(v, key2) % (M - 1) + 1, with v = port +
# ntohl(addr_fold) of the dest's own address and port. Turns per round = (last_weight / gcd) >>
# rshift (at least 1 when last_weight != 0; 0 = not in the table), where gcd is over the positive
# last_weights and rshift = max(0, fls(max_last_weight / gcd) - 6). last_weight is the latest
# non-zero weight, so setting a weight to 0 keeps the server's slots.
#
# Population: rounds over the list until all M slots are claimed; a dest claims `turns` slots one
# after another, each the first free slot of its permutation perm, perm + skip, ... (mod M). A
# claimed slot leaves perm on it: the next claim tests it again, finds it taken, and advances.
#
# Lookup: slot = hsiphash(v, key1) % M with v from the client's address (and source port with
# mh-port). An unavailable dest there (weight <= 0 or OVERLOAD) gives no destination, unless
# mh-fallback: slots hsiphash(v + (k + slot) % M, key1) % M for k = 0..M-1, the first available
# wins, an empty slot ends the search with none.
#
# Rebuilt on every dest add, delete and edit. All last_weights 0 (or no dests) empty the table.
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport (
    sched_ops, dest_overloaded, SVC_F_SCHED1, SVC_F_SCHED2, sched_client_port,
)
from ipvsflow.engine.hsiphash cimport hsiphash_u32, addr_fold
from ipvsflow.io.batch cimport pkt_desc

ctypedef struct mh_dest_setup:
    uint32_t offset
    uint32_t skip
    uint32_t perm
    int32_t turns

cdef enum:
    BITMAP_WORDS = (MH_TAB_SIZE + 63) // 64


cdef bint mh_too_many(uint32_t num_dests) noexcept nogil:
    return num_dests > MH_TAB_SIZE


cdef uint32_t mh_hashkey(uint32_t fold, uint32_t port, uint64_t key, uint32_t offset) noexcept nogil:
    cdef uint32_t v = offset + port + fold
    return hsiphash_u32(v, key, key)


cdef inline bint _unavailable(const dest_t *d) noexcept nogil:
    return d.weight <= 0 or dest_overloaded(d)


cdef inline int _fls(uint32_t x) noexcept nogil:
    cdef int n = 0
    while x:
        n += 1
        x >>= 1
    return n


cdef inline int32_t _gcd(int32_t a, int32_t b) noexcept nogil:
    cdef int32_t t
    while b:
        t = a % b
        a = b
        b = t
    return a


cdef int32_t _gcd_weight(engine_t *e, service_t *svc) noexcept nogil:
    # ip_vs_mh_gcd_weight
    cdef int32_t g = 0, w
    cdef int32_t d = svc.dest_head
    while d >= 0:
        w = e.dests[d].last_weight
        if w > 0:
            g = _gcd(w, g) if g > 0 else w
        d = e.dests[d].next
    return g


cdef int32_t _shift_weight(engine_t *e, service_t *svc, int32_t gcd) noexcept nogil:
    # ip_vs_mh_shift_weight
    cdef int32_t mw = 0, shift
    cdef int32_t d = svc.dest_head
    if gcd < 1:
        return 0
    while d >= 0:
        if e.dests[d].last_weight > mw:
            mw = e.dests[d].last_weight
        d = e.dests[d].next
    shift = _fls(<uint32_t>(mw // gcd)) - MH_TAB_BITS
    return shift if shift >= 0 else 0


cdef void _reset(mh_state *s) noexcept nogil:
    cdef int i
    for i in range(MH_TAB_SIZE):
        s.lookup[i] = -1


cdef void _permutate(engine_t *e, service_t *svc, mh_state *s, mh_dest_setup *ds) noexcept nogil:
    # ip_vs_mh_permutate
    cdef int32_t d = svc.dest_head
    cdef dest_t *dp
    cdef uint32_t fold
    cdef int32_t lw, turns
    while d >= 0:
        dp = &e.dests[d]
        fold = addr_fold(dp.addr, dp.af, svc.af)
        ds.offset = mh_hashkey(fold, dp.port, MH_KEY1, 0) % MH_TAB_SIZE
        ds.skip = mh_hashkey(fold, dp.port, MH_KEY2, 0) % (MH_TAB_SIZE - 1) + 1
        ds.perm = ds.offset
        lw = dp.last_weight
        turns = (lw // s.gcd) >> s.rshift
        ds.turns = turns if turns else (1 if lw != 0 else 0)
        ds += 1
        d = dp.next


cdef void _populate(engine_t *e, service_t *svc, mh_state *s, mh_dest_setup *setup) noexcept nogil:
    # ip_vs_mh_populate (the caller has checked gcd >= 1, so some dest has turns >= 1)
    cdef uint64_t table[BITMAP_WORDS]
    cdef int32_t n = 0, dt_count = 0
    cdef int32_t d = -1
    cdef uint32_t c
    cdef mh_dest_setup *ds
    memset(table, 0, sizeof(table))
    while n < MH_TAB_SIZE:
        if d < 0:
            d = svc.dest_head
        ds = setup
        while d >= 0:
            if ds.turns < 1:
                d = e.dests[d].next
                ds += 1
                continue
            c = ds.perm
            while table[c >> 6] & ((<uint64_t>1) << (c & 63)):
                ds.perm += ds.skip
                if ds.perm >= MH_TAB_SIZE:
                    ds.perm -= MH_TAB_SIZE
                c = ds.perm
            table[c >> 6] |= (<uint64_t>1) << (c & 63)
            s.lookup[c] = d
            n += 1
            if n == MH_TAB_SIZE:
                return
            dt_count += 1
            if dt_count >= ds.turns:
                dt_count = 0
                d = e.dests[d].next
                ds += 1


cdef int _reassign(engine_t *e, service_t *svc, mh_state *s) noexcept nogil:
    # ip_vs_mh_reassign: on failure the previous table stays
    cdef mh_dest_setup *setup = NULL
    if mh_too_many(svc.num_dests):
        return -1
    if s.gcd < 1:
        _reset(s)
        return 0
    setup = <mh_dest_setup *>calloc(svc.num_dests, sizeof(mh_dest_setup))
    if setup == NULL:
        return -1
    _permutate(e, svc, s, setup)
    _populate(e, svc, s, setup)
    free(setup)
    return 0


cdef int mh_init_service(engine_t *e, service_t *svc) noexcept nogil:
    cdef mh_state *s = <mh_state *>malloc(sizeof(mh_state))
    if s == NULL:
        return -1
    _reset(s)
    s.gcd = _gcd_weight(e, svc)
    s.rshift = _shift_weight(e, svc, s.gcd)
    if _reassign(e, svc, s) != 0:
        free(s)
        return -1
    svc.sched_data = s
    return 0


cdef void mh_done_service(engine_t *e, service_t *svc) noexcept nogil:
    free(svc.sched_data)
    svc.sched_data = NULL


cdef int mh_dest_changed(engine_t *e, service_t *svc, int32_t dest) noexcept nogil:
    cdef mh_state *s = <mh_state *>svc.sched_data
    if s == NULL:
        return -1
    s.gcd = _gcd_weight(e, svc)
    s.rshift = _shift_weight(e, svc, s.gcd)
    return _reassign(e, svc, s)


cdef int32_t mh_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef mh_state *s = <mh_state *>svc.sched_data
    cdef uint32_t fold, port = 0, ihash, k
    cdef uint32_t size = MH_TAB_SIZE
    cdef int32_t d
    if s == NULL:
        return -1
    fold = addr_fold(p.src, p.af, svc.af)
    if svc.flags & SVC_F_SCHED2:
        port = sched_client_port(p.proto, p.sport)
    ihash = mh_hashkey(fold, port, MH_KEY1, 0) % MH_TAB_SIZE
    d = s.lookup[ihash]
    if d < 0:
        return -1
    if not _unavailable(&e.dests[d]):
        return d
    if not (svc.flags & SVC_F_SCHED1):
        return -1
    # ip_vs_mh_get_fallback
    for k in range(size):
        d = s.lookup[mh_hashkey(fold, port, MH_KEY1, (k + ihash) % MH_TAB_SIZE) % MH_TAB_SIZE]
        if d < 0:
            return -1
        if not _unavailable(&e.dests[d]):
            return d
    return -1


cdef void mh_register(sched_ops *ops) noexcept:
    ops.name = b"mh"
    ops.init_service = mh_init_service
    ops.done_service = mh_done_service
    ops.add_dest = mh_dest_changed
    ops.del_dest = mh_dest_changed
    ops.upd_dest = mh_dest_changed
    ops.schedule = mh_schedule
