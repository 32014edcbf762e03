"""drivers/dma-buf/sync_file.c: explicit synchronisation — a file that carries one fence.

A :class:`SyncFile` is what user space passes around for explicit fencing (the fd returned by
``DMA_BUF_IOCTL_EXPORT_SYNC_FILE``, ``SW_SYNC_IOC_CREATE_FENCE``, Vulkan/EGL native fences).
It holds a reference to one fence — possibly a container — taken when the file is created:
a **snapshot**. Whatever happens later to the object the fence came from (new fences added to a
reservation object) does not change what the sync file waits for.

Operations (the file's ioctls and poll):

* ``merge`` (``SYNC_IOC_MERGE``): a new sync file on ``dma_fence_unwrap_merge(a, b)`` — leaves
  sorted by context, only the later fence kept per context, already-signalled ones dropped;
* ``info`` (``SYNC_IOC_FILE_INFO``): the name, the overall status and, per leaf fence, the
  timeline name (``obj_name``), the driver name, status, flags (always 0: the kernel never
  fills them) and the signal timestamp in ns; names are truncated to 31 bytes like ``strscpy``
  into ``char[32]``;
* ``poll``: ``EPOLLIN`` once the fence signalled (the first poll arms a callback that wakes
  pollers); :meth:`SyncFile.poll_wait` is ``poll(2)`` with a timeout;
* ``set_deadline`` (``SYNC_IOC_SET_DEADLINE``).

Closing the file (``close()``, or the context manager) drops the fence reference; using a closed
sync file raises ``DmaBufError(EBADF)``.

The uAPI of include/uapi/linux/sync_file.h is here too: the ioctl numbers (:data:`SYNC_IOC_MERGE`,
:data:`SYNC_IOC_FILE_INFO`, :data:`SYNC_IOC_SET_DEADLINE`) and the structures' byte layouts
(``struct`` formats). The layer has no file descriptors: the sync_file *file*, whose ioctls
decode these bytes, is :class:`dmabuf.buf.dma_buf_file.SyncFileFileOps`.

Kernel: drivers/dma-buf/sync_file.c, include/linux/sync_file.h, include/uapi/linux/sync_file.h.
"""

from __future__ import annotations

import errno
import math
import struct
import threading
from dataclasses import dataclass

from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import DmaFence, DmaFenceCb, _check_timeout
from dmabuf.sync.dma_fence_unwrap import dma_fence_unwrap_for_each, dma_fence_unwrap_merge

__all__ = [
    "EPOLLIN",
    "SYNC_FENCE_INFO",
    "SYNC_FILE_INFO",
    "SYNC_IOC_FILE_INFO",
    "SYNC_IOC_MAGIC",
    "SYNC_IOC_MERGE",
    "SYNC_IOC_SET_DEADLINE",
    "SYNC_MERGE_DATA",
    "SYNC_SET_DEADLINE",
    "SyncFenceInfo",
    "SyncFile",
    "SyncFileInfo",
    "sync_file_create",
    "sync_file_get_fence",
]

#: ``EPOLLIN`` (include/uapi/linux/eventpoll.h).
EPOLLIN = 0x001
#: Size of the name fields of the uAPI structs (``char name[32]``).
_NAME_LEN = 32

# include/uapi/linux/sync_file.h -------------------------------------------------------------
#: ``struct sync_merge_data { char name[32]; __s32 fd2; __s32 fence; __u32 flags; __u32 pad; }``
SYNC_MERGE_DATA = struct.Struct("<32siiII")
#: ``struct sync_fence_info { char obj_name[32]; char driver_name[32]; __s32 status;
#: __u32 flags; __u64 timestamp_ns; }``
SYNC_FENCE_INFO = struct.Struct("<32s32siIQ")
#: ``struct sync_file_info { char name[32]; __s32 status; __u32 flags; __u32 num_fences;
#: __u32 pad; __u64 sync_fence_info; }`` (the last field is a user pointer)
SYNC_FILE_INFO = struct.Struct("<32siIIIQ")
#: ``struct sync_set_deadline { __u64 deadline_ns; __u64 pad; }``
SYNC_SET_DEADLINE = struct.Struct("<QQ")
#: ``SYNC_IOC_MAGIC`` (``'>'``).
SYNC_IOC_MAGIC = ord(">")


def _iowr(nr: int, size: int, *, read: bool = True) -> int:
    # include/uapi/asm-generic/ioctl.h: dir<<30 | size<<16 | type<<8 | nr (dir: 1 W, 2 R)
    return ((3 if read else 1) << 30) | (size << 16) | (SYNC_IOC_MAGIC << 8) | nr


#: ``_IOWR(SYNC_IOC_MAGIC, 3, struct sync_merge_data)``
SYNC_IOC_MERGE = _iowr(3, SYNC_MERGE_DATA.size)
#: ``_IOWR(SYNC_IOC_MAGIC, 4, struct sync_file_info)``
SYNC_IOC_FILE_INFO = _iowr(4, SYNC_FILE_INFO.size)
#: ``_IOW(SYNC_IOC_MAGIC, 5, struct sync_set_deadline)``
SYNC_IOC_SET_DEADLINE = _iowr(5, SYNC_SET_DEADLINE.size, read=False)


