"""Conformance with the real Linux 6.1 IPVS: every fixture under tests/fixtures/oracle/ is fed to the
engine and compared, packet by packet, with what the kernel did (see tests/oracle_harness.py and
tests/fixtures/oracle/README.md). No VM is needed: the kernel's answers are in the fixtures.

The first group of tests checks the fixtures and the harness themselves against independent data
(the pcap bytes, the VM's own listings), so that a broken fixture or harness cannot pass silently.
"""
import ipaddress
import re
import struct

import pytest

import oracle_harness as H

NAMES = H.fixture_names()


def test_fixture_set_present():
    # The engine's conformance rests on these; losing them must not go unnoticed.
    assert len(NAMES) >= 45, f"only {len(NAMES)} oracle fixtures under {H.FIXTURES}"


@pytest.fixture(scope="module", params=NAMES)
def fx(request):
    return H.load_fixture(request.param)


# ----------------------------------------------------------------------------------------------
# the fixtures themselves

def read_pcap(path):
    """(ts_ns, frame) records of a classic pcap (what mkscenario writes), read independently of
    ipvsflow.io."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), f"{path}: not a little-endian classic pcap"
    scale = 1000 if magic == 0xA1B2C3D4 else 1
    off, out = 24, []
    while off < len(data):
        sec, frac, caplen, _ = struct.unpack("<IIII", data[off:off + 16])
        out.append((sec * 1_000_000_000 + frac * scale, data[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    return out


TCP_FLAG_LETTERS = "FSRPAUEC"      # bit order, as scapy and the oracle spell flags
SCTP_CHUNK_NAMES = {0: "DATA", 1: "INIT", 2: "INIT_ACK", 3: "SACK", 4: "HEARTBEAT", 5: "HEARTBEAT_ACK",
                    6: "ABORT", 7: "SHUTDOWN", 8: "SHUTDOWN_ACK", 9: "ERROR", 10: "COOKIE_ECHO",
                    11: "COOKIE_ACK", 14: "SHUTDOWN_COMPLETE"}


def decode(frame):
    """(src, dst, proto, sport, dport, detail) of an Ethernet frame carrying IPv4/IPv6; detail is
    (flags, seq, ack) for TCP, the first chunk's name for SCTP, None otherwise."""
    et = struct.unpack("!H", frame[12:14])[0]
    ip = frame[14:]
    if et == 0x0800:
        ihl = (ip[0] & 15) * 4
        proto, src, dst, l4 = ip[9], ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20]), ip[ihl:]
    else:
        assert et == 0x86DD
        proto, src, dst, l4 = ip[6], ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40]), ip[40:]
    ports = struct.unpack("!HH", l4[:4]) if proto in (6, 17, 132) else (None, None)
    detail = None
    if proto == 6:
        seq, ack = struct.unpack("!II", l4[4:12])
        detail = ("".join(c for i, c in enumerate(TCP_FLAG_LETTERS) if l4[13] >> i & 1), seq, ack)
    elif proto == 132:
        detail = SCTP_CHUNK_NAMES.get(l4[12], str(l4[12]))
    return str(src), str(dst), proto, ports[0], ports[1], detail


def test_fixture_is_clean_and_complete(fx):
    e = fx.expected
    assert e["ok"] and e["setup_ok"], f"{fx.name}: the oracle run was not healthy: {e.get('errors')}"
    assert e["kernel_package"].startswith("linux-image-6.1"), e["kernel_package"]
    for k in ("qemu_cmd", "timing"):
        assert k not in e, f"{fx.name}: machine-dependent key {k} left in expected.json"
    assert "pcap" not in e["config"]
    assert "/tmp/" not in e["setup_script"] and "/work/" not in e["setup_script"]
    assert all(a["rc"] == 0 for a in e["actions"]), e["actions"]
    assert len(e["actions"]) == len(fx.actions)
    assert fx.description, f"{fx.name}: spec.json has no description"


def test_pcap_matches_expected(fx):
    """input.pcap is the capture the kernel was given: same packets, times and endpoints."""
    recs = read_pcap(fx.pcap)
    pk = fx.expected["packets"]
    assert len(recs) == len(pk)
    t0 = recs[0][0]
    for (ts, frame), p in zip(recs, pk):
        src, dst, proto, sport, dport, detail = decode(frame)
        assert abs((ts - t0) / 1e9 - p["ts"]) < 2e-6, (fx.name, p["index"])
        assert (src, dst) == (str(ipaddress.ip_address(p["src"])), str(ipaddress.ip_address(p["dst"]))), p
        if sport is not None and "sport" in p:
            assert (sport, dport) == (p["sport"], p["dport"]), p
        if proto == 6:
            assert detail == (p["flags"], p["seq"], p["ack"]), (fx.name, p["index"], detail)
        elif proto == 132:
            assert [detail] == p["chunks"][:1], (fx.name, p["index"], detail)


