"""Per-packet decision records (DESIGN.md "Decision record") as JSON lines, CSV or Parquet.

Columns: pkt, ts, dir, proto, client, vip, rs, action, reason, state, conn. Formatting runs in C
over each burst (ipvsflow._analysis.DecisionEncoder): JSON lines and CSV are rendered straight
into a byte buffer, Parquet gets columnar buffers (string columns built as Arrow offsets + bytes,
the small vocabularies as dictionary columns, ``ts`` as a UTC timestamp in ns), one row group per
``chunk`` decisions.
Null values: ``rs`` without a real server, ``state``/``conn`` without a connection, ``reason``
when there is none, ``client``/``vip``/``proto`` for packets that are not IP.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

COLUMNS = ("pkt", "ts", "dir", "proto", "client", "vip", "rs", "action", "reason", "state", "conn")
FORMATS = ("jsonl", "csv", "parquet")

_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "icmpv6", 50: "esp", 51: "ah"}
_EXT = {"jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl", "csv": "csv", "parquet": "parquet", "pq": "parquet"}


def format_for(path: str, fmt: Optional[str] = None) -> str:
    """The output format of ``path``: ``fmt`` if given, else from the extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown decisions format {fmt!r} (use {', '.join(FORMATS)})")
        return fmt
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    f = _EXT.get(ext)
    if f is None:
        raise ValueError(f"{path}: unknown decisions format (use .jsonl, .csv or .parquet, "
                         "or --decisions-format)")
    return f


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class _Vocab:
    """Every name a decision column can take, and code -> name-index tables for the encoder."""

    def __init__(self):
        from .engine import ACTIONS, DIRS, REASONS
        from .engine.names import PROTO_STATE_NAMES
        names: list[str] = []
        index: dict[str, int] = {}

        def idx(name):
            if name is None:
                return -1
            if name not in index:
                index[name] = len(names)
                names.append(name)
            return index[name]

        self.act = [idx(a) if i else -1 for i, a in enumerate(ACTIONS)] + [-1] * (8 - len(ACTIONS))
        self.reason = [idx(r) if r else -1 for r in REASONS] + [-1] * (256 - len(REASONS))
        self.dirs = [idx(d) for d in DIRS] + [-1] * (256 - len(DIRS))
        self.proto = [idx(_PROTO_NAMES.get(p, str(p))) for p in range(256)]
        state = []
        for proto in (6, 17, 132, 0):
            tbl = PROTO_STATE_NAMES.get(proto, ())
            state += [idx(tbl[s]) if s < len(tbl) else (-1 if s == 0xFF else idx("ERR!")) for s in range(256)]
        self.state = state
        self.names = names

    def encoder(self, fmt: str):
        from ._analysis import DecisionEncoder
        return DecisionEncoder(fmt, self.names, self.act, self.reason, self.dirs, self.proto, self.state)


def server_texts(engine) -> tuple[list[str], list[str]]:
    """Endpoint text per real-server id and per service id ('' for fwmark services)."""
    rs = [_endpoint(d["addr"], d["port"]) for d in engine.dests()]
    svc_by_id = {s["id"]: s for s in engine.services()}
    n = max(svc_by_id, default=-1) + 1
    svc = ["" if (i not in svc_by_id or svc_by_id[i].get("fwmark")) else
           _endpoint(svc_by_id[i]["addr"], svc_by_id[i]["port"]) for i in range(n)]
    return rs, svc


