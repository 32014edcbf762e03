"""The DMA layer on the PCI engineer's default topology (dmabuf.pci implements P2PFabric)."""

from __future__ import annotations

import numpy as np

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
)
from dmabuf.machine import Machine
from dmabuf.mm import MemKind, PhysMemory, make_ranges
from dmabuf.pci.p2pdma import pci_p2pdma_add_resource
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
