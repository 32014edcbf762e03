"""DMA API vocabulary — include/linux/dma-direction.h and constants of include/linux/dma-mapping.h.

The direction enum, the ``DMA_ATTR_*`` bits and ``DMA_MAPPING_ERROR`` shared by every module of
:mod:`dmabuf.dma`. Values are the kernel's, so a trace or a real-kernel comparison reads the same.

Kernel: include/linux/dma-direction.h (enum dma_data_direction, valid_dma_direction()),
include/linux/dma-mapping.h (DMA_ATTR_*, DMA_MAPPING_ERROR, DMA_BIT_MASK()).
"""

from __future__ import annotations

from dmabuf.buf.device import DmaDataDirection as _BufDmaDataDirection
from dmabuf.errors import ContractViolation

__all__ = [
    "DMA_ATTR_ALLOC_SINGLE_PAGES",
    "DMA_ATTR_FORCE_CONTIGUOUS",
    "DMA_ATTR_MMIO",
    "DMA_ATTR_NO_KERNEL_MAPPING",
    "DMA_ATTR_NO_WARN",
    "DMA_ATTR_PRIVILEGED",
    "DMA_ATTR_SKIP_CPU_SYNC",
    "DMA_ATTR_WEAK_ORDERING",
    "DMA_ATTR_WRITE_COMBINE",
    "DMA_MAPPING_ERROR",
    "DmaDataDirection",
    "dma_bit_mask",
    "valid_dma_direction",
]


# One enum for the whole model: the buffer layer (layer 3) owns it, with both the kernel's
# spellings (DMA_TO_DEVICE) and the short ones (TO_DEVICE) as names of the same members.
DmaDataDirection = _BufDmaDataDirection


DMA_ATTR_WEAK_ORDERING = 1 << 1
DMA_ATTR_WRITE_COMBINE = 1 << 2
DMA_ATTR_NO_KERNEL_MAPPING = 1 << 4
DMA_ATTR_SKIP_CPU_SYNC = 1 << 5
DMA_ATTR_FORCE_CONTIGUOUS = 1 << 6
DMA_ATTR_ALLOC_SINGLE_PAGES = 1 << 7
DMA_ATTR_NO_WARN = 1 << 8
DMA_ATTR_PRIVILEGED = 1 << 9
#: The physical address is MMIO (a PCI BAR): no CPU cache maintenance, no swiotlb, IOMMU_MMIO.
DMA_ATTR_MMIO = 1 << 10

#: ``(dma_addr_t)~0`` — what the mapping functions return on failure in the kernel. The model
#: raises instead (see :mod:`dmabuf.dma.mapping`); the constant exists for comparisons.
DMA_MAPPING_ERROR = (1 << 64) - 1


def dma_bit_mask(n: int) -> int:
    """``DMA_BIT_MASK(n)``: the mask of an ``n``-bit DMA address (n = 64 gives all ones).

    Kernel: include/linux/dma-mapping.h, DMA_BIT_MASK().
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 64:
        raise ValueError(f"DMA_BIT_MASK({n!r}): n must be an int in 0..64")
    return (1 << n) - 1


def valid_dma_direction(direction: object) -> DmaDataDirection:
    """Check a mapping direction — ``BUG_ON(!valid_dma_direction(dir))``.

    Returns:
        The direction as a :class:`DmaDataDirection`.

    Raises:
        ContractViolation("valid_dma_direction"): ``DMA_NONE`` or not a direction at all (the
            kernel BUGs).

    Kernel: include/linux/dma-direction.h, valid_dma_direction().
    """
    try:
        d = DmaDataDirection(direction)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ContractViolation("valid_dma_direction",
                                f"{direction!r} is not a DMA direction") from None
    if d is DmaDataDirection.DMA_NONE or isinstance(direction, bool):
        raise ContractViolation("valid_dma_direction",
                                "DMA_NONE is not a valid direction for a mapping")
    return d
