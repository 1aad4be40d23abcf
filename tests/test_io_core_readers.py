"""pcap / pcapng readers and open_capture, on capture files built byte by byte with struct."""
import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ipvsflow.io import CaptureError, ParseStatus as S, addr_to_str, open_capture
from ipvsflow.io.capture import detect_format

REPO = Path(__file__).resolve().parents[1]


def eth_tcp(i, sport=None):
    """A 54-byte Ethernet/IPv4/TCP SYN from 10.0.<i>.1:<sport> to 10.9.9.9:80."""
    sport = 1000 + i if sport is None else sport
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0,
                     bytes([10, 0, i & 0xFF, 1]), bytes([10, 9, 9, 9]))
    tcp = struct.pack("!HHIIBBHHH", sport, 80, 1, 0, 0x50, 0x02, 8192, 0, 0)
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + tcp


def raw_udp6(i):
    """Raw IPv6/UDP (for link type 101), 2001:db8::<i> -> 2001:db8::ffff, ports 5000+i -> 53."""
    udp = struct.pack("!HHHH", 5000 + i, 53, 8, 0)
    src = bytes.fromhex("20010db8" + "00" * 10) + struct.pack("!H", i)
    dst = bytes.fromhex("20010db8" + "00" * 10) + b"\xff\xff"
    return struct.pack("!IHBB", 0x60000000, len(udp), 17, 64) + src + dst + udp


def pcap_bytes(records, order="<", nano=False, linktype=1, snaplen=65535, magic=None, version=(2, 4)):
    """records: list of (ts_sec, ts_frac, data[, orig_len])."""
    magic = magic if magic is not None else (0xA1B23C4D if nano else 0xA1B2C3D4)
    out = [struct.pack(order + "IHHiIII", magic, version[0], version[1], 0, 0, snaplen, linktype)]
    for rec in records:
        sec, frac, data = rec[:3]
        orig = rec[3] if len(rec) > 3 else len(data)
        out.append(struct.pack(order + "IIII", sec, frac, len(data), orig) + data)
    return b"".join(out)


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def read_all(path, burst=256):
    with open_capture(path, burst=burst) as r:
        batches = list(r)
        return r, batches


def rows(batches):
    if not batches:
        return np.zeros(0)
    return np.concatenate([b.to_numpy() for b in batches])


# ---------------------------------------------------------------------------------------------
# classic pcap


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path, order, nano):
    recs = [(1700000000 + i, 123456 + i if not nano else 987654321 - i, eth_tcp(i)) for i in range(10)]
    p = write(tmp_path, "x.cap", pcap_bytes(recs, order=order, nano=nano))
    assert detect_format(p.read_bytes()[:4]) == "pcap"
    r, batches = read_all(p, burst=4)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert r.packets == 10 and r.linktypes == [1]
    assert r.bytes_read == r.size == p.stat().st_size
    a = rows(batches)
    mult = 1 if nano else 1000
    assert list(a["ts_ns"]) == [rec[0] * 10**9 + rec[1] * mult for rec in recs]
    assert list(a["index"]) == list(range(10))
    assert list(a["sport"]) == [1000 + i for i in range(10)]
    assert (a["status"] == S.OK).all() and (a["caplen"] == 54).all() and (a["linktype"] == 1).all()
    assert addr_to_str(a["src"][7]) == "10.0.7.1"
    assert batches[2].packet_bytes(1) == eth_tcp(9)


def test_pcap_fcs_bits_masked_and_modified_format(tmp_path):
    p = write(tmp_path, "fcs.pcap", pcap_bytes([(1, 0, eth_tcp(1))], linktype=0x14000001))
    r, b = read_all(p)
    assert r.linktypes == [1] and rows(b)["status"][0] == S.OK
    # Kuznetsov's modified pcap: 24-byte record headers (8 extra bytes after the usual 16)
    hdr = struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    body = b"".join(struct.pack("<IIII", 5, 6, 54, 54) + struct.pack("<iHBB", 3, 0x0800, 0, 0) + eth_tcp(i)
                    for i in range(3))
    r, b = read_all(write(tmp_path, "mod.pcap", hdr + body))
    a = rows(b)
    assert r.packets == 3 and list(a["sport"]) == [1000, 1001, 1002] and a["ts_ns"][0] == 5_000_006_000


