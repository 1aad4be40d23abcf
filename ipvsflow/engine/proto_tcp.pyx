# TCP for the IPVS engine: the kernel's ip_vs_proto_tcp.c as data and small nogil functions.
#
# Tables are the kernel's tcp_states[] / tcp_states_dos[] (net/netfilter/ipvs/ip_vs_proto_tcp.c):
# 12 rows = 3 directions (INPUT, OUTPUT, INPUT_ONLY) x 4 events (syn, fin, ack, rst), each row
# giving the next state for the 11 current states NO ES SS SR FW TW CL CW LA LI SA.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t
from ipvsflow.engine.defs cimport engine_t
from ipvsflow.engine.conntab cimport (
    conn_entry, CONN_NONE, CF_NOOUTPUT, CF_INACTIVE, CF_TEMPLATE,
)
from ipvsflow.engine.core cimport (
    proto_ops, IP_VS_DIR_INPUT, IP_VS_DIR_OUTPUT,
    R_NOT_SYN, R_RST_NO_CONN,
    nf_state, NF_F_CLOSE_INIT, NF_F_LAST_RST, NF_F_LAST_REPLY, NF_F_SEEN_REPLY, NF_F_LAST_SYN,
    NF_R_CONFIRMED, NF_R_NEW,
)
from ipvsflow.io.batch cimport pkt_desc

cdef enum:
    IPPROTO_TCP = 6

# short names for the tables below
cdef enum:
    sNO = TCP_S_NONE
    sES = TCP_S_ESTABLISHED
    sSS = TCP_S_SYN_SENT
    sSR = TCP_S_SYN_RECV
    sFW = TCP_S_FIN_WAIT
    sTW = TCP_S_TIME_WAIT
    sCL = TCP_S_CLOSE
    sCW = TCP_S_CLOSE_WAIT
    sLA = TCP_S_LAST_ACK
    sLI = TCP_S_LISTEN
    sSA = TCP_S_SYNACK

cdef uint8_t TCP_STATES[2][12][11]

cdef void _fill_tables() noexcept:
    cdef uint8_t normal[12][11]
    cdef uint8_t dos[12][11]
    # tcp_states[]                sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
    # INPUT
    normal[0] = [sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR]    # syn
    normal[1] = [sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sTW]    # fin
    normal[2] = [sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES]    # ack
    normal[3] = [sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sSR]    # rst
    # OUTPUT
    normal[4] = [sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS, sLI, sSR]
    normal[5] = [sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW]
    normal[6] = [sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES]
    normal[7] = [sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL]
    # INPUT-ONLY
    normal[8] = [sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR]
    normal[9] = [sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW]
    normal[10] = [sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES]
    normal[11] = [sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL]
    # tcp_states_dos[]
    # INPUT
    dos[0] = [sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSA]
    dos[1] = [sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sSA]
    dos[2] = [sES, sES, sSS, sSR, sFW, sTW, sCL, sCW, sCL, sLI, sSA]
    dos[3] = [sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL]
    # OUTPUT
    dos[4] = [sSS, sES, sSS, sSA, sSS, sSS, sSS, sSS, sSS, sLI, sSA]
    dos[5] = [sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW]
    dos[6] = [sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES]
    dos[7] = [sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL]
    # INPUT-ONLY
    dos[8] = [sSA, sES, sES, sSR, sSA, sSA, sSA, sSA, sSA, sSA, sSA]
    dos[9] = [sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW]
    dos[10] = [sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES]
    dos[11] = [sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL]
    cdef int r, s
    for r in range(12):
        for s in range(11):
            TCP_STATES[0][r][s] = normal[r][s]
            TCP_STATES[1][r][s] = dos[r][s]

_fill_tables()

# tcp_state_active_table: TCP_ACTIVE_V48 / TCP_ACTIVE_OLD in proto_tcp.pxd.
cdef bint tcp_state_active(const engine_t *e, int state) noexcept nogil:
    return tcp_active_i(e, state)


cdef int tcp_state_idx(uint8_t tcp_flags) noexcept nogil:
    return tcp_event_i(tcp_flags)


cdef const uint8_t *tcp_state_table(bint dos) noexcept nogil:
    return &TCP_STATES[1 if dos else 0][0][0]


cdef uint8_t tcp_next_state(const engine_t *e, int table_off, int event, int state) noexcept nogil:
    # secure_tcp selects the dos table while the effective defense level is > 1 (only value 3
    # stays there without memory pressure; the engine stores 2 as 1, as update_defense_level does)
    if state < 0 or state >= TCP_S_LAST:
        state = TCP_S_NONE
    return TCP_STATES[1 if e.secure_tcp > 1 else 0][table_off + event][state]


