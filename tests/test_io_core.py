"""PacketBatch and the header parser, checked against packets built with scapy.

Expected values come from the parameters given to scapy (or from header sizes), never from the
parser itself.
"""
import enum
import gc
import re
import struct
from pathlib import Path

import numpy as np
import pytest

scapy_all = pytest.importorskip("scapy.all", reason="scapy builds the test packets (pip install scapy)")
from scapy.all import (  # noqa: E402
    ARP, ICMP, IP, TCP, UDP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, IPerror, IPOption_RR,
    IPOption_NOP, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
    TCPerror, UDPerror, fragment, raw,
)
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig, ICMPv6TimeExceeded  # noqa: E402
from scapy.layers.ipsec import AH  # noqa: E402
from scapy.layers.sctp import (  # noqa: E402
    SCTP, SCTPChunkAbort, SCTPChunkCookieAck, SCTPChunkCookieEcho, SCTPChunkData, SCTPChunkInit,
)

import ipvsflow.io as io  # noqa: E402
from ipvsflow.io import PacketBatch, ParseStatus as S, addr_to_str, str_to_addr  # noqa: E402

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = dict(src="192.0.2.10", dst="198.51.100.7")
V6 = dict(src="2001:db8::10", dst="2001:db8:1::7")


def parse1(data, linktype=1, wirelen=None, ts=0):
    b = PacketBatch.from_packets([(ts, bytes(data), wirelen)], linktype=linktype)
    return b.row(0)


def mapped(a):
    return str_to_addr(a)


# ---------------------------------------------------------------------------------------------
# batch container, numpy view, helpers


def test_parse_status_mirrors_pxd():
    """ParseStatus is an IntEnum with exactly the names/values of batch.pxd's cpdef enum."""
    assert issubclass(S, enum.IntEnum)
    pxd = (Path(io.__file__).parent / "batch.pxd").read_text()
    body = pxd.split("cpdef enum ParseStatus:")[1].split("\n\n")[0]
    declared = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s*=\s*(\d+)", body, re.M)}
    assert len(declared) >= 14
    assert {m.name: int(m) for m in S} == declared


def test_constants():
    assert (io.LINKTYPE_ETHERNET, io.LINKTYPE_NULL, io.LINKTYPE_RAW, io.LINKTYPE_LINUX_SLL,
            io.LINKTYPE_LINUX_SLL2, io.LINKTYPE_IPV4, io.LINKTYPE_IPV6, io.LINKTYPE_LOOP) == (
        1, 0, 101, 113, 276, 228, 229, 108)
    assert (io.FRAG_IS, io.FRAG_MF, io.FRAG_NONFIRST) == (1, 2, 4)
    assert (io.TCP_FIN, io.TCP_SYN, io.TCP_RST, io.TCP_PSH, io.TCP_ACK, io.TCP_URG, io.TCP_ECE,
            io.TCP_CWR) == (1, 2, 4, 8, 16, 32, 64, 128)


def test_import_is_cheap():
    import subprocess
    import sys
    code = "import sys, ipvsflow.io; print('pyshark' in sys.modules, 'scapy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(io.__file__).parents[2], check=True).stdout
    assert out.split() == ["False", "False"]


def test_addr_helpers():
    assert str_to_addr("10.0.0.1") == bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
    assert addr_to_str(str_to_addr("10.0.0.1")) == "10.0.0.1"
    assert addr_to_str(str_to_addr("2001:0db8:0000:0000:0000:0000:0000:0001")) == "2001:db8::1"
    assert str_to_addr("[2001:db8::1]") == str_to_addr("2001:db8::1")
    assert addr_to_str(np.frombuffer(str_to_addr("fe80::1"), np.uint8)) == "fe80::1"
    assert addr_to_str(bytes(16)) == "::"
    with pytest.raises(ValueError):
        str_to_addr("10.0.0.256")
    with pytest.raises(ValueError):
        str_to_addr("not-an-address")
    with pytest.raises(ValueError):
        addr_to_str(b"\x01\x02\x03\x04")


