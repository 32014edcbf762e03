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
    PhysRegion,
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


# ------------------------------------------------------------------ adjacent regions (never merged)
def _adjacent() -> tuple[PhysMemory, PhysRegion, PhysRegion]:
    p = PhysMemory()
    lo = p.add_region("lo", 1 * MiB, MemKind.RAM, base=GiB)
    hi = p.add_region("hi", 1 * MiB, MemKind.DEVICE, base=GiB + MiB)    # starts where lo ends
    return p, lo, hi


def test_byte_access_never_merges_across_adjacent_regions() -> None:
    p, lo, hi = _adjacent()
    r = make_ranges([lo.end - 2 * PAGE_SIZE, hi.base], [2 * PAGE_SIZE, PAGE_SIZE])
    data = np.random.default_rng(3).integers(0, 256, 3 * PAGE_SIZE, dtype=np.uint8)
    p.write(r, data)
    assert np.array_equal(lo.backing[-2 * PAGE_SIZE:], data[:2 * PAGE_SIZE])
    assert np.array_equal(hi.backing[:PAGE_SIZE], data[2 * PAGE_SIZE:])
    assert np.array_equal(p.read(r), data)
    assert p.checksum(r) == zlib.crc32(data.tobytes())
    dst = make_ranges([hi.base + 8 * PAGE_SIZE, lo.base], [PAGE_SIZE, 2 * PAGE_SIZE])
    p.copy(dst, r)                                    # both lists cross the edge
    assert np.array_equal(p.read(dst), data)
    p.copy(r, make_ranges([lo.base + 64 * PAGE_SIZE], [3 * PAGE_SIZE]))   # one range to two
    assert not p.read(r).any()                        # that source was never written: zeros
    p.fill(r, 0x5A)
    assert set(p.read(r).tolist()) == {0x5A}
    assert int(lo.backing[-2 * PAGE_SIZE - 1]) == 0 and int(hi.backing[PAGE_SIZE]) == 0
    # one range running from one region into the next is still not inside one region
    with pytest.raises(IommuFault) as e:
        p.read(make_ranges([lo.end - PAGE_SIZE], [2 * PAGE_SIZE]))
    assert "runs past its end" in str(e.value)


def test_split_at_regions_cuts_at_edges_only() -> None:
    p, lo, hi = _adjacent()
    far = p.add_region("far", 1 * MiB, MemKind.RAM, base=GiB + 4 * MiB)   # a gap before it
    inside = make_ranges([lo.base, hi.base + 5], [PAGE_SIZE, 10])
    assert np.shares_memory(p.split_at_regions(inside), inside)           # nothing to cut: no copy
    r = make_ranges([lo.end - 100, far.base, lo.base, 7],
                    [300, 2 * PAGE_SIZE, 2 * MiB, 5])
    assert p.split_at_regions(r).tolist() == [
        (lo.end - 100, 100), (hi.base, 200),          # across the lo|hi edge
        (far.base, 2 * PAGE_SIZE),
        (lo.base, MiB), (hi.base, MiB),               # exactly both regions
        (7, 5),                                       # in no region: left for the caller
    ]
    one = p.split_at_regions(make_ranges([hi.end - 8], [16]))    # runs into the gap
    assert one.tolist() == [(hi.end - 8, 8), (hi.end, 8)]
    with pytest.raises(IommuFault):
        p.read(one)


