# cython: language_level=3
"""Connection table: slab of entries, two open-addressing indexes, a timer wheel.

Layout
------
* Slab: ``max_entries`` fixed 80-byte ``conn_entry`` records reserved once with
  ``mmap(MAP_NORESERVE)``; an entry id is its slab index and never moves, so pointers stay
  valid. Released ids go on a LIFO free list (threaded through ``tnext``); ``serial`` grows
  by one per allocation and is never reused.
* Index: an array of 8-byte slots, ``(id << 32) | signature``. The signature is 32 bits of
  the key hash with bit 31 forced on, so a zero word is an empty slot and a live slot is
  never zero; a slot's home is ``signature & mask``. Linear probing, backward-shift
  deletion, growth when the load would pass 0.7.
* Growth is incremental. The old array stays; a sweep moves ``MIG_STEP`` old slots into
  the new array (rehashed from the stored signature alone) per mutating index operation.
  The sweep starts at an empty slot E and runs cyclically from there, so no probe sequence
  crosses from the swept part into the rest: a probe in the old array whose home was
  already swept starts at the sweep cursor instead, and every probe ends at the latest at
  E, which stays empty. Deletions in the old array leave a tombstone. Swept pages of the
  old array go back to the kernel as the sweep advances, and fresh keys whose old home is
  not swept yet go into the old array (while it has room and its load stays <= 0.7), so
  the new array is only written where the sweep has been: memory grows smoothly instead of
  doubling at once. Lookups search both arrays.
* Keys: "newest wins". Hashing an entry whose key equals a hashed entry's key takes over
  that slot. In the in index the displaced entry loses ``XF_IN_HASHED`` but stays allocated.
  In the out index it stays hashed, hidden: two NAT entries can share a reply tuple (a
  fwmark or port-0 service with a fixed server port: client:p -> VIP:80 and -> VIP:443 both
  become client:p <-> RS:8080), and the kernel keeps both in its hash chain, newest first
  (ip_vs_conn_hash adds at the head), so a reply finds the older one again once the newer
  is gone. The index holds the newest id of a key; the hidden ones go to a small side table
  (``ct_index.sh``: linear probing on the signature, several per key, each with the order
  it was hidden in). Unhashing the id the index holds puts back the hidden entry of that
  key hidden last, which is the most recently hashed one left: the kernel's next in chain.
  Nothing of this runs while no entry is hidden (one counter test per out unhash); the
  lookups never see the side table.
* Timers: a six-level hierarchical wheel (levels of 256 buckets, tick = 2**20 ns, level of
  an entry = highest byte where its tick differs from the wheel cursor) with intrusive FIFO
  lists through ``tnext``/``tprev``, plus a binary heap ("ready set") holding the entries
  whose tick the cursor has reached. Moving a deadline later leaves the entry where it is
  (O(1)); the wheel re-files it when its bucket comes up. Moving it earlier re-files it at
  once. Due entries come out of the heap ordered by (deadline, serial): equal deadlines pop
  oldest connection first. (Arming order would need a per-entry arming counter, which the
  80-byte entry has no room for; serial order is deterministic and easy to model.)
  Time jumps cost one step per non-empty bucket, never one per elapsed tick.
  The wheel's cursor runs at most TW_HORIZON (~17 s) ahead of the latest ``now`` given to
  ct_timer_pop, so the heap only ever holds entries due within that window.

Contracts beyond the .pxd comments
----------------------------------
* ct_alloc: the entry is zeroed except XF_USED, the serial, and dest = control = CONN_NONE.
* ct_lookup_in / ct_lookup_out / ct_peek_in / ct_prefetch_*: ``k.hash`` (or ``hash``) must
  come from ct_key_hash. The key fields of a hashed entry must not change: unhash, change,
  hash again (a changed key is still removed, by a full scan, and counted as "lost").
* ct_hash_in / ct_hash_out return 0, or -1 when the id is not a live entry, is already in
  that index, has no dest address (out), or is a template (out: templates never answer
  replies).
* ct_timer_next returns INT64_MAX when nothing is armed, else a value never later than the
  earliest deadline, equal to it whenever that deadline is within TW_HORIZON of the latest
  ct_timer_pop time, and greater than ``now`` right after ct_timer_pop(t, now) returned
  CONN_NONE. So ``while ct_timer_next(t) <= now: id = ct_timer_pop(t, now); if id ==
  CONN_NONE: break`` is exact and O(1) per packet when nothing is due. (A deadline of
  INT64_MAX itself is indistinguishable from "nothing armed".)
* ct_timer_pop leaves deadline_ns in the entry (the time it fired for).
* Inline variants of the per-packet functions (ct_key_hash_i, ct_lookup_in_i, ...,
  ct_timer_set_i) are in the .pxd for other modules.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, INT64_MAX, INT64_MIN
from libc.stdlib cimport calloc, free
from libc.string cimport memset, memcpy
from posix.mman cimport (mmap, munmap, madvise, PROT_READ, PROT_WRITE, MAP_PRIVATE,
                         MAP_ANONYMOUS, MAP_NORESERVE, MAP_FAILED, MADV_HUGEPAGE, MADV_DONTNEED)

import numpy as np

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <fcntl.h>
    #include <unistd.h>
    #include <sys/mman.h>

    static inline int ct_clz64(uint64_t x) { return __builtin_clzll(x); }
    static inline int ct_ctz64(uint64_t x) { return __builtin_ctzll(x); }
    static inline uint64_t ct_page_size(void) { return (uint64_t)sysconf(_SC_PAGESIZE); }
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23
    #endif
    /* Commit [p, p + n) now: MADV_POPULATE_WRITE (Linux 5.14), else a write of what each page
       holds (untouched anonymous memory reads as zero, so nothing changes). */
    static inline void ct_populate(void *p, uint64_t n) {
        uint64_t ps = ct_page_size(), i;
        volatile unsigned char *c = (volatile unsigned char *)p;
        if (madvise(p, n, MADV_POPULATE_WRITE) == 0) return;
        for (i = 0; i < n; i += ps) c[i] = c[i];
    }
    /* Anonymous zeroed memory, reserved without commitment; 2 MiB aligned when big so
       huge pages can back all of it. bytes: a multiple of the page size. */
    static inline void *ct_map(uint64_t bytes) {
        const uint64_t huge = 2u << 20;
        uint64_t total = bytes >= huge ? bytes + huge : bytes, a, tail;
        char *p = mmap(NULL, total, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return NULL;
        if (total == bytes) return p;
        a = ((uint64_t)p + huge - 1) & ~(huge - 1);
        if (a > (uint64_t)p) munmap(p, a - (uint64_t)p);
        tail = (uint64_t)p + total - (a + bytes);
        if (tail) munmap((char *)(a + bytes), tail);
        return (void *)a;
    }
    /* Bytes of [p, p + len) backed by memory of this process (page granular): pages that
       are present and exclusively mapped in /proc/self/pagemap, so pages that were only
       read (mapped to the shared zero page) do not count. Falls back to mincore. */
    static uint64_t ct_resident(void *p, uint64_t len) {
        uint64_t ps = ct_page_size(), start = (uint64_t)p & ~(ps - 1), end = (uint64_t)p + len;
        uint64_t npages = (end - start + ps - 1) / ps, res = 0, i, j, chunk;
        uint64_t ent[512];
        unsigned char vec[512];
        int fd = open("/proc/self/pagemap", O_RDONLY);
        for (i = 0; i < npages; i += chunk) {
            chunk = npages - i < 512 ? npages - i : 512;
            if (fd >= 0) {
                ssize_t got = pread(fd, ent, chunk * 8, (off_t)((start / ps + i) * 8));
                if (got != (ssize_t)(chunk * 8)) { close(fd); fd = -1; i = 0; res = 0; chunk = 0; continue; }
                for (j = 0; j < chunk; j++)
                    res += ((ent[j] >> 63) & 1) && ((ent[j] >> 56) & 1);
            } else {
                if (mincore((void *)(start + i * ps), chunk * ps, vec) != 0) return 0;
                for (j = 0; j < chunk; j++) res += vec[j] & 1;
            }
        }
        if (fd >= 0) close(fd);
        return res * ps;
    }
    """
    int ct_clz64(uint64_t x) noexcept nogil
    int ct_ctz64(uint64_t x) noexcept nogil
    uint64_t ct_page_size() noexcept nogil
    void *ct_map(uint64_t nbytes) noexcept nogil
    uint64_t ct_resident(void *p, uint64_t nbytes) noexcept nogil
    void ct_populate(void *p, uint64_t nbytes) noexcept nogil


# ---- constants ----------------------------------------------------------------------------
cdef enum:
    MIN_SLOTS = 16
    MIG_STEP = 64                   # old slots moved per mutating index operation
    TW_SHIFT = 20                   # timer tick = 2**20 ns (~1.05 ms)
    TW_BITS = 8
    TW_SIZE = 256

cdef uint64_t TOMB = (<uint64_t>1) << 32      # sig 0, id 1: deleted slot in a migrating old array
cdef uint32_t TP_HEAD = 0xFFFF0000u            # tprev/tnext of a list end: TP_HEAD | bucket
cdef uint32_t MAX_IDS = 0xFFFF0000u            # ids must stay below the tags
cdef uint64_t TICK_BIAS = (<uint64_t>1) << 63
cdef int64_t TW_HORIZON = (<int64_t>1) << 34   # the wheel may run this far (~17 s) ahead of the last pop time
cdef uint64_t RELEASE_CHUNK = 1 << 14          # swept old-array pages are released in 16 KiB steps
cdef uint64_t HUGE_PAGE = 2 << 20
cdef uint64_t HUGE_INDEX = 16 << 20            # in-index arrays from this size use huge pages
cdef uint64_t HUGE_INDEX_OUT = 128 << 20       # out-index arrays from this size






# ---- small helpers ------------------------------------------------------------------------
cdef inline uint64_t tick_of(int64_t d) noexcept nogil:
    return ((<uint64_t>d) ^ TICK_BIAS) >> TW_SHIFT


