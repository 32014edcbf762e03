"""The DMA layer on the PCI engineer's default topology (dmabuf.pci implements P2PFabric)."""

from __future__ import annotations

import numpy as np
import pytest

from dmabuf.dma import (
    DmaDataDirection,
    DmaDevice,
    Iommu,
    P2PFabric,
    PciP2pdmaMapType,
    dma_bit_mask,
    dma_buf_free_sgt,
    dma_buf_phys_vec_to_sgt,
    dma_map_phys_ranges,
    dma_unmap_phys_ranges,
    pci_p2pdma_bus_addr_map,
    pci_p2pdma_state,
)
from dmabuf.dma.dma_iommu import iova_reserve_pci_windows
from dmabuf.dma.fabric import P2PBusWindow
from dmabuf.errors import IommuFault
from dmabuf.machine import Machine
from dmabuf.mm import MemKind, PhysMemory, PhysRegion, make_ranges
from dmabuf.pci import Topology, loads_toml
from dmabuf.pci.p2pdma import pci_p2pdma_add_resource, pci_p2pdma_release, pcim_p2pdma_init
from dmabuf.pci.topo_toml import default_topology

BIDI = DmaDataDirection.DMA_BIDIRECTIONAL
GPU0, NIC0, GPU1 = "0000:03:00.0", "0000:04:00.0", "0000:06:00.0"


def test_p2p_mapping_on_default_topology(machine: Machine) -> None:
    topo = default_topology()
    assert isinstance(topo, P2PFabric)
    pm = PhysMemory()
    pm.add_region("ram0", 1 << 30, MemKind.RAM, base=1 << 30)
    regions = topo.attach_memory(pm)
    pci_p2pdma_add_resource(topo.device(GPU0), 1, 1 << 30, 0)     # publish 1 GiB of BAR1
    bar = regions[f"{GPU0} BAR1"]
    pm.view(bar.base, 4096)[:] = np.arange(4096, dtype=np.uint16).astype(np.uint8)
    mmu = Iommu(machine=machine)
    results = {}
    for client in (NIC0, GPU1):
        dev = DmaDevice.from_fabric(client, pm, topo, mmu, dma_mask=dma_bit_mask(64),
                                    machine=machine)
        mt = topo.p2p_map_type(GPU0, client)
        m = dma_map_phys_ranges(dev, make_ranges([bar.base], [4096]), BIDI)
        assert bool(m.bus_address[0]) == (mt is PciP2pdmaMapType.BUS_ADDR)
        got = dev.dma_read(m.dma)
        assert np.array_equal(got, pm.view(bar.base, 4096))          # real bytes of the BAR
        dma_unmap_phys_ranges(dev, m)
        sgt = dma_buf_phys_vec_to_sgt(dev, GPU0, make_ranges([bar.base], [8192]), 8192, BIDI)
        assert sgt.orig_nents == 0 and np.array_equal(dev.dma_read(sgt.dma_ranges())[:4096], got)
        dma_buf_free_sgt(dev, sgt, BIDI)
        results[client] = mt
    # the default topology has the AMD-Zen root complex: GPU1 -> GPU0 goes through it
    assert results[GPU1] is PciP2pdmaMapType.THRU_HOST_BRIDGE
    assert results[NIC0] in (PciP2pdmaMapType.BUS_ADDR, PciP2pdmaMapType.THRU_HOST_BRIDGE)


# ---------------------------------------------------------------- non-zero bus offset (kernel sign)
_SWITCH_TOML = """format = 1
[cpu]
vendor_id = "GenuineIntel"
family = 6
[[host_bridge]]
name = "hb0"
domain = 0
bus = 0
vendor = 0x8086
device = 0x29c0
[[device]]
bdf = "0000:00:02.0"
name = "rp0"
type = "root_port"
vendor = 0x8086
device = 0x1234
[[device]]
bdf = "0000:01:00.0"
name = "usp"
type = "upstream_port"
parent = "rp0"
vendor = 0x10b5
device = 0x8747
[[device]]
bdf = "0000:02:00.0"
name = "dsp0"
type = "downstream_port"
parent = "usp"
vendor = 0x10b5
device = 0x8747
[[device]]
bdf = "0000:02:01.0"
name = "dsp1"
type = "downstream_port"
parent = "usp"
vendor = 0x10b5
device = 0x8747
[[device]]
bdf = "0000:03:00.0"
name = "gpu"
parent = "dsp0"
vendor = 0x1002
device = 0x740f
[[device.bar]]
index = 2
size = "16MiB"
address = 0xf0000000
mem64 = false
prefetchable = true
bus_offset = -2147483648
[[device]]
bdf = "0000:04:00.0"
name = "nic"
parent = "dsp1"
vendor = 0x15b3
device = 0x1017
iommu_group = 7
"""
SW_GPU, SW_NIC = "0000:03:00.0", "0000:04:00.0"


