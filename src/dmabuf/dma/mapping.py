"""The DMA mapping API — kernel/dma/mapping.c.

Entry points drivers call, dispatching to dma-direct (:mod:`dmabuf.dma.direct`) or to the IOMMU
(:mod:`dmabuf.dma.dma_iommu`) exactly as ``dma_map_phys()`` does:

1. ``BUG_ON(!valid_dma_direction(dir))`` (:class:`~dmabuf.errors.ContractViolation`); a device
   without a DMA mask fails;
2. dma-direct when the device has no translating DMA domain (no IOMMU, identity/passthrough);
3. ``iommu_dma_map_phys()`` when ``use_dma_iommu(dev)``;
4. (legacy ``dma_map_ops`` are not modelled.)

**Errors.** Where the kernel returns ``DMA_MAPPING_ERROR`` and callers ask ``dma_mapping_error()``
(which answers ``-ENOMEM``), the model raises ``DmaBufError(ENOMEM, reason)``. ``dma_set_mask``
returns ``-EIO`` for an unsupported mask. The scatterlist path (:func:`dma_map_phys_ranges`, the
model of ``dma_map_sgtable``) fails with ``-EREMOTEIO`` on a P2P segment the fabric does not
support, ``-EINVAL`` on bad input, ``-ENOMEM`` when IOVA or reachability fails.

**P2P** (spec p2p §1.4, §2.5). ``dma_map_phys`` itself does not look at the fabric: the caller
decides with :func:`~dmabuf.dma.pci_p2pdma.pci_p2pdma_state` and passes ``DMA_ATTR_MMIO`` for a
``THRU_HOST_BRIDGE`` peer (mapping a BAR without it is legal but the model WARNs, like dma-debug
would catch the cacheable MMIO mapping). :func:`dma_map_phys_ranges` does it per segment:
``BUS_ADDR`` → the bus address, flagged (``SG_DMA_BUS_ADDRESS``: never unmapped);
``THRU_HOST_BRIDGE`` → normal mapping with ``DMA_ATTR_MMIO``; ``NONE`` → normal mapping;
anything else → ``-EREMOTEIO``.

**dma-debug.** Every device keeps its live single mappings (``debug_maps``) and range mappings;
unmapping an address that is not mapped, or with a different size, is a
:class:`~dmabuf.errors.ContractViolation` (``dma_debug``) — what ``CONFIG_DMA_API_DEBUG`` reports.

Kernel: kernel/dma/mapping.c (dma_map_phys(), dma_unmap_phys(), dma_map_resource(),
dma_map_sgtable(), dma_set_mask(), dma_get_required_mask(), dma_addressing_limited(),
dma_get_merge_boundary()), kernel/dma/debug.c.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmabuf.dma.defs import (
    DMA_ATTR_MMIO,
    DMA_MAPPING_ERROR,
    DmaDataDirection,
    dma_bit_mask,
    valid_dma_direction,
)
from dmabuf.dma.device import DmaDevice
from dmabuf.dma.direct import (
    dma_capable,
    dma_direct_all_ram_mapped,
    dma_direct_get_required_mask,
    dma_direct_map_phys,
    dma_direct_supported,
)
from dmabuf.dma.dma_iommu import (
    dma_info_to_prot,
    iommu_dma_map_phys,
    iommu_dma_map_ranges,
    iommu_dma_unmap_phys,
    iommu_dma_unmap_range,
)
from dmabuf.dma.fabric import PciP2pdmaMapType
from dmabuf.dma.pci_p2pdma import pci_p2pdma_bus_addr_map, pci_p2pdma_state
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm.phys import MemKind
from dmabuf.mm.ranges import RANGE_DTYPE, as_ranges, coalesce

__all__ = [
    "DmaMapping",
    "dma_addressing_limited",
    "dma_get_mask",
    "dma_get_max_seg_size",
    "dma_get_merge_boundary",
    "dma_get_required_mask",
    "dma_map_phys",
    "dma_map_phys_ranges",
    "dma_map_resource",
    "dma_mapping_error",
    "dma_set_coherent_mask",
    "dma_set_mask",
    "dma_set_mask_and_coherent",
    "dma_unmap_phys",
    "dma_unmap_phys_ranges",
    "dma_unmap_resource",
]


def _check_size(size: Any, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{what}: size must be an int, not {type(size).__name__}")
    size = int(size)
    if size <= 0:
        raise DmaBufError(errno.EINVAL, f"{what}: size {size} must be positive")
    return size


def dma_map_phys(dev: DmaDevice, phys: int, size: int, direction: DmaDataDirection,
                 attrs: int = 0) -> int:
    """Map a physical range for DMA by ``dev`` — ``dma_map_phys()``.

    Args:
        dev: the device that will perform the DMA.
        phys: CPU physical address (RAM, device memory, or a BAR with ``DMA_ATTR_MMIO``).
        size: bytes (> 0).
        direction: ``DMA_TO_DEVICE`` / ``DMA_FROM_DEVICE`` / ``DMA_BIDIRECTIONAL``.
        attrs: ``DMA_ATTR_*`` bits.

    Context:
        Never sleeps (callable from atomic context in the kernel).

    Returns:
        The DMA address: ``phys`` for dma-direct, an IOVA behind a DMA-API IOMMU.

    Raises:
        ContractViolation("valid_dma_direction"): ``DMA_NONE`` or garbage (the kernel BUGs).
        DmaBufError(ENOMEM): ``DMA_MAPPING_ERROR`` — no DMA mask, the device cannot reach the
            address without swiotlb, or IOVA exhaustion.
        DmaBufError(EINVAL): size <= 0.
        IommuFault: ``phys`` is not in any memory region.

    Kernel: kernel/dma/mapping.c, dma_map_phys().
    """
    direction = valid_dma_direction(direction)
    size = _check_size(size, "dma_map_phys")
    if isinstance(phys, bool) or not isinstance(phys, (int, np.integer)) or phys < 0:
        raise TypeError(f"dma_map_phys: phys must be a non-negative int, not {phys!r}")
    phys = int(phys)
    if dev.dma_mask is None:
        raise DmaBufError(errno.ENOMEM, f"{dev.name} has no DMA mask (DMA_MAPPING_ERROR)")
    region = dev.phys.region_at(phys)      # the range must be memory: faults otherwise
    if phys + size > region.end:
        raise IommuFault(f"dma_map_phys: [{phys:#x}, {phys + size:#x}) runs past the end of "
                         f"region {region.name!r}", dma_addr=phys)
    if not (attrs & DMA_ATTR_MMIO) and region.kind is MemKind.MMIO:
        dev.warn("dma_map_phys", f"MMIO {phys:#x} mapped without DMA_ATTR_MMIO (cacheable "
                 "mapping of a BAR)")
    if dev.uses_dma_iommu:
        addr = iommu_dma_map_phys(dev, phys, size, direction, attrs)
    elif dev.iommu is not None and dev.iommu.translates:
        raise DmaBufError(errno.ENOMEM, f"{dev.name} is in a {dev.iommu.type.value} domain: the "
                          "DMA API cannot map through it (DMA_MAPPING_ERROR)")
    else:
        addr = dma_direct_map_phys(dev, phys, size, direction, attrs)
        dev.stats["direct_maps"] += 1
    dev.debug_maps.setdefault(addr, []).append((size, int(direction), int(attrs)))
    trace = dev.machine.trace
    if trace.active:
        trace.emit("dma_map_phys", device=dev.name, phys=phys, size=size, dma_addr=addr,
                   dir=direction.name, attrs=attrs)
    return addr


def dma_unmap_phys(dev: DmaDevice, addr: int, size: int, direction: DmaDataDirection,
                   attrs: int = 0) -> None:
    """Undo :func:`dma_map_phys` — ``dma_unmap_phys()``.

    Raises:
        ContractViolation("dma_debug"): ``addr`` is not a live mapping of ``dev``, or the size /
            direction differ from the mapping's (dma-debug's "device driver frees DMA memory
            it has not allocated" / "with different size").

    Kernel: kernel/dma/mapping.c, dma_unmap_phys(); kernel/dma/debug.c, check_unmap().
    """
    direction = valid_dma_direction(direction)
    size = _check_size(size, "dma_unmap_phys")
    entries = dev.debug_maps.get(addr)
    if not entries:
        raise ContractViolation("dma_debug", f"{dev.name}: unmapping DMA address {addr:#x} that "
                                "is not mapped (double unmap or wrong address)")
    live = next((e for e in entries if e[0] == size), None)
    if live is None:
        raise ContractViolation("dma_debug", f"{dev.name}: unmapping {addr:#x} with size "
                                f"{size:#x}, mapped with {entries[0][0]:#x}")
    if live[1] != int(direction):
        raise ContractViolation("dma_debug", f"{dev.name}: unmapping {addr:#x} with direction "
                                f"{direction.name}, mapped with "
                                f"{DmaDataDirection(live[1]).name}")
    entries.remove(live)
    if not entries:
        del dev.debug_maps[addr]
    if dev.uses_dma_iommu:
        iommu_dma_unmap_phys(dev, addr, size)
    trace = dev.machine.trace
    if trace.active:
        trace.emit("dma_unmap_phys", device=dev.name, dma_addr=addr, size=size)


def dma_map_resource(dev: DmaDevice, phys: int, size: int, direction: DmaDataDirection,
                     attrs: int = 0) -> int:
    """``dma_map_resource()`` = ``dma_map_phys(..., attrs | DMA_ATTR_MMIO)``.

    Kernel: kernel/dma/mapping.c, dma_map_resource().
    """
    return dma_map_phys(dev, phys, size, direction, attrs | DMA_ATTR_MMIO)


def dma_unmap_resource(dev: DmaDevice, addr: int, size: int, direction: DmaDataDirection,
                       attrs: int = 0) -> None:
    """``dma_unmap_resource()`` = ``dma_unmap_phys(..., attrs | DMA_ATTR_MMIO)``.

    Kernel: kernel/dma/mapping.c, dma_unmap_resource().
    """
    dma_unmap_phys(dev, addr, size, direction, attrs | DMA_ATTR_MMIO)


def dma_mapping_error(addr: int) -> int:
    """``dma_mapping_error()``: ``-ENOMEM`` for ``DMA_MAPPING_ERROR``, else 0.

    Returns: -ENOMEM (as an int, not raised) for ``DMA_MAPPING_ERROR``, else 0.
    Kernel: include/linux/dma-mapping.h, dma_mapping_error().
    """
    return -errno.ENOMEM if addr == DMA_MAPPING_ERROR else 0


# ---------------------------------------------------------------------------------------------
# masks and limits
# ---------------------------------------------------------------------------------------------


def dma_get_mask(dev: DmaDevice) -> int:
    """``dma_get_mask()``: the streaming mask (32 bits when none was set).

    Kernel: include/linux/dma-mapping.h, dma_get_mask().
    """
    return dev.dma_mask if dev.dma_mask is not None else dma_bit_mask(32)


def _check_mask(mask: Any) -> int:
    if isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask <= dma_bit_mask(64):
        raise TypeError(f"DMA mask must be an int in 0..2^64-1, not {mask!r}")
    return mask


def dma_supported(dev: DmaDevice, mask: int) -> bool:
    """``dma_supported()``: any mask behind a DMA-API IOMMU; >= 24 bits for dma-direct.

    Kernel: kernel/dma/mapping.c, dma_supported().
    """
    if dev.uses_dma_iommu:
        return True
    return dma_direct_supported(dev, mask)


def dma_set_mask(dev: DmaDevice, mask: int) -> None:
    """Set the streaming DMA mask — ``dma_set_mask()``.

    Raises:
        DmaBufError(EIO): the device has no mask pointer or the mask is not supported.

    Kernel: kernel/dma/mapping.c, dma_set_mask().
    """
    mask = _check_mask(mask)
    if dev.dma_mask is None or not dma_supported(dev, mask):
        raise DmaBufError(errno.EIO, f"{dev.name}: DMA mask {mask:#x} is not supported")
    dev.dma_mask = mask


def dma_set_coherent_mask(dev: DmaDevice, mask: int) -> None:
    """Set the coherent DMA mask — ``dma_set_coherent_mask()`` (-EIO if unsupported).

    Raises: DmaBufError(EIO) when :func:`dma_supported` rejects ``mask``.
    Kernel: kernel/dma/mapping.c, dma_set_coherent_mask().
    """
    mask = _check_mask(mask)
    if not dma_supported(dev, mask):
        raise DmaBufError(errno.EIO, f"{dev.name}: coherent DMA mask {mask:#x} is not supported")
    dev.coherent_dma_mask = mask


def dma_set_mask_and_coherent(dev: DmaDevice, mask: int) -> None:
    """``dma_set_mask_and_coherent()``: both masks, -EIO if unsupported.

    Kernel: include/linux/dma-mapping.h, dma_set_mask_and_coherent().
    """
    dma_set_mask(dev, mask)
    dma_set_coherent_mask(dev, mask)


def dma_get_required_mask(dev: DmaDevice) -> int:
    """Mask needed to reach all memory optimally — ``dma_get_required_mask()``.

    Behind a DMA-API IOMMU any memory is reachable with 32-bit IOVAs: ``DMA_BIT_MASK(32)``.

    Kernel: kernel/dma/mapping.c, dma_get_required_mask().
    """
    if dev.uses_dma_iommu:
        return dma_bit_mask(32)
    return dma_direct_get_required_mask(dev)


def dma_addressing_limited(dev: DmaDevice) -> bool:
    """Would some RAM need bouncing for this device — ``dma_addressing_limited()``.

    Kernel: kernel/dma/mapping.c, dma_addressing_limited().
    """
    if dev.effective_mask() < dma_get_required_mask(dev):
        return True
    if dev.uses_dma_iommu:
        return False
    return not dma_direct_all_ram_mapped(dev)


def dma_get_max_seg_size(dev: DmaDevice) -> int:
    """``dma_get_max_seg_size()``.

    Kernel: include/linux/dma-mapping.h, dma_get_max_seg_size().
    """
    return dev.max_seg_size


def dma_get_merge_boundary(dev: DmaDevice) -> int:
    """``dma_get_merge_boundary()``: IOMMU granule - 1, or 0 (no merging) for dma-direct.

    Kernel: kernel/dma/mapping.c, dma_get_merge_boundary().
    """
    if dev.uses_dma_iommu and dev.iommu is not None:
        return dev.iommu.granule - 1
    return 0


# ---------------------------------------------------------------------------------------------
# scatterlist path
# ---------------------------------------------------------------------------------------------


@dataclass
class DmaMapping:
    """Result of :func:`dma_map_phys_ranges` — the DMA side of a mapped ``sg_table``.

    Attributes:
        device: name of the mapping device.
        dma: ``RANGE_DTYPE`` DMA segments (``sg_dma_address`` / ``sg_dma_len``), in order.
        bus_address: per DMA segment, ``SG_DMA_BUS_ADDRESS`` (a P2P bus address: never unmapped,
            bypasses the IOMMU).
        phys: the physical segments that were mapped (the CPU list).
        direction, attrs: as mapped.
        iova: ``(start, size)`` of the IOVA allocation to unmap, or ``None``.
    """

    device: str
    dma: np.ndarray
    bus_address: np.ndarray
    phys: np.ndarray
    direction: DmaDataDirection
    attrs: int
    iova: tuple[int, int] | None = None
    map_types: dict[str, PciP2pdmaMapType] = field(default_factory=dict)

    @property
    def nents(self) -> int:
        """Number of DMA segments (``sgt->nents``)."""
        return int(self.dma.size)


def dma_map_phys_ranges(dev: DmaDevice, ranges: Any, direction: DmaDataDirection,
                        attrs: int = 0) -> DmaMapping:
    """Map a list of physical segments — ``dma_map_sgtable()`` (``dma_map_sg_attrs``).

    Per segment, the P2P state decides (spec p2p §1.4): ``BUS_ADDR`` → bus address, flagged;
    ``THRU_HOST_BRIDGE`` → mapped with ``DMA_ATTR_MMIO``; ``NONE`` → mapped normally; other →
    the whole call fails with ``-EREMOTEIO``. Behind a DMA-API IOMMU all mapped segments share
    one IOVA allocation and contiguous ones merge up to ``max_seg_size``; dma-direct keeps one
    DMA segment per physical segment.

    Args:
        dev: the mapping device.
        ranges: ``RANGE_DTYPE`` physical segments (empty segments are ignored).
        direction: DMA direction.
        attrs: ``DMA_ATTR_*``.

    Context:
        Never sleeps.

    Returns:
        A :class:`DmaMapping`; release it with :func:`dma_unmap_phys_ranges`.

    Raises:
        DmaBufError(EREMOTEIO): a P2P segment the fabric does not support for ``dev``.
        DmaBufError(EINVAL): empty list, a segment crossing a region boundary.
        DmaBufError(EIO): dma-direct and a segment beyond the DMA mask (no swiotlb), or the
            device is in a non-DMA-API translating domain.
        DmaBufError(ENOMEM): IOVA exhausted (``iommu_dma_map_sg``).
        ContractViolation: invalid direction.

    Kernel: kernel/dma/mapping.c, dma_map_sgtable(), __dma_map_sg_attrs();
    kernel/dma/direct.c, dma_direct_map_sg(); drivers/iommu/dma-iommu.c, iommu_dma_map_sg().
    """
    direction = valid_dma_direction(direction)
    r = as_ranges(ranges)
    r = r[r["len"] != 0]
    if r.size == 0:
        raise DmaBufError(errno.EINVAL, "dma_map_sgtable: no segments to map")
    if dev.dma_mask is None:
        raise DmaBufError(errno.ENOMEM, f"{dev.name} has no DMA mask")
    try:
        ridx = dev.phys.region_indices(r)
    except IommuFault as f:
        raise DmaBufError(errno.EINVAL, f"dma_map_sgtable: {f.strerror}") from None
    regions = dev.phys.regions
    n = r.size
    is_bus = np.zeros(n, dtype=bool)
    is_mmio = np.zeros(n, dtype=bool)
    dma = np.zeros(n, dtype=np.uint64)
    map_types: dict[str, PciP2pdmaMapType] = {}
    # P2P classification per MMIO segment (a handful of regions; per-segment only for those).
    mmio_regions = [ri for ri in np.unique(ridx).tolist() if regions[ri].kind is MemKind.MMIO]
    for ri in mmio_regions:
        for k in np.flatnonzero(ridx == ri).tolist():
            a = int(r["addr"][k])
            st = pci_p2pdma_state(dev, a)
            if st.provider is not None:
                map_types[st.provider] = st.map
            if st.map is PciP2pdmaMapType.BUS_ADDR:
                is_bus[k] = True
                dma[k] = pci_p2pdma_bus_addr_map(st, a)
                dev.note_bus_window(st.provider or "", a, st.provider_bus_offset)
            elif st.map in (PciP2pdmaMapType.THRU_HOST_BRIDGE, PciP2pdmaMapType.NONE):
                is_mmio[k] = True
            else:
                raise DmaBufError(errno.EREMOTEIO,
                                  f"dma_map_sgtable: {dev.name} cannot reach P2P memory "
                                  f"{a:#x} of {st.provider} (map type {st.map.name}); use a "
                                  "staging copy in system memory")
    mapped = ~is_bus
    iova: tuple[int, int] | None = None
    if bool(mapped.any()):
        seg = r[mapped]
        seg_attrs_mmio = is_mmio[mapped]
        if dev.uses_dma_iommu:
            prots = np.where(seg_attrs_mmio,
                             dma_info_to_prot(direction, dev.coherent, attrs | DMA_ATTR_MMIO),
                             dma_info_to_prot(direction, dev.coherent, attrs)).astype(np.uint8)
            addrs, start, total = iommu_dma_map_ranges(dev, seg, prots)
            dma[mapped] = addrs.astype(np.uint64)
            iova = (start, total)
        elif dev.iommu is not None and dev.iommu.translates:
            raise DmaBufError(errno.EIO, f"{dev.name} is in a {dev.iommu.type.value} domain: "
                              "the DMA API cannot map through it")
        else:
            last = seg["addr"] + seg["len"] - np.uint64(1)
            bad = last > np.uint64(dev.effective_mask())
            if bool(bad.any()):
                k = int(np.argmax(bad))
                a, ln = int(seg["addr"][k]), int(seg["len"][k])
                assert not dma_capable(dev, a, ln, True)
                raise DmaBufError(errno.EIO, f"{dev.name}: segment {a:#x}+{ln:#x} is beyond "
                                  f"the DMA mask {dev.effective_mask():#x} (no swiotlb in the "
                                  "model; dma_direct_map_sg returns -EIO)")
            dma[mapped] = seg["addr"]
            dev.stats["direct_maps"] += int(seg.size)
    dev.stats["bus_addr_maps"] += int(is_bus.sum())
    out = np.empty(n, dtype=RANGE_DTYPE)
    out["addr"] = dma
    out["len"] = r["len"]
    if dev.uses_dma_iommu and bool(mapped.any()):
        dma_out, bus_out = _merge_iommu_segments(out, is_bus, dev.max_seg_size)
    else:
        dma_out, bus_out = out, is_bus
    m = DmaMapping(dev.name, dma_out, bus_out, r.copy(), direction, int(attrs), iova, map_types)
    dev.debug_range_maps[id(m)] = m
    trace = dev.machine.trace
    if trace.active:
        trace.emit("dma_map_sg", device=dev.name, nents=m.nents, orig_nents=int(n),
                   bus=int(is_bus.sum()), iova=iova)
    return m


def _merge_iommu_segments(out: np.ndarray, is_bus: np.ndarray,
                          max_seg: int) -> tuple[np.ndarray, np.ndarray]:
    """``__finalise_sg``: merge IOVA-contiguous mapped segments up to ``max_seg`` bytes."""
    pieces: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    bounds = np.flatnonzero(np.diff(is_bus.astype(np.int8))) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [out.size]))
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        run = out[s:e]
        if bool(is_bus[s]):
            pieces.append(run)
            flags.append(np.ones(run.size, dtype=bool))
        else:
            merged = coalesce(run, max_len=max_seg) if run.size > 1 else run
            pieces.append(merged)
            flags.append(np.zeros(merged.size, dtype=bool))
    return np.concatenate(pieces), np.concatenate(flags)


def dma_unmap_phys_ranges(dev: DmaDevice, mapping: DmaMapping) -> None:
    """Undo :func:`dma_map_phys_ranges` — ``dma_unmap_sgtable()``.

    Bus-address segments need nothing; the IOVA range (if any) is unmapped and freed (queued in
    a lazy domain).

    Raises:
        ContractViolation("dma_debug"): the mapping is not live on ``dev`` (double unmap, or
            another device's mapping).

    Kernel: kernel/dma/mapping.c, dma_unmap_sg_attrs(); drivers/iommu/dma-iommu.c,
    iommu_dma_unmap_sg().
    """
    if not isinstance(mapping, DmaMapping):
        raise TypeError("dma_unmap_phys_ranges takes the DmaMapping dma_map_phys_ranges returned")
    if dev.debug_range_maps.get(id(mapping)) is not mapping:
        raise ContractViolation("dma_debug", f"{dev.name}: unmapping a scatterlist mapping that "
                                "is not live on this device (double unmap?)")
    del dev.debug_range_maps[id(mapping)]
    if mapping.iova is not None:
        iommu_dma_unmap_range(dev, mapping.iova[0], mapping.iova[1])
    trace = dev.machine.trace
    if trace.active:
        trace.emit("dma_unmap_sg", device=dev.name, nents=mapping.nents)
