"""The worker's receive loop (RingLoop): ring -> engine -> forwarder -> sink in bursts, the
decisions counted, the blocks handed back, and the returns to the worker (a request on the
control descriptor, housekeeping due, a next hop to resolve). Needs root and network
namespaces (the veth fixture).
"""
from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

from ipvsflow.config import parse_rules
from ipvsflow.engine import ACTIONS, REASONS, Engine
from ipvsflow.forward.xmit import Forwarder
from ipvsflow.io.afpacket import RxRing, TxPort
from ipvsflow.io.batch import PacketBatch
from ipvsflow.live._fast import AfPacketSink, RingLoop

from test_live_afpacket import eth, ipv4, read_all, udp, veth  # noqa: F401

pytestmark = pytest.mark.netns

RULES = "-A -u 198.18.100.1:53 -s rr\n-a -u 198.18.100.1:53 -r 198.18.9.11:53 -m -w 1\n"
RS_MAC = bytes.fromhex("02000000aa11")


def _loop(veth, neighbours, burst=8):
    """Frames arrive on v1 (sent from v0); the director side is v1, and forwards out of v1
    back to v0, where ``out`` reads them."""
    ifx = socket.if_nametoindex("v1")
    # fewer blocks than the test sends lots: the ring only keeps receiving if the loop hands
    # them back (and enough that a test descheduled for a few ms does not fill it)
    ring = RxRing("v1", block_size=1 << 16, block_count=8, retire_ms=1)
    out = RxRing("v0", block_size=1 << 16, block_count=32, accept_otherhost=True)
    sink = AfPacketSink([TxPort("v1")])
    sink.set_routes([{"dst": "198.18.9.0", "plen": 24, "ifindex": ifx, "gateway": None}])
    sink.set_neighbours([(a, ifx, m) for a, m in neighbours])
    eng = Engine(parse_rules(RULES))
    fwd = Forwarder(eng, neighbours={a: m for a, m in neighbours}, learn_neighbours=False)
    counts = np.zeros(512, dtype=np.uint64)
    r, w = os.pipe()
    loop = RingLoop([ring], [PacketBatch(burst)], eng, fwd, sink, counts, r)
    return loop, ring, out, sink, counts, (r, w)


def _send(veth, n, first_port=2000, dport=53):
    tx = TxPort("v0")
    for i in range(n):
        c = f"198.18.9.{50 + i % 100}"
        assert tx.send(eth(veth["v1"], veth["v0"], ipv4(c, "198.18.100.1", 17, udp(first_port + i, dport, b"q"))))
    assert tx.flush() == n


def _decided(counts):
    return {(ACTIONS[k >> 6], REASONS[k & 63]): int(v) for k, v in enumerate(counts) if v}


def test_loop_processes_every_packet_in_bursts_and_hands_blocks_back(veth):
    loop, ring, out, sink, counts, (r, w) = _loop(veth, [("198.18.9.11", RS_MAC)])
    try:
        # lots of more packets than a burst holds, more lots than the ring has blocks
        lots = 12
        in_run = 0
        for lot in range(lots):
            _send(veth, 30, first_port=2000 + 100 * lot)
            deadline = time.time() + 5
            while loop.index < 30 * (lot + 1) and time.time() < deadline:
                t0 = time.monotonic_ns()
                assert loop.run(50, 0.2) is False
                in_run += time.monotonic_ns() - t0
        # the processing is timed, within the calls, the waits are not
        assert 0 < loop.busy_ns < in_run
        total = 30 * lots
        assert loop.index == total and ring.counters()["packets"] == total, (ring.counters(), loop.index)
        assert ring.counters()["kernel_drops"] == 0
        assert loop.bursts >= total // 8
        assert ring.counters()["blocks"] >= lots
        assert _decided(counts) == {("new", ""): total}
        got = read_all(out, want=total)
        assert len(got) == total
        assert all(row["dst"] == "198.18.9.11" and d[:6] == RS_MAC for row, d in got)
        assert sorted(row["sport"] for row, _ in got) == \
            [p for lot in range(lots) for p in range(2000 + 100 * lot, 2030 + 100 * lot)]
        assert sink.counters()["queued"] == total
    finally:
        os.close(r)
        os.close(w)


def test_loop_returns_for_requests_housekeeping_and_misses(veth):
    loop, ring, out, sink, counts, (r, w) = _loop(veth, [])
    try:
        t = time.monotonic()
        assert loop.run(1000, 0.05) is False                # nothing arrives: back when due
        assert 0.04 <= time.monotonic() - t < 0.9
        assert loop.busy_ns < 20_000_000                    # empty sweeps, not the 50 ms wait
        os.write(w, b"x")
        t = time.monotonic()
        assert loop.run(1000, 5.0) is True                  # a request waits on the control pipe
        assert time.monotonic() - t < 0.5
        os.read(r, 1)
        # the real server's MAC is unknown: the frame is held and the loop comes back at once
        _send(veth, 1)
        t = time.monotonic()
        deadline = t + 5
        while not sink.misses and time.monotonic() < deadline:
            loop.run(1000, 5.0)
        assert sink.misses == 1 and sink.held == 1
        assert time.monotonic() - t < 1.0
        assert sink.take_misses() == [("198.18.9.11", socket.if_nametoindex("v1"))]
        # frames already held do not bring the loop back again
        t = time.monotonic()
        assert loop.run(1000, 0.1) is False
        assert time.monotonic() - t >= 0.09
    finally:
        os.close(r)
        os.close(w)


def test_loop_rejects_bad_arguments(veth):
    ring = RxRing("v1", block_size=1 << 16, block_count=4)
    sink = AfPacketSink([TxPort("v1")])
    eng = Engine(parse_rules(RULES))
    fwd = Forwarder(eng, learn_neighbours=False)
    counts = np.zeros(512, dtype=np.uint64)
    with pytest.raises(ValueError):
        RingLoop([ring], [], eng, fwd, sink, counts)
    with pytest.raises(ValueError):
        RingLoop([], [], eng, fwd, sink, counts)
    with pytest.raises(ValueError):
        RingLoop([ring], [PacketBatch(4)], eng, fwd, sink, np.zeros(10, dtype=np.uint64))
    with pytest.raises(TypeError):
        RingLoop(["v1"], [PacketBatch(4)], eng, fwd, sink, counts)
