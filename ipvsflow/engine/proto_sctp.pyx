# SCTP for the IPVS engine: the kernel's ip_vs_proto_sctp.c as data and small nogil functions,
# and netfilter's SCTP conntrack (nf_conntrack_proto_sctp.c) for the old_ct model.
#
# Events (set_sctp_state): the first chunk after the common header decides (sctp_events[]; chunk
# types from 15 on count as DATA), except that a COOKIE_ECHO or COOKIE_ACK followed by an ABORT
# counts as ABORT. A packet without a chunk changes nothing. For IPv6 the kernel looks for that
# chunk 40 + 12 bytes into the packet whatever extension headers there are, and so does this file;
# scheduling and is_new_conn use the real transport offset (the parser's fields).
#
# Tables are sctp_states[] (3 directions x 10 events x 14 states); only ESTABLISHED counts as
# active; reaching it marks the controlling persistence template ASSURED. Timeouts are
# sctp_timeouts[] (not tunable through ipvsadm).
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset
from cpython.bytes cimport PyBytes_AS_STRING
from ipvsflow.engine.defs cimport engine_t, dest_t
from ipvsflow.engine.conntab cimport conn_entry, CONN_NONE, CF_NOOUTPUT, CF_INACTIVE, CF_TEMPLATE
from ipvsflow.engine.core cimport (
    proto_ops, IP_VS_DIR_INPUT, IP_VS_DIR_OUTPUT, R_NOT_INIT, R_ABORT_NO_CONN, R_MALFORMED,
    nf_state, NF_R_CONFIRMED, NF_R_NEW,
)
from ipvsflow.io.batch cimport pkt_desc, SCTP_ABORT_AFTER_COOKIE

cdef enum:
    IPPROTO_SCTP = 132
    CTPL_S_ASSURED = 1
    SCTP_HDR = 12                   # common header: ports, verification tag, checksum
    CHUNK_HDR = 4                   # type, flags, length
    INIT_HDR = 16                   # struct sctp_inithdr: init_tag, a_rwnd, streams, initial TSN
    IPV6_HDR = 40
    CHUNK_FLAG_T = 0x01             # SCTP_CHUNK_FLAG_T (ABORT, SHUTDOWN_COMPLETE)

# SCTP_CID_*
cdef enum:
    CID_DATA = 0
    CID_INIT = 1
    CID_INIT_ACK = 2
    CID_HEARTBEAT = 4
    CID_HEARTBEAT_ACK = 5
    CID_ABORT = 6
    CID_SHUTDOWN = 7
    CID_SHUTDOWN_ACK = 8
    CID_ERROR = 9
    CID_COOKIE_ECHO = 10
    CID_COOKIE_ACK = 11
    CID_SHUTDOWN_COMPLETE = 14

cdef enum:
    sNO = SCTP_S_NONE
    sI1 = SCTP_S_INIT1
    sIN = SCTP_S_INIT
    sCS = SCTP_S_COOKIE_SENT
    sCR = SCTP_S_COOKIE_REPLIED
    sCW = SCTP_S_COOKIE_WAIT
    sCO = SCTP_S_COOKIE
    sCE = SCTP_S_COOKIE_ECHOED
    sES = SCTP_S_ESTABLISHED
    sSS = SCTP_S_SHUTDOWN_SENT
    sSR = SCTP_S_SHUTDOWN_RECEIVED
    sSA = SCTP_S_SHUTDOWN_ACK_SENT
    sRJ = SCTP_S_REJECTED
    sCL = SCTP_S_CLOSED

# sctp_events[]: chunk type -> event
cdef uint8_t SCTP_EVENTS[15]
SCTP_EVENTS[:] = [SCTP_EV_DATA, SCTP_EV_INIT, SCTP_EV_INIT_ACK, SCTP_EV_DATA, SCTP_EV_DATA,
                  SCTP_EV_DATA, SCTP_EV_ABORT, SCTP_EV_SHUTDOWN, SCTP_EV_SHUTDOWN_ACK,
                  SCTP_EV_ERROR, SCTP_EV_COOKIE_ECHO, SCTP_EV_COOKIE_ACK, SCTP_EV_DATA,
                  SCTP_EV_DATA, SCTP_EV_SHUTDOWN_COMPLETE]

