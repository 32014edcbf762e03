"""udmabuf: dma-bufs over memfd pages — drivers/dma-buf/udmabuf.c (+ the memfd file of mm/memfd.c).

``/dev/udmabuf`` turns pages of a sealed memfd into a dma-buf **without copying**: the pages stay
the memfd's (writes through either are visible through the other) and are pinned for the
buffer's life. This module models

* the **memfd file** — ``memfd_create(2)`` (:func:`memfd_create`) installs a
  :class:`~dmabuf.buf.file.File` whose private data is the :class:`~dmabuf.mm.memfd.MemFd`
  inode, ``fcntl(F_ADD_SEALS/F_GET_SEALS)`` (:func:`memfd_add_seals`, :func:`memfd_get_seals`:
  ``EINVAL`` on a file that is not a memfd), ``ftruncate``, ``pwrite``/``pread``,
  ``lseek`` (``generic_file_llseek``: moves ``f_pos``; ``SEEK_END`` gives the size) and
  ``mmap`` (:meth:`MemfdFileOps.mmap`: ``shmem_mmap`` with the write-seal rules, the pages
  pinned while mapped). (Files are layer 3; the inode is in :mod:`dmabuf.mm`.)
* the **udmabuf device** (:class:`UdmabufDevice`, one per machine, ``machine.state(...)``) with
  ``UDMABUF_CREATE`` and ``UDMABUF_CREATE_LIST`` — as Python calls (:meth:`UdmabufDevice.create`,
  :meth:`UdmabufDevice.create_list`) and as the device file's ioctl decoding the raw structures.
  The checks are the kernel's, in its order: ``count > list_limit`` (1024) → ``EINVAL``; each
  item's offset and size page-aligned → else ``EINVAL``; total pages ``> 0`` and at most
  ``size_limit_mb`` (64 MiB) → else ``EINVAL``; then per item: the fd must be open
  (``EBADFD``) and a memfd (``EBADFD``: shmem or hugetlbfs only), its seals must include
  ``F_SEAL_SHRINK`` and exclude ``F_SEAL_WRITE`` and ``F_SEAL_FUTURE_WRITE`` (``EINVAL``), and
  the range must lie within the file (``memfd_pin_folios``: ``EINVAL``); the pages are pinned;
  the dma-buf is exported with ``O_RDWR`` and installed with ``O_CLOEXEC`` when
  ``UDMABUF_FLAGS_CLOEXEC`` is set. A failure unpins everything pinned so far.
* the **exporter** (``udmabuf_ops``): ``map_dma_buf`` builds a fresh table from the pinned pages
  (``sg_alloc_table_from_pages`` — contiguous pages merged) and maps it for the importer;
  ``begin_cpu_access`` creates the driver's own table (``ubuf->sg``) on its first call and
  ``end_cpu_access`` before that is ``EINVAL`` (so ``DMA_BUF_IOCTL_SYNC(END)`` before any
  ``START`` fails, as observed on a real 6.12 kernel); ``mmap`` requires a shared mapping
  (``EINVAL`` otherwise) and gives a :class:`~dmabuf.buf.phys_vec.PhysView` over the pinned
  pages; ``vmap`` likewise; ``release`` frees ``ubuf->sg`` and unpins every page.

Flags: only ``UDMABUF_FLAGS_CLOEXEC`` has a meaning. Mainline ignores any other bit (a check
returning ``EINVAL`` was proposed in 2018 and never merged; FreeBSD's port rejects them); the
model follows mainline.

Owner ids: the pages belong to their memfd (:attr:`Udmabuf.owners`); a DMA engine checking
ownership takes that id (or the tuple of ids for a list over several memfds).

Locking: the kernel takes ``inode_lock_shared`` around the seal check and the pin (against a
concurrent ``memfd_add_seals``); the model's :class:`MemFd` lock covers both calls. The
attachment list is protected by the buffer's lock.

Kernel: drivers/dma-buf/udmabuf.c (udmabuf_create, check_memfd_seals, udmabuf_pin_folios,
udmabuf_ioctl_create[_list], udmabuf_ops), include/uapi/linux/udmabuf.h, mm/memfd.c,
tools/testing/selftests/drivers/dma-buf/udmabuf.c. Spec: ecosystem-and-users.md §2.3,
kernel-p2p-dma.md §4.4, machine-and-real-kernel.md §3.
"""

