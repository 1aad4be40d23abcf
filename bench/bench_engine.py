"""Engine throughput: Engine.process over pre-parsed bursts, at 1K, 1M and 10M live connections.

For each size N (IPVSFLOW_BENCH_SIZES, default "1e3,1e6,1e7"):

* new connections: N SYNs (DR service, rr over 4 servers) fill the table; ns per new connection,
  "first fill" (it includes the growth of the indexes and the page faults of the memory the
  table grows into: system time, which varies a lot with the machine's state) and "warm" (the
  same number again after every entry expired: ids, index and pages are reused, as in a
  long capture);
* hits: IPVSFLOW_BENCH_HITS packets (default 2,000,000), each an ACK of a uniformly random live
  connection, 1% of them SYNs of new connections; ns per packet and Mpps;
* bytes per connection (entry slab + indexes + timers, over the live entries);
* NAT at 1M (or the largest size below): the same with NAT entries (also in the out index), half
  of the packets being the real servers' replies (found through the out index).

The bursts are PacketBatch objects of 256 parsed descriptors whose addresses, ports, flags and
timestamps are rewritten with numpy between the timed Engine.process calls, so the descriptors
are in cache as they are behind a reader, while the connections they hit are spread over the
whole table. Only the process() calls are timed, in CPU time of the calling thread
(time.thread_time: the engine runs there; numpy's idle BLAS threads are not counted, and are
kept to one), as the C floor (single-threaded, process CPU time) and the dict engine report
theirs: the machine's other load then costs cache, not the time slices it takes.

Baselines in the same run: the connection table's own bare lookup + state-step loop over the same
connections (ConnTable.bench_lookup_state, "tbl loop"), and, when their files are present, the
plain-Python dict engine (bench/dict_engine.py) and the C loop over a similar table
(bench/conntab_floor.c; its faster of scalar and batch loops). The summary prints ns/packet and
the ratios (engine / loop, dict / engine). Run: ``pytest bench/bench_engine.py`` (quick:
``IPVSFLOW_BENCH_SIZES=1e3,1e5 IPVSFLOW_BENCH_HITS=200000 pytest bench/bench_engine.py``).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")     # before numpy: no spinning BLAS threads
import numpy as np  # noqa: E402
import pytest

from ipvsflow.config import Config, RealServer, VirtualService, FWD_DROUTE, FWD_MASQ
from ipvsflow.engine import Engine
from ipvsflow.io import PacketBatch

HERE = Path(__file__).parent
SIZES = [int(float(x)) for x in os.environ.get("IPVSFLOW_BENCH_SIZES", "1e3,1e6,1e7").split(",") if x]
HITS = int(float(os.environ.get("IPVSFLOW_BENCH_HITS", "2000000")))
BURST = 256
BURSTS = 32                         # descriptors rewritten per timed round: 8192 packets
T0 = 1_700_000_000 * 10**9
FRAME = bytes.fromhex("020000000002020000000001" "0800"
                      "450000280001000040060000" "0a000001" "c000020a"
                      "04000050" "00000001" "00000000" "5010ffff" "00000000")
RESULTS: dict = {}
cpu = time.thread_time              # the engine's CPU time (process() runs in this thread)


def _config(fwd):
    return Config(services=[VirtualService(
        proto=6, addr="192.0.2.10", port=80, scheduler="rr",
        dests=[RealServer(f"10.99.0.{i}", 80, fwd=fwd) for i in range(1, 5)])])


class Bursts:
    """BURSTS parsed batches of BURST packets, refilled in place with numpy."""

    def __init__(self):
        self.batches = [PacketBatch.from_packets([(T0, FRAME)] * BURST) for _ in range(BURSTS)]
        self.views = [b.to_numpy() for b in self.batches]

    @staticmethod
    def fill(view, conn, flags, ts):
        # connection i: client 10.x.y.z (i // 16), source port 1024 + i % 16
        a = (10 << 24) + (conn // 16)
        src = view["src"]
        src[:, 12] = (a >> 24) & 255
        src[:, 13] = (a >> 16) & 255
        src[:, 14] = (a >> 8) & 255
        src[:, 15] = a & 255
        view["sport"] = 1024 + conn % 16
        view["tcp_flags"] = flags
        view["ts_ns"] = ts

    @staticmethod
    def swap_replies(view, reply, rs_addr):
        """Turn the rows where ``reply`` is set into the real server's reply to that client:
        source rs_addr (uint32 per row):80, destination the client and its port."""
        src, dst = view["src"], view["dst"]
        dst[:] = src
        dst[:, 12:16] = np.where(reply[:, None], src[:, 12:16], VIP_BYTES)
        for j in range(4):
            src[reply, 12 + j] = (rs_addr[reply] >> (24 - 8 * j)) & 255
        cport = view["sport"].copy()
        view["sport"] = np.where(reply, 80, cport)
        view["dport"] = np.where(reply, cport, 80)


VIP_BYTES = np.array([192, 0, 2, 10], dtype=np.uint8)


def populate(eng, bursts, n, rs=None, first=0, t0=T0):
    """n SYNs of connections first, first + 1, ... from time t0; returns the seconds spent in
    process(). rs: array receiving each connection's real-server id."""
    spent = 0.0
    i = 0
    while i < n:
        for b, v in zip(bursts.batches, bursts.views):
            if i >= n:
                break
            m = min(BURST, n - i)
            idx = np.arange(i, i + BURST, dtype=np.int64)
            bursts.fill(v, first + idx, 0x02, t0 + idx * 5)
            t = cpu()
            dec = eng.process(b, 0, m)
            spent += cpu() - t
            if rs is not None:
                rs[i:i + m] = dec["rs"]
            i += m
    return spent