def test_pcap_snaplen_truncated_packets_and_other_linktypes(tmp_path):
    full = eth_tcp(3) + b"payload!" * 10
    recs = [(1, 0, full[:60], len(full)), (2, 0, full[:20], len(full))]
    r, b = read_all(write(tmp_path, "snap.pcap", pcap_bytes(recs, snaplen=60)))
    a = rows(b)
    assert list(a["status"]) == [S.OK, S.TRUNC_L3]
    assert list(a["wirelen"]) == [len(full)] * 2 and list(a["caplen"]) == [60, 20]
    r, b = read_all(write(tmp_path, "raw6.pcap", pcap_bytes([(1, 0, raw_udp6(i)) for i in range(3)], linktype=101)))
    a = rows(b)
    assert r.linktypes == [101] and list(a["af"]) == [6] * 3 and list(a["sport"]) == [5000, 5001, 5002]


def test_batches_are_fresh_and_outlive_the_reader(tmp_path):
    p = write(tmp_path, "x.pcap", pcap_bytes([(1, i, eth_tcp(i)) for i in range(6)]))
    r = open_capture(p, burst=2)
    b1 = next(r)
    b2 = next(r)
    assert b1 is not b2 and b1.owner is b2.owner
    view = b1.to_numpy()
    r.close()
    assert r.closed
    with pytest.raises(ValueError):
        next(r)
    del r
    import gc
    gc.collect()
    assert b1.packet_bytes(1) == eth_tcp(1) and list(view["sport"]) == [1000, 1001]


def test_empty_pcap_with_header_only(tmp_path):
    r, b = read_all(write(tmp_path, "hdr.pcap", pcap_bytes([])))
    assert b == [] and r.packets == 0 and r.linktypes == [1]


def test_every_record_counted_even_malformed(tmp_path):
    short_ip = bytearray(eth_tcp(4))
    short_ip[16:18] = struct.pack("!H", 400)
    recs = [(1, 0, eth_tcp(0)), (1, 1, b"\x01" * 5), (1, 2, b""), (1, 3, eth_tcp(3)[:30]), (1, 4, bytes(short_ip))]
    r, b = read_all(write(tmp_path, "m.pcap", pcap_bytes(recs)))
    a = rows(b)
    assert r.packets == 5
    assert list(a["status"]) == [S.OK, S.TRUNC_L2, S.TRUNC_L2, S.TRUNC_L3, S.BAD_IP_LEN]


@pytest.mark.parametrize("burst", [1, 3, 7, 256])
def test_truncated_final_record_after_good_packets(tmp_path, burst):
    good = pcap_bytes([(1, i, eth_tcp(i)) for i in range(7)])
    bad_off = len(good)
    data = good + struct.pack("<IIII", 2, 0, 54, 54) + eth_tcp(7)[:20]
    p = write(tmp_path, "t.pcap", data)
    r = open_capture(p, burst=burst)
    got = []
    with pytest.raises(CaptureError) as ei:
        for b in r:
            got.extend(b.to_numpy()["sport"].tolist())
    assert got == [1000 + i for i in range(7)]
    assert r.packets == 7
    msg = str(ei.value)
    assert f"offset {bad_off}" in msg and "\n" not in msg and str(p) in msg
    with pytest.raises(StopIteration):
        next(r)
    # a record header cut short is reported the same way
    p2 = write(tmp_path, "t2.pcap", good + b"\x00" * 9)
    with pytest.raises(CaptureError, match=f"offset {bad_off}"):
        list(open_capture(p2))


