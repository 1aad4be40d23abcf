"""The traffic synthesizer (ipvsflow.synth), checked against tshark and dpkt as independent
dissectors: checksums, TCP sequence analysis, SCTP chunk order and tags, views, port reuse,
rates and sizes, and the rules/events it writes (read back with ipvsflow.config)."""
import argparse
import collections
import ipaddress
import math
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest

from ipvsflow import config, synth
from ipvsflow import _synth as kern

dpkt = pytest.importorskip("dpkt", reason="dpkt is the independent pcap parser these tests use")

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark (Debian package tshark) is not installed")

VALIDATE = ["-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
            "-o", "sctp.checksum:CRC 32c", "-o", "ip.check_checksum:TRUE",
            # the payload is an opaque pattern: keep heuristics on random client ports from
            # claiming the UDP test service's datagrams
            "-d", "udp.port==9999,data"]
BAD = ("tcp.checksum.status==0 || udp.checksum.status==0 || sctp.checksum.status==0 || "
       "ip.checksum.status==0 || _ws.malformed || _ws.expert.severity >= error")


def tshark(path, fields, filt=None, extra=()):
    cmd = [TSHARK, "-n", "-r", str(path), *VALIDATE, *extra, "-T", "fields",
           "-E", "separator=\t", "-E", "aggregator=|", "-E", "occurrence=a"]
    for f in fields:
        cmd += ["-e", f]
    if filt:
        cmd += ["-Y", filt]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def tshark_lines(path, filt, extra=()):
    out = subprocess.run([TSHARK, "-n", "-r", str(path), *VALIDATE, *extra, "-Y", filt],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return out.splitlines()


def read_pcap(path):
    """(linktype, [(ts_ns, caplen, wirelen, bytes)]) with dpkt; checks the ns magic."""
    with open(path, "rb") as f:
        head = f.read(24)
        assert struct.unpack("<I", head[:4])[0] == 0xA1B23C4D, "not a nanosecond pcap"
        f.seek(0)
        r = dpkt.pcap.Reader(f)
        lt = r.datalink()
        recs = []
        f.seek(24)
        data = f.read()
    off = 0
    while off < len(data):
        sec, nsec, incl, orig = struct.unpack_from("<IIII", data, off)
        recs.append((sec * 10**9 + nsec, incl, orig, data[off + 16: off + 16 + incl]))
        off += 16 + incl
    assert off == len(data)
    return lt, recs


def ip_of(frame, linktype):
    if linktype == 1:
        eth = dpkt.ethernet.Ethernet(frame)
        return eth.data
    v = frame[0] >> 4
    return dpkt.ip.IP(frame) if v == 4 else dpkt.ip6.IP6(frame)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small captures of several presets; full snaplen where checksums are verified (the
    default and reuse-burst presets keep their 128-byte snaplen)."""
    d = tmp_path_factory.mktemp("synth")
    out = {}
    specs = {
        "mixed-both": synth.preset("mixed", duration=8.0),
        "mixed-dr": synth.preset("mixed", duration=8.0, view="dr"),
        "mixed-raw": synth.preset("mixed", duration=3.0, linktype="raw", seed=11),
        "sctp": synth.preset("sctp", duration=15.0, snaplen=262144),
        "udp": synth.preset("udp", duration=2.0),
        "kube": synth.preset("kube", duration=10.0, snaplen=262144),
        "default": synth.preset("default"),
        "reuse-burst": synth.preset("reuse-burst", duration=16.0),
    }
    for name, spec in specs.items():
        res = synth.synthesize(spec, d / f"{name}.pcap", conn_table=True,
                               rules_path=d / f"{name}.rules", events_path=d / f"{name}.events")
        out[name] = (spec, res)
    return out


# ---------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = synth.preset("mixed", duration=2.0)
    a = synth.synthesize(spec, tmp_path / "a.pcap")
    b = synth.synthesize(dict(preset="mixed", duration=2.0), tmp_path / "b.pcap")
    synth.synthesize(synth.preset("mixed", duration=2.0, seed=99), tmp_path / "c.pcap")
    assert a.packets > 100
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "b.pcap").read_bytes()
    assert (tmp_path / "a.pcap").read_bytes() != (tmp_path / "c.pcap").read_bytes()
    assert (a.packets, a.connections, a.reused_ports) == (b.packets, b.connections, b.reused_ports)


# ---------------------------------------------------------------------------------------------
# tshark: checksum status values, then every packet of every file


@needs_tshark
def test_tshark_checksum_status_meaning(files, tmp_path):
    """In tshark 4.0 *.checksum.status is 0 for Bad, 1 Good, 2 Unverified: corrupt one
    checksum of each kind and see the bad-packet filter catch exactly those packets."""
    spec, res = files["mixed-both"]
    lt, recs = read_pcap(res.path)
    raw = bytearray(res.path.read_bytes())
    want = {}                        # kind -> frame number (1-based) corrupted
    pos = 24
    for i, (_, incl, _, frame) in enumerate(recs):
        ip = ip_of(frame, lt)
        l3 = 16 + 14
        kind = None
        if isinstance(ip, dpkt.ip.IP):
            if "ip" not in want:
                kind, at = "ip", l3 + 10
            elif ip.p == 6 and "tcp" not in want:
                kind, at = "tcp", l3 + 20 + 16
            elif ip.p == 17 and "udp" not in want:
                kind, at = "udp", l3 + 20 + 6
            elif ip.p == 132 and "sctp" not in want:
                kind, at = "sctp", l3 + 20 + 8
        if kind:
            raw[pos + at] ^= 0x5A
            want[kind] = i + 1
        pos += 16 + incl
        if len(want) == 4:
            break
    assert set(want) == {"ip", "tcp", "udp", "sctp"}
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(raw))
    rows = tshark(bad, ["frame.number", "ip.checksum.status", "tcp.checksum.status",
                        "udp.checksum.status", "sctp.checksum.status"],
                  filt=f"frame.number in {{{', '.join(str(v) for v in want.values())}}}")
    status = {int(r[0]): r[1:] for r in rows}
    assert status[want["ip"]][0] == "0"
    assert status[want["tcp"]][1] == "0" and status[want["tcp"]][0] == "1"
    assert status[want["udp"]][2] == "0"
    assert status[want["sctp"]][3] == "0"
    flagged = {int(line.split()[0]) for line in tshark_lines(bad, BAD)}
    assert flagged == set(want.values())
    good = tshark(res.path, ["ip.checksum.status", "tcp.checksum.status", "udp.checksum.status",
                             "sctp.checksum.status"], filt="ip")
    seen = collections.Counter(v for r in good for v in r if v)
    assert set(seen) == {"1"}, seen          # every checksum verified good


@needs_tshark
@pytest.mark.parametrize("name", ["mixed-both", "mixed-dr", "mixed-raw", "sctp", "udp", "kube"])
def test_tshark_accepts_every_packet(files, name):
    spec, res = files[name]
    assert tshark_lines(res.path, BAD) == []
    n = len(tshark(res.path, ["frame.number"]))
    assert n == res.packets


@needs_tshark
@pytest.mark.parametrize("name", ["mixed-both", "mixed-dr", "kube", "default"])
def test_tcp_analysis_flags_only_deliberate(files, name):
    """tshark's sequence analysis finds nothing but the retransmitted SYNs and the reused ports."""
    spec, res = files[name]
    allowed = re.compile(
        r"^(Connection establish request \(SYN\): server port \d+"
        r"|Connection establish acknowledge \(SYN\+ACK\): server port \d+"
        r"|Connection finish \(FIN\)|This frame (initiates|undergoes) the connection closing"
        r"|Connection reset \(RST\)"
        r"|A new tcp session is started with the same ports as an earlier session in this trace"
        r"|This frame is a \(suspected\) retransmission)$")
    rows = tshark(res.path, ["frame.number", "tcp.flags.syn", "tcp.flags.ack",
                             "tcp.analysis.retransmission", "tcp.analysis.reused_ports",
                             "_ws.expert.message"], filt="tcp && _ws.expert")
    retx = reused = 0
    for fn, syn, ack, is_retx, is_reused, msgs in rows:
        for m in msgs.split("|"):
            assert allowed.match(m), f"frame {fn}: unexpected expert info {m!r}"
        if is_retx:
            assert (syn, ack) == ("1", "0"), f"frame {fn}: retransmission of a non-SYN"
            retx += 1
        if is_reused:
            assert (syn, ack) == ("1", "0"), f"frame {fn}: reused ports on a non-SYN"
            reused += 1
    t = res.conn_table
    tcp = t[t["proto"] == synth.P_TCP]
    assert retx == int(tcp["syn_retx"].sum())
    assert reused == int(tcp["reuse"].sum())
    if name in ("kube", "default"):
        assert reused > 0.3 * len(tcp)


# ---------------------------------------------------------------------------------------------
# views


def _pkt_tuples(path):
    lt, recs = read_pcap(path)
    out = []
    for ts, incl, orig, frame in recs:
        ip = ip_of(frame, lt)
        l4 = ip.data
        src = ipaddress.ip_address(ip.src)
        dst = ipaddress.ip_address(ip.dst)
        flags = getattr(l4, "flags", None)
        out.append((ts, ip.p if hasattr(ip, "p") else ip.nxt, str(src), l4.sport, str(dst),
                    l4.dport, flags, getattr(l4, "seq", None), getattr(l4, "ack", None),
                    orig))
    return out


def test_dr_view_is_the_client_half_of_both(files):
    """Same seed: the DR capture holds exactly the client -> VIP packets of the both-view
    capture (same times, tuples, flags, seq/ack), and nothing else."""
    _, both = files["mixed-both"]
    _, dr = files["mixed-dr"]
    vips = {(str(a), port) for _, a, port in (synth.parse_vip(v) for v in files["mixed-dr"][0].vips)}
    b = _pkt_tuples(both.path)
    d = _pkt_tuples(dr.path)
    assert all((p[4], p[5]) in vips for p in d)
    client_half = [p for p in b if (p[4], p[5]) in vips]
    assert len(client_half) < len(b)
    # IP ids and payload pattern bytes differ, the headers compared here do not
    assert [p[:9] for p in client_half] == [p[:9] for p in d]
    assert both.connections == dr.connections


def test_both_view_replies_come_from_the_vip(files):
    _, res = files["mixed-both"]
    vips = {(str(a), port) for _, a, port in (synth.parse_vip(v) for v in files["mixed-both"][0].vips)}
    for p in _pkt_tuples(res.path):
        assert ((p[4], p[5]) in vips) != ((p[2], p[3]) in vips)


# ---------------------------------------------------------------------------------------------
# headers against two dissectors and the ground truth


@needs_tshark
def test_fields_match_tshark_and_dpkt(tmp_path):
    spec = synth.preset("mixed", duration=1.5, seed=21)
    res = synth.synthesize(spec, tmp_path / "s.pcap", conn_table=True)
    ours = _pkt_tuples(res.path)
    rows = tshark(res.path, ["frame.time_epoch", "ip.proto", "ipv6.nxt", "ip.src", "ipv6.src",
                             "tcp.srcport", "udp.srcport", "sctp.srcport", "ip.dst", "ipv6.dst",
                             "tcp.dstport", "udp.dstport", "sctp.dstport", "tcp.flags",
                             "tcp.seq_raw", "tcp.ack_raw", "frame.len", "ip.len", "ipv6.plen",
                             "tcp.len", "udp.length"],
                  extra=["-o", "tcp.relative_sequence_numbers:FALSE"])
    assert len(rows) == len(ours) == res.packets
    lt, recs = read_pcap(res.path)
    for p, r, rec in zip(ours, rows, recs):
        (ep, ipp, ipv6n, s4, s6, ts_, us, ss, d4, d6, td, ud, sd, fl, seq, ack, flen, iplen,
         plen6, tcplen, udplen) = r
        assert int(ipp or ipv6n) == p[1]
        assert (s4 or s6) == p[2] and (d4 or d6) == p[4]
        assert int(ts_ or us or ss) == p[3] and int(td or ud or sd) == p[5]
        assert int(flen) == p[9] == rec[2]
        assert abs(float(ep) * 1e9 - p[0]) < 2000
        ipb = ip_of(rec[3], lt)
        if iplen:
            assert int(iplen) == ipb.len == p[9] - 14
        else:
            assert int(plen6) == ipb.plen == p[9] - 14 - 40
        if p[1] == 6:
            assert int(fl, 16) == p[6] and int(seq) == p[7] and int(ack) == p[8]
            assert int(tcplen) == len(ipb.data.data)
        if p[1] == 17:
            assert int(udplen) == ipb.data.ulen == 8 + len(ipb.data.data)
    # per-connection packet counts agree with the ground truth table
    want = collections.Counter()
    for row in res.conn_table:
        proto, addr, port = synth.parse_vip(spec.vips[row["vip"]])
        want[(synth.PROTO_NUM[proto], synth.client_address(spec, int(row["client"])),
              int(row["cport"]), str(addr), port)] += int(row["packets"])
    vips = {(str(a), port) for _, a, port in (synth.parse_vip(v) for v in spec.vips)}
    got = collections.Counter()
    for p in ours:
        c2s = (p[4], p[5]) in vips
        got[(p[1], p[2], p[3], p[4], p[5]) if c2s else (p[1], p[4], p[5], p[2], p[3])] += 1
    assert got == want


def test_timestamps_sorted_and_start_time(files):
    for name in ("mixed-both", "sctp", "kube"):
        spec, res = files[name]
        lt, recs = read_pcap(res.path)
        ts = np.array([r[0] for r in recs])
        assert (np.diff(ts) >= 0).all()
        assert ts[0] >= spec.start_time * 1e9
        assert abs((ts[-1] - ts[0]) / 1e9 - res.duration) < 1e-6
        assert lt == synth.LINKTYPES[spec.linktype]


def test_snaplen_truncates_records_not_lengths(tmp_path):
    spec = synth.preset("mixed", duration=1.0, snaplen=60, seed=5)
    full = synth.synthesize(dict(preset="mixed", duration=1.0, seed=5), tmp_path / "f.pcap")
    res = synth.synthesize(spec, tmp_path / "t.pcap")
    lt, a = read_pcap(full.path)
    _, b = read_pcap(res.path)
    assert len(a) == len(b) == res.packets == full.packets
    for (ta, ia, oa, fa), (tb, ib, ob, fb) in zip(a, b):
        assert ta == tb and oa == ob and ia == oa
        assert ib == min(oa, 60) and fb == fa[:ib]
    assert struct.unpack_from("<I", res.path.read_bytes(), 16)[0] == 60


# ---------------------------------------------------------------------------------------------
# TCP: reuse and sequence numbers


@needs_tshark
@pytest.mark.parametrize("name", ["kube", "default", "reuse-burst"])
def test_reused_ports_get_a_later_isn(files, name):
    """Count SYNs on a 4-tuple seen before (a retransmitted SYN repeats its ISN and is not a new
    connection); each new ISN lies beyond the previous connection's client sequence space."""
    spec, res = files[name]
    rows = tshark(res.path, ["ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.flags.syn",
                             "tcp.flags.ack", "tcp.flags.fin", "tcp.seq_raw", "tcp.len"],
                  filt="tcp", extra=["-o", "tcp.relative_sequence_numbers:FALSE"])
    last_isn = {}
    end = {}                   # client's next sequence number per 4-tuple
    new_syn = reuse = 0
    for src, sp, dst, dp, syn, ack, fin, seq, ln in rows:
        seq, ln = int(seq), int(ln)
        if syn == "1" and ack == "0":
            key = (src, sp, dst, dp)
            if last_isn.get(key) == seq:
                continue               # retransmitted SYN
            if key in last_isn:
                reuse += 1
                assert (seq - end[key]) % (1 << 32) < (1 << 31), f"ISN {seq} not after {end[key]}"
                assert seq != end[key]
            last_isn[key] = seq
            end[key] = seq + 1
            new_syn += 1
        else:
            key = (src, sp, dst, dp)
            if key in end:            # a client packet
                e = (seq + ln + (fin == "1")) % (1 << 32)
                if (e - end[key]) % (1 << 32) < (1 << 31):
                    end[key] = e
    assert new_syn == res.connections
    assert reuse == res.reused_ports
    assert reuse > 0.3 * new_syn


def test_ports_never_shared_by_overlapping_connections(files):
    for name in ("kube", "sctp", "udp", "mixed-both"):
        spec, res = files[name]
        t = res.conn_table
        lo, hi = synth.parse_port_range(spec.port_range)
        assert ((t["cport"] >= lo) & (t["cport"] <= hi)).all()
        o = np.lexsort((t["t_first"], t["cport"], t["proto"], t["client"]))
        s = t[o]
        same = ((s["client"][1:] == s["client"][:-1]) & (s["proto"][1:] == s["proto"][:-1])
                & (s["cport"][1:] == s["cport"][:-1]))
        assert (s["t_first"][1:][same] >= s["t_last"][:-1][same]).all()


def test_port_exhaustion_is_counted(tmp_path):
    spec = synth.SynthSpec(seed=3, duration=5.0, rate=50.0, clients=1, port_range=(40000, 40003),
                           long_lived=0.5, long_lived_interval=1.0)
    res = synth.synthesize(spec, tmp_path / "x.pcap", conn_table=True)
    assert res.exhausted > 0
    assert res.connections + res.exhausted > 200
    assert "ports exhausted" in res.summary()
    assert set(res.conn_table["cport"]) <= {40000, 40001, 40002, 40003}


# ---------------------------------------------------------------------------------------------
# SCTP and UDP


SCTP_NAMES = {0: "DATA", 1: "INIT", 2: "INIT_ACK", 3: "SACK", 6: "ABORT", 7: "SHUTDOWN",
              8: "SHUTDOWN_ACK", 10: "COOKIE_ECHO", 11: "COOKIE_ACK", 14: "SHUTDOWN_COMPLETE"}
# c = client -> VIP, s = VIP -> client
ASSOC_RE = re.compile(
    r"^(c:INIT )+s:INIT_ACK c:COOKIE_ECHO s:COOKIE_ACK "
    r"(c:DATA s:SACK (s:DATA c:SACK )?)*"
    r"(c:SHUTDOWN s:SHUTDOWN_ACK c:SHUTDOWN_COMPLETE |s:SHUTDOWN c:SHUTDOWN_ACK s:SHUTDOWN_COMPLETE "
    r"|c:ABORT |s:ABORT )?$")
ASSOC_DR_RE = re.compile(r"^(c:INIT )+c:COOKIE_ECHO (c:DATA (c:SACK )?)*"
                         r"(c:SHUTDOWN c:SHUTDOWN_COMPLETE |c:SHUTDOWN_ACK |c:ABORT )?$")


def _sctp_assocs(path, vip_eps):
    rows = tshark(path, ["ip.src", "ipv6.src", "sctp.srcport", "ip.dst", "ipv6.dst", "sctp.dstport",
                         "sctp.verification_tag", "sctp.chunk_type", "sctp.init_initiate_tag",
                         "sctp.initack_initiate_tag", "sctp.init_initial_tsn",
                         "sctp.initack_initial_tsn", "sctp.data_tsn_raw", "sctp.sack_cumulative_tsn_ack_raw",
                         "sctp.shutdown_cumulative_tsn_ack", "sctp.data_sid", "sctp.data_ssn"],
                  filt="sctp")
    assocs = collections.defaultdict(list)    # (client, cport) -> list of associations
    for r in rows:
        src, sp, dst, dp = r[0] or r[1], r[2], r[3] or r[4], r[5]
        c2s = (dst, int(dp)) in vip_eps
        key = (src, sp, dst, dp) if c2s else (dst, dp, src, sp)
        ch = int(r[7])
        f = dict(dir="c" if c2s else "s", chunk=SCTP_NAMES[ch], vtag=int(r[6], 16),
                 itag=r[8], iatag=r[9], itsn=r[10], iatsn=r[11], tsn=r[12], cum=r[13] or r[14],
                 sid=r[15], ssn=r[16])
        lst = assocs[key]
        if ch == 1 and c2s and (not lst or lst[-1][-1]["chunk"] != "INIT"
                                or lst[-1][-1]["itag"] != f["itag"]):
            lst.append([])
        assert lst, "SCTP packet before any INIT"
        lst[-1].append(f)
    return assocs


@needs_tshark
def test_sctp_chunk_sequence_tags_and_tsns(files):
    spec, res = files["sctp"]
    eps = {(str(a), port) for _, a, port in (synth.parse_vip(v) for v in spec.vips)}
    by_tuple = _sctp_assocs(res.path, eps)
    assocs = [a for lst in by_tuple.values() for a in lst]
    assert len(assocs) == res.connections
    # INIT on ports seen before: the narrow port range makes associations reuse them
    assert sum(len(lst) - 1 for lst in by_tuple.values()) == res.reused_ports > 0.3 * len(assocs)
    styles = collections.Counter()
    for a in assocs:
        seq = " ".join(f"{p['dir']}:{p['chunk']}" for p in a) + " "
        assert ASSOC_RE.match(seq), seq
        tag_c = int(a[0]["itag"], 16)
        ia = next(p for p in a if p["chunk"] == "INIT_ACK")
        tag_s = int(ia["iatag"], 16)
        tsn = {"c": int(a[0]["itsn"]), "s": int(ia["iatsn"])}
        nxt = dict(tsn)
        ssn = {"c": 0, "s": 0}
        for p in a:
            if p["chunk"] == "INIT":
                assert p["vtag"] == 0
            else:
                assert p["vtag"] == (tag_s if p["dir"] == "c" else tag_c)
            peer = "s" if p["dir"] == "c" else "c"
            if p["chunk"] == "DATA":
                assert int(p["tsn"]) == nxt[p["dir"]] % (1 << 32)
                assert int(p["sid"], 0) == 0 and int(p["ssn"], 0) == ssn[p["dir"]]
                nxt[p["dir"]] += 1
                ssn[p["dir"]] += 1
            if p["chunk"] in ("SACK", "SHUTDOWN"):
                assert int(p["cum"]) == (nxt[peer] - 1) % (1 << 32)
        styles[a[-1]["dir"] + ":" + a[-1]["chunk"]] += 1
    for s in ("c:SHUTDOWN_COMPLETE", "s:SHUTDOWN_COMPLETE", "c:ABORT", "s:ABORT"):
        assert styles[s] > 0, styles
    t = res.conn_table
    assert (t["syn_retx"] > 0).any() and (t["reuse"]).any() and (t["family"] == 6).any()


@needs_tshark
def test_sctp_dr_view_chunk_sequence(tmp_path):
    spec = synth.preset("sctp", duration=10.0, view="dr", snaplen=262144)
    res = synth.synthesize(spec, tmp_path / "d.pcap")
    eps = {(str(a), port) for _, a, port in (synth.parse_vip(v) for v in spec.vips)}
    assocs = [a for lst in _sctp_assocs(res.path, eps).values() for a in lst]
    assert len(assocs) == res.connections > 20
    for a in assocs:
        seq = " ".join(f"{p['dir']}:{p['chunk']}" for p in a) + " "
        assert ASSOC_DR_RE.match(seq), seq


@needs_tshark
def test_udp_flows_request_then_response(files):
    spec, res = files["udp"]
    rows = tshark(res.path, ["ip.src", "ipv6.src", "udp.srcport", "udp.dstport", "udp.length",
                             "frame.time_epoch"], filt="udp")
    flows = collections.defaultdict(list)
    for src, src6, sp, dp, ln, t in rows:
        c2s = dp == "9999"
        flows[(sp if c2s else dp)].append(("c" if c2s else "s", int(ln) - 8, float(t)))
    assert len(rows) == res.packets
    for f in flows.values():
        assert f[0][0] == "c"
    sizes = [ln for f in flows.values() for d, ln, _ in f if d == "c"]
    assert abs(np.mean(sizes) / spec.request_bytes - 1) < 0.25
    assert res.protocols["udp"] == res.connections


# ---------------------------------------------------------------------------------------------
# statistics


def test_rates_durations_and_sizes_roughly_as_specified(tmp_path):
    spec = synth.SynthSpec(seed=8, duration=40.0, rate=50.0, clients=200, conn_duration=0.8,
                           duration_dist="fixed", rounds=3.0, request_bytes=400.0,
                           response_bytes=2000.0, syn_retx=0.0, client_rtt=0.01,
                           close_mix={"fin": 0.5, "server-fin": 0.3, "rst": 0.2}, view="both")
    res = synth.synthesize(spec, tmp_path / "r.pcap", conn_table=True)
    t = res.conn_table
    n = len(t)
    # Poisson count: within 4 standard deviations of rate * duration
    assert abs(n - 2000) < 4 * math.sqrt(2000)
    gaps = np.diff(np.sort(t["t_first"])) / 1e9
    assert abs(gaps.mean() - 1 / 50) < 0.1 / 50
    assert abs(gaps.std() / gaps.mean() - 1) < 0.1          # exponential: CV = 1
    # fixed durations: first to last packet is the target wherever the exchanges fit in it
    dur = (t["t_last"] - t["t_first"]) / 1e9
    assert np.median(np.abs(dur - 0.8)) < 0.001
    # payload and close styles, read back from the capture
    lt, recs = read_pcap(res.path)
    req_bytes, closes = 0, collections.Counter()
    last = {}
    for ts, incl, orig, frame in recs:
        ip = ip_of(frame, lt)
        tcp = ip.data
        c2s = tcp.dport == 80
        key = (ip.src, tcp.sport) if c2s else (ip.dst, tcp.dport)
        if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK:
            last[key] = None
        if c2s:
            req_bytes += len(tcp.data)
        if tcp.flags & (dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST) and last.get(key) is None:
            last[key] = ("c" if c2s else "s") + ("R" if tcp.flags & dpkt.tcp.TH_RST else "F")
            closes[last[key]] += 1
    assert sum(closes.values()) == n
    assert abs(closes["cF"] / n - 0.5) < 0.05
    assert abs(closes["sF"] / n - 0.3) < 0.05
    assert abs(closes["cR"] / n - 0.2) < 0.05
    assert closes["sR"] == 0
    # lognormal requests: client bytes over all exchanges
    assert abs(t["rounds"].mean() / 3 - 1) < 0.1
    assert abs(req_bytes / t["rounds"].sum() / 400 - 1) < 0.15


def test_ipv6_share_and_protocol_mix(files):
    spec, res = files["mixed-both"]
    t = res.conn_table
    n = len(t)
    v6 = (t["family"] == 6).mean()
    clients6 = round(spec.clients * spec.ipv6_share) / spec.clients
    assert abs(v6 - clients6) < 0.15
    assert abs(res.protocols["udp"] / n - 0.2) < 0.1
    assert abs(res.protocols["sctp"] / n - 0.2) < 0.1
    for k in (4, 6):
        fam = t[t["family"] == k]
        vips = [synth.parse_vip(spec.vips[i])[1].version for i in fam["vip"]]
        assert set(vips) == {k}


def test_packets_and_concurrent_conns_exact(tmp_path):
    spec = synth.preset("bench", packets=30_000, conns=3_000, clients=500)
    res = synth.synthesize(spec, tmp_path / "b.pcap", conn_table=True)
    lt, recs = read_pcap(res.path)
    assert len(recs) == res.packets == 30_000
    assert res.connections == 3_000
    t = res.conn_table
    # all 3000 connections are open at once: every one started before any ended
    assert t["t_first"].max() < t["t_last"].min()
    assert set(t["close"]) == {synth.C_NONE}
    for ts, incl, orig, frame in recs[:2000]:
        assert ip_of(frame, lt).data.dport == 80          # DR view: client -> VIP only


def test_bench_scales_rounds_not_connections(tmp_path):
    a = synth.synthesize(synth.preset("bench", packets=20_000, conns=1_000), tmp_path / "a.pcap")
    b = synth.synthesize(synth.preset("bench", packets=40_000, conns=1_000), tmp_path / "b.pcap")
    assert (a.packets, b.packets) == (20_000, 40_000)
    assert a.connections == b.connections == 1_000


# ---------------------------------------------------------------------------------------------
# rules and events, read back by the project's own parser


def test_rules_and_events_parse(files):
    spec, res = files["default"]
    cfg = config.parse_rules(res.rules_path.read_text())
    assert len(cfg.services) == 1
    svc = cfg.services[0]
    assert (svc.proto, svc.addr, svc.port, svc.scheduler) == (6, "10.0.0.100", 80, "rr")
    assert [(d.addr, d.port, d.fwd, d.weight) for d in svc.dests] == \
        [(f"10.0.1.{k}", 80, config.FWD_DROUTE, 1) for k in (1, 2, 3)]
    evs = [config.parse_event(line) for line in res.events_path.read_text().splitlines()]
    assert [(e.t, c.op, c.dest.addr, c.dest.weight) for e, c in evs] == \
        [(20.0, "add-dest", "10.0.1.4", 1), (40.0, "edit-dest", "10.0.1.2", 0)]
    # the default demo reuses ports around the join and the weight change
    reuse_t = res.conn_table["t_first"][res.conn_table["reuse"]] / 1e9
    assert ((reuse_t > 15) & (reuse_t < 20)).any() and ((reuse_t > 20) & (reuse_t < 40)).any()
    assert res.bytes < 2_200_000


def test_rules_for_every_protocol_and_family(files):
    spec, res = files["mixed-both"]
    cfg = config.parse_rules(res.rules_path.read_text())
    got = sorted((s.proto, s.addr, s.port, len(s.dests), s.scheduler) for s in cfg.services)
    want = sorted((synth.PROTO_NUM[p], str(a), port, 3, "wlc")
                  for p, a, port in (synth.parse_vip(v) for v in spec.vips))
    assert got == want
    for s in cfg.services:
        fam = ipaddress.ip_address(s.addr).version
        assert all(ipaddress.ip_address(d.addr).version == fam and d.fwd == config.FWD_MASQ
                   for d in s.dests)
    kspec, kres = files["kube"]
    lines = kres.events_path.read_text().splitlines()
    assert lines[-1] == f"+{round(5 * kspec.duration / 6, 3):g}s -d -t 10.96.0.10:80 -r 10.244.2.1:8080"
    evs = [config.parse_event(line) for line in lines]
    d = kspec.duration                   # the rollout scales with the capture: d/3 and 5d/6
    assert [(e.t, c.op, c.dest.addr) for e, c in evs] == [
        (round(d / 3, 3), "add-dest", "10.244.2.4"), (round(d / 3, 3), "edit-dest", "10.244.2.1"),
        (round(5 * d / 6, 3), "del-dest", "10.244.2.1")]
    assert [(c.dest.port, c.dest.fwd, c.dest.weight) for e, c in evs[:2]] == [
        (8080, config.FWD_MASQ, 1), (8080, config.FWD_MASQ, 0)]


# ---------------------------------------------------------------------------------------------
# errors and the command line


@pytest.mark.parametrize("over, msg", [
    (dict(port_range="5-3"), "port range"),
    (dict(port_range="abc"), "port range"),
    (dict(vips=["10.0.0.1:80/icmp"]), "protocol"),
    (dict(vips=["10.0.0.1"]), "bad VIP"),
    (dict(vips=["2001:db8::1:80"]), "bad VIP"),
    (dict(vips=[]), "at least one VIP"),
    (dict(ipv6_share=0.5), "IPv6 clients need an IPv6 VIP"),
    (dict(udp_share=0.3), "udp share needs"),
    (dict(view="front"), "view"),
    (dict(linktype="sll"), "linktype"),
    (dict(duration=0), "duration"),
    (dict(rate=0), "rate"),
    (dict(rate=float("nan")), "rate"),
    (dict(clients=0), "clients"),
    (dict(snaplen=0), "snaplen"),
    (dict(close_mix={"fin": 0}), "close_mix"),
    (dict(close_mix={"linger": 1}), "close style"),
    (dict(syn_retx=1.0), "syn_retx"),
    (dict(conns=0), "conns"),
    (dict(packets=5, conns=10), "too few"),
    (dict(events=[(5, "bogus", 1)]), "op must be"),
    (dict(bursts=[(50, 20, 10)]), "burst"),
    (dict(client_base="300.1.1.1"), "base address"),
    (dict(vips="10.0.0.1:80"), "vips must be a list"),
    (dict(events=None), "events must be a list"),
    (dict(close_mix={"fin": "x"}), "weights must be numbers"),
    (dict(duration="abc"), "duration must be a number"),
    (dict(rate=1e8, duration=1e6), "more than 10,000,000"),
    (dict(conns=1000, rounds=1e5, response_bytes=1e7), "more than 50,000,000"),
])
def test_bad_specs_raise_value_error(tmp_path, over, msg):
    with pytest.raises(ValueError, match=re.escape(msg)) as ei:
        synth.synthesize(synth.preset("default", **over), tmp_path / "x.pcap")
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "x.pcap").exists()


