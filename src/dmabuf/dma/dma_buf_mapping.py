"""DMA-mapping an MMIO ``phys_vec[]`` for a dma-buf importer — drivers/dma-buf/dma-buf-mapping.c.

``dma_buf_phys_vec_to_sgt()`` is the exporter-side helper (vfio-pci uses it) that turns the
physical ranges of a PCI BAR into a **DMA-only** sg_table for the importing device, following the
canonical P2P recipe (spec p2p §2.5, §2.6):

* ``BUS_ADDR`` — every range becomes its PCI bus address (``pci_p2pdma_bus_addr_map``), flagged
  ``SG_DMA_BUS_ADDRESS``; no IOVA, nothing to unmap;
* ``THRU_HOST_BRIDGE`` — behind a DMA-API IOMMU, one IOVA range for the whole buffer
  (``dma_iova_try_alloc``), every range linked with ``DMA_ATTR_MMIO``, **one** ``dma_iova_sync``,
  and one DMA entry at ``state.addr`` (cut at ``UINT_MAX``); without an IOMMU (or when the IOVA
  allocation fails) ``dma_map_phys(..., DMA_ATTR_MMIO)`` per range;
* anything else — ``-EINVAL``.

The table is built with :meth:`dmabuf.buf.sg_table.SgTable.dma_only` (``orig_nents = 0``: no CPU
list, importers cannot reach pages). The kernel recovers its ``struct dma_buf_dma`` wrapper (the
IOVA state, the size) from the sg_table with ``container_of``; the model keeps it on the mapping
device, keyed by the table, and :func:`dma_buf_free_sgt` takes it back from there.

Locking: the kernel requires the dma-buf's reservation lock held; that check belongs to the
buffer layer that calls this helper (this layer-4 helper receives a device, not an attachment).

Kernel: drivers/dma-buf/dma-buf-mapping.c (dma_buf_phys_vec_to_sgt(), dma_buf_free_sgt(),
fill_sg_entry(), calc_sg_nents()).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmabuf.dma.defs import DMA_ATTR_MMIO, DmaDataDirection, valid_dma_direction
from dmabuf.dma.device import DmaDevice
from dmabuf.dma.dma_iommu import (
    DmaIovaState,
    dma_iova_destroy,
    dma_iova_link,
    dma_iova_sync,
    dma_iova_try_alloc,
    dma_use_iova,
)
from dmabuf.dma.fabric import PciP2pdmaMapType
from dmabuf.dma.mapping import dma_map_phys, dma_unmap_phys
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.ranges import RANGE_DTYPE, as_ranges

__all__ = ["UINT_MAX", "DmaBufDma", "DmaOnlyTable", "dma_buf_free_sgt", "dma_buf_phys_vec_to_sgt"]

UINT_MAX = (1 << 32) - 1


@dataclass(frozen=True)
class DmaOnlyTable:
    """Fallback DMA-only table, used only when ``dmabuf.buf.sg_table`` is not importable."""

    dma: np.ndarray
    bus_address: bool = False

    @property
    def nents(self) -> int:
        """Number of DMA entries."""
        return int(self.dma.size)

    def dma_ranges(self) -> np.ndarray:
        """The DMA list (a copy).

        Model-only: accessor for the DMA address list the kernel reads directly from the sg_table.
        """
        return self.dma.copy()


@dataclass
class DmaBufDma:
    """``struct dma_buf_dma``: the table, the IOVA state (or None) and the mapped size."""

    sgt: Any
    map_type: PciP2pdmaMapType
    direction: DmaDataDirection
    size: int
    state: DmaIovaState | None = None
    #: per-range dma_map_phys results (address, length) when not using IOVA and not BUS_ADDR.
    singles: list[tuple[int, int]] = field(default_factory=list)


def _make_table(dma: np.ndarray, bus: bool) -> Any:
    try:
        from dmabuf.buf.sg_table import SgTable
    except ImportError:  # pragma: no cover - the buf layer is part of the package
        from dmabuf.mm.ranges import split_ranges
        return DmaOnlyTable(split_ranges(dma, UINT_MAX), bus)
    return SgTable.dma_only(dma, bus_address=bus, max_len=UINT_MAX)


def dma_buf_phys_vec_to_sgt(dev: DmaDevice, provider: str | None, phys_vec: Any, size: int,
                            direction: DmaDataDirection) -> Any:
    """Map an MMIO ``phys_vec[]`` for ``dev`` into a DMA-only table — ``dma_buf_phys_vec_to_sgt()``.

    Args:
        dev: the importing device (``attach->dev`` / ``dma_buf_sgt_dma_device(attach)``).
        provider: BDF of the P2P provider owning the BAR (``struct p2pdma_provider``); ``None``
            is the kernel's "MMIO only" WARN + ``-EINVAL``.
        phys_vec: ``RANGE_DTYPE`` ranges (or a ``PhysVec`` with ``.ranges``), page aligned.
        size: total bytes of the ranges.
        direction: DMA direction.

    Context:
        Caller holds the dma-buf's reservation lock (not checked here); never sleeps.

    Returns:
        A DMA-only :class:`~dmabuf.buf.sg_table.SgTable` (``orig_nents == 0``); entries at
        most ``UINT_MAX`` bytes; ``SG_DMA_BUS_ADDRESS`` set for ``BUS_ADDR``.

    Raises:
        DmaBufError(EINVAL): no provider, a map type other than BUS_ADDR / THRU_HOST_BRIDGE,
            ``size`` not the sum of the ranges, empty or unaligned ranges.
        DmaBufError(ENOMEM / EIO): from the mapping calls; everything done so far is undone.
        ContractViolation: invalid direction.

    Kernel: drivers/dma-buf/dma-buf-mapping.c, dma_buf_phys_vec_to_sgt().
    """
    direction = valid_dma_direction(direction)
    if provider is None:
        dev.warn("dma_buf_phys_vec_to_sgt", "no P2P provider: this helper is for MMIO only")
        raise DmaBufError(errno.EINVAL, "dma_buf_phys_vec_to_sgt: no p2pdma provider (MMIO only)")
    r = as_ranges(getattr(phys_vec, "ranges", phys_vec))
    if r.size == 0 or bool(np.any(r["len"] == 0)):
        raise DmaBufError(errno.EINVAL, "dma_buf_phys_vec_to_sgt: empty phys_vec or range")
    total = int(r["len"].sum(dtype=np.uint64))
    if total != size:
        raise DmaBufError(errno.EINVAL, f"dma_buf_phys_vec_to_sgt: size {size:#x} differs from "
                          f"the ranges' total {total:#x}")
    if bool(np.any((r["addr"] | r["len"]) & np.uint64(4095))):
        raise DmaBufError(errno.EINVAL, "dma_buf_phys_vec_to_sgt: ranges must be page aligned")
    if dev.fabric is None:
        raise DmaBufError(errno.EINVAL, f"{dev.name} has no P2P fabric: cannot map peer MMIO")
    map_type = dev.fabric.p2p_map_type(provider, dev.name)
    if map_type is PciP2pdmaMapType.BUS_ADDR:
        hits = [dev.fabric.provider_at(int(a)) for a in r["addr"].tolist()]
        if any(h is None or h[0] != provider for h in hits):
            raise DmaBufError(errno.EINVAL, "dma_buf_phys_vec_to_sgt: a range is not in memory "
                              f"published by {provider}")
        offs = np.array([h[1] for h in hits if h is not None], dtype=np.int64)
        dma = np.empty(r.size, dtype=RANGE_DTYPE)
        # pci_p2pdma_bus_addr_map(): bus = paddr + bus_offset (kernel sign)
        dma["addr"] = (r["addr"].astype(np.int64) + offs).astype(np.uint64)
        dma["len"] = r["len"]
        dev.note_bus_window(provider, int(r["addr"][0]), int(offs[0]))
        dev.stats["bus_addr_maps"] += int(r.size)
        sgt = _make_table(dma, True)
        dev.dma_buf_dma[id(sgt)] = DmaBufDma(sgt, map_type, direction, size)
        return sgt
    if map_type is not PciP2pdmaMapType.THRU_HOST_BRIDGE:
        raise DmaBufError(errno.EINVAL, f"dma_buf_phys_vec_to_sgt: {dev.name} cannot reach "
                          f"{provider} by P2P (map type {map_type.name})")
    state = DmaIovaState()
    dma_iova_try_alloc(dev, state, 0, size)
    wrapper = DmaBufDma(None, map_type, direction, size, state if dma_use_iova(state) else None)
    mapped = 0
    try:
        if wrapper.state is not None:
            for a, ln in zip(r["addr"].tolist(), r["len"].tolist(), strict=True):
                dma_iova_link(dev, state, a, mapped, ln, direction, DMA_ATTR_MMIO)
                mapped += ln
            if mapped != size:  # pragma: no cover - guarded by the size check above
                dev.warn("dma_buf_phys_vec_to_sgt", f"mapped {mapped:#x} != size {size:#x}")
            dma_iova_sync(dev, state, 0, mapped)
            dma = np.array([(state.addr, size)], dtype=RANGE_DTYPE)
        else:
            for a, ln in zip(r["addr"].tolist(), r["len"].tolist(), strict=True):
                addr = dma_map_phys(dev, a, ln, direction, DMA_ATTR_MMIO)
                wrapper.singles.append((addr, ln))
            dma = np.array(wrapper.singles, dtype=RANGE_DTYPE)
        sgt = _make_table(dma, False)
    except BaseException:
        _unwind(dev, wrapper, mapped)
        raise
    wrapper.sgt = sgt
    dev.dma_buf_dma[id(sgt)] = wrapper
    return sgt


def _unwind(dev: DmaDevice, w: DmaBufDma, mapped: int) -> None:
    if w.state is not None:
        if mapped:
            dma_iova_destroy(dev, w.state, mapped, w.direction, DMA_ATTR_MMIO)
        elif dma_use_iova(w.state):
            dma_iova_destroy(dev, w.state, 0, w.direction, DMA_ATTR_MMIO)
    for addr, ln in w.singles:
        dma_unmap_phys(dev, addr, ln, w.direction, DMA_ATTR_MMIO)
    w.singles.clear()


def dma_buf_free_sgt(dev: DmaDevice, sgt: Any, direction: DmaDataDirection) -> None:
    """Unmap and free a table from :func:`dma_buf_phys_vec_to_sgt` — ``dma_buf_free_sgt()``.

    BUS_ADDR: nothing to unmap. IOVA: ``dma_iova_destroy(size)`` (flush queued in lazy mode).
    Otherwise ``dma_unmap_phys`` per entry.

    Raises:
        ContractViolation("dma_buf_free_sgt"): the table is not a live result of
            :func:`dma_buf_phys_vec_to_sgt` for ``dev``, or the direction differs.

    Kernel: drivers/dma-buf/dma-buf-mapping.c, dma_buf_free_sgt().
    """
    direction = valid_dma_direction(direction)
    w = dev.dma_buf_dma.get(id(sgt))
    if w is None or w.sgt is not sgt:
        raise ContractViolation("dma_buf_free_sgt", f"{dev.name}: table was not produced by "
                                "dma_buf_phys_vec_to_sgt for this device, or freed twice")
    if w.direction is not direction:
        raise ContractViolation("dma_buf_free_sgt", f"freed with {direction.name}, mapped with "
                                f"{w.direction.name}")
    del dev.dma_buf_dma[id(sgt)]
    if w.map_type is PciP2pdmaMapType.BUS_ADDR:
        pass
    elif w.state is not None:
        dma_iova_destroy(dev, w.state, w.size, direction, DMA_ATTR_MMIO)
    else:
        _unwind(dev, w, 0)
    free = getattr(sgt, "free", None)
    if callable(free):
        free()