def test_batch_basics():
    b = PacketBatch(8)
    assert (len(b), b.capacity, b.count, b.owner) == (0, 8, 0, None)
    assert b.to_numpy().shape == (0,)
    with pytest.raises(ValueError):
        PacketBatch(0)
    with pytest.raises(IndexError):
        b.row(0)


def test_to_numpy_is_a_view_that_keeps_the_batch_alive():
    pkts = [(1000 + i, raw(ETH / IP(**V4) / TCP(sport=1000 + i, dport=80))) for i in range(5)]
    b = PacketBatch.from_packets(pkts)
    a = b.to_numpy()
    required = {"ts_ns", "caplen", "wirelen", "status", "af", "proto", "src", "dst", "sport",
                "dport", "tcp_flags", "sctp_chunk", "frag", "data"}
    assert required <= set(a.dtype.names)
    assert a.dtype.itemsize == io.batch.PKT_DESC_SIZE
    assert a.dtype["src"].shape == (16,) and a.dtype["src"].base == np.uint8
    assert a.dtype["data"] == np.uint64
    assert list(a["sport"]) == [1000, 1001, 1002, 1003, 1004]
    assert list(a["ts_ns"]) == [1000, 1001, 1002, 1003, 1004]
    # the same memory: a reparse after changing a field through the view rewrites it
    a["sport"][0] = 1
    assert b.row(0)["sport"] == 1
    b.parse()
    assert a["sport"][0] == 1000
    # the data pointer is the packet's address
    assert a["data"][1] - a["data"][0] == len(pkts[0][1])
    del b
    gc.collect()
    assert list(a["dport"]) == [80] * 5
    assert addr_to_str(a["src"][3]) == "192.0.2.10"


def test_from_packets_options_and_copies():
    p4 = raw(ETH / IP(**V4) / UDP(sport=53, dport=5353))
    p6 = raw(IPv6(**V6) / UDP(sport=1, dport=2))
    b = PacketBatch.from_packets([(5, p4, 200, 3), (6, bytearray(p6), None, 1, 229)], first_index=10)
    r0, r1 = b.row(0), b.row(1)
    assert (r0["wirelen"], r0["ifindex"], r0["linktype"], r0["index"]) == (200, 3, 1, 10)
    assert (r1["wirelen"], r1["ifindex"], r1["linktype"], r1["index"]) == (len(p6), 1, 229, 11)
    assert b.packet_bytes(0) == p4 and b.packet_bytes(-1) == p6
    assert (r0["src"], r1["dst"]) == ("192.0.2.10", "2001:db8:1::7")
    assert b.capacity == 2 and isinstance(b.owner, bytes)
    with pytest.raises(ValueError):
        PacketBatch.from_packets([(0,)])
    empty = PacketBatch.from_packets([])
    assert len(empty) == 0 and empty.capacity == 1


# ---------------------------------------------------------------------------------------------
# link layers


def tcp_pkt(**kw):
    return IP(**V4) / TCP(sport=40000, dport=443, flags="S", **kw)


@pytest.mark.parametrize("linktype,frame,l2", [
    (1, lambda ip: ETH / ip, 14),
    (113, lambda ip: CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02\0\0\0\0\x01\0\0",
                                 proto=0x0800 if ip.version == 4 else 0x86DD) / ip, 16),
    (276, lambda ip: CookedLinuxV2(proto=0x0800 if ip.version == 4 else 0x86DD, ifindex=2) / ip, 20),
    (101, lambda ip: ip, 0),
    (12, lambda ip: ip, 0),
    (14, lambda ip: ip, 0),
])
@pytest.mark.parametrize("ver", [4, 6])
def test_link_layers(linktype, frame, l2, ver):
    ip = IP(**V4) if ver == 4 else IPv6(**V6)
    pkt = raw(frame(ip / TCP(sport=40000, dport=443, flags="SA")))
    if linktype == 276:
        assert struct.unpack("!H", pkt[:2])[0] in (0x0800, 0x86DD)    # protocol first in SLL2
    r = parse1(pkt, linktype)
    assert r["status"] == S.OK
    assert (r["l2_len"], r["l3_off"], r["af"], r["proto"]) == (l2, l2, ver, 6)
    assert (r["sport"], r["dport"], r["tcp_flags"]) == (40000, 443, 0x12)
    assert r["src"] == (V4 if ver == 4 else V6)["src"]


