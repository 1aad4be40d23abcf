"""The IPVS model against the worked scenarios of the semantics reference (section 13, with the
errata), the transition tables as printed there, and the scheduler vectors."""
import pytest

from model import IPVSModel, Packet
from model import tables as T
from model.scenario import Scenario

RS1, RS2 = "10.1.0.1", "10.1.0.2"
R1, R2 = f"{RS1}:80", f"{RS2}:80"


def steps(decisions):
    return [(d["action"], d["rs"], d["state"]) for d in decisions]


# ---- V1 / V2 / V3: NAT lifecycle and TIME_WAIT reuse -----------------------------------------

def v1(sc):
    out = [sc.c(0.0, "S")]
    assert sc.counters(RS2) == ((1, 0) if sc.model.variant.tcp_active_v48 else (0, 1))
    out += [sc.rs(0.01, RS2, "SA"), sc.c(0.02, "A"), sc.c(1.0, "FA")]
    assert sc.counters(RS2) == (0, 1)
    out += [sc.rs(1.01, RS2, "A"), sc.rs(1.02, RS2, "FA"), sc.c(1.03, "A")]
    return out


def test_v1_nat_lifecycle_client_closes_first():
    sc = Scenario(fwd="nat")
    out = v1(sc)
    assert steps(out) == [("new", R2, "SYN_RECV"), ("hit", R2, "SYN_RECV"), ("hit", R2, "ESTABLISHED"),
                          ("hit", R2, "CLOSE_WAIT"), ("hit", R2, "CLOSE_WAIT"), ("hit", R2, "TIME_WAIT"),
                          ("hit", R2, "TIME_WAIT")]
    assert [d["dir"] for d in out] == ["in", "out", "in", "in", "out", "out", "in"]
    assert sc.counters(RS2) == (0, 1)
    (row,) = sc.conns()
    assert row["state"] == "TIME_WAIT" and row["expires"] == 120
    # gone at about 121.03 s
    sc.model.advance(round(121.0 * 1e9))
    assert len(sc.conns()) == 1
    sc.model.advance(round(121.04 * 1e9))
    assert sc.conns() == [] and sc.counters(RS2) == (0, 0)


def test_v1_replies_in_front_of_the_director_are_output():
    sc = Scenario(fwd="nat")
    out = [sc.c(0.0, "S"), sc.s(0.01, "SA"), sc.c(0.02, "A"), sc.c(1.0, "FA"), sc.s(1.01, "A"),
           sc.s(1.02, "FA"), sc.c(1.03, "A")]
    assert [d["state"] for d in out] == ["SYN_RECV", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT",
                                         "CLOSE_WAIT", "TIME_WAIT", "TIME_WAIT"]
    assert [d["dir"] for d in out] == ["in", "out", "in", "in", "out", "out", "in"]


def test_v2_time_wait_reuse_mode1_reschedules_without_drop():
    sc = Scenario(fwd="nat")
    v1(sc)
    d = sc.c(4.0, "S")
    assert (d["action"], d["rs"], d["state"], d["reuse_of"]) == ("resched", R1, "SYN_RECV", 1)
    assert d["conn"] == 2
    # the old entry still counts until its timer runs right after the packet (section 8)
    assert sc.counters(RS2) == (0, 1) and sc.counters(RS1) == (1, 0)
    sc.model.advance(round(4.0 * 1e9))
    assert sc.counters(RS2) == (0, 0)
    assert [r["rs"] for r in sc.conns()] == [RS1]


def test_v2_mode0_reuses_old_entry():
    sc = Scenario(fwd="nat", sysctls={"conn_reuse_mode": 0})
    v1(sc)
    d = sc.c(4.0, "S")
    assert (d["action"], d["rs"], d["state"], d["conn"]) == ("hit", R2, "SYN_RECV", 1)
    assert sc.counters(RS2) == (1, 0)
    assert sc.conns()[0]["expires"] == 60


@pytest.mark.parametrize("kernel", ["4.3", "4.9", "5.10"])
def test_v2_older_kernels_also_reschedule_without_conntrack(kernel):
    sc = Scenario(fwd="nat", kernel=kernel)
    v1(sc)
    d = sc.c(4.0, "S")
    assert (d["action"], d["rs"]) == ("resched", R1)


