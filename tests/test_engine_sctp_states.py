"""SCTP in the engine (the kernel's ip_vs_proto_sctp.c), driven with crafted SCTP packets.

The expectations are the reference's text (ipvs-semantics.md section 4: the state list with
timeouts, the chunk -> event table and the three transition tables, copied below), its vector V12
and section 6.1, never the engine's own tables. Every (table, state, event) whose state packets
can reach gets a connection of its own: a path of packets that reaches the state (found by a
search over the reference tables and checked packet by packet), then one packet with the event;
state, ActiveConn/InActConn class and timer are checked, and the engine's invariants hold.

Cells no packet sequence reaches (OUTPUT from NONE: an entry leaves NONE with its first packet,
which is a client packet; INPUT_ONLY from the states only the OUTPUT table enters) are checked
through ipvsflow.engine.proto_sctp.next_state against the same text. The kernel cannot reach them
either (only entries made by the sync daemon start elsewhere).
"""
from __future__ import annotations

import ipaddress
import struct
from collections import deque

import pytest

from engine_helpers import (
    T0, batch, cmd, decode, engine, ether, ip_packet, service, CLIENT, RS1, RS2, VIP,
)
from ipvsflow.config import FWD_DROUTE, FWD_MASQ, RealServer, SVC_F_PERSISTENT
from ipvsflow.engine import REASONS, proto_sctp, state_name

SCTP = 132
VPORT = 3868
RPORT = 3869                    # NAT real servers listen on another port

# ---- reference text, section 4.1 ------------------------------------------------------------
STATE_TEXT = """
| 0 | NONE | sNO | 2 | no |
| 1 | INIT1 | sI1 | 4 | no |
| 2 | INIT | sIN | 61 | no |
| 3 | COOKIE_SENT (C-SENT) | sCS | 61 | no |
| 4 | COOKIE_REPLIED (C-REPLIED) | sCR | 61 | no |
| 5 | COOKIE_WAIT (C-WAIT) | sCW | 61 | no |
| 6 | COOKIE (COOKIE) | sCO | 61 | no |
| 7 | COOKIE_ECHOED (C-ECHOED) | sCE | 61 | no |
| 8 | ESTABLISHED | sES | 900 | **yes (only this one)** |
| 9 | SHUTDOWN_SENT (S-SENT) | sSS | 61 | no |
| 10 | SHUTDOWN_RECEIVED (S-RECEIVED) | sSR | 61 | no |
| 11 | SHUTDOWN_ACK_SENT (S-ACK-SENT) | sSA | 61 | no |
| 12 | REJECTED | sRJ | 4 | no |
| 13 | CLOSED | sCL | 61 | no |
"""

# ---- section 4.2 ---------------------------------------------------------------------------
EVENT_TEXT = """
| DATA (0), SACK (3), HEARTBEAT (4), HEARTBEAT_ACK (5), ECN_ECNE (12), ECN_CWR (13), **any id ≥ 15** | d = DATA (0) |
| INIT (1) | i (1) |
| INIT_ACK (2) | i_a (2) |
| COOKIE_ECHO (10) | c_e (3) |
| COOKIE_ACK (11) | c_a (4) |
| SHUTDOWN (7) | s (5) |
| SHUTDOWN_ACK (8) | s_a (6) |
| SHUTDOWN_COMPLETE (14) | s_c (7) |
| ERROR (9) | err (8) |
| ABORT (6) | ab (9) |
"""

# ---- section 4.3 (column order NO I1 IN CS CR CW CO CE ES SS SR SA RJ CL) -------------------
TABLE_TEXT = {
    "INPUT": """
| d | ES | I1 | IN | CS | CR | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
| i | I1 | IN | IN | CS | CR | CW | CO | CE | ES | SS | SR | SA | IN | IN |
| i_a | CW | CW | CW | CS | CR | CO | CO | CE | ES | SS | SR | SA | RJ | CL |
| c_e | CR | IN | IN | CR | CR | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
| c_a | ES | I1 | IN | CS | CR | CW | CO | ES | ES | SS | SR | SA | RJ | CL |
| s | SR | I1 | IN | CS | CR | CW | CO | CE | SR | SS | SR | SA | RJ | CL |
| s_a | CL | IN | IN | CS | CR | CW | CO | CE | ES | CL | SR | CL | RJ | CL |
| s_c | CL | CL | CL | CS | CR | CW | CO | CE | ES | SS | SR | CL | RJ | CL |
| err | CL | I1 | IN | CS | CR | CW | CO | CL | ES | SS | SR | SA | RJ | CL |
| ab | CL | CL | CL | CL | CL | RJ | CL | CL | CL | CL | CL | CL | CL | CL |
""",
    "OUTPUT": """
| d | ES | I1 | IN | CS | CR | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
| i | CW | CW | CW | CW | CW | CW | CW | CW | ES | CW | CW | CW | CW | CW |
| i_a | CS | CS | CS | CS | CR | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
| c_e | CE | CE | CE | CE | CE | CE | CE | CE | ES | SS | SR | SA | RJ | CL |
| c_a | ES | ES | ES | ES | ES | ES | ES | ES | ES | SS | SR | SA | RJ | CL |
| s | SS | SS | SS | SS | SS | SS | SS | SS | SS | SS | SR | SA | RJ | CL |
| s_a | SA | SA | SA | SA | SA | CW | CO | CE | ES | SA | SA | SA | RJ | CL |
| s_c | CL | I1 | IN | CS | CR | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
| err | CL | CL | CL | CL | CL | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
| ab | CL | RJ | CL | CL | CL | CL | CL | CL | CL | CL | CL | CL | CL | CL |
""",
    "INPUT_ONLY": """
| d | ES | I1 | IN | CS | CR | ES | CO | CE | ES | SS | SR | SA | RJ | CL |
| i | I1 | IN | IN | IN | IN | IN | CO | CE | ES | SS | SR | SA | IN | IN |
| i_a | CE | CE | CE | CE | CE | CE | CO | CE | ES | SS | SR | SA | RJ | CL |
| c_e | ES | ES | ES | ES | ES | ES | CO | CE | ES | SS | SR | SA | RJ | CL |
| c_a | ES | I1 | IN | ES | ES | CW | ES | ES | ES | SS | SR | SA | RJ | CL |
| s | SR | I1 | IN | CS | CR | CW | CO | CE | SR | SS | SR | SA | RJ | CL |
| s_a | CL | IN | IN | CS | CR | CW | CO | CE | CL | CL | SR | CL | RJ | CL |
| s_c | CL | CL | CL | CL | CL | CW | CO | CE | ES | SS | CL | CL | RJ | CL |
| err | CL | I1 | IN | CS | CR | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
| ab | CL | CL | CL | CL | CL | RJ | CL | CL | CL | CL | CL | CL | CL | CL |
""",
}
COLUMNS = "NO I1 IN CS CR CW CO CE ES SS SR SA RJ CL".split()
EVENTS = ("d", "i", "i_a", "c_e", "c_a", "s", "s_a", "s_c", "err", "ab")
DIRECTIONS = ("INPUT", "OUTPUT", "INPUT_ONLY")


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_states():
    out = {}
    for line in STATE_TEXT.strip().splitlines():
        num, name, short, timeout, active = _cells(line)
        proc = name.split("(")[-1].rstrip(")") if "(" in name else name
        out[short[1:]] = {"num": int(num), "name": proc, "timeout": int(timeout),
                          "active": active.startswith("**yes")}
    return out