class DecisionWriter:
    """Writes one engine's decisions to ``path`` as ``.jsonl``, ``.csv`` or ``.parquet``.

    ``write(batch, start, stop, dec)`` takes a burst as :func:`ipvsflow.replay.replay` hands
    it over; call ``refresh()`` after rule changes (new real servers) and ``close()`` at the end.
    """

    def __init__(self, path: str, engine, fmt: Optional[str] = None, chunk: int = 1 << 17,
                 compression: str = "lz4"):
        self.fmt = format_for(path, fmt)
        self.path = path
        self.engine = engine
        self.rows = 0
        self._vocab = _Vocab()
        self._pq = None
        self._chunk = None
        self._pool = None
        self._pending = None
        if self.fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
                import pyarrow.parquet  # noqa: F401
            except ImportError:
                raise ValueError("Parquet output needs pyarrow: pip install 'ipvsflow[parquet]'") from None
            from ._analysis import ColumnChunk
            self._enc = self._vocab.encoder("columns")
            self._chunk = ColumnChunk(chunk)
            self._compression = compression
            self._fh = open(path, "wb")      # fail early on a bad path, like the text formats
        else:
            self._enc = self._vocab.encoder(self.fmt)
            self._fh = open(path, "wb", buffering=0)
            self._buf: list[bytes] = []
            self._buffered = 0
            if self.fmt == "csv":
                self._fh.write((",".join(COLUMNS) + "\n").encode())
        self.refresh()

    def refresh(self) -> None:
        """Re-read real servers and services (after rule changes)."""
        rs, svc = server_texts(self.engine)
        self._rs_names = rs
        self._enc.set_servers(rs, svc)

    def write(self, batch, start: int, stop: int, dec: np.ndarray) -> None:
        m = stop - start
        if m <= 0:
            return
        self.rows += m
        if self._chunk is not None:
            done = 0
            while done < m:
                room = self._chunk.cap - self._chunk.n
                k = min(room, m - done)
                self._enc.columns(batch, start + done, start + done + k, dec[done:done + k], self._chunk)
                done += k
                if self._chunk.n == self._chunk.cap:
                    self._flush_parquet()
            return
        data = self._enc.encode(batch, start, stop, dec)
        self._buf.append(data)
        self._buffered += len(data)
        if self._buffered >= 1 << 22:
            self._flush_text()

    def _flush_text(self) -> None:
        if self._buf:
            self._fh.write(b"".join(self._buf))
            self._buf = []
            self._buffered = 0

    def _table(self):
        import pyarrow as pa
        c = self._chunk
        n = int(c.n)
        names = pa.array(self._vocab.names, pa.string())

        def dict_col(codes):
            codes = codes[:n]
            mask = codes < 0
            idx = pa.array(codes, mask=mask if mask.any() else None)
            return pa.DictionaryArray.from_arrays(idx, names)

        client_text, vip_text = c.texts()
        ip = c.a_ip[:n].astype(bool)
        valid = None if ip.all() else pa.py_buffer(np.packbits(ip, bitorder="little").tobytes())
        nulls = int(n - ip.sum())
        client = pa.StringArray.from_buffers(n, pa.py_buffer(c.a_client_off[:n + 1].tobytes()),
                                             pa.py_buffer(client_text), valid, nulls)
        vip = pa.StringArray.from_buffers(n, pa.py_buffer(c.a_vip_off[:n + 1].tobytes()),
                                          pa.py_buffer(vip_text), valid, nulls)
        rs_ids = c.a_rs[:n]
        rs_mask = rs_ids < 0
        rs = pa.DictionaryArray.from_arrays(pa.array(rs_ids, mask=rs_mask if rs_mask.any() else None),
                                            pa.array(self._rs_names or [""], pa.string()))
        conn = c.a_conn[:n]
        return pa.table({
            "pkt": pa.array(c.a_pkt[:n]),
            "ts": pa.array(c.a_ts[:n], pa.timestamp("ns", tz="UTC")),
            "dir": dict_col(c.a_dir),
            "proto": dict_col(c.a_proto),
            "client": client,
            "vip": vip,
            "rs": rs,
            "action": dict_col(c.a_action),
            "reason": dict_col(c.a_reason),
            "state": dict_col(c.a_state),
            "conn": pa.array(conn, mask=(conn == 0)),
        })

    def _flush_parquet(self) -> None:
        # Arrow arrays share the chunk's buffers; the Parquet encoding (which releases the GIL)
        # runs on a writer thread while the next chunk fills, one chunk in flight at most.
        import pyarrow.parquet as pq
        from ._analysis import ColumnChunk
        if self._chunk.n == 0 and self._pq is not None:
            return
        table = self._table()
        if self._pq is None:
            # the small vocabularies are dictionary columns already; high-cardinality columns
            # (client, packet numbers, times) are cheaper written plain, without statistics
            self._pq = pq.ParquetWriter(self._fh, table.schema, compression=self._compression,
                                        use_dictionary=["dir", "proto", "vip", "rs", "action", "reason", "state"],
                                        write_statistics=["pkt", "ts", "conn"])
        self._wait()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
        self._pending = self._pool.submit(self._pq.write_table, table)
        self._chunk = ColumnChunk(self._chunk.cap)

    def _wait(self) -> None:
        if self._pending is not None:
            f, self._pending = self._pending, None
            f.result()

    def close(self) -> None:
        if self._fh is None:
            return
        if self.fmt == "parquet":
            try:
                if self._chunk.n or self._pq is None:
                    self._flush_parquet()
                self._wait()
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                    self._pool = None
                if self._pq is not None:
                    self._pq.close()
                    self._pq = None
        else:
            self._flush_text()
        self._fh.close()
        self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_decisions(path: str, fmt: Optional[str] = None) -> list[dict]:
    """Read a decisions file back (any of the three formats) as a list of dicts with the
    DESIGN.md columns (``ts`` as float seconds)."""
    fmt = format_for(path, fmt)
    if fmt == "parquet":
        import pyarrow.parquet as pq
        t = pq.read_table(path)
        ts = t.column("ts").cast("int64").to_numpy(zero_copy_only=False) if t.num_rows else np.zeros(0, np.int64)
        rows = t.drop_columns(["ts"]).to_pylist()
        for r, v in zip(rows, ts.tolist()):
            r["ts"] = v / 1e9
        return rows
    if fmt == "csv":
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
