"""The classifier against the Linux kernel's own netfilter.

Random mark rule sets are loaded into a network namespace this test creates (with nft, and with
iptables when it is installed), the same frames are sent into it over a veth pair, and the mark
every packet had is read back from the kernel: two probe chains copy ``(IPv4 id | IPv6 flow label,
meta mark)`` into nft sets, one at the end of prerouting and one in input just before IPVS's hook
(priority 90 < 99). The classifier, given the same rule text (and the kernel's own listing of it:
``nft list table``, ``iptables-save``), must give every packet the mark the kernel gave it.

Non-first fragments are sent but not compared. The classifier follows xtables (xt_tcpudp: a port
match never matches when fragoff != 0). nf_tables, which also runs Debian's iptables (iptables-nft
translates -p/--dport into nft payload loads), reads ports through its fast payload path, which has
no fragment-offset check: on a non-first IPv4 fragment it reads the fragment's first payload bytes,
on an IPv6 one bytes of the IPv6 header (the flow label). Those marks are arbitrary; IPVS itself
only sees reassembled packets, so a non-first fragment's own mark never reaches a decision.

Traffic stays inside the two namespaces (addresses from 198.18.0.0/15 and fd00:5eed::/32).
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from ipvsflow.marks import parse_marks
from test_marks_classify import Classifier, ESP, ICMP, ICMP6, SCTP, TCP, UDP, batch_of, frame

NFT = shutil.which("nft")
IP = shutil.which("ip")
IPTABLES = shutil.which("iptables")
IP6TABLES = shutil.which("ip6tables")

SRC4 = [f"198.18.1.{i}" for i in range(1, 7)]
DST4 = [f"198.19.2.{i}" for i in range(1, 7)]
SRC6 = [f"fd00:5eed:1::{i}" for i in range(1, 7)]
DST6 = [f"fd00:5eed:2::{i}" for i in range(1, 7)]
PORTS = [22, 53, 80, 443, 1000, 1500, 2000, 8080]

# (nft chain, hook, priority, iptables table, iptables chain): the iptables chains and their nft twins
CHAINS = [("pre_raw", "prerouting", -300, "raw", "PREROUTING"),
          ("pre_mangle", "prerouting", -150, "mangle", "PREROUTING"),
          ("in_mangle", "input", -150, "mangle", "INPUT"),
          ("in_filter", "input", 0, "filter", "INPUT")]

PROBE = """
table inet ipvsflow_probe {
    set pre4 { typeof ip id . meta mark; flags dynamic; size 65535; }
    set pre6 { typeof ip6 flowlabel . meta mark; flags dynamic; size 65535; }
    set in4 { typeof ip id . meta mark; flags dynamic; size 65535; }
    set in6 { typeof ip6 flowlabel . meta mark; flags dynamic; size 65535; }
    chain pre {
        type filter hook prerouting priority 1000; policy accept;
        meta nfproto ipv4 add @pre4 { ip id . meta mark }
        meta nfproto ipv6 add @pre6 { ip6 flowlabel . meta mark }
    }
    chain inp {
        type filter hook input priority 90; policy accept;
        meta nfproto ipv4 add @in4 { ip id . meta mark }
        meta nfproto ipv6 add @in6 { ip6 flowlabel . meta mark }
    }
}
"""

SENDER = r"""
import socket, struct, sys
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[2], 0))
off = 0
while off < len(data):
    (n,) = struct.unpack_from("!I", data, off)
    s.send(data[off + 4:off + 4 + n])
    off += 4 + n
