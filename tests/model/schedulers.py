"""Schedulers of Linux IPVS (ip_vs_rr.c, ip_vs_wrr.c, ip_vs_lc.c, ...), written straight from
section 10 of the semantics reference and the kernel sources.

Every scheduler sees ``svc.dests``, the destination list in the kernel's order: most recently
added first. A scheduler is a small object with the kernel's hooks (``add_dest``, ``del_dest``,
``upd_dest``) and ``schedule(svc, pkt) -> Dest or None``.
"""
from __future__ import annotations

import ipaddress
import math


def overhead(d) -> int:
    """ip_vs_dest_conn_overhead: activeconns * 256 + inactconns."""
    return d.active * 256 + d.inactive


class Scheduler:
    name = "?"

    def __init__(self, svc):
        pass

    def add_dest(self, svc, dest):
        pass

    def del_dest(self, svc, dest, index):
        """Called after ``dest`` was removed from ``svc.dests``; ``index`` is where it was."""

    def upd_dest(self, svc, dest):
        pass

    def schedule(self, svc, pkt):
        raise TypeError(f"{self.name} cannot schedule")


class RoundRobin(Scheduler):
    """Cursor = the last chosen dest (None = the list head). Walk on from the cursor, wrapping
    around, and take the first dest with weight > 0 and not OVERLOAD; the cursor itself is
    checked last."""
    name = "rr"

    def __init__(self, svc):
        self.cursor = None

    def del_dest(self, svc, dest, index):
        # The cursor moves to the deleted dest's predecessor (the head if it was first).
        if self.cursor is dest:
            self.cursor = svc.dests[index - 1] if index > 0 else None

    def schedule(self, svc, pkt):
        n = len(svc.dests)
        if self.cursor is None:
            order = list(svc.dests)
        else:
            start = svc.dests.index(self.cursor) + 1
            order = [svc.dests[(start + k) % n] for k in range(n)]
        for d in order:
            if not d.overload and d.weight > 0:
                self.cursor = d
                return d
        return None


class WeightedRoundRobin(Scheduler):
    """ip_vs_wrr.c: cl (cursor, None = head), cw, mw, di; the state is recomputed on every
    add/edit/delete (errata 1: a service built with one add per dest starts with cw = 1)."""
    name = "wrr"

    def __init__(self, svc):
        self.cl = None
        self.di = self._gcd(svc)
        self.mw = self._max(svc) - (self.di - 1)
        self.cw = self.mw

    @staticmethod
    def _gcd(svc):
        g = 0
        for d in svc.dests:
            if d.weight > 0:
                g = math.gcd(d.weight, g) if g > 0 else d.weight
        return g if g else 1

    @staticmethod
    def _max(svc):
        return max([0] + [d.weight for d in svc.dests])

    def _changed(self, svc):
        self.cl = None
        self.di = self._gcd(svc)
        self.mw = self._max(svc) - (self.di - 1)
        if self.cw > self.mw or self.cw == 0:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def add_dest(self, svc, dest):
        self._changed(svc)

    def del_dest(self, svc, dest, index):
        self._changed(svc)

    def upd_dest(self, svc, dest):
        self._changed(svc)

    def schedule(self, svc, pkt):
        # A literal transcription of ip_vs_wrr_schedule: positions -1 (the list head) .. n-1.
        dests = svc.dests
        if self.mw == 0:
            return None
        pos = -1 if self.cl is None else dests.index(self.cl)
        last = pos
        stop = None
        last_pass = False
        restarted = False
        while True:
            for i in range(pos + 1, len(dests)):
                d = dests[i]
                if not d.overload and d.weight >= self.cw:
                    self.cl = d
                    return d
                if stop is not None and i == stop:
                    self.cl = d
                    return None
            pos = -1
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == -1:
                    self.cl = None
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != -1:
                stop = last


class LeastConnection(Scheduler):
    name = "lc"

    def schedule(self, svc, pkt):
        least, loh = None, None
        for d in svc.dests:
            if d.overload or d.weight == 0:
                continue
            doh = overhead(d)
            if least is None or doh < loh:
                least, loh = d, doh
        return least


class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def _overhead(self, d):
        return overhead(d)

    def schedule(self, svc, pkt):
        least = None
        it = iter(svc.dests)
        for d in it:
            if not d.overload and d.weight > 0:
                least = d
                loh = self._overhead(d)
                break
        if least is None:
            return None
        for d in it:
            if d.overload:
                continue
            doh = self._overhead(d)
            if loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least


class ShortestExpectedDelay(WeightedLeastConnection):
    name = "sed"

    def _overhead(self, d):
        return d.active + 1


