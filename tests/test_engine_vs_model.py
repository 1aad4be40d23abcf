"""Differential test: random packet sequences through ipvsflow.engine.Engine and through the
plain-Python model (tests/model), compared decision by decision, then on the connection table
and the real servers' counters at the end.

The scenarios (tests/model/strategies.py) cover TCP, UDP and SCTP; NAT, DR and TUN; every
scheduler (sh and mh with and without their fallback and port flags); persistence with netmasks
and expire_quiescent_template; fwmark and persistent port-0 services; weight 0, deleted and
re-added servers; ICMP errors about either direction; IPv4 and IPv6; the kernel variants 4.4,
4.19, 5.9, 5.15 and 6.1; replies in front of and behind the director."""
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from ipvsflow.config import (FWD_DROUTE, FWD_MASQ, PROTO_TCP, PROTO_UDP, SVC_F_SCHED2, Config, RealServer,
                             VirtualService)
from model import IPVSModel, Packet, build_frame, packets_from_rows
from model.strategies import FORWARDED, VIP, VPORT, Scenario, scenarios
from model.tables import TH_ACK, TH_FIN, TH_RST, TH_SYN

from ipvsflow.engine import ACTIONS, DIRS, Engine, state_name  # noqa: E402
from ipvsflow.io import PacketBatch  # noqa: E402

# A failing example is shrunk within a bounded number of steps; CI runs the examples below.
EXAMPLES = int(os.environ.get("IPVSFLOW_DIFF_EXAMPLES", "600"))


def make_batch(packets):
    batch = PacketBatch.from_packets([(p.ts_ns, build_frame(p)) for p in packets])
    # the classifier's marks (a capture has none): set as a firewall would before IPVS
    batch.to_numpy()["fwmark"][:] = [p.fwmark for p in packets]
    return batch


def engine_table(eng, now):
    return sorted((int(r["proto"]), r["caddr"], int(r["cport"]), r["vaddr"], int(r["vport"]), r["daddr"],
                   int(r["dport"]), r["state"], bool(r["template"]), int(r["deadline_ns"]))
                  for r in eng.connections(now) if int(r["deadline_ns"]) > now)


def model_table(model, now):
    return sorted((cp.proto, cp.caddr, cp.cport, cp.vaddr, cp.vport, cp.daddr, cp.dport, cp.state_name(),
                   cp.template, cp.deadline)
                  for cp in model.conns if cp.deadline is not None and cp.deadline > now)


def run_engine(sc: Scenario, batch):
    eng = Engine(sc.config.copy(), dr_replies=sc.dr_replies)
    eng.ct_model = sc.ct_model
    packets, commands = sc.packets, sc.commands
    decisions = []
    cuts = sorted(set(commands) | {0, len(packets)})
    for start, stop in zip(cuts, cuts[1:]):
        for cmd in commands.get(start, ()):
            eng.advance(packets[start].ts_ns)
            eng.apply(cmd)
        dec = eng.process(batch, start, stop)
        names = {d["id"]: d["endpoint"] for d in eng.dests()}
        for r in dec:
            decisions.append({
                "pkt": int(r["pkt"]), "action": ACTIONS[int(r["action"])], "dir": DIRS[int(r["dir"])],
                "rs": names[int(r["rs"])] if int(r["rs"]) >= 0 else None, "conn": int(r["conn"]) or None,
                "state": state_name(int(r["proto"]), int(r["state"])) if int(r["conn"]) else None,
            })
    return eng, decisions


