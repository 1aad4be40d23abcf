"""NAT forwarding (masquerading): addresses, ports, TTL and every checksum, in and out.

Input packets are built with scapy (valid checksums), decisions by hand. Outputs are checked
three ways: tshark with checksum validation on, tshark's dissected fields, and an independent
plain-Python recomputation of each checksum (tests/forward_helpers.py)."""
import struct

from scapy.all import (
    Ether, IP, IPv6, TCP, UDP, SCTP, SCTPChunkInit, SCTPChunkData, ICMP, ICMPv6DestUnreach,
    IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPOption_RR,
)

from forward_helpers import (
    ACT_NEW, ACT_HIT, DIR_IN, DIR_OUT, CF_MASQ, RS, RS_NAT_TCP4, RS_NAT_UDP4, RS_NAT_SCTP4,
    RS_NAT_TCP6, batch_of, decisions, make_engine, forward_to_file, check_all_checksums,
    tshark_bad, tshark_fields, needs_tshark, parse_ip,
)
from ipvsflow.forward import Forwarder

CMAC, DMAC = "02:00:00:00:00:01", "02:00:00:00:00:fe"
C4, V4, C6, V6 = "192.0.2.10", "10.0.0.100", "2001:db8:c::10", "2001:db8::100"
PAYLOAD = bytes(range(97))


def eth():
    return Ether(src=CMAC, dst=DMAC)


# (name, client packet, real server id, real-server port, virtual port)
IN_CASES = [
    ("tcp4", eth() / IP(src=C4, dst=V4, ttl=64) / TCP(sport=40000, dport=80, flags="PA", seq=7) / PAYLOAD,
     RS_NAT_TCP4, 8080, 80),
    ("tcp4_syn", eth() / IP(src=C4, dst=V4, ttl=2) / TCP(sport=40001, dport=80, flags="S"),
     RS_NAT_TCP4, 8080, 80),
    ("tcp4_options", eth() / IP(src=C4, dst=V4, ttl=30, options=[IPOption_RR(routers=["0.0.0.0"] * 2)])
     / TCP(sport=40002, dport=80, flags="A") / PAYLOAD, RS_NAT_TCP4, 8080, 80),
    ("udp4", eth() / IP(src=C4, dst=V4) / UDP(sport=5000, dport=53) / PAYLOAD, RS_NAT_UDP4, 5353, 53),
    ("sctp4", eth() / IP(src=C4, dst=V4) / SCTP(sport=3000, dport=3868, tag=0)
     / SCTPChunkInit(init_tag=0x1234, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1),
     RS_NAT_SCTP4, 3869, 3868),
    ("sctp4_data", eth() / IP(src=C4, dst=V4) / SCTP(sport=3001, dport=3868, tag=99)
     / SCTPChunkData(tsn=5, data=PAYLOAD), RS_NAT_SCTP4, 3869, 3868),
    ("tcp6", eth() / IPv6(src=C6, dst=V6, hlim=64) / TCP(sport=40000, dport=80, flags="PA") / PAYLOAD,
     RS_NAT_TCP6, 8080, 80),
    ("tcp6_ext", eth() / IPv6(src=C6, dst=V6, hlim=9) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
     / TCP(sport=40003, dport=80, flags="A") / PAYLOAD, RS_NAT_TCP6, 8080, 80),
    ("udp6", eth() / IPv6(src=C6, dst=V6) / UDP(sport=5000, dport=80) / PAYLOAD, RS_NAT_TCP6, 8080, 80),
    ("sctp6", eth() / IPv6(src=C6, dst=V6) / IPv6ExtHdrDestOpt() / SCTP(sport=3000, dport=80, tag=5)
     / SCTPChunkData(tsn=1, data=PAYLOAD), RS_NAT_TCP6, 8080, 80),
]


def run_in(tmp_path, cases, **fw_kw):
    eng = make_engine()
    pkts = [c[1] for c in cases]
    b = batch_of(pkts)
    dec = decisions(len(pkts), action=ACT_NEW, dir=DIR_IN, fwd=CF_MASQ, rs=[c[2] for c in cases],
                    dport=[c[3] for c in cases], vport=[c[4] for c in cases],
                    vaddr=[V6 if IPv6 in c[1] else V4 for c in cases])
    fw = Forwarder(eng, **fw_kw)
    frames, lt, n = forward_to_file(fw, b, dec, tmp_path / "nat_in.pcap")
    return fw, pkts, frames, n


