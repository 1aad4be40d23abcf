"""Service table: lookups (ip_vs_service_find), real-server edits with the kernel's side effects
(ip_vs_ctl.c), binding counters and OVERLOAD (ip_vs_conn.c, reference section 9), ConfigError
messages, and the dest array's address view for the connection table."""
import pytest

from ipvsflow.config import Command, ConfigError, RealServer, VirtualService, SVC_F_PERSISTENT
from ipvsflow.engine._svctest import SvcTable
from svc_helpers import VIP, add, build, cmd, delete, edit, ids, order, picks, rs_addr

TCP, UDP, SCTP = 6, 17, 132
CF_MASQ, CF_LOCALNODE, CF_TUNNEL, CF_DROUTE = 0, 1, 2, 3
CF_NOOUTPUT, CF_INACTIVE, CF_TEMPLATE = 0x80, 0x100, 0x1000


def table(*lines):
    t = SvcTable()
    for i, line in enumerate(lines, 1):
        t.apply(cmd(line, i))
    return t


# ---- lookups ----------------------------------------------------------------------------------

def test_lookup_by_proto_addr_port():
    t = table("-A -t 10.0.0.1:80 -s rr", "-A -u 10.0.0.1:53 -s rr", "-A --sctp-service 10.0.0.1:3868 -s rr",
              "-A -t 10.0.0.2:80 -s rr")
    assert t.find(TCP, "10.0.0.1", 80) == 0
    assert t.find(UDP, "10.0.0.1", 53) == 1
    assert t.find(SCTP, "10.0.0.1", 3868) == 2
    assert t.find(TCP, "10.0.0.2", 80) == 3
    assert t.find(UDP, "10.0.0.1", 80) == -1
    assert t.find(TCP, "10.0.0.1", 53) == -1
    assert t.find(TCP, "10.0.0.3", 80) == -1


def test_lookup_ipv6_and_mapped_ipv4_are_distinct():
    t = table("-A -t [2001:db8::10]:80 -s rr", "-A -t 10.0.0.1:80 -s rr")
    assert t.find(TCP, "2001:db8::10", 80) == 0
    assert t.find(TCP, "10.0.0.1", 80) == 1
    # the IPv4 service is stored as ::ffff:10.0.0.1 with af 4: an IPv6 packet with that
    # address is not the same service
    assert t.find(TCP, "::ffff:10.0.0.1", 80, af=6) == -1
    assert t.find(TCP, "2001:db8::11", 80) == -1


def test_fwmark_first_then_address_then_port_zero():
    t = table("-A -t 10.0.0.1:80 -s rr", "-A -f 7 -s rr", "-A -t 10.0.0.1:0 -s rr -p 60", "-A -f 7 -6 -s rr")
    assert t.find(TCP, "10.0.0.1", 80, fwmark=7) == 1           # fwmark wins
    assert t.find(TCP, "10.0.0.1", 80, fwmark=8) == 0           # unknown mark: address lookup
    assert t.find(TCP, "10.0.0.1", 80) == 0
    assert t.find(TCP, "10.0.0.1", 443) == 2                    # catch-all port 0 of that VIP
    assert t.find(UDP, "10.0.0.1", 443) == -1                   # port 0 service is TCP only
    assert t.find(TCP, "10.0.0.9", 443) == -1
    assert t.find(TCP, "2001:db8::1", 80, fwmark=7) == 3        # fwmark services are per family
    assert t.find(TCP, "10.0.0.9", 80, fwmark=7) == 1


def test_ftp_service_catches_data_ports():
    # ip_vs_service_find: TCP to port 20 or to an unprivileged port of a VIP with a port-21
    # service finds that service (possible FTP data connection)
    t = table("-A -t 10.0.0.1:21 -s rr", "-A -t 10.0.0.1:80 -s rr")
    assert t.find(TCP, "10.0.0.1", 20) == 0
    assert t.find(TCP, "10.0.0.1", 40000) == 0
    assert t.find(TCP, "10.0.0.1", 1023) == -1
    assert t.find(TCP, "10.0.0.1", 80) == 1
    assert t.find(UDP, "10.0.0.1", 40000) == -1


def test_many_services_grow_the_table_and_stay_findable():
    t = SvcTable()
    for i in range(300):
        t.apply(cmd(f"-A -t 10.1.{i // 200}.{i % 200}:{80 + i % 3} -s rr"))
    for i in range(300):
        assert t.find(TCP, f"10.1.{i // 200}.{i % 200}", 80 + i % 3) == i
    assert t.find(TCP, "10.1.0.0", 81) == -1


