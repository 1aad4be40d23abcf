"""Kernel variants, one table: every kernel version the engine imitates x every scenario of the
semantics reference's section 6.6 (the reuse-block history and its companion switches), with the
decision the reference predicts for that version.

Expectations are derived from the reference text only, in two steps, each cited:

* FACTS: per version, the reuse variant, whether TCP CLOSE is an expected reuse state, whether
  SYN_RECV counts as active, whether the server-status block and the deletion flush are the
  5.9 ones and whether DR replies are inspected (section 6.6, its variant table and its
  companion-switch table);
* EXPECT: per scenario, the decision as a function of those facts (sections 6.1-6.4, 6.6,
  the errata and the vectors of section 13, cited at each entry).

Versions are those --kernel documents (4.4, 4.19, 5.9, 5.15, 6.1) plus the first version of each
switch in ipvsflow.engine.variants (4.1, 4.8, 5.11, 5.16) and the last one before it (4.7, 5.8,
5.10). 4.6 and 4.13-4.18 are left out: the reference does not settle them (the 2016 variant
starts at "~v4.6/4.7"; CLOSE appeared "somewhere between ~v4.12 and v4.19").

Setup as in section 13: client 10.0.0.1:40000, VIP 192.0.2.10:80, rr over RS1 then RS2 added in
that order (list [RS2, RS1]): a first connection goes to RS2, a rescheduled one to RS1.
"""
from __future__ import annotations

import struct

import pytest

from engine_helpers import (
    Driver, cmd, engine, ether, ip_packet, service, CLIENT, CPORT, RS1, RS2, VIP, VPORT,
)
from ipvsflow.config import FWD_DROUTE, FWD_MASQ, RealServer
from ipvsflow.engine.variants import variant_for

# ---- per-version facts, semantics reference section 6.6 --------------------------------------
# variant table, "kernels" column: 2015 = v4.1 - ~v4.5/4.6, 2016 = ~v4.6/4.7 - v5.8,
# 2020 = v5.9 - v5.15, 2021 = v5.16+. "CLOSE expected?" column: 2015 no; 2016 absent in OLD-A
# (~v4.6-v4.12, section 0), present in v4.19; 2020 and 2021 yes. Companion switches:
# tcp_active_states be2cef49904b v4.8; nodest_block and nodest_flush 04231e52d355 v5.9;
# dr_reply_inspection ~v5.11.
#          version: (variant, CLOSE expected, SYN_RECV active, 5.9 nodest block+flush, DR replies)
FACTS = {
    "4.1": ("2015", False, False, False, False),
    "4.4": ("2015", False, False, False, False),
    "4.7": ("2016", False, False, False, False),
    "4.8": ("2016", False, True, False, False),
    "4.19": ("2016", True, True, False, False),
    "5.8": ("2016", True, True, False, False),
    "5.9": ("2020", True, True, True, False),
    "5.10": ("2020", True, True, True, False),
    "5.11": ("2020", True, True, True, True),
    "5.15": ("2020", True, True, True, True),
    "5.16": ("2021", True, True, True, True),
    "6.1": ("2021", True, True, True, True),
}
VERSIONS = list(FACTS)
REUSE_IDS = {"2015": 1, "2016": 2, "2020": 3, "2021": 4}      # ipvsflow.engine.variants numbering

RESCHED = ("resched", "reuse_expected", RS1)        # old entry expired, packet scheduled anew
ON_OLD = ("hit", "", RS2)                           # processed on the old entry, old server


