"""The old_ct model for SCTP: netfilter's SCTP conntrack (nf_conntrack_proto_sctp.c) as the engine
keeps it per connection entry, and what it makes IPVS do with an INIT that reuses a tuple.

Expectations come from the kernel source: the state table below is sctp_conntracks[] as the file
has it (rows = chunk, columns = current state), the timeouts are sctp_timeouts[], and the rules
quoted in the docstrings are nf_conntrack_sctp_packet / sctp_new / do_basic_checks. Nothing here
is read back from the engine's arrays.
"""
from __future__ import annotations

import struct
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine_helpers import batch, engine, service, RS1, RS2
from ipvsflow.config import FWD_DROUTE, FWD_MASQ
from ipvsflow.engine import proto_sctp

from test_engine_sctp_states import (
    Assoc, chunk, counters, default_chunk, init_value, ipv6_frame, send, sctp_frame, sctp_l4,
    sctp_service, TAG_C, TAG_S, VPORT,
)

NF_R_CONFIRMED, NF_R_NEW = 1, 2
S = 1_000_000_000

# sctp_conntracks[2][11][SCTP_CONNTRACK_MAX] (current kernels; 6.1 stable has the same)
NF_TABLE = """
ORIGINAL       sNO  sCL  sCW  sCE  sES  sSS  sSR  sSA  sHS
init           sCL  sCL  sCW  sCE  sES  sCL  sCL  sSA  sCW
init_ack       sCL  sCL  sCW  sCE  sES  sSS  sSR  sSA  sCL
abort          sCL  sCL  sCL  sCL  sCL  sCL  sCL  sCL  sCL
shutdown       sCL  sCL  sCW  sCE  sSS  sSS  sSR  sSA  sCL
shutdown_ack   sSA  sCL  sCW  sCE  sES  sSA  sSA  sSA  sSA
error          sCL  sCL  sCW  sCE  sES  sSS  sSR  sSA  sCL
cookie_echo    sCL  sCL  sCE  sCE  sES  sSS  sSR  sSA  sCL
cookie_ack     sCL  sCL  sCW  sES  sES  sSS  sSR  sSA  sCL
shutdown_comp  sCL  sCL  sCW  sCE  sES  sSS  sSR  sCL  sCL
heartbeat      sHS  sCL  sCW  sCE  sES  sSS  sSR  sSA  sHS
heartbeat_ack  sCL  sCL  sCW  sCE  sES  sSS  sSR  sSA  sHS
REPLY          sNO  sCL  sCW  sCE  sES  sSS  sSR  sSA  sHS
init           sIV  sCL  sCW  sCE  sES  sSS  sSR  sSA  sIV
init_ack       sIV  sCW  sCW  sCE  sES  sSS  sSR  sSA  sIV
abort          sIV  sCL  sCL  sCL  sCL  sCL  sCL  sCL  sIV
shutdown       sIV  sCL  sCW  sCE  sSR  sSS  sSR  sSA  sIV
shutdown_ack   sIV  sCL  sCW  sCE  sES  sSA  sSA  sSA  sIV
error          sIV  sCL  sCW  sCL  sES  sSS  sSR  sSA  sIV
cookie_echo    sIV  sCL  sCE  sCE  sES  sSS  sSR  sSA  sIV
cookie_ack     sIV  sCL  sCW  sES  sES  sSS  sSR  sSA  sIV
shutdown_comp  sIV  sCL  sCW  sCE  sES  sSS  sSR  sCL  sIV
heartbeat      sIV  sCL  sCW  sCE  sES  sSS  sSR  sSA  sHS
heartbeat_ack  sIV  sCL  sCW  sCE  sES  sSS  sSR  sSA  sES
"""
# sctp_timeouts[] (s)
NF_TIMEOUTS = {"sCL": 10, "sCW": 3, "sCE": 3, "sES": 210, "sSS": 3, "sSR": 3, "sSA": 3, "sHS": 30}
NF_NAMES = {"sCL": "CLOSED", "sCW": "COOKIE_WAIT", "sCE": "COOKIE_ECHOED", "sES": "ESTABLISHED",
            "sSS": "SHUTDOWN_SENT", "sSR": "SHUTDOWN_RECD", "sSA": "SHUTDOWN_ACK_SENT",
            "sHS": "HEARTBEAT_SENT"}