cdef inline int64_t tick_start_ns(uint64_t tk) noexcept nogil:
    return <int64_t>((tk << TW_SHIFT) ^ TICK_BIAS)


cdef inline uint64_t round_up(uint64_t x, uint64_t a) noexcept nogil:
    return (x + a - 1) & ~(a - 1)


cdef inline bint entry_ok(conntab *t, uint32_t id) noexcept nogil:
    return id < t.hwm and (t.entries[id].xflags & XF_USED) != 0


cdef uint64_t *arr_new(uint64_t nslots, int out) noexcept nogil:
    # Zero pages from the kernel are empty slots: nothing to initialise, and untouched
    # parts of a fresh array cost no memory. Huge pages only for big arrays: a migrating
    # array is committed in 2 MiB steps, which must stay small next to it. The in index,
    # which every packet reads, from 16 MiB (tables past ~730K connections): its TLB misses
    # cost ~2-3 ns per packet at 1M connections. The out index from 128 MiB: with both from
    # 16 MiB, a NAT table's doubling at ~745K peaks at 132 B per connection (this way: 125 B;
    # both from 128 MiB: 124.5 B).
    cdef uint64_t nbytes = round_up(nslots * 8, ct_page_size())
    cdef void *p = ct_map(nbytes)
    if p != NULL and nbytes >= (HUGE_INDEX_OUT if out else HUGE_INDEX):
        madvise(p, nbytes, MADV_HUGEPAGE)
    return <uint64_t *>p


cdef void arr_free(uint64_t *a, uint64_t nslots) noexcept nogil:
    if a != NULL:
        munmap(a, round_up(nslots * 8, ct_page_size()))


# ---- keys ---------------------------------------------------------------------------------
cdef void ct_key_hash(conntab *t, conn_key *k) noexcept nogil:
    ct_key_hash_i(t, k)


cdef void ct_key_in_of(conntab *t, uint32_t id, conn_key *k) noexcept nogil:
    cdef conn_entry *e = &t.entries[id]
    memcpy(k.a, e.caddr, 16)
    memcpy(k.b, e.vaddr, 16)
    k.pa = e.cport
    k.pb = e.vport
    k.proto = e.proto
    k.af = e.af
    k.is_template = 1 if (e.flags & CF_TEMPLATE) else 0
    k._pad = 0
    ct_key_hash(t, k)


cdef bint key_out_of(conntab *t, uint32_t id, conn_key *k) noexcept nogil:
    cdef conn_entry *e = &t.entries[id]
    cdef const uint8_t *da = _ct_dest_addr(t, e.dest)
    if da == NULL:
        return False
    memcpy(k.a, da, 16)
    memcpy(k.b, e.caddr, 16)
    k.pa = e.dport
    k.pb = e.cport
    k.proto = e.proto
    k.af = e.af
    k.is_template = 0
    k._pad = 0
    ct_key_hash(t, k)
    return True


# ---- index: probing -----------------------------------------------------------------------
# Put a word into the first empty slot of s from its home (no key comparison).
cdef inline void place_cur(ct_index *ix, uint64_t w) noexcept nogil:
    cdef uint64_t mask = ix.mask, i = (<uint32_t>w) & mask
    while ix.s[i] != 0:
        i = (i + 1) & mask
    ix.s[i] = w


cdef void delete_cur_at(ct_index *ix, uint64_t i) noexcept nogil:
    # Backward-shift deletion: pull later members of the cluster into the hole when their
    # home does not lie cyclically in (hole, position].
    cdef uint64_t mask = ix.mask, j = i, w, home
    cdef uint64_t *s = ix.s
    while True:
        j = (j + 1) & mask
        w = s[j]
        if w == 0:
            break
        home = (<uint32_t>w) & mask
        if ((j - home) & mask) >= ((j - i) & mask):
            s[i] = w
            i = j
    s[i] = 0


cdef void migrate_finish(ct_index *ix) noexcept nogil:
    arr_free(ix.os, ix.omask + 1)
    ix.os = NULL
    ix.omask = 0
    ix.on = 0
    ix.ot = 0
    ix.cursor = 0
    ix.rel = 0
    ix.relb = 0
    ix.oreleased = 0
    ix.ostart = 0
    ix.nfall = 0


# Give back old-array bytes [lo, hi) (page aligned) to the kernel.
cdef void release_bytes(ct_index *ix, uint64_t lo, uint64_t hi) noexcept nogil:
    if hi > lo:
        madvise(<uint8_t *>ix.os + lo, hi - lo, MADV_DONTNEED)
        ix.oreleased += hi - lo


cdef void migrate_step(ct_index *ix, uint64_t nslots) noexcept nogil:
    cdef uint64_t w, end, p, size, a, b, ps
    if ix.os == NULL:
        return
    size = ix.omask + 1
    end = ix.cursor + nslots
    if end > size:
        end = size
    while ix.cursor < end:
        p = (ix.ostart + ix.cursor) & ix.omask
        w = ix.os[p]
        if w == TOMB:
            ix.ot -= 1
        elif w != 0:
            place_cur(ix, w)
            ix.n += 1
            ix.on -= 1
        ix.cursor += 1
    if ix.cursor >= size:
        migrate_finish(ix)
        return
    # swept pages go back to the kernel: [ostart, size) first, then the wrapped [0, ostart)
    ps = ct_page_size()
    if size * 8 < ps:
        return
    a = ix.ostart + ix.cursor
    b = (a if a < size else size) * 8
    if b < size * 8:
        b &= ~(ps - 1)
    if b >= ix.rel + RELEASE_CHUNK or (b == size * 8 and b > ix.rel):
        release_bytes(ix, ix.rel, b)
        ix.rel = b
    if a > size:
        b = ((a - size) * 8) & ~(ps - 1)
        if b >= ix.relb + RELEASE_CHUNK:
            release_bytes(ix, ix.relb, b)
            ix.relb = b


cdef inline bint over_grow_threshold(uint64_t count, uint64_t nslots) noexcept nogil:
    # grow when the load would pass 0.7 (the old array takes no key beyond that while
    # migrating, and the new one starts at 0.35)
    return count * 10 > nslots * 7


cdef void start_growth(ct_index *ix) noexcept nogil:
    cdef uint64_t nslots = (ix.mask + 1) * 2
    cdef uint64_t *a
    if ix.os != NULL:           # cannot happen with MIG_STEP >= 4; finish the sweep first
        migrate_step(ix, ix.omask + 1)
    a = arr_new(nslots, ix.out)
    if a == NULL:
        ix.grow_fail += 1
        return
    ix.os = ix.s
    ix.omask = ix.mask
    ix.on = ix.n
    ix.ot = 0
    ix.cursor = 0
    ix.rel = 0
    ix.oreleased = 0
    ix.ostart = 0
    while ix.os[ix.ostart] != 0:        # load <= 0.7: an empty slot exists
        ix.ostart += 1
    ix.rel = round_up(ix.ostart * 8 + 8, ct_page_size())   # (the page holding ostart stays)
    ix.relb = 0
    ix.s = a
    ix.mask = nslots - 1
    ix.n = 0
    ix.growths += 1
    migrate_step(ix, MIG_STEP)          # room in the old array for the key that triggered this


cdef inline void unflag(conntab *t, ct_index *ix, uint32_t id) noexcept nogil:
    t.entries[id].xflags &= ~(XF_OUT_HASHED if ix.out else XF_IN_HASHED)


# ---- out index: entries hidden behind a newer one with the same key ------------------------
cdef enum:
    SH_MIN = 16


cdef inline void sh_place(ct_shadow *a, uint64_t mask, uint64_t w, uint64_t seq) noexcept nogil:
    cdef uint64_t i = (<uint32_t>w) & mask
    while a[i].w != 0:
        i = (i + 1) & mask
    a[i].w = w
    a[i].seq = seq


cdef int sh_resize(ct_index *ix, uint64_t nslots) noexcept nogil:
    cdef ct_shadow *a = <ct_shadow *>calloc(nslots, sizeof(ct_shadow))
    cdef uint64_t i
    if a == NULL:
        return -1
    if ix.sh != NULL:
        for i in range(ix.sh_mask + 1):
            if ix.sh[i].w != 0:
                sh_place(a, nslots - 1, ix.sh[i].w, ix.sh[i].seq)
        free(ix.sh)
    ix.sh = a
    ix.sh_mask = nslots - 1
    return 0


# Hide word w (id << 32 | signature of its key) as the newest hidden entry of its key.
cdef int sh_push(ct_index *ix, uint64_t w) noexcept nogil:
    cdef uint64_t size = ix.sh_mask + 1 if ix.sh != NULL else 0
    if (ix.sh_n + 1) * 2 > size:
        if sh_resize(ix, size * 2 if size else SH_MIN) != 0:
            return -1
    ix.sh_seq += 1
    sh_place(ix.sh, ix.sh_mask, w, ix.sh_seq)
    ix.sh_n += 1
    return 0


cdef void sh_delete_at(ct_index *ix, uint64_t i) noexcept nogil:
    # backward-shift deletion, as delete_cur_at
    cdef uint64_t mask = ix.sh_mask, j = i, home
    cdef ct_shadow *a = ix.sh
    while True:
        j = (j + 1) & mask
        if a[j].w == 0:
            break
        home = (<uint32_t>a[j].w) & mask
        if ((j - home) & mask) >= ((j - i) & mask):
            a[i] = a[j]
            i = j
    a[i].w = 0
    a[i].seq = 0
    ix.sh_n -= 1
    if ix.sh_n == 0:
        free(ix.sh)
        ix.sh = NULL
        ix.sh_mask = 0


# Remove hidden word w. True if it was there.
cdef bint sh_remove(ct_index *ix, uint64_t w) noexcept nogil:
    cdef uint64_t i
    if ix.sh == NULL:
        return False
    i = (<uint32_t>w) & ix.sh_mask
    while ix.sh[i].w != 0:
        if ix.sh[i].w == w:
            sh_delete_at(ix, i)
            return True
        i = (i + 1) & ix.sh_mask
    return False


