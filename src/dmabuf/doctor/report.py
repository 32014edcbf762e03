"""Findings and the doctor's report — the Python form of a kernel log line with a fix attached.

Kernel: none directly; every finding interprets one kernel interface (``/proc/config.gz``,
``/proc/cmdline``, ``/proc/modules``, ``/dev``, ``/sys/kernel/iommu_groups``,
``/sys/bus/pci/devices``) and says what it means for dma-buf and P2P DMA.

A :class:`Finding` is one statement about the machine: an ``id`` stable across releases (tests and
scripts match on it), a :class:`Severity`, a one-line ``title``, the ``reason`` (what was seen and
what it implies), the ``remedy`` (kernel parameter, module, BIOS/firmware setting, udev rule or
kernel config option; ``None`` when nothing needs doing) and ``evidence`` (JSON-able data: the
file read, the values found).

Severity scale (chosen for "why is dma-buf / P2P not used on my machine?"):

* ``ok`` — the feature is there and usable.
* ``info`` — a neutral fact, or a missing feature that is optional or explained by another
  finding (e.g. the device node is absent *because* its config option is off).
* ``warn`` — something a dma-buf/P2P user commonly needs is missing or refused (no heaps, no
  udmabuf, no PCI_P2PDMA, a P2P pair refused by ACS or the host-bridge allow-list).
* ``error`` — something that is configured cannot work as configured (the dma-buf core is
  absent, a node the kernel registered is missing or inaccessible, sysfs could not be parsed).

The doctor never fails because the machine lacks features: severities are data, not exit codes.

The JSON form (:meth:`DoctorReport.as_dict`, schema ``pydmabuf.doctor/1``) is documented in
``docs/doctor.md``; new keys may be added, existing keys keep their meaning.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dmabuf.pci import P2pMatrix, Topology

__all__ = ["SCHEMA", "SECTIONS", "DoctorReport", "Finding", "Severity"]

#: Identifier of the JSON structure; bumped only on an incompatible change.
SCHEMA = "pydmabuf.doctor/1"

#: Report sections, in display order.
SECTIONS = ("kernel", "config", "devices", "modules", "cmdline", "iommu", "pci", "p2p")


class Severity(enum.StrEnum):
    """How much a finding matters: ``ok`` < ``info`` < ``warn`` < ``error``."""

    OK = "ok"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """0 for ok … 3 for error (for sorting and "worst of")."""
        return _RANK[self]


_RANK = {Severity.OK: 0, Severity.INFO: 1, Severity.WARN: 2, Severity.ERROR: 3}


@dataclass(frozen=True)
class Finding:
    """One statement about the machine, with its reason and remedy.

    Attributes:
        id: stable dotted identifier (``config.PCI_P2PDMA``, ``p2p.acs_redirect``).
        severity: see :class:`Severity`.
        section: one of :data:`SECTIONS`.
        title: one line.
        reason: what was seen and what it implies for dma-buf / P2P.
        remedy: what to change, or ``None``.
        evidence: JSON-able data backing the finding.
    """

    id: str
    severity: Severity
    section: str
    title: str
    reason: str
    remedy: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"finding {self.id}: section {self.section!r} is not one of "
                             f"{', '.join(SECTIONS)}")
        if not isinstance(self.severity, Severity):
            raise TypeError(f"finding {self.id}: severity must be a Severity, not "
                            f"{type(self.severity).__name__}")

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``id``, ``severity``, ``section``, ``title``, ``reason``, ``remedy``,
        ``evidence``."""
        return {"id": self.id, "severity": self.severity.value, "section": self.section,
                "title": self.title, "reason": self.reason, "remedy": self.remedy,
                "evidence": self.evidence}


@dataclass
class DoctorReport:
    """Everything the doctor found about one root.

    Attributes:
        root: the directory diagnosed (``/`` for the running machine).
        live: True when ``root`` is the running machine's ``/``.
        findings: in section order, then in the order they were made.
        sections: per-section raw data (see ``docs/doctor.md``).
        capabilities: ``{name: {"available": bool | None, "basis": str}}`` — the short answer.
        verdict: a few sentences summarising what works and what does not.
        topology: the PCI topology loaded from the root (``None`` without PCI or on error).
        matrix: the P2P matrix of the relevant endpoints (``None`` with fewer than two).
    """

    root: str
    live: bool
    findings: list[Finding] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdict: list[str] = field(default_factory=list)
    topology: Topology | None = None
    matrix: P2pMatrix | None = None

    def finding(self, fid: str) -> Finding:
        """The finding with this id.

        Raises:
            KeyError: no such finding; the message lists the ids there are.
        """
        for f in self.findings:
            if f.id == fid:
                return f
        raise KeyError(f"no finding {fid!r}; findings: {', '.join(f.id for f in self.findings)}")

    def has(self, fid: str) -> bool:
        """True when a finding with this id exists."""
        return any(f.id == fid for f in self.findings)

    def by_section(self, section: str) -> list[Finding]:
        """Findings of one section, in order."""
        return [f for f in self.findings if f.section == section]

    def counts(self) -> dict[str, int]:
        """How many findings of each severity."""
        out = {s.value: 0 for s in Severity}
        for f in self.findings:
            out[f.severity.value] += 1
        return out

    def worst(self) -> Severity:
        """The highest severity found (``ok`` for an empty report)."""
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=Severity.OK)

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON structure (schema :data:`SCHEMA`)."""
        from dmabuf import __version__

        return {
            "schema": SCHEMA,
            "tool": {"name": "pydmabuf", "version": __version__},
            "root": self.root,
            "live": self.live,
            "summary": {**self.counts(), "worst": self.worst().value},
            "verdict": list(self.verdict),
            "capabilities": self.capabilities,
            "findings": [f.as_dict() for f in self.findings],
            "sections": self.sections,
        }
