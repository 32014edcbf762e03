"""DMA-BUF heaps, the system heap — drivers/dma-buf/dma-heap.c, drivers/dma-buf/heaps/system_heap.c.

User space allocates dma-bufs from *heaps*: ``/dev/dma_heap/<name>`` character devices whose one
ioctl, ``DMA_HEAP_IOCTL_ALLOC``, returns a dma-buf fd. This module models

* the **framework** (dma-heap.c): a per-machine registry (:class:`DmaHeapRegistry`,
  ``machine.state(DmaHeapRegistry)``) where exporters add heaps by unique name
  (:func:`dma_heap_add`, ``-EINVAL`` for an empty or duplicate name or missing ``allocate``,
  at most ``NUM_HEAP_MINORS`` heaps) and users find them (:func:`dma_heap_find`); the heap
  device file (:meth:`DmaHeap.open`) whose ioctl decodes the raw ``struct
  dma_heap_allocation_data`` exactly as ``dma_heap_ioctl()`` does — the user structure may be
  shorter or longer than the kernel's (the missing tail reads as zero, the extra tail is
  ignored) — and checks it as ``dma_heap_ioctl_allocate()``: ``fd`` must be 0, ``fd_flags``
  within ``O_ACCMODE | O_CLOEXEC``, ``heap_flags`` 0 (``-EINVAL`` otherwise); then
  ``dma_heap_buffer_alloc()`` rounds the length up to a page (``0`` → ``-EINVAL``) and installs
  the new dma-buf as an fd;
* the **system heap** (system_heap.c): pages from the buddy allocator in blocks of order 8, 4
  and 0 (1 MiB, 64 KiB, 4 KiB — sizes that suit IOMMU page tables), **zeroed** when allocated
  (``__GFP_ZERO``) and poisoned when freed, so no data leaks between allocations (the
  dmabuf-heaps selftest's ``test_alloc_zeroed``); one sg_table entry per block; a private copy
  of the table per attachment (``dup_sg_table``) mapped with the importer's device at map time;
  ``begin/end_cpu_access`` sync every mapped attachment (coherent in the model: bookkeeping
  only); ``mmap`` and ``vmap`` give :class:`~dmabuf.buf.phys_vec.PhysView` s over the real pages.
  A static exporter: no pin, never moves, no invalidation.

Memory: pages come from a RAM region of the :class:`~dmabuf.mm.phys.PhysMemory` given to
:func:`system_heap_create`; each buffer's pages have their own owner id
(:attr:`SystemHeapBuffer.owner`), so a DMA engine told to expect it faults once the buffer is
freed (use after free through a stale mapping).

Deliberate differences: the block decomposition is computed per physical extent the model's
allocator returns (the kernel tries each order against the buddy allocator and never returns to
a larger order once a smaller one was needed; with unfragmented memory both give the same
blocks); no page pools; no fatal-signal check (``-EINTR``).

Locking: the registry has its own lock (``heap_list_lock``); a buffer's attachment list is
protected by ``buffer.lock`` (a scheduler lock, as the kernel's mutex), never held across calls
into other layers that may block.

Kernel: drivers/dma-buf/dma-heap.c (dma_heap_add, dma_heap_ioctl, dma_heap_ioctl_allocate,
dma_heap_buffer_alloc), drivers/dma-buf/heaps/system_heap.c, include/uapi/linux/dma-heap.h,
include/linux/dma-heap.h. Spec: ecosystem-and-users.md §2.2, kernel-p2p-dma.md §4.5.
"""

from __future__ import annotations

import errno
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from dmabuf.buf.device import DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufExportInfo,
    DmaBufOps,
    Vma,
    dma_buf_export,
)
from dmabuf.buf.file import (
    O_ACCMODE,
    O_CLOEXEC,
    O_RDONLY,
    O_RDWR,
    File,
    FileOperations,
    user_buffer,
)
from dmabuf.buf.file import current_process as _current_process
from dmabuf.buf.phys_vec import PhysView
from dmabuf.buf.sg_table import SgTable
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE, MemKind, PhysMemory, PhysRegion
from dmabuf.mm.ranges import RANGE_DTYPE, slice_ranges

