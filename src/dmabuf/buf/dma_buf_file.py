"""drivers/dma-buf/dma-buf.c, the file side: ``dma_buf_fops``, the uAPI ioctls, fdinfo, bufinfo.

User space sees a dma-buf only as a file descriptor. This module implements what the kernel's
``dma_buf_fops`` does with it, and the uAPI of include/uapi/linux/dma-buf.h:

* ``llseek`` — only to discover the size: ``SEEK_END`` with offset 0 gives the size,
  ``SEEK_SET`` with offset 0 gives 0 (so the idiomatic ``SEEK_END(0)``, ``SEEK_SET(0)`` pattern
  works); anything else is ``-EINVAL``.
* ``mmap`` — ``dma_buf_mmap_internal``: ``-EINVAL`` without an exporter ``mmap`` or past the end.
* ``poll`` — DOC: implicit fence polling. ``EPOLLIN`` ("can read") is ready when the WRITE-level
  fences (kernel + write) have signalled, ``EPOLLOUT`` ("can write") when every READ-level
  fence (kernel + write + read) has; BOOKKEEP fences are never considered. Each direction has
  one callback slot (``cb_in``/``cb_out``): while armed on a fence, the event is not reported;
  the callback (run by the fence's signaller) wakes the waiters, clears the slot and drops the
  file reference the arming took. :func:`dma_buf_poll_wait` is ``poll(2)`` with a timeout on
  top of that.
* ioctls — ``DMA_BUF_IOCTL_SYNC`` (flag validation, then begin/end CPU access, which waits for
  the implicit fences), ``DMA_BUF_SET_NAME_A/_B`` (32 bytes including the NUL),
  ``DMA_BUF_IOCTL_EXPORT_SYNC_FILE`` (a *snapshot* of the fences as a sync_file; the signalled
  stub fence when idle) and ``DMA_BUF_IOCTL_IMPORT_SYNC_FILE`` (unwraps containers and adds each
  leaf fence as READ or WRITE); anything else ``-ENOTTY``.
* ``show_fdinfo`` and debugfs ``dma_buf/bufinfo`` in the kernel's exact text formats
  (:func:`dma_buf_bufinfo`).
* sync files as files: :func:`install_sync_file` / :func:`sync_file_get_fence` give a
  :mod:`dmabuf.sync.sync_file` object a descriptor and find it again (the sync layer below has
  no file descriptors); :class:`SyncFileFileOps` is ``sync_file_fops``: poll, release and the
  ioctls ``SYNC_IOC_MERGE``, ``SYNC_IOC_FILE_INFO`` and ``SYNC_IOC_SET_DEADLINE`` on the raw
  structure bytes (the heap and udmabuf device files decode theirs the same way).

The release of the file (``dma_buf_file_release`` then the dentry's ``dma_buf_release``) is
:class:`DmaBufFileOps`'s ``release``/``dentry_release``; it calls back into
:class:`~dmabuf.buf.dma_buf.DmaBuf`.

Arguments of the model's ioctls are the uAPI structs as small dataclasses
(:class:`DmaBufSyncArg`, :class:`DmaBufExportSyncFileArg`, :class:`DmaBufImportSyncFileArg`);
``None`` stands for a bad user pointer and gives ``-EFAULT``, as ``copy_from_user`` does.

Kernel: drivers/dma-buf/dma-buf.c (dma_buf_fops, dma_buf_llseek, dma_buf_mmap_internal,
dma_buf_poll, dma_buf_poll_cb, dma_buf_ioctl, dma_buf_set_name, dma_buf_export_sync_file,
dma_buf_import_sync_file, dma_buf_show_fdinfo, dma_buf_debug_show, dmabuffs_dname),
include/uapi/linux/dma-buf.h.
"""

from __future__ import annotations

import ctypes
import errno
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dmabuf.buf.device import DmaDataDirection
from dmabuf.buf.file import (
    EPOLLERR,
    EPOLLIN,
    EPOLLOUT,
    O_CLOEXEC,
    SEEK_END,
    SEEK_SET,
    File,
    FileOperations,
    current_process,
    user_buffer,
)
from dmabuf.buf.locking import check_entry
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.mm.phys import PAGE_SHIFT
from dmabuf.sync.dma_fence import DmaFence, DmaFenceCb, dma_fence_get_stub
from dmabuf.sync.dma_fence_unwrap import dma_fence_unwrap_for_each
from dmabuf.sync.dma_resv import DmaResvUsage, usage_rw
from dmabuf.sync.sync_file import (
    SYNC_FENCE_INFO,
    SYNC_FILE_INFO,
    SYNC_IOC_FILE_INFO,
    SYNC_IOC_MERGE,
    SYNC_IOC_SET_DEADLINE,
    SYNC_MERGE_DATA,
    SYNC_SET_DEADLINE,
    SyncFile,
    sync_file_create,
)

if TYPE_CHECKING:
    from dmabuf.buf.dma_buf import DmaBuf, Vma

