"""sh, dh and mh against a plain-Python transliteration of the kernel code (ip_vs_sh.c,
ip_vs_dh.c, ip_vs_mh.c, lib/siphash.c) under random edit sequences: tables after every add, edit
and delete, and the scheduling of random clients with and without the port and fallback flags.
The model's own hsiphash is checked against the kernel's self-test vectors first, so it shares
nothing with the Cython code but the specification.
"""
import ipaddress

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from ipvsflow.engine._svctest import SvcTable
from svc_helpers import cmd
from test_sched_hash import HSIPHASH_KEY, HSIPHASH_VECTORS

MASK64 = (1 << 64) - 1
M = 4093
KEY1 = (2654435761, 2654435761)
KEY2 = (2654446892, 2654446892)


# ---- model: primitives --------------------------------------------------------------------------

def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & MASK64


def _round(v):
    v0, v1, v2, v3 = v
    v0 = (v0 + v1) & MASK64; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & MASK64; v3 = _rotl(v3, 16); v3 ^= v2
    v0 = (v0 + v3) & MASK64; v3 = _rotl(v3, 21); v3 ^= v0
    v2 = (v2 + v1) & MASK64; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)
    return [v0, v1, v2, v3]


def m_hsiphash(data: bytes, key) -> int:
    k0, k1 = key
    v = [0x736F6D6570736575 ^ k0, 0x646F72616E646F6D ^ k1, 0x6C7967656E657261 ^ k0,
         0x7465646279746573 ^ k1]
    full = len(data) - len(data) % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v[3] ^= m
        v = _round(v)
        v[0] ^= m
    b = (len(data) << 56) | int.from_bytes(data[full:], "little")
    v[3] ^= b
    v = _round(v)
    v[0] ^= b
    v[2] ^= 0xFF
    for _ in range(3):
        v = _round(v)
    return (v[0] ^ v[1] ^ v[2] ^ v[3]) & 0xFFFFFFFF


def m_hash_32(v, bits):
    return ((v * 0x61C88647) & 0xFFFFFFFF) >> (32 - bits)


def m_fold(addr, svc_af):
    a = ipaddress.ip_address(addr)
    if a.version == 4:
        return int(a)
    w = [int.from_bytes(a.packed[i:i + 4], "big") for i in range(0, 16, 4)]
    return w[0] ^ w[1] ^ w[2] ^ w[3] if svc_af == 6 else w[0]


def m_mh_hash(fold, port, key, offset=0):
    return m_hsiphash(((offset + port + fold) & 0xFFFFFFFF).to_bytes(4, "little"), key)


@pytest.mark.parametrize("n", [0, 1, 3, 4, 7, 8, 9, 15, 16, 31, 63])
def test_model_hsiphash_matches_kernel_vectors(n):
    assert m_hsiphash(bytes(range(n)), HSIPHASH_KEY) == HSIPHASH_VECTORS[n]


# ---- model: tables -----------------------------------------------------------------------------
# A dest is a dict: id, addr, port, weight, last_weight, overload; `dests` is the list, newest first.

def m_sh_table(dests):
    if not dests:
        return [-1] * 256
    tab, i, count = [], 0, 0
    for _ in range(256):
        d = dests[i]
        tab.append(d["id"])
        count += 1
        if count >= d["weight"]:
            i = (i + 1) % len(dests)
            count = 0
    return tab


def m_dh_table(dests):
    if not dests:
        return [-1] * 256
    return [dests[i % len(dests)]["id"] for i in range(256)]


def m_gcd(a, b):
    while b:
        a, b = b, a % b
    return a


