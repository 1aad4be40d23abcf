"""Live director throughput, side by side with bare receivers, on veth pairs in namespaces.

A sender namespace blasts 60-byte UDP frames (bench/live_sender.c: sendmmsg x 64,
PACKET_QDISC_BYPASS, one core: CPU 0) at a NAT virtual service (IPVSFLOW_BENCH_LIVE_FLOWS
client flows, default 4096). On CPU 1, one after the other, the receivers are:

* ``floor``    bench/live_floor.c tpacket3: a TPACKET_V3 ring read that only touches each
               5-tuple (the same ring geometry as the director's defaults);
* ``recvmmsg`` the same reading from recvmmsg bursts of 64;
* ``floor fwd`` the tpacket3 floor that also sends every frame to the real server (MACs
               rewritten in the ring, one zero-copy sendmmsg per block): the forwarding rows'
               floor, since on veth most of their CPU is the transmit path's;
* ``ipvsflow dry-run``  ``ipvsflow live --dry-run``: ring, parser, engine, forwarder and the
               sink's next-hop lookups, nothing transmitted;
* ``ipvsflow``  ``ipvsflow live``: the same, rewritten frames transmitted to a real server
               namespace that drops them on ingress; with sendmmsg bursts (the default),
               sendmmsg with PACKET_QDISC_BYPASS, and a PACKET_TX_RING.

On veth, a transmitted frame's whole receive path in the peer namespace runs on the
transmitting CPU, so the forwarding rows include the real server's ingress work.

Each receiver runs at every rate of IPVSFLOW_BENCH_LIVE_PPS (comma separated, 0 = as fast as
the sender goes; default ``0,200000``): CPU per packet depends on the rate (a block retires
on its 1 ms timer with fewer packets at lower rates, and the per-block costs are shared by
fewer packets), so the ratios are only meaningful between rows of one paced rate.

Each (receiver, rate) runs IPVSFLOW_BENCH_LIVE_ROUNDS times (default 3) and the round with the
median CPU per packet is reported: the machine's other load moves single runs by tens of
percent.

Reported per receiver: sender rate, packets received, kernel drops (ring full), packets
forwarded, and receiver CPU ns per packet (its process CPU time over the blast / packets
received), with the ratio to the floor (``floor fwd`` for the forwarding rows) at the same
rate, and for ipvsflow the packets per burst (a burst: one engine and forwarder call; with
a slow sender a block retires on its timer holding few packets). Figures, not assertions.
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
ROUNDS = max(1, int(os.environ.get("IPVSFLOW_BENCH_LIVE_ROUNDS", "3")))
RATES = [int(float(x)) for x in os.environ.get("IPVSFLOW_BENCH_LIVE_PPS", "0,200000").split(",") if x.strip()]
VIP = "198.18.100.1"
RS = "198.18.2.11"
RESULTS: dict = {}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids) -> float:
    """CPU time of processes: the scheduler's ns counter (/proc/PID/schedstat), or the
    clock-tick one (10 ms resolution) where schedstat is missing."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as fh:
                total += int(fh.read().split()[0]) / 1e9
            continue
        except (OSError, ValueError, IndexError):
            pass
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        total += (int(f[11]) + int(f[12])) / CLK_TCK      # utime + stime
    return total


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


