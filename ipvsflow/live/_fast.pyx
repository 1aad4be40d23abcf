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
(``set_routes``, ``set_neighbours``, ``set_vlans``); lookups are small open-addressing hashes
and a short linear scan of routes, all without Python objects.

VLANs: the receive ring puts back the 802.1Q/802.1ad tag the kernel took out of the frame, so
a forwarded frame still carries the VLAN it came in on. Its outer tag is then set for the
egress the route (or the neighbour) names:

* a VLAN interface on one of the director's interfaces (``set_vlans``): tagged with its VLAN id
  (retagged, or a tag inserted), transmitted on the interface it sits on;
* an interface that has VLAN interfaces: untagged (its own routes are the untagged network);
* an interface without VLAN interfaces: the frame keeps its tag when it leaves through the
  interface it came in on (a one-armed director on a trunk, the kernel knowing nothing of the
  VLANs), and loses it anywhere else.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memcpy, memmove, memset, memcmp

import os
import socket

from ipvsflow.io.writer cimport PcapWriter, frame_rec
from ipvsflow.io.afpacket cimport RxRing, TxPort
from ipvsflow.io.batch cimport PacketBatch
from ipvsflow.engine.defs cimport decision_t
from ipvsflow.engine.core cimport engine_burst_fn
from ipvsflow.forward.xmit cimport forward_burst_fn
from cpython.pycapsule cimport PyCapsule_GetPointer

cdef enum:
    MAX_PORTS = 64
    MAX_MISSES = 64
    MAX_PENDING = 256           # frames held while their next hop is resolved (the kernel's
                                # arp_queue holds a few per neighbour; this is shared)
    MAX_EGRESS = MAX_PORTS + 4096
    TAG_BUF = 256 << 10         # frames that needed a tag inserted, until the ports are flushed

ctypedef struct egress_t:   # where frames leave: a port, or a VLAN interface on one
    int32_t port            # index of the TxPort
    uint32_t ifindex
    uint32_t vtag           # 0: the port itself; else TPID << 16 | VLAN id
    uint8_t mac[6]          # source MAC
    uint8_t has_vlans       # a port with VLAN interfaces on it

ctypedef struct route_t:
    uint64_t net[2]
    uint64_t mask[2]
    uint8_t gw[16]
    int32_t eg              # egress index, -1: an interface the director does not use
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

ctypedef struct ment:       # MAC -> egress
    uint64_t mac
    int32_t eg              # -2: the MAC is on several egresses (the route decides)
    uint8_t used

COUNTERS = ("frames", "queued", "dry_run", "no_route", "route_foreign", "route_reject",
            "neigh_miss", "not_ip", "bad_frame", "neigh_held", "neigh_released",
            "vlan_tagged", "vlan_retagged", "vlan_untagged")


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
    # a MAC as a table key: its 6 bytes in a word (two loads; the byte order is only ever
    # compared with keys made here)
    cdef uint32_t hi = 0
    cdef uint16_t lo = 0
    memcpy(&hi, m, 4)
    memcpy(&lo, m + 4, 2)
    return (<uint64_t> hi << 16) | lo