def test_v3_conntrack_current_kernel_reschedules_time_wait_at_once():
    sc = Scenario(fwd="nat", sysctls={"conntrack": 1})
    v1(sc)
    d = sc.c(4.0, "S")
    assert (d["action"], d["rs"]) == ("resched", R1)


def test_v3_conntrack_2016_code_drops_then_retransmit_is_scheduled_fresh():
    sc = Scenario(fwd="nat", sysctls={"conntrack": 1}, kernel="5.4")
    v1(sc)
    d = sc.c(4.0, "S")
    assert (d["action"], d["reason"], d["rs"]) == ("drop", "conntrack_drop", None)
    d = sc.c(5.0, "S")
    assert (d["action"], d["rs"], d["state"]) == ("new", R1, "SYN_RECV")
    assert sc.counters(RS2) == (0, 0)


# ---- V4 / V5: DR --------------------------------------------------------------------------

def dr_to_fin_wait(sc):
    out = [sc.c(0.0, "S"), sc.c(0.1, "A")]
    assert sc.counters(RS2) == (1, 0)
    out += [sc.c(0.5, "FA")]
    assert sc.counters(RS2) == (0, 1)
    out += [sc.c(0.6, "A")]
    assert steps(out) == [("new", R2, "SYN_RECV"), ("hit", R2, "ESTABLISHED"), ("hit", R2, "FIN_WAIT"),
                          ("hit", R2, "FIN_WAIT")]
    assert sc.conns()[0]["expires"] == 120


def test_v4_dr_mode2_reschedules_fin_wait():
    sc = Scenario(fwd="dr", sysctls={"conn_reuse_mode": 2})
    dr_to_fin_wait(sc)
    d = sc.c(3.6, "S")
    assert (d["action"], d["rs"], d["state"]) == ("resched", R1, "SYN_RECV")
    sc.model.advance(round(3.6 * 1e9))
    assert [r["rs"] for r in sc.conns()] == [RS1] and sc.counters(RS2) == (0, 0)


def test_v4_dr_mode1_keeps_fin_wait_entry():
    sc = Scenario(fwd="dr", sysctls={"conn_reuse_mode": 1})
    dr_to_fin_wait(sc)
    d = sc.c(3.6, "S")
    assert (d["action"], d["rs"], d["state"]) == ("hit", R2, "SYN_RECV")
    assert sc.counters(RS2) == (1, 0)


def dr_rst(sc):
    out = [sc.c(0.0, "S"), sc.c(0.1, "A"), sc.c(0.5, "R")]
    assert [d["state"] for d in out] == ["SYN_RECV", "ESTABLISHED", "CLOSE"]
    assert sc.counters(RS2) == (0, 1)


def test_v5_dr_rst_then_reuse_reschedules():
    sc = Scenario(fwd="dr")
    dr_rst(sc)
    d = sc.c(2.5, "S")
    assert (d["action"], d["rs"]) == ("resched", R1)


def test_v5_kernel_without_close_reuse_keeps_entry():
    sc = Scenario(fwd="dr", kernel="4.9")
    dr_rst(sc)
    d = sc.c(2.5, "S")
    assert (d["action"], d["rs"], d["state"]) == ("hit", R2, "SYN_RECV")


def test_v5_after_close_timeout_schedules_normally():
    sc = Scenario(fwd="dr")
    dr_rst(sc)
    d = sc.c(10.6, "S")
    assert (d["action"], d["rs"], d["reuse_of"]) == ("new", R1, None)


def test_errata2_conntrack_dr_drops_reuse_syn_on_fin_wait():
    sc = Scenario(fwd="dr", sysctls={"conn_reuse_mode": 2, "conntrack": 1})
    dr_to_fin_wait(sc)
    d = sc.c(3.6, "S")
    assert (d["action"], d["reason"]) == ("drop", "conntrack_drop")
    d = sc.c(4.6, "S")                        # the retransmission is scheduled fresh
    assert (d["action"], d["rs"]) == ("new", R1)


def test_conntrack_dr_close_after_client_rst_is_rescheduled():
    # The oracle fixture conntrack_dr_mode2 (kernel 6.1) shows the tracker re-opening the
    # conntrack a client RST closed, so this reuse is not dropped (errata 2 said it was).
    sc = Scenario(fwd="dr", sysctls={"conn_reuse_mode": 2, "conntrack": 1})
    dr_rst(sc)
    assert (sc.c(2.5, "S")["action"], sc.model.conns[-1].dest.addr) == ("resched", RS1)


