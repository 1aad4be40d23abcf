"""Shared helpers for the io conformance, malformed-input and pyshark tests.

* Capture builders: classic pcap and pcapng bytes written by hand, so every link type, byte
  order, timestamp resolution and block kind is under the test's control (and record
  boundaries are known for the corruption tests).
* tshark: field extraction through ``tshark -T fields`` (fast enough for bulk), and the
  comparison of our descriptors against tshark's dissection, which is the reference.
* Reading a file completely with the fast reader, keeping the error it ends with.
"""
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

TSHARK = shutil.which("tshark")

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# ParseStatus values, written out from ipvsflow/io/batch.pxd (the contract), so these tests do
# not take them from the code under test.
OK, FRAGMENT, NOT_IP, UNKNOWN_LINKTYPE, TRUNC_L2, TRUNC_L3, BAD_IP_VERSION, BAD_IHL, \
    BAD_IP_LEN, TRUNC_EXTHDR, TRUNC_L4, BAD_L4_HDR, TRUNC_ICMP_INNER, BAD_ICMP_INNER = range(14)
STATUS_NAMES = ["OK", "FRAGMENT", "NOT_IP", "UNKNOWN_LINKTYPE", "TRUNC_L2", "TRUNC_L3",
                "BAD_IP_VERSION", "BAD_IHL", "BAD_IP_LEN", "TRUNC_EXTHDR", "TRUNC_L4",
                "BAD_L4_HDR", "TRUNC_ICMP_INNER", "BAD_ICMP_INNER"]
FRAG_IS, FRAG_MF, FRAG_NONFIRST = 1, 2, 4
SCTP_ABORT_AFTER_COOKIE = 1
NO_OFFSET = 0xFFFF

V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


def addr16(text):
    """16-byte form of an address (IPv4 mapped as ::ffff:a.b.c.d), computed with the socket module."""
    import socket
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return V4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, text)


# --------------------------------------------------------------------------------------------
# classic pcap

@dataclass
class Built:
    """A capture file's bytes plus what the builder knows about its records."""
    data: bytes
    # one entry per packet record: (start, end) byte span of the whole record in the file
    spans: list = field(default_factory=list)
    # one entry per packet record: dict(ts_ns, data, wirelen, linktype, ifindex)
    packets: list = field(default_factory=list)
    header_end: int = 0
    # end offsets of every block / record (and of the pcap global header): the places where
    # the file may end cleanly
    boundaries: list = field(default_factory=list)

    def write(self, path):
        with open(path, "wb") as f:
            f.write(self.data)
        return path