__all__ = [
    "DMA_HEAP_IOCTL_ALLOC",
    "DMA_HEAP_VALID_FD_FLAGS",
    "DMA_HEAP_VALID_HEAP_FLAGS",
    "NUM_HEAP_MINORS",
    "SYSTEM_HEAP_ORDERS",
    "DmaHeap",
    "DmaHeapFileOps",
    "DmaHeapOps",
    "DmaHeapRegistry",
    "SystemHeapBuffer",
    "SystemHeapOps",
    "dma_heap_add",
    "dma_heap_find",
    "system_heap_create",
]

#: ``DMA_HEAP_IOCTL_ALLOC = _IOWR('H', 0x0, struct dma_heap_allocation_data)``.
DMA_HEAP_IOCTL_ALLOC = 0xC0184800
#: ``DMA_HEAP_VALID_FD_FLAGS``: what ``fd_flags`` may contain.
DMA_HEAP_VALID_FD_FLAGS = O_CLOEXEC | O_ACCMODE
#: ``DMA_HEAP_VALID_HEAP_FLAGS``: no heap flags are defined.
DMA_HEAP_VALID_HEAP_FLAGS = 0
#: ``NUM_HEAP_MINORS``: how many heaps the char device region has room for.
NUM_HEAP_MINORS = 128
#: The system heap's allocation orders: 1 MiB, 64 KiB, 4 KiB blocks.
SYSTEM_HEAP_ORDERS = (8, 4, 0)

# struct dma_heap_allocation_data { __u64 len; __u32 fd; __u32 fd_flags; __u64 heap_flags; }
_ALLOC_DATA = struct.Struct("<QIIQ")
_IOC_NRMASK = 0xFF
_IOC_SIZESHIFT = 16
_IOC_SIZEMASK = 0x3FFF
_IOC_DIRSHIFT = 30
_IOC_WRITE = 1   # user writes, kernel reads: "IOC_IN"
_IOC_READ = 2    # kernel writes back: "IOC_OUT"


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return int(value)


# ------------------------------------------------------------------------------------------
# Framework
# ------------------------------------------------------------------------------------------


class DmaHeapOps:
    """A heap's operations — ``struct dma_heap_ops``.

    ``allocate(heap, len, fd_flags, heap_flags) -> DmaBuf`` (mandatory): export a new dma-buf of
    ``len`` bytes (already page aligned and non-zero) with ``fd_flags`` as its file flags;
    raise ``DmaBufError(ENOMEM)`` and friends on failure.

    Pass ``allocate`` as a keyword or override it in a subclass.

    Kernel: include/linux/dma-heap.h, struct dma_heap_ops.
    """

    def __init__(self, allocate: Callable[[DmaHeap, int, int, int], DmaBuf] | None = None) -> None:
        if allocate is not None and not callable(allocate):
            raise TypeError("allocate must be callable")
        self._allocate = allocate

    @property
    def has_allocate(self) -> bool:
        """Whether ``allocate`` is provided (``ops->allocate != NULL``)."""
        return self._allocate is not None or type(self).allocate is not DmaHeapOps.allocate

    def allocate(self, heap: DmaHeap, length: int, fd_flags: int, heap_flags: int) -> DmaBuf:
        """Allocate and export a buffer (see the class docstring).

        Raises: ContractViolation when the heap has no allocate op.
        Kernel: include/linux/dma-heap.h, struct dma_heap_ops.allocate.
        """
        if self._allocate is None:
            raise ContractViolation("dma_heap_ops.allocate", "heap has no allocate op")
        return self._allocate(heap, length, fd_flags, heap_flags)


