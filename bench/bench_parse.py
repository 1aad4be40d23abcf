"""Parse cost per packet from an mmap'd pcap, side by side in one run:

* ipvsflow: open_capture over the file, iterating the batches (the reader parses every burst);
* the C floor: bench/parse_floor.c, the same work as a plain C loop into an array of structs;
* a pure-Python ``struct`` loop, dpkt and scapy, on the first packets of the same file.

The capture (IPVSFLOW_BENCH_PACKETS packets, default 5,000,000: mostly Ethernet/IPv4/TCP, some
IPv6 and UDP, a few VLAN-tagged) is generated once with numpy into the bench cache directory.
Run: ``pytest bench/bench_parse.py`` (quick: ``IPVSFLOW_BENCH_PACKETS=200000 pytest bench/``;
on a busy machine add ``--benchmark-timer time.process_time``). Figures are reported, not
asserted; the summary table gives ns/packet and the ratios. Both ipvsflow and the floor
fault the mapped file in as they go (MADV_SEQUENTIAL), which is a large part of the cost.
"""
import ctypes
import itertools
import mmap
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import ipvsflow.io as io

HERE = Path(__file__).parent
N_PACKETS = int(os.environ.get("IPVSFLOW_BENCH_PACKETS", "5000000"))
N_STRUCT = min(N_PACKETS, 200_000)
N_DPKT = min(N_PACKETS, 50_000)
N_SCAPY = min(N_PACKETS, 3_000)
GEN_VERSION = 1
RESULTS = {}

# --------------------------------------------------------------------------------------------
# capture generation (vectorised: one template per position of a 32-packet pattern)

MAC = bytes.fromhex("020000000002" "020000000001")
VIP4 = bytes([192, 0, 2, 1])
VIP6 = bytes.fromhex("20010db8000000000000000000000080")


def _ipv4(proto, payload_len):
    tot = 20 + payload_len
    return bytes([0x45, 0, tot >> 8, tot & 255, 0, 1, 0x40, 0, 64, proto, 0, 0]) + bytes(4) + VIP4


def _ipv6(nh, payload_len):
    return bytes([0x60, 0, 0, 0, payload_len >> 8, payload_len & 255, nh, 64]) + bytes(16) + VIP6


def _tcp(data_len=0):
    return bytes([0, 0, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xFF, 0xFF, 0, 0, 0, 0]) + bytes(data_len)


def _udp(data_len):
    ln = 8 + data_len
    return bytes([0, 0, 0, 53, ln >> 8, ln & 255, 0, 0]) + bytes(data_len)


# name -> (frame bytes, IP header offset, IP version, L4 offset)
TEMPLATES = {
    "v4tcp": (MAC + b"\x08\x00" + _ipv4(6, 20) + _tcp(), 14, 4, 34),
    "v4tcp_data": (MAC + b"\x08\x00" + _ipv4(6, 120) + _tcp(100), 14, 4, 34),
    "v4tcp_vlan": (MAC + b"\x81\x00\x00\x64\x08\x00" + _ipv4(6, 20) + _tcp(), 18, 4, 38),
    "v4udp": (MAC + b"\x08\x00" + _ipv4(17, 40) + _udp(32), 14, 4, 34),
    "v6tcp": (MAC + b"\x86\xdd" + _ipv6(6, 20) + _tcp(), 14, 6, 54),
    "v6udp": (MAC + b"\x86\xdd" + _ipv6(17, 24) + _udp(16), 14, 6, 54),
}
PATTERN = (["v4tcp"] * 14 + ["v4tcp_data"] * 10 + ["v4tcp_vlan"] * 2 + ["v4udp"] * 2 + ["v6tcp"] * 3
           + ["v6udp"] * 1)
FLAGS = np.array([0x02, 0x10, 0x18, 0x11], dtype=np.uint8)          # SYN, ACK, PSH-ACK, FIN-ACK


