"""The port-reuse scenarios of the ecosystem reference (section 2.3) end to end through the CLI.

Each capture is synthesized small; the expected numbers are computed here from the capture's
packets (read with dpkt) and the scenario's rules, not from the engine's output.
"""
import json
import socket
import struct
from collections import defaultdict

import dpkt
import pytest

from ipvsflow import synth
from ipvsflow.cli import main


def _read(path):
    """(ts, src, sport, dst, dport, tcp flags or None for UDP) of every IP packet, in file order."""
    out = []
    with open(path, "rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            l4 = ip.data
            fam = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
            src, dst = socket.inet_ntop(fam, ip.src), socket.inet_ntop(fam, ip.dst)
            if isinstance(l4, dpkt.tcp.TCP):
                out.append((float(ts), src, l4.sport, dst, l4.dport, l4.flags))
            elif isinstance(l4, dpkt.udp.UDP):
                out.append((float(ts), src, l4.sport, dst, l4.dport, None))
    return out


def _client_syns(pkts, vip):
    """Client SYNs (no ACK) to the VIP, as (ts, tuple)."""
    return [(p[0], (p[1], p[2], p[3], p[4])) for p in pkts
            if p[5] is not None and p[3] == vip and (p[5] & 0x12) == 0x02]


def _analyze(capsys, *args):
    rc = main([str(a) for a in ("analyze", "-q") + args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


@pytest.fixture(scope="module")
def dr_capture(tmp_path_factory):
    """DR view (client packets only), clients close first with FIN: every entry ends in FIN_WAIT."""
    d = tmp_path_factory.mktemp("dr")
    spec = synth.preset("default", seed=11, duration=12.0, rate=25.0, clients=2, port_range=(41000, 41007),
                        view="dr", close_mix={"fin": 1.0}, syn_retx=0.0, long_lived=0.0, conn_duration=0.05,
                        events=[], servers=3)
    synth.synthesize(spec, d / "dr.pcap", rules_path=d / "dr.rules")
    return d / "dr.pcap", d / "dr.rules"


@pytest.fixture(scope="module")
def nat_capture(tmp_path_factory):
    """kube-proxy-like: one client, 8 source ports, NAT, both directions seen in front of the
    director; every connection closes with FINs from both sides (IPVS TIME_WAIT)."""
    d = tmp_path_factory.mktemp("nat")
    spec = synth.preset("kube", seed=12, duration=10.0, rate=30.0, port_range=(32768, 32775),
                        events=[synth.SynthEvent(5.0, "edit", 1, 0)])
    synth.synthesize(spec, d / "nat.pcap", rules_path=d / "nat.rules", events_path=d / "nat.events")
    return d / "nat.pcap", d / "nat.rules", d / "nat.events"


def _reused_syns(syns, within=120.0, last_seen=None):
    """SYNs whose tuple carried a packet less than ``within`` seconds before (its IPVS entry,
    in FIN_WAIT / TIME_WAIT with a 120 s timeout, still exists)."""
    n = 0
    for ts, tup in syns:
        prev = last_seen(tup, ts)
        if prev is not None and ts - prev < within:
            n += 1
    return n


def _last_seen_index(pkts):
    """tuple -> sorted packet times (either direction), for 'last packet before t' queries."""
    times = defaultdict(list)
    for p in pkts:
        if p[5] is None:
            continue
        a, b = (p[1], p[2], p[3], p[4]), (p[3], p[4], p[1], p[2])
        times[a].append(p[0])
        times[b].append(p[0])

    def last_before(tup, t):
        best = None
        for x in times[tup]:
            if x < t and (best is None or x > best):
                best = x
        return best
    return last_before


def test_dr_fin_wait_reuse_kept_under_mode1_rescheduled_under_mode2(dr_capture, tmp_path, capsys):
    cap, rules = dr_capture
    pkts = _read(cap)
    syns = _client_syns(pkts, "10.0.0.100")
    expected = _reused_syns(syns, last_seen=_last_seen_index(pkts))
    assert expected > 50                                  # the scenario really reuses ports
    got = {}
    for mode in (1, 2):
        out = tmp_path / f"r{mode}.json"
        _analyze(capsys, cap, "-C", rules, "--sysctl", f"conn_reuse_mode={mode}", "--json", out)
        got[mode] = json.loads(out.read_text())
    for mode, outcome in ((1, "kept"), (2, "rescheduled")):
        s = got[mode]
        assert s["packets"] == len(pkts)
        rows = [r for r in s["reuse"] if not r["retransmission"]]
        assert rows == [{"proto": "tcp", "old_state": "FIN_WAIT", "outcome": outcome, "count": expected,
                         "retransmission": False}]
        # every SYN either started a connection or reused an entry: new + resched = SYNs - kept
        t = s["totals"]
        assert t.get("new", 0) + t.get("resched", 0) == len(syns) - (expected if mode == 1 else 0)
        assert sum(r["packets"] for r in s["accounting"]) == len(pkts)


def test_dr_conn_log_rows_per_client_connection(dr_capture, tmp_path, capsys):
    from ipvsflow.conns import read_conns
    cap, rules = dr_capture
    pkts = _read(cap)
    syns = _client_syns(pkts, "10.0.0.100")
    for mode, decision in ((1, "kept"), (2, "rescheduled")):
        path = tmp_path / f"c{mode}.log"
        _analyze(capsys, cap, "-C", rules, "--sysctl", f"conn_reuse_mode={mode}", "--conns", path)
        rows = read_conns(str(path))
        assert len(rows) == len(syns)                      # one row per client connection
        assert len({r["uid"] for r in rows}) == len(rows)
        assert sum(r["orig_pkts"] for r in rows) == len(pkts)
        by_uid = {r["uid"]: r for r in rows}
        reused = [r for r in rows if r["reuse_of"]]
        assert {r["reuse_decision"] for r in reused} == {decision}
        for r in reused:
            old = by_uid[r["reuse_of"]]
            assert (old["id.orig_h"], old["id.orig_p"]) == (r["id.orig_h"], r["id.orig_p"])
            assert old["ts"] < r["ts"]
            assert old["ipvs_state"] == "FIN_WAIT"
        # DR: only the client side is seen; clients close with FIN
        assert all(r["history"].startswith("S") and "F" in r["history"] for r in rows)
        assert all(r["ipvs_state_path"] == "SYN_RECV>ESTABLISHED>FIN_WAIT" for r in rows)
        assert {r["conn_state"] for r in rows} == {"SH"}   # SYN then FIN, no SYN-ACK seen


def test_nat_time_wait_reuse_dropped_by_2016_conntrack_kernel(nat_capture, tmp_path, capsys):
    """--kernel 4.19 with conntrack=1: a SYN on a TIME_WAIT entry expires it and is dropped
    (f719e3754ee2): the next SYN of that port finds no entry and is scheduled. So per port the
    SYNs alternate: new, dropped, new, dropped..."""
    cap, rules, _ = nat_capture
    pkts = _read(cap)
    syns = _client_syns(pkts, "10.96.0.10")
    per_tuple = defaultdict(int)
    for _, tup in syns:
        per_tuple[tup] += 1
    expected_drops = sum(k // 2 for k in per_tuple.values())
    assert expected_drops > 50
    out = tmp_path / "r.json"
    _analyze(capsys, cap, "-C", rules, "--kernel", "4.19", "--sysctl", "conntrack=1", "--json", out)
    s = json.loads(out.read_text())
    assert [r for r in s["reuse"] if not r["retransmission"]] == [
        {"proto": "tcp", "old_state": "TIME_WAIT", "outcome": "dropped", "count": expected_drops,
         "retransmission": False}]
    assert s["totals"]["drop"] == expected_drops
    assert s["syn_drops"]["attempts"] == expected_drops
    # the client's next SYN on a port is its retry: the delay is the gap to the next SYN there
    gaps = []
    by_tuple = defaultdict(list)
    for ts, tup in syns:
        by_tuple[tup].append(ts)
    for times in by_tuple.values():
        gaps += [times[i + 1] - times[i] for i in range(1, len(times) - 1, 2)]
    assert s["syn_drops"]["answered"] == len(gaps)
    assert s["syn_drops"]["delay_s"]["max"] == pytest.approx(max(gaps), abs=1e-6)
    assert s["syn_drops"]["delay_s"]["min"] == pytest.approx(min(gaps), abs=1e-6)
    # the current kernel reschedules the same SYNs without a drop (unconfirmed conntrack)
    _analyze(capsys, cap, "-C", rules, "--kernel", "6.1", "--sysctl", "conntrack=1", "--json", out)
    s = json.loads(out.read_text())
    reused = len(syns) - len(per_tuple)
    assert [r for r in s["reuse"] if not r["retransmission"]] == [
        {"proto": "tcp", "old_state": "TIME_WAIT", "outcome": "rescheduled", "count": reused,
         "retransmission": False}]
    assert "drop" not in s["totals"]


def test_mode0_weight0_server_keeps_receiving_reused_ports(nat_capture, tmp_path, capsys):
    """conn_reuse_mode=0 (kube-proxy 2018): a reused port goes back to its old server even at
    weight 0; mode 1 reschedules those SYNs (TIME_WAIT) and the weight-0 server gets none."""
    from ipvsflow.decisions import read_decisions
    cap, rules, events = nat_capture
    pkts = _read(cap)
    syns = _client_syns(pkts, "10.96.0.10")
    t0 = pkts[0][0]
    rs1 = "10.244.2.1:8080"
    out, dec = tmp_path / "r.json", tmp_path / "d.jsonl"
    _analyze(capsys, cap, "-C", rules, "--events", events, "--sysctl", "conn_reuse_mode=0", "--json", out,
             "--decisions", dec)
    s = json.loads(out.read_text())
    d = read_decisions(str(dec))
    assert len(d) == len(pkts)
    syn_rows = [d[i] for i, p in enumerate(pkts) if p[5] is not None and p[3] == "10.96.0.10"
                and (p[5] & 0x12) == 0x02]
    # after the event, every SYN of a port whose previous connection was on rs1 stays on rs1
    prev_rs, expect = {}, 0
    for (ts, tup), row in zip(syns, syn_rows):
        if ts - t0 >= 5.0 and prev_rs.get(tup) == rs1:
            expect += 1
            assert row["action"] == "hit" and row["rs"] == rs1
        prev_rs[tup] = row["rs"]
    assert expect > 10
    w0 = {w["rs"]: w for w in s["weight0"]}
    assert w0[rs1]["starts_at_weight0"] == expect == w0[rs1]["reused_ports_at_weight0"]
    _analyze(capsys, cap, "-C", rules, "--events", events, "--sysctl", "conn_reuse_mode=1", "--json", out)
    s = json.loads(out.read_text())
    assert all(w["starts_at_weight0"] == 0 for w in s["weight0"])


def test_new_server_reaches_fair_share_only_when_fin_wait_is_rescheduled(tmp_path, capsys):
    """Demo scenario (DR, rr): a 4th server joins at +20 s, server 2 goes to weight 0 at +40 s.
    With conn_reuse_mode=2 reused ports are rescheduled and the newcomer gets its share (1/3 of
    new connections once server 2 is at weight 0); with mode 1 they stay put and it never does."""
    cap = tmp_path / "demo.pcap"
    synth.synthesize_preset("default", cap, rules=tmp_path / "demo.rules", events=tmp_path / "demo.events")
    res = {}
    for mode in (1, 2):
        out = tmp_path / f"r{mode}.json"
        _analyze(capsys, cap, "-C", tmp_path / "demo.rules", "--events", tmp_path / "demo.events",
                 "--sysctl", f"conn_reuse_mode={mode}", "--json", out)
        res[mode] = json.loads(out.read_text())
    c2 = res[2]["convergence"][0]
    assert c2["rs"] == "10.0.1.4:80" and c2["added_at"] == 20
    assert c2["reached_90pct_after_s"] is not None and c2["reached_90pct_after_s"] <= 10
    late = [w for w in res[2]["timeline"] if 45 <= w["t"] < 60]
    share = sum(w["servers"]["10.0.1.4:80"]["starts"] for w in late) / sum(w["starts"] for w in late)
    assert share == pytest.approx(1 / 3, abs=0.08)
    assert all(w["servers"]["10.0.1.4:80"]["fair_share"] == pytest.approx(1 / 3, abs=1e-3) for w in late)
    assert res[1]["convergence"][0]["reached_90pct_after_s"] is None
    # the summary's totals are the capture's packets, each counted once
    n = len(_read(cap))
    for s in res.values():
        assert s["packets"] == n == sum(s["totals"].values())


def _frame(src, sport, dst, dport, flags=None, payload=b""):
    ip_proto = 6 if flags is not None else 17
    if flags is not None:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 0x50, flags, 65535, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, ip_proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip + l4


def _write(path, frames):
    from ipvsflow.io import PcapWriter
    with PcapWriter(str(path)) as w:
        for ts, data in frames:
            w.write(data, ts)


T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def test_idle_connection_expires_after_900s(tmp_path, capsys):
    """ESTABLISHED times out after 900 s: a packet after 901 s of silence has no entry (a TCP
    ACK is not scheduled: passed), one after 899 s still hits it."""
    rules = tmp_path / "r.conf"
    rules.write_text("-A -t 10.0.0.100:80 -s rr\n-a -t 10.0.0.100:80 -r 10.0.1.1:80 -g\n")
    for gap, action, reason in ((899, "hit", None), (901, "pass", "not_syn")):
        cap = tmp_path / f"idle{gap}.pcap"
        _write(cap, [(T0, _frame("10.0.0.1", 40000, "10.0.0.100", 80, 0x02)),
                     (T0 + S // 100, _frame("10.0.0.1", 40000, "10.0.0.100", 80, 0x10)),
                     (T0 + S // 100 + gap * S, _frame("10.0.0.1", 40000, "10.0.0.100", 80, 0x18, b"x" * 10))])
        out = tmp_path / "r.json"
        _analyze(capsys, cap, "-C", rules, "--json", out, "--decisions", tmp_path / "d.csv")
        s = json.loads(out.read_text())
        from ipvsflow.decisions import read_decisions
        last = read_decisions(str(tmp_path / "d.csv"))[-1]
        assert (last["action"], last["reason"]) == (action, reason)
        assert s["packets"] == 3


def test_udp_fixed_port_sticks_unless_one_packet_scheduling(tmp_path, capsys):
    """UDP from one source port: the entry's timer is refreshed by every packet, so it is never
    rescheduled; with -o (one-packet scheduling) every datagram is scheduled on its own."""
    from ipvsflow.decisions import read_decisions
    cap = tmp_path / "udp.pcap"
    _write(cap, [(T0 + i * S, _frame("10.0.0.1", 5353, "10.0.0.53", 53, None, b"q" * 20)) for i in range(10)])
    for ops, expect_new in (("", 1), (" -o", 10)):
        rules = tmp_path / "r.conf"
        rules.write_text(f"-A -u 10.0.0.53:53 -s rr{ops}\n-a -u 10.0.0.53:53 -r 10.0.1.1:53 -g\n"
                         "-a -u 10.0.0.53:53 -r 10.0.1.2:53 -g\n")
        _analyze(capsys, cap, "-C", rules, "--decisions", tmp_path / "d.jsonl")
        d = read_decisions(str(tmp_path / "d.jsonl"))
        assert sum(r["action"] == "new" for r in d) == expect_new
        servers = [r["rs"] for r in d]
        if expect_new == 1:
            assert len(set(servers)) == 1
        else:
            assert all(a != b for a, b in zip(servers, servers[1:]))     # rr alternates
