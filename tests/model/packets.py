"""Packets for the model: from a capture file (dpkt, independent of ipvsflow.io), from
``ipvsflow.io`` batch rows, and raw frames built from records (for feeding the engine the same
packets the model sees)."""
from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Iterable

from ipvsflow.config import PROTO_SCTP, PROTO_TCP, PROTO_UDP

from .ipvs_model import Packet, norm_addr

# ---------------------------------------------------------------------------------------------
# pcap / pcapng through dpkt


def _l3(buf: bytes):
    """(version, ip object) for a raw IP payload, or (None, None)."""
    import dpkt
    if not buf:
        return None, None
    version = buf[0] >> 4
    try:
        if version == 4:
            return 4, dpkt.ip.IP(buf)
        if version == 6:
            return 6, dpkt.ip6.IP6(buf)
    except (dpkt.UnpackError, struct.error, IndexError):
        return version, None
    return version, None


def _ip_payload_of_frame(linktype: int, frame: bytes):
    """The IP bytes of a frame, or None when it carries no IP."""
    if linktype == 1:                                   # Ethernet, with up to two VLAN tags
        if len(frame) < 14:
            return None
        off, etype = 12, struct.unpack_from("!H", frame, 12)[0]
        off += 2
        while etype in (0x8100, 0x88A8, 0x9100):
            if len(frame) < off + 4:
                return None
            etype = struct.unpack_from("!H", frame, off + 2)[0]
            off += 4
        return frame[off:] if etype in (0x0800, 0x86DD) else None
    if linktype in (101, 12, 14, 228, 229):             # raw IP
        return frame
    if linktype == 113:                                 # Linux cooked (SLL)
        if len(frame) < 16:
            return None
        etype = struct.unpack_from("!H", frame, 14)[0]
        return frame[16:] if etype in (0x0800, 0x86DD) else None
    if linktype == 276:                                 # SLL2
        if len(frame) < 20:
            return None
        etype = struct.unpack_from("!H", frame, 0)[0]
        return frame[20:] if etype in (0x0800, 0x86DD) else None
    if linktype in (0, 108):                            # BSD loopback
        return frame[4:]
    return None


def packet_from_frame(ts_ns: int, frame: bytes, linktype: int = 1) -> Packet:
    """Decode one captured frame into a model Packet (status other than "ok" when unusable)."""
    import dpkt
    ipb = _ip_payload_of_frame(linktype, frame)
    if ipb is None:
        return Packet(ts_ns=ts_ns, status="not_ip", length=len(frame))
    version, ip = _l3(ipb)
    if ip is None:
        return Packet(ts_ns=ts_ns, status="bad_ip", length=len(frame))
    if version == 4:
        af, src, dst, proto = 4, socket.inet_ntop(socket.AF_INET, ip.src), socket.inet_ntop(socket.AF_INET, ip.dst), ip.p
        if ip.offset:                      # fragment offset (bytes) of a non-first fragment
            return Packet(ts_ns=ts_ns, af=af, proto=proto, src=src, dst=dst, status="fragment",
                          length=len(frame))
        l4 = ip.data
    else:
        af, src, dst = 6, socket.inet_ntop(socket.AF_INET6, ip.src), socket.inet_ntop(socket.AF_INET6, ip.dst)
        proto = ip.p
        l4 = ip.data
        # dpkt leaves extension headers in ip.extension_hdrs and sets p to the upper protocol
        frag = getattr(ip, "extension_hdrs", {}).get(44) if hasattr(ip, "extension_hdrs") else None
        if frag is not None and getattr(frag, "frag_off", 0) >> 3:
            return Packet(ts_ns=ts_ns, af=af, proto=proto, src=src, dst=dst, status="fragment",
                          length=len(frame))
    pkt = Packet(ts_ns=ts_ns, af=af, proto=proto, src=src, dst=dst, length=len(frame))
    if (af, proto) in ((4, 1), (6, 58)):
        raw = ipb[(ipb[0] & 0x0F) * 4:] if af == 4 else (ipb[40:] if ipb[6] == 58 else bytes(l4))
        _icmp_fields(pkt, raw)
        return pkt
    if isinstance(l4, (bytes, bytearray)):
        # dpkt could not decode the L4 header
        if proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
            pkt.status = "bad_l4"
        return pkt
    if proto == PROTO_TCP:
        pkt.sport, pkt.dport, pkt.tcp_flags = l4.sport, l4.dport, l4.flags & 0xFF
    elif proto == PROTO_UDP:
        pkt.sport, pkt.dport = l4.sport, l4.dport
    elif proto == PROTO_SCTP:
        pkt.sport, pkt.dport = l4.sport, l4.dport
        chunks = list(l4.chunks)
        if not chunks:
            pkt.status = "bad_l4"
            return pkt
        pkt.sctp_chunk = chunks[0].type
        if pkt.sctp_chunk in (10, 11) and len(chunks) > 1 and chunks[1].type == 6:
            pkt.sctp_abort_after_cookie = True
    return pkt


