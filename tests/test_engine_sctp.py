"""SCTP through the engine, against the reference's text (ipvs-semantics.md section 4: events
from chunk types, the INPUT / OUTPUT / INPUT_ONLY tables, timeouts, only ESTABLISHED active) and
its vector V12."""
from __future__ import annotations

import struct
from collections import deque

import pytest

from engine_helpers import (
    Driver, engine, service, batch, decode, ether, ip_packet, T0, CLIENT, CPORT, VIP, RS1, RS2,
)
from ipvsflow.config import FWD_MASQ, FWD_DROUTE
from ipvsflow.engine import proto_sctp

SCTP = 132
COLS = "NO I1 IN CS CR CW CO CE ES SS SR SA RJ CL".split()
EVENTS = ["d", "i", "i_a", "c_e", "c_a", "s", "s_a", "s_c", "err", "ab"]
# section 4.3, row = event, columns = current state
INPUT = """
d   ES I1 IN CS CR CW CO CE ES SS SR SA RJ CL
i   I1 IN IN CS CR CW CO CE ES SS SR SA IN IN
i_a CW CW CW CS CR CO CO CE ES SS SR SA RJ CL
c_e CR IN IN CR CR CW CO CE ES SS SR SA RJ CL
c_a ES I1 IN CS CR CW CO ES ES SS SR SA RJ CL
s   SR I1 IN CS CR CW CO CE SR SS SR SA RJ CL
s_a CL IN IN CS CR CW CO CE ES CL SR CL RJ CL
s_c CL CL CL CS CR CW CO CE ES SS SR CL RJ CL
err CL I1 IN CS CR CW CO CL ES SS SR SA RJ CL
ab  CL CL CL CL CL RJ CL CL CL CL CL CL CL CL
"""
OUTPUT = """
d   ES I1 IN CS CR CW CO CE ES SS SR SA RJ CL
i   CW CW CW CW CW CW CW CW ES CW CW CW CW CW
i_a CS CS CS CS CR CW CO CE ES SS SR SA RJ CL
c_e CE CE CE CE CE CE CE CE ES SS SR SA RJ CL
c_a ES ES ES ES ES ES ES ES ES SS SR SA RJ CL
s   SS SS SS SS SS SS SS SS SS SS SR SA RJ CL
s_a SA SA SA SA SA CW CO CE ES SA SA SA RJ CL
s_c CL I1 IN CS CR CW CO CE ES SS SR SA RJ CL
err CL CL CL CL CL CW CO CE ES SS SR SA RJ CL
ab  CL RJ CL CL CL CL CL CL CL CL CL CL CL CL
"""
INPUT_ONLY = """
d   ES I1 IN CS CR ES CO CE ES SS SR SA RJ CL
i   I1 IN IN IN IN IN CO CE ES SS SR SA IN IN
i_a CE CE CE CE CE CE CO CE ES SS SR SA RJ CL
c_e ES ES ES ES ES ES CO CE ES SS SR SA RJ CL
c_a ES I1 IN ES ES CW ES ES ES SS SR SA RJ CL
s   SR I1 IN CS CR CW CO CE SR SS SR SA RJ CL
s_a CL IN IN CS CR CW CO CE CL CL SR CL RJ CL
s_c CL CL CL CL CL CW CO CE ES SS CL CL RJ CL
err CL I1 IN CS CR CW CO CE ES SS SR SA RJ CL
ab  CL CL CL CL CL RJ CL CL CL CL CL CL CL CL
"""


def parse(text):
    out = {}
    for line in text.strip().splitlines():
        ev, *row = line.split()
        out[ev] = dict(zip(COLS, row))
    return out