def _blast(t: Topology, pps: int) -> dict:
    r = subprocess.run(["taskset", "-c", "0", "ip", "netns", "exec", t.ns("gen"), t.sender, "eth0",
                        t.dir_mac, "198.18.1.10", VIP, "53", str(FLOWS), str(SECONDS), str(pps)],
                       capture_output=True, text=True, timeout=SECONDS + 60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _floor(t: Topology, pps: int, mode: str) -> dict:
    extra = ["eth1", "02:00:00:00:00:99"] if mode == "tpacket3-fwd" else []
    p = subprocess.Popen(["taskset", "-c", "1", "ip", "netns", "exec", t.ns("dir"), t.floor, "eth0",
                          str(SECONDS + 1.5), mode, *extra], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    snd = _blast(t, pps)
    out, _ = p.communicate(timeout=SECONDS + 30)
    rx = json.loads(out)
    return {"sent_pps": snd["pps"], "sent": snd["sent"], "received": rx["packets"],
            "kernel_drops": rx["kernel_drops"], "forwarded": rx["forwarded"],
            "ns_per_packet": rx["ns_per_packet"]}


def _ipvsflow(t: Topology, pps: int, *extra) -> dict:
    rules = f"-A -u {VIP}:53 -s rr\n-a -u {VIP}:53 -r {RS}:53 -m -w 1\n"
    d = t.director(rules, ["eth0", "eth1"], "--stats-interval", "0", *extra,
                   user_cmd_prefix=("taskset", "-c", "1"))
    try:
        st = d.status()
        pids = [d.proc.pid] + st["pids"]
        bursts0 = st.get("loop", {}).get("bursts", 0)
        cpu0 = _cpu_seconds(pids)
        snd = _blast(t, pps)
        time.sleep(0.3)
        cpu = _cpu_seconds(pids) - cpu0
        st = d.status()
    finally:
        rc, out, err = d.stop()
    rx = sum(c["packets"] for c in st["rx"].values())
    drops = sum(c["kernel_drops"] for c in st["rx"].values())
    tx = sum(c["packets"] for c in st["tx"].values())
    bursts = st.get("loop", {}).get("bursts", 0) - bursts0
    return {"sent_pps": snd["pps"], "sent": snd["sent"], "received": rx, "kernel_drops": drops,
            "forwarded": tx if "--dry-run" not in extra else st["sink"].get("dry_run", 0),
            "ns_per_packet": cpu * 1e9 / rx if rx else float("nan"),
            "packets_per_burst": rx / bursts if bursts else float("nan")}


FLOOR = "floor (TPACKET_V3)"
FLOOR_FWD = "floor fwd"
CASES = {
    FLOOR: lambda t, pps: _floor(t, pps, "tpacket3"),
    "recvmmsg": lambda t, pps: _floor(t, pps, "recvmmsg"),
    "ipvsflow dry-run": lambda t, pps: _ipvsflow(t, pps, "--dry-run"),
    FLOOR_FWD: lambda t, pps: _floor(t, pps, "tpacket3-fwd"),
    "ipvsflow fwd sendmmsg": lambda t, pps: _ipvsflow(t, pps),
    "ipvsflow fwd bypass": lambda t, pps: _ipvsflow(t, pps, "--qdisc-bypass"),
    "ipvsflow fwd tx-ring": lambda t, pps: _ipvsflow(t, pps, "--tx", "ring"),
}


@pytest.mark.parametrize("pps", RATES, ids=lambda r: f"{r}pps" if r else "max")
@pytest.mark.parametrize("case", list(CASES))
def test_live_receive(benchmark, bench_net, case, pps):
    runs = benchmark.pedantic(lambda: [CASES[case](bench_net, pps) for _ in range(ROUNDS)],
                              rounds=1, iterations=1)
    runs.sort(key=lambda r: r["ns_per_packet"])
    res = dict(runs[len(runs) // 2])
    res["ns_per_packet_all"] = [round(r["ns_per_packet"], 1) for r in runs]
    benchmark.extra_info.update(res)
    RESULTS[(pps, case)] = res


def test_live_summary(bench_summary):
    if not RESULTS:
        pytest.skip("no live results")
    lines = [f"{SECONDS:g} s blasts of 60 B frames, {FLOWS} flows; sender on CPU 0, receiver on CPU 1;"
             " x floor: to the floor (forwarding rows: floor fwd) at the same paced rate",
             f"{'pace':>7} {'receiver':<22} {'sender Mpps':>11} {'received':>10} {'lost':>8} "
             f"{'k.drops':>8} {'forwarded':>10} {'ns/pkt':>8} {'x floor':>8} {'pkt/burst':>9}  rounds ns/pkt"]
    for (pps, name), r in RESULTS.items():
        base = FLOOR_FWD if name.startswith("ipvsflow fwd") else FLOOR
        floor = RESULTS.get((pps, base), {}).get("ns_per_packet")
        ratio = r["ns_per_packet"] / floor if floor else float("nan")
        pace = f"{pps / 1e6:.3f}M" if pps else "max"
        lines.append(f"{pace:>7} {name:<22} {r['sent_pps'] / 1e6:>11.3f} {r['received']:>10} "
                     f"{r['sent'] - r['received']:>8} {r['kernel_drops']:>8} {r['forwarded']:>10} "
                     f"{r['ns_per_packet']:>8.1f} {ratio:>8.2f} {r.get('packets_per_burst', float('nan')):>9.0f}"
                     f"  {' '.join(f'{x:.0f}' for x in r['ns_per_packet_all'])}")
    bench_summary("live AF_PACKET director vs bare receivers", lines)