cdef inline uint32_t _l3_offset(const uint8_t *f, uint32_t caplen, uint16_t *et) noexcept nogil:
    """Offset of the network header after the MACs and any VLAN tags; et = its ethertype."""
    cdef uint32_t off = 12
    et[0] = (f[12] << 8) | f[13]
    while (et[0] == 0x8100 or et[0] == 0x88a8) and caplen >= off + 6:
        off += 4
        et[0] = (f[off] << 8) | f[off + 1]
    return off + 2


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
    cdef uint32_t _np
    cdef egress_t *_eg
    cdef uint32_t _neg
    cdef int32_t _in_port           # port the frames being written came in on (-1: unknown)
    cdef uint8_t *_tagbuf
    cdef size_t _tagcap
    cdef size_t _tagpos
    cdef list _route_rows           # as last given, re-applied when the VLANs change
    cdef list _neigh_rows
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
    cdef uint64_t _c[14]
    cdef uint8_t *_held[MAX_PENDING]
    cdef int32_t _heldin[MAX_PENDING]
    cdef uint32_t _heldlen[MAX_PENDING]
    cdef int64_t _heldts[MAX_PENDING]
    cdef uint32_t _nheld
    cdef bint _holding
    # the last destination MAC's egress (-1: own or unknown, the route decides): a burst's
    # frames mostly go to one next hop. Forgotten whenever the tables change.
    cdef uint64_t _last_mac
    cdef int _last_port
    cdef bint _last_ok

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
        self._eg = <egress_t *> calloc(self._np, sizeof(egress_t))
        self._tagbuf = <uint8_t *> malloc(TAG_BUF)
        if self._eg == NULL or self._tagbuf == NULL:
            raise MemoryError()
        self._tagcap = TAG_BUF
        self._tagpos = 0
        for i in range(self._np):
            p = <TxPort> ports[i]
            self._pp[i] = <void *> p
            self._eg[i].port = <int32_t> i
            self._eg[i].ifindex = p.ifindex
            memcpy(self._eg[i].mac, <const char *> p.mac, 6)
        self._neg = self._np
        self._in_port = -1
        self._route_rows = []
        self._neigh_rows = []
        self.linktype = 1
        self.snaplen = 262144
        self._closed = False
        self.dry_run = dry_run
        memset(self._c, 0, sizeof(self._c))
        self._nmiss = 0
        self._nheld = 0
        self._holding = True
        self._last_ok = False

    def __dealloc__(self):
        cdef uint32_t i
        free(self._routes)
        free(self._neigh)
        free(self._macs)
        free(self._eg)
        free(self._tagbuf)
        for i in range(self._nheld):
            free(self._held[i])
        self._nheld = 0

    @property
    def ports(self):
        return list(self._ports)

    # -- tables ---------------------------------------------------------------------------

    cdef int _port_of(self, uint32_t ifindex) noexcept nogil:
        """Egress index of an interface (a port or a VLAN interface on one), -1: none."""
        cdef uint32_t i
        if ifindex == 0:
            return -1
        for i in range(self._neg):
            if self._eg[i].ifindex == ifindex:
                return <int> i
        return -1

    def set_vlans(self, vlans):
        """Replace the VLAN interfaces: ``vlans`` is a list of dicts with ``ifindex``,
        ``parent`` (ifindex of the interface it is on), ``vid``, ``tpid`` (default 0x8100) and
        ``mac`` (bytes or "aa:bb:.."), as ``netlink.vlans()`` gives them. Those on the
        director's interfaces become egresses; routes and neighbours are re-applied."""
        cdef uint32_t i, n
        cdef int parent
        rows = []
        for v in vlans:
            vid = int(v["vid"])
            tpid = int(v.get("tpid") or 0x8100)
            if not 0 <= vid <= 4095 or tpid not in (0x8100, 0x88a8):
                raise ValueError(f"bad VLAN {v!r}")
            mac = v["mac"]
            if isinstance(mac, str):
                mac = bytes.fromhex(mac.replace(":", ""))
            mac = bytes(mac)
            if len(mac) != 6:
                raise ValueError(f"bad MAC address for VLAN interface {v!r}")
            rows.append((int(v["ifindex"]), int(v["parent"]), vid, tpid, mac))
        if len(rows) > MAX_EGRESS - self._np:
            raise ValueError(f"at most {MAX_EGRESS - self._np} VLAN interfaces")
        cdef egress_t *t = <egress_t *> calloc(self._np + len(rows), sizeof(egress_t))
        if t == NULL:
            raise MemoryError()
        memcpy(t, self._eg, self._np * sizeof(egress_t))
        for i in range(self._np):
            t[i].has_vlans = 0
        n = self._np
        cdef bytes mb
        for ifindex, parent_ifx, vid, tpid, mb in rows:
            parent = -1
            for i in range(self._np):
                if t[i].ifindex == <uint32_t> parent_ifx:
                    parent = <int> i
            if parent < 0:
                continue            # on an interface the director does not use
            t[n].port = parent
            t[n].ifindex = <uint32_t> ifindex
            t[n].vtag = (<uint32_t> tpid << 16) | <uint32_t> vid
            memcpy(t[n].mac, <const char *> mb, 6)
            t[parent].has_vlans = 1
            n += 1
        free(self._eg)
        self._eg = t
        self._last_ok = False
        self._neg = n
        self.set_routes(self._route_rows)
        self.set_neighbours(self._neigh_rows)

    @property
    def ingress(self):
        """ifindex of the interface the frames now being written came in on (0: unknown)."""
        return self._eg[self._in_port].ifindex if self._in_port >= 0 else 0

    @ingress.setter
    def ingress(self, ifindex):
        self._in_port = self._port_of(<uint32_t> ifindex) if ifindex else -1
        if self._in_port >= 0:
            self._in_port = self._eg[self._in_port].port

    def set_routes(self, routes):
        """Replace the routing table: ``routes`` is a list of dicts with ``dst`` (address text),
        ``plen`` (prefix length of that family), ``ifindex``, ``gateway`` (text or None),
        ``metric`` and ``kind`` ("unicast" or anything else for reject routes)."""
        routes = list(routes)
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
            t[i].eg = self._port_of(<uint32_t> ifindex)
            t[i].kind = 1 if reject else 0
            if gw is not None:
                memcpy(t[i].gw, <const char *> gw, 16)
                t[i].has_gw = 1
            i += 1
        free(self._routes)
        self._routes = t
        self._nroutes = i
        self._route_rows = routes

    def set_neighbours(self, neighbours):
        """Replace the neighbour table: ``neighbours`` is a list of (address text, ifindex,
        mac) with mac as 6 bytes or "aa:bb:..". Neighbours on the director's interfaces also
        map their MAC to that interface (for frames the forwarder addressed already)."""
        neighbours = list(neighbours)
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
        cdef int eg
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
            eg = self._port_of(ifx)
            if eg >= 0:
                mk = _mac64(<const uint8_t *> mb)
                h = <uint32_t> _mix(mk) & (ncap - 1)
                while mt[h].used and mt[h].mac != mk:
                    h = (h + 1) & (ncap - 1)
                if mt[h].used and mt[h].eg != eg:
                    eg = -2
                mt[h].mac = mk
                mt[h].eg = eg
                mt[h].used = 1
        free(self._neigh)
        free(self._macs)
        self._neigh = nt
        self._macs = mt
        self._last_ok = False
        self._ncap = ncap
        self._mcap = ncap
        self._nneigh = count
        self._neigh_rows = neighbours

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

    cdef int _mlookup(self, uint64_t mk) noexcept nogil:
        cdef uint32_t h
        if self._macs == NULL:
            return -1
        h = <uint32_t> _mix(mk) & (self._mcap - 1)
        while self._macs[h].used:
            if self._macs[h].mac == mk:
                return self._macs[h].eg if self._macs[h].eg >= 0 else -1
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
        self._c[0] += 1
        if _sink_quick(self, <uint8_t *> data, caplen, wirelen):
            return 0
        return self._write(<uint8_t *> data, caplen, wirelen, ts_ns)

    cdef int write_recs(self, const frame_rec *recs, uint32_t n, uint8_t kind) except -1:
        # a Forwarder's burst: write_raw per frame of that kind, without a call per frame. The
        # quick case (_sink_quick) with its state in locals, reloaded after each frame _write
        # takes (which may change it); the counters are added up on the way out.
        cdef const frame_rec *r = recs
        cdef const frame_rec *end = recs + n
        cdef uint8_t *f
        cdef uint32_t caplen
        cdef uint16_t et
        cdef bint quick
        cdef uint8_t kb[8]
        cdef uint64_t qkey = 0, qmask = 0, mask6 = 0
        cdef uint32_t mac_lo = 0
        cdef uint16_t mac_hi = 0
        cdef TxPort tx = None
        cdef bint dry = self.dry_run
        cdef uint64_t nslow = 0, nquick = 0
        cdef const egress_t *eg
        # the destination MAC compared as the frame's first 8 bytes under a 6-byte mask
        memset(kb, 0xff, 6)
        kb[6] = 0
        kb[7] = 0
        memcpy(&mask6, kb, 8)
        try:
            while r < end:
                quick = self._last_ok and self._last_port >= 0 and \
                    not self._eg[self._last_port].vtag
                if quick:
                    eg = &self._eg[self._last_port]
                    # _last_mac is _mac64's key: its bytes back, then as a native word
                    mac_lo = <uint32_t> (self._last_mac >> 16)
                    mac_hi = <uint16_t> self._last_mac
                    memcpy(kb, &mac_lo, 4)
                    memcpy(kb + 4, &mac_hi, 2)
                    memcpy(&qkey, kb, 8)
                    qmask = mask6
                    memcpy(&mac_lo, eg.mac, 4)
                    memcpy(&mac_hi, eg.mac + 4, 2)
                    tx = <TxPort> self._pp[eg.port]
                else:
                    qmask = 0
                    qkey = 1            # never matches
                while r < end:
                    if r.kind != kind:
                        r += 1
                        continue
                    f = <uint8_t *> r.data
                    caplen = r.caplen
                    if not (caplen >= 14 and caplen == r.wirelen and (ld64(f) & qmask) == qkey):
                        break
                    memcpy(&et, f + 12, 2)
                    if et == _ET_8021Q or et == _ET_8021AD:
                        break
                    memcpy(f + 6, &mac_lo, 4)
                    memcpy(f + 10, &mac_hi, 2)
                    if not dry:
                        tx.put(f, caplen)
                    nquick += 1
                    r += 1
                else:
                    break
                nslow += 1
                self._write(f, caplen, r.wirelen, r.ts_ns)
                r += 1
        finally:
            self._c[0] += nslow + nquick
            self._c[2 if dry else 1] += nquick
        return 0

    cdef int _write(self, uint8_t *f, uint32_t caplen, uint32_t wirelen, int64_t ts_ns) except -1:
        cdef uint16_t et
        cdef uint32_t l3 = 14
        cdef int port = -1
        cdef uint8_t a[16]
        cdef const route_t *r
        cdef const nent *ne
        cdef const uint8_t *nh
        cdef uint32_t i
        cdef bint own = False
        cdef const egress_t *eg
        cdef uint64_t mk
        if caplen < 14 or caplen != wirelen:
            self._c[8] += 1
            return 0
        mk = _mac64(f)
        if self._last_ok and mk == self._last_mac:
            port = self._last_port
        else:
            for i in range(self._neg):
                if memcmp(f, self._eg[i].mac, 6) == 0:
                    own = True
                    break
            if not own:
                port = self._mlookup(mk)
            self._last_mac = mk
            self._last_port = port
            self._last_ok = True
        if port < 0:
            l3 = _l3_offset(f, caplen, &et)
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
            if r.eg < 0:
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
                        self._heldin[self._nheld] = self._in_port
                        self._heldlen[self._nheld] = caplen
                        self._heldts[self._nheld] = ts_ns
                        self._nheld += 1
                        self._c[9] += 1
                        return 0
                self._c[6] += 1
                return 0
            memcpy(f, ne.mac, 6)
            port = r.eg
        eg = &self._eg[port]
        memcpy(f + 6, eg.mac, 6)
        if eg.vtag or (f[12] == 0x81 and f[13] == 0x00) or (f[12] == 0x88 and f[13] == 0xa8):
            f = self._set_vlan(f, &caplen, eg)
        if self.dry_run:
            self._c[2] += 1
            return 0
        (<TxPort> self._pp[eg.port]).put(f, caplen)
        self._c[1] += 1
        return 0

    cdef uint8_t *_set_vlan(self, uint8_t *f, uint32_t *caplen, const egress_t *eg) except NULL:
        """The frame with the outer VLAN tag the egress wants (see the module docstring)."""
        cdef uint16_t et = (f[12] << 8) | f[13]
        cdef bint tagged = (et == 0x8100 or et == 0x88a8) and caplen[0] >= 18
        cdef uint16_t tci
        cdef uint8_t *b
        if eg.vtag == 0:
            if not tagged or (not eg.has_vlans and self._in_port == eg.port) or \
                    (not eg.has_vlans and self._in_port < 0):
                return f
            memmove(f + 4, f, 12)
            caplen[0] -= 4
            self._c[13] += 1
            return f + 4
        if tagged:
            tci = (((f[14] << 8) | f[15]) & 0xf000) | (eg.vtag & 0xfff)
            if et != (eg.vtag >> 16) or tci != ((f[14] << 8) | f[15]):
                f[12] = (eg.vtag >> 24) & 0xff
                f[13] = (eg.vtag >> 16) & 0xff
                f[14] = tci >> 8
                f[15] = tci & 0xff
                self._c[12] += 1
            return f
        # no room before the frame in general: a copy, valid until the ports are flushed
        if self._tagpos + caplen[0] + 4 > self._tagcap:
            self.flush_ports()
            if caplen[0] + 4 > self._tagcap:
                b = <uint8_t *> realloc(self._tagbuf, caplen[0] + 4)
                if b == NULL:
                    raise MemoryError()
                self._tagbuf = b
                self._tagcap = caplen[0] + 4
        b = self._tagbuf + self._tagpos
        memcpy(b, f, 12)
        b[12] = (eg.vtag >> 24) & 0xff
        b[13] = (eg.vtag >> 16) & 0xff
        b[14] = (eg.vtag >> 8) & 0x0f
        b[15] = eg.vtag & 0xff
        memcpy(b + 16, f + 12, caplen[0] - 12)
        caplen[0] += 4
        self._tagpos += caplen[0]
        self._c[11] += 1
        return b

    cdef int _flush(self) except -1:
        self.flush_ports()
        return 0

    cpdef uint32_t flush_ports(self):
        """Transmit what is queued on every port; returns the number of frames sent."""
        cdef uint32_t i, n = 0
        for i in range(self._np):
            n += (<TxPort> self._pp[i]).flush_queue()
        self._tagpos = 0
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
        cdef int32_t ingress = self._in_port
        self._holding = False
        try:
            for i in range(self._nheld):
                f = self._held[i]
                before = self._c[1] + self._c[2]
                if self._resolvable(f, self._heldlen[i]):
                    self._in_port = self._heldin[i]
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
                    self._heldin[keep] = self._heldin[i]
                    self._heldlen[keep] = self._heldlen[i]
                    self._heldts[keep] = self._heldts[i]
                    keep += 1
            self._nheld = keep
        finally:
            self._holding = True
            self._in_port = ingress
        return sent, keep

    @property
    def held(self):
        """Frames waiting for a next hop's MAC."""
        return self._nheld

    @property
    def misses(self):
        """Next hops without neighbour entry noted since the last take_misses()."""
        return self._nmiss

    cdef bint _resolvable(self, const uint8_t *f, uint32_t caplen) noexcept:
        cdef uint16_t et
        cdef uint32_t l3 = 14
        cdef uint8_t a[16]
        cdef const route_t *r
        l3 = _l3_offset(f, caplen, &et)
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
        if r == NULL or r.kind != 0 or r.eg < 0:
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


cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define IPVSFLOW_ET_8021Q 0x8100
    #define IPVSFLOW_ET_8021AD 0x88a8
    #else
    #define IPVSFLOW_ET_8021Q 0x0081
    #define IPVSFLOW_ET_8021AD 0xa888
    #endif
    static inline uint64_t ipvsflow_ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    """
    # the VLAN ethertypes as a native load of the frame's two bytes gives them
    const uint16_t _ET_8021Q "IPVSFLOW_ET_8021Q"
    const uint16_t _ET_8021AD "IPVSFLOW_ET_8021AD"
    uint64_t ld64 "ipvsflow_ld64"(const uint8_t *p) noexcept nogil


cdef inline bint _sink_quick(AfPacketSink s, uint8_t *f, uint32_t caplen,
                             uint32_t wirelen) noexcept:
    """AfPacketSink's common frame in a few instructions: for the same next hop as the last
    one, to an egress without a VLAN to set; False: not done, the frame is for _write. The
    Forwarder's frames live in writable memory (the receive ring, or its own buffer)."""
    cdef const egress_t *eg
    if (s._last_ok and s._last_port >= 0 and caplen >= 14 and caplen == wirelen and
            _mac64(f) == s._last_mac):
        eg = &s._eg[s._last_port]
        if not eg.vtag and not ((f[12] == 0x81 and f[13] == 0x00) or (f[12] == 0x88 and f[13] == 0xa8)):
            memcpy(f + 6, eg.mac, 6)
            if s.dry_run:
                s._c[2] += 1
                return True
            (<TxPort> s._pp[eg.port]).put(f, caplen)
            s._c[1] += 1
            return True
    return False


