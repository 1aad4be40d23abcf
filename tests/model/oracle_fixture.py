"""Kernel oracle fixtures (tests/fixtures/oracle/<name>/) for the model: the configuration the
kernel ran, the packets it was given, and a packet-by-packet comparison of the model's decisions
with what the kernel did."""
from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ipvsflow.config import (FWD_DROUTE, FWD_MASQ, FWD_TUNNEL, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
                             SVC_F_PERSISTENT, SYSCTL_DEFAULTS, Command, Config, RealServer,
                             VirtualService, parse_command, parse_rules, parse_sysctl)

from .ipvs_model import NS, IPVSModel, norm_addr
from .nft import Ruleset
from .packets import read_pcap

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "oracle"
FWD = {"nat": FWD_MASQ, "dr": FWD_DROUTE, "tun": FWD_TUNNEL}
PROTOS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "sctp": PROTO_SCTP}
FORWARDED = ("new", "hit", "resched")
SCHED_FLAG_BITS = {"sh-fallback": 0x0008, "mh-fallback": 0x0008, "sh-port": 0x0010, "mh-port": 0x0010}


def fixture_dirs() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*") if (p / "expected.json").exists() and (p / "input.pcap").exists())


def _args(path: Path) -> dict:
    """run.sh options of a fixture -> {option: value or True}; --sysctl may repeat."""
    tokens = shlex.split((path / "args").read_text()) if (path / "args").exists() else []
    out: dict = {"--sysctl": []}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--") and "=" in tok:
            k, v = tok.split("=", 1)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            k, v = tok, tokens[i + 1]
            i += 1
        else:
            k, v = tok, True
        if k == "--sysctl":
            out["--sysctl"].append(v)
        else:
            out[k] = v
        i += 1
    return out


@dataclass
class Fixture:
    name: str
    path: Path
    expected: dict
    config: Config
    packets: list                       # model Packets of every pcap record
    injected: list[bool]                # whether the kernel was given each record
    commands: dict = field(default_factory=dict)   # pcap index -> [Command]
    unsupported: str = ""               # why the model can't run it (empty = runs)
    conntrack_hooks: bool = False       # netfilter conntrack active (run.sh --ct-hooks)


def _prefix(mask) -> int:
    """ipvsadm -M: a prefix length or a dotted IPv4 mask."""
    mask = str(mask)
    if "." in mask:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    return int(mask)


def _sysctl_command(line: str) -> Command:
    # "sysctl -w net.ipv4.vs.name=value"
    words = line.split()
    name, value = parse_sysctl(words[-1])
    return Command(op="sysctl", sysctl=(name, value), line=line)


def _check_dest_endpoint(cmd: Command, line: str):
    """The real server of a -a/-e/-d line is the -r endpoint as written; parse_command has been
    seen to drop the port of a -d line, which would make the delete miss its server."""
    words = line.split()
    if cmd.dest is None or "-r" not in words:
        return
    text = words[words.index("-r") + 1]
    if text.count(":") == 1 and not text.startswith("["):
        port = int(text.split(":")[1])
        if cmd.dest.port != port:
            cmd.dest.port = port


