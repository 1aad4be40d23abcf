"""Traffic synthesizer: seeded, vectorised generation of realistic captures.

Clients (IPv4 and IPv6) open TCP connections, SCTP associations and UDP flows to virtual
services, with Poisson arrivals, narrow ephemeral port ranges (so ports are reused while IPVS
still holds the old entry), configurable durations and payloads, several close styles,
retransmitted SYN/INIT and long-lived connections. The result is a classic pcap (nanosecond
timestamps) seen either in front of the director (``view="both"``: client -> VIP and the
replies VIP -> client) or as a DR director sees it (``view="dr"``: client -> VIP only). Every
header is valid: IPv4 header, TCP and UDP checksums, SCTP CRC32c, per-connection ISNs (a reused
4-tuple gets a later ISN, as Linux's clock-driven ISNs do), IP lengths.

The synthesizer can also write the matching ipvsadm rules (save format) and timed events, so
a scenario such as "a server joins while clients reuse ports" is one command.

How it is built: per-connection parameters are numpy arrays; each connection expands to its
packets by arithmetic on the packet's position in the connection (handshake, request/response
rounds, close); sequence and acknowledgment numbers are segmented prefix sums of the bytes
each side sent; all packets are sorted by time (times strictly increase within a connection,
so its order survives); frames are assembled in large chunks: a repeating payload pattern is
laid down once, then fixed-size header rows (structured arrays, one per header layout, filled
column by column) are copied into place. Ones' complement checksums are sums over the header
words plus a closed form for the pattern bytes. Port allocation, ISN ordering, the row copy and
CRC32c are small loops in :mod:`ipvsflow._synth`.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

try:
    from ipvsflow import _synth as _kern
except ImportError as exc:   # pragma: no cover - only without a build
    raise ImportError(
        "ipvsflow._synth is not built: run `python setup.py build_ext --inplace` "
        "(or install the package)") from exc

__all__ = [
    "SynthSpec", "SynthEvent", "SynthResult", "synthesize", "preset", "PRESETS",
    "rules_text", "events_text", "parse_vip", "parse_port_range", "synthesize_preset",
    "client_address",
    "add_arguments", "run",
]

# ---------------------------------------------------------------------------------------------
# constants

NS = 1_000_000_000
US = 1_000
MS = 1_000_000

PROTO_NUM = {"tcp": 6, "udp": 17, "sctp": 132}
P_TCP, P_UDP, P_SCTP = 0, 1, 2          # internal protocol codes (index into PROTOS)
PROTOS = ("tcp", "udp", "sctp")

CLOSE_STYLES = ("none", "fin", "server-fin", "rst", "server-rst")
C_NONE, C_FIN, C_SFIN, C_RST, C_SRST = range(5)

# TCP flags
F_FIN, F_SYN, F_RST, F_PSH, F_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# SCTP chunk types
CH_DATA, CH_INIT, CH_INIT_ACK, CH_SACK, CH_ABORT = 0, 1, 2, 3, 6
CH_SHUTDOWN, CH_SHUTDOWN_ACK, CH_COOKIE_ECHO, CH_COOKIE_ACK, CH_SHUTDOWN_COMPLETE = 7, 8, 10, 11, 14

LINKTYPES = {"eth": 1, "raw": 101}
MAC_ROUTER = np.array([0x02, 0x00, 0x00, 0x00, 0x01, 0x01], np.uint8)     # client side next hop
MAC_DIRECTOR = np.array([0x02, 0x00, 0x00, 0x00, 0x02, 0x02], np.uint8)   # the VIP's owner

TCP_WINDOW = 64240
SCTP_RWND = 106496
SEG_GAP_NS = 12 * US          # back-to-back segments from one side
SYN_RTO_NS = NS               # TCP initial RTO (RFC 6298): 1 s, doubling
INIT_RTO_NS = 3 * NS          # SCTP RTO.Initial: 3 s, doubling
MAX_RETX = 5

MAX_CONNS = 10_000_000
MAX_PACKETS = 50_000_000       # both directions, before the view (~130 bytes of memory per packet)
# Work in pieces whose arrays stay a few MB: they are recycled by the allocator instead of
# being faulted in afresh, which costs more than the arithmetic on them.
CHUNK_PACKETS = 1 << 16       # frames assembled per buffer
CHUNK_BYTES = 16 << 20
EXPAND_CONNS = 1 << 14        # connections expanded to packets at a time

_U64 = np.uint64

# ---------------------------------------------------------------------------------------------
# spec


@dataclass
class SynthEvent:
    """A rule change at ``t`` seconds after the first packet, for the events file.

    ``op``: ``add`` (-a), ``edit`` (-e) or ``del`` (-d); ``server``: 1-based real-server number
    (real server k is ``rs_base + k - 1``; numbers above ``servers`` are servers that join);
    ``vip``: index into the spec's VIP list, or None for every VIP.
    """
    t: float
    op: str
    server: int
    weight: int = 1
    vip: Optional[int] = None


@dataclass
class SynthSpec:
    """Everything that defines a synthetic capture. Same spec and seed -> same bytes."""
    seed: int = 1
    duration: float = 60.0                  # seconds during which connections arrive
    rate: float = 40.0                      # new connections per second (Poisson)
    conns: Optional[int] = None             # exact number of connections instead of rate*duration
    packets: Optional[int] = None           # exact number of packets in the file (scales rounds)
    arrival_window: Optional[float] = None  # arrivals in [0, window) (default: duration)
    bursts: list = field(default_factory=list)   # (start s, length s, extra conns/s)
    start_time: float = 1_700_000_000.0     # epoch seconds of t = 0
    # clients
    clients: int = 20
    ipv6_share: float = 0.0                 # fraction of clients that are IPv6
    client_base: str = "198.18.0.1"         # first IPv4 client (RFC 2544 benchmark range)
    client_base6: str = "2001:db8:1::1"     # first IPv6 client
    port_range: tuple = (32768, 60999)      # ephemeral ports, inclusive (Linux default)
    port_alloc: str = "seq"                 # seq (incrementing search, as Linux) | random
    port_hold: float = 0.0                  # s a port stays unusable after a client-first close
    client_rtt: float = 0.020               # s, mean client <-> capture point round trip
    server_rtt: float = 0.0005              # s, mean capture point <-> server round trip
    # services
    vips: list = field(default_factory=lambda: ["10.0.0.100:80/tcp"])
    udp_share: Optional[float] = None       # protocol mix; None: spread over the VIP list
    sctp_share: Optional[float] = None
    # connections
    conn_duration: float = 0.5              # s, mean (first to last packet, without SYN retries)
    duration_dist: str = "lognormal"        # lognormal | exp | fixed
    rounds: float = 1.5                     # mean request/response exchanges per connection
    request_bytes: float = 300.0            # mean request size (lognormal)
    response_bytes: float = 1500.0          # mean response size (lognormal)
    close_mix: dict = field(default_factory=lambda: {"fin": 0.6, "server-fin": 0.25, "rst": 0.1,
                                                     "server-rst": 0.05})
    syn_retx: float = 0.01                  # probability that a SYN/INIT is retransmitted
    long_lived: float = 0.0                 # fraction of connections open to the end
    long_lived_interval: float = 2.0        # s, mean think time between their exchanges
    # capture
    view: str = "both"                      # both | dr
    linktype: str = "eth"                   # eth | raw
    snaplen: int = 262144
    # rules and events for the scenario
    servers: int = 3
    scheduler: str = "rr"
    fwd: str = "g"                          # g (DR) | m (NAT) | i (tunnel)
    rs_base: str = "10.0.1.1"
    rs_base6: str = "2001:db8:0:1::1"
    rs_port: Optional[int] = None           # None: the VIP's port
    events: list = field(default_factory=list)   # SynthEvent or dict or (t, op, server[, weight])
    preset: str = ""                        # name of the preset it came from (informational)

    @classmethod
    def from_dict(cls, d: dict) -> "SynthSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown synth setting(s): {', '.join(bad)}")
        if d.get("preset"):
            return preset(d["preset"], **{k: v for k, v in d.items() if k != "preset"})
        return dataclasses.replace(cls(), **d)


@dataclass
class SynthResult:
    path: Path
    packets: int                  # records in the file
    connections: int              # connections with at least one packet in the file
    reused_ports: int             # connections on a (proto, client, port, VIP, vport) seen earlier
    duration: float               # s from the first to the last packet
    bytes: int                    # file size
    elapsed: float                # s spent generating and writing
    exhausted: int = 0            # connections that found every ephemeral port busy (not sent)
    protocols: dict = field(default_factory=dict)   # connections per protocol
    rules_path: Optional[Path] = None
    events_path: Optional[Path] = None
    conn_table: Optional[np.ndarray] = None          # ground truth, one row per connection

    @property
    def mpps(self) -> float:
        return self.packets / self.elapsed / 1e6 if self.elapsed > 0 else float("inf")

    def summary(self) -> str:
        ex = f", {self.exhausted:,} refused (ports exhausted)" if self.exhausted else ""
        return (f"wrote {self.path}: {self.packets:,} packets, {self.connections:,} connections"
                f" ({self.reused_ports:,} on reused ports{ex}), {self.duration:.1f} s,"
                f" {_human_bytes(self.bytes)}, {self.mpps:.2f} Mpps written")


def _human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# ---------------------------------------------------------------------------------------------
# presets

def _ev(t, op, server, weight=1, vip=None):
    return SynthEvent(t, op, server, weight, vip)


PRESETS = {
    "default": "demo: ~2,100 TCP connections over 60 s to one VIP, 20 clients with 32 ports each "
               "(ports reused from ~18 s on); rr over 3 DR servers, a 4th joins at +20 s, "
               "server 2 goes to weight 0 at +40 s",
    "kube": "kube-proxy-like: one node address, 16 source ports, 100 short HTTP connections/s "
            "to a ClusterIP (NAT), heavy TIME_WAIT reuse; a pod rollout: new pod at +10 s, old "
            "pod weight 0 at +10 s and deleted at +25 s",
    "reuse-burst": "steady load from 5 clients with 16 ports each, then a 5 s burst of 400 "
                   "connections/s at +15 s (every port reused) while a 4th server joins",
    "sctp": "SCTP associations (Diameter port 3868, IPv4 and IPv6) with INIT reuse, "
            "both shutdown directions, ABORTs, retransmitted INITs, long-lived associations",
    "udp": "UDP request/response flows (IPv4 and IPv6, port 9999), random source ports",
    "mixed": "TCP, UDP and SCTP over IPv4 and IPv6, every close style, retransmitted SYNs, "
             "long-lived connections, narrow port ranges",
    "bench": "benchmark capture, DR view: --packets N over --conns M concurrent connections "
             "(default 1M packets / 100k connections; scales to 10M / 1M)",
}


def preset(name: str, **overrides) -> SynthSpec:
    """The named scenario as a SynthSpec, with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    if name == "default":
        s = SynthSpec(seed=1, duration=60.0, rate=35.0, clients=20, port_range=(40000, 40031),
                      vips=["10.0.0.100:80/tcp"], conn_duration=0.4, rounds=1.3,
                      request_bytes=250.0, response_bytes=700.0, syn_retx=0.02, long_lived=0.02,
                      long_lived_interval=4.0, snaplen=128,
                      close_mix={"fin": 0.55, "server-fin": 0.3, "rst": 0.1, "server-rst": 0.05},
                      servers=3, scheduler="rr", fwd="g",
                      events=[_ev(20, "add", 4), _ev(40, "edit", 2, 0)])
    elif name == "kube":
        s = SynthSpec(seed=2, duration=30.0, rate=100.0, clients=1, client_base="10.244.1.5",
                      port_range=(32768, 32783), vips=["10.96.0.10:80/tcp"], conn_duration=0.01,
                      duration_dist="exp", rounds=1.0, request_bytes=120.0, response_bytes=400.0,
                      close_mix={"fin": 0.5, "server-fin": 0.5}, syn_retx=0.0, client_rtt=0.0002,
                      server_rtt=0.0002, snaplen=128, servers=3, scheduler="rr", fwd="m",
                      rs_base="10.244.2.1", rs_port=8080,
                      events=[_ev(10, "add", 4), _ev(10, "edit", 1, 0), _ev(25, "del", 1)])
    elif name == "reuse-burst":
        s = SynthSpec(seed=3, duration=40.0, rate=20.0, clients=5, port_range=(50000, 50015),
                      bursts=[(15.0, 5.0, 400.0)], vips=["10.0.0.100:80/tcp"], conn_duration=0.05,
                      duration_dist="exp", rounds=1.0, request_bytes=150.0, response_bytes=600.0,
                      close_mix={"server-fin": 0.7, "rst": 0.2, "fin": 0.1}, syn_retx=0.0,
                      client_rtt=0.002, snaplen=128, servers=3, scheduler="rr", fwd="g",
                      events=[_ev(15, "add", 4)])
    elif name == "sctp":
        s = SynthSpec(seed=4, duration=30.0, rate=10.0, clients=10, ipv6_share=0.3,
                      port_range=(40000, 40007), vips=["10.0.0.200:3868/sctp",
                                                       "[2001:db8::200]:3868/sctp"],
                      conn_duration=1.0, rounds=3.0, request_bytes=200.0, response_bytes=300.0,
                      close_mix={"fin": 0.5, "server-fin": 0.2, "rst": 0.2, "server-rst": 0.1},
                      syn_retx=0.05, long_lived=0.1, long_lived_interval=3.0, servers=2,
                      scheduler="rr", fwd="m")
    elif name == "udp":
        s = SynthSpec(seed=5, duration=20.0, rate=200.0, clients=50, ipv6_share=0.3,
                      port_range=(10000, 65535), port_alloc="random",
                      vips=["10.0.0.50:9999/udp", "[2001:db8::50]:9999/udp"], conn_duration=0.01,
                      duration_dist="exp", rounds=1.0, request_bytes=45.0, response_bytes=150.0,
                      syn_retx=0.0, long_lived=0.0, servers=2, scheduler="rr", fwd="g")
    elif name == "mixed":
        s = SynthSpec(seed=6, duration=20.0, rate=30.0, clients=8, ipv6_share=0.35,
                      port_range=(45000, 45011),
                      vips=["10.0.0.100:80/tcp", "[2001:db8::100]:80/tcp", "10.0.0.50:9999/udp",
                            "[2001:db8::50]:9999/udp", "10.0.0.200:3868/sctp",
                            "[2001:db8::200]:3868/sctp"],
                      udp_share=0.2, sctp_share=0.2, conn_duration=0.3, rounds=2.0,
                      request_bytes=400.0, response_bytes=3000.0, syn_retx=0.05, long_lived=0.05,
                      long_lived_interval=2.0,
                      close_mix={"fin": 0.4, "server-fin": 0.3, "rst": 0.2, "server-rst": 0.1},
                      servers=3, scheduler="wlc", fwd="m", events=[_ev(10, "add", 4)])
    else:   # bench
        s = SynthSpec(seed=7, duration=10.0, arrival_window=1.0, conns=100_000, packets=1_000_000,
                      clients=65_536, port_range=(32768, 60999), vips=["10.0.0.100:80/tcp"],
                      view="dr", request_bytes=64.0, response_bytes=200.0, rounds=4.0,
                      long_lived=1.0, syn_retx=0.0, client_rtt=0.005, servers=8, scheduler="rr",
                      fwd="g")
    s.preset = name
    # the scenario's timeline follows the capture's duration: 60 s -> events at +20 s, +40 s
    try:
        d = float(overrides.get("duration", s.duration))
    except (TypeError, ValueError):
        d = s.duration                  # the spec check reports the bad value
    if name == "default":
        s.events = [_ev(round(d / 3, 3), "add", 4), _ev(round(2 * d / 3, 3), "edit", 2, 0)]
    elif name == "kube":
        s.events = [_ev(round(d / 3, 3), "add", 4), _ev(round(d / 3, 3), "edit", 1, 0),
                    _ev(round(5 * d / 6, 3), "del", 1)]
    elif name == "reuse-burst":
        s.bursts = [(0.375 * d, 0.125 * d, 400.0)]
        s.events = [_ev(round(0.375 * d, 3), "add", 4)]
    elif name == "bench":
        s.arrival_window = d / 10
    return dataclasses.replace(s, **overrides) if overrides else s


