# Source hashing (ip_vs_sh.c).
from libc.stdint cimport int32_t
from ipvsflow.engine.defs cimport engine_t, service_t
from ipvsflow.engine.sched_common cimport sched_ops
from ipvsflow.io.batch cimport pkt_desc

cdef enum:
    SH_TAB_BITS = 8                 # CONFIG_IP_VS_SH_TAB_BITS default
    SH_TAB_SIZE = 256
    SH_TAB_MASK = 255

# service_t.sched_data of an sh service: bucket -> dest id (-1 = empty: the service has no dests)
ctypedef struct sh_state:
    int32_t buckets[SH_TAB_SIZE]

cdef int32_t sh_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil
cdef void sh_register(sched_ops *ops) noexcept