from __future__ import annotations

import errno
import struct
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from dmabuf.buf.device import DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufExportInfo,
    DmaBufOps,
    Vma,
    VmOps,
    dma_buf_export,
)
from dmabuf.buf.file import (
    O_CLOEXEC,
    O_RDWR,
    SEEK_CUR,
    SEEK_END,
    SEEK_SET,
    File,
    FileOperations,
    current_process,
    user_buffer,
)
from dmabuf.buf.phys_vec import PhysView
from dmabuf.buf.sg_table import SgTable
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.mm.memfd import F_SEAL_FUTURE_WRITE, F_SEAL_SHRINK, F_SEAL_WRITE, MFD_CLOEXEC, MemFd
from dmabuf.mm.memfd import MemFdPin as _MemFdPin
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE, PhysMemory
from dmabuf.mm.ranges import RANGE_DTYPE, coalesce, slice_ranges

__all__ = [
    "SEALS_DENIED",
    "SEALS_WANTED",
    "UDMABUF_CREATE",
    "UDMABUF_CREATE_LIST",
    "UDMABUF_FLAGS_CLOEXEC",
    "MemfdFileOps",
    "Udmabuf",
    "UdmabufDevice",
    "UdmabufOps",
    "memfd_add_seals",
    "memfd_create",
    "memfd_get_seals",
    "memfd_of",
    "udmabuf_device",
]

#: ``UDMABUF_FLAGS_CLOEXEC``.
UDMABUF_FLAGS_CLOEXEC = 0x01
#: ``_IOW('u', 0x42, struct udmabuf_create)``.
UDMABUF_CREATE = 0x40187542
#: ``_IOW('u', 0x43, struct udmabuf_create_list)``.
UDMABUF_CREATE_LIST = 0x40087543
#: Seals a memfd must have.
SEALS_WANTED = F_SEAL_SHRINK
#: Seals a memfd must not have.
SEALS_DENIED = F_SEAL_WRITE | F_SEAL_FUTURE_WRITE

# struct udmabuf_create { __u32 memfd; __u32 flags; __u64 offset; __u64 size; }
_CREATE = struct.Struct("<IIQQ")
# struct udmabuf_create_list { __u32 flags; __u32 count; struct udmabuf_create_item list[]; }
_LIST_HEAD = struct.Struct("<II")
# struct udmabuf_create_item { __u32 memfd; __u32 __pad; __u64 offset; __u64 size; }
_ITEM = struct.Struct("<IIQQ")


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return int(value)


# ------------------------------------------------------------------------------------------
# memfd files
# ------------------------------------------------------------------------------------------


