"""The live director: sets up the sockets, forks the workers, and runs the control plane.

The director process opens everything that needs privileges (AF_PACKET rings and transmit
ports for every worker, the control socket, the metrics port), forks the workers (each with
its own engine: per-core connection tables, as DPVS does; both directions of a connection reach
the same worker through a PACKET_FANOUT_CBPF program hashing the client), then drops to
``--user`` if asked. It then only serves the control socket, reloads the rules on SIGHUP
(applying the difference as ipvsadm edits, so connections survive), collects the workers'
counters when something reads them (each periodic stats line, each control request, and every
second while the Prometheus metrics are served), and on SIGINT/SIGTERM stops the workers after
their current burst and prints the final statistics.
"""
from __future__ import annotations

import multiprocessing
import os
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Optional, TextIO

from ipvsflow.config import (
    Command, Config, ConfigError, apply_command, format_rules, load_rules, parse_command,
    parse_sysctl,
)
from ipvsflow.engine.variants import variant_for
from ipvsflow.live import control, listing, netlink
from ipvsflow.live import fanout as _fanout
from ipvsflow.live.metrics import decision_names

WORKER_TIMEOUT = 10.0
SNAPSHOT_EVERY = 1.0


class DirectorError(Exception):
    """A problem that stops the director; the message is one line for the user."""


@dataclass
class LiveOptions:
    rules: str
    ifaces: list
    sysctls: list = field(default_factory=list)
    workers: int = 1
    metrics: Optional[str] = None
    user: Optional[str] = None
    control: str = control.DEFAULT_SOCKET
    promisc: bool = False
    stats_interval: float = 10.0
    block_size: int = 64 << 10
    block_count: int = 1024
    retire_ms: int = 1
    burst: int = 1024
    tx_mode: str = "sendmmsg"
    qdisc_bypass: bool = False
    capture: Optional[str] = None
    dry_run: bool = False
    kernel: Optional[str] = None
    dr_replies: str = "ignore"
    max_conns: int = 1 << 22
    resolve_timeout: float = 3.0


def capture_path(path: str, wid: int, workers: int) -> str:
    """The capture file of worker ``wid`` (``cap.pcap`` -> ``cap.w1.pcap`` with several)."""
    if workers == 1:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.w{wid}{ext or '.pcap'}"


def _rs_endpoints(cfg: Config) -> set:
    return {(d.addr, d.port) for s in cfg.services for d in s.dests}


def diff_commands(old: Config, new: Config, source: str = "reload") -> list:
    """The ipvsadm commands that turn ``old``'s rules into ``new``'s, in an order the kernel
    accepts: sysctls and timeouts, removed services and servers, edited ones, then additions."""
    cmds = []

    def mk(op, svc=None, dest=None, **kw):
        line = op
        if svc is not None:
            line += " " + " ".join(svc.name().split())
        if dest is not None:
            line += " -r " + dest.endpoint()
        cmds.append(Command(op=op, service=svc, dest=dest, line=line, source=source, **kw))

    for name, v in sorted(new.sysctls.items()):
        if old.sysctls.get(name) != v:
            mk("sysctl", sysctl=(name, v))
    if tuple(old.timeouts) != tuple(new.timeouts):
        mk("set-timeouts", timeouts=tuple(new.timeouts))
    oldsvc = {s.key(): s for s in old.services}
    newsvc = {s.key(): s for s in new.services}
    for k, s in oldsvc.items():
        if k not in newsvc:
            mk("del-service", svc=s)
    adds = []
    for k, s in newsvc.items():
        o = oldsvc.get(k)
        if o is None:
            adds.append(("add-service", s, None))
            adds.extend(("add-dest", s, d) for d in s.dests)
            continue
        if (o.scheduler, o.flags, o.timeout, o.netmask, o.pe) != (s.scheduler, s.flags, s.timeout, s.netmask, s.pe):
            mk("edit-service", svc=s)
        od = {(d.addr, d.port): d for d in o.dests}
        nd = {(d.addr, d.port): d for d in s.dests}
        for key, d in od.items():
            if key not in nd:
                mk("del-dest", svc=s, dest=d)
        for key, d in nd.items():
            x = od.get(key)
            if x is None:
                adds.append(("add-dest", s, d))
            elif (x.fwd, x.weight, x.u_threshold, x.l_threshold) != (d.fwd, d.weight, d.u_threshold, d.l_threshold):
                mk("edit-dest", svc=s, dest=d)
    for op, s, d in adds:
        mk(op, svc=s, dest=d)
    return cmds


