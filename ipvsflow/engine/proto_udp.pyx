# UDP for the IPVS engine: the kernel's ip_vs_proto_udp.c.
#
# One state (NORMAL, shown as "UDP"), timeout 300 s (ipvsadm --set udp). The transition only
# resets the timeout and, for a reply, marks the controlling persistence template ASSURED: it
# never moves the active/inactive counters, so a UDP entry stays in InActConn all its life.
# Any UDP packet may create an entry, and is_new_conn is false, so the port-reuse logic never
# applies to UDP.
from libc.stdint cimport int64_t, uint8_t, uint32_t
from ipvsflow.engine.defs cimport engine_t
from ipvsflow.engine.conntab cimport conn_entry, CONN_NONE, CF_TEMPLATE
from ipvsflow.engine.core cimport (
    proto_ops, IP_VS_DIR_OUTPUT, nf_state, NF_F_SEEN_REPLY, NF_R_CONFIRMED, NF_R_NEW,
)
from ipvsflow.io.batch cimport pkt_desc

cdef enum:
    IPPROTO_UDP = 17


cdef bint udp_is_new_conn(const pkt_desc *p) noexcept nogil:
    return False


cdef bint udp_is_new_conn_expected(const conn_entry *cp, int conn_reuse_mode,
                                   bint close_expected) noexcept nogil:
    return False


cdef uint8_t udp_conn_schedule(const engine_t *e, const pkt_desc *p) noexcept nogil:
    return 0


cdef void udp_state_transition(engine_t *e, conn_entry *cp, int direction,
                               const pkt_desc *p) noexcept nogil:
    udp_set_state_i(e, cp, direction)


cdef int64_t udp_timeout(const engine_t *e, const conn_entry *cp) noexcept nogil:
    return udp_timeout_i(e)


cdef bint udp_tracker_reopens(const conn_entry *cp) noexcept nogil:
    # a UDP conntrack that saw a packet is confirmed and is never replaced by a new packet
    return False


# netfilter's UDP conntrack (nf_conntrack_proto_udp.c) for the old_ct model: 30 s until a reply
# was seen; with replies, 120 s once the conntrack is older than 2 s.
cdef int64_t NF_UDP_UNREPLIED_NS = 30 * <int64_t>1000000000
cdef int64_t NF_UDP_REPLIED_NS = 120 * <int64_t>1000000000


cdef int udp_nf_track(nf_state *s, int direction, const pkt_desc *p, int64_t now) noexcept nogil:
    cdef bint d = direction == IP_VS_DIR_OUTPUT
    cdef int ret = NF_R_CONFIRMED
    cdef int64_t timeout = NF_UDP_UNREPLIED_NS
    cdef uint32_t now_ms = <uint32_t>(now // 1000000)
    if s.state and now >= s.expires_ns:
        s.state = 0
    if s.state == 0:
        if d:
            return 0
        s.state = 1
        s.flags = 0
        s.born_ms = now_ms
        ret = NF_R_NEW
    if (s.flags & NF_F_SEEN_REPLY) and <uint32_t>(now_ms - s.born_ms) > 2000:
        timeout = NF_UDP_REPLIED_NS
    s.expires_ns = now + timeout
    if d:
        s.flags |= NF_F_SEEN_REPLY
    return ret


cdef void udp_register(proto_ops *ops) noexcept nogil:
    ops.protocol = IPPROTO_UDP
    ops.registered = 1
    ops.modelled = 1
    ops.num_states = UDP_S_LAST
    ops.is_new_conn = udp_is_new_conn
    ops.is_new_conn_expected = udp_is_new_conn_expected
    ops.conn_schedule = udp_conn_schedule
    ops.state_transition = udp_state_transition
    ops.timeout = udp_timeout
    ops.tracker_reopens = udp_tracker_reopens
    ops.nf_track = udp_nf_track


DEFAULT_TIMEOUT = 300
N_STATES = UDP_S_LAST