def parse_events():
    ev = {}
    for line in EVENT_TEXT.strip().splitlines():
        chunks, event = _cells(line)
        name = event.split()[0]
        for part in chunks.split(","):
            part = part.strip()
            if "≥" in part:
                lo = int(part.split("≥")[1].strip(" *"))
                for t in range(lo, 256):
                    ev[t] = name
            else:
                ev[int(part.split("(")[1].rstrip(")"))] = name
    return ev


def parse_tables():
    out = {}
    for d, text in TABLE_TEXT.items():
        rows = {}
        for line in text.strip().splitlines():
            cells = _cells(line)
            rows[cells[0]] = dict(zip(COLUMNS, cells[1:]))
        out[d] = rows
    return out


STATES = parse_states()
CHUNK_EVENT = parse_events()
TABLES = parse_tables()
NAME = {short: s["name"] for short, s in STATES.items()}


def test_reference_text_is_complete():
    assert len(STATES) == 14 and [STATES[c]["num"] for c in COLUMNS] == list(range(14))
    assert sorted(CHUNK_EVENT) == list(range(256))
    for d in DIRECTIONS:
        assert list(TABLES[d]) == list(EVENTS)
        assert all(len(row) == 14 and set(row.values()) <= set(COLUMNS) for row in TABLES[d].values())


# ---- SCTP packets ---------------------------------------------------------------------------
CID = {"DATA": 0, "INIT": 1, "INIT_ACK": 2, "SACK": 3, "HEARTBEAT": 4, "HEARTBEAT_ACK": 5,
       "ABORT": 6, "SHUTDOWN": 7, "SHUTDOWN_ACK": 8, "ERROR": 9, "COOKIE_ECHO": 10,
       "COOKIE_ACK": 11, "SHUTDOWN_COMPLETE": 14}
# one chunk per event (a bundle COOKIE_ECHO + ABORT stands for "ab" where an ABORT alone would
# not create the entry)
EVENT_CHUNKS = {"d": ["DATA"], "i": ["INIT"], "i_a": ["INIT_ACK"], "c_e": ["COOKIE_ECHO"],
                "c_a": ["COOKIE_ACK"], "s": ["SHUTDOWN"], "s_a": ["SHUTDOWN_ACK"],
                "s_c": ["SHUTDOWN_COMPLETE"], "err": ["ERROR"], "ab": ["ABORT"]}
TAG_C = 0x0C11E27A               # the client's and the server's verification tags
TAG_S = 0x5E77E2B1


def chunk(ctype, flags=0, value=b"", length=None):
    """One chunk, padded to 4 bytes; ``length`` overrides the length field."""
    ctype = CID[ctype] if isinstance(ctype, str) else ctype
    body = struct.pack("!BBH", ctype, flags, 4 + len(value) if length is None else length) + value
    return body + b"\0" * (-len(body) % 4)


def init_value(tag):
    return struct.pack("!IIHHI", tag, 65535, 10, 10, 1000)


def default_chunk(name, tag):
    """A plausible chunk of type ``name`` sent by the side whose own tag is ``tag``."""
    if name in ("INIT", "INIT_ACK"):
        return chunk(name, 0, init_value(tag))
    if name == "DATA":
        return chunk(name, 0x03, struct.pack("!IHHI", 1, 0, 0, 0) + b"data")
    if name == "SACK":
        return chunk(name, 0, struct.pack("!IIHH", 1, 65535, 0, 0))
    if name in ("HEARTBEAT", "HEARTBEAT_ACK"):
        return chunk(name, 0, struct.pack("!HH", 1, 8) + b"\x01\x02\x03\x04")
    if name == "SHUTDOWN":
        return chunk(name, 0, struct.pack("!I", 1))
    if name == "COOKIE_ECHO":
        return chunk(name, 0, b"cookie-bytes")
    if name == "ERROR":
        return chunk(name, 0, struct.pack("!HH", 3, 4))
    return chunk(name)


def sctp_l4(sport, dport, vtag, chunks):
    return struct.pack("!HHII", sport, dport, vtag, 0) + b"".join(chunks)


def sctp_frame(src, sport, dst, dport, vtag, chunks):
    return ether(ip_packet(src, dst, SCTP, sctp_l4(sport, dport, vtag, chunks)))