def test_pcap_matches_spec(fx):
    """spec.json describes input.pcap (the generator was run after the last spec edit)."""
    recs = read_pcap(fx.pcap)
    t0 = recs[0][0]
    for (ts, frame), sp in zip(recs, fx.spec["packets"]):
        src, dst, proto, sport, dport, detail = decode(frame)
        assert abs((ts - t0) / 1e9 - (sp["t"] - fx.spec["packets"][0]["t"])) < 2e-6
        cip, cport = H.split_endpoint(sp["client"])
        if sp.get("dir", "c2s") == "c2s":
            assert src == cip and (sport is None or sport == cport or "icmp" in sp), (fx.name, sp)
        else:
            assert dst == cip and dport == cport, (fx.name, sp)
        if proto == 6 and "flags" in sp:
            assert sorted(detail[0]) == sorted(sp["flags"]), (fx.name, sp, detail)


# ----------------------------------------------------------------------------------------------
# the harness against the VM's own records

def test_config_matches_initial_listing(fx):
    """build_config reproduces the services and real servers the VM listed after its setup, in the
    kernel's list order (newest first, as the first packet's dests_after shows)."""
    cfg = H.build_config(fx)
    listed = []
    for line in fx.expected["ipvsadm_initial"].splitlines():
        m = re.match(r"\s+->\s+(\S+)\s+(\w+)\s+(\d+)\s+\d+\s+\d+", line)
        if m and m.group(1) != "RemoteAddress:Port":
            a, p = H.split_endpoint(m.group(1))
            listed.append((a, p, m.group(2), int(m.group(3))))
    fwd_name = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route"}
    built = [(H._addr(d.addr), d.port, fwd_name[d.fwd], d.weight) for s in cfg.services for d in s.dests]
    assert sorted(built) == sorted(listed)
    first = fx.expected["packets"][0]
    if "dests_after" in first and 0 not in H.event_schedule(fx) and len(cfg.services) == 1:
        kernel_order = [(H._addr(d["ip"]), d["port"]) for d in first["dests_after"]]
        assert kernel_order == [(a, p) for a, p, _, _ in reversed(built)]
    assert cfg.timeouts == H.timeouts(fx.expected)
    for k, v in H.sysctls(fx).items():
        assert cfg.sysctls[k] == v


def test_events_map_to_commands(fx):
    evs = H.events(fx)
    assert len(evs) == len(fx.actions)
    injected = set(H.injected_indices(fx))
    for (at, cmd), (_, text) in zip(evs, sorted(fx.actions, key=lambda a: a[0])):
        assert at in injected or at == len(fx.expected["packets"])
        assert cmd.op in ("add-dest", "edit-dest", "del-dest", "add-service", "edit-service", "del-service",
                          "sysctl", "set-timeouts", "clear"), (text, cmd.op)
        # each action ran in the VM just before the packet the harness applies it before
        ran = [a for a in fx.expected["actions"] if a["cmd"] == text]
        assert ran and ran[0]["before_input"] == at, (text, ran, at)


def test_kernel_run_compares_equal(fx):
    """The comparison accepts the kernel's own behaviour (no false alarms)."""
    assert H.compare(fx, H.kernel_run(fx)) == []


def _first_forwarded(fx):
    return next(p for p in fx.expected["packets"] if p.get("forwarded"))


def test_comparison_detects_wrong_server():
    fx = H.load_fixture("reuse_dr_mode1")
    run = H.kernel_run(fx)
    p = _first_forwarded(fx)
    other = next(r["ip"] for r in fx.expected["real_servers"] if r["ip"] != p["rs_ip"])
    run.steps[p["index"]].rs_ip = other
    msgs = H.compare(fx, run)
    assert any(f"packet {p['index']}" in m and other in m for m in msgs), msgs
    assert any(m.startswith("rs_sequence") for m in msgs)


