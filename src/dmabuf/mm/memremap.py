"""ZONE_DEVICE pages — mm/memremap.c, include/linux/memremap.h (``struct dev_pagemap``).

A driver gives device memory ``struct page`` s with ``memremap_pages(pgmap)``: the pages then
exist for the mm (they can sit in page tables, be pinned by GUP, be migrated to and from) but
belong to the driver, which learns through ``pgmap->ops`` when the last reference to one goes
(``folio_free``) and is asked to bring a page back to system RAM when the CPU touches it
(``migrate_to_ram``, device-private memory only). The ``type`` says what the pages are:

* ``MEMORY_DEVICE_PRIVATE`` — device memory the CPU cannot address (GPU VRAM for SVM). Such a
  page is never mapped by a present PTE: the page table holds a *device-private entry* (a
  swap-like entry carrying the pfn); a CPU access faults and the driver migrates the data back.
  ``pgmap.owner`` is compared with ``hmm_range.dev_private_owner`` and
  ``migrate_vma.pgmap_owner``.
* ``MEMORY_DEVICE_COHERENT`` — cache-coherent device memory mapped by normal PTEs.
* ``MEMORY_DEVICE_PCI_P2PDMA`` — a PCI BAR given pages by ``pci_p2pdma_add_resource()`` (the
  p2pmem ``allocate`` mmap inserts them with ``vm_insert_page``); GUP returns them only with
  ``FOLL_PCI_P2PDMA``.
* ``MEMORY_DEVICE_FS_DAX`` / ``MEMORY_DEVICE_GENERIC`` — accepted for completeness.

The model keeps, per :class:`~dmabuf.mm.phys.PhysMemory`, one :class:`MemRemap` registry (the
kernel's ``pgmap_array`` xarray) of the page maps registered on it, sorted by address, so "which
pgmap owns each of these 262144 pfns" is one ``searchsorted``. Every page of a pgmap carries an
``int32`` reference count (``page_ref_count``); :meth:`DevPagemap.put_pages` calls
``ops.folio_free`` with the addresses of the pages whose count dropped to zero (vectorised: one
call per batch instead of one per folio). The registry also owns the **shared zero page**
(``ZERO_PAGE(0)``): one zero-filled RAM page, allocated on first use, mapped read-only by every
read fault of untouched anonymous memory.

Model choices (deliberate differences):

* The physical range of a ``DEVICE_PRIVATE`` pgmap must be a ``MemKind.DEVICE`` region of the
  physical memory: the device page's address is where its data really lives (the kernel uses a
  fake, CPU-unaddressable range from ``request_free_mem_region()`` and the driver keeps its own
  VRAM address per page). ``PCI_P2PDMA`` pgmaps must lie in a ``MemKind.MMIO`` region (a BAR).
* ``memunmap_pages()`` with pages still referenced raises
  :class:`~dmabuf.errors.ContractViolation` instead of sleeping forever on the percpu ref.
* The registry is attached to the ``PhysMemory`` object (a weak-key map), not a global.

Locking: the registry lock (the kernel's ``pgmap_array`` xarray lock) is held only inside one
call; reference counts are updated under the pgmap's own lock (the atomic ``_refcount``);
``folio_free`` runs with no lock of this module held.

Kernel: mm/memremap.c (memremap_pages(), memunmap_pages(), get_dev_pagemap(),
free_zone_device_folio(),
zone_device_page_init()), include/linux/memremap.h (enum memory_type, struct dev_pagemap,
struct dev_pagemap_ops, is_device_private_page(), is_pci_p2pdma_page()), mm/memory.c (ZERO_PAGE,
is_zero_pfn()).
"""

from __future__ import annotations

import enum
import errno
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE, MemKind, PhysMemory
from dmabuf.mm.ranges import RANGE_DTYPE, coalesce

if TYPE_CHECKING:
    from dmabuf.mm.vma import VmFault

__all__ = [
    "DevPagemap",
    "DevPagemapOps",
    "MemRemap",
    "MemoryType",
    "get_dev_pagemap",
    "is_device_private_page",
    "is_pci_p2pdma_page",
    "is_zero_pfn",
    "memremap_pages",
    "memremap_registry",
    "memunmap_pages",
    "page_ranges",
    "pages_of_ranges",
    "zero_page",
]

