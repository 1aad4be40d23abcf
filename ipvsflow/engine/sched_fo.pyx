# Weighted fail-over scheduling (net/netfilter/ipvs/ip_vs_fo.c): the highest weight among the
# dests that are not OVERLOAD; weight must exceed the best so far (starting at 0), so weight-0
# dests never win and ties keep the earliest in list order.
from libc.stdint cimport int32_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport sched_ops, dest_overloaded
from ipvsflow.io.batch cimport pkt_desc


cdef int32_t fo_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef int32_t best = -1
    cdef int32_t hw = 0
    cdef int32_t d = svc.dest_head
    cdef dest_t *dp
    while d >= 0:
        dp = &e.dests[d]
        if not dest_overloaded(dp) and dp.weight > hw:
            best = d
            hw = dp.weight
        d = dp.next
    return best


cdef void fo_register(sched_ops *ops) noexcept:
    ops.name = b"fo"
    ops.init_service = NULL
    ops.done_service = NULL
    ops.add_dest = NULL
    ops.del_dest = NULL
    ops.upd_dest = NULL
    ops.schedule = fo_schedule
