"""Kernel conformance fixtures (tests/fixtures/oracle/<name>/) and their comparison with an engine.

Each fixture is a capture replayed through the real Linux IPVS (Debian's 6.1 kernel, in the
oracle VM) with what the kernel did per packet. This module turns a fixture into

* the engine's configuration: :func:`build_config` (services and real servers in the same order,
  weights, thresholds and forwarding, from the ipvsadm commands the VM ran; sysctls from
  ``expected["sysctl_vs"]``; timeouts as the VM listed them),
* the timed rule changes: :func:`events` (the ``actions`` file as ipvsflow Commands, each applied
  before the packet it ran before in the VM),
* the packets the kernel saw: :func:`injected_indices` (in DR/TUN the server replies written in the
  capture never reach the director and are not fed to the engine),

and compares a run of an engine against the kernel. A run is engine-neutral (:class:`Run` of
:class:`Step`), so any implementation can be checked: :func:`run_engine` produces one from
``ipvsflow.engine.Engine``. The comparisons (:func:`compare`) return readable mismatch lines:

* per injected client packet: forwarded or not, and to which real server (``rs_ip``);
* per injected server reply (NAT): un-NATed to the client (VIP source) or not;
* the connections of the packet's client after each packet (``conns_after``), as sets;
* the final connection listing as a set, ``expires`` within a tolerance;
* ``summary.rs_sequence``.

Connection listings are compared as sets because the kernel lists its hash table in an order
seeded at random per boot. Entries the kernel shows with ``expires`` 0 are being expired
("expire now": the timer fires right after the packet); either side may or may not list them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "oracle"

# Seconds of tolerance when comparing ``expires`` (the kernel prints whole seconds, rounded down,
# of a jiffies-based timer).
EXPIRES_TOLERANCE = 2

# Kernel sysctls the engine models (ipvsflow.config.SYSCTL_DEFAULTS has the same names).
MODEL_SYSCTLS = ("conn_reuse_mode", "expire_nodest_conn", "expire_quiescent_template", "conntrack",
                 "secure_tcp", "sloppy_tcp", "sloppy_sctp", "schedule_icmp", "nat_icmp_send", "cache_bypass")


class FixtureError(ValueError):
    """A fixture directory is incomplete or inconsistent."""


# --------------------------------------------------------------------------------------------
# loading

@dataclass
class Fixture:
    name: str
    path: Path
    spec: dict
    args: list
    actions: list           # [(pcap index, command text)] as in the actions file
    expected: dict

    @property
    def pcap(self) -> Path:
        return self.path / "input.pcap"

    @property
    def mode(self) -> str:
        return self.expected["config"]["mode"]

    @property
    def description(self) -> str:
        return self.spec.get("description", "")

    @property
    def requires(self) -> list:
        return list(self.spec.get("requires", []))

    def packet(self, index: int) -> dict:
        return self.expected["packets"][index]


def fixture_names(root: Path = FIXTURES) -> list:
    """Names of the complete fixtures (spec.json, args, input.pcap and expected.json present)."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir()
                  if all((d / f).is_file() for f in ("spec.json", "args", "input.pcap", "expected.json")))


def read_actions(path: Path) -> list:
    out = []
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        idx, _, cmd = line.strip().partition(" ")
        if not idx.isdigit() or not cmd.strip():
            raise FixtureError(f"{path}:{n}: expected 'INDEX command', got {line!r}")
        out.append((int(idx), cmd.strip()))
    return out


def requires(path: Path) -> list:
    """Engine features (beyond the first part of the engine) a fixture exercises: spec.json
    "requires", e.g. ["sctp"], ["persistence"], ["mh"], ["fwmark"], ["icmp"]."""
    return list(json.loads((Path(path) / "spec.json").read_text()).get("requires", []))


