"""AF_PACKET I/O (ipvsflow.io.afpacket) and the live sink, on a veth pair in a namespace of the
test's own: zero-copy bursts, block release and ring wrap, kernel drop counters, outgoing and
other-host frames, MTU, the TX ring, promiscuous membership, the fanout program inside the
kernel, and the sink's next-hop choice (routes, neighbours, held frames, DR MACs).
Needs root and network namespaces (skipped otherwise)."""
from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
import struct
import subprocess
import time

import pytest

from netns_topology import netns_unavailable_reason

pytestmark = pytest.mark.netns

_reason = netns_unavailable_reason()
if _reason:
    pytest.skip(f"AF_PACKET tests skipped: {_reason}", allow_module_level=True)

from ipvsflow.config import parse_rules                                    # noqa: E402
from ipvsflow.engine import Engine                                         # noqa: E402
from ipvsflow.forward.xmit import Forwarder                                # noqa: E402
from ipvsflow.io.afpacket import RxRing, TxPort, LiveIOError, interface_info  # noqa: E402
from ipvsflow.io.batch import PacketBatch                                  # noqa: E402
from ipvsflow.live import fanout                                           # noqa: E402
from ipvsflow.live._fast import AfPacketSink                               # noqa: E402

CLONE_NEWNET = 0x40000000


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def ipv4(src, dst, proto, l4, ttl=64):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 0x4000, ttl, proto, 0,
                      ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + l4


