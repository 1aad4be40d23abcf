"""The engine's Python API: decisions as a numpy view, every parse status and protocol class,
scheduling outcomes with their reason codes, sysctls and timeouts, rule edits, listings in
ipvsadm's formats, errors for bad input."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from engine_helpers import (
    Driver, engine, service, config, batch, decode, tcp_frame, udp_frame, ether, ip_packet,
    T0, CLIENT, VIP, RS1, RS2, TCP, UDP, MAC_C, MAC_D, cmd,
)
from ipvsflow.config import (
    Command, Config, ConfigError, RealServer, VirtualService, FWD_MASQ, FWD_DROUTE, FWD_TUNNEL,
    SVC_F_PERSISTENT, SVC_F_ONEPACKET,
)
from ipvsflow.engine import (
    ACTIONS, DIRS, REASONS, REASON_CODES, DECISION_DTYPE, Engine, state_name, variant_for,
)
from ipvsflow.engine import core, names
from ipvsflow.io import PacketBatch


def at(t):
    return T0 + int(round(t * 1e9))


# ---- codes and the decision record ---------------------------------------------------------

def test_decisions_carry_what_the_forwarders_need():
    eng = engine(service(fwd=FWD_MASQ, dport=8080))
    drv = Driver(eng)
    dec = eng.process(batch([(0.0, tcp_frame(CLIENT, 40000, VIP, 80, "S")),
                             (0.01, tcp_frame(VIP, 80, CLIENT, 40000, "SA")),
                             (0.02, tcp_frame(CLIENT, 40001, VIP, 81, "S"))]))
    vip16 = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 10])
    for d in dec[:2]:
        assert (int(d["dport"]), int(d["vport"]), int(d["fwd"])) == (8080, 80, FWD_MASQ)
        assert bytes(d["vaddr"]) == vip16
    assert (int(dec[2]["fwd"]), int(dec[2]["dport"]), bytes(dec[2]["vaddr"])) == (0xFF, 0, bytes(16))
    eng2 = engine(service(fwd=FWD_TUNNEL))
    d = eng2.process(batch([(0.0, tcp_frame(CLIENT, 40000, VIP, 80, "S"))]))[0]
    assert (int(d["fwd"]), int(d["dport"])) == (FWD_TUNNEL, 80)


def test_reason_names_match_the_compiled_enum():
    compiled = core.reason_codes()
    assert len(compiled) == len(REASONS) == core.REASON_COUNT
    for name, code in compiled.items():
        assert REASONS[code] == name
    assert REASON_CODES == compiled


def test_decision_dtype_layout():
    assert DECISION_DTYPE.itemsize == 72
    names_ = ["pkt", "ts_ns", "conn", "reuse_of", "rs", "svc", "action", "reason", "dir",
              "proto", "state", "old_state", "flags", "dport", "vport", "fwd", "vaddr"]
    assert list(DECISION_DTYPE.names) == names_
    offs = [DECISION_DTYPE.fields[n][1] for n in names_]
    assert offs == sorted(offs) and offs[-1] == 56
    assert ACTIONS[1:] == ("new", "hit", "resched", "drop", "pass", "invalid")
    assert DIRS == ("-", "in", "out")


def test_state_names():
    assert state_name(6, 1) == "ESTABLISHED" and state_name(6, 10) == "SYNACK"
    assert state_name(17, 0) == "UDP"
    assert state_name(132, 13) == "CLOSED"
    assert state_name(6, 1, template=True) == "ASSURED"
    assert state_name(0, 0) == "NONE"
    assert state_name(6, 0xFF) == "-"
    assert state_name(6, 11) == "ERR!"


def test_process_returns_a_view_over_engine_memory_and_respects_ranges():
    eng = engine()
    frames = [(0.001 * i, tcp_frame(CLIENT, 1000 + i, VIP, 80, "S")) for i in range(10)]
    b = batch(frames)
    dec = eng.process(b, 2, 5)
    assert dec.dtype == DECISION_DTYPE and len(dec) == 3
    assert list(dec["pkt"]) == [2, 3, 4]
    assert dec.base is not None                     # a view, not a copy
    kept = dec.copy()
    dec2 = eng.process(b, 5, 7)
    # the next call writes the same memory: the first view now shows packets 5 and 6
    assert list(dec[:2]["pkt"]) == [5, 6]
    assert list(kept["pkt"]) == [2, 3, 4]
    assert len(eng.process(b, 7, 7)) == 0
    dec3 = eng.process(b, 7)
    assert list(dec3["pkt"]) == [7, 8, 9]
    with pytest.raises(ValueError):
        eng.process(b, 5, 3)
    with pytest.raises(ValueError):
        eng.process(b, 0, 11)
    with pytest.raises(TypeError):
        eng.process(None)
    assert eng.conn_count == 8


def test_decision_buffer_grows_past_capacity():
    eng = Engine(config(service()), capacity=4)
    frames = [(0.001 * i, tcp_frame(CLIENT, 2000 + i, VIP, 80, "S")) for i in range(300)]
    dec = eng.process(batch(frames))
    assert len(dec) == 300 and list(dec["pkt"]) == list(range(300))
    assert set(decode(eng, dec)[i]["action"] for i in range(300)) == {"new"}


# ---- parse status and protocol classes -------------------------------------------------------

def _arp():
    return MAC_D + MAC_C + struct.pack("!H", 0x0806) + bytes(28)


def _ipv4_nonfirst_fragment():
    l4 = bytes(16)
    s, d = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 10])
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 185, 64, TCP, 0, s, d)
    return ether(hdr + l4)


def _ip_proto(proto, l4):
    return ether(ip_packet(CLIENT, VIP, proto, l4))


@pytest.mark.parametrize("frame,action,reason", [
    (tcp_frame(CLIENT, 1234, VIP, 80, "S")[:40], "invalid", "malformed"),   # IP length > frame
    (ether(ip_packet(CLIENT, VIP, TCP, bytes(10))), "invalid", "truncated"),  # 10-byte TCP header
    (tcp_frame(CLIENT, 1234, VIP, 80, "S")[:10], "invalid", "truncated"),    # short Ethernet
    (_arp(), "invalid", "not_ip"),
    (_ipv4_nonfirst_fragment(), "invalid", "fragment"),
    (ether(b"\x45" + bytes(3)), "invalid", "truncated"),
    (_ip_proto(1, struct.pack("!BBHHH", 8, 0, 0, 1, 1)), "pass", "not_ipvs_proto"),      # echo
    (_ip_proto(47, bytes(8)), "pass", "not_ipvs_proto"),                                 # GRE
    (_ip_proto(132, struct.pack("!HHII", 5000, 80, 0, 0) + bytes([1, 0, 0, 20]) + bytes(16)),
     "pass", "no_service"),                                   # SCTP INIT, no SCTP service
    (_ip_proto(50, bytes(16)), "pass", "related_only"),      # ESP without its UDP/500 entry
])
def test_invalid_and_other_protocols(frame, action, reason):
    eng = engine()
    d = decode(eng, eng.process(batch([(0.0, frame)])))[0]
    assert (d["action"], d["reason"], d["conn"], d["rs"]) == (action, reason, 0, None)
    assert eng.conn_count == 0


def test_unknown_linktype_is_invalid():
    eng = engine()
    b = PacketBatch.from_packets([(T0, tcp_frame(CLIENT, 1, VIP, 80, "S"))], linktype=147)
    d = decode(eng, eng.process(b))[0]
    assert (d["action"], d["reason"]) == ("invalid", "unknown_linktype")


# ---- scheduling outcomes -------------------------------------------------------------------

def test_no_service_is_not_ipvs_traffic():
    eng = engine()
    drv = Driver(eng)
    d = drv.c2s(0.0, "S", vport=8080)
    assert (d["action"], d["reason"], d["dir"], d["svc"]) == ("pass", "no_service", "-", -1)
    d = drv.c2s(0.1, "S", vip="192.0.2.99")
    assert (d["action"], d["reason"], d["dir"]) == ("pass", "no_service", "-")


def test_ftp_data_source_port_is_never_scheduled():
    eng = engine()
    d = Driver(eng).c2s(0.0, "S", cport=20)
    assert (d["action"], d["reason"], d["dir"]) == ("pass", "ftp_data", "in")


def test_no_destination_drops_with_icmp():
    eng = engine(service(weights=[0, 0]))
    d = Driver(eng).c2s(0.0, "S")
    assert (d["action"], d["reason"], d["svc"], d["rs"]) == ("drop", "no_dest", 0, None)
    assert eng.conn_count == 0


def test_table_full_drops_new_connections_only():
    eng = Engine(config(service()), max_conns=2)
    drv = Driver(eng)
    assert drv.c2s(0.0, "S", cport=1)["action"] == "new"
    assert drv.c2s(0.1, "S", cport=2)["action"] == "new"
    d = drv.c2s(0.2, "S", cport=3)
    assert (d["action"], d["reason"]) == ("drop", "table_full")
    assert drv.c2s(0.3, "A", cport=1)["action"] == "hit"
    drv.c2s(0.4, "R", cport=1)                      # CLOSE, gone after 10 s
    eng.advance(at(10.5))
    assert drv.c2s(10.6, "S", cport=3)["action"] == "new"
    eng.check_invariants()


def test_persistent_port_zero_service_takes_every_port():
    svc = VirtualService(proto=TCP, addr=VIP, port=0, scheduler="rr", flags=SVC_F_PERSISTENT,
                         timeout=60, dests=[RealServer(RS1, 0, fwd=FWD_DROUTE),
                                            RealServer(RS2, 0, fwd=FWD_DROUTE)])
    eng = engine(svc)
    drv = Driver(eng)
    a = drv.c2s(0.0, "S", vport=443)
    b = drv.c2s(0.1, "S", vport=22, cport=40001)
    assert a["action"] == b["action"] == "new" and a["rs"] == b["rs"]   # same template
    rows = {r["vport"]: r for r in eng.connections()}
    assert rows[443]["dport"] == 443 and rows[22]["dport"] == 22      # dest port 0: keep vport
    assert rows[0]["template"] and rows[0]["vport"] == 0


def test_nat_reply_behind_the_director_found_by_the_out_index():
    eng = engine(service(fwd=FWD_MASQ, dport=8080))
    drv = Driver(eng)
    d = drv.c2s(0.0, "S")
    assert d["rs"] == RS2
    d = drv.rs2c(0.01, "SA", RS2, rport=8080)
    assert (d["action"], d["dir"], d["rs"], d["conn"]) == ("hit", "out", RS2, 1)
    # the wrong real-server port is not this connection
    d = drv.rs2c(0.02, "A", RS2, rport=80)
    assert d["action"] == "pass" and d["conn"] == 0
    assert drv.c2s(0.03, "A")["state"] == "ESTABLISHED"
    st = eng.stats()["services"][0]
    assert (st["inpkts"], st["outpkts"]) == (2, 1)


def test_nat_icmp_send_drops_replies_without_an_entry():
    eng = engine(service(fwd=FWD_MASQ), nat_icmp_send=1)
    drv = Driver(eng)
    d = drv.rs2c(0.0, "A", RS1)
    assert (d["action"], d["reason"], d["dir"]) == ("drop", "nat_icmp_send", "out")
    d = drv.rs2c(0.1, "R", RS1)                      # never for an RST
    assert d["action"] == "pass"
    eng.set_sysctl("nat_icmp_send", 0)
    assert drv.rs2c(0.2, "A", RS1)["action"] == "pass"


def test_ipv6_service_end_to_end():
    vip6, rs_a, rs_b, cli = "2001:db8::10", "2001:db8:1::1", "2001:db8:1::2", "2001:db8:9::1"
    eng = engine(service(addr=vip6, dests=(rs_a, rs_b), fwd=FWD_MASQ))
    drv = Driver(eng)
    d = drv.c2s(0.0, "S", client=cli, vip=vip6)
    assert (d["action"], d["rs"]) == ("new", rs_b)
    d = drv.s2c(0.01, "SA", client=cli, vip=vip6)
    assert (d["dir"], d["state"]) == ("out", "SYN_RECV")
    d = drv.c2s(0.02, "A", client=cli, vip=vip6)
    assert d["state"] == "ESTABLISHED"
    row = eng.connections()[0]
    assert (row["source"], row["virtual"], row["destination"]) == (
        f"[{cli}]:40000", f"[{vip6}]:80", f"[{rs_b}]:80")
    eng.check_invariants()


def test_clock_never_runs_backwards():
    eng = engine()
    drv = Driver(eng)
    drv.c2s(10.0, "S")
    d = drv.c2s(5.0, "A")                            # earlier timestamp: clock stays at 10 s
    assert d["ts_ns"] == at(5.0) and d["state"] == "ESTABLISHED"
    assert eng.now_ns == at(10.0)
    assert eng.counters["ts_backwards"] == 1
    assert eng.connections()[0]["deadline_ns"] == at(10.0) + 900 * 10**9


def test_tcp_timeouts_from_ipvsadm_set():
    eng = engine(timeouts=(60, 20, 30))
    drv = Driver(eng)
    drv.c2s(0.0, "S")
    drv.c2s(0.1, "A")
    assert eng.connections()[0]["expire"] == 60
    eng.set_timeouts(0, 0, 0)                       # 0 leaves every value unchanged
    assert eng.timeouts() == (60, 20, 30)
    drv.c2s(0.2, "FA")                              # DR? no: NAT -> CLOSE_WAIT (60 s, fixed)
    assert eng.connections()[0]["state"] == "CLOSE_WAIT"
    eng2 = engine(service(fwd=FWD_DROUTE), timeouts=(60, 20, 30))
    d2 = Driver(eng2)
    d2.c2s(0.0, "S")
    d2.c2s(0.1, "FA")
    assert (eng2.connections()[0]["state"], eng2.connections()[0]["expire"]) == ("TIME_WAIT", 120)
    d2.c2s(0.2, "S", cport=5)
    d2.c2s(0.3, "A", cport=5)
    d2.c2s(0.4, "FA", cport=5)
    assert [r["expire"] for r in eng2.connections() if r["cport"] == 5] == [20]   # FIN_WAIT
    u = engine(service(proto=UDP, port=53), timeouts=(60, 20, 30))
    Driver(u).c2s(0.0, None, cport=5353, vport=53, proto=UDP)
    assert u.connections()[0]["expire"] == 30


# ---- sysctls, timeouts, commands: errors ------------------------------------------------------

def test_sysctl_errors_and_secure_tcp_defense_levels():
    eng = engine()
    with pytest.raises(ConfigError, match="unknown sysctl"):
        eng.set_sysctl("drop_entry", 1)
    with pytest.raises(ConfigError, match="not an integer"):
        eng.set_sysctl("conntrack", "yes")
    with pytest.raises(ConfigError, match="0..3"):
        eng.set_sysctl("secure_tcp", 4)
    eng.set_sysctl("secure_tcp", 2)                 # reverts to 1 while memory is fine
    assert eng.get_sysctl("secure_tcp") == 1
    eng.set_sysctl("secure_tcp", 3)
    assert eng.get_sysctl("secure_tcp") == 3
    with pytest.raises(ConfigError):
        Engine(config(conn_reuse_mode=1 << 40))


def test_timeout_errors():
    eng = engine()
    with pytest.raises(ConfigError):
        eng.set_timeouts(-1, 0, 0)
    with pytest.raises(ConfigError):
        eng.set_timeouts("x", 0, 0)
    with pytest.raises(ConfigError):
        eng.set_timeouts(10**9, 0, 0)


def test_apply_commands_and_their_errors():
    eng = engine()
    eng.apply(Command(op="set-timeouts", timeouts=(100, 50, 40)))
    assert eng.timeouts() == (100, 50, 40)
    eng.apply(Command(op="sysctl", sysctl=("conn_reuse_mode", 2)))
    assert eng.get_sysctl("conn_reuse_mode") == 2
    with pytest.raises(ConfigError):
        eng.apply(Command(op="add-service", service=service()))          # exists
    with pytest.raises(ConfigError):
        eng.apply(Command(op="del-dest", service=service(), dest=RealServer("10.9.9.9", 80)))
    with pytest.raises(ConfigError):
        eng.apply(Command(op="frobnicate"))
    with pytest.raises(TypeError):
        eng.apply("-a -t 192.0.2.10:80 -r 10.1.0.3:80")
    # a new server joins and takes the next connection (rr continues from the list head)
    eng.apply(Command(op="add-dest", service=service(), dest=RealServer("10.1.0.3", 80, fwd=FWD_MASQ)))
    assert [d["addr"] for d in eng.services()[0]["dests"]] == ["10.1.0.3", RS2, RS1]
    assert eng.dests()[2]["addr"] == "10.1.0.3"


def test_constructor_errors():
    with pytest.raises(ValueError):
        Engine(config(), dr_replies="maybe")
    with pytest.raises(TypeError):
        Engine({"services": []})
    with pytest.raises(ConfigError, match="4.1"):
        Engine(config(kernel="3.10"))
    with pytest.raises(ConfigError):
        Engine(config(kernel="linux"))
    with pytest.raises(ConfigError):
        Engine(config(service(sched="nosuch")))
    with pytest.raises(ValueError):
        Engine(config(), capacity=0)
    with pytest.raises(ValueError):
        Engine(config(), max_conns=0)
    e = Engine()                                     # no config: no services, kernel defaults
    assert e.services() == [] and e.kernel == "6.1"


def test_ct_model_property():
    eng = engine()
    assert eng.ct_model == "tracker"
    for m in ("simple", "never", "always", "tracker"):
        eng.ct_model = m
        assert eng.ct_model == m
    with pytest.raises(ValueError):
        eng.ct_model = "sometimes"


# ---- listings -------------------------------------------------------------------------------

def test_format_list_matches_ipvsadm():
    # ipvsadm sorts services with libipvs's comparator, which subtracts the addresses as
    # unsigned ints into an int: 192.0.2.10 - 10.0.0.5 wraps negative, so 192.0.2.10 sorts
    # first; servers the same way (10.1.0.1 before 10.1.0.2).
    s1 = service(sched="wlc", fwd=FWD_MASQ, weights=[2, 1])
    s2 = VirtualService(proto=UDP, addr="10.0.0.5", port=53, scheduler="rr", flags=SVC_F_ONEPACKET,
                        dests=[RealServer("10.1.0.9", 53, fwd=FWD_TUNNEL, weight=3)])
    s3 = VirtualService(proto=TCP, addr="10.0.0.5", port=443, scheduler="rr", flags=SVC_F_PERSISTENT,
                        timeout=300, netmask=24, dests=[RealServer("10.1.0.8", 443, fwd=FWD_DROUTE)])
    eng = engine(s1, s2, s3)
    drv = Driver(eng)
    # wlc over idle servers: the first in list order (RS2, added last) wins ties (0*2 > 0*1 fails)
    assert drv.c2s(0.0, "S")["rs"] == RS2
    expected = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  192.0.2.10:80 wlc\n"
        "  -> 10.1.0.1:80                  Masq    2      0          0         \n"
        "  -> 10.1.0.2:80                  Masq    1      1          0         \n"
        "TCP  10.0.0.5:443 rr persistent 300 mask 255.255.255.0\n"
        "  -> 10.1.0.8:443                 Route   1      0          0         \n"
        "UDP  10.0.0.5:53 rr ops\n"
        "  -> 10.1.0.9:53                  Tunnel  3      0          0         \n"
    )
    assert eng.format_list() == expected


def test_format_stats_and_connections_match_ipvsadm():
    eng = engine(service(fwd=FWD_MASQ))
    drv = Driver(eng)
    drv.c2s(0.0, "S")                               # 40-byte packets (20 IP + 20 TCP)
    drv.s2c(0.01, "SA")
    drv.c2s(0.02, "A")
    drv.c2s(1.0, "S", cport=40001)
    expected = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
        "  -> RemoteAddress:Port\n"
        "TCP  192.0.2.10:80                       2        3        1      120       40\n"
        "  -> 10.1.0.1:80                         1        1        0       40        0\n"
        "  -> 10.1.0.2:80                         1        2        1       80       40\n"
    )
    assert eng.format_stats() == expected
    conns = (
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination\n"
        "TCP 14:58  ESTABLISHED 10.0.0.1:40000     192.0.2.10:80      10.1.0.2:80\n"
        "TCP 00:59  SYN_RECV    10.0.0.1:40001     192.0.2.10:80      10.1.0.1:80\n"
    )
    assert eng.format_connections(at(1.5)) == conns
    assert core._largenum(123456789) == "  123456K"
    assert core._largenum(12345678901) == "   12345M"
    assert core._largenum(12345678901, exact=True) == " 12345678901"


def test_stats_services_dests_and_memory():
    eng = engine(service(fwd=FWD_MASQ))
    drv = Driver(eng)
    for i in range(5):
        drv.c2s(0.01 * i, "S", cport=3000 + i)
    st = eng.stats()
    assert st["conn_count"] == 5 and st["totals"]["conns"] == 5
    svc = st["services"][0]
    assert svc["name"] == "TCP  192.0.2.10:80" and svc["scheduler"] == "rr"
    assert [d["addr"] for d in svc["dests"]] == [RS2, RS1]          # list order
    assert sum(d["activeconns"] for d in svc["dests"]) == 5
    ds = eng.dests()
    assert [d["id"] for d in ds] == [0, 1] and ds[0]["addr"] == RS1
    m = eng.memory()
    assert m["conn_count"] == 5 and m["entry_bytes"] == 80
    assert m["slab_bytes"] == 5 * 80 and m["index_bytes"] > 0 and m["bytes_per_conn"] > 80


def test_connections_advance_the_clock_and_expire():
    eng = engine()
    drv = Driver(eng)
    drv.c2s(0.0, "S")
    assert eng.connections(at(59.9))[0]["expire"] == 0
    assert eng.connections(at(60.0)) == []          # SYN_RECV lives 60 s
    assert eng.now_ns == at(60.0) and eng.conn_count == 0
    assert eng.counters["expired"] == 1


def test_variants_table():
    v = variant_for("6.1")
    assert (v["reuse_variant"], v["close_expected"], v["nodest_block_v59"], v["dr_reply_inspection"]) == (4, True, True, True)
    assert variant_for("5.15.0-91-generic")["reuse_variant"] == 3
    assert variant_for("5.10")["dr_reply_inspection"] is False
    assert variant_for("5.11")["dr_reply_inspection"] is True
    assert variant_for("5.9")["reuse_variant"] == 3 and variant_for("5.8")["reuse_variant"] == 2
    assert variant_for("4.19")["close_expected"] and not variant_for("4.18")["close_expected"]
    assert variant_for("4.7")["tcp_active_v48"] is False and variant_for("v4.8")["tcp_active_v48"]
    assert variant_for("4.4")["reuse_variant"] == 1 and variant_for((4, 6))["reuse_variant"] == 2
    assert Engine(config(kernel="5.4")).variant["nodest_flush"] is False


def test_client_port_zero_never_matches_a_connection():
    # __ip_vs_conn_in_get: (!p->cport) ^ (!(cp->flags & NO_CPORT)) must hold, so packets from
    # port 0 never find an ordinary entry: each SYN schedules anew
    eng = engine()
    drv = Driver(eng)
    a = drv.c2s(0.0, "S", cport=0)
    b = drv.c2s(0.1, "S", cport=0)
    assert (a["action"], b["action"]) == ("new", "new") and (a["rs"], b["rs"]) == (RS2, RS1)
    d = drv.c2s(0.2, "A", cport=0)
    assert (d["action"], d["reason"]) == ("pass", "not_syn")
    # the reply direction still finds the newest of them
    d = drv.s2c(0.3, "SA", cport=0)
    assert (d["action"], d["conn"]) == ("hit", 2)
    eng.check_invariants()


def test_fwmark_services_use_the_packet_mark():
    # the mark comes from a classifier (pkt_desc.fwmark); fwmark services take any address/port
    svc = VirtualService(proto=0, fwmark=7, scheduler="rr",
                         dests=[RealServer(RS1, 0, fwd=FWD_DROUTE), RealServer(RS2, 0, fwd=FWD_DROUTE)])
    eng = engine(svc)
    b = batch([(0.0, tcp_frame(CLIENT, 40000, VIP, 443, "S")),
               (0.1, tcp_frame(CLIENT, 40001, "192.0.2.77", 8443, "S")),
               (0.2, tcp_frame(CLIENT, 40002, VIP, 443, "S"))])
    b.to_numpy()["fwmark"][:2] = 7
    d = decode(eng, eng.process(b))
    assert [(x["action"], x["rs"]) for x in d] == [("new", RS2), ("new", RS1), ("pass", None)]
    rows = {r["cport"]: r for r in eng.connections()}
    assert (rows[40000]["dport"], rows[40001]["vaddr"], rows[40001]["dport"]) == (443, "192.0.2.77", 8443)
    # persistent fwmark service: one template per client network, protocol IP, the mark as address
    psvc = VirtualService(proto=0, fwmark=7, scheduler="rr", flags=SVC_F_PERSISTENT, timeout=120,
                          dests=[RealServer(RS1, 0, fwd=FWD_DROUTE), RealServer(RS2, 0, fwd=FWD_DROUTE)])
    eng = engine(psvc)
    b = batch([(0.0, tcp_frame(CLIENT, 40000, VIP, 80, "S")),
               (0.1, tcp_frame(CLIENT, 40001, VIP, 443, "S"))])
    b.to_numpy()["fwmark"][:] = 7
    d = decode(eng, eng.process(b))
    assert d[0]["rs"] == d[1]["rs"] and d[0]["flags"] & 0x02
    tpl = [r for r in eng.connections() if r["template"]]
    assert len(tpl) == 1 and (tpl[0]["pro"], tpl[0]["virtual"], tpl[0]["expire"]) == ("IP", "0.0.0.7:0", 120)
    assert eng.format_connections().splitlines()[2].startswith("IP  02:00  NONE        10.0.0.1:0         0.0.0.7:0")


def test_template_keeps_the_persistence_timeout_it_was_created_with():
    # ip_vs_sched_persist: ct->timeout = svc->timeout when the template is created; editing the
    # service's -p later changes new templates only (ip_vs_edit_service sets svc->timeout).
    svc = service(fwd=FWD_DROUTE, flags=SVC_F_PERSISTENT, timeout=300)
    eng = engine(svc)
    drv = Driver(eng)
    drv.c2s(0.0, "S", cport=1000)
    eng.apply(cmd("edit-service", service(fwd=FWD_DROUTE, flags=SVC_F_PERSISTENT, timeout=60)))
    drv.c2s(10.0, "S", cport=1001)                      # same client: the old template, put again
    drv.c2s(10.0, "S", cport=1002, client="198.51.100.77")   # new template under -p 60
    tpl = {r["caddr"]: r["expire"] for r in drv.conns(10.0) if r["template"]}
    assert tpl == {CLIENT: 300, "198.51.100.77": 60}
    eng.check_invariants()


def test_prefault_commits_memory_and_changes_nothing():
    fresh = engine(service(fwd=FWD_MASQ))
    eng = engine(service(fwd=FWD_MASQ))
    assert eng.prefault(1000) >= 1000 * eng.memory()["entry_bytes"]
    assert eng.prefault(0) == 0
    with pytest.raises(ValueError):
        eng.prefault(-1)
    assert eng.memory() == fresh.memory() and eng.stats()["conn_count"] == 0
    # the same decisions as an engine that was not prefaulted
    outs = []
    for e in (fresh, eng):
        drv = Driver(e)
        for i in range(5):
            drv.c2s(0.01 * i, "S", cport=3000 + i)
        outs.append((e.stats()["totals"], [(d["addr"], d["activeconns"]) for d in e.dests()]))
    assert outs[0] == outs[1]
