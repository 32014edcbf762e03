"""include/uapi/linux/dma-buf.h — the dma-buf file descriptor, from user space.

A dma-buf fd is what an exporter (a heap, udmabuf, a GPU's PRIME export) hands out. User space
can map it, bracket CPU access with ``DMA_BUF_IOCTL_SYNC``, name it, poll it for implicit
fences, read its size with ``lseek(SEEK_END)``, and move fences in and out as sync_files.
:class:`DmaBufFile` owns such an fd (see :mod:`dmabuf.uapi.fd` for the lifetime rules).

**CPU access is bracketed by construction.** There is no public raw ``mmap``: the only way to
touch the bytes is ::

    with buf.cpu_access(read=True, write=True) as view:   # mmap + SYNC_START (may wait)
        view[:4] = b"data"                                   # memoryview (or numpy array)
    # SYNC_END issued, view released, mapping gone

On exit ``DMA_BUF_IOCTL_SYNC(END)`` is issued even if the block raised; the memoryview is
released (using it afterwards raises ``ValueError``) and the mapping unmapped. If a derived
view (a slice, a numpy array the caller kept) still references the mapping, the mapping is
**revoked** instead: its pages are replaced by private anonymous memory
(:meth:`~dmabuf.uapi.backend.UapiBackend.revoke`), so a stale view can never read or write the
buffer outside a SYNC bracket. ``SYNC_START`` waits for the buffer's implicit fences (writers
for a read, everybody for a write), exactly like the kernel's ``dma_buf_begin_cpu_access``.

Flags (``struct dma_buf_sync``): ``READ = 1``, ``WRITE = 2``, ``RW = 3``, ``START = 0``,
``END = 4``; any other bit, or neither READ nor WRITE, is ``EINVAL``. The bindings check the
same rule before the ioctl (``validate=False`` sends anything, for conformance tests).

``DMA_BUF_SET_NAME``: the header defines it with ``const char *`` as the "size" type, so its
number depends on the pointer size; ``DMA_BUF_SET_NAME_A`` (``__u32``, 0x40046201) is the
32-bit ABI's and ``DMA_BUF_SET_NAME_B`` (``__u64``, 0x40086201) the 64-bit ABI's, and the
kernel accepts both. The argument is a pointer to a NUL-terminated string of at most 32 bytes
including the NUL (``strndup_user``): 31 characters, else ``EINVAL``.

``EXPORT_SYNC_FILE`` snapshots fences: with ``READ`` you get the *write* fences (what a reader
waits for), with ``WRITE`` all fences (what a writer waits for). An idle buffer yields a
sync_file holding one signalled stub fence, not an empty one. ``IMPORT_SYNC_FILE`` adds the
fences of a sync_file as *write* fences if ``WRITE`` is set, else as read fences.

``poll``: ``POLLIN`` = no unsignalled write fence (reading is safe), ``POLLOUT`` = no
unsignalled fence at all (writing is safe).

Kernel: drivers/dma-buf/dma-buf.c (dma_buf_ioctl(), dma_buf_llseek(), dma_buf_poll(),
dma_buf_mmap_internal(), dma_buf_set_name(), dma_buf_export_sync_file(),
dma_buf_import_sync_file()); include/uapi/linux/dma-buf.h.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import select
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dmabuf.errors import DmaBufError
from dmabuf.uapi.backend import MappedRegion, UapiBackend, default_backend
from dmabuf.uapi.fd import FdObject, os_error
from dmabuf.uapi.ioctl import IOW, IOWR
from dmabuf.uapi.sync_file import SyncFile

if TYPE_CHECKING:
    from dmabuf.uapi.fdinfo import DmaBufFdInfo

__all__ = [
    "DMA_BUF_BASE",
    "DMA_BUF_IOCTL_EXPORT_SYNC_FILE",
    "DMA_BUF_IOCTL_IMPORT_SYNC_FILE",
    "DMA_BUF_IOCTL_SYNC",
    "DMA_BUF_NAME_LEN",
    "DMA_BUF_SET_NAME",
    "DMA_BUF_SET_NAME_A",
    "DMA_BUF_SET_NAME_B",
    "DMA_BUF_SYNC_END",
    "DMA_BUF_SYNC_READ",
    "DMA_BUF_SYNC_RW",
    "DMA_BUF_SYNC_START",
    "DMA_BUF_SYNC_VALID_FLAGS_MASK",
    "DMA_BUF_SYNC_WRITE",
    "DmaBufExportSyncFile",
    "DmaBufFile",
    "DmaBufImportSyncFile",
    "DmaBufSync",
    "check_sync_file_flags",
    "check_sync_flags",
    "is_dmabuf_link",
]


class DmaBufSync(ctypes.Structure):
    """``struct dma_buf_sync`` (8 bytes)."""

    _fields_ = [("flags", ctypes.c_uint64)]


class DmaBufExportSyncFile(ctypes.Structure):
    """``struct dma_buf_export_sync_file`` (8 bytes): flags in, fd out."""

    _fields_ = [("flags", ctypes.c_uint32), ("fd", ctypes.c_int32)]


class DmaBufImportSyncFile(ctypes.Structure):
    """``struct dma_buf_import_sync_file`` (8 bytes)."""

    _fields_ = [("flags", ctypes.c_uint32), ("fd", ctypes.c_int32)]


DMA_BUF_SYNC_READ = 1 << 0
DMA_BUF_SYNC_WRITE = 2 << 0
DMA_BUF_SYNC_RW = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE
DMA_BUF_SYNC_START = 0 << 2
DMA_BUF_SYNC_END = 1 << 2
DMA_BUF_SYNC_VALID_FLAGS_MASK = DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END
DMA_BUF_NAME_LEN = 32
DMA_BUF_BASE = "b"
DMA_BUF_IOCTL_SYNC = IOW(DMA_BUF_BASE, 0, DmaBufSync)
DMA_BUF_SET_NAME_A = IOW(DMA_BUF_BASE, 1, ctypes.c_uint32)
DMA_BUF_SET_NAME_B = IOW(DMA_BUF_BASE, 1, ctypes.c_uint64)
#: ``_IOW('b', 1, const char *)``: the variant of this process's pointer size.
DMA_BUF_SET_NAME = IOW(DMA_BUF_BASE, 1, ctypes.c_void_p)
DMA_BUF_IOCTL_EXPORT_SYNC_FILE = IOWR(DMA_BUF_BASE, 2, DmaBufExportSyncFile)
DMA_BUF_IOCTL_IMPORT_SYNC_FILE = IOW(DMA_BUF_BASE, 3, DmaBufImportSyncFile)

_FLAG_NAMES = "READ=1, WRITE=2, END=4 (START=0)"


def check_sync_flags(flags: int) -> None:
    """Check ``DMA_BUF_IOCTL_SYNC`` flags as the kernel does, with a useful message.

    Raises:
        DmaBufError: EINVAL for bits outside READ|WRITE|END or for neither READ nor WRITE.

    Kernel: drivers/dma-buf/dma-buf.c, dma_buf_ioctl() case DMA_BUF_IOCTL_SYNC.
    """
    if not isinstance(flags, int) or flags < 0:
        raise DmaBufError(errno.EINVAL, f"sync flags must be a non-negative int, got {flags!r}")
    if flags & ~DMA_BUF_SYNC_VALID_FLAGS_MASK:
        raise DmaBufError(errno.EINVAL, (
            f"DMA_BUF_IOCTL_SYNC flags {flags:#x} have unknown bits "
            f"{flags & ~DMA_BUF_SYNC_VALID_FLAGS_MASK:#x}; valid: {_FLAG_NAMES}"))
    if not flags & DMA_BUF_SYNC_RW:
        raise DmaBufError(errno.EINVAL, (
            f"DMA_BUF_IOCTL_SYNC flags {flags:#x} set neither READ nor WRITE; say which access "
            f"the CPU makes ({_FLAG_NAMES})"))


def check_sync_file_flags(flags: int, op: str = "EXPORT_SYNC_FILE") -> None:
    """Check ``EXPORT``/``IMPORT_SYNC_FILE`` flags (READ, WRITE or both; nothing else).

    Raises:
        DmaBufError: EINVAL otherwise.

    Kernel: dma-buf.c, dma_buf_export_sync_file()/dma_buf_import_sync_file().
    """
    if not isinstance(flags, int) or flags & ~DMA_BUF_SYNC_RW or not flags & DMA_BUF_SYNC_RW:
        raise DmaBufError(errno.EINVAL, (
            f"DMA_BUF_IOCTL_{op} flags {flags!r} must be READ (1), WRITE (2) or both, "
            "nothing else"))


def _rw(read: bool, write: bool, what: str) -> int:
    flags = (DMA_BUF_SYNC_READ if read else 0) | (DMA_BUF_SYNC_WRITE if write else 0)
    if not flags:
        raise DmaBufError(errno.EINVAL, f"{what}: ask for read=True, write=True or both")
    return flags


def is_dmabuf_link(target: str) -> bool:
    """True if a ``/proc/PID/fd/N`` link target names a dma-buf (``/dmabuf:<name>``).

    Older kernels (before the dmabuf pseudo-fs, 5.3) show ``anon_inode:dmabuf``.

    Kernel: drivers/dma-buf/dma-buf.c, dmabuffs_dname().
    """
    return target.startswith("/dmabuf:") or target == "anon_inode:dmabuf"


class DmaBufFile(FdObject):
    """A dma-buf fd (owned), with bracketed CPU access, poll, name and sync_file transfer.

    Get one from :meth:`dmabuf.uapi.dma_heap.DmaHeap.alloc`,
    :meth:`dmabuf.uapi.udmabuf.Udmabuf.create`, :meth:`dmabuf.uapi.vgem.VgemDevice.export`,
    :func:`dmabuf.uapi.scm.recv_dmabuf`, or wrap an fd with :meth:`from_fd`.
    """

    def __init__(self, fd: int, backend: UapiBackend | None = None) -> None:
        super().__init__(fd, backend, what="dma-buf")
        self._size: int | None = None

    @classmethod
    def from_fd(cls, fd: int, backend: UapiBackend | None = None, *,
                check: bool = True) -> DmaBufFile:
        """Take ownership of ``fd``, checking (by its ``/proc/self/fd`` link) that it is a dma-buf.

        Args:
            fd: the descriptor; ownership passes to the new object only on success (when the
                check fails the fd stays open and the caller's).
            backend: None for the running kernel.
            check: verify the fd is a dma-buf.

        Returns:
            The :class:`DmaBufFile`.

        Raises:
            DmaBufError: ENOTTY (what the kernel's dma-buf ioctls would answer) if ``fd`` is
                not a dma-buf; EBADF if it is not open.

        Kernel: drivers/dma-buf/dma-buf.c, dmabuffs_dname() (the link name checked).
        """
        be = backend if backend is not None else default_backend()
        if check:
            try:
                target = be.readlink(f"/proc/self/fd/{fd}")
            except OSError as e:
                raise os_error(e, f"readlink /proc/self/fd/{fd}",
                               {errno.ENOENT: f"fd {fd} is not open"}) from e
            if not is_dmabuf_link(target):
                raise DmaBufError(errno.ENOTTY, (
                    f"fd {fd} is not a dma-buf (it is {target!r}); dma-bufs come from a dma-heap, "
                    "/dev/udmabuf or a driver's PRIME export"))
        return cls(fd, be)

    # ---------------------------------------------------------------- size, dup, identity

    @property
    def size(self) -> int:
        """The buffer size in bytes — ``lseek(fd, 0, SEEK_END)`` (cached: it never changes).

        Raises:
            DmaBufError: EBADF if the fd is not a dma-buf (dma_buf_llseek), ESPIPE on a
                kernel without dma-buf llseek.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_llseek().
        """
        if self._size is None:
            self._size = self.llseek(0, os.SEEK_END)
        return self._size

    def llseek(self, offset: int, whence: int) -> int:
        """The raw ``lseek(2)``: only offset 0 with SEEK_SET (-> 0) or SEEK_END (-> size) works.

        Raises:
            DmaBufError: EINVAL for any other offset/whence.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_llseek().
        """
        try:
            return self._backend.lseek(self.fileno(), offset, whence)
        except OSError as e:
            raise os_error(e, f"lseek(dma-buf fd {self._fd}, {offset}, {whence})", {
                errno.EINVAL: "a dma-buf only accepts offset 0 with SEEK_SET or SEEK_END",
                errno.ESPIPE: "this kernel's dma-bufs do not support llseek (before 4.x)"}) from e

    @property
    def inode(self) -> int:
        """The inode number (the ``ino`` of fdinfo and debugfs bufinfo) — ``fstat(2)``.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_getfile() (one inode per dma-buf).
        """
        try:
            return self._backend.fstat(self.fileno()).st_ino
        except OSError as e:
            raise os_error(e, f"fstat of dma-buf fd {self._fd}") from e

    def dup(self) -> DmaBufFile:
        """A second owned fd for the same dma-buf — ``fcntl(F_DUPFD_CLOEXEC)``.

        Kernel: fs/fcntl.c, F_DUPFD_CLOEXEC (another reference to the same struct file).
        """
        try:
            fd = self._backend.dup(self.fileno())
        except OSError as e:
            raise os_error(e, f"dup of dma-buf fd {self._fd}") from e
        d = DmaBufFile(fd, self._backend)
        d._size = self._size
        return d

    # ---------------------------------------------------------------- DMA_BUF_IOCTL_SYNC

    def sync(self, flags: int, *, validate: bool = True) -> None:
        """Begin or end CPU access — ``DMA_BUF_IOCTL_SYNC``; restarted on EINTR/EAGAIN.

        Prefer :meth:`cpu_access`, which brackets for you.

        Args:
            flags: ``DMA_BUF_SYNC_{READ,WRITE,RW}`` | ``DMA_BUF_SYNC_{START,END}``.
            validate: check the flags here first (False sends anything to the kernel).

        Context:
            START may block until the buffer's implicit fences signal (writers for READ, all
            for WRITE); the GIL is released meanwhile.

        Raises:
            DmaBufError: EINVAL for bad flags; ENOTTY if the fd is not a dma-buf; an
                exporter's error from begin/end_cpu_access.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_ioctl() -> dma_buf_begin_cpu_access() /
            dma_buf_end_cpu_access().
        """
        if validate:
            check_sync_flags(flags)
        buf = bytearray(ctypes.sizeof(DmaBufSync))
        DmaBufSync.from_buffer(buf).flags = flags & 0xFFFFFFFFFFFFFFFF
        while True:
            try:
                self._backend.ioctl(self.fileno(), DMA_BUF_IOCTL_SYNC, buf)
                return
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN):
                    continue  # the kernel's doc: "must be restarted"
                raise self._ioctl_error(e, f"DMA_BUF_IOCTL_SYNC flags {flags:#x}") from e

    def sync_start(self, *, read: bool = True, write: bool = False) -> None:
        """``DMA_BUF_IOCTL_SYNC(START | READ/WRITE)`` — ``dma_buf_begin_cpu_access``.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_begin_cpu_access().
        """
        self.sync(DMA_BUF_SYNC_START | _rw(read, write, "sync_start"))

    def sync_end(self, *, read: bool = True, write: bool = False) -> None:
        """``DMA_BUF_IOCTL_SYNC(END | READ/WRITE)`` — ``dma_buf_end_cpu_access``.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_end_cpu_access().
        """
        self.sync(DMA_BUF_SYNC_END | _rw(read, write, "sync_end"))

    def _ioctl_error(self, e: OSError, what: str) -> DmaBufError:
        hints = {errno.EINVAL: "invalid flags or argument for this ioctl"}
        if e.errno == errno.ENOTTY:
            try:
                target = self._backend.readlink(f"/proc/self/fd/{self._fd}")
            except OSError:
                target = "?"
            if is_dmabuf_link(target):
                hints[errno.ENOTTY] = ("the kernel's dma-buf does not know this ioctl (too old "
                                       "a kernel, or built without CONFIG_SYNC_FILE)")
            else:
                hints[errno.ENOTTY] = (f"fd {self._fd} is not a dma-buf (it is {target!r}); "
                                       "ENOTTY is what any other file answers to dma-buf ioctls")
        return os_error(e, f"{what} on fd {self._fd}", hints)

    # ---------------------------------------------------------------- bracketed CPU access

    @contextlib.contextmanager
    def cpu_access(self, *, read: bool = True, write: bool = False, offset: int = 0,
                   length: int | None = None, dtype: Any = None) -> Iterator[Any]:
        """Map the buffer and bracket CPU access with ``DMA_BUF_IOCTL_SYNC`` START/END.

        Args:
            read: the CPU reads (START waits for write fences).
            write: the CPU writes (START waits for all fences; the view is writable).
            offset: first byte of the view (any alignment; the mapping is page-aligned).
            length: bytes in the view (default: to the end of the buffer).
            dtype: None for a ``memoryview`` of bytes, else a numpy dtype for an ndarray
                (read-only unless ``write``).

        Context:
            Entering may block in SYNC START until implicit fences signal. Not reentrant for
            overlapping writes from several threads (the kernel does not serialise CPU users).

        Yields:
            A ``memoryview`` (released on exit) or a numpy array (made read-only on exit; its
            mapping is revoked if it outlives the block).

        Raises:
            DmaBufError: EINVAL for a range outside the buffer or read=write=False; EACCES to
                map a read-only dma-buf for writing; errors of mmap (EINVAL when the exporter
                has no mmap) and of SYNC.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_mmap_internal(),
            dma_buf_begin_cpu_access(), dma_buf_end_cpu_access().
        """
        flags = _rw(read, write, "cpu_access")
        size = self.size
        if length is None:
            length = size - offset
        if not (isinstance(offset, int) and isinstance(length, int)) or offset < 0 or \
                length <= 0 or offset + length > size:
            raise DmaBufError(errno.EINVAL, (
                f"cpu_access range offset={offset!r} length={length!r} is not inside the "
                f"{size}-byte dma-buf"))
        np_dtype: Any = None
        if dtype is not None:
            import numpy as np

            np_dtype = np.dtype(dtype)
            if length % np_dtype.itemsize:
                raise DmaBufError(errno.EINVAL, (
                    f"cpu_access length {length} is not a multiple of {np_dtype} "
                    f"({np_dtype.itemsize} bytes)"))
        page = self._backend.page_size
        map_off = offset - offset % page
        map_len = offset + length - map_off
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
        try:
            region = self._backend.mmap(self.fileno(), map_len, prot=prot, flags=mmap.MAP_SHARED,
                                        offset=map_off)
        except OSError as e:
            raise os_error(e, f"mmap of dma-buf fd {self._fd} ({map_len} bytes at {map_off})", {
                errno.EACCES: "the dma-buf fd is read-only (allocate/export it with O_RDWR to "
                              "write through a mapping)",
                errno.EINVAL: "the exporter does not support mmap, or the range exceeds the "
                              "buffer",
                errno.ENODEV: "the exporter does not support mmap"}) from e
        try:
            self.sync(DMA_BUF_SYNC_START | flags)
        except BaseException:
            region.close()
            raise
        held: dict[str, Any] = {"region": region}
        held["whole"] = memoryview(region)  # type: ignore[arg-type]
        held["view"] = held["whole"][offset - map_off: offset - map_off + length]
        if np_dtype is not None:
            import numpy as np

            held["arr"] = np.frombuffer(held["view"], dtype=np_dtype)
        failed = True
        try:
            yield held.get("arr", held["view"])
            failed = False
        finally:
            try:
                self.sync(DMA_BUF_SYNC_END | flags)
            except DmaBufError:
                if not failed:
                    self._release(held)
                    raise
            self._release(held)

    def _release(self, held: dict[str, Any]) -> None:
        """Release the views of one cpu_access and unmap (or revoke) its mapping."""
        region: MappedRegion = held.pop("region")
        arr = held.pop("arr", None)
        if arr is not None:
            arr.flags.writeable = False
            del arr
        for key in ("view", "whole"):
            with contextlib.suppress(BufferError):
                held.pop(key).release()
        try:
            region.close()
        except BufferError:
            # A derived view (slice, numpy array) still references the mapping: cut it off
            # from the buffer so that it can never touch it outside the SYNC bracket.
            try:
                self._backend.revoke(region)
            except OSError as e:
                raise os_error(e, f"revoking a stale mapping of dma-buf fd {self._fd}") from e

    # ---------------------------------------------------------------- poll

    def poll(self, events: int = select.POLLIN | select.POLLOUT, timeout: float | None = 0
             ) -> int:
        """``poll(2)`` on the dma-buf: which accesses would not wait for fences.

        Args:
            events: ``POLLIN`` (no pending write fence) and/or ``POLLOUT`` (no pending fence).
            timeout: seconds (0: do not block; None: forever).

        Context:
            May block up to ``timeout``.

        Returns:
            The revents mask (0 on timeout).

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_poll().
        """
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        try:
            ready = self._backend.poll([(self.fileno(), events)], ms)
        except OSError as e:
            raise os_error(e, f"poll on dma-buf fd {self._fd}") from e
        return ready[0][1] if ready else 0

    def busy(self, *, read: bool = False, write: bool = False) -> bool:
        """Would an access wait for fences? IGT's ``dmabuf_busy(fd, flags)``.

        Args:
            read: would a CPU/device read wait (a pending write fence)?
            write: would a write wait (any pending fence)? Takes precedence, as in IGT.

        Returns:
            True if ``poll`` is not ready for that access right now.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_poll(); IGT lib/dmabuf_sync_file.c,
            dmabuf_busy().
        """
        flags = _rw(read, write, "busy")
        events = select.POLLOUT if flags & DMA_BUF_SYNC_WRITE else select.POLLIN
        return not (self.poll(events, 0) & events)

    def wait(self, *, write: bool = False, timeout: float | None = None) -> bool:
        """Wait until reading (or, with ``write``, writing) would not wait for fences.

        Args:
            write: wait for all fences (else only for write fences).
            timeout: seconds; None waits forever.

        Context:
            May block up to ``timeout``.

        Returns:
            True when ready, False on timeout.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_poll(), dma_buf_poll_cb().
        """
        events = select.POLLOUT if write else select.POLLIN
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self.poll(events, left) & events:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    # ---------------------------------------------------------------- name, fdinfo

    def set_name(self, name: str | bytes, *, validate: bool = True) -> None:
        """Name the buffer for debugging — ``DMA_BUF_SET_NAME`` (A/B by pointer size).

        Args:
            name: at most 31 bytes (UTF-8), no NUL.
            validate: check the length here (False sends it as is).

        Raises:
            DmaBufError: EINVAL if too long; ENOTTY if not a dma-buf.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_set_name().
        """
        raw = name.encode() if isinstance(name, str) else bytes(name)
        if validate:
            if b"\0" in raw:
                raise DmaBufError(errno.EINVAL, f"dma-buf name {name!r} contains a NUL byte "
                                                "(the kernel would silently cut it there)")
            if len(raw) >= DMA_BUF_NAME_LEN:
                raise DmaBufError(errno.EINVAL, (
                    f"dma-buf name {name!r} is {len(raw)} bytes; the kernel keeps at most "
                    f"{DMA_BUF_NAME_LEN - 1} (DMA_BUF_NAME_LEN={DMA_BUF_NAME_LEN} with the NUL)"))
        try:
            self._backend.ioctl(self.fileno(), DMA_BUF_SET_NAME, bytearray(raw + b"\0"))
        except OSError as e:
            raise self._ioctl_error(e, "DMA_BUF_SET_NAME") from e

    def fdinfo(self) -> DmaBufFdInfo:
        """This fd's ``/proc/self/fdinfo`` (size, count, exp_name, name).

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_show_fdinfo().
        """
        from dmabuf.uapi.fdinfo import read_fdinfo

        return read_fdinfo(self.fileno(), self._backend)

    @property
    def name(self) -> str | None:
        """The name set with :meth:`set_name` (None if never set), from fdinfo.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_show_fdinfo().
        """
        return self.fdinfo().name

    @property
    def exp_name(self) -> str:
        """The exporter's name (``system``, ``udmabuf``, ``drm``), from fdinfo.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_show_fdinfo().
        """
        return self.fdinfo().exp_name

    # ---------------------------------------------------------------- sync_file transfer

    def export_sync_file(self, *, read: bool = True, write: bool = True) -> SyncFile:
        """Snapshot the buffer's implicit fences as a sync_file — ``EXPORT_SYNC_FILE``.

        Args:
            read: the fences a *reader* must wait for (the write fences).
            write: the fences a *writer* must wait for (all fences). Either suffices;
                both equal ``write``.

        Returns:
            A :class:`SyncFile` (O_CLOEXEC); an idle buffer gives one signalled stub fence.

        Raises:
            DmaBufError: EINVAL for bad flags; ENOTTY before Linux 6.0 or without
                CONFIG_SYNC_FILE.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_export_sync_file().
        """
        return self.export_sync_file_flags(_rw(read, write, "export_sync_file"))

    def export_sync_file_flags(self, flags: int, *, validate: bool = True) -> SyncFile:
        """``EXPORT_SYNC_FILE`` with raw flags (see :meth:`export_sync_file`).

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_export_sync_file().
        """
        if validate:
            check_sync_file_flags(flags, "EXPORT_SYNC_FILE")
        buf = bytearray(ctypes.sizeof(DmaBufExportSyncFile))
        arg = DmaBufExportSyncFile.from_buffer(buf)
        arg.flags = flags & 0xFFFFFFFF
        arg.fd = -1
        try:
            self._backend.ioctl(self.fileno(), DMA_BUF_IOCTL_EXPORT_SYNC_FILE, buf)
        except OSError as e:
            raise self._ioctl_error(e, "DMA_BUF_IOCTL_EXPORT_SYNC_FILE") from e
        return SyncFile(arg.fd, self._backend)

    def import_sync_file(self, sync_file: SyncFile | int, *, read: bool = False,
                         write: bool = True) -> None:
        """Add a sync_file's fences to the buffer — ``IMPORT_SYNC_FILE``.

        Args:
            sync_file: the fences (object or fd; not consumed).
            read: add them as read fences (when ``write`` is False).
            write: add them as write fences (the default: over-synchronising is safe).

        Raises:
            DmaBufError: EINVAL for bad flags or a non-sync_file fd; ENOMEM.

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_import_sync_file().
        """
        self.import_sync_file_flags(sync_file, _rw(read, write, "import_sync_file"))

    def import_sync_file_flags(self, sync_file: SyncFile | int, flags: int, *,
                               validate: bool = True) -> None:
        """``IMPORT_SYNC_FILE`` with raw flags (see :meth:`import_sync_file`).

        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_import_sync_file().
        """
        if validate:
            check_sync_file_flags(flags, "IMPORT_SYNC_FILE")
        sfd = sync_file.fileno() if isinstance(sync_file, FdObject) else int(sync_file)
        buf = bytearray(ctypes.sizeof(DmaBufImportSyncFile))
        arg = DmaBufImportSyncFile.from_buffer(buf)
        arg.flags = flags & 0xFFFFFFFF
        arg.fd = sfd
        try:
            self._backend.ioctl(self.fileno(), DMA_BUF_IOCTL_IMPORT_SYNC_FILE, buf)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise os_error(e, f"DMA_BUF_IOCTL_IMPORT_SYNC_FILE of fd {sfd} on fd {self._fd}",
                               {errno.EINVAL: f"fd {sfd} is not a sync_file, or bad flags"}) from e
            raise self._ioctl_error(e, "DMA_BUF_IOCTL_IMPORT_SYNC_FILE") from e
