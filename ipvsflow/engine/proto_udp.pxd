# UDP for the IPVS engine (the kernel's ip_vs_proto_udp.c): one state, NORMAL ("UDP").
from libc.stdint cimport int64_t
from ipvsflow.engine.defs cimport engine_t
from ipvsflow.engine.conntab cimport conn_entry, CONN_NONE, CF_TEMPLATE
from ipvsflow.engine.core cimport proto_ops, IP_VS_DIR_OUTPUT

cdef enum:
    UDP_S_NORMAL = 0
    UDP_S_LAST = 1
    UDP_TPL_ASSURED = 1             # IP_VS_CTPL_S_ASSURED

# Fill the ops table slot for IPPROTO_UDP.
cdef void udp_register(proto_ops *ops) noexcept nogil


# ---- the per-packet part, inline for the engine core (the ops table runs the same code) ----
cdef inline void udp_set_state_i(engine_t *e, conn_entry *cp, int direction) noexcept nogil:
    # udp_state_transition: only a reply marks the controlling template ASSURED
    cdef conn_entry *ct
    if direction == IP_VS_DIR_OUTPUT and cp.control != CONN_NONE:
        ct = &e.ct.entries[cp.control]
        if (ct.flags & CF_TEMPLATE) and not (ct.state & UDP_TPL_ASSURED):
            ct.state |= UDP_TPL_ASSURED


cdef inline int64_t udp_timeout_i(const engine_t *e) noexcept nogil:
    return e.udp_timeout
