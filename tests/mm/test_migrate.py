"""mm/migrate.py + mm/memremap.py: migrate_vma_* to device-private memory and back."""

from __future__ import annotations

import errno
import zlib

import numpy as np
import pytest

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm.gup import pin_user_pages_fast, unpin_user_pages
from dmabuf.mm.memremap import (
    DevPagemap,
    DevPagemapOps,
    MemoryType,
    memremap_pages,
    memremap_registry,
    memunmap_pages,
)
from dmabuf.mm.migrate import (
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_SYSTEM,
    MigrateVma,
    migrate_pfn,
    migrate_pfn_to_paddr,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from dmabuf.mm.mmu_notifier import (
    MmuIntervalNotifier,
    MmuNotifierRange,
    mmu_interval_notifier_insert,
    mmu_interval_set_seq,
)
from dmabuf.mm.phys import OWNER_POISON, PAGE_SIZE
from dmabuf.mm.vma import (
    MADV_DONTNEED,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
    PTE_ANON,
    PTE_DEVICE_PRIVATE,
    PTE_MIGRATION,
    PTE_PRESENT,
    PTE_WRITE,
    MmStruct,
)
from dmabuf.sched import explore

from .mm_helpers import FakeDevmem, FakeP2pmem, make_phys

MiB = 1 << 20
R = [("addr", "<u8"), ("len", "<u8")]


@pytest.fixture
def env(machine: Machine) -> tuple[MmStruct, FakeDevmem]:
    phys = make_phys(machine)
    return MmStruct(phys, name="proc"), FakeDevmem(phys)


def _pattern(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def test_migrate_pfn_encoding() -> None:
    assert migrate_pfn(0x1234) == (0x1234 << 6) | MIGRATE_PFN_VALID
    arr = migrate_pfn(np.array([1, 2], dtype=np.uint64)) | np.uint64(MIGRATE_PFN_WRITE)
    assert list(migrate_pfn_to_paddr(arr)) == [0x1000, 0x2000]
    assert migrate_pfn_to_paddr(MIGRATE_PFN_MIGRATE) == 0


def test_memremap_pages_rules(machine: Machine) -> None:
    phys = make_phys(machine)
    dev = phys.region("dev")

    class NoMigrate(DevPagemapOps):
        has_migrate_to_ram = False

    with pytest.raises(DmaBufError) as e:
        memremap_pages(phys, DevPagemap(MemoryType.MEMORY_DEVICE_PRIVATE, dev.base, dev.size,
                                        owner=1, ops=NoMigrate()))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:       # no owner
        memremap_pages(phys, DevPagemap(MemoryType.MEMORY_DEVICE_PRIVATE, dev.base, dev.size))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:       # private pages must be device memory
        memremap_pages(phys, DevPagemap(MemoryType.MEMORY_DEVICE_PRIVATE,
                                        phys.region("ram0").base, PAGE_SIZE, owner=1))
    assert e.value.errno == errno.EINVAL
    ok = DevPagemap(MemoryType.MEMORY_DEVICE_PRIVATE, dev.base, 2 * MiB, owner=1)
    memremap_pages(phys, ok)
    with pytest.raises(DmaBufError) as e:
        memremap_pages(phys, DevPagemap(MemoryType.MEMORY_DEVICE_PRIVATE, dev.base + MiB,
                                        2 * MiB, owner=2))
    assert e.value.errno == errno.ENOMEM
    reg = memremap_registry(phys)
    assert list(reg.types(np.array([dev.base, dev.base + 2 * MiB], dtype=np.uint64))) == \
        [int(MemoryType.MEMORY_DEVICE_PRIVATE), 0]
    ok.page_init([dev.base])
    with pytest.raises(ContractViolation):
        memunmap_pages(ok)
    ok.put_pages([dev.base])
    memunmap_pages(ok)
    assert reg.pgmap_of(dev.base) is None


def test_migrate_to_device_and_back_preserves_data(env: tuple[MmStruct, FakeDevmem]) -> None:
    mm, dev = env
    n = 64
    a = mm.mmap(n * PAGE_SIZE)
    data = _pattern(n * PAGE_SIZE)
    mm.write(a, data)
    old_pfn, _ = mm.lookup(a, n)
    ram_free = mm.region.free_pages
    args = dev.to_device(mm, a, n)
    assert args.cpages == n and args.npages == n
    assert bool(np.all(args.src & np.uint64(MIGRATE_PFN_MIGRATE)))
    pfn, pte = mm.lookup(a, n)
    assert np.all(pte == PTE_DEVICE_PRIVATE | PTE_WRITE)
    paddr = pfn << np.uint64(12)
    assert int(paddr.min()) >= dev.region.base and int(paddr.max()) < dev.region.end
    assert np.all(dev.pgmap.page_refs(paddr) == 1)          # the mapping's reference
    assert mm.region.free_pages == ram_free + n             # RAM sources freed ...
    old = np.zeros(n, dtype=R)
    old["addr"] = old_pfn << np.uint64(12)
    old["len"] = PAGE_SIZE
    assert np.all(mm.phys.owners_of(old) == OWNER_POISON)   # ... and poisoned
    dev_bytes = mm.phys.read(np.array([(int(paddr[0]), PAGE_SIZE)], dtype=R))
    assert np.array_equal(dev_bytes, data[:PAGE_SIZE])
    # The CPU touches every page: migrate_to_ram moves each back, data intact.
    assert zlib.crc32(data.tobytes()) == mm.checksum(a, n * PAGE_SIZE)
    assert dev.faults == n and mm.stats["migrate_to_ram"] == n
    _, pte = mm.lookup(a, n)
    assert np.all(pte == PTE_PRESENT | PTE_ANON | PTE_WRITE)
    assert sorted(dev.freed) == sorted(int(x) for x in paddr)
    assert not np.any(dev.pgmap.refcount)


def test_holes_and_zero_pages_migrate_to_zeroed_device_pages(
        env: tuple[MmStruct, FakeDevmem]) -> None:
    mm, dev = env
    a = mm.mmap(4 * PAGE_SIZE)
    mm.read(a + PAGE_SIZE, 1)                    # page 1: zero page; others: holes
    mm.write(a + 3 * PAGE_SIZE, b"keep")
    args = dev.to_device(mm, a, 4)
    assert args.cpages == 4
    src = args.src
    assert [int(s) & MIGRATE_PFN_VALID for s in src] == [0, 0, 0, 1]
    _, pte = mm.lookup(a, 4)
    assert np.all(pte & PTE_DEVICE_PRIVATE)
    assert bytes(mm.read(a, 4)) == b"\0" * 4
    assert bytes(mm.read(a + 3 * PAGE_SIZE, 4)) == b"keep"


def test_pinned_pages_are_not_migrated(env: tuple[MmStruct, FakeDevmem]) -> None:
    mm, dev = env
    a = mm.mmap(2 * PAGE_SIZE)
    mm.fill(a, 2 * PAGE_SIZE, 1)
    pin = pin_user_pages_fast(mm, a, 1)
    args = dev.to_device(mm, a, 2)
    assert args.cpages == 1
    _, pte = mm.lookup(a, 2)
    assert pte[0] == PTE_PRESENT | PTE_ANON | PTE_WRITE and pte[1] & PTE_DEVICE_PRIVATE
    unpin_user_pages(pin)


def test_missing_destination_restores_the_source(env: tuple[MmStruct, FakeDevmem]) -> None:
    mm, dev = env
    a = mm.mmap(3 * PAGE_SIZE)
    mm.fill(a, 3 * PAGE_SIZE, 0x42)
    before, _ = mm.lookup(a, 3)
    with mm.read_locked():
        vma = mm.vma_lookup(a)
        assert vma is not None
        args = MigrateVma(vma, a, a + 3 * PAGE_SIZE, pgmap_owner=dev)
        migrate_vma_setup(args)
        _, pte = mm.lookup(a, 3)
        assert np.all(pte & PTE_MIGRATION)
        skip = np.array([False, True, False])
        dev.fill_dst(args, skip=skip)
        migrate_vma_pages(args)
        assert not args.src[1] & np.uint64(MIGRATE_PFN_MIGRATE)
        migrate_vma_finalize(args)
    pfn, pte = mm.lookup(a, 3)
    assert pte[1] == PTE_PRESENT | PTE_ANON | PTE_WRITE and pfn[1] == before[1]
    assert pte[0] & PTE_DEVICE_PRIVATE and pte[2] & PTE_DEVICE_PRIVATE
    assert bytes(mm.read(a, 3 * PAGE_SIZE)) == b"\x42" * (3 * PAGE_SIZE)


def test_finalize_without_pages_restores_everything(env: tuple[MmStruct, FakeDevmem]) -> None:
    mm, dev = env
    a = mm.mmap(2 * PAGE_SIZE)
    mm.fill(a, 2 * PAGE_SIZE, 9)
    before = mm.lookup(a, 2)
    with mm.read_locked():
        vma = mm.vma_lookup(a)
        assert vma is not None
        args = MigrateVma(vma, a, a + 2 * PAGE_SIZE, pgmap_owner=dev)
        migrate_vma_setup(args)
        dpages = dev.fill_dst(args)
        migrate_vma_finalize(args)
    after = mm.lookup(a, 2)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert sorted(dev.freed) == sorted(int(x) for x in dpages)     # destinations released
    with pytest.raises(ContractViolation):
        migrate_vma_pages(args)


def test_zap_between_setup_and_finalize_releases_both(env: tuple[MmStruct, FakeDevmem]) -> None:
    mm, dev = env
    a = mm.mmap(2 * PAGE_SIZE)
    mm.fill(a, 2 * PAGE_SIZE, 3)
    free0 = mm.region.free_pages
    with mm.read_locked():
        vma = mm.vma_lookup(a)
        assert vma is not None
        args = MigrateVma(vma, a, a + 2 * PAGE_SIZE, pgmap_owner=dev)
        migrate_vma_setup(args)
        dpages = dev.fill_dst(args)
    mm.madvise(a, 2 * PAGE_SIZE, MADV_DONTNEED)     # zaps the migration entries
    migrate_vma_pages(args)
    migrate_vma_finalize(args)
    _, pte = mm.lookup(a, 2)
    assert np.all(pte == 0)
    assert mm.region.free_pages == free0 + 2             # RAM sources freed once
    assert sorted(dev.freed) == sorted(int(x) for x in dpages)


def test_setup_errors(env: tuple[MmStruct, FakeDevmem]) -> None:
    mm, _dev = env
    a = mm.mmap(2 * PAGE_SIZE)
    p2p = FakeP2pmem(mm.phys)
    b = mm.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, file=p2p)
    with mm.read_locked():
        vma = mm.vma_lookup(a)
        vb = mm.vma_lookup(b)
        assert vma is not None and vb is not None
        for start, end in ((a + 1, a + PAGE_SIZE), (a, a), (a, a + 3 * PAGE_SIZE)):
            with pytest.raises(DmaBufError) as e:
                migrate_vma_setup(MigrateVma(vma, start, end))
            assert e.value.errno == errno.EINVAL
        with pytest.raises(DmaBufError) as e:            # VM_MIXEDMAP is VM_SPECIAL
            migrate_vma_setup(MigrateVma(vb, b, b + PAGE_SIZE))
        assert e.value.errno == errno.EINVAL
        with pytest.raises(DmaBufError) as e:
            migrate_vma_setup(MigrateVma(vma, a, a + PAGE_SIZE,
                                         fault_page=mm.region.base))
        assert e.value.errno == errno.EINVAL
    with pytest.raises(ContractViolation):               # the mmap lock must be held
        migrate_vma_setup(MigrateVma(vma, a, a + PAGE_SIZE, flags=MIGRATE_VMA_SELECT_SYSTEM))


def test_migration_invalidates_with_owner_and_unmap_releases_device_pages(
        env: tuple[MmStruct, FakeDevmem]) -> None:
    mm, dev = env
    events: list[tuple[str, object]] = []

    class Rec:
        def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange,
                       cur_seq: int) -> bool:
            events.append((rng.event.name, rng.owner))
            mmu_interval_set_seq(sub, cur_seq)
            return True

    a = mm.mmap(2 * PAGE_SIZE)
    mmu_interval_notifier_insert(MmuIntervalNotifier(), mm, a, 2 * PAGE_SIZE, Rec())
    mm.fill(a, 2 * PAGE_SIZE, 1)
    dev.to_device(mm, a, 2)
    assert events == [("MMU_NOTIFY_MIGRATE", dev)]
    pfn, _ = mm.lookup(a, 2)
    mm.munmap(a, 2 * PAGE_SIZE)
    assert sorted(dev.freed) == sorted(int(x) << 12 for x in pfn)
    assert events[-1] == ("MMU_NOTIFY_UNMAP", None)


