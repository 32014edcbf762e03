"""mm/vma.py: address spaces, VMAs, the page table, CPU faults and the PTE-changing operations."""

from __future__ import annotations

import errno
import zlib

import numpy as np
import pytest

from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm import MemKind, PhysMemory
from dmabuf.mm.memfd import F_SEAL_WRITE, MemFd
from dmabuf.mm.memremap import zero_page
from dmabuf.mm.mmu_notifier import (
    MmuIntervalNotifier,
    MmuNotifierRange,
    mmu_interval_notifier_insert,
    mmu_interval_set_seq,
)
from dmabuf.mm.phys import OWNER_POISON, PAGE_SIZE
from dmabuf.mm.vma import (
    FAULT_FLAG_WRITE,
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    PTE_ANON,
    PTE_FILE,
    PTE_PRESENT,
    PTE_SPECIAL,
    PTE_WRITE,
    PTE_ZERO,
    VM_IO,
    VM_MIXEDMAP,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
    MmStruct,
    Vma,
    VmOperations,
    handle_mm_fault,
    remap_pfn_range,
    vm_insert_pages,
    vma_is_anonymous,
    zap_vma_ptes,
)

MiB = 1 << 20


@pytest.fixture
def phys(machine: Machine) -> PhysMemory:
    p = PhysMemory(machine)
    p.add_region("ram0", 64 * MiB, MemKind.RAM)
    p.add_region("bar", 4 * MiB, MemKind.MMIO)
    return p


@pytest.fixture
def mm(phys: PhysMemory) -> MmStruct:
    return MmStruct(phys, name="proc")


class Events:
    """Interval notifier recording every invalidation of the whole address space."""

    def __init__(self, mm: MmStruct) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.sub = MmuIntervalNotifier()
        mmu_interval_notifier_insert(self.sub, mm, 0, 1 << 47, self)

    def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange, cur_seq: int) -> bool:
        self.events.append((rng.event.name, rng.start, rng.end))
        mmu_interval_set_seq(sub, cur_seq)
        return True


def test_mmap_places_anonymous_vmas_top_down(mm: MmStruct) -> None:
    a = mm.mmap(3 * PAGE_SIZE + 1)          # rounded up to 4 pages
    b = mm.mmap(PAGE_SIZE)
    assert a == mm.mmap_base - 4 * PAGE_SIZE
    assert b == a - PAGE_SIZE
    va = mm.vma_lookup(a)
    assert va is not None and va.npages == 4 and va.kind == "anon" and vma_is_anonymous(va)
    assert va.flags & (VM_READ | VM_WRITE) == VM_READ | VM_WRITE and not va.flags & VM_SHARED
    assert mm.vma_lookup(a - 1) is mm.vma_lookup(b)
    assert mm.vma_lookup(a + 4 * PAGE_SIZE) is None
    assert mm.find_vma(0) is mm.vma_lookup(b)


@pytest.mark.parametrize("kwargs, err", [
    ({"length": 0}, errno.EINVAL),
    ({"length": PAGE_SIZE, "flags": MAP_ANONYMOUS}, errno.EINVAL),
    ({"length": PAGE_SIZE, "flags": MAP_SHARED | MAP_PRIVATE | MAP_ANONYMOUS}, errno.EINVAL),
    ({"length": PAGE_SIZE, "flags": MAP_PRIVATE}, errno.EBADF),
    ({"length": PAGE_SIZE, "offset": 100, "flags": MAP_PRIVATE | MAP_ANONYMOUS}, errno.EINVAL),
    ({"length": PAGE_SIZE, "flags": MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
      "addr": 0x1001}, errno.EINVAL),
])
def test_mmap_errors(mm: MmStruct, kwargs: dict, err: int) -> None:
    length = kwargs.pop("length")
    with pytest.raises(DmaBufError) as e:
        mm.mmap(length, **kwargs)
    assert e.value.errno == err


def test_read_fault_maps_the_zero_page_and_write_fault_allocates(mm: MmStruct) -> None:
    a = mm.mmap(4 * PAGE_SIZE)
    assert bytes(mm.read(a, 8)) == b"\0" * 8
    pfn, pte = mm.lookup(a, 2)
    z = zero_page(mm.phys)
    assert pfn[0] == z >> 12 and pte[0] == PTE_PRESENT | PTE_SPECIAL | PTE_ZERO
    assert pte[1] == 0                      # untouched
    mm.write(a + PAGE_SIZE + 10, b"xyz")
    pfn, pte = mm.lookup(a, 2)
    assert pte[1] == PTE_PRESENT | PTE_ANON | PTE_WRITE
    assert mm.phys.owners_of(np.array([(int(pfn[1]) << 12, 1)], dtype=[("addr", "<u8"),
                                                                           ("len", "<u8")]))[0] \
        == mm.anon_owner
    assert bytes(mm.read(a + PAGE_SIZE + 8, 6)) == b"\0\0xyz\0"
    assert mm.stats["anon_pages"] == 1 and mm.stats["zero_maps"] == 1


