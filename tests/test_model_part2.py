"""The model's hashing schedulers (sh, dh, mh), fwmark and port-0 services, ICMP errors and the
nftables mark reader, against independent sources: the kernel's hsiphash self-test vectors
(lib/siphash_kunit.c), the reference's vectors V16/V17 and its sections 5, 10, 10.1 and 11."""
import pytest

from ipvsflow.config import (FWD_DROUTE, FWD_MASQ, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SVC_F_PERSISTENT,
                             SVC_F_SCHED1, SVC_F_SCHED2, Config, ConfigError, RealServer,
                             VirtualService)
from model import IPVSModel, Packet
from model.nft import NftError, Ruleset
from model.scenario import Scenario
from model.schedulers import MaglevHashing, addr_fold, hash_32, hsiphash
from model.tables import TH_SYN

# lib/siphash_kunit.c, BITS_PER_LONG == 64: hsiphash of bytes 00..len-1, key bytes 00..0f
HSIPHASH_KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
HSIPHASH_VECTORS = [
    0x050fc4dc, 0x7d57ca93, 0x4dc7d44d, 0xe7ddf7fb, 0x88d38328, 0x49533b67, 0xc59f22a7, 0x9bb11140,
    0x8d299a8e, 0x6c063de4, 0x92ff097f, 0xf94dc352, 0x57b4d9a2, 0x1229ffa7, 0xc0f95d34, 0x2a519956,
    0x7d908b66, 0x63dbd80c, 0xb473e63e, 0x8d297d1c, 0xa6cce040, 0x2b45f844, 0xa320872e, 0xdae6c123,
    0x67349c8c, 0x705b0979, 0xca9913a5, 0x4ade3b35, 0xef6cd00d, 0x4ab1e1f4, 0x43c5e663, 0x8c21d1bc,
    0x16a7b60d, 0x7a8ff9bf, 0x1f2a753e, 0xbf186b91, 0xada26206, 0xa3c33057, 0xae3a36a1, 0x7b108392,
    0x99e41531, 0x3f1ad944, 0xc8138825, 0xc28949a6, 0xfaf8876b, 0x9f042196, 0x68b1d623, 0x8b5114fd,
    0xdf074c46, 0x12cc86b3, 0x0a52098f, 0x9d292f9a, 0xa2f41f12, 0x43a71ed0, 0x73f0bce6, 0x70a7e980,
    0x243c6d75, 0xfdb71513, 0xa67d8a08, 0xb7e8f148, 0xf7a644ee, 0x0f1837f2, 0x4b6694e0, 0xb7bbb3a8,
]
RS1, RS2, RS3 = "10.1.0.1", "10.1.0.2", "10.1.0.3"
VIP = "192.0.2.10"


def test_hsiphash_matches_the_kernel_self_test():
    got = [hsiphash(bytes(range(n)), HSIPHASH_KEY) for n in range(64)]
    assert got == HSIPHASH_VECTORS


def test_hash_32_and_address_folding():
    assert hash_32(0, 8) == 0 and hash_32(1, 32) == 0x61C88647
    assert addr_fold("10.0.0.1") == 0x0A000001
    # IPv6: XOR of the four 32-bit words
    assert addr_fold("2001:db8::1:0:0:1") == 0x20010DB8 ^ 0 ^ 0x00010000 ^ 0x00000001


# ---- V16: Maglev --------------------------------------------------------------------------------

def mh(flags=0, dests=((RS1, 80, 1), (RS2, 80, 1))):
    return Scenario(sched="mh", fwd="dr", flags=flags, dests=dests)


