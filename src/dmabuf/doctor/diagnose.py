"""``diagnose()``: every check on one root, in order — the doctor's main entry point.

Kernel: the interfaces of the section modules (kernel/configs.c, /proc/cmdline, /proc/modules,
/dev, drivers/iommu/iommu.c, drivers/pci/p2pdma.c).

Order: kernel release and config first (everything else is judged against them), then the PCI
topology (which hardware exists decides whether a missing ``/dev/dri`` is normal), then device
nodes, modules, command line, IOMMU, and the P2P decisions. Each section module returns its
findings and its raw data; this module adds the capability table and the verdict — the short
answer to "why is dma-buf / P2P not used on my machine?".

Errors: only a root that is not a directory laid out like ``/`` raises; everything the machine
lacks, and even a damaged PCI sysfs tree, becomes a finding.
"""

from __future__ import annotations

import os
from typing import Any

from dmabuf.doctor.cmdline import cmdline_findings, read_cmdline
from dmabuf.doctor.devnodes import DevNodes, devnode_findings, read_devnodes
from dmabuf.doctor.iommu import iommu_findings, read_iommu
from dmabuf.doctor.kconfig import (
    DoctorContext,
    KConfig,
    KernelInfo,
    config_findings,
    kernel_findings,
    read_config,
    read_kernel,
)
from dmabuf.doctor.modules import module_findings, read_modules
from dmabuf.doctor.p2p import (
    P2pAnalysis,
    analyse_p2p,
    hardware_present,
    p2p_findings,
    pci_findings,
)
from dmabuf.doctor.report import SECTIONS, DoctorReport, Finding
from dmabuf.doctor.sysroot import SysRoot
from dmabuf.errors import DmaBufError
from dmabuf.pci import Topology, load_sysfs

__all__ = ["diagnose"]


def diagnose(root: str | os.PathLike[str] = "/") -> DoctorReport:
    """Diagnose dma-buf and P2P support of a machine or a captured root.

    Args:
        root: ``/`` (the running machine) or a directory laid out like it (a capture).

    Context:
        Reads files only (never opens device nodes, never writes); may take a second on a large
        machine. No locks.

    Returns:
        A :class:`~dmabuf.doctor.report.DoctorReport`.

    Raises:
        DmaBufError(ENOENT/ENOTDIR): ``root`` is missing, not a directory, or has no ``sys/``.
        DmaBufError(EINVAL): a pydmabuf capture manifest is corrupt.

    Kernel: see the section modules; the P2P decisions are drivers/pci/p2pdma.c
    calc_map_type_and_dist() through :mod:`dmabuf.pci`.
    """
    sr = SysRoot(root)
    kernel = read_kernel(sr)
    cfg, cfg_note = read_config(sr, kernel)
    topo: Topology | None = None
    pci_error: str | None = None
    if sr.file("sys/bus/pci/devices").is_dir():
        try:
            topo = load_sysfs(sr.path)
        except DmaBufError as e:
            pci_error = str(e)
    hw = hardware_present(topo)
    mods = read_modules(sr)
    ctx = DoctorContext(cfg, kernel, amdgpu=hw["amdgpu"] or mods.has("amdgpu"))
    cl, cl_note = read_cmdline(sr)
    dn = read_devnodes(sr)
    io = read_iommu(sr)
    an = analyse_p2p(topo) if topo is not None else P2pAnalysis()

    findings: dict[str, list[Finding]] = {s: [] for s in SECTIONS}
    sections: dict[str, Any] = {}
    findings["kernel"] = kernel_findings(kernel)
    sections["kernel"] = {**kernel.describe(), "root": str(sr.path), "root_kind": sr.kind}
    findings["config"] = config_findings(ctx, cfg_note)
    sections["config"] = {"source": cfg.source if cfg else None, "note": cfg_note,
                          "options": {f.evidence["option"]: f.evidence["value"]
                                      for f in findings["config"] if "option" in f.evidence}}
    findings["devices"] = devnode_findings(dn, ctx, hw)
    sections["devices"] = dn.describe()
    drivers: dict[str, list[str]] = {}
    if topo is not None:
        for d in topo.devices:
            if d.driver:
                drivers.setdefault(d.driver, []).append(d.bdf)
    findings["modules"] = module_findings(mods, ctx.value("MODULES"), drivers)
    sections["modules"] = {**mods.describe(), "pci_drivers": drivers}
    findings["cmdline"] = cmdline_findings(cl, cl_note)
    sections["cmdline"] = ({"raw": cl.raw, "params": [[k, v] for k, v in cl.params],
                            "pci": cl.pci, "relevant": cl.relevant(), "init_args": cl.init_args,
                            "source": cl_note}
                           if cl is not None else
                           {"raw": None, "params": [], "pci": [], "relevant": {},
                            "init_args": [], "source": cl_note})
    relevant = [d.bdf for d in an.devices]
    acs_ports = ([d.bdf for d in topo.devices if d.acs is not None and d.acs.redirects]
                 if topo is not None else [])
    vendor = topo.cpu.vendor_id if topo is not None else ""
    findings["iommu"], sections["iommu"] = iommu_findings(io, cl, ctx, vendor, relevant,
                                                          acs_ports)
    findings["pci"], sections["pci"] = pci_findings(sr, topo, pci_error)
    findings["p2p"], sections["p2p"] = p2p_findings(topo, an, ctx.value("PCI_P2PDMA"),
                                                    sections["iommu"]["mode"])
    report = DoctorReport(root=str(sr.path), live=sr.live,
                          findings=[f for s in SECTIONS for f in findings[s]],
                          sections=sections, topology=topo, matrix=an.matrix)
    report.capabilities = _capabilities(ctx, dn, io.groups, sections["p2p"], kernel)
    report.verdict = _verdict(report, cfg, kernel)
    return report


