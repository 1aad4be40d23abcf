"""Kernel behaviour variants: ``Config.kernel`` (a version string) -> the engine's switches.

IPVS changed its port-reuse and deleted-server behaviour several times; an offline replay
must say which kernel it imitates. The switches and the versions that introduced them
(semantics reference, section 6.6):

================  ===============================================================  =========
switch            behaviour                                                         since
================  ===============================================================  =========
reuse_variant     2015 (d752c3645717): conn_reuse_mode gates the reuse block; a     4.1
                  SYN/INIT on an expected entry (or on a weight-0 server's entry
                  with expire_nodest_conn) is always rescheduled, never dropped.
                  2016 (f719e3754ee2): as 2015 but DROP when the entry has NFCT     4.6
                  and the packet has a conntrack ("uses_ct"): the 1-second delay.
                  2020 (f0a5e4d7a594): DROP only when the conntrack is confirmed    5.9
                  (old_ct); NFCT of the old entry cleared otherwise.
                  2021 (c95c07836fa4): the weight-0 branch no longer needs          5.16
                  conn_reuse_mode != 0.
close_expected    TCP CLOSE (after an RST) counts as an expected reuse state.       4.19 (*)
tcp_active_v48    SYN_SENT/SYN_RECV/SYNACK count in ActiveConn (be2cef49904b).      4.8
nodest_block_v59  the check-server-status block runs before scheduling and, with     5.9
                  expire_nodest_conn, reschedules the packet (04231e52d355).
nodest_flush      deleting a server flushes its entries (expire_nodest_conn).        5.9
dr_reply_inspect  replies of DR/TUN entries that pass the director are matched       5.11 (*)
                  and run the OUTPUT state machine (clearing NOOUTPUT).
================  ===============================================================  =========

(*) not read from a release tag. CLOSE is absent from the code of about 4.6-4.12 and present
in 4.19; the commit that added it was not identified, so 4.13-4.18 are modelled without it.
The reply-inspection patch was posted in October 2020 and is taken as 5.11.

Kernels before 4.1 (no conn_reuse_mode sysctl) are not modelled and give a ConfigError.

The old_ct model. IPVS drops a reused SYN (and, with expire_nodest_conn, a packet of a deleted
server's connection) when the packet carries a *confirmed* netfilter conntrack; a capture does
not show netfilter, so the engine models it (``Engine.ct_model``):

* ``"tracker"`` (default): with sysctl conntrack=0 IPVS detaches its packets from conntrack, so
  no conntrack is ever confirmed and old_ct is false. With conntrack=1 the engine keeps, for each
  connection entry, the state netfilter's tracker holds for the same tuple, from the packets the
  director sees (client packets; replies too for NAT, or DR/TUN with ``dr_replies="inspect"``):
  the TCP tracker's state table, its rule that a SYN re-opens a TIME_WAIT/CLOSE conntrack only
  after a FIN was seen or when the last segment was an RST from the SYN's side, its deletion of a
  conntrack whose only "reply" is an RST (so in DR, where it never sees a reply, any client RST
  deletes it), invalid segments (flag combinations netfilter rejects, an ACK on a SYN_SENT
  conntrack) that leave without a conntrack, and its timeouts (SYN_SENT 2 min without renewal in
  DR; ESTABLISHED picked up mid-stream 5 min); UDP: 30 s, 120 s once replies were seen. The
  packet's conntrack is confirmed unless the packet created it (first packet, re-open, after a
  timeout) or is invalid. Not modelled: TCP sequence windows (every segment counts as in
  window), conntracks outliving their IPVS entry with NFCT cleared, replies that start a
  conntrack of the reversed tuple. This reproduces the oracle's conntrack fixtures: NAT
  TIME_WAIT and client-RST CLOSE reuse rescheduled, server-RST CLOSE and no-flag CLOSE reuse
  dropped; DR FIN_WAIT/TIME_WAIT/no-flag reuse dropped, client-RST reuse rescheduled.
* ``"simple"``: from the IPVS entry alone: DR/TUN entries still carrying NOOUTPUT give true;
  others false in TIME_WAIT and CLOSE (SCTP CLOSED), true otherwise (UDP: true).
* ``"never"`` / ``"always"``: old_ct false / true whenever conntrack=1.
"""
from __future__ import annotations

import re

from ipvsflow.config import ConfigError

REUSE_2015, REUSE_2016, REUSE_2020, REUSE_2021 = 1, 2, 3, 4
REUSE_NAMES = {REUSE_2015: "2015", REUSE_2016: "2016", REUSE_2020: "2020", REUSE_2021: "2021"}

CT_MODELS = {"tracker": 0, "never": 1, "always": 2, "simple": 3}

OLDEST = (4, 1)


def parse_kernel(version) -> tuple[int, int]:
    """``"6.1"``, ``"5.15.0-91-generic"``, ``"v4.19"``, ``(5, 10)`` -> (major, minor)."""
    if isinstance(version, (tuple, list)) and len(version) >= 2:
        try:
            return int(version[0]), int(version[1])
        except (TypeError, ValueError):
            pass
    m = re.match(r"^\s*v?(\d+)\.(\d+)", str(version))
    if not m:
        raise ConfigError(f"kernel version {version!r} is not of the form MAJOR.MINOR (e.g. 6.1)")
    return int(m.group(1)), int(m.group(2))


def variant_for(version) -> dict:
    """The engine switches that imitate kernel ``version``."""
    v = parse_kernel(version)
    if v < OLDEST:
        raise ConfigError(
            f"kernel {v[0]}.{v[1]} predates conn_reuse_mode (4.1); the oldest modelled kernel is 4.1")
    if v >= (5, 16):
        reuse = REUSE_2021
    elif v >= (5, 9):
        reuse = REUSE_2020
    elif v >= (4, 6):
        reuse = REUSE_2016
    else:
        reuse = REUSE_2015
    return {
        "kernel": f"{v[0]}.{v[1]}",
        "reuse_variant": reuse,
        "close_expected": v >= (4, 19),
        "tcp_active_v48": v >= (4, 8),
        "nodest_block_v59": v >= (5, 9),
        "nodest_flush": v >= (5, 9),
        "dr_reply_inspection": v >= (5, 11),
    }


def describe(version) -> str:
    """One line naming the variant, for reports."""
    s = variant_for(version)
    return (f"kernel {s['kernel']}: reuse {REUSE_NAMES[s['reuse_variant']]}"
            f"{', CLOSE reusable' if s['close_expected'] else ''}"
            f", active states {'v4.8+' if s['tcp_active_v48'] else 'ESTABLISHED only'}"
            f", deleted-server handling {'v5.9+' if s['nodest_block_v59'] else 'pre-5.9'}"
            f", DR reply inspection {'on' if s['dr_reply_inspection'] else 'off'}")