def _icmp_fields(pkt: Packet, raw: bytes):
    """Type, code and the embedded header (addresses, protocol, the first 4 bytes of its L4
    header: the ports) of an ICMP/ICMPv6 message; status "truncated" when an error's embedded
    header is cut short."""
    if len(raw) < 8:
        pkt.status = "truncated"
        return
    pkt.icmp_type, pkt.icmp_code = raw[0], raw[1]
    if not pkt.is_icmp_error():
        return
    inner = raw[8:]
    if pkt.af == 4:
        if len(inner) < 20 or inner[0] >> 4 != 4:
            pkt.status = "truncated"
            return
        hl = (inner[0] & 0x0F) * 4
        proto, src, dst = inner[9], inner[12:16], inner[16:20]
        ports = inner[hl:hl + 4]
    else:
        if len(inner) < 40 or inner[0] >> 4 != 6:
            pkt.status = "truncated"
            return
        proto, src, dst = inner[6], inner[8:24], inner[24:40]
        ports = inner[40:44]
    pkt.ic_proto = proto
    pkt.ic_src, pkt.ic_dst = norm_addr(bytes(src)), norm_addr(bytes(dst))
    if proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
        if len(ports) < 4:
            pkt.status = "truncated"
            return
        pkt.ic_sport, pkt.ic_dport = struct.unpack("!HH", ports)


def read_pcap(path) -> list[Packet]:
    """Every record of a pcap or pcapng file as a model Packet, in file order."""
    import dpkt
    out = []
    with open(path, "rb") as f:
        reader = dpkt.pcap.UniversalReader(f)
        linktype = reader.datalink()
        nano = getattr(reader, "_divisor", None)
        for ts, frame in reader:
            # ts is a float (or Decimal for ns pcaps); keep ns precision as far as it goes
            ts_ns = int(round(float(ts) * 1e9)) if nano is None else int(ts * 1_000_000_000)
            out.append(packet_from_frame(ts_ns, bytes(frame), linktype))
    return out


# ---------------------------------------------------------------------------------------------
# ipvsflow.io batch rows

_STATUS_NAMES = {0: "ok", 1: "fragment"}