class Assoc:
    """Frames of one association: client cport <-> VIP:VPORT (or, for replies behind a NAT
    director, real server:RPORT), with the verification tags each side expects."""

    def __init__(self, cport, client=CLIENT, vip=VIP, vport=VPORT, rs=RS1, rport=RPORT,
                 tag_c=TAG_C, tag_s=TAG_S):
        self.cport, self.client, self.vip, self.vport = cport, client, vip, vport
        self.rs, self.rport, self.tag_c, self.tag_s = rs, rport, tag_c, tag_s

    def c(self, *names, chunks=None, vtag=None):
        """Client -> VIP; INIT carries tag 0, everything else the server's tag."""
        ch = chunks if chunks is not None else [default_chunk(n, self.tag_c) for n in names]
        if vtag is None:
            vtag = 0 if names and names[0] == "INIT" else self.tag_s
        return sctp_frame(self.client, self.cport, self.vip, self.vport, vtag, ch)

    def s(self, *names, chunks=None, vtag=None):
        """Real server -> client (a NAT reply as the director receives it)."""
        ch = chunks if chunks is not None else [default_chunk(n, self.tag_s) for n in names]
        return sctp_frame(self.rs, self.rport, self.client, self.cport,
                          self.tag_c if vtag is None else vtag, ch)


def event_frame(a, direction, event, first=False):
    names = EVENT_CHUNKS[event]
    if event == "ab" and first:
        names = ["COOKIE_ECHO", "ABORT"]
    return a.s(*names) if direction == "OUTPUT" else a.c(*names)


def sctp_service(fwd=FWD_MASQ, dests=(RS1,), sched="rr", **kw):
    return service(proto=SCTP, port=VPORT, dport=RPORT if fwd == FWD_MASQ else VPORT, fwd=fwd,
                   dests=dests, sched=sched, **kw)


def sctp_engine(fwd=FWD_MASQ, dests=(RS1,), sched="rr", svc_kw=None, **sysctls):
    return engine(sctp_service(fwd, dests, sched, **(svc_kw or {})), **sysctls)


def run(eng, packets):
    """[(t seconds, frame)] as one burst -> decisions as dicts."""
    return decode(eng, eng.process(batch(packets)))


def send(eng, t, frame):
    return run(eng, [(t, frame)])[0]


def counters(eng, addr=RS1):
    d = next(d for d in eng.dests() if d["addr"] == addr)
    return d["activeconns"], d["inactconns"]


def conn_rows(eng, cport=None):
    return [r for r in eng.connections() if r["pro"] == "SCTP" and not r["template"]
            and (cport is None or r["cport"] == cport)]


# ---- every table cell ------------------------------------------------------------------------

def _paths(directions):
    """Shortest event paths from a new entry to every state reachable with ``directions``; the
    first packet is a client packet (it creates the entry)."""
    first = "INPUT_ONLY" if directions == ("INPUT_ONLY",) else "INPUT"
    paths = {}
    q = deque()
    for ev in EVENTS:
        s = TABLES[first][ev]["NO"]
        if s not in paths:
            paths[s] = [(first, ev)]
            q.append(s)
    while q:
        s = q.popleft()
        for d in directions:
            for ev in EVENTS:
                n = TABLES[d][ev][s]
                if n not in paths:
                    paths[n] = paths[s] + [(d, ev)]
                    q.append(n)
    return paths


NAT_PATHS = _paths(("INPUT", "OUTPUT"))
DR_PATHS = _paths(("INPUT_ONLY",))


def _cases():
    cases = []
    for ev in EVENTS:                       # NONE: the entry's first packet
        cases.append(("nat", [], ("INPUT", ev)))
        cases.append(("dr", [], ("INPUT_ONLY", ev)))
    for s, path in sorted(NAT_PATHS.items()):
        for d in ("INPUT", "OUTPUT"):
            for ev in EVENTS:
                cases.append(("nat", path, (d, ev)))
    for s, path in sorted(DR_PATHS.items()):
        for ev in EVENTS:
            cases.append(("dr", path, ("INPUT_ONLY", ev)))
    return cases


CASES = _cases()


def test_reachable_states():
    # every state is reachable in NAT; with the client side alone (DR) only these are
    assert set(NAT_PATHS) == set(COLUMNS) - {"NO"}
    assert set(DR_PATHS) == {"ES", "I1", "IN", "CE", "SR", "CL"}


@pytest.mark.parametrize("mode", ["nat", "dr"])
def test_every_reachable_cell_through_the_engine(mode):
    """One entry per (state, direction, event): path, then the event; state after every packet,
    ActiveConn/InActConn and timers at the end, invariants."""
    eng = sctp_engine(FWD_MASQ if mode == "nat" else FWD_DROUTE, sloppy_sctp=1, conn_reuse_mode=0)
    cases = [c for c in CASES if c[0] == mode]
    packets, expect = [], []
    t = 0.0
    for k, (_, path, last) in enumerate(cases):
        a = Assoc(10000 + k)
        state = "NO"
        for i, (d, ev) in enumerate(path + [last]):
            nxt = TABLES[d][ev][state]
            packets.append((t, event_frame(a, d, ev, first=(i == 0))))
            expect.append((k, i == len(path), d, ev, state, nxt))
            state = nxt
            t += 0.0001
        t += 0.0005
    assert t < 1.5                          # well inside the shortest timeout (INIT1/REJECTED 4 s)
    dec = run(eng, packets)
    final = {}
    for got, (k, is_last, d, ev, before, after) in zip(dec, expect):
        where = f"case {k} {cases[k][1]} + {cases[k][2]}: {d} {ev} from {before}"
        assert got["action"] in ("new", "hit"), (where, got)
        assert got["dir"] == ("out" if d == "OUTPUT" else "in"), (where, got)
        assert got["state"] == NAME[after], (where, got["state"], NAME[after])
        if before != "NO":
            assert got["old_state"] == NAME[before], (where, got)
        if is_last:
            final[10000 + k] = after
    # one entry per case, in the state the reference says, with its timeout and class
    rows = {r["cport"]: r for r in conn_rows(eng)}
    assert set(rows) == set(final)
    for cport, short in final.items():
        r = rows[cport]
        assert r["state"] == NAME[short]
        assert r["inactive"] == (not STATES[short]["active"]), (cport, short)
        left = (r["deadline_ns"] - eng.now_ns) / 1e9
        assert STATES[short]["timeout"] - 1.5 < left <= STATES[short]["timeout"], (cport, short, left)
    active = sum(1 for s in final.values() if STATES[s]["active"])
    assert counters(eng) == (active, len(final) - active)
    eng.check_invariants()


