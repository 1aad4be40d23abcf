# Destination hashing (ip_vs_dh.c).
from libc.stdint cimport int32_t
from ipvsflow.engine.defs cimport engine_t, service_t
from ipvsflow.engine.sched_common cimport sched_ops
from ipvsflow.io.batch cimport pkt_desc

cdef enum:
    DH_TAB_BITS = 8                 # CONFIG_IP_VS_DH_TAB_BITS default
    DH_TAB_SIZE = 256

# service_t.sched_data of a dh service: bucket -> dest id (-1 = empty: the service has no dests)
ctypedef struct dh_state:
    int32_t buckets[DH_TAB_SIZE]

cdef int32_t dh_schedule(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil
cdef void dh_register(sched_ops *ops) noexcept