def hits(eng, bursts, n_live, n_hits, rng, new_from, reply_frac=0.0, rs_addr=None):
    """n_hits packets: ACKs of random live connections, 1% SYNs of new ones; with reply_frac,
    that share of the ACKs are replies from the connection's real server (rs_addr: its address
    per connection, uint32)."""
    spent = 0.0
    done = 0
    ts = T0 + 60 * 10**9 // 2
    fresh = new_from
    while done < n_hits:
        for b, v in zip(bursts.batches, bursts.views):
            conn = rng.integers(0, n_live, BURST)
            flags = np.full(BURST, 0x10, dtype=np.uint8)
            new = rng.random(BURST) < 0.01
            k = int(new.sum())
            conn[new] = np.arange(fresh, fresh + k)
            flags[new] = 0x02
            fresh += k
            bursts.fill(v, conn, flags, ts + np.arange(BURST) * 3)
            if reply_frac:
                bursts.swap_replies(v, (rng.random(BURST) < reply_frac) & ~new, rs_addr[conn % n_live])
            ts += BURST * 3
        t = cpu()
        for b in bursts.batches:
            eng.process(b)
        spent += cpu() - t
        done += BURST * BURSTS
    return spent, done


def _fmt_size(n):
    return f"{n // 1000000}M" if n >= 1000000 else (f"{n // 1000}K" if n >= 1000 else str(n))


