"""include/uapi/linux/dma-heap.h — allocating dma-bufs from ``/dev/dma_heap/<name>``.

Each heap registered by the kernel appears as a character device ``/dev/dma_heap/<name>``
(``system`` with CONFIG_DMABUF_HEAPS_SYSTEM, ``linux,cma``/``reserved`` with
CONFIG_DMABUF_HEAPS_CMA and a CMA area, vendor heaps on phones). One ioctl,
``DMA_HEAP_IOCTL_ALLOC`` with ``struct dma_heap_allocation_data {len, fd, fd_flags,
heap_flags}``, returns a new dma-buf fd in ``fd``. Rules (dma-heap.c,
``dma_heap_ioctl_allocate()``):

* ``fd`` must be 0 on input, ``fd_flags`` a subset of ``O_ACCMODE | O_CLOEXEC``,
  ``heap_flags`` 0 (no heap flag is defined upstream) — otherwise ``EINVAL``;
* ``len`` is rounded up to whole pages; 0 gives ``EINVAL``;
* the ioctl accepts **older and newer** sizes of the structure: ``dma_heap_ioctl()`` copies
  ``_IOC_SIZE(cmd)`` bytes in and out and zero-fills the rest (the selftest's
  ``test_alloc_compat``); :func:`dma_heap_ioctl_alloc` can send any size;
* unknown ioctl numbers give ``EINVAL`` (``nr >= ARRAY_SIZE(cmds)``), not ``ENOTTY``.

The device node is usually ``root:root 0600``; a udev rule grants access to a group.

Kernel: drivers/dma-buf/dma-heap.c (dma_heap_ioctl(), dma_heap_ioctl_allocate(),
dma_heap_buffer_alloc()); drivers/dma-buf/heaps/system_heap.c; include/uapi/linux/dma-heap.h.
"""

from __future__ import annotations

import ctypes
import errno
import os

from dmabuf.errors import DmaBufError
from dmabuf.uapi.backend import UapiBackend, default_backend
from dmabuf.uapi.dma_buf import DmaBufFile
from dmabuf.uapi.fd import FdObject, os_error
from dmabuf.uapi.ioctl import IOWR

__all__ = [
    "DMA_HEAP_IOCTL_ALLOC",
    "DMA_HEAP_ROOT",
    "DMA_HEAP_VALID_FD_FLAGS",
    "DMA_HEAP_VALID_HEAP_FLAGS",
    "DmaHeap",
    "DmaHeapAllocationData",
    "dma_heap_ioctl_alloc",
    "list_heaps",
]


class DmaHeapAllocationData(ctypes.Structure):
    """``struct dma_heap_allocation_data`` (24 bytes)."""

    _fields_ = [("len", ctypes.c_uint64), ("fd", ctypes.c_uint32),
                ("fd_flags", ctypes.c_uint32), ("heap_flags", ctypes.c_uint64)]


DMA_HEAP_IOC_MAGIC = "H"
DMA_HEAP_IOCTL_ALLOC = IOWR(DMA_HEAP_IOC_MAGIC, 0x0, DmaHeapAllocationData)
DMA_HEAP_VALID_FD_FLAGS = os.O_CLOEXEC | os.O_ACCMODE
DMA_HEAP_VALID_HEAP_FLAGS = 0
DMA_HEAP_ROOT = "/dev/dma_heap"

_CONFIG_HINT = ("the kernel has no dma-buf heaps: it needs CONFIG_DMABUF_HEAPS plus a heap "
                "(CONFIG_DMABUF_HEAPS_SYSTEM for 'system', CONFIG_DMABUF_HEAPS_CMA and a CMA "
                "area for 'linux,cma'); check with: zgrep DMABUF_HEAPS /proc/config.gz")


def list_heaps(backend: UapiBackend | None = None, root: str = DMA_HEAP_ROOT) -> list[str]:
    """The names of the heaps in ``/dev/dma_heap`` (sorted; empty if there is none).

    Args:
        backend: None for the running kernel.
        root: the heap directory.

    Returns:
        Heap names (``["system"]``).

    Raises:
        DmaBufError: EACCES if the directory cannot be read.

    Kernel: drivers/dma-buf/dma-heap.c, dma_heap_devnode() ("dma_heap/<name>").
    """
    be = backend if backend is not None else default_backend()
    try:
        return sorted(be.listdir(root))
    except FileNotFoundError:
        return []
    except OSError as e:
        if e.errno == errno.ENOENT:
            return []
        raise os_error(e, f"listing {root}") from e