def packets_from_rows(rows) -> list[Packet]:
    """Model Packets from ``PacketBatch.to_numpy()`` rows (ts_ns, status, af, proto, src/dst as
    16 bytes IPv4-mapped, sport, dport, tcp_flags, sctp_chunk, wirelen)."""
    out = []
    names = rows.dtype.names
    for r in rows:
        status = int(r["status"])
        af = int(r["af"])
        src = dst = ""
        if af in (4, 6):
            src, dst = norm_addr(bytes(r["src"])), norm_addr(bytes(r["dst"]))
        chunk = int(r["sctp_chunk"])
        pkt = Packet(ts_ns=int(r["ts_ns"]), af=af, proto=int(r["proto"]), src=src, sport=int(r["sport"]),
                     dst=dst, dport=int(r["dport"]), tcp_flags=int(r["tcp_flags"]),
                     sctp_chunk=None if chunk == 0xFF else chunk,
                     status=_STATUS_NAMES.get(status, f"status_{status}"), length=int(r["wirelen"]))
        if "sctp_flags" in names:
            pkt.sctp_abort_after_cookie = bool(int(r["sctp_flags"]) & 1)
        if "fwmark" in names:
            pkt.fwmark = int(r["fwmark"])
        if pkt.proto in (1, 58) and "icmp_type" in names:
            pkt.icmp_type, pkt.icmp_code = int(r["icmp_type"]), int(r["icmp_code"])
            pkt.ic_proto = int(r["ic_proto"])
            if pkt.ic_proto:
                pkt.ic_src, pkt.ic_dst = norm_addr(bytes(r["ic_src"])), norm_addr(bytes(r["ic_dst"]))
                pkt.ic_sport, pkt.ic_dport = int(r["ic_sport"]), int(r["ic_dport"])
        out.append(pkt)
    return out


# ---------------------------------------------------------------------------------------------
# Frames from records (Ethernet / IPv4 or IPv6 / TCP, UDP or SCTP; checksums left zero)

def _addr_bytes(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def _ip_header(af: int, proto: int, src: str, dst: str, l4_len: int) -> bytes:
    if af == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, 1, 0, 64, proto, 0,
                           _addr_bytes(src), _addr_bytes(dst))
    return struct.pack("!IHBB16s16s", 6 << 28, l4_len, proto, 64, _addr_bytes(src), _addr_bytes(dst))


def build_frame(pkt: Packet, payload: bytes = b"") -> bytes:
    if pkt.proto in (1, 58):
        # an ICMP error quoting the embedded IP header and the first 8 bytes of its L4 header
        # (ports, then sequence number / length+checksum / verification tag)
        quoted = b""
        if pkt.ic_proto:
            inner_l4 = struct.pack("!HHI", pkt.ic_sport, pkt.ic_dport, 0)
            inner_len = 20 if pkt.ic_proto == PROTO_TCP else len(inner_l4)
            quoted = _ip_header(pkt.af, pkt.ic_proto, pkt.ic_src, pkt.ic_dst, inner_len) + inner_l4
        l4 = struct.pack("!BBHI", pkt.icmp_type, pkt.icmp_code, 0, 0) + quoted
    elif pkt.proto == PROTO_TCP:
        l4 = struct.pack("!HHIIBBHHH", pkt.sport, pkt.dport, 1000, 0, 5 << 4, pkt.tcp_flags, 65535, 0, 0)
    elif pkt.proto == PROTO_UDP:
        l4 = struct.pack("!HHHH", pkt.sport, pkt.dport, 8 + len(payload), 0)
    elif pkt.proto == PROTO_SCTP:
        chunk = pkt.sctp_chunk if pkt.sctp_chunk is not None else 0
        chunks = struct.pack("!BBH", chunk, 0, 4)
        if pkt.sctp_abort_after_cookie:
            chunks += struct.pack("!BBH", 6, 0, 4)
        l4 = struct.pack("!HHII", pkt.sport, pkt.dport, 0, 0) + chunks
    else:
        l4 = b""
    l4 += payload
    if pkt.af == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, pkt.proto, 0,
                         _addr_bytes(pkt.src), _addr_bytes(pkt.dst))
        etype = 0x0800
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), pkt.proto, 64,
                         _addr_bytes(pkt.src), _addr_bytes(pkt.dst))
        etype = 0x86DD
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", etype)
    return eth + ip + l4


def frames(packets: Iterable[Packet]) -> list[tuple[int, bytes]]:
    """[(ts_ns, frame bytes)] for ``PacketBatch.from_packets``."""
    return [(p.ts_ns, build_frame(p)) for p in packets]
