"""PCI peer-to-peer DMA — drivers/pci/p2pdma.c, include/linux/pci-p2pdma.h.

Two jobs, as in the kernel:

**Deciding.** :func:`calc_map_type_and_dist` is the kernel function line for line: walk the
provider up with ``pci_upstream_bridge()``; for every device ``a`` on that walk, check ``a`` for
ACS redirect and look for ``a`` on the client's walk. The first hit is the nearest common upstream
device; the distance is the number of steps on both sides (0 same function, 2 two functions
behind one port, 4 two devices under one switch). ACS redirect (control bits RR, CR or EC) on any
device of the provider side up to *and including* the common device, or on the client side below
it, makes the path go through the root complex. Without a common device the path always crosses
the host bridge and the distance is the length of both chains. Crossing the host bridge is allowed
on an AMD Zen CPU (vendor AuthenticAMD, family >= 0x17; Hygon is not X86_VENDOR_AMD) or when both
host bridges' root devices are in ``pci_p2pdma_whitelist[]`` (entries flagged
``REQ_SAME_HOST_BRIDGE`` only within one host bridge); otherwise the answer is NOT_SUPPORTED.
Warnings use the kernel's texts and go to :attr:`Topology.log`; the host-bridge warning is printed
only when ACS redirects were found (the kernel passes ``acs_redirects`` as ``warn``), and the ACS
port list is the kernel's 128-byte ``seq_buf`` (so an absurdly long list is cut at 127
characters).

The decision is cached per provider in ``map_types`` keyed by
``map_types_idx(client) = domain << 16 | bus << 8 | devfn`` and never invalidated until the
provider's p2pdma state is released: :func:`pci_p2pdma_map_type` returns the cached value even if
ACS bits changed since. Note that :func:`pci_p2pdma_distance_many` calls
:func:`calc_map_type_and_dist` directly — it recomputes and *overwrites* the cache entry, exactly
as the kernel does.

**Providing memory.** :func:`pcim_p2pdma_init` creates the per-device state (one
``p2pdma_provider`` per MEM BAR, with ``bus_offset``); :func:`pci_p2pdma_add_resource` validates a
BAR range (``-EINVAL`` rules of the kernel, plus the sub-section (2 MiB) alignment that
``memremap_pages()`` demands on x86-64), gives it ``MEMORY_DEVICE_PCI_P2PDMA`` ZONE_DEVICE pages
(a :class:`~dmabuf.mm.memremap.DevPagemap` whose ``folio_free`` returns pages to the pool —
``devm_memremap_pages()`` with ``p2pdma_pgmap_ops``) and adds it to a page-granular
:class:`GenPool`. The pages need the machine's memory: a topology gets it from
:meth:`Topology.attach_memory <dmabuf.pci.topology.Topology.attach_memory>`, which also gives
pages to the ranges added before (a topology file or a captured system loaded first);
:func:`pci_p2pdma_memunmap_pages` is the matching devm teardown, run by
:func:`pci_p2pdma_release` first;
:func:`pci_alloc_p2pmem` / :func:`pci_free_p2pmem` hand out pages (CPU physical addresses in the
model — there are no kernel virtual addresses), :func:`pci_p2pmem_virt_to_bus` gives their bus
address, :func:`pci_p2pmem_publish` makes the memory visible to :func:`pci_p2pmem_find_many`,
which picks uniformly at random (from an explicit, seeded ``numpy.random.Generator``) among the
providers at minimum distance.

For whole-fabric questions, :func:`p2p_matrix` computes the same decision for every pair at once
with numpy (tested equal to the per-pair walk), and :func:`explain` replays one decision step by
step with reasons and remedies, for ``dmabuf topo explain``. Neither touches the cache nor the log.

Locking: ``Topology.lock`` serialises provider set-up/teardown; pools have their own lock; the
decision cache is a dict written with single assignments (the kernel's ``xa_store`` under RCU), so
two racing first lookups may both compute and log, as in the kernel.

Kernel: drivers/pci/p2pdma.c (calc_map_type_and_dist(), pci_bridge_has_acs_redir(),
cpu_supports_p2pdma(), pci_p2pdma_whitelist[], pci_host_bridge_dev(), host_bridge_whitelist(),
pci_p2pdma_distance_many(), pci_p2pmem_find_many(), pci_p2pdma_add_resource(), pcim_p2pdma_init(),
pci_alloc_p2pmem(), pci_p2pdma_map_type()), include/linux/pci-p2pdma.h (pci_p2pdma_state(),
pci_p2pdma_bus_addr_map()), mm/memory_hotplug.c (check_pfn_span()).
"""

from __future__ import annotations

import bisect
import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmabuf.dma.fabric import PciP2pdmaMapType
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.memremap import (
    DevPagemap,
    DevPagemapOps,
    MemoryType,
    memremap_pages,
    memunmap_pages,
    page_ranges,
)
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE, PhysMemory
from dmabuf.mm.ranges import make_ranges
from dmabuf.pci.genalloc import GenPool
from dmabuf.pci.pci_regs import PCI_STD_NUM_BARS, acs_names
from dmabuf.pci.topology import CpuInfo, HostBridge, PciDev, Topology

__all__ = [
    "PCI_P2PDMA_WHITELIST",
    "REQ_SAME_HOST_BRIDGE",
    "P2pExplanation",
    "P2pMatrix",
    "P2pdmaPagemap",
    "P2pdmaProvider",
    "PciP2pdma",
    "PciP2pdmaMapState",
    "WhitelistEntry",
    "calc_map_type_and_dist",
    "cpu_supports_p2pdma",
    "explain",
    "find_provider",
    "host_bridge_whitelist",
    "is_pci_p2pdma_page",
    "map_types_idx",
    "p2p_matrix",
    "p2pmem_alloc_mmap",
    "pci_alloc_p2pmem",
    "pci_bridge_has_acs_redir",
    "pci_free_p2pmem",
    "pci_has_p2pmem",
    "pci_host_bridge_dev",
    "pci_p2pdma_add_resource",
    "pci_p2pdma_bus_addr_map",
    "pci_p2pdma_distance",
    "pci_p2pdma_distance_many",
    "pci_p2pdma_enable_store",
    "pci_p2pdma_map_type",
    "pci_p2pdma_map_type_dev",
    "pci_p2pdma_memunmap_pages",
    "pci_p2pdma_pgmaps",
    "pci_p2pdma_release",
    "pci_p2pdma_state",
    "pci_p2pmem_alloc_sgl",
    "pci_p2pmem_find_many",
    "pci_p2pmem_free_sgl",
    "pci_p2pmem_publish",
    "pci_p2pmem_virt_to_bus",
    "pcim_p2pdma_init",
    "pcim_p2pdma_provider",
]

PCI_VENDOR_ID_INTEL = 0x8086
PCI_VENDOR_ID_AMD = 0x1022
PCI_VENDOR_ID_GOOGLE = 0x1AE0
PCI_VENDOR_ID_HYGON = 0x1D94

#: ``pci_p2pdma_whitelist[]`` flag: the entry allows P2P only between devices of one host bridge.
REQ_SAME_HOST_BRIDGE = 1 << 0

#: ``sizeof(buf)`` of the ``seq_buf`` that collects the ACS port list in calc_map_type_and_dist().
_ACS_LIST_BUF = 128
#: ``PAGE_SIZE / sizeof(struct pci_dev *)``: candidates kept by pci_p2pmem_find_many().
_FIND_MAX_DEVS = PAGE_SIZE // 8
#: ``PAGES_PER_SUBSECTION`` * PAGE_SIZE on x86-64: memremap_pages() alignment (check_pfn_span()).
SUBSECTION_SIZE = 2 << 20


@dataclass(frozen=True)
class WhitelistEntry:
    """One ``pci_p2pdma_whitelist[]`` entry: vendor, device (``None`` = ``PCI_ANY_ID``), flags."""

    vendor: int
    device: int | None
    flags: int
    comment: str

    def matches(self, vendor: int, device: int) -> bool:
        """Vendor equal and device equal or ``PCI_ANY_ID``.

        Kernel: drivers/pci/p2pdma.c, __host_bridge_whitelist() (vendor/device match of
        pci_p2pdma_whitelist[]).
        """
        return vendor == self.vendor and (self.device is None or device == self.device)


def _wl(vendor: int, device: int | None, flags: int, comment: str) -> WhitelistEntry:
    return WhitelistEntry(vendor, device, flags, comment)