def test_nat_in_rewrites_destination_and_checksums(tmp_path):
    fw, pkts, frames, n = run_in(tmp_path, IN_CASES)
    assert n == len(IN_CASES) == len(frames)
    for (name, orig, rs, dport, vport), (_, cap, wire, out) in zip(IN_CASES, frames):
        orig = Ether(bytes(orig))
        o = Ether(out)
        ip_o, ip_i = (o[IPv6], orig[IPv6]) if IPv6 in orig else (o[IP], orig[IP])
        assert ip_o.dst == RS[rs], name
        assert ip_o.src == ip_i.src, name
        l4 = o[TCP] if TCP in o else o[UDP] if UDP in o else o[SCTP]
        l4_orig = orig[l4.__class__]
        assert l4.dport == dport and l4.sport == l4_orig.sport, name
        if IPv6 in orig:
            assert ip_o.hlim == ip_i.hlim - 1, name
        else:
            assert ip_o.ttl == ip_i.ttl - 1, name
            assert ip_o.options == ip_i.options, name
        # nothing else changed: the payload after the L4 header, the length
        assert bytes(l4.payload) == bytes(l4_orig.payload), name
        assert len(out) == len(bytes(orig)) and cap == wire == len(out), name
        checked = check_all_checksums(out[14:])
        assert checked[0] in ("ip", "tcp", "udp", "sctp"), (name, checked)
        assert any(c in checked for c in ("tcp", "udp", "sctp")), (name, checked)
    c = fw.counters
    assert c["nat_in"] == c["forwarded"] == len(IN_CASES) and c["dropped"] == 0
    assert c["copied"] == len(IN_CASES) and c["in_place"] == 0


@needs_tshark
def test_nat_in_tshark_accepts_every_checksum(tmp_path):
    run_in(tmp_path, IN_CASES)
    path = tmp_path / "nat_in.pcap"
    assert tshark_bad(path) == ""
    rows = tshark_fields(path, ["ip.dst", "ipv6.dst", "tcp.dstport", "udp.dstport", "sctp.dstport",
                                "ip.checksum.status", "tcp.checksum.status", "udp.checksum.status",
                                "sctp.checksum.status"])
    assert len(rows) == len(IN_CASES)
    for (name, orig, rs, dport, _), row in zip(IN_CASES, rows):
        assert RS[rs] in (row[0], row[1]), (name, row)
        assert str(dport) in row[2:5], (name, row)
        statuses = [s for s in row[5:] if s]
        assert statuses and all(s == "1" for s in statuses), (name, row)    # 1 = Good


REPLY_CASES = [
    ("tcp4", eth() / IP(src=RS[RS_NAT_TCP4], dst=C4, ttl=64) / TCP(sport=8080, dport=40000, flags="SA") / PAYLOAD,
     V4, 80),
    ("udp4", eth() / IP(src=RS[RS_NAT_UDP4], dst=C4) / UDP(sport=5353, dport=5000) / PAYLOAD, V4, 53),
    ("sctp4", eth() / IP(src=RS[RS_NAT_SCTP4], dst=C4) / SCTP(sport=3869, dport=3000, tag=7)
     / SCTPChunkData(tsn=3, data=PAYLOAD), V4, 3868),
    ("tcp6", eth() / IPv6(src=RS[RS_NAT_TCP6], dst=C6) / IPv6ExtHdrHopByHop() / TCP(sport=8080, dport=40000, flags="A")
     / PAYLOAD, V6, 80),
    ("udp6", eth() / IPv6(src=RS[RS_NAT_TCP6], dst=C6) / UDP(sport=8080, dport=5000) / PAYLOAD, V6, 80),
]


