"""Pictures of a run: a timeline PNG (matplotlib) and the fabric with its flows (Graphviz DOT).

Kernel: none. Both are drawn from the report dict alone (:mod:`dmabuf.sim.report`), so a saved
``--json`` report can be drawn again later.

:func:`plot_report` — one row of two panels per host: on the left the **timeline** (one lane
per stream, a bar per transfer from issue to completion; the exporters' own moves in their own
lane; events as dashed vertical lines labelled at the top), on the right the **utilisation** of
the busiest links over the same modelled time (step curves, 0–100 %). Times are modelled
microseconds from the start of the workload. matplotlib is an optional dependency (extra
``plot``); without it :func:`plot_report` raises a :class:`PlotUnavailable` that says how to
install it. The Agg backend is used (no display needed).

:func:`fabric_dot` — the timing-model fabric as a DOT graph: nodes by kind (root complex,
switch, endpoint, memory, network), links with their bandwidth, links that carried traffic drawn
thicker and labelled with bytes and mean utilisation, and one coloured dashed edge per stream
from its source memory to its destination, labelled with its modelled throughput.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dmabuf.sim.report import fmt_bytes, fmt_rate

__all__ = ["PlotUnavailable", "fabric_dot", "plot_report"]

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed (``pip install 'pydmabuf[plot]'``)."""


def _mpl() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib, an optional dependency: install it "
                              "with  pip install 'pydmabuf[plot]'  (or pip install "
                              "matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: Mapping[str, Any], path: str | Path, *, dpi: int = 110) -> Path:
    """Draw the timeline and link-utilisation panels of every host into one PNG.

    Args:
        report: a report dict (with its ``timeline`` sections).
        path: the PNG file to write.
        dpi: resolution.
    Context: draws with matplotlib's Agg backend; never blocks on the model.
    Returns: the path written.
    Raises: PlotUnavailable when matplotlib is missing; OSError when the file cannot be written.
    Kernel: none.
    """
    plt = _mpl()
    hosts = list(report["hosts"])
    n = max(1, len(hosts))
    fig, axes = plt.subplots(n, 2, figsize=(17, 4.8 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6, 1.0]})
    for row, h in enumerate(hosts):
        _timeline(axes[row][0], h)
        _utilisation(axes[row][1], h)
    sc = report["scenario"]
    verdict = "OK" if report["ok"] else "FAILED"
    fig.suptitle(f"pydmabuf — {sc['name']} (seed {sc['seed']}): {verdict}, "
                 f"{fmt_bytes(report['bytes_verified'])} verified", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(path)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _us(t: float) -> float:
    return t * 1e6


def _timeline(ax: Any, h: Mapping[str, Any]) -> None:
    streams = [s for s in h["streams"] if s["flows"]]
    lanes: list[str] = []
    for i, s in enumerate(streams):
        y = len(lanes)
        lanes.append(f"{s['name']}\n{fmt_rate(s['throughput'])}")
        col = _COLOURS[i % len(_COLOURS)]
        bars = [(_us(a), max(_us(b) - _us(a), 0.01)) for a, b in s["flows"]]
        # Concurrent transfers overlap: draw them semi-transparent so the density shows.
        ax.broken_barh(bars, (y - 0.38, 0.76), facecolors=col, alpha=0.45, edgecolor=col,
                       linewidth=0.4)
        if s["status"] in ("revoked", "error") and s["end"] is not None:
            ax.annotate(s["status"], (_us(s["end"]), y), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8,
                        color="#b00020" if s["status"] == "error" else "#555555")
    moves = [m for m in h["moves"] if m["end"] >= 0]
    if moves:
        y = len(lanes)
        lanes.append("exporter moves\n(GPU copies)")
        for k, m in enumerate(sorted(moves, key=lambda m: m["start"])):
            x0 = _us(max(m["start"], 0.0))
            w = max(_us(m["end"]) - x0, 0.01)
            lvl = (k % 2) * 0.36
            ax.broken_barh([(x0, w)], (y - 0.38 + lvl, 0.36), facecolors="#555555", alpha=0.55,
                           edgecolor="#222222", linewidth=0.5)
            ax.annotate(f"{m['buffer']} {m['from']}→{m['to']}", (x0 + w / 2, y - 0.2 + lvl),
                        fontsize=7, ha="center", va="center", color="white")
    end = max([_us(h["modelled_time"])] + [_us(e["time"]) for e in h["events"]] + [1.0])
    if h["events"]:
        y = len(lanes)
        lanes.append("events")
        for k, e in enumerate(h["events"]):
            x = _us(e["time"])
            col = "#b00020" if e["outcome"] == "error" else "#333333"
            ax.axvline(x, color=col, linestyle="--", linewidth=0.9, alpha=0.8)
            ax.annotate(e["label"] + ("" if e["outcome"] == "ok" else f" ({e['outcome']})"),
                        (x, y - 0.3 + 0.3 * (k % 3)), xytext=(3, 0),
                        textcoords="offset points", fontsize=7.5, color=col, va="center")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(lanes, fontsize=8)
    ax.set_ylim(-0.7, max(len(lanes), 1) - 0.3 + 0.6)
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.03)
    ax.set_xlabel("modelled time (µs from workload start)")
    ax.set_title(f"{h['name']}: transfers and events — modelled "
                 f"{h['modelled_time'] * 1e3:.3g} ms, "
                 f"{fmt_bytes(h['bytes_verified'])} verified", fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)


