"""PcapWriter: byte-exact output, round trips through the readers, and tshark reading the result."""
import io as pyio
import shutil
import struct
import subprocess

import numpy as np
import pytest

from ipvsflow.io import PacketBatch, PcapWriter, open_capture

from test_io_core_readers import eth_tcp, pcap_bytes, raw_udp6


def expected_file(records, linktype=1, snaplen=262144):
    """Independent encoding of a nanosecond little-endian pcap: records (ts_ns, data, wirelen)."""
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, snaplen, linktype)]
    for ts, data, wire in records:
        cap = data[:snaplen]
        out.append(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(cap), wire) + cap)
    return b"".join(out)


def test_exact_bytes_with_small_buffer_and_many_flushes(tmp_path):
    recs = [(1_700_000_000_000_000_000 + i * 1_234_567, eth_tcp(i % 250) + bytes(i % 37), 54 + i % 37 + (i % 3))
            for i in range(3000)]
    p = tmp_path / "w.pcap"
    with PcapWriter(p, buffer_size=4096) as w:
        for ts, data, wire in recs:
            w.write(data, ts, wirelen=wire)
        assert w.packets == 3000
    assert w.closed
    assert p.read_bytes() == expected_file(recs)
    assert w.bytes_written == p.stat().st_size


def test_round_trip_through_the_reader(tmp_path):
    pkts = [(10**18 + i * 999, eth_tcp(i)) for i in range(300)] + [(2 * 10**18, eth_tcp(7) + b"tail")]
    p = tmp_path / "rt.pcap"
    with PcapWriter(p) as w:
        for ts, d in pkts:
            w.write(d, ts)
    with open_capture(p, burst=64) as r:
        batches = list(r)
    a = np.concatenate([b.to_numpy() for b in batches])
    assert r.packets == len(pkts)
    assert list(a["ts_ns"]) == [ts for ts, _ in pkts]
    assert [b.packet_bytes(i) for b in batches for i in range(len(b))] == [d for _, d in pkts]
    # write_batch copies batches as they are; the copy reads back identical (but the data pointers)
    p2 = tmp_path / "rt2.pcap"
    with PcapWriter(p2) as w:
        for b in batches:
            w.write_batch(b)
    assert p2.read_bytes() == p.read_bytes()
    with open_capture(p2) as r2:
        a2 = np.concatenate([b.to_numpy() for b in r2])
    names = [n for n in a.dtype.names if n != "data"]
    assert (a2[names] == a[names]).all()


def test_write_batch_from_a_pcap_with_microseconds_and_other_linktype(tmp_path):
    src = tmp_path / "src.pcap"
    src.write_bytes(pcap_bytes([(5, 7, raw_udp6(i)) for i in range(3)], linktype=101))
    p = tmp_path / "out.pcap"
    with open_capture(src) as r, PcapWriter(p, linktype=101) as w:
        for b in r:
            w.write_batch(b)
    assert p.read_bytes() == expected_file([(5_000_007_000, raw_udp6(i), len(raw_udp6(i))) for i in range(3)], 101)
    with open_capture(src) as r, PcapWriter(tmp_path / "bad.pcap", linktype=1) as w:
        with pytest.raises(ValueError, match="link type 101"):
            w.write_batch(next(r))


def test_snaplen_truncates_and_keeps_wire_length(tmp_path):
    p = tmp_path / "s.pcap"
    data = eth_tcp(1) + bytes(100)
    with PcapWriter(p, snaplen=60) as w:
        w.write(data, 1)
    assert p.read_bytes() == expected_file([(1, data, len(data))], snaplen=60)
    with open_capture(p) as r:
        a = next(r).to_numpy()
    assert (a["caplen"][0], a["wirelen"][0], a["status"][0]) == (60, 154, 0)


def test_file_object_target_and_errors():
    buf = pyio.BytesIO()
    w = PcapWriter(buf, linktype=229)
    w.write(memoryview(raw_udp6(1)), 42)
    w.write(b"", 43)
    w.flush()
    assert buf.getvalue() == expected_file([(42, raw_udp6(1), len(raw_udp6(1))), (43, b"", 0)], 229)
    with pytest.raises(ValueError, match="outside the pcap range"):
        w.write(b"x", -1)
    with pytest.raises(ValueError, match="outside the pcap range"):
        w.write(b"x", (1 << 32) * 10**9)
    w.close()
    assert not buf.closed                      # a caller's file object is left open
    with pytest.raises(ValueError, match="closed"):
        w.write(b"x", 1)
    w.close()                                  # idempotent
    with pytest.raises(TypeError):
        PcapWriter(12345)
    with pytest.raises(ValueError):
        PcapWriter(pyio.BytesIO(), snaplen=0)


def test_tshark_reads_the_written_file(tmp_path):
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (apt-get install tshark)")
    p = tmp_path / "t.pcap"
    pkts = [(1_700_000_000_000_000_001 + i * 1_000_000_007, eth_tcp(i)) for i in range(5)]
    with PcapWriter(p) as w:
        for ts, d in pkts:
            w.write(d, ts)
        b = PacketBatch.from_packets([(1_800_000_000_000_000_000, eth_tcp(9) + bytes(6), 80)])
        w.write_batch(b)
    out = subprocess.run(["tshark", "-r", str(p), "-T", "fields", "-E", "separator=,", "-e", "frame.number",
                          "-e", "frame.time_epoch", "-e", "frame.len", "-e", "tcp.srcport"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert [line.split(",")[0] for line in out] == ["1", "2", "3", "4", "5", "6"]
    assert [int(line.split(",")[1].replace(".", "")) for line in out] == [ts for ts, _ in pkts] + [1_800_000_000_000_000_000]
    assert [line.split(",")[2] for line in out] == ["54"] * 5 + ["80"]
    assert [line.split(",")[3] for line in out] == ["1000", "1001", "1002", "1003", "1004", "1009"]