@needs_tshark
def test_nat_out_restores_vip_as_source(tmp_path):
    eng = make_engine()
    pkts = [c[1] for c in REPLY_CASES]
    dec = decisions(len(pkts), action=ACT_HIT, dir=DIR_OUT, fwd=CF_MASQ,
                    rs=[RS_NAT_TCP4, RS_NAT_UDP4, RS_NAT_SCTP4, RS_NAT_TCP6, RS_NAT_TCP6],
                    vport=[c[3] for c in REPLY_CASES], vaddr=[c[2] for c in REPLY_CASES],
                    dport=[8080, 5353, 3869, 8080, 8080])
    fw = Forwarder(eng)
    frames, _, n = forward_to_file(fw, batch_of(pkts), dec, tmp_path / "out.pcap")
    assert n == len(pkts)
    for (name, orig, vip, vport), (_, _, _, out) in zip(REPLY_CASES, frames):
        o = Ether(out)
        ip_o = o[IPv6] if IPv6 in o else o[IP]
        l4 = o[TCP] if TCP in o else o[UDP] if UDP in o else o[SCTP]
        assert (ip_o.src, l4.sport) == (vip, vport), name
        assert (ip_o.dst, l4.dport) == ((orig[IPv6] if IPv6 in orig else orig[IP]).dst,
                                        orig[l4.__class__].dport), name
        check_all_checksums(out[14:])
    assert fw.counters["nat_out"] == len(pkts)
    assert tshark_bad(tmp_path / "out.pcap") == ""


def test_round_trip_in_then_out_restores_the_tuple(tmp_path):
    """Client packet NATed in; the real server answers the NATed packet; the answer NATed out
    carries exactly the reversed original tuple (and valid checksums)."""
    eng = make_engine()
    fw = Forwarder(eng)
    for name, orig, rs, dport, vport in IN_CASES:
        if SCTP in orig:
            continue
        is6 = IPv6 in orig
        vip = V6 if is6 else V4
        frames, _, _ = forward_to_file(fw, batch_of([orig]), decisions(
            1, action=ACT_NEW, dir=DIR_IN, fwd=CF_MASQ, rs=rs, dport=dport, vport=vport,
            vaddr=vip), tmp_path / "a.pcap")
        natted = Ether(frames[0][3])
        ipn = natted[IPv6] if is6 else natted[IP]
        l4n = natted[TCP] if TCP in natted else natted[UDP]
        # the real server's answer: addresses and ports swapped, same payload
        if is6:
            rip = IPv6(src=ipn.dst, dst=ipn.src, hlim=64)
        else:
            rip = IP(src=ipn.dst, dst=ipn.src, ttl=64)
        rl4 = (TCP(sport=l4n.dport, dport=l4n.sport, flags="A") if TCP in natted
               else UDP(sport=l4n.dport, dport=l4n.sport))
        reply = Ether(src=DMAC, dst=CMAC) / rip / rl4 / bytes(l4n.payload)
        frames, _, _ = forward_to_file(fw, batch_of([reply]), decisions(
            1, action=ACT_HIT, dir=DIR_OUT, fwd=CF_MASQ, rs=rs, dport=dport, vport=vport,
            vaddr=vip), tmp_path / "b.pcap")
        back = Ether(frames[0][3])
        ipb = back[IPv6] if is6 else back[IP]
        l4b = back[TCP] if TCP in back else back[UDP]
        ipo = orig[IPv6] if is6 else orig[IP]
        l4o = orig[TCP] if TCP in orig else orig[UDP]
        assert (ipb.src, l4b.sport, ipb.dst, l4b.dport) == (ipo.dst, l4o.dport, ipo.src, l4o.sport), name
        assert bytes(l4b.payload) == bytes(l4o.payload), name
        check_all_checksums(frames[0][3][14:])


def test_ttl_expiry_is_dropped_and_counted(tmp_path):
    eng = make_engine()
    pkts = [eth() / IP(src=C4, dst=V4, ttl=1) / TCP(sport=1, dport=80, flags="S"),
            eth() / IP(src=C4, dst=V4, ttl=0) / TCP(sport=2, dport=80, flags="S"),
            eth() / IPv6(src=C6, dst=V6, hlim=1) / TCP(sport=3, dport=80, flags="S"),
            eth() / IP(src=C4, dst=V4, ttl=2) / TCP(sport=4, dport=80, flags="S"),
            eth() / IPv6(src=C6, dst=V6, hlim=2) / TCP(sport=5, dport=80, flags="S")]
    dec = decisions(5, action=ACT_NEW, dir=DIR_IN, fwd=CF_MASQ,
                    rs=[RS_NAT_TCP4, RS_NAT_TCP4, RS_NAT_TCP6, RS_NAT_TCP4, RS_NAT_TCP6],
                    dport=8080, vport=80, vaddr=[V4, V4, V6, V4, V6])
    fw = Forwarder(eng)
    frames, _, n = forward_to_file(fw, batch_of(pkts), dec, tmp_path / "ttl.pcap")
    c = fw.counters
    assert n == 2 and c["ttl_expired"] == 3 and c["dropped"] == 3
    assert [Ether(f[3])[TCP].sport for f in frames] == [4, 5]
    assert Ether(frames[0][3])[IP].ttl == 1 and Ether(frames[1][3])[IPv6].hlim == 1
    for f in frames:
        check_all_checksums(f[3][14:])


