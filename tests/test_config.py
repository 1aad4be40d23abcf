"""Rules, sysctls and events: ipvsadm's save format and its defaults, keepalived blocks, errors."""
import pytest

from ipvsflow.config import (FWD_DROUTE, FWD_MASQ, FWD_TUNNEL, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SVC_F_ONEPACKET,
                             SVC_F_PERSISTENT, SVC_F_SCHED1, SVC_F_SCHED2, ConfigError, format_rules, load_events,
                             load_rules, parse_command, parse_event, parse_rules, parse_sysctl, parse_time_offset)

SAVE = """\
-A -t 10.0.0.1:80 -s wlc
-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m -w 1
-a -t 10.0.0.1:80 -r 10.0.1.2:80 -m -w 2
-A -t 10.0.0.2:443 -s sh -p 300 -b sh-port
-A -u 10.0.0.3:53 -s rr -o
-A --sctp-service 10.0.0.4:3868 -s rr
-A -f 1 -s rr
-a -f 1 -r 10.0.1.1:0 -g -w 1
-a -t 10.0.0.1:80 -r 10.0.1.5:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-nocsum
"""


def test_save_format_example_from_ipvsadm():
    cfg = parse_rules(SAVE)
    assert [s.scheduler for s in cfg.services] == ["wlc", "sh", "rr", "rr", "rr"]
    web = cfg.services[0]
    assert (web.proto, web.addr, web.port) == (PROTO_TCP, "10.0.0.1", 80)
    assert [(d.addr, d.port, d.fwd, d.weight) for d in web.dests] == [
        ("10.0.1.1", 80, FWD_MASQ, 1), ("10.0.1.2", 80, FWD_MASQ, 2), ("10.0.1.5", 80, FWD_TUNNEL, 1)]
    tls = cfg.services[1]
    assert tls.flags & SVC_F_PERSISTENT and tls.timeout == 300 and tls.flags & SVC_F_SCHED2
    assert tls.netmask == 32
    dns = cfg.services[2]
    assert dns.proto == PROTO_UDP and dns.flags & SVC_F_ONEPACKET
    assert cfg.services[3].proto == PROTO_SCTP
    fwm = cfg.services[4]
    assert fwm.fwmark == 1 and fwm.dests[0].port == 0 and fwm.dests[0].fwd == FWD_DROUTE


def test_round_trip_through_save_format():
    cfg = parse_rules(SAVE)
    again = parse_rules(format_rules(cfg))
    assert format_rules(again) == format_rules(cfg)
    assert [(s.key(), [(d.addr, d.port, d.fwd, d.weight) for d in s.dests]) for s in again.services] == \
        [(s.key(), [(d.addr, d.port, d.fwd, d.weight) for d in s.dests]) for s in cfg.services]


def test_ipvsadm_defaults_and_long_options():
    cfg = parse_rules("ipvsadm --add-service --tcp-service 192.0.2.10:80\n"
                      "ipvsadm --add-server --tcp-service 192.0.2.10:80 --real-server 10.1.0.1:8080\n"
                      "-a -t 192.0.2.10:80 -r 10.1.0.2 -m\n")
    svc = cfg.services[0]
    assert svc.scheduler == "wlc"                       # ipvsadm's DEF_SCHED
    d1, d2 = svc.dests
    # default forwarding is gatewaying; with -g the real server's port is the service port
    assert (d1.fwd, d1.port, d1.weight) == (FWD_DROUTE, 80, 1)
    # no port given: the service's port
    assert (d2.fwd, d2.port) == (FWD_MASQ, 80)


def test_persistent_default_timeout_and_netmask():
    cfg = parse_rules("-A -t 10.0.0.1:0 -s rr -p -M 255.255.255.0\n-A -t [2001:db8::1]:80 -p 60 -M 64\n")
    a, b = cfg.services
    assert a.timeout == 300 and a.port == 0 and a.netmask == 24
    assert b.af == 6 and b.timeout == 60 and b.netmask == 64
    assert "-M 255.255.255.0" in format_rules(cfg)


