"""``dmabuf compare``: one workload under each importer mode and mapping representation.

Kernel: none. The same scenario is run once per (importer mode, representation) pair — every
``[[import]]`` of every host switched to that mode and representation where its device supports
the mode — with the same seed, and each run is reduced to one row:

* **bytes pinned in VRAM** — VRAM the importers kept from moving (pinned and static
  attachments whose buffer sat in VRAM);
* **invalidations** and **remaps** (re-maps and ODP faults), and the modelled **remap cost**
  (seconds spent re-mapping, including IOMMU work and UMR rewrites, plus fault round trips);
* **mapping memory** — bytes of the objects the importers really hold for their mappings,
  measured (``nbytes``): the exporter's SgTable, a PhysVec, the one IOVA range an importer linked
  itself, an HMM mirror's ``hmm_dma_map`` (see :mod:`dmabuf.sim.actors`);
* **held** — how many of the mapped importers hold the representation asked for. An importer
  gets a representation only where the model supports it: dma-buf importers keep what the
  exporter returns (every exporter of the model returns an SgTable: ``physvec`` and ``iova`` are
  then ``n/a: exporter X only returns SgTable``, and the row shows what was measured with the
  SgTable), p2pmem users map their physical ranges themselves (all three, but no IOVA for
  ``BUS_ADDR``), HMM mirrors always hold an ``hmm_dma_map`` (one IOVA window);
* **throughput** — bytes moved over the span of the streams, modelled.

A mode the scenario's importers cannot do (a GPU cannot register an ODP MR) leaves those
importers as they were. ``hmm`` switches a buffer's importers together or not at all (an HMM
import makes the buffer process memory, which no kernel path exports as a dma-buf), and never
for memory no process can map for HMM (habanalabs HBM, vfio-pci BARs: ``HMM_REFUSED``). A mode
whose driver support is missing shows as ``missing`` with the reason. Rows are deterministic
for a seed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from dmabuf.sim.runner import run_scenario
from dmabuf.sim.scenario import HMM_REFUSED, KINDS, REPRESENTATIONS, HostSpec, ImportSpec, Scenario

__all__ = ["COMPARE_MODES", "CompareRow", "compare", "variant"]

#: The importer modes compared, in table order.
COMPARE_MODES = ("pinned", "dynamic", "odp", "hmm")


@dataclass(frozen=True)
class CompareRow:
    """One (mode, representation) run reduced to what the comparison table shows."""

    mode: str
    repr: str
    status: str
    detail: str
    imports_switched: int
    pinned_vram_bytes: int
    invalidations: int
    remaps: int
    faults: int
    remap_cost: float
    mapping_bytes: int
    throughput: float
    bytes_verified: int
    modelled_time: float
    repr_held: int = 0
    repr_mapped: int = 0
    repr_note: str = ""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict (``--json``)."""
        return dict(self.__dict__)


def _can(h: HostSpec, i: ImportSpec, mode: str) -> bool:
    """Whether import ``i`` of host ``h`` can take ``mode``."""
    kind = h.device(i.device).kind
    exp = h.buffer(i.buffer).exporter
    exp_kind = h.device(exp).kind if exp != "system" else "system"
    if mode not in KINDS[kind].modes or exp_kind == "vfio" or i.expect is not None:
        return False
    return not (mode == "hmm" and exp_kind in HMM_REFUSED)


def variant(s: Scenario, mode: str, rep: str) -> tuple[Scenario, int]:
    """``s`` with every import switched to ``mode``/``rep`` where its device supports the mode
    (``hmm``: a buffer's importers all together, or none of them — see the module docstring).

    Returns: the variant and how many imports took the mode.
    """
    switched = 0
    hosts: list[HostSpec] = []
    for h in s.hosts:
        can = {i.key: _can(h, i, mode) for i in h.imports}
        for b in {i.buffer for i in h.imports}:
            group = [i for i in h.imports if i.buffer == b]
            if mode == "hmm" or any(i.mode == "hmm" for i in group):
                together = all(can[i.key] for i in group)
                for i in group:
                    can[i.key] = together
        imps = [replace(i, mode=mode if can[i.key] else i.mode, repr=rep) for i in h.imports]
        switched += sum(can.values())
        hosts.append(replace(h, imports=tuple(imps)))
    return s.replace_hosts(hosts), switched


_ONLY_SGT = re.compile(r"^n/a: exporter (\S+) only returns SgTable")


