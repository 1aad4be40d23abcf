"""``ipvsflow live`` (run a director on AF_PACKET) and ``ipvsflow ctl`` (talk to a running one).

``add_live_arguments(parser)`` / ``run_live(args) -> int`` and ``add_ctl_arguments(parser)`` /
``run_ctl(args) -> int`` plug into the ``ipvsflow`` command's subparsers. Exit status: 0 done,
1 a problem (one line on stderr), 2 usage (argparse).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from ipvsflow.live.control import DEFAULT_SOCKET


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def _size(text):
    t = text.strip().lower()
    mult = 1
    for suf, m in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30)):
        if t.endswith(suf):
            t, mult = t[:-1], m
            break
    try:
        v = int(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1M, 256k)") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return v


# ---------------------------------------------------------------------------------------------
# ipvsflow live

def add_live_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Run a live IPVS director: read packets from AF_PACKET rings on the given "
                     "interfaces, schedule and track connections as the kernel's IPVS does, and "
                     "forward them (NAT, DR, TUN) with AF_PACKET. Needs CAP_NET_RAW.")
    p.add_argument("-C", "--rules", metavar="FILE", required=True,
                   help="rules in ipvsadm save format (ipvsadm-save -n); SIGHUP re-reads it")
    p.add_argument("-i", "--iface", metavar="IFACE", action="append", required=True, dest="ifaces",
                   help="an interface to direct on (repeat for client and server sides)")
    p.add_argument("--sysctl", metavar="NAME=VALUE", action="append", default=[],
                   help="net.ipv4.vs sysctl, e.g. conn_reuse_mode=2 (repeatable)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="worker processes, each with its own connection table (PACKET_FANOUT "
                        "keeps both directions of a connection on one worker; default 1)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics, e.g. 127.0.0.1:9109 (needs prometheus-client)")
    p.add_argument("--user", metavar="NAME", help="drop to this user once the sockets are open")
    p.add_argument("--control", metavar="PATH", default=DEFAULT_SOCKET,
                   help=f"control socket for `ipvsflow ctl` (default {DEFAULT_SOCKET})")
    p.add_argument("--promisc", action="store_true",
                   help="put the interfaces in promiscuous mode and process frames for other MACs")
    p.add_argument("--stats-interval", type=float, default=10.0, metavar="SECONDS",
                   help="print a stats line this often (0: never; default 10)")
    g = p.add_argument_group("packet I/O")
    g.add_argument("--block-size", type=_size, default=64 << 10, metavar="BYTES",
                   help="receive ring block size (default 64k)")
    g.add_argument("--block-count", type=_positive_int, default=1024,
                   help="receive ring blocks (default 1024: at low rates every retired block holds "
                        "--retire-ms of traffic, so the count bounds the stall a ring absorbs)")
    g.add_argument("--retire-ms", type=_positive_int, default=1,
                   help="hand a partly filled block to the director after this many ms (default 1)")
    g.add_argument("--burst", type=_positive_int, default=1024, help="packets per burst (default 1024)")
    g.add_argument("--tx", choices=("sendmmsg", "ring"), default="sendmmsg",
                   help="transmit with sendmmsg bursts (default) or a PACKET_TX_RING")
    g.add_argument("--qdisc-bypass", action="store_true", help="PACKET_QDISC_BYPASS on transmit")
    g.add_argument("--capture", metavar="PCAP",
                   help="write every packet received, as received and in processing order "
                        "(one file per worker: NAME.wN.pcap)")
    g.add_argument("--dry-run", action="store_true",
                   help="make every decision and lookup, transmit nothing")
    e = p.add_argument_group("engine")
    e.add_argument("--kernel", metavar="VERSION", help="kernel behaviour to follow (default 6.1)")
    e.add_argument("--dr-replies", choices=("ignore", "inspect"), default="ignore",
                   help="VIP->client replies of DR/TUN connections seen by the director")
    e.add_argument("--max-conns", type=_positive_int, default=1 << 22,
                   help="connection-table limit per worker (default 4194304)")


def run_live(args) -> int:
    from ipvsflow.config import ConfigError
    from ipvsflow.io.afpacket import LiveIOError
    from ipvsflow.live.control import ControlError
    from ipvsflow.live.director import Director, DirectorError, LiveOptions
    from ipvsflow.live.privs import PrivilegeError

    opts = LiveOptions(
        rules=args.rules, ifaces=list(args.ifaces), sysctls=list(args.sysctl),
        workers=args.workers, metrics=args.metrics, user=args.user, control=args.control,
        promisc=args.promisc, stats_interval=args.stats_interval, block_size=args.block_size,
        block_count=args.block_count, retire_ms=args.retire_ms, burst=args.burst,
        tx_mode=args.tx, qdisc_bypass=args.qdisc_bypass, capture=args.capture,
        dry_run=args.dry_run, kernel=args.kernel, dr_replies=args.dr_replies,
        max_conns=args.max_conns)
    d = Director(opts)
    try:
        d.start()
    except PermissionError as exc:
        d._kill_workers()
        msg = exc.strerror if exc.strerror else str(exc)
        print(f"ipvsflow live: error: {msg}", file=sys.stderr)
        return 1
    except (ConfigError, DirectorError, LiveIOError, ControlError, PrivilegeError, ValueError,
            RuntimeError, OSError) as exc:
        d._kill_workers()
        msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"ipvsflow live: error: {msg}", file=sys.stderr)
        return 1
    return d.serve_forever()


# ---------------------------------------------------------------------------------------------
# ipvsflow ctl

def add_ctl_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Change or list a running `ipvsflow live` director with ipvsadm's options, "
                     "e.g. `ipvsflow ctl -L -n --stats`, `ipvsflow ctl -e -t VIP:80 -r RS:80 -m -w 0`, "
                     "`ipvsflow ctl --sysctl conn_reuse_mode=2`.")
    p.add_argument("--socket", "--control", dest="socket", metavar="PATH", default=DEFAULT_SOCKET,
                   help=f"the director's control socket (default {DEFAULT_SOCKET})")
    cmds = p.add_argument_group("commands (one of)")
    x = cmds.add_mutually_exclusive_group(required=True)
    for flags, op in ((("-A", "--add-service"), "-A"), (("-E", "--edit-service"), "-E"),
                      (("-D", "--delete-service"), "-D"), (("-C", "--clear"), "-C"),
                      (("-a", "--add-server"), "-a"), (("-e", "--edit-server"), "-e"),
                      (("-d", "--delete-server"), "-d")):
        x.add_argument(*flags, dest="op", action="store_const", const=op)
    x.add_argument("-L", "-l", "--list", dest="op", action="store_const", const="list",
                   help="list services and servers (with -c: connections)")
    x.add_argument("-S", "--save", dest="op", action="store_const", const="save",
                   help="the rules in force, in ipvsadm save format")
    x.add_argument("--set", nargs=3, metavar=("TCP", "TCPFIN", "UDP"),
                   help="connection timeouts in seconds (0 leaves one unchanged)")
    x.add_argument("--sysctl", metavar="NAME=VALUE", help="set a net.ipv4.vs sysctl")
    x.add_argument("--status", dest="op", action="store_const", const="status",
                   help="the director's counters as JSON")
    s = p.add_argument_group("virtual service")
    s.add_argument("-t", "--tcp-service", metavar="ADDR:PORT")
    s.add_argument("-u", "--udp-service", metavar="ADDR:PORT")
    s.add_argument("--sctp-service", metavar="ADDR:PORT")
    s.add_argument("-f", "--fwmark-service", metavar="MARK")
    s.add_argument("-6", "--ipv6", action="store_true", help="IPv6 fwmark service")
    s.add_argument("-s", "--scheduler", metavar="NAME")
    s.add_argument("-p", "--persistent", nargs="?", const="", metavar="TIMEOUT")
    s.add_argument("-M", "--netmask", metavar="MASK")
    s.add_argument("-b", "--sched-flags", metavar="FLAGS")
    s.add_argument("-o", "--ops", action="store_true")
    s.add_argument("--pe", metavar="ENGINE")
    r = p.add_argument_group("real server")
    r.add_argument("-r", "--real-server", metavar="ADDR:PORT")
    fw = r.add_mutually_exclusive_group()
    fw.add_argument("-g", "--gatewaying", dest="fwd", action="store_const", const="-g")
    fw.add_argument("-m", "--masquerading", dest="fwd", action="store_const", const="-m")
    fw.add_argument("-i", "--ipip", dest="fwd", action="store_const", const="-i")
    r.add_argument("-w", "--weight", metavar="N")
    r.add_argument("-x", "--u-threshold", metavar="N")
    r.add_argument("-y", "--l-threshold", metavar="N")
    lo = p.add_argument_group("list options")
    lo.add_argument("-n", "--numeric", action="store_true", help="numeric output (always)")
    lo.add_argument("-c", "--connection", action="store_true", help="list connections")
    lo.add_argument("--stats", action="store_true", help="packet and byte counters")
    lo.add_argument("--exact", action="store_true", help="exact numbers in --stats")
    lo.add_argument("--timeout", action="store_true", help="the tcp tcpfin udp timeouts")


def ctl_request(args) -> dict:
    """The control request for parsed ``ipvsflow ctl`` arguments."""
    if args.set:
        return {"cmd": "apply", "line": shlex.join(["--set"] + list(args.set))}
    if args.sysctl:
        return {"cmd": "apply", "line": shlex.join(["--sysctl", args.sysctl])}
    if args.op == "list":
        return {"cmd": "list", "stats": args.stats, "exact": args.exact,
                "conns": args.connection, "timeout": args.timeout}
    if args.op in ("save", "status"):
        return {"cmd": args.op}
    toks = [args.op]
    for opt, val in (("-t", args.tcp_service), ("-u", args.udp_service),
                     ("--sctp-service", args.sctp_service), ("-f", args.fwmark_service),
                     ("-s", args.scheduler), ("-M", args.netmask), ("-b", args.sched_flags),
                     ("--pe", args.pe), ("-r", args.real_server), ("-w", args.weight),
                     ("-x", args.u_threshold), ("-y", args.l_threshold)):
        if val is not None:
            toks += [opt, val]
    if args.ipv6:
        toks.append("-6")
    if args.persistent is not None:
        toks += ["-p"] + ([args.persistent] if args.persistent else [])
    if args.ops:
        toks.append("-o")
    if args.fwd:
        toks.append(args.fwd)
    return {"cmd": "apply", "line": shlex.join(toks)}


def run_ctl(args) -> int:
    from ipvsflow.live.control import ControlError, request

    req = ctl_request(args)
    try:
        reply = request(args.socket, req)
    except ControlError as exc:
        print(f"ipvsflow ctl: error: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"ipvsflow ctl: error: {reply.get('error', 'request failed')}", file=sys.stderr)
        return 1
    if req["cmd"] == "status":
        print(json.dumps(reply.get("status"), indent=2, sort_keys=True))
    out = reply.get("output") or ""
    if out:
        sys.stdout.write(out)
    return 0


def main(argv=None) -> int:
    """``python -m ipvsflow.live.cli live ...`` / ``... ctl ...`` (the same as ``ipvsflow``)."""
    p = argparse.ArgumentParser(prog="ipvsflow")
    sub = p.add_subparsers(dest="command", required=True)
    add_live_arguments(sub.add_parser("live", help="run a live director"))
    add_ctl_arguments(sub.add_parser("ctl", help="control a running director"))
    args = p.parse_args(argv)
    return run_live(args) if args.command == "live" else run_ctl(args)


if __name__ == "__main__":
    sys.exit(main())