#: The host-bridge allow-list of Linux 7.1 (drivers/pci/p2pdma.c, including the 7.1-stable
#: "Add Intel QAT, DSA, IAA devices to whitelist", upstream 0ba76b19fd4c). Order matters: the
#: first vendor/device match decides.
PCI_P2PDMA_WHITELIST: tuple[WhitelistEntry, ...] = (
    _wl(PCI_VENDOR_ID_INTEL, 0x3C00, REQ_SAME_HOST_BRIDGE, "Intel Xeon E5/Core i7"),
    _wl(PCI_VENDOR_ID_INTEL, 0x3C01, REQ_SAME_HOST_BRIDGE, "Intel Xeon E5/Core i7"),
    _wl(PCI_VENDOR_ID_INTEL, 0x2F00, REQ_SAME_HOST_BRIDGE, "Intel Xeon E7 v3/Xeon E5 v3/Core i7"),
    _wl(PCI_VENDOR_ID_INTEL, 0x2F01, REQ_SAME_HOST_BRIDGE, "Intel Xeon E7 v3/Xeon E5 v3/Core i7"),
    _wl(PCI_VENDOR_ID_INTEL, 0x2030, 0, "Intel Skylake-E"),
    _wl(PCI_VENDOR_ID_INTEL, 0x2031, 0, "Intel Skylake-E"),
    _wl(PCI_VENDOR_ID_INTEL, 0x2032, 0, "Intel Skylake-E"),
    _wl(PCI_VENDOR_ID_INTEL, 0x2033, 0, "Intel Skylake-E"),
    _wl(PCI_VENDOR_ID_INTEL, 0x2020, 0, "Intel Skylake-E"),
    _wl(PCI_VENDOR_ID_INTEL, 0x09A2, 0, "Intel 3rd Gen Xeon Scalable (Ice Lake) and later"),
    _wl(PCI_VENDOR_ID_INTEL, 0x0B25, 0, "Intel DSA (SPR), PCI_DEVICE_ID_INTEL_DSA_SPR0"),
    _wl(PCI_VENDOR_ID_INTEL, 0x0CFE, 0, "Intel IAX (SPR), PCI_DEVICE_ID_INTEL_IAX_SPR0"),
    _wl(PCI_VENDOR_ID_INTEL, 0x11FB, 0, "Intel DSA (GNR-D), PCI_DEVICE_ID_INTEL_DSA_GNRD"),
    _wl(PCI_VENDOR_ID_INTEL, 0x1212, 0, "Intel DSA (Diamond Rapids), PCI_DEVICE_ID_INTEL_DSA_DMR"),
    _wl(PCI_VENDOR_ID_INTEL, 0x1216, 0, "Intel IAA (Diamond Rapids), PCI_DEVICE_ID_INTEL_IAA_DMR"),
    _wl(PCI_VENDOR_ID_INTEL, 0x4940, 0, "Intel QAT 4xxx"),
    _wl(PCI_VENDOR_ID_INTEL, 0x4942, 0, "Intel QAT 401xx"),
    _wl(PCI_VENDOR_ID_INTEL, 0x4944, 0, "Intel QAT 402xx"),
    _wl(PCI_VENDOR_ID_INTEL, 0x4946, 0, "Intel QAT 420xx"),
    _wl(PCI_VENDOR_ID_INTEL, 0x4948, 0, "Intel QAT 6xxx"),
    _wl(PCI_VENDOR_ID_GOOGLE, None, 0, "Google SoCs"),
)


# ----------------------------------------------------------------------------- provider state
@dataclass
class P2pdmaProvider:
    """A range of MMIO the CPU can reach, owned by one BAR — ``struct p2pdma_provider``.

    Attributes:
        owner: the PCI function.
        bar: BAR index (the model keeps it; the kernel knows it by position in ``mem[]``).
        bus_offset: ``pci_bus_address() - pci_resource_start()`` (kernel sign: bus = cpu + off).
    """

    owner: PciDev
    bar: int
    bus_offset: int

    def bus_addr_map(self, paddr: int) -> int:
        """``pci_p2pdma_bus_addr_map()``: the PCI bus address of CPU address ``paddr``.

        Kernel: include/linux/pci-p2pdma.h, pci_p2pdma_bus_addr_map().
        """
        return paddr + self.bus_offset


@dataclass
class P2pdmaPagemap:
    """A range given ZONE_DEVICE pages by add_resource — ``struct pci_p2pdma_pagemap``.

    Attributes:
        start / end: CPU physical range ``[start, end]`` (inclusive end, as ``struct range``).
        mem: the BAR's provider.
        pgmap: the mm layer's ``MEMORY_DEVICE_PCI_P2PDMA`` page map of the range (``pgmap``
            embedded in the kernel's struct); ``None`` while the topology has no memory
            attached.
    """

    start: int
    end: int
    mem: P2pdmaProvider
    pgmap: DevPagemap | None = None

    @property
    def size(self) -> int:
        """Bytes covered."""
        return self.end - self.start + 1


class _P2pdmaPgmapOps(DevPagemapOps):
    """``p2pdma_pgmap_ops``: a freed page goes back to the provider's genpool."""

    has_migrate_to_ram = False

    def __init__(self, pdev: PciDev) -> None:
        self.pdev = pdev

    def folio_free(self, pgmap: DevPagemap, paddrs: np.ndarray) -> None:
        """``p2pdma_folio_free()``: ``gen_pool_free_owner`` of each freed page run."""
        p2p = self.pdev.p2pdma
        if p2p is None or p2p.pool is None:
            return          # the provider went away first (devm teardown): nothing to return
        for a, n in page_ranges(np.sort(paddrs)).tolist():
            pci_free_p2pmem(self.pdev, int(a), int(n))


def _memremap(pdev: PciDev, pm: P2pdmaPagemap, phys: PhysMemory) -> None:
    """``devm_memremap_pages()`` of one added range (the model's ZONE_DEVICE pages)."""
    dp = DevPagemap(MemoryType.MEMORY_DEVICE_PCI_P2PDMA, pm.start, pm.size, owner=pdev,
                    ops=_P2pdmaPgmapOps(pdev), provider=pdev.bdf, name=f"{pdev.bdf} p2pmem")
    memremap_pages(phys, dp)
    pm.pgmap = dp


def p2pdma_attach_memory(topo: Topology, phys: PhysMemory) -> None:
    """Give pages to every range added before ``topo`` had memory (attach_memory's second half).

    Context: takes ``Topology.lock``.
    Raises: DmaBufError(EINVAL / ENOMEM): from ``memremap_pages`` (a range not inside one MMIO
        region of ``phys``, an overlap).
    Kernel: mm/memremap.c, devm_memremap_pages() — which in the kernel runs inside
        ``pci_p2pdma_add_resource()``; the model defers it for topologies loaded before the
        machine's memory exists (a TOML file, a captured sysfs root).
    """
    with topo.lock:
        for dev in topo.devices:
            if dev.p2pdma is None:
                continue
            for pm in dev.p2pdma.pagemaps:
                if pm.pgmap is None or not pm.pgmap.live:
                    _memremap(dev, pm, phys)


def pci_p2pdma_pgmaps(pdev: PciDev) -> list[DevPagemap]:
    """The ``MEMORY_DEVICE_PCI_P2PDMA`` page maps of ``pdev``'s p2pmem, in add order.

    What ``page_pgmap(page)`` reaches for a page of the device's p2pmem (``to_p2p_pgmap``).

    Context: never blocks.
    Raises: DmaBufError(ENODEV): the device has no p2pmem (``pci_p2pdma_add_resource`` was not
        called), or its ranges have no pages because the topology has no memory attached
        (``Topology.attach_memory``).
    Kernel: drivers/pci/p2pdma.c, struct pci_p2pdma_pagemap (its ``pgmap``).
    """
    p2p = pdev.p2pdma
    if p2p is None or p2p.pool is None or not p2p.pagemaps:
        raise DmaBufError(errno.ENODEV, f"{pdev.label} has no p2pmem (pci_p2pdma_add_resource "
                          "was not called)")
    out = [pm.pgmap for pm in p2p.pagemaps if pm.pgmap is not None and pm.pgmap.live]
    if len(out) != len(p2p.pagemaps):
        raise DmaBufError(errno.ENODEV, f"{pdev.label}: its p2pmem has no pages: the topology "
                          "has no memory attached (Topology.attach_memory)")
    return out