class DmaHeap:
    """A heap — ``struct dma_heap``: a name, ops, private data and a minor number.

    Created by :func:`dma_heap_add`, never directly.

    Kernel: drivers/dma-buf/dma-heap.c, struct dma_heap.
    """

    def __init__(self, registry: DmaHeapRegistry, name: str, ops: DmaHeapOps, priv: Any,
                 minor: int, _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("heaps are created with dma_heap_add()")
        self.registry = registry
        self.machine = registry.machine
        self.name = name
        self.ops = ops
        self.priv = priv
        self.minor = minor
        self.fops = DmaHeapFileOps()

    def __repr__(self) -> str:
        return f"<DmaHeap {self.name} minor={self.minor}>"

    @property
    def path(self) -> str:
        """The device node: ``/dev/dma_heap/<name>`` (``dma_heap_devnode``)."""
        return f"/dev/dma_heap/{self.name}"

    def get_drvdata(self) -> Any:
        """``dma_heap_get_drvdata()``: the heap's private data.

        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_get_drvdata().
        """
        return self.priv

    def get_name(self) -> str:
        """``dma_heap_get_name()``.

        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_get_name().
        """
        return self.name

    # -- allocation -----------------------------------------------------------------------
    def allocate(self, length: int, fd_flags: int = O_RDWR | O_CLOEXEC,
                 heap_flags: int = 0) -> DmaBuf:
        """Allocate a dma-buf without installing an fd (kernel users; the core of ALLOC).

        Rounds ``length`` up to a page (``PAGE_ALIGN``; a length whose alignment wraps to 0
        is ``-EINVAL`` too, as in the kernel) and calls the heap's ``allocate``.

        Args:
            length: bytes wanted (> 0).
            fd_flags: file flags of the dma-buf (``O_RDWR``, ``O_CLOEXEC``…).
            heap_flags: heap flags (0).
        Context: may block (page allocation).
        Returns: the :class:`DmaBuf` (one reference, the caller's).
        Raises:
            DmaBufError(EINVAL): length 0 (after rounding); DmaBufError(ENOMEM): out of memory.
            TypeError: non-int arguments.
        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_buffer_alloc() (minus the fd).
        """
        length = _check_int(length, "len")
        fd_flags = _check_int(fd_flags, "fd_flags")
        heap_flags = _check_int(heap_flags, "heap_flags")
        if length < 0:
            raise DmaBufError(errno.EINVAL, f"len {length} is negative (it is a __u64)")
        length = ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) & ((1 << 64) - 1)
        if length == 0:
            raise DmaBufError(errno.EINVAL, "allocation length is 0 after PAGE_ALIGN: ask for at "
                              "least one byte (and less than 2^64 - PAGE_SIZE)")
        return self.ops.allocate(self, length, fd_flags, heap_flags)

    def buffer_alloc(self, length: int, fd_flags: int = O_RDWR | O_CLOEXEC,
                     heap_flags: int = 0) -> int:
        """Allocate and install a dma-buf fd in the current process — ``dma_heap_buffer_alloc()``.

        Args/Raises: as :meth:`allocate`, plus ``EMFILE`` (the buffer is released then).
        Returns: the new fd (``O_CLOEXEC`` from ``fd_flags``).
        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_buffer_alloc().
        """
        dmabuf = self.allocate(length, fd_flags, heap_flags)
        try:
            return dmabuf.fd(fd_flags)
        except BaseException:
            dmabuf.put()
            raise

    def alloc(self, length: int, fd_flags: int = O_RDWR | O_CLOEXEC, heap_flags: int = 0) -> int:
        """``DMA_HEAP_IOCTL_ALLOC`` with the structure's checks — ``dma_heap_ioctl_allocate()``.

        Args:
            length: ``len``.
            fd_flags: must be within ``O_ACCMODE | O_CLOEXEC``.
            heap_flags: must be 0.
        Returns: the new dma-buf fd in the current process.
        Raises:
            DmaBufError(EINVAL): bad ``fd_flags``/``heap_flags``, length 0.
            DmaBufError(ENOMEM / EMFILE).
        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_ioctl_allocate().
        """
        fd_flags = _check_int(fd_flags, "fd_flags")
        heap_flags = _check_int(heap_flags, "heap_flags")
        if fd_flags & ~DMA_HEAP_VALID_FD_FLAGS:
            raise DmaBufError(errno.EINVAL, f"fd_flags {fd_flags:#o} outside O_ACCMODE|O_CLOEXEC")
        if heap_flags & ~DMA_HEAP_VALID_HEAP_FLAGS:
            raise DmaBufError(errno.EINVAL, f"heap_flags {heap_flags:#x}: no heap flags are "
                              "defined; pass 0")
        return self.buffer_alloc(length, fd_flags, heap_flags)

    # -- the device file ------------------------------------------------------------------
    def open(self, flags: int = O_RDONLY | O_CLOEXEC) -> int:
        """``open("/dev/dma_heap/<name>")`` in the current process — ``dma_heap_open()``.

        Returns: the heap fd (its ioctl is ``DMA_HEAP_IOCTL_ALLOC``).
        Raises: DmaBufError(EMFILE).
        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_open().
        """
        flags = _check_int(flags, "flags")
        f = File(self.fops, self, flags=flags & ~O_CLOEXEC, machine=self.machine)
        try:
            return _current_process(self.machine).fds.install(f, flags)
        except BaseException:
            f.put()
            raise