def compare(sc: Scenario):
    config, packets, commands = sc
    batch = make_batch(packets)
    eng, eng_dec = run_engine(sc, batch)
    rows = packets_from_rows(batch.to_numpy())
    model = IPVSModel(config.copy(), dr_replies=sc.dr_replies, ct_model=sc.ct_model)
    mod_dec = model.run(rows, commands)
    assert len(eng_dec) == len(mod_dec) == len(packets)
    serials = {}
    for e, m in zip(eng_dec, mod_dec):
        where = f"packet {m['pkt']} {packets[m['pkt']]}"
        assert (e["action"], e["dir"]) == (m["action"], m["dir"]), f"{where}: engine {e} model {m}"
        if m["action"] in FORWARDED:
            assert e["rs"] == m["rs"], f"{where}: engine {e} model {m}"
            # an ICMP error leaves its connection's state alone; the engine's record of it
            # carries no state (its proto is ICMP's), the table comparison below checks it
            if packets[m["pkt"]].proto not in (1, 58):
                assert e["state"] == m["state"], f"{where}: engine {e} model {m}"
            # connection serials correspond one to one
            assert serials.setdefault(m["conn"], e["conn"]) == e["conn"], f"{where}: engine {e} model {m}"
            assert list(serials.values()).count(e["conn"]) == 1, f"{where}: engine {e} model {m}"
    # the table and the counters once both have run every timer due at the last packet
    now = packets[-1].ts_ns
    eng.advance(now)
    model.advance(now)
    for cmd in commands.get(len(packets), ()):
        eng.apply(cmd)
        model.apply(cmd)
    assert engine_table(eng, now) == model_table(model, now), "connection tables differ"
    counters = {d["endpoint"]: (d["activeconns"], d["inactconns"], d["persistconns"], d["weight"])
                for d in eng.dests()}
    expected = {d.endpoint(): (d.active, d.inactive, d.persist, d.weight) for d in model.all_dests}
    assert counters == expected, "real-server counters differ"
    model.check_invariants()
    return mod_dec


def test_model_rows_adapter_round_trip():
    pkts = [Packet(ts_ns=5, src="10.0.0.1", sport=4, dst=VIP, dport=80, tcp_flags=TH_SYN | TH_ACK),
            Packet(ts_ns=6, af=6, proto=PROTO_UDP, src="2001:db8::1", sport=4, dst="2001:db8::2", dport=53),
            Packet(ts_ns=7, proto=1, src="10.0.0.1", dst=VIP, icmp_type=3, icmp_code=4, ic_proto=PROTO_TCP,
                   ic_src=VIP, ic_sport=80, ic_dst="10.0.0.1", ic_dport=40000, fwmark=9),
            Packet(ts_ns=8, af=6, proto=58, src="2001:db8::1", dst="2001:db8::2", icmp_type=2,
                   ic_proto=132, ic_src="2001:db8::2", ic_sport=80, ic_dst="2001:db8::1", ic_dport=5)]
    rows = packets_from_rows(make_batch(pkts).to_numpy())
    fields = ("ts_ns", "af", "proto", "src", "sport", "dst", "dport", "tcp_flags", "fwmark", "icmp_type",
              "icmp_code", "ic_proto", "ic_src", "ic_sport", "ic_dst", "ic_dport", "status")
    for a, b in zip(pkts, rows):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


def test_reference_v2_sequence_agrees():
    vs = VirtualService(proto=PROTO_TCP, addr=VIP, port=VPORT, scheduler="rr",
                        dests=[RealServer("10.1.0.1", 80, fwd=FWD_MASQ), RealServer("10.1.0.2", 80, fwd=FWD_MASQ)])
    c = dict(src="10.0.0.1", sport=40000, dst=VIP, dport=VPORT)
    r = dict(src=VIP, sport=VPORT, dst="10.0.0.1", dport=40000)
    seq = [(0, c, TH_SYN), (10, r, TH_SYN | TH_ACK), (20, c, TH_ACK), (1000, c, TH_FIN | TH_ACK),
           (1010, r, TH_ACK), (1020, r, TH_FIN | TH_ACK), (1030, c, TH_ACK), (4000, c, TH_SYN)]
    packets = [Packet(ts_ns=ms * 1_000_000, tcp_flags=f, **kw) for ms, kw, f in seq]
    out = compare(Scenario(Config(services=[vs]), packets))
    assert [d["action"] for d in out] == ["new"] + ["hit"] * 6 + ["resched"]