def expect(scenario, facts):
    variant, close, active48, nodest59, dr_reply = facts
    return {
        # 6.6: every variant gates the TIME_WAIT reuse on conn_reuse_mode != 0 (2015 and 2016/2020:
        # "whole block only if conn_reuse_mode != 0"; 2021: "branch B needs mode != 0"); the
        # SYN then runs on the old entry (6.1 notes: "INPUT syn from TW ... -> SYN_RECV")
        "tw_mode0": ON_OLD + ("SYN_RECV",),
        # 6.1 is_new_conn_expected: TIME_WAIT in every variant; conntrack=0 never sets NFCT
        # (section 1.2), so 2016's uses_ct is false and 2020's old_ct too (section 12, conntrack):
        # rescheduled, never dropped (vector V2)
        "tw_mode1": RESCHED + ("SYN_RECV",),
        "tw_mode2": RESCHED + ("SYN_RECV",),
        # 6.1: (mode & 2) adds FIN_WAIT with NOOUTPUT (DR, no replies seen), in every variant
        # (6.6 behavioural summary, 2015: "or (mode 2) a DR FIN_WAIT entry"); vector V4
        "dr_fw_mode2": RESCHED + ("SYN_RECV",),
        # mode 1 does not include FIN_WAIT: INPUT_ONLY syn on the old entry (V4, mode 1)
        "dr_fw_mode1": ON_OLD + ("SYN_RECV",),
        # conntrack=1, NAT TIME_WAIT reuse (vector V3, 6.5): 2015 has no conntrack test ("never
        # drop"); 2016 drops when uses_ct (NFCT set by conntrack=1, the SYN has a conntrack);
        # 2020/2021 drop only on a confirmed conntrack, and netfilter re-opens a TIME_WAIT one
        # (errata 2: "TIME_WAIT and CLOSE reuse was rescheduled without a drop")
        "tw_ct1": (("drop", "conntrack_drop", RS2, "TIME_WAIT") if variant == "2016"
                   else RESCHED + ("SYN_RECV",)),
        # conntrack=1, DR FIN_WAIT reuse, mode 2: 2015 never drops; 2016 uses_ct drops; 2020+
        # errata 2 (6.1 observed: "dropped the reuse SYN ... on a FIN_WAIT entry")
        "dr_fw_ct1": (RESCHED + ("SYN_RECV",) if variant == "2015"
                      else ("drop", "conntrack_drop", RS2, "FIN_WAIT")),
        # branch A (weight 0 + expire_nodest_conn) with mode 0: the 2015/2016/2020 block is gated
        # on mode != 0, 2021 (c95c07836fa4) evaluates branch A regardless (6.2 item 1, V6); on
        # the old entry an INPUT syn keeps ESTABLISHED (6.1 notes: "from ES -> ES")
        "w0_mode0": (("resched", "reuse_weight0", RS1, "SYN_RECV") if variant == "2021"
                     else ON_OLD + ("ESTABLISHED",)),
        # ... with mode 1 every variant reschedules (2015: "(expire_nodest && dest && weight==0)
        # OR is_new_conn_expected"; no conntrack, no drop)
        "w0_mode1": ("resched", "reuse_weight0", RS1, "SYN_RECV"),
        # TCP CLOSE after a client RST: expected only where the 6.6 table says so (V5)
        "close_mode1": RESCHED + ("SYN_RECV",) if close else ON_OLD + ("SYN_RECV",),
        # tcp_active_states (3.1, 9): a first SYN leaves SYN_RECV; (active, inactive) of RS2
        "syn_recv_counted": (1, 0) if active48 else (0, 1),
        # nodest_block (6.4), server deleted, expire_nodest_conn turned on after the deletion (no
        # flush queued): v5.9+ expires the entry and schedules the packet, a SYN to RS1, an ACK
        # to nobody (passes to the director's stack); before, "the packet was always dropped"
        "nodest_syn": ("resched", "dest_deleted", RS1) if nodest59 else ("drop", "dest_unavailable", RS2),
        "nodest_ack": ("pass", "nodest_expired", None) if nodest59 else ("drop", "dest_unavailable", RS2),
        # expire_nodest_conn 0: dropped silently in every version (6.4 both paragraphs)
        "nodest_off": ("drop", "dest_unavailable", RS2),
        # nodest_flush (6.2 item 3, v5.9): expire_nodest_conn set when the server is deleted:
        # the flush removes the entry, the next ACK finds nothing and is not a SYN (3.6);
        # before 5.9 the entry is still there and the block drops the packet
        "nodest_flush": ("pass", "not_syn", None) if nodest59 else ("drop", "dest_unavailable", RS2),
        # dr_reply_inspection (2.3, 7.3, 3.3): a DR reply through the director is matched and runs
        # OUTPUT (clears NOOUTPUT), so the client's FIN then uses the INPUT rows (ES -> CLOSE_WAIT);
        # before, the reply is ignored and the FIN uses INPUT_ONLY (ES -> FIN_WAIT)
        "dr_reply": ("hit", "", "CLOSE_WAIT") if dr_reply else ("pass", "dr_reply_ignored", "FIN_WAIT"),
        # SCTP CLOSED is expected in every variant (6.1; 6.6 summary "CLOSED (SCTP)"), gated on
        # mode != 0; INPUT i from CL -> INIT1 on a new entry (4.3: i from NO), IN on the old one
        "sctp_closed_mode1": ("resched", "reuse_expected", RS1, "INIT1"),
        "sctp_closed_mode0": ("hit", "", RS2, "INIT"),
    }[scenario]


