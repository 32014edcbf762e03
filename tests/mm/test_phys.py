"""Tests of dmabuf.mm.phys: regions, allocator, poisoning, ownership, byte movement."""

from __future__ import annotations

import errno
import resource
import time
import zlib

import numpy as np
import pytest

from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm import (
    OWNER_FREE,
    OWNER_POISON,
    PAGE_SIZE,
    POISON_FREE,
    MemKind,
    PhysMemory,
    make_ranges,
    split_ranges,
    total_len,
)

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def pm() -> PhysMemory:
    p = PhysMemory()
    p.add_region("ram0", 64 * MiB, MemKind.RAM, numa_node=0)
    p.add_region("vram0", 64 * MiB, MemKind.DEVICE)
    return p


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_region_basics(pm: PhysMemory) -> None:
    ram = pm.region("ram0")
    vram = pm.region("vram0")
    assert ram.base == GiB                      # auto base: at least 1 GiB, GiB aligned
    assert vram.base == 2 * GiB
    assert ram.npages == 64 * MiB // PAGE_SIZE
    assert ram.kind is MemKind.RAM and ram.numa_node == 0
    assert ram.backing.dtype == np.uint8 and ram.backing.size == 64 * MiB
    assert ram.owner.dtype == np.int32 and ram.owner.size == ram.npages
    assert ram.contains(ram.base, 64 * MiB)
    assert not ram.contains(ram.base, 64 * MiB + 1)
    assert not ram.contains(ram.base - 1)
    assert pm.region_at(vram.base + 5) is vram
    assert pm.region_at(ram.end - 1) is ram
    assert [r.name for r in pm.regions] == ["ram0", "vram0"]


def test_region_errors(pm: PhysMemory) -> None:
    with pytest.raises(DmaBufError) as e:
        pm.add_region("x", 4096, MemKind.MMIO, base=GiB + 4096)
    assert e.value.errno == errno.EINVAL and "overlaps" in str(e.value)
    with pytest.raises(DmaBufError) as e:
        pm.add_region("ram0", 4096, MemKind.RAM)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(DmaBufError) as e:
        pm.add_region("y", 4097, MemKind.RAM)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        pm.add_region("y", 0, MemKind.RAM)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        pm.add_region("y", 4096, MemKind.RAM, base=123)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        pm.add_region("y", 4096, "ram")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pm.add_region("y", 4096.0, MemKind.RAM)  # type: ignore[arg-type]
    with pytest.raises(DmaBufError) as e:
        pm.region("nope")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(IommuFault) as f:
        pm.region_at(0)
    assert f.value.errno == errno.EFAULT
    with pytest.raises(IommuFault):
        pm.region_at(3 * GiB)
    bar = pm.add_region("bar0", 16 * MiB, MemKind.MMIO, base=0xF000_0000_00)
    assert pm.region_at(0xF000_0000_00 + 100) is bar


def test_sparse_80gib_region_is_instant_and_costs_no_rss() -> None:
    p = PhysMemory()
    rss0 = _rss_kib()
    t0 = time.perf_counter()
    vram = p.add_region("h100.hbm", 80 * GiB, MemKind.DEVICE)
    elapsed = time.perf_counter() - t0
    rss1 = _rss_kib()
    assert elapsed < 0.5
    assert rss1 - rss0 < 16 * 1024          # < 16 MiB of resident memory for 80 GiB
    assert vram.npages == 80 * GiB // PAGE_SIZE
    # touching one page at the very end works and costs one page
    v = p.view(vram.end - PAGE_SIZE, PAGE_SIZE)
    v[:] = 7
    assert int(p.view(vram.end - 1, 1)[0]) == 7
    o = p.new_owner("bo")
    big = p.alloc(vram, 64 * GiB, o, contiguous=True)
    assert big["addr"].tolist() == [vram.base] and big["len"].tolist() == [64 * GiB]