cdef uint8_t SCTP_STATES[3][10][14]

cdef void _fill() noexcept:
    cdef uint8_t t[3][10][14]
    # sctp_states[] INPUT        sNO  sI1  sIN  sCS  sCR  sCW  sCO  sCE  sES  sSS  sSR  sSA  sRJ  sCL
    t[0][0] = [sES, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]   # d
    t[0][1] = [sI1, sIN, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sIN, sIN]   # i
    t[0][2] = [sCW, sCW, sCW, sCS, sCR, sCO, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]   # i_a
    t[0][3] = [sCR, sIN, sIN, sCR, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]   # c_e
    t[0][4] = [sES, sI1, sIN, sCS, sCR, sCW, sCO, sES, sES, sSS, sSR, sSA, sRJ, sCL]   # c_a
    t[0][5] = [sSR, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sSR, sSS, sSR, sSA, sRJ, sCL]   # s
    t[0][6] = [sCL, sIN, sIN, sCS, sCR, sCW, sCO, sCE, sES, sCL, sSR, sCL, sRJ, sCL]   # s_a
    t[0][7] = [sCL, sCL, sCL, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sCL, sRJ, sCL]   # s_c
    t[0][8] = [sCL, sI1, sIN, sCS, sCR, sCW, sCO, sCL, sES, sSS, sSR, sSA, sRJ, sCL]   # err
    t[0][9] = [sCL, sCL, sCL, sCL, sCL, sRJ, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL]   # ab
    # OUTPUT
    t[1][0] = [sES, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]
    t[1][1] = [sCW, sCW, sCW, sCW, sCW, sCW, sCW, sCW, sES, sCW, sCW, sCW, sCW, sCW]
    t[1][2] = [sCS, sCS, sCS, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]
    t[1][3] = [sCE, sCE, sCE, sCE, sCE, sCE, sCE, sCE, sES, sSS, sSR, sSA, sRJ, sCL]
    t[1][4] = [sES, sES, sES, sES, sES, sES, sES, sES, sES, sSS, sSR, sSA, sRJ, sCL]
    t[1][5] = [sSS, sSS, sSS, sSS, sSS, sSS, sSS, sSS, sSS, sSS, sSR, sSA, sRJ, sCL]
    t[1][6] = [sSA, sSA, sSA, sSA, sSA, sCW, sCO, sCE, sES, sSA, sSA, sSA, sRJ, sCL]
    t[1][7] = [sCL, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]
    t[1][8] = [sCL, sCL, sCL, sCL, sCL, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]
    t[1][9] = [sCL, sRJ, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL]
    # INPUT-ONLY
    t[2][0] = [sES, sI1, sIN, sCS, sCR, sES, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]
    t[2][1] = [sI1, sIN, sIN, sIN, sIN, sIN, sCO, sCE, sES, sSS, sSR, sSA, sIN, sIN]
    t[2][2] = [sCE, sCE, sCE, sCE, sCE, sCE, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]
    t[2][3] = [sES, sES, sES, sES, sES, sES, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]
    t[2][4] = [sES, sI1, sIN, sES, sES, sCW, sES, sES, sES, sSS, sSR, sSA, sRJ, sCL]
    t[2][5] = [sSR, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sSR, sSS, sSR, sSA, sRJ, sCL]
    t[2][6] = [sCL, sIN, sIN, sCS, sCR, sCW, sCO, sCE, sCL, sCL, sSR, sCL, sRJ, sCL]
    t[2][7] = [sCL, sCL, sCL, sCL, sCL, sCW, sCO, sCE, sES, sSS, sCL, sCL, sRJ, sCL]
    t[2][8] = [sCL, sI1, sIN, sCS, sCR, sCW, sCO, sCE, sES, sSS, sSR, sSA, sRJ, sCL]
    t[2][9] = [sCL, sCL, sCL, sCL, sCL, sRJ, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL]
    cdef int d, ev, s
    for d in range(3):
        for ev in range(10):
            for s in range(14):
                SCTP_STATES[d][ev][s] = t[d][ev][s]

