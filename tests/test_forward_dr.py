"""DR forwarding (direct routing): MAC rewrite, neighbour table (static and learned), TTL, and
link types without a destination MAC."""
from scapy.all import Ether, Dot1Q, IP, IPv6, TCP, UDP, SCTP, SCTPChunkData, ARP

from forward_helpers import (
    ACT_HIT, DIR_IN, DIR_OUT, CF_DROUTE, CF_BYPASS, RS, RS_DR4, RS_DR6,
    batch_of, decisions, make_engine, forward_to_file, check_all_checksums, tshark_bad,
    tshark_fields, needs_tshark,
)
from ipvsflow.forward import Forwarder

CMAC, DIRMAC, RSMAC, RS6MAC = "02:00:00:00:00:01", "02:00:00:00:00:fe", "02:00:00:00:02:01", "02:00:00:00:02:06"
C4, V4, C6, V6 = "192.0.2.10", "10.0.0.200", "2001:db8:c::10", "2001:db8::200"


def client4(ttl=64, sport=40000):
    return Ether(src=CMAC, dst=DIRMAC) / IP(src=C4, dst=V4, ttl=ttl) / TCP(sport=sport, dport=80, flags="A") / (b"x" * 40)


def client6(hlim=64):
    return Ether(src=CMAC, dst=DIRMAC) / IPv6(src=C6, dst=V6, hlim=hlim) / UDP(sport=1234, dport=80) / (b"y" * 40)


def dr_dec(n, rs=RS_DR4):
    return decisions(n, action=ACT_HIT, dir=DIR_IN, fwd=CF_DROUTE, rs=rs, dport=80, vport=80, vaddr=V4)


@needs_tshark
def test_dr_sets_real_server_mac_and_keeps_ip(tmp_path):
    eng = make_engine()
    pkts = [client4(), client6(),
            Ether(src=CMAC, dst=DIRMAC) / IP(src=C4, dst=V4) / SCTP(sport=5, dport=80) / SCTPChunkData(data=b"z" * 9)]
    dec = decisions(3, action=ACT_HIT, dir=DIR_IN, fwd=CF_DROUTE, rs=[RS_DR4, RS_DR6, RS_DR4],
                    dport=80, vport=80, vaddr=[V4, V6, V4])
    fw = Forwarder(eng, neighbours={RS[RS_DR4]: RSMAC, RS[RS_DR6]: RS6MAC})
    frames, _, n = forward_to_file(fw, batch_of(pkts), dec, tmp_path / "dr.pcap")
    assert n == 3 and fw.counters["dr"] == 3
    for orig, (_, cap, wire, out), mac in zip(pkts, frames, (RSMAC, RS6MAC, RSMAC)):
        o, orig = Ether(out), Ether(bytes(orig))
        assert o.dst == mac
        assert o.src == DIRMAC      # default: the frame's original destination (the director)
        # IP untouched except the TTL / hop limit (and the IPv4 header checksum)
        if IPv6 in o:
            assert o[IPv6].hlim == orig[IPv6].hlim - 1
            o[IPv6].hlim += 1
            assert bytes(o[IPv6]) == bytes(orig[IPv6])
        else:
            assert o[IP].ttl == orig[IP].ttl - 1
            assert (o[IP].src, o[IP].dst) == (C4, V4)
            assert bytes(o[IP].payload) == bytes(orig[IP].payload)
        check_all_checksums(out[14:])
    assert tshark_bad(tmp_path / "dr.pcap") == ""
    rows = tshark_fields(tmp_path / "dr.pcap", ["eth.dst", "eth.src", "ip.dst", "ipv6.dst"])
    assert [r[0] for r in rows] == [RSMAC, RS6MAC, RSMAC]
    assert [r[2] or r[3] for r in rows] == [V4, V6, V4]


def test_dr_director_mac_and_vlan_tags(tmp_path):
    eng = make_engine()
    p = Ether(src=CMAC, dst=DIRMAC) / Dot1Q(vlan=42) / IP(src=C4, dst=V4) / TCP(sport=1, dport=80)
    fw = Forwarder(eng, neighbours={RS[RS_DR4]: RSMAC}, director_mac="02:aa:bb:cc:dd:ee")
    frames, _, _ = forward_to_file(fw, batch_of([p]), dr_dec(1), tmp_path / "v.pcap")
    o = Ether(frames[0][3])
    assert (o.dst, o.src, o[Dot1Q].vlan) == (RSMAC, "02:aa:bb:cc:dd:ee", 42)
    check_all_checksums(frames[0][3][18:])


def test_dr_without_a_known_mac_is_dropped(tmp_path):
    eng = make_engine()
    fw = Forwarder(eng, learn_neighbours=False)
    frames, _, n = forward_to_file(fw, batch_of([client4()]), dr_dec(1), tmp_path / "x.pcap")
    assert n == 0 and frames == []
    assert fw.counters["no_neighbour"] == 1 and fw.counters["dropped"] == 1


