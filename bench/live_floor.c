/* Receive floors for the live benchmark: the least a receiver can do with each packet.
 *
 *   live_floor IFACE SECONDS tpacket3 [BLOCK_SIZE BLOCK_COUNT RETIRE_MS]
 *   live_floor IFACE SECONDS recvmmsg
 *   live_floor IFACE SECONDS tpacket3-fwd OUT_IFACE DST_MAC
 *
 * tpacket3: a TPACKET_V3 ring (default 64 KiB x 1024 blocks, 1 ms retire: the director's
 * defaults), poll() when idle, every packet's 5-tuple read (a checksum over it is printed so the
 * work is not optimised away), blocks handed back after each one. recvmmsg: the same reading
 * from plain recvmmsg bursts of 64. tpacket3-fwd: the tpacket3 read, and every frame sent on
 * OUT_IFACE to DST_MAC (MACs rewritten in the ring, one sendmmsg per block, zero copy: the
 * forwarding director's floor). Outgoing frames are ignored (PACKET_IGNORE_OUTGOING).
 * Runs SECONDS of wall time, then prints one JSON line with the packets seen, the kernel's
 * drop counter (PACKET_STATISTICS) and the CPU time this process used.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static inline uint64_t touch(const uint8_t *d, uint32_t len) {
    /* the 5-tuple of an Ethernet/IPv4 packet */
    if (len < 34 || d[12] != 0x08 || d[13] != 0x00) return 1;
    uint32_t ihl = (d[14] & 0xf) * 4;
    uint64_t h = ((uint64_t)d[23] << 56);
    uint32_t s, t;
    memcpy(&s, d + 26, 4);
    memcpy(&t, d + 30, 4);
    h ^= ((uint64_t)s << 32) ^ t;
    if (len >= 14 + ihl + 4) {
        uint32_t ports;
        memcpy(&ports, d + 14 + ihl, 4);
        h ^= (uint64_t)ports * 0x9E3779B97F4A7C15ull;
    }
    return h;
}