_fill()


cdef inline uint16_t _rd16(const uint8_t *b) noexcept nogil:
    return <uint16_t>((<uint16_t>b[0] << 8) | b[1])


cdef inline uint32_t _rd32(const uint8_t *b) noexcept nogil:
    return (<uint32_t>b[0] << 24) | (<uint32_t>b[1] << 16) | (<uint32_t>b[2] << 8) | b[3]


cdef inline uint32_t _visible_end(const pkt_desc *p) noexcept nogil:
    # end of the IP packet (the kernel's skb->len) within the captured bytes
    cdef uint32_t end = <uint32_t>p.l3_off + p.l3_len
    return end if end < p.caplen else p.caplen


cdef inline int _chunk_event(uint8_t chunk_type) noexcept nogil:
    return SCTP_EVENTS[chunk_type] if chunk_type < 15 else SCTP_EV_DATA


cdef int sctp_packet_event(const pkt_desc *p) noexcept nogil:
    cdef uint32_t end, cofs, nofs, clen
    cdef uint8_t t
    if p.af == 6 and p.l4_off != p.l3_off + IPV6_HDR:
        # set_sctp_state takes sizeof(struct ipv6hdr) as the header length: with extension
        # headers it reads its "chunk" from wherever 40 + 12 falls
        end = <uint32_t>p.l3_off + p.l3_len
        cofs = <uint32_t>p.l3_off + IPV6_HDR + SCTP_HDR
        if cofs + CHUNK_HDR > end:
            return -1
        if cofs + CHUNK_HDR <= p.caplen:
            t = p.data[cofs]
            if t == CID_COOKIE_ECHO or t == CID_COOKIE_ACK:
                clen = _rd16(p.data + cofs + 2)
                if clen >= CHUNK_HDR:
                    nofs = cofs + ((clen + 3) & ~(<uint32_t>3))
                    if nofs + CHUNK_HDR <= _visible_end(p) and p.data[nofs] == CID_ABORT:
                        return SCTP_EV_ABORT
            return _chunk_event(t)
    if p.l4_len < SCTP_HDR + CHUNK_HDR:
        return -1                   # no chunk header: set_sctp_state returns early
    if p.sctp_flags & SCTP_ABORT_AFTER_COOKIE:
        return SCTP_EV_ABORT
    return _chunk_event(p.sctp_chunk)


cdef inline uint8_t _next_state(int direction, int event, int state) noexcept nogil:
    if state < 0 or state >= SCTP_S_LAST:
        state = SCTP_S_NONE
    return SCTP_STATES[direction][event][state]


cdef bint sctp_is_new_conn(const pkt_desc *p) noexcept nogil:
    # is_new_conn: the first chunk (at the real transport offset) is INIT
    return p.l4_len >= SCTP_HDR + CHUNK_HDR and p.sctp_chunk == CID_INIT


cdef bint sctp_is_new_conn_expected(const conn_entry *cp, int conn_reuse_mode,
                                    bint close_expected) noexcept nogil:
    if cp.control != CONN_NONE:
        return False                # controlled (persistence template)
    return cp.state == SCTP_S_CLOSED


cdef uint8_t sctp_conn_schedule(const engine_t *e, const pkt_desc *p) noexcept nogil:
    # sctp_conn_schedule: ABORT never schedules; INIT does, any other chunk only with sloppy_sctp.
    # Without a chunk header the kernel drops the packet (NF_DROP); the admission hook can only
    # refuse, so the engine passes it as malformed.
    if p.l4_len < SCTP_HDR + CHUNK_HDR:
        return R_MALFORMED
    if p.sctp_chunk == CID_ABORT:
        return R_ABORT_NO_CONN
    if not (e.sloppy_sctp or p.sctp_chunk == CID_INIT):
        return R_NOT_INIT
    return 0


