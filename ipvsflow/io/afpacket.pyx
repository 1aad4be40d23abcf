"""Live packet I/O on Linux AF_PACKET sockets.

``RxRing``: a PACKET_RX_RING in TPACKET_V3 layout (blocks of packets, mmap'd). ``fill`` puts the
packets of the ready blocks into a PacketBatch without copying (descriptors point into the ring,
the batch's ``owner`` is the ring, which exposes the mapping as a writable buffer so forwarders
rewrite frames in place) and parses them; ``release`` hands fully read blocks back to the kernel
once the burst is processed. Outgoing frames (the director's own transmissions) are ignored, as
are broadcast/multicast frames and, unless asked for, frames addressed to another host (the
kernel's IPVS only sees PACKET_HOST packets). Frames whose sender left the TCP/UDP checksum
to an offload (veth between namespaces with tx checksumming on: TP_STATUS_CSUMNOTREADY) get it
completed, so what is forwarded carries a real checksum. The kernel moves a frame's outer
802.1Q/802.1ad tag into the ring's packet header (TP_STATUS_VLAN_VALID): it is put back in the
frame (the ring leaves room in front of it), so the parser, captures and forwarded frames see
the VLAN the frame came in on. PACKET_STATISTICS is read and accumulated.
Several sockets (one per worker) can share an interface through PACKET_FANOUT, with a classic
BPF program choosing the socket.

``TxPort``: transmits Ethernet frames on one interface, either in ``sendmmsg`` bursts (zero copy:
the frames must stay valid until ``flush``) or through a PACKET_TX_RING (frames are copied into
the ring; ``flush`` kicks the kernel). Frames longer than the interface's MTU allows are dropped
and counted. PACKET_QDISC_BYPASS is optional.

Both need CAP_NET_RAW; without it the constructor raises PermissionError with one clear line.
"""
import fcntl
import os
import socket
import struct

from cpython.buffer cimport PyBUF_WRITABLE
from libc.errno cimport errno, EINTR, EAGAIN, EPERM, EACCES, ENOBUFS
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memmove, memset, strerror
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from posix.unistd cimport close

from ipvsflow.io.batch cimport PacketBatch, pkt_desc
from ipvsflow.io.parse cimport parse_eth_ipv4_fast_from, parse_full, fast4_template

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int c_socket "socket"(int domain, int type, int protocol)
    int c_bind "bind"(int fd, const sockaddr *addr, socklen_t len)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    int sendmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags)
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags)
    int AF_PACKET
    int SOCK_RAW
    int SOL_SOCKET
    int SO_SNDBUF
    int SO_RCVBUF

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLERR

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t)

cdef extern from "<linux/if_packet.h>" nogil:
    struct sockaddr_ll:
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]
    struct tpacket_req:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
    struct tpacket_req3:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
        unsigned int tp_retire_blk_tov
        unsigned int tp_sizeof_priv
        unsigned int tp_feature_req_word
    struct tpacket_hdr_variant1:
        uint32_t tp_rxhash
        uint32_t tp_vlan_tci
        uint16_t tp_vlan_tpid
    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint32_t tp_status
        uint16_t tp_mac
        uint16_t tp_net
        tpacket_hdr_variant1 hv1
    struct tpacket2_hdr:
        uint32_t tp_status
        uint32_t tp_len
        uint32_t tp_snaplen
        uint16_t tp_mac
        uint16_t tp_net
        uint32_t tp_sec
        uint32_t tp_nsec
    struct tpacket_hdr_v1:
        uint32_t block_status
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
        uint32_t blk_len
    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1
    struct tpacket_block_desc:
        uint32_t version
        uint32_t offset_to_priv
        tpacket_bd_header_u hdr
    struct tpacket_stats_v3:
        unsigned int tp_packets
        unsigned int tp_drops
        unsigned int tp_freeze_q_cnt
    struct packet_mreq:
        int mr_ifindex
        unsigned short mr_type
        unsigned short mr_alen
        unsigned char mr_address[8]
    int SOL_PACKET
    int PACKET_RX_RING
    int PACKET_TX_RING
    int PACKET_VERSION
    int PACKET_STATISTICS
    int PACKET_ADD_MEMBERSHIP
    int PACKET_MR_PROMISC
    int PACKET_FANOUT
    int PACKET_FANOUT_DATA
    int PACKET_FANOUT_HASH
    int PACKET_FANOUT_CPU
    int PACKET_FANOUT_CBPF
    int PACKET_IGNORE_OUTGOING
    int PACKET_QDISC_BYPASS
    int PACKET_LOSS
    int TPACKET_V2
    int TPACKET_V3
    int TP_STATUS_KERNEL
    int TP_STATUS_USER
    int TP_STATUS_CSUMNOTREADY
    int TP_STATUS_VLAN_VALID
    int TP_STATUS_VLAN_TPID_VALID
    int TP_STATUS_SEND_REQUEST
    int TP_STATUS_SENDING
    int TP_STATUS_AVAILABLE
    int TP_STATUS_WRONG_FORMAT
    int PACKET_HOST
    int PACKET_OTHERHOST
    int PACKET_OUTGOING

cdef extern from "<linux/filter.h>" nogil:
    struct sock_filter:
        uint16_t code
        uint8_t jt
        uint8_t jf
        uint32_t k
    struct sock_fprog:
        unsigned short len
        sock_filter *filter

