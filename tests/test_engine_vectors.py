"""The worked scenarios of the semantics reference, section 13 (V1-V11, V15), through the engine,
with the states, real servers and (active, inactive) counters the reference gives after every
packet, and the variants it describes for other settings and kernels.

Common setup (section 13): client C = 10.0.0.1:40000, VIP 192.0.2.10:80/TCP, RS1 = 10.1.0.1:80
added first, RS2 = 10.1.0.2:80 added second, so the list is [RS2, RS1]; rr; default sysctls.
"""
from __future__ import annotations

import pytest

from engine_helpers import (
    Driver, engine, service, cmd, T0, CLIENT, CPORT, VIP, VPORT, RS1, RS2, UDP,
)
from ipvsflow.config import FWD_MASQ, FWD_DROUTE, RealServer, VirtualService, SVC_F_ONEPACKET


def at(t):
    return T0 + int(round(t * 1e9))


def conn_of(eng, cport=CPORT):
    rows = [r for r in eng.connections() if r["cport"] == cport and not r["template"]]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def nat_v1(drv, v48=True):
    """V1 up to the last step; returns the driver. Before v4.8 only ESTABLISHED is active."""
    steps = [
        # t, direction, flags, state, RS2 counters
        (0.0, "c2s", "S", "SYN_RECV", (1, 0)),
        (0.01, "s2c", "SA", "SYN_RECV", (1, 0)),
        (0.02, "c2s", "A", "ESTABLISHED", (1, 0)),
        (1.0, "c2s", "FA", "CLOSE_WAIT", (0, 1)),
        (1.01, "s2c", "A", "CLOSE_WAIT", (0, 1)),
        (1.02, "s2c", "FA", "TIME_WAIT", (0, 1)),
        (1.03, "c2s", "A", "TIME_WAIT", (0, 1)),
    ]
    for t, direction, flags, state, counters in steps:
        d = getattr(drv, direction)(t, flags)
        assert d["rs"] == RS2 and d["state"] == state, (t, d)
        assert d["action"] == ("new" if t == 0.0 else "hit")
        assert d["dir"] == ("in" if direction == "c2s" else "out")
        if not v48 and state == "SYN_RECV":
            counters = (0, 1)
        assert drv.counters(RS2) == counters, t
        assert drv.counters(RS1) == (0, 0)
        drv.eng.check_invariants()
    return drv


def test_v1_nat_lifecycle_client_closes_first():
    eng = engine(service(fwd=FWD_MASQ))
    drv = nat_v1(Driver(eng))
    timeouts = {0.0: 60, 0.02: 900, 1.0: 60, 1.02: 120, 1.03: 120}
    c = conn_of(eng)
    assert c["state"] == "TIME_WAIT" and c["expire"] == 120
    assert c["destination"] == f"{RS2}:80"
    # the entry disappears at 1.03 + 120 s if nothing else arrives
    assert conn_of(eng) is not None
    eng.advance(at(121.02))
    assert conn_of(eng)["expire"] == 0
    eng.advance(at(121.03))
    assert conn_of(eng) is None
    assert eng.conn_count == 0
    assert drv.counters(RS2) == (0, 0)
    eng.check_invariants()


@pytest.mark.parametrize("kernel", ["6.1", "5.10", "4.19", "4.4"])
def test_v2_nat_time_wait_reuse_reschedules_without_drop(kernel):
    # conn_reuse_mode 1, conntrack 0: every kernel variant reschedules (2016-2020 "uses_ct"
    # needs the NFCT flag, which conntrack=0 never sets)
    v48 = kernel != "4.4"
    eng = engine(service(fwd=FWD_MASQ), kernel=kernel)
    drv = nat_v1(Driver(eng), v48)
    d = drv.c2s(4.0, "S")
    assert (d["action"], d["reason"], d["rs"], d["state"]) == ("resched", "reuse_expected", RS1, "SYN_RECV")
    assert d["old_state"] == "TIME_WAIT" and d["reuse_of"] == 1 and d["conn"] == 2
    # the old entry still counts until its timer fires right after this packet
    assert drv.counters(RS2) == (0, 1)
    assert drv.counters(RS1) == ((1, 0) if v48 else (0, 1))
    eng.advance(at(4.0))
    assert drv.counters(RS2) == (0, 0)
    assert [r["serial"] for r in eng.connections()] == [2]
    eng.check_invariants()