class DmaHeapFileOps(FileOperations):
    """``dma_heap_fops``: the heap device's ioctl, decoding the raw user structure.

    Kernel: drivers/dma-buf/dma-heap.c, dma_heap_fops, dma_heap_ioctl().
    """

    name = "dma_heap"
    mnt_id = 25

    def ioctl(self, file: File, cmd: int, arg: Any) -> Any:
        """``dma_heap_ioctl(file, cmd, arg)``: ``arg`` is the user buffer (a ``bytearray``).

        Dispatches on ``_IOC_NR(cmd)`` only (as the kernel); copies ``_IOC_SIZE(cmd)`` bytes in
        (zero-filling up to the kernel's 24-byte structure) and back out. A user buffer
        shorter than the command's size is ``-EFAULT``.

        Returns: 0; the new fd is written into ``arg`` (``fd`` field).
        Raises: DmaBufError(EINVAL): unknown command number or a failed check;
            DmaBufError(EFAULT): ``arg`` too short or not writable.

        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_ioctl().
        """
        heap: DmaHeap = file.private_data
        nr = cmd & _IOC_NRMASK
        if nr != 0:
            raise DmaBufError(errno.EINVAL, f"dma_heap ioctl nr {nr}: only DMA_HEAP_IOCTL_ALLOC "
                              "(nr 0) exists")
        kcmd = DMA_HEAP_IOCTL_ALLOC
        drv_size = (kcmd >> _IOC_SIZESHIFT) & _IOC_SIZEMASK
        out_size = (cmd >> _IOC_SIZESHIFT) & _IOC_SIZEMASK
        in_size = out_size
        if not ((cmd & kcmd) >> _IOC_DIRSHIFT) & _IOC_WRITE:
            in_size = 0
        if not ((cmd & kcmd) >> _IOC_DIRSHIFT) & _IOC_READ:
            out_size = 0
        ksize = max(in_size, out_size, drv_size)
        if in_size or out_size:
            ubuf = user_buffer(arg, max(in_size, out_size), "dma_heap ioctl")
            if out_size and ubuf.readonly:
                raise DmaBufError(errno.EFAULT, "dma_heap ioctl: read-only user buffer")
        kdata = bytearray(ksize)
        if in_size:
            kdata[:in_size] = ubuf[:in_size]
        length, fd, fd_flags, heap_flags = _ALLOC_DATA.unpack_from(kdata, 0)
        if fd:
            raise DmaBufError(errno.EINVAL, "dma_heap_allocation_data.fd must be 0 on input")
        fd = heap.alloc(length, fd_flags, heap_flags)
        _ALLOC_DATA.pack_into(kdata, 0, length, fd, fd_flags, heap_flags)
        if out_size:
            ubuf[:out_size] = kdata[:out_size]
        return 0


