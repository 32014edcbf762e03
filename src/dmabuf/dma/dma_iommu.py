"""DMA API on top of an IOMMU domain — drivers/iommu/dma-iommu.c.

Two ways to map through the IOMMU, as in the kernel:

**Per call** (``dma_map_phys`` → :func:`iommu_dma_map_phys`): allocate an IOVA of the
granule-aligned size, ``iommu_map`` it (which includes one ``iotlb_sync_map``), return
``iova + offset``; the unmap (:func:`iommu_dma_unmap_phys`) unmaps, and either flushes the IOTLB
now (strict ``DMA`` domain) or queues the IOVA on the flush queue (lazy ``DMA_FQ``). A scatter
list goes through :func:`iommu_dma_map_ranges` (``iommu_dma_map_sg``): one IOVA allocation for all
segments, one mapping pass, one sync.

**The two-step IOVA API** (Documentation/core-api/dma-api.rst "Part Ie"): the caller allocates
one IOVA range for a whole transaction (:func:`dma_iova_try_alloc`), links physical ranges into it
at chosen offsets (:func:`dma_iova_link`, ``iommu_map_nosync``: **no** IOTLB sync), makes them
visible with **one** :func:`dma_iova_sync`, and tears down with :func:`dma_iova_unlink` (always an
immediate flush) or :func:`dma_iova_destroy` (unlink + free; the flush may be queued in lazy
mode) / :func:`dma_iova_free`. Alignment rule: only the first link may start at an unaligned
physical address, and then only at offset 0 — anything else is ``WARN`` + ``-EIO``.

The model has no swiotlb, so ``dev_use_swiotlb()`` is always false (no untrusted devices);
``DMA_IOVA_USE_SWIOTLB`` is never set. Cache maintenance is a no-op (x86 is coherent).

Kernel: drivers/iommu/dma-iommu.c (dma_info_to_prot(), iommu_dma_alloc_iova(),
iommu_dma_free_iova(), __iommu_dma_map(), __iommu_dma_unmap(), iommu_dma_map_phys(),
iommu_dma_map_sg(), dma_iova_try_alloc(), dma_iova_link(), dma_iova_sync(), dma_iova_unlink(),
dma_iova_destroy(), dma_iova_free()), include/linux/dma-mapping.h (struct dma_iova_state).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dmabuf.dma.defs import (
    DMA_ATTR_MMIO,
    DMA_ATTR_PRIVILEGED,
    DmaDataDirection,
    dma_bit_mask,
    valid_dma_direction,
)
from dmabuf.dma.iommu import (
    IOMMU_CACHE,
    IOMMU_MMIO,
    IOMMU_PRIV,
    IOMMU_READ,
    IOMMU_WRITE,
    IommuDomain,
)
from dmabuf.errors import ContractViolation, DmaBufError

if TYPE_CHECKING:
    from dmabuf.dma.device import DmaDevice

__all__ = [
    "DMA_IOVA_USE_SWIOTLB",
    "DmaIovaState",
    "dma_info_to_prot",
    "dma_iova_destroy",
    "dma_iova_free",
    "dma_iova_link",
    "dma_iova_size",
    "dma_iova_sync",
    "dma_iova_try_alloc",
    "dma_iova_unlink",
    "dma_use_iova",
    "iommu_dma_alloc_iova",
    "iommu_dma_free_iova",
    "iommu_dma_map_phys",
    "iommu_dma_unmap_phys",
]

DMA_IOVA_USE_SWIOTLB = 1 << 63


@dataclass
class DmaIovaState:
    """One IOVA transaction — ``struct dma_iova_state {dma_addr_t addr; u64 __size;}``.

    ``addr`` is the IOVA of the first byte (including the sub-granule offset of the ``phys``
    given to :func:`dma_iova_try_alloc`); ``size`` is ``__size`` (with ``DMA_IOVA_USE_SWIOTLB``
    never set in the model). A zeroed state means "not using IOVA" (:func:`dma_use_iova`).
    """

    addr: int = 0
    size: int = 0


def dma_use_iova(state: DmaIovaState) -> bool:
    """``dma_use_iova()``: the state holds an IOVA allocation.

    Kernel: include/linux/dma-mapping.h, dma_use_iova().
    """
    return state.size != 0


def dma_iova_size(state: DmaIovaState) -> int:
    """``dma_iova_size()``: the allocated length without the swiotlb flag bit.

    Kernel: include/linux/dma-mapping.h, dma_iova_size().
    """
    return state.size & ~DMA_IOVA_USE_SWIOTLB


def dma_info_to_prot(direction: DmaDataDirection, coherent: bool, attrs: int) -> int:
    """IOMMU prot bits for a mapping — ``dma_info_to_prot()``.

    ``DMA_ATTR_MMIO`` gives ``IOMMU_MMIO`` instead of ``IOMMU_CACHE``.

    Kernel: drivers/iommu/dma-iommu.c, dma_info_to_prot().
    """
    prot = IOMMU_CACHE if coherent and not (attrs & DMA_ATTR_MMIO) else 0
    if attrs & DMA_ATTR_PRIVILEGED:
        prot |= IOMMU_PRIV
    if attrs & DMA_ATTR_MMIO:
        prot |= IOMMU_MMIO
    if direction is DmaDataDirection.DMA_BIDIRECTIONAL:
        return prot | IOMMU_READ | IOMMU_WRITE
    if direction is DmaDataDirection.DMA_TO_DEVICE:
        return prot | IOMMU_READ
    if direction is DmaDataDirection.DMA_FROM_DEVICE:
        return prot | IOMMU_WRITE
    return 0


def _domain(dev: DmaDevice) -> IommuDomain:
    dom = dev.iommu
    if dom is None or not dom.is_dma_api or dom.iovad is None:
        raise ContractViolation("use_dma_iommu", f"{dev.name} is not in a DMA-API IOMMU domain")
    return dom


def iommu_dma_alloc_iova(domain: IommuDomain, size: int, dma_limit: int, dev: DmaDevice) -> int:
    """Allocate ``size`` bytes (granule multiple) of IOVA below ``dma_limit`` — 0 on failure.

    PCI devices first try below 4 GiB (``pci_32bit_workaround``) and only use 64-bit IOVAs once
    that failed (the kernel then logs "Using %d-bit DMA addresses").

    Kernel: drivers/iommu/dma-iommu.c, iommu_dma_alloc_iova().
    """
    iovad = domain.iovad
    assert iovad is not None
    iova_reserve_pci_windows(domain, dev)
    shift = iovad.shift
    iova_len = size >> shift
    if dev.bus_dma_limit:
        dma_limit = min(dma_limit, dev.bus_dma_limit)
    dma_limit = min(dma_limit, domain.aperture_end)
    if dma_limit > dma_bit_mask(32) and dev.pci_32bit_workaround:
        pfn = iovad.alloc_iova_fast(iova_len, dma_bit_mask(32) >> shift, False)
        if pfn:
            return pfn << shift
        dev.pci_32bit_workaround = False
    pfn = iovad.alloc_iova_fast(iova_len, dma_limit >> shift, True)
    return pfn << shift


def iova_reserve_pci_windows(domain: IommuDomain, dev: DmaDevice) -> None:
    """Keep PCI MMIO windows out of the IOVA space — ``iova_reserve_pci_windows()``.

    A DMA to an address inside a peer's BAR window is routed by the PCIe switches before it ever
    reaches the IOMMU, so such addresses must never be handed out as IOVAs. The kernel reserves
    the host bridge windows when the domain is set up; the model reserves the bus range of every
    MMIO region of the device's physical memory (``bus = paddr + bus_offset`` from the fabric,
    0 without one), lazily as regions appear. A window that overlaps a live IOVA allocation
    (a BAR added after mappings were made) cannot be reserved: the model WARNs.

    Kernel: drivers/iommu/dma-iommu.c, iova_reserve_pci_windows(), iova_reserve_iommu_regions().
    """
    iovad = domain.iovad
    if iovad is None:
        return
    from dmabuf.mm.phys import MemKind
    for reg in dev.phys.regions:
        if reg.kind is not MemKind.MMIO or (reg.base, reg.size) in domain.reserved_windows:
            continue
        domain.reserved_windows.add((reg.base, reg.size))
        off = 0
        if dev.fabric is not None:
            hit = dev.fabric.provider_at(reg.base)
            if hit is not None:
                off = int(hit[1])
        lo = (reg.base + off) >> iovad.shift
        hi = (reg.base + off + reg.size - 1) >> iovad.shift
        if lo < 1 or hi > (domain.aperture_end >> iovad.shift):
            continue
        try:
            iovad.reserve_iova(lo, hi)
        except DmaBufError as e:
            dev.warn("iova_reserve_pci_windows", f"cannot reserve {reg.name}: {e.strerror}")


def iommu_dma_free_iova(domain: IommuDomain, iova: int, size: int, queued: bool) -> None:
    """Give an IOVA range back, now or after the next IOTLB flush — ``iommu_dma_free_iova()``.

    Kernel: drivers/iommu/dma-iommu.c, iommu_dma_free_iova() (queue_iova() / free_iova_fast()).
    """
    iovad = domain.iovad
    assert iovad is not None
    pfn = iova >> iovad.shift
    if queued:
        domain.queue_iova(pfn, size >> iovad.shift, iovad.free_iova)
    else:
        iovad.free_iova(pfn)


def iommu_dma_map_phys(dev: DmaDevice, phys: int, size: int, direction: DmaDataDirection,
                       attrs: int) -> int:
    """Map one physical range through the IOMMU — ``iommu_dma_map_phys()`` / ``__iommu_dma_map``.

    Returns:
        The IOVA of ``phys`` (``iova + iova_offset(phys)``).

    Raises:
        DmaBufError(ENOMEM): IOVA space exhausted or ``iommu_map`` failed (DMA_MAPPING_ERROR).

    Kernel: drivers/iommu/dma-iommu.c, iommu_dma_map_phys(), __iommu_dma_map().
    """
    domain = _domain(dev)
    iovad = domain.iovad
    assert iovad is not None
    prot = dma_info_to_prot(direction, dev.coherent, attrs)
    iova_off = iovad.iova_offset(phys)
    asize = iovad.iova_align(size + iova_off)
    iova = iommu_dma_alloc_iova(domain, asize, dev.dma_mask or 0, dev)
    if not iova:
        raise DmaBufError(errno.ENOMEM, f"{dev.name}: IOVA space exhausted mapping {size:#x} "
                          "bytes (DMA_MAPPING_ERROR)")
    try:
        domain.map(iova, phys - iova_off, asize, prot, sync=True)
    except DmaBufError as e:
        iommu_dma_free_iova(domain, iova, asize, False)
        raise DmaBufError(errno.ENOMEM, f"{dev.name}: iommu_map failed: {e.strerror} "
                          "(DMA_MAPPING_ERROR)") from e
    dev.stats["iommu_maps"] += 1
    return iova + iova_off


def iommu_dma_unmap_phys(dev: DmaDevice, dma_addr: int, size: int) -> None:
    """Unmap and free one IOVA mapping — ``__iommu_dma_unmap()``.

    Strict domain: ``iommu_unmap_fast`` + ``iommu_iotlb_sync`` + free now. Lazy domain: the IOTLB
    flush and the IOVA free are queued on the flush queue.

    Kernel: drivers/iommu/dma-iommu.c, __iommu_dma_unmap().
    """
    domain = _domain(dev)
    iovad = domain.iovad
    assert iovad is not None
    iova_off = iovad.iova_offset(dma_addr)
    dma_addr -= iova_off
    size = iovad.iova_align(size + iova_off)
    queued = domain.lazy
    unmapped = domain.unmap(dma_addr, size, sync=not queued)
    if unmapped != size:
        dev.warn("__iommu_dma_unmap", f"unmapped {unmapped:#x} of {size:#x} bytes at "
                 f"{dma_addr:#x}")
    iommu_dma_free_iova(domain, dma_addr, size, queued)


# ---------------------------------------------------------------------------------------------
# The IOVA (two-step) API
# ---------------------------------------------------------------------------------------------


def dma_iova_try_alloc(dev: DmaDevice, state: DmaIovaState, phys: int, size: int) -> bool:
    """Try to allocate one IOVA range for a transaction — ``dma_iova_try_alloc()``.

    Args:
        dev: the mapping device.
        state: zeroed first, filled on success.
        phys: only its sub-granule offset matters (page-aligned callers pass 0).
        size: total bytes the transaction will link.

    Context:
        Never sleeps (IOVA allocation under a spinlock in the kernel).

    Returns:
        ``True`` with ``state.addr``/``state.size`` set; ``False`` when the device is not behind a
        DMA-API IOMMU domain (fall back to :func:`~dmabuf.dma.mapping.dma_map_phys`), when
        ``size`` is 0 or has bit 63 set (WARN), or when the IOVA space is exhausted.

    Kernel: drivers/iommu/dma-iommu.c, dma_iova_try_alloc().
    """
    state.addr = 0
    state.size = 0
    if not dev.uses_dma_iommu:
        return False
    domain = _domain(dev)
    iovad = domain.iovad
    assert iovad is not None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise TypeError(f"dma_iova_try_alloc: size must be a non-negative int, not {size!r}")
    iova_off = iovad.iova_offset(phys)
    if size == 0:
        dev.warn("dma_iova_try_alloc", "size == 0")
        return False
    if size & DMA_IOVA_USE_SWIOTLB:
        dev.warn("dma_iova_try_alloc", f"size {size:#x} has bit 63 set")
        return False
    addr = iommu_dma_alloc_iova(domain, iovad.iova_align(size + iova_off), dev.dma_mask or 0,
                                dev)
    if not addr:
        return False
    state.addr = addr + iova_off
    state.size = size
    return True


def _state_bounds(dev: DmaDevice, state: DmaIovaState) -> tuple[IommuDomain, int, int]:
    domain = _domain(dev)
    iovad = domain.iovad
    assert iovad is not None
    if not dma_use_iova(state):
        raise ContractViolation("dma_use_iova", f"{dev.name}: the dma_iova_state holds no IOVA "
                                "(dma_iova_try_alloc failed or was not called)")
    off = iovad.iova_offset(state.addr)
    start = state.addr - off
    return domain, start, iovad.iova_align(dma_iova_size(state) + off)


def dma_iova_link(dev: DmaDevice, state: DmaIovaState, phys: int, offset: int, size: int,
                  direction: DmaDataDirection, attrs: int = 0) -> None:
    """Link ``[phys, phys + size)`` at ``offset`` of the transaction's IOVA — ``dma_iova_link()``.

    No IOTLB sync: call :func:`dma_iova_sync` once after the last link.

    Args:
        dev, state: as given to :func:`dma_iova_try_alloc`.
        phys: CPU physical address (for P2P ``THRU_HOST_BRIDGE``, pass ``DMA_ATTR_MMIO``).
        offset: byte offset inside the transaction.
        size: bytes (> 0).
        direction: the DMA direction (decides IOMMU_READ/IOMMU_WRITE).
        attrs: ``DMA_ATTR_*`` (``DMA_ATTR_MMIO`` -> ``IOMMU_MMIO``; ``PRIVILEGED``).

    Context:
        Never sleeps (GFP_ATOMIC page-table allocation).

    Raises:
        DmaBufError(EIO): ``phys`` is not granule aligned and ``offset > 0`` (only the first link
            may start unaligned) — the kernel WARNs too (recorded on the machine).
        DmaBufError(EINVAL): the resulting IOVA is not granule aligned (a previous link had an
            unaligned size; ``iommu_map`` refuses "unaligned").
        DmaBufError(EEXIST): the IOVA range is already linked.
        ContractViolation("dma_iova_link"): the link goes beyond the allocated size, or the state
            holds no IOVA.

    Kernel: drivers/iommu/dma-iommu.c, dma_iova_link(), __dma_iova_link().
    """
    direction = valid_dma_direction(direction)
    domain, start, alloc_size = _state_bounds(dev, state)
    iovad = domain.iovad
    assert iovad is not None
    if size <= 0 or offset < 0:
        raise DmaBufError(errno.EINVAL, f"dma_iova_link: size {size} must be > 0 and offset "
                          f"{offset} >= 0")
    pad = iovad.iova_offset(phys)
    if pad and offset > 0:
        dev.warn("dma_iova_link", f"unaligned phys {phys:#x} linked at offset {offset:#x}: only "
                 "the first link may start unaligned")
        raise DmaBufError(errno.EIO, f"dma_iova_link: phys {phys:#x} is not aligned to the IOVA "
                          f"granule ({iovad.granule:#x}) and offset {offset:#x} > 0; every link "
                          "but the first must start at a dma_get_merge_boundary()-aligned address")
    iova = state.addr + offset - pad
    length = iovad.iova_align(size + pad)
    if iova < start or iova + length > start + alloc_size:
        raise ContractViolation("dma_iova_link", f"{dev.name}: link [{offset:#x}, "
                                f"{offset + size:#x}) is outside the {dma_iova_size(state):#x}-"
                                "byte IOVA range from dma_iova_try_alloc()")
    prot = dma_info_to_prot(direction, dev.coherent, attrs)
    domain.map(iova, phys - pad, length, prot, sync=False)
    dev.stats["iommu_maps"] += 1


def dma_iova_sync(dev: DmaDevice, state: DmaIovaState, offset: int, size: int) -> None:
    """Make everything linked in ``[offset, offset + size)`` visible — ``dma_iova_sync()``.

    One ``iommu_sync_map`` for the whole transaction: the O(n) -> O(1) flush argument.

    Kernel: drivers/iommu/dma-iommu.c, dma_iova_sync().
    """
    domain, _, _ = _state_bounds(dev, state)
    domain.iotlb_sync_map(state.addr + offset, size)


def _iova_unlink(dev: DmaDevice, state: DmaIovaState, offset: int, size: int,
                 free_iova: bool) -> None:
    domain, start, alloc_size = _state_bounds(dev, state)
    iovad = domain.iovad
    assert iovad is not None
    addr = state.addr + offset
    pad = iovad.iova_offset(addr)
    queued = free_iova and domain.lazy
    length = iovad.iova_align(size + pad)
    addr -= pad
    unmapped = domain.unmap(addr, length, sync=not queued)
    if unmapped != length:
        dev.warn("dma_iova_unlink", f"unlinked {unmapped:#x} of {length:#x} bytes at {addr:#x}")
    if free_iova:
        iommu_dma_free_iova(domain, start, alloc_size, queued)


def dma_iova_unlink(dev: DmaDevice, state: DmaIovaState, offset: int, size: int,
                    direction: DmaDataDirection, attrs: int = 0) -> None:
    """Unlink a linked part and flush the IOTLB now (never queued) — ``dma_iova_unlink()``.

    The kernel WARNs when fewer bytes than ``size`` were mapped; so does the model (machine
    WARN log).

    Kernel: drivers/iommu/dma-iommu.c, dma_iova_unlink(), __iommu_dma_iova_unlink().
    """
    valid_dma_direction(direction)
    _iova_unlink(dev, state, offset, size, False)


def dma_iova_destroy(dev: DmaDevice, state: DmaIovaState, mapped_len: int,
                     direction: DmaDataDirection, attrs: int = 0) -> None:
    """Unlink ``[0, mapped_len)`` and free the IOVA — ``dma_iova_destroy()``.

    In a lazy (``DMA_FQ``) domain the IOTLB flush and the IOVA free go through the flush queue.
    ``mapped_len == 0`` just frees (:func:`dma_iova_free`).

    Raises:
        ContractViolation("dma_iova_destroy"): something beyond ``mapped_len`` is still linked
            (the kernel requires ``[0, mapped_len)`` to be the only linked part; it would leave
            stale PTEs in freed IOVA space).

    Kernel: drivers/iommu/dma-iommu.c, dma_iova_destroy().
    """
    valid_dma_direction(direction)
    if mapped_len == 0:
        dma_iova_free(dev, state)
        return
    domain, start, alloc_size = _state_bounds(dev, state)
    iovad = domain.iovad
    assert iovad is not None
    end_linked = iovad.iova_align(state.addr + mapped_len)
    if end_linked < start + alloc_size:
        domain.check_unmapped(end_linked, start + alloc_size - end_linked, "dma_iova_destroy")
    _iova_unlink(dev, state, 0, mapped_len, True)
    state.addr = 0
    state.size = 0


def dma_iova_free(dev: DmaDevice, state: DmaIovaState) -> None:
    """Free the whole IOVA range of a transaction — ``dma_iova_free()``.

    Raises:
        ContractViolation("dma_iova_free"): part of it is still linked (unlink first).

    Kernel: drivers/iommu/dma-iommu.c, dma_iova_free().
    """
    domain, start, alloc_size = _state_bounds(dev, state)
    domain.check_unmapped(start, alloc_size, "dma_iova_free")
    iommu_dma_free_iova(domain, start, alloc_size, False)
    state.addr = 0
    state.size = 0


# ---------------------------------------------------------------------------------------------
# Scatter-gather path
# ---------------------------------------------------------------------------------------------


def iommu_dma_map_ranges(dev: DmaDevice, phys: np.ndarray, prots: np.ndarray) -> tuple[
        np.ndarray, int, int]:
    """Map many physical segments into one IOVA range — the core of ``iommu_dma_map_sg()``.

    Each segment occupies ``iova_align(len + iova_offset(addr))`` bytes of the range, in order;
    a segment that would cross ``dma_get_seg_boundary()`` is preceded by padding (the kernel's
    ``pad_len``). One IOVA allocation, one mapping pass (``iommu_map_sg``: one ``map_calls`` per
    segment), one ``iotlb_sync_map``.

    Args:
        dev: DMA-API IOMMU device.
        phys: ``RANGE_DTYPE`` segments (non-empty).
        prots: IOMMU prot per segment (uint8).

    Returns:
        ``(dma_addrs, iova, iova_len)``: the DMA address of every segment (int64 array) and the
        IOVA allocation to unmap later.

    Raises:
        DmaBufError(ENOMEM): IOVA exhausted or mapping failed.

    Kernel: drivers/iommu/dma-iommu.c, iommu_dma_map_sg(), __finalise_sg().
    """
    domain = _domain(dev)
    iovad = domain.iovad
    assert iovad is not None
    gmask = np.uint64(iovad.granule - 1)
    a = phys["addr"]
    off = a & gmask
    slen = (phys["len"] + off + gmask) & ~gmask
    seg_starts = np.zeros(phys.size, dtype=np.uint64)
    if phys.size > 1:
        np.cumsum(slen[:-1], out=seg_starts[1:])
    total = int(seg_starts[-1] + slen[-1])
    boundary = dev.seg_boundary_mask
    if total > boundary + 1:
        # The IOVA range starts on a boundary; pad segments that would cross one (rare: > 4 GiB).
        starts = []
        cur = 0
        for ln in slen.tolist():
            pad = (boundary - cur + 1) & boundary
            if pad and pad < ln - 1:
                cur += pad
            starts.append(cur)
            cur += ln
        seg_starts = np.array(starts, dtype=np.uint64)
        total = cur
    iova = iommu_dma_alloc_iova(domain, total, dev.dma_mask or 0, dev)
    if not iova:
        raise DmaBufError(errno.ENOMEM, f"{dev.name}: IOVA space exhausted mapping a "
                          f"{total:#x}-byte scatterlist")
    try:
        domain_map_many(domain, iova + seg_starts.astype(np.int64),
                        (a - off).astype(np.int64), slen.astype(np.int64), prots)
    except DmaBufError as e:
        iommu_dma_free_iova(domain, iova, total, False)
        raise DmaBufError(errno.ENOMEM, f"{dev.name}: iommu_map_sg failed: {e.strerror}") from e
    dev.stats["iommu_maps"] += int(phys.size)
    return iova + (seg_starts + off).astype(np.int64), iova, total


def domain_map_many(domain: IommuDomain, iovas: np.ndarray, paddrs: np.ndarray,
                    sizes: np.ndarray, prots: np.ndarray) -> None:
    """Map many granule-aligned segments, then one ``iotlb_sync_map`` — ``iommu_map_sg()``.

    Kernel: drivers/iommu/iommu.c, iommu_map_sg().
    """
    domain.map_many(iovas, paddrs, sizes, prots, sync=True)


def iommu_dma_unmap_range(dev: DmaDevice, iova: int, size: int) -> None:
    """Unmap the IOVA range of a scatterlist mapping — ``iommu_dma_unmap_sg()``.

    Kernel: drivers/iommu/dma-iommu.c, iommu_dma_unmap_sg().
    """
    iommu_dma_unmap_phys(dev, iova, size)