# Take out the entry of key k hidden last; CONN_NONE if none.
cdef uint32_t sh_pop_newest(conntab *t, ct_index *ix, const conn_key *k) noexcept nogil:
    cdef uint64_t i, best = 0, best_seq = 0
    cdef bint found = False
    cdef uint32_t id
    if ix.sh == NULL:
        return CONN_NONE
    i = k.hash & ix.sh_mask
    while ix.sh[i].w != 0:
        if <uint32_t>ix.sh[i].w == k.hash and _ct_out_eq(t, <uint32_t>(ix.sh[i].w >> 32), k) \
                and (not found or ix.sh[i].seq > best_seq):
            found = True
            best = i
            best_seq = ix.sh[i].seq
        i = (i + 1) & ix.sh_mask
    if not found:
        return CONN_NONE
    id = <uint32_t>(ix.sh[best].w >> 32)
    sh_delete_at(ix, best)
    return id


# The entry in slot word `old` gives its slot to a newer entry with the same key.
cdef inline void displace(conntab *t, ct_index *ix, uint64_t old) noexcept nogil:
    if ix.out:
        if sh_push(ix, old) == 0:
            return
        ix.sh_fail += 1
    unflag(t, ix, <uint32_t>(old >> 32))


# Insert id under key k (k.hash filled). 0: inserted, -1: no room.
cdef int idx_insert(conntab *t, ct_index *ix, uint32_t id, const conn_key *k) noexcept nogil:
    cdef uint64_t w = ((<uint64_t>id) << 32) | k.hash
    cdef uint64_t i, mask, v
    cdef int64_t p, tomb
    cdef bint unswept
    migrate_step(ix, MIG_STEP)
    unswept = ix.os != NULL and not _ct_old_swept(ix, k.hash & ix.omask)
    # newest wins: an equal key hands over its slot
    if not unswept or ix.nfall:
        p = _ct_probe_cur(t, ix, k)
        if p >= 0:
            displace(t, ix, ix.s[p])
            ix.s[p] = w
            return 0
    if ix.os != NULL:
        p = _ct_probe_old(t, ix, k)
        if p >= 0:
            displace(t, ix, ix.os[p])
            ix.os[p] = w
            return 0
    elif over_grow_threshold(ix.n + 1, ix.mask + 1):
        start_growth(ix)
    unswept = ix.os != NULL and not _ct_old_swept(ix, k.hash & ix.omask)
    if unswept and (ix.on + ix.ot + 1) * 10 <= (ix.omask + 1) * 7:
        # home not swept yet: keep the key in the old array so the new one fills in sweep
        # order (unless the free slot would be the sweep's start, which must stay empty)
        i = k.hash & ix.omask
        while True:
            v = ix.os[i]
            if v == 0 or v == TOMB:
                break
            i = _ct_old_next(ix, i)
        if i != ix.ostart:
            if v == TOMB:
                ix.ot -= 1
            ix.os[i] = w
            ix.on += 1
            return 0
    if ix.n + 1 > ix.mask:      # growth impossible (no memory) and full
        return -1
    place_cur(ix, w)
    ix.n += 1
    if unswept:
        ix.nfall += 1
    return 0


cdef bint remove_cur(ct_index *ix, uint64_t w) noexcept nogil:
    cdef uint64_t mask = ix.mask, i = (<uint32_t>w) & mask, v
    while True:
        v = ix.s[i]
        if v == 0:
            return False
        if v == w:
            delete_cur_at(ix, i)
            ix.n -= 1
            return True
        i = (i + 1) & mask


cdef bint remove_old(ct_index *ix, uint64_t w) noexcept nogil:
    cdef uint64_t i = _ct_old_start(ix, <uint32_t>w), v
    while True:
        v = ix.os[i]
        if v == 0:
            return False
        if v == w:
            ix.os[i] = TOMB
            ix.on -= 1
            ix.ot += 1
            return True
        i = _ct_old_next(ix, i)


# Remove the slot of id (signature sig). True if found.
cdef bint idx_remove(ct_index *ix, uint32_t id, uint32_t sig) noexcept nogil:
    cdef uint64_t w = ((<uint64_t>id) << 32) | sig
    cdef bint found
    if ix.os == NULL:
        found = remove_cur(ix, w)
    elif _ct_old_swept(ix, sig & ix.omask):
        found = remove_cur(ix, w) or remove_old(ix, w)
    else:
        found = remove_old(ix, w) or (ix.nfall != 0 and remove_cur(ix, w))
    migrate_step(ix, MIG_STEP)
    return found


# Last resort when the key of a hashed entry was changed in place: find the id anywhere.
cdef bint idx_remove_scan(ct_index *ix, uint32_t id) noexcept nogil:
    cdef uint64_t i, p
    for i in range(ix.mask + 1):
        if ix.s[i] != 0 and <uint32_t>(ix.s[i] >> 32) == id:
            delete_cur_at(ix, i)
            ix.n -= 1
            return True
    if ix.os != NULL:
        for i in range(ix.cursor, ix.omask + 1):
            p = (ix.ostart + i) & ix.omask
            if ix.os[p] != 0 and ix.os[p] != TOMB and <uint32_t>(ix.os[p] >> 32) == id:
                ix.os[p] = TOMB
                ix.on -= 1
                ix.ot += 1
                return True
    if ix.sh != NULL:
        for i in range(ix.sh_mask + 1):
            if ix.sh[i].w != 0 and <uint32_t>(ix.sh[i].w >> 32) == id:
                sh_delete_at(ix, i)
                return True
    return False


cdef ct_index *idx_new(uint64_t nslots, int out) noexcept nogil:
    cdef ct_index *ix = <ct_index *>calloc(1, sizeof(ct_index))
    if ix == NULL:
        return NULL
    ix.s = arr_new(nslots, out)
    if ix.s == NULL:
        free(ix)
        return NULL
    ix.mask = nslots - 1
    ix.out = out
    return ix


cdef void idx_free(ct_index *ix) noexcept nogil:
    if ix == NULL:
        return
    arr_free(ix.s, ix.mask + 1)
    arr_free(ix.os, ix.omask + 1)
    free(ix.sh)
    free(ix)


cdef uint64_t idx_bytes(ct_index *ix) noexcept nogil:
    # Memory the index holds: a settled array in full; while migrating, the old array minus
    # its released pages plus the swept regions of the new array (which is only written
    # where the sweep has been, [E, E + c) and [S + E, S + E + c), plus a probe spill of one
    # page; huge pages for big arrays).
    cdef uint64_t ps = ct_page_size(), part
    cdef uint64_t sh = (ix.sh_mask + 1) * sizeof(ct_shadow) if ix.sh != NULL else 0
    if ix.os == NULL:
        return round_up((ix.mask + 1) * 8, ps) + sh
    if (ix.mask + 1) * 8 >= (HUGE_INDEX_OUT if ix.out else HUGE_INDEX):
        ps = HUGE_PAGE              # the new array is committed in huge pages
    part = round_up(ix.cursor * 8, ps) + ps
    if 2 * part > (ix.mask + 1) * 8:
        part = (ix.mask + 1) * 4
    return round_up((ix.omask + 1) * 8, ps) - ix.oreleased + 2 * part + sh


# ---- table lifecycle and entries ----------------------------------------------------------
cdef conntab *ct_new(uint64_t max_entries, uint32_t initial_slots, uint64_t seed) noexcept nogil:
    cdef conntab *t
    cdef uint64_t nslots = MIN_SLOTS
    cdef ct_timers *w
    cdef int i
    if max_entries == 0 or max_entries >= MAX_IDS:
        return NULL
    while nslots < initial_slots:
        nslots <<= 1
    t = <conntab *>calloc(1, sizeof(conntab))
    if t == NULL:
        return NULL
    t.max_entries = max_entries
    t.free_head = CONN_NONE
    t.next_serial = 1
    t.seed = seed
    ct_hash_keys(seed, t.hkeys)
    t.entries = <conn_entry *>ct_map(round_up(max_entries * sizeof(conn_entry), ct_page_size()))
    t.in_idx = idx_new(nslots, 0)
    t.out_idx = idx_new(nslots, 1)
    w = <ct_timers *>calloc(1, sizeof(ct_timers))
    t.timers = w
    if w != NULL:
        w.hcap = 2 * max_entries + 64
        w.heap = <heap_el *>ct_map(round_up(w.hcap * sizeof(heap_el), ct_page_size()))
    if t.entries == NULL or t.in_idx == NULL or t.out_idx == NULL or w == NULL or w.heap == NULL:
        ct_free_table(t)
        return NULL
    if max_entries * sizeof(conn_entry) >= (2u << 20):
        madvise(t.entries, round_up(max_entries * sizeof(conn_entry), ct_page_size()), MADV_HUGEPAGE)
    for i in range(CT_TW_BUCKETS):
        w.b[i].head = CONN_NONE
        w.b[i].tail = CONN_NONE
    w.next_ns = INT64_MAX
    w.next_valid = 1
    w.next_exact = 1
    w.last_now = INT64_MIN
    return t


cdef void ct_free_table(conntab *t) noexcept nogil:
    cdef ct_timers *w
    if t == NULL:
        return
    if t.entries != NULL:
        munmap(t.entries, round_up(t.max_entries * sizeof(conn_entry), ct_page_size()))
    idx_free(<ct_index *>t.in_idx)
    idx_free(<ct_index *>t.out_idx)
    w = <ct_timers *>t.timers
    if w != NULL:
        if w.heap != NULL:
            munmap(w.heap, round_up(w.hcap * sizeof(heap_el), ct_page_size()))
        free(w)
    free(t)


