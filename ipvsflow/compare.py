"""``ipvsflow compare``: one parse of a capture, several engines, side by side.

Every combination of the listed conn_reuse_mode values, kernel versions and schedulers becomes a
policy: an Engine built from a copy of the rules with that setting. The replay feeds each burst
to every engine in turn (ipvsflow.replay), so the capture is read and parsed once.
"""
from __future__ import annotations

import itertools
import sys
import time
from typing import Optional

from .config import SCHEDULERS, ConfigError


def parse_list(text: Optional[str], what: str, conv=str) -> Optional[list]:
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{what} {text!r}: empty list")
    try:
        out = [conv(x) for x in items]
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected a comma-separated list") from None
    if len(set(out)) != len(out):
        raise ConfigError(f"{what} {text!r}: repeated value")
    return out


def policies(cfg, modes=None, kernels=None, scheds=None) -> list[tuple[str, object]]:
    """(label, Config) for every combination of the given settings."""
    for m in modes or ():
        if not 0 <= m <= 3:
            raise ConfigError(f"--reuse-mode {m}: conn_reuse_mode is 0..3")
    for s in scheds or ():
        if s not in SCHEDULERS:
            raise ConfigError(f"--sched {s!r}: unknown scheduler (known: {', '.join(SCHEDULERS)})")
    out = []
    for m, k, s in itertools.product(modes or [None], kernels or [None], scheds or [None]):
        c = cfg.copy()
        parts = []
        if m is not None:
            c.sysctls["conn_reuse_mode"] = m
            parts.append(f"mode {m}")
        if k is not None:
            c.kernel = k
            parts.append(f"kernel {k}")
        if s is not None:
            for svc in c.services:
                svc.scheduler = s
            parts.append(s)
        out.append((", ".join(parts) or "as configured", c))
    return out


def run(reader, pols, events, capture: str = "", inferred=None, dr_replies: str = "ignore",
        burst: int = 256, quiet: bool = False) -> dict:
    from .engine import Engine
    from .replay import replay
    from .report import Analysis, Clock, Progress

    analyses = []
    for label, c in pols:
        analyses.append(Analysis(Engine(c, capacity=burst, dr_replies=dr_replies), label=label))

    def sink(k, batch, start, stop, dec):
        analyses[k].add(batch, start, stop, dec)

    def on_event(ev, cmd, idx):
        for a in analyses:
            a.event(ev, cmd, idx)

    t0 = time.perf_counter()
    progress = Progress(reader, enabled=not quiet, label=f"replaying x{len(analyses)}")
    with progress:
        st = replay(reader, [a.engine for a in analyses], events, on_decisions=sink,
                    on_progress=progress.update, on_event=on_event, clock=Clock(analyses))
    el = time.perf_counter() - t0
    if st.packets == 0:
        raise ConfigError(f"{capture}: the capture holds no packets")
    summaries = []
    for a in analyses:
        a.elapsed = el
        summaries.append(a.summary(st, capture=capture, inferred=inferred))
    return {"schema_version": 1, "capture": capture, "packets": st.packets,
            "duration_s": summaries[0]["duration_s"], "elapsed_s": round(el, 3),
            "inferred_services": inferred, "policies": summaries}


def _fmt_q(q: dict, k: str) -> str:
    return f"{q[k]:.2f} s" if q else "-"


def print_comparison(res: dict, file=None, width: Optional[int] = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    con = Console(file=file or sys.stdout, highlight=False, width=width)
    pols = res["policies"]
    if width is None and not con.is_terminal:
        con.width = max(120, 40 + 18 * len(pols))
    con.print(f"[bold]ipvsflow compare[/] {res['capture']}: {res['packets']:,} packets, "
              f"{res['duration_s']:.1f} s, {len(pols)} policies (one parse, {res['elapsed_s']:.2f} s)")
    if res.get("inferred_services"):
        con.print("[yellow]  No rules given; services inferred from the capture:[/]")
        for x in res["inferred_services"]:
            con.print(f"    {x}")
    for ev in pols[0]["events"]:
        con.print(f"  event +{ev['t']:g} s: {ev['command']}")
    t = Table(title="Policies side by side", box=box.SIMPLE_HEAD, title_justify="left")
    t.add_column("")
    for p in pols:
        t.add_column(p["label"], justify="right")

    def row(name, f):
        t.add_row(name, *[f(p) for p in pols])

    for act in ("new", "hit", "resched", "drop", "pass", "invalid"):
        if any(p["totals"].get(act) for p in pols):
            row(f"packets {act}", lambda p, a=act: f"{p['totals'].get(a, 0):,}")
    for o in ("kept", "rescheduled", "dropped"):
        row(f"reused ports {o}", lambda p, o=o: f"{p['reuse_totals'].get(o, 0):,}")
    row("SYN/INIT attempts dropped", lambda p: f"{p['syn_drops']['attempts']:,}")
    row("  client delay median", lambda p: _fmt_q(p["syn_drops"]["delay_s"], "p50"))
    row("  client delay p90", lambda p: _fmt_q(p["syn_drops"]["delay_s"], "p90"))
    row("  client delay total", lambda p: f"{p['syn_drops'].get('total_delay_s', 0):.1f} s")
    row("starts on weight-0 servers", lambda p: f"{sum(w['starts_at_weight0'] for w in p['weight0']):,}")
    row("drops after server deleted", lambda p: f"{sum(w['drops_after_delete'] for w in p['weight0']):,}")
    row("Jain's index (starts vs weights)", lambda p: " ".join(
        f"{f['jain']:.3f}" if f["jain"] is not None else "-" for f in p["fairness"]) or "-")
    row("max/min (starts per weight)", lambda p: " ".join(
        f"{f['max_min']:.2f}" if f["max_min"] is not None else "-" for f in p["fairness"]) or "-")
    if any(p["convergence"] for p in pols):
        row("new server at 90% fair share after", lambda p: " ".join(
            (f"{c['reached_90pct_after_s']:g} s" if c["reached_90pct_after_s"] is not None else "never")
            for c in p["convergence"]) or "-")
    con.print(t)
    servers: list = []
    for p in pols:
        for f in p["fairness"]:
            for s in f["servers"]:
                if s["rs"] not in servers:
                    servers.append(s["rs"])
    if servers:
        t = Table(title="Share of connection starts per real server (expected share from the weights in force)",
                  box=box.SIMPLE_HEAD, title_justify="left")
        t.add_column("real server")
        for p in pols:
            t.add_column(p["label"], justify="right")
        for rs in servers:
            cells = []
            for p in pols:
                v = [s for f in p["fairness"] for s in f["servers"] if s["rs"] == rs]
                cells.append(f"{100 * v[0]['share']:.1f}% ({100 * v[0]['expected_share']:.1f}%)" if v else "-")
            t.add_row(rs, *cells)
        con.print(t)
