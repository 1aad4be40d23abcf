"""ipvsadm listings of the director's state aggregated over its workers.

Each worker's engine holds the same services and real servers with its own counters; the
listings sum the counters and print them with ipvsadm 1.31's formats and sort order (libipvs
ipvs_cmp_services / ipvs_cmp_dests, which compare 32-bit address words as C ints).
"""
from __future__ import annotations

import functools
import ipaddress

from ipvsflow.config import SVC_F_SCHED1, SVC_F_SCHED2, SVC_F_SCHED3

HEADER = "IP Virtual Server version 1.2.1 (size=4096)"
_DEST_SUM = ("activeconns", "inactconns", "persistconns", "conns", "inpkts", "outpkts",
             "inbytes", "outbytes", "refcnt")
_SVC_SUM = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")


def merge_services(per_worker: list[list[dict]]) -> list[dict]:
    """Merge Engine.stats()["services"] lists of several workers: counters summed, everything
    else from the first worker that has the service / server."""
    out: dict = {}
    order = []
    for services in per_worker:
        for s in services:
            key = (s["name"], s["fwmark"])
            if key not in out:
                m = dict(s)
                m["dests"] = [dict(d) for d in s["dests"]]
                out[key] = m
                order.append(key)
                continue
            m = out[key]
            for k in _SVC_SUM:
                m[k] += s[k]
            have = {(d["addr"], d["port"]): d for d in m["dests"]}
            for d in s["dests"]:
                md = have.get((d["addr"], d["port"]))
                if md is None:
                    nd = dict(d)
                    m["dests"].append(nd)
                    have[(d["addr"], d["port"])] = nd
                else:
                    for k in _DEST_SUM:
                        md[k] += d[k]
    return [out[k] for k in order]


def _i32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - 0x100000000 if x & 0x80000000 else x


def _words(addr: str, af: int) -> list[int]:
    if not addr:
        return [0] * (4 if af == 6 else 1)
    raw = ipaddress.ip_address(addr).packed
    return [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw), 4)]


def _cmp_services(a: dict, b: dict) -> int:
    r = _i32(a["fwmark"] - b["fwmark"])
    if r:
        return r
    r = (10 if a["af"] == 6 else 2) - (10 if b["af"] == 6 else 2)
    if r:
        return r
    r = a["proto"] - b["proto"]
    if r:
        return r
    for w1, w2 in zip(_words(a["addr"], a["af"]), _words(b["addr"], b["af"])):
        r = _i32(w1 - w2)
        if r:
            return r
    return a["port"] - b["port"]


def _cmp_dests(a: dict, b: dict) -> int:
    for w1, w2 in zip(_words(a["addr"], a["af"]), _words(b["addr"], b["af"])):
        r = _i32(w1 - w2)
        if r:
            return r
    return a["port"] - b["port"]


def _sorted(services: list[dict]) -> list[dict]:
    out = sorted(services, key=functools.cmp_to_key(_cmp_services))
    for s in out:
        s["dests"] = sorted(s["dests"], key=functools.cmp_to_key(_cmp_dests))
    return out


def _largenum(i: int, exact: bool = False) -> str:
    if exact:
        s = str(i)
        return "%*d" % (9 if len(s) <= 8 else len(s) + 1, i)
    if i < 100000000:
        return "%9d" % i
    if i < 1000000000:
        return "%8dK" % (i // 1000)
    if i < 100000000000:
        return "%8dM" % (i // 1000000)
    if i < 100000000000000:
        return "%8dG" % (i // 1000000000)
    return "%8dT" % (i // 1000000000000)


def _svc_flags(s: dict) -> str:
    out = ""
    flags = s["flags"]
    if flags & (SVC_F_SCHED1 | SVC_F_SCHED2 | SVC_F_SCHED3):
        names = []
        if s["scheduler"] in ("sh", "mh"):
            if flags & SVC_F_SCHED1:
                names.append(f"{s['scheduler']}-fallback")
            if flags & SVC_F_SCHED2:
                names.append(f"{s['scheduler']}-port")
        else:
            if flags & SVC_F_SCHED1:
                names.append("flag-1")
            if flags & SVC_F_SCHED2:
                names.append("flag-2")
        if flags & SVC_F_SCHED3:
            names.append("flag-3")
        out += " (" + ",".join(names) + ")"
    if s["persistent"]:
        out += " persistent %u" % s["timeout"]
        if s["af"] == 4 and s["netmask"] != 32:
            mask = (0xFFFFFFFF << (32 - s["netmask"])) & 0xFFFFFFFF
            out += " mask " + str(ipaddress.IPv4Address(mask))
        elif s["af"] == 6 and s["netmask"] != 128:
            out += " mask %i" % s["netmask"]
    if s["ops"]:
        out += " ops"
    return out


def _dname(d: dict) -> str:
    return d["endpoint"] if d["af"] == 6 else d["endpoint"][:28]


def format_list(services: list[dict]) -> str:
    """``ipvsadm -L -n``."""
    lines = [HEADER, "Prot LocalAddress:Port Scheduler Flags",
             "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for s in _sorted(services):
        lines.append(f"{s['name']} {s['scheduler']}{_svc_flags(s)}")
        for d in s["dests"]:
            lines.append("  -> %-28s %-7s %-6d %-10u %-10u" % (
                _dname(d), d["fwd"], d["weight"], d["activeconns"], d["inactconns"]))
    return "\n".join(lines) + "\n"


def format_stats(services: list[dict], exact: bool = False) -> str:
    """``ipvsadm -L -n --stats`` (``exact``: --exact)."""
    lines = [HEADER, "%-33s %8s %8s %8s %8s %8s" % ("Prot LocalAddress:Port", "Conns", "InPkts",
                                                    "OutPkts", "InBytes", "OutBytes"),
             "  -> RemoteAddress:Port"]
    keys = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
    for s in _sorted(services):
        lines.append("%-33s" % s["name"] + "".join(_largenum(s[k], exact) for k in keys))
        for d in s["dests"]:
            lines.append("  -> %-28s" % _dname(d) + "".join(_largenum(d[k], exact) for k in keys))
    return "\n".join(lines) + "\n"


def format_connections(texts: list[str]) -> str:
    """``ipvsadm -L -n -c`` from the workers' own listings (rows concatenated; like the
    kernel's, the order is not meaningful)."""
    rows = []
    head = ["IPVS connection entries",
            "pro expire %-11s %-18s %-18s %s" % ("state", "source", "virtual", "destination")]
    for t in texts:
        rows.extend(t.splitlines()[2:])
    return "\n".join(head + rows) + "\n"


def format_timeouts(timeouts) -> str:
    return "Timeout (tcp tcpfin udp): %d %d %d\n" % tuple(timeouts)
