"""The firewall-mark classifier (ipvsflow.engine.classify): netfilter's mark semantics on parsed
packets, the C classifier against a plain-Python reading of the rules on random packets, and the
engine with marks (fwmark services, the two fwmark oracle fixtures).

Frames are built here with struct (valid IPv4 header checksums, so the kernel test module can send
the same frames into a network namespace) and parsed by ipvsflow's own parser.
"""
from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ipvsflow.config import Config, ConfigError, parse_rules
from ipvsflow.io import PacketBatch
from ipvsflow.marks import MARK_MAX, MarkRule, parse_mark, parse_marks

classify = pytest.importorskip("ipvsflow.engine.classify",
                               reason="compiled classifier missing: python setup.py build_ext --inplace")
Classifier = classify.Classifier

T0 = 1_700_000_000 * 10**9
TCP, UDP, SCTP, ICMP, ICMP6, ESP = 6, 17, 132, 1, 58, 50
MAC_DST = bytes.fromhex("020000000002")
MAC_SRC = bytes.fromhex("020000000001")


# ---------------------------------------------------------------------------------------------
# frames

def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def l4_bytes(proto: int, sport: int, dport: int, v6: bool) -> bytes:
    if proto == TCP:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    if proto == UDP:
        return struct.pack("!HHHH", sport, dport, 12, 0) + b"abcd"
    if proto == SCTP:   # common header + one DATA chunk
        return struct.pack("!HHII", sport, dport, 7, 0) + struct.pack("!BBHIHHI", 0, 3, 16, 1, 0, 0, 0)
    if proto in (ICMP, ICMP6):
        return struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 1, 1) + b"ping"
    return struct.pack("!II", 0x1000, 1) + b"\0" * 8          # ESP and others: no ports


def frame(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, *, ident: int = 1,
          frag: str = "", mac: bytes = MAC_DST) -> bytes:
    """Ethernet + IPv4/IPv6 + L4. ``ident`` is the IPv4 id / IPv6 flow label (kernel test: the
    packet's key). ``frag``: '' whole packet, 'first' (MF, offset 0), 'later' (offset 8, no L4)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    v6 = s.version == 6
    l4 = l4_bytes(proto, sport, dport, v6)
    if frag == "later":
        l4 = b"\x55" * 16
    if not v6:
        fl = (0x2000 if frag == "first" else 0) | (1 if frag == "later" else 0)
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident & 0xFFFF, fl, 64, proto, 0, s.packed, d.packed)
        h = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
        return mac + MAC_SRC + b"\x08\x00" + h + l4
    nh = proto
    if frag:
        fh = struct.pack("!BBHI", proto, 0, (1 << 3) if frag == "later" else 1, ident)
        l4, nh = fh + l4, 44
    h = struct.pack("!IHBB16s16s", (6 << 28) | (ident & 0xFFFFF), len(l4), nh, 64, s.packed, d.packed)
    return mac + MAC_SRC + b"\x86\xdd" + h + l4


def batch_of(frames) -> PacketBatch:
    return PacketBatch.from_packets([(T0 + i * 1000, f) for i, f in enumerate(frames)])


def marks_of(rules, frames) -> list:
    b = batch_of(frames)
    return Classifier(rules).classify(b)


# ---------------------------------------------------------------------------------------------
# a plain-Python reading of MarkRule (the reference for the property test)

def _ref_match(r: MarkRule, pkt: dict, mark: int) -> bool:
    if r.family and r.family != pkt["af"]:
        return False
    if r.protos and (pkt["proto"] in r.protos) == r.protos_neg:
        return False
    if r.port_protos and not (pkt["ports"] and pkt["proto"] in r.port_protos):
        return False
    for name in ("src", "dst"):
        ranges = getattr(r, name)
        if ranges:
            a = pkt[name]
            inside = any(a.version == lo.version and lo <= a <= hi for lo, hi in ranges)
            if inside == getattr(r, name + "_neg"):
                return False
    for name in ("sport", "dport"):
        ranges = getattr(r, name)
        if ranges:
            inside = any(lo <= pkt[name] <= hi for lo, hi in ranges)
            if inside == getattr(r, name + "_neg"):
                return False
    if r.mark_match is not None:
        v, m = r.mark_match
        if ((mark & m) == v) == r.mark_match_neg:
            return False
    return True


def ref_mark(rules, pkt: dict) -> int:
    if not pkt["l3"]:
        return 0
    chains: dict = {}
    for k, r in enumerate(rules):
        chains.setdefault(r.chain, ({"prerouting": 0, "input": 1}[r.hook], r.priority, k, []))[3].append(r)
    mark = 0
    for _, _, _, members in sorted(chains.values(), key=lambda c: c[:3]):
        for r in members:
            if _ref_match(r, pkt, mark):
                mark = (mark & r.mark_and) ^ r.mark_xor
                if r.stop:
                    break
    return mark


# ---------------------------------------------------------------------------------------------
# semantics, hand-computed

VIP = "203.0.113.10"


def test_fixture_rule_marks_80_and_443_only():
    rules = parse_marks(open("tests/fixtures/oracle/fwmark_rr_dr/nft").read())
    got = marks_of(rules, [frame("198.51.100.1", VIP, TCP, 48100, 80), frame("198.51.100.1", VIP, TCP, 48100, 443),
                           frame("198.51.100.1", VIP, TCP, 48100, 8080), frame("198.51.100.1", VIP, UDP, 48100, 80),
                           frame("198.51.100.1", "203.0.113.11", TCP, 48100, 80)])
    assert got == [1, 1, 0, 0, 0]


def test_every_matching_mark_rule_applies_last_one_wins():
    rules = parse_marks("""