static uint64_t send_all(int fd, struct mmsghdr *m, unsigned n) {
    unsigned off = 0, sent = 0;
    while (off < n) {
        int r = sendmmsg(fd, m + off, n - off, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            off++;                          /* skip a refused frame */
            continue;
        }
        off += (unsigned)r;
        sent += (unsigned)r;
    }
    return sent;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s IFACE SECONDS tpacket3|recvmmsg [BLOCK_SIZE BLOCK_COUNT RETIRE_MS]\n", argv[0]);
        return 2;
    }
    const char *ifname = argv[1];
    double seconds = atof(argv[2]);
    int fwd = strcmp(argv[3], "tpacket3-fwd") == 0;
    int ring = fwd || strcmp(argv[3], "tpacket3") == 0;
    if (fwd && argc != 6) {
        fprintf(stderr, "usage: %s IFACE SECONDS tpacket3-fwd OUT_IFACE DST_MAC\n", argv[0]);
        return 2;
    }
    unsigned bs = argc > 4 && !fwd ? (unsigned)atoi(argv[4]) : 64u << 10;
    unsigned bn = argc > 5 && !fwd ? (unsigned)atoi(argv[5]) : 1024;
    unsigned tov = argc > 6 && !fwd ? (unsigned)atoi(argv[6]) : 1;
    int ofd = -1;
    uint8_t omac[12];
    enum { MAXB = 1024 };
    static struct mmsghdr omsgs[MAXB];
    static struct iovec oiov[MAXB];
    if (fwd) {
        ofd = socket(AF_PACKET, SOCK_RAW, 0);
        if (ofd < 0) { perror("socket(AF_PACKET)"); return 1; }
        if (sscanf(argv[5], "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &omac[0], &omac[1], &omac[2], &omac[3],
                   &omac[4], &omac[5]) != 6) { fprintf(stderr, "bad MAC\n"); return 2; }
        struct ifreq ifr;
        memset(&ifr, 0, sizeof(ifr));
        strncpy(ifr.ifr_name, argv[4], IFNAMSIZ - 1);
        if (ioctl(ofd, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
        memcpy(omac + 6, ifr.ifr_hwaddr.sa_data, 6);
        struct sockaddr_ll osll;
        memset(&osll, 0, sizeof(osll));
        osll.sll_family = AF_PACKET;
        osll.sll_ifindex = (int)if_nametoindex(argv[4]);
        if (bind(ofd, (struct sockaddr *)&osll, sizeof(osll)) < 0) { perror("bind"); return 1; }
        int sndbuf = 4 << 20;
        setsockopt(ofd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        for (int i = 0; i < MAXB; i++) {
            omsgs[i].msg_hdr.msg_iov = &oiov[i];
            omsgs[i].msg_hdr.msg_iovlen = 1;
        }
    }
    uint64_t forwarded = 0;
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) { perror("socket(AF_PACKET)"); return 1; }
    uint8_t *map = NULL;
    if (ring) {
        int v = TPACKET_V3;
        if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof(v)) < 0) { perror("PACKET_VERSION"); return 1; }
        struct tpacket_req3 req;
        memset(&req, 0, sizeof(req));
        req.tp_block_size = bs;
        req.tp_block_nr = bn;
        req.tp_frame_size = 2048;
        req.tp_frame_nr = (unsigned)((uint64_t)bs * bn / 2048);
        req.tp_retire_blk_tov = tov;
        if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0) { perror("PACKET_RX_RING"); return 1; }
        map = mmap(NULL, (size_t)bs * bn, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) { perror("mmap"); return 1; }
    } else {
        int rcvbuf = 16 << 20;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
    }
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = (int)if_nametoindex(ifname);
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) { perror("bind"); return 1; }
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one));
    struct tpacket_stats_v3 st0;
    socklen_t sl = sizeof(st0);
    getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st0, &sl);     /* reset */

    uint64_t pkts = 0, acc = 0;
    double cpu0 = cpu_seconds(), t0 = now();
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    if (ring) {
        unsigned cur = 0;
        while (now() - t0 < seconds) {
            struct tpacket_block_desc *bd = (struct tpacket_block_desc *)(map + (size_t)cur * bs);
            if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
                poll(&pf, 1, 50);
                continue;
            }
            uint32_t n = bd->hdr.bh1.num_pkts;
            struct tpacket3_hdr *h = (struct tpacket3_hdr *)((uint8_t *)bd + bd->hdr.bh1.offset_to_first_pkt);
            uint32_t q = 0;
            for (uint32_t i = 0; i < n; i++) {
                uint8_t *d = (uint8_t *)h + h->tp_mac;
                acc += touch(d, h->tp_snaplen);
                if (fwd && h->tp_snaplen >= 14) {
                    memcpy(d, omac, 12);
                    oiov[q].iov_base = d;
                    oiov[q].iov_len = h->tp_snaplen;
                    if (++q == MAXB) {
                        forwarded += send_all(ofd, omsgs, q);
                        q = 0;
                    }
                }
                h = (struct tpacket3_hdr *)((uint8_t *)h + h->tp_next_offset);
            }
            if (q) forwarded += send_all(ofd, omsgs, q);
            pkts += n;
            __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
            cur = (cur + 1) % bn;
        }
    } else {
        enum { B = 64, SNAP = 2048 };
        static uint8_t bufs[B][SNAP];
        struct mmsghdr msgs[B];
        struct iovec iov[B];
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < B; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = SNAP;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        while (now() - t0 < seconds) {
            int r = recvmmsg(fd, msgs, B, MSG_DONTWAIT, NULL);
            if (r <= 0) {
                poll(&pf, 1, 50);
                continue;
            }
            for (int i = 0; i < r; i++) acc += touch(bufs[i], msgs[i].msg_len);
            pkts += (uint64_t)r;
        }
    }
    double cpu = cpu_seconds() - cpu0, el = now() - t0;
    struct tpacket_stats_v3 st;
    memset(&st, 0, sizeof(st));
    sl = sizeof(st);
    getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
    printf("{\"mode\": \"%s\", \"packets\": %llu, \"kernel_drops\": %u, \"cpu_seconds\": %.6f, "
           "\"seconds\": %.6f, \"ns_per_packet\": %.1f, \"forwarded\": %llu, \"check\": %llu}\n",
           argv[3], (unsigned long long)pkts, st.tp_drops, cpu, el,
           pkts ? cpu * 1e9 / pkts : 0.0, (unsigned long long)forwarded,
           (unsigned long long)(acc & 0xffff));
    return 0;
}
