"""Parsing of firewall-mark rules (ipvsflow.marks): iptables/ip6tables commands and iptables-save
output, nftables rulesets and commands, the compact form, their errors, and how rules files and
Config carry them.

Expected values are written from the netfilter sources' semantics (libxt_MARK's mark_tg_parse and
mark_tg: ``mark = (mark & ~mask) ^ value``; nft's bitwise ``(mark & and) ^ xor``), and the
iptables -> nft pairs are iptables-translate's own output (netfilter's libxt_MARK.txlate).
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import replace

import pytest

from ipvsflow.config import Config, ConfigError, load_rules, parse_rules
from ipvsflow.marks import MARK_MAX, MarkReader, MarkRule, load_marks, mark_notes, parse_compact, parse_mark, \
    parse_marks

A = ipaddress.ip_address


def one(text: str, **kw) -> MarkRule:
    rules = parse_mark(text, **kw)
    assert len(rules) == 1, rules
    return rules[0]


def sem(r: MarkRule) -> MarkRule:
    """The rule without its chain identity (to compare syntaxes)."""
    return replace(r, chain="", hook="prerouting", priority=0)


# ---------------------------------------------------------------------------------------------
# iptables

def test_lvs_howto_rule():
    r = one("iptables -t mangle -A PREROUTING -p tcp -d 10.0.0.1/32 --dport 80 -j MARK --set-mark 1")
    assert (r.family, r.protos, r.port_protos) == (4, (), (6,))
    assert r.dst == ((A("10.0.0.1"), A("10.0.0.1")),) and not r.dst_neg
    assert r.dport == ((80, 80),) and r.sport == () and r.src == ()
    assert (r.mark_and, r.mark_xor, r.stop) == (0, 1, False)
    assert (r.chain, r.hook, r.priority) == ("iptables mangle PREROUTING", "prerouting", -150)


@pytest.mark.parametrize("target, and_mask, xor", [
    # libxt_MARK mark_tg_parse: set-xmark (v, m); set-mark (v, v|m); and (0, ~v); or (v, v); xor (v, 0)
    ("--set-mark 1", 0, 1),
    ("--set-mark 0x40/0x32", ~0x72 & MARK_MAX, 0x40),
    ("--set-xmark 0x40/0x32", ~0x32 & MARK_MAX, 0x40),
    ("--set-xmark 0x10", 0, 0x10),
    ("--and-mark 0x40", 0x40, 0),
    ("--or-mark 0x40", ~0x40 & MARK_MAX, 0x40),
    ("--xor-mark 0x40", MARK_MAX, 0x40),
    ("--set-mark 010", 0, 8),              # strtoul base 0: octal
    ("--set-mark 4294967295", 0, MARK_MAX),
])
def test_mark_targets(target, and_mask, xor):
    r = one(f"iptables -t mangle -A PREROUTING -j MARK {target}")
    assert (r.mark_and, r.mark_xor) == (and_mask, xor)


# iptables-translate 1.8.9 (the pairs in netfilter's extensions/libxt_MARK.txlate)
TXLATE = [
    ("-j MARK --set-mark 0", "counter meta mark set 0x0"),
    ("-j MARK --set-mark 64", "counter meta mark set 0x40"),
    ("-j MARK --set-xmark 0x40/0x32", "counter meta mark set mark and 0xffffffcd xor 0x40"),
    ("-j MARK --set-mark 0x40/0x32", "counter meta mark set mark and 0xffffff8d xor 0x40"),
    ("-j MARK --or-mark 64", "counter meta mark set mark or 0x40"),
    ("-j MARK --and-mark 64", "counter meta mark set mark and 0x40"),
    ("-j MARK --xor-mark 64", "counter meta mark set mark xor 0x40"),
    ("-p tcp -m multiport ! --dports 80,1000:2000 -m mark --mark 0x3/0xf -j MARK --set-mark 1",
     "ip protocol tcp tcp dport != { 80, 1000-2000 } mark and 0xf == 0x3 counter meta mark set 0x1"),
    ("-s 10.0.0.0/255.255.0.0 -j ACCEPT", "ip saddr 10.0.0.0/16 counter accept"),
]


@pytest.mark.parametrize("ipt, nft", TXLATE)
def test_iptables_and_its_nft_translation_agree(ipt, nft):
    a = one(f"iptables -t mangle -A PREROUTING {ipt}")
    b = one(f"nft 'add rule ip mangle PREROUTING {nft}'")
    assert sem(a) == sem(b)


@pytest.mark.skipif(shutil.which("iptables-translate") is None,
                    reason="iptables-translate not installed (Debian package iptables)")
@pytest.mark.parametrize("ipt", [
    "-p udp ! -s 192.0.2.0/24 --dport 1000:2000 -j MARK --set-xmark 0x10/0xf0",
    "-p sctp -d 10.0.0.1 --sport 5 -j MARK --or-mark 0x8",
    "-p tcp -m multiport --sports 1,2,3 -j MARK --and-mark 0xff",
    "! -p tcp -m mark ! --mark 0x1 -j MARK --set-mark 2",
    "-m iprange --dst-range 10.0.0.1-10.0.0.9 -j RETURN",
])
def test_against_iptables_translate(ipt):
    out = subprocess.run(["iptables-translate", "-t", "mangle", "-A", "PREROUTING", *ipt.split()],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert sem(one(f"iptables -t mangle -A PREROUTING {ipt}")) == sem(one(out.stdout.strip()))


def test_port_forms_and_multiport():
    r = one("iptables -t mangle -A PREROUTING -p udp --sport :1024 -m multiport ! --dports 53,1000:2000 "
            "-j MARK --set-mark 2")
    assert r.sport == ((0, 1024),) and not r.sport_neg
    assert r.dport == ((53, 53), (1000, 2000)) and r.dport_neg
    assert one("iptables -t mangle -A PREROUTING -p tcp --dport 1024: -j MARK --set-mark 1").dport == ((1024, 65535),)
    assert one("iptables -t mangle -A PREROUTING -p tcp --destination-port=8080 -j MARK --set-mark 1").dport == ((8080, 8080),)


def test_address_lists_expand_into_rules_like_iptables():
    rules = parse_mark("iptables -t mangle -A PREROUTING -s 10.0.0.1,10.0.0.2 -d 192.0.2.0/255.255.255.0 "
                       "-j MARK --set-mark 3")
    assert [(r.src, r.dst) for r in rules] == [
        (((A("10.0.0.1"), A("10.0.0.1")),), ((A("192.0.2.0"), A("192.0.2.255")),)),
        (((A("10.0.0.2"), A("10.0.0.2")),), ((A("192.0.2.0"), A("192.0.2.255")),)),
    ]


def test_negations_and_ip6tables():
    r = one("ip6tables -t mangle -A PREROUTING ! -p udp ! -s 2001:db8::/32 ! -d 2001:db8::1 -j MARK --set-mark 4")
    assert (r.family, r.protos, r.protos_neg, r.src_neg, r.dst_neg) == (6, (17,), True, True, True)
    assert r.src == ((A("2001:db8::"), A("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")),)
    r = one("iptables -t mangle -A PREROUTING -m iprange ! --src-range 10.0.0.5-10.0.0.9 -j MARK --set-mark 1")
    assert r.src == ((A("10.0.0.5"), A("10.0.0.9")),) and r.src_neg


def test_interface_is_ignored_with_a_note():
    notes = []
    r = one("iptables -t mangle -A PREROUTING -i eth0 -p tcp -j MARK --set-mark 1 -m comment --comment 'web x'",
            notes=notes)
    assert r.notes and "-i eth0 ignored" in r.notes[0]
    assert mark_notes([r]) == ["--mark: -i eth0 ignored (a capture does not say which interface a packet came in on)"]


def test_insert_flush_and_chains():
    rules = parse_marks("""