# ------------------------------------------------------------------ check_owned / owners_of
@pytest.mark.parametrize("layout", ["dense", "sparse", "unsorted", "ends_at_region_end", "huge"])
def test_check_owned_many_spans_names_the_first_bad_page(layout: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import dmabuf.mm.phys as phys_mod

    p = PhysMemory(poison_on_free=False)
    ram = p.add_region("ram0", 64 * MiB, MemKind.RAM)
    a = p.new_owner("a")
    b = p.new_owner("b")
    p.alloc(ram, ram.size, a, contiguous=True)
    npg = ram.npages
    if layout in ("dense", "unsorted"):
        starts = np.arange(256) * 64                  # 256 spans of 63 pages, 1-page gaps
        lens = np.full(256, 63)
    elif layout in ("sparse", "huge"):
        starts = np.arange(8) * 2048                  # 8 spans of 64 pages, far apart
        lens = np.full(8, 64)
    else:
        starts = np.concatenate(([npg - 64], np.arange(1, 8) * 128))
        lens = np.full(8, 64)
    if layout == "unsorted":
        perm = np.random.default_rng(1).permutation(starts.size)
        starts, lens = starts[perm], lens[perm]
    if layout == "huge":
        monkeypatch.setattr(phys_mod, "_EXPAND_LIMIT", 100)    # sparse and "huge": per span
        starts = starts[::-1].copy()
    r = make_ranges(ram.base + starts * PAGE_SIZE, lens * PAGE_SIZE)
    p.check_owned(r, a)
    assert (p.owners_of(r) == a).all() and p.owners_of(r).size == int(lens.sum())
    # pages of list positions 5 (the first bad one in list order) and 2 change hands
    bad5 = ram.base + (int(starts[5]) + int(lens[5]) - 1) * PAGE_SIZE   # its last page
    bad2 = ram.base + (int(starts[2]) + 7) * PAGE_SIZE
    p.set_owner(make_ranges([bad5], [PAGE_SIZE]), b)
    with pytest.raises(IommuFault) as e:
        p.check_owned(r, a)
    assert e.value.dma_addr == bad5 and "'b'" in str(e.value)
    p.free(make_ranges([bad2], [PAGE_SIZE]))
    with pytest.raises(IommuFault) as e:
        p.check_owned(r, a)
    assert e.value.dma_addr == bad2 and "poisoned" in str(e.value)
    expect = np.concatenate([ram.owner[s:s + n] for s, n in
                             zip(starts.tolist(), lens.tolist(), strict=True)])
    assert np.array_equal(p.owners_of(r), expect)
    with pytest.raises(ContractViolation) as cv:                          # free() checks too
        p.free(r)
    assert cv.value.rule == "free_pages" and f"{bad2:#x}" in str(cv.value)


def test_owners_of_keeps_list_order_across_regions(pm: PhysMemory) -> None:
    a = pm.new_owner("a")
    b = pm.new_owner("b")
    ra = pm.alloc("ram0", 8 * PAGE_SIZE, a, max_extent=PAGE_SIZE)
    rb = pm.alloc("vram0", 8 * PAGE_SIZE, b, max_extent=PAGE_SIZE)
    mixed = np.concatenate((ra[:3], rb[:2], ra[3:4], ra[3:4], rb[5:]))
    mixed[0]["len"] = 2 * PAGE_SIZE - 1                 # still 2 pages
    got = pm.owners_of(mixed)
    assert got.tolist() == [a, a, a, a, b, b, a, a, b, b, b]
    assert pm.owners_of(make_ranges([], [])).size == 0


# ------------------------------------------------------------------ aliases
def test_alias_shares_bytes_and_owners_and_reserves_the_window() -> None:
    p = PhysMemory()
    bar = p.add_region("bar", 16 * MiB, MemKind.MMIO, base=0xF0_0000_0000)
    gen = p.generation
    vram = p.add_alias("vram", bar, 0, 4 * MiB, MemKind.DEVICE)
    assert p.generation == gen + 1
    assert vram.alias_of is bar and vram.alias_offset == 0 and vram.numa_node == bar.numa_node
    assert vram.kind is MemKind.DEVICE and vram.base != bar.base
    assert p.region_at(vram.base) is vram and vram.free_pages == vram.npages
    # the window is reserved in the BAR's allocator
    assert bar.free_pages == bar.npages - vram.npages
    o = p.new_owner("bo")
    r = p.alloc(vram, 2 * PAGE_SIZE, o, zero=True)
    assert r.tolist() == [(vram.base, 2 * PAGE_SIZE)]
    through_bar = make_ranges([bar.base], [2 * PAGE_SIZE])
    p.check_owned(through_bar, o)                   # same owner table
    p.write(through_bar, b"\x11" * 2 * PAGE_SIZE)   # same bytes
    assert set(p.read(r).tolist()) == {0x11}
    q = p.alloc(bar, PAGE_SIZE, p.new_owner("other"))
    assert int(q["addr"][0]) == bar.base + 4 * MiB  # first fit skips the aliased window
    with pytest.raises(ContractViolation) as cv:
        p.free(through_bar)                         # free through the alias only
    assert "'vram'" in str(cv.value) and cv.value.rule == "free_pages"
    p.free(r)                                       # poisons through both windows
    with pytest.raises(IommuFault) as e:
        p.check_owned(through_bar, o)
    assert "poisoned" in str(e.value)
    assert int(bar.backing[0]) == POISON_FREE
    d = vram.describe()
    assert d["alias_of"] == "bar" and d["alias_offset"] == 0 and "alias of 'bar'" in repr(vram)
    assert "alias_of" not in bar.describe()


def test_alias_window_offset_nesting_and_errors() -> None:
    p = PhysMemory()
    dev = p.add_region("hbm", 8 * MiB, MemKind.DEVICE)
    win = p.add_alias("win", "hbm", 2 * MiB, 2 * MiB, MemKind.MMIO, base=0xE0_0000_0000,
                      numa_node=3)
    assert win.base == 0xE0_0000_0000 and win.numa_node == 3
    p.view(win.base, 4)[:] = [1, 2, 3, 4]
    assert dev.backing[2 * MiB:2 * MiB + 4].tolist() == [1, 2, 3, 4]
    inner = p.add_alias("inner", win, PAGE_SIZE, PAGE_SIZE, MemKind.MMIO)   # alias of an alias
    assert inner.alias_of is win and win.free_pages == win.npages - 1
    assert int(p.view(inner.base - 0, 1)[0]) == 0
    p.view(inner.base, 1)[0] = 9
    assert int(dev.backing[2 * MiB + PAGE_SIZE]) == 9
    with pytest.raises(DmaBufError) as e:                       # already reserved
        p.add_alias("again", dev, 3 * MiB, PAGE_SIZE, MemKind.MMIO)
    assert e.value.errno == errno.EBUSY
    o = p.new_owner("x")
    p.alloc(dev, PAGE_SIZE, o)                                  # page 0 of hbm
    with pytest.raises(DmaBufError) as e:                       # allocated in the target
        p.add_alias("busy", dev, 0, PAGE_SIZE, MemKind.MMIO)
    assert e.value.errno == errno.EBUSY
    for bad in ((100, PAGE_SIZE), (0, 100), (7 * MiB, 2 * MiB), (-PAGE_SIZE, PAGE_SIZE)):
        with pytest.raises(DmaBufError) as e:
            p.add_alias("bad", dev, bad[0], bad[1], MemKind.MMIO)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        p.add_alias("win", dev, 5 * MiB, PAGE_SIZE, MemKind.MMIO)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(DmaBufError) as e:
        p.add_alias("ghost", PhysMemory().add_region("r", MiB, MemKind.RAM), 0, PAGE_SIZE,
                    MemKind.RAM)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        p.add_alias("over", dev, 5 * MiB, PAGE_SIZE, MemKind.MMIO, base=win.base)
    assert e.value.errno == errno.EINVAL
    assert dev.free_pages == dev.npages - 512 - 1                # window + the allocated page
    with pytest.raises(TypeError):
        p.add_alias("t", dev, 5 * MiB, PAGE_SIZE, "mmio")  # type: ignore[arg-type]


# ------------------------------------------------------------------ given backing
def test_region_backed_by_a_memfd_is_shared_with_other_mappings() -> None:
    import mmap
    import os

    fd = os.memfd_create("test-phys", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 4 * MiB)
        p = PhysMemory()
        ram = p.add_region("ram0", 4 * MiB, MemKind.RAM, backing=fd)
        other = mmap.mmap(fd, 4 * MiB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        at = 3 * PAGE_SIZE + 5
        p.write(make_ranges([ram.base + at], [3]), b"abc")
        assert other[at:at + 3] == b"abc"
        other[100:102] = b"zz"
        assert bytes(p.read(make_ranges([ram.base + 100], [2]))) == b"zz"
        o = p.new_owner("o")
        r = p.alloc(ram, PAGE_SIZE, o)
        p.free(r)                                              # poison goes to the file too
        assert other[0] == POISON_FREE
        other.close()
        with pytest.raises(DmaBufError) as e:                  # file too small
            PhysMemory().add_region("big", 8 * MiB, MemKind.RAM, backing=fd)
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert bytes(p.read(make_ranges([ram.base + at], [3]))) == b"abc"  # mapping outlives fd
    with pytest.raises(DmaBufError) as e:
        PhysMemory().add_region("closed", MiB, MemKind.RAM, backing=fd)
    assert e.value.errno == errno.EBADF


def test_region_backed_by_a_buffer_and_bad_backings() -> None:
    buf = bytearray(2 * MiB)
    p = PhysMemory()
    r = p.add_region("b", MiB, MemKind.DEVICE, backing=buf)      # the first size bytes
    p.fill(make_ranges([r.base], [16]), 0xEE)
    assert buf[:16] == b"\xee" * 16 and buf[16] == 0
    arr = np.zeros(MiB // 8, dtype=np.uint64)
    r2 = p.add_region("a", MiB, MemKind.RAM, backing=arr)
    p.write(make_ranges([r2.base], [8]), np.array([7], dtype=np.uint64).view(np.uint8))
    assert int(arr[0]) == 7
    with pytest.raises(DmaBufError) as e:
        p.add_region("ro", MiB, MemKind.RAM, backing=bytes(MiB))        # read-only
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        p.add_region("small", MiB, MemKind.RAM, backing=bytearray(4096))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        p.add_region("strided", PAGE_SIZE, MemKind.RAM,
                     backing=np.zeros(4 * PAGE_SIZE, dtype=np.uint8)[::2])
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        p.add_region("obj", MiB, MemKind.RAM, backing=object())
    with pytest.raises(TypeError):
        p.add_region("flag", MiB, MemKind.RAM, backing=True)
    with pytest.raises(DmaBufError) as e:
        p.add_region("sz", 100, MemKind.RAM, backing=bytearray(4096))   # size checked first
    assert e.value.errno == errno.EINVAL
    assert [x.name for x in p.regions] == ["b", "a"]


def test_generation_counts_memory_map_changes() -> None:
    p = PhysMemory()
    assert p.generation == 0
    r = p.add_region("r", MiB, MemKind.RAM)
    p.add_alias("w", r, 0, PAGE_SIZE, MemKind.MMIO)
    with pytest.raises(DmaBufError):
        p.add_region("r", MiB, MemKind.RAM)                       # failures change nothing
    assert p.generation == 2


def test_mmio_regions_are_allocatable_by_their_driver() -> None:
    p = PhysMemory()
    bar = p.add_region("bar", 4 * MiB, MemKind.MMIO)
    o = p.new_owner("hbm")
    r = p.alloc(bar, 2 * PAGE_SIZE, o, contiguous=True)       # habanalabs-style DRAM BAR
    assert r.tolist() == [(bar.base, 2 * PAGE_SIZE)]
    p.check_owned(r, o)