def test_failed_migrate_to_ram_is_a_sigbus(env: tuple[MmStruct, FakeDevmem]) -> None:
    mm, dev = env
    a = mm.mmap(PAGE_SIZE)
    mm.fill(a, PAGE_SIZE, 1)
    dev.to_device(mm, a, 1)
    dev.fail_fault = True
    with pytest.raises(DmaBufError) as e:
        mm.read(a, 1)
    assert e.value.errno == errno.EFAULT


def test_cpu_access_waits_for_an_inflight_migration() -> None:
    """A CPU read of a page under migration waits for finalize, then sees the same bytes."""

    def scenario(m: Machine) -> None:
        phys = make_phys(m, ram=16 * MiB, devmem=2 * MiB, bar=0)
        mm = MmStruct(phys, name="p")
        dev = FakeDevmem(phys)
        a = mm.mmap(2 * PAGE_SIZE)
        data = _pattern(2 * PAGE_SIZE, seed=7)
        mm.write(a, data)
        got: list[bytes] = []

        def reader() -> None:
            got.append(bytes(mm.read(a, 2 * PAGE_SIZE)))

        with mm.read_locked():
            vma = mm.vma_lookup(a)
            assert vma is not None
            args = MigrateVma(vma, a, a + 2 * PAGE_SIZE, pgmap_owner=dev)
            migrate_vma_setup(args)
            t = m.sched.spawn(reader, name="cpu-reader")
            m.sched.sleep(0.5)                         # the reader is stuck on the entry
            assert not got
            dev.fill_dst(args)
            migrate_vma_pages(args)
            migrate_vma_finalize(args)
        assert t.join(10.0)
        assert got == [data.tobytes()]
        assert mm.stats["migration_waits"] >= 1

    explore(scenario, seeds=range(4))
