"""Process address spaces — ``struct mm_struct``, VMAs, page tables and CPU faults.

mm/mmap.c, mm/memory.c, mm/mprotect.c, mm/madvise.c, include/linux/mm.h, include/linux/mm_types.h.

An :class:`MmStruct` is one process's virtual address space over a
:class:`~dmabuf.mm.phys.PhysMemory`: a sorted list of :class:`Vma` s, each with its slice of the
**page table** — two numpy arrays with one entry per page: ``pfn`` (``uint64``) and ``pte``
(``uint16`` flag bits, :data:`PTE_PRESENT` …). There is no 4-level radix tree: what HMM, GUP,
migration and the fault handler need from a page table is "the entry of each page of this
range", which a per-VMA array answers with a slice — every walk is vectorised.

What a VMA maps (``vma.kind``):

* ``"anon"`` — private anonymous memory. A read fault maps the shared **zero page** read-only; a
  write fault allocates a zero-filled RAM page owned by the mm (``mm.anon_owner``); a write to
  the zero page copies it (COW) under an ``MMU_NOTIFY_CLEAR`` invalidation, so mirrors see the
  new page. Pages freed by munmap/madvise are poisoned (a DMA through a stale mirror mapping
  faults on the ownership check).
* ``"file"`` — a :class:`~dmabuf.mm.memfd.MemFd` mapping: shared mappings map the page-cache
  pages themselves; private ones map them read-only and copy on write. ``MAP_SHARED |
  MAP_ANONYMOUS`` is a shmem object, modelled as an internal memfd (as ``/dev/zero``).
* ``"pfnmap"`` — a raw PFN mapping (``remap_pfn_range`` / ``io_remap_pfn_range``: a BAR mmap of
  vfio or ``/sys/.../resourceN``): ``VM_PFNMAP | VM_IO``, special PTEs without struct page —
  invisible to HMM and GUP (``-EFAULT``).
* ``"mixedmap"`` — pages inserted by a driver with :func:`vm_insert_pages` (the p2pmem
  ``allocate`` mmap): ``VM_MIXEDMAP``, normal refcounted ZONE_DEVICE pages (HMM sees them; GUP
  needs ``FOLL_PCI_P2PDMA`` for P2PDMA pages).

Entries that are not present: none, a **device-private entry** (the page migrated to device
memory, :mod:`dmabuf.mm.migrate`; a CPU touch calls the pgmap's ``migrate_to_ram``), a
**migration entry** (a migration is in flight: faults wait for it).

CPU access (:meth:`MmStruct.read`, :meth:`write`, :meth:`fill`, :meth:`checksum`) is what a
thread of the process doing ``memcpy`` would do: permission checks (``SIGSEGV`` → ``EFAULT``),
faults that populate, copy or migrate pages, then the bytes move through the page table's
physical addresses with numpy.

Locking (as the kernel): ``mmap_lock`` (:meth:`MmStruct.mmap_read_lock` /
:meth:`mmap_write_lock`, a reader-writer semaphore on ``machine.sched``; lockdep class
``mmap_lock``) protects the VMA list; faults, GUP, HMM and migration hold it for reading,
mmap/munmap/mprotect for writing. The page-table lock (``mm.ptl``, class ``ptlock``, a spinning
lock for lockdep) protects the PTE arrays and is never held across an MMU-notifier callback, a
driver callback or a sleep. Every PTE change that can drop or replace a page a mirror may hold is
bracketed by ``mmu_notifier_invalidate_range_start``/``end`` (:mod:`dmabuf.mm.mmu_notifier`).

Deliberate differences from the kernel (see also docs/model-vs-kernel.md):

* One page-table lock per mm (the kernel splits PTLs per page-table page).
* No THP, no swap, no fork (anonymous pages are always exclusive: a write to a read-only anon
  PTE just sets the write bit), no KSM, no NUMA balancing.
* Truncating a memfd that is mapped does not zap the PTEs at once: the next CPU access, fault,
  GUP or HMM walk of the mapping notices the page is gone from the page cache and refaults (or
  raises ``EFAULT`` = SIGBUS beyond EOF).
* ``mmap_lock`` is fair to writers like the kernel's rwsem but has no optimistic spinning and no
  per-VMA locks.

Kernel: mm/mmap.c (do_mmap, get_unmapped_area, do_vmi_munmap, __split_vma), mm/memory.c
(handle_mm_fault, do_anonymous_page, do_wp_page, wp_page_copy, do_swap_page, zap_pte_range,
remap_pfn_range, vm_insert_page, vm_insert_pages), mm/mprotect.c (mprotect_fixup),
mm/madvise.c (MADV_DONTNEED), include/linux/mm.h (VM_* flags, FAULT_FLAG_*, VM_FAULT_*),
include/linux/mmap_lock.h.
"""

from __future__ import annotations

import bisect
import errno
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.mm.memfd import F_SEAL_FUTURE_WRITE, F_SEAL_WRITE, MemFd, MemFdMapping
from dmabuf.mm.memremap import (
    MemoryType,
    MemRemap,
    memremap_registry,
    page_ranges,
    pages_of_ranges,
)
from dmabuf.mm.mmu_notifier import (
    MmuNotifierRange,
    MmuNotifierSubscriptions,
    MmuNotifyEvent,
    mmu_notifier_invalidate_range_end,
    mmu_notifier_invalidate_range_start,
    mmu_notifier_release,
)
from dmabuf.mm.phys import (
    PAGE_SHIFT,
    PAGE_SIZE,
    MemKind,
    PhysMemory,
    PhysRegion,
    as_bytes_array,
)
from dmabuf.mm.ranges import RANGE_DTYPE, coalesce, slice_ranges

__all__ = [
    "FAULT_FLAG_REMOTE",
    "FAULT_FLAG_USER",
    "FAULT_FLAG_WRITE",
    "MADV_DONTNEED",
    "MAP_ANONYMOUS",
    "MAP_FIXED",
    "MAP_POPULATE",
    "MAP_PRIVATE",
    "MAP_SHARED",
    "PROT_EXEC",
    "PROT_NONE",
    "PROT_READ",
    "PROT_WRITE",
    "PTE_ANON",
    "PTE_DEVICE_PRIVATE",
    "PTE_DEVMAP",
    "PTE_FILE",
    "PTE_MIGRATION",
    "PTE_PRESENT",
    "PTE_SPECIAL",
    "PTE_WRITE",
    "PTE_ZERO",
    "VM_DONTDUMP",
    "VM_DONTEXPAND",
    "VM_EXEC",
    "VM_FAULT_ERROR",
    "VM_FAULT_OOM",
    "VM_FAULT_RETRY",
    "VM_FAULT_SIGBUS",
    "VM_FAULT_SIGSEGV",
    "VM_IO",
    "VM_MAYREAD",
    "VM_MAYSHARE",
    "VM_MAYWRITE",
    "VM_MIXEDMAP",
    "VM_PFNMAP",
    "VM_READ",
    "VM_SHARED",
    "VM_SPECIAL",
    "VM_WRITE",
    "MmStruct",
    "VmFault",
    "VmOperations",
    "Vma",
    "calc_vm_prot_bits",
    "handle_mm_fault",
    "remap_pfn_range",
    "vm_insert_page",
    "vm_insert_pages",
    "vma_is_anonymous",
    "zap_vma_ptes",
]

# include/linux/mm.h ------------------------------------------------------------------------------
VM_NONE = 0x00000000
VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_SHARED = 0x00000008
VM_MAYREAD = 0x00000010
VM_MAYWRITE = 0x00000020
VM_MAYEXEC = 0x00000040
VM_MAYSHARE = 0x00000080
VM_PFNMAP = 0x00000400
VM_LOCKED = 0x00002000
VM_IO = 0x00004000
VM_DONTEXPAND = 0x00040000
VM_HUGETLB = 0x00400000
VM_DONTDUMP = 0x04000000
VM_MIXEDMAP = 0x10000000
#: ``VM_SPECIAL``: mappings migrate_vma and merging refuse.
VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP

# include/uapi/asm-generic/mman-common.h ----------------------------------------------------------
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_POPULATE = 0x8000
MADV_DONTNEED = 4

# enum fault_flag ---------------------------------------------------------------------------------
FAULT_FLAG_WRITE = 1 << 0
FAULT_FLAG_USER = 1 << 6
FAULT_FLAG_REMOTE = 1 << 7

# vm_fault_t --------------------------------------------------------------------------------------
VM_FAULT_OOM = 0x000001
VM_FAULT_SIGBUS = 0x000002
VM_FAULT_HWPOISON = 0x000010
VM_FAULT_SIGSEGV = 0x000040
VM_FAULT_RETRY = 0x000400
VM_FAULT_ERROR = VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_HWPOISON