def test_corrupt_record_length_mid_file(tmp_path):
    good = pcap_bytes([(1, i, eth_tcp(i)) for i in range(3)])
    data = good + struct.pack("<IIII", 2, 0, 0x7FFFFFF0, 54) + eth_tcp(3) + pcap_bytes([(1, 0, eth_tcp(4))])[24:]
    r = open_capture(write(tmp_path, "c.pcap", data), burst=2)
    got = []
    with pytest.raises(CaptureError, match=f"corrupt pcap record at byte offset {len(good)}"):
        for b in r:
            got.append(len(b))
    assert got == [2, 1] and r.packets == 3


def test_large_snaplen_allows_large_records(tmp_path):
    big = eth_tcp(1) + bytes(300000)
    data = pcap_bytes([(1, 0, big)], snaplen=1 << 20)
    r, b = read_all(write(tmp_path, "big.pcap", data))
    assert r.packets == 1 and b[0].to_numpy()["caplen"][0] == len(big)
    with pytest.raises(CaptureError, match="exceeds 262144"):
        list(open_capture(write(tmp_path, "big2.pcap", pcap_bytes([(1, 0, big)], snaplen=65535))))


# ---------------------------------------------------------------------------------------------
# pcapng


def opt(code, value, order):
    pad = (-len(value)) % 4
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * pad


def block(btype, body, order):
    body += b"\0" * ((-len(body)) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def shb(order):
    return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + opt(0, b"", order), order)


def idb(order, linktype, tsresol=None, tsoffset=None, snaplen=0):
    opts = b""
    if tsresol is not None:
        opts += opt(9, bytes([tsresol]), order)
    if tsoffset is not None:
        opts += opt(14, struct.pack(order + "q", tsoffset), order)
    opts += opt(2, b"eth0", order)           # if_name, ignored
    if opts:
        opts += opt(0, b"", order)
    return block(1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts, order)


def epb(order, ifid, ts, data, orig=None):
    body = struct.pack(order + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data),
                       len(data) if orig is None else orig) + data
    body += b"\0" * ((-len(data)) % 4) + opt(1, b"a comment", order) + opt(0, b"", order)
    return block(6, body, order)


def spb(order, data, orig=None):
    return block(3, struct.pack(order + "I", len(data) if orig is None else orig) + data, order)


