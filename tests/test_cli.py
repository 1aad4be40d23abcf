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
    # rs names the real server as configured (port 0: the packet's port is kept)
    assert {rs for _, rs in got["compact"][:2]} == {"10.0.1.1:0", "10.0.1.2:0"}
