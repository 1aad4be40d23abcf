"""Live director parts that need no privileges: listings aggregated over workers, the SIGHUP
rule diff, the fanout program (run through an independent classic-BPF interpreter), the ctl
command line, the control socket protocol."""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import struct
import threading

import pytest

from ipvsflow.config import apply_command, format_rules, parse_command, parse_rules
from ipvsflow.engine import Engine
from ipvsflow.live import control, fanout, listing
from ipvsflow.live.cli import add_ctl_arguments, ctl_request
from ipvsflow.live.director import aggregate, diff_commands
from ipvsflow.live.metrics import decision_names, parse_hostport

from engine_helpers import batch, tcp_frame

RULES = """
-A -t 200.0.0.1:80 -s rr
-a -t 200.0.0.1:80 -r 10.1.0.1:80 -m -w 1
-a -t 200.0.0.1:80 -r 200.1.0.2:80 -m -w 3
-a -t 200.0.0.1:80 -r 10.1.0.3:8080 -m -w 2
-A -t 10.0.0.1:443 -s wlc -p 60
-a -t 10.0.0.1:443 -r 10.1.0.1:443 -g -w 1
-A -u 10.0.0.1:53 -s sh -b sh-port,sh-fallback
-a -u 10.0.0.1:53 -r 10.1.0.9:53 -g -w 1
-A -t [2001:db8::80]:80 -s wrr
-a -t [2001:db8::80]:80 -r [2001:db8:1::1]:80 -m -w 1
"""


def _traffic(n_clients, first_port=40000):
    """SYN, ACK, data for n clients to each TCP service (times increasing)."""
    pk = []
    t = 0.0
    for i in range(n_clients):
        for vip, vport in (("200.0.0.1", 80), ("10.0.0.1", 443)):
            c = f"192.0.2.{1 + i % 200}"
            for fl in ("S", "A", "PA"):
                pk.append((t, tcp_frame(c, first_port + i, vip, vport, fl)))
                t += 0.001
    return pk


def test_listing_matches_the_engine_for_one_worker():
    cfg = parse_rules(RULES)
    eng = Engine(cfg)
    eng.process(batch(_traffic(9)))
    st = eng.stats()
    services = listing.merge_services([st["services"]])
    assert listing.format_list(services) == eng.format_list()
    assert listing.format_stats(services) == eng.format_stats()
    assert listing.format_stats(services, exact=True) == eng.format_stats(exact=True)
    # ipvsadm's C-int address comparison puts 200.x before 10.x
    lines = listing.format_list(services).splitlines()
    assert lines[3].startswith("TCP  200.0.0.1:80")
    assert lines[4].startswith("  -> 200.1.0.2:80")


def test_listing_sums_workers():
    cfg = parse_rules(RULES)
    pk = _traffic(12)
    a, b = Engine(cfg), Engine(cfg)
    whole = Engine(cfg)
    # split by client (as the fanout does): each client's packets go to one engine
    mine = [p for p in pk if int(p[1][26 + 3]) % 2 == 0]
    other = [p for p in pk if int(p[1][26 + 3]) % 2 == 1]
    a.process(batch(mine))
    b.process(batch(other))
    whole.process(batch(pk))
    merged = listing.merge_services([a.stats()["services"], b.stats()["services"]])
    tot = {(s["name"], d["endpoint"]): d for s in merged for d in s["dests"]}
    sa = {(s["name"], d["endpoint"]): d for s in a.stats()["services"] for d in s["dests"]}
    sb = {(s["name"], d["endpoint"]): d for s in b.stats()["services"] for d in s["dests"]}
    for k, d in tot.items():
        for f in ("conns", "inpkts", "inbytes", "activeconns", "inactconns"):
            assert d[f] == sa[k][f] + sb[k][f], (k, f)
    # every connection is counted once, as one engine seeing all traffic counts them
    assert sum(d["conns"] for d in tot.values()) == sum(
        d["conns"] for s in whole.stats()["services"] for d in s["dests"])
    assert sum(s["inpkts"] for s in merged) == sum(s["inpkts"] for s in whole.stats()["services"])


def _snap(eng, wid, rx=0):
    dec = [0] * 512
    dec[(4 << 6) | 16] = 3       # drop / no_dest
    dec[(1 << 6)] = 5            # new
    return {"wid": wid, "packets": rx, "rx": {"eth0": {"packets": rx, "bytes": 60 * rx, "kernel_drops": 1}},
            "tx": {"eth0": {"packets": rx, "bytes": 60 * rx, "too_big": 0, "errors": 0, "ring_full": 0}},
            "sink": {"neigh_miss": 2}, "forward": {"ttl_expired": 1}, "decisions": dec,
            "engine": eng.stats(), "conn_count": eng.conn_count, "timeouts": eng.timeouts(), "time": 0}


