"""The IOVA allocator: top-down, size-aligned, rcache rounding, 32-bit first, reservations."""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmabuf.dma import DmaDataDirection, DmaDevice, dma_bit_mask, dma_map_phys
from dmabuf.dma.iommu import MSI_IOVA_BASE
from dmabuf.dma.iova import Iova, IovaDomain
from dmabuf.errors import ContractViolation, DmaBufError

from .conftest import NIC, Rig

LIMIT32 = (1 << 20) - 1          # pfn limit of a 32-bit mask with 4 KiB granules


def test_top_down_and_size_aligned() -> None:
    d = IovaDomain()
    a = d.alloc_iova(1, LIMIT32)
    assert a == Iova(LIMIT32, LIMIT32)
    b = d.alloc_iova(4, LIMIT32)
    # below a, aligned to 4 granules
    assert b is not None and b.pfn_lo == (LIMIT32 + 1 - 4 - 4) and b.pfn_lo % 4 == 0
    assert b.pfn_hi == b.pfn_lo + 3
    c = d.alloc_iova(3, LIMIT32, size_aligned=False)
    assert c is not None and c.pfn_hi == b.pfn_lo - 1
    e = d.alloc_iova(3, LIMIT32, size_aligned=True)      # aligned to 4
    assert e is not None and e.pfn_lo % 4 == 0 and e.pfn_hi < c.pfn_lo


def test_alloc_iova_fast_rounds_small_sizes_to_power_of_two() -> None:
    d = IovaDomain()
    pfn = d.alloc_iova_fast(3, LIMIT32)
    node = d.find_iova(pfn)
    assert node is not None and node.size == 4 and pfn % 4 == 0
    pfn = d.alloc_iova_fast(33, LIMIT32)                 # >= 32 granules: not rounded
    node = d.find_iova(pfn)
    assert node is not None and node.size == 33 and pfn % 64 == 0   # but size-aligned to 64


def test_free_and_reuse_and_double_free() -> None:
    d = IovaDomain()
    p1 = d.alloc_iova_fast(16, LIMIT32)
    p2 = d.alloc_iova_fast(16, LIMIT32)
    assert p2 == p1 - 16
    freed = d.free_iova(p1 + 3)                      # any pfn inside frees the node
    assert freed == Iova(p1, p1 + 15)
    assert d.alloc_iova_fast(16, LIMIT32) == p1      # the hole above is found again
    with pytest.raises(ContractViolation) as e:
        d.free_iova(12345)
    assert e.value.rule == "free_iova"
    assert d.allocated_granules() == 32


def test_exhaustion_returns_zero() -> None:
    d = IovaDomain(start_pfn=1)
    assert d.alloc_iova_fast(8, 15) == 8
    assert d.alloc_iova_fast(4, 15) == 4
    assert d.alloc_iova_fast(8, 15) == 0             # no aligned 8-granule hole left
    assert d.alloc_iova_fast(2, 15) == 2
    assert d.alloc_iova_fast(2, 15) == 0             # pfn 0 is never allocatable


def test_reserve_iova_is_skipped_and_not_freeable() -> None:
    d = IovaDomain()
    d.reserve_iova(LIMIT32 - 15, LIMIT32)
    pfn = d.alloc_iova_fast(1, LIMIT32)
    assert pfn == LIMIT32 - 16
    with pytest.raises(ContractViolation):
        d.free_iova(LIMIT32)
    with pytest.raises(DmaBufError) as e:
        d.reserve_iova(pfn, pfn)
    assert e.value.errno == errno.EBUSY
    d.reserve_iova(LIMIT32 - 20, LIMIT32 - 17)        # merges with nothing allocated in between
    assert [n.reserved for n in d.ranges()] == [True, False, True]


def test_bad_args() -> None:
    with pytest.raises(DmaBufError):
        IovaDomain(granule=3000)
    with pytest.raises(DmaBufError):
        IovaDomain(start_pfn=0)
    with pytest.raises(DmaBufError):
        IovaDomain().alloc_iova(0, LIMIT32)