ROW_CHUNK = {"init": "INIT", "init_ack": "INIT_ACK", "abort": "ABORT", "shutdown": "SHUTDOWN",
             "shutdown_ack": "SHUTDOWN_ACK", "error": "ERROR", "cookie_echo": "COOKIE_ECHO",
             "cookie_ack": "COOKIE_ACK", "shutdown_comp": "SHUTDOWN_COMPLETE",
             "heartbeat": "HEARTBEAT", "heartbeat_ack": "HEARTBEAT_ACK"}


def parse_nf_table():
    out, cols, d = {}, None, None
    for line in NF_TABLE.strip().splitlines():
        words = line.split()
        if words[0] in ("ORIGINAL", "REPLY"):
            d, cols = (0 if words[0] == "ORIGINAL" else 1), words[1:]
            continue
        out[(d, ROW_CHUNK[words[0]])] = dict(zip(cols, words[1:]))
    return out


NF = parse_nf_table()


def pkt(direction, names, vtag=None, chunks=None):
    """An SCTP packet of the client (direction 0) or the server (1) with the tags of an
    association whose client tag is TAG_C and server tag TAG_S; INITs carry tag 0."""
    own, peer = (TAG_C, TAG_S) if direction == 0 else (TAG_S, TAG_C)
    ch = chunks if chunks is not None else [default_chunk(n, own) for n in names]
    if vtag is None:
        vtag = 0 if names and names[0] == "INIT" else peer
    return sctp_l4(40000, VPORT, vtag, ch) if direction == 0 else sctp_l4(VPORT, 40000, vtag, ch)


def replay(seq):
    """[(t seconds, direction, names or bytes)] -> [(result, state)]"""
    items = [(int(t * S), d, x if isinstance(x, bytes) else pkt(d, x)) for t, d, x in seq]
    return [(r, st) for r, st, _, _ in proto_sctp.nf_replay(items)]


# ---- the tracker itself -----------------------------------------------------------------------

def test_nat_association():
    """Both directions: INIT opens the conntrack in CLOSED; INIT_ACK -> COOKIE_WAIT, COOKIE_ECHO ->
    COOKIE_ECHOED, COOKIE_ACK -> ESTABLISHED, a client SHUTDOWN -> SHUTDOWN_SENT, SHUTDOWN_ACK ->
    SHUTDOWN_ACK_SENT, SHUTDOWN_COMPLETE -> CLOSED. Only the first packet is unconfirmed."""
    got = replay([(0.00, 0, ["INIT"]), (0.01, 1, ["INIT_ACK"]), (0.02, 0, ["COOKIE_ECHO"]),
                  (0.03, 1, ["COOKIE_ACK"]), (0.04, 0, ["DATA"]), (0.05, 1, ["SACK"]),
                  (0.06, 0, ["SHUTDOWN"]), (0.07, 1, ["SHUTDOWN_ACK"]),
                  (0.08, 0, ["SHUTDOWN_COMPLETE"])])
    assert got == [(NF_R_NEW, "CLOSED"), (1, "COOKIE_WAIT"), (1, "COOKIE_ECHOED"), (1, "ESTABLISHED"),
                   (1, "ESTABLISHED"), (1, "ESTABLISHED"), (1, "SHUTDOWN_SENT"),
                   (1, "SHUTDOWN_ACK_SENT"), (1, "CLOSED")]
    tags = proto_sctp.nf_replay([(0, 0, pkt(0, ["INIT"])), (1, 1, pkt(1, ["INIT_ACK"]))])
    assert tags[0][2:] == (0, TAG_C) and tags[1][2:] == (TAG_S, TAG_C)


