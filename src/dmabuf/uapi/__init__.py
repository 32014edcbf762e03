"""Real-kernel bindings of the dma-buf user API (the "side" layer of pydmabuf).

Pythonic, leak-safe wrappers of the kernel's uAPI headers, with ``fcntl.ioctl`` and ``ctypes``
structure layouts (no C extension), one module per header:

===================  ========================================================================
module               kernel header / file
===================  ========================================================================
``dma_buf``          include/uapi/linux/dma-buf.h: ``DmaBufFile`` (SYNC-bracketed CPU access,
                     poll, name, EXPORT/IMPORT_SYNC_FILE, llseek size)
``dma_heap``         include/uapi/linux/dma-heap.h: ``DmaHeap``, ``list_heaps``
``udmabuf``          include/uapi/linux/udmabuf.h: ``Udmabuf`` (CREATE, CREATE_LIST)
``memfd``            mm/memfd.c: ``Memfd`` and udmabuf's sealing rules
``sync_file``        include/uapi/linux/sync_file.h: ``SyncFile`` (MERGE, FILE_INFO, poll)
``vgem``             include/uapi/drm/vgem_drm.h + drm.h: ``VgemDevice`` (dumb buffers, PRIME,
                     user-controlled fences)
``fdinfo``           /proc/self/fdinfo and debugfs dma_buf/bufinfo parsers
``scm``              SCM_RIGHTS fd passing
``ioctl``            include/uapi/asm-generic/ioctl.h: ``_IOW``/``_IOWR`` request numbers
``fd``               ``FdObject``: the lifetime rules (idempotent close, context managers,
                     ``weakref.finalize`` safety net)
``backend``          ``UapiBackend``: every system call goes through it; ``KernelBackend`` is
                     the running kernel, a model backend plugs in the same way
===================  ========================================================================

Errors are :class:`dmabuf.errors.DmaBufError` (an ``OSError``) with the Linux errno and a
message that says what to check. This package depends on nothing in the model except
:mod:`dmabuf.errors`. User guide: ``docs/uapi.md``.
"""

from __future__ import annotations

from dmabuf.uapi.backend import KernelBackend, UapiBackend, default_backend
from dmabuf.uapi.dma_buf import DmaBufFile
from dmabuf.uapi.dma_heap import DmaHeap, list_heaps
from dmabuf.uapi.fd import FdObject
from dmabuf.uapi.fdinfo import (
    BufInfo,
    DmaBufFdInfo,
    process_dmabufs,
    read_bufinfo,
    read_fdinfo,
)
from dmabuf.uapi.memfd import Memfd
from dmabuf.uapi.scm import recv_dmabuf, recv_fds, send_dmabuf, send_fds
from dmabuf.uapi.sync_file import SyncFenceInfo, SyncFile, SyncFileInfo
from dmabuf.uapi.udmabuf import Udmabuf
from dmabuf.uapi.vgem import VgemBo, VgemDevice, VgemFence

__all__ = [
    "BufInfo",
    "DmaBufFdInfo",
    "DmaBufFile",
    "DmaHeap",
    "FdObject",
    "KernelBackend",
    "Memfd",
    "SyncFenceInfo",
    "SyncFile",
    "SyncFileInfo",
    "UapiBackend",
    "Udmabuf",
    "VgemBo",
    "VgemDevice",
    "VgemFence",
    "default_backend",
    "list_heaps",
    "process_dmabufs",
    "read_bufinfo",
    "read_fdinfo",
    "recv_dmabuf",
    "recv_fds",
    "send_dmabuf",
    "send_fds",
]
