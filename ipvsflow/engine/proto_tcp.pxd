# TCP for the IPVS engine (the kernel's ip_vs_proto_tcp.c): states, transition tables,
# timeouts, the active-state table and the conn_schedule admission rule.
from libc.stdint cimport int64_t, uint8_t, uint16_t
from ipvsflow.engine.defs cimport engine_t, dest_t
from ipvsflow.engine.conntab cimport conn_entry, CONN_NONE, CF_NOOUTPUT, CF_INACTIVE, CF_TEMPLATE
from ipvsflow.engine.core cimport proto_ops, IP_VS_DIR_OUTPUT
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

# tcp_states[] (dos = 0) or tcp_states_dos[] (dos = 1): 12 rows (INPUT, OUTPUT, INPUT_ONLY x
# syn, fin, ack, rst) of 11 next states, row-major; for tcp_set_state_i.
cdef const uint8_t *tcp_state_table(bint dos) noexcept nogil


# ---- the per-packet part, inline for the engine core --------------------------------------
# The ops table entries (tcp_register) run these same functions; the core calls them directly
# so that the C compiler inlines them into its packet loop.

# Active states (tcp_state_active_table) as bit masks over the state numbers: since v4.8
# (be2cef49904b) the pre-established states count as active; before, only ESTABLISHED.
cdef enum:
    TCP_ACTIVE_V48 = (1 << TCP_S_ESTABLISHED) | (1 << TCP_S_SYN_SENT) | (1 << TCP_S_SYN_RECV) | (1 << TCP_S_SYNACK)
    TCP_ACTIVE_OLD = 1 << TCP_S_ESTABLISHED
    TCP_ROW_OUTPUT = 4              # row offset of the OUTPUT / INPUT_ONLY tables
    TCP_ROW_INPUT_ONLY = 8
    TCP_TPL_ASSURED = 1             # IP_VS_CTPL_S_ASSURED


cdef inline bint tcp_is_new_conn_i(const pkt_desc *p) noexcept nogil:
    return (p.tcp_flags & TH_SYN) != 0


cdef extern from *:
    """
    /* tcp_state_idx by the flags FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10 */
    static inline int ipvsflow_tcp_event(unsigned int tcp_flags) {
        static const signed char t[32] = {-1, 1, 0, 0, 3, 3, 3, 3, -1, 1, 0, 0, 3, 3, 3, 3, 2, 1, 0, 0, 3, 3, 3, 3, 2, 1, 0, 0, 3, 3, 3, 3};
        return t[tcp_flags & 0x17];
    }
    """
    int ipvsflow_tcp_event(unsigned int tcp_flags) noexcept nogil


cdef inline int tcp_event_i(uint8_t tcp_flags) noexcept nogil:
    # tcp_state_idx: priority RST > SYN > FIN > ACK; none of them: -1 (new state CLOSE).
    # One table load instead of four tests (an ACK, the common packet, took them all).
    return ipvsflow_tcp_event(tcp_flags)


cdef inline bint tcp_active_i(const engine_t *e, int state) noexcept nogil:
    if state < 0 or state >= TCP_S_LAST:
        return False
    return ((TCP_ACTIVE_V48 if e.tcp_active_v48 else TCP_ACTIVE_OLD) >> state) & 1


cdef inline void tcp_set_state_i(engine_t *e, const uint8_t *table, conn_entry *cp, int direction,
                                 uint8_t tcp_flags) noexcept nogil:
    # set_tcp_state; table: tcp_state_table(secure_tcp > 1)
    cdef int row = TCP_ROW_OUTPUT if direction == IP_VS_DIR_OUTPUT else 0
    cdef int event, state = cp.state
    cdef int new_state = TCP_S_CLOSE
    cdef bint active
    cdef dest_t *d
    cdef conn_entry *ct
    if cp.flags & CF_NOOUTPUT:
        if row == TCP_ROW_OUTPUT:
            cp.flags &= ~(<uint16_t>CF_NOOUTPUT)
        else:
            row = TCP_ROW_INPUT_ONLY
    event = tcp_event_i(tcp_flags)
    if event >= 0:
        if state >= TCP_S_LAST:
            state = TCP_S_NONE
        new_state = table[(row + event) * TCP_S_LAST + state]
    if new_state != cp.state:
        if cp.dest != CONN_NONE:
            d = &e.dests[cp.dest]
            active = tcp_active_i(e, new_state)
            if not (cp.flags & CF_INACTIVE) and not active:
                d.activeconns -= 1
                d.inactconns += 1
                cp.flags |= CF_INACTIVE
            elif (cp.flags & CF_INACTIVE) and active:
                d.activeconns += 1
                d.inactconns -= 1
                cp.flags &= ~(<uint16_t>CF_INACTIVE)
        if new_state == TCP_S_ESTABLISHED and cp.control != CONN_NONE:
            # ip_vs_control_assure_ct
            ct = &e.ct.entries[cp.control]
            if (ct.flags & CF_TEMPLATE) and not (ct.state & TCP_TPL_ASSURED):
                ct.state |= TCP_TPL_ASSURED
    cp.state = <uint8_t>new_state


cdef inline int64_t tcp_timeout_i(const engine_t *e, const conn_entry *cp) noexcept nogil:
    if cp.state < TCP_S_LAST:
        return e.tcp_timeout[cp.state]
    return e.tcp_timeout[TCP_S_LAST]