def test_aggregate_counts_drops_by_reason():
    eng = Engine(parse_rules(RULES))
    agg = aggregate([_snap(eng, 0, 10), _snap(eng, 1, 7)])
    assert agg["packets"] == 17
    assert agg["rx"]["eth0"]["packets"] == 17
    assert agg["decisions"][("drop", "no_dest")] == 6
    assert agg["decisions"][("new", "-")] == 10
    assert agg["drops"] == {"no_dest": 6, "ring_full": 2, "neigh_miss": 4, "ttl_expired": 2}
    assert agg["workers"] == 2


def test_decision_names_use_the_engine_tables():
    from ipvsflow.engine import ACTIONS, REASONS
    counts = [0] * 512
    counts[(ACTIONS.index("resched") << 6) | REASONS.index("reuse_expected")] = 4
    assert decision_names(counts) == {("resched", "reuse_expected"): 4}


# ---- SIGHUP: the rules difference as ipvsadm edits -------------------------------------------

OLD = """
-A -t 198.18.100.1:80 -s rr
-a -t 198.18.100.1:80 -r 198.18.2.11:80 -m -w 1
-a -t 198.18.100.1:80 -r 198.18.2.12:80 -m -w 1
-a -t 198.18.100.1:80 -r 198.18.2.13:80 -m -w 1
-A -u 198.18.100.1:53 -s rr
-a -u 198.18.100.1:53 -r 198.18.2.11:53 -m -w 1
"""
NEW = """
-A -t 198.18.100.1:80 -s wlc
-a -t 198.18.100.1:80 -r 198.18.2.11:80 -m -w 0
-a -t 198.18.100.1:80 -r 198.18.2.13:80 -m -w 1
-a -t 198.18.100.1:80 -r 198.18.2.14:80 -m -w 2
-A -t 198.18.100.2:80 -s rr
-a -t 198.18.100.2:80 -r 198.18.2.12:80 -m -w 1
--sysctl conn_reuse_mode=2
--set 0 60 0
"""


def test_diff_turns_old_rules_into_new():
    old, new = parse_rules(OLD), parse_rules(NEW)
    cmds = diff_commands(old, new)
    ops = [c.op for c in cmds]
    # removals before edits before additions; the new service exists before its servers
    assert ops.index("del-service") < ops.index("add-service")
    assert ops.index("del-dest") < ops.index("add-dest")
    new_svc = [i for i, c in enumerate(cmds) if c.service is not None and c.service.addr == "198.18.100.2"]
    assert [cmds[i].op for i in new_svc] == ["add-service", "add-dest"]
    assert sorted(ops) == sorted(["sysctl", "set-timeouts", "del-service", "edit-service", "del-dest",
                                  "edit-dest", "add-dest", "add-service", "add-dest"])
    cur = old.copy()
    for c in cmds:
        apply_command(cur, c)
    assert format_rules(cur) == format_rules(new)
    assert cur.sysctls == new.sysctls and tuple(cur.timeouts) == tuple(new.timeouts)
    # the same commands on an engine: the engine ends where a fresh engine on the new rules is
    eng = Engine(old)
    for c in cmds:
        eng.apply(c)
    assert eng.format_list() == Engine(new).format_list()
    assert diff_commands(new, new) == []


# ---- fanout: the classic BPF program, run by an independent interpreter ----------------------

SKF_AD_OFF, SKF_NET_OFF = -0x1000, -0x100000


class _OutOfRange(Exception):
    pass