cdef extern from *:
    """
    #include <linux/if_packet.h>
    #ifndef PACKET_FANOUT_FLAG_IGNORE_OUTGOING
    #define PACKET_FANOUT_FLAG_IGNORE_OUTGOING 0x4000
    #endif
    #define IPVSFLOW_TPACKET_ALIGN(x) TPACKET_ALIGN(x)
    static inline uint32_t ipvsflow_load_acquire(const volatile uint32_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void ipvsflow_store_release(volatile uint32_t *p, uint32_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    /* The lines of a packet slot ahead of the reader. The kernel wrote them on another CPU,
       so each first touch is a cross-core miss the hardware prefetcher does not hide, and the
       frame is rewritten in place later (forwarder, sink): fetched for writing (PREFETCHW),
       a read now and a write later would cost a second cross-core round trip. */
    static inline void ipvsflow_prefetchw(const uint8_t *p) {
    #if defined(__x86_64__) || defined(__i386__)
        __asm__ volatile("prefetchw %0" : : "m"(*(const volatile uint8_t *) p));
    #else
        __builtin_prefetch(p, 1, 3);
    #endif
    }
    static inline void ipvsflow_prefetch3(const uint8_t *p) {
        ipvsflow_prefetchw(p);
        ipvsflow_prefetchw(p + 64);
        ipvsflow_prefetchw(p + 128);
    }
    """
    int PACKET_FANOUT_FLAG_IGNORE_OUTGOING
    size_t IPVSFLOW_TPACKET_ALIGN(size_t x) nogil
    uint32_t ipvsflow_load_acquire(const uint32_t *p) nogil
    void ipvsflow_store_release(uint32_t *p, uint32_t v) nogil
    void ipvsflow_prefetch3(const uint8_t *p) nogil
    void ipvsflow_prefetchw(const uint8_t *p) nogil

cdef enum:
    ETH_P_ALL = 0x0003
    PREFETCH_AHEAD = 2048       # bytes ahead of the packet being read (14 slots of 60 B frames)
    LINKTYPE_ETHERNET = 1
    ARPHRD_ETHER = 1

SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927

FANOUT_MODES = {"hash": PACKET_FANOUT_HASH, "cpu": PACKET_FANOUT_CPU, "cbpf": PACKET_FANOUT_CBPF}


class LiveIOError(OSError):
    """A live socket could not be set up; the message says which interface and why."""


def _raise(what, ifname, int err):
    msg = f"{ifname}: {what}: {os.strerror(err)}"
    if err in (EPERM, EACCES):
        raise PermissionError(err, f"{ifname}: {what} needs CAP_NET_RAW (run as root, or grant the "
                                   "capability, e.g. setcap cap_net_raw+ep on the interpreter)")
    raise LiveIOError(err, msg)


def interface_info(ifname):
    """(ifindex, mtu, mac bytes, hardware type) of an interface of the current namespace."""
    if not isinstance(ifname, str) or not ifname or len(ifname) > 15 or "/" in ifname:
        raise LiveIOError(0, f"{ifname!r}: not a valid interface name")
    try:
        idx = socket.if_nametoindex(ifname)
    except OSError:
        raise LiveIOError(0, f"{ifname}: no such network interface") from None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16s16x", ifname.encode())
        mtu = struct.unpack_from("16xi", fcntl.ioctl(s, SIOCGIFMTU, req))[0]
        hw = fcntl.ioctl(s, SIOCGIFHWADDR, req)
        hatype = struct.unpack_from("16xH", hw)[0]
        mac = hw[18:24]
    finally:
        s.close()
    return idx, mtu, mac, hatype


cdef int _open_packet_socket(str ifname) except -1:
    cdef int fd = c_socket(AF_PACKET, SOCK_RAW, 0)
    if fd < 0:
        _raise("opening an AF_PACKET socket", ifname, errno)
    return fd


def probe_af_packet(ifname="the interface"):
    """Raise PermissionError (one clear line) unless AF_PACKET sockets can be opened."""
    cdef int fd = _open_packet_socket(ifname)
    close(fd)


cdef int _bind(int fd, uint32_t ifindex, uint16_t proto, str ifname) except -1:
    cdef sockaddr_ll sll
    memset(&sll, 0, sizeof(sll))
    sll.sll_family = AF_PACKET
    sll.sll_protocol = htons(proto)
    sll.sll_ifindex = <int> ifindex
    if c_bind(fd, <sockaddr *> &sll, sizeof(sll)) != 0:
        _raise("binding the packet socket", ifname, errno)
    return 0


cdef int _setint(int fd, int level, int name, int value, str what, str ifname) except -1:
    if setsockopt(fd, level, name, &value, sizeof(int)) != 0:
        _raise(what, ifname, errno)
    return 0


