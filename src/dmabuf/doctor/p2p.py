"""The PCI fabric and the kernel's P2P decisions on it — drivers/pci/p2pdma.c, through dmabuf.pci.

The topology comes from :func:`dmabuf.pci.load_sysfs` on the root (the same loader as
``dmabuf topo``), so ACS control words are read from each function's binary ``config``, the CPU
from ``proc/cpuinfo``, IOMMU groups and drivers from the sysfs links. The decisions are the model's
exact replay of ``calc_map_type_and_dist()`` (:func:`dmabuf.pci.p2p_matrix` for the matrix,
:func:`dmabuf.pci.explain` for reasons, remedies and the kernel's log lines per pair), checked
against six machines captured from a real kernel.

Which devices: the *relevant endpoints* — GPUs and display controllers (class 0x03), network and
InfiniBand controllers (0x02), NVMe (0x0108), processing accelerators and co-processors (0x12,
0x0b40), and every p2pmem provider. When fewer than two qualify (a VM with virtio devices, a box
whose devices report class ``0xffff00``) the doctor falls back to every endpoint and says so.

Findings group the unordered pairs by cause rather than one finding per pair (16 GPUs and NICs
are 120 pairs), each naming its pairs in the evidence:

* ``p2p.bus_addr`` — below a common switch/port without ACS redirect: direct, bus addresses.
* ``p2p.thru_host_bridge`` — through the root complex, allowed (AMD Zen, or allow-listed root).
* ``p2p.acs_redirect`` — a common upstream bridge exists but ACS redirect on the path sends the
  TLPs up; the remedy is ``pci=disable_acs_redir=<ports>`` (the kernel's own hint). A warning when
  that makes a pair NOT_SUPPORTED, information when the host bridge may forward.
* ``p2p.not_supported`` — no common upstream bridge and the root complex is not trusted.

When ``CONFIG_PCI_P2PDMA`` is off every pair is refused whatever the topology: the pair findings
become information about what the topology *would* allow (``evidence.hypothetical``).

Kernel: drivers/pci/p2pdma.c (calc_map_type_and_dist, pci_p2pdma_distance_many,
host_bridge_whitelist, cpu_supports_p2pdma), drivers/pci/pci.c (pci_enable_acs), drivers/pci/
pci-sysfs.c, include/linux/pci_ids.h (class codes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from dmabuf.doctor.report import Finding, Severity
from dmabuf.doctor.sysroot import SysRoot
from dmabuf.pci import PciDev, PciP2pdmaMapType, Topology, explain
from dmabuf.pci.p2pdma import P2pExplanation, P2pMatrix
from dmabuf.pci.pci_regs import acs_names

__all__ = ["P2pAnalysis", "analyse_p2p", "device_role", "hardware_present", "p2p_findings",
           "pci_findings"]

#: Pairs explained step by step (beyond: map type and distance from the matrix only).
MAX_PAIRS = 1024
#: Pairs listed in one finding's evidence (all pairs are in the section data).
MAX_EVIDENCE_PAIRS = 256

_ROLE_BY_CLASS = (
    (0x0300, 16, "gpu"), (0x0302, 16, "gpu"), (0x0380, 16, "gpu"), (0x03, 8, "gpu"),
    (0x0207, 16, "rdma nic"), (0x02, 8, "nic"),
    (0x0108, 16, "nvme"),
    (0x12, 8, "accelerator"), (0x0B40, 16, "accelerator"),
)
_RDMA_DRIVERS = ("mlx5_core", "mlx4_core", "irdma", "bnxt_en", "efa", "qede", "ionic", "erdma",
                 "mana", "hfi1")
_VIRTIO_VENDOR = 0x1AF4


def device_role(dev: PciDev) -> str | None:
    """The P2P role of an endpoint from its class code — ``pdev->class``.

    Returns:
        ``gpu`` (0x03), ``nic`` (0x02; ``rdma nic`` for 0x0207 or an RDMA driver), ``nvme``
        (0x0108), ``accelerator`` (0x12, 0x0b40), or ``None``.

    Kernel: include/linux/pci_ids.h (PCI_CLASS_*).
    """
    cc = dev.class_code
    for val, bits, role in _ROLE_BY_CLASS:
        if (cc >> (24 - bits)) == val:   # 16 bits: base class + subclass; 8: base class
            if role == "nic" and dev.driver in _RDMA_DRIVERS:
                return "rdma nic"
            return role
    return None


def hardware_present(topo: Topology | None) -> dict[str, bool]:
    """Which device families the PCI scan found, keyed like the device-node groups.

    Returns:
        ``{"dri", "infiniband", "kfd", "accel", "nvidia", "vfio", "amdgpu": bool}``.

    Kernel: include/linux/pci_ids.h; the ``driver`` links of drivers/base/bus.c.
    """
    out = {"dri": False, "infiniband": False, "kfd": False, "accel": False, "nvidia": False,
           "vfio": False, "amdgpu": False}
    if topo is None:
        return out
    for d in topo.devices:
        role = device_role(d)
        if role == "gpu":
            out["dri"] = True
            if d.vendor == 0x10DE:
                out["nvidia"] = True
            if d.vendor == 0x1002 or d.driver == "amdgpu":
                out["kfd"] = True
        if d.driver == "amdgpu":
            out["amdgpu"] = True
        if role == "rdma nic" or d.driver in _RDMA_DRIVERS:
            out["infiniband"] = True
        if role == "accelerator" or d.driver == "habanalabs":
            out["accel"] = True
        if d.driver == "vfio-pci":
            out["vfio"] = True
    return out


@dataclass
class PairResult:
    """One unordered pair's decision (row device provides, column device DMAs)."""

    provider: str
    client: str
    map_type: PciP2pdmaMapType
    distance: int
    cause: str                      # bus_addr | thru_host_bridge | acs_redirect | not_supported
    explanation: P2pExplanation | None

    def describe(self) -> dict[str, Any]:
        """JSON form."""
        ex = self.explanation
        return {"provider": self.provider, "client": self.client,
                "map_type": self.map_type.name, "distance": self.distance,
                "p2pdma_distance": -1 if self.map_type == PciP2pdmaMapType.NOT_SUPPORTED
                else self.distance, "cause": self.cause,
                "common_upstream": ex.common_upstream if ex else None,
                "acs_redirect_devices": list(ex.acs_redirect_devices) if ex else [],
                "path": list(ex.path) if ex else []}


