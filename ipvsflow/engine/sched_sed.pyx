# Shortest-expected-delay scheduling (net/netfilter/ipvs/ip_vs_sed.c): wlc's walk with the
# overhead activeconns + 1 (inactive connections are ignored).
from libc.stdint cimport int32_t, int64_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport sched_ops, dest_overloaded
from ipvsflow.io.batch cimport pkt_desc


cdef inline int32_t _sed_overhead(const dest_t *d) noexcept nogil:
    return <int32_t>(d.activeconns + 1)


cdef int32_t sed_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef int32_t least = svc.dest_head
    cdef int32_t loh, doh
    cdef int32_t d
    cdef dest_t *dp
    while least >= 0:
        dp = &e.dests[least]
        if not dest_overloaded(dp) and dp.weight > 0:
            break
        least = dp.next
    if least < 0:
        return -1
    loh = _sed_overhead(&e.dests[least])
    d = e.dests[least].next
    while d >= 0:
        dp = &e.dests[d]
        if not dest_overloaded(dp):
            doh = _sed_overhead(dp)
            if <int64_t>loh * dp.weight > <int64_t>doh * e.dests[least].weight:
                least = d
                loh = doh
        d = dp.next
    return least


cdef void sed_register(sched_ops *ops) noexcept:
    ops.name = b"sed"
    ops.init_service = NULL
    ops.done_service = NULL
    ops.add_dest = NULL
    ops.del_dest = NULL
    ops.upd_dest = NULL
    ops.schedule = sed_schedule
