"""Configuration: virtual services, real servers, sysctls, timeouts and timed events.

The data model mirrors what ipvsadm and /proc/sys/net/ipv4/vs hold. Rules are read from
ipvsadm's save format (what ``ipvsadm-save -n`` prints); see :func:`parse_rules`.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ipvsflow.marks import MarkRule

# Forwarding methods, with ipvsadm's switches and listing names.
FWD_MASQ, FWD_LOCAL, FWD_TUNNEL, FWD_DROUTE = 0, 1, 2, 3
FWD_NAMES = {FWD_MASQ: "Masq", FWD_LOCAL: "Local", FWD_TUNNEL: "Tunnel", FWD_DROUTE: "Route"}

PROTO_TCP, PROTO_UDP, PROTO_SCTP = 6, 17, 132
PROTO_NAMES = {PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_SCTP: "SCTP"}

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "sh", "dh", "mh")

# Service flags (include/uapi/linux/ip_vs.h): IP_VS_SVC_F_*.
SVC_F_PERSISTENT = 0x0001
SVC_F_HASHED = 0x0002
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008   # sh-fallback / mh-fallback
SVC_F_SCHED2 = 0x0010   # sh-port / mh-port
SVC_F_SCHED3 = 0x0020

# Kernel defaults of the sysctls the engine models (ip_vs_control_net_init_sysctl).
SYSCTL_DEFAULTS = {
    "conn_reuse_mode": 1,
    "expire_nodest_conn": 0,
    "expire_quiescent_template": 0,
    "conntrack": 0,
    "secure_tcp": 0,
    "sloppy_tcp": 0,
    "sloppy_sctp": 0,
    "schedule_icmp": 0,
    "nat_icmp_send": 0,
    "cache_bypass": 0,
}

# ipvsadm --set: tcp (ESTABLISHED), tcpfin (FIN_WAIT), udp; seconds.
DEFAULT_TIMEOUTS = (900, 120, 300)


@dataclass
class RealServer:
    addr: str                   # textual address, IPv4 or IPv6
    port: int
    fwd: int = FWD_DROUTE       # ipvsadm's default forwarding is -g (gatewaying = DR)
    weight: int = 1
    u_threshold: int = 0        # -x
    l_threshold: int = 0        # -y

    @property
    def af(self) -> int:
        return 6 if ":" in self.addr else 4

    def endpoint(self) -> str:
        return f"[{self.addr}]:{self.port}" if self.af == 6 else f"{self.addr}:{self.port}"


@dataclass
class VirtualService:
    proto: int                  # PROTO_TCP / PROTO_UDP / PROTO_SCTP; 0 for fwmark services
    addr: str = ""              # VIP ("" for fwmark services)
    port: int = 0               # 0 = port-0 (any port) service, persistent only
    fwmark: int = 0             # -f MARK (then proto/addr/port are unused)
    af: int = 4                 # address family (fwmark services: -6 selects 6)
    scheduler: str = "wlc"      # ipvsadm's default
    flags: int = 0              # SVC_F_* (persistent, one-packet, sched flags)
    timeout: int = 0            # persistence timeout (-p), seconds; 0 when not persistent
    netmask: int = 0            # persistence netmask as prefix length (32/128 = single client)
    pe: str = ""                # persistence engine (--pe)
    dests: list[RealServer] = field(default_factory=list)   # in the order they were added

    def key(self) -> tuple:
        if self.fwmark:
            return ("fwm", self.fwmark, self.af)
        return (self.proto, ipaddress.ip_address(self.addr), self.port)

    def name(self) -> str:
        if self.fwmark:
            return f"FWM  {self.fwmark}" + (" IPv6" if self.af == 6 else "")
        ep = f"[{self.addr}]:{self.port}" if self.af == 6 else f"{self.addr}:{self.port}"
        return f"{PROTO_NAMES.get(self.proto, str(self.proto)):<4} {ep}"


@dataclass
class Event:
    """A rule change at a time offset (seconds after the first packet)."""
    t: float
    line: str                   # an ipvsadm command line (``-e -t VIP:80 -r RS:80 -g -w 0``) or ``--sysctl k=v``
    source: str = "<event>"     # where it came from, for error messages


@dataclass
class Config:
    services: list[VirtualService] = field(default_factory=list)
    sysctls: dict[str, int] = field(default_factory=lambda: dict(SYSCTL_DEFAULTS))
    timeouts: tuple[int, int, int] = DEFAULT_TIMEOUTS      # tcp, tcpfin, udp (ipvsadm --set)
    kernel: str = "6.1"         # behaviour variant (see ipvsflow.engine.variants)
    events: list[Event] = field(default_factory=list)
    # firewall marks for fwmark services (ipvsflow.marks): iptables/nft/compact mark rules
    marks: list[MarkRule] = field(default_factory=list)

    def copy(self) -> "Config":
        return dataclasses.replace(
            self,
            services=[dataclasses.replace(s, dests=[dataclasses.replace(d) for d in s.dests]) for s in self.services],
            sysctls=dict(self.sysctls),
            events=list(self.events),
            marks=list(self.marks),
        )


class ConfigError(ValueError):
    """A rule, sysctl or event the engine cannot accept; the message names where and why."""


@dataclass
class Command:
    """One ipvsadm command (a rules line, an event, a control-socket request).

    ``op`` is one of: ``add-service`` (-A), ``edit-service`` (-E), ``del-service`` (-D),
    ``add-dest`` (-a), ``edit-dest`` (-e), ``del-dest`` (-d), ``clear`` (-C),
    ``set-timeouts`` (--set), ``sysctl`` (``--sysctl name=value``).
    ``service`` carries the virtual-service identity (proto/addr/port or fwmark/af) and, for
    -A/-E, its settings; ``dest`` the real server for -a/-e/-d. As with ipvsadm, options that a
    line does not give take ipvsadm's defaults (weight 1, forwarding -g, scheduler wlc, ...).
    """
    op: str
    service: Optional[VirtualService] = None
    dest: Optional[RealServer] = None
    timeouts: Optional[tuple[int, int, int]] = None
    sysctl: Optional[tuple[str, int]] = None
    line: str = ""
    lineno: int = 0
    source: str = "<rules>"


# ---------------------------------------------------------------------------------------------
# ipvsadm command lines

_OPS = {
    "-A": "add-service", "--add-service": "add-service",
    "-E": "edit-service", "--edit-service": "edit-service",
    "-D": "del-service", "--delete-service": "del-service",
    "-C": "clear", "--clear": "clear",
    "-a": "add-dest", "--add-server": "add-dest",
    "-e": "edit-dest", "--edit-server": "edit-dest",
    "-d": "del-dest", "--delete-server": "del-dest",
    "--set": "set-timeouts",
    "--sysctl": "sysctl",
}
_SERVICE_OPTS = {"-t": PROTO_TCP, "--tcp-service": PROTO_TCP, "-u": PROTO_UDP, "--udp-service": PROTO_UDP,
                 "--sctp-service": PROTO_SCTP}
_FWD_OPTS = {"-g": FWD_DROUTE, "--gatewaying": FWD_DROUTE, "-m": FWD_MASQ, "--masquerading": FWD_MASQ,
             "-i": FWD_TUNNEL, "--ipip": FWD_TUNNEL}
_SCHED_FLAGS = {"sh-fallback": SVC_F_SCHED1, "mh-fallback": SVC_F_SCHED1, "flag-1": SVC_F_SCHED1,
                "sh-port": SVC_F_SCHED2, "mh-port": SVC_F_SCHED2, "flag-2": SVC_F_SCHED2,
                "flag-3": SVC_F_SCHED3}
SYSCTL_RANGES = {"conn_reuse_mode": (0, 3), "secure_tcp": (0, 3)}
DEFAULT_PERSISTENT_TIMEOUT = 300


def _err(cmd_src: str, lineno: int, line: str, msg: str) -> ConfigError:
    where = f"{cmd_src}:{lineno}: " if lineno else (f"{cmd_src}: " if cmd_src else "")
    return ConfigError(f"{where}{msg} (in: {line.strip()!r})" if line.strip() else f"{where}{msg}")


def parse_port(text: str) -> int:
    if text.isdigit():
        port = int(text)
    else:
        import socket
        try:
            port = socket.getservbyname(text)
        except OSError:
            raise ValueError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0..65535")
    return port


def parse_endpoint(text: str, default_port: Optional[int] = None) -> tuple[str, int]:
    """``10.0.0.1:80``, ``[2001:db8::1]:80``, or an address alone when a default port applies."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"invalid address {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid address {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:          # bare IPv6 without a port
        host, port_text = text, None
    else:
        host, port_text = text, None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid address {host!r} (only numeric addresses are accepted)") from None
    if port_text is None or port_text == "":
        if default_port is None:
            raise ValueError(f"missing port in {text!r}")
        port = default_port
    else:
        port = parse_port(port_text)
    return str(addr), port


def _netmask_prefix(text: str, af: int) -> int:
    try:
        if text.isdigit():
            plen = int(text)
        else:
            plen = ipaddress.ip_network(f"0.0.0.0/{text}").prefixlen
    except ValueError:
        raise ValueError(f"invalid netmask {text!r}") from None
    if not 0 <= plen <= (32 if af == 4 else 128):
        raise ValueError(f"netmask /{plen} out of range for IPv{af}")
    return plen


def _int_opt(name: str, text: Optional[str], lo: int, hi: int) -> int:
    if text is None:
        raise ValueError(f"option {name} needs a value")
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"option {name}: {text!r} is not a number") from None
    if not lo <= v <= hi:
        raise ValueError(f"option {name}: {v} out of range {lo}..{hi}")
    return v


def parse_sysctl(text: str) -> tuple[str, int]:
    """``conn_reuse_mode=2`` (also ``net.ipv4.vs.conn_reuse_mode=2``) -> (name, value)."""
    if "=" not in text:
        raise ConfigError(f"sysctl {text!r}: expected name=value")
    name, _, value = text.partition("=")
    name = name.strip()
    for prefix in ("net.ipv4.vs.", "net/ipv4/vs/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name not in SYSCTL_DEFAULTS:
        known = ", ".join(sorted(SYSCTL_DEFAULTS))
        raise ConfigError(f"unknown sysctl {name!r} (known: {known})")
    try:
        v = int(value.strip())
    except ValueError:
        raise ConfigError(f"sysctl {name}: {value.strip()!r} is not an integer") from None
    lo, hi = SYSCTL_RANGES.get(name, (0, 1))
    if not lo <= v <= hi:
        raise ConfigError(f"sysctl {name}: {v} out of range {lo}..{hi}")
    return name, v


def parse_command(line: str, lineno: int = 0, source: str = "<rules>") -> Optional[Command]:
    """Parse one ipvsadm command line (save format, optionally starting with ``ipvsadm``).

    Returns None for blank and comment lines. Raises ConfigError naming the line and the problem.
    """
    import shlex

    text = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
    if not text:
        return None
    try:
        toks = shlex.split(text)
    except ValueError as exc:
        raise _err(source, lineno, line, f"cannot split line: {exc}") from None
    if toks and toks[0] in ("ipvsadm", "/sbin/ipvsadm", "/usr/sbin/ipvsadm"):
        toks = toks[1:]
    if not toks:
        return None
    try:
        return _parse_tokens(toks, line, lineno, source)
    except ConfigError:
        raise
    except ValueError as exc:
        raise _err(source, lineno, line, str(exc)) from None


def _parse_tokens(toks: list[str], line: str, lineno: int, source: str) -> Command:
    op = None
    svc_proto = None
    svc_ep = None
    fwmark = None
    ipv6_fwmark = False
    sched = None
    persistent = None
    netmask = None
    pe = ""
    flags = 0
    rs_ep = None
    fwd = None
    weight = None
    u_thr = None
    l_thr = None
    set_args: list[str] = []
    sysctl_arg = None
    i = 0

    def value() -> Optional[str]:
        nonlocal i
        if i + 1 < len(toks):
            i += 1
            return toks[i]
        return None

    while i < len(toks):
        t = toks[i]
        if "=" in t and t.startswith("--") and t.split("=", 1)[0] in (
                "--scheduler", "--weight", "--persistent", "--netmask", "--sched-flags", "--u-threshold",
                "--l-threshold", "--real-server", "--tcp-service", "--udp-service", "--sctp-service",
                "--fwmark-service", "--pe", "--sysctl"):
            k, v = t.split("=", 1)
            toks[i:i + 1] = [k, v]
            t = k
        if t in _OPS:
            if op is not None:
                raise ValueError(f"more than one command ({t} after {op})")
            op = _OPS[t]
            if op == "set-timeouts":
                for _ in range(3):
                    v = value()
                    if v is None:
                        raise ValueError("--set needs three values: tcp tcpfin udp")
                    set_args.append(v)
            elif op == "sysctl":
                sysctl_arg = value()
                if sysctl_arg is None:
                    raise ValueError("--sysctl needs name=value")
        elif t in _SERVICE_OPTS:
            svc_proto = _SERVICE_OPTS[t]
            svc_ep = value()
            if svc_ep is None:
                raise ValueError(f"option {t} needs an address")
        elif t in ("-f", "--fwmark-service"):
            fwmark = _int_opt(t, value(), 1, 0xFFFFFFFF)
        elif t in ("-6", "--ipv6"):
            ipv6_fwmark = True
        elif t in ("-s", "--scheduler"):
            sched = value()
            if sched is None:
                raise ValueError(f"option {t} needs a scheduler name")
            if sched not in SCHEDULERS:
                raise ValueError(f"unknown scheduler {sched!r} (known: {', '.join(SCHEDULERS)})")
        elif t in ("-p", "--persistent"):
            persistent = DEFAULT_PERSISTENT_TIMEOUT
            if i + 1 < len(toks) and toks[i + 1].isdigit():
                persistent = _int_opt(t, value(), 1, 0x7FFFFFFF)
        elif t in ("-M", "--netmask"):
            netmask = value()
            if netmask is None:
                raise ValueError(f"option {t} needs a netmask")
        elif t == "--pe":
            pe = value() or ""
            if pe != "sip":
                raise ValueError(f"unknown persistence engine {pe!r} (known: sip)")
        elif t in ("-b", "--sched-flags"):
            v = value()
            if v is None:
                raise ValueError(f"option {t} needs flags")
            for name in v.split(","):
                if name not in _SCHED_FLAGS:
                    raise ValueError(f"unknown scheduler flag {name!r} (known: {', '.join(_SCHED_FLAGS)})")
                flags |= _SCHED_FLAGS[name]
        elif t in ("-o", "--ops"):
            flags |= SVC_F_ONEPACKET
        elif t in ("-r", "--real-server"):
            rs_ep = value()
            if rs_ep is None:
                raise ValueError(f"option {t} needs an address")
        elif t in _FWD_OPTS:
            fwd = _FWD_OPTS[t]
        elif t in ("-w", "--weight"):
            weight = _int_opt(t, value(), 0, 65535)
        elif t in ("-x", "--u-threshold"):
            u_thr = _int_opt(t, value(), 0, 0x7FFFFFFF)
        elif t in ("-y", "--l-threshold"):
            l_thr = _int_opt(t, value(), 0, 0x7FFFFFFF)
        elif t in ("--tun-type", "--tun-port"):
            v = value()
            if t == "--tun-type" and v not in ("ipip", "gue", "gre"):
                raise ValueError(f"unknown tunnel type {v!r} (known: ipip, gue, gre)")
        elif t in ("--tun-nocsum", "--tun-csum", "--tun-remcsum", "-n", "--numeric"):
            pass
        else:
            raise ValueError(f"unknown option {t!r}")
        i += 1

    cmd = Command(op=op or "", line=line.rstrip("\n"), lineno=lineno, source=source)
    if op is None:
        raise ValueError("no command given (expected -A, -E, -D, -a, -e, -d, -C or --set)")
    if op == "clear":
        return cmd
    if op == "set-timeouts":
        vals = tuple(_int_opt("--set", v, 0, 0x7FFFFFFF) for v in set_args)
        cmd.timeouts = vals  # type: ignore[assignment]
        return cmd
    if op == "sysctl":
        cmd.sysctl = parse_sysctl(sysctl_arg or "")
        return cmd

    if fwmark is not None:
        if svc_proto is not None:
            raise ValueError("give either a service address (-t/-u/--sctp-service) or -f, not both")
        svc = VirtualService(proto=0, fwmark=fwmark, af=6 if ipv6_fwmark else 4)
    elif svc_proto is not None:
        addr, port = parse_endpoint(svc_ep or "", default_port=0)
        svc = VirtualService(proto=svc_proto, addr=addr, port=port, af=6 if ":" in addr else 4)
    else:
        raise ValueError("no virtual service given (-t, -u, --sctp-service or -f)")

    if op in ("add-service", "edit-service"):
        if rs_ep is not None:
            raise ValueError("-r belongs to -a/-e/-d, not to a service command")
        svc.scheduler = sched or "wlc"
        svc.flags = flags
        if persistent is not None:
            svc.flags |= SVC_F_PERSISTENT
            svc.timeout = persistent
        if netmask is not None:
            if persistent is None:
                raise ValueError("-M (netmask) needs -p (persistent)")
            svc.netmask = _netmask_prefix(netmask, svc.af)
        else:
            svc.netmask = 32 if svc.af == 4 else 128
        svc.pe = pe
        if not svc.fwmark and svc.port == 0 and persistent is None:
            raise ValueError("port 0 (any port) is only valid for persistent services (-p)")
        if svc.flags & SVC_F_ONEPACKET and svc.proto != PROTO_UDP:
            raise ValueError("-o (one-packet scheduling) is only valid for UDP services")
        cmd.service = svc
        return cmd
    if op == "del-service":
        cmd.service = svc
        return cmd

    # real-server commands
    if any(v is not None for v in (sched, persistent, netmask)) or flags:
        raise ValueError("scheduler options (-s, -p, -M, -b, -o) belong to -A/-E, not to a real-server command")
    if rs_ep is None:
        raise ValueError("no real server given (-r)")
    default_port = svc.port if not svc.fwmark else 0
    raddr, rport = parse_endpoint(rs_ep, default_port=default_port)
    if (":" in raddr) != (svc.af == 6) and fwd != FWD_TUNNEL:
        raise ValueError(f"real server {raddr} and the service differ in address family")
    dest = RealServer(addr=raddr, port=rport, fwd=FWD_DROUTE if fwd is None else fwd,
                      weight=1 if weight is None else weight,
                      u_threshold=u_thr or 0, l_threshold=l_thr or 0)
    # ipvsadm (for -a and -e only): with gatewaying or tunnelling the real server's port is the
    # service's port. A -d names the server by the address:port it was added with.
    if op in ("add-dest", "edit-dest") and not svc.fwmark and dest.fwd in (FWD_DROUTE, FWD_TUNNEL):
        dest.port = svc.port
    if dest.l_threshold and dest.u_threshold and dest.l_threshold > dest.u_threshold:
        raise ValueError("lower threshold (-y) above upper threshold (-x)")
    cmd.service = svc
    cmd.dest = dest
    return cmd


def _find_service(cfg: Config, svc: VirtualService) -> Optional[VirtualService]:
    key = svc.key()
    for s in cfg.services:
        if s.key() == key:
            return s
    return None


def apply_command(cfg: Config, cmd: Command) -> None:
    """Apply one command to a Config (the state ipvsadm would leave in the kernel)."""
    def fail(msg: str) -> ConfigError:
        return _err(cmd.source, cmd.lineno, cmd.line, msg)

    def label(svc: VirtualService) -> str:
        return " ".join(svc.name().split())

    if cmd.op == "clear":
        cfg.services.clear()
    elif cmd.op == "set-timeouts":
        assert cmd.timeouts is not None
        cfg.timeouts = tuple(new or old for new, old in zip(cmd.timeouts, cfg.timeouts))  # type: ignore[assignment]
    elif cmd.op == "sysctl":
        assert cmd.sysctl is not None
        cfg.sysctls[cmd.sysctl[0]] = cmd.sysctl[1]
    elif cmd.op == "add-service":
        if _find_service(cfg, cmd.service) is not None:
            raise fail(f"service {label(cmd.service)} already exists")
        cfg.services.append(dataclasses.replace(cmd.service, dests=[]))
    elif cmd.op in ("edit-service", "del-service"):
        s = _find_service(cfg, cmd.service)
        if s is None:
            raise fail(f"no such service {label(cmd.service)}")
        if cmd.op == "del-service":
            cfg.services.remove(s)
        else:
            for f in ("scheduler", "flags", "timeout", "netmask", "pe"):
                setattr(s, f, getattr(cmd.service, f))
    else:
        s = _find_service(cfg, cmd.service)
        if s is None:
            raise fail(f"no such service {label(cmd.service)}")
        d = cmd.dest
        existing = next((x for x in s.dests if x.addr == d.addr and x.port == d.port), None)
        if cmd.op == "add-dest":
            if existing is not None:
                raise fail(f"real server {d.endpoint()} already exists in {label(s)}")
            s.dests.append(dataclasses.replace(d))
        elif existing is None:
            raise fail(f"no real server {d.endpoint()} in {label(s)}")
        elif cmd.op == "edit-dest":
            existing.fwd, existing.weight = d.fwd, d.weight
            existing.u_threshold, existing.l_threshold = d.u_threshold, d.l_threshold
        else:
            s.dests.remove(existing)


def parse_rules(text: str, source: str = "<rules>", base: Optional[Config] = None) -> Config:
    """Rules in ipvsadm save format (``ipvsadm-save -n``), one command per line -> Config.

    A keepalived configuration (``virtual_server`` blocks) is recognised and read as well.
    """
    cfg = base.copy() if base is not None else Config()
    if _looks_like_keepalived(text):
        for cmd in parse_keepalived(text, source):
            apply_command(cfg, cmd)
        return cfg
    from ipvsflow.marks import MarkReader
    marks = MarkReader(source, base=cfg.marks)     # iptables / nft / --mark lines (fwmark services)
    for lineno, line in enumerate(text.splitlines(), 1):
        if marks.feed(line, lineno):
            continue
        cmd = parse_command(line, lineno, source)
        if cmd is not None:
            apply_command(cfg, cmd)
    cfg.marks = marks.finish()
    return cfg


def load_rules(path: str, base: Optional[Config] = None) -> Config:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such rules file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a rules file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    return parse_rules(text, source=path, base=base)


# ---------------------------------------------------------------------------------------------
# timed events

def parse_time_offset(text: str) -> float:
    """``+12.5s``, ``30``, ``+2m``, ``1500ms`` -> seconds."""
    t = text.strip().lstrip("+")
    mult = 1.0
    for suffix, m in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix):
            t, mult = t[: -len(suffix)], m
            break
    try:
        v = float(t) * mult
    except ValueError:
        raise ValueError(f"invalid event time {text!r} (expected e.g. +12.5s)") from None
    if v < 0 or v != v:
        raise ValueError(f"invalid event time {text!r}: must be >= 0")
    return v


def parse_event(text: str, lineno: int = 0, source: str = "<event>") -> Optional[tuple[Event, Command]]:
    """``+12.5s -e -t 10.0.0.100:80 -r 10.0.1.2:80 -g -w 0`` -> (Event, Command)."""
    body = text.split("#", 1)[0].strip() if not text.lstrip().startswith("#") else ""
    if not body:
        return None
    first, _, rest = body.partition(" ")
    try:
        t = parse_time_offset(first)
    except ValueError as exc:
        raise _err(source, lineno, text, str(exc)) from None
    cmd = parse_command(rest, lineno, source)
    if cmd is None:
        raise _err(source, lineno, text, "event has a time but no command")
    return Event(t=t, line=rest.strip(), source=source), cmd


def load_events(path: str) -> list[tuple[Event, Command]]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror.lower() if exc.strerror else exc}") from None
    out = []
    for lineno, line in enumerate(lines, 1):
        ev = parse_event(line, lineno, path)
        if ev is not None:
            out.append(ev)
    return out


