# Connection table: a slab of fixed-size entries (index = connection id) plus two open-addressing
# indexes of 8-byte slots (32-bit hash signature + 32-bit entry id), linear probing, backward-shift
# deletion, load factor <= 0.7, growth by doubling done incrementally. A timer structure keyed by
# each entry's deadline replaces the kernel's per-connection timer.
#
# The table knows keys and deadlines, not IPVS semantics: the engine decides what an expiry means.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    CONN_NONE = 0xFFFFFFFF          # "no entry"

# Entry flags: the kernel's IP_VS_CONN_F_* values where they fit 16 bits.
cdef enum:
    CF_FWD_MASK = 0x0007
    CF_MASQ = 0x0000
    CF_LOCALNODE = 0x0001
    CF_TUNNEL = 0x0002
    CF_DROUTE = 0x0003
    CF_BYPASS = 0x0004
    CF_NOOUTPUT = 0x0080
    CF_INACTIVE = 0x0100
    CF_NO_CPORT = 0x0800
    CF_TEMPLATE = 0x1000
    CF_ONE_PACKET = 0x2000
    CF_NFCT = 0x8000                # kernel: 1 << 16 (IP_VS_CONN_F_NFCT)

# Table-private bookkeeping (conn_entry.xflags).
cdef enum:
    XF_USED = 0x01                  # slab slot holds a live entry
    XF_IN_HASHED = 0x02             # entry is in the in-direction index
    XF_OUT_HASHED = 0x04            # entry is in the out-direction index (NAT)
    XF_TIMER = 0x08                 # entry has an armed deadline
    XF_EXPIRE_LATER = 0x10          # the "expire later" rule forced a 60 s timeout
    XF_ENGINE1 = 0x20               # free for the engine
    XF_ENGINE2 = 0x40
    XF_ENGINE3 = 0x80

ctypedef struct conn_entry:         # 80 bytes
    uint8_t caddr[16]               # client address (IPv4 mapped ::ffff:a.b.c.d)
    uint8_t vaddr[16]               # virtual address (fwmark templates: the mark)
    uint16_t cport                  # network-independent host order
    uint16_t vport
    uint16_t dport                  # real-server port (daddr comes from the dest table)
    uint16_t flags                  # CF_*
    uint8_t proto
    uint8_t state                   # protocol state (templates: bit 1 = ASSURED)
    uint8_t af                      # 4 or 6
    uint8_t xflags                  # XF_*
    uint32_t dest                   # real-server id in the engine's dest table (CONN_NONE: none)
    uint32_t control                # controlling entry (persistence template), CONN_NONE if none
    uint32_t n_control              # number of entries this one controls
    int64_t deadline_ns             # when the idle timer fires (valid with XF_TIMER)
    uint32_t tnext                  # timer structure links
    uint32_t tprev
    uint64_t serial                 # unique over the table's life, never reused (1, 2, ...)

# A lookup key in the form an index hashes and compares.
#   in-index:  a = caddr, pa = cport, b = vaddr, pb = vport
#   out-index: a = daddr (real server), pa = dport, b = caddr, pb = cport
ctypedef struct conn_key:
    uint8_t a[16]
    uint8_t b[16]
    uint16_t pa
    uint16_t pb
    uint8_t proto
    uint8_t af
    uint8_t is_template             # 1: match only template entries, 0: only non-templates
    uint8_t _pad
    uint32_t hash                   # filled by ct_key_hash

ctypedef struct conntab:
    conn_entry *entries             # slab, reserved once (entries never move)
    uint64_t max_entries
    uint32_t hwm                    # high-water mark of slab ids handed out
    uint32_t free_head              # free list through tnext (CONN_NONE: empty)
    uint64_t live                   # entries in use
    uint64_t next_serial
    void *in_idx                    # index internals (conntab.pyx)
    void *out_idx
    void *timers
    const uint8_t *dest_addr        # &engine.dests[0].addr: a dest's address is at dest_addr + id * dest_stride
    uint32_t dest_stride            # sizeof(dest_t); the engine updates both whenever its dest array moves
    uint64_t seed

cdef conntab *ct_new(uint64_t max_entries, uint32_t initial_slots, uint64_t seed) noexcept nogil
cdef void ct_free_table(conntab *t) noexcept nogil

# Entries
cdef uint32_t ct_alloc(conntab *t) noexcept nogil            # zeroed entry, XF_USED, new serial; CONN_NONE when full
cdef void ct_release(conntab *t, uint32_t id) noexcept nogil  # unhash, disarm, back to the free list
cdef inline conn_entry *ct_get(conntab *t, uint32_t id) noexcept nogil:
    return &t.entries[id]

# Keys and indexes
cdef void ct_key_hash(conntab *t, conn_key *k) noexcept nogil
cdef void ct_key_in_of(conntab *t, uint32_t id, conn_key *k) noexcept nogil    # in-key of an entry (hashed)
cdef void ct_prefetch_in(conntab *t, uint32_t hash) noexcept nogil
cdef void ct_prefetch_out(conntab *t, uint32_t hash) noexcept nogil
cdef void ct_prefetch_entry(conntab *t, uint32_t id) noexcept nogil
cdef uint32_t ct_peek_in(conntab *t, uint32_t hash) noexcept nogil   # id in the first slot with this signature (for entry prefetch), CONN_NONE
cdef int ct_hash_in(conntab *t, uint32_t id) noexcept nogil          # insert by the entry's in-key; newest wins on an equal key
cdef int ct_hash_out(conntab *t, uint32_t id) noexcept nogil         # insert by (daddr from dest_addr[dest], dport, caddr, cport)
cdef void ct_unhash(conntab *t, uint32_t id) noexcept nogil          # remove from both indexes
cdef uint32_t ct_lookup_in(conntab *t, const conn_key *k) noexcept nogil
cdef uint32_t ct_lookup_out(conntab *t, const conn_key *k) noexcept nogil
cdef void ct_lookup_in_bulk(conntab *t, conn_key *keys, uint32_t n, uint32_t *out) noexcept nogil

# Timers: deadlines in ns; pop returns due entries in deadline order (ties: arming order).
cdef void ct_timer_set(conntab *t, uint32_t id, int64_t deadline_ns) noexcept nogil
cdef void ct_timer_del(conntab *t, uint32_t id) noexcept nogil
cdef int64_t ct_timer_next(conntab *t) noexcept nogil                # earliest deadline, INT64_MAX if none (O(1) amortised)
cdef uint32_t ct_timer_pop(conntab *t, int64_t now_ns) noexcept nogil  # one due entry (deadline <= now) or CONN_NONE; disarms it

# Introspection
cdef uint64_t ct_index_bytes(conntab *t) noexcept nogil              # bytes held by both indexes and the timer structure


cdef class ConnTable:
    # Python-facing wrapper (tests, benchmarks, listings); the engine uses the C functions.
    cdef conntab *t
