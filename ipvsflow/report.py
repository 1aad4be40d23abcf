"""What a replay showed: packet accounting, load per real server over time, port reuse, the
client delay of dropped SYNs, fairness. ``Analysis`` collects one engine's run (counters in C,
see ipvsflow._analysis), ``Analysis.summary()`` turns it into a JSON-able dict and
``print_report`` renders that dict on a terminal with rich.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Optional

import numpy as np

SCHEMA_VERSION = 1

# what the reason codes mean, for people reading the report
REASON_TEXT = {
    "fragment": "non-first IP fragment: no ports to look up",
    "not_ip": "not IPv4/IPv6 (ARP, LLDP, ...)",
    "unknown_linktype": "link type the parser does not know",
    "truncated": "cut short by the snap length or a short header",
    "malformed": "bad IP/L4 header",
    "not_ipvs_proto": "protocol IPVS does not handle",
    "proto_not_modelled": "protocol not modelled (ICMP errors, AH/ESP)",
    "no_service": "not addressed to a virtual service",
    "not_syn": "TCP without SYN and no connection entry (e.g. expired after idling)",
    "rst_no_conn": "TCP RST without a connection entry",
    "ftp_data": "FTP data port",
    "ftp_other_port": "other port of an FTP virtual address",
    "dr_reply_not_seen": "server reply of a DR/TUN connection: it bypasses the director",
    "dr_reply_ignored": "DR/TUN reply through the director, ignored by this kernel",
    "nodest_expired": "entry of a deleted server expired, packet not schedulable",
    "no_dest": "no real server available (ICMP port unreachable)",
    "port_zero": "port-0 service without persistence",
    "conntrack_drop": "reused port, confirmed conntrack: client must retransmit (~1 s)",
    "dest_unavailable": "connection of a deleted real server",
    "nodest_conntrack_drop": "deleted server's connection expired, confirmed conntrack",
    "table_full": "connection table full",
    "nat_icmp_send": "NAT server reply without a connection",
    "reuse_expected": "reused port on an entry in a reusable state",
    "reuse_weight0": "reused port on a weight-0 server's entry",
    "dest_deleted": "connection of a deleted server, scheduled again",
    "cache_bypass": "fwmark service without servers: bypass",
}
ACTION_TEXT = {"new": "scheduled (new connection)", "hit": "forwarded on an existing connection",
               "resched": "rescheduled (old entry expired)", "drop": "dropped by IPVS",
               "pass": "passed to the local stack / not IPVS", "invalid": "not parsable"}
OUTCOMES = {2: "kept", 3: "rescheduled", 4: "dropped"}
DISPLAY_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 600, 1200, 3000, 6000, 12000, 36000, 72000)


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _canonical(rs) -> str:
    import ipaddress
    try:
        return _endpoint(str(ipaddress.ip_address(rs.addr)), rs.port)
    except ValueError:
        return rs.endpoint()


class Analysis:
    """One engine's run: counters per burst, samples of the server counters at window
    boundaries, the rule changes. ``conns=True`` also builds the connection rows."""

    def __init__(self, engine, label: str = "", conns: bool = False):
        from ._analysis import ConnLog, Tally
        from .engine import REASON_CODES
        self.engine = engine
        self.label = label
        self.tally = Tally()
        self.connlog = ConnLog(REASON_CODES["dest_deleted"]) if conns else None
        self.samples: list = []             # (ts_ns, dest rows) at window boundaries
        self.events: list = []              # dicts: t, command, before_packet, dests after
        self.initial = self._dest_rows()
        self.initial_dests = engine.dests()
        self.tally.set_server_states(self.initial_dests)
        self.elapsed = 0.0

    def _dest_rows(self):
        ds = self.engine.dests()
        if not ds:
            return np.zeros((0, 5), np.int64)
        return np.array([(d["id"], d["activeconns"], d["inactconns"], d["weight"], d["available"])
                         for d in ds], np.int64)

    def add(self, batch, start, stop, dec) -> None:
        self.tally.add(batch, start, stop, dec)
        if self.connlog is not None:
            self.connlog.add(batch, start, stop, dec)

    def sample(self, ts_ns: int) -> None:
        self.samples.append((ts_ns, self._dest_rows()))

    def event(self, ev, cmd, index: int) -> None:
        dests = self.engine.dests()
        self.tally.set_server_states(dests)
        self.events.append({"t": ev.t, "command": ev.line, "op": cmd.op, "before_packet": index,
                            "dest": _canonical(cmd.dest) if getattr(cmd, "dest", None) else None})

    # ------------------------------------------------------------------------------------------

    def summary(self, st, capture: str = "", inferred=None, extra: Optional[dict] = None) -> dict:
        return _summarize(self, st, capture, inferred, extra or {})


class Clock:
    """Window boundaries for the replay (see ipvsflow.replay): samples every analysis at each
    boundary of the tallies' current window grid (the grid coarsens for long captures)."""

    def __init__(self, analyses):
        self.analyses = list(analyses)
        self.t0 = 0

    def first(self, t0: int) -> int:
        self.t0 = t0
        for a in self.analyses:
            a.tally.start(t0)
        return t0 + self.analyses[0].tally.win_ns

    def tick(self, ts: int) -> int:
        for a in self.analyses:
            a.tally._grow_windows(ts)
            a.sample(ts)
        w = self.analyses[0].tally.win_ns
        return self.t0 + ((ts - self.t0) // w + 1) * w


# ----------------------------------------------------------------------------------------------
# summary

def _display_window(base_ns: int, span_ns: int, rows: int = 16) -> int:
    for k in DISPLAY_STEPS:
        if base_ns * k * rows >= span_ns:
            return base_ns * k
    return base_ns * DISPLAY_STEPS[-1] * max(1, math.ceil(span_ns / (base_ns * DISPLAY_STEPS[-1] * rows)))


def _rebin(arr: np.ndarray, k: int) -> np.ndarray:
    pad = (-arr.shape[0]) % k
    if pad:
        arr = np.concatenate([arr, np.zeros((pad,) + arr.shape[1:], arr.dtype)])
    return arr.reshape((arr.shape[0] // k, k) + arr.shape[1:]).sum(axis=1)


def _jain(x: np.ndarray) -> Optional[float]:
    x = np.asarray(x, float)
    if len(x) == 0 or (x ** 2).sum() == 0:
        return None
    return float(x.sum() ** 2 / (len(x) * (x ** 2).sum()))


def _quantiles(v: np.ndarray) -> dict:
    if len(v) == 0:
        return {}
    q = np.quantile(v, [0.0, 0.5, 0.9, 0.99, 1.0])
    return {"min": round(float(q[0]), 6), "p50": round(float(q[1]), 6), "p90": round(float(q[2]), 6),
            "p99": round(float(q[3]), 6), "max": round(float(q[4]), 6), "mean": round(float(v.mean()), 6)}


def drop_delays(key: np.ndarray, ts: np.ndarray, act: np.ndarray) -> dict:
    """Client delay of dropped opening packets: for each run of drops on one tuple, the time
    from the first dropped SYN/INIT to the next one of the same tuple that got through."""
    from .engine.names import ACT_DROP
    n = len(key)
    if n == 0:
        return {"attempts": 0, "dropped": 0, "answered": 0, "unanswered": 0, "delay_s": {}, "histogram": []}
    order = np.lexsort((np.arange(n), key))
    k, t, a = key[order], ts[order], act[order]
    dropped = a == ACT_DROP
    new_key = np.ones(n, bool)
    new_key[1:] = k[1:] != k[:-1]
    prev_dropped = np.zeros(n, bool)
    prev_dropped[1:] = dropped[:-1]
    run_start = dropped & (new_key | ~prev_dropped)
    starts = np.flatnonzero(run_start)
    ok_pos = np.flatnonzero(~dropped)
    j = np.searchsorted(ok_pos, starts)
    has = j < len(ok_pos)
    nxt = np.where(has, ok_pos[np.minimum(j, len(ok_pos) - 1)] if len(ok_pos) else 0, 0)
    same = has & (k[nxt] == k[starts]) if len(ok_pos) else np.zeros(len(starts), bool)
    delays = (t[nxt[same]] - t[starts[same]]) / 1e9
    edges = [0, 0.5, 1.5, 3.5, 7.5, math.inf]
    labels = ["< 0.5 s", "0.5-1.5 s", "1.5-3.5 s", "3.5-7.5 s", ">= 7.5 s"]
    hist = np.histogram(delays, bins=edges)[0] if len(delays) else np.zeros(5, int)
    return {"attempts": int(len(starts)), "dropped": int(dropped.sum()), "answered": int(same.sum()),
            "unanswered": int(len(starts) - same.sum()), "delay_s": _quantiles(delays),
            "total_delay_s": round(float(delays.sum()), 6),
            "histogram": [{"bin": lb, "count": int(c)} for lb, c in zip(labels, hist)]}


def _summarize(a: Analysis, st, capture, inferred, extra) -> dict:
    from .engine import ACTIONS, REASONS, state_name
    from .engine.variants import describe
    eng = a.engine
    tl = a.tally
    dests = {d["id"]: d for d in eng.dests()}
    n_rs = max(dests, default=-1) + 1
    rs_name = {i: _endpoint(d["addr"], d["port"]) for i, d in dests.items()}
    services = eng.services()
    first = st.first_ts_ns or 0
    last = st.last_ts_ns or first
    span = last - first

    # -- packet accounting
    by_ar = tl.by_ar
    accounting = []
    totals = {}
    for ai in range(1, len(ACTIONS)):
        row = by_ar[ai]
        if row.sum() == 0:
            continue
        totals[ACTIONS[ai]] = int(row.sum())
        for ri in np.flatnonzero(row):
            r = REASONS[ri] if ri < len(REASONS) else str(ri)
            accounting.append({"action": ACTIONS[ai], "reason": r or None, "packets": int(row[ri]),
                               "meaning": REASON_TEXT.get(r) or ACTION_TEXT.get(ACTIONS[ai], "")})

    # -- timeline
    base = int(tl.win_ns)
    W = max(int(tl.max_w), 1)
    disp = _display_window(base, max(span, base))
    k = disp // base
    win = _rebin(np.asarray(tl.win[:W, :n_rs]), k) if n_rs else np.zeros((1, 0, 6), np.uint64)
    nw = win.shape[0]
    # server counters at each display boundary (start of window i+1 = end of window i)
    samp_ts = np.array([s[0] for s in a.samples], np.int64)
    bounds = first + disp * np.arange(1, nw + 1)

    def rows_at(ts_ns):
        if len(samp_ts):
            i = int(np.searchsorted(samp_ts, ts_ns, side="right")) - 1
            if i >= 0:
                return a.samples[i][1]
        return a.initial

    def table(rows):
        out = np.zeros((n_rs, 4), np.int64)        # active, inactive, weight, available
        for r in rows:
            if r[0] < n_rs:
                out[r[0]] = r[1:]
        return out

    end_state = table(a._dest_rows())
    at_end = [table(rows_at(b)) if b < last else end_state for b in bounds]
    at_start = [table(a.initial)] + at_end[:-1]
    # weights in force during each window: at its start, and after any event inside it
    ev_ts = [first + int(round(e["t"] * 1e9)) for e in a.events]
    windows = []
    expected = np.zeros(n_rs)
    starts_tot = np.zeros(n_rs)
    for i in range(nw):
        w = at_start[i][:, 2].astype(float).copy()
        avail = at_start[i][:, 3].astype(bool)
        # an event inside the window: use the later weights for the whole window
        inside = [j for j, t in enumerate(ev_ts) if first + i * disp < t <= first + (i + 1) * disp]
        if inside:
            w = at_end[i][:, 2].astype(float)
            avail = at_end[i][:, 3].astype(bool)
        w = np.where(avail, w, 0.0)
        s = win[i, :, 1].astype(float)
        tot = s.sum()
        fair = w / w.sum() if w.sum() > 0 else np.zeros(n_rs)
        share = s / tot if tot > 0 else np.zeros(n_rs)
        live = w > 0
        x = s[live] / w[live]
        jain = _jain(x) if tot > 0 else None
        mm = (float(x.max() / x.min()) if len(x) and x.min() > 0 else (math.inf if len(x) and x.max() > 0 else None))
        expected += fair * tot
        starts_tot += s
        windows.append({
            "t": round(i * disp / 1e9, 6),
            "servers": {rs_name.get(r, str(r)): {
                "new": int(win[i, r, 0]), "starts": int(win[i, r, 1]),
                "inpkts": int(win[i, r, 2]), "inbytes": int(win[i, r, 3]),
                "outpkts": int(win[i, r, 4]), "outbytes": int(win[i, r, 5]),
                "active": int(at_end[i][r, 0]), "inactive": int(at_end[i][r, 1]),
                "weight": int(w[r]), "share": round(float(share[r]), 4), "fair_share": round(float(fair[r]), 4),
                "present": bool(at_start[i][r, 3] or at_end[i][r, 3] or win[i, r, 1])}
                for r in range(n_rs)},
            "starts": int(tot), "jain": None if jain is None else round(jain, 4),
            "max_min": None if mm is None else (round(mm, 3) if math.isfinite(mm) else "inf"),
        })

    # -- fairness overall: actual starts against what the weights in force asked for
    fairness = []
    for svc in services:
        ids = [d["id"] for d in svc["dests"]] + [i for i, d in dests.items()
                                                  if d["svc"] == svc["id"] and not d["available"]]
        ids = sorted(set(ids))
        act = starts_tot[ids] if ids else np.zeros(0)
        exp = expected[ids] if ids else np.zeros(0)
        if act.sum() == 0:
            continue
        m = exp > 0
        ratio = act[m] / exp[m]
        servers = []
        for i, c, e in zip(ids, act, exp):
            d = dests[i]
            servers.append({"rs": rs_name[i], "weight": d["weight"], "available": d["available"],
                            "starts": int(c), "share": round(float(c / act.sum()), 4),
                            "expected_share": round(float(e / act.sum()), 4) if act.sum() else 0.0,
                            "ratio": round(float(c / e), 3) if e > 0 else None})
        mm = float(ratio.max() / ratio.min()) if len(ratio) and ratio.min() > 0 else None
        fairness.append({"service": " ".join(svc["name"].split()), "jain": None if _jain(ratio) is None
                         else round(_jain(ratio), 4), "max_min": None if mm is None else round(mm, 3),
                         "servers": servers})

    # -- servers added mid-capture: time to reach 90% of the fair share
    convergence = []
    for e in a.events:
        if e["op"] != "add-dest" or not e["dest"]:
            continue
        t_ev = e["t"]
        name = e["dest"]
        ids = [i for i, nme in rs_name.items() if nme == name]
        if not ids:
            continue
        r = ids[-1]
        reached = None
        for i, wdw in enumerate(windows):
            if wdw["t"] < t_ev or wdw["starts"] == 0:
                continue
            srv = wdw["servers"][name]
            if srv["fair_share"] > 0 and srv["share"] >= 0.9 * srv["fair_share"]:
                reached = round(wdw["t"] + disp / 1e9 - t_ev, 3)
                break
        after = [w for w in windows if w["t"] >= t_ev and w["starts"]]
        last_w = after[-1]["servers"][name] if after else None
        convergence.append({"rs": name, "added_at": t_ev, "reached_90pct_after_s": reached,
                            "final_share": last_w["share"] if last_w else None,
                            "final_fair_share": last_w["fair_share"] if last_w else None, "rs_id": r})

    # -- port reuse
    reuse = []
    R = np.asarray(tl.reuse)
    for pi, proto in enumerate(("tcp", "udp", "sctp", "other")):
        pnum = {"tcp": 6, "udp": 17, "sctp": 132}.get(proto, 0)
        for s in range(R.shape[1]):
            for act in np.flatnonzero(R[pi, s]):
                old = state_name(pnum, s) if s < R.shape[1] - 1 else None
                retrans = (pnum == 6 and s in (2, 3, 10)) or (pnum == 132 and s in (1, 2))
                reuse.append({"proto": proto, "old_state": old,
                              "outcome": OUTCOMES.get(int(act), ACTIONS[int(act)]),
                              "count": int(R[pi, s, act]), "retransmission": bool(retrans)})
    reuse.sort(key=lambda r: (-r["count"]))
    real = [r for r in reuse if not r["retransmission"]]
    reuse_totals = {o: sum(r["count"] for r in real if r["outcome"] == o) for o in ("kept", "rescheduled", "dropped")}
    weight0 = []
    for i in range(n_rs):
        s0 = int(tl.starts_w0[i]) if i < len(tl.starts_w0) else 0
        g = int(tl.starts_gone[i]) if i < len(tl.starts_gone) else 0
        if s0 or g:
            weight0.append({"rs": rs_name[i], "starts_at_weight0": s0,
                            "reused_ports_at_weight0": int(tl.reuse_starts_w0[i]),
                            "drops_after_delete": g})

    # -- dropped SYNs: the client delay they imply
    key, ts, conn, act = tl.syn_records()
    delays = drop_delays(np.asarray(key), np.asarray(ts), np.asarray(act))

    # -- services and real servers at the end (ipvsadm -L -n --stats with the list columns)
    stats = eng.stats()
    svc_rows = []
    for svc in stats["services"]:
        srv = []
        for d in sorted(svc["dests"], key=lambda d: d["id"]):
            i = d["id"]
            srv.append({"rs": rs_name[i], "fwd": d["fwd"], "weight": d["weight"],
                        "conns": d["conns"], "starts": int(starts_tot[i]) if i < n_rs else 0,
                        "inpkts": d["inpkts"], "outpkts": d["outpkts"], "inbytes": d["inbytes"],
                        "outbytes": d["outbytes"], "activeconns": d["activeconns"],
                        "inactconns": d["inactconns"], "persistconns": d["persistconns"]})
        svc_rows.append({"service": " ".join(svc["name"].split()), "scheduler": svc["scheduler"],
                         "persistent": svc["persistent"], "conns": svc["conns"], "inpkts": svc["inpkts"],
                         "outpkts": svc["outpkts"], "inbytes": svc["inbytes"], "outbytes": svc["outbytes"],
                         "servers": srv})
    sysctls = {n: eng.get_sysctl(n) for n in ("conn_reuse_mode", "expire_nodest_conn",
                                              "expire_quiescent_template", "conntrack", "secure_tcp",
                                              "sloppy_tcp")}
    out = {
        "schema_version": SCHEMA_VERSION,
        "label": a.label,
        "capture": capture,
        "kernel": eng.kernel,
        "kernel_variant": describe(eng.kernel),
        "sysctls": sysctls,
        "timeouts": dict(zip(("tcp", "tcpfin", "udp"), (int(x) for x in eng.timeouts()))),
        "packets": int(tl.packets),
        "bytes": int(tl.bytes),
        "first_ts": first / 1e9,
        "duration_s": round(span / 1e9, 6),
        "totals": totals,
        "accounting": accounting,
        "inferred_services": inferred,
        "events": [{k: v for k, v in e.items()} for e in a.events],
        "services": svc_rows,
        "window_s": disp / 1e9,
        "timeline": windows,
        "reuse": reuse,
        "reuse_totals": reuse_totals,
        "weight0": weight0,
        "syn_drops": delays,
        "fairness": fairness,
        "convergence": convergence,
        "connections_at_end": eng.conn_count,
        "elapsed_s": round(a.elapsed, 3),
        "ipvsadm_stats": eng.format_stats(),
        "ipvsadm_list": eng.format_list(),
    }
    out.update(extra)
    out["findings"] = findings(out)
    return out


def findings(s: dict) -> list[str]:
    """Plain-language headlines of a summary."""
    out = []
    tot = s["packets"] or 1
    t = s["totals"]
    drop = t.get("drop", 0)
    if drop:
        reasons = sorted((r for r in s["accounting"] if r["action"] == "drop"), key=lambda r: -r["packets"])
        out.append(f"IPVS dropped {drop:,} packets ({100 * drop / tot:.1f}%), mostly {reasons[0]['reason']}: "
                   f"{reasons[0]['meaning']}.")
    rt = s["reuse_totals"]
    nre = sum(rt.values())
    if nre:
        parts = [f"{v:,} {k}" for k, v in rt.items() if v]
        top = [r for r in s["reuse"] if not r["retransmission"]][:1]
        extra = (f"; most hit entries in {top[0]['old_state']} ({top[0]['count']:,} {top[0]['outcome']})"
                 if top else "")
        out.append(f"{nre:,} SYN/INITs reused a client port that still had an IPVS entry: "
                   f"{', '.join(parts)}{extra}.")
        crm = s["sysctls"].get("conn_reuse_mode")
        kept_fw = sum(r["count"] for r in s["reuse"] if r["outcome"] == "kept" and r["old_state"] == "FIN_WAIT")
        if kept_fw and crm is not None and not (crm & 2):
            out.append(f"{kept_fw:,} of them hit FIN_WAIT entries (the last state a DR/TUN director sees) and "
                       f"stayed on their old server: conn_reuse_mode={crm} reschedules only TIME_WAIT/CLOSE; "
                       "conn_reuse_mode=2 would reschedule them.")
        kept_any = rt.get("kept", 0)
        if kept_any and crm == 0:
            out.append(f"conn_reuse_mode=0: all {kept_any:,} reused ports went back to their previous server.")
    d = s["syn_drops"]
    if d["attempts"]:
        q = d["delay_s"]
        dl = f"; the client's next SYN came {q['p50']:.2f} s later (median)" if q else ""
        out.append(f"{d['attempts']:,} connection attempts lost their first SYN/INIT{dl}"
                   + (f", {d['unanswered']:,} never retried in the capture" if d["unanswered"] else "") + ".")
    for w in s["weight0"]:
        if w["starts_at_weight0"]:
            out.append(f"{w['rs']} received {w['starts_at_weight0']:,} client connections while at weight 0 "
                       f"({w['reused_ports_at_weight0']:,} through reused ports).")
        if w["drops_after_delete"]:
            out.append(f"{w['drops_after_delete']:,} packets of connections to {w['rs']} were dropped after "
                       "it was deleted.")
    for c in s["convergence"]:
        if c["reached_90pct_after_s"] is not None:
            out.append(f"{c['rs']}, added at +{c['added_at']:g} s, reached 90% of its fair share of new "
                       f"connections after {c['reached_90pct_after_s']:g} s.")
        elif c["final_share"] is not None:
            out.append(f"{c['rs']}, added at +{c['added_at']:g} s, never reached its fair share: "
                       f"{100 * c['final_share']:.0f}% of new connections in the last window vs "
                       f"{100 * c['final_fair_share']:.0f}% fair.")
    for f in s["fairness"]:
        if f["jain"] is not None:
            worst = max((x for x in f["servers"] if x["ratio"] is not None), key=lambda x: abs(x["ratio"] - 1),
                        default=None)
            w = (f"; furthest from its weight: {worst['rs']} at {worst['ratio']:.2f}x" if worst and
                 abs(worst["ratio"] - 1) > 0.05 else "")
            out.append(f"{f['service']}: Jain's fairness index {f['jain']:.3f} over the capture "
                       f"(1 = every server got its weight's share){w}.")
    inv = t.get("invalid", 0)
    if inv:
        out.append(f"{inv:,} packets could not be parsed (see the accounting).")
    return out


def write_json(summary: dict, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=1, default=str)
        fh.write("\n")


# ----------------------------------------------------------------------------------------------
# terminal

def _num(v) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def print_report(s: dict, file=None, width: Optional[int] = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich import box

    con = Console(file=file or sys.stdout, highlight=False, width=width)
    if width is None and not con.is_terminal:
        con.width = 120
    sc = s["sysctls"]
    con.print(f"[bold]ipvsflow analyze[/] {s['capture']}")
    con.print(f"  {s['packets']:,} packets, {_bytes(s['bytes'])}, {s['duration_s']:.1f} s; "
              f"{s['kernel_variant']}")
    con.print("  sysctls: " + " ".join(f"{k}={v}" for k, v in sc.items()))
    if s.get("inferred_services"):
        con.print("[yellow]  No rules given; services inferred from the capture:[/]")
        for x in s["inferred_services"]:
            con.print(f"    {x}")
    for ev in s["events"]:
        con.print(f"  event +{ev['t']:g} s (before packet {ev['before_packet']:,}): {ev['command']}")
    if s["findings"]:
        con.print()
        con.print("[bold]Findings[/]")
        for f in s["findings"]:
            con.print(f"  • {f}")

    t = Table(title="Packet accounting", box=box.SIMPLE_HEAD, title_justify="left")
    for c, j in (("action", "left"), ("reason", "left"), ("packets", "right"), ("%", "right"), ("meaning", "left")):
        t.add_column(c, justify=j)
    tot = s["packets"] or 1
    for r in s["accounting"]:
        t.add_row(r["action"], r["reason"] or "", f"{r['packets']:,}", f"{100 * r['packets'] / tot:.1f}",
                  r["meaning"])
    t.add_row("[bold]total[/]", "", f"[bold]{s['packets']:,}[/]", "100.0", "")
    con.print(t)

    for svc in s["services"]:
        t = Table(title=f"{svc['service']} ({svc['scheduler']}) at the end of the capture",
                  box=box.SIMPLE_HEAD, title_justify="left")
        out = svc["outpkts"] > 0
        cols = ["real server", "fwd", "weight", "Conns", "starts", "InPkts", "InBytes"]
        cols += ["OutPkts", "OutBytes"] if out else []
        cols += ["ActiveConn", "InActConn"]
        for c in cols:
            t.add_column(c, justify="left" if c in ("real server", "fwd") else "right", no_wrap=True)
        for d in svc["servers"]:
            o = [f"{d['outpkts']:,}", _bytes(d["outbytes"])] if out else []
            t.add_row(d["rs"], d["fwd"], str(d["weight"]), f"{d['conns']:,}", f"{d['starts']:,}",
                      f"{d['inpkts']:,}", _bytes(d["inbytes"]), *o,
                      f"{d['activeconns']:,}", f"{d['inactconns']:,}")
        o = [f"{svc['outpkts']:,}", _bytes(svc["outbytes"])] if out else []
        t.add_row("[bold]service[/]", "", "", f"{svc['conns']:,}", "", f"{svc['inpkts']:,}",
                  _bytes(svc["inbytes"]), *o, "", "")
        con.print(t)
    con.print("  [dim]Conns: connections scheduled (ipvsadm --stats); starts: client connections, "
              "including SYNs that reused an existing entry[/]")

    tlw = s["timeline"]
    if tlw and tlw[0]["servers"]:
        names = list(tlw[0]["servers"])
        used = [n for n in names if any(w["servers"][n]["starts"] or w["servers"][n]["active"] or
                                        w["servers"][n]["inactive"] for w in tlw)]
        t = Table(title=f"Load over time, {s['window_s']:g} s windows: connection starts (share), "
                        "ActiveConn/InActConn at the window's end; w0 = weight 0", box=box.SIMPLE_HEAD,
                  title_justify="left")
        t.add_column("from", justify="right")
        for n in used:
            t.add_column(n, justify="right")
        t.add_column("Jain", justify="right")
        evs = sorted(s["events"], key=lambda e: e["t"])
        ei = 0
        for w in tlw:
            while ei < len(evs) and evs[ei]["t"] < w["t"] + s["window_s"] and evs[ei]["t"] <= w["t"] + 1e-9:
                ei += 1
            cells = []
            for n in used:
                v = w["servers"][n]
                if not v.get("present", True):
                    cells.append("[dim]-[/]")
                    continue
                wt = "" if v["weight"] else " [red]w0[/]"
                cells.append(f"{v['starts']:,} ({100 * v['share']:.0f}%){wt} {v['active']}/{v['inactive']}")
            t.add_row(f"+{w['t']:g}s", *cells, "" if w["jain"] is None else f"{w['jain']:.2f}")
            while ei < len(evs) and evs[ei]["t"] < w["t"] + s["window_s"]:
                t.add_row("", f"[yellow]event +{evs[ei]['t']:g}s: {evs[ei]['command']}[/]", *[""] * len(used))
                ei += 1
        con.print(t)

    if s["reuse"]:
        t = Table(title="Port reuse: SYN/INITs that found an existing entry", box=box.SIMPLE_HEAD,
                  title_justify="left")
        for c in ("proto", "old state", "outcome", "count", "note"):
            t.add_column(c, justify="right" if c == "count" else "left")
        for r in s["reuse"]:
            t.add_row(r["proto"], str(r["old_state"]), r["outcome"], f"{r['count']:,}",
                      "retransmitted SYN (entry never got past the handshake)" if r["retransmission"] else "")
        con.print(t)
    d = s["syn_drops"]
    if d["attempts"]:
        q = d["delay_s"]
        t = Table(title="Dropped SYN/INITs and the client delay they imply (next SYN of the same tuple)",
                  box=box.SIMPLE_HEAD, title_justify="left")
        t.add_column("attempts")
        t.add_column("SYNs dropped", justify="right")
        t.add_column("retried", justify="right")
        t.add_column("never retried", justify="right")
        for c in ("min", "median", "p90", "max"):
            t.add_column(c, justify="right")
        qq = [f"{q[k]:.3f} s" if q else "-" for k in ("min", "p50", "p90", "max")]
        t.add_row(f"{d['attempts']:,}", f"{d['dropped']:,}", f"{d['answered']:,}", f"{d['unanswered']:,}", *qq)
        con.print(t)
        con.print("  delay histogram: " + ", ".join(f"{h['bin']}: {h['count']:,}" for h in d["histogram"] if h["count"]))
    for f in s["fairness"]:
        jn = "-" if f["jain"] is None else f"{f['jain']:.3f}"
        mm = "-" if f["max_min"] is None else f"{f['max_min']:.2f}"
        t = Table(title=f"Fairness, {f['service']}: starts against the weights in force "
                        f"(Jain's index {jn}, max/min {mm})",
                  box=box.SIMPLE_HEAD, title_justify="left")
        for c in ("real server", "weight now", "starts", "share", "expected", "ratio"):
            t.add_column(c, justify="left" if c == "real server" else "right")
        for x in f["servers"]:
            t.add_row(x["rs"] + ("" if x["available"] else " (deleted)"), str(x["weight"]), f"{x['starts']:,}",
                      f"{100 * x['share']:.1f}%", f"{100 * x['expected_share']:.1f}%",
                      "-" if x["ratio"] is None else f"{x['ratio']:.2f}")
        con.print(t)


def print_footer(s: dict, file=None, demo: bool = False) -> None:
    from rich.console import Console
    con = Console(file=file or sys.stdout, highlight=False)
    if not con.is_terminal:
        con.width = 120
    fw = s.get("forwarder")
    if fw:
        drops = {k: v for k, v in fw.get("drop_reasons", {}).items() if v}
        con.print(f"out-pcap: {fw.get('forwarded', 0):,} packets written, {fw.get('dropped', 0):,} not written"
                  + (f" ({', '.join(f'{k}: {v:,}' for k, v in drops.items())})" if drops else "")
                  + ("; DR needs each real server's MAC: --neighbour IP=MAC" if drops.get("no_neighbour") else ""))
    if demo:
        con.print("[dim]Next: ipvsflow compare --demo --reuse-mode 0,1,2   "
                  "(the same capture under each conn_reuse_mode), or ipvsflow analyze --demo --sysctl "
                  "conn_reuse_mode=2 --plot load.png[/]")


class Progress:
    """A progress bar on stderr (packets/s, ETA by bytes read), only on a terminal; updated at
    most ten times a second."""

    def __init__(self, reader, enabled: bool = True, label: str = "replaying"):
        self.reader = reader
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self._p = None
        self._task = None
        self._t0 = time.monotonic()
        self._next = 0.0

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, Progress as RP, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            self._p = RP(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[pps]}"),
                         TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=True,
                         console=Console(file=sys.stderr))
            self._p.__enter__()
            total = getattr(self.reader, "size", None)
            self._task = self._p.add_task(self.label, total=total, pps="")
        return self

    def update(self, st) -> None:
        if self._p is None:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 0.1
        el = max(now - self._t0, 1e-9)
        done = getattr(self.reader, "bytes_read", None)
        self._p.update(self._task, completed=done, pps=f"{st.packets:,} pkts, {st.packets / el / 1e6:.2f} Mpps")

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)


def infer_services(reader, cfg, max_services: int = 4) -> list[str]:
    """Without rules: make the most contacted address:port pairs (by connection starts) services.

    Starts are TCP SYNs without ACK, SCTP INITs and distinct UDP flows. A pair becomes a service
    if it received at least 5% of all starts (the busiest one always does). A capture cannot
    show the real servers behind a VIP, so each inferred service gets one real server at the VIP
    itself (DR): connection tracking, states and port-reuse accounting stay meaningful,
    scheduling is trivial. Fills cfg.services and returns one description per service.
    """
    from .config import PROTO_TCP, PROTO_UDP, PROTO_SCTP, RealServer, VirtualService, FWD_DROUTE
    from .io import addr_to_str

    key_dt = np.dtype([("proto", "u1"), ("dst", "u1", (16,)), ("dport", "<u2")])
    flow_dt = np.dtype([("src", "u1", (16,)), ("dst", "u1", (16,)), ("sport", "<u2"), ("dport", "<u2")])
    counts: dict = {}
    udp_seen = set()
    for batch in reader:
        r = batch.to_numpy()
        ok = r["status"] == 0
        proto = r["proto"]
        syn = ok & (((proto == PROTO_TCP) & ((r["tcp_flags"] & 0x12) == 0x02))
                    | ((proto == PROTO_SCTP) & (r["sctp_chunk"] == 1)))
        udp = ok & (proto == PROTO_UDP)
        if udp.any():
            u = r[udp]
            fk = np.zeros(len(u), flow_dt)
            for f in ("src", "dst", "sport", "dport"):
                fk[f] = u[f]
            uniq, first_idx = np.unique(fk.view(np.dtype((np.void, flow_dt.itemsize))).ravel(),
                                        return_index=True)
            fresh = [i for kk, i in zip(uniq.tolist(), first_idx.tolist()) if kk not in udp_seen]
            udp_seen.update(uniq.tolist())
            syn[np.flatnonzero(udp)[fresh]] = True
        if not syn.any():
            continue
        sel = r[syn]
        keys = np.zeros(len(sel), key_dt)
        keys["proto"] = sel["proto"]
        keys["dst"] = sel["dst"]
        keys["dport"] = sel["dport"]
        u, c = np.unique(keys.view(np.dtype((np.void, key_dt.itemsize))), return_counts=True)
        for kk, v in zip(u.tolist(), c.tolist()):
            counts[kk] = counts.get(kk, 0) + v
    if not counts:
        return []
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    out = []
    for kk, n in ranked[:max_services]:
        if out and n < 0.05 * total:
            break
        rec = np.frombuffer(kk, key_dt)[0]
        proto, addr, dport = int(rec["proto"]), addr_to_str(bytes(rec["dst"])), int(rec["dport"])
        svc = VirtualService(proto=proto, addr=addr, port=dport, af=6 if ":" in addr else 4, scheduler="rr",
                             netmask=32 if ":" not in addr else 128,
                             dests=[RealServer(addr=addr, port=dport, fwd=FWD_DROUTE, weight=1)])
        cfg.services.append(svc)
        out.append(f"{' '.join(svc.name().split())}: {n:,} of {total:,} connection starts "
                   f"({100 * n / total:.0f}%); modelled with one real server at the VIP itself (DR)")
    return out
