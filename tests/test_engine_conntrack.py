"""The old_ct model: whether a packet carries a confirmed netfilter conntrack decides between
DROP and an immediate reschedule when a client reuses a port (conntrack=1, the kube-proxy setup).

Expectations come from netfilter's tracker as nf_conntrack_proto_tcp.c defines it (re-open of a
TIME_WAIT/CLOSE conntrack only after a FIN was seen or after an RST from the SYN's side; a
conntrack whose only reply is an RST is deleted; invalid segments leave without a conntrack;
timeouts) and from the real 6.1 kernel's behaviour recorded in tests/fixtures/oracle/conntrack_*.
"""
from __future__ import annotations

import pytest

from engine_helpers import Driver, engine, service, T0, RS1, RS2
from ipvsflow.config import FWD_MASQ, FWD_DROUTE
from ipvsflow.engine import proto_tcp

S = 10**9
SYN, SYNACK, ACK, FIN, FINACK, RST, PSH = 0x02, 0x12, 0x10, 0x01, 0x11, 0x04, 0x08
CONFIRMED, NEW = 1, 2


def states(seq):
    return [(r, s) for r, s, _ in proto_tcp.nf_replay(seq)]


def test_nf_tracker_nat_close_then_reopen():
    got = states([(0, 0, SYN), (1, 1, SYNACK), (2, 0, ACK), (3, 0, FINACK), (4, 1, ACK),
                  (5, 1, FINACK), (6, 0, ACK), (7, 0, SYN)])
    assert got == [(NEW, "SYN_SENT"), (CONFIRMED, "SYN_RECV"), (CONFIRMED, "ESTABLISHED"),
                   (CONFIRMED, "FIN_WAIT"), (CONFIRMED, "CLOSE_WAIT"), (CONFIRMED, "LAST_ACK"),
                   (CONFIRMED, "TIME_WAIT"),
                   (NEW, "SYN_SENT")]          # TIME_WAIT + SYN after a FIN: re-opened


def test_nf_tracker_rst_direction_decides_the_reopen():
    est = [(0, 0, SYN), (1, 1, SYNACK), (2, 0, ACK)]
    client_rst = states(est + [(3, 0, RST), (4, 0, SYN)])
    assert client_rst[-2:] == [(CONFIRMED, "CLOSE"), (NEW, "SYN_SENT")]
    server_rst = states(est + [(3, 1, RST), (4, 0, SYN)])
    # CLOSE by the server: the client's SYN is ignored and keeps the confirmed conntrack
    assert server_rst[-2:] == [(CONFIRMED, "CLOSE"), (CONFIRMED, "CLOSE")]


def test_nf_tracker_client_side_only_dr():
    # no reply ever seen: ACK/FIN on SYN_SENT are invalid (no conntrack on the packet), the
    # state stays SYN_SENT, a reused SYN keeps the confirmed conntrack; an RST deletes it
    got = states([(0, 0, SYN), (1, 0, ACK), (2, 0, FINACK), (3, 0, SYN), (4, 0, RST), (5, 0, SYN)])
    assert got == [(NEW, "SYN_SENT"), (0, "SYN_SENT"), (0, "SYN_SENT"), (CONFIRMED, "SYN_SENT"),
                   (CONFIRMED, None), (NEW, "SYN_SENT")]


def test_nf_tracker_invalid_flags_and_timeouts():
    got = states([(0, 0, SYN), (1, 1, SYNACK), (2, 0, ACK), (3, 0, 0), (4, 0, PSH),
                  (5, 0, SYN | FIN), (6, 0, SYN)])
    # no-flag, PSH-only and SYN+FIN segments are invalid: ESTABLISHED stays, the SYN is ignored
    assert got[3:] == [(0, "ESTABLISHED"), (0, "ESTABLISHED"), (0, "ESTABLISHED"),
                       (CONFIRMED, "ESTABLISHED")]
    # DR: SYN_SENT lives 120 s and a retransmitted SYN does not renew it; an ACK after that
    # picks the connection up mid-stream as a new conntrack
    got = states([(0, 0, SYN), (100 * S, 0, SYN), (121 * S, 0, ACK), (122 * S, 0, ACK)])
    assert got == [(NEW, "SYN_SENT"), (CONFIRMED, "SYN_SENT"), (NEW, "ESTABLISHED"),
                   (CONFIRMED, "ESTABLISHED")]
    # ... and such a pickup without replies lives 300 s, not 5 days
    got = states([(0, 0, ACK), (299 * S, 0, ACK), (600 * S, 0, ACK)])
    assert [r for r, _ in got] == [NEW, CONFIRMED, NEW]


def nat_established(drv, cport):
    drv.c2s(0.0, "S", cport=cport)
    drv.s2c(0.01, "SA", cport=cport)
    drv.c2s(0.02, "A", cport=cport)


@pytest.mark.parametrize("close,mode,expect", [
    ([("s2c", "R")], 1, "drop"),                        # server RST: CLOSE, not re-opened
    ([("c2s", "R")], 1, "resched"),                     # client RST: re-opened
    ([("c2s", "")], 1, "drop"),                         # no-flag: CLOSE for IPVS only
    ([("c2s", "FA"), ("s2c", "A"), ("s2c", "FA"), ("c2s", "A")], 1, "resched"),   # TIME_WAIT
    ([("s2c", "FA"), ("c2s", "A"), ("c2s", "FA"), ("s2c", "A")], 2, "resched"),   # server first
])
def test_nat_reuse_with_conntrack(close, mode, expect):
    eng = engine(service(fwd=FWD_MASQ), conntrack=1, conn_reuse_mode=mode)
    drv = Driver(eng)
    nat_established(drv, 40000)
    t = 0.03
    for direction, flags in close:
        getattr(drv, direction)(t, flags)
        t += 0.01
    d = drv.c2s(1.0, "S")
    assert d["action"] == expect, d
    if expect == "drop":
        assert d["reason"] == "conntrack_drop" and d["rs"] == RS2
        # the old entry expires now (its conntrack with it): the retransmission is scheduled
        d = drv.c2s(2.0, "S")
        assert (d["action"], d["rs"]) == ("new", RS1)
    eng.check_invariants()


