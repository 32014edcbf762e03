"""Layer 4 — the DMA API and the IOMMU: how devices reach memory, with real translations.

* :mod:`~dmabuf.dma.defs` — directions, ``DMA_ATTR_*`` (include/linux/dma-mapping.h);
* :mod:`~dmabuf.dma.iova` — the IOVA allocator (drivers/iommu/iova.c);
* :mod:`~dmabuf.dma.iommu` — IOMMU domains: page table, IOTLB/flush queue, faults, groups;
* :mod:`~dmabuf.dma.device` — :class:`DmaDevice`, a device's DMA view and its DMA engine path
  (translate, dma_read/dma_write/dma_copy moving real bytes);
* :mod:`~dmabuf.dma.direct` — dma-direct (kernel/dma/direct.c);
* :mod:`~dmabuf.dma.dma_iommu` — IOMMU-backed mapping and the ``dma_iova_*`` API;
* :mod:`~dmabuf.dma.mapping` — ``dma_map_phys`` & co. (kernel/dma/mapping.c);
* :mod:`~dmabuf.dma.pci_p2pdma` — ``pci_p2pdma_state()`` over the :mod:`~dmabuf.dma.fabric`
  protocol that ``dmabuf.pci`` implements;
* :mod:`~dmabuf.dma.dma_buf_mapping` — ``dma_buf_phys_vec_to_sgt()`` / ``dma_buf_free_sgt()``.
"""

from __future__ import annotations

from dmabuf.dma.defs import (
    DMA_ATTR_MMIO,
    DMA_ATTR_PRIVILEGED,
    DMA_ATTR_SKIP_CPU_SYNC,
    DMA_MAPPING_ERROR,
    DmaDataDirection,
    dma_bit_mask,
    valid_dma_direction,
)
from dmabuf.dma.device import DmaDevice
from dmabuf.dma.dma_buf_mapping import DmaOnlyTable, dma_buf_free_sgt, dma_buf_phys_vec_to_sgt
from dmabuf.dma.dma_iommu import (
    DmaIovaState,
    dma_iova_destroy,
    dma_iova_free,
    dma_iova_link,
    dma_iova_size,
    dma_iova_sync,
    dma_iova_try_alloc,
    dma_iova_unlink,
    dma_use_iova,
)
from dmabuf.dma.fabric import P2PBusWindow, P2PFabric, P2PFabricWindows, PciP2pdmaMapType
from dmabuf.dma.iommu import (
    IOMMU_CACHE,
    IOMMU_MMIO,
    IOMMU_PRIV,
    IOMMU_READ,
    IOMMU_WRITE,
    Iommu,
    IommuDomain,
    IommuDomainType,
    IommuFaultRecord,
    IommuStats,
)
from dmabuf.dma.iova import IovaDomain
from dmabuf.dma.mapping import (
    DmaMapping,
    dma_addressing_limited,
    dma_get_mask,
    dma_get_max_seg_size,
    dma_get_merge_boundary,
    dma_get_required_mask,
    dma_map_phys,
    dma_map_phys_ranges,
    dma_map_resource,
    dma_mapping_error,
    dma_set_coherent_mask,
    dma_set_mask,
    dma_set_mask_and_coherent,
    dma_unmap_phys,
    dma_unmap_phys_ranges,
    dma_unmap_resource,
)
from dmabuf.dma.pci_p2pdma import P2pdmaMapState, pci_p2pdma_bus_addr_map, pci_p2pdma_state

__all__ = [
    "DMA_ATTR_MMIO",
    "DMA_ATTR_PRIVILEGED",
    "DMA_ATTR_SKIP_CPU_SYNC",
    "DMA_MAPPING_ERROR",
    "IOMMU_CACHE",
    "IOMMU_MMIO",
    "IOMMU_PRIV",
    "IOMMU_READ",
    "IOMMU_WRITE",
    "DmaDataDirection",
    "DmaDevice",
    "DmaIovaState",
    "DmaMapping",
    "DmaOnlyTable",
    "Iommu",
    "IommuDomain",
    "IommuDomainType",
    "IommuFaultRecord",
    "IommuStats",
    "IovaDomain",
    "P2PBusWindow",
    "P2PFabric",
    "P2PFabricWindows",
    "P2pdmaMapState",
    "PciP2pdmaMapType",
    "dma_addressing_limited",
    "dma_bit_mask",
    "dma_buf_free_sgt",
    "dma_buf_phys_vec_to_sgt",
    "dma_get_mask",
    "dma_get_max_seg_size",
    "dma_get_merge_boundary",
    "dma_get_required_mask",
    "dma_iova_destroy",
    "dma_iova_free",
    "dma_iova_link",
    "dma_iova_size",
    "dma_iova_sync",
    "dma_iova_try_alloc",
    "dma_iova_unlink",
    "dma_map_phys",
    "dma_map_phys_ranges",
    "dma_map_resource",
    "dma_mapping_error",
    "dma_set_coherent_mask",
    "dma_set_mask",
    "dma_set_mask_and_coherent",
    "dma_unmap_phys",
    "dma_unmap_phys_ranges",
    "dma_unmap_resource",
    "dma_use_iova",
    "pci_p2pdma_bus_addr_map",
    "pci_p2pdma_state",
    "valid_dma_direction",
]