@dataclass
class P2pAnalysis:
    """The P2P part of a report."""

    devices: list[PciDev] = field(default_factory=list)
    roles: dict[str, str | None] = field(default_factory=dict)
    selection: str = "classes"
    matrix: P2pMatrix | None = None
    pairs: list[PairResult] = field(default_factory=list)
    truncated: bool = False


def _config_size(dev: PciDev) -> int | None:
    if not dev.sysfs_path:
        return None
    try:
        return os.stat(os.path.join(dev.sysfs_path, "config")).st_size
    except OSError:
        return None


def _p2pmem(dev: PciDev) -> dict[str, int] | None:
    if not dev.sysfs_path:
        return None
    base = os.path.join(dev.sysfs_path, "p2pmem")
    if not os.path.isdir(base):
        return None
    out: dict[str, int] = {}
    for k in ("size", "available", "published"):
        try:
            with open(os.path.join(base, k)) as f:
                out[k] = int(f.read().strip() or "0", 0)
        except (OSError, ValueError):
            continue
    return out


def select_devices(topo: Topology) -> tuple[list[PciDev], dict[str, str | None], str]:
    """The relevant endpoints, their roles, and how they were chosen.

    Returns:
        ``(devices, {bdf: role}, "classes" | "all endpoints")``.

    Kernel: include/linux/pci_ids.h; drivers/pci/p2pdma.c (a p2pmem provider).
    """
    roles: dict[str, str | None] = {}
    chosen: list[PciDev] = []
    for d in topo.endpoints():
        role = device_role(d)
        if _is_provider(d):
            role = f"{role} + p2pmem" if role else "p2pmem provider"
        roles[d.bdf] = role
        if role is not None:
            chosen.append(d)
    if len(chosen) >= 2:
        return chosen, roles, "classes"
    return topo.endpoints(), roles, "all endpoints"


