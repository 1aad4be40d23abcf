"""Connection records, Zeek conn.log-like: one row per client connection.

Rows are built while the decisions stream by (ipvsflow._analysis.ConnLog groups packets by the
decision's connection serial). A SYN/INIT that IPVS keeps on an existing entry (port reuse with
the old entry kept) starts a new row on the same entry, so every client connection has its
row; a SYN on an entry still in SYN_RECV is a retransmission and stays in its row.

Columns (Zeek names first, then IPVS ones):

``ts`` first packet (epoch s), ``uid`` (``C<serial>`` or ``C<serial>.<n>`` for the n-th reuse of
an entry), ``id.orig_h``/``id.orig_p`` client, ``id.resp_h``/``id.resp_p`` virtual service,
``proto``, ``duration``, ``orig_bytes``/``resp_bytes`` (L4 payload), ``conn_state`` (Zeek's
codes from the flags seen: S0 S1 SF REJ S2 S3 RSTO RSTR RSTOS0 RSTRH SH SHR OTH), ``history``
(Zeek letters, each recorded once: S H A D F R from the client, lower case from the other side),
``orig_pkts``/``orig_ip_bytes``/``resp_pkts``/``resp_ip_bytes``; ``real_server``, ``fwd``,
``ipvs_state`` (at its last packet), ``ipvs_state_path`` (states in order, ``>``-separated),
``reuse_of`` (uid of the connection whose entry it reused), ``reuse_decision`` (kept,
rescheduled, dropped: the first SYN was dropped and this is the client's retry; dest_deleted),
``reuse_delay`` (s from the first dropped SYN to this connection's, for ``dropped``),
``syn_drops`` (reusing SYNs dropped on this entry), ``dropped_pkts`` (this connection's
packets IPVS dropped).
"""
from __future__ import annotations

import ipaddress
import json
import os
from typing import Optional

import numpy as np

COLUMNS = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "duration",
           "orig_bytes", "resp_bytes", "conn_state", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts",
           "resp_ip_bytes", "real_server", "fwd", "ipvs_state", "ipvs_state_path", "reuse_of",
           "reuse_decision", "reuse_delay", "syn_drops", "dropped_pkts")
ZEEK_TYPES = ("time", "string", "addr", "port", "addr", "port", "enum", "interval", "count", "count",
              "string", "string", "count", "count", "count", "count", "string", "string", "string",
              "string", "string", "string", "interval", "count", "count")
FORMATS = ("zeek", "jsonl", "csv", "parquet")
_EXT = {"log": "zeek", "tsv": "zeek", "zeek": "zeek", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl",
        "csv": "csv", "parquet": "parquet", "pq": "parquet"}
_PROTO = {6: "tcp", 17: "udp", 132: "sctp"}
_FWD = {0: "Masq", 1: "Local", 2: "Tunnel", 3: "Route", 4: "Bypass"}

# history letter bits (ipvsflow._analysis.ConnLog): S H A D F R, then s h a d f r
_S, _H, _A, _D, _F, _R = (1 << i for i in range(6))
_s, _h, _a, _d, _f, _r = (1 << i for i in range(6, 12))