class DmaHeapRegistry:
    """The machine's heaps — ``heap_list`` + ``dma_heap_minors`` (``machine.state(...)``).

    Kernel: drivers/dma-buf/dma-heap.c (heap_list, heap_list_lock, dma_heap_minors).
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._lock = threading.Lock()
        self._heaps: dict[str, DmaHeap] = {}
        self._minors: set[int] = set()

    def add(self, name: str, ops: DmaHeapOps, priv: Any = None) -> DmaHeap:
        """Register a heap — ``dma_heap_add()``; see :func:`dma_heap_add`.

        Raises: DmaBufError(EINVAL) for an empty name, invalid ops or a duplicate name;
        DmaBufError(EBUSY) when every heap minor is taken.
        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_add().
        """
        if not isinstance(name, str) or not name:
            raise DmaBufError(errno.EINVAL, "dma_heap_add: cannot add a heap without a name")
        if not isinstance(ops, DmaHeapOps) or not ops.has_allocate:
            raise DmaBufError(errno.EINVAL, "dma_heap_add: cannot add a heap with invalid ops "
                              "(a DmaHeapOps with allocate is required)")
        with self._lock:
            free = [m for m in range(NUM_HEAP_MINORS) if m not in self._minors]
            if not free:
                raise DmaBufError(errno.EBUSY, f"dma_heap_add: all {NUM_HEAP_MINORS} heap "
                                  "minors are in use")
            if name in self._heaps:
                raise DmaBufError(errno.EINVAL, f"dma_heap_add: a heap named {name!r} is "
                                  "already registered")
            heap = DmaHeap(self, name, ops, priv, free[0], _token=_TOKEN)
            self._heaps[name] = heap
            self._minors.add(free[0])
        self.machine.trace.emit("dma_heap_add", heap=name, minor=heap.minor)
        return heap

    def find(self, name: str) -> DmaHeap | None:
        """The heap called ``name``, or None — ``dma_heap_find()``.

        Kernel: drivers/dma-buf/dma-heap.c, dma_heap_find().
        """
        with self._lock:
            return self._heaps.get(name)

    def names(self) -> list[str]:
        """Heap names, sorted — ``ls /dev/dma_heap``.

        Model-only: lists registered heaps, as ``ls /dev/dma_heap`` shows them.
        """
        with self._lock:
            return sorted(self._heaps)

    def __len__(self) -> int:
        return len(self._heaps)


def dma_heap_add(name: str, ops: DmaHeapOps, priv: Any = None, *,
                 machine: Machine | None = None) -> DmaHeap:
    """Register a heap on the machine — ``dma_heap_add()``.

    Args:
        name: unique, non-empty (the device node ``/dev/dma_heap/<name>``).
        ops: :class:`DmaHeapOps` with ``allocate``.
        priv: private data (:meth:`DmaHeap.get_drvdata`).
        machine: default the current machine.
    Context: takes the registry lock; never blocks otherwise.
    Returns: the :class:`DmaHeap`.
    Raises:
        DmaBufError(EINVAL): empty name, invalid ops, or the name is taken.
        DmaBufError(EBUSY): no free minor (``NUM_HEAP_MINORS`` heaps exist).
    Kernel: drivers/dma-buf/dma-heap.c, dma_heap_add().
    """
    m = machine if machine is not None else current_machine()
    return m.state(DmaHeapRegistry).add(name, ops, priv)


def dma_heap_find(name: str, *, machine: Machine | None = None) -> DmaHeap | None:
    """The heap called ``name`` on the machine, or None — ``dma_heap_find()``.

    Kernel: drivers/dma-buf/dma-heap.c, dma_heap_find().
    """
    m = machine if machine is not None else current_machine()
    return m.state(DmaHeapRegistry).find(name)


_TOKEN = object()


# ------------------------------------------------------------------------------------------
# The system heap
# ------------------------------------------------------------------------------------------


def _order_blocks(extents: np.ndarray) -> np.ndarray:
    """Split page-aligned extents into 1 MiB / 64 KiB / 4 KiB blocks, largest first (vectorised)."""
    if extents.size == 0:
        return np.zeros(0, dtype=RANGE_DTYPE)
    parts_a: list[np.ndarray] = []
    parts_n: list[np.ndarray] = []
    parts_e: list[np.ndarray] = []   # extent index, then order position, to keep buffer order
    base = extents["addr"].astype(np.uint64)
    rem = extents["len"].astype(np.uint64)
    for pos, order in enumerate(SYSTEM_HEAP_ORDERS):
        bs = np.uint64(PAGE_SIZE << order)
        cnt = (rem // bs).astype(np.int64)
        if int(cnt.sum()):
            owner = np.repeat(np.arange(extents.size), cnt)
            first = np.zeros(extents.size, dtype=np.int64)
            np.cumsum(cnt[:-1], out=first[1:])
            k = (np.arange(owner.size) - first[owner]).astype(np.uint64)
            parts_a.append(base[owner] + k * bs)
            parts_n.append(np.full(owner.size, bs, dtype=np.uint64))
            parts_e.append(owner * len(SYSTEM_HEAP_ORDERS) + pos)
        base = base + cnt.astype(np.uint64) * bs
        rem = rem - cnt.astype(np.uint64) * bs
    a = np.concatenate(parts_a)
    n = np.concatenate(parts_n)
    perm = np.argsort(np.concatenate(parts_e), kind="stable")
    out = np.empty(a.size, dtype=RANGE_DTYPE)
    out["addr"] = a[perm]
    out["len"] = n[perm]
    return out


class _HeapAttachment:
    """``struct dma_heap_attachment``: the importer's device, its private table, mapped flag."""

    __slots__ = ("dev", "mapped", "table")

    def __init__(self, dev: Any, table: SgTable) -> None:
        self.dev = dev
        self.table = table
        self.mapped = False


