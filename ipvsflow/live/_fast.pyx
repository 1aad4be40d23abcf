"""The live director's per-packet C parts: the AF_PACKET sink and decision counting.

``AfPacketSink`` is where a Forwarder writes in live mode. It is a PcapWriter as far as the
Forwarder is concerned (its ``write_raw`` is called once per forwarded frame, in C), but instead
of writing a file it picks the egress interface and the next hop's MAC the way the director's
kernel would, then queues the frame on that interface's TxPort:

* a frame whose destination MAC the forwarder set to a real server's (DR, or NAT/TUN towards a
  server whose MAC is known) leaves through the interface that neighbour is on;
* otherwise (the destination MAC is still the director's own: NAT replies, ...) the route to
  the frame's destination address is looked up in a copy of the kernel's main routing table
  (longest prefix, then metric), and the next hop (gateway, or the destination when on-link) is
  looked up in a copy of the kernel's neighbour table. A missing neighbour drops the frame
  (``neigh_miss``) and records the address, so the director can have the kernel resolve it.

Source MAC: the egress interface's. The tables are replaced wholesale from Python
(``set_routes``, ``set_neighbours``); lookups are small open-addressing hashes and a short
linear scan of routes, all without Python objects.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memset, memcmp

import numpy as np
import socket

from ipvsflow.io.writer cimport PcapWriter
from ipvsflow.io.afpacket cimport TxPort
from ipvsflow.engine.defs cimport decision_t

cdef enum:
    MAX_PORTS = 64
    MAX_MISSES = 64
    MAX_PENDING = 256           # frames held while their next hop is resolved (the kernel's
                                # arp_queue holds a few per neighbour; this is shared)

ctypedef struct route_t:
    uint64_t net[2]
    uint64_t mask[2]
    uint8_t gw[16]
    int32_t port            # index of the TxPort, -1: an interface the director does not use
    uint32_t ifindex
    uint8_t has_gw
    uint8_t plen            # over the 128-bit (IPv4-mapped) address
    uint8_t kind            # 0 unicast, 1 unreachable/blackhole/prohibit

ctypedef struct nent:       # neighbour: (address, ifindex) -> MAC
    uint8_t addr[16]
    uint32_t ifindex
    uint8_t mac[6]
    uint8_t used
    uint8_t _pad

ctypedef struct ment:       # MAC -> port
    uint64_t mac
    int32_t port
    uint8_t used

COUNTERS = ("frames", "queued", "dry_run", "no_route", "route_foreign", "route_reject",
            "neigh_miss", "not_ip", "bad_frame", "neigh_held", "neigh_released")


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    x ^= x >> 33
    x *= 0xff51afd7ed558ccdULL
    x ^= x >> 33
    x *= 0xc4ceb9fe1a85ec53ULL
    x ^= x >> 33
    return x


cdef inline uint64_t _nhash(const uint8_t *a, uint32_t ifindex) noexcept nogil:
    cdef uint64_t x, y
    memcpy(&x, a, 8)
    memcpy(&y, a + 8, 8)
    return _mix(x * 0x9E3779B97F4A7C15ULL ^ _mix(y ^ ifindex))


cdef inline uint64_t _mac64(const uint8_t *m) noexcept nogil:
    return ((<uint64_t> m[0] << 40) | (<uint64_t> m[1] << 32) | (<uint64_t> m[2] << 24) |
            (<uint64_t> m[3] << 16) | (<uint64_t> m[4] << 8) | <uint64_t> m[5])


cdef uint32_t _pow2(uint32_t n) noexcept nogil:
    cdef uint32_t c = 16
    while c < 2 * n + 2:
        c <<= 1
    return c


def _addr16(addr):
    a = str(addr)
    if ":" in a:
        return socket.inet_pton(socket.AF_INET6, a)
    return b"\x00" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, a)


def _text16(bytes a):
    if a[:12] == b"\x00" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, a[12:])
    return socket.inet_ntop(socket.AF_INET6, a)


cdef class AfPacketSink(PcapWriter):
    """Forwarder sink that transmits on AF_PACKET ports (see the module docstring).

    ``AfPacketSink(ports, dry_run=False)``: ``ports`` is a list of TxPort (one per interface
    the director uses). With ``dry_run`` every lookup is made and counted but nothing is sent.
    """
    cdef list _ports
    cdef void *_pp[MAX_PORTS]
    cdef uint8_t _own[MAX_PORTS][6]
    cdef uint32_t _ifx[MAX_PORTS]
    cdef uint32_t _np
    cdef route_t *_routes
    cdef uint32_t _nroutes
    cdef nent *_neigh
    cdef uint32_t _ncap
    cdef uint32_t _nneigh
    cdef ment *_macs
    cdef uint32_t _mcap
    cdef uint8_t _miss[MAX_MISSES][16]
    cdef uint32_t _missif[MAX_MISSES]
    cdef uint32_t _nmiss
    cdef readonly bint dry_run
    cdef uint64_t _c[11]
    cdef uint8_t *_held[MAX_PENDING]
    cdef uint32_t _heldlen[MAX_PENDING]
    cdef int64_t _heldts[MAX_PENDING]
    cdef uint32_t _nheld
    cdef bint _holding

    def __init__(self, ports, bint dry_run=False):
        # deliberately not PcapWriter.__init__: nothing is written to a file
        cdef TxPort p
        cdef uint32_t i
        ports = list(ports)
        if not ports:
            raise ValueError("AfPacketSink needs at least one TxPort")
        if len(ports) > MAX_PORTS:
            raise ValueError(f"at most {MAX_PORTS} interfaces")
        self._ports = ports
        self._np = <uint32_t> len(ports)
        for i in range(self._np):
            p = <TxPort> ports[i]
            self._pp[i] = <void *> p
            memcpy(self._own[i], <const char *> p.mac, 6)
            self._ifx[i] = p.ifindex
        self.linktype = 1
        self.snaplen = 262144
        self._closed = False
        self.dry_run = dry_run
        memset(self._c, 0, sizeof(self._c))
        self._nmiss = 0
        self._nheld = 0
        self._holding = True

    def __dealloc__(self):
        cdef uint32_t i
        free(self._routes)
        free(self._neigh)
        free(self._macs)
        for i in range(self._nheld):
            free(self._held[i])
        self._nheld = 0

    @property
    def ports(self):
        return list(self._ports)

    # -- tables ---------------------------------------------------------------------------

    cdef int _port_of(self, uint32_t ifindex) noexcept nogil:
        cdef uint32_t i
        for i in range(self._np):
            if self._ifx[i] == ifindex:
                return <int> i
        return -1

    def set_routes(self, routes):
        """Replace the routing table: ``routes`` is a list of dicts with ``dst`` (address text),
        ``plen`` (prefix length of that family), ``ifindex``, ``gateway`` (text or None),
        ``metric`` and ``kind`` ("unicast" or anything else for reject routes)."""
        rows = []
        for r in routes:
            a = _addr16(r["dst"])
            v4 = ":" not in str(r["dst"])
            plen = int(r["plen"]) + (96 if v4 else 0)
            if not 0 <= plen <= 128:
                raise ValueError(f"bad prefix length in route {r!r}")
            gw = _addr16(r["gateway"]) if r.get("gateway") else None
            rows.append((plen, int(r.get("metric", 0)), a, int(r.get("ifindex", 0)), gw,
                         r.get("kind", "unicast") != "unicast"))
        # longest prefix first, then lowest metric (the kernel's choice among equals)
        rows.sort(key=lambda x: (-x[0], x[1]))
        cdef route_t *t = <route_t *> calloc(max(len(rows), 1), sizeof(route_t))
        if t == NULL:
            raise MemoryError()
        cdef uint32_t i = 0
        cdef uint8_t m[16]
        cdef uint8_t net[16]
        cdef int j
        cdef bytes ab
        for plen, metric, ab, ifindex, gw, reject in rows:
            memset(m, 0, 16)
            for j in range(16):
                if plen >= (j + 1) * 8:
                    m[j] = 0xff
                elif plen > j * 8:
                    m[j] = <uint8_t> ((0xff << (8 - (plen - j * 8))) & 0xff)
            for j in range(16):
                net[j] = (<const uint8_t *> ab)[j] & m[j]
            memcpy(t[i].net, net, 16)
            memcpy(t[i].mask, m, 16)
            t[i].plen = <uint8_t> plen
            t[i].ifindex = <uint32_t> ifindex
            t[i].port = self._port_of(<uint32_t> ifindex)
            t[i].kind = 1 if reject else 0
            if gw is not None:
                memcpy(t[i].gw, <const char *> gw, 16)
                t[i].has_gw = 1
            i += 1
        free(self._routes)
        self._routes = t
        self._nroutes = i

    def set_neighbours(self, neighbours):
        """Replace the neighbour table: ``neighbours`` is a list of (address text, ifindex,
        mac) with mac as 6 bytes or "aa:bb:..". Neighbours on the director's interfaces also
        map their MAC to that interface (for frames the forwarder addressed already)."""
        rows = []
        for addr, ifindex, mac in neighbours:
            if isinstance(mac, str):
                mac = bytes.fromhex(mac.replace(":", ""))
            mac = bytes(mac)
            if len(mac) != 6:
                raise ValueError(f"bad MAC address for neighbour {addr}")
            rows.append((_addr16(addr), int(ifindex), mac))
        cdef uint32_t ncap = _pow2(<uint32_t> len(rows))
        cdef nent *nt = <nent *> calloc(ncap, sizeof(nent))
        cdef ment *mt = <ment *> calloc(ncap, sizeof(ment))
        if nt == NULL or mt == NULL:
            free(nt)
            free(mt)
            raise MemoryError()
        cdef bytes a, mb
        cdef uint32_t h, ifx
        cdef uint64_t mk
        cdef int port
        cdef uint32_t count = 0
        for a, ifindex, mb in rows:
            ifx = <uint32_t> ifindex
            h = <uint32_t> _nhash(<const uint8_t *> a, ifx) & (ncap - 1)
            while nt[h].used and not (memcmp(nt[h].addr, <const char *> a, 16) == 0
                                      and nt[h].ifindex == ifx):
                h = (h + 1) & (ncap - 1)
            if not nt[h].used:
                count += 1
            memcpy(nt[h].addr, <const char *> a, 16)
            nt[h].ifindex = ifx
            memcpy(nt[h].mac, <const char *> mb, 6)
            nt[h].used = 1
            port = self._port_of(ifx)
            if port >= 0:
                mk = _mac64(<const uint8_t *> mb)
                h = <uint32_t> _mix(mk) & (ncap - 1)
                while mt[h].used and mt[h].mac != mk:
                    h = (h + 1) & (ncap - 1)
                mt[h].mac = mk
                mt[h].port = port
                mt[h].used = 1
        free(self._neigh)
        free(self._macs)
        self._neigh = nt
        self._macs = mt
        self._ncap = ncap
        self._mcap = ncap
        self._nneigh = count

    cdef const nent *_nlookup(self, const uint8_t *a, uint32_t ifindex) noexcept nogil:
        cdef uint32_t h
        if self._neigh == NULL:
            return NULL
        h = <uint32_t> _nhash(a, ifindex) & (self._ncap - 1)
        while self._neigh[h].used:
            if self._neigh[h].ifindex == ifindex and memcmp(self._neigh[h].addr, a, 16) == 0:
                return &self._neigh[h]
            h = (h + 1) & (self._ncap - 1)
        return NULL

    cdef int _mlookup(self, const uint8_t *mac) noexcept nogil:
        cdef uint64_t mk
        cdef uint32_t h
        if self._macs == NULL:
            return -1
        mk = _mac64(mac)
        h = <uint32_t> _mix(mk) & (self._mcap - 1)
        while self._macs[h].used:
            if self._macs[h].mac == mk:
                return self._macs[h].port
            h = (h + 1) & (self._mcap - 1)
        return -1

    cdef const route_t *_route(self, const uint8_t *a) noexcept nogil:
        cdef uint64_t w0, w1
        cdef uint32_t i
        cdef const route_t *r
        memcpy(&w0, a, 8)
        memcpy(&w1, a + 8, 8)
        for i in range(self._nroutes):
            r = &self._routes[i]
            if (w0 & r.mask[0]) == r.net[0] and (w1 & r.mask[1]) == r.net[1]:
                return r
        return NULL

    cdef void _note_miss(self, const uint8_t *a, uint32_t ifindex) noexcept nogil:
        cdef uint32_t i
        for i in range(self._nmiss):
            if self._missif[i] == ifindex and memcmp(self._miss[i], a, 16) == 0:
                return
        if self._nmiss < MAX_MISSES:
            memcpy(self._miss[self._nmiss], a, 16)
            self._missif[self._nmiss] = ifindex
            self._nmiss += 1

    # -- the PcapWriter interface the Forwarder calls ----------------------------------------

    cdef int write_raw(self, const uint8_t *data, uint32_t caplen, uint32_t wirelen,
                       int64_t ts_ns) except -1:
        # the Forwarder's frames live in writable memory (the receive ring, or its own buffer)
        cdef uint8_t *f = <uint8_t *> data
        cdef uint16_t et
        cdef uint32_t l3 = 14
        cdef int port = -1
        cdef uint8_t a[16]
        cdef const route_t *r
        cdef const nent *ne
        cdef const uint8_t *nh
        cdef uint32_t i
        cdef bint own = False
        self._c[0] += 1
        if caplen < 14 or caplen != wirelen:
            self._c[8] += 1
            return 0
        for i in range(self._np):
            if memcmp(f, self._own[i], 6) == 0:
                own = True
                break
        if not own:
            port = self._mlookup(f)
        if port < 0:
            et = (f[12] << 8) | f[13]
            if et == 0x8100 and caplen >= 18:
                et = (f[16] << 8) | f[17]
                l3 = 18
            if et == 0x0800 and caplen >= l3 + 20:
                memset(a, 0, 10)
                a[10] = 0xff
                a[11] = 0xff
                memcpy(a + 12, f + l3 + 16, 4)
            elif et == 0x86dd and caplen >= l3 + 40:
                memcpy(a, f + l3 + 24, 16)
            else:
                self._c[7] += 1
                return 0
            r = self._route(a)
            if r == NULL:
                self._c[3] += 1
                return 0
            if r.kind != 0:
                self._c[5] += 1
                return 0
            if r.port < 0:
                self._c[4] += 1
                return 0
            if r.has_gw:
                nh = &r.gw[0]
            else:
                nh = &a[0]
            ne = self._nlookup(nh, r.ifindex)
            if ne == NULL:
                self._note_miss(nh, r.ifindex)
                if self._holding and self._nheld < MAX_PENDING:
                    # like the kernel's neighbour queue: kept until the next hop resolves
                    self._held[self._nheld] = <uint8_t *> malloc(caplen)
                    if self._held[self._nheld] != NULL:
                        memcpy(self._held[self._nheld], f, caplen)
                        self._heldlen[self._nheld] = caplen
                        self._heldts[self._nheld] = ts_ns
                        self._nheld += 1
                        self._c[9] += 1
                        return 0
                self._c[6] += 1
                return 0
            memcpy(f, ne.mac, 6)
            port = r.port
        memcpy(f + 6, self._own[port], 6)
        if self.dry_run:
            self._c[2] += 1
            return 0
        (<TxPort> self._pp[port]).put(f, caplen)
        self._c[1] += 1
        return 0

    cdef int _flush(self) except -1:
        self.flush_ports()
        return 0

    cpdef uint32_t flush_ports(self):
        """Transmit what is queued on every port; returns the number of frames sent."""
        cdef uint32_t i, n = 0
        for i in range(self._np):
            n += (<TxPort> self._pp[i]).flush_queue()
        return n

    def flush(self):
        self.flush_ports()

    def close(self):
        if not self._closed:
            self.flush_ports()
            self._closed = True

    def retry_held(self, int64_t now_ns, int64_t max_age_ns):
        """Send the frames held for an unresolved next hop whose neighbour is now known; drop
        (as neigh_miss) those older than ``max_age_ns``; returns (sent, still held)."""
        cdef uint32_t i, keep = 0
        cdef uint64_t before
        cdef uint32_t sent = 0
        cdef uint8_t *f
        self._holding = False
        try:
            for i in range(self._nheld):
                f = self._held[i]
                before = self._c[1] + self._c[2]
                if self._resolvable(f, self._heldlen[i]):
                    self.write_raw(f, self._heldlen[i], self._heldlen[i], self._heldts[i])
                    sent += 1
                    self._c[10] += 1
                    self.flush_ports()
                    free(f)
                elif now_ns - self._heldts[i] > max_age_ns:
                    self._c[6] += 1
                    free(f)
                else:
                    self._held[keep] = f
                    self._heldlen[keep] = self._heldlen[i]
                    self._heldts[keep] = self._heldts[i]
                    keep += 1
            self._nheld = keep
        finally:
            self._holding = True
        return sent, keep

    @property
    def held(self):
        """Frames waiting for a next hop's MAC."""
        return self._nheld

    cdef bint _resolvable(self, const uint8_t *f, uint32_t caplen) noexcept:
        cdef uint16_t et
        cdef uint32_t l3 = 14
        cdef uint8_t a[16]
        cdef const route_t *r
        et = (f[12] << 8) | f[13]
        if et == 0x8100 and caplen >= 18:
            et = (f[16] << 8) | f[17]
            l3 = 18
        if et == 0x0800 and caplen >= l3 + 20:
            memset(a, 0, 10)
            a[10] = 0xff
            a[11] = 0xff
            memcpy(a + 12, f + l3 + 16, 4)
        elif et == 0x86dd and caplen >= l3 + 40:
            memcpy(a, f + l3 + 24, 16)
        else:
            return True         # write_raw will count it
        r = self._route(a)
        if r == NULL or r.kind != 0 or r.port < 0:
            return True
        if r.has_gw:
            return self._nlookup(r.gw, r.ifindex) != NULL
        return self._nlookup(a, r.ifindex) != NULL

    def take_misses(self):
        """Next hops that had no neighbour entry since the last call: [(address, ifindex)]."""
        cdef uint32_t i
        out = []
        for i in range(self._nmiss):
            out.append((_text16(PyBytes_FromStringAndSize(<char *> self._miss[i], 16)),
                        self._missif[i]))
        self._nmiss = 0
        return out

    def lookup(self, addr):
        """(ifindex, next hop, MAC or None) the sink would use for a destination address, or
        None without a usable route (for diagnostics and tests)."""
        cdef bytes a = _addr16(addr)
        cdef const route_t *r = self._route(<const uint8_t *> a)
        cdef const nent *ne
        if r == NULL or r.kind != 0:
            return None
        nh = PyBytes_FromStringAndSize(<char *> r.gw, 16) if r.has_gw else a
        ne = self._nlookup(<const uint8_t *> nh, r.ifindex)
        mac = None if ne == NULL else ":".join(f"{b:02x}" for b in ne.mac[:6])
        return (r.ifindex, _text16(nh), mac)

    def counters(self):
        c = {name: int(self._c[i]) for i, name in enumerate(COUNTERS)}
        c["neighbours"] = int(self._nneigh)
        c["routes"] = int(self._nroutes)
        return c

    def __repr__(self):
        return f"<AfPacketSink {', '.join(p.ifname for p in self._ports)}{' dry-run' if self.dry_run else ''}>"


def count_decisions(decisions, uint64_t[::1] counts):
    """Add one per decision to ``counts[action * 64 + reason]`` (actions < 8, reasons < 64).
    ``decisions`` is a contiguous array of decision records (Engine.process output)."""
    cdef Py_buffer view
    cdef const decision_t *d
    cdef Py_ssize_t n, i
    cdef uint32_t k
    if counts.shape[0] < 512:
        raise ValueError("counts needs 512 slots")
    # the buffer protocol directly: no numpy call per burst
    PyObject_GetBuffer(decisions, &view, PyBUF_SIMPLE)
    try:
        if view.len % sizeof(decision_t):
            raise ValueError(f"decision buffer of {view.len} bytes is not whole records")
        d = <const decision_t *> view.buf
        n = view.len // sizeof(decision_t)
        with nogil:
            for i in range(n):
                k = ((d[i].action & 7) << 6) | (d[i].reason & 63)
                counts[k] += 1
    finally:
        PyBuffer_Release(&view)