iptables -t mangle -A PREROUTING -p tcp -j MARK --set-mark 1
iptables -t mangle -A PREROUTING -p tcp -j MARK --set-mark 2
iptables -t mangle -I PREROUTING 2 -p tcp -j MARK --set-mark 3
iptables -t mangle -I PREROUTING -p tcp -j MARK --set-mark 4
iptables -t mangle -A INPUT -p tcp -j ACCEPT
iptables -t filter -A INPUT -p tcp -j MARK --set-mark 5
iptables -t mangle -A OUTPUT -j MARK --set-mark 9
""")
    assert [r.mark_xor for r in rules if r.sets_mark] == [4, 1, 3, 2, 5]
    acc = [r for r in rules if r.stop]
    assert len(acc) == 1 and (acc[0].hook, acc[0].priority, acc[0].chain) == ("input", -150, "iptables mangle INPUT")
    assert rules[-1].priority == 0 and rules[-1].chain == "iptables filter INPUT"
    flushed = parse_marks("iptables -t mangle -F PREROUTING\n", base=rules)
    assert [r.mark_xor for r in flushed] == [0, 5]
    assert parse_marks("iptables -t mangle -F\n", base=rules) == [rules[-1]]


def test_iptables_save_output():
    text = """# Generated by ip6tables-save v1.8.9 (nf_tables) on Thu Nov 26 10:25:50 2026
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
[5:300] -A PREROUTING -d 2001:db8::10/128 -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x40/0x72
-A OUTPUT -j MARK --set-xmark 0x3/0xffffffff
COMMIT
# Completed on Thu Nov 26 10:25:50 2026
"""
    notes = []
    rules = parse_marks(text, "save.txt", notes=notes)
    assert len(rules) == 1
    r = rules[0]
    assert (r.family, r.chain, r.dport, r.mark_and, r.mark_xor) == (6, "ip6tables mangle PREROUTING", ((8080, 8080),),
                                                                    ~0x72 & MARK_MAX, 0x40)
    assert notes and "OUTPUT" in notes[0]
    # IPv4 unless the header says ip6tables-save
    with pytest.raises(ConfigError, match=r"v4\.txt:6: .*not IPv4"):
        parse_marks(text.replace("ip6tables-save", "iptables-save"), "v4.txt")


@pytest.mark.parametrize("line, message", [
    ("iptables -t mangle -A PREROUTING -p tcp -j DROP", "filtering is not modelled"),
    ("iptables -t mangle -A PREROUTING -p tcp -j REJECT", "filtering is not modelled"),
    ("iptables -t nat -A PREROUTING -p tcp -j MARK --set-mark 1", "nat chains"),
    ("iptables -t mangle -A PREROUTING --dport 80 -j MARK --set-mark 1", "needs -p tcp"),
    ("iptables -t mangle -A PREROUTING ! -p tcp --dport 80 -j MARK --set-mark 1", "needs -p tcp"),
    ("iptables -t mangle -A PREROUTING -p icmp --dport 80 -j MARK --set-mark 1", "needs -p tcp"),
    ("iptables -t mangle -A PREROUTING -p tcp -d 2001:db8::1 -j MARK --set-mark 1", "not IPv4"),
    ("ip6tables -t mangle -A PREROUTING -d 10.0.0.1 -j MARK --set-mark 1", "not IPv6"),
    ("iptables -t mangle -A PREROUTING -d web.example -j MARK --set-mark 1", "numeric addresses only"),
    ("iptables -t mangle -A PREROUTING -j MARK", "needs one of --set-mark"),
    ("iptables -t mangle -A PREROUTING -j MARK --set-mark 0x100000000", "out of range"),
    ("iptables -t mangle -A PREROUTING -j MARK --set-mark 1x", "not a number"),
    ("iptables -t mangle -A PREROUTING -m conntrack --ctstate NEW -j MARK --set-mark 1", "'conntrack' is not supported"),
    ("iptables -t mangle -A PREROUTING -j WEB", "target 'WEB' is not supported"),
    ("iptables -t mangle -A WEB -j MARK --set-mark 1", "user-defined chains"),
    ("iptables -t mangle -N WEB", "user-defined chains"),
    ("iptables -t mangle -A PREROUTING ! -s 10.0.0.1,10.0.0.2 -j MARK --set-mark 1", "! not allowed"),
    ("iptables -t mangle -A PREROUTING -p tcp --dport 90:80 -j MARK --set-mark 1", "first port above the last"),
    ("iptables -t mangle -A PREROUTING -p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16 -j MARK --set-mark 1",
     "too many ports"),
    ("iptables -t mangle -A PREROUTING -p tcp --dports 80 -j MARK --set-mark 1", "needs -m multiport"),
    ("iptables -t mangle -A PREROUTING -p tcp -m multiport --sports 1,2 --dports 3,4 -j MARK --set-mark 1",
     "not both"),
    ("iptables -t mangle -A PREROUTING -s 10.0.0.0/255.0.255.0 -j MARK --set-mark 1", "non-contiguous"),
    ("iptables -t mangle -A PREROUTING -p tcp --dport 80 --dport 81 -j MARK --set-mark 1", "more than one"),
    ("iptables -t mangle -A PREROUTING -x", "unknown or unsupported option '-x'"),
    ("iptables -t mangle -P PREROUTING DROP", "policy DROP is not modelled"),
    ("iptables -t mangle -I PREROUTING 3 -j MARK --set-mark 1", "index of insertion too big"),
    ("iptables -t mangle -A PREROUTING -o eth0 -j MARK --set-mark 1", "-o is not valid"),
    ("iptables -t mangle -A PREROUTING -j MARK --set-mark 1 !", "'!' at the end"),
    ("iptables -t mangle -A PREROUTING -p tcp ! -j MARK --set-mark 1", "cannot negate"),
])
def test_iptables_errors(line, message):
    with pytest.raises(ConfigError) as exc:
        parse_marks(f"# marks\n{line}\n", "m.rules")
    assert message in str(exc.value)
    assert str(exc.value).startswith("m.rules:2: ")


# ---------------------------------------------------------------------------------------------
# nftables

def test_oracle_fixture_nft_file():
    rules = load_marks("tests/fixtures/oracle/fwmark_persistent_dr/nft")
    assert len(rules) == 1
    r = rules[0]
    assert (r.family, r.protos, r.port_protos, r.dport) == (4, (), (6,), ((80, 80), (443, 443)))
    assert r.dst == ((A("203.0.113.10"), A("203.0.113.10")),)
    assert (r.mark_and, r.mark_xor) == (0, 1)
    assert (r.chain, r.hook, r.priority) == ("nft ip fwmarks prerouting", "prerouting", -150)


def test_nft_list_ruleset_output():
    # what `nft list ruleset` prints for the fixture's ruleset (nftables 1.0.6)
    listed = """table ip fwmarks {
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tip daddr 203.0.113.10 tcp dport { 80, 443 } meta mark set 0x00000001
\t}
}
"""
    assert parse_marks(listed) == load_marks("tests/fixtures/oracle/fwmark_rr_dr/nft")


def test_nft_values_sets_ranges_and_comparisons():
    rules = parse_marks("""
