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

# Process address spaces, MMU notifiers, HMM, ZONE_DEVICE pages, migration, GUP (issue #6).
from dmabuf.mm.gup import FOLL_LONGTERM as FOLL_LONGTERM
from dmabuf.mm.gup import FOLL_PCI_P2PDMA as FOLL_PCI_P2PDMA
from dmabuf.mm.gup import FOLL_WRITE as FOLL_WRITE
from dmabuf.mm.gup import GupPages as GupPages
from dmabuf.mm.gup import get_user_pages as get_user_pages
from dmabuf.mm.gup import pin_user_pages as pin_user_pages
from dmabuf.mm.gup import pin_user_pages_fast as pin_user_pages_fast
from dmabuf.mm.gup import unpin_user_pages as unpin_user_pages
from dmabuf.mm.hmm import HMM_PFN_ERROR as HMM_PFN_ERROR
from dmabuf.mm.hmm import HMM_PFN_REQ_FAULT as HMM_PFN_REQ_FAULT
from dmabuf.mm.hmm import HMM_PFN_REQ_WRITE as HMM_PFN_REQ_WRITE
from dmabuf.mm.hmm import HMM_PFN_VALID as HMM_PFN_VALID
from dmabuf.mm.hmm import HMM_PFN_WRITE as HMM_PFN_WRITE
from dmabuf.mm.hmm import HmmRange as HmmRange
from dmabuf.mm.hmm import hmm_pfn_to_phys as hmm_pfn_to_phys
from dmabuf.mm.hmm import hmm_range_fault as hmm_range_fault
from dmabuf.mm.memremap import DevPagemap as DevPagemap
from dmabuf.mm.memremap import DevPagemapOps as DevPagemapOps
from dmabuf.mm.memremap import MemoryType as MemoryType
from dmabuf.mm.memremap import memremap_pages as memremap_pages
from dmabuf.mm.memremap import memunmap_pages as memunmap_pages
from dmabuf.mm.migrate import MigrateVma as MigrateVma
from dmabuf.mm.migrate import migrate_vma_finalize as migrate_vma_finalize
from dmabuf.mm.migrate import migrate_vma_pages as migrate_vma_pages
from dmabuf.mm.migrate import migrate_vma_setup as migrate_vma_setup
from dmabuf.mm.mmu_notifier import MmuIntervalNotifier as MmuIntervalNotifier
from dmabuf.mm.mmu_notifier import MmuNotifierRange as MmuNotifierRange
from dmabuf.mm.mmu_notifier import MmuNotifyEvent as MmuNotifyEvent
from dmabuf.mm.mmu_notifier import mmu_interval_notifier_insert as mmu_interval_notifier_insert
from dmabuf.mm.mmu_notifier import mmu_interval_notifier_remove as mmu_interval_notifier_remove
from dmabuf.mm.mmu_notifier import mmu_interval_read_begin as mmu_interval_read_begin
from dmabuf.mm.mmu_notifier import mmu_interval_read_retry as mmu_interval_read_retry
from dmabuf.mm.mmu_notifier import mmu_interval_set_seq as mmu_interval_set_seq
from dmabuf.mm.vma import MmStruct as MmStruct
from dmabuf.mm.vma import Vma as Vma
from dmabuf.mm.vma import VmFault as VmFault
from dmabuf.mm.vma import VmOperations as VmOperations
