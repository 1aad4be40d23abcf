# Overflow-connection scheduling (net/netfilter/ipvs/ip_vs_ovf.c): skip dests that are OVERLOAD,
# have weight 0, or have more active connections than their weight (equal still qualifies);
# among the rest the highest weight, ties keep the earliest in list order. Inactive connections
# are ignored.
from libc.stdint cimport int32_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport sched_ops, dest_overloaded
from ipvsflow.io.batch cimport pkt_desc


cdef int32_t ovf_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef int32_t best = -1
    cdef int32_t hw = 0, w
    cdef int32_t d = svc.dest_head
    cdef dest_t *dp
    while d >= 0:
        dp = &e.dests[d]
        w = dp.weight
        if not (dest_overloaded(dp) or <int32_t>dp.activeconns > w or w == 0):
            if best < 0 or w > hw:
                best = d
                hw = w
        d = dp.next
    return best


cdef void ovf_register(sched_ops *ops) noexcept:
    ops.name = b"ovf"
    ops.init_service = NULL
    ops.done_service = NULL
    ops.add_dest = NULL
    ops.del_dest = NULL
    ops.upd_dest = NULL
    ops.schedule = ovf_schedule
