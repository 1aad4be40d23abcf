"""The hashing schedulers sh, dh and mh (Maglev), bit-exact with the kernel.

Expected values come from sources independent of this code: the kernel's own hsiphash self-test
vectors (lib/tests/siphash_kunit.c, 64-bit branch), the worked vectors V16 (Maglev) and V17
(sh/dh) of the semantics reference (computed there with a separate implementation), and the
hash_32 / address-fold definitions computed here in plain Python. Table layouts and scheduling
after edits are cross-checked against a transliteration of the kernel code in
test_sched_hash_model.py, and against the real kernel in test_sched_oracle.py.
"""
import ipaddress
from collections import Counter

import pytest

from ipvsflow.config import ConfigError
from ipvsflow.engine._svctest import (
    SvcTable, hsiphash, hsiphash_u32, hash_32, addr_fold, mh_hashkey, MH_KEYS, MH_TAB_SIZE_,
)
from ipvsflow.engine.services import available_schedulers
from svc_helpers import cmd

M = 4093
TCP, UDP = 6, 17

# lib/tests/siphash_kunit.c: test_vectors_hsiphash for BITS_PER_LONG == 64; key bytes 00..0f,
# vector n hashes the bytes 00..n-1.
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


def service(sched, vip="10.0.0.100", port=80, flags="", proto="-t"):
    t = SvcTable()
    ep = f"[{vip}]:{port}" if ":" in vip else f"{vip}:{port}"
    t.apply(cmd(f"-A {proto} {ep} -s {sched}" + (f" -b {flags}" if flags else "")))
    return t, ep


def add(t, ep, rs, weight=1, extra="", proto="-t"):
    rsep = f"[{rs}]:80" if ":" in rs else f"{rs}:80"
    return t.apply(cmd(f"-a {proto} {ep} -r {rsep} -g -w {weight} {extra}"))


def edit(t, ep, rs, weight=1, extra="", proto="-t"):
    rsep = f"[{rs}]:80" if ":" in rs else f"{rs}:80"
    return t.apply(cmd(f"-e {proto} {ep} -r {rsep} -g -w {weight} {extra}"))


def delete(t, ep, rs, proto="-t"):
    rsep = f"[{rs}]:80" if ":" in rs else f"{rs}:80"
    return t.apply(cmd(f"-d {proto} {ep} -r {rsep}"))


def py_hash_32(v, bits):
    return ((v * 0x61C88647) & 0xFFFFFFFF) >> (32 - bits)


def py_fold(addr):
    a = ipaddress.ip_address(addr)
    if a.version == 4:
        return int(a)
    w = a.packed
    return (int.from_bytes(w[0:4], "big") ^ int.from_bytes(w[4:8], "big")
            ^ int.from_bytes(w[8:12], "big") ^ int.from_bytes(w[12:16], "big"))


# ---- primitives --------------------------------------------------------------------------------

@pytest.mark.parametrize("n", range(64))
def test_hsiphash_matches_kernel_self_test_vectors(n):
    assert hsiphash(bytes(range(n)), *HSIPHASH_KEY) == HSIPHASH_VECTORS[n]


def test_hsiphash_u32_is_the_four_byte_hash():
    # hsiphash_1u32(0x03020100) is checked against vector 4 by the kernel self-test
    assert hsiphash_u32(0x03020100, *HSIPHASH_KEY) == HSIPHASH_VECTORS[4]
    for v in (0, 1, 0xDEADBEEF, 0xFFFFFFFF, 0x0A000001):
        assert hsiphash_u32(v, 2654435761, 2654435761) == hsiphash(v.to_bytes(4, "little"),
                                                                   2654435761, 2654435761)


def test_mh_keys_are_the_kernels_constants():
    assert MH_KEYS == (2654435761, 2654446892)
    assert MH_TAB_SIZE_ == M


@pytest.mark.parametrize("v", [0, 1, 0x0A000001, 0x0A000002, 0xC0000210, 0xFFFFFFFF, 0x80000000])
@pytest.mark.parametrize("bits", [1, 8, 16, 31])
def test_hash_32_is_the_golden_ratio_multiplication(v, bits):
    assert hash_32(v, bits) == py_hash_32(v, bits)