cdef void sctp_state_transition(engine_t *e, conn_entry *cp, int direction,
                                const pkt_desc *p) noexcept nogil:
    # set_sctp_state
    cdef int d = 1 if direction == IP_VS_DIR_OUTPUT else 0
    cdef int ev = sctp_packet_event(p)
    cdef int nxt
    cdef dest_t *dp
    cdef conn_entry *ct
    if ev < 0:
        return                      # state, timeout and NOOUTPUT stay as they are
    if cp.flags & CF_NOOUTPUT:
        if d == 1:
            cp.flags &= ~(<uint16_t>CF_NOOUTPUT)
        else:
            d = 2                   # INPUT_ONLY
    nxt = _next_state(d, ev, cp.state)
    if nxt != cp.state:
        if cp.dest != CONN_NONE:
            dp = &e.dests[cp.dest]
            if not (cp.flags & CF_INACTIVE) and nxt != SCTP_S_ESTABLISHED:
                dp.activeconns -= 1
                dp.inactconns += 1
                cp.flags |= CF_INACTIVE
            elif (cp.flags & CF_INACTIVE) and nxt == SCTP_S_ESTABLISHED:
                dp.activeconns += 1
                dp.inactconns -= 1
                cp.flags &= ~(<uint16_t>CF_INACTIVE)
        if nxt == SCTP_S_ESTABLISHED and cp.control != CONN_NONE:
            # ip_vs_control_assure_ct
            ct = &e.ct.entries[cp.control]
            if (ct.flags & CF_TEMPLATE) and not (ct.state & CTPL_S_ASSURED):
                ct.state |= CTPL_S_ASSURED
    cp.state = <uint8_t>nxt


cdef int64_t sctp_timeout(const engine_t *e, const conn_entry *cp) noexcept nogil:
    if cp.state < SCTP_S_LAST:
        return e.sctp_timeout[cp.state]
    return e.sctp_timeout[SCTP_S_LAST]


cdef bint sctp_tracker_reopens(const conn_entry *cp) noexcept nogil:
    # the "simple" old_ct model's rule: a CLOSED association is taken as re-opened
    return cp.state == SCTP_S_CLOSED


# ---- netfilter's SCTP conntrack (nf_conntrack_proto_sctp.c), for the old_ct model ------------
# IPVS drops an INIT that reuses an old association's tuple when the packet carries a confirmed
# conntrack. Unlike TCP's, the SCTP tracker never replaces a conntrack: an INIT on a CLOSED one
# keeps it (without renewing its timeout), so it is confirmed until it times out (10 s after the
# last packet that renewed it). This is the tracker of current kernels (the changes since 6.1
# went to the stable trees as fixes): the state table without HEARTBEAT_ACKED, its timeouts
# (ESTABLISHED 210 s, SHUTDOWN_* 3 s), the
# chunk checks of do_basic_checks and sctp_new, the verification-tag checks (which, seeing only
# the client side, reject most DR client packets until a HEARTBEAT teaches the tag), INIT
# collisions and the HEARTBEAT path-change rule. Not modelled: the CRC32c check (captures are
# taken as received by the director), bytes cut off by the capture's snap length (treated as
# absent), conntracks of the reversed tuple started by a reply.

# The per-entry nf_state (16 bytes) seen as an SCTP conntrack.
ctypedef struct sctp_ct:
    uint8_t state                   # SCTP_CONNTRACK_* + 1; 0: no conntrack (= nf_state.state)
    uint8_t flags                   # CTF_*
    uint16_t _pad
    uint32_t expires_ms             # timeout, engine clock in ms (mod 2**32; timeouts <= 210 s)
    uint32_t vtag[2]                # verification tags expected per direction (original, reply)

cdef enum:
    CTF_HB_VTAG_FAILED = 0x01       # SCTP_FLAG_HEARTBEAT_VTAG_FAILED
    CTF_LAST_DIR_REPLY = 0x02       # ct->proto.sctp.last_dir == IP_CT_DIR_REPLY
    CTF_INIT_ORIG = 0x04            # ct->proto.sctp.init[IP_CT_DIR_ORIGINAL]
    CTF_INIT_REPLY = 0x08           # ct->proto.sctp.init[IP_CT_DIR_REPLY]