TABLES = {"INPUT": parse(INPUT), "OUTPUT": parse(OUTPUT), "INPUT_ONLY": parse(INPUT_ONLY)}
# section 4.1: kernel name (as /proc/net/ip_vs_conn prints it), timeout (s)
STATES = {"NO": ("NONE", 2), "I1": ("INIT1", 4), "IN": ("INIT", 61), "CS": ("C-SENT", 61),
          "CR": ("C-REPLIED", 61), "CW": ("C-WAIT", 61), "CO": ("COOKIE", 61),
          "CE": ("C-ECHOED", 61), "ES": ("ESTABLISHED", 900), "SS": ("S-SENT", 61),
          "SR": ("S-RECEIVED", 61), "SA": ("S-ACK-SENT", 61), "RJ": ("REJECTED", 4),
          "CL": ("CLOSED", 61)}
# section 4.2: one chunk type per event
EVENT_CHUNK = {"d": 0, "i": 1, "i_a": 2, "c_e": 10, "c_a": 11, "s": 7, "s_a": 8, "s_c": 14,
               "err": 9, "ab": 6}


def chunk(ctype, payload=b""):
    ln = 4 + len(payload)
    return struct.pack("!BBH", ctype, 0, ln) + payload + bytes((-ln) % 4)


def sctp_frame(src, sport, dst, dport, chunks):
    l4 = struct.pack("!HHII", sport, dport, 0x1234, 0) + b"".join(chunks)
    return ether(ip_packet(src, dst, SCTP, l4))


def test_events_from_chunk_types():
    # section 4.2
    expected = {0: 0, 3: 0, 4: 0, 5: 0, 12: 0, 13: 0, 15: 0, 64: 0, 200: 0,
                1: 1, 2: 2, 10: 3, 11: 4, 7: 5, 8: 6, 14: 7, 9: 8, 6: 9}
    for ctype, ev in expected.items():
        assert proto_sctp.event_of(ctype) == ev, ctype
    assert proto_sctp.event_of(10, True) == 9 and proto_sctp.event_of(11, True) == 9


def test_tables_cellwise():
    for di, d in enumerate(("INPUT", "OUTPUT", "INPUT_ONLY")):
        for ei, ev in enumerate(EVENTS):
            for si, s in enumerate(COLS):
                assert COLS[proto_sctp.next_state(di, ei, si)] == TABLES[d][ev][s], (d, ev, s)


def reachable(directions):
    first = directions[0]
    paths, queue = {}, deque()
    for ev in EVENTS[:-1]:                  # an ABORT never creates an entry
        s = TABLES[first][ev]["NO"]
        if s not in paths:
            paths[s] = [(first, ev)]
            queue.append(s)
    while queue:
        s = queue.popleft()
        for d in directions:
            for ev in EVENTS:
                n = TABLES[d][ev][s]
                if n not in paths:
                    paths[n] = paths[s] + [(d, ev)]
                    queue.append(n)
    return paths


@pytest.mark.parametrize("mode", ["nat", "dr"])
def test_every_reachable_transition_through_the_engine(mode):
    fwd, directions = (FWD_MASQ, ("INPUT", "OUTPUT")) if mode == "nat" else (FWD_DROUTE, ("INPUT_ONLY",))
    eng = engine(service(proto=SCTP, port=3868, fwd=fwd), conn_reuse_mode=0, sloppy_sctp=1)
    drv = Driver(eng)
    paths = reachable(directions)
    # every state but NONE is reachable with both directions; client packets alone (DR) never
    # reach the cookie states a server packet creates, SHUTDOWN_SENT / ACK_SENT or REJECTED
    missing = set(COLS) - set(paths) - {"NO"}
    assert missing == (set() if mode == "nat" else {"CO", "CR", "CS", "CW", "RJ", "SA", "SS"})
    t = 0.0
    n = 0
    for s0, path in sorted(paths.items()):
        for d in directions:
            for ev in EVENTS:
                cport = 20000 + n
                n += 1
                state = "NO"
                for d2, ev2 in path + [(d, ev)]:
                    t += 0.0002
                    c = [chunk(EVENT_CHUNK[ev2], bytes(8))]
                    f = (sctp_frame(VIP, 3868, CLIENT, cport, c) if d2 == "OUTPUT"
                         else sctp_frame(CLIENT, cport, VIP, 3868, c))
                    dec = drv.send(t, f)
                    want = TABLES[d2][ev2][state]
                    where = (mode, s0, d2, ev2, state)
                    assert dec["action"] in ("new", "hit"), (where, dec)
                    assert dec["state"] == STATES[want][0], (where, dec["state"])
                    row = [r for r in eng.connections() if r["cport"] == cport]
                    assert row[0]["state"] == STATES[want][0]
                    assert row[0]["expire"] == STATES[want][1], where
                    assert row[0]["inactive"] == (want != "ES"), where
                    state = want
    eng.check_invariants()


