# Round-robin scheduling (net/netfilter/ipvs/ip_vs_rr.c).
#
# State: svc.rr_cursor, the dest id the last pick returned (-1 = the list head, the kernel's
# sched_data = &svc->destinations). A pick walks forward from the cursor, wrapping through the
# head, and takes the first dest with weight > 0 that is not OVERLOAD; the cursor itself is
# checked last. Adding a dest leaves the cursor alone (no add_dest hook); deleting the cursor's
# dest moves the cursor to that dest's predecessor (ip_vs_rr_del_dest).
from libc.stdint cimport int32_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport sched_ops, dest_next, dest_overloaded
from ipvsflow.io.batch cimport pkt_desc


cdef int rr_init_service(engine_t *e, service_t *svc) noexcept nogil:
    svc.rr_cursor = -1
    return 0


cdef int rr_del_dest(engine_t *e, service_t *svc, int32_t dest) noexcept nogil:
    # The dest is already unlinked; its prev field still names its predecessor (-1 = head).
    if svc.rr_cursor == dest:
        svc.rr_cursor = e.dests[dest].prev
    return 0


cdef int32_t rr_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef int32_t start = svc.rr_cursor
    cdef int32_t last = start
    cdef int32_t d = start
    cdef int passes = 0
    cdef dest_t *dp
    while True:
        d = dest_next(e, svc, d)
        while d >= 0:
            dp = &e.dests[d]
            if not dest_overloaded(dp) and dp.weight > 0:
                svc.rr_cursor = d
                return d
            if d == last:
                return -1
            d = dp.next
        passes += 1
        # Starting at the head, one pass saw every dest.
        if passes >= 2 or start < 0:
            return -1


cdef void rr_register(sched_ops *ops) noexcept:
    ops.name = b"rr"
    ops.init_service = rr_init_service
    ops.done_service = NULL
    ops.add_dest = NULL
    ops.del_dest = rr_del_dest
    ops.upd_dest = NULL
    ops.schedule = rr_schedule