# ---------------------------------------------------------------------------------------------
# parsing helpers

_VIP_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d+)(?:/(?P<proto>[A-Za-z]+))?$")


def parse_vip(text: str) -> tuple:
    """``ADDR:PORT[/proto]`` (IPv6 in brackets) -> (proto name, ip_address, port)."""
    m = _VIP_RE.match(text.strip())
    if not m:
        raise ValueError(f"bad VIP {text!r}: expected ADDR:PORT[/tcp|udp|sctp], IPv6 as [ADDR]:PORT")
    proto = (m.group("proto") or "tcp").lower()
    if proto not in PROTO_NUM:
        raise ValueError(f"bad VIP {text!r}: protocol must be tcp, udp or sctp")
    try:
        addr = ipaddress.ip_address(m.group("v6") or m.group("v4"))
    except ValueError:
        raise ValueError(f"bad VIP {text!r}: not an IP address") from None
    if (m.group("v6") is not None) != (addr.version == 6):
        raise ValueError(f"bad VIP {text!r}: IPv6 addresses go in brackets, IPv4 without")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"bad VIP {text!r}: port must be 1-65535")
    return proto, addr, port


def parse_port_range(text) -> tuple:
    if isinstance(text, (tuple, list)) and len(text) == 2:
        lo, hi = int(text[0]), int(text[1])
    else:
        m = re.match(r"^\s*(\d+)\s*-\s*(\d+)\s*$", str(text))
        if not m:
            raise ValueError(f"bad port range {text!r}: expected A-B, e.g. 32768-32800")
        lo, hi = int(m.group(1)), int(m.group(2))
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"bad port range {lo}-{hi}: need 1 <= A <= B <= 65535")
    return lo, hi


def _endpoint(addr, port) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _coerce_event(e) -> SynthEvent:
    if isinstance(e, SynthEvent):
        ev = e
    elif isinstance(e, dict):
        try:
            ev = SynthEvent(**e)
        except TypeError as exc:
            raise ValueError(f"bad event {e!r}: {exc}") from None
    elif isinstance(e, (tuple, list)) and 3 <= len(e) <= 5:
        ev = SynthEvent(*e)
    else:
        raise ValueError(f"bad event {e!r}: expected SynthEvent, dict or (t, op, server[, weight])")
    if ev.op not in ("add", "edit", "del"):
        raise ValueError(f"bad event {e!r}: op must be add, edit or del")
    if not (isinstance(ev.server, int) and ev.server >= 1):
        raise ValueError(f"bad event {e!r}: server is a 1-based number")
    if not (0 <= int(ev.weight) <= 65535):
        raise ValueError(f"bad event {e!r}: weight must be 0-65535")
    if not (math.isfinite(float(ev.t)) and float(ev.t) >= 0):
        raise ValueError(f"bad event {e!r}: time must be >= 0")
    return ev


# ---------------------------------------------------------------------------------------------
# validation


@dataclass
class _Plan:
    """A validated spec in the forms the generator uses."""
    spec: SynthSpec
    vips: list                 # (proto code, ip_address, port)
    port_lo: int
    n_ports: int
    n4: int                    # IPv4 clients (client ids 0..n4-1), then IPv6 clients
    n6: int
    close_p: np.ndarray        # probabilities over CLOSE_STYLES[1:]
    proto_p: Optional[np.ndarray]
    events: list