def test_v16_maglev_permutation_and_table():
    sc = mh()
    sched = sc.model.services[0].sched
    key1, key2 = MaglevHashing.KEY1, MaglevHashing.KEY2
    assert [hex(sched.hashkey(a, 80, k)) for a in (RS2, RS1) for k in (key1, key2)] == \
        ["0x96828d0d", "0x86f5fc4b", "0x17c87ac9", "0x61487d80"]
    owners = [d.addr for d in sched.lookup]
    assert (owners.count(RS2), owners.count(RS1)) == (2047, 2046)
    assert owners[2769] == RS2 and owners[310] == RS1        # each dest's first preference
    for client, h, slot, rs in (("10.0.0.1", 0x03080CE4, 3711, RS1), ("10.0.0.2", 0x41CFDE13, 1884, RS2),
                                ("10.0.0.3", 0x264D5EC5, 3741, RS2), ("192.168.1.100", 0xC15D2CF8, 1341, RS2)):
        assert sched.hashkey(client, 0, key1) == h and h % 4093 == slot and owners[slot] == rs
        assert sc.c(0, "S", client=client)["rs"] == f"{rs}:80"


def test_v16_maglev_port_and_weights():
    sc = mh(flags=SVC_F_SCHED2)
    assert sc.model.services[0].sched.hashkey("10.0.0.1", 40000, MaglevHashing.KEY1) % 4093 == 2940
    assert sc.c(0, "S")["rs"] == f"{RS1}:80"
    sc = mh(dests=((RS1, 80, 1), (RS2, 80, 2), (RS3, 80, 3)))
    owners = [d.addr for d in sc.model.services[0].sched.lookup]
    assert (owners.count(RS3), owners.count(RS2), owners.count(RS1)) == (2047, 1364, 682)
    assert sc.c(0, "S", client="10.0.0.1")["rs"] == f"{RS3}:80"
    assert sc.c(0, "S", client="10.0.0.2")["rs"] == f"{RS2}:80"


def test_maglev_weight_zero_keeps_its_slots_and_fallback_moves_on():
    # section 10.1: weight 0 leaves last_weight, so the slots stay; without mh-fallback the
    # client hashing there gets no destination, with it the probe finds another server
    for flags, expect in ((0, ("drop", None)), (SVC_F_SCHED1, ("new", f"{RS2}:80"))):
        sc = mh(flags=flags)
        sc.edit(0, RS1, weight=0)
        assert [d.addr for d in sc.model.services[0].sched.lookup].count(RS1) == 2046
        d = sc.c(0, "S", client="10.0.0.1")
        assert (d["action"], d["rs"]) == expect
    sc = mh()
    sc.delete(0, RS1)           # a delete rebuilds the table without the server
    assert {d.addr for d in sc.model.services[0].sched.lookup} == {RS2}
    assert sc.c(0, "S", client="10.0.0.1")["rs"] == f"{RS2}:80"


# ---- V17: sh / dh -------------------------------------------------------------------------------

def test_v17_source_hashing():
    sc = Scenario(sched="sh", fwd="dr")
    sched = sc.model.services[0].sched
    assert [d.addr for d in sched.buckets[:4]] == [RS2, RS1, RS2, RS1]
    for client, h in (("10.0.0.1", 39), ("10.0.0.2", 137), ("10.0.0.3", 235)):
        assert sched.hashkey(client, 0) == h
        assert sc.c(0, "S", client=client)["rs"] == f"{RS1}:80"
    # sh-fallback's first probe: offset H added to H again
    assert sched.hashkey("10.0.0.1", 0, 39) == 78


def test_sh_weights_fill_and_fallback():
    sc = Scenario(sched="sh", fwd="dr", dests=((RS1, 80, 2), (RS2, 80, 0), (RS3, 80, 1)))
    # list [RS3, RS2, RS1]: RS3 one bucket, RS2 (weight 0) still one, RS1 two, around again
    assert [d.addr for d in sc.model.services[0].sched.buckets[:8]] == [RS3, RS2, RS1, RS1] * 2
    # a client hashing to RS2's bucket: no destination, unless sh-fallback probes (2H + k)
    client = next(f"10.0.0.{i}" for i in range(1, 255) if hash_32(addr_fold(f"10.0.0.{i}"), 8) % 4 == 1)
    assert sc.c(0, "S", client=client)["action"] == "drop"
    sc = Scenario(sched="sh", fwd="dr", flags=SVC_F_SCHED1, dests=((RS1, 80, 2), (RS2, 80, 0), (RS3, 80, 1)))
    h = hash_32(addr_fold(client), 8)
    first = [RS3, RS2, RS1, RS1][(2 * h) % 4]
    want = first if first != RS2 else [RS3, RS2, RS1, RS1][(2 * h + 1) % 4]
    assert sc.c(0, "S", client=client)["rs"] == f"{want}:80"


