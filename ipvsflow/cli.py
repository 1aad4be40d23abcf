"""The ``ipvsflow`` command.

Exit codes: 0 done, 1 user error (one-line message on stderr), 2 usage error (argparse).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

# Before numpy is imported: BLAS worker threads spin while idle and take the second core from
# the replay (nothing here does linear algebra). An explicit setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
del _var

from . import __version__  # noqa: E402


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""


def _die(msg: str) -> int:
    msg = " ".join(str(msg).split()) or "failed"
    print(f"ipvsflow: error: {msg}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------------------
# shared option groups

def _add_rule_options(p: argparse.ArgumentParser, kernel_help: str = "") -> None:
    g = p.add_argument_group("rules")
    g.add_argument("-C", "--rules", metavar="FILE", action="append", default=[],
                   help="rules in ipvsadm save format (ipvsadm-save -n) or keepalived virtual_server blocks")
    g.add_argument("-R", "--rule", metavar="LINE", action="append", default=[],
                   help="an inline rule line, e.g. '-A -t 10.0.0.100:80 -s rr' (repeatable)")
    g.add_argument("--sysctl", metavar="NAME=VALUE", action="append", default=[],
                   help="net.ipv4.vs sysctl, e.g. conn_reuse_mode=2 (repeatable)")
    g.add_argument("--kernel", metavar="VERSION", default=None,
                   help=kernel_help or "kernel behaviour to model (e.g. 4.4, 4.19, 5.9, 5.15, 6.1; default 6.1)")
    g.add_argument("--event", metavar="'+T COMMAND'", action="append", default=[],
                   help="timed rule change, e.g. '+12.5s -e -t 10.0.0.100:80 -r 10.0.1.2:80 -g -w 0'")
    g.add_argument("--events", metavar="FILE", action="append", default=[], help="timed rule changes, one per line")
    g.add_argument("--dr-replies", choices=("ignore", "inspect"), default="ignore",
                   help="VIP->client replies of DR/TUN connections: ignore them (the director would not see "
                        "them, default) or inspect them as kernels >= 5.11 do when replies pass the director")
    g.add_argument("--mark", metavar="RULE", action="append", default=[],
                   help="firewall mark rule for fwmark services (repeatable): an iptables/ip6tables or nft "
                        "command, or 'tcp dst 10.0.0.1 dport 80,443 -> 1'")
    g.add_argument("--marks", metavar="FILE", action="append", default=[],
                   help="firewall mark rules: nft ruleset, iptables commands / iptables-save output, or compact rules")


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filter", metavar="DISPLAY_FILTER",
                   help="Wireshark display filter; the capture is then read through pyshark/tshark (slow)")
    p.add_argument("--burst", type=int, default=1024, help="packets per burst (default 1024)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _check_kernel(version: str) -> str:
    from .config import ConfigError
    from .engine.variants import variant_for
    try:
        variant_for(version)
    except ConfigError as exc:
        raise ConfigError(f"unknown kernel version {version!r}: {exc}") from None
    return version


def _build_config(args) -> tuple:
    from .config import Config, ConfigError, load_events, load_rules, parse_event, parse_rules, parse_sysctl

    cfg = Config()
    for path in args.rules:
        cfg = load_rules(path, base=cfg)
    if args.rule:
        cfg = parse_rules("\n".join(args.rule), source="--rule", base=cfg)
    from .marks import load_marks, mark_notes, parse_mark
    notes: list = []
    for path in getattr(args, "marks", ()):
        cfg.marks = load_marks(path, base=cfg.marks, notes=notes)
    for i, text in enumerate(getattr(args, "mark", ()), 1):
        cfg.marks = parse_mark(text, source=f"--mark #{i}", base=cfg.marks, notes=notes)
    for n in notes + (mark_notes(cfg.marks) if cfg.marks else []):
        print(f"note: {n}", file=sys.stderr)
    for s in args.sysctl:
        name, value = parse_sysctl(s)
        cfg.sysctls[name] = value
    if getattr(args, "kernel", None) and "," not in args.kernel:
        cfg.kernel = _check_kernel(args.kernel)
    events = []
    for path in args.events:
        events.extend(load_events(path))
    for i, text in enumerate(args.event, 1):
        ev = parse_event(text, i, "--event")
        if ev is None:
            raise ConfigError(f"--event {text!r}: empty event")
        events.append(ev)
    return cfg, events


def _open(path: str, burst: int, display_filter: Optional[str] = None):
    from .io import CaptureError, open_capture, open_pyshark

    if display_filter:
        if not os.path.exists(path):
            raise CaptureError(f"{path}: no such file")
        return open_pyshark(path, display_filter=display_filter, burst=burst)
    return open_capture(path, burst=burst)


def _check_burst(args) -> None:
    if args.burst < 1 or args.burst > 1 << 16:
        raise UserError("--burst must be between 1 and 65536")


def _check_output(path: Optional[str], what: str) -> None:
    """Fail before the replay (not after it) when an output cannot be written."""
    if not path or path == "-":
        return
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise UserError(f"{what} {path}: directory {d} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{what} {path}: is a directory")


def _prepare_services(args, cfg) -> Optional[list]:
    """Without rules, infer virtual services from the capture (a first, cheap pass)."""
    from . import report
    if cfg.services:
        return None
    inferred = report.infer_services(_open(args.capture, max(args.burst, 4096), args.filter), cfg)
    if not cfg.services:
        raise UserError("no rules given and no virtual service could be inferred from the capture "
                        "(no TCP SYN, SCTP INIT or UDP packet in it)")
    return inferred


def _cache_dir() -> str:
    base = os.environ.get("IPVSFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ipvsflow")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the cache directory {base}: {exc.strerror or exc} "
                        "(set IPVSFLOW_CACHE to a writable directory)") from None
    return base


def _demo_inputs() -> tuple[str, str, str]:
    """The demo capture, rules and events (synth preset ``default``), built once into a cache dir.

    The rules are DR, so the capture is the DR director's view: client packets only.
    """
    from . import synth

    base = _cache_dir()
    stem = os.path.join(base, f"demo-dr-{__version__}")
    cap, rules, events = stem + ".pcap", stem + ".rules", stem + ".events"
    if not (os.path.exists(cap) and os.path.exists(rules) and os.path.exists(events)):
        tmp = f"{stem}.tmp{os.getpid()}"
        print("building the demo capture (once) ...", file=sys.stderr)
        try:
            synth.synthesize_preset("default", tmp + ".pcap", rules=tmp + ".rules", events=tmp + ".events",
                                    view="dr")
        except ValueError as exc:
            raise UserError(f"cannot build the demo capture: {exc}") from None
        for ext in (".rules", ".events", ".pcap"):
            os.replace(tmp + ext, stem + ext)
    return cap, rules, events


def _use_demo(args) -> None:
    if args.demo:
        if args.capture:
            raise UserError("give either a capture or --demo, not both")
        cap, rules, events = _demo_inputs()
        args.capture = cap
        if not args.rules and not args.rule:
            args.rules = [rules]
            args.events = [events] + args.events
    elif not args.capture:
        raise UserError("no capture given (or use --demo)")


# ----------------------------------------------------------------------------------------------
# analyze

def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="what IPVS would have done with a capture",
                       description="Replay a capture through the IPVS engine and report what the kernel "
                                   "would have done with every packet: packet accounting, load per real "
                                   "server over time, port reuse, dropped SYNs and the delay they cost "
                                   "clients, fairness.")
    p.add_argument("capture", nargs="?", help="pcap or pcapng file (omit with --demo)")
    p.add_argument("--demo", action="store_true",
                   help="analyse the bundled demo capture (built on first use) with its rules and events")
    _add_rule_options(p)
    _add_input_options(p)
    o = p.add_argument_group("outputs")
    o.add_argument("--json", metavar="FILE", help="the report as JSON")
    o.add_argument("--decisions", metavar="FILE", help="per-packet decisions: .jsonl, .csv or .parquet")
    o.add_argument("--decisions-format", choices=("jsonl", "csv", "parquet"),
                   help="format of --decisions when its name does not say (e.g. /dev/null)")
    o.add_argument("--decisions-compression", choices=("snappy", "lz4", "zstd", "gzip", "none"),
                   default=None, help="Parquet --decisions: codec of the client column, the only one "
                                      "not dictionary or delta encoded (default snappy)")
    o.add_argument("--conns", metavar="FILE",
                   help="one row per connection, Zeek conn.log-like: .log/.tsv (Zeek TSV), .jsonl, .csv, .parquet")
    o.add_argument("--out-pcap", metavar="FILE", help="the forwarded packets, rewritten as the director sends them")
    o.add_argument("--neighbour", metavar="IP=MAC", action="append", default=[],
                   help="MAC address of a real server (DR needs it; others are learned from the capture)")
    o.add_argument("--director-mac", metavar="MAC", help="source MAC of frames the director sends (DR)")
    o.add_argument("--plot", metavar="FILE.png", help="load per real server over time, events marked")
    o.add_argument("--plot-size", metavar="WxH", default="1200x700", help="plot size in pixels (default 1200x700)")
    o.add_argument("--ipvsadm", action="store_true", help="also print ipvsadm -L -n and -L -n --stats text")
    p.set_defaults(func=_cmd_analyze)


def _plot_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--plot-size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1200x700") from None
    if not (100 <= w <= 10000 and 100 <= h <= 10000):
        raise UserError(f"--plot-size {text!r}: width and height must be 100..10000 pixels")
    return w, h


def _cmd_analyze(args) -> int:
    from .engine import Engine
    from .replay import replay
    from . import report

    _use_demo(args)
    _check_burst(args)
    for path, what in ((args.json, "--json"), (args.decisions, "--decisions"), (args.conns, "--conns"),
                       (args.out_pcap, "--out-pcap"), (args.plot, "--plot")):
        _check_output(path, what)
    size = _plot_size(args.plot_size) if args.plot else None
    if args.plot:
        _need_matplotlib()
    conns_fmt = None
    if args.conns:
        from .conns import format_for as conns_format
        try:
            conns_fmt = conns_format(args.conns)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    cfg, events = _build_config(args)
    inferred = _prepare_services(args, cfg)
    reader = _open(args.capture, args.burst, args.filter)
    engine = Engine(cfg, capacity=args.burst, dr_replies=args.dr_replies)
    ana = report.Analysis(engine, conns=bool(args.conns))
    writer = None
    if args.decisions_compression:
        from .decisions import format_for
        try:
            fmt = format_for(args.decisions, args.decisions_format) if args.decisions else None
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if fmt != "parquet":
            raise UserError("--decisions-compression applies to Parquet decisions (--decisions FILE.parquet)")
    if args.decisions:
        from .decisions import DecisionWriter
        try:
            kw = {"compression": args.decisions_compression} if args.decisions_compression else {}
            writer = DecisionWriter(args.decisions, engine, fmt=args.decisions_format, **kw)
        except OSError as exc:
            raise UserError(f"{args.decisions}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UserError(str(exc)) from None
    fwd = _Forward(args.out_pcap, engine, args.neighbour, args.director_mac) if args.out_pcap else None

    def sink(k, batch, start, stop, dec):
        ana.add(batch, start, stop, dec)
        if writer is not None:
            writer.write(batch, start, stop, dec)
        if fwd is not None:
            fwd.forward(batch, start, stop, dec)

    def on_event(ev, cmd, idx):
        ana.event(ev, cmd, idx)
        if writer is not None:
            writer.refresh()

    t0 = time.perf_counter()
    progress = report.Progress(reader, enabled=not args.quiet)
    try:
        with progress:
            st = replay(reader, [engine], events, on_decisions=sink, on_progress=progress.update,
                        on_event=on_event, clock=report.Clock([ana]))
    finally:
        if writer is not None:
            writer.close()
        if fwd is not None:
            fwd.close()
    ana.elapsed = time.perf_counter() - t0
    if st.packets == 0:
        raise UserError(f"{args.capture}: the capture holds no packets")
    extra = {"forwarder": fwd.counters()} if fwd is not None else {}
    summary = ana.summary(st, capture=args.capture, inferred=inferred, extra=extra)
    # files first: a closed pipe on stdout must not lose them
    if args.json:
        report.write_json(summary, args.json)
    if args.conns:
        from .conns import write_conns
        write_conns(ana, args.conns, conns_fmt)
    if args.plot:
        from .plot import plot_analysis
        plot_analysis(summary, args.plot, size=size)
    report.print_report(summary)
    report.print_footer(summary, demo=args.demo)
    if args.ipvsadm:
        print(summary["ipvsadm_list"], end="")
        print(summary["ipvsadm_stats"], end="")
    return 0


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'ipvsflow[plot]'") from None


class _Forward:
    """--out-pcap: the forwarder writing rewritten packets (opened at the first burst, with
    the capture's link type)."""

    def __init__(self, path: str, engine, neighbours=(), director_mac=None):
        try:
            from .forward import Forwarder, open_output
        except ImportError as exc:
            raise UserError(f"--out-pcap needs the forwarders (ipvsflow.forward): {exc}") from None
        neigh = {}
        for item in neighbours:
            ip, sep, mac = item.partition("=")
            if not sep or not ip.strip() or not mac.strip():
                raise UserError(f"--neighbour {item!r}: expected IP=MAC, e.g. 10.0.1.1=02:00:00:00:01:01")
            neigh[ip.strip()] = mac.strip()
        self.path = path
        self._open_output = open_output
        try:
            self.fw = Forwarder(engine, neighbours=neigh or None, director_mac=director_mac)
        except (ValueError, TypeError) as exc:
            raise UserError(f"--out-pcap: {exc}") from None
        self.out = None

    def forward(self, batch, start, stop, dec):
        if self.out is None:
            lt = int(batch.to_numpy()["linktype"][start])
            try:
                self.out = self._open_output(self.path, lt)
            except ValueError:
                self.out = self._open_output(self.path, 1)
        self.fw.forward(batch, dec, start, stop, self.out)

    def close(self):
        if self.out is not None:
            self.out.close()

    def counters(self):
        c = self.fw.counters
        return {k: v for k, v in c.items()}


# ----------------------------------------------------------------------------------------------
# compare

def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="one capture under several policies, side by side",
                       description="Replay one parse of a capture through several engines (every "
                                   "combination of the listed reuse modes, kernels and schedulers) and "
                                   "print them side by side.")
    p.add_argument("capture", nargs="?", help="pcap or pcapng file (omit with --demo)")
    p.add_argument("--demo", action="store_true", help="compare on the bundled demo capture")
    p.add_argument("--reuse-mode", metavar="LIST", help="conn_reuse_mode values, e.g. 0,1,2")
    p.add_argument("--sched", metavar="LIST", help="schedulers for every service, e.g. rr,wlc")
    _add_rule_options(p, kernel_help="kernel versions to compare, e.g. 4.19,5.9,6.1")
    _add_input_options(p)
    p.add_argument("--json", metavar="FILE", help="every policy's report as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="share per real server and drops per policy")
    p.add_argument("--plot-size", metavar="WxH", default="1200x700", help="plot size in pixels")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from . import compare
    _use_demo(args)
    _check_burst(args)
    for path, what in ((args.json, "--json"), (args.plot, "--plot")):
        _check_output(path, what)
    size = _plot_size(args.plot_size) if args.plot else None
    if args.plot:
        _need_matplotlib()
    kernels = compare.parse_list(args.kernel, "--kernel")
    for k in kernels or ():
        _check_kernel(k)
    modes = compare.parse_list(args.reuse_mode, "--reuse-mode", int)
    scheds = compare.parse_list(args.sched, "--sched")
    saved_kernel, args.kernel = args.kernel, None
    cfg, events = _build_config(args)
    args.kernel = saved_kernel
    inferred = _prepare_services(args, cfg)
    policies = compare.policies(cfg, modes, kernels, scheds)
    reader = _open(args.capture, args.burst, args.filter)
    result = compare.run(reader, policies, events, capture=args.capture, inferred=inferred,
                         dr_replies=args.dr_replies, burst=args.burst, quiet=args.quiet)
    if args.json:
        from .report import write_json
        write_json(result, args.json)
    if args.plot:
        from .plot import plot_comparison
        plot_comparison(result, args.plot, size=size)
    compare.print_comparison(result)
    return 0


# ----------------------------------------------------------------------------------------------
# conns

def _add_conns(sub) -> None:
    p = sub.add_parser("conns", help="the connection table at the end of a capture (ipvsadm -Lnc)")
    p.add_argument("capture")
    _add_rule_options(p)
    p.add_argument("--at", metavar="TIME", help="stop at this time (seconds after the first packet, e.g. +12.5s)")
    p.add_argument("--filter", metavar="DISPLAY_FILTER", help="Wireshark display filter (read through pyshark)")
    p.add_argument("--burst", type=int, default=1024, help="packets per burst (default 1024)")
    p.set_defaults(func=_cmd_conns)


def _cmd_conns(args) -> int:
    from .config import parse_time_offset
    from .engine import Engine
    from .replay import replay

    _check_burst(args)
    cfg, events = _build_config(args)
    if not cfg.services:
        raise UserError("no rules given (-C FILE or -R LINE): conns lists the entries of the virtual "
                        "services the rules define")
    until = None
    if args.at:
        try:
            until = parse_time_offset(args.at)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    engine = Engine(cfg, capacity=args.burst, dr_replies=args.dr_replies)
    reader = _open(args.capture, args.burst, args.filter)
    replay(reader, [engine], events, until=until, strict_events=until is None)
    sys.stdout.write(engine.format_connections())
    return 0


# ----------------------------------------------------------------------------------------------
# synth

def _add_synth(sub) -> None:
    from . import synth
    p = sub.add_parser("synth", help="generate a realistic capture (tests, benchmarks, demos)")
    synth.add_arguments(p)
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args) -> int:
    from . import synth
    try:
        return synth.run(args)
    except ValueError as exc:      # synth reports bad arguments as ValueError
        raise UserError(str(exc)) from None


# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipvsflow", description="Userspace IPVS connection engine.")
    p.add_argument("--version", action="version", version=f"ipvsflow {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_analyze(sub)
    _add_compare(sub)
    _add_conns(sub)
    _add_synth(sub)
    _add_live(sub)
    return p


def _add_live(sub) -> None:
    from .live import cli as live_cli
    p = sub.add_parser("live", help="run a live director on AF_PACKET (NAT, DR, TUN)")
    live_cli.add_live_arguments(p)
    p.set_defaults(func=live_cli.run_live)
    p = sub.add_parser("ctl", help="change or list a running live director (ipvsadm-style commands)")
    live_cli.add_ctl_arguments(p)
    p.set_defaults(func=live_cli.run_ctl)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .config import ConfigError
    from .io import CaptureError
    try:
        return args.func(args) or 0
    except (UserError, ConfigError, CaptureError) as exc:
        return _die(str(exc))
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        name = getattr(exc, "filename", None)
        return _die(f"{name + ': ' if name else ''}{exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())
