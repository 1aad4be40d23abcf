/*
 * The parse floor: a plain C loop doing the work ipvsflow's reader + parser do for a classic
 * pcap file (mmap it, walk the records, parse L2/L3/L4 headers into an array of per-packet
 * structs, a burst of 256 at a time). Built by bench/bench_parse.py with `cc -O2 -shared` and
 * called through ctypes; also a standalone program (`cc -O2 -DFLOOR_MAIN`) printing ns/packet.
 *
 * Same scope as ipvsflow/io/parse.pyx: Ethernet + up to two VLAN tags, IPv4 (IHL, total
 * length, fragments), IPv6 with extension headers, TCP/UDP/SCTP ports, TCP flags, first SCTP
 * chunk, ICMP type/code; addresses stored as 16 bytes (IPv4 mapped), a status per packet.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BURST 256

enum { ST_OK = 0, ST_FRAGMENT = 1, ST_NOT_IP = 2, ST_TRUNC_L2 = 4, ST_TRUNC_L3 = 5, ST_BAD_VER = 6,
       ST_BAD_IHL = 7, ST_BAD_LEN = 8, ST_TRUNC_EXT = 9, ST_TRUNC_L4 = 10, ST_BAD_L4 = 11 };

typedef struct {
    const uint8_t *data;
    int64_t ts_ns;
    uint64_t index;
    uint32_t caplen, wirelen;
    uint16_t status, l3_off, l4_off, l3_len, l4_len, vlan_outer, vlan_inner, sport, dport;
    uint8_t af, proto, tcp_flags, sctp_chunk, frag, icmp_type, icmp_code, vlan_count, ttl, l2_len;
    uint32_t frag_id;
    uint16_t frag_off;
    uint8_t src[16], dst[16];
} desc_t;

static inline uint16_t rd16(const uint8_t *b) { return (uint16_t)((b[0] << 8) | b[1]); }
static inline uint32_t rd32(const uint8_t *b) {
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

static inline void set_v4(uint8_t *dst, const uint8_t *a) {
    dst[10] = 0xff;
    dst[11] = 0xff;
    memcpy(dst + 12, a, 4);
}

static inline void parse_l4(desc_t *p, const uint8_t *d, uint32_t l4, uint32_t ipend, uint32_t n) {
    uint32_t lim = ipend < n ? ipend : n;
    uint32_t avail = lim > l4 ? lim - l4 : 0;
    const uint8_t *h = d + l4;
    p->l4_off = (uint16_t)l4;
    p->l4_len = (uint16_t)(ipend - l4);
    switch (p->proto) {
    case 6:
        if (avail < 20) { p->status = ST_TRUNC_L4; return; }
        p->sport = rd16(h); p->dport = rd16(h + 2); p->tcp_flags = h[13];
        if ((h[12] >> 4) < 5) p->status = ST_BAD_L4;
        break;
    case 17:
        if (avail < 8) { p->status = ST_TRUNC_L4; return; }
        p->sport = rd16(h); p->dport = rd16(h + 2);
        if (rd16(h + 4) < 8) p->status = ST_BAD_L4;
        break;
    case 132:
        if (avail < 16) { p->status = ST_TRUNC_L4; return; }
        p->sport = rd16(h); p->dport = rd16(h + 2); p->sctp_chunk = h[12];
        break;
    case 1: case 58:
        if (avail < 8) { p->status = ST_TRUNC_L4; return; }
        p->icmp_type = h[0]; p->icmp_code = h[1];
        break;
    default:
        break;
    }
}

static void parse_packet(desc_t *p) {
    const uint8_t *d = p->data;
    uint32_t n = p->caplen, off = 14, wire = p->wirelen > n ? p->wirelen : n;
    uint16_t et;
    int tags = 0;
    /* the parser owns everything from status on */
    memset(&p->status, 0, sizeof(*p) - (size_t)((const char *)&p->status - (const char *)p));
    p->l3_off = p->l4_off = 0xffff;
    p->sctp_chunk = 0xff;
    if (n < 14) { p->status = ST_TRUNC_L2; return; }
    et = rd16(d + 12);
    while (et == 0x8100 || et == 0x88a8 || et == 0x9100) {
        if (n < off + 4) { p->status = ST_TRUNC_L2; return; }
        if (tags == 0) p->vlan_outer = rd16(d + off) & 0xfff;
        else if (tags == 1) p->vlan_inner = rd16(d + off) & 0xfff;
        tags++;
        et = rd16(d + off + 2);
        off += 4;
    }
    p->vlan_count = (uint8_t)(tags < 2 ? tags : 2);
    p->l2_len = (uint8_t)off;
    if (et == 0x0800) {
        const uint8_t *ip = d + off;
        uint32_t ihl, tot;
        uint16_t fw;
        p->af = 4;
        p->l3_off = (uint16_t)off;
        if (n < off + 20) { p->status = ST_TRUNC_L3; return; }
        if ((ip[0] >> 4) != 4) { p->status = ST_BAD_VER; return; }
        ihl = (uint32_t)(ip[0] & 15) << 2;
        tot = rd16(ip + 2);
        p->l3_len = (uint16_t)tot;
        p->ttl = ip[8];
        p->proto = ip[9];
        p->frag_id = rd16(ip + 4);
        set_v4(p->src, ip + 12);
        set_v4(p->dst, ip + 16);
        fw = rd16(ip + 6);
        if (fw & 0x3fff) {
            p->frag = 1 | ((fw & 0x2000) ? 2 : 0);
            p->frag_off = fw & 0x1fff;
            if (p->frag_off) p->frag |= 4;
        }
        if (ihl < 20 || off + ihl > wire) { p->status = ST_BAD_IHL; return; }
        if (tot < ihl || off + tot > wire) { p->status = ST_BAD_LEN; return; }
        if (off + ihl > n) { p->status = ST_TRUNC_L3; return; }
        if (p->frag & 4) { p->status = ST_FRAGMENT; return; }
        parse_l4(p, d, off + ihl, off + tot, n);
    } else if (et == 0x86dd) {
        const uint8_t *ip = d + off;
        uint32_t ipend, lim, pos;
        uint8_t nh;
        p->af = 6;
        p->l3_off = (uint16_t)off;
        if (n < off + 40) { p->status = ST_TRUNC_L3; return; }
        if ((ip[0] >> 4) != 6) { p->status = ST_BAD_VER; return; }
        ipend = off + 40 + rd16(ip + 4);
        p->l3_len = (uint16_t)(ipend - off);
        p->ttl = ip[7];
        memcpy(p->src, ip + 8, 16);
        memcpy(p->dst, ip + 24, 16);
        nh = ip[6];
        if (ipend > wire) { p->proto = nh; p->status = ST_BAD_LEN; return; }
        lim = ipend < n ? ipend : n;
        pos = off + 40;
        for (;;) {
            if (nh == 0 || nh == 43 || nh == 60 || nh == 51) {
                uint32_t hl;
                if (pos + 8 > lim) { p->proto = nh; p->status = ST_TRUNC_EXT; return; }
                hl = nh == 51 ? ((uint32_t)d[pos + 1] + 2) << 2 : ((uint32_t)d[pos + 1] + 1) << 3;
                if (pos + hl > lim) { p->proto = nh; p->status = ST_TRUNC_EXT; return; }
                nh = d[pos];
                pos += hl;
            } else if (nh == 44) {
                uint16_t fw;
                if (pos + 8 > lim) { p->proto = nh; p->status = ST_TRUNC_EXT; return; }
                fw = rd16(d + pos + 2);
                p->frag = 1 | ((fw & 1) ? 2 : 0);
                p->frag_off = fw >> 3;
                p->frag_id = rd32(d + pos + 4);
                nh = d[pos];
                pos += 8;
                if (p->frag_off) { p->frag |= 4; p->proto = nh; p->status = ST_FRAGMENT; return; }
            } else {
                break;
            }
        }
        p->proto = nh;
        parse_l4(p, d, pos, ipend, n);
    } else {
        p->status = ST_NOT_IP;
    }
}