@pytest.mark.parametrize("addr", ["10.0.0.1", "198.51.100.7", "255.255.255.255", "2001:db8:9::1",
                                  "2001:db8:9::8", "fe80::1:2:3:4", "::ffff:10.0.0.1", "::"])
def test_address_fold(addr):
    assert addr_fold(addr) == py_fold(addr)


def test_address_fold_across_families():
    # IPv6 service, IPv4 (tunnel) address: the kernel's union is zero after the 4 bytes
    assert addr_fold("192.0.2.11", 6) == int(ipaddress.ip_address("192.0.2.11"))
    # IPv4 service, IPv6 address: addr->ip is the first 32-bit word
    assert addr_fold("2001:db8:2::11", 4) == 0x20010DB8


# ---- registration ------------------------------------------------------------------------------

def test_hashing_schedulers_are_available():
    assert {"sh", "dh", "mh"} <= set(available_schedulers())
    for s in ("sh", "dh", "mh"):
        t, _ = service(s)
        assert t.services()[0]["sched"] == s
        assert t.sched_table(0) is not None
        assert set(t.sched_table(0)) == {-1}            # no dests yet: empty table
        assert t.schedule(0) == -1


def test_other_schedulers_have_no_table():
    t, _ = service("rr")
    assert t.sched_table(0) is None


# ---- V17: sh and dh ---------------------------------------------------------------------------

def v17_sh(flags=""):
    t, ep = service("sh", flags=flags)
    rs1 = add(t, ep, "10.1.0.1")
    rs2 = add(t, ep, "10.1.0.2")
    return t, ep, rs1, rs2


def test_v17_sh_table_alternates():
    t, ep, rs1, rs2 = v17_sh()
    tab = t.sched_table(0)
    assert tab[0::2] == [rs2] * 128 and tab[1::2] == [rs1] * 128


@pytest.mark.parametrize("client,bucket", [("10.0.0.1", 39), ("10.0.0.2", 137), ("10.0.0.3", 235)])
def test_v17_sh_clients(client, bucket):
    t, ep, rs1, rs2 = v17_sh()
    assert py_hash_32(py_fold(client), 8) == bucket
    assert t.schedule(0, client) == rs1
    # the port is ignored without sh-port
    assert t.schedule(0, client, sport=1) == t.schedule(0, client, sport=65000) == rs1


def test_v17_dh_bucket_of_the_vip():
    assert py_hash_32(py_fold("192.0.2.10"), 8) == 162
    t, ep = service("dh", vip="192.0.2.10")
    ids = [add(t, ep, f"10.1.0.{i}") for i in range(1, 4)]        # list [3, 2, 1]
    tab = t.sched_table(0)
    assert tab[:6] == [ids[2], ids[1], ids[0], ids[2], ids[1], ids[0]]
    # bucket 162 = 54 * 3: the list head; every client lands there
    assert {t.schedule(0, f"198.51.100.{i}", sport=40000 + i) for i in range(1, 30)} == {tab[162]}
    assert tab[162] == ids[2]


# ---- sh details --------------------------------------------------------------------------------

def test_sh_weights_fill_consecutive_buckets_and_weight0_takes_one():
    t, ep = service("sh")
    a = add(t, ep, "10.1.0.1", 3)
    b = add(t, ep, "10.1.0.2", 0)
    c = add(t, ep, "10.1.0.3", 2)        # list [c, b, a]
    cycle = [c, c, b, a, a, a]
    assert t.sched_table(0) == (cycle * 43)[:256]


def test_sh_table_is_rebuilt_on_edit_delete_and_add():
    t, ep = service("sh")
    a = add(t, ep, "10.1.0.1")
    b = add(t, ep, "10.1.0.2")
    edit(t, ep, "10.1.0.2", 2)
    assert t.sched_table(0)[:6] == [b, b, a, b, b, a]
    delete(t, ep, "10.1.0.2")
    assert set(t.sched_table(0)) == {a}
    c = add(t, ep, "10.1.0.3", 1)
    assert t.sched_table(0)[:4] == [c, a, c, a]
    delete(t, ep, "10.1.0.3")
    delete(t, ep, "10.1.0.1")
    assert set(t.sched_table(0)) == {-1}
    assert t.schedule(0) == -1