@pytest.mark.parametrize("ver,lt", [(4, 228), (6, 229)])
def test_raw_ipv4_ipv6_linktypes(ver, lt):
    good = IP(**V4) / UDP(sport=1, dport=2) if ver == 4 else IPv6(**V6) / UDP(sport=1, dport=2)
    bad = IPv6(**V6) / UDP() if ver == 4 else IP(**V4) / UDP()
    assert parse1(raw(good), lt)["status"] == S.OK
    assert parse1(raw(good), lt)["af"] == ver
    assert parse1(raw(bad), lt)["status"] == S.BAD_IP_VERSION
    assert parse1(b"\x10" + raw(good)[1:], 101)["status"] == S.BAD_IP_VERSION


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("af,ver", [(2, 4), (24, 6), (28, 6), (30, 6), (7, None)])
def test_bsd_null_both_byte_orders(order, af, ver):
    ip = IP(**V4) if ver == 4 else IPv6(**V6)
    pkt = struct.pack(order + "I", af) + raw(ip / UDP(sport=7, dport=9))
    r = parse1(pkt, 0)
    if ver is None:
        assert (r["status"], r["af"], r["l2_len"]) == (S.NOT_IP, 0, 4)
    else:
        assert (r["status"], r["af"], r["l3_off"], r["dport"]) == (S.OK, ver, 4, 9)


def test_loop_linktype_network_order():
    r = parse1(struct.pack(">I", 24) + raw(IPv6(**V6) / TCP(dport=22)), 108)
    assert (r["status"], r["af"], r["dport"]) == (S.OK, 6, 22)
    # LOOP is always network order: a little-endian AF value is not an IP family
    assert parse1(struct.pack("<I", 2) + raw(IP(**V4) / TCP()), 108)["status"] == S.NOT_IP


def test_unknown_linktype_and_not_ip():
    assert parse1(raw(ETH / tcp_pkt()), 9999)["status"] == S.UNKNOWN_LINKTYPE
    r = parse1(raw(ETH / ARP()), 1)
    assert (r["status"], r["af"], r["l2_len"], r["l3_off"]) == (S.NOT_IP, 0, 14, 0xFFFF)
    llc = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=60)) + bytes(60)
    assert parse1(llc, 1)["status"] == S.NOT_IP


def test_vlan_single_qinq_and_9100():
    r = parse1(raw(ETH / Dot1Q(vlan=100) / tcp_pkt()))
    assert (r["status"], r["vlan_count"], r["vlan_outer"], r["l2_len"], r["dport"]) == (S.OK, 1, 100, 18, 443)
    r = parse1(raw(ETH / Dot1AD(vlan=200) / Dot1Q(vlan=300) / tcp_pkt()))
    assert (r["status"], r["vlan_count"], r["vlan_outer"], r["vlan_inner"], r["l2_len"]) == (S.OK, 2, 200, 300, 22)
    old_qinq = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x9100)
                   / Dot1Q(vlan=7) / Dot1Q(vlan=8) / tcp_pkt())
    r = parse1(old_qinq)
    assert (r["status"], r["vlan_count"], r["vlan_outer"], r["vlan_inner"]) == (S.OK, 2, 7, 8)
    # three tags: the first two are recorded, the third is skipped
    r = parse1(raw(ETH / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / tcp_pkt()))
    assert (r["status"], r["vlan_count"], r["vlan_outer"], r["vlan_inner"], r["l3_off"]) == (S.OK, 2, 1, 2, 26)
    # priority bits are not part of the id
    assert parse1(raw(ETH / Dot1Q(vlan=4094, prio=7) / tcp_pkt()))["vlan_outer"] == 4094
    # a tag cut short
    assert parse1(raw(ETH / Dot1Q(vlan=5) / tcp_pkt())[:16])["status"] == S.TRUNC_L2
    # SLL carries the VLAN ethertype too
    sll = raw(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=0x8100) / Dot1Q(vlan=9) / tcp_pkt())
    r = parse1(sll, 113)
    assert (r["status"], r["vlan_outer"], r["l3_off"]) == (S.OK, 9, 20)