def test_udp_zero_checksum_is_computed_as_the_kernel_does(tmp_path):
    """udp_dnat_handler: a zero checksum takes the full-calculation branch (it does not stay
    zero). On a truncated capture it cannot be computed: it stays 0 and is counted."""
    eng = make_engine()
    p = eth() / IP(src=C4, dst=V4) / UDP(sport=5000, dport=53, chksum=0) / PAYLOAD
    raw = bytes(p)
    from ipvsflow.io import PacketBatch
    b = PacketBatch.from_packets([(10**18, raw), (10**18 + 1, raw[:60], len(raw))])
    dec = decisions(2, action=ACT_HIT, dir=DIR_IN, fwd=CF_MASQ, rs=RS_NAT_UDP4, dport=5353,
                    vport=53, vaddr=V4)
    fw = Forwarder(eng)
    frames, _, n = forward_to_file(fw, b, dec, tmp_path / "u.pcap")
    assert n == 2
    full = frames[0][3]
    assert struct.unpack("!H", full[14 + 20 + 6:14 + 20 + 8])[0] != 0
    assert check_all_checksums(full[14:]) == ["ip", "udp"]
    cut = frames[1][3]
    assert frames[1][1] == 60 and frames[1][2] == len(raw)
    assert struct.unpack("!H", cut[14 + 20 + 6:14 + 20 + 8])[0] == 0
    assert Ether(cut)[UDP].dport == 5353
    assert fw.counters["csum_skipped"] == 1


def test_truncated_capture_still_gets_incremental_checksums(tmp_path):
    """TCP/UDP checksums are updated incrementally, so a snaplen-cut packet is rewritten
    correctly: restoring the missing bytes gives a valid packet."""
    eng = make_engine()
    p = eth() / IP(src=C4, dst=V4) / TCP(sport=40000, dport=80, flags="A") / PAYLOAD
    raw = bytes(p)
    from ipvsflow.io import PacketBatch
    b = PacketBatch.from_packets([(10**18, raw[:70], len(raw))])
    fw = Forwarder(eng)
    frames, _, _ = forward_to_file(fw, b, decisions(1, action=ACT_HIT, dir=DIR_IN, fwd=CF_MASQ,
                                                    rs=RS_NAT_TCP4, dport=8080, vport=80, vaddr=V4),
                                   tmp_path / "t.pcap")
    restored = frames[0][3] + raw[70:]
    assert check_all_checksums(restored[14:]) == ["ip", "tcp"]


ICMP_CASES = [
    # in: client reports an error about the VIP's packet to it; out: a real server reports an
    # error about the client's (NATed) packet
    ("icmp4_in", DIR_IN, eth() / IP(src=C4, dst=V4) / ICMP(type=3, code=4)
     / IP(src=V4, dst=C4) / TCP(sport=80, dport=40000, flags="A"), RS_NAT_TCP4, V4),
    ("icmp4_out", DIR_OUT, eth() / IP(src=RS[RS_NAT_TCP4], dst=C4) / ICMP(type=3, code=3)
     / IP(src=C4, dst=RS[RS_NAT_TCP4]) / UDP(sport=40000, dport=8080), RS_NAT_TCP4, V4),
    ("icmp6_in", DIR_IN, eth() / IPv6(src=C6, dst=V6) / ICMPv6DestUnreach(code=4)
     / IPv6(src=V6, dst=C6) / TCP(sport=80, dport=40000, flags="A"), RS_NAT_TCP6, V6),
    ("icmp6_out", DIR_OUT, eth() / IPv6(src=RS[RS_NAT_TCP6], dst=C6) / ICMPv6DestUnreach(code=4)
     / IPv6(src=C6, dst=RS[RS_NAT_TCP6]) / TCP(sport=40000, dport=8080, flags="A"), RS_NAT_TCP6, V6),
]


