# Source hashing scheduling (net/netfilter/ipvs/ip_vs_sh.c).
#
# A 256-bucket table maps a hash of the client's address (and, with sh-port, its source port) to a
# real server. Fill: walk the destination list cyclically from the head; each dest takes weight
# consecutive buckets, a weight-0 dest still one (the kernel moves on once ++count >= weight).
# Rebuilt on every dest add, delete and edit, from the list and weights at that moment.
#
# Key: H = hash_32(port + ntohl(addr_fold), 8), u32 wrap-around; port is 0 without sh-port. The
# bucket's dest is unavailable if weight <= 0 or OVERLOAD: then no destination, unless sh-fallback,
# which probes (offset + H + hash_32(...)) & 255 with offset = (k + H) % 256, i.e. (2H + k) mod 256
# for k = 0..255, and stops with no destination at an empty bucket.
from libc.stdint cimport int32_t, uint32_t
from libc.stdlib cimport malloc, free
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport (
    sched_ops, dest_overloaded, SVC_F_SCHED1, SVC_F_SCHED2, sched_client_port,
)
from ipvsflow.engine.hsiphash cimport hash_32, addr_fold
from ipvsflow.io.batch cimport pkt_desc


cdef inline bint _unavailable(const dest_t *d) noexcept nogil:
    return d.weight <= 0 or dest_overloaded(d)


cdef void _reassign(engine_t *e, service_t *svc, sh_state *s) noexcept nogil:
    # ip_vs_sh_reassign
    cdef int i
    cdef int32_t d = svc.dest_head
    cdef int32_t count = 0
    for i in range(SH_TAB_SIZE):
        if svc.dest_head < 0:
            s.buckets[i] = -1
            continue
        if d < 0:
            d = svc.dest_head
        s.buckets[i] = d
        count += 1
        if count >= e.dests[d].weight:
            d = e.dests[d].next
            count = 0


cdef int sh_init_service(engine_t *e, service_t *svc) noexcept nogil:
    cdef sh_state *s = <sh_state *>malloc(sizeof(sh_state))
    if s == NULL:
        return -1
    _reassign(e, svc, s)
    svc.sched_data = s
    return 0


cdef void sh_done_service(engine_t *e, service_t *svc) noexcept nogil:
    free(svc.sched_data)
    svc.sched_data = NULL


cdef int sh_dest_changed(engine_t *e, service_t *svc, int32_t dest) noexcept nogil:
    if svc.sched_data == NULL:
        return -1
    _reassign(e, svc, <sh_state *>svc.sched_data)
    return 0


cdef inline uint32_t _hashkey(uint32_t fold, uint32_t port, uint32_t offset) noexcept nogil:
    return (offset + hash_32(port + fold, SH_TAB_BITS)) & SH_TAB_MASK


cdef int32_t sh_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef sh_state *s = <sh_state *>svc.sched_data
    cdef uint32_t fold, port = 0, ihash, k
    cdef uint32_t size = SH_TAB_SIZE
    cdef int32_t d
    if s == NULL:
        return -1
    fold = addr_fold(p.src, p.af, svc.af)
    if svc.flags & SVC_F_SCHED2:
        port = sched_client_port(p.proto, p.sport)
    ihash = _hashkey(fold, port, 0)
    d = s.buckets[ihash]
    if d < 0:
        return -1
    if not _unavailable(&e.dests[d]):
        return d
    if not (svc.flags & SVC_F_SCHED1):
        return -1
    # ip_vs_sh_get_fallback
    for k in range(size):
        d = s.buckets[_hashkey(fold, port, (k + ihash) % SH_TAB_SIZE)]
        if d < 0:
            return -1
        if not _unavailable(&e.dests[d]):
            return d
    return -1


cdef void sh_register(sched_ops *ops) noexcept:
    ops.name = b"sh"
    ops.init_service = sh_init_service
    ops.done_service = sh_done_service
    ops.add_dest = sh_dest_changed
    ops.del_dest = sh_dest_changed
    ops.upd_dest = sh_dest_changed
    ops.schedule = sh_schedule
