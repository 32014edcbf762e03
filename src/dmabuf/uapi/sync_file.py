"""include/uapi/linux/sync_file.h — explicit fences as file descriptors.

A sync_file wraps one dma_fence (possibly a ``dma_fence_array`` of several) in an fd. It is what
``DMA_BUF_IOCTL_EXPORT_SYNC_FILE`` returns and ``IMPORT_SYNC_FILE`` takes, and what Vulkan,
Android and KMS pass around as "fence fds".

* ``poll(POLLIN)`` is ready once the fence has signalled (:meth:`SyncFile.wait`);
* ``SYNC_IOC_MERGE`` makes a new sync_file that signals when both inputs have; fences of the
  same context are deduplicated — only the later one is kept (``sync_file_merge()`` goes
  through ``dma_fence_unwrap_merge``);
* ``SYNC_IOC_FILE_INFO`` reports the name, the status (1 signalled, 0 active, < 0 an error)
  and, on a second call with room for them, one ``sync_fence_info`` per fence. The call is two
  passes by design: with ``num_fences == 0`` the kernel only fills in the count;
  with a smaller non-zero count it fails with EINVAL;
* ``SYNC_IOC_SET_DEADLINE`` (6.5+) hints when the fence is needed.

Kernel: drivers/dma-buf/sync_file.c (sync_file_ioctl_merge(), sync_file_ioctl_fence_info(),
sync_file_poll()); include/uapi/linux/sync_file.h.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import select
import time

from dmabuf.errors import DmaBufError
from dmabuf.uapi.backend import UapiBackend
from dmabuf.uapi.fd import FdObject, os_error
from dmabuf.uapi.ioctl import IOW, IOWR

__all__ = [
    "SYNC_IOC_FILE_INFO",
    "SYNC_IOC_MERGE",
    "SYNC_IOC_SET_DEADLINE",
    "SyncFenceInfo",
    "SyncFile",
    "SyncFileInfo",
    "SyncMergeData",
    "SyncSetDeadline",
]


class SyncMergeData(ctypes.Structure):
    """``struct sync_merge_data`` (48 bytes)."""

    _fields_ = [("name", ctypes.c_char * 32), ("fd2", ctypes.c_int32),
                ("fence", ctypes.c_int32), ("flags", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class SyncFenceInfoStruct(ctypes.Structure):
    """``struct sync_fence_info`` (80 bytes)."""

    _fields_ = [("obj_name", ctypes.c_char * 32), ("driver_name", ctypes.c_char * 32),
                ("status", ctypes.c_int32), ("flags", ctypes.c_uint32),
                ("timestamp_ns", ctypes.c_uint64)]


class SyncFileInfoStruct(ctypes.Structure):
    """``struct sync_file_info`` (56 bytes); ``sync_fence_info`` is a user pointer."""

    _fields_ = [("name", ctypes.c_char * 32), ("status", ctypes.c_int32),
                ("flags", ctypes.c_uint32), ("num_fences", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("sync_fence_info", ctypes.c_uint64)]


class SyncSetDeadline(ctypes.Structure):
    """``struct sync_set_deadline`` (16 bytes)."""

    _fields_ = [("deadline_ns", ctypes.c_uint64), ("pad", ctypes.c_uint64)]


SYNC_IOC_MAGIC = ">"
SYNC_IOC_MERGE = IOWR(SYNC_IOC_MAGIC, 3, SyncMergeData)
SYNC_IOC_FILE_INFO = IOWR(SYNC_IOC_MAGIC, 4, SyncFileInfoStruct)
SYNC_IOC_SET_DEADLINE = IOW(SYNC_IOC_MAGIC, 5, SyncSetDeadline)


@dataclasses.dataclass(frozen=True)
class SyncFenceInfo:
    """One fence of a sync_file — ``struct sync_fence_info``.

    ``status``: 1 signalled, 0 active, negative an errno the fence was signalled with.
    ``timestamp_ns``: CLOCK_MONOTONIC signal time (0 while active).
    """

    obj_name: str  #: the timeline name (``dma_fence_timeline_name``)
    driver_name: str  #: ``dma_fence_driver_name`` (``vgem``, ``stub``, ``sw_sync``)
    status: int
    flags: int
    timestamp_ns: int


@dataclasses.dataclass(frozen=True)
class SyncFileInfo:
    """``SYNC_IOC_FILE_INFO`` — the sync_file's name, status and (optionally) its fences."""

    name: str
    status: int  #: 1 signalled, 0 active, < 0 error
    flags: int
    num_fences: int
    fences: tuple[SyncFenceInfo, ...]


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