@pytest.mark.parametrize("close,expect", [
    (["R"], "resched"),          # DR: an RST deletes the conntrack (never saw a reply)
    ([""], "drop"),              # no-flag: invalid for netfilter, conntrack SYN_SENT confirmed
    (["FA"], "drop"),            # FIN on SYN_SENT: invalid, still confirmed
])
def test_dr_reuse_with_conntrack(close, expect):
    eng = engine(service(fwd=FWD_DROUTE), conntrack=1, conn_reuse_mode=2)
    drv = Driver(eng)
    drv.c2s(0.0, "S")
    drv.c2s(0.01, "A")
    for i, flags in enumerate(close):
        drv.c2s(0.02 + 0.01 * i, flags)
    d = drv.c2s(0.5, "S")
    assert d["action"] == expect, d


def test_dr_long_connection_outlives_the_syn_sent_conntrack():
    # the conntrack of a DR connection stays SYN_SENT (client side only) and dies 120 s after
    # the SYN; a reuse SYN on the FIN_WAIT entry 200 s later then creates a new conntrack
    eng = engine(service(fwd=FWD_DROUTE), conntrack=1, conn_reuse_mode=2)
    drv = Driver(eng)
    drv.c2s(0.0, "S")
    drv.c2s(0.01, "A")
    drv.c2s(200.0, "FA")
    d = drv.c2s(200.5, "S")
    assert (d["action"], d["reason"]) == ("resched", "reuse_expected")
    # with an ACK after the conntrack died, it is picked up again (confirmed): dropped
    eng = engine(service(fwd=FWD_DROUTE), conntrack=1, conn_reuse_mode=2)
    drv = Driver(eng)
    drv.c2s(0.0, "S")
    drv.c2s(0.01, "A")
    drv.c2s(150.0, "A")
    drv.c2s(200.0, "FA")
    d = drv.c2s(200.5, "S")
    assert (d["action"], d["reason"]) == ("drop", "conntrack_drop")


def test_without_conntrack_never_drops():
    eng = engine(service(fwd=FWD_MASQ), conntrack=0, conn_reuse_mode=2)
    drv = Driver(eng)
    nat_established(drv, 40000)
    drv.s2c(0.03, "R")
    assert drv.c2s(1.0, "S")["action"] == "resched"


@pytest.mark.parametrize("model,close,expect", [
    ("simple", "R", "resched"), ("simple", "", "resched"),     # NAT CLOSE: reopened
    ("always", "R", "drop"), ("never", "", "resched"),
])
def test_other_ct_models(model, close, expect):
    eng = engine(service(fwd=FWD_MASQ), conntrack=1)
    eng.ct_model = model
    drv = Driver(eng)
    nat_established(drv, 40000)
    drv.s2c(0.03, close or "A") if close == "R" else drv.c2s(0.03, close)
    assert drv.c2s(1.0, "S")["action"] == expect


def test_weight0_branch_a_with_conntrack_drops_established_reuse():
    # oracle conntrack_weight0_*: SYN on an ESTABLISHED entry of a weight-0 server: confirmed
    # conntrack -> DROP, the retransmission goes elsewhere
    from engine_helpers import cmd
    from ipvsflow.config import RealServer
    eng = engine(service(fwd=FWD_MASQ), conntrack=1, expire_nodest_conn=1)
    drv = Driver(eng)
    nat_established(drv, 40000)
    eng.apply(cmd("edit-dest", service(fwd=FWD_MASQ), RealServer(RS2, 80, fwd=FWD_MASQ, weight=0)))
    d = drv.c2s(1.0, "S")
    assert (d["action"], d["reason"]) == ("drop", "conntrack_drop")
    d = drv.c2s(2.0, "S")
    assert (d["action"], d["rs"]) == ("new", RS1)


def test_director_rst_revives_a_dr_entry_expired_by_the_server_status_block():
    # oracle nodest_sysctl_midrun: the ACK of a deleted server's DR connection expires the
    # entry and goes to the director's stack, whose RST (source VIP:80) runs the entry's OUTPUT
    # transition (kernel >= 5.11): it stays in CLOSE for 10 s; NAT entries are not matched
    from engine_helpers import cmd
    from ipvsflow.config import RealServer
    for fwd, kernel, listed in ((FWD_DROUTE, "6.1", True), (FWD_MASQ, "6.1", False),
                                (FWD_DROUTE, "5.10", False)):
        eng = engine(service(fwd=fwd), kernel=kernel)
        drv = Driver(eng)
        drv.c2s(0.0, "S")
        drv.c2s(0.01, "A")
        eng.apply(cmd("del-dest", service(fwd=fwd), RealServer(RS2, 80, fwd=fwd)))
        eng.set_sysctl("expire_nodest_conn", 1)
        d = drv.c2s(1.0, "PA")
        assert (d["action"], d["reason"]) == ("pass", "nodest_expired")
        rows = eng.connections(T0 + int(1.5 * S))
        if listed:
            assert [(r["state"], r["expire"]) for r in rows] == [("CLOSE", 9)]
        else:
            assert rows == []