# SCTP_CONNTRACK_*
cdef enum:
    nNO = 0
    nCL = 1
    nCW = 2
    nCE = 3
    nES = 4
    nSS = 5
    nSR = 6
    nSA = 7
    nHS = 8
    nIV = 9                         # SCTP_CONNTRACK_MAX: invalid

cdef uint8_t NF_SCTP[2][11][9]
cdef int8_t NF_ROW[256]             # chunk type -> row of NF_SCTP (-1: the state stays)
cdef uint32_t NF_TIMEOUT_MS[9]

cdef void _fill_nf() noexcept:
    cdef uint8_t o[11][9]
    cdef uint8_t r[11][9]
    #              sNO  sCL  sCW  sCE  sES  sSS  sSR  sSA  sHS
    o[0] = [nCL, nCL, nCW, nCE, nES, nCL, nCL, nSA, nCW]     # init
    o[1] = [nCL, nCL, nCW, nCE, nES, nSS, nSR, nSA, nCL]     # init_ack
    o[2] = [nCL, nCL, nCL, nCL, nCL, nCL, nCL, nCL, nCL]     # abort
    o[3] = [nCL, nCL, nCW, nCE, nSS, nSS, nSR, nSA, nCL]     # shutdown
    o[4] = [nSA, nCL, nCW, nCE, nES, nSA, nSA, nSA, nSA]     # shutdown_ack
    o[5] = [nCL, nCL, nCW, nCE, nES, nSS, nSR, nSA, nCL]     # error
    o[6] = [nCL, nCL, nCE, nCE, nES, nSS, nSR, nSA, nCL]     # cookie_echo
    o[7] = [nCL, nCL, nCW, nES, nES, nSS, nSR, nSA, nCL]     # cookie_ack
    o[8] = [nCL, nCL, nCW, nCE, nES, nSS, nSR, nCL, nCL]     # shutdown_comp
    o[9] = [nHS, nCL, nCW, nCE, nES, nSS, nSR, nSA, nHS]     # heartbeat
    o[10] = [nCL, nCL, nCW, nCE, nES, nSS, nSR, nSA, nHS]    # heartbeat_ack
    # REPLY
    r[0] = [nIV, nCL, nCW, nCE, nES, nSS, nSR, nSA, nIV]
    r[1] = [nIV, nCW, nCW, nCE, nES, nSS, nSR, nSA, nIV]
    r[2] = [nIV, nCL, nCL, nCL, nCL, nCL, nCL, nCL, nIV]
    r[3] = [nIV, nCL, nCW, nCE, nSR, nSS, nSR, nSA, nIV]
    r[4] = [nIV, nCL, nCW, nCE, nES, nSA, nSA, nSA, nIV]
    r[5] = [nIV, nCL, nCW, nCL, nES, nSS, nSR, nSA, nIV]
    r[6] = [nIV, nCL, nCE, nCE, nES, nSS, nSR, nSA, nIV]
    r[7] = [nIV, nCL, nCW, nES, nES, nSS, nSR, nSA, nIV]
    r[8] = [nIV, nCL, nCW, nCE, nES, nSS, nSR, nCL, nIV]
    r[9] = [nIV, nCL, nCW, nCE, nES, nSS, nSR, nSA, nHS]
    r[10] = [nIV, nCL, nCW, nCE, nES, nSS, nSR, nSA, nES]
    cdef int i, j
    for i in range(11):
        for j in range(9):
            NF_SCTP[0][i][j] = o[i][j]
            NF_SCTP[1][i][j] = r[i][j]
    for i in range(256):
        NF_ROW[i] = -1
    NF_ROW[CID_INIT] = 0
    NF_ROW[CID_INIT_ACK] = 1
    NF_ROW[CID_ABORT] = 2
    NF_ROW[CID_SHUTDOWN] = 3
    NF_ROW[CID_SHUTDOWN_ACK] = 4
    NF_ROW[CID_ERROR] = 5
    NF_ROW[CID_COOKIE_ECHO] = 6
    NF_ROW[CID_COOKIE_ACK] = 7
    NF_ROW[CID_SHUTDOWN_COMPLETE] = 8
    NF_ROW[CID_HEARTBEAT] = 9
    NF_ROW[CID_HEARTBEAT_ACK] = 10
    # sctp_timeouts[] in s; timeouts[NONE] is CLOSED's (nf_conntrack_sctp_init_net)
    cdef uint32_t secs[9]
    secs = [10, 10, 3, 3, 210, 3, 3, 3, 30]
    for i in range(9):
        NF_TIMEOUT_MS[i] = secs[i] * 1000