def test_v2_mode0_syn_stays_on_the_old_entry():
    eng = engine(service(fwd=FWD_MASQ), conn_reuse_mode=0)
    drv = nat_v1(Driver(eng))
    d = drv.c2s(4.0, "S")
    assert (d["action"], d["rs"], d["state"], d["old_state"]) == ("hit", RS2, "SYN_RECV", "TIME_WAIT")
    assert d["flags"] & 1 and d["reuse_of"] == 1 == d["conn"]
    assert drv.counters(RS2) == (1, 0)
    assert conn_of(eng)["expire"] == 60


@pytest.mark.parametrize("kernel,drop", [("4.19", True), ("5.4", True), ("5.10", False), ("6.1", False)])
def test_v3_kube_proxy_conntrack_time_wait_reuse(kernel, drop):
    # conntrack=1: before 5.9 the SYN is dropped (1 s client delay); since 5.9 netfilter
    # re-opens the TIME_WAIT conntrack (unconfirmed) and the SYN is rescheduled at once
    eng = engine(service(fwd=FWD_MASQ), kernel=kernel, conntrack=1)
    drv = nat_v1(Driver(eng))
    d = drv.c2s(4.0, "S")
    if drop:
        assert (d["action"], d["reason"], d["rs"]) == ("drop", "conntrack_drop", RS2)
        assert d["state"] == "TIME_WAIT" and d["reuse_of"] == 1
        eng.advance(at(4.0))
        assert conn_of(eng) is None                 # old entry expired now
        d = drv.c2s(5.0, "S")                        # the client's retransmission
        assert (d["action"], d["rs"], d["state"]) == ("new", RS1, "SYN_RECV")
    else:
        assert (d["action"], d["reason"], d["rs"]) == ("resched", "reuse_expected", RS1)
    eng.check_invariants()


def dr_v4(drv):
    for t, flags, state, counters in [
        (0.0, "S", "SYN_RECV", (1, 0)),
        (0.1, "A", "ESTABLISHED", (1, 0)),
        (0.5, "FA", "FIN_WAIT", (0, 1)),
        (0.6, "A", "FIN_WAIT", (0, 1)),
    ]:
        d = drv.c2s(t, flags)
        assert (d["rs"], d["state"]) == (RS2, state), t
        assert d["flags"] & 0x08            # NOOUTPUT: INPUT_ONLY table
        assert drv.counters(RS2) == counters
        assert conn_of(drv.eng)["expire"] == {"SYN_RECV": 60, "ESTABLISHED": 900, "FIN_WAIT": 120}[state]


def test_v4_dr_mode2_reschedules_fin_wait():
    eng = engine(service(fwd=FWD_DROUTE), conn_reuse_mode=2)
    drv = Driver(eng)
    dr_v4(drv)
    d = drv.c2s(3.6, "S")
    assert (d["action"], d["reason"], d["rs"], d["state"]) == ("resched", "reuse_expected", RS1, "SYN_RECV")
    assert drv.counters(RS1) == (1, 0)
    eng.advance(at(3.6))
    assert drv.counters(RS2) == (0, 0)
    eng.check_invariants()


def test_v4_dr_mode1_syn_stays_on_fin_wait_entry():
    eng = engine(service(fwd=FWD_DROUTE), conn_reuse_mode=1)
    drv = Driver(eng)
    dr_v4(drv)
    d = drv.c2s(3.6, "S")
    assert (d["action"], d["rs"], d["state"], d["old_state"]) == ("hit", RS2, "SYN_RECV", "FIN_WAIT")
    assert drv.counters(RS2) == (1, 0) and drv.counters(RS1) == (0, 0)


def dr_v5(drv):
    drv.c2s(0.0, "S")
    drv.c2s(0.1, "A")
    d = drv.c2s(0.2, "R")
    assert (d["rs"], d["state"], d["action"]) == (RS2, "CLOSE", "hit")
    assert drv.counters(RS2) == (0, 1)
    assert conn_of(drv.eng)["expire"] == 10