def test_vlan_tag_flood_is_not_ip():
    pkt = raw(ETH)[:12] + b"\x81\x00\x00\x01" * 20 + b"\x08\x00" + raw(tcp_pkt())
    r = parse1(pkt)
    assert r["status"] == S.NOT_IP and r["l2_len"] < 255


# ---------------------------------------------------------------------------------------------
# IPv4


def test_ipv4_tcp_all_fields():
    pkt = ETH / IP(ttl=33, id=4242, **V4) / TCP(sport=1234, dport=80, flags="PA") / (b"x" * 10)
    r = parse1(raw(pkt))
    assert r["status"] == S.OK
    assert (r["af"], r["proto"], r["ttl"], r["frag"], r["frag_id"]) == (4, 6, 33, 0, 4242)
    assert (r["l2_len"], r["l3_off"], r["l4_off"], r["l3_len"], r["l4_len"]) == (14, 14, 34, 50, 30)
    assert (r["sport"], r["dport"], r["tcp_flags"]) == (1234, 80, 0x18)
    assert (r["sctp_chunk"], r["ic_l3_off"], r["ic_proto"], r["icmp_type"]) == (0xFF, 0xFFFF, 0, 0)
    assert (r["src"], r["dst"]) == ("192.0.2.10", "198.51.100.7")


def test_tcp_every_flag_combination():
    pkts = [(i, raw(ETH / IP(**V4) / TCP(sport=i + 1, dport=80, flags=i))) for i in range(256)]
    a = PacketBatch.from_packets(pkts).to_numpy()
    assert (a["status"] == S.OK).all()
    assert list(a["tcp_flags"]) == list(range(256))
    assert list(a["sport"]) == list(range(1, 257))


def test_ipv4_options():
    pkt = ETH / IP(options=[IPOption_RR(routers=["1.1.1.1", "2.2.2.2"]), IPOption_NOP()], **V4) / UDP(sport=9, dport=10)
    ihl = raw(pkt)[14] & 15
    assert ihl > 5
    r = parse1(raw(pkt))
    assert (r["status"], r["l4_off"], r["sport"], r["dport"]) == (S.OK, 14 + ihl * 4, 9, 10)


def test_ipv4_header_errors():
    good = bytearray(raw(ETH / IP(**V4) / TCP(sport=1, dport=2)))
    bad = bytearray(good)
    bad[14] = 0x44                                      # IHL 4
    assert parse1(bad)["status"] == S.BAD_IHL
    bad = bytearray(good)
    bad[14] = 0x4F                                      # IHL 15 = 60 bytes > 40-byte packet
    assert parse1(bad)["status"] == S.BAD_IHL
    bad = bytearray(good)
    bad[16:18] = struct.pack("!H", 19)                  # total length < IHL*4
    assert parse1(bad)["status"] == S.BAD_IP_LEN
    bad = bytearray(good)
    bad[16:18] = struct.pack("!H", 1400)                # longer than the frame on the wire
    assert parse1(bad)["status"] == S.BAD_IP_LEN
    # ... but fine when the capture was cut by the snaplen (wire length says it was there)
    assert parse1(bad, wirelen=1414)["status"] == S.OK
    # Ethernet padding after the IP packet is fine
    assert parse1(bytes(good) + bytes(12))["status"] == S.OK


def test_ipv4_snaplen_truncation_statuses():
    """Every prefix of an Ethernet/IPv4/TCP frame (as a snaplen cut) gets the status of the first
    header that is incomplete."""
    pkt = raw(ETH / IP(**V4) / TCP(sport=5, dport=6) / (b"p" * 20))
    for n in range(len(pkt) + 1):
        r = parse1(pkt[:n], wirelen=len(pkt))
        if n < 14:
            want = S.TRUNC_L2
        elif n < 34:
            want = S.TRUNC_L3
        elif n < 54:
            want = S.TRUNC_L4
        else:
            want = S.OK
        assert r["status"] == want, n
        assert r["caplen"] == n
        if n >= 54:
            assert (r["sport"], r["dport"]) == (5, 6)