cdef bint tcp_is_new_conn(const pkt_desc *p) noexcept nogil:
    return tcp_is_new_conn_i(p)


cdef bint tcp_is_new_conn_expected(const conn_entry *cp, int conn_reuse_mode,
                                   bint close_expected) noexcept nogil:
    if cp.control != CONN_NONE:
        return False            # controlled (persistence template or FTP data)
    if cp.state == TCP_S_TIME_WAIT:
        return True
    if close_expected and cp.state == TCP_S_CLOSE:
        return True
    return ((conn_reuse_mode & 2) != 0 and cp.state == TCP_S_FIN_WAIT
            and (cp.flags & CF_NOOUTPUT) != 0)


cdef uint8_t tcp_conn_schedule(const engine_t *e, const pkt_desc *p) noexcept nogil:
    # tcp_conn_schedule: RST never schedules; otherwise SYN (incl. SYN+ACK) or sloppy_tcp
    if p.tcp_flags & TH_RST:
        return R_RST_NO_CONN
    if not (e.sloppy_tcp or (p.tcp_flags & TH_SYN)):
        return R_NOT_SYN
    return 0


cdef void tcp_state_transition(engine_t *e, conn_entry *cp, int direction,
                               const pkt_desc *p) noexcept nogil:
    # set_tcp_state (the body is tcp_set_state_i in proto_tcp.pxd)
    tcp_set_state_i(e, tcp_state_table(e.secure_tcp > 1), cp, direction, p.tcp_flags)


cdef int64_t tcp_timeout(const engine_t *e, const conn_entry *cp) noexcept nogil:
    return tcp_timeout_i(e, cp)


cdef bint tcp_tracker_reopens(const conn_entry *cp) noexcept nogil:
    # netfilter's TCP tracker replaces a TIME_WAIT/CLOSE conntrack on a new SYN
    return cp.state == TCP_S_TIME_WAIT or cp.state == TCP_S_CLOSE


# ---- netfilter's TCP conntrack (nf_conntrack_proto_tcp.c), for the old_ct model -------------
# IPVS asks whether the packet carries a *confirmed* conntrack; which one it carries depends on
# netfilter's own TCP tracker, run on the same tuple before IPVS (PREROUTING). This is that
# tracker's state machine (tcp_conntracks[], tcp_new, the re-open rule of nf_conntrack_tcp_packet,
# the kill of a conntrack whose only reply is an RST, the timeouts). Sequence-window checks are
# not modelled: every segment is taken as in window.
cdef enum:
    nNO = 0
    nSS = 1
    nSR = 2
    nES = 3
    nFW = 4
    nCW = 5
    nLA = 6
    nTW = 7
    nCL = 8
    nS2 = 9
    nIV = 10                    # TCP_CONNTRACK_MAX: invalid
    nIG = 11                    # TCP_CONNTRACK_IGNORE

cdef enum:
    NF_SYN_SET = 0
    NF_SYNACK_SET = 1
    NF_FIN_SET = 2
    NF_ACK_SET = 3
    NF_RST_SET = 4
    NF_NONE_SET = 5

cdef enum:
    NF_F_CHALLENGE = 0x20       # IP_CT_EXP_CHALLENGE_ACK
    NF_F_SIMULTANEOUS = 0x40    # IP_CT_TCP_SIMULTANEOUS_OPEN

cdef uint8_t NF_TCP[2][6][10]
cdef int64_t NF_TCP_TIMEOUT[10]
cdef bint NF_TCP_VALID_FLAGS[64]

