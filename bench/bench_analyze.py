"""End-to-end throughput of ``ipvsflow analyze``'s replay: read + parse + engine + analysis
counters, without and with decision records (JSON lines, CSV, Parquet) going to /dev/null.
The report itself (summary, printing) is excluded: it does not grow with the capture.

The capture is the synth preset ``bench`` (DR view, long-lived connections):
IPVSFLOW_BENCH_PACKETS (default 1,000,000) packets over IPVSFLOW_BENCH_CONNS (default
100,000) connections, generated once into IPVSFLOW_BENCH_DIR (default: the system temp dir),
read in bursts of IPVSFLOW_BENCH_BURST (default 1024, as ``analyze --burst``).
The project target is 10M packets / 1M connections:

    IPVSFLOW_BENCH_PACKETS=10000000 IPVSFLOW_BENCH_CONNS=1000000 python -m pytest bench/bench_analyze.py

Each result carries ``mpps`` (packets per second / 1e6) and ``cpu_ns_per_packet`` (all threads,
the Parquet writer's included) in its extra_info; ``baseline`` is the reader and engine alone, so
the others show what the analysis and the writers add. ``parquet-file`` writes to a real file next
to the capture and records its size.
"""
import os
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")     # before numpy: no spinning BLAS threads

import pytest

from ipvsflow import synth
from ipvsflow.config import load_rules
from ipvsflow.engine import Engine
from ipvsflow.io import open_capture

PACKETS = int(os.environ.get("IPVSFLOW_BENCH_PACKETS", "1000000"))
CONNS = int(os.environ.get("IPVSFLOW_BENCH_CONNS", "100000"))
BURST = int(os.environ.get("IPVSFLOW_BENCH_BURST", "1024"))     # the CLI's default --burst


@pytest.fixture(scope="module")
def capture():
    d = os.environ.get("IPVSFLOW_BENCH_DIR") or tempfile.gettempdir()
    stem = os.path.join(d, f"ipvsflow-bench-{PACKETS}-{CONNS}")
    if not (os.path.exists(stem + ".pcap") and os.path.exists(stem + ".rules")):
        synth.synthesize_preset("bench", stem + ".pcap", rules=stem + ".rules", packets=PACKETS, conns=CONNS)
    return stem + ".pcap", stem + ".rules"


def _pipeline(path, rules, decisions_fmt=None, out=os.devnull, cpu=None):
    from ipvsflow.decisions import DecisionWriter
    from ipvsflow.replay import replay
    from ipvsflow.report import Analysis, Clock

    eng = Engine(load_rules(rules), capacity=BURST, max_conns=max(1 << 20, 2 * CONNS))
    ana = Analysis(eng)
    writer = DecisionWriter(out, eng, fmt=decisions_fmt) if decisions_fmt else None
    c0 = time.process_time()

    def sink(k, batch, start, stop, dec):
        ana.add(batch, start, stop, dec)
        if writer is not None:
            writer.write(batch, start, stop, dec)

    t = time.perf_counter()
    st = replay(open_capture(path, burst=BURST), [eng], on_decisions=sink, clock=Clock([ana]))
    if writer is not None:
        writer.close()
    el = time.perf_counter() - t
    if cpu is not None:
        cpu.append(time.process_time() - c0)
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


def _record(benchmark, el, cpu=None):
    benchmark.extra_info["packets"] = PACKETS
    benchmark.extra_info["connections"] = CONNS
    benchmark.extra_info["burst"] = BURST
    benchmark.extra_info["mpps"] = round(PACKETS / el / 1e6, 3)
    benchmark.extra_info["ns_per_packet"] = round(el / PACKETS * 1e9, 1)
    if cpu:
        benchmark.extra_info["cpu_ns_per_packet"] = round(min(cpu) / PACKETS * 1e9, 1)


@pytest.mark.benchmark(group="analyze", min_rounds=1)
def test_baseline_reader_and_engine(benchmark, capture):
    el = benchmark.pedantic(_baseline, args=capture, rounds=3, iterations=1)
    _record(benchmark, benchmark.stats.stats.min if benchmark.stats else el)


@pytest.mark.benchmark(group="analyze", min_rounds=1)
@pytest.mark.parametrize("decisions", [None, "jsonl", "csv", "parquet", "parquet-file"])
def test_analyze_pipeline(benchmark, capture, decisions):
    out = os.devnull
    fmt = decisions
    if decisions and decisions.startswith("parquet"):
        pytest.importorskip("pyarrow", reason="the Parquet writer needs pyarrow")
        if decisions == "parquet-file":
            fmt = "parquet"
            out = os.path.splitext(capture[0])[0] + ".decisions.parquet"
    cpu = []
    try:
        el = benchmark.pedantic(_pipeline, args=capture + (fmt, out, cpu), rounds=3, iterations=1)
        _record(benchmark, benchmark.stats.stats.min if benchmark.stats else el, cpu)
        if out != os.devnull:
            size = os.path.getsize(out)
            benchmark.extra_info["file_bytes"] = size
            benchmark.extra_info["bytes_per_packet"] = round(size / PACKETS, 2)
    finally:
        if out != os.devnull and os.path.exists(out):
            os.unlink(out)