iptables -t mangle -A PREROUTING -p tcp -d 10.0.0.1 --dport 80 -j MARK --set-mark 1
iptables -t mangle -A PREROUTING -p tcp -s 192.0.2.0/24 -j MARK --set-mark 2
iptables -t mangle -A PREROUTING -p tcp -j MARK --or-mark 0x100
""")
    got = marks_of(rules, [frame("198.51.100.1", "10.0.0.1", TCP, 1000, 80),      # 1, then | 0x100
                           frame("192.0.2.7", "10.0.0.1", TCP, 1000, 80),         # 1, 2, | 0x100
                           frame("192.0.2.7", "10.0.0.1", UDP, 1000, 80),         # no rule
                           frame("198.51.100.1", "10.0.0.1", TCP, 1000, 81)])     # only the or
    assert got == [0x101, 0x102, 0, 0x100]


def test_accept_ends_only_its_own_chain():
    rules = parse_marks("""
table ip a {
  chain late { type filter hook prerouting priority 10; tcp dport 80 meta mark set mark or 0x10; }
  chain early {
    type filter hook prerouting priority -200;
    tcp dport 80 meta mark set 1 accept
    tcp dport 80 meta mark set 2
  }
}
""")
    # early: mark 1 then accept (skips 'set 2'); late (priority 10, defined first but runs later): | 0x10
    assert marks_of(rules, [frame("198.51.100.1", VIP, TCP, 1, 80), frame("198.51.100.1", VIP, TCP, 1, 81)]) == [0x11, 0]


def test_iptables_return_and_chain_order_by_table():
    rules = parse_marks("""
iptables -t mangle -A PREROUTING -p tcp -j MARK --set-mark 5
iptables -t raw -A PREROUTING -p tcp -j MARK --set-mark 7
iptables -t filter -A INPUT -p tcp -m mark --mark 5 -j MARK --xor-mark 3
iptables -t mangle -A INPUT -p tcp -j RETURN
iptables -t mangle -A INPUT -p tcp -j MARK --set-mark 99
""")
    # raw PREROUTING (7) < mangle PREROUTING (5) < mangle INPUT (RETURN before 99) < filter INPUT (5 ^ 3)
    assert marks_of(rules, [frame("198.51.100.1", VIP, TCP, 1, 80)]) == [6]


def test_negation_v4_and_v6():
    rules = parse_marks("""
iptables -t mangle -A PREROUTING ! -s 10.0.0.0/8 -p tcp ! --dport 22 -j MARK --set-mark 1
ip6tables -t mangle -A PREROUTING ! -d 2001:db8::/32 ! -p udp -j MARK --set-mark 2
""")
    got = marks_of(rules, [frame("11.0.0.1", VIP, TCP, 5, 80),          # 1
                           frame("10.1.2.3", VIP, TCP, 5, 80),          # src in 10/8: none
                           frame("11.0.0.1", VIP, TCP, 5, 22),          # dport 22: none
                           frame("11.0.0.1", VIP, UDP, 5, 80),          # not tcp: none
                           frame("2001:db9::1", "2001:db9::2", TCP, 5, 80),   # 2 (v4 rule does not apply)
                           frame("2001:db9::1", "2001:db8::2", TCP, 5, 80),   # dst in 2001:db8::/32
                           frame("2001:db9::1", "2001:db9::2", UDP, 5, 80)])  # udp
    assert got == [1, 0, 0, 0, 2, 0, 0]


def test_ports_never_match_non_first_fragments():
    rules = parse_marks("""