def test_sh_port_flag_hashes_the_client_port():
    sc = Scenario(sched="sh", fwd="dr", flags=SVC_F_SCHED2)
    sched = sc.model.services[0].sched
    for port in (40000, 40001, 40002):
        h = hash_32((port + addr_fold("10.0.0.1")) & 0xFFFFFFFF, 8)
        assert sc.c(0, "S", cport=port)["rs"] == f"{sched.buckets[h].addr}:80"


def test_dh_hashes_the_destination_address():
    sc = Scenario(sched="dh", fwd="dr", dests=((RS1, 80, 1), (RS2, 80, 3), (RS3, 80, 0)))
    sched = sc.model.services[0].sched
    assert hash_32(addr_fold(VIP), 8) == 162
    assert [d.addr for d in sched.buckets[:3]] == [RS3, RS2, RS1]      # weights ignored
    # bucket 162 = list position 0 = RS3, whose weight is 0: no fallback for dh
    assert sc.c(0, "S")["action"] == "drop"
    sc.edit(0.1, RS3, weight=1)
    assert [sc.c(0.2 + i, "S", client=c)["rs"] for i, c in enumerate(("10.0.0.1", "10.9.9.9"))] == [f"{RS3}:80"] * 2


# ---- fwmark and port-0 services (section 11) ----------------------------------------------------

def fwmark_model(flags=0, timeout=0):
    vs = VirtualService(proto=0, fwmark=7, scheduler="rr", flags=flags, timeout=timeout,
                        dests=[RealServer(RS1, 0, fwd=FWD_DROUTE), RealServer(RS2, 0, fwd=FWD_DROUTE)])
    return IPVSModel(Config(services=[vs]))


def test_fwmark_service_takes_marked_packets_of_any_address_and_port():
    m = fwmark_model()
    syn = dict(proto=PROTO_TCP, src="10.0.0.1", tcp_flags=TH_SYN)
    d1 = m.process(Packet(ts_ns=1, sport=40000, dst=VIP, dport=443, fwmark=7, **syn))
    d2 = m.process(Packet(ts_ns=2, sport=40001, dst="192.0.2.77", dport=8443, fwmark=7, **syn))
    d3 = m.process(Packet(ts_ns=3, sport=40002, dst=VIP, dport=443, **syn))
    d4 = m.process(Packet(ts_ns=4, proto=PROTO_UDP, src="10.0.0.1", sport=53, dst=VIP, dport=53, fwmark=7))
    assert [(d["action"], d["rs"]) for d in (d1, d2, d3, d4)] == \
        [("new", f"{RS2}:0"), ("new", f"{RS1}:0"), ("pass", None), ("new", f"{RS2}:0")]
    rows = {r["cport"]: r for r in m.connections()}
    # dest port 0: the entry keeps the packet's port
    assert (rows[40000]["rport"], rows[40001]["vip"], rows[40001]["rport"]) == (443, "192.0.2.77", 8443)


def test_persistent_fwmark_template_key():
    m = fwmark_model(SVC_F_PERSISTENT, 120)
    for i, port in enumerate((80, 443)):
        m.process(Packet(ts_ns=i, src="10.0.0.1", sport=40000 + i, dst=VIP, dport=port, tcp_flags=TH_SYN, fwmark=7))
    tpl = [r for r in m.connections() if r["template"]]
    # <IPPROTO_IP, client, 0, fwmark as the address, 0> -> dest, port 0
    assert [(r["proto"], r["client"], r["cport"], r["vip"], r["vport"], r["rport"], r["expires"]) for r in tpl] == \
        [("IP", "10.0.0.1", 0, "0.0.0.7", 0, 0, 120)]
    assert len({r["rs"] for r in m.connections()}) == 1


