# Never-queue scheduling (net/netfilter/ipvs/ip_vs_nq.c): walk the dests that are not OVERLOAD
# and have weight != 0 in list order; the first one with no active connection is taken at once;
# otherwise the minimum (activeconns + 1) / weight by 64-bit cross products, strict > (ties keep
# the earlier dest).
from libc.stdint cimport int32_t, int64_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport sched_ops, dest_overloaded
from ipvsflow.io.batch cimport pkt_desc


cdef int32_t nq_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef int32_t least = -1
    cdef int32_t loh = 0, doh
    cdef int32_t d = svc.dest_head
    cdef dest_t *dp
    while d >= 0:
        dp = &e.dests[d]
        if not dest_overloaded(dp) and dp.weight != 0:
            doh = <int32_t>(dp.activeconns + 1)
            if dp.activeconns == 0:
                return d
            if least < 0 or <int64_t>loh * dp.weight > <int64_t>doh * e.dests[least].weight:
                least = d
                loh = doh
        d = dp.next
    return least


cdef void nq_register(sched_ops *ops) noexcept:
    ops.name = b"nq"
    ops.init_service = NULL
    ops.done_service = NULL
    ops.add_dest = NULL
    ops.del_dest = NULL
    ops.upd_dest = NULL
    ops.schedule = nq_schedule
