"""Weighted round-robin (ip_vs_wrr.c) with the kernel's state updates on every dest change.

Sequences are worked by hand from ip_vs_wrr.c (ip_vs_wrr_dest_changed / ip_vs_wrr_schedule)
and the reference (errata 1, vector V14); a second, plain-Python transcription of the kernel
function in this file checks random edit sequences.
"""
import math
import random

from svc_helpers import add, build, cmd, delete, edit, ids, order, picks

# Errata 1: weights A=4, B=3, C=2 added C, B, A (one -a each, as ipvsadm -R does): a cw = 1 pass
# over the whole list first, then the weighted cycle from cw = mw.
ERRATA1 = "ABC" + "A" + "AB" + "ABC" + "ABC" + "A" + "AB" + "ABC" + "ABC"
V14_CYCLE = "AABABCABC"


def test_errata1_first_pass_when_built_one_add_per_server():
    t, svc = build("wrr", [("C", 2), ("B", 3), ("A", 4)])
    assert order(t) == "ABC"
    st = t.sched_state(svc)
    assert (st["wrr_cw"], st["wrr_mw"], st["wrr_di"], st["wrr_cl"]) == (1, 4, 1, -1)
    assert picks(t, svc, len(ERRATA1)) == ERRATA1


def test_v14_cycle_when_the_scheduler_starts_with_the_dests_present():
    # init_service with the dests already there: cw = mw = 4
    t, svc = build("rr", [("C", 2), ("B", 3), ("A", 4)])
    t.apply(cmd("-E -t 10.0.0.100:80 -s wrr"))
    assert picks(t, svc, 2 * len(V14_CYCLE)) == V14_CYCLE * 2


def test_edit_resets_cursor_and_keeps_cw_when_in_range():
    t, svc = build("wrr", [("C", 2), ("B", 3), ("A", 4)])
    assert picks(t, svc, 4) == "ABCA"        # now cw = 4, cursor A
    edit(t, "C", 2)                           # same weight: cursor -> head, cw stays 4
    assert t.sched_state(svc)["wrr_cl"] == -1
    assert picks(t, svc, 9) == V14_CYCLE


def test_non_coprime_weights():
    # A=4, B=2 (list A, B): gcd 2, mw = 4 - 1 = 3; after the adds cw = (1 // 2) * 2 + 1 = 1
    t, svc = build("wrr", [("B", 2), ("A", 4)])
    st = t.sched_state(svc)
    assert (st["wrr_cw"], st["wrr_mw"], st["wrr_di"]) == (1, 3, 2)
    assert picks(t, svc, 11) == "AB" + "A" + "AB" + "A" + "AB" + "A" + "AB"


def test_equal_weights_is_round_robin_from_the_head():
    t, svc = build("wrr", [("A", 5), ("B", 5), ("C", 5)])
    assert picks(t, svc, 6) == "CBACBA"


def test_weight_zero_never_picked_and_all_zero_gives_none():
    t, svc = build("wrr", [("C", 2), ("B", 0), ("A", 4)])
    seq = picks(t, svc, 30)
    assert "B" not in seq and seq.count("A") == 20 and seq.count("C") == 10
    edit(t, "A", 0)
    edit(t, "C", 0)
    assert t.sched_state(svc)["wrr_mw"] == 0
    assert picks(t, svc, 2) == "--"


def test_all_overloaded_returns_none_without_looping():
    t, svc = build("wrr", [("A", 3, "-x 1"), ("B", 2, "-x 1")])
    assert sorted(t.connect(svc, 2)) == sorted(ids(t).values())
    assert all(d["overload"] for d in t.dests())
    assert picks(t, svc, 3) == "---"


def test_delete_recomputes_state():
    t, svc = build("wrr", [("C", 2), ("B", 3), ("A", 4)])
    assert picks(t, svc, 5) == "ABCAA"        # cw = 3, cursor A
    delete(t, "A")                            # gcd(3, 2) = 1, mw = 3, cw 3 kept, cursor head
    st = t.sched_state(svc)
    assert (st["wrr_cw"], st["wrr_mw"], st["wrr_di"], st["wrr_cl"]) == (3, 3, 1, -1)
    assert picks(t, svc, 6) == "B" + "BC" + "BC" + "B"


# ---- a plain-Python transcription of ip_vs_wrr.c, for random edit sequences ----------------

class KernelWrr:
    def __init__(self):
        self.lst = []          # [name, weight, overloaded] newest first
        self.cl = None         # None = head
        self.cw = self.mw = 0
        self.di = 1

    def _changed(self):
        ws = [w for _, w, _ in self.lst if w > 0]
        g = 0
        for w in ws:
            g = math.gcd(w, g) if g else w
        self.di = g or 1
        self.mw = max([w for _, w, _ in self.lst] + [0]) - (self.di - 1)
        self.cl = None
        if self.cw > self.mw or self.cw == 0:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def add(self, name, w):
        self.lst.insert(0, [name, w, False])
        self._changed()

    def edit(self, name, w):
        next(x for x in self.lst if x[0] == name)[1] = w
        self._changed()

    def delete(self, name):
        self.lst = [x for x in self.lst if x[0] != name]
        self._changed()

    def schedule(self):
        if self.mw == 0:
            return "-"
        names = [x[0] for x in self.lst]
        pos = -1 if self.cl is None else names.index(self.cl)
        last = pos
        stop = None
        last_pass = restarted = False
        while True:
            for i in range(pos + 1, len(self.lst)):
                name, w, over = self.lst[i]
                if not over and w >= self.cw:
                    self.cl = name
                    return name
                if i == stop:
                    self.cl = name
                    return "-"
            pos = -1
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == -1:
                    self.cl = None
                    return "-"
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != -1:
                stop = last


def test_random_edits_match_kernel_transcription():
    rng = random.Random(7)
    for trial in range(40):
        t, svc = build("wrr", [])
        k = KernelWrr()
        present = []
        for step in range(60):
            r = rng.random()
            free = [c for c in "ABCDEF" if c not in present]
            if (r < 0.25 and free) or not present:
                c, w = rng.choice(free), rng.choice([0, 1, 2, 3, 4, 6, 9, 12])
                add(t, c, w)
                k.add(c, w)
                present.append(c)
            elif r < 0.4:
                c, w = rng.choice(present), rng.choice([0, 1, 2, 3, 4, 6, 9, 12])
                edit(t, c, w)
                k.edit(c, w)
            elif r < 0.5:
                c = rng.choice(present)
                delete(t, c)
                k.delete(c)
                present.remove(c)
            else:
                n = rng.randint(1, 8)
                assert picks(t, svc, n) == "".join(k.schedule() for _ in range(n)), (trial, step)
