"""The ``ipvsflow`` command.

Exit codes: 0 done, 1 user error (one-line message on stderr), 2 usage error (argparse).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import __version__


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""


def _die(msg: str) -> int:
    print(f"ipvsflow: error: {msg}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------------------
# shared option groups

def _add_rule_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rules")
    g.add_argument("-C", "--rules", metavar="FILE", action="append", default=[],
                   help="rules in ipvsadm save format (ipvsadm-save -n) or keepalived virtual_server blocks")
    g.add_argument("-R", "--rule", metavar="LINE", action="append", default=[],
                   help="an inline rule line, e.g. '-A -t 10.0.0.100:80 -s rr' (repeatable)")
    g.add_argument("--sysctl", metavar="NAME=VALUE", action="append", default=[],
                   help="net.ipv4.vs sysctl, e.g. conn_reuse_mode=2 (repeatable)")
    g.add_argument("--kernel", metavar="VERSION", default=None,
                   help="kernel behaviour to model (4.4, 4.19, 5.9, 5.15, 6.1; default 6.1)")
    g.add_argument("--event", metavar="'+T COMMAND'", action="append", default=[],
                   help="timed rule change, e.g. '+12.5s -e -t 10.0.0.100:80 -r 10.0.1.2:80 -g -w 0'")
    g.add_argument("--events", metavar="FILE", action="append", default=[], help="timed rule changes, one per line")
    g.add_argument("--dr-replies", choices=("ignore", "inspect"), default="ignore",
                   help="VIP->client replies of DR/TUN connections: ignore them (the director would not see "
                        "them, default) or inspect them as kernels >= 5.11 do when replies pass the director")


def _build_config(args) -> tuple:
    from .config import Config, ConfigError, load_events, load_rules, parse_event, parse_rules, parse_sysctl

    cfg = Config()
    for path in args.rules:
        cfg = load_rules(path, base=cfg)
    if args.rule:
        cfg = parse_rules("\n".join(args.rule), source="--rule", base=cfg)
    for i, s in enumerate(args.sysctl):
        name, value = parse_sysctl(s)
        cfg.sysctls[name] = value
    if args.kernel:
        from .engine.variants import KERNELS
        if args.kernel not in KERNELS:
            raise ConfigError(f"unknown kernel version {args.kernel!r} (known: {', '.join(KERNELS)})")
        cfg.kernel = args.kernel
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


# ----------------------------------------------------------------------------------------------
# analyze

def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="what IPVS would have done with a capture",
                       description="Replay a capture through the IPVS engine and report what the kernel "
                                   "would have done with every packet.")
    p.add_argument("capture", nargs="?", help="pcap or pcapng file (omit with --demo)")
    p.add_argument("--demo", action="store_true",
                   help="analyse the bundled demo capture (built on first use) with its rules and events")
    _add_rule_options(p)
    p.add_argument("--filter", metavar="DISPLAY_FILTER", help="tshark display filter (read through pyshark)")
    p.add_argument("--decisions", metavar="FILE", help="per-packet decisions: .jsonl, .csv or .parquet")
    p.add_argument("--json", metavar="FILE", help="the report as JSON")
    p.add_argument("--conns", metavar="FILE", help="connection listing at the end (ipvsadm -Lnc form)")
    p.add_argument("--burst", type=int, default=256, help="packets per burst (default 256)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_analyze)


def _demo_inputs() -> tuple[str, str, str]:
    """The demo capture, rules and events, generated once into a cache directory."""
    from . import synth

    base = os.environ.get("IPVSFLOW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ipvsflow")
    os.makedirs(base, exist_ok=True)
    cap = os.path.join(base, f"demo-{__version__}.pcap")
    rules = os.path.join(base, f"demo-{__version__}.rules")
    events = os.path.join(base, f"demo-{__version__}.events")
    if not (os.path.exists(cap) and os.path.exists(rules) and os.path.exists(events)):
        tmp = cap + f".tmp{os.getpid()}"
        synth.synthesize_preset("default", tmp, rules=rules, events=events)
        os.replace(tmp, cap)
    return cap, rules, events


def _cmd_analyze(args) -> int:
    from .engine import Engine
    from .replay import replay
    from . import report

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
    if args.burst < 1 or args.burst > 1 << 16:
        raise UserError("--burst must be between 1 and 65536")
    cfg, events = _build_config(args)
    reader = _open(args.capture, args.burst, args.filter)
    inferred = None
    if not cfg.services:
        inferred = report.infer_services(_open(args.capture, args.burst, args.filter), cfg)
        if not cfg.services:
            raise UserError("no rules given and no virtual service could be inferred from the capture")
    engine = Engine(cfg, capacity=args.burst, dr_replies=args.dr_replies)
    acc = report.Accumulator(engine)
    writer = None
    if args.decisions:
        from .decisions import DecisionWriter
        try:
            writer = DecisionWriter(args.decisions, engine)
        except OSError as exc:
            raise UserError(f"{args.decisions}: {exc.strerror or exc}") from None

    def sink(k, rows, dec):
        acc.add(rows, dec)
        if writer is not None:
            writer.write(rows, dec)

    progress = report.Progress(reader, enabled=not args.quiet)
    try:
        with progress:
            st = replay(reader, [engine], events, on_decisions=sink, on_progress=progress.update)
    finally:
        if writer is not None:
            writer.close()
    summary = acc.summary(engine, st, inferred=inferred, capture=args.capture)
    report.print_report(summary)
    if args.json:
        report.write_json(summary, args.json)
    if args.conns:
        with open(args.conns, "w") as fh:
            fh.write(engine.format_connections())
    return 0


# ----------------------------------------------------------------------------------------------
# conns

def _add_conns(sub) -> None:
    p = sub.add_parser("conns", help="the connection table at the end of a capture (ipvsadm -Lnc)")
    p.add_argument("capture")
    _add_rule_options(p)
    p.add_argument("--at", metavar="TIME", help="stop at this time (seconds after the first packet, e.g. +12.5s)")
    p.add_argument("--burst", type=int, default=256)
    p.set_defaults(func=_cmd_conns)


def _cmd_conns(args) -> int:
    from .config import parse_time_offset
    from .engine import Engine
    from .replay import replay

    cfg, events = _build_config(args)
    engine = Engine(cfg, capacity=args.burst, dr_replies=args.dr_replies)
    reader = _open(args.capture, args.burst)
    until = None
    if args.at:
        try:
            until = parse_time_offset(args.at)
        except ValueError as exc:
            raise UserError(str(exc)) from None
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
    _add_conns(sub)
    _add_synth(sub)
    return p


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
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
