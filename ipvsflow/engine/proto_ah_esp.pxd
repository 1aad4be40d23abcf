# AH and ESP for the IPVS engine (the kernel's ip_vs_proto_ah_esp.c): no state machine; packets
# follow the UDP/500 (ISAKMP) connection between the same addresses and never schedule.
from ipvsflow.engine.core cimport proto_ops

cdef enum:
    PORT_ISAKMP = 500

# Fill the ops table slot for IPPROTO_AH or IPPROTO_ESP.
cdef void ah_esp_register(proto_ops *ops, unsigned char protocol) noexcept nogil