def test_unreachable_cells_against_the_text():
    """Cells no packet sequence reaches, through the table helper (same text)."""
    ev_index = {e: i for i, e in enumerate(EVENTS)}
    unreachable = [("OUTPUT", ev, "NO") for ev in EVENTS]
    unreachable += [("INPUT_ONLY", ev, s) for ev in EVENTS for s in COLUMNS
                    if s != "NO" and s not in DR_PATHS]
    assert len(unreachable) == 10 + 10 * 7
    for d, ev, s in unreachable:
        got = proto_sctp.next_state(DIRECTIONS.index(d), ev_index[ev], STATES[s]["num"])
        assert got == STATES[TABLES[d][ev][s]]["num"], (d, ev, s)
    with pytest.raises(ValueError):
        proto_sctp.next_state(0, 10, 0)


# ---- events from chunks ----------------------------------------------------------------------

def test_every_chunk_type_maps_to_its_event():
    """All 256 first-chunk types. From INIT1, an OUTPUT packet tells every event apart but DATA
    from SHUTDOWN_COMPLETE, which an INPUT packet separates (reference tables)."""
    eng = sctp_engine(FWD_MASQ, conn_reuse_mode=0)
    packets, expect = [], []
    t = 0.0
    for ctype in range(256):
        for k, d in enumerate(("OUTPUT", "INPUT")):
            a = Assoc(20000 + 2 * ctype + k)
            packets.append((t, a.c("INIT")))
            ch = [chunk(ctype, 0, b"\0" * 16)]
            packets.append((t + 0.0001, a.s(chunks=ch) if d == "OUTPUT" else a.c(chunks=ch)))
            expect.append((ctype, d, TABLES[d][CHUNK_EVENT[ctype]]["I1"]))
            t += 0.0005
    dec = run(eng, packets)
    for i, (ctype, d, after) in enumerate(expect):
        assert dec[2 * i]["state"] == "INIT1"
        assert dec[2 * i + 1]["state"] == NAME[after], (ctype, d, dec[2 * i + 1])
    for ctype in range(256):
        assert proto_sctp.EVENT_NAMES[proto_sctp.event_of(ctype)] == CHUNK_EVENT[ctype]
    eng.check_invariants()


@pytest.mark.parametrize("chunks, event", [
    ([chunk("COOKIE_ECHO", 0, b"cookie-bytes"), chunk("ABORT")], "ab"),
    ([chunk("COOKIE_ACK"), chunk("ABORT")], "ab"),
    # a chunk length that is not a multiple of 4: the next chunk starts at the aligned offset
    ([chunk("COOKIE_ECHO", 0, b"c"), chunk("ABORT")], "ab"),
    ([chunk("COOKIE_ECHO", 0, b"cookie-bytes"), chunk("DATA", 3, b"\0" * 12)], "c_e"),
    ([chunk("COOKIE_ECHO", 0, b"cookie-bytes"), chunk("SACK", 0, b"\0" * 12), chunk("ABORT")], "c_e"),
    # only a cookie chunk looks at the chunk after it
    ([chunk("DATA", 3, b"\0" * 12), chunk("ABORT")], "d"),
    ([chunk("ERROR", 0, b"\0\3\0\4"), chunk("ABORT")], "err"),
    # a COOKIE_ECHO whose length field is below 4 is not followed
    ([chunk("COOKIE_ECHO", 0, b"", length=2), chunk("ABORT")], "c_e"),
])
def test_bundles(chunks, event):
    """A COOKIE_ECHO / COOKIE_ACK followed by an ABORT counts as ABORT (section 4.2)."""
    for d in ("INPUT", "OUTPUT"):
        eng = sctp_engine(FWD_MASQ, conn_reuse_mode=0)
        a = Assoc(30000)
        first = send(eng, 0.0, a.c("INIT"))
        got = send(eng, 0.01, a.s(chunks=chunks) if d == "OUTPUT" else a.c(chunks=chunks))
        assert first["state"] == "INIT1"
        assert got["state"] == NAME[TABLES[d][event]["I1"]], (d, event, got)


def test_packet_without_a_chunk():
    """The kernel finds no chunk header: no transition (set_sctp_state returns), but the packet
    is forwarded and the timer re-armed with the state's timeout. Without an entry it is never
    scheduled."""
    eng = sctp_engine(FWD_MASQ, conn_reuse_mode=0, sloppy_sctp=1)
    a = Assoc(30100)
    send(eng, 0.0, a.c("INIT"))
    send(eng, 0.01, a.s("INIT_ACK"))
    bare = sctp_frame(CLIENT, 30100, VIP, VPORT, TAG_S, [])
    d = send(eng, 3.0, bare)
    assert (d["action"], d["state"], d["old_state"]) == ("hit", "C-SENT", "C-SENT")
    r = conn_rows(eng, 30100)[0]
    assert (r["deadline_ns"] - T0) / 1e9 == pytest.approx(3.0 + 61)
    # no entry: the kernel drops it (NF_DROP); the engine's admission hook can only refuse, so
    # it is passed as malformed, never scheduled
    d = send(eng, 3.01, sctp_frame(CLIENT, 30101, VIP, VPORT, 0, []))
    assert (d["action"], d["reason"], d["rs"]) == ("pass", "malformed", None)
    assert len(conn_rows(eng)) == 1
    # a real chunk of type 255 is a chunk like any other (an unknown type: DATA)
    d = send(eng, 3.02, sctp_frame(CLIENT, 30102, VIP, VPORT, 0, [chunk(255, 0, b"\0" * 4)]))
    assert (d["action"], d["state"]) == ("new", "ESTABLISHED")


