"""Robustness: arbitrary frames (valid, truncated, garbage) with arbitrary decisions never
crash the forwarder, and every packet is accounted for exactly once."""
from hypothesis import given, settings, HealthCheck, strategies as st
from scapy.all import Ether, IP, IPv6, TCP, UDP, SCTP, SCTPChunkData, ICMP, ICMPv6DestUnreach

from forward_helpers import make_engine, decisions, check_accounting
from ipvsflow.forward import Forwarder, NullSink
from ipvsflow.io import PacketBatch

SEEDS = [
    bytes(Ether() / IP(src="192.0.2.1", dst="10.0.0.100", ttl=5) / TCP(sport=1, dport=80) / b"data"),
    bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::100") / UDP(sport=1, dport=80) / b"x"),
    bytes(Ether() / IP(src="192.0.2.1", dst="10.0.0.100") / SCTP(sport=1, dport=80) / SCTPChunkData(data=b"abc")),
    bytes(Ether() / IP(src="192.0.2.1", dst="10.0.0.100") / ICMP(type=3) / IP(src="10.0.0.100", dst="192.0.2.1") / TCP()),
    bytes(Ether() / IPv6(src="2001:db8::1", dst="2001:db8::100") / ICMPv6DestUnreach() / IPv6() / UDP()),
    bytes(IP(src="192.0.2.1", dst="10.0.0.100", flags="MF") / UDP(sport=1, dport=80, chksum=0) / (b"y" * 30)),
]

frame = st.one_of(
    st.sampled_from(SEEDS),
    st.tuples(st.sampled_from(SEEDS), st.integers(0, 120)).map(lambda t: t[0][:t[1]]),
    st.tuples(st.sampled_from(SEEDS), st.integers(0, 90), st.integers(0, 255)).map(
        lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:]),
    st.binary(max_size=80),
)
record = st.fixed_dictionaries({
    "action": st.integers(0, 7), "dir": st.integers(0, 3), "fwd": st.sampled_from([0, 1, 2, 3, 4, 5, 0xff]),
    "rs": st.integers(-2, 12), "dport": st.integers(0, 65535), "vport": st.integers(0, 65535),
    "lt": st.sampled_from([1, 1, 1, 101, 113, 0]),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(frame, record), min_size=1, max_size=12),
       st.sampled_from([None, 1, 101, 113, 276, 0, 108, 228, 229]), st.booleans(),
       st.sampled_from(["ipip", "gue:6080", {"type": "gre", "csum": True}]))
def test_no_crash_and_full_accounting(items, out_lt, writable, tunnel):
    eng = make_engine()
    raws = [f for f, _ in items]
    b = PacketBatch.from_packets([(10**18 + i, f, None, None, r["lt"]) for i, (f, r) in enumerate(items)])
    if writable:
        from forward_helpers import _repoint
        buf = bytearray(b"".join(raws))
        _repoint(b, buf, [len(f) for f in raws])
    d = decisions(len(items), **{k: [r[k] for _, r in items] for k in ("action", "dir", "fwd", "rs", "dport", "vport")},
                  vaddr=["10.0.0.100" if i % 2 else "2001:db8::100" for i in range(len(items))])
    fw = Forwarder(eng, tunnel=tunnel, tunnel_source=["10.0.0.1", "2001:db8::1"],
                   neighbours={"10.0.2.1": "02:00:00:00:00:01", "2001:db8:2::1": "02:00:00:00:00:02"},
                   local_sink=NullSink(out_lt), mtu=1400)
    sink = NullSink(out_lt)
    n = fw.forward(b, d, 0, len(items), sink)
    c = fw.counters
    check_accounting(c)
    assert n == c["forwarded"] == sink.packets
    assert c["packets"] == len(items)
