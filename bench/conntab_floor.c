/* The floor for the connection-table benchmark: a plain C loop doing what
 * ConnTable.bench_lookup_state does, over a table of the same shape (80-byte entries in
 * one array, 8-byte index slots = (id << 32) | 32-bit signature, linear probing, load
 * <= 0.7, the same key layout and hash), with nothing else: no incremental growth, no
 * timer structure (the deadline is just stored), no bounds checks.
 *
 *   cc -O2 -o conntab_floor conntab_floor.c
 *   ./conntab_floor N_CONNS N_OPS [SEED]
 *
 * N_OPS packets pick keys uniformly from the live set; their keys are laid out in arrival
 * order (as a parsed burst is), so the table accesses are the only random ones.
 * prints one line: n=... slots=... insert_ns=... scalar_ns=... batch_ns=... hits=...
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef struct {
    uint8_t caddr[16], vaddr[16];
    uint16_t cport, vport, dport, flags;
    uint8_t proto, state, af, xflags;
    uint32_t dest, control, n_control;
    int64_t deadline_ns;
    uint32_t tnext, tprev;
    uint64_t serial;
} entry_t;                                 /* 80 bytes, as conn_entry */

typedef struct {
    uint8_t a[16], b[16];
    uint16_t pa, pb;
    uint8_t proto, af, is_template, pad;
    uint32_t hash;
} key_t_;                                  /* 44 bytes, as conn_key */