def pci_p2pdma_memunmap_pages(pdev: PciDev) -> None:
    """Remove the page maps of ``pdev``'s p2pmem — the devm teardown of ``devm_memremap_pages``.

    Every range whose pages are no longer referenced is unmapped; the free pages stay in the
    pool (a later :func:`pci_p2pdma_release` drops it). Idempotent.

    Context: process context; takes ``Topology.lock``.
    Raises:
        ContractViolation("memunmap_pages"): pages of some range are still referenced (mapped
            or pinned) — the kernel would wait for them forever; those ranges keep their pages,
            the others are unmapped.
    Kernel: mm/memremap.c, devm_memremap_pages_release() → memunmap_pages().
    """
    busy: list[str] = []
    with pdev.topology.lock:
        p2p = pdev.p2pdma
        for pm in p2p.pagemaps if p2p is not None else []:
            if pm.pgmap is None:
                continue
            try:
                memunmap_pages(pm.pgmap)
            except ContractViolation as e:
                busy.append(str(e))
    if busy:
        raise ContractViolation("memunmap_pages", "; ".join(busy))


class PciP2pdma:
    """Per-device P2PDMA state — ``struct pci_p2pdma`` (``pdev->p2pdma``).

    Attributes:
        owner: the function.
        pool: page-granular :class:`GenPool` (``None`` until the first add_resource).
        p2pmem_published: set by :func:`pci_p2pmem_publish`.
        map_types: decision cache, ``map_types_idx(client) -> PciP2pdmaMapType``.
        mem: one :class:`P2pdmaProvider` per MEM BAR (``None`` for I/O or absent BARs).
        pagemaps: ranges registered by add_resource.
    """

    def __init__(self, owner: PciDev) -> None:
        self.owner = owner
        self.pool: GenPool | None = None
        self.p2pmem_published = False
        self.map_types: dict[int, PciP2pdmaMapType] = {}
        self.mem: list[P2pdmaProvider | None] = [None] * PCI_STD_NUM_BARS
        self.pagemaps: list[P2pdmaPagemap] = []
        for i in range(PCI_STD_NUM_BARS):
            b = owner.bar(i)
            if b is not None and b.is_mem:
                self.mem[i] = P2pdmaProvider(owner, i, b.bus_offset)

    def describe(self) -> dict[str, Any]:
        """The sysfs ``p2pmem/`` view (size, available, published) plus model extras.

        Kernel: drivers/pci/p2pdma.c, the p2pmem sysfs attributes (size_show(), available_show(),
        published_show()).
        """
        return {
            "size": self.pool.size() if self.pool else 0,
            "available": self.pool.avail() if self.pool else 0,
            "published": int(self.p2pmem_published),
            "providers": [p.bar for p in self.mem if p is not None],
            "pagemaps": [{"start": m.start, "end": m.end, "bar": m.mem.bar}
                         for m in self.pagemaps],
            "cached_decisions": len(self.map_types),
        }


@dataclass
class PciP2pdmaMapState:
    """Per-mapping scratch state — ``struct pci_p2pdma_map_state``: last provider and its type."""

    mem: P2pdmaProvider | None = None
    map: PciP2pdmaMapType = PciP2pdmaMapType.UNKNOWN


def _warn(dev: PciDev, msg: str, log: list[str] | None = None) -> None:
    """``pci_warn(dev, msg)`` / ``pci_info``: append ``"<driver> <bdf>: msg"`` to the log."""
    (dev.topology.log if log is None else log).append(f"{dev.dev_printk_prefix()}: {msg}")


def _rebuild_provider_index(topo: Topology) -> None:
    entries: list[tuple[int, int, P2pdmaProvider]] = []
    for dev in topo.devices:
        p2p = dev.p2pdma
        if p2p is None:
            continue
        for prov in p2p.mem:
            if prov is not None:
                b = dev.bars[prov.bar]
                entries.append((b.start, b.end, prov))
    entries.sort(key=lambda e: e[0])
    topo._provider_index = ([e[0] for e in entries], entries)
    topo._p2p_generation += 1          # P2PFabricWindows: cached peer windows are stale


def find_provider(topo: Topology, paddr: int) -> P2pdmaProvider | None:
    """The provider of an initialised device whose MEM BAR contains CPU address ``paddr``.

    The model's ``page_pgmap(page)`` → provider for the whole-BAR provider API
    (``pcim_p2pdma_provider``), O(log n).

    Model-only: the kernel finds the provider through the page's pgmap (page_pgmap()), which the
    model replaces by a BAR lookup.
    """
    idx = topo._provider_index
    if idx is None:
        return None
    starts, entries = idx
    i = bisect.bisect_right(starts, paddr) - 1
    if i >= 0:
        s, e, prov = entries[i]
        if s <= paddr < e:
            return prov
    return None


# ----------------------------------------------------------------------------- set-up
def pcim_p2pdma_init(pdev: PciDev) -> None:
    """Create the device's p2pdma state and one provider per MEM BAR — ``pcim_p2pdma_init()``.

    Args:
        pdev: the function that will expose BAR memory.

    Context:
        Process context; takes ``Topology.lock``. Idempotent (returns if already initialised).

    Raises:
        DmaBufError(EOPNOTSUPP): ``pdev.non_mappable_bars`` (the BARs must not be mapped).

    Kernel: drivers/pci/p2pdma.c, pcim_p2pdma_init().
    """
    topo = pdev.topology
    with topo.lock:
        if pdev.non_mappable_bars:
            raise DmaBufError(errno.EOPNOTSUPP, f"{pdev.label} has non-mappable BARs "
                              "(pdev->non_mappable_bars); its MMIO cannot be a P2P provider")
        if pdev.p2pdma is not None:
            return
        pdev.p2pdma = PciP2pdma(pdev)
        _rebuild_provider_index(topo)


def pcim_p2pdma_provider(pdev: PciDev, bar: int) -> P2pdmaProvider | None:
    """The provider of BAR ``bar`` — ``pcim_p2pdma_provider()``.

    Returns:
        The provider, or ``None`` if the BAR is not a MEM BAR.

    Raises:
        ContractViolation("pcim_p2pdma_init"): called before :func:`pcim_p2pdma_init` (the
            kernel WARNs and returns NULL).

    Kernel: drivers/pci/p2pdma.c, pcim_p2pdma_provider().
    """
    b = pdev.bar(bar) if isinstance(bar, int) else None
    if b is None or not b.is_mem:
        return None
    if pdev.p2pdma is None:
        raise ContractViolation("pcim_p2pdma_init", f"pcim_p2pdma_provider({pdev.label}, {bar}) "
                                "before pcim_p2pdma_init(): call pcim_p2pdma_init() in probe")
    return pdev.p2pdma.mem[bar]