class NeverQueue(Scheduler):
    name = "nq"

    def schedule(self, svc, pkt):
        least, loh = None, None
        for d in svc.dests:
            if d.overload or d.weight == 0:
                continue
            doh = d.active + 1
            if d.active == 0:
                return d
            if least is None or loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least


class WeightedFailover(Scheduler):
    name = "fo"

    def schedule(self, svc, pkt):
        hweight, h = 0, None
        for d in svc.dests:
            if not d.overload and d.weight > hweight:
                h, hweight = d, d.weight
        return h


class WeightedOverflow(Scheduler):
    name = "ovf"

    def schedule(self, svc, pkt):
        h, hw = None, 0
        for d in svc.dests:
            w = d.weight
            if d.overload or d.active > w or w == 0:
                continue
            if h is None or w > hw:
                h, hw = d, w
        return h


# ---------------------------------------------------------------------------------------------
# Hashing schedulers: sh, dh, mh (ip_vs_sh.c, ip_vs_dh.c, ip_vs_mh.c; reference 10 and 10.1)

SVC_F_SCHED1 = 0x0008       # sh-fallback / mh-fallback
SVC_F_SCHED2 = 0x0010       # sh-port / mh-port
MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1
GOLDEN_RATIO_32 = 0x61C88647


def hash_32(value: int, bits: int) -> int:
    """include/linux/hash.h (generic __hash_32): the top ``bits`` of value * GOLDEN_RATIO_32."""
    return ((value * GOLDEN_RATIO_32) & MASK32) >> (32 - bits)


def addr_fold(addr: str) -> int:
    """ntohl(addr_fold): the IPv4 address as a number; IPv6: XOR of its four 32-bit words."""
    n = int(ipaddress.ip_address(addr))
    if n > MASK32 or ":" in addr:
        n = (n >> 96) ^ (n >> 64) ^ (n >> 32) ^ n
    return n & MASK32