@pytest.mark.parametrize("kernel,resched", [("6.1", True), ("4.19", True), ("4.9", False), ("4.4", False)])
def test_v5_dr_rst_then_reuse(kernel, resched):
    eng = engine(service(fwd=FWD_DROUTE), kernel=kernel)
    drv = Driver(eng)
    dr_v5(drv)
    d = drv.c2s(2.2, "S")
    if resched:
        assert (d["action"], d["rs"], d["state"]) == ("resched", RS1, "SYN_RECV")
    else:
        assert (d["action"], d["rs"], d["state"], d["old_state"]) == ("hit", RS2, "SYN_RECV", "CLOSE")


def test_v5_dr_syn_after_the_close_timeout_is_a_new_connection():
    eng = engine(service(fwd=FWD_DROUTE))
    drv = Driver(eng)
    dr_v5(drv)
    d = drv.c2s(10.3, "S")
    assert (d["action"], d["rs"], d["reuse_of"], d["flags"] & 1) == ("new", RS1, 0, 0)
    assert drv.counters(RS2) == (0, 0)


def established_nat(drv):
    drv.c2s(0.0, "S")
    drv.s2c(0.01, "SA")
    d = drv.c2s(0.02, "A")
    assert (d["rs"], d["state"]) == (RS2, "ESTABLISHED")
    assert drv.counters(RS2) == (1, 0)


def weight(eng, addr, w):
    svc = service(fwd=FWD_MASQ)
    eng.apply(cmd("edit-dest", svc, RealServer(addr, 80, fwd=FWD_MASQ, weight=w)))


@pytest.mark.parametrize("kernel,mode,resched", [
    ("6.1", 1, True), ("6.1", 0, True),       # v5.16+: branch A independent of conn_reuse_mode
    ("5.15", 1, True), ("5.15", 0, False),    # before: only with conn_reuse_mode != 0
])
def test_v6_weight0_with_expire_nodest_conn(kernel, mode, resched):
    eng = engine(service(fwd=FWD_MASQ), kernel=kernel, expire_nodest_conn=1, conn_reuse_mode=mode)
    drv = Driver(eng)
    established_nat(drv)
    weight(eng, RS2, 0)
    # (a) the connection keeps flowing to the quiesced server
    d = drv.c2s(1.0, "A")
    assert (d["action"], d["rs"], d["state"]) == ("hit", RS2, "ESTABLISHED")
    # (b) a SYN with the same tuple while ESTABLISHED
    d = drv.c2s(2.0, "S")
    if resched:
        assert (d["action"], d["reason"], d["rs"], d["state"]) == ("resched", "reuse_weight0", RS1, "SYN_RECV")
        eng.advance(at(2.0))
        assert drv.counters(RS2) == (0, 0)
        assert drv.counters(RS1) == (1, 0)
    else:
        assert (d["action"], d["rs"], d["state"]) == ("hit", RS2, "ESTABLISHED")
    eng.check_invariants()


def test_v6_weight0_without_expire_nodest_conn_syn_stays():
    eng = engine(service(fwd=FWD_MASQ))
    drv = Driver(eng)
    established_nat(drv)
    weight(eng, RS2, 0)
    d = drv.c2s(2.0, "S")
    assert (d["action"], d["rs"], d["state"], d["old_state"]) == ("hit", RS2, "ESTABLISHED", "ESTABLISHED")
    # a new client is not sent to the weight-0 server
    d = drv.c2s(3.0, "S", cport=40001)
    assert (d["action"], d["rs"]) == ("new", RS1)


def delete(eng, addr):
    eng.apply(cmd("del-dest", service(fwd=FWD_MASQ), RealServer(addr, 80, fwd=FWD_MASQ)))


