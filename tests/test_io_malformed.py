"""Malformed input: truncated packets, random frames, corrupted capture files, bad files.

The parser must give every packet a valid status (the specific one for what is missing), never
read outside the captured bytes (checked with guard pages: the packet sits flush against a
PROT_NONE page, so an over- or under-read faults), never crash; the readers must count every
record, yield every good packet before a corruption, end with CaptureError or cleanly, and never
hang.
"""
import faulthandler
import json
import os
import struct
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import io_helpers as h
import ipvsflow.io as io

DATA = Path(__file__).parent / "data" / "debian"
HYP = settings(derandomize=True, database=None, deadline=None, max_examples=150,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 2, 105, 127, 0xFFFF]


@contextmanager
def time_bound(seconds=30):
    """A reader that loops forever (holding the GIL in C) cannot be interrupted politely: if
    this block overruns, faulthandler dumps every stack and ends the process, failing the run."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


# --------------------------------------------------------------------------------------------
# packets for the truncation sweep: real ones from the Debian captures and synthesized ones

def _real_packets():
    pick = {
        "dpkt/http.pcap": [0, 1, 2, 3, 12],          # SYN, SYN-ACK, ACK, GET, DNS
        "dpkt/dns_icmp.pcap": [0, 2],                 # DNS query, ICMP echo
        "dpkt/nb6-http.pcap": [6, 9],                  # IPoE TCP (the rest is PPPoE: not IP)
        "gopacket/test_loopback.pcap": [0, 6],        # BSD null + IPv6 + TCP
        "gopacket/test_ethernet.pcap": [0, 9],
    }
    out = []
    for rel, idx in pick.items():
        res = h.read_all(DATA / rel)
        for i in idx:
            out.append((f"{rel}#{i}", res.packets[i], int(res.rows["linktype"][i])))
    return out


SYNTH_NAMES = ["vlan-tcp", "qinq-88a8-udp6", "qinq-9100-tcp", "ip4-options-tcp", "ip6-chain-tcp",
               "sctp-cookie-echo+abort", "sctp6-cookie-echo+abort", "sctp-init", "icmp-unreach-udp",
               "icmp-unreach-inner-options", "icmp-timeexceeded-sctp", "icmp6-toobig-tcp",
               "icmp6-paramproblem-frag-udp", "frag4-first-tcp", "frag4-middle", "frag6-nonfirst",
               "frag6-last", "ip6-ah-udp", "icmp-echo", "udp4", "tcp6"]
OTHER_LT = [(276, "tcp6"), (113, "udp4"), (0, "ip4-options-tcp"), (108, "udp6"), (101, "ip6-chain-tcp"),
            (228, "sctp-cookie-echo+abort"), (229, "icmp6-toobig-tcp"), (12, "icmp-unreach-udp")]


def _synth_packets():
    corpus = h.synth_corpus() + h.ethernet_frames()
    eth = {name: data for name, data, cap, stt in h.frames_for(1, corpus) if cap == len(data)}
    out = [(f"eth:{n}", eth[n], 1) for n in SYNTH_NAMES]
    for lt, name in OTHER_LT:
        fr = {n: d for n, d, cap, stt in h.frames_for(lt, corpus)}
        out.append((f"lt{lt}:{name}", fr[name], lt))
    return out


@pytest.fixture(scope="module")
def sweep_packets(tmp_path_factory):
    pk = _real_packets() + _synth_packets()
    lts = sorted({lt for _, _, lt in pk})
    ifaces = [h.Iface(lt) for lt in lts]
    blocks = [("epb", lts.index(lt), h.BASE_NS - h.BASE_NS % 1000, d) for _, d, lt in pk]
    path = tmp_path_factory.mktemp("sweep") / "sweep.pcapng"
    h.pcapng_build([dict(ifaces=ifaces, blocks=blocks)]).write(path)
    layouts = h.pdml_layouts(path, [lt for _, _, lt in pk])
    assert len(layouts) == len(pk)
    return pk, layouts


def test_sweep_packets_cover_every_kind(sweep_packets):
    pk, layouts = sweep_packets
    kinds = {(l.version, l.l4, l.icmp_error, bool(l.ext), l.nonfirst) for l in layouts}
    assert {l.linktype for l in layouts} >= {0, 1, 12, 101, 108, 113, 228, 229, 276}
    for want in [(4, "tcp"), (6, "tcp"), (4, "udp"), (6, "udp"), (4, "sctp"), (6, "sctp"), (4, "icmp"),
                 (6, "icmpv6")]:
        assert any(k[:2] == want for k in kinds), want
    assert any(l.icmp_error and l.inner_version == 4 for l in layouts)
    assert any(l.icmp_error and l.inner_version == 6 and l.inner_ext for l in layouts)
    assert any(l.nonfirst and l.version == 4 for l in layouts) and any(l.nonfirst and l.version == 6 for l in layouts)
    assert any(l.sctp_next_chunk for l in layouts)


def test_every_truncation_point(sweep_packets, tmp_path):
    """Every prefix 0..len of every sweep packet (caplen = prefix, wirelen = full length),
    parsed in a child process with the data against guard pages on both sides."""
    pk, layouts = sweep_packets
    spec = [{"name": n, "hex": d.hex(), "linktype": lt} for n, d, lt in pk]
    sp, op = tmp_path / "spec.json", tmp_path / "out.json"
    sp.write_text(json.dumps(spec))
    rc, last = h.run_child("_child_sweep", str(sp), str(op))
    assert rc == 0, f"parser crashed (rc {rc}); last progress:\n{last}"
    results = json.loads(op.read_text())
    problems = []
    for (name, data, lt), lay, per in zip(pk, layouts, results):
        full = per[-1]
        assert full["status"] in (h.OK, h.FRAGMENT), (name, h.STATUS_NAMES[full["status"]])
        for n, row in enumerate(per):
            exp = h.expected_prefix_status(lay, n)
            st_ = row["status"]
            where = f"{name} caplen {n}/{len(data)}"
            if st_ != exp:
                problems.append(f"{where}: status {h.STATUS_NAMES[st_]}, expected {h.STATUS_NAMES[exp]}")
                continue
            rec = np.zeros(1, dtype=io.PKT_DTYPE)[0]
            for k, v in row.items():
                rec[k] = np.frombuffer(bytes.fromhex(v), np.uint8) if isinstance(v, str) else v
            rec["data"] = 0
            problems += [f"{where}: {p}" for p in h.invariant_problems(rec)]
            # what was parsed before the cut agrees with the complete packet
            if st_ not in (h.TRUNC_L2, h.TRUNC_L3):
                keys = ["af", "src", "dst", "ttl", "l3_off", "l3_len", "vlan_count", "vlan_outer", "vlan_inner", "l2_len"]
                if st_ != h.TRUNC_EXTHDR:       # (an IPv6 fragment header may be past the cut)
                    keys += ["frag", "frag_id", "frag_off"]
                for k in keys:
                    if row[k] != full[k]:
                        problems.append(f"{where}: {k} {row[k]} != {full[k]} of the whole packet")
            if st_ in (h.OK, h.TRUNC_ICMP_INNER):
                for k in ("proto", "sport", "dport", "tcp_flags", "sctp_chunk", "icmp_type", "icmp_code", "l4_off"):
                    if row[k] != full[k]:
                        problems.append(f"{where}: {k} {row[k]} != {full[k]} of the whole packet")
            if st_ == h.OK:
                for k in ("ic_proto", "ic_src", "ic_dst", "ic_sport", "ic_dport", "ic_l3_off"):
                    if row[k] != full[k]:
                        problems.append(f"{where}: {k} {row[k]} != {full[k]} of the whole packet")
                if lay.sctp_next_chunk is not None:
                    end2 = lay.l4_pos + lay.sctp_next_chunk
                    if n >= end2 + 4 and row["sctp_flags"] != full["sctp_flags"]:
                        problems.append(f"{where}: sctp_flags lost with the second chunk captured")
                    if n <= end2 and row["sctp_flags"]:
                        problems.append(f"{where}: sctp_flags set but the second chunk is not captured")
            if len(problems) > 40:
                break
    assert not problems, "\n".join(problems[:40])


def test_mutation_fuzz_against_guard_pages(sweep_packets, tmp_path):
    """Mutated real packets and random frames on random (also unknown) link types: no fault,
    a valid status and consistent offsets for every one of them."""
    pk, _ = sweep_packets
    spec = [{"name": n, "hex": d.hex(), "linktype": lt} for n, d, lt in pk]
    sp, op = tmp_path / "spec.json", tmp_path / "out.json"
    sp.write_text(json.dumps(spec))
    rc, last = h.run_child("_child_fuzz", 20240611, 25000, str(sp), str(op))
    assert rc == 0, f"parser crashed (rc {rc}); last case:\n{last}"
    problems = json.loads(op.read_text())
    assert not problems, json.dumps(problems[:10], indent=1)


# --------------------------------------------------------------------------------------------
# random frames through the Python-facing API

@HYP
@given(st.lists(st.tuples(st.binary(max_size=160), st.sampled_from(LINKTYPES), st.integers(0, 3000)),
                max_size=40),
       st.integers(0, 2**40))
def test_random_frames_any_linktype(frames, first_index):
    b = io.PacketBatch.from_packets([(i * 1000, d, len(d) + extra, 0, lt) for i, (d, lt, extra) in enumerate(frames)],
                                    first_index=first_index)
    assert len(b) == len(frames)
    rows = b.to_numpy()
    assert rows["index"].tolist() == [first_index + i for i in range(len(frames))]
    assert rows["linktype"].tolist() == [lt for _, lt, _ in frames]
    assert rows["caplen"].tolist() == [len(d) for d, _, _ in frames]
    for i, r in enumerate(rows):
        assert h.invariant_problems(r) == [], (frames[i], h.invariant_problems(r))
        assert io.ParseStatus(int(r["status"])).name == h.STATUS_NAMES[int(r["status"])]
        if frames[i][1] not in (0, 1, 12, 14, 101, 108, 113, 228, 229, 276):
            assert r["status"] == h.UNKNOWN_LINKTYPE
        assert b.packet_bytes(i) == frames[i][0]


def test_parse_status_enum_matches_contract():
    assert [(s.name, int(s)) for s in io.ParseStatus] == [(n, i) for i, n in enumerate(h.STATUS_NAMES)]


# --------------------------------------------------------------------------------------------
# corrupted and truncated capture files

def _base_frames():
    corpus = h.synth_corpus() + h.ethernet_frames()
    keep = ["tcp6", "vlan-tcp", "sctp-cookie-echo+abort", "icmp-unreach-udp", "frag6-nonfirst",
            "arp", "trunc-tcp-header", "tcp-flags-0x12"]
    return {lt: [f for f in h.frames_for(lt, corpus) if f[0] in keep] for lt in (1, 101, 0)}


@pytest.fixture(scope="module")
def small_pcap():
    fr = _base_frames()[1]
    return h.pcap_build(h.records_for(fr, us=True), 1)


@pytest.fixture(scope="module")
def small_pcapng():
    fb = _base_frames()
    secs = [dict(ifaces=[h.Iface(1), h.Iface(101, tsresol=9)],
                 blocks=[("epb", 0, h.BASE_NS - h.BASE_NS % 1000, d[:c], len(d)) for _, d, c, _ in fb[1][:3]]
                 + [("isb", 0), ("nrb",)]
                 + [("epb", 1, h.BASE_NS + 7, d[:c], len(d)) for _, d, c, _ in fb[101][3:5]]),
            dict(big_endian=True, ifaces=[h.Iface(0, tsresol=3)],
                 blocks=[("spb", d[:c], len(d)) for _, d, c, _ in fb[0][:1]] + [("custom",)]
                 + [("pb", 0, 1_700_000_000_000_000_000, d[:c], len(d)) for _, d, c, _ in fb[0][5:7]])]
    return h.pcapng_build(secs)


def _read_bytes(tmp_path, data, name="x.cap", burst=4):
    p = tmp_path / name
    p.write_bytes(data)
    with time_bound():
        try:
            res = h.read_all(p, burst=burst)
        except io.CaptureError as e:          # raised by open_capture itself
            return None, e
    return res, res.error


def _assert_good_prefix(built, res, limit, check_meta=True):
    """Every packet whose record ends at or before ``limit`` was yielded, first and unchanged."""
    good = [i for i, (s, e) in enumerate(built.spans) if e <= limit]
    assert res is not None, "the reader refused the file although it has intact packets"
    assert len(res.packets) >= len(good), f"only {len(res.packets)} packets yielded, {len(good)} intact"
    for i in good:
        want = built.packets[i]
        assert res.packets[i] == want["data"], f"packet {i} differs"
        if check_meta:
            assert int(res.rows["wirelen"][i]) == want["wirelen"]
            if want["ts_ns"] is not None:
                assert int(res.rows["ts_ns"][i]) == want["ts_ns"]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_cut_at_every_offset(fmt, small_pcap, small_pcapng, tmp_path):
    """A file cut at any byte: clean end exactly at a block boundary, otherwise CaptureError
    (naming the offset) after every complete packet before the cut."""
    built = small_pcap if fmt == "pcap" else small_pcapng
    bounds = set(built.boundaries)
    for cut in range(0, len(built.data) + 1):
        res, err = _read_bytes(tmp_path, built.data[:cut])
        whole = [i for i, (s, e) in enumerate(built.spans) if e <= cut]
        if cut in bounds:
            assert err is None, f"cut at {cut} (a block boundary): {err}"
            assert len(res.packets) == len(whole) == res.reader_packets
        else:
            assert isinstance(err, io.CaptureError), f"cut at {cut}: no error"
            assert "\n" not in str(err)
            if res is not None:
                assert len(res.packets) == len(whole) == res.reader_packets, f"cut at {cut}"
                assert "offset" in str(err), str(err)
            else:
                assert cut < built.header_end + 1, f"cut at {cut}: refused at open: {err}"
        if res is not None:
            _assert_good_prefix(built, res, cut)


def _length_fields(built, fmt):
    """Byte offsets of every record/block length field (and the pcapng trailing copies)."""
    if fmt == "pcap":
        return [s + 8 for s, _ in built.spans] + [s + 12 for s, _ in built.spans] + [16]
    offs = []
    starts = [0] + built.boundaries[:-1]
    for s, e in zip(starts, built.boundaries):
        offs += [s + 4, e - 4]
    return offs


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@HYP
@given(data=st.data())
def test_random_corruption(fmt, small_pcap, small_pcapng, tmp_path, data):
    built = small_pcap if fmt == "pcap" else small_pcapng
    buf = bytearray(built.data)
    mode = data.draw(st.sampled_from(["length", "length", "bytes", "header"]), label="mode")
    if mode == "length":
        off = data.draw(st.sampled_from(_length_fields(built, fmt)), label="offset")
        val = data.draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1),
                                  st.sampled_from([2**31, 2**32 - 1, 2**32 - 4, 262145, 65536])), label="value")
        struct.pack_into("<I", buf, off, val)
        if data.draw(st.booleans(), label="swap"):
            struct.pack_into(">I", buf, off, val)
        first = off
    elif mode == "bytes":
        offs = data.draw(st.lists(st.integers(built.header_end, len(buf) - 1), min_size=1, max_size=4), label="offsets")
        for o in offs:
            buf[o] = data.draw(st.integers(0, 255))
        first = min(offs)
    else:
        o = data.draw(st.integers(0, built.header_end - 1), label="offset")
        buf[o] = data.draw(st.integers(0, 255))
        first = o
    res, err = _read_bytes(tmp_path, bytes(buf), name=f"c.{fmt}")
    assert err is None or isinstance(err, io.CaptureError), repr(err)
    if err is not None:
        assert "\n" not in str(err) and str(err)
    if res is not None:
        assert res.reader_packets == len(res.packets) == len(res.rows)
        if first >= built.header_end:
            _assert_good_prefix(built, res, first)
    elif first >= built.header_end:
        pytest.fail(f"refused at open after a corruption at {first} past the headers: {err}")


def test_huge_record_length_is_not_allocated(tmp_path, small_pcap):
    """A record claiming 4 GiB ends the file with an error immediately (no attempt to read or
    allocate it), after the good packets."""
    buf = bytearray(small_pcap.data)
    s, _ = small_pcap.spans[3]
    struct.pack_into("<II", buf, s + 8, 0xFFFFFFF0, 0xFFFFFFF0)
    res, err = _read_bytes(tmp_path, bytes(buf))
    assert isinstance(err, io.CaptureError) and str(s) in str(err), str(err)
    assert len(res.packets) == 3


def test_pcapng_block_length_not_multiple_of_4(tmp_path, small_pcapng):
    buf = bytearray(small_pcapng.data)
    s, e = small_pcapng.spans[2]
    struct.pack_into("<I", buf, s + 4, (e - s) + 1)
    res, err = _read_bytes(tmp_path, bytes(buf))
    assert isinstance(err, io.CaptureError)
    _assert_good_prefix(small_pcapng, res, s)


# --------------------------------------------------------------------------------------------
# bad files

def _open_err(path):
    with time_bound():
        with pytest.raises(io.CaptureError) as ei:
            with io.open_capture(path) as r:
                for _ in r:
                    pass
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    assert isinstance(ei.value, ValueError)
    return msg.lower()


def test_missing_file(tmp_path):
    assert "no such file" in _open_err(tmp_path / "nope.pcap")


def test_directory(tmp_path):
    assert "directory" in _open_err(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    assert "empty" in _open_err(p)


def test_text_file(tmp_path):
    p = tmp_path / "notes.pcap"
    p.write_text("this is not a capture\n")
    msg = _open_err(p)
    assert "not a pcap or pcapng file" in msg and "74 68 69 73" in msg     # first bytes in hex


@pytest.mark.parametrize("head", [struct.pack("<IHH", 0xA1B2C3D4, 2, 4), struct.pack("<I", 0xA1B23C4D)[:3],
                                  struct.pack("<II", 0x0A0D0D0A, 28) + struct.pack("<I", 0x1A2B3C4D)])
def test_truncated_global_header(tmp_path, head):
    p = tmp_path / "short.cap"
    p.write_bytes(head)
    msg = _open_err(p)
    assert "truncated" in msg or "cut short" in msg


def test_gzip_file_gets_a_hint(tmp_path, small_pcap):
    import gzip
    p = tmp_path / "x.pcap.gz"
    p.write_bytes(gzip.compress(small_pcap.data))
    assert "gzip" in _open_err(p)


def test_fifo_is_read(tmp_path, small_pcap):
    """A named pipe (e.g. a decompressor writing into it) is read to the end like a file."""
    p = tmp_path / "pipe.pcap"
    os.mkfifo(p)
    writer = threading.Thread(target=lambda: p.write_bytes(small_pcap.data))
    writer.start()
    try:
        with time_bound():
            res = h.read_all(p)
    finally:
        writer.join(10)
    assert res.error is None and res.packets == [x["data"] for x in small_pcap.packets]


NOBODY = 65534


def _as_nobody(code):
    """Run ``code`` with open_capture imported as root, after dropping to uid/gid nobody."""
    prog = ("import os, sys; sys.path.insert(0, os.getcwd()); import ipvsflow.io as io; "
            f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY}); " + code)
    repo = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60, cwd=repo)


@pytest.fixture
def world_dir():
    """A directory everyone may search (pytest's own temp root is private to root)."""
    import shutil
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="ipvsflow-perm-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.mark.skipif(os.geteuid() != 0, reason="as non-root the plain chmod test below covers it")
def test_permission_denied_as_root(world_dir, small_pcap):
    """Root reads a mode-000 file anyway (os.access agrees: permission checks do not apply to
    root), so the permission-denied paths are exercised by a child that drops to nobody: a
    file it may see but not open, and a file inside a directory it may not search."""
    p = world_dir / "secret.pcap"
    p.write_bytes(small_pcap.data)
    p.chmod(0)
    assert os.access(p, os.R_OK)                       # root bypasses the mode bits
    with io.open_capture(p) as r:
        assert sum(len(b) for b in r) == len(small_pcap.packets)
    d = world_dir / "private"
    d.mkdir(mode=0o700)
    q = d / "x.pcap"
    q.write_bytes(small_pcap.data)
    res = _as_nobody(f"""
for path in ({str(p)!r}, {str(q)!r}):
    print("ACCESS", os.access(path, os.R_OK))
    try:
        io.open_capture(path)
    except io.CaptureError as e:
        print("ERR", e)
    else:
        print("OPENED", path)
""")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["ACCESS False", f"ERR {p}: permission denied",
                                       "ACCESS False", f"ERR {q}: permission denied"], res.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores mode bits; test_permission_denied_as_root covers it")
def test_permission_denied(tmp_path, small_pcap):
    p = tmp_path / "secret.pcap"
    p.write_bytes(small_pcap.data)
    p.chmod(0)
    assert "permission denied" in _open_err(p)
