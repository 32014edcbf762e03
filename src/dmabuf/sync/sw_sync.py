"""drivers/dma-buf/sw_sync.c: a software timeline whose fences user space signals.

``sw_sync`` is the kernel's validation driver for sync files (``<debugfs>/sync/sw_sync``): each
open creates a *timeline* with a 32-bit counter; ``SW_SYNC_IOC_CREATE_FENCE`` makes a fence
(a *sync point*) at a value, ``SW_SYNC_IOC_INC`` advances the counter and signals every point at
or below it. Tests and the other layers of the model use :class:`SwSyncTimeline` as a source of
real, signalable fences.

Model of the driver:

* all points of a timeline share the timeline's lock (the kernel's legacy external fence lock,
  so points signal in order); its lockdep class is ``sync_timeline_lock``;
* pending points are kept sorted by value (the kernel's rb-tree + list), compared with the
  32-bit wrap-around rule; creating a point at a value that already has a live pending point
  returns that point (with a new reference), as the kernel does;
* the ops provide ``signaled`` (value reached), ``release`` (unlink) and ``set_deadline``
  (earliest deadline kept, flag ``SW_SYNC_HAS_DEADLINE_BIT`` = ``USER_BITS``); having
  ``release`` keeps the ops attached after signal, as in the kernel;
* closing the timeline (the file's release) signals every pending point with ``-ENOENT``.

Kernel: drivers/dma-buf/sw_sync.c, drivers/dma-buf/sync_debug.h.
"""

from __future__ import annotations

import errno

from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.sync.dma_fence import (
    DmaFence,
    DmaFenceFlag,
    DmaFenceOps,
    _seqno_later,
    spin_lock_irqsave,
    spin_unlock_irqrestore,
)
from dmabuf.sync.sync_file import SyncFile

__all__ = ["SW_SYNC_HAS_DEADLINE_BIT", "SwSyncPt", "SwSyncTimeline"]

#: Flag bit a point sets once it has a deadline (``DMA_FENCE_FLAG_USER_BITS``).
SW_SYNC_HAS_DEADLINE_BIT = int(DmaFenceFlag.USER_BITS)
_INT_MAX = 0x7FFFFFFF
_U32 = 0xFFFFFFFF
_LOCK_CLASS = "sync_timeline_lock"


class _TimelineFenceOps(DmaFenceOps):
    """timeline_fence_ops."""

    def get_driver_name(self, fence: DmaFence) -> str:
        return "sw_sync"

    def get_timeline_name(self, fence: DmaFence) -> str:
        assert isinstance(fence, SwSyncPt)
        return fence.timeline.name

    def signaled(self, fence: DmaFence) -> bool:
        assert isinstance(fence, SwSyncPt)
        return not _seqno_later(fence.flags, fence.seqno, fence.timeline.value)

    def release(self, fence: DmaFence) -> None:
        assert isinstance(fence, SwSyncPt)
        fence.timeline._unlink(fence)

    def set_deadline(self, fence: DmaFence, deadline: float) -> None:
        assert isinstance(fence, SwSyncPt)
        fence.lock_irqsave()
        try:
            if fence.test_bit(SW_SYNC_HAS_DEADLINE_BIT):
                if fence.deadline is None or deadline < fence.deadline:
                    fence.deadline = deadline
            else:
                fence.deadline = deadline
                fence.set_bit(SW_SYNC_HAS_DEADLINE_BIT)
        finally:
            fence.unlock_irqrestore()


_TIMELINE_FENCE_OPS = _TimelineFenceOps()


class SwSyncPt(DmaFence):
    """A point on a sw_sync timeline — struct sync_pt. Created by
    :meth:`SwSyncTimeline.create_fence`."""

    __slots__ = ("_linked", "deadline", "timeline")

    LOCK_CLASS = _LOCK_CLASS

    def __init__(self, timeline: SwSyncTimeline, value: int) -> None:
        super().__init__(_TIMELINE_FENCE_OPS, timeline.context, value, lock=timeline.lock,
                         machine=timeline.machine)
        self.timeline = timeline
        #: Earliest deadline hint (scheduler clock), or None.
        self.deadline: float | None = None
        self._linked = False


def _cmp32(a: int, b: int) -> int:
    """``int cmp = value - other->seqno`` as the kernel computes it (32-bit signed)."""
    d = (a - b) & _U32
    return d - (1 << 32) if d & 0x80000000 else d


