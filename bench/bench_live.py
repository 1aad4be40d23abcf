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

At each rate, IPVSFLOW_BENCH_LIVE_ROUNDS rounds (default 3) run every receiver once, one after
the other; IPVSFLOW_BENCH_LIVE_CASES (comma separated parts of names, e.g. ``floor (,dry-run``)
selects receivers. The machine's other load moves single runs by tens of percent and drifts
over minutes, so a ratio to the floor is taken within each round and their median reported,
with the median round's CPU per packet.

Reported per receiver: sender rate, packets received, kernel drops (ring full), packets
forwarded, and receiver CPU ns per packet (its process CPU time over the blast / packets
received), with the ratio to the floor (``floor fwd`` for the forwarding rows) at the same
rate, and for ipvsflow the packets per burst (a burst: one engine and forwarder call; with
a slow sender a block retires on its timer holding few packets) and the busy ns per packet
(the worker loop's time between waits: its processing; the rest of its CPU time is mostly
the kernel's wakeups, which the floor pays too). Figures, not assertions.
Run: ``pytest bench/bench_live.py`` (root; IPVSFLOW_BENCH_LIVE_SECONDS, default 4).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
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
        busy0 = st.get("loop", {}).get("busy_ns", 0)
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
    busy = st.get("loop", {}).get("busy_ns", 0) - busy0
    return {"sent_pps": snd["pps"], "sent": snd["sent"], "received": rx, "kernel_drops": drops,
            "forwarded": tx if "--dry-run" not in extra else st["sink"].get("dry_run", 0),
            "ns_per_packet": cpu * 1e9 / rx if rx else float("nan"),
            "packets_per_burst": rx / bursts if bursts else float("nan"),
            "busy_ns_per_packet": busy / rx if rx else float("nan")}


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


SELECTED = [c for c in CASES if not os.environ.get("IPVSFLOW_BENCH_LIVE_CASES") or any(
    w.strip() and w.strip() in c for w in os.environ["IPVSFLOW_BENCH_LIVE_CASES"].split(","))]


def _base(name):
    return FLOOR_FWD if name.startswith("ipvsflow fwd") else FLOOR


@pytest.mark.parametrize("pps", RATES, ids=lambda r: f"{r}pps" if r else "max")
def test_live_receive(benchmark, bench_net, pps):
    """Every selected receiver once per round, the rounds one after the other: a receiver and
    its floor run seconds apart, so a ratio is taken within each round (the machine's other
    load drifts over minutes) and the median of those is reported."""
    def rounds():
        out = {c: [] for c in SELECTED}
        for _ in range(ROUNDS):
            for c in SELECTED:
                out[c].append(CASES[c](bench_net, pps))
        return out
    runs = benchmark.pedantic(rounds, rounds=1, iterations=1)
    for case, rs in runs.items():
        base = runs.get(_base(case))
        ratios = sorted(r["ns_per_packet"] / b["ns_per_packet"] for r, b in zip(rs, base)) if base else []
        order = sorted(rs, key=lambda r: r["ns_per_packet"])
        res = dict(order[len(order) // 2])
        res["ns_per_packet_all"] = [round(r["ns_per_packet"], 1) for r in rs]
        res["x_floor"] = statistics.median(ratios) if ratios else float("nan")
        res["x_floor_all"] = [round(x, 2) for x in ratios]
        benchmark.extra_info[case] = res
        RESULTS[(pps, case)] = res


def test_live_summary(bench_summary):
    if not RESULTS:
        pytest.skip("no live results")
    lines = [f"{SECONDS:g} s blasts of 60 B frames, {FLOWS} flows; sender on CPU 0, receiver on CPU 1;"
             f" {ROUNDS} rounds of every receiver in turn; ns/pkt: the median round; x floor: the median"
             " of the rounds' ratios to that round's floor (forwarding rows: floor fwd) at the same rate",
             f"{'pace':>7} {'receiver':<22} {'sender Mpps':>11} {'received':>10} {'lost':>8} "
             f"{'k.drops':>8} {'forwarded':>10} {'ns/pkt':>8} {'x floor':>8} {'pkt/burst':>9} {'busy':>6}"
             "  rounds ns/pkt"]
    for (pps, name), r in RESULTS.items():
        pace = f"{pps / 1e6:.3f}M" if pps else "max"
        lines.append(f"{pace:>7} {name:<22} {r['sent_pps'] / 1e6:>11.3f} {r['received']:>10} "
                     f"{r['sent'] - r['received']:>8} {r['kernel_drops']:>8} {r['forwarded']:>10} "
                     f"{r['ns_per_packet']:>8.1f} {r['x_floor']:>8.2f} {r.get('packets_per_burst', float('nan')):>9.0f}"
                     f" {r.get('busy_ns_per_packet', float('nan')):>6.1f}"
                     f"  {' '.join(f'{x:.0f}' for x in r['ns_per_packet_all'])}")
    bench_summary("live AF_PACKET director vs bare receivers", lines)