def _cap(avail: bool | None, basis: str) -> dict[str, Any]:
    return {"available": avail, "basis": basis}


def _usable(dn: DevNodes, key: str, prefix: str = "") -> bool | None:
    if not dn.known:
        return None
    nodes = [n for n in dn.groups.get(key, []) if n.kind == "chr"
             and os.path.basename(n.path).startswith(prefix)]
    return any(n.readable and n.writable for n in nodes)


def _capabilities(ctx: DoctorContext, dn: DevNodes, groups: dict[int, list[str]],
                  p2p: dict[str, Any], kernel: KernelInfo) -> dict[str, dict[str, Any]]:
    def cfg_cap(name: str) -> dict[str, Any]:
        v = ctx.value(name)
        return _cap(None if v == "unknown" else v in ("y", "m"), f"CONFIG_{name}={v}")

    def node_cap(key: str, option: str, prefix: str = "", what: str = "") -> dict[str, Any]:
        u = _usable(dn, key, prefix)
        v = ctx.value(option)
        if u is None:
            return _cap(None if v in ("y", "m", "unknown") else False,
                        f"CONFIG_{option}={v}; device nodes not captured")
        return _cap(u, f"{what or '/dev/' + key} {'usable' if u else 'not usable'}"
                    f" (CONFIG_{option}={v})")

    caps = {
        "dma_buf": cfg_cap("DMA_SHARED_BUFFER"),
        "sync_file": cfg_cap("SYNC_FILE"),
        "dma_heap": node_cap("dma_heap", "DMABUF_HEAPS", what="/dev/dma_heap/*"),
        "udmabuf": node_cap("udmabuf", "UDMABUF", what="/dev/udmabuf"),
        "drm_prime": node_cap("dri", "DRM", "renderD", "/dev/dri/renderD*"),
        "rdma_verbs": node_cap("infiniband", "INFINIBAND_USER_ACCESS", "uverbs",
                               "/dev/infiniband/uverbs*"),
        "pci_p2pdma": cfg_cap("PCI_P2PDMA"),
        "vfio": node_cap("vfio", "VFIO", what="/dev/vfio/*"),
        "iommufd": node_cap("iommufd", "IOMMUFD", what="/dev/iommu"),
    }
    rd = caps["rdma_verbs"]["available"]
    um = ctx.value("INFINIBAND_USER_MEM")
    new = kernel.at_least(5, 12)
    caps["rdma_dmabuf_mr"] = _cap(
        None if rd is None or um == "unknown" or new is None else bool(rd and um == "y" and new),
        f"RDMA verbs {'usable' if rd else 'not usable' if rd is False else 'unknown'}, "
        f"CONFIG_INFINIBAND_USER_MEM={um}, kernel >= 5.12: {new}")
    if groups:
        caps["vfio"]["basis"] += f"; {len(groups)} IOMMU groups"
    elif caps["vfio"]["available"]:
        caps["vfio"] = _cap(False, caps["vfio"]["basis"] + "; but no IOMMU groups")
    ok_pairs = int(p2p.get("allowed_pairs", 0))
    total = len(p2p.get("pairs", []))
    en = p2p.get("enabled")
    caps["p2p_pairs"] = _cap(
        None if en is None and total else bool(en and ok_pairs),
        f"{ok_pairs} of {total} candidate pair(s) allowed by the topology; "
        f"CONFIG_PCI_P2PDMA={p2p.get('p2pdma_config')}")
    return caps


