"""Connection table: lookup + TCP state step + deadline re-arm per packet, new-connection
insert, expiry, and bytes per connection, at 1K, 1M and 10M live connections.

For each size N (IPVSFLOW_BENCH_SIZES, default "1e3,1e6,1e7"), side by side in one run:

* ``ct``: ConnTable.bench_lookup_state, a nogil loop over IPVSFLOW_BENCH_OPS packets (default
  2,000,000) whose keys are drawn uniformly from the live set and laid out in arrival order
  (as a parsed burst is); ``scalar`` looks each packet up on its own, ``bulk`` prefetches
  ahead as the engine does (hash + slot prefetch 16 packets ahead, peek + entry prefetch 8
  ahead, then the lookup: the rte_hash bulk stages as a rolling pipeline);
* ``C floor``: bench/conntab_floor.c, compiled with cc -O2 and run as a subprocess: the same
  work as a plain C loop over a table of the same shape (its own ns/op, CPU time);
* ``dict``: bench/dict_engine.py, the plain-Python dict engine (tuple key -> [state, deadline]),
  up to IPVSFLOW_BENCH_DICT_MAX connections (default 1e7; it needs ~300 B per connection);
* inserts (DR: in index; NAT: in and out index), expiry (pop + release, deadline order);
* bytes per connection: entries (80 B) + index slots + timers over the live entries, DR and
  NAT, at N and min / avg / max across the doubling cycles below N (growth included), the
  memory the kernel actually backs (pagemap) next to the accounted one, and the dict's (tracemalloc).

All times are CPU time of the process (time.process_time; the C floor uses the same clock), so
other jobs on the machine disturb the ratios less. Targets: within 1.4x of the C loop, >= 40x
the dict engine at 1M. Run: ``pytest bench/bench_conntab.py`` (quick:
``IPVSFLOW_BENCH_SIZES=1e3,1e5 IPVSFLOW_BENCH_OPS=500000 pytest bench/bench_conntab.py``).
"""
from __future__ import annotations

import gc
import importlib.util
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ipvsflow.engine.conntab import ConnTable

HERE = Path(__file__).parent
SIZES = [int(float(x)) for x in os.environ.get("IPVSFLOW_BENCH_SIZES", "1e3,1e6,1e7").split(",") if x]
OPS = int(float(os.environ.get("IPVSFLOW_BENCH_OPS", "2e6")))
DICT_MAX = int(float(os.environ.get("IPVSFLOW_BENCH_DICT_MAX", "1e7")))
DICT_OPS = int(float(os.environ.get("IPVSFLOW_BENCH_DICT_OPS", "3e5")))
T0 = 1_700_000_000 * 10**9          # epoch-like packet timestamps
ARRIVAL_NS = 10_000                 # new connections 10 us apart (100k/s) while filling
DESTS = ["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"]
RESULTS: dict = {}
ids_ = [f"{n:.0e}".replace("e+0", "e") for n in SIZES]

pytestmark = pytest.mark.benchmark(timer=time.process_time, min_rounds=1, warmup=False)


def _size(n):
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}K" if n >= 1000 else str(n)


def _keys(table, n, seed):
    """n random IPv4 TCP in-keys to one VIP:80 (random client address and port)."""
    rng = np.random.default_rng(seed)
    caddr = np.zeros((n, 16), np.uint8)
    caddr[:, 10:12] = 0xFF
    caddr[:, 12:] = rng.integers(0, 256, (n, 4), dtype=np.uint8)
    vaddr = np.zeros((n, 16), np.uint8)
    vaddr[:, 10:] = [0xFF, 0xFF, 10, 0, 0, 100]
    return table.make_keys(6, 4, caddr, rng.integers(1024, 65536, n), vaddr, 80)


def _table(n, nat=False, seed=1):
    t = ConnTable(max_entries=max(n + 1024, 1 << 12), initial_slots=1024, seed=seed)
    t.set_dests(DESTS)
    keys = _keys(t, n, seed)
    t.insert_keys(keys, ts0=T0, dt=ARRIVAL_NS, dests=(np.arange(n) % len(DESTS)) if nat else None,
                  dport=80, state=1)
    return t, keys