# ---------------------------------------------------------------------------------------------
# keepalived virtual_server blocks (keepalived.conf(5)), the second configuration dialect

def _looks_like_keepalived(text: str) -> bool:
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("virtual_server ") or s.startswith("virtual_server_group "):
            return True
    return False


def _kv_tokens(text: str) -> list[tuple[str, int]]:
    toks = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for cut in ("#", "!"):
            line = line.split(cut, 1)[0]
        line = line.replace("{", " { ").replace("}", " } ")
        toks.extend((t, lineno) for t in line.split())
    return toks


def _kv_block(toks: list[tuple[str, int]], i: int, source: str) -> tuple[list, int]:
    """Parse ``{ ... }`` starting at toks[i] == '{' into [(key, [args], lineno, sub-block or None)]."""
    items = []
    i += 1
    while i < len(toks):
        t, ln = toks[i]
        if t == "}":
            return items, i + 1
        if t == "{":
            raise ConfigError(f"{source}:{ln}: unexpected '{{'")
        args = []
        j = i + 1
        while j < len(toks) and toks[j][1] == ln and toks[j][0] not in ("{", "}"):
            args.append(toks[j][0])
            j += 1
        sub = None
        if j < len(toks) and toks[j][0] == "{":
            sub, j = _kv_block(toks, j, source)
        items.append((t, args, ln, sub))
        i = j
    raise ConfigError(f"{source}: unterminated block (missing '}}')")