def _verdict(r: DoctorReport, cfg: KConfig | None, kernel: KernelInfo) -> list[str]:
    c = r.capabilities
    out: list[str] = []
    rel = kernel.release or "unknown kernel"
    if cfg is None:
        out.append(f"{rel}: kernel config not found, so build options are unknown.")
    core = c["dma_buf"]["available"]
    sf = c["sync_file"]["available"]
    if core is False:
        out.append(f"{rel} has no dma-buf core (CONFIG_DMA_SHARED_BUFFER): nothing can share "
                   "buffers.")
    elif core:
        out.append(f"{rel} has the dma-buf core" + (" and sync_file" if sf else
                                                      " but no sync_file") + ".")
    names = {"dma_heap": "dma-buf heaps (/dev/dma_heap)", "udmabuf": "udmabuf (/dev/udmabuf)",
             "drm_prime": "DRM PRIME (/dev/dri/renderD*)", "vfio": "VFIO",
             "rdma_verbs": "RDMA verbs (dma-buf MRs as importer)"}
    usable = [names[k] for k in names if c[k]["available"]]
    unknown = [names[k] for k in names if c[k]["available"] is None]
    if usable:
        out.append("Usable from user space: " + ", ".join(usable) + ".")
    elif not unknown:
        out.append("No dma-buf exporter or importer is reachable from user space (no "
                   "/dev/dma_heap, /dev/udmabuf, DRM render node, RDMA or VFIO device).")
    if unknown:
        out.append("Not determinable from this root: " + ", ".join(unknown) + ".")
    p2p = r.sections.get("p2p", {})
    total = len(p2p.get("pairs", []))
    allowed = int(p2p.get("allowed_pairs", 0))
    devs = p2p.get("devices", [])
    virt = bool(devs) and all(d.get("virtio") for d in devs)
    if c["pci_p2pdma"]["available"] is False:
        out.append("PCI P2P DMA is impossible: the kernel is built without CONFIG_PCI_P2PDMA"
                   + (f" (the topology alone would allow {allowed} of {total} candidate "
                      "pair(s)" + ("; all candidates are virtio devices, whose drivers do "
                                   "no P2P anyway" if virt else "") + ")" if total else "")
                   + ".")
    elif total:
        counts = p2p.get("counts", {})
        out.append(f"P2P between {total} candidate pair(s): {counts.get('bus_addr', 0)} "
                   f"direct (BUS_ADDR), {counts.get('thru_host_bridge', 0)} through the root "
                   f"complex, {counts.get('acs_redirect', 0)} affected by ACS redirect, "
                   f"{counts.get('not_supported', 0)} refused (no common switch, untrusted "
                   "host bridge).")
    elif r.topology is not None:
        out.append("Fewer than two PCI endpoints: no P2P pair to decide.")
    cnt = r.counts()
    if cnt["error"] or cnt["warn"]:
        out.append(f"{cnt['error']} error(s) and {cnt['warn']} warning(s) below, each with a "
                   "remedy.")
    return out