def analyse_p2p(topo: Topology) -> P2pAnalysis:
    """Select the relevant endpoints, compute the matrix and explain every unordered pair.

    Context:
        Never touches the kernel-model caches (explain() does not store); O(n²) pairs, the
        first :data:`MAX_PAIRS` with a full explanation.

    Returns:
        A :class:`P2pAnalysis`.

    Kernel: drivers/pci/p2pdma.c, calc_map_type_and_dist() (the decision is symmetric in
    provider and client: the same ports are checked for ACS and the same host bridges).
    """
    devs, roles, how = select_devices(topo)
    an = P2pAnalysis(devices=devs, roles=roles, selection=how)
    if len(devs) < 2:
        return an
    an.matrix = topo.matrix(devs)
    n = len(devs)
    count = 0
    for i in range(n):
        for j in range(i + 1, n):
            mt = PciP2pdmaMapType(int(an.matrix.map_type[i, j]))
            dist = int(an.matrix.distance[i, j])
            ex: P2pExplanation | None = None
            # The kernel decides with the provider being the device whose memory is used: when
            # only the second device publishes p2pmem, explain from its side (same decision,
            # the decision is symmetric; the log lines then name the devices as the kernel
            # would).
            a, b = devs[i], devs[j]
            if not _is_provider(a) and _is_provider(b):
                a, b = b, a
            if count < MAX_PAIRS:
                ex = explain(a, b)
            else:
                an.truncated = True
            count += 1
            common = (ex.common_upstream is not None if ex is not None
                      else _has_common(devs[i], devs[j]))
            if mt == PciP2pdmaMapType.BUS_ADDR:
                cause = "bus_addr"
            elif common:
                cause = "acs_redirect"
            elif mt == PciP2pdmaMapType.THRU_HOST_BRIDGE:
                cause = "thru_host_bridge"
            else:
                cause = "not_supported"
            an.pairs.append(PairResult(a.bdf, b.bdf, mt, dist, cause, ex))
    return an


def _is_provider(d: PciDev) -> bool:
    return d.p2pdma is not None and bool(d.p2pdma.describe()["size"])


def _has_common(a: PciDev, b: PciDev) -> bool:
    ca = {id(x) for x in a.chain()}
    return any(id(x) in ca for x in b.chain())


def _pairs_ev(g: list[PairResult]) -> dict[str, Any]:
    """Evidence: the pairs of a group (at most :data:`MAX_EVIDENCE_PAIRS`) and their count."""
    return {"pairs": [p.describe() for p in g[:MAX_EVIDENCE_PAIRS]], "pairs_total": len(g)}


def _pair_text(p: PairResult) -> str:
    return f"{p.provider} ↔ {p.client} ({p.map_type.name}, distance {p.distance})"


def _list(items: list[str], limit: int = 6) -> str:
    s = "; ".join(items[:limit])
    return s + (f"; … ({len(items)} in all)" if len(items) > limit else "")


def _acs_union(pairs: list[PairResult]) -> list[str]:
    seen: list[str] = []
    for p in pairs:
        if p.explanation is None:
            continue
        for b in p.explanation.acs_redirect_devices:
            if b not in seen:
                seen.append(b)
    return seen