def pcap_build(records, linktype, *, big_endian=False, nanosecond=False, snaplen=262144,
               linktype_field=None):
    """Classic pcap. ``records``: iterable of (ts_ns, data[, wirelen]).

    ``linktype_field`` overrides the raw 32-bit link-type field (to set the FCS bits)."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    lt_field = linktype if linktype_field is None else linktype_field
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, lt_field)]
    pos = 24
    b = Built(b"", header_end=24, boundaries=[24])
    for rec in records:
        ts_ns, data = rec[0], bytes(rec[1])
        wirelen = rec[2] if len(rec) > 2 and rec[2] is not None else len(data)
        sec, frac = divmod(ts_ns, 10**9)
        if not nanosecond:
            if frac % 1000:
                raise ValueError("microsecond pcap cannot hold a sub-microsecond timestamp")
            frac //= 1000
        hdr = struct.pack(e + "IIII", sec, frac, len(data), wirelen)
        out += [hdr, data]
        b.spans.append((pos, pos + 16 + len(data)))
        b.packets.append(dict(ts_ns=ts_ns, data=data, wirelen=wirelen, linktype=linktype, ifindex=0))
        pos += 16 + len(data)
        b.boundaries.append(pos)
    b.data = b"".join(out)
    return b


# --------------------------------------------------------------------------------------------
# pcapng

@dataclass
class Iface:
    linktype: int
    tsresol: int = None      # raw if_tsresol byte; None = default (microseconds)
    tsoffset: int = 0        # if_tsoffset, seconds
    snaplen: int = 0
    name: str = None


def _pad4(b):
    return b + b"\x00" * (-len(b) % 4)


def _options(e, opts):
    if not opts:
        return b""
    out = b"".join(struct.pack(e + "HH", code, len(val)) + _pad4(val) for code, val in opts)
    return out + struct.pack(e + "HH", 0, 0)


def _block(e, btype, body):
    total = 12 + len(body)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


def tsresol_units_per_second(tsresol):
    if tsresol is None:
        return 10**6
    if tsresol & 0x80:
        return 2 ** (tsresol & 0x7F)
    return 10 ** tsresol


def ts_units(ts_ns, iface):
    """The EPB timestamp (in the interface's units) that means ``ts_ns``; must be exact."""
    rel = ts_ns - iface.tsoffset * 10**9
    ups = tsresol_units_per_second(iface.tsresol)
    units, rem = divmod(rel * ups, 10**9)
    if rem:
        raise ValueError(f"{ts_ns} ns is not representable with if_tsresol {iface.tsresol}")
    return units


def pcapng_build(sections):
    """pcapng from a list of sections.

    A section is a dict: ``big_endian`` (bool), ``major`` (SHB major version, default 1),
    ``ifaces`` (list of Iface, written as IDBs right after the SHB), ``blocks``: list of tuples

    * ("epb", if_id, ts_ns, data[, wirelen])   enhanced packet block
    * ("pb", if_id, ts_ns, data[, wirelen])    obsolete packet block (type 2)
    * ("spb", data[, wirelen])                  simple packet block (interface 0, no timestamp)
    * ("isb", if_id), ("nrb",), ("custom",), ("idb", Iface)   non-packet blocks
    """
    out = []
    pos = 0
    b = Built(b"")
    for si, sec in enumerate(sections):
        e = ">" if sec.get("big_endian") else "<"
        shb_body = struct.pack(e + "IHHq", 0x1A2B3C4D, sec.get("major", 1), 0, -1)
        shb_body += _options(e, [(1, f"section {si}".encode())])
        blk = _block(e, 0x0A0D0D0A, shb_body)
        out.append(blk)
        pos += len(blk)
        b.boundaries.append(pos)
        ifaces = list(sec.get("ifaces", []))

        def idb(iface):
            opts = []
            if iface.name:
                opts.append((2, iface.name.encode()))
            if iface.tsresol is not None:
                opts.append((9, bytes([iface.tsresol])))
            if iface.tsoffset:
                opts.append((14, struct.pack(e + "q", iface.tsoffset)))
            return _block(e, 1, struct.pack(e + "HHI", iface.linktype, 0, iface.snaplen) + _options(e, opts))

        for iface in ifaces:
            blk = idb(iface)
            out.append(blk)
            pos += len(blk)
            b.boundaries.append(pos)
        if si == 0:
            b.header_end = pos
        for spec in sec.get("blocks", []):
            kind = spec[0]
            pkt = None
            if kind in ("epb", "pb"):
                _, if_id, ts_ns, data = spec[:4]
                data = bytes(data)
                wirelen = spec[4] if len(spec) > 4 and spec[4] is not None else len(data)
                iface = ifaces[if_id]
                u = ts_units(ts_ns, iface)
                hi, lo = u >> 32, u & 0xFFFFFFFF
                if kind == "epb":
                    body = struct.pack(e + "IIIII", if_id, hi, lo, len(data), wirelen) + _pad4(data)
                    blk = _block(e, 6, body)
                else:
                    body = struct.pack(e + "HHIIII", if_id, 0, hi, lo, len(data), wirelen) + _pad4(data)
                    blk = _block(e, 2, body)
                pkt = dict(ts_ns=ts_ns, data=data, wirelen=wirelen, linktype=ifaces[if_id].linktype,
                           ifindex=if_id)
            elif kind == "spb":
                data = bytes(spec[1])
                wirelen = spec[2] if len(spec) > 2 and spec[2] is not None else len(data)
                blk = _block(e, 3, struct.pack(e + "I", wirelen) + _pad4(data))
                pkt = dict(ts_ns=None, data=data, wirelen=wirelen, linktype=ifaces[0].linktype, ifindex=0)
            elif kind == "isb":
                blk = _block(e, 5, struct.pack(e + "III", spec[1], 0, 0))
            elif kind == "nrb":
                rec = struct.pack(e + "HH", 1, 4 + 12) + _pad4(bytes([192, 0, 2, 1]) + b"host.test\x00\x00\x00")
                blk = _block(e, 4, rec + struct.pack(e + "HH", 0, 0))
            elif kind == "custom":
                blk = _block(e, 0xBAD, struct.pack(e + "I", 32473) + _pad4(b"opaque custom data"))
            elif kind == "idb":
                ifaces.append(spec[1])
                blk = idb(spec[1])
            else:
                raise ValueError(kind)
            out.append(blk)
            if pkt is not None:
                b.spans.append((pos, pos + len(blk)))
                b.packets.append(pkt)
            pos += len(blk)
            b.boundaries.append(pos)
    b.data = b"".join(out)
    return b


# --------------------------------------------------------------------------------------------
# reading with the fast reader

@dataclass
class ReadResult:
    rows: np.ndarray            # copy of every descriptor, in order
    packets: list               # packet bytes, in order
    error: Exception = None     # CaptureError the iteration ended with, if any
    reader_packets: int = 0     # reader.packets at the end
    linktypes: tuple = ()


def read_all(path, burst=256, opener=None):
    """Iterate a capture to the end with the fast reader (or ``opener``), copying everything."""
    import ipvsflow.io as io
    opener = opener or io.open_capture
    chunks, pkts = [], []
    err = None
    reader = opener(str(path), burst=burst)
    try:
        try:
            for batch in reader:
                a = batch.to_numpy()
                chunks.append(a.copy())
                pkts += [batch.packet_bytes(i) for i in range(len(batch))]
        except io.CaptureError as exc:
            err = exc
        n = getattr(reader, "packets", None)
        lts = tuple(getattr(reader, "linktypes", ()) or ())
    finally:
        reader.close()
    rows = np.concatenate(chunks) if chunks else np.zeros(0, dtype=io.PKT_DTYPE)
    return ReadResult(rows, pkts, err, n, lts)


# --------------------------------------------------------------------------------------------
# tshark

TSHARK_PREFS = [
    "-o", "ip.defragment:FALSE",          # fields per fragment, not of the reassembled datagram
    "-o", "ipv6.defragment:FALSE",
    "-o", "tcp.desegment_tcp_streams:FALSE",
]

FIELDS = [
    "frame.number", "frame.encap_type", "frame.interface_id", "frame.section_number", "frame.len", "frame.cap_len",
    "frame.time_epoch", "frame.protocols",
    "vlan.id", "ieee8021ad.id",
    "ip.hdr_len", "ip.len", "ip.id", "ip.flags.mf", "ip.frag_offset", "ip.ttl", "ip.proto",
    "ip.src", "ip.dst",
    "ipv6.plen", "ipv6.nxt", "ipv6.hlim", "ipv6.src", "ipv6.dst",
    "ipv6.hopopts.nxt", "ipv6.routing.nxt", "ipv6.fraghdr.nxt", "ipv6.dstopts.nxt", "ah.next_header",
    "ipv6.fraghdr.offset", "ipv6.fraghdr.more", "ipv6.fraghdr.ident",
    "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.hdr_len", "tcp.urgent_pointer",
    "udp.srcport", "udp.dstport", "udp.checksum",
    "sctp.srcport", "sctp.dstport", "sctp.checksum", "sctp.chunk_type", "sctp.chunk_length",
    "icmp.type", "icmp.code", "icmp.checksum",
    "icmpv6.type", "icmpv6.code", "icmpv6.checksum",
]

# Wireshark's WTAP_ENCAP_* numbers (frame.encap_type) -> LINKTYPE_*. Established by writing a
# pcap with each link type and reading frame.encap_type back (12 and 14 are raw IP too).
LINKTYPE_OF_ENCAP = {1: 1, 15: 0, 7: 101, 129: 228, 130: 229, 174: 108, 25: 113, 210: 276}

LINK_PROTOS = {"eth", "ethertype", "vlan", "ieee8021ad", "sll", "null", "raw"}
IPV6_EXT_PROTOS = {"ipv6.hopopts": "ipv6.hopopts.nxt", "ipv6.routing": "ipv6.routing.nxt",
                   "ipv6.fraghdr": "ipv6.fraghdr.nxt", "ipv6.dstopts": "ipv6.dstopts.nxt",
                   "ah": "ah.next_header"}
ICMP4_ERRORS = {3, 4, 11, 12}
ICMP6_ERRORS = {1, 2, 3, 4}


@dataclass
class TsharkResult:
    frames: list          # every record tshark shows, as dict field -> list of occurrences
    returncode: int
    stderr: str

    @property
    def packets(self):
        """Frames that are packets (pcapng custom blocks show up as frames with no encapsulation)."""
        return [f for f in self.frames if f.get("frame.encap_type")]


def tshark_fields(path, fields=FIELDS, display_filter=None, timeout=120):
    args = [TSHARK, "-n", "-r", str(path), *TSHARK_PREFS, "-T", "fields", "-E", "separator=/t",
            "-E", "occurrence=a", "-E", "aggregator=,", "-E", "quote=n"]
    if display_filter:
        args += ["-Y", display_filter]
    for f in fields:
        args += ["-e", f]
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "LC_ALL": "C"})
    frames = []
    for line in res.stdout.splitlines():
        cols = line.split("\t")
        if len(cols) != len(fields):
            raise AssertionError(f"tshark printed {len(cols)} columns for {len(fields)} fields: {line!r}")
        frames.append({f: (c.split(",") if c else []) for f, c in zip(fields, cols)})
    stderr = "\n".join(l for l in res.stderr.splitlines() if "could be dangerous" not in l)
    return TsharkResult(frames, res.returncode, stderr)


def epoch_to_ns(text):
    """tshark's frame.time_epoch ('1340954905.298858000') as integer ns, exactly."""
    return int(Decimal(text) * 10**9)


class TFrame:
    """One tshark frame with protocol-occurrence bookkeeping.

    tshark prints every occurrence of a field (outer header first, then e.g. the header embedded
    in an ICMP error). ``frame.protocols`` lists the layers in order, so the n-th layer named
    ``ip`` owns the n-th occurrence of every ``ip.*`` field.
    """

    def __init__(self, f):
        self.f = f
        self.protos = f["frame.protocols"][0].split(":") if f["frame.protocols"] else []
        self.layers = []
        seen = {}
        for p in self.protos:
            self.layers.append((p, seen.get(p, 0)))
            seen[p] = seen.get(p, 0) + 1

    def get(self, name, occ=0, conv=int):
        vals = self.f.get(name, [])
        if occ >= len(vals):
            return None
        v = vals[occ]
        if conv is int:
            return int(v, 16) if v.startswith("0x") else int(v)
        return conv(v) if conv else v

    def all(self, name):
        return self.f.get(name, [])


@dataclass
class Expect:
    """What tshark says about one packet, translated to descriptor terms."""
    status: int = OK
    linktype: int = None
    caplen: int = 0
    wirelen: int = 0
    ts_ns: int = None
    ifindex: int = None
    vlans: list = field(default_factory=list)
    l2_len: int = None
    af: int = 0
    src: bytes = None
    dst: bytes = None
    ttl: int = None
    l3_len: int = None
    ihl: int = None
    proto: int = None
    frag: int = 0
    frag_id: int = None
    frag_off: int = 0
    l4: str = None                 # tshark's layer name after IP / extension headers
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    sctp_chunk: int = 0xFF
    sctp_flags: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    ic_proto: int = 0
    ic_src: bytes = None
    ic_dst: bytes = None
    ic_sport: int = 0
    ic_dport: int = 0


