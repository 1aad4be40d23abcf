"""Schedulers of Linux IPVS (ip_vs_rr.c, ip_vs_wrr.c, ip_vs_lc.c, ...), written straight from
section 10 of the semantics reference and the kernel sources.

Every scheduler sees ``svc.dests``, the destination list in the kernel's order: most recently
added first. A scheduler is a small object with the kernel's hooks (``add_dest``, ``del_dest``,
``upd_dest``) and ``schedule(svc, pkt) -> Dest or None``.
"""
from __future__ import annotations

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


SCHEDULERS = {cls.name: cls for cls in (RoundRobin, WeightedRoundRobin, LeastConnection,
                                        WeightedLeastConnection, ShortestExpectedDelay, NeverQueue,
                                        WeightedFailover, WeightedOverflow)}