def tcp(src, dst, sport, dport, flags=0x02, payload=b""):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + struct.pack("!BBH", 0, 6, len(seg))
    c = _csum(pseudo + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(sport, dport, payload=b""):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def eth(dst: bytes, src: bytes, ip: bytes) -> bytes:
    return dst + src + (b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd") + ip


def mac_bytes(text):
    return bytes.fromhex(text.replace(":", ""))


@pytest.fixture
def veth():
    """This test runs inside a fresh network namespace holding a veth pair v0 <-> v1."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    name = f"ipfaf{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            pytest.skip(f"setns failed: {os.strerror(ctypes.get_errno())}")
        # no IPv6: the kernel's own neighbour/router solicitations would add frames to count
        for cmd in ("sysctl -qw net.ipv6.conf.all.disable_ipv6=1",
                    "sysctl -qw net.ipv6.conf.default.disable_ipv6=1",
                    "ip link set lo up", "ip link add v0 type veth peer name v1",
                    "ethtool -K v0 tx off rx off gso off tso off gro off",
                    "ethtool -K v1 tx off rx off gso off tso off gro off",
                    "ip link set v0 up", "ip link set v1 up"):
            subprocess.run(cmd.split(), check=not cmd.startswith("ethtool"), capture_output=True)
        macs = {i: interface_info(i)[2] for i in ("v0", "v1")}
        yield macs
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(fd)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def read_all(ring, batch_cap=256, settle=0.05, want=None, timeout=5.0):
    """Every packet the ring delivers (as (descriptor row, bytes)) until it stays empty."""
    out = []
    b = PacketBatch(batch_cap)
    deadline = time.time() + timeout
    idle_since = time.time()
    while time.time() < deadline:
        n = ring.read(b, len(out))
        for i in range(n):
            out.append((b.row(i), b.packet_bytes(i)))
        ring.release()
        if n:
            idle_since = time.time()
        elif want is not None and len(out) >= want:
            break
        elif want is None and time.time() - idle_since > settle:
            break
        else:
            ring.wait(10)
    return out


def test_rx_bursts_are_zero_copy_and_parsed(veth):
    rx = RxRing("v1", block_size=1 << 16, block_count=4, retire_ms=1)
    tx = TxPort("v0")
    frames = [eth(veth["v1"], veth["v0"], ipv4("198.18.0.1", "198.18.0.2", 17, udp(1000 + i, 53, b"x" * i)))
              for i in range(50)]
    for f in frames:
        assert tx.send(f)
    assert tx.flush() == 50
    b = PacketBatch(64)
    got = []
    deadline = time.time() + 5
    while len(got) < 50 and time.time() < deadline:
        rx.wait(50)
        n = rx.read(b, 1000 + len(got))
        assert b.owner is rx
        arr = b.to_numpy()
        for i in range(n):
            row = b.row(i)
            assert row["index"] == 1000 + len(got)
            got.append((row, b.packet_bytes(i), int(arr["data"][i])))
        rx.release()
    assert [g[1] for g in got] == frames
    ring_mem = memoryview(rx)
    base = ctypes.addressof(ctypes.c_char.from_buffer(ring_mem))
    for row, data, ptr in got:
        assert base <= ptr < base + len(ring_mem)          # the descriptor points into the ring
        assert row["ifindex"] == socket.if_nametoindex("v1") and row["linktype"] == 1
        assert row["src"] == "198.18.0.1" and row["dst"] == "198.18.0.2" and row["dport"] == 53
        assert row["status"] == 0 and row["caplen"] == row["wirelen"] == len(data)
        assert abs(row["ts_ns"] - time.time_ns()) < 10 * 10**9
    assert [g[0]["sport"] for g in got] == list(range(1000, 1050))
    ring_mem.release()
    c = rx.counters()
    assert c["packets"] == 50 and c["kernel_drops"] == 0 and c["kernel_packets"] == 50


def test_ring_wraps_many_times_without_loss(veth):
    rx = RxRing("v1", block_size=1 << 16, block_count=4, retire_ms=1)
    tx = TxPort("v0")
    sent = 0
    got = 0
    b = PacketBatch(256)
    for chunk in range(40):
        frames = [eth(veth["v1"], veth["v0"], ipv4("198.18.0.1", "198.18.0.2", 17,
                                                   udp(sent + i & 0xffff, 9, bytes(60)))) for i in range(250)]
        for f in frames:
            tx.send(f)
        sent += tx.flush()
        time.sleep(0.002)
        while True:
            n = rx.read(b, got)
            got += n
            k = rx.release()
            if n == 0 and k == 0:
                break
    got += len(read_all(rx, want=sent - got))
    c = rx.counters()
    assert sent == 10000 and got == sent and c["kernel_drops"] == 0
    assert c["blocks"] >= 3 * 4             # the four blocks went round several times


def test_kernel_drops_are_counted(veth):
    rx = RxRing("v1", block_size=1 << 16, block_count=2, retire_ms=1)
    tx = TxPort("v0")
    for i in range(5000):
        tx.send(eth(veth["v1"], veth["v0"], ipv4("198.18.0.1", "198.18.0.2", 17, udp(i, 9, bytes(200)))))
        if i % 256 == 255:
            tx.flush()
    tx.flush()
    got = len(read_all(rx))
    c = rx.counters()
    assert c["kernel_drops"] > 0
    assert got + c["kernel_drops"] == 5000 == c["kernel_packets"]


def test_outgoing_and_other_host_frames_are_skipped(veth):
    own = RxRing("v0", block_size=1 << 16, block_count=4)
    rx = RxRing("v1", block_size=1 << 16, block_count=4)
    tx = TxPort("v0")
    other = bytes.fromhex("02aabbccddee")
    for i in range(10):
        tx.send(eth(veth["v1"], veth["v0"], ipv4("198.18.0.1", "198.18.0.2", 17, udp(i, 9))))
        tx.send(eth(other, veth["v0"], ipv4("198.18.0.1", "198.18.0.3", 17, udp(i, 9))))
        tx.send(eth(b"\xff" * 6, veth["v0"], ipv4("198.18.0.1", "198.18.0.255", 17, udp(i, 9))))
    tx.flush()
    got = read_all(rx)
    assert len(got) == 10 and all(r["dst"] == "198.18.0.2" for r, _ in got)
    assert rx.counters()["not_host"] == 20
    assert read_all(own) == []              # the sender's own transmissions are no input
    # with promiscuous mode, frames for other MACs are processed too (not broadcast)
    prx = RxRing("v1", block_size=1 << 16, block_count=4, promisc=True)
    for i in range(5):
        tx.send(eth(other, veth["v0"], ipv4("198.18.0.1", "198.18.0.3", 17, udp(i, 9))))
    tx.flush()
    assert len(read_all(prx)) == 5


def test_promiscuous_membership_goes_with_the_socket(veth):
    def promiscuity():
        out = subprocess.run(["ip", "-d", "link", "show", "v1"], capture_output=True, text=True).stdout
        return int(re.search(r"promiscuity (\d+)", out).group(1))
    assert promiscuity() == 0
    a = RxRing("v1", promisc=True, block_size=1 << 16, block_count=2)
    b = RxRing("v1", promisc=True, block_size=1 << 16, block_count=2)
    assert promiscuity() == 2
    a.close()
    assert promiscuity() == 1
    del b
    assert promiscuity() == 0


@pytest.mark.parametrize("mode", ["sendmmsg", "ring"])
def test_tx_modes_and_mtu(veth, mode):
    subprocess.run(["ip", "link", "set", "v0", "mtu", "1000"], check=True)
    rx = RxRing("v1", block_size=1 << 16, block_count=4)
    tx = TxPort("v0", mode=mode, queue=8, ring_frames=16)
    assert tx.mtu == 1000
    ok = eth(veth["v1"], veth["v0"], ipv4("198.18.0.1", "198.18.0.2", 17, udp(1, 9, bytes(1000 - 28))))
    big = eth(veth["v1"], veth["v0"], ipv4("198.18.0.1", "198.18.0.2", 17, udp(2, 9, bytes(1001 - 28))))
    assert tx.send(ok) and not tx.send(big)
    frames = [eth(veth["v1"], veth["v0"], ipv4("198.18.0.1", "198.18.0.2", 17, udp(100 + i, 9))) for i in range(40)]
    for f in frames:                 # more than the queue / ring holds: flushed on the way
        assert tx.send(f)
    tx.flush()
    got = read_all(rx)
    assert [d for _, d in got] == [ok] + frames
    c = tx.counters()
    assert c["packets"] == 41 and c["too_big"] == 1 and c["errors"] == 0


def test_errors_name_the_interface(veth):
    with pytest.raises(LiveIOError, match="nosuch0: no such network interface"):
        RxRing("nosuch0")
    with pytest.raises(ValueError, match="page size"):
        RxRing("v1", block_size=1000)
    with pytest.raises(ValueError, match="TX mode"):
        TxPort("v0", mode="carrier-pigeon")


def test_fanout_program_in_the_kernel(veth):
    """Three sockets in a CBPF fanout group: a client's packet to the VIP and the real
    server's NAT reply to that client land on the same socket, number client_hash % 3."""
    servers = [("198.18.2.11", 80), ("198.18.2.12", 80)]
    rings = [RxRing("v1", block_size=1 << 16, block_count=4, fanout=(4242, "cbpf")) for _ in range(3)]
    rings[0].set_fanout_program(fanout.program(servers))
    tx = TxPort("v0")
    clients = [(f"203.0.113.{i}", 20000 + 13 * i) for i in range(1, 61)]
    for c, p in clients:
        tx.send(eth(veth["v1"], veth["v0"], ipv4(c, "198.18.100.1", 6, tcp(c, "198.18.100.1", p, 80))))
        rs = servers[p % 2][0]
        tx.send(eth(veth["v1"], veth["v0"], ipv4(rs, c, 6, tcp(rs, c, 80, p, 0x12))))
    tx.flush()
    where = {}
    for k, r in enumerate(rings):
        for row, _ in read_all(r):
            client = (row["src"], row["sport"]) if row["dport"] == 80 else (row["dst"], row["dport"])
            where.setdefault(client, set()).add(k)
    assert len(where) == 60
    for (c, p), socks in where.items():
        assert socks == {fanout.client_hash(c, p) % 3}, (c, p, socks)
    assert len({next(iter(s)) for s in where.values()}) == 3     # every worker got clients


RULES_NAT = "-A -t 198.18.100.1:80 -s rr\n-a -t 198.18.100.1:80 -r 198.18.9.11:80 -m -w 1\n"
RULES_DR = "-A -t 198.18.100.1:80 -s rr\n-a -t 198.18.100.1:80 -r 198.18.9.12:80 -g -w 1\n"


def _forward(veth, engine, fwd, sink, frames):
    b = PacketBatch.from_packets([(time.time_ns() + i, f) for i, f in enumerate(frames)])
    dec = engine.process(b)
    fwd.forward(b, dec, 0, len(frames), sink)
    sink.flush_ports()
    return dec


def test_sink_picks_next_hops_like_the_kernel(veth):
    ifx = socket.if_nametoindex("v0")
    own, peer = veth["v0"], veth["v1"]
    # the frames go to other MACs than v1's: read them as a bridge port would
    rx = RxRing("v1", block_size=1 << 16, block_count=4, accept_otherhost=True)
    sink = AfPacketSink([TxPort("v0")])
    sink.set_routes([
        {"dst": "198.18.9.0", "plen": 24, "ifindex": ifx, "gateway": None},
        {"dst": "0.0.0.0", "plen": 0, "ifindex": ifx, "gateway": "198.18.9.1", "metric": 10},
        {"dst": "0.0.0.0", "plen": 0, "ifindex": 999, "gateway": "198.18.9.2", "metric": 20},
        {"dst": "192.0.2.0", "plen": 24, "ifindex": 999, "gateway": None},
        {"dst": "198.51.100.0", "plen": 24, "ifindex": 0, "kind": "unreachable"},
    ])
    gw_mac, rs_mac = bytes.fromhex("02000000aa01"), bytes.fromhex("02000000aa11")
    sink.set_neighbours([("198.18.9.1", ifx, gw_mac)])
    assert sink.lookup("203.0.113.5") == (ifx, "198.18.9.1", "02:00:00:00:aa:01")
    assert sink.lookup("198.18.9.11") == (ifx, "198.18.9.11", None)
    assert sink.lookup("198.51.100.1") is None
    eng = Engine(parse_rules(RULES_NAT))
    fwd = Forwarder(eng, learn_neighbours=False)
    client = "203.0.113.5"
    syn = eth(own, peer, ipv4(client, "198.18.100.1", 6, tcp(client, "198.18.100.1", 33000, 80)))
    _forward(veth, eng, fwd, sink, [syn])
    # the real server's MAC is unknown: the frame waits, its next hop is reported
    assert sink.held == 1 and sink.counters()["neigh_held"] == 1
    assert sink.take_misses() == [("198.18.9.11", ifx)]
    assert read_all(rx) == []
    sink.set_neighbours([("198.18.9.1", ifx, gw_mac), ("198.18.9.11", ifx, rs_mac)])
    assert sink.retry_held(time.time_ns(), 10**9) == (1, 0)
    (row, data), = read_all(rx)
    assert data[:6] == rs_mac and data[6:12] == own
    assert row["dst"] == "198.18.9.11" and row["src"] == client and row["dport"] == 80
    assert _csum(data[14:34]) == 0                           # IPv4 header checksum still right
    # the reply goes to the client through the default route's gateway
    reply = eth(own, rs_mac, ipv4("198.18.9.11", client, 6, tcp("198.18.9.11", client, 80, 33000, 0x12)))
    _forward(veth, eng, fwd, sink, [reply])
    (row, data), = read_all(rx)
    assert data[:6] == gw_mac and data[6:12] == own
    assert row["src"] == "198.18.100.1" and row["sport"] == 80 and row["dst"] == client
    # unreachable, foreign-interface and missing routes are dropped and counted
    for c in ("198.51.100.7", "192.0.2.7"):
        _forward(veth, eng, fwd, sink, [eth(own, peer, ipv4(c, "198.18.100.1", 6, tcp(c, "198.18.100.1", 1, 80)))])
        _forward(veth, eng, fwd, sink, [eth(own, rs_mac, ipv4("198.18.9.11", c, 6, tcp("198.18.9.11", c, 80, 1, 0x12)))])
    sink.set_routes([{"dst": "198.18.9.0", "plen": 24, "ifindex": ifx, "gateway": None}])
    c = "203.0.113.77"
    _forward(veth, eng, fwd, sink, [eth(own, peer, ipv4(c, "198.18.100.1", 6, tcp(c, "198.18.100.1", 2, 80)))])
    _forward(veth, eng, fwd, sink, [eth(own, rs_mac, ipv4("198.18.9.11", c, 6, tcp("198.18.9.11", c, 80, 2, 0x12)))])
    cnt = sink.counters()
    # the requests reached the server; only the replies had no usable route
    assert (cnt["route_reject"], cnt["route_foreign"], cnt["no_route"]) == (1, 1, 1)
    assert sorted(r["src"] for r, _ in read_all(rx)) == ["192.0.2.7", "198.51.100.7", "203.0.113.77"]
    # a held frame whose next hop never answers is dropped after the wait
    sink.set_neighbours([])
    c = "198.18.9.200"
    _forward(veth, eng, fwd, sink, [eth(own, peer, ipv4(c, "198.18.100.1", 6, tcp(c, "198.18.100.1", 3, 80)))])
    _forward(veth, eng, fwd, sink, [eth(own, rs_mac, ipv4("198.18.9.11", c, 6, tcp("198.18.9.11", c, 80, 3, 0x12)))])
    assert sink.held == 2
    assert sink.retry_held(time.time_ns() + 5 * 10**9, 10**9) == (0, 0)
    assert sink.counters()["neigh_miss"] == 2
    assert read_all(rx) == []


def test_sink_sends_dr_frames_to_the_servers_mac(veth):
    ifx = socket.if_nametoindex("v0")
    own, peer = veth["v0"], veth["v1"]
    # the frames go to other MACs than v1's: read them as a bridge port would
    rx = RxRing("v1", block_size=1 << 16, block_count=4, accept_otherhost=True)
    sink = AfPacketSink([TxPort("v0")])
    sink.set_routes([{"dst": "198.18.9.0", "plen": 24, "ifindex": ifx, "gateway": None}])
    rs_mac = bytes.fromhex("02000000aa12")
    sink.set_neighbours([("198.18.9.12", ifx, rs_mac)])
    eng = Engine(parse_rules(RULES_DR))
    fwd = Forwarder(eng, neighbours={"198.18.9.12": rs_mac}, learn_neighbours=False)
    c = "203.0.113.9"
    _forward(veth, eng, fwd, sink, [eth(own, peer, ipv4(c, "198.18.100.1", 6, tcp(c, "198.18.100.1", 4000, 80)))])
    (row, data), = read_all(rx)
    # DR: only the MACs change; there is no route to the VIP and none is needed
    assert data[:6] == rs_mac and data[6:12] == own
    assert row["dst"] == "198.18.100.1" and row["src"] == c
    assert sink.counters()["no_route"] == 0


def test_sink_follows_a_server_mac_that_moved_to_another_interface(veth):
    # the sink remembers the last destination MAC's interface between frames: a new neighbour
    # table must be obeyed from the next frame on
    subprocess.run("ip link add v2 type veth peer name v3".split(), check=True)
    for i in ("v2", "v3"):
        subprocess.run(["ip", "link", "set", i, "up"], check=True)
    ifx, ifx2 = socket.if_nametoindex("v0"), socket.if_nametoindex("v2")
    own, peer = veth["v0"], veth["v1"]
    rx1 = RxRing("v1", block_size=1 << 16, block_count=4, accept_otherhost=True)
    rx3 = RxRing("v3", block_size=1 << 16, block_count=4, accept_otherhost=True)
    sink = AfPacketSink([TxPort("v0"), TxPort("v2")])
    rs_mac = bytes.fromhex("02000000aa12")
    eng = Engine(parse_rules(RULES_DR))
    fwd = Forwarder(eng, neighbours={"198.18.9.12": rs_mac}, learn_neighbours=False)
    c = "203.0.113.9"

    def syn(port):
        return eth(own, peer, ipv4(c, "198.18.100.1", 6, tcp(c, "198.18.100.1", port, 80)))

    sink.set_neighbours([("198.18.9.12", ifx, rs_mac)])
    _forward(veth, eng, fwd, sink, [syn(4000), syn(4001)])
    assert [r["sport"] for r, _ in read_all(rx1, want=2)] == [4000, 4001]
    sink.set_neighbours([("198.18.9.12", ifx2, rs_mac)])
    _forward(veth, eng, fwd, sink, [syn(4002)])
    (row, data), = read_all(rx3, want=1)
    assert row["sport"] == 4002 and data[:6] == rs_mac
    assert data[6:12] == interface_info("v2")[2]           # the egress interface's own MAC
    assert read_all(rx1) == []
    # an address of the director's own (its interface's MAC) goes by the route again
    sink.set_routes([{"dst": "198.18.100.0", "plen": 24, "ifindex": ifx, "gateway": None}])
    sink.set_neighbours([("198.18.9.12", ifx2, rs_mac), ("198.18.100.1", ifx, bytes.fromhex("02000000aa13"))])
    sink.set_vlans([{"ifindex": 4242, "parent": ifx2, "vid": 7, "mac": rs_mac}])
    _forward(veth, eng, fwd, sink, [syn(4003)])
    (row, data), = read_all(rx1, want=1)
    assert row["sport"] == 4003 and data[:6] == bytes.fromhex("02000000aa13")
    assert read_all(rx3) == []


def test_dry_run_transmits_nothing(veth):
    ifx = socket.if_nametoindex("v0")
    rx = RxRing("v1", block_size=1 << 16, block_count=4)
    sink = AfPacketSink([TxPort("v0")], dry_run=True)
    sink.set_routes([{"dst": "198.18.9.0", "plen": 24, "ifindex": ifx, "gateway": None}])
    sink.set_neighbours([("198.18.9.11", ifx, "02:00:00:00:aa:11")])
    eng = Engine(parse_rules(RULES_NAT))
    fwd = Forwarder(eng, learn_neighbours=False)
    c = "198.18.9.50"
    _forward(veth, eng, fwd, sink, [eth(veth["v0"], veth["v1"], ipv4(c, "198.18.100.1", 6, tcp(c, "198.18.100.1", 1, 80)))])
    assert sink.counters()["dry_run"] == 1 and sink.counters()["queued"] == 0
    assert read_all(rx) == []
