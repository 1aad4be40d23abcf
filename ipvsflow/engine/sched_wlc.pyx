# Weighted least-connection scheduling (net/netfilter/ipvs/ip_vs_wlc.c).
#
# least := the first dest that is not OVERLOAD and has weight > 0; then every later dest that is
# not OVERLOAD replaces it when overhead(least) * w(dest) > overhead(dest) * w(least) (64-bit
# products, strict: ties keep the earlier dest). A weight-0 dest can't win (its left side is 0).
from libc.stdint cimport int32_t, int64_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport sched_ops, dest_conn_overhead, dest_overloaded
from ipvsflow.io.batch cimport pkt_desc


cdef int32_t wlc_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
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
    loh = dest_conn_overhead(&e.dests[least])
    d = e.dests[least].next
    while d >= 0:
        dp = &e.dests[d]
        if not dest_overloaded(dp):
            doh = dest_conn_overhead(dp)
            if <int64_t>loh * dp.weight > <int64_t>doh * e.dests[least].weight:
                least = d
                loh = doh
        d = dp.next
    return least


cdef void wlc_register(sched_ops *ops) noexcept:
    ops.name = b"wlc"
    ops.init_service = NULL
    ops.done_service = NULL
    ops.add_dest = NULL
    ops.del_dest = NULL
    ops.upd_dest = NULL
    ops.schedule = wlc_schedule
