"""Fixtures for the DMA-layer tests: physical memory, domains, devices and a fake P2P fabric.

The fake fabric implements :class:`dmabuf.dma.fabric.P2PFabric` from a table, so the DMA layer is
tested without the PCI engineer's topology code (the DMA layer never imports ``dmabuf.pci``).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import numpy as np
import pytest

from dmabuf.dma import (
    DmaDevice,
    IommuDomain,
    IommuDomainType,
    PciP2pdmaMapType,
    dma_bit_mask,
)
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm import MemKind, PhysMemory, PhysRegion

MiB = 1 << 20
GiB = 1 << 30

GPU = "0000:03:00.0"
NIC = "0000:04:00.0"
FAR = "0000:81:00.0"      # a device across a host bridge that does not allow P2P
CPU_NIC = "0000:05:00.0"  # a device reaching the GPU only through the root complex


@dataclass
class FakeFabric:
    """A table-driven P2PFabric: providers (BAR windows), map types per pair, IOMMU groups."""

    devices: set[str] = field(default_factory=set)
    providers: list[tuple[int, int, str, int]] = field(default_factory=list)
    types: dict[tuple[str, str], PciP2pdmaMapType] = field(default_factory=dict)
    groups: dict[str, int | None] = field(default_factory=dict)
    queries: int = 0

    def add_provider(self, bdf: str, region: PhysRegion, bus_offset: int) -> None:
        self.devices.add(bdf)
        self.providers.append((region.base, region.size, bdf, bus_offset))

    def p2p_map_type(self, provider: str, client: str) -> PciP2pdmaMapType:
        self.queries += 1
        if provider not in self.devices or client not in self.devices:
            raise DmaBufError(errno.ENODEV, f"unknown device {provider} / {client}")
        return self.types.get((provider, client), PciP2pdmaMapType.NOT_SUPPORTED)

    def provider_at(self, paddr: int) -> tuple[str, int] | None:
        """(bdf, bus_offset) with the kernel's sign: bus = paddr + bus_offset."""
        for base, size, bdf, off in self.providers:
            if base <= paddr < base + size:
                return bdf, off
        return None

    def iommu_group(self, device: str) -> int | None:
        if device not in self.devices:
            raise DmaBufError(errno.ENODEV, f"unknown device {device}")
        return self.groups.get(device)


@dataclass
class Rig:
    """One machine: RAM, a GPU with VRAM behind a 256 MiB BAR, devices on a fake fabric."""

    machine: Machine
    pm: PhysMemory
    ram: PhysRegion
    bar: PhysRegion
    fabric: FakeFabric
    bus_offset: int

    def device(self, name: str, domain: IommuDomain | None = None, *,
               bits: int = 64) -> DmaDevice:
        return DmaDevice(name, self.pm, fabric=self.fabric, iommu=domain,
                         dma_mask=dma_bit_mask(bits), machine=self.machine)

    def domain(self, name: str = "g", *, lazy: bool = True, **kw: object) -> IommuDomain:
        t = IommuDomainType.DMA_FQ if lazy else IommuDomainType.DMA
        return IommuDomain(name, t, machine=self.machine, **kw)  # type: ignore[arg-type]

    def pattern(self, n: int, seed: int = 1) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


@pytest.fixture
def rig(machine: Machine) -> Rig:
    pm = PhysMemory()
    ram = pm.add_region("ram0", 256 * MiB, MemKind.RAM, numa_node=0)
    bar = pm.add_region(f"{GPU} BAR0", 256 * MiB, MemKind.MMIO, base=0x60_0000_0000)
    fabric = FakeFabric()
    for d in (GPU, NIC, FAR, CPU_NIC):
        fabric.devices.add(d)
    bus_offset = -0x50_0000_0000         # kernel sign: bus = paddr + bus_offset = 0x10_0000_0000
    fabric.add_provider(GPU, bar, bus_offset)
    fabric.types[(GPU, NIC)] = PciP2pdmaMapType.BUS_ADDR
    fabric.types[(GPU, CPU_NIC)] = PciP2pdmaMapType.THRU_HOST_BRIDGE
    fabric.types[(GPU, FAR)] = PciP2pdmaMapType.NOT_SUPPORTED
    fabric.types[(GPU, GPU)] = PciP2pdmaMapType.BUS_ADDR
    fabric.groups = {GPU: 1, NIC: 2, CPU_NIC: 3, FAR: 4}
    return Rig(machine, pm, ram, bar, fabric, bus_offset)
