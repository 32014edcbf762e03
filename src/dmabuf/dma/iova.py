"""The IOVA allocator — drivers/iommu/iova.c.

Each DMA-API IOMMU domain owns one :class:`IovaDomain`: the set of I/O virtual address ranges in
use, kept in pfn units of the domain's granule (4 KiB here). The kernel stores them in an rbtree
and allocates **top-down**: ``__alloc_and_insert_iova_range`` starts at the allocation limit (or
at the cached node — the last allocation — so sequential allocations are O(1)) and walks towards
lower addresses until an aligned hole fits. ``alloc_iova_fast`` first rounds sizes below
``1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)`` = 32 granules up to a power of two (so they can go back
to the per-CPU range caches) and asks for a **size-aligned** range: the start pfn is a multiple of
``roundup_pow_of_two(size)``.

The model keeps the same algorithm over two Python lists sorted by descending start pfn (the
rbtree walked with ``rb_prev``): sequential top-down allocations append at the end and the walk
starts at the cached node, like the kernel's ``cached_node`` / ``cached32_node``;
``max32_alloc_size`` short-cuts repeated failures below 4 GiB. Not modelled: the per-CPU range
caches (``iova_rcache``); freed ranges go straight back to the tree, which changes which address
a later allocation gets but not whether it succeeds.

Complexity: allocation next to the cached node and freeing the most recent allocations are
O(log n); inserting or deleting in the middle of the node list costs a memmove of the list
(microseconds for thousands of live ranges, ~0.1 ms at 10^5+) where the kernel's rbtree is
O(log n) — a deliberate simplification.

Locking: one internal lock (``iova_rbtree_lock``), held only inside a call.

Kernel: drivers/iommu/iova.c (alloc_iova(), alloc_iova_fast(), __alloc_and_insert_iova_range(),
free_iova(), reserve_iova(), find_iova()), include/linux/iova.h.
"""

from __future__ import annotations

import bisect
import errno
import threading
from dataclasses import dataclass

from dmabuf.errors import ContractViolation, DmaBufError

__all__ = ["IOVA_RANGE_CACHE_MAX_SIZE", "Iova", "IovaDomain"]

#: log2 of the largest cached IOVA range size, in granules (drivers/iommu/iova.c).
IOVA_RANGE_CACHE_MAX_SIZE = 6


@dataclass(frozen=True)
class Iova:
    """One allocated range, inclusive pfns — ``struct iova``."""

    pfn_lo: int
    pfn_hi: int
    reserved: bool = False

    @property
    def size(self) -> int:
        """Number of granules."""
        return self.pfn_hi - self.pfn_lo + 1


def _roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