cdef uint32_t ct_alloc(conntab *t) noexcept nogil:
    cdef uint32_t id
    cdef conn_entry *e
    if t.free_head != CONN_NONE:
        id = t.free_head
        t.free_head = t.entries[id].tnext
        # released ids come back in expiry order, scattered over the slab: fetch the next
        # one's entry now, so that the next new connection does not wait for it
        if t.free_head != CONN_NONE:
            ct_prefetch_entry_i(t, t.free_head)
    elif t.hwm < t.max_entries:
        id = t.hwm
        t.hwm += 1
    else:
        return CONN_NONE
    e = &t.entries[id]
    memset(e, 0, sizeof(conn_entry))
    e.xflags = XF_USED
    e.dest = CONN_NONE
    e.control = CONN_NONE
    e.tnext = CONN_NONE
    e.tprev = CONN_NONE
    e.serial = t.next_serial
    t.next_serial += 1
    t.live += 1
    return id


cdef void ct_release(conntab *t, uint32_t id) noexcept nogil:
    cdef conn_entry *e
    if not entry_ok(t, id):
        return
    ct_unhash(t, id)
    ct_timer_del(t, id)
    e = &t.entries[id]
    e.xflags = 0
    e.tprev = CONN_NONE
    e.tnext = t.free_head
    t.free_head = id
    t.live -= 1


# ---- index API ----------------------------------------------------------------------------
cdef void ct_prefetch_in(conntab *t, uint32_t hash) noexcept nogil:
    ct_prefetch_in_i(t, hash)


cdef void ct_prefetch_out(conntab *t, uint32_t hash) noexcept nogil:
    ct_prefetch_out_i(t, hash)


cdef void ct_prefetch_entry(conntab *t, uint32_t id) noexcept nogil:
    ct_prefetch_entry_i(t, id)


cdef uint32_t ct_peek_in(conntab *t, uint32_t hash) noexcept nogil:
    return ct_peek_in_i(t, hash)


cdef int ct_hash_in(conntab *t, uint32_t id) noexcept nogil:
    cdef conn_key k
    if not entry_ok(t, id) or (t.entries[id].xflags & XF_IN_HASHED):
        return -1
    ct_key_in_of(t, id, &k)
    if idx_insert(t, <ct_index *>t.in_idx, id, &k) != 0:
        return -1
    t.entries[id].xflags |= XF_IN_HASHED
    return 0


cdef int ct_hash_out(conntab *t, uint32_t id) noexcept nogil:
    cdef conn_key k
    if not entry_ok(t, id) or (t.entries[id].xflags & XF_OUT_HASHED) or \
            (t.entries[id].flags & CF_TEMPLATE):
        return -1
    if not key_out_of(t, id, &k):
        return -1
    if idx_insert(t, <ct_index *>t.out_idx, id, &k) != 0:
        return -1
    t.entries[id].xflags |= XF_OUT_HASHED
    return 0


cdef void ct_unhash(conntab *t, uint32_t id) noexcept nogil:
    cdef conn_key k
    cdef conn_entry *e
    cdef ct_index *ix
    if not entry_ok(t, id):
        return
    e = &t.entries[id]
    if e.xflags & XF_IN_HASHED:
        ix = <ct_index *>t.in_idx
        ct_key_in_of(t, id, &k)
        if not idx_remove(ix, id, k.hash):
            ix.lost += 1
            idx_remove_scan(ix, id)
        e.xflags &= ~XF_IN_HASHED
    if e.xflags & XF_OUT_HASHED:
        ix = <ct_index *>t.out_idx
        e.xflags &= ~XF_OUT_HASHED
        if not key_out_of(t, id, &k):
            ix.lost += 1
            idx_remove_scan(ix, id)
        elif idx_remove(ix, id, k.hash):
            if ix.sh_n != 0:
                unhide_newest(t, ix, &k)
        elif not (ix.sh_n != 0 and sh_remove(ix, ((<uint64_t>id) << 32) | k.hash)):
            ix.lost += 1
            idx_remove_scan(ix, id)


cdef void unhide_newest(conntab *t, ct_index *ix, const conn_key *k) noexcept nogil:
    # the index no longer holds key k: the entry of k hidden last takes it (the kernel's
    # next entry in chain order)
    cdef uint32_t id = sh_pop_newest(t, ix, k)
    if id != CONN_NONE and idx_insert(t, ix, id, k) != 0:
        unflag(t, ix, id)           # no room (growth impossible): it can no longer be found


cdef uint32_t ct_lookup_in(conntab *t, const conn_key *k) noexcept nogil:
    # the general lookup (both arrays while migrating); ct_lookup_in_i calls it then
    return _ct_idx_lookup(t, <ct_index *>t.in_idx, k)


cdef uint32_t ct_lookup_out(conntab *t, const conn_key *k) noexcept nogil:
    return _ct_idx_lookup(t, <ct_index *>t.out_idx, k)


# Bulk lookups run a rolling pipeline (as the engine's burst loop does): while key i is looked
# up, the slots of key i + PF_SLOT and the entry of key i + PF_ENTRY are being fetched. (Groups
# of 32 taken stage by stage were slower: each group starts by waiting for its first slots.)
cdef enum:
    PF_SLOT = 16
    PF_ENTRY = 8
    RING = 32                       # power of two > PF_SLOT (bench_lookup_state's key ring)
    RING_MASK = RING - 1


cdef void ct_lookup_in_bulk(conntab *t, conn_key *keys, uint32_t n, uint32_t *out) noexcept nogil:
    cdef uint32_t i, id
    for i in range(PF_SLOT if n > PF_SLOT else n):
        ct_key_hash_i(t, &keys[i])
        ct_prefetch_in_i(t, keys[i].hash)
    for i in range(PF_ENTRY if n > PF_ENTRY else n):
        id = ct_peek_in_i(t, keys[i].hash)
        if id != CONN_NONE:
            ct_prefetch_entry_i(t, id)
    for i in range(n):
        if i + PF_SLOT < n:
            ct_key_hash_i(t, &keys[i + PF_SLOT])
            ct_prefetch_in_i(t, keys[i + PF_SLOT].hash)
        if i + PF_ENTRY < n:
            id = ct_peek_in_i(t, keys[i + PF_ENTRY].hash)
            if id != CONN_NONE:
                ct_prefetch_entry_i(t, id)
        out[i] = ct_lookup_in_i(t, &keys[i])


# ---- timers -------------------------------------------------------------------------------
cdef inline bint is_tag(uint32_t x) noexcept nogil:
    return x >= TP_HEAD and x < CT_TP_READY


cdef inline void bit_set(ct_timers *w, uint32_t b) noexcept nogil:
    w.bits[b >> 8][(b >> 6) & 3] |= (<uint64_t>1) << (b & 63)


cdef inline void bit_clear(ct_timers *w, uint32_t b) noexcept nogil:
    w.bits[b >> 8][(b >> 6) & 3] &= ~((<uint64_t>1) << (b & 63))


cdef inline void tw_append(conntab *t, ct_timers *w, uint32_t id, uint32_t b) noexcept nogil:
    cdef conn_entry *e = &t.entries[id]
    cdef uint32_t tail = w.b[b].tail
    e.tnext = TP_HEAD | b
    if tail == CONN_NONE:
        e.tprev = TP_HEAD | b
        w.b[b].head = id
        bit_set(w, b)
    else:
        e.tprev = tail
        t.entries[tail].tnext = id
    w.b[b].tail = id


cdef inline void tw_unlink(conntab *t, ct_timers *w, uint32_t id) noexcept nogil:
    cdef conn_entry *e = &t.entries[id]
    cdef uint32_t p = e.tprev, n = e.tnext, b
    if is_tag(p):
        b = p - TP_HEAD
        if is_tag(n):
            w.b[b].head = CONN_NONE
            w.b[b].tail = CONN_NONE
            bit_clear(w, b)
        else:
            w.b[b].head = n
            t.entries[n].tprev = p
    else:
        t.entries[p].tnext = n
        if is_tag(n):
            w.b[n - TP_HEAD].tail = p
        else:
            t.entries[n].tprev = p
    e.tnext = CONN_NONE
    e.tprev = CONN_NONE


cdef inline bint heap_less(const heap_el *a, const heap_el *b) noexcept nogil:
    return a.deadline < b.deadline or (a.deadline == b.deadline and <int32_t>(a.serial - b.serial) < 0)


cdef void heap_sift_down(heap_el *h, uint64_t n, uint64_t i) noexcept nogil:
    cdef heap_el x = h[i]
    cdef uint64_t c
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and heap_less(&h[c + 1], &h[c]):
            c += 1
        if not heap_less(&h[c], &x):
            break
        h[i] = h[c]
        i = c
    h[i] = x


cdef inline bint heap_valid(conntab *t, const heap_el *el) noexcept nogil:
    cdef conn_entry *e = &t.entries[el.id]
    return ((e.xflags & (XF_USED | XF_TIMER)) == (XF_USED | XF_TIMER) and e.tprev == CT_TP_READY
            and e.deadline_ns == el.deadline and <uint32_t>e.serial == el.serial)


cdef void heap_compact(conntab *t, ct_timers *w) noexcept nogil:
    # Drop elements whose entry moved on (stale), then re-heapify.
    cdef uint64_t i, j = 0
    for i in range(w.hn):
        if heap_valid(t, &w.heap[i]):
            w.heap[j] = w.heap[i]
            j += 1
    w.hn = j
    if j > 1:
        i = j // 2
        while i > 0:
            i -= 1
            heap_sift_down(w.heap, j, i)


cdef void heap_push(conntab *t, ct_timers *w, uint32_t id) noexcept nogil:
    cdef conn_entry *e = &t.entries[id]
    cdef heap_el x
    cdef uint64_t i, p
    if w.hn >= w.hcap:
        heap_compact(t, w)
    x.deadline = e.deadline_ns
    x.serial = <uint32_t>e.serial
    x.id = id
    e.tprev = CT_TP_READY
    e.tnext = CONN_NONE
    i = w.hn
    w.hn += 1
    if w.hn > w.hhwm:
        w.hhwm = w.hn
    while i > 0:
        p = (i - 1) >> 1
        if not heap_less(&x, &w.heap[p]):
            break
        w.heap[i] = w.heap[p]
        i = p
    w.heap[i] = x


