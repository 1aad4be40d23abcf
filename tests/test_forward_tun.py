"""TUN forwarding: IPIP (4in4, 6in6, 4in6, 6in4), GUE and GRE, outer header as the kernel's
ip_vs_tunnel_xmit builds it (TTL, DF, ID, DS field with ECN, protocol)."""
import struct

import pytest
from scapy.all import Ether, IP, IPv6, TCP, UDP, SCTP, SCTPChunkData, IPv6ExtHdrDestOpt

from forward_helpers import (
    ACT_HIT, DIR_IN, CF_TUNNEL, RS, RS_TUN4, RS_TUN6, RS_TUN4IN6, RS_TUN6IN4, batch_of,
    decisions, make_engine, forward_to_file, check_all_checksums, tshark_bad, tshark_fields,
    needs_tshark, parse_ip,
)
from ipvsflow.forward import Forwarder

CMAC, DIRMAC = "02:00:00:00:00:01", "02:00:00:00:00:fe"
C4, C6 = "192.0.2.10", "2001:db8:c::10"
V4, V6, V4X, V6X = "10.0.0.201", "2001:db8::201", "10.0.0.202", "2001:db8::202"
SRC4, SRC6 = "10.0.0.1", "2001:db8::1"
PAYLOAD = bytes(range(50))


def eth():
    return Ether(src=CMAC, dst=DIRMAC)


CASES = [
    # name, packet, real server, outer family
    ("4in4_df", eth() / IP(src=C4, dst=V4, ttl=64, flags="DF", tos=0xbb) / TCP(sport=1, dport=80, flags="S"), RS_TUN4, 4),
    ("4in4_nodf", eth() / IP(src=C4, dst=V4, ttl=20, tos=0x01, id=777) / UDP(sport=2, dport=80) / PAYLOAD, RS_TUN4, 4),
    ("6in6", eth() / IPv6(src=C6, dst=V6, hlim=33, tc=0xbb) / IPv6ExtHdrDestOpt() / TCP(sport=3, dport=80) / PAYLOAD, RS_TUN6, 6),
    ("4in6", eth() / IP(src=C4, dst=V4X, ttl=64, flags="DF") / SCTP(sport=4, dport=80) / SCTPChunkData(data=PAYLOAD), RS_TUN4IN6, 6),
    ("6in4", eth() / IPv6(src=C6, dst=V6X, hlim=64) / UDP(sport=5, dport=80) / PAYLOAD, RS_TUN6IN4, 4),
]


def run(tmp_path, cases, name="tun.pcap", **kw):
    eng = make_engine()
    pkts = [c[1] for c in cases]
    dec = decisions(len(pkts), action=ACT_HIT, dir=DIR_IN, fwd=CF_TUNNEL, rs=[c[2] for c in cases],
                    dport=80, vport=80)
    fw = Forwarder(eng, **kw)
    frames, _, n = forward_to_file(fw, batch_of(pkts), dec, tmp_path / name)
    return fw, pkts, frames, n


def ecn_encap(tos):
    return (tos & 0xfc) | (2 if tos & 3 == 3 else tos & 3)


@needs_tshark
def test_ipip_all_family_combinations(tmp_path):
    fw, pkts, frames, n = run(tmp_path, CASES, tunnel_source=[SRC4, SRC6])
    assert n == len(CASES) and fw.counters["tun"] == len(CASES)
    for (name, orig, rs, oaf), (_, cap, wire, out) in zip(CASES, frames):
        orig_b = bytes(orig)
        af, hl, proto, src, dst, tot = parse_ip(out[14:])
        assert af == oaf, name
        assert struct.unpack("!H", out[12:14])[0] == (0x0800 if oaf == 4 else 0x86dd), name
        inner = out[14 + hl:]
        iaf = inner[0] >> 4
        assert proto == (4 if iaf == 4 else 41), name
        # inner packet: the original with its TTL decremented (and IPv4 checksum fixed)
        o_inner = bytearray(orig_b[14:])
        if iaf == 4:
            o_inner[8] -= 1
            ttl = o_inner[8]
            assert inner[:8] + inner[9:10] + inner[12:] == bytes(o_inner[:8] + o_inner[9:10] + o_inner[12:]), name
            itos = o_inner[1]
        else:
            o_inner[7] -= 1
            ttl = o_inner[7]
            assert inner == bytes(o_inner), name
            itos = ((o_inner[0] & 15) << 4) | (o_inner[1] >> 4)
        assert tot == len(out) - 14 and cap == wire == len(out), name
        import ipaddress
        assert str(ipaddress.ip_address(dst)) == RS[rs], name
        assert str(ipaddress.ip_address(src)) == (SRC4 if oaf == 4 else SRC6), name
        o = out[14:]
        if oaf == 4:
            assert o[8] == ttl and o[1] == ecn_encap(itos), name
            df = iaf == 4 and bool(orig_b[14 + 6] & 0x40)
            assert bool(o[6] & 0x40) == df and (o[6] & 0x3f) == 0 and o[7] == 0, name
            ident = struct.unpack("!H", o[4:6])[0]
            assert (ident == 0) == df, name
        else:
            tc = ((o[0] & 15) << 4) | (o[1] >> 4)
            assert o[7] == ttl and tc == ecn_encap(itos) and o[1] & 15 == 0 and o[2:4] == b"\0\0", name
        check_all_checksums(o)
    assert tshark_bad(tmp_path / "tun.pcap") == ""
    rows = tshark_fields(tmp_path / "tun.pcap", ["ip.dst", "ipv6.dst"])
    outer = [(r[0] if c[3] == 4 else r[1]).split(",")[0] for r, c in zip(rows, CASES)]
    assert outer == [RS[c[2]] for c in CASES]


