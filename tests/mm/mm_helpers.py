"""Layer-2 stand-ins for drivers, shared by the mm tests (vma / gup / migrate / hmm).

* :class:`FakeDevmem` — a driver owning device-private memory (a ``MemKind.DEVICE`` region with a
  ``MEMORY_DEVICE_PRIVATE`` pgmap): it migrates ranges in with ``migrate_vma_*`` and implements
  ``migrate_to_ram``, copying with ``PhysMemory.copy`` (the real devices use their DMA engine).
* :class:`FakeP2pmem` — a PCI P2PDMA provider reduced to its pages: a ``MEMORY_DEVICE_PCI_P2PDMA``
  pgmap over an MMIO region and a driver file whose ``mmap`` inserts pages the way
  ``p2pmem_alloc_mmap`` does (page_init, vm_insert_pages, put).
"""

from __future__ import annotations

import numpy as np

from dmabuf.mm import MemKind, PhysMemory
from dmabuf.mm.memremap import (
    DevPagemap,
    DevPagemapOps,
    MemoryType,
    memremap_pages,
    page_ranges,
    pages_of_ranges,
)
from dmabuf.mm.migrate import (
    MIGRATE_PFN_MIGRATE,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    MigrateVma,
    alloc_page_vma,
    migrate_pfn,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.vma import MmStruct, Vma, VmFault, vm_insert_pages

MiB = 1 << 20


def make_phys(machine: object, ram: int = 64 * MiB, devmem: int = 4 * MiB,
              bar: int = 4 * MiB) -> PhysMemory:
    """RAM, a device-memory region (``dev``) and an MMIO BAR region (``bar``)."""
    p = PhysMemory(machine)
    p.add_region("ram0", ram, MemKind.RAM)
    if devmem:
        p.add_region("dev", devmem, MemKind.DEVICE)
    if bar:
        p.add_region("bar", bar, MemKind.MMIO)
    return p


class FakeDevmem(DevPagemapOps):
    """A device with private memory; its pgmap owner is the object itself."""

    def __init__(self, phys: PhysMemory, region: str = "dev") -> None:
        self.phys = phys
        self.region = phys.region(region)
        self.owner = phys.new_owner("fake device memory")
        self.pgmap = DevPagemap(MemoryType.MEMORY_DEVICE_PRIVATE, self.region.base,
                                self.region.size, owner=self, ops=self, name="fakedev")
        memremap_pages(phys, self.pgmap)
        self.freed: list[int] = []
        self.faults = 0
        self.fail_fault = False

    # pgmap ops --------------------------------------------------------------------------
    def folio_free(self, pgmap: DevPagemap, paddrs: np.ndarray) -> None:
        self.freed.extend(int(a) for a in paddrs.tolist())
        self.phys.free(page_ranges(np.sort(paddrs)))

    def migrate_to_ram(self, vmf: VmFault) -> int:
        self.faults += 1
        if self.fail_fault:
            from dmabuf.mm.vma import VM_FAULT_SIGBUS
            return VM_FAULT_SIGBUS
        args = MigrateVma(vmf.vma, vmf.address, vmf.address + PAGE_SIZE, pgmap_owner=self,
                          flags=MIGRATE_VMA_SELECT_DEVICE_PRIVATE, fault_page=vmf.page)
        migrate_vma_setup(args)
        self.copy_back(args)
        migrate_vma_pages(args)
        migrate_vma_finalize(args)
        return 0

    # driver helpers ---------------------------------------------------------------------
    def alloc(self, n: int) -> np.ndarray:
        pages = pages_of_ranges(self.phys.alloc(self.region, n * PAGE_SIZE, self.owner))
        self.pgmap.page_init(pages)
        return pages

    def copy_back(self, args: MigrateVma) -> None:
        mig = (args.src & np.uint64(MIGRATE_PFN_MIGRATE)) != 0
        if not bool(mig.any()):
            return
        src = args.src_paddrs()[mig]
        dst = alloc_page_vma(args.vma, int(src.size))
        self.phys.copy(page_ranges(dst), page_ranges(src))
        args.dst[mig] = migrate_pfn(dst >> np.uint64(PAGE_SHIFT))

    def fill_dst(self, args: MigrateVma, skip: np.ndarray | None = None) -> np.ndarray:
        """Allocate + copy destinations for every MIGRATE entry (except ``skip``)."""
        mig = (args.src & np.uint64(MIGRATE_PFN_MIGRATE)) != 0
        if skip is not None:
            mig &= ~skip
        n = int(np.count_nonzero(mig))
        if n == 0:
            return np.zeros(0, dtype=np.uint64)
        dpages = self.alloc(n)
        src = args.src_paddrs()[mig]
        for s, d in zip(src.tolist(), dpages.tolist(), strict=True):
            one = np.array([(d, PAGE_SIZE)], dtype=[("addr", "<u8"), ("len", "<u8")])
            if s:
                self.phys.copy(one, np.array([(s, PAGE_SIZE)], dtype=one.dtype))
            else:
                self.phys.fill(one, 0)
        args.dst[mig] = migrate_pfn(dpages >> np.uint64(PAGE_SHIFT))
        return dpages

    def to_device(self, mm: MmStruct, start: int, npages: int) -> MigrateVma:
        with mm.read_locked():
            vma = mm.vma_lookup(start)
            assert vma is not None
            args = MigrateVma(vma, start, start + npages * PAGE_SIZE, pgmap_owner=self,
                              flags=MIGRATE_VMA_SELECT_SYSTEM)
            migrate_vma_setup(args)
            self.fill_dst(args)
            migrate_vma_pages(args)
            migrate_vma_finalize(args)
        return args


class _P2pOps(DevPagemapOps):
    has_migrate_to_ram = False

    def __init__(self) -> None:
        self.freed: list[int] = []

    def folio_free(self, pgmap: DevPagemap, paddrs: np.ndarray) -> None:
        self.freed.extend(int(a) for a in paddrs.tolist())


class FakeP2pmem:
    """A P2PDMA provider's pages and its ``allocate`` file (bump allocator)."""

    def __init__(self, phys: PhysMemory, region: str = "bar") -> None:
        self.phys = phys
        self.region = phys.region(region)
        self.ops = _P2pOps()
        self.pgmap = DevPagemap(MemoryType.MEMORY_DEVICE_PCI_P2PDMA, self.region.base,
                                self.region.size, ops=self.ops, provider="fake", name="p2p")
        memremap_pages(phys, self.pgmap)
        self.next = self.region.base

    def mmap(self, vma: Vma) -> None:
        n = vma.npages
        pages = np.uint64(self.next) + np.arange(n, dtype=np.uint64) * np.uint64(PAGE_SIZE)
        self.next += n * PAGE_SIZE
        self.pgmap.page_init(pages)
        vm_insert_pages(vma, vma.start, pages)
        self.pgmap.put_pages(pages)