def summarize_notes(notes: Iterable[str]) -> str:
    """One line from the importers' representation notes: ``"exporters amdgpu, system-heap only
    return SgTable; BUS_ADDR P2P uses PCI bus addresses…"``."""
    exps: list[str] = []
    rest: list[str] = []
    for n in notes:
        m = _ONLY_SGT.match(n)
        if m:
            if m.group(1) not in exps:
                exps.append(m.group(1))
        else:
            t = n[5:] if n.startswith("n/a: ") else n
            if t not in rest:
                rest.append(t)
    parts = []
    if exps:
        parts.append(f"exporter{'s' if len(exps) > 1 else ''} {', '.join(exps)} only "
                     f"return{'' if len(exps) > 1 else 's'} SgTable")
    parts += rest
    return "; ".join(parts)


def _reduce(mode: str, rep: str, switched: int, report: dict[str, Any]) -> CompareRow:
    inval = remaps = faults = pinned = mem = 0
    cost = 0.0
    moved = 0
    span = 0.0
    missing = list(report.get("missing", []))
    # An event the mode refuses (evicting a buffer a pinned importer holds: EBUSY) is a result
    # of the comparison, not a failure of the run; checksum and DMA failures are.
    failures = [f for h in report["hosts"] for f in h["failures"]
                if not f.startswith("event ")]
    refused = [e for h in report["hosts"] for e in h["events"] if e["outcome"] == "error"]
    detail = "; ".join(failures[:2])
    if not failures and refused:
        detail = "refused: " + "; ".join(f"{e['label']} ({e['detail'].split(']')[0]}])"
                                         for e in refused[:3])
    held = mapped = 0
    notes: list[str] = []
    for h in report["hosts"]:
        for a in h["attachments"]:
            if a.get("repr_used") is not None:
                mapped += 1
                if a["repr_used"] == rep:
                    held += 1
                elif a.get("repr_note"):
                    notes.append(a["repr_note"])
            inval += a["invalidations"]
            remaps += a["remaps"]
            faults += a["faults"]
            cost += a["remap_time"] + a["invalidate_time"]
            pinned += a["pinned_vram_bytes"]
            mem += a["mapping_bytes"] or 0
            if a["status"] == "missing" and a["mode"] == mode:
                missing.append(f"{a['buffer']}@{a['device']}: {a['detail']}")
        starts = [s["start"] for s in h["streams"] if s["start"] is not None]
        ends = [s["end"] for s in h["streams"] if s["end"] is not None]
        moved += sum(s["bytes"] for s in h["streams"])
        if starts and ends:
            span += max(ends) - min(starts)
    status = "failed" if failures else "ok"
    if missing and switched and status == "ok":
        status = "missing"
        detail = missing[0]
    elif switched == 0:
        status = "n/a"
        detail = f"no importer of this scenario can do mode {mode!r}"
    note = summarize_notes(notes)
    if status == "ok" and mapped and held == 0:
        status = "n/a"
        detail = f"{note} (measured with what they hold)" + (f"; {detail}" if detail else "")
    elif note:
        detail = (f"{detail}; " if detail else "") + f"{held}/{mapped} hold {rep}, others: {note}"
    return CompareRow(mode, rep, status, detail, switched, pinned, inval, remaps, faults, cost,
                      mem, moved / span if span > 0 else 0.0, report["bytes_verified"],
                      report["modelled_time"], held, mapped, note, notes)


def compare(s: Scenario, *, modes: Iterable[str] = COMPARE_MODES,
            reprs: Iterable[str] = tuple(REPRESENTATIONS),
            progress: Callable[[str, str], None] | None = None,
            seed: int | None = None) -> list[CompareRow]:
    """Run every (mode, representation) variant of ``s`` and reduce each to a row.

    Args:
        s: the scenario.
        modes: importer modes to compare (default :data:`COMPARE_MODES`).
        reprs: representations (default: all of :data:`~dmabuf.sim.scenario.REPRESENTATIONS`).
        progress: called with ``(mode, repr)`` before each run.
        seed: override the scenario's seed.
    Context: runs the scenario ``len(modes) * len(reprs)`` times; call from an ordinary thread.
    Returns: the rows, modes outer, representations inner.
    Raises: what :func:`~dmabuf.sim.runner.run_scenario` raises for a broken run.
    Kernel: none.
    """
    rows: list[CompareRow] = []
    base = s if seed is None else s.with_seed(seed)
    for mode in modes:
        for rep in reprs:
            if progress is not None:
                progress(mode, rep)
            v, switched = variant(base, mode, rep)
            if switched == 0:
                rows.append(CompareRow(mode, rep, "n/a", f"no importer of this scenario can do "
                                       f"mode {mode!r}", 0, 0, 0, 0, 0, 0.0, 0, 0.0, 0, 0.0))
                continue
            report = run_scenario(v, allow_missing=True, keep_timeline=False)
            rows.append(_reduce(mode, rep, switched, report))
    return rows

