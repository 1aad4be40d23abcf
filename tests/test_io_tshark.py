"""Parser and reader conformance against tshark, the reference dissector.

For every packet of every capture, the descriptor fields (addresses, ports, protocol after IPv6
extension headers, TCP flags, first SCTP chunk, VLAN ids, lengths, timestamps to the ns,
fragment info, ICMP type/code and the tuple embedded in ICMP errors) must equal what
``tshark -T fields`` reports, and the reader must yield exactly the packet records tshark reads.

Captures: synthesized ones (scapy packets on every supported link type, pcap in both byte
orders and both timestamp magics, a two-section pcapng with mixed interfaces) built once per
session, and the real captures shipped in Debian packages (tests/data/debian, see its README).
"""
import struct
from pathlib import Path

import pytest

import io_helpers as h

pytestmark = pytest.mark.skipif(h.TSHARK is None, reason="tshark is not installed (apt-get install tshark)")

DATA = Path(__file__).parent / "data" / "debian"
DEBIAN_FILES = sorted(p for p in DATA.rglob("*") if p.suffix in (".pcap", ".pcapng"))
LINKTYPES = (1, 0, 101, 12, 14, 228, 229, 108, 113, 276)


@pytest.fixture(scope="session")
def corpus():
    return h.synth_corpus() + h.ethernet_frames()


@pytest.fixture(scope="session")
def frames_by_lt(corpus):
    return {lt: h.frames_for(lt, corpus) for lt in LINKTYPES}


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synth_captures")


def _check(path, labels=None):
    problems, res, ts = h.compare_with_tshark(path, labels=labels)
    assert not problems, f"{path.name} disagrees with tshark:\n  " + "\n  ".join(problems)
    return res, ts


@pytest.mark.parametrize("big_endian,nanosecond", [(False, False), (True, True), (False, True), (True, False)],
                         ids=["le-us", "be-ns", "le-ns", "be-us"])
def test_ethernet_pcap_all_packet_kinds(frames_by_lt, synth_dir, big_endian, nanosecond):
    fr = frames_by_lt[1]
    b = h.pcap_build(h.records_for(fr, us=not nanosecond), 1, big_endian=big_endian, nanosecond=nanosecond)
    path = b.write(synth_dir / f"eth-{'be' if big_endian else 'le'}-{'ns' if nanosecond else 'us'}.pcap")
    res, ts = _check(path, labels=[f[3] for f in fr])
    assert res.error is None and ts.returncode == 0
    assert res.reader_packets == len(fr) == len(ts.packets)


@pytest.mark.parametrize("linktype", [lt for lt in LINKTYPES if lt != 1])
def test_every_link_type(frames_by_lt, synth_dir, linktype):
    fr = frames_by_lt[linktype]
    big = linktype % 2 == 1          # alternate the file byte order across link types
    b = h.pcap_build(h.records_for(fr), linktype, big_endian=big, nanosecond=True)
    path = b.write(synth_dir / f"lt{linktype}.pcap")
    res, ts = _check(path, labels=[f[3] for f in fr])
    assert res.error is None
    assert res.reader_packets == len(fr) == len(ts.packets)
    assert set(res.rows["linktype"].tolist()) == {linktype}


def test_null_linktype_both_af_byte_orders(frames_by_lt, synth_dir):
    """BSD loopback stores the AF in the writer's byte order: both orders, every AF_INET6 value."""
    fr = frames_by_lt[0]
    hdrs = {d[:4] for _, d, _, _ in fr}
    assert hdrs == {struct.pack(order, af) for order in ("<I", ">I") for af in (2, 24, 28, 30)}
    path = h.pcap_build(h.records_for(fr, us=True), 0).write(synth_dir / "null-le-file.pcap")
    res, _ = _check(path, labels=[f[3] for f in fr])
    for (_, d, _, _), row in zip(fr, res.rows):
        assert row["af"] in (4, 6) or row["status"] == h.TRUNC_L3, d[:4]


def test_tcp_all_flag_combinations(frames_by_lt, synth_dir):
    fr = [f for f in frames_by_lt[1] if f[0].startswith("tcp-flags-")]
    assert len(fr) == 256
    path = h.pcap_build(h.records_for(fr), 1, nanosecond=True).write(synth_dir / "tcpflags.pcap")
    res, ts = _check(path)
    assert sorted(res.rows["tcp_flags"].tolist()) == list(range(256))


def test_pcapng_two_sections_mixed_interfaces(frames_by_lt, synth_dir):
    b, labels = h.synth_pcapng(frames_by_lt)
    path = b.write(synth_dir / "multi.pcapng")
    res, ts = _check(path, labels=labels)
    assert res.error is None and ts.returncode == 0
    assert len(res.rows) == len(b.packets) == len(ts.packets)
    assert set(res.linktypes) >= {0, 1, 12, 14, 101, 108, 113, 228, 229, 276}
    # simple packet blocks have no timestamp; every other packet keeps its exact ns time
    want = [p["ts_ns"] for p in b.packets]
    got = res.rows["ts_ns"].tolist()
    assert [g for g, w in zip(got, want) if w is not None] == [w for w in want if w is not None]
    assert res.packets == [p["data"] for p in b.packets]