# ---- scenarios: each returns the observed tuple EXPECT describes -----------------------------

def _syn(drv, t):
    d = drv.c2s(t, "S")
    return d, (d["action"], d["reason"], d["rs"], d["state"])


def nat_time_wait(kernel, mode, conntrack=0):
    eng = engine(service(fwd=FWD_MASQ), kernel=kernel, conn_reuse_mode=mode, conntrack=conntrack)
    drv = Driver(eng)
    # vector V1: client closes first, the entry ends in TIME_WAIT
    for t, direction, flags in [(0.0, "c2s", "S"), (0.01, "s2c", "SA"), (0.02, "c2s", "A"),
                                (1.0, "c2s", "FA"), (1.01, "s2c", "A"), (1.02, "s2c", "FA"),
                                (1.03, "c2s", "A")]:
        d = getattr(drv, direction)(t, flags)
    assert (d["state"], d["rs"]) == ("TIME_WAIT", RS2)
    d, got = _syn(drv, 4.0)
    assert d["old_state"] == "TIME_WAIT"
    return got


def dr_fin_wait(kernel, mode, conntrack=0):
    eng = engine(service(fwd=FWD_DROUTE), kernel=kernel, conn_reuse_mode=mode, conntrack=conntrack)
    drv = Driver(eng)
    for t, flags in [(0.0, "S"), (0.1, "A"), (0.5, "FA"), (0.6, "A")]:      # vector V4
        d = drv.c2s(t, flags)
    assert (d["state"], d["rs"]) == ("FIN_WAIT", RS2) and d["flags"] & 0x08
    d, got = _syn(drv, 3.6)
    assert d["old_state"] == "FIN_WAIT"
    return got


def nat_established(drv):
    drv.c2s(0.0, "S")
    drv.s2c(0.01, "SA")
    d = drv.c2s(0.02, "A")
    assert (d["state"], d["rs"]) == ("ESTABLISHED", RS2)


def weight0(kernel, mode):
    eng = engine(service(fwd=FWD_MASQ), kernel=kernel, conn_reuse_mode=mode, expire_nodest_conn=1)
    drv = Driver(eng)
    nat_established(drv)
    eng.apply(cmd("edit-dest", service(fwd=FWD_MASQ), RealServer(RS2, 80, fwd=FWD_MASQ, weight=0)))
    return _syn(drv, 2.0)[1]


def nat_close(kernel):
    eng = engine(service(fwd=FWD_MASQ), kernel=kernel, conn_reuse_mode=1)
    drv = Driver(eng)
    nat_established(drv)
    assert drv.c2s(0.03, "R")["state"] == "CLOSE"
    d, got = _syn(drv, 1.0)
    assert d["old_state"] == "CLOSE"
    return got


def syn_recv_counted(kernel):
    eng = engine(service(fwd=FWD_MASQ), kernel=kernel)
    drv = Driver(eng)
    d = drv.c2s(0.0, "S")
    assert (d["action"], d["state"], d["rs"]) == ("new", "SYN_RECV", RS2)
    return drv.counters(RS2)


def nodest(kernel, flags, expire_after=True, expire_before=False):
    eng = engine(service(fwd=FWD_MASQ), kernel=kernel, expire_nodest_conn=int(expire_before))
    drv = Driver(eng)
    nat_established(drv)
    eng.apply(cmd("del-dest", service(fwd=FWD_MASQ), RealServer(RS2, 80, fwd=FWD_MASQ)))
    if expire_after:
        eng.set_sysctl("expire_nodest_conn", 1)
    d = drv.c2s(1.0, flags)
    return d["action"], d["reason"], d["rs"]


def dr_reply(kernel):
    eng = engine(service(fwd=FWD_DROUTE), kernel=kernel, dr_replies="inspect")
    drv = Driver(eng)
    drv.c2s(0.0, "S")
    assert drv.c2s(0.1, "A")["state"] == "ESTABLISHED"
    d = drv.s2c(0.2, "A")
    assert d["dir"] == "out"
    return d["action"], d["reason"], drv.c2s(0.3, "FA")["state"]