def test_ipv4_options_cut_by_snaplen():
    pkt = raw(ETH / IP(options=[IPOption_RR(routers=["1.1.1.1"] * 4)], **V4) / TCP())
    assert parse1(pkt[:40], wirelen=len(pkt))["status"] == S.TRUNC_L3


def test_ipv4_fragments():
    whole = IP(id=777, **V4) / UDP(sport=1111, dport=2222) / (b"z" * 100)
    frags = fragment(whole, fragsize=48)
    assert len(frags) == 3
    rows = [parse1(raw(ETH / f)) for f in frags]
    first, mid, last = rows
    assert (first["status"], first["sport"], first["dport"], first["proto"]) == (S.OK, 1111, 2222, 17)
    assert first["frag"] == io.FRAG_IS | io.FRAG_MF and first["frag_off"] == 0
    assert first["frag_id"] == 777
    # the first fragment's UDP length covers the whole datagram, more than this IP packet holds:
    # not an error for a fragment
    assert (mid["status"], mid["sport"], mid["dport"], mid["l4_off"]) == (S.FRAGMENT, 0, 0, 0xFFFF)
    assert mid["frag"] == io.FRAG_IS | io.FRAG_MF | io.FRAG_NONFIRST
    assert mid["frag_off"] == frags[1].frag
    assert last["frag"] == io.FRAG_IS | io.FRAG_NONFIRST and last["frag_off"] == frags[2].frag
    assert last["proto"] == 17 and last["src"] == V4["src"]


def test_udp_and_tcp_header_errors():
    udp = bytearray(raw(ETH / IP(**V4) / UDP(sport=1, dport=2) / b"abcd"))
    udp[38:40] = struct.pack("!H", 7)
    assert parse1(udp)["status"] == S.BAD_L4_HDR
    udp[38:40] = struct.pack("!H", 13)                   # longer than the IP payload (12)
    assert parse1(udp)["status"] == S.BAD_L4_HDR
    udp[38:40] = struct.pack("!H", 12)
    assert parse1(udp)["status"] == S.OK
    tcp = bytearray(raw(ETH / IP(**V4) / TCP(sport=3, dport=4)))
    tcp[46] = 0x40                                       # data offset 4
    r = parse1(tcp)
    assert (r["status"], r["sport"], r["dport"]) == (S.BAD_L4_HDR, 3, 4)
    tcp[46] = 0x60                                       # 24 bytes, only 20 in the packet
    assert parse1(tcp)["status"] == S.BAD_L4_HDR
    # an IP total length that leaves no room for the TCP header
    short = bytearray(raw(ETH / IP(**V4) / TCP()))
    short[16:18] = struct.pack("!H", 30)
    assert parse1(short)["status"] == S.TRUNC_L4


def test_other_l4_protocols_have_no_ports():
    r = parse1(raw(ETH / IP(proto=47, **V4) / (b"\0" * 20)))
    assert (r["status"], r["proto"], r["sport"], r["dport"]) == (S.OK, 47, 0, 0)


# ---------------------------------------------------------------------------------------------
# IPv6


