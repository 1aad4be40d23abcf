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
    uint64_t hkeys[3]               # ct_hash_keys(seed): the hash's seed words, computed once

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
cdef uint64_t ct_prefault(conntab *t, uint64_t n) noexcept nogil                # commit the first n entries' memory now; bytes
cdef uint64_t ct_index_bytes(conntab *t) noexcept nogil              # bytes held by both indexes and the timer structure


cdef class ConnTable:
    # Python-facing wrapper (tests, benchmarks, listings); the engine uses the C functions.
    cdef conntab *t
    cdef object _keep               # Python objects the wrapped table points into (dest addresses)


# ---- inline fast paths (for callers in other modules) -------------------------------------
# The per-packet operations as inline functions with the semantics of the ct_* functions
# above (whose slow paths they call). A call through the module's C-API pointer costs as
# much as a lookup at 1K connections and, in a burst pipeline, breaks up the overlap of the
# cache misses. The structures below are conntab.pyx's internals: read-only for others.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline uint64_t ct_mum(uint64_t a, uint64_t b) {
        __uint128_t r = (__uint128_t)a * b;
        return (uint64_t)r ^ (uint64_t)(r >> 64);
    }
    /* wyhash-style mixing of two 16-byte addresses and one word of ports/proto/af/flag;
       k: the seed's three words (ct_hash_keys), which a table computes once. */
    static inline uint32_t ct_hash_raw_k(const uint8_t *a, const uint8_t *b, uint64_t w, const uint64_t *k) {
        uint64_t a0, a1, b0, b1, h;
        memcpy(&a0, a, 8); memcpy(&a1, a + 8, 8);
        memcpy(&b0, b, 8); memcpy(&b1, b + 8, 8);
        h = ct_mum(a0 ^ k[0], a1 ^ 0xe7037ed1a0b428dbULL);
        h ^= ct_mum(b0 ^ 0x8ebc6af09c88c6e3ULL, b1 ^ k[1]);
        h = ct_mum(h ^ w ^ 0x1d8e4e27c47d124fULL, k[2]);
        return (uint32_t)(h ^ (h >> 32)) | 0x80000000u;
    }
    static inline void ct_hash_keys(uint64_t seed, uint64_t *k) {
        k[0] = seed ^ 0xa0761d6478bd642fULL;
        k[1] = seed ^ 0x589965cc75374cc3ULL;
        k[2] = (seed ^ 0xd6e8feb86659fd93ULL) | 1;
    }
    static inline uint32_t ct_hash_raw(const uint8_t *a, const uint8_t *b, uint64_t w, uint64_t seed) {
        uint64_t k[3];
        ct_hash_keys(seed, k);
        return ct_hash_raw_k(a, b, w, k);
    }
    static inline int ct_eq16(const uint8_t *x, const uint8_t *y) {
        uint64_t x0, x1, y0, y1;
        memcpy(&x0, x, 8); memcpy(&x1, x + 8, 8);
        memcpy(&y0, y, 8); memcpy(&y1, y + 8, 8);
        return ((x0 ^ y0) | (x1 ^ y1)) == 0;
    }
    /* The asm is a side effect the compiler must keep: GCC finds a function whose only
       work is a prefetch "const" and deletes every call to it (this happened to
       _ct_idx_prefetch: no slot was ever prefetched). On x86-64 the asm is the prefetch
       itself, its address a memory operand (base + offset folded in, no register to fill);
       without PRFCHW, __builtin_prefetch(p, 1, 3) is prefetcht0 as well. */
    #if defined(__x86_64__) && defined(__GNUC__)
    static inline void ct_prefetch(const void *p) { __asm__ __volatile__("prefetcht0 %0" : : "m"(*(const char *)p)); }
    #if defined(__PRFCHW__)
    static inline void ct_prefetchw(const void *p) { __asm__ __volatile__("prefetchw %0" : : "m"(*(const char *)p)); }
    #else
    static inline void ct_prefetchw(const void *p) { __asm__ __volatile__("prefetcht0 %0" : : "m"(*(const char *)p)); }
    #endif
    #else
    static inline void ct_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); __asm__ __volatile__("" : : "r"(p)); }
    static inline void ct_prefetchw(const void *p) { __builtin_prefetch(p, 1, 3); __asm__ __volatile__("" : : "r"(p)); }
    #endif
    """
    uint32_t ct_hash_raw(const uint8_t *a, const uint8_t *b, uint64_t w, uint64_t seed) noexcept nogil
    uint32_t ct_hash_raw_k(const uint8_t *a, const uint8_t *b, uint64_t w, const uint64_t *k) noexcept nogil
    void ct_hash_keys(uint64_t seed, uint64_t *k) noexcept nogil
    bint ct_eq16(const uint8_t *x, const uint8_t *y) noexcept nogil
    void ct_prefetch(const void *p) noexcept nogil
    void ct_prefetchw(const void *p) noexcept nogil

cdef enum:
    CT_TW_LEVELS = 6                # timer wheel levels of 256 buckets (6 * 8 bits >= 64 - 20 bits of tick)
    CT_TW_BUCKETS = 1536
    CT_TP_READY = 0xFFFFFFF0        # conn_entry.tprev of an entry held in the timers' ready heap

ctypedef struct ct_shadow:         # an out-hashed entry whose key a newer entry holds in the index
    uint64_t w                      # (id << 32) | signature, 0 = empty
    uint64_t seq


ctypedef struct ct_index:
    uint64_t *s                     # current array
    uint64_t mask
    uint64_t n                      # ids in s
    uint64_t *os                    # old array while migrating, else NULL
    uint64_t omask
    uint64_t on                     # live ids in os
    uint64_t ot                     # tombstones in os (unswept part)
    uint64_t ostart                 # sweep start: an empty slot of os, never written
    uint64_t cursor                 # slots swept so far (os positions ostart .. ostart + cursor - 1, cyclic)
    uint64_t rel                    # old-array bytes [page after ostart, rel) released
    uint64_t nfall                  # keys with an unswept old home put into s (old array had no room)
    uint64_t oreleased              # bytes of os already returned to the kernel
    uint64_t grow_fail              # growth attempts that could not map memory
    uint64_t lost                   # unhash fell back to a full scan (entry key changed while hashed)
    uint64_t growths
    int out                         # 1: out-direction index
    uint64_t relb                   # old-array bytes [0, relb) released (the sweep's wrapped part)
    # Out index only: entries hidden behind a newer one with the same key (the kernel keeps
    # both in its hash chain, newest first). Allocated with the first one; see conntab.pyx.
    ct_shadow *sh
    uint64_t sh_mask
    uint64_t sh_n
    uint64_t sh_seq                 # order of hiding: the last hidden is the newest of its key
    uint64_t sh_fail                # entries dropped from the index instead (no memory)


ctypedef struct tw_bucket:
    uint32_t head
    uint32_t tail


ctypedef struct heap_el:            # 16 bytes
    int64_t deadline
    uint32_t id
    uint32_t serial                 # low 32 bits of the entry's serial (ties compare modulo 2**32)


ctypedef struct ct_timers:
    tw_bucket b[CT_TW_BUCKETS]
    uint64_t bits[CT_TW_LEVELS][4]
    uint64_t cur                    # wheel cursor (biased tick)
    uint64_t armed                  # entries with XF_TIMER
    heap_el *heap
    uint64_t hn
    uint64_t hcap
    uint64_t hhwm                   # heap high-water mark (elements)
    int64_t next_ns                 # cached ct_timer_next value (valid when next_valid)
    int next_valid
    int next_exact                  # next_ns is the earliest deadline (else a lower bound beyond the horizon)
    int64_t last_now                # largest now given to ct_timer_pop
    uint64_t refiled                # lazy re-filings (stats)
    uint64_t cascaded               # bucket steps (stats)


cdef inline uint64_t _ct_key_word(uint16_t pa, uint16_t pb, uint8_t proto, uint8_t af, uint8_t tmpl) noexcept nogil:
    return (<uint64_t>pa) | ((<uint64_t>pb) << 16) | ((<uint64_t>proto) << 32) | \
        ((<uint64_t>af) << 40) | ((<uint64_t>tmpl) << 48)


cdef inline void ct_key_hash_i(conntab *t, conn_key *k) noexcept nogil:
    k.hash = ct_hash_raw_k(k.a, k.b, _ct_key_word(k.pa, k.pb, k.proto, k.af, k.is_template != 0), t.hkeys)


cdef inline const uint8_t *_ct_dest_addr(conntab *t, uint32_t dest) noexcept nogil:
    if t.dest_addr == NULL or dest == CONN_NONE:
        return NULL
    return t.dest_addr + <uint64_t>dest * t.dest_stride


cdef inline bint _ct_in_eq(conntab *t, uint32_t id, const conn_key *k) noexcept nogil:
    cdef conn_entry *e = &t.entries[id]
    return (e.cport == k.pa and e.vport == k.pb and e.proto == k.proto and e.af == k.af
            and ((e.flags & CF_TEMPLATE) != 0) == (k.is_template != 0)
            and ct_eq16(e.caddr, k.a) and ct_eq16(e.vaddr, k.b))


cdef inline bint _ct_out_eq(conntab *t, uint32_t id, const conn_key *k) noexcept nogil:
    cdef conn_entry *e = &t.entries[id]
    cdef const uint8_t *da
    if not (e.dport == k.pa and e.cport == k.pb and e.proto == k.proto and e.af == k.af
            and ct_eq16(e.caddr, k.b)):
        return False
    da = _ct_dest_addr(t, e.dest)
    return da != NULL and ct_eq16(da, k.a)


cdef inline bint _ct_key_eq(conntab *t, ct_index *ix, uint32_t id, const conn_key *k) noexcept nogil:
    if ix.out:
        return _ct_out_eq(t, id, k)
    return _ct_in_eq(t, id, k)


# Position in s holding key k, or -1.
cdef inline int64_t _ct_probe_cur(conntab *t, ct_index *ix, const conn_key *k) noexcept nogil:
    cdef uint64_t mask = ix.mask, i = k.hash & mask, w
    cdef uint64_t *s = ix.s
    while True:
        w = s[i]
        if w == 0:
            return -1
        if <uint32_t>w == k.hash and _ct_key_eq(t, ix, <uint32_t>(w >> 32), k):
            return <int64_t>i
        i = (i + 1) & mask


# Old-array probing. Swept positions are never read (their slots are stale or released);
# ostart, the empty slot where the sweep began, ends every probe.
cdef inline bint _ct_old_swept(ct_index *ix, uint64_t i) noexcept nogil:
    return ((i - ix.ostart) & ix.omask) < ix.cursor


cdef inline uint64_t _ct_old_next(ct_index *ix, uint64_t i) noexcept nogil:
    return (i + 1) & ix.omask


cdef inline uint64_t _ct_old_start(ct_index *ix, uint32_t sig) noexcept nogil:
    cdef uint64_t i = sig & ix.omask
    if _ct_old_swept(ix, i):
        i = (ix.ostart + ix.cursor) & ix.omask
    return i


cdef inline int64_t _ct_probe_old(conntab *t, ct_index *ix, const conn_key *k) noexcept nogil:
    cdef uint64_t i = _ct_old_start(ix, k.hash), w
    cdef uint64_t *s = ix.os
    while True:
        w = s[i]
        if w == 0:
            return -1
        if <uint32_t>w == k.hash and _ct_key_eq(t, ix, <uint32_t>(w >> 32), k):
            return <int64_t>i
        i = _ct_old_next(ix, i)


cdef inline uint32_t _ct_idx_lookup(conntab *t, ct_index *ix, const conn_key *k) noexcept nogil:
    # While migrating, a key whose old home is not swept yet is in the old array (or, only
    # if the old array ever ran out of room, in the new one); a key whose home is swept is in
    # the new array, or still in the old one if its cluster straddles the sweep cursor.
    cdef int64_t p
    if ix.os == NULL:
        p = _ct_probe_cur(t, ix, k)
        return CONN_NONE if p < 0 else <uint32_t>(ix.s[p] >> 32)
    if _ct_old_swept(ix, k.hash & ix.omask):
        p = _ct_probe_cur(t, ix, k)
        if p >= 0:
            return <uint32_t>(ix.s[p] >> 32)
        p = _ct_probe_old(t, ix, k)
        return CONN_NONE if p < 0 else <uint32_t>(ix.os[p] >> 32)
    p = _ct_probe_old(t, ix, k)
    if p >= 0:
        return <uint32_t>(ix.os[p] >> 32)
    if ix.nfall == 0:
        return CONN_NONE
    p = _ct_probe_cur(t, ix, k)
    return CONN_NONE if p < 0 else <uint32_t>(ix.s[p] >> 32)


cdef inline void ct_prefetch_slot_s(const uint64_t *s, uint64_t mask, uint32_t hash) noexcept nogil:
    # a settled array s (mask): the home slot's line, and the next one (see _ct_idx_prefetch);
    # for callers that hold s and mask in locals
    cdef uint64_t i = hash & mask
    ct_prefetch(&s[i])
    ct_prefetch(&s[i + 1])


cdef inline void ct_prefetch_entry_at(const uint8_t *entries, uint32_t id) noexcept nogil:
    # ct_prefetch_entry_i from the entries' base (t.entries), for callers that hold it in a local
    cdef const uint8_t *p = entries + <uint64_t>id * sizeof(conn_entry)
    ct_prefetchw(p)
    ct_prefetchw(p + sizeof(conn_entry) - 1)


cdef inline void _ct_idx_prefetch(ct_index *ix, uint32_t hash) noexcept nogil:
    # A probe from the last slot of a cache line goes on into the next line (at load 0.6 the
    # home slot holds the key less than half the time): fetch that one too, or the lookup
    # waits for it (-12% per lookup at 10M connections). Without a branch: from any other
    # slot the second prefetch is for the same line again. (From the array's last slot it is
    # for the line after the array, not for slot 0: a prefetch never faults.)
    if ix.os == NULL:
        ct_prefetch_slot_s(ix.s, ix.mask, hash)
    elif _ct_old_swept(ix, hash & ix.omask):
        ct_prefetch(&ix.s[hash & ix.mask])
    else:
        ct_prefetch(&ix.os[hash & ix.omask])


cdef inline void ct_prefetch_entry_i(conntab *t, uint32_t id) noexcept nogil:
    # No range check: a prefetch never faults, and a branch here stalls the pipeline
    # behind the slot load (measured: 2x slower bulk lookups).
    ct_prefetch_entry_at(<const uint8_t *>t.entries, id)


cdef inline uint32_t _ct_peek_s(const uint64_t *s, uint64_t mask, uint32_t hash) noexcept nogil:
    # _ct_peek in a settled array s (mask): callers that hold s and mask in locals
    cdef uint64_t i = hash & mask, w
    while True:
        w = s[i]
        if w == 0:
            return CONN_NONE
        if <uint32_t>w == hash:
            return <uint32_t>(w >> 32)
        i = (i + 1) & mask


cdef inline uint32_t _ct_peek(ct_index *ix, uint32_t hash) noexcept nogil:
    cdef uint64_t i, w
    if ix.os != NULL and not _ct_old_swept(ix, hash & ix.omask):
        i = hash & ix.omask
        while True:
            w = ix.os[i]
            if w == 0:
                break
            if <uint32_t>w == hash:
                return <uint32_t>(w >> 32)
            i = _ct_old_next(ix, i)
        if ix.nfall == 0:
            return CONN_NONE
    return _ct_peek_s(ix.s, ix.mask, hash)


cdef inline void _ct_timer_move_later(conntab *t, conn_entry *e, int64_t deadline_ns,
                                      int64_t old) noexcept nogil:
    # an armed entry's deadline moves later: it stays filed where it is (the wheel re-files
    # it when that bucket comes up); only a cached earliest deadline it held is dropped
    cdef ct_timers *w = <ct_timers *>t.timers
    e.deadline_ns = deadline_ns
    if old == w.next_ns:
        w.next_valid = 0


cdef inline void _ct_timer_later(conntab *t, conn_entry *e, uint32_t id, int64_t deadline_ns,
                                 bint ok) noexcept nogil:
    # The hot case inline: an armed entry's deadline moves later. It stays filed where it
    # is and the wheel re-files it when that bucket comes up. ok: e is entry id's.
    # (One combined branch: separate ones on the freshly looked-up id measurably stall
    # bulk lookups.)
    cdef int64_t old = e.deadline_ns
    if ok & ((e.xflags & (XF_USED | XF_TIMER)) == (XF_USED | XF_TIMER)) & \
            (deadline_ns >= old) & (e.tprev != CT_TP_READY):
        _ct_timer_move_later(t, e, deadline_ns, old)
        return
    ct_timer_set(t, id, deadline_ns)


cdef inline void ct_timer_set_i(conntab *t, uint32_t id, int64_t deadline_ns) noexcept nogil:
    # ct_timer_set, its hot case inline; an id out of range reads entry 0 and takes the
    # checked slow path
    cdef bint inrange = id < t.hwm
    _ct_timer_later(t, &t.entries[id if inrange else 0], id, deadline_ns, inrange)


cdef inline void ct_timer_set_e(conntab *t, conn_entry *e, uint32_t id, int64_t deadline_ns) noexcept nogil:
    # ct_timer_set_i for an entry the caller holds: e == &t.entries[id], id < t.hwm (a live
    # entry a lookup returned), so neither the range check nor the address is redone. The
    # entry is at hand (its packet was processed): the tests may be separate branches
    cdef int64_t old = e.deadline_ns
    if ((e.xflags & (XF_USED | XF_TIMER)) == (XF_USED | XF_TIMER) and deadline_ns >= old
            and e.tprev != CT_TP_READY):
        _ct_timer_move_later(t, e, deadline_ns, old)
        return
    ct_timer_set(t, id, deadline_ns)


# Public inline variants (k.hash filled by ct_key_hash / ct_key_hash_i).
cdef inline void ct_prefetch_in_i(conntab *t, uint32_t hash) noexcept nogil:
    _ct_idx_prefetch(<ct_index *>t.in_idx, hash)


cdef inline void ct_prefetch_out_i(conntab *t, uint32_t hash) noexcept nogil:
    _ct_idx_prefetch(<ct_index *>t.out_idx, hash)


cdef inline uint32_t ct_peek_in_i(conntab *t, uint32_t hash) noexcept nogil:
    return _ct_peek(<ct_index *>t.in_idx, hash)


cdef inline uint32_t ct_peek_out_i(conntab *t, uint32_t hash) noexcept nogil:
    return _ct_peek(<ct_index *>t.out_idx, hash)


# Lookups: the settled index probed inline with the compare of its direction (small enough for
# the C compiler to inline into a packet loop); while an index migrates, the general lookup.
cdef inline uint32_t ct_lookup_in_i(conntab *t, const conn_key *k) noexcept nogil:
    cdef ct_index *ix = <ct_index *>t.in_idx
    cdef uint64_t mask = ix.mask, i = k.hash & mask, w
    cdef uint64_t *s = ix.s
    if ix.os != NULL:
        return ct_lookup_in(t, k)
    while True:
        w = s[i]
        if w == 0:
            return CONN_NONE
        if <uint32_t>w == k.hash and _ct_in_eq(t, <uint32_t>(w >> 32), k):
            return <uint32_t>(w >> 32)
        i = (i + 1) & mask


cdef inline uint32_t ct_lookup_out_i(conntab *t, const conn_key *k) noexcept nogil:
    cdef ct_index *ix = <ct_index *>t.out_idx
    cdef uint64_t mask = ix.mask, i = k.hash & mask, w
    cdef uint64_t *s = ix.s
    if ix.os != NULL:
        return ct_lookup_out(t, k)
    while True:
        w = s[i]
        if w == 0:
            return CONN_NONE
        if <uint32_t>w == k.hash and _ct_out_eq(t, <uint32_t>(w >> 32), k):
            return <uint32_t>(w >> 32)
        i = (i + 1) & mask
