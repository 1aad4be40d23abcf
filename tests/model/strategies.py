"""Hypothesis strategies for random IPVS scenarios.

A scenario is one virtual service (plain proto/VIP/port, fwmark, or persistent port 0) with one
to three real servers, random sysctls and a kernel version, and up to 40 packets of a few flows
(few clients and ports, so ports get reused): client packets with random TCP flags (no-flag and
RST included) or SCTP chunks, replies in front of the director and from NAT real servers behind
it, ICMP/ICMPv6 errors about either direction (and ICMP that is no error), gaps beyond the state
timeouts, and real-server edits (weight 0, delete, re-add) between packets.

``Scenario.ct_model`` says how both sides decide whether a packet carries a confirmed netfilter
conntrack when conntrack=1 ("never" / "always"): the conntrack tracker itself is checked
against the kernel by the oracle fixtures, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from ipvsflow.config import (FWD_DROUTE, FWD_MASQ, FWD_TUNNEL, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
                             SVC_F_ONEPACKET, SVC_F_PERSISTENT, SVC_F_SCHED1, SVC_F_SCHED2, Command,
                             Config, RealServer, VirtualService)

from .ipvs_model import Packet
from .tables import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN

VIP, VPORT = "192.0.2.10", 80
FWMARK = 1
ADDRS = {
    4: {"vip": VIP, "clients": ["10.0.0.1", "10.0.0.2", "10.0.7.1"],
        "servers": ["10.1.0.1", "10.1.0.2", "10.1.0.3"]},
    6: {"vip": "2001:db8::10", "clients": ["2001:db8:9::1", "2001:db8:9::2", "2001:db8:a::1"],
        "servers": ["2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::3"]},
}
CLIENTS = ADDRS[4]["clients"]
SERVERS = ADDRS[4]["servers"]
PORTS = [40000, 40001]
KERNELS = ["4.4", "4.19", "5.9", "5.15", "6.1"]
SCHEDULERS = ["rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "sh", "dh", "mh"]
FORWARDED = ("new", "hit", "resched")
FLAG_SETS = [TH_SYN, TH_SYN, TH_SYN | TH_ACK, TH_ACK, TH_ACK | TH_PSH, TH_FIN | TH_ACK, TH_RST,
             TH_RST | TH_ACK, 0, TH_PSH]
SCTP_CHUNKS = [1, 1, 1, 2, 10, 11, 0, 7, 8, 14, 6, 9, 4]
# (type, code): errors IPVS maps, then messages that are not errors (echo, parameter problem)
ICMP4 = [(3, 3), (3, 4), (11, 0), (4, 0), (8, 0), (12, 0)]
ICMP6 = [(1, 4), (2, 0), (3, 0), (4, 0), (128, 0)]
# gaps in ms: same burst, a second, past CLOSE (10 s), past SYN_RECV / CLOSE_WAIT (60 s),
# past FIN_WAIT / TIME_WAIT (120 s), past UDP (300 s)
GAPS_MS = st.one_of(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(50, 3000),
                    st.integers(50, 3000), st.sampled_from([4_000, 11_000, 61_000, 125_000, 301_000]))


@dataclass
class Scenario:
    config: Config
    packets: list
    commands: dict = field(default_factory=dict)    # packet index -> [Command] applied before it
    dr_replies: str = "ignore"
    ct_model: str = "never"

    def __iter__(self):         # config, packets, commands = scenario
        return iter((self.config, self.packets, self.commands))


def _service(draw, af, kind, proto):
    flags = 0
    timeout = netmask = 0
    sched = draw(st.sampled_from(SCHEDULERS))
    if sched in ("sh", "mh"):
        flags |= draw(st.sampled_from([0, SVC_F_SCHED1, SVC_F_SCHED2, SVC_F_SCHED1 | SVC_F_SCHED2]))
    if kind == "port0" or draw(st.integers(0, 3)) == 0:
        flags |= SVC_F_PERSISTENT
        timeout = draw(st.sampled_from([30, 120, 300]))
        netmask = draw(st.sampled_from([0, 24, 16] if af == 4 else [0, 64, 32]))
    if proto == PROTO_UDP and kind == "plain" and draw(st.integers(0, 5)) == 0:
        flags |= SVC_F_ONEPACKET
    vip = ADDRS[af]["vip"]
    if kind == "fwmark":
        return VirtualService(proto=0, fwmark=FWMARK, af=af, scheduler=sched, flags=flags,
                              timeout=timeout, netmask=netmask)
    return VirtualService(proto=proto, addr=vip, port=0 if kind == "port0" else VPORT, af=af,
                          scheduler=sched, flags=flags, timeout=timeout, netmask=netmask)


def _icmp(draw, af, t, flow_proto, outer, inner):
    """An ICMP error (or not-error message) from outer[0] to outer[1] quoting ``inner`` =
    (src, sport, dst, dport) of the packet it is about."""
    typ, code = draw(st.sampled_from(ICMP4 if af == 4 else ICMP6))
    ic_proto = flow_proto if draw(st.integers(0, 7)) else 47     # sometimes GRE: unrelated
    return Packet(ts_ns=t, af=af, proto=1 if af == 4 else 58, src=outer[0], dst=outer[1],
                  icmp_type=typ, icmp_code=code, ic_proto=ic_proto, ic_src=inner[0],
                  ic_sport=inner[1] if ic_proto != 47 else 0, ic_dst=inner[2],
                  ic_dport=inner[3] if ic_proto != 47 else 0)


@st.composite
def scenarios(draw, max_packets: int = 40):
    """Fwmark and port-0 services draw client packets to two virtual ports: with NAT and a fixed
    server port, the entries of one client port then share a reply tuple. ICMP errors include a
    real server's error as captured in front of the director (VIP -> client, about client ->
    VIP), and any scheduler may run with schedule_icmp=1."""
    af = draw(st.sampled_from([4, 4, 4, 6]))
    kind = draw(st.sampled_from(["plain", "plain", "plain", "plain", "fwmark", "port0"]))
    proto = draw(st.sampled_from([PROTO_TCP, PROTO_TCP, PROTO_TCP, PROTO_UDP, PROTO_SCTP]))
    fwd = draw(st.sampled_from([FWD_MASQ, FWD_MASQ, FWD_DROUTE, FWD_DROUTE, FWD_TUNNEL]))
    vs = _service(draw, af, kind, proto)
    vip, clients, servers = ADDRS[af]["vip"], ADDRS[af]["clients"], ADDRS[af]["servers"]
    dports = [VPORT] if kind == "plain" else [VPORT, 443]
    # the real servers' port: the service port, or 0 (keep the packet's port) / another port
    if kind == "fwmark" or (kind == "port0" and fwd == FWD_MASQ):
        rport = draw(st.sampled_from([0, 0, 8080]))
    else:
        rport = vs.port         # ipvsadm gives DR/TUN servers of a port service its port
    n = draw(st.integers(1, 3))
    weights = draw(st.lists(st.sampled_from([1, 1, 2, 3, 0]), min_size=n, max_size=n))
    thresholds = draw(st.lists(st.sampled_from([(0, 0), (0, 0), (2, 1), (3, 0)]), min_size=n, max_size=n))
    vs.dests = [RealServer(servers[i], rport, fwd=fwd, weight=weights[i], u_threshold=u, l_threshold=l)
                for i, (u, l) in enumerate(thresholds)]
    sysctls = dict(Config().sysctls)
    sysctls.update(conn_reuse_mode=draw(st.integers(0, 3)), expire_nodest_conn=draw(st.integers(0, 1)),
                   expire_quiescent_template=draw(st.integers(0, 1)),
                   secure_tcp=draw(st.sampled_from([0, 3])), sloppy_tcp=draw(st.integers(0, 1)),
                   sloppy_sctp=draw(st.integers(0, 1)), conntrack=draw(st.integers(0, 1)),
                   schedule_icmp=draw(st.integers(0, 1)))
    config = Config(services=[vs], sysctls=sysctls, kernel=draw(st.sampled_from(KERNELS)))
    ct_model = draw(st.sampled_from(["never", "always"]))
    dr_replies = draw(st.sampled_from(["ignore", "inspect"]))

    packets, commands, t = [], {}, 1_000_000_000
    present = {rs.addr: True for rs in vs.dests}
    for i in range(draw(st.integers(1, max_packets))):
        t += draw(GAPS_MS) * 1_000_000
        # mostly one flow, so that its entry sees whole lifecycles and port reuse
        client = draw(st.sampled_from(clients[:1] * 4 + clients[1:]))
        cport = draw(st.sampled_from(PORTS[:1] * 3 + PORTS[1:]))
        dport = draw(st.sampled_from(dports))
        p_proto = proto if kind != "fwmark" else draw(st.sampled_from([proto, proto, proto, PROTO_UDP]))
        # behind a NAT director the servers' own replies are the ones the out index answers
        what = draw(st.sampled_from(["client"] * 8 + ["reply"] * 3 + ["rs_reply", "icmp"]
                                    + ["rs_reply"] * 2 * (fwd == FWD_MASQ)))
        flags = draw(st.sampled_from(FLAG_SETS)) if p_proto == PROTO_TCP else 0
        chunk = draw(st.sampled_from(SCTP_CHUNKS)) if p_proto == PROTO_SCTP else None
        abort_after = chunk in (10, 11) and draw(st.integers(0, 4)) == 0
        common = dict(ts_ns=t, af=af, proto=p_proto, tcp_flags=flags, sctp_chunk=chunk,
                      sctp_abort_after_cookie=abort_after)
        if what == "client":
            pkt = Packet(src=client, sport=cport, dst=vip, dport=dport, **common)
            if kind == "fwmark" and draw(st.integers(0, 7)):
                pkt.fwmark = FWMARK
        elif what == "reply":           # a reply as seen in front of the director
            pkt = Packet(src=vip, sport=dport, dst=client, dport=cport, **common)
        elif what == "rs_reply":        # a reply from a real server, behind a NAT director
            pkt = Packet(src=draw(st.sampled_from(servers)), sport=rport or dport, dst=client,
                         dport=cport, **common)
        else:
            side = draw(st.sampled_from(["client", "client", "server", "front"]))
            if side == "client":        # the client about a reply it got
                pkt = _icmp(draw, af, t, p_proto, (client, vip), (vip, dport, client, cport))
                if kind == "fwmark" and draw(st.integers(0, 3)):
                    pkt.fwmark = FWMARK
            elif side == "front":       # a server's error about a client packet, in front of the director
                pkt = _icmp(draw, af, t, p_proto, (vip, client), (client, cport, vip, dport))
            else:                       # the same behind a NAT director
                rs = draw(st.sampled_from(servers))
                pkt = _icmp(draw, af, t, p_proto, (rs, client), (client, cport, rs, rport or dport))
        packets.append(pkt)
        if i and draw(st.integers(0, 6)) == 0:      # a real-server edit before this packet
            addr = draw(st.sampled_from([rs.addr for rs in vs.dests]))
            op = draw(st.sampled_from(["edit-dest", "edit-dest", "del-dest"])) if present[addr] else "add-dest"
            rs = RealServer(addr, rport, fwd=fwd, weight=draw(st.integers(0, 3)))
            present[addr] = op != "del-dest"
            commands.setdefault(i, []).append(Command(op=op, service=vs, dest=rs))
    return Scenario(config, packets, commands, dr_replies, ct_model)
