"""The DMA layer's view of P2PDMA memory — the inline helpers of include/linux/pci-p2pdma.h.

Mapping code must ask, for every physical range, whether it is PCI peer memory and how the mapping
device reaches it: ``pci_p2pdma_state()`` answers ``NONE`` (ordinary memory), ``BUS_ADDR``
(use the PCI bus address, bypass the IOMMU), ``THRU_HOST_BRIDGE`` (map the CPU physical address
like normal memory, with ``DMA_ATTR_MMIO``) or ``NOT_SUPPORTED``; ``pci_p2pdma_bus_addr_map()``
turns a CPU physical address into the bus address.

The answers come from the device's :class:`~dmabuf.dma.fabric.P2PFabric` (implemented by
``dmabuf.pci``); a device without a fabric sees every address as ``NONE``. Bus addresses follow
the kernel: ``bus = paddr + bus_offset`` (``p2pdma_provider.bus_offset``).

Kernel: include/linux/pci-p2pdma.h (struct pci_p2pdma_map_state, pci_p2pdma_state(),
pci_p2pdma_bus_addr_map()), drivers/pci/p2pdma.c (__pci_p2pdma_update_state()).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dmabuf.dma.fabric import PciP2pdmaMapType

if TYPE_CHECKING:
    from dmabuf.dma.device import DmaDevice

__all__ = ["P2pdmaMapState", "pci_p2pdma_bus_addr_map", "pci_p2pdma_state"]


@dataclass(frozen=True)
class P2pdmaMapState:
    """Result of :func:`pci_p2pdma_state` — ``struct pci_p2pdma_map_state``.

    Attributes:
        map: the routing decision (``NONE`` for memory that is not P2P memory).
        provider: BDF of the providing device (``state->mem->owner``; ``None`` for ``NONE``).
        provider_bus_offset: the provider's ``bus_offset`` with the kernel's sign,
            ``bus = paddr + provider_bus_offset`` (``state->mem->bus_offset``; 0 for ``NONE``).
            Use :func:`pci_p2pdma_bus_addr_map` rather than doing the arithmetic.
    """

    map: PciP2pdmaMapType
    provider: str | None = None
    provider_bus_offset: int = 0


_NONE = P2pdmaMapState(PciP2pdmaMapType.NONE)


def pci_p2pdma_state(dev: DmaDevice, paddr: int) -> P2pdmaMapState:
    """Classify ``paddr`` for a mapping by ``dev`` — ``pci_p2pdma_state()``.

    Args:
        dev: the device that will perform the DMA (the importer / client).
        paddr: CPU physical address of the first byte of the range.

    Context:
        Never blocks (the fabric answers from its per-provider cache).

    Returns:
        A :class:`P2pdmaMapState`; ``map`` is ``NONE`` when ``paddr`` is not in memory published
        by a P2P provider (or ``dev`` has no fabric).

    Raises:
        DmaBufError(ENODEV): the fabric does not know ``dev`` (from ``p2p_map_type``).

    Kernel: include/linux/pci-p2pdma.h, pci_p2pdma_state(); drivers/pci/p2pdma.c,
    __pci_p2pdma_update_state().
    """
    fabric = dev.fabric
    if fabric is None:
        return _NONE
    hit = fabric.provider_at(int(paddr))
    if hit is None:
        return _NONE
    provider, bus_offset = hit
    return P2pdmaMapState(fabric.p2p_map_type(provider, dev.name), provider, int(bus_offset))


def pci_p2pdma_bus_addr_map(state: P2pdmaMapState, paddr: int) -> int:
    """PCI bus address of ``paddr`` for a ``BUS_ADDR`` state — ``pci_p2pdma_bus_addr_map()``.

    ``paddr + state->mem->bus_offset``.

    Raises:
        ContractViolation("pci_p2pdma_bus_addr_map"): the state is not ``BUS_ADDR``
            (the kernel WARNs and returns an unusable address).

    Kernel: include/linux/pci-p2pdma.h, pci_p2pdma_bus_addr_map().
    """
    if state.map is not PciP2pdmaMapType.BUS_ADDR:
        from dmabuf.errors import ContractViolation
        raise ContractViolation("pci_p2pdma_bus_addr_map",
                                f"map type is {state.map.name}, not BUS_ADDR")
    return int(paddr) + state.provider_bus_offset