def ipv6_frame(src, dst, l4, hop_by_hop=False):
    """Ethernet + IPv6 (+ an 8-byte Hop-by-Hop header with a PadN option) + ``l4`` (SCTP)."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    ext = struct.pack("!BB6s", SCTP, 0, b"\x01\x04\0\0\0\0") if hop_by_hop else b""
    nxt = 0 if hop_by_hop else SCTP
    return ether(struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(l4), nxt, 64, s, d) + ext + l4)


def test_ipv6_extension_header_shifts_the_event():
    """set_sctp_state takes sizeof(struct ipv6hdr) as the IPv6 header length, so with an
    extension header it reads the 'chunk type' from the SCTP header itself: behind an 8-byte
    Hop-by-Hop header that is the first byte of the verification tag, 0 in an INIT, i.e. DATA.
    Scheduling and the reuse logic read the real chunk."""
    vip6, client6, rs6 = "2001:db8:1::10", "2001:db8:9::1", "2001:db8:2::11"
    svc = service(addr=vip6, proto=SCTP, port=VPORT, dport=VPORT, fwd=FWD_DROUTE, dests=(rs6,))
    eng = engine(svc, conn_reuse_mode=0)
    init = [default_chunk("INIT", TAG_C)]
    plain = send(eng, 0.0, ipv6_frame(client6, vip6, sctp_l4(40000, VPORT, 0, init)))
    shifted = send(eng, 0.1, ipv6_frame(client6, vip6, sctp_l4(40001, VPORT, 0, init), True))
    assert (plain["action"], plain["state"]) == ("new", "INIT1")
    assert (shifted["action"], shifted["state"]) == ("new", "ESTABLISHED")
    assert counters(eng, rs6) == (1, 1)
    # a tag whose first byte is 6 reads as ABORT: INPUT_ONLY ab from ES -> CLOSED
    l4 = sctp_l4(40001, VPORT, 0x06000000, [default_chunk("DATA", TAG_C)])
    assert send(eng, 0.2, ipv6_frame(client6, vip6, l4, True))["state"] == "CLOSED"
    # on the plain association (INIT1) a DATA behind the header whose tag starts with 10 reads
    # as COOKIE_ECHO: INPUT_ONLY c_e from I1 -> ESTABLISHED (the DATA itself would leave INIT1)
    l4 = sctp_l4(40000, VPORT, 0x0A000000, [default_chunk("DATA", TAG_C)])
    d = send(eng, 0.3, ipv6_frame(client6, vip6, l4, True))
    assert (d["action"], d["state"]) == ("hit", "ESTABLISHED")


# ---- vector V12 and the counters --------------------------------------------------------------

def test_v12_nat():
    """C INIT: NO->I1 (4 s, inactive). RS INIT_ACK: I1->CS. C COOKIE_ECHO: CS->CR. RS COOKIE_ACK:
    CR->ES (active, 900 s). C SHUTDOWN: ES->SR (inactive). RS SHUTDOWN_ACK: SR->SA. C
    SHUTDOWN_COMPLETE: SA->CL (61 s)."""
    eng = sctp_engine(FWD_MASQ)
    a = Assoc(45100)
    steps = [
        (0.00, a.c("INIT"), "in", "INIT1", 4, (0, 1)),
        (0.01, a.s("INIT_ACK"), "out", "C-SENT", 61, (0, 1)),
        (0.02, a.c("COOKIE_ECHO"), "in", "C-REPLIED", 61, (0, 1)),
        (0.03, a.s("COOKIE_ACK"), "out", "ESTABLISHED", 900, (1, 0)),
        (0.04, a.c("DATA"), "in", "ESTABLISHED", 900, (1, 0)),
        (0.05, a.s("SACK"), "out", "ESTABLISHED", 900, (1, 0)),
        (0.06, a.c("SHUTDOWN"), "in", "S-RECEIVED", 61, (0, 1)),
        (0.07, a.s("SHUTDOWN_ACK"), "out", "S-ACK-SENT", 61, (0, 1)),
        (0.08, a.c("SHUTDOWN_COMPLETE"), "in", "CLOSED", 61, (0, 1)),
    ]
    for t, frame, direction, st, timeout, cnt in steps:
        d = send(eng, t, frame)
        assert (d["action"], d["dir"], d["state"], d["rs"]) == (
            "new" if t == 0 else "hit", direction, st, RS1), (t, d)
        r = conn_rows(eng, 45100)[0]
        assert r["state"] == st and r["expire"] == timeout
        assert r["destination"] == f"{RS1}:{RPORT}"
        assert counters(eng) == cnt, (t, st)
    eng.check_invariants()


def test_v12_server_initiated_shutdown():
    """Errata 4: a client SHUTDOWN_ACK moves a server-initiated shutdown straight to CLOSED
    (INPUT s_a from SS), and the server's SHUTDOWN_COMPLETE leaves it there."""
    eng = sctp_engine(FWD_MASQ)
    a = Assoc(45101)
    states = [send(eng, t, f)["state"] for t, f in [
        (0.0, a.c("INIT")), (0.01, a.s("INIT_ACK")), (0.02, a.c("COOKIE_ECHO")),
        (0.03, a.s("COOKIE_ACK")), (0.04, a.s("SHUTDOWN")), (0.05, a.c("SHUTDOWN_ACK")),
        (0.06, a.s("SHUTDOWN_COMPLETE"))]]
    assert states == ["INIT1", "C-SENT", "C-REPLIED", "ESTABLISHED", "S-SENT", "CLOSED", "CLOSED"]