_fill_nf()

if sizeof(sctp_ct) != sizeof(nf_state):
    raise ImportError("proto_sctp: sctp_ct no longer overlays core.nf_state exactly")


cdef inline bint _has(const uint64_t *m, uint8_t t) noexcept nogil:
    return (m[t >> 6] >> (t & 63)) & 1


cdef int sctp_nf_track(nf_state *st, int direction, const pkt_desc *p, int64_t now) noexcept nogil:
    cdef sctp_ct *s = <sctp_ct *>st
    cdef sctp_ct w
    cdef int dir = 1 if direction == IP_VS_DIR_OUTPUT else 0
    cdef int rdir = 1 - dir
    cdef uint8_t init_me = CTF_INIT_REPLY if dir else CTF_INIT_ORIG
    cdef uint8_t init_peer = CTF_INIT_ORIG if dir else CTF_INIT_REPLY
    cdef const uint8_t *d = p.data
    cdef uint32_t end = _visible_end(p)
    cdef uint32_t sh = p.l4_off
    cdef uint32_t off, clen, count, vtag, itag, peer
    cdef uint32_t now_ms = <uint32_t>(now // 1000000)
    cdef uint64_t m[4]
    cdef uint8_t t, cf
    cdef bint fresh, flag, ignore = False
    cdef int row, old, new = nNO
    if sh + SCTP_HDR > end:
        return 0                    # sctp_error: short packet
    if s.state and <int32_t>(now_ms - s.expires_ms) >= 0:
        s.state = 0                 # timed out: the lookup no longer finds it
    fresh = s.state == 0
    if fresh and dir:
        return 0                    # would start a conntrack of the reversed tuple
    vtag = _rd32(d + sh + 4)
    # do_basic_checks: INIT, INIT_ACK and SHUTDOWN_COMPLETE alone, COOKIE_ECHO/ACK first, no
    # zero-length chunk, at least one chunk
    m[0] = m[1] = m[2] = m[3] = 0
    count = 0
    flag = False
    off = sh + SCTP_HDR
    while off + CHUNK_HDR <= end:
        t = d[off]
        clen = _rd16(d + off + 2)
        if t == CID_INIT or t == CID_INIT_ACK or t == CID_SHUTDOWN_COMPLETE:
            flag = True
        if ((t == CID_COOKIE_ACK or t == CID_COOKIE_ECHO or flag) and count != 0) or clen == 0:
            return 0
        m[t >> 6] |= (<uint64_t>1) << (t & 63)
        off += (clen + 3) & ~(<uint32_t>3)
        count += 1
    if count == 0:
        return 0
    if fresh:
        # an out-of-the-blue ABORT, SHUTDOWN_COMPLETE or COOKIE_ACK starts nothing (RFC 4960 8.4)
        if _has(m, CID_ABORT) or _has(m, CID_SHUTDOWN_COMPLETE) or _has(m, CID_COOKIE_ACK):
            return 0
        # sctp_new
        memset(&w, 0, sizeof(sctp_ct))
        off = sh + SCTP_HDR
        while off + CHUNK_HDR <= end:
            t = d[off]
            row = NF_ROW[t]
            if row < 0:
                return 0            # DATA, SACK, ...: no new conntrack
            if t == CID_INIT:
                if vtag != 0 or off + CHUNK_HDR + INIT_HDR > end:
                    return 0
                w.vtag[1] = _rd32(d + off + CHUNK_HDR)
            elif t == CID_HEARTBEAT:
                w.vtag[0] = vtag
            elif t == CID_SHUTDOWN_ACK:
                w.vtag[1] = vtag
            off += (_rd16(d + off + 2) + 3) & ~(<uint32_t>3)
        old = nNO
    else:
        w = s[0]
        old = w.state - 1
    # verification tag (RFC 4960 8.5) for chunks without a rule of their own
    if (not _has(m, CID_INIT) and not _has(m, CID_SHUTDOWN_COMPLETE) and not _has(m, CID_COOKIE_ECHO)
            and not _has(m, CID_ABORT) and not _has(m, CID_SHUTDOWN_ACK)
            and not _has(m, CID_HEARTBEAT) and not _has(m, CID_HEARTBEAT_ACK)
            and vtag != w.vtag[dir]):
        return 0
    off = sh + SCTP_HDR
    while off + CHUNK_HDR <= end:
        t = d[off]
        cf = d[off + 1]
        clen = _rd16(d + off + 2)
        if t == CID_INIT:
            if vtag != 0:
                break
        elif t == CID_ABORT or t == CID_SHUTDOWN_COMPLETE:
            if vtag != (w.vtag[rdir] if (cf & CHUNK_FLAG_T) else w.vtag[dir]):
                break
        elif t == CID_COOKIE_ECHO:
            if vtag != w.vtag[dir]:
                break
        elif t == CID_COOKIE_ACK:
            w.flags &= ~(<uint8_t>(CTF_INIT_ORIG | CTF_INIT_REPLY))
        elif t == CID_HEARTBEAT:
            if w.vtag[dir] == 0:
                w.vtag[dir] = vtag
            elif vtag != w.vtag[dir]:
                if _has(m, CID_DATA) or ignore:
                    break
                # a HEARTBEAT on another path: remembered, state and timeout untouched
                w.flags |= CTF_HB_VTAG_FAILED
                w.flags = (w.flags & ~(<uint8_t>CTF_LAST_DIR_REPLY)) | (CTF_LAST_DIR_REPLY if dir else 0)
                ignore = True
                off += (clen + 3) & ~(<uint32_t>3)
                continue
            elif w.flags & CTF_HB_VTAG_FAILED:
                w.flags &= ~(<uint8_t>CTF_HB_VTAG_FAILED)
        elif t == CID_HEARTBEAT_ACK:
            if w.vtag[dir] == 0:
                w.vtag[dir] = vtag
            elif vtag != w.vtag[dir]:
                if _has(m, CID_DATA) or ignore:
                    break
                if not (w.flags & CTF_HB_VTAG_FAILED) or (
                        ((w.flags & CTF_LAST_DIR_REPLY) != 0) == (dir != 0)):
                    break
                w.flags &= ~(<uint8_t>CTF_HB_VTAG_FAILED)
                w.vtag[dir] = vtag
                w.vtag[rdir] = 0
            elif w.flags & CTF_HB_VTAG_FAILED:
                w.flags &= ~(<uint8_t>CTF_HB_VTAG_FAILED)
        row = NF_ROW[t]
        new = old if row < 0 else NF_SCTP[dir][row][old]
        if new == nIV:
            break
        if t == CID_INIT:
            if off + CHUNK_HDR + INIT_HDR > end:
                break
            if (w.flags & init_me) and (w.flags & init_peer):
                w.flags &= ~init_peer
            w.flags |= init_me
            w.vtag[rdir] = _rd32(d + off + CHUNK_HDR)
            # an INIT on a CLOSED conntrack does not renew it (port reuse must not keep it alive)
            if new == nCL and old == nCL and not fresh:
                ignore = True
        elif t == CID_INIT_ACK:
            if off + CHUNK_HDR + INIT_HDR > end:
                break
            itag = _rd32(d + off + CHUNK_HDR)
            peer = w.vtag[rdir]
            if not (w.flags & init_peer) and peer != 0 and peer != itag:
                break
            if (w.flags & init_me) and (w.flags & init_peer) and peer != itag:
                break               # INIT collision
            w.vtag[rdir] = itag
        old = new
        w.state = <uint8_t>(new + 1)
        off += (clen + 3) & ~(<uint32_t>3)
    else:
        # every chunk accepted
        if not ignore:
            w.expires_ms = now_ms + NF_TIMEOUT_MS[new]
        if fresh and w.state == 0:
            w.state = nNO + 1
        s[0] = w
        return NF_R_NEW if fresh else NF_R_CONFIRMED
    # invalid: the packet leaves without its conntrack; a new one is discarded, an existing one
    # keeps what the chunks before the offending one changed
    if not fresh:
        s[0] = w
    return 0


cdef void sctp_register(proto_ops *ops) noexcept nogil:
    ops.protocol = IPPROTO_SCTP
    ops.registered = 1
    ops.modelled = 1
    ops.num_states = SCTP_S_LAST
    ops.is_new_conn = sctp_is_new_conn
    ops.is_new_conn_expected = sctp_is_new_conn_expected
    ops.conn_schedule = sctp_conn_schedule
    ops.state_transition = sctp_state_transition
    ops.timeout = sctp_timeout
    ops.tracker_reopens = sctp_tracker_reopens
    ops.nf_track = sctp_nf_track


# sctp_timeouts[] in seconds (IP_VS_SCTP_MAX_RTO = 61 s; INIT1 and REJECTED 4 s; LAST 2 s)
DEFAULT_TIMEOUTS = (2, 4, 61, 61, 61, 61, 61, 61, 900, 61, 61, 61, 4, 61, 2)
N_STATES = SCTP_S_LAST
EVENT_NAMES = ("d", "i", "i_a", "c_e", "c_a", "s", "s_a", "s_c", "err", "ab")


def next_state(int direction, int event, int state):
    """Table lookup for tests and tools: direction 0 INPUT / 1 OUTPUT / 2 INPUT_ONLY, event 0..9
    (EVENT_NAMES: d, i, i_a, c_e, c_a, s, s_a, s_c, err, ab), state 0..13."""
    if not 0 <= direction <= 2 or not 0 <= event <= 9 or not 0 <= state < SCTP_S_LAST:
        raise ValueError("direction 0..2, event 0..9, state 0..13")
    return SCTP_STATES[direction][event][state]


def event_of(int chunk, bint abort_after_cookie=False):
    """The event of a packet whose first chunk is ``chunk`` (0..255)."""
    if not 0 <= chunk <= 255:
        raise ValueError("chunk type 0..255")
    if abort_after_cookie and (chunk == CID_COOKIE_ECHO or chunk == CID_COOKIE_ACK):
        return SCTP_EV_ABORT
    return _chunk_event(<uint8_t>chunk)


NF_STATE_NAMES = ("NONE", "CLOSED", "COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED", "SHUTDOWN_SENT",
                  "SHUTDOWN_RECD", "SHUTDOWN_ACK_SENT", "HEARTBEAT_SENT")


def nf_replay(packets):
    """Run the netfilter SCTP conntrack model over ``[(t_ns, direction 0 original / 1 reply,
    sctp_bytes)]``, each ``sctp_bytes`` an SCTP packet from its common header on. Returns, after
    each packet, ``(result bits NF_R_*, state name or None, vtag_original, vtag_reply)``."""
    cdef nf_state st
    cdef sctp_ct *s = <sctp_ct *>&st
    cdef pkt_desc pk
    cdef bytes raw
    cdef int r
    memset(&st, 0, sizeof(nf_state))
    out = []
    for t, direction, data in packets:
        raw = bytes(data)
        if len(raw) > 0xffff:
            raise ValueError("SCTP packet longer than 65535 bytes")
        memset(&pk, 0, sizeof(pkt_desc))
        pk.data = <const uint8_t *>PyBytes_AS_STRING(raw)
        pk.caplen = <uint32_t>len(raw)
        pk.wirelen = pk.caplen
        pk.l3_off = 0
        pk.l4_off = 0
        pk.l3_len = <uint16_t>len(raw)
        pk.l4_len = <uint16_t>len(raw)
        pk.af = 4
        pk.proto = IPPROTO_SCTP
        r = sctp_nf_track(&st, IP_VS_DIR_OUTPUT if direction else IP_VS_DIR_INPUT, &pk, int(t))
        out.append((r, NF_STATE_NAMES[s.state - 1] if s.state else None, s.vtag[0], s.vtag[1]))
    return out
