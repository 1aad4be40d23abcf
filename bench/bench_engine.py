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
  of the packets being the real servers' replies (found through the out index);
* persistence (sizes up to 1M): a DR service with ``-p 300``, and one with ``-p 300 -M
  255.255.255.0``, 4 connections per client address, so that new connections look templates up
  or create them and every connection is controlled by one: ns per new connection, per hit,
  bytes per connection with the templates' share, next to the plain TCP figures (ratios);
* SCTP (sizes up to 1M, DR and NAT): associations set up (INIT, INIT_ACK and COOKIE_ACK from the
  servers for NAT, COOKIE_ECHO), DATA hits with 1% INITs of new associations (NAT: half of them
  from the servers), then SHUTDOWN, SHUTDOWN_ACK (NAT), SHUTDOWN_COMPLETE: ns per INIT (against
  ns per SYN), per association set up, per DATA hit (against the TCP hit), per shutdown.

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

from ipvsflow.config import Config, RealServer, VirtualService, FWD_DROUTE, FWD_MASQ, SVC_F_PERSISTENT
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

    def __init__(self, frame=FRAME, per_client=16, port=80):
        self.batches = [PacketBatch.from_packets([(T0, frame)] * BURST) for _ in range(BURSTS)]
        self.views = [b.to_numpy() for b in self.batches]
        self.per_client = per_client
        self.port = port

    def fill(self, view, conn, flags, ts):
        # connection i: client 10.x.y.z (i // per_client), source port 1024 + i % per_client
        k = self.per_client
        a = (10 << 24) + (conn // k)
        src = view["src"]
        src[:, 12] = (a >> 24) & 255
        src[:, 13] = (a >> 16) & 255
        src[:, 14] = (a >> 8) & 255
        src[:, 15] = a & 255
        view["sport"] = 1024 + conn % k
        view["tcp_flags"] = flags
        view["ts_ns"] = ts

    def swap_replies(self, view, reply, rs_addr):
        """Turn the rows where ``reply`` is set into the real server's reply to that client:
        source rs_addr (uint32 per row):port, destination the client and its port; the other
        rows go client -> VIP:port."""
        src, dst = view["src"], view["dst"]
        dst[:] = src
        dst[:, 12:16] = np.where(reply[:, None], src[:, 12:16], VIP_BYTES)
        for j in range(4):
            src[reply, 12 + j] = (rs_addr[reply] >> (24 - 8 * j)) & 255
        cport = view["sport"].copy()
        view["sport"] = np.where(reply, self.port, cport)
        view["dport"] = np.where(reply, cport, self.port)


VIP_BYTES = np.array([192, 0, 2, 10], dtype=np.uint8)


def _timed_sweep(eng, bursts, n, prepare, rs=None):
    """Packets 0 .. n-1 in bursts, each burst's views set by prepare(view, idx) (idx: the
    BURST packet numbers from the burst's first); returns the seconds spent in process().
    rs: array receiving each packet's real-server id."""
    spent = 0.0
    i = 0
    while i < n:
        for b, v in zip(bursts.batches, bursts.views):
            if i >= n:
                break
            m = min(BURST, n - i)
            prepare(v, np.arange(i, i + BURST, dtype=np.int64))
            t = cpu()
            dec = eng.process(b, 0, m)
            spent += cpu() - t
            if rs is not None:
                rs[i:i + m] = dec["rs"]
            i += m
    return spent


def populate(eng, bursts, n, rs=None, first=0, t0=T0):
    """n SYNs of connections first, first + 1, ... from time t0; returns the seconds spent in
    process(). rs: array receiving each connection's real-server id."""
    return _timed_sweep(eng, bursts, n, lambda v, idx: bursts.fill(v, first + idx, 0x02, t0 + idx * 5), rs)


def hits(eng, bursts, n_live, n_hits, rng, new_from, reply_frac=0.0, rs_addr=None, sctp=False):
    """n_hits packets: ACKs of random live connections, 1% SYNs of new ones; with reply_frac,
    that share of the ACKs are replies from the connection's real server (rs_addr: its address
    per connection, uint32). sctp: DATA chunks instead of ACKs, INITs instead of SYNs."""
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
            if sctp:
                v["sctp_chunk"] = np.where(new, CH_INIT, CH_DATA)
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


# ---- persistence-heavy: -p 300, and -p 300 -M 255.255.255.0 ----------------------------------

PER_CLIENT = 4                      # connections per client address (ports 1024..1027)
SIZES_1M = [n for n in SIZES if n <= 1_000_000]     # 10M is not run for these two workloads


def _persist_config(prefix):
    return Config(services=[VirtualService(
        proto=6, addr="192.0.2.10", port=80, scheduler="rr", flags=SVC_F_PERSISTENT, timeout=300,
        netmask=prefix, dests=[RealServer(f"10.99.0.{i}", 80, fwd=FWD_DROUTE) for i in range(1, 5)])])


def _templates(eng):
    return sum(d["persistconns"] for d in eng.dests())


def _bytes_per_conn(eng, n_conns):
    """Slab + indexes + timers over the connections alone: the templates' share included."""
    m = eng.memory()
    return (m["slab_bytes"] + m["index_bytes"]) / n_conns


@pytest.mark.parametrize("prefix", [32, 24], ids=["p300", "p300-M24"])
@pytest.mark.parametrize("n", SIZES_1M, ids=[_fmt_size(n) for n in SIZES_1M])
def test_persistence_throughput(benchmark, n, prefix):
    """A persistent DR service: PER_CLIENT connections per client address, so every new
    connection looks its client's (or, with -M /24, its client network's) template up and the
    first one of each client creates it; the connections are controlled by the templates.
    ns per new connection (first fill, templates included; and warm), ns per hit (ACKs of
    random live connections, 1% SYNs of new ones), bytes per connection with the templates'
    share. The first ACK of a connection takes it to ESTABLISHED, which marks its template
    ASSURED: one more entry touched on such a hit, as in the kernel (ip_vs_control_assure_ct)."""
    bursts = Bursts(per_client=PER_CLIENT)
    eng = Engine(_persist_config(prefix), max_conns=max(1 << 16, int(n * 1.5) + HITS // 25))
    t_new = populate(eng, bursts, n)
    # client c = conn // PER_CLIENT is 10.0.0.0 + c: one template per client (/32) or per /24
    clients = (n - 1) // PER_CLIENT + 1
    n_tpl = clients if prefix == 32 else ((clients - 1) >> 8) + 1
    assert _templates(eng) == n_tpl and eng.conn_count == n + n_tpl
    bpc = _bytes_per_conn(eng, n)
    rng = np.random.default_rng(4)
    box = {}

    def run():
        box["t"], box["n"] = hits(eng, bursts, n, HITS, rng, n)

    benchmark.pedantic(run, rounds=1, iterations=1)
    dec = eng.process(bursts.batches[-1])
    assert set(np.unique(dec["action"])) <= {1, 2}, np.unique(dec["action"])
    # every connection entry is controlled by a template: the entries beyond the templates
    # are connections, each counted once
    assert eng.conn_count - _templates(eng) == sum(d["activeconns"] + d["inactconns"] for d in eng.dests())
    eng.check_invariants() if n <= 100000 else None
    # warm, as for the plain run: everything expired (templates 300 s after their last
    # controlled connection went), then the same clients again into the reused table
    t1 = T0 + 2000 * 10**9
    eng.advance(t1)
    assert eng.conn_count == 0
    t_warm = populate(eng, bursts, n, t0=t1)
    assert _templates(eng) == n_tpl and eng.conn_count == n + n_tpl
    RESULTS[("persist", prefix, n)] = {"ns_hit": box["t"] / box["n"] * 1e9, "ns_new": t_new / n * 1e9,
                                       "ns_warm": t_warm / n * 1e9, "bpc": bpc, "templates": n_tpl}
    benchmark.extra_info.update(packets=box["n"], ns_per_packet=round(box["t"] / box["n"] * 1e9, 1),
                                ns_per_new_conn=round(t_new / n * 1e9, 1),
                                ns_per_new_conn_warm=round(t_warm / n * 1e9, 1), templates=n_tpl,
                                bytes_per_conn=round(bpc, 1))


# ---- SCTP-heavy: associations through an SCTP service --------------------------------------

SCTP_PORT = 3868
# chunk types (RFC 9260)
CH_DATA, CH_INIT, CH_INIT_ACK, CH_SHUTDOWN, CH_SHUTDOWN_ACK = 0, 1, 2, 7, 8
CH_COOKIE_ECHO, CH_COOKIE_ACK, CH_SHUTDOWN_COMPLETE = 10, 11, 14
SCTP_FRAME = bytes.fromhex("020000000002020000000001" "0800"
                           "450000340001000040840000" "0a000001" "c000020a"
                           "0400" "0f1c" "00000001" "00000000"          # ports, vtag, checksum
                           "00030014" "00000001" "00000000" "00000000" "00000000")  # DATA chunk
# the setup and teardown as the director sees them: (chunk, from the real server?); DR
# directors never see the server's side
SCTP_SETUP = {FWD_MASQ: [(CH_INIT, False), (CH_INIT_ACK, True), (CH_COOKIE_ECHO, False), (CH_COOKIE_ACK, True)],
              FWD_DROUTE: [(CH_INIT, False), (CH_COOKIE_ECHO, False)]}
SCTP_CLOSE = {FWD_MASQ: [(CH_SHUTDOWN, False), (CH_SHUTDOWN_ACK, True), (CH_SHUTDOWN_COMPLETE, False)],
              FWD_DROUTE: [(CH_SHUTDOWN, False), (CH_SHUTDOWN_COMPLETE, False)]}


def _sctp_config(fwd):
    return Config(services=[VirtualService(
        proto=132, addr="192.0.2.10", port=SCTP_PORT, scheduler="rr",
        dests=[RealServer(f"10.99.0.{i}", SCTP_PORT, fwd=fwd) for i in range(1, 5)])])


def sweep(eng, bursts, n, chunk, reply, t0, rs_addr=None, rs=None):
    """One packet of each association 0 .. n-1 in order, first chunk ``chunk``, from the client
    or (reply) from its real server (rs_addr per association); seconds spent in process().
    rs: array receiving each association's real-server id."""
    mask = np.full(BURST, bool(reply))
    none = np.zeros(BURST, dtype=np.int64)

    def prepare(v, idx):
        bursts.fill(v, idx, 0, t0 + idx * 5)
        v["sctp_chunk"] = chunk
        bursts.swap_replies(v, mask, rs_addr[np.minimum(idx, n - 1)] if reply else none)
    return _timed_sweep(eng, bursts, n, prepare, rs)


def _active(eng):
    return sum(d["activeconns"] for d in eng.dests())


@pytest.mark.parametrize("fwd", [FWD_DROUTE, FWD_MASQ], ids=["DR", "NAT"])
@pytest.mark.parametrize("n", SIZES_1M, ids=[_fmt_size(n) for n in SIZES_1M])
def test_sctp_throughput(benchmark, n, fwd):
    """n SCTP associations set up (NAT: INIT, INIT_ACK, COOKIE_ECHO, COOKIE_ACK; DR: INIT,
    COOKIE_ECHO, the director seeing the client only), then DATA hits on random live
    associations with 1% INITs of new ones (NAT: half of the DATA from the real servers,
    through the out index), then every association shut down (SHUTDOWN, SHUTDOWN_ACK (NAT),
    SHUTDOWN_COMPLETE). ns per INIT, per association set up, per DATA hit and per shutdown."""
    bursts = Bursts(frame=SCTP_FRAME, per_client=16, port=SCTP_PORT)
    eng = Engine(_sctp_config(fwd), max_conns=max(1 << 16, int(n * 1.2) + HITS // 50))
    rs = np.empty(n, dtype=np.int32)
    dest_addr = np.array([int.from_bytes(bytes(map(int, d["addr"].split("."))), "big")
                          for d in eng.dests()], dtype=np.int64)
    setup = []
    for k, (chunk, reply) in enumerate(SCTP_SETUP[fwd]):
        setup.append(sweep(eng, bursts, n, chunk, reply, T0 + k * 10**8,
                           rs_addr=dest_addr[rs] if reply else None, rs=rs if k == 0 else None))
    assert eng.conn_count == n
    # only ESTABLISHED counts as active (reference 4.1): every association got there
    assert _active(eng) == n
    rng = np.random.default_rng(5)
    rs_addr = dest_addr[rs]
    box = {}

    def run():
        box["t"], box["n"] = hits(eng, bursts, n, HITS, rng, n, reply_frac=0.5 if fwd == FWD_MASQ else 0.0,
                                  rs_addr=rs_addr, sctp=True)

    benchmark.pedantic(run, rounds=1, iterations=1)
    bpc = eng.memory()["bytes_per_conn"]
    dec = eng.process(bursts.batches[-1])
    assert set(np.unique(dec["action"])) <= {1, 2}, np.unique(dec["action"])
    t_close = sum(sweep(eng, bursts, n, chunk, reply, T0 + 31 * 10**9 + k * 10**8,
                        rs_addr=rs_addr if reply else None)
                  for k, (chunk, reply) in enumerate(SCTP_CLOSE[fwd]))
    assert _active(eng) == 0            # every association left ESTABLISHED (CLOSED)
    eng.check_invariants() if n <= 100000 else None
    r = {"ns_init": setup[0] / n * 1e9, "ns_assoc": sum(setup) / n * 1e9, "setup_pkts": len(setup),
         "ns_hit": box["t"] / box["n"] * 1e9, "ns_close": t_close / n * 1e9, "bpc": bpc}
    RESULTS[("sctp", fwd, n)] = r
    benchmark.extra_info.update(packets=box["n"], ns_per_data=round(r["ns_hit"], 1),
                                ns_per_init=round(r["ns_init"], 1), ns_per_assoc=round(r["ns_assoc"], 1),
                                ns_per_shutdown=round(r["ns_close"], 1), bytes_per_conn=round(bpc, 1))


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
    lines += _persist_lines() + _sctp_lines()
    bench_summary("engine: Engine.process on pre-parsed bursts", lines)


def _ratio(a, b, w=5):
    return f"{a / b:{w}.2f}" if a and b else " " * (w - 1) + "-"


def _persist_lines():
    """Persistent service next to the plain TCP (DR, not persistent) figures of the same run."""
    keys = sorted((k for k in RESULTS if isinstance(k, tuple) and k[0] == "persist"), key=lambda k: (-k[1], k[2]))
    if not keys:
        return []
    out = ["", f"persistence (DR, rr, {PER_CLIENT} connections per client; x tcp = / plain TCP DR of this run)",
           f"{'service':>10}  {'live conns':>10}  {'templates':>9}  {'ns/pkt':>8}  {'x tcp':>5}  "
           f"{'ns/new':>8}  {'x tcp':>5}  {'warm':>6}  {'x tcp':>5}  {'B/conn':>7}  {'x tcp':>5}"]
    for key in keys:
        r, tcp = RESULTS[key], RESULTS.get(key[2], {})
        out.append(f"{'-p 300' if key[1] == 32 else '-M /24':>10}  {_fmt_size(key[2]):>10}  {r['templates']:9d}  "
                   f"{r['ns_hit']:8.1f}  {_ratio(r['ns_hit'], tcp.get('ns_hit'))}  "
                   f"{r['ns_new']:8.1f}  {_ratio(r['ns_new'], tcp.get('ns_new'))}  "
                   f"{r['ns_warm']:6.1f}  {_ratio(r['ns_warm'], tcp.get('ns_warm'))}  "
                   f"{r['bpc']:7.1f}  {_ratio(r['bpc'], tcp.get('bpc'))}")
    return out


def _sctp_lines():
    """SCTP associations next to TCP connections of the same run: DR against the plain TCP DR
    run, NAT against the TCP NAT run (one size). ns/INIT compares with ns per SYN."""
    keys = sorted((k for k in RESULTS if isinstance(k, tuple) and k[0] == "sctp"), key=lambda k: (k[1], k[2]))
    if not keys:
        return []
    out = ["", "SCTP (rr over 4 servers; NAT: half of the DATA from the servers; x tcp = / TCP of this run, same fwd)",
           f"{'fwd':>4}  {'live':>6}  {'ns/DATA':>8}  {'x tcp':>5}  {'ns/INIT':>8}  {'x tcp':>5}  "
           f"{'ns/assoc':>8}  {'pkts':>4}  {'ns/close':>8}  {'B/conn':>7}"]
    for key in keys:
        r = RESULTS[key]
        tcp = RESULTS.get(("nat", key[2]) if key[1] == FWD_MASQ else key[2], {})
        out.append(f"{'NAT' if key[1] == FWD_MASQ else 'DR':>4}  {_fmt_size(key[2]):>6}  "
                   f"{r['ns_hit']:8.1f}  {_ratio(r['ns_hit'], tcp.get('ns_hit'))}  "
                   f"{r['ns_init']:8.1f}  {_ratio(r['ns_init'], tcp.get('ns_new'))}  "
                   f"{r['ns_assoc']:8.1f}  {r['setup_pkts']:4d}  {r['ns_close']:8.1f}  {r['bpc']:7.1f}")
    return out
