"""The command line: bad inputs give one line and exit 1, usage errors exit 2, outputs agree."""
import json
import os
import subprocess
import sys

import pytest

from ipvsflow.cli import main

RULES = """\
-A -t 10.0.0.100:80 -s rr
-a -t 10.0.0.100:80 -r 10.0.1.1:80 -g -w 1
-a -t 10.0.0.100:80 -r 10.0.1.2:80 -g -w 1
"""


def _frame(src, sport, dst, dport, flags):
    import struct
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes(map(int, src.split("."))),
                     bytes(map(int, dst.split("."))))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 0x50, flags, 65535, 0, 0)
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + ip + tcp


@pytest.fixture
def capture(tmp_path):
    """A tiny DR capture: three connections, one of them reusing a port after FIN."""
    from ipvsflow.io import PcapWriter
    path = tmp_path / "small.pcap"
    pkts = []
    t = 1_700_000_000_000_000_000
    for i, port in enumerate((40000, 40001, 40000)):
        base = t + i * 2_000_000_000
        pkts += [(base, _frame("10.0.0.1", port, "10.0.0.100", 80, 0x02)),
                 (base + 1_000_000, _frame("10.0.0.1", port, "10.0.0.100", 80, 0x10)),
                 (base + 2_000_000, _frame("10.0.0.1", port, "10.0.0.100", 80, 0x11)),
                 (base + 3_000_000, _frame("10.0.0.1", port, "10.0.0.100", 80, 0x10))]
    with PcapWriter(str(path)) as w:
        for ts, data in pkts:
            w.write(data, ts)
    return path


@pytest.fixture
def rules(tmp_path):
    p = tmp_path / "rules.conf"
    p.write_text(RULES)
    return p