nft add rule ip t c tcp dport 80 meta mark set 1
nft add rule ip t c tcp dport != 80 meta mark set 2
nft add rule ip t c meta l4proto tcp meta mark set mark or 0x10
nft add rule ip6 t c ip6 saddr 2001:db8::1 meta mark set mark or 0x20
""")
    got = marks_of(rules, [frame("198.51.100.1", VIP, TCP, 1, 80, frag="first"),
                           frame("198.51.100.1", VIP, TCP, 1, 80, frag="later"),
                           frame("2001:db8::1", "2001:db8::2", TCP, 1, 80, frag="later")])
    # a non-first fragment has no ports: neither '== 80' nor '!= 80' matches; the protocol does
    assert got == [0x11, 0x10, 0x20]


def test_mark_match_sees_the_mark_so_far_and_masks():
    rules = [*parse_mark("tcp -> 0x12"), *parse_mark("mark 0x2/0xf -> 0x40/0xf0"), *parse_mark("mark !0x42 -> 7")]
    # 0x12 -> (0x12 & 0xf) == 2 -> --set-mark 0x40/0xf0: clears 0xf0, sets 0x40 -> 0x42 -> not != 0x42
    assert marks_of(rules, [frame("198.51.100.1", VIP, TCP, 1, 80), frame("198.51.100.1", VIP, UDP, 1, 80)]) == [0x42, 7]


def test_inet_rule_without_address_applies_to_both_families():
    rules = parse_marks("table inet t { chain c { type filter hook prerouting priority 0; udp dport 53 meta mark set 9; } }")
    assert rules[0].family == 0
    assert marks_of(rules, [frame("198.51.100.1", VIP, UDP, 1, 53), frame("2001:db8::1", "2001:db8::2", UDP, 1, 53),
                            frame("2001:db8::1", "2001:db8::2", TCP, 1, 53)]) == [9, 9, 0]


def test_packets_without_an_ip_header_get_no_mark():
    rules = parse_mark("-> 5")              # every IP packet
    arp = MAC_DST + MAC_SRC + b"\x08\x06" + b"\x00" * 28
    trunc = frame("198.51.100.1", VIP, TCP, 1, 80)[:30]       # IPv4 header cut short
    short_l4 = frame("198.51.100.1", VIP, TCP, 1, 80)[:14 + 20 + 8]   # TCP header cut: L3 is fine
    full = len(frame("198.51.100.1", VIP, TCP, 1, 80))
    # cut by the capture's snap length: the wire length is the whole packet's
    b = PacketBatch.from_packets([(T0, arp), (T0 + 1, trunc, full), (T0 + 2, short_l4, full),
                                  (T0 + 3, frame("2001:db8::1", "2001:db8::2", ESP))])
    assert Classifier(rules).classify(b) == [0, 0, 5, 5]


def test_classify_overwrites_stale_marks_and_respects_the_range():
    b = batch_of([frame("198.51.100.1", VIP, TCP, 1, 80)] * 4)
    rows = b.to_numpy()
    rows["fwmark"] = 77
    c = Classifier(parse_mark("tcp dport 80 -> 3"))
    assert c.classify(b, 1, 3) == [3, 3]
    assert list(b.to_numpy()["fwmark"]) == [77, 3, 3, 77]
    assert c.mark_of(b, 0) == 3 and b.to_numpy()["fwmark"][0] == 77
    with pytest.raises(ValueError):
        c.classify(b, 3, 5)
    with pytest.raises(IndexError):
        c.mark_of(b, 4)


def test_evaluation_order_is_hook_priority_then_definition():
    rules = parse_marks("""
