"""The pyshark/tshark source yields the same batches as the fast readers.

Rows of ``to_numpy()`` (every field but the ``data`` pointer) must be identical between
``open_pyshark`` and ``open_capture`` on pcap, multi-section/multi-interface pcapng and the real
Debian captures; a display filter selects exactly the packets tshark selects, keeping their
original indexes; errors surface as CaptureError after the good packets; the asyncio machinery
leaves nothing behind (no warnings, no tshark processes, the caller's asyncio untouched).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import io_helpers as h
import ipvsflow.io as io

pytestmark = pytest.mark.skipif(h.TSHARK is None, reason="tshark is not installed (apt-get install tshark)")

DATA = Path(__file__).parent / "data" / "debian"
REPO = Path(__file__).resolve().parent.parent
DEBIAN = ["dpkt/http.pcap", "dpkt/nb6-http.pcap", "dpkt/dns_icmp.pcap", "dpkt/truncated_dns.pcap",
          "gopacket/test_loopback.pcap", "gopacket/test_ethernet.pcap", "gopacket/test_dns.pcap",
          "gopacket/pcapng/le/test006.pcapng", "gopacket/pcapng/be/test010.pcapng",
          "gopacket/pcapng/le/test012.pcapng", "gopacket/pcapng/be/test018.pcapng",
          "gopacket/pcapng/le/test101.pcapng", "gopacket/pcapng/be/test202.pcapng",
          "gopacket/pcapng/le/test008.pcapng", "gopacket/pcapng/le/test902.pcapng"]
FIELDS = [n for n in io.PKT_DTYPE.names if n != "data"]


def _rows(reader):
    chunks, err = [], None
    try:
        for b in reader:
            assert isinstance(b, io.PacketBatch)
            chunks.append(b.to_numpy().copy())
    except io.CaptureError as e:
        err = e
    finally:
        reader.close()
    rows = np.concatenate(chunks) if chunks else np.zeros(0, io.PKT_DTYPE)
    return rows, err


def _assert_same(a, b):
    assert len(a) == len(b), f"{len(a)} rows vs {len(b)}"
    for k in FIELDS:
        if not np.array_equal(a[k], b[k]):
            i = int(np.nonzero((a[k] != b[k]).reshape(len(a), -1).any(axis=1))[0][0])
            pytest.fail(f"field {k} differs first at packet {i}: {a[k][i]} vs {b[k][i]}")


@pytest.fixture(scope="module")
def synth_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("pyshark")
    corpus = h.synth_corpus() + h.ethernet_frames()
    eth = h.frames_for(1, corpus)
    files = {
        "eth-le-us.pcap": h.pcap_build(h.records_for(eth, us=True), 1),
        "eth-be-ns.pcap": h.pcap_build(h.records_for(eth), 1, big_endian=True, nanosecond=True),
        "sll2-ns.pcap": h.pcap_build(h.records_for(h.frames_for(276, corpus)[::7]), 276, nanosecond=True),
        "lt12-ns.pcap": h.pcap_build(h.records_for(h.frames_for(12, corpus)[::9]), 12, nanosecond=True),
    }
    fbl = {lt: h.frames_for(lt, corpus)[250:275] for lt in (1, 0, 101, 12, 14, 228, 229, 108, 113, 276)}
    fbl[229] = h.frames_for(229, corpus)
    files["multi.pcapng"], _ = h.synth_pcapng(fbl)
    return {name: b.write(d / name) for name, b in files.items()}


@pytest.mark.parametrize("name", ["eth-le-us.pcap", "eth-be-ns.pcap", "sll2-ns.pcap", "lt12-ns.pcap", "multi.pcapng"])
def test_same_rows_as_fast_reader_synthesized(synth_files, name):
    path = synth_files[name]
    fast, ferr = _rows(io.open_capture(path, burst=64))
    slow, serr = _rows(io.open_pyshark(path, burst=50))
    assert ferr is None and serr is None
    assert len(fast) > 20
    _assert_same(slow, fast)


@pytest.mark.parametrize("rel", DEBIAN)
def test_same_rows_as_fast_reader_debian(rel):
    fast, ferr = _rows(io.open_capture(DATA / rel))
    slow, serr = _rows(io.open_pyshark(DATA / rel, burst=7))
    assert ferr is None and serr is None
    _assert_same(slow, fast)


def test_batches_respect_burst_and_count(synth_files):
    r = io.open_pyshark(synth_files["eth-le-us.pcap"], burst=100)
    sizes = [len(b) for b in r]
    assert sizes[:-1] == [100] * (len(sizes) - 1) and 0 < sizes[-1] <= 100
    assert r.packets == sum(sizes) == len(h.frames_for(1, h.synth_corpus() + h.ethernet_frames()))
    assert r.linktypes == (1,)


def test_display_filter_selects_tsharks_subset():
    path = DATA / "dpkt/http.pcap"
    fast, _ = _rows(io.open_capture(path))
    flt = "tcp.flags.syn == 1 || dns"
    slow, err = _rows(io.open_pyshark(path, display_filter=flt))
    assert err is None
    want = [int(f["frame.number"][0]) - 1 for f in h.tshark_fields(path, ["frame.number"], display_filter=flt).frames]
    assert 0 < len(want) < len(fast)
    assert slow["index"].tolist() == want
    _assert_same(slow, fast[want])
    # independent of tshark: the same packets by our own fields
    syn = (fast["proto"] == 6) & (fast["tcp_flags"] & io.TCP_SYN != 0)
    dns = (fast["proto"] == 17) & ((fast["sport"] == 53) | (fast["dport"] == 53))
    assert want == np.nonzero(syn | dns)[0].tolist()


def test_display_filter_index_counts_packets_not_custom_blocks():
    """test018 interleaves custom blocks (tshark frames, not packets) with packets: indexes are
    positions among packet records, as the fast reader numbers them."""
    path = DATA / "gopacket/pcapng/le/test018.pcapng"
    fast, _ = _rows(io.open_capture(path))
    slow, _ = _rows(io.open_pyshark(path, display_filter="ip.src == 192.168.0.1"))
    sel = [i for i, r in enumerate(fast) if io.addr_to_str(r["src"].tobytes()) == "192.168.0.1"]
    assert len(sel) == 2 and slow["index"].tolist() == sel
    _assert_same(slow, fast[sel])


@pytest.mark.parametrize("rel,n,text", [("dpkt/truncated_dns_2.pcap", 1, "cut short"),
                                        ("gopacket/pcapng/le/test901.pcapng", 1, "version 2.0")])
def test_unreadable_rest_raises_after_good_packets(rel, n, text):
    got = []
    with pytest.raises(io.CaptureError) as ei:
        for b in io.open_pyshark(DATA / rel):
            got += [b.packet_bytes(i) for i in range(len(b))]
    assert len(got) == n and text in str(ei.value) and "\n" not in str(ei.value)
    assert got == h.read_all(DATA / rel).packets


def test_bad_files(tmp_path):
    with pytest.raises(io.CaptureError, match="no such file"):
        io.open_pyshark(tmp_path / "missing.pcap")
    with pytest.raises(io.CaptureError, match="directory"):
        io.open_pyshark(tmp_path)
    (tmp_path / "empty.pcap").write_bytes(b"")
    with pytest.raises(io.CaptureError, match="empty"):
        io.open_pyshark(tmp_path / "empty.pcap")
    (tmp_path / "text.pcap").write_text("hello, not a capture\n" * 10)
    with pytest.raises(io.CaptureError, match="tshark"):
        _ = [b for b in io.open_pyshark(tmp_path / "text.pcap")]
    with pytest.raises(ValueError):
        io.open_pyshark(DATA / "dpkt/http.pcap", burst=0)


def test_invalid_display_filter_is_a_capture_error():
    with pytest.raises(io.CaptureError) as ei:
        list(io.open_pyshark(DATA / "dpkt/http.pcap", display_filter="tcp.port ==== 80"))
    assert "tshark" in str(ei.value) and "\n" not in str(ei.value)


def _tshark_children():
    """pids of tshark processes that are children of this process."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat_ = (d / "stat").read_text()
                ppid = int(stat_.rsplit(")", 1)[1].split()[1])
                if ppid == me and "tshark" in (d / "comm").read_text():
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_early_close_stops_tshark(synth_files):
    r = io.open_pyshark(synth_files["eth-le-us.pcap"], burst=10)
    it = iter(r)
    first = next(it)
    assert len(first) == 10 and _tshark_children()
    r.close()
    assert _tshark_children() == []
    with io.open_pyshark(synth_files["eth-le-us.pcap"], burst=10) as r2:
        for _ in r2:
            break
    assert _tshark_children() == []


