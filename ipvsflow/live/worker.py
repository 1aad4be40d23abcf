"""One live worker: its receive rings, its engine, its forwarder and its transmit ports.

The loop (``RingLoop``, in C) reads each ring in bursts (zero copy into a PacketBatch), runs the
engine over the burst, has the forwarder rewrite and write the frames into the AF_PACKET sink,
transmits them, and only then hands the ring's blocks back to the kernel. Between bursts it
answers the director's requests (rule changes, statistics, listings) arriving on its pipe, keeps
the engine clock moving while idle (so connections expire on time), and keeps its copy of the
kernel's routes, neighbours and VLAN interfaces fresh, resolving next hops it found missing.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ipvsflow.config import ConfigError
from ipvsflow.io.batch import PacketBatch
from ipvsflow.live import netlink
from ipvsflow.live import fanout as _fanout
from ipvsflow.live._fast import AfPacketSink, RingLoop

ROUTE_REFRESH_S = 5.0
NEIGH_REFRESH_S = 5.0
MISS_RETRY_S = 0.05
MISS_GIVE_UP_S = 3.0
ADVANCE_S = 0.25
RS_CHECK_S = 1.0
MAX_BURSTS = 64
PREFAULT_CONNS = 1 << 16
IDLE_MS = -1                    # an idle worker sleeps until housekeeping is due (at most ADVANCE_S)


@dataclass
class WorkerSpec:
    """What the director prepared for one worker before forking it."""
    wid: int
    rings: list                     # RxRing per interface
    ports: list                     # TxPort per interface
    burst: int = 256
    capture: Optional[str] = None   # pcap of every packet received, in processing order
    dry_run: bool = False
    max_conns: int = 1 << 24
    dr_replies: str = "ignore"
    routes: list = field(default_factory=list)
    neighbours: list = field(default_factory=list)
    vlans: list = field(default_factory=list)         # netlink.vlans()


class Worker:
    def __init__(self, spec: WorkerSpec, config, conn):
        from ipvsflow.engine import Engine
        from ipvsflow.forward.xmit import Forwarder, COUNTER_NAMES

        self.spec = spec
        self.conn = conn
        self.rings = spec.rings
        self.engine = Engine(config, max_conns=spec.max_conns, dr_replies=spec.dr_replies)
        # the entry slab's first pages now, not under the first packets (ms in a VM)
        self.engine.prefault(PREFAULT_CONNS)
        self.sink = AfPacketSink(spec.ports, dry_run=spec.dry_run)
        self.sink.set_vlans(spec.vlans)
        self.sink.set_routes(spec.routes)
        self.sink.set_neighbours(spec.neighbours)
        self._neigh = list(spec.neighbours)
        self._Forwarder = Forwarder
        self._fwd_names = COUNTER_NAMES
        self._fwd_base = {}
        self._rs_macs: dict = {}
        self.fwd = None
        self.loop = None
        self._rebuild_forwarder()
        self.batches = [PacketBatch(spec.burst) for _ in self.rings]
        self.decisions = np.zeros(512, dtype=np.uint64)
        self.capture = None
        if spec.capture:
            from ipvsflow.io.writer import PcapWriter
            self.capture = PcapWriter(spec.capture, linktype=1)
        self.loop = RingLoop(self.rings, self.batches, self.engine, self.fwd, self.sink,
                             self.decisions, conn.fileno(), self.capture)
        self.pending_misses: dict = {}      # (addr, ifindex) -> give-up time
        self.last_route = self.last_neigh = time.monotonic()
        self.last_advance = 0.0
        self.last_rs_check = 0.0
        self._due = 0.0
        self.last_held_retry = 0.0
        self.running = True

    # -- neighbours and routes ---------------------------------------------------------------

    def _rs_next_hops(self):
        """{real-server address: (next hop, ifindex)} for every real server of the engine."""
        out = {}
        for d in self.engine.dests():
            a = d["addr"]
            if a in out:
                continue
            hop = self.sink.lookup(a)
            if hop is not None:
                out[a] = (hop[1], hop[0])
        return out

    def _rebuild_forwarder(self):
        macs = {}
        table = {(str(a), int(i)): m for a, i, m in self._neigh}
        for rs, key in self._rs_next_hops().items():
            m = table.get(key)
            if m is not None:
                macs[rs] = m
        if self.fwd is not None and macs == self._rs_macs:
            return
        if self.fwd is not None:
            c = self.fwd.counters
            for k in self._fwd_names:
                self._fwd_base[k] = self._fwd_base.get(k, 0) + c[k]
        # the kernel's neighbour table is the authority: nothing is learned from the traffic
        self.fwd = self._Forwarder(self.engine, neighbours=macs, learn_neighbours=False)
        self._rs_macs = macs
        if self.loop is not None:
            self.loop.forwarder = self.fwd

    def refresh_neighbours(self):
        try:
            neigh = netlink.usable_neighbours()
        except OSError as exc:
            print(f"ipvsflow worker {self.spec.wid}: reading neighbours: {exc}", file=sys.stderr)
            return
        # keep what the kernel forgot (it drops unused entries): the last known MAC still works
        merged = {(str(a), int(i)): m for a, i, m in self._neigh}
        for a, i, m in neigh:
            merged[(str(a), int(i))] = m
        self._neigh = [(a, i, m) for (a, i), m in merged.items()]
        self.sink.set_neighbours(self._neigh)
        self._rebuild_forwarder()
        known = set(merged)
        for key in list(self.pending_misses):
            if key in known:
                del self.pending_misses[key]

    def refresh_routes(self):
        try:
            self.sink.set_vlans(netlink.vlans())
            self.sink.set_routes(netlink.routes())
        except OSError as exc:
            print(f"ipvsflow worker {self.spec.wid}: reading routes: {exc}", file=sys.stderr)

    def _note_misses(self):
        now = time.monotonic()
        for addr, ifx in self.sink.take_misses():
            key = (addr, ifx)
            if key not in self.pending_misses:
                netlink.trigger_resolution(addr, ifx)
                self.pending_misses[key] = now + MISS_GIVE_UP_S
        # real servers need a MAC before the forwarder can send DR frames to them
        known = {(str(a), int(i)) for a, i, _ in self._neigh}
        for rs, key in self._rs_next_hops().items():
            if key not in known and key not in self.pending_misses:
                netlink.trigger_resolution(*key)
                self.pending_misses[key] = now + MISS_GIVE_UP_S

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        loop = self.loop
        sink = self.sink
        while self.running:
            # the rings are swept and polled in C; back here for requests, when housekeeping
            # is due, or at once when the sink met a next hop without neighbour entry
            held = sink.held
            if loop.run(IDLE_MS, self._next_due(), MAX_BURSTS):
                self._serve()
            now = time.monotonic()
            if sink.misses or sink.held > held or now >= self._due:
                self._housekeeping(now)
        self.finish()
        return 0

    def _next_due(self) -> float:
        """Seconds until the next periodic housekeeping step (see _housekeeping)."""
        due = min(self.last_rs_check + RS_CHECK_S, self.last_advance + ADVANCE_S,
                  self.last_route + ROUTE_REFRESH_S,
                  self.last_neigh + (MISS_RETRY_S if self.pending_misses else NEIGH_REFRESH_S))
        if self.sink.held:
            # frames wait for a next hop: retried at least as often as the neighbours are read
            due = min(due, self.last_held_retry + MISS_RETRY_S)
        self._due = due
        return max(0.0, due - time.monotonic())

    @property
    def index(self) -> int:
        """Packets read so far."""
        return self.loop.index

    def drain(self, max_bursts: int = MAX_BURSTS) -> int:
        """Process what the rings hold, at most ``max_bursts`` bursts per ring (so requests
        and housekeeping get their turn under a continuous load); returns the packet count."""
        return self.loop.drain(max_bursts)

    def _housekeeping(self, now: float):
        if now - self.last_rs_check >= RS_CHECK_S:
            self.last_rs_check = now
            self._note_misses()
        else:
            misses = self.sink.take_misses()
            fresh = False
            for addr, ifx in misses:
                if (addr, ifx) not in self.pending_misses:
                    fresh = True
                    self.pending_misses[(addr, ifx)] = now + MISS_GIVE_UP_S
            if fresh:
                # the kernel often knows the neighbour already (a client that ARPed for the
                # director): read its table right away, and ask it to resolve the rest
                self.last_neigh = now
                self.refresh_neighbours()
                for key in set(misses) & set(self.pending_misses):
                    netlink.trigger_resolution(*key)
        if self.sink.held:
            self.last_held_retry = now
            self.sink.retry_held(time.time_ns(), int(MISS_GIVE_UP_S * 1e9))
        if now - self.last_advance >= ADVANCE_S:
            # expiry runs on the engine clock: keep it moving while no packets arrive
            self.last_advance = now
            t = time.time_ns()
            if t > self.engine.now_ns:
                self.engine.advance(t)
        if now - self.last_route >= ROUTE_REFRESH_S:
            self.last_route = now
            self.refresh_routes()
        if self.pending_misses:
            if now - self.last_neigh >= MISS_RETRY_S:
                self.last_neigh = now
                self.refresh_neighbours()
                for key, until in list(self.pending_misses.items()):
                    if now > until:
                        del self.pending_misses[key]
        elif now - self.last_neigh >= NEIGH_REFRESH_S:
            self.last_neigh = now
            self.refresh_neighbours()

    # -- requests from the director -----------------------------------------------------------

    def _serve(self):
        while self.conn.poll(0):
            try:
                msg = self.conn.recv()
            except EOFError:
                self.running = False        # the director is gone
                return
            try:
                reply = self.handle(msg)
            except Exception as exc:       # a bad request must not kill the data path
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "trace": traceback.format_exc()}
            self.conn.send(reply)

    def handle(self, msg):
        kind = msg[0]
        if kind == "apply":
            cmd = msg[1]
            # everything that arrived before the change is processed under the old rules
            self.drain()
            at = {"packets": self.index, "now_ns": self.engine.now_ns}
            try:
                self.engine.apply(cmd)
            except ConfigError as exc:
                return {"ok": False, "error": str(exc), **at}
            if cmd.op in ("add-dest", "edit-dest", "add-service", "del-service", "del-dest", "clear"):
                self.refresh_neighbours()
                self._note_misses()
            return {"ok": True, **at}
        if kind == "stats":
            return {"ok": True, "snapshot": self.snapshot()}
        if kind == "conns":
            return {"ok": True, "text": self.engine.format_connections()}
        if kind == "fanout":
            prog = _fanout.program(msg[1])
            for r in self.rings:
                r.set_fanout_program(prog)
            return {"ok": True}
        if kind == "neighbours":
            self.refresh_neighbours()
            return {"ok": True}
        if kind == "stop":
            self.running = False
            self.drain()
            return {"ok": True, "snapshot": self.snapshot()}
        return {"ok": False, "error": f"unknown request {kind!r}"}

    def forward_counters(self):
        c = self.fwd.counters
        return {k: c[k] + self._fwd_base.get(k, 0) for k in self._fwd_names}

    def snapshot(self) -> dict:
        return {
            "wid": self.spec.wid,
            "pid": os.getpid(),
            "packets": self.index,
            "rx": {r.ifname: r.counters() for r in self.rings},
            "tx": {p.ifname: p.counters() for p in self.sink.ports},
            "sink": self.sink.counters(),
            "forward": self.forward_counters(),
            "loop": {"bursts": self.loop.bursts, "polls": self.loop.polls, "busy_ns": self.loop.busy_ns},
            "decisions": self.decisions.tolist(),
            "engine": self.engine.stats(),
            "conn_count": int(self.engine.conn_count),
            "timeouts": self.engine.timeouts(),
            "time": time.time(),
        }

    def finish(self):
        try:
            self.sink.flush_ports()
        finally:
            if self.capture is not None:
                self.capture.close()
            for r in self.rings:
                r.close()
            for p in self.sink.ports:
                p.close()


def worker_main(spec: WorkerSpec, config, conn, user=None) -> None:
    """Entry point of a forked worker process (never returns)."""
    code = 1
    try:
        # the director coordinates shutdown; a terminal's ^C must not kill workers mid-burst
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from ipvsflow.live.privs import die_with_parent, drop_privileges
        w = Worker(spec, config, conn)
        if user is not None:
            drop_privileges(user)
        die_with_parent()
        conn.send({"ok": True, "ready": spec.wid, "pid": os.getpid()})
        code = w.run()
    except BaseException as exc:
        try:
            conn.send({"ok": False, "error": f"worker {spec.wid}: {type(exc).__name__}: {exc}",
                       "trace": traceback.format_exc()})
        except Exception:
            pass
        print(f"ipvsflow worker {spec.wid}: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
