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
    assert sum(sum(v.values()) for v in report["accounting"].values()) == 12


def test_analyze_bad_inputs_exit_1_with_one_line(capture, rules, tmp_path, capsys):
    cases = [
        (["analyze", tmp_path / "missing.pcap", "-C", rules], "missing.pcap"),
        (["analyze", tmp_path, "-C", rules], "directory"),
        (["analyze", rules, "-C", rules], "not a capture"),
        (["analyze", capture, "-C", tmp_path / "nope.conf"], "no such rules file"),
        (["analyze", capture, "-R", "-A -t 10.0.0.100:80 -s fastest"], "unknown scheduler"),
        (["analyze", capture, "-C", rules, "--sysctl", "bogus=1"], "unknown sysctl"),
        (["analyze", capture, "-C", rules, "--event", "+3600s -d -t 10.0.0.100:80 -r 10.0.1.1:80"],
         "after the last packet"),
        (["analyze", capture, "-C", rules, "--kernel", "2.6"], "unknown kernel"),
        (["analyze", capture, "-C", rules, "--decisions", tmp_path / "d.txt"], "unknown decisions format"),
    ]
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    cases.append((["analyze", empty, "-C", rules], "empty"))
    bad_rules = tmp_path / "bad.conf"
    bad_rules.write_text(RULES + "-a -t 10.0.0.100:80 -r 10.0.1.3:80 -w many\n")
    cases.append((["analyze", capture, "-C", bad_rules], "bad.conf:4"))
    for args, words in cases:
        rc, out, err = run(args + ["-q"], capsys)
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
