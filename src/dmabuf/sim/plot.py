"""Pictures of a run: a timeline PNG (matplotlib) and the fabric with its flows (Graphviz DOT).

Kernel: none. Both are drawn from the report dict alone (:mod:`dmabuf.sim.report`), so a saved
``--json`` report can be drawn again later.

:func:`plot_report` — one row of two panels per host: on the left the **timeline** (one lane
per stream, a bar per transfer from issue to completion; the exporters' own moves in their own
lane, concurrent moves on separate levels and named only where the bar has room for the name;
events as dashed vertical lines, their labels in the events lane staggered on as many rows as
needed so none overlap — placed in pixels once the layout is final), on the right the
**utilisation** of the busiest links over the same modelled time (step curves, 0–100 %). Times
are modelled microseconds from the start of the workload. matplotlib is an optional dependency
(extra ``plot``); without it :func:`plot_report` raises a :class:`PlotUnavailable` that says how to
install it. The Agg backend is used (no display needed).

:func:`fabric_dot` — the timing-model fabric as a DOT graph: nodes by kind (root complex,
switch, endpoint, memory, network), links with their bandwidth, links that carried traffic drawn
thicker and labelled with bytes and mean utilisation, and one coloured dashed edge per stream
from its source memory to its destination, labelled with its modelled throughput.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    fig = _figure(report, dpi)
    out = Path(path)
    try:
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out


def _figure(report: Mapping[str, Any], dpi: int) -> Any:
    """The whole picture as a matplotlib Figure (not saved, not closed)."""
    plt = _mpl()
    hosts = list(report["hosts"])
    n = max(1, len(hosts))
    fig, axes = plt.subplots(n, 2, figsize=(17, 4.8 * n), squeeze=False, dpi=dpi,
                             gridspec_kw={"width_ratios": [1.6, 1.0]})
    labels = [_timeline(axes[row][0], h) for row, h in enumerate(hosts)]
    for row, h in enumerate(hosts):
        _utilisation(axes[row][1], h)
    sc = report["scenario"]
    verdict = "OK" if report["ok"] else "FAILED"
    fig.suptitle(f"pydmabuf — {sc['name']} (seed {sc['seed']}): {verdict}, "
                 f"{fmt_bytes(report['bytes_verified'])} verified", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    # Labels are placed in pixels, so only once the layout is final.
    renderer = fig.canvas.get_renderer()
    for row, lab in enumerate(labels):
        _event_labels(axes[row][0], lab, renderer)
        _move_labels(axes[row][0], lab, renderer)
    return fig


def _us(t: float) -> float:
    return t * 1e6


_EVENT_FONT = 7.5
_MOVE_FONT = 7.0
_MOVE_LEVEL = 0.34  # height of one level of concurrent moves, in lanes
_GAP_PX = 6.0  # horizontal clearance between two event labels on one row


@dataclass
class _Pending:
    """What :func:`_timeline` leaves to be labelled once the layout is known."""

    events_y: float = 0.0  # data y of the first row of event labels
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (x µs, text, colour)
    moves: list[tuple[float, float, float, float, str]] = field(
        default_factory=list)  # (x0 µs, width µs, y centre, bar height, text)


def _rows(spans: Sequence[tuple[float, float]], gap: float = 0.0) -> list[int]:
    """Greedy interval packing: the row of each (start, end) span, lowest row it fits in.

    Spans on one row are at least ``gap`` apart; the number of rows used is minimal.
    """
    ends: list[float] = []  # right end of the last span placed on each row
    rows = [0] * len(spans)
    for i in sorted(range(len(spans)), key=lambda i: spans[i][0]):
        a, b = spans[i]
        r = next((r for r, e in enumerate(ends) if a >= e + gap), len(ends))
        if r == len(ends):
            ends.append(b)
        else:
            ends[r] = b
        rows[i] = r
    return rows


def _text_px(renderer: Any, text: str, size: float) -> tuple[float, float]:
    """Width and height in pixels of ``text`` at ``size`` points."""
    from matplotlib.font_manager import FontProperties

    w, h, _ = renderer.get_text_width_height_descent(text, FontProperties(size=size),
                                                     ismath=False)
    return float(w), float(h)


def _timeline(ax: Any, h: Mapping[str, Any]) -> _Pending:
    # Lanes top to bottom: one per stream (1 unit tall, centred on 0, 1, ...), the exporters'
    # moves (taller when concurrent moves need several levels), then the events.
    streams = [s for s in h["streams"] if s["flows"]]
    ticks: list[float] = []
    names: list[str] = []
    pending = _Pending()
    for i, s in enumerate(streams):
        y = float(i)
        ticks.append(y)
        names.append(f"{s['name']}\n{fmt_rate(s['throughput'])}")
        col = _COLOURS[i % len(_COLOURS)]
        bars = [(_us(a), max(_us(b) - _us(a), 0.01)) for a, b in s["flows"]]
        # Concurrent transfers overlap: draw them semi-transparent so the density shows.
        ax.broken_barh(bars, (y - 0.38, 0.76), facecolors=col, alpha=0.45, edgecolor=col,
                       linewidth=0.4)
        if s["status"] in ("revoked", "error") and s["end"] is not None:
            ax.annotate(s["status"], (_us(s["end"]), y), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8,
                        color="#b00020" if s["status"] == "error" else "#555555")
    top = len(streams) - 0.5  # top edge of the next lane
    moves = sorted((m for m in h["moves"] if m["end"] >= 0), key=lambda m: m["start"])
    if moves:
        spans = [(_us(max(m["start"], 0.0)), _us(m["end"])) for m in moves]
        levels = _rows(spans)  # concurrent moves side by side, never on top of each other
        height = _MOVE_LEVEL if max(levels) else 0.76
        lane = max(1.0, height * (max(levels) + 1) + 0.24)
        ticks.append(top + lane / 2)
        names.append("exporter moves\n(GPU copies)")
        for m, (x0, x1), lvl in zip(moves, spans, levels, strict=True):
            w = max(x1 - x0, 0.01)
            y0 = top + 0.12 + lvl * height
            ax.broken_barh([(x0, w)], (y0, height), facecolors="#555555", alpha=0.55,
                           edgecolor="#222222", linewidth=0.5)
            pending.moves.append((x0, w, y0 + height / 2, height,
                                  f"{m['buffer']} {m['from']}→{m['to']}"))
        top += lane
    end = max([_us(h["modelled_time"])] + [_us(e["time"]) for e in h["events"]] + [1.0])
    if h["events"]:
        pending.events_y = top + 0.3  # the first row of labels, level with the lane's name
        ticks.append(pending.events_y)
        names.append("events")
        top += 1.0
        for e in h["events"]:
            x = _us(e["time"])
            col = "#b00020" if e["outcome"] == "error" else "#333333"
            ax.axvline(x, color=col, linestyle="--", linewidth=0.9, alpha=0.8, zorder=1)
            pending.events.append(
                (x, e["label"] + ("" if e["outcome"] == "ok" else f" ({e['outcome']})"), col))
    ax.set_yticks(ticks)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_ylim(max(top, 0.5) + 0.8, -0.7)  # inverted: first lane at the top
    ax.set_xlim(0, end * 1.03)
    ax.set_xlabel("modelled time (µs from workload start)")
    ax.set_title(f"{h['name']}: transfers and events — modelled "
                 f"{h['modelled_time'] * 1e3:.3g} ms, "
                 f"{fmt_bytes(h['bytes_verified'])} verified", fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)
    return pending


def _event_labels(ax: Any, p: _Pending, renderer: Any) -> None:
    """Label the event lines, staggered on as many rows as needed so no two labels overlap.

    A label sits right of its line (left of it near the right edge); rows are packed greedily
    in pixels, and the y range grows so every row fits under the lanes. Rows that would take
    more than half the panel are not drawn; a note counts the events left unlabelled.
    """
    if not p.events:
        return
    box = ax.get_window_extent(renderer)
    off = 3.0 * ax.figure.dpi / 72  # the 3 pt between a line and its label
    spans: list[tuple[float, float]] = []
    right: list[bool] = []
    for x, text, _ in p.events:
        px = float(ax.transData.transform((x, 0))[0])
        w = _text_px(renderer, text, _EVENT_FONT)[0]
        right.append(px + off + w > box.x1)
        spans.append((px - off - w, px - off) if right[-1] else (px + off, px + off + w))
    rows = _rows(spans, _GAP_PX)
    pitch = 1.35 * _text_px(renderer, "Ag", _EVENT_FONT)[1]
    fit = max(2, int((0.5 * box.height) // pitch))
    lines = min(max(rows) + 1, fit)
    shown = lines if max(rows) < fit else fit - 1  # the last line then holds the note
    # Grow the (inverted) y range so the lines fit under the first one's centre:
    # (bottom - events_y) / (bottom - ymin) * height >= (lines - 0.5) * pitch + pad.
    bottom, ymin = ax.get_ylim()
    need = ((lines - 0.5) * pitch + 4.0) / box.height
    ax.set_ylim(max(bottom, (p.events_y - ymin * need) / (1 - need)), ymin)
    pt = 72 / ax.figure.dpi
    for (x, text, col), row, flip in zip(p.events, rows, right, strict=True):
        if row >= shown:
            continue
        ax.annotate(text, (x, p.events_y), xytext=(-3 if flip else 3, -row * pitch * pt),
                    textcoords="offset points", fontsize=_EVENT_FONT, color=col, va="center",
                    ha="right" if flip else "left", zorder=3,
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none",
                          "alpha": 0.8})
    hidden = sum(r >= shown for r in rows)
    if hidden:
        ax.annotate(f"+{hidden} more event(s): see the report", (1, p.events_y),
                    xycoords=("axes fraction", "data"), xytext=(-3, -shown * pitch * pt),
                    textcoords="offset points", fontsize=_EVENT_FONT, ha="right",
                    va="center")


def _move_labels(ax: Any, p: _Pending, renderer: Any) -> None:
    """Name each exporter move inside its bar, only where the bar is big enough for the text."""
    for x0, w, y, height, text in p.moves:
        (ax0, ay0), (ax1, ay1) = ax.transData.transform([(x0, y - height / 2),
                                                          (x0 + w, y + height / 2)])
        tw, th = _text_px(renderer, text, _MOVE_FONT)
        if tw + 6 <= abs(ax1 - ax0) and th <= abs(ay1 - ay0) + 1:
            ax.annotate(text, (x0 + w / 2, y), fontsize=_MOVE_FONT, ha="center", va="center",
                        color="white")


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