cdef void _fill_nf_tables() noexcept:
    cdef uint8_t orig[6][10]
    cdef uint8_t reply[6][10]
    #               nNO  nSS  nSR  nES  nFW  nCW  nLA  nTW  nCL  nS2
    orig[0] = [nSS, nSS, nIG, nIG, nIG, nIG, nIG, nSS, nSS, nS2]      # syn
    orig[1] = [nIV, nIV, nSR, nIV, nIV, nIV, nIV, nIV, nIV, nSR]      # synack
    orig[2] = [nIV, nIV, nFW, nFW, nLA, nLA, nLA, nTW, nCL, nIV]      # fin
    orig[3] = [nES, nIV, nES, nES, nCW, nCW, nTW, nTW, nCL, nIV]      # ack
    orig[4] = [nIV, nCL, nCL, nCL, nCL, nCL, nCL, nCL, nCL, nCL]      # rst
    orig[5] = [nIV, nIV, nIV, nIV, nIV, nIV, nIV, nIV, nIV, nIV]      # none
    reply[0] = [nIV, nS2, nIV, nIV, nIV, nIV, nIV, nSS, nIV, nS2]
    reply[1] = [nIV, nSR, nIG, nIG, nIG, nIG, nIG, nIG, nIG, nSR]
    reply[2] = [nIV, nIV, nFW, nFW, nLA, nLA, nLA, nTW, nCL, nIV]
    reply[3] = [nIV, nIG, nSR, nES, nCW, nCW, nTW, nTW, nCL, nIG]
    reply[4] = [nIV, nCL, nCL, nCL, nCL, nCL, nCL, nCL, nCL, nCL]
    reply[5] = [nIV, nIV, nIV, nIV, nIV, nIV, nIV, nIV, nIV, nIV]
    cdef int i, j
    for i in range(6):
        for j in range(10):
            NF_TCP[0][i][j] = orig[i][j]
            NF_TCP[1][i][j] = reply[i][j]
    # tcp_timeouts[] (seconds): SYN_SENT 2 min, SYN_RECV 60 s, ESTABLISHED 5 days, FIN_WAIT
    # 2 min, CLOSE_WAIT 60 s, LAST_ACK 30 s, TIME_WAIT 2 min, CLOSE 10 s, SYN_SENT2 2 min
    cdef int64_t secs[10]
    secs = [0, 120, 60, 432000, 120, 60, 30, 120, 10, 120]
    for i in range(10):
        NF_TCP_TIMEOUT[i] = secs[i] * <int64_t>1000000000
    # tcp_valid_flags[] over FIN|SYN|RST|ACK|URG (ECE, CWR, PSH masked off)
    for i in range(64):
        NF_TCP_VALID_FLAGS[i] = False
    for i in (0x02, 0x02 | 0x20, 0x02 | 0x10, 0x04, 0x04 | 0x10, 0x01 | 0x10, 0x01 | 0x10 | 0x20,
              0x10, 0x10 | 0x20):
        NF_TCP_VALID_FLAGS[i] = True

_fill_nf_tables()

cdef int64_t NF_TCP_UNACK_NS = 300 * <int64_t>1000000000    # TCP_CONNTRACK_UNACK, 5 min


cdef inline int _nf_index(uint8_t fl) noexcept nogil:
    # get_conntrack_index
    if fl & TH_RST:
        return NF_RST_SET
    if fl & TH_SYN:
        return NF_SYNACK_SET if (fl & TH_ACK) else NF_SYN_SET
    if fl & TH_FIN:
        return NF_FIN_SET
    if fl & TH_ACK:
        return NF_ACK_SET
    return NF_NONE_SET


