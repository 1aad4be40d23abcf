"""Connection table: indexes, incremental growth, newest-wins keys (out index: hidden, not
lost, entries behind a newer one with the same reply tuple), timers.

The reference for every check is a plain-Python model (dicts and a sort), never the table's
own output.
"""
import itertools
import random

import pytest
from hypothesis import HealthCheck, assume, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ipvsflow.engine.conntab import (ConnTable, addr16, NONE_ID, TIMER_HORIZON_NS, TIMER_TICK_NS)

S = 10**9
TCP, UDP = 6, 17
VIP4 = addr16("10.0.0.100")
VIP6 = addr16("2001:db8::100")
DESTS = [addr16("10.0.1.1"), addr16("10.0.1.2"), addr16("2001:db8:1::1")]


def v4(i):
    return addr16(bytes([192, 168, (i >> 8) & 255, i & 255]))


def v6(i):
    return addr16(bytes.fromhex("20010db8000000000000000000000000")[:14] + bytes([(i >> 8) & 255, i & 255]))


def find_keys(table, want, n, start=0):
    """n client addresses (IPv4, cport 1000, VIP4:80, TCP) whose in-key signature satisfies want(sig)."""
    out = []
    for i in itertools.count(start):
        if want(table.key_hash(TCP, 4, v4(i), 1000, VIP4, 80)):
            out.append(v4(i))
            if len(out) == n:
                return out


# ---- model-based stateful test --------------------------------------------------------------

CLIENTS = [(4, v4(i)) for i in range(6)] + [(6, v6(i)) for i in range(4)]


def find_sig_collision(seed):
    """Two IPv4 in-keys with the same 32-bit signature (birthday search)."""
    t = ConnTable(max_entries=16, initial_slots=16, seed=seed)
    seen = {}
    for i in range(1 << 20):
        a = addr16(bytes([100, (i >> 16) & 255, (i >> 8) & 255, i & 255]))
        h = t.key_hash(TCP, 4, a, 5555, VIP4, 80)
        if h in seen:
            return seen[h], a
        seen[h] = a
    raise AssertionError("no signature collision found")


COLLIDE_SEED = 7
COLLIDE = find_sig_collision(COLLIDE_SEED)
CLIENTS += [(4, COLLIDE[0]), (4, COLLIDE[1])]

key_st = st.tuples(
    st.sampled_from([TCP, UDP]),
    st.sampled_from(CLIENTS),
    st.sampled_from([0, 1000, 5555]),
    st.sampled_from([80, 443]),
    st.booleans(),                       # template
)


