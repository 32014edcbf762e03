"""Pinning user pages for DMA — mm/gup.c (get_user_pages / pin_user_pages).

A driver that DMAs into user memory (``O_DIRECT``, RDMA ``ib_umem_get``, vfio type1) first turns
the user virtual range into physical pages and takes a reference on each so they cannot be freed
or migrated while the device uses them. :func:`pin_user_pages` (``FOLL_PIN``) and
:func:`get_user_pages` (``FOLL_GET``) walk the range, fault in what is missing (write faults
for ``FOLL_WRITE``, which break COW), and return a :class:`GupPages` with one physical address
per page; :func:`unpin_user_pages` drops the references.

The rules that matter for P2P (spec p2p §5.7), as the kernel applies them:

* ``check_vma_flags``: a ``VM_IO | VM_PFNMAP`` VMA (a raw BAR mmap) → ``-EFAULT``; writing a VMA
  without ``VM_WRITE`` → ``-EFAULT`` (``FOLL_FORCE`` aside); ``FOLL_LONGTERM`` together with
  ``FOLL_PCI_P2PDMA`` → ``-EOPNOTSUPP`` (the pgmap lifetime is the provider driver's);
  ``FOLL_ANON`` on a non-anonymous VMA → ``-EFAULT``;
* ``try_grab_folio``: a ``MEMORY_DEVICE_PCI_P2PDMA`` page without ``FOLL_PCI_P2PDMA`` →
  ``-EREMOTEIO``; the block layer passes that flag only when the queue supports P2P
  (``BLK_FEAT_PCI_P2PDMA``), so ``O_DIRECT`` into p2pmem works on NVMe and fails on virtio-blk;
* special PTEs without a struct page (other than the zero page) → ``-EFAULT``; the zero page is
  returned without taking a pin;
* device-private entries are faulted back to RAM (``migrate_to_ram``) before being pinned.

References: ZONE_DEVICE pages take a pgmap page reference (so p2pmem stays allocated until the
last unpin even after munmap); RAM and page-cache pages are counted in the mm's pin table
(``MmStruct.pinned_pages``): a pinned anonymous page that gets unmapped is freed only at its last
unpin, and :func:`~dmabuf.mm.migrate.migrate_vma_setup` refuses pinned pages.

Deliberate difference: the kernel returns the number of pages pinned before the first failing
page (callers then retry and get the error); the model is all-or-nothing — it releases what it
took and raises the error of the first failing page. Pinned page-cache pages do not hold back a
memfd truncation (documented in :mod:`dmabuf.mm.vma`).

Kernel: mm/gup.c (__get_user_pages, check_vma_flags, follow_page_pte, try_grab_folio,
pin_user_pages, pin_user_pages_fast, unpin_user_pages, is_valid_gup_args), include/linux/mm_types.h
(FOLL_*), mm/internal.h (FOLL_PIN, FOLL_REMOTE, FOLL_TOUCH).
"""

from __future__ import annotations

import errno

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.memremap import MemoryType, page_ranges
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.vma import (
    PTE_DEVMAP,
    PTE_PRESENT,
    PTE_SPECIAL,
    PTE_WRITE,
    PTE_ZERO,
    VM_FAULT_ERROR,
    VM_IO,
    VM_MAYREAD,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
    MmStruct,
    Vma,
    vma_is_anonymous,
)

__all__ = [
    "FOLL_ANON",
    "FOLL_FORCE",
    "FOLL_GET",
    "FOLL_LONGTERM",
    "FOLL_NOFAULT",
    "FOLL_PCI_P2PDMA",
    "FOLL_PIN",
    "FOLL_WRITE",
    "GupPages",
    "get_user_pages",
    "get_user_pages_fast",
    "pin_user_pages",
    "pin_user_pages_fast",
    "put_user_pages",
    "unpin_user_pages",
]

# include/linux/mm_types.h
FOLL_WRITE = 1 << 0
FOLL_GET = 1 << 1
FOLL_DUMP = 1 << 2
FOLL_FORCE = 1 << 3
FOLL_NOWAIT = 1 << 4
FOLL_NOFAULT = 1 << 5
FOLL_HWPOISON = 1 << 6
FOLL_ANON = 1 << 7
FOLL_LONGTERM = 1 << 8
FOLL_SPLIT_PMD = 1 << 9
FOLL_PCI_P2PDMA = 1 << 10
FOLL_INTERRUPTIBLE = 1 << 11
FOLL_HONOR_NUMA_FAULT = 1 << 12
_FOLL_PUBLIC = (1 << 13) - 1
# mm/internal.h
FOLL_TOUCH = 1 << 16
FOLL_TRIED = 1 << 17
FOLL_REMOTE = 1 << 18
FOLL_PIN = 1 << 19
FOLL_FAST_ONLY = 1 << 20