def aggregate(snaps: list) -> dict:
    """One view of several workers' snapshots: counters summed, services merged."""
    agg = {"workers": len(snaps), "packets": 0, "rx": {}, "tx": {}, "sink": {}, "forward": {},
           "decisions": {}, "conn_count": 0, "services": [], "time": time.time(),
           "timeouts": snaps[0]["timeouts"] if snaps else (900, 120, 300)}

    def add(dst, src):
        for k, v in src.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                dst[k] = dst.get(k, 0) + v

    for s in snaps:
        agg["packets"] += s["packets"]
        agg["conn_count"] += s["conn_count"]
        for ifname, c in s["rx"].items():
            add(agg["rx"].setdefault(ifname, {}), c)
        for ifname, c in s["tx"].items():
            add(agg["tx"].setdefault(ifname, {}), c)
        add(agg["sink"], s["sink"])
        add(agg["forward"], s["forward"])
        for key, n in decision_names(s["decisions"]).items():
            agg["decisions"][key] = agg["decisions"].get(key, 0) + n
    agg["services"] = listing.merge_services([s["engine"]["services"] for s in snaps])
    agg["pids"] = [s.get("pid") for s in snaps]
    agg["per_worker_packets"] = [s["packets"] for s in snaps]
    agg["loop"] = {}
    for s in snaps:
        add(agg["loop"], s.get("loop", {}))
    drops = {}
    for (action, reason), n in agg["decisions"].items():
        if action == "drop":
            drops[reason] = drops.get(reason, 0) + n
    for k in ("ttl_expired", "too_big", "no_neighbour", "no_tunnel_source", "bad_decision", "linktype"):
        if agg["forward"].get(k):
            drops[k] = drops.get(k, 0) + agg["forward"][k]
    for k in ("no_route", "route_foreign", "route_reject", "neigh_miss", "not_ip", "bad_frame"):
        if agg["sink"].get(k):
            drops[k] = drops.get(k, 0) + agg["sink"][k]
    for c in agg["tx"].values():
        for k, name in (("too_big", "mtu"), ("errors", "tx_error"), ("ring_full", "tx_ring_full")):
            if c.get(k):
                drops[name] = drops.get(name, 0) + c[k]
    for c in agg["rx"].values():
        if c.get("kernel_drops"):
            drops["ring_full"] = drops.get("ring_full", 0) + c["kernel_drops"]
        if c.get("truncated"):
            drops["truncated"] = drops.get("truncated", 0) + c["truncated"]
    agg["drops"] = drops
    return agg


def jsonable(agg: dict) -> dict:
    out = dict(agg)
    out["decisions"] = {f"{a}/{r}": n for (a, r), n in sorted(agg["decisions"].items())}
    return out