def test_icmp_errors_follow_their_connection_in_both():
    # reference section 5: a client's error about a reply goes to the entry's server, without
    # changing its state; one about an unknown connection passes
    vs = VirtualService(proto=PROTO_TCP, addr=VIP, port=VPORT, scheduler="rr",
                        dests=[RealServer("10.1.0.1", 80, fwd=FWD_MASQ), RealServer("10.1.0.2", 80, fwd=FWD_MASQ)])
    packets = [Packet(ts_ns=1_000_000, src="10.0.0.1", sport=40000, dst=VIP, dport=VPORT, tcp_flags=TH_SYN),
               Packet(ts_ns=2_000_000, proto=1, src="10.0.0.1", dst=VIP, icmp_type=3, icmp_code=4,
                      ic_proto=PROTO_TCP, ic_src=VIP, ic_sport=VPORT, ic_dst="10.0.0.1", ic_dport=40000),
               Packet(ts_ns=3_000_000, proto=1, src="10.0.0.2", dst=VIP, icmp_type=3, icmp_code=3,
                      ic_proto=PROTO_TCP, ic_src=VIP, ic_sport=VPORT, ic_dst="10.0.0.2", ic_dport=40000)]
    out = compare(Scenario(Config(services=[vs]), packets))
    assert [(d["action"], d["dir"], d["rs"], d["state"]) for d in out] == [
        ("new", "in", "10.1.0.2:80", "SYN_RECV"), ("hit", "in", "10.1.0.2:80", "SYN_RECV"),
        ("pass", "in", None, None)]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_engine_agrees_with_model(scenario):
    compare(scenario)


@pytest.mark.parametrize("fwd, dr_replies, expect", [
    pytest.param(FWD_MASQ, "ignore", ("hit", "out", "10.1.0.1:80"), id="nat"),
    pytest.param(FWD_DROUTE, "ignore", ("pass", "out", None), id="dr-not-on-reply-path"),
    pytest.param(FWD_DROUTE, "inspect", ("hit", "out", "10.1.0.1:80"), id="dr-on-reply-path"),
])
def test_server_icmp_error_in_front_of_the_director_is_a_reply(fwd, dr_replies, expect):
    # DESIGN "capture point": in front of the director a server's reply shows as VIP:vport ->
    # client, the OUTPUT direction of the (client, VIP) entry. A NAT server's ICMP error about a
    # client packet leaves the director the same way (handle_response_icmp rewrites the outer
    # source and the quoted packet back to the VIP), so it follows that entry outward; a DR
    # server's error is matched by the director (v5.11 out-lookup on vaddr:vport) only when it is
    # on the reply path, otherwise it is a reply the director never sees, as for TCP replies.
    vs = VirtualService(proto=PROTO_TCP, addr=VIP, port=VPORT, scheduler="rr",
                        dests=[RealServer("10.1.0.1", 80, fwd=fwd)])
    packets = [Packet(ts_ns=1_000_000, src="10.0.0.1", sport=40000, dst=VIP, dport=VPORT, tcp_flags=TH_SYN),
               Packet(ts_ns=2_000_000, proto=1, src=VIP, dst="10.0.0.1", icmp_type=3, icmp_code=4,
                      ic_proto=PROTO_TCP, ic_src="10.0.0.1", ic_sport=40000, ic_dst=VIP, ic_dport=VPORT)]
    out = compare(Scenario(Config(services=[vs]), packets, dr_replies=dr_replies))
    assert (out[1]["action"], out[1]["dir"], out[1]["rs"]) == expect