cdef inline void _count_into(const decision_t *d, Py_ssize_t n, uint64_t *counts) noexcept nogil:
    # A burst's decisions come in runs of one kind: counted per run, a packet costs a compare
    # of its (action, reason) bytes, both in one load (adjacent in the record).
    cdef const decision_t *q = d
    cdef const decision_t *e = d + n
    cdef const decision_t *first
    cdef uint16_t key, k
    while q < e:
        first = q
        memcpy(&key, &q.action, 2)
        q += 1
        while q < e:
            memcpy(&k, &q.action, 2)
            if k != key:
                break
            q += 1
        counts[((first.action & 7) << 6) | (first.reason & 63)] += <uint64_t> (q - first)


def count_decisions(decisions, uint64_t[::1] counts):
    """Add one per decision to ``counts[action * 64 + reason]`` (actions < 8, reasons < 64).
    ``decisions`` is a contiguous array of decision records (Engine.process output)."""
    cdef Py_buffer view
    if counts.shape[0] < 512:
        raise ValueError("counts needs 512 slots")
    # the buffer protocol directly: no numpy call per burst
    PyObject_GetBuffer(decisions, &view, PyBUF_SIMPLE)
    try:
        if view.len % sizeof(decision_t):
            raise ValueError(f"decision buffer of {view.len} bytes is not whole records")
        with nogil:
            _count_into(<const decision_t *> view.buf, view.len // sizeof(decision_t), &counts[0])
    finally:
        PyBuffer_Release(&view)


cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t "epoll_data":
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    int EPOLL_CLOEXEC
    int EPOLL_CTL_ADD
    uint32_t EPOLLIN

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_MONOTONIC

cdef extern from "<errno.h>" nogil:
    int errno
    int EINTR

cdef enum:
    MAX_RINGS = 63


cdef inline int64_t _mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t> ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class RingLoop:
    """A worker's receive loop over all its rings, in C.

    ``RingLoop(rings, batches, engine, forwarder, sink, counts, control_fd, capture=None)``.
    One burst of a ring: ``RxRing.fill`` into its batch, the capture (if any), the engine over
    the burst into the loop's own decision records, the decisions counted into ``counts`` (512
    slots, see ``count_decisions``), the forwarder into ``sink``, the ports flushed, and only
    then the ring's fully read blocks handed back to the kernel. The engine and the forwarder
    are entered through their C entries (``Engine._burst_entry``, ``Forwarder._burst_entry``),
    so a burst makes no Python call (a slow sender's blocks retire on their timer with few
    packets each, and a fixed cost per burst is shared by only those). ``run`` also waits for
    the rings and the control descriptor (epoll: its cost does not grow with the number of
    descriptors, unlike poll()'s). The GIL is kept throughout: a worker process has no other
    thread to give it to.
    ``forwarder`` is an attribute: the worker replaces it when its neighbours change.
    """
    cdef list _rings
    cdef list _batches
    cdef void *_rp[MAX_RINGS]
    cdef void *_bp[MAX_RINGS]
    cdef int32_t _rin[MAX_RINGS]    # the sink's port of each ring's interface (-1: none)
    cdef uint32_t _nr
    cdef int _ep                        # epoll descriptor
    cdef bint _has_ctl
    cdef object _engine
    cdef engine_burst_fn _eburst        # the C entries of the engine and the forwarder
    cdef object _forwarder
    cdef forward_burst_fn _fburst
    cdef decision_t *_dec               # one burst's decisions (the largest batch's capacity)
    cdef AfPacketSink _sink
    cdef object _capture
    cdef uint64_t[::1] _counts
    cdef public uint64_t index          # packets read so far (the next packet's index)
    cdef readonly uint64_t polls        # waits (epoll_wait calls)
    cdef readonly uint64_t bursts
    cdef readonly uint64_t busy_ns      # monotonic time run() spent sweeping the rings (not waiting)

    def __cinit__(self):
        self._ep = -1

    def __dealloc__(self):
        if self._ep >= 0:
            c_close(self._ep)
            self._ep = -1
        free(self._dec)
        self._dec = NULL

    def __init__(self, rings, batches, engine, forwarder, AfPacketSink sink not None,
                 uint64_t[::1] counts not None, int control_fd=-1, capture=None):
        cdef uint32_t i, j
        cdef RxRing r
        cdef PacketBatch b
        cdef epoll_event ev
        rings = list(rings)
        batches = list(batches)
        if not 1 <= len(rings) <= MAX_RINGS:
            raise ValueError(f"RingLoop takes 1 to {MAX_RINGS} rings")
        if len(batches) != len(rings):
            raise ValueError("one PacketBatch per ring")
        if counts.shape[0] < 512:
            raise ValueError("counts needs 512 slots")
        self._nr = <uint32_t> len(rings)
        for i in range(self._nr):
            r = <RxRing?> rings[i]
            b = <PacketBatch?> batches[i]
            if b.capacity < 1:
                raise ValueError("empty PacketBatch")
            self._rp[i] = <void *> r
            self._bp[i] = <void *> b
        if self._ep < 0:
            self._ep = epoll_create1(EPOLL_CLOEXEC)
            if self._ep < 0:
                raise OSError(errno, os.strerror(errno))
        fds = [r.fileno() for r in rings] + ([control_fd] if control_fd >= 0 else [])
        for i, fd in enumerate(fds):
            ev.events = EPOLLIN
            ev.data.u64 = i
            if epoll_ctl(self._ep, EPOLL_CTL_ADD, fd, &ev) != 0:
                raise OSError(errno, f"epoll_ctl on descriptor {fd}: {os.strerror(errno)}")
        self._has_ctl = control_fd >= 0
        self._rings = rings
        self._batches = batches
        self._eburst = <engine_burst_fn> PyCapsule_GetPointer(engine._burst_entry(),
                                                               b"ipvsflow.engine_burst")
        self._engine = engine
        self.forwarder = forwarder
        cap = max((<PacketBatch> self._bp[i]).capacity for i in range(self._nr))
        free(self._dec)
        self._dec = <decision_t *> calloc(cap, sizeof(decision_t))
        if self._dec == NULL:
            raise MemoryError()
        self._sink = sink
        for i in range(self._nr):
            self._rin[i] = -1
            for j in range(sink._np):
                if sink._eg[j].ifindex == (<RxRing> self._rp[i]).ifindex:
                    self._rin[i] = <int32_t> j
        self._counts = counts
        self._capture = capture
        self.index = 0

    @property
    def forwarder(self):
        return self._forwarder

    @forwarder.setter
    def forwarder(self, fwd):
        self._fburst = <forward_burst_fn> PyCapsule_GetPointer(fwd._burst_entry(),
                                                                b"ipvsflow.forward_burst")
        self._forwarder = fwd

    cdef int _burst(self, uint32_t i, uint32_t *got) except -1:
        """One burst of ring i; got = packets read. Returns the blocks handed back."""
        cdef RxRing ring = <RxRing> self._rp[i]
        cdef PacketBatch batch = <PacketBatch> self._bp[i]
        cdef uint32_t n, k
        n = ring.fill(batch, 0, self.index)
        got[0] = n
        if n:
            self.bursts += 1
            self.index += n
            batch.owner = ring
            try:
                if self._capture is not None:
                    self._capture.write_batch(batch)
                self._eburst(self._engine, batch, n, self._dec)
                _count_into(self._dec, n, &self._counts[0])
                self._sink._in_port = self._rin[i]
                self._fburst(self._forwarder, batch, self._dec, n, self._sink)
            finally:
                # the blocks go back to the kernel even when a stage raised
                self._sink.flush_ports()
                k = ring.release_blocks()
            return <int> k
        return <int> ring.release_blocks()

    def drain(self, int max_bursts=64):
        """Process what the rings hold, at most ``max_bursts`` bursts per ring (so requests and
        housekeeping get their turn under a continuous load); returns the packet count."""
        return self._drain(max_bursts)

    cdef uint64_t _drain(self, int max_bursts) except? 0xffffffffffffffff:
        cdef uint64_t total = 0
        cdef uint32_t i, n
        cdef int j, k
        for i in range(self._nr):
            for j in range(max_bursts):
                k = self._burst(i, &n)
                total += n
                if n == 0 and k == 0:
                    break
        return total

    def run(self, int timeout_ms, double interval_s, int max_bursts=64):
        """Sweep the rings and poll() until: the control descriptor is readable (returns
        True), ``interval_s`` has passed, a poll() of ``timeout_ms`` found nothing, or the sink
        has news for the worker (a next hop without neighbour entry, more frames held for
        one). Returns False in those other cases."""
        cdef int64_t deadline = _mono_ns() + <int64_t> (interval_s * 1e9)
        cdef uint32_t held = self._sink._nheld
        cdef int r, i
        cdef epoll_event evs[MAX_RINGS + 1]
        cdef int64_t now, start
        cdef int wait
        while True:
            start = _mono_ns()
            self._drain(max_bursts)
            now = _mono_ns()
            # the work between waits: next to the process's CPU time, it tells the processing
            # apart from the kernel's wakeups
            self.busy_ns += <uint64_t> (now - start)
            if self._sink._nheld > held or self._sink._nmiss or now >= deadline:
                return False
            wait = timeout_ms
            if wait < 0 or (deadline - now) // 1000000 + 1 < wait:
                wait = <int> ((deadline - now) // 1000000 + 1)
            r = epoll_wait(self._ep, evs, MAX_RINGS + 1, wait)
            self.polls += 1
            if r < 0:
                if errno == EINTR:
                    return False
                raise OSError(errno, os.strerror(errno))
            if r == 0 and wait == timeout_ms:
                return False
            if self._has_ctl:
                for i in range(r):
                    if evs[i].data.u64 == self._nr:
                        return True