def test_v12_dr():
    """DR (INPUT_ONLY): INIT NO->I1, COOKIE_ECHO I1->ES (active), SHUTDOWN ES->SR, then
    SHUTDOWN_COMPLETE SR->CL."""
    eng = sctp_engine(FWD_DROUTE)
    a = Assoc(45000)
    got = []
    for t, f in [(0.0, a.c("INIT")), (0.01, a.c("COOKIE_ECHO")), (0.02, a.c("DATA")),
                 (0.03, a.c("SHUTDOWN")), (0.04, a.c("SHUTDOWN_COMPLETE"))]:
        d = send(eng, t, f)
        got.append((d["state"], counters(eng), bool(d["flags"] & 0x08)))
    assert got == [("INIT1", (0, 1), True), ("ESTABLISHED", (1, 0), True), ("ESTABLISHED", (1, 0), True),
                   ("S-RECEIVED", (0, 1), True), ("CLOSED", (0, 1), True)]


def test_v12_dr_reply_inspection_clears_nooutput():
    """A DR reply that passes the director (dr_replies="inspect", 6.1) runs the OUTPUT table and
    clears NOOUTPUT, so the next client packet uses the INPUT table: COOKIE_ECHO from C-SENT
    goes to C-REPLIED, not ESTABLISHED."""
    eng = engine(sctp_service(FWD_DROUTE), dr_replies="inspect")
    a = Assoc(45002)
    assert send(eng, 0.0, a.c("INIT"))["state"] == "INIT1"
    reply = sctp_frame(VIP, VPORT, CLIENT, 45002, TAG_C, [default_chunk("INIT_ACK", TAG_S)])
    d = send(eng, 0.01, reply)
    assert (d["dir"], d["state"], d["flags"] & 0x08) == ("out", "C-SENT", 0)
    assert send(eng, 0.02, a.c("COOKIE_ECHO"))["state"] == "C-REPLIED"


def test_abort_after_cookie_echo():
    """NAT: INIT, INIT_ACK (C-SENT), then COOKIE_ECHO bundled with ABORT: INPUT ab from CS ->
    CLOSED. DR: INIT, COOKIE_ECHO + ABORT: INPUT_ONLY ab from I1 -> CLOSED, where a plain
    COOKIE_ECHO gives ESTABLISHED. The association never counts as active."""
    bundle = [chunk("COOKIE_ECHO", 0, b"cookie-bytes"), chunk("ABORT")]
    eng = sctp_engine(FWD_MASQ)
    a = Assoc(45200)
    send(eng, 0.0, a.c("INIT"))
    assert send(eng, 0.01, a.s("INIT_ACK"))["state"] == "C-SENT"
    d = send(eng, 0.02, a.c(chunks=bundle))
    assert (d["action"], d["state"]) == ("hit", "CLOSED")
    assert counters(eng) == (0, 1)
    assert conn_rows(eng, 45200)[0]["expire"] == 61

    eng = sctp_engine(FWD_DROUTE)
    a, b = Assoc(45201), Assoc(45202)
    send(eng, 0.0, a.c("INIT"))
    send(eng, 0.0, b.c("INIT"))
    assert send(eng, 0.01, a.c(chunks=bundle))["state"] == "CLOSED"
    assert send(eng, 0.01, b.c("COOKIE_ECHO"))["state"] == "ESTABLISHED"
    assert counters(eng) == (1, 1)
    # ABORT on an established association (INPUT_ONLY ab from ES)
    assert send(eng, 0.02, b.c("ABORT"))["state"] == "CLOSED"
    assert counters(eng) == (0, 2)


def test_abort_from_the_server_rejects_init():
    """OUTPUT ab from INIT1 is REJECTED (4 s)."""
    eng = sctp_engine(FWD_MASQ)
    a = Assoc(45210)
    send(eng, 0.0, a.c("INIT"))
    assert send(eng, 0.01, a.s("ABORT"))["state"] == "REJECTED"
    assert conn_rows(eng, 45210)[0]["expire"] == 4
    eng.advance(T0 + int(4.02e9))
    assert conn_rows(eng, 45210) == []


# ---- scheduling admission: sloppy_sctp -------------------------------------------------------

FIRST_CHUNKS = ["DATA", "SACK", "HEARTBEAT", "COOKIE_ECHO", "SHUTDOWN", "INIT_ACK", "ERROR",
                "COOKIE_ACK", "SHUTDOWN_ACK", "SHUTDOWN_COMPLETE", "HEARTBEAT_ACK"]


@pytest.mark.parametrize("fwd", [FWD_MASQ, FWD_DROUTE])
def test_sloppy_sctp(fwd):
    """Without an entry: INIT always schedules; ABORT never; any other first chunk only with
    sloppy_sctp=1, and then starts from NONE through the INPUT (NAT) or INPUT_ONLY (DR) table."""
    table = "INPUT" if fwd == FWD_MASQ else "INPUT_ONLY"
    for sloppy in (0, 1):
        eng = sctp_engine(fwd, sloppy_sctp=sloppy)
        for k, name in enumerate(FIRST_CHUNKS + ["INIT", "ABORT"]):
            a = Assoc(46000 + k)
            d = send(eng, 0.001 * k, a.c(name))
            if name == "ABORT":
                assert (d["action"], d["reason"], d["rs"]) == ("pass", "abort_no_conn", None)
            elif name == "INIT" or sloppy:
                assert d["action"] == "new", (sloppy, name, d)
                assert d["state"] == NAME[TABLES[table][CHUNK_EVENT[CID[name]]]["NO"]], (name, d)
            else:
                assert (d["action"], d["reason"], d["rs"]) == ("pass", "not_init", None), (name, d)
        # the bundle COOKIE_ECHO + ABORT is admitted on its first chunk (with sloppy_sctp)
        d = send(eng, 0.5, Assoc(46100).c(chunks=[chunk("COOKIE_ECHO", 0, b"x" * 8), chunk("ABORT")]))
        assert (d["action"], d["state"] if sloppy else d["reason"]) == (
            ("new", "CLOSED") if sloppy else ("pass", "not_init"))
        eng.check_invariants()