cdef inline void heap_pop_top(ct_timers *w) noexcept nogil:
    w.hn -= 1
    if w.hn > 0:
        w.heap[0] = w.heap[w.hn]
        heap_sift_down(w.heap, w.hn, 0)


# File an armed entry by its deadline: the ready heap if the cursor has reached its tick,
# else the wheel bucket of the highest byte where its tick differs from the cursor.
cdef void tw_file(conntab *t, ct_timers *w, uint32_t id) noexcept nogil:
    cdef uint64_t rt = tick_of(t.entries[id].deadline_ns), x
    cdef int lvl
    if rt <= w.cur:
        heap_push(t, w, id)
        return
    x = rt ^ w.cur
    lvl = (63 - ct_clz64(x)) >> 3
    tw_append(t, w, id, <uint32_t>(lvl * TW_SIZE + ((rt >> (lvl * TW_BITS)) & (TW_SIZE - 1))))


# First non-empty bucket in due order (level 0 first), or -1.
cdef inline int tw_first(ct_timers *w) noexcept nogil:
    cdef int lvl, q
    cdef uint64_t word
    for lvl in range(CT_TW_LEVELS):
        for q in range(4):
            word = w.bits[lvl][q]
            if word:
                return lvl * TW_SIZE + q * 64 + ct_ctz64(word)
    return -1


cdef inline uint64_t tw_window(ct_timers *w, int b) noexcept nogil:
    cdef int lvl = b >> 8
    cdef uint64_t idx = b & (TW_SIZE - 1)
    cdef uint64_t hi
    if lvl + 1 >= 8:
        hi = 0
    else:
        hi = w.cur & ~(((<uint64_t>1) << ((lvl + 1) * TW_BITS)) - 1)
    return hi | (idx << (lvl * TW_BITS))


# Move the cursor to bucket b's window and re-file its entries (down a level, into the
# heap, or -- for entries whose deadline moved later -- wherever they now belong).
cdef void tw_step(conntab *t, ct_timers *w, int b) noexcept nogil:
    cdef uint32_t id = w.b[b].head, nxt
    cdef uint64_t rt
    w.cur = tw_window(w, b)
    w.b[b].head = CONN_NONE
    w.b[b].tail = CONN_NONE
    bit_clear(w, b)
    w.cascaded += 1
    while not is_tag(id):
        nxt = t.entries[id].tnext
        rt = tick_of(t.entries[id].deadline_ns)
        if (rt >> ((b >> 8) * TW_BITS)) != (w.cur >> ((b >> 8) * TW_BITS)):
            w.refiled += 1
        tw_file(t, w, id)
        id = nxt


cdef inline int64_t sat_add(int64_t a, int64_t b) noexcept nogil:
    if a > INT64_MAX - b:
        return INT64_MAX
    return a + b


# Recompute the cached next deadline. On return either the heap top is a valid element
# and next_ns is its deadline (the exact earliest), or the heap is empty and next_ns is a
# lower bound beyond the horizon (last pop time + TW_HORIZON), or INT64_MAX if nothing is armed.
cdef void tw_refresh(conntab *t, ct_timers *w) noexcept nogil:
    cdef int b
    cdef uint64_t ws, lim = tick_of(sat_add(w.last_now, TW_HORIZON))
    while True:
        while w.hn > 0 and not heap_valid(t, &w.heap[0]):
            heap_pop_top(w)
        w.next_exact = 1
        if w.hn > 0:
            w.next_ns = w.heap[0].deadline
            break
        b = tw_first(w)
        if b < 0:
            w.next_ns = INT64_MAX
            break
        ws = tw_window(w, b)
        if ws > lim:
            w.next_ns = tick_start_ns(ws)
            w.next_exact = 0
            break
        tw_step(t, w, b)
    w.next_valid = 1


cdef void ct_timer_set(conntab *t, uint32_t id, int64_t deadline_ns) noexcept nogil:
    cdef ct_timers *w = <ct_timers *>t.timers
    cdef conn_entry *e
    cdef int64_t old
    cdef uint64_t rt
    if not entry_ok(t, id):
        return
    e = &t.entries[id]
    if e.xflags & XF_TIMER:
        old = e.deadline_ns
        if deadline_ns >= old and e.tprev != CT_TP_READY:
            e.deadline_ns = deadline_ns
            if old == w.next_ns:
                w.next_valid = 0
            return
        if deadline_ns == old:
            return
        if e.tprev != CT_TP_READY:
            tw_unlink(t, w, id)
        # (a heap element goes stale by itself: the entry's deadline no longer matches)
        if old == w.next_ns and deadline_ns > old:
            w.next_valid = 0
    else:
        e.xflags |= XF_TIMER
        w.armed += 1
        if w.armed == 1:
            # nothing else armed: drop stale heap elements and jump the wheel to just
            # before this deadline (or to the last pop time if that is earlier), so the
            # entry and later ones with the same deadline go into the wheel, not the heap
            w.hn = 0
            rt = tick_of(deadline_ns)
            w.cur = rt - 1 if rt > 0 else 0
            if w.last_now != INT64_MIN and tick_of(w.last_now) < w.cur:
                w.cur = tick_of(w.last_now)
            w.next_ns = INT64_MAX
            w.next_valid = 1
    e.deadline_ns = deadline_ns
    tw_file(t, w, id)
    if w.next_valid and deadline_ns <= w.next_ns:
        w.next_ns = deadline_ns
        w.next_exact = 1


cdef void ct_timer_del(conntab *t, uint32_t id) noexcept nogil:
    cdef ct_timers *w = <ct_timers *>t.timers
    cdef conn_entry *e
    if not entry_ok(t, id):
        return
    e = &t.entries[id]
    if not (e.xflags & XF_TIMER):
        return
    if e.tprev != CT_TP_READY:
        tw_unlink(t, w, id)
    e.tprev = CONN_NONE
    e.tnext = CONN_NONE
    e.xflags &= ~XF_TIMER
    w.armed -= 1
    if w.armed == 0:
        w.hn = 0
        w.next_ns = INT64_MAX
        w.next_valid = 1
        w.next_exact = 1
    elif e.deadline_ns == w.next_ns:
        w.next_valid = 0


cdef int64_t ct_timer_next(conntab *t) noexcept nogil:
    cdef ct_timers *w = <ct_timers *>t.timers
    if not w.next_valid:
        tw_refresh(t, w)
    return w.next_ns


cdef uint32_t ct_timer_pop(conntab *t, int64_t now_ns) noexcept nogil:
    cdef ct_timers *w = <ct_timers *>t.timers
    cdef uint32_t id
    cdef conn_entry *e
    if now_ns > w.last_now:
        w.last_now = now_ns
        # a lower bound from beyond the old horizon may now be improvable
        if w.next_valid and not w.next_exact and now_ns >= w.next_ns - TW_HORIZON:
            w.next_valid = 0
    if w.next_valid and w.next_ns > now_ns:
        return CONN_NONE
    if w.armed == 0:
        return CONN_NONE
    tw_refresh(t, w)
    if w.hn == 0 or w.next_ns > now_ns:
        return CONN_NONE
    id = w.heap[0].id
    heap_pop_top(w)
    e = &t.entries[id]
    e.xflags &= ~XF_TIMER
    e.tprev = CONN_NONE
    e.tnext = CONN_NONE
    w.armed -= 1
    if w.armed == 0:
        w.hn = 0
        w.next_ns = INT64_MAX
        w.next_valid = 1
        w.next_exact = 1
    else:
        w.next_valid = 0
    return id


cdef uint64_t ct_prefault(conntab *t, uint64_t n) noexcept nogil:
    # the first-touch cost of the first n entries' memory (the kernel zeroing fresh, often
    # huge, pages; in a VM the host backing them too: milliseconds) paid now, not by the
    # first packets. Returns the bytes committed.
    cdef uint64_t nbytes
    if n > t.max_entries:
        n = t.max_entries
    nbytes = round_up(n * sizeof(conn_entry), ct_page_size())
    if nbytes:
        ct_populate(t.entries, nbytes)
    return nbytes


cdef uint64_t ct_index_bytes(conntab *t) noexcept nogil:
    cdef ct_timers *w = <ct_timers *>t.timers
    return (idx_bytes(<ct_index *>t.in_idx) + idx_bytes(<ct_index *>t.out_idx) + sizeof(ct_timers)
            + round_up(w.hhwm * sizeof(heap_el), ct_page_size()))


# ---- Python wrapper -----------------------------------------------------------------------
import ipaddress as _ipaddress

KEY_SIZE = sizeof(conn_key)
ENTRY_SIZE = sizeof(conn_entry)
NONE_ID = 0xFFFFFFFF
TIMER_TICK_NS = 1 << TW_SHIFT
TIMER_HORIZON_NS = TW_HORIZON

# TCP step used by the benchmark helpers: the kernel's INPUT_ONLY table (DR entries before any
# reply), rows = event (syn, fin, ack, rst), columns = state NO ES SS SR FW TW CL CW LA LI SA,
# and the default timeouts per state in seconds.
cdef uint8_t BENCH_TCP[4][11]
BENCH_TCP[0][:] = [3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3]
BENCH_TCP[1][:] = [6, 4, 2, 5, 4, 5, 6, 7, 8, 9, 5]
BENCH_TCP[2][:] = [1, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1]
BENCH_TCP[3][:] = [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6]
cdef int64_t BENCH_TIMEOUT[11]
BENCH_TIMEOUT[:] = [2 * 10**9, 900 * 10**9, 120 * 10**9, 60 * 10**9, 120 * 10**9, 120 * 10**9,
                    10 * 10**9, 60 * 10**9, 30 * 10**9, 120 * 10**9, 120 * 10**9]