def test_ipv6_real_servers_and_brackets():
    cfg = parse_rules("-A -t [2001:db8::10]:443 -s rr\n-a -t [2001:db8::10]:443 -r [2001:db8:1::2]:443 -m -w 3\n")
    d = cfg.services[0].dests[0]
    assert (d.addr, d.port, d.weight, d.af) == ("2001:db8:1::2", 443, 3, 6)
    assert d.endpoint() == "[2001:db8:1::2]:443"


def test_edits_and_deletes_apply_in_order():
    cfg = parse_rules("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m\n"
                      "-a -t 10.0.0.1:80 -r 10.0.1.2:80 -m\n-e -t 10.0.0.1:80 -r 10.0.1.1:80 -m -w 0\n"
                      "-d -t 10.0.0.1:80 -r 10.0.1.2:80\n-E -t 10.0.0.1:80 -s lc\n--set 0 60 0\n")
    svc = cfg.services[0]
    assert svc.scheduler == "lc"
    assert [(d.addr, d.weight) for d in svc.dests] == [("10.0.1.1", 0)]
    assert cfg.timeouts == (900, 60, 300)       # 0 keeps the old value
    cfg = parse_rules("-A -t 10.0.0.1:80\n-C\n")
    assert cfg.services == []


@pytest.mark.parametrize("line, words", [
    ("-A -t 10.0.0.1:80 -s bogus", "unknown scheduler 'bogus'"),
    ("-A -t 10.0.0.1:80 -s", "needs a scheduler"),
    ("-A -t www.example.com:80", "only numeric addresses"),
    ("-A -t 10.0.0.1:99999", "out of range"),
    ("-A -t 10.0.0.1:0 -s rr", "port 0"),
    ("-A -t 10.0.0.1:80 -o", "only valid for UDP"),
    ("-a -t 10.0.0.9:80 -r 10.0.1.1", "no such service"),
    ("-a -t 10.0.0.1:80 -r 10.0.1.1:80 -w 65536", "out of range 0..65535"),
    ("-a -t 10.0.0.1:80 -r 10.0.1.1:80 -w -1", "out of range"),
    ("-a -t 10.0.0.1:80 -r 10.0.1.1:80 -x 5 -y 10", "lower threshold"),
    ("-a -t 10.0.0.1:80", "no real server"),
    ("-A -t 10.0.0.1:80", "already exists"),
    ("-t 10.0.0.1:80", "no command"),
    ("-A -t 10.0.0.1:80 --frobnicate", "unknown option '--frobnicate'"),
    ("-A -A -t 10.0.0.1:80", "more than one command"),
    ("-a -t 10.0.0.1:80 -r 2001:db8::1 -m", "address family"),
])
def test_bad_rule_lines_name_the_line_and_problem(line, words):
    text = "# header comment\n-A -t 10.0.0.1:80 -s rr\n" + line + "\n"
    with pytest.raises(ConfigError) as ei:
        parse_rules(text, source="rules.conf")
    msg = str(ei.value)
    assert msg.startswith("rules.conf:3: "), msg
    assert words in msg
    assert "\n" not in msg


def test_comments_blank_lines_and_trailing_comments():
    cfg = parse_rules("\n# comment\n   \n-A -t 10.0.0.1:80 -s rr   # web\n")
    assert len(cfg.services) == 1 and cfg.services[0].scheduler == "rr"
    assert parse_command("   # nothing") is None