_KA_METHODS = {"NAT": FWD_MASQ, "DR": FWD_DROUTE, "TUN": FWD_TUNNEL}


def parse_keepalived(text: str, source: str = "<keepalived>") -> list[Command]:
    toks = _kv_tokens(text)
    top = []
    i = 0
    while i < len(toks):
        t, ln = toks[i]
        args = []
        j = i + 1
        while j < len(toks) and toks[j][1] == ln and toks[j][0] not in ("{", "}"):
            args.append(toks[j][0])
            j += 1
        sub = None
        if j < len(toks) and toks[j][0] == "{":
            sub, j = _kv_block(toks, j, source)
        elif j < len(toks) and toks[j][0] == "}":
            raise ConfigError(f"{source}:{toks[j][1]}: unbalanced '}}'")
        top.append((t, args, ln, sub))
        i = j
    cmds: list[Command] = []
    for key, args, ln, sub in top:
        if key == "virtual_server_group":
            raise ConfigError(f"{source}:{ln}: virtual_server_group is not supported; list the services directly")
        if key != "virtual_server":
            continue            # global_defs, vrrp_instance, ...: not ours
        if sub is None:
            raise ConfigError(f"{source}:{ln}: virtual_server without a {{ }} block")
        cmds.extend(_ka_service(args, sub, ln, source))
    return cmds