def run_cbpf(prog, net: bytes, ethertype: int) -> int:
    """Interpret classic BPF as the kernel does for a packet whose network header is ``net``
    (SKF_NET_OFF-relative loads; SKF_AD_PROTOCOL = ethertype). An out-of-range load ends the
    program with 0, as the kernel's does."""
    A = X = 0
    M = [0] * 16
    pc = 0

    def load(off, size):
        if off == SKF_AD_OFF + 0 and size == 2:
            return ethertype
        if off < SKF_NET_OFF // 2 and off >= SKF_NET_OFF:
            o = off - SKF_NET_OFF
        else:
            raise AssertionError(f"load outside the network header: {off}")
        if o + size > len(net):
            raise _OutOfRange()
        return int.from_bytes(net[o:o + size], "big")

    try:
        while True:
            code, jt, jf, k = prog[pc]
            ks = k - (1 << 32) if k & 0x80000000 else k
            cls = code & 7
            pc += 1
            if cls == 0:            # LD
                mode, size = code & 0xe0, code & 0x18
                sz = {0: 4, 8: 2, 0x10: 1}[size]
                if mode == 0x20:
                    A = load(ks, sz)
                elif mode == 0x40:
                    A = load(X + ks, sz)
                elif mode == 0x60:
                    A = M[k]
                elif mode == 0x00:
                    A = k
                else:
                    raise AssertionError(hex(code))
            elif cls == 1:          # LDX
                mode = code & 0xe0
                if mode == 0xa0:
                    X = 4 * (load(ks, 1) & 0xf)
                elif mode == 0x60:
                    X = M[k]
                elif mode == 0x00:
                    X = k
                else:
                    raise AssertionError(hex(code))
            elif cls == 2:
                M[k] = A
            elif cls == 3:
                M[k] = X
            elif cls == 4:          # ALU
                op = code & 0xf0
                v = X if code & 0x08 else k
                ops = {0x00: lambda: A + v, 0x10: lambda: A - v, 0x20: lambda: A * v,
                       0x40: lambda: A | v, 0x50: lambda: A & v, 0x60: lambda: A << (v & 31),
                       0x70: lambda: A >> (v & 31), 0xa0: lambda: A ^ v}
                A = ops[op]() & 0xffffffff
            elif cls == 5:          # JMP
                op = code & 0xf0
                v = X if code & 0x08 else k
                if op == 0x00:
                    pc += k
                    continue
                cond = {0x10: A == v, 0x20: A > v, 0x30: A >= v, 0x40: bool(A & v)}[op]
                pc += jt if cond else jf
            elif cls == 6:
                return A if code & 0x10 else k
            elif cls == 7:
                if code & 0xf8 == 0x80:
                    A = X
                else:
                    X = A
    except _OutOfRange:
        return 0


def v4(src, dst, proto, sport=None, dport=None, frag=0):
    l4 = struct.pack("!HH", sport, dport) + bytes(16) if sport is not None else b""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0,
                      ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return hdr + l4


def v6(src, dst, nh, sport=None, dport=None):
    l4 = struct.pack("!HH", sport, dport) + bytes(16) if sport is not None else b""
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), nh, 64, ipaddress.ip_address(src).packed,
                       ipaddress.ip_address(dst).packed) + l4


SERVERS = [("198.18.2.11", 80), ("198.18.2.12", 8080), ("198.18.2.13", 0),
           ("fd00:5eed:2::11", 80), ("fd00:5eed:2::12", 0)]


@pytest.mark.parametrize("proto", [6, 17, 132])
def test_fanout_both_directions_of_a_nat_connection_hash_alike(proto):
    prog = fanout.program(SERVERS)
    assert len(prog) < 4096
    for i in range(50):
        client, cport = f"203.0.113.{i + 1}", 30000 + 7 * i
        for rs, rport in SERVERS[:3]:
            rport = rport or 80
            h_in = run_cbpf(prog, v4(client, "198.18.100.1", proto, cport, 80), 0x0800)
            h_out = run_cbpf(prog, v4(rs, client, proto, rport, cport), 0x0800)
            assert h_in == h_out == fanout.client_hash(client, cport)
        c6 = f"2001:db8:c::{i + 1:x}"
        for rs, rport in SERVERS[3:]:
            rport = rport or 443
            h_in = run_cbpf(prog, v6(c6, "fd00:5eed:100::1", proto, cport, 80), 0x86dd)
            h_out = run_cbpf(prog, v6(rs, c6, proto, rport, cport), 0x86dd)
            assert h_in == h_out == fanout.client_hash(c6, cport)


def test_fanout_server_port_matters_only_when_given():
    prog = fanout.program(SERVERS)
    # 198.18.2.12 is a server on port 8080 only: from another port it is a client
    assert run_cbpf(prog, v4("198.18.2.12", "198.18.100.1", 6, 5555, 80), 0x0800) == \
        fanout.client_hash("198.18.2.12", 5555)
    assert run_cbpf(prog, v4("198.18.2.12", "192.0.2.7", 6, 8080, 5555), 0x0800) == \
        fanout.client_hash("192.0.2.7", 5555)
    # port 0 (any port) server: every source port counts as the server side
    assert run_cbpf(prog, v4("198.18.2.13", "192.0.2.7", 6, 1234, 5555), 0x0800) == \
        fanout.client_hash("192.0.2.7", 5555)


def test_fanout_spreads_clients_and_handles_odd_packets():
    prog = fanout.program(SERVERS)
    n = 4
    buckets = [0] * n
    for i in range(2000):
        buckets[run_cbpf(prog, v4(f"10.{i % 200}.{i // 200}.1", "198.18.100.1", 6, 1024 + i, 80), 0x0800) % n] += 1
    assert min(buckets) > 2000 / n * 0.8, buckets
    # non-first fragment: no ports (hashed with port 0); ICMP: no ports; ARP etc.: worker 0
    assert run_cbpf(prog, v4("192.0.2.1", "198.18.100.1", 6, frag=0x0010), 0x0800) == \
        fanout.client_hash("192.0.2.1", 0)
    assert run_cbpf(prog, v4("198.18.2.11", "192.0.2.1", 1), 0x0800) == fanout.client_hash("192.0.2.1", 0)
    assert run_cbpf(prog, b"\x00" * 28, 0x0806) == 0
    # a truncated header ends the program (kernel: load fails, socket 0)
    assert run_cbpf(prog, v4("192.0.2.1", "198.18.100.1", 6, 1, 80)[:21], 0x0800) == 0


