"""The kernel command line — ``/proc/cmdline``, Documentation/admin-guide/kernel-parameters.txt.

Parsing follows the kernel's ``next_arg()`` (kernel/params.c): parameters are separated by
spaces, a value may be double-quoted, and everything after a lone ``--`` belongs to init. ``pci=``
carries a comma-separated option list (drivers/pci/pci.c ``pci_setup()``); the device lists of
``disable_acs_redir=`` and ``config_acs=`` use ``;`` between devices, so splitting on commas is
safe.

Parameters that matter for dma-buf and P2P:

* IOMMU: ``iommu=`` (``pt``, ``nopt``, ``off``), ``intel_iommu=`` (``on``, ``off``, ``sm_on``…),
  ``amd_iommu=`` (``off``…), ``iommu.passthrough=``, ``iommu.strict=``.
* ACS: ``pci=disable_acs_redir=<devices>`` (clear Request/Completion Redirect and Egress Control
  on those ports: P2P below them can use bus addresses), ``pci=config_acs=<flags>@<devices>``
  (set ACS control bits explicitly), the out-of-tree ``pcie_acs_override=`` patch.
* ``pci=nommconf`` (no extended config space: ACS invisible), ``pci=noats``.
* ``nomodule``, ``module_blacklist=``, ``vfio-pci.ids=``. Names are normalised with ``_`` for
  ``-`` (the kernel's ``parameq()`` treats them alike).

Kernel: kernel/params.c (next_arg, parse_args), drivers/pci/pci.c (pci_setup,
pci_disable_acs_redir, pci_config_acs), drivers/iommu/iommu.c (iommu.passthrough, iommu.strict),
drivers/iommu/intel/iommu.c (intel_iommu_setup), drivers/iommu/amd/init.c (parse_amd_iommu_options),
arch/x86/kernel/pci-dma.c (iommu_setup).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmabuf.doctor.report import Finding, Severity
from dmabuf.doctor.sysroot import SysRoot

__all__ = ["CmdLine", "cmdline_findings", "parse_cmdline", "read_cmdline"]

#: Parameter names (before ``=``) the doctor reports.
IOMMU_KEYS = ("iommu", "intel_iommu", "amd_iommu", "iommu.passthrough", "iommu.strict")
OTHER_KEYS = ("pcie_acs_override", "nomodule", "module_blacklist", "vfio_pci.ids",
              "vfio_iommu_type1.allow_unsafe_interrupts")

_RELEVANT_MODULES = frozenset({"nvidia", "nvidia_peermem", "amdgpu", "udmabuf", "vfio_pci",
                               "ib_uverbs", "mlx5_ib", "iommufd", "vgem", "habanalabs"})


@dataclass
class CmdLine:
    """A parsed kernel command line.

    Attributes:
        raw: the text as read (stripped).
        params: ``(name, value)`` in order; ``value`` is ``None`` for a bare flag.
        pci: the options of every ``pci=`` parameter, in order (``"disable_acs_redir=…"``).
        init_args: what follows ``--`` (passed to init, not the kernel).
    """

    raw: str
    params: list[tuple[str, str | None]] = field(default_factory=list)
    pci: list[str] = field(default_factory=list)
    init_args: list[str] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        """Value of the *last* occurrence of ``name`` (the kernel's "last one wins"); ``None``
        if absent or bare."""
        val = None
        for k, v in self.params:
            if k == name:
                val = v
        return val

    def has(self, name: str) -> bool:
        """``name`` occurs (with or without a value)."""
        return any(k == name for k, _v in self.params)

    def values(self, name: str) -> list[str]:
        """Every value given to ``name``, comma-split (``intel_iommu=on,sm_on`` → two)."""
        out: list[str] = []
        for k, v in self.params:
            if k == name and v is not None:
                out += [x for x in v.split(",") if x]
        return out

    def pci_option(self, name: str) -> list[str]:
        """Values of one ``pci=`` sub-option (``disable_acs_redir``), in order."""
        out = []
        for opt in self.pci:
            key, eq, val = opt.partition("=")
            if key == name:
                out.append(val if eq else "")
        return out

    def relevant(self) -> dict[str, Any]:
        """The parameters the doctor cares about, for JSON."""
        rel: dict[str, Any] = {}
        for k in (*IOMMU_KEYS, *OTHER_KEYS):
            if self.has(k):
                rel[k] = self.get(k)
        if self.pci:
            rel["pci"] = list(self.pci)
        return rel


def parse_cmdline(text: str) -> CmdLine:
    """Split a command line as the kernel's ``next_arg()`` does.

    Args:
        text: the content of ``/proc/cmdline``.

    Context:
        Pure function.

    Returns:
        A :class:`CmdLine`; never raises (unbalanced quotes run to the end, as in the kernel).

    Kernel: kernel/params.c, next_arg() and parameq().
    """
    raw = text.strip()
    cl = CmdLine(raw)
    i, n = 0, len(raw)
    tokens: list[str] = []
    while i < n:
        while i < n and raw[i].isspace():
            i += 1
        if i >= n:
            break
        in_q = False
        buf: list[str] = []
        while i < n and (in_q or not raw[i].isspace()):
            if raw[i] == '"':
                in_q = not in_q
            else:
                buf.append(raw[i])
            i += 1
        tokens.append("".join(buf))
    for j, tok in enumerate(tokens):
        if tok == "--":
            cl.init_args = tokens[j + 1:]
            break
        name, eq, val = tok.partition("=")
        name = name.replace("-", "_")   # parameq(): '-' and '_' are the same in names
        cl.params.append((name, val if eq else None))
        if name == "pci" and eq:
            cl.pci += [o for o in val.split(",") if o]
    return cl


def read_cmdline(root: SysRoot) -> tuple[CmdLine | None, str]:
    """Read ``proc/cmdline`` of ``root`` — ``saved_command_line``.

    Returns:
        ``(CmdLine, path)``, or ``(None, why)`` when the file is not there.

    Kernel: fs/proc/cmdline.c.
    """
    text = root.read_text("proc/cmdline")
    if text is None:
        return None, f"{root.file('proc/cmdline')} not found"
    return parse_cmdline(text), str(root.file("proc/cmdline"))


def cmdline_findings(cl: CmdLine | None, note: str) -> list[Finding]:
    """``cmdline.*`` findings: the line itself and each ACS/PCI/module parameter that matters.

    IOMMU parameters are interpreted in the IOMMU section (:mod:`dmabuf.doctor.iommu`).

    Args:
        cl: the parsed line, ``None`` when unknown.
        note: where it was read from (or why not).

    Returns:
        Findings: ``cmdline.line`` always; ``cmdline.disable_acs_redir``, ``.config_acs``,
        ``.nommconf``, ``.noats``, ``.pcie_acs_override``, ``.nomodule``,
        ``.module_blacklist``, ``.vfio_pci_ids`` when present.

    Kernel: drivers/pci/pci.c (pci_setup, pci_disable_acs_redir, pci_config_acs).
    """
    if cl is None:
        return [Finding("cmdline.line", Severity.INFO, "cmdline", "kernel command line unknown",
                        f"{note}: boot parameters (iommu=, pci=…) cannot be checked", None,
                        {"raw": None})]
    rel = cl.relevant()
    out = [Finding("cmdline.line", Severity.OK, "cmdline",
                   f"kernel command line: {len(cl.params)} parameter(s)"
                   + (f", {len(rel)} relevant to dma-buf/P2P" if rel else
                      ", none about IOMMU, ACS or PCI (defaults apply)"),
                   f"read from {note}: {cl.raw}", None,
                   {"raw": cl.raw, "relevant": rel, "init_args": cl.init_args})]
    for lst in cl.pci_option("disable_acs_redir"):
        out.append(Finding(
            "cmdline.disable_acs_redir", Severity.INFO, "cmdline",
            f"pci=disable_acs_redir={lst}",
            "the kernel clears ACS Request/Completion Redirect and Egress Control on these "
            "devices at boot, so P2P below them can be routed directly (BUS_ADDR); the devices "
            "behind them may share IOMMU groups as a consequence",
            None, {"devices": lst}))
    for lst in cl.pci_option("config_acs"):
        out.append(Finding(
            "cmdline.config_acs", Severity.INFO, "cmdline", f"pci=config_acs={lst}",
            "ACS control bits of these devices are forced at boot (flags string, most "
            "significant bit first, 'x' keeps a bit); the ACS state that results is read from "
            "config space in the PCI section and decides the P2P findings",
            None, {"value": lst}))
    if "nommconf" in cl.pci:
        out.append(Finding(
            "cmdline.nommconf", Severity.WARN, "cmdline", "pci=nommconf",
            "extended config space (MMCONFIG/ECAM) is off: the ACS capability is invisible, so "
            "the kernel can neither see nor enable ACS, and the P2P decisions in this report "
            "assume no ACS",
            "remove pci=nommconf unless firmware forces it", {}))
    if "noats" in cl.pci:
        out.append(Finding("cmdline.noats", Severity.INFO, "cmdline", "pci=noats",
                           "Address Translation Services disabled: devices cannot cache IOMMU "
                           "translations (no effect on the P2P decision)", None, {}))
    if cl.has("pcie_acs_override"):
        out.append(Finding(
            "cmdline.pcie_acs_override", Severity.INFO, "cmdline",
            f"pcie_acs_override={cl.get('pcie_acs_override') or ''}",
            "out-of-tree ACS override patch (not mainline): it splits IOMMU groups by "
            "pretending devices are isolated; P2P routing and the kernel's P2P decision are "
            "unchanged, and the devices are not really isolated",
            None, {"value": cl.get("pcie_acs_override")}))
    if cl.has("nomodule"):
        out.append(Finding("cmdline.nomodule", Severity.INFO, "cmdline", "nomodule",
                           "module loading is disabled for this boot: only built-in drivers "
                           "are available", "remove nomodule to allow modprobe", {}))
    if cl.has("module_blacklist"):
        bl = cl.values("module_blacklist")
        hit = [m for m in bl if m.replace("-", "_") in _RELEVANT_MODULES]
        out.append(Finding("cmdline.module_blacklist",
                           Severity.WARN if hit else Severity.INFO, "cmdline",
                           f"module_blacklist={','.join(bl)}",
                           "these modules cannot be loaded this boot"
                           + (f"; relevant to dma-buf/P2P: {', '.join(hit)}" if hit else ""),
                           "remove them from module_blacklist=" if hit else None,
                           {"modules": bl}))
    ids = cl.get("vfio_pci.ids")
    if ids:
        out.append(Finding("cmdline.vfio_pci_ids", Severity.INFO, "cmdline",
                           f"vfio-pci.ids={ids}",
                           "these vendor:device IDs are bound to vfio-pci at boot (for device "
                           "assignment); the host cannot use them for dma-buf itself", None,
                           {"ids": ids.split(",")}))
    return out