def test_conntrack_sysctl_without_conntrack_hooks_changes_nothing():
    sc = Scenario(fwd="dr", sysctls={"conn_reuse_mode": 2, "conntrack": 1})
    sc.model.conntrack_hooks = False
    dr_to_fin_wait(sc)
    assert sc.c(3.6, "S")["action"] == "resched"


def test_director_rst_to_a_passed_segment_closes_the_dr_entry():
    # expire_nodest_conn on a deleted server's entry, non-SYN packet: the entry is expired and the
    # segment goes to the director's stack, whose RST (VIP -> client) runs OUTPUT rst on the entry.
    sc = Scenario(fwd="dr", sysctls={"expire_nodest_conn": 0})
    sc.c(0, "S"), sc.c(0.01, "A")
    sc.delete(0.5, RS2)
    sc.model.set_sysctl("expire_nodest_conn", 1)
    d = sc.c(1.0, "PA")
    assert (d["action"], d["reason"]) == ("pass", "nodest_expired")
    (row,) = sc.conns()
    assert (row["state"], row["expires"], row["noutput"]) == ("CLOSE", 10, False)


def test_errata2_conntrack_nat_established_weight0_branch_a_drops():
    sc = Scenario(fwd="nat", sysctls={"conntrack": 1, "expire_nodest_conn": 1})
    sc.c(0.0, "S"), sc.rs(0.01, RS2, "SA"), sc.c(0.02, "A")
    sc.edit(1.0, RS2, weight=0)
    d = sc.c(2.0, "S")
    assert (d["action"], d["reason"]) == ("drop", "conntrack_drop")


# ---- V6 / V7: quiesced and deleted servers -------------------------------------------------

def nat_established(sc):
    out = [sc.c(0.0, "S"), sc.rs(0.01, RS2, "SA"), sc.c(0.02, "A")]
    assert out[-1]["state"] == "ESTABLISHED" and sc.counters(RS2) == (1, 0)


@pytest.mark.parametrize("mode", [0, 1])
def test_v6_weight0_expire_nodest_reschedules_syn(mode):
    sc = Scenario(fwd="nat", sysctls={"expire_nodest_conn": 1, "conn_reuse_mode": mode})
    nat_established(sc)
    sc.edit(1.0, RS2, weight=0)
    d = sc.c(1.5, "A")
    assert (d["action"], d["rs"], d["state"]) == ("hit", R2, "ESTABLISHED")
    d = sc.c(2.0, "S")
    assert (d["action"], d["rs"], d["reason"]) == ("resched", R1, "dest_weight_0")
    sc.model.advance(round(2.0 * 1e9))
    assert sc.counters(RS2) == (0, 0)


def test_v6_weight0_mode0_before_5_16_keeps_entry():
    sc = Scenario(fwd="nat", sysctls={"expire_nodest_conn": 1, "conn_reuse_mode": 0}, kernel="5.15")
    nat_established(sc)
    sc.edit(1.0, RS2, weight=0)
    d = sc.c(2.0, "S")
    assert (d["action"], d["rs"], d["state"]) == ("hit", R2, "ESTABLISHED")


def test_v6_weight0_without_expire_nodest_goes_to_quiesced_server():
    sc = Scenario(fwd="nat")
    nat_established(sc)
    sc.edit(1.0, RS2, weight=0)
    d = sc.c(2.0, "S")
    assert (d["action"], d["rs"], d["state"]) == ("hit", R2, "ESTABLISHED")


def test_v7_deleted_server_without_expire_nodest_drops_and_revives():
    sc = Scenario(fwd="nat")
    nat_established(sc)
    sc.delete(1.0, RS2)
    d = sc.c(2.0, "A")
    assert (d["action"], d["reason"]) == ("drop", "dest_unavailable")
    assert sc.conns()[0]["expires"] == 900 - 2      # not refreshed: deadline still 0.02 + 900
    # errata 3: a NAT reply from the deleted server is still handled and refreshes the timer
    d = sc.rs(3.0, RS2, "A")
    assert (d["action"], d["dir"]) == ("hit", "out")
    assert sc.conns()[0]["expires"] == 900
    sc.add(4.0, RS2)
    d = sc.c(5.0, "A")
    assert (d["action"], d["rs"], d["conn"]) == ("hit", R2, 1)