class TableMachine(RuleBasedStateMachine):
    """Random operations against a dict model; structural invariants after every step."""

    @initialize(seed=st.sampled_from([0, COLLIDE_SEED, 12345]), slots=st.sampled_from([16, 32]))
    def init(self, seed, slots):
        self.t = ConnTable(max_entries=400, initial_slots=slots, seed=seed)
        self.t.set_dests(DESTS)
        self.now = 1_000 * S
        self.last_pop = None
        self.ents = {}            # id -> dict(key, okey, serial, deadline)
        self.in_ix = {}           # in-key -> id
        self.out_ix = {}          # out-key -> ids in hashing order (the kernel's chain, reversed)
        self.serial = 0

    @staticmethod
    def in_key(k):
        proto, (af, caddr), cport, vport, tmpl = k
        return (proto, af, caddr, cport, VIP4 if af == 4 else VIP6, vport, tmpl)

    def do_insert(self, k, dest, dport):
        proto, af, caddr, cport, vaddr, vport, tmpl = self.in_key(k)
        id_ = self.t.insert(proto, af, caddr, cport, vaddr, vport, template=tmpl, dest=dest, dport=dport)
        self.serial += 1
        assert self.t.serial(id_) == self.serial
        ik = self.in_key(k)
        okey = None if dest == NONE_ID or tmpl else (proto, af, DESTS[dest], dport, caddr, cport)
        self.ents[id_] = dict(key=ik, okey=okey, serial=self.serial, deadline=None, in_h=True, out_h=False)
        if ik in self.in_ix:
            self.ents[self.in_ix[ik]]["in_h"] = False
        self.in_ix[ik] = id_
        return id_

    @rule(k=key_st, dest=st.sampled_from([NONE_ID, 0, 1, 2]), dport=st.sampled_from([80, 8080]))
    def insert(self, k, dest, dport):
        if len(self.ents) >= 400:
            with pytest.raises(MemoryError):
                self.do_insert(k, dest, dport)
            return
        self.do_insert(k, dest, dport)

    @precondition(lambda self: self.ents)
    @rule(data=st.data())
    def insert_out(self, data):
        id_ = data.draw(st.sampled_from(sorted(self.ents)))
        e = self.ents[id_]
        if e["okey"] is None or e["out_h"]:
            with pytest.raises(ValueError):
                self.t.insert_out(id_)
            return
        self.t.insert_out(id_)
        self.out_ix.setdefault(e["okey"], []).append(id_)
        e["out_h"] = True

    def model_unhash(self, id_):
        e = self.ents[id_]
        if e["in_h"]:
            del self.in_ix[e["key"]]
            e["in_h"] = False
        if e["out_h"]:
            chain = self.out_ix[e["okey"]]
            chain.remove(id_)
            if not chain:
                del self.out_ix[e["okey"]]
            e["out_h"] = False

    @precondition(lambda self: self.ents)
    @rule(data=st.data())
    def remove(self, data):
        id_ = data.draw(st.sampled_from(sorted(self.ents)))
        self.t.remove(id_)
        self.model_unhash(id_)
        del self.ents[id_]
        with pytest.raises(KeyError):
            self.t.serial(id_)

    @precondition(lambda self: self.ents)
    @rule(data=st.data())
    def unhash_rehash(self, data):
        id_ = data.draw(st.sampled_from(sorted(self.ents)))
        self.t.unhash(id_)
        self.model_unhash(id_)
        if data.draw(st.booleans()):
            # re-insert under its (possibly now taken) key: newest wins again
            self.t.hash_in(id_)
            e = self.ents[id_]
            if e["key"] in self.in_ix:
                self.ents[self.in_ix[e["key"]]]["in_h"] = False
            self.in_ix[e["key"]] = id_
            e["in_h"] = True

    @rule(k=key_st)
    def lookup(self, k):
        proto, af, caddr, cport, vaddr, vport, tmpl = self.in_key(k)
        assert self.t.lookup(proto, af, caddr, cport, vaddr, vport, tmpl) == \
            self.in_ix.get(self.in_key(k), -1)

    @rule(ks=st.lists(key_st, min_size=1, max_size=40))
    def lookup_bulk(self, ks):
        import numpy as np
        rows = [self.in_key(k) for k in ks]
        keys = self.t.make_keys(
            [r[0] for r in rows], [r[1] for r in rows],
            np.array([np.frombuffer(r[2], np.uint8) for r in rows]), [r[3] for r in rows],
            np.array([np.frombuffer(r[4], np.uint8) for r in rows]), [r[5] for r in rows],
            [r[6] for r in rows])
        want = [self.in_ix.get(r, NONE_ID) for r in rows]
        assert list(self.t.lookup_keys(keys, bulk=True)) == want
        assert list(self.t.lookup_keys(keys, bulk=False)) == want

    @rule(k=key_st, dest=st.sampled_from([0, 1, 2]), dport=st.sampled_from([80, 8080]))
    def lookup_out(self, k, dest, dport):
        proto, af, caddr, cport, _, _, _ = self.in_key(k)
        okey = (proto, af, DESTS[dest], dport, caddr, cport)
        assert self.t.lookup_out(*okey) == self.out_ix.get(okey, [-1])[-1]

    @precondition(lambda self: self.ents)
    @rule(data=st.data(), delta=st.one_of(
        st.integers(-5 * S, 900 * S),
        st.sampled_from([0, 1, TIMER_TICK_NS, 10 * S, 900 * S, 3 * 3600 * S, 40 * 86400 * S])))
    def set_timer(self, data, delta):
        id_ = data.draw(st.sampled_from(sorted(self.ents)))
        self.t.set_timer(id_, self.now + delta)
        self.ents[id_]["deadline"] = self.now + delta

    @precondition(lambda self: self.ents)
    @rule(data=st.data())
    def del_timer(self, data):
        id_ = data.draw(st.sampled_from(sorted(self.ents)))
        self.t.del_timer(id_)
        self.ents[id_]["deadline"] = None

    @rule(step=st.one_of(st.integers(0, 20 * S),
                         st.sampled_from([TIMER_TICK_NS - 1, 300 * S, 86400 * S, 30 * 86400 * S])),
          limit=st.sampled_from([None, 1, 3]))
    def advance_and_pop(self, step, limit):
        self.now += step
        due = sorted((e["deadline"], e["serial"], i) for i, e in self.ents.items()
                     if e["deadline"] is not None and e["deadline"] <= self.now)
        if limit is not None:
            due = due[:limit]
        got = self.t.pop_expired(self.now, limit=limit)
        assert got == [i for _, _, i in due]
        for i in got:
            self.ents[i]["deadline"] = None
        self.last_pop = self.now

    @invariant()
    def next_deadline_bound(self):
        if not hasattr(self, "t"):
            return
        armed = [e["deadline"] for e in self.ents.values() if e["deadline"] is not None]
        nd = self.t.next_deadline()
        if not armed:
            assert nd is None
            return
        m = min(armed)
        assert nd is not None and nd <= m
        if self.last_pop is not None and m <= self.last_pop + TIMER_HORIZON_NS:
            assert nd == m
        if self.last_pop is not None:
            assert nd > self.last_pop or m <= self.last_pop and nd == m

    @invariant()
    def structure(self):
        if not hasattr(self, "t"):
            return
        assert len(self.t) == len(self.ents)
        assert self.t.stats()["out_hidden"] == sum(len(c) - 1 for c in self.out_ix.values())
        for i, e in self.ents.items():
            info = self.t.entry(i)
            assert info["in_hashed"] == e["in_h"] and info["out_hashed"] == e["out_h"]
            assert info["deadline_ns"] == e["deadline"]
        self.t.check_invariants()