def test_delete_and_readd_service_keeps_its_id():
    t = table("-A -t 10.0.0.1:80 -s rr", "-A -t 10.0.0.2:80 -s rr")
    assert t.apply(cmd("-D -t 10.0.0.1:80")) == 0
    assert t.find(TCP, "10.0.0.1", 80) == -1
    assert not t.services()[0]["used"]
    assert t.apply(cmd("-A -t 10.0.0.3:80 -s rr")) == 2         # a new identity: new slot
    assert t.apply(cmd("-A -t 10.0.0.1:80 -s wlc")) == 0        # same identity: same slot
    assert t.find(TCP, "10.0.0.1", 80) == 0
    assert t.services()[0]["sched"] == "wlc"


def test_clear_removes_every_service():
    t = table("-A -t 10.0.0.1:80 -s rr", "-a -t 10.0.0.1:80 -r 10.0.1.1:80", "-A -f 3 -s rr")
    t.apply(Command(op="clear", line="-C"))
    assert t.find(TCP, "10.0.0.1", 80) == -1
    assert t.find(TCP, "10.0.0.1", 80, fwmark=3) == -1
    assert not any(s["used"] for s in t.services())
    assert not t.dest(0)["available"]


# ---- real servers -----------------------------------------------------------------------------

def test_list_is_newest_first_and_ids_are_stable():
    t, svc = build("rr", "ABCD")
    assert order(t) == "DCBA"
    assert ids(t) == {"A": 0, "B": 1, "C": 2, "D": 3}
    delete(t, "C")
    assert order(t) == "DBA"
    assert t.services()[svc]["num_dests"] == 3


def test_conn_flags_per_forwarding_method():
    t, svc = build("rr", [])
    add(t, "A", fwd="-m")
    add(t, "B", fwd="-g")
    add(t, "C", fwd="-i")
    d = {x["addr"]: x for x in t.dests()}
    assert d[rs_addr("A")]["conn_flags"] == CF_MASQ | CF_INACTIVE
    assert d[rs_addr("B")]["conn_flags"] == CF_DROUTE | CF_INACTIVE | CF_NOOUTPUT
    assert d[rs_addr("C")]["conn_flags"] == CF_TUNNEL | CF_INACTIVE | CF_NOOUTPUT
    t.apply(Command(op="add-dest", service=VirtualService(proto=TCP, addr=VIP, port=80),
                    dest=RealServer(addr=rs_addr("D"), port=80, fwd=CF_LOCALNODE)))
    assert t.dests()[3]["conn_flags"] == CF_LOCALNODE | CF_INACTIVE | CF_NOOUTPUT


def test_dr_and_tunnel_servers_take_the_service_port():
    t, svc = build("rr", [])
    t.apply(Command(op="add-dest", service=VirtualService(proto=TCP, addr=VIP, port=80),
                    dest=RealServer(addr=rs_addr("A"), port=8080, fwd=CF_DROUTE)))
    t.apply(Command(op="add-dest", service=VirtualService(proto=TCP, addr=VIP, port=80),
                    dest=RealServer(addr=rs_addr("B"), port=8080, fwd=CF_MASQ)))
    assert [(d["addr"], d["port"]) for d in t.dests()] == [(rs_addr("A"), 80), (rs_addr("B"), 8080)]


def test_bind_counts_inactive_and_carries_dest_flags():
    t, svc = build("rr", "A", fwd="-g")
    a = ids(t)["A"]
    h = t.bind(a)
    e = t.entry(h)
    assert e["dest"] == a
    assert e["flags"] == CF_DROUTE | CF_INACTIVE | CF_NOOUTPUT
    d = t.dest(a)
    assert (d["activeconns"], d["inactconns"], d["persistconns"], d["refcnt"]) == (0, 1, 0, 1)
    t.set_active(h, True)
    assert (t.dest(a)["activeconns"], t.dest(a)["inactconns"]) == (1, 0)
    t.unbind(h)                                     # not INACTIVE: activeconns--
    d = t.dest(a)
    assert (d["activeconns"], d["inactconns"], d["refcnt"]) == (0, 0, 0)
    h2 = t.bind(a)
    t.unbind(h2)                                    # INACTIVE: inactconns--
    assert (t.dest(a)["activeconns"], t.dest(a)["inactconns"]) == (0, 0)


