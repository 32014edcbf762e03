"""The kernel version and build configuration — kernel/configs.c (``/proc/config.gz``).

What the doctor reads, in order of preference:

* version: ``uname(2)`` on the live machine; in a capture the ``uname`` file (``uname -a``
  output, third field), then ``proc/sys/kernel/osrelease``, then ``proc/version``.
* config: ``proc/config.gz`` (``CONFIG_IKCONFIG_PROC``), then ``boot/config-<release>``.

Every option that matters for dma-buf and P2P gets a finding ``config.<NAME>`` with its value —
``y`` (built in), ``m`` (module), ``n`` (``# CONFIG_X is not set``), ``absent`` (not in the file:
its dependencies are off or the option does not exist in this version), or ``unknown`` (no config
found) — and what that value means. Severities depend on context: ``DMABUF_HEAPS_SYSTEM=n`` is a
warning only when heaps are on; ``DMABUF_MOVE_NOTIFY`` is gone in Linux 7.1 (its removal came
with the ``invalidate_mappings`` rename) and is a warning before that only if an amdgpu device is
present (amdgpu then pins exported buffers in GTT, so no VRAM P2P).

Kernel: kernel/configs.c, drivers/dma-buf/Kconfig, drivers/pci/Kconfig, mm/Kconfig,
drivers/infiniband/Kconfig, drivers/vfio/Kconfig, drivers/iommu/Kconfig, init/Kconfig (MODULES).
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dmabuf.doctor.report import Finding, Severity
from dmabuf.doctor.sysroot import SysRoot

__all__ = [
    "OPTIONS",
    "SHORT",
    "VERSION_FEATURES",
    "KConfig",
    "KernelInfo",
    "OptionSpec",
    "config_findings",
    "kernel_findings",
    "parse_config",
    "parse_release",
    "read_config",
    "read_kernel",
]

_VER_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
_SET_RE = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")


def parse_release(release: str | None) -> tuple[int, int, int] | None:
    """``"6.18.44-fc-v669"`` → ``(6, 18, 44)`` — the numbers of ``UTS_RELEASE``.

    Returns:
        ``(major, minor, patch)``, or ``None`` if the text does not start with a version.

    Kernel: include/generated/utsrelease.h (``UTS_RELEASE``).
    """
    if not release:
        return None
    m = _VER_RE.match(release.strip())
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass
class KernelInfo:
    """The running (or captured) kernel's identity.

    Attributes:
        release: ``uname -r`` (``"6.12.107"``), ``None`` if not found.
        version: parsed ``(major, minor, patch)``.
        uname: the full ``uname -a`` line when known.
        source: where the release came from.
    """

    release: str | None
    version: tuple[int, int, int] | None
    uname: str | None
    source: str

    def at_least(self, major: int, minor: int) -> bool | None:
        """``version >= (major, minor)``; ``None`` when the version is unknown."""
        if self.version is None:
            return None
        return self.version[:2] >= (major, minor)

    def describe(self) -> dict[str, Any]:
        """JSON form."""
        return {"release": self.release, "version": list(self.version) if self.version else None,
                "uname": self.uname, "source": self.source}


def read_kernel(root: SysRoot) -> KernelInfo:
    """Find the kernel release of ``root`` — ``uname -r``.

    Returns:
        A :class:`KernelInfo` (release ``None`` when nothing says).
    """
    if root.live:
        u = os.uname()
        line = f"{u.sysname} {u.nodename} {u.release} {u.version} {u.machine}"
        return KernelInfo(u.release, parse_release(u.release), line, "uname(2)")
    text = root.read_text("uname")
    if text and text.strip():
        line = text.strip().splitlines()[0]
        parts = line.split()
        rel = parts[2] if len(parts) >= 3 and parts[0] == "Linux" else parts[0]
        return KernelInfo(rel, parse_release(rel), line, f"{root.file('uname')}")
    text = root.read_text("proc/sys/kernel/osrelease")
    if text and text.strip():
        rel = text.strip()
        return KernelInfo(rel, parse_release(rel), None,
                          f"{root.file('proc/sys/kernel/osrelease')}")
    text = root.read_text("proc/version")
    if text and text.startswith("Linux version "):
        rel = text.split()[2]
        return KernelInfo(rel, parse_release(rel), None, f"{root.file('proc/version')}")
    return KernelInfo(None, None, None, "not found (no uname, proc/sys/kernel/osrelease or "
                      "proc/version)")


def parse_config(text: str) -> dict[str, str]:
    """Parse a kernel ``.config``: ``{"PCI_P2PDMA": "y", "UDMABUF": "n", "LOCALVERSION": '""'}``.

    ``# CONFIG_X is not set`` gives ``"n"``; string and number values are kept verbatim.

    Returns:
        ``{name without CONFIG_: value}``.

    Kernel: scripts/kconfig/confdata.c (the format conf_write() writes).
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _SET_RE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET_RE.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