def test_comparison_detects_forwarding_and_reply_errors():
    fx = H.load_fixture("nodest_nat_enc0")
    run = H.kernel_run(fx)
    dropped = next(p for p in fx.expected["packets"] if p["dir"] == "c2s" and not p["forwarded"])
    run.steps[dropped["index"]].forwarded = True
    run.steps[dropped["index"]].rs_ip = H._addr(fx.expected["real_servers"][0]["ip"])
    reply = next(p for p in fx.expected["packets"] if p["dir"] == "s2c" and p["forwarded_to_client"])
    run.steps[reply["index"]].forwarded = False
    msgs = H.compare(fx, run, checks=("forwarding", "replies"))
    assert len(msgs) == 2, msgs


def test_comparison_detects_state_and_listing_errors():
    fx = H.load_fixture("reuse_dr_mode2")
    run = H.kernel_run(fx)
    # a wrong state after one packet
    st = run.steps[2]
    k, e = st.conns[0]
    st.conns = [(H.ConnKey(k.proto, k.client, k.cport, k.vip, k.vport, k.rs, k.rport, "TIME_WAIT"), e)]
    # an expiry too far off, and a missing entry in the final listing
    st3 = run.steps[3]
    st3.conns = [(st3.conns[0][0], st3.conns[0][1] + 30)]
    run.final_conns = run.final_conns[1:]
    msgs = H.compare(fx, run, checks=("states", "final"))
    assert any("after packet 2" in m and "FIN_WAIT" in m for m in msgs), msgs
    assert any("after packet 3" in m and "expires" in m for m in msgs), msgs
    assert any(m.startswith("final listing: kernel has") for m in msgs), msgs


def test_dying_entries_are_optional():
    """An entry the kernel lists at expires 0 (expired 'now', unlinked right after the packet) may be
    absent from the engine's listing, and vice versa; a live one may not."""
    fx = H.load_fixture("reuse_dr_mode1")
    p = next(p for p in fx.expected["packets"] if any(c["expires"] == 0 for c in p.get("conns_after", [])))
    run = H.kernel_run(fx)
    st = run.steps[p["index"]]
    st.conns = [c for c in st.conns if c[1] != 0]
    assert H.compare(fx, run, checks=("states",)) == []
    st.conns = [c for c in st.conns if c[1] == 0]
    assert H.compare(fx, run, checks=("states",)) != []


def test_conntrack_needs_hooks():
    fx = H.load_fixture("conntrack_dr_mode2_nohooks")
    assert fx.expected["sysctl_vs"]["conntrack"] == "1"
    assert H.sysctls(fx)["conntrack"] == 0
    assert H.sysctls(H.load_fixture("conntrack_dr_mode2"))["conntrack"] == 1


# ----------------------------------------------------------------------------------------------
# the engine against the kernel
#
# A fixture may name engine features beyond the first part of the engine in spec.json "requires"
# (sctp, persistence, sh, dh, mh, fwmark, icmp). The engine lists what it implements in
# ipvsflow.engine.FEATURES; a fixture that needs a feature not listed there is expected to fail
# (xfail, with the missing features as the reason) and becomes a plain check once it is listed.

def _engine_features():
    try:
        from ipvsflow import engine
    except ImportError:
        return frozenset()
    return frozenset(getattr(engine, "FEATURES", ()))


def _engine_params():
    have = _engine_features()
    out = []
    for n in NAMES:
        missing = sorted(set(H.requires(H.FIXTURES / n)) - have)
        marks = [pytest.mark.xfail(reason=f"engine does not implement {', '.join(missing)} yet", strict=False)] \
            if missing else []
        out.append(pytest.param(n, marks=marks, id=n))
    return out


ENGINE_PARAMS = _engine_params()


def _engine():
    try:
        from ipvsflow.engine import Engine  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"ipvsflow.engine is not importable (build it: python setup.py build_ext --inplace): {exc}")


@pytest.mark.parametrize("name", ENGINE_PARAMS)
def test_engine_matches_kernel(name):
    """Per packet (one packet per process() call): forwarded or not, real server, the client's
    connections and their states after the packet, NAT replies, the final listing, rs_sequence."""
    _engine()
    fx = H.load_fixture(name)
    H.assert_matches(fx, H.run_engine(fx, per_packet=True))


@pytest.mark.parametrize("name", ENGINE_PARAMS)
def test_engine_bursts_match_kernel(name):
    """The same through the burst pipeline (whole runs of packets per process() call)."""
    _engine()
    fx = H.load_fixture(name)
    H.assert_matches(fx, H.run_engine(fx, per_packet=False),
                     checks=("forwarding", "replies", "final", "rs_sequence"))