def test_v7_deleted_server_entry_dies_at_old_deadline():
    sc = Scenario(fwd="nat")
    nat_established(sc)
    sc.delete(1.0, RS2)
    sc.c(2.0, "A")
    sc.model.advance(round(900.01 * 1e9))
    assert len(sc.conns()) == 1
    sc.model.advance(round(900.03 * 1e9))
    assert sc.conns() == []


def test_v7_expire_nodest_flushes_then_ack_passes_and_syn_is_new():
    sc = Scenario(fwd="nat", sysctls={"expire_nodest_conn": 1})
    nat_established(sc)
    sc.delete(1.0, RS2)
    assert sc.conns() == []
    d = sc.c(1.5, "A")
    assert (d["action"], d["rs"]) == ("pass", None)
    d = sc.c(2.0, "S")
    assert (d["action"], d["rs"]) == ("new", R1)


def test_v7_expire_nodest_before_5_9_drops_and_expires():
    sc = Scenario(fwd="nat", sysctls={"expire_nodest_conn": 1}, kernel="5.4")
    nat_established(sc)
    sc.delete(1.0, RS2)
    assert len(sc.conns()) == 1                 # no flush before v5.9
    d = sc.c(1.5, "A")
    assert (d["action"], d["reason"]) == ("drop", "dest_unavailable")
    d = sc.c(2.0, "S")
    assert (d["action"], d["rs"]) == ("new", R1)


# ---- V8: persistence ------------------------------------------------------------------------

def test_v8_persistence_blocks_reuse_and_pins_client():
    from ipvsflow.config import SVC_F_PERSISTENT
    sc = Scenario(fwd="nat", flags=SVC_F_PERSISTENT, persistence=300)
    out = [sc.c(0.0, "S"), sc.rs(0.01, RS2, "SA"), sc.c(0.02, "A"), sc.c(1.0, "FA"), sc.rs(1.01, RS2, "FA"),
           sc.c(1.02, "A")]
    assert out[0]["rs"] == R2 and out[-1]["state"] == "TIME_WAIT"
    m = sc.model
    assert m.dest_counters()[R2]["persist"] == 1
    (tpl,) = [r for r in sc.conns(templates=True) if r["template"]]
    assert (tpl["cport"], tpl["vport"], tpl["rs"], tpl["state"]) == (0, 80, RS2, "ASSURED")
    d = sc.c(4.0, "S")
    assert (d["action"], d["rs"], d["conn"], d["state"]) == ("hit", R2, out[0]["conn"], "SYN_RECV")
    d = sc.c(5.0, "S", cport=40001)
    assert (d["action"], d["rs"]) == ("new", R2)
    # the rr cursor was not moved by the template hit: another client gets RS1
    assert sc.c(5.5, "S", client="10.0.0.9")["rs"] == R1


@pytest.mark.parametrize("eqt,expected", [(0, R2), (1, R1)])
def test_v8_quiescent_template(eqt, expected):
    from ipvsflow.config import SVC_F_PERSISTENT
    sc = Scenario(fwd="nat", flags=SVC_F_PERSISTENT, persistence=300,
                  sysctls={"expire_quiescent_template": eqt})
    assert sc.c(0.0, "S")["rs"] == R2
    sc.edit(1.0, RS2, weight=0)
    assert sc.c(2.0, "S", cport=40001)["rs"] == expected


# ---- V9 / V10 / V11 ---------------------------------------------------------------------------

@pytest.mark.parametrize("dr_replies,kernel,fin_state", [("inspect", "6.1", "CLOSE_WAIT"),
                                                         ("ignore", "6.1", "FIN_WAIT"),
                                                         ("inspect", "5.10", "FIN_WAIT")])
def test_v9_dr_reply_clears_nooutput(dr_replies, kernel, fin_state):
    sc = Scenario(fwd="dr", dr_replies=dr_replies, kernel=kernel)
    sc.c(0.0, "S"), sc.c(0.1, "A")
    d = sc.s(0.2, "A")
    if fin_state == "CLOSE_WAIT":
        assert (d["action"], d["dir"], d["state"], d["noutput"]) == ("hit", "out", "ESTABLISHED", False)
    else:
        assert (d["action"], d["reason"]) == ("pass", "dr_reply_not_seen")
    assert sc.c(0.3, "FA")["state"] == fin_state