def _link_header_len(linktype, nvlan):
    return {0: 4, 1: 14 + 4 * nvlan, 101: 0, 12: 0, 14: 0, 228: 0, 229: 0, 108: 4, 113: 16,
            276: 20}.get(linktype)


def _ip_layer(t, li):
    """(af, fields) of the IP layer at layers[li]: addresses, ttl, lengths, fragment info, and
    the index of the layer after its extension headers with the final next-header value."""
    name, occ = t.layers[li]
    r = {}
    if name == "ip":
        r["af"] = 4
        r["src"], r["dst"] = t.get("ip.src", occ, None), t.get("ip.dst", occ, None)
        r["ttl"] = t.get("ip.ttl", occ)
        r["l3_len"] = t.get("ip.len", occ)
        r["ihl"] = t.get("ip.hdr_len", occ)
        r["proto"] = t.get("ip.proto", occ)
        mf, off = t.get("ip.flags.mf", occ), t.get("ip.frag_offset", occ)
        r["mf"], r["off"], r["frag_id"] = mf, off, t.get("ip.id", occ)
        r["fraghdr"] = False
        nxt = li + 1
    else:
        r["af"] = 6
        r["src"], r["dst"] = t.get("ipv6.src", occ, None), t.get("ipv6.dst", occ, None)
        r["ttl"] = t.get("ipv6.hlim", occ)
        plen = t.get("ipv6.plen", occ)
        r["l3_len"] = None if plen is None else 40 + plen
        r["ihl"] = None
        r["proto"] = t.get("ipv6.nxt", occ)
        r["mf"], r["off"], r["frag_id"], r["fraghdr"] = 0, 0, None, False
        nxt = li + 1
        while nxt < len(t.layers) and t.layers[nxt][0] in IPV6_EXT_PROTOS:
            ename, eocc = t.layers[nxt]
            r["proto"] = t.get(IPV6_EXT_PROTOS[ename], eocc)
            if ename == "ipv6.fraghdr":
                r["fraghdr"] = True
                r["off"] = t.get("ipv6.fraghdr.offset", eocc)
                r["mf"] = t.get("ipv6.fraghdr.more", eocc)
                r["frag_id"] = t.get("ipv6.fraghdr.ident", eocc)
            nxt += 1
    r["next_layer"] = nxt
    return r


def expect_from_tshark(frame):
    """Translate one tshark frame into the descriptor values the parser must produce."""
    t = TFrame(frame)
    e = Expect()
    e.caplen, e.wirelen = t.get("frame.cap_len"), t.get("frame.len")
    te = t.get("frame.time_epoch", conv=None)
    e.ts_ns = epoch_to_ns(te) if te else None
    e.linktype = LINKTYPE_OF_ENCAP.get(t.get("frame.encap_type"))
    e.ifindex = t.get("frame.interface_id")
    i = 0
    vlans = []
    while i < len(t.layers) and t.layers[i][0] in LINK_PROTOS:
        name, occ = t.layers[i]
        if name == "vlan":
            vlans.append(t.get("vlan.id", occ))
        elif name == "ieee8021ad":
            vlans.append(t.get("ieee8021ad.id", occ))
        i += 1
    e.vlans = vlans
    e.l2_len = _link_header_len(e.linktype, len(vlans))
    if e.l2_len is not None and e.caplen < e.l2_len:
        e.status = TRUNC_L2
        return e, t
    if i >= len(t.layers) or t.layers[i][0] not in ("ip", "ipv6"):
        e.status = NOT_IP
        return e, t
    ip = _ip_layer(t, i)
    e.af = ip["af"]
    e.src = addr16(ip["src"]) if ip["src"] else None
    e.dst = addr16(ip["dst"]) if ip["dst"] else None
    e.ttl, e.l3_len, e.ihl, e.proto = ip["ttl"], ip["l3_len"], ip["ihl"], ip["proto"]
    if ip["mf"] or ip["off"] or ip["fraghdr"]:
        e.frag = FRAG_IS | (FRAG_MF if ip["mf"] else 0) | (FRAG_NONFIRST if ip["off"] else 0)
        e.frag_id, e.frag_off = ip["frag_id"], ip["off"]
    if e.src is None or e.dst is None or e.ttl is None:
        e.status = TRUNC_L3
        return e, t
    if ip["off"]:
        e.status = FRAGMENT
        return e, t
    if e.af == 4 and e.ihl and e.caplen < e.l2_len + e.ihl:
        e.status = TRUNC_L3            # options cut by the snaplen
        return e, t
    li = ip["next_layer"]
    e.l4 = t.layers[li][0] if li < len(t.layers) else None
    l4occ = t.layers[li][1] if li < len(t.layers) else 0
    if e.proto == 6:
        if e.l4 != "tcp" or t.get("tcp.urgent_pointer", l4occ) is None:
            e.status = TRUNC_L4
            return e, t
        e.sport, e.dport = t.get("tcp.srcport", l4occ), t.get("tcp.dstport", l4occ)
        e.tcp_flags = t.get("tcp.flags", l4occ) & 0xFF
    elif e.proto == 17:
        if e.l4 != "udp" or t.get("udp.checksum", l4occ) is None:
            e.status = TRUNC_L4
            return e, t
        e.sport, e.dport = t.get("udp.srcport", l4occ), t.get("udp.dstport", l4occ)
    elif e.proto == 132:
        chunks = [int(c) for c in t.all("sctp.chunk_type")]
        if e.l4 != "sctp" or not t.all("sctp.chunk_length"):
            e.status = TRUNC_L4
            return e, t
        e.sport, e.dport = t.get("sctp.srcport", l4occ), t.get("sctp.dstport", l4occ)
        e.sctp_chunk = chunks[0]
        if len(chunks) > 1 and chunks[0] in (10, 11) and chunks[1] == 6:
            e.sctp_flags = SCTP_ABORT_AFTER_COOKIE
    elif e.proto in (1, 58) and e.l4 in ("icmp", "icmpv6"):
        pre = e.l4
        e.icmp_type, e.icmp_code = t.get(pre + ".type", l4occ), t.get(pre + ".code", l4occ)
        if e.icmp_type is None or t.get(pre + ".checksum", l4occ) is None:
            e.status = TRUNC_L4
            return e, t
        errors = ICMP4_ERRORS if e.proto == 1 else ICMP6_ERRORS
        if e.icmp_type in errors:
            if li + 1 >= len(t.layers) or t.layers[li + 1][0] not in ("ip", "ipv6"):
                e.status = TRUNC_ICMP_INNER
                return e, t
            inner = _ip_layer(t, li + 1)
            e.ic_proto = inner["proto"]
            e.ic_src = addr16(inner["src"]) if inner["src"] else None
            e.ic_dst = addr16(inner["dst"]) if inner["dst"] else None
            ili = inner["next_layer"]
            iname, iocc = t.layers[ili] if ili < len(t.layers) else (None, 0)
            if e.ic_src is None or e.ic_dst is None:
                e.status = TRUNC_ICMP_INNER
                return e, t
            if e.ic_proto in (6, 17, 132) and not inner["off"]:
                pfx = {6: "tcp", 17: "udp", 132: "sctp"}[e.ic_proto]
                sp, dp = t.get(pfx + ".srcport", iocc), t.get(pfx + ".dstport", iocc)
                if iname != pfx or sp is None or dp is None:
                    e.status = TRUNC_ICMP_INNER
                    return e, t
                e.ic_sport, e.ic_dport = sp, dp
    return e, t


def _addr_text(b):
    import socket
    b = bytes(b)
    if b[:12] == V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, b[12:])
    return socket.inet_ntop(socket.AF_INET6, b)


