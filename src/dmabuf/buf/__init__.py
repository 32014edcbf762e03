"""Layer 3 — buffers: dma-buf objects, their representations and reference exporters."""

from dmabuf.buf.device import DirectDev, DmaDataDirection, DmaDev
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufAttachOps,
    DmaBufExportInfo,
    DmaBufOps,
    DmaBufRegistry,
    ExporterModule,
    Vma,
    dma_buf_export,
    dma_buf_get,
)
from dmabuf.buf.dma_buf_file import dma_buf_bufinfo, install_sync_file
from dmabuf.buf.dma_engine import DmaEngine, DmaFault, DmaFaultLog
from dmabuf.buf.file import FdTable, File, Process, ProcessTable, current_process
from dmabuf.buf.heaps import (
    DmaHeap,
    DmaHeapOps,
    DmaHeapRegistry,
    SystemHeapBuffer,
    dma_heap_add,
    dma_heap_find,
    system_heap_create,
)
from dmabuf.buf.locking import LOCKING_CONVENTION
from dmabuf.buf.mapping_type import MappingTypeConfig
from dmabuf.buf.phys_vec import PhysVec, PhysView
from dmabuf.buf.revoke import Revoker, invalidate_and_wait
from dmabuf.buf.sg_table import SgTable
from dmabuf.buf.udmabuf import (
    Udmabuf,
    UdmabufDevice,
    memfd_add_seals,
    memfd_create,
    memfd_get_seals,
    memfd_of,
    udmabuf_device,
)

__all__ = [
    "LOCKING_CONVENTION",
    "DirectDev",
    "DmaBuf",
    "DmaBufAttachOps",
    "DmaBufAttachment",
    "DmaBufExportInfo",
    "DmaBufOps",
    "DmaBufRegistry",
    "DmaDataDirection",
    "DmaDev",
    "DmaEngine",
    "DmaFault",
    "DmaFaultLog",
    "DmaHeap",
    "DmaHeapOps",
    "DmaHeapRegistry",
    "ExporterModule",
    "FdTable",
    "File",
    "MappingTypeConfig",
    "PhysVec",
    "PhysView",
    "Process",
    "ProcessTable",
    "Revoker",
    "SgTable",
    "SystemHeapBuffer",
    "Udmabuf",
    "UdmabufDevice",
    "Vma",
    "current_process",
    "dma_buf_bufinfo",
    "dma_buf_export",
    "dma_buf_get",
    "dma_heap_add",
    "dma_heap_find",
    "install_sync_file",
    "invalidate_and_wait",
    "memfd_add_seals",
    "memfd_create",
    "memfd_get_seals",
    "memfd_of",
    "system_heap_create",
    "udmabuf_device",
]