_U_SHIFT = np.uint64(PAGE_SHIFT)


class MemoryType(enum.IntEnum):
    """What a ZONE_DEVICE page map holds — ``enum memory_type`` (values are the kernel's)."""

    MEMORY_DEVICE_PRIVATE = 1
    MEMORY_DEVICE_COHERENT = 2
    MEMORY_DEVICE_FS_DAX = 3
    MEMORY_DEVICE_GENERIC = 4
    MEMORY_DEVICE_PCI_P2PDMA = 5


class DevPagemapOps:
    """Driver callbacks of a page map — ``struct dev_pagemap_ops``. Override what you need.

    Kernel: include/linux/memremap.h, struct dev_pagemap_ops.
    """

    #: Set to False by subclasses that do not implement :meth:`migrate_to_ram` (memremap_pages
    #: refuses DEVICE_PRIVATE maps without it, as the kernel WARNs and fails).
    has_migrate_to_ram: bool = True
    #: Set to False by subclasses that do not implement :meth:`folio_free`.
    has_folio_free: bool = True

    def folio_free(self, pgmap: DevPagemap, paddrs: np.ndarray) -> None:
        """The last reference to these pages went away — ``ops->folio_free`` (was page_free).

        Args:
            pgmap: the page map.
            paddrs: ``uint64`` physical addresses of the freed pages (one per page).
        Context: called with no lock of the mm held; must not block for long.
        Kernel: mm/memremap.c, free_zone_device_folio().
        """

    def migrate_to_ram(self, vmf: VmFault) -> int:
        """The CPU touched a device-private page: move it to RAM — ``ops->migrate_to_ram``.

        Args:
            vmf: the fault (``vmf.vma``, ``vmf.address``, ``vmf.page`` = the device page's
                physical address).
        Context: called from the fault handler with ``mmap_lock`` held for reading.
        Returns: ``0`` on success or ``VM_FAULT_*`` bits (``VM_FAULT_SIGBUS`` on failure).
        Kernel: mm/memory.c, do_swap_page() → ``pgmap->ops->migrate_to_ram(vmf)``.
        """
        from dmabuf.mm.vma import VM_FAULT_SIGBUS
        return VM_FAULT_SIGBUS