def test_init_on_closed_is_confirmed_and_not_renewed():
    """An INIT on a confirmed CLOSED conntrack keeps it (CLOSED -> CLOSED) and does not renew its
    10 s timeout, so retransmitted INITs cannot keep it alive; once it times out, the next INIT
    opens a new one."""
    base = [(0.00, 0, ["INIT"]), (0.01, 1, ["INIT_ACK"]), (0.02, 0, ["COOKIE_ECHO"]),
            (0.03, 1, ["COOKIE_ACK"]), (0.04, 0, ["SHUTDOWN"]), (0.05, 1, ["SHUTDOWN_ACK"]),
            (0.06, 0, ["SHUTDOWN_COMPLETE"])]
    got = replay(base + [(3.0, 0, ["INIT"]), (9.0, 0, ["INIT"]), (10.1, 0, ["INIT"])])
    assert got[-3:] == [(NF_R_CONFIRMED, "CLOSED"), (NF_R_CONFIRMED, "CLOSED"), (NF_R_NEW, "CLOSED")]
    # a DATA chunk renews: the conntrack outlives the 10 s counted from SHUTDOWN_COMPLETE
    got = replay(base + [(9.0, 0, ["DATA"]), (18.0, 0, ["INIT"])])
    assert got[-1] == (NF_R_CONFIRMED, "CLOSED")


def test_client_side_only():
    """What a DR director sees. The INIT teaches the client's tag only; the server's tag, which
    every later client packet carries, is unknown (0), so COOKIE_ECHO (rule D), DATA, SHUTDOWN and
    SHUTDOWN_COMPLETE fail the verification-tag check and leave without a conntrack, which
    expires 10 s after the INIT. A HEARTBEAT teaches the tag; from then on the client's packets
    pass and renew it."""
    got = replay([(0.0, 0, ["INIT"]), (0.01, 0, ["COOKIE_ECHO"]), (0.02, 0, ["DATA"]),
                  (0.03, 0, ["SHUTDOWN"]), (0.04, 0, ["SHUTDOWN_COMPLETE"]), (9.9, 0, ["DATA"]),
                  (10.01, 0, ["DATA"]), (10.02, 0, ["SHUTDOWN"])])
    assert got == [(NF_R_NEW, "CLOSED"), (0, "CLOSED"), (0, "CLOSED"), (0, "CLOSED"), (0, "CLOSED"),
                   (0, "CLOSED"), (0, None), (0, None)]
    got = replay([(0.0, 0, ["INIT"]), (0.01, 0, ["COOKIE_ECHO"]), (5.0, 0, ["HEARTBEAT"]),
                  (12.0, 0, ["DATA"]), (20.0, 0, ["SHUTDOWN"]), (20.1, 0, ["SHUTDOWN_COMPLETE"]),
                  (25.0, 0, ["INIT"])])
    assert got == [(NF_R_NEW, "CLOSED"), (0, "CLOSED"), (1, "CLOSED"), (1, "CLOSED"), (1, "CLOSED"),
                   (1, "CLOSED"), (1, "CLOSED")]


@pytest.mark.parametrize("names, result", [
    (["ABORT"], (0, None)),                 # out of the blue: ABORT, SHUTDOWN_COMPLETE and
    (["SHUTDOWN_COMPLETE"], (0, None)),     # COOKIE_ACK start nothing (RFC 4960 8.4)
    (["COOKIE_ACK"], (0, None)),
    (["DATA"], (0, None)),                  # DATA, SACK, ...: sctp_new finds no state
    (["SACK"], (0, None)),
    (["HEARTBEAT"], (NF_R_NEW, "HEARTBEAT_SENT")),
    (["COOKIE_ECHO"], (0, None)),           # rule D: the tag must be the (unknown) peer's
    (["SHUTDOWN_ACK"], (NF_R_NEW, "SHUTDOWN_ACK_SENT")),
    (["INIT", "DATA"], (0, None)),          # INIT must be alone
    (["DATA", "COOKIE_ECHO"], (0, None)),   # COOKIE_ECHO must come first
])
def test_first_packets(names, result):
    vtag = 0 if names[0] == "INIT" else TAG_S
    assert replay([(0.0, 0, pkt(0, names, vtag=vtag))]) == [result]


