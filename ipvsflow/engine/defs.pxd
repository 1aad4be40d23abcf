# Shared engine state: real servers, virtual services, sysctls, variant switches and the
# per-packet decision record. Every engine module cimports this; field order of decision_t is
# part of the public numpy view (append, never reorder).
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from ipvsflow.engine.conntab cimport conntab
from ipvsflow.io.batch cimport pkt_desc

# ---- decisions ---------------------------------------------------------------------------
cdef enum:
    ACT_NEW = 1         # a new connection was scheduled for this packet
    ACT_HIT = 2         # packet belongs to an existing connection and is forwarded
    ACT_RESCHED = 3     # SYN/INIT hit an old entry, which was expired; the packet was scheduled anew
    ACT_DROP = 4        # IPVS dropped the packet
    ACT_PASS = 5        # not IPVS's business (or IPVS let it through to the local stack)
    ACT_INVALID = 6     # could not be parsed far enough to decide

cdef enum:
    DIR_NONE = 0
    DIR_IN = 1          # client -> VIP
    DIR_OUT = 2         # reply (real server or VIP -> client)

# decision_t.flags
cdef enum:
    DF_REUSE = 0x01     # SYN/INIT found an existing entry (a port-reuse event)
    DF_TEMPLATE = 0x02  # scheduled through a persistence template
    DF_ICMP = 0x04      # ICMP error mapped to the connection of its embedded tuple
    DF_NOOUTPUT = 0x08  # connection still has NOOUTPUT after this packet

ctypedef struct decision_t:         # 72 bytes
    uint64_t pkt                    # packet index in the input
    int64_t ts_ns
    uint64_t conn                   # connection serial (0 = none)
    uint64_t reuse_of               # serial of the entry a SYN/INIT hit (0 = none)
    int32_t rs                      # real-server id (-1 = none)
    int32_t svc                     # service id (-1 = none)
    uint8_t action                  # ACT_*
    uint8_t reason                  # R_* (ipvsflow.engine.reasons)
    uint8_t dir                     # DIR_*
    uint8_t proto
    uint8_t state                   # connection state after the packet (protocol numbering)
    uint8_t old_state               # state of the entry before this packet (0xff = none)
    uint8_t flags                   # DF_*
    uint8_t _pad
    # What the forwarders need of the connection, copied while the entry is at hand (it may be
    # gone by the time the burst is forwarded): the real server's port, the virtual side, the method.
    uint16_t dport                  # connection's real-server port (cp->dport)
    uint16_t vport                  # connection's virtual port (cp->vport)
    uint8_t fwd                     # CF_MASQ / CF_LOCALNODE / CF_TUNNEL / CF_DROUTE / CF_BYPASS (0xff: none)
    uint8_t _pad2[3]
    uint8_t vaddr[16]               # connection's virtual address (cp->vaddr)

# ---- real servers and services -------------------------------------------------------------
cdef enum:
    DEST_F_AVAILABLE = 0x0001
    DEST_F_OVERLOAD = 0x0002

ctypedef struct dest_t:
    uint8_t addr[16]                # IPv4 mapped
    uint16_t port
    uint8_t af
    uint8_t fwd                     # CF_MASQ / CF_LOCALNODE / CF_TUNNEL / CF_DROUTE
    int32_t weight
    int32_t last_weight             # mh: latest non-zero weight
    uint32_t u_threshold
    uint32_t l_threshold
    uint32_t activeconns
    uint32_t inactconns
    uint32_t persistconns
    uint32_t flags                  # DEST_F_*
    uint32_t conn_flags             # flags OR-ed into a bound entry (fwd | INACTIVE | NOOUTPUT for non-NAT)
    int32_t svc                     # owning service id
    int32_t next                    # service list, newest first (-1 = end)
    int32_t prev
    uint32_t refcnt                 # entries bound to it (a deleted dest lives on while > 0: the "trash")
    uint64_t conns                  # stats: connections scheduled
    uint64_t inpkts
    uint64_t outpkts
    uint64_t inbytes
    uint64_t outbytes
    uint8_t _pad[16]                # 128 bytes: a dest's address is its id shifted (the hit path's index)

cdef enum:
    SCHED_RR = 0
    SCHED_WRR = 1
    SCHED_LC = 2
    SCHED_WLC = 3
    SCHED_SED = 4
    SCHED_NQ = 5
    SCHED_FO = 6
    SCHED_OVF = 7
    SCHED_SH = 8
    SCHED_DH = 9
    SCHED_MH = 10

ctypedef struct service_t:
    uint8_t addr[16]
    uint16_t port
    uint8_t af
    uint8_t proto                   # 0 for fwmark services
    uint32_t fwmark
    uint32_t flags                  # SVC_F_* (ipvsflow.config)
    uint32_t timeout_s              # persistence timeout
    uint8_t netmask[16]             # persistence netmask as a 16-byte mask over the mapped address
    uint8_t sched                   # SCHED_*
    uint8_t used                    # 0 after -D
    uint16_t _pad
    int32_t dest_head               # first dest of the list (most recently added), -1 = empty
    uint32_t num_dests
    # scheduler state
    int32_t rr_cursor               # rr: dest id of sched_data; -1 = the list head
    int32_t wrr_cl                  # wrr: cursor (dest id, -1 = head)
    int32_t wrr_cw
    int32_t wrr_mw
    int32_t wrr_di
    void *sched_data                # hashing schedulers' tables (sh/dh/mh)
    uint64_t conns                  # stats
    uint64_t inpkts
    uint64_t outpkts
    uint64_t inbytes
    uint64_t outbytes

# Scheduler entry point: returns a dest id or -1 ("no destination available").
ctypedef int32_t (*sched_fn)(engine_t *e, service_t *svc, const pkt_desc *p) noexcept nogil

# Kernel behaviour variants (ipvsflow.engine.variants maps --kernel VERSION to these).
cdef enum:
    REUSE_2015 = 1
    REUSE_2016 = 2
    REUSE_2020 = 3
    REUSE_2021 = 4

ctypedef struct engine_t:
    conntab *ct
    dest_t *dests
    uint32_t n_dests
    uint32_t cap_dests
    service_t *svcs
    uint32_t n_svcs
    uint32_t cap_svcs
    # sysctls (kernel names)
    int32_t conn_reuse_mode
    int32_t expire_nodest_conn
    int32_t expire_quiescent_template
    int32_t conntrack
    int32_t secure_tcp
    int32_t sloppy_tcp
    int32_t sloppy_sctp
    int32_t schedule_icmp
    int32_t nat_icmp_send
    int32_t cache_bypass
    # timeouts in ns, indexed by protocol state
    int64_t tcp_timeout[12]
    int64_t udp_timeout
    int64_t sctp_timeout[15]
    # variant switches (section 6.6 of the semantics reference)
    uint8_t reuse_variant           # REUSE_*
    uint8_t nodest_block_v59        # 1: check-server-status block runs before scheduling (v5.9+)
    uint8_t nodest_flush            # 1: deleting a dest flushes its entries (v5.9+)
    uint8_t tcp_active_v48          # 1: SYN_SENT/SYN_RECV/SYNACK count as active (v4.8+)
    uint8_t dr_reply_inspection     # 1: replies of DR/TUN entries are matched and run OUTPUT (v5.11+)
    uint8_t ct_model                # how a packet's netfilter conntrack is modelled (old_ct)
    uint16_t _pad
    int64_t now_ns