def test_dh_schedule_icmp_hashes_the_quoted_destination():
    # ip_vs_in_icmp fills the embedded header with IP_VS_HDR_INVERSE but does not swap its
    # addresses (ip_vs_fill_iph_skb_icmp); ip_vs_dh_schedule reads iph->daddr, which is then the
    # client of the quoted reply. dh over 3 servers, list [.3, .2, .1] taking one bucket each in
    # turn: VIP 192.0.2.10 -> bucket 162 -> 10.1.0.3; client 10.0.0.2 -> bucket 137 -> 10.1.0.1.
    vs = VirtualService(proto=PROTO_TCP, addr=VIP, port=VPORT, scheduler="dh",
                        dests=[RealServer(f"10.1.0.{i}", 80, fwd=FWD_MASQ) for i in (1, 2, 3)])
    cfg = Config(services=[vs])
    cfg.sysctls["schedule_icmp"] = 1
    packets = [Packet(ts_ns=1_000_000, proto=1, src="10.0.0.2", dst=VIP, icmp_type=3, icmp_code=3,
                      ic_proto=PROTO_TCP, ic_src=VIP, ic_sport=VPORT, ic_dst="10.0.0.2", ic_dport=40000)]
    out = compare(Scenario(cfg, packets))
    assert (out[0]["action"], out[0]["rs"]) == ("new", "10.1.0.1:80")


def test_reply_finds_the_older_entry_after_the_newer_one_with_its_reply_tuple_expired():
    # fwmark service, NAT server with a fixed port: client:40000 -> VIP:80 and -> VIP:443 both
    # become client:40000 <-> 10.1.0.1:8080. ip_vs_conn_out_get walks the hash chain, so once the
    # newer entry (443, SYN_RECV, 60 s) is gone, the server's reply still finds the older one (80,
    # ESTABLISHED since t=30).
    vs = VirtualService(proto=0, fwmark=1, scheduler="rr", dests=[RealServer("10.1.0.1", 8080, fwd=FWD_MASQ)])
    s = 1_000_000_000
    syn = dict(src="10.0.0.1", sport=40000, dst=VIP, fwmark=1, tcp_flags=TH_SYN)
    packets = [Packet(ts_ns=1 * s, dport=80, **syn), Packet(ts_ns=1 * s, dport=443, **syn),
               Packet(ts_ns=30 * s, src="10.0.0.1", sport=40000, dst=VIP, dport=80, tcp_flags=TH_ACK),
               Packet(ts_ns=80 * s, src="10.1.0.1", sport=8080, dst="10.0.0.1", dport=40000, tcp_flags=TH_ACK)]
    out = compare(Scenario(Config(services=[vs]), packets))
    assert (out[3]["action"], out[3]["dir"], out[3]["conn"]) == ("hit", "out", out[0]["conn"])