def test_port_zero_services():
    def model(flags, timeout=0):
        vs = VirtualService(proto=PROTO_TCP, addr=VIP, port=0, scheduler="rr", flags=flags, timeout=timeout,
                            netmask=24, dests=[RealServer(RS1, 0, fwd=FWD_MASQ), RealServer(RS2, 0, fwd=FWD_MASQ)])
        return IPVSModel(Config(services=[vs]))
    # not persistent: ip_vs_schedule refuses (port zero only in persistent services) -> leave/drop
    d = model(0).process(Packet(ts_ns=1, src="10.0.0.1", sport=40000, dst=VIP, dport=22, tcp_flags=TH_SYN))
    assert (d["action"], d["reason"]) == ("drop", "port_zero")
    m = model(SVC_F_PERSISTENT, 300)
    ds = [m.process(Packet(ts_ns=i, src=c, sport=40000, dst=VIP, dport=p, tcp_flags=TH_SYN))
          for i, (c, p) in enumerate((("10.0.0.1", 22), ("10.0.0.9", 8080), ("10.0.1.1", 22)))]
    # one template per client /24, protocol TCP, vport 0: 10.0.0.9 shares 10.0.0.1's server
    assert ds[0]["rs"] == ds[1]["rs"] != ds[2]["rs"]
    tpl = sorted((r["client"], r["vport"], r["rport"]) for r in m.connections() if r["template"])
    assert tpl == [("10.0.0.0", 0, 0), ("10.0.1.0", 0, 0)]


# ---- ICMP errors (sections 2.2, 2.3, 5) ---------------------------------------------------------

def icmp(t, src, dst, inner, typ=3, code=4, af=4, proto=PROTO_TCP):
    s, sp, d, dp = inner
    return Packet(ts_ns=round(t * 1e9), af=af, proto=1 if af == 4 else 58, src=src, dst=dst, icmp_type=typ,
                  icmp_code=code, ic_proto=proto, ic_src=s, ic_sport=sp, ic_dst=d, ic_dport=dp)


@pytest.mark.parametrize("fwd", ["nat", "dr"])
def test_client_error_about_a_reply_follows_its_connection(fwd):
    sc = Scenario(fwd=fwd)
    sc.c(0, "S")
    sc.c(0.1, "A")
    before = [(cp.state, cp.deadline) for cp in sc.model.conns]
    for t, (typ, code) in enumerate(((3, 3), (3, 4), (11, 0), (4, 0))):
        d = sc.model.process(icmp(1 + t, "10.0.0.1", VIP, (VIP, 80, "10.0.0.1", 40000), typ, code))
        assert (d["action"], d["dir"], d["rs"], d["conn"]) == ("hit", "in", f"{RS2}:80", 1)
    # neither the state nor the timer move (__ip_vs_conn_put)
    assert [(cp.state, cp.deadline) for cp in sc.model.conns] == before


def test_icmp_without_connection_not_an_error_or_unrelated():
    sc = Scenario()
    d = sc.model.process(icmp(0, "10.0.0.1", VIP, (VIP, 80, "10.0.0.1", 40000)))
    assert (d["action"], d["reason"]) == ("pass", "icmp_no_conn")
    sc.c(0.5, "S")
    d = sc.model.process(icmp(1, "10.0.0.1", VIP, (VIP, 80, "10.0.0.1", 40000), typ=12, code=0))
    assert (d["action"], d["reason"]) == ("pass", "proto_not_ipvs")            # parameter problem
    d = sc.model.process(icmp(2, "10.0.0.1", VIP, (VIP, 0, "10.0.0.1", 0), proto=47))
    assert (d["action"], d["reason"]) == ("pass", "icmp_unrelated")


def test_real_server_error_behind_a_nat_director_goes_out():
    sc = Scenario(fwd="nat")
    sc.c(0, "S")
    d = sc.model.process(icmp(1, RS2, "10.0.0.1", ("10.0.0.1", 40000, RS2, 80)))
    assert (d["action"], d["dir"], d["rs"], d["conn"]) == ("hit", "out", f"{RS2}:80", 1)