"""


def _run(args, *, ns=None, input=None, check=True):
    cmd = ([IP, "netns", "exec", ns] if ns else []) + list(args)
    out = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


@dataclass
class Lab:
    sender: str
    receiver: str
    mac: bytes
    tmp: str
    keys: dict = field(default_factory=dict)

    def load(self, ruleset: str = "") -> None:
        _run([NFT, "-f", "-"], ns=self.receiver, input="flush ruleset\n" + PROBE + ruleset)

    def iptables(self, commands: list) -> None:
        for argv in commands:
            _run(argv, ns=self.receiver)

    def observe(self, frames: list, fragments: set) -> tuple:
        """Send the frames; (pre, inp): per frame index, the mark the kernel gave it at the end of
        prerouting and before IPVS in input (None when the packet did not get there)."""
        path = os.path.join(self.tmp, "frames.bin")
        with open(path, "wb") as fh:
            for f in frames:
                fh.write(len(f).to_bytes(4, "big") + f)
        _run([sys.executable, "-c", SENDER, path, "va"], ns=self.sender)
        want_in = len(frames) - len(fragments)
        deadline = time.monotonic() + 5
        while True:
            got = {name: self._set(name) for name in ("pre4", "pre6", "in4", "in6")}
            n_pre = len(got["pre4"]) + len(got["pre6"])
            n_in = len(got["in4"]) + len(got["in6"])
            if (n_pre >= len(frames) and n_in >= want_in) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        pre, inp = [], []
        for i, f in enumerate(frames):
            v6 = f[12:14] == b"\x86\xdd"
            key = i + 1
            pre.append(got["pre6" if v6 else "pre4"].get(key))
            inp.append(got["in6" if v6 else "in4"].get(key))
        return pre, inp

    def _set(self, name: str) -> dict:
        out = _run([NFT, "-j", "list", "set", "inet", "ipvsflow_probe", name], ns=self.receiver)
        for obj in json.loads(out.stdout)["nftables"]:
            if "set" in obj:
                return {e["concat"][0]: e["concat"][1] for e in obj["set"].get("elem", [])}
        return {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if not NFT or not IP:
        pytest.skip("needs the nft and ip commands (Debian packages nftables and iproute2)")
    base = f"ipvsflow-marks-{os.getpid()}"
    s, r = base + "-s", base + "-r"
    try:
        _run([IP, "netns", "add", s])
        _run([IP, "netns", "add", r])
        _run([IP, "link", "add", "va", "netns", s, "type", "veth", "peer", "name", "vb", "netns", r])
        for ns, dev in ((s, "va"), (r, "vb"), (r, "lo")):
            _run([IP, "-n", ns, "link", "set", dev, "up"])
        for key in ("all", "default", "vb"):
            _run(["sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"], ns=r)
        # every destination of the pools is a local address of the receiver (so packets reach input)
        _run([IP, "-n", r, "route", "add", "local", "198.19.0.0/16", "dev", "lo", "table", "local"])
        _run([IP, "-n", r, "-6", "route", "add", "local", "fd00:5eed:2::/64", "dev", "lo", "table", "local"])
        info = json.loads(_run([IP, "-n", r, "-j", "link", "show", "vb"]).stdout)[0]
        _run([NFT, "-f", "-"], ns=r, input=PROBE)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        for ns in (s, r):
            subprocess.run([IP, "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot set up network namespaces with nftables here: {exc}")
    try:
        yield Lab(s, r, bytes.fromhex(info["address"].replace(":", "")), str(tmp_path_factory.mktemp("marks")))
    finally:
        for ns in (s, r):
            subprocess.run([IP, "netns", "del", ns], capture_output=True)


# ---------------------------------------------------------------------------------------------
# random rules, rendered as nft, iptables and compact text

@dataclass
class Rule:
    family: int                 # 0 (both; no addresses), 4, 6
    chain: int                  # index into CHAINS
    proto: str = ""             # tcp/udp/sctp/icmp/icmpv6/esp
    proto_neg: bool = False
    src: list = field(default_factory=list)     # address texts (a, a/len, or one a-b range)
    src_neg: bool = False
    dst: list = field(default_factory=list)
    dst_neg: bool = False
    sport: list = field(default_factory=list)   # (lo, hi)
    sport_neg: bool = False
    dport: list = field(default_factory=list)
    dport_neg: bool = False
    mark: tuple = ()                            # (value, mask)
    mark_neg: bool = False
    action: tuple = ("set", 1, None)            # set V[/M] | xset V M | or V | and V | xor V | accept


def _addrs(rng, pool, fam):
    if rng.random() < 0.2:
        a, b = sorted(rng.sample(pool, 2), key=ipaddress.ip_address)
        return [f"{a}-{b}"]
    out = []
    for _ in range(rng.randint(1, 3)):
        a = rng.choice(pool)
        if rng.random() < 0.4:
            plen = rng.choice([30, 29, 31]) if fam == 4 else rng.choice([126, 125, 127])
            out.append(f"{a}/{plen}")
        else:
            out.append(a)
    return list(dict.fromkeys(out))


def random_rule(rng, compact: bool = False, iptables: bool = False) -> Rule:
    fam = rng.choice([4, 4, 6, 6, 0])
    r = Rule(family=fam, chain=1 if compact else rng.randrange(len(CHAINS)))
    if rng.random() < 0.7:
        r.proto = rng.choice(["tcp", "udp", "sctp", "esp"] + ([] if fam == 0 else ["icmp" if fam == 4 else "icmpv6"]))
        ported = r.proto in ("tcp", "udp", "sctp")
        r.proto_neg = not ported and rng.random() < 0.3
        if ported:
            for name in ("sport", "dport"):
                if rng.random() < 0.5:
                    ps = []
                    for _ in range(rng.randint(1, 3)):
                        a, b = rng.choice(PORTS), rng.choice(PORTS)
                        ps.append((min(a, b), max(a, b)) if rng.random() < 0.3 else (a, a))
                    setattr(r, name, list(dict.fromkeys(ps)))
                    setattr(r, name + "_neg", rng.random() < 0.3)
    if fam:
        for name, pool in (("src", SRC4 if fam == 4 else SRC6), ("dst", DST4 if fam == 4 else DST6)):
            if rng.random() < 0.5:
                setattr(r, name, _addrs(rng, pool, fam))
                setattr(r, name + "_neg", len(getattr(r, name)) == 1 and rng.random() < 0.3)
    if len(r.sport) == 1 and len(r.dport) == 1 and r.sport[0][0] == r.sport[0][1] and r.dport[0][0] == r.dport[0][1]:
        # nft 1.0.6 merges two single-port matches into one comparison: with '!=' that changes
        # their meaning (see marks.py's note on such rules), so these rules compare equal ports only
        r.sport_neg = r.dport_neg = False
    if iptables and (len(r.src) > 1 or len(r.dst) > 1):
        r.src_neg = r.dst_neg = False       # iptables: "! not allowed with multiple ... addresses"
    if rng.random() < 0.25:
        m = rng.choice([0xFFFFFFFF, 0xF, 0x3])
        r.mark = (rng.randrange(16) & m, m)
        r.mark_neg = rng.random() < 0.3
    v = rng.randrange(1, 16)
    if compact:
        r.action = ("set", v, rng.choice([None, 0xF0, 0x3]))
    else:
        r.action = rng.choice([("set", v, None), ("set", v, rng.choice([0xF0, 0x3])), ("xset", v, 0x33),
                               ("or", v), ("and", v | 0x10), ("xor", v), ("accept",)])
    return r


def _nft_set(items):
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def nft_rule(r: Rule) -> str:
    out = []
    fam_word = {4: "ip", 6: "ip6"}.get(r.family)
    if r.family and not (r.src or r.dst):
        out.append(f"meta nfproto ipv{r.family}")
    for name, key in (("src", "saddr"), ("dst", "daddr")):
        vals = getattr(r, name)
        if vals:
            out.append(f"{fam_word} {key} {'!= ' if getattr(r, name + '_neg') else ''}{_nft_set(vals)}")
    ported = r.sport or r.dport
    if r.proto and not ported:
        out.append(f"meta l4proto {'!= ' if r.proto_neg else ''}{r.proto}")
    for name in ("sport", "dport"):
        ps = getattr(r, name)
        if ps:
            vals = [str(a) if a == b else f"{a}-{b}" for a, b in ps]
            out.append(f"{r.proto} {name} {'!= ' if getattr(r, name + '_neg') else ''}{_nft_set(vals)}")
    if r.mark:
        v, m = r.mark
        op = "!=" if r.mark_neg else "=="
        out.append(f"meta mark {op} {v:#x}" if m == 0xFFFFFFFF else f"meta mark and {m:#x} {op} {v:#x}")
    a = r.action
    if a[0] == "set":
        out.append(f"meta mark set {a[1]:#x}" if a[2] is None
                   else f"meta mark set mark and {~(a[1] | a[2]) & 0xFFFFFFFF:#x} xor {a[1]:#x}")
    elif a[0] == "xset":
        out.append(f"meta mark set mark and {~a[2] & 0xFFFFFFFF:#x} xor {a[1]:#x}")
    elif a[0] in ("or", "and", "xor"):
        out.append(f"meta mark set mark {a[0]} {a[1]:#x}")
    else:
        out.append("accept")
    return " ".join(out)


def nft_ruleset(rules) -> str:
    lines = ["table inet t {"]
    for k, (name, hook, prio, _, _) in enumerate(CHAINS):
        lines.append(f"    chain {name} {{")
        lines.append(f"        type filter hook {hook} priority {prio}; policy accept;")
        lines.extend("        " + nft_rule(r) for r in rules if r.chain == k)
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def iptables_commands(rules) -> list:
    """[argv] for iptables/ip6tables (a family-0 rule goes to both)."""
    out = []
    for r in rules:
        for fam in ((4, 6) if r.family == 0 else (r.family,)):
            _, _, _, table, chain = CHAINS[r.chain]
            argv = [IPTABLES if fam == 4 else IP6TABLES, "-t", table, "-A", chain]
            if r.proto:
                argv += (["!"] if r.proto_neg else []) + ["-p", r.proto]
            for name, opt, rng_opt in (("src", "-s", "--src-range"), ("dst", "-d", "--dst-range")):
                vals = getattr(r, name)
                neg = ["!"] if getattr(r, name + "_neg") else []
                if vals and "-" in vals[0]:
                    argv += ["-m", "iprange"] + neg + [rng_opt, vals[0]]
                elif vals:
                    argv += neg + [opt, ",".join(vals)]
            # single ports first: after -m multiport, getopt takes --dport for multiport's --dports;
            # one multiport match per port list (a match takes --sports or --dports, not both)
            for single in (True, False):
                for name in ("sport", "dport"):
                    ps = getattr(r, name)
                    neg = ["!"] if getattr(r, name + "_neg") else []
                    text = [str(a) if a == b else f"{a}:{b}" for a, b in ps]
                    if len(ps) == 1 and single:
                        argv += neg + [f"--{name}", text[0]]
                    elif len(ps) > 1 and not single:
                        argv += ["-m", "multiport"] + neg + [f"--{name}s", ",".join(text)]
            if r.mark:
                argv += ["-m", "mark"] + (["!"] if r.mark_neg else []) + ["--mark", f"{r.mark[0]:#x}/{r.mark[1]:#x}"]
            a = r.action
            if a[0] == "set":
                argv += ["-j", "MARK", "--set-mark", f"{a[1]:#x}" if a[2] is None else f"{a[1]:#x}/{a[2]:#x}"]
            elif a[0] == "xset":
                argv += ["-j", "MARK", "--set-xmark", f"{a[1]:#x}/{a[2]:#x}"]
            elif a[0] in ("or", "and", "xor"):
                argv += ["-j", "MARK", f"--{a[0]}-mark", f"{a[1]:#x}"]
            else:
                argv += ["-j", "ACCEPT"]
            out.append(argv)
    return out


def compact_rule(r: Rule) -> str:
    out = [f"ip{r.family}"] if r.family else []
    ported = r.sport or r.dport
    if r.proto:
        out.append(r.proto if ported else f"proto {'!' if r.proto_neg else ''}{r.proto}")
    for name in ("src", "dst"):
        if getattr(r, name):
            out.append(f"{name} {'!' if getattr(r, name + '_neg') else ''}{','.join(getattr(r, name))}")
    for name in ("sport", "dport"):
        ps = getattr(r, name)
        if ps:
            out.append(f"{name} {'!' if getattr(r, name + '_neg') else ''}"
                       + ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ps))
    if r.mark:
        out.append(f"mark {'!' if r.mark_neg else ''}{r.mark[0]:#x}/{r.mark[1]:#x}")
    v, m = r.action[1], r.action[2]
    out.append("->")
    out.append(f"{v:#x}" if m is None else f"{v:#x}/{m:#x}")
    return " ".join(out)


def random_frames(rng, n: int, mac: bytes) -> tuple:
    """(frames, indexes of IPv4 fragments: those never reach input, IPv4 reassembles first,
    indexes of non-first fragments)."""
    frames, v4frags, later = [], set(), set()
    for i in range(n):
        v6 = rng.random() < 0.5
        src = rng.choice(SRC6 if v6 else SRC4)
        dst = rng.choice(DST6 if v6 else DST4)
        proto = rng.choice([TCP, TCP, UDP, UDP, SCTP, ICMP6 if v6 else ICMP, ESP])
        frag = rng.choice([""] * 8 + ["first", "later"])
        if frag and not v6:
            v4frags.add(i)
        if frag == "later":
            later.add(i)
        frames.append(frame(src, dst, proto, rng.choice(PORTS), rng.choice(PORTS), ident=i + 1, frag=frag,
                            mac=mac))
    return frames, v4frags, later


def _check(lab, rules_ir, frames, v4frags, skip=()):
    """Mismatches (packet, kernel's mark, classifier's) at both probes, packets in ``skip`` left out."""
    pre, inp = lab.observe(frames, v4frags)
    assert all(m is not None for m in pre), "packets lost before the prerouting probe"
    assert all(inp[i] is not None for i in range(len(frames)) if i not in v4frags), "packets lost before input"
    b = batch_of(frames)
    got_all = Classifier(rules_ir).classify(b)
    got_pre = Classifier([r for r in rules_ir if r.hook == "prerouting"]).classify(b)
    bad = [(i, pre[i], got_pre[i]) for i in range(len(frames)) if pre[i] != got_pre[i] and i not in skip]
    bad += [(i, inp[i], got_all[i]) for i in range(len(frames))
            if inp[i] is not None and inp[i] != got_all[i] and i not in skip]
    return bad, got_all


SEEDS = [11, 22, 33, 44, 55]


@pytest.mark.parametrize("seed", SEEDS)
def test_nft_rules_mark_like_the_kernel(lab, seed):
    rng = random.Random(seed)
    rules = [random_rule(rng) for _ in range(14)]
    text = nft_ruleset(rules)
    lab.load(text)
    frames, v4frags, later = random_frames(rng, 160, lab.mac)
    bad, marks = _check(lab, parse_marks(text, "ruleset.nft"), frames, v4frags, skip=later)
    assert not bad, f"(packet, kernel, classifier): {bad[:10]}\n{text}"
    assert any(marks), "no packet was marked: the rule set does not exercise anything"
    # the kernel's own listing of the ruleset reads back to the same marks
    listed = _run([NFT, "list", "table", "inet", "t"], ns=lab.receiver).stdout
    assert Classifier(parse_marks(listed, "nft list")).classify(batch_of(frames)) == marks


@pytest.mark.skipif(not IPTABLES or not IP6TABLES, reason="iptables not installed (Debian package iptables)")
@pytest.mark.parametrize("seed", SEEDS)
def test_iptables_rules_mark_like_the_kernel(lab, seed):
    rng = random.Random(seed * 7 + 1)
    rules = [random_rule(rng, iptables=True) for _ in range(12)]
    cmds = iptables_commands(rules)
    lab.load()
    lab.iptables(cmds)
    text = "\n".join(" ".join(["iptables" if a[0] == IPTABLES else "ip6tables"] + [_q(x) for x in a[1:]])
                     for a in cmds) + "\n"
    frames, v4frags, later = random_frames(rng, 160, lab.mac)
    bad, marks = _check(lab, parse_marks(text, "rules.sh"), frames, v4frags, skip=later)
    assert not bad, f"(packet, kernel, classifier): {bad[:10]}\n{text}"
    assert any(marks)
    saved = [_run([shutil.which(tool) or tool], ns=lab.receiver).stdout for tool in ("iptables-save", "ip6tables-save")]
    from_save = []
    for k, out in enumerate(saved):
        from_save = parse_marks(out, f"save{k}", base=from_save)
    assert Classifier(from_save).classify(batch_of(frames)) == marks


@pytest.mark.parametrize("seed", SEEDS)
def test_compact_rules_mark_like_the_kernel(lab, seed):
    rng = random.Random(seed * 13 + 5)
    rules = [random_rule(rng, compact=True) for _ in range(10)]
    lab.load(nft_ruleset(rules))
    text = "\n".join(compact_rule(r) for r in rules) + "\n"
    frames, v4frags, later = random_frames(rng, 120, lab.mac)
    bad, marks = _check(lab, parse_marks(text, "compact"), frames, v4frags, skip=later)
    assert not bad, f"(packet, kernel, classifier): {bad[:10]}\n{text}\n{nft_ruleset(rules)}"
    assert any(marks)


def _q(s: str) -> str:
    return s if s and all(c.isalnum() or c in "-_.:/,!" for c in s) else "'" + s + "'"