# model PTE bits (uint16) --------------------------------------------------------------------------
#: The entry maps a page (``pte_present``).
PTE_PRESENT = 1 << 0
#: Writable (``pte_write``).
PTE_WRITE = 1 << 1
#: No refcounted struct page behind it (``pte_special``: PFN mappings, the zero page).
PTE_SPECIAL = 1 << 2
#: The shared zero page.
PTE_ZERO = 1 << 3
#: An anonymous page of this mm (freed when unmapped).
PTE_ANON = 1 << 4
#: A page-cache page of the VMA's file.
PTE_FILE = 1 << 5
#: A ZONE_DEVICE page holding a pgmap reference (P2PDMA, coherent device memory).
PTE_DEVMAP = 1 << 6
#: Not present: device-private entry (pfn = the device page); WRITE = writable entry.
PTE_DEVICE_PRIVATE = 1 << 7
#: Not present: migration entry (a migration of this page is in flight).
PTE_MIGRATION = 1 << 8

_U_SHIFT = np.uint64(PAGE_SHIFT)
_DEFAULT_MMAP_BASE = 0x7F00_0000_0000
_TASK_SIZE = 1 << 47


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return int(value)


def calc_vm_prot_bits(prot: int) -> int:
    """``calc_vm_prot_bits()``: PROT_* to VM_READ/WRITE/EXEC.

    Kernel: include/linux/mman.h, calc_vm_prot_bits().
    """
    return ((VM_READ if prot & PROT_READ else 0) | (VM_WRITE if prot & PROT_WRITE else 0)
            | (VM_EXEC if prot & PROT_EXEC else 0))


class VmOperations:
    """A driver's ``struct vm_operations_struct`` (override what you need)."""

    #: Shown in ``/proc/pid/maps``-like descriptions.
    name: str = ""

    def close(self, vma: Vma) -> None:
        """The VMA is being unmapped — ``vm_ops->close``.

        Kernel: include/linux/mm.h, struct vm_operations_struct.close.
        """


@dataclass
class VmFault:
    """A page fault being handled — ``struct vm_fault`` (what ``migrate_to_ram`` receives).

    Attributes:
        vma: the VMA.
        address: the page-aligned faulting address.
        flags: ``FAULT_FLAG_*``.
        page: for a device-private fault, the physical address of the device page.
    """

    vma: Vma
    address: int
    flags: int
    page: int = 0


class _RwSem:
    """``mmap_lock``: a writer-fair reader/writer semaphore built on the machine's scheduler."""

    def __init__(self, machine: Machine, name: str) -> None:
        self.machine = machine
        self.name = name
        self._lock = machine.sched.lock(f"{name}.wait_lock")
        self._cond = machine.sched.condition(self._lock, f"{name}.wq")
        self.readers = 0
        self.writer = False
        self.waiting_writers = 0

    def down_read(self) -> None:
        ld = self.machine.lockdep
        ld.might_sleep("mmap_read_lock")
        ld.acquire(self, "mmap_lock")
        with self._lock:
            while self.writer or self.waiting_writers:
                self._cond.wait(what=f"mmap_read_lock({self.name})")
            self.readers += 1

    def up_read(self) -> None:
        with self._lock:
            if self.readers <= 0:
                raise ContractViolation("mmap_read_unlock", f"{self.name} is not read-locked")
            self.readers -= 1
            if self.readers == 0:
                self._cond.notify_all()
        self.machine.lockdep.release(self, "mmap_lock")

    def down_write(self) -> None:
        ld = self.machine.lockdep
        ld.might_sleep("mmap_write_lock")
        ld.acquire(self, "mmap_lock")
        with self._lock:
            self.waiting_writers += 1
            while self.writer or self.readers:
                self._cond.wait(what=f"mmap_write_lock({self.name})")
            self.waiting_writers -= 1
            self.writer = True

    def up_write(self) -> None:
        with self._lock:
            if not self.writer:
                raise ContractViolation("mmap_write_unlock", f"{self.name} is not write-locked")
            self.writer = False
            self._cond.notify_all()
        self.machine.lockdep.release(self, "mmap_lock")

    def __repr__(self) -> str:
        return f"<mmap_lock {self.name} readers={self.readers} writer={self.writer}>"


class _FileRef:
    """A memfd mapping shared by the VMAs split from one mmap (closed with the last).

    It is the model's ``i_mmap`` entry: the memfd runs :meth:`truncate` (through
    ``MemFdMapping.on_truncate``) when truncation drops pages, and every VMA of the mapping
    has its PTEs from that file page on zapped, with an ``MMU_NOTIFY_CLEAR`` invalidation,
    before the pages are freed (``unmap_mapping_range()`` with ``even_cows``).
    """

    def __init__(self, mapping: MemFdMapping | None, owned: MemFd | None = None) -> None:
        self.mapping = mapping
        self.owned = owned      # the internal shmem object of MAP_SHARED|MAP_ANONYMOUS
        #: The VMAs sharing the mapping (split pieces of one mmap); closed with the last.
        self.vmas: list[Vma] = []
        if mapping is not None:
            mapping.on_truncate = self.truncate

    def truncate(self, first: int) -> None:
        """Zap every PTE mapping file page ``first`` or later — ``unmap_mapping_range()``."""
        for vma in list(self.vmas):
            mm = vma.mm
            with mm.read_locked():          # no split/unmap meanwhile (the i_mmap lock's role)
                if vma._fileref is not self:
                    continue
                i0 = max(first - vma.pgoff, 0)
                if i0 < vma.npages:
                    mm._zap(vma, i0, vma.npages, MmuNotifyEvent.MMU_NOTIFY_CLEAR)


