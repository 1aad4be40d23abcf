"""Prometheus metrics of a running director (prometheus-client), from the latest aggregated
snapshot of its workers (refreshed every second by the director)."""
from __future__ import annotations

from typing import Callable

from ipvsflow.engine.names import ACTIONS, REASONS


def parse_hostport(text: str) -> tuple[str, int]:
    """``127.0.0.1:9109``, ``[::1]:9109`` or ``localhost:9109`` -> (host, port)."""
    t = text.strip()
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = t.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9109")
    return host, int(port)


class LiveCollector:
    """A prometheus_client collector over ``get_snapshot()`` (a director aggregate dict)."""

    def __init__(self, get_snapshot: Callable[[], dict]):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        self.get = get_snapshot
        self._families = (CounterMetricFamily, GaugeMetricFamily)

    def describe(self):
        return []

    def collect(self):
        CounterMetricFamily, GaugeMetricFamily = self._families
        snap = self.get()
        if not snap:
            return
        rx = CounterMetricFamily("ipvsflow_rx_packets", "Packets received and processed", labels=["iface"])
        rxb = CounterMetricFamily("ipvsflow_rx_bytes", "Bytes received and processed", labels=["iface"])
        kd = CounterMetricFamily("ipvsflow_rx_kernel_drops", "Packets the kernel dropped because the "
                                 "receive ring was full (PACKET_STATISTICS)", labels=["iface"])
        tx = CounterMetricFamily("ipvsflow_tx_packets", "Packets transmitted", labels=["iface"])
        txb = CounterMetricFamily("ipvsflow_tx_bytes", "Bytes transmitted", labels=["iface"])
        txd = CounterMetricFamily("ipvsflow_tx_drops", "Frames not transmitted", labels=["iface", "reason"])
        for ifname, c in sorted(snap["rx"].items()):
            rx.add_metric([ifname], c["packets"])
            rxb.add_metric([ifname], c["bytes"])
            kd.add_metric([ifname], c["kernel_drops"])
        for ifname, c in sorted(snap["tx"].items()):
            tx.add_metric([ifname], c["packets"])
            txb.add_metric([ifname], c["bytes"])
            for reason in ("too_big", "errors", "ring_full"):
                txd.add_metric([ifname, reason], c[reason])
        yield from (rx, rxb, kd, tx, txb, txd)
        dec = CounterMetricFamily("ipvsflow_decisions", "Engine decisions by action and reason",
                                  labels=["action", "reason"])
        for (action, reason), n in sorted(snap["decisions"].items()):
            dec.add_metric([action, reason], n)
        yield dec
        drops = CounterMetricFamily("ipvsflow_forward_drops", "Packets the director dropped after "
                                    "the engine's decision, by reason", labels=["reason"])
        for reason, n in sorted(snap["drops"].items()):
            drops.add_metric([reason], n)
        yield drops
        conns = GaugeMetricFamily("ipvsflow_connections", "Entries in the connection tables")
        conns.add_metric([], snap["conn_count"])
        yield conns
        labels = ["service", "server"]
        act = GaugeMetricFamily("ipvsflow_server_active_connections", "ActiveConn per real server", labels=labels)
        ina = GaugeMetricFamily("ipvsflow_server_inactive_connections", "InActConn per real server", labels=labels)
        wgt = GaugeMetricFamily("ipvsflow_server_weight", "Weight per real server", labels=labels)
        cs = CounterMetricFamily("ipvsflow_server_connections", "Connections scheduled per real server", labels=labels)
        ip = CounterMetricFamily("ipvsflow_server_in_packets", "Packets to a real server", labels=labels)
        op = CounterMetricFamily("ipvsflow_server_out_packets", "Packets from a real server", labels=labels)
        for s in snap["services"]:
            name = " ".join(s["name"].split())
            for d in s["dests"]:
                lv = [name, d["endpoint"]]
                act.add_metric(lv, d["activeconns"])
                ina.add_metric(lv, d["inactconns"])
                wgt.add_metric(lv, d["weight"])
                cs.add_metric(lv, d["conns"])
                ip.add_metric(lv, d["inpkts"])
                op.add_metric(lv, d["outpkts"])
        yield from (act, ina, wgt, cs, ip, op)
        w = GaugeMetricFamily("ipvsflow_workers", "Worker processes")
        w.add_metric([], snap["workers"])
        yield w


def start(hostport: str, get_snapshot: Callable[[], dict]):
    """Serve /metrics on HOST:PORT in a background thread; returns a stop() function."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise RuntimeError("--metrics needs the prometheus-client package "
                           "(pip install prometheus-client)") from None
    host, port = parse_hostport(hostport)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LiveCollector(get_snapshot))
    res = start_http_server(port, addr=host, registry=reg)
    server = res[0] if isinstance(res, tuple) else None

    def stop():
        if server is not None:
            server.shutdown()
            server.server_close()
    return stop


def decision_names(counts: list[int]) -> dict:
    """{(action, reason): n} from a worker's 512-slot decision counts (action * 64 + reason)."""
    out = {}
    for k, n in enumerate(counts):
        if n:
            a, r = k >> 6, k & 63
            action = ACTIONS[a] if a < len(ACTIONS) else str(a)
            reason = REASONS[r] if r < len(REASONS) else str(r)
            out[(action, reason or "-")] = out.get((action, reason or "-"), 0) + n
    return out
