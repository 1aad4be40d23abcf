"""`ipvsflow live` end to end: real TCP stacks in network namespaces, a director that only
ipvsflow moves packets through (its kernel has no VIP and does not forward), real servers
answering HTTP with their name.

Each scenario checks that every request is answered by a real server, that the servers chosen
follow the kernel's logic for the conn_reuse_mode in force (checked against an offline replay
of the director's own capture through the Engine: same server for every connection, and the
decision that made it), and that run-time changes (ctl, SIGHUP) behave as ipvsadm edits do.
Needs root and network namespaces (skipped otherwise, with the reason).
"""
from __future__ import annotations

import collections
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ipvsflow.config import parse_command, parse_rules
from ipvsflow.engine import ACTIONS, REASONS, Engine, state_name
from ipvsflow.io import open_capture

from netns_topology import VIP, CLIENT, Topology, netns_available, topology  # noqa: F401

pytestmark = pytest.mark.netns

TCP_SYN = 0x02


def rules_for(topo: Topology, names, method: str, sched: str = "rr") -> str:
    out = f"-A -t {VIP}:80 -s {sched}\n"
    for n in names:
        out += f"-a -t {VIP}:80 -r {topo.servers[n]}:80 {method} -w 1\n"
    return out


def answered(results) -> list:
    bad = [r for r in results if r.get("error") or not r.get("server")]
    assert not bad, f"{len(bad)} of {len(results)} requests failed, e.g. {bad[:3]}"
    return results


def live_sequences(results, topo: Topology) -> dict:
    """{client port: [real-server address of each request, in order]} as the clients saw it."""
    by_port = collections.defaultdict(list)
    for r in sorted(results, key=lambda r: r["t0"]):
        by_port[r["sport"]].append(topo.servers[r["server"]])
    return dict(by_port)


def replay(capture: str, rules: str, sysctls=(), changes=()) -> tuple[dict, list]:
    """Replay the director's capture through a fresh Engine, applying ``changes``
    ([(packet index, ipvsadm line)]) before the packet they preceded in the live run.
    Returns ({client port: [server of each client connection, in order]}, [SYN decisions]).
    A client connection is a SYN with a sequence number not seen before on its port (a
    retransmitted SYN is the same connection); its server is the one of the first decision
    that gave it one (new, resched, or hit on the entry of a reused port)."""
    cfg = parse_rules(rules)
    for s in sysctls:
        k, v = s.split("=")
        cfg.sysctls[k] = int(v)
    eng = Engine(cfg)
    pending = sorted(changes)
    seqs = collections.defaultdict(list)
    isn = {}
    syns = []
    dests = eng.dests()
    for b in open_capture(capture):
        rows = b.to_numpy()
        idx = rows["index"]
        start = 0
        n = len(rows)
        while start < n:
            stop = n
            if pending:
                later = (idx[start:] >= pending[0][0]).nonzero()[0]
                if len(later):
                    stop = start + int(later[0])
            if stop > start:
                dec = eng.process(b, start, stop)
                for i in range(start, stop):
                    r, d = rows[i], dec[i - start]
                    if not (r["proto"] == 6 and r["tcp_flags"] & TCP_SYN and not r["tcp_flags"] & 0x10):
                        continue
                    if r["dport"] != 80:
                        continue
                    action = ACTIONS[d["action"]]
                    syns.append({"sport": int(r["sport"]), "action": action,
                                 "reason": REASONS[d["reason"]],
                                 "old": state_name(6, d["old_state"]) if d["old_state"] != 0xff else None})
                    frame = b.packet_bytes(i)
                    seq = frame[int(r["l4_off"]) + 4:int(r["l4_off"]) + 8]
                    port = int(r["sport"])
                    if isn.get(port) == seq or action not in ("new", "resched", "hit"):
                        continue
                    isn[port] = seq
                    if d["rs"] >= len(dests):
                        dests = eng.dests()
                    seqs[port].append(dests[d["rs"]]["addr"])
            if stop < n:
                eng.apply(parse_command(pending.pop(0)[1]))
                dests = eng.dests()
            start = stop
    assert not pending, f"changes after the last packet: {pending}"
    return dict(seqs), syns


def assert_same_servers(live: dict, replayed: dict):
    assert set(live) == set(replayed)
    for port in live:
        assert live[port] == replayed[port], (port, live[port][:10], replayed[port][:10])