class Vma:
    """One virtual memory area — ``struct vm_area_struct`` with its page-table slice.

    Attributes:
        mm: the address space.
        start, end: ``[start, end)``, page aligned.
        flags: ``VM_*`` bits.
        pgoff: file offset of ``start`` in pages (for file mappings; for PFN maps the first pfn).
        file: the mapped :class:`MemFd`, a driver file (an object with ``mmap(vma)``) or None.
        vm_ops: a :class:`VmOperations` or None.
        name: a label.
        pfn: ``uint64`` per page: the page frame number of the entry.
        pte: ``uint16`` per page: ``PTE_*`` bits (0 = none).

    Kernel: include/linux/mm_types.h, struct vm_area_struct.
    """

    def __init__(self, mm: MmStruct, start: int, end: int, flags: int, *, pgoff: int = 0,
                 file: Any = None, vm_ops: VmOperations | None = None, name: str = "") -> None:
        self.mm = mm
        self.start = start
        self.end = end
        self.flags = flags
        self.pgoff = pgoff
        self.file = file
        self.vm_ops = vm_ops
        self.name = name
        n = (end - start) >> PAGE_SHIFT
        self.pfn = np.zeros(n, dtype=np.uint64)
        self.pte = np.zeros(n, dtype=np.uint16)
        self._fileref: _FileRef | None = None
        #: Private data of the driver that created the mapping (``vm_private_data``).
        self.private: Any = None

    @property
    def npages(self) -> int:
        """Pages spanned."""
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def kind(self) -> str:
        """``"anon"``, ``"file"``, ``"pfnmap"`` or ``"mixedmap"`` (see the module docstring)."""
        if self.flags & (VM_PFNMAP | VM_IO):
            return "pfnmap"
        if self.flags & VM_MIXEDMAP:
            return "mixedmap"
        if isinstance(self.file, MemFd):
            return "file"
        if self.file is not None:
            return "mixedmap"
        return "anon"

    def index(self, addr: int) -> int:
        """Page index of ``addr`` in this VMA.

        Model-only: page offset inside the VMA, i.e. linear_page_index() without vma->vm_pgoff.
        """
        return (addr - self.start) >> PAGE_SHIFT

    def describe(self) -> dict[str, Any]:
        """Snapshot: range, flags, kind, resident pages.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"start": self.start, "end": self.end, "flags": self.flags, "kind": self.kind,
                "name": self.name, "present": int(np.count_nonzero(self.pte & PTE_PRESENT)),
                "device_private": int(np.count_nonzero(self.pte & PTE_DEVICE_PRIVATE))}

    def __repr__(self) -> str:
        return (f"<Vma [{self.start:#x}, {self.end:#x}) {self.kind} flags={self.flags:#x}"
                f"{' ' + self.name if self.name else ''}>")


def vma_is_anonymous(vma: Vma) -> bool:
    """``vma_is_anonymous()``: no file and no vm_ops.

    Kernel: include/linux/mm.h, vma_is_anonymous().
    """
    return vma.file is None and vma.vm_ops is None and not (vma.flags & (VM_PFNMAP | VM_MIXEDMAP))


class MmStruct:
    """One process address space — ``struct mm_struct`` (see the module docstring).

    Args:
        phys: the physical memory its pages come from.
        machine: the machine (scheduler, lockdep, WARN log); default the current one.
        name: shown in page owners (``anon:<name>``) and messages.
        region: the RAM region anonymous pages come from (default: the first RAM region).

    Attributes:
        mmap_lock: the mmap semaphore (use :meth:`mmap_read_lock` & co.).
        ptl: the page-table lock.
        anon_owner: the ``PhysMemory`` owner id of this mm's anonymous pages.
        users: ``mm_users`` (1 until :meth:`exit`).
        stats: fault counters (``faults``, ``anon_pages``, ``zero_maps``, ``cow``,
            ``migrate_to_ram``, ``migration_waits``).

    Kernel: include/linux/mm_types.h, struct mm_struct; kernel/fork.c (mm_alloc, mmput).
    """

    def __init__(self, phys: PhysMemory, *, machine: Machine | None = None, name: str = "mm",
                 region: PhysRegion | str | None = None) -> None:
        if not isinstance(phys, PhysMemory):
            raise TypeError(f"phys must be a PhysMemory, not {type(phys).__name__}")
        m = machine if machine is not None else current_machine()
        self.machine = m
        self.phys = phys
        self.name = name
        if region is None:
            rams = [r for r in phys.regions if r.kind is MemKind.RAM]
            if not rams:
                raise DmaBufError(errno.EINVAL, "MmStruct: the physical memory has no RAM region")
            region = rams[0]
        elif isinstance(region, str):
            region = phys.region(region)
        if region.kind is not MemKind.RAM:
            raise DmaBufError(errno.EINVAL, f"anonymous memory must come from RAM, not "
                              f"{region.name} ({region.kind.value})")
        self.region = region
        self.remap: MemRemap = memremap_registry(phys)
        self.anon_owner = phys.new_owner(f"anon:{name}")
        self.mmap_lock = _RwSem(m, f"{name}.mmap_lock")
        self.ptl = m.sched.lock(f"{name}.page_table_lock")
        self._ptl_cond = m.sched.condition(self.ptl, f"{name}.migration_wait")
        #: The lockdep pseudo-lock of ``__mmu_notifier_invalidate_range_start_map``.
        self.range_start_map = object()
        self._subs: MmuNotifierSubscriptions | None = None
        self._subs_lock = threading.Lock()
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        self.users = 1
        self.mmap_base = _DEFAULT_MMAP_BASE
        self.task_size = _TASK_SIZE
        # FOLL_PIN bookkeeping of anonymous / file pages (ZONE_DEVICE pages use pgmap refs):
        self._pin_pfn = np.zeros(0, dtype=np.uint64)
        self._pin_cnt = np.zeros(0, dtype=np.int64)
        self._orphans = np.zeros(0, dtype=np.uint64)   # anon pages unmapped while pinned
        self.stats = {"faults": 0, "anon_pages": 0, "zero_maps": 0, "cow": 0,
                      "migrate_to_ram": 0, "migration_waits": 0}

    def __repr__(self) -> str:
        return f"<MmStruct {self.name}: {len(self.vmas)} VMAs>"

    # ------------------------------------------------------------------ notifiers
    def notifier_subscriptions(self, create: bool = True) -> MmuNotifierSubscriptions | None:
        """``mm->notifier_subscriptions`` (allocated on first registration when ``create``).

        Kernel: include/linux/mm_types.h, mm_struct.notifier_subscriptions.
        """
        if self._subs is None and create:
            with self._subs_lock:
                if self._subs is None:
                    self._subs = MmuNotifierSubscriptions(self)
        return self._subs

    # ------------------------------------------------------------------ locks
    def mmap_read_lock(self) -> None:
        """``mmap_read_lock()``: take the mmap semaphore for reading (may sleep).

        Kernel: include/linux/mmap_lock.h, mmap_read_lock().
        """
        self.mmap_lock.down_read()

    def mmap_read_unlock(self) -> None:
        """``mmap_read_unlock()``.

        Kernel: include/linux/mmap_lock.h, mmap_read_unlock().
        """
        self.mmap_lock.up_read()

    def mmap_write_lock(self) -> None:
        """``mmap_write_lock()``: take the mmap semaphore for writing (may sleep).

        Kernel: include/linux/mmap_lock.h, mmap_write_lock().
        """
        self.mmap_lock.down_write()

    def mmap_write_unlock(self) -> None:
        """``mmap_write_unlock()``.

        Kernel: include/linux/mmap_lock.h, mmap_write_unlock().
        """
        self.mmap_lock.up_write()

    @contextmanager
    def read_locked(self) -> Iterator[MmStruct]:
        """``with mm.read_locked():`` — mmap_read_lock … mmap_read_unlock.

        Kernel: include/linux/mmap_lock.h, mmap_read_lock() / mmap_read_unlock().
        """
        self.mmap_read_lock()
        try:
            yield self
        finally:
            self.mmap_read_unlock()

    @contextmanager
    def write_locked(self) -> Iterator[MmStruct]:
        """``with mm.write_locked():`` — mmap_write_lock … mmap_write_unlock.

        Kernel: include/linux/mmap_lock.h, mmap_write_lock() / mmap_write_unlock().
        """
        self.mmap_write_lock()
        try:
            yield self
        finally:
            self.mmap_write_unlock()

    def assert_locked(self, what: str = "") -> None:
        """``mmap_assert_locked()`` (lockdep): the caller holds the mmap lock.

        Kernel: include/linux/mmap_lock.h, mmap_assert_locked().
        """
        self.machine.lockdep.assert_held(self.mmap_lock, "mmap_assert_locked",
                                         what or f"{self.name}.mmap_lock")

    @contextmanager
    def pt_locked(self) -> Iterator[None]:
        """Hold the page-table lock (``pte_offset_map_lock``).

        Kernel: include/linux/mm.h, pte_offset_map_lock() / pte_unmap_unlock().
        """
        ld = self.machine.lockdep
        ld.acquire(self.ptl, "ptlock", spin=True)
        self.ptl.acquire()
        try:
            yield
        finally:
            self.ptl.release()
            ld.release(self.ptl, "ptlock")

    def _ptl_wait(self, what: str) -> None:
        """Sleep on the migration wait queue; call with the PTL held (it is dropped meanwhile)."""
        ld = self.machine.lockdep
        ld.release(self.ptl, "ptlock")
        try:
            self._ptl_cond.wait(what=what)
        finally:
            ld.acquire(self.ptl, "ptlock", spin=True, trylock=True)

    def wake_migration_waiters(self) -> None:
        """Wake threads waiting on migration entries (``folio_unlock`` of migrated folios).

        Kernel: mm/filemap.c, folio_unlock() of migrated folios (wakes migration_entry_wait()).
        """
        with self.pt_locked():
            self._ptl_cond.notify_all()

    # ------------------------------------------------------------------ VMA lookup
    def _reindex(self) -> None:
        self.vmas.sort(key=lambda v: v.start)
        self._starts = [v.start for v in self.vmas]

    def find_vma(self, addr: int) -> Vma | None:
        """The first VMA with ``end > addr`` — ``find_vma()`` (it may start above ``addr``).

        Context: the kernel requires the mmap lock (read or write); the model does not assert it.
        Kernel: mm/mmap.c, find_vma().
        """
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self.vmas[i].end > addr:
            return self.vmas[i]
        if i + 1 < len(self.vmas):
            return self.vmas[i + 1]
        return None

    def vma_lookup(self, addr: int) -> Vma | None:
        """The VMA containing ``addr`` or None — ``vma_lookup()``.

        Context: the kernel requires the mmap lock (read or write); the model does not assert it.
        Kernel: include/linux/mm.h, vma_lookup().
        """
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self.vmas[i].start <= addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        """VMAs intersecting ``[start, end)``, in address order.

        Kernel: include/linux/mm.h, for_each_vma_range().
        """
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        for v in self.vmas[i:]:
            if v.start >= end:
                break
            if v.end > start:
                out.append(v)
        return out

    def _covering(self, start: int, end: int) -> list[tuple[Vma, int, int]]:
        """``(vma, first index, last index)`` chunks covering ``[start, end)``; EFAULT on a gap."""
        out = []
        pos = start
        for v in self.vmas_in(start, end):
            if v.start > pos:
                break
            hi = min(end, v.end)
            out.append((v, v.index(pos), v.index(hi - 1) + 1))
            pos = hi
            if pos >= end:
                break
        if pos < end:
            raise DmaBufError(errno.EFAULT, f"{self.name}: address {pos:#x} is not mapped "
                              "(SIGSEGV)")
        return out

    # ------------------------------------------------------------------ mmap
    def _get_unmapped_area(self, length: int) -> int:
        """Top-down search below ``mmap_base`` — ``get_unmapped_area()``."""
        top = self.mmap_base
        for v in reversed(self.vmas):
            if v.start >= top:
                continue
            if v.end <= top - length:
                break
            top = v.start
        if top - length < PAGE_SIZE * 16:
            raise DmaBufError(errno.ENOMEM, f"{self.name}: no free virtual range of {length:#x}")
        return top - length

    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE,
             flags: int = MAP_PRIVATE | MAP_ANONYMOUS, *, file: Any = None, offset: int = 0,
             addr: int | None = None, name: str = "") -> int:
        """Map memory into the address space — ``mmap(2)`` / ``do_mmap()``.

        Args:
            length: bytes (> 0; rounded up to pages).
            prot: ``PROT_*``.
            flags: ``MAP_SHARED`` or ``MAP_PRIVATE`` (exactly one), optionally ``MAP_ANONYMOUS``,
                ``MAP_FIXED``, ``MAP_POPULATE``.
            file: the file for non-anonymous mappings: a :class:`MemFd`, or a driver file — any
                object with ``mmap(vma)`` (its ``f_op->mmap``, called with the VMA set up and the
                mmap lock held; it may set flags, ``vm_ops`` and insert pages).
            offset: file offset (page aligned).
            addr: with ``MAP_FIXED``: the address (page aligned; what was mapped there is
                unmapped first). Otherwise ignored (the model picks top-down).
            name: label of the VMA.
        Context: takes ``mmap_lock`` for writing; may sleep.
        Returns: the start address.
        Raises:
            DmaBufError(EINVAL): zero length, unaligned offset/addr, neither or both of
                MAP_SHARED/MAP_PRIVATE, what the driver's mmap raises.
            DmaBufError(EBADF): no file for a non-anonymous mapping.
            DmaBufError(EPERM): writable shared mapping of a write-sealed memfd.
            DmaBufError(EACCES): ``PROT_WRITE`` + ``MAP_SHARED`` of a file the driver marked
                read-only (no ``VM_MAYWRITE``).
            DmaBufError(ENOMEM): no free virtual range.
        Kernel: mm/mmap.c, do_mmap(), mmap_region().
        """
        length = _int(length, "length")
        offset = _int(offset, "offset")
        prot = _int(prot, "prot")
        flags = _int(flags, "flags")
        if length <= 0:
            raise DmaBufError(errno.EINVAL, "mmap: length must be > 0")
        if offset < 0 or offset % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"mmap: offset {offset:#x} must be page aligned")
        kind = flags & (MAP_SHARED | MAP_PRIVATE)
        if kind not in (MAP_SHARED, MAP_PRIVATE):
            raise DmaBufError(errno.EINVAL, "mmap: exactly one of MAP_SHARED and MAP_PRIVATE")
        if self.users <= 0:
            raise DmaBufError(errno.EINVAL, f"{self.name} has exited")
        length = -(-length // PAGE_SIZE) * PAGE_SIZE
        anon = bool(flags & MAP_ANONYMOUS)
        if anon:
            file = None
            offset = 0
        elif file is None:
            raise DmaBufError(errno.EBADF, "mmap: a file is needed without MAP_ANONYMOUS")
        vm_flags = calc_vm_prot_bits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        if kind == MAP_SHARED:
            vm_flags |= VM_SHARED | VM_MAYSHARE
        fileref: _FileRef | None = None
        owned: MemFd | None = None
        if anon and kind == MAP_SHARED:
            owned = file = MemFd(self.phys, "dev/zero (deleted)", 0, region=self.region)
            file.ftruncate(length)
        if isinstance(file, MemFd):
            writable = kind == MAP_SHARED and bool(prot & PROT_WRITE)
            mapping = file.mmap(offset, length, writable=writable)
            fileref = _FileRef(mapping, owned)
            if kind == MAP_SHARED and file.get_seals() & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
                vm_flags &= ~VM_MAYWRITE        # memfd_check_seals_mmap(): never writable
        self.mmap_write_lock()
        try:
            if flags & MAP_FIXED:
                if addr is None:
                    raise DmaBufError(errno.EINVAL, "mmap: MAP_FIXED needs an address")
                addr = _int(addr, "addr")
                if addr % PAGE_SIZE or addr <= 0 or addr + length > self.task_size:
                    raise DmaBufError(errno.EINVAL, f"mmap: MAP_FIXED address {addr:#x} must be "
                                      "page aligned and inside the user address space")
                self._munmap_locked(addr, length)
                start = addr
            else:
                start = self._get_unmapped_area(length)
            vma = Vma(self, start, start + length, vm_flags, pgoff=offset >> PAGE_SHIFT,
                      file=file, name=name or ("anon" if anon and kind == MAP_PRIVATE else ""))
            vma._fileref = fileref
            if fileref is not None:
                fileref.vmas.append(vma)
            if file is not None and not isinstance(file, MemFd):
                mmap_fn = getattr(file, "mmap", None)
                if not callable(mmap_fn):
                    raise DmaBufError(errno.ENODEV, f"mmap: {file!r} has no mmap method")
                self.vmas.append(vma)
                self._reindex()
                try:
                    mmap_fn(vma)
                except BaseException:
                    self._zap(vma, 0, vma.npages, MmuNotifyEvent.MMU_NOTIFY_UNMAP)
                    self.vmas.remove(vma)
                    self._reindex()
                    raise
                if (vma.flags & VM_WRITE) and kind == MAP_SHARED and not \
                        (vma.flags & VM_MAYWRITE):
                    self._zap(vma, 0, vma.npages, MmuNotifyEvent.MMU_NOTIFY_UNMAP)
                    self.vmas.remove(vma)
                    self._reindex()
                    raise DmaBufError(errno.EACCES, "mmap: PROT_WRITE shared mapping of a "
                                      "read-only file")
            else:
                self.vmas.append(vma)
                self._reindex()
        except BaseException:
            if fileref is not None and fileref.mapping is not None:
                fileref.mapping.munmap()
            raise
        finally:
            self.mmap_write_unlock()
        self.machine.trace.emit("mm_mmap", mm=self.name, start=start, length=length,
                                flags=vm_flags, kind=vma.kind)
        if flags & MAP_POPULATE:
            self.populate(start, length, write=bool(prot & PROT_WRITE))
        return start

    def populate(self, addr: int, length: int, *, write: bool = True) -> None:
        """Fault in every page of the range — ``mm_populate()`` / ``MADV_POPULATE_(READ|WRITE)``.

        Raises: DmaBufError(EFAULT): unmapped range / SIGBUS; (EPERM) write to a read-only VMA.
        Kernel: mm/gup.c, populate_vma_page_range(); mm/madvise.c, madvise_populate().
        """
        addr, end = self._span(addr, length)
        with self.read_locked():
            for vma, i0, i1 in self._covering(addr, end):
                if write and not vma.flags & VM_WRITE:
                    raise DmaBufError(errno.EPERM, f"populate: write to read-only {vma!r}")
                self._fault_until_ok(vma, i0, i1, write)

    def _span(self, addr: int, length: int) -> tuple[int, int]:
        addr = _int(addr, "addr")
        length = _int(length, "length")
        if length < 0 or addr < 0:
            raise DmaBufError(errno.EINVAL, "negative address or length")
        start = addr & ~(PAGE_SIZE - 1)
        end = -(-(addr + length) // PAGE_SIZE) * PAGE_SIZE
        return start, end

    # ------------------------------------------------------------------ munmap / mprotect / madvise
    def _split(self, vma: Vma, at: int) -> Vma:
        """Split ``vma`` at ``at``; return the upper half (``__split_vma``)."""
        k = vma.index(at)
        hi = Vma(self, at, vma.end, vma.flags, pgoff=vma.pgoff + k, file=vma.file,
                 vm_ops=vma.vm_ops, name=vma.name)
        hi.pfn = vma.pfn[k:].copy()
        hi.pte = vma.pte[k:].copy()
        hi.private = vma.private
        if vma._fileref is not None:
            vma._fileref.vmas.append(hi)
            hi._fileref = vma._fileref
        vma.pfn = vma.pfn[:k].copy()
        vma.pte = vma.pte[:k].copy()
        vma.end = at
        self.vmas.append(hi)
        self._reindex()
        return hi

    def _isolate(self, start: int, end: int) -> list[Vma]:
        """Split VMAs so that ``[start, end)`` is covered by whole VMAs; return them."""
        out = []
        for v in self.vmas_in(start, end):
            cur = v
            if cur.start < start:
                cur = self._split(cur, start)
            if cur.end > end:
                self._split(cur, end)
            out.append(cur)
        return out

    def munmap(self, addr: int, length: int) -> None:
        """Unmap ``[addr, addr + length)`` — ``munmap(2)``.

        Pages are released (anonymous pages freed and poisoned unless pinned; ZONE_DEVICE page
        references dropped, so p2pmem returns to its pool) after an ``MMU_NOTIFY_UNMAP``
        invalidation of the range.

        Context: takes ``mmap_lock`` for writing; may sleep (notifier callbacks).
        Raises: DmaBufError(EINVAL): unaligned address, zero length.
        Kernel: mm/mmap.c, do_vmi_munmap(); mm/memory.c, unmap_vmas().
        """
        addr = _int(addr, "addr")
        length = _int(length, "length")
        if addr % PAGE_SIZE or length <= 0:
            raise DmaBufError(errno.EINVAL, "munmap: address must be page aligned, length > 0")
        length = -(-length // PAGE_SIZE) * PAGE_SIZE
        with self.write_locked():
            self._munmap_locked(addr, length)

    def _munmap_locked(self, addr: int, length: int) -> None:
        end = addr + length
        vmas = self._isolate(addr, end)
        if not vmas:
            return
        rng = MmuNotifierRange(self, addr, end, MmuNotifyEvent.MMU_NOTIFY_UNMAP)
        mmu_notifier_invalidate_range_start(rng)
        try:
            for v in vmas:
                self._zap_pages(v, 0, v.npages)
        finally:
            mmu_notifier_invalidate_range_end(rng)
        for v in vmas:
            self._close_vma(v)
        self.machine.trace.emit("mm_munmap", mm=self.name, start=addr, length=length)

    def _close_vma(self, v: Vma) -> None:
        if v in self.vmas:
            self.vmas.remove(v)
            self._reindex()
        if v.vm_ops is not None:
            v.vm_ops.close(v)
        fr = v._fileref
        v._fileref = None
        if fr is not None:
            if v in fr.vmas:
                fr.vmas.remove(v)
            if not fr.vmas:
                if fr.mapping is not None:
                    fr.mapping.munmap()
                if fr.owned is not None:
                    fr.owned.release()

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        """Change protections — ``mprotect(2)``.

        Removing write permission clears the write bit of every PTE (an
        ``MMU_NOTIFY_PROTECTION_VMA`` invalidation first); adding it leaves PTEs read-only until
        a write fault.

        Raises:
            DmaBufError(EINVAL): unaligned address.
            DmaBufError(ENOMEM): part of the range is not mapped.
            DmaBufError(EACCES): ``PROT_WRITE`` on a shared mapping without ``VM_MAYWRITE``.
        Kernel: mm/mprotect.c, do_mprotect_pkey(), mprotect_fixup(), change_protection().
        """
        addr = _int(addr, "addr")
        length = _int(length, "length")
        prot = _int(prot, "prot")
        if addr % PAGE_SIZE or length < 0:
            raise DmaBufError(errno.EINVAL, "mprotect: address must be page aligned")
        if length == 0:
            return
        end = addr + -(-length // PAGE_SIZE) * PAGE_SIZE
        with self.write_locked():
            try:
                self._covering(addr, end)
            except DmaBufError:
                raise DmaBufError(errno.ENOMEM, f"mprotect: [{addr:#x}, {end:#x}) is not fully "
                                  "mapped") from None
            newbits = calc_vm_prot_bits(prot)
            for v in self.vmas_in(addr, end):
                if (newbits & VM_WRITE) and not (v.flags & VM_MAYWRITE):
                    raise DmaBufError(errno.EACCES, f"mprotect: {v!r} may not become writable")
            vmas = self._isolate(addr, end)
            rng = MmuNotifierRange(self, addr, end, MmuNotifyEvent.MMU_NOTIFY_PROTECTION_VMA)
            mmu_notifier_invalidate_range_start(rng)
            try:
                with self.pt_locked():
                    for v in vmas:
                        v.flags = (v.flags & ~(VM_READ | VM_WRITE | VM_EXEC)) | newbits
                        if not newbits & VM_WRITE:
                            v.pte &= np.uint16(~PTE_WRITE & 0xFFFF)
            finally:
                mmu_notifier_invalidate_range_end(rng)

    def madvise(self, addr: int, length: int, advice: int) -> None:
        """``madvise(2)``; only ``MADV_DONTNEED`` is modelled (zap the pages, keep the VMA).

        Raises:
            DmaBufError(EINVAL): unaligned address, other advice, a VM_PFNMAP / VM_LOCKED VMA.
            DmaBufError(ENOMEM): part of the range is not mapped.
        Kernel: mm/madvise.c, madvise_dontneed_free(), zap_page_range_single().
        """
        addr = _int(addr, "addr")
        length = _int(length, "length")
        if advice != MADV_DONTNEED:
            raise DmaBufError(errno.EINVAL, f"madvise: advice {advice!r} is not modelled "
                              "(only MADV_DONTNEED)")
        if addr % PAGE_SIZE or length < 0:
            raise DmaBufError(errno.EINVAL, "madvise: address must be page aligned")
        if length == 0:
            return
        end = addr + -(-length // PAGE_SIZE) * PAGE_SIZE
        with self.read_locked():
            try:
                chunks = self._covering(addr, end)
            except DmaBufError:
                raise DmaBufError(errno.ENOMEM, f"madvise: [{addr:#x}, {end:#x}) is not fully "
                                  "mapped") from None
            for v, _i0, _i1 in chunks:
                if v.flags & (VM_PFNMAP | VM_LOCKED | VM_HUGETLB):
                    raise DmaBufError(errno.EINVAL, f"madvise(MADV_DONTNEED) on {v!r}")
            rng = MmuNotifierRange(self, addr, end, MmuNotifyEvent.MMU_NOTIFY_CLEAR)
            mmu_notifier_invalidate_range_start(rng)
            try:
                for v, i0, i1 in chunks:
                    self._zap_pages(v, i0, i1)
            finally:
                mmu_notifier_invalidate_range_end(rng)

    def _zap(self, vma: Vma, i0: int, i1: int, event: MmuNotifyEvent) -> None:
        rng = MmuNotifierRange(self, vma.start + (i0 << PAGE_SHIFT),
                               vma.start + (i1 << PAGE_SHIFT), event)
        mmu_notifier_invalidate_range_start(rng)
        try:
            self._zap_pages(vma, i0, i1)
        finally:
            mmu_notifier_invalidate_range_end(rng)

    def _zap_pages(self, vma: Vma, i0: int, i1: int) -> None:
        """Clear PTEs ``[i0, i1)`` of ``vma`` and release what they held (``zap_pte_range``).

        Call between notifier start and end, without the PTL.
        """
        with self.pt_locked():
            pte = vma.pte[i0:i1].copy()
            pfn = vma.pfn[i0:i1].copy()
            vma.pte[i0:i1] = 0
            vma.pfn[i0:i1] = 0
        self._release(pte, pfn)

    def _release(self, pte: np.ndarray, pfn: np.ndarray) -> None:
        """Drop what the zapped entries ``(pte, pfn)`` referenced."""
        if pte.size == 0:
            return
        present = (pte & PTE_PRESENT) != 0
        anon = present & ((pte & PTE_ANON) != 0)
        if bool(anon.any()):
            self._free_anon(pfn[anon] << _U_SHIFT)
        dev = (present & ((pte & PTE_DEVMAP) != 0)) | ((pte & PTE_DEVICE_PRIVATE) != 0)
        if bool(dev.any()):
            self._put_device_pages(pfn[dev] << _U_SHIFT)

    def _free_anon(self, paddrs: np.ndarray) -> None:
        """Free anonymous pages; pinned ones become orphans freed at their last unpin."""
        if paddrs.size == 0:
            return
        with self.pt_locked():
            pinned = self._pinned_mask(paddrs >> _U_SHIFT)
            if bool(pinned.any()):
                self._orphans = np.union1d(self._orphans, paddrs[pinned] >> _U_SHIFT)
        free = paddrs[~pinned]
        if free.size:
            self.phys.free(page_ranges(np.sort(free)))

    def _put_device_pages(self, paddrs: np.ndarray) -> None:
        idx = self.remap.lookup(paddrs)
        if bool(np.any(idx < 0)):
            bad = int(paddrs[int(np.argmax(idx < 0))])
            raise ContractViolation("zap_pte_range", f"{self.name}: device entry {bad:#x} "
                                    "without a dev_pagemap")
        for i in np.unique(idx).tolist():
            self.remap.pgmaps[i].put_pages(paddrs[idx == i])

    # ------------------------------------------------------------------ pins (FOLL_PIN)
    def _pinned_mask(self, pfns: np.ndarray) -> np.ndarray:
        if self._pin_pfn.size == 0:
            return np.zeros(pfns.size, dtype=bool)
        i = np.searchsorted(self._pin_pfn, pfns)
        i = np.minimum(i, self._pin_pfn.size - 1)
        return self._pin_pfn[i] == pfns

    def _pin_add(self, pfns: np.ndarray) -> None:
        """Count one pin per entry (call with the PTL held)."""
        allp = np.concatenate((self._pin_pfn, pfns.astype(np.uint64)))
        allc = np.concatenate((self._pin_cnt, np.ones(pfns.size, dtype=np.int64)))
        u, inv = np.unique(allp, return_inverse=True)
        self._pin_pfn = u
        self._pin_cnt = np.bincount(inv, weights=allc, minlength=u.size).astype(np.int64)

    def _pin_sub(self, pfns: np.ndarray) -> np.ndarray:
        """Drop one pin per entry; return the orphan pfns that reached zero (PTL held)."""
        u, cnt = np.unique(pfns.astype(np.uint64), return_counts=True)
        i = np.searchsorted(self._pin_pfn, u)
        ok = (i < self._pin_pfn.size)
        ok[ok] = self._pin_pfn[i[ok]] == u[ok]
        if not bool(ok.all()):
            raise ContractViolation("unpin_user_pages", f"{self.name}: unpin of a page that is "
                                    "not pinned (double unpin?)")
        self._pin_cnt[i] -= cnt
        if bool(np.any(self._pin_cnt[i] < 0)):
            self._pin_cnt[i] += cnt
            raise ContractViolation("unpin_user_pages", f"{self.name}: more unpins than pins")
        zero = self._pin_cnt == 0
        gone = self._pin_pfn[zero]
        self._pin_pfn = self._pin_pfn[~zero]
        self._pin_cnt = self._pin_cnt[~zero]
        if self._orphans.size and gone.size:
            dead = np.intersect1d(gone, self._orphans)
            self._orphans = np.setdiff1d(self._orphans, dead)
            return dead
        return np.zeros(0, dtype=np.uint64)

    @property
    def pinned_pages(self) -> int:
        """Distinct anonymous/file pages with at least one FOLL_PIN pin."""
        return int(self._pin_pfn.size)

    # ------------------------------------------------------------------ faults
    def _fault_until_ok(self, vma: Vma, i0: int, i1: int, write: bool,
                        flags: int = 0) -> None:
        """Fault pages of ``vma[i0:i1]`` until all are present (and writable when ``write``)."""
        for _ in range(10_000):
            with self.pt_locked():
                need = _needs_fault(vma, i0, i1, write)
            if not bool(need.any()):
                return
            idx = np.flatnonzero(need) + i0
            ret = self._fault_pages(vma, idx, write, flags)
            if ret & VM_FAULT_ERROR:
                raise DmaBufError(errno.EFAULT, f"{self.name}: fault at "
                                  f"{vma.start + (int(idx[0]) << PAGE_SHIFT):#x} failed "
                                  f"({_fault_text(ret)})")
        raise ContractViolation("handle_mm_fault", f"{self.name}: a fault did not make progress "
                                "after 10000 retries")

    def _fault_pages(self, vma: Vma, idx: np.ndarray, write: bool, flags: int = 0) -> int:
        """``handle_mm_fault()`` for many pages of one VMA (vectorised); call with mmap_lock held.

        Returns ``VM_FAULT_*`` bits: 0 when the pages were handled, ``VM_FAULT_RETRY`` when the
        caller must re-examine the entries (a migration was waited for, a device page was
        migrated back, or the entries changed meanwhile), error bits otherwise.
        """
        if idx.size == 0:
            return 0
        self.stats["faults"] += int(idx.size)
        if write and not vma.flags & VM_WRITE:
            return VM_FAULT_SIGSEGV
        if not write and not vma.flags & (VM_READ | VM_WRITE):
            return VM_FAULT_SIGSEGV
        kind = vma.kind
        if kind == "file":
            bad = self._file_check(vma, idx)
            if bad:
                return bad
        with self.pt_locked():
            pte = vma.pte[idx].copy()
            pfn = vma.pfn[idx].copy()
            migr = (pte & PTE_MIGRATION) != 0
            if bool(migr.any()):
                self.stats["migration_waits"] += 1
                self._ptl_wait(f"migration_entry_wait({self.name})")
                return VM_FAULT_RETRY
        devpriv = (pte & PTE_DEVICE_PRIVATE) != 0
        if bool(devpriv.any()):
            return self._fault_device_private(vma, idx[devpriv], pfn[devpriv], write, flags)
        none = pte == 0
        if bool(none.any()):
            ret = self._fault_none(vma, idx[none], write)
            if ret:
                return ret
        if write:
            ro = ((pte & PTE_PRESENT) != 0) & ((pte & PTE_WRITE) == 0)
            if bool(ro.any()):
                return self._fault_wp(vma, idx[ro], pte[ro], pfn[ro])
        return 0

    def _file_check(self, vma: Vma, idx: np.ndarray) -> int:
        """SIGBUS beyond EOF; zap PTEs whose page left the page cache (truncation)."""
        f = vma.file
        assert isinstance(f, MemFd)
        fidx = idx.astype(np.int64) + vma.pgoff
        npages = -(-f.size // PAGE_SIZE)
        if bool(np.any(fidx >= npages)):
            return VM_FAULT_SIGBUS
        return 0

    def _fault_device_private(self, vma: Vma, idx: np.ndarray, pfn: np.ndarray, write: bool,
                              flags: int) -> int:
        """``do_swap_page()`` on device-private entries: ``pgmap->ops->migrate_to_ram``."""
        done: set[int] = set()
        for i, p in zip(idx.tolist(), pfn.tolist(), strict=True):
            with self.pt_locked():
                still = bool(vma.pte[i] & PTE_DEVICE_PRIVATE) and int(vma.pfn[i]) == p
            if not still or p in done:
                continue
            paddr = p << PAGE_SHIFT
            pgmap = self.remap.pgmap_of(paddr)
            if pgmap is None or pgmap.type is not MemoryType.MEMORY_DEVICE_PRIVATE:
                return VM_FAULT_SIGBUS
            self.stats["migrate_to_ram"] += 1
            vmf = VmFault(vma, vma.start + (i << PAGE_SHIFT),
                          flags | (FAULT_FLAG_WRITE if write else 0), paddr)
            ret = int(pgmap.ops.migrate_to_ram(vmf))
            if ret & VM_FAULT_ERROR:
                return ret
            done.add(p)
        return VM_FAULT_RETRY

    def _alloc_anon(self, n: int) -> np.ndarray:
        """``n`` zero-filled RAM pages owned by this mm (physical addresses)."""
        r = self.phys.alloc(self.region, n << PAGE_SHIFT, self.anon_owner, zero=True)
        self.stats["anon_pages"] += n
        return pages_of_ranges(r)

    def _fault_none(self, vma: Vma, idx: np.ndarray, write: bool) -> int:
        """Populate empty entries: anonymous, zero page, or page cache (``do_pte_missing``)."""
        kind = vma.kind
        if kind in ("pfnmap", "mixedmap"):
            return VM_FAULT_SIGBUS
        private = not vma.flags & VM_SHARED
        if kind == "anon":
            if write:
                new = self._alloc_anon(int(idx.size))
                bits = PTE_PRESENT | PTE_ANON | (PTE_WRITE if vma.flags & VM_WRITE else 0)
                self._install(vma, idx, new, bits)
            else:
                z = np.uint64(self.remap.zero_page())
                self.stats["zero_maps"] += int(idx.size)
                with self.pt_locked():
                    ok = vma.pte[idx] == 0
                    vma.pfn[idx[ok]] = z >> _U_SHIFT
                    vma.pte[idx[ok]] = PTE_PRESENT | PTE_SPECIAL | PTE_ZERO
            return 0
        # file
        f = vma.file
        assert isinstance(f, MemFd)
        cache = f.filemap_get(idx.astype(np.int64) + vma.pgoff)
        if not bool(cache.all()):
            return VM_FAULT_SIGBUS            # truncated since _file_check: beyond EOF now
        if private and write:
            new = self._alloc_anon(int(idx.size))
            self.phys.copy(page_ranges(new), page_ranges(cache))
            self._install(vma, idx, new, PTE_PRESENT | PTE_ANON | PTE_WRITE)
            return 0
        bits = PTE_PRESENT | PTE_FILE
        if not private and vma.flags & VM_WRITE:
            bits |= PTE_WRITE
        with self.pt_locked():
            ok = vma.pte[idx] == 0
            vma.pfn[idx[ok]] = cache[ok] >> _U_SHIFT
            vma.pte[idx[ok]] = bits
        return 0

    def _install(self, vma: Vma, idx: np.ndarray, new: np.ndarray, bits: int) -> None:
        """Install fresh anon pages where the entries are still none; free the losers."""
        with self.pt_locked():
            ok = vma.pte[idx] == 0
            vma.pfn[idx[ok]] = new[ok] >> _U_SHIFT
            vma.pte[idx[ok]] = bits
        if not bool(ok.all()):
            self.phys.free(page_ranges(np.sort(new[~ok])))

    def _fault_wp(self, vma: Vma, idx: np.ndarray, pte: np.ndarray, pfn: np.ndarray) -> int:
        """Write to read-only present entries: reuse or copy (``do_wp_page``)."""
        shared = bool(vma.flags & VM_SHARED)
        zero = (pte & PTE_ZERO) != 0
        file_priv = ((pte & PTE_FILE) != 0) & (not shared)
        cow = zero | file_priv
        reuse = ~cow
        if bool(reuse.any()):
            with self.pt_locked():
                r = idx[reuse]
                same = (vma.pfn[r] == pfn[reuse]) & ((vma.pte[r] & PTE_PRESENT) != 0)
                vma.pte[r[same]] |= np.uint16(PTE_WRITE)
        if bool(cow.any()):
            self._cow(vma, idx[cow], pte[cow], pfn[cow])
        return 0

    def _cow(self, vma: Vma, idx: np.ndarray, pte: np.ndarray, pfn: np.ndarray) -> None:
        """``wp_page_copy()``: new anon pages with the old contents, under MMU_NOTIFY_CLEAR."""
        self.stats["cow"] += int(idx.size)
        new = self._alloc_anon(int(idx.size))
        old = pfn << _U_SHIFT
        notzero = (pte & PTE_ZERO) == 0
        if bool(notzero.any()):
            self.phys.copy(page_ranges(new[notzero]), page_ranges(old[notzero]))
        lo = vma.start + (int(idx.min()) << PAGE_SHIFT)
        hi = vma.start + ((int(idx.max()) + 1) << PAGE_SHIFT)
        rng = MmuNotifierRange(self, lo, hi, MmuNotifyEvent.MMU_NOTIFY_CLEAR)
        mmu_notifier_invalidate_range_start(rng)
        try:
            with self.pt_locked():
                same = (vma.pfn[idx] == pfn) & (vma.pte[idx] == pte)
                vma.pfn[idx[same]] = new[same] >> _U_SHIFT
                vma.pte[idx[same]] = PTE_PRESENT | PTE_ANON | PTE_WRITE
        finally:
            mmu_notifier_invalidate_range_end(rng)
        if not bool(same.all()):
            self.phys.free(page_ranges(np.sort(new[~same])))

    # ------------------------------------------------------------------ CPU access
    def _access(self, addr: int, length: int, write: bool,
                body: Callable[[np.ndarray], Any]) -> Any:
        """Fault the range in, then run ``body(phys_ranges)`` under the PTL."""
        if length == 0:
            return body(np.zeros(0, dtype=RANGE_DTYPE))
        start, end = self._span(addr, length)
        with self.read_locked():
            for _ in range(10_000):
                chunks = self._covering(start, end)
                for vma, _i0, _i1 in chunks:
                    if write and not vma.flags & VM_WRITE:
                        raise DmaBufError(errno.EFAULT, f"{self.name}: write to read-only "
                                          f"{vma!r} at {addr:#x} (SIGSEGV)")
                    if not write and not vma.flags & (VM_READ | VM_WRITE):
                        raise DmaBufError(errno.EFAULT, f"{self.name}: read of PROT_NONE "
                                          f"{vma!r} (SIGSEGV)")
                todo: list[tuple[Vma, np.ndarray]] = []
                for vma, i0, i1 in chunks:
                    if vma.kind == "file":
                        self._revalidate_file(vma, i0, i1)
                with self.pt_locked():
                    for vma, i0, i1 in chunks:
                        need = _needs_fault(vma, i0, i1, write)
                        if bool(need.any()):
                            todo.append((vma, np.flatnonzero(need) + i0))
                    if not todo:
                        pfns = np.concatenate([v.pfn[i0:i1] for v, i0, i1 in chunks])
                        r = np.empty(pfns.size, dtype=RANGE_DTYPE)
                        r["addr"] = pfns << _U_SHIFT
                        r["len"] = PAGE_SIZE
                        r = slice_ranges(coalesce(r), addr - start, length)
                        return body(r)
                for vma, idx in todo:
                    ret = self._fault_pages(vma, idx, write, FAULT_FLAG_USER)
                    if ret & VM_FAULT_ERROR:
                        raise DmaBufError(errno.EFAULT, f"{self.name}: access at {addr:#x} "
                                          f"failed: {_fault_text(ret)}")
        raise ContractViolation("handle_mm_fault", f"{self.name}: access at {addr:#x} did not "
                                "make progress")

    def _revalidate_file(self, vma: Vma, i0: int, i1: int) -> None:
        """Zap present file PTEs whose page is no longer in the page cache (truncation)."""
        f = vma.file
        assert isinstance(f, MemFd)
        with self.pt_locked():
            pte = vma.pte[i0:i1]
            isf = (pte & PTE_FILE) != 0
            if not bool(isf.any()):
                return
            idx = np.flatnonzero(isf) + i0
            cur = f.filemap_lookup(idx.astype(np.int64) + vma.pgoff)
            stale = cur != (vma.pfn[idx] << _U_SHIFT)
            if bool(stale.any()):
                vma.pte[idx[stale]] = 0
                vma.pfn[idx[stale]] = 0

    def read(self, addr: int, length: int) -> np.ndarray:
        """CPU reads ``length`` bytes at virtual ``addr`` (faulting pages in) — ``copy_from_user``.

        Context: takes ``mmap_lock`` for reading (the fault path); may sleep.
        Returns: a new ``uint8`` array.
        Raises: DmaBufError(EFAULT): unmapped / PROT_NONE (SIGSEGV), SIGBUS, failed migration.
        Kernel: arch/x86/mm/fault.c, do_user_addr_fault() → handle_mm_fault(); copy_from_user.
        """
        length = _int(length, "length")
        if length < 0:
            raise DmaBufError(errno.EINVAL, "read: negative length")
        return self._access(addr, length, False, self.phys.read)

    def write(self, addr: int, data: Any) -> None:
        """CPU writes ``data`` at virtual ``addr`` (faults, COW, migrate back) — ``copy_to_user``.

        Context: takes ``mmap_lock`` for reading (the fault path); may sleep.
        Raises: DmaBufError(EFAULT): unmapped or read-only (SIGSEGV), SIGBUS.
        Kernel: arch/x86/mm/fault.c, do_user_addr_fault() → handle_mm_fault(); copy_to_user.
        """
        src = as_bytes_array(data)
        self._access(addr, int(src.size), True, lambda r: self.phys.write(r, src))

    def fill(self, addr: int, length: int, byte: int) -> None:
        """CPU ``memset`` of ``[addr, addr + length)``.

        Model-only: a user-space memset through the CPU page tables (faults as a write).
        """
        length = _int(length, "length")
        self._access(addr, length, True, lambda r: self.phys.fill(r, byte))

    def checksum(self, addr: int, length: int) -> int:
        """CRC-32 of the bytes the CPU reads at ``[addr, addr + length)`` (faults as a read).

        Model-only: test helper reading through the CPU page tables.
        """
        length = _int(length, "length")
        if length == 0:
            return zlib.crc32(b"")
        return self._access(addr, length, False, self.phys.checksum)

    # ------------------------------------------------------------------ introspection
    def lookup(self, addr: int, npages: int) -> tuple[np.ndarray, np.ndarray]:
        """Snapshot the entries of ``npages`` pages from ``addr`` (like /proc/pid/pagemap).

        Returns: ``(pfn, pte)`` arrays; unmapped pages read as (0, 0). No fault is taken.

        Kernel: fs/proc/task_mmu.c, pagemap_read() (the /proc/pid/pagemap view).
        """
        start = _int(addr, "addr") & ~(PAGE_SIZE - 1)
        npages = _int(npages, "npages")
        end = start + (npages << PAGE_SHIFT)
        pfn = np.zeros(npages, dtype=np.uint64)
        pte = np.zeros(npages, dtype=np.uint16)
        with self.pt_locked():
            for v in self.vmas_in(start, end):
                lo, hi = max(start, v.start), min(end, v.end)
                a, b = (lo - start) >> PAGE_SHIFT, (hi - start) >> PAGE_SHIFT
                pfn[a:b] = v.pfn[v.index(lo):v.index(hi - 1) + 1]
                pte[a:b] = v.pte[v.index(lo):v.index(hi - 1) + 1]
        return pfn, pte

    def describe(self) -> dict[str, Any]:
        """Snapshot: VMAs, pins, stats, notifier state.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        subs = self._subs
        return {"name": self.name, "users": self.users,
                "vmas": [v.describe() for v in self.vmas], "pinned_pages": self.pinned_pages,
                "orphans": int(self._orphans.size), "stats": dict(self.stats),
                "notifiers": subs.describe() if subs is not None else None}

    # ------------------------------------------------------------------ exit
    def exit(self) -> None:
        """The process exits — ``mmput()`` → ``exit_mmap()``.

        Classic notifiers get ``release``; every VMA is unmapped under ``MMU_NOTIFY_UNMAP``
        invalidations (interval subscribers see them). Idempotent.

        Context: takes ``mmap_lock`` for writing; may sleep (notifier callbacks).
        Kernel: kernel/fork.c, mmput(); mm/mmap.c, exit_mmap().
        """
        if self.users <= 0:
            return
        self.users -= 1
        if self.users:
            return
        mmu_notifier_release(self)
        with self.write_locked():
            if self.vmas:
                lo, hi = self.vmas[0].start, self.vmas[-1].end
                self._munmap_locked(lo, hi - lo)