class SyncFile(FdObject):
    """A sync_file fd (owned). Wrap an fd with ``SyncFile(fd)``; see :mod:`dmabuf.uapi.fd`."""

    def __init__(self, fd: int, backend: UapiBackend | None = None) -> None:
        super().__init__(fd, backend, what="sync_file")

    def merge(self, other: SyncFile | int, name: str = "merged") -> SyncFile:
        """A sync_file signalled when both are — ``SYNC_IOC_MERGE``.

        Args:
            other: the second sync_file (object or fd).
            name: the new sync_file's name (at most 31 bytes).

        Context:
            Does not block.

        Returns:
            The new :class:`SyncFile` (O_CLOEXEC).

        Raises:
            DmaBufError: ENOENT if ``other`` is not a sync_file; EINVAL if the name is too
                long or ``flags``/``pad`` are set; ENOTTY if this fd is not a sync_file.

        Kernel: drivers/dma-buf/sync_file.c, sync_file_ioctl_merge().
        """
        raw = name.encode()
        if len(raw) > 31 or b"\0" in raw:
            raise DmaBufError(errno.EINVAL, f"sync_file name {name!r} must be at most 31 bytes "
                                            "without NUL")
        fd2 = other.fileno() if isinstance(other, FdObject) else int(other)
        buf = bytearray(ctypes.sizeof(SyncMergeData))
        arg = SyncMergeData.from_buffer(buf)
        arg.name = raw
        arg.fd2 = fd2
        try:
            self._backend.ioctl(self.fileno(), SYNC_IOC_MERGE, buf)
        except OSError as e:
            raise os_error(e, f"SYNC_IOC_MERGE of fd {self._fd} and fd {fd2}", {
                errno.ENOENT: f"fd {fd2} is not a sync_file",
                errno.EINVAL: "flags/pad must be zero",
                errno.ENOTTY: f"fd {self._fd} is not a sync_file"}) from e
        return SyncFile(arg.fence, self._backend)

    def info(self, *, fences: bool = True) -> SyncFileInfo:
        """Name, status and per-fence details — ``SYNC_IOC_FILE_INFO`` (two passes).

        Args:
            fences: also fetch one :class:`SyncFenceInfo` per fence (second ioctl).

        Context:
            Does not block.

        Returns:
            A :class:`SyncFileInfo`.

        Raises:
            DmaBufError: ENOTTY if the fd is not a sync_file; EINVAL (the fence set changed
                between the passes cannot happen: a sync_file's fence is immutable).

        Kernel: drivers/dma-buf/sync_file.c, sync_file_ioctl_fence_info().
        """
        buf = bytearray(ctypes.sizeof(SyncFileInfoStruct))
        head = SyncFileInfoStruct.from_buffer(buf)
        self._file_info(buf)
        n = head.num_fences
        items: tuple[SyncFenceInfo, ...] = ()
        if fences and n:
            arr = (SyncFenceInfoStruct * n)()
            buf2 = bytearray(ctypes.sizeof(SyncFileInfoStruct))
            head2 = SyncFileInfoStruct.from_buffer(buf2)
            head2.num_fences = n
            head2.sync_fence_info = ctypes.addressof(arr)
            self._file_info(buf2)
            items = tuple(SyncFenceInfo(_cstr(f.obj_name), _cstr(f.driver_name), f.status,
                                        f.flags, f.timestamp_ns) for f in arr[:head2.num_fences])
            head = head2
        return SyncFileInfo(_cstr(head.name), head.status, head.flags, n, items)

    def _file_info(self, buf: bytearray) -> None:
        try:
            self._backend.ioctl(self.fileno(), SYNC_IOC_FILE_INFO, buf)
        except OSError as e:
            raise os_error(e, f"SYNC_IOC_FILE_INFO on fd {self._fd}",
                           {errno.ENOTTY: f"fd {self._fd} is not a sync_file"}) from e

    @property
    def status(self) -> int:
        """1 signalled, 0 active, < 0 signalled with that error — ``sync_file_info.status``.

        Kernel: drivers/dma-buf/sync_file.c, sync_file_ioctl_fence_info().
        """
        return self.info(fences=False).status

    @property
    def signaled(self) -> bool:
        """True once every fence has signalled (poll POLLIN without blocking).

        Kernel: drivers/dma-buf/sync_file.c, sync_file_poll().
        """
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the fence to signal — ``poll(POLLIN)`` on the sync_file.

        Args:
            timeout: seconds (None: forever; 0: just test).

        Context:
            May block up to ``timeout``.

        Returns:
            True if signalled, False on timeout.

        Kernel: drivers/dma-buf/sync_file.c, sync_file_poll().
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000
                                                          + 0.999))
            try:
                ready = self._backend.poll([(self.fileno(), select.POLLIN)], ms)
            except OSError as e:
                raise os_error(e, f"poll on sync_file fd {self._fd}") from e
            if ready and ready[0][1] & select.POLLIN:
                return True
            if ready and ready[0][1] & (select.POLLERR | select.POLLNVAL):
                raise DmaBufError(errno.EINVAL, f"poll on sync_file fd {self._fd} "
                                                f"reported revents {ready[0][1]:#x}")
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def set_deadline(self, deadline_ns: int) -> None:
        """Hint the time (CLOCK_MONOTONIC ns) the fence is needed by — ``SYNC_IOC_SET_DEADLINE``.

        Raises:
            DmaBufError: ENOTTY on kernels before 6.5 or a non-sync_file fd.

        Kernel: drivers/dma-buf/sync_file.c, sync_file_ioctl_set_deadline().
        """
        buf = bytearray(ctypes.sizeof(SyncSetDeadline))
        SyncSetDeadline.from_buffer(buf).deadline_ns = int(deadline_ns)
        try:
            self._backend.ioctl(self.fileno(), SYNC_IOC_SET_DEADLINE, buf)
        except OSError as e:
            raise os_error(e, f"SYNC_IOC_SET_DEADLINE on fd {self._fd}", {
                errno.ENOTTY: "not a sync_file, or a kernel before 6.5"}) from e