def test_write_to_the_zero_page_copies_under_an_invalidation(mm: MmStruct) -> None:
    ev = Events(mm)
    a = mm.mmap(2 * PAGE_SIZE)
    mm.read(a, 2 * PAGE_SIZE)
    assert ev.events == []                  # populating empty PTEs needs no invalidation
    mm.write(a + PAGE_SIZE, b"!")
    assert ev.events == [("MMU_NOTIFY_CLEAR", a + PAGE_SIZE, a + 2 * PAGE_SIZE)]
    assert mm.stats["cow"] == 1
    _, pte = mm.lookup(a, 2)
    assert pte[0] & PTE_ZERO and pte[1] == PTE_PRESENT | PTE_ANON | PTE_WRITE


def test_cpu_access_crosses_vmas_and_checks_permissions(mm: MmStruct) -> None:
    base = mm.mmap(3 * PAGE_SIZE)
    data = np.arange(3 * PAGE_SIZE, dtype=np.uint32).view(np.uint8)[:3 * PAGE_SIZE]
    mm.write(base, data)
    mm.mprotect(base + PAGE_SIZE, PAGE_SIZE, PROT_READ)
    assert len(mm.vmas) == 3
    assert zlib.crc32(data.tobytes()) == mm.checksum(base, 3 * PAGE_SIZE)
    with pytest.raises(DmaBufError) as e:
        mm.write(base + PAGE_SIZE - 1, b"ab")   # second byte lands in the read-only VMA
    assert e.value.errno == errno.EFAULT
    mm.mprotect(base + 2 * PAGE_SIZE, PAGE_SIZE, PROT_NONE)
    with pytest.raises(DmaBufError) as e:
        mm.read(base + 2 * PAGE_SIZE, 1)
    assert e.value.errno == errno.EFAULT
    with pytest.raises(DmaBufError) as e:
        mm.read(base - PAGE_SIZE, 1)           # unmapped
    assert e.value.errno == errno.EFAULT


def test_mprotect_clears_write_bits_and_write_fault_restores_them(mm: MmStruct) -> None:
    ev = Events(mm)
    a = mm.mmap(2 * PAGE_SIZE)
    mm.fill(a, 2 * PAGE_SIZE, 7)
    mm.mprotect(a, 2 * PAGE_SIZE, PROT_READ)
    assert ev.events[-1] == ("MMU_NOTIFY_PROTECTION_VMA", a, a + 2 * PAGE_SIZE)
    pfn0, pte = mm.lookup(a, 2)
    assert not np.any(pte & PTE_WRITE)
    mm.mprotect(a, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE)
    mm.write(a, b"\x08")                       # reuse: same page, write bit back, no copy
    pfn1, pte = mm.lookup(a, 2)
    assert pfn1[0] == pfn0[0] and pte[0] & PTE_WRITE and not pte[1] & PTE_WRITE
    assert mm.stats["cow"] == 0
    with pytest.raises(DmaBufError) as e:
        mm.mprotect(a + 2 * PAGE_SIZE, PAGE_SIZE, PROT_READ)
    assert e.value.errno == errno.ENOMEM


def test_munmap_splits_invalidates_and_poisons(mm: MmStruct) -> None:
    ev = Events(mm)
    a = mm.mmap(4 * PAGE_SIZE)
    mm.fill(a, 4 * PAGE_SIZE, 0x11)
    pfn, _ = mm.lookup(a, 4)
    free_before = mm.region.free_pages
    mm.munmap(a + PAGE_SIZE, 2 * PAGE_SIZE)
    assert ev.events[-1] == ("MMU_NOTIFY_UNMAP", a + PAGE_SIZE, a + 3 * PAGE_SIZE)
    assert [(v.start, v.end) for v in mm.vmas] == [(a, a + PAGE_SIZE),
                                                   (a + 3 * PAGE_SIZE, a + 4 * PAGE_SIZE)]
    assert mm.region.free_pages == free_before + 2
    gone = np.array([(int(pfn[1]) << 12, PAGE_SIZE)], dtype=[("addr", "<u8"), ("len", "<u8")])
    assert mm.phys.owners_of(gone)[0] == OWNER_POISON
    assert bytes(mm.phys.read(gone)[:4]) == b"\x6b" * 4
    assert bytes(mm.read(a + 3 * PAGE_SIZE, 2)) == b"\x11\x11"
    with pytest.raises(DmaBufError):
        mm.read(a + PAGE_SIZE, 1)
    with pytest.raises(DmaBufError) as e:
        mm.munmap(a + 1, PAGE_SIZE)
    assert e.value.errno == errno.EINVAL


