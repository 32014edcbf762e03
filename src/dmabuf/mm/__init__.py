"""Layer 2 — memory: physical regions with real backing, the page allocator, ownership, ranges.

``dmabuf.mm`` models what the DMA-BUF world needs from the kernel's mm: a physical address space
of regions (system RAM, device memory, PCI BAR apertures) backed by sparse anonymous mmaps
(:mod:`dmabuf.mm.phys`), page ownership with poisoning on free, and range lists — numpy structured
arrays of ``(addr, len)``, 16 bytes per range, the model's ``phys_vec[]`` (:mod:`dmabuf.mm.ranges`).

Kernel: mm/page_alloc.c, mm/memblock.c, include/linux/mm_types.h, include/linux/types.h.
"""

from __future__ import annotations

from dmabuf.mm.phys import (
    OWNER_FREE,
    OWNER_POISON,
    PAGE_SHIFT,
    PAGE_SIZE,
    POISON_FREE,
    MemKind,
    PhysMemory,
    PhysRegion,
)
from dmabuf.mm.ranges import (
    RANGE_DTYPE,
    as_ranges,
    coalesce,
    empty_ranges,
    make_ranges,
    range_starts,
    ranges_aligned,
    slice_ranges,
    split_ranges,
    total_len,
)

__all__ = [
    "OWNER_FREE",
    "OWNER_POISON",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "POISON_FREE",
    "RANGE_DTYPE",
    "MemKind",
    "PhysMemory",
    "PhysRegion",
    "as_ranges",
    "coalesce",
    "empty_ranges",
    "make_ranges",
    "range_starts",
    "ranges_aligned",
    "slice_ranges",
    "split_ranges",
    "total_len",
]