def test_pci_devices_get_32bit_iovas_first_then_64bit(rig: Rig) -> None:
    dom = rig.domain()
    dev = rig.device(NIC, dom)
    o = rig.pm.new_owner("b")
    buf = rig.pm.alloc(rig.ram, 64 * 4096, o)
    a = dma_map_phys(dev, int(buf["addr"][0]), 4096, DmaDataDirection.DMA_TO_DEVICE)
    assert a == 0xFFFFF000                            # top of the 32-bit space
    assert dev.pci_32bit_workaround
    # the MSI window 0xfee00000-0xfeefffff is reserved in every DMA domain
    assert dom.iovad is not None
    assert any(n.reserved and n.pfn_lo == MSI_IOVA_BASE >> 12 for n in dom.iovad.ranges())
    # exhaust the 32-bit space with one huge reservation, then the next map goes above 4 GiB
    dom.iovad.reserve_iova(1, (MSI_IOVA_BASE >> 12) - 1)
    dom.iovad.reserve_iova((MSI_IOVA_BASE >> 12) + 256, 0xFFFFE)
    b = dma_map_phys(dev, int(buf["addr"][0]) + 4096, 4096, DmaDataDirection.DMA_TO_DEVICE)
    assert b > 0xFFFFFFFF and b == (1 << 48) - 4096
    assert not dev.pci_32bit_workaround


def test_32bit_device_limit(rig: Rig) -> None:
    dom = rig.domain()
    dev = DmaDevice(NIC, rig.pm, iommu=dom, dma_mask=dma_bit_mask(32), machine=rig.machine)
    o = rig.pm.new_owner("b")
    buf = rig.pm.alloc(rig.ram, 4096, o)
    a = dma_map_phys(dev, int(buf["addr"][0]), 100, DmaDataDirection.DMA_TO_DEVICE)
    assert a <= 0xFFFFFFFF


def _has_aligned_hole(nodes: list[Iova], size: int, limit: int, start: int) -> bool:
    """Brute force: is there an aligned run of `size` free pfns in [start, limit]?"""
    align = 1 << (size - 1).bit_length()
    used = set()
    for n in nodes:
        used.update(range(n.pfn_lo, n.pfn_hi + 1))
    lo = -(-start // align) * align
    return any(all(p not in used for p in range(b, b + size))
               for b in range(lo, limit - size + 2, align))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 9), st.integers(0, 50)),
                min_size=1, max_size=40))
def test_random_alloc_free_keeps_invariants(ops: list[tuple[bool, int, int]]) -> None:
    limit = 127
    d = IovaDomain(start_pfn=1)
    live: list[Iova] = []
    for is_alloc, size, pick in ops:
        if is_alloc or not live:
            before = d.ranges()
            got = d.alloc_iova(size, limit)
            if got is None:
                assert not _has_aligned_hole(before, size, limit, 1)
                continue
            align = 1 << (size - 1).bit_length()
            assert got.pfn_lo % align == 0 and got.size == size
            assert got.pfn_lo >= 1 and got.pfn_hi <= limit
            live.append(got)
        else:
            victim = live.pop(pick % len(live))
            assert d.free_iova(victim.pfn_lo) == victim
        nodes = d.ranges()
        for a, b in itertools.pairwise(nodes):
            assert a.pfn_hi < b.pfn_lo                    # no overlap, sorted
        assert sorted(n.pfn_lo for n in nodes) == sorted(n.pfn_lo for n in live)


def test_pci_windows_are_reserved_in_the_iova_space(rig: Rig) -> None:
    from dmabuf.dma import dma_map_phys_ranges
    from dmabuf.mm import MemKind

    dom = rig.domain()
    dev = rig.device(NIC, dom)
    # a BAR right below 4 GiB, where the 32-bit IOVAs would go first
    low = rig.pm.add_region("low BAR", 16 << 20, MemKind.MMIO, base=0xF000_0000)
    o = rig.pm.new_owner("b")
    buf = rig.pm.alloc(rig.ram, 64 << 20, o, contiguous=True)
    m = dma_map_phys_ranges(dev, buf, DmaDataDirection.DMA_TO_DEVICE)
    assert m.iova is not None
    start, size = m.iova
    assert start + size <= low.base or start >= low.end
    assert dom.iovad is not None
    resv = [(n.pfn_lo, n.pfn_hi) for n in dom.iovad.ranges() if n.reserved]
    assert (low.base >> 12, (low.end - 1) >> 12) in resv
    # the GPU BAR window is reserved at its bus address (paddr + bus_offset)
    bus = rig.bar.base + rig.bus_offset
    assert any(lo <= bus >> 12 <= hi for lo, hi in resv)