# ---- NAT -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [1, 0])
def test_nat_port_reuse(topology, mode):
    """NAT, rr over 3 servers, 16 client ports reused: TIME_WAIT reuse is rescheduled under
    conn_reuse_mode 1 (rr keeps cycling), kept on the old server under mode 0."""
    t = topology.build_nat(3)
    t.start_http()
    rules = rules_for(t, ["rs1", "rs2", "rs3"], "-m")
    cap = str(t.tmp / "cap.pcap")
    d = t.director(rules, ["eth0", "eth1"], "--sysctl", f"conn_reuse_mode={mode}", "--capture", cap,
                   "--stats-interval", "0.5")
    res = answered(t.http_clients(1000, 40000, 40015, concurrency=4))
    code, out, err = d.stop()
    assert code == 0, err
    live = live_sequences(res, t)
    counts = collections.Counter(r["server"] for r in res)
    seqs, syns = replay(cap, rules, [f"conn_reuse_mode={mode}"])
    assert_same_servers(live, seqs)
    reused = [s for s in syns if s["old"] is not None and s["old"] != "SYN_RECV"]
    assert len(reused) >= 1000 - 16 - 5         # nearly every request reuses a port
    if mode == 1:
        # every reuse found the old entry in TIME_WAIT (the server closed first) and rescheduled
        assert all(s["action"] == "resched" and s["reason"] == "reuse_expected" and s["old"] == "TIME_WAIT"
                   for s in reused), [s for s in reused if s["action"] != "resched"][:5]
        # rr over every connection: the servers' shares differ by at most one
        assert max(counts.values()) - min(counts.values()) <= 1, counts
        assert sum(len(set(v)) > 1 for v in live.values()) == len(live)
    else:
        assert all(s["action"] == "hit" for s in reused)
        # each port stays on the server its first connection got
        assert all(len(set(v)) == 1 for v in live.values()), live
        assert sorted(collections.Counter(v[0] for v in live.values()).values()) == [5, 5, 6]
    assert "in " in out and "pps" in out           # periodic stats lines were printed
    assert "stopped after" in out


