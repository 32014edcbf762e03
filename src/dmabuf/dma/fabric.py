"""The P2P fabric seen from the DMA API — include/linux/pci-p2pdma.h, drivers/pci/p2pdma.c.

The DMA mapping layer (``dma_map_sg``/``dma_map_phys``, ``dma_iova_link``) must decide, for every
range that lies in a PCI peer's BAR, how to reach it: by a PCI bus address that bypasses the IOMMU
(``PCI_P2PDMA_MAP_BUS_ADDR``), through the host bridge like ordinary memory
(``PCI_P2PDMA_MAP_THRU_HOST_BRIDGE``), or not at all (``PCI_P2PDMA_MAP_NOT_SUPPORTED``, the
``-EREMOTEIO`` of ``dma_map_sgtable``). In the kernel that decision comes from
``pci_p2pdma_map_type()`` / ``pci_p2pdma_state()`` which read the per-provider xarray cache filled
by ``calc_map_type_and_dist()``.

Layering: ``dma`` (layer 4) must not import ``pci`` (also layer 4, but the owner of the topology).
This module therefore defines only the vocabulary both share — the :class:`PciP2pdmaMapType` enum
with the kernel's values and the :class:`P2PFabric` protocol — and ``dmabuf.pci`` implements the
protocol (``dmabuf.pci.topology.Topology``). The DMA layer receives a fabric object and never
learns how it was built.

**Bus offsets follow the kernel's sign**: ``bus_addr = paddr + bus_offset``
(``struct p2pdma_provider.bus_offset`` = ``pci_bus_address() - pci_resource_start()``, used by
``pci_p2pdma_bus_addr_map()``). It is 0 on x86; non-zero where a host bridge translates (some
arm64/POWER systems). Every user in the model (``P2pdmaMapState.provider_bus_offset``,
``DmaDevice.note_bus_window()``, ``P2PBusWindow``) uses this sign.

**Optional extension** (probed with ``getattr``, never required): a fabric that also offers
``p2p_generation`` (an int bumped whenever the set of providers changes) and ``bus_windows()``
(every provider BAR as a :class:`P2PBusWindow`) — :class:`P2PFabricWindows` — lets a device know
its peer windows exactly, including those set up after it last looked and those no memory region
covers. ``dmabuf.pci.topology.Topology`` implements it.

Kernel: include/linux/pci-p2pdma.h (enum pci_p2pdma_map_type, struct pci_p2pdma_map_state),
drivers/pci/p2pdma.c (pci_p2pdma_map_type(), pci_p2pdma_state()).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["P2PBusWindow", "P2PFabric", "P2PFabricWindows", "PciP2pdmaMapType",
           "fabric_p2p_generation"]


class PciP2pdmaMapType(enum.IntEnum):
    """How a P2P transfer between two PCI functions is routed — ``enum pci_p2pdma_map_type``.

    Values are the kernel's (include/linux/pci-p2pdma.h since the 2025 phys-addr DMA API series;
    before that the enum lived in include/linux/dma-map-ops.h). The model targets Linux 7.1, which
    has ``PCI_P2PDMA_MAP_NONE`` at 1, so the later members are shifted by one compared to the
    v6.2-era enum (UNKNOWN=0, NOT_SUPPORTED=1, BUS_ADDR=2, THRU_HOST_BRIDGE=3). Compare members,
    never raw integers.

    * ``UNKNOWN`` (0) — ``PCI_P2PDMA_MAP_UNKNOWN``: not yet computed; an absent entry of the
      per-provider cache reads back as this. Exported routines never return it.
    * ``NONE`` (1) — ``PCI_P2PDMA_MAP_NONE``: not a P2PDMA transfer (ordinary RAM); what
      ``pci_p2pdma_state()`` returns for a page that is not P2P memory. Never produced by
      ``calc_map_type_and_dist()``.
    * ``NOT_SUPPORTED`` (2) — ``PCI_P2PDMA_MAP_NOT_SUPPORTED``: the pair cannot do P2P (the path
      crosses a host bridge that is not allowed); mapping fails with ``-EREMOTEIO``.
    * ``BUS_ADDR`` (3) — ``PCI_P2PDMA_MAP_BUS_ADDR``: the TLPs are routed by a switch below the
      host bridge; the client uses the PCI bus address (``paddr + bus_offset``, the kernel's
      sign, see :meth:`P2PFabric.provider_at`) and the IOMMU is bypassed.
    * ``THRU_HOST_BRIDGE`` (4) — ``PCI_P2PDMA_MAP_THRU_HOST_BRIDGE``: the TLPs go up to the root
      complex; the client maps the CPU physical address through the IOMMU (or dma-direct) like
      normal memory, with MMIO attributes (``DMA_ATTR_MMIO``).
    """

    UNKNOWN = 0
    NONE = 1
    NOT_SUPPORTED = 2
    BUS_ADDR = 3
    THRU_HOST_BRIDGE = 4


@runtime_checkable
class P2PFabric(Protocol):
    """What the DMA API needs to know about the PCI fabric — implemented by ``dmabuf.pci``.

    Device arguments are PCI BDF strings in the kernel's ``pci_name()`` form, ``"0000:03:00.0"``.
    """

    def p2p_map_type(self, provider: str, client: str) -> PciP2pdmaMapType:
        """Return the cached P2P decision for (provider, client) — ``pci_p2pdma_map_type()``.

        Args:
            provider: BDF of the device whose BAR memory is the DMA target (the p2pmem provider).
            client: BDF of the device that performs the DMA. A device that is not a PCI function
                of the fabric (a platform device) gets ``NOT_SUPPORTED``, as the kernel's
                ``!dev_is_pci(dev)`` check.

        Context:
            Never blocks. The first query for a pair computes it with ``calc_map_type_and_dist()``
            and stores it; later queries return the stored value even if the topology (e.g. ACS
            control bits) changed since, exactly like the kernel's per-provider xarray.

        Returns:
            ``BUS_ADDR``, ``THRU_HOST_BRIDGE`` or ``NOT_SUPPORTED``; ``NOT_SUPPORTED`` also when
            the provider has no p2pdma state (no BAR was published with
            ``pci_p2pdma_add_resource()``), as the kernel does.

        Raises:
            DmaBufError(ENODEV): the provider is not in the topology.

        Kernel: drivers/pci/p2pdma.c, pci_p2pdma_map_type().
        """
        ...

    def provider_at(self, paddr: int) -> tuple[str, int] | None:
        """Find the P2P provider whose published BAR contains a CPU physical address.

        The model's equivalent of ``is_pci_p2pdma_page(page)`` + ``page->pgmap`` →
        ``to_p2p_pgmap(pgmap)->provider`` / ``->bus_offset``.

        Args:
            paddr: CPU physical address of the first byte of a range.

        Context:
            Never blocks; O(log n) in the number of provider BARs.

        A provider is any MEM BAR of a device whose p2pdma state exists (``pcim_p2pdma_init()``
        — the whole-BAR ``p2pdma_provider`` API used by dma-buf exporters such as vfio-pci — or
        ``pci_p2pdma_add_resource()``, which calls it).

        Returns:
            ``(provider_bdf, bus_offset)`` with the kernel's sign, ``bus_addr = paddr +
            bus_offset`` (``p2pdma_provider.bus_offset``, ``pci_p2pdma_bus_addr_map()``), or
            ``None`` if the address is in no provider's BAR. It is 0 on x86. (Before this
            revision the protocol returned ``cpu - bus``, the negation; implementations and
            callers were updated together.)

        Kernel: drivers/pci/p2pdma.c, struct pci_p2pdma_pagemap (provider, bus_offset);
        include/linux/memremap.h, is_pci_p2pdma_page().
        """
        ...

    def iommu_group(self, device: str) -> int | None:
        """Return the IOMMU group number of a device — ``iommu_group_id(dev->iommu_group)``.

        Args:
            device: BDF of the device.

        Context:
            Never blocks.

        Returns:
            The group id, or ``None`` when the device is not behind an IOMMU (no
            ``iommu_group`` link in sysfs; DMA is then direct, ``dma-direct``).

        Raises:
            DmaBufError(ENODEV): the BDF is not in the topology.

        Kernel: drivers/iommu/iommu.c, iommu_group_id(); /sys/bus/pci/devices/*/iommu_group.
        """
        ...


class P2PBusWindow(NamedTuple):
    """One provider BAR as the switches see it — for :meth:`P2PFabricWindows.bus_windows`.

    Attributes:
        provider: BDF of the device owning the BAR.
        cpu_start: CPU physical address of the BAR's first byte.
        size: bytes.
        bus_offset: kernel sign: ``bus_addr = cpu_addr + bus_offset``.
    """

    provider: str
    cpu_start: int
    size: int
    bus_offset: int

    @property
    def bus_start(self) -> int:
        """PCI bus address of the first byte (``cpu_start + bus_offset``)."""
        return self.cpu_start + self.bus_offset


@runtime_checkable
class P2PFabricWindows(Protocol):
    """Optional extension of :class:`P2PFabric`: the exact set of provider windows.

    The DMA layer probes for it with ``getattr`` (a fabric without it still works: a device
    then derives its windows from the MMIO regions of its physical memory, re-probing on every
    use because it cannot know when a provider appears).
    """

    @property
    def p2p_generation(self) -> int:
        """A counter that changes whenever the providers change (``pcim_p2pdma_init()``,
        ``pci_p2pdma_release()``); caches of :meth:`bus_windows` compare it."""
        ...

    def bus_windows(self) -> Sequence[P2PBusWindow]:
        """Every MEM BAR of every initialised provider, by ascending ``cpu_start``.

        Context:
            Never blocks.

        Kernel: the whole-BAR providers of drivers/pci/p2pdma.c (``pdev->p2pdma->mem[]``).
        """
        ...


def fabric_p2p_generation(fabric: Any) -> int | None:
    """The fabric's ``p2p_generation`` if it implements :class:`P2PFabricWindows` (both the
    counter and ``bus_windows()``), else ``None`` — the probe the DMA layer uses.

    Model-only: a duck-typing probe of the fabric model; the kernel reaches P2P state through struct
    pci_p2pdma directly.
    """
    gen = getattr(fabric, "p2p_generation", None)
    if isinstance(gen, bool) or not isinstance(gen, int):
        return None
    if not callable(getattr(fabric, "bus_windows", None)):
        return None
    return gen