@pytest.mark.parametrize("n", SIZES, ids=[_fmt_size(n) for n in SIZES])
def test_engine_throughput(benchmark, n):
    bursts = Bursts()
    eng = Engine(_config(FWD_DROUTE), max_conns=max(1 << 16, int(n * 1.2) + HITS // 50))
    t_new = populate(eng, bursts, n)
    assert eng.conn_count == n
    rng = np.random.default_rng(1)
    box = {}

    def run():
        box["t"], box["n"] = hits(eng, bursts, n, HITS, rng, n)

    benchmark.pedantic(run, rounds=1, iterations=1)
    mem = eng.memory()
    eng.check_invariants() if n <= 100000 else None
    # warm: everything expires (900 s after the last packet at the latest), then as many new
    # connections again
    t1 = T0 + 1000 * 10**9
    eng.advance(t1)
    assert eng.conn_count == 0
    t_warm = populate(eng, bursts, n, first=4 * n + HITS, t0=t1)
    assert eng.conn_count == n
    ns_hit = box["t"] / box["n"] * 1e9
    ns_new = t_new / n * 1e9
    ns_warm = t_warm / n * 1e9
    RESULTS[n] = {"ns_hit": ns_hit, "ns_new": ns_new, "ns_warm": ns_warm, "bpc": mem["bytes_per_conn"]}
    benchmark.extra_info.update(packets=box["n"], ns_per_packet=round(ns_hit, 1),
                                ns_per_new_conn=round(ns_new, 1), ns_per_new_conn_warm=round(ns_warm, 1),
                                bytes_per_conn=round(mem["bytes_per_conn"], 1),
                                live=eng.conn_count)


def test_nat_out_index_cost(benchmark):
    """NAT entries are also in the out index, and half of the packets are the real servers'
    replies, found through it: at 1M (or the largest size below it)."""
    n = max([s for s in SIZES if s <= 1000000] or [min(SIZES)])
    bursts = Bursts()
    eng = Engine(_config(FWD_MASQ), max_conns=max(1 << 16, int(n * 1.2) + HITS // 50))
    rs = np.empty(n, dtype=np.int32)
    t_new = populate(eng, bursts, n, rs)
    dest_addr = np.array([int.from_bytes(bytes(map(int, d["addr"].split("."))), "big")
                          for d in eng.dests()], dtype=np.int64)
    rs_addr = dest_addr[rs]
    rng = np.random.default_rng(2)
    box = {}

    def run():
        box["t"], box["n"] = hits(eng, bursts, n, HITS, rng, n, reply_frac=0.5, rs_addr=rs_addr)

    benchmark.pedantic(run, rounds=1, iterations=1)
    # what was timed was forwarding: every packet of the last burst hit or opened a connection,
    # the replies through the out index
    dec = eng.process(bursts.batches[-1])
    assert set(np.unique(dec["action"])) <= {1, 2}, np.unique(dec["action"])
    assert (dec["dir"] == 2).sum() > BURST // 4
    RESULTS[("nat", n)] = {"ns_hit": box["t"] / box["n"] * 1e9, "ns_new": t_new / n * 1e9,
                           "bpc": eng.memory()["bytes_per_conn"]}


# ---- baselines ------------------------------------------------------------------------------

def _dict_engine():
    path = HERE / "dict_engine.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("dict_engine", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dict_engine_baseline(benchmark):
    mod = _dict_engine()
    assert mod is not None and hasattr(mod, "bench_lookup_state"), "bench/dict_engine.py is missing"
    for n in SIZES:
        if n > 2_000_000:
            continue                # the dict engine needs ~270 B/conn plus Python objects
        r = mod.bench_lookup_state(n, min(HITS, 300_000))
        RESULTS[("dict", n)] = {"ns_hit": float(r["ns_per_op"] if isinstance(r, dict) else r)}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def _mapped(addr):
    """(n, 16) uint8 IPv4-mapped addresses (::ffff:a.b.c.d) from uint32 values."""
    out = np.zeros((len(addr), 16), dtype=np.uint8)
    out[:, 10:12] = 0xFF
    for j in range(4):
        out[:, 12 + j] = (addr >> (24 - 8 * j)) & 255
    return out


def test_table_loop_baseline(benchmark):
    """The same connection table driven by its own bare nogil loop (ConnTable.bench_lookup_state,
    bulk: hash, prefetch, lookup, one TCP state step and the deadline re-arm per packet) over the
    same connections and the same uniformly random hits, keys already in packet order as the
    engine reads them from its bursts: what is left when the engine's per-packet IPVS work is
    taken away, with the same prefetch pipeline. Always available, unlike the two files above."""
    from ipvsflow.engine.conntab import ConnTable
    rng = np.random.default_rng(3)
    for n in SIZES:
        conn = np.arange(n, dtype=np.int64)
        table = ConnTable(max_entries=max(1 << 16, int(n * 1.2)))
        keys = table.make_keys(6, 4, _mapped((10 << 24) + conn // 16), 1024 + conn % 16,
                               _mapped(np.full(n, 0xC000020A, dtype=np.int64)), 80)
        table.insert_keys(keys, ts0=T0, state=1)
        del conn
        ordered = keys[rng.integers(0, n, HITS)]
        del keys
        t = cpu()
        found = table.bench_lookup_state(ordered, np.arange(HITS, dtype=np.uint32),
                                         ts0=T0, dt=3, bulk=True)
        spent = cpu() - t
        assert found == HITS
        RESULTS[("table", n)] = {"ns_hit": spent / HITS * 1e9}
        del table, ordered
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_c_floor_baseline(benchmark, compile_c):
    src = HERE / "conntab_floor.c"
    exe = compile_c(src, shared=False)
    for n in SIZES:
        # one line: n=... slots=... insert_ns=... scalar_ns=... batch_ns=... hits=...
        out = subprocess.run([str(exe), str(n), str(HITS)], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"{exe} {n} {HITS} failed: {out.stderr.strip()}")
        f = {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", out.stdout)}
        RESULTS[("c", n)] = {"ns_hit": min(f["scalar_ns"], f["batch_ns"]), "ns_new": f["insert_ns"]}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_summary(bench_summary):
    lines = [f"{'live conns':>10}  {'ns/pkt':>8}  {'Mpps':>6}  {'ns/new':>8}  {'warm':>6}  {'B/conn':>7}  "
             f"{'tbl loop':>8}  {'x tbl':>5}  {'C floor':>8}  {'x C':>5}  {'dict':>8}  {'x dict':>7}"]
    dash = lambda w: " " * (w - 1) + "-"
    for n in SIZES:
        r = RESULTS.get(n)
        if not r:
            continue
        ns = r["ns_hit"]
        c = RESULTS.get(("c", n), {}).get("ns_hit")
        dct = RESULTS.get(("dict", n), {}).get("ns_hit")
        tbl = RESULTS.get(("table", n), {}).get("ns_hit")
        lines.append(
            f"{_fmt_size(n):>10}  {ns:8.1f}  {1000 / ns:6.1f}  {r['ns_new']:8.1f}  {r['ns_warm']:6.1f}  "
            f"{r['bpc']:7.1f}  "
            + (f"{tbl:8.1f}  {ns / tbl:5.2f}  " if tbl else f"{dash(8)}  {dash(5)}  ")
            + (f"{c:8.1f}  {ns / c:5.2f}  " if c else f"{dash(8)}  {dash(5)}  ")
            + (f"{dct:8.1f}  {dct / ns:7.1f}" if dct else f"{dash(8)}  {dash(7)}"))
    for n in SIZES:
        c = RESULTS.get(("c", n))
        if c and n in RESULTS:
            lines.append(f"new connection at {_fmt_size(n)}: engine {RESULTS[n]['ns_new']:.1f} ns first fill, "
                         f"{RESULTS[n]['ns_warm']:.1f} ns warm; C floor insert {c['ns_new']:.1f} ns")
    for key, r in RESULTS.items():
        if isinstance(key, tuple) and key[0] == "nat":
            lines.append(f"NAT (out index too) at {_fmt_size(key[1])}: {r['ns_hit']:.1f} ns/pkt, "
                         f"{r['ns_new']:.1f} ns/new conn, {r['bpc']:.1f} B/conn")
    bench_summary("engine: Engine.process on pre-parsed bursts", lines)