def sh_fallback_expect(tab, eligible, fold, port=0):
    h = py_hash_32((port + fold) & 0xFFFFFFFF, 8)
    if eligible(tab[h]):
        return tab[h]
    for k in range(256):
        b = (((k + h) % 256) + py_hash_32((port + fold) & 0xFFFFFFFF, 8)) & 255
        if eligible(tab[b]):
            return tab[b]
    return -1


def test_sh_unavailable_bucket_without_fallback_gives_no_destination():
    t, ep, rs1, rs2 = v17_sh()
    edit(t, ep, "10.1.0.1", 0)               # weight 0: rs1 still owns buckets (one each)
    tab = t.sched_table(0)
    assert tab[39] == rs1                    # a weight-0 dest keeps one bucket per cycle
    assert t.schedule(0, "10.0.0.1") == -1


def test_sh_fallback_probes_from_twice_the_hash():
    t, ep = service("sh", flags="sh-fallback")
    ids = [add(t, ep, f"10.1.0.{i}", w) for i, w in ((1, 1), (2, 2), (3, 1), (4, 3))]
    zero = ids[1]
    edit(t, ep, "10.1.0.2", 0)
    tab = t.sched_table(0)
    weights = {d["id"]: d["weight"] for d in t.dests()}
    eligible = lambda d: d >= 0 and weights[d] > 0
    quirk_seen = 0
    for i in range(1, 255):
        client = f"198.51.100.{i}"
        fold = py_fold(client)
        h = py_hash_32(fold, 8)
        got = t.schedule(0, client)
        assert got == sh_fallback_expect(tab, eligible, fold), client
        if tab[h] == zero:
            # a naive probe from H + k would take the next bucket's dest; the kernel starts at 2H
            naive = next(tab[(h + k) % 256] for k in range(256) if eligible(tab[(h + k) % 256]))
            quirk_seen += naive != got
    assert quirk_seen > 0


def test_sh_fallback_with_every_server_unavailable():
    t, ep, rs1, rs2 = v17_sh(flags="sh-fallback")
    edit(t, ep, "10.1.0.1", 0)
    edit(t, ep, "10.1.0.2", 0)
    assert t.schedule(0, "10.0.0.1") == -1


def test_sh_overloaded_server_is_unavailable():
    t, ep = service("sh")
    a = add(t, ep, "10.1.0.1", 1, "-x 1")
    b = add(t, ep, "10.1.0.2")
    client = next(f"198.51.100.{i}" for i in range(1, 255) if t.schedule(0, f"198.51.100.{i}") == a)
    h = t.bind(a)                                 # u_threshold 1 reached: OVERLOAD
    assert t.dest(a)["overload"]
    assert t.schedule(0, client) == -1
    t.unbind(h)
    assert t.schedule(0, client) == a


def test_sh_port_mixes_in_the_client_port():
    t, ep = service("sh", flags="sh-port")
    ids = [add(t, ep, f"10.1.0.{i}") for i in range(1, 4)]
    tab = t.sched_table(0)
    fold = py_fold("198.51.100.5")
    picks = set()
    for port in range(47100, 47140):
        got = t.schedule(0, "198.51.100.5", sport=port)
        assert got == tab[py_hash_32(port + fold, 8)]
        picks.add(got)
    assert picks == set(ids)


def test_sh_port_is_zero_for_protocols_without_ports():
    t, ep = service("sh", flags="sh-port")
    for i in range(1, 4):
        add(t, ep, f"10.1.0.{i}")
    tab = t.sched_table(0)
    fold = py_fold("198.51.100.5")
    ports = [p for p in range(1, 200) if tab[py_hash_32(p + fold, 8)] != tab[py_hash_32(fold, 8)]]
    assert ports
    for proto in (UDP, 132):
        assert t.schedule(0, "198.51.100.5", sport=ports[0], proto=proto) == tab[py_hash_32(ports[0] + fold, 8)]
    # e.g. GRE on a fwmark service: no ports, the address alone
    assert t.schedule(0, "198.51.100.5", sport=ports[0], proto=47) == tab[py_hash_32(fold, 8)]


def test_sh_port_wraps_around_32_bits():
    t, ep = service("sh", flags="sh-port")
    for i in range(1, 4):
        add(t, ep, f"10.1.0.{i}")
    tab = t.sched_table(0)
    client = "255.255.255.250"
    for port in (1, 5, 6, 40000, 65535):
        assert t.schedule(0, client, sport=port) == tab[py_hash_32((port + py_fold(client)) & 0xFFFFFFFF, 8)]


