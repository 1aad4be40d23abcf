"""Synthesizer throughput: packets generated and written to a pcap per second, one core.

Run: ``python -m pytest bench/bench_synth.py --benchmark-only`` (add ``-s`` for the Mpps lines).
``IPVSFLOW_SYNTH_PACKETS`` / ``IPVSFLOW_SYNTH_CONNS`` resize the ``bench`` case (default 3M
packets over 300k concurrent connections; the preset scales to 10M / 1M). Target: >= 1 Mpps.
Figures are reported as ``extra_info``: wall-clock Mpps and Mpps per CPU second (the latter is
steadier on a shared machine).
"""
import os
import time

import pytest

from ipvsflow import synth

PACKETS = int(os.environ.get("IPVSFLOW_SYNTH_PACKETS", 3_000_000))
CONNS = int(os.environ.get("IPVSFLOW_SYNTH_CONNS", PACKETS // 10))

CASES = {
    # TCP, DR view, every connection open at once: the engine benchmarks' input
    "bench-dr": lambda: synth.preset("bench", packets=PACKETS, conns=CONNS),
    # both directions, TCP/UDP/SCTP over IPv4 and IPv6: every checksum kind, SCTP CRC32c
    "mixed-both": lambda: synth.preset("mixed", packets=PACKETS // 6, conns=PACKETS // 60,
                                       duration=30.0, clients=2000, port_range=(32768, 60999)),
}


def _timed(spec, path):
    c0 = time.process_time()
    res = synth.synthesize(spec, path)
    return res, time.process_time() - c0


@pytest.mark.benchmark(group="synth", min_rounds=3, warmup=False)
@pytest.mark.parametrize("case", list(CASES))
def test_synth_throughput(benchmark, tmp_path, case):
    spec = CASES[case]()
    out = tmp_path / f"{case}.pcap"
    res, cpu = benchmark.pedantic(_timed, args=(spec, out), rounds=3, iterations=1, warmup_rounds=1)
    assert res.packets == spec.packets
    assert out.stat().st_size == res.bytes
    mpps_cpu = res.packets / cpu / 1e6
    benchmark.extra_info.update(packets=res.packets, connections=res.connections, bytes=res.bytes,
                                mpps_wall=round(res.mpps, 3), mpps_cpu=round(mpps_cpu, 3))
    print(f"\n{case}: {res.packets:,} packets, {res.connections:,} connections, "
          f"{res.bytes / 1e6:.0f} MB: {res.mpps:.2f} Mpps wall, {mpps_cpu:.2f} Mpps per CPU second")
