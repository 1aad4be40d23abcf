"""Forwarder cost: ns per packet for each method, side by side with a copy-only baseline.

Run: ``python -m pytest bench/bench_forward.py --benchmark-only -s``. Input: bursts of 256
read-only frames (as from a mapped capture), so every method copies each frame into its
output buffer; ``copy`` does only that memcpy (``Forwarder.copy_burst``) and is the floor the
methods are compared with. The sink is a NullSink (no file I/O). ``IPVSFLOW_FWD_PACKETS``
sets the packets per round (default 262144), ``IPVSFLOW_FWD_PAYLOAD`` the L4 payload bytes
(default 200). Figures go to ``extra_info``: ns/packet (CPU time) and the ratio to ``copy``.

The ``*_live`` cases are the live director's traffic instead: 60-byte Ethernet/IPv4/UDP frames
(valid UDP checksum) over 4096 flows in writable memory, as in the receive ring, so frames are
rewritten in place (no copy; compare them with each other, not with ``copy``).
"""
import os
import time

import numpy as np
import pytest
from scapy.all import Ether, IP, IPv6, TCP, UDP, SCTP, SCTPChunkData

from ipvsflow.config import parse_rules
from ipvsflow.engine import Engine
from ipvsflow.forward import Forwarder, NullSink, DECISION_DTYPE
from ipvsflow.io import PacketBatch, str_to_addr

PACKETS = int(os.environ.get("IPVSFLOW_FWD_PACKETS", 1 << 18))
PAYLOAD = int(os.environ.get("IPVSFLOW_FWD_PAYLOAD", 200))
BURST = 256

RULES = """
-A -t 10.0.0.100:80 -s rr
-a -t 10.0.0.100:80 -r 10.0.1.1:8080 -m
-A -t [2001:db8::100]:80 -s rr
-a -t [2001:db8::100]:80 -r [2001:db8:1::1]:8080 -m
-A -t 10.0.0.200:80 -s rr
-a -t 10.0.0.200:80 -r 10.0.2.1:80 -g
-A -t 10.0.0.201:80 -s rr
-a -t 10.0.0.201:80 -r 10.0.3.1:80 -i
-A -u 10.0.0.100:80 -s rr
-a -u 10.0.0.100:80 -r 10.0.1.1:8080 -m
-A -u 10.0.0.200:80 -s rr
-a -u 10.0.0.200:80 -r 10.0.2.1:80 -g
"""
E = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe")
C, V = "192.0.2.10", "10.0.0.100"

# method: (packet builder(i), decision fields, forwarder options)
CASES = {
    "copy": None,
    "nat_in_tcp4": (lambda i: Ether(**E) / IP(src=C, dst=V) / TCP(sport=1024 + i % 60000, dport=80, flags="A"),
                    dict(dir=1, fwd=0, rs=0, dport=8080, vport=80, vaddr=V), {}),
    "nat_out_tcp4": (lambda i: Ether(**E) / IP(src="10.0.1.1", dst=C) / TCP(sport=8080, dport=1024 + i % 60000, flags="A"),
                     dict(dir=2, fwd=0, rs=0, dport=8080, vport=80, vaddr=V), {}),
    "nat_in_udp6": (lambda i: Ether(**E) / IPv6(src="2001:db8:c::10", dst="2001:db8::100") / UDP(sport=1024 + i % 60000, dport=80),
                    dict(dir=1, fwd=0, rs=1, dport=8080, vport=80, vaddr="2001:db8::100"), {}),
    "nat_in_sctp4": (lambda i: Ether(**E) / IP(src=C, dst=V) / SCTP(sport=1024 + i % 60000, dport=80)
                     / SCTPChunkData(data=b"\0" * max(PAYLOAD - 16, 0)),
                     dict(dir=1, fwd=0, rs=0, dport=8080, vport=80, vaddr=V), {}),
    "dr_tcp4": (lambda i: Ether(**E) / IP(src=C, dst="10.0.0.200") / TCP(sport=1024 + i % 60000, dport=80, flags="A"),
                dict(dir=1, fwd=3, rs=2, dport=80, vport=80, vaddr="10.0.0.200"),
                {"neighbours": {"10.0.2.1": "02:00:00:00:02:01"}}),
    "tun_ipip4": (lambda i: Ether(**E) / IP(src=C, dst="10.0.0.201") / TCP(sport=1024 + i % 60000, dport=80, flags="A"),
                  dict(dir=1, fwd=2, rs=3, dport=80, vport=80, vaddr="10.0.0.201"), {}),
    "tun_gue_csum4": (lambda i: Ether(**E) / IP(src=C, dst="10.0.0.201") / TCP(sport=1024 + i % 60000, dport=80, flags="A"),
                      dict(dir=1, fwd=2, rs=3, dport=80, vport=80, vaddr="10.0.0.201"),
                      {"tunnel": {"type": "gue", "port": 6080, "csum": True}}),
    # live director traffic (see the module docstring): in place, 60-byte UDP frames
    "nat_in_udp4_live": (lambda i: Ether(**E) / IP(src=C, dst=V, flags="DF") / UDP(sport=1024 + i, dport=80),
                         dict(dir=1, fwd=0, rs=4, dport=8080, vport=80, vaddr=V),
                         {"neighbours": {"10.0.1.1": "02:00:00:00:01:01"}, "learn_neighbours": False}),
    "dr_udp4_live": (lambda i: Ether(**E) / IP(src=C, dst="10.0.0.200", flags="DF") / UDP(sport=1024 + i, dport=80),
                     dict(dir=1, fwd=3, rs=5, dport=80, vport=80, vaddr="10.0.0.200"),
                     {"neighbours": {"10.0.2.1": "02:00:00:00:02:01"}, "learn_neighbours": False}),
}
LIVE_FLOWS = 4096
LIVE_PAYLOAD = 18           # 14 + 20 + 8 + 18 = 60 bytes, the live sender's frames


