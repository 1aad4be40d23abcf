"""Protocol state tables of Linux IPVS, kept as the text they were copied from and parsed here.

The TCP tables are the compact arrays of section 3.4 of the semantics reference (column order
NO ES SS SR FW TW CL CW LA LI SA, one string per event); the SCTP tables are the markdown tables
of section 4.3 (one row per event, one column per current state). Nothing here is computed: a
cell of a table is the next state exactly as the reference prints it.
"""
from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# TCP (ip_vs_proto_tcp.c)

TCP_STATES = ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT", "CLOSE",
              "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK")
TCP_SHORT = ("NO", "ES", "SS", "SR", "FW", "TW", "CL", "CW", "LA", "LI", "SA")
TCP_NUM = {name: i for i, name in enumerate(TCP_STATES)}
TCP_FROM_SHORT = {s: TCP_STATES[i] for i, s in enumerate(TCP_SHORT)}

# Default timeouts in seconds (tcp_timeouts); ESTABLISHED and FIN_WAIT follow `ipvsadm --set`.
TCP_TIMEOUTS = {"NONE": 2, "ESTABLISHED": 900, "SYN_SENT": 120, "SYN_RECV": 60, "FIN_WAIT": 120,
                "TIME_WAIT": 120, "CLOSE": 10, "CLOSE_WAIT": 60, "LAST_ACK": 30, "LISTEN": 120,
                "SYNACK": 120}

# States that count in activeconns: v4.8+ (be2cef49904b) and before it.
TCP_ACTIVE_V48 = frozenset({"ESTABLISHED", "SYN_SENT", "SYN_RECV", "SYNACK"})
TCP_ACTIVE_OLD = frozenset({"ESTABLISHED"})

_TCP_TABLE_TEXT = '''
NORMAL = {
 "INPUT":      {"syn": "SR ES ES SR SR SR SR SR SR SR SR", "fin": "CL CW SS TW TW TW CL CW LA LI TW",
                "ack": "ES ES SS ES FW TW CL CW CL LI ES", "rst": "CL CL CL SR CL CL CL CL LA LI SR"},
 "OUTPUT":     {"syn": "SS ES SS SR SS SS SS SS SS LI SR", "fin": "TW FW SS TW FW TW CL TW LA LI TW",
                "ack": "ES ES SS ES FW TW CL CW LA ES ES", "rst": "CL CL SS CL CL TW CL CL CL CL CL"},
 "INPUT_ONLY": {"syn": "SR ES ES SR SR SR SR SR SR SR SR", "fin": "CL FW SS TW FW TW CL CW LA LI TW",
                "ack": "ES ES SS ES FW TW CL CW CL LI ES", "rst": "CL CL CL SR CL CL CL CL LA LI CL"}}
DOS = {
 "INPUT":      {"syn": "SR ES ES SR SR SR SR SR SR SR SA", "fin": "CL CW SS TW TW TW CL CW LA LI SA",
                "ack": "ES ES SS SR FW TW CL CW CL LI SA", "rst": "CL CL CL SR CL CL CL CL LA LI CL"},
 "OUTPUT":     {"syn": "SS ES SS SA SS SS SS SS SS LI SA", "fin": "TW FW SS TW FW TW CL TW LA LI TW",
                "ack": "ES ES SS ES FW TW CL CW LA ES ES", "rst": "CL CL SS CL CL TW CL CL CL CL CL"},
 "INPUT_ONLY": {"syn": "SA ES ES SR SA SA SA SA SA SA SA", "fin": "CL FW SS TW FW TW CL CW LA LI TW",
                "ack": "ES ES SS ES FW TW CL CW CL LI ES", "rst": "CL CL CL SR CL CL CL CL LA LI CL"}}
'''


def _parse_tcp_tables(text: str) -> dict:
    """{"NORMAL"|"DOS": {direction: {event: {current state name: next state name}}}}."""
    namespace: dict = {}
    exec(compile(text, "<tcp tables>", "exec"), {}, namespace)   # the text is two dict literals
    out = {}
    for table_name in ("NORMAL", "DOS"):
        table = {}
        for direction, events in namespace[table_name].items():
            table[direction] = {}
            for event, row in events.items():
                cells = row.split()
                if len(cells) != len(TCP_SHORT):
                    raise ValueError(f"{table_name}.{direction}.{event}: {len(cells)} cells")
                table[direction][event] = {TCP_STATES[i]: TCP_FROM_SHORT[c] for i, c in enumerate(cells)}
        out[table_name] = table
    return out


TCP_TABLES = _parse_tcp_tables(_TCP_TABLE_TEXT)

# TCP flag bits as on the wire.
TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK, TH_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def tcp_event(flags: int):
    """tcp_state_idx: RST > SYN > FIN > ACK; None when none of them is set."""
    if flags & TH_RST:
        return "rst"
    if flags & TH_SYN:
        return "syn"
    if flags & TH_FIN:
        return "fin"
    if flags & TH_ACK:
        return "ack"
    return None


# ---------------------------------------------------------------------------------------------
# UDP (ip_vs_proto_udp.c): one state, proc name "UDP".
UDP_STATES = ("UDP",)
UDP_TIMEOUT = 300

# ---------------------------------------------------------------------------------------------
# SCTP (ip_vs_proto_sctp.c)