@pytest.mark.parametrize("flags", ["P", ""])
def test_v10_no_flag_packet_closes(flags):
    sc = Scenario(fwd="nat")
    nat_established(sc)
    d = sc.c(1.0, flags)
    assert (d["action"], d["rs"], d["state"]) == ("hit", R2, "CLOSE")
    assert sc.counters(RS2) == (0, 1) and sc.conns()[0]["expires"] == 10


def test_v11_secure_tcp_3_nat_handshake():
    sc = Scenario(fwd="nat", sysctls={"secure_tcp": 3})
    out = [sc.c(0, "S"), sc.rs(0.01, RS2, "SA"), sc.c(0.02, "A"), sc.c(0.03, "PA"), sc.rs(0.04, RS2, "A")]
    assert [d["state"] for d in out] == ["SYN_RECV", "SYNACK", "SYNACK", "SYNACK", "ESTABLISHED"]
    assert sc.counters(RS2) == (1, 0)
    sc0 = Scenario(fwd="nat", sysctls={"secure_tcp": 0})
    out = [sc0.c(0, "S"), sc0.rs(0.01, RS2, "SA"), sc0.c(0.02, "A")]
    assert out[-1]["state"] == "ESTABLISHED"


@pytest.mark.parametrize("value", [1, 2])
def test_secure_tcp_below_3_is_normal_table_without_memory_pressure(value):
    sc = Scenario(fwd="nat", sysctls={"secure_tcp": value})
    out = [sc.c(0, "S"), sc.rs(0.01, RS2, "SA"), sc.c(0.02, "A")]
    assert out[-1]["state"] == "ESTABLISHED"


# ---- V12: SCTP ----------------------------------------------------------------------------------

def sctp_assoc(sc):
    out = [sc.c(0, chunk="INIT")]
    assert (out[0]["state"], sc.counters(RS2), sc.conns()[0]["expires"]) == ("INIT1", (0, 1), 4)
    out += [sc.rs(0.01, RS2, chunk="INIT_ACK"), sc.c(0.02, chunk="COOKIE_ECHO"),
            sc.rs(0.03, RS2, chunk="COOKIE_ACK")]
    assert sc.counters(RS2) == (1, 0) and sc.conns()[0]["expires"] == 900
    out += [sc.c(1.0, chunk="SHUTDOWN")]
    assert sc.counters(RS2) == (0, 1)
    out += [sc.rs(1.01, RS2, chunk="SHUTDOWN_ACK"), sc.c(1.02, chunk="SHUTDOWN_COMPLETE")]
    assert [d["state"] for d in out] == ["INIT1", "C-SENT", "C-REPLIED", "ESTABLISHED", "S-RECEIVED",
                                         "S-ACK-SENT", "CLOSED"]
    assert sc.conns()[0]["expires"] == 61


def test_v12_sctp_nat_association_and_init_reuse():
    sc = Scenario(fwd="nat", proto="sctp")
    sctp_assoc(sc)
    d = sc.c(5.0, chunk="INIT")
    assert (d["action"], d["rs"], d["state"]) == ("resched", R1, "INIT1")


def test_v12_sctp_mode0_init_on_closed_entry():
    sc = Scenario(fwd="nat", proto="sctp", sysctls={"conn_reuse_mode": 0})
    sctp_assoc(sc)
    d = sc.c(5.0, chunk="INIT")
    assert (d["action"], d["rs"], d["state"]) == ("hit", R2, "INIT")


def test_v12_sctp_dr_input_only():
    sc = Scenario(fwd="dr", proto="sctp")
    out = [sc.c(0, chunk="INIT"), sc.c(0.02, chunk="COOKIE_ECHO")]
    assert [d["state"] for d in out] == ["INIT1", "ESTABLISHED"]


