"""Names for the codes in the engine's decision records and connection listings.

Every table is a tuple indexed by the code, so ``ACTIONS[code]`` and, vectorised,
``numpy.asarray(ACTIONS)[decisions["action"]]`` both work; the ``*_CODES`` dicts map back.
"""
from __future__ import annotations

# decision_t.action (defs.pxd ACT_*)
ACTIONS = ("-", "new", "hit", "resched", "drop", "pass", "invalid")
ACT_NEW, ACT_HIT, ACT_RESCHED, ACT_DROP, ACT_PASS, ACT_INVALID = range(1, 7)

# decision_t.dir (defs.pxd DIR_*)
DIRS = ("-", "in", "out")
DIR_NONE, DIR_IN, DIR_OUT = range(3)

# decision_t.flags (defs.pxd DF_*)
DF_REUSE = 0x01         # the SYN/INIT found an existing entry (port reuse or retransmission)
DF_TEMPLATE = 0x02      # scheduled through a persistence template
DF_ICMP = 0x04          # ICMP error mapped to the connection of its embedded tuple
DF_NOOUTPUT = 0x08      # the connection still has NOOUTPUT after this packet
FLAG_NAMES = {DF_REUSE: "reuse", DF_TEMPLATE: "template", DF_ICMP: "icmp", DF_NOOUTPUT: "nooutput"}

# decision_t.reason (core.pxd R_*), same order.
REASONS = (
    "",                             # R_NONE
    # invalid
    "fragment",                     # non-first IP fragment: no L4 header to look up
    "not_ip",
    "unknown_linktype",
    "truncated",
    "malformed",
    # pass
    "not_ipvs_proto",               # a protocol IPVS has no handler for
    "proto_not_modelled",           # (unused: every protocol IPVS handles is modelled)
    "no_service",                   # no entry and no virtual service
    "not_syn",                      # TCP without SYN and no entry (sloppy_tcp off)
    "rst_no_conn",                  # a TCP RST never creates an entry
    "ftp_data",                     # client source port 20 is never scheduled
    "ftp_other_port",               # other port of an FTP virtual address
    "dr_reply_not_seen",            # VIP -> client reply of a DR/TUN entry (not on the director path)
    "dr_reply_ignored",             # same, director on the path, kernel before reply inspection
    "nodest_expired",               # entry of a deleted server expired; packet not schedulable
    # drop
    "no_dest",                      # no server available: ICMP port unreachable + drop
    "port_zero",                    # non-persistent port-0 service never schedules
    "conntrack_drop",               # port reuse with a confirmed conntrack: client must retransmit
    "dest_unavailable",             # entry's server deleted, expire_nodest_conn off (or < 5.9)
    "nodest_conntrack_drop",        # entry's server deleted and expired, confirmed conntrack
    "table_full",                   # no free connection entry
    "nat_icmp_send",                # reply from a NAT server without an entry (nat_icmp_send)
    # resched / new
    "reuse_expected",               # SYN/INIT on an entry in TIME_WAIT/CLOSE/(FIN_WAIT)/CLOSED
    "reuse_weight0",                # SYN/INIT on an entry of a weight-0 server (expire_nodest_conn)
    "dest_deleted",                 # entry of a deleted server expired, packet rescheduled
    "cache_bypass",                 # fwmark service without servers, cache_bypass: bypass entry
    # pass (appended)
    "not_init",                     # SCTP without INIT and no entry (sloppy_sctp off)
    "abort_no_conn",                # an SCTP ABORT never creates an entry
    "icmp_no_conn",                 # ICMP error about a connection IPVS does not have
    "icmp_unrelated",               # ICMP error embedding a protocol IPVS does not handle
    "icmp_fragmented",              # (drop) a fragmented ICMPv6 error cannot be one
    "related_only",                 # AH/ESP without its UDP/500 connection: never schedules
)

ACTION_CODES = {n: i for i, n in enumerate(ACTIONS) if i}
DIR_CODES = {n: i for i, n in enumerate(DIRS)}
REASON_CODES = {n: i for i, n in enumerate(REASONS)}

STATE_NONE = 0xFF               # decision_t.state / old_state when there is no connection

# Protocol state names as /proc/net/ip_vs_conn and ipvsadm -Lnc print them.
TCP_STATE_NAMES = ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT",
                   "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK")
UDP_STATE_NAMES = ("UDP",)
# (sctp_state_name_table: the kernel prints the cookie and shutdown states abbreviated)
SCTP_STATE_NAMES = ("NONE", "INIT1", "INIT", "C-SENT", "C-REPLIED", "C-WAIT", "COOKIE",
                    "C-ECHOED", "ESTABLISHED", "S-SENT", "S-RECEIVED", "S-ACK-SENT", "REJECTED",
                    "CLOSED")
TEMPLATE_STATE_NAMES = ("NONE", "ASSURED")
PROTO_STATE_NAMES = {6: TCP_STATE_NAMES, 17: UDP_STATE_NAMES, 132: SCTP_STATE_NAMES}
TCP_STATE_CODES = {n: i for i, n in enumerate(TCP_STATE_NAMES)}
SCTP_STATE_CODES = {n: i for i, n in enumerate(SCTP_STATE_NAMES)}


def state_name(proto: int, state: int, template: bool = False) -> str:
    """Kernel name of a protocol state (``"-"`` for STATE_NONE).

    Templates use the template names (NONE / ASSURED) whatever their protocol; protocol 0
    (fwmark templates, IPPROTO_IP) has only NONE. Out-of-range states read "ERR!", as the
    kernel's state_name functions print them.
    """
    state = int(state)
    if state == STATE_NONE:
        return "-"
    if template:
        return TEMPLATE_STATE_NAMES[state] if 0 <= state < len(TEMPLATE_STATE_NAMES) else "ERR!"
    names = PROTO_STATE_NAMES.get(int(proto))
    if names is None:
        return "NONE" if int(proto) == 0 else "ERR!"
    return names[state] if 0 <= state < len(names) else "ERR!"


def proto_name(proto: int) -> str:
    """ip_vs_proto_name: TCP, UDP, SCTP, ICMP, ICMPv6, IP (0), else IP_<n>."""
    return {0: "IP", 6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"}.get(
        int(proto), f"IP_{int(proto)}")


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]