def addr16(addr):
    """A 16-byte address (IPv4 mapped ::ffff:a.b.c.d) from bytes (4 or 16), str or ipaddress."""
    if isinstance(addr, str):
        addr = _ipaddress.ip_address(addr)
    if isinstance(addr, _ipaddress.IPv4Address):
        addr = addr.packed
    elif isinstance(addr, _ipaddress.IPv6Address):
        addr = addr.packed
    b = bytes(addr)
    if len(b) == 4:
        return b"\0" * 10 + b"\xff\xff" + b
    if len(b) != 16:
        raise ValueError(f"address must be 4 or 16 bytes, got {len(b)}")
    return b


cdef int _fill_key(conn_key *k, proto, af, a, pa, b, pb, template) except -1:
    cdef bytes ab = addr16(a), bb = addr16(b)
    if af not in (4, 6):
        raise ValueError(f"af must be 4 or 6, got {af!r}")
    if not 0 <= proto <= 255:
        raise ValueError(f"proto out of range: {proto!r}")
    if not (0 <= pa <= 0xFFFF and 0 <= pb <= 0xFFFF):
        raise ValueError("port out of range")
    memcpy(k.a, <const char *>ab, 16)
    memcpy(k.b, <const char *>bb, 16)
    k.pa = pa
    k.pb = pb
    k.proto = proto
    k.af = af
    k.is_template = 1 if template else 0
    k._pad = 0
    k.hash = 0
    return 0


cdef uint32_t _live_id(conntab *t, id) except? 0xFFFFFFFF:
    if not (0 <= id < t.hwm) or not (t.entries[<uint32_t>id].xflags & XF_USED):
        raise KeyError(f"no live entry {id}")
    return <uint32_t>id


cdef _check_index(conntab *t, ct_index *ix, uint64_t n_flagged, uint8_t flag):
    cdef uint64_t i, j, w, cnt = 0, ocnt = 0, otomb = 0, size = ix.mask + 1
    cdef uint32_t id
    cdef conn_key k
    name = "out" if ix.out else "in"
    for i in range(size):
        w = ix.s[i]
        if w == 0:
            continue
        assert w != TOMB, f"{name}: tombstone in the current array"
        cnt += 1
        id = <uint32_t>(w >> 32)
        assert id < t.hwm and t.entries[id].xflags & flag, f"{name}: stale slot {i} -> {id}"
        if ix.out:
            key_out_of(t, id, &k)
        else:
            ct_key_in_of(t, id, &k)
        assert <uint32_t>w == k.hash, f"{name}: slot {i} signature differs from its entry's key"
    assert cnt == ix.n, f"{name}: {cnt} slots used, count says {ix.n}"
    assert ix.n * 10 <= size * 7, f"{name}: load {ix.n / size:.3f} > 0.7"
    if ix.os != NULL:
        assert ix.os[ix.ostart] == 0, f"{name}: sweep start slot written"
        for j in range(ix.cursor, ix.omask + 1):
            i = (ix.ostart + j) & ix.omask
            w = ix.os[i]
            if w == TOMB:
                otomb += 1
            elif w != 0:
                ocnt += 1
                id = <uint32_t>(w >> 32)
                assert id < t.hwm and t.entries[id].xflags & flag, f"{name}: stale old slot {i}"
        assert ocnt == ix.on and otomb == ix.ot, f"{name}: old array counts"
        assert (ocnt + otomb) * 10 <= (ix.omask + 1) * 7, f"{name}: old load > 0.7"
    assert ix.n + ix.on == n_flagged, f"{name}: {ix.n + ix.on} slots vs {n_flagged} hashed entries"
    assert ix.lost == 0, f"{name}: {ix.lost} entries were unhashed by a full scan (key changed while hashed)"


cdef _check_hidden(conntab *t, ct_index *ix):
    # the out index's hidden entries: live, out-hashed, filed under their key's signature, and
    # behind another entry that the index holds under the same key. Returns their ids.
    cdef uint64_t i, n = 0
    cdef uint32_t id, holder
    cdef conn_key k
    hidden = set()
    if ix.sh == NULL:
        assert ix.sh_n == 0, f"out: {ix.sh_n} hidden entries counted without a table"
        return hidden
    for i in range(ix.sh_mask + 1):
        if ix.sh[i].w == 0:
            continue
        n += 1
        id = <uint32_t>(ix.sh[i].w >> 32)
        assert id < t.hwm and (t.entries[id].xflags & XF_USED) and (t.entries[id].xflags & XF_OUT_HASHED), \
            f"out: hidden slot {i} -> {id} is not a live out-hashed entry"
        assert id not in hidden, f"out: entry {id} hidden twice"
        hidden.add(id)
        assert key_out_of(t, id, &k) and <uint32_t>ix.sh[i].w == k.hash, \
            f"out: hidden slot {i} signature differs from its entry's key"
        holder = _ct_idx_lookup(t, ix, &k)
        assert holder != CONN_NONE and holder != id, f"out: hidden entry {id} is behind nothing"
    assert n == ix.sh_n, f"out: {n} hidden entries, count says {ix.sh_n}"
    assert n * 2 <= ix.sh_mask + 1, "out: hidden-entry table load > 0.5"
    return hidden