def test_errata4_sctp_client_shutdown_ack_closes_server_initiated_shutdown():
    sc = Scenario(fwd="nat", proto="sctp")
    sc.c(0, chunk="INIT"), sc.rs(0.01, RS2, chunk="INIT_ACK"), sc.c(0.02, chunk="COOKIE_ECHO")
    sc.rs(0.03, RS2, chunk="COOKIE_ACK")
    assert sc.rs(1.0, RS2, chunk="SHUTDOWN")["state"] == "S-SENT"
    assert sc.c(1.01, chunk="SHUTDOWN_ACK")["state"] == "CLOSED"


# ---- V13 / V14: schedulers ----------------------------------------------------------------------

ABC = (("10.1.0.1", 80, 1), ("10.1.0.2", 80, 1), ("10.1.0.3", 80, 1))      # A, B, C added in order
A, B, C = "10.1.0.1:80", "10.1.0.2:80", "10.1.0.3:80"


def test_v13_lc_ties_go_to_list_order():
    sc = Scenario(fwd="dr", sched="lc", dests=ABC)
    picks = [sc.c(i, "S", cport=40000 + i)["rs"] for i in range(4)]
    assert picks == [C, B, A, C]


def test_v13_wlc_tie_keeps_earlier():
    sc = Scenario(fwd="dr", sched="wlc", dests=(("10.1.0.1", 80, 1), ("10.1.0.2", 80, 2), ("10.1.0.3", 80, 1)))
    # make overheads C=256, B=512, A=256: one active on C and A, two on B
    m = sc.model
    dests = {d.endpoint(): d for d in m.all_dests}
    dests[C].active, dests[B].active, dests[A].active = 1, 2, 1
    assert sc.c(0, "S")["rs"] == C


def test_v14_wrr_with_errata1_first_pass():
    sc = Scenario(fwd="dr", sched="wrr", dests=(("10.1.0.3", 80, 2), ("10.1.0.2", 80, 3), ("10.1.0.1", 80, 4)))
    names = {A: "A", B: "B", C: "C"}
    picks = "".join(names[sc.c(i * 0.01, "S", cport=40000 + i)["rs"]] for i in range(3 + 1 + 2 + 3 + 3 + 1 + 2))
    assert picks == "ABC" + "A" + "AB" + "ABC" + "ABC" + "A" + "AB"


def test_wrr_weights_changed_recomputes():
    # weights 4,3,2: after the first pass, quiescing A leaves B and C in a 3:2 cycle
    sc = Scenario(fwd="dr", sched="wrr", dests=(("10.1.0.3", 80, 2), ("10.1.0.2", 80, 3), ("10.1.0.1", 80, 4)))
    for i in range(3):
        sc.c(i * 0.01, "S", cport=40000 + i)
    sc.edit(1.0, "10.1.0.1", weight=0)
    picks = [sc.c(2 + i * 0.01, "S", cport=41000 + i)["rs"] for i in range(10)]
    assert A not in picks and picks.count(B) == 6 and picks.count(C) == 4


def test_rr_first_pick_is_newest_and_skips_weight0_and_follows_deleted_cursor():
    sc = Scenario(fwd="dr", sched="rr", dests=ABC)
    picks = [sc.c(i * 0.01, "S", cport=40000 + i)["rs"] for i in range(4)]
    assert picks == [C, B, A, C]
    sc.edit(1.0, "10.1.0.2", weight=0)
    assert [sc.c(2 + i * 0.01, "S", cport=41000 + i)["rs"] for i in range(3)] == [A, C, A]
    # cursor on A (last in list): deleting A moves the cursor to B, so C comes next
    sc.edit(3.0, "10.1.0.2", weight=1)
    sc.delete(3.0, "10.1.0.1")
    assert sc.c(4.0, "S", cport=42000)["rs"] == C


def test_nq_first_idle_then_least_expected_delay():
    sc = Scenario(fwd="dr", sched="nq", dests=(("10.1.0.1", 80, 1), ("10.1.0.2", 80, 3)))
    picks = [sc.c(i * 0.01, "S", cport=40000 + i)["rs"] for i in range(5)]
    # idle B then idle A; then (a+1)/w: A 2/1, B 2/3 -> B; B 3/3 = 1 < 2 -> B; B 4/3 < 2 -> B
    assert picks == [B, A, B, B, B]


