"""VLAN tags through the live director: the receive ring gives frames back their 802.1Q /
802.1ad tag (the kernel moves it out of the frame into the ring header), and the sink sends each
frame on the VLAN of its egress (a VLAN interface's id; untagged on an interface with VLAN
interfaces; the frame's own VLAN when it leaves an interface without any through the
interface it came in on). Needs root and network namespaces; the kernel needs no 8021q module
(the VLAN interfaces of the sink tests are described to it, not created).
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time

import pytest

from ipvsflow.config import parse_rules
from ipvsflow.engine import Engine
from ipvsflow.forward.xmit import Forwarder
from ipvsflow.io.afpacket import RxRing, TxPort
from ipvsflow.io.batch import PacketBatch
from ipvsflow.live._fast import AfPacketSink

from netns_topology import REPO, Topology, netns_unavailable_reason
from test_live_afpacket import _csum, eth, ipv4, read_all, udp, veth  # noqa: F401

pytestmark = pytest.mark.netns

RULES_NAT = "-A -u 198.18.100.1:53 -s rr\n-a -u 198.18.100.1:53 -r 198.18.20.11:53 -m -w 1\n"
RS_MAC = bytes.fromhex("02000000aa11")
CLIENT_MAC = bytes.fromhex("02000000aa50")


def tag(vid: int, pcp: int = 0, tpid: int = 0x8100) -> bytes:
    return struct.pack("!HH", tpid, (pcp << 13) | vid)


def tagged(frame: bytes, *tags: bytes) -> bytes:
    """``frame`` (untagged Ethernet) with ``tags`` inserted after the MACs, outermost first."""
    return frame[:12] + b"".join(tags) + frame[12:]


def test_rx_gives_frames_their_vlan_tags_back(veth):
    rx = RxRing("v1", block_size=1 << 16, block_count=4, retire_ms=1)
    tx = TxPort("v0")
    ip = ipv4("198.18.0.1", "198.18.0.2", 17, udp(1000, 53, b"vlan"))
    plain = eth(veth["v1"], veth["v0"], ip)
    sent = [tagged(plain, tag(10, pcp=5)),                             # 802.1Q, priority kept
            tagged(plain, tag(20, tpid=0x88a8), tag(30)),               # 802.1ad outer + 802.1Q
            plain]
    for f in sent:
        assert tx.send(f)
    assert tx.flush() == 3
    got = read_all(rx, want=3)
    # byte for byte what was on the wire, in order
    assert [d for _, d in got] == sent
    rows = [r for r, _ in got]
    assert [(r["vlan_count"], r["vlan_outer"], r["vlan_inner"]) for r in rows] == \
        [(1, 10, 0), (2, 20, 30), (0, 0, 0)]
    assert [r["l3_off"] for r in rows] == [18, 22, 14]
    assert all(r["dport"] == 53 and r["src"] == "198.18.0.1" for r in rows)
    c = rx.counters()
    assert c["vlan_restored"] == 2 and c["vlan_no_room"] == 0


def _forward(sink, fwd, eng, frames, ingress=0):
    b = PacketBatch.from_packets([(time.time_ns() + i, f) for i, f in enumerate(frames)])
    sink.ingress = ingress
    dec = eng.process(b)
    fwd.forward(b, dec, 0, len(frames), sink)
    sink.flush_ports()
    return dec


def _nat_setup(veth, vlans):
    ifx = socket.if_nametoindex("v0")
    rx = RxRing("v1", block_size=1 << 16, block_count=4, accept_otherhost=True)
    sink = AfPacketSink([TxPort("v0")])
    sink.set_vlans([dict(v, parent=ifx, mac=veth["v0"]) for v in vlans])
    eng = Engine(parse_rules(RULES_NAT))
    fwd = Forwarder(eng, learn_neighbours=False)
    return ifx, rx, sink, eng, fwd


def test_sink_sends_on_the_vlan_of_the_route(veth):
    # v0 is a trunk: VLAN interface 1020 (id 20) holds the real servers' network, the clients'
    # network is untagged on v0 itself
    ifx, rx, sink, eng, fwd = _nat_setup(veth, [{"ifindex": 1020, "vid": 20}])
    sink.set_routes([{"dst": "198.18.20.0", "plen": 24, "ifindex": 1020, "gateway": None},
                     {"dst": "198.18.9.0", "plen": 24, "ifindex": ifx, "gateway": None}])
    sink.set_neighbours([("198.18.20.11", 1020, RS_MAC), ("198.18.9.50", ifx, CLIENT_MAC)])
    assert sink.lookup("198.18.20.11") == (1020, "198.18.20.11", "02:00:00:00:aa:11")
    own = veth["v0"]
    c = "198.18.9.50"
    req = eth(own, CLIENT_MAC, ipv4(c, "198.18.100.1", 17, udp(4000, 53, b"q")))
    _forward(sink, fwd, eng, [tagged(req, tag(10, pcp=3)), req, tagged(req, tag(7, tpid=0x88a8), tag(8))])
    got = read_all(rx, want=3)
    assert len(got) == 3
    outer = [d[12:16] for _, d in got]
    # retagged (priority kept), tagged, outer tag of the stack replaced (inner kept)
    assert outer == [tag(20, pcp=3), tag(20), tag(20)]
    assert got[2][1][16:20] == tag(8)
    for row, data in got:
        assert data[:6] == RS_MAC and data[6:12] == own
        assert row["dst"] == "198.18.20.11" and row["src"] == c and row["dport"] == 53
        assert _csum(data[row["l3_off"]:row["l3_off"] + 20]) == 0
    # the replies go to the untagged clients' network: tags removed
    rep = eth(own, RS_MAC, ipv4("198.18.20.11", c, 17, udp(53, 4000, b"a")))
    _forward(sink, fwd, eng, [tagged(rep, tag(20)), rep])
    got = read_all(rx, want=2)
    assert [d[12:14] for _, d in got] == [b"\x08\x00", b"\x08\x00"]
    for row, data in got:
        assert data[:6] == CLIENT_MAC and row["src"] == "198.18.100.1" and row["sport"] == 53
        assert row["vlan_count"] == 0 and len(data) == len(rep)
    cnt = sink.counters()
    assert (cnt["vlan_retagged"], cnt["vlan_tagged"], cnt["vlan_untagged"]) == (2, 1, 1)
    assert cnt["queued"] == 5


def test_sink_keeps_the_vlan_it_came_in_on_without_vlan_interfaces(veth):
    # no VLAN interfaces: the director's kernel knows nothing of the VLANs on its trunk v0
    subprocess.run("ip link add v2 type veth peer name v3".split(), check=True)
    for i in ("v2", "v3"):
        subprocess.run(["ip", "link", "set", i, "up"], check=True)
    ifx, ifx2 = socket.if_nametoindex("v0"), socket.if_nametoindex("v2")
    rx = RxRing("v1", block_size=1 << 16, block_count=4, accept_otherhost=True)
    sink = AfPacketSink([TxPort("v0"), TxPort("v2")])
    sink.set_routes([{"dst": "198.18.20.0", "plen": 24, "ifindex": ifx, "gateway": None},
                     {"dst": "198.18.9.0", "plen": 24, "ifindex": ifx, "gateway": None}])
    sink.set_neighbours([("198.18.20.11", ifx, RS_MAC), ("198.18.9.50", ifx, CLIENT_MAC)])
    eng = Engine(parse_rules(RULES_NAT))
    fwd = Forwarder(eng, learn_neighbours=False)
    own, c = veth["v0"], "198.18.9.50"
    req = tagged(eth(own, CLIENT_MAC, ipv4(c, "198.18.100.1", 17, udp(4001, 53, b"q"))), tag(10))
    # in and out on v0 (one-armed on a trunk): the VLAN is kept
    _forward(sink, fwd, eng, [req], ingress=ifx)
    (row, data), = read_all(rx, want=1)
    assert data[12:16] == tag(10) and row["dst"] == "198.18.20.11"
    # in on v2, out on v0: that VLAN means nothing on v0, the tag goes
    _forward(sink, fwd, eng, [req], ingress=ifx2)
    (row, data), = read_all(rx, want=1)
    assert data[12:14] == b"\x08\x00" and row["dst"] == "198.18.20.11" and row["vlan_count"] == 0
    assert sink.ingress == ifx2
    cnt = sink.counters()
    assert (cnt["vlan_retagged"], cnt["vlan_tagged"], cnt["vlan_untagged"]) == (0, 0, 1)


def test_sink_rejects_bad_vlans(veth):
    sink = AfPacketSink([TxPort("v0")])
    ifx = socket.if_nametoindex("v0")
    for bad in ({"ifindex": 5, "parent": ifx, "vid": 4096, "mac": veth["v0"]},
                {"ifindex": 5, "parent": ifx, "vid": 5, "tpid": 0x9100, "mac": veth["v0"]},
                {"ifindex": 5, "parent": ifx, "vid": 5, "mac": b"\x02"}):
        with pytest.raises(ValueError):
            sink.set_vlans([bad])
    # a VLAN interface on an interface the director does not use is no egress
    sink.set_vlans([{"ifindex": 77, "parent": 12345, "vid": 5, "mac": veth["v0"]}])
    sink.set_routes([{"dst": "198.18.5.0", "plen": 24, "ifindex": 77, "gateway": None}])
    assert sink.lookup("198.18.5.1") == (77, "198.18.5.1", None)


# ---- the director on a trunk, end to end ----------------------------------------------------

PEER = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ipvsflow.io.afpacket import RxRing, TxPort
from ipvsflow.io.batch import PacketBatch
frames = [bytes.fromhex(h) for h in json.loads(sys.argv[2])]
rx = RxRing("eth0", block_size=1 << 16, block_count=8, accept_otherhost=True)
tx = TxPort("eth0")
for f in frames:
    tx.send(f)
tx.flush()
b = PacketBatch(64)
out, deadline = [], time.time() + 10
while len(out) < len(frames) and time.time() < deadline:
    n = rx.read(b)
    out += [b.packet_bytes(i).hex() for i in range(n)]
    rx.release()
    if not n:
        rx.wait(50)
print(json.dumps(out))
'''


def test_director_on_a_trunk_keeps_the_vlan():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    t = Topology("v")
    try:
        t.add_ns("peer")
        t.add_ns("dir")
        t.link("peer", "eth0", "dir", "eth0")
        t.sh("dir", "ip addr add 198.18.20.1/24 dev eth0")
        t.sh("dir", "ip addr add 198.18.9.1/24 dev eth0")
        t.sysctl("dir", "net.ipv4.ip_forward", 0)
        t.sysctl("peer", "net.ipv6.conf.all.disable_ipv6", 1)
        # clients and the real server are on VLAN 10 behind the trunk; the director's kernel
        # has no VLAN interface (its neighbours are static)
        t.sh("dir", f"ip neigh replace 198.18.20.11 lladdr {RS_MAC.hex(':')} dev eth0 nud permanent")
        t.sh("dir", f"ip neigh replace 198.18.9.50 lladdr {CLIENT_MAC.hex(':')} dev eth0 nud permanent")
        dmac = bytes.fromhex(t.mac("dir", "eth0").replace(":", ""))
        d = t.director(RULES_NAT, ["eth0"], "--stats-interval", "0")
        try:
            c = "198.18.9.50"
            req = tagged(eth(dmac, CLIENT_MAC, ipv4(c, "198.18.100.1", 17, udp(5000, 53, b"q"))), tag(10, pcp=2))
            r = t.run("peer", sys.executable, "-c", PEER, str(REPO), json.dumps([req.hex()]))
            (fwd,) = [bytes.fromhex(h) for h in json.loads(r.stdout)]
            assert fwd[:6] == RS_MAC and fwd[12:16] == tag(10, pcp=2)
            assert fwd[18 + 16:18 + 20] == socket.inet_aton("198.18.20.11")
            rep = tagged(eth(dmac, RS_MAC, ipv4("198.18.20.11", c, 17, udp(53, 5000, b"a"))), tag(10))
            r = t.run("peer", sys.executable, "-c", PEER, str(REPO), json.dumps([rep.hex()]))
            (back,) = [bytes.fromhex(h) for h in json.loads(r.stdout)]
            assert back[:6] == CLIENT_MAC and back[12:16] == tag(10)
            assert back[18 + 12:18 + 16] == socket.inet_aton("198.18.100.1")
            assert back[18 + 20:18 + 22] == struct.pack("!H", 53)
            st = d.status()
        finally:
            d.stop()
        assert st["rx"]["eth0"]["vlan_restored"] == 2
        assert st["sink"]["vlan_untagged"] == 0 and st["sink"]["queued"] == 2
    finally:
        t.cleanup()