class SystemHeapBuffer:
    """``struct system_heap_buffer``: the pages of one system-heap dma-buf.

    Attributes:
        heap: the heap it came from.
        phys: the physical memory.
        len: bytes (page aligned).
        owner: the owner id of its pages (DMA engines check it).
        blocks: the order-8/4/0 blocks (``RANGE_DTYPE``), in buffer order.
        sg_table: one entry per block (``sg_set_page(page, page_size(page), 0)``).
        vmap_cnt: vmap reference count; vaddr: the :class:`PhysView` while vmapped.
        cpu_syncs: ``dma_sync_sgtable_for_cpu/_device`` calls made (model statistic).
    """

    def __init__(self, heap: DmaHeap, phys: PhysMemory, region: PhysRegion, length: int) -> None:
        self.heap = heap
        self.phys = phys
        self.len = length
        self.owner = phys.new_owner(f"{heap.name}-heap buffer")
        extents = phys.alloc(region, length, self.owner, max_extent=PAGE_SIZE << 8, zero=True)
        self.blocks = _order_blocks(extents)
        self.sg_table = SgTable.from_ranges(self.blocks)
        self.lock = heap.machine.sched.lock("system_heap_buffer.lock")
        self.attachments: list[_HeapAttachment] = []
        self.vmap_cnt = 0
        self.vaddr: PhysView | None = None
        self.cpu_syncs = 0
        self.freed = False

    @property
    def pages(self) -> np.ndarray:
        """The buffer's physical ranges (the blocks), a copy."""
        return self.blocks.copy()

    def free(self) -> None:
        """Free the pages (poisoned) and the table — ``system_heap_dma_buf_release``.

        Raises: ContractViolation when the buffer is freed twice.
        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_dma_buf_release().
        """
        if self.freed:
            raise ContractViolation("system_heap_dma_buf_release", "buffer freed twice")
        self.freed = True
        self.sg_table.free()
        self.phys.free(self.blocks)


