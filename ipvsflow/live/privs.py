"""Privileges: dropping to an unprivileged user once the sockets are open, and tying workers'
lives to the director's."""
from __future__ import annotations

import ctypes
import os
import pwd
import signal

PR_SET_PDEATHSIG = 1


class PrivilegeError(Exception):
    """A privilege change that cannot be made; the message says why."""


def lookup_user(name: str) -> tuple[int, int, str]:
    """(uid, gid, name) of a user given by name or number."""
    try:
        pw = pwd.getpwuid(int(name)) if str(name).isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"--user {name}: no such user") from None
    return pw.pw_uid, pw.pw_gid, pw.pw_name


# Modules some code paths import on first use. Once the uid changes, the interpreter's own
# library may be unreadable (a Python under /root), so they are loaded before.
PRELOAD = ("shlex", "ipvsflow.engine.variants", "ipvsflow.engine.proto_tcp", "ipvsflow.engine.proto_udp",
           "ipvsflow.engine.proto_sctp", "ipvsflow.config", "ipvsflow.live.netlink",
           "ipvsflow.live.listing", "ipvsflow.live.fanout", "ipvsflow.forward.xmit",
           "prometheus_client.core", "prometheus_client.exposition", "email.utils", "http.server",
           "wsgiref.simple_server", "wsgiref.handlers", "gzip", "urllib.parse")


def preload() -> None:
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def drop_privileges(user: str) -> None:
    """Become ``user`` (its primary group, no supplementary groups) for good: real, effective
    and saved ids all change, so the capabilities of root are gone."""
    uid, gid, name = lookup_user(user)
    if os.geteuid() == uid and os.getegid() == gid:
        return
    preload()
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except PermissionError:
        raise PrivilegeError(f"--user {name}: cannot switch to uid {uid} (not running as root?)") from None
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PrivilegeError(f"--user {name}: the switch did not take")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits (PR_SET_PDEATHSIG;
    set after any uid change, which clears it)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def has_net_raw() -> bool:
    """Whether this process can open AF_PACKET sockets (CAP_NET_RAW in its effective set)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 13))
    except OSError:
        pass
    return os.geteuid() == 0
