# Analysis hot paths: one nogil pass per burst over (packets, decisions).
#
# * Tally       running counters for the report: packets by action/reason, per real server and
#               time window (new connections, client connection starts, packets, bytes),
#               port-reuse events by protocol/old state/outcome, and the SYN/INIT records that
#               follow a dropped SYN (for the client delay a drop implies).
# * ConnLog     one row per client connection (Zeek conn.log-like), grouped by the decision's
#               connection serial while the packets stream by.
# * DecisionEncoder  decision records as JSON lines / CSV text or columnar buffers for Parquet
#               (ColumnChunk; vip and rs as EndpointDict indices).
# * burst_limit, first_at_or_after  the replay's scans of a burst's packet times.
#
# Python calls each of them once per burst; nothing per packet is a Python object.
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from libc.stdlib cimport malloc, realloc, free
from cpython.bytes cimport PyBytes_FromStringAndSize

from ipvsflow.io.batch cimport PacketBatch, pkt_desc
from ipvsflow.engine.defs cimport (
    decision_t, ACT_NEW, ACT_HIT, ACT_RESCHED, ACT_DROP, ACT_PASS, ACT_INVALID,
    DIR_NONE, DIR_IN, DIR_OUT, DF_REUSE,
)

import numpy as np

cdef extern from "arpa/inet.h" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, unsigned int size)

cdef enum:
    NACT = 8
    NREASON = 64
    NSTATE = 32
    NPROTO = 4
    RS_W0 = 1               # real server at weight 0
    RS_GONE = 2             # real server deleted

# return codes of the per-burst loops: where they stopped and what they need
cdef enum:
    NEED_NOTHING = 0
    NEED_WINDOW = 1
    NEED_RS = 2
    NEED_SYN = 3

# window sizes: each one a whole multiple of the previous (so windows merge exactly)
NICE_NS = tuple(int(round(x * 1e9)) for x in (0.1, 0.2, 1, 2, 10, 20, 60, 120, 600, 1200, 3600,
                                             7200, 21600, 43200, 86400))
MAX_WINDOWS = 4096

DECISION_ITEMSIZE = sizeof(decision_t)


cdef inline int _pidx(uint8_t proto) noexcept nogil:
    if proto == 6:
        return 0
    if proto == 17:
        return 1
    if proto == 132:
        return 2
    return 3


cdef inline bint _is_open(const pkt_desc *p) noexcept nogil:
    # the packet that opens a connection: TCP SYN without ACK, SCTP INIT
    if p.status != 0:
        return False
    if p.proto == 6:
        return (p.tcp_flags & 0x12) == 0x02
    if p.proto == 132:
        return p.sctp_chunk == 1
    return False


cdef inline bint _retrans_like(uint8_t proto, uint8_t old_state) noexcept nogil:
    # A SYN/INIT on an entry that has seen nothing but the opening handshake is taken for a
    # retransmission of the same client connection, not for a new one on a reused port.
    if proto == 6:
        return old_state == 2 or old_state == 3 or old_state == 10    # SYN_SENT SYN_RECV SYNACK
    if proto == 132:
        return old_state == 1 or old_state == 2                      # INIT1 INIT
    return False


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111eb
    x ^= x >> 31
    return x


cdef inline uint64_t _load64(const uint8_t *a) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, a, 8)
    return v


cdef inline uint64_t _tuple_key(const pkt_desc *p) noexcept nogil:
    # client -> VIP tuple of a client packet, hashed to 64 bits (collisions are negligible for
    # matching a retransmitted SYN to the one IPVS dropped)
    cdef uint64_t h = _mix(<uint64_t>p.proto << 32 | <uint64_t>p.sport << 16 | p.dport)
    h = _mix(h ^ _load64(p.src))
    h = _mix(h ^ _load64(p.src + 8))
    h = _mix(h ^ _load64(p.dst))
    h = _mix(h ^ _load64(p.dst + 8))
    return h


cdef inline uint32_t _payload(const pkt_desc *p) noexcept nogil:
    # L4 payload bytes by the headers (not limited by the snap length)
    cdef uint32_t hl
    if p.status != 0 or p.l4_off == 0xffff:
        return 0
    if p.proto == 6:
        if <uint32_t>p.l4_off + 13 > p.caplen:
            return 0
        hl = (p.data[p.l4_off + 12] >> 4) * 4
        return p.l4_len - hl if p.l4_len > hl else 0
    if p.proto == 17:
        return p.l4_len - 8 if p.l4_len > 8 else 0
    if p.proto == 132:
        return p.l4_len - 12 if p.l4_len > 12 else 0
    return 0


from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_ANY_CONTIGUOUS, PyBUF_WRITABLE


cdef inline const decision_t *_dec_buf(object dec, uint32_t m) except? NULL:
    # pointer to m decision records (a C-contiguous numpy array of the engine's dtype)
    cdef Py_buffer view
    cdef const decision_t *p
    if m == 0:
        return NULL
    PyObject_GetBuffer(dec, &view, PyBUF_ANY_CONTIGUOUS)
    try:
        if view.len != <Py_ssize_t>m * <Py_ssize_t>sizeof(decision_t):
            _check_dec(dec, m)
            raise ValueError("decision buffer size does not match")
        p = <const decision_t *>view.buf
    finally:
        PyBuffer_Release(&view)
    return p


cdef inline int _check_dec(object dec, uint32_t m) except -1:
    if dec.dtype.itemsize != sizeof(decision_t):
        raise RuntimeError(
            f"decision records are {dec.dtype.itemsize} bytes but ipvsflow._analysis was built for "
            f"{sizeof(decision_t)}: rebuild the extensions (python setup.py build_ext --inplace)")
    if len(dec) != m:
        raise ValueError(f"{len(dec)} decisions for {m} packets")
    if not dec.flags.c_contiguous:
        raise ValueError("decisions must be C-contiguous")
    return 0


cdef inline const decision_t *_dec_ptr(object dec):
    cdef const uint8_t[::1] raw
    if len(dec) == 0:
        return NULL
    raw = dec.view(np.uint8)
    return <const decision_t *>&raw[0]


# ------------------------------------------------------------------------------------------------
# Burst times for the replay loop (ipvsflow.replay): one C pass instead of numpy calls per burst

def burst_limit(PacketBatch batch not None, int64_t until_ns):
    """``(limit, tmax)``: how many packets of the burst come before the first one at or after
    ``until_ns``, and the latest time among those (the first packet's time when there are none)."""
    cdef uint32_t i, n = batch.count
    cdef const pkt_desc *pk = batch.pkts
    cdef int64_t t, tmax
    if n == 0:
        return 0, 0
    tmax = pk[0].ts_ns
    for i in range(n):
        t = pk[i].ts_ns
        if t >= until_ns:
            return i, tmax
        if t > tmax:
            tmax = t
    return n, tmax


def first_ts(PacketBatch batch not None):
    """The first packet's time (ns)."""
    if batch.count == 0:
        raise ValueError("empty burst")
    return batch.pkts[0].ts_ns


def first_at_or_after(PacketBatch batch not None, uint32_t start, uint32_t stop, int64_t cut_ns):
    """Index of the first packet in [start, stop) whose time is at or after ``cut_ns``; ``stop``
    when there is none."""
    cdef uint32_t i
    cdef const pkt_desc *pk = batch.pkts
    if stop > batch.count:
        raise ValueError("packet range outside the batch")
    for i in range(start, stop):
        if pk[i].ts_ns >= cut_ns:
            return i
    return stop


# ------------------------------------------------------------------------------------------------
# Tally