def test_chunk_checks():
    """do_basic_checks: no chunk, or a chunk of length 0, makes the packet invalid; an INIT with a
    non-zero tag is invalid (8.5.1 A); a wrong tag on DATA leaves the state alone."""
    assert replay([(0, 0, sctp_l4(40000, VPORT, 0, []))]) == [(0, None)]
    zero = struct.pack("!BBH", 1, 0, 0) + init_value(TAG_C)
    assert replay([(0, 0, sctp_l4(40000, VPORT, 0, [zero]))]) == [(0, None)]
    assert replay([(0, 0, pkt(0, ["INIT"], vtag=7))]) == [(0, None)]
    est = [(0.00, 0, ["INIT"]), (0.01, 1, ["INIT_ACK"]), (0.02, 0, ["COOKIE_ECHO"]),
           (0.03, 1, ["COOKIE_ACK"])]
    got = replay(est + [(0.04, 0, pkt(0, ["DATA"], vtag=TAG_S + 1)), (0.05, 0, ["SHUTDOWN"]),
                        (0.06, 1, pkt(1, ["ABORT"], vtag=TAG_S)),
                        (0.07, 1, pkt(1, None, vtag=TAG_S, chunks=[chunk("ABORT", 0x01)]))])
    # the last ABORT has the T bit: it carries the sender's own tag (reflected), and is valid
    assert got[4:] == [(0, "ESTABLISHED"), (1, "SHUTDOWN_SENT"), (0, "SHUTDOWN_SENT"), (1, "CLOSED")]


def test_stale_init_ack():
    """An INIT_ACK whose tag differs from the one already learnt for its sender is invalid once
    no INIT of the peer is pending (COOKIE_ACK clears init[])."""
    got = replay([(0.0, 0, ["INIT"]), (0.01, 1, ["INIT_ACK"]), (0.02, 0, ["COOKIE_ECHO"]),
                  (0.03, 1, ["COOKIE_ACK"]),
                  (0.04, 1, pkt(1, None, chunks=[chunk("INIT_ACK", 0, init_value(TAG_S + 1))])),
                  (0.05, 1, pkt(1, None, chunks=[chunk("INIT_ACK", 0, init_value(TAG_S))]))])
    assert got[-2:] == [(0, "ESTABLISHED"), (NF_R_CONFIRMED, "ESTABLISHED")]


def _prefixes():
    """Packets reaching every tracker state: INIT and INIT_ACK (both tags known, COOKIE_WAIT),
    then the shortest way through the table without INIT/INIT_ACK; HEARTBEAT_SENT only from an
    out-of-the-blue HEARTBEAT."""
    paths = {"sCW": []}
    q = deque(["sCW"])
    while q:
        s = q.popleft()
        for (d, name), row in NF.items():
            n = row[s]
            if name not in ("INIT", "INIT_ACK") and n != "sIV" and n not in paths:
                paths[n] = paths[s] + [(d, name)]
                q.append(n)
    start = [(0.0, 0, ["INIT"]), (0.01, 1, ["INIT_ACK"])]
    out = {s: start + [(0.02 + 0.01 * i, d, [name]) for i, (d, name) in enumerate(p)]
           for s, p in paths.items()}
    out["sHS"] = [(0.0, 0, ["HEARTBEAT"])]
    return out