def load(path: Path) -> Fixture:
    exp = json.loads((path / "expected.json").read_text())
    args = _args(path)
    cfg = exp["config"]
    unsupported = ""
    if cfg.get("rules"):
        rules_file = path / Path(str(args.get("--rules", "rules"))).name
        config = parse_rules(rules_file.read_text(), source=str(rules_file))
    else:
        proto = PROTOS[cfg["proto"]]
        fwd = FWD[cfg["mode"]]
        ut = [int(x) for x in str(args.get("--u-thresholds", "")).split(",") if x != ""]
        lt = [int(x) for x in str(args.get("--l-thresholds", "")).split(",") if x != ""]
        dests = []
        for i, rs in enumerate(exp["real_servers"]):
            dests.append(RealServer(rs["ip"], rs["port"], fwd=fwd, weight=rs["weight"],
                                    u_threshold=ut[i] if i < len(ut) else 0,
                                    l_threshold=lt[i] if i < len(lt) else 0))
        flags = 0
        for f in (cfg.get("sched_flags") or "").split(","):
            if f:
                flags |= SCHED_FLAG_BITS[f]
        timeout = 0
        if cfg.get("persistent"):
            flags |= SVC_F_PERSISTENT
            timeout = int(cfg["persistent"])
        vs = VirtualService(proto=proto, addr=cfg["vip"], port=cfg["vport"], scheduler=cfg["sched"],
                            flags=flags, timeout=timeout,
                            netmask=_prefix(args["--netmask"]) if "--netmask" in args else 0, dests=dests)
        config = Config(services=[vs])
        if cfg.get("pe"):
            unsupported = "persistence engines"
    for name in SYSCTL_DEFAULTS:
        if name in exp.get("sysctl_vs", {}):
            config.sysctls[name] = int(str(exp["sysctl_vs"][name]).split()[0])
    if "--timeouts" in args:
        config.timeouts = tuple(int(x) for x in str(args["--timeouts"]).split(","))
    commands: dict = {}
    if (path / "actions").exists():
        for line in (path / "actions").read_text().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            index, cmdline = line.split(None, 1)
            if cmdline.startswith("sysctl"):
                cmd = _sysctl_command(cmdline)
            else:
                cmd = parse_command(cmdline, source=str(path / "actions"))
                _check_dest_endpoint(cmd, cmdline)
            commands.setdefault(int(index), []).append(cmd)
    packets = read_pcap(path / "input.pcap")
    apply_marks(path, packets, args)
    injected = [bool(p.get("injected")) for p in exp["packets"]]
    if len(packets) != len(exp["packets"]):
        raise AssertionError(f"{path.name}: {len(packets)} pcap records, {len(exp['packets'])} in expected.json")
    fx = Fixture(path.name, path, exp, config, packets, injected, commands, unsupported)
    fx.conntrack_hooks = "--ct-hooks" in args
    return fx


def apply_marks(path: Path, packets: list, args: dict | None = None) -> None:
    """Give the packets the firewall marks the fixture's nftables ruleset (``--nft FILE``) set
    in the VM's prerouting hook."""
    args = _args(path) if args is None else args
    if "--nft" in args:
        Ruleset((path / Path(str(args["--nft"])).name).read_text()).apply(packets)


def _row_key(r: dict) -> tuple:
    return (str(r["proto"]).lower(), norm_addr(r["client"]), int(r["cport"]), norm_addr(r["vip"]),
            int(r["vport"]), norm_addr(r["rs"]), int(r["rport"]), r["state"])


def _model_rows(model: IPVSModel, client=None, cport=None) -> list[dict]:
    rows = []
    for r in model.connections():
        if r["expires"] == 0:
            continue            # expired "now": gone right after the packet
        if client is not None and r["template"] is False and (r["client"], r["cport"]) != (client, cport):
            continue
        if client is not None and r["template"] and r["client"] != client:
            continue
        rows.append(r)
    return rows


def _counters(model: IPVSModel) -> dict:
    """(weight, active, inactive) of every listed real server, as /proc/net/ip_vs shows them."""
    return {(d.addr, d.port): (d.weight, d.active, d.inactive) for d in model.all_dests if d.available}


