# Engine-internal declarations shared by core.pyx and the protocol modules (proto_*.pyx): the
# decision reason codes, the packet direction of a state transition, and the protocol ops table
# (the kernel's struct ip_vs_protocol: one per protocol file, looked up by protocol number).
#
# Only types and constants live here (no functions, no extension types), so a protocol module
# can cimport them without importing ipvsflow.engine.core at run time.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from ipvsflow.engine.defs cimport engine_t
from ipvsflow.engine.conntab cimport conn_entry, conn_key
from ipvsflow.engine.defs cimport decision_t
from ipvsflow.io.batch cimport pkt_desc, PacketBatch

# A burst through an Engine for C callers (the live loop), without a Python call per burst:
# Engine._burst_entry() hands out a capsule of this function. Runs packets [0, m) of batch
# (m <= batch.count) through ``engine`` (an Engine; checked) with its decisions into ``out``.
ctypedef int (*engine_burst_fn)(object engine, PacketBatch batch, uint32_t m,
                                decision_t *out) except -1

# Direction of a state transition (IP_VS_DIR_*). INPUT_ONLY is chosen by the protocol itself
# for entries that carry NOOUTPUT.
cdef enum:
    IP_VS_DIR_INPUT = 0
    IP_VS_DIR_OUTPUT = 1
    IP_VS_DIR_INPUT_ONLY = 2

# decision_t.reason. ipvsflow.engine.names.REASONS holds the names at the same indexes
# (tests/test_engine_names.py checks that they agree). Append, never renumber.
cdef enum:
    R_NONE = 0
    # invalid (parse status classes)
    R_FRAGMENT = 1              # non-first IP fragment: no L4 header to look up
    R_NOT_IP = 2
    R_UNKNOWN_LINKTYPE = 3
    R_TRUNCATED = 4
    R_MALFORMED = 5
    # pass: IPVS lets the packet continue (NF_ACCEPT)
    R_NOT_IPVS_PROTO = 6        # a protocol IPVS has no handler for
    R_PROTO_NOT_MODELLED = 7    # (unused: every protocol IPVS handles is modelled)
    R_NO_SERVICE = 8            # no entry and no virtual service for the destination
    R_NOT_SYN = 9               # TCP without SYN and no entry (sloppy_tcp off)
    R_RST_NO_CONN = 10          # TCP RST never creates an entry
    R_FTP_DATA = 11             # client source port 20 is never scheduled (FTPDATA)
    R_FTP_OTHER_PORT = 12       # ip_vs_leave: other port of an FTP virtual address
    R_DR_REPLY_NOT_SEEN = 13    # VIP -> client reply of a DR/TUN entry: not on the director's path
    R_DR_REPLY_IGNORED = 14     # same, director on the reply path, kernel before reply inspection
    R_NODEST_EXPIRED = 15       # entry of a deleted server expired; the packet could not be scheduled
    # drop
    R_NO_DEST = 16              # scheduler found no server: ICMP port unreachable + drop
    R_PORT_ZERO = 17            # non-persistent port-0 service: never schedules (ICMP + drop)
    R_CONNTRACK_DROP = 18       # port reuse with a confirmed netfilter conntrack (old_ct)
    R_DEST_UNAVAILABLE = 19     # entry's server deleted, expire_nodest_conn off (or kernel < 5.9)
    R_NODEST_CONNTRACK = 20     # entry's server deleted, expired, packet has a confirmed conntrack
    R_TABLE_FULL = 21           # no free connection entry
    R_NAT_ICMP_SEND = 22        # reply from a NAT real server without an entry (nat_icmp_send)
    # resched / new
    R_REUSE_EXPECTED = 23       # branch B: SYN/INIT on an entry in a closing state
    R_REUSE_WEIGHT0 = 24        # branch A: SYN/INIT on an entry of a weight-0 server
    R_DEST_DELETED = 25         # server-status block: entry of a deleted server expired, rescheduled
    R_CACHE_BYPASS = 26         # fwmark service without servers, cache_bypass on: bypass entry
    # pass (appended)
    R_NOT_INIT = 27             # SCTP without INIT and no entry (sloppy_sctp off)
    R_ABORT_NO_CONN = 28        # SCTP ABORT never creates an entry
    R_ICMP_NO_CONN = 29         # ICMP error about a connection IPVS does not have
    R_ICMP_UNRELATED = 30       # ICMP error embedding a protocol IPVS does not handle
    R_ICMP_FRAGMENTED = 31      # (drop) a fragmented ICMPv6 error cannot be one
    R_RELATED_ONLY = 32         # AH/ESP without its UDP/500 connection: never schedules
    R_COUNT = 33

# Protocol hooks. All run without the GIL.
# is_new_conn: the packet opens a connection (TCP SYN, SCTP INIT) for the reuse logic.
ctypedef bint (*is_new_conn_fn)(const pkt_desc *p) noexcept nogil
# is_new_conn_expected: the entry's state allows rescheduling a new connection on it.
ctypedef bint (*is_new_conn_expected_fn)(const conn_entry *cp, int conn_reuse_mode,
                                         bint close_expected) noexcept nogil
# conn_schedule admission: 0 = the packet may create an entry, else the R_* pass reason.
ctypedef uint8_t (*conn_schedule_fn)(const engine_t *e, const pkt_desc *p) noexcept nogil
# state_transition: ip_vs_set_state for one packet in IP_VS_DIR_INPUT or IP_VS_DIR_OUTPUT.
ctypedef void (*state_transition_fn)(engine_t *e, conn_entry *cp, int direction,
                                     const pkt_desc *p) noexcept nogil
