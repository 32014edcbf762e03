"""The report of a scenario run: a JSON-ready dict, its schema check, and rich tables.

Kernel: none. The runner (:mod:`dmabuf.sim.runner`) produces one dict per run; its format is
``pydmabuf.report/1``, documented field by field in ``dmabuf/data/report-schema.json`` (a JSON
Schema, draft 2020-12, shipped with the package; ``docs/report-schema.json`` is an identical
copy). Everything in it is deterministic for a given scenario and seed except the
``wall_time`` fields, so two runs with the same seed compare equal after
:func:`strip_wall_times`.

Sections per host: ``devices`` (bound drivers, or ``missing``), ``buffers`` (exporter,
placement then and now, moves, content fingerprint), ``attachments`` (map type, P2P distance,
fabric path, IOMMU or not, mapping representation and its memory, invalidations, remaps,
modelled mapping costs), ``streams`` (transfers, bytes moved and verified, CRC-32, modelled
throughput, the per-transfer intervals), ``links`` (bytes and utilisation of every channel that
carried traffic), ``moves`` (the exporters' own copies), ``events`` (what each did),
``faults`` (DMA faults, every one unexpected), ``failures``; and ``timeline`` (per-link
utilisation steps of the busiest links, for plots; optional).

:func:`render` prints the human view (rich tables) that ``dmabuf demo`` and ``dmabuf run``
show; :func:`validate_report` checks a dict against the schema's structure without needing the
``jsonschema`` package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.buf.dma_engine import DmaFaultLog

if TYPE_CHECKING:
    from rich.console import Console

    from dmabuf.sim.runner import HostRun
    from dmabuf.sim.scenario import Scenario

__all__ = ["REPORT_SCHEMA", "host_section", "load_schema", "render", "scenario_report",
           "strip_wall_times", "validate_report"]

REPORT_SCHEMA = "pydmabuf.report/1"
_TIMELINE_LINKS = 8


def _name_of(hr: HostRun, bdf_or_name: str) -> str:
    try:
        d = hr.topo.device(bdf_or_name)
        return d.name or d.bdf
    except Exception:
        return bdf_or_name


def _attachment(hr: HostRun, key: tuple[str, str]) -> dict[str, Any]:
    spec = hr.host.import_of(*key)
    assert spec is not None
    status, detail = hr.import_status.get(key, ("missing", "not attached"))
    imp = hr.imports.get(key)
    out: dict[str, Any] = {
        "buffer": spec.buffer, "device": spec.device, "mode": spec.mode, "repr": spec.repr,
        "expect": spec.expect, "status": status, "detail": detail,
        "exporter": hr.host.buffer(spec.buffer).exporter,
        "map_type": None, "p2p_decision": None, "distance": None, "path": [], "pci_path": [],
        "iommu": None, "location": None, "mapping_bytes": None, "mapping_entries": None,
        "repr_used": None, "repr_note": "",
        "mapped_ranges": None, "maps": 0, "remaps": 0, "invalidations": 0, "faults": 0,
        "dmas": 0, "map_time": 0.0, "remap_time": 0.0, "invalidate_time": 0.0,
        "locations": [], "peer2peer": None, "pinned": False, "revoked": False,
        "pinned_vram_bytes": 0,
    }
    exp_name = out["exporter"]
    if exp_name != "system" and spec.device in {d.name for d in hr.host.devices}:
        prov = hr.host.device(exp_name).bdf
        cli = hr.host.device(spec.device).bdf
        try:
            ex = hr.topo.explain(prov, cli)
            out["p2p_decision"] = ex.map_type.name
            out["distance"] = int(ex.p2pdma_distance)
            out["pci_path"] = [_name_of(hr, p) for p in ex.path]
        except Exception as e:   # a topology without that pair: keep the report going
            out["detail"] = out["detail"] or f"explain failed: {e}"
    if imp is None:
        return out
    if imp.decision:
        out.update({k: v for k, v in imp.decision.items() if k != "detail"})
    st = imp.stats
    m = imp.first
    out.update({"maps": st.maps, "remaps": st.remaps, "invalidations": st.invalidations,
                "faults": st.faults, "dmas": st.dmas, "map_time": st.map_time,
                "remap_time": st.remap_time, "invalidate_time": st.invalidate_time,
                "locations": list(st.locations), "pinned": imp.pinned or spec.mode == "pinned",
                "revoked": imp.revoked,
                "peer2peer": imp.peer2peer})
    buf_spec = hr.host.buffer(spec.buffer)
    pins = spec.mode in ("static", "pinned", "revocable") and imp.error is None
    if pins and m is not None and m.location == "vram":
        out["pinned_vram_bytes"] = buf_spec.size
    if m is not None:
        out.update({"map_type": m.map_type, "path": list(m.path_nodes), "iommu": m.iommu,
                    "location": m.location, "mapping_bytes": m.repr_bytes,
                    "mapping_entries": m.entries, "mapped_ranges": m.ranges,
                    "repr_used": m.repr_used, "repr_note": m.repr_note})
    return out


def _stream(hr: HostRun, name: str, t0: float) -> dict[str, Any]:
    s = hr.streams[name]
    st = s.spec
    span = (s.last - s.first) if s.transfers else 0.0
    return {
        "name": st.name, "device": st.device, "buffer": st.buffer, "direction": st.direction,
        "peer": st.peer, "peer_buffer": st.peer_buffer, "size": st.size, "count": st.count,
        "concurrency": st.concurrency, "status": s.status, "stopped": s.stopped,
        "transfers": s.transfers, "bytes": s.bytes, "bytes_verified": s.verified,
        "crc32": s.checksum.hex if s.checksum.transfers else None,
        "start": s.first - t0 if s.transfers else None,
        "end": s.last - t0 if s.transfers else None,
        "throughput": (s.bytes / span) if span > 0 else 0.0,
        "mean_transfer_rate": (s.rate_sum / s.transfers) if s.transfers else 0.0,
        "errors": list(s.errors[:20]), "error_count": len(s.errors),
        "flows": [[a - t0, b - t0] for a, b in sorted(s.flows)],
    }


def _links(hr: HostRun, modelled: float, t0: float
           ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tl = hr.clock.timeline()
    rows: list[dict[str, Any]] = []
    if tl.times.size == 0:
        return rows, {"times": [], "links": {}}
    # Statistics over the workload only (from t0): setup-time traffic (a staging move) would
    # otherwise count against the workload's span.
    clipped = np.maximum(tl.times, t0)
    dt = np.diff(clipped)
    through = dt @ tl.load
    span = modelled if modelled > 0 else tl.span
    live = dt > 0
    peaks = (tl.load[live].max(axis=0) / tl.capacity if live.any()
             else np.zeros(tl.capacity.size))
    for c, (lname, d) in enumerate(tl.channels):
        b = float(through[c])
        if b <= 0:
            continue
        cap = float(tl.capacity[c])
        rows.append({"link": lname, "direction": d.value if d is not None else "shared",
                     "capacity": cap, "bytes": b,
                     "mean_utilisation": b / (span * cap) if span > 0 else 0.0,
                     "peak_utilisation": float(peaks[c])})
    rows.sort(key=lambda r: (-r["mean_utilisation"], r["link"], r["direction"]))
    busiest = rows[:_TIMELINE_LINKS]
    series: dict[str, list[float]] = {}
    for r in busiest:
        c = tl._chan(r["link"], None if r["direction"] == "shared" else r["direction"])
        series[f"{r['link']}:{r['direction']}"] = [float(x) for x in tl.load[:, c] /
                                                   tl.capacity[c]]
    return rows, {"times": [float(t) - t0 for t in tl.times], "links": series}


def host_section(hr: HostRun, modelled: float, wall: float) -> dict[str, Any]:
    """The report section of one host run (see the module docstring).

    Args:
        hr: the finished host run.
        modelled: its virtual time at the end (seconds).
        wall: wall seconds it took.
    Context: pure; never blocks.
    Returns: the section dict.
    Raises: nothing.
    Kernel: none.
    """
    host = hr.host
    t0 = hr.t0
    modelled = modelled - t0
    devices = []
    for d in host.devices:
        drv = hr.devices.get(d.name)
        devices.append({"name": d.name, "kind": d.kind, "endpoint": d.endpoint, "bdf": d.bdf,
                        "driver": drv.driver_name if drv is not None else None,
                        "status": "bound" if drv is not None else "missing",
                        "detail": hr.missing.get(d.name, "")})
    buffers = []
    for b in host.buffers:
        exp = hr.exports.get(b.name)
        status = hr.buffer_status.get(b.name, "missing")
        buffers.append({
            "name": b.name, "exporter": b.exporter, "size": b.size, "placement": b.placement,
            "location": exp.location() if exp is not None else None,
            "moves": int(getattr(exp, "moved", 0)) if exp is not None else 0,
            "writes": hr.truths[b.name].writes if b.name in hr.truths else 0,
            "fingerprint": hr.truths[b.name].fingerprint() if b.name in hr.truths else None,
            "verified": status == "ok" and b.name in hr.truths,
            "status": "ok" if status == "ok" else status.split(":", 1)[0],
            "detail": "" if status == "ok" else status})
    attachments = [_attachment(hr, i.key) for i in host.imports]
    streams = [_stream(hr, s.name, t0) for s in host.streams]
    links, timeline = _links(hr, modelled, t0)
    faults = [{"device": f.device, "op": f.op, "dma_addr": f.dma_addr, "message": f.message,
               "time": f.time - t0} for f in hr.machine.state(DmaFaultLog).records]
    moves = [dict(mv, start=mv["start"] - t0, end=mv["end"] - t0) for mv in hr.moves]
    events = [dict(e, time=e["time"] - t0) for e in hr.events]
    failures = list(hr.failures)
    for f in faults:
        failures.append(f"DMA fault on {f['device']} ({f['op']}): {f['message']}")
    missing = [f"device {d['name']}: {d['detail']}" for d in devices
               if d["status"] == "missing"]
    missing += [f"import {a['buffer']}@{a['device']}: {a['detail']}" for a in attachments
                if a["status"] == "missing"]
    missing += [f"event {e['label']}: {e['detail']}" for e in hr.events
                if e.get("outcome") == "missing"]
    bytes_moved = sum(s["bytes"] for s in streams)
    verified = sum(s["bytes_verified"] for s in streams)
    topo = hr.topo
    return {
        "name": host.name, "description": host.description,
        "topology": {"source": host.topology.source, "description": topo.description,
                     "cpu": topo.cpu.describe(), "iommu": host.topology.iommu,
                     "ram": host.topology.ram,
                     "host_bridges": [{"name": h.name, "label": h.label,
                                       "root": (r.bdf if (r := h.root_dev()) is not None else None)}
                                      for h in topo.host_bridges]},
        "timing": host.timing.as_dict(),
        "fabric": {"nodes": [{"name": n.name, "kind": n.kind.value}
                             for n in hr.pf.fabric.nodes.values()],
                   "links": [{"name": lk.name, "a": lk.a, "b": lk.b,
                              "bandwidth": lk.spec.bandwidth, "duplex": lk.spec.duplex,
                              "description": lk.spec.description}
                             for lk in hr.pf.fabric.links.values()]},
        "ok": not failures,
        "failures": failures, "missing": missing, "notes": list(hr.notes),
        "modelled_time": modelled, "wall_time": wall,
        "bytes_moved": bytes_moved, "bytes_verified": verified,
        "devices": devices, "buffers": buffers, "attachments": attachments,
        "streams": streams, "links": links, "moves": moves,
        "events": events, "faults": faults, "setup_time": t0,
        "warnings": [f"{r}: {m}" for r, m in hr.machine.warnings],
        "fabric_events": int(hr.clock.events),
        "timeline": timeline,
    }


def scenario_report(s: Scenario, hosts: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """The whole report: scenario identity, hosts, totals, overall verdict.

    Context: pure. Returns: the report dict. Raises: nothing. Kernel: none.
    """
    failures = [f"{h['name']}: {f}" for h in hosts for f in h["failures"]]
    missing = [f"{h['name']}: {m}" for h in hosts for m in h["missing"]]
    return {
        "schema": REPORT_SCHEMA,
        "scenario": {"name": s.name, "description": s.description, "path": s.path,
                     "seed": s.seed, "policy": s.run.policy, "verify": s.run.verify},
        "ok": not failures,
        "failures": failures,
        "missing": missing,
        "bytes_moved": sum(h["bytes_moved"] for h in hosts),
        "bytes_verified": sum(h["bytes_verified"] for h in hosts),
        "modelled_time": sum(h["modelled_time"] for h in hosts),
        "wall_time": wall,
        "hosts": hosts,
    }


def strip_wall_times(report: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``report`` without its ``wall_time`` fields (what reproducibility compares)."""
    def strip(x: Any) -> Any:
        if isinstance(x, Mapping):
            return {k: strip(v) for k, v in x.items() if k != "wall_time"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    out = strip(report)
    assert isinstance(out, dict)
    return out


def to_json(report: Mapping[str, Any], *, indent: int | None = 1) -> str:
    """The report as JSON text (floats as JSON numbers; non-finite values become null)."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.floating):
            return clean(float(x))
        return x
    return json.dumps(clean(report), indent=indent)


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    """The report JSON Schema, from the package data (``dmabuf/data/report-schema.json``).

    The package copy is the source of truth (``docs/report-schema.json`` is the documented copy;
    a test keeps them identical), so validation works from any installation, editable or not.

    Context: reads package data. Returns: the schema dict.
    Raises: FileNotFoundError when the package data is missing (a packaging bug). Kernel: none.
    """
    ref = resources.files("dmabuf").joinpath("data", "report-schema.json")
    schema: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    return schema


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


def validate_report(doc: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Check ``doc`` against the report schema's structure; return the problems (empty: valid).

    Supports the subset of JSON Schema the report schema uses: ``type`` (a name or a list),
    ``properties``, ``required``, ``additionalProperties`` (false or a schema), ``items``,
    ``enum``, ``const``, ``minimum``, ``$ref`` to ``#/$defs/...``.

    Context: pure. Returns: messages like ``"$.hosts[0].streams[1].crc32: expected string"``.
    Raises: nothing. Kernel: none.
    """
    root = dict(schema) if schema is not None else load_schema()
    problems: list[str] = []

    def resolve(s: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in s:
            ref = s["$ref"]
            assert ref.startswith("#/$defs/"), ref
            s = root["$defs"][ref[len("#/$defs/"):]]
        return s

    def check(x: Any, s: Mapping[str, Any], where: str) -> None:
        s = resolve(s)
        if "const" in s and x != s["const"]:
            problems.append(f"{where}: expected {s['const']!r}, got {x!r}")
        if "enum" in s and x not in s["enum"]:
            problems.append(f"{where}: {x!r} is not one of {s['enum']}")
        t = s.get("type")
        if t is not None:
            names = [t] if isinstance(t, str) else list(t)
            ok = False
            for n in names:
                py = _TYPES[n]
                if isinstance(x, bool) and n in ("integer", "number"):
                    continue
                if isinstance(x, py):
                    ok = True
                    break
            if not ok:
                problems.append(f"{where}: expected {'/'.join(names)}, got "
                                f"{type(x).__name__} {x!r:.60}")
                return
        if "minimum" in s and isinstance(x, int | float) and not isinstance(x, bool) \
                and x < s["minimum"]:
            problems.append(f"{where}: {x} < minimum {s['minimum']}")
        if isinstance(x, dict):
            props = s.get("properties", {})
            for k in s.get("required", []):
                if k not in x:
                    problems.append(f"{where}: missing required {k!r}")
            extra = s.get("additionalProperties", True)
            for k, v in x.items():
                if k in props:
                    check(v, props[k], f"{where}.{k}")
                elif extra is False:
                    problems.append(f"{where}: unexpected property {k!r}")
                elif isinstance(extra, dict):
                    check(v, extra, f"{where}.{k}")
        if isinstance(x, list) and "items" in s:
            for i, v in enumerate(x):
                check(v, s["items"], f"{where}[{i}]")

    check(doc, root, "$")
    return problems


# ----------------------------------------------------------------------------------------------
# Human output
# ----------------------------------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    """``1.5 GiB``-style text."""
    if n is None:
        return "-"
    for unit, s in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(n) >= 1 << s:
            return f"{n / (1 << s):.3g} {unit}"
    return f"{int(n)} B"


def fmt_rate(bps: float | None) -> str:
    """``54.2 GB/s`` (decimal, as link rates are quoted)."""
    if not bps:
        return "-"
    return f"{bps / 1e9:.3g} GB/s"


def fmt_time(t: float | None) -> str:
    """``12.3 µs`` / ``4.56 ms`` / ``1.2 s``."""
    if t is None:
        return "-"
    if t == 0:
        return "0"
    if t < 1e-3:
        return f"{t * 1e6:.3g} µs"
    if t < 1:
        return f"{t * 1e3:.3g} ms"
    return f"{t:.3g} s"


def _merged_moves(moves: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int, int, float]]:
    """Consecutive copies of one buffer in one direction as one row: (first, count, bytes,
    busy seconds) — an HMM importer pulls an SVM range back granule by granule."""
    out: list[tuple[dict[str, Any], int, int, float]] = []
    last: dict[str, int] = {}
    for mv in sorted(moves, key=lambda m: m["start"]):
        k = last.get(mv["buffer"])
        busy = mv["end"] - mv["start"]
        if k is not None and k == len(out) - 1 and (out[k][0]["from"], out[k][0]["to"]) == (
                mv["from"], mv["to"]):
            first, n, nbytes, b = out[k]
            out[k] = (first, n + 1, nbytes + mv["bytes"], b + busy)
            continue
        if k is not None and (out[k][0]["from"], out[k][0]["to"]) == (mv["from"], mv["to"]) \
                and all(o[0]["buffer"] != mv["buffer"] for o in out[k + 1:]):
            first, n, nbytes, b = out[k]
            out[k] = (first, n + 1, nbytes + mv["bytes"], b + busy)
            continue
        last[mv["buffer"]] = len(out)
        out.append((mv, 1, mv["bytes"], busy))
    return out


_STATUS_STYLE = {"ok": "green", "bound": "green", "expected-error": "cyan", "revoked": "cyan",
                 "missing": "yellow", "error": "bold red"}


def render(report: Mapping[str, Any], console: Console, *, flows: bool = False) -> None:
    """Print a report as rich tables (what ``dmabuf demo`` / ``dmabuf run`` show).

    Args:
        report: a report dict.
        console: where to print.
        flows: also list every transfer interval (long).
    Context: prints; never blocks on the model.
    Returns: None. Raises: nothing. Kernel: none.
    """
    from rich.table import Table
    from rich.text import Text

    def st(s: str) -> Text:
        return Text(s, style=_STATUS_STYLE.get(s.split(":")[0], ""))

    sc = report["scenario"]
    console.rule(f"[bold]{sc['name']}[/] — seed {sc['seed']}")
    if sc.get("description"):
        console.print(sc["description"], style="dim")
    for h in report["hosts"]:
        cpu = h["topology"]["cpu"]
        console.print()
        console.rule(f"host [bold]{h['name']}[/]", style="blue")
        hb = ", ".join(f"{b['label'] or b['name']} root {b['root'] or '-'}"
                       for b in h["topology"]["host_bridges"])
        console.print(f"{h['description'] or h['topology']['description']}\n"
                      f"CPU {cpu['vendor_id']} family {cpu['family_hex']} "
                      f"(cpu_supports_p2pdma={cpu['cpu_supports_p2pdma']}); {hb}; "
                      f"IOMMU {h['topology']['iommu']}", style="dim")
        t = Table(title="attachments: P2P decision and mapping", title_justify="left")
        for col in ("buffer → importer", "mode", "map type", "dist", "path", "IOMMU",
                    "mapping", "inval/remap", "status"):
            t.add_column(col, overflow="fold")
        for a in h["attachments"]:
            path = " → ".join(a["path"]) if a["path"] else "-"
            held = a.get("repr_used") or a["repr"]
            if held != a["repr"]:
                held = f"{held} (asked {a['repr']})"
            mapping = (f"{held} {fmt_bytes(a['mapping_bytes'])} ({a['mapping_entries']} "
                       f"ent)" if a["mapping_bytes"] is not None else held)
            iommu = "-" if a["iommu"] is None else ("IOVA" if a["iommu"] else "bypass")
            mt = a["map_type"] or a["p2p_decision"] or "-"
            if a["map_type"] and a["p2p_decision"] and a["map_type"] != a["p2p_decision"]:
                mt = f"{a['map_type']} (P2P: {a['p2p_decision']})"
            t.add_row(f"{a['buffer']} → {a['device']}", a["mode"], mt,
                      "-" if a["distance"] is None else str(a["distance"]), path, iommu,
                      mapping, f"{a['invalidations']}/{a['remaps']}",
                      st(a["status"] if a["status"] != "ok" or not a["revoked"] else "revoked"))
        console.print(t)
        t = Table(title="streams: real bytes through those mappings, modelled time",
                  title_justify="left")
        for col in ("stream", "transfers", "moved", "verified", "CRC-32", "throughput",
                    "span", "status"):
            t.add_column(col, overflow="fold")
        for s in h["streams"]:
            span = (s["end"] - s["start"]) if s["start"] is not None else None
            status = s["status"]
            t.add_row(f"{s['name']}", f"{s['transfers']}/{s['count']}", fmt_bytes(s["bytes"]),
                      fmt_bytes(s["bytes_verified"]), s["crc32"] or "-",
                      fmt_rate(s["throughput"]), fmt_time(span),
                      st(status if not s["stopped"] or status != "ok" else "ok"))
        console.print(t)
        if h["events"] or h["moves"]:
            t = Table(title="events and exporter moves", title_justify="left")
            for col in ("time", "what", "outcome", "detail"):
                t.add_column(col, overflow="fold")
            rows = [(e["time"], e["label"], e["outcome"], e["detail"]) for e in h["events"]]
            for mv, n, nbytes, busy in _merged_moves(h["moves"]):
                what = f"move {mv['buffer']} {mv['from']}→{mv['to']}" + (f" ×{n}" if n > 1
                                                                         else "")
                rows.append((mv["start"], what, "ok", f"{fmt_bytes(nbytes)} in "
                             f"{fmt_time(busy)}" + (f" ({n} copies)" if n > 1 else "")))
            for tm, what, outcome, detail in sorted(rows, key=lambda r: r[0]):
                t.add_row("setup" if tm < 0 else fmt_time(tm), what, st(outcome), detail)
            console.print(t)
        t = Table(title="busiest links (modelled)", title_justify="left")
        for col in ("link", "dir", "capacity", "bytes", "mean util", "peak util"):
            t.add_column(col)
        for lk in h["links"][:8]:
            t.add_row(lk["link"], lk["direction"], fmt_rate(lk["capacity"]),
                      fmt_bytes(lk["bytes"]), f"{lk['mean_utilisation']:.0%}",
                      f"{lk['peak_utilisation']:.0%}")
        console.print(t)
        if flows:
            for s in h["streams"]:
                console.print(f"{s['name']}: " + ", ".join(
                    f"[{fmt_time(a)}, {fmt_time(b)}]" for a, b in s["flows"]))
        verdict = "[green]all bytes verified[/]" if h["ok"] else "[bold red]FAILED[/]"
        console.print(f"{verdict}: {fmt_bytes(h['bytes_verified'])} of "
                      f"{fmt_bytes(h['bytes_moved'])} verified; modelled "
                      f"{fmt_time(h['modelled_time'])}, wall {h['wall_time']:.2f} s")
        for m in h["missing"]:
            console.print(f"[yellow]missing[/] {m}")
        for f in h["failures"]:
            console.print(f"[bold red]failure[/] {f}")
    console.print()
    ok = report["ok"]
    console.print(("[bold green]OK[/]" if ok else "[bold red]FAILED[/]") +
                  f" — {fmt_bytes(report['bytes_verified'])} verified across "
                  f"{len(report['hosts'])} host(s); modelled {fmt_time(report['modelled_time'])}"
                  f", wall {report['wall_time']:.2f} s" +
                  (f"; {len(report['missing'])} element(s) missing" if report["missing"]
                   else ""))


__all__ += ["fmt_bytes", "fmt_rate", "fmt_time", "to_json"]