@dataclass
class KConfig:
    """A parsed kernel configuration and where it came from."""

    values: dict[str, str]
    source: str

    def get(self, name: str) -> str:
        """``y``/``m``/``n``/the literal value, or ``absent`` when the option is not in the file."""
        return self.values.get(name, "absent")

    def enabled(self, name: str) -> bool:
        """``y`` or ``m``."""
        return self.get(name) in ("y", "m")


def read_config(root: SysRoot, kernel: KernelInfo) -> tuple[KConfig | None, str]:
    """Read ``proc/config.gz`` or ``boot/config-<release>`` of ``root``.

    Returns:
        ``(config or None, note)``; the note says where it came from or why it is missing.

    Kernel: kernel/configs.c (``/proc/config.gz``, CONFIG_IKCONFIG_PROC).
    """
    raw = root.read_bytes("proc/config.gz")
    if raw is not None:
        try:
            text = gzip.decompress(raw).decode(errors="replace")
        except (OSError, EOFError, zlib.error) as e:
            return None, f"{root.file('proc/config.gz')}: not a gzip file ({e})"
        return KConfig(parse_config(text), str(root.file("proc/config.gz"))), "proc/config.gz"
    tried = [str(root.file("proc/config.gz"))]
    if kernel.release:
        rel = f"boot/config-{kernel.release}"
        text2 = root.read_text(rel)
        if text2 is not None:
            return KConfig(parse_config(text2), str(root.file(rel))), rel
        tried.append(str(root.file(rel)))
    return None, "no kernel config found (tried " + ", ".join(tried) + ")"


#: Features that depend on the kernel version: (version, key, text).
VERSION_FEATURES: tuple[tuple[tuple[int, int], str, str], ...] = (
    ((4, 20), "udmabuf", "/dev/udmabuf (UDMABUF_CREATE)"),
    ((5, 6), "dma_heap", "/dev/dma_heap (DMA_HEAP_IOCTL_ALLOC)"),
    ((5, 12), "rdma_dmabuf_mr", "RDMA dma-buf memory regions (ibv_reg_dmabuf_mr)"),
    ((6, 0), "sync_file_ioctls", "DMA_BUF_IOCTL_EXPORT_SYNC_FILE / IMPORT_SYNC_FILE"),
    ((6, 2), "iommufd", "/dev/iommu (iommufd)"),
    ((6, 2), "p2pmem_mmap", "mmap of p2pmem/allocate for O_DIRECT P2P from user space "
                            "(release approximate)"),
    ((6, 19), "vfio_dmabuf", "vfio-pci exports BAR slices as dma-bufs "
                             "(VFIO_DEVICE_FEATURE_DMA_BUF)"),
    ((6, 19), "iommufd_dmabuf", "iommufd maps dma-bufs (IOMMU_IOAS_MAP_FILE)"),
    ((7, 1), "invalidate_mappings", "dma_buf_invalidate_mappings() and revocable attachments "
                                    "(move_notify renamed; DMABUF_MOVE_NOTIFY removed)"),
)


