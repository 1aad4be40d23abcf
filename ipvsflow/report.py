"""Summaries of a replay: packet accounting, per-server load, port-reuse events, fairness.

Everything is accumulated per burst with numpy over the decision records; printing uses rich.
"""
from __future__ import annotations

import ipaddress
import json
import sys
import time
from collections import Counter
from typing import Optional

import numpy as np


class Accumulator:
    """Running totals over decision bursts of one engine."""

    def __init__(self, engine, window_s: float = 10.0):
        from .engine import ACTIONS, REASONS
        self.actions = ACTIONS
        self.reasons = REASONS
        self.window_ns = int(window_s * 1e9)
        self.packets = 0
        self.by_action = np.zeros(256, dtype=np.int64)
        self.by_action_reason: Counter = Counter()
        self.reuse: Counter = Counter()            # (proto, old_state, action) -> count
        self.new_by_rs_window: Counter = Counter()  # (window index, rs) -> new connections
        self.first_ts: Optional[int] = None
        self.last_ts: Optional[int] = None
        self.bytes = 0

    def add(self, rows: np.ndarray, dec: np.ndarray) -> None:
        n = len(dec)
        if not n:
            return
        self.packets += n
        self.bytes += int(rows["wirelen"].sum())
        ts = dec["ts_ns"]
        if self.first_ts is None:
            self.first_ts = int(ts[0])
        self.last_ts = int(ts.max()) if self.last_ts is None else max(self.last_ts, int(ts.max()))
        act = dec["action"]
        self.by_action += np.bincount(act, minlength=256)[:256]
        pair = act.astype(np.int64) * 256 + dec["reason"]
        u, c = np.unique(pair, return_counts=True)
        for k, v in zip(u.tolist(), c.tolist()):
            self.by_action_reason[(k >> 8, k & 255)] += v
        reuse = (dec["flags"] & 1) != 0
        if reuse.any():
            key = (dec["proto"][reuse].astype(np.int64) << 16) | (dec["old_state"][reuse].astype(np.int64) << 8) \
                | act[reuse]
            u, c = np.unique(key, return_counts=True)
            for k, v in zip(u.tolist(), c.tolist()):
                self.reuse[(k >> 16, (k >> 8) & 255, k & 255)] += v
        new = (act == 1) | (act == 3)
        if new.any():
            win = (ts[new] - self.first_ts) // self.window_ns
            key = win.astype(np.int64) * 65536 + dec["rs"][new].astype(np.int64)
            u, c = np.unique(key, return_counts=True)
            for k, v in zip(u.tolist(), c.tolist()):
                self.new_by_rs_window[(k // 65536, k % 65536)] += v

    def summary(self, engine, st, inferred=None, capture: str = "") -> dict:
        from .engine import state_name
        dests = {d["id"]: d for d in engine.dests()}

        def rs_name(i):
            d = dests.get(i)
            if d is None:
                return str(i)
            return f"[{d['addr']}]:{d['port']}" if ":" in d["addr"] else f"{d['addr']}:{d['port']}"

        accounting = {}
        for (a, r), v in sorted(self.by_action_reason.items()):
            accounting.setdefault(self.actions[a], {})[self.reasons[r]] = v
        totals = {self.actions[a]: int(self.by_action[a]) for a in range(256) if self.by_action[a]}
        reuse = [{"proto": {6: "tcp", 17: "udp", 132: "sctp"}.get(p, str(p)),
                  "old_state": state_name(p, s) if s != 255 else None,
                  "outcome": {2: "kept", 3: "rescheduled", 4: "dropped"}.get(a, self.actions[a]), "count": v}
                 for (p, s, a), v in sorted(self.reuse.items())]
        stats = engine.stats()
        # fairness over the whole run: new connections per real server against its weight share
        new_per_rs = Counter()
        for (w, rs), v in self.new_by_rs_window.items():
            new_per_rs[rs] += v
        fairness = []
        for svc in stats.get("services", []):
            ids = [d["id"] for d in svc.get("dests", [])]
            counts = np.array([new_per_rs.get(i, 0) for i in ids], dtype=float)
            if not len(ids) or counts.sum() == 0:
                continue
            share = counts / counts.sum()
            jain = float(counts.sum() ** 2 / (len(counts) * (counts ** 2).sum())) if (counts ** 2).sum() else 1.0
            fairness.append({"service": svc.get("name"), "jain": round(jain, 4),
                             "servers": [{"rs": rs_name(i), "new": int(c), "share": round(float(s), 4),
                                          "weight": dests[i]["weight"] if i in dests else None}
                                         for i, c, s in zip(ids, counts, share)]})
        span = ((self.last_ts or 0) - (self.first_ts or 0)) / 1e9
        return {
            "schema_version": 1,
            "capture": capture,
            "packets": self.packets,
            "bytes": self.bytes,
            "duration_s": round(span, 6),
            "totals": totals,
            "accounting": accounting,
            "inferred_services": inferred,
            "events": [{"t": ev.t, "command": ev.line, "before_packet": idx} for ev, idx in st.events_applied],
            "reuse": reuse,
            "fairness": fairness,
            "stats": stats,
            "connections_at_end": engine.conn_count,
            "ipvsadm_stats": engine.format_stats(),
            "ipvsadm_list": engine.format_list(),
        }


def write_json(summary: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=1, default=str)
        fh.write("\n")


def print_report(summary: dict, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(file=file or sys.stdout, highlight=False)
    con.print(f"[bold]{summary['capture']}[/]: {summary['packets']} packets, {summary['duration_s']:.3f} s")
    if summary.get("inferred_services"):
        con.print("[yellow]No rules given; inferred virtual services from the capture:[/]")
        for s in summary["inferred_services"]:
            con.print(f"  {s}")
    for ev in summary["events"]:
        con.print(f"event +{ev['t']:g}s before packet {ev['before_packet']}: {ev['command']}")
    t = Table(title="Packet accounting", show_lines=False)
    t.add_column("action")
    t.add_column("reason")
    t.add_column("packets", justify="right")
    total = 0
    for action, reasons in summary["accounting"].items():
        for reason, v in reasons.items():
            t.add_row(action, reason or "", str(v))
            total += v
    t.add_row("[bold]total[/]", "", f"[bold]{total}[/]")
    con.print(t)
    con.print(summary["ipvsadm_stats"].rstrip())
    con.print(summary["ipvsadm_list"].rstrip())
    if summary["reuse"]:
        t = Table(title="Port reuse (SYN/INIT hitting an existing entry)")
        for c in ("proto", "old state", "outcome", "count"):
            t.add_column(c, justify="right" if c == "count" else "left")
        for r in summary["reuse"]:
            t.add_row(r["proto"], str(r["old_state"]), r["outcome"], str(r["count"]))
        con.print(t)
    for f in summary["fairness"]:
        t = Table(title=f"New connections per real server: {f['service']} (Jain's index {f['jain']:.3f})")
        for c in ("real server", "weight", "new", "share"):
            t.add_column(c, justify="left" if c == "real server" else "right")
        for s in f["servers"]:
            t.add_row(s["rs"], str(s["weight"]), str(s["new"]), f"{100 * s['share']:.1f}%")
        con.print(t)


class Progress:
    """A progress bar on stderr (packets/s, ETA by bytes read), only on a terminal."""

    def __init__(self, reader, enabled: bool = True):
        self.reader = reader
        self.enabled = enabled and sys.stderr.isatty()
        self._p = None
        self._task = None
        self._t0 = time.monotonic()

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, Progress as RP, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._p = RP(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[pps]}"),
                         TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
                         console=__import__("rich.console").console.Console(file=sys.stderr))
            self._p.__enter__()
            total = getattr(self.reader, "size", None)
            self._task = self._p.add_task("replaying", total=total, pps="")
        return self

    def update(self, st) -> None:
        if self._p is None:
            return
        el = max(time.monotonic() - self._t0, 1e-9)
        done = getattr(self.reader, "bytes_read", None)
        self._p.update(self._task, completed=done, pps=f"{st.packets / el / 1e6:.2f} Mpps")

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)


def infer_services(reader, cfg, top: int = 3) -> list[str]:
    """Without rules: make the most contacted address:port pairs (by connection starts) services.

    A capture cannot show the real servers behind a VIP, so each inferred service gets one real
    server at the VIP itself (DR): connection tracking, states and port-reuse accounting stay
    meaningful, scheduling is trivial. Fills cfg.services and returns one description per service.
    """
    from .config import PROTO_TCP, PROTO_UDP, PROTO_SCTP, RealServer, VirtualService, FWD_DROUTE
    from .io import addr_to_str

    counts: Counter = Counter()
    for batch in reader:
        r = batch.to_numpy()
        ok = (r["status"] == 0) & np.isin(r["proto"], (PROTO_TCP, PROTO_UDP, PROTO_SCTP))
        syn = ok & (((r["proto"] == PROTO_TCP) & ((r["tcp_flags"] & 0x12) == 0x02))
                    | (r["proto"] == PROTO_UDP) | ((r["proto"] == PROTO_SCTP) & (r["sctp_chunk"] == 1)))
        for i in np.flatnonzero(syn):
            counts[(int(r["proto"][i]), bytes(r["dst"][i]), int(r["dport"][i]))] += 1
    out = []
    for (proto, dst, dport), n in counts.most_common(top):
        addr = addr_to_str(dst)
        svc = VirtualService(proto=proto, addr=addr, port=dport, af=6 if ":" in addr else 4, scheduler="rr",
                             netmask=32 if ":" not in addr else 128,
                             dests=[RealServer(addr=addr, port=dport, fwd=FWD_DROUTE, weight=1)])
        cfg.services.append(svc)
        out.append(f"{' '.join(svc.name().split())} ({n} connection starts) -> one real server at the VIP itself")
    return out
