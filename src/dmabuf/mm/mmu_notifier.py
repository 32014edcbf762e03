"""MMU notifiers — mm/mmu_notifier.c, include/linux/mmu_notifier.h.

A device that mirrors part of a process address space (HMM / SVM, RDMA ODP) must learn when the
CPU page tables of that range change, stop using its copy, and re-fault. The kernel tells it
through MMU notifiers; this module models both kinds:

**Interval notifiers** (:class:`MmuIntervalNotifier`) — a subscription on ``[start, last]`` of one
mm, with the *sequence/retry protocol* that makes the mirror race-free without holding any lock
across the (sleeping) page walk:

* every mm has one ``invalidate_seq``, starting at 2 (even = idle). When an invalidation overlaps
  any subscription, ``mn_itree_inv_start_range`` makes it odd (``seq |= 1``), and each overlapping
  subscription's ``ops.invalidate(sub, range, cur_seq)`` runs; the driver takes its *user lock*,
  calls :func:`mmu_interval_set_seq` (storing the odd value in the subscription), tears down its
  device mappings of the range, and returns True;
* when the last concurrent invalidation ends, ``mn_itree_inv_end`` makes the mm's seq even again
  (``seq += 1``), applies deferred inserts/removes and wakes everyone waiting;
* :func:`mmu_interval_read_begin` returns the subscription's seq, sleeping first while an
  invalidation of this subscription is in progress (sub seq == mm seq);
* :func:`mmu_interval_read_retry` (under the user lock) and :func:`mmu_interval_check_retry`
  (lockless) tell whether an invalidation happened since ``read_begin``.

Sequence numbers of a subscription that was never invalidated are ``mm seq - 1`` (odd, never equal
to a future mm seq), exactly as in the kernel.

**Classic notifiers** (:class:`MmuNotifier`) with ``invalidate_range_start``/``end`` and
``release`` callbacks, registered with :func:`mmu_notifier_register`.

Producers of invalidations are the mm operations of :mod:`dmabuf.mm.vma` (munmap, mprotect,
madvise, COW, migration, exit) which bracket every PTE change with
:func:`mmu_notifier_invalidate_range_start` / :func:`mmu_notifier_invalidate_range_end` and an
:class:`MmuNotifierRange` naming the event.

Locking and lockdep: the per-mm ``subscriptions.lock`` (a spinlock in the kernel; a scheduler
lock here) is held only for bookkeeping — never across a callback. Callbacks run inside the
pseudo-lock ``mmu_notifier_invalidate_range_start`` (the kernel's
``__mmu_notifier_invalidate_range_start_map``), which :func:`mmu_interval_read_begin` and
:func:`mmu_interval_notifier_remove` also "take" for an instant: a driver that calls ``read_begin``
while holding the lock its ``invalidate`` callback takes is reported by the lock tracker
(``lockdep_circular_locking``) the first time, as lockdep does. All sleeping goes through
``machine.sched`` (``read_begin`` and ``remove`` wait on the subscriptions' wait queue).

Deliberate differences: callbacks are called in address order of the subscriptions (the kernel's
interval-tree order); the model has no RCU (classic notifiers are called from a snapshot of the
list).

Kernel: mm/mmu_notifier.c (mn_itree_inv_start_range, mn_itree_inv_end, mmu_interval_read_begin,
mn_itree_invalidate, __mmu_interval_notifier_insert, mmu_interval_notifier_remove,
mmu_notifier_register, __mmu_notifier_release), include/linux/mmu_notifier.h (enum
mmu_notifier_event, struct mmu_notifier_range, mmu_interval_set_seq, mmu_interval_read_retry,
mmu_interval_check_retry, mmu_notifier_invalidate_range_start).
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError

if TYPE_CHECKING:
    from dmabuf.mm.vma import MmStruct

__all__ = [
    "MMU_NOTIFIER_RANGE_BLOCKABLE",
    "MmuIntervalNotifier",
    "MmuIntervalNotifierOps",
    "MmuNotifier",
    "MmuNotifierOps",
    "MmuNotifierRange",
    "MmuNotifierSubscriptions",
    "MmuNotifyEvent",
    "mmu_interval_check_retry",
    "mmu_interval_notifier_insert",
    "mmu_interval_notifier_insert_locked",
    "mmu_interval_notifier_remove",
    "mmu_interval_read_begin",
    "mmu_interval_read_retry",
    "mmu_interval_set_seq",
    "mmu_notifier_invalidate_range_end",
    "mmu_notifier_invalidate_range_start",
    "mmu_notifier_invalidate_range_start_nonblock",
    "mmu_notifier_range_blockable",
    "mmu_notifier_register",
    "mmu_notifier_release",
    "mmu_notifier_unregister",
]

#: ``struct mmu_notifier_range.flags`` bit: the invalidation may sleep.
MMU_NOTIFIER_RANGE_BLOCKABLE = 1 << 0
#: lockdep class of the pseudo-lock held while invalidation callbacks run.
RANGE_START_MAP = "mmu_notifier_invalidate_range_start"


class MmuNotifyEvent(enum.IntEnum):
    """Why the range is invalidated — ``enum mmu_notifier_event`` (kernel values)."""

    MMU_NOTIFY_UNMAP = 0
    MMU_NOTIFY_CLEAR = 1
    MMU_NOTIFY_PROTECTION_VMA = 2
    MMU_NOTIFY_PROTECTION_PAGE = 3
    MMU_NOTIFY_SOFT_DIRTY = 4
    MMU_NOTIFY_RELEASE = 5
    MMU_NOTIFY_MIGRATE = 6
    MMU_NOTIFY_EXCLUSIVE = 7


@dataclass
class MmuNotifierRange:
    """One invalidation — ``struct mmu_notifier_range``.

    Attributes:
        mm: the address space.
        start, end: ``[start, end)``, page aligned.
        event: :class:`MmuNotifyEvent`.
        flags: ``MMU_NOTIFIER_RANGE_BLOCKABLE`` when callbacks may sleep.
        owner: for ``MMU_NOTIFY_MIGRATE``: the ``pgmap_owner`` of the migration (drivers skip
            invalidations they caused themselves).
    """

    mm: MmStruct
    start: int
    end: int
    event: MmuNotifyEvent = MmuNotifyEvent.MMU_NOTIFY_CLEAR
    flags: int = MMU_NOTIFIER_RANGE_BLOCKABLE
    owner: Any = None


def mmu_notifier_range_blockable(rng: MmuNotifierRange) -> bool:
    """``mmu_notifier_range_blockable()``: may the callbacks sleep?

    Kernel: include/linux/mmu_notifier.h, mmu_notifier_range_blockable().
    """
    return bool(rng.flags & MMU_NOTIFIER_RANGE_BLOCKABLE)


@runtime_checkable
class MmuIntervalNotifierOps(Protocol):
    """``struct mmu_interval_notifier_ops``: one callback."""

    def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange,
                   cur_seq: int) -> bool:
        """Called for every invalidation overlapping ``sub``; see the module docstring.

        Must call :func:`mmu_interval_set_seq` under the driver's user lock and return True;
        may return False only when ``mmu_notifier_range_blockable(rng)`` is false.

        Kernel: include/linux/mmu_notifier.h, struct mmu_interval_notifier_ops.invalidate.
        """
        ...


class MmuIntervalNotifier:
    """An interval subscription on one mm — ``struct mmu_interval_notifier``.

    Create one, then :func:`mmu_interval_notifier_insert` it. Attributes after insertion:
    ``mm``, ``start``, ``last`` (inclusive), ``ops``, ``invalidate_seq``.
    """

    def __init__(self) -> None:
        self.mm: MmStruct | None = None
        self.start = 0
        self.last = 0
        self.ops: Any = None
        self.invalidate_seq = 0
        self.in_tree = False
        self.deferred = False
        self.removed = False

    @property
    def end(self) -> int:
        """First address after the interval."""
        return self.last + 1

    def __repr__(self) -> str:
        return (f"<MmuIntervalNotifier [{self.start:#x}, {self.last:#x}] "
                f"seq={self.invalidate_seq}>")


class MmuNotifierOps:
    """``struct mmu_notifier_ops`` of a classic notifier (override what you need)."""

    def invalidate_range_start(self, sub: MmuNotifier, rng: MmuNotifierRange) -> int:
        """Before PTEs of ``rng`` change. Return 0, or ``-EAGAIN`` for a non-blockable range.

        Kernel: include/linux/mmu_notifier.h, struct mmu_notifier_ops.invalidate_range_start.
        """
        return 0

    def invalidate_range_end(self, sub: MmuNotifier, rng: MmuNotifierRange) -> None:
        """After PTEs of ``rng`` changed.

        Kernel: include/linux/mmu_notifier.h, struct mmu_notifier_ops.invalidate_range_end.
        """

    def release(self, sub: MmuNotifier, mm: MmStruct) -> None:
        """The mm is going away (exit_mmap): stop every access to it.

        Kernel: include/linux/mmu_notifier.h, struct mmu_notifier_ops.release.
        """


class MmuNotifier:
    """A classic notifier — ``struct mmu_notifier``. Register with :func:`mmu_notifier_register`."""

    def __init__(self, ops: MmuNotifierOps) -> None:
        self.ops = ops
        self.mm: MmStruct | None = None
        self.released = False


class MmuNotifierSubscriptions:
    """Per-mm notifier state — ``struct mmu_notifier_subscriptions``.

    Created by :meth:`MmStruct.notifier_subscriptions() <dmabuf.mm.vma.MmStruct>`.
    """

    def __init__(self, mm: MmStruct) -> None:
        sched = mm.machine.sched
        self.mm = mm
        self.lock = sched.lock("mmu_notifier_subscriptions.lock")
        self.wq = sched.condition(self.lock, "mmu_notifier_subscriptions.wq")
        self.invalidate_seq = 2
        self.active_invalidate_ranges = 0
        self.has_itree = False
        self.itree: list[MmuIntervalNotifier] = []
        self._starts = np.zeros(0, dtype=np.uint64)
        self._lasts = np.zeros(0, dtype=np.uint64)
        self.deferred: list[MmuIntervalNotifier] = []
        self.classic: list[MmuNotifier] = []
        #: Statistics: invalidations seen / invalidations that hit an interval subscription.
        self.invalidations = 0
        self.itree_invalidations = 0

    # helpers (call with self.lock held) ------------------------------------------------------
    def _tree_insert(self, sub: MmuIntervalNotifier) -> None:
        self.itree.append(sub)
        sub.in_tree = True
        self._rebuild()

    def _tree_remove(self, sub: MmuIntervalNotifier) -> None:
        if sub in self.itree:
            self.itree.remove(sub)
        sub.in_tree = False
        self._rebuild()

    def _rebuild(self) -> None:
        self.itree.sort(key=lambda s: (s.start, s.last))
        self._starts = np.array([s.start for s in self.itree], dtype=np.uint64)
        self._lasts = np.array([s.last for s in self.itree], dtype=np.uint64)

    def _overlapping(self, start: int, last: int) -> list[MmuIntervalNotifier]:
        if not self.itree:
            return []
        hit = np.flatnonzero((self._starts <= np.uint64(last)) & (self._lasts >= np.uint64(start)))
        return [self.itree[i] for i in hit.tolist()]

    def is_invalidating(self) -> bool:
        """``mn_itree_is_invalidating()``: the mm seq is odd.

        Kernel: mm/mmu_notifier.c, mn_itree_is_invalidating().
        """
        return bool(self.invalidate_seq & 1)

    def describe(self) -> dict[str, Any]:
        """Snapshot: seq, active ranges, subscriptions.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"invalidate_seq": self.invalidate_seq,
                "active_invalidate_ranges": self.active_invalidate_ranges,
                "interval_notifiers": len(self.itree), "deferred": len(self.deferred),
                "classic_notifiers": len(self.classic), "invalidations": self.invalidations,
                "itree_invalidations": self.itree_invalidations}