class IovaDomain:
    """An IOVA space — ``struct iova_domain``.

    Args:
        granule: bytes per IOVA page (a power of two, at most PAGE_SIZE: 4096 here).
        start_pfn: lowest allocatable pfn (the kernel uses ``max(1, base >> shift)``, so IOVA 0
            is never handed out).

    Kernel: drivers/iommu/iova.c, init_iova_domain().
    """

    def __init__(self, granule: int = 4096, start_pfn: int = 1) -> None:
        if granule <= 0 or granule & (granule - 1) or granule > 4096:
            raise DmaBufError(errno.EINVAL, f"IOVA granule {granule} must be a power of two "
                              "<= PAGE_SIZE")
        if start_pfn < 1:
            raise DmaBufError(errno.EINVAL, "start_pfn must be >= 1 (IOVA 0 is never valid)")
        self.granule = granule
        self.shift = granule.bit_length() - 1
        self.start_pfn = start_pfn
        self.dma_32bit_pfn = 1 << (32 - self.shift)
        self.max32_alloc_size = self.dma_32bit_pfn
        # Nodes sorted by DEScending pfn_lo: _neg_lo ascending holds -pfn_lo.
        self._neg_lo: list[int] = []
        self._hi: list[int] = []
        self._reserved: list[bool] = []
        # Cached nodes, by pfn_lo (None: the anchor above everything).
        self._cached: int | None = None
        self._cached32: int | None = None
        self._lock = threading.Lock()
        self.allocs = 0
        self.frees = 0

    # -------------------------------------------------------------- helpers
    def iova_offset(self, addr: int) -> int:
        """``iova_offset()``: the offset of ``addr`` inside its granule.

        Kernel: include/linux/iova.h, iova_offset().
        """
        return addr & (self.granule - 1)

    def iova_align(self, size: int) -> int:
        """``iova_align()``: ``size`` rounded up to the granule.

        Kernel: include/linux/iova.h, iova_align().
        """
        return (size + self.granule - 1) & ~(self.granule - 1)

    def iova_pfn(self, addr: int) -> int:
        """``iova_pfn()``: the pfn of an IOVA.

        Kernel: include/linux/iova.h, iova_pfn().
        """
        return addr >> self.shift

    def __len__(self) -> int:
        return len(self._hi)

    def _index_of_lo(self, pfn_lo: int) -> int:
        i = bisect.bisect_left(self._neg_lo, -pfn_lo)
        if i < len(self._neg_lo) and self._neg_lo[i] == -pfn_lo:
            return i
        return -1

    def _first_at_or_below(self, pfn: int) -> int:
        """Index of the highest node whose pfn_lo <= pfn (len() if none)."""
        return bisect.bisect_left(self._neg_lo, -pfn)

    # -------------------------------------------------------------- allocation
    def alloc_iova(self, size: int, limit_pfn: int, size_aligned: bool = True) -> Iova | None:
        """Allocate ``size`` granules ending at or below ``limit_pfn`` — ``alloc_iova()``.

        Args:
            size: granules (> 0).
            limit_pfn: highest pfn the range may use (inclusive).
            size_aligned: align the start to ``roundup_pow_of_two(size)`` granules.

        Context:
            Takes the domain lock; never blocks.

        Returns:
            The new :class:`Iova`, or ``None`` when no hole fits (the kernel returns NULL).

        Kernel: drivers/iommu/iova.c, alloc_iova(), __alloc_and_insert_iova_range().
        """
        if size <= 0:
            raise DmaBufError(errno.EINVAL, f"alloc_iova: size {size} must be positive")
        with self._lock:
            return self._alloc_locked(size, limit_pfn + 1, size_aligned)

    def alloc_iova_fast(self, size: int, limit_pfn: int, flush_rcache: bool = True) -> int:
        """Allocate with the range-cache size rounding — ``alloc_iova_fast()``.

        Sizes below ``2**(IOVA_RANGE_CACHE_MAX_SIZE - 1)`` granules are rounded up to a power of
        two; the allocation is size-aligned.

        Returns:
            The start pfn, or 0 when the space is exhausted (the kernel's convention).

        Kernel: drivers/iommu/iova.c, alloc_iova_fast().
        """
        if size < (1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)):
            size = _roundup_pow_of_two(size)
        iova = self.alloc_iova(size, limit_pfn, True)
        return 0 if iova is None else iova.pfn_lo

    def _alloc_locked(self, size: int, limit: int, size_aligned: bool) -> Iova | None:
        # limit is exclusive here, as in the kernel after "limit_pfn + 1".
        align_mask = ~0
        if size_aligned:
            align_mask = ~((1 << (size - 1).bit_length()) - 1)
        is32 = limit <= self.dma_32bit_pfn
        if is32 and size >= self.max32_alloc_size:
            return None
        cached = self._cached32 if is32 else self._cached
        nodes_lo = self._neg_lo
        nodes_hi = self._hi
        n = len(nodes_lo)

        def walk(start_idx: int, high: int, low: int) -> int | None:
            # start_idx: the node to begin from ("curr"); n means none below; -1 the anchor.
            curr = start_idx
            while True:
                if curr >= 0 and curr < n:
                    high = min(high, -nodes_lo[curr])
                new = (high - size) & align_mask
                curr += 1
                if curr < n and new <= nodes_hi[curr] and new >= low:
                    continue
                break
            if high < size or new < low:
                return None
            return new

        if cached is None:
            start = -1
        else:
            start = self._index_of_lo(cached)
            if start < 0:
                start = -1
        # Nodes above the limit must not be considered: begin at the first node below it.
        first_below = self._first_at_or_below(limit - 1) - 1
        if start < first_below:
            start = first_below
        retry_pfn = (nodes_hi[start] + 1) if 0 <= start < n else limit
        new = walk(start, limit, self.start_pfn)
        if new is None and retry_pfn < limit:
            # Retry the part above the cached node (drivers/iommu/iova.c "retry").
            new = walk(first_below, limit, retry_pfn)
        if new is None:
            if is32:
                self.max32_alloc_size = size
            return None
        hi = new + size - 1
        i = bisect.bisect_left(nodes_lo, -new)
        nodes_lo.insert(i, -new)
        nodes_hi.insert(i, hi)
        self._reserved.insert(i, False)
        if is32:
            self._cached32 = new
        else:
            self._cached = new
        self.allocs += 1
        return Iova(new, hi)

    # -------------------------------------------------------------- lookup / free
    def find_iova(self, pfn: int) -> Iova | None:
        """The allocated range containing ``pfn`` — ``find_iova()``.

        Kernel: drivers/iommu/iova.c, find_iova().
        """
        with self._lock:
            i = self._first_at_or_below(pfn)
            if i < len(self._hi) and self._hi[i] >= pfn:
                return Iova(-self._neg_lo[i], self._hi[i], self._reserved[i])
            return None

    def free_iova(self, pfn: int) -> Iova:
        """Free the allocation containing ``pfn`` — ``free_iova()`` / ``free_iova_fast()``.

        Context:
            Takes the domain lock; never blocks.

        Returns:
            The freed :class:`Iova`.

        Raises:
            ContractViolation("free_iova"): no allocation contains ``pfn``, or it is reserved.

        Kernel: drivers/iommu/iova.c, free_iova(), __cached_rbnode_delete_update().
        """
        with self._lock:
            i = self._first_at_or_below(pfn)
            if not (i < len(self._hi) and self._hi[i] >= pfn):
                raise ContractViolation("free_iova", f"IOVA pfn {pfn:#x} is not allocated "
                                        "(double free, or an address this domain never gave out)")
            if self._reserved[i]:
                raise ContractViolation("free_iova", f"IOVA pfn {pfn:#x} is a reserved region")
            lo, hi = -self._neg_lo[i], self._hi[i]
            # __cached_rbnode_delete_update: move a cached node above the freed one to rb_next.
            above = -self._neg_lo[i - 1] if i > 0 else None
            if self._cached is not None and lo >= self._cached:
                self._cached = above
            if self._cached32 is not None and (
                    lo == self._cached32 or (hi < self.dma_32bit_pfn and lo >= self._cached32)):
                self._cached32 = above
            if hi < self.dma_32bit_pfn:
                self.max32_alloc_size = self.dma_32bit_pfn
            del self._neg_lo[i]
            del self._hi[i]
            del self._reserved[i]
            self.frees += 1
            return Iova(lo, hi)

    def reserve_iova(self, pfn_lo: int, pfn_hi: int) -> None:
        """Mark ``[pfn_lo, pfn_hi]`` as never allocatable — ``reserve_iova()``.

        Overlapping reservations are merged; reserving over a live allocation is refused.

        Raises:
            DmaBufError(EINVAL): empty range. DmaBufError(EBUSY): overlaps an allocation.

        Kernel: drivers/iommu/iova.c, reserve_iova().
        """
        if pfn_hi < pfn_lo:
            raise DmaBufError(errno.EINVAL, "reserve_iova: pfn_hi < pfn_lo")
        with self._lock:
            lo, hi = pfn_lo, pfn_hi
            i = self._first_at_or_below(hi)
            # collect overlapping or adjacent reserved nodes
            while i < len(self._hi) and self._hi[i] >= lo - 1:
                nlo, nhi = -self._neg_lo[i], self._hi[i]
                if not self._reserved[i]:
                    if nhi >= lo and nlo <= hi:
                        raise DmaBufError(errno.EBUSY, f"reserve_iova [{lo:#x}, {hi:#x}] "
                                          f"overlaps allocation [{nlo:#x}, {nhi:#x}]")
                    i += 1
                    continue
                lo, hi = min(lo, nlo), max(hi, nhi)
                del self._neg_lo[i]
                del self._hi[i]
                del self._reserved[i]
            j = bisect.bisect_left(self._neg_lo, -lo)
            self._neg_lo.insert(j, -lo)
            self._hi.insert(j, hi)
            self._reserved.insert(j, True)
            self._cached = None
            self._cached32 = None

    def ranges(self) -> list[Iova]:
        """Every node (allocations and reservations), ascending — for tests and describe().

        Model-only: a dump of the rbtree for tests and describe().
        """
        with self._lock:
            return [Iova(-a, b, r) for a, b, r in
                    zip(reversed(self._neg_lo), reversed(self._hi), reversed(self._reserved),
                        strict=True)]

    def allocated_granules(self) -> int:
        """Granules in live (non-reserved) allocations.

        Model-only: allocator statistics for describe(); the kernel does not count them.
        """
        with self._lock:
            return sum(h + a + 1 for a, h, r in zip(self._neg_lo, self._hi, self._reserved,
                                                    strict=True) if not r)
