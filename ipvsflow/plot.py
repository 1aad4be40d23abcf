"""PNG plots of a report (matplotlib, Agg backend: no display needed).

``plot_analysis``: connection starts per second and ActiveConn per real server over time, rule
changes marked. ``plot_comparison``: per policy, each real server's share of connection starts
against its fair share, and the dropped SYNs. The image is exactly ``size`` pixels.
"""
from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _figure(size, rows):
    plt = _pyplot()
    w, h = size
    dpi = 100
    fig, axes = plt.subplots(rows, 1, figsize=(w / dpi, h / dpi), dpi=dpi, squeeze=False)
    return plt, fig, [ax for (ax,) in axes]


def _save(plt, fig, path, size):
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def plot_analysis(summary: dict, path: str, size: tuple = (1200, 700)) -> None:
    plt, fig, (ax1, ax2) = _figure(size, 2)
    tl = summary["timeline"]
    win = summary["window_s"]
    names = list(tl[0]["servers"]) if tl else []
    t = np.array([w["t"] for w in tl] + ([tl[-1]["t"] + win] if tl else []))
    for name in names:
        starts = np.array([w["servers"][name]["starts"] for w in tl], float) / win
        active = np.array([w["servers"][name]["active"] for w in tl], float)
        if not starts.any() and not active.any():
            continue
        ax1.stairs(starts, t, label=name, linewidth=1.5)
        ax2.plot(t[1:], active, marker=".", label=name)
    for e in summary["events"]:
        for ax in (ax1, ax2):
            ax.axvline(e["t"], color="0.4", linestyle="--", linewidth=1)
        ax1.annotate(e["command"], xy=(e["t"], 1.0), xycoords=("data", "axes fraction"), rotation=0,
                     fontsize=7, ha="left", va="bottom", color="0.3")
    ax1.set_ylabel("connection starts / s")
    ax2.set_ylabel("ActiveConn")
    ax2.set_xlabel(f"seconds after the first packet ({win:g} s windows)")
    ax1.set_title(f"{summary['capture']}: load per real server", fontsize=10, pad=16)
    if names:
        ax1.legend(fontsize=8, loc="upper left")
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    _save(plt, fig, path, size)


def plot_comparison(result: dict, path: str, size: tuple = (1200, 700)) -> None:
    plt, fig, (ax1, ax2) = _figure(size, 2)
    pols = result["policies"]
    labels = [p["label"] for p in pols]
    servers: list = []
    for p in pols:
        for f in p["fairness"]:
            for s in f["servers"]:
                if s["rs"] not in servers:
                    servers.append(s["rs"])
    x = np.arange(len(pols))
    width = 0.8 / max(len(servers), 1)
    for j, rs in enumerate(servers):
        share = []
        for p in pols:
            v = [s["share"] for f in p["fairness"] for s in f["servers"] if s["rs"] == rs]
            share.append(100 * v[0] if v else 0.0)
        ax1.bar(x + (j - (len(servers) - 1) / 2) * width, share, width, label=rs)
    ax1.set_xticks(x, labels, fontsize=8)
    ax1.set_ylabel("share of connection starts (%)")
    ax1.legend(fontsize=7, ncol=min(len(servers), 6))
    ax1.set_title(f"{result['capture']}: policies side by side", fontsize=10)
    drops = [p["syn_drops"]["attempts"] for p in pols]
    kept = [p["reuse_totals"].get("kept", 0) for p in pols]
    resched = [p["reuse_totals"].get("rescheduled", 0) for p in pols]
    ax2.bar(x - 0.25, kept, 0.25, label="reuse kept")
    ax2.bar(x, resched, 0.25, label="reuse rescheduled")
    ax2.bar(x + 0.25, drops, 0.25, label="SYN dropped (client retries)")
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set_ylabel("SYN/INITs")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(plt, fig, path, size)
