# Least-connection scheduling (net/netfilter/ipvs/ip_vs_lc.c): among the dests that are not
# OVERLOAD and have weight != 0, the smallest overhead (activeconns * 256 + inactconns, compared
# unsigned as the kernel does); strict < keeps the earliest in list order (newest first).
from libc.stdint cimport int32_t, uint32_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport sched_ops, dest_conn_overhead, dest_overloaded
from ipvsflow.io.batch cimport pkt_desc


cdef int32_t lc_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef int32_t least = -1
    cdef uint32_t loh = 0, doh
    cdef int32_t d = svc.dest_head
    cdef dest_t *dp
    while d >= 0:
        dp = &e.dests[d]
        if not dest_overloaded(dp) and dp.weight != 0:
            doh = <uint32_t>dest_conn_overhead(dp)
            if least < 0 or doh < loh:
                least = d
                loh = doh
        d = dp.next
    return least


cdef void lc_register(sched_ops *ops) noexcept:
    ops.name = b"lc"
    ops.init_service = NULL
    ops.done_service = NULL
    ops.add_dest = NULL
    ops.del_dest = NULL
    ops.upd_dest = NULL
    ops.schedule = lc_schedule