def test_madvise_dontneed_zaps_and_refaults_zero(mm: MmStruct) -> None:
    ev = Events(mm)
    a = mm.mmap(2 * PAGE_SIZE)
    mm.fill(a, 2 * PAGE_SIZE, 0x5A)
    mm.madvise(a, PAGE_SIZE, MADV_DONTNEED)
    assert ev.events[-1] == ("MMU_NOTIFY_CLEAR", a, a + PAGE_SIZE)
    assert bytes(mm.read(a, 1)) == b"\0" and bytes(mm.read(a + PAGE_SIZE, 1)) == b"\x5a"
    with pytest.raises(DmaBufError) as e:
        mm.madvise(a, PAGE_SIZE, 99)
    assert e.value.errno == errno.EINVAL


def test_map_fixed_replaces_and_populate_faults_in(mm: MmStruct) -> None:
    a = mm.mmap(4 * PAGE_SIZE)
    mm.fill(a, 4 * PAGE_SIZE, 1)
    b = mm.mmap(2 * PAGE_SIZE, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_POPULATE,
                addr=a + PAGE_SIZE)
    assert b == a + PAGE_SIZE
    _, pte = mm.lookup(a, 4)
    assert list(pte) == [PTE_PRESENT | PTE_ANON | PTE_WRITE] * 4
    assert bytes(mm.read(a, 1) ) + bytes(mm.read(b, 1)) == b"\x01\x00"


def test_shared_memfd_mapping_sees_file_writes_and_private_copies(mm: MmStruct) -> None:
    f = MemFd(mm.phys, "data")
    f.pwrite(b"A" * 100 + b"B" * (PAGE_SIZE - 100) + b"C" * PAGE_SIZE, 0)
    s = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=f)
    p = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, file=f)
    assert bytes(mm.read(s + 98, 4)) == b"AABB" and bytes(mm.read(p + PAGE_SIZE, 1)) == b"C"
    mm.write(s, b"z")                          # shared: lands in the page cache
    assert f.pread(1, 0) == b"z" and bytes(mm.read(p, 1)) == b"z"
    sv = mm.vma_lookup(s)
    assert sv is not None and sv.kind == "file"
    _, pte = mm.lookup(p, 1)
    assert pte[0] == PTE_PRESENT | PTE_FILE   # private read: page cache, read-only
    mm.write(p, b"q")                          # private write: COW
    assert f.pread(1, 0) == b"z" and bytes(mm.read(p, 1)) == b"q"
    _, pte = mm.lookup(p, 1)
    assert pte[0] == PTE_PRESENT | PTE_ANON | PTE_WRITE
    with pytest.raises(DmaBufError) as e:      # writable shared mapping blocks F_SEAL_WRITE
        f.add_seals(F_SEAL_WRITE)
    assert e.value.errno == errno.EBUSY
    mm.munmap(s, 2 * PAGE_SIZE)
    f.add_seals(F_SEAL_WRITE)
    ro = mm.mmap(PAGE_SIZE, PROT_READ, MAP_SHARED, file=f)
    with pytest.raises(DmaBufError) as e:       # a write-sealed memfd never becomes writable
        mm.mprotect(ro, PAGE_SIZE, PROT_READ | PROT_WRITE)
    assert e.value.errno == errno.EACCES
    with pytest.raises(DmaBufError) as e:
        mm.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=f)
    assert e.value.errno == errno.EPERM


def test_truncated_memfd_gives_sigbus_beyond_eof(mm: MmStruct) -> None:
    f = MemFd(mm.phys, "t")
    f.ftruncate(2 * PAGE_SIZE)
    s = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=f)
    mm.write(s + PAGE_SIZE, b"x")
    f.ftruncate(PAGE_SIZE)
    with pytest.raises(DmaBufError) as e:
        mm.read(s + PAGE_SIZE, 1)
    assert e.value.errno == errno.EFAULT
    f.ftruncate(2 * PAGE_SIZE)                 # regrown: a new (zero) page
    assert bytes(mm.read(s + PAGE_SIZE, 1)) == b"\0"