def test_ovf_active_above_weight_is_skipped():
    sc = Scenario(fwd="dr", sched="ovf", dests=(("10.1.0.1", 80, 1), ("10.1.0.2", 80, 2)))
    picks = [sc.c(i * 0.01, "S", cport=40000 + i)["rs"] for i in range(5)]
    # B (w2) until active 3 > 2, then A until active 2 > 1, then none
    assert picks == [B, B, B, A, A]
    d = sc.c(1.0, "S", cport=40100)
    assert (d["action"], d["reason"]) == ("drop", "no_dest")


def test_fo_highest_weight_first_in_list_on_ties():
    sc = Scenario(fwd="dr", sched="fo", dests=(("10.1.0.1", 80, 2), ("10.1.0.2", 80, 2), ("10.1.0.3", 80, 1)))
    assert {sc.c(i * 0.01, "S", cport=40000 + i)["rs"] for i in range(3)} == {B}


def test_thresholds_overload_and_release():
    sc = Scenario(fwd="dr", sched="rr", dests=(("10.1.0.1", 80, 1), ("10.1.0.2", 80, 1)))
    sc.edit(0, RS2, weight=1, u=2, l=1)
    picks = [sc.c(i * 0.01, "S", cport=40000 + i)["rs"] for i in range(4)]
    assert picks == [R2, R1, R2, R1]
    assert sc.model.dest_counters()[R2]["overload"]
    assert sc.c(0.1, "S", cport=40010)["rs"] == R1          # RS2 overloaded: rr skips it
    sc.model.advance(round(60.01 * 1e9))        # RS2's first SYN_RECV entry expires: total 1
    assert sc.model.dest_counters()[R2]["overload"]
    sc.model.advance(round(60.03 * 1e9))        # the second one: total 0 < l_threshold 1
    assert not sc.model.dest_counters()[R2]["overload"]


# ---- V15: UDP -----------------------------------------------------------------------------------

def test_v15_udp_timer_and_rescheduling():
    sc = Scenario(fwd="nat", proto="udp", vport=53, dests=(("10.1.0.1", 53, 1), ("10.1.0.2", 53, 1)))
    d = sc.c(0, cport=5353)
    assert (d["action"], d["rs"], d["state"]) == ("new", "10.1.0.2:53", "UDP")
    assert sc.counters(RS2, 53) == (0, 1)
    d = sc.rs(100, RS2, cport=5353, rport=53)
    assert (d["action"], d["dir"]) == ("hit", "out")
    assert sc.conns(cport=5353)[0]["expires"] == 300
    assert sc.c(399, cport=5353)["conn"] == 1          # 299 s after the reply: still alive
    d = sc.c(700, cport=5353)                           # 301 s later: expired, next rr dest
    assert (d["action"], d["rs"], d["conn"]) == ("new", "10.1.0.1:53", 2)


def test_udp_one_packet_scheduling():
    from ipvsflow.config import SVC_F_ONEPACKET
    sc = Scenario(fwd="dr", proto="udp", vport=53, flags=SVC_F_ONEPACKET,
                  dests=(("10.1.0.1", 53, 1), ("10.1.0.2", 53, 1)))
    picks = [sc.c(i, cport=5353)["rs"] for i in range(3)]
    assert picks == ["10.1.0.2:53", "10.1.0.1:53", "10.1.0.2:53"]
    assert sc.conns() == [] and sc.counters(RS2, 53) == (0, 0)


# ---- the tables themselves, cell by cell from the reference's markdown tables (section 3.4) ----

NORMAL_INPUT_MD = """
| NO | SR | CL | ES | CL |
| ES | ES | CW | ES | CL |
| SS | ES | SS | SS | CL |
| SR | SR | TW | ES | SR |
| FW | SR | TW | FW | CL |
| TW | SR | TW | TW | CL |
| CL | SR | CL | CL | CL |
| CW | SR | CW | CW | CL |
| LA | SR | LA | CL | LA |
| LI | SR | LI | LI | LI |
| SA | SR | TW | ES | SR |
"""
NORMAL_OUTPUT_MD = """
| NO | SS | TW | ES | CL |
| ES | ES | FW | ES | CL |
| SS | SS | SS | SS | SS |
| SR | SR | TW | ES | CL |
| FW | SS | FW | FW | CL |
| TW | SS | TW | TW | TW |
| CL | SS | CL | CL | CL |
| CW | SS | TW | CW | CL |
| LA | SS | LA | LA | CL |
| LI | LI | LI | ES | CL |
| SA | SR | TW | ES | CL |
"""


