# Neighbour table: IP address (16 bytes, IPv4 mapped) -> MAC, as the director's ARP/ND cache.
# Inline code: it runs for every packet the forwarder learns from or sends over Ethernet.
# Open addressing with linear probing; static entries (from the configuration) are never
# replaced by learned ones, learned ones follow the latest MAC seen.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memcmp

cdef enum:
    NEIGH_EMPTY = 0
    NEIGH_LEARNED = 1
    NEIGH_STATIC = 2

ctypedef struct neigh_ent:
    uint8_t addr[16]
    uint8_t mac[6]
    uint8_t kind            # NEIGH_*
    uint8_t _pad

ctypedef struct neigh_table:
    neigh_ent *slots
    uint32_t cap            # power of two
    uint32_t count
    uint32_t max_count      # learning stops here (static entries always fit)
    uint32_t full_events    # learned entries refused because the table was at max_count


cdef enum:
    NEIGH_INITIAL_CAP = 64


cdef inline uint32_t _hash(const uint8_t *a) noexcept nogil:
    cdef uint64_t x, y
    memcpy(&x, a, 8)
    memcpy(&y, a + 8, 8)
    x = (x * 0x9E3779B97F4A7C15ULL) ^ (y * 0xC2B2AE3D27D4EB4FULL)
    x ^= x >> 29
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 32
    return <uint32_t> x


cdef inline neigh_table *neigh_new(uint32_t max_count) noexcept nogil:
    cdef neigh_table *t = <neigh_table *> calloc(1, sizeof(neigh_table))
    if t == NULL:
        return NULL
    t.slots = <neigh_ent *> calloc(NEIGH_INITIAL_CAP, sizeof(neigh_ent))
    if t.slots == NULL:
        free(t)
        return NULL
    t.cap = NEIGH_INITIAL_CAP
    t.max_count = max_count
    return t


cdef inline void neigh_free(neigh_table *t) noexcept nogil:
    if t != NULL:
        free(t.slots)
        free(t)


cdef inline neigh_ent *_find(const neigh_table *t, const uint8_t *addr) noexcept nogil:
    """Slot holding addr, or the empty slot where it would go."""
    cdef uint32_t mask = t.cap - 1
    cdef uint32_t i = _hash(addr) & mask
    cdef neigh_ent *e
    while True:
        e = &t.slots[i]
        if e.kind == NEIGH_EMPTY or memcmp(e.addr, addr, 16) == 0:
            return e
        i = (i + 1) & mask


cdef inline int _grow(neigh_table *t) noexcept nogil:
    cdef neigh_ent *old = t.slots
    cdef uint32_t oldcap = t.cap
    cdef uint32_t i
    cdef neigh_ent *e
    cdef neigh_ent *n = <neigh_ent *> calloc(<size_t> oldcap * 2, sizeof(neigh_ent))
    if n == NULL:
        return -1
    t.slots = n
    t.cap = oldcap * 2
    for i in range(oldcap):
        if old[i].kind != NEIGH_EMPTY:
            e = _find(t, old[i].addr)
            e[0] = old[i]
    free(old)
    return 0


cdef inline int neigh_set(neigh_table *t, const uint8_t *addr, const uint8_t *mac, uint8_t kind) noexcept nogil:
    cdef neigh_ent *e = _find(t, addr)
    if e.kind != NEIGH_EMPTY:
        if e.kind == NEIGH_STATIC and kind != NEIGH_STATIC:
            return 1
        memcpy(e.mac, mac, 6)
        e.kind = kind
        return 0
    if kind != NEIGH_STATIC and t.count >= t.max_count:
        t.full_events += 1
        return 1
    if (t.count + 1) * 2 > t.cap:
        if _grow(t) != 0:
            t.full_events += 1
            return 1
        e = _find(t, addr)
    memcpy(e.addr, addr, 16)
    memcpy(e.mac, mac, 6)
    e.kind = kind
    t.count += 1
    return 0


cdef inline const uint8_t *neigh_get(const neigh_table *t, const uint8_t *addr) noexcept nogil:
    cdef neigh_ent *e = _find(t, addr)
    if e.kind == NEIGH_EMPTY:
        return NULL
    return e.mac
