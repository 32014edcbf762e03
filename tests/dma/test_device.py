"""DmaDevice: translation order, masks, stale-mapping faults, copies, the buf-layer protocol."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.buf.device import DmaDev
from dmabuf.buf.dma_engine import DmaEngine
from dmabuf.buf.sg_table import SG_DMA_BUS_ADDRESS, SgTable
from dmabuf.dma import (
    DmaDataDirection,
    DmaDevice,
    DmaIovaState,
    Iommu,
    IommuDomain,
    IommuDomainType,
    dma_iova_link,
    dma_iova_sync,
    dma_iova_try_alloc,
    dma_map_phys,
    dma_map_phys_ranges,
    dma_unmap_phys,
)
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm import MemKind, make_ranges

from .conftest import CPU_NIC, GPU, NIC, Rig

BIDI = DmaDataDirection.DMA_BIDIRECTIONAL
TO = DmaDataDirection.DMA_TO_DEVICE


def test_implements_buf_layer_protocol(rig: Rig) -> None:
    assert isinstance(rig.device(NIC), DmaDev)


def test_sg_table_map_through_iommu_and_engine(rig: Rig) -> None:
    dom = rig.domain()
    dev = rig.device(NIC, dom)
    o = rig.pm.new_owner("heap buffer")
    pages = rig.pm.alloc(rig.ram, 32 * 4096, o, max_extent=4096, rng=np.random.default_rng(3))
    data = rig.pattern(32 * 4096, seed=6)
    rig.pm.write(pages, data)
    sgt = SgTable.from_pages(pages)
    sgt.map(dev, BIDI)
    # one 128 KiB CPU entry stays one DMA segment: dma_map_sg never splits a segment, only
    # merges up to max_seg_size
    assert sgt.orig_nents == 1 and sgt.nents == 1
    eng = DmaEngine(dev)
    assert np.array_equal(eng.read(sgt, owner=o), data)
    dma = sgt.dma_ranges()
    sgt.unmap(dev, BIDI)
    dom.flush_queue()
    with pytest.raises(IommuFault):
        eng.read(dma, owner=o)
    with pytest.raises(ContractViolation):
        dev.unmap_ranges(dma, BIDI)


def test_sg_table_map_marks_bus_addresses_as_dma_map_sgtable(rig: Rig) -> None:
    nic = rig.device(NIC, rig.domain("n"))                  # BUS_ADDR peer of the GPU
    o = rig.pm.new_owner("ram buffer")
    ram = rig.pm.alloc(rig.ram, 2 * 4096, o)
    sgt = SgTable.from_ranges(make_ranges([rig.bar.base, rig.bar.base + 0x10000], [4096, 4096]))
    sgt.map(nic, BIDI, mmio=True)
    assert sgt.dma_ranges().tolist() == [(rig.bar.base + rig.bus_offset, 4096),
                                         (rig.bar.base + 0x10000 + rig.bus_offset, 4096)]
    assert sgt.dma_flags().tolist() == [SG_DMA_BUS_ADDRESS] * 2
    assert nic.bus_address_mask(sgt.dma_ranges()).tolist() == [True, True]   # the record
    sgt.unmap()
    rsgt = SgTable.from_pages(ram).map(nic, BIDI)           # RAM through the IOMMU: an IOVA
    assert rsgt.dma_flags().tolist() == [0] and nic.bus_address_mask(rsgt.dma_ranges()).tolist() \
        == [False]
    rsgt.unmap()
    # not a live map_ranges list: the bus decode translate applies (window + BUS_ADDR decision)
    probe = make_ranges([rig.bar.base + rig.bus_offset + 0x2000, rig.ram.base], [8, 8])
    assert nic.bus_address_mask(probe).tolist() == [True, False]
    thru = rig.device(CPU_NIC)                              # THRU_HOST_BRIDGE: never a bus addr
    assert thru.bus_address_mask(probe).tolist() == [False, False]
    tsgt = SgTable.from_ranges(make_ranges([rig.bar.base], [4096])).map(thru, BIDI, mmio=True)
    assert tsgt.dma_flags().tolist() == [0]
    tsgt.unmap()


def test_translation_asks_p2p_decisions_only_for_windows_it_hits(rig: Rig) -> None:
    nic = rig.device(NIC)
    o = rig.pm.new_owner("ram buffer")
    pages = rig.pm.alloc(rig.ram, 4 * 4096, o)
    dma = nic.map_ranges(pages, BIDI)                       # RAM, dma-direct
    before = rig.fabric.queries
    nic.dma_write(dma, rig.pattern(4 * 4096), expect_owner=o)
    nic.translate(np.concatenate([dma, dma]))               # the multi-range path too
    assert rig.fabric.queries == before                     # the GPU window was never asked
    bus = make_ranges([rig.bar.base + rig.bus_offset], [16])
    assert nic.translate(bus).tolist() == [(rig.bar.base, 16)]
    assert rig.fabric.queries > before                      # now it was: the address is in it
    nic.unmap_ranges(dma, BIDI)


def test_map_ranges_mmio_p2p(rig: Rig) -> None:
    dev = rig.device(NIC, rig.domain())
    dma = dev.map_ranges(make_ranges([rig.bar.base], [8192]), BIDI, mmio=True)
    assert dma.tolist() == [(rig.bar.base + rig.bus_offset, 8192)]
    dev.unmap_ranges(dma, BIDI)
    with pytest.raises(DmaBufError) as e:
        rig.device("0000:81:00.0").map_ranges(make_ranges([rig.bar.base], [4096]), BIDI)
    assert e.value.errno == errno.EREMOTEIO


def test_use_after_free_and_after_migration_fault(rig: Rig) -> None:
    dev = rig.device(NIC, rig.domain())
    a = rig.pm.new_owner("bo A")
    b = rig.pm.new_owner("bo B")
    buf = rig.pm.alloc(rig.ram, 8192, a)
    addr = dma_map_phys(dev, int(buf["addr"][0]), 8192, BIDI)
    dma = make_ranges([addr], [8192])
    dev.dma_write(dma, rig.pattern(8192), expect_owner=a)
    rig.pm.set_owner(buf[:1].copy() if buf.size > 1 else
                     make_ranges([int(buf["addr"][0]) + 4096], [4096]), b)   # migrated page
    with pytest.raises(IommuFault) as f:
        dev.dma_read(dma, expect_owner=a)
    assert "'bo B'" in str(f.value)
    rig.pm.free(buf)
    with pytest.raises(IommuFault) as f:
        dev.dma_write(dma, bytes(8192), expect_owner=a)
    assert "poisoned" in str(f.value)
    assert bool((rig.pm.read(buf) == 0x6B).all())       # nothing was written
    assert len(dev.faults) == 2
    # without an owner the stale mapping silently reaches the poisoned page, like hardware
    assert bool((dev.dma_read(dma) == 0x6B).all())
    dma_unmap_phys(dev, addr, 8192, BIDI)


def test_mask_and_missing_memory_faults(rig: Rig) -> None:
    dev = rig.device(CPU_NIC, bits=32)
    with pytest.raises(IommuFault) as f:
        dev.dma_read(make_ranges([0xFFFF_F000], [0x2000]))
    assert "DMA mask" in str(f.value)
    with pytest.raises(IommuFault) as f:
        dev.dma_read(make_ranges([0x1000], [16]))        # nothing at 4 KiB
    assert "no memory" in str(f.value)
    assert [x.dma_addr for x in dev.faults] == [0xFFFF_F000, 0x1000]
    with pytest.raises(ValueError):
        dev.translate(make_ranges([0x1000], [16]), "exec")


def test_blocked_and_identity_domains(rig: Rig) -> None:
    blocked = rig.device(NIC, IommuDomain("b", IommuDomainType.BLOCKED, machine=rig.machine))
    with pytest.raises(IommuFault):
        blocked.dma_read(make_ranges([rig.ram.base], [4]))
    ident = rig.device(NIC, IommuDomain("i", IommuDomainType.IDENTITY, machine=rig.machine))
    assert ident.dma_direct and not ident.uses_dma_iommu
    assert dma_map_phys(ident, rig.ram.base, 4096, TO) == rig.ram.base


def test_dma_copy_between_devices(rig: Rig) -> None:
    gpu = rig.device(GPU, rig.domain("g1"))
    nic = rig.device(NIC, rig.domain("g2"))
    o1 = rig.pm.new_owner("src")
    o2 = rig.pm.new_owner("dst")
    src = rig.pm.alloc(rig.ram, 3 * 4096, o1, max_extent=4096)
    dst = rig.pm.alloc(rig.ram, 3 * 4096, o2, contiguous=True)
    rig.pm.write(src, rig.pattern(3 * 4096, seed=33))
    ms = dma_map_phys_ranges(gpu, src, TO)
    md = dma_map_phys_ranges(nic, dst, DmaDataDirection.DMA_FROM_DEVICE)
    assert gpu.dma_copy(nic, md.dma, ms.dma, src_owner=o1, dst_owner=o2) == 3 * 4096
    assert np.array_equal(rig.pm.read(dst), rig.pattern(3 * 4096, seed=33))
    with pytest.raises(IommuFault):                      # wrong owner expected: nothing moves
        gpu.dma_copy(nic, md.dma, ms.dma, src_owner=o2)
    with pytest.raises(IommuFault):                      # dst IOVA is gpu-invisible
        gpu.dma_copy(None, md.dma, ms.dma)
    assert gpu.stats["bytes_read"] == 3 * 4096 and nic.stats["bytes_written"] == 3 * 4096


def test_from_fabric_uses_group_domains(rig: Rig) -> None:
    mmu = Iommu(machine=rig.machine)
    rig.fabric.groups[CPU_NIC] = 2                     # same group as NIC
    nic = DmaDevice.from_fabric(NIC, rig.pm, rig.fabric, mmu, machine=rig.machine)
    other = DmaDevice.from_fabric(CPU_NIC, rig.pm, rig.fabric, mmu, machine=rig.machine)
    assert nic.iommu is other.iommu and nic.iommu is not None
    assert nic.iommu.devices == [NIC, CPU_NIC]
    rig.fabric.groups[GPU] = None
    assert DmaDevice.from_fabric(GPU, rig.pm, rig.fabric, mmu).dma_direct
    assert DmaDevice.from_fabric(GPU, rig.pm, rig.fabric, None).iommu is None
    d = nic.describe()
    assert d["domain"] == "group 2" and d["domain_type"] == "dma-fq"
    assert "iommu:group 2" in repr(nic)


def test_constructor_checks(rig: Rig) -> None:
    with pytest.raises(TypeError):
        DmaDevice("", rig.pm)
    with pytest.raises(TypeError):
        DmaDevice("x", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        DmaDevice("x", rig.pm, fabric=object())  # type: ignore[arg-type]
    with pytest.raises(DmaBufError):
        DmaDevice("x", rig.pm, max_seg_size=0)


def test_iommu_mapping_across_adjacent_regions(rig: Rig) -> None:
    # "ram1" starts exactly where ram0 ends: an IOVA range linking the last page of ram0 and the
    # first of ram1 translates to one physically contiguous range, which must be cut at the edge
    ram1 = rig.pm.add_region("ram1", 16 << 20, MemKind.RAM, base=rig.ram.end)
    dev = rig.device(NIC, rig.domain())
    o = rig.pm.new_owner("buf")
    rig.pm.alloc(rig.ram, rig.ram.size, o, contiguous=True)     # all of ram0, its last page too
    assert rig.pm.alloc(ram1, 4096, o).tolist() == [(ram1.base, 4096)]
    edge = make_ranges([rig.ram.end - 4096, ram1.base], [4096, 4096])
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0, 8192)
    dma_iova_link(dev, st, rig.ram.end - 4096, 0, 4096, BIDI)
    dma_iova_link(dev, st, ram1.base, 4096, 4096, BIDI)
    dma_iova_sync(dev, st, 0, 8192)
    iova = make_ranges([st.addr], [8192])
    assert dev.translate(iova).tolist() == edge.tolist()
    data = rig.pattern(8192, seed=5)
    dev.dma_write(iova, data, expect_owner=o)
    assert np.array_equal(rig.pm.read(edge), data)
    assert np.array_equal(dev.dma_read(iova, expect_owner=o), data)
    assert dev.dma_copy(None, iova, iova, expect_owner=o) == 8192


def test_windows_of_a_fabric_without_generation_are_reprobed(rig: Rig) -> None:
    bar1 = rig.pm.add_region("0000:03:00.0 BAR2", 1 << 20, MemKind.MMIO, base=0x70_0000_0000)
    nic = rig.device(NIC)
    bus = make_ranges([bar1.base - 0x50_0000_0000], [8])
    rig.pm.view(bar1.base, 8)[:] = np.arange(8, dtype=np.uint8)
    with pytest.raises(IommuFault):
        nic.dma_read(bus)                       # not a provider yet: goes to (no) memory
    rig.fabric.add_provider(GPU, bar1, rig.bus_offset)    # no new region, no generation
    assert nic.dma_read(bus).tolist() == list(range(8))