def _rotl64(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK64


def _sipround(v0, v1, v2, v3):
    v0 = (v0 + v1) & MASK64
    v1 = _rotl64(v1, 13) ^ v0
    v0 = _rotl64(v0, 32)
    v2 = (v2 + v3) & MASK64
    v3 = _rotl64(v3, 16) ^ v2
    v0 = (v0 + v3) & MASK64
    v3 = _rotl64(v3, 21) ^ v0
    v2 = (v2 + v1) & MASK64
    v1 = _rotl64(v1, 17) ^ v2
    v2 = _rotl64(v2, 32)
    return v0, v1, v2, v3


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """lib/siphash.c hsiphash on a 64-bit kernel: SipHash-1-3 with two u64 key words, the
    result truncated to 32 bits."""
    k0, k1 = key
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    n = len(data)
    full = n - n % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & MASK32


def _hash_port(svc, pkt) -> int:
    """The client's source port when the service has sh-port / mh-port, else 0."""
    return pkt.sport if svc.flags & SVC_F_SCHED2 else 0


class SourceHashing(Scheduler):
    """ip_vs_sh.c: 256 buckets filled walking the list cyclically, each dest taking weight
    consecutive buckets (a weight-0 dest still takes one); rebuilt on every add/edit/delete."""
    name = "sh"
    SIZE = 256

    def __init__(self, svc):
        self.buckets = [None] * self.SIZE
        self._reassign(svc)

    def _reassign(self, svc):
        dests = svc.dests
        if not dests:
            self.buckets = [None] * self.SIZE
            return
        pos, count = 0, 0
        for i in range(self.SIZE):
            d = dests[pos]
            self.buckets[i] = d
            count += 1
            if count >= d.weight:
                pos = (pos + 1) % len(dests)
                count = 0

    def add_dest(self, svc, dest):
        self._reassign(svc)

    def del_dest(self, svc, dest, index):
        self._reassign(svc)

    def upd_dest(self, svc, dest):
        self._reassign(svc)

    @staticmethod
    def _unavailable(d) -> bool:
        return d.weight <= 0 or d.overload

    def hashkey(self, addr: str, port: int, offset: int = 0) -> int:
        return (offset + hash_32((port + addr_fold(addr)) & MASK32, 8)) % self.SIZE

    def schedule(self, svc, pkt):
        port = _hash_port(svc, pkt)
        ihash = self.hashkey(pkt.src, port)
        d = self.buckets[ihash]
        if d is None:
            return None
        if not self._unavailable(d):
            return d
        if not svc.flags & SVC_F_SCHED1:
            return None
        # sh-fallback: probe with offsets (k + ihash) mod 256, each added to the hash again
        for k in range(self.SIZE):
            d = self.buckets[self.hashkey(pkt.src, port, (k + ihash) % self.SIZE)]
            if d is None:
                return None
            if not self._unavailable(d):
                return d
        return None


class DestinationHashing(Scheduler):
    """ip_vs_dh.c: 256 buckets, one per dest cycling through the list (weights ignored),
    rebuilt on add and delete; keyed by the packet's destination address."""
    name = "dh"
    SIZE = 256

    def __init__(self, svc):
        self.buckets = [None] * self.SIZE
        self._assign(svc)

    def _assign(self, svc):
        dests = svc.dests
        self.buckets = [dests[i % len(dests)] if dests else None for i in range(self.SIZE)]

    def add_dest(self, svc, dest):
        self._assign(svc)

    def del_dest(self, svc, dest, index):
        self._assign(svc)

    def schedule(self, svc, pkt):
        # iph->daddr: for an ICMP error's embedded header (inverse) that is the client
        d = self.buckets[hash_32(addr_fold(pkt.src if pkt.inverse else pkt.dst), 8)]
        if d is None or not d.available or d.weight <= 0 or d.overload:
            return None
        return d


class MaglevHashing(Scheduler):
    """ip_vs_mh.c: Maglev lookup table of M = 4093 slots (CONFIG_IP_VS_MH_TAB_INDEX 12), built
    from each dest's (offset, skip) permutation and its last non-zero weight; rebuilt on every
    add/edit/delete."""
    name = "mh"
    PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
    TAB_INDEX = 12
    SIZE = PRIMES[TAB_INDEX - 8]
    TAB_BITS = TAB_INDEX // 2
    KEY1 = (2654435761, 2654435761)
    KEY2 = (2654446892, 2654446892)

    def __init__(self, svc):
        self.lookup = [None] * self.SIZE
        self._changed(svc)

    def hashkey(self, af_addr: str, port: int, key, offset: int = 0) -> int:
        v = (offset + port + addr_fold(af_addr)) & MASK32
        return hsiphash(v.to_bytes(4, "little"), key)

    def _changed(self, svc):
        if len(svc.dests) > self.SIZE:
            raise ValueError(f"mh: {len(svc.dests)} destinations exceed the table size {self.SIZE}")
        g = 0
        for d in svc.dests:
            if d.last_weight > 0:
                g = math.gcd(d.last_weight, g) if g > 0 else d.last_weight
        if g < 1:
            self.lookup = [None] * self.SIZE          # ip_vs_mh_reset
            return
        mw = max(d.last_weight for d in svc.dests) // g
        rshift = max(0, mw.bit_length() - self.TAB_BITS)
        setup = []
        for d in svc.dests:
            offset = self.hashkey(d.addr, d.port, self.KEY1) % self.SIZE
            skip = self.hashkey(d.addr, d.port, self.KEY2) % (self.SIZE - 1) + 1
            turns = (d.last_weight // g) >> rshift or (1 if d.last_weight != 0 else 0)
            setup.append([offset, skip, turns, d])          # [perm, skip, turns, dest]
        # ip_vs_mh_populate: slots keep their old dest until claimed again; every slot is
        # claimed since at least one dest has turns >= 1.
        table = [False] * self.SIZE
        n = 0
        while n < self.SIZE:
            for ds in setup:
                if ds[2] < 1:
                    continue
                for _ in range(ds[2]):
                    c = ds[0]
                    while table[c]:
                        ds[0] = (ds[0] + ds[1]) % self.SIZE
                        c = ds[0]
                    table[c] = True
                    self.lookup[c] = ds[3]
                    n += 1
                    if n == self.SIZE:
                        return

    def add_dest(self, svc, dest):
        self._changed(svc)

    def del_dest(self, svc, dest, index):
        self._changed(svc)

    def upd_dest(self, svc, dest):
        self._changed(svc)

    @staticmethod
    def _unavailable(d) -> bool:
        return d.weight <= 0 or d.overload

    def schedule(self, svc, pkt):
        port = _hash_port(svc, pkt)
        ihash = self.hashkey(pkt.src, port, self.KEY1) % self.SIZE
        d = self.lookup[ihash]
        if d is None:
            return None
        if not self._unavailable(d):
            return d
        if not svc.flags & SVC_F_SCHED1:
            return None
        for k in range(self.SIZE):
            d = self.lookup[self.hashkey(pkt.src, port, self.KEY1, (k + ihash) % self.SIZE) % self.SIZE]
            if d is None:
                return None
            if not self._unavailable(d):
                return d
        return None


SCHEDULERS = {cls.name: cls for cls in (RoundRobin, WeightedRoundRobin, LeastConnection,
                                        WeightedLeastConnection, ShortestExpectedDelay, NeverQueue,
                                        WeightedFailover, WeightedOverflow, SourceHashing,
                                        DestinationHashing, MaglevHashing)}