@pytest.fixture(scope="session")
def debian_tshark():
    return h.tshark_many(DEBIAN_FILES)


@pytest.mark.parametrize("path", DEBIAN_FILES, ids=lambda p: str(p.relative_to(DATA)))
def test_debian_captures(path, debian_tshark):
    problems, res, ts = h.compare_with_tshark(path, ts=debian_tshark[path])
    assert not problems, f"{path.name} disagrees with tshark:\n  " + "\n  ".join(problems)
    # every record counted: tshark's packet count is ours, and a file tshark cannot finish
    # (cut-short record, unsupported section) ends our iteration with a CaptureError too
    assert res.reader_packets == len(res.rows) == len(ts.packets)
    if ts.returncode != 0:
        assert res.error is not None, f"tshark failed ({ts.stderr.strip()}) but the reader did not"
        assert "offset" in str(res.error)
    else:
        assert res.error is None, res.error


def test_debian_captures_cover_the_interesting_cases():
    """The real captures exercise what the README says they do (guards against a silent
    change of the data files)."""
    seen = {}
    for path in DEBIAN_FILES:
        res = h.read_all(path)
        seen[path.name] = res
    http = seen["http.pcap"].rows
    assert ((http["proto"] == 6) & (http["tcp_flags"] & 0x02 != 0)).sum() >= 2   # SYN, SYN-ACK
    loop = seen["test_loopback.pcap"].rows
    assert set(loop["linktype"].tolist()) == {0} and set(loop["af"].tolist()) == {6}
    icmp = seen["dns_icmp.pcap"].rows
    echo = icmp[icmp["proto"] == 1]
    assert set(echo["icmp_type"].tolist()) == {0, 8} and set(echo["ic_proto"].tolist()) == {0}
    nb6 = seen["nb6-http.pcap"].rows
    assert (nb6["status"] == h.NOT_IP).sum() > 0 and (nb6["af"] == 4).sum() > 0
    trunc = seen["truncated_dns.pcap"].rows
    assert trunc["caplen"][0] < trunc["wirelen"][0] and trunc["status"][0] == h.OK
    assert str(seen["truncated_dns_2.pcap"].error).count("240")


def test_display_filter_subset_matches(frames_by_lt, synth_dir):
    """tshark with a display filter selects the same packets as a numpy mask over our rows."""
    fr = frames_by_lt[1]
    path = h.pcap_build(h.records_for(fr), 1, nanosecond=True).write(synth_dir / "filter.pcap")
    res = h.read_all(path)
    ts = h.tshark_fields(path, ["frame.number"], display_filter="sctp && sctp.chunk_type == 10")
    picked = [int(f["frame.number"][0]) - 1 for f in ts.frames]
    ours = [i for i, r in enumerate(res.rows)
            if r["proto"] == 132 and r["sctp_chunk"] == 10 and r["status"] == h.OK]
    assert picked == ours and len(ours) >= 2


def test_comparison_detects_every_field(frames_by_lt, synth_dir):
    """The comparison itself is not vacuous: changing any compared field of a matching row is
    reported."""
    names = ["vlan-tcp", "sctp-cookie-echo+abort", "icmp-unreach-udp", "frag4-middle", "frag6-first-udp",
             "qinq-88a8-udp6"]
    fr = [f for f in frames_by_lt[1] if f[0] in names]
    path = h.pcap_build(h.records_for(fr), 1, nanosecond=True).write(synth_dir / "mutate.pcap")
    res, ts = h.read_all(path), h.tshark_fields(path)
    fields = {
        "vlan-tcp": ["sport", "dport", "tcp_flags", "src", "dst", "ttl", "proto", "caplen", "wirelen", "ts_ns",
                     "l3_len", "status", "af", "vlan_count", "vlan_outer", "l3_off", "l2_len", "l4_off", "linktype"],
        "sctp-cookie-echo+abort": ["sctp_chunk", "sctp_flags", "sport", "dport"],
        "icmp-unreach-udp": ["icmp_type", "icmp_code", "ic_proto", "ic_src", "ic_dst", "ic_sport", "ic_dport"],
        "frag4-middle": ["frag", "frag_id", "frag_off", "sport"],
        "frag6-first-udp": ["frag", "frag_id", "dport"],
        "qinq-88a8-udp6": ["vlan_outer", "vlan_inner", "vlan_count", "src"],
    }
    for (name, _, _, _), row, frame in zip(fr, res.rows, ts.packets):
        e, _ = h.expect_from_tshark(frame)
        assert h.compare_row(row, e) == [], name
        for k in fields[name]:
            bad = row.copy()
            if bad[k].shape:
                bad[k][15] ^= 1
            else:
                bad[k] = int(bad[k]) ^ (2 if k in ("status", "frag", "af") else 1)
            assert h.compare_row(bad, e), f"{name}: a wrong {k} went unnoticed"
