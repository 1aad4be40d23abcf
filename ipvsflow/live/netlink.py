"""The director's kernel routing and neighbour tables, read over rtnetlink.

Routes (the main table) and neighbours (ARP / NDP entries with a link-layer address) are dumped
with RTM_GETROUTE / RTM_GETNEIGH, VLAN interfaces (their parent and VLAN id) with RTM_GETLINK; ``route_get`` asks the kernel which route it would use for one
address. A missing neighbour is resolved the way the kernel's own forwarding would: by making
the kernel send to the address (a zero-length UDP datagram to the discard port triggers ARP or
neighbour solicitation), then re-reading the table. None of this needs privileges.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from typing import Iterable, Optional

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28
RTM_GETNEIGH = 30
RTM_NEWLINK = 16
RTM_GETLINK = 18
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_VLAN_ID = 1
IFLA_VLAN_PROTOCOL = 5
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15
NDA_DST = 1
NDA_LLADDR = 2
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTN_REJECT = {6: "blackhole", 7: "unreachable", 8: "prohibit"}
NUD_INCOMPLETE = 0x01
NUD_FAILED = 0x20
NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80   # reachable stale delay probe noarp permanent

_HDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BBHiHBB")
_IFINFO = struct.Struct("=BBHiII")


class NetlinkError(OSError):
    pass


def _attrs(buf: bytes, off: int, end: int):
    while off + 4 <= end:
        ln, ty = struct.unpack_from("=HH", buf, off)
        if ln < 4:
            break
        yield ty & 0x3fff, buf[off + 4:off + ln]
        off += (ln + 3) & ~3


def _request(msg_type: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
    """Send one rtnetlink request; return the (type, payload) of every answer message."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        s.bind((0, 0))
        seq = int(time.monotonic_ns() & 0x7fffffff)
        s.send(_HDR.pack(_HDR.size + len(body), msg_type, flags | NLM_F_REQUEST, seq, 0) + body)
        out = []
        while True:
            data = s.recv(1 << 20)
            off = 0
            while off + _HDR.size <= len(data):
                ln, ty, fl, sq, pid = _HDR.unpack_from(data, off)
                if ln < _HDR.size:
                    return out
                payload = data[off + _HDR.size:off + ln]
                off += (ln + 3) & ~3
                if sq != seq:
                    continue
                if ty == NLMSG_DONE:
                    return out
                if ty == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload, 0)[0]
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    return out
                out.append((ty, payload))
                if not flags & NLM_F_DUMP:
                    return out
    finally:
        s.close()


def _addr_text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


def _parse_route(payload: bytes) -> Optional[dict]:
    fam, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(payload, 0)
    if fam not in (socket.AF_INET, socket.AF_INET6):
        return None
    r = {"family": fam, "plen": dst_len, "table": table, "type": rtype, "dst": None,
         "gateway": None, "ifindex": 0, "metric": 0, "prefsrc": None}
    for ty, val in _attrs(payload, _RTMSG.size, len(payload)):
        if ty == RTA_DST:
            r["dst"] = _addr_text(fam, val)
        elif ty == RTA_GATEWAY:
            r["gateway"] = _addr_text(fam, val)
        elif ty == RTA_OIF:
            r["ifindex"] = struct.unpack("=i", val[:4])[0]
        elif ty == RTA_PRIORITY:
            r["metric"] = struct.unpack("=I", val[:4])[0]
        elif ty == RTA_PREFSRC:
            r["prefsrc"] = _addr_text(fam, val)
        elif ty == RTA_TABLE:
            r["table"] = struct.unpack("=I", val[:4])[0]
        elif ty == RTA_MULTIPATH and len(val) >= 8:
            # struct rtnexthop: len u16, flags u8, hops u8, ifindex i32, then attributes;
            # the first next hop is used
            nh_len, _fl, _hops, ifx = struct.unpack_from("=HBBi", val, 0)
            r["ifindex"] = ifx
            for t2, v2 in _attrs(val, 8, min(nh_len, len(val))):
                if t2 == RTA_GATEWAY:
                    r["gateway"] = _addr_text(fam, v2)
    if r["dst"] is None:
        r["dst"] = "0.0.0.0" if fam == socket.AF_INET else "::"
    r["kind"] = "unicast" if rtype == RTN_UNICAST else RTN_REJECT.get(rtype, "other")
    return r


def routes() -> list[dict]:
    """Unicast and reject routes of the main table, both families: dicts with ``dst``,
    ``plen``, ``gateway``, ``ifindex``, ``metric``, ``kind``."""
    out = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        body = _RTMSG.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0)
        for ty, payload in _request(RTM_GETROUTE, NLM_F_DUMP, body):
            if ty != RTM_NEWROUTE:
                continue
            r = _parse_route(payload)
            if r is None or r["table"] != RT_TABLE_MAIN:
                continue
            if r["kind"] == "other":
                continue
            out.append(r)
    return out


def route_get(addr: str) -> dict:
    """The kernel's route for one destination (RTM_GETROUTE): dict as in routes(); raises
    NetlinkError when the kernel has none."""
    ip = ipaddress.ip_address(addr)
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    raw = ip.packed
    attr = struct.pack("=HH", 4 + len(raw), RTA_DST) + raw
    body = _RTMSG.pack(fam, 8 * len(raw), 0, 0, 0, 0, 0, 0, 0) + attr
    for ty, payload in _request(RTM_GETROUTE, 0, body):
        if ty == RTM_NEWROUTE:
            r = _parse_route(payload)
            if r is not None:
                return r
    raise NetlinkError(0, f"no route to {addr}")


