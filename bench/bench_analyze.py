"""End-to-end throughput of ``ipvsflow analyze``'s replay: read + parse + engine + analysis
counters, without and with decision records (JSON lines, CSV, Parquet) going to /dev/null.
The report itself (summary, printing) is excluded: it does not grow with the capture.

The capture is the synth preset ``bench`` (DR view, long-lived connections):
IPVSFLOW_BENCH_PACKETS (default 1,000,000) packets over IPVSFLOW_BENCH_CONNS (default
100,000) connections, generated once into IPVSFLOW_BENCH_DIR (default: the system temp dir).
The project target is 10M packets / 1M connections:

    IPVSFLOW_BENCH_PACKETS=10000000 IPVSFLOW_BENCH_CONNS=1000000 python -m pytest bench/bench_analyze.py

Each result carries ``mpps`` (packets per second / 1e6) in its extra_info; ``baseline`` is the
reader and engine alone, so the others show what the analysis and the writers add.
"""
import os
import tempfile
import time

import pytest

from ipvsflow import synth
from ipvsflow.config import load_rules
from ipvsflow.engine import Engine
from ipvsflow.io import open_capture

PACKETS = int(os.environ.get("IPVSFLOW_BENCH_PACKETS", "1000000"))
CONNS = int(os.environ.get("IPVSFLOW_BENCH_CONNS", "100000"))
BURST = int(os.environ.get("IPVSFLOW_BENCH_BURST", "256"))


@pytest.fixture(scope="module")
def capture():
    d = os.environ.get("IPVSFLOW_BENCH_DIR") or tempfile.gettempdir()
    stem = os.path.join(d, f"ipvsflow-bench-{PACKETS}-{CONNS}")
    if not (os.path.exists(stem + ".pcap") and os.path.exists(stem + ".rules")):
        synth.synthesize_preset("bench", stem + ".pcap", rules=stem + ".rules", packets=PACKETS, conns=CONNS)
    return stem + ".pcap", stem + ".rules"


def _pipeline(path, rules, decisions_fmt=None):
    from ipvsflow.decisions import DecisionWriter
    from ipvsflow.replay import replay
    from ipvsflow.report import Analysis, Clock

    eng = Engine(load_rules(rules), capacity=BURST, max_conns=max(1 << 20, 2 * CONNS))
    ana = Analysis(eng)
    writer = DecisionWriter(os.devnull, eng, fmt=decisions_fmt) if decisions_fmt else None

    def sink(k, batch, start, stop, dec):
        ana.add(batch, start, stop, dec)
        if writer is not None:
            writer.write(batch, start, stop, dec)

    t = time.perf_counter()
    st = replay(open_capture(path, burst=BURST), [eng], on_decisions=sink, clock=Clock([ana]))
    if writer is not None:
        writer.close()
    el = time.perf_counter() - t
    assert st.packets == PACKETS and ana.tally.packets == PACKETS
    return el


def _baseline(path, rules):
    eng = Engine(load_rules(rules), capacity=BURST, max_conns=max(1 << 20, 2 * CONNS))
    t = time.perf_counter()
    n = 0
    for b in open_capture(path, burst=BURST):
        eng.process(b)
        n += b.count
    el = time.perf_counter() - t
    assert n == PACKETS
    return el


def _record(benchmark, el):
    benchmark.extra_info["packets"] = PACKETS
    benchmark.extra_info["connections"] = CONNS
    benchmark.extra_info["mpps"] = round(PACKETS / el / 1e6, 3)
    benchmark.extra_info["ns_per_packet"] = round(el / PACKETS * 1e9, 1)


@pytest.mark.benchmark(group="analyze", min_rounds=1)
def test_baseline_reader_and_engine(benchmark, capture):
    el = benchmark.pedantic(_baseline, args=capture, rounds=3, iterations=1)
    _record(benchmark, benchmark.stats.stats.min if benchmark.stats else el)


@pytest.mark.benchmark(group="analyze", min_rounds=1)
@pytest.mark.parametrize("decisions", [None, "jsonl", "csv", "parquet"])
def test_analyze_pipeline(benchmark, capture, decisions):
    if decisions == "parquet":
        pytest.importorskip("pyarrow", reason="the Parquet writer needs pyarrow")
    el = benchmark.pedantic(_pipeline, args=capture + (decisions,), rounds=3, iterations=1)
    _record(benchmark, benchmark.stats.stats.min if benchmark.stats else el)