def compare_row(row, e, label=None):
    """Differences between one descriptor (numpy record) and tshark's expectation.

    ``label``: the status the builder of a synthesized packet intended; checked as well.
    Returns a list of 'field: ours X, expected Y' strings (empty = agreement)."""
    bad = []

    def chk(name, ours, exp):
        if exp is not None and ours != exp:
            bad.append(f"{name}: ours {ours!r}, tshark {exp!r}")

    st = int(row["status"])
    if label is not None and st != label:
        bad.append(f"status: ours {STATUS_NAMES[st]}, built as {STATUS_NAMES[label]}")
    chk("status", STATUS_NAMES[st], STATUS_NAMES[e.status])
    chk("caplen", int(row["caplen"]), e.caplen)
    chk("wirelen", int(row["wirelen"]), e.wirelen)
    chk("ts_ns", int(row["ts_ns"]), e.ts_ns)
    chk("linktype", int(row["linktype"]) if int(row["linktype"]) not in (12, 14) else 101, e.linktype)
    if st in (UNKNOWN_LINKTYPE, TRUNC_L2):
        return bad
    nv = int(row["vlan_count"])
    chk("vlan_count", nv, len(e.vlans))
    if nv >= 1 and e.vlans:
        chk("vlan_outer", int(row["vlan_outer"]), e.vlans[0])
    if nv >= 2 and len(e.vlans) > 1:
        chk("vlan_inner", int(row["vlan_inner"]), e.vlans[1])
    if st == NOT_IP or e.status == NOT_IP:
        chk("af", int(row["af"]), 0)
        return bad
    chk("l2_len", int(row["l2_len"]), e.l2_len)
    chk("l3_off", int(row["l3_off"]), e.l2_len)
    chk("af", int(row["af"]), e.af)
    if st == TRUNC_L3:
        return bad
    chk("src", _addr_text(row["src"]), e.src and _addr_text(e.src))
    chk("dst", _addr_text(row["dst"]), e.dst and _addr_text(e.dst))
    chk("ttl", int(row["ttl"]), e.ttl)
    chk("l3_len", int(row["l3_len"]), e.l3_len)
    chk("proto", int(row["proto"]), e.proto)
    chk("frag", int(row["frag"]), e.frag)
    if e.frag:
        chk("frag_id", int(row["frag_id"]), e.frag_id)
        chk("frag_off", int(row["frag_off"]), e.frag_off)
    if e.af == 4 and e.ihl is not None and st not in (BAD_IHL, FRAGMENT):
        chk("l4_off", int(row["l4_off"]), e.l2_len + e.ihl)
    if st != OK or e.status != OK:
        if st == FRAGMENT:
            chk("sport", int(row["sport"]), 0)
            chk("dport", int(row["dport"]), 0)
        return bad
    chk("sport", int(row["sport"]), e.sport)
    chk("dport", int(row["dport"]), e.dport)
    chk("tcp_flags", int(row["tcp_flags"]), e.tcp_flags)
    chk("sctp_chunk", int(row["sctp_chunk"]), e.sctp_chunk)
    chk("sctp_flags", int(row["sctp_flags"]), e.sctp_flags)
    chk("icmp_type", int(row["icmp_type"]), e.icmp_type)
    chk("icmp_code", int(row["icmp_code"]), e.icmp_code)
    chk("ic_proto", int(row["ic_proto"]), e.ic_proto)
    if e.ic_proto:
        chk("ic_src", _addr_text(row["ic_src"]), e.ic_src and _addr_text(e.ic_src))
        chk("ic_dst", _addr_text(row["ic_dst"]), e.ic_dst and _addr_text(e.ic_dst))
        chk("ic_sport", int(row["ic_sport"]), e.ic_sport)
        chk("ic_dport", int(row["ic_dport"]), e.ic_dport)
    else:
        chk("ic_l3_off", int(row["ic_l3_off"]), NO_OFFSET)
    return bad


