"""A slow, plain-Python model of Linux IPVS: the executable specification the engine is checked
against, decision by decision.

Written from the semantics reference (sections 1-13, errata first) and the kernel's
net/netfilter/ipvs sources; it shares no code with ipvsflow.engine. It favours being obviously
correct over speed: connections live in a list, every lookup is a linear scan returning the newest
match (the kernel inserts at the head of a hash chain), every packet starts with a scan for
expired entries, and each function is named after the kernel function it models.

Time is the packet timestamp in nanoseconds. Kernel behaviour variants (reuse block history,
server-status block, active-state table, DR reply inspection) are chosen by ``kernel``.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Optional

from ipvsflow.config import (FWD_MASQ, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SVC_F_ONEPACKET,
                             SVC_F_PERSISTENT, SYSCTL_DEFAULTS, Command, Config, ConfigError,
                             RealServer, VirtualService)

from . import tables as T
from .schedulers import SCHEDULERS

NS = 1_000_000_000

# Connection flags (include/uapi/linux/ip_vs.h, IP_VS_CONN_F_*).
F_FWD_MASK = 0x0007
F_NOOUTPUT = 0x0080
F_INACTIVE = 0x0100
F_TEMPLATE = 0x1000
F_ONE_PACKET = 0x2000
F_NFCT = 1 << 16

FTPPORT = 21
FTPDATA = 20
IPPROTO_IP = 0
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58

# ICMP errors IPVS maps to a connection (ip_vs_in_icmp / ip_vs_out_icmp): IPv4 destination
# unreachable, source quench, time exceeded; IPv6 every non-informational type (< 128).
ICMP_ERRORS_V4 = frozenset({3, 4, 11})

# Template states (IP_VS_CTPL_S_*), as /proc/net/ip_vs_conn names them.
CTPL_NONE, CTPL_ASSURED = "NONE", "ASSURED"

PROTO_NAMES = {PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_SCTP: "SCTP", IPPROTO_IP: "IP"}


def norm_addr(a) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes IPv4."""
    ip = ipaddress.ip_address(a if not isinstance(a, (bytes, bytearray)) else bytes(a))
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# ---------------------------------------------------------------------------------------------
# Kernel variants (section 6.6)

@dataclass(frozen=True)
class Variant:
    reuse: str = "2021"             # "2015", "2016", "2020", "2021"
    close_expected: bool = True     # TCP CLOSE counts as an expected reuse state
    nodest_block_v59: bool = True   # server-status block before scheduling, may reschedule
    nodest_flush: bool = True       # deleting a dest flushes its entries (expire_nodest_conn)
    tcp_active_v48: bool = True     # SYN_SENT/SYN_RECV/SYNACK count as active
    dr_reply_inspection: bool = True    # replies of DR/TUN entries can be matched (v5.11+)


def variant_for(kernel: str) -> Variant:
    """Map a kernel version ("6.1", "5.4", "4.19", ...) to its behaviour switches.

    Version bounds follow the reference's table 6.6; the TCP CLOSE reuse state is only known to be
    present in v4.19 and absent around v4.6-v4.12, so it is modelled from 4.19 on.
    """
    parts = [int(x) for x in str(kernel).split(".")[:2]]
    v = (parts[0], parts[1] if len(parts) > 1 else 0)
    if v < (4, 1):
        raise ConfigError(f"kernel {kernel}: behaviour before v4.1 is not modelled")
    if v < (4, 6):
        reuse = "2015"
    elif v < (5, 9):
        reuse = "2016"
    elif v < (5, 16):
        reuse = "2020"
    else:
        reuse = "2021"
    return Variant(reuse=reuse, close_expected=v >= (4, 19), nodest_block_v59=v >= (5, 9),
                   nodest_flush=v >= (5, 9), tcp_active_v48=v >= (4, 8),
                   dr_reply_inspection=v >= (5, 11))


# ---------------------------------------------------------------------------------------------
# Packets

@dataclass
class Packet:
    """One input record, as simple as a capture line.

    ``status`` is "ok" when headers up to L4 were parsed; anything else ("fragment", "not_ip",
    "truncated", ...) is reported as an invalid packet with that reason. ``sctp_chunk`` is the first
    chunk type (None when not SCTP); ``sctp_abort_after_cookie`` marks COOKIE_ECHO/COOKIE_ACK
    followed by ABORT.
    """
    ts_ns: int
    af: int = 4
    proto: int = PROTO_TCP
    src: str = ""
    sport: int = 0
    dst: str = ""
    dport: int = 0
    tcp_flags: int = 0
    sctp_chunk: Optional[int] = None
    status: str = "ok"
    length: int = 0
    sctp_abort_after_cookie: bool = False
    fwmark: int = 0
    # ICMP/ICMPv6 (proto 1/58): type, code and the embedded packet's header (ic_proto 0: none)
    icmp_type: int = 0
    icmp_code: int = 0
    ic_proto: int = 0
    ic_src: str = ""
    ic_sport: int = 0
    ic_dst: str = ""
    ic_dport: int = 0
    # the client-side tuple of an ICMP error's embedded header (IP_VS_HDR_INVERSE): schedulers
    # that read the packet's destination address see the client there
    inverse: bool = False

    def __post_init__(self):
        if self.src:
            self.src = norm_addr(self.src)
        if self.dst:
            self.dst = norm_addr(self.dst)
        if self.ic_src:
            self.ic_src = norm_addr(self.ic_src)
        if self.ic_dst:
            self.ic_dst = norm_addr(self.ic_dst)

    def is_icmp_error(self) -> bool:
        if self.af == 4 and self.proto == IPPROTO_ICMP:
            return self.icmp_type in ICMP_ERRORS_V4
        if self.af == 6 and self.proto == IPPROTO_ICMPV6:
            return self.icmp_type < 128
        return False


# ---------------------------------------------------------------------------------------------
# Real servers, services, connections

