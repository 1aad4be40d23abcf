# AH / ESP for the IPVS engine: the kernel's ip_vs_proto_ah_esp.c.
#
# IPsec traffic is related to its IKE negotiation: an AH or ESP packet is looked up as the UDP
# connection client:500 -> VIP:500 (ah_esp_conn_fill_param_proto; the core builds that key) and,
# when found, forwarded with it; the entry's timer restarts with the UDP timeout it already has.
# There is no state transition, and AH/ESP never creates an entry (ah_esp_conn_schedule accepts
# the packet to the local stack).
from libc.stdint cimport int64_t, uint8_t
from ipvsflow.engine.defs cimport engine_t
from ipvsflow.engine.conntab cimport conn_entry
from ipvsflow.engine.core cimport proto_ops, R_RELATED_ONLY
from ipvsflow.io.batch cimport pkt_desc


cdef bint ah_esp_is_new_conn(const pkt_desc *p) noexcept nogil:
    return False


cdef bint ah_esp_is_new_conn_expected(const conn_entry *cp, int conn_reuse_mode,
                                      bint close_expected) noexcept nogil:
    return False


cdef uint8_t ah_esp_conn_schedule(const engine_t *e, const pkt_desc *p) noexcept nogil:
    return R_RELATED_ONLY


cdef void ah_esp_state_transition(engine_t *e, conn_entry *cp, int direction,
                                  const pkt_desc *p) noexcept nogil:
    return                          # no state_transition hook: ip_vs_set_state does nothing


cdef int64_t ah_esp_timeout(const engine_t *e, const conn_entry *cp) noexcept nogil:
    return e.udp_timeout            # the UDP/500 entry keeps its UDP timeout


cdef bint ah_esp_tracker_reopens(const conn_entry *cp) noexcept nogil:
    return False


cdef void ah_esp_register(proto_ops *ops, unsigned char protocol) noexcept nogil:
    ops.protocol = protocol
    ops.registered = 1
    ops.modelled = 1
    ops.num_states = 1
    ops.is_new_conn = ah_esp_is_new_conn
    ops.is_new_conn_expected = ah_esp_is_new_conn_expected
    ops.conn_schedule = ah_esp_conn_schedule
    ops.state_transition = ah_esp_state_transition
    ops.timeout = ah_esp_timeout
    ops.tracker_reopens = ah_esp_tracker_reopens
    ops.nf_track = NULL