def test_every_tracker_cell():
    """From every state, every chunk in both directions gives the table's next state, or leaves
    the packet without a conntrack (sIV) and the state as it was. The conntrack then lives for the
    new state's timeout, except after an INIT on CLOSED, which renews nothing."""
    prefixes = _prefixes()
    assert set(prefixes) == set(NF_NAMES)
    checked = 0
    for s, prefix in prefixes.items():
        assert replay(prefix)[-1][1] == NF_NAMES[s], s
        t_last = prefix[-1][0]
        t = t_last + 0.5
        for (d, name), row in NF.items():
            # a conntrack started by a HEARTBEAT has learnt no tag for the reply direction
            p = pkt(d, [name], vtag=0 if (s == "sHS" and d == 1) else None)
            got = replay(prefix + [(t, d, p)])[-1]
            n = row[s]
            checked += 1
            if n == "sIV":
                assert got == (0, NF_NAMES[s]), (s, d, name, got)
                continue
            assert got == (NF_R_CONFIRMED, NF_NAMES[n]), (s, d, name, got)
            ignored = name == "INIT" and s == "sCL" and n == "sCL"   # either direction
            since, timeout = (t_last, NF_TIMEOUTS[s]) if ignored else (t, NF_TIMEOUTS[n])
            probe = pkt(0, ["HEARTBEAT"])
            alive = replay(prefix + [(t, d, p), (since + timeout - 0.01, 0, probe)])[-1]
            gone = replay(prefix + [(t, d, p), (since + timeout + 0.01, 0, probe)])[-1]
            assert alive[0] == NF_R_CONFIRMED, (s, d, name, alive)
            assert gone[0] == NF_R_NEW, (s, d, name, gone)
    assert checked == 8 * 22


# ---- what IPVS does with it (conntrack=1) -----------------------------------------------------

def _nat_close(eng, a, t0=0.0):
    a.rs = send(eng, t0, a.c("INIT"))["rs"]
    for i, (side, name) in enumerate([("s", "INIT_ACK"), ("c", "COOKIE_ECHO"), ("s", "COOKIE_ACK"),
                                      ("c", "SHUTDOWN"), ("s", "SHUTDOWN_ACK"),
                                      ("c", "SHUTDOWN_COMPLETE")]):
        d = send(eng, t0 + 0.01 * (i + 1), getattr(a, side)(name))
    assert d["state"] == "CLOSED"
    return d


def test_nat_init_reuse_within_10s_is_dropped():
    """NAT, conn_reuse_mode=1, conntrack=1: the INIT 3 s after SHUTDOWN_COMPLETE carries the
    association's confirmed CLOSED conntrack: IPVS drops it and expires the old entry (its
    conntrack goes with it). The client's retransmission a second later finds neither and is
    scheduled afresh."""
    eng = engine(sctp_service(FWD_MASQ, dests=(RS1, RS2)), conntrack=1)
    a = Assoc(45100)
    old = _nat_close(eng, a)
    d = send(eng, 3.0, a.c("INIT"))
    assert (d["action"], d["reason"], d["rs"], d["conn"]) == ("drop", "conntrack_drop", a.rs, old["conn"])
    d = send(eng, 4.0, a.c("INIT"))
    assert (d["action"], d["flags"] & 0x01, d["state"]) == ("new", 0, "INIT1")
    assert d["rs"] != a.rs
    eng.check_invariants()


def test_nat_init_reuse_after_the_conntrack_expired():
    """15 s after SHUTDOWN_COMPLETE the conntrack (10 s) is gone while the IPVS entry (61 s) is
    not: the INIT opens a new, unconfirmed conntrack and is rescheduled without a drop."""
    eng = engine(sctp_service(FWD_MASQ, dests=(RS1, RS2)), conntrack=1)
    a = Assoc(45100)
    _nat_close(eng, a)
    d = send(eng, 15.0, a.c("INIT"))
    assert (d["action"], d["reason"], d["state"]) == ("resched", "reuse_expected", "INIT1")
    assert d["rs"] != a.rs


def test_nat_init_with_a_nonzero_tag_has_no_conntrack():
    """An INIT with a non-zero verification tag is invalid for conntrack: the packet carries none,
    so IPVS reschedules instead of dropping."""
    eng = engine(sctp_service(FWD_MASQ, dests=(RS1, RS2)), conntrack=1)
    a = Assoc(45100)
    _nat_close(eng, a)
    d = send(eng, 3.0, a.c("INIT", vtag=0x1234))
    assert (d["action"], d["reason"]) == ("resched", "reuse_expected")


