"""Sinks, link-type conversion, and the Forwarder API's handling of bad input."""
import struct

import numpy as np
import pytest
from scapy.all import Ether, IP, IPv6, TCP, UDP

from forward_helpers import (
    ACT_NEW, ACT_HIT, ACT_PASS, DIR_IN, DIR_NONE, CF_MASQ, CF_TUNNEL, RS, RS_NAT_TCP4, RS_NAT_TCP6,
    RS_TUN4IN6, batch_of, decisions, make_engine, forward_to_file, check_all_checksums, read_pcap,
    tshark_fields, needs_tshark, l3_offset, check_accounting,
)
from ipvsflow.forward import Forwarder, NullSink, open_output, OUTPUT_LINKTYPES
from ipvsflow.io import PcapWriter

C4, V4, C6, V6 = "192.0.2.10", "10.0.0.100", "2001:db8:c::10", "2001:db8::100"


def ip4(sport=1):
    return IP(src=C4, dst=V4, ttl=64) / TCP(sport=sport, dport=80, flags="S")


def ip6(sport=1):
    return IPv6(src=C6, dst=V6, hlim=64) / UDP(sport=sport, dport=80) / b"abc"


# input frames of several link types: (linktype, frame bytes, af)
def framed(lt, pkt):
    raw = bytes(pkt)
    et = 0x0800 if raw[0] >> 4 == 4 else 0x86dd
    af_bsd = 2 if et == 0x0800 else 24
    if lt == 1:
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:fe", type=et)) + raw
    if lt == 101:
        return raw
    if lt == 113:
        return struct.pack("!HHH8sH", 0, 1, 6, bytes.fromhex("020000000001") + b"\0\0", et) + raw
    if lt == 276:
        return struct.pack("!HHIHBB8s", et, 0, 3, 1, 0, 6, bytes.fromhex("020000000001") + b"\0\0") + raw
    if lt == 0:
        return struct.pack("<I", af_bsd) + raw
    if lt == 108:
        return struct.pack("!I", af_bsd) + raw
    if lt == 228 or lt == 229:
        return raw
    raise AssertionError(lt)


IN_LTS = [1, 101, 113, 276, 0, 108]
OUT_LTS = [1, 101, 113, 276, 0, 108, 228, 229]


@needs_tshark
def test_nat_across_link_types(tmp_path):
    """Frames of every input link type (one mixed burst), written in every output link type:
    the IP packet is the same NATed packet, and the link layer is valid for tshark and names
    the right protocol."""
    eng = make_engine()
    from ipvsflow.io import PacketBatch
    items, rs, vaddr, fams = [], [], [], []
    for in_lt in IN_LTS:
        for p, r, v, af in ((ip4(in_lt), RS_NAT_TCP4, V4, 4), (ip6(in_lt), RS_NAT_TCP6, V6, 6)):
            items.append((10**18 + len(items), framed(in_lt, p), None, None, in_lt))
            rs.append(r)
            vaddr.append(v)
            fams.append(af)
    b = PacketBatch.from_packets(items)
    n_in = len(items)
    dec = decisions(n_in, action=ACT_NEW, dir=DIR_IN, fwd=CF_MASQ, rs=rs, dport=8080, vport=80,
                    vaddr=vaddr)
    reference = None
    for out_lt in [1] + [lt for lt in OUT_LTS if lt != 1]:
        fw = Forwarder(eng, director_mac="02:00:00:00:00:aa")
        path = tmp_path / f"o{out_lt}.pcap"
        frames, lt, n = forward_to_file(fw, b, dec, path, linktype=out_lt)
        assert lt == out_lt
        carried = [i for i in range(n_in)
                   if not ((out_lt == 228 and fams[i] == 6) or (out_lt == 229 and fams[i] == 4))]
        assert n == len(carried) and fw.counters["linktype"] == n_in - len(carried)
        ips = [f[3][l3_offset(f[3], out_lt):] for f in frames]
        for p in ips:
            check_all_checksums(p)
        if reference is None:
            reference = ips
        else:
            assert ips == [reference[i] for i in carried]
        rows = tshark_fields(path, ["ip.dst", "ipv6.dst", "ip.checksum.status", "tcp.checksum.status",
                                    "udp.checksum.status", "sll.pkttype", "sll.src.eth"])
        assert [r[0] or r[1] for r in rows] == [RS[rs[i]] for i in carried], out_lt
        for r in rows:
            assert {x for x in r[2:5] if x} == {"1"}, (out_lt, r)
            if out_lt in (113, 276):        # sent by the director (PACKET_OUTGOING), its MAC
                assert (r[5], r[6]) == ("4", "02:00:00:00:00:aa"), (out_lt, r)


