"""The burst pipeline of Engine.process.

Engine.process hashes each packet's key and prefetches index slots and entries several packets
ahead of the one it processes (a ring of hashed keys). Whatever that schedule does, the
decisions must be those of the packets taken one at a time: here the same traffic goes through
two engines with identical tables, one burst at a time in one, one packet per process() call in
the other (no lookahead at all), and every decision field, every listed connection and every
counter must agree. The bursts mix what the lookahead can get wrong: packets of connections
created earlier in the same burst, NAT replies (out index) next to client packets (in index),
unparsed packets (no key), closings and resets; and the in-index starts to double (an
incremental migration, during which lookups and prefetches read two arrays) in the middle of
the bursts.
"""
import numpy as np

from ipvsflow.config import Config, RealServer, VirtualService, FWD_DROUTE, FWD_MASQ
from ipvsflow.engine import Engine
from ipvsflow.io import PacketBatch

T0 = 1_700_000_000 * 10**9
BURST = 256
# The in-index (1024 slots, doubling) grows past 32768 slots at its 22938th entry: the first
# bursts' new connections start that migration, which is still sweeping when the test ends.
N_DR = 20_000
N_NAT = 2_900
FRAME = bytes.fromhex("020000000002020000000001" "0800"
                      "450000280001000040060000" "0a000001" "c000020a"
                      "04000050" "00000001" "00000000" "5010ffff" "00000000")
VIP_DR = (192, 0, 2, 10)
VIP_NAT = (192, 0, 2, 20)
SYN, ACK, FIN_ACK, RST = 0x02, 0x10, 0x11, 0x04


def _config():
    return Config(services=[
        VirtualService(proto=6, addr="192.0.2.10", port=80, scheduler="rr",
                       dests=[RealServer(f"10.98.0.{i}", 80, fwd=FWD_DROUTE) for i in range(1, 4)]),
        VirtualService(proto=6, addr="192.0.2.20", port=80, scheduler="rr",
                       dests=[RealServer(f"10.99.0.{i}", 8080, fwd=FWD_MASQ) for i in range(1, 4)]),
    ])


def _client(conn):
    """Connection conn's client: 10.<conn // 16 as 3 bytes>, port 1024 + conn % 16."""
    a = (10 << 24) + conn // 16
    return np.stack([(a >> s) & 255 for s in (24, 16, 8, 0)], axis=1), 1024 + conn % 16


def _fill(view, conn, flags, ts, nat, reply=None, rs_addr=None, broken=None):
    """Rows of a burst: client packets of connections `conn` (to the NAT VIP where `nat`),
    turned into the real server's reply where `reply` (server rs_addr:8080), and into an
    unparsed (NOT_IP) packet where `broken`."""
    n = len(conn)
    reply = np.zeros(n, bool) if reply is None else reply
    cl, cport = _client(conn)
    vip = np.where(nat[:, None], VIP_NAT, VIP_DR)
    src, dst = view["src"], view["dst"]
    src[:, 10:12] = 0xFF
    dst[:, 10:12] = 0xFF
    if rs_addr is not None:
        rs = np.stack([(rs_addr >> s) & 255 for s in (24, 16, 8, 0)], axis=1)
        src[:, 12:16] = np.where(reply[:, None], rs, cl)
    else:
        src[:, 12:16] = cl
    dst[:, 12:16] = np.where(reply[:, None], cl, vip)
    view["sport"] = np.where(reply, 8080, cport)
    view["dport"] = np.where(reply, cport, 80)
    view["tcp_flags"] = flags
    view["ts_ns"] = ts
    view["status"] = np.where(broken, 2, 0) if broken is not None else 0


def _populate(engines, batch, view, first, count, nat, step_ns):
    rs = np.empty(count, np.int32)
    for i in range(0, count, BURST):
        m = min(BURST, count - i)
        conn = np.arange(first + i, first + i + BURST)
        _fill(view, conn, SYN, T0 + conn * step_ns, np.full(BURST, nat))
        for eng in engines:
            dec = eng.process(batch, 0, m)
        rs[i:i + m] = dec["rs"][:m]
    return rs