def test_v7_deleted_server_without_expire_nodest_conn():
    eng = engine(service(fwd=FWD_MASQ))
    drv = Driver(eng)
    established_nat(drv)
    delete(eng, RS2)
    deadline = conn_of(eng)["deadline_ns"]
    assert deadline == at(0.02) + 900 * 10**9
    for t in (1.0, 2.0):
        d = drv.c2s(t, "A")
        assert (d["action"], d["reason"], d["rs"], d["dir"]) == ("drop", "dest_unavailable", RS2, "in")
        assert conn_of(eng)["deadline_ns"] == deadline     # timer not refreshed
    d = drv.c2s(3.0, "S")                                   # a SYN too: dropped silently
    assert (d["action"], d["reason"]) == ("drop", "dest_unavailable")
    # errata 3: NAT replies from the deleted server are still un-NATed and refresh the timer
    d = drv.s2c(4.0, "A")
    assert (d["action"], d["dir"], d["rs"]) == ("hit", "out", RS2)
    assert conn_of(eng)["deadline_ns"] == at(4.0) + 900 * 10**9
    # re-adding the server while the entry references it revives the same dest
    eng.apply(cmd("add-dest", service(fwd=FWD_MASQ), RealServer(RS2, 80, fwd=FWD_MASQ)))
    d = drv.c2s(5.0, "A")
    assert (d["action"], d["rs"], d["state"]) == ("hit", RS2, "ESTABLISHED")
    assert drv.counters(RS2) == (1, 0)
    # without re-adding: the entry dies at its old deadline
    eng2 = engine(service(fwd=FWD_MASQ))
    drv2 = Driver(eng2)
    established_nat(drv2)
    delete(eng2, RS2)
    drv2.c2s(1.0, "A")
    eng2.advance(at(900.019))
    assert conn_of(eng2) is not None
    eng2.advance(at(900.02))
    assert conn_of(eng2) is None
    assert eng2.dests()[1]["refcnt"] == 0
    eng2.check_invariants()


def test_v7_deleted_server_with_expire_nodest_conn_is_flushed():
    # v5.9+: ~1 jiffy after the deletion the flush deletes the entry; the next ACK finds
    # nothing and, not being a SYN, passes to the director's stack; a SYN goes to RS1
    eng = engine(service(fwd=FWD_MASQ), expire_nodest_conn=1)
    drv = Driver(eng)
    established_nat(drv)
    delete(eng, RS2)
    d = drv.c2s(1.0, "A")
    assert (d["action"], d["reason"]) == ("pass", "not_syn")
    assert conn_of(eng) is None and drv.counters(RS2) == (0, 0)
    d = drv.c2s(1.1, "S")
    assert (d["action"], d["rs"]) == ("new", RS1)
    eng.check_invariants()


@pytest.mark.parametrize("flags,result", [("A", ("pass", "nodest_expired", None)),
                                          ("S", ("resched", "dest_deleted", RS1))])
def test_v7_packet_before_the_flush_expires_the_entry(flags, result):
    # expire_nodest_conn turned on after the deletion: no flush was queued, so the next
    # packet meets the check-server-status block (v5.9+): expired, then scheduled if possible
    eng = engine(service(fwd=FWD_MASQ))
    drv = Driver(eng)
    established_nat(drv)
    delete(eng, RS2)
    eng.set_sysctl("expire_nodest_conn", 1)
    d = drv.c2s(1.0, flags)
    assert (d["action"], d["reason"]) == result[:2]
    if result[2]:
        assert d["rs"] == result[2] and d["reuse_of"] == 1
    eng.advance(at(1.0))
    assert all(r["dest"] != 1 for r in eng.connections())
    eng.check_invariants()


def test_v7_pre_5_9_drops_and_expires():
    eng = engine(service(fwd=FWD_MASQ), kernel="5.4", expire_nodest_conn=1)
    drv = Driver(eng)
    established_nat(drv)
    delete(eng, RS2)
    assert conn_of(eng) is not None            # no flush before 5.9
    d = drv.c2s(1.0, "S")
    assert (d["action"], d["reason"], d["rs"]) == ("drop", "dest_unavailable", RS2)
    eng.advance(at(1.0))
    assert conn_of(eng) is None                 # expired now
    d = drv.c2s(2.0, "S")                       # retransmission: scheduled fresh
    assert (d["action"], d["rs"]) == ("new", RS1)


def dr_established(drv):
    drv.c2s(0.0, "S")
    d = drv.c2s(0.1, "A")
    assert (d["state"], d["flags"] & 0x08) == ("ESTABLISHED", 0x08)


