"""Per-packet decision records (DESIGN.md "Decision record") written as JSON lines, CSV or Parquet.

Columns: pkt, ts, dir, proto, client, vip, rs, action, reason, state, conn. Formatting is done
per burst with numpy (names by table lookup, each distinct address rendered once).
"""
from __future__ import annotations

import ipaddress
import json
from typing import Optional

import numpy as np

COLUMNS = ("pkt", "ts", "dir", "proto", "client", "vip", "rs", "action", "reason", "state", "conn")

_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6", 50: "esp", 51: "ah"}


def _table(mapping) -> np.ndarray:
    out = np.empty(256, dtype=object)
    out[:] = None
    items = mapping.items() if isinstance(mapping, dict) else enumerate(mapping)
    for k, v in items:
        out[int(k)] = v
    return out


def _addr_text(b: bytes) -> str:
    if b[:12] == b"\x00" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(b[12:]))
    return str(ipaddress.IPv6Address(b))


def _endpoints(addrs: np.ndarray, ports: np.ndarray) -> np.ndarray:
    """Render 16-byte addresses + ports as ``a.b.c.d:p`` / ``[v6]:p``; each distinct address once."""
    if len(addrs) == 0:
        return np.empty(0, dtype=object)
    flat = np.ascontiguousarray(addrs).reshape(len(addrs), -1).view(np.dtype((np.void, 16))).ravel()
    uniq, inv = np.unique(flat, return_inverse=True)
    texts = []
    for u in uniq:
        b = bytes(u)
        t = _addr_text(b)
        texts.append(t if "." in t and ":" not in t else f"[{t}]")
    base = np.array(texts, dtype=object)[inv]
    return np.array([f"{a}:{p}" for a, p in zip(base.tolist(), ports.tolist())], dtype=object)


