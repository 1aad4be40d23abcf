"""Helpers for the engine tests (tests/test_engine_*.py): raw frames built with struct, engine
configurations, and decisions decoded to names.

Frames are Ethernet + IPv4/IPv6 + TCP/UDP with zero checksums (the engine never checks them).
"""
from __future__ import annotations

import ipaddress
import struct

from ipvsflow.config import (
    Config, RealServer, VirtualService, Command, FWD_MASQ, FWD_DROUTE, FWD_TUNNEL,
    SYSCTL_DEFAULTS, DEFAULT_TIMEOUTS,
)
from ipvsflow.engine import ACTIONS, DIRS, REASONS, Engine, state_name
from ipvsflow.io import PacketBatch

T0 = 1_700_000_000 * 10**9          # capture time base (ns)
MAC_C = bytes.fromhex("020000000001")
MAC_D = bytes.fromhex("020000000002")

FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}
TCP, UDP = 6, 17

# the reference's section 13 setup
CLIENT = "10.0.0.1"
CPORT = 40000
VIP = "192.0.2.10"
VPORT = 80
RS1 = "10.1.0.1"
RS2 = "10.1.0.2"


def tcp_flags(flags: str) -> int:
    v = 0
    for ch in flags:
        v |= FLAG_BITS[ch]
    return v


def _ip_bytes(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def l4_tcp(sport: int, dport: int, flags: str | int, payload: bytes = b"") -> bytes:
    fl = tcp_flags(flags) if isinstance(flags, str) else flags
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, fl, 65535, 0, 0) + payload


def l4_udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ip_packet(src: str, dst: str, proto: int, l4: bytes, ttl: int = 64) -> bytes:
    s, d = _ip_bytes(src), _ip_bytes(dst)
    if len(s) == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, ttl, proto, 0, s, d)
        return hdr + l4
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, ttl, s, d)
    return hdr + l4


def ether(ip: bytes) -> bytes:
    etype = 0x0800 if (ip[0] >> 4) == 4 else 0x86DD
    return MAC_D + MAC_C + struct.pack("!H", etype) + ip


def tcp_frame(src, sport, dst, dport, flags="S", payload=b"") -> bytes:
    return ether(ip_packet(src, dst, TCP, l4_tcp(sport, dport, flags, payload)))


def udp_frame(src, sport, dst, dport, payload=b"") -> bytes:
    return ether(ip_packet(src, dst, UDP, l4_udp(sport, dport, payload)))


def batch(packets) -> PacketBatch:
    """packets: [(t seconds after T0, frame bytes)]"""
    return PacketBatch.from_packets([(T0 + int(round(t * 1e9)), f) for t, f in packets])


def service(addr=VIP, port=VPORT, proto=TCP, sched="rr", fwd=FWD_MASQ, dests=(RS1, RS2),
            weights=None, flags=0, timeout=0, netmask=0, dport=None) -> VirtualService:
    rs = [RealServer(a, port if dport is None else dport, fwd=fwd,
                     weight=(weights[i] if weights else 1)) for i, a in enumerate(dests)]
    return VirtualService(proto=proto, addr=addr, port=port, scheduler=sched, dests=rs,
                          flags=flags, timeout=timeout, netmask=netmask)


def config(*services, kernel="6.1", timeouts=DEFAULT_TIMEOUTS, **sysctls) -> Config:
    sc = dict(SYSCTL_DEFAULTS)
    sc.update(sysctls)
    return Config(services=list(services) or [service()], sysctls=sc, timeouts=tuple(timeouts),
                  kernel=kernel)


def engine(*services, kernel="6.1", dr_replies="ignore", **sysctls) -> Engine:
    return Engine(config(*services, kernel=kernel, **sysctls), dr_replies=dr_replies)


def decode(eng: Engine, dec) -> list[dict]:
    """Decisions as dicts of names (rs as "addr:port" of the real server)."""
    dests = eng.dests()
    out = []
    for d in dec:
        rs = int(d["rs"])
        out.append({
            "pkt": int(d["pkt"]), "ts_ns": int(d["ts_ns"]),
            "action": ACTIONS[d["action"]], "reason": REASONS[d["reason"]],
            "dir": DIRS[d["dir"]], "rs": dests[rs]["addr"] if rs >= 0 else None,
            "state": state_name(d["proto"], d["state"]),
            "old_state": state_name(d["proto"], d["old_state"]),
            "conn": int(d["conn"]), "reuse_of": int(d["reuse_of"]), "flags": int(d["flags"]),
            "svc": int(d["svc"]),
        })
    return out


class Driver:
    """Feeds packets one at a time (each its own burst) and records decisions."""

    def __init__(self, eng: Engine):
        self.eng = eng
        self.log: list[dict] = []

    def send(self, t: float, frame: bytes) -> dict:
        dec = self.eng.process(batch([(t, frame)]))
        assert len(dec) == 1
        d = decode(self.eng, dec)[0]
        self.log.append(d)
        return d

    def c2s(self, t, flags, cport=CPORT, client=CLIENT, vip=VIP, vport=VPORT, proto=TCP):
        f = (tcp_frame(client, cport, vip, vport, flags) if proto == TCP
             else udp_frame(client, cport, vip, vport))
        return self.send(t, f)

    def s2c(self, t, flags, cport=CPORT, client=CLIENT, vip=VIP, vport=VPORT, proto=TCP):
        """A reply as captured in front of the director: VIP:vport -> client."""
        f = (tcp_frame(vip, vport, client, cport, flags) if proto == TCP
             else udp_frame(vip, vport, client, cport))
        return self.send(t, f)

    def rs2c(self, t, flags, rs, rport=VPORT, cport=CPORT, client=CLIENT, proto=TCP):
        """A reply as captured behind a NAT director: real server -> client."""
        f = (tcp_frame(rs, rport, client, cport, flags) if proto == TCP
             else udp_frame(rs, rport, client, cport))
        return self.send(t, f)

    def counters(self, addr: str) -> tuple[int, int]:
        for d in self.eng.dests():
            if d["addr"] == addr:
                return d["activeconns"], d["inactconns"]
        raise KeyError(addr)

    def conns(self, t=None):
        return self.eng.connections(None if t is None else T0 + int(round(t * 1e9)))


def cmd(op, svc=None, dest=None, **kw) -> Command:
    return Command(op=op, service=svc, dest=dest, line=f"{op}", **kw)
