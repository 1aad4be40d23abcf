"""Scheduler choices cross-checked against the real kernel (Linux 6.1 through the oracle VM;
fixtures under tests/fixtures/oracle/, produced independently of this code).

* Pure scheduling scenarios (every injected packet is a SYN from a new client port, so every
  packet schedules one new connection): replaying the service table with the fixture's rules and
  actions must reproduce `summary.rs_sequence` exactly, rr/wrr cursor state, the sh/dh/mh tables,
  scheduler flags (sh-port, sh-fallback, mh-port, mh-fallback) and edits included.
* Stateless schedulers (lc, wlc, sed, nq, fo, ovf) in any scenario: for every SYN from a client
  port not seen before, the scheduler given the kernel's counters at that moment (`dests_after`
  of that packet, minus the new connection itself) must choose the kernel's real server.
"""
import json
import shlex
from pathlib import Path

import pytest

from ipvsflow.engine._svctest import SvcTable
from svc_helpers import cmd

FIXTURES = Path(__file__).parent / "fixtures" / "oracle"
IMPLEMENTED = {"rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "sh", "dh", "mh"}
STATELESS = {"lc", "wlc", "sed", "nq", "fo", "ovf"}
FWD = {"dr": "-g", "nat": "-m", "tun": "-i"}


def _load(d: Path):
    exp = json.loads((d / "expected.json").read_text())
    args = shlex.split((d / "args").read_text())
    opts = {}
    for i, a in enumerate(args):
        if a.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            opts[a] = args[i + 1]
    actions = []
    if (d / "actions").exists():
        for line in (d / "actions").read_text().splitlines():
            if line.strip():
                idx, rest = line.split(None, 1)
                actions.append((int(idx), rest))
    return exp, opts, actions


def _usable(d: Path):
    if not (d / "expected.json").exists() or not (d / "args").exists():
        return None
    exp, opts, actions = _load(d)
    cfg = exp.get("config", {})
    if (not exp.get("ok") or cfg.get("sched") not in IMPLEMENTED or cfg.get("persistent")
            or cfg.get("rules") or cfg.get("proto") != "tcp"):
        return None
    return exp, opts, actions


def _fixtures(pred):
    out = []
    if FIXTURES.is_dir():
        for d in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
            u = _usable(d)
            if u is not None and pred(*u):
                out.append(pytest.param(d, id=d.name))
    return out


def _ep(ip, port):
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _build(exp, opts):
    cfg = exp["config"]
    vs = _ep(cfg["vip"], cfg["vport"])
    t = SvcTable()
    flags = f" -b {cfg['sched_flags']}" if cfg.get("sched_flags") else ""
    t.apply(cmd(f"-A -t {vs} -s {cfg['sched']}{flags}"))
    n = len(exp["real_servers"])
    ut = [int(x) for x in opts.get("--u-thresholds", ",".join(["0"] * n)).split(",")]
    lt = [int(x) for x in opts.get("--l-thresholds", ",".join(["0"] * n)).split(",")]
    for rs in sorted(exp["real_servers"], key=lambda r: r["index"]):
        i = rs["index"]
        t.apply(cmd(f"-a -t {vs} -r {_ep(rs['ip'], rs['port'])} {FWD[cfg['mode']]} -w {rs['weight']}"
                    f" -x {ut[i]} -y {lt[i]}"))
    return t


def _rs_index(t, exp, dest_id):
    if dest_id < 0:
        return None
    addr = t.dest(dest_id)["addr"]
    return next(r["index"] for r in exp["real_servers"] if r["ip"] == addr)


def _injected(exp):
    return [p for p in exp["packets"] if p.get("injected")]


def _pure(exp, opts, actions):
    pk = _injected(exp)
    tuples = [(p["src"], p.get("sport")) for p in pk]
    return (pk and all(p["dir"] == "c2s" and p.get("flags") == "S" for p in pk)
            and len(set(tuples)) == len(tuples) and max(p["ts"] for p in pk) < 50)


def _stateless(exp, opts, actions):
    return (exp["config"]["sched"] in STATELESS and "--u-thresholds" not in opts
            and "--l-thresholds" not in opts)


def _apply_actions(t, actions, index):
    for idx, line in actions:
        if idx == index:
            t.apply(cmd(line, idx, "actions"))


@pytest.mark.parametrize("fixture", _fixtures(_pure))
def test_pure_scheduling_sequence_matches_kernel(fixture):
    exp, opts, actions = _load(fixture)
    t = _build(exp, opts)
    got = []
    for p in _injected(exp):
        _apply_actions(t, actions, p["index"])
        # SYN: bind, NONE -> SYN_RECV is an active state
        d = t.connect(0, src=p["src"], sport=p["sport"])[0]
        got.append(_rs_index(t, exp, d))
    assert got == exp["summary"]["rs_sequence"]


@pytest.mark.parametrize("fixture", _fixtures(_stateless))
def test_stateless_scheduler_choices_match_kernel(fixture):
    exp, opts, actions = _load(fixture)
    t = _build(exp, opts)
    by_ip = {}
    for d in t.dests():
        by_ip[d["addr"]] = d["id"]
    seen = set()
    checked = 0
    for p in exp["packets"]:
        _apply_actions(t, actions, p["index"])
        if not p.get("injected") or p["dir"] != "c2s":
            continue
        key = (p["src"], p.get("sport"))
        fresh = key not in seen
        seen.add(key)
        if not (fresh and p.get("flags") == "S"):
            continue
        chosen = p["rs"] if p.get("forwarded") else None
        for da in p["dests_after"]:
            did = by_ip[da["ip"]]
            assert t.dest(did)["weight"] == da["weight"], (p["index"], da)
            active = da["active"] - (1 if chosen is not None and da["ip"] == p.get("rs_ip") else 0)
            t.set_counts(did, active, da["inactive"])
        got = _rs_index(t, exp, t.schedule(0))
        assert got == chosen, f"packet {p['index']}: kernel chose {chosen}, scheduler {got}"
        checked += 1
    assert checked > 0