def test_templates_count_as_persistent_and_not_towards_thresholds():
    t, svc = build("rr", [("A", 1, "-x 2")])
    a = ids(t)["A"]
    h1 = t.bind(a, template=True)
    h2 = t.bind(a, template=True)
    assert t.entry(h1)["flags"] & CF_TEMPLATE
    d = t.dest(a)
    assert (d["persistconns"], d["activeconns"], d["inactconns"], d["overload"]) == (2, 0, 0, False)
    t.unbind(h1)
    t.unbind(h2)
    assert t.dest(a)["persistconns"] == 0 and t.dest(a)["refcnt"] == 0


def test_forwarding_change_applies_to_new_entries_only():
    t, svc = build("rr", "A", fwd="-m")
    a = ids(t)["A"]
    old = t.bind(a)
    edit(t, "A", 1, fwd="-g")
    new = t.bind(a)
    assert t.entry(old)["flags"] == CF_MASQ | CF_INACTIVE
    assert t.entry(new)["flags"] == CF_DROUTE | CF_INACTIVE | CF_NOOUTPUT


# ---- OVERLOAD (section 9) ---------------------------------------------------------------------

def test_overload_upper_only_clears_below_three_quarters():
    t, svc = build("rr", [("A", 1, "-x 4")])
    a = ids(t)["A"]
    hs = [t.bind(a) for _ in range(3)]
    assert not t.dest(a)["overload"]
    hs.append(t.bind(a))                            # total 4 >= 4
    assert t.dest(a)["overload"]
    t.unbind(hs.pop())                              # 3 * 4 = 12 < 12? no
    assert t.dest(a)["overload"]
    t.unbind(hs.pop())                              # 2 * 4 = 8 < 12
    assert not t.dest(a)["overload"]


def test_overload_with_lower_threshold():
    t, svc = build("rr", [("A", 1, "-x 4 -y 2")])
    a = ids(t)["A"]
    hs = [t.bind(a) for _ in range(4)]
    assert t.dest(a)["overload"]
    t.unbind(hs.pop())
    t.unbind(hs.pop())                              # total 2, not < 2
    assert t.dest(a)["overload"]
    t.unbind(hs.pop())                              # 1 < 2
    assert not t.dest(a)["overload"]


def test_overload_active_and_inactive_both_count():
    t, svc = build("rr", [("A", 1, "-x 2")])
    a = ids(t)["A"]
    h = t.bind(a)
    t.set_active(h, True)
    t.bind(a)
    assert t.dest(a)["overload"]
    assert not t.eligible(a)


def test_edit_clears_overload_when_threshold_raised_or_removed_but_never_sets_it():
    t, svc = build("rr", [("A", 1, "-x 2")])
    a = ids(t)["A"]
    t.bind(a)
    t.bind(a)
    assert t.dest(a)["overload"]
    edit(t, "A", 1, "-x 2")                         # same threshold: stays
    assert t.dest(a)["overload"]
    edit(t, "A", 1, "-x 3")                         # raised: cleared
    assert not t.dest(a)["overload"]
    edit(t, "A", 1, "-x 1")                         # lowered below the total: not set by an edit
    assert not t.dest(a)["overload"]
    t.bind(a)                                       # the next bind sets it
    assert t.dest(a)["overload"]
    edit(t, "A", 1)                                 # no threshold: cleared
    assert not t.dest(a)["overload"]


# ---- trash ------------------------------------------------------------------------------------

def test_delete_keeps_the_dest_in_the_trash_and_readd_revives_it():
    t, svc = build("rr", "ABC")
    b = ids(t)["B"]
    h = t.bind(b)
    t.set_active(h, True)
    delete(t, "B")
    d = t.dest(b)
    assert not d["available"] and d["refcnt"] == 1 and d["activeconns"] == 1
    assert order(t) == "CA"
    assert picks(t, svc, 2) == "CA"
    assert add(t, "B", 5) == b                      # revived: same id
    d = t.dest(b)
    assert d["available"] and d["weight"] == 5 and d["activeconns"] == 1
    assert order(t) == "BCA"                        # back at the head
    t.unbind(h)
    assert t.dest(b)["activeconns"] == 0 and t.dest(b)["refcnt"] == 0


def test_unreferenced_trashed_dest_is_revived_too():
    t, svc = build("rr", "AB")
    a = ids(t)["A"]
    delete(t, "A")
    assert add(t, "A") == a
    assert t.n_dests == 2


def test_trash_is_per_service():
    t, svc = build("rr", "A")
    t.apply(cmd("-A -t 10.0.0.200:80 -s rr"))
    a = ids(t)["A"]
    delete(t, "A")
    other = t.apply(cmd(f"-a -t 10.0.0.200:80 -r {rs_addr('A')}:80 -g"))
    assert other != a
    assert t.dest(other)["svc"] == 1


