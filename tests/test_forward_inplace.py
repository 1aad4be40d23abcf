"""NAT rewritten in place (the live director's case: frames rewritten where the receive ring
holds them) gives the bytes and counters of the copying path, and every checksum recomputed
from scratch (tests/forward_helpers.py, independent of ipvsflow's checksum code) is right.

Random IPv4 and IPv6 TCP/UDP frames (scapy, valid checksums) in both directions, with IP
options or IPv6 extension headers, VLAN tags, UDP checksums of 0xffff and TTLs down to 2; plus
the UDP segment whose rewritten checksum computes to 0 and must go out as 0xffff."""
import struct

from hypothesis import given, settings, HealthCheck, strategies as st
from scapy.all import Ether, Dot1Q, IP, IPv6, IPv6ExtHdrHopByHop, TCP, UDP, IPOption_RR

from forward_helpers import (
    ACT_NEW, ACT_HIT, ACT_RESCHED, DIR_IN, DIR_OUT, CF_MASQ, RS, RS_NAT_TCP4, RS_NAT_UDP4, RS_NAT_TCP6,
    addr16, batch_of, decisions, make_engine, check_accounting, check_all_checksums, l3_offset,
    ones_sum, forward_to_file,
)
from ipvsflow.forward import Forwarder

V4 = "10.0.0.100"
CMAC, DMAC = "02:00:00:00:00:01", "02:00:00:00:00:fe"
V6, C6 = "2001:db8::100", "2001:db8:c::10"
NEIGH = {"192.0.2.10": "02:00:00:00:00:0c", RS[RS_NAT_TCP4]: "02:00:00:00:01:01",
         RS[RS_NAT_UDP4]: "02:00:00:00:01:02", C6: "02:00:00:00:00:6c",
         RS[RS_NAT_TCP6]: "02:00:00:00:01:06"}
ipv4 = st.tuples(st.integers(1, 223), st.integers(0, 255), st.integers(0, 255),
                 st.integers(1, 254)).map(lambda t: "%d.%d.%d.%d" % t)

case = st.fixed_dictionaries({
    "out": st.booleans(),                   # a real server's reply (DIR_OUT) or a client packet
    "udp": st.booleans(),
    "client": st.one_of(st.just("192.0.2.10"), ipv4),     # a reply's next hop: known or not
    "cport": st.integers(1, 65535),
    "vport": st.integers(1, 65535),
    "rport": st.integers(1, 65535),
    "ttl": st.integers(2, 255),
    "options": st.booleans(),
    "vlan": st.sampled_from([None, 10, 4094]),
    "payload": st.binary(max_size=40),
    "udp_csum_ffff": st.booleans(),
    "action": st.sampled_from([ACT_NEW, ACT_HIT, ACT_RESCHED]),
})


def _frame(c):
    rs = RS[RS_NAT_UDP4 if c["udp"] else RS_NAT_TCP4]
    src, dst = (rs, c["client"]) if c["out"] else (c["client"], V4)
    sport, dport = (c["rport"], c["cport"]) if c["out"] else (c["cport"], c["vport"])
    ip = IP(src=src, dst=dst, ttl=c["ttl"], options=[IPOption_RR(routers=["0.0.0.0"])] if c["options"] else [])
    l4 = UDP(sport=sport, dport=dport) if c["udp"] else TCP(sport=sport, dport=dport, flags="A")
    l2 = Ether(src=CMAC, dst=DMAC) / Dot1Q(vlan=c["vlan"]) if c["vlan"] else Ether(src=CMAC, dst=DMAC)
    raw = bytearray(bytes(l2 / ip / l4 / c["payload"]))
    if c["udp"] and c["udp_csum_ffff"]:
        # a computed 0 that was sent as 0xffff: both mean "sum is zero" to a receiver
        off = l3_offset(bytes(raw), 1) + (20 + (8 if c["options"] else 0))
        if raw[off + 6:off + 8] == b"\x00\x00":
            raw[off + 6:off + 8] = b"\xff\xff"
    return bytes(raw)


def _run(frames, dec, in_place, tmp_path, name, **kw):
    """(output frames, counters, the writable input buffer or None)."""
    kw.setdefault("learn_neighbours", False)
    fw = Forwarder(make_engine(), neighbours=NEIGH, in_place=in_place, **kw)
    if in_place:
        b, buf = batch_of(frames, writable=True)
    else:
        b, buf = batch_of(frames), None
    got, _, _ = forward_to_file(fw, b, dec, tmp_path / name)
    return [f[3] for f in got], fw.counters, buf


def _decisions(cases):
    return decisions(len(cases), action=[c["action"] for c in cases],
                     dir=[DIR_OUT if c["out"] else DIR_IN for c in cases], fwd=CF_MASQ,
                     rs=[RS_NAT_UDP4 if c["udp"] else RS_NAT_TCP4 for c in cases],
                     dport=[c["rport"] for c in cases], vport=[c["vport"] for c in cases], vaddr=V4)


def _ip_of(frame):
    return frame[l3_offset(frame, 1):]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases=st.lists(case, min_size=1, max_size=16),
       director_mac=st.sampled_from([None, "02:00:00:00:00:dd"]))