@pytest.fixture(scope="module", params=SIZES, ids=ids_)
def size(request):
    """One live-connection count; the tests of a size run together (one table at a time)."""
    holder = {"n": request.param}
    yield holder
    holder.clear()
    gc.collect()


def _live(holder):
    """The size's DR table (built on first use), its keys and a packet stream."""
    n = holder["n"]
    if "t" not in holder:
        gc.collect()
        t, keys = _table(n)
        t.check_invariants()            # also at 10M: the table works at that size
        stream = keys[np.random.default_rng(7).integers(0, n, OPS)]
        holder.update(t=t, keys=keys, stream=stream)
    return holder["t"], holder["keys"], holder["stream"]


@pytest.mark.parametrize("mode", ["scalar", "bulk"])
def test_lookup_state(benchmark, size, mode):
    n = size["n"]
    t, _, stream = _live(size)
    ts = [T0 + n * ARRIVAL_NS]

    def run():
        hits = t.bench_lookup_state(stream, ts0=ts[0], dt=100, bulk=(mode == "bulk"))
        ts[0] += OPS * 100
        return hits

    hits = benchmark.pedantic(run, rounds=3 if n < 10_000_000 else 2, iterations=1)
    assert hits == OPS
    ns = benchmark.stats.stats.min / OPS * 1e9
    benchmark.extra_info["ns_per_pkt"] = round(ns, 2)
    RESULTS[("ct", mode, n)] = ns


def test_expire(benchmark, size):
    """Every live entry (deadlines moved later by the lookups) expires: pops in deadline
    order and releases, ns per entry."""
    n = size["n"]
    t, _, _ = _live(size)
    live = len(t)

    def run():
        return t.bench_expire(2**62)

    got = benchmark.pedantic(run, rounds=1, iterations=1)
    assert got == live and len(t) == 0
    RESULTS[("expire", n)] = benchmark.stats.stats.min / live * 1e9
    size.clear()
    size["n"] = n
    del t
    gc.collect()


@pytest.mark.parametrize("kind", ["dr", "nat"])
def test_insert(benchmark, size, kind):
    """n new connections into an empty table (index growth included): ns per connection."""
    n = size["n"]
    box = {}

    def setup():
        box.clear()
        gc.collect()
        t = ConnTable(max_entries=max(n + 1024, 1 << 12), initial_slots=1024, seed=2)
        t.set_dests(DESTS)
        box["t"] = t
        return (t, _keys(t, n, 2)), {}

    def run(t, keys):
        t.insert_keys(keys, ts0=T0, dt=ARRIVAL_NS, dests=(np.arange(n) % 4) if kind == "nat" else None,
                      dport=80, state=3)
        return len(t)

    # (the dests array is built inside run for NAT: ~1 ns per connection of numpy)
    got = benchmark.pedantic(run, setup=setup, rounds=3 if n < 10_000_000 else 1, iterations=1)
    assert got == n
    RESULTS[("insert", kind, n)] = benchmark.stats.stats.min / n * 1e9
    m = box["t"].memory()
    RESULTS[("bpc", kind, n)] = m["per_conn"]
    box.clear()
    gc.collect()


def test_bytes_per_connection(benchmark, size):
    """Bytes per connection while filling to n, DR and NAT: min / avg / max over the
    doubling cycles between n/4 and n, sampled 512 times and through every migration."""
    n = size["n"]
    out = {}
    for kind in ("dr", "nat"):
        t = ConnTable(max_entries=max(n + 1024, 1 << 12), initial_slots=1024, seed=3)
        t.set_dests(DESTS)
        keys = _keys(t, n, 3)
        step = max(n // 512, 1)
        samples = []
        resident = []
        i = 0
        while i < n:
            j = min(n, i + step)
            st = t.stats()
            if st["in_migrating"] or st["out_migrating"]:
                j = min(j, i + 16)            # fine steps through a migration
            t.insert_keys(keys[i:j], ts0=T0 + i * ARRIVAL_NS, dt=ARRIVAL_NS,
                          dests=(np.arange(i, j) % 4) if kind == "nat" else None, dport=80, state=1)
            i = j
            if i >= n // 4:
                m = t.memory()
                samples.append(m["per_conn"])
        m = t.memory(resident=True)
        out[kind] = dict(at_n=m["per_conn"], min=min(samples), avg=sum(samples) / len(samples),
                         max=max(samples), index_bytes=m["index_bytes"],
                         index_resident=m["index_resident"], entries=m["entries_bytes"],
                         in_load=m["in_load"], out_load=m["out_load"])
        if n >= 100_000:
            # the accounted index memory is what the kernel holds (page granularity)
            assert m["index_resident"] <= m["index_bytes"] * 1.05 + (4 << 20)
        del t, keys
        gc.collect()
    RESULTS[("bytes", n)] = out
    if n <= DICT_MAX and n <= 1_000_000:
        RESULTS[("dict_bytes", n)] = _dict_engine().bytes_per_conn(n)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v["max"], 1) for k, v in out.items()})