def _ka_service(args: list[str], block: list, ln: int, source: str) -> list[Command]:
    def fail(msg: str, at: int = ln) -> ConfigError:
        return ConfigError(f"{source}:{at}: {msg}")

    svc = VirtualService(proto=PROTO_TCP)
    if len(args) == 2 and args[0] == "fwmark":
        svc.proto, svc.fwmark = 0, _ka_int(args[1], "fwmark", ln, source)
    elif len(args) == 2:
        try:
            svc.addr = str(ipaddress.ip_address(args[0]))
            svc.port = parse_port(args[1])
        except ValueError as exc:
            raise fail(f"virtual_server: {exc}") from None
        svc.af = 6 if ":" in svc.addr else 4
    else:
        raise fail("virtual_server needs 'ADDRESS PORT' or 'fwmark N'")
    method = FWD_MASQ
    persistence = None
    granularity = None
    reals = []
    for key, a, kln, sub in block:
        if key in ("lb_algo", "lvs_sched"):
            if not a or a[0] not in SCHEDULERS:
                raise fail(f"unknown scheduler {a[0] if a else ''!r}", kln)
            svc.scheduler = a[0]
        elif key in ("lb_kind", "lvs_method"):
            if not a or a[0].upper() not in _KA_METHODS:
                raise fail(f"unknown forwarding method {a[0] if a else ''!r} (NAT, DR or TUN)", kln)
            method = _KA_METHODS[a[0].upper()]
        elif key == "protocol":
            p = (a[0].upper() if a else "")
            if p not in ("TCP", "UDP", "SCTP"):
                raise fail(f"unknown protocol {p!r}", kln)
            if not svc.fwmark:
                svc.proto = {"TCP": PROTO_TCP, "UDP": PROTO_UDP, "SCTP": PROTO_SCTP}[p]
        elif key == "persistence_timeout":
            persistence = _ka_int(a[0] if a else "", key, kln, source)
        elif key == "persistence_granularity":
            granularity = a[0] if a else ""
        elif key in ("ops", "one_packet"):
            svc.flags |= SVC_F_ONEPACKET
        elif key in _SCHED_FLAGS or key.replace("_", "-") in _SCHED_FLAGS:
            svc.flags |= _SCHED_FLAGS[key.replace("_", "-")]
        elif key == "real_server":
            reals.append((a, kln, sub or []))
        # delay_loop, quorum, sorry_server, health checkers...: not modelled
    if persistence is not None:
        svc.flags |= SVC_F_PERSISTENT
        svc.timeout = persistence
    svc.netmask = 32 if svc.af == 4 else 128
    if granularity is not None:
        try:
            svc.netmask = _netmask_prefix(granularity, svc.af)
        except ValueError as exc:
            raise fail(str(exc)) from None
    cmds = [Command(op="add-service", service=svc, line=f"virtual_server {' '.join(args)}", lineno=ln, source=source)]
    for a, rln, sub in reals:
        if len(a) != 2:
            raise fail("real_server needs 'ADDRESS PORT'", rln)
        try:
            addr = str(ipaddress.ip_address(a[0]))
            port = parse_port(a[1])
        except ValueError as exc:
            raise fail(f"real_server: {exc}", rln) from None
        d = RealServer(addr=addr, port=port, fwd=method)
        for key, v, vln, _ in sub:
            if key == "weight":
                d.weight = _ka_int(v[0] if v else "", key, vln, source, hi=65535)
            elif key == "uthreshold":
                d.u_threshold = _ka_int(v[0] if v else "", key, vln, source)
            elif key == "lthreshold":
                d.l_threshold = _ka_int(v[0] if v else "", key, vln, source)
            elif key in ("lvs_method", "lb_kind") and v and v[0].upper() in _KA_METHODS:
                d.fwd = _KA_METHODS[v[0].upper()]
        if not svc.fwmark and d.fwd in (FWD_DROUTE, FWD_TUNNEL):
            d.port = svc.port
        cmds.append(Command(op="add-dest", service=svc, dest=d, line=f"real_server {' '.join(a)}",
                            lineno=rln, source=source))
    return cmds