def test_in_place_equals_copy_and_checksums_hold(tmp_path, cases, director_mac):
    frames = [_frame(c) for c in cases]
    dec = _decisions(cases)
    ip_outs, ip_c, buf = _run(frames, dec, True, tmp_path, "ip.pcap", director_mac=director_mac)
    cp_outs, cp_c, _ = _run(frames, dec, False, tmp_path, "cp.pcap", director_mac=director_mac)
    assert ip_outs == cp_outs
    assert ip_c["in_place"] == len(cases) and ip_c["copied"] == 0
    for k in ("forwarded", "nat_in", "nat_out", "dropped", "csum_skipped", "l2_unresolved"):
        assert ip_c[k] == cp_c[k], k
    check_accounting(ip_c)
    assert bytes(buf) == b"".join(ip_outs)      # rewritten where they lay
    for c, f, out in zip(cases, frames, ip_outs):
        check_all_checksums(_ip_of(out))
        ip = _ip_of(out)
        assert ip[8] == c["ttl"] - 1
        hl = (ip[0] & 15) * 4
        sport, dport = struct.unpack("!HH", ip[hl:hl + 4])
        if c["out"]:
            assert ip[12:16] == addr16(V4)[12:] and sport == c["vport"]
            nh = NEIGH.get(c["client"])
        else:
            rs = RS[RS_NAT_UDP4 if c["udp"] else RS_NAT_TCP4]
            assert ip[16:20] == addr16(rs)[12:] and dport == c["rport"]
            nh = NEIGH[rs]
        if nh is None:
            assert out[:12] == f[:12]           # next hop unresolved: counted, MACs left alone
        else:
            assert out[:6] == bytes.fromhex(nh.replace(":", ""))
            assert out[6:12] == bytes.fromhex((director_mac or DMAC).replace(":", ""))
        assert out[12:l3_offset(out, 1)] == f[12:l3_offset(f, 1)]     # VLAN tag kept


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases=st.lists(case, min_size=1, max_size=16), macs=st.lists(st.integers(1, 3), min_size=16,
                                                                     max_size=16))
def test_in_place_equals_copy_while_learning_neighbours(tmp_path, cases, macs):
    # client packets teach their source's MAC mid-burst, which a later reply to that client
    # must then be sent to (a client changing MAC: the newer one)
    frames = [f[:6] + bytes([2, 0, 0, 0, 0x10, macs[i]]) + f[12:]
              for i, f in enumerate(_frame(c) for c in cases)]
    dec = _decisions(cases)
    ip_outs, ip_c, _ = _run(frames, dec, True, tmp_path, "ip.pcap", learn_neighbours=True)
    cp_outs, cp_c, _ = _run(frames, dec, False, tmp_path, "cp.pcap", learn_neighbours=True)
    assert ip_outs == cp_outs
    assert ip_c["in_place"] == len(cases)
    for k in ("forwarded", "nat_in", "nat_out", "l2_unresolved", "neighbours"):
        assert ip_c[k] == cp_c[k], k
    for i, (c, f, out) in enumerate(zip(cases, frames, ip_outs)):
        check_all_checksums(_ip_of(out))
        if c["out"] and c["client"] != "192.0.2.10":
            prior = [g[6:12] for d, g in zip(cases[:i], frames[:i])
                     if not d["out"] and d["client"] == c["client"]]
            assert out[:6] == (prior[-1] if prior else f[:6])


def test_udp_checksum_that_computes_to_zero_goes_out_as_ffff(tmp_path):
    rs = RS[RS_NAT_UDP4]
    # choose two payload bytes so that the rewritten segment's sum is 0xffff (checksum 0)
    seg = struct.pack("!HHHH", 5000, 5353, 10, 0)
    pseudo = addr16("192.0.2.10")[12:] + addr16(rs)[12:] + struct.pack("!BBH", 0, 17, 10)
    w = 0xffff - ones_sum(pseudo + seg + b"\0\0")
    frame = bytes(Ether(src=CMAC, dst=DMAC) / IP(src="192.0.2.10", dst=V4, ttl=9)
                  / UDP(sport=5000, dport=53) / struct.pack("!H", w))
    dec = decisions(1, action=ACT_HIT, dir=DIR_IN, fwd=CF_MASQ, rs=RS_NAT_UDP4, dport=5353, vport=53,
                    vaddr=V4)
    outs, c, _ = _run([frame], dec, True, tmp_path, "ip.pcap")
    out = _ip_of(outs[0])
    assert c["in_place"] == 1
    assert out[26:28] == b"\xff\xff"
    check_all_checksums(out)
    assert _run([frame], dec, False, tmp_path, "cp.pcap")[0] == outs