# timeout: the entry's timeout (ns) for its current state (cp->timeout after the transition).
ctypedef int64_t (*timeout_fn)(const engine_t *e, const conn_entry *cp) noexcept nogil
# tracker_reopens: for the "simple" old_ct model, netfilter's tracker would replace the conntrack
# of an entry in this state with a fresh, unconfirmed one on a new SYN/INIT.
ctypedef bint (*tracker_reopens_fn)(const conn_entry *cp) noexcept nogil

# The "tracker" old_ct model keeps, per connection entry, what netfilter's conntrack of the same
# tuple would hold (see variants.py). state 0 = no conntrack for the tuple.
ctypedef struct nf_state:
    uint8_t state               # protocol's conntrack state + 1 (0: none)
    uint8_t flags               # NF_F_*
    uint16_t _pad
    uint32_t born_ms            # creation, ms on the engine clock (mod 2**32)
    int64_t expires_ns          # the conntrack's timeout

cdef enum:
    NF_F_CLOSE_INIT = 0x01      # IP_CT_TCP_FLAG_CLOSE_INIT seen in either direction
    NF_F_LAST_RST = 0x02        # last in-window segment was an RST ...
    NF_F_LAST_REPLY = 0x04      # ... / any segment, from the reply direction
    NF_F_SEEN_REPLY = 0x08      # IPS_SEEN_REPLY
    NF_F_LAST_SYN = 0x10        # last segment recorded was a SYN (ignored SYN, RFC 5961 cases)

# nf_track: run netfilter's tracker for one packet of the entry's tuple (direction
# IP_VS_DIR_INPUT = original, IP_VS_DIR_OUTPUT = reply). Returns NF_R_* bits.
ctypedef int (*nf_track_fn)(nf_state *s, int direction, const pkt_desc *p,
                            int64_t now_ns) noexcept nogil

cdef enum:
    NF_R_CONFIRMED = 1          # the packet carries a confirmed conntrack (old_ct)
    NF_R_NEW = 2                # the packet created a new (unconfirmed) conntrack

ctypedef struct proto_ops:
    uint8_t protocol
    uint8_t registered          # 1: IPVS handles this protocol; 0: NF_ACCEPT
    uint8_t modelled            # 1: this engine implements it (the hooks below are set)
    uint8_t num_states
    is_new_conn_fn is_new_conn
    is_new_conn_expected_fn is_new_conn_expected
    conn_schedule_fn conn_schedule
    state_transition_fn state_transition
    timeout_fn timeout
    tracker_reopens_fn tracker_reopens
    nf_track_fn nf_track

# How old_ct (the packet carries a confirmed netfilter conntrack) is modelled; see variants.py.
cdef enum:
    CT_MODEL_TRACKER = 0        # netfilter's conntrack of each entry's tuple is tracked (nf_state)
    CT_MODEL_NEVER = 1          # the conntrack is always replaced (old_ct always false)
    CT_MODEL_ALWAYS = 2         # the conntrack is always confirmed (old_ct true when conntrack=1)
    CT_MODEL_SIMPLE = 3         # from the IPVS entry: NOOUTPUT -> true; else false in TIME_WAIT,
                                # CLOSE (SCTP CLOSED), true otherwise

# Burst pipeline: while packet j is processed, the index slots of packet j + PF_SLOT_AHEAD
# and the entry of packet j + PF_ENTRY_AHEAD are prefetched; the hashed keys of the packets in
# between wait in a ring.
cdef enum:
    PF_SLOT_AHEAD = 16
    PF_ENTRY_AHEAD = 8
    PF_CTL_AHEAD = 2            # and the controlling template of the entry of packet j + 2
    KEY_RING = 32               # power of two > PF_SLOT_AHEAD
    KEY_RING_MASK = KEY_RING - 1

# A packet's place in the burst pipeline, one cache line: what the stages ahead of it found.
ctypedef struct key_slot:
    conn_key key                # its hashed in-key (the out-key of a real server's reply has the same fields)
    uint32_t hint               # the entry its peek found (CONN_NONE: none)
    uint8_t rs                  # 1: its source passes the real-server prefilter (rs_filter)
    uint8_t out                 # 1: its first lookup is in the out index (rs and NAT entries hashed)
    uint8_t _pad[14]

# The engine's C state: the shared engine_t plus what only the core needs.
ctypedef struct core_t:
    engine_t e
    uint8_t clock_set           # now_ns holds a packet/advance time
    uint8_t dr_inspect          # Engine(dr_replies="inspect"): DR/TUN replies pass the director
    uint8_t close_expected      # TCP CLOSE counts as an expected state for reuse (>= 4.19)
    uint8_t flush_pending       # a deleted server's entries are to be flushed (expire_nodest_conn)
    uint8_t vip_filter_off      # fwmark services: replies can come from any address
    uint32_t nat_hashed         # upper bound of entries in the out index (0: skip out lookups)
    uint64_t rs_filter[4]       # 256-bit filter of real-server addresses (out-lookup prefilter)
    uint64_t vip_filter[4]      # 256-bit filter of virtual addresses (reply-lookup prefilter)
    uint64_t n_ts_backwards     # packets whose timestamp was earlier than the clock
    uint64_t n_expired          # entries released by expiry
    int64_t flush_ns            # when the pending flush was queued (clock at the delete)
    int64_t next_due            # lower bound of the earliest timer deadline (saves a call per packet)
    nf_state *nf                # CT_MODEL_TRACKER: one per entry id (NULL until conntrack is on)
    uint64_t nf_bytes           # size of the nf mapping
    key_slot ring[KEY_RING]     # burst pipeline: the packets ahead (rs_filter is fixed during a burst)
    uint32_t *tpl_timeout       # per entry id: a template's timeout in s, its service's at creation
    uint64_t tpl_bytes          # size of the tpl_timeout mapping (NULL until a persistent service)