def _check_spec(spec: SynthSpec) -> _Plan:
    s = spec

    def num(name, lo=None, hi=None, lo_open=False):
        v = getattr(s, name)
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {v!r}") from None
        if not math.isfinite(f):
            raise ValueError(f"{name} must be finite, got {v!r}")
        if lo is not None and (f <= lo if lo_open else f < lo):
            raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
        if hi is not None and f > hi:
            raise ValueError(f"{name} must be <= {hi}, got {v!r}")
        return f

    num("duration", 0, 1e6, lo_open=True)
    num("rate", 0, 1e8)
    num("start_time", 0, 4e9)
    num("ipv6_share", 0, 1)
    num("port_hold", 0, 1e6)
    num("client_rtt", 0, 10)
    num("server_rtt", 0, 10)
    num("conn_duration", 0, 1e6)
    num("rounds", 1, 1e6)
    num("request_bytes", 0, 1 << 24)
    num("response_bytes", 0, 1 << 26)
    num("syn_retx", 0, 0.99)
    num("long_lived", 0, 1)
    num("long_lived_interval", 0, 1e6, lo_open=True)
    if s.arrival_window is not None:
        num("arrival_window", 0, 1e6, lo_open=True)
        if s.arrival_window > s.duration:
            raise ValueError("arrival_window must not exceed duration")
    if not isinstance(s.seed, (int, np.integer)) or s.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {s.seed!r}")
    if not isinstance(s.clients, (int, np.integer)) or not 1 <= s.clients <= 1 << 24:
        raise ValueError(f"clients must be an integer 1..{1 << 24}, got {s.clients!r}")
    if s.conns is not None and (not isinstance(s.conns, (int, np.integer)) or not 1 <= s.conns <= MAX_CONNS):
        raise ValueError(f"conns must be an integer 1..{MAX_CONNS}, got {s.conns!r}")
    if s.packets is not None and (not isinstance(s.packets, (int, np.integer)) or not 1 <= s.packets <= MAX_PACKETS):
        raise ValueError(f"packets must be an integer 1..{MAX_PACKETS}, got {s.packets!r}")
    if s.conns is None and s.rate <= 0 and not s.bursts:
        raise ValueError("rate must be > 0 (or give conns or bursts)")
    if s.view not in ("both", "dr"):
        raise ValueError(f"view must be 'both' or 'dr', got {s.view!r}")
    if s.linktype not in LINKTYPES:
        raise ValueError(f"linktype must be 'eth' or 'raw', got {s.linktype!r}")
    if not isinstance(s.snaplen, (int, np.integer)) or not 1 <= s.snaplen <= 262144:
        raise ValueError(f"snaplen must be an integer 1..262144, got {s.snaplen!r}")
    if s.duration_dist not in ("lognormal", "exp", "fixed"):
        raise ValueError(f"duration_dist must be lognormal, exp or fixed, got {s.duration_dist!r}")
    if s.port_alloc not in ("seq", "random"):
        raise ValueError(f"port_alloc must be seq or random, got {s.port_alloc!r}")
    if s.fwd not in ("g", "m", "i"):
        raise ValueError(f"fwd must be g (DR), m (NAT) or i (tunnel), got {s.fwd!r}")
    if not re.fullmatch(r"[a-z]{1,16}", str(s.scheduler)):
        raise ValueError(f"bad scheduler name {s.scheduler!r}")
    if not isinstance(s.servers, (int, np.integer)) or not 1 <= s.servers <= 4096:
        raise ValueError(f"servers must be an integer 1..4096, got {s.servers!r}")
    if s.rs_port is not None and not (isinstance(s.rs_port, (int, np.integer)) and 1 <= s.rs_port <= 65535):
        raise ValueError(f"rs_port must be 1-65535, got {s.rs_port!r}")
    for name in ("vips", "bursts", "events"):
        if not isinstance(getattr(s, name), (list, tuple)):
            raise ValueError(f"{name} must be a list, got {type(getattr(s, name)).__name__}")
    if not isinstance(s.close_mix, dict):
        raise ValueError(f"close_mix must be a dict of style -> weight, got {type(s.close_mix).__name__}")
    lo, hi = parse_port_range(s.port_range)
    for b in s.bursts:
        if not (isinstance(b, (tuple, list)) and len(b) == 3):
            raise ValueError(f"bad burst {b!r}: expected (start s, length s, extra conns/s)")
        st, ln, rt = (float(x) for x in b)
        if not (0 <= st < s.duration and 0 < ln and 0 <= rt <= 1e8 and st + ln <= s.duration + 1e-9):
            raise ValueError(f"bad burst {b!r}: must lie inside the duration, with a rate >= 0")
    if not s.vips:
        raise ValueError("at least one VIP is needed")
    if len(s.vips) > 1024:
        raise ValueError(f"at most 1024 VIPs, got {len(s.vips)}")
    vips = []
    for v in s.vips:
        if isinstance(v, str):
            p, a, port = parse_vip(v)
        else:
            try:
                p, a, port = v
                a = ipaddress.ip_address(a)
            except (TypeError, ValueError):
                raise ValueError(f"bad VIP {v!r}") from None
            if p not in PROTO_NUM or not 1 <= int(port) <= 65535:
                raise ValueError(f"bad VIP {v!r}")
        vips.append((PROTOS.index(p), a, int(port)))
    if len({(p, a, port) for p, a, port in vips}) != len(vips):
        raise ValueError("duplicate VIP in the list")
    try:
        b4 = ipaddress.IPv4Address(s.client_base)
        b6 = ipaddress.IPv6Address(s.client_base6)
        ipaddress.IPv4Address(s.rs_base)
        ipaddress.IPv6Address(s.rs_base6)
    except ValueError as exc:
        raise ValueError(f"bad base address: {exc}") from None
    n6 = int(round(s.clients * s.ipv6_share))
    n4 = s.clients - n6
    if int(b4) + max(n4, 1) - 1 > 0xFFFFFFFF:
        raise ValueError(f"{n4} IPv4 clients do not fit after {b4}")
    if int(b6) + max(n6, 1) - 1 >= 1 << 128:
        raise ValueError(f"{n6} IPv6 clients do not fit after {b6}")
    mix = s.close_mix
    bad = set(mix) - set(CLOSE_STYLES[1:])
    if bad:
        raise ValueError(f"unknown close style(s) {sorted(map(str, bad))}: use {', '.join(CLOSE_STYLES[1:])}")
    try:
        cp = np.array([float(mix.get(k, 0.0)) for k in CLOSE_STYLES[1:]])
    except (TypeError, ValueError):
        raise ValueError("close_mix weights must be numbers") from None
    if (cp < 0).any() or not np.isfinite(cp).all() or cp.sum() <= 0:
        raise ValueError("close_mix needs non-negative weights with a positive sum")
    cp = cp / cp.sum()
    proto_p = None
    if s.udp_share is not None or s.sctp_share is not None:
        u = float(s.udp_share or 0.0)
        c = float(s.sctp_share or 0.0)
        if u < 0 or c < 0 or u + c > 1:
            raise ValueError("udp_share and sctp_share must be >= 0 and add up to at most 1")
        proto_p = np.array([1.0 - u - c, u, c])
    fams = [fam for fam, n in ((4, n4), (6, n6)) if n]
    for fam in fams:
        avail = {p for p, a, _ in vips if a.version == fam}
        if not avail:
            raise ValueError(f"IPv{fam} clients need an IPv{fam} VIP (add --vip ...)")
        if proto_p is not None:
            for pc in range(3):
                if proto_p[pc] > 0 and pc not in avail:
                    raise ValueError(f"a {PROTOS[pc]} share needs an IPv{fam} {PROTOS[pc]} VIP")
    events = [_coerce_event(e) for e in s.events]
    for ev in events:
        if ev.vip is not None and not 0 <= ev.vip < len(vips):
            raise ValueError(f"event {ev} names VIP {ev.vip}, but there are {len(vips)}")
    return _Plan(s, vips, lo, hi - lo + 1, n4, n6, cp, proto_p, events)


# ---------------------------------------------------------------------------------------------
# rules and events


def _rs_addr(spec: SynthSpec, fam: int, k: int):
    base = ipaddress.ip_address(spec.rs_base if fam == 4 else spec.rs_base6)
    return base + (k - 1)


def _svc_opt(proto: int, addr, port: int) -> str:
    flag = ("-t", "-u", "--sctp-service")[proto]
    return f"{flag} {_endpoint(addr, port)}"


def rules_text(spec: Union[SynthSpec, dict]) -> str:
    """The scenario's initial rules in ipvsadm save format (``ipvsadm-save -n``)."""
    plan = _check_spec(_as_spec(spec))
    s = plan.spec
    lines = []
    for proto, addr, port in plan.vips:
        svc = _svc_opt(proto, addr, port)
        lines.append(f"-A {svc} -s {s.scheduler}")
        for k in range(1, s.servers + 1):
            rs = _endpoint(_rs_addr(s, addr.version, k), s.rs_port or port)
            lines.append(f"-a {svc} -r {rs} -{s.fwd} -w 1")
    return "\n".join(lines) + "\n"


def events_text(spec: Union[SynthSpec, dict]) -> str:
    """The scenario's timed rule changes, one per line: ``+20s -a -t VIP:80 -r RS:80 -g -w 1``."""
    plan = _check_spec(_as_spec(spec))
    s = plan.spec
    lines = []
    for ev in sorted(plan.events, key=lambda e: e.t):
        targets = plan.vips if ev.vip is None else [plan.vips[ev.vip]]
        for proto, addr, port in targets:
            svc = _svc_opt(proto, addr, port)
            rs = _endpoint(_rs_addr(s, addr.version, ev.server), s.rs_port or port)
            t = f"+{float(ev.t):g}s"
            if ev.op == "del":
                lines.append(f"{t} -d {svc} -r {rs}")
            else:
                op = "-a" if ev.op == "add" else "-e"
                lines.append(f"{t} {op} {svc} -r {rs} -{s.fwd} -w {int(ev.weight)}")
    return "\n".join(lines) + ("\n" if lines else "")


def _as_spec(spec) -> SynthSpec:
    if isinstance(spec, SynthSpec):
        return spec
    if isinstance(spec, dict):
        return SynthSpec.from_dict(spec)
    raise ValueError(f"spec must be a SynthSpec or a dict, got {type(spec).__name__}")