def pci_findings(root: SysRoot, topo: Topology | None, error: str | None,
                 ) -> tuple[list[Finding], dict[str, Any]]:
    """``pci.*`` findings (topology, ACS) and the PCI section data.

    Args:
        root: the root (for messages).
        topo: the loaded topology, ``None`` without PCI or on a load error.
        error: the loader's message when it failed.

    Returns:
        ``(findings, data)``: ``pci.topology`` always; ``pci.acs`` and ``pci.acs_unknown``
        with a topology.

    Kernel: drivers/pci/pci-sysfs.c, drivers/pci/pci.c (ACS).
    """
    out: list[Finding] = []
    empty: dict[str, Any] = {"source": None, "cpu": None, "host_bridges": [], "functions": 0,
                             "bridges": 0, "endpoints": 0, "acs_ports": [],
                             "acs_redirect_ports": [], "devices": [], "notes": [],
                             "error": error}
    if topo is None:
        if error is not None:
            out.append(Finding("pci.topology", Severity.ERROR, "pci", "PCI sysfs unreadable",
                               f"the PCI tree could not be loaded: {error}",
                               "check the capture (re-run 'dmabuf doctor --capture DIR'); on a "
                               "live machine, report this with the capture attached",
                               {"error": error}))
            return out, empty
        out.append(Finding("pci.topology", Severity.INFO, "pci", "no PCI bus",
                           f"{root.file('sys/bus/pci/devices')} does not exist: no PCI devices, "
                           "so no PCI P2P", None, {}))
        return out, empty
    devs = topo.devices
    bridges = [d for d in devs if d.is_bridge]
    eps = topo.endpoints()
    cpu = topo.cpu
    flat = not bridges
    shape = ("flat: every function sits on a root bus, no bridges or switches" if flat else
             f"{len(bridges)} bridge/port function(s)")
    cpu_txt = (f"CPU {cpu.vendor_id or '?'} family {cpu.family:#x}"
               + (" (AMD Zen: the root complex may forward P2P)" if cpu.supports_p2pdma else
                  " (host-bridge P2P only through the allow-list)"))
    hbs = []
    for h in topo.host_bridges:
        r = h.root_dev()
        hbs.append({"name": h.name, "numa_node": h.numa_node,
                    "root_device": r.bdf if r else None,
                    "root_id": f"{r.vendor:04x}:{r.device:04x}" if r else None})
    compact = []
    for d in devs:
        compact.append({"bdf": d.bdf, "kind": d.kind(), "id": f"{d.vendor:04x}:{d.device:04x}",
                        "class": f"{d.class_code:06x}", "driver": d.driver,
                        "parent": d.parent.bdf if d.parent else None,
                        "host_bridge": d.host_bridge.name if d.host_bridge else None,
                        "acs_ctrl": acs_names(d.acs.ctrl) if d.acs else None,
                        "acs_redirects": d.acs.redirects if d.acs else False,
                        "iommu_group": d.iommu_group, "numa_node": d.numa_node,
                        "role": device_role(d) if d.is_endpoint else None})
    acs_caps = [d for d in devs if d.acs is not None]
    redir = [d for d in acs_caps if d.acs is not None and d.acs.redirects]
    data: dict[str, Any] = {
        "source": topo.source, "cpu": cpu.describe(), "host_bridges": hbs,
        "functions": len(devs), "bridges": len(bridges), "endpoints": len(eps),
        "acs_ports": [d.bdf for d in acs_caps], "acs_redirect_ports": [d.bdf for d in redir],
        "devices": compact, "notes": list(topo.notes), "error": None}
    out.append(Finding("pci.topology", Severity.OK, "pci",
                       f"{len(devs)} PCI functions under {len(topo.host_bridges)} host "
                       f"bridge(s); {cpu_txt}",
                       f"{shape}; {len(eps)} endpoint(s); host bridges: "
                       + ", ".join(f"{h['name']} (root {h['root_device'] or '-'} "
                                   f"[{h['root_id'] or '-'}])" for h in hbs), None,
                       {"cpu": cpu.describe(), "host_bridges": hbs, "flat": flat}))
    if acs_caps:
        lines = [f"{d.bdf} ({d.kind()}): ctrl {' '.join(acs_names(d.acs.ctrl)) or '-'}"
                 for d in acs_caps if d.acs is not None]
        out.append(Finding(
            "pci.acs", Severity.INFO, "pci",
            f"{len(acs_caps)} function(s) with ACS, {len(redir)} redirecting P2P",
            "ACS control as programmed by the kernel/firmware (RR = Request Redirect, CR = "
            "Completion Redirect, EC = Egress Control send P2P TLPs up to the root complex): "
            + _list(lines, 12), None,
            {"ports": [{"bdf": d.bdf, "kind": d.kind(), "cap": acs_names(d.acs.cap),
                        "ctrl": acs_names(d.acs.ctrl), "redirects": d.acs.redirects}
                       for d in acs_caps if d.acs is not None]}))
    else:
        out.append(Finding("pci.acs", Severity.INFO, "pci", "no function exposes an ACS "
                           "capability", "nothing redirects P2P TLPs; on real hardware this "
                           "also means devices below one switch cannot be isolated (they share "
                           "an IOMMU group)", None, {"ports": []}))
    unknown = []
    for d in devs:
        if d.pcie_type is None:
            continue
        size = _config_size(d)
        if size is not None and size < 4096 and d.acs is None:
            unknown.append(f"{d.bdf} ({size} bytes)")
    if unknown:
        out.append(Finding("pci.acs_unknown", Severity.WARN, "pci",
                           f"ACS state unknown for {len(unknown)} PCIe function(s)",
                           "their config space was read without the extended part (non-root "
                           "users see 64 bytes): ACS cannot be seen, and the P2P decisions "
                           "below assume no ACS redirect on them: " + _list(unknown),
                           "run 'dmabuf doctor' (or the capture) as root", {"devices": unknown}))
    return out, data