@pytest.mark.parametrize("kernel,dr_replies,reply,fin_state", [
    ("6.1", "inspect", ("hit", ""), "CLOSE_WAIT"),
    ("5.10", "inspect", ("pass", "dr_reply_ignored"), "FIN_WAIT"),
    ("6.1", "ignore", ("pass", "dr_reply_not_seen"), "FIN_WAIT"),
])
def test_v9_dr_reply_clears_nooutput(kernel, dr_replies, reply, fin_state):
    eng = engine(service(fwd=FWD_DROUTE), kernel=kernel, dr_replies=dr_replies)
    drv = Driver(eng)
    dr_established(drv)
    d = drv.s2c(0.2, "A")
    assert (d["action"], d["reason"], d["dir"]) == reply + ("out",)
    assert d["state"] == "ESTABLISHED"
    assert bool(d["flags"] & 0x08) == (reply[0] == "pass")
    d = drv.c2s(0.3, "FA")
    assert d["state"] == fin_state


def test_v10_packet_without_syn_fin_ack_rst_closes():
    eng = engine(service(fwd=FWD_MASQ))
    drv = Driver(eng)
    established_nat(drv)
    for i, flags in enumerate(["P", ""]):
        d = drv.c2s(1.0 + i, flags)
        assert (d["action"], d["state"], d["rs"]) == ("hit", "CLOSE", RS2)
        assert drv.counters(RS2) == (0, 1)
        assert conn_of(eng)["expire"] == 10


@pytest.mark.parametrize("secure,states", [
    (3, ["SYN_RECV", "SYNACK", "SYNACK", "SYNACK", "ESTABLISHED"]),
    (0, ["SYN_RECV", "SYN_RECV", "ESTABLISHED", "ESTABLISHED", "ESTABLISHED"]),
    (2, ["SYN_RECV", "SYN_RECV", "ESTABLISHED", "ESTABLISHED", "ESTABLISHED"]),  # 2 reverts to 1
    (1, ["SYN_RECV", "SYN_RECV", "ESTABLISHED", "ESTABLISHED", "ESTABLISHED"]),
])
def test_v11_secure_tcp_nat_handshake(secure, states):
    eng = engine(service(fwd=FWD_MASQ), secure_tcp=secure)
    drv = Driver(eng)
    got = [drv.c2s(0.0, "S")["state"], drv.s2c(0.01, "SA")["state"], drv.c2s(0.02, "A")["state"],
           drv.c2s(0.03, "PA")["state"], drv.s2c(0.04, "PA")["state"]]
    assert got == states
    assert drv.counters(RS2) == (1, 0)          # SYNACK counts as active (v4.8+)


def test_v15_udp():
    svc = service(proto=UDP, port=53, fwd=FWD_MASQ)
    eng = engine(svc)
    drv = Driver(eng)
    d = drv.c2s(0.0, None, cport=5353, vport=53, proto=UDP)
    assert (d["action"], d["rs"], d["state"]) == ("new", RS2, "UDP")
    assert drv.counters(RS2) == (0, 1)          # always inactive
    c = conn_of(eng, 5353)
    assert (c["pro"], c["state"], c["expire"]) == ("UDP", "UDP", 300)
    d = drv.s2c(100.0, None, cport=5353, vport=53, proto=UDP)
    assert (d["action"], d["dir"], d["rs"]) == ("hit", "out", RS2)
    assert conn_of(eng, 5353)["deadline_ns"] == at(400.0)
    d = drv.c2s(399.0, None, cport=5353, vport=53, proto=UDP)
    assert (d["action"], d["rs"]) == ("hit", RS2)
    assert drv.counters(RS2) == (0, 1)
    # after expiry the next packet is rescheduled to the next rr server
    d = drv.c2s(699.0, None, cport=5353, vport=53, proto=UDP)
    assert (d["action"], d["rs"], d["flags"] & 1) == ("new", RS1, 0)
    assert drv.counters(RS2) == (0, 0) and drv.counters(RS1) == (0, 1)
    # a UDP packet never counts as a port-reuse event
    assert all(not (x["flags"] & 1) for x in drv.log)