def dma_heap_ioctl_alloc(backend: UapiBackend, heap_fd: int, length: int, *,
                         fd_flags: int = os.O_RDWR | os.O_CLOEXEC, heap_flags: int = 0,
                         fd_in: int = 0, struct_size: int | None = None) -> int:
    """The raw ``DMA_HEAP_IOCTL_ALLOC``: no checks here, any structure size.

    Args:
        backend: the backend.
        heap_fd: an open heap device.
        length, fd_flags, heap_flags, fd_in: the structure's fields (``fd_in`` must be 0).
        struct_size: send a structure of this size (the request number encodes it):
            16 = an old header without ``heap_flags``; > 24 = a newer one, extra bytes filled
            with 0xff. None: the current 24 bytes.

    Returns:
        The new dma-buf fd (owned by the caller).

    Raises:
        OSError: the kernel's errno, untranslated.

    Kernel: drivers/dma-buf/dma-heap.c, dma_heap_ioctl().
    """
    size = ctypes.sizeof(DmaHeapAllocationData) if struct_size is None else struct_size
    buf = bytearray(max(size, ctypes.sizeof(DmaHeapAllocationData)))
    arg = DmaHeapAllocationData.from_buffer(buf)
    arg.len = length
    arg.fd = fd_in
    arg.fd_flags = fd_flags & 0xFFFFFFFF
    arg.heap_flags = heap_flags & 0xFFFFFFFFFFFFFFFF
    for i in range(ctypes.sizeof(DmaHeapAllocationData), size):
        buf[i] = 0xFF
    data = buf[:size] if size < len(buf) else buf
    backend.ioctl(heap_fd, IOWR(DMA_HEAP_IOC_MAGIC, 0x0, size), data)
    if data is not buf:
        buf[:size] = data
    return int(DmaHeapAllocationData.from_buffer(buf).fd)


class DmaHeap(FdObject):
    """An open dma-buf heap device (owned fd); :meth:`alloc` makes dma-bufs from it."""

    def __init__(self, fd: int, backend: UapiBackend | None = None, *, name: str = "") -> None:
        super().__init__(fd, backend, what=f"{DMA_HEAP_ROOT}/{name}" if name else "dma-heap")
        self.name = name

    @classmethod
    def open(cls, name: str = "system", backend: UapiBackend | None = None, *,
             root: str = DMA_HEAP_ROOT) -> DmaHeap:
        """Open ``/dev/dma_heap/<name>`` (read-only is enough to allocate).

        Args:
            name: the heap (``system``, ``linux,cma``…).
            backend: None for the running kernel.
            root: the heap directory.

        Returns:
            The open :class:`DmaHeap`.

        Raises:
            DmaBufError: ENOENT naming the kernel options to check (no heaps at all) or the
                heaps that do exist; EACCES with the udev fix.

        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_open().
        """
        be = backend if backend is not None else default_backend()
        if not name or "/" in name:
            raise DmaBufError(errno.EINVAL, f"heap name {name!r} must be a plain name like "
                                            "'system'")
        path = f"{root}/{name}"
        try:
            fd = be.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            hints = {
                errno.EACCES: (f"{path} is not accessible to this user (usually root:root "
                               "0600): run as root or add a udev rule such as "
                               'SUBSYSTEM=="dma_heap", KERNEL=="system", GROUP="video", '
                               'MODE="0660"'),
            }
            if e.errno == errno.ENOENT:
                heaps = list_heaps(be, root)
                hints[errno.ENOENT] = (f"no heap {name!r}; available heaps: {heaps}" if heaps
                                       else f"{root} does not exist: {_CONFIG_HINT}")
            raise os_error(e, f"open {path}", hints) from e
        return cls(fd, be, name=name)

    def alloc(self, size: int, *, fd_flags: int = os.O_RDWR | os.O_CLOEXEC,
              heap_flags: int = 0) -> DmaBufFile:
        """Allocate a dma-buf of ``size`` bytes (rounded up to pages) — ``DMA_HEAP_IOCTL_ALLOC``.

        Args:
            size: bytes (> 0).
            fd_flags: flags of the new fd: a subset of ``O_RDWR | O_CLOEXEC`` (use O_RDWR to
                map it writable).
            heap_flags: must be 0 (no heap flag is defined).

        Context:
            Blocks while the heap allocates (the system heap zeroes every page).

        Returns:
            The new :class:`DmaBufFile`.

        Raises:
            DmaBufError: EINVAL for size <= 0, unknown fd_flags or heap_flags (checked here,
                as the kernel does); ENOMEM when the heap cannot provide the memory.

        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_ioctl_allocate(), dma_heap_buffer_alloc().
        """
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise DmaBufError(errno.EINVAL, f"allocation size must be an int > 0, got {size!r}")
        if fd_flags & ~DMA_HEAP_VALID_FD_FLAGS:
            raise DmaBufError(errno.EINVAL, (
                f"fd_flags {fd_flags:#o} has bits outside O_ACCMODE|O_CLOEXEC "
                f"({fd_flags & ~DMA_HEAP_VALID_FD_FLAGS:#o}); use os.O_RDWR | os.O_CLOEXEC"))
        if heap_flags & ~DMA_HEAP_VALID_HEAP_FLAGS:
            raise DmaBufError(errno.EINVAL, (
                f"heap_flags {heap_flags:#x} must be 0: the kernel defines no heap flag"))
        try:
            fd = dma_heap_ioctl_alloc(self._backend, self.fileno(), size, fd_flags=fd_flags,
                                      heap_flags=heap_flags)
        except OSError as e:
            raise os_error(e, f"DMA_HEAP_IOCTL_ALLOC of {size} bytes from {self._what}", {
                errno.ENOMEM: (f"the heap could not provide {size} bytes (system heap: free "
                               "RAM; CMA heaps: the CMA area's size, see cma= on the kernel "
                               "command line)"),
                errno.EINVAL: "invalid size or flags for this heap",
                errno.ENOTTY: "the fd is not a dma-heap device"}) from e
        return DmaBufFile(fd, self._backend)