# ---------------------------------------------------------------------------------------------
# random helpers


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 arithmetic wraps)."""
    x = x.astype(_U64, copy=True)
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def _lognormal(rng, mean: float, sigma: float, n: int) -> np.ndarray:
    if mean <= 0:
        return np.zeros(n)
    return rng.lognormal(math.log(mean) - sigma * sigma / 2, sigma, n)


# ---------------------------------------------------------------------------------------------
# connections


@dataclass
class _Conns:
    n: int
    t0: np.ndarray        # int64 ns, first packet
    client: np.ndarray    # int32 client id
    fam: np.ndarray       # uint8 4/6
    proto: np.ndarray     # uint8 P_TCP/P_UDP/P_SCTP
    vip: np.ndarray       # int16 index into plan.vips
    retx: np.ndarray      # int8 SYN/INIT retransmissions
    rounds: np.ndarray    # int64 request/response rounds
    q: np.ndarray         # int64 request bytes
    r: np.ndarray         # int64 response bytes
    close: np.ndarray     # int8 C_*
    dur: np.ndarray       # int64 ns target duration (first packet to last, without retries)
    rtt_c: np.ndarray     # int64 ns
    rtt_s: np.ndarray     # int64 ns
    mss: np.ndarray       # int64
    ll: np.ndarray        # bool, long-lived (open to the end, idle tail)
    h: np.ndarray = None  # packets per block (both directions): handshake, round, close
    per: np.ndarray = None
    cl: np.ndarray = None


_CLOSE_LEN = np.array([0, 3, 3, 1, 1], np.int64)            # both directions
_CLOSE_LEN_DR = np.array([0, 2, 1, 1, 0], np.int64)          # client packets only


def _make_conns(plan: _Plan, rng: np.random.Generator) -> _Conns:
    s = plan.spec
    window = float(s.arrival_window or s.duration)
    # arrivals: a Poisson process is uniform order statistics given its count
    expected = (s.conns if s.conns is not None else s.rate * window) + \
        sum(float(rt) * float(ln) for _, ln, rt in s.bursts)
    if expected > MAX_CONNS:
        raise ValueError(f"the spec asks for about {expected:,.0f} connections, more than {MAX_CONNS:,}")
    if s.conns is not None:
        n_base = int(s.conns)
    else:
        n_base = int(rng.poisson(s.rate * window))
    times = [rng.uniform(0.0, window, n_base)]
    for st, ln, rt in s.bursts:
        k = int(rng.poisson(float(rt) * float(ln)))
        times.append(rng.uniform(float(st), float(st) + float(ln), k))
    t0 = np.sort(np.concatenate(times))
    n = len(t0)
    if n == 0:
        raise ValueError("the spec yields no connections (raise rate, duration or conns)")
    if n > MAX_CONNS:
        raise ValueError(f"the spec yields {n:,} connections, more than {MAX_CONNS:,}")
    t0 = (t0 * NS).astype(np.int64)

    client = rng.integers(0, s.clients, n).astype(np.int32)
    fam = np.where(client < plan.n4, 4, 6).astype(np.uint8)

    vp = np.array([p for p, _, _ in plan.vips])
    vf = np.array([a.version for _, a, _ in plan.vips])
    vip = np.zeros(n, np.int16)
    u = rng.random(n)
    if plan.proto_p is not None:
        cum = np.cumsum(plan.proto_p)
        proto = np.minimum(np.searchsorted(cum, rng.random(n), side="right"), 2).astype(np.uint8)
        for f in (4, 6):
            for pc in range(3):
                cand = np.flatnonzero((vp == pc) & (vf == f))
                m = (fam == f) & (proto == pc)
                if m.any():
                    vip[m] = cand[np.minimum((u[m] * len(cand)).astype(np.int64), len(cand) - 1)]
    else:
        for f in (4, 6):
            cand = np.flatnonzero(vf == f)
            m = fam == f
            if m.any():
                vip[m] = cand[np.minimum((u[m] * len(cand)).astype(np.int64), len(cand) - 1)]
        proto = vp[vip].astype(np.uint8)

    # SYN/INIT retransmissions: P(retx >= k) = p**k
    if s.syn_retx > 0:
        retx = np.minimum(rng.geometric(1.0 - s.syn_retx, n) - 1, MAX_RETX).astype(np.int8)
    else:
        retx = np.zeros(n, np.int8)
    rounds = rng.geometric(1.0 / s.rounds, n).astype(np.int64)
    q = np.rint(_lognormal(rng, s.request_bytes, 1.0, n)).astype(np.int64)
    r = np.rint(_lognormal(rng, s.response_bytes, 1.0, n)).astype(np.int64)
    close = (1 + np.searchsorted(np.cumsum(plan.close_p), rng.random(n), side="right")).astype(np.int8)
    close = np.minimum(close, len(CLOSE_STYLES) - 1).astype(np.int8)
    if s.duration_dist == "lognormal":
        dur = _lognormal(rng, s.conn_duration, 1.0, n)
    elif s.duration_dist == "exp":
        dur = rng.exponential(s.conn_duration, n) if s.conn_duration > 0 else np.zeros(n)
    else:
        dur = np.full(n, s.conn_duration)
    dur = (dur * NS).astype(np.int64)
    ll = rng.random(n) < s.long_lived
    crtt = _lognormal(rng, s.client_rtt, 0.5, s.clients)
    rtt_c = (crtt[client] * NS).astype(np.int64)
    rtt_s = (_lognormal(rng, s.server_rtt, 0.3, n) * NS).astype(np.int64)
    mss = np.where(fam == 4, 1460, 1440).astype(np.int64)

    # protocol-specific limits
    tcp, udp, sctp = proto == P_TCP, proto == P_UDP, proto == P_SCTP
    q[tcp] = np.minimum(q[tcp], 16384)
    r[tcp] = np.minimum(r[tcp], 1 << 24)
    maxdg = np.where(fam == 4, 1472, 1452)
    q[udp] = np.clip(q[udp], 1, maxdg[udp])
    r[udp] = np.minimum(r[udp], maxdg[udp])
    q[sctp] = np.clip(q[sctp], 1, 1400)
    r[sctp] = np.minimum(r[sctp], 1400)
    close[udp] = C_NONE
    retx[udp] = 0

    # long-lived: no close, exchanges every long_lived_interval until the end of the capture
    end = int(s.duration * NS)
    span = np.maximum(end - t0, 0)
    if ll.any():
        close[ll] = C_NONE
        dur[ll] = span[ll]
        rounds[ll] = np.maximum(1, np.rint(span[ll] / (s.long_lived_interval * NS))).astype(np.int64)

    c = _Conns(n, t0, client, fam, proto, vip, retx, rounds, q, r, close, dur, rtt_c, rtt_s, mss, ll)
    _block_sizes(c)
    return c


def _block_sizes(c: _Conns) -> None:
    """Packets per connection block (both directions): handshake, one round, close."""
    tcp, udp, sctp = c.proto == P_TCP, c.proto == P_UDP, c.proto == P_SCTP
    retx = c.retx.astype(np.int64)
    a = -(-c.q // c.mss)
    b = -(-c.r // c.mss)
    h = np.where(tcp, retx + 3, np.where(sctp, retx + 4, 0))
    per_tcp = a + np.where(b > 0, b + b // 2, 1)
    per_tcp = np.where((a == 0) & (b == 0), 0, per_tcp)
    per = np.where(tcp, per_tcp, np.where(sctp, 2 + 2 * (c.r > 0), 1 + (c.r > 0)))
    c.rounds = np.where(per == 0, 0, c.rounds)
    c.rounds = np.where(udp, np.maximum(c.rounds, 1), c.rounds)
    c.h, c.per, c.cl = h.astype(np.int64), per.astype(np.int64), _CLOSE_LEN[c.close]


def _view_counts(c: _Conns, view: str):
    """(fixed packets, packets per round) of each connection in the view."""
    if view == "both":
        return c.h + c.cl, c.per
    tcp, sctp = c.proto == P_TCP, c.proto == P_SCTP
    retx = c.retx.astype(np.int64)
    a = -(-c.q // c.mss)
    b = -(-c.r // c.mss)
    h = np.where(tcp | sctp, retx + 2, 0)
    per_tcp = np.where((a == 0) & (b == 0), 0, a + b // 2)
    per = np.where(tcp, per_tcp, np.where(sctp, 1 + (c.r > 0), 1))
    per = np.where(c.per == 0, 0, per)
    return h + _CLOSE_LEN_DR[c.close], per


def _fit_packets(c: _Conns, view: str, target: int, rng) -> None:
    """Scale the rounds so the view holds at least ``target`` packets (the excess is cut later).

    UDP flows keep at least one exchange (a flow without one has no packets)."""
    fixed, per = _view_counts(c, view)
    min_rounds = np.where(c.proto == P_UDP, 1, 0).astype(np.int64)
    floor_total = int((fixed + per * min_rounds).sum())
    need = target - floor_total
    if need < 0:
        raise ValueError(f"--packets {target:,} is too few for {c.n:,} connections: their handshakes "
                         f"and closes alone take {floor_total:,} packets")
    has = per > 0
    if need > 0 and not has.any():
        raise ValueError("--packets: these connections carry no data rounds to scale")
    extra = np.zeros(c.n, np.int64)
    if need > 0:
        base = np.where(has, np.maximum(c.rounds, 1), 0).astype(np.float64)
        f = need / float((per * base).sum())
        extra = np.where(has, np.floor(base * f + rng.random(c.n)), 0).astype(np.int64)
        got = int((per * extra).sum())
        if got < need:
            # top up: one more round for connections in a random order until the target is met
            order = rng.permutation(np.flatnonzero(has))
            cum = np.cumsum(per[order])
            k = int(np.searchsorted(cum, need - got)) + 1
            extra[order[:k]] += 1
    c.rounds = np.where(per > 0, min_rounds + extra, c.rounds)


# ---------------------------------------------------------------------------------------------
# expansion: connections -> packets


@dataclass
class _Pkts:
    t: np.ndarray         # int64 ns
    conn: np.ndarray      # int32
    dir: np.ndarray       # uint8 0 client->VIP, 1 VIP->client
    code: np.ndarray      # uint8 TCP flags / SCTP chunk type / 0 (UDP)
    plen: np.ndarray      # uint16 payload bytes (TCP/UDP payload, SCTP DATA user data)
    seq: np.ndarray       # uint32 own sequence offset (bytes / TSNs sent before)
    ack: np.ndarray       # uint32 peer sequence offset (peer bytes / TSNs before)
    ipid: np.ndarray      # uint16


_TCP_CLOSE = {  # style -> [(dir, flags, consumes)]
    C_FIN: [(0, F_FIN | F_ACK, 1), (1, F_FIN | F_ACK, 1), (0, F_ACK, 0)],
    C_SFIN: [(1, F_FIN | F_ACK, 1), (0, F_FIN | F_ACK, 1), (1, F_ACK, 0)],
    C_RST: [(0, F_RST | F_ACK, 0)],
    C_SRST: [(1, F_RST | F_ACK, 0)],
}
_SCTP_CLOSE = {
    C_FIN: [(0, CH_SHUTDOWN, 0), (1, CH_SHUTDOWN_ACK, 0), (0, CH_SHUTDOWN_COMPLETE, 0)],
    C_SFIN: [(1, CH_SHUTDOWN, 0), (0, CH_SHUTDOWN_ACK, 0), (1, CH_SHUTDOWN_COMPLETE, 0)],
    C_RST: [(0, CH_ABORT, 0)],
    C_SRST: [(1, CH_ABORT, 0)],
}


def _close_tables(spec: dict):
    d = np.zeros((5, 3), np.uint8)
    code = np.zeros((5, 3), np.uint8)
    cons = np.zeros((5, 3), np.int64)
    for st, rows in spec.items():
        for i, (dd, cc, nn) in enumerate(rows):
            d[st, i], code[st, i], cons[st, i] = dd, cc, nn
    return d, code, cons


_TCP_CT = _close_tables(_TCP_CLOSE)
_SCTP_CT = _close_tables(_SCTP_CLOSE)


def _expand(c: _Conns, idx: np.ndarray, rng, view: str):
    """Packets of connections ``idx``, each connection's in time order. Returns (_Pkts of the
    view, last packet time of each connection of ``idx`` in both directions)."""
    parts = []
    t_last = np.empty(len(idx), np.int64)
    for proto in (P_TCP, P_UDP, P_SCTP):
        m = c.proto[idx] == proto
        if m.any():
            pk, tl = _expand_proto(c, idx[m], rng, view, proto)
            parts.append(pk)
            t_last[m] = tl
    return _cat(parts), t_last


def _expand_proto(c: _Conns, idx: np.ndarray, rng, view: str, proto: int):
    h, per, cl, rounds = c.h[idx], c.per[idx], c.cl[idx], c.rounds[idx]
    n_i = h + rounds * per + cl
    tot = int(n_i.sum())
    starts = np.zeros(len(idx), np.int64)
    np.cumsum(n_i[:-1], out=starts[1:])
    li = np.repeat(np.arange(len(idx), dtype=np.int64), n_i)     # local connection index
    j = np.arange(tot, dtype=np.int64) - starts[li]
    retx = c.retx[idx].astype(np.int64)[li]
    hh = h[li]
    pp = np.maximum(per[li], 1)
    rd_end = hh + rounds[li] * per[li]
    q = c.q[idx][li]
    r = c.r[idx][li]
    close = c.close[idx][li].astype(np.int64)

    in_hs = j < hh
    in_cl = j >= rd_end
    in_rd = ~(in_hs | in_cl)
    jr = np.maximum(j - hh, 0)
    k = np.floor(jr / pp).astype(np.int64)       # exact for these magnitudes, and cheaper
    p = jr - k * pp
    ci = np.where(in_cl, j - rd_end, 0)
    think = (in_rd & (p == 0) & (k > 0)) | (in_cl & (ci == 0))
    syn = in_hs & (j <= retx)                        # SYN / INIT and its retransmissions

    if proto == P_TCP:
        mss_c = c.mss[idx]
        a_c = -(-c.q[idx] // mss_c)
        b_c = -(-c.r[idx] // mss_c)
        a, b, mss = a_c[li], b_c[li], mss_c[li]
        mm = p - a
        m3d = np.floor(mm / 3).astype(np.int64)
        m3 = mm - 3 * m3d
        is_req = p < a
        resp_seg = (~is_req) & (b > 0) & (m3 < 2)
        sidx = m3d * 2 + m3
        last = np.where(is_req, p == a - 1, sidx == b - 1)
        last_len = np.where(is_req, (c.q[idx] - (a_c - 1) * mss_c)[li], (c.r[idx] - (b_c - 1) * mss_c)[li])
        seg_len = np.where(last, last_len, mss)
        d_rd = np.where(is_req, 0, np.where(b == 0, 1, m3 < 2))
        data = in_rd & (is_req | resp_seg)
        plen = np.where(data, seg_len, 0)
        code_rd = np.where(data & last, F_PSH | F_ACK, F_ACK)
        ct = _TCP_CT
        d_hs = j == retx + 1
        code_hs = np.where(syn, F_SYN, np.where(d_hs, F_SYN | F_ACK, F_ACK))
        cons_hs_c = syn & (j == retx)
        cons_hs_s = d_hs
    elif proto == P_SCTP:
        d_rd = np.array([0, 1, 1, 0], np.uint8)[np.minimum(p, 3)]
        code_rd = np.array([CH_DATA, CH_SACK, CH_DATA, CH_SACK], np.uint8)[np.minimum(p, 3)]
        data = in_rd & ((p == 0) | (p == 2))
        plen = np.where(in_rd & (p == 0), q, np.where(in_rd & (p == 2), r, 0))
        ct = _SCTP_CT
        hs_pos = j - retx
        d_hs = (hs_pos == 1) | (hs_pos == 3)
        code_hs = np.array([CH_INIT, CH_INIT_ACK, CH_COOKIE_ECHO, CH_COOKIE_ACK], np.uint8)[
            np.clip(hs_pos, 0, 3)]
        cons_hs_c = cons_hs_s = np.zeros(tot, bool)
    else:
        d_rd = p == 1
        code_rd = np.zeros(tot, np.uint8)
        data = in_rd
        plen = np.where(p == 1, r, q)
        ct = _TCP_CT                     # UDP flows have no handshake and no close
        d_hs = np.zeros(tot, bool)
        code_hs = code_rd
        cons_hs_c = cons_hs_s = d_hs
    d_cl = ct[0][close, ci]
    d = np.where(in_hs, d_hs, np.where(in_rd, d_rd, d_cl)).astype(np.uint8)
    code = np.where(in_hs, code_hs, np.where(in_rd, code_rd, ct[1][close, ci])).astype(np.uint8)
    cons_cl = ct[2][close, ci]
    if proto == P_TCP:
        cons = np.where(in_hs, 0, np.where(in_rd, plen, cons_cl))
        cons_c = np.where(in_hs, cons_hs_c, np.where(d == 0, cons, 0))
        cons_s = np.where(in_hs, cons_hs_s, np.where(d == 1, cons, 0))
    elif proto == P_SCTP:                # TSNs: one per DATA chunk
        cons_c = (data & (d == 0)).astype(np.int64)
        cons_s = (data & (d == 1)).astype(np.int64)
    else:
        cons_c = cons_s = np.zeros(tot, np.int64)

    # timing: back-to-back within a side, one RTT on a change of side, think times spread
    # the connection's target duration over its rounds
    prev_d = np.empty_like(d)
    prev_d[1:] = d[:-1]
    prev_d[0] = d[0]
    rtt = np.where(d == 1, c.rtt_s[idx][li], c.rtt_c[idx][li])
    gap = np.maximum(np.where(d == prev_d, SEG_GAP_NS, rtt), 1)   # >= 1 ns: strict order in a connection
    gap[(j == 0) | think] = 0
    retx_gap = syn & (j > 0)
    if retx_gap.any():
        rto = INIT_RTO_NS if proto == P_SCTP else SYN_RTO_NS
        gap[retx_gap] = rto << (j[retx_gap] - 1)
        fixed = np.bincount(li, weights=np.where(retx_gap, 0, gap), minlength=len(idx))
    else:
        fixed = np.bincount(li, weights=gap, minlength=len(idx))
    spare = np.maximum(c.dur[idx] - fixed.astype(np.int64), 0)
    nt = int(np.count_nonzero(think))
    if nt:
        e = rng.standard_exponential(nt)
        esum = np.bincount(li[think], weights=e, minlength=len(idx))
    else:
        e = np.zeros(0)
        esum = np.zeros(len(idx))
    # a long-lived connection is idle for a while after its last exchange, not cut off at the end
    lli = c.ll[idx]
    if lli.any():
        esum[lli] += rng.standard_exponential(int(lli.sum()))
    wt = np.divide(spare, esum, out=np.zeros(len(idx)), where=esum > 0)
    gap[think] = (e * wt[li[think]]).astype(np.int64) + 1
    cs = np.cumsum(gap)
    t = cs - cs[starts][li] + c.t0[idx][li]
    t_last = t[starts + n_i - 1]

    # sequence offsets: bytes (TCP) or TSNs (SCTP) each side sent before the packet
    cb = np.cumsum(cons_c) - cons_c
    cb -= cb[starts][li]
    sb = np.cumsum(cons_s) - cons_s
    sb -= sb[starts][li]
    seq = np.where(d == 0, cb, sb)
    ack = np.where(d == 0, sb, cb)
    ipid = ((idx * 40503)[li] + j) & 0xFFFF

    keep = np.flatnonzero(d == 0) if view == "dr" else slice(None)
    pk = _Pkts(t[keep], idx[li[keep]].astype(np.int32), d[keep], code[keep],
               plen[keep].astype(np.uint16), (seq[keep] & 0xFFFFFFFF).astype(np.uint32),
               (ack[keep] & 0xFFFFFFFF).astype(np.uint32), ipid[keep].astype(np.uint16))
    return pk, t_last


def _cat(parts: list) -> _Pkts:
    return _Pkts(*(np.concatenate([getattr(p, f.name) for p in parts])
                   for f in dataclasses.fields(_Pkts)))


# ---------------------------------------------------------------------------------------------
# ports and sequence numbers


def _assign_ports(plan: _Plan, c: _Conns, t_last: np.ndarray, rng) -> np.ndarray:
    s = plan.spec
    group = c.client.astype(np.int64) * 3 + c.proto
    order = np.lexsort((c.t0, group))
    hold = int(s.port_hold * NS)
    t_free = t_last + np.where((c.close == C_FIN) & (c.proto != P_UDP), hold, 0)
    if s.port_alloc == "seq":
        start = rng.integers(0, plan.n_ports, s.clients * 3)[group]
    else:
        start = rng.integers(0, plan.n_ports, c.n)
    out = np.empty(c.n, np.int32)
    _kern.assign_ports(np.ascontiguousarray(group[order]), np.ascontiguousarray(c.t0[order]),
                       np.ascontiguousarray(t_free[order]),
                       np.ascontiguousarray(start[order].astype(np.int32)),
                       plan.n_ports, s.port_alloc == "seq", out)
    port = np.empty(c.n, np.int32)
    port[order] = out
    return np.where(port >= 0, port + plan.port_lo, -1).astype(np.int32)


def _isns(plan: _Plan, c: _Conns, cport: np.ndarray, ok: np.ndarray):
    """Initial sequence numbers (TCP) / TSNs and tags (SCTP): a keyed hash of the 4-tuple plus
    the clock in 64 ns ticks, as Linux's secure_tcp_seq; reuse of a 4-tuple moves past the
    previous connection's sequence space."""
    s = plan.spec
    seed = _U64(int(s.seed) * 0x9E3779B97F4A7C15 % (1 << 64))
    tup = ((c.client.astype(_U64) << _U64(24)) ^ (cport.astype(_U64) << _U64(8)) ^ c.vip.astype(_U64)
           ^ (c.proto.astype(_U64) << _U64(60)))
    ticks = ((c.t0 + int(s.start_time * NS)) >> 6).astype(_U64)
    isn_c = ((_mix64(tup ^ seed) + ticks) & _U64(0xFFFFFFFF)).astype(np.uint32)
    isn_s = ((_mix64(tup ^ seed ^ _U64(0x5555555555555555)) + ticks) & _U64(0xFFFFFFFF)).astype(np.uint32)
    # a connection's own randomness (SCTP tags, TSNs, cookie, flow label) for each connection
    own = _mix64(np.arange(c.n, dtype=_U64) ^ seed ^ _U64(0x1234567887654321))
    own2 = _mix64(own)
    tag_c = ((own & _U64(0xFFFFFFFF)) | _U64(1)).astype(np.uint32)          # never 0
    tag_s = ((own >> _U64(32)) | _U64(1)).astype(np.uint32)
    tsn_c = (own2 & _U64(0xFFFFFFFF)).astype(np.uint32)
    tsn_s = (own2 >> _U64(32)).astype(np.uint32)
    sctp = c.proto == P_SCTP
    isn_c = np.where(sctp, tsn_c, isn_c)
    isn_s = np.where(sctp, tsn_s, isn_s)
    # client sequence space a TCP connection uses: SYN + request bytes + FIN
    tcp = (c.proto == P_TCP) & ok
    used = (1 + c.rounds * c.q + (c.close == C_FIN) + (c.close == C_SFIN)).astype(np.uint64)
    key = (c.client.astype(np.int64) << 32) | (cport.astype(np.int64) << 16) | c.vip.astype(np.int64)
    sel = np.flatnonzero(tcp)
    order = sel[np.lexsort((c.t0[sel], key[sel]))]
    _kern.order_isns(np.ascontiguousarray(order, dtype=np.int64), np.ascontiguousarray(key),
                     isn_c, (used & _U64(0xFFFFFFFF)).astype(np.uint32))
    return isn_c, isn_s, tag_c, tag_s, own2