def kernel_findings(kernel: KernelInfo) -> list[Finding]:
    """``kernel.version`` and ``kernel.features`` findings.

    Returns:
        ``kernel.version`` (warn when unknown) and, when the version parses,
        ``kernel.features`` listing the :data:`VERSION_FEATURES` the release lacks (warn when
        one of them predates 6.0).

    Kernel: the releases that added each interface (see :data:`VERSION_FEATURES`).
    """
    out: list[Finding] = []
    if kernel.release is None:
        out.append(Finding("kernel.version", Severity.WARN, "kernel", "kernel release unknown",
                           f"could not tell the kernel release: {kernel.source}; version-gated "
                           "features cannot be checked",
                           "capture with 'dmabuf doctor --capture DIR' (it records uname)",
                           kernel.describe()))
        return out
    out.append(Finding("kernel.version", Severity.OK, "kernel", f"Linux {kernel.release}",
                       f"kernel release {kernel.release} (from {kernel.source})", None,
                       kernel.describe()))
    if kernel.version is None:
        return out
    have = [k for v, k, _t in VERSION_FEATURES if kernel.version[:2] >= v]
    missing = [(v, k, t) for v, k, t in VERSION_FEATURES if kernel.version[:2] < v]
    ev = {"available": have, "missing": [k for _v, k, _t in missing]}
    if not missing:
        out.append(Finding("kernel.features", Severity.OK, "kernel",
                           "every version-gated dma-buf/P2P interface is in this kernel",
                           "the kernel is recent enough for every interface pydmabuf knows "
                           "(up to Linux 7.1's invalidate_mappings)", None, ev))
    else:
        old = [k for v, k, _t in missing if v < (6, 0)]
        sev = Severity.WARN if old else Severity.INFO
        lines = "; ".join(f"{t} needs {v[0]}.{v[1]}" for v, _k, t in missing)
        out.append(Finding("kernel.features", sev, "kernel",
                           f"{len(missing)} interface(s) need a newer kernel than "
                           f"{kernel.release}",
                           f"not in {kernel.release}: {lines}",
                           "upgrade the kernel if you need these interfaces", ev))
    return out


# ----------------------------------------------------------------------------- option table
@dataclass(frozen=True)
class OptionSpec:
    """What one config option means for dma-buf / P2P.

    Attributes:
        name: without the ``CONFIG_`` prefix.
        on: meaning when ``y``/``m``.
        off: meaning when ``n``/``absent``.
        off_severity: severity when off (unless ``severity`` overrides).
        remedy: how to turn it on.
        severity: optional ``(value, ctx) -> Severity | None`` override.
    """

    name: str
    on: str
    off: str
    off_severity: Severity
    remedy: str
    severity: Callable[[str, DoctorContext], Severity | None] | None = None
    module: bool = True   # may be =m


@dataclass
class DoctorContext:
    """What option severities may depend on."""

    config: KConfig | None
    kernel: KernelInfo
    amdgpu: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> str:
        """Config value, ``unknown`` without a config."""
        return self.config.get(name) if self.config is not None else "unknown"

    def on(self, name: str) -> bool:
        """``y`` or ``m``."""
        return self.value(name) in ("y", "m")


def _heaps_dep(value: str, ctx: DoctorContext) -> Severity | None:
    if value in ("y", "m"):
        return None
    return Severity.WARN if ctx.on("DMABUF_HEAPS") else Severity.INFO


def _ib_dep(value: str, ctx: DoctorContext) -> Severity | None:
    if value in ("y", "m"):
        return None
    return Severity.WARN if ctx.on("INFINIBAND") else Severity.INFO


def _move_notify(value: str, ctx: DoctorContext) -> Severity | None:
    if ctx.kernel.at_least(7, 1):
        return Severity.OK if value in ("absent", "n") else Severity.INFO
    if value in ("y", "m"):
        return None
    return Severity.WARN if ctx.amdgpu else Severity.INFO