def test_truncation_zaps_the_mapping_before_freeing_the_pages(mm: MmStruct) -> None:
    """truncate_pagecache(): unmap_mapping_range() zaps every mapping of the dropped pages (an
    MMU_NOTIFY_CLEAR invalidation) before they are freed; pages before EOF stay mapped."""
    f = MemFd(mm.phys, "t")
    f.ftruncate(4 * PAGE_SIZE)
    s = mm.mmap(4 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=f)
    p = mm.mmap(4 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, file=f)
    mm.write(s, np.full(4 * PAGE_SIZE, 7, dtype=np.uint8))
    mm.write(p + 3 * PAGE_SIZE, b"cow")                  # a private COW copy past the new EOF
    mm.munmap(s + 2 * PAGE_SIZE, PAGE_SIZE)              # split: [s, s+2P) and [s+3P, s+4P)
    seen: list[tuple[str, int, int]] = []

    class Rec:
        def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange,
                       cur_seq: int) -> bool:
            seen.append((rng.event.name, rng.start, rng.end))
            mmu_interval_set_seq(sub, cur_seq)
            return True

    sub = MmuIntervalNotifier()
    mmu_interval_notifier_insert(sub, mm, s, 4 * PAGE_SIZE, Rec())
    cache = f.filemap_lookup(np.arange(4))
    assert bool(cache.all())
    anon_before = mm.stats["anon_pages"]
    f.ftruncate(PAGE_SIZE + 10)                          # pages 2 and 3 leave the cache
    assert f.filemap_lookup(np.arange(4)).tolist() == [int(cache[0]), int(cache[1]), 0, 0]
    assert ("MMU_NOTIFY_CLEAR", s + 3 * PAGE_SIZE, s + 4 * PAGE_SIZE) in seen
    pfn, pte = mm.lookup(s, 2)
    assert pte.tolist() == [PTE_PRESENT | PTE_FILE | PTE_WRITE] * 2   # before EOF: untouched
    assert [int(x) << 12 for x in pfn] == [int(cache[0]), int(cache[1])]
    assert mm.lookup(s + 3 * PAGE_SIZE, 1)[1].tolist() == [0]          # zapped at once
    assert mm.lookup(p + 2 * PAGE_SIZE, 2)[1].tolist() == [0, 0]       # even the COW copy
    owners = mm.phys.owners_of(np.array([(int(cache[2]), PAGE_SIZE), (int(cache[3]), PAGE_SIZE)],
                                        dtype=[("addr", "<u8"), ("len", "<u8")]))
    assert owners.tolist() == [OWNER_POISON, OWNER_POISON]              # freed after the zap
    assert mm.stats["anon_pages"] == anon_before
    with pytest.raises(DmaBufError) as e:
        mm.read(p + 2 * PAGE_SIZE, 1)                    # SIGBUS beyond EOF
    assert e.value.errno == errno.EFAULT
    assert bytes(mm.read(s + PAGE_SIZE, 2)) == b"\x07\x07"


def test_shared_anonymous_mapping_is_shmem(mm: MmStruct) -> None:
    a = mm.mmap(PAGE_SIZE, flags=MAP_SHARED | MAP_ANONYMOUS)
    v = mm.vma_lookup(a)
    assert v is not None and v.kind == "file" and v.flags & VM_SHARED
    mm.write(a, b"shm")
    assert bytes(mm.read(a, 3)) == b"shm"
    mm.munmap(a, PAGE_SIZE)


class BarFile:
    """A driver file whose mmap maps a BAR with remap_pfn_range (vfio / resourceN)."""

    def __init__(self, base: int) -> None:
        self.base = base

    def mmap(self, vma: Vma) -> None:
        remap_pfn_range(vma, vma.start, self.base >> 12, vma.end - vma.start)


def test_pfnmap_mapping_is_special_and_cpu_accessible(mm: MmStruct) -> None:
    bar = mm.phys.region("bar")
    a = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=BarFile(bar.base))
    v = mm.vma_lookup(a)
    assert v is not None and v.kind == "pfnmap" and v.flags & (VM_IO | VM_PFNMAP)
    pfn, pte = mm.lookup(a, 2)
    assert list(pfn) == [bar.base >> 12, (bar.base >> 12) + 1]
    assert list(pte) == [PTE_PRESENT | PTE_SPECIAL | PTE_WRITE] * 2
    mm.write(a + 5, b"mmio")
    assert bytes(mm.phys.view(bar.base + 5, 4)) == b"mmio"
    with pytest.raises(DmaBufError) as e:       # madvise refuses PFN maps
        mm.madvise(a, PAGE_SIZE, MADV_DONTNEED)
    assert e.value.errno == errno.EINVAL