def test_tunnel_changes_the_link_layer_protocol(tmp_path):
    """4-in-6 keeps the input link type but its protocol field must say IPv6 now."""
    eng = make_engine()
    for lt in (1, 113, 276, 0, 108):
        from ipvsflow.io import PacketBatch
        pkt = IP(src=C4, dst="10.0.0.202", ttl=64) / TCP(sport=1, dport=80)
        b = PacketBatch.from_packets([(10**18, framed(lt, pkt))], linktype=lt)
        fw = Forwarder(eng, tunnel_source="2001:db8::1")
        frames, _, n = forward_to_file(fw, b, decisions(1, action=ACT_HIT, dir=DIR_IN, fwd=CF_TUNNEL,
                                                        rs=RS_TUN4IN6), tmp_path / "t.pcap", linktype=lt)
        assert n == 1
        # re-parse with the project's parser: it must find an IPv6 packet at the same offset
        from ipvsflow.io import PacketBatch as PB
        rb = PB.from_packets([(10**18, frames[0][3])], linktype=lt)
        row = rb.row(0)
        assert row["af"] == 6 and row["proto"] == 4 and row["status"] == 0, (lt, row)


def test_local_sink_conversion_and_null_sinks(tmp_path):
    eng = make_engine()
    b = batch_of([Ether() / ip4(1), Ether() / ip4(2), Ether() / ip4(3)])
    dec = decisions(3, action=[ACT_PASS, ACT_NEW, ACT_PASS], dir=[DIR_NONE, DIR_IN, DIR_NONE],
                    fwd=[0xff, CF_MASQ, 0xff], rs=[-1, RS_NAT_TCP4, -1], dport=8080, vport=80, vaddr=V4)
    with PcapWriter(str(tmp_path / "local.pcap"), linktype=101) as local:
        fw = Forwarder(eng, local_sink=local)
        ns = NullSink()
        assert fw.forward(b, dec, 0, 3, ns) == 1
    assert (ns.packets, ns.linktype) == (1, None)
    frames, lt = read_pcap(tmp_path / "local.pcap")
    assert lt == 101 and [f[3] for f in frames] == [bytes(ip4(1)), bytes(ip4(3))]
    # a local sink that cannot carry the packet's family: counted, not written
    with PcapWriter(str(tmp_path / "v4only.pcap"), linktype=228) as local4:
        fw3 = Forwarder(eng, local_sink=local4)
        b6 = batch_of([Ether() / ip6(1), Ether() / ip4(2)])
        d6 = decisions(2, action=ACT_PASS)
        assert fw3.forward(b6, d6, 0, 2, NullSink()) == 0
    c = fw3.counters
    assert (c["passed"], c["local_written"], c["local_unwritable"], c["dropped"]) == (2, 1, 1, 0)
    frames, lt = read_pcap(tmp_path / "v4only.pcap")
    assert lt == 228 and [f[3] for f in frames] == [bytes(ip4(2))]
    # sink=None: forwarded packets are only counted
    fw2 = Forwarder(eng, local_sink=NullSink())
    assert fw2.forward(b, dec, 0, 3) == 1
    assert fw2.counters["local_written"] == 2 and fw2.local_sink.packets == 2


def test_ranges_and_partial_bursts(tmp_path):
    eng = make_engine()
    b = batch_of([Ether() / ip4(i) for i in range(6)])
    full = decisions(6, action=ACT_NEW, dir=DIR_IN, fwd=CF_MASQ, rs=RS_NAT_TCP4, dport=8080, vport=80, vaddr=V4)
    fw = Forwarder(eng)
    ns = NullSink()
    assert fw.forward(b, full[2:5], 2, 5, ns) == 3
    assert fw.forward(b, full[0:0], 3, 3, ns) == 0
    with pytest.raises(ValueError, match="decision 0 is for packet 0"):
        fw.forward(b, full[0:2], 2, 4, ns)
    with pytest.raises(ValueError, match="2 decisions for 3 packets"):
        fw.forward(b, full[0:2], 0, 3, ns)
    with pytest.raises(ValueError, match="not within"):
        fw.forward(b, full, 0, 7, ns)
    with pytest.raises(TypeError, match="decision records"):
        fw.forward(b, np.zeros(6, dtype=np.int64), 0, 6, ns)
    with pytest.raises(TypeError, match="PcapWriter or NullSink"):
        fw.forward(b, full, 0, 6, open(tmp_path / "x", "wb"))
    assert fw.counters["forwarded"] == 3