class MemfdFileOps(FileOperations):
    """``shmem_file_operations`` of a memfd: release drops the inode, lseek, mmap.

    Kernel: mm/shmem.c, shmem_file_operations, shmem_mmap(); fs/read_write.c,
    generic_file_llseek().
    """

    name = "memfd"
    mnt_id = 16

    def release(self, file: File) -> None:
        """Last close: the inode goes (pages not pinned by a udmabuf are freed).

        Kernel: mm/shmem.c, shmem_evict_inode() (last close of the memfd).
        """
        memfd: MemFd = file.private_data
        memfd.release()

    def llseek(self, file: File, offset: int, whence: int) -> int:
        """``generic_file_llseek()``: SEEK_SET/CUR/END over the file size; moves ``f_pos``.

        Returns: the new position (``SEEK_END`` with 0 gives the size), also stored in
            ``file.f_pos`` (``vfs_setpos``).
        Raises: DmaBufError(EINVAL): another ``whence`` (``SEEK_DATA``/``SEEK_HOLE`` are not
            modelled), a negative result.
        Kernel: fs/read_write.c, generic_file_llseek(), vfs_setpos().
        """
        memfd: MemFd = file.private_data
        if whence == SEEK_SET:
            pos = offset
        elif whence == SEEK_CUR:
            pos = file.f_pos + offset
        elif whence == SEEK_END:
            pos = memfd.size + offset
        else:
            raise DmaBufError(errno.EINVAL, f"lseek: whence {whence} not supported")
        if pos < 0:
            raise DmaBufError(errno.EINVAL, "lseek: negative resulting offset")
        file.f_pos = pos
        return pos

    def mmap(self, file: File, vma: Vma) -> None:
        """``shmem_mmap()``: map the memfd's pages (shared pages, the write-seal rules).

        A writable shared mapping (``VM_WRITE`` and ``VM_SHARED`` in ``vma.vm_flags``) of a
        memfd sealed with ``F_SEAL_WRITE``/``F_SEAL_FUTURE_WRITE`` is ``EPERM``, and while it
        exists ``F_SEAL_WRITE`` is ``EBUSY`` (:meth:`~dmabuf.mm.memfd.MemFd.mmap`). The whole
        pages of ``[pgoff, pgoff + length)`` inside the file are allocated and **pinned** while
        mapped, and ``vma.view`` is a :class:`~dmabuf.buf.phys_vec.PhysView` over them; the
        rest (past the last whole page of the file) has no pages in the view. ``vma.vm_ops``
        gets a ``close`` (unpin, ``munmap``) that whoever unmaps the VMA runs once
        (:meth:`Vma.close <dmabuf.buf.dma_buf.Vma.close>`).

        Deliberate differences (docs/model-vs-kernel.md, "uAPI parity"): pages are pinned for
        the mapping's life instead of faulted in, so ``F_SEAL_WRITE`` is ``EBUSY`` even with
        only read-only mappings, truncation leaves the mapping on the old pages instead of
        ``SIGBUS``, and a partial page at EOF is not in the view.

        Args:
            file: the memfd's file.
            vma: the mapping (``length``, ``pgoff``, ``vm_flags``).
        Context: takes the memfd's lock; may allocate pages.
        Raises: DmaBufError(EINVAL): zero length; DmaBufError(EPERM): writable shared mapping
            of a write-sealed memfd.
        Kernel: mm/shmem.c, shmem_mmap(); mm/memfd.c, memfd_check_seals_mmap().
        """
        memfd: MemFd = file.private_data
        writable = vma.shared and vma.writable
        start = vma.pgoff << PAGE_SHIFT
        mapping = memfd.mmap(start, vma.length, writable=writable)
        # memfd_pin_folios() pins whole pages inside i_size: a partial page at EOF stays out.
        end = min(start + vma.length, memfd.size // PAGE_SIZE * PAGE_SIZE)
        pin: _MemFdPin | None = None
        if end > start:
            try:
                pin = memfd.pin_pages(start, end - start)
            except BaseException:
                mapping.munmap()
                raise
        ranges = pin.ranges() if pin is not None else np.zeros(0, dtype=RANGE_DTYPE)
        vma.view = PhysView(memfd.phys, ranges, writable=writable)
        vma.file = file

        def vm_close(_vma: Vma) -> None:
            mapping.munmap()
            if pin is not None:
                pin.unpin()

        vma.vm_ops = VmOps(close=vm_close)


def memfd_create(phys: PhysMemory, name: str = "", flags: int = 0, *,
                 machine: Machine | None = None) -> int:
    """``memfd_create(name, flags)`` in the current process: a new memfd's fd.

    Args:
        phys: the physical memory its pages come from (the first RAM region).
        name: at most 249 bytes.
        flags: ``MFD_CLOEXEC``, ``MFD_ALLOW_SEALING``, ``MFD_NOEXEC_SEAL``, ``MFD_EXEC``.
        machine: default the current machine.
    Returns: the fd (``O_RDWR``; close-on-exec with ``MFD_CLOEXEC``).
    Raises: DmaBufError(EINVAL / ENOSYS / EMFILE) — see :class:`~dmabuf.mm.memfd.MemFd`.
    Kernel: mm/memfd.c, memfd_create().
    """
    m = machine if machine is not None else current_machine()
    memfd = MemFd(phys, name, flags)
    f = File(_MEMFD_FOPS, memfd, flags=O_RDWR, machine=m)
    try:
        return current_process(m).fds.install(f, O_CLOEXEC if flags & MFD_CLOEXEC else 0)
    except BaseException:
        f.put()
        raise


_MEMFD_FOPS = MemfdFileOps()


def memfd_of(fd: int, *, machine: Machine | None = None) -> MemFd:
    """The :class:`MemFd` behind ``fd`` of the current process (no reference is kept).

    Raises: DmaBufError(EBADF): not open; DmaBufError(EINVAL): not a memfd.

    Model-only: fd-to-memfd lookup of the current process (the kernel does fget() + shmem checks in
    udmabuf_create()).
    """
    m = machine if machine is not None else current_machine()
    f = current_process(m).fds.lookup(fd)
    if not isinstance(f.private_data, MemFd):
        raise DmaBufError(errno.EINVAL, f"fd {fd} is a {f.fops.name} file, not a memfd")
    memfd: MemFd = f.private_data
    return memfd


def memfd_add_seals(fd: int, seals: int, *, machine: Machine | None = None) -> None:
    """``fcntl(fd, F_ADD_SEALS, seals)`` — ``memfd_fcntl()`` / ``memfd_add_seals()``.

    Raises: DmaBufError(EBADF / EINVAL (not a memfd, bad bits) / EPERM / EBUSY).
    Kernel: mm/memfd.c, memfd_fcntl(), memfd_add_seals().
    """
    m = machine if machine is not None else current_machine()
    f = current_process(m).fds.lookup(fd)
    if not isinstance(f.private_data, MemFd):
        raise DmaBufError(errno.EINVAL, f"F_ADD_SEALS on a {f.fops.name} file (only shmem/"
                          "hugetlbfs files can be sealed)")
    f.private_data.add_seals(seals, writable_file=bool(f.f_mode & 0x2))


def memfd_get_seals(fd: int, *, machine: Machine | None = None) -> int:
    """``fcntl(fd, F_GET_SEALS)``.

    Raises: DmaBufError(EBADF / EINVAL (not a memfd)).
    Kernel: mm/memfd.c, memfd_get_seals().
    """
    m = machine if machine is not None else current_machine()
    f = current_process(m).fds.lookup(fd)
    if not isinstance(f.private_data, MemFd):
        raise DmaBufError(errno.EINVAL, f"F_GET_SEALS on a {f.fops.name} file")
    seals: int = f.private_data.get_seals()
    return seals


# ------------------------------------------------------------------------------------------
# The exporter
# ------------------------------------------------------------------------------------------


class Udmabuf:
    """``struct udmabuf``: the pinned pages of one udmabuf.

    Attributes:
        pagecount: number of pages.
        pins: the :class:`~dmabuf.mm.memfd.MemFdPin` of each item, in order.
        pages: the physical pages, in buffer order (``RANGE_DTYPE``, merged where contiguous).
        owners: owner ids of the pages (one per distinct memfd).
        attachments: the attachments' private tables (``udmabuf_attachment``).
        sg: the driver's own table (``ubuf->sg``), created by the first ``begin_cpu_access``;
            None before.
        cpu_syncs: ``dma_sync_sgtable_for_cpu/_device`` calls (model statistic).
    """

    def __init__(self, phys: PhysMemory, pins: list[_MemFdPin], machine: Machine) -> None:
        self.phys = phys
        self.pins = pins
        self.pagecount = sum(p.npages for p in pins)
        parts = [p.ranges() for p in pins]
        self.pages = coalesce(np.concatenate(parts))
        self.owners: tuple[int, ...] = tuple(dict.fromkeys(p.memfd.owner for p in pins))
        self.lock = machine.sched.lock("udmabuf.lock")
        self.attachments: list[DmaBufAttachment] = []
        self.sg: SgTable | None = None
        self.cpu_syncs = 0
        self.released = False

    @property
    def owner(self) -> int | tuple[int, ...]:
        """The owner id DMA engines should expect (a tuple when several memfds are involved)."""
        return self.owners[0] if len(self.owners) == 1 else self.owners

    def unpin_all(self) -> None:
        """Drop every pin (``unpin_all_folios``).

        Raises: ContractViolation when the udmabuf was already released.
        Kernel: drivers/dma-buf/udmabuf.c, unpin_all_folios().
        """
        if self.released:
            raise ContractViolation("release_udmabuf", "udmabuf released twice")
        self.released = True
        for p in self.pins:
            p.unpin()


class UdmabufOps(DmaBufOps):
    """``udmabuf_ops``: the udmabuf exporter (static: never moves, pages pinned).

    Kernel: drivers/dma-buf/udmabuf.c, udmabuf_ops.
    """

    def attach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """``udmabuf_attach()``: remember the attachment for CPU-access syncs.

        Kernel: drivers/dma-buf/udmabuf.c, udmabuf_attach().
        """
        ubuf: Udmabuf = dmabuf.priv
        with ubuf.lock:
            ubuf.attachments.insert(0, attach)

    def detach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """``udmabuf_detach()``.

        Kernel: drivers/dma-buf/udmabuf.c, udmabuf_detach().
        """
        ubuf: Udmabuf = dmabuf.priv
        with ubuf.lock:
            ubuf.attachments.remove(attach)

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> SgTable:
        """``map_udmabuf()`` → ``get_sg_table()``: table from the pinned pages, dma-mapped.

        Kernel: drivers/dma-buf/udmabuf.c, map_udmabuf().
        """
        ubuf: Udmabuf = attach.dmabuf.priv
        t = SgTable.from_pages(ubuf.pages, size=ubuf.pagecount << PAGE_SHIFT)
        return t.map_or_free(attach.dev, direction)

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: Any,
                      direction: DmaDataDirection) -> None:
        """``unmap_udmabuf()`` → ``put_sg_table()``: unmap and free the table.

        Kernel: drivers/dma-buf/udmabuf.c, unmap_udmabuf().
        """
        table.unmap_and_free(attach.dev, direction)

    def begin_cpu_access(self, dmabuf: DmaBuf, direction: DmaDataDirection) -> None:
        """``begin_cpu_udmabuf()``: the first call creates the driver's own table (``ubuf->sg``).

        The kernel builds ``ubuf->sg`` from the pinned pages on the first call (``get_sg_table``
        for the misc device) and syncs it for the CPU on later calls. The model builds the table
        (not DMA-mapped: the misc device is coherent and has no model ``DmaDev``) and, as its
        own choice, also counts a CPU sync of every attachment (:attr:`Udmabuf.cpu_syncs`; all
        model memory is coherent, so a sync moves no bytes).

        Context: takes the udmabuf's lock; never blocks otherwise.
        Raises: DmaBufError(ENOMEM / EINVAL) from building the table (not in practice).
        Kernel: drivers/dma-buf/udmabuf.c, begin_cpu_udmabuf().
        """
        ubuf: Udmabuf = dmabuf.priv
        with ubuf.lock:
            if ubuf.sg is None:
                ubuf.sg = SgTable.from_pages(ubuf.pages, size=ubuf.pagecount << PAGE_SHIFT)
            ubuf.cpu_syncs += len(ubuf.attachments)

    def end_cpu_access(self, dmabuf: DmaBuf, direction: DmaDataDirection) -> None:
        """``end_cpu_udmabuf()``: ``EINVAL`` before the first begin, else sync for the device.

        Context: takes the udmabuf's lock.
        Raises: DmaBufError(EINVAL): no ``begin_cpu_access`` yet (no ``ubuf->sg``): the
            driver has no mapping of its own to sync (``DMA_BUF_IOCTL_SYNC(END)`` before any
            ``START``; verified on a real 6.12 kernel).
        Kernel: drivers/dma-buf/udmabuf.c, end_cpu_udmabuf() (``if (!ubuf->sg) return
            -EINVAL``).
        """
        ubuf: Udmabuf = dmabuf.priv
        with ubuf.lock:
            if ubuf.sg is None:
                raise DmaBufError(errno.EINVAL, "udmabuf end_cpu_access before any "
                                  "begin_cpu_access: the driver has no mapping of its own to "
                                  "sync yet (issue DMA_BUF_SYNC_START first)")
            ubuf.cpu_syncs += len(ubuf.attachments)

    def mmap(self, dmabuf: DmaBuf, vma: Vma) -> None:
        """``mmap_udmabuf()``: shared mappings only; pages are the memfd's (zero copy).

        Raises: DmaBufError(EINVAL): a private (``MAP_PRIVATE``) mapping.

        Kernel: drivers/dma-buf/udmabuf.c, mmap_udmabuf().
        """
        if not vma.shared:
            raise DmaBufError(errno.EINVAL, "udmabuf can only be mapped MAP_SHARED")
        ubuf: Udmabuf = dmabuf.priv
        start = vma.pgoff << PAGE_SHIFT
        length = min(vma.length, (ubuf.pagecount << PAGE_SHIFT) - start)
        vma.view = PhysView(ubuf.phys, slice_ranges(ubuf.pages, start, length))

    def vmap(self, dmabuf: DmaBuf) -> PhysView:
        """``vmap_udmabuf()``: ``vm_map_ram`` of every page.

        Kernel: drivers/dma-buf/udmabuf.c, vmap_udmabuf().
        """
        ubuf: Udmabuf = dmabuf.priv
        return PhysView(ubuf.phys, ubuf.pages)

    def vunmap(self, dmabuf: DmaBuf, vmap: Any) -> None:
        """``vunmap_udmabuf()``.

        Kernel: drivers/dma-buf/udmabuf.c, vunmap_udmabuf().
        """
        vmap.close()

    def release(self, dmabuf: DmaBuf) -> None:
        """``release_udmabuf()``: free the driver's own table (if any), unpin every page.

        Kernel: drivers/dma-buf/udmabuf.c, release_udmabuf().
        """
        ubuf: Udmabuf = dmabuf.priv
        sg, ubuf.sg = ubuf.sg, None
        if sg is not None:
            sg.free()
        ubuf.unpin_all()


