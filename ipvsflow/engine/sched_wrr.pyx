# Weighted round-robin scheduling (net/netfilter/ipvs/ip_vs_wrr.c).
#
# State (ip_vs_wrr_mark): cl = svc.wrr_cl (cursor dest id, -1 = list head), cw = current
# weight, mw = max weight - (di - 1), di = gcd of the positive weights (1 if none). Passes run
# with cw = mw, mw - di, ..., down to 1; a pass picks, in list order after cl, the dests that are
# not OVERLOAD with weight >= cw.
#
# Every dest add, delete and edit recomputes di and mw, resets cl to the head, and adjusts cw
# (ip_vs_wrr_dest_changed). A service is created with no dests (cw = mw = 0), so its first -a sets
# cw = mw = 1 (gcd = that weight): one -a per server therefore starts with a cw = 1 pass over the
# whole list before the weighted cycle from cw = mw.
from libc.stdint cimport int32_t
from ipvsflow.engine.defs cimport engine_t, service_t, dest_t
from ipvsflow.engine.sched_common cimport sched_ops, dest_next, dest_overloaded
from ipvsflow.io.batch cimport pkt_desc


cdef inline int32_t _gcd(int32_t a, int32_t b) noexcept nogil:
    cdef int32_t t
    while b:
        t = a % b
        a = b
        b = t
    return a


cdef int32_t _gcd_weight(engine_t *e, service_t *svc) noexcept nogil:
    cdef int32_t g = 0, w
    cdef int32_t d = svc.dest_head
    while d >= 0:
        w = e.dests[d].weight
        if w > 0:
            g = _gcd(w, g) if g > 0 else w
        d = e.dests[d].next
    return g if g else 1


cdef int32_t _max_weight(engine_t *e, service_t *svc) noexcept nogil:
    cdef int32_t m = 0
    cdef int32_t d = svc.dest_head
    while d >= 0:
        if e.dests[d].weight > m:
            m = e.dests[d].weight
        d = e.dests[d].next
    return m


cdef int wrr_init_service(engine_t *e, service_t *svc) noexcept nogil:
    svc.wrr_cl = -1
    svc.wrr_di = _gcd_weight(e, svc)
    svc.wrr_mw = _max_weight(e, svc) - (svc.wrr_di - 1)
    svc.wrr_cw = svc.wrr_mw
    return 0


cdef int wrr_dest_changed(engine_t *e, service_t *svc, int32_t dest) noexcept nogil:
    svc.wrr_cl = -1
    svc.wrr_di = _gcd_weight(e, svc)
    svc.wrr_mw = _max_weight(e, svc) - (svc.wrr_di - 1)
    if svc.wrr_cw > svc.wrr_mw or svc.wrr_cw == 0:
        svc.wrr_cw = svc.wrr_mw
    elif svc.wrr_di > 1:
        svc.wrr_cw = (svc.wrr_cw // svc.wrr_di) * svc.wrr_di + 1
    return 0


cdef int32_t wrr_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil:
    cdef int32_t d = svc.wrr_cl
    cdef int32_t last
    cdef int32_t stop = -2          # -2: no stop dest (-1 is the head)
    cdef bint last_pass = False
    cdef bint restarted = False
    cdef dest_t *dp
    if svc.wrr_mw == 0:
        return -1                   # no available dests; cl unchanged
    last = d
    # Stops only after every dest was checked for weight >= 1 (the last pass).
    while True:
        d = dest_next(e, svc, d)
        while d >= 0:
            dp = &e.dests[d]
            if not dest_overloaded(dp) and dp.weight >= svc.wrr_cw:
                svc.wrr_cl = d
                return d
            if d == stop:
                svc.wrr_cl = d
                return -1
            d = dp.next
        # end of the list (d is the head now)
        svc.wrr_cw -= svc.wrr_di
        if svc.wrr_cw <= 0:
            svc.wrr_cw = svc.wrr_mw
            # a last pass already ran, or the one traversal from the head was for weight >= 1
            if last_pass or last < 0:
                svc.wrr_cl = -1
                return -1
            restarted = True
        last_pass = svc.wrr_cw <= svc.wrr_di
        if last_pass and restarted and last >= 0:
            # the first traversal for weight >= 1 covered only the dests after `last`
            stop = last


cdef void wrr_register(sched_ops *ops) noexcept:
    ops.name = b"wrr"
    ops.init_service = wrr_init_service
    ops.done_service = NULL
    ops.add_dest = wrr_dest_changed
    ops.del_dest = wrr_dest_changed
    ops.upd_dest = wrr_dest_changed
    ops.schedule = wrr_schedule