def test_bad_decisions_are_counted_not_crashing(tmp_path):
    eng = make_engine()
    b = batch_of([Ether() / ip4(i) for i in range(6)] + [b"\x00" * 10])
    dec = decisions(7, action=[ACT_NEW, ACT_NEW, ACT_NEW, 99, ACT_NEW, ACT_NEW, ACT_NEW],
                    dir=[DIR_IN, DIR_IN, DIR_NONE, DIR_IN, DIR_IN, DIR_IN, DIR_IN],
                    fwd=[CF_MASQ, 0xff, CF_MASQ, CF_MASQ, CF_MASQ, CF_MASQ, CF_MASQ],
                    rs=[9999, RS_NAT_TCP4, RS_NAT_TCP4, RS_NAT_TCP4, -1, RS_NAT_TCP6, RS_NAT_TCP4],
                    dport=8080, vport=80, vaddr=V4)
    fw = Forwarder(eng)
    ns = NullSink()
    assert fw.forward(b, dec, 0, 7, ns) == 0
    c = fw.counters
    # unknown real server, no method, no direction, unknown action, rs -1, family mismatch,
    # unparsable packet
    assert c["bad_decision"] == 7 and c["dropped"] == 7 and ns.packets == 0
    check_accounting(c)


def test_constructor_validation():
    eng = make_engine()
    with pytest.raises(TypeError, match="dests"):
        Forwarder(object())
    with pytest.raises(ValueError, match="not a MAC"):
        Forwarder(eng, director_mac="02:00")
    with pytest.raises(ValueError, match="not an IP address"):
        Forwarder(eng, neighbours={"host": "02:00:00:00:00:01"})
    with pytest.raises(ValueError, match="mtu"):
        Forwarder(eng, mtu=10)
    with pytest.raises(TypeError, match="local_sink"):
        Forwarder(eng, local_sink="file.pcap")
    fw = Forwarder(eng, neighbours={"10.0.0.1": "02-00-00-00-00-01", "2001:db8::1": b"\x02\0\0\0\0\x02"})
    assert fw.neighbours() == {"10.0.0.1": ("02:00:00:00:00:01", "static"),
                               "2001:db8::1": ("02:00:00:00:00:02", "static")}


def test_open_output(tmp_path):
    with open_output(tmp_path / "a.pcap", 113) as w:
        assert isinstance(w, PcapWriter) and w.linktype == 113
    assert isinstance(open_output(None, 1), NullSink)
    with pytest.raises(ValueError, match="cannot write link type 105"):
        open_output(tmp_path / "b.pcap", 105)
    with pytest.raises(ValueError, match="does not exist"):
        open_output(tmp_path / "nodir" / "c.pcap", 1)
    assert set(OUTPUT_LINKTYPES) >= {0, 1, 101, 108, 113, 228, 229, 276}


def test_neighbour_table_limit():
    eng = make_engine()
    pkts = [Ether(src=f"02:00:00:00:01:{i:02x}") / IP(src=f"10.9.0.{i}", dst=V4) / TCP() for i in range(1, 40)]
    fw = Forwarder(eng, max_neighbours=10, neighbours={"10.8.0.1": "02:00:00:00:00:01"})
    b = batch_of(pkts)
    fw.learn(b)
    c = fw.counters
    # 1 static + 9 learned fill the 10 places; the other 30 addresses are refused
    assert c["neighbours"] == 10 and c["neighbours_refused"] == 30


def test_counter_names_are_documented():
    from ipvsflow.forward import COUNTER_NAMES, COUNTER_HELP, METHOD_COUNTERS, DROP_COUNTERS
    assert set(COUNTER_HELP) == set(COUNTER_NAMES) and len(set(COUNTER_NAMES)) == len(COUNTER_NAMES)
    assert set(METHOD_COUNTERS) <= set(COUNTER_NAMES) and set(DROP_COUNTERS) <= set(COUNTER_NAMES)
    c = Forwarder(make_engine()).counters
    assert all(c[k] == 0 for k in COUNTER_NAMES)