cdef class ConnTable:
    """A connection table for Python callers (tests, benchmarks, listings).

    ``ConnTable(max_entries=1<<24, initial_slots=1024, seed=0)``: the slab reserves
    ``max_entries`` entries of virtual memory up front; the indexes start with
    ``initial_slots`` slots and double as needed.
    """

    def __cinit__(self, uint64_t max_entries=1 << 24, uint32_t initial_slots=1024, uint64_t seed=0):
        if max_entries == 0 or max_entries >= MAX_IDS:
            raise ValueError(f"max_entries must be in 1..{MAX_IDS - 1}")
        self.t = ct_new(max_entries, initial_slots, seed)
        if self.t == NULL:
            raise MemoryError("cannot reserve the connection table")
        self._keep = None

    def __dealloc__(self):
        ct_free_table(self.t)
        self.t = NULL

    # -- dests (for the out index) --
    def set_dests(self, addrs):
        """Install a dest address table: ``addrs[i]`` is dest i's address."""
        buf = np.zeros((max(len(addrs), 1), 16), dtype=np.uint8)
        for i, a in enumerate(addrs):
            buf[i] = np.frombuffer(addr16(a), dtype=np.uint8)
        cdef uint8_t[:, ::1] v = buf
        self._keep = buf
        self.t.dest_addr = &v[0, 0]
        self.t.dest_stride = 16

    # -- entries --
    def alloc(self):
        """A fresh zeroed entry (not hashed, no timer); returns its id."""
        cdef uint32_t id = ct_alloc(self.t)
        if id == CONN_NONE:
            raise MemoryError(f"connection table full ({self.t.max_entries} entries)")
        return id

    def insert(self, proto, af, caddr, cport, vaddr, vport, template=False, dest=0xFFFFFFFF,
               *, dport=0, flags=0, state=0):
        """Allocate an entry with this in-key and hash it (newest wins); returns its id."""
        cdef conn_key k
        cdef uint32_t id
        cdef conn_entry *e
        _fill_key(&k, proto, af, caddr, cport, vaddr, vport, template)
        if not 0 <= dport <= 0xFFFF or not 0 <= flags <= 0xFFFF or not 0 <= state <= 255:
            raise ValueError("dport, flags or state out of range")
        if not 0 <= dest <= 0xFFFFFFFF:
            raise ValueError("dest out of range")
        id = ct_alloc(self.t)
        if id == CONN_NONE:
            raise MemoryError(f"connection table full ({self.t.max_entries} entries)")
        e = &self.t.entries[id]
        memcpy(e.caddr, k.a, 16)
        memcpy(e.vaddr, k.b, 16)
        e.cport = k.pa
        e.vport = k.pb
        e.dport = dport
        e.proto = k.proto
        e.af = k.af
        e.state = state
        e.flags = (flags | CF_TEMPLATE) if template else (flags & ~CF_TEMPLATE)
        e.dest = dest
        if ct_hash_in(self.t, id) != 0:
            ct_release(self.t, id)
            raise MemoryError("index full")
        return id

    def insert_out(self, id):
        """Hash entry ``id`` into the out index (needs a dest and set_dests)."""
        cdef uint32_t i = _live_id(self.t, id)
        if ct_hash_out(self.t, i) != 0:
            raise ValueError(f"entry {id} cannot be hashed out (no dest address, template, or already hashed)")

    def hash_in(self, id):
        cdef uint32_t i = _live_id(self.t, id)
        if ct_hash_in(self.t, i) != 0:
            raise ValueError(f"entry {id} is already in the in index")

    def unhash(self, id):
        ct_unhash(self.t, _live_id(self.t, id))

    def remove(self, id):
        """Unhash, disarm and free entry ``id``."""
        ct_release(self.t, _live_id(self.t, id))

    def lookup(self, proto, af, caddr, cport, vaddr, vport, template=False):
        cdef conn_key k
        _fill_key(&k, proto, af, caddr, cport, vaddr, vport, template)
        ct_key_hash(self.t, &k)
        cdef uint32_t id = ct_lookup_in(self.t, &k)
        return -1 if id == CONN_NONE else id

    def lookup_out(self, proto, af, daddr, dport, caddr, cport):
        cdef conn_key k
        _fill_key(&k, proto, af, daddr, dport, caddr, cport, False)
        ct_key_hash(self.t, &k)
        cdef uint32_t id = ct_lookup_out(self.t, &k)
        return -1 if id == CONN_NONE else id

    def key_hash(self, proto, af, a, pa, b, pb, template=False):
        """The 32-bit signature of a key (bit 31 always set)."""
        cdef conn_key k
        _fill_key(&k, proto, af, a, pa, b, pb, template)
        ct_key_hash(self.t, &k)
        return k.hash

    # -- timers --
    def set_timer(self, id, int64_t deadline_ns):
        ct_timer_set(self.t, _live_id(self.t, id), deadline_ns)

    def del_timer(self, id):
        ct_timer_del(self.t, _live_id(self.t, id))

    def pop_expired(self, int64_t now_ns, limit=None):
        """Ids of the entries due at ``now_ns`` in (deadline, serial) order; disarms them."""
        out = []
        cdef uint32_t id
        while limit is None or len(out) < limit:
            id = ct_timer_pop(self.t, now_ns)
            if id == CONN_NONE:
                break
            out.append(id)
        return out

    def next_deadline(self):
        """ct_timer_next: None if nothing is armed, else a bound never later than the earliest
        deadline and equal to it when that deadline is within TIMER_HORIZON_NS of the last pop."""
        cdef int64_t n = ct_timer_next(self.t)
        return None if n == INT64_MAX else n

    # -- introspection --
    def __len__(self):
        return self.t.live

    def serial(self, id):
        return self.t.entries[_live_id(self.t, id)].serial

    def entry(self, id):
        cdef conn_entry *e = &self.t.entries[_live_id(self.t, id)]
        return dict(
            id=id, caddr=bytes(e.caddr[:16]), vaddr=bytes(e.vaddr[:16]), cport=e.cport,
            vport=e.vport, dport=e.dport, flags=e.flags, proto=e.proto, state=e.state, af=e.af,
            xflags=e.xflags, dest=e.dest, control=e.control, n_control=e.n_control,
            deadline_ns=e.deadline_ns if e.xflags & XF_TIMER else None, serial=e.serial,
            in_hashed=bool(e.xflags & XF_IN_HASHED), out_hashed=bool(e.xflags & XF_OUT_HASHED),
            armed=bool(e.xflags & XF_TIMER),
        )

    def set_fields(self, id, **fields):
        """Set plain entry fields (state, flags, dest, dport, control, n_control)."""
        cdef conn_entry *e = &self.t.entries[_live_id(self.t, id)]
        for name, v in fields.items():
            if name == "state": e.state = v
            elif name == "flags": e.flags = v
            elif name == "dest": e.dest = v
            elif name == "dport": e.dport = v
            elif name == "control": e.control = v
            elif name == "n_control": e.n_control = v
            else:
                raise ValueError(f"field {name!r} cannot be set here")

    def slots(self, bint out=False):
        """The current slot array of an index as uint64 words ((id << 32) | signature, 0 = empty)."""
        cdef ct_index *ix = <ct_index *>(self.t.out_idx if out else self.t.in_idx)
        cdef uint64_t[::1] v = <uint64_t[:ix.mask + 1]>ix.s
        return np.array(v, dtype=np.uint64, copy=True)

    def stats(self):
        cdef ct_index *a = <ct_index *>self.t.in_idx
        cdef ct_index *b = <ct_index *>self.t.out_idx
        cdef ct_timers *w = <ct_timers *>self.t.timers
        return dict(
            live=self.t.live, hwm=self.t.hwm, max_entries=self.t.max_entries,
            next_serial=self.t.next_serial,
            in_slots=a.mask + 1, in_count=a.n + a.on, in_migrating=a.os != NULL,
            in_old_slots=(a.omask + 1) if a.os != NULL else 0, in_cursor=a.cursor,
            in_growths=a.growths, in_grow_fail=a.grow_fail, in_lost=a.lost, in_fallback=a.nfall,
            out_slots=b.mask + 1, out_count=b.n + b.on, out_migrating=b.os != NULL,
            out_old_slots=(b.omask + 1) if b.os != NULL else 0, out_cursor=b.cursor,
            out_growths=b.growths, out_grow_fail=b.grow_fail, out_lost=b.lost,
            out_hidden=b.sh_n, out_hide_fail=b.sh_fail,
            timers_armed=w.armed, heap_len=w.hn, heap_hwm=w.hhwm, wheel_cursor=w.cur,
            timer_steps=w.cascaded, timer_refiled=w.refiled,
        )

    def memory(self, resident=False):
        """Bytes held: entries (slab up to its high-water mark), indexes + timers, per live
        connection. ``resident=True`` adds the bytes the kernel actually backs (pagemap)."""
        cdef uint64_t eb = self.t.hwm * sizeof(conn_entry)
        cdef uint64_t ib = ct_index_bytes(self.t)
        cdef ct_index *a = <ct_index *>self.t.in_idx
        cdef ct_index *b = <ct_index *>self.t.out_idx
        cdef ct_timers *w = <ct_timers *>self.t.timers
        live = self.t.live
        d = dict(entries_bytes=eb, index_bytes=ib,
                 in_index_bytes=idx_bytes(a), out_index_bytes=idx_bytes(b),
                 timer_bytes=ib - idx_bytes(a) - idx_bytes(b),
                 per_conn=(eb + ib) / live if live else None,
                 in_load=(a.n + a.on) / <double>(a.mask + 1 + (a.omask + 1 if a.os != NULL else 0)),
                 out_load=(b.n + b.on) / <double>(b.mask + 1 + (b.omask + 1 if b.os != NULL else 0)))
        if resident:
            r = 0
            for ix in (<uint64_t>a, <uint64_t>b):
                r += ct_resident((<ct_index *>ix).s, ((<ct_index *>ix).mask + 1) * 8)
                if (<ct_index *>ix).os != NULL:
                    r += ct_resident((<ct_index *>ix).os, ((<ct_index *>ix).omask + 1) * 8)
            d["index_resident"] = r
            d["in_resident_new"] = ct_resident(a.s, (a.mask + 1) * 8)
            d["in_resident_old"] = ct_resident(a.os, (a.omask + 1) * 8) if a.os != NULL else 0
            d["in_released"] = a.oreleased
            d["entries_resident"] = ct_resident(self.t.entries, eb) if eb else 0
            d["heap_resident"] = ct_resident(w.heap, w.hcap * sizeof(heap_el))
        return d

    # -- invariants --
    def check_invariants(self):
        """AssertionError with details if any structural invariant is broken."""
        cdef conntab *t = self.t
        cdef ct_timers *w = <ct_timers *>t.timers
        cdef uint32_t id, x, prev, b
        cdef conn_entry *e
        cdef conn_key k
        cdef uint64_t i, live = 0, n_in = 0, n_out = 0, armed = 0, nfree = 0, tk, ws
        cdef int lvl
        hidden = _check_hidden(t, <ct_index *>t.out_idx)
        for id in range(t.hwm):
            e = &t.entries[id]
            if e.xflags & XF_USED:
                live += 1
                if e.xflags & XF_IN_HASHED:
                    n_in += 1
                    ct_key_in_of(t, id, &k)
                    assert ct_lookup_in(t, &k) == id, f"in-hashed entry {id} not findable"
                if e.xflags & XF_OUT_HASHED:
                    n_out += 1
                    assert key_out_of(t, id, &k), f"out-hashed entry {id} has no dest address"
                    assert ct_lookup_out(t, &k) == id or id in hidden, f"out-hashed entry {id} not findable"
                if e.xflags & XF_TIMER:
                    armed += 1
                    assert e.tprev != CONN_NONE, f"armed entry {id} is not filed"
                else:
                    assert e.tprev == CONN_NONE and e.tnext == CONN_NONE, f"disarmed entry {id} still linked"
            else:
                assert e.xflags == 0, f"free entry {id} has xflags {e.xflags:#x}"
        assert live == t.live, f"live count {t.live} != {live}"
        id = t.free_head
        while id != CONN_NONE:
            assert id < t.hwm and t.entries[id].xflags == 0, f"free list holds {id}"
            nfree += 1
            assert nfree <= t.hwm, "free list loops"
            id = t.entries[id].tnext
        assert nfree + live == t.hwm, f"free {nfree} + live {live} != hwm {t.hwm}"
        _check_index(t, <ct_index *>t.in_idx, n_in, XF_IN_HASHED)
        _check_index(t, <ct_index *>t.out_idx, n_out - len(hidden), XF_OUT_HASHED)
        # timers: every armed entry is in exactly one bucket list or held by the heap
        assert w.armed == armed, f"armed count {w.armed} != {armed}"
        seen = 0
        for b in range(<uint32_t>CT_TW_BUCKETS):
            lvl = b >> 8
            nonempty = w.b[b].head != CONN_NONE
            assert nonempty == bool(w.bits[lvl][(b >> 6) & 3] >> (b & 63) & 1), f"bucket bit {b}"
            if not nonempty:
                assert w.b[b].tail == CONN_NONE
                continue
            assert (b & 255) > ((w.cur >> (lvl * TW_BITS)) & 255), f"bucket {b} behind the cursor"
            ws = tw_window(w, b)
            prev = TP_HEAD | b
            id = w.b[b].head
            while not is_tag(id):
                e = &t.entries[id]
                assert e.xflags & XF_TIMER and e.xflags & XF_USED, f"bucket {b} holds disarmed {id}"
                assert e.tprev == prev, f"broken back link at {id}"
                tk = tick_of(e.deadline_ns)
                assert tk >= ws, f"entry {id} filed after its deadline"
                seen += 1
                assert seen <= armed, "bucket lists loop"
                prev = id
                id = e.tnext
            assert id == (TP_HEAD | b) and w.b[b].tail == prev, f"bucket {b} tail"
        ready = set()
        for i in range(w.hn):
            if heap_valid(t, &w.heap[i]):
                ready.add(w.heap[i].id)
                assert tick_of(w.heap[i].deadline) <= w.cur, "heap entry beyond the cursor"
            if i > 0:
                assert not heap_less(&w.heap[i], &w.heap[(i - 1) >> 1]), "heap order"
        n_ready = 0
        true_min = INT64_MAX
        for id in range(t.hwm):
            e = &t.entries[id]
            if (e.xflags & XF_USED) and (e.xflags & XF_TIMER):
                true_min = min(true_min, e.deadline_ns)
                if e.tprev == CT_TP_READY:
                    n_ready += 1
                    assert id in ready, f"ready entry {id} has no heap element"
        assert n_ready == len(ready)
        assert seen + n_ready == armed, f"filed {seen} + ready {n_ready} != armed {armed}"
        if w.next_valid:
            assert w.next_ns <= true_min, f"cached next {w.next_ns} after the earliest deadline {true_min}"
            if w.next_exact:
                assert w.next_ns == true_min, f"cached next {w.next_ns} != earliest deadline {true_min}"
            else:
                assert w.next_ns - TW_HORIZON > w.last_now, \
                    f"cached lower bound {w.next_ns} is within the horizon of {w.last_now}"
        return True


    # -- bulk helpers for benchmarks and tests (C loops over numpy arrays) --
    def make_keys(self, proto, af, a, pa, b, pb, template=None):
        """An array of conn_key records (uint8, shape (n, KEY_SIZE)) with hashes filled.
        a, b: uint8 arrays of shape (n, 16); the rest are length-n integer arrays."""
        cdef uint8_t[:, ::1] A = np.ascontiguousarray(a, dtype=np.uint8)
        cdef uint8_t[:, ::1] B = np.ascontiguousarray(b, dtype=np.uint8)
        cdef Py_ssize_t n = A.shape[0], i
        if A.shape[1] != 16 or B.shape[1] != 16 or B.shape[0] != n:
            raise ValueError("addresses must be (n, 16) uint8 arrays")
        cdef uint16_t[::1] PA = np.ascontiguousarray(np.broadcast_to(pa, (n,)), dtype=np.uint16)
        cdef uint16_t[::1] PB = np.ascontiguousarray(np.broadcast_to(pb, (n,)), dtype=np.uint16)
        cdef uint8_t[::1] PR = np.ascontiguousarray(np.broadcast_to(proto, (n,)), dtype=np.uint8)
        cdef uint8_t[::1] AF = np.ascontiguousarray(np.broadcast_to(af, (n,)), dtype=np.uint8)
        cdef uint8_t[::1] TM = np.ascontiguousarray(
            np.broadcast_to(0 if template is None else template, (n,)), dtype=np.uint8)
        out = np.zeros((n, sizeof(conn_key)), dtype=np.uint8)
        cdef uint8_t[:, ::1] O = out
        cdef conn_key *k
        for i in range(n):
            if AF[i] != 4 and AF[i] != 6:
                raise ValueError(f"key {i}: af must be 4 or 6")
        with nogil:
            for i in range(n):
                k = <conn_key *>&O[i, 0]
                memcpy(k.a, &A[i, 0], 16)
                memcpy(k.b, &B[i, 0], 16)
                k.pa = PA[i]
                k.pb = PB[i]
                k.proto = PR[i]
                k.af = AF[i]
                k.is_template = TM[i] != 0
                ct_key_hash(self.t, k)
        return out

    def insert_keys(self, keys, int64_t ts0=0, int64_t dt=0, dests=None, dport=0, state=1):
        """Insert one entry per key (in-index; out-index too when ``dests`` gives each key's
        dest id), arm deadline ts + timeout(state), ts advancing by ``dt`` per key.
        Returns the ids (uint32). A C loop: this is the insert benchmark."""
        cdef uint8_t[:, ::1] K = self._keys(keys)
        cdef Py_ssize_t n = K.shape[0], i
        ids = np.empty(n, dtype=np.uint32)
        cdef uint32_t[::1] I = ids
        cdef uint32_t[::1] D
        cdef bint nat = dests is not None
        if nat:
            if self.t.dest_addr == NULL:
                raise ValueError("set_dests first")
            D = np.ascontiguousarray(np.broadcast_to(dests, (n,)), dtype=np.uint32)
        if not 0 <= state <= 10:
            raise ValueError("state out of range")
        cdef uint8_t st = state
        cdef uint16_t dp = dport
        cdef uint32_t id
        cdef int64_t ts = ts0
        cdef conn_key *k
        cdef conn_entry *e
        cdef Py_ssize_t done = 0
        with nogil:
            for i in range(n):
                k = <conn_key *>&K[i, 0]
                id = ct_alloc(self.t)
                if id == CONN_NONE:
                    break
                e = &self.t.entries[id]
                memcpy(e.caddr, k.a, 16)
                memcpy(e.vaddr, k.b, 16)
                e.cport = k.pa
                e.vport = k.pb
                e.dport = dp
                e.proto = k.proto
                e.af = k.af
                e.state = st
                if k.is_template:
                    e.flags = CF_TEMPLATE
                ct_hash_in(self.t, id)
                if nat:
                    e.dest = D[i]
                    ct_hash_out(self.t, id)
                ct_timer_set(self.t, id, ts + BENCH_TIMEOUT[st])
                I[i] = id
                ts += dt
                done += 1
        if done < n:
            raise MemoryError(f"table full after {done} inserts")
        return ids

    @staticmethod
    def _keys(keys):
        arr = np.ascontiguousarray(keys, dtype=np.uint8)
        if arr.ndim != 2 or arr.shape[1] != sizeof(conn_key):
            raise ValueError(f"keys must be an (n, {sizeof(conn_key)}) uint8 array from make_keys")
        return arr

    def lookup_keys(self, keys, bint bulk=True):
        """Look up every key (in index); ids as uint32, NONE_ID for misses."""
        cdef uint8_t[:, ::1] K = np.array(self._keys(keys), copy=True)
        cdef Py_ssize_t n = K.shape[0], i
        out = np.empty(n, dtype=np.uint32)
        cdef uint32_t[::1] O = out
        if n == 0:
            return out
        with nogil:
            if bulk:
                ct_lookup_in_bulk(self.t, <conn_key *>&K[0, 0], <uint32_t>n, &O[0])
            else:
                for i in range(n):
                    O[i] = ct_lookup_in(self.t, <conn_key *>&K[i, 0])
        return out

    def bench_lookup_state(self, keys, picks=None, int64_t ts0=0, int64_t dt=1000, bint bulk=False,
                           events=None):
        """For each packet (``keys[picks[i]]``, or ``keys[i]`` in order when picks is None, as
        a parsed burst would be read): copy the key, hash, look up, one TCP state step
        (INPUT_ONLY table, event per packet, ACK by default) and re-arm the deadline at
        ts + timeout, ts advancing by dt. ``bulk`` runs the rolling pipeline of
        ct_lookup_in_bulk (hash and prefetch the slots 16 packets ahead, peek and prefetch the
        entry 8 ahead). Returns the number of hits."""
        keys = self._keys(keys)
        if picks is not None:
            # packets arrive with their keys in order: lay them out so (an indirection per
            # packet costs as much as the lookup itself at 1K connections)
            picks = np.asarray(picks, dtype=np.int64)
            if len(picks) and (picks.min() < 0 or picks.max() >= len(keys)):
                raise ValueError("pick out of range")
            if not (len(picks) == len(keys) and (len(picks) == 0 or (
                    picks[0] == 0 and (np.diff(picks) == 1).all()))):
                keys = keys[picks]
        cdef uint8_t[:, ::1] K = keys
        cdef Py_ssize_t n = K.shape[0], i, j, m
        cdef uint8_t[::1] EV = np.ascontiguousarray(
            np.broadcast_to(2 if events is None else events, (n,)), dtype=np.uint8)
        if n and np.asarray(EV).max() > 3:
            raise ValueError("events are 0..3 (syn, fin, ack, rst)")
        cdef conn_key kb[RING]
        cdef uint32_t id
        cdef uint64_t hits = 0
        cdef int64_t ts = ts0
        cdef conn_entry *e
        cdef uint8_t st
        cdef conntab *t = self.t
        cdef ct_index *ix = <ct_index *>t.in_idx
        with nogil:
            if not bulk:
                for i in range(n):
                    memcpy(&kb[0], &K[i, 0], sizeof(conn_key))
                    ct_key_hash_i(t, &kb[0])
                    id = ct_lookup_in_i(t, &kb[0])
                    if id != CONN_NONE:
                        e = &t.entries[id]
                        st = BENCH_TCP[EV[i]][e.state]
                        e.state = st
                        ct_timer_set_i(t, id, ts + BENCH_TIMEOUT[st])
                        hits += 1
                    ts += dt
            else:
                for j in range(PF_SLOT if n > PF_SLOT else n):
                    memcpy(&kb[j & RING_MASK], &K[j, 0], sizeof(conn_key))
                    ct_key_hash_i(t, &kb[j & RING_MASK])
                    _ct_idx_prefetch(ix, kb[j & RING_MASK].hash)
                for j in range(PF_ENTRY if n > PF_ENTRY else n):
                    id = _ct_peek(ix, kb[j & RING_MASK].hash)
                    if id != CONN_NONE:
                        ct_prefetch_entry_i(t, id)
                for i in range(n):
                    if i + PF_SLOT < n:
                        j = (i + PF_SLOT) & RING_MASK
                        memcpy(&kb[j], &K[i + PF_SLOT, 0], sizeof(conn_key))
                        ct_key_hash_i(t, &kb[j])
                        _ct_idx_prefetch(ix, kb[j].hash)
                    if i + PF_ENTRY < n:
                        id = _ct_peek(ix, kb[(i + PF_ENTRY) & RING_MASK].hash)
                        if id != CONN_NONE:
                            ct_prefetch_entry_i(t, id)
                    id = ct_lookup_in_i(t, &kb[i & RING_MASK])
                    if id != CONN_NONE:
                        e = &t.entries[id]
                        st = BENCH_TCP[EV[i]][e.state]
                        e.state = st
                        ct_timer_set_i(t, id, ts + BENCH_TIMEOUT[st])
                        hits += 1
                    ts += dt
        return hits


    def bench_expire(self, int64_t now_ns, bint release=True):
        """Pop every entry due at ``now_ns`` in deadline order (and release it, as the
        engine's expiry does); returns how many. A C loop: the expiry benchmark."""
        cdef uint64_t count = 0
        cdef uint32_t id
        cdef conntab *t = self.t
        with nogil:
            while True:
                id = ct_timer_pop(t, now_ns)
                if id == CONN_NONE:
                    break
                if release:
                    ct_release(t, id)
                count += 1
        return count