table inet t {
    set vips { type ipv4_addr; flags interval; elements = { 10.0.0.1, 10.1.0.0/16, 10.2.0.1-10.2.0.9 } }
    chain p {
        type filter hook prerouting priority mangle + 5; policy accept;
        ip daddr @vips tcp dport { http, 443, 8000-8080 } counter packets 3 bytes 180 meta mark set 7 comment "web"
        ip6 saddr != { 2001:db8::/64, fd00::1 } udp sport < 1024 mark set 0x8
        meta l4proto { tcp, udp } meta mark 0x8 accept
    }
}
""")
    web, v6, acc = rules
    assert web.family == 4 and web.priority == -145
    assert web.dst == ((A("10.0.0.1"), A("10.0.0.1")), (A("10.1.0.0"), A("10.1.255.255")),
                       (A("10.2.0.1"), A("10.2.0.9")))
    assert web.dport == ((80, 80), (443, 443), (8000, 8080)) and web.port_protos == (6,)
    assert v6.family == 6 and v6.src_neg and v6.sport == ((0, 1023),) and v6.port_protos == (17,)
    assert acc.family == 0 and acc.protos == (6, 17) and acc.stop and not acc.sets_mark
    assert acc.mark_match == (8, MARK_MAX)


def test_nft_commands_insert_flush_and_undeclared_chains():
    notes = []
    rules = parse_marks("""