def test_deleted_service_dests_revive_when_the_service_returns():
    t, svc = build("rr", "AB")
    a = ids(t)["A"]
    h = t.bind(a)
    t.apply(cmd(f"-D -t {VIP}:80"))
    assert not t.dest(a)["available"] and t.dest(a)["refcnt"] == 1
    assert t.apply(cmd(f"-A -t {VIP}:80 -s rr")) == svc
    assert add(t, "A") == a
    assert t.dest(a)["available"]
    t.unbind(h)
    assert t.dest(a)["inactconns"] == 0


# ---- dest array growth --------------------------------------------------------------------------

def test_dest_array_growth_keeps_the_conntab_view_in_sync():
    t = SvcTable()
    t.apply(cmd("-A -t 10.0.0.1:80 -s rr"))
    assert t.conntab_sync_ok()
    cap0 = t.cap_dests
    for i in range(cap0 + 5):
        t.apply(cmd(f"-a -t 10.0.0.1:80 -r 10.9.{i // 250}.{i % 250 + 1}:80 -m"))
    assert t.cap_dests > cap0
    assert t.conntab_sync_ok()
    last = t.n_dests - 1
    addr = t.dest(last)["addr"]
    assert t.conntab_addr(last) == b"\x00" * 10 + b"\xff\xff" + bytes(int(x) for x in addr.split("."))


def test_ipv6_service_with_ipv6_and_tunnelled_ipv4_servers():
    t = table("-A -t [2001:db8::10]:80 -s rr",
              "-a -t [2001:db8::10]:80 -r [2001:db8:2::1]:80 -m",
              "-a -t [2001:db8::10]:80 -r 10.0.1.1:80 -i")
    assert [d["endpoint"] for d in t.dests()] == ["[2001:db8:2::1]:80", "10.0.1.1:80"]
    assert [t.schedule(0, src="2001:db8:9::1") for _ in range(3)] == [1, 0, 1]
    assert t.services()[0]["addr"] == "2001:db8::10"


# ---- errors -----------------------------------------------------------------------------------

def _svc(**kw):
    base = dict(proto=TCP, addr=VIP, port=80, scheduler="rr")
    base.update(kw)
    return VirtualService(**base)


