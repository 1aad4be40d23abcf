# Weighted least-connection (ip_vs_wlc.c).
from libc.stdint cimport int32_t
from ipvsflow.engine.defs cimport engine_t, service_t
from ipvsflow.engine.sched_common cimport sched_ops
from ipvsflow.io.batch cimport pkt_desc

cdef int32_t wlc_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil
cdef void wlc_register(sched_ops *ops) noexcept