def test_dr_short_association_reuse_is_dropped():
    """DR: the tracker sees the client alone; the conntrack the INIT opened (CLOSED, 10 s, not
    renewed by the client's later packets, which fail the tag check) is still there 3 s later."""
    eng = engine(sctp_service(FWD_DROUTE, dests=(RS1, RS2)), conntrack=1)
    a = Assoc(45000)
    first = send(eng, 0.0, a.c("INIT"))
    for i, name in enumerate(["COOKIE_ECHO", "DATA", "SHUTDOWN", "SHUTDOWN_COMPLETE"]):
        d = send(eng, 0.01 * (i + 1), a.c(name))
    assert d["state"] == "CLOSED"
    d = send(eng, 3.0, a.c("INIT"))
    assert (d["action"], d["reason"], d["rs"]) == ("drop", "conntrack_drop", first["rs"])
    d = send(eng, 4.0, a.c("INIT"))
    assert d["action"] == "new" and d["rs"] != first["rs"]


@pytest.mark.parametrize("heartbeats, action", [(False, "resched"), (True, "drop")])
def test_dr_long_association(heartbeats, action):
    """DR, an association of 20 s: without HEARTBEATs its conntrack died 10 s after the INIT and
    the reusing INIT is rescheduled; with them the tag was learnt, every client packet renewed the
    conntrack, and the INIT is dropped."""
    eng = engine(sctp_service(FWD_DROUTE, dests=(RS1, RS2)), conntrack=1)
    a = Assoc(45000)
    send(eng, 0.0, a.c("INIT"))
    send(eng, 0.01, a.c("COOKIE_ECHO"))
    for t in (5.0, 10.0, 15.0):
        send(eng, t, a.c("HEARTBEAT" if heartbeats else "DATA"))
        send(eng, t + 0.01, a.c("DATA"))
    send(eng, 20.0, a.c("SHUTDOWN"))
    assert send(eng, 20.01, a.c("SHUTDOWN_COMPLETE"))["state"] == "CLOSED"
    d = send(eng, 21.0, a.c("INIT"))
    assert d["action"] == action
    assert d["reason"] == ("conntrack_drop" if heartbeats else "reuse_expected")


def test_conntrack_off_never_drops():
    eng = engine(sctp_service(FWD_DROUTE, dests=(RS1, RS2)), conntrack=0)
    a = Assoc(45000)
    for i, name in enumerate(["INIT", "COOKIE_ECHO", "SHUTDOWN", "SHUTDOWN_COMPLETE"]):
        send(eng, 0.01 * i, a.c(name))
    assert send(eng, 3.0, a.c("INIT"))["action"] == "resched"


def test_simple_model():
    """ct_model="simple": a NAT entry in CLOSED is taken as re-opened (no drop); a DR entry still
    carrying NOOUTPUT is taken as confirmed (drop)."""
    eng = engine(sctp_service(FWD_MASQ, dests=(RS1, RS2)), conntrack=1)
    eng.ct_model = "simple"
    a = Assoc(45100)
    _nat_close(eng, a)
    assert send(eng, 3.0, a.c("INIT"))["action"] == "resched"
    eng = engine(sctp_service(FWD_DROUTE, dests=(RS1, RS2)), conntrack=1)
    eng.ct_model = "simple"
    b = Assoc(45000)
    for i, name in enumerate(["INIT", "COOKIE_ECHO", "SHUTDOWN", "SHUTDOWN_COMPLETE"]):
        send(eng, 0.01 * i, b.c(name))
    assert send(eng, 30.0, b.c("INIT"))["reason"] == "conntrack_drop"


def test_counters_after_a_drop():
    """The dropped INIT changes nothing; the old entry leaves its server's counters when it
    expires (right after the packet)."""
    eng = engine(sctp_service(FWD_MASQ, dests=(RS1, RS2)), conntrack=1)
    a = Assoc(45100)
    _nat_close(eng, a)
    assert counters(eng, a.rs) == (0, 1)
    send(eng, 3.0, a.c("INIT"))
    send(eng, 3.5, Assoc(45999).c("DATA"))         # an unrelated packet: the expiry has run
    assert counters(eng, a.rs) == (0, 0)
    eng.check_invariants()


