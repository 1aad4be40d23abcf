"""A small driver for writing IPVS scenarios against the model in a few lines (used by the
reference-vector tests): one service, a few real servers, client and reply packets by time."""
from __future__ import annotations

from ipvsflow.config import (FWD_DROUTE, FWD_MASQ, FWD_TUNNEL, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
                             Command, Config, RealServer, VirtualService)

from .ipvs_model import IPVSModel, Packet
from .tables import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN

FLAGS = {"S": TH_SYN, "A": TH_ACK, "F": TH_FIN, "R": TH_RST, "P": TH_PSH}
FWD = {"nat": FWD_MASQ, "dr": FWD_DROUTE, "tun": FWD_TUNNEL}
PROTOS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "sctp": PROTO_SCTP}
SCTP_CHUNKS = {"DATA": 0, "INIT": 1, "INIT_ACK": 2, "SACK": 3, "ABORT": 6, "SHUTDOWN": 7,
               "SHUTDOWN_ACK": 8, "ERROR": 9, "COOKIE_ECHO": 10, "COOKIE_ACK": 11,
               "SHUTDOWN_COMPLETE": 14}


def tcp_flags(letters: str) -> int:
    out = 0
    for ch in letters:
        out |= FLAGS[ch]
    return out


class Scenario:
    """Reference section 13 setup by default: VIP 192.0.2.10:80/TCP, RS1 10.1.0.1:80 added first,
    RS2 10.1.0.2:80 second (list [RS2, RS1]), rr, client 10.0.0.1:40000."""

    def __init__(self, fwd="nat", sched="rr", proto="tcp", vip="192.0.2.10", vport=80,
                 dests=(("10.1.0.1", 80, 1), ("10.1.0.2", 80, 1)), sysctls=None, kernel="6.1",
                 dr_replies="ignore", flags=0, persistence=0, timeouts=(900, 120, 300)):
        self.proto = PROTOS[proto]
        self.fwd = FWD[fwd]
        self.vip, self.vport = vip, vport
        self.vs = VirtualService(proto=self.proto, addr=vip, port=vport, scheduler=sched, flags=flags,
                                 timeout=persistence,
                                 dests=[RealServer(a, p, fwd=self.fwd, weight=w) for a, p, w in dests])
        sc = dict(Config().sysctls)
        sc.update(sysctls or {})
        self.model = IPVSModel(Config(services=[self.vs], sysctls=sc, timeouts=timeouts, kernel=kernel),
                               dr_replies=dr_replies)

    def _pkt(self, t, src, sport, dst, dport, flags="", chunk=None):
        return Packet(ts_ns=round(t * 1e9), af=6 if ":" in src else 4, proto=self.proto, src=src,
                      sport=sport, dst=dst, dport=dport,
                      tcp_flags=tcp_flags(flags) if self.proto == PROTO_TCP else 0,
                      sctp_chunk=SCTP_CHUNKS[chunk] if chunk else None)

    def c(self, t, flags="", client="10.0.0.1", cport=40000, chunk=None, dport=None):
        """Client -> VIP packet."""
        return self.model.process(self._pkt(t, client, cport, self.vip, self.vport if dport is None else dport,
                                            flags, chunk))

    def s(self, t, flags="", client="10.0.0.1", cport=40000, chunk=None):
        """Reply VIP -> client, as captured in front of the director."""
        return self.model.process(self._pkt(t, self.vip, self.vport, client, cport, flags, chunk))

    def rs(self, t, rs_addr, flags="", client="10.0.0.1", cport=40000, rport=80, chunk=None):
        """Reply from a NAT real server to the client (behind the director)."""
        return self.model.process(self._pkt(t, rs_addr, rport, client, cport, flags, chunk))

    def edit(self, t, addr, port=80, weight=1, u=0, l=0):
        self.model.advance(round(t * 1e9))
        self.model.apply(Command(op="edit-dest", service=self.vs,
                                 dest=RealServer(addr, port, fwd=self.fwd, weight=weight, u_threshold=u, l_threshold=l)))

    def delete(self, t, addr, port=80):
        self.model.advance(round(t * 1e9))
        self.model.apply(Command(op="del-dest", service=self.vs, dest=RealServer(addr, port, fwd=self.fwd)))

    def add(self, t, addr, port=80, weight=1, u=0, l=0):
        self.model.advance(round(t * 1e9))
        self.model.apply(Command(op="add-dest", service=self.vs,
                                 dest=RealServer(addr, port, fwd=self.fwd, weight=weight, u_threshold=u, l_threshold=l)))

    def counters(self, addr, port=80):
        return self.model.counters(f"{addr}:{port}")

    def conns(self, client="10.0.0.1", cport=None, templates=False):
        return [r for r in self.model.connections()
                if r["client"] == client and (cport is None or r["cport"] == cport)
                and (templates or not r["template"])]