def test_owner_ids(pm: PhysMemory) -> None:
    a = pm.new_owner("bo a")
    b = pm.new_owner("bo b")
    assert (a, b) == (1, 2)
    assert pm.owner_label(a) == "bo a"
    assert pm.owner_label(OWNER_FREE) == "free"
    assert pm.owner_label(OWNER_POISON) == "poisoned (freed)"
    with pytest.raises(DmaBufError) as e:
        pm.alloc("ram0", 4096, 99)
    assert e.value.errno == errno.EINVAL


def test_alloc_page_granular_first_fit(pm: PhysMemory) -> None:
    o = pm.new_owner("a")
    ram = pm.region("ram0")
    r1 = pm.alloc("ram0", 1, o)
    assert r1.tolist() == [(ram.base, PAGE_SIZE)]
    r2 = pm.alloc(ram, 3 * PAGE_SIZE - 5, o)
    assert r2.tolist() == [(ram.base + PAGE_SIZE, 3 * PAGE_SIZE)]
    assert pm.owners_of(r2).tolist() == [o, o, o]
    assert ram.free_pages == ram.npages - 4
    assert int(ram.owner[4]) == OWNER_FREE


def test_fragmentation_and_contiguous_enomem() -> None:
    p = PhysMemory()
    ram = p.add_region("ram", 64 * PAGE_SIZE, MemKind.RAM)
    o = p.new_owner("a")
    pages = [p.alloc(ram, PAGE_SIZE, o) for _ in range(64)]
    # free every other page: 32 free pages, none adjacent
    for r in pages[::2]:
        p.free(r)
    assert ram.free_pages == 32 and ram.free_extents == 32
    assert ram.largest_free_extent == 1
    with pytest.raises(DmaBufError) as e:
        p.alloc(ram, 2 * PAGE_SIZE, o, contiguous=True)
    assert e.value.errno == errno.ENOMEM
    assert "32 pages free" in str(e.value) and "largest is 1" in str(e.value)
    # non-contiguous succeeds with 5 scattered extents, first-fit order
    r = p.alloc(ram, 5 * PAGE_SIZE, o)
    assert r["addr"].tolist() == [ram.base + i * 2 * PAGE_SIZE for i in range(5)]
    assert total_len(r) == 5 * PAGE_SIZE
    # freeing neighbours merges extents back
    p.free(pages[11])              # pages 10, 11, 12 become one extent
    assert ram.free_extents == 26 and ram.largest_free_extent == 3


def test_enomem_message(pm: PhysMemory) -> None:
    o = pm.new_owner("a")
    pm.alloc("ram0", 60 * MiB, o)
    with pytest.raises(DmaBufError) as e:
        pm.alloc("ram0", 8 * MiB, o)
    assert e.value.errno == errno.ENOMEM
    assert "1024 pages free" in str(e.value)


def test_alloc_max_extent_and_rng_deterministic() -> None:
    def layout(seed: int) -> list[tuple[int, int]]:
        p = PhysMemory()
        ram = p.add_region("ram", 4 * MiB, MemKind.RAM)
        o = p.new_owner("x")
        held = [p.alloc(ram, PAGE_SIZE * (1 + i % 3), o) for i in range(200)]
        for r in held[::3]:
            p.free(r)
        res = p.alloc(ram, 40 * PAGE_SIZE, o, rng=np.random.default_rng(seed), max_extent=PAGE_SIZE)
        assert all(n == PAGE_SIZE for n in res["len"].tolist())
        assert total_len(res) == 40 * PAGE_SIZE
        assert (p.owners_of(res) == o).all()
        return [tuple(x) for x in res.tolist()]

    assert layout(1) == layout(1)
    assert layout(1) != layout(2)


def test_alloc_zero_and_bad_args(pm: PhysMemory) -> None:
    o = pm.new_owner("a")
    r = pm.alloc("ram0", PAGE_SIZE, o)
    pm.fill(r, 0xAA)
    pm.free(r)
    r2 = pm.alloc("ram0", PAGE_SIZE, o)
    assert r2.tolist() == r.tolist()
    assert bool((pm.read(r2) == POISON_FREE).all())  # reuse without __GFP_ZERO keeps poison
    pm.free(r2)
    r3 = pm.alloc("ram0", PAGE_SIZE, o, zero=True)
    assert bool((pm.read(r3) == 0).all())
    for bad in (0, -4096):
        with pytest.raises(DmaBufError) as e:
            pm.alloc("ram0", bad, o)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError):
        pm.alloc("ram0", PAGE_SIZE, o, max_extent=100)
    with pytest.raises(TypeError):
        pm.alloc("ram0", "4096", o)  # type: ignore[arg-type]
    other = PhysMemory()
    foreign = other.add_region("ram0", MiB, MemKind.RAM)
    with pytest.raises(DmaBufError):
        pm.alloc(foreign, PAGE_SIZE, o)