def pci_p2pdma_add_resource(pdev: PciDev, bar: int, size: int = 0, offset: int = 0) -> None:
    """Give part of a BAR struct pages and add it to the device's p2pmem pool.

    Args:
        pdev: provider function.
        bar: BAR index (must be a MEM BAR).
        size: bytes; 0 means "from offset to the end of the BAR".
        offset: offset into the BAR.

    Context:
        Process context; takes ``Topology.lock``. Logs ``added peer-to-peer DMA memory
        <start>-<end>`` with ``pci_info``. With memory attached to the topology the range gets
        its ``MEMORY_DEVICE_PCI_P2PDMA`` page map here (``devm_memremap_pages``, before the
        pool: a failure leaves the pool unchanged); otherwise at ``attach_memory``.

    Raises:
        DmaBufError(EINVAL): not a MEM BAR; ``offset >= bar_len``; ``size + offset > bar_len``;
            range not 2 MiB (sub-section) aligned — ``memremap_pages()`` → ``check_pfn_span()``
            on x86-64 (model choice: the spec marks this uncertain; the kernel code requires it
            with SPARSEMEM_VMEMMAP).
        DmaBufError(EOPNOTSUPP): non-mappable BARs (from pcim_p2pdma_init).
        DmaBufError(ENOMEM): the range overlaps a range already registered ("Conflicting mapping
            in same section").
        DmaBufError(EINVAL): (memory attached) the range is not inside one MMIO region of it.

    Kernel: drivers/pci/p2pdma.c, pci_p2pdma_add_resource(); mm/memremap.c, pagemap_range().
    """
    if not isinstance(bar, int) or isinstance(bar, bool) or not 0 <= bar < PCI_STD_NUM_BARS:
        raise DmaBufError(errno.EINVAL, f"{pdev.label}: BAR index {bar!r} is not 0..5")
    for what, v in (("size", size), ("offset", offset)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise DmaBufError(errno.EINVAL, f"{pdev.label}: {what} must be a non-negative int, "
                              f"got {v!r}")
    size, offset = int(size), int(offset)
    b = pdev.bar(bar)
    if b is None or not b.is_mem:
        raise DmaBufError(errno.EINVAL, f"{pdev.label}: BAR{bar} is not a memory BAR "
                          "(IORESOURCE_MEM); P2P memory must come from a MEM BAR")
    if offset >= b.size:
        raise DmaBufError(errno.EINVAL, f"{pdev.label}: offset {offset:#x} is beyond BAR{bar} "
                          f"({b.size:#x} bytes)")
    if size == 0:
        size = b.size - offset
    if size + offset > b.size:
        raise DmaBufError(errno.EINVAL, f"{pdev.label}: {size:#x} bytes at offset {offset:#x} "
                          f"run past the end of BAR{bar} ({b.size:#x} bytes)")
    start = b.start + offset
    if start % SUBSECTION_SIZE or size % SUBSECTION_SIZE:
        raise DmaBufError(errno.EINVAL, f"{pdev.label}: P2P memory [{start:#x}, "
                          f"{start + size:#x}) is not 2 MiB aligned; memremap_pages() needs "
                          "sub-section alignment on x86-64 (check_pfn_span): align offset and "
                          "size to 2 MiB")
    topo = pdev.topology
    with topo.lock:
        pcim_p2pdma_init(pdev)
        p2p = pdev.p2pdma
        assert p2p is not None
        if p2p.pool is None:
            # pci_p2pdma_setup_pool(): gen_pool_create(PAGE_SHIFT, dev_to_node())
            p2p.pool = GenPool(PAGE_SHIFT, pdev.numa_node if pdev.numa_node is not None else -1)
        mem = p2p.mem[bar]
        if mem is None:  # WARN_ON(!mem) in the kernel; cannot happen after the checks above
            raise ContractViolation("pcim_p2pdma_provider", f"{pdev.label}: no provider for "
                                    f"BAR{bar}")
        end = start + size - 1
        for dev in topo.devices:
            if dev.p2pdma is None:
                continue
            for pm in dev.p2pdma.pagemaps:
                if start <= pm.end and pm.start <= end:
                    raise DmaBufError(errno.ENOMEM, f"{pdev.label}: [{start:#x}, {end:#x}] "
                                      f"overlaps P2P memory already registered by "
                                      f"{dev.label}: conflicting mapping in same section")
        pgmap = P2pdmaPagemap(start, end, mem)
        if topo.phys is not None:
            _memremap(pdev, pgmap, topo.phys)
        p2p.pool.add_owner(start, b.bus_start + offset, size, owner=pgmap)
        p2p.pagemaps.append(pgmap)
        _warn(pdev, f"added peer-to-peer DMA memory {start:#x}-{end:#x}")


def pci_p2pdma_release(pdev: PciDev) -> None:
    """Tear down the device's p2pdma state (driver unbind) — ``pci_p2pdma_release()``.

    Runs the page-map teardown first (:func:`pci_p2pdma_memunmap_pages`, the devm action
    registered after this one), then drops the pool, the pagemaps and the decision cache
    (``xa_destroy``). Memory still allocated from the pool (but not mapped) is simply gone
    with it, as after the kernel's devm teardown.

    Raises:
        ContractViolation("memunmap_pages"): p2pmem pages are still referenced (nothing is
            released then; the kernel would wait for them).
    Kernel: drivers/pci/p2pdma.c, pci_p2pdma_release().
    """
    topo = pdev.topology
    with topo.lock:
        if pdev.p2pdma is None:
            return
        pci_p2pdma_memunmap_pages(pdev)
        pdev.p2pdma = None
        _rebuild_provider_index(topo)


# ----------------------------------------------------------------------------- allocation
def pci_alloc_p2pmem(pdev: PciDev, size: int) -> int | None:
    """Allocate P2P memory from the device's pool — ``pci_alloc_p2pmem()``.

    Returns:
        CPU physical address of the first byte (the model's stand-in for the kernel's KVA), or
        ``None`` (NULL) when the device has no pool, ``size`` is 0, or the pool is exhausted.

    Kernel: drivers/pci/p2pdma.c, pci_alloc_p2pmem(); lib/genalloc.c, gen_pool_alloc_owner().
    """
    p2p = pdev.p2pdma
    if p2p is None or p2p.pool is None:
        return None
    addr, _owner = p2p.pool.alloc_owner(size)
    return addr if addr else None


def pci_free_p2pmem(pdev: PciDev, addr: int, size: int) -> None:
    """Return memory from :func:`pci_alloc_p2pmem` — ``pci_free_p2pmem()``.

    Raises:
        ContractViolation("gen_pool_free"): not allocated from this device / double free.

    Kernel: drivers/pci/p2pdma.c, pci_free_p2pmem().
    """
    p2p = pdev.p2pdma
    if p2p is None or p2p.pool is None:
        raise ContractViolation("gen_pool_free", f"pci_free_p2pmem({pdev.label}): the device "
                                "has no p2pmem pool")
    p2p.pool.free_owner(addr, size)


def pci_p2pmem_virt_to_bus(pdev: PciDev, addr: int | None) -> int:
    """The PCI bus address of P2P memory at ``addr`` — ``pci_p2pmem_virt_to_bus()``.

    Returns:
        The bus address; 0 when ``addr`` is 0/None or the device has no p2pdma; -1 (the
        genpool's answer) when ``addr`` is not in the pool.

    Kernel: drivers/pci/p2pdma.c, pci_p2pmem_virt_to_bus().
    """
    if not addr:
        return 0
    p2p = pdev.p2pdma
    if p2p is None or p2p.pool is None:
        return 0
    return p2p.pool.virt_to_phys(addr)


def pci_p2pmem_alloc_sgl(pdev: PciDev, length: int) -> np.ndarray | None:
    """Allocate ``length`` bytes as a one-entry range list — ``pci_p2pmem_alloc_sgl()``.

    Context:
        Never blocks; takes the pool lock.

    Returns:
        A 16-byte-per-range numpy array (``dmabuf.mm.ranges``) with one ``(addr, len)``, or
        ``None`` on failure (the kernel's NULL scatterlist).

    Kernel: drivers/pci/p2pdma.c, pci_p2pmem_alloc_sgl().
    """
    addr = pci_alloc_p2pmem(pdev, length)
    if addr is None:
        return None
    return make_ranges(addr, length)


def pci_p2pmem_free_sgl(pdev: PciDev, sgl: np.ndarray) -> None:
    """Free every entry of a list from :func:`pci_p2pmem_alloc_sgl` — ``pci_p2pmem_free_sgl()``.

    Raises:
        ContractViolation("gen_pool_free"): an entry was not allocated from ``pdev``.

    Kernel: drivers/pci/p2pdma.c, pci_p2pmem_free_sgl().
    """
    for rng in sgl:
        pci_free_p2pmem(pdev, int(rng["addr"]), int(rng["len"]))


def pci_p2pmem_publish(pdev: PciDev, publish: bool) -> None:
    """Publish (or hide) the device's p2pmem for other drivers — ``pci_p2pmem_publish()``.

    Only published memory is found by :func:`pci_p2pmem_find_many`; a device without p2pdma
    state is left alone, as in the kernel.

    Kernel: drivers/pci/p2pdma.c, pci_p2pmem_publish().
    """
    if pdev.p2pdma is not None:
        pdev.p2pdma.p2pmem_published = bool(publish)


def pci_has_p2pmem(pdev: PciDev) -> bool:
    """Whether the device has published p2pmem — ``pci_has_p2pmem()``.

    Kernel: drivers/pci/p2pdma.c, pci_has_p2pmem() (``p2pdma && p2pmem_published``).
    """
    return pdev.p2pdma is not None and pdev.p2pdma.p2pmem_published


def p2pmem_alloc_mmap(pdev: PciDev, length: int, *, shared: bool = True,
                      pgoff: int = 0) -> np.ndarray:
    """mmap of the sysfs ``p2pmem/allocate`` file — ``p2pmem_alloc_mmap()``.

    Args:
        pdev: provider.
        length: bytes of the mapping (``vm_end - vm_start``), a page multiple.
        shared: ``MAP_SHARED`` (``VM_MAYSHARE``).
        pgoff: ``vm_pgoff``.

    Returns:
        The pages as a one-entry range list (CPU physical addresses).

    Raises:
        DmaBufError(EINVAL): private mapping, non-zero offset, or a length that is not a
            positive page multiple; (ENODEV) no p2pdma; (ENOMEM) pool exhausted.

    Kernel: drivers/pci/p2pdma.c, p2pmem_alloc_mmap().
    """
    if not shared:
        raise DmaBufError(errno.EINVAL, f"{pdev.label}: p2pmem/allocate: attempted private "
                          "mapping; use MAP_SHARED")
    if pgoff:
        raise DmaBufError(errno.EINVAL, f"{pdev.label}: p2pmem/allocate: attempted mapping with "
                          "non-zero offset; map at offset 0")
    if not isinstance(length, int) or length <= 0 or length % PAGE_SIZE:
        raise DmaBufError(errno.EINVAL, f"{pdev.label}: mapping length {length!r} must be a "
                          "positive multiple of the page size")
    p2p = pdev.p2pdma
    if p2p is None or p2p.pool is None:
        raise DmaBufError(errno.ENODEV, f"{pdev.label} has no p2pmem")
    addr, _owner = p2p.pool.alloc_owner(length)
    if not addr:
        raise DmaBufError(errno.ENOMEM, f"{pdev.label}: p2pmem pool has {p2p.pool.avail()} "
                          f"bytes free, {length} requested")
    return make_ranges(addr, length)


def pci_p2pdma_enable_store(topo: Topology, page: str) -> tuple[PciDev | None, bool]:
    """Parse a configfs/sysfs "p2pmem" attribute — ``pci_p2pdma_enable_store()``.

    Args:
        topo: where to look the device up.
        page: the written text: a PCI device name, or a boolean (``kstrtobool``: 1/0, y/n,
            on/off, true/false…); "0"/"1" must be exactly one character.

    Returns:
        ``(device or None, use_p2pdma)``.

    Raises:
        DmaBufError(ENODEV): a device without published p2pmem, or text that is neither.

    Kernel: drivers/pci/p2pdma.c, pci_p2pdma_enable_store().
    """
    text = page.rstrip("\n")
    if topo.has_device(text):
        dev = topo.device(text)
        if not pci_has_p2pmem(dev):
            _warn(dev, f"PCI device has no peer-to-peer memory: {page}")
            raise DmaBufError(errno.ENODEV, f"{dev.label} has no published peer-to-peer memory")
        return dev, True
    if page[:1] in ("0", "1") and len(page) > 1 and not page[1].isspace() and page[1] != "\0":
        pass   # "0000:01:00.1" that does not exist must not read as "0"
    else:
        low = text.lower()
        if low[:1] in ("y", "1") or low in ("on",) or low[:1] == "t":
            return None, True
        if low[:1] in ("n", "0", "f") or low in ("of", "off"):
            return None, False
    topo.log.append(f"pci-p2pdma: No such PCI device: {text}")
    raise DmaBufError(errno.ENODEV, f"no such PCI device: {text!r}")


# ----------------------------------------------------------------------------- the decision
def cpu_supports_p2pdma(cpu: CpuInfo) -> bool:
    """May any two devices P2P through the root complex? — ``cpu_supports_p2pdma()``.

    True for x86 AMD (``X86_VENDOR_AMD``: vendor_id AuthenticAMD — Hygon is its own vendor) with
    family >= 0x17 (Zen and newer); false on every other CPU (and on non-x86).

    Kernel: drivers/pci/p2pdma.c, cpu_supports_p2pdma().
    """
    return cpu.supports_p2pdma


def pci_bridge_has_acs_redir(pdev: PciDev) -> bool:
    """Does this function redirect P2P TLPs upstream? — ``pci_bridge_has_acs_redir()``.

    True when the ACS capability is present and its control word has RR, CR or EC set; applied
    to every device of the path, endpoints included (the kernel does not check the type).

    Kernel: drivers/pci/p2pdma.c, pci_bridge_has_acs_redir().
    """
    return pdev.acs is not None and pdev.acs.redirects


def pci_host_bridge_dev(host: HostBridge) -> PciDev | None:
    """The function the allow-list checks for a host bridge — ``pci_host_bridge_dev()``.

    Returns:
        The first device on the root bus if it is devfn 00.0 or a PCIe Root Port, else None.

    Kernel: drivers/pci/p2pdma.c, pci_host_bridge_dev().
    """
    return host.root_dev()


def _whitelist_entry(root: PciDev) -> WhitelistEntry | None:
    for e in PCI_P2PDMA_WHITELIST:
        if e.matches(root.vendor, root.device):
            return e
    return None


def _host_bridge_whitelist_one(host: HostBridge | None, same_host_bridge: bool, warn: bool,
                               log: list[str] | None) -> bool:
    """``__host_bridge_whitelist()``."""
    root = host.root_dev() if host is not None else None
    if root is None:
        return False
    e = _whitelist_entry(root)
    if e is not None:
        return not (e.flags & REQ_SAME_HOST_BRIDGE and not same_host_bridge)
    if warn:
        _warn(root, f"Host bridge not in P2PDMA whitelist: {root.vendor:04x}:{root.device:04x}",
              log)
    return False


def host_bridge_whitelist(a: PciDev, b: PciDev, warn: bool,
                          log: list[str] | None = None) -> bool:
    """``host_bridge_whitelist()``: may TLPs between ``a`` and ``b`` cross their host bridge(s)?

    Same host bridge: its root device must be allow-listed. Different host bridges: both must
    be, with no ``REQ_SAME_HOST_BRIDGE`` entry (the provider's is checked first and a failure
    short-circuits, so at most one warning is printed then).

    Kernel: drivers/pci/p2pdma.c, host_bridge_whitelist(), __host_bridge_whitelist().
    """
    ha, hb = a.host_bridge, b.host_bridge
    if ha is hb:
        return _host_bridge_whitelist_one(ha, True, warn, log)
    return (_host_bridge_whitelist_one(ha, False, warn, log)
            and _host_bridge_whitelist_one(hb, False, warn, log))


def map_types_idx(client: PciDev) -> int:
    """The decision-cache key of a client — ``map_types_idx()``.

    Returns:
        ``pci_domain_nr(client->bus) << 16 | pci_dev_id(client)`` (bus << 8 | devfn).

    Kernel: drivers/pci/p2pdma.c, map_types_idx().
    """
    return (client.domain << 16) | client.dev_id


@dataclass
class _Walk:
    dist_a: int
    dist_b: int
    common: PciDev | None
    acs_devs: list[PciDev]   # in seq_buf order


def _walk(provider: PciDev, client: PciDev) -> _Walk:
    """The two nested loops of calc_map_type_and_dist(), verbatim."""
    acs: list[PciDev] = []
    a: PciDev | None = provider
    dist_a = dist_b = 0
    while a is not None:
        dist_b = 0
        if pci_bridge_has_acs_redir(a):
            acs.append(a)
        bb: PciDev | None = client
        while bb is not None:
            if a is bb:
                # check_b_path_acs:
                b2: PciDev | None = client
                while b2 is not None:
                    if a is b2:
                        break
                    if pci_bridge_has_acs_redir(b2):
                        acs.append(b2)
                    b2 = b2.upstream_bridge()
                return _Walk(dist_a, dist_b, a, acs)
            bb = bb.upstream_bridge()
            dist_b += 1
        a = a.upstream_bridge()
        dist_a += 1
    return _Walk(dist_a, dist_b, None, acs)


def _acs_list_text(devs: list[PciDev]) -> str:
    """The ``seq_buf`` of ``"bdf;"`` entries (128 bytes) with the final character dropped."""
    buf = ""
    for d in devs:
        s = f"{d.bdf};"
        if len(buf) + len(s) < _ACS_LIST_BUF:
            buf += s
        else:   # vsnprintf truncates to size-1 chars, seq_buf marks overflow; later prints drop
            return (buf + s)[:_ACS_LIST_BUF - 1]
    return buf[:-1]


def calc_map_type_and_dist(provider: PciDev, client: PciDev, *, verbose: bool = True,
                           _store: bool = True, _log: list[str] | None = None,
                           ) -> tuple[PciP2pdmaMapType, int]:
    """How ``client`` reaches ``provider``'s memory, and how far — ``calc_map_type_and_dist()``.

    Args:
        provider: the function whose BAR is the DMA target.
        client: the function doing the DMA.
        verbose: log the kernel's warnings (``ACS redirect is set…``, the
            ``pci=disable_acs_redir=`` hint, ``cannot be used for peer-to-peer DMA…``).

    Context:
        Never blocks. Stores the result in the provider's cache if it has p2pdma state.

    Returns:
        ``(map_type, distance)``: ``BUS_ADDR``, ``THRU_HOST_BRIDGE`` or ``NOT_SUPPORTED``, and the
        hop count (computed for every outcome, as the kernel's ``*dist``).

    Kernel: drivers/pci/p2pdma.c, calc_map_type_and_dist().
    """
    topo = provider.topology
    w = _walk(provider, client)
    dist = w.dist_a + w.dist_b
    acs_redirects = False
    map_type = PciP2pdmaMapType.THRU_HOST_BRIDGE
    decided = False
    if w.common is not None:
        if not w.acs_devs:
            map_type = PciP2pdmaMapType.BUS_ADDR
            decided = True
        else:
            if verbose:
                _warn(client, f"ACS redirect is set between the client and provider "
                              f"({provider.bdf})", _log)
                _warn(client, "to disable ACS redirect for this path, add the kernel parameter: "
                              f"pci=disable_acs_redir={_acs_list_text(w.acs_devs)}", _log)
            acs_redirects = True
    if not decided and (not cpu_supports_p2pdma(topo.cpu)
                        and not host_bridge_whitelist(provider, client, acs_redirects, _log)):
        if verbose:
            _warn(client, "cannot be used for peer-to-peer DMA as the client and provider "
                          f"({provider.bdf}) do not share an upstream bridge or whitelisted host "
                          "bridge", _log)
        map_type = PciP2pdmaMapType.NOT_SUPPORTED
    if _store:
        p2p = provider.p2pdma
        if p2p is not None:
            p2p.map_types[map_types_idx(client)] = map_type
    return map_type, dist


def _as_client(topo: Topology, c: PciDev | str | None) -> PciDev | None:
    """``find_parent_pci_dev()``: a PciDev, a resolvable name, or None for "not PCI"."""
    if isinstance(c, PciDev):
        return c if c.topology is topo else None
    if isinstance(c, str) and topo.has_device(c):
        return topo.device(c)
    return None


def pci_p2pdma_distance_many(provider: PciDev, clients: Sequence[PciDev | str], *,
                             verbose: bool = False) -> int:
    """Sum of distances from ``provider`` to every client, -1 if any cannot P2P.

    Args:
        provider: p2pdma provider.
        clients: functions (or names); a name that is not a PCI function of the topology is a
            non-PCI device (``find_parent_pci_dev()`` fails): -1, with a warning if verbose.
        verbose: log the kernel's warnings; when false, stop at the first refused client.

    Returns:
        -1 when ``clients`` is empty, a client is not PCI, or a client maps to NOT_SUPPORTED;
        otherwise the total distance (THRU_HOST_BRIDGE paths count too: callers only learn
        "possible").

    Context:
        Never blocks. Recomputes every decision (no cache read) and overwrites the cache.

    Kernel: drivers/pci/p2pdma.c, pci_p2pdma_distance_many().
    """
    topo = provider.topology
    if len(clients) == 0:
        return -1
    total = 0
    not_supported = False
    for c in clients:
        pc = _as_client(topo, c)
        if pc is None:
            if verbose:
                topo.log.append(f"{c}: cannot be used for peer-to-peer DMA as it is not a PCI "
                                "device")
            return -1
        map_type, dist = calc_map_type_and_dist(provider, pc, verbose=verbose)
        if map_type == PciP2pdmaMapType.NOT_SUPPORTED:
            not_supported = True
        if not_supported and not verbose:
            break
        total += dist
    return -1 if not_supported else total


def pci_p2pdma_distance(provider: PciDev, client: PciDev | str, *, verbose: bool = False) -> int:
    """Distance to one client, -1 if refused — ``pci_p2pdma_distance()``.

    Kernel: include/linux/pci-p2pdma.h, pci_p2pdma_distance() (distance_many with n = 1).
    """
    return pci_p2pdma_distance_many(provider, [client], verbose=verbose)


def pci_p2pmem_find_many(topo: Topology, clients: Sequence[PciDev | str],
                         rng: np.random.Generator) -> PciDev | None:
    """Find a published provider closest to all ``clients`` — ``pci_p2pmem_find_many()``.

    Providers are scanned in ``for_each_pci_dev()`` order; those at the minimum distance (at most
    ``PAGE_SIZE / sizeof(ptr)`` = 512 of them) are candidates and one is drawn with
    ``rng.integers(n)`` (the kernel's ``get_random_u32_below(n)``).

    Args:
        topo: the fabric.
        clients: client functions (or names).
        rng: explicit seeded generator (determinism rule of the project).

    Returns:
        The chosen provider, or ``None`` if none is compatible.

    Kernel: drivers/pci/p2pdma.c, pci_p2pmem_find_many().
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (seeded, passed explicitly)")
    closest = 2**31 - 1
    cands: list[PciDev] = []
    for pdev in topo.devices:
        if not pci_has_p2pmem(pdev):
            continue
        d = pci_p2pdma_distance_many(pdev, clients, verbose=False)
        if d < 0 or d > closest:
            continue
        if d == closest and len(cands) >= _FIND_MAX_DEVS:
            continue
        if d < closest:
            cands = []
            closest = d
        cands.append(pdev)
    if not cands:
        return None
    return cands[int(rng.integers(len(cands)))]


def pci_p2pdma_map_type(provider: P2pdmaProvider, client: PciDev | str) -> PciP2pdmaMapType:
    """The cached decision for a provider and a DMA device — ``pci_p2pdma_map_type()``.

    Returns:
        NOT_SUPPORTED when the owner has no p2pdma state or ``client`` is not a PCI function
        (no parent walk here, unlike distance_many); otherwise the cached type, computing it with
        ``verbose=true`` on a miss. Never re-evaluates a cached entry.

    Kernel: drivers/pci/p2pdma.c, pci_p2pdma_map_type().
    """
    pdev = provider.owner
    p2p = pdev.p2pdma
    if p2p is None:
        return PciP2pdmaMapType.NOT_SUPPORTED
    pc = _as_client(pdev.topology, client)
    if pc is None:
        return PciP2pdmaMapType.NOT_SUPPORTED
    t = p2p.map_types.get(map_types_idx(pc), PciP2pdmaMapType.UNKNOWN)
    if t == PciP2pdmaMapType.UNKNOWN:
        t, _ = calc_map_type_and_dist(pdev, pc, verbose=True)
    return t


def pci_p2pdma_map_type_dev(pdev: PciDev, client: PciDev) -> PciP2pdmaMapType:
    """:func:`pci_p2pdma_map_type` for a provider given as a function (any of its BARs).

    The decision is per device pair (the cache hangs off ``pdev->p2pdma``), so which BAR does
    not matter. Fast path for the DMA layer: one dict lookup when cached.

    Kernel: include/linux/pci-p2pdma.h, pci_p2pdma_map_type() (provider given as a function).
    """
    p2p = pdev.p2pdma
    if p2p is None or client.topology is not pdev.topology:
        return PciP2pdmaMapType.NOT_SUPPORTED
    t = p2p.map_types.get((client.domain << 16) | (client.bus << 8) | client.devfn)
    if t is not None and t != PciP2pdmaMapType.UNKNOWN:
        return t
    return calc_map_type_and_dist(pdev, client, verbose=True)[0]


def is_pci_p2pdma_page(topo: Topology, paddr: int) -> P2pdmaPagemap | None:
    """The P2PDMA pagemap holding ``paddr``, if any — ``is_pci_p2pdma_page()``.

    Only ranges given struct pages by :func:`pci_p2pdma_add_resource` count (a whole-BAR
    provider without pages is not "a P2PDMA page").

    Kernel: include/linux/memremap.h, is_pci_p2pdma_page(); page_pgmap().
    """
    prov = find_provider(topo, paddr)
    if prov is None or prov.owner.p2pdma is None:
        return None
    for pm in prov.owner.p2pdma.pagemaps:
        if pm.start <= paddr <= pm.end:
            return pm
    return None


def pci_p2pdma_state(state: PciP2pdmaMapState, client: PciDev | str, topo: Topology,
                     paddr: int) -> PciP2pdmaMapType:
    """How to map the page at ``paddr`` for ``client`` — ``pci_p2pdma_state()``.

    Returns:
        ``NONE`` for a page that is not P2PDMA memory; otherwise the provider's map type, looked
        up again only when the provider differs from the one in ``state``
        (``__pci_p2pdma_update_state()``).

    Kernel: include/linux/pci-p2pdma.h, pci_p2pdma_state(); drivers/pci/p2pdma.c,
    __pci_p2pdma_update_state().
    """
    pm = is_pci_p2pdma_page(topo, paddr)
    if pm is None:
        return PciP2pdmaMapType.NONE
    if state.mem is not pm.mem:
        state.mem = pm.mem
        state.map = pci_p2pdma_map_type(pm.mem, client)
    return state.map


def pci_p2pdma_bus_addr_map(provider: P2pdmaProvider, paddr: int) -> int:
    """The PCI bus address of a BUS_ADDR transfer — ``pci_p2pdma_bus_addr_map()``.

    Returns:
        ``paddr + provider->bus_offset``.

    Kernel: include/linux/pci-p2pdma.h, pci_p2pdma_bus_addr_map().
    """
    return provider.bus_addr_map(paddr)


# ----------------------------------------------------------------------------- whole fabric
@dataclass
class P2pMatrix:
    """Decisions for every ordered pair of a device list (row = provider, column = client).

    Attributes:
        devices: the functions, in order.
        map_type: ``int8`` matrix of :class:`PciP2pdmaMapType` values.
        distance: ``int32`` matrix of hop counts (defined for every outcome).
    """

    devices: list[PciDev]
    map_type: np.ndarray
    distance: np.ndarray

    def get(self, provider: PciDev, client: PciDev) -> tuple[PciP2pdmaMapType, int]:
        """The decision for one pair.

        Kernel: drivers/pci/p2pdma.c, calc_map_type_and_dist() (one cached pair of the matrix).
        """
        i, j = self.devices.index(provider), self.devices.index(client)
        return PciP2pdmaMapType(int(self.map_type[i, j])), int(self.distance[i, j])

    def counts(self) -> dict[str, int]:
        """How many ordered pairs (i != j) got each map type.

        Model-only: statistics over the vectorised decision matrix.
        """
        n = len(self.devices)
        off = ~np.eye(n, dtype=bool)
        return {t.name: int(np.count_nonzero((self.map_type == int(t)) & off))
                for t in (PciP2pdmaMapType.BUS_ADDR, PciP2pdmaMapType.THRU_HOST_BRIDGE,
                          PciP2pdmaMapType.NOT_SUPPORTED)}

    def as_dict(self) -> dict[str, Any]:
        """JSON: device list and the two matrices with map-type names.

        Model-only: JSON serialisation for the CLI.
        """
        names = {int(t): t.name for t in PciP2pdmaMapType}
        return {"devices": [{"bdf": d.bdf, "name": d.name} for d in self.devices],
                "map_type": [[names[int(v)] for v in row] for row in self.map_type],
                "distance": self.distance.tolist(), "counts": self.counts()}


def p2p_matrix(topo: Topology, devices: Sequence[PciDev]) -> P2pMatrix:
    """``calc_map_type_and_dist()`` for all pairs at once, vectorised with numpy.

    Equivalent to calling the per-pair walk (tests check it pair by pair), without logging or
    caching. Chains are padded root-first; the nearest common upstream device is the last element
    of the longest common prefix; ACS counts come from per-chain prefix sums (provider side up to
    and including the common device, client side below it); host-bridge permission is computed per
    host-bridge pair.

    Args:
        topo: the fabric.
        devices: functions to compare (rows are providers, columns clients).

    Returns:
        A :class:`P2pMatrix`.

    Kernel: drivers/pci/p2pdma.c, calc_map_type_and_dist() (every pair, vectorised).
    """
    devs = list(devices)
    n = len(devs)
    if n == 0:
        return P2pMatrix(devs, np.zeros((0, 0), np.int8), np.zeros((0, 0), np.int32))
    chains = [d.chain() for d in devs]
    ids: dict[int, int] = {}
    redir_list: list[bool] = []
    for ch in chains:
        for x in ch:
            if id(x) not in ids:
                ids[id(x)] = len(ids)
                redir_list.append(pci_bridge_has_acs_redir(x))
    redir = np.array(redir_list, dtype=np.int32)
    lens = np.array([len(c) for c in chains], dtype=np.int32)
    depth = int(lens.max())
    root_first = np.full((n, depth), -1, dtype=np.int64)
    near_first = np.full((n, depth), -1, dtype=np.int64)
    for i, ch in enumerate(chains):
        idl = [ids[id(x)] for x in ch]
        near_first[i, :len(idl)] = idl
        root_first[i, :len(idl)] = idl[::-1]
    r_near = np.where(near_first >= 0, redir[np.maximum(near_first, 0)], 0)
    # provider side inclusive prefix sums; client side exclusive prefix sums
    p_cum = np.cumsum(r_near, axis=1)
    c_cum = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(r_near, axis=1)[:, :-1]],
                           axis=1)
    m = np.zeros((n, n), dtype=np.int32)
    alive = np.ones((n, n), dtype=bool)
    for k in range(depth):
        col = root_first[:, k]
        alive &= (col[:, None] == col[None, :]) & (col[:, None] >= 0)
        m += alive
    common = m > 0
    la, lb = lens[:, None], lens[None, :]
    dist_a = np.where(common, la - m, la)
    dist_b = np.where(common, lb - m, lb)
    distance = (dist_a + dist_b).astype(np.int32)
    rows = np.arange(n)[:, None]
    cols = np.arange(n)[None, :]
    ia = np.clip(dist_a, 0, depth - 1)
    ib = np.clip(dist_b, 0, depth - 1)
    acs = p_cum[rows, ia] + c_cum[cols, ib]
    bus = common & (acs == 0)
    # host bridges
    hbs = topo.host_bridges
    hb_index = {id(h): i for i, h in enumerate(hbs)}
    hb_of = np.array([hb_index.get(id(d.host_bridge), -1) for d in devs], dtype=np.int64)
    nh = len(hbs)
    allowed = np.zeros((max(nh, 1), max(nh, 1)), dtype=bool)
    if cpu_supports_p2pdma(topo.cpu):
        allowed[:] = True
    else:
        for i, ha in enumerate(hbs):
            for j, hb in enumerate(hbs):
                if i == j:
                    allowed[i, j] = _host_bridge_whitelist_one(ha, True, False, None)
                else:
                    allowed[i, j] = (_host_bridge_whitelist_one(ha, False, False, None)
                                     and _host_bridge_whitelist_one(hb, False, False, None))
    hb_ok = allowed[np.maximum(hb_of, 0)[:, None], np.maximum(hb_of, 0)[None, :]]
    hb_ok &= (hb_of[:, None] >= 0) & (hb_of[None, :] >= 0)
    mt = np.where(bus, int(PciP2pdmaMapType.BUS_ADDR),
                  np.where(hb_ok, int(PciP2pdmaMapType.THRU_HOST_BRIDGE),
                           int(PciP2pdmaMapType.NOT_SUPPORTED))).astype(np.int8)
    return P2pMatrix(devs, mt, distance)


# ----------------------------------------------------------------------------- explanation
@dataclass
class P2pExplanation:
    """One decision replayed step by step (``dmabuf topo explain``)."""

    provider: PciDev
    client: PciDev
    map_type: PciP2pdmaMapType
    distance: int
    p2pdma_distance: int
    provider_chain: list[str]
    client_chain: list[str]
    common_upstream: str | None
    acs_checked: list[dict[str, Any]]
    acs_redirect_devices: list[str]
    host_bridges: list[dict[str, Any]]
    cpu: dict[str, Any]
    path: list[str]
    reasons: list[str] = field(default_factory=list)
    remedies: list[str] = field(default_factory=list)
    kernel_log: list[str] = field(default_factory=list)
    cached: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form.

        Model-only: JSON serialisation for the CLI.
        """
        return {
            "provider": self.provider.bdf, "provider_name": self.provider.name,
            "client": self.client.bdf, "client_name": self.client.name,
            "map_type": self.map_type.name, "distance": self.distance,
            "p2pdma_distance": self.p2pdma_distance, "reasons": list(self.reasons),
            "remedies": list(self.remedies), "path": list(self.path),
            "provider_chain": list(self.provider_chain), "client_chain": list(self.client_chain),
            "common_upstream": self.common_upstream, "acs_checked": list(self.acs_checked),
            "acs_redirect_devices": list(self.acs_redirect_devices),
            "host_bridges": list(self.host_bridges), "cpu": dict(self.cpu),
            "kernel_log": list(self.kernel_log), "cached": self.cached,
        }


def _acs_desc(d: PciDev) -> dict[str, Any]:
    return {"bdf": d.bdf, "name": d.name, "kind": d.kind(), "has_acs": d.acs is not None,
            "ctrl": acs_names(d.acs.ctrl) if d.acs else [],
            "redirects": pci_bridge_has_acs_redir(d)}


def explain(provider: PciDev, client: PciDev) -> P2pExplanation:
    """Replay ``calc_map_type_and_dist(provider, client, verbose=true)`` with reasons and remedies.

    Does not touch the decision cache or :attr:`Topology.log`: the kernel lines the decision
    would print are returned in ``kernel_log``; the cached value (if the provider has one for
    this client) is reported in ``cached``, which can differ after ACS changes.

    Kernel: drivers/pci/p2pdma.c, calc_map_type_and_dist() with verbose=true (replayed with
    reasons).
    """
    topo = provider.topology
    log: list[str] = []
    map_type, dist = calc_map_type_and_dist(provider, client, verbose=True, _store=False,
                                            _log=log)
    w = _walk(provider, client)
    pch = provider.chain()
    cch = client.chain()
    reasons: list[str] = []
    remedies: list[str] = []
    cpu = topo.cpu
    hbp, hbc = provider.host_bridge, client.host_bridge
    hb_info: list[dict[str, Any]] = []
    for h in ([hbp] if hbp is hbc else [hbp, hbc]):
        if h is None:
            continue
        root = h.root_dev()
        e = _whitelist_entry(root) if root is not None else None
        hb_info.append({"name": h.name, "label": h.label, "root_device": root.bdf if root else None,
                        "root_id": f"{root.vendor:04x}:{root.device:04x}" if root else None,
                        "whitelisted": e is not None,
                        "req_same_host_bridge": bool(e and e.flags & REQ_SAME_HOST_BRIDGE),
                        "entry": e.comment if e else None})
    if w.common is not None:
        checked = pch[:w.dist_a + 1] + cch[:w.dist_b]
        if provider is client:
            reasons.append("provider and client are the same function: distance 0")
        else:
            reasons.append(f"nearest common upstream device is {w.common.label} "
                           f"({w.common.kind()}): {w.dist_a} hop(s) up from the provider + "
                           f"{w.dist_b} down to the client = distance {dist}")
        if not w.acs_devs:
            names = ", ".join(d.bdf for d in checked)
            reasons.append(f"no ACS redirect (RR/CR/EC) on the path ({names}): the TLPs are "
                           "routed below the host bridge → BUS_ADDR (PCI bus addresses, the "
                           "IOMMU is bypassed)")
        else:
            for d in w.acs_devs:
                assert d.acs is not None
                reasons.append(f"ACS redirect on {d.label} ({d.kind()}, ACS ctrl "
                               f"{' '.join(acs_names(d.acs.ctrl)) or '0'}): P2P requests are "
                               "redirected up to the root complex")
            lst = _acs_list_text(w.acs_devs)
            remedies.append(f"clear ACS redirect on the path to get BUS_ADDR: boot with "
                            f"pci=disable_acs_redir={lst} (or turn ACS off for these ports in "
                            "the BIOS/firmware); note this weakens IOMMU isolation, so the "
                            "devices may end up in one IOMMU group")
    else:
        checked = []
        reasons.append(f"no common upstream bridge: the path crosses the host bridge "
                       f"({'pci' if hbp is None else hbp.name}"
                       f"{'' if hbp is hbc else ' → ' + (hbc.name if hbc else '?')}); distance "
                       f"{w.dist_a} + {w.dist_b} = {dist} (length of both chains)")
    if map_type != PciP2pdmaMapType.BUS_ADDR:
        if cpu_supports_p2pdma(cpu):
            reasons.append(f"CPU {cpu.vendor_id} family {cpu.family:#x} is AMD Zen or newer "
                           "(cpu_supports_p2pdma): the root complex may forward P2P → "
                           "THRU_HOST_BRIDGE (a normal DMA mapping through the IOMMU)")
        else:
            why = ("Hygon is not X86_VENDOR_AMD" if cpu.vendor_id == "HygonGenuine" else
                   "needs AuthenticAMD with family >= 0x17" if cpu.vendor_id else
                   "not an x86 CPU")
            reasons.append(f"CPU {cpu.vendor_id or '?'} family {cpu.family:#x} is not AMD Zen "
                           f"({why}): the host-bridge allow-list decides")
            same = hbp is hbc
            for info in hb_info:
                if info["root_device"] is None:
                    reasons.append(f"host bridge {info['name']} has no root device at 00.0 nor a "
                                   "Root Port first on its bus: it cannot be allow-listed")
                elif not info["whitelisted"]:
                    reasons.append(f"host bridge {info['name']} root device {info['root_device']} "
                                   f"[{info['root_id']}] is not in pci_p2pdma_whitelist")
                elif info["req_same_host_bridge"] and not same:
                    reasons.append(f"host bridge {info['name']} [{info['root_id']}] "
                                   f"({info['entry']}) is allow-listed only for P2P within "
                                   "one host bridge (REQ_SAME_HOST_BRIDGE), and the devices "
                                   "are on different host bridges")
                else:
                    reasons.append(f"host bridge {info['name']} [{info['root_id']}] is "
                                   f"allow-listed ({info['entry']})")
            if map_type == PciP2pdmaMapType.NOT_SUPPORTED:
                reasons.append("→ NOT_SUPPORTED: pci_p2pdma_distance() is -1 and DMA mapping "
                               "of the provider's memory fails with EREMOTEIO")
                if w.common is None:
                    remedies.append("place both devices under one PCIe switch (with ACS redirect "
                                    "off on its ports) so the TLPs never reach the root complex: "
                                    "that gives BUS_ADDR on any CPU")
                if any(x["req_same_host_bridge"] for x in hb_info) and not same:
                    remedies.append("this root complex allows P2P only within one host bridge: "
                                    "move both devices under the same host bridge (same socket/"
                                    "root complex)")
                ids = ", ".join(f"{x['root_id']}" for x in hb_info if not x["whitelisted"]
                                and x["root_id"])
                if ids:
                    remedies.append(f"the root complex ({ids}) is not known to forward P2P "
                                    "TLPs: use a platform that is (AMD Zen family >= 0x17, or "
                                    "an allow-listed Intel Xeon / Google root), or — after "
                                    "verifying the hardware — add its ID to "
                                    "pci_p2pdma_whitelist[] in drivers/pci/p2pdma.c; otherwise "
                                    "stage the data through system memory")
            else:
                reasons.append("→ THRU_HOST_BRIDGE: a normal DMA mapping (IOVA through the "
                               "IOMMU, MMIO attributes) that the root complex forwards")
    p2pdma_distance = -1 if map_type == PciP2pdmaMapType.NOT_SUPPORTED else dist
    if w.common is not None:
        path = [d.bdf for d in pch[:w.dist_a + 1]] + [d.bdf for d in reversed(cch[:w.dist_b])]
    else:
        mid = [hbp.name] if hbp is not None else []
        if hbc is not hbp and hbc is not None:
            mid.append(hbc.name)
        path = [d.bdf for d in pch] + mid + [d.bdf for d in reversed(cch)]
    cached = None
    if provider.p2pdma is not None:
        t = provider.p2pdma.map_types.get(map_types_idx(client))
        if t is not None:
            cached = t.name
            if t != map_type:
                reasons.append(f"the kernel's cache for this pair still says {t.name} (decided "
                               "before the topology changed); pci_p2pdma_map_type() keeps "
                               "returning it until the provider's driver is unbound")
    return P2pExplanation(
        provider=provider, client=client, map_type=map_type, distance=dist,
        p2pdma_distance=p2pdma_distance, provider_chain=[d.bdf for d in pch],
        client_chain=[d.bdf for d in cch],
        common_upstream=w.common.bdf if w.common is not None else None,
        acs_checked=[_acs_desc(d) for d in checked],
        acs_redirect_devices=[d.bdf for d in w.acs_devs] if w.common is not None else [],
        host_bridges=hb_info, cpu=cpu.describe(), path=path, reasons=reasons,
        remedies=remedies, kernel_log=log, cached=cached)