class DecisionFormatter:
    """Turns (packet rows, decision rows) of one engine into the decision-record columns."""

    def __init__(self, engine):
        from .engine import ACTIONS, DIRS, REASONS, state_name

        self.actions = _table(ACTIONS)
        self.reasons = _table(REASONS)
        self.dirs = _table(DIRS)
        self.state_name = state_name
        self._states: dict[int, np.ndarray] = {}
        self.engine = engine
        self._rs_names: Optional[np.ndarray] = None
        self._svc_eps: Optional[list] = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read real servers and services (after rule edits)."""
        dests = self.engine.dests()
        n = max((d["id"] for d in dests), default=-1) + 2
        names = np.empty(n, dtype=object)
        names[:] = None
        for d in dests:
            ep = f"[{d['addr']}]:{d['port']}" if ":" in d["addr"] else f"{d['addr']}:{d['port']}"
            names[d["id"]] = ep
        self._rs_names = names

    def _state_table(self, proto: int) -> np.ndarray:
        t = self._states.get(proto)
        if t is None:
            t = np.empty(256, dtype=object)
            for s in range(256):
                try:
                    t[s] = self.state_name(proto, s)
                except (KeyError, IndexError, ValueError):
                    t[s] = None
            self._states[proto] = t
        return t

    def columns(self, rows: np.ndarray, dec: np.ndarray) -> dict:
        n = len(dec)
        is_out = dec["dir"] == 2
        src = _endpoints(rows["src"], rows["sport"])
        dst = _endpoints(rows["dst"], rows["dport"])
        client = np.where(is_out, dst, src)
        vip = np.where(is_out, src, dst)
        rs_ids = dec["rs"].astype(np.int64)
        rs_names = self._rs_names
        if n and rs_ids.max(initial=-1) >= len(rs_names) - 1:
            self.refresh()
            rs_names = self._rs_names
        rs = rs_names[np.where(rs_ids >= 0, rs_ids, len(rs_names) - 1)]
        # A NAT reply comes from the real server: its virtual side is the service's address.
        if is_out.any():
            from_rs = is_out & (rs == src)
            if from_rs.any():
                svcs = {s["id"]: s for s in self.engine.services()}
                for i in np.flatnonzero(from_rs):
                    s = svcs.get(int(dec["svc"][i]))
                    if s is not None and not s.get("fwmark"):
                        a = s["addr"]
                        vip[i] = f"[{a}]:{s['port']}" if ":" in a else f"{a}:{s['port']}"
        no_ip = dec["dir"] == 0
        if no_ip.any():
            bad = rows["af"] == 0
            client = np.where(bad, None, client)
            vip = np.where(bad, None, vip)
        protos = dec["proto"]
        state = np.empty(n, dtype=object)
        state[:] = None
        has_conn = dec["conn"] != 0
        for p in np.unique(protos[has_conn]):
            m = has_conn & (protos == p)
            state[m] = self._state_table(int(p))[dec["state"][m]]
        proto_names = np.array([_PROTO_NAMES.get(int(p), str(int(p))) if p else None for p in range(256)],
                               dtype=object)
        ts = dec["ts_ns"]
        return {
            "pkt": dec["pkt"],
            "ts_ns": ts,
            "dir": self.dirs[dec["dir"]],
            "proto": proto_names[protos],
            "client": client,
            "vip": vip,
            "rs": rs,
            "action": self.actions[dec["action"]],
            "reason": self.reasons[dec["reason"]],
            "state": state,
            "conn": dec["conn"],
        }


def _ts_text(ts_ns: np.ndarray) -> list[str]:
    sec, frac = np.divmod(ts_ns.astype(np.int64), 1_000_000_000)
    return [f"{s}.{f:09d}" for s, f in zip(sec.tolist(), frac.tolist())]


class DecisionWriter:
    """Writes decision records to ``.jsonl``, ``.csv`` or ``.parquet`` (chosen by extension or fmt)."""

    def __init__(self, path: str, engine, fmt: Optional[str] = None):
        if fmt is None:
            ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
            fmt = {"jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl", "csv": "csv", "parquet": "parquet",
                   "pq": "parquet"}.get(ext)
            if fmt is None:
                raise ValueError(f"{path}: unknown decisions format (use .jsonl, .csv or .parquet)")
        self.fmt = fmt
        self.path = path
        self.fmtr = DecisionFormatter(engine)
        self.rows = 0
        self._pq_writer = None
        self._pq_schema = None
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ValueError("Parquet output needs pyarrow: pip install 'ipvsflow[parquet]'") from None
            self._fh = None
        else:
            self._fh = open(path, "w", encoding="utf-8", newline="")
            if fmt == "csv":
                self._fh.write(",".join(COLUMNS) + "\n")

    def refresh(self) -> None:
        self.fmtr.refresh()

    def write(self, rows: np.ndarray, dec: np.ndarray) -> None:
        if len(dec) == 0:
            return
        c = self.fmtr.columns(rows, dec)
        self.rows += len(dec)
        if self.fmt == "parquet":
            self._write_parquet(c)
            return
        ts = _ts_text(c["ts_ns"])
        cols = [c["pkt"].tolist(), ts, c["dir"].tolist(), c["proto"].tolist(), c["client"].tolist(),
                c["vip"].tolist(), c["rs"].tolist(), c["action"].tolist(), c["reason"].tolist(),
                c["state"].tolist(), c["conn"].tolist()]
        if self.fmt == "jsonl":
            def q(v):
                return "null" if v is None else json.dumps(v)
            lines = [
                f'{{"pkt":{p},"ts":{t},"dir":{q(d)},"proto":{q(pr)},"client":{q(cl)},"vip":{q(vi)},'
                f'"rs":{q(r)},"action":{q(a)},"reason":{q(re)},"state":{q(s)},"conn":{cn if cn else "null"}}}\n'
                for p, t, d, pr, cl, vi, r, a, re, s, cn in zip(*cols)]
        else:
            def e(v):
                return "" if v is None else str(v)
            lines = [",".join((str(p), t, e(d), e(pr), e(cl), e(vi), e(r), e(a), e(re), e(s),
                               str(cn) if cn else "")) + "\n"
                     for p, t, d, pr, cl, vi, r, a, re, s, cn in zip(*cols)]
        self._fh.write("".join(lines))

    def _write_parquet(self, c: dict) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        conn = c["conn"].astype(np.uint64)
        table = pa.table({
            "pkt": pa.array(c["pkt"].astype(np.uint64)),
            "ts": pa.array((c["ts_ns"].astype(np.int64) / 1e9)),
            "ts_ns": pa.array(c["ts_ns"].astype(np.int64)),
            "dir": pa.array(c["dir"].tolist(), pa.string()).dictionary_encode(),
            "proto": pa.array(c["proto"].tolist(), pa.string()).dictionary_encode(),
            "client": pa.array(c["client"].tolist(), pa.string()),
            "vip": pa.array(c["vip"].tolist(), pa.string()).dictionary_encode(),
            "rs": pa.array(c["rs"].tolist(), pa.string()).dictionary_encode(),
            "action": pa.array(c["action"].tolist(), pa.string()).dictionary_encode(),
            "reason": pa.array(c["reason"].tolist(), pa.string()).dictionary_encode(),
            "state": pa.array(c["state"].tolist(), pa.string()).dictionary_encode(),
            "conn": pa.array(conn, mask=(conn == 0)),
        })
        table = table.cast(pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
                                      for f in table.schema]))
        if self._pq_writer is None:
            self._pq_schema = table.schema
            self._pq_writer = pq.ParquetWriter(self.path, self._pq_schema)
        self._pq_writer.write_table(table.cast(self._pq_schema))

    def close(self) -> None:
        if self._pq_writer is not None:
            self._pq_writer.close()
            self._pq_writer = None
        elif self.fmt == "parquet" and self.rows == 0:
            import pyarrow as pa
            import pyarrow.parquet as pq
            pq.write_table(pa.table({k: pa.array([], pa.string()) for k in COLUMNS}), self.path)
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_decisions(path: str) -> list[dict]:
    """Read a decisions file back (any of the three formats) as a list of dicts (tests, tools)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        t = pq.read_table(path).to_pylist()
        for r in t:
            r.pop("ts_ns", None)
        return t
    if path.endswith(".csv"):
        import csv
        out = []
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                d = {k: (v if v != "" else None) for k, v in r.items()}
                d["pkt"] = int(d["pkt"])
                d["ts"] = float(d["ts"])
                d["conn"] = int(d["conn"]) if d["conn"] is not None else None
                out.append(d)
        return out
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