_U = np.uint64(PAGE_SHIFT)


class GupPages:
    """Pages returned by GUP, with their references — the ``struct page **pages`` array.

    Attributes:
        mm: the address space.
        start: first (page-aligned) user address.
        paddrs: ``uint64`` physical address of each page, in address order.
        flags: the ``FOLL_*`` flags used (``FOLL_PIN`` or ``FOLL_GET`` included).
        p2pdma: mask of pages that are ``MEMORY_DEVICE_PCI_P2PDMA`` pages.
        released: True after :func:`unpin_user_pages` / :func:`put_user_pages`.
    """

    def __init__(self, mm: MmStruct, start: int, paddrs: np.ndarray, flags: int,
                 p2pdma: np.ndarray, counted: np.ndarray, devmap: np.ndarray) -> None:
        self.mm = mm
        self.start = start
        self.paddrs = paddrs
        self.flags = flags
        self.p2pdma = p2pdma
        self._counted = counted    # pfns counted in the mm pin table
        self._devmap = devmap      # addresses holding a pgmap reference
        self.released = False

    @property
    def npages(self) -> int:
        """Number of pages."""
        return int(self.paddrs.size)

    def ranges(self) -> np.ndarray:
        """The pages as a coalesced ``RANGE_DTYPE`` list (the bio_vec / scatterlist).

        Model-only: the pinned pages as the range list the model uses in place of struct page
        **pages (a bio_vec / scatterlist).
        """
        return page_ranges(self.paddrs)

    def __repr__(self) -> str:
        kind = "pin" if self.flags & FOLL_PIN else "get"
        return (f"<GupPages {kind} {self.npages} pages at {self.start:#x}"
                f"{' P2PDMA' if bool(self.p2pdma.any()) else ''}"
                f"{' released' if self.released else ''}>")


def _check_vma_flags(vma: Vma, flags: int) -> None:
    """``check_vma_flags()``."""
    vf = vma.flags
    if vf & (VM_IO | VM_PFNMAP):
        raise DmaBufError(errno.EFAULT, f"GUP: {vma!r} is a VM_IO/VM_PFNMAP mapping without "
                          "struct pages (a raw BAR mmap); use a dma-buf instead")
    if (flags & FOLL_ANON) and not vma_is_anonymous(vma):
        raise DmaBufError(errno.EFAULT, f"GUP: FOLL_ANON on non-anonymous {vma!r}")
    if (flags & FOLL_LONGTERM) and (flags & FOLL_PCI_P2PDMA):
        raise DmaBufError(errno.EOPNOTSUPP, "GUP: FOLL_LONGTERM with FOLL_PCI_P2PDMA is not "
                          "supported (P2PDMA pages live only as long as the provider driver)")
    if flags & FOLL_WRITE:
        if not vf & VM_WRITE and (not (flags & FOLL_FORCE) or (vf & VM_SHARED)):
            raise DmaBufError(errno.EFAULT, f"GUP: write access to read-only {vma!r}")
    elif not vf & VM_READ and (not (flags & FOLL_FORCE) or not (vf & VM_MAYREAD)):
        raise DmaBufError(errno.EFAULT, f"GUP: read access to unreadable {vma!r}")


