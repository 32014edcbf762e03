"""Tests of dmabuf.buf.sg_table: SgTable construction, chunking, DMA-only tables, mapping."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import (
    SG_DMA_BUS_ADDRESS,
    SG_DTYPE,
    UINT_MAX,
    SgTable,
)
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm import PAGE_SIZE, MemKind, PhysMemory, make_ranges

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def pm() -> PhysMemory:
    p = PhysMemory()
    p.add_region("ram0", 64 * MiB, MemKind.RAM)
    p.add_region("bar0", 16 * MiB, MemKind.MMIO)
    return p


def _pages(addrs: list[int]) -> np.ndarray:
    return make_ranges(addrs, PAGE_SIZE)


def test_entry_layout_is_struct_scatterlist() -> None:
    assert SG_DTYPE.itemsize == 32
    assert SG_DTYPE.names == ("page_link", "offset", "length", "dma_address", "dma_length",
                              "dma_flags")


def test_from_pages_merges_contiguous_pages() -> None:
    p = 0x4000_0000
    t = SgTable.from_pages(_pages([p, p + 0x1000, p + 0x2000, p + 0x10000, p + 0x11000,
                                   p + 0x5000]))
    assert t.orig_nents == t.nents == 3
    assert t.cpu_ranges().tolist() == [(p, 0x3000), (p + 0x10000, 0x2000), (p + 0x5000, 0x1000)]
    assert t.size == 6 * PAGE_SIZE
    assert not t.dma_mapped and not t.is_dma_only
    assert [t.sg_page(i) for i in range(3)] == [p, p + 0x10000, p + 0x5000]
    assert list(t.for_each_sg()) == [(p, 0, 0x3000), (p + 0x10000, 0, 0x2000),
                                     (p + 0x5000, 0, 0x1000)]


def test_from_pages_max_segment_like_the_kernel() -> None:
    # 10 contiguous pages, max_segment 3 pages + 100 bytes -> aligned down to 3 pages.
    p = 0x4000_0000
    t = SgTable.from_pages(make_ranges([p], [10 * PAGE_SIZE]), max_segment=3 * PAGE_SIZE + 100)
    assert t.cpu_ranges()["len"].tolist() == [3 * PAGE_SIZE] * 3 + [PAGE_SIZE]
    assert t.cpu_ranges()["addr"].tolist() == [p + i * 3 * PAGE_SIZE for i in range(4)]
    # Default max_segment UINT_MAX rounds down to 0xfffff000: 8 GiB contiguous -> 3 entries.
    big = SgTable.from_pages(make_ranges([1 << 40], [8 * GiB]))
    assert big.cpu_ranges()["len"].tolist() == [0xFFFFF000, 0xFFFFF000, 8 * GiB - 2 * 0xFFFFF000]
    # amdgpu's AMDGPU_MAX_SG_SEGMENT_SIZE: 2 GiB entries.
    amd = SgTable.from_pages(make_ranges([1 << 40], [5 * GiB]), max_segment=2 * GiB)
    assert amd.cpu_ranges()["len"].tolist() == [2 * GiB, 2 * GiB, GiB]
    with pytest.raises(DmaBufError) as e:
        SgTable.from_pages(make_ranges([p], [PAGE_SIZE]), max_segment=PAGE_SIZE - 1)
    assert e.value.errno == errno.EINVAL


def test_from_pages_offset_and_size() -> None:
    p = 0x4000_0000
    t = SgTable.from_pages(_pages([p, p + 0x1000, p + 0x8000]), offset=0x10, size=0x2000)
    assert t.cpu_ranges().tolist() == [(p + 0x10, 0x1FF0), (p + 0x8000, 0x10)]
    assert next(iter(t.for_each_sg())) == (p, 0x10, 0x1FF0)
    assert t.size == 0x2000
    # A size ending inside the first chunk drops the later chunks.
    t2 = SgTable.from_pages(_pages([p, p + 0x8000]), size=100)
    assert t2.orig_nents == 1 and t2.cpu_ranges().tolist() == [(p, 100)]


@pytest.mark.parametrize("kwargs", [
    {"offset": PAGE_SIZE}, {"offset": -1}, {"size": 0}, {"size": 3 * PAGE_SIZE},
    {"offset": 1, "size": 2 * PAGE_SIZE},
])
def test_from_pages_bad_window(kwargs: dict[str, int]) -> None:
    with pytest.raises(DmaBufError) as e:
        SgTable.from_pages(_pages([0x4000_0000, 0x4000_1000]), **kwargs)
    assert e.value.errno == errno.EINVAL


def test_from_pages_rejects_unaligned_and_empty() -> None:
    with pytest.raises(DmaBufError):
        SgTable.from_pages(make_ranges([0x4000_0010], [PAGE_SIZE]))
    with pytest.raises(DmaBufError):
        SgTable.from_pages(make_ranges([0x4000_0000], [100]))
    with pytest.raises(DmaBufError):
        SgTable.from_pages(make_ranges([], []))
    with pytest.raises(TypeError):
        SgTable.from_pages(5)
    with pytest.raises(TypeError):
        SgTable(np.zeros(1, SG_DTYPE), 1, 1, dma_only=False)


def test_dma_only_chunks_at_uint_max() -> None:
    base = 1 << 36
    t = SgTable.dma_only(make_ranges([base, 1 << 40], [10 * GiB, PAGE_SIZE]))
    assert t.orig_nents == 0 and t.nents == 4 and t.is_dma_only and t.dma_mapped
    r = t.dma_ranges()
    assert r["len"].tolist() == [UINT_MAX, UINT_MAX, 10 * GiB - 2 * UINT_MAX, PAGE_SIZE]
    # The kernel's (dma_addr_t)i * UINT_MAX: entries after the first are not page aligned.
    assert r["addr"].tolist() == [base, base + UINT_MAX, base + 2 * UINT_MAX, 1 << 40]
    assert t.size == 10 * GiB + PAGE_SIZE
    assert list(t.for_each_dma())[3] == (1 << 40, PAGE_SIZE)
    assert t.dma_flags().tolist() == [0, 0, 0, 0]
    b = SgTable.dma_only(PhysVec([(base, PAGE_SIZE)]), bus_address=True)
    assert b.dma_flags().tolist() == [SG_DMA_BUS_ADDRESS]
    with pytest.raises(DmaBufError):
        SgTable.dma_only(make_ranges([], []))
    with pytest.raises(DmaBufError):
        SgTable.dma_only(make_ranges([base], [1]), max_len=UINT_MAX + 1)


@pytest.mark.parametrize("access", ["sg_page", "cpu_ranges", "for_each_sg", "dup"])
def test_importer_cannot_reach_pages_of_dma_only_table(access: str) -> None:
    t = SgTable.dma_only(make_ranges([1 << 36], [PAGE_SIZE]))
    with pytest.raises(ContractViolation) as e:
        fn = getattr(t, access)
        fn(0) if access == "sg_page" else fn()
    assert e.value.rule == "dma_buf_sg_page"


def test_map_unmap_through_device(pm: PhysMemory) -> None:
    dev = DirectDev("nic0", pm)
    own = pm.new_owner("buf")
    pages = pm.alloc("ram0", 16 * PAGE_SIZE, own, max_extent=PAGE_SIZE,
                     rng=np.random.default_rng(3))
    t = SgTable.from_pages(pages)
    assert t.map(dev, DmaDataDirection.BIDIRECTIONAL) is t
    assert t.dma_mapped and t.mapping == (dev, DmaDataDirection.BIDIRECTIONAL)
    assert np.array_equal(t.dma_ranges(), t.cpu_ranges())     # dma-direct: identity
    assert t.nents == t.orig_nents and dev.map_calls == 1
    with pytest.raises(ContractViolation):
        t.map(dev, 0)
    with pytest.raises(ContractViolation):
        t.free()                                  # still mapped: would leak the mapping
    with pytest.raises(ContractViolation):
        t.unmap(dev, DmaDataDirection.TO_DEVICE)
    t.unmap(dev, DmaDataDirection.BIDIRECTIONAL)
    assert not t.dma_mapped and dev.unmap_calls == 1 and dev.live_mappings == 0
    with pytest.raises(ContractViolation):
        t.dma_ranges()
    with pytest.raises(ContractViolation):
        t.unmap()
    t.free()
    with pytest.raises(ContractViolation) as e:
        t.cpu_ranges()
    assert e.value.rule == "sg_free_table"
    with pytest.raises(ContractViolation):
        t.free()


def test_map_failure_leaves_table_unmapped(pm: PhysMemory) -> None:
    dev = DirectDev("old", pm, dma_mask_bits=30)
    t = SgTable.from_pages(make_ranges([pm.region("ram0").base], [PAGE_SIZE]))
    with pytest.raises(DmaBufError) as e:
        t.map(dev, 0)
    assert e.value.errno == errno.EIO
    assert not t.dma_mapped and t.nents == 1


def test_wrap_dma_only_hides_pages(pm: PhysMemory) -> None:
    dev = DirectDev("nic0", pm)
    own = pm.new_owner("buf")
    pages = pm.alloc("ram0", 8 * PAGE_SIZE, own, max_extent=2 * PAGE_SIZE,
                     rng=np.random.default_rng(1))
    t = SgTable.from_pages(pages).map(dev, 0)
    w = t.wrap_dma_only()
    assert w.original is t and w.is_dma_only
    assert w.orig_nents == w.nents == t.nents          # sg_alloc_table(from->nents)
    assert np.array_equal(w.dma_ranges(), t.dma_ranges())
    e = w.entries
    assert int(e["page_link"].max()) == 0 and int(e["length"].max()) == 0
    assert int(e["offset"].max()) == 0
    with pytest.raises(ContractViolation):
        w.sg_page(0)
    with pytest.raises(ContractViolation):
        SgTable.from_pages(pages).wrap_dma_only()       # not mapped: nothing to wrap
    t.unmap()


def test_map_phys_vec_mmio(pm: PhysMemory) -> None:
    dev = DirectDev("nic0", pm)
    bar = pm.region("bar0")
    pv = PhysVec([(bar.base, 2 * MiB), (bar.base + 8 * MiB, MiB)])
    t = SgTable.map_phys_vec(dev, pv, DmaDataDirection.BIDIRECTIONAL)
    assert t.orig_nents == 0 and t.nents == 2 and t.is_dma_only
    assert t.dma_ranges().tolist() == [(bar.base, 2 * MiB), (bar.base + 8 * MiB, MiB)]
    assert dev.live_mappings == 1
    t.unmap()                                             # dma_buf_free_sgt
    assert dev.live_mappings == 0
    t.free()
    nop2p = DirectDev("nop2p", pm, p2p=False)
    with pytest.raises(DmaBufError) as e:
        SgTable.map_phys_vec(nop2p, pv, 0)
    assert e.value.errno == errno.EREMOTEIO
    assert nop2p.live_mappings == 0


def test_dup_gives_unmapped_copy(pm: PhysMemory) -> None:
    dev = DirectDev("nic0", pm)
    t = SgTable.from_pages(make_ranges([pm.region("ram0").base], [4 * PAGE_SIZE])).map(dev, 0)
    d = t.dup()
    assert not d.dma_mapped and np.array_equal(d.cpu_ranges(), t.cpu_ranges())
    d.map(dev, 0)
    assert dev.live_mappings == 2
    d.unmap()
    t.unmap()


def test_kernel_footprint_counts_chain_links() -> None:
    def table(n: int) -> SgTable:
        return SgTable.dma_only(make_ranges(np.arange(n, dtype=np.uint64) * 2 * PAGE_SIZE,
                                            PAGE_SIZE))

    assert table(1).kernel_nbytes() == 16 + 32
    assert table(128).kernel_nbytes() == 16 + 32 * 128
    assert table(129).kernel_nbytes() == 16 + 32 * 130      # 127 + link, then 2
    assert table(255).kernel_nbytes() == 16 + 32 * 256      # 127 + link, then 128
    assert table(256).kernel_nbytes() == 16 + 32 * 258
    assert table(1000).nbytes == 32 * 1000


def test_one_gib_of_pages_is_vectorised() -> None:
    n = 262144
    addrs = np.arange(n, dtype=np.uint64) * 2 * PAGE_SIZE + (1 << 40)   # nothing merges
    t = SgTable.from_pages(make_ranges(addrs, PAGE_SIZE))
    assert t.orig_nents == n and t.size == GiB and t.nbytes == 32 * n
    d = t.describe()
    assert d["orig_nents"] == n and d["dma_only"] is False and d["dma_mapped"] is False
    assert "pages" in repr(t)


class _BusDev(DirectDev):
    """dma-direct plus the optional ``bus_address_mask`` extension: ranges in ``bar0`` are bus
    addresses (a P2P ``BUS_ADDR`` peer, offset 0)."""

    def __init__(self, name: str, phys: PhysMemory, shape_bug: bool = False) -> None:
        super().__init__(name, phys)
        self.shape_bug = shape_bug

    def bus_address_mask(self, dma: np.ndarray) -> np.ndarray:
        bar = self.phys.region("bar0")
        mask = (dma["addr"] >= np.uint64(bar.base)) & (dma["addr"] < np.uint64(bar.end))
        return mask[:-1] if self.shape_bug else mask


def test_map_marks_bus_address_entries_from_the_device(pm: PhysMemory) -> None:
    ram, bar = pm.region("ram0").base, pm.region("bar0").base
    plain = DirectDev("nic0", pm)          # no extension: never a bus address
    t = SgTable.from_ranges(make_ranges([ram, ram + 8 * PAGE_SIZE], [PAGE_SIZE] * 2))
    t.map(plain, DmaDataDirection.TO_DEVICE)
    assert t.dma_flags().tolist() == [0, 0]
    t.unmap()
    dev = _BusDev("nic1", pm)
    t.map(dev, DmaDataDirection.TO_DEVICE)                   # RAM: not bus addresses
    assert t.dma_flags().tolist() == [0, 0]
    t.unmap()
    peer = SgTable.from_ranges(make_ranges([bar, bar + 4 * PAGE_SIZE], [PAGE_SIZE] * 2))
    peer.map(dev, DmaDataDirection.BIDIRECTIONAL, mmio=True)
    assert peer.dma_flags().tolist() == [SG_DMA_BUS_ADDRESS, SG_DMA_BUS_ADDRESS]
    peer.unmap()
    assert peer.entries["dma_flags"].tolist() == [0, 0]       # unmap clears the DMA part


def test_bus_address_flags_follow_uint_max_splits(pm: PhysMemory) -> None:
    class Wide(_BusDev):
        def map_ranges(self, phys: np.ndarray, direction: int, *,
                       mmio: bool = False) -> np.ndarray:
            super().map_ranges(phys, direction, mmio=mmio)
            # an IOMMU-like device merging everything into one 5 GiB range after a bus one
            return make_ranges([pm.region("bar0").base, 1 << 40], [PAGE_SIZE, 5 * GiB])

        def unmap_ranges(self, dma: np.ndarray, direction: int) -> None:
            self.unmapped = True

    dev = Wide("wide", pm)
    t = SgTable.from_ranges(make_ranges([pm.region("bar0").base], [PAGE_SIZE]))
    t.map(dev, DmaDataDirection.BIDIRECTIONAL, mmio=True)
    assert t.nents == 3                                  # 4 KiB + (UINT_MAX, 5 GiB - UINT_MAX)
    assert t.dma_flags().tolist() == [SG_DMA_BUS_ADDRESS, 0, 0]
    t.unmap()
    assert dev.unmapped


def test_a_bad_bus_address_mask_is_a_violation_and_unmaps(pm: PhysMemory) -> None:
    dev = _BusDev("buggy", pm, shape_bug=True)
    t = SgTable.from_ranges(make_ranges([pm.region("bar0").base], [PAGE_SIZE]))
    with pytest.raises(ContractViolation) as e:
        t.map(dev, DmaDataDirection.BIDIRECTIONAL, mmio=True)
    assert e.value.rule == "sg_dma_mark_bus_address"
    assert not t.dma_mapped and dev.live_mappings == 0 and dev.unmap_calls == 1


def test_map_or_free_and_unmap_and_free(pm: PhysMemory) -> None:
    ok = DirectDev("nic0", pm)
    t = SgTable.from_pages(make_ranges([pm.region("ram0").base], [PAGE_SIZE]))
    assert t.map_or_free(ok, DmaDataDirection.TO_DEVICE) is t and t.dma_mapped
    with pytest.raises(ContractViolation):
        t.unmap_and_free(ok, DmaDataDirection.FROM_DEVICE)   # refused: nothing freed
    assert not t.freed and t.dma_mapped
    t.unmap_and_free(ok, DmaDataDirection.TO_DEVICE)
    assert t.freed and ok.live_mappings == 0
    narrow = DirectDev("old", pm, dma_mask_bits=30)           # ram0 is above 1 GiB
    bad = SgTable.from_pages(make_ranges([pm.region("ram0").base], [PAGE_SIZE]))
    with pytest.raises(DmaBufError) as e:
        bad.map_or_free(narrow, DmaDataDirection.TO_DEVICE)
    assert e.value.errno == errno.EIO and bad.freed          # the error path freed it