def test_v12_nat_association_and_init_reuse():
    eng = engine(service(proto=SCTP, port=3868, fwd=FWD_MASQ))
    drv = Driver(eng)
    c2s = lambda t, ct, **kw: drv.send(t, sctp_frame(CLIENT, CPORT, VIP, 3868, [chunk(ct, bytes(8))]))
    s2c = lambda t, ct: drv.send(t, sctp_frame(VIP, 3868, CLIENT, CPORT, [chunk(ct, bytes(8))]))
    steps = [(c2s, 1, "INIT1", (0, 1)), (s2c, 2, "C-SENT", (0, 1)), (c2s, 10, "C-REPLIED", (0, 1)),
             (s2c, 11, "ESTABLISHED", (1, 0)), (c2s, 7, "S-RECEIVED", (0, 1)),
             (s2c, 8, "S-ACK-SENT", (0, 1)), (c2s, 14, "CLOSED", (0, 1))]
    for i, (fn, ct, state, counters) in enumerate(steps):
        d = fn(0.01 * i, ct)
        assert (d["rs"], d["state"]) == (RS2, state), i
        assert drv.counters(RS2) == counters
    assert [r["expire"] for r in eng.connections()] == [61]
    d = c2s(1.0, 1)                          # INIT on the CLOSED association
    assert (d["action"], d["reason"], d["rs"], d["state"]) == ("resched", "reuse_expected", RS1, "INIT1")
    eng.check_invariants()
    # conn_reuse_mode 0: the INIT stays on the old entry, CLOSED -> INIT
    eng = engine(service(proto=SCTP, port=3868, fwd=FWD_MASQ), conn_reuse_mode=0)
    drv = Driver(eng)
    for i, (fn, ct, _, _) in enumerate(steps):
        fn(0.01 * i, ct)
    d = c2s(1.0, 1)
    assert (d["action"], d["rs"], d["state"]) == ("hit", RS2, "INIT")


def test_v12_dr_variant_and_abort_rules():
    eng = engine(service(proto=SCTP, port=3868, fwd=FWD_DROUTE))
    drv = Driver(eng)
    send = lambda t, chunks, cport=CPORT: drv.send(t, sctp_frame(CLIENT, cport, VIP, 3868, chunks))
    assert send(0.0, [chunk(1, bytes(8))])["state"] == "INIT1"
    assert send(0.1, [chunk(10, bytes(8))])["state"] == "ESTABLISHED"
    # COOKIE_ECHO bundled with an ABORT counts as ABORT: ESTABLISHED -> CLOSED
    assert send(0.2, [chunk(10, bytes(8)), chunk(6)])["state"] == "CLOSED"
    # no entry: ABORT never schedules, other chunks only with sloppy_sctp
    d = send(0.3, [chunk(6)], cport=5000)
    assert (d["action"], d["reason"]) == ("pass", "abort_no_conn")
    d = send(0.4, [chunk(0, bytes(8))], cport=5001)
    assert (d["action"], d["reason"]) == ("pass", "not_init")
    eng.set_sysctl("sloppy_sctp", 1)
    assert send(0.5, [chunk(0, bytes(8))], cport=5001)["action"] == "new"
    assert send(0.6, [chunk(6)], cport=5002)["action"] == "pass"