def neighbours() -> list[dict]:
    """Neighbour entries (both families): dicts with ``addr``, ``ifindex``, ``mac`` (text or
    None), ``state`` (NUD_* bits) and ``usable``."""
    out = []
    body = _NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0)
    for ty, payload in _request(RTM_GETNEIGH, NLM_F_DUMP, body):
        if ty != RTM_NEWNEIGH:
            continue
        fam, _p1, _p2, ifindex, state, _flags, _type = _NDMSG.unpack_from(payload, 0)
        if fam not in (socket.AF_INET, socket.AF_INET6):
            continue
        addr = mac = None
        for aty, val in _attrs(payload, _NDMSG.size, len(payload)):
            if aty == NDA_DST:
                addr = _addr_text(fam, val)
            elif aty == NDA_LLADDR and len(val) == 6:
                mac = ":".join(f"{b:02x}" for b in val)
        if addr is None:
            continue
        out.append({"addr": addr, "ifindex": ifindex, "mac": mac, "state": state,
                    "usable": bool(state & NUD_USABLE) and mac is not None
                              and mac != "00:00:00:00:00:00"})
    return out


def usable_neighbours() -> list[tuple[str, int, str]]:
    """(address, ifindex, mac) of every neighbour with a usable link-layer address."""
    return [(n["addr"], n["ifindex"], n["mac"]) for n in neighbours() if n["usable"]]


def trigger_resolution(addr: str, ifindex: int = 0) -> None:
    """Make the kernel resolve ``addr``'s link-layer address: send it an empty UDP datagram
    (discard port), as any local sender would. Errors (no route, ...) are ignored here; the
    caller sees the address stay unresolved."""
    ip = ipaddress.ip_address(addr)
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            if fam == socket.AF_INET6:
                s.sendto(b"", (str(ip), 9, 0, ifindex if ip.is_link_local else 0))
            else:
                s.sendto(b"", (str(ip), 9))
    except OSError:
        pass


def next_hop(addr: str) -> tuple[str, int]:
    """(next-hop address, ifindex) the kernel would use towards ``addr``."""
    r = route_get(addr)
    return (r["gateway"] or str(ipaddress.ip_address(addr))), r["ifindex"]


def resolve(targets: Iterable[tuple[str, int]], timeout: float = 3.0,
            retry: float = 1.0) -> dict[tuple[str, int], Optional[str]]:
    """Resolve (next hop, ifindex) pairs: {pair: mac or None when unresolved by ``timeout``}."""
    want = {(str(ipaddress.ip_address(a)), int(i)) for a, i in targets}
    found: dict[tuple[str, int], Optional[str]] = {}

    def scan():
        for a, i, m in usable_neighbours():
            key = (str(ipaddress.ip_address(a)), i)
            if key in want:
                found[key] = m

    scan()
    deadline = time.monotonic() + timeout
    last = 0.0
    while len(found) < len(want) and time.monotonic() < deadline:
        now = time.monotonic()
        if now - last >= retry:
            for a, i in want - set(found):
                trigger_resolution(a, i)
            last = now
        time.sleep(0.02)
        scan()
    return {k: found.get(k) for k in want}


def vlans() -> list[dict]:
    """VLAN interfaces of this namespace: dicts with ``ifindex``, ``name``, ``parent`` (the
    ifindex of the interface they are on), ``vid``, ``tpid`` (0x8100, or 0x88a8 for 802.1ad)
    and ``mac`` (6 bytes)."""
    out = []
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0)
    for ty, payload in _request(RTM_GETLINK, NLM_F_DUMP, body):
        if ty != RTM_NEWLINK or len(payload) < _IFINFO.size:
            continue
        ifindex = _IFINFO.unpack_from(payload, 0)[3]
        v = {"ifindex": ifindex, "name": None, "parent": 0, "vid": None, "tpid": 0x8100, "mac": None}
        kind = None
        for t, val in _attrs(payload, _IFINFO.size, len(payload)):
            if t == IFLA_IFNAME:
                v["name"] = val.rstrip(b"\0").decode(errors="replace")
            elif t == IFLA_ADDRESS and len(val) == 6:
                v["mac"] = bytes(val)
            elif t == IFLA_LINK and len(val) >= 4:
                v["parent"] = struct.unpack_from("=i", val, 0)[0]
            elif t == IFLA_LINKINFO:
                for t2, v2 in _attrs(val, 0, len(val)):
                    if t2 == IFLA_INFO_KIND:
                        kind = v2.rstrip(b"\0").decode(errors="replace")
                    elif t2 == IFLA_INFO_DATA:
                        for t3, v3 in _attrs(v2, 0, len(v2)):
                            if t3 == IFLA_VLAN_ID and len(v3) >= 2:
                                v["vid"] = struct.unpack_from("=H", v3, 0)[0]
                            elif t3 == IFLA_VLAN_PROTOCOL and len(v3) >= 2:
                                v["tpid"] = struct.unpack_from("!H", v3, 0)[0]
        if kind == "vlan" and v["vid"] is not None and v["parent"] and v["mac"] is not None:
            out.append(v)
    return out