def tshark_many(paths, fields=FIELDS, workers=4):
    """tshark_fields for many files at once (tshark's start-up dominates on small files)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as ex:
        return dict(zip(paths, ex.map(lambda p: tshark_fields(p, fields), paths)))


def compare_with_tshark(path, labels=None, max_report=20, ts=None):
    """Read ``path`` with the fast reader and with tshark (or take tshark's result ``ts``);
    return (mismatch lines, read result, tshark result). Every packet tshark shows must be one
    of ours, in order, field by field."""
    res = read_all(path)
    ts = ts if ts is not None else tshark_fields(path)
    tp = ts.packets
    problems = []
    if len(res.rows) != len(tp):
        problems.append(f"packet count: ours {len(res.rows)}, tshark {len(tp)} "
                        f"(reader error: {res.error}; tshark rc {ts.returncode}: {ts.stderr[-200:]})")
    # pcapng interfaces: tshark numbers them per section (frame.section_number,
    # frame.interface_id); ours must tell exactly the same interfaces apart, and agree with
    # tshark's numbers in the first section.
    if_map = {}
    for i, (row, fr) in enumerate(zip(res.rows, tp)):
        key = (int((fr["frame.section_number"] or ["1"])[0]), int((fr["frame.interface_id"] or ["-1"])[0]))
        if key[1] >= 0:
            ours = int(row["ifindex"])
            if if_map.setdefault(key, ours) != ours:
                problems.append(f"packet {i}: ifindex {ours}, but {if_map[key]} for the same interface {key}")
            if key[0] == 1 and ours != key[1]:
                problems.append(f"packet {i}: ifindex {ours}, tshark interface_id {key[1]} (first section)")
    if len(set(if_map.values())) != len(if_map):
        problems.append(f"different interfaces share an ifindex: {if_map}")
    for i, (row, fr) in enumerate(zip(res.rows, tp)):
        e, t = expect_from_tshark(fr)
        lab = labels[i] if labels is not None else None
        d = compare_row(row, e, lab)
        if d:
            problems.append(f"packet {i} [{':'.join(t.protos)}]: " + "; ".join(d))
        if len(problems) >= max_report:
            problems.append("...")
            break
    return problems, res, ts


# --------------------------------------------------------------------------------------------
# synthesized corpus (scapy; deterministic: every field that scapy would pick is given)

MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"
C4, S4, R4 = "192.0.2.10", "198.51.100.1", "203.0.113.7"
C6, S6, R6 = "2001:db8::10", "2001:db8:1::1", "2001:db8:ff::7"


@dataclass
class Synth:
    """One synthesized packet: bytes from the IP header on (or a whole Ethernet frame when
    ``frame`` is set), the intended status, and how much of it is captured."""
    name: str
    l3: bytes = None
    frame: bytes = None          # complete Ethernet frame (non-IP, VLAN, L2 truncation cases)
    status: int = OK
    caplen: int = None           # captured bytes of the frame (None = all)
    version: int = 0


def _scapy():
    from scapy.config import conf
    conf.verb = 0
    import scapy.all as s
    return s


def synth_corpus():
    """Every packet kind the conformance tests cover, as a list of Synth."""
    s = _scapy()
    IP, IPv6, TCP, UDP, ICMP, Raw = s.IP, s.IPv6, s.TCP, s.UDP, s.ICMP, s.Raw
    SCTP = s.SCTP
    out = []

    def add(name, pkt, status=OK, cut=None):
        b = bytes(pkt)
        out.append(Synth(name, l3=b, status=status, version=b[0] >> 4,
                         caplen=None if cut is None else cut))

    def v4(**kw):
        kw.setdefault("src", C4)
        kw.setdefault("dst", S4)
        kw.setdefault("id", 4321)
        return IP(**kw)

    def v6(**kw):
        kw.setdefault("src", C6)
        kw.setdefault("dst", S6)
        return IPv6(**kw)

    pay = Raw(b"payload-" * 4)
    for fl in range(256):
        add(f"tcp-flags-{fl:#04x}", v4(ttl=64) / TCP(sport=1024 + fl, dport=80, flags=fl, seq=1000 + fl, window=512) / pay)
    add("udp4", v4() / UDP(sport=5353, dport=53) / pay)
    add("tcp6", v6(hlim=33) / TCP(sport=40000, dport=443, flags="S", seq=7, window=1024))
    add("udp6", v6() / UDP(sport=5353, dport=53) / pay)
    add("ip4-options-tcp", v4(options=[s.IPOption_RR(routers=["10.1.2.3"]), s.IPOption_NOP()])
        / TCP(sport=1111, dport=80, flags="PA", seq=9, window=512) / pay)
    add("ip4-options-udp", v4(options=[s.IPOption_Router_Alert(), s.IPOption_NOP(), s.IPOption_NOP(),
                                       s.IPOption_NOP(), s.IPOption_NOP()]) / UDP(sport=2222, dport=53) / pay)
    # SCTP: chunk combinations the IPVS state machine distinguishes
    sc = lambda: SCTP(sport=5000, dport=3868, tag=0x01020304)
    add("sctp-init", v4() / sc() / s.SCTPChunkInit(init_tag=1, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1))
    add("sctp-cookie-echo+abort", v4() / sc() / s.SCTPChunkCookieEcho(cookie=b"abcde") / s.SCTPChunkAbort())
    add("sctp-cookie-ack+abort", v4() / sc() / s.SCTPChunkCookieAck() / s.SCTPChunkAbort())
    add("sctp-cookie-echo+data", v4() / sc() / s.SCTPChunkCookieEcho(cookie=b"abcdefgh")
        / s.SCTPChunkData(tsn=1, stream_id=0, stream_seq=0, proto_id=0, data=b"x"))
    add("sctp-data+abort", v4() / sc() / s.SCTPChunkData(tsn=2, stream_id=0, stream_seq=0, proto_id=0, data=b"yz")
        / s.SCTPChunkAbort())
    add("sctp-data+data", v4() / sc() / s.SCTPChunkData(tsn=3, stream_id=0, stream_seq=0, proto_id=0, data=b"a")
        / s.SCTPChunkData(tsn=4, stream_id=0, stream_seq=1, proto_id=0, data=b"b"))
    add("sctp-shutdown", v4() / sc() / s.SCTPChunkShutdown(cumul_tsn_ack=5))
    add("sctp6-cookie-echo+abort", v6() / sc() / s.SCTPChunkCookieEcho(cookie=b"0123456789") / s.SCTPChunkAbort())
    add("sctp6-heartbeat", v6() / sc() / s.SCTPChunkHeartbeatReq())
    # IPv4 fragments
    add("frag4-first-tcp", v4(flags="MF", frag=0, id=77) / TCP(sport=3333, dport=80, flags="A", seq=1, window=9) / pay)
    add("frag4-middle", v4(flags="MF", frag=185, id=77, proto=6) / pay, FRAGMENT)
    add("frag4-last", v4(flags=0, frag=370, id=77, proto=17) / pay, FRAGMENT)
    add("frag4-first-udp", v4(flags="MF", frag=0, id=78) / UDP(sport=4444, dport=53, len=400) / pay)
    add("ip4-df-tcp", v4(flags="DF") / TCP(sport=3334, dport=80, flags="S", seq=1, window=9))
    # IPv6 extension headers
    add("ip6-hbh-tcp", v6() / s.IPv6ExtHdrHopByHop() / TCP(sport=5001, dport=80, flags="S", seq=1, window=9))
    add("ip6-routing-udp", v6() / s.IPv6ExtHdrRouting(addresses=[R6]) / UDP(sport=5002, dport=53) / pay)
    add("ip6-dstopts-sctp", v6() / s.IPv6ExtHdrDestOpt() / sc() / s.SCTPChunkInit(init_tag=1, a_rwnd=1, n_out_streams=1,
                                                                                 n_in_streams=1, init_tsn=1))
    add("ip6-chain-tcp", v6() / s.IPv6ExtHdrHopByHop() / s.IPv6ExtHdrDestOpt() / s.IPv6ExtHdrRouting(addresses=[R6])
        / s.IPv6ExtHdrFragment(offset=0, m=1, id=0xABCDEF01) / s.IPv6ExtHdrDestOpt()
        / TCP(sport=5003, dport=80, flags="SA", seq=1, ack=2, window=9) / pay)
    add("frag6-first-udp", v6() / s.IPv6ExtHdrFragment(offset=0, m=1, id=99) / UDP(sport=5004, dport=53, len=300) / pay)
    add("frag6-nonfirst", v6() / s.IPv6ExtHdrFragment(offset=100, m=1, id=99, nh=17) / pay, FRAGMENT)
    add("frag6-last", v6() / s.IPv6ExtHdrHopByHop() / s.IPv6ExtHdrFragment(offset=200, m=0, id=99, nh=6) / pay, FRAGMENT)
    add("frag6-atomic-tcp", v6() / s.IPv6ExtHdrFragment(offset=0, m=0, id=5) / TCP(sport=5005, dport=80, flags="S", seq=1, window=9))
    add("ip6-ah-udp", v6() / s.AH(nh=17, payloadlen=4, spi=0x100, seq=1, icv=b"\x00" * 12) / UDP(sport=5006, dport=53) / pay)
    add("ip4-ah", v4() / s.AH(nh=6, payloadlen=4, spi=0x101, seq=1, icv=b"\x00" * 12) / TCP(sport=5007, dport=80, window=9))
    add("ip4-gre", v4(proto=47) / Raw(b"\x00\x00\x08\x00" + bytes(v4() / UDP(sport=1, dport=2))))
    add("ip6-nonext", v6(nh=59) / Raw(b"\x00" * 8))
    # ICMP
    add("icmp-echo", v4() / ICMP(type=8, code=0, id=1, seq=2) / pay)
    add("icmp-echo-reply", v4(src=S4, dst=C4) / ICMP(type=0, code=0, id=1, seq=2) / pay)

    def rfc792(inner):          # the embedded datagram: IP header + 8 bytes
        b = bytes(inner)
        return b[:((b[0] & 15) * 4) + 8]

    add("icmp-unreach-udp", v4(src=R4, dst=C4) / ICMP(type=3, code=3)
        / Raw(rfc792(v4(src=C4, dst=S4) / UDP(sport=33000, dport=53) / pay)))
    add("icmp-fragneeded-tcp", v4(src=R4, dst=S4) / ICMP(type=3, code=4, nexthopmtu=1400)
        / Raw(bytes(v4(src=S4, dst=C4) / TCP(sport=80, dport=40001, flags="A", seq=1, window=9) / pay)))
    # (SCTP embedded whole: tshark does not dissect an SCTP header cut to 8 bytes)
    add("icmp-timeexceeded-sctp", v4(src=R4, dst=C4) / ICMP(type=11, code=0)
        / Raw(bytes(v4(src=C4, dst=S4) / sc() / s.SCTPChunkInit(init_tag=1, a_rwnd=1, n_out_streams=1, n_in_streams=1, init_tsn=1))))
    add("icmp-sourcequench-tcp", v4(src=R4, dst=C4) / ICMP(type=4, code=0)
        / Raw(rfc792(v4(src=C4, dst=S4) / TCP(sport=40002, dport=80, flags="S", seq=1, window=9))))
    add("icmp-paramproblem-udp", v4(src=R4, dst=C4) / ICMP(type=12, code=0, ptr=9)
        / Raw(rfc792(v4(src=C4, dst=S4) / UDP(sport=40003, dport=53) / pay)))
    add("icmp-unreach-inner-options", v4(src=R4, dst=C4) / ICMP(type=3, code=1)
        / Raw(rfc792(v4(src=C4, dst=S4, options=[s.IPOption_NOP()] * 4) / TCP(sport=40004, dport=80, window=9))))
    add("icmp-redirect", v4(src=R4, dst=C4) / ICMP(type=5, code=1, gw="10.0.0.1")
        / Raw(rfc792(v4(src=C4, dst=S4) / UDP(sport=40005, dport=53) / pay)))
    add("icmp6-unreach-udp", v6(src=R6, dst=C6) / s.ICMPv6DestUnreach(code=4)
        / Raw(bytes(v6(src=C6, dst=S6) / UDP(sport=40006, dport=53) / pay)[:48]))
    add("icmp6-toobig-tcp", v6(src=R6, dst=S6) / s.ICMPv6PacketTooBig(mtu=1280)
        / Raw(bytes(v6(src=S6, dst=C6) / TCP(sport=443, dport=40007, flags="A", seq=1, window=9) / pay)))
    add("icmp6-timeexceeded-sctp", v6(src=R6, dst=C6) / s.ICMPv6TimeExceeded(code=0)
        / Raw(bytes(v6(src=C6, dst=S6) / sc() / s.SCTPChunkInit(init_tag=1, a_rwnd=1, n_out_streams=1, n_in_streams=1, init_tsn=1))))
    add("icmp6-paramproblem-frag-udp", v6(src=R6, dst=C6) / s.ICMPv6ParamProblem(code=0, ptr=6)
        / Raw(bytes(v6(src=C6, dst=S6) / s.IPv6ExtHdrFragment(offset=0, m=1, id=3) / UDP(sport=40008, dport=53) / pay)))
    add("icmp6-echo", v6() / s.ICMPv6EchoRequest(id=1, seq=1))
    # snaplen truncation of IP packets (cut counts bytes of the IP packet)
    tcp_pkt = v4() / TCP(sport=6001, dport=80, flags="PA", seq=1, window=9) / pay
    add("trunc-tcp-payload", tcp_pkt, OK, cut=20 + 20 + 5)
    add("trunc-tcp-header", tcp_pkt, TRUNC_L4, cut=20 + 10)
    add("trunc-tcp-options", v4() / TCP(sport=6002, dport=80, flags="S", seq=1, window=9,
                                        options=[("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)]),
        OK, cut=20 + 22)
    add("trunc-udp6-header", v6() / UDP(sport=6003, dport=53) / pay, TRUNC_L4, cut=40 + 4)
    add("trunc-ip4-fixed", tcp_pkt, TRUNC_L3, cut=12)
    add("trunc-ip6-fixed", v6() / UDP(sport=6004, dport=53) / pay, TRUNC_L3, cut=30)
    add("trunc-ip4-options", v4(options=[s.IPOption_RR(routers=["10.1.2.3", "10.1.2.4"])]) / UDP(sport=6005, dport=53),
        TRUNC_L3, cut=24)
    add("trunc-sctp-nochunk", v4() / sc() / s.SCTPChunkInit(init_tag=1, a_rwnd=1, n_out_streams=1, n_in_streams=1, init_tsn=1),
        TRUNC_L4, cut=20 + 12)
    add("trunc-icmp-inner-ip", v4(src=R4, dst=C4) / ICMP(type=3, code=3)
        / Raw(rfc792(v4(src=C4, dst=S4) / UDP(sport=6006, dport=53) / pay)), TRUNC_ICMP_INNER, cut=20 + 8 + 10)
    add("trunc-icmp-inner-ports", v4(src=R4, dst=C4) / ICMP(type=3, code=3)
        / Raw(rfc792(v4(src=C4, dst=S4) / TCP(sport=6007, dport=80, window=9))), TRUNC_ICMP_INNER, cut=20 + 8 + 20 + 2)
    add("trunc-icmp6-inner-ip", v6(src=R6, dst=C6) / s.ICMPv6DestUnreach(code=4)
        / Raw(bytes(v6(src=C6, dst=S6) / UDP(sport=6008, dport=53))), TRUNC_ICMP_INNER, cut=40 + 8 + 20)
    return out


def ethernet_frames():
    """Frames that only exist on Ethernet: non-IP, VLAN/QinQ, L2 truncation."""
    s = _scapy()
    E = dict(src=MAC_A, dst=MAC_B)
    ip = s.IP(src=C4, dst=S4, id=1) / s.TCP(sport=7001, dport=80, flags="S", seq=1, window=9)
    ip6 = s.IPv6(src=C6, dst=S6) / s.UDP(sport=7002, dport=53) / s.Raw(b"q" * 10)
    arp = s.ARP(op=1, hwsrc=MAC_A, psrc=C4, pdst=S4, hwdst="00:00:00:00:00:00")
    fr = [
        Synth("arp", frame=bytes(s.Ether(**E) / arp), status=NOT_IP),
        Synth("lldp-ethertype", frame=bytes(s.Ether(**E, type=0x88CC) / s.Raw(b"\x02\x07\x04" + b"\x00" * 20)), status=NOT_IP),
        Synth("llc-8023", frame=bytes(s.Ether(**E, type=38) / s.LLC(dsap=0x42, ssap=0x42, ctrl=3) / s.Raw(b"\x00" * 35)), status=NOT_IP),
        Synth("vlan-tcp", frame=bytes(s.Ether(**E) / s.Dot1Q(vlan=100, prio=3) / ip)),
        Synth("qinq-88a8-udp6", frame=bytes(s.Ether(**E, type=0x88A8) / s.Dot1AD(vlan=10) / s.Dot1Q(vlan=20) / ip6)),
        Synth("qinq-9100-tcp", frame=bytes(s.Ether(**E, type=0x9100) / s.Dot1Q(vlan=11) / s.Dot1Q(vlan=4094) / ip)),
        Synth("qinq-8100x2-udp6", frame=bytes(s.Ether(**E) / s.Dot1Q(vlan=1) / s.Dot1Q(vlan=2) / ip6)),
        Synth("vlan-arp", frame=bytes(s.Ether(**E) / s.Dot1Q(vlan=5) / arp), status=NOT_IP),
        Synth("trunc-eth-header", frame=bytes(s.Ether(**E) / ip), status=TRUNC_L2, caplen=10),
        Synth("trunc-vlan-tag", frame=bytes(s.Ether(**E) / s.Dot1Q(vlan=100) / ip), status=TRUNC_L2, caplen=16),
    ]
    return fr


AF_INET6_VALUES = (24, 28, 30)


def link_header(linktype, version, variant=0):
    """Link-layer header for an IP packet of ``version`` on ``linktype`` (variant picks the
    byte order / AF_INET6 value for BSD null, and is otherwise ignored)."""
    et = 0x0800 if version == 4 else 0x86DD
    if linktype == 1:
        return bytes.fromhex(MAC_B.replace(":", "")) + bytes.fromhex(MAC_A.replace(":", "")) + struct.pack(">H", et)
    if linktype in (0, 108):
        af = 2 if version == 4 else AF_INET6_VALUES[variant % 3]
        if linktype == 108:
            return struct.pack(">I", 2 if version == 4 else 24)
        return struct.pack("<I" if variant % 2 == 0 else ">I", af)
    if linktype in (101, 12, 14, 228, 229):
        return b""
    if linktype == 113:
        return struct.pack(">HHH8sH", 0, 1, 6, bytes.fromhex("020000000001") + b"\0\0", et)
    if linktype == 276:
        return struct.pack(">HHIHBB8s", et, 0, 3, 1, 0, 6, bytes.fromhex("020000000001") + b"\0\0")
    raise ValueError(linktype)


def frames_for(linktype, corpus, variant_base=0):
    """(frame bytes, caplen, status) for every corpus packet that fits the link type."""
    res = []
    for i, sp in enumerate(corpus):
        if sp.frame is not None:
            if linktype != 1:
                continue
            data, st = sp.frame, sp.status
            cut = sp.caplen
        else:
            if linktype == 228 and sp.version != 4 or linktype == 229 and sp.version != 6:
                continue
            hdr = link_header(linktype, sp.version, variant_base + i)
            data, st = hdr + sp.l3, sp.status
            cut = None if sp.caplen is None else len(hdr) + sp.caplen
        res.append((sp.name, data, len(data) if cut is None else cut, st))
    return res


BASE_NS = 1_700_000_000_123_456_789


def records_for(frames, step_ns=1_000_003_001, us=False, t0=BASE_NS):
    """pcap records (ts_ns, captured bytes, wirelen) with distinct, increasing timestamps."""
    recs = []
    for i, (_, data, cap, _) in enumerate(frames):
        ts = t0 + i * step_ns
        if us:
            ts -= ts % 1000
        recs.append((ts, data[:cap], len(data)))
    return recs


def synth_pcapng(frames_by_lt):
    """Two sections (little then big endian), one interface per link type with different
    if_tsresol / if_tsoffset, enhanced / obsolete / simple packet blocks interleaved with
    statistics, name-resolution and custom blocks. Returns (Built, labels)."""
    plan = [  # (linktype, tsresol, tsoffset)
        [(1, None, 0), (101, 9, 0), (276, 0x88, 0), (0, 3, 0), (113, 10, 1_600_000_000)],
        [(1, 9, 0), (108, 6, 0), (228, 0x89, 0), (229, 9, 1_000_000_000), (12, 4, 0), (14, 8, 0)],
    ]
    sections, labels = [], []
    t = BASE_NS
    for si, ifs in enumerate(plan):
        ifaces = [Iface(lt, tsresol=r, tsoffset=o, name=f"if{si}{k}") for k, (lt, r, o) in enumerate(ifs)]
        blocks = []
        if si == 1:
            # a simple packet block uses interface 0 and has no timestamp
            for name, data, cap, st in frames_by_lt[1][:6]:
                blocks.append(("spb", data[:cap], len(data)))
                labels.append(st)
        queues = [list(frames_by_lt[lt]) for lt, _, _ in ifs]
        n = 0
        while any(queues):
            for k, q in enumerate(queues):
                if not q:
                    continue
                name, data, cap, st = q.pop(0)
                ups = tsresol_units_per_second(ifaces[k].tsresol)
                unit = 10**9 // ups if ups <= 10**9 else 1       # ns per timestamp unit
                t += 1_000_003_001
                ts = t - t % unit
                kind = "pb" if (n % 7 == 3) else "epb"
                blocks.append((kind, k, ts, data[:cap], len(data)))
                labels.append(st)
                n += 1
                if n % 50 == 10:
                    blocks.append(("isb", k))
                if n % 50 == 20:
                    blocks.append(("nrb",))
                if n % 50 == 30:
                    blocks.append(("custom",))
        sections.append(dict(big_endian=bool(si), ifaces=ifaces, blocks=blocks))
    return pcapng_build(sections), labels


# --------------------------------------------------------------------------------------------
# guard pages: the parser's C entry point on packets placed flush against PROT_NONE pages

class GuardedParser:
    """Runs ``parse_packet`` (taken from the parse module's exported C API) on a descriptor
    whose data sits right before an inaccessible page (an over-read faults) or right after one
    (an under-read faults). Use it in a child process: a fault kills the process."""

    def __init__(self):
        import ctypes
        import mmap
        import ipvsflow.io.parse as parse
        from ipvsflow.io import PKT_DTYPE
        api = ctypes.pythonapi
        api.PyCapsule_GetName.restype = ctypes.c_char_p
        api.PyCapsule_GetName.argtypes = [ctypes.py_object]
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        cap = parse.__pyx_capi__["parse_packet"]
        fn = api.PyCapsule_GetPointer(cap, api.PyCapsule_GetName(cap))
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(fn)
        self.page = mmap.PAGESIZE
        self._mem = mmap.mmap(-1, 4 * self.page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._base = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for pg in (0, 3):
            if libc.mprotect(self._base + pg * self.page, self.page, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect failed")
        self.desc = np.zeros(1, dtype=PKT_DTYPE)
        self._dptr = self.desc.ctypes.data

    def parse(self, data, linktype, wirelen=None, at_end=True):
        n = len(data)
        if n > 2 * self.page:
            raise ValueError("packet larger than the guarded area")
        start = (3 * self.page - n) if at_end else self.page
        self._mem[start:start + n] = data
        d = self.desc
        d.fill(0)
        d["data"] = self._base + start
        d["caplen"] = n
        d["wirelen"] = len(data) if wirelen is None else wirelen
        d["linktype"] = linktype
        self._fn(self._dptr)
        return d[0].copy()


def invariant_problems(row):
    """Consistency rules every descriptor must satisfy whatever the input (empty = fine)."""
    bad = []
    st, n = int(row["status"]), int(row["caplen"])
    af = int(row["af"])
    if not 0 <= st < len(STATUS_NAMES):
        return [f"status {st} is not a ParseStatus"]
    if af not in (0, 4, 6):
        bad.append(f"af {af}")
    if af == 0 and st in (OK, FRAGMENT, BAD_IHL, BAD_IP_LEN, TRUNC_EXTHDR, TRUNC_L4, BAD_L4_HDR,
                          TRUNC_ICMP_INNER, BAD_ICMP_INNER):
        bad.append(f"{STATUS_NAMES[st]} without an IP header")
    if int(row["l2_len"]) > n:
        bad.append(f"l2_len {int(row['l2_len'])} > caplen {n}")
    l3, l4, ic = int(row["l3_off"]), int(row["l4_off"]), int(row["ic_l3_off"])
    if st in (OK, FRAGMENT, TRUNC_L4, BAD_L4_HDR, TRUNC_ICMP_INNER, BAD_ICMP_INNER, TRUNC_EXTHDR):
        if l3 == NO_OFFSET or l3 + (20 if af == 4 else 40) > n:
            bad.append(f"{STATUS_NAMES[st]} but the IP header at {l3} is not within caplen {n}")
    if st in (OK, BAD_ICMP_INNER, TRUNC_ICMP_INNER) and l4 != NO_OFFSET:
        need = {6: 20, 17: 8, 132: 12, 1: 8, 58: 8}.get(int(row["proto"]), 0)
        if l4 + need > n:
            bad.append(f"{STATUS_NAMES[st]} but the L4 header ({need} bytes at {l4}) passes caplen {n}")
    if ic != NO_OFFSET and ic >= n:
        bad.append(f"ic_l3_off {ic} >= caplen {n}")
    if st == FRAGMENT and not int(row["frag"]) & FRAG_NONFIRST:
        bad.append("FRAGMENT without FRAG_NONFIRST")
    if st != FRAGMENT and st == OK and int(row["frag"]) & FRAG_NONFIRST:
        bad.append("non-first fragment reported OK")
    if int(row["vlan_count"]) > 2:
        bad.append(f"vlan_count {int(row['vlan_count'])}")
    if int(row["proto"]) not in (6, 17, 132) and st == OK and (int(row["sport"]) or int(row["dport"])):
        bad.append(f"ports on protocol {int(row['proto'])}")
    return bad


# --------------------------------------------------------------------------------------------
# packet structure from tshark's PDML (an independent account of where each header starts)

@dataclass
class Layout:
    linktype: int
    size: int
    l2: int = 0                   # offset of the IP header
    version: int = 0
    ihl: int = 0                  # IPv4 header length
    ext: list = field(default_factory=list)    # IPv6 extension headers (pos, size), outer chain
    nonfirst: bool = False
    l4: str = None                # tcp / udp / sctp / icmp / icmpv6 / None
    l4_pos: int = 0
    l4_len: int = 0               # bytes from l4_pos to the end of the IP packet
    sctp_next_chunk: int = None   # offset of the second chunk (relative to l4_pos)
    first_chunk: int = None
    icmp_error: bool = False
    inner_version: int = 0
    inner_pos: int = 0
    inner_ihl: int = 0
    inner_ext: list = field(default_factory=list)
    inner_ports_pos: int = None   # where the embedded L4 ports start (None: no ports)


def pdml_layouts(path, linktypes):
    """Layout of every packet of ``path`` (complete, untruncated packets) from ``tshark -T pdml``."""
    import xml.etree.ElementTree as ET
    res = subprocess.run([TSHARK, "-n", "-r", str(path), *TSHARK_PREFS, "-T", "pdml"],
                         capture_output=True, text=True, timeout=120)
    root = ET.fromstring(res.stdout)
    out = []
    for pk, lt in zip(root.findall("packet"), linktypes):
        protos = [p for p in pk.iter("proto") if p.get("name") not in ("geninfo", "frame")]
        fields = {}
        for f in pk.iter("field"):
            fields.setdefault(f.get("name"), []).append(f.get("show"))
        size = int(pk.find("proto[@name='frame']").get("size"))
        lay = Layout(lt, size)
        names = [p.get("name") for p in protos]
        pos = lambda i: int(protos[i].get("pos"))
        sz = lambda i: int(protos[i].get("size"))
        ipi = next((i for i, nm in enumerate(names) if nm in ("ip", "ipv6")), None)
        if ipi is None:
            out.append(lay)
            continue
        lay.l2, lay.version = pos(ipi), 4 if names[ipi] == "ip" else 6
        if lay.version == 4:
            lay.ihl = sz(ipi)
            iplen = int(fields["ip.len"][0])
            lay.nonfirst = int(fields["ip.frag_offset"][0]) != 0
        else:
            iplen = 40 + int(fields["ipv6.plen"][0])
        j = ipi + 1
        while j < len(names) and names[j] in IPV6_EXT_PROTOS and lay.version == 6:
            lay.ext.append((pos(j), sz(j)))
            if names[j] == "ipv6.fraghdr" and int(fields["ipv6.fraghdr.offset"][0]) != 0:
                lay.nonfirst = True
            j += 1
        if lay.nonfirst or j >= len(names):
            out.append(lay)
            continue
        lay.l4, lay.l4_pos = names[j], pos(j)
        lay.l4_len = lay.l2 + iplen - lay.l4_pos
        if lay.l4 == "sctp":
            lens = [int(x) for x in fields.get("sctp.chunk_length", [])]
            types = [int(x) for x in fields.get("sctp.chunk_type", [])]
            lay.first_chunk = types[0] if types else None
            if len(lens) > 1:
                lay.sctp_next_chunk = 12 + ((lens[0] + 3) & ~3)
        if lay.l4 in ("icmp", "icmpv6"):
            t = int(fields[lay.l4 + ".type"][0])
            lay.icmp_error = t in (ICMP4_ERRORS if lay.l4 == "icmp" else ICMP6_ERRORS)
            if lay.icmp_error and j + 1 < len(names) and names[j + 1] in ("ip", "ipv6"):
                k = j + 1
                lay.inner_version = 4 if names[k] == "ip" else 6
                lay.inner_pos = pos(k)
                if lay.inner_version == 4:
                    lay.inner_ihl = sz(k)
                    iproto = int(fields["ip.proto"][1])
                    ipos = lay.inner_pos + lay.inner_ihl
                    inner_nonfirst = int(fields["ip.frag_offset"][1]) != 0
                else:
                    iproto = int(fields["ipv6.nxt"][1])
                    ipos = lay.inner_pos + 40
                    inner_nonfirst = False
                    k += 1
                    while k < len(names) and names[k] in IPV6_EXT_PROTOS:
                        lay.inner_ext.append((pos(k), sz(k)))
                        ipos = pos(k) + sz(k)
                        k += 1
                    if k < len(names) and names[k] in ("tcp", "udp", "sctp"):
                        iproto = {"tcp": 6, "udp": 17, "sctp": 132}[names[k]]
                if iproto in (6, 17, 132) and not inner_nonfirst:
                    lay.inner_ports_pos = ipos
        out.append(lay)
    return out


def expected_prefix_status(lay, n):
    """The status a packet with this layout must get when only its first ``n`` bytes are
    captured (the wire length stays the full size)."""
    if lay.version == 0:
        raise ValueError("only IP packets")
    if n < lay.l2:
        return TRUNC_L2
    if n <= lay.l2 or n < lay.l2 + (20 if lay.version == 4 else 40):
        return TRUNC_L3
    if lay.version == 4 and n < lay.l2 + lay.ihl:
        return TRUNC_L3
    for p, s in lay.ext:
        if n < p + max(s, 8):
            return TRUNC_EXTHDR
    if lay.nonfirst:
        return FRAGMENT
    need = {"tcp": 20, "udp": 8, "sctp": 12, "icmp": 8, "icmpv6": 8}.get(lay.l4, 0)
    if n < lay.l4_pos + need:
        return TRUNC_L4
    if lay.l4 == "sctp" and lay.l4_len >= 16 and n < lay.l4_pos + 16:
        return TRUNC_L4
    if lay.icmp_error:
        q = lay.l4_pos + 8
        if n <= q or n < q + (20 if lay.inner_version == 4 else 40):
            return TRUNC_ICMP_INNER
        for p, s in lay.inner_ext:
            if n < p + max(s, 8):
                return TRUNC_ICMP_INNER
        if lay.inner_ports_pos is not None and n < lay.inner_ports_pos + 4:
            return TRUNC_ICMP_INNER
    return OK


def _row_dict(row):
    return {k: (row[k].tobytes().hex() if row[k].shape else int(row[k])) for k in row.dtype.names}


def _child_sweep(spec_path, out_path):
    """Child-process side of the truncation sweep: every prefix of every packet, data flush
    against a guard page at the end and then at the start."""
    import json
    import sys
    spec = json.load(open(spec_path))
    gp = GuardedParser()
    results = []
    for k, item in enumerate(spec):
        data, lt = bytes.fromhex(item["hex"]), item["linktype"]
        per = []
        for n in range(len(data) + 1):
            sys.stderr.write(f"packet {k} ({item['name']}) caplen {n}\n")
            sys.stderr.flush()
            a = gp.parse(data[:n], lt, wirelen=len(data), at_end=True)
            b = gp.parse(data[:n], lt, wirelen=len(data), at_end=False)
            ra, rb = _row_dict(a), _row_dict(b)
            ra.pop("data")
            rb.pop("data")
            if ra != rb:
                raise AssertionError(f"{item['name']} caplen {n}: result depends on where the packet sits")
            per.append(ra)
        results.append(per)
    json.dump(results, open(out_path, "w"))


def _child_fuzz(seed, count, spec_path, out_path):
    """Child-process side of the mutation fuzz: mutated and random frames on random link
    types, each parsed against both guard pages; records invariant violations."""
    import json
    import random
    import sys
    rng = random.Random(seed)
    spec = json.load(open(spec_path))
    seeds = [(bytes.fromhex(s["hex"]), s["linktype"]) for s in spec]
    lts = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 2, 105, 127, 0xFFFF]
    gp = GuardedParser()
    problems = []
    for i in range(count):
        r = rng.random()
        if r < 0.6:
            data, lt = seeds[rng.randrange(len(seeds))]
            b = bytearray(data)
            for _ in range(rng.randint(1, 6)):
                if not b:
                    break
                op = rng.random()
                p = rng.randrange(len(b))
                if op < 0.6:
                    b[p] = rng.randrange(256)
                elif op < 0.8:
                    b[p] ^= 1 << rng.randrange(8)
                else:
                    del b[p:]
            data = bytes(b)
            if rng.random() < 0.2:
                lt = rng.choice(lts)
        else:
            lt = rng.choice(lts)
            data = rng.randbytes(rng.randint(0, 120))
            if rng.random() < 0.5 and len(data) > 20:
                ipver = rng.choice((0x45, 0x46, 0x4F, 0x60))
                off = {1: 14, 113: 16, 276: 20, 0: 4, 108: 4}.get(lt, 0)
                if off < len(data):
                    data = data[:off] + bytes([ipver]) + data[off + 1:]
        wl = len(data) + (rng.randint(0, 2000) if rng.random() < 0.5 else 0)
        sys.stderr.write(f"case {i} linktype {lt} data {data.hex()}\n")
        sys.stderr.flush()
        for at_end in (True, False):
            row = gp.parse(data, lt, wirelen=wl, at_end=at_end)
            bad = invariant_problems(row)
            if bad:
                problems.append({"case": i, "linktype": lt, "hex": data.hex(), "wirelen": wl, "problems": bad})
    json.dump(problems, open(out_path, "w"))


def run_child(func, *args, timeout=120):
    """Run one of the _child_* functions in a fresh interpreter; returns (rc, last stderr line)."""
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    code = (f"import sys; sys.path[:0] = [{here!r}, {repo!r}]; import io_helpers; "
            f"io_helpers.{func}(*{list(args)!r})")
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                         cwd=repo, env=env)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    last = "\n".join(lines[-12:])
    return res.returncode, last