def load_fixture(name: str, root: Path = FIXTURES) -> Fixture:
    d = root / name
    try:
        spec = json.loads((d / "spec.json").read_text())
        expected = json.loads((d / "expected.json").read_text())
        lines = [ln for ln in (d / "args").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except FileNotFoundError as e:
        raise FixtureError(f"fixture {name}: missing {e.filename}") from None
    if len(lines) != 1:
        raise FixtureError(f"fixture {name}: args must hold one line of options")
    fx = Fixture(name, d, spec, shlex.split(lines[0]), read_actions(d / "actions"), expected)
    if len(expected.get("packets", [])) != len(spec.get("packets", [])):
        raise FixtureError(f"fixture {name}: expected.json has {len(expected.get('packets', []))} packets, "
                           f"spec.json {len(spec.get('packets', []))}")
    return fx


# --------------------------------------------------------------------------------------------
# configuration

def _strip_setup_cmd(line: str) -> str:
    # setup lines look like: ipvsadm -a ... || echo "SETUP-FAIL: ..."
    return line.split(" || ")[0].strip()


def rules_text(expected: dict) -> str:
    """The services and real servers the VM configured, as ipvsadm save-format lines in the order they
    were applied (``ipvsadm -A``/``-a`` commands of the setup script and any ``ipvsadm -R`` input)."""
    script = expected.get("setup_script", "")
    out = []
    lines = iter(script.splitlines())
    for line in lines:
        cmd = _strip_setup_cmd(line)
        if re.match(r"ipvsadm -R\s*<<", cmd):
            tag = re.search(r"<<\s*'?(\w+)'?", cmd).group(1)
            for body in lines:
                if body.strip() == tag:
                    break
                if body.strip() and not body.lstrip().startswith("#"):
                    out.append(body.strip())
        elif re.match(r"ipvsadm -[AaEe] ", cmd):
            out.append(cmd[len("ipvsadm "):])
    if not out:
        raise FixtureError("setup_script holds no ipvsadm service definition")
    return "\n".join(out) + "\n"


def timeouts(expected: dict) -> tuple:
    """(tcp, tcpfin, udp) as the VM listed them after setup (``ipvsadm -Ln --timeout``)."""
    m = re.search(r"Timeout \(tcp tcpfin udp\):\s*(\d+)\s+(\d+)\s+(\d+)", expected.get("ipvsadm_initial", ""))
    if not m:
        raise FixtureError("ipvsadm_initial has no 'Timeout (tcp tcpfin udp)' line")
    return tuple(int(x) for x in m.groups())


def conntrack_active(fx: Fixture) -> bool:
    """True if netfilter conntrack saw the packets in the VM.

    IPVS's ``conntrack`` sysctl only matters when netfilter tracks the traffic; in the VM that needs
    ``--ct-hooks`` (or an nft ruleset using ``ct``). Without it no packet carries a conntrack, so the
    kernel behaves exactly as with ``conntrack=0`` (no confirmed conntrack, no old_ct drop).
    """
    if "--ct-hooks" in fx.args:
        return True
    if "--nft" in fx.args:
        nft = fx.path / fx.args[fx.args.index("--nft") + 1]
        return nft.exists() and re.search(r"\bct\b", nft.read_text()) is not None
    return False


def sysctls(fx: Fixture) -> dict:
    vals = {}
    for k in MODEL_SYSCTLS:
        v = fx.expected["sysctl_vs"].get(k)
        if v is not None:
            vals[k] = int(v)
    if vals.get("conntrack") and not conntrack_active(fx):
        vals["conntrack"] = 0
    return vals


def build_config(fx: Fixture):
    """ipvsflow.config.Config equivalent to the VM's setup."""
    from ipvsflow import config as C
    cfg = C.parse_rules(rules_text(fx.expected))
    if "--nft" in fx.args:
        # the nft ruleset the VM loaded marks packets for fwmark services
        from ipvsflow.marks import load_marks
        cfg.marks = load_marks(str(fx.path / fx.args[fx.args.index("--nft") + 1]))
    cfg.sysctls.update(sysctls(fx))
    cfg.timeouts = timeouts(fx.expected)
    cfg.kernel = "6.1"
    return cfg


def command_of(text: str, source: str = "<actions>", lineno: int = 0):
    """An actions-file command (``ipvsadm ...`` or ``sysctl -w net.ipv4.vs.NAME=VALUE``) as an
    ipvsflow.config.Command."""
    from ipvsflow import config as C
    text = text.strip()
    m = re.fullmatch(r"sysctl\s+-w\s+net\.ipv4\.vs\.(\w+)\s*=\s*(-?\d+)", text)
    if m:
        return C.parse_command(f"--sysctl {m.group(1)}={m.group(2)}", lineno, source)
    if text.startswith("ipvsadm "):
        return C.parse_command(text, lineno, source)
    raise FixtureError(f"{source}:{lineno}: cannot map action {text!r} to an engine command")


def injected_indices(fx: Fixture) -> list:
    """pcap indices of the packets the kernel saw (what the engine must be fed)."""
    return [p["index"] for p in fx.expected["packets"] if p.get("injected")]


def event_schedule(fx: Fixture) -> dict:
    """{pcap index: [command text, ...]}: each action runs before the first injected packet at or after
    its index (as the VM does); index len(packets) means after the last packet."""
    inj = injected_indices(fx)
    n = len(fx.expected["packets"])
    sched: dict = {}
    for idx, cmd in fx.actions:
        later = [i for i in inj if i >= idx]
        at = later[0] if later and idx < n else n
        sched.setdefault(at, []).append(cmd)
    return sched


def events(fx: Fixture) -> list:
    """[(pcap index, Command)] in order; index len(packets) = after the last packet."""
    out = []
    for at, cmds in sorted(event_schedule(fx).items()):
        for k, c in enumerate(cmds):
            out.append((at, command_of(c, source=str(fx.path / "actions"), lineno=k + 1)))
    return out


def packet_ts_ns(fx: Fixture) -> list:
    """Relative timestamps (ns) of every pcap packet, as the VM replayed them."""
    return [round(p["ts"] * 1e9) for p in fx.expected["packets"]]


# --------------------------------------------------------------------------------------------
# connection rows in one normal form

def _addr(a: str) -> str:
    return str(ipaddress.ip_address(a.strip("[]")))


def split_endpoint(ep: str) -> tuple:
    """'1.2.3.4:80' / '[2001:db8::1]:80' -> (normalised address, port)."""
    ep = ep.strip()
    if ep.startswith("["):
        a, p = ep[1:].split("]:")
    else:
        a, p = ep.rsplit(":", 1)
    return _addr(a), int(p)


def _expire_seconds(v) -> int:
    if isinstance(v, str) and ":" in v:          # ipvsadm -Lnc style "mm:ss"
        m, s = v.split(":")
        return int(m) * 60 + int(s)
    return int(v)


@dataclass(frozen=True)
class ConnKey:
    proto: str
    client: str
    cport: int
    vip: str
    vport: int
    rs: str
    rport: int
    state: str

    def __str__(self):
        return (f"{self.proto} {self.client}:{self.cport} -> {self.vip}:{self.vport} -> "
                f"{self.rs}:{self.rport} {self.state}")


def conn_from_kernel(row: dict) -> tuple:
    """(ConnKey, expires) of a kernel conns_after / final_conns row."""
    return ConnKey(row["proto"].lower(), _addr(row["client"]), int(row["cport"]), _addr(row["vip"]),
                   int(row["vport"]), _addr(row["rs"]), int(row["rport"]), row["state"]), int(row["expires"])


def conn_from_listing(row: dict) -> tuple:
    """(ConnKey, expires) of an ``Engine.connections()`` row (pro, expire, state, source, virtual,
    destination)."""
    proto = str(row.get("pro", row.get("proto", ""))).lower()
    c, cp = split_endpoint(row["source"])
    v, vp = split_endpoint(row["virtual"])
    d, dp = split_endpoint(row["destination"])
    return ConnKey(proto, c, cp, v, vp, d, dp, str(row["state"])), _expire_seconds(row["expire"])


def compare_conn_sets(kernel: Iterable, engine: Iterable, what: str,
                      expires_tol: Optional[int] = EXPIRES_TOLERANCE) -> list:
    """Mismatch lines between two listings of (ConnKey, expires). Entries at expires 0 on one side
    ("expire now") may be absent on the other; expires_tol None ignores expires."""
    kl, el = list(kernel), list(engine)
    msgs = []
    unmatched = list(el)
    for kk, kexp in kl:
        hit = next((x for x in unmatched if x[0] == kk), None)
        if hit is None:
            if kexp > 0:
                msgs.append(f"{what}: kernel has {kk} (expires {kexp}), engine has not")
            continue
        unmatched.remove(hit)
        if expires_tol is not None and abs(hit[1] - kexp) > expires_tol and not (kexp == 0 or hit[1] == 0):
            msgs.append(f"{what}: {kk} expires in {hit[1]} s, kernel {kexp} s")
    for ek, eexp in unmatched:
        if eexp > 0:
            msgs.append(f"{what}: engine has {ek} (expires {eexp}), kernel has not")
    return msgs


# --------------------------------------------------------------------------------------------
# engine-neutral runs

@dataclass
class Step:
    """What an implementation did with one injected packet."""
    index: int                          # pcap index
    forwarded: bool                     # sent on to a real server (c2s) / to the client (reply)
    rs_ip: Optional[str] = None         # real server the packet went to (c2s), normalised
    action: str = ""                    # implementation's own name (new/hit/resched/drop/pass/invalid)
    state: str = ""                     # connection state after the packet ("" if none)
    conns: Optional[list] = None        # [(ConnKey, expires)] of this packet's client after the packet


@dataclass
class Run:
    steps: dict = field(default_factory=dict)      # pcap index -> Step
    final_conns: Optional[list] = None              # [(ConnKey, expires)] at the end of the capture (+ tail)


def flow_filter(fx: Fixture, index: int) -> Callable:
    """Predicate selecting the rows the VM's flow snapshot holds for packet ``index``: the packet's
    client ip:port, plus that client's port-0 entries (persistence templates)."""
    p = fx.packet(index)
    if p["dir"] == "s2c":
        ip, port = _addr(p["dst"]), p.get("dport")
    else:
        ip, port = _addr(p["src"]), p.get("sport")
    return lambda k: k.client == ip and (k.cport == port or k.cport == 0)


# --------------------------------------------------------------------------------------------
# comparisons

def compare_forwarding(fx: Fixture, run: Run) -> list:
    msgs = []
    for p in fx.expected["packets"]:
        if not p.get("injected") or p["dir"] != "c2s":
            continue
        st = run.steps.get(p["index"])
        label = f"packet {p['index']} ({p['src']}:{p.get('sport')} {p.get('flags') or p.get('proto')})"
        if st is None:
            msgs.append(f"{label}: no decision")
            continue
        k_fwd = bool(p.get("forwarded"))
        if k_fwd != st.forwarded:
            msgs.append(f"{label}: kernel {'forwarded to ' + p['rs_ip'] if k_fwd else 'did not forward'}, "
                        f"engine {st.action} {st.rs_ip or ''}".rstrip())
        elif k_fwd and _addr(p["rs_ip"]) != st.rs_ip:
            msgs.append(f"{label}: kernel forwarded to {p['rs_ip']}, engine to {st.rs_ip} ({st.action})")
    return msgs


def compare_replies(fx: Fixture, run: Run) -> list:
    """NAT replies: the kernel un-NATed the reply to the client (source VIP) or did not."""
    msgs = []
    vip = _addr(fx.expected["config"]["vip"])
    for p in fx.expected["packets"]:
        if not p.get("injected") or p["dir"] != "s2c":
            continue
        st = run.steps.get(p["index"])
        if st is None:
            msgs.append(f"reply {p['index']}: no decision")
            continue
        as_ = p.get("to_client_as") or {}
        k_unnat = bool(p.get("forwarded_to_client")) and as_.get("src") is not None and _addr(as_["src"]) == vip
        if k_unnat != st.forwarded:
            msgs.append(f"reply {p['index']} ({p['dst']}:{p['dport']} {p.get('flags') or ''}): kernel "
                        f"{'un-NATed it' if k_unnat else 'did not un-NAT it'}, engine {st.action}")
    return msgs


def compare_states(fx: Fixture, run: Run, expires_tol: Optional[int] = EXPIRES_TOLERANCE) -> list:
    msgs = []
    for p in fx.expected["packets"]:
        if not p.get("injected") or "conns_after" not in p:
            continue
        st = run.steps.get(p["index"])
        if st is None or st.conns is None:
            msgs.append(f"packet {p['index']}: no connection snapshot")
            continue
        msgs += compare_conn_sets([conn_from_kernel(r) for r in p["conns_after"]], st.conns,
                                  f"after packet {p['index']}", expires_tol)
    return msgs


def compare_final(fx: Fixture, run: Run, expires_tol: Optional[int] = EXPIRES_TOLERANCE) -> list:
    if run.final_conns is None:
        return ["no final connection listing"]
    return compare_conn_sets([conn_from_kernel(r) for r in fx.expected["final_conns"]], run.final_conns,
                             "final listing", expires_tol)


def rs_sequence(fx: Fixture, run: Run) -> list:
    """The run's summary.rs_sequence: real-server index (into expected real_servers) of every injected
    c2s packet, None when not forwarded."""
    idx = {_addr(r["ip"]): r["index"] for r in fx.expected["real_servers"]}
    seq = []
    for p in fx.expected["packets"]:
        if p.get("injected") and p["dir"] == "c2s":
            st = run.steps.get(p["index"])
            seq.append(idx.get(st.rs_ip, st.rs_ip) if st is not None and st.forwarded else None)
    return seq


def compare_rs_sequence(fx: Fixture, run: Run) -> list:
    want = fx.expected["summary"]["rs_sequence"]
    got = rs_sequence(fx, run)
    if want != got:
        return [f"rs_sequence: kernel {want}, engine {got}"]
    return []


CHECKS = {"forwarding": compare_forwarding, "replies": compare_replies, "states": compare_states,
          "final": compare_final, "rs_sequence": compare_rs_sequence}


def compare(fx: Fixture, run: Run, checks: Iterable = tuple(CHECKS)) -> list:
    msgs = []
    for c in checks:
        msgs += CHECKS[c](fx, run)
    return msgs


def assert_matches(fx: Fixture, run: Run, checks: Iterable = tuple(CHECKS), limit: int = 40):
    msgs = compare(fx, run, checks)
    if msgs:
        more = f"\n  ... {len(msgs) - limit} more" if len(msgs) > limit else ""
        raise AssertionError(f"{fx.name}: {len(msgs)} differences from the kernel ({fx.description})\n  "
                             + "\n  ".join(msgs[:limit]) + more)


def kernel_run(fx: Fixture) -> Run:
    """The kernel's own result as a Run (a run that must compare equal to the fixture)."""
    run = Run()
    for p in fx.expected["packets"]:
        if not p.get("injected"):
            continue
        if p["dir"] == "c2s":
            fwd = bool(p.get("forwarded"))
            rs = _addr(p["rs_ip"]) if fwd else None
        else:
            as_ = p.get("to_client_as") or {}
            fwd = bool(p.get("forwarded_to_client")) and as_.get("src") is not None and \
                _addr(as_["src"]) == _addr(fx.expected["config"]["vip"])
            rs = None
        conns = [conn_from_kernel(r) for r in p["conns_after"]] if "conns_after" in p else None
        run.steps[p["index"]] = Step(p["index"], fwd, rs, "forwarded" if fwd else "not forwarded", "", conns)
    run.final_conns = [conn_from_kernel(r) for r in fx.expected["final_conns"]]
    return run


# --------------------------------------------------------------------------------------------
# running ipvsflow's engine

FORWARDING_ACTIONS = (1, 2, 3)          # new, hit, resched


def run_engine(fx: Fixture, *, per_packet: bool = True, engine_kwargs: Optional[dict] = None) -> Run:
    """Feed the fixture's injected packets to ``ipvsflow.engine.Engine`` (rule changes applied before
    the packets they precede, at those packets' times) and record a Run.

    per_packet=True processes one packet per call and snapshots the packet's client connections after
    each; per_packet=False processes maximal bursts between rule changes and skipped packets (the burst
    pipeline) and records decisions only.
    """
    import numpy as np
    from ipvsflow.engine import ACTIONS, Engine, state_name
    from ipvsflow.io import open_capture

    eng = Engine(build_config(fx), **(engine_kwargs or {}))
    injected = set(injected_indices(fx))
    sched = {}
    for at, cmd in events(fx):
        sched.setdefault(at, []).append(cmd)
    dest_ip = {}

    def rs_ip(rs_id):
        if rs_id < 0:
            return None
        if rs_id not in dest_ip:
            for d in eng.dests():
                dest_ip[d["id"]] = _addr(str(d["addr"]))
        return dest_ip[rs_id]

    def apply_before(index, ts_ns):
        for cmd in sched.get(index, ()):
            eng.advance(ts_ns)
            eng.apply(cmd)
            dest_ip.clear()

    run = Run()
    last_ts = None
    for batch in open_capture(str(fx.pcap)):
        rows = batch.to_numpy()
        n = len(rows)
        i = 0
        while i < n:
            index = int(rows["index"][i])
            ts = int(rows["ts_ns"][i])
            if index not in injected:
                i += 1
                continue
            apply_before(index, ts)
            j = i + 1
            if not per_packet:
                while j < n and int(rows["index"][j]) in injected and int(rows["index"][j]) not in sched:
                    j += 1
            dec = eng.process(batch, i, j)
            for r in np.asarray(dec):
                pidx = int(r["pkt"])
                st = Step(pidx, int(r["action"]) in FORWARDING_ACTIONS, rs_ip(int(r["rs"])),
                          ACTIONS[int(r["action"])], state_name(int(r["proto"]), int(r["state"]))
                          if int(r["conn"]) else "")
                run.steps[pidx] = st
            if per_packet:
                keep = flow_filter(fx, index)
                st.conns = [c for c in (conn_from_listing(x) for x in eng.connections()) if keep(c[0])]
            last_ts = int(rows["ts_ns"][j - 1])
            i = j
    n_pkts = len(fx.expected["packets"])
    for cmd in sched.get(n_pkts, ()):
        eng.apply(cmd)
    if last_ts is not None:
        end = last_ts + round(fx.expected["config"].get("tail", 0.5) * 1e9)
        eng.advance(end)
        run.final_conns = [conn_from_listing(x) for x in eng.connections(end)]
    return run