def test_free_poisons(pm: PhysMemory) -> None:
    o = pm.new_owner("a")
    r = pm.alloc("vram0", 3 * PAGE_SIZE, o)
    pm.fill(r, 0x11)
    pm.free(r)
    assert pm.owners_of(r).tolist() == [OWNER_POISON] * 3
    data = pm.read(r)
    assert data.size == 3 * PAGE_SIZE and bool((data == 0x6B).all())


def test_double_free_and_bad_free(pm: PhysMemory) -> None:
    o = pm.new_owner("a")
    r = pm.alloc("ram0", 2 * PAGE_SIZE, o)
    pm.free(r)
    with pytest.raises(ContractViolation) as e:
        pm.free(r)
    assert e.value.rule == "free_pages" and "double free" in str(e.value)
    r = pm.alloc("ram0", 2 * PAGE_SIZE, o)
    dup = np.concatenate((r, r))
    with pytest.raises(ContractViolation):
        pm.free(dup)
    assert pm.owners_of(r).tolist() == [o, o]  # nothing was freed by the failed call
    with pytest.raises(DmaBufError) as e2:
        pm.free(make_ranges([int(r["addr"][0]) + 1], [PAGE_SIZE]))
    assert e2.value.errno == errno.EINVAL
    with pytest.raises(IommuFault):
        pm.free(make_ranges([16 * GiB], [PAGE_SIZE]))


def test_ownership_faults(pm: PhysMemory) -> None:
    a = pm.new_owner("amdgpu bo 1")
    b = pm.new_owner("rdma mr 7")
    ra = pm.alloc("vram0", 4 * PAGE_SIZE, a)
    pm.check_owned(ra, a)
    # sub-page byte ranges check every page they touch
    pm.check_owned(make_ranges([int(ra["addr"][0]) + 100], [PAGE_SIZE]), a)
    with pytest.raises(IommuFault) as e:
        pm.check_owned(ra, b)
    assert "'amdgpu bo 1'" in str(e.value) and "'rdma mr 7'" in str(e.value)
    assert e.value.dma_addr == int(ra["addr"][0])
    # migration: hand the last page to b
    last = make_ranges([int(ra["addr"][0]) + 3 * PAGE_SIZE], [PAGE_SIZE])
    pm.set_owner(last, b)
    with pytest.raises(IommuFault) as e:
        pm.check_owned(ra, a)
    assert e.value.dma_addr == int(ra["addr"][0]) + 3 * PAGE_SIZE
    pm.free(ra)
    with pytest.raises(IommuFault) as e:
        pm.check_owned(ra, a)
    assert "poisoned" in str(e.value)
    with pytest.raises(ContractViolation):
        pm.set_owner(ra, a)          # cannot hand over free pages


def test_ownership_many_ranges_vectorised_path(pm: PhysMemory) -> None:
    a = pm.new_owner("a")
    r = pm.alloc("ram0", 200 * PAGE_SIZE, a, max_extent=PAGE_SIZE)
    assert r.size == 200
    pm.check_owned(r, a)
    b = pm.new_owner("b")
    pm.set_owner(r[150:151], b)
    with pytest.raises(IommuFault) as e:
        pm.check_owned(r, a)
    assert e.value.dma_addr == int(r["addr"][150])
    pm.free(r)
    assert (pm.owners_of(r) == OWNER_POISON).all()


