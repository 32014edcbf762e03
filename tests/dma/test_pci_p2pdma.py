"""P2P through the DMA API with a fake fabric: BUS_ADDR, THRU_HOST_BRIDGE, NOT_SUPPORTED."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.dma import (
    DMA_ATTR_MMIO,
    IOMMU_MMIO,
    DmaDataDirection,
    DmaDevice,
    PciP2pdmaMapType,
    dma_map_phys,
    dma_map_phys_ranges,
    dma_unmap_phys_ranges,
    pci_p2pdma_bus_addr_map,
    pci_p2pdma_state,
)
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm import make_ranges

from .conftest import CPU_NIC, FAR, GPU, NIC, Rig

BIDI = DmaDataDirection.DMA_BIDIRECTIONAL


def test_p2pdma_state(rig: Rig) -> None:
    nic = rig.device(NIC)
    st = pci_p2pdma_state(nic, rig.bar.base + 0x1000)
    assert st.map is PciP2pdmaMapType.BUS_ADDR and st.provider == GPU
    assert pci_p2pdma_bus_addr_map(st, rig.bar.base + 0x1000) == \
        rig.bar.base + 0x1000 + rig.bus_offset
    assert pci_p2pdma_state(nic, rig.ram.base).map is PciP2pdmaMapType.NONE
    assert pci_p2pdma_state(rig.device(FAR), rig.bar.base).map is PciP2pdmaMapType.NOT_SUPPORTED
    with pytest.raises(ContractViolation):
        pci_p2pdma_bus_addr_map(pci_p2pdma_state(nic, rig.ram.base), rig.ram.base)
    nofab = DmaDevice(NIC, rig.pm, machine=rig.machine)
    assert pci_p2pdma_state(nofab, rig.bar.base).map is PciP2pdmaMapType.NONE


def test_bus_addr_needs_no_iova_and_reaches_the_bar(rig: Rig) -> None:
    dom = rig.domain()
    nic = rig.device(NIC, dom)
    vram = rig.pm.view(rig.bar.base, 8192)
    vram[:] = rig.pattern(8192, seed=21)
    phys = make_ranges([rig.bar.base, rig.ram.base], [8192, 4096])
    m = dma_map_phys_ranges(nic, phys, BIDI)
    assert m.bus_address.tolist() == [True, False]
    assert int(m.dma["addr"][0]) == rig.bar.base + rig.bus_offset       # bus address
    assert m.iova is not None and m.iova[1] == 4096                     # only the RAM part
    assert dom.stats.map_calls == 1
    # the device's DMA to the bus address goes peer-to-peer, bypassing the IOMMU
    got = nic.dma_read(m.dma[:1])
    assert np.array_equal(got, rig.pattern(8192, seed=21))
    assert dom.stats.translations == 0
    nic.dma_write(make_ranges([int(m.dma["addr"][0]) + 16], [3]), b"p2p")
    assert bytes(rig.pm.view(rig.bar.base + 16, 3)) == b"p2p"
    dma_unmap_phys_ranges(nic, m)
    # bus addresses stay valid after unmap (nothing to unmap; the BAR is always decoded)
    assert nic.dma_read(make_ranges([int(m.dma["addr"][0])], [4])).size == 4


def test_bus_window_known_from_fabric_without_mapping(rig: Rig) -> None:
    nic = rig.device(NIC)
    rig.pm.view(rig.bar.base + 0x2000, 4)[:] = [1, 2, 3, 4]
    bus = rig.bar.base + 0x2000 + rig.bus_offset
    assert nic.translate(make_ranges([bus], [4])).tolist() == [(rig.bar.base + 0x2000, 4)]
    with pytest.raises(IommuFault):                    # runs past the end of the BAR window
        nic.translate(make_ranges([rig.bar.base + rig.bar.size + rig.bus_offset - 4], [8]))


def test_thru_host_bridge_through_iommu_uses_mmio_prot(rig: Rig) -> None:
    dom = rig.domain()
    dev = rig.device(CPU_NIC, dom)
    rig.pm.view(rig.bar.base, 4096)[:] = 0x77
    m = dma_map_phys_ranges(dev, make_ranges([rig.bar.base], [4096]), BIDI)
    assert not m.bus_address.any()
    iova = int(m.dma["addr"][0])
    assert dom.iova_to_phys(iova) == rig.bar.base
    leaf = dom._table[(iova >> 12) >> 18]
    assert int(leaf[1][(iova >> 12) & ((1 << 18) - 1)]) & IOMMU_MMIO
    assert bool((dev.dma_read(m.dma) == 0x77).all())
    # the bus address is NOT routed for this device: it goes to the IOMMU and faults
    with pytest.raises(IommuFault):
        dev.translate(make_ranges([rig.bar.base + rig.bus_offset], [4]))
    dma_unmap_phys_ranges(dev, m)


def test_thru_host_bridge_direct_uses_cpu_phys(rig: Rig) -> None:
    dev = rig.device(CPU_NIC)
    m = dma_map_phys_ranges(dev, make_ranges([rig.bar.base + 4096], [4096]), BIDI)
    assert m.dma.tolist() == [(rig.bar.base + 4096, 4096)] and m.iova is None
    assert dma_map_phys(dev, rig.bar.base, 4096, BIDI, DMA_ATTR_MMIO) == rig.bar.base


def test_not_supported_is_eremoteio(rig: Rig) -> None:
    dom = rig.domain()
    far = rig.device(FAR, dom)
    with pytest.raises(DmaBufError) as e:
        dma_map_phys_ranges(far, make_ranges([rig.ram.base, rig.bar.base], [4096, 4096]), BIDI)
    assert e.value.errno == errno.EREMOTEIO
    assert dom.stats.map_calls == 0 and far.debug_range_maps == {}
    # a DMA that reaches the BAR anyway (mapped by hand) is dropped: fault
    direct_far = rig.device(FAR)
    with pytest.raises(IommuFault) as f:
        direct_far.dma_read(make_ranges([rig.bar.base], [4]))
    assert "not supported" in str(f.value)


def test_dma_copy_peer_to_peer(rig: Rig) -> None:
    nic = rig.device(NIC, rig.domain())
    o = rig.pm.new_owner("rx")
    buf = rig.pm.alloc(rig.ram, 16384, o)
    src = rig.pattern(16384, seed=5)
    rig.pm.view(rig.bar.base, 16384)[:] = src
    m = dma_map_phys_ranges(nic, make_ranges([rig.bar.base], [16384]), BIDI)
    r = dma_map_phys_ranges(nic, buf, BIDI)
    n = nic.dma_copy(None, r.dma, m.dma, dst_owner=o)
    assert n == 16384 and np.array_equal(rig.pm.read(buf), src)
    dma_unmap_phys_ranges(nic, r)
    dma_unmap_phys_ranges(nic, m)