#: The options the doctor reports, in display order.
OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("DMA_SHARED_BUFFER",
               "the dma-buf core: drivers and processes can share buffers as file descriptors",
               "no dma-buf support at all: no exporter or importer can share memory; GPU, "
               "RDMA, camera and video stacks fall back to copies",
               Severity.ERROR, "rebuild with CONFIG_DMA_SHARED_BUFFER=y (selected by DRM, "
               "SYNC_FILE, UDMABUF, DMABUF_HEAPS…)", module=False),
    OptionSpec("SYNC_FILE",
               "sync_file fds: explicit fences (DMA_BUF_IOCTL_EXPORT/IMPORT_SYNC_FILE, "
               "SYNC_IOC_MERGE)",
               "no sync_file: dma-buf fences cannot be exported or imported as fds; user space "
               "must rely on implicit synchronisation",
               Severity.WARN, "rebuild with CONFIG_SYNC_FILE=y", module=False),
    OptionSpec("SW_SYNC",
               "sw_sync: software fence timelines in debugfs, for testing fence users",
               "no sw_sync: fence test suites (IGT sw_sync, dmabuf_sync_file) skip; not needed "
               "in production",
               Severity.INFO, "CONFIG_SW_SYNC=y (testing only; needs DEBUG_FS)"),
    OptionSpec("UDMABUF",
               "/dev/udmabuf turns a sealed memfd into a dma-buf (zero-copy from ordinary "
               "memory)",
               "no /dev/udmabuf: memfd memory cannot be exported as a dma-buf",
               Severity.WARN, "CONFIG_UDMABUF=y, or =m and 'modprobe udmabuf'"),
    OptionSpec("DMABUF_HEAPS",
               "/dev/dma_heap/<name>: user space allocates dma-bufs directly",
               "no /dev/dma_heap: user space cannot allocate dma-bufs itself (libcamera, "
               "GStreamer, Android allocators use heaps)",
               Severity.WARN, "CONFIG_DMABUF_HEAPS=y with CONFIG_DMABUF_HEAPS_SYSTEM=y",
               module=False),
    OptionSpec("DMABUF_HEAPS_SYSTEM",
               "/dev/dma_heap/system: page-backed dma-bufs",
               "no system heap", Severity.WARN, "CONFIG_DMABUF_HEAPS_SYSTEM=y (or =m)",
               severity=_heaps_dep),
    OptionSpec("DMABUF_HEAPS_CMA",
               "a CMA heap (/dev/dma_heap/<cma area>): physically contiguous dma-bufs",
               "no CMA heap: contiguous buffers for devices without an IOMMU (cameras, display "
               "engines) are unavailable",
               Severity.INFO, "CONFIG_DMABUF_HEAPS_CMA=y with a CMA area (CONFIG_CMA, cma=)",
               severity=lambda v, c: None if v in ("y", "m") else Severity.INFO),
    OptionSpec("DMABUF_MOVE_NOTIFY",
               "dynamic importers (RDMA dma-buf MRs, amdgpu) keep unpinned mappings and are told "
               "when the exporter moves the buffer; amdgpu may export VRAM for P2P",
               "dynamic importers are treated as static: dma_buf_map_attachment() pins the "
               "buffer, and amdgpu pins exported buffers in GTT (system memory) rather than "
               "VRAM, so GPU memory is not reachable peer-to-peer through dma-buf",
               Severity.INFO, "CONFIG_DMABUF_MOVE_NOTIFY=y (EXPERIMENTAL before Linux 7.1), or "
               "Linux 7.1+ where the behaviour is always on", severity=_move_notify,
               module=False),
    OptionSpec("PCI_P2PDMA",
               "PCI peer-to-peer DMA: exporters may map device memory (VRAM, NVMe CMB, BARs) "
               "directly for another PCI device when the topology allows (see the P2P section)",
               "no PCI P2PDMA: pci_p2pdma_distance() is a stub returning -1, so every in-kernel "
               "exporter (amdgpu, habanalabs, vfio-pci, NVMe p2pmem) refuses peer-to-peer and "
               "data goes through system memory (NVIDIA's nvidia-peermem path does not use "
               "PCI_P2PDMA)",
               Severity.WARN, "rebuild with CONFIG_PCI_P2PDMA=y (needs ZONE_DEVICE and 64BIT)",
               module=False),
    OptionSpec("ZONE_DEVICE",
               "struct pages for device memory (P2PDMA pages, DEVICE_PRIVATE, DAX)",
               "no ZONE_DEVICE: PCI_P2PDMA and DEVICE_PRIVATE cannot be built",
               Severity.WARN, "CONFIG_ZONE_DEVICE=y (needs MEMORY_HOTPLUG, MEMORY_HOTREMOVE, "
               "SPARSEMEM_VMEMMAP)", module=False),
    OptionSpec("HMM_MIRROR",
               "hmm_range_fault(): devices mirror a process's page tables (RDMA ODP, amdgpu SVM, "
               "nouveau)",
               "no HMM mirroring (it is selected by the drivers that need it)",
               Severity.INFO, "enable a driver that selects CONFIG_HMM_MIRROR (e.g. "
               "INFINIBAND_ON_DEMAND_PAGING, DRM_AMDGPU_USERPTR)", module=False),
    OptionSpec("DEVICE_PRIVATE",
               "device-private memory: pages migrate into device memory (amdgpu SVM/KFD, "
               "nouveau, NVIDIA UVM with HMM)",
               "no device-private memory migration", Severity.INFO,
               "CONFIG_DEVICE_PRIVATE=y (needs ZONE_DEVICE)", module=False),
    OptionSpec("INFINIBAND",
               "the RDMA core: RDMA NICs (mlx5, irdma, bnxt_re, efa) and Soft-RoCE",
               "no RDMA: dma-buf memory regions and GPUDirect RDMA are unavailable",
               Severity.INFO, "CONFIG_INFINIBAND=m plus the NIC's driver (e.g. MLX5_INFINIBAND)"),
    OptionSpec("INFINIBAND_USER_ACCESS",
               "/dev/infiniband/uverbs*: user-space verbs (rdma-core, pyverbs, UCX, NCCL's IB "
               "transport)",
               "no user-space verbs: rdma-core cannot open the NIC",
               Severity.WARN, "CONFIG_INFINIBAND_USER_ACCESS=m", severity=_ib_dep),
    OptionSpec("INFINIBAND_USER_MEM",
               "ib_umem, including dma-buf MRs (ib_umem_dmabuf): an RDMA NIC can register GPU "
               "memory exported as a dma-buf",
               "no user-memory registration: no MRs at all from user space, no dma-buf MRs",
               Severity.WARN, "CONFIG_INFINIBAND_USER_MEM=y (follows INFINIBAND_USER_ACCESS)",
               severity=_ib_dep, module=False),
    OptionSpec("INFINIBAND_ON_DEMAND_PAGING",
               "on-demand-paging MRs (mlx5 ODP): page faults instead of pinning",
               "no ODP MRs: every MR pins its pages",
               Severity.INFO, "CONFIG_INFINIBAND_ON_DEMAND_PAGING=y", module=False),
    OptionSpec("VFIO",
               "VFIO: user-space drivers and device assignment (needs an IOMMU)",
               "no VFIO", Severity.INFO, "CONFIG_VFIO=m"),
    OptionSpec("VFIO_PCI",
               "vfio-pci: PCI device assignment; from 6.19 it exports BAR slices as revocable "
               "dma-bufs (VFIO_DEVICE_FEATURE_DMA_BUF)",
               "no vfio-pci: no device assignment, no dma-buf export of BARs",
               Severity.INFO, "CONFIG_VFIO_PCI=m"),
    OptionSpec("IOMMUFD",
               "/dev/iommu: iommufd I/O page tables; from 6.19 it maps dma-bufs "
               "(IOMMU_IOAS_MAP_FILE)",
               "no iommufd", Severity.INFO, "CONFIG_IOMMUFD=m"),
    OptionSpec("IOMMU_SUPPORT",
               "the IOMMU core (the hardware driver still has to find an IOMMU)",
               "no IOMMU support: DMA uses physical addresses; VFIO cannot work",
               Severity.INFO, "CONFIG_IOMMU_SUPPORT=y with INTEL_IOMMU / AMD_IOMMU / "
               "ARM_SMMU_V3", module=False),
    OptionSpec("DRM",
               "DRM: GPU drivers share buffers through PRIME (dma-buf)",
               "no DRM: no GPU driver, no PRIME", Severity.INFO, "CONFIG_DRM=m plus a GPU driver"),
    OptionSpec("DRM_VGEM",
               "vgem: a virtual GEM device (/dev/dri/card*) for testing PRIME and fences",
               "no vgem (a testing aid only)", Severity.INFO, "CONFIG_DRM_VGEM=m"),
    OptionSpec("DEBUG_FS",
               "debugfs: /sys/kernel/debug/dma_buf/bufinfo lists every dma-buf and its fences",
               "no debugfs: bufinfo is unavailable (fdinfo still works)",
               Severity.INFO, "CONFIG_DEBUG_FS=y", module=False),
    OptionSpec("MODULES",
               "loadable modules: drivers can be added at run time (modprobe)",
               "no loadable modules: every driver is built in or absent; out-of-tree drivers "
               "(nvidia, nvidia-peermem, MLNX_OFED) cannot be used",
               Severity.INFO, "rebuild with CONFIG_MODULES=y, or build the drivers you need in",
               module=False),
)