@needs_tshark
def test_icmp_errors_are_natted_with_their_inner_header(tmp_path):
    """ip_vs_nat_icmp(_v6): outer and inner addresses and the inner port follow the
    connection; the IP and ICMP checksums stay valid. The inner TCP/UDP checksum is left as it
    was, as the kernel leaves it (so tshark flags that one, and only that one)."""
    eng = make_engine()
    pkts = [c[2] for c in ICMP_CASES]
    dec = decisions(len(pkts), action=ACT_HIT, dir=[c[1] for c in ICMP_CASES], fwd=CF_MASQ,
                    rs=[c[3] for c in ICMP_CASES], dport=8080, vport=80,
                    vaddr=[c[4] for c in ICMP_CASES], flags=0x04)
    fw = Forwarder(eng)
    frames, _, n = forward_to_file(fw, batch_of(pkts), dec, tmp_path / "icmp.pcap")
    assert n == 4 and fw.counters["icmp_nat"] == 4
    for (name, d, orig, rs, vip), (_, _, _, out) in zip(ICMP_CASES, frames):
        af, hl, proto, src, dst, tot = parse_ip(out[14:])
        inner = out[14 + hl + 8:]
        iaf, ihl, iproto, isrc, idst, _ = parse_ip(inner)
        sport, dport = struct.unpack("!HH", inner[ihl:ihl + 4])
        import ipaddress
        a = lambda x: str(ipaddress.ip_address(x))
        if d == DIR_IN:
            assert a(dst) == RS[rs] and a(isrc) == RS[rs] and sport == 8080, name
        else:
            assert a(src) == vip and a(idst) == vip and dport == 80, name
        checked = check_all_checksums(out[14:])
        assert ("icmp" in checked) or ("icmpv6" in checked), name
        if af == 4:
            h = bytearray(inner[:ihl])
            stored = struct.unpack("!H", h[10:12])[0]
            h[10:12] = b"\0\0"
            from forward_helpers import inet_csum
            assert stored == inet_csum(bytes(h)), name
        # inner L4 checksum: the bytes of the original
        oraw = bytes(orig)
        _, ohl, _, _, _, _ = parse_ip(oraw[14:])
        oinner = oraw[14 + ohl + 8:]
        _, oihl, _, _, _, _ = parse_ip(oinner)
        off = {6: 16, 17: 6}[iproto]
        assert inner[ihl + off:ihl + off + 2] == oinner[oihl + off:oihl + off + 2], name
    rows = tshark_fields(tmp_path / "icmp.pcap", ["ip.checksum.status", "icmp.checksum.status",
                                                  "icmpv6.checksum.status"])
    assert len(rows) == 4
    for row in rows:
        statuses = ",".join(row).replace(",,", ",").strip(",").split(",")
        assert statuses and all(s == "1" for s in statuses if s), row


def test_in_place_rewrite_of_writable_memory(tmp_path):
    eng = make_engine()
    pkts = [c[1] for c in IN_CASES[:4]]
    b, buf = batch_of(pkts, writable=True)
    before = bytes(buf)
    dec = decisions(4, action=ACT_NEW, dir=DIR_IN, fwd=CF_MASQ, rs=[c[2] for c in IN_CASES[:4]],
                    dport=[c[3] for c in IN_CASES[:4]], vport=[c[4] for c in IN_CASES[:4]], vaddr=V4)
    fw = Forwarder(eng)
    frames, _, n = forward_to_file(fw, b, dec, tmp_path / "ip.pcap")
    assert n == 4 and fw.counters["in_place"] == 4 and fw.counters["copied"] == 0
    assert bytes(buf) == b"".join(f[3] for f in frames) != before
    # the same result as the copying path
    fw2 = Forwarder(eng, in_place=False)
    frames2, _, _ = forward_to_file(fw2, batch_of(pkts), dec, tmp_path / "cp.pcap")
    assert [f[3] for f in frames2] == [f[3] for f in frames]
    assert fw2.counters["copied"] == 4


