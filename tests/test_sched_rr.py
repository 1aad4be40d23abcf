"""Round-robin (ip_vs_rr.c): list order newest first, cursor moves, quiescent/overloaded skips.

Expectations are worked by hand from the reference (section 10 rr row, errata 4) and
ip_vs_rr.c: the first pick is the most recently added dest; deleting the cursor's dest moves
the cursor to its predecessor.
"""
from svc_helpers import add, build, cmd, delete, edit, ids, order, picks


def test_first_pick_is_most_recently_added_and_cycles_in_list_order():
    t, svc = build("rr", "ABC")
    assert order(t) == "CBA"
    assert picks(t, svc, 7) == "CBACBAC"


def test_reference_v1_two_servers():
    # section 13 common setup: RS1 added first, RS2 second -> rr picks RS2 first
    t, svc = build("rr", "AB")
    assert picks(t, svc, 4) == "BABA"


def test_weight_zero_is_skipped_and_rejoins():
    t, svc = build("rr", "ABC")
    edit(t, "B", 0)
    assert picks(t, svc, 4) == "CACA"
    edit(t, "B", 1)
    # the cursor is at A (last pick); the walk continues after it, wrapping through the head
    assert picks(t, svc, 3) == "CBA"


def test_no_eligible_dest():
    t, svc = build("rr", "AB")
    edit(t, "A", 0)
    edit(t, "B", 0)
    assert picks(t, svc, 2) == "--"
    empty, esvc = build("rr", "")
    assert empty.schedule(esvc) == -1


def test_deleting_cursor_dest_continues_after_its_predecessor():
    t, svc = build("rr", "ABC")
    assert picks(t, svc, 2) == "CB"           # cursor at B
    delete(t, "B")
    assert t.sched_state(svc)["rr_cursor"] == ids(t)["C"]
    assert picks(t, svc, 3) == "ACA"


def test_deleting_cursor_at_list_head_moves_cursor_to_head():
    t, svc = build("rr", "ABC")
    assert picks(t, svc, 1) == "C"
    delete(t, "C")
    assert t.sched_state(svc)["rr_cursor"] == -1
    assert picks(t, svc, 3) == "BAB"


def test_deleting_other_dest_keeps_cursor():
    t, svc = build("rr", "ABC")
    assert picks(t, svc, 1) == "C"
    delete(t, "A")
    assert picks(t, svc, 3) == "BCB"


def test_adding_dest_does_not_move_cursor():
    t, svc = build("rr", "ABC")
    assert picks(t, svc, 1) == "C"
    add(t, "D")
    assert order(t) == "DCBA"
    assert picks(t, svc, 4) == "BADC"


def test_readded_dest_goes_to_head():
    t, svc = build("rr", "ABC")
    assert picks(t, svc, 2) == "CB"
    delete(t, "B")                           # cursor -> C
    add(t, "B")
    assert order(t) == "BCA"
    assert picks(t, svc, 4) == "ABCA"


def test_overloaded_dest_is_skipped_until_it_drains():
    # C has -x 1: its first connection sets OVERLOAD at bind
    t, svc = build("rr", ["A", "B", ("C", 1, "-x 1")])
    first = t.connect(svc)[0]
    assert first == ids(t)["C"]
    assert t.dest(first)["overload"]
    assert picks(t, svc, 3) == "BAB"
    t.unbind(0)                              # 0 * 4 < 1 * 3: OVERLOAD cleared
    assert not t.dest(first)["overload"]
    assert picks(t, svc, 3) == "ACB"


def test_scheduler_change_resets_cursor():
    t, svc = build("rr", "ABC")
    assert picks(t, svc, 2) == "CB"
    t.apply(cmd("-E -t 10.0.0.100:80 -s wlc"))
    t.apply(cmd("-E -t 10.0.0.100:80 -s rr"))
    assert picks(t, svc, 2) == "CB"
    # editing with the same scheduler keeps the state
    t.apply(cmd("-E -t 10.0.0.100:80 -s rr"))
    assert picks(t, svc, 1) == "A"


# ---- random edits against a plain-Python transcription of ip_vs_rr.c -------------------------

class KernelRr:
    def __init__(self):
        self.lst = []              # [name, weight] newest first
        self.cursor = None         # None = the list head

    def add(self, name, w):
        self.lst.insert(0, [name, w])

    def edit(self, name, w):
        next(x for x in self.lst if x[0] == name)[1] = w

    def delete(self, name):
        i = [x[0] for x in self.lst].index(name)
        if self.cursor == name:
            self.cursor = self.lst[i - 1][0] if i > 0 else None
        del self.lst[i]

    def schedule(self):
        names = [x[0] for x in self.lst]
        start = -1 if self.cursor is None else names.index(self.cursor)
        n = len(self.lst)
        # after the cursor to the end, then (when the cursor is a dest) from the head to it
        order = list(range(start + 1, n)) + (list(range(0, start + 1)) if start >= 0 else [])
        for i in order:
            if self.lst[i][1] > 0:
                self.cursor = self.lst[i][0]
                return self.cursor
        return "-"


def test_random_edits_match_kernel_transcription():
    import random
    rng = random.Random(11)
    for trial in range(40):
        t, svc = build("rr", [])
        k = KernelRr()
        present = []
        for step in range(80):
            r = rng.random()
            free = [c for c in "ABCDEFG" if c not in present]
            if (r < 0.2 and free) or not present:
                c = rng.choice(free)
                w = rng.choice([0, 1, 1, 2])
                add(t, c, w)
                k.add(c, w)
                present.append(c)
            elif r < 0.35:
                c = rng.choice(present)
                w = rng.choice([0, 1, 3])
                edit(t, c, w)
                k.edit(c, w)
            elif r < 0.45:
                c = rng.choice(present)
                delete(t, c)
                k.delete(c)
                present.remove(c)
            else:
                n = rng.randint(1, 6)
                assert picks(t, svc, n) == "".join(k.schedule() for _ in range(n)), (trial, step)
            assert order(t) == "".join(x[0] for x in k.lst), (trial, step)