class SwSyncTimeline:
    """A sw_sync timeline — struct sync_timeline, one open of ``<debugfs>/sync/sw_sync``.

    Args:
        name: the timeline name (the kernel uses the opening task's comm); 31 bytes max.
        machine: default: the current machine.
    Kernel: drivers/dma-buf/sw_sync.c, sw_sync_debugfs_open(), sync_timeline_create().
    """

    def __init__(self, name: str = "sw_sync", *, machine: Machine | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self.machine = machine if machine is not None else current_machine()
        self.name = name.encode("utf-8")[:31].decode("utf-8", errors="ignore")
        self.context = self.machine.fence_context_alloc(1)
        #: The counter (u32); points at or below it are signalled.
        self.value = 0
        #: The shared lock of all points (``obj->lock``).
        self.lock = self.machine.sched.lock("sync_timeline.lock")
        self._pending: list[SwSyncPt] = []
        self._closed = False

    def __repr__(self) -> str:
        return (f"<SwSyncTimeline {self.name!r} ctx={self.context} value={self.value} "
                f"pending={len(self._pending)}{' closed' if self._closed else ''}>")

    # locking ---------------------------------------------------------------------------------
    def _lock(self) -> None:
        spin_lock_irqsave(self.lock, _LOCK_CLASS, self.machine)

    def _unlock(self) -> None:
        spin_unlock_irqrestore(self.lock, _LOCK_CLASS, self.machine)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise DmaBufError(errno.EBADF, f"{what}: the sw_sync timeline is closed")

    @property
    def pending(self) -> list[SwSyncPt]:
        """The points not yet signalled, in value order (a copy)."""
        return list(self._pending)

    # points ----------------------------------------------------------------------------------
    def create_fence(self, value: int) -> SwSyncPt:
        """A point at ``value`` — sync_pt_create().

        Args:
            value: u32 point value.
        Returns: a reference to a new point — or to the live pending point already at
            ``value`` (kernel behaviour). A point at or below the counter is signalled at once.
        Raises: TypeError for a non-int; DmaBufError(EINVAL) outside u32; DmaBufError(EBADF) if
            the timeline is closed.
        Kernel: drivers/dma-buf/sw_sync.c, sync_pt_create().
        """
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"value must be an int, not {type(value).__name__}")
        if not 0 <= value <= _U32:
            raise DmaBufError(errno.EINVAL, f"sw_sync point value {value} is not a u32")
        self._check_open("SW_SYNC_IOC_CREATE_FENCE")
        pt = SwSyncPt(self, value)
        self._lock()
        try:
            if not pt.is_signaled_locked():
                pend = self._pending
                i = len(pend)
                while i > 0:
                    other = pend[i - 1]
                    cmp = _cmp32(value, other.seqno)
                    if cmp > 0:
                        break
                    if cmp == 0 and other.get_unless_zero() is not None:
                        return other
                    i -= 1
                pend.insert(i, pt)
                pt._linked = True
        finally:
            self._unlock()
        return pt

    def create_sync_file(self, value: int, name: str = "") -> SyncFile:
        """``SW_SYNC_IOC_CREATE_FENCE``: a sync file holding a new point at ``value``.

        Args:
            value: u32 point value.
            name: ``sw_sync_create_fence_data.name`` (unused by the kernel beyond the copy).
        Returns: the sync file (it holds the only reference to the point).
        Kernel: drivers/dma-buf/sw_sync.c, sw_sync_ioctl_create_fence().
        """
        pt = self.create_fence(value)
        try:
            return SyncFile(pt)
        finally:
            pt.put()

    def _unlink(self, pt: SwSyncPt) -> None:
        """timeline_fence_release(): drop a released point from the pending list."""
        self._lock()
        try:
            if pt._linked:
                pt._linked = False
                try:
                    self._pending.remove(pt)
                except ValueError:
                    pass
        finally:
            self._unlock()

    # signalling ------------------------------------------------------------------------------
    def signal(self, inc: int) -> None:
        """Advance the counter by ``inc`` and signal reached points — sync_timeline_signal().

        Context: takes the timeline lock; callbacks of the signalled points run here.
        Kernel: drivers/dma-buf/sw_sync.c, sync_timeline_signal().
        """
        signalled: list[SwSyncPt] = []
        self._lock()
        try:
            self.value = (self.value + inc) & _U32
            pend = self._pending
            while pend:
                pt = pend[0]
                if _seqno_later(pt.flags, pt.seqno, self.value):
                    break
                pt.get()
                pend.pop(0)
                pt._linked = False
                signalled.append(pt)
                pt.signal_locked()
        finally:
            self._unlock()
        for pt in signalled:
            pt.put()

    def inc(self, n: int = 1) -> None:
        """``SW_SYNC_IOC_INC``: advance the counter by ``n`` (u32), signalling reached points.

        Raises: TypeError for a non-int; DmaBufError(EINVAL) outside u32; DmaBufError(EBADF) if
            the timeline is closed.
        Kernel: drivers/dma-buf/sw_sync.c, sw_sync_ioctl_inc().
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if not 0 <= n <= _U32:
            raise DmaBufError(errno.EINVAL, f"SW_SYNC_IOC_INC: {n} is not a u32")
        self._check_open("SW_SYNC_IOC_INC")
        while n > _INT_MAX:
            self.signal(_INT_MAX)
            n -= _INT_MAX
        self.signal(n)

    def get_deadline(self, fence: DmaFence) -> float:
        """``SW_SYNC_GET_DEADLINE``: the earliest deadline set on a point of this driver.

        Returns: the deadline (scheduler clock, seconds).
        Raises: DmaBufError(EINVAL) if ``fence`` is not a sw_sync point; DmaBufError(ENOENT) if
            no deadline was set.
        Kernel: drivers/dma-buf/sw_sync.c, sw_sync_ioctl_get_deadline().
        """
        if not isinstance(fence, SwSyncPt):
            raise DmaBufError(errno.EINVAL, "SW_SYNC_GET_DEADLINE: not a sw_sync fence")
        fence.lock_irqsave()
        try:
            if not fence.test_bit(SW_SYNC_HAS_DEADLINE_BIT) or fence.deadline is None:
                raise DmaBufError(errno.ENOENT, "SW_SYNC_GET_DEADLINE: no deadline set on "
                                                "this fence")
            return fence.deadline
        finally:
            fence.unlock_irqrestore()

    def close(self) -> None:
        """Release the timeline — sw_sync_debugfs_release(); idempotent.

        Every pending point is signalled with error ``-ENOENT``.
        Kernel: drivers/dma-buf/sw_sync.c, sw_sync_debugfs_release().
        """
        if self._closed:
            return
        self._closed = True
        self._lock()
        try:
            for pt in list(self._pending):
                if not pt.test_signaled_flag():
                    pt.set_error(-errno.ENOENT)
                pt.signal_locked()
                pt._linked = False
            self._pending.clear()
        finally:
            self._unlock()

    def __enter__(self) -> SwSyncTimeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