# ------------------------------------------------------------------------------------------------
# helpers shared with hmm / gup / migrate
# ------------------------------------------------------------------------------------------------


def _needs_fault(vma: Vma, i0: int, i1: int, write: bool) -> np.ndarray:
    """Pages of ``vma[i0:i1]`` a CPU access must fault (call with the PTL held)."""
    pte = vma.pte[i0:i1]
    need = (pte & PTE_PRESENT) == 0
    if write:
        need |= (pte & PTE_WRITE) == 0
    return need


def _fault_text(ret: int) -> str:
    names = [n for b, n in ((VM_FAULT_SIGSEGV, "SIGSEGV"), (VM_FAULT_SIGBUS, "SIGBUS"),
                            (VM_FAULT_OOM, "OOM"), (VM_FAULT_HWPOISON, "HWPOISON")) if ret & b]
    return "|".join(names) or f"{ret:#x}"


def handle_mm_fault(vma: Vma, address: int, flags: int) -> int:
    """Handle one page fault — ``handle_mm_fault()``.

    Args:
        vma: the VMA containing ``address``.
        address: the faulting virtual address.
        flags: ``FAULT_FLAG_*`` (``FAULT_FLAG_WRITE`` for a write).
    Context: the caller holds ``mmap_lock`` (read); may sleep.
    Returns: ``VM_FAULT_*`` bits (0 success, ``VM_FAULT_RETRY`` re-check, error bits).
    Kernel: mm/memory.c, handle_mm_fault().
    """
    mm = vma.mm
    mm.assert_locked()
    if not vma.start <= address < vma.end:
        return VM_FAULT_SIGSEGV
    return mm._fault_pages(vma, np.array([vma.index(address)], dtype=np.int64),
                           bool(flags & FAULT_FLAG_WRITE), flags)