def test_many_random_headers_keep_valid_checksums(tmp_path):
    """Thousands of random IPv4 headers and ports (built here with struct, checksums from the
    independent helper): every end-around carry of the one-fold updates gets its chance."""
    import random
    from forward_helpers import inet_csum
    rnd = random.Random(20261126)
    frames, cases = [], []
    for i in range(4000):
        udp = rnd.random() < 0.5
        out = rnd.random() < 0.5
        client = bytes(rnd.choice([rnd.randrange(256), 0, 255]) for _ in range(4))
        rs = addr16(RS[RS_NAT_UDP4 if udp else RS_NAT_TCP4])[12:]
        src, dst = (rs, client) if out else (client, addr16(V4)[12:])
        sport, dport = rnd.randrange(1, 65536), rnd.randrange(1, 65536)
        payload = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 24)))
        if udp:
            l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        else:
            l4 = struct.pack("!HHIIBBHHH", sport, dport, rnd.getrandbits(32), 0, 5 << 4, 0x10,
                             rnd.randrange(65536), 0, 0) + payload
        proto = 17 if udp else 6
        c = inet_csum(src + dst + struct.pack("!BBH", 0, proto, len(l4)) + l4)
        if udp and c == 0:
            c = 0xffff
        ck = 6 if udp else 16
        l4 = l4[:ck] + struct.pack("!H", c) + l4[ck + 2:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, rnd.randrange(256), 20 + len(l4), rnd.randrange(65536),
                         0x4000, rnd.randrange(2, 256), proto, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", inet_csum(ip)) + ip[12:]
        frames.append(bytes.fromhex("0200000000fe020000000001") + b"\x08\x00" + ip + l4)
        cases.append({"out": out, "udp": udp, "rport": sport if out else rnd.randrange(1, 65536),
                      "vport": rnd.randrange(1, 65536), "action": ACT_HIT})
    outs, c, _ = _run(frames, _decisions(cases), True, tmp_path, "many.pcap")
    assert c["in_place"] == len(frames) == c["forwarded"]
    for out in outs:
        check_all_checksums(_ip_of(out))


ipv6 = st.lists(st.integers(0, 0xffff), min_size=8, max_size=8).map(
    lambda w: "2001:db8:" + ":".join("%x" % x for x in w[2:]))
case6 = st.fixed_dictionaries({
    "out": st.booleans(), "udp": st.booleans(),
    "client": st.one_of(st.just(C6), ipv6),
    "cport": st.integers(1, 65535), "vport": st.integers(1, 65535), "rport": st.integers(1, 65535),
    "hlim": st.integers(2, 255),
    "ext": st.booleans(),                   # a hop-by-hop header: the general path's case
    "vlan": st.sampled_from([None, 10]),
    "payload": st.binary(max_size=40),
    "action": st.sampled_from([ACT_NEW, ACT_HIT, ACT_RESCHED]),
})


def _frame6(c):
    rs = RS[RS_NAT_TCP6]
    src, dst = (rs, c["client"]) if c["out"] else (c["client"], V6)
    sport, dport = (c["rport"], c["cport"]) if c["out"] else (c["cport"], c["vport"])
    ip = IPv6(src=src, dst=dst, hlim=c["hlim"])
    if c["ext"]:
        ip = ip / IPv6ExtHdrHopByHop()
    l4 = UDP(sport=sport, dport=dport) if c["udp"] else TCP(sport=sport, dport=dport, flags="A")
    l2 = Ether(src=CMAC, dst=DMAC) / Dot1Q(vlan=c["vlan"]) if c["vlan"] else Ether(src=CMAC, dst=DMAC)
    return bytes(l2 / ip / l4 / c["payload"])


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases=st.lists(case6, min_size=1, max_size=16))
def test_ipv6_in_place_equals_copy_and_checksums_hold(tmp_path, cases):
    frames = [_frame6(c) for c in cases]
    dec = decisions(len(cases), action=[c["action"] for c in cases],
                    dir=[DIR_OUT if c["out"] else DIR_IN for c in cases], fwd=CF_MASQ, rs=RS_NAT_TCP6,
                    dport=[c["rport"] for c in cases], vport=[c["vport"] for c in cases], vaddr=V6)
    ip_outs, ip_c, buf = _run(frames, dec, True, tmp_path, "ip6.pcap")
    cp_outs, cp_c, _ = _run(frames, dec, False, tmp_path, "cp6.pcap")
    assert ip_outs == cp_outs
    assert ip_c["in_place"] == len(cases) and ip_c["copied"] == 0
    for k in ("forwarded", "nat_in", "nat_out", "dropped", "l2_unresolved"):
        assert ip_c[k] == cp_c[k], k
    assert bytes(buf) == b"".join(ip_outs)
    for c, f, out in zip(cases, frames, ip_outs):
        ip = _ip_of(out)
        check_all_checksums(ip)
        assert ip[7] == c["hlim"] - 1
        l4 = ip[48:] if c["ext"] else ip[40:]
        sport, dport = struct.unpack("!HH", l4[:4])
        if c["out"]:
            assert ip[8:24] == addr16(V6) and sport == c["vport"]
            nh = NEIGH.get(c["client"])
        else:
            assert ip[24:40] == addr16(RS[RS_NAT_TCP6]) and dport == c["rport"]
            nh = NEIGH[RS[RS_NAT_TCP6]]
        if nh is None:
            assert out[:12] == f[:12]
        else:
            assert out[:6] == bytes.fromhex(nh.replace(":", "")) and out[6:12] == f[:6]