__all__ = [
    "DMA_BUF_BASE",
    "DMA_BUF_IOCTL_EXPORT_SYNC_FILE",
    "DMA_BUF_IOCTL_IMPORT_SYNC_FILE",
    "DMA_BUF_IOCTL_SYNC",
    "DMA_BUF_SET_NAME",
    "DMA_BUF_SET_NAME_A",
    "DMA_BUF_SET_NAME_B",
    "DMA_BUF_SYNC_END",
    "DMA_BUF_SYNC_READ",
    "DMA_BUF_SYNC_RW",
    "DMA_BUF_SYNC_START",
    "DMA_BUF_SYNC_VALID_FLAGS_MASK",
    "DMA_BUF_SYNC_WRITE",
    "DmaBufExportSyncFileArg",
    "DmaBufFileOps",
    "DmaBufImportSyncFileArg",
    "DmaBufSyncArg",
    "SyncFileFileOps",
    "dma_buf_bufinfo",
    "dma_buf_dname",
    "dma_buf_export_sync_file",
    "dma_buf_import_sync_file",
    "dma_buf_poll_wait",
    "dma_buf_set_name",
    "dma_buf_sync",
    "install_sync_file",
    "sync_file_get_fence",
]

# include/uapi/linux/dma-buf.h ------------------------------------------------------------------
DMA_BUF_SYNC_READ = 1 << 0
DMA_BUF_SYNC_WRITE = 2 << 0
DMA_BUF_SYNC_RW = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE
DMA_BUF_SYNC_START = 0 << 2
DMA_BUF_SYNC_END = 1 << 2
DMA_BUF_SYNC_VALID_FLAGS_MASK = DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END
DMA_BUF_NAME_LEN = 32
DMA_BUF_BASE = ord("b")