def test_passed_dropped_and_invalid_go_where_they_belong(tmp_path):
    from ipvsflow.io import PcapWriter
    from forward_helpers import read_pcap, ACT_DROP, ACT_PASS, ACT_INVALID, CF_LOCALNODE
    eng = make_engine()
    pkts = [c[1] for c in IN_CASES[:5]]
    dec = decisions(5, action=[ACT_NEW, ACT_DROP, ACT_PASS, ACT_INVALID, ACT_NEW],
                    dir=[DIR_IN, DIR_IN, 0, 0, DIR_IN], fwd=[CF_MASQ, CF_MASQ, 0xff, 0xff, CF_LOCALNODE],
                    rs=[RS_NAT_TCP4, RS_NAT_TCP4, -1, -1, RS_NAT_TCP4], dport=8080, vport=80, vaddr=V4)
    with PcapWriter(str(tmp_path / "local.pcap")) as local:
        fw = Forwarder(eng, local_sink=local)
        frames, _, n = forward_to_file(fw, batch_of(pkts), dec, tmp_path / "fwd.pcap")
    lframes, _ = read_pcap(tmp_path / "local.pcap")
    assert n == 1 and len(frames) == 1
    assert [f[3] for f in lframes] == [bytes(pkts[i]) for i in (2, 3, 4)]   # unchanged
    c = fw.counters
    assert (c["forwarded"], c["dropped"], c["passed"], c["local_written"]) == (1, 1, 3, 3)
    assert (c["engine_drop"], c["pass"], c["invalid"], c["localnode"]) == (1, 1, 1, 1)


def test_replies_captured_after_the_director_are_written_as_captured(tmp_path):
    """In front of the director, NAT replies already show VIP:vport (DESIGN.md "Capture
    point"): they are the director's output and must not be rewritten (or aged) again."""
    eng = make_engine()
    seen = [eth() / IP(src=V4, dst=C4, ttl=63) / TCP(sport=80, dport=40000, flags="SA"),
            eth() / IPv6(src=V6, dst=C6, hlim=1) / TCP(sport=80, dport=40000, flags="A")]
    raw_reply = eth() / IP(src=RS[RS_NAT_TCP4], dst=C4, ttl=64) / TCP(sport=8080, dport=40000, flags="A")
    dec = decisions(3, action=ACT_HIT, dir=DIR_OUT, fwd=CF_MASQ, rs=[RS_NAT_TCP4, RS_NAT_TCP6, RS_NAT_TCP4],
                    dport=8080, vport=80, vaddr=[V4, V6, V4])
    fw = Forwarder(eng)
    frames, _, n = forward_to_file(fw, batch_of(seen + [raw_reply]), dec, tmp_path / "p.pcap")
    assert n == 3
    assert [f[3] for f in frames[:2]] == [bytes(p) for p in seen]
    assert Ether(frames[2][3])[IP].src == V4 and Ether(frames[2][3])[IP].ttl == 63
    c = fw.counters
    assert c["post_nat"] == 2 and c["nat_out"] == 3 and c["ttl_expired"] == 0


def test_fragments(tmp_path):
    """A first fragment carries the L4 checksum of the whole datagram: its incremental update
    is right for the reassembled packet (later fragments only change addresses). SCTP's
    CRC-32C needs the whole packet: on a fragment it is left and counted."""
    from scapy.all import fragment, defragment
    eng = make_engine()
    dgram = IP(src=C4, dst=V4, ttl=64, id=4242) / TCP(sport=40000, dport=80, flags="PA") / (b"z" * 600)
    frags = fragment(dgram, fragsize=256)
    assert len(frags) == 3
    sctp = IP(src=C4, dst=V4, id=99) / SCTP(sport=1, dport=3868) / SCTPChunkData(data=b"q" * 600)
    sfrag = fragment(sctp, fragsize=256)[0]
    pkts = [eth() / f for f in frags] + [eth() / sfrag]
    dec = decisions(4, action=ACT_HIT, dir=DIR_IN, fwd=CF_MASQ,
                    rs=[RS_NAT_TCP4] * 3 + [RS_NAT_SCTP4], dport=[8080] * 3 + [3869],
                    vport=[80] * 3 + [3868], vaddr=V4)
    fw = Forwarder(eng)
    frames, _, n = forward_to_file(fw, batch_of(pkts), dec, tmp_path / "f.pcap")
    assert n == 4
    whole = defragment([IP(f[3][14:]) for f in frames[:3]])
    assert len(whole) == 1
    out = bytes(whole[0])
    assert check_all_checksums(out) == ["ip", "tcp"]
    assert IP(out)[TCP].dport == 8080 and IP(out).dst == RS[RS_NAT_TCP4]
    assert Ether(frames[3][3])[SCTP].dport == 3869
    assert fw.counters["csum_skipped"] == 1