TableMachine.TestCase.settings = settings(
    max_examples=int(__import__("os").environ.get("CONNTAB_EXAMPLES", "200")),
    stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_table_machine = TableMachine.TestCase


# ---- targeted tests ------------------------------------------------------------------------

def test_collision_pair_is_real():
    t = ConnTable(max_entries=16, seed=COLLIDE_SEED)
    a, b = COLLIDE
    assert a != b
    assert t.key_hash(TCP, 4, a, 5555, VIP4, 80) == t.key_hash(TCP, 4, b, 5555, VIP4, 80)
    ia = t.insert(TCP, 4, a, 5555, VIP4, 80)
    ib = t.insert(TCP, 4, b, 5555, VIP4, 80)
    assert t.lookup(TCP, 4, a, 5555, VIP4, 80) == ia
    assert t.lookup(TCP, 4, b, 5555, VIP4, 80) == ib
    t.remove(ia)
    assert t.lookup(TCP, 4, a, 5555, VIP4, 80) == -1
    assert t.lookup(TCP, 4, b, 5555, VIP4, 80) == ib
    t.check_invariants()


def test_signature_never_zero_and_seeded():
    t0, t1 = ConnTable(max_entries=16, seed=0), ConnTable(max_entries=16, seed=1)
    sigs0 = [t0.key_hash(TCP, 4, v4(i), 1000, VIP4, 80) for i in range(2000)]
    sigs1 = [t1.key_hash(TCP, 4, v4(i), 1000, VIP4, 80) for i in range(2000)]
    assert all(s >> 31 == 1 for s in sigs0)
    assert sigs0 != sigs1
    # low bits (the slot) spread evenly: 2000 keys over 64 slots, none far from 31 per slot
    counts = [0] * 64
    for s in sigs0:
        counts[s & 63] += 1
    assert max(counts) < 60 and min(counts) > 10
    # every key field takes part in the hash
    base = t0.key_hash(TCP, 4, v4(1), 1000, VIP4, 80)
    for other in [(UDP, 4, v4(1), 1000, VIP4, 80), (TCP, 6, v4(1), 1000, VIP4, 80),
                  (TCP, 4, v4(2), 1000, VIP4, 80), (TCP, 4, v4(1), 1001, VIP4, 80),
                  (TCP, 4, v4(1), 1000, VIP6, 80), (TCP, 4, v4(1), 1000, VIP4, 81)]:
        assert t0.key_hash(*other) != base
    assert t0.key_hash(TCP, 4, v4(1), 1000, VIP4, 80, True) != base


def test_backward_shift_across_wraparound():
    t = ConnTable(max_entries=64, initial_slots=16, seed=3)
    # 4 keys whose home is slot 14 and 2 whose home is slot 0: the cluster wraps 14,15,0,1,...
    home14 = find_keys(t, lambda s: s & 15 == 14, 4)
    home0 = find_keys(t, lambda s: s & 15 == 0, 2, start=5000)
    ids = {}
    for a in home14 + home0:
        ids[a] = t.insert(TCP, 4, a, 1000, VIP4, 80)
    slots = t.slots()
    assert len(slots) == 16                      # 6 entries: no growth yet
    pos = {int(w >> 32): i for i, w in enumerate(slots) if w}
    assert [pos[ids[a]] for a in home14] == [14, 15, 0, 1]
    assert [pos[ids[a]] for a in home0] == [2, 3]
    # deleting the entry in slot 15 must pull the wrapped ones back (15 <- 0 <- 1, then the
    # home-0 entries move to 0 and 1): no hole, nothing lost
    t.remove(ids.pop(home14[1]))
    slots = t.slots()
    pos = {int(w >> 32): i for i, w in enumerate(slots) if w}
    assert [pos[ids[a]] for a in (home14[0], home14[2], home14[3])] == [14, 15, 0]
    assert [pos[ids[a]] for a in home0] == [1, 2]
    assert slots[3] == 0
    for a, i in ids.items():
        assert t.lookup(TCP, 4, a, 1000, VIP4, 80) == i
    t.check_invariants()
    # and deleting at the wrap point itself (slot 0 holds a home-14 key)
    t.remove(ids.pop(home14[3]))
    for a, i in ids.items():
        assert t.lookup(TCP, 4, a, 1000, VIP4, 80) == i
    t.check_invariants()


def test_growth_is_incremental_and_lookups_work_during_migration():
    t = ConnTable(max_entries=20000, initial_slots=1024, seed=5)
    keys = [v4(i) for i in range(800)]
    ids = [t.insert(TCP, 4, a, 1000, VIP4, 80) for a in keys[:716]]   # 0.7 * 1024 = 716.8
    assert t.stats()["in_slots"] == 1024 and not t.stats()["in_migrating"]
    ids.append(t.insert(TCP, 4, keys[716], 1000, VIP4, 80))
    st_ = t.stats()
    assert st_["in_migrating"] and st_["in_slots"] == 2048 and st_["in_old_slots"] == 1024
    # each further operation moves a bounded number of old slots
    steps = 0
    while t.stats()["in_migrating"]:
        cursor = t.stats()["in_cursor"]
        n = len(ids)
        ids.append(t.insert(TCP, 4, keys[n], 1000, VIP4, 80))
        assert t.stats()["in_cursor"] - cursor <= 64 or not t.stats()["in_migrating"]
        for a, i in zip(keys, ids):
            assert t.lookup(TCP, 4, a, 1000, VIP4, 80) == i
        t.check_invariants()
        steps += 1
    assert 1024 // 64 - 1 <= steps <= 1024 // 64 + 1


def test_growth_during_heavy_deletion():
    rnd = random.Random(11)
    t = ConnTable(max_entries=50000, initial_slots=16, seed=9)
    live = {}
    next_i = 0
    saw_migration_with_deletes = 0
    for step in range(6000):
        migrating = t.stats()["in_migrating"]
        if not live or rnd.random() < (0.1 if migrating else 0.6):
            a = v4(next_i) if next_i % 3 else v6(next_i)
            af = 4 if next_i % 3 else 6
            live[(af, a)] = t.insert(TCP, af, a, 1000, VIP4 if af == 4 else VIP6, 80)
            next_i += 1
        else:
            k = rnd.choice(list(live))
            if t.stats()["in_migrating"]:
                saw_migration_with_deletes += 1
            t.remove(live.pop(k))
        if migrating or step % 97 == 0:
            t.check_invariants()
        if step % 97 == 0:
            for (af, a), i in live.items():
                assert t.lookup(TCP, af, a, 1000, VIP4 if af == 4 else VIP6, 80) == i
    t.check_invariants()
    assert saw_migration_with_deletes > 20
    assert t.stats()["in_growths"] >= 5


def test_newest_wins_and_old_entry_survives():
    t = ConnTable(max_entries=100, seed=1)
    a = t.insert(TCP, 4, "192.168.1.1", 40000, VIP4, 80)
    t.set_timer(a, 100 * S)
    b = t.insert(TCP, 4, "192.168.1.1", 40000, VIP4, 80)
    assert t.lookup(TCP, 4, "192.168.1.1", 40000, VIP4, 80) == b
    ea = t.entry(a)
    assert not ea["in_hashed"] and ea["armed"] and ea["deadline_ns"] == 100 * S
    assert t.serial(a) == 1 and t.serial(b) == 2
    t.remove(b)
    # the displaced entry is not resurrected
    assert t.lookup(TCP, 4, "192.168.1.1", 40000, VIP4, 80) == -1
    assert t.pop_expired(100 * S) == [a]
    t.remove(a)
    c = t.insert(TCP, 4, "192.168.1.1", 40000, VIP4, 80)
    assert t.serial(c) == 3                      # serials are never reused
    t.check_invariants()


def test_template_and_connection_with_equal_fields():
    t = ConnTable(max_entries=100, seed=2)
    # persistence template (cport 0) and a connection that happens to have the same fields
    tpl = t.insert(TCP, 4, "192.168.1.0", 0, VIP4, 80, template=True, dest=0, dport=80)
    conn = t.insert(TCP, 4, "192.168.1.0", 0, VIP4, 80, dest=0, dport=80)
    others = [t.insert(TCP, 4, "192.168.1.0", p, VIP4, 80, dest=0, dport=80) for p in (1, 2, 3)]
    assert t.lookup(TCP, 4, "192.168.1.0", 0, VIP4, 80, template=True) == tpl
    assert t.lookup(TCP, 4, "192.168.1.0", 0, VIP4, 80) == conn
    assert t.lookup(TCP, 4, "192.168.1.0", 1, VIP4, 80, template=True) == -1
    assert t.entry(tpl)["in_hashed"] and t.entry(conn)["in_hashed"]
    t.set_dests(DESTS)
    with pytest.raises(ValueError):
        t.insert_out(tpl)                        # templates never answer replies
    t.insert_out(conn)
    assert t.lookup_out(TCP, 4, DESTS[0], 80, "192.168.1.0", 0) == conn
    t.remove(conn)
    assert t.lookup(TCP, 4, "192.168.1.0", 0, VIP4, 80, template=True) == tpl
    assert t.lookup(TCP, 4, "192.168.1.0", 0, VIP4, 80) == -1
    assert [t.lookup(TCP, 4, "192.168.1.0", p, VIP4, 80) for p in (1, 2, 3)] == others
    t.check_invariants()


def test_ipv4_and_ipv6_do_not_mix():
    t = ConnTable(max_entries=100, seed=0)
    a = t.insert(TCP, 4, "192.168.1.1", 1, VIP4, 80)
    # same 16 bytes, af 6 (an IPv4-mapped IPv6 address) is a different key
    b = t.insert(TCP, 6, "::ffff:192.168.1.1", 1, VIP4, 80)
    assert a != b and t.entry(a)["in_hashed"] and t.entry(b)["in_hashed"]
    assert t.lookup(TCP, 4, "192.168.1.1", 1, VIP4, 80) == a
    assert t.lookup(TCP, 6, "::ffff:192.168.1.1", 1, VIP4, 80) == b
    c = t.insert(UDP, 6, "2001:db8::1", 53, VIP6, 53)
    assert t.lookup(UDP, 6, "2001:db8::1", 53, VIP6, 53) == c
    assert t.lookup(TCP, 6, "2001:db8::1", 53, VIP6, 53) == -1


def test_out_index_uses_dest_table():
    t = ConnTable(max_entries=100, seed=4)
    t.set_dests(DESTS)
    a = t.insert(TCP, 4, "192.168.5.5", 33000, VIP4, 80, dest=1, dport=8080)
    t.insert_out(a)
    assert t.lookup_out(TCP, 4, DESTS[1], 8080, "192.168.5.5", 33000) == a
    assert t.lookup_out(TCP, 4, DESTS[0], 8080, "192.168.5.5", 33000) == -1
    assert t.lookup_out(TCP, 4, DESTS[1], 80, "192.168.5.5", 33000) == -1
    # the dest array moves (engine realloc): same addresses at a new place
    t.set_dests(list(DESTS))
    assert t.lookup_out(TCP, 4, DESTS[1], 8080, "192.168.5.5", 33000) == a
    t.remove(a)
    assert t.lookup_out(TCP, 4, DESTS[1], 8080, "192.168.5.5", 33000) == -1
    b = t.insert(TCP, 4, "192.168.5.6", 33000, VIP4, 80)     # no dest
    with pytest.raises(ValueError):
        t.insert_out(b)
    t.check_invariants()


def test_out_index_entries_sharing_a_reply_tuple_newest_first():
    # client:33000 -> VIP:80, :443, :8443 all NATed to DESTS[0]:8080 (a fwmark service with a
    # fixed server port): one reply tuple. The kernel's chain holds all three, newest hashed
    # first; a reply finds the newest one left.
    t = ConnTable(max_entries=100, seed=6)
    t.set_dests(DESTS)
    okey = (TCP, 4, DESTS[0], 8080, "192.168.7.7", 33000)
    a, b, c = (t.insert(TCP, 4, "192.168.7.7", 33000, VIP4, vport, dest=0, dport=8080) for vport in (80, 443, 8443))
    other = t.insert(TCP, 4, "192.168.7.7", 33001, VIP4, 80, dest=0, dport=8080)
    for i in (a, b, c, other):
        t.insert_out(i)
    assert t.lookup_out(*okey) == c
    assert t.lookup_out(TCP, 4, DESTS[0], 8080, "192.168.7.7", 33001) == other
    assert all(t.entry(i)["out_hashed"] for i in (a, b, c))      # hidden, still hashed
    assert t.stats()["out_hidden"] == 2 and t.stats()["out_count"] == 2
    with pytest.raises(ValueError):
        t.insert_out(a)                                           # already hashed
    t.check_invariants()
    t.remove(b)                                                   # a hidden one goes: no change
    assert t.lookup_out(*okey) == c and t.stats()["out_hidden"] == 1
    t.check_invariants()
    t.remove(c)                                                   # the newest goes: a is found
    assert t.lookup_out(*okey) == a and t.stats()["out_hidden"] == 0
    t.check_invariants()
    # re-hashing orders by hashing time, as hlist_add_head does: d, then a again on top of it
    d = t.insert(TCP, 4, "192.168.7.7", 33000, VIP4, 9000, dest=0, dport=8080)
    t.insert_out(d)
    assert t.lookup_out(*okey) == d
    t.unhash(a)
    assert t.lookup_out(*okey) == d and not t.entry(a)["out_hashed"]
    t.insert_out(a)
    e = t.insert(TCP, 4, "192.168.7.7", 33000, VIP4, 9001, dest=0, dport=8080)
    t.insert_out(e)
    assert [t.lookup_out(*okey)] == [e]
    t.unhash(e)
    assert t.lookup_out(*okey) == a                               # hashed after d
    t.unhash(a)
    assert t.lookup_out(*okey) == d
    t.remove(d)
    assert t.lookup_out(*okey) == -1
    assert t.lookup_out(TCP, 4, DESTS[0], 8080, "192.168.7.7", 33001) == other
    assert t.stats()["out_lost"] == 0
    t.check_invariants()


def test_hidden_out_entries_survive_index_growth_and_migration():
    # groups of NAT entries sharing a reply tuple, inserted while the out index grows from 16
    # slots through several incremental migrations; holders and hidden entries are removed,
    # many of them while a migration is in flight. The reference is a dict of per-key chains.
    rnd = random.Random(21)
    t = ConnTable(max_entries=20000, initial_slots=16, seed=13)
    t.set_dests(DESTS)
    chains = {}                   # out key -> ids in hashing order
    removed_while_migrating = 0
    for step in range(6000):
        migrating = t.stats()["out_migrating"]
        if not chains or rnd.random() < (0.2 if migrating else 0.7):
            client = v4(rnd.randrange(4000))
            okey = (TCP, 4, DESTS[0], 8080, client, 33000)
            # a virtual port of its own: the in keys all differ, the out key is the client's
            i = t.insert(TCP, 4, client, 33000, VIP4, 1 + step, dest=0, dport=8080)
            t.insert_out(i)
            chains.setdefault(okey, []).append(i)
        else:
            okey = rnd.choice(list(chains))
            chain = chains[okey]
            i = chain[-1] if rnd.random() < 0.6 else rnd.choice(chain)
            removed_while_migrating += migrating
            t.remove(i)
            chain.remove(i)
            if not chain:
                del chains[okey]
        if step % 50 == 0 or migrating:
            for okey, chain in chains.items():
                assert t.lookup_out(*okey) == chain[-1]
        if step % 200 == 0 or (migrating and step % 7 == 0):
            t.check_invariants()
            assert t.stats()["out_hidden"] == sum(len(c) - 1 for c in chains.values())
    st_ = t.stats()
    assert st_["out_growths"] >= 5 and removed_while_migrating > 20 and st_["out_lost"] == 0
    assert st_["out_hidden"] == sum(len(c) - 1 for c in chains.values()) > 50
    # everything goes, newest first: each removal uncovers the one hashed before it; the
    # hidden-entry table goes with the last hidden entry
    for okey, chain in list(chains.items()):
        while chain:
            t.remove(chain.pop())
            assert t.lookup_out(*okey) == (chain[-1] if chain else -1)
    assert t.stats()["out_hidden"] == 0 and len(t) == 0
    assert t.memory()["out_index_bytes"] == t.stats()["out_slots"] * 8
    t.check_invariants()


def test_bulk_lookup_matches_scalar_during_migration():
    import numpy as np
    rnd = np.random.default_rng(1)
    t = ConnTable(max_entries=5000, initial_slots=16, seed=8)
    n = 3000
    caddr = np.zeros((n, 16), np.uint8)
    caddr[:, 10:12] = 255
    caddr[:, 12:] = rnd.integers(0, 256, (n, 4))
    vaddr = np.tile(np.frombuffer(VIP4, np.uint8), (n, 1))
    cport = rnd.integers(1024, 65535, n)
    keys = t.make_keys(TCP, 4, caddr, cport, vaddr, 80)
    live = keys[: n // 2]
    ids = t.insert_keys(live, ts0=0, dt=1000)
    for i in range(0, n // 2, 5):
        t.remove(int(ids[i]))
        ids[i] = NONE_ID
    extra = {}
    for i in range(3000):                # leave a migration in flight
        if t.stats()["in_migrating"] and t.stats()["in_cursor"] > 0:
            break
        extra[v4(i)] = t.insert(TCP, 4, v4(i), 9, VIP4, 80)
    assert t.stats()["in_migrating"]
    for a, i in extra.items():
        assert t.lookup(TCP, 4, a, 9, VIP4, 80) == i
    scal = t.lookup_keys(keys, bulk=False)
    bulk = t.lookup_keys(keys, bulk=True)
    assert (scal == bulk).all()
    assert (scal[: n // 2] == ids).all()
    # keys never inserted, unless a random duplicate of an inserted one
    inserted = {bytes(k) for k in live}
    for j in range(n // 2, n):
        if bytes(keys[j]) not in inserted:
            assert scal[j] == NONE_ID
    t.check_invariants()


def test_bench_lookup_state_steps_tcp_and_rearms():
    import numpy as np
    t = ConnTable(max_entries=1000, seed=2)
    n = 100
    caddr = np.zeros((n, 16), np.uint8)
    caddr[:, 10:12] = 255
    caddr[:, 15] = np.arange(n)
    keys = t.make_keys(TCP, 4, caddr, 1000, np.tile(np.frombuffer(VIP4, np.uint8), (n, 1)), 80)
    ids = t.insert_keys(keys, ts0=0, dt=0, state=0)            # state NONE
    # syn (0) then ack (2) on key 7: NONE -syn-> SYN_RECV -ack-> ESTABLISHED (reference 3.4)
    assert t.bench_lookup_state(keys, [7], ts0=5 * S, events=[0]) == 1
    assert t.entry(int(ids[7]))["state"] == 3
    assert t.entry(int(ids[7]))["deadline_ns"] == 5 * S + 60 * S
    assert t.bench_lookup_state(keys, [7], ts0=6 * S, events=[2], bulk=True) == 1
    assert t.entry(int(ids[7]))["state"] == 1
    assert t.entry(int(ids[7]))["deadline_ns"] == 6 * S + 900 * S
    t.remove(int(ids[9]))
    assert t.bench_lookup_state(keys, list(range(n)), ts0=7 * S, dt=0, bulk=True) == n - 1
    t.check_invariants()


# ---- timers --------------------------------------------------------------------------------

def _table_with(n, seed=0):
    t = ConnTable(max_entries=max(n, 1) + 10, initial_slots=64, seed=seed)
    return t, [t.insert(TCP, 4, v4(i), 1000, VIP4, 80) for i in range(n)]


def test_expiry_order_with_ties_is_deadline_then_serial():
    rnd = random.Random(4)
    t, ids = _table_with(300)
    deadlines = {}
    order = ids[:]
    rnd.shuffle(order)
    for i in order:                       # arm in a shuffled order; many equal deadlines
        d = 1000 * S + rnd.choice([0, 1, 2, 3, TIMER_TICK_NS, 5 * S, 5 * S + 1]) * 1
        t.set_timer(i, d)
        deadlines[i] = d
    expect = sorted(ids, key=lambda i: (deadlines[i], t.serial(i)))
    got = t.pop_expired(1000 * S + 2)
    assert got == [i for i in expect if deadlines[i] <= 1000 * S + 2]
    got += t.pop_expired(2000 * S)
    assert got == expect
    assert t.next_deadline() is None
    t.check_invariants()


def test_deadline_moved_later_and_earlier():
    t, (a, b, c) = _table_with(3)
    now = 50 * S
    t.set_timer(a, now + 900 * S)        # ESTABLISHED
    t.set_timer(b, now + 60 * S)
    t.set_timer(c, now + 120 * S)
    assert t.pop_expired(now) == []
    t.set_timer(a, now + 10 * S)         # FIN -> CLOSE: moved earlier
    t.set_timer(b, now + 200 * S)        # moved later
    assert t.pop_expired(now + 10 * S - 1) == []
    assert t.pop_expired(now + 10 * S) == [a]
    assert t.pop_expired(now + 60 * S) == []                  # b is no longer due at its old time
    t.set_timer(c, now + 61 * S)         # expire now ("moved to now")
    assert t.pop_expired(now + 61 * S) == [c]
    assert t.next_deadline() == now + 200 * S
    assert t.pop_expired(now + 199 * S) == []
    assert t.pop_expired(now + 200 * S) == [b]
    t.check_invariants()


def test_moved_later_many_times_fires_once_at_the_last_deadline():
    t, ids = _table_with(50)
    t.pop_expired(0)
    for i in ids:
        t.set_timer(i, 30 * S)
    last = {}
    now = 0
    for step in range(1, 400):           # keepalive every 0.5 s, round-robin: 25 s per entry
        now = step * S // 2
        i = ids[step % 50]
        t.set_timer(i, now + 30 * S)
        last[i] = now + 30 * S
        assert t.pop_expired(now) == []
        m = min(last.get(j, 30 * S) for j in ids)
        nd = t.next_deadline()
        assert now < nd <= m and (nd == m or m > now + TIMER_HORIZON_NS)
    t.check_invariants()
    expect = sorted(ids, key=lambda i: (last[i], t.serial(i)))
    assert t.pop_expired(now + 31 * S) == expect


def test_huge_time_jumps_are_cheap():
    t, ids = _table_with(40)
    base = 1_700_000_000 * S             # epoch-like timestamps
    spans = [10 * S, 900 * S, 5 * 3600 * S, 3 * 86400 * S, 400 * 86400 * S]
    dl = {i: base + spans[k % len(spans)] + k for k, i in enumerate(ids)}
    for i in ids:
        t.set_timer(i, dl[i])
    before = t.stats()["timer_steps"]
    got = []
    now = base
    for jump in [1 * S, 86400 * S, 10 * 86400 * S, 365 * 86400 * S, 10 * 365 * 86400 * S]:
        now += jump
        got += t.pop_expired(now)
        assert t.next_deadline() is None or t.next_deadline() > now
    assert got == sorted(ids, key=lambda i: (dl[i], t.serial(i)))
    # work is per entry and wheel level, not per elapsed tick (ten years = 3e11 ticks)
    assert t.stats()["timer_steps"] - before <= 8 * len(ids)


def test_timer_extremes_and_repeated_arming():
    t, (a, b, c) = _table_with(3)
    big = 2**62                          # (INT64_MAX itself reads as "nothing armed")
    t.set_timer(a, big)
    t.set_timer(b, -5 * S)               # before the epoch: still ordered correctly
    t.set_timer(c, 0)
    assert t.pop_expired(-5 * S) == [b]
    assert t.pop_expired(0) == [c]
    assert t.pop_expired(10**18) == []
    assert t.next_deadline() is not None and t.next_deadline() <= big
    t.set_timer(a, 7)                    # far -> near
    assert t.pop_expired(10**18) == [a]
    t.set_timer(a, 100)
    t.set_timer(a, 100)
    t.del_timer(a)
    t.del_timer(a)
    assert t.pop_expired(big) == [] and t.next_deadline() is None
    t.check_invariants()


def test_release_disarms_and_timer_survives_unhash():
    t, (a, b) = _table_with(2)
    t.set_timer(a, 5 * S)
    t.set_timer(b, 6 * S)
    t.unhash(b)
    t.remove(a)
    assert t.pop_expired(10 * S) == [b]
    t.check_invariants()


def test_next_deadline_exact_within_horizon():
    t, ids = _table_with(20)
    t.pop_expired(0)                      # tells the wheel what time it is
    for k, i in enumerate(ids):
        t.set_timer(i, 3 * S + k * 100)
    assert t.next_deadline() == 3 * S
    t.set_timer(ids[0], 4 * S)            # the earliest moves later
    assert t.next_deadline() == 3 * S + 100
    t.del_timer(ids[1])
    assert t.next_deadline() == 3 * S + 200
    t.set_timer(ids[5], 2 * S)            # a new earliest
    assert t.next_deadline() == 2 * S
    t.check_invariants()


# ---- allocation, bad input -----------------------------------------------------------------

def test_full_table_and_bad_input():
    t = ConnTable(max_entries=3, seed=0)
    ids = [t.insert(TCP, 4, v4(i), 1, VIP4, 80) for i in range(3)]
    with pytest.raises(MemoryError):
        t.insert(TCP, 4, v4(9), 1, VIP4, 80)
    t.remove(ids[1])
    assert t.insert(TCP, 4, v4(9), 1, VIP4, 80) == ids[1]      # freed id reused
    with pytest.raises(KeyError):
        t.remove(99)
    with pytest.raises(KeyError):
        t.set_timer(-1, 0)
    with pytest.raises(ValueError):
        t.insert(TCP, 5, v4(1), 1, VIP4, 80)
    with pytest.raises(ValueError):
        t.insert(TCP, 4, b"\x01\x02\x03", 1, VIP4, 80)
    with pytest.raises(ValueError):
        t.insert(TCP, 4, v4(1), 70000, VIP4, 80)
    with pytest.raises(ValueError):
        t.lookup(300, 4, v4(1), 1, VIP4, 80)
    with pytest.raises(ValueError):
        ConnTable(max_entries=0)
    with pytest.raises(ValueError):
        t.make_keys(TCP, 5, [[0] * 16], 1, [[0] * 16], 80)
    t.check_invariants()


def test_memory_per_connection_across_a_doubling_cycle():
    """NAT entries (both indexes) stay within 128 B per connection all through growth,
    including while a migration is in flight, and the figure matches the arithmetic."""
    import numpy as np
    n = 120_000
    t = ConnTable(max_entries=n + 10, initial_slots=1024, seed=3)
    t.set_dests(DESTS[:2])
    caddr = np.zeros((n, 16), np.uint8)
    caddr[:, 10:12] = 255
    caddr[:, 12:] = np.arange(n, dtype=">u4").view(np.uint8).reshape(n, 4)
    keys = t.make_keys(TCP, 4, caddr, 1000, np.tile(np.frombuffer(VIP4, np.uint8), (n, 1)), 80)
    worst = 0.0
    step = 500
    for start in range(0, n, step):
        t.insert_keys(keys[start:start + step], ts0=start * 10_000, dt=10_000, dests=np.arange(step) % 2, dport=80)
        m = t.memory(resident=True)
        if len(t) >= 50_000:
            worst = max(worst, m["per_conn"])
        # what the kernel holds for the indexes is what is accounted (to the page)
        assert m["index_resident"] <= m["in_index_bytes"] + m["out_index_bytes"] + 2 * 4096
        st_ = t.stats()
        if not st_["in_migrating"]:
            assert m["in_index_bytes"] == st_["in_slots"] * 8
    assert worst <= 128, worst
    # settled: 80 B entry + 8 B slot / load per index (+ the timer structure)
    m, st_ = t.memory(), t.stats()
    expect = 80 + 8 * (st_["in_slots"] + st_["out_slots"]) / n
    assert abs(m["per_conn"] - expect) < 1.0
    t.check_invariants()