def run(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_analyze_writes_decisions_in_three_formats_that_agree(capture, rules, tmp_path, capsys):
    from ipvsflow.decisions import read_decisions
    got = {}
    for ext in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"d.{ext}"
        rc, stdout, err = run(["analyze", capture, "-C", rules, "-q", "--decisions", out,
                               "--sysctl", "conn_reuse_mode=2", "--json", tmp_path / "r.json"], capsys)
        assert rc == 0, err
        got[ext] = read_decisions(str(out))
    assert len(got["jsonl"]) == 12
    for ext in ("csv", "parquet"):
        assert len(got[ext]) == len(got["jsonl"])
        for a, b in zip(got["jsonl"], got[ext]):
            for k in ("pkt", "dir", "proto", "client", "vip", "rs", "action", "reason", "state", "conn"):
                assert a[k] == b[k], (ext, k, a, b)
            assert abs(float(a["ts"]) - float(b["ts"])) < 1e-6
    d = got["jsonl"]
    assert [r["pkt"] for r in d] == list(range(12))
    # rr picks the most recently added server first; under conn_reuse_mode=2 the SYN that reuses
    # port 40000 (old entry FIN_WAIT in DR) is rescheduled to the next server.
    assert d[0]["action"] == "new" and d[0]["rs"] == "10.0.1.2:80"
    assert d[4]["action"] == "new" and d[4]["rs"] == "10.0.1.1:80"
    assert d[8]["action"] == "resched" and d[8]["rs"] == "10.0.1.2:80"
    assert d[2]["state"] == "FIN_WAIT" and d[0]["state"] == "SYN_RECV"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["packets"] == 12
    assert sum(r["packets"] for r in report["accounting"]) == 12
    assert report["totals"] == {"new": 2, "hit": 9, "resched": 1}


def test_analyze_bad_inputs_exit_1_with_one_line(capture, rules, tmp_path, capsys):
    cases = [
        (["analyze", tmp_path / "missing.pcap", "-C", rules], "missing.pcap"),
        (["analyze", tmp_path, "-C", rules], "directory"),
        (["analyze", rules, "-C", rules], "not a pcap or pcapng file"),
        (["analyze", capture, "-C", tmp_path / "nope.conf"], "no such rules file"),
        (["analyze", capture, "-R", "-A -t 10.0.0.100:80 -s fastest"], "unknown scheduler"),
        (["analyze", capture, "-C", rules, "--sysctl", "bogus=1"], "unknown sysctl"),
        (["analyze", capture, "-C", rules, "--event", "+3600s -d -t 10.0.0.100:80 -r 10.0.1.1:80"],
         "after the last packet"),
        (["analyze", capture, "-C", rules, "--kernel", "2.6"], "unknown kernel"),
        (["analyze", capture, "-C", rules, "--decisions", tmp_path / "d.txt"], "unknown decisions format"),
    ]
    cases += [
        (["analyze", capture, "-C", rules, "--plot", tmp_path / "p.png", "--plot-size", "big"], "--plot-size"),
        (["analyze", capture, "-C", rules, "--conns", tmp_path / "c.xyz"], "unknown connections format"),
        (["analyze", capture, "-C", rules, "--json", tmp_path / "no" / "r.json"], "does not exist"),
        (["analyze", capture, "-C", rules, "--event", "+1s -e -t 10.0.0.100:80 -r 10.0.1.9:80 -w 0"],
         "10.0.1.9"),
        (["analyze", capture, "-C", rules, "--out-pcap", tmp_path / "o.pcap", "--neighbour", "10.0.1.1"],
         "--neighbour"),
        (["compare", capture, "-C", rules, "--reuse-mode", "0,x"], "--reuse-mode"),
        (["compare", capture, "-C", rules, "--reuse-mode", "7"], "conn_reuse_mode is 0..3"),
        (["compare", capture, "-C", rules, "--sched", "rr,fastest"], "unknown scheduler"),
        (["compare", capture, "-C", rules, "--kernel", "6.1,2.6"], "unknown kernel"),
        (["conns", capture], "no rules"),
        (["analyze", capture, "--demo"], "not both"),
        (["analyze"], "no capture"),
    ]
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    cases.append((["analyze", empty, "-C", rules], "empty"))
    bad_rules = tmp_path / "bad.conf"
    bad_rules.write_text(RULES + "-a -t 10.0.0.100:80 -r 10.0.1.3:80 -w many\n")
    cases.append((["analyze", capture, "-C", bad_rules], "bad.conf:4"))
    for args, words in cases:
        rc, out, err = run(args + (["-q"] if args[0] != "conns" else []), capsys)
        assert rc == 1, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ipvsflow: error: "), err
        assert words in lines[0], (words, lines[0])
        assert "Traceback" not in err


def test_usage_errors_exit_2():
    proc = subprocess.run([sys.executable, "-m", "ipvsflow", "analyze", "--no-such-flag"],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ipvsflow"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 2


def test_conns_lists_the_table_like_ipvsadm(capture, rules, capsys):
    rc, out, err = run(["conns", capture, "-C", rules], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "IPVS connection entries"
    assert lines[1].split() == ["pro", "expire", "state", "source", "virtual", "destination"]
    rows = [ln.split() for ln in lines[2:]]
    assert sorted((r[2], r[3]) for r in rows) == [("FIN_WAIT", "10.0.0.1:40000"), ("FIN_WAIT", "10.0.0.1:40001")]
    rc, out, err = run(["conns", capture, "-C", rules, "--at", "+1s"], capsys)
    assert rc == 0, err
    rows = [ln.split() for ln in out.splitlines()[2:]]
    assert [(r[2], r[3]) for r in rows] == [("FIN_WAIT", "10.0.0.1:40000")]


def test_analyze_without_rules_infers_the_service(capture, capsys, tmp_path):
    rc, out, err = run(["analyze", capture, "-q", "--json", tmp_path / "r.json"], capsys)
    assert rc == 0, err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert len(rep["inferred_services"]) == 1
    assert rep["inferred_services"][0].startswith("TCP 10.0.0.100:80: 3 of 3 connection starts")
    assert "inferred" in out
    # one real server at the VIP: every SYN lands there; the third reuses port 40000 (FIN_WAIT, kept)
    assert rep["totals"] == {"new": 2, "hit": 10}
    assert rep["reuse"][0]["old_state"] == "FIN_WAIT" and rep["reuse"][0]["outcome"] == "kept"


def _png_size(path):
    import struct as st
    data = open(path, "rb").read(32)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return st.unpack("!II", data[16:24])


def test_plots_are_pngs_of_the_requested_size(capture, rules, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (the [plot] extra)")
    p = tmp_path / "load.png"
    rc, out, err = run(["analyze", capture, "-C", rules, "-q", "--plot", p, "--plot-size", "900x500",
                        "--event", "+2s -e -t 10.0.0.100:80 -r 10.0.1.1:80 -w 0"], capsys)
    assert rc == 0, err
    assert _png_size(p) == (900, 500)
    p = tmp_path / "cmp.png"
    rc, out, err = run(["compare", capture, "-C", rules, "-q", "--reuse-mode", "1,2", "--plot", p], capsys)
    assert rc == 0, err
    assert _png_size(p) == (1200, 700)


def test_compare_runs_every_policy_on_one_parse(capture, rules, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc, stdout, err = run(["compare", capture, "-C", rules, "-q", "--reuse-mode", "0,1,2", "--sched", "rr,wlc",
                           "--json", out], capsys)
    assert rc == 0, err
    res = json.loads(out.read_text())
    labels = [p["label"] for p in res["policies"]]
    assert labels == [f"mode {m}, {s}" for m in (0, 1, 2) for s in ("rr", "wlc")]
    for p in res["policies"]:
        assert p["packets"] == 12
        mode = int(p["label"].split()[1][0])
        # DR: the port-40000 SYN hits a FIN_WAIT entry; only mode 2 reschedules it
        want = {"kept": 1, "rescheduled": 0, "dropped": 0} if mode < 2 else {"kept": 0, "rescheduled": 1,
                                                                               "dropped": 0}
        assert p["reuse_totals"] == want
    for label in labels:
        assert label in stdout


def test_conns_file_formats_agree(capture, rules, tmp_path, capsys):
    from ipvsflow.conns import read_conns
    got = {}
    for ext in ("log", "jsonl", "csv", "parquet"):
        path = tmp_path / f"c.{ext}"
        rc, out, err = run(["analyze", capture, "-C", rules, "-q", "--conns", path], capsys)
        assert rc == 0, err
        got[ext] = read_conns(str(path))
    base = got["jsonl"]
    assert len(base) == 3
    for ext in ("log", "csv", "parquet"):
        assert len(got[ext]) == 3
        for a, b in zip(base, got[ext]):
            for k, v in a.items():
                if isinstance(v, float):
                    assert b[k] == pytest.approx(v, abs=1e-6), (ext, k)
                else:
                    assert b[k] == v, (ext, k, a, b)
    first, second, third = base
    assert (first["id.orig_p"], third["id.orig_p"]) == (40000, 40000)
    assert third["reuse_of"] == first["uid"] and third["reuse_decision"] == "kept"
    assert first["history"] == "SAF" and first["orig_pkts"] == 4 and first["resp_pkts"] == 0


def test_fwmark_service_gets_its_marks_from_mark_rules(tmp_path, capsys):
    """An fwmark service only sees packets a firewall rule marked: without --mark nothing is
    scheduled, with an iptables or a compact rule both ports reach the service's servers."""
    from ipvsflow.decisions import read_decisions
    from ipvsflow.io import PcapWriter
    cap = tmp_path / "fwm.pcap"
    t = 1_700_000_000_000_000_000
    with PcapWriter(str(cap)) as w:
        for i, (port, dport) in enumerate(((40000, 80), (40001, 443), (40002, 8080))):
            w.write(_frame("10.0.0.1", port, "10.0.0.100", dport, 0x02), t + i * 1_000_000)
    rules = ["-R", "-A -f 1 -s rr", "-R", "-a -f 1 -r 10.0.1.1:0 -g", "-R", "-a -f 1 -r 10.0.1.2:0 -g"]
    marks = {
        "none": [],
        "iptables": ["--mark", "iptables -t mangle -A PREROUTING -p tcp -d 10.0.0.100 -m multiport "
                               "--dports 80,443 -j MARK --set-mark 1"],
        "compact": ["--mark", "tcp dst 10.0.0.100 dport 80,443 -> 1"],
    }
    got = {}
    for name, extra in marks.items():
        out = tmp_path / f"{name}.jsonl"
        rc, _, err = run(["analyze", cap, *rules, *extra, "-q", "--decisions", out], capsys)
        assert rc == 0, err
        got[name] = [(d["action"], d["rs"]) for d in read_decisions(str(out))]
    assert [a for a, _ in got["none"]] == ["pass", "pass", "pass"]
    assert got["iptables"] == got["compact"]
    assert [a for a, _ in got["compact"]] == ["new", "new", "pass"]
    # port-0 servers: rs names the port the connection uses (the packet's), in every format;
    # rr picks the most recently added server first
    assert got["compact"][:2] == [("new", "10.0.1.2:80"), ("new", "10.0.1.1:443")]
    for ext in ("csv", "parquet"):
        out = tmp_path / f"compact.{ext}"
        rc, _, err = run(["analyze", cap, *rules, *marks["compact"], "-q", "--decisions", out], capsys)
        assert rc == 0, err
        assert [(d["action"], d["rs"]) for d in read_decisions(str(out))] == got["compact"], ext


def _frame6(src, sport, dst, dport, flags):
    import ipaddress
    import struct
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 0x50, flags, 65535, 0, 0)
    ip6 = (struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + ipaddress.IPv6Address(src).packed
           + ipaddress.IPv6Address(dst).packed)
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x86\xdd" + ip6 + tcp


def _arp_frame():
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x06" + bytes(28)


def test_decision_files_spell_every_endpoint_like_the_packets(tmp_path, monkeypatch):
    """IPv4 and IPv6, service and non-service traffic to many distinct endpoints, a non-IP
    frame: client and vip are the packet's own endpoints in all three formats, across Parquet
    row groups (each with its own vip/rs dictionaries) and across text buffer flushes."""
    import ipaddress
    from ipvsflow import decisions
    from ipvsflow.config import parse_rules
    from ipvsflow.decisions import DecisionWriter, read_decisions
    from ipvsflow.engine import Engine
    from ipvsflow.io import PcapWriter, open_capture
    from ipvsflow.replay import replay

    t = 1_700_000_000_000_000_000
    sent = []          # (frame, client, vip) expected per packet; None for non-IP
    for i in range(300):
        k = i % 5
        if k == 0:      # to the IPv4 service
            c, v = ("10.1.%d.%d" % (i // 250, i % 250 + 1), 30000 + i), ("10.0.0.100", 80)
            sent.append((_frame(c[0], c[1], v[0], v[1], 0x02), f"{c[0]}:{c[1]}", f"{v[0]}:{v[1]}"))
        elif k == 1:    # to a distinct IPv4 endpoint that is no service
            c, v = ("10.2.0.1", 40000 + i), ("172.16.0.%d" % (i % 7), 1000 + i)
            sent.append((_frame(c[0], c[1], v[0], v[1], 0x10), f"{c[0]}:{c[1]}", f"{v[0]}:{v[1]}"))
        elif k == 2:    # to the IPv6 service
            c, v = ("2001:db8::%x" % (0x1000 + i), 50000 + i), ("2001:db8::100", 80)
            sent.append((_frame6(c[0], c[1], v[0], v[1], 0x02), f"[{c[0]}]:{c[1]}", f"[{v[0]}]:{v[1]}"))
        elif k == 3:    # to distinct IPv6 endpoints, long and short forms
            c, v = ("fe80::1:2:3:4", 1 + i), (str(ipaddress.IPv6Address("2001:db8:0:%x::1" % (i % 3))), 65535 - i)
            sent.append((_frame6(c[0], c[1], v[0], v[1], 0x10), f"[{c[0]}]:{c[1]}", f"[{v[0]}]:{v[1]}"))
        elif i % 10 == 4:   # NAT: a client's SYN, the server's reply, a stray reply (no entry)
            c, v, r = ("10.3.0.%d" % (i // 10), 20000 + i), ("10.0.0.200", 80), ("10.0.1.5", 8080)
            sent.append((_frame(c[0], c[1], v[0], v[1], 0x02), f"{c[0]}:{c[1]}", f"{v[0]}:{v[1]}"))
            sent.append((_frame(r[0], r[1], c[0], c[1], 0x12), f"{c[0]}:{c[1]}", f"{v[0]}:{v[1]}"))
            # without an entry the record has no virtual side: vip is the reply's source
            sent.append((_frame(r[0], r[1], "10.4.0.1", c[1], 0x12), f"10.4.0.1:{c[1]}", f"{r[0]}:{r[1]}"))
        else:
            sent.append((_arp_frame(), None, None))
    cap = tmp_path / "mixed.pcap"
    with PcapWriter(str(cap)) as w:
        for i, (frame, _, _) in enumerate(sent):
            w.write(frame, t + i * 1000)
    cfg = parse_rules("\n".join([
        "-A -t 10.0.0.100:80 -s rr",
        "-a -t 10.0.0.100:80 -r 10.0.1.1:80 -g", "-a -t 10.0.0.100:80 -r 10.0.1.2:8080 -m",
        "-A -t [2001:db8::100]:80 -s rr", "-a -t [2001:db8::100]:80 -r [2001:db8::10]:80 -g",
        "-A -t 10.0.0.200:80 -s rr", "-a -t 10.0.0.200:80 -r 10.0.1.5:8080 -m",
    ]), source="test")
    cfg.sysctls["nat_icmp_send"] = 1        # stray server replies are the service's (DIR out)
    monkeypatch.setattr(decisions, "_TEXT_BUFFER", 512)     # smaller than one burst's bound
    got = {}
    for ext in ("jsonl", "csv", "parquet"):
        eng = Engine(cfg, capacity=16)
        out = tmp_path / f"d.{ext}"
        writer = DecisionWriter(str(out), eng, chunk=40)
        replay(open_capture(str(cap), burst=16), [eng],
               on_decisions=lambda k, b, s, e, d: writer.write(b, s, e, d))
        writer.close()
        got[ext] = read_decisions(str(out))
    assert [len(g) for g in got.values()] == [len(sent)] * 3
    for ext, rows in got.items():
        for (_, client, vip), r in zip(sent, rows):
            assert (r["client"], r["vip"]) == (client, vip), (ext, r)
            if vip in ("10.0.0.200:80", "10.0.1.5:8080"):   # NAT: the reply names the service
                assert r["rs"] == ("10.0.1.5:8080" if vip == "10.0.0.200:80" else None), (ext, r)
                assert r["dir"] == ("in" if r["action"] == "new" else "out"), (ext, r)
            elif vip in ("10.0.0.100:80", "[2001:db8::100]:80"):
                assert r["action"] == "new" and r["proto"] == "tcp", (ext, r)
                assert r["rs"] in (("10.0.1.1:80", "10.0.1.2:8080") if vip[0] == "1" else
                                   ("[2001:db8::10]:80",)), (ext, r)
            else:
                assert r["rs"] is None and r["conn"] is None, (ext, r)
    for ext in ("csv", "parquet"):
        for a, b in zip(got["jsonl"], got[ext]):
            assert {k: a[k] for k in decisions.COLUMNS if k != "ts"} == \
                   {k: b[k] for k in decisions.COLUMNS if k != "ts"}, ext
            assert abs(float(a["ts"]) - float(b["ts"])) < 1e-6
    # both real servers of the IPv4 service were used, so the dictionaries held several entries
    assert {r["rs"] for r in got["parquet"] if r["vip"] == "10.0.0.100:80"} == {"10.0.1.1:80", "10.0.1.2:8080"}
    # the reference spelling: Python's own RFC 5952 text
    assert all(ipaddress.ip_address(r["client"].rsplit(":", 1)[0].strip("[]")) for r in got["csv"] if r["client"])


def test_decisions_after_rule_changes_name_new_servers_in_every_format(capture, rules, tmp_path, capsys):
    """A server added mid-capture: rows before and after name the right servers, Parquet
    included (its rs dictionary spans the change)."""
    got = {}
    for ext in ("jsonl", "parquet"):
        out = tmp_path / f"ev.{ext}"
        rc, _, err = run(["analyze", capture, "-C", rules, "-q", "--decisions", out,
                          "--event", "+1s -a -t 10.0.0.100:80 -r 10.0.1.3:80 -g -w 1",
                          "--event", "+1s -e -t 10.0.0.100:80 -r 10.0.1.1:80 -g -w 0",
                          "--event", "+1s -e -t 10.0.0.100:80 -r 10.0.1.2:80 -g -w 0"], capsys)
        assert rc == 0, err
        from ipvsflow.decisions import read_decisions
        got[ext] = [(d["pkt"], d["action"], d["rs"], d["vip"]) for d in read_decisions(str(out))]
    assert got["jsonl"] == got["parquet"]
    # the first connection (t=0) went to a configured server; its packets keep naming it
    first = {rs for pkt, _, rs, _ in got["jsonl"] if pkt < 4}
    assert len(first) == 1 and first <= {"10.0.1.1:80", "10.0.1.2:80"}
    # the second (t=2s, port 40001) can only go to the added server: the others have weight 0
    assert {(act, rs) for pkt, act, rs, _ in got["jsonl"] if 4 <= pkt < 8} == \
        {("new", "10.0.1.3:80"), ("hit", "10.0.1.3:80")}


def test_parquet_decisions_compression_choices(capture, rules, tmp_path, capsys):
    from ipvsflow.decisions import read_decisions
    import pyarrow.parquet as pq
    ref = None
    for codec in ("snappy", "zstd", "none"):
        out = tmp_path / f"c-{codec}.parquet"
        rc, _, err = run(["analyze", capture, "-C", rules, "-q", "--decisions", out,
                          "--decisions-compression", codec], capsys)
        assert rc == 0, err
        md = pq.ParquetFile(str(out)).metadata.row_group(0)
        cols = {md.column(i).path_in_schema: md.column(i).compression for i in range(md.num_columns)}
        assert cols["client"] == ("UNCOMPRESSED" if codec == "none" else codec.upper())
        assert cols["pkt"] == "UNCOMPRESSED"
        rows = read_decisions(str(out))
        assert len(rows) == 12
        ref = ref or rows
        assert rows == ref
    rc, _, err = run(["analyze", capture, "-C", rules, "-q", "--decisions", tmp_path / "d.jsonl",
                      "--decisions-compression", "zstd"], capsys)
    assert rc == 1 and "Parquet" in err
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(capture), "-C", str(rules), "--decisions", str(tmp_path / "x.parquet"),
              "--decisions-compression", "brotli9"])
    assert exc.value.code == 2
    from ipvsflow.decisions import DecisionWriter
    from ipvsflow.engine import Engine
    for bad in ("brotli9", {"client": "lz4", "nope": "zstd"}):
        with pytest.raises(ValueError):
            DecisionWriter(str(tmp_path / "y.parquet"), Engine(None), compression=bad)
    assert not (tmp_path / "y.parquet").exists()


def test_burst_time_helpers_match_a_numpy_scan():
    """The replay's per-burst scans (first packet at or after a time, latest time before it)
    against numpy on unordered times."""
    import numpy as np
    from ipvsflow._analysis import burst_limit, first_at_or_after, first_ts
    from ipvsflow.io import PacketBatch
    rng = np.random.default_rng(7)
    for n in (1, 2, 17, 256):
        ts = rng.integers(0, 1000, n)
        b = PacketBatch.from_packets([(int(x), b"\x00" * 14) for x in ts])
        assert first_ts(b) == ts[0]
        for until in (-1, 0, int(ts[0]), 500, 999, 1000, 1 << 62):
            late = np.flatnonzero(ts >= until)
            limit = int(late[0]) if len(late) else n
            lim, tmax = burst_limit(b, until)
            assert lim == limit
            if limit:
                assert tmax == ts[:limit].max()
        for _ in range(50):
            start, stop = sorted(rng.integers(0, n + 1, 2))
            cut = int(rng.integers(-5, 1005))
            hit = np.flatnonzero(ts[start:stop] >= cut)
            assert first_at_or_after(b, start, stop, cut) == (start + int(hit[0]) if len(hit) else stop)
    with pytest.raises(ValueError):
        first_at_or_after(b, 0, n + 1, 0)
