# Destination hashing scheduling (net/netfilter/ipvs/ip_vs_dh.c).
#
# A 256-bucket table maps hash_32(ntohl(addr_fold), 8) of the packet's DESTINATION address to a
# real server: for an ordinary service that is the VIP, so all its traffic goes to one server (dh
# is meant for fwmark services in front of caches); for an ICMP error scheduled with
# schedule_icmp it is the client (the quoted packet's destination: sched_iph_daddr). Fill: one bucket per dest, cycling through the
# list from the head; weights are ignored. Rebuilt on dest add and delete only: the kernel has no
# update hook (the table does not depend on weights). The bucket's dest gives no destination if it
# is not AVAILABLE, has weight <= 0 or is OVERLOAD; there is no fallback.
from libc.stdint cimport int32_t, uint32_t
from libc.stdlib cimport malloc, free
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t, DEST_F_AVAILABLE
from ipvsflow.engine.sched_common cimport sched_ops, dest_overloaded, sched_iph_daddr
from ipvsflow.engine.hsiphash cimport hash_32, addr_fold
from ipvsflow.io.batch cimport pkt_desc


cdef void _reassign(engine_t *e, service_t *svc, dh_state *s) noexcept nogil:
    # ip_vs_dh_reassign
    cdef int i
    cdef int32_t d = svc.dest_head
    for i in range(DH_TAB_SIZE):
        if svc.dest_head < 0:
            s.buckets[i] = -1
            continue
        if d < 0:
            d = svc.dest_head
        s.buckets[i] = d
        d = e.dests[d].next


cdef int dh_init_service(engine_t *e, service_t *svc) noexcept nogil:
    cdef dh_state *s = <dh_state *>malloc(sizeof(dh_state))
    if s == NULL:
        return -1
    _reassign(e, svc, s)
    svc.sched_data = s
    return 0


cdef void dh_done_service(engine_t *e, service_t *svc) noexcept nogil:
    free(svc.sched_data)
    svc.sched_data = NULL


cdef int dh_dest_changed(engine_t *e, service_t *svc, int32_t dest) noexcept nogil:
    if svc.sched_data == NULL:
        return -1
    _reassign(e, svc, <dh_state *>svc.sched_data)
    return 0


cdef int32_t dh_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef dh_state *s = <dh_state *>svc.sched_data
    cdef int32_t d
    cdef dest_t *dp
    if s == NULL:
        return -1
    d = s.buckets[hash_32(addr_fold(sched_iph_daddr(p), p.af, svc.af), DH_TAB_BITS)]
    if d < 0:
        return -1
    dp = &e.dests[d]
    if not (dp.flags & DEST_F_AVAILABLE) or dp.weight <= 0 or dest_overloaded(dp):
        return -1
    return d


cdef void dh_register(sched_ops *ops) noexcept:
    ops.name = b"dh"
    ops.init_service = dh_init_service
    ops.done_service = dh_done_service
    ops.add_dest = dh_dest_changed
    ops.del_dest = dh_dest_changed
    ops.upd_dest = NULL
    ops.schedule = dh_schedule
