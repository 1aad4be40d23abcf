"""Scheduler cost per new connection: ns per schedule call for the hashing schedulers (sh, dh, mh,
with and without the port / fallback flags) against rr and wlc, in a nogil loop over the service
table (no connection table, no parsing), one core.

Run: ``python -m pytest bench/bench_sched_hash.py --benchmark-only -s`` (the ns/call lines are
printed and kept as ``extra_info``). ``IPVSFLOW_SCHED_CALLS`` sets the calls per round (default
1M). Table rebuilds (on every real-server edit) are timed separately: mh's is the expensive one.
"""
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from svc_helpers import cmd  # noqa: E402
from ipvsflow.engine._svctest import SvcTable  # noqa: E402

CALLS = int(os.environ.get("IPVSFLOW_SCHED_CALLS", 1_000_000))
SERVERS = 16

CASES = {
    "rr": ("rr", ""),
    "wlc": ("wlc", ""),
    "sh": ("sh", ""),
    "sh-port,fallback(1/4 down)": ("sh", "sh-port,sh-fallback"),
    "dh": ("dh", ""),
    "mh": ("mh", ""),
    "mh-port,fallback(1/4 down)": ("mh", "mh-port,mh-fallback"),
}


def _table(sched, flags):
    t = SvcTable()
    vs = "203.0.113.10:80"
    t.apply(cmd(f"-A -t {vs} -s {sched}" + (f" -b {flags}" if flags else "")))
    for i in range(SERVERS):
        t.apply(cmd(f"-a -t {vs} -r 192.0.2.{11 + i}:80 -g -w {1 + i % 3}"))
    if "fallback" in flags:
        for i in range(0, SERVERS, 4):
            t.apply(cmd(f"-e -t {vs} -r 192.0.2.{11 + i}:80 -g -w 0"))
    return t


@pytest.mark.benchmark(group="sched", min_rounds=5, warmup=True)
@pytest.mark.parametrize("case", list(CASES))
def test_schedule_ns_per_call(benchmark, case):
    t = _table(*CASES[case])
    found = benchmark(t.schedule_many, 0, CALLS)
    assert found > 0
    ns = benchmark.stats.stats.min / CALLS * 1e9
    benchmark.extra_info["ns_per_call"] = round(ns, 1)
    print(f"\n{case:28s} {ns:6.1f} ns/schedule")


@pytest.mark.benchmark(group="rebuild", min_rounds=5, warmup=False)
@pytest.mark.parametrize("sched", ["rr", "sh", "dh", "mh"])
def test_table_rebuild(benchmark, sched):
    t = _table(sched, "")
    vs = "203.0.113.10:80"
    weights = iter(range(1, 1 << 30))

    def edit():
        # one -e: the parse is included; compare with rr's figure for the parse alone
        t.apply(cmd(f"-e -t {vs} -r 192.0.2.11:80 -g -w {next(weights) % 50 + 1}"))

    benchmark(edit)
    c0 = time.perf_counter()
    for _ in range(20):
        edit()
    benchmark.extra_info["us_per_edit"] = round((time.perf_counter() - c0) / 20 * 1e6, 1)