#: What each option is, in a few words (the human table's column).
SHORT: dict[str, str] = {
    "DMA_SHARED_BUFFER": "dma-buf core", "SYNC_FILE": "sync_file fences",
    "SW_SYNC": "sw_sync test timelines", "UDMABUF": "/dev/udmabuf (memfd → dma-buf)",
    "DMABUF_HEAPS": "/dev/dma_heap", "DMABUF_HEAPS_SYSTEM": "system heap",
    "DMABUF_HEAPS_CMA": "CMA heap", "DMABUF_MOVE_NOTIFY": "movable importer mappings (< 7.1)",
    "PCI_P2PDMA": "PCI peer-to-peer DMA", "ZONE_DEVICE": "struct pages for device memory",
    "HMM_MIRROR": "hmm_range_fault mirroring", "DEVICE_PRIVATE": "device-private migration",
    "INFINIBAND": "RDMA core", "INFINIBAND_USER_ACCESS": "user verbs (uverbs)",
    "INFINIBAND_USER_MEM": "user MRs incl. dma-buf MRs",
    "INFINIBAND_ON_DEMAND_PAGING": "ODP MRs", "VFIO": "VFIO", "VFIO_PCI": "vfio-pci",
    "IOMMUFD": "/dev/iommu (iommufd)", "IOMMU_SUPPORT": "IOMMU core", "DRM": "DRM / PRIME",
    "DRM_VGEM": "vgem (testing)", "DEBUG_FS": "debugfs (dma_buf/bufinfo)",
    "MODULES": "loadable modules",
}