def _gup(mm: MmStruct, start: int, nr_pages: int, flags: int) -> GupPages:
    """``__get_user_pages()`` with ``mmap_lock`` held; all-or-nothing (see module docstring)."""
    if isinstance(nr_pages, bool) or not isinstance(nr_pages, int):
        raise TypeError("nr_pages must be an int")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
        raise TypeError("start must be an int")
    start = int(start) & ~(PAGE_SIZE - 1)
    if (flags & FOLL_PIN) and (flags & FOLL_GET):
        raise DmaBufError(errno.EINVAL, "GUP: FOLL_PIN and FOLL_GET are exclusive")
    if nr_pages <= 0:
        z = np.zeros(0, dtype=np.uint64)
        return GupPages(mm, start, z, flags, np.zeros(0, dtype=bool), z, z)
    end = start + (nr_pages << PAGE_SHIFT)
    if end >= mm.task_size:
        raise DmaBufError(errno.EFAULT, f"GUP: [{start:#x}, {end:#x}) is beyond the user "
                          "address space")
    write = bool(flags & FOLL_WRITE)
    remap = mm.remap
    taken_counted: list[np.ndarray] = []
    taken_dev: list[np.ndarray] = []
    out: list[np.ndarray] = []
    p2p_out: list[np.ndarray] = []
    try:
        pos = start
        while pos < end:
            vma = mm.vma_lookup(pos)
            if vma is None:
                raise DmaBufError(errno.EFAULT, f"GUP: address {pos:#x} is not mapped")
            _check_vma_flags(vma, flags)
            hi = min(end, vma.end)
            i0, i1 = vma.index(pos), vma.index(hi - 1) + 1
            if vma.kind == "file":
                mm._revalidate_file(vma, i0, i1)
            for _ in range(10_000):
                with mm.pt_locked():
                    pte = vma.pte[i0:i1]
                    need = (pte & PTE_PRESENT) == 0
                    if write:
                        need |= (pte & PTE_WRITE) == 0
                    if not bool(need.any()):
                        pfn = vma.pfn[i0:i1].copy()
                        pte = pte.copy()
                        special = ((pte & PTE_SPECIAL) != 0) & ((pte & PTE_ZERO) == 0)
                        if bool(special.any()):
                            a = pos + (int(np.argmax(special)) << PAGE_SHIFT)
                            raise DmaBufError(errno.EFAULT, f"GUP: {a:#x} maps a PFN without "
                                              "struct page")
                        paddr = pfn << _U
                        dev = (pte & PTE_DEVMAP) != 0
                        types = remap.types(paddr)
                        p2p = types == int(MemoryType.MEMORY_DEVICE_PCI_P2PDMA)
                        if bool(p2p.any()) and not flags & FOLL_PCI_P2PDMA:
                            a = pos + (int(np.argmax(p2p)) << PAGE_SHIFT)
                            raise DmaBufError(errno.EREMOTEIO, f"GUP: {a:#x} is PCI P2PDMA "
                                              "memory and the caller did not pass "
                                              "FOLL_PCI_P2PDMA (its queue/driver cannot DMA "
                                              "to a peer BAR)")
                        zero = (pte & PTE_ZERO) != 0
                        counted = ~dev & ~zero
                        if flags & (FOLL_PIN | FOLL_GET):
                            if bool(counted.any()):
                                mm._pin_add(pfn[counted])
                                taken_counted.append(pfn[counted])
                            if bool(dev.any()):
                                da = paddr[dev]
                                idx = remap.lookup(da)
                                for k in np.unique(idx).tolist():
                                    remap.pgmaps[k].get_pages(da[idx == k])
                                taken_dev.append(da)
                        out.append(paddr)
                        p2p_out.append(p2p)
                        break
                if flags & FOLL_NOFAULT:
                    raise DmaBufError(errno.EFAULT, "GUP: FOLL_NOFAULT and a page is not "
                                      "present")
                idx = np.flatnonzero(need) + i0
                ret = mm._fault_pages(vma, idx, write)
                if ret & VM_FAULT_ERROR:
                    raise DmaBufError(errno.EFAULT, f"GUP: fault at "
                                      f"{vma.start + (int(idx[0]) << PAGE_SHIFT):#x} failed")
            else:  # pragma: no cover
                raise ContractViolation("__get_user_pages", "no progress faulting pages in")
            pos = hi
    except BaseException:
        _drop(mm, _cat(taken_counted), _cat(taken_dev))
        raise
    return GupPages(mm, start, _cat(out), flags, np.concatenate(p2p_out) if p2p_out else
                    np.zeros(0, dtype=bool), _cat(taken_counted), _cat(taken_dev))


