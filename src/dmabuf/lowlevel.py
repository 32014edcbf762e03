"""The tier for people writing exporters, importers and devices on the model.

The scheduler and lock tracker, fences and reservation objects, physical memory, the dma-buf
protocol, the DMA API, the PCI fabric, the device base and the timing model's building blocks.
Everything else is reachable through its layer package (``dmabuf.sync``, ``dmabuf.buf``…).
"""

from __future__ import annotations

from dmabuf.buf import LOCKING_CONVENTION as LOCKING_CONVENTION
from dmabuf.buf import DirectDev as DirectDev
from dmabuf.buf import DmaBuf as DmaBuf
from dmabuf.buf import DmaBufAttachment as DmaBufAttachment
from dmabuf.buf import DmaBufAttachOps as DmaBufAttachOps
from dmabuf.buf import DmaBufExportInfo as DmaBufExportInfo
from dmabuf.buf import DmaBufOps as DmaBufOps
from dmabuf.buf import DmaDataDirection as DmaDataDirection
from dmabuf.buf import DmaDev as DmaDev
from dmabuf.buf import DmaEngine as DmaEngine
from dmabuf.buf import DmaFault as DmaFault
from dmabuf.buf import DmaFaultLog as DmaFaultLog
from dmabuf.buf import PhysVec as PhysVec
from dmabuf.buf import Revoker as Revoker
from dmabuf.buf import SgTable as SgTable
from dmabuf.buf import dma_buf_export as dma_buf_export
from dmabuf.buf import dma_buf_get as dma_buf_get
from dmabuf.buf import invalidate_and_wait as invalidate_and_wait
from dmabuf.buf import system_heap_create as system_heap_create
from dmabuf.buf import udmabuf_device as udmabuf_device
from dmabuf.debug import LockTracker as LockTracker
from dmabuf.devices import Device as Device
from dmabuf.devices import GpuBo as GpuBo
from dmabuf.devices import WorkQueue as WorkQueue
from dmabuf.dma import DmaDevice as DmaDevice
from dmabuf.dma import Iommu as Iommu
from dmabuf.dma import IommuDomain as IommuDomain
from dmabuf.dma import IommuDomainType as IommuDomainType
from dmabuf.dma import P2PFabric as P2PFabric
from dmabuf.dma import dma_buf_phys_vec_to_sgt as dma_buf_phys_vec_to_sgt
from dmabuf.dma import dma_iova_link as dma_iova_link
from dmabuf.dma import dma_iova_sync as dma_iova_sync
from dmabuf.dma import dma_iova_try_alloc as dma_iova_try_alloc
from dmabuf.dma import dma_map_phys as dma_map_phys
from dmabuf.dma import dma_map_phys_ranges as dma_map_phys_ranges
from dmabuf.mm import PAGE_SIZE as PAGE_SIZE
from dmabuf.mm import RANGE_DTYPE as RANGE_DTYPE
from dmabuf.mm import MemKind as MemKind
from dmabuf.mm import PhysMemory as PhysMemory
from dmabuf.mm import PhysRegion as PhysRegion
from dmabuf.mm import coalesce as coalesce
from dmabuf.mm import make_ranges as make_ranges
from dmabuf.mm import total_len as total_len
from dmabuf.pci import PciDev as PciDev
from dmabuf.pci import calc_map_type_and_dist as calc_map_type_and_dist
from dmabuf.pci import pci_p2pdma_add_resource as pci_p2pdma_add_resource
from dmabuf.pci import pci_p2pdma_distance as pci_p2pdma_distance
from dmabuf.pci import pci_p2pmem_find_many as pci_p2pmem_find_many
from dmabuf.sched import ControlledScheduler as ControlledScheduler
from dmabuf.sched import ExplorationFailure as ExplorationFailure
from dmabuf.sched import FreeScheduler as FreeScheduler
from dmabuf.sched import Scheduler as Scheduler
from dmabuf.sched import explore as explore
from dmabuf.sched import replay as replay
from dmabuf.sim import Fabric as Fabric
from dmabuf.sim import allocate as allocate
from dmabuf.sim import max_min_fair as max_min_fair
from dmabuf.sim import transfer as transfer
from dmabuf.sync import MAX_SCHEDULE_TIMEOUT as MAX_SCHEDULE_TIMEOUT
from dmabuf.sync import DmaFence as DmaFence
from dmabuf.sync import DmaFenceArray as DmaFenceArray
from dmabuf.sync import DmaFenceCb as DmaFenceCb
from dmabuf.sync import DmaFenceChain as DmaFenceChain
from dmabuf.sync import DmaFenceFlag as DmaFenceFlag
from dmabuf.sync import DmaFenceOps as DmaFenceOps
from dmabuf.sync import DmaResv as DmaResv
from dmabuf.sync import DmaResvIter as DmaResvIter
from dmabuf.sync import Interrupts as Interrupts
from dmabuf.sync import SwSyncPt as SwSyncPt
from dmabuf.sync import SwSyncTimeline as SwSyncTimeline
from dmabuf.sync import WwAcquireCtx as WwAcquireCtx
from dmabuf.sync import WwClass as WwClass
from dmabuf.sync import WwMutex as WwMutex
from dmabuf.sync import dma_fence_allocate_private_stub as dma_fence_allocate_private_stub
from dmabuf.sync import dma_fence_array_create as dma_fence_array_create
from dmabuf.sync import dma_fence_begin_signalling as dma_fence_begin_signalling
from dmabuf.sync import dma_fence_chain_find_seqno as dma_fence_chain_find_seqno
from dmabuf.sync import dma_fence_chain_init as dma_fence_chain_init
from dmabuf.sync import dma_fence_chain_walk as dma_fence_chain_walk
from dmabuf.sync import dma_fence_end_signalling as dma_fence_end_signalling
from dmabuf.sync import dma_fence_get_stub as dma_fence_get_stub
from dmabuf.sync import dma_fence_is_later as dma_fence_is_later
from dmabuf.sync import dma_fence_is_later_or_same as dma_fence_is_later_or_same
from dmabuf.sync import dma_fence_later as dma_fence_later
from dmabuf.sync import dma_fence_unwrap_for_each as dma_fence_unwrap_for_each
from dmabuf.sync import dma_fence_unwrap_merge as dma_fence_unwrap_merge
from dmabuf.sync import dma_fence_wait_any_timeout as dma_fence_wait_any_timeout
from dmabuf.sync import reservation_ww_class as reservation_ww_class
from dmabuf.sync import sync_file_create as sync_file_create
from dmabuf.sync import usage_rw as usage_rw
from dmabuf.trace import TraceBus as TraceBus
from dmabuf.trace import TraceEvent as TraceEvent