def _utilisation(ax: Any, h: Mapping[str, Any]) -> None:
    tl = h.get("timeline") or {}
    times = [_us(t) for t in tl.get("times", [])]
    series = tl.get("links", {})
    if not times or not series:
        ax.text(0.5, 0.5, "no link traffic", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    # Bin the piecewise-constant loads into time-weighted means: the raw steps of hundreds of
    # transfers are unreadable.
    import numpy as np

    t = np.asarray(times)
    bins = min(160, max(1, len(t) - 1))
    edges = np.linspace(t[0], t[-1], bins + 1)
    for i, (name, util) in enumerate(series.items()):
        u = np.asarray(util, dtype=float)
        cum = np.concatenate(([0.0], np.cumsum(u * np.diff(t))))
        at = np.interp(edges, t, cum)
        width = np.diff(edges)
        mean = np.divide(np.diff(at), width, out=np.zeros_like(width), where=width > 0)
        ax.stairs(100.0 * mean, edges, label=name, linewidth=1.3,
                  color=_COLOURS[i % len(_COLOURS)])
    ax.set_ylim(0, 105)
    ax.set_xlim(0, max(max(times), _us(h["modelled_time"])) * 1.03)
    ax.set_ylabel("utilisation (%)")
    ax.set_xlabel("modelled time (µs)")
    ax.set_title(f"{h['name']}: busiest links (max-min fair share; mean per "
                 f"{(times[-1] - times[0]) / max(1, min(160, len(times) - 1)):.3g} µs)",
                 fontsize=10, loc="left")
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    ax.grid(alpha=0.3)


# ----------------------------------------------------------------------------------------------
# DOT
# ----------------------------------------------------------------------------------------------

_SHAPES = {"root_complex": ("box3d", "#dde8f7"), "switch": ("box", "#e8e8e8"),
           "endpoint": ("box", "#ffffff"), "memory": ("cylinder", "#fff4d6"),
           "network": ("ellipse", "#e4f5e4")}


def _q(s: str) -> str:
    return '"' + s.replace('"', '\\"') + '"'


def fabric_dot(report: Mapping[str, Any]) -> str:
    """The fabric of every host with its traffic and streams, as Graphviz DOT text.

    Context: pure. Returns: DOT text (``dot -Tpng``). Raises: nothing. Kernel: none.
    """
    lines = ["digraph fabric {", "  rankdir=TB;", "  compound=true;",
             '  node [fontname="monospace", fontsize=10];', '  edge [fontname="monospace", '
             'fontsize=9];',
             f'  label={_q("pydmabuf " + report["scenario"]["name"] + " — links and flows")};',
             "  labelloc=t;"]
    for hi, h in enumerate(report["hosts"]):
        pre = f"h{hi}:"
        lines.append(f"  subgraph cluster_{hi} {{")
        lines.append(f"    label={_q('host ' + h['name'])};")
        for n in h.get("fabric", {}).get("nodes", []):
            shape, fill = _SHAPES.get(n["kind"], ("box", "#ffffff"))
            lines.append(f"    {_q(pre + n['name'])} [label={_q(n['name'])}, shape={shape}, "
                         f'style=filled, fillcolor="{fill}"];')
        traffic: dict[str, list[dict[str, Any]]] = {}
        for lk in h["links"]:
            traffic.setdefault(lk["link"], []).append(lk)
        for lk in h.get("fabric", {}).get("links", []):
            used = traffic.get(lk["name"], [])
            label = f"{lk['name']}\\n{fmt_rate(lk['bandwidth'])}"
            style = "color=gray60"
            if used:
                b = sum(u["bytes"] for u in used)
                util = max(u["mean_utilisation"] for u in used)
                label += f"\\n{fmt_bytes(b)}, {util:.0%}"
                style = f"color=black, penwidth={1.5 + 4 * util:.2f}"
            lines.append(f"    {_q(pre + lk['a'])} -> {_q(pre + lk['b'])} [label={_q(label)}, "
                         f"dir=none, {style}];")
        for si, s in enumerate(h["streams"]):
            if not s["transfers"]:
                continue
            att = {(a["buffer"], a["device"]): a for a in h["attachments"]}
            src = att.get((s["buffer"], s["device"]))
            dst = att.get((s["peer_buffer"], s["peer"])) if s["peer"] else None
            if s["direction"] == "write":
                src, dst = dst, src
            a_node = src["path"][0] if src and src["path"] else s["device"]
            b_node = dst["path"][0] if dst and dst["path"] else (s["peer"] or s["device"])
            col = _COLOURS[si % len(_COLOURS)]
            flow_label = _q(s["name"] + "\\n" + fmt_rate(s["throughput"]))
            lines.append(f"    {_q(pre + a_node)} -> {_q(pre + b_node)} [label={flow_label}, "
                         f'color="{col}", fontcolor="{col}", style=dashed, penwidth=2, '
                         "constraint=false];")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
