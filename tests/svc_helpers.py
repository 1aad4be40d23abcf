"""Helpers for the service-table and scheduler tests (tests/test_services*.py, test_sched*.py).

Real servers are named by letter: A = 10.0.1.1, B = 10.0.1.2, ... so expectations read like the
reference's vectors ("list [C, B, A]", "picks C B A").
"""
from ipvsflow.config import parse_command
from ipvsflow.engine._svctest import SvcTable

VIP = "10.0.0.100"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def rs_addr(letter: str) -> str:
    return f"10.0.1.{LETTERS.index(letter) + 1}"


def cmd(line: str, lineno: int = 1, source: str = "<test>"):
    c = parse_command(line, lineno, source)
    assert c is not None, line
    return c


def build(sched: str, servers, fwd: str = "-g", vip: str = VIP, port: int = 80):
    """A table with one TCP service and real servers added in the given order.

    servers: "ABC" (weights 1) or [("A", 4), ("B", 3)] / [("A", 4, "-x 3 -y 1")].
    Returns (table, service id).
    """
    t = SvcTable()
    svc = t.apply(cmd(f"-A -t {vip}:{port} -s {sched}"))
    for s in servers:
        letter, weight, extra = (s, 1, "") if isinstance(s, str) else (tuple(s) + ("",))[:3]
        add(t, letter, weight, extra, fwd=fwd, vip=vip, port=port)
    return t, svc


def add(t, letter, weight=1, extra="", fwd="-g", vip=VIP, port=80):
    return t.apply(cmd(f"-a -t {vip}:{port} -r {rs_addr(letter)}:{port} {fwd} -w {weight} {extra}"))


def edit(t, letter, weight=1, extra="", fwd="-g", vip=VIP, port=80):
    return t.apply(cmd(f"-e -t {vip}:{port} -r {rs_addr(letter)}:{port} {fwd} -w {weight} {extra}"))


def delete(t, letter, vip=VIP, port=80):
    return t.apply(cmd(f"-d -t {vip}:{port} -r {rs_addr(letter)}:{port}"))


def ids(t) -> dict:
    """letter -> dest id"""
    return {LETTERS[int(d["addr"].rsplit(".", 1)[1]) - 1]: d["id"] for d in t.dests()
            if d["addr"].startswith("10.0.1.")}


def name_of(t, dest_id: int) -> str:
    if dest_id < 0:
        return "-"
    addr = t.dest(dest_id)["addr"]
    return LETTERS[int(addr.rsplit(".", 1)[1]) - 1]


def order(t, svc: int = 0) -> str:
    return "".join(name_of(t, d) for d in t.order(svc))


def picks(t, svc: int, n: int, connect: bool = False) -> str:
    """Letters of n scheduler picks ("-" for none). connect=True also binds each pick as an
    active connection (a SYN that went to SYN_RECV), so counters move as in the engine."""
    out = []
    for _ in range(n):
        if connect:
            d = t.connect(svc)[0]
        else:
            d = t.schedule(svc)
        out.append(name_of(t, d))
    return "".join(out)


def set_counts(t, letter: str, active: int, inactive: int = 0):
    t.set_counts(ids(t)[letter], active, inactive)
