"""End to end: a small capture read from disk, the real Engine's decisions, the Forwarder's
output capture checked with tshark and by recomputing every checksum."""
from scapy.all import Ether, IP, IPv6, TCP, UDP, wrpcap

from forward_helpers import (
    RS, RS_NAT_TCP4, RS_NAT_UDP4, RS_NAT_TCP6, RS_DR4, RS_TUN4, make_engine, read_pcap,
    check_all_checksums, tshark_bad, tshark_fields, needs_tshark,
)
from ipvsflow.forward import Forwarder, open_output, NullSink
from ipvsflow.io import open_capture

CMAC, DIRMAC, RSMAC = "02:00:00:00:00:01", "02:00:00:00:00:fe", "02:00:00:00:02:01"
C4, C6 = "192.0.2.10", "2001:db8:c::10"


def capture():
    """A NAT TCP connection seen on both sides of the director (client side in, server side
    replies), a NAT UDP exchange, an IPv6 NAT connection, a DR and a TUN connection, and a
    packet for no service."""
    e = lambda: Ether(src=CMAC, dst=DIRMAC)
    r = lambda: Ether(src="02:00:00:00:01:01", dst=DIRMAC)
    V = "10.0.0.100"
    rs = RS[RS_NAT_TCP4]
    pkts = [
        e() / IP(src=C4, dst=V, ttl=60) / TCP(sport=40000, dport=80, flags="S", seq=1),
        r() / IP(src=rs, dst=C4, ttl=64) / TCP(sport=8080, dport=40000, flags="SA", seq=100, ack=2),
        e() / IP(src=C4, dst=V, ttl=60) / TCP(sport=40000, dport=80, flags="A", seq=2, ack=101),
        e() / IP(src=C4, dst=V, ttl=60) / TCP(sport=40000, dport=80, flags="PA", seq=2, ack=101) / b"GET / HTTP/1.0\r\n\r\n",
        r() / IP(src=rs, dst=C4, ttl=64) / TCP(sport=8080, dport=40000, flags="PA", seq=101, ack=20) / (b"x" * 300),
        e() / IP(src=C4, dst=V) / UDP(sport=5000, dport=53) / b"query",
        r() / IP(src=RS[RS_NAT_UDP4], dst=C4) / UDP(sport=5353, dport=5000) / b"answer",
        e() / IPv6(src=C6, dst="2001:db8::100") / TCP(sport=40001, dport=80, flags="S"),
        e() / IP(src=C4, dst="10.0.0.200") / TCP(sport=40002, dport=80, flags="S"),
        e() / IP(src=C4, dst="10.0.0.201") / TCP(sport=40003, dport=80, flags="S"),
        e() / IP(src=C4, dst="10.0.0.99") / TCP(sport=40004, dport=80, flags="S"),
    ]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i * 0.001
    return pkts


@needs_tshark
def test_engine_to_forwarder_to_pcap(tmp_path):
    src = tmp_path / "in.pcap"
    wrpcap(str(src), capture())
    eng = make_engine()
    out = open_output(tmp_path / "out.pcap", 1)
    local = open_output(tmp_path / "local.pcap", 1)
    fw = Forwarder(eng, neighbours={RS[RS_DR4]: RSMAC}, local_sink=local)
    with open_capture(str(src), burst=4) as reader:     # several bursts
        for batch in reader:
            dec = eng.process(batch)
            fw.forward(batch, dec, 0, batch.count, out)
    out.close()
    local.close()
    c = fw.counters
    assert c["packets"] == 11
    assert (c["nat_in"], c["nat_out"], c["dr"], c["tun"]) == (5, 3, 1, 1)
    assert c["forwarded"] == 10 and c["passed"] == 1 and c["local_written"] == 1
    frames, _ = read_pcap(tmp_path / "out.pcap")
    assert len(frames) == 10
    for f in frames:
        check_all_checksums(f[3][14:])
    assert tshark_bad(tmp_path / "out.pcap") == ""
    rows = tshark_fields(tmp_path / "out.pcap", ["ip.src", "ip.dst", "ipv6.dst", "tcp.srcport",
                                                 "tcp.dstport", "udp.srcport", "udp.dstport", "eth.dst"])
    got = [(r[0].split(",")[0], (r[1] or r[2]).split(",")[0], r[3] or r[5], r[4] or r[6]) for r in rows]
    V = "10.0.0.100"
    assert got == [
        (C4, RS[RS_NAT_TCP4], "40000", "8080"),     # SYN, NAT in
        (V, C4, "80", "40000"),                     # SYN-ACK from the server, NAT out
        (C4, RS[RS_NAT_TCP4], "40000", "8080"),
        (C4, RS[RS_NAT_TCP4], "40000", "8080"),
        (V, C4, "80", "40000"),
        (C4, RS[RS_NAT_UDP4], "5000", "5353"),
        (V, C4, "53", "5000"),
        ("", RS[RS_NAT_TCP6], "40001", "8080"),
        (C4, "10.0.0.200", "40002", "80"),          # DR: IP unchanged
        ("10.0.0.201", RS[RS_TUN4], "40003", "80"), # TUN: outer source VIP -> real server
    ]
    assert rows[8][7] == RSMAC
    lframes, _ = read_pcap(tmp_path / "local.pcap")
    assert len(lframes) == 1 and bytes(capture()[10]) == lframes[0][3]


def test_forwarding_a_reused_batch_is_stable():
    """Forwarding reads the engine's decision view right after process(); a second burst
    with a different size reuses the forwarder's buffers."""
    eng = make_engine()
    pkts = capture()
    from ipvsflow.io import PacketBatch
    fw = Forwarder(eng)
    ns = NullSink(1)
    for size in (11, 3, 11):
        b = PacketBatch.from_packets([(10**18 + i, bytes(p)) for i, p in enumerate(pkts[:size])])
        dec = eng.process(b)
        fw.forward(b, dec, 0, b.count, ns)
    assert ns.packets == fw.counters["forwarded"] > 0