# ---------------------------------------------------------------------------------------------
# frames

# header layouts: (family, l4 class). l4 classes: 0 TCP, 1 UDP, 2.. SCTP with k 32-bit words
# after the chunk header: 0 (COOKIE_ACK, SHUTDOWN_ACK, SHUTDOWN_COMPLETE, ABORT), 1 (SHUTDOWN),
# 3 (DATA, SACK), 4 (INIT, COOKIE_ECHO), 9 (INIT_ACK: 4 words + state cookie parameter).
_SCTP_WORDS = (0, 1, 3, 4, 9)
_CHUNK_CLASS = np.zeros(256, np.int64)
for _t, _k in ((CH_COOKIE_ACK, 0), (CH_SHUTDOWN_ACK, 0), (CH_SHUTDOWN_COMPLETE, 0), (CH_ABORT, 0),
               (CH_SHUTDOWN, 1), (CH_DATA, 2), (CH_SACK, 2), (CH_INIT, 3), (CH_COOKIE_ECHO, 3),
               (CH_INIT_ACK, 4)):
    _CHUNK_CLASS[_t] = 2 + _k
del _t, _k
COOKIE_WORDS = 4


def _hdr_dtype(fam: int, l4c: int, eth: bool) -> np.dtype:
    f = [("ts_sec", "<u4"), ("ts_nsec", "<u4"), ("incl", "<u4"), ("orig", "<u4")]
    if eth:
        f += [("eth_dst", "u1", (6,)), ("eth_src", "u1", (6,)), ("eth_type", ">u2")]
    if fam == 4:
        f += [("ip_vhl", "u1"), ("ip_tos", "u1"), ("ip_len", ">u2"), ("ip_id", ">u2"),
              ("ip_off", ">u2"), ("ip_ttl", "u1"), ("ip_p", "u1"), ("ip_sum", ">u2"),
              ("ip_src", ">u4"), ("ip_dst", ">u4")]
    else:
        f += [("ip6_flow", ">u4"), ("ip6_plen", ">u2"), ("ip6_nxt", "u1"), ("ip6_hlim", "u1"),
              ("ip6_src", "u1", (16,)), ("ip6_dst", "u1", (16,))]
    if l4c == 0:
        f += [("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"),
              ("offflags", ">u2"), ("win", ">u2"), ("sum", ">u2"), ("urp", ">u2")]
    elif l4c == 1:
        f += [("sport", ">u2"), ("dport", ">u2"), ("ulen", ">u2"), ("sum", ">u2")]
    else:
        f += [("sport", ">u2"), ("dport", ">u2"), ("vtag", ">u4"), ("crc", "<u4"),
              ("ctype", "u1"), ("cflags", "u1"), ("clen", ">u2")]
        f += [(f"w{i}", ">u4") for i in range(_SCTP_WORDS[l4c - 2])]
    return np.dtype(f)


