"""Live director throughput, side by side with bare receivers, on veth pairs in namespaces.

A sender namespace blasts 60-byte UDP frames (bench/live_sender.c: sendmmsg x 64,
PACKET_QDISC_BYPASS, one core: CPU 0) at a NAT virtual service (IPVSFLOW_BENCH_LIVE_FLOWS
client flows, default 4096). On CPU 1, one after the other, the receivers are:

* ``floor``    bench/live_floor.c tpacket3: a TPACKET_V3 ring read that only touches each
               5-tuple (the same ring geometry as the director's defaults);
* ``recvmmsg`` the same reading from recvmmsg bursts of 64;
* ``ipvsflow dry-run``  ``ipvsflow live --dry-run``: ring, parser, engine, forwarder and the
               sink's next-hop lookups, nothing transmitted;
* ``ipvsflow``  ``ipvsflow live``: the same, rewritten frames transmitted to a real server
               namespace that drops them on ingress; with sendmmsg bursts (the default),
               sendmmsg with PACKET_QDISC_BYPASS, and a PACKET_TX_RING.

On veth, a transmitted frame's whole receive path in the peer namespace runs on the
transmitting CPU, so the forwarding rows include the real server's ingress work.

Reported per receiver: sender rate, packets received, kernel drops (ring full), packets
forwarded, and receiver CPU ns per packet (its process CPU time over the blast / packets
received), with the ratio to the floor. Figures, not assertions.
Run: ``pytest bench/bench_live.py`` (root; IPVSFLOW_BENCH_LIVE_SECONDS, default 4).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from netns_topology import Topology, netns_unavailable_reason   # noqa: E402

SECONDS = float(os.environ.get("IPVSFLOW_BENCH_LIVE_SECONDS", "4"))
FLOWS = int(os.environ.get("IPVSFLOW_BENCH_LIVE_FLOWS", "4096"))
VIP = "198.18.100.1"
RS = "198.18.2.11"
RESULTS: dict = {}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])            # utime + stime
    return total / CLK_TCK


@pytest.fixture(scope="module")
def bench_net(compile_c):
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"live benchmark skipped: {reason}")
    if shutil.which("taskset") is None or os.cpu_count() < 2:
        pytest.skip("live benchmark needs two CPUs and taskset")
    sender = compile_c(HERE / "live_sender.c", shared=False)
    floor = compile_c(HERE / "live_floor.c", shared=False)
    t = Topology("b")
    try:
        for n in ("gen", "dir", "rs"):
            t.add_ns(n)
        t.link("gen", "eth0", "dir", "eth0")
        t.link("dir", "eth1", "rs", "eth0")
        t.sh("dir", "ip addr add 198.18.1.1/24 dev eth0")
        t.sh("dir", "ip addr add 198.18.2.1/24 dev eth1")
        t.sysctl("dir", "net.ipv4.ip_forward", 0)
        for n in ("gen", "rs"):
            t.sysctl(n, "net.ipv6.conf.all.disable_ipv6", 1)
        # forwarded frames are dropped on the real server's ingress as cheaply as possible: its
        # MAC, as the director knows it, is not the interface's, so the frames arrive for
        # "another host" and IP discards them first thing
        t.sh("dir", f"ip neigh replace {RS} lladdr 02:00:00:00:00:99 dev eth1 nud permanent")
        t.dir_mac = t.mac("dir", "eth0")
        t.sender, t.floor = str(sender), str(floor)
        yield t
    finally:
        t.cleanup()


def _blast(t: Topology) -> dict:
    r = subprocess.run(["taskset", "-c", "0", "ip", "netns", "exec", t.ns("gen"), t.sender, "eth0",
                        t.dir_mac, "198.18.1.10", VIP, "53", str(FLOWS), str(SECONDS)],
                       capture_output=True, text=True, timeout=SECONDS + 60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _floor(t: Topology, mode: str) -> dict:
    p = subprocess.Popen(["taskset", "-c", "1", "ip", "netns", "exec", t.ns("dir"), t.floor, "eth0",
                          str(SECONDS + 1.5), mode], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    snd = _blast(t)
    out, _ = p.communicate(timeout=SECONDS + 30)
    rx = json.loads(out)
    return {"sent_pps": snd["pps"], "sent": snd["sent"], "received": rx["packets"],
            "kernel_drops": rx["kernel_drops"], "forwarded": 0, "ns_per_packet": rx["ns_per_packet"]}


def _ipvsflow(t: Topology, *extra) -> dict:
    rules = f"-A -u {VIP}:53 -s rr\n-a -u {VIP}:53 -r {RS}:53 -m -w 1\n"
    d = t.director(rules, ["eth0", "eth1"], "--stats-interval", "0", *extra,
                   user_cmd_prefix=("taskset", "-c", "1"))
    try:
        st = d.status()
        pids = [d.proc.pid] + st["pids"]
        cpu0 = _cpu_seconds(pids)
        snd = _blast(t)
        time.sleep(0.3)
        cpu = _cpu_seconds(pids) - cpu0
        st = d.status()
    finally:
        rc, out, err = d.stop()
    rx = sum(c["packets"] for c in st["rx"].values())
    drops = sum(c["kernel_drops"] for c in st["rx"].values())
    tx = sum(c["packets"] for c in st["tx"].values())
    return {"sent_pps": snd["pps"], "sent": snd["sent"], "received": rx, "kernel_drops": drops,
            "forwarded": tx if "--dry-run" not in extra else st["sink"].get("dry_run", 0),
            "ns_per_packet": cpu * 1e9 / rx if rx else float("nan")}


CASES = {
    "floor (TPACKET_V3)": lambda t: _floor(t, "tpacket3"),
    "recvmmsg": lambda t: _floor(t, "recvmmsg"),
    "ipvsflow dry-run": lambda t: _ipvsflow(t, "--dry-run"),
    "ipvsflow fwd sendmmsg": lambda t: _ipvsflow(t),
    "ipvsflow fwd bypass": lambda t: _ipvsflow(t, "--qdisc-bypass"),
    "ipvsflow fwd tx-ring": lambda t: _ipvsflow(t, "--tx", "ring"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_live_receive(benchmark, bench_net, case):
    res = benchmark.pedantic(CASES[case], args=(bench_net,), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    RESULTS[case] = res


def test_live_summary(bench_summary):
    if not RESULTS:
        pytest.skip("no live results")
    floor = RESULTS.get("floor (TPACKET_V3)", {}).get("ns_per_packet")
    lines = [f"{SECONDS:g} s blasts of 60 B frames, {FLOWS} flows; sender on CPU 0, receiver on CPU 1",
             f"{'receiver':<22} {'sender Mpps':>11} {'received':>10} {'lost':>8} {'k.drops':>8} "
             f"{'forwarded':>10} {'ns/pkt':>8} {'x floor':>8}"]
    for name, r in RESULTS.items():
        ratio = r["ns_per_packet"] / floor if floor else float("nan")
        lines.append(f"{name:<22} {r['sent_pps'] / 1e6:>11.3f} {r['received']:>10} "
                     f"{r['sent'] - r['received']:>8} {r['kernel_drops']:>8} {r['forwarded']:>10} "
                     f"{r['ns_per_packet']:>8.1f} {ratio:>8.2f}")
    bench_summary("live AF_PACKET director vs bare receivers", lines)