class PageFile(VmOperations):
    """A driver inserting RAM pages it owns (vm_insert_pages) and counting close calls."""

    def __init__(self, pages: np.ndarray) -> None:
        self.pages = pages
        self.closed = 0

    def mmap(self, vma: Vma) -> None:
        vma.vm_ops = self
        vm_insert_pages(vma, vma.start, self.pages)

    def close(self, vma: Vma) -> None:
        self.closed += 1


def test_vm_insert_pages_and_zap(mm: MmStruct) -> None:
    owner = mm.phys.new_owner("driver")
    r = mm.phys.alloc("ram0", 2 * PAGE_SIZE, owner, zero=True)
    pages = np.array([int(r["addr"][0]), int(r["addr"][0]) + PAGE_SIZE], dtype=np.uint64)
    f = PageFile(pages)
    ev = Events(mm)
    a = mm.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=f)
    v = mm.vma_lookup(a)
    assert v is not None and v.kind == "mixedmap" and v.flags & VM_MIXEDMAP
    mm.write(a + PAGE_SIZE, b"drv")
    assert bytes(mm.phys.view(int(pages[1]), 3)) == b"drv"
    zap_vma_ptes(v, a, PAGE_SIZE)
    assert ev.events[-1] == ("MMU_NOTIFY_CLEAR", a, a + PAGE_SIZE)
    with pytest.raises(DmaBufError) as e:      # no fault handler: SIGBUS
        mm.read(a, 1)
    assert e.value.errno == errno.EFAULT
    mm.munmap(a, 2 * PAGE_SIZE)
    assert f.closed == 1
    assert mm.phys.owners_of(r)[0] == owner   # driver pages are not freed by the mm
    with pytest.raises(ContractViolation):
        vm_insert_pages(Vma(mm, 0, PAGE_SIZE, VM_PFNMAP), 0, pages[:1])


def test_handle_mm_fault_needs_the_mmap_lock(mm: MmStruct) -> None:
    a = mm.mmap(PAGE_SIZE)
    v = mm.vma_lookup(a)
    assert v is not None
    with pytest.raises(ContractViolation):
        handle_mm_fault(v, a, FAULT_FLAG_WRITE)
    with mm.read_locked():
        assert handle_mm_fault(v, a, FAULT_FLAG_WRITE) == 0
    _, pte = mm.lookup(a, 1)
    assert pte[0] == PTE_PRESENT | PTE_ANON | PTE_WRITE


def test_recursive_mmap_lock_is_reported(mm: MmStruct) -> None:
    with mm.read_locked():
        with pytest.raises(ContractViolation) as e:
            mm.mmap_read_lock()
        assert e.value.rule == "lockdep_recursive_locking"


def test_exit_unmaps_everything_and_frees(mm: MmStruct) -> None:
    ev = Events(mm)
    free0 = mm.region.free_pages
    a = mm.mmap(8 * PAGE_SIZE)
    mm.fill(a, 8 * PAGE_SIZE, 3)
    assert mm.region.free_pages == free0 - 8
    mm.exit()
    assert mm.vmas == [] and mm.users == 0
    assert ev.events[-1][0] == "MMU_NOTIFY_UNMAP"
    assert mm.region.free_pages == free0
    with pytest.raises(DmaBufError):
        mm.mmap(PAGE_SIZE)


def test_stale_physical_access_after_unmap_is_caught(mm: MmStruct) -> None:
    a = mm.mmap(PAGE_SIZE)
    mm.fill(a, PAGE_SIZE, 9)
    pfn, _ = mm.lookup(a, 1)
    rng = np.array([(int(pfn[0]) << 12, PAGE_SIZE)], dtype=[("addr", "<u8"), ("len", "<u8")])
    mm.phys.check_owned(rng, mm.anon_owner)
    mm.munmap(a, PAGE_SIZE)
    with pytest.raises(IommuFault):
        mm.phys.check_owned(rng, mm.anon_owner)


def test_large_vectorised_fault_and_read(mm: MmStruct) -> None:
    n = 2048                                   # 8 MiB
    a = mm.mmap(n * PAGE_SIZE)
    data = np.random.default_rng(5).integers(0, 256, n * PAGE_SIZE, dtype=np.uint8)
    mm.write(a, data)
    assert mm.stats["anon_pages"] == n and mm.stats["faults"] == n
    assert zlib.crc32(data.tobytes()) == mm.checksum(a, n * PAGE_SIZE)
    assert np.array_equal(mm.read(a + 123, 4096 * 3), data[123:123 + 4096 * 3])