flush ruleset
add table ip t
add chain ip t p { type filter hook prerouting priority -150 ; }
add rule ip t p tcp dport 80 meta mark set 1
insert rule ip t p tcp dport 81 meta mark set 2
nft add rule ip t q udp dport 53 meta mark set 3
nft add rule t p tcp dport 82 meta mark set 4
""", "n.nft", notes=notes)
    assert [r.mark_xor for r in rules] == [2, 1, 3, 4]
    assert [n for n in notes if "was not declared" in n] == [
        "n.nft:7: chain ip t q was not declared: taken as a prerouting chain at priority mangle (-150)"]
    assert [r.mark_xor for r in parse_marks("flush chain ip t p\n", base=rules)] == [3]
    assert parse_marks("delete table ip t\n", base=rules) == []
    # flush ruleset keeps rules that came in iptables or compact syntax
    mixed = parse_mark("tcp dport 1 -> 1", base=rules)
    assert [r.mark_xor for r in parse_marks("flush ruleset\n", base=mixed)] == [1]


def test_nft_chains_that_do_not_precede_ipvs_are_ignored():
    notes = []
    rules = parse_marks("""
table inet f {
    chain out { type filter hook output priority 0; policy drop; ct state new drop; }
    chain late_in { type filter hook input priority 100; meta mark set 5; }
    chain early_in { type filter hook input priority 98; meta mark set 6; }
    chain helper { meta mark set 7; }
}
""", notes=notes)
    assert [(r.hook, r.priority, r.mark_xor) for r in rules] == [("input", 98, 6)]
    assert len(notes) == 3


def test_nft_merged_port_inequality_is_noted():
    r = one("nft add rule ip t c tcp sport != 1 tcp dport 2 meta mark set 1")
    assert r.sport_neg and not r.dport_neg and r.notes and "either port differs" in r.notes[0]
    assert not one("nft add rule ip t c tcp sport != { 1, 3 } tcp dport 2 meta mark set 1").notes
    assert not one("nft add rule ip t c tcp sport 1 tcp dport 2 meta mark set 1").notes


def test_nft_mark_expressions_fold_like_nft():
    r = one("nft add rule ip t c meta mark set mark and 0xffff0000 or 0x10 xor 0x3")
    for m in (0, 0x12345678, MARK_MAX, 0xdead0013):
        assert (m & r.mark_and) ^ r.mark_xor == (((m & 0xffff0000) | 0x10) ^ 0x3)


@pytest.mark.parametrize("text, message", [
    ("nft add rule ip t c tcp dport 80 drop", "filtering is not modelled"),
    ("nft add rule ip t c ip6 daddr ::1 meta mark set 1", "IPv6 in an IPv4 rule"),
    ("nft add rule inet t c ip daddr 10.0.0.1 ip6 saddr ::1 meta mark set 1", "conflicting address families"),
    ("nft add rule inet t c tcp dport 80 udp sport 53 meta mark set 1", "conflicting protocols"),
    ("nft add rule ip t c ct state new meta mark set 1", "conntrack"),
    ("nft add rule ip t c tcp dport 80 jump web", "jumps to other chains"),
    ("nft add rule ip t c meta l4proto udp tcp dport 80 meta mark set 1", "conflicting protocols"),
    ("nft add rule ip t c meta mark set 1 tcp dport 80", "match after a statement"),
    ("nft add rule ip t c meta mark set ct mark", "not supported"),
    ("nft add rule ip t c th dport 80 meta mark set 1", "'th'"),
    ("nft add rule ip t c ip6 nexthdr tcp meta mark set 1", "use meta l4proto"),
    ("nft add rule ip t c tcp dport 65536 meta mark set 1", "out of range"),
    ("nft add rule ip t c ip daddr @nosuch meta mark set 1", "unknown set @nosuch"),
    ("nft add rule ip t c tcp dport { } meta mark set 1", "empty set"),
    ("nft add rule ip t c tcp dport < 0 meta mark set 1", "matches nothing"),
    ("nft add rule ip t c meta mark set 0x1ffffffff", "out of range"),
    ("nft add rule ip t c tcp dport ! 80 meta mark set 1", "use '!='"),
    ("nft add rule netdev t c meta mark set 1", "only ip, ip6 and inet"),
    ("nft define X = 1", "not supported"),
    ("nft -f /etc/nftables.conf", "--marks FILE"),
    ("table ip t { chain c { type nat hook prerouting priority -100; meta mark set 1; } }", "nat chains"),
    ("table ip t { chain c { type filter hook prerouting priority -150; policy drop; } }", "policy drop"),
    ("table ip t { chain c { type filter hook prerouting priority -150;", "unterminated nft block"),
])
def test_nft_errors(text, message):
    with pytest.raises(ConfigError) as exc:
        parse_marks("\n" + text + "\n", "m.nft")
    assert message in str(exc.value)
    assert str(exc.value).startswith("m.nft:2: ")


def test_nft_error_inside_a_block_names_its_line():
    with pytest.raises(ConfigError, match=r"^m\.nft:4: verdict drop"):
        parse_marks("table ip t {\n chain c {\n  type filter hook prerouting priority 0;\n  tcp dport 1 drop\n }\n}\n", "m.nft")


# ---------------------------------------------------------------------------------------------
# compact

def test_compact_grammar():
    r = one("tcp dst 10.0.0.1 dport 80,443 -> 1")
    assert (r.family, r.protos, r.port_protos, r.dport, r.mark_and, r.mark_xor) == (
        4, (), (6,), ((80, 80), (443, 443)), 0, 1)
    assert r.dst == ((A("10.0.0.1"), A("10.0.0.1")),)
    r = one("ip6 proto tcp,udp src !2001:db8::/64,fd00::1-fd00::9 sport 1000-2000,3000:3001 dport !53 mark 3/0xf -> 0x40/0x32")
    assert (r.family, r.protos, r.port_protos, r.src_neg, r.dport_neg) == (6, (), (6, 17), True, True)
    assert r.sport == ((1000, 2000), (3000, 3001)) and r.mark_match == (3, 0xF)
    assert (r.mark_and, r.mark_xor) == (~0x72 & MARK_MAX, 0x40)          # as iptables --set-mark 0x40/0x32
    assert one("-> 5").family == 0
    assert sem(one("tcp dst 10.0.0.1 dport 80 -> 1")) == sem(
        one("iptables -t mangle -A PREROUTING -p tcp -d 10.0.0.1 --dport 80 -j MARK --set-mark 1"))


@pytest.mark.parametrize("text, message", [
    ("tcp dport 80", "missing '->'"),
    ("dport 80 -> 1", "need the protocol"),
    ("icmp dport 80 -> 1", "need the protocol"),
    ("tcp dst 10.0.0.1 -> x", "not a number"),
    ("tcp dst 999.0.0.1 -> 1", "invalid address"),
    ("tcp dst 10.0.0.1,2001:db8::1 -> 1", "IPv4 and IPv6"),
    ("ip4 dst 2001:db8::1 -> 1", "conflicting"),
    ("tcp from 10.0.0.1 -> 1", "unknown word 'from'"),
    ("tcp -> 1 2", "give the mark"),
    ("tcp dport 80 dport 81 -> 1", "more than one"),
])
def test_compact_errors(text, message):
    with pytest.raises(ConfigError) as exc:
        parse_compact(text, "--mark")
    assert message in str(exc.value) and str(exc.value).startswith("--mark: ")
    with pytest.raises(ConfigError):
        parse_mark(text)


def test_marks_file_rejects_unknown_lines():
    with pytest.raises(ConfigError, match=r"^f:3: not a mark rule"):
        parse_marks("tcp dport 1 -> 1\n\n-A -t 10.0.0.1:80 -s rr\n", "f")


# ---------------------------------------------------------------------------------------------
# rules files and Config

def test_rules_file_with_marks(tmp_path):
    p = tmp_path / "lb.rules"
    p.write_text("""# an fwmark service and what marks its packets
