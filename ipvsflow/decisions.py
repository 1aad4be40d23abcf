"""Per-packet decision records (DESIGN.md "Decision record") as JSON lines, CSV or Parquet.

Columns: pkt, ts, dir, proto, client, vip, rs, action, reason, state, conn. Formatting runs in C
over each burst (ipvsflow._analysis.DecisionEncoder): JSON lines and CSV are rendered straight
into the output buffer, Parquet gets columnar buffers (client as Arrow offsets + bytes; the small
vocabularies, vip and rs as dictionary columns; ``ts`` as a UTC timestamp in ns), one row group
per ``chunk`` decisions.
``rs`` of a server configured with port 0 (fwmark and port-0 services) carries the port its
connection uses, as ``ipvsadm -Lnc`` shows it.
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


def port0_addresses(engine) -> list[str]:
    """Per real-server id: the address text of a server configured with port 0 (fwmark and
    port-0 services: its connections keep the packet's port, which the records then show),
    '' for the others."""
    return [("" if d["port"] else (f"[{d['addr']}]" if ":" in d["addr"] else d["addr"]))
            for d in engine.dests()]


# Parquet layout. The small vocabularies, vip and rs are dictionary columns built by the encoder
# (indices only per row); pkt, ts and conn are nearly sorted integers, which delta encoding
# stores in a few bits a row at a fraction of the cost of compressing them. Only client
# (distinct "addr:port" strings) is worth a general-purpose codec.
_PARQUET_DELTA = ("pkt", "ts", "conn")
_PARQUET_DICT = ("dir", "proto", "vip", "rs", "action", "reason", "state")
PARQUET_COMPRESSION = "snappy"
_CODECS = ("snappy", "lz4", "zstd", "gzip", "brotli")
_TEXT_BUFFER = 1 << 22


class DecisionWriter:
    """Writes one engine's decisions to ``path`` as ``.jsonl``, ``.csv`` or ``.parquet``.

    ``write(batch, start, stop, dec)`` takes a burst as :func:`ipvsflow.replay.replay` hands
    it over; call ``refresh()`` after rule changes (new real servers) and ``close()`` at the end.
    Parquet: one row group per ``chunk`` decisions; ``compression`` is the codec of the client
    column (the others are dictionary or delta encoded), or a dict ``{column: codec}``.
    """

    def __init__(self, path: str, engine, fmt: Optional[str] = None, chunk: int = 1 << 18,
                 compression=PARQUET_COMPRESSION):
        self.fmt = format_for(path, fmt)
        self.path = path
        self.engine = engine
        self.rows = 0
        self._vocab = _Vocab()
        self._pq = None
        self._chunk = None
        self._spare = None
        self._pool = None
        self._pending = None
        self._fh = None
        if self.fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
                import pyarrow.parquet  # noqa: F401
            except ImportError:
                raise ValueError("Parquet output needs pyarrow: pip install 'ipvsflow[parquet]'") from None
            from ._analysis import ColumnChunk
            if isinstance(compression, dict):
                bad = set(compression) - set(COLUMNS)
                if bad:
                    raise ValueError(f"compression for unknown columns: {', '.join(sorted(bad))}")
                self._compression = {c: compression.get(c, "none") for c in COLUMNS}
            else:
                self._compression = {c: "none" for c in COLUMNS}
                self._compression["client"] = compression or "none"
            for codec in set(self._compression.values()):     # fail now, not after the replay
                if codec not in ("none", "uncompressed") and not (
                        codec in _CODECS and pyarrow.Codec.is_available(codec)):
                    raise ValueError(f"Parquet compression {codec!r} is not available "
                                     f"(use none, {', '.join(_CODECS)})")
            self._enc = self._vocab.encoder("columns")
            self._chunk = ColumnChunk(chunk)
            self._names = pyarrow.array(self._vocab.names, pyarrow.string())
            self._ts_type = pyarrow.timestamp("ns", tz="UTC")     # the time zone lookup: once
            # fail early on a bad path, like the text formats; a native file, so the writer
            # thread never waits for the GIL to write a page
            self._fh = pyarrow.OSFile(path, "wb")
        else:
            self._enc = self._vocab.encoder(self.fmt)
            self._fh = open(path, "wb", buffering=0)
            # rows are rendered straight into this buffer and written from it without a copy
            self._out = bytearray(_TEXT_BUFFER)
            self._view = memoryview(self._out)
            self._pos = 0
            if self.fmt == "csv":
                self._fh.write((",".join(COLUMNS) + "\n").encode())
        self.refresh()

    def refresh(self) -> None:
        """Re-read real servers and services (after rule changes)."""
        rs, svc = server_texts(self.engine)
        self._enc.set_servers(rs, svc, port0_addresses(self.engine))

    def write(self, batch, start: int, stop: int, dec: np.ndarray) -> None:
        m = stop - start
        if m <= 0:
            return
        self.rows += m
        if self._chunk is not None:
            c = self._chunk
            if c.n + m < c.cap:          # the usual case: the whole burst fits
                self._enc.columns(batch, start, stop, dec, c)
                return
            done = 0
            while done < m:
                room = self._chunk.cap - self._chunk.n
                k = min(room, m - done)
                self._enc.columns(batch, start + done, start + done + k, dec[done:done + k], self._chunk)
                done += k
                if self._chunk.n == self._chunk.cap:
                    self._flush_parquet()
            return
        need = self._enc.max_bytes(m)
        if self._pos + need > len(self._out):
            self._flush_text()
            if need > len(self._out):
                self._out = bytearray(need)
                self._view = memoryview(self._out)
        self._pos = self._enc.encode_into(batch, start, stop, dec, self._out, self._pos)

    def _flush_text(self) -> None:
        view = self._view[:self._pos]
        while view:                      # an unbuffered write may take only part of it
            view = view[self._fh.write(view):]
        self._pos = 0

    def _table(self):
        import pyarrow as pa
        c = self._chunk
        n = int(c.n)
        names = self._names

        def dict_col(codes, dictionary):
            codes = codes[:n]
            mask = codes < 0
            idx = pa.array(codes, mask=mask if mask.any() else None)
            return pa.DictionaryArray.from_arrays(idx, dictionary)

        def endpoints(d):
            off, text = d.arrays()
            return pa.StringArray.from_buffers(len(off) - 1, pa.py_buffer(off), pa.py_buffer(text))

        ip = c.a_ip[:n].astype(bool)
        valid = None if ip.all() else pa.py_buffer(np.packbits(ip, bitorder="little"))
        client = pa.StringArray.from_buffers(n, pa.py_buffer(c.a_client_off[:n + 1]),
                                             pa.py_buffer(c.client_texts()), valid, int(n - ip.sum()))
        conn = c.a_conn[:n]
        return pa.table({
            "pkt": pa.array(c.a_pkt[:n]),
            "ts": pa.array(c.a_ts[:n], self._ts_type),
            "dir": dict_col(c.a_dir, names),
            "proto": dict_col(c.a_proto, names),
            "client": client,
            "vip": dict_col(c.a_vip, endpoints(c.vip_dict)),
            "rs": dict_col(c.a_rs, endpoints(c.rs_dict)),
            "action": dict_col(c.a_action, names),
            "reason": dict_col(c.a_reason, names),
            "state": dict_col(c.a_state, names),
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
            self._pq = pq.ParquetWriter(self._fh, table.schema, compression=self._compression,
                                        use_dictionary=list(_PARQUET_DICT),
                                        column_encoding={c: "DELTA_BINARY_PACKED" for c in _PARQUET_DELTA},
                                        write_statistics=list(_PARQUET_DELTA))
        self._wait()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
        self._pending = self._pool.submit(self._pq.write_table, table)
        # the other buffer's table was written (waited for above): fill that one next
        spare = self._spare
        self._spare = self._chunk
        if spare is None:
            spare = ColumnChunk(self._chunk.cap)
        else:
            spare.reset()
        self._chunk = spare

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
                self._fh.close()
                self._fh = None
            return
        try:
            self._flush_text()
        finally:
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