class Dest:
    def __init__(self, svc: "Service", rs: RealServer, ident: int):
        self.id = ident
        self.svc = svc
        self.addr = norm_addr(rs.addr)
        self.port = rs.port
        self.af = 6 if ":" in self.addr else 4
        self.available = True
        self.overload = False
        self.active = 0
        self.inactive = 0
        self.persist = 0
        self.refcnt = 0           # entries bound to it
        self.conns = 0            # connections scheduled to it (stats)
        self.u_threshold = 0
        self.update(rs, add=True)

    def update(self, rs: RealServer, add: bool = False):
        """The settings part of __ip_vs_update_dest."""
        self.fwd = rs.fwd
        self.weight = rs.weight
        if add or rs.weight:
            self.last_weight = rs.weight        # mh uses the latest non-zero weight
        flags = (rs.fwd & F_FWD_MASK) | F_INACTIVE
        if rs.fwd != FWD_MASQ:
            flags |= F_NOOUTPUT
        self.conn_flags = flags
        self.available = True
        if rs.u_threshold == 0 or rs.u_threshold > self.u_threshold:
            self.overload = False
        self.u_threshold = rs.u_threshold
        self.l_threshold = rs.l_threshold

    def endpoint(self) -> str:
        return endpoint(self.addr, self.port)

    def totalconns(self) -> int:
        return self.active + self.inactive

    def __repr__(self):
        return f"Dest({self.endpoint()} w={self.weight} a={self.active} i={self.inactive} p={self.persist})"


class Service:
    def __init__(self, vs: VirtualService, ident: int):
        self.id = ident
        self.proto = vs.proto
        self.fwmark = vs.fwmark
        self.af = vs.af
        self.addr = norm_addr(vs.addr) if vs.addr else ""
        if self.addr:
            self.af = 6 if ":" in self.addr else 4
        self.port = vs.port
        self.dests: list[Dest] = []          # newest first, as svc->destinations
        self.sched = None
        self.update(vs)

    def update(self, vs: VirtualService):
        if vs.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler {vs.scheduler!r} is not modelled")
        self.flags = vs.flags
        self.timeout = vs.timeout
        self.netmask = vs.netmask or (32 if self.af == 4 else 128)
        if self.sched is None or self.sched.name != vs.scheduler:
            self.sched = SCHEDULERS[vs.scheduler](self)

    def key(self):
        if self.fwmark:
            return ("fwm", self.fwmark, self.af)
        return (self.proto, self.addr, self.port)

    def name(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark}"
        return f"{PROTO_NAMES.get(self.proto, self.proto)} {endpoint(self.addr, self.port)}"


class Conn:
    def __init__(self, serial, proto, af, caddr, cport, vaddr, vport, daddr, dport, flags):
        self.serial = serial
        self.proto = proto
        self.af = af
        self.caddr, self.cport = caddr, cport
        self.vaddr, self.vport = vaddr, vport
        self.daddr, self.dport = daddr, dport
        self.flags = flags
        self.last_in_rst = False    # the last packet seen on the entry was a client RST
        self.fin_seen = False       # a FIN went through in either direction
        self.dest: Optional[Dest] = None
        if flags & F_TEMPLATE:
            self.state = 0
        else:
            self.state = "UDP" if proto == PROTO_UDP else "NONE"
        self.timeout = 3            # ip_vs_conn_new: 3 s until the first state transition
        self.deadline = None        # ns
        self.control: Optional[Conn] = None
        self.n_control = 0
        self.hashed = True
        self.assured = False        # templates: IP_VS_CTPL_S_ASSURED
        self.svc = None        # templates: IP_VS_CTPL_S_ASSURED

    @property
    def template(self) -> bool:
        return bool(self.flags & F_TEMPLATE)

    def __repr__(self):
        return (f"Conn#{self.serial}({PROTO_NAMES.get(self.proto)} {endpoint(self.caddr, self.cport)} -> "
                f"{endpoint(self.vaddr, self.vport)} -> {endpoint(self.daddr, self.dport)} {self.state_name()})")

    def state_name(self) -> str:
        if self.template:
            return CTPL_ASSURED if self.assured else CTPL_NONE
        if self.proto == PROTO_SCTP:
            return T.SCTP_PROC_NAMES[self.state]
        return self.state


# ---------------------------------------------------------------------------------------------
# The model