def test_no_service_and_port():
    eng = sctp_engine(FWD_MASQ)
    d = send(eng, 0.0, sctp_frame(CLIENT, 1234, VIP, VPORT + 1, 0, [default_chunk("INIT", 1)]))
    assert (d["action"], d["reason"]) == ("pass", "no_service")
    d = send(eng, 0.1, sctp_frame(CLIENT, 1234, "192.0.2.99", VPORT, 0, [default_chunk("INIT", 1)]))
    assert (d["action"], d["reason"]) == ("pass", "no_service")


# ---- port reuse (section 6.1): INIT on an old entry -----------------------------------------

def _close(eng, a, t0):
    """A whole NAT association, client-initiated shutdown; returns the last decision."""
    a.rs = send(eng, t0, a.c("INIT"))["rs"]
    for i, (side, name) in enumerate([("s", "INIT_ACK"), ("c", "COOKIE_ECHO"), ("s", "COOKIE_ACK"),
                                      ("c", "SHUTDOWN"), ("s", "SHUTDOWN_ACK"),
                                      ("c", "SHUTDOWN_COMPLETE")]):
        d = send(eng, t0 + 0.01 * (i + 1), getattr(a, side)(name))
        assert d["rs"] == a.rs
    assert d["state"] == "CLOSED"
    return d


def test_init_reuse_on_closed_mode0():
    """conn_reuse_mode=0: the INIT runs on the old entry, INPUT i from CLOSED -> INIT, same
    server (V12)."""
    eng = sctp_engine(FWD_MASQ, dests=(RS1, RS2), conn_reuse_mode=0)
    a = Assoc(45100)
    old = _close(eng, a, 0.0)
    d = send(eng, 3.0, a.c("INIT"))
    assert (d["action"], d["old_state"], d["state"], d["rs"], d["conn"]) == (
        "hit", "CLOSED", "INIT", old["rs"], old["conn"])
    assert d["flags"] & 0x01 and d["reuse_of"] == old["conn"]
    assert len(conn_rows(eng, 45100)) == 1


def test_init_reuse_on_closed_mode1():
    """conn_reuse_mode=1: CLOSED is expected; no conntrack -> no drop: the old entry is expired
    and the INIT scheduled anew (rr moves on to the other server)."""
    eng = sctp_engine(FWD_MASQ, dests=(RS1, RS2), conn_reuse_mode=1)
    a = Assoc(45100)
    old = _close(eng, a, 0.0)
    a.rs = RS2 if old["rs"] == RS1 else RS1
    d = send(eng, 3.0, a.c("INIT"))
    assert (d["action"], d["reason"], d["state"], d["rs"]) == ("resched", "reuse_expected", "INIT1", a.rs)
    assert d["conn"] != old["conn"] and d["reuse_of"] == old["conn"]
    # the old entry is gone with the next packet; the new one runs its handshake
    d = send(eng, 3.01, a.s("INIT_ACK"))
    assert (d["state"], d["rs"]) == ("C-SENT", a.rs)
    rows = conn_rows(eng, 45100)
    assert [(r["state"], r["daddr"]) for r in rows] == [("C-SENT", a.rs)]
    eng.check_invariants()


@pytest.mark.parametrize("mode", [1, 2])
def test_init_on_an_association_not_closed_is_not_rescheduled(mode):
    """Only CLOSED is expected: an INIT on an ESTABLISHED association stays on it (INPUT i from
    ES -> ES), as on a REJECTED one (RJ -> IN)."""
    eng = sctp_engine(FWD_MASQ, dests=(RS1, RS2), conn_reuse_mode=mode)
    a = Assoc(45300)
    first = send(eng, 0.0, a.c("INIT"))
    a.rs = first["rs"]
    for i, name in enumerate(["INIT_ACK", "COOKIE_ECHO", "COOKIE_ACK"]):
        d = send(eng, 0.01 * (i + 1), a.s(name) if i != 1 else a.c(name))
    assert d["state"] == "ESTABLISHED"
    d = send(eng, 1.0, a.c("INIT"))
    assert (d["action"], d["state"], d["rs"]) == ("hit", "ESTABLISHED", first["rs"])
    b = Assoc(45301)
    b.rs = send(eng, 2.0, b.c("INIT"))["rs"]
    assert send(eng, 2.01, b.s("ABORT"))["state"] == "REJECTED"
    d = send(eng, 2.02, b.c("INIT"))
    assert (d["action"], d["old_state"], d["state"]) == ("hit", "REJECTED", "INIT")


def test_init_reuse_with_persistence_is_not_expected():
    """An entry under a persistence template has a controller: never 'expected'; the INIT stays
    on it. Reaching ESTABLISHED marks the template ASSURED."""
    eng = sctp_engine(FWD_MASQ, dests=(RS1, RS2), conn_reuse_mode=1,
                      svc_kw={"flags": SVC_F_PERSISTENT, "timeout": 300, "netmask": 32})
    a = Assoc(45400)
    send(eng, 0.0, a.c("INIT"))
    tpl = [r for r in eng.connections() if r["template"]]
    assert len(tpl) == 1 and tpl[0]["state"] == "NONE"
    a.rs = tpl[0]["daddr"]
    send(eng, 0.01, a.s("INIT_ACK"))
    send(eng, 0.02, a.c("COOKIE_ECHO"))
    assert [r["state"] for r in eng.connections() if r["template"]] == ["NONE"]
    send(eng, 0.03, a.s("COOKIE_ACK"))
    assert [r["state"] for r in eng.connections() if r["template"]] == ["ASSURED"]
    for i, f in enumerate([a.c("SHUTDOWN"), a.s("SHUTDOWN_ACK"), a.c("SHUTDOWN_COMPLETE")]):
        d = send(eng, 0.04 + 0.01 * i, f)
    assert d["state"] == "CLOSED"
    d = send(eng, 1.0, a.c("INIT"))
    assert (d["action"], d["state"], d["rs"]) == ("hit", "INIT", a.rs)