def test_view_read_write(pm: PhysMemory) -> None:
    ram = pm.region("ram0")
    v = pm.view(ram.base + 10, 6)
    v[:] = np.frombuffer(b"abcdef", dtype=np.uint8)
    assert bytes(pm.view(ram.base + 10, 6)) == b"abcdef"
    with pytest.raises(IommuFault):
        pm.view(ram.end - 2, 4)
    with pytest.raises(IommuFault):
        pm.view(ram.end, 1)          # the gap between regions
    with pytest.raises(DmaBufError):
        pm.view(ram.base, -1)
    r = make_ranges([ram.base + 3 * PAGE_SIZE, ram.base + 100], [5, 3])
    pm.write(r, b"HELLOxyz")
    assert bytes(pm.read(r)) == b"HELLOxyz"
    assert bytes(pm.view(ram.base + 100, 3)) == b"xyz"
    with pytest.raises(DmaBufError) as e:
        pm.write(r, b"short")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(IommuFault):
        pm.read(make_ranges([ram.end - 4], [8]))   # crosses the end of the region
    with pytest.raises(TypeError):
        pm.write(r, 12345)


def test_copy_across_different_extents(pm: PhysMemory) -> None:
    a = pm.new_owner("a")
    src = pm.alloc("ram0", 64 * PAGE_SIZE, a, max_extent=3 * PAGE_SIZE)
    dst = pm.alloc("vram0", 64 * PAGE_SIZE, a, max_extent=5 * PAGE_SIZE)
    # make the source ragged: odd byte cut points
    ragged = split_ranges(src, 1000)
    payload = np.random.default_rng(7).integers(0, 256, 64 * PAGE_SIZE, dtype=np.uint8)
    pm.write(ragged, payload)
    pm.copy(dst, ragged)
    assert np.array_equal(pm.read(dst), payload)
    assert pm.checksum(dst) == zlib.crc32(payload.tobytes())
    assert pm.checksum(src) == pm.checksum(dst)
    with pytest.raises(DmaBufError) as e:
        pm.copy(dst[:1], src)
    assert e.value.errno == errno.EINVAL
    pm.copy(dst[:0], src[:0])                   # empty copy is a no-op


def test_copy_single_extent_and_overlap(pm: PhysMemory) -> None:
    ram = pm.region("ram0")
    pm.view(ram.base, 16)[:] = np.arange(16, dtype=np.uint8)
    pm.copy(make_ranges([ram.base + 4], [8]), make_ranges([ram.base], [8]))  # memmove
    assert pm.view(ram.base, 12).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]


def test_fill_and_checksum(pm: PhysMemory) -> None:
    ram = pm.region("ram0")
    r = make_ranges([ram.base, ram.base + 2 * PAGE_SIZE], [PAGE_SIZE, PAGE_SIZE])
    pm.fill(r, 0x5A)
    assert pm.checksum(r) == zlib.crc32(b"\x5a" * 2 * PAGE_SIZE)
    assert int(pm.view(ram.base + PAGE_SIZE, 1)[0]) == 0
    with pytest.raises(DmaBufError):
        pm.fill(r, 256)


def test_describe(pm: PhysMemory) -> None:
    d = pm.describe()
    assert [r["name"] for r in d["regions"]] == ["ram0", "vram0"]
    assert d["regions"][0]["free_pages"] == 64 * MiB // PAGE_SIZE
    assert "ram0" in repr(pm.region("ram0"))


def test_resource_module_available() -> None:
    # the sparse test relies on Linux /proc; make the dependency explicit
    assert resource.getpagesize() == PAGE_SIZE


def test_one_physmemory_per_machine() -> None:
    from dmabuf.machine import Machine

    m = Machine()
    pm = m.state(PhysMemory)
    assert m.state(PhysMemory) is pm and pm.machine is m
    assert Machine().state(PhysMemory) is not pm


def test_region_indices_and_no_hugepages() -> None:
    p = PhysMemory(hugepages=False)
    a = p.add_region("a", MiB, MemKind.RAM)
    b = p.add_region("b", MiB, MemKind.DEVICE)
    idx = p.region_indices(make_ranges([b.base, a.base + 10, b.base + 5], [1, 2, 0]))
    assert idx.tolist() == [1, 0]                  # empty ranges are skipped
    with pytest.raises(IommuFault):
        p.region_indices(make_ranges([a.end - 1], [2]))
