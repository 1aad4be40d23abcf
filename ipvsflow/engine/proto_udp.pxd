# UDP for the IPVS engine (the kernel's ip_vs_proto_udp.c): one state, NORMAL ("UDP").
from ipvsflow.engine.core cimport proto_ops

cdef enum:
    UDP_S_NORMAL = 0
    UDP_S_LAST = 1

# Fill the ops table slot for IPPROTO_UDP.
cdef void udp_register(proto_ops *ops) noexcept nogil
