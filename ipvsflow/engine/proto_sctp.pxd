# SCTP for the IPVS engine (the kernel's ip_vs_proto_sctp.c): states, chunk events, transition
# tables, timeouts, the conn_schedule admission rule, and netfilter's SCTP conntrack
# (nf_conntrack_proto_sctp.c) for the old_ct model.
from ipvsflow.engine.core cimport proto_ops
from ipvsflow.io.batch cimport pkt_desc

# IP_VS_SCTP_S_* (include/net/ip_vs.h)
cdef enum:
    SCTP_S_NONE = 0
    SCTP_S_INIT1 = 1
    SCTP_S_INIT = 2
    SCTP_S_COOKIE_SENT = 3
    SCTP_S_COOKIE_REPLIED = 4
    SCTP_S_COOKIE_WAIT = 5
    SCTP_S_COOKIE = 6
    SCTP_S_COOKIE_ECHOED = 7
    SCTP_S_ESTABLISHED = 8
    SCTP_S_SHUTDOWN_SENT = 9
    SCTP_S_SHUTDOWN_RECEIVED = 10
    SCTP_S_SHUTDOWN_ACK_SENT = 11
    SCTP_S_REJECTED = 12
    SCTP_S_CLOSED = 13
    SCTP_S_LAST = 14

# enum ipvs_sctp_event_t (ip_vs_proto_sctp.c)
cdef enum:
    SCTP_EV_DATA = 0            # DATA, SACK, HEARTBEAT(_ACK), ECN chunks and every type >= 15
    SCTP_EV_INIT = 1
    SCTP_EV_INIT_ACK = 2
    SCTP_EV_COOKIE_ECHO = 3
    SCTP_EV_COOKIE_ACK = 4
    SCTP_EV_SHUTDOWN = 5
    SCTP_EV_SHUTDOWN_ACK = 6
    SCTP_EV_SHUTDOWN_COMPLETE = 7
    SCTP_EV_ERROR = 8
    SCTP_EV_ABORT = 9
    SCTP_EV_LAST = 10

# Fill the ops table slot for IPPROTO_SCTP.
cdef void sctp_register(proto_ops *ops) noexcept nogil

# The event set_sctp_state takes from the packet; -1 when it finds no chunk (no transition).
cdef int sctp_packet_event(const pkt_desc *p) noexcept nogil
