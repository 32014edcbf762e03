"""Tests of dmabuf.buf.device: the DmaDev protocol and DirectDev (dma-direct, no IOMMU)."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.buf.device import DirectDev, DmaDataDirection, DmaDev, check_direction
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm import PAGE_SIZE, MemKind, PhysMemory, make_ranges

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def pm() -> PhysMemory:
    p = PhysMemory()
    p.add_region("ram0", 64 * MiB, MemKind.RAM)
    p.add_region("bar0", 16 * MiB, MemKind.MMIO)
    return p


def test_direction_enum_values_are_the_kernels() -> None:
    assert [int(d) for d in DmaDataDirection] == [0, 1, 2, 3]
    assert check_direction(2) is DmaDataDirection.FROM_DEVICE
    with pytest.raises(ContractViolation) as e:
        check_direction(DmaDataDirection.NONE)
    assert e.value.rule == "valid_dma_direction"
    with pytest.raises(ContractViolation):
        check_direction(7)
    with pytest.raises(TypeError):
        check_direction("to_device")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_direction(True)


def test_directdev_implements_protocol(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm)
    assert isinstance(d, DmaDev)
    assert d.name == "nic0" and d.phys is pm
    with pytest.raises(TypeError):
        DirectDev("", pm)
    with pytest.raises(TypeError):
        DirectDev("x", object())  # type: ignore[arg-type]


def test_map_is_identity_and_counted(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm)
    own = pm.new_owner("buf")
    pages = pm.alloc("ram0", 1 * MiB, own, max_extent=PAGE_SIZE)
    dma = d.map_ranges(pages, DmaDataDirection.BIDIRECTIONAL)
    assert np.array_equal(dma, pages)
    assert dma is not pages
    assert d.map_calls == 1 and d.unmap_calls == 0
    assert d.live_mappings == 1 and d.mapped_bytes == MiB
    assert np.array_equal(d.translate(dma[:3]), pages[:3])
    d.unmap_ranges(dma, DmaDataDirection.BIDIRECTIONAL)
    assert d.unmap_calls == 1 and d.live_mappings == 0 and d.mapped_bytes == 0


def test_translate_faults_after_unmap(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm)
    own = pm.new_owner("buf")
    pages = pm.alloc("ram0", 64 * 1024, own)
    dma = d.map_ranges(pages, 0)
    d.unmap_ranges(dma, 0)
    with pytest.raises(IommuFault) as e:
        d.translate(dma)
    assert e.value.errno == errno.EFAULT
    assert e.value.dma_addr == int(pages["addr"][0])
    assert e.value.device == "nic0"


def test_translate_partial_coverage_faults(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm)
    own = pm.new_owner("buf")
    pages = pm.alloc("ram0", 8 * PAGE_SIZE, own)
    a = int(pages["addr"][0])
    d.map_ranges(make_ranges([a], [4 * PAGE_SIZE]), 0)
    assert d.translate(make_ranges([a + 10], [100]))["addr"][0] == a + 10
    with pytest.raises(IommuFault):
        d.translate(make_ranges([a + 3 * PAGE_SIZE], [2 * PAGE_SIZE]))


def test_translate_unchecked_reaches_any_memory(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm, check_mapped=False)
    base = pm.region("ram0").base
    assert int(d.translate(make_ranges([base], [PAGE_SIZE]))["len"][0]) == PAGE_SIZE
    with pytest.raises(IommuFault):       # nothing there at all
        d.translate(make_ranges([5 * GiB], [PAGE_SIZE]))


def test_overlapping_mappings_union(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm)
    base = pm.region("ram0").base
    m1 = d.map_ranges(make_ranges([base], [2 * PAGE_SIZE]), 0)
    m2 = d.map_ranges(make_ranges([base + PAGE_SIZE], [2 * PAGE_SIZE]), 0)
    assert d.translate(make_ranges([base], [3 * PAGE_SIZE])).size == 1
    d.unmap_ranges(m1, 0)
    with pytest.raises(IommuFault):
        d.translate(make_ranges([base], [PAGE_SIZE]))
    d.unmap_ranges(m2, 0)


def test_same_range_mapped_twice_is_refcounted(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm)
    r = make_ranges([pm.region("ram0").base], [PAGE_SIZE])
    a = d.map_ranges(r, 1)
    b = d.map_ranges(r, 1)
    assert d.live_mappings == 2
    d.unmap_ranges(a, 1)
    assert d.translate(r).size == 1
    d.unmap_ranges(b, 1)
    with pytest.raises(ContractViolation):
        d.unmap_ranges(b, 1)


def test_unmap_errors(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm)
    r = make_ranges([pm.region("ram0").base], [2 * PAGE_SIZE])
    with pytest.raises(ContractViolation) as e:
        d.unmap_ranges(r, 0)
    assert e.value.rule == "dma_debug_unmap"
    dma = d.map_ranges(r, DmaDataDirection.TO_DEVICE)
    with pytest.raises(ContractViolation, match="direction"):
        d.unmap_ranges(dma, DmaDataDirection.FROM_DEVICE)
    with pytest.raises(ContractViolation):      # split differently from the mapping
        d.unmap_ranges(make_ranges([int(r["addr"][0])] * 2, [PAGE_SIZE]), 1)
    d.unmap_ranges(dma, DmaDataDirection.TO_DEVICE)


def test_map_errors(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm)
    base = pm.region("ram0").base
    with pytest.raises(DmaBufError) as e:
        d.map_ranges(make_ranges([], []), 0)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        d.map_ranges(make_ranges([base], [0]), 0)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(IommuFault):
        d.map_ranges(make_ranges([3 * GiB + 17 * MiB], [PAGE_SIZE]), 0)
    with pytest.raises(ContractViolation):
        d.map_ranges(make_ranges([base], [PAGE_SIZE]), 3)
    with pytest.raises(TypeError):
        d.map_ranges([(base, "x")], 0)  # type: ignore[list-item]
    assert d.map_calls == 0


def test_dma_mask(pm: PhysMemory) -> None:
    d32 = DirectDev("old", pm, dma_mask_bits=32)       # RAM is at 1 GiB: below 4 GiB
    r = make_ranges([pm.region("ram0").base], [PAGE_SIZE])
    d32.unmap_ranges(d32.map_ranges(r, 0), 0)
    d30 = DirectDev("older", pm, dma_mask_bits=30)     # 1 GiB and up is beyond a 30-bit mask
    with pytest.raises(DmaBufError) as e:
        d30.map_ranges(r, 0)
    assert e.value.errno == errno.EIO
    with pytest.raises(DmaBufError):
        DirectDev("bad", pm, dma_mask_bits=70)


def test_mmio_rules(pm: PhysMemory) -> None:
    d = DirectDev("nic0", pm)
    bar = make_ranges([pm.region("bar0").base], [PAGE_SIZE])
    ram = make_ranges([pm.region("ram0").base], [PAGE_SIZE])
    with pytest.raises(ContractViolation) as e:
        d.map_ranges(bar, 0)
    assert e.value.rule == "DMA_ATTR_MMIO"
    with pytest.raises(ContractViolation):
        d.map_ranges(ram, 0, mmio=True)
    m = d.map_ranges(bar, 0, mmio=True)
    d.unmap_ranges(m, 0)
    nop2p = DirectDev("nop2p", pm, p2p=False)
    with pytest.raises(DmaBufError) as e2:
        nop2p.map_ranges(bar, 0, mmio=True)
    assert e2.value.errno == errno.EREMOTEIO
