# Weighted fail-over (ip_vs_fo.c).
from libc.stdint cimport int32_t
from ipvsflow.engine.defs cimport engine_t, service_t
from ipvsflow.engine.sched_common cimport sched_ops
from ipvsflow.io.batch cimport pkt_desc

cdef int32_t fo_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil
cdef void fo_register(sched_ops *ops) noexcept