def test_sh_ipv6_folds_the_client_address():
    t, ep = service("sh", vip="2001:db8:1::10")
    ids = [add(t, ep, f"2001:db8:2::1{i}") for i in range(1, 4)]
    tab = t.sched_table(0)
    for i in range(1, 40):
        client = f"2001:db8:9::{i:x}"
        assert t.schedule(0, client) == tab[py_hash_32(py_fold(client), 8)]
    # addresses with the same XOR fold land together
    assert t.schedule(0, "2001:db8:9::1:0") == t.schedule(0, "2001:db8:9:1::")


# ---- dh details --------------------------------------------------------------------------------

def test_dh_keys_on_the_destination_address():
    t = SvcTable()
    t.apply(cmd("-A -f 7 -s dh"))
    ids = [t.apply(cmd(f"-a -f 7 -r 10.1.0.{i}:80 -g -w {w}")) for i, w in ((1, 1), (2, 5), (3, 0))]
    tab = t.sched_table(0)
    assert tab[:3] == [ids[2], ids[1], ids[0]]      # one bucket per dest, weights ignored
    seen = set()
    for i in range(1, 200):
        dst = f"192.0.2.{i}"
        want = tab[py_hash_32(py_fold(dst), 8)]
        want = -1 if want == ids[2] else want        # weight 0: no destination
        got = t.schedule(0, "198.51.100.1", dst=dst)
        assert got == want, dst
        # the client does not matter
        assert t.schedule(0, "198.51.100.77", sport=1234, dst=dst) == got
        seen.add(got)
    assert seen == {ids[0], ids[1], -1}


def test_dh_table_rebuilt_on_add_and_delete():
    t, ep = service("dh")
    a = add(t, ep, "10.1.0.1")
    assert set(t.sched_table(0)) == {a}
    b = add(t, ep, "10.1.0.2")
    assert t.sched_table(0)[:4] == [b, a, b, a]
    edit(t, ep, "10.1.0.2", 7)                       # weights do not shape the table
    assert t.sched_table(0)[:4] == [b, a, b, a]
    delete(t, ep, "10.1.0.2")
    assert set(t.sched_table(0)) == {a}


def test_dh_unavailable_server_gives_no_destination():
    t, ep = service("dh")
    a = add(t, ep, "10.1.0.1", 1, "-x 1")
    assert t.schedule(0) == a
    edit(t, ep, "10.1.0.1", 0, "-x 1")
    assert t.schedule(0) == -1
    edit(t, ep, "10.1.0.1", 1, "-x 1")
    assert t.schedule(0) == a
    t.bind(a)                                        # OVERLOAD
    assert t.schedule(0) == -1


def test_dh_ipv6_folds_the_destination():
    t = SvcTable()
    t.apply(cmd("-A -f 9 -6 -s dh"))
    ids = [t.apply(cmd(f"-a -f 9 -6 -r [2001:db8:2::1{i}]:80 -g")) for i in range(1, 4)]
    tab = t.sched_table(0)
    for i in range(1, 50):
        dst = f"2001:db8:1::{i:x}"
        assert t.schedule(0, "2001:db8:9::1", dst=dst) == tab[py_hash_32(py_fold(dst), 8)]


# ---- V16: Maglev -------------------------------------------------------------------------------

def v16(flags=""):
    t, ep = service("mh", flags=flags)
    rs1 = add(t, ep, "10.1.0.1")
    rs2 = add(t, ep, "10.1.0.2")
    return t, ep, rs1, rs2


@pytest.mark.parametrize("rs,h1,h2,offset,skip", [
    ("10.1.0.2", 0x96828D0D, 0x86F5FC4B, 2769, 572),
    ("10.1.0.1", 0x17C87AC9, 0x61487D80, 310, 1461),
])
def test_v16_dest_permutation_hashes(rs, h1, h2, offset, skip):
    fold = py_fold(rs)
    assert mh_hashkey(fold, 80, 1) == h1 and mh_hashkey(fold, 80, 2) == h2
    assert h1 % M == offset and h2 % (M - 1) + 1 == skip


