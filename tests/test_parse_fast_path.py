"""The parser's straight-line path for untagged Ethernet/IPv4 (no options, not a fragment,
UDP/TCP) must give exactly what the general parser gives. The reference is the same frame with
an 802.1Q tag inserted: a tagged frame never takes the fast path, and the general parser is
checked against tshark elsewhere. Every field must agree, offsets shifted by the 4 tag bytes."""
import struct

from hypothesis import given, settings, strategies as st

import ipvsflow.io as io

HYP = settings(derandomize=True, database=None, deadline=None, max_examples=400)
MACS = bytes.fromhex("020000000002" "020000000001")
NO_OFF = 0xFFFF
SHIFTED = ("l3_off", "l4_off", "ic_l3_off")
L2_ONLY = ("ts_ns", "index", "caplen", "wirelen", "l2_len", "vlan_count", "vlan_outer", "data")


def _frame(f):
    ip_payload = f["l4"]
    tot = f["tot"] if f["tot"] is not None else 20 + len(ip_payload)
    ip = struct.pack("!BBHHHBB2s4s4s", f["vihl"], 0, tot & 0xFFFF, f["ipid"], f["fragw"], f["ttl"],
                     f["proto"], b"\0\0", f["src"], f["dst"])
    return ip + ip_payload


@st.composite
def _l4(draw, proto):
    if proto == 17:
        data = draw(st.binary(max_size=24))
        ulen = draw(st.one_of(st.just(8 + len(data)), st.integers(0, 0xFFFF)))
        return struct.pack("!HHHH", draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)), ulen, 0) + data
    if proto == 6:
        doff = draw(st.one_of(st.just(0x50), st.integers(0, 255)))
        hdr = struct.pack("!HHIIBBHHH", draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)), 1, 2,
                          doff, draw(st.integers(0, 255)), 512, 0, 0)
        return hdr + draw(st.binary(max_size=24))
    return draw(st.binary(max_size=48))


@st.composite
def _case(draw):
    proto = draw(st.sampled_from([17, 17, 6, 6, 1, 132, 47]))
    f = {
        "vihl": draw(st.sampled_from([0x45, 0x45, 0x45, 0x46, 0x44, 0x55, 0x65])),
        "tot": draw(st.one_of(st.none(), st.none(), st.integers(0, 120))),
        "fragw": draw(st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x6001, 0x8000, 0x1FFF])),
        "ipid": draw(st.integers(0, 0xFFFF)),
        "ttl": draw(st.integers(0, 255)),
        "proto": proto,
        "src": draw(st.binary(min_size=4, max_size=4)),
        "dst": draw(st.binary(min_size=4, max_size=4)),
        "l4": draw(_l4(proto)),
    }
    ip = _frame(f)
    if f["vihl"] == 0x46:
        ip = ip[:20] + b"\x01\x01\x01\x00" + ip[20:]        # an options word
    cut = draw(st.one_of(st.none(), st.integers(0, len(ip))))
    extra = draw(st.sampled_from([0, 0, 0, 1, 40]))          # wire length beyond the capture
    return ip, cut, extra


def _pair(ip, cut, extra):
    plain = MACS + b"\x08\x00" + ip
    tagged = MACS + b"\x81\x00\x00\x07" + b"\x08\x00" + ip
    n = len(plain) if cut is None else 14 + cut
    return (plain[:n], len(plain) + extra), (tagged[:n + 4], len(tagged) + extra)


def _compare(plain_row, tagged_row):
    diffs = []
    for name in plain_row.dtype.names:
        a, b = plain_row[name], tagged_row[name]
        if name in L2_ONLY:
            continue
        if name in SHIFTED:
            want = b if b == NO_OFF else b - 4
            if a != want:
                diffs.append((name, int(a), int(b)))
        elif hasattr(a, "tobytes") and a.tobytes() != b.tobytes():
            diffs.append((name, a.tobytes().hex(), b.tobytes().hex()))
    if plain_row["l3_off"] != NO_OFF:
        if plain_row["l2_len"] != 14 or tagged_row["l2_len"] != 18 or plain_row["vlan_count"] != 0:
            diffs.append(("l2", int(plain_row["l2_len"]), int(tagged_row["l2_len"])))
    return diffs


@HYP
@given(st.lists(_case(), min_size=1, max_size=16))
def test_fast_path_equals_general_parser(cases):
    rows = []
    for ip, cut, extra in cases:
        rows.extend(_pair(ip, cut, extra))
    b = io.PacketBatch.from_packets([(i, d, w) for i, (d, w) in enumerate(rows)])
    arr = b.to_numpy()
    for k in range(len(cases)):
        assert _compare(arr[2 * k], arr[2 * k + 1]) == [], (cases[k], arr[2 * k], arr[2 * k + 1])


def test_fast_path_known_packets():
    """Hand-checked values for the packets the fast path takes, and its edges."""
    src, dst = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 80])
    udp = struct.pack("!HHHH", 4000, 53, 12, 0) + b"abcd"
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 2, 0x50, 0x12, 512, 0, 0)

    def ip(proto, l4, fragw=0x4000, tot=None):
        t = 20 + len(l4) if tot is None else tot
        return struct.pack("!BBHHHBB2s4s4s", 0x45, 0, t, 0x1234, fragw, 63, proto, b"\0\0", src, dst) + l4

    frames = [
        MACS + b"\x08\x00" + ip(17, udp),                    # UDP, DF set
        MACS + b"\x08\x00" + ip(6, tcp) + b"\0" * 6,         # TCP with Ethernet padding
        MACS + b"\x08\x00" + ip(17, struct.pack("!HHHH", 1, 2, 40, 0)),   # UDP length > payload
        MACS + b"\x08\x00" + ip(17, udp, fragw=0x2000),      # first fragment: general parser
    ]
    b = io.PacketBatch.from_packets([(i, f) for i, f in enumerate(frames)])
    r = [b.row(i) for i in range(len(frames))]

    def mapped(a):
        return ".".join(map(str, a))

    assert (r[0]["status"], r[0]["l2_len"], r[0]["l3_off"], r[0]["l4_off"], r[0]["l3_len"], r[0]["l4_len"]) \
        == (0, 14, 14, 34, 32, 12)
    assert (r[0]["af"], r[0]["proto"], r[0]["sport"], r[0]["dport"], r[0]["ttl"], r[0]["frag_id"]) \
        == (4, 17, 4000, 53, 63, 0x1234)
    assert (r[0]["src"], r[0]["dst"]) == (mapped(src), mapped(dst))
    assert (r[0]["frag"], r[0]["frag_off"], r[0]["tcp_flags"], r[0]["sctp_chunk"], r[0]["ic_l3_off"]) \
        == (0, 0, 0, 0xFF, NO_OFF)
    assert (r[1]["status"], r[1]["proto"], r[1]["sport"], r[1]["dport"], r[1]["tcp_flags"], r[1]["l3_len"],
            r[1]["l4_len"]) == (0, 6, 40000, 443, 0x12, 40, 20)
    assert r[2]["status"] == io.ParseStatus.BAD_L4_HDR and r[2]["sport"] == 1
    assert (r[3]["status"], r[3]["frag"], r[3]["sport"]) == (0, 3, 4000)     # FRAG_IS | FRAG_MF
    rows = b.to_numpy()
    for i in range(len(frames)):
        assert rows[i]["src"].tobytes() == b"\0" * 10 + b"\xff\xff" + src
        assert rows[i]["ic_src"].tobytes() == b"\0" * 16 and rows[i]["ic_dst"].tobytes() == b"\0" * 16