def remap_pfn_range(vma: Vma, addr: int, pfn: int, size: int) -> None:
    """Map raw PFNs (a BAR) into ``vma`` — ``remap_pfn_range()`` / ``io_remap_pfn_range()``.

    Sets ``VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP``; the PTEs are special (no struct
    page), writable if the VMA is. Such a mapping is invisible to HMM and GUP.

    Context: from a driver's ``mmap`` (mmap lock held for writing).
    Raises: DmaBufError(EINVAL): range outside the VMA or unaligned.
    Kernel: mm/memory.c, remap_pfn_range(), remap_pfn_range_notrack().
    """
    addr = _int(addr, "addr")
    pfn = _int(pfn, "pfn")
    size = _int(size, "size")
    if addr % PAGE_SIZE or size <= 0 or size % PAGE_SIZE or addr < vma.start \
            or addr + size > vma.end:
        raise DmaBufError(errno.EINVAL, f"remap_pfn_range: [{addr:#x}, +{size:#x}) is not a "
                          f"page-aligned part of {vma!r}")
    vma.flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
    vma.pgoff = pfn
    i0 = vma.index(addr)
    n = size >> PAGE_SHIFT
    bits = PTE_PRESENT | PTE_SPECIAL | (PTE_WRITE if vma.flags & VM_WRITE else 0)
    with vma.mm.pt_locked():
        vma.pfn[i0:i0 + n] = np.uint64(pfn) + np.arange(n, dtype=np.uint64)
        vma.pte[i0:i0 + n] = bits