cdef void _complete_csum(pkt_desc *p) noexcept nogil:
    """Fill in the TCP/UDP checksum of a frame that left its sender with checksum offload
    (CHECKSUM_PARTIAL): the field holds the pseudo-header sum, so the checksum is the
    complement of the sum over the whole segment (what skb_checksum_help does)."""
    cdef uint8_t *d = <uint8_t *> p.data
    cdef uint32_t off, end, i, sum = 0
    cdef uint16_t c
    if p.status != 0 or (p.frag & 1) or p.l4_off == 0xffff:
        return
    if p.proto == 6:
        off = 16
    elif p.proto == 17:
        off = 6
    else:
        return
    end = <uint32_t> p.l4_off + p.l4_len
    if end > p.caplen or p.l4_len < off + 2:
        return
    i = p.l4_off
    while i + 1 < end:
        sum += (<uint32_t> d[i] << 8) | d[i + 1]
        i += 2
    if i < end:
        sum += <uint32_t> d[i] << 8
    while sum >> 16:
        sum = (sum & 0xffff) + (sum >> 16)
    c = <uint16_t> (~sum & 0xffff)
    if c == 0 and p.proto == 17:
        c = 0xffff
    d[p.l4_off + off] = c >> 8
    d[p.l4_off + off + 1] = c & 0xff


cdef extern from *:
    """
    #include <string.h>
    /* The descriptor's last 113 to 128 bytes (fill's template from ifindex on) held in eight
       16-byte values, so the per-packet copy is eight stores from registers: in memory, the
       template would be read again at each packet (the descriptor stores may alias it). */
    typedef unsigned char ipvsflow_v16 __attribute__((vector_size(16)));
    typedef struct { ipvsflow_v16 a, b, c, d, e, f, g, h; } ipvsflow_tail;
    static inline ipvsflow_v16 ipvsflow_ld16(const char *s) {
        ipvsflow_v16 v; memcpy(&v, s, 16); return v;
    }
    static inline void ipvsflow_st16(char *d, ipvsflow_v16 v) { memcpy(d, &v, 16); }
    #define ipvsflow_likely(x) __builtin_expect(!!(x), 1)
    static inline ipvsflow_tail ipvsflow_tail_load(const void *src, size_t len) {
        const char *s = (const char *) src;
        ipvsflow_tail t;
        t.a = ipvsflow_ld16(s); t.b = ipvsflow_ld16(s + 16); t.c = ipvsflow_ld16(s + 32);
        t.d = ipvsflow_ld16(s + 48); t.e = ipvsflow_ld16(s + 64); t.f = ipvsflow_ld16(s + 80);
        t.g = ipvsflow_ld16(s + 96); t.h = ipvsflow_ld16(s + len - 16);
        return t;
    }
    static inline void ipvsflow_tail_store(void *dst, size_t len, ipvsflow_tail t) {
        char *d = (char *) dst;
        ipvsflow_st16(d, t.a); ipvsflow_st16(d + 16, t.b); ipvsflow_st16(d + 32, t.c);
        ipvsflow_st16(d + 48, t.d); ipvsflow_st16(d + 64, t.e); ipvsflow_st16(d + 80, t.f);
        ipvsflow_st16(d + 96, t.g); ipvsflow_st16(d + len - 16, t.h);
    }
    """
    ctypedef struct ipvsflow_tail:
        pass
    ipvsflow_tail ipvsflow_tail_load(const void *src, size_t length) nogil
    void ipvsflow_tail_store(void *dst, size_t length, ipvsflow_tail t) nogil
    # what the compiler should lay out (and allocate registers) for: the common case
    bint ipvsflow_likely(bint x) nogil

# fill's template: from ifindex to the end of the descriptor (constants once inlined)
cdef inline size_t _tail_off(const pkt_desc *p) noexcept nogil:
    return <size_t> (<const char *> &p.ifindex - <const char *> p)

cdef pkt_desc _probe
if not 112 < sizeof(pkt_desc) - _tail_off(&_probe) <= 128:
    raise ImportError("pkt_desc from ifindex on is not 113 to 128 bytes (ipvsflow_tail)")


cdef inline void _restore_vlan(tpacket3_hdr *h) noexcept nogil:
    cdef uint8_t *f = <uint8_t *> h + h.tp_mac
    cdef uint16_t tpid = 0x8100
    if (h.tp_status & TP_STATUS_VLAN_TPID_VALID) and h.hv1.tp_vlan_tpid:
        tpid = h.hv1.tp_vlan_tpid
    memmove(f - 4, f, 12)
    f[8] = tpid >> 8
    f[9] = tpid & 0xff
    f[10] = (h.hv1.tp_vlan_tci >> 8) & 0xff
    f[11] = h.hv1.tp_vlan_tci & 0xff
    h.tp_mac -= 4
    h.tp_snaplen += 4
    h.tp_len += 4


cdef inline tpacket_block_desc *_block(uint8_t *ring, uint32_t size, uint32_t i) noexcept nogil:
    return <tpacket_block_desc *> (ring + <size_t> i * size)


def build_bpf(prog):
    """Check a classic BPF program given as (code, jt, jf, k) tuples; returns it as bytes."""
    out = bytearray()
    for ins in prog:
        code, jt, jf, k = ins
        out += struct.pack("=HBBI", code & 0xffff, jt, jf, k & 0xffffffff)
    if not 1 <= len(prog) <= 4096:
        raise ValueError(f"BPF program of {len(prog)} instructions (1..4096 allowed)")
    return bytes(out)