def test_nat_ctl_add_server_weight_zero_and_replay(topology):
    """A server added through ctl gets new connections; a server set to weight 0 gets no new
    ones while its open connection finishes; the director's capture replayed with the same
    changes at the same packets gives the same server for every connection."""
    t = topology.build_nat(3)
    t.start_http()
    rules = rules_for(t, ["rs1", "rs2"], "-m")
    cap = str(t.tmp / "cap.pcap")
    d = t.director(rules, ["eth0", "eth1"], "--capture", cap, "--stats-interval", "0")
    changes = []

    def change(line):
        r = d.request({"cmd": "apply", "line": line})
        assert r["ok"], r
        changes.append((r["applied"][0]["packets"], line))

    phase1 = answered(t.http_clients(300, 40000, 40007))
    assert {r["server"] for r in phase1} == {"rs1", "rs2"}
    change(f"-a -t {VIP}:80 -r {t.servers['rs3']}:80 -m -w 1")
    code, listing, _ = d.ctl("-L", "-n")
    assert code == 0 and f"-> {t.servers['rs3']}:80" in listing
    phase2 = answered(t.http_clients(300, 40008, 40015))
    assert collections.Counter(r["server"] for r in phase2)["rs3"] >= 90

    # a connection held open on rs1 (request not finished yet) across the weight change
    hold = t.popen("cli", [sys.executable, "-c", HOLD_CLIENT, VIP, "41000"],
                   stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert hold.stdout.readline().strip() == "connected"
    held_on = None
    deadline = time.time() + 5
    while held_on is None and time.time() < deadline:
        for row in d.request({"cmd": "list", "conns": True})["output"].splitlines():
            if f"{CLIENT}:41000" in row and "ESTABLISHED" in row:
                held_on = row.split()[-1].rsplit(":", 1)[0]
        time.sleep(0.05)
    assert held_on is not None, "the held connection does not show in -L -n -c"
    name = next(n for n, a in t.servers.items() if a == held_on)
    change(f"-e -t {VIP}:80 -r {held_on}:80 -m -w 0")
    phase3 = answered(t.http_clients(300, 40016, 40023))
    assert name not in {r["server"] for r in phase3}
    # sysctls and timeouts at run time, through the ctl command line
    for argv in (("--sysctl", "conn_reuse_mode=1"), ("--set", "900", "60", "0")):
        code, _, err = d.ctl(*argv)
        assert code == 0, err
    code, out, _ = d.ctl("-L", "--timeout")
    assert out.strip() == "Timeout (tcp tcpfin udp): 900 60 300"
    code, _, err = d.ctl("--sysctl", "conn_reuse_mode=7")
    assert code == 1 and "out of range" in err
    changes.append((d.status()["packets"], "--set 900 60 0"))
    out, _ = hold.communicate("finish\n", timeout=10)
    assert out.strip() == name, f"the held connection on {name} did not finish: {out!r}"

    code, stats, _ = d.ctl("-L", "-n", "--stats")
    assert code == 0
    total = int(next(l for l in stats.splitlines() if l.startswith("TCP ")).split()[2])
    assert total == 901
    code, lst, _ = d.ctl("-L", "-n")
    row = next(l for l in lst.splitlines() if held_on + ":80" in l)
    assert row.split()[3] == "0"                  # weight
    code, saved, _ = d.ctl("-S", "-n")
    assert f"-a -t {VIP}:80 -r {held_on}:80 -m -w 0" in saved
    code, _, err = d.ctl("-a", "-t", VIP + ":80", "-r", t.servers["rs3"] + ":80", "-m")
    assert code == 1 and "already exists" in err
    code, _, err = d.ctl("-e", "-t", "198.18.100.9:80", "-r", t.servers["rs3"] + ":80", "-m")
    assert code == 1 and "no such service" in err
    rc, _, err = d.stop(signal.SIGINT)
    assert rc == 0, err

    results = phase1 + phase2 + phase3
    seqs, _ = replay(cap, rules, changes=changes)
    live = live_sequences(results, t)
    live[41000] = [held_on]
    assert_same_servers(live, seqs)


HOLD_CLIENT = r'''
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=20, source_address=("0.0.0.0", int(sys.argv[2])))
s.sendall(b"GET / HTTP/1.0\r\n")
print("connected", flush=True)
sys.stdin.readline()
s.sendall(b"Host: vip\r\n\r\n")
buf = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    buf += d
print(buf.partition(b"\r\n\r\n")[2].decode().strip(), flush=True)
'''


def test_nat_two_workers_fanout(topology):
    """Two workers, each with its own table: the fanout program sends both directions of
    every connection to the same worker, so every request is answered; counters add up."""
    t = topology.build_nat(3)
    t.start_http()
    rules = rules_for(t, ["rs1", "rs2", "rs3"], "-m")
    d = t.director(rules, ["eth0", "eth1"], "--workers", "2", "--stats-interval", "0")
    answered(t.http_clients(1000, 40000, 40063, concurrency=8))
    st = d.status()
    assert st["workers"] == 2 and len(set(st["pids"])) == 2
    per_worker = st["per_worker_packets"]
    assert all(n > 500 for n in per_worker), per_worker       # both workers carried traffic
    code, stats, _ = d.ctl("-L", "-n", "--stats")
    assert int(next(l for l in stats.splitlines() if l.startswith("TCP ")).split()[2]) == 1000
    assert st["drops"] == {}, st["drops"]
    if shutil.which("curl"):
        for port in (42000, 42001, 42002):
            r = t.run("cli", "curl", "-s", "--max-time", "5", "--local-port", str(port),
                      f"http://{VIP}/")
            assert r.stdout.strip() in t.servers, r
    rc, out, err = d.stop()
    assert rc == 0, err


def test_nat_ipv6(topology):
    """The same director over IPv6: neighbour discovery for the next hops, NAT both ways."""
    from netns_topology import CLIENT6, VIP6
    t = topology.build_nat(2, ipv6=True)
    t.start_http(ipv6=True)
    rules = f"-A -t [{VIP6}]:80 -s rr\n" + "".join(
        f"-a -t [{VIP6}]:80 -r [fd00:5eed:2::{10 + i}]:80 -m -w 1\n" for i in (1, 2))
    d = t.director(rules, ["eth0", "eth1"], "--stats-interval", "0")
    res = answered(t.http_clients(300, 40000, 40007, vip=VIP6, src=CLIENT6))
    counts = collections.Counter(r["server"] for r in res)
    assert counts == {"rs1": 150, "rs2": 150}
    lst = d.ctl("-L", "-n")[1]
    assert f"TCP  [{VIP6}]:80 rr" in lst and "[fd00:5eed:2::11]:80" in lst
    rc, _, err = d.stop()
    assert rc == 0, err


def test_nat_with_checksum_offload_left_on(netns_available):
    """Veths with checksum offload on (their default): frames reach the director with the TCP
    checksum left to the device; the director completes it, so servers and clients accept
    what it forwards."""
    t = Topology("o")
    t.offloads_off = False
    try:
        t.build_nat(2)
        t.start_http()
        d = t.director(rules_for(t, ["rs1", "rs2"], "-m"), ["eth0", "eth1"], "--stats-interval", "0")
        answered(t.http_clients(200, 40000, 40007))
        st = d.status()
        assert sum(c["csum_partial"] for c in st["rx"].values()) > 1000
        rc, _, err = d.stop()
        assert rc == 0, err
    finally:
        t.cleanup()


# ---- DR ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [1, 2])
def test_dr_port_reuse(topology, mode):
    """DR, rr over 3 servers: the director sees client packets only (INPUT_ONLY states). A
    reused port finds its entry in FIN_WAIT: mode 1 keeps it on the old server, mode 2
    reschedules it."""
    t = topology.build_dr(3)
    t.start_http()
    rules = rules_for(t, ["rs1", "rs2", "rs3"], "-g")
    cap = str(t.tmp / "cap.pcap")
    d = t.director(rules, ["eth0"], "--sysctl", f"conn_reuse_mode={mode}", "--capture", cap,
                   "--stats-interval", "0")
    res = answered(t.http_clients(1000, 40000, 40015, concurrency=4))
    st = d.status()
    # replies never pass the director: only client packets were processed
    assert st["services"][0]["outpkts"] == 0
    code, _, err = d.stop()
    assert code == 0, err
    live = live_sequences(res, t)
    seqs, syns = replay(cap, rules, [f"conn_reuse_mode={mode}"])
    assert_same_servers(live, seqs)
    fw = [s for s in syns if s["old"] == "FIN_WAIT"]
    assert sum(len(v) for v in seqs.values()) == 1000
    assert len(fw) >= 900, collections.Counter(s["old"] for s in syns)
    counts = collections.Counter(r["server"] for r in res)
    if mode == 1:
        assert all(s["action"] == "hit" for s in fw)
        # a port changes server only when its entry was rescheduled (CLOSE after a reset), rarely
        resched = [s for s in syns if s["action"] == "resched"]
        assert all(s["old"] in ("CLOSE", "TIME_WAIT") for s in resched), resched
        assert len(resched) <= 5
    else:
        assert all(s["action"] == "resched" and s["reason"] == "reuse_expected" for s in fw)
        assert max(counts.values()) - min(counts.values()) <= 1, counts


# ---- operations: privileges, metrics, promiscuous mode, reload, signals -----------------------

def _promiscuity(t: Topology, ifname: str) -> int:
    out = t.run("dir", "ip", "-d", "link", "show", ifname).stdout
    return int(re.search(r"promiscuity (\d+)", out).group(1))


def _uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_metrics_endpoint(topology):
    pytest.importorskip("prometheus_client", reason="--metrics needs prometheus-client (pip install prometheus-client)")
    t = topology.build_nat(2)
    t.start_http()
    d = t.director(rules_for(t, ["rs1", "rs2"], "-m"), ["eth0", "eth1"], "--workers", "2",
                   "--metrics", "127.0.0.1:9109", "--stats-interval", "0")
    answered(t.http_clients(200, 40000, 40007))
    time.sleep(1.2)         # the metrics show the workers' counters of the last second
    metrics = t.run("dir", sys.executable, "-c",
                    "import urllib.request;print(urllib.request.urlopen("
                    "'http://127.0.0.1:9109/metrics', timeout=5).read().decode())").stdout
    rx = float(re.search(r'ipvsflow_rx_packets_total\{iface="eth0"\} (\S+)', metrics).group(1))
    assert rx >= 200 * 4
    conns = re.findall(r'ipvsflow_server_connections_total\{server="([^"]+)",service="[^"]+"\} (\S+)', metrics)
    assert {s for s, _ in conns} == {f"{a}:80" for a in t.servers.values()}
    assert sum(float(v) for _, v in conns) == 200           # summed over both workers
    sched = re.findall(r'ipvsflow_decisions_total\{action="(?:new|resched)",reason="[^"]*"\} (\S+)', metrics)
    assert sum(float(v) for v in sched) == 200         # 8 new, then the reused ports rescheduled
    assert "ipvsflow_workers 2.0" in metrics
    assert re.search(r'ipvsflow_rx_kernel_drops_total\{iface="eth1"\} 0', metrics)
    rc, _, err = d.stop()
    assert rc == 0, err


def test_user_promisc_reload_and_stop(topology):
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user to drop to")
    t = topology.build_nat(4)
    t.start_http()
    rules = rules_for(t, ["rs1", "rs2"], "-m")
    os.chmod(t.tmp, 0o755)
    d = t.director(rules, ["eth0", "eth1"], "--user", "nobody", "--promisc", "--stats-interval", "0")
    os.chmod(d.rules, 0o644)
    st = d.status()
    for pid in [d.proc.pid] + st["pids"]:
        assert _uid(pid) == nobody.pw_uid
    assert _promiscuity(t, "eth0") == 1 and _promiscuity(t, "eth1") == 1
    answered(t.http_clients(200, 40000, 40007))

    # SIGHUP: the server without the open connection removed, the other one weight 2, rs3 and
    # rs4 added; the open connection survives the reload
    hold = t.popen("cli", [sys.executable, "-c", HOLD_CLIENT, VIP, "41000"],
                   stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert hold.stdout.readline().strip() == "connected"
    held_on = None
    deadline = time.time() + 5
    while held_on is None and time.time() < deadline:
        for row in d.ctl("-L", "-n", "-c")[1].splitlines():
            if f"{CLIENT}:41000" in row and "ESTABLISHED" in row:
                held_on = row.split()[-1].rsplit(":", 1)[0]
        time.sleep(0.05)
    assert held_on is not None
    keep = next(n for n, a in t.servers.items() if a == held_on)
    gone = "rs2" if keep == "rs1" else "rs1"
    before = d.status()["conn_count"]
    new_rules = (f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {held_on}:80 -m -w 2\n"
                 f"-a -t {VIP}:80 -r {t.servers['rs3']}:80 -m -w 1\n"
                 f"-a -t {VIP}:80 -r {t.servers['rs4']}:80 -m -w 1\n")
    d.rules.write_text(new_rules)
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while time.time() < deadline:
        if t.servers["rs4"] in d.ctl("-L", "-n")[1]:
            break
        time.sleep(0.1)
    lst = d.ctl("-L", "-n")[1]
    assert t.servers[gone] + ":80" not in lst and t.servers["rs4"] + ":80" in lst
    assert re.search(re.escape(held_on) + r":80\s+Masq\s+2\s", lst), lst
    assert d.status()["conn_count"] >= before          # the connection table was kept
    res = answered(t.http_clients(200, 40008, 40015))
    servers = {r["server"] for r in res}
    assert gone not in servers and {"rs3", "rs4", keep} <= servers
    out, _ = hold.communicate("finish\n", timeout=10)
    assert out.strip() == keep, out

    rc, out, err = d.stop(signal.SIGTERM)
    assert rc == 0, err
    assert "stopped after" in out and "TCP  198.18.100.1:80" in out
    # promiscuous mode went away with the sockets
    assert _promiscuity(t, "eth0") == 0 and _promiscuity(t, "eth1") == 0
    assert not d.ctl_path.exists()


def test_clear_errors(topology):
    t = topology.build_nat(1)
    rules = rules_for(t, ["rs1"], "-m")
    # without CAP_NET_RAW (root, with the capability taken out of the bounding set): one line
    from netns_topology import REPO
    env = dict(os.environ, PYTHONPATH=str(REPO))
    (t.tmp / "r.conf").write_text(rules)
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux's setpriv to run without CAP_NET_RAW")
    r = t.run("dir", "setpriv", "--bounding-set=-net_raw", sys.executable, "-m", "ipvsflow.live.cli",
              "live", "-C", str(t.tmp / "r.conf"), "-i", "eth0", "-i", "eth1", "--control",
              str(t.tmp / "c.sock"), check=False, env=env, cwd=str(REPO))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAP_NET_RAW" in lines[0], r.stderr
    assert not (t.tmp / "c.sock").exists()
    # unknown interface, bad rules: one line each, exit 1
    r = t.run("dir", sys.executable, "-m", "ipvsflow.live.cli", "live", "-C", str(t.tmp / "r.conf"),
              "-i", "nosuch0", "--control", str(t.tmp / "c.sock"), check=False, env=env, cwd=str(REPO))
    assert r.returncode == 1 and "nosuch0: no such network interface" in r.stderr
    (t.tmp / "bad.conf").write_text("-A -t 198.18.100.1:80 -s nosuch\n")
    r = t.run("dir", sys.executable, "-m", "ipvsflow.live.cli", "live", "-C", str(t.tmp / "bad.conf"),
              "-i", "eth0", "--control", str(t.tmp / "c.sock"), check=False, env=env, cwd=str(REPO))
    assert r.returncode == 1 and "unknown scheduler" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # ctl without a director
    r = subprocess.run([sys.executable, "-m", "ipvsflow.live.cli", "ctl", "--socket",
                        str(t.tmp / "none.sock"), "-L", "-n"], capture_output=True, text=True,
                       env=env, cwd=str(REPO))
    assert r.returncode == 1 and "no control socket" in r.stderr