def test_default_tunnel_source_is_the_vip_and_mixed_families_need_one(tmp_path):
    fw, pkts, frames, n = run(tmp_path, CASES)
    assert n == 3 and fw.counters["no_tunnel_source"] == 2 and fw.counters["dropped"] == 2
    for f in frames:
        af, hl, proto, src, dst, tot = parse_ip(f[3][14:])
        inner = parse_ip(f[3][14 + hl:])
        assert src == inner[4]      # outer source = the inner destination (VIP)


@needs_tshark
@pytest.mark.parametrize("spec,extra", [("gue:6080", 12), ({"type": "gue", "port": 6080, "csum": True}, 12),
                                        ("gre", 4), ({"type": "gre", "csum": True}, 8)])
def test_gue_and_gre(tmp_path, spec, extra):
    fw, pkts, frames, n = run(tmp_path, CASES, name="enc.pcap", tunnel_source=[SRC4, SRC6],
                              tunnel=spec)
    assert n == len(CASES)
    is_gue = "gue" in str(spec)
    csum = isinstance(spec, dict) and spec.get("csum")
    for (name, orig, rs, oaf), (_, _, _, out) in zip(CASES, frames):
        af, hl, proto, src, dst, tot = parse_ip(out[14:])
        iaf = bytes(orig)[14] >> 4
        t = out[14 + hl:]
        if is_gue:
            assert proto == 17, name
            sport, dport, ulen, ck = struct.unpack("!HHHH", t[:8])
            assert dport == 6080 and 32768 <= sport < 60999 and ulen == len(t), name
            assert (ck != 0) == bool(csum), name
            assert t[8] == 0 and t[9] == (4 if iaf == 4 else 41) and t[10:12] == b"\0\0", name
        else:
            assert proto == 47, name
            flags, ptype = struct.unpack("!HH", t[:4])
            assert flags == (0x8000 if csum else 0) and ptype == (0x0800 if iaf == 4 else 0x86dd), name
        assert (t[extra] >> 4) == iaf, name
        checked = check_all_checksums(out[14:])
        if csum:
            assert ("gre" in checked) or ("udp" in checked), (name, checked)
    assert tshark_bad(tmp_path / "enc.pcap") == ""


def test_gue_source_port_is_per_flow(tmp_path):
    p1 = eth() / IP(src=C4, dst=V4) / TCP(sport=1000, dport=80)
    p2 = eth() / IP(src=C4, dst=V4) / TCP(sport=1000, dport=80, flags="A")
    p3 = eth() / IP(src=C4, dst=V4) / TCP(sport=1001, dport=80)
    cases = [("a", p1, RS_TUN4, 4), ("b", p2, RS_TUN4, 4), ("c", p3, RS_TUN4, 4)]
    _, _, frames, _ = run(tmp_path, cases, tunnel="gue:5555")
    ports = [struct.unpack("!H", f[3][14 + 20:14 + 22])[0] for f in frames]
    assert ports[0] == ports[1] != ports[2]


def test_mtu_and_df(tmp_path):
    big_df = eth() / IP(src=C4, dst=V4, flags="DF") / UDP(sport=9, dport=80) / bytes(1472)
    big = eth() / IP(src=C4, dst=V4) / UDP(sport=9, dport=80) / bytes(1472)
    big6 = eth() / IPv6(src=C6, dst=V6) / UDP(sport=9, dport=80) / bytes(1452)
    small = eth() / IP(src=C4, dst=V4, flags="DF") / UDP(sport=9, dport=80) / bytes(1452)
    cases = [("df", big_df, RS_TUN4, 4), ("nodf", big, RS_TUN4, 4), ("v6", big6, RS_TUN6, 6),
             ("small", small, RS_TUN4, 4)]
    fw, _, frames, n = run(tmp_path, cases, mtu=1500)
    assert n == 2 and fw.counters["too_big"] == 2
    assert [len(f[3]) - 14 for f in frames] == [1520, 1500]


def test_tunnel_options_are_validated():
    eng = make_engine()
    with pytest.raises(ValueError, match="GUE tunnel needs a destination port"):
        Forwarder(eng, tunnel="gue")
    with pytest.raises(ValueError, match="unknown tunnel type"):
        Forwarder(eng, tunnel="vxlan")
    with pytest.raises(ValueError, match="IPIP has no checksum"):
        Forwarder(eng, tunnel={"type": "ipip", "csum": True})
    with pytest.raises(ValueError, match="more than one IPv4"):
        Forwarder(eng, tunnel_source=["10.0.0.1", "10.0.0.2"])
    with pytest.raises(ValueError, match="not an IP address"):
        Forwarder(eng, tunnel_source="nope")


def test_per_server_tunnel_types(tmp_path):
    cases = [("a", CASES[0][1], RS_TUN4, 4), ("b", CASES[2][1], RS_TUN6, 6)]
    _, _, frames, _ = run(tmp_path, cases, tunnels={RS[RS_TUN6]: "gre"})
    assert parse_ip(frames[0][3][14:])[2] == 4
    assert parse_ip(frames[1][3][14:])[2] == 47