def _dict_engine():
    spec = importlib.util.spec_from_file_location("dict_engine", HERE / "dict_engine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dict_engine(benchmark, size):
    n = size["n"]
    if n > DICT_MAX:
        pytest.skip(f"dict baseline above IPVSFLOW_BENCH_DICT_MAX={DICT_MAX}")
    mod = _dict_engine()
    gc.collect()
    r = mod.bench_lookup_state(n, min(DICT_OPS, OPS))
    RESULTS[("dict", n)] = r["ns_per_op"]
    if n <= 1_000_000:
        RESULTS[("dict_insert", n)] = mod.bench_insert(n)
    gc.collect()
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info["ns_per_pkt"] = round(r["ns_per_op"], 1)


def test_c_floor(benchmark, size, compile_c):
    n = size["n"]
    exe = compile_c(HERE / "conntab_floor.c", shared=False)
    box = {}

    def run():
        out = subprocess.run([str(exe), str(n), str(OPS)], capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"{exe} {n} {OPS} failed ({out.returncode}): {out.stdout} {out.stderr}")
        box.update({k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", out.stdout)})

    benchmark.pedantic(run, rounds=1, iterations=1)
    RESULTS[("c", n)] = box
    benchmark.extra_info.update(scalar_ns=box["scalar_ns"], batch_ns=box["batch_ns"])


def test_summary(bench_summary):
    g = RESULTS.get
    lines = [f"{'live':>5}  {'ct scal':>7}  {'ct bulk':>7}  {'C scal':>7}  {'C batch':>7}  {'x C':>5}  "
             f"{'dict':>7}  {'x dict':>6}  {'ins DR':>6}  {'ins NAT':>7}  {'C ins':>6}  {'expire':>6}"]
    for n in SIZES:
        s, b = g(("ct", "scalar", n)), g(("ct", "bulk", n))
        c = g(("c", n)) or {}
        d = g(("dict", n))
        best = min(x for x in (s, b) if x) if (s or b) else None
        cbest = min(c["scalar_ns"], c["batch_ns"]) if c else None
        f = lambda x, w=7, p=1: f"{x:{w}.{p}f}" if x else " " * (w - 1) + "-"
        lines.append(
            f"{_size(n):>5}  {f(s)}  {f(b)}  {f(c.get('scalar_ns'))}  {f(c.get('batch_ns'))}  "
            f"{f(best / cbest if best and cbest else None, 5, 2)}  {f(d)}  "
            f"{f(d / best if d and best else None, 6)}  {f(g(('insert', 'dr', n)), 6)}  "
            f"{f(g(('insert', 'nat', n)))}  {f(c.get('insert_ns'), 6)}  {f(g(('expire', n)), 6)}")
    lines.append("ns per packet / per new connection / per expired entry (CPU time); x C = best ct / "
                 "best C floor, x dict = dict / best ct")
    for n in SIZES:
        by = g(("bytes", n))
        if not by:
            continue
        parts = []
        for kind in ("dr", "nat"):
            v = by[kind]
            parts.append(f"{kind.upper()} {v['at_n']:.1f} (min {v['min']:.1f} avg {v['avg']:.1f} "
                         f"max {v['max']:.1f}; index {v['index_bytes'] / 2**20:.1f} MiB accounted, "
                         f"{v['index_resident'] / 2**20:.1f} MiB resident)")
        db = g(("dict_bytes", n))
        lines.append(f"bytes/conn at {_size(n)}: " + "; ".join(parts)
                     + (f"; dict {db:.0f}" if db else ""))
    bench_summary("conntab: lookup + TCP step + re-arm, insert, expiry, bytes per connection", lines)