def _burst(rng, n_dr, n_nat, fresh, rs_addr):
    """A mixed burst: conn, flags, nat, reply, broken, reply source per row; the rows of 12 new
    connections' SYNs and of their next packets in the same burst."""
    conn = rng.integers(0, n_dr, BURST)
    nat = rng.random(BURST) < 0.3
    conn[nat] = n_dr + rng.integers(0, n_nat, int(nat.sum()))
    flags = rng.choice([ACK, ACK, ACK, FIN_ACK, RST, SYN], BURST)
    reply = nat & (rng.random(BURST) < 0.5)
    # new connections, and packets of them later in the same burst
    new_rows = rng.choice(BURST // 2, 12, replace=False)
    conn[new_rows] = fresh + np.arange(12)
    flags[new_rows] = SYN
    nat[new_rows] = False
    reply[new_rows] = False
    later = new_rows + BURST // 2
    conn[later] = conn[new_rows]
    flags[later] = ACK
    nat[later] = False
    reply[later] = False
    broken = rng.random(BURST) < 0.03
    broken[new_rows] = broken[later] = False
    addr = np.zeros(BURST, np.int64)
    addr[reply] = rs_addr[conn[reply] - n_dr]
    return conn, flags, nat, reply, broken, addr, new_rows, later


def test_prefetching_bursts_decide_as_single_packets():
    engines = [Engine(_config(), max_conns=200_000), Engine(_config(), max_conns=200_000)]
    batch = PacketBatch.from_packets([(T0, FRAME)] * BURST)
    view = batch.to_numpy()
    _populate(engines, batch, view, 0, N_DR, False, 50)
    rs = _populate(engines, batch, view, N_DR, N_NAT, True, 50)
    dests = engines[0].dests()
    dest_addr = np.array([int.from_bytes(bytes(map(int, d["addr"].split("."))), "big") for d in dests])
    rs_addr = dest_addr[rs]
    assert engines[0].conn_count == N_DR + N_NAT

    rng = np.random.default_rng(7)
    fresh = N_DR + N_NAT
    ts = T0 + 10 * 10**9
    actions = set()
    for _ in range(12):
        conn, flags, nat, reply, broken, addr, new_rows, later = _burst(rng, N_DR, N_NAT, fresh, rs_addr)
        fresh += 12
        _fill(view, conn, flags, ts + np.arange(BURST) * 1000, nat, reply, addr, broken)
        ts += BURST * 1000
        whole = engines[0].process(batch).copy()
        single = np.concatenate([engines[1].process(batch, i, i + 1).copy() for i in range(BURST)])
        for name in whole.dtype.names:
            np.testing.assert_array_equal(whole[name], single[name], err_msg=name)
        actions |= set(np.unique(whole["action"]).tolist())
        # the burst's new connections, found by their next packets; replies found as such
        assert (whole["action"][new_rows] == 1).all()
        assert (whole["action"][later] == 2).all()
        np.testing.assert_array_equal(whole["conn"][later], whole["conn"][new_rows])
        assert (whole["dir"][reply] == 2).mean() > 0.8
    # the bursts really had new connections, hits and unparsed packets
    assert {1, 2, 6} <= actions, actions
    assert engines[0].stats() == engines[1].stats()
    assert engines[0].counters == engines[1].counters
    keyed = [sorted((r["serial"], r["state"], r["destination"], r["expire"]) for r in e.connections())
             for e in engines]
    assert keyed[0] == keyed[1]
    for e in engines:
        e.check_invariants()


def test_packets_right_after_a_reused_entry_find_its_replacement():
    """The in-lookup starts from the entry the pipeline peeked several packets earlier. Here a
    SYN reuses each connection's closed entry (the old entry expires, a new one takes its key)
    and the connection's next two packets follow at once, so their peeks saw the old entry:
    they must hit the new one, as the same packets taken one at a time do."""
    engines = [Engine(_config(), max_conns=10_000), Engine(_config(), max_conns=10_000)]
    batch = PacketBatch.from_packets([(T0, FRAME)] * BURST)
    view = batch.to_numpy()
    n = 80
    conn = np.arange(BURST) % n
    dr = np.zeros(BURST, bool)
    ts = T0
    for flags in (SYN, ACK, RST):            # established, then closed by a reset
        _fill(view, conn, flags, ts + np.arange(BURST) * 1000, dr)
        ts += 10**9
        for eng in engines:
            eng.process(batch, 0, n)
    # SYN, ACK, ACK of each connection in a row
    rows = np.arange(3 * n)
    conn = np.concatenate([rows // 3, np.zeros(BURST - 3 * n, np.int64) + n])
    flags = np.where(rows % 3 == 0, SYN, ACK)
    flags = np.concatenate([flags, np.full(BURST - 3 * n, SYN)])
    _fill(view, conn, flags, ts + np.arange(BURST) * 1000, np.zeros(BURST, bool))
    whole = engines[0].process(batch, 0, 3 * n).copy()
    single = np.concatenate([engines[1].process(batch, i, i + 1).copy() for i in range(3 * n)])
    for name in whole.dtype.names:
        np.testing.assert_array_equal(whole[name], single[name], err_msg=name)
    syn, ack1, ack2 = whole[0::3], whole[1::3], whole[2::3]
    assert (syn["reuse_of"] != 0).all() and (syn["conn"] != syn["reuse_of"]).all()
    assert (ack1["action"] == 2).all() and (ack2["action"] == 2).all()
    np.testing.assert_array_equal(ack1["conn"], syn["conn"])
    np.testing.assert_array_equal(ack2["conn"], syn["conn"])
    for e in engines:
        e.check_invariants()


def test_bursts_of_any_length_decide_as_single_packets():
    """The pipeline's stages run in turns of a few packets: bursts of every length around
    those turns (shorter than one, one and a half, several and a remainder) decide as the same
    packets one at a time, also when a burst starts with a timestamp that runs backwards,
    when entries expire in the middle of a burst (0.1 s between packets, reset connections
    closing after 10 s), and when a flush of a deleted server's entries is due at a burst's
    first packet."""
    from ipvsflow.config import parse_command
    engines = [Engine(_config(), max_conns=20_000), Engine(_config(), max_conns=20_000)]
    for eng in engines:
        eng.set_sysctl("expire_nodest_conn", 1)
    batch = PacketBatch.from_packets([(T0, FRAME)] * BURST)
    view = batch.to_numpy()
    n_dr, n_nat = 600, 300
    _populate(engines, batch, view, 0, n_dr, False, 50)
    rs = _populate(engines, batch, view, n_dr, n_nat, True, 50)
    dest_addr = np.array([int.from_bytes(bytes(map(int, d["addr"].split("."))), "big")
                          for d in engines[0].dests()])
    rs_addr = dest_addr[rs]
    rng = np.random.default_rng(11)
    lengths = [1, 7, 8, 9, 15, 17, 23, 24, 25, 31, 33, 40, 3, 16]
    fresh = n_dr + n_nat
    ts = T0 + 10**9
    for rnd in range(6):
        conn, flags, nat, reply, broken, addr, new_rows, later = _burst(rng, n_dr, n_nat, fresh, rs_addr)
        fresh += 12
        t = ts + np.arange(BURST) * 10**8
        _fill(view, conn, flags, t, nat, reply, addr, broken)
        ts = int(t[-1]) + 10**8
        if rnd == 3:
            cmd = parse_command("-d -t 192.0.2.10:80 -r 10.98.0.2:80")
            for eng in engines:
                eng.apply(cmd)
        start = 0
        parts = []
        while start < BURST:
            stop = min(BURST, start + lengths[(rnd + len(parts)) % len(lengths)])
            if rnd % 2 and len(parts) % 3 == 1:
                view["ts_ns"][start] = view["ts_ns"][start] - 5 * 10**8     # runs backwards
            parts.append((start, stop))
            start = stop
        whole = np.concatenate([engines[0].process(batch, a, b).copy() for a, b in parts])
        single = np.concatenate([engines[1].process(batch, i, i + 1).copy() for i in range(BURST)])
        for name in whole.dtype.names:
            np.testing.assert_array_equal(whole[name], single[name], err_msg=name)
    assert engines[0].counters == engines[1].counters
    assert engines[0].counters["ts_backwards"] > 0 and engines[0].counters["expired"] > 0
    assert engines[0].stats() == engines[1].stats()
    keyed = [sorted((r["serial"], r["state"], r["destination"], r["expire"]) for r in e.connections())
             for e in engines]
    assert keyed[0] == keyed[1]
    for e in engines:
        e.check_invariants()