def test_v16_slot_counts():
    t, ep, rs1, rs2 = v16()
    assert Counter(t.sched_table(0)) == {rs2: 2047, rs1: 2046}
    assert t.mh_weights(0) == (1, 0)


@pytest.mark.parametrize("client,h,slot,which", [
    ("10.0.0.1", 0x03080CE4, 3711, 1),
    ("10.0.0.2", 0x41CFDE13, 1884, 2),
    ("10.0.0.3", 0x264D5EC5, 3741, 2),
    ("192.168.1.100", 0xC15D2CF8, 1341, 2),
])
def test_v16_clients(client, h, slot, which):
    t, ep, rs1, rs2 = v16()
    assert mh_hashkey(py_fold(client), 0, 1) == h and h % M == slot
    assert t.schedule(0, client) == (rs1 if which == 1 else rs2)
    assert t.sched_table(0)[slot] == (rs1 if which == 1 else rs2)
    assert t.schedule(0, client, sport=12345) == t.schedule(0, client)   # port ignored


def test_v16_mh_port():
    t, ep, rs1, rs2 = v16(flags="mh-port")
    assert mh_hashkey(py_fold("10.0.0.1"), 40000, 1) % M == 2940
    assert t.schedule(0, "10.0.0.1", sport=40000) == rs1


def test_v16_weights():
    t, ep = service("mh")
    rs1 = add(t, ep, "10.1.0.1", 1)
    rs2 = add(t, ep, "10.1.0.2", 2)
    rs3 = add(t, ep, "10.1.0.3", 3)
    assert Counter(t.sched_table(0)) == {rs3: 2047, rs2: 1364, rs1: 682}
    assert t.schedule(0, "10.0.0.1") == rs3
    assert t.schedule(0, "10.0.0.2") == rs2


# ---- mh details --------------------------------------------------------------------------------

def test_mh_weight0_keeps_slots_via_last_weight():
    t, ep, rs1, rs2 = v16()
    before = t.sched_table(0)
    edit(t, ep, "10.1.0.1", 0)
    assert t.dest(rs1)["last_weight"] == 1
    assert t.sched_table(0) == before
    assert t.schedule(0, "10.0.0.1") == -1           # its slot is rs1's, now unavailable
    assert t.schedule(0, "10.0.0.2") == rs2
    edit(t, ep, "10.1.0.1", 1)
    assert t.schedule(0, "10.0.0.1") == rs1


def test_mh_fallback_moves_clients_of_an_unavailable_server():
    t, ep, rs1, rs2 = v16(flags="mh-fallback")
    edit(t, ep, "10.1.0.1", 0)
    tab = t.sched_table(0)
    fold = py_fold("10.0.0.1")
    ihash = mh_hashkey(fold, 0, 1) % M
    assert tab[ihash] == rs1
    expect = next(tab[mh_hashkey(fold, 0, 1, (k + ihash) % M) % M] for k in range(M)
                  if tab[mh_hashkey(fold, 0, 1, (k + ihash) % M) % M] == rs2)
    assert t.schedule(0, "10.0.0.1") == expect == rs2
    edit(t, ep, "10.1.0.2", 0)
    assert t.schedule(0, "10.0.0.1") == -1           # nobody available


def test_mh_fallback_probe_sequence_starts_at_the_slot():
    t, ep = service("mh", flags="mh-fallback")
    ids = [add(t, ep, f"10.1.0.{i}") for i in range(1, 6)]
    edit(t, ep, "10.1.0.2", 0)
    edit(t, ep, "10.1.0.4", 0)
    down = {ids[1], ids[3]}
    tab = t.sched_table(0)

    def first_up(fold, start):
        for k in range(M):
            d = tab[mh_hashkey(fold, 0, 1, (k + start) % M) % M]
            if d not in down:
                return d

    differs = 0
    for i in range(1, 255):
        client = f"198.51.100.{i}"
        fold = py_fold(client)
        ihash = mh_hashkey(fold, 0, 1) % M
        want = tab[ihash] if tab[ihash] not in down else first_up(fold, ihash)
        assert t.schedule(0, client) == want, client
        if tab[ihash] in down:
            differs += first_up(fold, 0) != want    # offsets from 0 would pick another server
    assert differs > 0


