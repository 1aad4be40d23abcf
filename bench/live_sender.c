/* Packet blaster for the live benchmark: small Ethernet/IPv4/UDP frames, as fast as one core
 * allows, with sendmmsg bursts of 64 on an AF_PACKET socket (PACKET_QDISC_BYPASS).
 *
 *   live_sender [--zero-csum] IFACE DST_MAC SRC_IP DST_IP DST_PORT FLOWS SECONDS [PPS]
 *
 * PPS (optional, 0 = unpaced) paces the bursts to that rate, so receivers can be compared at
 * one and the same rate (their CPU per packet depends on it: blocks retire on their timer with
 * fewer packets at lower rates).
 * FLOWS distinct source ports (from 1024) are cycled through, so the director sees FLOWS
 * connections. Frames are 60 bytes (no FCS): 14 Ethernet + 20 IPv4 + 8 UDP + 18 payload, with a
 * valid IPv4 header checksum and a valid UDP checksum (--zero-csum: UDP checksum 0, "none",
 * which makes a NAT director recompute it in full). Prints one JSON line:
 * {"sent": N, "seconds": S, "pps": P, "errors": E}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BURST 64
#define FRAME 60

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint16_t csum(const uint8_t *p, int n) {
    uint32_t s = 0;
    for (int i = 0; i < n; i += 2) s += (p[i] << 8) | p[i + 1];
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static int parse_mac(const char *t, uint8_t *m) {
    return sscanf(t, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6 ? 0 : -1;
}

int main(int argc, char **argv) {
    int zero_csum = 0;
    if (argc > 1 && strcmp(argv[1], "--zero-csum") == 0) {
        zero_csum = 1;
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: %s [--zero-csum] IFACE DST_MAC SRC_IP DST_IP DST_PORT FLOWS SECONDS [PPS]\n",
                argv[0]);
        return 2;
    }
    const char *ifname = argv[1];
    uint8_t dmac[6], smac[6];
    struct in_addr sip, dip;
    int dport = atoi(argv[5]), flows = atoi(argv[6]);
    double seconds = atof(argv[7]);
    double pps = argc == 9 ? atof(argv[8]) : 0;
    if (pps < 0 || parse_mac(argv[2], dmac) || !inet_aton(argv[3], &sip) || !inet_aton(argv[4], &dip) ||
        dport <= 0 || dport > 65535 || flows < 1 || flows > 60000 || seconds <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) { perror("socket(AF_PACKET)"); return 1; }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
    memcpy(smac, ifr.ifr_hwaddr.sa_data, 6);
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = (int)if_nametoindex(ifname);
    sll.sll_protocol = 0;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) { perror("bind"); return 1; }
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));

    uint8_t *frames = calloc((size_t)flows, FRAME);
    for (int f = 0; f < flows; f++) {
        uint8_t *p = frames + (size_t)f * FRAME;
        memcpy(p, dmac, 6);
        memcpy(p + 6, smac, 6);
        p[12] = 0x08; p[13] = 0x00;
        uint8_t *ip = p + 14;
        ip[0] = 0x45; ip[1] = 0;
        ip[2] = 0; ip[3] = 46;                      /* total length */
        ip[4] = (uint8_t)(f >> 8); ip[5] = (uint8_t)f;
        ip[6] = 0x40; ip[7] = 0;                    /* DF */
        ip[8] = 64; ip[9] = 17;
        memcpy(ip + 12, &sip, 4);
        memcpy(ip + 16, &dip, 4);
        uint16_t c = csum(ip, 20);
        ip[10] = c >> 8; ip[11] = c & 0xff;
        uint8_t *u = ip + 20;
        int sport = 1024 + f;
        u[0] = sport >> 8; u[1] = sport & 0xff;
        u[2] = dport >> 8; u[3] = dport & 0xff;
        u[4] = 0; u[5] = 26;
        u[6] = 0; u[7] = 0;                         /* 0: no UDP checksum (IPv4) */
        memset(u + 8, 0xab, 18);
        if (!zero_csum) {
            /* pseudo-header (addresses, protocol, UDP length) + UDP header and payload */
            uint8_t ph[12 + 26];
            memcpy(ph, ip + 12, 8);
            ph[8] = 0; ph[9] = 17; ph[10] = 0; ph[11] = 26;
            memcpy(ph + 12, u, 26);
            c = csum(ph, sizeof(ph));
            if (c == 0) c = 0xffff;                 /* a computed 0 is sent as 0xffff */
            u[6] = c >> 8; u[7] = c & 0xff;
        }
    }
    struct mmsghdr msgs[BURST];
    struct iovec iov[BURST];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < BURST; i++) {
        iov[i].iov_len = FRAME;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t sent = 0, errors = 0;
    int next = 0;
    double t0 = now(), t1 = t0;
    while (t1 - t0 < seconds) {
        for (int round = 0; round < 16; round++) {
            if (pps > 0) {
                /* ahead of schedule: sleep until this burst is due */
                double ahead = t0 + sent / pps - now();
                if (ahead > 0) {
                    struct timespec ts = {.tv_sec = (time_t)ahead,
                                          .tv_nsec = (long)((ahead - (time_t)ahead) * 1e9)};
                    nanosleep(&ts, NULL);
                }
            }
            for (int i = 0; i < BURST; i++) {
                iov[i].iov_base = frames + (size_t)next * FRAME;
                if (++next == flows) next = 0;
            }
            int r = sendmmsg(fd, msgs, BURST, 0);
            if (r < 0) {
                if (errno != EINTR) errors++;
                continue;
            }
            sent += (uint64_t)r;
        }
        t1 = now();
    }
    printf("{\"sent\": %llu, \"seconds\": %.6f, \"pps\": %.1f, \"errors\": %llu}\n",
           (unsigned long long)sent, t1 - t0, sent / (t1 - t0), (unsigned long long)errors);
    return 0;
}