def p2p_findings(topo: Topology | None, an: P2pAnalysis, p2pdma: str,
                 iommu_mode: str) -> tuple[list[Finding], dict[str, Any]]:
    """``p2p.*`` findings and the P2P section data.

    Args:
        topo: the topology (``None``: no PCI).
        an: from :func:`analyse_p2p`.
        p2pdma: the value of ``CONFIG_PCI_P2PDMA`` (``y``/``n``/``absent``/``unknown``).
        iommu_mode: from the IOMMU section (``off``, ``translated``, ``passthrough``…).

    Returns:
        ``(findings, data)``: ``p2p.enabled``, ``p2p.devices``, ``p2p.p2pmem`` (with
        providers), and one finding per non-empty pair group: ``p2p.bus_addr``,
        ``p2p.thru_host_bridge``, ``p2p.acs_redirect``, ``p2p.not_supported``.

    Kernel: drivers/pci/p2pdma.c.
    """
    out: list[Finding] = []
    enabled: bool | None = {"y": True, "n": False, "absent": False}.get(p2pdma)
    hypo = enabled is False
    data: dict[str, Any] = {"p2pdma_config": p2pdma, "enabled": enabled,
                            "selection": an.selection, "devices": [], "matrix": None,
                            "pairs": [], "pairs_truncated": an.truncated, "providers": [],
                            "counts": {"bus_addr": 0, "thru_host_bridge": 0, "acs_redirect": 0,
                                       "not_supported": 0}, "allowed_pairs": 0}
    if topo is None:
        return out, data
    providers = []
    for d in topo.devices:
        pm = _p2pmem(d)
        if pm is not None:
            providers.append({"bdf": d.bdf, **pm})
    data["providers"] = providers
    for d in an.devices:
        data["devices"].append({"bdf": d.bdf, "role": an.roles.get(d.bdf),
                                "id": f"{d.vendor:04x}:{d.device:04x}",
                                "class": f"{d.class_code:06x}", "driver": d.driver,
                                "virtio": d.vendor == _VIRTIO_VENDOR,
                                "iommu_group": d.iommu_group, "numa_node": d.numa_node})
    if an.matrix is not None:
        data["matrix"] = an.matrix.as_dict()
    data["pairs"] = [p.describe() for p in an.pairs]
    # enabled?
    if enabled is True:
        out.append(Finding("p2p.enabled", Severity.OK, "p2p", "PCI P2PDMA is built in",
                           "CONFIG_PCI_P2PDMA=y: the decisions below are what the kernel "
                           "will do", None, {"config": p2pdma}))
    elif enabled is False:
        out.append(Finding("p2p.enabled", Severity.INFO, "p2p",
                           "P2P DMA is off in this kernel: the pairs below are hypothetical",
                           f"CONFIG_PCI_P2PDMA is {p2pdma}: every P2P request is refused "
                           "(pci_p2pdma_distance() = -1) whatever the topology; the findings "
                           "below say what the topology would allow if it were on (see "
                           "config.PCI_P2PDMA for the remedy)", None, {"config": p2pdma}))
    else:
        out.append(Finding("p2p.enabled", Severity.INFO, "p2p", "P2PDMA support unknown",
                           "the kernel config is unknown: the decisions below assume "
                           "CONFIG_PCI_P2PDMA=y", None, {"config": p2pdma}))
    # candidates
    virt = [d.bdf for d in an.devices if d.vendor == _VIRTIO_VENDOR]
    roles_txt = ", ".join(f"{d.bdf} ({an.roles.get(d.bdf) or 'class ' + f'{d.class_code:06x}'})"
                          for d in an.devices[:16])
    if an.selection == "classes":
        why = f"{len(an.devices)} endpoint(s) of P2P-relevant classes: {roles_txt}"
    else:
        n_rel = sum(1 for r in an.roles.values() if r)
        why = (f"only {n_rel} endpoint(s) of a P2P-relevant class (GPU, NIC, NVMe, "
               f"accelerator, p2pmem provider), so all {len(an.devices)} endpoints are "
               f"compared: {roles_txt}")
    if virt:
        why += (f". {len(virt)} of them are virtio devices (paravirtual: no virtio driver acts "
                "as a P2PDMA provider, and virtio-blk queues refuse P2P pages before any "
                "topology check)")
    out.append(Finding("p2p.devices", Severity.INFO, "p2p",
                       f"P2P candidates: {len(an.devices)} device(s) ({an.selection})", why,
                       None, {"devices": [d.bdf for d in an.devices], "selection": an.selection,
                              "virtio": virt}))
    if providers:
        lines = [f"{p['bdf']}: size {p.get('size', 0)} available {p.get('available', 0)} "
                 f"published {p.get('published', 0)}" for p in providers]
        out.append(Finding("p2p.p2pmem", Severity.OK, "p2p",
                           f"{len(providers)} p2pmem provider(s)",
                           "device memory published for P2P (NVMe CMB and the like; user space "
                           "can mmap p2pmem/allocate for O_DIRECT): " + _list(lines), None,
                           {"providers": providers}))
    if an.matrix is None:
        out.append(Finding("p2p.pairs", Severity.INFO, "p2p", "fewer than two endpoints",
                           "no pair to decide", None, {}))
        return out, data
    groups: dict[str, list[PairResult]] = {"bus_addr": [], "thru_host_bridge": [],
                                           "acs_redirect": [], "not_supported": []}
    for p in an.pairs:
        groups[p.cause].append(p)

    def sev(s: Severity) -> Severity:
        return Severity.INFO if hypo else s

    pre = "if P2PDMA were on: " if hypo else ""
    common_ev = {"hypothetical": hypo, "iommu_mode": iommu_mode}
    g = groups["bus_addr"]
    if g:
        out.append(Finding(
            "p2p.bus_addr", sev(Severity.OK), "p2p",
            f"{pre}{len(g)} pair(s) P2P directly below a common bridge (BUS_ADDR)",
            "no ACS redirect between them: TLPs turn around in the switch/port, the client "
            "uses PCI bus addresses and the IOMMU is not involved: "
            + _list([_pair_text(p) + (f", via {p.explanation.common_upstream}"
                                      if p.explanation and p.explanation.common_upstream
                                      else "") for p in g]),
            None, {**common_ev, **_pairs_ev(g)}))
    g = groups["thru_host_bridge"]
    if g:
        cpu = topo.cpu
        basis = ("the CPU is AMD Zen or newer (cpu_supports_p2pdma)" if cpu.supports_p2pdma
                 else "the host bridge root is in pci_p2pdma_whitelist")
        iom = (" With the IOMMU translating, each mapping is an IOVA of the peer's BAR."
               if iommu_mode in ("translated", "mixed") else "")
        out.append(Finding(
            "p2p.thru_host_bridge", sev(Severity.OK), "p2p",
            f"{pre}{len(g)} pair(s) P2P through the root complex (THRU_HOST_BRIDGE)",
            f"no common upstream bridge, allowed because {basis}: "
            + _list([_pair_text(p) for p in g]) + "." + iom
            + " Bandwidth is the root complex's P2P forwarding rate, often below a switch's.",
            None, {**common_ev, "basis": basis, **_pairs_ev(g)}))
    g = groups["acs_redirect"]
    if g:
        refused = [p for p in g if p.map_type == PciP2pdmaMapType.NOT_SUPPORTED]
        ports = _acs_union(g)
        lst = ";".join(ports)
        port_txt = []
        for b in ports:
            d = topo.device(b)
            ctrl = " ".join(acs_names(d.acs.ctrl)) if d.acs else "?"
            port_txt.append(f"{b} ({d.kind()}, ACS ctrl {ctrl})")
        klog: list[str] = []
        for p in g:
            if p.explanation is not None and p.explanation.kernel_log:
                klog = list(p.explanation.kernel_log)
                break
        outcome = (f"{len(refused)} refused (NOT_SUPPORTED: the host bridge is not trusted "
                   "to forward P2P)" if refused else
                   "all forwarded by the root complex (THRU_HOST_BRIDGE) instead of the switch")
        iommu_note = (" The IOMMU is active: its driver asked the kernel to enable ACS "
                      "(pci_request_acs), which is why these ports redirect; disabling "
                      "redirect merges the devices behind them into one IOMMU group."
                      if iommu_mode != "off" else
                      " No IOMMU is active, so ACS here only changes the routing (with an "
                      "IOMMU it is what isolates the devices into separate groups).")
        out.append(Finding(
            "p2p.acs_redirect", sev(Severity.WARN if refused else Severity.INFO), "p2p",
            f"{pre}ACS redirect on the path of {len(g)} pair(s): {outcome}",
            f"these pairs share an upstream bridge, but ACS redirect on "
            f"{_list(port_txt)} sends their TLPs up to the root complex: "
            + _list([_pair_text(p) for p in g]) + "." + iommu_note,
            f"boot with pci=disable_acs_redir={lst} (the kernel's own hint), or turn ACS "
            "redirect off for these ports in the BIOS/firmware; then the pairs get BUS_ADDR",
            {**common_ev, "ports": ports, "kernel_parameter": f"pci=disable_acs_redir={lst}",
             **_pairs_ev(g), "kernel_log": klog}))
    g = groups["not_supported"]
    if g:
        reasons: list[str] = []
        remedies: list[str] = []
        klog = []
        hb_info: list[dict[str, Any]] = []
        for p in g:
            ex = p.explanation
            if ex is None:
                continue
            for r in ex.reasons[1:]:
                if r not in reasons:
                    reasons.append(r)
            for r in ex.remedies:
                if r not in remedies:
                    remedies.append(r)
            for h in ex.host_bridges:
                if h not in hb_info:
                    hb_info.append(h)
            if not klog and ex.kernel_log:
                klog = list(ex.kernel_log)
        cross = [p for p in g if topo.device(p.provider).host_bridge
                 is not topo.device(p.client).host_bridge]
        what = (f"{len(cross)} across host bridges, {len(g) - len(cross)} within one"
                if cross else "within one host bridge")
        out.append(Finding(
            "p2p.not_supported", sev(Severity.WARN), "p2p",
            f"{pre}{len(g)} pair(s) refused: no common switch and the host bridge is not "
            f"trusted ({what})",
            "these pairs do not share an upstream bridge or whitelisted host bridge (the "
            "kernel's words): " + _list([_pair_text(p) for p in g]) + ". "
            + "; ".join(reasons) + ".",
            "\n".join(f"{r[0].upper()}{r[1:]}." for r in remedies) or None,
            {**common_ev, **_pairs_ev(g), "host_bridges": hb_info,
             "remedies": remedies,
             "cpu": topo.cpu.describe(), "kernel_log": klog}))
    counts = {k: len(v) for k, v in groups.items()}
    data["counts"] = counts
    data["allowed_pairs"] = sum(1 for p in an.pairs
                                if p.map_type != PciP2pdmaMapType.NOT_SUPPORTED)
    return out, data