def test_unknown_setting_and_preset(tmp_path):
    with pytest.raises(ValueError, match="unknown synth setting"):
        synth.synthesize({"rate": 5, "colour": "red"}, tmp_path / "x.pcap")
    with pytest.raises(ValueError, match="unknown preset"):
        synth.preset("nope")
    with pytest.raises(ValueError, match="directory"):
        synth.synthesize(synth.preset("udp", duration=1.0), tmp_path)


def test_cli_run_writes_files_and_one_summary_line(tmp_path, capsys):
    p = argparse.ArgumentParser()
    synth.add_arguments(p)
    out = tmp_path / "k.pcap"
    args = p.parse_args([str(out), "--preset", "kube", "--duration", "3", "--port-range",
                         "32768-32771", "--rules", str(tmp_path / "k.rules"), "--events",
                         str(tmp_path / "k.events"), "--close-mix", "rst=1"])
    assert synth.run(args) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "packets" in line and "connections" in line and "Mpps" in line
    assert out.exists() and (tmp_path / "k.rules").read_text().startswith("-A -t 10.96.0.10:80 -s rr")
    res = synth.synthesize(synth.spec_from_args(args), tmp_path / "k2.pcap", conn_table=True)
    assert out.read_bytes() == res.path.read_bytes()
    assert set(res.conn_table["cport"]) <= set(range(32768, 32772))
    assert set(res.conn_table["close"]) == {synth.C_RST}
    bad = p.parse_args([str(out), "--close-mix", "fin"])
    with pytest.raises(ValueError, match="close-mix"):
        synth.run(bad)