/* What a consumer does with a burst: read a few fields of every descriptor. */
static inline uint64_t consume(const desc_t *b, uint32_t n) {
    uint64_t acc = 0;
    for (uint32_t i = 0; i < n; i++)
        acc += (uint64_t)b[i].sport + b[i].dport + b[i].proto + ((uint64_t)b[i].status << 20) + b[i].src[15];
    return acc;
}

/*
 * Parse a whole little-endian pcap file (µs or ns magic). Returns the number of records, or
 * -1 on error; *checksum receives a sum over the parsed fields (to compare with ipvsflow and to
 * keep the compiler from dropping the work); *elapsed_ns the time spent after the mmap.
 */
int64_t floor_parse_file(const char *path, uint64_t *checksum, int64_t *elapsed_ns) {
    static desc_t burst[BURST];
    struct stat st;
    struct timespec t0, t1;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    if (fstat(fd, &st) != 0 || st.st_size < 24) { close(fd); return -1; }
    size_t size = (size_t)st.st_size;
    const uint8_t *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return -1;
    madvise((void *)m, size, MADV_SEQUENTIAL);      /* as ipvsflow's reader does */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint32_t magic = *(const uint32_t *)m;
    int64_t mult = magic == 0xa1b23c4d ? 1 : 1000;
    if (magic != 0xa1b2c3d4 && magic != 0xa1b23c4d) { munmap((void *)m, size); return -1; }
    size_t pos = 24;
    uint64_t idx = 0, acc = 0;
    uint32_t k = 0;
    while (pos + 16 <= size) {
        const uint32_t *h = (const uint32_t *)(m + pos);
        uint32_t cap = h[2];
        if (cap > 262144 || pos + 16 + cap > size) break;
        desc_t *p = &burst[k];
        p->data = m + pos + 16;
        p->ts_ns = (int64_t)h[0] * 1000000000LL + (int64_t)h[1] * mult;
        p->index = idx++;
        p->caplen = cap;
        p->wirelen = h[3];
        pos += 16 + cap;
        if (++k == BURST) {
            for (uint32_t i = 0; i < k; i++) parse_packet(&burst[i]);
            acc += consume(burst, k);
            k = 0;
        }
    }
    for (uint32_t i = 0; i < k; i++) parse_packet(&burst[i]);
    acc += consume(burst, k);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    munmap((void *)m, size);
    *checksum = acc;
    *elapsed_ns = (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    return (int64_t)idx;
}

#ifdef FLOOR_MAIN
int main(int argc, char **argv) {
    uint64_t sum;
    int64_t ns;
    if (argc != 2) { fprintf(stderr, "usage: %s file.pcap\n", argv[0]); return 2; }
    int64_t n = floor_parse_file(argv[1], &sum, &ns);
    if (n <= 0) { fprintf(stderr, "cannot parse %s\n", argv[1]); return 1; }
    printf("%lld packets %.2f ns/packet checksum %llu\n", (long long)n, (double)ns / (double)n,
           (unsigned long long)sum);
    return 0;
}
#endif