cdef inline void _fill_one(pkt_desc *p, const tpacket3_hdr *h, uint32_t snap, uint32_t wlen,
                           uint64_t idx, ipvsflow_tail tail) noexcept nogil:
    """One ring packet into p, parsed here while the frame's lines are still in the cache.
    tail is the fast path's template from ifindex on, with this ring's ifindex, fwmark 0 and
    the link type in it: written first, the fast parser then writes only the packet's own
    fields (anything else is parsed in full, which rewrites everything from status on).
    The header is read before any store (the stores may alias it as far as the compiler
    knows)."""
    cdef const uint8_t *d = <const uint8_t *> h + h.tp_mac
    cdef int64_t ts = <int64_t> h.tp_sec * 1000000000 + h.tp_nsec
    p.data = d
    p.caplen = snap
    p.wirelen = wlen
    p.ts_ns = ts
    p.index = idx
    ipvsflow_tail_store(<char *> p + _tail_off(p), sizeof(pkt_desc) - _tail_off(p), tail)
    # wire length: snap, as snap >= tp_len here
    if not ipvsflow_likely(parse_eth_ipv4_fast_from(p, NULL, d, snap, snap, sizeof(pkt_desc))):
        parse_full(p)


cdef class RxRing:
    """A TPACKET_V3 receive ring on one interface.

    ``RxRing(ifname, *, block_size=256 KiB, block_count=128, retire_ms=1, promisc=False,
    accept_otherhost=None, fanout=None)``

    * ``block_size`` (multiple of the page size) x ``block_count``: ring memory. A block is
      handed to user space when it is full or ``retire_ms`` after its first packet, which bounds
      the latency added at low rates (and makes block_count x retire_ms the stall a ring
      absorbs at low rates).
    * ``promisc``: PACKET_MR_PROMISC membership (dropped by the kernel when the socket closes,
      so the interface is left as it was found).
    * ``accept_otherhost``: also process frames addressed to another MAC (default: with
      ``promisc``).
    * ``fanout``: ``(group_id, mode)`` with mode ``"cbpf"`` (set the program with
      ``set_fanout_program``), ``"hash"`` or ``"cpu"``: this socket joins the group and gets
      its share of the interface's packets.
    """

    def __cinit__(self):
        self.fd = -1
        self.ring = NULL

    def __init__(self, str ifname, *, uint32_t block_size=256 << 10, uint32_t block_count=128,
                 uint32_t retire_ms=1, bint promisc=False, accept_otherhost=None, fanout=None):
        cdef tpacket_req3 req
        cdef packet_mreq mr
        cdef int fd
        cdef void *m
        cdef int fan
        idx, mtu, mac, hatype = interface_info(ifname)
        if hatype != ARPHRD_ETHER:
            raise LiveIOError(0, f"{ifname}: hardware type {hatype} is not Ethernet")
        page = os.sysconf("SC_PAGE_SIZE")
        if block_size < page or block_size % page:
            raise ValueError(f"block_size {block_size} must be a multiple of the page size ({page})")
        if block_size < 2 * (mtu + 128):
            raise ValueError(f"block_size {block_size} is too small for {ifname}'s MTU {mtu}")
        if block_count < 2 or block_count > 1 << 16:
            raise ValueError(f"block_count {block_count} out of range 2..65536")
        if <uint64_t> block_size * block_count > (<uint64_t> 1 << 34):
            raise ValueError("ring larger than 16 GiB")
        if retire_ms < 1 or retire_ms > 60000:
            raise ValueError(f"retire_ms {retire_ms} out of range 1..60000")
        self.ifname = ifname
        self.ifindex = idx
        self.block_size = block_size
        self.block_count = block_count
        self.retire_ms = retire_ms
        self.promisc = promisc
        self.accept_otherhost = promisc if accept_otherhost is None else bool(accept_otherhost)
        fd = _open_packet_socket(ifname)
        self.fd = fd
        _setint(fd, SOL_PACKET, PACKET_VERSION, TPACKET_V3, "selecting TPACKET_V3", ifname)
        memset(&req, 0, sizeof(req))
        req.tp_block_size = block_size
        req.tp_block_nr = block_count
        req.tp_frame_size = 2048
        req.tp_frame_nr = <unsigned int> ((<uint64_t> block_size * block_count) // 2048)
        req.tp_retire_blk_tov = retire_ms
        req.tp_sizeof_priv = 0
        req.tp_feature_req_word = 0
        if setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) != 0:
            _raise(f"setting up a {block_count} x {block_size} B receive ring", ifname, errno)
        self.ring_len = <size_t> block_size * block_count
        m = mmap(NULL, self.ring_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if m == MAP_FAILED:
            _raise("mapping the receive ring", ifname, errno)
        self.ring = <uint8_t *> m
        _bind(fd, idx, ETH_P_ALL, ifname)
        if fanout is None:
            # the director's own transmissions are not input (Linux >= 4.20; older kernels:
            # skipped by their packet type in fill())
            fan = 1
            setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &fan, sizeof(int))
        if promisc:
            memset(&mr, 0, sizeof(mr))
            mr.mr_ifindex = <int> idx
            mr.mr_type = PACKET_MR_PROMISC
            if setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) != 0:
                _raise("enabling promiscuous mode", ifname, errno)
        self.fanout = None
        if fanout is not None:
            group, mode = fanout
            if mode not in FANOUT_MODES:
                raise ValueError(f"fanout mode {mode!r} (known: {', '.join(FANOUT_MODES)})")
            group = int(group)
            if not 0 <= group <= 0xffff:
                raise ValueError(f"fanout group {group} out of range 0..65535")
            fan = group | ((FANOUT_MODES[mode] | PACKET_FANOUT_FLAG_IGNORE_OUTGOING) << 16)
            if setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &fan, sizeof(int)) != 0:
                # kernels before the ignore-outgoing fanout flag: outgoing frames are skipped
                # by their packet type instead
                fan = group | (FANOUT_MODES[mode] << 16)
                if setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &fan, sizeof(int)) != 0:
                    _raise(f"joining fanout group {group} ({mode})", ifname, errno)
            self.fanout = (group, mode)
        self.cur = 0
        self.pend = 0
        self.left = 0
        self.cur_open = False
        self.next_pkt = NULL

    def set_fanout_program(self, prog):
        """Attach a classic BPF program (list of (code, jt, jf, k)) choosing the socket of the
        fanout group for each packet (PACKET_FANOUT_DATA). It replaces the group's program."""
        cdef sock_fprog fp
        if self.fanout is None or self.fanout[1] != "cbpf":
            raise ValueError("set_fanout_program needs a ring in a 'cbpf' fanout group")
        code = build_bpf(prog)
        cdef const uint8_t[::1] v = code
        fp.len = <unsigned short> (len(code) // 8)
        fp.filter = <sock_filter *> &v[0]
        if setsockopt(self.fd, SOL_PACKET, PACKET_FANOUT_DATA, &fp, sizeof(fp)) != 0:
            _raise("attaching the fanout program", self.ifname, errno)

    def __dealloc__(self):
        if self.ring != NULL:
            munmap(self.ring, self.ring_len)
            self.ring = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def close(self):
        """Unmap the ring and close the socket (promiscuous membership goes with it)."""
        if self.ring != NULL:
            munmap(self.ring, self.ring_len)
            self.ring = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    @property
    def closed(self):
        return self.fd < 0

    def fileno(self):
        return self.fd

    def __getbuffer__(self, Py_buffer *buf, int flags):
        # the ring as a writable byte buffer, so forwarders rewrite frames in place
        if self.ring == NULL:
            raise ValueError("ring is closed")
        buf.buf = <void *> self.ring
        buf.obj = self
        buf.len = <Py_ssize_t> self.ring_len
        buf.readonly = 0
        buf.itemsize = 1
        buf.format = "B"
        buf.ndim = 1
        buf.shape = &buf.len
        buf.strides = &buf.itemsize
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    cdef uint32_t fill(self, PacketBatch b, uint32_t start, uint64_t first_index) noexcept nogil:
        cdef pkt_desc *p = b.pkts + start
        cdef pkt_desc *p_end = b.pkts + b.capacity
        cdef tpacket_block_desc *bd
        cdef tpacket3_hdr *h
        cdef uint8_t *nxt
        cdef uint8_t *block_end
        cdef uint8_t *pf
        cdef uint8_t pt
        cdef uint32_t n, left, st, snap, wlen
        cdef uint32_t partial = 0
        # The per-packet loop keeps its state in locals: stores into the descriptors may alias
        # anything as far as the compiler knows (no strict aliasing), which would make it
        # reload and store every RxRing field at each packet.
        cdef uint64_t nbytes = 0
        cdef uint64_t outgoing = 0
        cdef uint64_t not_host = 0
        cdef uint64_t truncated = 0
        cdef uint64_t idx = first_index
        cdef uint32_t ifindex = self.ifindex
        cdef bint otherhost = self.accept_otherhost
        cdef size_t sll_off = IPVSFLOW_TPACKET_ALIGN(sizeof(tpacket3_hdr))
        cdef uint8_t *pf_last
        # the fast path's template plus this reader's own fields, held in registers (see
        # ipvsflow_tail)
        cdef pkt_desc tpl
        memcpy(&tpl, fast4_template(), sizeof(pkt_desc))
        tpl.ifindex = ifindex
        tpl.fwmark = 0
        tpl.linktype = LINKTYPE_ETHERNET
        cdef ipvsflow_tail tail = ipvsflow_tail_load(<const char *> &tpl + _tail_off(&tpl),
                                                     sizeof(pkt_desc) - _tail_off(&tpl))
        if self.ring == NULL:
            b.count = start
            return 0
        while p < p_end:
            if self.cur_open and self.left == 0:
                # block fully read: handed back by release_blocks() once the burst is processed
                self.cur_open = False
                self.pend += 1
                self.cur = (self.cur + 1) % self.block_count
            bd = _block(self.ring, self.block_size, self.cur)
            block_end = <uint8_t *> bd + self.block_size
            # the last packet start that prefetches ahead (not past the block, whose successor
            # the kernel may still be writing); a block holds more than that (init checks)
            pf_last = block_end - (PREFETCH_AHEAD + 192)
            if not self.cur_open:
                if self.pend >= self.block_count:
                    break           # every block is held by this burst
                if not (ipvsflow_load_acquire(&bd.hdr.bh1.block_status) & TP_STATUS_USER):
                    break
                self.cur_open = True
                self.left = bd.hdr.bh1.num_pkts
                self.next_pkt = <uint8_t *> bd + bd.hdr.bh1.offset_to_first_pkt
                pf = self.next_pkt
                while pf < self.next_pkt + PREFETCH_AHEAD and pf + 64 <= block_end:
                    ipvsflow_prefetchw(pf)
                    pf += 64
            left = self.left
            nxt = self.next_pkt
            while left and p < p_end:
                h = <tpacket3_hdr *> nxt
                # the block's packets lie one after the other: fetch a few slots ahead
                if nxt <= pf_last:
                    ipvsflow_prefetch3(nxt + PREFETCH_AHEAD)
                nxt += h.tp_next_offset
                left -= 1
                pt = (<sockaddr_ll *> (<uint8_t *> h + sll_off)).sll_pkttype
                if pt != PACKET_HOST:
                    if pt == PACKET_OUTGOING:
                        outgoing += 1
                        continue
                    if not (pt == PACKET_OTHERHOST and otherhost):
                        not_host += 1
                        continue
                snap = h.tp_snaplen
                wlen = h.tp_len
                st = h.tp_status
                if ipvsflow_likely(snap == wlen and
                                   not (st & (TP_STATUS_VLAN_VALID | TP_STATUS_CSUMNOTREADY))):
                    # the common case: whole frame, no tag to restore, checksum complete
                    _fill_one(p, h, snap, snap, idx, tail)
                    nbytes += snap
                    idx += 1
                    p += 1
                    continue
                if snap < wlen:
                    truncated += 1
                    continue
                if st & TP_STATUS_VLAN_VALID:
                    # the kernel moved the outer VLAN tag into the header: back into the
                    # frame (the ring leaves room before it), so parsing, the capture and
                    # the forwarded frame carry the VLAN the packet came in on
                    if h.tp_mac < sll_off + sizeof(sockaddr_ll) + 4:
                        self.vlan_no_room += 1
                        continue
                    _restore_vlan(h)
                    self.vlan_restored += 1
                    snap = h.tp_snaplen
                    wlen = h.tp_len
                _fill_one(p, h, snap, wlen, idx, tail)
                if st & TP_STATUS_CSUMNOTREADY:
                    # checksum offload between namespaces (veth) leaves the L4 checksum for
                    # the device to fill in: completed now, so what is forwarded carries it
                    partial += 1
                    _complete_csum(p)
                nbytes += wlen
                idx += 1
                p += 1
            self.left = left
            self.next_pkt = nxt
        n = <uint32_t> (p - b.pkts)
        self.bytes += nbytes
        self.outgoing += outgoing
        self.not_host += not_host
        self.truncated += truncated
        self.csum_partial += partial
        self.packets += n - start
        b.count = n
        return n - start

    cdef uint32_t release_blocks(self) noexcept nogil:
        cdef uint32_t k
        cdef uint32_t i
        if self.ring == NULL:
            return 0
        if self.cur_open and self.left == 0:
            self.cur_open = False
            self.pend += 1
            self.cur = (self.cur + 1) % self.block_count
        k = self.pend
        for i in range(k):
            ipvsflow_store_release(
                &_block(self.ring, self.block_size,
                        (self.cur + self.block_count - k + i) % self.block_count).hdr.bh1.block_status,
                TP_STATUS_KERNEL)
        self.pend = 0
        self.blocks += k
        return k

    def read(self, PacketBatch batch not None, uint64_t first_index=0):
        """Fill ``batch`` (from its start) with ready packets; returns how many. Call
        ``release()`` when they have been processed."""
        cdef uint32_t n
        with nogil:
            n = self.fill(batch, 0, first_index)
        batch.owner = self
        return n

    def release(self):
        """Hand the blocks read so far back to the kernel; returns how many."""
        return self.release_blocks()

    def wait(self, int timeout_ms):
        """poll() the socket; True when a block is ready (or an error is pending)."""
        cdef pollfd pf
        cdef int r
        pf.fd = self.fd
        pf.events = POLLIN
        pf.revents = 0
        with nogil:
            r = poll(&pf, 1, timeout_ms)
        return r > 0

    def kernel_stats(self):
        """PACKET_STATISTICS accumulated since the socket opened: ``packets`` (seen by the
        socket, drops included), ``drops`` (ring full) and ``freeze_q`` (queue freezes)."""
        cdef tpacket_stats_v3 st
        cdef socklen_t ln = sizeof(st)
        if self.fd >= 0:
            memset(&st, 0, sizeof(st))
            if getsockopt(self.fd, SOL_PACKET, PACKET_STATISTICS, &st, &ln) == 0:
                self.k_packets += st.tp_packets
                self.k_drops += st.tp_drops
                self.k_freeze += st.tp_freeze_q_cnt
        return {"packets": self.k_packets, "drops": self.k_drops, "freeze_q": self.k_freeze}

    def counters(self):
        """What the reader did with the frames, plus the kernel's statistics."""
        k = self.kernel_stats()
        return {"packets": self.packets, "bytes": self.bytes, "outgoing": self.outgoing,
                "not_host": self.not_host, "truncated": self.truncated,
                "csum_partial": self.csum_partial, "blocks": self.blocks,
                "vlan_restored": self.vlan_restored, "vlan_no_room": self.vlan_no_room,
                "kernel_packets": k["packets"], "kernel_drops": k["drops"],
                "kernel_freeze_q": k["freeze_q"]}

    def __repr__(self):
        return (f"<RxRing {self.ifname} {self.block_count}x{self.block_size} B "
                f"retire {self.retire_ms} ms{' promisc' if self.promisc else ''}"
                f"{' fanout %s/%s' % self.fanout if self.fanout else ''}>")


def poll_fds(fds, int timeout_ms):
    """poll() a list of file descriptors for input without the GIL; returns the list of those
    that are readable (or have an error/hangup pending)."""
    cdef Py_ssize_t n = len(fds)
    cdef pollfd *pf = <pollfd *> calloc(max(n, 1), sizeof(pollfd))
    cdef Py_ssize_t i
    cdef int r
    if pf == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            pf[i].fd = int(fds[i])
            pf[i].events = POLLIN
        with nogil:
            r = poll(pf, <unsigned long> n, timeout_ms)
        if r < 0:
            if errno == EINTR:
                return []
            raise OSError(errno, os.strerror(errno))
        return [fds[i] for i in range(n) if pf[i].revents]
    finally:
        free(pf)


cdef class Poller:
    """poll() on a fixed set of file descriptors, without the GIL and without allocating per
    call: ``Poller(fds).wait(timeout_ms)`` returns a bit mask of the ready ones (bit i for
    fds[i]; at most 64)."""
    cdef pollfd fds[64]
    cdef int n

    def __init__(self, fds):
        fds = [int(f) for f in fds]
        if not 1 <= len(fds) <= 64:
            raise ValueError("Poller takes 1 to 64 file descriptors")
        self.n = len(fds)
        for i, f in enumerate(fds):
            self.fds[i].fd = f
            self.fds[i].events = POLLIN
            self.fds[i].revents = 0

    def wait(self, int timeout_ms):
        cdef int r, i
        cdef uint64_t mask = 0
        with nogil:
            r = poll(self.fds, <unsigned long> self.n, timeout_ms)
        if r < 0:
            if errno == EINTR:
                return 0
            raise OSError(errno, os.strerror(errno))
        if r:
            for i in range(self.n):
                if self.fds[i].revents:
                    mask |= (<uint64_t> 1) << i
        return mask


cdef class TxPort:
    """Transmit Ethernet frames on one interface.

    ``TxPort(ifname, *, mode="sendmmsg", qdisc_bypass=False, queue=256, ring_frames=1024,
    sndbuf=4 MiB)``. In ``sendmmsg`` mode ``put`` queues a pointer to the frame (zero copy) and
    ``flush`` sends the queue in one system call; in ``ring`` mode frames are copied into a
    PACKET_TX_RING and ``flush`` asks the kernel to send them.
    """

    def __cinit__(self):
        self.fd = -1
        self.msgs = NULL
        self.iovs = NULL
        self.ring = NULL

    def __init__(self, str ifname, *, str mode="sendmmsg", bint qdisc_bypass=False,
                 uint32_t queue=256, uint32_t ring_frames=1024, int sndbuf=4 << 20):
        cdef tpacket_req req
        cdef void *m
        cdef uint32_t i
        cdef mmsghdr *mm
        cdef iovec *io
        idx, mtu, mac, hatype = interface_info(ifname)
        if hatype != ARPHRD_ETHER:
            raise LiveIOError(0, f"{ifname}: hardware type {hatype} is not Ethernet")
        if mode not in ("sendmmsg", "ring"):
            raise ValueError(f"TX mode {mode!r} (known: sendmmsg, ring)")
        if queue < 1 or queue > 4096:
            raise ValueError(f"queue {queue} out of range 1..4096")
        self.ifname = ifname
        self.ifindex = idx
        self.mtu = mtu
        self.mac = bytes(mac)
        memcpy(self.mac_c, <const char *> self.mac, 6)
        self.mode = mode
        self.qdisc_bypass = qdisc_bypass
        self.fd = _open_packet_socket(ifname)
        # protocol 0: the socket never receives; the kernel reads the ethertype from the frame
        setsockopt(self.fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(int))
        if mode == "ring":
            _setint(self.fd, SOL_PACKET, PACKET_VERSION, TPACKET_V2, "selecting TPACKET_V2", ifname)
            # a malformed frame is skipped rather than stalling the ring
            _setint(self.fd, SOL_PACKET, PACKET_LOSS, 1, "setting PACKET_LOSS", ifname)
            fs = 1
            need = IPVSFLOW_TPACKET_ALIGN(sizeof(tpacket2_hdr)) + mtu + 14 + 4
            while fs < need:
                fs <<= 1
            fs = max(fs, 2048)
            page = os.sysconf("SC_PAGE_SIZE")
            bs = max(fs, page)
            if ring_frames < 8 or ring_frames > 1 << 20:
                raise ValueError(f"ring_frames {ring_frames} out of range 8..1048576")
            per_block = bs // fs
            nblocks = (ring_frames + per_block - 1) // per_block
            memset(&req, 0, sizeof(req))
            req.tp_block_size = <unsigned int> bs
            req.tp_block_nr = <unsigned int> nblocks
            req.tp_frame_size = <unsigned int> fs
            req.tp_frame_nr = <unsigned int> (nblocks * per_block)
            if setsockopt(self.fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)) != 0:
                _raise("setting up the transmit ring", ifname, errno)
            self.frame_size = <uint32_t> fs
            self.frame_nr = req.tp_frame_nr
            self.ring_len = <size_t> bs * nblocks
            m = mmap(NULL, self.ring_len, PROT_READ | PROT_WRITE, MAP_SHARED, self.fd, 0)
            if m == MAP_FAILED:
                _raise("mapping the transmit ring", ifname, errno)
            self.ring = <uint8_t *> m
            self.head = 0
            self.pending = 0
        _bind(self.fd, idx, 0, ifname)
        if qdisc_bypass:
            _setint(self.fd, SOL_PACKET, PACKET_QDISC_BYPASS, 1, "setting PACKET_QDISC_BYPASS", ifname)
        self.qcap = queue
        self.qlen = 0
        self._keep = []
        self.msgs = calloc(queue, sizeof(mmsghdr))
        self.iovs = calloc(queue, sizeof(iovec))
        if self.msgs == NULL or self.iovs == NULL:
            raise MemoryError()
        mm = <mmsghdr *> self.msgs
        io = <iovec *> self.iovs
        for i in range(queue):
            mm[i].msg_hdr.msg_iov = &io[i]
            mm[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        free(self.msgs)
        free(self.iovs)
        self.msgs = NULL
        self.iovs = NULL
        if self.ring != NULL:
            munmap(self.ring, self.ring_len)
            self.ring = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def close(self):
        if self.fd >= 0:
            self.flush_queue()
        if self.ring != NULL:
            munmap(self.ring, self.ring_len)
            self.ring = NULL
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def fileno(self):
        return self.fd

    cdef int put(self, const uint8_t *frame, uint32_t length) noexcept nogil:
        cdef tpacket2_hdr *h
        cdef iovec *io
        cdef uint32_t off
        if self.fd < 0:
            self.errors += 1
            return 1
        # the MTU bounds the L3 packet: 14 B Ethernet header (18 with a VLAN tag)
        if length < 14:
            self.errors += 1
            return 1
        off = 18 if ((frame[12] == 0x81 and frame[13] == 0x00) or
                     (frame[12] == 0x88 and frame[13] == 0xa8)) else 14
        if length > self.mtu + off:
            self.too_big += 1
            return 1
        if self.ring == NULL:
            if self.qlen == self.qcap:
                self.flush_queue()
            io = (<iovec *> self.iovs) + self.qlen
            io.iov_base = <void *> frame
            io.iov_len = length
            self.qlen += 1
            return 0
        h = <tpacket2_hdr *> (self.ring + <size_t> self.head * self.frame_size)
        if ipvsflow_load_acquire(&h.tp_status) != TP_STATUS_AVAILABLE:
            self.flush_queue()
            if ipvsflow_load_acquire(&h.tp_status) != TP_STATUS_AVAILABLE:
                self.ring_full += 1
                return 1
        off = <uint32_t> (IPVSFLOW_TPACKET_ALIGN(sizeof(tpacket2_hdr)))
        memcpy(<uint8_t *> h + off, frame, length)
        h.tp_len = length
        self.bytes += length
        ipvsflow_store_release(&h.tp_status, TP_STATUS_SEND_REQUEST)
        self.head = (self.head + 1) % self.frame_nr
        self.pending += 1
        self.qlen += 1
        return 0

    cdef uint32_t flush_queue(self) noexcept nogil:
        cdef uint32_t off = 0
        cdef uint32_t sent = 0
        cdef uint32_t i
        cdef int r
        cdef iovec *io
        cdef mmsghdr *mm
        if self.qlen == 0 or self.fd < 0:
            return 0
        if self.ring != NULL:
            while True:
                r = <int> c_send(self.fd, NULL, 0, 0)
                if r < 0 and errno == EINTR:
                    continue
                break
            if r < 0:
                self.last_errno = errno
                self.errors += 1
            # frames the kernel has finished with are AVAILABLE again; count what went out
            sent = self.qlen
            self.packets += sent
            self.pending = 0
            self.qlen = 0
            return sent
        mm = <mmsghdr *> self.msgs
        while off < self.qlen:
            r = sendmmsg(self.fd, mm + off, self.qlen - off, 0)
            if r < 0:
                if errno == EINTR:
                    continue
                self.last_errno = errno
                self.errors += 1
                off += 1            # skip the frame the kernel refused
                continue
            io = (<iovec *> self.iovs) + off
            for i in range(<uint32_t> r):
                self.bytes += io[i].iov_len
            off += <uint32_t> r
            sent += <uint32_t> r
        self.packets += sent
        self.qlen = 0
        return sent

    def send(self, frame):
        """Queue one frame (bytes-like; copied in ring mode, held until it is sent in sendmmsg
        mode). Returns False when it was dropped (too big)."""
        cdef const uint8_t[::1] v = memoryview(frame).cast("B")
        if v.shape[0] == 0:
            raise ValueError("empty frame")
        if self.ring == NULL and self.qlen == self.qcap:
            self.flush()
        ok = self.put(&v[0], <uint32_t> v.shape[0]) == 0
        if ok and self.ring == NULL:
            self._keep.append(frame)
        return ok

    def flush(self):
        """Transmit the queued frames; returns how many the kernel accepted."""
        cdef uint32_t n
        with nogil:
            n = self.flush_queue()
        self._keep.clear()
        return n

    def counters(self):
        return {"packets": self.packets, "bytes": self.bytes, "too_big": self.too_big,
                "errors": self.errors, "ring_full": self.ring_full,
                "last_error": os.strerror(self.last_errno) if self.last_errno else ""}

    def __repr__(self):
        return f"<TxPort {self.ifname} {self.mode} mtu {self.mtu}>"