def _strscpy(s: str, size: int = _NAME_LEN) -> str:
    """strscpy() into ``char[size]``: at most size-1 bytes (UTF-8), NUL-terminated."""
    b = s.encode("utf-8")[: size - 1]
    return b.decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class SyncFenceInfo:
    """One fence of a sync file — ``struct sync_fence_info``."""

    obj_name: str
    driver_name: str
    status: int
    flags: int
    timestamp_ns: int


@dataclass(frozen=True)
class SyncFileInfo:
    """``struct sync_file_info`` as ``SYNC_IOC_FILE_INFO`` returns it."""

    name: str
    status: int
    flags: int
    num_fences: int
    fences: tuple[SyncFenceInfo, ...]


class _PollCb(DmaFenceCb):
    __slots__ = ("sync_file",)

    def __init__(self, sync_file: SyncFile) -> None:
        super().__init__()
        self.sync_file = sync_file


def _fence_check_cb_func(f: DmaFence, cb: DmaFenceCb) -> None:
    """fence_check_cb_func(): wake_up_all(&sync_file->wq)."""
    assert isinstance(cb, _PollCb)
    cb.sync_file._wq.set()


class SyncFile:
    """A sync file holding one fence — ``struct sync_file``, ``sync_file_create()``.

    Args:
        fence: the fence; the sync file takes its own reference (the caller keeps its own).
        name: optional user name (as set by a merge); empty means "derive from the fence".
    Raises: TypeError if ``fence`` is not a DmaFence.
    Kernel: drivers/dma-buf/sync_file.c, sync_file_create().
    """

    def __init__(self, fence: DmaFence, name: str = "") -> None:
        if not isinstance(fence, DmaFence):
            raise TypeError(f"fence must be a DmaFence, not {type(fence).__name__}")
        self.machine: Machine = fence.machine
        self._fence: DmaFence | None = fence.get()
        self.user_name = _strscpy(name) if name else ""
        self._cb = _PollCb(self)
        self._poll_enabled = False
        self._wq = self.machine.sched.event("sync_file.wq")

    def __repr__(self) -> str:
        state = "closed" if self._fence is None else repr(self._fence)
        return f"<SyncFile {self.user_name or '-'} {state}>"

    # lifetime ---------------------------------------------------------------------------------
    def _live(self) -> DmaFence:
        f = self._fence
        if f is None:
            raise DmaBufError(errno.EBADF, "sync file is closed; create a new one")
        return f

    @property
    def fence(self) -> DmaFence:
        """The fence (borrowed; :meth:`get_fence` for a reference). Raises EBADF if closed."""
        return self._live()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._fence is None

    def close(self) -> None:
        """Release the file — sync_file_release(); idempotent.

        Removes the poll callback if armed and drops the fence reference.
        Kernel: drivers/dma-buf/sync_file.c, sync_file_release().
        """
        f = self._fence
        if f is None:
            return
        self._fence = None
        if self._poll_enabled:
            f.remove_callback(self._cb)
        f.put()

    def __enter__(self) -> SyncFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # kernel API -------------------------------------------------------------------------------
    def get_fence(self) -> DmaFence:
        """A new reference to the fence — sync_file_get_fence().

        Raises: DmaBufError(EBADF) if closed.
        Kernel: drivers/dma-buf/sync_file.c, sync_file_get_fence().
        """
        return self._live().get()

    def get_name(self) -> str:
        """The name: the user name, else ``"<driver>-<timeline><context>-<seqno>"`` (31 bytes max).

        Kernel: drivers/dma-buf/sync_file.c, sync_file_get_name().
        """
        if self.user_name:
            return self.user_name
        f = self._live()
        return _strscpy(f"{f.driver_name()}-{f.timeline_name()}{f.context}-{f.seqno}")

    def merge(self, other: SyncFile, name: str = "") -> SyncFile:
        """A new sync file on the merged fences of ``self`` and ``other`` — SYNC_IOC_MERGE.

        Args:
            other: the second sync file (``sync_merge_data.fd2``).
            name: the new file's name (``sync_merge_data.name``, truncated to 31 bytes).
        Returns: the new sync file; ``self`` and ``other`` stay valid and independent.
        Raises: DmaBufError(ENOENT) if ``other`` is not an open sync file (the kernel's bad fd2);
            DmaBufError(EBADF) if ``self`` is closed.
        Kernel: drivers/dma-buf/sync_file.c, sync_file_ioctl_merge(), sync_file_merge().
        """
        a = self._live()
        if not isinstance(other, SyncFile) or other.closed:
            raise DmaBufError(errno.ENOENT, "SYNC_IOC_MERGE: fd2 is not an open sync file")
        fence = dma_fence_unwrap_merge(a, other._live(), machine=self.machine)
        try:
            return SyncFile(fence, name)
        finally:
            fence.put()

    def info(self, num_fences: int | None = None) -> SyncFileInfo:
        """Status and per-fence information — SYNC_IOC_FILE_INFO.

        Args:
            num_fences: the caller's array size: 0 asks only for the count and overall status;
                None means "as many as there are" (the two-call dance done for you).
        Returns: :class:`SyncFileInfo`. ``status`` is the fence's status for ``num_fences == 0``;
            otherwise 1 folded with each fence's status (the first status <= 0 sticks).
        Raises: DmaBufError(EINVAL) if ``num_fences`` is smaller than the number of fences or
            negative; DmaBufError(EBADF) if closed; TypeError for a non-int.
        Kernel: drivers/dma-buf/sync_file.c, sync_file_ioctl_fence_info(), sync_fill_fence_info().
        """
        f = self._live()
        if num_fences is not None and (isinstance(num_fences, bool)
                                       or not isinstance(num_fences, int)):
            raise TypeError(f"num_fences must be an int or None, not {type(num_fences).__name__}")
        if num_fences is not None and num_fences < 0:
            raise DmaBufError(errno.EINVAL, f"SYNC_IOC_FILE_INFO: num_fences={num_fences} < 0")
        leaves = list(dma_fence_unwrap_for_each(f))
        count = len(leaves)
        name = self.get_name()
        if num_fences == 0:
            return SyncFileInfo(name, f.get_status(), 0, count, ())
        if num_fences is not None and num_fences < count:
            raise DmaBufError(errno.EINVAL, f"SYNC_IOC_FILE_INFO: the sync file has {count} "
                                            f"fences but num_fences={num_fences}; ask with "
                                            "num_fences=0 first")
        status = 1
        infos = []
        for leaf in leaves:
            fi = _fill_fence_info(leaf)
            infos.append(fi)
            status = status if status <= 0 else fi.status
        return SyncFileInfo(name, status, 0, count, tuple(infos))

    def poll(self) -> int:
        """Readiness — sync_file_poll(): ``EPOLLIN`` once the fence signalled, else 0.

        The first poll arms a callback that wakes pollers (:meth:`poll_wait`).
        Raises: DmaBufError(EBADF) if closed.
        Kernel: drivers/dma-buf/sync_file.c, sync_file_poll().
        """
        f = self._live()
        if not self._cb.queued and not self._poll_enabled:
            self._poll_enabled = True
            if f.add_callback(self._cb, _fence_check_cb_func) < 0:
                self._wq.set()
        return EPOLLIN if f.is_signaled() else 0

    def poll_wait(self, timeout: float | None = None) -> int:
        """``poll(2)`` on the file with a timeout (seconds; None waits forever).

        Returns: ``EPOLLIN`` if ready, 0 on timeout.
        Context: may sleep.
        Raises: DmaBufError(EINVAL) for a negative timeout; DmaBufError(EBADF) if closed.
        Kernel: fs/select.c do_poll() over sync_file_poll() (the model of the syscall).
        """
        t = _check_timeout(timeout, "poll")
        sched = self.machine.sched
        deadline = sched.now() + t
        while True:
            ready = self.poll()
            if ready:
                return ready
            remaining = None if deadline == math.inf else deadline - sched.now()
            if remaining is not None and remaining <= 0:
                return 0
            self._wq.wait(None if remaining is None else min(remaining, threading.TIMEOUT_MAX),
                          "poll(sync_file)")

    def set_deadline(self, deadline: float) -> None:
        """Pass a deadline hint to the fence — SYNC_IOC_SET_DEADLINE.

        Args: deadline: absolute time on the machine's clock (seconds).
        Kernel: drivers/dma-buf/sync_file.c, sync_file_ioctl_set_deadline().
        """
        self._live().set_deadline(deadline)


def _fill_fence_info(fence: DmaFence) -> SyncFenceInfo:
    """sync_fill_fence_info()."""
    timeline = _strscpy(fence.timeline_name())
    driver = _strscpy(fence.driver_name())
    status = fence.get_status()
    ts = fence.timestamp_ns if fence.is_signaled() else 0
    return SyncFenceInfo(timeline, driver, status, 0, ts)


def sync_file_create(fence: DmaFence) -> SyncFile:
    """Create a sync file holding a new reference to ``fence`` — sync_file_create().

    Kernel: drivers/dma-buf/sync_file.c, sync_file_create().
    """
    return SyncFile(fence)


def sync_file_get_fence(sync_file: object) -> DmaFence | None:
    """A reference to the fence of ``sync_file``, or None if it is not an open sync file.

    The kernel takes an fd and returns NULL for anything else; callers turn that into -EINVAL.
    Kernel: drivers/dma-buf/sync_file.c, sync_file_get_fence().
    """
    if not isinstance(sync_file, SyncFile) or sync_file.closed:
        return None
    return sync_file.get_fence()