cdef int tcp_nf_track(nf_state *s, int direction, const pkt_desc *p, int64_t now) noexcept nogil:
    cdef int d = 1 if direction == IP_VS_DIR_OUTPUT else 0
    cdef int index
    cdef int old, new
    cdef int ret = NF_R_CONFIRMED
    cdef int64_t timeout
    cdef uint8_t keep
    if not NF_TCP_VALID_FLAGS[p.tcp_flags & 0x3f]:
        return 0                    # tcp_error: invalid flag combination, no conntrack
    index = _nf_index(p.tcp_flags)
    if s.state and now >= s.expires_ns:
        s.state = 0                 # the conntrack timed out
    if s.state == 0:
        if d:
            return 0                # would start a conntrack of the reversed tuple
        new = NF_TCP[0][index][nNO]
        if new >= nIV:
            return 0                # tcp_new: invalid as a first packet
        # tcp_new: a SYN opens, anything else valid is picked up mid-stream (tcp_loose = 1)
        s.flags = 0
        s.born_ms = <uint32_t>(now // 1000000)
        old = nNO
        ret = NF_R_NEW
    else:
        old = s.state - 1
        new = NF_TCP[d][index][old]
    if new == nSS and old >= nTW:
        if (s.flags & NF_F_CLOSE_INIT) or (
                (s.flags & NF_F_LAST_RST) and ((s.flags & NF_F_LAST_REPLY) != 0) == (d != 0)):
            # re-open a closed/aborted connection: the old conntrack is killed and the packet
            # looked up again, creating a fresh one
            s.state = 0
            return tcp_nf_track(s, direction, p, now)
        new = nIG
    if new == nIG:
        # ignored: recorded as the last segment, the state does not change
        keep = s.flags & (NF_F_CLOSE_INIT | NF_F_SEEN_REPLY | NF_F_SIMULTANEOUS | NF_F_CHALLENGE)
        if index == NF_SYN_SET and d == 0:
            # a SYN in ORIGINAL resets last_flags; in LAST_ACK a challenge ACK may follow
            keep &= ~(<uint8_t>(NF_F_SIMULTANEOUS | NF_F_CHALLENGE))
            if old == nLA:
                keep |= NF_F_CHALLENGE
        s.flags = keep | (NF_F_LAST_REPLY if d else 0) | (NF_F_LAST_SYN if index == NF_SYN_SET else 0)
        return ret
    if new == nIV:
        return 0                    # invalid: the packet leaves without its conntrack
    if (new == nTW and old == nLA and index == NF_ACK_SET and (s.flags & NF_F_LAST_SYN)
            and ((s.flags & NF_F_LAST_REPLY) != 0) != (d != 0) and (s.flags & NF_F_CHALLENGE)):
        s.flags &= ~(<uint8_t>NF_F_CHALLENGE)   # RFC 5961 challenge ACK: no state change
        return ret
    if new == nS2:
        s.flags |= NF_F_SIMULTANEOUS
    if new == nSR and d == 1 and index == NF_ACK_SET and (s.flags & NF_F_SIMULTANEOUS):
        new = nES
    # in window
    s.flags = (s.flags & (NF_F_CLOSE_INIT | NF_F_SEEN_REPLY | NF_F_SIMULTANEOUS | NF_F_CHALLENGE)) \
        | (NF_F_LAST_RST if index == NF_RST_SET else 0) | (NF_F_LAST_REPLY if d else 0) \
        | (NF_F_LAST_SYN if index == NF_SYN_SET else 0)
    s.state = <uint8_t>(new + 1)
    if old != new and new == nFW:
        s.flags |= NF_F_CLOSE_INIT
    timeout = NF_TCP_TIMEOUT[nCL] if index == NF_RST_SET else NF_TCP_TIMEOUT[new]
    if not (s.flags & NF_F_SEEN_REPLY):
        if index == NF_RST_SET:
            s.state = 0             # the only reply is an RST: the conntrack is deleted at once
            return ret
        if index == NF_SYN_SET and old == nSS:
            return ret              # a retransmitted SYN does not renew the timeout
        if new == nES and timeout > NF_TCP_UNACK_NS:
            timeout = NF_TCP_UNACK_NS
    s.expires_ns = now + timeout
    if d:
        s.flags |= NF_F_SEEN_REPLY
    return ret


cdef void tcp_register(proto_ops *ops) noexcept nogil:
    ops.protocol = IPPROTO_TCP
    ops.registered = 1
    ops.modelled = 1
    ops.num_states = TCP_S_LAST
    ops.is_new_conn = tcp_is_new_conn
    ops.is_new_conn_expected = tcp_is_new_conn_expected
    ops.conn_schedule = tcp_conn_schedule
    ops.state_transition = tcp_state_transition
    ops.timeout = tcp_timeout
    ops.tracker_reopens = tcp_tracker_reopens
    ops.nf_track = tcp_nf_track


# Default timeouts in seconds (tcp_timeouts[], index = state; LAST = 2 s).
DEFAULT_TIMEOUTS = (2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120, 2)
N_STATES = TCP_S_LAST


def next_state(int direction, int event, int state, bint secure=False):
    """Table lookup for tests and tools: direction 0 INPUT / 1 OUTPUT / 2 INPUT_ONLY,
    event 0 syn / 1 fin / 2 ack / 3 rst, state 0..10; secure selects tcp_states_dos."""
    if not 0 <= direction <= 2 or not 0 <= event <= 3 or not 0 <= state < TCP_S_LAST:
        raise ValueError("direction 0..2, event 0..3, state 0..10")
    return TCP_STATES[1 if secure else 0][direction * 4 + event][state]


NF_STATE_NAMES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                  "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")


def nf_replay(packets):
    """Run netfilter's TCP tracker model over [(t_ns, direction 0 orig / 1 reply, tcp flags)];
    returns [(result bits, state name or None, flags)] after each packet (tests and tools)."""
    cdef nf_state st
    out = []
    cdef pkt_desc pk
    st.state = 0
    st.flags = 0
    st.born_ms = 0
    st.expires_ns = 0
    for t, d, fl in packets:
        pk.tcp_flags = fl
        r = tcp_nf_track(&st, IP_VS_DIR_OUTPUT if d else IP_VS_DIR_INPUT, &pk, t)
        out.append((r, NF_STATE_NAMES[st.state - 1] if st.state else None, st.flags))
    return out