# ------------------------------------------------------------------------------------------
# The device
# ------------------------------------------------------------------------------------------


class _UdmabufFileOps(FileOperations):
    """``udmabuf_fops``: the misc device's ioctl on raw structures."""

    name = "udmabuf"
    mnt_id = 24

    def ioctl(self, file: File, cmd: int, arg: Any) -> Any:
        dev: UdmabufDevice = file.private_data
        if cmd == UDMABUF_CREATE:
            raw = _user_bytes(arg, _CREATE.size)
            memfd, flags, offset, size = _CREATE.unpack_from(raw, 0)
            return dev.create(memfd, offset, size, flags)
        if cmd == UDMABUF_CREATE_LIST:
            raw = _user_bytes(arg, _LIST_HEAD.size)
            flags, count = _LIST_HEAD.unpack_from(raw, 0)
            if count > dev.list_limit:
                raise DmaBufError(errno.EINVAL, f"UDMABUF_CREATE_LIST: count {count} > "
                                  f"list_limit {dev.list_limit}")
            raw = _user_bytes(arg, _LIST_HEAD.size + count * _ITEM.size)
            items = [(m, o, s) for m, _pad, o, s in
                     (_ITEM.unpack_from(raw, _LIST_HEAD.size + i * _ITEM.size)
                      for i in range(count))]
            return dev.create_list(items, flags)
        raise DmaBufError(errno.ENOTTY, f"udmabuf: unknown ioctl {cmd:#x}")