def test_schedule_icmp_creates_an_entry_with_the_3s_timeout():
    sc = Scenario(proto="udp", vport=53, dests=((RS1, 53, 1), (RS2, 53, 1)), sysctls={"schedule_icmp": 1})
    d = sc.model.process(icmp(0, "10.0.0.1", VIP, (VIP, 53, "10.0.0.1", 5353), 3, 3, proto=PROTO_UDP))
    assert (d["action"], d["rs"]) == ("new", f"{RS2}:53")
    (row,) = sc.model.connections()
    assert (row["cport"], row["vport"], row["state"], row["expires"]) == (5353, 53, "UDP", 3)
    sc.c(1, cport=5353)
    assert sc.model.connections()[0]["expires"] == 300
    # TCP: no SYN test on the quoted header; the entry stays in NONE until a real packet
    sc = Scenario(sysctls={"schedule_icmp": 1})
    d = sc.model.process(icmp(0, "10.0.0.1", VIP, (VIP, 80, "10.0.0.1", 40000), 3, 3))
    assert (d["action"], d["state"]) == ("new", "NONE")


def test_icmpv6_errors():
    v6 = ("2001:db8:2::11", 80, 1), ("2001:db8:2::12", 80, 1)
    sc = Scenario(vip="2001:db8:1::10", dests=v6)
    sc.c(0, "S", client="2001:db8:9::1")
    d = sc.model.process(icmp(0.1, "2001:db8:9::1", "2001:db8:1::10", ("2001:db8:1::10", 80, "2001:db8:9::1", 40000),
                              typ=2, code=0, af=6))
    assert (d["action"], d["dir"], d["rs"]) == ("hit", "in", "[2001:db8:2::12]:80")
    d = sc.model.process(icmp(0.2, "2001:db8:9::1", "2001:db8:1::10", ("2001:db8:1::10", 80, "2001:db8:9::1", 40000),
                              typ=128, code=0, af=6))
    assert d["action"] == "pass"


def test_icmp_about_sctp():
    sc = Scenario(proto="sctp")
    sc.c(0, chunk="INIT")
    d = sc.model.process(icmp(1, "10.0.0.1", VIP, (VIP, 80, "10.0.0.1", 40000), proto=PROTO_SCTP))
    assert (d["action"], d["state"]) == ("hit", "INIT1")


# ---- firewall marks from nftables ---------------------------------------------------------------

RULESET = """
table inet marks {
  chain pre {
    type filter hook prerouting priority -150; policy accept;
    ip daddr 192.0.2.0/24 tcp dport { 80, 443 } meta mark set 1
    ip6 daddr 2001:db8::10 th dport 1000-2000 meta mark set 2
    ip saddr 10.9.0.0/16 meta l4proto udp meta mark set 3
  }
  chain out {
    type filter hook output priority 0;
    tcp dport 22 meta mark set 9
  }
}
"""


def test_nft_marks():
    r = Ruleset(RULESET)
    p = lambda **kw: Packet(ts_ns=0, **{"src": "10.0.0.1", "sport": 1, "dst": VIP, "dport": 80, **kw})
    assert [r.mark(p()), r.mark(p(dport=443)), r.mark(p(dport=8080)), r.mark(p(proto=PROTO_UDP))] == [1, 1, 0, 0]
    assert r.mark(p(af=6, src="2001:db8::1", dst="2001:db8::10", dport=1500, proto=PROTO_UDP)) == 2
    assert r.mark(p(src="10.9.3.4", proto=PROTO_UDP, dport=53)) == 3
    assert r.mark(p(dport=22)) == 0                # an output-hook rule does not mark input


def test_nft_refuses_what_it_does_not_understand():
    with pytest.raises(NftError, match="ct"):
        Ruleset("table ip t {\n chain c {\n type filter hook prerouting priority 0;\n ct state new meta mark set 1\n }\n}\n")
    with pytest.raises(NftError, match="sets no mark"):
        Ruleset("table ip t {\n chain c {\n type filter hook prerouting priority 0;\n tcp dport 80\n }\n}\n")


def test_sysctls_the_model_does_not_cover_are_refused():
    cfg = Config()
    cfg.sysctls["cache_bypass"] = 1
    with pytest.raises(ConfigError, match="cache_bypass"):
        IPVSModel(cfg)
