"""Migrating a VMA range to and from device memory — mm/migrate_device.c, include/linux/migrate.h.

An SVM driver moves anonymous pages into its device-private memory (and back when the CPU touches
them) in three steps, exactly as in the kernel:

1. :func:`migrate_vma_setup` — under an ``MMU_NOTIFY_MIGRATE`` invalidation (``range.owner`` =
   ``pgmap_owner``, so the driver can ignore its own invalidation), collect the pages of
   ``[start, end)``: holes and the zero page of anonymous VMAs (with
   ``MIGRATE_VMA_SELECT_SYSTEM``), system RAM pages (``SELECT_SYSTEM``), device-private pages of
   the caller (``SELECT_DEVICE_PRIVATE`` and ``pgmap.owner == pgmap_owner``). Each collected page
   is unmapped — its PTE becomes a **migration entry** (CPU faults, GUP and HMM on it wait) — and
   ``src[i] = migrate_pfn(pfn) | MIGRATE_PFN_MIGRATE [| MIGRATE_PFN_WRITE]`` (holes:
   ``MIGRATE_PFN_MIGRATE`` alone). Pinned pages (FOLL_PIN) are not migrated.
2. the driver allocates destination pages (device pages after
   :meth:`~dmabuf.mm.memremap.DevPagemap.page_init`, or RAM pages from :func:`alloc_page_vma`),
   copies the data (its DMA engine) and sets ``dst[i] = migrate_pfn(new) [| MIGRATE_PFN_WRITE]``;
   :func:`migrate_vma_pages` then commits: holes get the new page inserted (under another
   ``MMU_NOTIFY_MIGRATE`` invalidation); entries without a valid destination, file pages going to
   device memory, or pages that changed meanwhile lose ``MIGRATE_PFN_MIGRATE``;
3. :func:`migrate_vma_finalize` — every migration entry is replaced by the new page (a
   device-private entry, writable if the old PTE was) or restored to the old one; the loser of
   each pair is released: RAM pages freed (and poisoned), device pages' references dropped
   (``folio_free`` returns them to the driver). Threads waiting on migration entries are woken.

Arrays are numpy ``uint64`` (``src``, ``dst``), one entry per page; the encoding is the kernel's
(``pfn << MIGRATE_PFN_SHIFT | flags``). The caller holds ``mmap_lock`` for reading throughout.

Model choices: reference accounting of ZONE_DEVICE pages is simplified to "a mapping holds one
reference" (the driver's ``page_init`` reference becomes the mapping's on success, and is dropped
on failure); RAM destination pages change owner to the mm's anonymous owner in
``migrate_vma_pages`` (``folio_migrate_mapping``), so the driver may allocate them with any owner;
``migrate_device_range()`` (eviction without a VMA) is not modelled.

Kernel: mm/migrate_device.c (migrate_vma_setup, migrate_vma_collect_pmd, migrate_vma_unmap,
migrate_vma_pages, migrate_vma_insert_page, migrate_vma_finalize), include/linux/migrate.h
(MIGRATE_PFN_*, MIGRATE_VMA_SELECT_*, struct migrate_vma, migrate_pfn()).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.memremap import MemoryType, page_ranges
from dmabuf.mm.mmu_notifier import (
    MmuNotifierRange,
    MmuNotifyEvent,
    mmu_notifier_invalidate_range_end,
    mmu_notifier_invalidate_range_start,
)
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.vma import (
    PTE_ANON,
    PTE_DEVICE_PRIVATE,
    PTE_DEVMAP,
    PTE_MIGRATION,
    PTE_PRESENT,
    PTE_WRITE,
    PTE_ZERO,
    VM_SPECIAL,
    VM_WRITE,
    Vma,
    vma_is_anonymous,
)

__all__ = [
    "MIGRATE_PFN_MIGRATE",
    "MIGRATE_PFN_SHIFT",
    "MIGRATE_PFN_VALID",
    "MIGRATE_PFN_WRITE",
    "MIGRATE_VMA_SELECT_DEVICE_COHERENT",
    "MIGRATE_VMA_SELECT_DEVICE_PRIVATE",
    "MIGRATE_VMA_SELECT_SYSTEM",
    "MigrateVma",
    "alloc_page_vma",
    "migrate_pfn",
    "migrate_pfn_to_paddr",
    "migrate_vma_finalize",
    "migrate_vma_pages",
    "migrate_vma_setup",
]

MIGRATE_PFN_VALID = 1 << 0
MIGRATE_PFN_MIGRATE = 1 << 1
MIGRATE_PFN_WRITE = 1 << 3
MIGRATE_PFN_SHIFT = 6

MIGRATE_VMA_SELECT_SYSTEM = 1 << 0
MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 1 << 1
MIGRATE_VMA_SELECT_DEVICE_COHERENT = 1 << 2

_SHIFT = np.uint64(MIGRATE_PFN_SHIFT)
_PSHIFT = np.uint64(PAGE_SHIFT)
_MIG = np.uint64(MIGRATE_PFN_MIGRATE)
_VALID = np.uint64(MIGRATE_PFN_VALID)
_WRITE = np.uint64(MIGRATE_PFN_WRITE)


def migrate_pfn(pfn: Any) -> Any:
    """``migrate_pfn(pfn)`` = ``pfn << MIGRATE_PFN_SHIFT | MIGRATE_PFN_VALID`` (int or array).

    Kernel: include/linux/migrate.h, migrate_pfn().
    """
    if isinstance(pfn, np.ndarray):
        return (pfn.astype(np.uint64) << _SHIFT) | _VALID
    return (int(pfn) << MIGRATE_PFN_SHIFT) | MIGRATE_PFN_VALID


def migrate_pfn_to_paddr(mpfn: Any) -> Any:
    """Physical address of a migrate pfn (``migrate_pfn_to_page``), 0 when not VALID.

    Kernel: include/linux/migrate.h, migrate_pfn_to_page().
    """
    if isinstance(mpfn, np.ndarray):
        m = mpfn.astype(np.uint64)
        return np.where((m & _VALID) != 0, (m >> _SHIFT) << _PSHIFT, np.uint64(0))
    v = int(mpfn)
    return (v >> MIGRATE_PFN_SHIFT) << PAGE_SHIFT if v & MIGRATE_PFN_VALID else 0


@dataclass
class MigrateVma:
    """Arguments and state of one migration — ``struct migrate_vma``.

    Args:
        vma: the VMA (anonymous).
        start, end: page-aligned ``[start, end)`` inside the VMA.
        pgmap_owner: owner cookie (selects device-private pages; tags the invalidation).
        flags: ``MIGRATE_VMA_SELECT_*``.
        fault_page: physical address of the device-private page whose CPU fault triggered this
            migration (``migrate_to_ram``), or None.

    Attributes (filled by the calls):
        src, dst: ``uint64`` arrays of migrate pfns, one per page.
        cpages: pages collected by setup.
        npages: pages in the range.
    """

    vma: Vma
    start: int
    end: int
    pgmap_owner: Any = None
    flags: int = MIGRATE_VMA_SELECT_SYSTEM
    fault_page: int | None = None
    src: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    dst: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    cpages: int = 0
    npages: int = 0
    _orig: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    _installed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    _state: str = "new"

    @property
    def migrating(self) -> np.ndarray:
        """Mask of entries still marked ``MIGRATE_PFN_MIGRATE``."""
        return (self.src & _MIG) != 0

    def src_paddrs(self) -> np.ndarray:
        """Physical address of each source page (0 for holes).

        Kernel: include/linux/migrate.h, migrate_pfn_to_page() over migrate_vma.src.
        """
        out: np.ndarray = migrate_pfn_to_paddr(self.src)
        return out


def alloc_page_vma(vma: Vma, count: int = 1) -> np.ndarray:
    """Allocate zeroed RAM pages for ``vma``'s mm — ``alloc_page_vma()`` (physical addresses).

    The pages belong to the mm's anonymous owner. Raises DmaBufError(ENOMEM) when RAM is full.

    Kernel: include/linux/gfp.h, alloc_page_vma().
    """
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise DmaBufError(errno.EINVAL, f"alloc_page_vma: count {count!r} must be > 0")
    return vma.mm._alloc_anon(count)


def migrate_vma_setup(args: MigrateVma) -> MigrateVma:
    """Collect and unmap the pages to migrate — ``migrate_vma_setup()``.

    Context: caller holds ``mmap_lock`` (read); may sleep (notifier callbacks).
    Returns: ``args`` (``src``, ``dst`` (zeroed), ``cpages``, ``npages`` filled).
    Raises:
        DmaBufError(EINVAL): unaligned or empty range, range outside the VMA, a ``VM_SPECIAL``
            VMA (PFN/mixed/IO maps), ``fault_page`` that is not a device-private page.
        ContractViolation: ``args`` reused after setup.
    Kernel: mm/migrate_device.c, migrate_vma_setup(), migrate_vma_collect(), migrate_vma_unmap().
    """
    if not isinstance(args, MigrateVma):
        raise TypeError(f"args must be a MigrateVma, not {type(args).__name__}")
    if args._state != "new":
        raise ContractViolation("migrate_vma_setup", "a MigrateVma is used for one migration")
    vma = args.vma
    start, end = int(args.start), int(args.end)
    if not isinstance(vma, Vma):
        raise DmaBufError(errno.EINVAL, "migrate_vma_setup: no VMA")
    if start % PAGE_SIZE or end % PAGE_SIZE or start >= end:
        raise DmaBufError(errno.EINVAL, f"migrate_vma_setup: [{start:#x}, {end:#x}) must be a "
                          "non-empty page-aligned range")
    if start < vma.start or end > vma.end:
        raise DmaBufError(errno.EINVAL, f"migrate_vma_setup: [{start:#x}, {end:#x}) is not "
                          f"inside {vma!r}")
    if vma.flags & VM_SPECIAL:
        raise DmaBufError(errno.EINVAL, f"migrate_vma_setup: {vma!r} is a special mapping "
                          "(VM_PFNMAP/VM_MIXEDMAP/VM_IO)")
    mm = vma.mm
    mm.assert_locked("mmap_lock (migrate_vma_setup)")
    remap = mm.remap
    if args.fault_page is not None:
        pm = remap.pgmap_of(int(args.fault_page))
        if pm is None or pm.type is not MemoryType.MEMORY_DEVICE_PRIVATE:
            raise DmaBufError(errno.EINVAL, "migrate_vma_setup: fault_page is not a "
                              "device-private page")
    n = (end - start) >> PAGE_SHIFT
    i0 = vma.index(start)
    args.npages = n
    args.src = np.zeros(n, dtype=np.uint64)
    args.dst = np.zeros(n, dtype=np.uint64)
    args._orig = np.zeros(n, dtype=np.uint16)
    args._installed = np.zeros(n, dtype=bool)
    args._state = "setup"
    anon = vma_is_anonymous(vma)
    sel_sys = bool(args.flags & MIGRATE_VMA_SELECT_SYSTEM)
    sel_priv = bool(args.flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE)
    sel_coh = bool(args.flags & MIGRATE_VMA_SELECT_DEVICE_COHERENT)
    rng = MmuNotifierRange(mm, start, end, MmuNotifyEvent.MMU_NOTIFY_MIGRATE,
                           owner=args.pgmap_owner)
    mmu_notifier_invalidate_range_start(rng)
    try:
        with mm.pt_locked():
            pte = vma.pte[i0:i0 + n].copy()
            pfn = vma.pfn[i0:i0 + n].copy()
            paddr = pfn << _PSHIFT
            present = (pte & PTE_PRESENT) != 0
            hole = (pte == 0) | (present & ((pte & PTE_ZERO) != 0))
            take_hole = hole & sel_sys & anon
            ram = present & ((pte & PTE_ANON) != 0)
            if bool(ram.any()):
                ram &= ~mm._pinned_mask(pfn)
            take_ram = ram & sel_sys
            take_priv = np.zeros(n, dtype=bool)
            take_coh = np.zeros(n, dtype=bool)
            dp = (pte & PTE_DEVICE_PRIVATE) != 0
            dm = present & ((pte & PTE_DEVMAP) != 0)
            if (sel_priv and bool(dp.any())) or (sel_coh and bool(dm.any())):
                idx = remap.lookup(paddr)
                owner = args.pgmap_owner
                match = np.array([p.owner is owner or p.owner == owner for p in remap.pgmaps]
                                 + [False], dtype=bool)
                coh = np.array([p.type is MemoryType.MEMORY_DEVICE_COHERENT
                                for p in remap.pgmaps] + [False], dtype=bool)
                mine = match[idx]          # idx -1 selects the trailing False
                if sel_priv:
                    take_priv = dp & mine
                if sel_coh:
                    take_coh = dm & mine & coh[idx]
            pages = take_ram | take_priv | take_coh
            wr = (pte & PTE_WRITE) != 0
            src = np.zeros(n, dtype=np.uint64)
            src[take_hole] = _MIG
            src[pages] = (pfn[pages] << _SHIFT) | _VALID | _MIG
            src[pages & wr] |= _WRITE
            args._orig[:] = pte
            sl = slice(i0, i0 + n)
            newpte = vma.pte[sl]
            newpte[pages] = PTE_MIGRATION | (pte[pages] & PTE_WRITE)
            vma.pte[sl] = newpte
        args.src = src
        args.cpages = int(np.count_nonzero(src & _MIG))
    finally:
        mmu_notifier_invalidate_range_end(rng)
    mm.machine.trace.emit("migrate_vma_setup", mm=mm.name, start=start, end=end,
                          cpages=args.cpages, npages=n)
    return args


def migrate_vma_pages(args: MigrateVma) -> None:
    """Commit the destinations the driver filled in ``dst`` — ``migrate_vma_pages()``.

    Context: caller holds ``mmap_lock`` (read); may sleep (a hole insertion invalidates).
    Raises: ContractViolation("migrate_vma_pages"): called before setup or twice.
    Kernel: mm/migrate_device.c, migrate_vma_pages(), __migrate_device_pages(),
    migrate_vma_insert_page().
    """
    if args._state != "setup":
        raise ContractViolation("migrate_vma_pages", f"called in state {args._state!r}; call "
                                "migrate_vma_setup first, and only once")
    args._state = "pages"
    vma = args.vma
    mm = vma.mm
    remap = mm.remap
    n = args.npages
    dst = np.asarray(args.dst, dtype=np.uint64)
    if dst.size != n:
        raise DmaBufError(errno.EINVAL, f"migrate_vma_pages: dst has {dst.size} entries, "
                          f"expected {n}")
    src = args.src
    mig = (src & _MIG) != 0
    dvalid = (dst & _VALID) != 0
    # no destination: not migrated
    src[mig & ~dvalid] &= ~_MIG
    mig = (src & _MIG) != 0
    if not bool(mig.any()):
        return
    dpaddr = migrate_pfn_to_paddr(dst)
    dtypes = remap.types(dpaddr)
    to_dev = (dtypes == int(MemoryType.MEMORY_DEVICE_PRIVATE)) | \
        (dtypes == int(MemoryType.MEMORY_DEVICE_COHERENT))
    if not vma_is_anonymous(vma):
        src[mig & to_dev] &= ~_MIG
        mig = (src & _MIG) != 0
    # RAM destinations become the mm's anonymous pages (folio_migrate_mapping)
    ram_dst = mig & (dtypes == 0)
    if bool(ram_dst.any()):
        mm.phys.set_owner(page_ranges(np.sort(dpaddr[ram_dst])), mm.anon_owner)
    holes = mig & ((src & _VALID) == 0)
    if bool(holes.any()):
        i0 = vma.index(args.start)
        hidx = np.flatnonzero(holes)
        lo = args.start + (int(hidx.min()) << PAGE_SHIFT)
        hi = args.start + ((int(hidx.max()) + 1) << PAGE_SHIFT)
        rng = MmuNotifierRange(mm, lo, hi, MmuNotifyEvent.MMU_NOTIFY_MIGRATE,
                               owner=args.pgmap_owner)
        mmu_notifier_invalidate_range_start(rng)
        try:
            with mm.pt_locked():
                cur = vma.pte[i0 + hidx]
                ok = (cur == 0) | (((cur & PTE_PRESENT) != 0) & ((cur & PTE_ZERO) != 0))
                good = hidx[ok]
                isdev = to_dev[good]
                writable = bool(vma.flags & VM_WRITE)
                bits = np.where(isdev, PTE_DEVICE_PRIVATE, PTE_PRESENT | PTE_ANON)
                if writable:
                    bits = bits | PTE_WRITE
                vma.pte[i0 + good] = bits.astype(np.uint16)
                vma.pfn[i0 + good] = dpaddr[good] >> _PSHIFT
                args._installed[good] = True
                src[hidx[~ok]] &= ~_MIG
        finally:
            mmu_notifier_invalidate_range_end(rng)


def migrate_vma_finalize(args: MigrateVma) -> None:
    """Replace migration entries with the new (or restored old) pages; release the losers.

    Context: caller holds ``mmap_lock`` (read). Wakes threads waiting on migration entries.
    Raises: ContractViolation("migrate_vma_finalize"): called before setup or twice.
    Kernel: mm/migrate_device.c, migrate_vma_finalize(), migrate_device_finalize();
    mm/migrate.c, remove_migration_ptes().
    """
    if args._state not in ("setup", "pages"):
        raise ContractViolation("migrate_vma_finalize", f"called in state {args._state!r}")
    if args._state == "setup":
        # migrate_vma_pages was never called: nothing migrates.
        args.src &= ~_MIG
    args._state = "finalized"
    vma = args.vma
    mm = vma.mm
    remap = mm.remap
    n = args.npages
    i0 = vma.index(args.start)
    src, dst = args.src, np.asarray(args.dst, dtype=np.uint64)
    spaddr = migrate_pfn_to_paddr(src)
    dpaddr = migrate_pfn_to_paddr(dst)
    has_src = (src & _VALID) != 0
    has_dst = (dst & _VALID) != 0
    mig = (src & _MIG) != 0
    dtypes = remap.types(dpaddr)
    dst_dev = (dtypes == int(MemoryType.MEMORY_DEVICE_PRIVATE)) | \
        (dtypes == int(MemoryType.MEMORY_DEVICE_COHERENT))
    with mm.pt_locked():
        sl = slice(i0, i0 + n)
        pte = vma.pte[sl].copy()
        pfn = vma.pfn[sl].copy()
        ours = has_src & ((pte & PTE_MIGRATION) != 0) & (pfn == (spaddr >> _PSHIFT))
        success = ours & mig & has_dst
        restore = ours & ~success
        wr = (args._orig & PTE_WRITE)
        newbits = np.where(dst_dev, PTE_DEVICE_PRIVATE, PTE_PRESENT | PTE_ANON).astype(np.uint16)
        pte[success] = newbits[success] | wr[success]
        pfn[success] = dpaddr[success] >> _PSHIFT
        pte[restore] = args._orig[restore]
        vma.pte[sl] = pte
        vma.pfn[sl] = pfn
        mm._ptl_cond.notify_all()
    # Release: sources of successful migrations, or of entries zapped meanwhile (not ours);
    # destinations that were not installed.
    src_gone = has_src & (success | ~ours)
    dst_installed = success | (args._installed & mig)
    dst_gone = has_dst & ~dst_installed
    _release_pages(mm, spaddr[src_gone])
    _release_pages(mm, dpaddr[dst_gone])
    mm.machine.trace.emit("migrate_vma_finalize", mm=mm.name, start=args.start, end=args.end,
                          migrated=int(np.count_nonzero(dst_installed)))


def _release_pages(mm: Any, paddrs: np.ndarray) -> None:
    """Free RAM pages / drop ZONE_DEVICE references of pages nobody maps any more."""
    if paddrs.size == 0:
        return
    remap = mm.remap
    idx = remap.lookup(paddrs)
    ram = idx < 0
    if bool(ram.any()):
        mm.phys.free(page_ranges(np.sort(paddrs[ram])))
    for i in np.unique(idx[~ram]).tolist():
        remap.pgmaps[i].put_pages(paddrs[idx == i])
