"""Differential test: random packet sequences through ipvsflow.engine.Engine and through the
plain-Python model (tests/model), compared decision by decision.

Sequences use few clients and few ports so ports get reused, random TCP flags (no-flag and RST
included), replies in front of the director, gaps beyond the state timeouts, NAT and DR, a random
scheduler, random sysctls and real-server edits in the middle of the stream."""
import pytest
from hypothesis import HealthCheck, given, settings

from ipvsflow.config import FWD_MASQ, PROTO_TCP, PROTO_UDP, Config, RealServer, VirtualService
from model import IPVSModel, Packet, build_frame, packets_from_rows
from model.strategies import FORWARDED, VIP, VPORT, scenarios
from model.tables import TH_ACK, TH_FIN, TH_SYN

engine = pytest.importorskip("ipvsflow.engine", reason="ipvsflow.engine is not built")
if not hasattr(engine, "Engine"):
    pytest.skip("ipvsflow.engine has no Engine yet (core extension not built)", allow_module_level=True)
from ipvsflow.engine import ACTIONS, DIRS, Engine, state_name  # noqa: E402
from ipvsflow.io import PacketBatch  # noqa: E402

def run_engine(config, packets, commands):
    eng = Engine(config.copy(), dr_replies="ignore")
    batch = PacketBatch.from_packets([(p.ts_ns, build_frame(p)) for p in packets])
    rows = packets_from_rows(batch.to_numpy())
    decisions = []
    cuts = sorted(set(commands) | {0, len(packets)})
    for start, stop in zip(cuts, cuts[1:]):
        for cmd in commands.get(start, ()):
            eng.advance(packets[start].ts_ns)
            eng.apply(cmd)
        dec = eng.process(batch, start, stop)
        addr = {d["id"]: d for d in eng.dests()}
        for r in dec:
            rs = None
            if int(r["rs"]) >= 0:
                d = addr[int(r["rs"])]
                rs = f"{d['addr']}:{d['port']}"
            decisions.append({
                "pkt": int(r["pkt"]), "action": ACTIONS[int(r["action"])], "dir": DIRS[int(r["dir"])],
                "rs": rs, "conn": int(r["conn"]) or None,
                "state": state_name(int(r["proto"]), int(r["state"])) if int(r["conn"]) else None,
            })
    return decisions, rows


def compare(config, packets, commands):
    eng_dec, rows = run_engine(config, packets, commands)
    model = IPVSModel(config.copy(), dr_replies="ignore")
    mod_dec = model.run(rows, commands)
    assert len(eng_dec) == len(mod_dec) == len(packets)
    serials = {}
    for e, m in zip(eng_dec, mod_dec):
        where = f"packet {m['pkt']} {packets[m['pkt']]}"
        assert e["action"] == m["action"], f"{where}: engine {e} model {m}"
        assert e["dir"] == m["dir"], f"{where}: engine {e} model {m}"
        if m["action"] in FORWARDED:
            assert e["rs"] == m["rs"], f"{where}: engine {e} model {m}"
            assert e["state"] == m["state"], f"{where}: engine {e} model {m}"
            # connection serials correspond one to one
            assert serials.setdefault(m["conn"], e["conn"]) == e["conn"], f"{where}: engine {e} model {m}"
            assert list(serials.values()).count(e["conn"]) == 1, f"{where}: engine {e} model {m}"
    return mod_dec


def test_model_rows_adapter_round_trip():
    pkts = [Packet(ts_ns=5, src="10.0.0.1", sport=4, dst=VIP, dport=80, tcp_flags=TH_SYN | TH_ACK),
            Packet(ts_ns=6, af=6, proto=PROTO_UDP, src="2001:db8::1", sport=4, dst="2001:db8::2", dport=53)]
    rows = packets_from_rows(PacketBatch.from_packets([(p.ts_ns, build_frame(p)) for p in pkts]).to_numpy())
    for a, b in zip(pkts, rows):
        assert (a.ts_ns, a.af, a.proto, a.src, a.sport, a.dst, a.dport, a.tcp_flags) == \
               (b.ts_ns, b.af, b.proto, b.src, b.sport, b.dst, b.dport, b.tcp_flags)


def test_reference_v2_sequence_agrees():
    vs = VirtualService(proto=PROTO_TCP, addr=VIP, port=VPORT, scheduler="rr",
                        dests=[RealServer("10.1.0.1", 80, fwd=FWD_MASQ), RealServer("10.1.0.2", 80, fwd=FWD_MASQ)])
    c = dict(src="10.0.0.1", sport=40000, dst=VIP, dport=VPORT)
    r = dict(src=VIP, sport=VPORT, dst="10.0.0.1", dport=40000)
    seq = [(0, c, TH_SYN), (10, r, TH_SYN | TH_ACK), (20, c, TH_ACK), (1000, c, TH_FIN | TH_ACK),
           (1010, r, TH_ACK), (1020, r, TH_FIN | TH_ACK), (1030, c, TH_ACK), (4000, c, TH_SYN)]
    packets = [Packet(ts_ns=ms * 1_000_000, tcp_flags=f, **kw) for ms, kw, f in seq]
    out = compare(Config(services=[vs]), packets, {})
    assert [d["action"] for d in out] == ["new"] + ["hit"] * 6 + ["resched"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_engine_agrees_with_model(scenario):
    compare(*scenario)