def test_dr_learns_macs_from_the_capture(tmp_path):
    """The MAC seen as source of the real server's own packets (or its ARP) is used for the
    packets after it; a static entry wins over what is seen."""
    eng = make_engine()
    from_rs = Ether(src=RSMAC, dst=DIRMAC) / IP(src=RS[RS_DR4], dst="10.0.0.1") / UDP(sport=1, dport=2)
    arp6 = Ether(src=RS6MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=RS6MAC, psrc="10.0.2.99",
                                                              hwdst=DIRMAC, pdst="10.0.0.1")
    pkts = [client4(sport=1), from_rs, client4(sport=2), arp6]
    dec = decisions(4, action=[ACT_HIT, 5, ACT_HIT, 6], dir=[DIR_IN, 0, DIR_IN, 0],
                    fwd=[CF_DROUTE, 0xff, CF_DROUTE, 0xff], rs=[RS_DR4, -1, RS_DR4, -1],
                    dport=80, vport=80, vaddr=V4)
    fw = Forwarder(eng)
    frames, _, n = forward_to_file(fw, batch_of(pkts), dec, tmp_path / "l.pcap")
    assert n == 1 and Ether(frames[0][3])[TCP].sport == 2 and Ether(frames[0][3]).dst == RSMAC
    assert fw.counters["no_neighbour"] == 1
    nb = fw.neighbours()
    assert nb[RS[RS_DR4]] == (RSMAC, "learned")
    assert nb["10.0.2.99"] == (RS6MAC, "learned")
    assert nb[C4] == (CMAC, "learned")
    # static entries are not replaced by what the capture shows
    fw2 = Forwarder(eng, neighbours={RS[RS_DR4]: "02:00:00:00:09:09"})
    frames, _, _ = forward_to_file(fw2, batch_of(pkts), dec, tmp_path / "s.pcap")
    assert [Ether(f[3]).dst for f in frames] == ["02:00:00:00:09:09"] * 2
    assert fw2.neighbours()[RS[RS_DR4]] == ("02:00:00:00:09:09", "static")
    # a first learning pass makes the early packet go too
    fw3 = Forwarder(eng)
    b = batch_of(pkts)
    fw3.learn(b)
    frames, _, n = forward_to_file(fw3, b, dec, tmp_path / "p.pcap")
    assert n == 2


@needs_tshark
def test_dr_from_raw_ip_capture_builds_ethernet(tmp_path):
    """Raw-IP input, Ethernet output: an Ethernet header is built (director MAC given)."""
    eng = make_engine()
    raw_pkts = [bytes(IP(src=C4, dst=V4, ttl=9) / TCP(sport=7, dport=80, flags="S"))]
    b = batch_of(raw_pkts, linktype=101)
    fw = Forwarder(eng, neighbours={RS[RS_DR4]: RSMAC}, director_mac=DIRMAC)
    frames, lt, n = forward_to_file(fw, b, dr_dec(1), tmp_path / "r.pcap", linktype=1)
    assert n == 1 and lt == 1
    o = Ether(frames[0][3])
    assert (o.dst, o.src, o.type, o[IP].ttl) == (RSMAC, DIRMAC, 0x0800, 8)
    assert tshark_bad(tmp_path / "r.pcap") == ""


def test_dr_into_a_link_type_without_macs_is_reported(tmp_path):
    eng = make_engine()
    b = batch_of([client4()])
    fw = Forwarder(eng, neighbours={RS[RS_DR4]: RSMAC})
    frames, lt, n = forward_to_file(fw, b, dr_dec(1), tmp_path / "raw.pcap", linktype=101)
    assert n == 1 and lt == 101 and fw.counters["dr_no_l2"] == 1
    assert IP(frames[0][3]).ttl == 63
    check_all_checksums(frames[0][3])


def test_bypass_and_routed_replies(tmp_path):
    """BYPASS connections go to the packet's own destination; replies of non-NAT connections
    (director on the reply path) are routed unchanged; both with TTL - 1 and next-hop MACs."""
    eng = make_engine()
    pkts = [client4(), Ether(src=RSMAC, dst=DIRMAC) / IP(src=V4, dst=C4) / TCP(sport=80, dport=40000, flags="A")]
    dec = decisions(2, action=ACT_HIT, dir=[DIR_IN, DIR_OUT], fwd=[CF_BYPASS, CF_DROUTE],
                    rs=[-1, RS_DR4], dport=80, vport=80, vaddr=V4)
    fw = Forwarder(eng, neighbours={V4: "02:00:00:00:00:99"}, learn_neighbours=True)
    frames, _, n = forward_to_file(fw, batch_of(pkts), dec, tmp_path / "b.pcap")
    assert n == 2 and fw.counters["bypass"] == 1 and fw.counters["routed"] == 1
    o1, o2 = Ether(frames[0][3]), Ether(frames[1][3])
    assert (o1.dst, o1[IP].dst, o1[IP].ttl) == ("02:00:00:00:00:99", V4, 63)
    # the client's MAC was learned from packet 0, so the reply goes to it
    assert (o2.dst, o2.src, o2[IP].src, o2[IP].ttl) == (CMAC, DIRMAC, V4, 63)
    for f in frames:
        check_all_checksums(f[3][14:])