def _user_bytes(arg: Any, n: int) -> bytes:
    """``copy_from_user(n bytes)``: a copy of the first ``n`` bytes (EFAULT as user_buffer)."""
    return bytes(user_buffer(arg, n, "udmabuf ioctl")[:n])


class UdmabufDevice:
    """The ``/dev/udmabuf`` misc device of a machine (``machine.state(UdmabufDevice)``).

    Attributes:
        list_limit: module parameter ``list_limit`` (1024): most items in a CREATE_LIST.
        size_limit_mb: module parameter ``size_limit_mb`` (64): largest buffer, in MiB.

    Kernel: drivers/dma-buf/udmabuf.c (udmabuf_misc, module parameters).
    """

    path = "/dev/udmabuf"

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.list_limit = 1024
        self.size_limit_mb = 64
        self.ops = UdmabufOps()
        self.fops = _UdmabufFileOps()
        self._lock = threading.Lock()

    def open(self, flags: int = O_RDWR | O_CLOEXEC) -> int:
        """``open("/dev/udmabuf")`` in the current process; returns the fd.

        Kernel: drivers/dma-buf/udmabuf.c, the udmabuf misc device (open(2) of /dev/udmabuf).
        """
        flags = _check_int(flags, "flags")
        f = File(self.fops, self, flags=flags & ~O_CLOEXEC, machine=self.machine)
        try:
            return current_process(self.machine).fds.install(f, flags)
        except BaseException:
            f.put()
            raise

    def create(self, memfd: int, offset: int, size: int, flags: int = 0) -> int:
        """``UDMABUF_CREATE`` — ``udmabuf_ioctl_create()``: one item.

        Args:
            memfd: an fd of the current process (a sealed memfd).
            offset, size: page-aligned window of the memfd.
            flags: ``UDMABUF_FLAGS_CLOEXEC`` (other bits ignored, as mainline).
        Returns: the dma-buf fd.
        Raises: see :meth:`create_list`.
        Kernel: drivers/dma-buf/udmabuf.c, udmabuf_ioctl_create().
        """
        return self._create(_check_int(flags, "flags"), [(memfd, offset, size)])

    def create_list(self, items: Sequence[tuple[int, int, int]], flags: int = 0) -> int:
        """``UDMABUF_CREATE_LIST`` — ``udmabuf_ioctl_create_list()``: several windows, in order.

        Args:
            items: ``(memfd_fd, offset, size)`` triples.
            flags: ``UDMABUF_FLAGS_CLOEXEC`` (other bits ignored).
        Context: may block (page allocation while pinning).
        Returns: the dma-buf fd in the current process.
        Raises:
            DmaBufError(EINVAL): more than ``list_limit`` items; an unaligned offset or size;
                no pages or more than ``size_limit_mb``; seals missing ``F_SEAL_SHRINK`` or
                having ``F_SEAL_WRITE``/``F_SEAL_FUTURE_WRITE``; a window beyond the memfd.
            DmaBufError(EBADFD): an fd that is not open, or not a memfd.
            DmaBufError(ENOMEM / EMFILE).
        Kernel: drivers/dma-buf/udmabuf.c, udmabuf_ioctl_create_list(), udmabuf_create().
        """
        items = list(items)
        if len(items) > self.list_limit:
            raise DmaBufError(errno.EINVAL, f"UDMABUF_CREATE_LIST: {len(items)} items > "
                              f"list_limit {self.list_limit}")
        return self._create(_check_int(flags, "flags"), items)

    def create_dmabuf(self, items: Sequence[tuple[int, int, int]], flags: int = 0) -> DmaBuf:
        """Like :meth:`create_list` but return the :class:`DmaBuf` instead of an fd (the
        caller owns the one reference); for kernel-side users and tests.

        Kernel: drivers/dma-buf/udmabuf.c, udmabuf_create() (returning the dma_buf, not the fd).
        """
        return self._build(list(items))

    def _create(self, flags: int, items: list[tuple[int, int, int]]) -> int:
        dmabuf = self._build(items)
        try:
            return dmabuf.fd(O_CLOEXEC if flags & UDMABUF_FLAGS_CLOEXEC else 0)
        except BaseException:
            dmabuf.put()
            raise

    def _build(self, items: list[tuple[int, int, int]]) -> DmaBuf:
        pglimit = (self.size_limit_mb * 1024 * 1024) >> PAGE_SHIFT
        pgcnt = 0
        for i, it in enumerate(items):
            if not isinstance(it, (tuple, list)) or len(it) != 3:
                raise TypeError(f"item {i} must be (memfd, offset, size)")
            _, off, size = (_check_int(x, "memfd/offset/size") for x in it)
            if off < 0 or off % PAGE_SIZE:
                raise DmaBufError(errno.EINVAL, f"item {i}: offset {off:#x} is not page aligned")
            if size < 0 or size % PAGE_SIZE:
                raise DmaBufError(errno.EINVAL, f"item {i}: size {size:#x} is not page aligned")
            pgcnt += size >> PAGE_SHIFT
            if pgcnt > pglimit:
                raise DmaBufError(errno.EINVAL, f"udmabuf larger than size_limit_mb "
                                  f"({self.size_limit_mb} MiB)")
        if pgcnt == 0:
            raise DmaBufError(errno.EINVAL, "udmabuf of 0 pages: give at least one non-empty "
                              "item")
        fds = current_process(self.machine).fds
        pins: list[_MemFdPin] = []
        phys: PhysMemory | None = None
        try:
            for i, (fd, off, size) in enumerate(items):
                try:
                    f = fds.fget(int(fd))
                except DmaBufError:
                    raise DmaBufError(errno.EBADFD, f"item {i}: fd {fd} is not open") from None
                try:
                    memfd = f.private_data
                    if not isinstance(memfd, MemFd):
                        raise DmaBufError(errno.EBADFD, f"item {i}: fd {fd} is a {f.fops.name} "
                                          "file, not a memfd (shmem or hugetlbfs)")
                    seals = memfd.get_seals()
                    if (seals & SEALS_WANTED) != SEALS_WANTED or seals & SEALS_DENIED:
                        raise DmaBufError(errno.EINVAL, f"item {i}: memfd seals {seals:#x}: "
                                          "F_SEAL_SHRINK is required and F_SEAL_WRITE / "
                                          "F_SEAL_FUTURE_WRITE are refused")
                    if size == 0:
                        continue
                    pins.append(memfd.pin_pages(int(off), int(size)))
                    phys = memfd.phys
                finally:
                    f.put()
            assert phys is not None
            ubuf = Udmabuf(phys, pins, self.machine)
            info = DmaBufExportInfo(exp_name="udmabuf", ops=self.ops, size=pgcnt << PAGE_SHIFT,
                                    flags=O_RDWR, priv=ubuf)
            dmabuf = dma_buf_export(info, self.machine)
        except BaseException:
            for p in pins:
                if not p.released:
                    p.unpin()
            raise
        return dmabuf


def udmabuf_device(machine: Machine | None = None) -> UdmabufDevice:
    """The machine's ``/dev/udmabuf``.

    Model-only: per-machine singleton standing in for the udmabuf_misc device.
    """
    m = machine if machine is not None else current_machine()
    return m.state(UdmabufDevice)
