"""The plain-Python baseline: the connection engine a user would write with a dict.

Connections live in a dict keyed by the tuple ``(proto, client_ip, client_port, vip, vport)``
(addresses as ints, the cheapest hashable form) whose value is a list ``[state, deadline]``;
a packet is a dict lookup, one TCP state step from the same table as the compiled benchmark
helpers (the kernel's INPUT_ONLY rows: DR entries before any reply) and the deadline
re-arm ``ts + timeout[state]``. New connections get a real server round-robin.

Used side by side with the compiled connection table (bench/bench_conntab.py) and the engine
(bench/bench_engine.py):

    bench_lookup_state(n, ops) -> {"ns_per_op": ..., "n": n, "ops": ops, "hits": ...}

Times are CPU time of this process (time.process_time), as the C floor reports them.
"""
from __future__ import annotations

import random
import time
import tracemalloc

SYN, FIN, ACK, RST = 0, 1, 2, 3
# rows: event (syn, fin, ack, rst); columns: state NO ES SS SR FW TW CL CW LA LI SA
TCP_INPUT_ONLY = [
    [3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3],
    [6, 4, 2, 5, 4, 5, 6, 7, 8, 9, 5],
    [1, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1],
    [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6],
]
TIMEOUT_NS = [s * 10**9 for s in (2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120)]
ESTABLISHED = 1


class DictEngine:
    """dict-keyed connection tracking with a TCP state step and round-robin scheduling."""

    def __init__(self, dests=4):
        self.conns = {}
        self.dests = dests
        self.rr = 0

    def insert(self, key, ts, state=ESTABLISHED):
        self.conns[key] = [state, ts + TIMEOUT_NS[state]]

    def packet(self, ts, key, event=ACK):
        """One packet: (new?, dest index or None, state after)."""
        v = self.conns.get(key)
        if v is None:
            if event != SYN:
                return False, None, None
            dest = self.rr
            self.rr = (self.rr + 1) % self.dests
            st = TCP_INPUT_ONLY[SYN][0]
            self.conns[key] = [st, ts + TIMEOUT_NS[st], dest]
            return True, dest, st
        st = TCP_INPUT_ONLY[event][v[0]]
        v[0] = st
        v[1] = ts + TIMEOUT_NS[st]
        return False, v[2] if len(v) > 2 else None, st

    def lookup_state(self, stream, ts0=0, dt=100, event=ACK):
        """The hot loop, written as tightly as plain Python allows: returns the hit count."""
        row = TCP_INPUT_ONLY[event]
        tmo = TIMEOUT_NS
        get = self.conns.get
        ts = ts0
        hits = 0
        for key in stream:
            v = get(key)
            if v is not None:
                st = row[v[0]]
                v[0] = st
                v[1] = ts + tmo[st]
                hits += 1
            ts += dt
        return hits

    def expire(self, now):
        """Drop every connection whose deadline has passed (a scan: what a dict allows)."""
        dead = [k for k, v in self.conns.items() if v[1] <= now]
        for k in dead:
            del self.conns[k]
        return len(dead)


def make_keys(n, seed=1, vip=0x0A000064, vport=80):
    """n distinct random (6, client_ip, client_port, vip, vport) tuples."""
    rnd = random.Random(seed)
    seen = set()
    out = []
    while len(out) < n:
        k = (6, rnd.getrandbits(32), 1024 + rnd.randrange(64512), vip, vport)
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


def bench_lookup_state(n, ops, seed=1, repeat=3):
    """Build n connections, then time ``ops`` ACKs on uniformly random live connections (keys
    laid out in arrival order). Returns ns per packet (best of ``repeat``) and the details."""
    keys = make_keys(n, seed)
    eng = DictEngine()
    for i, k in enumerate(keys):
        eng.insert(k, i * 10_000)
    rnd = random.Random(seed + 1)
    stream = [keys[rnd.randrange(n)] for _ in range(ops)]
    best = None
    hits = 0
    for _ in range(repeat):
        t = time.process_time()
        hits = eng.lookup_state(stream, ts0=n * 10_000)
        el = time.process_time() - t
        best = el if best is None else min(best, el)
    assert hits == ops
    return {"ns_per_op": best / ops * 1e9, "n": n, "ops": ops, "hits": hits}


def bench_insert(n, seed=1):
    """ns per new connection (dict insert of key -> [state, deadline])."""
    keys = make_keys(n, seed)
    eng = DictEngine()
    t = time.process_time()
    for i, k in enumerate(keys):
        eng.insert(k, i * 10_000)
    return (time.process_time() - t) / n * 1e9


def bytes_per_conn(n, seed=1):
    """Python heap bytes per tracked connection (tracemalloc: dict, keys, values)."""
    rnd = random.Random(seed)
    vip, vport = 0x0A000064, 80
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        eng = DictEngine()
        for i in range(n):          # keys (and their int objects) built as a reader would
            eng.insert((6, rnd.getrandbits(32), 1024 + rnd.randrange(64512), vip, vport), i * 10_000)
        used = tracemalloc.get_traced_memory()[0] - before
        live = len(eng.conns)
    finally:
        tracemalloc.stop()
    return used / live


if __name__ == "__main__":
    import sys
    n = int(float(sys.argv[1])) if len(sys.argv) > 1 else 1_000_000
    ops = int(float(sys.argv[2])) if len(sys.argv) > 2 else 300_000
    print(bench_lookup_state(n, ops))