def m_mh_table(dests, svc_af):
    g = 0
    for d in dests:
        if d["last_weight"] > 0:
            g = m_gcd(d["last_weight"], g) if g > 0 else d["last_weight"]
    if g < 1:
        return [-1] * M
    mw = max(d["last_weight"] for d in dests)
    rshift = max(0, (mw // g).bit_length() - 6)
    setup = []
    for d in dests:
        fold = m_fold(d["addr"], svc_af)
        off = m_mh_hash(fold, d["port"], KEY1) % M
        skip = m_mh_hash(fold, d["port"], KEY2) % (M - 1) + 1
        turns = (d["last_weight"] // g) >> rshift
        setup.append({"perm": off, "skip": skip, "turns": turns or int(d["last_weight"] != 0)})
    table = [-1] * M
    taken = [False] * M
    n = 0
    dt = 0
    while True:
        i = 0
        while i < len(dests):
            ds = setup[i]
            if ds["turns"] < 1:
                i += 1
                continue
            while taken[ds["perm"]]:
                ds["perm"] = (ds["perm"] + ds["skip"]) % M
            c = ds["perm"]
            taken[c] = True
            table[c] = dests[i]["id"]
            n += 1
            if n == M:
                return table
            dt += 1
            if dt >= ds["turns"]:
                dt = 0
                i += 1


def m_available(d):
    return d is not None and d["weight"] > 0 and not d["overload"]


def m_sh_pick(tab, by_id, fold, port, fallback):
    key = m_hash_32((port + fold) & 0xFFFFFFFF, 8)
    d = tab[key]
    if d < 0:
        return -1
    if m_available(by_id[d]):
        return d
    if not fallback:
        return -1
    for k in range(256):
        b = (((k + key) % 256) + m_hash_32((port + fold) & 0xFFFFFFFF, 8)) & 255
        if tab[b] < 0:
            return -1
        if m_available(by_id[tab[b]]):
            return tab[b]
    return -1


def m_mh_pick(tab, by_id, fold, port, fallback):
    ihash = m_mh_hash(fold, port, KEY1) % M
    d = tab[ihash]
    if d < 0:
        return -1
    if m_available(by_id[d]):
        return d
    if not fallback:
        return -1
    for k in range(M):
        s = m_mh_hash(fold, port, KEY1, (k + ihash) % M) % M
        if tab[s] < 0:
            return -1
        if m_available(by_id[tab[s]]):
            return tab[s]
    return -1


def m_dh_pick(tab, by_id, fold):
    d = tab[m_hash_32(fold, 8)]
    if d < 0 or not m_available(by_id[d]):
        return -1
    return d


# ---- random edit sequences ---------------------------------------------------------------------

SERVERS = 6
op_st = st.tuples(st.sampled_from(["add", "add", "edit", "del", "overload"]),
                  st.integers(0, SERVERS - 1),
                  st.one_of(st.sampled_from([0, 0, 1, 1, 2, 3, 4]), st.integers(0, 300)))
client_st = st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 65535))


def _addr(af, kind, i):
    if af == 4:
        return {"rs": f"192.0.2.{11 + i}", "vip": "203.0.113.10"}[kind] if kind != "client" else \
            str(ipaddress.IPv4Address(i))
    return {"rs": f"2001:db8:2::{11 + i:x}", "vip": "2001:db8:1::10"}[kind] if kind != "client" else \
        str(ipaddress.IPv6Address((0x20010DB8_0009 << 80) | i))


def _ep(a, port=80):
    return f"[{a}]:{port}" if ":" in a else f"{a}:{port}"


def run_sequence(sched, af, flags, ops, clients):
    t = SvcTable()
    vs = _ep(_addr(af, "vip", 0))
    t.apply(cmd(f"-A -t {vs} -s {sched}" + (f" -b {flags}" if flags else "")))
    lst = []                       # model list, newest first
    by_id = {}
    handles = {}                   # dest id -> bound stand-in entries (for OVERLOAD)
    fallback = "fallback" in flags
    use_port = "port" in flags
    for op, i, w in ops:
        rs = _addr(af, "rs", i)
        present = next((d for d in lst if d["addr"] == rs), None)
        if op == "add" and present is None:
            did = t.apply(cmd(f"-a -t {vs} -r {_ep(rs)} -g -w {w} -x 1"))
            d = by_id.get(did) or {"id": did, "addr": rs, "port": 80, "overload": False}
            d.update(weight=w, last_weight=w)       # a re-add revives the same id
            by_id[did] = d
            lst.insert(0, d)
        elif op == "edit" and present is not None:
            t.apply(cmd(f"-e -t {vs} -r {_ep(rs)} -g -w {w} -x 1"))
            present["weight"] = w
            if w:
                present["last_weight"] = w
        elif op == "del" and present is not None:
            t.apply(cmd(f"-d -t {vs} -r {_ep(rs)}"))
            lst.remove(present)
        elif op == "overload" and present is not None:
            # bind or unbind one stand-in entry: with -x 1 that sets or clears OVERLOAD
            hs = handles.setdefault(present["id"], [])
            if hs:
                t.unbind(hs.pop())
            else:
                hs.append(t.bind(present["id"]))
            assert t.dest(present["id"])["overload"] == bool(hs)
        else:
            continue
        for d in lst:
            # OVERLOAD bookkeeping (thresholds, revival) is the service table's, tested elsewhere
            d["overload"] = t.dest(d["id"])["overload"]
        if sched == "sh":
            tab = m_sh_table(lst)
        elif sched == "dh":
            tab = m_dh_table(lst)
        else:
            tab = m_mh_table(lst, af)
        assert t.sched_table(0) == tab, (op, i, w)
        for c, port in clients:
            src = _addr(af, "client", c)
            fold = m_fold(src, af)
            p = port if use_port else 0
            if sched == "sh":
                want = m_sh_pick(tab, by_id, fold, p, fallback)
                got = t.schedule(0, src, sport=port)
            elif sched == "mh":
                want = m_mh_pick(tab, by_id, fold, p, fallback)
                got = t.schedule(0, src, sport=port)
            else:
                want = m_dh_pick(tab, by_id, fold)
                got = t.schedule(0, "198.51.100.1" if af == 4 else "2001:db8:9::1", sport=port, dst=src)
            assert got == want, (op, i, w, src, port)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("af", [4, 6])
@pytest.mark.parametrize("flags", ["", "sh-port", "sh-fallback", "sh-port,sh-fallback"])
@SETTINGS
@given(ops=st.lists(op_st, min_size=1, max_size=14), clients=st.lists(client_st, min_size=8, max_size=24))
def test_sh_matches_kernel_model(af, flags, ops, clients):
    # many clients per step: an unavailable bucket (weight 0, OVERLOAD) is hit often
    run_sequence("sh", af, flags, ops, clients)


@pytest.mark.parametrize("af", [4, 6])
@SETTINGS
@given(ops=st.lists(op_st, min_size=1, max_size=14), clients=st.lists(client_st, min_size=1, max_size=6))
def test_dh_matches_kernel_model(af, ops, clients):
    run_sequence("dh", af, "", ops, clients)


@pytest.mark.parametrize("af", [4, 6])
@pytest.mark.parametrize("flags", ["", "mh-port,mh-fallback"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=1, max_size=8), clients=st.lists(client_st, min_size=4, max_size=12))
def test_mh_matches_kernel_model(af, flags, ops, clients):
    run_sequence("mh", af, flags, ops, clients)
