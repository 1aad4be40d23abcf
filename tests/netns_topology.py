"""Network-namespace topologies for the live director's end-to-end tests (and its benchmark).

Everything is created with unique names per run and removed afterwards, even on failure:
namespaces (deleting one removes its interfaces), and every process started in them. Traffic
never leaves the namespaces; addresses come from 198.18.0.0/15 (RFC 2544, set aside for
benchmarking network devices) and fd00:5eed::/32 (unique-local).

Layouts (a "switch" namespace holds one Linux bridge per LAN; offloads are off on every veth so
checksums in frames are real):

NAT   client 198.18.1.10 --[lan c]-- 198.18.1.1 eth0 DIRECTOR eth1 198.18.2.1 --[lan s]-- rs1..rs4
      (198.18.2.11..14, default route via the director; the client routes the VIP via it)
DR    client 198.18.1.10, director 198.18.1.1, rs1..rs4 198.18.1.11..14 on one LAN; real
      servers hold the VIP on lo (arp_ignore=1, arp_announce=2) and answer the client directly

The director's kernel never answers for the VIP (it is not configured there and forwarding is
off), so only ``ipvsflow live`` moves client traffic. Real servers run a small threaded HTTP/1.0
server answering ``<name>\\n``; the server closes first, like HTTP/1.0 servers do.

pytest fixtures: ``netns_available`` (skips with the reason when not root / no netns) and
``topology`` (a fresh Topology per test).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
VIP = "198.18.100.1"
VIP6 = "fd00:5eed:100::1"
CLIENT = "198.18.1.10"
CLIENT6 = "fd00:5eed:1::10"
DIR_C = "198.18.1.1"
DIR_C6 = "fd00:5eed:1::1"
DIR_S = "198.18.2.1"
DIR_S6 = "fd00:5eed:2::1"
_counter = itertools.count()

HTTP_SERVER = r'''
import socket, socketserver, sys, threading
name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = (name + "\n").encode()
resp = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body
class H(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(30)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                d = s.recv(4096)
                if not d:
                    return
                buf += d
            s.sendall(resp)
        except OSError:
            pass
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512
    address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
srv = S((addr, port), H)
print("ready", flush=True)
srv.serve_forever()
'''

HTTP_CLIENT = r'''
import json, socket, sys, threading, time
cfg = json.loads(sys.argv[1])
vip, vport, src = cfg["vip"], cfg["vport"], cfg["src"]
ports = list(range(cfg["port_lo"], cfg["port_hi"] + 1))
count, conc, timeout = cfg["count"], cfg["concurrency"], cfg.get("timeout", 10.0)
fam = socket.AF_INET6 if ":" in vip else socket.AF_INET
results = [None] * count
lock = threading.Lock()
nxt = [0]
def one(seq, sport):
    t0 = time.time()
    deadline = t0 + timeout
    while True:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((src, sport))
        except OSError as e:
            s.close()
            # the previous connection on this port is still closing: wait for it
            if time.time() > deadline:
                return {"seq": seq, "sport": sport, "error": "bind: %s" % e, "t0": t0, "t1": time.time()}
            time.sleep(0.005)
            continue
        s.settimeout(max(0.1, deadline - time.time()))
        try:
            s.connect((vip, vport))
            s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
            buf = b""
            while True:
                d = s.recv(4096)
                if not d:
                    break
                buf += d
            s.close()
        except OSError as e:
            s.close()
            if getattr(e, "errno", None) == 99 and time.time() < deadline:  # EADDRNOTAVAIL: tuple busy
                time.sleep(0.005)
                continue
            return {"seq": seq, "sport": sport, "error": str(e), "t0": t0, "t1": time.time()}
        head, _, body = buf.partition(b"\r\n\r\n")
        ok = head.startswith(b"HTTP/1.0 200")
        return {"seq": seq, "sport": sport, "server": body.decode().strip() if ok else None,
                "error": None if ok else "bad response %r" % buf[:80], "t0": t0, "t1": time.time()}
def worker(k):
    # each thread owns a slice of the source ports, so a port is never used twice at once
    mine = ports[k::conc]
    i = 0
    while True:
        with lock:
            seq = nxt[0]
            if seq >= count:
                return
            nxt[0] += 1
        results[seq] = one(seq, mine[i % len(mine)])
        i += 1
ts = [threading.Thread(target=worker, args=(k,)) for k in range(conc)]
for t in ts: t.start()
for t in ts: t.join()
json.dump(results, sys.stdout)
'''


def netns_unavailable_reason() -> Optional[str]:
    """Why the end-to-end tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET sockets)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    if shutil.which("ethtool") is None:
        return "needs ethtool to turn veth offloads off (apt-get install ethtool)"
    name = f"ipfprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class Topology:
    """Namespaces, veths, bridges and processes of one test, removed by ``cleanup()``."""

    def __init__(self, tag: str = "t"):
        self.prefix = f"ipf{os.getpid() % 100000}{tag}{next(_counter)}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=self.prefix + "-"))
        self.servers: dict = {}          # name -> address
        self.kind = None
        self.offloads_off = True         # ethtool -K ... off on every veth end

    # -- plumbing --------------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def add_ns(self, name: str) -> str:
        full = self.ns(name)
        subprocess.run(["ip", "netns", "add", full], check=True, capture_output=True)
        self.namespaces.append(full)
        self.sh(name, "ip link set lo up")
        return full

    def run(self, name: str, *cmd: str, check: bool = True, timeout: float = 60, **kw):
        r = subprocess.run(["ip", "netns", "exec", self.ns(name), *cmd], capture_output=True,
                           text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise RuntimeError(f"[{name}] {' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def sh(self, name: str, line: str, check: bool = True):
        return self.run(name, *line.split(), check=check)

    def popen(self, name: str, cmd: list, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(name), *cmd], **kw)
        self.procs.append(p)
        return p

    def link(self, a: str, if_a: str, b: str, if_b: str) -> None:
        subprocess.run(["ip", "link", "add", "name", if_a, "netns", self.ns(a), "type", "veth",
                        "peer", "name", if_b, "netns", self.ns(b)], check=True, capture_output=True)
        for n, i in ((a, if_a), (b, if_b)):
            if self.offloads_off:
                if shutil.which("ethtool") is None:
                    raise RuntimeError("ethtool is needed to turn veth offloads off (apt-get install ethtool)")
                self.run(n, "ethtool", "-K", i, "tx", "off", "rx", "off", "gso", "off", "tso", "off",
                         "gro", "off", check=False)
            self.sh(n, f"ip link set {i} up")

    def port(self, lan: str, host: str, ifname: str) -> None:
        """Connect ``host``'s ``ifname`` to bridge ``lan`` in the switch namespace."""
        p = f"p{len(self._ports)}"
        self._ports.append(p)
        self.link(host, ifname, "sw", p)
        self.sh("sw", f"ip link set {p} master {lan}")

    def sysctl(self, name: str, key: str, value) -> None:
        self.run(name, "sysctl", "-qw", f"{key}={value}")

    def mac(self, name: str, ifname: str) -> str:
        return self.run(name, "cat", f"/sys/class/net/{ifname}/address").stdout.strip()

    # -- layouts -----------------------------------------------------------------------------------

    def _common(self):
        self._ports = []
        self.add_ns("sw")
        for lan in ("lanc", "lans"):
            self.sh("sw", f"ip link add {lan} type bridge forward_delay 0")
            self.sh("sw", f"ip link set {lan} up")
        self.add_ns("cli")
        self.add_ns("dir")

    def build_nat(self, n_servers: int = 4, ipv6: bool = False) -> "Topology":
        self.kind = "nat"
        self._common()
        self.port("lanc", "cli", "eth0")
        self.port("lanc", "dir", "eth0")
        self.port("lans", "dir", "eth1")
        self.sh("cli", f"ip addr add {CLIENT}/24 dev eth0")
        self.sh("cli", f"ip route add {VIP}/32 via {DIR_C}")
        self.sh("dir", f"ip addr add {DIR_C}/24 dev eth0")
        self.sh("dir", f"ip addr add {DIR_S}/24 dev eth1")
        if ipv6:
            self.sh("cli", f"ip addr add {CLIENT6}/64 dev eth0 nodad")
            self.sh("cli", f"ip -6 route add {VIP6}/128 via {DIR_C6}")
            self.sh("dir", f"ip addr add {DIR_C6}/64 dev eth0 nodad")
            self.sh("dir", f"ip addr add {DIR_S6}/64 dev eth1 nodad")
            self.sysctl("dir", "net.ipv6.conf.all.forwarding", 0)
            # without any route to the VIP, the director's IPv6 stack would answer the client's
            # packets with ICMPv6 "no route" (IPv4 stays silent when not forwarding): a
            # blackhole route makes it drop them silently, as a host with a default route does
            self.sh("dir", f"ip -6 route add blackhole {VIP6}/128")
        self.sysctl("dir", "net.ipv4.ip_forward", 0)
        for i in range(1, n_servers + 1):
            name = f"rs{i}"
            self.add_ns(name)
            self.port("lans", name, "eth0")
            addr = f"198.18.2.{10 + i}"
            self.sh(name, f"ip addr add {addr}/24 dev eth0")
            self.sh(name, f"ip route add default via {DIR_S}")
            self.servers[name] = addr
            if ipv6:
                self.sh(name, f"ip addr add fd00:5eed:2::{10 + i}/64 dev eth0 nodad")
                self.sh(name, f"ip -6 route add default via {DIR_S6}")
        return self

    def build_dr(self, n_servers: int = 4) -> "Topology":
        self.kind = "dr"
        self._common()
        self.port("lanc", "cli", "eth0")
        self.port("lanc", "dir", "eth0")
        self.sh("cli", f"ip addr add {CLIENT}/24 dev eth0")
        self.sh("cli", f"ip route add {VIP}/32 via {DIR_C}")
        self.sh("dir", f"ip addr add {DIR_C}/24 dev eth0")
        self.sysctl("dir", "net.ipv4.ip_forward", 0)
        for i in range(1, n_servers + 1):
            name = f"rs{i}"
            self.add_ns(name)
            self.port("lanc", name, "eth0")
            addr = f"198.18.1.{10 + i}"
            self.sh(name, f"ip addr add {addr}/24 dev eth0")
            self.sh(name, f"ip addr add {VIP}/32 dev lo")
            for scope in ("all", "eth0"):
                self.sysctl(name, f"net.ipv4.conf.{scope}.arp_ignore", 1)
                self.sysctl(name, f"net.ipv4.conf.{scope}.arp_announce", 2)
            self.servers[name] = addr
        return self

    # -- processes -----------------------------------------------------------------------------------

    def start_http(self, names=None, port: int = 80, ipv6: bool = False) -> None:
        """Start the HTTP server in each real-server namespace and wait until they listen."""
        started = []
        for name in names or list(self.servers):
            bind = "::" if ipv6 else "0.0.0.0"
            p = self.popen(name, [sys.executable, "-c", HTTP_SERVER, name, bind, str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started.append((name, p))
        for name, p in started:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"HTTP server in {name} did not start: {p.stderr.read()[:500]}")

    def director(self, rules_text: str, ifaces, *extra: str, name: str = "dir",
                 wait: bool = True, user_cmd_prefix=()) -> "DirectorProc":
        rules = self.tmp / "rules.conf"
        rules.write_text(rules_text)
        ctl = self.tmp / "run" / "ctl.sock"
        cmd = list(user_cmd_prefix) + [sys.executable, "-m", "ipvsflow.live.cli", "live", "-C",
                                       str(rules), "--control", str(ctl)]
        for i in ifaces:
            cmd += ["-i", i]
        cmd += list(extra)
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1")
        out = open(self.tmp / "director.out", "w+")
        err = open(self.tmp / "director.err", "w+")
        p = self.popen(name, cmd, stdout=out, stderr=err, env=env, cwd=str(REPO))
        d = DirectorProc(self, p, rules, ctl, out, err)
        if wait:
            d.wait_ready()
        return d

    def http_clients(self, count: int, port_lo: int, port_hi: int, concurrency: int = 4,
                     vip: str = VIP, src: str = CLIENT, vport: int = 80, timeout: float = 10.0,
                     ns: str = "cli") -> list:
        """Run ``count`` HTTP requests from the client namespace, each from a source port in
        [port_lo, port_hi] (reused round-robin per thread); returns one result dict each."""
        cfg = {"vip": vip, "vport": vport, "src": src, "port_lo": port_lo, "port_hi": port_hi,
               "count": count, "concurrency": concurrency, "timeout": timeout}
        r = self.run(ns, sys.executable, "-c", HTTP_CLIENT, json.dumps(cfg), timeout=300)
        return json.loads(r.stdout)

    # -- teardown --------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=5)
                except (subprocess.TimeoutExpired, OSError):
                    p.kill()
                    p.wait()
        for full in reversed(self.namespaces):
            # processes still inside (orphans of `ip netns exec`) would keep the namespace alive
            r = subprocess.run(["ip", "netns", "pids", full], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", full], capture_output=True)
        self.namespaces = []
        shutil.rmtree(self.tmp, ignore_errors=True)


class DirectorProc:
    """A running ``ipvsflow live`` in the director namespace."""

    def __init__(self, topo: Topology, proc: subprocess.Popen, rules: Path, ctl: Path, out, err):
        self.topo, self.proc, self.rules, self.ctl_path, self._out, self._err = topo, proc, rules, ctl, out, err

    def output(self) -> tuple[str, str]:
        self._out.flush()
        self._err.flush()
        self._out.seek(0)
        self._err.seek(0)
        return self._out.read(), self._err.read()

    def wait_ready(self, timeout: float = 30.0) -> None:
        from ipvsflow.live.control import ControlError, request
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                out, err = self.output()
                raise RuntimeError(f"director exited with {self.proc.returncode}:\n{err}\n{out}")
            if self.ctl_path.exists():
                try:
                    if request(str(self.ctl_path), {"cmd": "status"}, timeout=5).get("ok"):
                        return
                except ControlError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"director not ready after {timeout}s: {self.output()[1]}")

    def ctl(self, *argv: str) -> tuple[int, str, str]:
        """Run ``ipvsflow ctl ARGV`` against this director; (exit status, stdout, stderr)."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        r = subprocess.run([sys.executable, "-m", "ipvsflow.live.cli", "ctl", "--socket",
                            str(self.ctl_path), *argv], capture_output=True, text=True, env=env,
                           cwd=str(REPO), timeout=60)
        return r.returncode, r.stdout, r.stderr

    def request(self, req: dict) -> dict:
        from ipvsflow.live.control import request
        return request(str(self.ctl_path), req)

    def status(self) -> dict:
        r = self.request({"cmd": "status"})
        assert r["ok"], r
        return r["status"]

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        out, err = self.output()
        return self.proc.returncode, out, err


@pytest.fixture(scope="session")
def netns_available():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"end-to-end live tests skipped: {reason}")
    return True


@pytest.fixture
def topology(netns_available, request):
    t = Topology(tag=request.node.name[:1])
    try:
        yield t
    finally:
        t.cleanup()