def _value_text(value: str) -> str:
    return {"y": "built in (y)", "m": "module (m)", "n": "not set (n)",
            "absent": "absent (not in the config)", "unknown": "unknown (no config)"
            }.get(value, f"= {value}")


def config_findings(ctx: DoctorContext, note: str) -> list[Finding]:
    """One ``config.<NAME>`` finding per :data:`OPTIONS` entry, plus ``config.source``.

    Args:
        ctx: config, kernel version and device facts.
        note: where the config came from, or why it is missing.

    Returns:
        ``config.source`` then the options in :data:`OPTIONS` order; each carries
        ``evidence = {"option", "value", "what"}``.

    Kernel: the Kconfig files named in the module docstring.
    """
    out: list[Finding] = []
    if ctx.config is None:
        out.append(Finding("config.source", Severity.WARN, "config", "kernel config not found",
                           f"{note}: the options below are unknown, so the doctor cannot say "
                           "which dma-buf/P2P features were built",
                           "boot a kernel with CONFIG_IKCONFIG_PROC=y (/proc/config.gz), or "
                           "install its config as /boot/config-$(uname -r)", {"source": None}))
    else:
        out.append(Finding("config.source", Severity.OK, "config",
                           f"kernel config read from {note}",
                           f"{len(ctx.config.values)} options in {ctx.config.source}", None,
                           {"source": ctx.config.source, "options": len(ctx.config.values)}))
    post71 = ctx.kernel.at_least(7, 1)
    for spec in OPTIONS:
        value = ctx.value(spec.name)
        on = value in ("y", "m")
        if value == "unknown":
            sev, meaning = Severity.INFO, f"unknown: if enabled, {spec.on}; if not, {spec.off}"
        else:
            sev = Severity.OK if on else spec.off_severity
            meaning = spec.on if on else spec.off
            if spec.severity is not None:
                o = spec.severity(value, ctx)
                if o is not None:
                    sev = o
        remedy: str | None = None if on or value == "unknown" else spec.remedy
        if spec.name == "DMABUF_MOVE_NOTIFY" and post71:
            meaning = ("removed in Linux 7.1: importers implement invalidate_mappings (the "
                       "renamed move_notify) and exporters may revoke; nothing to configure"
                       if not on else "set, although Linux 7.1 removed the option (a vendor "
                       "kernel?): check its dma-buf invalidation behaviour")
            remedy = None
        elif spec.name == "DMABUF_HEAPS_SYSTEM" and not on and not ctx.on("DMABUF_HEAPS"):
            meaning = "no system heap (it needs DMABUF_HEAPS, which is off)"
        elif spec.name in ("INFINIBAND_USER_ACCESS", "INFINIBAND_USER_MEM") and not on \
                and not ctx.on("INFINIBAND"):
            meaning = f"{spec.off} (it needs INFINIBAND, which is off)"
        elif spec.name == "DMABUF_MOVE_NOTIFY" and not on and ctx.amdgpu and value != "unknown":
            meaning += "; an amdgpu device is present, so this affects it"
        if value == "absent" and not on and "needs" not in meaning:
            meaning += " (absent: its dependencies are off or it does not exist in this version)"
        if value == "m" and ctx.value("MODULES") == "n":
            sev = Severity.ERROR
            meaning = "=m but CONFIG_MODULES is off: the driver cannot be loaded"
            remedy = f"CONFIG_{spec.name}=y"
        if value == "n" and sev == Severity.OK:
            remedy = None
        if remedy and spec.module and ctx.value("MODULES") == "n" and "=m" in remedy:
            remedy = (f"rebuild with CONFIG_{spec.name}=y (this kernel cannot load modules, "
                      "so =m is no option)")
        out.append(Finding(f"config.{spec.name}", sev, "config",
                           f"CONFIG_{spec.name}: {_value_text(value)}", meaning, remedy,
                           {"option": f"CONFIG_{spec.name}", "value": value,
                            "what": SHORT.get(spec.name, spec.name)}))
    return out