static inline uint64_t mum(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint32_t key_hash(const key_t_ *k, uint64_t seed) {
    uint64_t a0, a1, b0, b1, h, w;
    memcpy(&a0, k->a, 8); memcpy(&a1, k->a + 8, 8);
    memcpy(&b0, k->b, 8); memcpy(&b1, k->b + 8, 8);
    w = (uint64_t)k->pa | ((uint64_t)k->pb << 16) | ((uint64_t)k->proto << 32) |
        ((uint64_t)k->af << 40) | ((uint64_t)(k->is_template != 0) << 48);
    h = mum(a0 ^ seed ^ 0xa0761d6478bd642fULL, a1 ^ 0xe7037ed1a0b428dbULL);
    h ^= mum(b0 ^ 0x8ebc6af09c88c6e3ULL, b1 ^ seed ^ 0x589965cc75374cc3ULL);
    h = mum(h ^ w ^ 0x1d8e4e27c47d124fULL, (seed ^ 0xd6e8feb86659fd93ULL) | 1);
    return (uint32_t)(h ^ (h >> 32)) | 0x80000000u;
}

static inline int eq16(const uint8_t *x, const uint8_t *y) {
    uint64_t x0, x1, y0, y1;
    memcpy(&x0, x, 8); memcpy(&x1, x + 8, 8);
    memcpy(&y0, y, 8); memcpy(&y1, y + 8, 8);
    return ((x0 ^ y0) | (x1 ^ y1)) == 0;
}

static entry_t *E;
static uint64_t *S;
static uint64_t MASK;
static const uint64_t SEED = 3;

/* INPUT_ONLY TCP table (event x state) and timeouts, as the Cython benchmark helper */
static const uint8_t TCP[4][11] = {
    {3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3},
    {6, 4, 2, 5, 4, 5, 6, 7, 8, 9, 5},
    {1, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1},
    {6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6},
};
static const int64_t TMO[11] = {2000000000LL, 900000000000LL, 120000000000LL, 60000000000LL,
    120000000000LL, 120000000000LL, 10000000000LL, 60000000000LL, 30000000000LL,
    120000000000LL, 120000000000LL};

static inline uint32_t lookup(const key_t_ *k) {
    uint64_t i = k->hash & MASK, w;
    for (;;) {
        w = S[i];
        if (w == 0) return 0xFFFFFFFFu;
        if ((uint32_t)w == k->hash) {
            const entry_t *e = &E[w >> 32];
            if (e->cport == k->pa && e->vport == k->pb && e->proto == k->proto && e->af == k->af &&
                ((e->flags & 0x1000) != 0) == (k->is_template != 0) &&
                eq16(e->caddr, k->a) && eq16(e->vaddr, k->b))
                return (uint32_t)(w >> 32);
        }
        i = (i + 1) & MASK;
    }
}

static inline uint32_t peek(uint32_t hash) {
    uint64_t i = hash & MASK, w;
    for (;;) {
        w = S[i];
        if (w == 0) return 0xFFFFFFFFu;
        if ((uint32_t)w == hash) return (uint32_t)(w >> 32);
        i = (i + 1) & MASK;
    }
}

static uint64_t rng_state;
static inline uint64_t rnd(void) {              /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *big(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    if (bytes >= (2u << 20)) madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s N_CONNS N_OPS [SEED]\n", argv[0]); return 2; }
    uint64_t n = strtoull(argv[1], 0, 10), ops = strtoull(argv[2], 0, 10), i, j, hits = 0;
    rng_state = argc > 3 ? strtoull(argv[3], 0, 10) : 1;
    uint64_t slots = 16;
    while (n * 10 > slots * 7) slots <<= 1;     /* load <= 0.7, the table's growth point */
    MASK = slots - 1;
    E = big(n * sizeof(entry_t));
    S = big(slots * 8);
    key_t_ *keys = big(n * sizeof(key_t_));
    key_t_ *stream = big(ops * sizeof(key_t_));   /* the packets' keys, in arrival order */
    static const uint8_t vip[16] = {0,0,0,0,0,0,0,0,0,0,0xff,0xff,10,0,0,100};
    for (i = 0; i < n; i++) {
        key_t_ *k = &keys[i];
        memset(k, 0, sizeof *k);
        k->a[10] = k->a[11] = 0xff;
        uint64_t r = rnd();
        memcpy(k->a + 12, &r, 4);
        k->pa = 1024 + (uint16_t)((r >> 32) % 64512);
        memcpy(k->b, vip, 16);
        k->pb = 80; k->proto = 6; k->af = 4;
    }
    for (i = 0; i < ops; i++) stream[i] = keys[rnd() % n];

    /* insert: alloc + fill + hash + probe for the key (newest wins) + place + deadline */
    double t0 = now_s();
    uint64_t live = 0;
    for (i = 0; i < n; i++) {
        key_t_ k = keys[i];
        k.hash = key_hash(&k, SEED);
        uint32_t old = lookup(&k);
        entry_t *e = &E[live];
        memset(e, 0, sizeof *e);
        memcpy(e->caddr, k.a, 16); memcpy(e->vaddr, k.b, 16);
        e->cport = k.pa; e->vport = k.pb; e->proto = k.proto; e->af = k.af; e->state = 1;
        e->xflags = 1; e->serial = live + 1; e->dest = e->control = 0xFFFFFFFFu;
        e->deadline_ns = (int64_t)i * 10000 + TMO[1];
        uint64_t w = (live << 32) | k.hash;
        if (old != 0xFFFFFFFFu) {                 /* duplicate random key: take over its slot */
            uint64_t p = k.hash & MASK;
            while ((uint32_t)(S[p] >> 32) != old) p = (p + 1) & MASK;
            S[p] = w;
        } else {
            uint64_t p = k.hash & MASK;
            while (S[p]) p = (p + 1) & MASK;
            S[p] = w;
        }
        live++;
    }
    double t1 = now_s();

    /* scalar: key copy, hash, probe, compare, TCP step, deadline */
    int64_t ts = (int64_t)n * 10000;
    for (i = 0; i < ops; i++) {
        key_t_ k;
        memcpy(&k, &stream[i], sizeof k);
        k.hash = key_hash(&k, SEED);
        uint32_t id = lookup(&k);
        if (id != 0xFFFFFFFFu) {
            entry_t *e = &E[id];
            uint8_t st = TCP[2][e->state];
            e->state = st;
            if (ts + TMO[st] >= e->deadline_ns) e->deadline_ns = ts + TMO[st];
            hits++;
        }
        ts += 100;
    }
    double t2 = now_s();

    /* batch of 32: hash all + prefetch slots, peek + prefetch entries, then compare + step */
    key_t_ kb[32];
    for (i = 0; i < ops; i += 32) {
        uint64_t m = ops - i < 32 ? ops - i : 32;
        for (j = 0; j < m; j++) {
            memcpy(&kb[j], &stream[i + j], sizeof kb[j]);
            kb[j].hash = key_hash(&kb[j], SEED);
            __builtin_prefetch(&S[kb[j].hash & MASK], 0, 3);
        }
        for (j = 0; j < m; j++) {
            uint32_t id = peek(kb[j].hash);
            if (id != 0xFFFFFFFFu) {
                __builtin_prefetch(&E[id], 1, 3);
                __builtin_prefetch((char *)&E[id] + sizeof(entry_t) - 1, 1, 3);
            }
        }
        for (j = 0; j < m; j++) {
            uint32_t id = lookup(&kb[j]);
            if (id != 0xFFFFFFFFu) {
                entry_t *e = &E[id];
                uint8_t st = TCP[2][e->state];
                e->state = st;
                if (ts + TMO[st] >= e->deadline_ns) e->deadline_ns = ts + TMO[st];
                hits++;
            }
            ts += 100;
        }
    }
    double t3 = now_s();
    printf("n=%llu slots=%llu insert_ns=%.2f scalar_ns=%.2f batch_ns=%.2f hits=%llu\n",
           (unsigned long long)n, (unsigned long long)slots, (t1 - t0) / n * 1e9,
           (t2 - t1) / ops * 1e9, (t3 - t2) / ops * 1e9, (unsigned long long)hits);
    return hits == 2 * ops ? 0 : 1;
}
