"""kernel/dma/mapping.c: dma_map_phys dispatch, masks, dma-debug checks, scatterlist mapping."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.dma import (
    DMA_ATTR_MMIO,
    DMA_MAPPING_ERROR,
    IOMMU_CACHE,
    IOMMU_MMIO,
    DmaDataDirection,
    DmaDevice,
    IommuDomain,
    IommuDomainType,
    dma_addressing_limited,
    dma_bit_mask,
    dma_get_mask,
    dma_get_max_seg_size,
    dma_get_merge_boundary,
    dma_get_required_mask,
    dma_map_phys,
    dma_map_phys_ranges,
    dma_map_resource,
    dma_mapping_error,
    dma_set_mask,
    dma_set_mask_and_coherent,
    dma_unmap_phys,
    dma_unmap_phys_ranges,
    dma_unmap_resource,
)
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm import MemKind, PhysMemory, make_ranges, split_ranges, total_len

from .conftest import CPU_NIC, NIC, Rig

TO = DmaDataDirection.DMA_TO_DEVICE
FROM = DmaDataDirection.DMA_FROM_DEVICE
BIDI = DmaDataDirection.DMA_BIDIRECTIONAL


def test_direct_map_is_identity_and_moves_bytes(rig: Rig) -> None:
    dev = rig.device(NIC)
    o = rig.pm.new_owner("buf")
    buf = rig.pm.alloc(rig.ram, 8192, o)
    pa = int(buf["addr"][0])
    rig.pm.write(buf, rig.pattern(8192))
    addr = dma_map_phys(dev, pa + 100, 5000, TO)
    assert addr == pa + 100
    assert np.array_equal(dev.dma_read(make_ranges([addr], [5000]), expect_owner=o),
                          rig.pattern(8192)[100:5100])
    assert dev.stats["direct_maps"] == 1
    dma_unmap_phys(dev, addr, 5000, TO)
    assert dev.debug_maps == {}


def test_direct_mask_failure_is_enomem(rig: Rig) -> None:
    dev = rig.device(NIC, bits=30)                # RAM starts at 1 GiB: unreachable
    o = rig.pm.new_owner("buf")
    buf = rig.pm.alloc(rig.ram, 4096, o)
    with pytest.raises(DmaBufError) as e:
        dma_map_phys(dev, int(buf["addr"][0]), 4096, TO)
    assert e.value.errno == errno.ENOMEM and "swiotlb" in str(e.value)
    assert dma_addressing_limited(dev)
    assert not dma_addressing_limited(rig.device(CPU_NIC))


def test_iommu_map_and_use_after_unmap(rig: Rig) -> None:
    dom = rig.domain(lazy=False)
    dev = rig.device(NIC, dom)
    o = rig.pm.new_owner("buf")
    buf = rig.pm.alloc(rig.ram, 16384, o)
    data = rig.pattern(16384, seed=3)
    rig.pm.write(buf, data)
    pa = int(buf["addr"][0])
    addr = dma_map_phys(dev, pa + 0x10, 0x3000, BIDI)
    assert addr != pa + 0x10 and addr & 0xFFF == 0x10      # an IOVA keeping the offset
    got = dev.dma_read(make_ranges([addr], [0x3000]), expect_owner=o)
    assert np.array_equal(got, data[0x10:0x3010])
    dev.dma_write(make_ranges([addr + 0x20], [4]), b"ABCD", expect_owner=o)
    assert bytes(rig.pm.view(pa + 0x30, 4)) == b"ABCD"
    assert dom.stats.map_calls == 1 and dom.stats.sync_map == 1
    dma_unmap_phys(dev, addr, 0x3000, BIDI)
    assert dom.stats.iotlb_flushes == 1                     # strict: flushed at unmap
    with pytest.raises(IommuFault) as f:
        dev.dma_read(make_ranges([addr], [16]))
    assert f.value.device == NIC
    assert len(dev.faults) == 1 and dom.faults[-1].dma_addr == addr
    assert dom.iovad is not None and dom.iovad.allocated_granules() == 0


def test_direction_is_enforced_by_the_iommu(rig: Rig) -> None:
    dev = rig.device(NIC, rig.domain())
    o = rig.pm.new_owner("buf")
    buf = rig.pm.alloc(rig.ram, 4096, o)
    to = dma_map_phys(dev, int(buf["addr"][0]), 4096, TO)
    with pytest.raises(IommuFault) as f:
        dev.dma_write(make_ranges([to], [4]), b"xxxx")
    assert "permission" in str(f.value)
    assert bytes(rig.pm.view(int(buf["addr"][0]), 4)) != b"xxxx"


def test_dma_debug_checks(rig: Rig) -> None:
    dev = rig.device(NIC, rig.domain())
    o = rig.pm.new_owner("buf")
    buf = rig.pm.alloc(rig.ram, 4096, o)
    pa = int(buf["addr"][0])
    addr = dma_map_phys(dev, pa, 4096, TO)
    with pytest.raises(ContractViolation) as e:
        dma_unmap_phys(dev, addr, 2048, TO)
    assert e.value.rule == "dma_debug"
    with pytest.raises(ContractViolation):
        dma_unmap_phys(dev, addr, 4096, FROM)
    dma_unmap_phys(dev, addr, 4096, TO)
    with pytest.raises(ContractViolation):
        dma_unmap_phys(dev, addr, 4096, TO)
    # dma-direct: the same phys mapped twice gives the same address; both unmap cleanly
    ddev = rig.device(CPU_NIC)
    a1 = dma_map_phys(ddev, pa, 4096, TO)
    a2 = dma_map_phys(ddev, pa, 4096, TO)
    assert a1 == a2 == pa
    dma_unmap_phys(ddev, a1, 4096, TO)
    dma_unmap_phys(ddev, a2, 4096, TO)
    assert ddev.debug_maps == {}


@pytest.mark.parametrize("bad", [DmaDataDirection.DMA_NONE, 7, -1, "to"])
def test_invalid_direction_is_a_bug(rig: Rig, bad: object) -> None:
    dev = rig.device(NIC)
    with pytest.raises(ContractViolation) as e:
        dma_map_phys(dev, rig.ram.base, 4096, bad)  # type: ignore[arg-type]
    assert e.value.rule == "valid_dma_direction"


def test_bad_inputs(rig: Rig) -> None:
    dev = rig.device(NIC)
    with pytest.raises(DmaBufError) as e:
        dma_map_phys(dev, rig.ram.base, 0, TO)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        dma_map_phys(dev, float(rig.ram.base), 4096, TO)  # type: ignore[arg-type]
    with pytest.raises(IommuFault):
        dma_map_phys(dev, 0x10, 4096, TO)            # no memory there
    nomask = DmaDevice("x", rig.pm, dma_mask=None, machine=rig.machine)
    with pytest.raises(DmaBufError) as e:
        dma_map_phys(nomask, rig.ram.base, 4096, TO)
    assert e.value.errno == errno.ENOMEM
    with pytest.raises(TypeError):
        DmaDevice("x", rig.pm, iommu="dom", machine=rig.machine)  # type: ignore[arg-type]
    with pytest.raises(DmaBufError):
        DmaDevice("x", rig.pm, dma_mask=-1, machine=rig.machine)
    assert dma_mapping_error(DMA_MAPPING_ERROR) == -errno.ENOMEM
    assert dma_mapping_error(0x1000) == 0


def test_masks(rig: Rig) -> None:
    dev = DmaDevice(NIC, rig.pm, machine=rig.machine)
    assert dma_get_mask(dev) == dma_bit_mask(32)               # PCI default
    with pytest.raises(DmaBufError) as e:
        dma_set_mask(dev, dma_bit_mask(20))                    # below ZONE_DMA
    assert e.value.errno == errno.EIO
    dma_set_mask_and_coherent(dev, dma_bit_mask(64))
    assert dev.dma_mask == dev.coherent_dma_mask == dma_bit_mask(64)
    assert dma_get_required_mask(dev) == dma_bit_mask(31)       # RAM ends at 1.25 GiB
    iodev = rig.device(NIC, rig.domain())
    dma_set_mask(iodev, dma_bit_mask(20))                      # anything goes behind an IOMMU
    assert dma_get_required_mask(iodev) == dma_bit_mask(32)
    assert dma_get_merge_boundary(iodev) == 4095 and dma_get_merge_boundary(dev) == 0
    assert dma_get_max_seg_size(dev) == 65536
    with pytest.raises(TypeError):
        dma_set_mask(dev, -5)


def test_required_mask_covers_ram() -> None:
    pm = PhysMemory()
    pm.add_region("ram", 1 << 30, MemKind.RAM)                 # [1 GiB, 2 GiB)
    pm.add_region("vram", 64 << 30, MemKind.DEVICE)            # not RAM: ignored
    dev = DmaDevice("d", pm)
    assert dma_get_required_mask(dev) == dma_bit_mask(31)
    assert not dma_addressing_limited(dev)


def test_mmio_attr(rig: Rig) -> None:
    dev = rig.device(CPU_NIC)
    a = dma_map_resource(dev, rig.bar.base + 0x1000, 0x2000, BIDI)
    assert a == rig.bar.base + 0x1000                          # CPU physical address
    assert rig.machine.warnings == []
    dma_unmap_resource(dev, a, 0x2000, BIDI)
    # a BAR mapped without DMA_ATTR_MMIO works but WARNs
    b = dma_map_phys(dev, rig.bar.base, 0x1000, BIDI)
    assert b == rig.bar.base
    assert rig.machine.warnings[-1][0] == "dma_map_phys"
    # through the IOMMU the PTE carries IOMMU_MMIO, not IOMMU_CACHE
    dom = rig.domain()
    idev = rig.device(CPU_NIC, dom)
    c = dma_map_phys(idev, rig.bar.base, 0x1000, BIDI, DMA_ATTR_MMIO)
    leaf = dom._table[(c >> 12) >> 18]
    prot = int(leaf[1][(c >> 12) & ((1 << 18) - 1)])
    assert prot & IOMMU_MMIO and not prot & IOMMU_CACHE


def test_map_ranges_iommu_one_iova_merged(rig: Rig) -> None:
    dom = rig.domain()
    dev = rig.device(NIC, dom)
    dev.max_seg_size = 1 << 32
    o = rig.pm.new_owner("buf")
    pages = rig.pm.alloc(rig.ram, 64 * 4096, o, max_extent=4096,
                         rng=np.random.default_rng(5))
    data = rig.pattern(64 * 4096, seed=9)
    rig.pm.write(pages, data)
    m = dma_map_phys_ranges(dev, pages, BIDI)
    assert m.nents == 1 and m.iova is not None and m.iova[1] == 64 * 4096
    assert dom.stats.map_calls == 64 and dom.stats.sync_map == 1
    assert np.array_equal(dev.dma_read(m.dma, expect_owner=o), data)
    dma_unmap_phys_ranges(dev, m)
    with pytest.raises(ContractViolation):
        dma_unmap_phys_ranges(dev, m)
    assert dom.fq_pending == 1                                  # lazy: queued
    with pytest.raises(IommuFault) as f:
        dev.dma_read(m.dma)
    assert dom.faults[-1].stale_iotlb and "stale IOTLB" in str(f.value)
    dom.flush_queue()
    assert dom.iovad is not None and dom.iovad.allocated_granules() == 0


def test_map_ranges_default_max_seg_size_splits(rig: Rig) -> None:
    dev = rig.device(NIC, rig.domain())
    o = rig.pm.new_owner("buf")
    buf = rig.pm.alloc(rig.ram, 256 * 1024, o, contiguous=True)
    m = dma_map_phys_ranges(dev, split_ranges(buf, 4096), TO)
    assert m.nents == 4 and all(n == 65536 for n in m.dma["len"].tolist())
    assert total_len(m.dma) == 256 * 1024


def test_map_ranges_unaligned_segments(rig: Rig) -> None:
    dev = rig.device(NIC, rig.domain())
    o = rig.pm.new_owner("buf")
    buf = rig.pm.alloc(rig.ram, 3 * 4096, o, max_extent=4096)
    rig.pm.write(buf, rig.pattern(3 * 4096, seed=4))
    segs = make_ranges([int(buf["addr"][0]) + 100, int(buf["addr"][2]) + 8], [500, 1000])
    m = dma_map_phys_ranges(dev, segs, TO)
    assert m.nents == 2 and m.dma["len"].tolist() == [500, 1000]
    assert int(m.dma["addr"][0]) & 0xFFF == 100 and int(m.dma["addr"][1]) & 0xFFF == 8
    assert np.array_equal(dev.dma_read(m.dma), rig.pm.read(segs))


def test_map_ranges_direct_eio(rig: Rig) -> None:
    dev = rig.device(NIC, bits=30)
    o = rig.pm.new_owner("buf")
    buf = rig.pm.alloc(rig.ram, 4096, o)
    with pytest.raises(DmaBufError) as e:
        dma_map_phys_ranges(dev, buf, TO)
    assert e.value.errno == errno.EIO
    with pytest.raises(DmaBufError) as e:
        dma_map_phys_ranges(dev, buf[:0], TO)
    assert e.value.errno == errno.EINVAL


def test_unmanaged_domain_refuses_dma_api(rig: Rig) -> None:
    dom = IommuDomain("vfio", IommuDomainType.UNMANAGED, machine=rig.machine)
    dev = rig.device(NIC, dom)
    with pytest.raises(DmaBufError) as e:
        dma_map_phys(dev, rig.ram.base, 4096, TO)
    assert e.value.errno == errno.ENOMEM