cdef class Tally:
    """Counters of one engine's decisions; see the module comment. Python grows the arrays when
    the loop asks (a later window, a new real server, more SYN records)."""
    cdef public object by_ar            # uint64 [NACT, NREASON]
    cdef public object reuse            # uint64 [NPROTO, NSTATE, NACT] (old state 0xff -> NSTATE-1)
    cdef public object reuse_starts_w0  # uint64 [R] kept reuse starts on a weight-0 server
    cdef public object starts_w0        # uint64 [R] connection starts on a weight-0 server
    cdef public object starts_gone      # uint64 [R] packets dropped on a deleted server's entries
    cdef public object win              # uint64 [W, R, 6]: new, starts, inpkts, inbytes, outpkts, outbytes
    cdef public object rs_state         # uint8 [R] RS_W0 | RS_GONE, set by Python after events
    cdef public object syn_key, syn_ts, syn_conn, syn_act
    cdef public uint64_t nsyn
    cdef public bint recording          # SYN records start at the first dropped SYN
    cdef public int64_t t0
    cdef public bint started
    cdef public int64_t win_ns
    cdef public int64_t last_ts
    cdef public uint64_t packets
    cdef public uint64_t bytes
    cdef public uint64_t max_w          # highest window index used + 1
    # raw views of the arrays above (re-bound after every growth)
    cdef uint64_t *p_by_ar
    cdef uint64_t *p_reuse
    cdef uint64_t *p_win
    cdef uint8_t *p_rs_state
    cdef uint64_t *p_rsw0
    cdef uint64_t *p_sw0
    cdef uint64_t *p_sgone
    cdef uint64_t *p_syn_key
    cdef int64_t *p_syn_ts
    cdef uint64_t *p_syn_conn
    cdef uint8_t *p_syn_act
    cdef Py_ssize_t W, R, SC

    def __init__(self, int64_t win_ns=100_000_000, int windows=64, int servers=8):
        self.by_ar = np.zeros((NACT, NREASON), np.uint64)
        self.reuse = np.zeros((NPROTO, NSTATE, NACT), np.uint64)
        self.win = np.zeros((windows, servers, 6), np.uint64)
        self.rs_state = np.zeros(servers, np.uint8)
        self.reuse_starts_w0 = np.zeros(servers, np.uint64)
        self.starts_w0 = np.zeros(servers, np.uint64)
        self.starts_gone = np.zeros(servers, np.uint64)
        self.syn_key = np.zeros(1024, np.uint64)
        self.syn_ts = np.zeros(1024, np.int64)
        self.syn_conn = np.zeros(1024, np.uint64)
        self.syn_act = np.zeros(1024, np.uint8)
        self.nsyn = 0
        self.recording = False
        self.win_ns = win_ns
        self.started = False
        self.t0 = 0
        self.last_ts = 0
        self.packets = 0
        self.bytes = 0
        self.max_w = 0
        self._bind()

    def _bind(self):
        cdef uint64_t[:, ::1] by_ar = self.by_ar
        cdef uint64_t[:, :, ::1] reuse = self.reuse
        cdef uint64_t[:, :, ::1] win = self.win
        cdef uint8_t[::1] rs_state = self.rs_state
        cdef uint64_t[::1] rsw0 = self.reuse_starts_w0
        cdef uint64_t[::1] sw0 = self.starts_w0
        cdef uint64_t[::1] sgone = self.starts_gone
        cdef uint64_t[::1] syn_key = self.syn_key
        cdef int64_t[::1] syn_ts = self.syn_ts
        cdef uint64_t[::1] syn_conn = self.syn_conn
        cdef uint8_t[::1] syn_act = self.syn_act
        self.p_by_ar = &by_ar[0, 0]
        self.p_reuse = &reuse[0, 0, 0]
        self.W = win.shape[0]
        self.R = win.shape[1]
        self.p_win = &win[0, 0, 0]
        self.p_rs_state = &rs_state[0]
        self.p_rsw0 = &rsw0[0]
        self.p_sw0 = &sw0[0]
        self.p_sgone = &sgone[0]
        self.SC = syn_key.shape[0]
        self.p_syn_key = &syn_key[0]
        self.p_syn_ts = &syn_ts[0]
        self.p_syn_conn = &syn_conn[0]
        self.p_syn_act = &syn_act[0]

    def start(self, int64_t t0):
        if not self.started:
            self.t0 = t0
            self.started = True

    cdef int _run(self, const pkt_desc *pk, const decision_t *d0, uint32_t m, uint32_t *pos) noexcept nogil:
        # counts packets pos..m-1; stops (returning NEED_*) before a packet it has no room for
        cdef uint64_t *win = self.p_win
        cdef uint64_t *cell
        cdef Py_ssize_t W = self.W, R = self.R, SC = self.SC
        cdef uint32_t i = pos[0]
        cdef const decision_t *d
        cdef const pkt_desc *p
        cdef int64_t w, t0 = self.t0, wn = self.win_ns, last = self.last_ts
        cdef int32_t rs
        cdef uint8_t a, st, rsf
        cdef bint start_conn, opening
        cdef uint64_t nsyn = self.nsyn, maxw = self.max_w, npk = 0, nby = 0
        cdef bint rec = self.recording
        cdef int need = NEED_NOTHING
        while i < m:
            d = d0 + i
            p = pk + i
            rs = d.rs
            a = d.action
            w = (d.ts_ns - t0) // wn if d.ts_ns > t0 else 0
            if rs >= 0:
                if w >= W:
                    need = NEED_WINDOW
                    break
                if rs >= R:
                    need = NEED_RS
                    break
            opening = d.dir == DIR_IN and _is_open(p)
            if opening and (rec or a == ACT_DROP) and <Py_ssize_t>nsyn >= SC:
                need = NEED_SYN
                break
            # -- nothing is counted above this line (the loop may stop and resume here) --
            npk += 1
            nby += p.wirelen
            if d.ts_ns > last:
                last = d.ts_ns
            self.p_by_ar[(a & 7) * NREASON + (d.reason if d.reason < NREASON else NREASON - 1)] += 1
            if d.flags & DF_REUSE:
                st = d.old_state if d.old_state < NSTATE - 1 else NSTATE - 1
                self.p_reuse[(_pidx(d.proto) * NSTATE + st) * NACT + (a & 7)] += 1
            if rs >= 0:
                if <uint64_t>w >= maxw:
                    maxw = w + 1
                cell = win + (w * R + rs) * 6
                rsf = self.p_rs_state[rs]
                start_conn = False
                if a == ACT_NEW or a == ACT_RESCHED:
                    cell[0] += 1
                    start_conn = True
                elif a == ACT_HIT and (d.flags & DF_REUSE) and not _retrans_like(d.proto, d.old_state):
                    start_conn = True
                    if rsf & RS_W0:
                        self.p_rsw0[rs] += 1
                if start_conn:
                    cell[1] += 1
                    if rsf & RS_W0:
                        self.p_sw0[rs] += 1
                if a == ACT_NEW or a == ACT_HIT or a == ACT_RESCHED:
                    if d.dir == DIR_IN:
                        cell[2] += 1
                        cell[3] += p.wirelen
                    elif d.dir == DIR_OUT:
                        cell[4] += 1
                        cell[5] += p.wirelen
                elif a == ACT_DROP and (rsf & RS_GONE):
                    self.p_sgone[rs] += 1
            if opening:
                if a == ACT_DROP:
                    rec = True
                if rec:
                    self.p_syn_key[nsyn] = _tuple_key(p)
                    self.p_syn_ts[nsyn] = d.ts_ns
                    self.p_syn_conn[nsyn] = d.conn
                    self.p_syn_act[nsyn] = a
                    nsyn += 1
            i += 1
        self.nsyn = nsyn
        self.recording = rec
        self.max_w = maxw
        self.last_ts = last
        self.packets += npk
        self.bytes += nby
        pos[0] = i
        return need

    def add(self, PacketBatch batch not None, uint32_t start, uint32_t stop, dec):
        """Count packets [start, stop) of ``batch`` with their decisions ``dec``."""
        if stop > batch.count or start > stop:
            raise ValueError("packet range outside the batch")
        cdef uint32_t m = stop - start
        cdef const decision_t *d0 = _dec_buf(dec, m)
        cdef const pkt_desc *pk = batch.pkts + start
        cdef uint32_t i = 0
        cdef int need
        if m == 0:
            return
        if not self.started:
            self.t0 = d0.ts_ns
            self.started = True
        while True:
            with nogil:
                need = self._run(pk, d0, m, &i)
            if need == NEED_NOTHING:
                return
            if need == NEED_WINDOW:
                self._grow_windows(d0[i].ts_ns)
            elif need == NEED_RS:
                self._grow_servers(d0[i].rs + 1)
            else:
                n = 2 * len(self.syn_key)
                for name in ("syn_key", "syn_ts", "syn_conn", "syn_act"):
                    old = getattr(self, name)
                    new = np.zeros(n, old.dtype)
                    new[:len(old)] = old
                    setattr(self, name, new)
                self._bind()

    def _grow_windows(self, int64_t ts):
        need = (ts - self.t0) // self.win_ns + 1
        while need > MAX_WINDOWS:
            self.coarsen()
            need = (ts - self.t0) // self.win_ns + 1
        W = self.win.shape[0]
        if need > W:
            n = min(max(need, 2 * W), MAX_WINDOWS)
            new = np.zeros((n,) + self.win.shape[1:], np.uint64)
            new[:W] = self.win
            self.win = new
            self._bind()

    def coarsen(self):
        """Merge windows into the next size up (0.1 s -> 0.2 s -> 1 s -> ...)."""
        cur = self.win_ns
        bigger = [x for x in NICE_NS if x > cur and x % cur == 0]
        nxt = bigger[0] if bigger else cur * 2
        k = nxt // cur
        W = self.win.shape[0]
        pad = (-W) % k
        arr = self.win
        if pad:
            arr = np.concatenate([arr, np.zeros((pad,) + arr.shape[1:], np.uint64)])
        self.win = np.ascontiguousarray(
            arr.reshape((arr.shape[0] // k, k) + arr.shape[1:]).sum(axis=1, dtype=np.uint64))
        self.max_w = (self.max_w + k - 1) // k
        self.win_ns = nxt
        self._bind()

    def _grow_servers(self, int n):
        R = self.win.shape[1]
        if n <= R:
            return
        n = max(n, 2 * R)
        new = np.zeros((self.win.shape[0], n, 6), np.uint64)
        new[:, :R] = self.win
        self.win = new
        for name in ("rs_state", "reuse_starts_w0", "starts_w0", "starts_gone"):
            old = getattr(self, name)
            arr = np.zeros(n, old.dtype)
            arr[:R] = old
            setattr(self, name, arr)
        self._bind()

    def set_server_states(self, dests):
        """Weight-0 / deleted flags of the real servers (engine.dests()) after a rule change."""
        if dests:
            self._grow_servers(max(d["id"] for d in dests) + 1)
        st = self.rs_state
        st[:] = 0
        for d in dests:
            st[d["id"]] = (RS_W0 if d["weight"] == 0 else 0) | (0 if d["available"] else RS_GONE)

    def syn_records(self):
        n = self.nsyn
        return (self.syn_key[:n], self.syn_ts[:n], self.syn_conn[:n], self.syn_act[:n])


# ------------------------------------------------------------------------------------------------
# ConnLog

cdef enum:
    HIST_MAX = 20
    PATH_MAX = 12

ctypedef struct crow:
    uint64_t serial
    int64_t first_ts
    int64_t last_ts
    uint64_t orig_pkts
    uint64_t resp_pkts
    uint64_t orig_bytes
    uint64_t resp_bytes
    uint64_t orig_ip_bytes
    uint64_t resp_ip_bytes
    uint64_t key                # client tuple hash of the opening packet (0 = none)
    uint32_t reuse_of           # row number + 1 of the connection it reused (0 = none)
    uint32_t dropped            # packets of this connection IPVS dropped
    uint32_t syn_drops          # reusing SYN/INITs dropped on this entry
    int32_t rs
    int32_t svc
    uint16_t cport
    uint16_t vport
    uint16_t dport
    uint8_t proto
    uint8_t af
    uint8_t fwd
    uint8_t reuse_dec           # 0 none, 1 kept, 2 rescheduled, 3 dropped, 4 dest_deleted
    uint8_t seg                 # segment of the entry (a kept reuse starts a new one)
    uint8_t hist_len
    uint8_t nstates             # PATH_MAX + 1: the path was longer
    uint8_t last_state
    uint8_t opened              # first packet was the opening SYN/INIT
    uint8_t _pad
    uint32_t seen               # history letters seen (bit per letter and direction)
    uint8_t caddr[16]
    uint8_t vaddr[16]
    char hist[HIST_MAX]
    uint8_t states[PATH_MAX]

# history letters: S H A D F R (orig), s h a d f r (responder)
cdef const char *LETTERS = b"SHADFRshadfr"

cdef crow _crow_proto
cdef size_t _off(void *f):
    return <size_t>f - <size_t>&_crow_proto

CONN_ROW_DTYPE = np.dtype({
    "names": ["serial", "first_ts", "last_ts", "orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes",
              "orig_ip_bytes", "resp_ip_bytes", "key", "reuse_of", "dropped", "syn_drops", "rs", "svc",
              "cport", "vport", "dport", "proto", "af", "fwd", "reuse_dec", "seg", "hist_len",
              "nstates", "last_state", "opened", "seen", "caddr", "vaddr", "hist", "states"],
    "formats": ["<u8", "<i8", "<i8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u4", "<u4", "<u4",
                "<i4", "<i4", "<u2", "<u2", "<u2", "u1", "u1", "u1", "u1", "u1", "u1", "u1", "u1", "u1",
                "<u4", ("u1", (16,)), ("u1", (16,)), ("S%d" % HIST_MAX), ("u1", (PATH_MAX,))],
    "offsets": [_off(&_crow_proto.serial), _off(&_crow_proto.first_ts), _off(&_crow_proto.last_ts),
                _off(&_crow_proto.orig_pkts), _off(&_crow_proto.resp_pkts), _off(&_crow_proto.orig_bytes),
                _off(&_crow_proto.resp_bytes), _off(&_crow_proto.orig_ip_bytes),
                _off(&_crow_proto.resp_ip_bytes), _off(&_crow_proto.key), _off(&_crow_proto.reuse_of),
                _off(&_crow_proto.dropped), _off(&_crow_proto.syn_drops), _off(&_crow_proto.rs),
                _off(&_crow_proto.svc), _off(&_crow_proto.cport), _off(&_crow_proto.vport),
                _off(&_crow_proto.dport), _off(&_crow_proto.proto), _off(&_crow_proto.af),
                _off(&_crow_proto.fwd), _off(&_crow_proto.reuse_dec), _off(&_crow_proto.seg),
                _off(&_crow_proto.hist_len), _off(&_crow_proto.nstates), _off(&_crow_proto.last_state),
                _off(&_crow_proto.opened), _off(&_crow_proto.seen),
                _off(&_crow_proto.caddr[0]), _off(&_crow_proto.vaddr[0]), _off(&_crow_proto.hist[0]),
                _off(&_crow_proto.states[0])],
    "itemsize": sizeof(crow),
})

ctypedef struct dropev:
    uint64_t key
    int64_t ts
    uint32_t row                # row + 1 of the entry the SYN was dropped on

# names of the reuse decisions (crow.reuse_dec)
REUSE_DECISIONS = (None, "kept", "rescheduled", "dropped", "dest_deleted")

cdef uint8_t R_DEST_DELETED_CODE = 0xff


cdef void *_realloc(void *p, size_t n) except NULL:
    # realloc, or MemoryError (p stays valid then)
    cdef void *q = realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q


cdef class ConnLog:
    """Connection rows built while the decisions stream by (see conns.py for the output)."""
    cdef crow *rows
    cdef uint64_t nrows, cap
    cdef uint32_t *row_of           # serial -> row + 1 of its current segment
    cdef uint64_t row_of_cap
    cdef dropev *drops
    cdef uint64_t ndrops, drops_cap
    cdef uint8_t dest_deleted_reason

    def __cinit__(self):
        self.rows = NULL
        self.row_of = NULL
        self.drops = NULL
        self.nrows = self.cap = self.row_of_cap = self.ndrops = self.drops_cap = 0

    def __dealloc__(self):
        free(self.rows)
        free(self.row_of)
        free(self.drops)

    def __init__(self, int dest_deleted_reason):
        self.dest_deleted_reason = <uint8_t>dest_deleted_reason

    cdef int _reserve(self, uint32_t m, uint64_t max_serial) except -1:
        cdef uint64_t n
        if self.nrows + m > self.cap:
            n = max(self.cap * 2, self.nrows + m, 4096)
            self.rows = <crow *>_realloc(self.rows, n * sizeof(crow))
            self.cap = n
        if max_serial + 1 > self.row_of_cap:
            n = max(self.row_of_cap * 2, max_serial + 1, 4096)
            self.row_of = <uint32_t *>_realloc(self.row_of, n * sizeof(uint32_t))
            memset(self.row_of + self.row_of_cap, 0, (n - self.row_of_cap) * sizeof(uint32_t))
            self.row_of_cap = n
        if self.ndrops + m > self.drops_cap:
            n = max(self.drops_cap * 2, self.ndrops + m, 256)
            self.drops = <dropev *>_realloc(self.drops, n * sizeof(dropev))
            self.drops_cap = n
        return 0

    def add(self, PacketBatch batch not None, uint32_t start, uint32_t stop, dec):
        cdef uint32_t m = stop - start
        if stop > batch.count or start > stop:
            raise ValueError("packet range outside the batch")
        cdef const decision_t *dp = _dec_buf(dec, m)
        if m == 0:
            return
        cdef uint64_t mx = 0
        cdef uint32_t j
        for j in range(m):
            if dp[j].conn > mx:
                mx = dp[j].conn
            if dp[j].reuse_of > mx:
                mx = dp[j].reuse_of
        self._reserve(m, mx)
        with nogil:
            self._add(batch.pkts + start, dp, m)

    cdef uint32_t _new_row(self, const decision_t *d, const pkt_desc *p) noexcept nogil:
        cdef crow *r = &self.rows[self.nrows]
        memset(r, 0, sizeof(crow))
        self.nrows += 1
        r.serial = d.conn
        r.first_ts = d.ts_ns
        r.last_ts = d.ts_ns
        r.proto = d.proto
        r.af = p.af
        r.rs = d.rs
        r.svc = d.svc
        r.fwd = d.fwd
        r.dport = d.dport
        r.vport = d.vport
        memcpy(r.vaddr, d.vaddr, 16)
        if d.dir == DIR_OUT:
            memcpy(r.caddr, p.dst, 16)
            r.cport = p.dport
        else:
            memcpy(r.caddr, p.src, 16)
            r.cport = p.sport
        if d.dir == DIR_IN and _is_open(p):
            r.opened = 1
            r.key = _tuple_key(p)
        r.last_state = 0xff
        self.row_of[d.conn] = <uint32_t>self.nrows
        return <uint32_t>self.nrows

    cdef inline void _letter(self, crow *r, int k) noexcept nogil:
        if r.seen & (1u << k):
            return
        r.seen |= 1u << k
        if r.hist_len < HIST_MAX:
            r.hist[r.hist_len] = LETTERS[k]
            r.hist_len += 1

    cdef void _add(self, const pkt_desc *pk, const decision_t *d0, uint32_t m) noexcept nogil:
        cdef uint32_t i, row, old
        cdef const decision_t *d
        cdef const pkt_desc *p
        cdef crow *r
        cdef uint8_t a, fl
        cdef uint32_t pay
        cdef int base
        cdef dropev *ev
        for i in range(m):
            d = d0 + i
            p = pk + i
            if d.conn == 0:
                continue
            a = d.action
            if a == ACT_DROP and (d.flags & DF_REUSE):
                # a reusing SYN/INIT dropped on the old entry: the client will retry
                row = self.row_of[d.conn]
                if row:
                    self.rows[row - 1].syn_drops += 1
                ev = &self.drops[self.ndrops]
                self.ndrops += 1
                ev.key = _tuple_key(p)
                ev.ts = d.ts_ns
                ev.row = row
                continue
            row = self.row_of[d.conn]
            if row == 0:
                row = self._new_row(d, p)
                r = &self.rows[row - 1]
                if a == ACT_RESCHED and d.reuse_of:
                    old = self.row_of[d.reuse_of] if d.reuse_of < self.row_of_cap else 0
                    r.reuse_of = old
                    r.reuse_dec = 4 if d.reason == self.dest_deleted_reason else 2
            elif a == ACT_HIT and (d.flags & DF_REUSE) and not _retrans_like(d.proto, d.old_state):
                old = row
                row = self._new_row(d, p)
                r = &self.rows[row - 1]
                r.reuse_of = old
                r.reuse_dec = 1
                r.seg = self.rows[old - 1].seg + 1 if self.rows[old - 1].seg < 255 else 255
                r.last_state = self.rows[old - 1].last_state
            r = &self.rows[row - 1]
            if d.ts_ns > r.last_ts:
                r.last_ts = d.ts_ns
            if d.rs >= 0:
                r.rs = d.rs
                r.svc = d.svc
            if a == ACT_DROP:
                r.dropped += 1
            pay = _payload(p)
            if d.dir == DIR_OUT:
                r.resp_pkts += 1
                r.resp_bytes += pay
                r.resp_ip_bytes += p.l3_len
                base = 6
            else:
                r.orig_pkts += 1
                r.orig_bytes += pay
                r.orig_ip_bytes += p.l3_len
                base = 0
            if p.status == 0:
                if p.proto == 6:
                    fl = p.tcp_flags
                    if fl & 0x02:
                        self._letter(r, base + (1 if fl & 0x10 else 0))
                    elif (fl & 0x10) and not (fl & 0x05) and pay == 0:
                        self._letter(r, base + 2)
                    if pay:
                        self._letter(r, base + 3)
                    if fl & 0x01:
                        self._letter(r, base + 4)
                    if fl & 0x04:
                        self._letter(r, base + 5)
                elif p.proto == 132:
                    fl = p.sctp_chunk
                    if fl == 1:
                        self._letter(r, base + 0)
                    elif fl == 2:
                        self._letter(r, base + 1)
                    elif fl == 0:
                        self._letter(r, base + 3)
                    elif fl == 3 or fl == 10 or fl == 11:
                        self._letter(r, base + 2)
                    elif fl == 7 or fl == 8 or fl == 14:
                        self._letter(r, base + 4)
                    elif fl == 6:
                        self._letter(r, base + 5)
                elif pay:
                    self._letter(r, base + 3)
            if d.state != 0xff and d.state != r.last_state:
                if r.nstates < PATH_MAX:
                    r.states[r.nstates] = d.state
                    r.nstates += 1
                elif r.nstates == PATH_MAX:
                    r.nstates = PATH_MAX + 1
                r.last_state = d.state

    def rows_array(self):
        """The rows so far as a numpy structured array (CONN_ROW_DTYPE, a copy)."""
        n = self.nrows
        out = np.empty(n, CONN_ROW_DTYPE)
        cdef uint8_t[::1] raw
        if n:
            raw = out.view(np.uint8)
            memcpy(&raw[0], self.rows, n * sizeof(crow))
        return out

    def drop_events(self):
        """(key, ts, row + 1) of every reusing SYN/INIT that was dropped."""
        n = self.ndrops
        key = np.empty(n, np.uint64)
        ts = np.empty(n, np.int64)
        row = np.empty(n, np.uint32)
        cdef uint64_t j
        cdef uint64_t[::1] k = key
        cdef int64_t[::1] t = ts
        cdef uint32_t[::1] rw = row
        for j in range(n):
            k[j] = self.drops[j].key
            t[j] = self.drops[j].ts
            rw[j] = self.drops[j].row
        return key, ts, row

    @property
    def count(self):
        return self.nrows


# ------------------------------------------------------------------------------------------------
# DecisionEncoder

cdef enum:
    FMT_JSONL = 0
    FMT_CSV = 1
    FMT_COLUMNS = 2


cdef const char *DIGITS2 = (b"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
                            b"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
                            b"8081828384858687888990919293949596979899")


cdef inline char *_utoa(char *o, uint64_t v) noexcept nogil:
    # decimal text, two digits per division
    cdef char tmp[24]
    cdef int n = 24
    cdef uint64_t q
    cdef int k
    while v >= 100:
        q = v // 100
        k = <int>(v - q * 100) * 2
        n -= 2
        tmp[n] = DIGITS2[k]
        tmp[n + 1] = DIGITS2[k + 1]
        v = q
    if v >= 10:
        n -= 2
        tmp[n] = DIGITS2[v * 2]
        tmp[n + 1] = DIGITS2[v * 2 + 1]
    else:
        n -= 1
        tmp[n] = <char>(48 + v)
    memcpy(o, tmp + n, 24 - n)
    return o + 24 - n


cdef inline char *_put(char *o, const char *s, Py_ssize_t n) noexcept nogil:
    memcpy(o, s, n)
    return o + n


# dotted-quad pieces: octet v is _OCT_TXT[4v:4v+4] ("7.", "42.", "255."), _OCT_LEN[v] with the dot
cdef char _OCT_TXT[1024]
cdef uint8_t _OCT_LEN[256]


cdef int _init_octets() except -1:
    cdef int v, n
    cdef bytes t
    for v in range(256):
        t = (str(v) + ".").encode()
        n = len(t)
        memset(&_OCT_TXT[4 * v], 0, 4)
        memcpy(&_OCT_TXT[4 * v], <const char *>t, n)
        _OCT_LEN[v] = n
    return 0


_init_octets()


cdef inline bint _is_v4(const uint8_t *a) noexcept nogil:
    # IPv4-mapped: ten zero bytes, then 0xffff
    cdef uint32_t w
    memcpy(&w, a + 8, 4)
    return _load64(a) == 0 and w == 0xFFFF0000u


cdef inline char *_addr(char *o, const uint8_t *a) noexcept nogil:
    # IPv4-mapped -> dotted quad, else RFC 5952 text in brackets. Writes up to 3 bytes past the
    # text (the octet table is copied 4 bytes at a time): output buffers keep that much slack.
    if _is_v4(a):
        memcpy(o, &_OCT_TXT[4 * a[12]], 4)
        o += _OCT_LEN[a[12]]
        memcpy(o, &_OCT_TXT[4 * a[13]], 4)
        o += _OCT_LEN[a[13]]
        memcpy(o, &_OCT_TXT[4 * a[14]], 4)
        o += _OCT_LEN[a[14]]
        memcpy(o, &_OCT_TXT[4 * a[15]], 4)
        return o + _OCT_LEN[a[15]] - 1
    o[0] = 91
    o += 1
    if inet_ntop(10, a, o, 48) != NULL:
        while o[0]:
            o += 1
    o[0] = 93
    return o + 1


cdef inline char *_endpoint(char *o, const uint8_t *a, uint16_t port) noexcept nogil:
    o = _addr(o, a)
    o[0] = 58
    return _utoa(o + 1, port)


cdef inline bint _nonzero16(const uint8_t *a) noexcept nogil:
    return _load64(a) != 0 or _load64(a + 8) != 0


# ------------------------------------------------------------------------------------------------
# EndpointDict: the distinct texts of a low-cardinality endpoint column (vip, rs) of one Parquet
# chunk, so the column is written as dictionary indices instead of one string per row.
#
# Rows are looked up by a binary key (address, port, what the text is made of); a key seen for
# the first time gets its text formatted once, and equal texts share one entry (a service's
# configured text and the packet's address can spell the same endpoint).

cdef enum:
    KEY_ENDPOINT = 0        # addr:port of the key
    KEY_SERVICE = 1         # the configured text of service ``id``
    KEY_SERVER = 2          # real server ``id`` (port: the connection's, for port-0 servers)
    EP_TEXT_MAX = 64        # "[" + IPv6 text (45) + "]:" + port (5), with slack


ctypedef struct ep_key:
    # an address's two words (KEY_ENDPOINT) or the server generation (the others), then
    # port | kind << 16 | id << 32; built in registers, no partial stores
    uint64_t a0
    uint64_t a1
    uint64_t w


cdef inline uint64_t _key_hash(const ep_key *k) noexcept nogil:
    # independent multiplies (the tables are small and the keys well spread)
    cdef uint64_t h = (k.a0 * 0x9E3779B97F4A7C15ULL) ^ (k.a1 * 0xC2B2AE3D27D4EB4FULL) ^ (k.w * 0x165667B19E3779F9ULL)
    return h ^ (h >> 29) ^ (h >> 47)


cdef inline bint _key_eq(const ep_key *a, const ep_key *b) noexcept nogil:
    return a.a0 == b.a0 and a.a1 == b.a1 and a.w == b.w


cdef inline uint64_t _key_w(uint16_t port, uint8_t kind, uint32_t id) noexcept nogil:
    return <uint64_t>port | (<uint64_t>kind << 16) | (<uint64_t>id << 32)


cdef inline uint64_t _text_hash(const char *t, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <uint8_t>t[i]) * 1099511628211ULL
    return _mix(h)


cdef class EndpointDict:
    """Distinct endpoint texts and the row keys that map to them (see above)."""
    cdef ep_key *kslot_key
    cdef int32_t *kslot         # key slot -> entry (-1: empty)
    cdef uint32_t kmask, nkeys
    cdef int32_t *tslot         # text slot -> entry (-1: empty)
    cdef uint32_t tmask
    cdef int32_t *off           # entry i = blob[off[i]:off[i+1]]
    cdef uint64_t *thash
    cdef int32_t n, ncap
    cdef char *blob
    cdef Py_ssize_t blob_cap

    def __cinit__(self):
        self.kslot_key = NULL
        self.kslot = NULL
        self.tslot = NULL
        self.off = NULL
        self.thash = NULL
        self.blob = NULL
        self.kmask = self.tmask = 0
        self.nkeys = 0
        self.n = self.ncap = 0
        self.blob_cap = 0
        self._grow_keys(64)
        self._grow_texts(64)
        self._reserve(64)

    def __dealloc__(self):
        free(self.kslot_key)
        free(self.kslot)
        free(self.tslot)
        free(self.off)
        free(self.thash)
        free(self.blob)

    @property
    def count(self):
        return self.n

    cdef int _grow_keys(self, uint32_t slots) except -1:
        cdef ep_key *nk = <ep_key *>malloc(slots * sizeof(ep_key))
        cdef int32_t *ns = <int32_t *>malloc(slots * sizeof(int32_t))
        cdef uint32_t i, j, mask = slots - 1
        if nk == NULL or ns == NULL:
            free(nk)
            free(ns)
            raise MemoryError()
        memset(ns, 0xff, slots * sizeof(int32_t))
        if self.kslot != NULL:
            for i in range(self.kmask + 1):
                if self.kslot[i] >= 0:
                    j = <uint32_t>_key_hash(&self.kslot_key[i]) & mask
                    while ns[j] >= 0:
                        j = (j + 1) & mask
                    ns[j] = self.kslot[i]
                    nk[j] = self.kslot_key[i]
        free(self.kslot_key)
        free(self.kslot)
        self.kslot_key = nk
        self.kslot = ns
        self.kmask = mask
        return 0

    cdef int _grow_texts(self, uint32_t slots) except -1:
        cdef int32_t *ns = <int32_t *>malloc(slots * sizeof(int32_t))
        cdef uint32_t j, mask = slots - 1
        cdef int32_t e
        if ns == NULL:
            raise MemoryError()
        memset(ns, 0xff, slots * sizeof(int32_t))
        for e in range(self.n):
            j = <uint32_t>self.thash[e] & mask
            while ns[j] >= 0:
                j = (j + 1) & mask
            ns[j] = e
        free(self.tslot)
        self.tslot = ns
        self.tmask = mask
        return 0

    cdef int _reserve(self, uint32_t m) except -1:
        """Room for ``m`` more keys and entries (tables at most half full), before a nogil pass."""
        cdef uint32_t slots
        cdef int32_t ncap
        cdef Py_ssize_t need
        slots = self.kmask + 1
        while 2 * (self.nkeys + m) > slots:
            slots *= 2
        if slots != self.kmask + 1:
            self._grow_keys(slots)
        if self.n + <int32_t>m > self.ncap:
            ncap = max(self.ncap * 2, self.n + <int32_t>m)
            self.off = <int32_t *>_realloc(self.off, (ncap + 1) * sizeof(int32_t))
            if self.ncap == 0:
                self.off[0] = 0
            self.thash = <uint64_t *>_realloc(self.thash, ncap * sizeof(uint64_t))
            self.ncap = ncap
        slots = self.tmask + 1
        while 2 * (<uint32_t>self.n + m) > slots:
            slots *= 2
        if slots != self.tmask + 1:
            self._grow_texts(slots)
        need = self.off[self.n] + <Py_ssize_t>m * EP_TEXT_MAX
        if need > self.blob_cap:
            need = max(need, 2 * self.blob_cap)
            self.blob = <char *>_realloc(self.blob, need)
            self.blob_cap = need
        return 0

    cdef inline int32_t find(self, const ep_key *k, uint32_t *slot) noexcept nogil:
        cdef uint32_t j = <uint32_t>_key_hash(k) & self.kmask
        while self.kslot[j] >= 0:
            if _key_eq(&self.kslot_key[j], k):
                return self.kslot[j]
            j = (j + 1) & self.kmask
        slot[0] = j
        return -1

    cdef char *text_end(self) noexcept nogil:
        """Where a new entry's text is formatted (room: EP_TEXT_MAX, reserved)."""
        return self.blob + self.off[self.n]

    cdef int32_t add(self, const ep_key *k, uint32_t slot, char *end) noexcept nogil:
        """Key ``k`` (absent, free ``slot`` from find) maps to the text formatted at text_end()
        up to ``end``: an existing entry with that text, or a new one."""
        cdef const char *t = self.blob + self.off[self.n]
        cdef Py_ssize_t ln = end - t
        cdef uint64_t h = _text_hash(t, ln)
        cdef uint32_t j = <uint32_t>h & self.tmask
        cdef int32_t e
        while True:
            e = self.tslot[j]
            if e < 0:
                e = self.n
                self.thash[e] = h
                self.off[e + 1] = self.off[e] + <int32_t>ln
                self.tslot[j] = e
                self.n += 1
                break
            if (self.thash[e] == h and self.off[e + 1] - self.off[e] == ln
                    and memcmp(self.blob + self.off[e], t, ln) == 0):
                break
            j = (j + 1) & self.tmask
        self.kslot_key[slot] = k[0]
        self.kslot[slot] = e
        self.nkeys += 1
        return e

    def arrays(self):
        """(offsets int32[n + 1], text bytes) of the entries: an Arrow string array's buffers."""
        off = np.empty(self.n + 1, np.int32)
        cdef int32_t[::1] o = off
        memcpy(&o[0], self.off, (self.n + 1) * sizeof(int32_t))
        return off, PyBytes_FromStringAndSize(self.blob, self.off[self.n])


cdef class ColumnChunk:
    """Column buffers for up to ``cap`` decisions (one Parquet row group). ``vip`` and ``rs`` are
    indices into the chunk's ``vip_dict`` / ``rs_dict`` (-1: null)."""
    cdef public uint64_t n
    cdef public uint64_t cap
    cdef public object a_pkt, a_ts, a_conn, a_rs, a_vip, a_dir, a_proto, a_action, a_reason, a_state, a_ip
    cdef public object a_client_off
    cdef public EndpointDict vip_dict, rs_dict
    cdef uint64_t[::1] pkt
    cdef int64_t[::1] ts
    cdef uint64_t[::1] conn
    cdef int32_t[::1] rs, vip
    cdef int8_t[::1] dir_, proto, action, reason
    cdef int16_t[::1] state
    cdef uint8_t[::1] ip
    cdef int32_t[::1] client_off
    cdef char *client_text
    cdef Py_ssize_t text_cap

    def __cinit__(self):
        self.client_text = NULL
        self.text_cap = 0

    def __dealloc__(self):
        free(self.client_text)

    def __init__(self, uint64_t cap):
        if cap == 0 or cap > (1 << 24):
            raise ValueError("chunk size must be 1 .. 16777216 rows")
        self.cap = cap
        self.a_pkt = np.zeros(cap, np.uint64); self.pkt = self.a_pkt
        self.a_ts = np.zeros(cap, np.int64); self.ts = self.a_ts
        self.a_conn = np.zeros(cap, np.uint64); self.conn = self.a_conn
        self.a_rs = np.zeros(cap, np.int32); self.rs = self.a_rs
        self.a_vip = np.zeros(cap, np.int32); self.vip = self.a_vip
        self.a_dir = np.zeros(cap, np.int8); self.dir_ = self.a_dir
        self.a_proto = np.zeros(cap, np.int8); self.proto = self.a_proto
        self.a_action = np.zeros(cap, np.int8); self.action = self.a_action
        self.a_reason = np.zeros(cap, np.int8); self.reason = self.a_reason
        self.a_state = np.zeros(cap, np.int16); self.state = self.a_state
        self.a_ip = np.zeros(cap, np.uint8); self.ip = self.a_ip
        self.a_client_off = np.zeros(cap + 1, np.int32); self.client_off = self.a_client_off
        self.vip_dict = EndpointDict()
        self.rs_dict = EndpointDict()
        self.n = 0

    cdef int _reserve(self, uint32_t m) except -1:
        cdef Py_ssize_t need = self.client_off[self.n] + <Py_ssize_t>m * EP_TEXT_MAX
        if need > self.text_cap:
            need = max(need, self.text_cap * 2)
            self.client_text = <char *>_realloc(self.client_text, need)
            self.text_cap = need
        self.vip_dict._reserve(m)
        self.rs_dict._reserve(m)
        return 0

    def reset(self):
        """Empty again (the buffers are kept: no fresh pages to fault in for the next chunk)."""
        self.n = 0
        self.client_off[0] = 0
        self.vip_dict = EndpointDict()
        self.rs_dict = EndpointDict()

    def client_texts(self):
        """The client strings of the rows so far, back to back (offsets: a_client_off)."""
        return PyBytes_FromStringAndSize(self.client_text, self.client_off[self.n])


cdef inline Py_ssize_t _text_bound(uint32_t m) noexcept nogil:
    # an upper bound of the text of m rows (a row is under 400 bytes)
    return <Py_ssize_t>m * 400 + 64


cdef class DecisionEncoder:
    """Formats decisions: JSON lines or CSV text (``encode`` returns bytes, ``encode_into`` fills
    a caller's buffer), or the columns of a Parquet chunk (``columns``). Name tables come from
    Python (see decisions.py)."""
    cdef int fmt
    cdef bytes _names                 # all names back to back
    cdef const char *_names_p
    cdef const char *_rs_p
    cdef const char *_rsa_p
    cdef const char *_svc_p
    cdef int32_t[::1] _noff           # name i = _names[_noff[i]:_noff[i+1]]
    cdef int32_t[::1] _act, _reason, _dir, _proto, _state   # code -> name index (-1 = null)
    cdef bytes _rs_blob
    cdef int32_t[::1] _rs_off         # rs id -> endpoint text
    cdef bytes _rsa_blob
    cdef int32_t[::1] _rsa_off        # rs id -> address text of a port-0 server ('' otherwise)
    cdef int32_t _n_rs
    cdef bytes _svc_blob
    cdef int32_t[::1] _svc_off
    cdef int32_t _n_svc
    cdef uint32_t _gen                # bumped by set_servers: server/service keys of older texts
    cdef char *buf
    cdef Py_ssize_t cap

    def __cinit__(self):
        self.buf = NULL
        self.cap = 0
        self._gen = 0

    def __dealloc__(self):
        free(self.buf)

    def __init__(self, str fmt, names, act, reason, dirs, proto, state):
        self.fmt = {"jsonl": FMT_JSONL, "csv": FMT_CSV, "columns": FMT_COLUMNS}[fmt]
        blob = b"".join(n.encode() for n in names)
        off = np.zeros(len(names) + 1, np.int32)
        off[1:] = np.cumsum([len(n.encode()) for n in names])
        self._names = blob
        self._names_p = self._names
        self._noff = off
        self._act = np.asarray(act, np.int32)
        self._reason = np.asarray(reason, np.int32)
        self._dir = np.asarray(dirs, np.int32)
        self._proto = np.asarray(proto, np.int32)
        self._state = np.asarray(state, np.int32)      # [proto index * 256 + state]
        self.set_servers([], [])

    @staticmethod
    def _blob(texts):
        enc = [t.encode() for t in texts]
        off = np.zeros(len(enc) + 1, np.int32)
        if enc:
            off[1:] = np.cumsum([len(e) for e in enc])
        return b"".join(enc), off

    def set_servers(self, rs_texts, svc_texts, rs_port0_addrs=None):
        """Endpoint text of every real-server id and service id ('' = derive from the packet).
        ``rs_port0_addrs``: per real-server id, the address text of a server configured with
        port 0 ('' for the others); its rows name the port the connection uses instead."""
        if rs_port0_addrs is None:
            rs_port0_addrs = [""] * len(rs_texts)
        if len(rs_port0_addrs) != len(rs_texts):
            raise ValueError("rs_port0_addrs must have one entry per real server")
        self._rs_blob, self._rs_off = self._blob(rs_texts)
        self._rs_p = self._rs_blob
        self._rsa_blob, self._rsa_off = self._blob(rs_port0_addrs)
        self._rsa_p = self._rsa_blob
        self._n_rs = len(rs_texts)
        self._svc_blob, self._svc_off = self._blob(svc_texts)
        self._svc_p = self._svc_blob
        self._n_svc = len(svc_texts)
        self._gen += 1

    @property
    def n_rs(self):
        return self._n_rs

    cdef int _reserve(self, Py_ssize_t n) except -1:
        if n > self.cap:
            self.buf = <char *>_realloc(self.buf, n)
            self.cap = n
        return 0

    cdef inline char *_name(self, char *o, int32_t idx, bint quoted, bint json) noexcept nogil:
        cdef const char *blob = self._names_p
        if idx < 0:
            if json:
                return _put(o, b"null", 4)
            return o
        if quoted:
            o[0] = 34
            o += 1
        o = _put(o, blob + self._noff[idx], self._noff[idx + 1] - self._noff[idx])
        if quoted:
            o[0] = 34
            o += 1
        return o

    cdef inline char *_client(self, char *o, const decision_t *d, const pkt_desc *p) noexcept nogil:
        if d.dir == DIR_OUT:
            return _endpoint(o, p.dst, p.dport)
        return _endpoint(o, p.src, p.sport)

    cdef inline void _vip_key(self, ep_key *k, const decision_t *d, const pkt_desc *p) noexcept nogil:
        # the key of the text _vip writes (same branches)
        if d.conn != 0 and (d.vport != 0 or _nonzero16(d.vaddr)) and d.fwd != 0xff:
            k.a0 = _load64(d.vaddr)
            k.a1 = _load64(d.vaddr + 8)
            k.w = _key_w(d.vport, KEY_ENDPOINT, 0)
        elif d.dir == DIR_OUT:
            if d.svc >= 0 and d.svc < self._n_svc and self._svc_off[d.svc + 1] > self._svc_off[d.svc]:
                k.a0 = self._gen
                k.a1 = 0
                k.w = _key_w(0, KEY_SERVICE, <uint32_t>d.svc)
            else:
                k.a0 = _load64(p.src)
                k.a1 = _load64(p.src + 8)
                k.w = _key_w(p.sport, KEY_ENDPOINT, 0)
        else:
            k.a0 = _load64(p.dst)
            k.a1 = _load64(p.dst + 8)
            k.w = _key_w(p.dport, KEY_ENDPOINT, 0)

    cdef inline char *_vip(self, char *o, const decision_t *d, const pkt_desc *p) noexcept nogil:
        cdef const char *sb = self._svc_p
        cdef int32_t n
        if d.conn != 0 and (d.vport != 0 or _nonzero16(d.vaddr)) and d.fwd != 0xff:
            return _endpoint(o, d.vaddr, d.vport)
        if d.dir == DIR_OUT:
            if d.svc >= 0 and d.svc < self._n_svc:
                n = self._svc_off[d.svc + 1] - self._svc_off[d.svc]
                if n:
                    return _put(o, sb + self._svc_off[d.svc], n)
            return _endpoint(o, p.src, p.sport)
        return _endpoint(o, p.dst, p.dport)

    cdef inline bint _has_rs(self, const decision_t *d) noexcept nogil:
        return d.rs >= 0 and d.rs < self._n_rs

    cdef inline bint _rs_port0(self, const decision_t *d) noexcept nogil:
        # a port-0 server named with the port its connection uses
        return d.dport != 0 and self._rsa_off[d.rs + 1] > self._rsa_off[d.rs]

    cdef inline char *_rs_text(self, char *o, const decision_t *d) noexcept nogil:
        # the server's text, unquoted (d.rs valid)
        cdef int32_t rs = d.rs
        if self._rs_port0(d):
            o = _put(o, self._rsa_p + self._rsa_off[rs], self._rsa_off[rs + 1] - self._rsa_off[rs])
            o[0] = 58
            return _utoa(o + 1, d.dport)
        return _put(o, self._rs_p + self._rs_off[rs], self._rs_off[rs + 1] - self._rs_off[rs])

    cdef inline char *_rs(self, char *o, const decision_t *d, bint quoted, bint json) noexcept nogil:
        if not self._has_rs(d):
            if json:
                return _put(o, b"null", 4)
            return o
        if quoted:
            o[0] = 34
            o += 1
        o = self._rs_text(o, d)
        if quoted:
            o[0] = 34
            o += 1
        return o

    cdef inline char *_ts(self, char *o, int64_t ts) noexcept nogil:
        cdef int64_t s = ts // 1000000000
        cdef int64_t f = ts - s * 1000000000
        cdef char frac10[24]
        if s < 0:
            o[0] = 45
            o += 1
            # -0.5 s is written -1 + 0.5: keep the text exact for negative times
            s = -s
            if f:
                s -= 1
                f = 1000000000 - f
        o = _utoa(o, <uint64_t>s)
        o[0] = 46
        o += 1
        # nine fractional digits, zero-padded: the digits of 1e9 + f without the leading 1
        _utoa(frac10, <uint64_t>(1000000000 + f))
        return _put(o, frac10 + 1, 9)

    def max_rs(self, dec):
        return int(dec["rs"].max()) if len(dec) else -1

    @staticmethod
    def max_bytes(uint32_t m):
        """An upper bound of the text of ``m`` rows (what encode_into needs free)."""
        return _text_bound(m)

    cdef const decision_t *_rows_of(self, PacketBatch batch, uint32_t start, uint32_t stop,
                                    dec) except? NULL:
        # encode/encode_into's checks; the decision records of packets [start, stop)
        if self.fmt == FMT_COLUMNS:
            raise ValueError("this encoder makes columns (use columns())")
        if stop > batch.count or start > stop:
            raise ValueError("packet range outside the batch")
        return _dec_buf(dec, stop - start)

    def encode(self, PacketBatch batch not None, uint32_t start, uint32_t stop, dec):
        """JSON lines or CSV rows of packets [start, stop) as bytes."""
        cdef uint32_t m = stop - start
        cdef const decision_t *dp = self._rows_of(batch, start, stop, dec)
        if m == 0:
            return b""
        self._reserve(_text_bound(m))
        cdef Py_ssize_t n
        with nogil:
            n = self._encode(self.buf, batch.pkts + start, dp, m)
        return PyBytes_FromStringAndSize(self.buf, n)

    def encode_into(self, PacketBatch batch not None, uint32_t start, uint32_t stop, dec,
                    out, Py_ssize_t pos):
        """Write the rows of packets [start, stop) into the writable buffer ``out`` at ``pos``;
        returns the new end. ``out`` needs ``max_bytes(stop - start)`` free from ``pos``."""
        cdef uint32_t m = stop - start
        cdef Py_buffer view
        cdef Py_ssize_t n = 0
        cdef const decision_t *dp = self._rows_of(batch, start, stop, dec)
        if m == 0:
            return pos
        PyObject_GetBuffer(out, &view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
        try:
            if pos < 0 or view.len - pos < _text_bound(m):
                raise ValueError("not enough room in the output buffer")
            with nogil:
                n = self._encode(<char *>view.buf + pos, batch.pkts + start, dp, m)
        finally:
            PyBuffer_Release(&view)
        return pos + n

    cdef Py_ssize_t _encode(self, char *base, const pkt_desc *pk, const decision_t *d0,
                            uint32_t m) noexcept nogil:
        cdef char *o = base
        cdef uint32_t i
        cdef const decision_t *d
        cdef const pkt_desc *p
        cdef bint json = self.fmt == FMT_JSONL
        cdef bint ip
        cdef int32_t sidx
        for i in range(m):
            d = d0 + i
            p = pk + i
            ip = p.af != 0
            sidx = self._state[_pidx(d.proto) * 256 + d.state] if d.conn != 0 else -1
            if json:
                o = _put(o, b'{"pkt":', 7)
                o = _utoa(o, d.pkt)
                o = _put(o, b',"ts":', 6)
                o = self._ts(o, d.ts_ns)
                o = _put(o, b',"dir":', 7)
                o = self._name(o, self._dir[d.dir], True, True)
                o = _put(o, b',"proto":', 9)
                o = self._name(o, self._proto[d.proto] if ip else -1, True, True)
                o = _put(o, b',"client":', 10)
                if ip:
                    o[0] = 34
                    o = self._client(o + 1, d, p)
                    o[0] = 34
                    o = _put(o + 1, b',"vip":"', 8)
                    o = self._vip(o, d, p)
                    o[0] = 34
                    o += 1
                else:
                    o = _put(o, b'null,"vip":null', 15)
                o = _put(o, b',"rs":', 6)
                o = self._rs(o, d, True, True)
                o = _put(o, b',"action":', 10)
                o = self._name(o, self._act[d.action & 7], True, True)
                o = _put(o, b',"reason":', 10)
                o = self._name(o, self._reason[d.reason], True, True)
                o = _put(o, b',"state":', 9)
                o = self._name(o, sidx, True, True)
                o = _put(o, b',"conn":', 8)
                if d.conn:
                    o = _utoa(o, d.conn)
                else:
                    o = _put(o, b"null", 4)
                o = _put(o, b"}\n", 2)
            else:
                o = _utoa(o, d.pkt)
                o[0] = 44
                o = self._ts(o + 1, d.ts_ns)
                o[0] = 44
                o = self._name(o + 1, self._dir[d.dir], False, False)
                o[0] = 44
                o = self._name(o + 1, self._proto[d.proto] if ip else -1, False, False)
                o[0] = 44
                o += 1
                if ip:
                    o = self._client(o, d, p)
                    o[0] = 44
                    o = self._vip(o + 1, d, p)
                else:
                    o[0] = 44
                    o += 1
                o[0] = 44
                o = self._rs(o + 1, d, False, False)
                o[0] = 44
                o = self._name(o + 1, self._act[d.action & 7], False, False)
                o[0] = 44
                o = self._name(o + 1, self._reason[d.reason], False, False)
                o[0] = 44
                o = self._name(o + 1, sidx, False, False)
                o[0] = 44
                o += 1
                if d.conn:
                    o = _utoa(o, d.conn)
                o[0] = 10
                o += 1
        return o - base

    def columns(self, PacketBatch batch not None, uint32_t start, uint32_t stop, dec, ColumnChunk chunk not None):
        """Append packets [start, stop) to ``chunk`` (which must have room for them)."""
        cdef uint32_t m = stop - start
        if self.fmt != FMT_COLUMNS:
            raise ValueError("this encoder makes text (use encode())")
        if stop > batch.count or start > stop:
            raise ValueError("packet range outside the batch")
        cdef const decision_t *dp = _dec_buf(dec, m)
        if chunk.n + m > chunk.cap:
            raise ValueError("column chunk full")
        if m == 0:
            return
        chunk._reserve(m)
        cdef EndpointDict vd = chunk.vip_dict
        cdef EndpointDict rd = chunk.rs_dict
        with nogil:
            self._columns(batch.pkts + start, dp, m, chunk, vd, rd)

    cdef void _columns(self, const pkt_desc *pk, const decision_t *d0, uint32_t m,
                       ColumnChunk c, EndpointDict vd, EndpointDict rd) noexcept nogil:
        cdef uint32_t i, slot
        cdef uint64_t j = c.n
        cdef const decision_t *d
        cdef const pkt_desc *p
        cdef char *o
        cdef char *text = c.client_text
        cdef int32_t coff = c.client_off[j]
        cdef int32_t e
        cdef ep_key k
        for i in range(m):
            d = d0 + i
            p = pk + i
            c.pkt[j] = d.pkt
            c.ts[j] = d.ts_ns
            c.conn[j] = d.conn
            c.dir_[j] = <int8_t>self._dir[d.dir]
            c.action[j] = <int8_t>self._act[d.action & 7]
            c.reason[j] = <int8_t>self._reason[d.reason]
            c.state[j] = <int16_t>(self._state[_pidx(d.proto) * 256 + d.state] if d.conn != 0 else -1)
            if self._has_rs(d):
                k.a0 = self._gen
                k.a1 = 0
                k.w = _key_w(d.dport if self._rs_port0(d) else 0, KEY_SERVER, <uint32_t>d.rs)
                e = rd.find(&k, &slot)
                if e < 0:
                    e = rd.add(&k, slot, self._rs_text(rd.text_end(), d))
                c.rs[j] = e
            else:
                c.rs[j] = -1
            if p.af != 0:
                c.ip[j] = 1
                c.proto[j] = <int8_t>self._proto[d.proto]
                coff = <int32_t>(self._client(text + coff, d, p) - text)
                self._vip_key(&k, d, p)
                e = vd.find(&k, &slot)
                if e < 0:
                    e = vd.add(&k, slot, self._vip(vd.text_end(), d, p))
                c.vip[j] = e
            else:
                c.ip[j] = 0
                c.proto[j] = -1
                c.vip[j] = -1
            c.client_off[j + 1] = coff
            j += 1
        c.n = j