# ---- robustness: arbitrary chunk bytes -------------------------------------------------------

CHUNK_TYPES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 63, 64, 127, 128, 191, 192, 255]

chunk_st = st.tuples(
    st.sampled_from(CHUNK_TYPES), st.sampled_from([0, 1, 3, 255]),
    st.one_of(st.none(), st.integers(0, 48), st.just(0xFFFF)),      # length field (None: right)
    st.binary(max_size=24),
)
packet_st = st.tuples(
    st.sampled_from([0.0001, 0.01, 1.0, 4.0, 11.0, 70.0]),
    st.sampled_from(["c2s", "c2s", "rs2c", "vip2c"]),
    st.sampled_from([45000, 45001]),
    st.sampled_from([0, TAG_C, TAG_S, 0xDEADBEEF]),
    st.lists(chunk_st, max_size=4),
    st.integers(0, 6),                                                 # bytes cut off the end
    st.booleans(),                                                     # IPv6 + Hop-by-Hop
)


def _fuzz_frame(direction, cport, vtag, chunks, cut, v6):
    """IPv4: ``cut`` bytes missing from the capture (the IP header keeps the full length);
    IPv6 (behind a Hop-by-Hop header): a packet ``cut`` bytes shorter."""
    body = b"".join(chunk(t, f, v, length=ln) for t, f, ln, v in chunks)
    if v6:
        src, dst = ("2001:db8:9::1", "2001:db8:1::10") if direction == "c2s" else (
            "2001:db8:1::10", "2001:db8:9::1")
        ports = (cport, VPORT) if direction == "c2s" else (VPORT, cport)
        l4 = struct.pack("!HHII", ports[0], ports[1], vtag, 0) + body
        return ipv6_frame(src, dst, l4[:max(12, len(l4) - cut)], hop_by_hop=True)
    if direction == "c2s":
        f = sctp_frame("10.0.0.1", cport, "192.0.2.10", VPORT, vtag, [body])
    elif direction == "rs2c":
        f = sctp_frame(RS1, 3869, "10.0.0.1", cport, vtag, [body])
    else:
        f = sctp_frame("192.0.2.10", VPORT, "10.0.0.1", cport, vtag, [body])
    return f[:max(14 + 20 + 12, len(f) - cut)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=st.lists(packet_st, min_size=1, max_size=30),
       fwd=st.sampled_from([FWD_MASQ, FWD_DROUTE]), sloppy=st.integers(0, 1),
       mode=st.integers(0, 1))
def test_arbitrary_chunks_never_break_the_engine(packets, fwd, sloppy, mode):
    """Random chunk types, flags, length fields and truncations (the IP header still says the
    full length, so the cut bytes are missing from the capture) with the conntrack model on:
    one decision per packet, invariants after each, and bursts decide as single packets do."""
    svc4 = sctp_service(fwd, dests=(RS1, RS2))
    svc6 = service(addr="2001:db8:1::10", proto=132, port=VPORT, fwd=fwd, dests=("2001:db8:2::11",),
                   dport=VPORT)
    t, items = 0.0, []
    for gap, direction, cport, vtag, chunks, cut, v6 in packets:
        t += gap
        items.append((t, _fuzz_frame(direction, cport, vtag, chunks, cut, v6)))
    single = engine(svc4, svc6, conntrack=1, sloppy_sctp=sloppy, conn_reuse_mode=mode)
    burst = engine(svc4, svc6, conntrack=1, sloppy_sctp=sloppy, conn_reuse_mode=mode)
    one = []
    for item in items:
        d = single.process(batch([item]))
        assert len(d) == 1
        one.append(d.copy())
        single.check_invariants()
    many = burst.process(batch(items))
    assert len(many) == len(items)
    for name in ("action", "reason", "dir", "rs", "state", "old_state", "flags", "conn"):
        assert [int(x[name][0]) for x in one] == [int(v) for v in many[name]], name
    burst.check_invariants()
