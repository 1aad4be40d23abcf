"""Helpers for the forwarder tests: input batches from scapy packets, hand-built decision
records, reading the output pcap back, tshark checks, and an independent plain-Python
recomputation of every checksum (nothing here uses ipvsflow's checksum code)."""
import shutil
import struct
import subprocess

import numpy as np
import pytest

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark (Debian package tshark) is not installed")

# decision_t values, from ipvsflow/engine/defs.pxd and conntab.pxd (the contract)
ACT_NEW, ACT_HIT, ACT_RESCHED, ACT_DROP, ACT_PASS, ACT_INVALID = 1, 2, 3, 4, 5, 6
DIR_NONE, DIR_IN, DIR_OUT = 0, 1, 2
CF_MASQ, CF_LOCALNODE, CF_TUNNEL, CF_DROUTE, CF_BYPASS = 0, 1, 2, 3, 4

V4_PREFIX = b"\x00" * 10 + b"\xff\xff"

# tshark 4.0: *.checksum.status 0 = Bad, 1 = Good, 2 = Unverified, 3 = Not present, 4 = Illegal
TSHARK_PREFS = ["-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                "-o", "sctp.checksum:CRC 32c", "-o", "ip.check_checksum:TRUE"]
BAD_FILTER = ("tcp.checksum.status==0 || udp.checksum.status==0 || sctp.checksum.status==0 "
              "|| ip.checksum.status==0 || icmp.checksum.status==0 || icmpv6.checksum.status==0")


def addr16(text):
    import ipaddress
    a = ipaddress.ip_address(text)
    return V4_PREFIX + a.packed if a.version == 4 else a.packed


def batch_of(packets, linktype=1, t0=1_700_000_000_000_000_000, writable=False):
    """PacketBatch from scapy packets / bytes (timestamps 1 µs apart)."""
    from ipvsflow.io import PacketBatch
    raws = [bytes(p) for p in packets]
    b = PacketBatch.from_packets([(t0 + 1000 * i, r) for i, r in enumerate(raws)], linktype=linktype)
    if writable:
        # same frames in a bytearray the batch owns: the forwarder may rewrite them in place
        buf = bytearray(b"".join(raws))
        b2 = PacketBatch.from_packets([(t0 + 1000 * i, r) for i, r in enumerate(raws)], linktype=linktype)
        _repoint(b2, buf, [len(r) for r in raws])
        return b2, buf
    return b


def _repoint(batch, buf, lengths):
    """Point the batch's packets into buf (a bytearray) instead of its own bytes copy."""
    arr = batch.to_numpy()
    base = np.frombuffer(buf, dtype=np.uint8).ctypes.data
    off = 0
    for i, n in enumerate(lengths):
        arr["data"][i] = base + off
        off += n
    batch.owner = buf


def decisions(n, **fields):
    """n decision records (forward.DECISION_DTYPE), pkt = 0..n-1, fields broadcast."""
    from ipvsflow.forward import DECISION_DTYPE
    d = np.zeros(n, DECISION_DTYPE)
    d["pkt"] = np.arange(n)
    d["rs"] = -1
    d["svc"] = -1
    d["fwd"] = 0xff
    for k, v in fields.items():
        if k == "vaddr":
            if isinstance(v, str):
                v = np.frombuffer(addr16(v), np.uint8)
            else:
                v = np.stack([np.frombuffer(addr16(a), np.uint8) for a in v])
        d[k] = v
    return d


# Real servers of the test engine, by dest id (the order of the -a lines below).
RULES = """
-A -t 10.0.0.100:80 -s rr
-a -t 10.0.0.100:80 -r 10.0.1.1:8080 -m
-A -u 10.0.0.100:53 -s rr
-a -u 10.0.0.100:53 -r 10.0.1.2:5353 -m
-A --sctp-service 10.0.0.100:3868 -s rr
-a --sctp-service 10.0.0.100:3868 -r 10.0.1.3:3869 -m
-A -t [2001:db8::100]:80 -s rr
-a -t [2001:db8::100]:80 -r [2001:db8:1::1]:8080 -m
-A -t 10.0.0.200:80 -s rr
-a -t 10.0.0.200:80 -r 10.0.2.1:80 -g
-A -t 10.0.0.201:80 -s rr
-a -t 10.0.0.201:80 -r 10.0.3.1:80 -i
-A -t [2001:db8::201]:80 -s rr
-a -t [2001:db8::201]:80 -r [2001:db8:3::1]:80 -i
-A -t 10.0.0.202:80 -s rr
-a -t 10.0.0.202:80 -r [2001:db8:3::2]:80 -i
-A -t [2001:db8::202]:80 -s rr
-a -t [2001:db8::202]:80 -r 10.0.3.2:80 -i
-A -t [2001:db8::200]:80 -s rr
-a -t [2001:db8::200]:80 -r [2001:db8:2::1]:80 -g
"""
RS = ["10.0.1.1", "10.0.1.2", "10.0.1.3", "2001:db8:1::1", "10.0.2.1", "10.0.3.1",
      "2001:db8:3::1", "2001:db8:3::2", "10.0.3.2", "2001:db8:2::1"]
RS_NAT_TCP4, RS_NAT_UDP4, RS_NAT_SCTP4, RS_NAT_TCP6, RS_DR4, RS_TUN4, RS_TUN6, RS_TUN4IN6, \
    RS_TUN6IN4, RS_DR6 = range(10)


def make_engine():
    from ipvsflow.config import parse_rules
    from ipvsflow.engine import Engine
    eng = Engine(parse_rules(RULES))
    got = {d["id"]: d["addr"] for d in eng.dests()}
    assert got == dict(enumerate(RS)), got
    return eng


def check_accounting(c):
    """Every packet is forwarded, dropped or passed, and every drop has one reason."""
    assert c["packets"] == c["forwarded"] + c["dropped"] + c["passed"], c
    assert c["dropped"] == sum(c["drop_reasons"].values()), c
    assert c["forwarded"] == sum(c["by_method"].values()), c
    assert c["passed"] == c["pass"] + c["invalid"] + c["localnode"], c


def forward_to_file(fw, batch, dec, path, linktype=1, start=0, stop=None):
    """Run fw.forward into a new pcap file; returns (frames, linktype, packets forwarded)."""
    from ipvsflow.io import PcapWriter
    with PcapWriter(str(path), linktype=linktype) as w:
        n = fw.forward(batch, dec, start, batch.count if stop is None else stop, w)
    frames, lt = read_pcap(path)
    assert len(frames) == n
    check_accounting(fw.counters)
    return frames, lt, n


def read_pcap(path):
    """[(ts_ns, caplen, wirelen, bytes)] and the link type of a nanosecond/µs pcap file."""
    data = open(path, "rb").read()
    magic, = struct.unpack("<I", data[:4])
    assert magic in (0xa1b2c3d4, 0xa1b23c4d), hex(magic)
    linktype, = struct.unpack("<I", data[20:24])
    out = []
    pos = 24
    while pos < len(data):
        sec, frac, cap, wire = struct.unpack("<IIII", data[pos:pos + 16])
        ns = frac if magic == 0xa1b23c4d else frac * 1000
        out.append((sec * 10**9 + ns, cap, wire, data[pos + 16:pos + 16 + cap]))
        pos += 16 + cap
    return out, linktype


def tshark_bad(path):
    """Packets tshark finds a bad checksum in (text), with every checksum check on."""
    r = subprocess.run([TSHARK, "-r", str(path), *TSHARK_PREFS, "-Y", BAD_FILTER],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def tshark_fields(path, fields, extra=()):
    r = subprocess.run([TSHARK, "-r", str(path), *TSHARK_PREFS, *extra, "-T", "fields",
                        "-E", "separator=|", *sum((["-e", f] for f in fields), [])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line.split("|") for line in r.stdout.splitlines()]


# ---- independent checksum recomputation ------------------------------------------------------

def ones_sum(data):
    if len(data) % 2:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def inet_csum(data):
    return ~ones_sum(data) & 0xffff


def crc32c_bitwise(data):
    crc = 0xffffffff
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xffffffff


def l3_offset(frame, linktype):
    if linktype == 1:
        off, et = 14, struct.unpack("!H", frame[12:14])[0]
        while et in (0x8100, 0x88a8):
            et = struct.unpack("!H", frame[off + 2:off + 4])[0]
            off += 4
        return off
    return {101: 0, 228: 0, 229: 0, 113: 16, 276: 20, 0: 4, 108: 4}[linktype]


def parse_ip(pkt):
    """(af, header length incl. IPv6 extension headers, L4 protocol, src, dst, total length)
    of the IP packet at the start of pkt."""
    v = pkt[0] >> 4
    if v == 4:
        ihl = (pkt[0] & 15) * 4
        return 4, ihl, pkt[9], pkt[12:16], pkt[16:20], struct.unpack("!H", pkt[2:4])[0]
    assert v == 6
    nh, pos = pkt[6], 40
    while nh in (0, 43, 60, 44, 51):
        if nh == 44:
            nh, pos = pkt[pos], pos + 8
        elif nh == 51:
            nh, pos = pkt[pos], pos + (pkt[pos + 1] + 2) * 4
        else:
            nh, pos = pkt[pos], pos + (pkt[pos + 1] + 1) * 8
    return 6, pos, nh, pkt[8:24], pkt[24:40], 40 + struct.unpack("!H", pkt[4:6])[0]


def check_all_checksums(pkt, allow_udp_zero=True):
    """Recompute every checksum of an IP packet (and of an encapsulated one) from scratch and
    compare with the stored values. Returns a list of what was checked."""
    checked = []
    af, hl, proto, src, dst, tot = parse_ip(pkt)
    assert tot <= len(pkt), "truncated packet"
    pkt = pkt[:tot]
    if af == 4:
        h = bytearray(pkt[:hl])
        stored = struct.unpack("!H", h[10:12])[0]
        h[10:12] = b"\0\0"
        assert stored == inet_csum(bytes(h)), "IPv4 header checksum"
        checked.append("ip")
    seg = bytearray(pkt[hl:])
    if af == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(seg))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(seg), proto)
    if proto in (6, 17, 58):
        off = {6: 16, 17: 6, 58: 2}[proto]
        stored = struct.unpack("!H", seg[off:off + 2])[0]
        if proto == 17 and stored == 0:
            # IPv4: "no checksum"; IPv6: only for tunnels (RFC 6935), as udp6_set_csum sends GUE
            gue = struct.unpack("!H", seg[2:4])[0] in GUE_PORTS
            assert (af == 4 and allow_udp_zero) or gue, "UDP zero checksum"
            checked.append("udp0")
        else:
            seg[off:off + 2] = b"\0\0"
            want = inet_csum((pseudo if proto != 1 else b"") + bytes(seg))
            if proto == 17 and want == 0:
                want = 0xffff
            assert stored == want, f"L4 checksum of protocol {proto}: {stored:#x} != {want:#x}"
            checked.append({6: "tcp", 17: "udp", 58: "icmpv6"}[proto])
        if proto == 17 and len(seg) >= 12 and struct.unpack("!H", seg[2:4])[0] in GUE_PORTS:
            checked += check_all_checksums(bytes(seg[12:]))
    elif proto == 1:
        stored = struct.unpack("!H", seg[2:4])[0]
        seg[2:4] = b"\0\0"
        assert stored == inet_csum(bytes(seg)), "ICMP checksum"
        checked.append("icmp")
    elif proto == 132:
        stored = struct.unpack("<I", seg[8:12])[0]
        seg[8:12] = b"\0\0\0\0"
        assert stored == crc32c_bitwise(bytes(seg)), "SCTP CRC32c"
        checked.append("sctp")
    elif proto in (4, 41):
        checked += check_all_checksums(bytes(seg))
    elif proto == 47:
        flags = struct.unpack("!H", seg[0:2])[0]
        inner = 8 if flags & 0x8000 else 4
        if flags & 0x8000:
            stored = struct.unpack("!H", seg[4:6])[0]
            seg[4:6] = b"\0\0"
            assert stored == inet_csum(bytes(seg)), "GRE checksum"
            checked.append("gre")
        checked += check_all_checksums(bytes(seg[inner:]))
    return checked


GUE_PORTS = {6080, 5555}