def test_mh_dest_added_with_weight0_is_not_in_the_table():
    t, ep = service("mh")
    a = add(t, ep, "10.1.0.1", 0)
    assert t.dest(a)["last_weight"] == 0
    assert set(t.sched_table(0)) == {-1}             # all last_weights 0: emptied
    assert t.mh_weights(0) == (0, 0)
    b = add(t, ep, "10.1.0.2", 2)
    assert set(t.sched_table(0)) == {b}
    edit(t, ep, "10.1.0.1", 4)
    assert Counter(t.sched_table(0)).keys() == {a, b}
    assert t.mh_weights(0) == (2, 0)


def test_mh_large_weights_are_shifted():
    t, ep = service("mh")
    a = add(t, ep, "10.1.0.1", 1000)
    b = add(t, ep, "10.1.0.2", 1)
    # fls(1000) = 10 -> rshift 4: turns 62 and 1 (0 rounded up to 1)
    assert t.mh_weights(0) == (1, 4)
    n = Counter(t.sched_table(0))
    assert n[a] + n[b] == M and n[a] > 55 * n[b]


def test_mh_delete_rebuilds_and_empties():
    t, ep, rs1, rs2 = v16()
    delete(t, ep, "10.1.0.2")
    assert set(t.sched_table(0)) == {rs1}
    delete(t, ep, "10.1.0.1")
    assert set(t.sched_table(0)) == {-1}
    assert t.schedule(0, "10.0.0.1") == -1
    # re-adding revives the same dest with its old id and the same table as before
    assert add(t, ep, "10.1.0.1") == rs1
    assert add(t, ep, "10.1.0.2") == rs2
    assert Counter(t.sched_table(0)) == {rs2: 2047, rs1: 2046}


def test_mh_ipv6():
    t, ep = service("mh", vip="2001:db8:1::10")
    ids = [add(t, ep, f"2001:db8:2::1{i}") for i in range(1, 4)]
    tab = t.sched_table(0)
    assert set(tab) == set(ids)
    for i in range(1, 40):
        client = f"2001:db8:9::{i:x}"
        assert t.schedule(0, client) == tab[mh_hashkey(py_fold(client), 0, 1) % M]


def test_mh_overloaded_server_is_unavailable():
    t, ep = service("mh")
    a = add(t, ep, "10.1.0.1", 1, "-x 1")
    b = add(t, ep, "10.1.0.2")
    client = next(f"198.51.100.{i}" for i in range(1, 255) if t.schedule(0, f"198.51.100.{i}") == a)
    t.bind(a)
    assert t.schedule(0, client) == -1


def many_dests(t, ep, n):
    for i in range(n):
        t.apply(cmd(f"-a -t {ep} -r 10.64.{i // 254}.{i % 254 + 1}:80 -g"))


def test_mh_refuses_more_servers_than_slots():
    t, ep = service("rr")
    many_dests(t, ep, M + 1)
    with pytest.raises(ConfigError, match="at most 4093"):
        t.apply(cmd(f"-E -t {ep} -s mh"))
    assert t.services()[0]["sched"] == "rr"
    delete(t, ep, "10.64.0.1")
    t.apply(cmd(f"-E -t {ep} -s mh"))
    tab = t.sched_table(0)
    assert len(set(tab)) == M                     # one slot each
    n = t.n_dests
    with pytest.raises(ConfigError, match="at most 4093"):
        add(t, ep, "10.99.0.1")
    assert t.n_dests == n and t.services()[0]["num_dests"] == M
    assert t.sched_table(0) == tab


def test_scheduler_change_frees_and_rebuilds_tables():
    t, ep = service("sh")
    a = add(t, ep, "10.1.0.1")
    b = add(t, ep, "10.1.0.2")
    t.apply(cmd(f"-E -t {ep} -s rr"))
    assert t.sched_table(0) is None
    t.apply(cmd(f"-E -t {ep} -s mh"))
    assert Counter(t.sched_table(0)).keys() == {a, b}
    t.apply(cmd(f"-E -t {ep} -s dh"))
    assert t.sched_table(0)[:2] == [b, a]
    t.apply(cmd(f"-D -t {ep}"))
    t.apply(cmd(f"-A -t {ep} -s sh"))             # same slot, fresh table, no dests
    assert set(t.sched_table(0)) == {-1}
    t.apply(cmd("-C"))