def test_ipv6_extension_headers():
    pkt = (ETH / IPv6(hlim=9, **V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8::99"])
           / IPv6ExtHdrDestOpt() / TCP(sport=7777, dport=8888, flags="S"))
    data = raw(pkt)
    r = parse1(data)
    ext_len = len(raw(IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8::99"]) / IPv6ExtHdrDestOpt()))
    assert r["status"] == S.OK
    assert (r["proto"], r["ttl"], r["l3_off"], r["l4_off"]) == (6, 9, 14, 14 + 40 + ext_len)
    assert (r["sport"], r["dport"], r["tcp_flags"]) == (7777, 8888, 2)
    assert r["l3_len"] == len(data) - 14
    assert (r["src"], r["dst"]) == (V6["src"], V6["dst"])
    # cut inside the routing header -> TRUNC_EXTHDR
    assert parse1(data[:14 + 40 + 10], wirelen=len(data))["status"] == S.TRUNC_EXTHDR


def test_ipv6_ah_is_skipped():
    data = raw(ETH / IPv6(**V6) / AH(nh=17, payloadlen=4, spi=1, seq=1, icv=b"\0" * 12) / UDP(sport=4500, dport=4500))
    r = parse1(data)
    assert (r["status"], r["proto"], r["sport"], r["l4_off"]) == (S.OK, 17, 4500, 14 + 40 + 24)


def test_ipv6_fragments():
    first = ETH / IPv6(**V6) / IPv6ExtHdrFragment(id=0xABCDEF01, m=1, offset=0) / UDP(sport=53, dport=999) / (b"q" * 16)
    r = parse1(raw(first))
    assert (r["status"], r["proto"], r["sport"], r["dport"]) == (S.OK, 17, 53, 999)
    assert (r["frag"], r["frag_id"], r["frag_off"]) == (io.FRAG_IS | io.FRAG_MF, 0xABCDEF01, 0)
    later = ETH / IPv6(**V6) / IPv6ExtHdrFragment(nh=17, id=5, m=0, offset=3) / (b"q" * 16)
    r = parse1(raw(later))
    assert (r["status"], r["proto"], r["sport"], r["frag"], r["frag_off"], r["frag_id"]) == (
        S.FRAGMENT, 17, 0, io.FRAG_IS | io.FRAG_NONFIRST, 3, 5)
    # atomic fragment (offset 0, no MF): still a fragment header
    atomic = ETH / IPv6(**V6) / IPv6ExtHdrFragment(id=9, m=0, offset=0) / TCP(dport=5)
    r = parse1(raw(atomic))
    assert (r["status"], r["frag"], r["dport"]) == (S.OK, io.FRAG_IS, 5)


def test_ipv6_length_errors():
    data = bytearray(raw(ETH / IPv6(**V6) / UDP(sport=1, dport=2)))
    data[18:20] = struct.pack("!H", 500)
    assert parse1(data)["status"] == S.BAD_IP_LEN
    assert parse1(data, wirelen=14 + 540)["status"] == S.OK
    assert parse1(data[:14 + 39], wirelen=600)["status"] == S.TRUNC_L3


# ---------------------------------------------------------------------------------------------
# SCTP


def sctp_frame(*chunks, v6=False):
    ip = IPv6(**V6) if v6 else IP(**V4)
    pkt = ETH / ip / SCTP(sport=3868, dport=2905)
    for c in chunks:
        pkt = pkt / c
    return raw(pkt)


def test_sctp_first_chunk_and_ports():
    r = parse1(sctp_frame(SCTPChunkInit()))
    assert (r["status"], r["proto"], r["sport"], r["dport"], r["sctp_chunk"], r["sctp_flags"]) == (
        S.OK, 132, 3868, 2905, 1, 0)
    r = parse1(sctp_frame(SCTPChunkData(data=b"abc"), SCTPChunkAbort(), v6=True))
    assert (r["sctp_chunk"], r["sctp_flags"], r["af"]) == (0, 0, 6)
    r = parse1(sctp_frame(SCTPChunkAbort()))
    assert (r["sctp_chunk"], r["sctp_flags"]) == (6, 0)
    r = parse1(sctp_frame())                               # common header only
    assert (r["status"], r["sctp_chunk"], r["sport"]) == (S.OK, 0xFF, 3868)


@pytest.mark.parametrize("cookie_len", [0, 1, 4, 5, 7, 8])
def test_sctp_abort_after_cookie(cookie_len):
    """COOKIE_ECHO/COOKIE_ACK followed by ABORT at ALIGN(chunk length, 4) -> flag."""
    echo = SCTPChunkCookieEcho(cookie=b"C" * cookie_len)
    data = sctp_frame(echo, SCTPChunkAbort())
    clen = struct.unpack("!H", data[14 + 20 + 12 + 2:14 + 20 + 12 + 4])[0]
    assert clen == 4 + cookie_len                          # scapy pads, the length field does not
    r = parse1(data)
    assert (r["sctp_chunk"], r["sctp_flags"]) == (10, io.SCTP_ABORT_AFTER_COOKIE)
    assert parse1(sctp_frame(echo, SCTPChunkData(data=b"d")))["sctp_flags"] == 0
    r = parse1(sctp_frame(SCTPChunkCookieAck(), SCTPChunkAbort(), v6=True))
    assert (r["sctp_chunk"], r["sctp_flags"]) == (11, io.SCTP_ABORT_AFTER_COOKIE)
    # ABORT after something other than a cookie chunk does not count
    assert parse1(sctp_frame(SCTPChunkInit(), SCTPChunkAbort()))["sctp_flags"] == 0
    # ABORT chunk header not captured: no flag, status still OK (first chunk is complete)
    r = parse1(data[:-4], wirelen=len(data))
    assert (r["status"], r["sctp_flags"]) == (S.OK, 0)


def test_sctp_truncated():
    data = sctp_frame(SCTPChunkInit())
    assert parse1(data[:14 + 20 + 11], wirelen=len(data))["status"] == S.TRUNC_L4
    r = parse1(data[:14 + 20 + 13], wirelen=len(data))
    assert (r["status"], r["sport"]) == (S.TRUNC_L4, 3868)


# ---------------------------------------------------------------------------------------------
# ICMP errors


@pytest.mark.parametrize("icmp_type,code", [(3, 3), (4, 0), (11, 0), (12, 0)])
def test_icmp_errors_embed_the_tuple(icmp_type, code):
    inner = IPerror(src="198.51.100.7", dst="192.0.2.10") / TCPerror(sport=80, dport=40000)
    data = raw(ETH / IP(src="203.0.113.1", dst="198.51.100.7") / ICMP(type=icmp_type, code=code) / inner)
    r = parse1(data)
    assert r["status"] == S.OK
    assert (r["proto"], r["icmp_type"], r["icmp_code"]) == (1, icmp_type, code)
    assert (r["ic_proto"], r["ic_sport"], r["ic_dport"], r["ic_l3_off"]) == (6, 80, 40000, 14 + 20 + 8)
    assert (r["ic_src"], r["ic_dst"]) == ("198.51.100.7", "192.0.2.10")
    assert (r["sport"], r["dport"]) == (0, 0)


def test_icmp_non_errors_and_inner_problems():
    r = parse1(raw(ETH / IP(**V4) / ICMP(type=8, id=1, seq=2) / b"ping"))
    assert (r["status"], r["icmp_type"], r["ic_proto"], r["ic_l3_off"]) == (S.OK, 8, 0, 0xFFFF)
    inner = raw(IPerror(src="10.1.1.1", dst="10.2.2.2") / UDPerror(sport=5353, dport=53))

    def err(payload):
        return raw(ETH / IP(**V4) / ICMP(type=3, code=1) / payload)

    r = parse1(err(inner))
    assert (r["ic_proto"], r["ic_sport"], r["ic_dport"]) == (17, 5353, 53)
    # embedded L4 header shorter than the 4 port bytes
    r = parse1(err(inner[:22]))
    assert (r["status"], r["ic_proto"], r["ic_src"]) == (S.TRUNC_ICMP_INNER, 17, "10.1.1.1")
    # the same cut made by the snaplen instead of the sender
    full = err(inner)
    r = parse1(full[:14 + 20 + 8 + 22], wirelen=len(full))
    assert (r["status"], r["ic_proto"]) == (S.TRUNC_ICMP_INNER, 17)
    # embedded IP header itself cut short
    r = parse1(err(inner[:12]))
    assert (r["status"], r["ic_l3_off"]) == (S.TRUNC_ICMP_INNER, 0xFFFF)
    # embedded version / IHL malformed
    bad = bytearray(inner)
    bad[0] = 0x65
    assert parse1(err(bytes(bad)))["status"] == S.BAD_ICMP_INNER
    bad[0] = 0x43
    assert parse1(err(bytes(bad)))["status"] == S.BAD_ICMP_INNER
    # an embedded non-first fragment has no ports
    frag = raw(IPerror(src="10.1.1.1", dst="10.2.2.2", frag=10, proto=17) / (b"\0" * 8))
    r = parse1(err(frag))
    assert (r["status"], r["ic_proto"], r["ic_sport"]) == (S.OK, 17, 0)
    # ICMP header itself truncated
    r = parse1(raw(ETH / IP(**V4) / ICMP(type=3))[:14 + 20 + 4], wirelen=100)
    assert (r["status"], r["icmp_type"]) == (S.TRUNC_L4, 3)


def test_icmpv6_errors():
    inner = IPv6(src=V6["dst"], dst=V6["src"]) / IPv6ExtHdrDestOpt() / UDP(sport=443, dport=50000)
    for msg, t in [(ICMPv6DestUnreach(code=4), 1), (ICMPv6PacketTooBig(mtu=1280), 2),
                   (ICMPv6TimeExceeded(), 3)]:
        data = raw(ETH / IPv6(src="2001:db8:ffff::1", dst=V6["dst"]) / msg / inner)
        r = parse1(data)
        assert r["status"] == S.OK
        assert (r["proto"], r["icmp_type"], r["ic_proto"]) == (58, t, 17)
        assert (r["ic_sport"], r["ic_dport"], r["ic_l3_off"]) == (443, 50000, 14 + 40 + 8)
        assert (r["ic_src"], r["ic_dst"]) == (V6["dst"], V6["src"])
    r = parse1(raw(ETH / IPv6(**V6) / ICMPv6EchoRequest()))
    assert (r["status"], r["icmp_type"], r["ic_proto"]) == (S.OK, 128, 0)
    data = raw(ETH / IPv6(**V6) / ICMPv6DestUnreach() / inner)
    # cut inside the embedded extension header / before the ports
    assert parse1(data[:14 + 40 + 8 + 40 + 4], wirelen=len(data))["status"] == S.TRUNC_ICMP_INNER
    assert parse1(data[:14 + 40 + 8 + 40 + 8 + 2], wirelen=len(data))["status"] == S.TRUNC_ICMP_INNER
    short = raw(ETH / IPv6(**V6) / ICMPv6DestUnreach() / raw(inner)[:40 + 8 + 3])
    assert parse1(short)["status"] == S.TRUNC_ICMP_INNER
    bad = bytearray(data)
    bad[14 + 40 + 8] = 0x45
    assert parse1(bad)["status"] == S.BAD_ICMP_INNER


def test_random_garbage_never_breaks_the_batch():
    rng = np.random.default_rng(1234)
    pkts = []
    for i in range(2000):
        n = int(rng.integers(0, 120))
        lt = int(rng.choice([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 7]))
        pkts.append((i, rng.integers(0, 256, n, dtype=np.uint8).tobytes(), None, 0, lt))
    a = PacketBatch.from_packets(pkts).to_numpy()
    assert len(a) == 2000
    assert set(np.unique(a["status"])) <= {int(s) for s in S}
    ok = a["status"] == S.OK
    assert (a["l3_off"][a["af"] > 0] <= a["caplen"][a["af"] > 0]).all()
    assert ((a["l4_off"][ok] == 0xFFFF) | (a["l4_off"][ok] <= a["caplen"][ok])).all()


def test_offload_zero_lengths_run_to_the_end_of_the_frame():
    """tcpdump on a host with TSO/GSO (or BIG TCP) sees IPv4 total length 0 / IPv6 payload
    length 0: the packet is the rest of the frame."""
    seg = ETH / IP(**V4) / TCP(sport=1, dport=2) / (b"d" * 3000)
    data = bytearray(raw(seg))
    data[16:18] = b"\0\0"
    r = parse1(data)
    assert (r["status"], r["l3_len"], r["l4_len"], r["dport"]) == (S.OK, 3040, 3020, 2)
    data = bytearray(raw(ETH / IPv6(plen=0, **V6) / TCP(sport=3, dport=4))) + b"d" * 70000
    r = parse1(data)
    assert (r["status"], r["l3_len"], r["l4_len"], r["dport"]) == (S.OK, 0xFFFF, 0xFFFF, 4)


def test_pppoe_is_not_ip():
    """PPPoE sessions are outside the supported link layers (IPVS does not see them either:
    it runs on the ppp interface, not on the Ethernet carrying the session)."""
    from scapy.layers.ppp import PPP, PPPoE
    r = parse1(raw(ETH / PPPoE(sessionid=7) / PPP(proto=0x0021) / tcp_pkt()))
    assert (r["status"], r["l2_len"], r["af"]) == (S.NOT_IP, 14, 0)
