# TCP for the IPVS engine (the kernel's ip_vs_proto_tcp.c): states, transition tables,
# timeouts, the active-state table and the conn_schedule admission rule.
from libc.stdint cimport int64_t, uint8_t
from ipvsflow.engine.defs cimport engine_t
from ipvsflow.engine.conntab cimport conn_entry
from ipvsflow.engine.core cimport proto_ops
from ipvsflow.io.batch cimport pkt_desc

# IP_VS_TCP_S_* (include/net/ip_vs.h)
cdef enum:
    TCP_S_NONE = 0
    TCP_S_ESTABLISHED = 1
    TCP_S_SYN_SENT = 2
    TCP_S_SYN_RECV = 3
    TCP_S_FIN_WAIT = 4
    TCP_S_TIME_WAIT = 5
    TCP_S_CLOSE = 6
    TCP_S_CLOSE_WAIT = 7
    TCP_S_LAST_ACK = 8
    TCP_S_LISTEN = 9
    TCP_S_SYNACK = 10
    TCP_S_LAST = 11

cdef enum:
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_ACK = 0x10

# Fill the ops table slot for IPPROTO_TCP.
cdef void tcp_register(proto_ops *ops) noexcept nogil

cdef bint tcp_state_active(const engine_t *e, int state) noexcept nogil
cdef int tcp_state_idx(uint8_t tcp_flags) noexcept nogil
cdef uint8_t tcp_next_state(const engine_t *e, int table_off, int event, int state) noexcept nogil
