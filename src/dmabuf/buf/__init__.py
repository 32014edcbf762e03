"""Layer 3 — buffers: dma-buf objects, their representations and reference exporters."""

from dmabuf.buf.device import DirectDev, DmaDataDirection, DmaDev  # noqa: F401
from dmabuf.buf.dma_buf import (  # noqa: F401
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
from dmabuf.buf.dma_buf_file import dma_buf_bufinfo, install_sync_file  # noqa: F401
from dmabuf.buf.dma_engine import DmaEngine, DmaFault, DmaFaultLog  # noqa: F401
from dmabuf.buf.file import FdTable, File, Process, ProcessTable, current_process  # noqa: F401
from dmabuf.buf.heaps import (  # noqa: F401
    DmaHeap,
    DmaHeapOps,
    DmaHeapRegistry,
    SystemHeapBuffer,
    dma_heap_add,
    dma_heap_find,
    system_heap_create,
)
from dmabuf.buf.locking import LOCKING_CONVENTION  # noqa: F401
from dmabuf.buf.mapping_type import MappingTypeConfig  # noqa: F401
from dmabuf.buf.phys_vec import PhysVec, PhysView  # noqa: F401
from dmabuf.buf.revoke import Revoker, invalidate_and_wait  # noqa: F401
from dmabuf.buf.sg_table import SgTable  # noqa: F401
from dmabuf.buf.udmabuf import (  # noqa: F401
    Udmabuf,
    UdmabufDevice,
    memfd_add_seals,
    memfd_create,
    memfd_get_seals,
    memfd_of,
    udmabuf_device,
)