table inet x { chain in0 { type filter hook input priority -300; meta mark set 1; } }
table inet y { chain pre { type filter hook prerouting priority 0; meta mark set 2; } }
--mark '-> 3'
iptables -t raw -A PREROUTING -j MARK --set-mark 4
""")
    order = [r.mark_xor for r in Classifier(rules).rules]
    assert order == [4, 3, 2, 1]       # raw -300, compact -150, pre 0, then input chains


def test_classifier_rejects_inconsistent_rules():
    r = parse_mark("tcp dport 80 -> 1")[0]
    from dataclasses import replace
    with pytest.raises(ValueError, match="port"):
        Classifier([replace(r, port_protos=())])
    with pytest.raises(ValueError, match="hook/priority"):
        Classifier([r, replace(r, priority=0)])


# ---------------------------------------------------------------------------------------------
# the C classifier against the Python reading, on random rules and packets

V4_SRC = ["10.0.0.1", "10.0.0.2", "10.0.1.5", "192.0.2.1"]
V4_DST = ["203.0.113.10", "203.0.113.11", "198.51.100.7"]
V6_SRC = ["2001:db8::1", "2001:db8::2", "2001:db8:1::5", "fd00::1"]
V6_DST = ["2001:db8:ff::10", "2001:db8:ff::11", "fd00:1::7"]
PORTS = [0, 22, 53, 80, 443, 1000, 1500, 2000, 65535]
CHAINS = [("a", "prerouting", -150), ("b", "prerouting", -300), ("c", "input", -150), ("d", "prerouting", -150)]


def _ranges_of(pool, draw, family):
    out = []
    for _ in range(draw(st.integers(1, 3))):
        a = ipaddress.ip_address(draw(st.sampled_from(pool)))
        kind = draw(st.sampled_from(["one", "prefix", "range"]))
        if kind == "one":
            out.append((a, a))
        elif kind == "prefix":
            plen = draw(st.sampled_from([8, 16, 24, 31, 32] if family == 4 else [16, 32, 48, 64, 127, 128]))
            n = ipaddress.ip_network(f"{a}/{plen}", strict=False)
            out.append((n.network_address, n.broadcast_address))
        else:
            b = ipaddress.ip_address(draw(st.sampled_from(pool)))
            out.append((min(a, b), max(a, b)))
    return tuple(out)


@st.composite
def mark_rules(draw):
    family = draw(st.sampled_from([0, 4, 6]))
    kw: dict = {"family": family}
    if draw(st.booleans()):
        kw["protos"] = tuple(draw(st.sets(st.sampled_from([TCP, UDP, SCTP, ICMP, ICMP6, ESP]), min_size=1, max_size=3)))
        kw["protos_neg"] = draw(st.booleans())
    if family and draw(st.booleans()):
        kw["src"] = _ranges_of(V4_SRC if family == 4 else V6_SRC, draw, family)
        kw["src_neg"] = draw(st.booleans())
    if family and draw(st.booleans()):
        kw["dst"] = _ranges_of(V4_DST if family == 4 else V6_DST, draw, family)
        kw["dst_neg"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["port_protos"] = tuple(draw(st.sets(st.sampled_from([TCP, UDP, SCTP]), min_size=1, max_size=3)))
        for name in ("sport", "dport"):
            if draw(st.booleans()):
                rs = []
                for _ in range(draw(st.integers(1, 3))):
                    a, b = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
                    rs.append((min(a, b), max(a, b)))
                kw[name] = tuple(rs)
                kw[name + "_neg"] = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        kw["mark_match"] = (draw(st.integers(0, 7)), draw(st.sampled_from([MARK_MAX, 0x7, 0x3])))
        kw["mark_match_neg"] = draw(st.booleans())
    kw["mark_and"] = draw(st.sampled_from([0, MARK_MAX, 0xFFFFFFF0, 0x0F]))
    kw["mark_xor"] = draw(st.integers(0, 15))
    kw["stop"] = draw(st.integers(0, 4)) == 0
    label, hook, prio = draw(st.sampled_from(CHAINS))
    return MarkRule(chain=label, hook=hook, priority=prio, **kw)


@st.composite
def packets(draw):
    v6 = draw(st.booleans())
    src = draw(st.sampled_from(V6_SRC if v6 else V4_SRC))
    dst = draw(st.sampled_from(V6_DST if v6 else V4_DST))
    proto = draw(st.sampled_from([TCP, UDP, SCTP, ICMP6 if v6 else ICMP, ESP]))
    sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    frag = draw(st.sampled_from(["", "", "", "first", "later"]))
    return frame(src, dst, proto, sport, dport, frag=frag)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mark_rules(), max_size=12), st.lists(packets(), min_size=1, max_size=24))
def test_classifier_matches_the_python_reading(rules, frames):
    b = batch_of(frames)
    rows = b.to_numpy()
    expected = []
    for i in range(len(frames)):
        row = b.row(i)
        pkt = {"af": row["af"], "proto": row["proto"], "sport": row["sport"], "dport": row["dport"],
               "src": ipaddress.ip_address(row["src"]), "dst": ipaddress.ip_address(row["dst"]),
               "ports": row["status"] == 0, "l3": row["status"] in (0, 1)}
        # addresses come back in the packet's family (IPv4 not mapped)
        expected.append(ref_mark(rules, pkt))
    got = Classifier(rules).classify(b)
    assert got == expected
    assert list(rows["fwmark"]) == expected


# ---------------------------------------------------------------------------------------------
# the engine with marks

def _engine_config(text: str) -> Config:
    return parse_rules(text)


def _run(cfg: Config, frames):
    from ipvsflow.engine import ACTIONS, Engine
    eng = Engine(cfg)
    b = batch_of(frames)
    dec = eng.process(b)
    return [ACTIONS[int(a)] for a in dec["action"]], [int(s) for s in dec["svc"]], b


def test_engine_classifies_for_fwmark_services():
    cfg = _engine_config(f"""