class DevPagemap:
    """A range of physical memory given ZONE_DEVICE pages — ``struct dev_pagemap``.

    Args:
        type: :class:`MemoryType`.
        start: physical address of the first byte (page aligned).
        size: bytes (a positive multiple of ``PAGE_SIZE``).
        owner: opaque owner cookie (required for DEVICE_PRIVATE / COHERENT); compared with
            ``hmm_range.dev_private_owner`` and ``migrate_vma.pgmap_owner``.
        ops: the driver's :class:`DevPagemapOps`.
        name: shown in messages.
        provider: free-form provider information (for PCI_P2PDMA: the provider's BDF), the role
            of ``pci_p2pdma_pagemap.provider``.

    Attributes:
        refcount: ``int32`` reference count per page (``page_ref_count``).
        phys: the physical memory it was registered on (set by :func:`memremap_pages`).

    Kernel: include/linux/memremap.h, struct dev_pagemap.
    """

    def __init__(self, type: MemoryType, start: int, size: int, *, owner: Any = None,
                 ops: DevPagemapOps | None = None, name: str = "",
                 provider: Any = None) -> None:
        if not isinstance(type, MemoryType):
            raise TypeError(f"type must be a MemoryType, not {type!r}")
        for v, what in ((start, "start"), (size, "size")):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"dev_pagemap {what} must be an int, not {v!r}")
        start, size = int(start), int(size)
        if start < 0 or size <= 0 or (start | size) % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"dev_pagemap [{start:#x}+{size:#x}): start and size "
                              "must be page aligned and size > 0")
        self.type = type
        self.start = start
        self.size = size
        self.owner = owner
        self.ops = ops if ops is not None else DevPagemapOps()
        self.name = name or f"{type.name.lower()}@{start:#x}"
        self.provider = provider
        self.refcount = np.zeros(size >> PAGE_SHIFT, dtype=np.int32)
        self.phys: PhysMemory | None = None
        self.live = False
        self._lock = threading.Lock()

    @property
    def end(self) -> int:
        """Last byte (inclusive), as ``struct range``."""
        return self.start + self.size - 1

    @property
    def npages(self) -> int:
        """Pages covered."""
        return self.size >> PAGE_SHIFT

    def contains(self, paddr: int) -> bool:
        """Whether ``paddr`` is one of this map's pages.

        Model-only: range test the kernel does with pgmap->range fields inline.
        """
        return self.start <= int(paddr) <= self.end

    def _index(self, paddrs: np.ndarray) -> np.ndarray:
        a = np.asarray(paddrs, dtype=np.uint64)
        if a.size and (int(a.min()) < self.start or int(a.max()) > self.end):
            raise ContractViolation("dev_pagemap", f"{self.name}: page address outside "
                                    f"[{self.start:#x}, {self.end:#x}]")
        return ((a - np.uint64(self.start)) >> _U_SHIFT).astype(np.int64)

    def page_refs(self, paddrs: Any) -> np.ndarray:
        """``page_ref_count()`` of each page (a copy).

        Kernel: include/linux/page_ref.h, page_ref_count() of each page.
        """
        return self.refcount[self._index(np.atleast_1d(np.asarray(paddrs, np.uint64)))].copy()

    def page_init(self, paddrs: Any) -> None:
        """Hand free pages to the driver with one reference each — ``zone_device_page_init()``.

        Raises:
            ContractViolation("zone_device_page_init"): a page is still referenced (the kernel
                VM_BUG_ONs on a non-zero refcount).

        Kernel: mm/memremap.c, zone_device_page_init().
        """
        idx = self._index(np.atleast_1d(np.asarray(paddrs, np.uint64)))
        with self._lock:
            if bool(np.any(self.refcount[idx] != 0)) or np.unique(idx).size != idx.size:
                raise ContractViolation("zone_device_page_init", f"{self.name}: a page handed "
                                        "out by the driver is still referenced (or listed twice)")
            self.refcount[idx] = 1

    def get_pages(self, paddrs: Any) -> None:
        """Take one reference on each page (duplicates count twice) — ``folio_get()``.

        Raises:
            ContractViolation("folio_get"): a page has no reference (a freed page cannot be
                revived: ``folio_try_get`` would fail).

        Kernel: include/linux/mm.h, folio_get() on each page.
        """
        idx = self._index(np.atleast_1d(np.asarray(paddrs, np.uint64)))
        with self._lock:
            if bool(np.any(self.refcount[idx] <= 0)):
                raise ContractViolation("folio_get", f"{self.name}: reference taken on a free "
                                        "ZONE_DEVICE page")
            np.add.at(self.refcount, idx, 1)

    def put_pages(self, paddrs: Any) -> np.ndarray:
        """Drop one reference on each page; free those reaching zero — ``folio_put()``.

        Returns:
            The addresses of the pages that were freed (``ops.folio_free`` was called on them).
        Raises:
            ContractViolation("folio_put"): a reference count would go negative.
        Kernel: mm/memremap.c, free_zone_device_folio().
        """
        a = np.atleast_1d(np.asarray(paddrs, np.uint64))
        idx = self._index(a)
        with self._lock:
            np.subtract.at(self.refcount, idx, 1)
            if bool(np.any(self.refcount[idx] < 0)):
                np.add.at(self.refcount, idx, 1)
                raise ContractViolation("folio_put", f"{self.name}: reference count underflow "
                                        "(page put more often than got)")
            uidx = np.unique(idx)
            dead = uidx[self.refcount[uidx] == 0]
        freed = (dead.astype(np.uint64) << _U_SHIFT) + np.uint64(self.start)
        if freed.size:
            self.ops.folio_free(self, freed)
        return freed

    def describe(self) -> dict[str, Any]:
        """Snapshot: type, range, owner, referenced pages.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"name": self.name, "type": self.type.name, "start": self.start,
                "size": self.size, "owner": repr(self.owner), "live": self.live,
                "referenced_pages": int(np.count_nonzero(self.refcount))}

    def __repr__(self) -> str:
        return f"<DevPagemap {self.name} {self.type.name} [{self.start:#x}, {self.end:#x}]>"


class MemRemap:
    """The page maps registered on one physical memory, and its shared zero page.

    Created on demand by :func:`memremap_registry`. Lookups are vectorised.

    Kernel: mm/memremap.c (pgmap_array), mm/memory.c (zero page).
    """

    def __init__(self, phys: PhysMemory) -> None:
        self._phys = weakref.ref(phys)
        self._lock = threading.Lock()
        self.pgmaps: list[DevPagemap] = []
        self._starts = np.zeros(0, dtype=np.uint64)
        self._ends = np.zeros(0, dtype=np.uint64)
        self._zero: int | None = None
        self.zero_owner = 0

    @property
    def phys(self) -> PhysMemory:
        """The physical memory this registry belongs to."""
        p = self._phys()
        if p is None:  # pragma: no cover - the registry lives as long as its PhysMemory
            raise ContractViolation("memremap", "physical memory is gone")
        return p

    def _rebuild(self) -> None:
        self.pgmaps.sort(key=lambda p: p.start)
        self._starts = np.array([p.start for p in self.pgmaps], dtype=np.uint64)
        self._ends = np.array([p.end for p in self.pgmaps], dtype=np.uint64)

    def lookup(self, paddrs: Any) -> np.ndarray:
        """Index into :attr:`pgmaps` of each address's page map, -1 where there is none.

        Kernel: mm/memremap.c, get_dev_pagemap() (vectorised, no reference taken).
        """
        a = np.atleast_1d(np.asarray(paddrs, dtype=np.uint64))
        starts, ends = self._starts, self._ends
        if starts.size == 0:
            return np.full(a.size, -1, dtype=np.int64)
        i = np.searchsorted(starts, a, side="right").astype(np.int64) - 1
        ok = (i >= 0) & (a <= ends[np.maximum(i, 0)])
        return np.where(ok, i, -1)

    def types(self, paddrs: Any) -> np.ndarray:
        """:class:`MemoryType` value of each address's page (0 for ordinary memory).

        Kernel: include/linux/memremap.h, page_pgmap(page)->type (enum memory_type), vectorised.
        """
        idx = self.lookup(paddrs)
        if not self.pgmaps:
            return np.zeros(idx.size, dtype=np.int8)
        tv = np.array([int(p.type) for p in self.pgmaps], dtype=np.int8)
        return np.where(idx >= 0, tv[np.maximum(idx, 0)], 0).astype(np.int8)

    def pgmap_of(self, paddr: int) -> DevPagemap | None:
        """The page map holding ``paddr`` — ``get_dev_pagemap()`` (no reference taken).

        Kernel: mm/memremap.c, get_dev_pagemap() (no reference taken).
        """
        i = int(self.lookup(int(paddr))[0])
        return self.pgmaps[i] if i >= 0 else None

    def zero_page(self) -> int:
        """Physical address of the shared zero page (allocated zero-filled on first use).

        Raises:
            DmaBufError(EINVAL): the physical memory has no RAM region.

        Kernel: include/linux/pgtable.h, ZERO_PAGE().
        """
        if self._zero is not None:
            return self._zero
        phys = self.phys
        with self._lock:
            if self._zero is None:
                rams = [r for r in phys.regions if r.kind is MemKind.RAM]
                if not rams:
                    raise DmaBufError(errno.EINVAL, "no RAM region for the shared zero page; add "
                                      "one with PhysMemory.add_region(..., MemKind.RAM)")
                self.zero_owner = phys.new_owner("zero page")
                r = phys.alloc(rams[0], PAGE_SIZE, self.zero_owner, contiguous=True, zero=True)
                self._zero = int(r["addr"][0])
        return self._zero


_registries: weakref.WeakKeyDictionary[PhysMemory, MemRemap] = weakref.WeakKeyDictionary()
_registries_lock = threading.Lock()


def memremap_registry(phys: PhysMemory) -> MemRemap:
    """The :class:`MemRemap` registry of ``phys`` (created on first use, lives with ``phys``).

    Model-only: per-PhysMemory registry standing in for the kernel's global pgmap xarray.
    """
    if not isinstance(phys, PhysMemory):
        raise TypeError(f"phys must be a PhysMemory, not {type(phys).__name__}")
    reg = _registries.get(phys)
    if reg is None:
        with _registries_lock:
            reg = _registries.get(phys)
            if reg is None:
                reg = MemRemap(phys)
                _registries[phys] = reg
    return reg


def zero_page(phys: PhysMemory) -> int:
    """Physical address of ``ZERO_PAGE(0)`` of ``phys``.

    Kernel: include/linux/pgtable.h, ZERO_PAGE(0).
    """
    return memremap_registry(phys).zero_page()


def is_zero_pfn(phys: PhysMemory, pfns: Any) -> np.ndarray:
    """``is_zero_pfn()`` for an array of pfns.

    Kernel: include/linux/pgtable.h, is_zero_pfn().
    """
    z = np.uint64(zero_page(phys) >> PAGE_SHIFT)
    return np.atleast_1d(np.asarray(pfns, dtype=np.uint64)) == z


def memremap_pages(phys: PhysMemory, pgmap: DevPagemap) -> None:
    """Give the pgmap's range ZONE_DEVICE pages — ``memremap_pages()`` / ``devm_memremap_pages()``.

    Args:
        phys: the physical memory holding the range.
        pgmap: the page map (not yet registered).
    Context: process context; takes the registry lock briefly.
    Raises:
        DmaBufError(EINVAL): DEVICE_PRIVATE without ``ops.migrate_to_ram``, ``ops.folio_free``
            or ``owner``; COHERENT without ``folio_free`` or ``owner`` (the kernel WARNs and fails);
            a range that is not inside one region of the right kind (model choice: PRIVATE /
            COHERENT need a ``MemKind.DEVICE`` region, PCI_P2PDMA a ``MemKind.MMIO`` one);
            ``pgmap`` already registered.
        DmaBufError(ENOMEM): the range overlaps a registered page map ("Conflicting mapping in
            same section").
    Kernel: mm/memremap.c, memremap_pages(), pagemap_range().
    """
    if not isinstance(pgmap, DevPagemap):
        raise TypeError(f"pgmap must be a DevPagemap, not {type(pgmap).__name__}")
    reg = memremap_registry(phys)
    t = pgmap.type
    if pgmap.live:
        raise DmaBufError(errno.EINVAL, f"{pgmap.name} is already registered")
    if t is MemoryType.MEMORY_DEVICE_PRIVATE:
        if not pgmap.ops.has_migrate_to_ram:
            raise DmaBufError(errno.EINVAL, f"{pgmap.name}: missing migrate_to_ram method")
        if not pgmap.ops.has_folio_free:
            raise DmaBufError(errno.EINVAL, f"{pgmap.name}: missing folio_free method")
        if pgmap.owner is None:
            raise DmaBufError(errno.EINVAL, f"{pgmap.name}: missing owner")
    elif t is MemoryType.MEMORY_DEVICE_COHERENT:
        if not pgmap.ops.has_folio_free:
            raise DmaBufError(errno.EINVAL, f"{pgmap.name}: missing folio_free method")
        if pgmap.owner is None:
            raise DmaBufError(errno.EINVAL, f"{pgmap.name}: missing owner")
    region = phys.region_at(pgmap.start)
    if pgmap.start + pgmap.size > region.end:
        raise DmaBufError(errno.EINVAL, f"{pgmap.name}: [{pgmap.start:#x}, {pgmap.end:#x}] is "
                          f"not inside one region (starts in {region.name!r})")
    want = {MemoryType.MEMORY_DEVICE_PRIVATE: MemKind.DEVICE,
            MemoryType.MEMORY_DEVICE_COHERENT: MemKind.DEVICE,
            MemoryType.MEMORY_DEVICE_PCI_P2PDMA: MemKind.MMIO}.get(t)
    if want is not None and region.kind is not want:
        raise DmaBufError(errno.EINVAL, f"{pgmap.name}: a {t.name} page map must cover a "
                          f"{want.value} region, {region.name!r} is {region.kind.value}")
    with reg._lock:
        for p in reg.pgmaps:
            if pgmap.start <= p.end and p.start <= pgmap.end:
                raise DmaBufError(errno.ENOMEM, f"{pgmap.name}: conflicting mapping in same "
                                  f"section: overlaps {p.name}")
        pgmap.phys = phys
        pgmap.live = True
        reg.pgmaps.append(pgmap)
        reg._rebuild()


def memunmap_pages(pgmap: DevPagemap) -> None:
    """Remove a page map — ``memunmap_pages()``.

    Raises:
        ContractViolation("memunmap_pages"): pages are still referenced (mapped, pinned or held
            by the driver); the kernel would wait forever for the percpu ref.
    Kernel: mm/memremap.c, memunmap_pages().
    """
    phys = pgmap.phys
    if phys is None or not pgmap.live:
        return
    if bool(np.any(pgmap.refcount)):
        raise ContractViolation("memunmap_pages", f"{pgmap.name}: "
                                f"{int(np.count_nonzero(pgmap.refcount))} page(s) still "
                                "referenced; unmap / migrate them away first")
    reg = memremap_registry(phys)
    with reg._lock:
        pgmap.live = False
        if pgmap in reg.pgmaps:
            reg.pgmaps.remove(pgmap)
        reg._rebuild()


def get_dev_pagemap(phys: PhysMemory, paddr: int) -> DevPagemap | None:
    """The page map holding ``paddr`` — ``get_dev_pagemap()`` (the model takes no reference).

    Kernel: mm/memremap.c, get_dev_pagemap() (the model takes no reference).
    """
    return memremap_registry(phys).pgmap_of(paddr)


def is_device_private_page(phys: PhysMemory, paddrs: Any) -> np.ndarray:
    """``is_device_private_page()`` for an array of physical addresses.

    Kernel: include/linux/memremap.h, is_device_private_page().
    """
    return memremap_registry(phys).types(paddrs) == int(MemoryType.MEMORY_DEVICE_PRIVATE)


def is_pci_p2pdma_page(phys: PhysMemory, paddrs: Any) -> np.ndarray:
    """``is_pci_p2pdma_page()`` for an array of physical addresses.

    Kernel: include/linux/memremap.h, is_pci_p2pdma_page().
    """
    return memremap_registry(phys).types(paddrs) == int(MemoryType.MEMORY_DEVICE_PCI_P2PDMA)


def pages_of_ranges(ranges: Any) -> np.ndarray:
    """Physical address of every page of page-aligned ranges, in order (``uint64``).

    Model-only: expands a range list into page addresses (the model's struct page ** array).
    """
    from dmabuf.mm.ranges import as_ranges
    r = as_ranges(ranges)
    r = r[r["len"] != 0]
    if r.size == 0:
        return np.zeros(0, dtype=np.uint64)
    counts = (r["len"] >> _U_SHIFT).astype(np.int64)
    starts = r["addr"].astype(np.int64)
    total = int(counts.sum())
    offs = np.zeros(counts.size, dtype=np.int64)
    if counts.size > 1:
        np.cumsum(counts[:-1], out=offs[1:])
    base = np.repeat(starts - (offs << PAGE_SHIFT), counts)
    return (base + (np.arange(total, dtype=np.int64) << PAGE_SHIFT)).astype(np.uint64)


def page_ranges(paddrs: Any) -> np.ndarray:
    """One ``PAGE_SIZE`` range per page address, coalesced (the bio_vec list of pages).

    Model-only: converts page addresses into the model's range list (bio_vec form).
    """
    a = np.atleast_1d(np.asarray(paddrs, dtype=np.uint64))
    r = np.empty(a.size, dtype=RANGE_DTYPE)
    r["addr"] = a
    r["len"] = PAGE_SIZE
    return coalesce(r)