def _ioc(direction: int, nr: int, size: int) -> int:
    # include/uapi/asm-generic/ioctl.h: dir<<30 | size<<16 | type<<8 | nr
    return (direction << 30) | (size << 16) | (DMA_BUF_BASE << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
#: ``_IOW('b', 0, struct dma_buf_sync)``
DMA_BUF_IOCTL_SYNC = _ioc(_IOC_WRITE, 0, 8)
#: ``_IOW('b', 1, const char *)`` on a 64-bit ABI (== ``_B``)
DMA_BUF_SET_NAME = _ioc(_IOC_WRITE, 1, 8)
#: ``_IOW('b', 1, __u32)`` (32-bit user space)
DMA_BUF_SET_NAME_A = _ioc(_IOC_WRITE, 1, 4)
#: ``_IOW('b', 1, __u64)``
DMA_BUF_SET_NAME_B = _ioc(_IOC_WRITE, 1, 8)
#: ``_IOWR('b', 2, struct dma_buf_export_sync_file)``
DMA_BUF_IOCTL_EXPORT_SYNC_FILE = _ioc(_IOC_WRITE | _IOC_READ, 2, 8)
#: ``_IOW('b', 3, struct dma_buf_import_sync_file)``
DMA_BUF_IOCTL_IMPORT_SYNC_FILE = _ioc(_IOC_WRITE, 3, 8)


@dataclass
class DmaBufSyncArg:
    """``struct dma_buf_sync { __u64 flags; }``."""

    flags: int


@dataclass
class DmaBufExportSyncFileArg:
    """``struct dma_buf_export_sync_file { __u32 flags; __s32 fd; }`` — ``fd`` is written back."""

    flags: int
    fd: int = -1


@dataclass
class DmaBufImportSyncFileArg:
    """``struct dma_buf_import_sync_file { __u32 flags; __s32 fd; }``."""

    flags: int
    fd: int


def _flags(value: Any, what: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} flags must be an int, not {type(value).__name__}")
    if value < 0 or value >= 1 << bits:
        raise DmaBufError(errno.EINVAL, f"{what}: flags {value:#x} do not fit in __u{bits}")
    return value


def _dmabuf_of(file: File) -> DmaBuf:
    dmabuf: DmaBuf = file.private_data
    return dmabuf


# --------------------------------------------------------------------------------------------
# The file operations
# --------------------------------------------------------------------------------------------


class DmaBufFileOps(FileOperations):
    """``dma_buf_fops``: release, mmap, llseek, poll, unlocked_ioctl, show_fdinfo.

    One instance per machine (``DmaBufRegistry.fops``); ``is_dma_buf_file(file)`` is
    ``file.fops is registry.fops``.

    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_fops.
    """

    name = "dmabuf"
    mnt_id = 16

    def release(self, file: File) -> None:
        """``dma_buf_file_release()``: take the buffer off the machine's list.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_file_release().
        """
        from dmabuf.buf.dma_buf import _registry
        dmabuf = _dmabuf_of(file)
        _registry(dmabuf.machine)._del(dmabuf)

    def dentry_release(self, file: File) -> None:
        """``dma_buf_release()``: the release checks, ``ops.release``, ``dma_resv_fini``.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_release().
        """
        _dmabuf_of(file)._release()

    def llseek(self, file: File, offset: int, whence: int) -> int:
        """``dma_buf_llseek()``: ``SEEK_END``/``SEEK_SET`` with offset 0 only.

        Returns: the size for ``SEEK_END``, 0 for ``SEEK_SET``.
        Raises: DmaBufError(EINVAL): another ``whence`` (``SEEK_CUR``, ``SEEK_DATA``…) or a
            non-zero offset (checked in that order, as the kernel does).
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_llseek().
        """
        dmabuf = _dmabuf_of(file)
        if whence == SEEK_END:
            base = dmabuf.size
        elif whence == SEEK_SET:
            base = 0
        else:
            raise DmaBufError(errno.EINVAL, f"dma-buf llseek supports only SEEK_END and "
                              f"SEEK_SET (whence {whence})")
        if offset != 0:
            raise DmaBufError(errno.EINVAL, f"dma-buf llseek needs offset 0 (got {offset}): "
                              "seek to SEEK_END to learn the size")
        return base + offset

    def mmap(self, file: File, vma: Vma) -> None:
        """``dma_buf_mmap_internal()``: ``mmap(2)`` of the fd (``vma.pgoff`` from the offset).

        Raises: DmaBufError(EINVAL): no exporter mmap; ``pgoff + pages`` past the end.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_mmap_internal().
        """
        dmabuf = _dmabuf_of(file)
        if not dmabuf.ops.provides("mmap"):
            raise DmaBufError(errno.EINVAL, f"the {dmabuf.exp_name} exporter does not support "
                              "mmap")
        if vma.pgoff < 0 or vma.pgoff + vma.pages > dmabuf.size >> PAGE_SHIFT:
            raise DmaBufError(errno.EINVAL, f"mmap of pages [{vma.pgoff}, "
                              f"{vma.pgoff + vma.pages}) is past the end of the "
                              f"{dmabuf.size >> PAGE_SHIFT}-page buffer")
        vma.file = file
        dmabuf._op("mmap", dmabuf, vma)

    def poll(self, file: File, events: int) -> int:
        """``dma_buf_poll()``: one ``vfs_poll`` of the dma-buf (see the module docstring).

        Args:
            events: requested events; only ``EPOLLIN|EPOLLOUT`` are considered.
        Context: takes the resv lock (must not be held).
        Returns: the ready events among the requested ones; ``EPOLLERR`` for a buffer without
            resv.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_poll(), dma_buf_poll_add_cb().
        """
        dmabuf = _dmabuf_of(file)
        if dmabuf is None or dmabuf.resv is None:
            return EPOLLERR
        resv = dmabuf.resv
        check_entry("dma_buf_poll", dmabuf.machine, resv)
        events &= EPOLLIN | EPOLLOUT
        if not events:
            return 0
        resv.lock(None)
        try:
            for bit, dcb, write in ((EPOLLOUT, dmabuf.cb_out, True),
                                    (EPOLLIN, dmabuf.cb_in, False)):
                if not events & bit:
                    continue
                with dmabuf.poll_lock:
                    if dcb.active:
                        events &= ~bit
                    else:
                        dcb.active = bit
                if not events & bit:
                    continue
                file.get()    # paired with the put in _poll_cb
                if not _poll_add_cb(dmabuf, write, dcb):
                    _poll_cb_run(dmabuf, dcb, None)   # nothing to wait for: report it
                else:
                    events &= ~bit
        finally:
            resv.unlock()
        return events

    def ioctl(self, file: File, cmd: int, arg: Any) -> Any:
        """``dma_buf_ioctl()``: SYNC, SET_NAME_A/B, EXPORT/IMPORT_SYNC_FILE; else ``-ENOTTY``.

        Args:
            cmd: the ioctl number (``DMA_BUF_IOCTL_*``).
            arg: the struct (see the module docstring); None is a bad pointer (``-EFAULT``).
        Returns: 0.
        Raises: DmaBufError(ENOTTY / EFAULT / EINVAL / …).
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_ioctl().
        """
        dmabuf = _dmabuf_of(file)
        if cmd == DMA_BUF_IOCTL_SYNC:
            if arg is None:
                raise DmaBufError(errno.EFAULT, "DMA_BUF_IOCTL_SYNC: bad argument pointer")
            flags = arg.flags if isinstance(arg, DmaBufSyncArg) else arg
            dma_buf_sync(dmabuf, flags)
            return 0
        if cmd in (DMA_BUF_SET_NAME_A, DMA_BUF_SET_NAME_B):
            dma_buf_set_name(dmabuf, arg)
            return 0
        if cmd == DMA_BUF_IOCTL_EXPORT_SYNC_FILE:
            if not isinstance(arg, DmaBufExportSyncFileArg):
                raise DmaBufError(errno.EFAULT, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE: bad argument "
                                  "(pass a DmaBufExportSyncFileArg)")
            arg.fd = dma_buf_export_sync_file(dmabuf, arg.flags)
            return 0
        if cmd == DMA_BUF_IOCTL_IMPORT_SYNC_FILE:
            if not isinstance(arg, DmaBufImportSyncFileArg):
                raise DmaBufError(errno.EFAULT, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE: bad argument "
                                  "(pass a DmaBufImportSyncFileArg)")
            dma_buf_import_sync_file(dmabuf, arg.flags, arg.fd)
            return 0
        raise DmaBufError(errno.ENOTTY, f"ioctl {cmd:#x} is not a dma-buf ioctl")

    def show_fdinfo(self, file: File) -> str:
        """``dma_buf_show_fdinfo()``: ``size``, ``count`` (minus procfs' reference),
        ``exp_name`` and, when set, ``name``.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_show_fdinfo().
        """
        dmabuf = _dmabuf_of(file)
        text = (f"size:\t{dmabuf.size}\ncount:\t{file.count - 1}\n"
                f"exp_name:\t{dmabuf.exp_name}\n")
        name = dmabuf.name
        if name is not None:
            text += f"name:\t{name}\n"
        return text


# --------------------------------------------------------------------------------------------
# poll
# --------------------------------------------------------------------------------------------


class _PollFenceCb(DmaFenceCb):
    """The fence callback of one poll slot (``dcb->cb``, with ``container_of`` data)."""

    def __init__(self, dmabuf: DmaBuf, slot: Any) -> None:
        super().__init__(None)
        self.dmabuf = dmabuf
        self.slot = slot


def _poll_fence_func(fence: DmaFence, cb: DmaFenceCb) -> None:
    assert isinstance(cb, _PollFenceCb)
    _poll_cb_run(cb.dmabuf, cb.slot, fence)


def _poll_cb_run(dmabuf: DmaBuf, dcb: Any, fence: DmaFence | None) -> None:
    """``dma_buf_poll_cb()``: wake the poll waiters, clear the slot, drop fence and file refs."""
    with dmabuf.poll_lock:
        dmabuf.poll_seq += 1
        dmabuf.poll_wq.notify_all()
        dcb.active = 0
        dcb.fence = None
    if fence is not None:
        fence.put()
    # Paired with the get in poll(); from a fence callback this is atomic context: a final
    # put is deferred (delayed_fput).
    dmabuf.file.put(deferred=True)


def _poll_add_cb(dmabuf: DmaBuf, write: bool, dcb: Any) -> bool:
    """``dma_buf_poll_add_cb()``: arm ``dcb`` on the first unsignalled fence of the usage."""
    if dcb.cb is None:
        dcb.cb = _PollFenceCb(dmabuf, dcb)
    for fence, _usage in dmabuf.resv.for_each_fence(usage_rw(write)):
        fence.get()
        dcb.fence = fence
        if fence.add_callback(dcb.cb, _poll_fence_func) == 0:
            return True
        dcb.fence = None
        fence.put()
    return False


def dma_buf_poll_wait(file: File, events: int, timeout: float | None) -> int:
    """``poll(2)`` on one dma-buf file with a timeout (model helper over ``dma_buf_poll``).

    Re-polls after each poll-callback wake-up until an event is ready or the timeout expires.

    Args:
        file: the dma-buf's file (e.g. ``current_process().fds.lookup(fd)``).
        events: ``EPOLLIN`` and/or ``EPOLLOUT``.
        timeout: seconds; 0 polls once; None waits forever.
    Context: may block (on the machine's scheduler clock); must not hold the resv lock.
    Returns: the ready events (0 on timeout).
    Raises: DmaBufError(EINVAL): negative timeout; TypeError: not a dma-buf file.
    Kernel: fs/select.c, do_poll(); drivers/dma-buf/dma-buf.c, dma_buf_poll().
    """
    if not isinstance(file, File) or not isinstance(file.fops, DmaBufFileOps):
        raise TypeError("dma_buf_poll_wait needs a dma-buf File")
    if timeout is not None and not timeout >= 0:
        raise DmaBufError(errno.EINVAL, f"negative poll timeout {timeout!r}")
    dmabuf = _dmabuf_of(file)
    sched = dmabuf.machine.sched
    deadline = math.inf if timeout is None else sched.now() + timeout
    while True:
        with dmabuf.poll_lock:
            seq = dmabuf.poll_seq
        ready = file.poll(events)
        if ready or timeout == 0:
            return ready
        with dmabuf.poll_lock:
            while dmabuf.poll_seq == seq:
                remaining = deadline - sched.now()
                if remaining <= 0:
                    return 0
                dmabuf.poll_wq.wait(None if math.isinf(remaining) else remaining,
                                    what=f"poll(dma-buf ino {dmabuf.ino})")


# --------------------------------------------------------------------------------------------
# ioctls
# --------------------------------------------------------------------------------------------


def dma_buf_sync(dmabuf: DmaBuf, flags: Any) -> None:
    """``DMA_BUF_IOCTL_SYNC``: validate ``flags`` and begin or end CPU access.

    ``flags & ~(RW|END)`` → ``-EINVAL``; no READ/WRITE bit → ``-EINVAL``. READ is
    ``DMA_FROM_DEVICE``, WRITE ``DMA_TO_DEVICE``, both ``DMA_BIDIRECTIONAL``; ``END`` calls
    ``end_cpu_access``, otherwise ``begin_cpu_access`` (which waits for the implicit fences).

    Args:
        dmabuf: the buffer.
        flags: ``DMA_BUF_SYNC_*`` (``__u64``).
    Context: may block; must not hold the resv lock.
    Raises: DmaBufError(EINVAL); DmaBufError(ERESTARTSYS) when the wait is interrupted.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_ioctl() case DMA_BUF_IOCTL_SYNC.
    """
    flags = _flags(flags, "DMA_BUF_IOCTL_SYNC", 64)
    if flags & ~DMA_BUF_SYNC_VALID_FLAGS_MASK:
        raise DmaBufError(errno.EINVAL, f"DMA_BUF_IOCTL_SYNC: unknown flags "
                          f"{flags & ~DMA_BUF_SYNC_VALID_FLAGS_MASK:#x}")
    rw = flags & DMA_BUF_SYNC_RW
    if rw == DMA_BUF_SYNC_READ:
        direction = DmaDataDirection.FROM_DEVICE
    elif rw == DMA_BUF_SYNC_WRITE:
        direction = DmaDataDirection.TO_DEVICE
    elif rw == DMA_BUF_SYNC_RW:
        direction = DmaDataDirection.BIDIRECTIONAL
    else:
        raise DmaBufError(errno.EINVAL, "DMA_BUF_IOCTL_SYNC: give DMA_BUF_SYNC_READ and/or "
                          "DMA_BUF_SYNC_WRITE")
    if flags & DMA_BUF_SYNC_END:
        dmabuf.end_cpu_access(direction)
    else:
        dmabuf.begin_cpu_access(direction)


def dma_buf_set_name(dmabuf: DmaBuf, name: Any) -> None:
    """``DMA_BUF_SET_NAME``: set the debug name — ``dma_buf_set_name()``.

    The name is read as ``strndup_user(buf, DMA_BUF_NAME_LEN)`` does: up to the first NUL,
    and the NUL must come within 32 bytes (31 characters at most). It replaces the old name
    under ``name_lock``. Since the v6.x rework there is no ``-EBUSY`` for attached buffers
    (the kdoc still says so; the code does not).

    Args:
        dmabuf: the buffer.
        name: ``str`` (UTF-8) or ``bytes``; None is a NULL pointer.
    Raises: DmaBufError(EFAULT): None; DmaBufError(EINVAL): no NUL within 32 bytes;
        TypeError: another type.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_set_name(); mm/util.c, strndup_user().
    """
    if name is None:
        raise DmaBufError(errno.EFAULT, "DMA_BUF_SET_NAME: NULL name pointer")
    if isinstance(name, str):
        raw = name.encode("utf-8")
    elif isinstance(name, (bytes, bytearray, memoryview)):
        raw = bytes(name)
    else:
        raise TypeError(f"the name must be str or bytes, not {type(name).__name__}")
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    if len(raw) + 1 > DMA_BUF_NAME_LEN:
        raise DmaBufError(errno.EINVAL, f"DMA_BUF_SET_NAME: name of {len(raw)} bytes is too "
                          f"long; at most {DMA_BUF_NAME_LEN - 1} bytes plus the NUL")
    text = raw.decode("utf-8", errors="replace")
    with dmabuf.name_lock:
        dmabuf._name = text
    dmabuf.machine.trace.emit("dma_buf_set_name", ino=dmabuf.ino, buf_name=text)


def _check_sync_file_flags(flags: Any, what: str) -> int:
    flags = _flags(flags, what, 32)
    if flags & ~DMA_BUF_SYNC_RW:
        raise DmaBufError(errno.EINVAL, f"{what}: only DMA_BUF_SYNC_READ/WRITE are allowed "
                          f"(got {flags:#x})")
    if not flags & DMA_BUF_SYNC_RW:
        raise DmaBufError(errno.EINVAL, f"{what}: give DMA_BUF_SYNC_READ and/or "
                          "DMA_BUF_SYNC_WRITE")
    return flags


def dma_buf_export_sync_file(dmabuf: DmaBuf, flags: Any) -> int:
    """``DMA_BUF_IOCTL_EXPORT_SYNC_FILE``: the implicit fences as a new sync_file fd.

    ``WRITE`` in ``flags`` exports what a writer must wait for (every READ-level fence);
    ``READ`` alone what a reader must wait for (WRITE-level). The fences are snapshotted into
    one fence (``dma_resv_get_singleton``: the fence itself, or an array); with none, the
    signalled stub fence. The fd is installed ``O_CLOEXEC`` in the current process.

    Args:
        dmabuf: the buffer.
        flags: ``DMA_BUF_SYNC_READ``/``WRITE`` (``__u32``).
    Context: does not take the resv lock; never blocks.
    Returns: the sync_file fd.
    Raises: DmaBufError(EINVAL): bad flags; DmaBufError(EMFILE): fd table full.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_export_sync_file().
    """
    check_entry("dma_buf_export_sync_file", dmabuf.machine, dmabuf.resv)
    flags = _check_sync_file_flags(flags, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE")
    usage = usage_rw(bool(flags & DMA_BUF_SYNC_WRITE))
    fence = dmabuf.resv.get_singleton(usage)
    if fence is None:
        fence = dma_fence_get_stub(dmabuf.machine)
    try:
        sf = sync_file_create(fence)
    finally:
        fence.put()
    return install_sync_file(sf, O_CLOEXEC, machine=dmabuf.machine)


def dma_buf_import_sync_file(dmabuf: DmaBuf, flags: Any, fd: Any) -> None:
    """``DMA_BUF_IOCTL_IMPORT_SYNC_FILE``: add a sync_file's fences as implicit fences.

    Every leaf of the sync_file's fence (containers unwrapped) is added with usage ``WRITE``
    when ``flags`` has ``DMA_BUF_SYNC_WRITE``, else ``READ``, after reserving one slot per
    leaf, under the resv lock.

    Args:
        dmabuf: the buffer.
        flags: ``DMA_BUF_SYNC_READ``/``WRITE``.
        fd: a sync_file descriptor of the current process.
    Context: takes the resv lock (must not be held); may block.
    Raises: DmaBufError(EINVAL): bad flags; ``fd`` is not a sync_file (also a closed fd:
        ``sync_file_get_fence`` returns NULL); DmaBufError(ENOMEM).
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_import_sync_file().
    """
    check_entry("dma_buf_import_sync_file", dmabuf.machine, dmabuf.resv)
    flags = _check_sync_file_flags(flags, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE")
    fence = sync_file_get_fence(fd, machine=dmabuf.machine)
    if fence is None:
        raise DmaBufError(errno.EINVAL, f"DMA_BUF_IOCTL_IMPORT_SYNC_FILE: fd {fd!r} is not a "
                          "sync_file")
    try:
        usage = DmaResvUsage.WRITE if flags & DMA_BUF_SYNC_WRITE else DmaResvUsage.READ
        leaves = _unwrap(fence)
        if leaves:
            resv = dmabuf.resv
            resv.lock(None)
            try:
                resv.reserve_fences(len(leaves))
                for f in leaves:
                    resv.add_fence(f, usage)
            finally:
                resv.unlock()
    finally:
        fence.put()


# --------------------------------------------------------------------------------------------
# debugfs / procfs text
# --------------------------------------------------------------------------------------------


def dma_buf_dname(dmabuf: DmaBuf) -> str:
    """The fd's link text, ``/dmabuf:<name>`` — ``dmabuffs_dname()``.

    Kernel: drivers/dma-buf/dma-buf.c, dmabuffs_dname().
    """
    return f"/dmabuf:{dmabuf.name or ''}"


def dma_buf_bufinfo(machine: Machine | None = None) -> str:
    """The text of debugfs ``dma_buf/bufinfo`` — ``dma_buf_debug_show()``, byte for byte.

    Header, then per buffer (list order: newest first), under its resv lock: ``size``,
    ``flags``, ``mode``, ``count`` (the file count), ``exp_name``, ``ino``, the name or
    ``<none>``; the resv's fences (``dma_resv_describe``); the attached devices; finally the
    totals.

    Args:
        machine: default the current machine.
    Context: takes the list mutex and each buffer's resv lock (interruptible); may block.
    Returns: the text.
    Raises: DmaBufError(EINTR) if a resv lock wait is interrupted.
    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_debug_show().
    """
    from dmabuf.buf.dma_buf import _registry
    m = machine if machine is not None else current_machine()
    reg = _registry(m)
    out = ["\nDma-buf Objects:\n",
           f"{'size':<8}\t{'flags':<8}\t{'mode':<8}\t{'count':<8}\texp_name\t{'ino':<8}\tname\n"]
    count = 0
    total = 0
    with reg.list_mutex:
        for b in reg._list:
            check_entry("dma_buf_debug_show", m, b.resv)
            b.resv.lock_interruptible(None)
            try:
                name = b.name
                out.append(f"{b.size:08d}\t{b.file.f_flags:08x}\t{b.file.f_mode:08x}\t"
                           f"{b.file.count:08d}\t{b.exp_name}\t{b.ino:08d}\t"
                           f"{name if name is not None else '<none>'}\n")
                out.append(b.resv.describe())
                out.append("\tAttached Devices:\n")
                attached = b.attachments
                for a in attached:
                    out.append(f"\t{a.dev.name}\n")
            finally:
                b.resv.unlock()
            out.append(f"Total {len(attached)} devices attached\n\n")
            count += 1
            total += b.size
    out.append(f"\nTotal {count} objects, {total} bytes\n")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# sync files as files
# --------------------------------------------------------------------------------------------


def _unwrap(fence: DmaFence) -> list[DmaFence]:
    return list(dma_fence_unwrap_for_each(fence))


class SyncFileFileOps(FileOperations):
    """``sync_file_fops``: release, poll and the sync_file ioctls.

    ``poll`` is :meth:`SyncFile.poll` (``EPOLLIN`` once the fence has signalled); ``release``
    is :meth:`SyncFile.close` (drops the fence reference); ``ioctl`` decodes the raw uAPI
    structures (:mod:`dmabuf.sync.sync_file` has their layouts) and runs
    :meth:`SyncFile.merge`, :meth:`SyncFile.info` and :meth:`SyncFile.set_deadline`, which own
    the rules (one fence per context, the two-pass FILE_INFO, the status folding).

    The ioctl argument is the user buffer (a writable bytes-like object holding the
    structure; results are written back into it). Pointers inside structures
    (``sync_file_info.sync_fence_info``) are addresses in this process, written with
    ``ctypes.memmove`` as ``copy_to_user`` would — give a valid one (or 0: ``EFAULT``).

    Kernel: drivers/dma-buf/sync_file.c, sync_file_fops, sync_file_poll(), sync_file_release(),
    sync_file_ioctl().
    """

    name = "sync_file"
    mnt_id = 17

    def release(self, file: File) -> None:
        """``sync_file_release()``: drop the fence reference.

        Kernel: drivers/dma-buf/sync_file.c, sync_file_release().
        """
        sf: SyncFile = file.private_data
        sf.close()

    def poll(self, file: File, events: int) -> int:
        """``sync_file_poll()``: ``EPOLLIN`` when the fence has signalled, else 0.

        Kernel: drivers/dma-buf/sync_file.c, sync_file_poll().
        """
        sf: SyncFile = file.private_data
        return sf.poll() & (events | EPOLLERR)

    def ioctl(self, file: File, cmd: int, arg: Any) -> Any:
        """``sync_file_ioctl()``: ``SYNC_IOC_MERGE``, ``FILE_INFO``, ``SET_DEADLINE``.

        Args:
            file: the sync_file's file.
            cmd: the request number.
            arg: the user buffer holding the structure (``bytearray``; None is a NULL pointer).
        Context: never blocks (MERGE allocates; the fd is installed in the current process).
        Returns: 0 (MERGE writes the new fd into ``sync_merge_data.fence``).
        Raises: DmaBufError: ENOTTY (another request); EFAULT (NULL, short or read-only user
            buffer; NULL ``sync_fence_info`` pointer when fences are to be copied); EINVAL
            (``flags``/``pad`` not 0; FILE_INFO ``num_fences`` too small); ENOENT (MERGE
            ``fd2`` is not a sync_file); EMFILE.
        Kernel: drivers/dma-buf/sync_file.c, sync_file_ioctl().
        """
        sf: SyncFile = file.private_data
        if cmd == SYNC_IOC_MERGE:
            return _sync_file_ioctl_merge(file, sf, arg)
        if cmd == SYNC_IOC_FILE_INFO:
            return _sync_file_ioctl_fence_info(sf, arg)
        if cmd == SYNC_IOC_SET_DEADLINE:
            return _sync_file_ioctl_set_deadline(sf, arg)
        raise DmaBufError(errno.ENOTTY, f"ioctl {cmd:#x} is not a sync_file ioctl")


def _check_writable(mv: memoryview, what: str) -> None:
    if mv.readonly:
        raise DmaBufError(errno.EFAULT, f"{what}: read-only user buffer (pass a bytearray)")


def _sync_file_fdget(fd: int, machine: Machine) -> File | None:
    """``sync_file_fdget()``: a reference to the sync_file file behind ``fd``, or None."""
    try:
        f = current_process(machine).fds.fget(fd)
    except DmaBufError:
        return None
    if not isinstance(f.fops, SyncFileFileOps):
        f.put()
        return None
    return f


def _sync_file_ioctl_merge(file: File, sf: SyncFile, arg: Any) -> int:
    """``sync_file_ioctl_merge()``: a new sync_file fd on the merged fences (O_CLOEXEC)."""
    what = "SYNC_IOC_MERGE"
    mv = user_buffer(arg, SYNC_MERGE_DATA.size, what)
    name, fd2, _fence, flags, pad = SYNC_MERGE_DATA.unpack_from(mv)
    if flags or pad:
        raise DmaBufError(errno.EINVAL, f"{what}: flags ({flags:#x}) and pad ({pad:#x}) must "
                          "be 0")
    f2 = _sync_file_fdget(fd2, file.machine)
    if f2 is None:
        raise DmaBufError(errno.ENOENT, f"{what}: fd2 {fd2} is not a sync_file")
    try:
        _check_writable(mv, what)       # the copy_to_user of the result would fail
        raw: bytes = name[:31].split(b"\0", 1)[0]   # data.name[31] = '\0'
        merged = sf.merge(f2.private_data, raw.decode("utf-8", "replace"))
    finally:
        f2.put()
    fd = install_sync_file(merged, O_CLOEXEC, machine=file.machine)
    mv[:SYNC_MERGE_DATA.size] = SYNC_MERGE_DATA.pack(name[:31], fd2, fd, flags, pad)
    return 0


def _sync_file_ioctl_fence_info(sf: SyncFile, arg: Any) -> int:
    """``sync_file_ioctl_fence_info()``: name, status, count and (second pass) the fences."""
    what = "SYNC_IOC_FILE_INFO"
    mv = user_buffer(arg, SYNC_FILE_INFO.size, what)
    _name, _status, flags, num_fences, pad, ptr = SYNC_FILE_INFO.unpack_from(mv)
    if flags or pad:
        raise DmaBufError(errno.EINVAL, f"{what}: flags ({flags:#x}) and pad ({pad:#x}) must "
                          "be 0")
    res = sf.info(num_fences=num_fences)
    if num_fences and res.fences:
        out = b"".join(SYNC_FENCE_INFO.pack(fi.obj_name.encode(), fi.driver_name.encode(),
                                            fi.status, fi.flags, fi.timestamp_ns)
                       for fi in res.fences)
        if not ptr:
            raise DmaBufError(errno.EFAULT, f"{what}: sync_fence_info is NULL but "
                              f"{res.num_fences} fence(s) are to be copied")
        ctypes.memmove(ptr, out, len(out))           # copy_to_user(u64_to_user_ptr(ptr))
    _check_writable(mv, what)
    mv[:SYNC_FILE_INFO.size] = SYNC_FILE_INFO.pack(res.name.encode(), res.status, flags,
                                                   res.num_fences, pad, ptr)
    return 0


def _sync_file_ioctl_set_deadline(sf: SyncFile, arg: Any) -> int:
    """``sync_file_ioctl_set_deadline()``: ``deadline_ns`` (CLOCK_MONOTONIC) as a hint."""
    what = "SYNC_IOC_SET_DEADLINE"
    mv = user_buffer(arg, SYNC_SET_DEADLINE.size, what)
    deadline_ns, pad = SYNC_SET_DEADLINE.unpack_from(mv)
    if pad:
        raise DmaBufError(errno.EINVAL, f"{what}: pad must be 0")
    sf.set_deadline(deadline_ns / 1e9)
    return 0


def _sync_fops(machine: Machine) -> SyncFileFileOps:
    return machine.state(_SyncFops).fops


class _SyncFops:
    def __init__(self, machine: Machine) -> None:
        self.fops = SyncFileFileOps()


def install_sync_file(sync_file: SyncFile, flags: int = O_CLOEXEC, *,
                      machine: Machine | None = None) -> int:
    """Give a sync_file a descriptor in the current process — ``fd_install(fd, sf->file)``.

    The descriptor owns the sync_file (closing it releases the sync_file's fence reference).

    Args:
        sync_file: a :class:`~dmabuf.sync.sync_file.SyncFile` (e.g. from
            ``SwSyncTimeline.create_sync_file``); the descriptor takes it over.
        flags: ``O_CLOEXEC`` or 0.
        machine: default the current machine.
    Returns: the new fd.
    Raises: DmaBufError(EMFILE) (the sync_file is then released).
    Kernel: drivers/dma-buf/sync_file.c (sync_file_create, anon_inode_getfile), fs/file.c.
    """
    if not isinstance(sync_file, SyncFile):
        raise TypeError(f"install_sync_file needs a SyncFile, not {type(sync_file).__name__}")
    m = machine if machine is not None else current_machine()
    f = File(_sync_fops(m), sync_file, flags=0, machine=m)
    try:
        return current_process(m).fds.install(f, flags)
    except BaseException:
        f.put()
        raise


def sync_file_get_fence(fd: Any, *, machine: Machine | None = None) -> DmaFence | None:
    """A new reference to the fence of sync_file ``fd`` — ``sync_file_get_fence()``.

    Args:
        fd: a descriptor of the current process.
        machine: default the current machine.
    Returns: the fence (+1 reference) or None when ``fd`` is closed or not a sync_file (the
        kernel's NULL; callers turn it into ``-EINVAL``).
    Kernel: drivers/dma-buf/sync_file.c, sync_file_get_fence(), sync_file_fdget().
    """
    m = machine if machine is not None else current_machine()
    if isinstance(fd, bool) or not isinstance(fd, int):
        return None
    try:
        f = current_process(m).fds.fget(fd)
    except DmaBufError:
        return None
    try:
        if not isinstance(f.fops, SyncFileFileOps):
            return None
        sf: SyncFile = f.private_data
        return None if sf.closed else sf.get_fence()
    finally:
        f.put()