def format_for(path: str, fmt: Optional[str] = None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown connections format {fmt!r} (use {', '.join(FORMATS)})")
        return fmt
    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    f = _EXT.get(ext)
    if f is None:
        raise ValueError(f"{path}: unknown connections format (use .log or .tsv for Zeek TSV, .jsonl, .csv "
                         "or .parquet)")
    return f


def conn_states(seen: np.ndarray, resp_pkts: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """Zeek's conn_state codes from the history letters seen (vectorised)."""
    seen = seen.astype(np.int64)
    orig_syn = (seen & _S) != 0
    resp_sa = (seen & _h) != 0
    ofin, rfin = (seen & _F) != 0, (seen & _f) != 0
    orst, rrst = (seen & _R) != 0, (seen & _r) != 0
    est = orig_syn & resp_sa
    out = np.full(len(seen), "OTH", dtype=object)
    attempt = orig_syn & ~resp_sa
    out[attempt] = "S0"
    out[attempt & ofin] = "SH"
    out[attempt & orst] = "RSTOS0"
    out[attempt & rrst] = "REJ"
    mid = ~orig_syn & resp_sa
    out[mid & rfin] = "SHR"
    out[mid & rrst] = "RSTRH"
    out[est] = "S1"
    out[est & rfin] = "S3"
    out[est & ofin] = "S2"
    out[est & ofin & rfin] = "SF"
    out[est & rrst] = "RSTR"
    out[est & orst] = "RSTO"
    # no handshake to go by (UDP, or nothing of it seen): a reply or not
    flowish = (proto == 17) | ((proto != 6) & (proto != 132))
    out[flowish] = np.where(resp_pkts[flowish] > 0, "SF", "S0")
    return out


def _addr_texts(addrs: np.ndarray) -> np.ndarray:
    if len(addrs) == 0:
        return np.empty(0, dtype=object)
    flat = np.ascontiguousarray(addrs).view(np.dtype((np.void, 16))).ravel()
    uniq, inv = np.unique(flat, return_inverse=True)
    texts = []
    for u in uniq.tolist():
        b = bytes(u)
        if b[:12] == b"\x00" * 10 + b"\xff\xff":
            texts.append(str(ipaddress.IPv4Address(b[12:])))
        else:
            texts.append(str(ipaddress.IPv6Address(b)))
    return np.array(texts, dtype=object)[inv.ravel()]


def _dropped_links(rows: np.ndarray, drops) -> tuple[np.ndarray, np.ndarray]:
    """For rows that opened a fresh entry (no reuse recorded), the run of dropped reusing SYNs
    on the same tuple just before them: (row + 1 of the entry they were dropped on, ts of the
    first drop of the run); 0 / -1 where none."""
    key_d, ts_d, row_d = drops
    n = len(rows)
    link = np.zeros(n, np.uint32)
    first = np.full(n, -1, np.int64)
    if len(key_d) == 0 or n == 0:
        return link, first
    cand = np.flatnonzero((rows["opened"] != 0) & (rows["reuse_dec"] == 0) & (rows["key"] != 0))
    if len(cand) == 0:
        return link, first
    keys = np.concatenate([key_d, rows["key"][cand]])
    ts = np.concatenate([ts_d, rows["first_ts"][cand]])
    typ = np.concatenate([np.zeros(len(key_d), np.int8), np.ones(len(cand), np.int8)])
    ref = np.concatenate([np.arange(len(key_d)), cand])
    o = np.lexsort((typ, ts, keys))
    keys, ts, typ, ref = keys[o], ts[o], typ[o], ref[o]
    pos = np.arange(len(o))
    newk = np.ones(len(o), bool)
    newk[1:] = keys[1:] != keys[:-1]
    prev_cand = np.zeros(len(o), bool)
    prev_cand[1:] = typ[:-1] == 1
    run_start = (typ == 0) & (newk | prev_cand)
    last_ev = np.maximum.accumulate(np.where(typ == 0, pos, -1))
    last_start = np.maximum.accumulate(np.where(run_start, pos, -1))
    key_start = np.maximum.accumulate(np.where(newk, pos, 0))
    cand_pos = np.maximum.accumulate(np.where(typ == 1, pos, -1))
    prev_cand = np.r_[-1, cand_pos[:-1]]
    ok = (typ == 1) & (last_ev >= key_start) & (last_ev > prev_cand)
    c_rows = ref[ok]
    ev = ref[last_ev[ok]]
    link[c_rows] = row_d[ev]
    first[c_rows] = ts[last_start[ok]]
    return link, first


def conn_columns(ana) -> dict:
    """The connection rows of an Analysis as columns (numpy arrays and lists)."""
    from .engine.names import PROTO_STATE_NAMES
    log = ana.connlog
    rows = log.rows_array()
    n = len(rows)
    serial = rows["serial"]
    seg = rows["seg"]
    uid = np.array([f"C{s}" if not g else f"C{s}.{g}" for s, g in zip(serial.tolist(), seg.tolist())],
                   dtype=object)
    link, drop_ts = _dropped_links(rows, log.drop_events())
    reuse_of = rows["reuse_of"].astype(np.int64)
    dec = rows["reuse_dec"].astype(np.int64)
    dropped = link > 0
    reuse_of = np.where(dropped, link, reuse_of)
    dec = np.where(dropped, 3, dec)
    delay = np.where(dropped, (rows["first_ts"] - drop_ts) / 1e9, np.nan)
    reuse_uid = np.where(reuse_of > 0, uid[np.maximum(reuse_of - 1, 0)] if n else uid, None)
    dec_names = np.array([None, "kept", "rescheduled", "dropped", "dest_deleted"], dtype=object)[dec]
    dests = {d["id"]: d for d in ana.engine.dests()}
    rs_text = {i: (f"[{d['addr']}]:{d['port']}" if ":" in d["addr"] else f"{d['addr']}:{d['port']}")
               for i, d in dests.items()}
    real_server = np.array([rs_text.get(r) if r >= 0 else None for r in rows["rs"].tolist()], dtype=object)
    proto = rows["proto"]
    states = rows["states"]
    nst = rows["nstates"]
    path, last = [], []
    for p, st, k in zip(proto.tolist(), states.tolist(), nst.tolist()):
        names = PROTO_STATE_NAMES.get(p, ())
        seq = [names[s] if s < len(names) else "ERR!" for s in st[:min(k, len(st))]]
        if k > len(st):
            seq.append("...")
        path.append(">".join(seq) if seq else None)
        last.append(seq[-1] if seq and seq[-1] != "..." else (names[st[-1]] if k > len(st) else None))
    return {
        "ts": rows["first_ts"] / 1e9,
        "uid": uid,
        "id.orig_h": _addr_texts(rows["caddr"]),
        "id.orig_p": rows["cport"].astype(np.int64),
        "id.resp_h": _addr_texts(rows["vaddr"]),
        "id.resp_p": rows["vport"].astype(np.int64),
        "proto": np.array([_PROTO.get(p, str(p)) for p in proto.tolist()], dtype=object),
        "duration": (rows["last_ts"] - rows["first_ts"]) / 1e9,
        "orig_bytes": rows["orig_bytes"].astype(np.int64),
        "resp_bytes": rows["resp_bytes"].astype(np.int64),
        "conn_state": conn_states(rows["seen"], rows["resp_pkts"], proto),
        "history": rows["hist"].astype("U20").astype(object),
        "orig_pkts": rows["orig_pkts"].astype(np.int64),
        "orig_ip_bytes": rows["orig_ip_bytes"].astype(np.int64),
        "resp_pkts": rows["resp_pkts"].astype(np.int64),
        "resp_ip_bytes": rows["resp_ip_bytes"].astype(np.int64),
        "real_server": real_server,
        "fwd": np.array([_FWD.get(f) for f in rows["fwd"].tolist()], dtype=object),
        "ipvs_state": np.array(last, dtype=object),
        "ipvs_state_path": np.array(path, dtype=object),
        "reuse_of": reuse_uid,
        "reuse_decision": dec_names,
        "reuse_delay": delay,
        "syn_drops": rows["syn_drops"].astype(np.int64),
        "dropped_pkts": rows["dropped"].astype(np.int64),
    }


def write_conns(ana, path: str, fmt: Optional[str] = None) -> int:
    """Write the connection rows of ``ana`` to ``path``; returns the row count."""
    fmt = format_for(path, fmt)
    cols = conn_columns(ana)
    n = len(cols["uid"])
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        arrays = {}
        for k in COLUMNS:
            v = cols[k]
            if v.dtype == object:
                arrays[k] = pa.array(v.tolist(), pa.string())
            elif k == "reuse_delay":
                arrays[k] = pa.array(v, mask=np.isnan(v))
            else:
                arrays[k] = pa.array(v)
        pq.write_table(pa.table(arrays), path)
        return n
    lists = [cols[k].tolist() for k in COLUMNS]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if fmt == "jsonl":
            for row in zip(*lists):
                d = {}
                for k, v in zip(COLUMNS, row):
                    if isinstance(v, float) and v != v:
                        v = None
                    d[k] = v
                fh.write(json.dumps(d, separators=(",", ":")) + "\n")
        elif fmt == "csv":
            import csv
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(COLUMNS)
            for row in zip(*lists):
                w.writerow(["" if v is None or (isinstance(v, float) and v != v) else
                            (f"{v:.6f}" if isinstance(v, float) else v) for v in row])
        else:
            fh.write("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n"
                     "#path\tconn\n#fields\t" + "\t".join(COLUMNS) + "\n#types\t" + "\t".join(ZEEK_TYPES) + "\n")
            for row in zip(*lists):
                fh.write("\t".join("-" if v is None or (isinstance(v, float) and v != v) else
                                   (f"{v:.6f}" if isinstance(v, float) else str(v)) for v in row) + "\n")
    return n


def read_conns(path: str, fmt: Optional[str] = None) -> list[dict]:
    """Read a connections file back as dicts (numbers as numbers, unset fields as None)."""
    fmt = format_for(path, fmt)
    ints = {"id.orig_p", "id.resp_p", "orig_bytes", "resp_bytes", "orig_pkts", "orig_ip_bytes", "resp_pkts",
            "resp_ip_bytes", "syn_drops", "dropped_pkts"}
    floats = {"ts", "duration", "reuse_delay"}
    if fmt == "parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    if fmt == "jsonl":
        with open(path) as fh:
            return [json.loads(x) for x in fh if x.strip()]
    out = []
    with open(path, newline="") as fh:
        if fmt == "csv":
            import csv
            rd = csv.DictReader(fh)
            raw = [{k: (v if v != "" else None) for k, v in r.items()} for r in rd]
        else:
            fields, raw = None, []
            for line in fh:
                line = line.rstrip("\n")
                if line.startswith("#fields\t"):
                    fields = line.split("\t")[1:]
                elif line and not line.startswith("#"):
                    raw.append({k: (v if v != "-" else None) for k, v in zip(fields, line.split("\t"))})
    for r in raw:
        for k in ints:
            if r.get(k) is not None:
                r[k] = int(r[k])
        for k in floats:
            if r.get(k) is not None:
                r[k] = float(r[k])
        out.append(r)
    return out