SCTP_STATES = ("NONE", "INIT1", "INIT", "COOKIE_SENT", "COOKIE_REPLIED", "COOKIE_WAIT", "COOKIE",
               "COOKIE_ECHOED", "ESTABLISHED", "SHUTDOWN_SENT", "SHUTDOWN_RECEIVED",
               "SHUTDOWN_ACK_SENT", "REJECTED", "CLOSED")
SCTP_PROC_NAMES = {"NONE": "NONE", "INIT1": "INIT1", "INIT": "INIT", "COOKIE_SENT": "C-SENT",
                   "COOKIE_REPLIED": "C-REPLIED", "COOKIE_WAIT": "C-WAIT", "COOKIE": "COOKIE",
                   "COOKIE_ECHOED": "C-ECHOED", "ESTABLISHED": "ESTABLISHED",
                   "SHUTDOWN_SENT": "S-SENT", "SHUTDOWN_RECEIVED": "S-RECEIVED",
                   "SHUTDOWN_ACK_SENT": "S-ACK-SENT", "REJECTED": "REJECTED", "CLOSED": "CLOSED"}
SCTP_SHORT = ("NO", "I1", "IN", "CS", "CR", "CW", "CO", "CE", "ES", "SS", "SR", "SA", "RJ", "CL")
SCTP_FROM_SHORT = {s: SCTP_STATES[i] for i, s in enumerate(SCTP_SHORT)}
SCTP_NUM = {name: i for i, name in enumerate(SCTP_STATES)}
SCTP_TIMEOUTS = {"NONE": 2, "INIT1": 4, "INIT": 61, "COOKIE_SENT": 61, "COOKIE_REPLIED": 61,
                 "COOKIE_WAIT": 61, "COOKIE": 61, "COOKIE_ECHOED": 61, "ESTABLISHED": 900,
                 "SHUTDOWN_SENT": 61, "SHUTDOWN_RECEIVED": 61, "SHUTDOWN_ACK_SENT": 61,
                 "REJECTED": 4, "CLOSED": 61}
SCTP_ACTIVE = frozenset({"ESTABLISHED"})

_SCTP_TABLE_TEXT = {
    "INPUT": '''
| ev | NO | I1 | IN | CS | CR | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
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
''',
    "OUTPUT": '''
| ev | NO | I1 | IN | CS | CR | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
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
''',
    "INPUT_ONLY": '''
| ev | NO | I1 | IN | CS | CR | CW | CO | CE | ES | SS | SR | SA | RJ | CL |
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
''',
}


def _parse_sctp_table(text: str) -> dict:
    """{event: {current state name: next state name}} from a markdown table."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.strip().splitlines()]
    header = rows[0]
    if header[0] != "ev" or tuple(header[1:]) != SCTP_SHORT:
        raise ValueError(f"unexpected SCTP table header {header}")
    table = {}
    for row in rows[1:]:
        if len(row) != len(header):
            raise ValueError(f"SCTP row {row[0]}: {len(row)} cells")
        table[row[0]] = {SCTP_FROM_SHORT[col]: SCTP_FROM_SHORT[cell]
                         for col, cell in zip(header[1:], row[1:])}
    return table


SCTP_TABLES = {direction: _parse_sctp_table(text) for direction, text in _SCTP_TABLE_TEXT.items()}

# SCTP chunk ids (RFC 9260) and the event each first chunk gives (sctp_events).
SCTP_DATA, SCTP_INIT, SCTP_INIT_ACK, SCTP_SACK, SCTP_HEARTBEAT, SCTP_HEARTBEAT_ACK = 0, 1, 2, 3, 4, 5
SCTP_ABORT, SCTP_SHUTDOWN, SCTP_SHUTDOWN_ACK, SCTP_ERROR = 6, 7, 8, 9
SCTP_COOKIE_ECHO, SCTP_COOKIE_ACK, SCTP_ECN_ECNE, SCTP_ECN_CWR, SCTP_SHUTDOWN_COMPLETE = 10, 11, 12, 13, 14

_SCTP_EVENT_BY_CHUNK = {SCTP_DATA: "d", SCTP_SACK: "d", SCTP_HEARTBEAT: "d", SCTP_HEARTBEAT_ACK: "d",
                        SCTP_ECN_ECNE: "d", SCTP_ECN_CWR: "d", SCTP_INIT: "i", SCTP_INIT_ACK: "i_a",
                        SCTP_COOKIE_ECHO: "c_e", SCTP_COOKIE_ACK: "c_a", SCTP_SHUTDOWN: "s",
                        SCTP_SHUTDOWN_ACK: "s_a", SCTP_SHUTDOWN_COMPLETE: "s_c", SCTP_ERROR: "err",
                        SCTP_ABORT: "ab"}


def sctp_event(chunk: int, abort_after_cookie: bool = False) -> str:
    """Event of the first chunk; COOKIE_ECHO/COOKIE_ACK followed by ABORT count as ABORT; ids >= 15 are DATA."""
    if chunk in (SCTP_COOKIE_ECHO, SCTP_COOKIE_ACK) and abort_after_cookie:
        return "ab"
    if chunk >= 15:
        return "d"
    return _SCTP_EVENT_BY_CHUNK[chunk]