def _bursts(build):
    """PACKETS frames in bursts of BURST: BURST distinct flows built with scapy, each burst in
    its own memory (so the copies are not served from one hot buffer)."""
    templates = []
    for i in range(BURST):
        p = build(i)
        if SCTP not in p:
            p = p / (b"\0" * PAYLOAD)
        templates.append(bytes(p))
    out = []
    for b0 in range(0, PACKETS, BURST):
        n = min(BURST, PACKETS - b0)
        out.append(PacketBatch.from_packets([(10**18 + b0 + i, templates[i]) for i in range(n)]))
    return out


def _decisions(n, fields):
    d = np.zeros(n, DECISION_DTYPE)
    d["pkt"] = np.arange(n)
    d["action"] = 2
    for k, v in fields.items():
        d[k] = np.frombuffer(str_to_addr(v), np.uint8) if k == "vaddr" else v
    return d


def _live_bursts(build):
    """PACKETS frames of LIVE_FLOWS flows cycled, in bursts of BURST, each burst in its own
    writable memory (the forwarder rewrites them in place, as in the receive ring)."""
    templates = [bytes(build(i) / (b"\xab" * LIVE_PAYLOAD)) for i in range(LIVE_FLOWS)]
    out = []
    for b0 in range(0, PACKETS, BURST):
        n = min(BURST, PACKETS - b0)
        raws = [templates[(b0 + i) % LIVE_FLOWS] for i in range(n)]
        b = PacketBatch.from_packets([(10**18 + b0 + i, raws[i]) for i in range(n)])
        buf = bytearray(b"".join(raws))
        arr = b.to_numpy()
        base = np.frombuffer(buf, dtype=np.uint8).ctypes.data
        arr["data"][:n] = base + np.cumsum([0] + [len(r) for r in raws[:-1]])
        b.owner = buf
        out.append(b)
    return out


_cache = {}


def _setup(case):
    if case not in _cache:
        spec = CASES[case] or CASES["nat_in_tcp4"]
        build, fields, opts = spec
        # distinct flows, but the frames repeat per burst index: build one round of bursts
        _cache[case] = ((_live_bursts if case.endswith("_live") else _bursts)(build),
                        _decisions(BURST, fields), opts)
    return _cache[case]


@pytest.mark.benchmark(group="forward", min_rounds=5, warmup=True)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_ns_per_packet(benchmark, case):
    bursts, dec, opts = _setup(case)
    eng = Engine(parse_rules(RULES))
    fw = Forwarder(eng, **opts)
    sink = NullSink(1)

    if case == "copy":
        def run():
            c0 = time.process_time()
            for b in bursts:
                fw.copy_burst(b, 0, b.count)
            return time.process_time() - c0
    else:
        def run():
            c0 = time.process_time()
            for b in bursts:
                fw.forward(b, dec[:b.count], 0, b.count, sink)
            return time.process_time() - c0

    cpu = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    if case != "copy":
        c = fw.counters
        assert c["forwarded"] == c["packets"] > 0 and c["dropped"] == 0
        if case.endswith("_live"):
            assert c["in_place"] == c["packets"]
    ns = cpu / PACKETS * 1e9
    _timings.setdefault(case, ns)
    benchmark.extra_info.update(packets=PACKETS, payload=PAYLOAD, ns_per_packet_cpu=round(ns, 1))
    if "copy" in _timings and case != "copy":
        benchmark.extra_info["x_copy"] = round(ns / _timings["copy"], 2)
    print(f"\n{case}: {ns:.1f} ns/packet (CPU, last round)"
          + (f", {ns / _timings['copy']:.2f}x copy" if "copy" in _timings and case != "copy" else ""))


_timings = {}