def _ka_int(text: str, what: str, ln: int, source: str, hi: int = 0x7FFFFFFF) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ConfigError(f"{source}:{ln}: {what}: {text!r} is not a number") from None
    if not 0 <= v <= hi:
        raise ConfigError(f"{source}:{ln}: {what}: {v} out of range 0..{hi}")
    return v


def format_rules(cfg: Config) -> str:
    """The Config in ipvsadm save format (``ipvsadm -S -n``)."""
    out = []
    sw = {FWD_MASQ: "-m", FWD_TUNNEL: "-i", FWD_DROUTE: "-g", FWD_LOCAL: "-g"}
    rev_flags = {SVC_F_SCHED1: "flag-1", SVC_F_SCHED2: "flag-2", SVC_F_SCHED3: "flag-3"}
    for s in cfg.services:
        if s.fwmark:
            ident = f"-f {s.fwmark}" + (" -6" if s.af == 6 else "")
        else:
            opt = {PROTO_TCP: "-t", PROTO_UDP: "-u", PROTO_SCTP: "--sctp-service"}[s.proto]
            ep = f"[{s.addr}]:{s.port}" if s.af == 6 else f"{s.addr}:{s.port}"
            ident = f"{opt} {ep}"
        line = f"-A {ident} -s {s.scheduler}"
        if s.flags & SVC_F_PERSISTENT:
            line += f" -p {s.timeout}"
            full = 32 if s.af == 4 else 128
            if s.netmask != full:
                line += " -M " + (str(ipaddress.ip_network(f"0.0.0.0/{s.netmask}").netmask) if s.af == 4 else str(s.netmask))
        if s.pe:
            line += f" --pe {s.pe}"
        if s.flags & SVC_F_ONEPACKET:
            line += " -o"
        names = []
        for bit, generic in rev_flags.items():
            if s.flags & bit:
                if s.scheduler in ("sh", "mh") and bit != SVC_F_SCHED3:
                    names.append(f"{s.scheduler}-" + ("fallback" if bit == SVC_F_SCHED1 else "port"))
                else:
                    names.append(generic)
        if names:
            line += " -b " + ",".join(names)
        out.append(line)
        for d in s.dests:
            out.append(f"-a {ident} -r {d.endpoint()} {sw[d.fwd]} -w {d.weight}"
                       + (f" -x {d.u_threshold}" if d.u_threshold else "")
                       + (f" -y {d.l_threshold}" if d.l_threshold else ""))
    return "\n".join(out) + ("\n" if out else "")