def test_udp_one_packet_scheduling():
    svc = service(proto=UDP, port=53, fwd=FWD_MASQ, flags=SVC_F_ONEPACKET)
    eng = engine(svc)
    drv = Driver(eng)
    rs = [drv.c2s(0.1 * i, None, cport=5353, vport=53, proto=UDP)["rs"] for i in range(4)]
    assert rs == [RS2, RS1, RS2, RS1]           # every packet scheduled on its own
    assert eng.conn_count == 0 and eng.connections() == []
    assert drv.counters(RS2) == (0, 0)
    assert eng.dests()[1]["conns"] == 2
    eng.check_invariants()


def test_v8_persistence_blocks_reuse_and_pins_the_client():
    svc = service(fwd=FWD_MASQ, timeout=300)
    eng = engine(svc, expire_quiescent_template=0)
    drv = Driver(eng)
    d = drv.c2s(0.0, "S")
    assert (d["action"], d["rs"], d["flags"] & 0x02) == ("new", RS2, 0x02)
    tpl = [r for r in eng.connections() if r["template"]]
    assert len(tpl) == 1
    assert (tpl[0]["source"], tpl[0]["virtual"], tpl[0]["destination"]) == (
        f"{CLIENT}:0", f"{VIP}:80", f"{RS2}:80")
    assert tpl[0]["state"] == "NONE" and tpl[0]["expire"] == 300
    assert eng.dests()[1]["persistconns"] == 1
    drv.s2c(0.01, "SA")
    drv.c2s(0.02, "A")
    assert [r for r in eng.connections() if r["template"]][0]["state"] == "ASSURED"
    drv.c2s(1.0, "FA")
    drv.s2c(1.01, "FA")
    assert conn_of(eng)["state"] == "TIME_WAIT"
    # the controlled entry is not "expected": the SYN reuses it (same RS)
    d = drv.c2s(4.0, "S")
    assert (d["action"], d["rs"], d["state"]) == ("hit", RS2, "SYN_RECV")
    # another port of the client: template hit, the scheduler is not consulted
    d = drv.c2s(5.0, "S", cport=40001)
    assert (d["action"], d["rs"]) == ("new", RS2)
    # quiesce RS2: without expire_quiescent_template new ports still go there
    eng.apply(cmd("edit-dest", svc, RealServer(RS2, 80, fwd=FWD_MASQ, weight=0)))
    assert drv.c2s(6.0, "S", cport=40002)["rs"] == RS2
    eng.set_sysctl("expire_quiescent_template", 1)
    d = drv.c2s(7.0, "S", cport=40003)
    assert (d["action"], d["rs"]) == ("new", RS1)
    tpls = [r for r in eng.connections() if r["template"]]
    # the invalidated template is re-hashed with vport = dport = 0xffff, cport 0
    assert sorted(r["destination"] for r in tpls) == [f"{RS1}:80", f"{RS2}:65535"]
    assert sorted(r["virtual"] for r in tpls) == [f"{VIP}:65535", f"{VIP}:80"]
    eng.check_invariants()


def test_template_expires_later_while_it_controls_connections():
    svc = service(fwd=FWD_MASQ, timeout=30)
    eng = engine(svc)
    drv = Driver(eng)
    drv.c2s(0.0, "S")
    drv.c2s(0.01, "A")                          # ESTABLISHED: 900 s
    tpl = lambda: [r for r in eng.connections() if r["template"]]
    assert tpl()[0]["expire"] == 29
    eng.advance(at(30.0))                       # template timer fires: it controls one entry
    assert tpl()[0]["expire"] == 60 and tpl()[0]["n_control"] == 1
    eng.advance(at(90.0))
    assert tpl()[0]["expire"] == 60             # every 60 s while it controls
    drv.c2s(100.0, "R")                          # CLOSE: the entry dies 10 s later
    eng.advance(at(110.0))
    assert conn_of(eng) is None
    assert tpl()[0]["n_control"] == 0
    eng.advance(at(150.0))                      # last re-arm at 150 s: expires for good
    assert tpl() == []
    assert eng.dests()[1]["persistconns"] == 0
    eng.check_invariants()