def _switch_rig(machine: Machine) -> tuple[Topology, PhysMemory, PhysRegion]:
    topo = loads_toml(_SWITCH_TOML)
    pm = PhysMemory()
    pm.add_region("ram0", 256 << 20, MemKind.RAM, base=1 << 32)
    bar = topo.attach_memory(pm)[f"{SW_GPU} BAR2"]
    pm.view(bar.base, 8192)[:] = np.arange(8192, dtype=np.uint32).astype(np.uint8)
    return topo, pm, bar


def test_nonzero_bus_offset_follows_the_kernel_sign(machine: Machine) -> None:
    topo, pm, bar = _switch_rig(machine)
    pcim_p2pdma_init(topo.device(SW_GPU))
    assert topo.p2p_map_type(SW_GPU, SW_NIC) is PciP2pdmaMapType.BUS_ADDR
    # P2PFabric.provider_at: (bdf, bus_offset) with bus = paddr + bus_offset
    assert topo.provider_at(bar.base + 5) == (SW_GPU, -0x8000_0000)
    bus = 0xF000_0000 - 0x8000_0000 + 0x1000
    mmu = Iommu(machine=machine)
    nic = DmaDevice.from_fabric(SW_NIC, pm, topo, mmu, dma_mask=dma_bit_mask(64),
                                machine=machine)
    st = pci_p2pdma_state(nic, bar.base + 0x1000)
    assert st.map is PciP2pdmaMapType.BUS_ADDR and st.provider_bus_offset == -0x8000_0000
    assert pci_p2pdma_bus_addr_map(st, bar.base + 0x1000) == bus
    assert not hasattr(st, "bus_offset")                 # the old-sign alias is gone
    m = dma_map_phys_ranges(nic, make_ranges([bar.base + 0x1000], [4096]), BIDI)
    assert m.dma.tolist() == [(bus, 4096)] and bool(m.bus_address[0])
    assert np.array_equal(nic.dma_read(m.dma), pm.view(bar.base + 0x1000, 4096))
    assert nic.translate(m.dma).tolist() == [(bar.base + 0x1000, 4096)]
    dma_unmap_phys_ranges(nic, m)
    sgt = dma_buf_phys_vec_to_sgt(nic, SW_GPU, make_ranges([bar.base], [8192]), 8192, BIDI)
    assert sgt.dma_ranges().tolist() == [(bus - 0x1000, 8192)]
    assert np.array_equal(nic.dma_read(sgt.dma_ranges()), pm.view(bar.base, 8192))
    dma_buf_free_sgt(nic, sgt, BIDI)
    # the IOVA allocator keeps the BAR's *bus* window out of the IOVA space
    assert nic.iommu is not None and nic.iommu.iovad is not None
    iova_reserve_pci_windows(nic.iommu, nic)
    shift = nic.iommu.iovad.shift
    assert nic.iommu.iovad.find_iova(bus >> shift) is not None
    assert nic.iommu.iovad.find_iova(bar.base >> shift) is None


def test_bus_windows_follow_provider_setup_without_new_regions(machine: Machine) -> None:
    topo, pm, bar = _switch_rig(machine)
    nic = DmaDevice(SW_NIC, pm, fabric=topo, dma_mask=dma_bit_mask(64), machine=machine)
    bus = make_ranges([bar.base - 0x8000_0000], [16])
    with pytest.raises(IommuFault):             # no provider yet: nothing decodes that address
        nic.dma_read(bus)
    gen = topo.p2p_generation
    pcim_p2pdma_init(topo.device(SW_GPU))       # a provider appears; the memory map is unchanged
    assert topo.p2p_generation == gen + 1
    assert topo.bus_windows() == [P2PBusWindow(SW_GPU, bar.base, bar.size, -0x8000_0000)]
    assert np.array_equal(nic.dma_read(bus), pm.view(bar.base, 16))
    pci_p2pdma_release(topo.device(SW_GPU))     # and goes away again
    with pytest.raises(IommuFault):
        nic.dma_read(bus)