def opb(order, ifid, ts, data):
    return block(2, struct.pack(order + "HHIIII", ifid, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data, order)


def sll(data_ip, proto=0x0800):
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", proto) + data_ip


def test_pcapng_multi_section_multi_interface(tmp_path):
    le, be = "<", ">"
    ip4 = eth_tcp(5)[14:]
    parts = [
        shb(le),
        idb(le, 1, tsresol=9),                        # if 0: Ethernet, ns
        idb(le, 101),                                 # if 1: raw IP, default us
        idb(le, 113, tsresol=0x80 | 20, tsoffset=100),  # if 2: SLL, 2^-20 s, +100 s
        epb(le, 0, 1_700_000_000_123_456_789, eth_tcp(1)),
        block(4, struct.pack(le + "HH", 1, 0) + b"\0" * 4, le),        # NRB: skipped
        epb(le, 1, 1_700_000_000_000_001, raw_udp6(2)),
        block(0x00000BAD, b"custom-ish", le),                         # custom block: skipped
        epb(le, 2, (3 << 20) + (1 << 19), sll(ip4)),
        block(5, struct.pack(le + "III", 0, 0, 0), le),                # ISB: skipped
        spb(le, eth_tcp(4)),
        opb(le, 1, 42, raw_udp6(9)),
        # second section, big-endian, interface ids restart at 0
        shb(be),
        idb(be, 101, tsresol=3),                      # if 0 here (global 3): raw IP, ms
        idb(be, 1),                                   # if 1 here (global 4): Ethernet, us
        epb(be, 1, 7, eth_tcp(6)),
        epb(be, 0, 1234, raw_udp6(7)),
    ]
    p = write(tmp_path, "m.pcapng", b"".join(parts))
    assert detect_format(p.read_bytes()[:4]) == "pcapng"
    r, batches = read_all(p, burst=3)
    a = rows(batches)
    assert r.packets == 7 and r.linktypes == [1, 101, 113, 101, 1] and r.sections == 2
    assert list(a["linktype"]) == [1, 101, 113, 1, 101, 1, 101]
    assert list(a["ifindex"]) == [0, 1, 2, 0, 1, 4, 3]
    assert list(a["ts_ns"]) == [
        1_700_000_000_123_456_789,
        1_700_000_000_000_001_000,
        103_500_000_000,            # 3.5 s at 2^-20 + 100 s offset
        0,                          # simple packet blocks carry no time
        42_000,
        7_000,
        1_234_000_000,
    ]
    assert (a["status"] == S.OK).all()
    assert list(a["sport"]) == [1001, 5002, 1005, 1004, 5009, 1006, 5007]
    assert list(a["index"]) == list(range(7))
    assert r.bytes_read == r.size


def test_pcapng_timestamps_agree_with_tshark(tmp_path):
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    le = "<"
    data = b"".join([
        shb(le), idb(le, 1, tsresol=0x80 | 10), idb(le, 1, tsresol=10), idb(le, 1, tsresol=4, tsoffset=-3),
        epb(le, 0, 1_700_000_000 * 1024 + 1000, eth_tcp(1)),
        epb(le, 1, 17_000_000_000_123_456_789, eth_tcp(2)),
        epb(le, 2, 17_000_000_001_234, eth_tcp(3)),
    ])
    p = write(tmp_path, "res.pcapng", data)
    out = subprocess.run(["tshark", "-r", str(p), "-T", "fields", "-e", "frame.time_epoch"],
                         capture_output=True, text=True, check=True).stdout.split()
    want = [int(s.replace(".", "")) for s in out]           # tshark prints 9 decimals: ns
    _, batches = read_all(p)
    assert list(rows(batches)["ts_ns"]) == want


def test_pcapng_spb_respects_snaplen_and_origlen(tmp_path):
    le = "<"
    pkt = eth_tcp(1) + bytes(10)
    data = shb(le) + idb(le, 1, snaplen=40) + spb(le, pkt, orig=200) + spb(le, eth_tcp(2)[:50] + bytes(2), orig=50)
    _, b = read_all(write(tmp_path, "s.pcapng", data))
    a = rows(b)
    assert list(a["caplen"]) == [40, 40] and list(a["wirelen"]) == [200, 50]


@pytest.mark.parametrize("corruption", ["length_not_aligned", "trailer_mismatch", "truncated", "bad_interface",
                                        "caplen_too_big", "tiny_length"])
def test_pcapng_corruption_after_good_packets(tmp_path, corruption):
    le = "<"
    good = shb(le) + idb(le, 1) + b"".join(epb(le, 0, i, eth_tcp(i)) for i in range(5))
    bad = bytearray(epb(le, 0, 99, eth_tcp(99)))
    if corruption == "length_not_aligned":
        bad[4:8] = struct.pack("<I", len(bad) + 2)
    elif corruption == "trailer_mismatch":
        bad[-4:] = struct.pack("<I", len(bad) + 4)
    elif corruption == "truncated":
        bad = bad[:40]
    elif corruption == "bad_interface":
        bad[8:12] = struct.pack("<I", 3)
    elif corruption == "caplen_too_big":
        bad[20:24] = struct.pack("<I", 5000)
    elif corruption == "tiny_length":
        bad[4:8] = struct.pack("<I", 8)
    p = write(tmp_path, "c.pcapng", good + bytes(bad) + epb(le, 0, 100, eth_tcp(100)))
    r = open_capture(p, burst=2)
    got = []
    with pytest.raises(CaptureError) as ei:
        for b in r:
            got.extend(b.to_numpy()["sport"].tolist())
    assert got == [1000, 1001, 1002, 1003, 1004]
    assert f"byte offset {len(good)}" in str(ei.value)
    assert r.packets == 5


def test_pcapng_packet_before_interface_and_bad_version(tmp_path):
    le = "<"
    with pytest.raises(CaptureError, match="interface 0, but the section has 0"):
        list(open_capture(write(tmp_path, "a.pcapng", shb(le) + epb(le, 0, 1, eth_tcp(1)))))
    with pytest.raises(CaptureError, match="no interface"):
        list(open_capture(write(tmp_path, "b.pcapng", shb(le) + spb(le, eth_tcp(1)))))
    v2 = bytearray(shb(le))
    v2[12:14] = struct.pack("<H", 2)
    with pytest.raises(CaptureError, match="unsupported pcapng version 2.0"):
        list(open_capture(write(tmp_path, "c.pcapng", bytes(v2))))


# ---------------------------------------------------------------------------------------------
# errors opening files


def test_missing_file(tmp_path):
    with pytest.raises(CaptureError, match="no such file") as ei:
        open_capture(tmp_path / "nope.pcap")
    assert isinstance(ei.value, ValueError)


def test_directory(tmp_path):
    with pytest.raises(CaptureError, match="is a directory"):
        open_capture(tmp_path)


def test_empty_file(tmp_path):
    with pytest.raises(CaptureError, match="empty file"):
        open_capture(write(tmp_path, "e.pcap", b""))


def test_not_a_capture_shows_first_bytes(tmp_path):
    with pytest.raises(CaptureError) as ei:
        open_capture(write(tmp_path, "t.pcap", b"hello, world\n"))
    msg = str(ei.value)
    assert "not a pcap or pcapng file" in msg and "68 65 6c 6c 6f 2c 20 77" in msg and "\n" not in msg
    with pytest.raises(CaptureError, match="gzip"):
        open_capture(write(tmp_path, "g.pcap.gz", b"\x1f\x8b\x08\x00" + bytes(30)))


@pytest.mark.parametrize("data", [
    b"\xd4\xc3",                                           # 2 bytes of the pcap magic
    struct.pack("<IHH", 0xA1B2C3D4, 2, 4),                 # pcap header cut at 8 bytes
    struct.pack(">IHHiI", 0xA1B23C4D, 2, 4, 0, 0),         # big-endian ns header cut at 16
    b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00",                   # pcapng SHB cut at 8
    b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x4d\x3c\x2b\x1a\x01\x00",
])
def test_truncated_headers(tmp_path, data):
    with pytest.raises(CaptureError, match="truncated"):
        open_capture(write(tmp_path, "h.bin", data))


def test_unsupported_pcap_version_and_bad_bom(tmp_path):
    with pytest.raises(CaptureError, match="unsupported pcap version 1.0"):
        open_capture(write(tmp_path, "v.pcap", pcap_bytes([], version=(1, 0))))
    bad = bytearray(shb("<"))
    bad[8:12] = b"abcd"
    with pytest.raises(CaptureError, match="byte-order magic"):
        open_capture(write(tmp_path, "b.pcapng", bytes(bad)))


def test_permission_denied(tmp_path):
    """Root reads any file, so when we are root the child drops CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from its bounding set before exec (then root is refused like anyone)."""
    p = write(tmp_path, "secret.pcap", pcap_bytes([(1, 0, eth_tcp(1))]))
    p.chmod(0)
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from ipvsflow.io import open_capture, CaptureError\n"
            "try:\n    open_capture(sys.argv[1])\nexcept CaptureError as e:\n    print(e)\n")

    def drop_dac_caps():
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):                      # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:   # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    out = subprocess.run([sys.executable, "-c", code, str(p), str(REPO)], capture_output=True, text=True,
                         preexec_fn=drop_dac_caps if os.geteuid() == 0 else None)
    assert out.stdout.strip() == f"{p}: permission denied", out.stderr


def test_pipe_input_is_read_into_memory(tmp_path):
    data = pcap_bytes([(1, i, eth_tcp(i)) for i in range(4)])
    rfd, wfd = os.pipe()
    os.write(wfd, data)
    os.close(wfd)
    try:
        r, b = read_all(f"/dev/fd/{rfd}")
    finally:
        os.close(rfd)
    assert r.packets == 4 and list(rows(b)["sport"]) == [1000, 1001, 1002, 1003]


def test_burst_validation(tmp_path):
    p = write(tmp_path, "x.pcap", pcap_bytes([(1, 0, eth_tcp(1))]))
    with pytest.raises(ValueError):
        open_capture(p, burst=0)