-A -f 1 -s rr
-a -f 1 -r 192.0.2.11:0 -g -w 1
iptables -t mangle -A PREROUTING -p tcp -d 203.0.113.10 -m multiport --dports 80,443 -j MARK --set-mark 1
table ip extra {
    chain p {
        type filter hook prerouting priority -150;
        udp dport 53 meta mark set 2   # dns
    }
}
--mark 'sctp dport 3868 -> 3'
nft add rule ip extra p udp dport 54 meta mark set 4
-A -f 2 -s wlc
""")
    cfg = load_rules(str(p))
    assert [s.fwmark for s in cfg.services] == [1, 2] and len(cfg.services[0].dests) == 1
    assert [r.mark_xor for r in cfg.marks] == [1, 2, 3, 4]
    assert [r.lineno for r in cfg.marks] == [4, 8, 11, 12]
    # a later source adds to them (and may insert before them)
    cfg2 = parse_rules("nft insert rule ip extra p meta mark set 9\n", base=cfg)
    assert [r.mark_xor for r in cfg2.marks] == [1, 9, 2, 3, 4]
    assert [r.mark_xor for r in cfg.marks] == [1, 2, 3, 4]
    cp = cfg.copy()
    cp.marks.clear()
    assert len(cfg.marks) == 4


def test_rules_file_with_iptables_save_section():
    cfg = parse_rules("""-A -f 1 -s rr
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x1/0xffffffff
COMMIT
-a -f 1 -r 192.0.2.11:0 -g
""")
    assert len(cfg.marks) == 1 and cfg.marks[0].dport == ((80, 80),)
    assert len(cfg.services[0].dests) == 1


def test_rules_file_errors_name_file_and_line():
    with pytest.raises(ConfigError, match=r"^x\.rules:2: .*not IPv4"):
        parse_rules("-A -f 1 -s rr\niptables -t mangle -A PREROUTING -d ::1 -j MARK --set-mark 1\n", source="x.rules")
    with pytest.raises(ConfigError, match=r"^x\.rules:2: unterminated nft block"):
        parse_rules("-A -f 1 -s rr\ntable ip t {\n", source="x.rules")
    with pytest.raises(ConfigError, match="COMMIT"):
        parse_rules("*mangle\n-A PREROUTING -j MARK --set-mark 1\n", source="x.rules")


def test_config_default_and_reader_api():
    assert Config().marks == []
    r = MarkReader("lines")
    assert r.feed("-A -t 10.0.0.1:80 -s rr", 1) is False          # not mark syntax
    assert r.feed("iptables -t mangle -A PREROUTING -j MARK --set-mark 1", 2) is True
    assert r.feed("table ip t {", 3) and r.feed("}", 4)
    assert [x.lineno for x in r.finish()] == [2]


def test_load_marks_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such marks file"):
        load_marks(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_marks(str(tmp_path))
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not a text file"):
        load_marks(str(tmp_path / "bin"))


def test_describe_is_readable():
    r = one("iptables -t mangle -A PREROUTING -p tcp ! -s 10.0.0.0/8 --dport 80 -j MARK --set-mark 1")
    assert r.describe() == "ip4 tcp src !10.0.0.0/8 dport 80 -> 0x1"
    assert one("nft add rule ip t c tcp dport 1-2 accept").describe() == "ip4 tcp dport 1-2 -> stop"