_DTYPES = {(fam, l4c, eth): _hdr_dtype(fam, l4c, eth)
           for fam in (4, 6) for l4c in range(7) for eth in (False, True)}


def _template(fam: int, l4c: int, eth: bool) -> np.ndarray:
    """Header rows with the fields that never change, for direction 0 (client -> VIP) and 1."""
    t = np.zeros(2, _DTYPES[(fam, l4c, eth)])
    if eth:
        t["eth_dst"] = [MAC_DIRECTOR, MAC_ROUTER]
        t["eth_src"] = [MAC_ROUTER, MAC_DIRECTOR]
        t["eth_type"] = 0x0800 if fam == 4 else 0x86DD
    pnum = (6, 17)[l4c] if l4c < 2 else 132
    if fam == 4:
        t["ip_vhl"] = 0x45
        t["ip_off"] = 0x4000                 # DF
        t["ip_p"] = pnum
    else:
        t["ip6_nxt"] = pnum
    if l4c == 0:
        t["win"] = TCP_WINDOW
    return t


_TEMPLATES = {k: _template(*k).view(np.uint8).reshape(2, -1) for k in _DTYPES}

# payload pattern: the byte at buffer position x is 0x80 | (x mod 128): no ASCII text, so
# dissectors keyed on well-known ports show it as opaque data. Ones' complement partial sums
# of one period, per parity of the start position (the first payload byte is a high-order byte).
_PAT = (0x80 | (np.arange(256) & 0x7F)).astype(np.uint8)
_y = np.arange(256, dtype=np.int64)
_pv = _PAT.astype(np.int64)
_FE = np.concatenate([[0], np.cumsum(np.where(_y % 2 == 0, _pv * 256, _pv))])   # start even
_FO = np.concatenate([[0], np.cumsum(np.where(_y % 2 == 0, _pv, _pv * 256))])   # start odd
del _y, _pv


