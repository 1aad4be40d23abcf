"""Hypothesis strategies for random IPVS scenarios: few clients and ports (so ports get reused),
random TCP flags (no-flag and RST included), replies in front of the director, gaps beyond the
state timeouts, NAT and DR, a random scheduler, random sysctls and real-server edits."""
from hypothesis import strategies as st

from ipvsflow.config import FWD_DROUTE, FWD_MASQ, PROTO_TCP, PROTO_UDP, Command, Config, RealServer, VirtualService

from .ipvs_model import Packet
from .tables import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN

VIP, VPORT = "192.0.2.10", 80
CLIENTS = ["10.0.0.1", "10.0.0.2"]
PORTS = [40000, 40001]
SERVERS = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
FORWARDED = ("new", "hit", "resched")
FLAG_SETS = [TH_SYN, TH_SYN, TH_SYN | TH_ACK, TH_ACK, TH_ACK | TH_PSH, TH_FIN | TH_ACK, TH_RST,
             TH_RST | TH_ACK, 0, TH_PSH]
# gaps in ms: same burst, a second, past CLOSE (10 s), past SYN_RECV / CLOSE_WAIT (60 s),
# past FIN_WAIT / TIME_WAIT (120 s), past UDP (300 s)
GAPS_MS = st.one_of(st.integers(0, 50), st.integers(50, 3000), st.sampled_from([11_000, 61_000, 125_000, 301_000]))


@st.composite
def scenarios(draw):
    proto = draw(st.sampled_from([PROTO_TCP, PROTO_TCP, PROTO_TCP, PROTO_UDP]))
    fwd = draw(st.sampled_from([FWD_MASQ, FWD_DROUTE]))
    sched = draw(st.sampled_from(["rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf"]))
    n = draw(st.integers(1, 3))
    weights = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    thresholds = draw(st.lists(st.sampled_from([(0, 0), (0, 0), (2, 1), (3, 0)]), min_size=n, max_size=n))
    dests = [RealServer(SERVERS[i], VPORT, fwd=fwd, weight=weights[i], u_threshold=u, l_threshold=l)
             for i, (u, l) in enumerate(thresholds)]
    sysctls = dict(Config().sysctls)
    sysctls.update(conn_reuse_mode=draw(st.integers(0, 3)), expire_nodest_conn=draw(st.integers(0, 1)),
                   secure_tcp=draw(st.sampled_from([0, 3])), sloppy_tcp=draw(st.integers(0, 1)),
                   conntrack=draw(st.integers(0, 1)))
    vs = VirtualService(proto=proto, addr=VIP, port=VPORT, scheduler=sched, dests=dests)
    config = Config(services=[vs], sysctls=sysctls)
    packets, t = [], 1_000_000_000
    commands = {}
    count = draw(st.integers(1, 40))
    present = {rs.addr: True for rs in dests}
    for i in range(count):
        t += draw(GAPS_MS) * 1_000_000
        client = draw(st.sampled_from(CLIENTS))
        port = draw(st.sampled_from(PORTS))
        flags = draw(st.sampled_from(FLAG_SETS)) if proto == PROTO_TCP else 0
        if draw(st.integers(0, 3)) == 0:            # a reply, as seen in front of the director
            packets.append(Packet(ts_ns=t, proto=proto, src=VIP, sport=VPORT, dst=client, dport=port,
                                  tcp_flags=flags))
        else:
            packets.append(Packet(ts_ns=t, proto=proto, src=client, sport=port, dst=VIP, dport=VPORT,
                                  tcp_flags=flags))
        if i and draw(st.integers(0, 9)) == 0:      # a real-server edit before this packet
            addr = draw(st.sampled_from([rs.addr for rs in dests]))
            op = draw(st.sampled_from(["edit-dest", "del-dest"])) if present[addr] else "add-dest"
            rs = RealServer(addr, VPORT, fwd=fwd, weight=draw(st.integers(0, 3)))
            present[addr] = op != "del-dest"
            commands.setdefault(i, []).append(Command(op=op, service=vs, dest=rs))
    return config, packets, commands