def _lockdep(mm: MmStruct) -> Any:
    return mm.machine.lockdep


def _map_touch(mm: MmStruct) -> None:
    """``lock_map_acquire(&__mmu_notifier_invalidate_range_start_map); lock_map_release()``."""
    ld = _lockdep(mm)
    if ld.enabled:
        ld.acquire(mm.range_start_map, RANGE_START_MAP)
        ld.release(mm.range_start_map, RANGE_START_MAP)


# ------------------------------------------------------------------------------------------------
# interval notifiers
# ------------------------------------------------------------------------------------------------


def _check_ops(ops: Any) -> None:
    if not (callable(getattr(ops, "invalidate", None))):
        raise TypeError("ops must have an invalidate(sub, range, cur_seq) -> bool method "
                        "(struct mmu_interval_notifier_ops)")


def _insert(sub: MmuIntervalNotifier, mm: MmStruct, subs: MmuNotifierSubscriptions, start: int,
            length: int, ops: Any) -> None:
    """``__mmu_interval_notifier_insert()``."""
    if not isinstance(sub, MmuIntervalNotifier):
        raise TypeError(f"sub must be an MmuIntervalNotifier, not {type(sub).__name__}")
    _check_ops(ops)
    for v, what in ((start, "start"), (length, "length")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise DmaBufError(errno.EINVAL, f"mmu_interval_notifier_insert: {what} must be a "
                              f"non-negative int, not {v!r}")
    if length == 0 or start + length - 1 >= (1 << 64):
        raise DmaBufError(errno.EOVERFLOW, f"mmu_interval_notifier_insert: [{start:#x}, "
                          f"+{length:#x}) is empty or overflows")
    if mm.users <= 0:
        raise DmaBufError(errno.EINVAL, "mmu_interval_notifier_insert: the mm has exited "
                          "(mm_users == 0); call it while the process is alive")
    if sub.mm is not None and not sub.removed:
        raise ContractViolation("mmu_interval_notifier_insert", f"{sub!r} is already inserted")
    sub.mm = mm
    sub.ops = ops
    sub.start = start
    sub.last = start + length - 1
    sub.removed = False
    sub.in_tree = False
    with subs.lock:
        if subs.active_invalidate_ranges:
            if subs.is_invalidating():
                sub.deferred = True
                subs.deferred.append(sub)
            else:
                subs.invalidate_seq |= 1
                subs._tree_insert(sub)
            sub.invalidate_seq = subs.invalidate_seq
        else:
            if subs.is_invalidating():  # pragma: no cover - kernel WARN_ON
                mm.machine.warn("mmu_interval_notifier_insert", "odd seq with no active range")
            sub.invalidate_seq = subs.invalidate_seq - 1
            subs._tree_insert(sub)
        subs.has_itree = True


def mmu_interval_notifier_insert(sub: MmuIntervalNotifier, mm: MmStruct, start: int,
                                 length: int, ops: Any) -> None:
    """Subscribe ``sub`` to invalidations of ``[start, start + length)`` — the kernel function.

    Args:
        sub: a fresh (or removed) :class:`MmuIntervalNotifier`.
        mm: the address space (must be alive: ``mm_users > 0``).
        start, length: the interval (bytes; any alignment).
        ops: an object with ``invalidate(sub, range, cur_seq) -> bool``.
    Context: may sleep; takes ``mmap_lock`` for writing the first time an mm gets interval
        notifiers (``mmu_notifier_register(NULL, mm)``) — so the caller must not hold it (use
        :func:`mmu_interval_notifier_insert_locked` then).
    Raises:
        DmaBufError(EOVERFLOW): zero length or ``start + length - 1`` overflows 64 bits.
        DmaBufError(EINVAL): the mm has exited; bad argument values.
        ContractViolation: ``sub`` already inserted.
        TypeError: ``ops`` lacks ``invalidate``.
    Kernel: mm/mmu_notifier.c, mmu_interval_notifier_insert().
    """
    subs = mm.notifier_subscriptions(create=False)
    if subs is None or not subs.has_itree:
        mm.machine.lockdep.assert_not_held(mm.mmap_lock, "might_lock",
                                           "mmap_lock (mmu_interval_notifier_insert)")
        mm.mmap_write_lock()
        try:
            subs = mm.notifier_subscriptions(create=True)
            assert subs is not None
        finally:
            mm.mmap_write_unlock()
    _insert(sub, mm, subs, start, length, ops)


def mmu_interval_notifier_insert_locked(sub: MmuIntervalNotifier, mm: MmStruct, start: int,
                                        length: int, ops: Any) -> None:
    """:func:`mmu_interval_notifier_insert` with ``mmap_lock`` held for writing by the caller.

    Raises: as :func:`mmu_interval_notifier_insert`; ContractViolation("mmap_assert_write_locked")
        when the caller does not hold the mmap lock.
    Kernel: mm/mmu_notifier.c, mmu_interval_notifier_insert_locked().
    """
    mm.machine.lockdep.assert_held(mm.mmap_lock, "mmap_assert_write_locked", "mmap_lock")
    subs = mm.notifier_subscriptions(create=True)
    assert subs is not None
    _insert(sub, mm, subs, start, length, ops)


def mmu_interval_notifier_remove(sub: MmuIntervalNotifier) -> None:
    """Unsubscribe; wait until no invalidation callback for ``sub`` can still run.

    Context: may sleep (until the invalidation in progress ends); the caller must not hold any
        lock the ``invalidate`` callback takes (lockdep checks, as the kernel's).
    Raises: ContractViolation("mmu_interval_notifier_remove"): never inserted or removed twice.
    Kernel: mm/mmu_notifier.c, mmu_interval_notifier_remove().
    """
    mm = sub.mm
    if mm is None or sub.removed:
        raise ContractViolation("mmu_interval_notifier_remove", f"{sub!r} is not inserted")
    mm.machine.lockdep.might_sleep("mmu_interval_notifier_remove")
    subs = mm.notifier_subscriptions(create=False)
    assert subs is not None
    seq = 0
    with subs.lock:
        if subs.is_invalidating():
            if not sub.in_tree:
                if sub in subs.deferred:
                    subs.deferred.remove(sub)
                sub.deferred = False
            else:
                sub.deferred = True
                subs.deferred.append(sub)
                seq = subs.invalidate_seq
        else:
            subs._tree_remove(sub)
        sub.removed = True
    _map_touch(mm)
    if seq:
        with subs.lock:
            while subs.invalidate_seq == seq:
                subs.wq.wait(what="mmu_interval_notifier_remove: invalidation in progress")


def mmu_interval_read_begin(sub: MmuIntervalNotifier) -> int:
    """Begin a read side critical section; returns the seq to check later — the kernel function.

    Sleeps while an invalidation overlapping ``sub`` is in progress (its seq equals the mm's
    odd seq), so the returned seq is either idle or already superseded.

    Context: may sleep; must not be called holding the driver's user lock (lockdep).
    Raises: ContractViolation("mmu_interval_read_begin"): ``sub`` is not inserted.
    Kernel: mm/mmu_notifier.c, mmu_interval_read_begin().
    """
    mm = sub.mm
    if mm is None or sub.removed:
        raise ContractViolation("mmu_interval_read_begin", f"{sub!r} is not inserted")
    subs = mm.notifier_subscriptions(create=False)
    assert subs is not None
    with subs.lock:
        seq = sub.invalidate_seq
        is_invalidating = seq == subs.invalidate_seq
    _map_touch(mm)
    if is_invalidating:
        mm.machine.lockdep.might_sleep("mmu_interval_read_begin")
        with subs.lock:
            while subs.invalidate_seq == seq:
                subs.wq.wait(what="mmu_interval_read_begin: invalidation in progress")
    return seq


def mmu_interval_read_retry(sub: MmuIntervalNotifier, seq: int) -> bool:
    """True if an invalidation ran since ``read_begin`` — call under the user lock.

    Kernel: include/linux/mmu_notifier.h, mmu_interval_read_retry().
    """
    return sub.invalidate_seq != seq


def mmu_interval_check_retry(sub: MmuIntervalNotifier, seq: int) -> bool:
    """Lockless early check of :func:`mmu_interval_read_retry` — the kernel function.

    Kernel: include/linux/mmu_notifier.h, mmu_interval_check_retry().
    """
    return sub.invalidate_seq != seq


def mmu_interval_set_seq(sub: MmuIntervalNotifier, cur_seq: int) -> None:
    """Record the invalidation's seq in ``sub`` — call from ``invalidate`` under the user lock.

    Kernel: include/linux/mmu_notifier.h, mmu_interval_set_seq().
    """
    sub.invalidate_seq = cur_seq


# ------------------------------------------------------------------------------------------------
# classic notifiers
# ------------------------------------------------------------------------------------------------


def mmu_notifier_register(sub: MmuNotifier, mm: MmStruct) -> None:
    """Register a classic notifier on ``mm`` — ``mmu_notifier_register()``.

    Context: takes ``mmap_lock`` for writing (the caller must not hold it).
    Raises: ContractViolation: ``sub`` already registered; DmaBufError(EINVAL): the mm exited.
    Kernel: mm/mmu_notifier.c, mmu_notifier_register().
    """
    if not isinstance(sub, MmuNotifier):
        raise TypeError(f"sub must be an MmuNotifier, not {type(sub).__name__}")
    if sub.mm is not None:
        raise ContractViolation("mmu_notifier_register", "notifier already registered")
    if mm.users <= 0:
        raise DmaBufError(errno.EINVAL, "mmu_notifier_register: the mm has exited")
    mm.mmap_write_lock()
    try:
        subs = mm.notifier_subscriptions(create=True)
        assert subs is not None
        with subs.lock:
            subs.classic.append(sub)
        sub.mm = mm
    finally:
        mm.mmap_write_unlock()


def mmu_notifier_unregister(sub: MmuNotifier, mm: MmStruct) -> None:
    """Unregister; calls ``release`` first if the mm has not exited — ``mmu_notifier_unregister()``.

    Kernel: mm/mmu_notifier.c, mmu_notifier_unregister().
    """
    subs = mm.notifier_subscriptions(create=False)
    if subs is None or sub.mm is not mm:
        raise ContractViolation("mmu_notifier_unregister", "notifier not registered on this mm")
    with subs.lock:
        present = sub in subs.classic
        if present:
            subs.classic.remove(sub)
    if present and not sub.released:
        sub.released = True
        sub.ops.release(sub, mm)
    sub.mm = None


def mmu_notifier_release(mm: MmStruct) -> None:
    """The mm is exiting: call every classic notifier's ``release`` — ``__mmu_notifier_release()``.

    Kernel: mm/mmu_notifier.c, __mmu_notifier_release() (from exit_mmap()).
    """
    subs = mm.notifier_subscriptions(create=False)
    if subs is None:
        return
    with subs.lock:
        lst = list(subs.classic)
        subs.classic.clear()
    for s in lst:
        if not s.released:
            s.released = True
            s.ops.release(s, mm)


# ------------------------------------------------------------------------------------------------
# invalidation (producers: dmabuf.mm.vma / migrate)
# ------------------------------------------------------------------------------------------------


def _itree_invalidate(subs: MmuNotifierSubscriptions, rng: MmuNotifierRange) -> None:
    """``mn_itree_invalidate()``: mark the mm invalidating and call overlapping subscriptions."""
    with subs.lock:
        subs.active_invalidate_ranges += 1
        hits = subs._overlapping(rng.start, rng.end - 1)
        if hits:
            subs.invalidate_seq |= 1
            subs.itree_invalidations += 1
        cur_seq = subs.invalidate_seq
    for sub in hits:
        try:
            ok = sub.ops.invalidate(sub, rng, cur_seq)
        except BaseException:
            # A callback bug: end this range so waiters are not stuck forever, then report.
            _itree_inv_end(subs)
            raise
        if not ok:
            if mmu_notifier_range_blockable(rng):
                rng.mm.machine.warn("mmu_interval_notifier", "invalidate returned false for a "
                                    "blockable range")
                continue
            _itree_inv_end(subs)
            raise DmaBufError(errno.EAGAIN, "mmu notifier: a subscriber could not invalidate "
                              "without sleeping (non-blockable range); retry blocking")


def _itree_inv_end(subs: MmuNotifierSubscriptions) -> None:
    """``mn_itree_inv_end()``: the last active range makes the seq even and applies deferrals."""
    with subs.lock:
        subs.active_invalidate_ranges -= 1
        if subs.active_invalidate_ranges or not subs.is_invalidating():
            return
        subs.invalidate_seq += 1
        for sub in subs.deferred:
            if not sub.in_tree:
                if not sub.removed:
                    subs._tree_insert(sub)
            else:
                subs._tree_remove(sub)
            sub.deferred = False
        subs.deferred.clear()
        subs.wq.notify_all()


def _start(rng: MmuNotifierRange, blockable: bool) -> None:
    if not isinstance(rng, MmuNotifierRange):
        raise TypeError(f"range must be an MmuNotifierRange, not {type(rng).__name__}")
    mm = rng.mm
    ld = mm.machine.lockdep
    if blockable:
        ld.might_sleep("mmu_notifier_invalidate_range_start")
    if ld.enabled:
        ld.acquire(mm.range_start_map, RANGE_START_MAP)
    try:
        subs = mm.notifier_subscriptions(create=False)
        if subs is None:
            return
        if blockable:
            rng.flags |= MMU_NOTIFIER_RANGE_BLOCKABLE
        else:
            rng.flags &= ~MMU_NOTIFIER_RANGE_BLOCKABLE
        with subs.lock:
            subs.invalidations += 1
            has_itree = subs.has_itree
            classic = list(subs.classic)
        if has_itree:
            _itree_invalidate(subs, rng)
        started: list[MmuNotifier] = []
        for s in classic:
            ret = s.ops.invalidate_range_start(s, rng)
            if ret:
                if blockable:
                    mm.machine.warn("mmu_notifier", "invalidate_range_start failed on a "
                                    "blockable range")
                    started.append(s)
                    continue
                for t in started:
                    t.ops.invalidate_range_end(t, rng)
                if has_itree:
                    _itree_inv_end(subs)
                raise DmaBufError(errno.EAGAIN, "mmu notifier: invalidate_range_start would "
                                  "block on a non-blockable range")
            started.append(s)
    finally:
        if ld.enabled:
            ld.release(mm.range_start_map, RANGE_START_MAP)


def mmu_notifier_invalidate_range_start(rng: MmuNotifierRange) -> None:
    """Announce that the PTEs of ``rng`` are about to change — the kernel function.

    Calls every overlapping interval subscription's ``invalidate`` and every classic
    notifier's ``invalidate_range_start``. Must be paired with
    :func:`mmu_notifier_invalidate_range_end`.

    Context: may sleep (the callbacks may); typically called with ``mmap_lock`` held.
    Kernel: include/linux/mmu_notifier.h, mmu_notifier_invalidate_range_start().
    """
    _start(rng, True)


def mmu_notifier_invalidate_range_start_nonblock(rng: MmuNotifierRange) -> None:
    """Non-blocking variant (OOM reaper): callbacks may refuse.

    Raises: DmaBufError(EAGAIN): a callback refused; then do NOT call ``range_end``.
    Kernel: include/linux/mmu_notifier.h, mmu_notifier_invalidate_range_start_nonblock().
    """
    _start(rng, False)


def mmu_notifier_invalidate_range_end(rng: MmuNotifierRange) -> None:
    """The PTE change of ``rng`` is complete — ``mmu_notifier_invalidate_range_end()``.

    The last concurrent invalidation makes the mm seq even again and wakes
    :func:`mmu_interval_read_begin` waiters.

    Kernel: include/linux/mmu_notifier.h, mmu_notifier_invalidate_range_end().
    """
    subs = rng.mm.notifier_subscriptions(create=False)
    if subs is None:
        return
    if subs.has_itree:
        _itree_inv_end(subs)
    with subs.lock:
        classic = list(subs.classic)
    for s in classic:
        s.ops.invalidate_range_end(s, rng)


def invalidate(mm: MmStruct, start: int, end: int, event: MmuNotifyEvent, *,
               owner: Any = None) -> _InvalidationScope:
    """Context manager bracketing a PTE change with range start / end (model helper).

    Kernel: include/linux/mmu_notifier.h, mmu_notifier_invalidate_range_start() / _end() (as a
    context manager).
    """
    return _InvalidationScope(MmuNotifierRange(mm, start, end, event, owner=owner))


class _InvalidationScope:
    def __init__(self, rng: MmuNotifierRange) -> None:
        self.range = rng

    def __enter__(self) -> MmuNotifierRange:
        mmu_notifier_invalidate_range_start(self.range)
        return self.range

    def __exit__(self, *exc: object) -> None:
        mmu_notifier_invalidate_range_end(self.range)


# A callable adapter so tests and drivers can pass a function as ops.
class FunctionOps:
    """Wrap ``fn(sub, range, cur_seq) -> bool`` as :class:`MmuIntervalNotifierOps`."""

    def __init__(self, fn: Callable[[MmuIntervalNotifier, MmuNotifierRange, int], bool]) -> None:
        self.fn = fn

    def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange, cur_seq: int) -> bool:
        """Call the wrapped function.

        Kernel: include/linux/mmu_notifier.h, struct mmu_interval_notifier_ops.invalidate.
        """
        return self.fn(sub, rng, cur_seq)
