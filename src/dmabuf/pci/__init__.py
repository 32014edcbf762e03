"""Layer 4 — the PCI fabric: hierarchy, ACS, P2PDMA decisions and p2pmem providers.

``dmabuf.pci`` models what drivers/pci/ knows about peer-to-peer DMA:

* :mod:`dmabuf.pci.topology` — host bridges, ports, switches, endpoints, VFs, BARs, ACS, links
  (``struct pci_dev``); the :class:`Topology` implements :class:`dmabuf.dma.fabric.P2PFabric`.
* :mod:`dmabuf.pci.p2pdma` — ``calc_map_type_and_dist()`` and the rest of drivers/pci/p2pdma.c:
  allow-list, AMD Zen rule, decision cache, distance, provider search, p2pmem pools.
* :mod:`dmabuf.pci.genalloc` — the page-bitmap pool (lib/genalloc.c).
* :mod:`dmabuf.pci.pci_regs` — config-space registers and their decoder.
* loaders: :mod:`dmabuf.pci.topo_toml` (native TOML, ``docs/topology-format.md``; the embedded
  :func:`default_topology`), :mod:`dmabuf.pci.topo_sysfs` (a running machine or a captured root),
  :mod:`dmabuf.pci.generate` (large regular fabrics).

Kernel: drivers/pci/p2pdma.c, include/linux/pci-p2pdma.h, include/linux/pci.h,
include/uapi/linux/pci_regs.h, lib/genalloc.c.
"""

from __future__ import annotations

from dmabuf.dma.fabric import P2PFabric, PciP2pdmaMapType
from dmabuf.pci.genalloc import GenPool
from dmabuf.pci.generate import generate_topology
from dmabuf.pci.p2pdma import (
    PCI_P2PDMA_WHITELIST,
    P2pdmaPagemap,
    P2pdmaProvider,
    P2pExplanation,
    P2pMatrix,
    PciP2pdma,
    PciP2pdmaMapState,
    calc_map_type_and_dist,
    explain,
    p2p_matrix,
    p2pmem_alloc_mmap,
    pci_alloc_p2pmem,
    pci_free_p2pmem,
    pci_has_p2pmem,
    pci_p2pdma_add_resource,
    pci_p2pdma_bus_addr_map,
    pci_p2pdma_distance,
    pci_p2pdma_distance_many,
    pci_p2pdma_enable_store,
    pci_p2pdma_map_type,
    pci_p2pdma_memunmap_pages,
    pci_p2pdma_pgmaps,
    pci_p2pdma_release,
    pci_p2pdma_state,
    pci_p2pmem_alloc_sgl,
    pci_p2pmem_find_many,
    pci_p2pmem_free_sgl,
    pci_p2pmem_publish,
    pci_p2pmem_virt_to_bus,
    pcim_p2pdma_init,
    pcim_p2pdma_provider,
)
from dmabuf.pci.pci_regs import PcieType
from dmabuf.pci.topo_sysfs import load_sysfs
from dmabuf.pci.topo_toml import default_topology, default_topology_path, load_toml, loads_toml
from dmabuf.pci.topology import (
    Acs,
    Bar,
    CpuInfo,
    HostBridge,
    Link,
    PciDev,
    Topology,
    TopologyError,
)

__all__ = [
    "PCI_P2PDMA_WHITELIST",
    "Acs",
    "Bar",
    "CpuInfo",
    "GenPool",
    "HostBridge",
    "Link",
    "P2PFabric",
    "P2pExplanation",
    "P2pMatrix",
    "P2pdmaPagemap",
    "P2pdmaProvider",
    "PciDev",
    "PciP2pdma",
    "PciP2pdmaMapState",
    "PciP2pdmaMapType",
    "PcieType",
    "Topology",
    "TopologyError",
    "calc_map_type_and_dist",
    "default_topology",
    "default_topology_path",
    "explain",
    "generate_topology",
    "load_sysfs",
    "load_toml",
    "loads_toml",
    "p2p_matrix",
    "p2pmem_alloc_mmap",
    "pci_alloc_p2pmem",
    "pci_free_p2pmem",
    "pci_has_p2pmem",
    "pci_p2pdma_add_resource",
    "pci_p2pdma_bus_addr_map",
    "pci_p2pdma_distance",
    "pci_p2pdma_distance_many",
    "pci_p2pdma_enable_store",
    "pci_p2pdma_map_type",
    "pci_p2pdma_memunmap_pages",
    "pci_p2pdma_pgmaps",
    "pci_p2pdma_release",
    "pci_p2pdma_state",
    "pci_p2pmem_alloc_sgl",
    "pci_p2pmem_find_many",
    "pci_p2pmem_free_sgl",
    "pci_p2pmem_publish",
    "pci_p2pmem_virt_to_bus",
    "pcim_p2pdma_init",
    "pcim_p2pdma_provider",
]