-A -f 1 -s rr
-a -f 1 -r 192.0.2.11:0 -g
-A -f 2 -s rr
-a -f 2 -r 192.0.2.12:0 -g
iptables -t mangle -A PREROUTING -p tcp -d {VIP} -m multiport --dports 80,443 -j MARK --set-mark 1
--mark 'tcp src 198.51.100.0/28 dst {VIP} dport 443 -> 2'
""")
    frames = [frame("198.51.100.100", VIP, TCP, 40000, 80), frame("198.51.100.100", VIP, TCP, 40001, 443),
              frame("198.51.100.2", VIP, TCP, 40002, 443), frame("198.51.100.2", VIP, TCP, 40003, 8080)]
    actions, svcs, b = _run(cfg, frames)
    assert actions == ["new", "new", "new", "pass"]
    assert svcs[:3] == [0, 0, 1]          # the later compact rule overrides the mark for 198.51.100.0/28
    assert list(b.to_numpy()["fwmark"]) == [1, 1, 2, 0]


def test_engine_without_marks_leaves_fwmark_services_unused():
    cfg = _engine_config("-A -f 1 -s rr\n-a -f 1 -r 192.0.2.11:0 -g\n")
    actions, _, b = _run(cfg, [frame("198.51.100.1", VIP, TCP, 40000, 80)])
    assert actions == ["pass"]
    assert list(b.to_numpy()["fwmark"]) == [0]


def test_engine_ipv6_fwmark_service():
    cfg = _engine_config("""
-A -f 7 -6 -s rr
-a -f 7 -6 -r [2001:db8:2::11]:0 -g
table ip6 m { chain p { type filter hook prerouting priority mangle; ip6 daddr 2001:db8:1::/64 udp dport 5000-5010 meta mark set 7; } }
""")
    actions, _, _ = _run(cfg, [frame("2001:db8::1", "2001:db8:1::10", UDP, 1000, 5005),
                               frame("2001:db8::1", "2001:db8:1::10", UDP, 1000, 5011),
                               frame("198.51.100.1", VIP, UDP, 1000, 5005)])
    assert actions == ["new", "pass", "pass"]


def test_engine_config_error_for_bad_mark_line():
    with pytest.raises(ConfigError, match=r"r\.conf:2: .*filtering is not modelled"):
        parse_rules("-A -f 1 -s rr\niptables -t mangle -A PREROUTING -p tcp -j DROP\n", source="r.conf")


# The two real-kernel fixtures, run here whatever ipvsflow.engine.FEATURES says (the conformance
# module treats fwmark_persistent_dr as expected to fail until "persistence" is listed too).
@pytest.mark.parametrize("name", ["fwmark_rr_dr", "fwmark_persistent_dr"])
def test_fwmark_oracle_fixtures(name):
    import oracle_harness as H
    fx = H.load_fixture(name)
    assert H.build_config(fx).marks, "the harness did not read the fixture's nft file"
    H.assert_matches(fx, H.run_engine(fx, per_packet=True))
    H.assert_matches(fx, H.run_engine(fx, per_packet=False), checks=("forwarding", "replies", "final", "rs_sequence"))


def test_fwmark_fixture_needs_the_marks():
    """Without the nft rules no packet reaches the fwmark service: the comparison must fail."""
    import oracle_harness as H
    fx = H.load_fixture("fwmark_rr_dr")
    build = H.build_config

    def no_marks(f):
        cfg = build(f)
        cfg.marks = []
        return cfg
    H.build_config = no_marks
    try:
        msgs = H.compare(fx, H.run_engine(fx, per_packet=True))
    finally:
        H.build_config = build
    assert any("did not forward" in m or "kernel forwarded" in m for m in msgs), msgs
