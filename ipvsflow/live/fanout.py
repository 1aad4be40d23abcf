"""The PACKET_FANOUT_CBPF program that spreads packets over workers by client.

Each worker has its own engine (its own connection table), so both directions of a connection
must reach the same worker. The one thing both directions share is the client's address and
port: the source of client -> VIP packets, the destination of the real server's NAT replies.
The program takes the source (address, port) unless the source is a real server
(address, and port unless the server's port is 0), in which case it takes the destination, and
returns a hash of it; the kernel picks socket ``hash % workers``.

Offsets are relative to the network header (SKF_NET_OFF), so the program does not depend on
where the socket's skb data starts. IPv4 (non-first fragments hash with port 0) and IPv6 (TCP,
UDP or SCTP directly after the fixed header; otherwise port 0); anything else goes to worker 0.
``client_hash`` is the same function in Python, for tests.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

# classic BPF opcodes (linux/bpf_common.h, linux/filter.h)
LD, LDX, ST, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, MSH = 0x00, 0x20, 0x40, 0x60, 0xa0
ADD, SUB, MUL, AND, OR, LSH, RSH, XOR = 0x00, 0x10, 0x20, 0x50, 0x40, 0x60, 0x70, 0xa0
JA, JEQ, JGT, JSET = 0x00, 0x10, 0x20, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_NET_OFF = -0x100000

M_ADDR, M_PORT, M_T = 0, 1, 2     # scratch slots: client address word, client port, temp

K1, K2, K3 = 0x9E3779B1, 0x85EBCA6B, 0x7FEB352D


def _u32(x: int) -> int:
    return x & 0xffffffff


def _mix(a: int, p: int) -> int:
    h = _u32(a * K1) ^ _u32(p * K2)
    h ^= h >> 16
    h = _u32(h * K3)
    h ^= h >> 15
    return h


def client_hash(client_addr: str, client_port: int) -> int:
    """The value the program returns for a packet whose client is ``client_addr:client_port``
    (IPv6 addresses are folded by XOR of their four 32-bit words)."""
    ip = ipaddress.ip_address(client_addr)
    raw = ip.packed
    if ip.version == 4:
        a = int.from_bytes(raw, "big")
    else:
        a = 0
        for i in range(0, 16, 4):
            a ^= int.from_bytes(raw[i:i + 4], "big")
    return _mix(a, client_port & 0xffff)


class _Asm:
    """A tiny assembler with forward labels for conditional jumps."""

    def __init__(self):
        self.ins: list = []
        self.labels: dict[str, int] = {}

    def op(self, code, k=0):
        self.ins.append([code, 0, 0, k])

    def jmp(self, code, k, jt, jf):
        # jt / jf: label names, or None for "next instruction"
        self.ins.append([code, jt, jf, k])

    def label(self, name):
        self.labels[name] = len(self.ins)

    def assemble(self):
        out = []
        for i, (code, jt, jf, k) in enumerate(self.ins):
            if (code & 0x07) == JMP and (code & 0xf0) != JA:
                offs = []
                for t in (jt, jf):
                    if t is None or t == 0:
                        offs.append(0)
                    else:
                        d = self.labels[t] - i - 1
                        if not 0 <= d <= 255:
                            raise ValueError("fanout program too large (jump out of range)")
                        offs.append(d)
                out.append((code, offs[0], offs[1], k & 0xffffffff))
            elif (code & 0x07) == JMP:
                out.append((code, 0, 0, (self.labels[k] - i - 1) if isinstance(k, str) else k))
            else:
                out.append((code, jt or 0, jf or 0, k & 0xffffffff))
        return out


def _hash_tail(a: _Asm):
    # A = mix(M[ADDR], M[PORT]); return A
    a.op(LD | MEM, M_PORT)
    a.op(ALU | MUL | K, K2)
    a.op(ST, M_T)
    a.op(LD | MEM, M_ADDR)
    a.op(ALU | MUL | K, K1)
    a.op(LDX | MEM, M_T)
    a.op(ALU | XOR | X)
    a.op(MISC | TAX)
    a.op(ALU | RSH | K, 16)
    a.op(ALU | XOR | X)
    a.op(ALU | MUL | K, K3)
    a.op(MISC | TAX)
    a.op(ALU | RSH | K, 15)
    a.op(ALU | XOR | X)
    a.op(RET | RET_A)


def program(real_servers: Iterable[tuple[str, int]]) -> list[tuple[int, int, int, int]]:
    """The fanout program for these real servers ((address, port); port 0 = any port)."""
    v4, v6 = [], []
    for addr, port in sorted(set((str(ipaddress.ip_address(a)), int(p)) for a, p in real_servers)):
        ip = ipaddress.ip_address(addr)
        (v4 if ip.version == 4 else v6).append((ip.packed, port))
    a = _Asm()
    N = SKF_NET_OFF
    a.op(LD | H | ABS, SKF_AD_OFF + SKF_AD_PROTOCOL)
    a.jmp(JMP | JEQ | K, 0x0800, "v4", None)
    a.jmp(JMP | JEQ | K, 0x86dd, "v6", "ret0")

    # ---- IPv4: ports (0 for non-first fragments / other protocols) into X-relative loads
    a.label("v4")
    a.op(LD | B | ABS, N + 9)
    a.jmp(JMP | JEQ | K, 6, "v4ports", None)
    a.jmp(JMP | JEQ | K, 17, "v4ports", None)
    a.jmp(JMP | JEQ | K, 132, "v4ports", "v4noports")
    a.label("v4ports")
    a.op(LD | H | ABS, N + 6)
    a.jmp(JMP | JSET | K, 0x1fff, "v4noports", None)
    a.op(LDX | B | MSH, N + 0)
    # source is a real server?
    for i, (raw, port) in enumerate(v4):
        a.op(LD | W | ABS, N + 12)
        a.jmp(JMP | JEQ | K, int.from_bytes(raw, "big"), f"v4rs{i}" if port else "v4dst", f"v4n{i}")
        if port:
            a.label(f"v4rs{i}")
            a.op(LD | H | IND, N + 0)
            a.jmp(JMP | JEQ | K, port, "v4dst", None)
        a.label(f"v4n{i}")
    a.op(LD | W | ABS, N + 12)
    a.op(ST, M_ADDR)
    a.op(LD | H | IND, N + 0)
    a.op(ST, M_PORT)
    a.op(JMP | JA, "hash")
    a.label("v4dst")
    a.op(LD | W | ABS, N + 16)
    a.op(ST, M_ADDR)
    a.op(LD | H | IND, N + 2)
    a.op(ST, M_PORT)
    a.op(JMP | JA, "hash")
    a.label("v4noports")
    # no ports: the client is the source unless it is a real server
    a.op(LD | IMM, 0)
    a.op(ST, M_PORT)
    for i, (raw, port) in enumerate(v4):
        a.op(LD | W | ABS, N + 12)
        a.jmp(JMP | JEQ | K, int.from_bytes(raw, "big"), "v4dstnp", None)
    a.op(LD | W | ABS, N + 12)
    a.op(ST, M_ADDR)
    a.op(JMP | JA, "hash")
    a.label("v4dstnp")
    a.op(LD | W | ABS, N + 16)
    a.op(ST, M_ADDR)
    a.op(JMP | JA, "hash")

    # ---- IPv6 (fixed header only)
    a.label("v6")
    a.op(LD | IMM, 0)
    a.op(ST, M_PORT)
    a.op(LD | B | ABS, N + 6)
    a.jmp(JMP | JEQ | K, 6, "v6ports", None)
    a.jmp(JMP | JEQ | K, 17, "v6ports", None)
    a.jmp(JMP | JEQ | K, 132, "v6ports", "v6src_check")
    a.label("v6ports")
    a.op(LD | H | ABS, N + 40)
    a.op(ST, M_PORT)
    a.label("v6src_check")
    for i, (raw, port) in enumerate(v6):
        nxt = f"v6n{i}"
        for w in range(4):
            a.op(LD | W | ABS, N + 8 + 4 * w)
            a.jmp(JMP | JEQ | K, int.from_bytes(raw[4 * w:4 * w + 4], "big"), None, nxt)
        if port:
            a.op(LD | H | ABS, N + 40)
            a.jmp(JMP | JEQ | K, port, "v6dst", nxt)
        else:
            a.op(JMP | JA, "v6dst")
        a.label(nxt)
    # client = source: M[ADDR] = xor of the source words
    a.op(LD | W | ABS, N + 8)
    for w in range(1, 4):
        a.op(MISC | TAX)
        a.op(LD | W | ABS, N + 8 + 4 * w)
        a.op(ALU | XOR | X)
    a.op(ST, M_ADDR)
    a.op(JMP | JA, "hash")
    a.label("v6dst")
    a.op(LD | H | ABS, N + 42)
    a.op(ST, M_T)
    a.op(LD | B | ABS, N + 6)
    a.jmp(JMP | JEQ | K, 6, "v6dport", None)
    a.jmp(JMP | JEQ | K, 17, "v6dport", None)
    a.jmp(JMP | JEQ | K, 132, "v6dport", "v6dnoport")
    a.label("v6dport")
    a.op(LD | MEM, M_T)
    a.op(ST, M_PORT)
    a.op(JMP | JA, "v6daddr")
    a.label("v6dnoport")
    a.op(LD | IMM, 0)
    a.op(ST, M_PORT)
    a.label("v6daddr")
    a.op(LD | W | ABS, N + 24)
    for w in range(1, 4):
        a.op(MISC | TAX)
        a.op(LD | W | ABS, N + 24 + 4 * w)
        a.op(ALU | XOR | X)
    a.op(ST, M_ADDR)
    a.op(JMP | JA, "hash")

    a.label("hash")
    _hash_tail(a)
    # last: the kernel's checker follows the fall-through after a return too, and the hash
    # reads scratch slots this path never wrote
    a.label("ret0")
    a.op(RET | K, 0)
    return a.assemble()