__all__ = [
    "LOCKING_CONVENTION",
    "MAX_SCHEDULE_TIMEOUT",
    "PAGE_SIZE",
    "RANGE_DTYPE",
    "ControlledScheduler",
    "Device",
    "DirectDev",
    "DmaBuf",
    "DmaBufAttachOps",
    "DmaBufAttachment",
    "DmaBufExportInfo",
    "DmaBufOps",
    "DmaDataDirection",
    "DmaDev",
    "DmaDevice",
    "DmaEngine",
    "DmaFault",
    "DmaFaultLog",
    "DmaFence",
    "DmaFenceArray",
    "DmaFenceCb",
    "DmaFenceChain",
    "DmaFenceFlag",
    "DmaFenceOps",
    "DmaResv",
    "DmaResvIter",
    "ExplorationFailure",
    "Fabric",
    "FreeScheduler",
    "GpuBo",
    "Interrupts",
    "Iommu",
    "IommuDomain",
    "IommuDomainType",
    "LockTracker",
    "MemKind",
    "P2PFabric",
    "PciDev",
    "PhysMemory",
    "PhysRegion",
    "PhysVec",
    "Revoker",
    "Scheduler",
    "SgTable",
    "SwSyncPt",
    "SwSyncTimeline",
    "TraceBus",
    "TraceEvent",
    "WorkQueue",
    "WwAcquireCtx",
    "WwClass",
    "WwMutex",
    "allocate",
    "calc_map_type_and_dist",
    "coalesce",
    "dma_buf_export",
    "dma_buf_get",
    "dma_buf_phys_vec_to_sgt",
    "dma_fence_allocate_private_stub",
    "dma_fence_array_create",
    "dma_fence_begin_signalling",
    "dma_fence_chain_find_seqno",
    "dma_fence_chain_init",
    "dma_fence_chain_walk",
    "dma_fence_end_signalling",
    "dma_fence_get_stub",
    "dma_fence_is_later",
    "dma_fence_is_later_or_same",
    "dma_fence_later",
    "dma_fence_unwrap_for_each",
    "dma_fence_unwrap_merge",
    "dma_fence_wait_any_timeout",
    "dma_iova_link",
    "dma_iova_sync",
    "dma_iova_try_alloc",
    "dma_map_phys",
    "dma_map_phys_ranges",
    "explore",
    "invalidate_and_wait",
    "make_ranges",
    "max_min_fair",
    "pci_p2pdma_add_resource",
    "pci_p2pdma_distance",
    "pci_p2pmem_find_many",
    "replay",
    "reservation_ww_class",
    "sync_file_create",
    "system_heap_create",
    "total_len",
    "transfer",
    "udmabuf_device",
    "usage_rw",
]