def vm_insert_pages(vma: Vma, addr: int, paddrs: Any) -> None:
    """Insert refcounted pages into a driver VMA — ``vm_insert_pages()`` / ``vm_insert_page()``.

    Sets ``VM_MIXEDMAP``. ZONE_DEVICE pages (e.g. P2PDMA) gain one pgmap reference each (the
    mapping's); RAM pages are mapped as they are (the driver keeps them alive). Entries are
    writable if the VMA is.

    Context: from a driver's ``mmap`` (mmap lock held for writing).
    Raises:
        DmaBufError(EINVAL): unaligned / outside the VMA.
        DmaBufError(EBUSY): an entry is already populated.
        ContractViolation: called on a ``VM_PFNMAP`` VMA (the kernel BUG_ONs).
    Kernel: mm/memory.c, vm_insert_page(), vm_insert_pages(), insert_page().
    """
    addr = _int(addr, "addr")
    a = np.atleast_1d(np.asarray(paddrs, dtype=np.uint64))
    if vma.flags & VM_PFNMAP:
        raise ContractViolation("vm_insert_page", f"{vma!r} is VM_PFNMAP")
    if addr % PAGE_SIZE or addr < vma.start or addr + (a.size << PAGE_SHIFT) > vma.end \
            or bool(np.any(a & np.uint64(PAGE_SIZE - 1))):
        raise DmaBufError(errno.EINVAL, "vm_insert_pages: pages and address must be page "
                          f"aligned and inside {vma!r}")
    mm = vma.mm
    idx = mm.remap.lookup(a)
    dev = idx >= 0
    i0 = vma.index(addr)
    sl = slice(i0, i0 + a.size)
    with mm.pt_locked():
        if bool(np.any(vma.pte[sl])):
            raise DmaBufError(errno.EBUSY, "vm_insert_pages: entry already populated")
    for i in np.unique(idx[dev]).tolist():
        mm.remap.pgmaps[i].get_pages(a[idx == i])
    vma.flags |= VM_MIXEDMAP
    bits = np.where(dev, PTE_PRESENT | PTE_DEVMAP, PTE_PRESENT).astype(np.uint16)
    if vma.flags & VM_WRITE:
        bits |= np.uint16(PTE_WRITE)
    with mm.pt_locked():
        vma.pfn[sl] = a >> _U_SHIFT
        vma.pte[sl] = bits


def vm_insert_page(vma: Vma, addr: int, paddr: int) -> None:
    """Insert one page — ``vm_insert_page()`` (see :func:`vm_insert_pages`).

    Kernel: mm/memory.c, vm_insert_page().
    """
    vm_insert_pages(vma, addr, [paddr])


def zap_vma_ptes(vma: Vma, address: int, size: int) -> None:
    """Remove PTEs of part of a driver VMA (revoke) — ``zap_vma_ptes()``.

    Runs an ``MMU_NOTIFY_CLEAR`` invalidation; ZONE_DEVICE references are dropped.
    Raises: DmaBufError(EINVAL): range outside the VMA.
    Kernel: mm/memory.c, zap_vma_ptes().
    """
    address = _int(address, "address")
    size = _int(size, "size")
    if address < vma.start or address + size > vma.end or address % PAGE_SIZE or size <= 0:
        raise DmaBufError(errno.EINVAL, f"zap_vma_ptes: range outside {vma!r}")
    i0 = vma.index(address)
    vma.mm._zap(vma, i0, i0 + (-(-size // PAGE_SIZE)), MmuNotifyEvent.MMU_NOTIFY_CLEAR)