@pytest.mark.parametrize("direction,text", [("INPUT", NORMAL_INPUT_MD), ("OUTPUT", NORMAL_OUTPUT_MD)])
def test_compact_arrays_agree_with_the_row_tables(direction, text):
    """The compact arrays (parsed in model.tables) and the row-per-state tables of the same section
    are two printings of one table: they must agree cell by cell."""
    for line in text.strip().splitlines():
        cur, *cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for event, cell in zip(("syn", "fin", "ack", "rst"), cells):
            assert T.TCP_TABLES["NORMAL"][direction][event][T.TCP_FROM_SHORT[cur]] == T.TCP_FROM_SHORT[cell]


def test_every_tcp_cell_drives_the_model():
    """Each (table, direction, state, event) cell through the model's packet path: an entry forced
    into the state, one packet, the state after equals the cell."""
    for table, secure in (("NORMAL", 0), ("DOS", 3)):
        for direction in ("INPUT", "OUTPUT", "INPUT_ONLY"):
            for event, flag in (("syn", "S"), ("fin", "F"), ("ack", "A"), ("rst", "R")):
                for state in T.TCP_STATES:
                    fwd = "dr" if direction == "INPUT_ONLY" else "nat"
                    sc = Scenario(fwd=fwd, sysctls={"secure_tcp": secure, "conn_reuse_mode": 0})
                    sc.c(0, "S")
                    cp = sc.model.conns[0]
                    cp.state = state
                    d = sc.c(1, flag) if direction != "OUTPUT" else sc.rs(1, RS2, flag)
                    assert d["state"] == T.TCP_TABLES[table][direction][event][state], (table, direction, state, event)


def test_active_counter_follows_states_v48_and_older():
    new = Scenario(fwd="nat")
    new.c(0, "S")
    assert new.counters(RS2) == (1, 0)
    old = Scenario(fwd="nat", kernel="4.4")
    old.c(0, "S")
    assert old.counters(RS2) == (0, 1)
    old.c(0.1, "A")
    assert old.counters(RS2) == (1, 0)


def test_invalid_and_foreign_packets():
    m = IPVSModel()
    d = m.process(Packet(ts_ns=0, status="fragment"))
    assert (d["action"], d["reason"]) == ("invalid", "fragment")
    d = m.process(Packet(ts_ns=1, proto=1, src="10.0.0.1", dst="192.0.2.10"))
    assert (d["action"], d["dir"]) == ("pass", "-")
    sc = Scenario()
    d = sc.c(0, "S", dport=81)
    assert (d["action"], d["reason"], d["dir"]) == ("pass", "no_service", "-")
    d = sc.c(0, "A")
    assert (d["action"], d["reason"]) == ("pass", "no_conn_not_syn")
    d = sc.c(0, "SR")
    assert (d["action"], d["reason"]) == ("pass", "rst_no_conn")


def test_sloppy_tcp_schedules_on_ack():
    sc = Scenario(sysctls={"sloppy_tcp": 1})
    d = sc.c(0, "A")
    assert (d["action"], d["rs"], d["state"]) == ("new", R2, "ESTABLISHED")


# ---- self-consistency on random scenarios ---------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402

from model.strategies import FORWARDED, scenarios  # noqa: E402


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_model_invariants_on_random_scenarios(scenario):
    """Server counters always equal a recount of the bound entries, every forwarded packet has a
    live real server and a connection, and a connection keeps its real server."""
    config, packets, commands = scenario
    model = IPVSModel(config.copy())
    rs_of = {}
    for i, pkt in enumerate(packets):
        for cmd in commands.get(i, ()):
            model.advance(pkt.ts_ns)
            model.apply(cmd)
        d = model.process(pkt, i)
        model.check_invariants()
        if d["action"] in FORWARDED:
            assert d["rs"] is not None and d["conn"] is not None
            assert rs_of.setdefault(d["conn"], d["rs"]) == d["rs"]
        if d["action"] in ("new", "resched"):
            # the first packet runs the state machine, and no event keeps TCP or SCTP in NONE;
            # an entry scheduled from an ICMP error (schedule_icmp) stays as created
            if pkt.proto in (1, 58):
                assert d["state"] in ("NONE", "UDP")
            else:
                assert d["state"] != "NONE"