@pytest.mark.parametrize("command, message", [
    (Command(op="add-service", service=_svc(), line="-A -t 10.0.0.100:80 -s rr", lineno=3, source="rules.conf"),
     "already exists"),
    (Command(op="edit-service", service=_svc(addr="10.0.0.7"), line="-E -t 10.0.0.7:80 -s rr", lineno=3,
             source="rules.conf"), "does not exist"),
    (Command(op="del-service", service=_svc(addr="10.0.0.7"), line="-D -t 10.0.0.7:80", lineno=3,
             source="rules.conf"), "does not exist"),
    (Command(op="add-service", service=_svc(addr="10.0.0.8", scheduler="fastest"), line="-A -t 10.0.0.8:80 -s fastest",
             lineno=3, source="rules.conf"), "unknown scheduler 'fastest'"),
    (Command(op="add-service", service=_svc(addr="10.0.0.8", port=0), line="-A -t 10.0.0.8:0 -s rr",
             lineno=3, source="rules.conf"), "zero port"),
    (Command(op="add-service", service=_svc(addr="10.0.0.8", flags=0x4), line="-A -t 10.0.0.8:80 -s rr -o",
             lineno=3, source="rules.conf"), "only for UDP"),
    (Command(op="add-service", service=_svc(addr="10.0.0.300"), line="-A -t 10.0.0.300:80 -s rr",
             lineno=3, source="rules.conf"), "bad virtual service address"),
    (Command(op="add-service", service=_svc(proto=1, addr="10.0.0.8"), line="-A icmp",
             lineno=3, source="rules.conf"), "not TCP, UDP or SCTP"),
    (Command(op="add-service", service=_svc(addr="10.0.0.8", flags=SVC_F_PERSISTENT, timeout=60, netmask=33),
             line="-A -t 10.0.0.8:80 -p 60 -M 33", lineno=3, source="rules.conf"), "netmask /33"),
    (Command(op="add-dest", service=_svc(), dest=RealServer(rs_addr("A"), 80), line="-a dup", lineno=3,
             source="rules.conf"), "already exists"),
    (Command(op="add-dest", service=_svc(addr="10.0.0.7"), dest=RealServer(rs_addr("A"), 80), line="-a nosvc",
             lineno=3, source="rules.conf"), "does not exist"),
    (Command(op="edit-dest", service=_svc(), dest=RealServer(rs_addr("Z"), 80), line="-e nodest", lineno=3,
             source="rules.conf"), "does not exist"),
    (Command(op="del-dest", service=_svc(), dest=RealServer(rs_addr("Z"), 80), line="-d nodest", lineno=3,
             source="rules.conf"), "does not exist"),
    (Command(op="add-dest", service=_svc(), dest=RealServer(rs_addr("B"), 80, weight=65536), line="-a w",
             lineno=3, source="rules.conf"), "weight 65536 out of range"),
    (Command(op="edit-dest", service=_svc(), dest=RealServer(rs_addr("A"), 80, weight=-1), line="-e w",
             lineno=3, source="rules.conf"), "weight -1 out of range"),
    (Command(op="add-dest", service=_svc(), dest=RealServer(rs_addr("B"), 80, u_threshold=0, l_threshold=5),
             line="-a y", lineno=3, source="rules.conf"), "lower threshold 5 is higher than upper threshold 0"),
    (Command(op="add-dest", service=_svc(), dest=RealServer(rs_addr("B"), 80, u_threshold=-2), line="-a x",
             lineno=3, source="rules.conf"), "thresholds"),
    (Command(op="add-dest", service=_svc(), dest=RealServer("2001:db8::1", 80, fwd=CF_MASQ), line="-a v6",
             lineno=3, source="rules.conf"), "only for tunneling"),
    (Command(op="add-dest", service=_svc(), dest=RealServer("224.0.0.1", 80), line="-a mc", lineno=3,
             source="rules.conf"), "not a unicast address"),
    (Command(op="add-dest", service=_svc(), dest=RealServer(rs_addr("B"), 80, fwd=9), line="-a fwd", lineno=3,
             source="rules.conf"), "forwarding method"),
    (Command(op="add-dest", service=_svc(), dest=RealServer(rs_addr("B"), 80, weight="heavy"), line="-a w",
             lineno=3, source="rules.conf"), "weight 'heavy' is not an integer"),
    (Command(op="add-dest", service=_svc(addr="2001:db8::10"), dest=RealServer("fe80::1", 80), line="-a ll",
             lineno=3, source="rules.conf"), "does not exist"),
    (Command(op="add-dest", service=None, dest=RealServer(rs_addr("B"), 80), line="-a nosvc", lineno=3,
             source="rules.conf"), "no virtual service given"),
    (Command(op="sysctl", sysctl=("secure_tcp", 1), line="--sysctl secure_tcp=1", lineno=3, source="rules.conf"),
     "not a service or real-server command"),
])
def test_bad_requests_raise_config_error_naming_the_line(command, message):
    t, svc = build("rr", "A")
    before = (t.services(), t.dests())
    with pytest.raises(ConfigError) as exc:
        t.apply(command)
    text = str(exc.value)
    assert message in text
    assert text.startswith("rules.conf:3: ")
    assert repr(command.line) in text
    assert (t.services(), t.dests()) == before       # a refused request changes nothing


def test_ipv6_link_local_real_server_is_refused():
    t = table("-A -t [2001:db8::10]:80 -s rr")
    with pytest.raises(ConfigError, match="not a unicast address"):
        t.apply(cmd("-a -t [2001:db8::10]:80 -r [fe80::1]:80 -m"))
    t.apply(cmd("-a -t [2001:db8::10]:80 -r [2001:db8::1]:80 -m"))
    assert [d["endpoint"] for d in t.dests()] == ["[2001:db8::1]:80"]


def test_unknown_scheduler_is_refused_clearly():
    # the rules parser refuses unknown names itself; a Command built another way reaches svc_apply
    t = SvcTable()
    c = cmd("-A -t 10.0.0.1:80 -s mh")
    c.service.scheduler = "lblc"
    with pytest.raises(ConfigError, match="unknown scheduler 'lblc'"):
        t.apply(c)
    assert t.find(TCP, "10.0.0.1", 80) == -1


def test_persistent_settings_are_recorded():
    t = table("-A -t 10.0.0.1:0 -s rr -p 120 -M 255.255.255.0", "-A -t 10.0.0.2:80 -s wlc")
    s = t.services()
    assert (s[0]["persistent"], s[0]["timeout"], s[0]["netmask"]) == (True, 120, 24)
    assert (s[1]["persistent"], s[1]["timeout"], s[1]["netmask"], s[1]["sched"]) == (False, 0, 32, "wlc")