def test_crc32c_reference_vectors():
    # RFC 3720 B.4 and the usual check value
    assert kern.crc32c(b"123456789") == 0xE3069283
    assert kern.crc32c(bytes(32)) == 0x8A9136AA
    assert kern.crc32c(bytes([0xFF]) * 32) == 0x62A8AB43
    assert kern.crc32c(bytes(range(32))) == 0x46DD794E


def test_reuse_burst_concentrates_reuse_at_the_join(files):
    spec, res = files["reuse-burst"]
    (start, length, extra), = spec.bursts
    assert [(e.t, e.op, e.server) for e in spec.events] == [(start, "add", 4)]
    t = res.conn_table
    ts = t["t_first"] / 1e9
    burst = (ts >= start) & (ts < start + length)
    before = (ts >= start - length) & (ts < start)
    assert burst.sum() > 8 * before.sum()
    assert t["reuse"][burst].mean() > 0.9            # 5 clients x 16 ports: every port reused
    # every port of every client is in use during the burst, reused many times over
    ports = collections.Counter(zip(t["client"][burst], t["cport"][burst]))
    assert len(ports) == spec.clients * 16 and min(ports.values()) >= 5


def test_long_lived_connections_stay_open_to_the_end(tmp_path):
    spec = synth.SynthSpec(seed=4, duration=20.0, rate=20.0, clients=50, long_lived=0.3,
                           long_lived_interval=2.0, conn_duration=0.2, syn_retx=0.0)
    res = synth.synthesize(spec, tmp_path / "l.pcap", conn_table=True)
    t = res.conn_table
    ll = t["close"] == synth.C_NONE
    assert abs(ll.mean() - 0.3) < 0.06
    span = (20e9 - t["t_first"][ll]) / 1e9
    # an exchange every ~2 s over what is left of the capture
    assert abs(np.median(t["rounds"][ll] / np.maximum(span / 2.0, 1)) - 1) < 0.2
    assert (t["t_last"][ll] <= 20e9 + 1e9).all()
    early = t["t_first"][ll] < 5e9
    assert np.median(t["t_last"][ll][early]) > 12e9
    assert (t["t_last"][~ll] - t["t_first"][~ll]).max() < 10e9


def test_packets_target_with_exhausted_ports_is_an_error(tmp_path):
    spec = synth.preset("bench", packets=50_000, conns=5_000, clients=1, port_range=(40000, 40099))
    with pytest.raises(ValueError, match="free source port"):
        synth.synthesize(spec, tmp_path / "x.pcap")