def _cat(lst: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(lst).astype(np.uint64) if lst else np.zeros(0, dtype=np.uint64)


def _drop(mm: MmStruct, counted: np.ndarray, devmap: np.ndarray) -> None:
    if counted.size:
        with mm.pt_locked():
            dead = mm._pin_sub(counted)
        if dead.size:
            mm.phys.free(page_ranges(np.sort(dead << _U)))
    if devmap.size:
        remap = mm.remap
        idx = remap.lookup(devmap)
        for k in np.unique(idx).tolist():
            remap.pgmaps[k].put_pages(devmap[idx == k])


def _check_flags(gup_flags: int, what: str) -> int:
    if isinstance(gup_flags, bool) or not isinstance(gup_flags, int):
        raise TypeError(f"{what}: gup_flags must be an int")
    if gup_flags & ~_FOLL_PUBLIC:
        raise DmaBufError(errno.EINVAL, f"{what}: internal or unknown FOLL_* flags "
                          f"{gup_flags & ~_FOLL_PUBLIC:#x}")
    if gup_flags & FOLL_GET and what.startswith("pin"):
        raise DmaBufError(errno.EINVAL, f"{what}: FOLL_GET is not allowed with pin_user_pages")
    return gup_flags


def pin_user_pages(mm: MmStruct, start: int, nr_pages: int, gup_flags: int = 0) -> GupPages:
    """Pin ``nr_pages`` user pages from ``start`` for DMA — ``pin_user_pages_remote()``.

    Args:
        mm: the address space.
        start: user address (aligned down to a page).
        nr_pages: pages to pin.
        gup_flags: ``FOLL_WRITE`` (the device will write), ``FOLL_LONGTERM``,
            ``FOLL_PCI_P2PDMA`` (the caller can DMA to peer BARs), ``FOLL_NOFAULT``…
    Context: caller holds ``mmap_lock`` (read); may sleep (faults).
    Returns: a :class:`GupPages`; release with :func:`unpin_user_pages`.
    Raises:
        DmaBufError(EFAULT): unmapped address, VM_IO/VM_PFNMAP VMA, permission, PFN without
            struct page, failed fault.
        DmaBufError(EREMOTEIO): a P2PDMA page without ``FOLL_PCI_P2PDMA``.
        DmaBufError(EOPNOTSUPP): ``FOLL_LONGTERM | FOLL_PCI_P2PDMA``.
        DmaBufError(EINVAL): internal flags, ``FOLL_GET``.
    Kernel: mm/gup.c, pin_user_pages_remote(), __gup_longterm_locked().
    """
    gup_flags = _check_flags(gup_flags, "pin_user_pages")
    mm.assert_locked("mmap_lock (pin_user_pages)")
    return _gup(mm, start, nr_pages, gup_flags | FOLL_PIN | FOLL_REMOTE | FOLL_TOUCH)


def pin_user_pages_fast(mm: MmStruct, start: int, nr_pages: int,
                        gup_flags: int = 0) -> GupPages:
    """:func:`pin_user_pages` taking ``mmap_lock`` itself — ``pin_user_pages_fast()``.

    Context: must be called without the mmap lock; may sleep.
    Kernel: mm/gup.c, pin_user_pages_fast(), gup_fast_fallback().
    """
    gup_flags = _check_flags(gup_flags, "pin_user_pages_fast")
    with mm.read_locked():
        return _gup(mm, start, nr_pages, gup_flags | FOLL_PIN | FOLL_TOUCH)


def get_user_pages(mm: MmStruct, start: int, nr_pages: int, gup_flags: int = 0) -> GupPages:
    """Take a page reference on user pages — ``get_user_pages_remote()`` (``FOLL_GET``).

    Context: caller holds ``mmap_lock`` (read). Raises: as :func:`pin_user_pages`.
    Kernel: mm/gup.c, get_user_pages_remote().
    """
    gup_flags = _check_flags(gup_flags, "get_user_pages")
    mm.assert_locked("mmap_lock (get_user_pages)")
    return _gup(mm, start, nr_pages, gup_flags | FOLL_GET | FOLL_REMOTE | FOLL_TOUCH)


def get_user_pages_fast(mm: MmStruct, start: int, nr_pages: int,
                        gup_flags: int = 0) -> GupPages:
    """:func:`get_user_pages` taking the mmap lock itself — ``get_user_pages_fast()``.

    Context: must be called without the mmap lock; may sleep. Raises: as :func:`pin_user_pages`.
    Kernel: mm/gup.c, get_user_pages_fast().
    """
    gup_flags = _check_flags(gup_flags, "get_user_pages_fast")
    with mm.read_locked():
        return _gup(mm, start, nr_pages, gup_flags | FOLL_GET | FOLL_TOUCH)


def unpin_user_pages(pages: GupPages) -> None:
    """Release pages pinned by :func:`pin_user_pages` — ``unpin_user_pages()``.

    A page unmapped while pinned is freed now if this was its last pin; a P2PDMA page whose
    mapping is gone returns to its pool.

    Raises: ContractViolation("unpin_user_pages"): released twice, or pages from FOLL_GET.
    Kernel: mm/gup.c, unpin_user_pages(), gup_put_folio().
    """
    if not isinstance(pages, GupPages):
        raise TypeError(f"pages must be a GupPages, not {type(pages).__name__}")
    if pages.released:
        raise ContractViolation("unpin_user_pages", f"{pages!r} released twice")
    if not pages.flags & FOLL_PIN:
        raise ContractViolation("unpin_user_pages", "pages were taken with FOLL_GET: use "
                                "put_user_pages (put_page)")
    pages.released = True
    _drop(pages.mm, pages._counted, pages._devmap)


def put_user_pages(pages: GupPages) -> None:
    """Drop the references of :func:`get_user_pages` pages — ``put_page()`` on each.

    Raises: ContractViolation: released twice, or pinned pages (use unpin_user_pages).
    Kernel: include/linux/mm.h, put_page() (folio_put).
    """
    if not isinstance(pages, GupPages):
        raise TypeError(f"pages must be a GupPages, not {type(pages).__name__}")
    if pages.released:
        raise ContractViolation("put_page", f"{pages!r} released twice")
    if pages.flags & FOLL_PIN:
        raise ContractViolation("put_page", "pinned pages must be released with "
                                "unpin_user_pages")
    pages.released = True
    _drop(pages.mm, pages._counted, pages._devmap)

