"""drivers/accel/habanalabs/common/memory.c: an accelerator that exports its device memory.

A Gaudi-class accelerator (habanalabs) keeps its HBM behind a large prefetchable BAR (the
"DRAM BAR"). User space allocates device memory (``HL_MEM_OP_ALLOC``), maps it into the device's
virtual address space (``HL_MEM_OP_MAP``) and may export a range of it as a dma-buf
(``HL_MEM_OP_EXPORT_DMABUF_FD``) so that an RDMA NIC or another peer DMAs straight into the HBM
over PCIe peer-to-peer. :class:`Accel` models that driver on top of the device base
(:class:`~dmabuf.devices.base.Device`):

* **Device memory is real bytes**: the HBM *is* the DRAM BAR's MMIO region of the platform
  (``"<bdf> BAR4"``), device physical address ``dram_base_address + x`` sitting at CPU physical
  address ``dram_pci_bar_start + x``. Allocations take pages of that region through
  :class:`~dmabuf.mm.phys.PhysMemory` with their own owner id (freed pages are poisoned, so a
  stale DMA is caught), in ``page_size`` device pages (``phys_pg_pack``).
* **Two addressing modes**, as the driver: with device virtual memory (Gaudi2 onwards, the
  default) memory is allocated by handle, mapped to a device virtual address, and exported *by
  that address* plus a page-aligned ``offset`` into the allocation (``memhash`` lookup, the
  allocation's ``export_cnt`` pins the mapping: unmapping exported memory fails ``-EINVAL``).
  Without it (Gaudi1, ``virtual_memory=False``) the user exports a *device physical* range of the
  user DRAM window and ``offset`` must be 0.
* **The exporter is static and pinned**: ``habanalabs_dmabuf_ops`` has ``attach``,
  ``map_dma_buf``, ``unmap_dma_buf`` and ``release`` only — no pin (never moves), no
  ``invalidate_mappings`` ever, no ``mmap`` (``dma_buf_mmap`` fails ``-EINVAL``), no vmap.
* **P2P check**: ``attach`` asks ``pci_p2pdma_distance(accel, importer)``; when it is negative
  (a non-PCI importer, or a path the fabric refuses) the attachment's ``peer2peer`` is cleared
  and *attach still succeeds*; ``map_dma_buf`` then fails ``-EPERM`` ("p2p is disabled"), as
  ``hl_map_dmabuf`` does. A static importer (``allow_peer2peer`` false) gets the same ``-EPERM``.
* **Mapping** (``alloc_sgt_from_device_pages``): skip the whole pages covered by ``offset``, cut
  the exported window into chunks that stop at non-contiguous device pages and at
  ``ALIGN_DOWN(dma_get_max_seg_size(dev), PAGE_SIZE)`` (``-EINVAL`` if that is below a page),
  translate each chunk to its BAR address (checked to lie inside the BAR, ``-EINVAL``) and
  ``dma_map_resource(dev, bar_address, chunk, dir, DMA_ATTR_SKIP_CPU_SYNC)`` it: the result is
  a DMA-only sg_table (``orig_nents = 0``). Unmap is ``dma_unmap_resource`` per entry.
* **Release** on the last ``dma_buf_put``: the export bookkeeping goes (``export_cnt--``,
  ``dmabuf_export_cnt--``); the memory stays with its allocation, which the user frees later.
* **The device's own access**: :meth:`Accel.write_mem` / :meth:`Accel.read_mem` /
  :meth:`Accel.fill_mem` run as jobs on the device's work queue (a fence per job) and resolve
  device addresses through the device MMU (virtual mode) at execution time, like the engines.

Locking: the allocation tables (``vm->idr_lock`` + ``ctx->mem_hash_lock``) are one scheduler lock
held only for bookkeeping, never across a DMA mapping call or a fence wait. Exporter ops run with
the locking the dma-buf core promises (``map``/``unmap`` under the buffer's resv).

Kernel: drivers/accel/habanalabs/common/memory.c (alloc_device_memory, free_device_memory,
map_device_va, unmap_device_va, hl_dmabuf_attach, hl_map_dmabuf, hl_unmap_dmabuf,
alloc_sgt_from_device_pages, hl_release_dmabuf, export_dmabuf, validate_export_params*,
export_dmabuf_from_addr, hl_mem_ioctl), include/uapi/drm/habanalabs_accel.h (HL_MEM_*).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dmabuf.buf.device import DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufExportInfo,
    DmaBufOps,
    MapResult,
    dma_buf_export,
)
from dmabuf.buf.file import O_CLOEXEC, O_RDWR
from dmabuf.buf.sg_table import SgTable
from dmabuf.devices.base import Device
from dmabuf.dma.defs import DMA_ATTR_SKIP_CPU_SYNC, valid_dma_direction
from dmabuf.dma.device import DmaDevice
from dmabuf.dma.mapping import dma_get_max_seg_size, dma_map_resource, dma_unmap_resource
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.mm.phys import PAGE_SIZE, PhysRegion
from dmabuf.mm.ranges import RANGE_DTYPE, coalesce, slice_ranges, split_ranges
from dmabuf.pci.p2pdma import pci_p2pdma_distance
from dmabuf.pci.topology import PciDev
from dmabuf.sync.dma_fence import DmaFence

if TYPE_CHECKING:
    from dmabuf.devices.platform import Platform

__all__ = [
    "DRAM_PHYS_BASE",
    "HL_MEM_CONTIGUOUS",
    "HL_MEM_SHARED",
    "VA_HBM_SPACE_START",
    "Accel",
    "HabanalabsDmaBufOps",
    "HlDmabufPriv",
    "HlVmHashNode",
    "HlVmPhysPgPack",
]

#: Device physical address of the first HBM byte (Gaudi2's ``DRAM_PHYS_BASE``).
DRAM_PHYS_BASE = 0x10_0000_0000
#: First device virtual address of the HBM VA range (Gaudi2's ``VA_HBM_SPACE_START``).
VA_HBM_SPACE_START = 0x1001_1000_0000_0000
#: ``HL_MEM_CONTIGUOUS``: allocate physically contiguous device memory.
HL_MEM_CONTIGUOUS = 0x1
#: ``HL_MEM_SHARED``: the allocation may be mapped by other contexts (kept for the flag set).
HL_MEM_SHARED = 0x2
#: ``MEM_HANDLE_INVALID``: the handle a host (userptr) mapping carries in the memhash.
MEM_HANDLE_INVALID = (1 << 64) - 1
_DEFAULT_PAGE_SIZE = 2 << 20
_U64 = 1 << 64


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    return int(v)


@dataclass
class HlVmPhysPgPack:
    """One device-memory allocation — ``struct hl_vm_phys_pg_pack`` (``VM_TYPE_PHYS_PACK``).

    Attributes:
        handle: the id ``HL_MEM_OP_ALLOC`` returned (``idr`` handle, from 1).
        pages: device physical address of each device page (``u64 *pages``).
        page_size: bytes per device page.
        total_size: ``npages * page_size``.
        contiguous: ``HL_MEM_CONTIGUOUS``.
        owner: the PhysMemory owner id of the pages (what importers may check DMA against).
        mapping_cnt: live device-VA mappings (``free`` fails while > 0).
        exported_size: the size of the last export (the driver's field).
    """

    handle: int
    pages: np.ndarray
    page_size: int
    total_size: int
    contiguous: bool
    owner: int
    flags: int = 0
    mapping_cnt: int = 0
    exported_size: int = 0

    @property
    def npages(self) -> int:
        """Number of device pages."""
        return int(self.pages.size)


@dataclass
class HlVmHashNode:
    """A device virtual mapping — ``struct hl_vm_hash_node`` (the context's ``mem_hash``).

    Attributes:
        vaddr: device virtual address returned by ``HL_MEM_OP_MAP``.
        handle: the allocation's handle (``MEM_HANDLE_INVALID`` for host memory mappings).
        pack: the allocation.
        export_cnt: dma-bufs exported from this mapping and not yet released (unmap fails
            ``-EINVAL`` while > 0).
    """

    vaddr: int
    handle: int
    pack: HlVmPhysPgPack | None
    export_cnt: int = 0


@dataclass
class HlDmabufPriv:
    """The exporter's private data of one dma-buf — ``struct hl_dmabuf_priv``.

    Attributes:
        accel: the exporting device (``ctx->hdev``).
        dmabuf: the buffer (set right after ``dma_buf_export``).
        phys_pg_pack / memhash_hnode / offset: virtual-memory exports.
        device_phys_addr: no-MMU exports: device physical address of the first byte.
        mappings: live sg_tables handed out (model statistic).
    """

    accel: Accel
    dmabuf: DmaBuf | None = None
    phys_pg_pack: HlVmPhysPgPack | None = None
    memhash_hnode: HlVmHashNode | None = None
    offset: int = 0
    device_phys_addr: int = 0
    mappings: int = field(default=0)

    @property
    def owner(self) -> int | None:
        """Owner id of the exported pages (virtual-memory exports), else None (not tracked)."""
        return None if self.phys_pg_pack is None else self.phys_pg_pack.owner


class HabanalabsDmaBufOps(DmaBufOps):
    """``habanalabs_dmabuf_ops``: attach, map_dma_buf, unmap_dma_buf, release — nothing else.

    No ``pin``/``unpin`` (a static exporter: the memory never moves), no ``mmap`` (user mmap of
    the dma-buf fails ``-EINVAL`` in the core), no ``vmap``, no ``begin/end_cpu_access``.

    Kernel: drivers/accel/habanalabs/common/memory.c, habanalabs_dmabuf_ops.
    """

    def attach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """Clear ``peer2peer`` when the importer cannot reach the BAR — ``hl_dmabuf_attach()``.

        ``pci_p2pdma_distance(hdev->pdev, attach->dev, true) < 0`` (a non-PCI importer, or a path
        the fabric refuses) clears ``attach.peer2peer``; the attach itself always succeeds (the
        refusal surfaces as ``-EPERM`` at map time).

        Args: dmabuf: the buffer; attach: the new attachment.
        Context: unlocked (the core calls it before listing the attachment); never blocks.
        Returns: None. Raises: nothing.
        Kernel: drivers/accel/habanalabs/common/memory.c, hl_dmabuf_attach().
        """
        priv: HlDmabufPriv = dmabuf.priv
        if priv.accel.p2p_distance(attach.dev) < 0:
            attach.peer2peer = False

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> MapResult:
        """BAR addresses of the exported pages, DMA-mapped for the importer — ``hl_map_dmabuf()``.

        Args: attach: the attachment; direction: the mapping direction.
        Context: resv held (the core's map); never blocks.
        Returns: a DMA-only :class:`~dmabuf.buf.sg_table.SgTable` (one entry per chunk).
        Raises:
            DmaBufError(EPERM): ``attach.peer2peer`` is false ("p2p is disabled").
            DmaBufError(EINVAL): the importer's max segment size is below a page; a chunk
                outside the BAR.
            DmaBufError(ENOMEM): ``dma_map_resource`` failed (DMA_MAPPING_ERROR); nothing stays
                mapped.
        Kernel: drivers/accel/habanalabs/common/memory.c, hl_map_dmabuf(),
            alloc_sgt_from_device_pages(), set_dma_sg().
        """
        priv: HlDmabufPriv = attach.dmabuf.priv
        if not attach.peer2peer:
            raise DmaBufError(errno.EPERM, f"{priv.accel.name}: cannot map the dma-buf for "
                              f"{attach.dev.name}: p2p is disabled (the importer cannot do "
                              "peer-to-peer DMA to the accelerator's BAR)")
        dev = attach.dev
        if not isinstance(dev, DmaDevice):     # peer2peer is never true for those; be safe
            raise DmaBufError(errno.EPERM, f"{dev.name} is not a PCI DMA device: p2p is disabled")
        table = priv.accel._alloc_sgt(priv, dev, direction)
        priv.mappings += 1
        return table

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: MapResult,
                      direction: DmaDataDirection) -> None:
        """``dma_unmap_resource`` every entry, free the table — ``hl_unmap_dmabuf()``.

        Context: resv held; never blocks. Raises: ContractViolation (dma-debug) for a table
        that was not mapped for ``attach.dev``.
        Kernel: drivers/accel/habanalabs/common/memory.c, hl_unmap_dmabuf().
        """
        priv: HlDmabufPriv = attach.dmabuf.priv
        dev = attach.dev
        assert isinstance(table, SgTable) and isinstance(dev, DmaDevice)
        d = valid_dma_direction(int(direction))
        for addr, n in table.dma_ranges().tolist():
            dma_unmap_resource(dev, int(addr), int(n), d, DMA_ATTR_SKIP_CPU_SYNC)
        table.free()
        priv.mappings -= 1

    def release(self, dmabuf: DmaBuf) -> None:
        """Drop the export bookkeeping — ``hl_release_dmabuf()``; the memory stays allocated.

        ``export_cnt--`` on the device-VA mapping (it can be unmapped again once zero) and the
        device's ``dmabuf_export_cnt--``.

        Context: unlocked (last reference gone); takes the accelerator's memory lock briefly.
        Kernel: drivers/accel/habanalabs/common/memory.c, hl_release_dmabuf(),
            memhash_node_export_put().
        """
        priv: HlDmabufPriv = dmabuf.priv
        priv.accel._export_put(priv)


class Accel(Device):
    """A habanalabs-like accelerator exporting HBM as static, pinned dma-bufs (module doc).

    Bind with ``platform.bind(Accel, "acc0", **params)``.

    Args:
        platform, pdev, name: see :class:`~dmabuf.devices.base.Device`.
        dram_bar: index of the BAR that exposes the HBM (default 4, Gaudi's DRAM BAR).
        dram_size: bytes of HBM (default: the whole BAR window); a multiple of ``page_size``.
        page_size: device page size of allocations (``device_mem_alloc_default_page_size``,
            default 2 MiB); a power of two, at least ``PAGE_SIZE``.
        reserved: bytes at the start of the HBM kept by the driver (firmware, MMU page tables):
            ``dram_user_base_address = dram_base_address + reserved``. Default one device page.
        virtual_memory: ``dram_supports_virtual_memory`` (Gaudi2+: True; Gaudi1: False).
        dram_base_address: device physical address of the first HBM byte.

    Attributes:
        dram_region: the BAR's :class:`~dmabuf.mm.phys.PhysRegion` (the HBM bytes).
        dram_pci_bar_start / dram_pci_bar_size: CPU physical window of the HBM.
        dram_base_address / dram_end_address / dram_user_base_address: device physical layout.
        dmabuf_export_cnt: dma-bufs exported and not yet released.

    Raises: DmaBufError(ENODEV): the function has no usable memory BAR ``dram_bar``;
        DmaBufError(EINVAL): bad sizes.
    Kernel: drivers/accel/habanalabs/common/habanalabs_drv.c (probe), gaudi2.c
        (DRAM_PHYS_BASE, dram_pci_bar_size), memory.c (hl_vm_init: the DRAM page pool).
    """

    driver_name: ClassVar[str] = "habanalabs"
    class_codes: ClassVar[tuple[int, ...] | None] = (0x12,)   # PCI_BASE_CLASS_ACCELERATOR
    rings: ClassVar[tuple[str, ...]] = ("dma",)

    def __init__(self, platform: Platform, pdev: PciDev, *, name: str | None = None,
                 dram_bar: int = 4, dram_size: int | None = None,
                 page_size: int = _DEFAULT_PAGE_SIZE, reserved: int | None = None,
                 virtual_memory: bool = True,
                 dram_base_address: int = DRAM_PHYS_BASE) -> None:
        super().__init__(platform, pdev, name=name)
        page_size = _int(page_size, "page_size")
        if page_size < PAGE_SIZE or page_size & (page_size - 1):
            raise DmaBufError(errno.EINVAL, f"page_size {page_size:#x} must be a power of two "
                              f">= {PAGE_SIZE}")
        bar = pdev.bar(_int(dram_bar, "dram_bar"))
        region = platform.bars.get(f"{pdev.bdf} BAR{dram_bar}")
        if bar is None or region is None:
            raise DmaBufError(errno.ENODEV, f"{pdev.label} has no memory BAR {dram_bar} to expose "
                              "device memory through (pass dram_bar=)")
        size = region.size if dram_size is None else _int(dram_size, "dram_size")
        if size <= 0 or size % page_size or size > region.size:
            raise DmaBufError(errno.EINVAL, f"dram_size {size:#x} must be a positive multiple of "
                              f"page_size {page_size:#x} within the {region.size:#x}-byte BAR")
        res = page_size if reserved is None else _int(reserved, "reserved")
        if res < 0 or res % page_size or res >= size:
            raise DmaBufError(errno.EINVAL, f"reserved {res:#x} must be a multiple of page_size "
                              "smaller than the DRAM")
        self.dram_region: PhysRegion = region
        self.dram_pci_bar_start = bar.start
        self.dram_pci_bar_size = bar.size
        self.dram_base_address = _int(dram_base_address, "dram_base_address")
        self.dram_end_address = self.dram_base_address + size
        self.dram_user_base_address = self.dram_base_address + res
        self.page_size = page_size
        self.virtual_memory = bool(virtual_memory)
        self.dmabuf_export_cnt = 0
        self._lock = self.machine.sched.lock(f"{self.name}.mem_hash_lock")
        self._packs: dict[int, HlVmPhysPgPack] = {}
        self._next_handle = 1
        self._hash: dict[int, HlVmHashNode] = {}
        self._next_va = VA_HBM_SPACE_START
        self._reserved_owner = self.phys.new_owner(f"{self.name} reserved DRAM")
        self._reserved = (self.phys.alloc(region, res, self._reserved_owner, contiguous=True)
                          if res else None)
        self._dram_limit = region.base + size

    # ------------------------------------------------------------------ addresses
    def dram_to_bar(self, device_addr: int) -> int:
        """CPU physical (BAR) address of a device physical DRAM address.

        ``bar_address = dram_pci_bar_start + (device_addr - dram_base_address)``.

        Model-only: device address arithmetic (DRAM offset + BAR base) the habanalabs driver
        open-codes.
        """
        return self.dram_pci_bar_start + (device_addr - self.dram_base_address)

    def p2p_distance(self, dev: Any) -> int:
        """``pci_p2pdma_distance(pdev, dev, verbose)``: -1 for non-PCI or unreachable importers.

        Kernel: drivers/pci/p2pdma.c, pci_p2pdma_distance() (as called from habanalabs memory.c).
        """
        name = getattr(dev, "name", None)
        if not isinstance(name, str) or not isinstance(dev, DmaDevice):
            return -1
        return pci_p2pdma_distance(self.pdev, name, verbose=True)

    # ------------------------------------------------------------------ HL_MEM_OP_ALLOC / FREE
    def mem_alloc(self, mem_size: int, *, flags: int = 0, page_size: int = 0) -> int:
        """Allocate device memory — ``HL_MEM_OP_ALLOC`` (``alloc_device_memory()``).

        The size is rounded up to whole device pages. Without device virtual memory the driver
        only accounts the request and returns handle 0 (Gaudi1: user space manages DRAM by
        physical address).

        Args:
            mem_size: bytes (> 0).
            flags: ``HL_MEM_CONTIGUOUS`` and/or ``HL_MEM_SHARED``.
            page_size: device page size (0: the default); a power of two >= ``PAGE_SIZE``.
        Context: may block briefly (the memory lock).
        Returns: the handle (> 0), or 0 without virtual memory.
        Raises:
            DmaBufError(EINVAL): size 0 ("Cannot allocate 0 bytes"); a page size that is not a
                power of two.
            DmaBufError(ENOMEM): not enough (contiguous) device memory.
            DmaBufError(ENODEV): the device was removed.
        Kernel: drivers/accel/habanalabs/common/memory.c, hl_mem_ioctl(),
            alloc_device_memory(), set_alloc_page_size().
        """
        self._check_alive("HL_MEM_OP_ALLOC")
        mem_size = _int(mem_size, "mem_size")
        if mem_size <= 0:
            raise DmaBufError(errno.EINVAL, "alloc size must be larger than 0")
        if not self.virtual_memory:
            return 0
        psize = _int(page_size, "page_size") or self.page_size
        if psize < PAGE_SIZE or psize & (psize - 1):
            raise DmaBufError(errno.EINVAL, f"user page size ({psize:#x}) is not power of 2")
        npages = -(-mem_size // psize)
        total = npages * psize
        contiguous = bool(flags & HL_MEM_CONTIGUOUS)
        region = self.dram_region
        available = region.free_pages * PAGE_SIZE - (region.size - (self._dram_limit
                                                                    - region.base))
        if total > available:
            raise DmaBufError(errno.ENOMEM, f"{self.name}: cannot allocate {npages} device "
                              f"pages of {psize:#x} bytes (out of memory: {available:#x} free)")
        owner = self.phys.new_owner(f"{self.name} DRAM allocation")
        extents: list[np.ndarray] = []
        try:
            if contiguous:
                extents.append(self._alloc_dram(total, owner))
            else:
                for _ in range(npages):
                    extents.append(self._alloc_dram(psize, owner))
        except BaseException:
            for e in extents:
                self.phys.free(e)
            raise
        bar_addrs = np.concatenate([e["addr"] for e in extents]).astype(np.uint64)
        if contiguous:
            bar_addrs = bar_addrs[:1] + np.arange(npages, dtype=np.uint64) * np.uint64(psize)
        dev_pages = bar_addrs - np.uint64(self.dram_pci_bar_start) + \
            np.uint64(self.dram_base_address)
        with self._lock:
            handle = self._next_handle
            self._next_handle += 1
            self._packs[handle] = HlVmPhysPgPack(handle, dev_pages, psize, total, contiguous,
                                                 owner, flags)
        self.machine.trace.emit("hl_mem_alloc", device=self.name, handle=handle, size=total)
        return handle

    def _alloc_dram(self, nbytes: int, owner: int) -> np.ndarray:
        ext = self.phys.alloc(self.dram_region, nbytes, owner, contiguous=True)
        if int(ext["addr"][0]) + nbytes > self._dram_limit:
            self.phys.free(ext)
            raise DmaBufError(errno.ENOMEM, f"{self.name}: cannot allocate {nbytes:#x} bytes of "
                              "device memory (out of memory)")
        return ext

    def mem_free(self, handle: int) -> None:
        """Free device memory — ``HL_MEM_OP_FREE`` (``free_device_memory()``).

        The pages go back to the pool (poisoned): a peer still DMAing through an old mapping
        of them faults when it checks the owner.

        Raises: DmaBufError(EINVAL): unknown handle; the handle is still mapped ("is mapped,
            cannot free"); DmaBufError(ENODEV): device removed.
        Kernel: drivers/accel/habanalabs/common/memory.c, free_device_memory().
        """
        self._check_alive("HL_MEM_OP_FREE")
        handle = _int(handle, "handle")
        if not self.virtual_memory:
            return
        with self._lock:
            pack = self._packs.get(handle)
            if pack is None:
                raise DmaBufError(errno.EINVAL, f"free device memory failed, no match for handle "
                                  f"{handle}")
            if pack.mapping_cnt > 0:
                raise DmaBufError(errno.EINVAL, f"handle {handle} is mapped, cannot free (unmap "
                                  "its device virtual address first)")
            del self._packs[handle]
        self._free_pack(pack)

    def _free_pack(self, pack: HlVmPhysPgPack) -> None:
        r = np.empty(pack.npages, dtype=RANGE_DTYPE)
        r["addr"] = pack.pages - np.uint64(self.dram_base_address) + \
            np.uint64(self.dram_pci_bar_start)
        r["len"] = pack.page_size
        self.phys.free(coalesce(r))

    # ------------------------------------------------------------------ HL_MEM_OP_MAP / UNMAP
    def mem_map(self, handle: int) -> int:
        """Map an allocation into the device's virtual address space — ``HL_MEM_OP_MAP``.

        Model choice: device VAs are handed out upwards from ``VA_HBM_SPACE_START``, aligned to
        the allocation's page size, and not reused after unmap (the driver's VA block list
        reuses them; nothing here depends on reuse).

        Returns: the device virtual address. Raises: DmaBufError(EINVAL): no such handle or no
            virtual memory; DmaBufError(ENODEV): device removed.
        Kernel: drivers/accel/habanalabs/common/memory.c, map_device_va().
        """
        self._check_alive("HL_MEM_OP_MAP")
        handle = _int(handle, "handle")
        if not self.virtual_memory:
            raise DmaBufError(errno.EINVAL, f"{self.name} has no device virtual memory "
                              "(Gaudi1 mode): address DRAM physically")
        with self._lock:
            pack = self._packs.get(handle)
            if pack is None:
                raise DmaBufError(errno.EINVAL, f"no match for handle {handle}")
            align = pack.page_size
            va = -(-self._next_va // align) * align
            self._next_va = va + pack.total_size
            pack.mapping_cnt += 1
            self._hash[va] = HlVmHashNode(va, handle, pack)
        return va

    def mem_unmap(self, vaddr: int) -> None:
        """Unmap a device virtual address — ``HL_MEM_OP_UNMAP`` (``unmap_device_va()``).

        Raises: DmaBufError(EINVAL): no mapping at ``vaddr``; the mapping is exported ("failed
            to unmap, memory is exported": release the dma-bufs first); DmaBufError(ENODEV).
        Kernel: drivers/accel/habanalabs/common/memory.c, unmap_device_va().
        """
        self._check_alive("HL_MEM_OP_UNMAP")
        vaddr = _int(vaddr, "vaddr")
        with self._lock:
            node = self._hash.get(vaddr)
            if node is None:
                raise DmaBufError(errno.EINVAL, f"unmap failed, no mem hnode for vaddr "
                                  f"{vaddr:#x}")
            if node.export_cnt:
                raise DmaBufError(errno.EINVAL, f"failed to unmap {vaddr:#x}, memory is exported "
                                  f"({node.export_cnt} dma-buf(s) still alive)")
            del self._hash[vaddr]
            if node.pack is not None:
                node.pack.mapping_cnt -= 1

    def map_host_va(self, host_addr: int, size: int) -> int:
        """Map host memory into the device VA space (``HL_MEM_USERPTR``), bookkeeping only.

        The model keeps the memhash node (handle ``MEM_HANDLE_INVALID``) so that exporting it
        fails as in the driver (``-EINVAL``: only device memory can be exported); no DMA
        mapping of the host pages is made.

        Returns: the device virtual address.
        Kernel: drivers/accel/habanalabs/common/memory.c, map_device_va() (userptr path).
        """
        self._check_alive("HL_MEM_OP_MAP")
        size = _int(size, "size")
        _int(host_addr, "host_addr")
        if size <= 0:
            raise DmaBufError(errno.EINVAL, "size must be positive")
        with self._lock:
            va = -(-self._next_va // PAGE_SIZE) * PAGE_SIZE
            self._next_va = va + -(-size // PAGE_SIZE) * PAGE_SIZE
            self._hash[va] = HlVmHashNode(va, MEM_HANDLE_INVALID, None)
        return va

    # ------------------------------------------------------------------ device access (jobs)
    def resolve(self, addr: int, length: int) -> np.ndarray:
        """CPU physical (BAR) ranges behind ``[addr, addr + length)`` of device address space.

        Virtual mode: the device MMU — the mapping containing ``addr`` and its pages; no-MMU
        mode: ``addr`` is a device physical DRAM address.

        Raises: IommuFault: no mapping covers the range (a device MMU page fault) or it leaves
            the DRAM; DmaBufError(EINVAL): length < 1.

        Model-only: device-address-to-BAR translation the habanalabs export path open-codes.
        """
        addr = _int(addr, "addr")
        length = _int(length, "length")
        if length <= 0:
            raise DmaBufError(errno.EINVAL, "length must be positive")
        if not self.virtual_memory:
            if addr < self.dram_base_address or addr + length > self.dram_end_address:
                raise IommuFault(f"{self.name}: device address [{addr:#x}, {addr + length:#x}) "
                                 "is outside the DRAM", dma_addr=addr, device=self.name)
            return np.array([(self.dram_to_bar(addr), length)], dtype=RANGE_DTYPE)
        with self._lock:
            node = next((n for n in self._hash.values() if n.pack is not None
                         and n.vaddr <= addr < n.vaddr + n.pack.total_size), None)
        if node is None or node.pack is None or addr + length > node.vaddr + node.pack.total_size:
            raise IommuFault(f"{self.name}: device MMU page fault at {addr:#x} (+{length:#x}): "
                             "no mapping covers it", dma_addr=addr, device=self.name)
        return slice_ranges(self._pack_bar_ranges(node.pack), addr - node.vaddr, length)

    def _pack_bar_ranges(self, pack: HlVmPhysPgPack) -> np.ndarray:
        r = np.empty(pack.npages, dtype=RANGE_DTYPE)
        r["addr"] = pack.pages - np.uint64(self.dram_base_address) + \
            np.uint64(self.dram_pci_bar_start)
        r["len"] = pack.page_size
        return coalesce(r)

    def _job_resolve(self, op: str, addr: int, length: int) -> np.ndarray:
        try:
            return self.resolve(addr, length)
        except IommuFault as e:
            raise self.record_fault(op, e) from None

    def write_mem(self, addr: int, data: Any, *, deps: tuple[DmaFence, ...] = ()) -> DmaFence:
        """Queue a device write of ``data`` at device address ``addr``; return the job's fence.

        The job resolves the address when it runs (a freed or unmapped range then fails the
        fence with ``-EFAULT``). Raises: DmaBufError(ENODEV): device removed.

        Model-only: a device job standing in for work the accelerator's firmware runs.
        """
        buf = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) \
            else np.ascontiguousarray(data).view(np.uint8).reshape(-1).copy()

        def job() -> None:
            self.phys.write(self._job_resolve("write_mem", addr, int(buf.size)), buf)
        return self.submit(job, deps=deps, name="write_mem")

    def fill_mem(self, addr: int, byte: int, length: int) -> DmaFence:
        """Queue a device memset of ``length`` bytes at ``addr``; return the job's fence.

        Model-only: a device job standing in for work the accelerator's firmware runs.
        """
        def job() -> None:
            self.phys.fill(self._job_resolve("fill_mem", addr, length), byte)
        return self.submit(job, name="fill_mem")

    def read_mem(self, addr: int, length: int, *, timeout: float = 10.0) -> np.ndarray:
        """Run a device read of ``length`` bytes at ``addr`` as a job and return the bytes.

        Context: blocks until the job's fence signals (at most ``timeout`` seconds).
        Raises: DmaBufError(ETIMEDOUT); the job's error (``IommuFault`` -> EFAULT) as
            DmaBufError.

        Model-only: a device job standing in for work the accelerator's firmware runs.
        """
        out: list[np.ndarray] = []

        def job() -> None:
            out.append(self.phys.read(self._job_resolve("read_mem", addr, length)))
        fence = self.submit(job, name="read_mem")
        try:
            if fence.wait_timeout(False, timeout) == 0 and not fence.is_signaled():
                raise DmaBufError(errno.ETIMEDOUT, f"{self.name}: read_mem did not finish")
            if fence.error:
                raise DmaBufError(-fence.error, f"{self.name}: read_mem of {addr:#x} failed")
        finally:
            fence.put()
        return out[0]

    # ------------------------------------------------------------------ HL_MEM_OP_EXPORT_DMABUF_FD
    def export_dmabuf(self, addr: int, size: int, *, offset: int = 0,
                      flags: int = O_RDWR | O_CLOEXEC) -> DmaBuf:
        """Export device memory as a dma-buf object — ``export_dmabuf_from_addr()`` minus the fd.

        Virtual mode: ``addr`` must be a device VA returned by :meth:`mem_map` (the memhash
        key), ``offset`` is added inside the allocation. No-MMU mode: ``addr`` is a device
        physical address and ``offset`` must be 0. Validation, in the driver's order, each
        failing ``-EINVAL``: offset without virtual memory; VA not found or a host mapping;
        ``addr`` not page aligned; ``size < PAGE_SIZE``; ``offset`` not page aligned; (virtual)
        ``offset + size`` beyond the allocation, a page outside the BAR; (no-MMU) range outside
        ``[dram_user_base_address, dram_end_address)`` or overflowing, or outside the BAR.

        Args:
            addr, size, offset: see above.
            flags: file flags of the dma-buf (``O_RDWR | O_CLOEXEC`` as hl-thunk passes).
        Context: may block (takes the memory lock and the buffer's resv lock).
        Returns: the :class:`~dmabuf.buf.dma_buf.DmaBuf` (the caller owns its one reference).
        Raises: DmaBufError(EINVAL) as above; DmaBufError(ENODEV): device removed.
        Kernel: drivers/accel/habanalabs/common/memory.c, export_dmabuf_from_addr(),
            validate_export_params(), validate_export_params_no_mmu(),
            memhash_node_export_get(), export_dmabuf().
        """
        self._check_alive("HL_MEM_OP_EXPORT_DMABUF_FD")
        addr = _int(addr, "addr")
        size = _int(size, "size")
        offset = _int(offset, "offset")
        if addr < 0 or size < 0 or offset < 0:
            raise DmaBufError(errno.EINVAL, "addr, size and offset are unsigned (u64)")
        if not self.virtual_memory and offset:
            raise DmaBufError(errno.EINVAL, "offset is not allowed in device without virtual "
                              "memory")
        priv = HlDmabufPriv(self)
        if self.virtual_memory:
            node, pack = self._export_get(addr)
            try:
                self._validate_export_params(addr, size, offset, pack)
            except BaseException:
                with self._lock:
                    node.export_cnt -= 1
                raise
            pack.exported_size = size
            priv.phys_pg_pack = pack
            priv.memhash_hnode = node
            priv.offset = offset
        else:
            self._validate_export_params_no_mmu(addr, size)
            priv.device_phys_addr = addr
        try:
            dmabuf = dma_buf_export(DmaBufExportInfo("habanalabs", _OPS, size, flags,
                                                     priv=priv), self.machine)
        except BaseException:
            if priv.memhash_hnode is not None:
                with self._lock:
                    priv.memhash_hnode.export_cnt -= 1
            raise
        priv.dmabuf = dmabuf
        with self._lock:
            self.dmabuf_export_cnt += 1
        self.machine.trace.emit("hl_export_dmabuf", device=self.name, ino=dmabuf.ino,
                                addr=addr, size=size, offset=offset)
        return dmabuf

    def export_dmabuf_fd(self, addr: int, size: int, *, offset: int = 0,
                         flags: int = O_RDWR | O_CLOEXEC) -> int:
        """``HL_MEM_OP_EXPORT_DMABUF_FD``: :meth:`export_dmabuf`, then ``dma_buf_fd(flags)``.

        Returns: the new fd in the current process (it owns the buffer's reference).
        Raises: as :meth:`export_dmabuf`; DmaBufError(EMFILE) (the buffer is released then).
        Kernel: drivers/accel/habanalabs/common/memory.c, export_dmabuf() (dma_buf_fd).
        """
        dmabuf = self.export_dmabuf(addr, size, offset=offset, flags=flags)
        try:
            return dmabuf.fd(flags & O_CLOEXEC)
        except BaseException:
            dmabuf.put()
            raise

    def _export_get(self, addr: int) -> tuple[HlVmHashNode, HlVmPhysPgPack]:
        with self._lock:
            node = self._hash.get(addr)
            if node is None:
                raise DmaBufError(errno.EINVAL, f"map address {addr:#x} not found: export the "
                                  "device virtual address HL_MEM_OP_MAP returned")
            if node.handle >> 32:
                raise DmaBufError(errno.EINVAL, f"invalid handle {node.handle:#x} for map "
                                  f"address {addr:#x} (host memory cannot be exported)")
            pack = node.pack
            if pack is None or self._packs.get(node.handle) is not pack:
                raise DmaBufError(errno.EINVAL, f"no match for handle {node.handle:#x}")
            node.export_cnt += 1
            return node, pack

    def _validate_common(self, addr: int, size: int, offset: int) -> None:
        if addr % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"exported device memory address {addr:#x} should "
                              f"be aligned to PAGE_SIZE {PAGE_SIZE:#x}")
        if size < PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"exported device memory size {size} should be equal "
                              f"to or greater than {PAGE_SIZE}")
        if offset % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"exported device memory offset {offset} should be a "
                              f"multiple of PAGE_SIZE {PAGE_SIZE}")

    def _validate_export_params(self, addr: int, size: int, offset: int,
                                pack: HlVmPhysPgPack) -> None:
        self._validate_common(addr, size, offset)
        if offset + size > pack.total_size:
            raise DmaBufError(errno.EINVAL, f"offset {offset:#x} and size {size:#x} exceed total "
                              f"map size {pack.total_size:#x}")
        bar = pack.pages - np.uint64(self.dram_base_address) + np.uint64(self.dram_pci_bar_start)
        bar_end = self.dram_pci_bar_start + self.dram_pci_bar_size
        if bool(np.any(bar + np.uint64(pack.page_size) > np.uint64(bar_end))):
            raise DmaBufError(errno.EINVAL, "DRAM memory range is outside of PCI BAR boundaries")

    def _validate_export_params_no_mmu(self, device_addr: int, size: int) -> None:
        self._validate_common(device_addr, size, 0)
        end = device_addr + size
        if device_addr < self.dram_user_base_address or end > self.dram_end_address \
                or end >= _U64:
            raise DmaBufError(errno.EINVAL, f"DRAM memory range {device_addr:#x} (+{size:#x}) is "
                              "outside of DRAM boundaries")
        bar_address = self.dram_to_bar(device_addr)
        if bar_address + size > self.dram_pci_bar_start + self.dram_pci_bar_size:
            raise DmaBufError(errno.EINVAL, f"DRAM memory range {device_addr:#x} (+{size:#x}) is "
                              "outside of PCI BAR boundaries")

    def _export_put(self, priv: HlDmabufPriv) -> None:
        with self._lock:
            if priv.memhash_hnode is not None:
                priv.memhash_hnode.export_cnt -= 1
            self.dmabuf_export_cnt -= 1

    # ------------------------------------------------------------------ map helper
    def _exported_device_ranges(self, priv: HlDmabufPriv) -> np.ndarray:
        """Device physical (addr, len) of the exported window, contiguous pages merged."""
        assert priv.dmabuf is not None
        size = priv.dmabuf.size
        pack = priv.phys_pg_pack
        if pack is None:
            return np.array([(priv.device_phys_addr, size)], dtype=RANGE_DTYPE)
        r = np.empty(pack.npages, dtype=RANGE_DTYPE)
        r["addr"] = pack.pages
        r["len"] = pack.page_size
        return slice_ranges(coalesce(r), priv.offset, size)

    def _alloc_sgt(self, priv: HlDmabufPriv, dev: DmaDevice,
                   direction: DmaDataDirection) -> SgTable:
        """``alloc_sgt_from_device_pages()`` + ``set_dma_sg()`` (see the module docstring)."""
        # dma_get_max_seg_size() is an unsigned int in the kernel: at most UINT_MAX
        max_seg = min(dma_get_max_seg_size(dev), (1 << 32) - 1) // PAGE_SIZE * PAGE_SIZE
        if max_seg < PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"dma_max_seg_size {dma_get_max_seg_size(dev)} can't "
                              "be smaller than PAGE_SIZE")
        d = valid_dma_direction(int(direction))
        chunks = split_ranges(self._exported_device_ranges(priv), max_seg)
        bar_end = self.dram_pci_bar_start + self.dram_pci_bar_size
        mapped: list[tuple[int, int]] = []
        try:
            for daddr, n in chunks.tolist():
                bar_address = self.dram_to_bar(int(daddr))
                if bar_address < self.dram_pci_bar_start or bar_address + n > bar_end:
                    raise DmaBufError(errno.EINVAL, f"device address {int(daddr):#x} (+{n:#x}) "
                                      "is outside of the PCI BAR")
                a = dma_map_resource(dev, bar_address, int(n), d, DMA_ATTR_SKIP_CPU_SYNC)
                mapped.append((a, int(n)))
        except BaseException:
            for a, n in mapped:
                dma_unmap_resource(dev, a, n, d, DMA_ATTR_SKIP_CPU_SYNC)
            raise
        return SgTable.dma_only(np.array(mapped, dtype=RANGE_DTYPE))

    # ------------------------------------------------------------------ teardown
    def remove(self) -> None:
        """Unbind: drain the rings, free every allocation that is not exported.

        Model choice: the driver keeps the device context alive while exported dma-bufs exist
        (each holds a reference on the device file); here allocations with live exports are
        kept (importers may still DMA into them) and a WARN names how many exports remain.

        Context: may block (drains the work queue).
        Kernel: drivers/accel/habanalabs/common/device.c, hl_device_fini(); memory.c,
            hl_vm_ctx_fini().
        """
        if self.removed:
            return
        super().remove()
        with self._lock:
            exported = {n.handle for n in self._hash.values() if n.export_cnt}
            live = self.dmabuf_export_cnt
            packs = [p for h, p in self._packs.items() if h not in exported]
            for p in packs:
                del self._packs[p.handle]
            self._hash = {va: n for va, n in self._hash.items() if n.handle in exported}
        if live:
            self.machine.warn("habanalabs", f"{self.name} removed with {live} exported "
                              "dma-buf(s) still alive; their memory stays allocated")
        for p in packs:
            self._free_pack(p)

    def describe(self) -> dict[str, Any]:
        """Snapshot: the device base's, plus DRAM layout, allocations, mappings and exports.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        d = super().describe()
        with self._lock:
            d["dram"] = {"bar_start": self.dram_pci_bar_start, "bar_size": self.dram_pci_bar_size,
                         "base": self.dram_base_address, "user_base": self.dram_user_base_address,
                         "end": self.dram_end_address, "page_size": self.page_size,
                         "virtual_memory": self.virtual_memory}
            d["allocations"] = {h: {"size": p.total_size, "mapped": p.mapping_cnt,
                                    "contiguous": p.contiguous} for h, p in self._packs.items()}
            d["mappings"] = {va: {"handle": n.handle, "exports": n.export_cnt}
                             for va, n in self._hash.items()}
            d["dmabuf_export_cnt"] = self.dmabuf_export_cnt
        return d


_OPS = HabanalabsDmaBufOps()