CHILD = """
import asyncio, sys, warnings
sys.path.insert(0, {repo!r})
import ipvsflow.io as io
assert "pyshark" not in sys.modules          # importing ipvsflow.io stays cheap
n = sum(len(b) for b in io.open_pyshark({path!r}))
r = io.open_pyshark({path!r}, burst=5)
next(iter(r)); r.close()                      # early close
with io.open_pyshark({path!r}, display_filter="tcp") as r:
    m = sum(len(b) for b in r)
async def main():
    await asyncio.sleep(0)
    return 7
assert asyncio.run(main()) == 7               # the caller's asyncio still works
async def inside():                           # called from a running loop (as in Jupyter)
    k = sum(len(b) for b in io.open_pyshark({path!r}, burst=4))
    r = io.open_pyshark({path!r}, burst=4)
    next(iter(r)); r.close()
    return k
assert asyncio.run(inside()) == n
import gc; gc.collect()
print(n, m)
"""


def test_no_asyncio_warnings_or_leaks():
    """A fresh interpreter with every warning turned into an error: reading, closing early and
    filtering leave no unclosed loops, transports or unawaited coroutines behind."""
    code = CHILD.format(repo=str(REPO), path=str(DATA / "dpkt/http.pcap"))
    res = subprocess.run([sys.executable, "-W", "error", "-c", code],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["43", str(len(h.tshark_fields(DATA / "dpkt/http.pcap", ["frame.number"],
                                                              display_filter="tcp").frames))]
    assert res.stderr.strip() == "", res.stderr


def test_inside_running_event_loop(synth_files):
    """From a coroutine (Jupyter runs cells in one) this thread cannot run pyshark's loop; the
    reader moves tshark to a worker thread and yields the same batches."""
    import asyncio
    path = synth_files["sll2-ns.pcap"]
    fast, _ = _rows(io.open_capture(path))

    async def main():
        rows, err = _rows(io.open_pyshark(path, burst=3))
        r = io.open_pyshark(path, burst=3)
        first = next(iter(r))
        r.close()
        return rows, err, len(first)

    rows, err, n_first = asyncio.run(main())
    assert err is None and n_first == 3
    _assert_same(rows, fast)
    assert _tshark_children() == []
    with pytest.raises(io.CaptureError, match="cut short"):
        asyncio.run(_drain_truncated())


async def _drain_truncated():
    return [len(b) for b in io.open_pyshark(DATA / "dpkt/truncated_dns_2.pcap")]