def _pattern_sum(pos: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Sum of the 16-bit words of pattern bytes [pos, pos+n), as uint64 (not folded)."""
    def F(tab, x):
        return (x >> 8) * tab[256] + tab[x & 255]
    end = pos + n
    even = (pos & 1) == 0
    s = np.where(even, F(_FE, end) - F(_FE, pos), F(_FO, end) - F(_FO, pos))
    return s.astype(np.uint64)


def _fold(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.uint64)
    for _ in range(4):
        s = (s & _U64(0xFFFF)) + (s >> _U64(16))
    return s


def _words(h2: np.ndarray, a: int, b: int) -> np.ndarray:
    """Sum of big-endian 16-bit words of columns [a, b) of each row (column by column: rows
    are short, so a reduction along them costs more than a few strided additions)."""
    w = h2[:, a:b].view(">u2")
    s = w[:, 0].astype(np.uint64)
    for i in range(1, w.shape[1]):
        s += w[:, i]
    return s


class _FrameBuilder:
    def __init__(self, plan: _Plan, c: _Conns, cport, isn_c, isn_s, tag_c, tag_s, own2):
        s = plan.spec
        self.plan = plan
        self.c = c
        self.eth = s.linktype == "eth"
        self.l2 = 14 if self.eth else 0
        self.snaplen = int(s.snaplen)
        self.base_ns = int(round(s.start_time * NS))
        self.cport = cport.astype(np.uint16)
        self.isn_c, self.isn_s, self.tag_c, self.tag_s = isn_c, isn_s, tag_c, tag_s
        self.cookie = np.stack([((own2 >> _U64(8 * i)) * _U64(0x2545F4914F6CDD1D) >> _U64(32)).astype(np.uint32)
                                for i in range(COOKIE_WORDS)], axis=1)
        self.flow = (own2 >> _U64(44)).astype(np.uint32) & np.uint32(0xFFFFF)
        # client addresses by client id: IPv4 as uint32 (ids < n4), IPv6 as 16 bytes (ids >= n4)
        b4 = int(ipaddress.IPv4Address(s.client_base))
        b6 = int(ipaddress.IPv6Address(s.client_base6))
        cl = np.arange(s.clients, dtype=np.int64)
        self.c4 = (b4 + np.minimum(cl, max(plan.n4 - 1, 0))).astype(np.uint32)
        k6 = np.maximum(cl - plan.n4, 0).astype(_U64)
        hi = np.full(s.clients, b6 >> 64, dtype=_U64)
        lo = np.full(s.clients, b6 & ((1 << 64) - 1), dtype=_U64) + k6
        hi = hi + (lo < k6).astype(_U64)          # carry
        self.c6 = np.empty((s.clients, 16), np.uint8)
        self.c6[:, :8] = hi.astype(">u8").view(np.uint8).reshape(-1, 8)
        self.c6[:, 8:] = lo.astype(">u8").view(np.uint8).reshape(-1, 8)
        self.v4 = np.array([int(a) if a.version == 4 else 0 for _, a, _ in plan.vips], np.uint32)
        self.v6 = np.array([list(a.packed) if a.version == 6 else [0] * 16 for _, a, _ in plan.vips],
                           np.uint8).reshape(-1, 16)
        self.vport = np.array([p for _, _, p in plan.vips], np.uint16)
        hops = np.random.default_rng(int(s.seed) ^ 0x7717).integers(2, 12, s.clients)
        self.ttl = (64 - hops).astype(np.uint8)
        self.buf_store = None
        self.wire = self.l4c = self.pad = None

    def prepare(self, pk: _Pkts) -> np.ndarray:
        """Per-packet frame length (link layer included), header layout class and SCTP padding;
        returns the record sizes (16-byte record header + frame)."""
        c = self.c
        fam = c.fam[pk.conn]
        proto = c.proto[pk.conn]
        plen = pk.plen.astype(np.int64)
        l4c = np.where(proto == P_TCP, 0, np.where(proto == P_UDP, 1, _CHUNK_CLASS[pk.code]))
        l4h = np.array([20, 8] + [16 + 4 * k for k in _SCTP_WORDS], np.int64)[l4c]
        pad = np.where((proto == P_SCTP) & (pk.code == CH_DATA), (-plen) & 3, 0)
        self.wire = (self.l2 + np.where(fam == 4, 20, 40) + l4h + plen + pad).astype(np.int64)
        self.l4c = (l4c + np.where(fam == 6, 8, 0)).astype(np.uint8)
        self.pad = pad.astype(np.uint8)
        return 16 + self.wire

    def build(self, pk: _Pkts, lo: int, hi: int) -> np.ndarray:
        """Records (pcap record header + frame) of packets lo..hi-1, as one byte array."""
        c = self.c
        sel = slice(lo, hi)
        wire = self.wire[sel]
        pad = self.pad[sel]
        plen = pk.plen[sel].astype(np.int64)
        cls_id = self.l4c[sel]
        n = hi - lo
        incl = np.minimum(wire, self.snaplen)
        full = 16 + wire
        off = np.zeros(n, np.int64)
        np.cumsum(full[:-1], out=off[1:])
        total = int(full.sum())
        if self.buf_store is None or self.buf_store.size < total:
            self.buf_store = np.empty(max(total, CHUNK_BYTES + 65536 * 16), np.uint8)
        buf = self.buf_store[:total]
        k = total >> 8
        buf[:k << 8].reshape(k, 256)[:] = _PAT
        buf[k << 8:] = _PAT[:total - (k << 8)]

        conn = pk.conn[sel]
        d = pk.dir[sel]
        code = pk.code[sel]
        ts = pk.t[sel] + self.base_ns
        sctp_rows = []
        present = np.flatnonzero(np.bincount(cls_id, minlength=16))
        for cid in present:
            rows = np.flatnonzero(cls_id == cid) if len(present) > 1 else np.arange(n)
            fm = 6 if cid >= 8 else 4
            lc = int(cid % 8)
            dt = _DTYPES[(fm, lc, self.eth)]
            cn = conn[rows]
            dd = d[rows]
            W = dt.itemsize
            # constant fields per direction: row copies of a plain byte array are cheap, a
            # structured-array take is not
            h2 = _TEMPLATES[(fm, lc, self.eth)][dd]
            H = h2.view(dt).reshape(len(rows))
            cli = dd == 0
            t = ts[rows]
            H["ts_sec"] = t // NS
            H["ts_nsec"] = t % NS
            H["incl"] = incl[rows]
            H["orig"] = wire[rows]
            ipl = wire[rows] - self.l2
            pnum = np.uint64((6, 17)[lc] if lc < 2 else 132)
            ccl = c.client[cn]
            vi = c.vip[cn]
            if fm == 4:
                H["ip_len"] = ipl
                H["ip_id"] = pk.ipid[sel][rows]
                H["ip_ttl"] = np.where(cli, self.ttl[ccl], 64)
                ca, va = self.c4[ccl], self.v4[vi]
                H["ip_src"] = np.where(cli, ca, va)
                H["ip_dst"] = np.where(cli, va, ca)
            else:
                H["ip6_flow"] = (6 << 28) | self.flow[cn]
                H["ip6_plen"] = ipl - 40
                H["ip6_hlim"] = np.where(cli, self.ttl[ccl], 64)
                ca, va = self.c6[ccl], self.v6[vi]
                H["ip6_src"] = np.where(cli[:, None], ca, va)
                H["ip6_dst"] = np.where(cli[:, None], va, ca)
            cp, vp = self.cport[cn], self.vport[vi]
            H["sport"] = np.where(cli, cp, vp)
            H["dport"] = np.where(cli, vp, cp)
            seqo = pk.seq[sel][rows]
            acko = pk.ack[sel][rows]
            own_isn = np.where(cli, self.isn_c[cn], self.isn_s[cn])
            peer_isn = np.where(cli, self.isn_s[cn], self.isn_c[cn])
            pl = plen[rows]
            if lc == 0:
                fl = code[rows].astype(np.uint16)
                H["seq"] = own_isn + seqo
                H["ack"] = np.where(fl & F_ACK, peer_isn + acko, 0)
                H["offflags"] = (5 << 12) | fl
            elif lc == 1:
                H["ulen"] = 8 + pl
            else:
                ct = code[rows]
                peer_tag = np.where(cli, self.tag_s[cn], self.tag_c[cn])
                own_tag = np.where(cli, self.tag_c[cn], self.tag_s[cn])
                H["vtag"] = np.where(ct == CH_INIT, 0, peer_tag)
                H["ctype"] = ct
                H["clen"] = 4 + 4 * _SCTP_WORDS[lc - 2] + np.where(ct == CH_DATA, pl, 0)
                if lc == 3:                                   # SHUTDOWN: cumulative TSN ack
                    H["w0"] = peer_isn + acko - np.uint32(1)
                elif lc == 4:                                 # DATA / SACK
                    data = ct == CH_DATA
                    H["cflags"] = np.where(data, 0x03, 0)     # B|E: one unfragmented message
                    H["w0"] = np.where(data, own_isn + seqo, peer_isn + acko - np.uint32(1))
                    ssn = (seqo & np.uint32(0xFFFF)).astype(np.uint32)
                    H["w1"] = np.where(data, ssn, SCTP_RWND)  # stream 0 | SSN, or a_rwnd
                    H["w2"] = 0                               # PPID 0, or no gap/dup blocks
                elif lc == 5:                                 # INIT / COOKIE_ECHO
                    init = ct == CH_INIT
                    ck = self.cookie[cn]
                    H["w0"] = np.where(init, own_tag, ck[:, 0])
                    H["w1"] = np.where(init, SCTP_RWND, ck[:, 1])
                    H["w2"] = np.where(init, (10 << 16) | 65535, ck[:, 2])   # OS | MIS
                    H["w3"] = np.where(init, own_isn, ck[:, 3])
                elif lc == 6:                                 # INIT_ACK with a state cookie
                    H["w0"] = own_tag
                    H["w1"] = SCTP_RWND
                    H["w2"] = (10 << 16) | 10
                    H["w3"] = own_isn
                    H["w4"] = (7 << 16) | (4 + 4 * COOKIE_WORDS)   # State Cookie parameter
                    ck = self.cookie[cn]
                    for i in range(COOKIE_WORDS):
                        H[f"w{5 + i}"] = ck[:, i]
            L3 = 16 + self.l2
            L4 = L3 + (20 if fm == 4 else 40)
            payload_pos = off[rows] + W
            if fm == 4:
                H["ip_sum"] = (~_fold(_words(h2, L3, L3 + 20))).astype(np.uint16)
                pseudo = _words(h2, L3 + 12, L3 + 20)
            else:
                pseudo = _words(h2, L3 + 8, L3 + 40)
            if lc <= 1:
                l4len = (W - L4 + pl).astype(np.uint64)
                ssum = (pseudo + pnum + (l4len >> _U64(16)) + (l4len & _U64(0xFFFF))
                        + _words(h2, L4, W) + _pattern_sum(payload_pos, pl))
                ck = (~_fold(ssum)).astype(np.uint16)
                if lc == 1:
                    ck[ck == 0] = 0xFFFF
                H["sum"] = ck
            # scatter the header rows (record header included) into the buffer
            _kern.scatter_rows(buf, np.ascontiguousarray(off[rows]), h2)
            if lc >= 2:
                sctp_rows.append((rows, L4, W))
        if sctp_rows:
            starts, lens = [], []
            for rows, L4, W in sctp_rows:
                pd = pad[rows]
                endp = off[rows] + W + plen[rows]
                for dz in range(3):
                    mz = pd > dz
                    buf[endp[mz] + dz] = 0
                starts.append(off[rows] + L4)
                lens.append(16 + wire[rows] - L4)
            _kern.sctp_checksums(buf, np.ascontiguousarray(np.concatenate(starts)),
                                 np.ascontiguousarray(np.concatenate(lens)))
        if (incl < wire).any():
            keep = 16 + incl
            noff = np.zeros(n, np.int64)
            np.cumsum(keep[:-1], out=noff[1:])
            src = np.repeat(off - noff, keep) + np.arange(int(keep.sum()), dtype=np.int64)
            buf = buf[src]
        return buf


def _pcap_header(snaplen: int, linktype: int) -> bytes:
    return np.array([0xA1B23C4D], "<u4").tobytes() + np.array([2, 4], "<u2").tobytes() + \
        np.array([0, 0, snaplen, linktype], "<u4").tobytes()


# ---------------------------------------------------------------------------------------------
# the generator


_CONN_DTYPE = np.dtype([
    ("proto", "u1"), ("family", "u1"), ("client", "i4"), ("cport", "u2"), ("vip", "i2"),
    ("vport", "u2"), ("t_first", "i8"), ("t_last", "i8"), ("close", "u1"), ("syn_retx", "u1"),
    ("rounds", "i8"), ("packets", "i8"), ("isn_c", "u4"), ("isn_s", "u4"), ("reuse", "?"),
])


def synthesize(spec: Union[SynthSpec, dict], path, *, rules_path=None, events_path=None,
               conn_table: bool = False) -> SynthResult:
    """Generate the capture ``spec`` describes into ``path`` (classic pcap, ns timestamps).

    With ``rules_path``/``events_path`` also write the scenario's ipvsadm rules and timed
    events. ``conn_table=True`` returns the per-connection ground truth in the result
    (timestamps relative to ``spec.start_time``, ns). Raises ValueError for a bad spec.
    """
    t_start = time.perf_counter()
    spec = _as_spec(spec)
    plan = _check_spec(spec)
    s = plan.spec
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory")
    rng = np.random.default_rng(int(s.seed))
    c = _make_conns(plan, rng)
    if s.packets is not None:
        _fit_packets(c, s.view, int(s.packets), rng)

    total = int((c.h + c.rounds * c.per + c.cl).sum())
    if total > MAX_PACKETS:
        raise ValueError(f"the spec yields {total:,} packets, more than {MAX_PACKETS:,}")

    # expand to packets, connection chunk by chunk; end times for the port allocation
    parts = []
    t_last = np.empty(c.n, np.int64)
    xrng = np.random.default_rng([int(s.seed), 1])
    for lo in range(0, c.n, EXPAND_CONNS):
        idx = np.arange(lo, min(lo + EXPAND_CONNS, c.n), dtype=np.int64)
        pk, tl = _expand(c, idx, xrng, s.view)
        parts.append(pk)
        t_last[idx] = tl
    pk = _cat(parts)
    del parts

    cport = _assign_ports(plan, c, t_last, rng)
    ok = cport >= 0
    exhausted = int((~ok).sum())
    isn_c, isn_s, tag_c, tag_s, own2 = _isns(plan, c, np.maximum(cport, 0), ok)

    if exhausted:
        m = ok[pk.conn]
        pk = _Pkts(*(getattr(pk, f.name)[m] for f in dataclasses.fields(_Pkts)))
    # times strictly increase within a connection, so any sort keeps each connection's order
    order = np.argsort(pk.t)
    if s.packets is not None:
        if len(order) < int(s.packets):
            raise ValueError(f"only {c.n - exhausted:,} of {c.n:,} connections found a free source "
                             f"port, too few for {int(s.packets):,} packets: widen the port range "
                             "or add clients")
        order = order[: int(s.packets)]
    pk = _Pkts(*(getattr(pk, f.name)[order] for f in dataclasses.fields(_Pkts)))
    del order
    npk = len(pk.t)
    if npk == 0:
        raise ValueError("the spec yields no packets")

    fb = _FrameBuilder(plan, c, np.maximum(cport, 0), isn_c, isn_s, tag_c, tag_s, own2)
    cum = np.cumsum(fb.prepare(pk))
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as f:
            f.write(_pcap_header(int(s.snaplen), LINKTYPES[s.linktype]))
            lo = 0
            while lo < npk:
                base = cum[lo - 1] if lo else 0
                hi = int(np.searchsorted(cum, base + CHUNK_BYTES, side="right"))
                hi = min(max(hi, lo + 1), lo + CHUNK_PACKETS, npk)
                f.write(fb.build(pk, lo, hi).data)
                lo = hi
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None

    # what ended up in the file
    counts = np.bincount(pk.conn, minlength=c.n)
    present = counts > 0
    key5 = (c.proto.astype(np.int64) << 56) | (c.client.astype(np.int64) << 26) | \
           (np.maximum(cport, 0).astype(np.int64) << 10) | c.vip.astype(np.int64)
    reuse = np.zeros(c.n, bool)
    pres = np.flatnonzero(present)
    o = pres[np.lexsort((c.t0[pres], key5[pres]))]
    reuse[o[1:]] = key5[o[1:]] == key5[o[:-1]]
    protos = {PROTOS[i]: int(((c.proto == i) & present).sum()) for i in range(3)}
    res = SynthResult(
        path=path, packets=npk, connections=int(present.sum()), reused_ports=int(reuse.sum()),
        duration=float(pk.t[-1] - pk.t[0]) / NS, bytes=path.stat().st_size, elapsed=0.0,
        exhausted=exhausted, protocols=protos)
    if rules_path is not None:
        res.rules_path = Path(rules_path)
        _write_text(res.rules_path, rules_text(s))
    if events_path is not None:
        res.events_path = Path(events_path)
        _write_text(res.events_path, events_text(s))
    if conn_table:
        tbl = np.zeros(c.n, _CONN_DTYPE)
        first_t = np.full(c.n, -1, np.int64)
        last_t = np.full(c.n, -1, np.int64)
        first_t[pk.conn[::-1]] = pk.t[::-1]
        last_t[pk.conn] = pk.t
        for name, val in (("proto", c.proto), ("family", c.fam), ("client", c.client),
                          ("cport", np.maximum(cport, 0)), ("vip", c.vip),
                          ("vport", fb.vport[c.vip]), ("t_first", first_t), ("t_last", last_t),
                          ("close", c.close), ("syn_retx", c.retx), ("rounds", c.rounds),
                          ("packets", counts), ("isn_c", isn_c), ("isn_s", isn_s), ("reuse", reuse)):
            tbl[name] = val
        res.conn_table = tbl[present]
    res.elapsed = time.perf_counter() - t_start
    return res


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None


def client_address(spec: Union[SynthSpec, dict], client: int) -> str:
    """Text address of client id ``client`` (as in ``conn_table['client']``)."""
    plan = _check_spec(_as_spec(spec))
    s = plan.spec
    if not 0 <= client < s.clients:
        raise ValueError(f"client id {client} out of range 0..{s.clients - 1}")
    if client < plan.n4:
        return str(ipaddress.IPv4Address(s.client_base) + client)
    return str(ipaddress.IPv6Address(s.client_base6) + (client - plan.n4))


def synthesize_preset(name: str, path, *, rules=None, events=None, **overrides) -> SynthResult:
    """The named preset (with ``overrides``) into ``path``, plus its rules and events files."""
    return synthesize(preset(name, **overrides), path, rules_path=rules, events_path=events)


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ipvsflow synth``."""
    p = parser
    p.add_argument("out", metavar="OUT.pcap", help="capture to write (classic pcap, ns timestamps)")
    p.add_argument("--preset", default="default",
                   help="named scenario: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    p.add_argument("--seed", type=int, help="random seed (same seed, same bytes)")
    p.add_argument("--duration", type=float, help="seconds during which connections arrive")
    p.add_argument("--rate", type=float, help="new connections per second (Poisson)")
    p.add_argument("--conns", type=int, help="exact number of connections")
    p.add_argument("--packets", type=int, help="exact number of packets (scales the exchanges)")
    p.add_argument("--clients", type=int, help="number of client addresses")
    p.add_argument("--ipv6-share", type=float, help="fraction of IPv6 clients (needs an IPv6 VIP)")
    p.add_argument("--port-range", help="client source ports A-B (e.g. 32768-32800 for heavy reuse)")
    p.add_argument("--port-alloc", choices=("seq", "random"), help="source port choice")
    p.add_argument("--vip", action="append", metavar="ADDR:PORT[/proto]",
                   help="virtual service (repeatable); IPv6 as [ADDR]:PORT; proto tcp|udp|sctp")
    p.add_argument("--udp-share", type=float, help="fraction of UDP flows")
    p.add_argument("--sctp-share", type=float, help="fraction of SCTP associations")
    p.add_argument("--conn-duration", type=float, help="mean connection duration, seconds")
    p.add_argument("--rounds", type=float, help="mean request/response exchanges per connection")
    p.add_argument("--request-bytes", type=float, help="mean request size")
    p.add_argument("--response-bytes", type=float, help="mean response size")
    p.add_argument("--close-mix", metavar="STYLE=W,...",
                   help="close styles and weights: fin, server-fin, rst, server-rst")
    p.add_argument("--syn-retx", type=float, help="probability of a retransmitted SYN/INIT")
    p.add_argument("--long-lived", type=float, help="fraction of connections open to the end")
    p.add_argument("--view", choices=("both", "dr"),
                   help="both: client<->VIP in front of the director; dr: client->VIP only")
    p.add_argument("--linktype", choices=tuple(LINKTYPES), help="eth (Ethernet) or raw (IP)")
    p.add_argument("--snaplen", type=int, help="bytes kept per packet")
    p.add_argument("--servers", type=int, help="real servers per VIP in the rules file")
    p.add_argument("--scheduler", help="scheduler in the rules file (rr, wlc, ...)")
    p.add_argument("--fwd", choices=("g", "m", "i"), help="forwarding in the rules file: g DR, m NAT, i tunnel")
    p.add_argument("--rules", metavar="FILE", help="also write the matching ipvsadm rules (save format)")
    p.add_argument("--events", metavar="FILE", help="also write the scenario's timed rule changes")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary line")


_ARG_FIELDS = {
    "seed": "seed", "duration": "duration", "rate": "rate", "conns": "conns", "packets": "packets",
    "clients": "clients", "ipv6_share": "ipv6_share", "port_alloc": "port_alloc",
    "udp_share": "udp_share", "sctp_share": "sctp_share", "conn_duration": "conn_duration",
    "rounds": "rounds", "request_bytes": "request_bytes", "response_bytes": "response_bytes",
    "syn_retx": "syn_retx", "long_lived": "long_lived", "view": "view", "linktype": "linktype",
    "snaplen": "snaplen", "servers": "servers", "scheduler": "scheduler", "fwd": "fwd",
}


def _parse_close_mix(text: str) -> dict:
    mix = {}
    for part in text.split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        k = k.strip()
        if not sep or k not in CLOSE_STYLES[1:]:
            raise ValueError(f"bad --close-mix {text!r}: expected STYLE=WEIGHT,... with STYLE in "
                             f"{', '.join(CLOSE_STYLES[1:])}")
        try:
            mix[k] = float(v)
        except ValueError:
            raise ValueError(f"bad --close-mix weight {v!r}") from None
    if not mix:
        raise ValueError(f"bad --close-mix {text!r}")
    return mix


def spec_from_args(args) -> SynthSpec:
    over = {}
    for a, f in _ARG_FIELDS.items():
        v = getattr(args, a, None)
        if v is not None:
            over[f] = v
    if getattr(args, "port_range", None):
        over["port_range"] = parse_port_range(args.port_range)
    if getattr(args, "vip", None):
        over["vips"] = list(args.vip)
        if not any(k in over for k in ("udp_share", "sctp_share")):
            over["udp_share"] = None
            over["sctp_share"] = None
    if getattr(args, "close_mix", None):
        over["close_mix"] = _parse_close_mix(args.close_mix)
    return preset(args.preset or "default", **over)


def run(args) -> int:
    """Run ``ipvsflow synth`` with parsed ``args``; bad arguments raise ValueError."""
    spec = spec_from_args(args)
    res = synthesize(spec, args.out, rules_path=getattr(args, "rules", None),
                     events_path=getattr(args, "events", None))
    if not getattr(args, "quiet", False):
        extra = ""
        if res.rules_path:
            extra += f"; rules {res.rules_path}"
        if res.events_path:
            extra += f"; events {res.events_path}"
        print(res.summary() + extra)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ipvsflow synth", description="Generate a synthetic capture.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        parser.exit(1, f"ipvsflow synth: error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
