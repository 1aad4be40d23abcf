# The firewall-mark classifier (see classify.pxd). Rules are compiled once into three arrays
# (rules, address ranges, port ranges) in evaluation order: chains by hook (prerouting, then
# input), priority, and first definition; rules in order within a chain. Per packet the mark
# starts at 0 (a packet from the wire carries none) and every matching rule changes it, as
# netfilter's MARK target and nft's `meta mark set` do; a stop verdict jumps to the next chain.
# A linear scan: rule sets are tens of rules, evaluated in a few ns each.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from ipvsflow.io.batch cimport pkt_desc, PacketBatch, OK, FRAGMENT, TRUNC_L4, BAD_L4_HDR, \
    TRUNC_ICMP_INNER, BAD_ICMP_INNER

import ipaddress

cdef enum:
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_SCTP = 132

# Parse statuses whose IP header (addresses, protocol) is complete: the packet reaches the
# firewall's prerouting hook and its L3 fields can be matched. Ports only with status OK.
cdef uint32_t L3_VALID = ((1u << OK) | (1u << FRAGMENT) | (1u << TRUNC_L4) | (1u << BAD_L4_HDR)
                          | (1u << TRUNC_ICMP_INNER) | (1u << BAD_ICMP_INNER))


cdef inline uint8_t _port_proto_bit(uint8_t proto) noexcept nogil:
    if proto == IPPROTO_TCP:
        return MP_TCP
    if proto == IPPROTO_UDP:
        return MP_UDP
    if proto == IPPROTO_SCTP:
        return MP_SCTP
    return 0


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline uint64_t ipvsflow_be64(const uint8_t *p) {
        uint64_t v;
        memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    """
    uint64_t _be64 "ipvsflow_be64"(const uint8_t *p) noexcept nogil


cdef inline bint _in_addrs(const addr_range *r, uint32_t n, uint64_t ah, uint64_t al) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        if ((ah > r[i].lo_hi or (ah == r[i].lo_hi and al >= r[i].lo_lo))
                and (ah < r[i].hi_hi or (ah == r[i].hi_hi and al <= r[i].hi_lo))):
            return True
    return False


cdef inline bint _in_ports(const port_range *r, uint32_t n, uint16_t port) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        if r[i].lo <= port <= r[i].hi:
            return True
    return False


ctypedef struct pkt_key:            # what the rules look at, loaded once per packet
    uint64_t src_hi
    uint64_t src_lo
    uint64_t dst_hi
    uint64_t dst_lo
    uint8_t port_bit                # MP_* of the packet's protocol when its ports were parsed, else 0


cdef inline bint _match(const mark_table *t, const mark_rule *r, const pkt_desc *p, const pkt_key *k,
                        uint32_t mark) noexcept nogil:
    cdef bint hit
    if r.family and r.family != p.af:
        return False
    if r.port_protos:
        # tcp/udp/sctp port matches need that protocol's header (never a non-first fragment)
        if not (r.port_protos & k.port_bit):
            return False
        if r.dport_n:
            if _in_ports(t.ports + r.dport_off, r.dport_n, p.dport) == ((r.flags & MR_DPORT_NEG) != 0):
                return False
        if r.sport_n:
            if _in_ports(t.ports + r.sport_off, r.sport_n, p.sport) == ((r.flags & MR_SPORT_NEG) != 0):
                return False
    if r.flags & MR_PROTO:
        hit = (r.protos[p.proto >> 6] >> (p.proto & 63)) & 1
        if hit == ((r.flags & MR_PROTO_NEG) != 0):
            return False
    if r.dst_n:
        if _in_addrs(t.addrs + r.dst_off, r.dst_n, k.dst_hi, k.dst_lo) == ((r.flags & MR_DST_NEG) != 0):
            return False
    if r.src_n:
        if _in_addrs(t.addrs + r.src_off, r.src_n, k.src_hi, k.src_lo) == ((r.flags & MR_SRC_NEG) != 0):
            return False
    if r.flags & MR_MARK:
        if ((mark & r.mark_mask) == r.mark_value) == ((r.flags & MR_MARK_NEG) != 0):
            return False
    return True


cdef uint32_t classify_one(const mark_table *t, const pkt_desc *p) noexcept nogil:
    cdef uint32_t mark = 0
    cdef uint32_t i = 0
    cdef const mark_rule *r
    cdef pkt_key k
    if p.af == 0 or p.status >= 32 or not ((L3_VALID >> p.status) & 1):
        return 0
    k.src_hi = _be64(p.src)
    k.src_lo = _be64(p.src + 8)
    k.dst_hi = _be64(p.dst)
    k.dst_lo = _be64(p.dst + 8)
    k.port_bit = _port_proto_bit(p.proto) if p.status == OK else 0
    while i < t.n_rules:
        r = &t.rules[i]
        if _match(t, r, p, &k, mark):
            mark = (mark & r.set_and) ^ r.set_xor
            if r.flags & MR_STOP:
                i = r.next
                continue
        i += 1
    return mark


cdef void classify_burst(const mark_table *t, pkt_desc *pkts, uint32_t n) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        pkts[i].fwmark = classify_one(t, &pkts[i])


# ---- compilation -------------------------------------------------------------------------------

_HOOKS = {"prerouting": 0, "input": 1}
_PORT_BITS = {IPPROTO_TCP: MP_TCP, IPPROTO_UDP: MP_UDP, IPPROTO_SCTP: MP_SCTP}
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def evaluation_order(rules):
    """The rules in the order the classifier evaluates them, with each rule's index of the first
    rule of the next chain: [(rule, next_index)]. Chains (``MarkRule.chain``) run by hook
    (prerouting before input), then priority, then first appearance in ``rules``."""
    chains = {}
    for k, r in enumerate(rules):
        if r.hook not in _HOOKS:
            raise ValueError(f"mark rule {r.describe()!r}: unknown hook {r.hook!r}")
        c = chains.get(r.chain)
        if c is None:
            chains[r.chain] = c = [(_HOOKS[r.hook], int(r.priority), k), []]
        elif (_HOOKS[r.hook], int(r.priority)) != c[0][:2]:
            raise ValueError(f"mark rules of chain {r.chain!r} disagree on its hook/priority")
        c[1].append(r)
    out = []
    for key, members in sorted(chains.values(), key=lambda c: c[0]):
        end = len(out) + len(members)
        out.extend((r, end) for r in members)
    return out


cdef bytes _a16(a):
    return _V4_MAPPED + a.packed if a.version == 4 else a.packed


cdef class Classifier:
    """Mark rules compiled for per-packet evaluation.

    ``Classifier(rules)`` takes ipvsflow.marks.MarkRule objects (``Config.marks``);
    ``classify(batch, start=0, stop=None)`` sets ``fwmark`` of packets [start, stop) of a
    PacketBatch (and returns the marks as a list, for inspection); ``mark_of(batch, i)`` the mark
    packet i would get, without writing it. The engine runs it over each burst before IPVS.
    """

    def __cinit__(self):
        memset(&self.t, 0, sizeof(mark_table))

    def __dealloc__(self):
        free(self.t.rules)
        free(self.t.addrs)
        free(self.t.ports)

    def __init__(self, rules):
        if self.t.rules != NULL:
            raise RuntimeError("Classifier.__init__ called twice")
        order = evaluation_order(list(rules))
        n_addrs = sum(len(r.src) + len(r.dst) for r, _ in order)
        n_ports = sum(len(r.sport) + len(r.dport) for r, _ in order)
        if len(order) > 0xFFFFFF or n_addrs > 0xFFFFFF or n_ports > 0xFFFFFF:
            raise ValueError("too many mark rules")
        self.t.rules = <mark_rule *>calloc(max(len(order), 1), sizeof(mark_rule))
        self.t.addrs = <addr_range *>calloc(max(n_addrs, 1), sizeof(addr_range))
        self.t.ports = <port_range *>calloc(max(n_ports, 1), sizeof(port_range))
        if self.t.rules == NULL or self.t.addrs == NULL or self.t.ports == NULL:
            raise MemoryError()
        cdef mark_rule *cr
        cdef uint32_t na = 0, np_ = 0
        cdef int i
        for i, (r, nxt) in enumerate(order):
            cr = &self.t.rules[i]
            if r.family not in (0, 4, 6):
                raise ValueError(f"mark rule {r.describe()!r}: family must be 0, 4 or 6")
            cr.family = r.family
            cr.next = nxt
            flags = 0
            if r.protos:
                flags |= MR_PROTO
                if r.protos_neg:
                    flags |= MR_PROTO_NEG
                for p in r.protos:
                    if not 0 <= p <= 255:
                        raise ValueError(f"mark rule {r.describe()!r}: protocol {p} out of range")
                    cr.protos[p >> 6] |= (<uint64_t>1) << (p & 63)
            bits = 0
            for p in r.port_protos:
                if p not in _PORT_BITS:
                    raise ValueError(f"mark rule {r.describe()!r}: protocol {p} has no ports")
                bits |= _PORT_BITS[p]
            if (r.sport or r.dport) and not bits:
                raise ValueError(f"mark rule {r.describe()!r}: a port match needs port_protos")
            cr.port_protos = bits
            for name, flag in (("src", MR_SRC_NEG), ("dst", MR_DST_NEG)):
                ranges = getattr(r, name)
                if ranges and getattr(r, name + "_neg"):
                    flags |= flag
                off = na
                for lo, hi in ranges:
                    if lo.version != r.family or hi.version != r.family or lo > hi:
                        raise ValueError(f"mark rule {r.describe()!r}: bad address range {lo}-{hi}")
                    blo, bhi = int.from_bytes(_a16(lo), "big"), int.from_bytes(_a16(hi), "big")
                    self.t.addrs[na].lo_hi = blo >> 64
                    self.t.addrs[na].lo_lo = blo & 0xFFFFFFFFFFFFFFFF
                    self.t.addrs[na].hi_hi = bhi >> 64
                    self.t.addrs[na].hi_lo = bhi & 0xFFFFFFFFFFFFFFFF
                    na += 1
                if name == "src":
                    cr.src_off, cr.src_n = off, len(ranges)
                else:
                    cr.dst_off, cr.dst_n = off, len(ranges)
            for name, flag in (("sport", MR_SPORT_NEG), ("dport", MR_DPORT_NEG)):
                ranges = getattr(r, name)
                if ranges and getattr(r, name + "_neg"):
                    flags |= flag
                off = np_
                for lo, hi in ranges:
                    if not 0 <= lo <= hi <= 65535:
                        raise ValueError(f"mark rule {r.describe()!r}: bad port range {lo}-{hi}")
                    self.t.ports[np_].lo = lo
                    self.t.ports[np_].hi = hi
                    np_ += 1
                if name == "sport":
                    cr.sport_off, cr.sport_n = off, len(ranges)
                else:
                    cr.dport_off, cr.dport_n = off, len(ranges)
            if r.mark_match is not None:
                flags |= MR_MARK
                if r.mark_match_neg:
                    flags |= MR_MARK_NEG
                cr.mark_value, cr.mark_mask = r.mark_match
            cr.set_and = r.mark_and
            cr.set_xor = r.mark_xor
            if r.stop:
                flags |= MR_STOP
            cr.flags = flags
        self.t.n_rules = len(order)
        self.t.n_addrs = na
        self.t.n_ports = np_
        self.rules = tuple(r for r, _ in order)

    def __len__(self):
        return self.t.n_rules

    def __repr__(self):
        return f"<Classifier rules={self.t.n_rules}>"

    def classify(self, PacketBatch batch not None, start=0, stop=None):
        """Set ``fwmark`` of packets [start, stop) of ``batch``; returns their marks."""
        cdef Py_ssize_t s = int(start)
        cdef Py_ssize_t e = batch.count if stop is None else int(stop)
        if s < 0 or e > batch.count or s > e:
            raise ValueError(f"packet range [{start}, {stop}) is not within the batch's {batch.count} packets")
        with nogil:
            classify_burst(&self.t, batch.pkts + s, <uint32_t>(e - s))
        return [batch.pkts[i].fwmark for i in range(s, e)]

    def mark_of(self, PacketBatch batch not None, Py_ssize_t i):
        """The mark packet ``i`` of ``batch`` gets (its descriptor is left as it is)."""
        if i < 0 or i >= batch.count:
            raise IndexError(f"packet {i} out of range (batch holds {batch.count})")
        return classify_one(&self.t, &batch.pkts[i])