def generate_pcap(path, n, t0_ns=1_700_000_000_000_000_000):
    """Nanosecond pcap of ``n`` packets; written to a temp name, then renamed."""
    np_ = len(PATTERN)
    reps = -(-n // np_)
    lens = [16 + len(TEMPLATES[t][0]) for t in PATTERN]
    starts = np.concatenate([[0], np.cumsum(lens)])
    block = np.zeros((reps, int(starts[-1])), dtype=np.uint8)
    k = np.arange(reps, dtype=np.int64)
    for j, name in enumerate(PATTERN):
        frame, l3, ver, l4 = TEMPLATES[name]
        s = int(starts[j])
        rec = block[:, s:s + lens[j]]
        i = k * np_ + j                                       # packet index
        ts = t0_ns + i * 1000
        hdr = np.zeros((reps, 4), dtype="<u4")
        hdr[:, 0], hdr[:, 1] = ts // 1_000_000_000, ts % 1_000_000_000
        hdr[:, 2] = hdr[:, 3] = len(frame)
        rec[:, :16] = hdr.view(np.uint8).reshape(reps, 16)
        rec[:, 16:] = np.frombuffer(frame, dtype=np.uint8)
        f = rec[:, 16:]
        if ver == 4:                                          # client 10.a.b.c
            f[:, l3 + 12] = 10
            f[:, l3 + 13] = (i >> 16) & 255
            f[:, l3 + 14] = (i >> 8) & 255
            f[:, l3 + 15] = i & 255
        else:                                                 # client 2001:db8::a:b:c:d
            f[:, l3 + 8:l3 + 12] = np.frombuffer(bytes.fromhex("20010db8"), np.uint8)
            for b in range(4):
                f[:, l3 + 20 + b] = (i >> (8 * (3 - b))) & 255
        sport = 1024 + i % 64000
        f[:, l4] = sport >> 8
        f[:, l4 + 1] = sport & 255
        if name.startswith(("v4tcp", "v6tcp")):
            f[:, l4 + 13] = FLAGS[(i // np_) % 4]
    total = (n // np_) * int(starts[-1]) + int(starts[n % np_])
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
        block.reshape(-1)[:total].tofile(out)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def capture(bench_cache):
    path = bench_cache / f"parse_{N_PACKETS}_v{GEN_VERSION}.pcap"
    if not path.exists():
        generate_pcap(path, N_PACKETS)
    return path


# --------------------------------------------------------------------------------------------
# the contenders

def ipvsflow_parse(path):
    n = 0
    with io.open_capture(path, burst=256) as r:
        for b in r:
            n += len(b)
    return n


def struct_parse(path, limit):
    """What a user would write with the struct module: the same fields into a list of tuples."""
    u32x4 = struct.Struct("<IIII").unpack_from
    u16 = struct.Struct("!H").unpack_from
    u16x2 = struct.Struct("!HH").unpack_from
    out = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos, size = 24, len(m)
        while pos + 16 <= size and len(out) < limit:
            sec, frac, cap, wire = u32x4(m, pos)
            d = pos + 16
            pos = d + cap
            off = 14
            (et,) = u16(m, d + 12)
            while et in (0x8100, 0x88A8):
                (et,) = u16(m, d + off + 2)
                off += 4
            ip = d + off
            sport = dport = flags = 0
            if et == 0x0800:
                ihl = (m[ip] & 15) * 4
                proto, src, dst = m[ip + 9], m[ip + 12:ip + 16], m[ip + 16:ip + 20]
                l4 = ip + ihl
                af = 4
            elif et == 0x86DD:
                proto, src, dst = m[ip + 6], m[ip + 8:ip + 24], m[ip + 24:ip + 40]
                l4 = ip + 40
                af = 6
            else:
                out.append((sec * 1_000_000_000 + frac, cap, wire, 0, 0, b"", b"", 0, 0, 0))
                continue
            if proto in (6, 17, 132):
                sport, dport = u16x2(m, l4)
                if proto == 6:
                    flags = m[l4 + 13]
            out.append((sec * 1_000_000_000 + frac, cap, wire, af, proto, src, dst, sport, dport, flags))
    return len(out)


def dpkt_parse(path, limit):
    import dpkt
    n = 0
    with open(path, "rb") as f:
        for ts, buf in itertools.islice(dpkt.pcap.Reader(f), limit):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                l4 = ip.data
                _ = (ip.src, ip.dst, getattr(l4, "sport", 0), getattr(l4, "dport", 0), getattr(l4, "flags", 0))
            n += 1
    return n


def scapy_parse(path, limit):
    from scapy.config import conf
    conf.verb = 0
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import RawPcapReader
    n = 0
    with RawPcapReader(str(path)) as r:
        for data, _meta in itertools.islice(r, limit):
            p = Ether(data)
            ip = p.getlayer(IP) or p.getlayer(IPv6)
            if ip is not None:
                l4 = ip.payload
                _ = (ip.src, ip.dst, getattr(l4, "sport", 0), getattr(l4, "dport", 0),
                     l4.flags if isinstance(l4, TCP) else 0)
            n += 1
    return n


def _record(benchmark, name, packets):
    if benchmark.stats is None:          # --benchmark-disable: ran once, nothing measured
        return
    ns = benchmark.stats.stats.min * 1e9 / packets
    benchmark.extra_info.update(packets=packets, ns_per_packet=round(ns, 2))
    RESULTS[name] = (ns, packets)


@pytest.fixture(scope="module", autouse=True)
def summary(bench_summary):
    yield
    if not RESULTS:
        return
    floor = RESULTS.get("C floor", (None,))[0]
    ours = RESULTS.get("ipvsflow", (None,))[0]
    lines = [f"{'parser':<14}{'packets':>11}{'ns/packet':>12}{'x C floor':>11}{'ipvsflow faster by':>20}"]
    for name in ("ipvsflow", "C floor", "python struct", "dpkt", "scapy"):
        if name not in RESULTS:
            continue
        ns, n = RESULTS[name]
        vs_floor = f"{ns / floor:.2f}" if floor else "-"
        speedup = f"{ns / ours:.0f}x" if ours and name != "ipvsflow" else "-"
        lines.append(f"{name:<14}{n:>11,}{ns:>12.2f}{vs_floor:>11}{speedup:>20}")
    lines.append("targets: ipvsflow <= 1.5x the C floor; hundreds of times faster than dpkt")
    bench_summary("parse ns/packet (min over rounds)", lines)


def test_parse_ipvsflow(benchmark, capture):
    benchmark.group = "parse"
    n = benchmark.pedantic(ipvsflow_parse, args=(capture,), rounds=12, warmup_rounds=1, iterations=1)
    assert n == N_PACKETS
    _record(benchmark, "ipvsflow", n)


def test_parse_c_floor(benchmark, capture, compile_c):
    benchmark.group = "parse"
    lib = ctypes.CDLL(str(compile_c(HERE / "parse_floor.c")))
    lib.floor_parse_file.restype = ctypes.c_int64
    lib.floor_parse_file.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int64)]
    acc, ns = ctypes.c_uint64(), ctypes.c_int64()
    n = benchmark.pedantic(lib.floor_parse_file, args=(str(capture).encode(), ctypes.byref(acc), ctypes.byref(ns)),
                           rounds=12, warmup_rounds=1, iterations=1)
    assert n == N_PACKETS
    _record(benchmark, "C floor", n)
    # the floor did the same work: its checksum over the parsed fields equals ipvsflow's
    total = 0
    with io.open_capture(capture) as r:
        for b in r:
            a = b.to_numpy()
            total += int(a["sport"].sum(dtype=np.uint64) + a["dport"].sum(dtype=np.uint64)
                         + a["proto"].sum(dtype=np.uint64) + (a["status"].astype(np.uint64) << 20).sum()
                         + a["src"][:, 15].sum(dtype=np.uint64))
    assert total % 2**64 == acc.value


def test_parse_python_struct(benchmark, capture):
    benchmark.group = "parse"
    n = benchmark.pedantic(struct_parse, args=(capture, N_STRUCT), rounds=3, iterations=1)
    assert n == N_STRUCT
    _record(benchmark, "python struct", n)


def test_parse_dpkt(benchmark, capture):
    pytest.importorskip("dpkt")
    benchmark.group = "parse"
    n = benchmark.pedantic(dpkt_parse, args=(capture, N_DPKT), rounds=3, iterations=1)
    assert n == N_DPKT
    _record(benchmark, "dpkt", n)


def test_parse_scapy(benchmark, capture):
    pytest.importorskip("scapy")
    benchmark.group = "parse"
    n = benchmark.pedantic(scapy_parse, args=(capture, N_SCAPY), rounds=2, iterations=1)
    assert n == N_SCAPY
    _record(benchmark, "scapy", n)


def test_generated_capture_is_what_tshark_sees(capture, tmp_path):
    """The numpy-built capture is well-formed: tshark agrees with our parse on its first packets."""
    import shutil
    import subprocess
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    head = tmp_path / "head.pcap"
    subprocess.run(["editcap", "-r", str(capture), str(head), f"1-{min(N_PACKETS, 64)}"], check=True,
                   capture_output=True)
    out = subprocess.run(["tshark", "-n", "-r", str(head), "-T", "fields", "-e", "ip.src", "-e", "ipv6.src",
                          "-e", "tcp.srcport", "-e", "udp.srcport", "-e", "tcp.flags"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    with io.open_capture(capture, burst=64) as r:
        a = next(iter(r)).to_numpy()
    for line, row in zip(out, a):
        ip4, ip6, tsp, usp, fl = line.split("\t")
        assert io.addr_to_str(row["src"].tobytes()) == (ip4 or ip6)
        assert row["sport"] == int(tsp or usp)
        if fl:
            assert row["tcp_flags"] == int(fl, 16) & 0xFF
        assert row["status"] == 0