def _within_timer_slack(model: IPVSModel, kernel: dict, counters: dict) -> bool:
    """The kernel's timer wheel fires an idle timer late by up to about 1/8 of its timeout (HZ 250
    wheel granularity); a server may still count entries the model has just expired. Accept the
    kernel's counters when they lie between the model's and the model's plus the entries expired
    within that slack."""
    now = model.now
    late = {}
    for at, cp in model.expired:
        if cp.dest is None or cp.template or now - at > max(cp.timeout * NS // 8, NS // 10):
            continue
        key = (cp.dest.addr, cp.dest.port)
        a, i = late.get(key, (0, 0))
        late[key] = (a, i + 1) if cp.flags & 0x0100 else (a + 1, i)
    if kernel.keys() != counters.keys():
        return False
    for key, (w, a, i) in counters.items():
        kw, ka, ki = kernel[key]
        la, li = late.get(key, (0, 0))
        if kw != w or not (a <= ka <= a + la and i <= ki <= i + li):
            return False
    return True


def compare(fx: Fixture, dr_replies: str = "ignore", expires_tolerance: int = 2) -> tuple[list[str], list[dict]]:
    """Run the model over the fixture; returns (mismatch messages, model decisions)."""
    model = IPVSModel(fx.config, dr_replies=dr_replies, conntrack_hooks=fx.conntrack_hooks)
    problems: list[str] = []
    decisions = []
    t0 = fx.packets[0].ts_ns if fx.packets else 0
    kpkts = fx.expected["packets"]
    for i, pkt in enumerate(fx.packets):
        for cmd in fx.commands.get(i, ()):
            model.advance(pkt.ts_ns)
            model.apply(cmd)
        if not fx.injected[i]:
            continue
        d = model.process(pkt, i)
        decisions.append(d)
        # An entry expired "now" is unlinked by its timer right after the packet; the kernel's
        # snapshot of the server counters may be read before or after that timer ran.
        counters_before = _counters(model)
        model.advance(pkt.ts_ns)
        k = kpkts[i]
        where = f"{fx.name} pkt {i} t={(pkt.ts_ns - t0) / NS:.3f} {k['dir']} {k.get('flags') or k.get('chunks')}"
        if k["dir"] == "c2s":
            fwd = d["action"] in FORWARDED
            if fwd != bool(k.get("forwarded")):
                problems.append(f"{where}: kernel forwarded={k.get('forwarded')} model {d['action']}/{d['reason']}")
            elif fwd and d["rs"].rsplit(":", 1)[0].strip("[]") != norm_addr(k["rs_ip"]):
                problems.append(f"{where}: kernel rs {k['rs_ip']} model {d['rs']} ({d['action']})")
        elif k["dir"] == "s2c":
            fwd = d["action"] == "hit" and d["dir"] == "out"
            if fwd != bool(k.get("forwarded_to_client")):
                problems.append(f"{where}: kernel to-client={k.get('forwarded_to_client')} model {d['action']}/{d['reason']}")
        # that client's entries (and its templates) after the packet
        if "conns_after" in k:
            client, cport = (pkt.src, pkt.sport) if k["dir"] == "c2s" else (pkt.dst, pkt.dport)
            krows = [r for r in k["conns_after"] if int(r.get("expires", 1)) != 0]
            mrows = _model_rows(model, client, cport)
            kset = sorted(_row_key(r) for r in krows)
            mset = sorted(_row_key(r) for r in mrows)
            if kset != mset:
                problems.append(f"{where}: entries kernel {kset} model {mset}")
            else:
                kexp = sorted((_row_key(r), int(r["expires"])) for r in krows)
                mexp = sorted((_row_key(r), int(r["expires"])) for r in mrows)
                for (key, ke), (_, me) in zip(kexp, mexp):
                    if abs(ke - me) > expires_tolerance:
                        problems.append(f"{where}: {key} expires kernel {ke} model {me}")
        if "dests_after" in k:
            counters = _counters(model)
            kcounters = {(norm_addr(x["ip"]), int(x["port"])): (int(x["weight"]), int(x["active"]), int(x["inactive"]))
                         for x in k["dests_after"]}
            if kcounters not in (counters, counters_before) and not _within_timer_slack(model, kcounters, counters):
                problems.append(f"{where}: dests (weight, active, inactive) kernel {kcounters} model {counters}")
    # the final table, after the replay's tail
    tail = float(fx.expected["config"].get("tail") or 0.5)
    end = (fx.packets[-1].ts_ns if fx.packets else 0) + int(tail * NS)
    for i in sorted(k for k in fx.commands if k >= len(fx.packets)):
        for cmd in fx.commands[i]:
            model.apply(cmd)
    model.advance(end)
    if "final_conns" in fx.expected:
        kset = sorted(_row_key(r) for r in fx.expected["final_conns"] if int(r.get("expires", 1)) != 0)
        mset = sorted(_row_key(r) for r in _model_rows(model))
        if kset != mset:
            missing = sorted(set(kset) - set(mset))
            extra = sorted(set(mset) - set(kset))
            problems.append(f"{fx.name} final table: kernel-only {missing} model-only {extra}")
    return problems, decisions