def test_replies_sharing_a_reply_tuple_find_the_newest_entry_left():
    # Three NAT entries with the reply tuple client:40000 <-> 10.1.0.1:8080 (fwmark service,
    # fixed server port), created in the order :80, :443, :8443. ip_vs_conn_hash adds each at
    # the head of its chain, so ip_vs_conn_out_get (replies and ip_vs_out_icmp alike) finds
    # the newest one still hashed: :8443 while it lives, then :443 once the client's RST
    # (CLOSE, 10 s) has expired it, then :80.
    vs = VirtualService(proto=0, fwmark=1, scheduler="rr", dests=[RealServer("10.1.0.1", 8080, fwd=FWD_MASQ)])
    s = 1_000_000_000
    client = dict(src="10.0.0.1", sport=40000, dst=VIP, fwmark=1)
    reply = dict(src="10.1.0.1", sport=8080, dst="10.0.0.1", dport=40000, tcp_flags=TH_ACK)
    icmp = dict(proto=1, src="10.1.0.1", dst="10.0.0.1", icmp_type=3, icmp_code=4, ic_proto=PROTO_TCP,
                ic_src="10.0.0.1", ic_sport=40000, ic_dst="10.1.0.1", ic_dport=8080)
    packets = [Packet(ts_ns=1 * s, dport=80, tcp_flags=TH_SYN, **client),
               Packet(ts_ns=2 * s, dport=443, tcp_flags=TH_SYN, **client),
               Packet(ts_ns=3 * s, dport=8443, tcp_flags=TH_SYN, **client),
               Packet(ts_ns=4 * s, **reply),                                       # 3: :8443
               Packet(ts_ns=5 * s, **icmp),                                        # 4: :8443
               Packet(ts_ns=30 * s, dport=80, tcp_flags=TH_ACK, **client),
               Packet(ts_ns=31 * s, dport=443, tcp_flags=TH_ACK, **client),
               Packet(ts_ns=40 * s, dport=8443, tcp_flags=TH_RST, **client),
               Packet(ts_ns=45 * s, **reply),                                      # 8: :8443 (CLOSE)
               Packet(ts_ns=60 * s, **reply),                                      # 9: :443
               Packet(ts_ns=61 * s, **icmp),                                       # 10: :443
               Packet(ts_ns=70 * s, dport=443, tcp_flags=TH_RST, **client),
               Packet(ts_ns=90 * s, **reply),                                      # 12: :80
               Packet(ts_ns=91 * s, **icmp)]                                       # 13: :80
    out = compare(Scenario(Config(services=[vs]), packets))
    conn80, conn443, conn8443 = (out[i]["conn"] for i in range(3))
    assert len({conn80, conn443, conn8443}) == 3
    got = [(out[i]["action"], out[i]["dir"], out[i]["conn"]) for i in (3, 4, 8, 9, 10, 12, 13)]
    assert got == [("hit", "out", conn8443)] * 3 + [("hit", "out", conn443)] * 2 + [("hit", "out", conn80)] * 2


@pytest.mark.parametrize("sched, cport, expect", [
    # sh, sh-port: hash_32(40001 + 0x0a000002, 8) = 143; buckets cycle over the list
    # [.3, .2, .1] (weight 1 each), 143 % 3 = 2 -> 10.1.0.1. What it would be from the other
    # fields: (client, 80) -> 24 -> .3; (VIP, 80) -> 49 -> .2; (VIP, 40001) -> 168 -> .3.
    pytest.param("sh", 40001, "10.1.0.1:80", id="sh"),
    # mh, mh-port: the Maglev table (M = 4093, hsiphash; tests/model/schedulers.py) puts
    # (client, 40000) on 10.1.0.2; (client, 80) and (VIP, 80) would give .3, (VIP, 40000) .1.
    pytest.param("mh", 40000, "10.1.0.2:80", id="mh"),
])
def test_sh_mh_schedule_icmp_hash_the_client_and_its_port(sched, cport, expect):
    # ip_vs_sh_schedule / ip_vs_mh_schedule: hash_addr = ip_vs_iph_inverse(iph) ? &iph->daddr :
    # &iph->saddr, and the port is ports[1] with inverse: for the error's embedded reply (VIP:80
    # -> client:cport) that is the client and its port, what the client's own SYN hashes.
    def run(packet):
        vs = VirtualService(proto=PROTO_TCP, addr=VIP, port=VPORT, scheduler=sched, flags=SVC_F_SCHED2,
                            dests=[RealServer(f"10.1.0.{i}", 80, fwd=FWD_MASQ) for i in (1, 2, 3)])
        cfg = Config(services=[vs])
        cfg.sysctls["schedule_icmp"] = 1
        return compare(Scenario(cfg, [packet]))[0]
    err = run(Packet(ts_ns=1_000_000, proto=1, src="10.0.0.2", dst=VIP, icmp_type=3, icmp_code=3,
                     ic_proto=PROTO_TCP, ic_src=VIP, ic_sport=VPORT, ic_dst="10.0.0.2", ic_dport=cport))
    syn = run(Packet(ts_ns=1_000_000, src="10.0.0.2", sport=cport, dst=VIP, dport=VPORT, tcp_flags=TH_SYN))
    assert (err["action"], err["rs"]) == ("new", expect)
    assert (syn["action"], syn["rs"]) == ("new", expect)