class IPVSModel:
    """Linux IPVS as a plain-Python state machine.

    ``dr_replies``: "ignore" (a DR/TUN director never sees replies: a VIP->client packet of such an
    entry is passed, untouched) or "inspect" (the director is on the reply path; v5.11+ matches the
    reply on vaddr:vport, runs the OUTPUT table and clears NOOUTPUT).
    ``conntrack_hooks``: whether netfilter conntrack is active for IPVS traffic (it is only when some
    netfilter rule uses conntrack); the conntrack sysctl matters only then.
    ``ct_model``: whether a packet's conntrack is confirmed (old_ct) is "derived" from the entry
    (see ``_old_ct``), or taken as "never" / "always" (conntrack=1 only).
    """

    def __init__(self, config: Optional[Config] = None, *, dr_replies: str = "ignore",
                 kernel: Optional[str] = None, conntrack_hooks: bool = True,
                 ct_model: str = "derived"):
        config = config or Config()
        if dr_replies not in ("ignore", "inspect"):
            raise ConfigError(f"dr_replies must be 'ignore' or 'inspect', not {dr_replies!r}")
        self.variant = variant_for(kernel or config.kernel)
        self.dr_replies = dr_replies
        # Netfilter conntrack only tracks IPVS traffic when some rule needs it (kube-proxy's
        # iptables rules, the oracle's --ct-hooks); without that, conntrack=1 changes nothing.
        self.conntrack_hooks = conntrack_hooks
        if ct_model not in ("derived", "never", "always"):
            raise ConfigError(f"ct_model must be 'derived', 'never' or 'always', not {ct_model!r}")
        self.ct_model = ct_model
        self.sysctl = dict(SYSCTL_DEFAULTS)
        for k, v in config.sysctls.items():
            self.set_sysctl(k, v)
        self.timeouts = {"tcp": 900, "tcpfin": 120, "udp": 300}
        self.set_timeouts(*config.timeouts)
        self.services: list[Service] = []
        self.trash: list[Dest] = []
        self.all_dests: list[Dest] = []
        self.conns: list[Conn] = []         # live entries, in creation order
        self.expired: list = []             # (time, entry) of the latest expiries, for inspection
        self.next_serial = 1
        self.now = None
        self.pkt_index = 0
        for vs in config.services:
            self.apply(Command(op="add-service", service=vs))
            for rs in vs.dests:
                self.apply(Command(op="add-dest", service=vs, dest=rs))

    # ---- configuration --------------------------------------------------------------------

    NOT_MODELLED = {"cache_bypass": "the cache-bypass entry of ip_vs_leave",
                    "nat_icmp_send": "ICMP unreachable for replies without an entry"}

    def set_sysctl(self, name: str, value: int):
        if name not in SYSCTL_DEFAULTS:
            raise ConfigError(f"unknown sysctl {name!r}")
        if name in self.NOT_MODELLED and int(value):
            raise ConfigError(f"sysctl {name}={value}: {self.NOT_MODELLED[name]} is not modelled")
        self.sysctl[name] = int(value)

    def set_timeouts(self, tcp: int, tcpfin: int, udp: int):
        # ip_vs_set_timeout: 0 leaves a value unchanged.
        for k, v in (("tcp", tcp), ("tcpfin", tcpfin), ("udp", udp)):
            if v:
                self.timeouts[k] = int(v)

    def find_service(self, vs: VirtualService) -> Optional[Service]:
        if vs.fwmark:
            key = ("fwm", vs.fwmark, vs.af)
        else:
            key = (vs.proto, norm_addr(vs.addr), vs.port)
        for s in self.services:
            if s.key() == key:
                return s
        return None

    def apply(self, cmd: Command):
        """One ipvsadm command, with the kernel's side effects (ip_vs_ctl.c)."""
        op = cmd.op
        where = f"{cmd.source}:{cmd.lineno}: {cmd.line}" if cmd.line else op
        if op == "sysctl":
            self.set_sysctl(*cmd.sysctl)
            return
        if op == "set-timeouts":
            self.set_timeouts(*cmd.timeouts)
            return
        if op == "clear":
            for s in list(self.services):
                self._del_service(s)
            return
        svc = self.find_service(cmd.service)
        if op == "add-service":
            if svc is not None:
                raise ConfigError(f"{where}: service already exists")
            self.services.append(Service(cmd.service, len(self.services)))
        elif op == "edit-service":
            if svc is None:
                raise ConfigError(f"{where}: no such service")
            svc.update(cmd.service)
        elif op == "del-service":
            if svc is None:
                raise ConfigError(f"{where}: no such service")
            self._del_service(svc)
        elif op in ("add-dest", "edit-dest", "del-dest"):
            if svc is None:
                raise ConfigError(f"{where}: no such service")
            rs = cmd.dest
            addr = norm_addr(rs.addr)
            dest = next((d for d in svc.dests if d.addr == addr and d.port == rs.port), None)
            if op == "add-dest":
                if dest is not None:
                    raise ConfigError(f"{where}: destination already exists")
                self._add_dest(svc, rs)
            elif op == "edit-dest":
                if dest is None:
                    raise ConfigError(f"{where}: no such destination")
                self._check_dest(rs, where)
                dest.update(rs)
                svc.sched.upd_dest(svc, dest)
            else:
                if dest is None:
                    raise ConfigError(f"{where}: no such destination")
                self._del_dest(svc, dest)
                self._expire_nodest_conn_flush()
        else:
            raise ConfigError(f"{where}: unknown operation {op!r}")

    @staticmethod
    def _check_dest(rs: RealServer, where: str):
        if not 0 <= rs.weight <= 65535:
            raise ConfigError(f"{where}: weight {rs.weight} out of range")
        if rs.l_threshold > rs.u_threshold:
            raise ConfigError(f"{where}: lower threshold is higher than upper threshold")

    def _add_dest(self, svc: Service, rs: RealServer):
        self._check_dest(rs, f"add-dest {rs.addr}:{rs.port}")
        addr = norm_addr(rs.addr)
        # ip_vs_trash_get_dest: a deleted dest of the same service comes back as it was.
        dest = next((d for d in self.trash if d.svc is svc and d.addr == addr and d.port == rs.port), None)
        if dest is not None:
            self.trash.remove(dest)
            dest.update(rs, add=True)
        else:
            dest = Dest(svc, rs, len(self.all_dests))
            self.all_dests.append(dest)
        svc.dests.insert(0, dest)               # list_add_rcu at the head
        svc.sched.add_dest(svc, dest)

    def _del_dest(self, svc: Service, dest: Dest):
        """__ip_vs_unlink_dest + __ip_vs_del_dest: AVAILABLE cleared, dest goes to the trash."""
        dest.available = False
        index = svc.dests.index(dest)
        svc.dests.remove(dest)
        svc.sched.del_dest(svc, dest, index)
        self.trash.append(dest)

    def _del_service(self, svc: Service):
        for d in list(svc.dests):
            self._del_dest(svc, d)
        self.services.remove(svc)
        self._expire_nodest_conn_flush()

    def _expire_nodest_conn_flush(self):
        """ip_vs_expire_nodest_conn_flush (v5.9+), run ~1 jiffy after the delete: here at once,
        which is before the next packet."""
        if not (self.sysctl["expire_nodest_conn"] and self.variant.nodest_flush):
            return
        for cp in list(self.conns):
            if cp not in self.conns or not cp.hashed:
                continue
            if cp.dest is None or cp.dest.available or cp.n_control:
                continue
            ctl = cp.control
            self._conn_del(cp)
            if ctl is not None and ctl in self.conns and ctl.n_control == 0:
                self._conn_del(ctl)

    # ---- connections ----------------------------------------------------------------------

    def _conn_new(self, proto, af, caddr, cport, vaddr, vport, daddr, dport, flags, dest) -> Conn:
        cp = Conn(self.next_serial, proto, af, caddr, cport, vaddr, vport, daddr, dport, flags)
        self.next_serial += 1
        self._bind_dest(cp, dest)
        if self.sysctl["conntrack"]:
            cp.flags |= F_NFCT
        cp.hashed = not (cp.flags & F_ONE_PACKET)
        self.conns.append(cp)
        return cp

    def _bind_dest(self, cp: Conn, dest: Dest):
        conn_flags = dest.conn_flags
        if cp.proto != PROTO_UDP:
            conn_flags &= ~F_ONE_PACKET
        cp.flags |= conn_flags
        cp.dest = dest
        dest.refcnt += 1
        if not cp.template:
            if cp.flags & F_INACTIVE:
                dest.inactive += 1
            else:
                dest.active += 1
        else:
            dest.persist += 1
        if dest.u_threshold and dest.totalconns() >= dest.u_threshold:
            dest.overload = True

    def _unbind_dest(self, cp: Conn):
        dest = cp.dest
        if dest is None:
            return
        if not cp.template:
            if cp.flags & F_INACTIVE:
                dest.inactive -= 1
            else:
                dest.active -= 1
        else:
            dest.persist -= 1
        if dest.l_threshold:
            if dest.totalconns() < dest.l_threshold:
                dest.overload = False
        elif dest.u_threshold:
            if dest.totalconns() * 4 < dest.u_threshold * 3:
                dest.overload = False
        else:
            dest.overload = False
        dest.refcnt -= 1

    def _conn_expire(self, cp: Conn, at: int):
        """ip_vs_conn_expire, run when the timer fires at ``at``."""
        if cp.n_control:
            cp.timeout = 60                         # expire later, permanently 60 s
            cp.deadline = at + 60 * NS
            return
        self.conns.remove(cp)
        self.expired.append((at, cp))
        del self.expired[:-64]
        ctl = cp.control
        if ctl is not None:
            has_ref = cp.timeout == 0
            ctl.n_control -= 1
            cp.control = None
            if has_ref and ctl.n_control == 0 and (not ctl.template or not ctl.assured):
                if ctl in self.conns:
                    self._conn_del(ctl)
        self._unbind_dest(cp)

    def _conn_del(self, cp: Conn):
        """ip_vs_conn_del: delete at once (timeout 0)."""
        cp.timeout = 0
        self._conn_expire(cp, self.now if self.now is not None else 0)

    def _expire_now(self, cp: Conn, now: int):
        if cp.deadline is not None and cp.deadline > now:
            cp.deadline = now

    def _put(self, cp: Conn, now: int):
        """ip_vs_conn_put: re-arm the idle timer; one-packet entries expire at once."""
        if cp.flags & F_ONE_PACKET:
            cp.deadline = now
            self._conn_expire(cp, now)
        else:
            cp.deadline = now + cp.timeout * NS

    def advance(self, ts_ns: int):
        """Run every timer due at or before ``ts_ns``, earliest first (ties: oldest entry first)."""
        while True:
            due = [c for c in self.conns if c.deadline is not None and c.deadline <= ts_ns]
            if not due:
                break
            cp = min(due, key=lambda c: (c.deadline, c.serial))
            self._conn_expire(cp, cp.deadline)
        if self.now is None or ts_ns > self.now:
            self.now = ts_ns

    # lookups: newest matching entry first, as the kernel's head-inserted hash chains
    def _in_get(self, proto, af, caddr, cport, vaddr, vport) -> Optional[Conn]:
        for cp in reversed(self.conns):
            if (cp.hashed and not cp.template and cp.proto == proto and cp.af == af
                    and cp.caddr == caddr and cp.cport == cport and cp.vaddr == vaddr
                    and cp.vport == vport):
                return cp
        return None

    def _out_get_nat(self, proto, af, saddr, sport, daddr, dport) -> Optional[Conn]:
        """ip_vs_conn_out_get for MASQ entries: reply from the real server to the client."""
        for cp in reversed(self.conns):
            if (cp.hashed and not cp.template and (cp.flags & F_FWD_MASK) == FWD_MASQ
                    and cp.proto == proto and cp.af == af and cp.daddr == saddr and cp.dport == sport
                    and cp.caddr == daddr and cp.cport == dport):
                return cp
        return None

    def _out_get_vip(self, proto, af, saddr, sport, daddr, dport) -> Optional[Conn]:
        """ip_vs_conn_out_get for DR/TUN entries (v5.11+): the reply's source is VIP:vport."""
        for cp in reversed(self.conns):
            if (cp.hashed and not cp.template and (cp.flags & F_FWD_MASK) != FWD_MASQ
                    and cp.proto == proto and cp.af == af and cp.vaddr == saddr and cp.vport == sport
                    and cp.caddr == daddr and cp.cport == dport):
                return cp
        return None

    def _ct_in_get(self, proto, af, caddr, vaddr, vport) -> Optional[Conn]:
        for cp in reversed(self.conns):
            if (cp.hashed and cp.template and cp.proto == proto and cp.af == af and cp.caddr == caddr
                    and cp.cport == 0 and cp.vaddr == vaddr and cp.vport == vport):
                return cp
        return None

    def _svc_find(self, pkt: Packet) -> Optional[Service]:
        """ip_vs_service_find: fwmark, then proto/addr/port, then the port-0 service of the VIP."""
        if pkt.fwmark:
            for s in self.services:
                if s.fwmark == pkt.fwmark and s.af == pkt.af:
                    return s
        for port in (pkt.dport, 0):
            for s in self.services:
                if not s.fwmark and s.proto == pkt.proto and s.addr == pkt.dst and s.port == port:
                    return s
        return None

    # ---- protocol helpers -----------------------------------------------------------------

    def _active_states(self, proto):
        if proto == PROTO_TCP:
            return T.TCP_ACTIVE_V48 if self.variant.tcp_active_v48 else T.TCP_ACTIVE_OLD
        if proto == PROTO_SCTP:
            return T.SCTP_ACTIVE
        return frozenset()

    def _timeout_of(self, proto, state) -> int:
        if proto == PROTO_TCP:
            if state == "ESTABLISHED":
                return self.timeouts["tcp"]
            if state == "FIN_WAIT":
                return self.timeouts["tcpfin"]
            return T.TCP_TIMEOUTS[state]
        if proto == PROTO_SCTP:
            return T.SCTP_TIMEOUTS[state]
        return self.timeouts["udp"]

    @staticmethod
    def _is_new_conn(pkt: Packet) -> bool:
        if pkt.proto == PROTO_TCP:
            return bool(pkt.tcp_flags & T.TH_SYN)
        if pkt.proto == PROTO_SCTP:
            return pkt.sctp_chunk == T.SCTP_INIT
        return False

    def _is_new_conn_expected(self, cp: Conn, mode: int) -> bool:
        if cp.control is not None:
            return False
        if cp.proto == PROTO_TCP:
            return (cp.state == "TIME_WAIT"
                    or (self.variant.close_expected and cp.state == "CLOSE")
                    or bool((mode & 2) and cp.state == "FIN_WAIT" and cp.flags & F_NOOUTPUT))
        if cp.proto == PROTO_SCTP:
            return cp.state == "CLOSED"
        return False

    def _old_ct(self, cp: Conn) -> bool:
        """Whether the packet carries a confirmed netfilter conntrack (ip_vs_conn_uses_old_conntrack).

        A capture can't show conntrack, so it is modelled: conntrack sysctl 0 (or no netfilter
        rule using conntrack) -> no conntrack is confirmed for IPVS traffic. With conntrack 1, the
        tracker kills a closed or aborted conntrack when a new SYN arrives and tracks the SYN in a
        fresh, unconfirmed one (nf_conntrack_proto_tcp "reopen"); any other conntrack stays
        confirmed. The tracker re-opens only a TIME_WAIT/CLOSE conntrack that saw a FIN, or whose
        last packet was a RST from the client's side. An entry whose replies the tracker never saw
        (still NOOUTPUT: DR/TUN) has a conntrack stuck in SYN_SENT, which only a client RST closes
        (oracle: reuse after FIN_WAIT or TIME_WAIT is dropped, after a client RST it is not); with
        both directions seen (NAT) the conntrack closes with the IPVS entry (oracle: reuse after a
        server RST is dropped, after a FIN close or a client RST it is not). SCTP: CLOSED re-opens.
        """
        if not (self.sysctl["conntrack"] and self.conntrack_hooks):
            return False
        if self.ct_model != "derived":
            return self.ct_model == "always"
        if cp.flags & F_NOOUTPUT:
            return not (cp.proto == PROTO_TCP and cp.last_in_rst)
        if cp.proto == PROTO_TCP:
            return not (cp.state in ("TIME_WAIT", "CLOSE") and (cp.fin_seen or cp.last_in_rst))
        if cp.proto == PROTO_SCTP:
            return cp.state != "CLOSED"
        return True

    def _uses_ct_2016(self, cp: Conn) -> bool:
        """2016-2020 test: the entry has NFCT and the packet has any conntrack."""
        if self.ct_model == "never":        # as the engine's "never": no conntrack on the packet
            return False
        return bool(cp.flags & F_NFCT) and bool(self.sysctl["conntrack"]) and self.conntrack_hooks

    def _control_assure(self, cp: Conn):
        if cp.control is not None and cp.control.template:
            cp.control.assured = True

    def _set_state(self, cp: Conn, direction: str, pkt: Packet):
        """ip_vs_set_state -> set_tcp_state / set_sctp_state / udp_state_transition."""
        if cp.proto == PROTO_TCP:
            cp.last_in_rst = direction == "INPUT" and bool(pkt.tcp_flags & T.TH_RST)
            cp.fin_seen = cp.fin_seen or bool(pkt.tcp_flags & T.TH_FIN)
        if cp.proto == PROTO_UDP:
            if direction == "OUTPUT":
                self._control_assure(cp)
            cp.timeout = self.timeouts["udp"]
            return
        if cp.flags & F_NOOUTPUT:
            if direction == "OUTPUT":
                cp.flags &= ~F_NOOUTPUT
            else:
                direction = "INPUT_ONLY"
        if cp.proto == PROTO_TCP:
            event = T.tcp_event(pkt.tcp_flags)
            if event is None:
                new_state = "CLOSE"
            else:
                table = T.TCP_TABLES["DOS" if self.sysctl["secure_tcp"] == 3 else "NORMAL"]
                new_state = table[direction][event][cp.state]
        else:
            event = T.sctp_event(pkt.sctp_chunk, pkt.sctp_abort_after_cookie)
            new_state = T.SCTP_TABLES[direction][event][cp.state]
        if new_state != cp.state:
            dest = cp.dest
            active = self._active_states(cp.proto)
            if dest is not None:
                if not (cp.flags & F_INACTIVE) and new_state not in active:
                    dest.active -= 1
                    dest.inactive += 1
                    cp.flags |= F_INACTIVE
                elif (cp.flags & F_INACTIVE) and new_state in active:
                    dest.active += 1
                    dest.inactive -= 1
                    cp.flags &= ~F_INACTIVE
            if new_state == "ESTABLISHED":
                self._control_assure(cp)
        cp.state = new_state
        cp.timeout = self._timeout_of(cp.proto, new_state)

    # ---- scheduling -----------------------------------------------------------------------

    def _conn_schedule(self, pkt: Packet):
        """tcp/udp/sctp_conn_schedule + ip_vs_schedule.

        Returns (cp, None) or (None, (action, reason)) when no entry is created.
        """
        if pkt.proto == PROTO_TCP:
            if pkt.tcp_flags & T.TH_RST:
                return None, ("pass", "rst_no_conn")
            if not (pkt.tcp_flags & T.TH_SYN or self.sysctl["sloppy_tcp"]):
                return None, ("pass", "no_conn_not_syn")
        elif pkt.proto == PROTO_SCTP:
            if pkt.sctp_chunk == T.SCTP_ABORT:
                return None, ("pass", "abort_no_conn")
            if not (pkt.sctp_chunk == T.SCTP_INIT or self.sysctl["sloppy_sctp"]):
                return None, ("pass", "no_conn_not_init")
        svc = self._svc_find(pkt)
        if svc is None:
            return None, ("pass", "no_service")
        return self._schedule_on(svc, pkt)

    def _schedule_on(self, svc: Service, pkt: Packet):
        """ip_vs_schedule for a packet of service ``svc``."""
        if pkt.sport == FTPDATA:
            # ip_vs_schedule never schedules active FTP data (client port 20): *ignored = 1
            return None, ("pass", "ftp_data")
        if svc.flags & SVC_F_PERSISTENT:
            return self._sched_persist(svc, pkt)
        if not svc.fwmark and pkt.dport != svc.port:
            # ip_vs_schedule returns NULL with *ignored = 0: ip_vs_leave answers ICMP
            # unreachable and drops (port-0 services only schedule when persistent)
            return None, ("drop", "port_zero")
        dest = svc.sched.schedule(svc, pkt)
        if dest is None:
            return None, ("drop", "no_dest")
        flags = F_ONE_PACKET if (svc.flags & SVC_F_ONEPACKET and pkt.proto == PROTO_UDP) else 0
        cp = self._conn_new(pkt.proto, pkt.af, pkt.src, pkt.sport, pkt.dst, pkt.dport, dest.addr,
                            dest.port or pkt.dport, flags, dest)
        dest.conns += 1
        cp.svc = svc
        return cp, None

    def _snet(self, svc: Service, addr: str) -> str:
        net = ipaddress.ip_network(f"{addr}/{svc.netmask}", strict=False)
        return str(net.network_address)

    def _check_template(self, ct: Conn) -> bool:
        """ip_vs_check_template: invalidate a template whose dest is gone or quiescent."""
        dest = ct.dest
        if (dest is None or not dest.available
                or (self.sysctl["expire_quiescent_template"] and dest.weight == 0)):
            if ct.vport != 0xFFFF:
                ct.dport = 0xFFFF
                ct.vport = 0xFFFF
                ct.cport = 0
            return False
        return True

    def _sched_persist(self, svc: Service, pkt: Packet):
        """ip_vs_sched_persist: find or create the template, then the connection under it."""
        snet = self._snet(svc, pkt.src)
        protocol, vaddr, vport = pkt.proto, pkt.dst, 0
        if pkt.dport == svc.port:
            if svc.port != FTPPORT:
                vport = pkt.dport
        elif svc.fwmark:
            # the mark stands in the address: htonl(fwmark) in the first 32-bit word
            protocol = IPPROTO_IP
            vaddr = str(ipaddress.IPv4Address(svc.fwmark) if pkt.af == 4
                        else ipaddress.IPv6Address(svc.fwmark << 96))
        ct = self._ct_in_get(protocol, pkt.af, snet, vaddr, vport)
        if ct is None or not self._check_template(ct):
            dest = svc.sched.schedule(svc, pkt)
            if dest is None:
                # ip_vs_sched_persist: *ignored = 0, so ip_vs_leave: ICMP unreachable, drop
                return None, ("drop", "no_dest")
            tdport = dest.port if (pkt.dport == svc.port and svc.port != FTPPORT) else 0
            ct = self._conn_new(protocol, pkt.af, snet, 0, vaddr, vport, dest.addr, tdport,
                                F_TEMPLATE, dest)
            ct.svc = svc
            ct.timeout = svc.timeout
        else:
            dest = ct.dest
        dport = pkt.dport
        if dport == svc.port and dest.port:
            dport = dest.port
        flags = F_ONE_PACKET if (svc.flags & SVC_F_ONEPACKET and pkt.proto == PROTO_UDP) else 0
        cp = self._conn_new(pkt.proto, pkt.af, pkt.src, pkt.sport, pkt.dst, pkt.dport, dest.addr,
                            dport, flags, dest)
        cp.svc = svc
        dest.conns += 1
        cp.control = ct
        ct.n_control += 1
        self._put(ct, self.now)
        return cp, None

    # ---- the packet path ------------------------------------------------------------------

    def _decision(self, pkt, index, action, reason=None, direction="-", cp=None, old_state=None,
                  reuse_of=None):
        rs = None
        if cp is not None and action in ("new", "hit", "resched") and cp.dest is not None:
            rs = cp.dest.endpoint()
        return {
            "pkt": index, "ts_ns": pkt.ts_ns, "action": action, "reason": reason, "dir": direction,
            "rs": rs, "conn": cp.serial if cp is not None else None,
            "state": cp.state_name() if cp is not None else None,
            "old_state": old_state, "reuse_of": reuse_of,
            "noutput": bool(cp.flags & F_NOOUTPUT) if cp is not None else None,
        }

    def process(self, pkt: Packet, index: Optional[int] = None) -> dict:
        """Expire what is due, then handle one packet; returns its decision."""
        if index is None:
            index = self.pkt_index
        self.pkt_index = index + 1
        self.advance(pkt.ts_ns)
        now = pkt.ts_ns
        if pkt.status != "ok":
            return self._decision(pkt, index, "invalid", pkt.status)
        if pkt.is_icmp_error():
            return self._icmp(pkt, index, now)
        if pkt.proto not in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
            return self._decision(pkt, index, "pass", "proto_not_ipvs")

        # Reply from a NAT real server (ip_vs_out_hook: runs first on LOCAL_IN and FORWARD).
        cp = self._out_get_nat(pkt.proto, pkt.af, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if cp is not None:
            return self._handle_response(pkt, index, cp, now)

        cp = self._in_get(pkt.proto, pkt.af, pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if cp is None:
            # A reply as seen in front of the director: VIP:vport -> client.
            rcp = self._in_get(pkt.proto, pkt.af, pkt.dst, pkt.dport, pkt.src, pkt.sport)
            if rcp is not None:
                if (rcp.flags & F_FWD_MASK) == FWD_MASQ:
                    return self._handle_response(pkt, index, rcp, now)
                if self.dr_replies == "inspect" and self.variant.dr_reply_inspection:
                    return self._handle_response(pkt, index, rcp, now)
                return self._decision(pkt, index, "pass", "dr_reply_not_seen", "out", rcp,
                                      old_state=rcp.state_name())
        return self._in_hook(pkt, index, cp, now)

    def _icmp(self, pkt: Packet, index: int, now: int) -> dict:
        """An ICMP/ICMPv6 error: ip_vs_out_icmp (LOCAL_IN hook order: out first), then
        ip_vs_in_icmp. The embedded header is the packet the error is about, so its addresses and
        ports are in reverse order (IP_VS_HDR_INVERSE). A mapped error is forwarded along its
        connection with the statistics of its direction; neither the state nor the timer change
        (__ip_vs_conn_put)."""
        if pkt.ic_proto not in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
            return self._decision(pkt, index, "pass", "icmp_unrelated")
        proto, af = pkt.ic_proto, pkt.af
        # ip_vs_out_icmp: the error comes from a real server about a packet it got, either
        # behind a NAT director (embedded client -> RS) or, from v5.11, the reply path of a
        # DR/TUN entry (embedded client -> VIP)
        cp = self._out_get_nat(proto, af, pkt.ic_dst, pkt.ic_dport, pkt.ic_src, pkt.ic_sport)
        if cp is None and self.variant.dr_reply_inspection and self.dr_replies == "inspect":
            cp = self._out_get_vip(proto, af, pkt.ic_dst, pkt.ic_dport, pkt.ic_src, pkt.ic_sport)
        if cp is not None:
            return self._decision(pkt, index, "hit", None, "out", cp, old_state=cp.state_name())
        # ip_vs_in_icmp: the error is about a packet sent to the client (embedded VIP -> client)
        cp = self._in_get(proto, af, pkt.ic_dst, pkt.ic_dport, pkt.ic_src, pkt.ic_sport)
        if cp is not None:
            return self._decision(pkt, index, "hit", None, "in", cp, old_state=cp.state_name())
        # Capture in front of the director: a real server's error, NATed back (or sent from the
        # VIP by a DR server), shows as VIP -> client about client -> VIP.
        rcp = self._in_get(proto, af, pkt.ic_src, pkt.ic_sport, pkt.ic_dst, pkt.ic_dport)
        if rcp is not None and pkt.src == rcp.vaddr:
            if (rcp.flags & F_FWD_MASK) == FWD_MASQ:
                return self._decision(pkt, index, "hit", None, "out", rcp, old_state=rcp.state_name())
            return self._decision(pkt, index, "pass", "dr_reply_not_seen", "out", rcp,
                                  old_state=rcp.state_name())
        # the client-side tuple of the embedded packet, as ip_vs_schedule reads it (inverse)
        inner = Packet(ts_ns=pkt.ts_ns, af=af, proto=proto, src=pkt.ic_dst, sport=pkt.ic_dport,
                       dst=pkt.ic_src, dport=pkt.ic_sport, fwmark=pkt.fwmark, inverse=True)
        svc = self._svc_find(inner)
        direction = "in"            # an error that IPVS examined, as the engine reports it
        if svc is None or not self.sysctl["schedule_icmp"]:
            return self._decision(pkt, index, "pass", "icmp_no_conn", direction)
        # schedule_icmp: the protocol's conn_schedule on the embedded header; for ICMP it reads
        # only the ports (no SYN/INIT test), so any error may create the entry
        cp, refusal = self._schedule_on(svc, inner)
        if cp is None:
            action, reason = refusal
            return self._decision(pkt, index, action, reason, direction)
        dec = self._decision(pkt, index, "new", None, "in", cp)
        self._put(cp, now)
        return dec

    def _handle_response(self, pkt, index, cp: Conn, now: int) -> dict:
        """handle_response: no AVAILABLE check (errata 3); OUTPUT state, timer re-armed."""
        old = cp.state_name()
        self._set_state(cp, "OUTPUT", pkt)
        self._put(cp, now)
        return self._decision(pkt, index, "hit", None, "out", cp, old_state=old)

    def _in_hook(self, pkt, index, cp: Optional[Conn], now: int) -> dict:
        """ip_vs_in_hook from the in-lookup on."""
        v = self.variant
        reuse_of = None
        old_state = cp.state_name() if cp is not None else None
        resched_reason = None
        if cp is not None and self._is_new_conn(pkt):
            reuse_of = cp.serial
            outcome = self._reuse_block(cp, now)
            if outcome == "drop":
                return self._decision(pkt, index, "drop", "conntrack_drop", "in", cp,
                                      old_state=old_state, reuse_of=reuse_of)
            if outcome is not None:
                resched_reason = outcome
                cp = None

        if cp is not None and cp.dest is not None and not cp.dest.available:
            if v.nodest_block_v59:
                if self.sysctl["expire_nodest_conn"]:
                    old_ct = self._old_ct(cp)
                    if not old_ct:
                        cp.flags &= ~F_NFCT
                    self._expire_now(cp, now)
                    if old_ct:
                        return self._decision(pkt, index, "drop", "conntrack_drop", "in", cp,
                                              old_state=old_state, reuse_of=reuse_of)
                    reuse_of = cp.serial
                    resched_reason = "dest_unavailable"
                    cp = None
                else:
                    return self._decision(pkt, index, "drop", "dest_unavailable", "in", cp,
                                          old_state=old_state, reuse_of=reuse_of)
            else:
                # Before v5.9: always dropped, expired with expire_nodest_conn, timer not refreshed.
                if self.sysctl["expire_nodest_conn"] and not (cp.flags & F_ONE_PACKET):
                    self._expire_now(cp, now)
                return self._decision(pkt, index, "drop", "dest_unavailable", "in", cp,
                                      old_state=old_state, reuse_of=reuse_of)

        if cp is None:
            cp, refusal = self._conn_schedule(pkt)
            if cp is None:
                action, reason = refusal
                # "in" for traffic addressed to a virtual service, "-" for anything else
                direction = "in" if (resched_reason or self._svc_find(pkt) is not None) else "-"
                if resched_reason == "dest_unavailable" and action == "pass":
                    reason = "nodest_expired"
                dec = self._decision(pkt, index, action, reason, direction, None,
                                     old_state=old_state, reuse_of=reuse_of)
                if action == "pass":
                    self._local_stack_reset(pkt, now)
                return dec
            action = "resched" if resched_reason else "new"
            old_for_decision = old_state
        else:
            action = "hit"
            old_for_decision = old_state
        self._set_state(cp, "INPUT", pkt)
        dec = self._decision(pkt, index, action, resched_reason, "in", cp,
                             old_state=old_for_decision, reuse_of=reuse_of)
        self._put(cp, now)
        return dec

    def _local_stack_reset(self, pkt: Packet, now: int):
        """A TCP segment IPVS let through to a VIP reaches the director's own stack, which has no
        socket there and answers with a RST from VIP:vport. That RST leaves through LOCAL_OUT, where
        ip_vs_out_hook matches it (v5.11+) to a DR/TUN entry of the same tuple: OUTPUT rst, NOOUTPUT
        cleared, timer re-armed. (Seen on the oracle: an entry of a deleted server, expired by
        expire_nodest_conn for a non-SYN packet, is left in CLOSE for 10 s.)"""
        if pkt.proto != PROTO_TCP or pkt.tcp_flags & T.TH_RST or not self.variant.dr_reply_inspection:
            return
        if not any(s.addr == pkt.dst for s in self.services):
            return
        for cp in reversed(self.conns):
            if (cp.hashed and not cp.template and (cp.flags & F_FWD_MASK) != FWD_MASQ
                    and cp.proto == pkt.proto and cp.af == pkt.af and cp.vaddr == pkt.dst
                    and cp.vport == pkt.dport and cp.caddr == pkt.src and cp.cport == pkt.sport):
                rst = Packet(ts_ns=now, af=pkt.af, proto=PROTO_TCP, src=pkt.dst, sport=pkt.dport,
                             dst=pkt.src, dport=pkt.sport,
                             tcp_flags=T.TH_RST | (0 if pkt.tcp_flags & T.TH_ACK else T.TH_ACK))
                self._set_state(cp, "OUTPUT", rst)
                self._put(cp, now)
                return

    def _reuse_block(self, cp: Conn, now: int):
        """Section 6.1 (and its history, 6.6). Returns None (keep the entry), "drop", or the
        reason of a reschedule ("reuse_expected" or "dest_weight_0")."""
        v = self.variant
        mode = self.sysctl["conn_reuse_mode"]
        nodest = self.sysctl["expire_nodest_conn"]
        weight0 = nodest and cp.dest is not None and cp.dest.weight == 0
        if v.reuse in ("2015", "2016", "2020") and not mode:
            return None
        resched, old_ct, reason = False, False, None
        if v.reuse == "2015":
            if weight0 or self._is_new_conn_expected(cp, mode):
                reason = "dest_weight_0" if weight0 else "reuse_expected"
                if cp.n_control == 0:
                    self._expire_now(cp, now)
                return reason
            return None
        if v.reuse == "2016":
            if weight0:
                resched, old_ct, reason = True, self._uses_ct_2016(cp), "dest_weight_0"
            elif self._is_new_conn_expected(cp, mode):
                old_ct = self._uses_ct_2016(cp)
                resched = True if cp.n_control == 0 else not old_ct
                reason = "reuse_expected"
            if resched:
                if cp.n_control == 0:
                    self._expire_now(cp, now)
                return "drop" if old_ct else reason
            return None
        # 2020 and 2021 (2020 is gated on mode above)
        if weight0:
            resched, old_ct, reason = True, self._old_ct(cp), "dest_weight_0"
        elif mode and self._is_new_conn_expected(cp, mode):
            old_ct = self._old_ct(cp)
            resched = True if cp.n_control == 0 else not old_ct
            reason = "reuse_expected"
        if resched:
            if not old_ct:
                cp.flags &= ~F_NFCT
            if cp.n_control == 0:
                self._expire_now(cp, now)
            return "drop" if old_ct else reason
        return None

    # ---- running and inspecting -----------------------------------------------------------

    def run(self, packets: Iterable[Packet], commands: Optional[dict] = None) -> list[dict]:
        """Process packets in order; ``commands`` maps a packet index to Commands applied just
        before that packet, at its time (timers due by then have fired). Indexes past the end
        are applied after the last packet."""
        commands = commands or {}
        out = []
        n = 0
        for i, pkt in enumerate(packets):
            for cmd in commands.get(i, ()):
                self.advance(pkt.ts_ns)
                self.apply(cmd)
            out.append(self.process(pkt, i))
            n = i + 1
        for i in sorted(k for k in commands if k >= n):
            for cmd in commands[i]:
                self.apply(cmd)
        return out

    def connections(self, now_ns: Optional[int] = None) -> list[dict]:
        """/proc/net/ip_vs_conn rows (templates included), oldest entry first."""
        now = self.now if now_ns is None else now_ns
        rows = []
        for cp in self.conns:
            expires = max(0, (cp.deadline - now) // NS) if cp.deadline is not None and now is not None else 0
            rows.append({
                "proto": PROTO_NAMES.get(cp.proto, str(cp.proto)), "client": cp.caddr,
                "cport": cp.cport, "vip": cp.vaddr, "vport": cp.vport,
                "rs": cp.daddr, "rport": cp.dport, "state": cp.state_name(),
                "expires": int(expires), "serial": cp.serial, "template": cp.template,
                "fwd": cp.flags & F_FWD_MASK, "noutput": bool(cp.flags & F_NOOUTPUT),
            })
        return rows

    def dest_counters(self) -> dict:
        """{"addr:port": {active, inactive, persist, weight, available}} for every dest ever added
        (a deleted one while it is in the trash too)."""
        out = {}
        names = [d.endpoint() for d in self.all_dests]
        for d in self.all_dests:
            key = d.endpoint() if names.count(d.endpoint()) == 1 else f"{d.svc.name()} -> {d.endpoint()}"
            out[key] = {"active": d.active, "inactive": d.inactive, "persist": d.persist,
                        "weight": d.weight, "available": d.available, "overload": d.overload}
        return out

    def counters(self, rs: str) -> tuple[int, int]:
        """(active, inactive) of the dest ``addr:port`` (the first one with that endpoint)."""
        for d in self.all_dests:
            if d.endpoint() == rs:
                return (d.active, d.inactive)
        raise KeyError(rs)

    def check_invariants(self):
        """Dest counters equal a recount of the entries bound to them; nothing is past due."""
        for d in self.all_dests:
            bound = [c for c in self.conns if c.dest is d]
            act = sum(1 for c in bound if not c.template and not c.flags & F_INACTIVE)
            ina = sum(1 for c in bound if not c.template and c.flags & F_INACTIVE)
            per = sum(1 for c in bound if c.template)
            assert (d.active, d.inactive, d.persist) == (act, ina, per), (d, act, ina, per)
            assert d.refcnt == len(bound), (d, len(bound))
        for c in self.conns:
            assert c.n_control == sum(1 for x in self.conns if x.control is c), c