class Director:
    def __init__(self, opts: LiveOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.opts = opts
        self.out = out
        self.err = err
        self.cfg: Optional[Config] = None
        self.workers: list = []         # [(pid, conn)]
        self.ctl: Optional[socket.socket] = None
        self.latest: dict = {}
        self._line_prev: Optional[dict] = None
        self._stop = False
        self._hup = False
        self._stop_metrics = None
        self._fanout_rs: set = set()
        self._wake_r = self._wake_w = -1
        self._started = 0.0
        self._failed: Optional[str] = None
        self._ifindexes: set = set()

    # -- messages ------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        print(f"ipvsflow live: {msg}", file=self.err, flush=True)

    # -- configuration -------------------------------------------------------------------------

    def load_config(self) -> Config:
        o = self.opts
        cfg = load_rules(o.rules)
        if cfg.events:
            raise ConfigError(f"{o.rules}: timed events are for replays, not for a live director")
        for text in o.sysctls:
            name, value = parse_sysctl(text)
            cfg.sysctls[name] = value
        if o.kernel:
            variant_for(o.kernel)           # ConfigError for a version it cannot model
            cfg.kernel = o.kernel
        return cfg

    def _resolve_servers(self, endpoints, ifindexes) -> list:
        """Have the kernel resolve the next hops towards these real servers; returns warnings."""
        notes = []
        hops = {}
        for addr, _port in sorted(endpoints):
            try:
                nh, ifx = netlink.next_hop(addr)
            except OSError as exc:
                notes.append(f"real server {addr}: no route ({exc.strerror or exc})")
                continue
            if ifx not in ifindexes:
                notes.append(f"real server {addr}: the route leaves through an interface the "
                             f"director does not use (ifindex {ifx})")
                continue
            hops[(nh, ifx)] = addr
        if hops:
            found = netlink.resolve(hops, timeout=self.opts.resolve_timeout)
            for key, mac in sorted(found.items()):
                if mac is None:
                    notes.append(f"real server {hops[key]}: next hop {key[0]} did not answer ARP/ND "
                                 "(its packets are dropped until it does)")
        return notes

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        from ipvsflow.io.afpacket import RxRing, TxPort, interface_info, probe_af_packet
        from ipvsflow.live.privs import lookup_user
        from ipvsflow.live.worker import WorkerSpec

        o = self.opts
        if not 1 <= o.workers <= 64:
            raise DirectorError(f"--workers {o.workers}: between 1 and 64")
        if not o.ifaces:
            raise DirectorError("at least one interface (-i IFACE) is needed")
        if len(set(o.ifaces)) != len(o.ifaces):
            raise DirectorError("an interface is given twice")
        owner = None
        if o.user is not None:
            uid, gid, _ = lookup_user(o.user)
            owner = (uid, gid)
        if o.metrics:
            from ipvsflow.live.metrics import parse_hostport
            parse_hostport(o.metrics)
            try:
                import prometheus_client  # noqa: F401  (checked before forking)
            except ImportError:
                raise DirectorError("--metrics needs the prometheus-client package "
                                    "(pip install prometheus-client)") from None
        info = {name: interface_info(name) for name in o.ifaces}
        probe_af_packet(o.ifaces[0])        # no CAP_NET_RAW: say so before anything else
        ifindexes = {v[0] for v in info.values()}
        self._ifindexes = ifindexes
        self.cfg = self.load_config()
        for note in self._resolve_servers(_rs_endpoints(self.cfg), ifindexes):
            self.log("warning: " + note)
        routes = netlink.routes()
        neigh = netlink.usable_neighbours()
        vlans = netlink.vlans()
        specs = []
        try:
            for w in range(o.workers):
                rings, ports = [], []
                specs.append(WorkerSpec(
                    wid=w, rings=rings, ports=ports, burst=o.burst,
                    capture=capture_path(o.capture, w, o.workers) if o.capture else None,
                    dry_run=o.dry_run, max_conns=o.max_conns, dr_replies=o.dr_replies,
                    routes=routes, neighbours=neigh, vlans=vlans))
                for name in o.ifaces:
                    fan = None
                    if o.workers > 1:
                        fan = (((os.getpid() * 31) + info[name][0] * 7919) & 0xffff, "cbpf")
                    rings.append(RxRing(name, block_size=o.block_size, block_count=o.block_count,
                                        retire_ms=o.retire_ms, promisc=o.promisc, fanout=fan))
                    ports.append(TxPort(name, mode=o.tx_mode, qdisc_bypass=o.qdisc_bypass,
                                        # one sendmmsg takes at most 1024 (UIO_MAXIOV) frames
                                        queue=min(max(o.burst, 1), 1024)))
            if o.workers > 1:
                self._fanout_rs = _rs_endpoints(self.cfg)
                prog = _fanout.program(sorted(self._fanout_rs))
                for r in specs[0].rings:
                    r.set_fanout_program(prog)
            self.ctl = control.open_server(o.control, owner)
            try:
                self._fork(specs)
            except BaseException:
                self._kill_workers()
                raise
        finally:
            for sp in specs:
                for x in sp.rings + sp.ports:
                    x.close()
        self._started = time.monotonic()
        self._install_signals()
        if o.metrics:
            from ipvsflow.live import metrics
            self._stop_metrics = metrics.start(o.metrics, lambda: self.latest)
        if o.user is not None:
            from ipvsflow.live.privs import drop_privileges
            drop_privileges(o.user)
        self.collect()
        self.log(f"directing on {', '.join(o.ifaces)} with {o.workers} worker(s); "
                 f"control socket {o.control}" + (f"; metrics on {o.metrics}" if o.metrics else "")
                 + (f"; running as {o.user}" if o.user else ""))

    def _fork(self, specs) -> None:
        from ipvsflow.live.worker import worker_main

        sys.stdout.flush()
        sys.stderr.flush()
        for sp in specs:
            mine, theirs = multiprocessing.Pipe()
            pid = os.fork()
            if pid == 0:
                # the child: only its own sockets and pipe end stay open
                try:
                    mine.close()
                    for _pid, c in self.workers:
                        c.close()
                    if self.ctl is not None:
                        self.ctl.close()
                    for other in specs:
                        if other is not sp:
                            for x in other.rings + other.ports:
                                x.close()
                except BaseException:
                    os._exit(1)
                worker_main(sp, self.cfg, theirs, self.opts.user)
            theirs.close()
            self.workers.append((pid, mine))
        for wid, (pid, conn) in enumerate(self.workers):
            if not conn.poll(WORKER_TIMEOUT):
                raise DirectorError(f"worker {wid} did not start within {WORKER_TIMEOUT:g}s")
            try:
                msg = conn.recv()
            except EOFError:
                raise DirectorError(f"worker {wid} exited while starting") from None
            if not msg.get("ok"):
                raise DirectorError(msg.get("error", f"worker {wid} failed to start"))

    def _kill_workers(self) -> None:
        for pid, conn in self.workers:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            conn.close()
        self.workers = []
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
            try:
                os.unlink(self.opts.control)
            except OSError:
                pass

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)

        def on_stop(signum, frame):
            self._stop = True

        def on_hup(signum, frame):
            self._hup = True
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # -- talking to the workers ----------------------------------------------------------------

    def ask_all(self, msg, timeout: float = WORKER_TIMEOUT) -> list:
        for _pid, conn in self.workers:
            conn.send(msg)
        replies = []
        for wid, (_pid, conn) in enumerate(self.workers):
            if not conn.poll(timeout):
                raise DirectorError(f"worker {wid} did not answer within {timeout:g}s")
            try:
                replies.append(conn.recv())
            except EOFError:
                raise DirectorError(f"worker {wid} has exited") from None
        return replies

    def collect(self) -> dict:
        replies = self.ask_all(("stats",))
        self.latest = aggregate([r["snapshot"] for r in replies])
        return self.latest

    # -- rule changes ----------------------------------------------------------------------------

    def apply(self, cmd: Command) -> dict:
        """Apply one command on every worker (validated first against the rules in force)."""
        trial = self.cfg.copy()
        try:
            apply_command(trial, cmd)
        except ConfigError as exc:
            return {"ok": False, "error": str(exc)}
        notes = []
        if cmd.op in ("add-dest", "edit-dest", "add-service") or cmd.op == "clear":
            ifx = self._ifindexes
            new = _rs_endpoints(trial) - _rs_endpoints(self.cfg)
            if cmd.op == "edit-dest" and cmd.dest is not None:
                new |= {(cmd.dest.addr, cmd.dest.port)}
            notes += self._resolve_servers(new, ifx)
        if len(self.workers) > 1:
            want = self._fanout_rs | _rs_endpoints(trial)
            if want != self._fanout_rs:
                # replies from a new server must reach its client's worker before it gets any
                # connection: the program changes first
                self._ask_one(0, ("fanout", sorted(want)))
                self._fanout_rs = want
        replies = self.ask_all(("apply", cmd))
        bad = [r for r in replies if not r.get("ok")]
        if bad:
            return {"ok": False, "error": bad[0].get("error", "rejected by a worker")}
        self.cfg = trial
        return {"ok": True, "output": "".join(f"warning: {n}\n" for n in notes),
                "applied": [{"worker": i, "packets": r["packets"], "now_ns": r["now_ns"]}
                            for i, r in enumerate(replies)]}

    def _ask_one(self, wid: int, msg):
        _pid, conn = self.workers[wid]
        conn.send(msg)
        if not conn.poll(WORKER_TIMEOUT):
            raise DirectorError(f"worker {wid} did not answer within {WORKER_TIMEOUT:g}s")
        r = conn.recv()
        if not r.get("ok"):
            raise DirectorError(r.get("error", f"worker {wid} refused {msg[0]}"))
        return r

    def reload(self) -> None:
        """SIGHUP: re-read the rules file and apply the difference as ipvsadm edits."""
        try:
            new = self.load_config()
        except (ConfigError, OSError) as exc:
            self.log(f"reload failed, keeping the rules in force: {exc}")
            return
        cmds = diff_commands(self.cfg, new)
        if not cmds:
            self.log(f"reload: {self.opts.rules} unchanged")
            return
        done = 0
        for c in cmds:
            r = self.apply(c)
            if not r["ok"]:
                self.log(f"reload: {c.line}: {r['error']}")
                continue
            if r.get("output"):
                for line in r["output"].splitlines():
                    self.log(line)
            done += 1
        self.log(f"reload: applied {done} of {len(cmds)} change(s) from {self.opts.rules}")

    # -- control requests ------------------------------------------------------------------------

    def handle_request(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "apply":
            line = req.get("line")
            if not isinstance(line, str):
                return {"ok": False, "error": "apply needs a \"line\""}
            try:
                c = parse_command(line, 0, "ctl")
            except ConfigError as exc:
                return {"ok": False, "error": str(exc)}
            if c is None:
                return {"ok": False, "error": "empty command"}
            return self.apply(c)
        if cmd == "list":
            if req.get("timeout"):
                return {"ok": True, "output": listing.format_timeouts(self.collect()["timeouts"])}
            if req.get("conns"):
                texts = [r["text"] for r in self.ask_all(("conns",))]
                return {"ok": True, "output": listing.format_connections(texts)}
            agg = self.collect()
            if req.get("stats"):
                return {"ok": True, "output": listing.format_stats(agg["services"], bool(req.get("exact")))}
            return {"ok": True, "output": listing.format_list(agg["services"])}
        if cmd == "save":
            return {"ok": True, "output": format_rules(self.cfg)}
        if cmd == "status":
            return {"ok": True, "status": jsonable(self.collect()), "output": ""}
        return {"ok": False, "error": f"unknown request {cmd!r}"}

    def _serve_control(self) -> None:
        try:
            conn, _ = self.ctl.accept()
        except OSError:
            return
        with conn:
            try:
                req = control.read_request(conn)
            except (ValueError, OSError, UnicodeDecodeError) as exc:
                control.send_reply(conn, {"ok": False, "error": f"bad request: {exc}"})
                return
            try:
                reply = self.handle_request(req)
            except DirectorError:
                raise
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.log(f"control request {req.get('cmd')!r} failed:\n{traceback.format_exc()}")
            control.send_reply(conn, reply)

    # -- statistics ------------------------------------------------------------------------------

    def stats_line(self, agg: dict, prev: Optional[dict]) -> str:
        dt = (agg["time"] - prev["time"]) if prev else 0.0
        rxp = sum(c.get("packets", 0) for c in agg["rx"].values())
        txp = sum(c.get("packets", 0) for c in agg["tx"].values())
        if prev and dt > 0:
            prx = sum(c.get("packets", 0) for c in prev["rx"].values())
            ptx = sum(c.get("packets", 0) for c in prev["tx"].values())
            rate = f"in {(rxp - prx) / dt:.0f} pps, out {(txp - ptx) / dt:.0f} pps"
        else:
            rate = f"in {rxp} pkts, out {txp} pkts"
        drops = ", ".join(f"{k} {v}" for k, v in sorted(agg["drops"].items()) if v) or "none"
        loads = []
        pconns = {}
        if prev:
            for s in prev["services"]:
                for d in s["dests"]:
                    pconns[(s["name"], d["endpoint"])] = d["conns"]
        for s in agg["services"]:
            for d in s["dests"]:
                new = d["conns"] - pconns.get((s["name"], d["endpoint"]), 0) if prev else d["conns"]
                loads.append(f"{d['endpoint']} {d['activeconns']}/{d['inactconns']} +{new}")
        return (time.strftime("%H:%M:%S") + f" {rate} | drops: {drops} | conns {agg['conn_count']}"
                + (" | " + ", ".join(loads) if loads else ""))

    def final_report(self, agg: dict) -> str:
        rxp = sum(c.get("packets", 0) for c in agg["rx"].values())
        txp = sum(c.get("packets", 0) for c in agg["tx"].values())
        kd = sum(c.get("kernel_drops", 0) for c in agg["rx"].values())
        el = time.monotonic() - self._started
        drops = ", ".join(f"{k} {v}" for k, v in sorted(agg["drops"].items()) if v) or "none"
        lines = [f"ipvsflow live: stopped after {el:.1f}s: {rxp} packets in, {txp} out, "
                 f"{kd} dropped by the kernel (ring full); drops: {drops}; "
                 f"{agg['conn_count']} connections in the tables"]
        lines.append(listing.format_stats(agg["services"]).rstrip("\n"))
        return "\n".join(lines) + "\n"

    # -- main loop ---------------------------------------------------------------------------------

    def _check_workers(self) -> None:
        for wid, (pid, _conn) in enumerate(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self._failed = f"worker {wid} (pid {pid}) exited unexpectedly (status {status})"
                self._stop = True

    def serve_forever(self) -> int:
        o = self.opts
        # A snapshot costs each worker a request between bursts and this process the merge:
        # taken only for a reader (the metrics endpoint, refreshed every SNAPSHOT_EVERY; the
        # stats line; control requests). The workers' health is checked at the same pace.
        collect_every = o.metrics is not None
        next_snap = time.monotonic() + SNAPSHOT_EVERY
        next_line = time.monotonic() + o.stats_interval if o.stats_interval > 0 else float("inf")
        self._line_prev = self.latest
        conns = [c for _pid, c in self.workers]
        try:
            while not self._stop:
                now = time.monotonic()
                timeout = max(0.0, min(next_snap, next_line) - now)
                try:
                    r, _, _ = select.select([self.ctl, self._wake_r] + conns, [], [], timeout)
                except InterruptedError:
                    r = []
                if self._wake_r in r:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                if any(c in r for c in conns):
                    self._check_workers()
                    if not self._failed:
                        for c in conns:
                            if c in r:
                                self._failed = "a worker sent an unexpected message"
                        self._stop = True
                    break
                if self._stop:
                    break
                if self._hup:
                    self._hup = False
                    self.reload()
                if self.ctl in r:
                    self._serve_control()
                now = time.monotonic()
                if now >= next_snap:
                    next_snap = now + SNAPSHOT_EVERY
                    self._check_workers()
                    if self._stop:
                        break
                    if collect_every:
                        self.collect()
                if now >= next_line:
                    next_line = now + o.stats_interval
                    if not collect_every:
                        self.collect()
                    print(self.stats_line(self.latest, self._line_prev), file=self.out, flush=True)
                    self._line_prev = self.latest
        except DirectorError as exc:
            self._failed = str(exc)
        return self.shutdown()

    def shutdown(self) -> int:
        final = None
        if not self._failed:
            try:
                replies = self.ask_all(("stop",))
                final = aggregate([r["snapshot"] for r in replies])
            except (DirectorError, OSError) as exc:
                self._failed = str(exc)
        for pid, conn in self.workers:
            conn.close()
        deadline = time.monotonic() + 5.0
        for pid, _conn in self.workers:
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.02)
        self.workers = []
        if self._stop_metrics is not None:
            self._stop_metrics()
            self._stop_metrics = None
        if self.ctl is not None:
            self.ctl.close()
            try:
                os.unlink(self.opts.control)
            except OSError:
                pass
            self.ctl = None
        if final is not None:
            print(self.final_report(final), file=self.out, end="", flush=True)
        if self._failed:
            self.log(f"error: {self._failed}")
            return 1
        return 0