def test_load_rules_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such rules file"):
        load_rules(str(tmp_path / "missing.conf"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_rules(str(tmp_path))
    p = tmp_path / "bin.conf"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not a text file"):
        load_rules(str(p))


def test_sysctls():
    assert parse_sysctl("conn_reuse_mode=2") == ("conn_reuse_mode", 2)
    assert parse_sysctl("net.ipv4.vs.expire_nodest_conn = 1") == ("expire_nodest_conn", 1)
    with pytest.raises(ConfigError, match="unknown sysctl 'conn_reuse'"):
        parse_sysctl("conn_reuse=1")
    with pytest.raises(ConfigError, match="out of range 0..3"):
        parse_sysctl("conn_reuse_mode=4")
    with pytest.raises(ConfigError, match="not an integer"):
        parse_sysctl("secure_tcp=on")
    with pytest.raises(ConfigError, match="name=value"):
        parse_sysctl("secure_tcp")


def test_events(tmp_path):
    ev, cmd = parse_event("+12.5s -e -t 10.0.0.100:80 -r 10.0.1.2:80 -g -w 0")
    assert ev.t == 12.5 and cmd.op == "edit-dest" and cmd.dest.weight == 0
    ev, cmd = parse_event("90 --sysctl expire_nodest_conn=1")
    assert ev.t == 90 and cmd.sysctl == ("expire_nodest_conn", 1)
    assert parse_time_offset("+2m") == 120 and parse_time_offset("1500ms") == 1.5
    with pytest.raises(ValueError):
        parse_time_offset("-3s")
    f = tmp_path / "events"
    f.write_text("# rolling update\n+20s -a -t 10.0.0.100:80 -r 10.0.1.4:80 -g -w 1\n+x -d -t 1.2.3.4:80 -r 1.1.1.1\n")
    with pytest.raises(ConfigError, match=r"events:3: invalid event time '\+x'"):
        load_events(str(f))


KEEPALIVED = """
! Configuration File for keepalived
global_defs {
   router_id LVS_DEVEL
}
virtual_server 192.168.200.100 443 {
    delay_loop 6
    lb_algo rr
    lb_kind NAT
    persistence_timeout 50
    persistence_granularity 255.255.255.0
    protocol TCP

    real_server 192.168.201.100 443 {
        weight 1
        SSL_GET {
            url {
              path /
              digest ff20ad2481f97b1754ef3e12ecd3a9cc
            }
            connect_timeout 3
        }
    }
    real_server 192.168.201.101 443 {
        weight 3
        uthreshold 100
    }
}
virtual_server 10.10.10.2 53 {
    lvs_sched wlc
    lvs_method DR
    protocol UDP
    real_server 192.168.200.6 1358 {
        weight 2
    }
}
"""


def test_keepalived_virtual_server_blocks():
    cfg = parse_rules(KEEPALIVED, source="keepalived.conf")
    a, b = cfg.services
    assert (a.addr, a.port, a.scheduler, a.timeout, a.netmask) == ("192.168.200.100", 443, "rr", 50, 24)
    assert [(d.addr, d.port, d.fwd, d.weight, d.u_threshold) for d in a.dests] == [
        ("192.168.201.100", 443, FWD_MASQ, 1, 0), ("192.168.201.101", 443, FWD_MASQ, 3, 100)]
    assert (b.proto, b.scheduler) == (PROTO_UDP, "wlc")
    assert (b.dests[0].fwd, b.dests[0].port) == (FWD_DROUTE, 53)    # DR: the service port


def test_keepalived_errors_name_the_line():
    with pytest.raises(ConfigError, match=r"ka.conf:3: unknown scheduler 'fastest'"):
        parse_rules("virtual_server 10.0.0.1 80 {\n protocol TCP\n lb_algo fastest\n}\n", source="ka.conf")
    with pytest.raises(ConfigError, match="missing '}'"):
        parse_rules("virtual_server 10.0.0.1 80 {\n lb_algo rr\n", source="ka.conf")


def test_delete_names_a_nat_server_by_its_own_port():
    cfg = parse_rules("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:8080 -m\n"
                      "-a -t 10.0.0.1:80 -r 10.0.1.2:8080 -m\n-d -t 10.0.0.1:80 -r 10.0.1.1:8080\n")
    assert [(d.addr, d.port) for d in cfg.services[0].dests] == [("10.0.1.2", 8080)]
    assert parse_command("-d -t 10.0.0.1:80 -r 10.0.1.1:8080").dest.port == 8080
    assert parse_command("-e -t 10.0.0.1:80 -r 10.0.1.1:8080 -g").dest.port == 80