def test_fanout_program_without_servers_and_too_many():
    prog = fanout.program([])
    assert run_cbpf(prog, v4("192.0.2.1", "198.18.100.1", 17, 5, 53), 0x0800) == fanout.client_hash("192.0.2.1", 5)
    with pytest.raises(ValueError):
        fanout.program([(f"fd00::{i:x}", 80) for i in range(3000)])


# ---- ipvsflow ctl -----------------------------------------------------------------------------

def _ctl(*argv):
    p = argparse.ArgumentParser(prog="ipvsflow ctl")
    add_ctl_arguments(p)
    return ctl_request(p.parse_args(list(argv)))


@pytest.mark.parametrize("argv,op", [
    (["-a", "-t", "198.18.100.1:80", "-r", "198.18.2.14:80", "-m", "-w", "2"], "add-dest"),
    (["-e", "-t", "198.18.100.1:80", "-r", "198.18.2.11:80", "-g", "-w", "0"], "edit-dest"),
    (["-d", "-t", "198.18.100.1:80", "-r", "198.18.2.11:80"], "del-dest"),
    (["-A", "-u", "[fd00::1]:53", "-s", "sh", "-b", "sh-port", "-p", "60", "-o"], "add-service"),
    (["-A", "-f", "7", "-6", "-s", "rr", "-p"], "add-service"),
    (["-E", "-t", "198.18.100.1:80", "-s", "wlc"], "edit-service"),
    (["-D", "-t", "198.18.100.1:80"], "del-service"),
    (["-C"], "clear"),
    (["--set", "900", "60", "0"], "set-timeouts"),
    (["--sysctl", "conn_reuse_mode=2"], "sysctl"),
])
def test_ctl_builds_ipvsadm_lines(argv, op):
    req = _ctl(*argv)
    assert req["cmd"] == "apply"
    cmd = parse_command(req["line"])
    assert cmd.op == op
    if op == "add-dest":
        assert (cmd.dest.addr, cmd.dest.port, cmd.dest.weight, cmd.dest.fwd) == ("198.18.2.14", 80, 2, 0)
    if op == "add-service" and "-f" in argv:
        assert cmd.service.fwmark == 7 and cmd.service.af == 6 and cmd.service.timeout == 300


def test_ctl_list_forms():
    assert _ctl("-L", "-n") == {"cmd": "list", "stats": False, "exact": False, "conns": False, "timeout": False}
    assert _ctl("-Ln", "--stats", "--exact")["stats"] is True
    assert _ctl("-L", "-n", "-c")["conns"] is True
    assert _ctl("-l", "--timeout")["timeout"] is True
    assert _ctl("-S", "-n") == {"cmd": "save"}
    assert _ctl("--status") == {"cmd": "status"}
    with pytest.raises(SystemExit):
        _ctl("-L", "-a")            # two commands


def test_parse_hostport():
    assert parse_hostport("127.0.0.1:9109") == ("127.0.0.1", 9109)
    assert parse_hostport("[::1]:9") == ("::1", 9)
    for bad in ("9109", "host:", "h:0", "h:70000", ":80"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


def test_control_socket_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "ctl.sock")
    srv = control.open_server(path)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o660)
    seen = []

    def serve():
        for _ in range(2):
            conn, _ = srv.accept()
            with conn:
                try:
                    req = control.read_request(conn)
                except ValueError as exc:
                    control.send_reply(conn, {"ok": False, "error": str(exc)})
                    continue
                seen.append(req)
                control.send_reply(conn, {"ok": True, "output": "x" * 200000})
    th = threading.Thread(target=serve)
    th.start()
    r = control.request(path, {"cmd": "list"})
    assert r["ok"] and len(r["output"]) == 200000
    # a malformed request gets an error reply, not a hang
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"[1, 2]\n")
    assert b"cmd" in s.recv(4096)
    s.close()
    th.join(5)
    assert seen == [{"cmd": "list"}]
    # a second director on the same path is refused while the first listens
    with pytest.raises(control.ControlError):
        control.open_server(path)
    srv.close()
    # a stale socket file (nobody listening) is replaced
    srv2 = control.open_server(path)
    srv2.close()
    with pytest.raises(control.ControlError, match="nobody is listening"):
        control.request(path, {"cmd": "status"})
    os.unlink(path)
    with pytest.raises(control.ControlError, match="no control socket"):
        control.request(path, {"cmd": "status"})