def test_init_on_weight0_server_with_expire_nodest_conn():
    """Branch A: expire_nodest_conn and a weight-0 server reschedule an INIT on any of its
    entries, ESTABLISHED included, even with conn_reuse_mode=0."""
    svc = sctp_service(FWD_MASQ, dests=(RS1, RS2))
    eng = engine(svc, conn_reuse_mode=0, expire_nodest_conn=1)
    a = Assoc(45500)
    first = send(eng, 0.0, a.c("INIT"))
    a.rs = first["rs"]
    other = RS2 if a.rs == RS1 else RS1
    for i, f in enumerate([a.s("INIT_ACK"), a.c("COOKIE_ECHO"), a.s("COOKIE_ACK")]):
        send(eng, 0.01 * (i + 1), f)
    assert counters(eng, a.rs) == (1, 0)
    eng.apply(cmd("edit-dest", svc, RealServer(a.rs, RPORT, fwd=FWD_MASQ, weight=0)))
    d = send(eng, 1.0, a.c("INIT"))
    assert (d["action"], d["reason"], d["rs"], d["state"]) == ("resched", "reuse_weight0", other, "INIT1")
    send(eng, 1.01, Assoc(45501).c("DATA"))           # next packet: the old entry is unlinked
    assert counters(eng, a.rs) == (0, 0)


# ---- counters and timeouts -------------------------------------------------------------------

def test_only_established_counts_as_active_for_lc():
    """lc weighs active x 256 + inactive: INIT1 and CLOSED associations are inactive."""
    eng = sctp_engine(FWD_DROUTE, dests=(RS1, RS2), sched="lc")
    a, b, c = Assoc(47000), Assoc(47001), Assoc(47002)
    d1 = send(eng, 0.0, a.c("INIT"))
    send(eng, 0.01, a.c("COOKIE_ECHO"))               # a: ESTABLISHED on d1's server
    d2 = send(eng, 0.02, b.c("INIT"))                 # b: INIT1 on the other one
    assert d2["rs"] != d1["rs"]
    assert counters(eng, d1["rs"]) == (1, 0) and counters(eng, d2["rs"]) == (0, 1)
    d3 = send(eng, 0.03, c.c("INIT"))                 # overheads 256 vs 1
    assert d3["rs"] == d2["rs"]
    for f in (b.c("COOKIE_ECHO"), b.c("SHUTDOWN"), b.c("SHUTDOWN_COMPLETE")):
        send(eng, 0.04, f)
    assert counters(eng, d2["rs"]) == (0, 2)


def test_timeouts_and_expiry():
    """INIT1 lives 4 s, ESTABLISHED 900 s, CLOSED 61 s; after that the tuple schedules afresh."""
    eng = sctp_engine(FWD_DROUTE, dests=(RS1, RS2), conn_reuse_mode=0)
    a, b = Assoc(48000), Assoc(48001)
    send(eng, 0.0, a.c("INIT"))
    send(eng, 0.0, b.c("INIT"))
    send(eng, 0.0, b.c("COOKIE_ECHO"))
    assert {r["cport"]: r["expire"] for r in conn_rows(eng)} == {48000: 4, 48001: 900}
    eng.advance(T0 + int(3.9e9))
    assert len(conn_rows(eng)) == 2
    eng.advance(T0 + int(4.1e9))
    assert [r["cport"] for r in conn_rows(eng)] == [48001]
    d = send(eng, 5.0, a.c("COOKIE_ECHO"))
    assert (d["action"], d["reason"]) == ("pass", "not_init")
    send(eng, 10.0, b.c("SHUTDOWN"))
    send(eng, 10.0, b.c("SHUTDOWN_COMPLETE"))
    assert conn_rows(eng, 48001)[0]["expire"] == 61
    eng.advance(T0 + int(70.9e9))
    assert len(conn_rows(eng, 48001)) == 1
    eng.advance(T0 + int(71.1e9))
    assert conn_rows(eng, 48001) == []
    d = send(eng, 72.0, b.c("INIT"))
    assert (d["action"], d["flags"] & 0x01) == ("new", 0)
    eng.check_invariants()


def test_state_names_are_the_kernels():
    """/proc/net/ip_vs_conn prints the abbreviated names (sctp_state_name_table)."""
    assert [state_name(SCTP, STATES[c]["num"]) for c in COLUMNS] == [STATES[c]["name"] for c in COLUMNS]
    assert state_name(SCTP, 14) == "ERR!"
    assert proto_sctp.DEFAULT_TIMEOUTS[:14] == tuple(STATES[c]["timeout"] for c in COLUMNS)
    assert "not_init" in REASONS and "abort_no_conn" in REASONS


def test_ipv6_association():
    vip6, client6, rs6 = "2001:db8:1::10", "2001:db8:9::1", "2001:db8:2::11"
    eng = engine(service(addr=vip6, proto=SCTP, port=VPORT, dport=RPORT, dests=(rs6,)))
    a = Assoc(45600, client=client6, vip=vip6, rs=rs6)
    states = [send(eng, 0.01 * i, f)["state"] for i, f in enumerate(
        [a.c("INIT"), a.s("INIT_ACK"), a.c("COOKIE_ECHO"), a.s("COOKIE_ACK"), a.c("DATA")])]
    assert states == ["INIT1", "C-SENT", "C-REPLIED", "ESTABLISHED", "ESTABLISHED"]
    assert counters(eng, rs6) == (1, 0)
    assert conn_rows(eng)[0]["source"] == f"[{client6}]:45600"
