"""Randomized runs: few clients and ports (so ports are reused), every TCP flag combination that
matters, UDP, gaps beyond the timeouts, rule edits and sysctl changes mid-stream, NAT and DR,
every scheduler. After every burst the engine's invariants hold (server counters equal a
recount over the table, no entry past its deadline, every hashed entry findable, n_control
consistent) and there is exactly one decision per packet; processing the same input one packet
per call or in bursts (the prefetching pipeline) gives identical decisions."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from engine_helpers import (
    engine, service, batch, tcp_frame, udp_frame, ether, ip_packet, l4_tcp, T0, VIP, RS1, RS2,
    TCP, UDP,
)
import struct

SCTP, ICMP = 132, 1
SCTP_CHUNKS = [1, 1, 2, 10, 11, 0, 3, 7, 8, 14, 6, 9]
from ipvsflow.config import Command, RealServer, FWD_MASQ, FWD_DROUTE, FWD_TUNNEL
from ipvsflow.engine import Engine
from ipvsflow.io import PacketBatch

CLIENTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
PORTS = [40000, 40001]
FLAGS = ["S", "S", "SA", "A", "A", "PA", "FA", "F", "R", "RA", "", "P"]
RS3 = "10.1.0.3"
SCHEDS = ["rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf"]
GAPS = [0.001, 0.01, 0.5, 3.0, 11.0, 65.0, 125.0]

packet_st = st.tuples(
    st.sampled_from(GAPS),
    st.sampled_from(["c2s", "c2s", "c2s", "s2c"]),
    st.integers(0, len(CLIENTS) - 1),
    st.integers(0, len(PORTS) - 1),
    st.sampled_from(FLAGS),
    st.sampled_from([TCP, TCP, TCP, UDP, SCTP, ICMP]),
    st.sampled_from(SCTP_CHUNKS),
)
edit_st = st.one_of(
    st.tuples(st.just("weight"), st.sampled_from([RS1, RS2, RS3]), st.integers(0, 3)),
    st.tuples(st.just("del"), st.sampled_from([RS1, RS2, RS3]), st.just(0)),
    st.tuples(st.just("add"), st.sampled_from([RS1, RS2, RS3]), st.integers(0, 3)),
    st.tuples(st.just("sysctl"), st.sampled_from(["expire_nodest_conn", "conn_reuse_mode",
                                                  "conntrack", "sloppy_tcp", "sloppy_sctp",
                                                  "schedule_icmp", "secure_tcp"]),
              st.integers(0, 3)),
)
event_st = st.one_of(packet_st.map(lambda p: ("pkt",) + p), edit_st.map(lambda e: ("edit",) + e))


def assert_same(d1, d2):
    # field by field: the padding between fields is not part of the record
    assert len(d1) == len(d2)
    for name in d1.dtype.names:
        assert np.array_equal(d1[name], d2[name]), name


def build(sched, fwd, kernel, dr_replies):
    svc_t = service(sched=sched, fwd=fwd, dests=(RS1, RS2), weights=[2, 1])
    svc_u = service(proto=UDP, port=53, sched=sched, fwd=fwd, dests=(RS1, RS2))
    svc_s = service(proto=SCTP, port=3868, sched=sched, fwd=fwd, dests=(RS1, RS2))
    return Engine(__import__("engine_helpers").config(svc_t, svc_u, svc_s, kernel=kernel),
                  dr_replies=dr_replies, max_conns=4096)


def materialize(events, fwd):
    """(frames [(t, bytes)], edits {packet index: [Command]}) from drawn events."""
    t = 0.0
    frames = []
    edits = {}
    for ev in events:
        if ev[0] == "pkt":
            _, gap, direction, ci, pi, flags, proto, ctype = ev
            t += gap
            c, p = CLIENTS[ci], PORTS[pi]
            vport = {TCP: 80, UDP: 53, SCTP: 3868, ICMP: 80}[proto]
            if proto == TCP:
                f = (tcp_frame(c, p, VIP, vport, flags) if direction == "c2s"
                     else tcp_frame(VIP, vport, c, p, flags or "A"))
            elif proto == SCTP:
                l4 = struct.pack("!HHII", p, vport, 1, 0) + struct.pack("!BBH", ctype, 0, 8) + bytes(4)
                if ctype == 10 and flags == "R":             # COOKIE_ECHO bundled with an ABORT
                    l4 += struct.pack("!BBH", 6, 0, 4)
                if direction == "c2s":
                    f = ether(ip_packet(c, VIP, SCTP, l4))
                else:
                    l4 = struct.pack("!HH", vport, p) + l4[4:]
                    f = ether(ip_packet(VIP, c, SCTP, l4))
            elif proto == ICMP:
                # an error from the client about a reply (or from a server about a client packet)
                inner = ip_packet(VIP, c, TCP, l4_tcp(vport, p, "A")[:8]) if direction == "c2s" \
                    else ip_packet(c, RS1, TCP, l4_tcp(p, vport, "A")[:8])
                src, dst = (c, VIP) if direction == "c2s" else (RS1, c)
                f = ether(ip_packet(src, dst, ICMP, struct.pack("!BBHI", 3, 3, 0, 0) + inner))
            else:
                f = udp_frame(c, p, VIP, vport) if direction == "c2s" else udp_frame(VIP, vport, c, p)
            frames.append((t, f))
        else:
            _, kind, a, b = ev
            svc = service(fwd=fwd)
            if kind == "weight":
                cmd = Command(op="edit-dest", service=svc, dest=RealServer(a, 80, fwd=fwd, weight=b))
            elif kind == "del":
                cmd = Command(op="del-dest", service=svc, dest=RealServer(a, 80, fwd=fwd))
            elif kind == "add":
                cmd = Command(op="add-dest", service=svc, dest=RealServer(a, 80, fwd=fwd, weight=b))
            else:
                cmd = Command(op="sysctl", sysctl=(a, b))
            edits.setdefault(len(frames), []).append(cmd)
    return frames, edits


def run(eng, b, edits, split):
    """Process batch b, applying edits before their packets; split: burst boundaries."""
    n = b.count
    ts = b.to_numpy()["ts_ns"]
    cuts = sorted(set([0, n] + [i for i in edits if i < n] + [c for c in split if 0 < c < n]))
    out = []
    for lo, hi in zip(cuts, cuts[1:]):
        for cmd in edits.get(lo, ()):
            eng.advance(int(ts[lo]))
            try:
                eng.apply(cmd)
            except Exception as e:          # a refused edit (server exists / does not exist)
                assert type(e).__name__ == "ConfigError", e
        dec = eng.process(b, lo, hi)
        assert len(dec) == hi - lo
        assert list(dec["pkt"]) == list(range(lo, hi))
        out.append(dec.copy())
        eng.check_invariants()
    for cmd in edits.get(n, ()):
        eng.advance(int(ts[n - 1]))
        try:
            eng.apply(cmd)
        except Exception as e:
            assert type(e).__name__ == "ConfigError", e
    return np.concatenate(out) if out else np.zeros(0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(event_st, min_size=1, max_size=150),
    sched=st.sampled_from(SCHEDS),
    fwd=st.sampled_from([FWD_MASQ, FWD_DROUTE, FWD_TUNNEL]),
    kernel=st.sampled_from(["6.1", "6.1", "5.15", "5.4", "4.19", "4.4"]),
    dr_replies=st.sampled_from(["ignore", "inspect"]),
    split=st.lists(st.integers(1, 70), max_size=6),
)
def test_random_runs_keep_invariants_and_bursts_match_single_packets(events, sched, fwd, kernel,
                                                                    dr_replies, split):
    frames, edits = materialize(events, fwd)
    if not frames:
        return
    b = batch(frames)
    bursts = run(build(sched, fwd, kernel, dr_replies), b, edits, split)
    singles = run(build(sched, fwd, kernel, dr_replies), b, edits, range(len(frames)))
    assert_same(bursts, singles)
    # every packet of the input got exactly one decision with a known action
    assert set(np.unique(bursts["action"])) <= {1, 2, 3, 4, 5, 6}


def test_large_random_burst_against_single_packets():
    # a few thousand packets over many clients: the prefetch pipeline sees chunk boundaries,
    # packets creating entries that later packets of the same chunk find, and table growth
    rng = np.random.default_rng(7)
    frames = []
    t = 0.0
    for i in range(4000):
        t += float(rng.choice([0.0001, 0.001, 0.2]))
        c = f"10.{rng.integers(0, 4)}.{rng.integers(0, 250)}.{rng.integers(1, 250)}"
        p = int(rng.integers(1024, 1030))
        fl = str(rng.choice(["S", "S", "A", "PA", "FA", "R", ""]))
        if rng.random() < 0.2:
            frames.append((t, tcp_frame(VIP, 80, c, p, fl or "A")))
        else:
            frames.append((t, tcp_frame(c, p, VIP, 80, fl)))
    b = batch(frames)
    svc = service(sched="wlc", fwd=FWD_MASQ, dests=(RS1, RS2, RS3), weights=[1, 2, 3])
    e1 = engine(svc)
    e2 = engine(svc)
    d1 = e1.process(b).copy()
    e1.check_invariants()
    d2 = np.concatenate([e2.process(b, i, i + 1).copy() for i in range(b.count)])
    e2.check_invariants()
    assert_same(d1, d2)
    assert e1.conn_count == e2.conn_count > 100
