"""dma-direct: DMA without an IOMMU translation — kernel/dma/direct.c, direct.h.

When a device has no IOMMU domain (or an identity/passthrough one) the DMA address is the physical
address (the model has no ``dma_range_map`` offsets: ``phys_to_dma()`` is the identity). What the
kernel still checks is *reachability*: ``dma_capable()`` compares the last byte with
``min_not_zero(dma_mask, bus_dma_limit)``.

``DMA_ATTR_MMIO`` (a PCI BAR reached through the host bridge, ``THRU_HOST_BRIDGE``) maps to the CPU
physical address with no swiotlb and no cache maintenance. RAM that the device cannot reach would
be bounced through swiotlb in the kernel; the model has no swiotlb, so that mapping fails
(``-ENOMEM`` via ``dma_mapping_error``) with a message saying so — a deliberate difference.

Kernel: kernel/dma/direct.c (dma_direct_map_phys() in direct.h, dma_direct_get_required_mask(),
dma_direct_supported(), dma_direct_all_ram_mapped()), include/linux/dma-direct.h (dma_capable()).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from dmabuf.dma.defs import DMA_ATTR_MMIO, DmaDataDirection, dma_bit_mask
from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import MemKind

if TYPE_CHECKING:
    from dmabuf.dma.device import DmaDevice

__all__ = [
    "dma_capable",
    "dma_direct_all_ram_mapped",
    "dma_direct_get_required_mask",
    "dma_direct_map_phys",
    "dma_direct_supported",
]

#: x86 ZONE_DMA limit: the smallest mask dma-direct accepts (``dma_direct_supported``).
_ZONE_DMA_BITS = 24


def dma_capable(dev: DmaDevice, addr: int, size: int, is_ram: bool = True) -> bool:
    """Can ``dev`` reach ``[addr, addr + size)`` without translation — ``dma_capable()``.

    Kernel: include/linux/dma-direct.h, dma_capable().
    """
    if size <= 0:
        return False
    end = addr + size - 1
    limit = dev.effective_mask()
    return end <= limit and end >= addr


def dma_direct_map_phys(dev: DmaDevice, phys: int, size: int, direction: DmaDataDirection,
                        attrs: int) -> int:
    """Map without an IOMMU — ``dma_direct_map_phys()``.

    Args:
        dev: the mapping device (dma-direct).
        phys: CPU physical address.
        size: bytes (> 0).
        direction: checked by the caller.
        attrs: ``DMA_ATTR_*``; ``DMA_ATTR_MMIO`` skips phys_to_dma and swiotlb.

    Context:
        Never blocks.

    Returns:
        The DMA address (= ``phys``).

    Raises:
        DmaBufError(ENOMEM): the device cannot reach the range (``DMA_MAPPING_ERROR``; for RAM
            the kernel would bounce through swiotlb, which the model does not have).

    Kernel: kernel/dma/direct.h, dma_direct_map_phys().
    """
    dma_addr = phys
    if attrs & DMA_ATTR_MMIO:
        if not dma_capable(dev, dma_addr, size, False):
            dev.warn("dma_direct_map_phys", f"MMIO [{phys:#x}+{size:#x}] is beyond the DMA mask "
                     f"{dev.effective_mask():#x}")
            raise DmaBufError(errno.ENOMEM, f"{dev.name}: MMIO address {phys:#x}+{size:#x} is "
                              f"beyond the device DMA mask {dev.effective_mask():#x} "
                              "(DMA_MAPPING_ERROR)")
        return dma_addr
    if not dma_capable(dev, dma_addr, size, True):
        raise DmaBufError(errno.ENOMEM, f"{dev.name}: {phys:#x}+{size:#x} is beyond the device "
                          f"DMA mask {dev.effective_mask():#x}; the kernel would bounce it through "
                          "swiotlb, which the model does not implement: raise the mask with "
                          "dma_set_mask_and_coherent() or put the device behind an IOMMU")
    return dma_addr


def dma_direct_get_required_mask(dev: DmaDevice) -> int:
    """Smallest mask covering all system RAM — ``dma_direct_get_required_mask()``.

    Kernel: kernel/dma/direct.c, dma_direct_get_required_mask().
    """
    top = max((r.end for r in dev.phys.regions if r.kind is MemKind.RAM), default=0)
    if top == 0:
        return dma_bit_mask(32)
    max_dma = top - 1
    return (1 << max_dma.bit_length()) - 1


def dma_direct_supported(dev: DmaDevice, mask: int) -> bool:
    """Is ``mask`` usable without an IOMMU — ``dma_direct_supported()`` (x86: >= 24 bits).

    Kernel: kernel/dma/direct.c, dma_direct_supported().
    """
    if mask >= dma_bit_mask(32):
        return True
    return mask >= dma_bit_mask(_ZONE_DMA_BITS)


def dma_direct_all_ram_mapped(dev: DmaDevice) -> bool:
    """Every RAM region is reachable — ``dma_direct_all_ram_mapped()``.

    Kernel: kernel/dma/direct.c, dma_direct_all_ram_mapped().
    """
    return all(dma_capable(dev, r.base, r.size, True)
               for r in dev.phys.regions if r.kind is MemKind.RAM)
