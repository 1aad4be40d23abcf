"""The director's control socket: a unix stream socket carrying one JSON request and one JSON
reply per connection, each a single line.

Requests (``{"cmd": ...}``):

* ``apply``  ``{"line": "-a -t VIP:80 -r RS:80 -m -w 1"}``: one ipvsadm command (-A -E -D -C -a
  -e -d --set, and ``--sysctl name=value``), applied by every worker between two bursts;
* ``list``   ``{"stats": bool, "exact": bool, "conns": bool, "timeout": bool}``: ipvsadm -L -n
  (--stats, --exact, -c, --timeout) over all workers;
* ``save``   the rules in force, as ipvsadm -S -n;
* ``status`` the aggregated counters as JSON (what the stats line and the metrics show).

Replies: ``{"ok": bool, "output": str, "error": str, ...}``.
"""
from __future__ import annotations

import json
import os
import socket
from typing import Optional

MAX_REQUEST = 1 << 16
DEFAULT_SOCKET = "/run/ipvsflow/ipvsflow.sock"


class ControlError(Exception):
    """The control socket could not be reached or answered badly."""


def request(path: str, req: dict, timeout: float = 30.0) -> dict:
    """Send one request to a running director and return its reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path} (is `ipvsflow live` running? "
                               "--control names its socket)") from None
        except ConnectionRefusedError:
            raise ControlError(f"{path}: nobody is listening (stale socket of a stopped director?)") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied") from None
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = bytearray()
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
            if buf.endswith(b"\n"):
                break
    except socket.timeout:
        raise ControlError(f"{path}: no answer within {timeout:g}s") from None
    finally:
        s.close()
    try:
        return json.loads(buf.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError(f"{path}: malformed reply") from None


def open_server(path: str, owner: Optional[tuple[int, int]] = None) -> socket.socket:
    """Create the listening socket (its directory too). ``owner`` (uid, gid): hand the socket
    and a directory created for it to that user, so a director that dropped privileges can still
    remove it at exit. Mode 0660: root and the owner's group may send commands."""
    d = os.path.dirname(os.path.abspath(path))
    created = False
    if not os.path.isdir(d):
        os.makedirs(d, mode=0o750, exist_ok=True)
        created = True
    if os.path.exists(path):
        # a previous director's socket: refuse if someone still answers on it
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise ControlError(f"{path}: another director is listening there")
        finally:
            probe.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(8)
    if owner is not None:
        os.chown(path, owner[0], owner[1])
        if created:
            os.chown(d, owner[0], owner[1])
    return s


def read_request(conn: socket.socket, timeout: float = 5.0) -> dict:
    conn.settimeout(timeout)
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    req = json.loads(buf.decode())
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        raise ValueError("a request is a JSON object with a \"cmd\"")
    return req


def send_reply(conn: socket.socket, reply: dict) -> None:
    try:
        conn.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass
