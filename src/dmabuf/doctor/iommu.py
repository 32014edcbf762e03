"""IOMMU state and groups — drivers/iommu/iommu.c (``/sys/kernel/iommu_groups``, ``/sys/class``).

What is read:

* ``/sys/kernel/iommu_groups/<n>/devices/<bdf>`` — one link per member; groups exist only when an
  IOMMU driver found hardware. ``/sys/kernel/iommu_groups/<n>/type`` — the default domain type:
  ``DMA``/``DMA-FQ`` (translated: every DMA address is an IOVA), ``identity`` (passthrough),
  ``blocked``, ``unmanaged`` (owned by VFIO/iommufd). The shared captures have no ``type``; then
  the mode is inferred from the command line (``iommu=pt``, ``iommu.passthrough=``) and the config
  (``IOMMU_DEFAULT_PASSTHROUGH``), as ``iommu_subsys_init()`` does.
* ``/sys/class/iommu/<unit>`` — the IOMMU hardware units (``dmar0``, ``ivhd0``…).

Why it matters for P2P: with a translating IOMMU, a THRU_HOST_BRIDGE P2P mapping is an IOVA (the
root complex translates), while BUS_ADDR TLPs never reach the IOMMU; IOMMU drivers also ask the
PCI core to enable ACS (``pci_request_acs()``), and ``pci_enable_acs()`` then sets Source
Validation, Request/Completion Redirect and Upstream Forwarding on every port that has ACS — which
turns switch-local P2P into host-bridge P2P (refused on most Intel hosts). Without groups there is
no IOMMU: DMA addresses are physical addresses, and VFIO cannot assign devices.

Kernel: drivers/iommu/iommu.c (iommu_group sysfs, iommu_subsys_init, iommu.passthrough,
iommu.strict), drivers/pci/pci.c (pci_request_acs, pci_enable_acs), drivers/iommu/intel/iommu.c,
drivers/iommu/amd/init.c.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmabuf.doctor.cmdline import CmdLine
from dmabuf.doctor.kconfig import DoctorContext
from dmabuf.doctor.report import Finding, Severity
from dmabuf.doctor.sysroot import SysRoot

__all__ = ["IommuInfo", "iommu_findings", "read_iommu"]

_PT_WORDS = ("1", "on", "y", "yes", "true")
_TRANSLATED = ("DMA", "DMA-FQ")


@dataclass
class IommuInfo:
    """IOMMU groups and units.

    Attributes:
        groups: ``{group: [bdf, …]}``.
        types: ``{group: type}`` where a ``type`` file was readable.
        units: names in ``/sys/class/iommu`` (``None``: not captured).
        groups_dir: ``/sys/kernel/iommu_groups`` exists.
    """

    groups: dict[int, list[str]] = field(default_factory=dict)
    types: dict[int, str] = field(default_factory=dict)
    units: list[str] | None = None
    groups_dir: bool = False

    def group_of(self) -> dict[str, int]:
        """``{bdf: group}``."""
        return {b: g for g, bs in self.groups.items() for b in bs}


def read_iommu(root: SysRoot) -> IommuInfo:
    """Read ``sys/kernel/iommu_groups`` and ``sys/class/iommu`` of ``root``.

    Returns:
        An :class:`IommuInfo` (members by basename of their links; ``units`` ``None`` when
        ``sys/class`` was not captured).

    Kernel: drivers/iommu/iommu.c (iommu_group_add_device's sysfs links, the ``type``
    attribute), drivers/iommu/iommu-sysfs.c (the ``iommu`` class).
    """
    info = IommuInfo(groups_dir=root.file("sys/kernel/iommu_groups").is_dir())
    for name in root.listdir("sys/kernel/iommu_groups") or []:
        if not name.isdigit():
            continue
        g = int(name)
        members = root.listdir(f"sys/kernel/iommu_groups/{name}/devices") or []
        info.groups[g] = members
        t = root.read_text(f"sys/kernel/iommu_groups/{name}/type")
        if t is not None and t.strip():
            info.types[g] = t.strip()
    cap = root.captured("sys/class")
    units = root.listdir("sys/class/iommu")
    if units is not None:
        info.units = units
    elif cap:
        info.units = []
    return info


def _mode(info: IommuInfo, cl: CmdLine | None, ctx: DoctorContext) -> tuple[str, str]:
    """``(mode, basis)``: ``off``, ``translated``, ``passthrough``, ``mixed``."""
    if not info.groups:
        return "off", "no IOMMU groups"
    if info.types:
        kinds = set(info.types.values())
        if kinds <= {"identity"}:
            return "passthrough", "every group's default domain is identity"
        if kinds & set(_TRANSLATED) and "identity" in kinds:
            return "mixed", "groups have identity and translated default domains"
        if kinds & set(_TRANSLATED):
            return "translated", f"default domain type {', '.join(sorted(kinds))}"
        return "translated", f"group types {', '.join(sorted(kinds))}"
    if cl is not None:
        pt = cl.get("iommu.passthrough")
        if pt is not None:
            return (("passthrough" if pt.lower() in _PT_WORDS else "translated"),
                    f"iommu.passthrough={pt} on the command line")
        vals = cl.values("iommu")
        if "pt" in vals:
            return "passthrough", "iommu=pt on the command line"
        if "nopt" in vals:
            return "translated", "iommu=nopt on the command line"
    if ctx.value("IOMMU_DEFAULT_PASSTHROUGH") == "y":
        return "passthrough", "CONFIG_IOMMU_DEFAULT_PASSTHROUGH=y (no override on the command line)"
    if ctx.config is not None:
        return "translated", ("default domain type from the config (IOMMU_DEFAULT_PASSTHROUGH "
                              "not set) — inferred, the capture has no group 'type' files")
    return "translated", "inferred (groups exist; no type files, no config)"


def _why_off(cl: CmdLine | None, ctx: DoctorContext, cpu_vendor: str) -> str:
    """Best explanation of "no IOMMU groups"."""
    if cl is not None:
        if "off" in cl.values("iommu"):
            return "iommu=off is on the command line"
        if "off" in cl.values("intel_iommu") and cpu_vendor == "GenuineIntel":
            return "intel_iommu=off is on the command line"
        if "off" in cl.values("amd_iommu") and cpu_vendor in ("AuthenticAMD", "HygonGenuine"):
            return "amd_iommu=off is on the command line"
    if ctx.config is not None:
        drivers = [d for d in ("INTEL_IOMMU", "AMD_IOMMU", "VIRTIO_IOMMU", "ARM_SMMU_V3",
                               "ARM_SMMU") if ctx.on(d)]
        if not drivers:
            return ("no IOMMU hardware driver is built (CONFIG_INTEL_IOMMU, AMD_IOMMU, "
                    "VIRTIO_IOMMU, ARM_SMMU_V3 are all off)")
        if (cpu_vendor == "GenuineIntel" and "INTEL_IOMMU" in drivers
                and ctx.value("INTEL_IOMMU_DEFAULT_ON") != "y"
                and not (cl is not None and "on" in cl.values("intel_iommu"))):
            return ("CONFIG_INTEL_IOMMU_DEFAULT_ON is not set and intel_iommu=on is not on the "
                    "command line, so the Intel IOMMU stays off (or the firmware has no DMAR "
                    "table: VT-d off in the BIOS, or not emulated by the hypervisor)")
        return (f"IOMMU drivers {', '.join(drivers)} are built but found no hardware: the "
                "firmware describes none (VT-d / AMD-Vi disabled in the BIOS, or not provided "
                "by the hypervisor)")
    return ("unknown (no kernel config): IOMMU disabled in firmware, on the command line, or "
            "not built")


def iommu_findings(info: IommuInfo, cl: CmdLine | None, ctx: DoctorContext, cpu_vendor: str,
                   relevant: list[str], acs_ports: list[str],
                   ) -> tuple[list[Finding], dict[str, Any]]:
    """``iommu.*`` findings and the IOMMU section data.

    Args:
        info: from :func:`read_iommu`.
        cl: the command line (``None`` if unknown).
        ctx: kernel config.
        cpu_vendor: ``vendor_id`` of the CPU.
        relevant: BDFs of the P2P-relevant endpoints (for the shared-group check).
        acs_ports: BDFs of ports whose ACS control redirects P2P.

    Returns:
        ``(findings, section data)``: ``iommu.state`` always, ``iommu.groups`` when groups
        exist.

    Kernel: drivers/iommu/iommu.c (iommu_subsys_init: default domain type), drivers/pci/pci.c
    (pci_request_acs, pci_enable_acs).
    """
    out: list[Finding] = []
    mode, basis = _mode(info, cl, ctx)
    params = {k: cl.get(k) for k in ("iommu", "intel_iommu", "amd_iommu", "iommu.passthrough",
                                     "iommu.strict") if cl is not None and cl.has(k)}
    data: dict[str, Any] = {"mode": mode, "basis": basis, "groups": len(info.groups),
                            "group_of": info.group_of(),
                            "group_types": {str(k): v for k, v in sorted(info.types.items())},
                            "units": info.units, "cmdline": params, "why_off": None}
    ev = {"mode": mode, "basis": basis, "cmdline": params, "units": info.units}
    if mode == "off":
        why = _why_off(cl, ctx, cpu_vendor)
        data["why_off"] = why
        vfio = ctx.on("VFIO_PCI") or ctx.on("VFIO")
        out.append(Finding(
            "iommu.state", Severity.WARN if vfio else Severity.INFO, "iommu",
            "no IOMMU: DMA uses physical addresses",
            f"/sys/kernel/iommu_groups is {'empty' if info.groups_dir else 'missing'}: {why}. "
            "Devices DMA with physical addresses (dma-direct, swiotlb for devices with small "
            "DMA masks); P2P through the host bridge uses physical BAR addresses; the kernel does "
            "not enable ACS; VFIO cannot assign devices"
            + (" although VFIO is built" if vfio else ""),
            ("for VFIO: enable VT-d / AMD-Vi in the BIOS and boot with intel_iommu=on (Intel; "
             "AMD enables its IOMMU by default)") if vfio else None,
            {**ev, "why_off": why}))
        return out, data
    strict = cl.get("iommu.strict") if cl is not None else None
    if mode == "passthrough":
        reason = (f"{len(info.groups)} IOMMU groups, default domains are identity ({basis}): "
                  "the host's own drivers DMA with physical addresses (fast, no IOVA), "
                  "VFIO/iommufd still translate for assigned devices")
    elif mode == "mixed":
        reason = f"{len(info.groups)} IOMMU groups with mixed default domains ({basis})"
    else:
        reason = (f"{len(info.groups)} IOMMU groups, translated ({basis}"
                  + (f", iommu.strict={strict}" if strict is not None else "") + "): every DMA "
                  "address is an IOVA; THRU_HOST_BRIDGE P2P gets an IOVA mapping of the peer's "
                  "BAR, BUS_ADDR P2P bypasses the IOMMU")
    if info.units:
        reason += f"; IOMMU units: {', '.join(info.units)}"
    if acs_ports:
        reason += ("; the IOMMU driver requested ACS, so the kernel enabled Request/Completion "
                   f"Redirect on ports that have ACS ({', '.join(acs_ports[:8])}"
                   f"{', …' if len(acs_ports) > 8 else ''}): P2P below them goes up to the root "
                   "complex (see the P2P section)")
    out.append(Finding("iommu.state", Severity.OK, "iommu", f"IOMMU active ({mode})", reason,
                       None, ev))
    # groups shared by relevant endpoints
    gof = info.group_of()
    shared: dict[int, list[str]] = {}
    for b in relevant:
        g = gof.get(b)
        if g is not None and len(info.groups.get(g, [])) > 1:
            shared.setdefault(g, [])
            if b not in shared[g]:
                shared[g].append(b)
    sizes = {g: len(m) for g, m in info.groups.items()}
    gev = {"groups": {str(g): m for g, m in sorted(info.groups.items())},
           "shared_by_relevant": {str(g): info.groups[g] for g in sorted(shared)}}
    if shared:
        txt = "; ".join(f"group {g}: {', '.join(info.groups[g])}" for g in sorted(shared))
        out.append(Finding(
            "iommu.groups", Severity.INFO, "iommu",
            f"{len(info.groups)} IOMMU groups; {len(shared)} shared by P2P-relevant devices",
            f"devices in one group are not isolated from each other (no ACS between them) and "
            f"VFIO must assign the whole group: {txt}",
            "nothing for host use; for VFIO assign every device of the group, or place the "
            "devices behind ports with ACS", gev))
    else:
        out.append(Finding("iommu.groups", Severity.OK, "iommu",
                           f"{len(info.groups)} IOMMU groups present",
                           f"largest group has {max(sizes.values()) if sizes else 0} device(s); "
                           "every P2P-relevant device is alone in its group" if relevant else
                           f"largest group has {max(sizes.values()) if sizes else 0} device(s)",
                           None, gev))
    return out, data
