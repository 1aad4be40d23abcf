"""Firewall marks for the model: a small reader of nftables rulesets of the form the oracle
fixtures load (``--nft``), applied to model Packets the way the kernel's prerouting hook would
mark them before IPVS sees them.

Understood: ``table ip|ip6|inet NAME { chain NAME { type filter hook prerouting priority N;
RULE... } }`` with rules made of matches ``ip|ip6 saddr|daddr VALUE``, ``tcp|udp|sctp|th
sport|dport VALUE``, ``meta l4proto|ip protocol|ip6 nexthdr PROTO`` and the statement ``meta
mark set N`` (VALUE: one address/prefix/port/range or a ``{ a, b, ... }`` set). Anything else is
an error naming the token, never a silently unmarked packet.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}


class NftError(ValueError):
    """A ruleset the reader does not understand."""


@dataclass
class Rule:
    matches: list = field(default_factory=list)     # [(kind, key, values)]
    mark: int | None = None


def _tokens(text: str) -> list[str]:
    """Words, braces, commas, semicolons and line ends ("\\n" ends a statement like ";")."""
    text = re.sub(r"#[^\n]*", "", text)
    return re.findall(r"\n|[{};,]|[^\s{};,]+", text)


def _values(toks: list[str], i: int) -> tuple[list[str], int]:
    if toks[i] == "{":
        vals = []
        i += 1
        while toks[i] != "}":
            if toks[i] != ",":
                vals.append(toks[i])
            i += 1
        return vals, i + 1
    return [toks[i]], i + 1


def _addr_match(values: list[str], addr: str) -> bool:
    if not addr:
        return False
    a = ipaddress.ip_address(addr)
    return any(a in ipaddress.ip_network(v, strict=False) for v in values)


def _port_match(values: list[str], port: int) -> bool:
    for v in values:
        lo, _, hi = v.partition("-")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


class Ruleset:
    """The prerouting rules of an nftables ruleset; :meth:`mark` gives a packet's fwmark."""

    def __init__(self, text: str):
        self.rules: list[Rule] = []
        toks = _tokens(text)
        i, n = 0, len(toks)

        def skip_newlines(i):
            while i < n and toks[i] == "\n":
                i += 1
            return i

        i = skip_newlines(i)
        while i < n:
            if toks[i:i + 1] != ["table"] or i + 3 >= n or toks[i + 3] != "{":
                raise NftError(f"expected 'table FAMILY NAME {{', got {' '.join(toks[i:i + 4])!r}")
            if toks[i + 1] not in ("ip", "ip6", "inet"):
                raise NftError(f"table family {toks[i + 1]!r} is not understood")
            i = skip_newlines(i + 4)
            while toks[i] != "}":
                if toks[i] != "chain" or toks[i + 2] != "{":
                    raise NftError(f"expected 'chain NAME {{', got {' '.join(toks[i:i + 3])!r}")
                i = self._chain(toks, i + 3)
                i = skip_newlines(i)
            i = skip_newlines(i + 1)

    def _chain(self, toks: list[str], i: int) -> int:
        """Statements up to the chain's closing brace; returns the index after it."""
        hook = None
        stmt: list[str] = []
        depth = 0
        while True:
            if i >= len(toks):
                raise NftError("chain not closed")
            t = toks[i]
            i += 1
            if t == "{":
                depth += 1
            elif t == "}" and depth:
                depth -= 1
            elif t in (";", "\n", "}"):
                if stmt and stmt[0] == "type":
                    hook = stmt[stmt.index("hook") + 1] if "hook" in stmt else None
                elif stmt and stmt[0] != "policy" and hook == "prerouting":
                    self.rules.append(self._rule(stmt))
                stmt = []
                if t == "}":
                    return i
                continue
            stmt.append(t)

    @staticmethod
    def _rule(stmt: list[str]) -> Rule:
        rule = Rule()
        i = 0
        while i < len(stmt):
            t = stmt[i]
            if t in ("ip", "ip6") and i + 1 < len(stmt) and stmt[i + 1] in ("saddr", "daddr"):
                which = stmt[i + 1]
                vals, i = _values(stmt, i + 2)
                rule.matches.append(("addr", f"{t} {which}", vals))
            elif t in ("tcp", "udp", "sctp", "th") and i + 1 < len(stmt) and stmt[i + 1] in ("sport", "dport"):
                key = stmt[i + 1]
                vals, i = _values(stmt, i + 2)
                rule.matches.append(("port", (t, key), vals))
            elif (t, stmt[i + 1] if i + 1 < len(stmt) else "") in (("meta", "l4proto"), ("ip", "protocol"),
                                                                   ("ip6", "nexthdr")):
                vals, i = _values(stmt, i + 2)
                rule.matches.append(("proto", t, vals))
            elif stmt[i:i + 3] == ["meta", "mark", "set"] and i + 3 < len(stmt):
                rule.mark = int(stmt[i + 3], 0)
                i += 4
            else:
                raise NftError(f"nft token {t!r} in rule {' '.join(stmt)!r} is not understood")
        if rule.mark is None:
            raise NftError(f"rule {' '.join(stmt)!r} sets no mark")
        return rule

    @staticmethod
    def _matches(rule: Rule, pkt) -> bool:
        for kind, key, vals in rule.matches:
            if kind == "addr":
                fam, which = key.split()
                if (fam == "ip") != (pkt.af == 4):
                    return False
                if not _addr_match(vals, pkt.src if which == "saddr" else pkt.dst):
                    return False
            elif kind == "port":
                proto, which = key
                if proto != "th" and pkt.proto != PROTOS[proto]:
                    return False
                if pkt.proto not in PROTOS.values():
                    return False
                if not _port_match(vals, pkt.sport if which == "sport" else pkt.dport):
                    return False
            else:
                if key == "ip" and pkt.af != 4 or key == "ip6" and pkt.af != 6:
                    return False
                if pkt.proto not in {PROTOS.get(v, int(v) if v.isdigit() else -1) for v in vals}:
                    return False
        return True

    def mark(self, pkt) -> int:
        """The mark the prerouting chain leaves on the packet (0 = none; the last set wins)."""
        mark = 0
        for rule in self.rules:
            if self._matches(rule, pkt):
                mark = rule.mark
        return mark

    def apply(self, packets) -> None:
        for p in packets:
            p.fwmark = self.mark(p)
