"""ICMP errors mapped to the connection of the packet they embed (ip_vs_in_icmp /
ip_vs_out_icmp; reference section 5): forwarded to that connection's server with the statistics
of their direction, without touching its state or timer."""
from __future__ import annotations

import struct

from engine_helpers import (
    Driver, engine, service, batch, decode, ether, ip_packet, l4_tcp, l4_udp,
    T0, CLIENT, CPORT, VIP, RS1, RS2, TCP, UDP,
)
from ipvsflow.config import FWD_MASQ, FWD_DROUTE


def icmp4(src, dst, typ, code, inner):
    return ether(ip_packet(src, dst, 1, struct.pack("!BBHI", typ, code, 0, 0) + inner))


def icmp6(src, dst, typ, code, inner):
    return ether(ip_packet(src, dst, 58, struct.pack("!BBHI", typ, code, 0, 0) + inner))


def reply_inner(proto=TCP, vip=VIP, client=CLIENT, vport=80, cport=CPORT):
    l4 = l4_tcp(vport, cport, "A") if proto == TCP else l4_udp(vport, cport)
    return ip_packet(vip, client, proto, l4[:8])


def established(drv):
    drv.c2s(0.0, "S")
    drv.s2c(0.01, "SA")
    drv.c2s(0.02, "A")


def test_client_error_about_a_reply_follows_the_connection():
    for fwd in (FWD_MASQ, FWD_DROUTE):
        eng = engine(service(fwd=fwd))
        drv = Driver(eng)
        established(drv)
        before = eng.connections()[0]
        for typ, code in ((3, 3), (3, 4), (11, 0), (4, 0)):
            d = drv.send(1.0, icmp4(CLIENT, VIP, typ, code, reply_inner()))
            assert (d["action"], d["dir"], d["rs"], d["conn"]) == ("hit", "in", RS2, 1)
            assert d["flags"] & 0x04                        # DF_ICMP
        after = eng.connections()[0]
        assert (after["state"], after["deadline_ns"]) == (before["state"], before["deadline_ns"])
        assert eng.dests()[1]["inpkts"] == 2 + 4      # client SYN and ACK, four errors


def test_errors_without_a_connection_or_not_errors():
    eng = engine()
    drv = Driver(eng)
    d = drv.send(0.0, icmp4(CLIENT, VIP, 3, 3, reply_inner()))
    assert (d["action"], d["reason"], d["dir"]) == ("pass", "icmp_no_conn", "in")
    d = drv.send(0.1, icmp4(CLIENT, VIP, 8, 0, bytes(8)))               # echo request
    assert (d["action"], d["reason"]) == ("pass", "not_ipvs_proto")
    d = drv.send(0.2, icmp4(CLIENT, VIP, 12, 0, reply_inner()))         # parameter problem
    assert (d["action"], d["reason"]) == ("pass", "not_ipvs_proto")
    inner_gre = ip_packet(VIP, CLIENT, 47, bytes(8))
    d = drv.send(0.3, icmp4(CLIENT, VIP, 3, 3, inner_gre))
    assert (d["action"], d["reason"]) == ("pass", "icmp_unrelated")


def test_real_server_error_about_a_client_packet_behind_a_nat_director():
    eng = engine(service(fwd=FWD_MASQ, dport=8080))
    drv = Driver(eng)
    established(drv)
    # the server got client:40000 -> RS2:8080 and answers with an error (to the client)
    inner = ip_packet(CLIENT, RS2, TCP, l4_tcp(CPORT, 8080, "A")[:8])
    d = drv.send(1.0, icmp4(RS2, CLIENT, 3, 4, inner))
    assert (d["action"], d["dir"], d["rs"], d["conn"]) == ("hit", "out", RS2, 1)
    assert eng.dests()[1]["outpkts"] == 2


def test_schedule_icmp_creates_an_entry_with_the_3s_timeout():
    eng = engine(service(proto=UDP, port=53), schedule_icmp=1)
    drv = Driver(eng)
    d = drv.send(0.0, icmp4(CLIENT, VIP, 3, 3, reply_inner(UDP, vport=53, cport=5353)))
    assert (d["action"], d["rs"]) == ("new", RS2)
    row = eng.connections()[0]
    assert (row["cport"], row["vport"], row["expire"]) == (5353, 53, 3)
    # the first real packet sets the protocol's timeout
    drv.c2s(1.0, None, cport=5353, vport=53, proto=UDP)
    assert eng.connections()[0]["expire"] == 300
    eng.check_invariants()
    eng.advance(T0 + 302 * 10**9)
    assert eng.conn_count == 0


def test_icmpv6_errors():
    vip6, cli6, rs_a, rs_b = "2001:db8::10", "2001:db8:9::1", "2001:db8:1::1", "2001:db8:1::2"
    eng = engine(service(addr=vip6, dests=(rs_a, rs_b), fwd=FWD_MASQ))
    drv = Driver(eng)
    drv.c2s(0.0, "S", client=cli6, vip=vip6)
    inner = ip_packet(vip6, cli6, TCP, l4_tcp(80, CPORT, "SA")[:8])
    d = drv.send(0.1, icmp6(cli6, vip6, 2, 0, inner))                  # packet too big
    assert (d["action"], d["dir"], d["rs"]) == ("hit", "in", rs_b)
    d = drv.send(0.2, icmp6(cli6, vip6, 128, 0, bytes(8)))             # echo request
    assert (d["action"], d["reason"]) == ("pass", "not_ipvs_proto")


def test_ah_esp_follow_the_isakmp_connection():
    # ip_vs_proto_ah_esp.c: AH/ESP packets use the UDP client:500 -> VIP:500 entry and never
    # schedule; their timer restarts with that entry's UDP timeout
    eng = engine(service(proto=UDP, port=500, fwd=FWD_MASQ))
    drv = Driver(eng)
    esp = lambda t, src, dst: drv.send(t, ether(ip_packet(src, dst, 50, bytes(16))))
    d = esp(0.0, CLIENT, VIP)
    assert (d["action"], d["reason"]) == ("pass", "related_only")
    ike = drv.c2s(1.0, None, cport=500, vport=500, proto=UDP)
    assert ike["action"] == "new"
    d = esp(100.0, CLIENT, VIP)
    assert (d["action"], d["dir"], d["rs"], d["conn"]) == ("hit", "in", ike["rs"], ike["conn"])
    assert eng.connections()[0]["deadline_ns"] == T0 + 400 * 10**9
    d = esp(101.0, VIP, CLIENT)                      # the reply, in front of the director
    assert (d["action"], d["dir"]) == ("hit", "out")
    ah = drv.send(102.0, ether(ip_packet(CLIENT, VIP, 51, bytes(24))))
    assert (ah["action"], ah["conn"]) == ("hit", ike["conn"])
    assert eng.connections()[0]["state"] == "UDP"