class SystemHeapOps(DmaBufOps):
    """``system_heap_buf_ops``: the system heap's dma-buf exporter ops (static exporter).

    Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_buf_ops.
    """

    def attach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """``system_heap_attach()``: a private copy of the table for this importer.

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_attach().
        """
        buf: SystemHeapBuffer = dmabuf.priv
        a = _HeapAttachment(attach.dev, buf.sg_table.dup())
        attach.priv = a
        with buf.lock:
            buf.attachments.insert(0, a)

    def detach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """``system_heap_detach()``: drop the private table.

        Model choice: a table still DMA-mapped (the importer forgot to unmap; the core has
        WARNed) is unmapped before it is freed, so the device's bookkeeping stays exact; the
        kernel frees it and leaks the mapping.

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_detach().
        """
        buf: SystemHeapBuffer = dmabuf.priv
        a: _HeapAttachment = attach.priv
        with buf.lock:
            buf.attachments.remove(a)
        if a.table.dma_mapped:
            a.table.unmap()
        a.table.free()

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> SgTable:
        """``system_heap_map_dma_buf()``: ``dma_map_sgtable(attach->dev, a->table, dir)``.

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_map_dma_buf().
        """
        a: _HeapAttachment = attach.priv
        a.table.map(attach.dev, direction)
        a.mapped = True
        return a.table

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: Any,
                      direction: DmaDataDirection) -> None:
        """``system_heap_unmap_dma_buf()``.

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_unmap_dma_buf().
        """
        a: _HeapAttachment = attach.priv
        a.mapped = False
        table.unmap(attach.dev, direction)

    def begin_cpu_access(self, dmabuf: DmaBuf, direction: DmaDataDirection) -> None:
        """``system_heap_dma_buf_begin_cpu_access()``: sync mapped attachments for the CPU.

        The model's memory is coherent: only the number of syncs is counted.

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_dma_buf_begin_cpu_access().
        """
        buf: SystemHeapBuffer = dmabuf.priv
        with buf.lock:
            buf.cpu_syncs += sum(1 for a in buf.attachments if a.mapped)

    def end_cpu_access(self, dmabuf: DmaBuf, direction: DmaDataDirection) -> None:
        """``system_heap_dma_buf_end_cpu_access()``: sync mapped attachments for the device.

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_dma_buf_end_cpu_access().
        """
        buf: SystemHeapBuffer = dmabuf.priv
        with buf.lock:
            buf.cpu_syncs += sum(1 for a in buf.attachments if a.mapped)

    def mmap(self, dmabuf: DmaBuf, vma: Vma) -> None:
        """``system_heap_mmap()``: map the pages from ``vma.pgoff`` (``remap_pfn_range``).

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_mmap().
        """
        buf: SystemHeapBuffer = dmabuf.priv
        start = vma.pgoff << PAGE_SHIFT
        length = min(vma.length, buf.len - start)
        vma.view = PhysView(buf.phys, slice_ranges(buf.blocks, start, length))

    def vmap(self, dmabuf: DmaBuf) -> PhysView:
        """``system_heap_vmap()``: a kernel mapping of every page (refcounted).

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_vmap().
        """
        buf: SystemHeapBuffer = dmabuf.priv
        with buf.lock:
            if buf.vmap_cnt == 0:
                buf.vaddr = PhysView(buf.phys, buf.blocks)
            buf.vmap_cnt += 1
            assert buf.vaddr is not None
            return buf.vaddr

    def vunmap(self, dmabuf: DmaBuf, vmap: Any) -> None:
        """``system_heap_vunmap()``.

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_vunmap().
        """
        buf: SystemHeapBuffer = dmabuf.priv
        with buf.lock:
            buf.vmap_cnt -= 1
            if buf.vmap_cnt == 0 and buf.vaddr is not None:
                buf.vaddr.close()
                buf.vaddr = None

    def release(self, dmabuf: DmaBuf) -> None:
        """``system_heap_dma_buf_release()``: free every page (poisoned) and the table.

        Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_dma_buf_release().
        """
        buf: SystemHeapBuffer = dmabuf.priv
        buf.free()


class _SystemHeapAllocator(DmaHeapOps):
    """``system_heap_ops``: allocate pages, export a dma-buf named after the heap."""

    def __init__(self, phys: PhysMemory, region: PhysRegion) -> None:
        super().__init__()
        self.phys = phys
        self.region = region
        self.buf_ops = SystemHeapOps()

    def allocate(self, heap: DmaHeap, length: int, fd_flags: int, heap_flags: int) -> DmaBuf:
        """``system_heap_allocate()``.

        Raises: DmaBufError(ENOMEM): not enough free pages in the region.
        """
        buf = SystemHeapBuffer(heap, self.phys, self.region, length)
        try:
            info = DmaBufExportInfo(exp_name=heap.name, ops=self.buf_ops, size=length,
                                    flags=fd_flags, priv=buf)
            return dma_buf_export(info, heap.machine)
        except BaseException:
            buf.free()
            raise


def system_heap_create(phys: PhysMemory, *, region: PhysRegion | str | None = None,
                       name: str = "system", machine: Machine | None = None) -> DmaHeap:
    """Register the system heap — ``system_heap_create()`` (module init).

    Args:
        phys: the physical memory pages come from.
        region: a RAM region (default: the first RAM region of ``phys``).
        name: heap name (``"system"``).
        machine: default the current machine.
    Returns: the :class:`DmaHeap`.
    Raises:
        DmaBufError(EINVAL): no RAM region, a non-RAM region, or the name is taken.
    Kernel: drivers/dma-buf/heaps/system_heap.c, system_heap_create().
    """
    if not isinstance(phys, PhysMemory):
        raise TypeError(f"phys must be a PhysMemory, not {type(phys).__name__}")
    if region is None:
        rams = [r for r in phys.regions if r.kind is MemKind.RAM]
        if not rams:
            raise DmaBufError(errno.EINVAL, "system heap: the physical memory has no RAM region")
        region = rams[0]
    elif isinstance(region, str):
        region = phys.region(region)
    if region.kind is not MemKind.RAM:
        raise DmaBufError(errno.EINVAL, f"system heap pages come from RAM, not {region.name}")
    return dma_heap_add(name, _SystemHeapAllocator(phys, region), None, machine=machine)
