"""Loaded kernel modules — kernel/module/procfs.c (``/proc/modules``).

Each line of ``/proc/modules`` is ``name size refcount deps state address [taint]``; the doctor
keeps the names and states of the drivers that take part in dma-buf and P2P:

* GPUs and accelerators: ``nvidia`` (+ ``nvidia_uvm``, ``nvidia_drm``), ``nvidia_peermem``
  (NVIDIA's peer-memory client for GPUDirect RDMA without dma-buf; the legacy out-of-tree name was
  ``nv_peer_mem``), ``amdgpu``, ``i915``, ``xe``, ``nouveau``, ``habanalabs``, ``vgem``;
* RDMA: ``ib_core``, ``ib_uverbs`` (``/dev/infiniband/uverbs*``), ``mlx5_core``/``mlx5_ib``,
  ``irdma``, ``bnxt_re``, ``efa``, ``rdma_rxe``, ``siw``…;
* ``nvme``, ``udmabuf``, ``vfio``/``vfio_pci``/``vfio_iommu_type1``, ``iommufd``.

Without ``CONFIG_MODULES`` there is no ``/proc/modules``: every driver is built in or absent. The
PCI drivers bound to devices (``driver`` links in sysfs) and ``/sys/module/<name>`` then tell which
built-in drivers exist.

Further evidence read: ``/sys/kernel/mm/memory_peers/<client>/version`` (a peer-memory client —
``nv_mem`` — registered with ib_core: nvidia-peermem is active) and ``/proc/driver/nvidia/version``
(the NVIDIA driver flavour: only the open kernel modules export GPU memory as dma-bufs).

Kernel: kernel/module/procfs.c (m_show), kernel/params.c (/sys/module), drivers/infiniband/core
(peer memory, out of tree in MLNX_OFED and NVIDIA's driver).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmabuf.doctor.report import Finding, Severity
from dmabuf.doctor.sysroot import SysRoot

__all__ = ["RELEVANT_MODULES", "ModuleInfo", "module_findings", "read_modules"]

#: Module name → what it is, for the report.
RELEVANT_MODULES: dict[str, str] = {
    "nvidia": "NVIDIA GPU driver",
    "nvidia_uvm": "NVIDIA unified memory",
    "nvidia_drm": "NVIDIA DRM/KMS (PRIME)",
    "nvidia_peermem": "NVIDIA peer-memory client (GPUDirect RDMA without dma-buf)",
    "nv_peer_mem": "legacy NVIDIA/Mellanox peer-memory client",
    "amdgpu": "AMD GPU driver (exports VRAM as dma-buf)",
    "i915": "Intel GPU driver",
    "xe": "Intel Xe GPU driver",
    "nouveau": "nouveau GPU driver",
    "habanalabs": "Habana Gaudi accelerator (exports device memory as dma-buf)",
    "vgem": "virtual GEM (testing PRIME)",
    "udmabuf": "memfd to dma-buf",
    "ib_core": "RDMA core",
    "ib_uverbs": "RDMA user verbs (/dev/infiniband/uverbs*)",
    "rdma_ucm": "RDMA connection manager for user space",
    "mlx5_core": "Mellanox/NVIDIA ConnectX core",
    "mlx5_ib": "ConnectX RDMA (dma-buf MRs)",
    "mlx4_ib": "ConnectX-3 RDMA",
    "irdma": "Intel RDMA",
    "bnxt_re": "Broadcom RDMA",
    "efa": "AWS EFA (dma-buf MRs)",
    "qedr": "QLogic RDMA",
    "rdma_rxe": "Soft-RoCE (no dma-buf MRs)",
    "siw": "Soft-iWARP",
    "nvme": "NVMe (p2pmem provider/client)",
    "vfio": "VFIO core",
    "vfio_pci": "vfio-pci (BAR dma-buf export from 6.19)",
    "vfio_pci_core": "vfio-pci core",
    "vfio_iommu_type1": "VFIO type1 IOMMU backend",
    "iommufd": "iommufd (/dev/iommu)",
}

_RDMA_HW = ("mlx5_core", "mlx4_core", "irdma", "bnxt_en", "efa", "qedr", "hfi1", "ionic",
            "erdma", "mana")
_RDMA_IB = ("mlx5_ib", "mlx4_ib", "irdma", "bnxt_re", "efa", "qedr", "hfi1", "ionic_rdma",
            "erdma", "mana_ib", "rdma_rxe", "siw")


@dataclass
class ModuleInfo:
    """What is known about modules.

    Attributes:
        available: ``/proc/modules`` was read (``False``: absent; ``None``: not captured).
        loaded: ``{name: state}`` of every loaded module.
        builtin: relevant names present in ``/sys/module`` but not loaded (built in).
        memory_peers: ``{client: version}`` from ``/sys/kernel/mm/memory_peers``.
        nvidia_version: first line of ``/proc/driver/nvidia/version``.
        source: where the list came from.
    """

    available: bool | None
    loaded: dict[str, str] = field(default_factory=dict)
    builtin: list[str] = field(default_factory=list)
    memory_peers: dict[str, str] = field(default_factory=dict)
    nvidia_version: str | None = None
    source: str = ""

    def has(self, name: str) -> bool:
        """Loaded, or built in (present in /sys/module)."""
        return name in self.loaded or name in self.builtin

    def describe(self) -> dict[str, Any]:
        """JSON form."""
        return {"available": self.available, "source": self.source,
                "loaded": sorted(self.loaded),
                "relevant_loaded": {k: RELEVANT_MODULES[k] for k in sorted(self.loaded)
                                    if k in RELEVANT_MODULES},
                "builtin_relevant": list(self.builtin), "memory_peers": dict(self.memory_peers),
                "nvidia_version": self.nvidia_version}


def read_modules(root: SysRoot) -> ModuleInfo:
    """Read ``proc/modules``, relevant ``sys/module`` entries, memory peers and the NVIDIA
    driver version of ``root``.

    Returns:
        A :class:`ModuleInfo` (``available`` ``None`` when ``proc/modules`` was not captured).

    Kernel: kernel/module/procfs.c (m_show), kernel/params.c (/sys/module).
    """
    text = root.read_text("proc/modules")
    if text is None:
        cap = root.captured("proc/modules")
        info = ModuleInfo(available=False if cap else None,
                          source=(f"{root.file('proc/modules')} does not exist" if cap else
                                  "proc/modules was not captured"))
    else:
        info = ModuleInfo(available=True, source=str(root.file("proc/modules")))
        for line in text.splitlines():
            parts = line.split()
            if parts:
                info.loaded[parts[0]] = parts[4] if len(parts) > 4 else "Live"
    sysmod = root.listdir("sys/module") or []
    info.builtin = sorted(n for n in sysmod if n in RELEVANT_MODULES and n not in info.loaded)
    for peer in root.listdir("sys/kernel/mm/memory_peers") or []:
        v = root.read_text(f"sys/kernel/mm/memory_peers/{peer}/version")
        info.memory_peers[peer] = (v or "").strip()
    nv = root.read_text("proc/driver/nvidia/version")
    if nv:
        info.nvidia_version = nv.strip().splitlines()[0]
    return info


def module_findings(info: ModuleInfo, modules_config: str, pci_drivers: dict[str, list[str]],
                    ) -> list[Finding]:
    """``modules.*`` findings.

    Args:
        info: from :func:`read_modules`.
        modules_config: the value of ``CONFIG_MODULES`` (``y``/``n``/``absent``/``unknown``).
        pci_drivers: ``{driver: [bdf, …]}`` bound in sysfs (built-in or loaded drivers at work).

    Returns:
        ``modules.list`` always; ``modules.nvidia_peermem``, ``.nvidia_flavour``,
        ``.mlx5_ib``, ``.ib_uverbs`` when their conditions hold.

    Kernel: kernel/module/procfs.c; NVIDIA's nvidia-peermem and ib_core's peer-memory API
    (out of tree).
    """
    out: list[Finding] = []
    bound = {k: v for k, v in sorted(pci_drivers.items())}
    ev: dict[str, Any] = {**info.describe(), "pci_drivers": bound,
                          "config_modules": modules_config}
    if info.available is None:
        out.append(Finding("modules.list", Severity.INFO, "modules", "loaded modules unknown",
                           "proc/modules was not captured; PCI drivers bound in sysfs: "
                           + (", ".join(sorted(bound)) or "none"),
                           "capture with 'dmabuf doctor --capture DIR' to include /proc/modules",
                           ev))
    elif info.available is False:
        if modules_config == "n":
            out.append(Finding(
                "modules.list", Severity.INFO, "modules",
                "no loadable modules (CONFIG_MODULES is off)",
                "this kernel cannot load modules, so there is no /proc/modules: every driver is "
                "built in or absent, nothing can be added with modprobe, and out-of-tree "
                "drivers (nvidia, nvidia-peermem, MLNX_OFED) cannot be used. Built-in PCI "
                "drivers at work: " + (", ".join(sorted(bound)) or "none")
                + (f"; relevant built-in code in /sys/module: {', '.join(info.builtin)}"
                   if info.builtin else ""),
                None, ev))
        else:
            out.append(Finding("modules.list", Severity.WARN, "modules", "/proc/modules missing",
                               f"{info.source} although CONFIG_MODULES is {modules_config}: "
                               "procfs may not be mounted", "mount -t proc proc /proc", ev))
    else:
        rel = [m for m in sorted(info.loaded) if m in RELEVANT_MODULES]
        out.append(Finding(
            "modules.list", Severity.OK if rel else Severity.INFO, "modules",
            f"{len(info.loaded)} modules loaded, {len(rel)} relevant to dma-buf/P2P",
            ("relevant: " + ", ".join(f"{m} ({RELEVANT_MODULES[m]})" for m in rel)) if rel else
            "none of the GPU, RDMA, VFIO or udmabuf drivers is loaded as a module"
            + (f"; built in: {', '.join(info.builtin)}" if info.builtin else ""),
            None, ev))
    # NVIDIA: GPUDirect RDMA needs nvidia-peermem, or the dma-buf path with open modules.
    if info.has("nvidia"):
        rdma = info.has("ib_core") or info.has("ib_uverbs")
        peer = info.has("nvidia_peermem") or info.has("nv_peer_mem") or any(
            p.startswith("nv_mem") for p in info.memory_peers)
        if rdma and not peer:
            out.append(Finding(
                "modules.nvidia_peermem", Severity.WARN, "modules",
                "NVIDIA GPU and RDMA present, but nvidia-peermem is not loaded",
                "GPUDirect RDMA through the peer-memory interface needs nvidia_peermem (no "
                "/sys/kernel/mm/memory_peers/nv_mem*); NCCL/UCX then stage through host memory "
                "unless they use the dma-buf path",
                "modprobe nvidia-peermem (and add it to /etc/modules-load.d), or use dma-buf "
                "(open GPU kernel modules, kernel >= 5.12, NCCL_DMABUF_ENABLE=1)",
                {"memory_peers": dict(info.memory_peers)}))
        elif rdma and peer:
            out.append(Finding("modules.nvidia_peermem", Severity.OK, "modules",
                               "nvidia-peermem is active",
                               "the NVIDIA peer-memory client is registered with ib_core: "
                               "GPUDirect RDMA can register GPU memory", None,
                               {"memory_peers": dict(info.memory_peers)}))
        if info.nvidia_version is not None:
            is_open = "Open Kernel Module" in info.nvidia_version
            out.append(Finding(
                "modules.nvidia_flavour", Severity.OK if is_open else Severity.WARN, "modules",
                "NVIDIA open kernel modules" if is_open else "NVIDIA proprietary kernel module",
                ("the open GPU kernel modules can export GPU memory as dma-bufs "
                 "(cuMemGetHandleForAddressRange with CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD)")
                if is_open else
                ("the proprietary module does not export GPU memory as dma-bufs; only the "
                 "nvidia-peermem path is available for GPUDirect RDMA"),
                None if is_open else "install the open GPU kernel modules (nvidia-open)",
                {"version": info.nvidia_version}))
    # RDMA hardware without user verbs.
    if info.available:
        hw = [m for m in _RDMA_HW if m in info.loaded]
        ib = [m for m in _RDMA_IB if m in info.loaded]
        if "mlx5_core" in info.loaded and "mlx5_ib" not in info.loaded:
            out.append(Finding("modules.mlx5_ib", Severity.WARN, "modules",
                               "mlx5_core is loaded without mlx5_ib",
                               "the ConnectX NIC works as an Ethernet device only: no RDMA "
                               "device, no dma-buf MRs", "modprobe mlx5_ib",
                               {"loaded": ["mlx5_core"]}))
        if (hw or ib) and "ib_uverbs" not in info.loaded and not info.has("ib_uverbs"):
            out.append(Finding("modules.ib_uverbs", Severity.WARN, "modules",
                               "RDMA driver loaded but ib_uverbs is not",
                               f"{', '.join(hw + ib)} loaded, but without ib_uverbs there is "
                               "no /dev/infiniband/uverbs*: rdma-core, UCX and NCCL cannot use "
                               "the NIC", "modprobe ib_uverbs (rdma-core's rdma-load-modules "
                               "service does it at boot)", {"drivers": hw + ib}))
    return out