SCTP = 132
CHUNK = {"INIT": 1, "INIT_ACK": 2, "SHUTDOWN": 7, "SHUTDOWN_ACK": 8, "COOKIE_ECHO": 10,
         "COOKIE_ACK": 11, "SHUTDOWN_COMPLETE": 14}


def sctp_frame(src, sport, dst, dport, name):
    body = b"\0" * 16 if name in ("INIT", "INIT_ACK") else b""
    chunk = struct.pack("!BBH", CHUNK[name], 0, 4 + len(body)) + body
    l4 = struct.pack("!HHII", sport, dport, 0 if name == "INIT" else 1, 0) + chunk
    return ether(ip_packet(src, dst, SCTP, l4))


def sctp_closed(kernel, mode):
    eng = engine(service(proto=SCTP, fwd=FWD_MASQ), kernel=kernel, conn_reuse_mode=mode)
    drv = Driver(eng)
    c = lambda t, name: drv.send(t, sctp_frame(CLIENT, CPORT, VIP, VPORT, name))
    s = lambda t, name: drv.send(t, sctp_frame(RS2, VPORT, CLIENT, CPORT, name))
    # 4.3: INPUT i NO -> I1, OUTPUT i_a -> CS, INPUT c_e -> CR, OUTPUT c_a -> ES,
    # INPUT s -> SR, OUTPUT s_a -> SA, INPUT s_c -> CL
    for t, f, name in [(0.0, c, "INIT"), (0.01, s, "INIT_ACK"), (0.02, c, "COOKIE_ECHO"),
                       (0.03, s, "COOKIE_ACK"), (1.0, c, "SHUTDOWN"), (1.01, s, "SHUTDOWN_ACK"),
                       (1.02, c, "SHUTDOWN_COMPLETE")]:
        d = f(t, name)
        assert d["rs"] == RS2 and d["action"] == ("new" if t == 0.0 else "hit"), (name, d)
    assert d["state"] == "CLOSED"
    d = c(3.0, "INIT")
    assert d["old_state"] == "CLOSED"
    return d["action"], d["reason"], d["rs"], d["state"]


RUN = {
    "tw_mode0": lambda k: nat_time_wait(k, 0),
    "tw_mode1": lambda k: nat_time_wait(k, 1),
    "tw_mode2": lambda k: nat_time_wait(k, 2),
    "dr_fw_mode2": lambda k: dr_fin_wait(k, 2),
    "dr_fw_mode1": lambda k: dr_fin_wait(k, 1),
    "tw_ct1": lambda k: nat_time_wait(k, 1, conntrack=1),
    "dr_fw_ct1": lambda k: dr_fin_wait(k, 2, conntrack=1),
    "w0_mode0": lambda k: weight0(k, 0),
    "w0_mode1": lambda k: weight0(k, 1),
    "close_mode1": nat_close,
    "syn_recv_counted": syn_recv_counted,
    "nodest_syn": lambda k: nodest(k, "S"),
    "nodest_ack": lambda k: nodest(k, "A"),
    "nodest_off": lambda k: nodest(k, "A", expire_after=False),
    "nodest_flush": lambda k: nodest(k, "A", expire_after=False, expire_before=True),
    "dr_reply": dr_reply,
    "sctp_closed_mode1": lambda k: sctp_closed(k, 1),
    "sctp_closed_mode0": lambda k: sctp_closed(k, 0),
}

CASES = [pytest.param(k, s, id=f"{k}-{s}") for s in RUN for k in VERSIONS]


@pytest.mark.parametrize("kernel,scenario", CASES)
def test_variant_table(kernel, scenario):
    assert RUN[scenario](kernel) == expect(scenario, FACTS[kernel])


@pytest.mark.parametrize("kernel", VERSIONS)
def test_switches_match_the_reference(kernel):
    """The switches variant_for hands the engine are the reference's facts for the version."""
    variant, close, active48, nodest59, dr_reply_ = FACTS[kernel]
    v = variant_for(kernel)
    assert (v["reuse_variant"], v["close_expected"], v["tcp_active_v48"], v["nodest_block_v59"],
            v["nodest_flush"], v["dr_reply_inspection"]) == (
        REUSE_IDS[variant], close, active48, nodest59, nodest59, dr_reply_)
