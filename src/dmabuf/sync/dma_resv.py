"""drivers/dma-buf/dma-resv.c + include/linux/dma-resv.h: reservation objects.

A reservation object (:class:`DmaResv`) orders every access to one buffer. It is a ww_mutex of
the Wait-Die class ``reservation_ww_class`` (:func:`reservation_ww_class`, one per machine) plus
a list of fences, each tagged with a :class:`DmaResvUsage`:

* ``KERNEL`` < ``WRITE`` < ``READ`` < ``BOOKKEEP``; a query for usage U sees every fence whose
  usage is <= U (I-R5: the sets are nested);
* writers (the lock holder) update the list: reserve slots with :meth:`DmaResv.reserve_fences`,
  then :meth:`DmaResv.add_fence`; readers need no lock (the kernel's RCU): the unlocked cursor
  :class:`DmaResvIter` restarts when the list it walks is replaced, and says so
  (``is_restarted``), so a consumer that accumulates can start over.

Slot budget (spec §2.2). ``add_fence`` consumes a slot reserved in the *same* locked section.
As the kernel with ``CONFIG_DEBUG_MUTEXES``, the model in debug mode (lock tracker on) forgets
the reservation at every unlock (``dma_resv_reset_max_fences``), so a missing reserve is caught
on the first add instead of when the spare slots run out; ``add_fence`` without a slot raises
:class:`~dmabuf.errors.ContractViolation` (``BUG_ON`` in the kernel). Reallocation follows
``dma_resv_reserve_fences``: a new list of ``max(num + n, 2 * max)`` slots (the first one
``max(4, roundup_pow_of_two(n))``), rounded up to the kmalloc bucket the way
``kmalloc_size_roundup`` does, keeping the unsignalled fences in order and dropping
(garbage-collecting) the signalled ones.

Replacement in ``add_fence``: the first entry (in list order) that is signalled, or that has the
same context, a usage >= the new one and a fence the new one is later than or equal to, takes
the new fence. So re-adding with a lower usage *promotes* an entry (BOOKKEEP -> READ), while
adding with a higher usage keeps both entries: a fence is never degraded.

Locking: the list is changed only under the lock (asserted through the lock tracker); the
unlocked readers see either the old or the new list object, and entries replaced in place.
With the lock tracker off, an uncontended context-less ``lock()``/``unlock()`` is one
non-blocking acquire/release of the base mutex (the kernel's fast path). Times are seconds on
the machine scheduler's clock, as for fences.

Deliberate differences from the kernel: ``wait_timeout(..., 0)`` polls each fence (the kernel
passes a 1-jiffy timeout to each fence wait when asked for 0); an unlocked cursor whose object's
list becomes empty (``copy_fences`` from an empty source) ends instead of returning its previous
fence again; ``-ENOMEM`` is never produced.

Kernel: drivers/dma-buf/dma-resv.c, include/linux/dma-resv.h.
"""

from __future__ import annotations

import enum
import errno
import math
from collections.abc import Iterator
from typing import Any

from dmabuf.debug import RESV_CLASS
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.sync.dma_fence import DmaFence, dma_fence_is_container
from dmabuf.sync.dma_fence_array import dma_fence_array_create
from dmabuf.sync.ww_mutex import WwAcquireCtx, WwClass, WwMutex

__all__ = [
    "DmaResv",
    "DmaResvIter",
    "DmaResvUsage",
    "kmalloc_size_roundup",
    "reservation_ww_class",
    "usage_rw",
]


class DmaResvUsage(enum.IntEnum):
    """How a fence uses the resource — ``enum dma_resv_usage``; ordered, lower is stronger.

    * ``KERNEL`` — kernel memory management (moves, clears): always waited for before touching
      the memory unless it is pinned.
    * ``WRITE`` — implicit-sync writer.
    * ``READ`` — implicit-sync reader.
    * ``BOOKKEEP`` — no implicit sync (preemption fences, page-table updates, explicitly synced
      submissions).

    Kernel: include/linux/dma-resv.h, enum dma_resv_usage.
    """

    KERNEL = 0
    WRITE = 1
    READ = 2
    BOOKKEEP = 3


_USAGE_NAMES = ("kernel", "write", "read", "bookkeep")


def usage_rw(write: bool) -> DmaResvUsage:
    """The usage an implicit-sync access must *wait for* — ``dma_resv_usage_rw()``.

    The kernel's comment: "This looks confusing at first sight, but is indeed correct": a new
    *writer* must wait for all existing readers and writers, so it queries up to ``READ``; a
    new *reader* only waits for the writers, so it queries up to ``WRITE``. The returned value
    is the query level, not the usage of the new access.

    Args:
        write: True for a write access.
    Context: any. Returns: ``READ`` if ``write`` else ``WRITE``.
    Raises: TypeError if ``write`` is not a bool.
    Kernel: include/linux/dma-resv.h, dma_resv_usage_rw().
    """
    if not isinstance(write, bool):
        raise TypeError(f"usage_rw(write): write must be a bool, got {type(write).__name__}")
    return DmaResvUsage.READ if write else DmaResvUsage.WRITE


def _check_usage(usage: object, what: str) -> DmaResvUsage:
    if isinstance(usage, DmaResvUsage):
        return usage
    if isinstance(usage, bool) or not isinstance(usage, int):
        raise TypeError(f"{what}: usage must be a DmaResvUsage, got {type(usage).__name__}")
    try:
        return DmaResvUsage(usage)
    except ValueError:
        raise DmaBufError(errno.EINVAL, f"{what}: usage {usage} is not a DmaResvUsage "
                          "(KERNEL=0, WRITE=1, READ=2, BOOKKEEP=3)") from None


class _ReservationWwClass(WwClass):
    """The machine's ``reservation_ww_class`` (``DEFINE_WD_CLASS``), built by Machine.state()."""

    __slots__ = ()

    def __init__(self, machine: Machine) -> None:
        super().__init__("reservation_ww_class", wait_die=True)
        assert self.mutex_name == RESV_CLASS


def reservation_ww_class(machine: Machine | None = None) -> WwClass:
    """The Wait-Die class of every reservation lock — ``reservation_ww_class``.

    One per machine (its stamp counter is kernel-global state). Acquire contexts for
    reservation objects are made from it: ``WwAcquireCtx(reservation_ww_class())``.

    Args:
        machine: the machine (default: current).
    Context: any. Returns: the class (its mutexes' lock-tracker class is ``debug.RESV_CLASS``).
    Kernel: drivers/dma-buf/dma-resv.c, DEFINE_WD_CLASS(reservation_ww_class).
    """
    m = machine if machine is not None else current_machine()
    return m.state(_ReservationWwClass)


# kmalloc caches of SLUB with KMALLOC_MIN_SIZE 8 (kmalloc-8 … kmalloc-8k).
_KMALLOC_BUCKETS = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192)
_PAGE_SIZE = 4096
# struct dma_resv_list { struct rcu_head rcu (16 bytes); u32 num_fences, max_fences; table[] }
_LIST_HEADER = 24
_ENTRY_SIZE = 8


def kmalloc_size_roundup(size: int) -> int:
    """The size kmalloc really allocates for ``size`` bytes — ``kmalloc_size_roundup()``.

    SLUB buckets 8 … 8192 (with the 96 and 192 byte caches); larger requests go to the page
    allocator and round up to a power-of-two number of pages.

    Args: size: bytes (>= 0). Returns: the bucket size.
    Kernel: mm/slab_common.c, kmalloc_size_roundup().
    """
    if size <= _KMALLOC_BUCKETS[-1]:
        for b in _KMALLOC_BUCKETS:
            if size <= b:
                return b
    pages = -(-size // _PAGE_SIZE)
    return _PAGE_SIZE << max(0, (pages - 1).bit_length())


def _roundup_pow_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


class _FenceList:
    """``struct dma_resv_list``: the slot table (entries ``(fence, usage)``) and its capacity."""

    __slots__ = ("max_fences", "table")

    def __init__(self, max_fences: int) -> None:
        # dma_resv_list_alloc(): the capacity is whatever the kmalloc bucket holds.
        size = kmalloc_size_roundup(_LIST_HEADER + _ENTRY_SIZE * max_fences)
        self.max_fences = (size - _LIST_HEADER) // _ENTRY_SIZE
        self.table: list[tuple[DmaFence, DmaResvUsage]] = []

    @property
    def num_fences(self) -> int:
        return len(self.table)

    def free(self) -> None:
        """``dma_resv_list_free()``: drop the list's references. The table itself stays
        readable for unlocked readers still walking it (kfree_rcu); their get_unless_zero()
        fails on a fence released here, and they restart."""
        for fence, _ in self.table:
            fence.put()


class DmaResv:
    """A reservation object — ``struct dma_resv`` (``dma_resv_init()``).

    Args:
        machine: the machine whose scheduler, lock tracker and reservation class it uses
            (default: the current machine).
    Context: any; never blocks.
    Kernel: drivers/dma-buf/dma-resv.c, dma_resv_init().
    """

    __slots__ = ("__weakref__", "_base", "_fences", "_lockdep", "machine", "ww_mutex")

    def __init__(self, machine: Machine | None = None) -> None:
        m = machine if machine is not None else current_machine()
        self.machine = m
        #: the reservation lock (``obj->lock``), a Wait-Die ww_mutex of reservation_ww_class.
        self.ww_mutex = WwMutex(reservation_ww_class(m), name=f"resv@{id(self):#x}", machine=m)
        self._lockdep = m.lockdep
        self._base = self.ww_mutex._m  # the base mutex, for the fast path of lock()
        self._fences: _FenceList | None = None

    def __repr__(self) -> str:
        f = self._fences
        n = f.num_fences if f is not None else 0
        state = "locked" if self.is_locked() else "unlocked"
        return f"<DmaResv {self.ww_mutex.name} {n} fence(s), {state}>"

    def fini(self) -> None:
        """Destroy the object: drop every fence reference — ``dma_resv_fini()``.

        Context: the object is dead (nobody else uses it); never blocks.
        Raises: ContractViolation if it is still locked (``ww_mutex_destroy`` debug check).
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_fini().
        """
        if self.ww_mutex.is_locked():
            raise ContractViolation("ww_mutex_destroy", f"dma_resv_fini({self.ww_mutex.name}) "
                                    "while it is locked; unlock it first")
        self.ww_mutex.destroy()
        fences, self._fences = self._fences, None
        if fences is not None:
            fences.free()

    # ---------------------------------------------------------------------------------------
    # locking
    # ---------------------------------------------------------------------------------------
    def lock(self, ctx: WwAcquireCtx | None = None) -> None:
        """Lock the reservation object — ``dma_resv_lock()``.

        Args:
            ctx: the acquire context (of :func:`reservation_ww_class`), or None to lock a
                single object (no deadlock avoidance; never -EDEADLK).
        Context: may block.
        Returns: None (the kernel's 0).
        Raises: WouldDeadlock (EDEADLK) when ``ctx`` holds other reservation locks and must
            back off (then unlock them all and :meth:`lock_slow`); DmaBufError(EALREADY) if
            ``ctx`` already holds this one; ContractViolation on ctx misuse.
        Kernel: include/linux/dma-resv.h, dma_resv_lock() -> ww_mutex_lock().
        """
        # The uncontended, context-less case with the lock tracker off is one non-blocking
        # acquire of the base mutex (the kernel's fast path, __mutex_trylock_fast).
        if ctx is None and not self._lockdep.enabled and self._base.acquire(False):
            return
        self.ww_mutex.lock(ctx)

    def lock_interruptible(self, ctx: WwAcquireCtx | None = None) -> None:
        """Lock, interruptible by a signal — ``dma_resv_lock_interruptible()``.

        Args: ctx: as :meth:`lock`.
        Context: may block.
        Returns: None.
        Raises: DmaBufError(EINTR) if a signal (``Interrupts.of(m).send``) interrupts the
            wait; otherwise as :meth:`lock`.
        Kernel: include/linux/dma-resv.h, dma_resv_lock_interruptible().
        """
        self.ww_mutex.lock_interruptible(ctx)

    def lock_slow(self, ctx: WwAcquireCtx) -> None:
        """Sleep for the contended lock after a back-off — ``dma_resv_lock_slow()``.

        Args: ctx: the context that got -EDEADLK on this object and unlocked everything.
        Context: may block; the context holds no locks.
        Returns: None (never fails).
        Raises: ContractViolation without a prior -EDEADLK or with locks still held.
        Kernel: include/linux/dma-resv.h, dma_resv_lock_slow().
        """
        self.ww_mutex.lock_slow(ctx)

    def lock_slow_interruptible(self, ctx: WwAcquireCtx) -> None:
        """Interruptible :meth:`lock_slow` — ``dma_resv_lock_slow_interruptible()``.

        Args: ctx: as :meth:`lock_slow`.
        Context: may block. Returns: None.
        Raises: DmaBufError(EINTR) when interrupted; ContractViolation as :meth:`lock_slow`.
        Kernel: include/linux/dma-resv.h, dma_resv_lock_slow_interruptible().
        """
        self.ww_mutex.lock_slow_interruptible(ctx)

    def trylock(self) -> bool:
        """Try to lock without a context, never blocking — ``dma_resv_trylock()``.

        Context: any; never blocks. Returns: True if locked now.
        Kernel: include/linux/dma-resv.h, dma_resv_trylock() -> ww_mutex_trylock(lock, NULL).
        """
        return self.ww_mutex.trylock(None)

    def unlock(self) -> None:
        """Unlock; in debug mode forget the reserved slots first — ``dma_resv_unlock()``.

        Context: the holder; never blocks.
        Returns: None.
        Raises: ContractViolation if not locked (or, lock tracker on, not held by the caller).
        Kernel: include/linux/dma-resv.h, dma_resv_unlock(), dma_resv_reset_max_fences().
        """
        ww = self.ww_mutex
        if self._lockdep.enabled:
            fences = self._fences
            if fences is not None and self._lockdep.is_held(ww):
                # dma_resv_reset_max_fences(): the reservation does not survive the unlock
                fences.max_fences = fences.num_fences
        elif ww.ctx is None and not ww._waiters:
            # Fast path (lock tracker off, no context, nobody waiting): release the base mutex,
            # then the same lost-wake-up re-check as WwMutex.unlock().
            try:
                self._base.release()
            except RuntimeError:
                raise ww._not_locked() from None
            if ww._waiters:
                ww._wake_first()
            return
        ww.unlock()

    def is_locked(self) -> bool:
        """Whether anyone holds the lock — ``dma_resv_is_locked()``.

        Context: any. Returns: bool.
        Kernel: include/linux/dma-resv.h, dma_resv_is_locked().
        """
        return self.ww_mutex.is_locked()

    def locking_ctx(self) -> WwAcquireCtx | None:
        """The acquire context of the holder — ``dma_resv_locking_ctx()``.

        Context: any (the value is only stable for the holder). Returns: the ctx or None.
        Kernel: include/linux/dma-resv.h, dma_resv_locking_ctx().
        """
        return self.ww_mutex.ctx

    def assert_held(self) -> None:
        """Raise unless the caller holds the lock — ``dma_resv_assert_held()``.

        Context: any. Returns: None.
        Raises: ContractViolation (with the lock tracker off only "not locked" is detected).
        Kernel: include/linux/dma-resv.h, dma_resv_assert_held().
        """
        ww = self.ww_mutex
        if not ww.is_locked():
            raise ContractViolation("dma_resv_assert_held", f"{ww.name} must be locked by the "
                                    "caller (dma_resv_lock) but is not locked")
        self._lockdep.assert_held(ww, "dma_resv_assert_held", ww.name)

    def held(self) -> bool:
        """Whether the calling thread holds the lock — ``dma_resv_held()`` (lockdep_is_held).

        Returns: with the lock tracker on, the exact answer; with it off, ``is_locked()``.
        Kernel: include/linux/dma-resv.h, dma_resv_held().
        """
        ld = self._lockdep
        if ld.enabled:
            return ld.is_held(self.ww_mutex)
        return self.ww_mutex.is_locked()

    # ---------------------------------------------------------------------------------------
    # the fence list (writers: lock held)
    # ---------------------------------------------------------------------------------------
    @property
    def num_fences(self) -> int:
        """Entries in the fence list (signalled ones included until garbage-collected)."""
        f = self._fences
        return f.num_fences if f is not None else 0

    @property
    def max_fences(self) -> int:
        """Capacity of the fence list: ``max_fences - num_fences`` slots are reserved."""
        f = self._fences
        return f.max_fences if f is not None else 0

    def reserve_fences(self, num_fences: int) -> None:
        """Reserve slots for ``num_fences`` more fences — ``dma_resv_reserve_fences()``.

        A no-op when the list has room. Otherwise the list is replaced by a larger one (see
        the module docstring); signalled fences are dropped on the way. The reservation lasts
        until the unlock (enforced in debug mode).

        Args:
            num_fences: how many ``add_fence`` calls will follow (>= 0).
        Context: lock held (asserted); never blocks.
        Returns: None (the kernel's 0; -ENOMEM is not modelled).
        Raises: TypeError for a non-int; DmaBufError(EINVAL) for a negative count;
            ContractViolation if the lock is not held.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_reserve_fences().
        """
        if isinstance(num_fences, bool) or not isinstance(num_fences, int):
            raise TypeError(f"reserve_fences: num_fences must be an int, got "
                            f"{type(num_fences).__name__}")
        if num_fences < 0:
            raise DmaBufError(errno.EINVAL, f"reserve_fences({num_fences}): the count must be "
                              ">= 0")
        self.assert_held()
        old = self._fences
        if old is not None and old.max_fences:
            if old.num_fences + num_fences <= old.max_fences:
                return
            new_max = max(old.num_fences + num_fences, old.max_fences * 2)
        else:
            new_max = max(4, _roundup_pow_of_two(num_fences))
        new = _FenceList(new_max)
        signaled: list[DmaFence] = []
        if old is not None:
            for fence, usage in old.table:
                if fence.is_signaled():
                    signaled.append(fence)
                else:
                    new.table.append((fence, usage))
        # rcu_assign_pointer(): unlocked readers restart. The old list object stays intact for
        # readers still walking it (kfree_rcu); its references moved to the new list, except
        # the signalled fences', dropped now.
        self._fences = new
        for fence in signaled:
            fence.put()

    def add_fence(self, fence: DmaFence, usage: DmaResvUsage) -> None:
        """Add ``fence`` with ``usage``, replacing a superseded entry — ``dma_resv_add_fence()``.

        Takes its own reference. The first entry that is signalled, or that has the same
        context, a usage >= ``usage`` and a fence ``fence`` is later than or equal to, is
        replaced; otherwise the fence takes a reserved slot.

        Args:
            fence: the fence (not a container: the kernel WARNs, and so does the model,
                recording a machine warning and adding it anyway).
            usage: its :class:`DmaResvUsage`.
        Context: lock held (asserted); a slot reserved since the lock was taken; never blocks.
        Returns: None.
        Raises: TypeError for a non-fence or bad usage type; DmaBufError(EINVAL) for an
            out-of-range usage; ContractViolation if the lock is not held or no slot was
            reserved (``BUG_ON`` in the kernel).
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_add_fence().
        """
        if not isinstance(fence, DmaFence):
            raise TypeError(f"add_fence: fence must be a DmaFence, got {type(fence).__name__}")
        usage = _check_usage(usage, "add_fence")
        self.assert_held()
        if dma_fence_is_container(fence):
            self.machine.warn("dma_resv_add_fence", f"container fence {fence!r} added to "
                              f"{self.ww_mutex.name}: add each contained fence individually")
        fobj = self._fences
        if fobj is None:
            raise ContractViolation("dma_resv_add_fence", f"add_fence on {self.ww_mutex.name} "
                                    "without reserve_fences(): no fence slot was reserved "
                                    "(BUG_ON / NULL dereference in the kernel)")
        table = fobj.table
        ctx = fence.context
        for i, (old, old_usage) in enumerate(table):
            if ((old.context == ctx and old_usage >= usage and fence.is_later_or_same(old))
                    or old.is_signaled()):
                table[i] = (fence.get(), usage)
                old.put()
                return
        if len(table) >= fobj.max_fences:
            raise ContractViolation("dma_resv_reserve_fences", f"add_fence on "
                                    f"{self.ww_mutex.name}: no reserved slot left "
                                    f"({len(table)} of {fobj.max_fences} used); call "
                                    "reserve_fences() after taking the lock (BUG_ON)")
        table.append((fence.get(), usage))

    def replace_fences(self, context: int, replacement: DmaFence, usage: DmaResvUsage) -> None:
        """Replace every fence of ``context`` by ``replacement`` — ``dma_resv_replace_fences()``.

        Only valid when the operations of the old fences no longer access the resource once
        ``replacement`` signals (e.g. a preemption fence replaced by a page-table update).

        Args:
            context: the fence context to replace.
            replacement: the new fence (a reference is taken per replaced entry).
            usage: the usage of the new entries.
        Context: lock held (asserted); never blocks.
        Returns: None.
        Raises: TypeError / DmaBufError(EINVAL) for bad arguments; ContractViolation if not
            held.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_replace_fences().
        """
        if isinstance(context, bool) or not isinstance(context, int):
            raise TypeError(f"replace_fences: context must be an int, got "
                            f"{type(context).__name__}")
        if not isinstance(replacement, DmaFence):
            raise TypeError(f"replace_fences: replacement must be a DmaFence, got "
                            f"{type(replacement).__name__}")
        usage = _check_usage(usage, "replace_fences")
        self.assert_held()
        fobj = self._fences
        if fobj is None:
            return
        table = fobj.table
        for i, (old, _) in enumerate(table):
            if old.context != context:
                continue
            table[i] = (replacement.get(), usage)
            old.put()

    def copy_fences(self, src: DmaResv) -> None:
        """Replace this object's fences by ``src``'s unsignalled ones — ``dma_resv_copy_fences()``.

        Reads ``src`` without its lock (restarting on concurrent changes); usages are kept.

        Args:
            src: the source reservation object.
        Context: this object's lock held (asserted); never blocks.
        Returns: None.
        Raises: TypeError if ``src`` is not a DmaResv; ContractViolation if not held.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_copy_fences().
        """
        if not isinstance(src, DmaResv):
            raise TypeError(f"copy_fences: src must be a DmaResv, got {type(src).__name__}")
        self.assert_held()
        new: _FenceList | None = None
        cursor = DmaResvIter(src, DmaResvUsage.BOOKKEEP)
        try:
            for f in cursor.for_each_unlocked():
                if cursor.is_restarted:
                    if new is not None:
                        new.free()
                    new = _FenceList(cursor.num_fences)
                assert new is not None
                new.table.append((f.get(), cursor.fence_usage))
        finally:
            cursor.end()
        old, self._fences = self._fences, new
        if old is not None:
            old.free()

    # ---------------------------------------------------------------------------------------
    # iteration and queries
    # ---------------------------------------------------------------------------------------
    def for_each_fence(self, usage: DmaResvUsage) -> Iterator[tuple[DmaFence, DmaResvUsage]]:
        """Every entry with usage <= ``usage``, signalled ones included —
        ``dma_resv_for_each_fence()``.

        No references are taken (the lock keeps the fences alive).

        Args: usage: the query level.
        Context: lock held (asserted at every step).
        Returns: an iterator of ``(fence, entry_usage)``.
        Kernel: include/linux/dma-resv.h, dma_resv_for_each_fence(); dma_resv_iter_first/next().
        """
        cursor = DmaResvIter(self, usage)
        for fence in cursor.for_each():
            yield fence, cursor.fence_usage

    def for_each_fence_unlocked(self, usage: DmaResvUsage,
                                ) -> Iterator[tuple[DmaFence, DmaResvUsage]]:
        """Unsignalled entries with usage <= ``usage``, without the lock —
        ``dma_resv_for_each_fence_unlocked()``.

        The iteration restarts from the first entry if the list is replaced meanwhile; use a
        :class:`DmaResvIter` directly to see ``is_restarted``. Each fence is referenced while
        it is the current one.

        Args: usage: the query level.
        Context: no lock needed; never blocks.
        Returns: an iterator of ``(fence, entry_usage)``.
        Kernel: include/linux/dma-resv.h, dma_resv_for_each_fence_unlocked().
        """
        cursor = DmaResvIter(self, usage)
        try:
            for fence in cursor.for_each_unlocked():
                yield fence, cursor.fence_usage
        finally:
            cursor.end()

    def get_fences(self, usage: DmaResvUsage) -> list[DmaFence]:
        """References to the unsignalled fences with usage <= ``usage`` — ``dma_resv_get_fences()``.

        Args: usage: the query level.
        Context: no lock needed; never blocks.
        Returns: a new list; the caller owns one reference per fence (``put()`` each).
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_get_fences().
        """
        out: list[DmaFence] = []
        cursor = DmaResvIter(self, usage)
        try:
            for fence in cursor.for_each_unlocked():
                if cursor.is_restarted:
                    for f in out:
                        f.put()
                    out = []
                out.append(fence.get())
        finally:
            cursor.end()
        return out

    def get_singleton(self, usage: DmaResvUsage) -> DmaFence | None:
        """One fence standing for all fences of ``usage`` — ``dma_resv_get_singleton()``.

        Do not add the result back to this object (the kdoc's warning: it can contain fences
        of the object itself).

        Args: usage: the query level.
        Context: no lock needed; never blocks.
        Returns: None when there is none; the single fence (a new reference); or a new
            ``DmaFenceArray`` (fresh context, seqno 1, signal on all) of all of them.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_get_singleton().
        """
        fences = self.get_fences(usage)
        if not fences:
            return None
        if len(fences) == 1:
            return fences[0]
        ctx = self.machine.fence_context_alloc(1)
        return dma_fence_array_create(fences, ctx, 1, False, machine=self.machine)

    def wait_timeout(self, usage: DmaResvUsage, intr: bool, timeout: float | None) -> float:
        """Wait for every unsignalled fence of ``usage`` — ``dma_resv_wait_timeout()``.

        Waits for the fences one after the other, passing on the remaining time.

        Args:
            usage: the query level.
            intr: interruptible (a signal aborts with ERESTARTSYS).
            timeout: seconds; 0 polls; None (or ``math.inf``) waits forever.
        Context: may sleep; no lock needed (allowed under the resv lock).
        Returns: > 0 when all signalled (the remaining time; the timeout itself, or 1 for a 0
            timeout, when nothing had to be waited for); 0 on timeout.
        Raises: DmaBufError(EINVAL) for a negative timeout; TypeError for a non-number;
            DmaBufError(ERESTARTSYS) when interrupted.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_wait_timeout().
        """
        usage = _check_usage(usage, "wait_timeout")
        if timeout is None:
            t = math.inf
        elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"wait_timeout: timeout must be seconds or None, got "
                            f"{type(timeout).__name__}")
        else:
            t = float(timeout)
            if not t >= 0:
                raise DmaBufError(errno.EINVAL, f"wait_timeout: negative timeout {timeout!r}; "
                                  "use 0 to poll or None to wait forever")
        poll = t == 0
        ret: float = t if t else 1.0
        cursor = DmaResvIter(self, usage)
        try:
            for fence in cursor.for_each_unlocked():
                # The kernel hands 1 jiffy to each fence wait for a 0 timeout; the model polls.
                ret = fence.wait_timeout(intr, 0 if poll else ret)
                if ret <= 0:
                    return ret
        finally:
            cursor.end()
        return ret

    def set_deadline(self, usage: DmaResvUsage, deadline: float) -> None:
        """Hint the deadline to every fence of ``usage`` — ``dma_resv_set_deadline()``.

        Args: usage: the query level; deadline: absolute time on the scheduler clock (s).
        Context: no lock needed. Returns: None.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_set_deadline().
        """
        usage = _check_usage(usage, "set_deadline")
        for fence, _ in self.for_each_fence_unlocked(usage):
            fence.set_deadline(deadline)

    def test_signaled(self, usage: DmaResvUsage) -> bool:
        """Whether every fence of ``usage`` has signalled — ``dma_resv_test_signaled()``.

        Args: usage: the query level.
        Context: no lock needed; never blocks (may signal fences whose ops say they passed).
        Returns: True iff the unlocked iteration finds no unsignalled fence.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_test_signaled().
        """
        usage = _check_usage(usage, "test_signaled")
        cursor = DmaResvIter(self, usage)
        try:
            return cursor.first_unlocked() is None
        finally:
            cursor.end()

    def describe(self) -> str:
        """The debugfs text of the fences up to READ — ``dma_resv_describe()``.

        One line per fence: ``"\\t<usage> fence:"`` followed by ``DmaFence.describe()``.

        Context: lock held (asserted).
        Returns: the text ("" when there are no fences).
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_describe().
        """
        out = []
        for fence, usage in self.for_each_fence(DmaResvUsage.READ):
            out.append(f"\t{_USAGE_NAMES[usage]} fence:{fence.describe()}")
        return "".join(out)


class DmaResvIter:
    """A cursor over a reservation object's fences — ``struct dma_resv_iter``.

    ``dma_resv_iter_begin()`` is the constructor; :meth:`end` drops the reference the unlocked
    walk holds. Locked walk: :meth:`first` / :meth:`next` (or :meth:`for_each`); unlocked walk:
    :meth:`first_unlocked` / :meth:`next_unlocked` (or :meth:`for_each_unlocked`).

    Attributes: ``obj``, ``usage`` (the query level), ``fence`` (current fence, unlocked walk),
    ``fence_usage`` (its entry's usage: ``dma_resv_iter_usage()``), ``index``, ``fences`` (the
    list being walked — assign anything else to force a restart, as st-dma-resv does with
    ``cursor.fences = (void*)~0``), ``num_fences`` (its length when the walk (re)started) and
    ``is_restarted`` (``dma_resv_iter_is_restarted()``).

    Args:
        obj: the reservation object.
        usage: the query level.
    Raises: TypeError / DmaBufError(EINVAL) for bad arguments.
    Kernel: include/linux/dma-resv.h, struct dma_resv_iter, dma_resv_iter_begin().
    """

    __slots__ = ("fence", "fence_usage", "fences", "index", "is_restarted", "num_fences", "obj",
                 "usage")

    def __init__(self, obj: DmaResv, usage: DmaResvUsage) -> None:
        if not isinstance(obj, DmaResv):
            raise TypeError(f"DmaResvIter: obj must be a DmaResv, got {type(obj).__name__}")
        self.obj = obj
        self.usage = _check_usage(usage, "dma_resv_iter_begin")
        self.fence: DmaFence | None = None
        self.fence_usage = DmaResvUsage.KERNEL
        self.index = 0
        self.fences: Any = None
        self.num_fences = 0
        self.is_restarted = False

    def end(self) -> None:
        """Drop the cursor's reference — ``dma_resv_iter_end()``.

        Kernel: include/linux/dma-resv.h, dma_resv_iter_end().
        """
        f, self.fence = self.fence, None
        if f is not None:
            f.put()

    def __enter__(self) -> DmaResvIter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    # unlocked ------------------------------------------------------------------------------
    def _restart_unlocked(self) -> None:
        """``dma_resv_iter_restart_unlocked()``."""
        self.index = 0
        self.num_fences = 0
        self.fences = self.obj._fences
        if self.fences is not None:
            self.num_fences = self.fences.num_fences
        self.is_restarted = True

    def _walk_unlocked(self) -> None:
        """``dma_resv_iter_walk_unlocked()``: to the next unsignalled fence, referenced."""
        fences = self.fences
        if not isinstance(fences, _FenceList):
            # model: a list that vanished ends the walk (the kernel would return the previous
            # fence again)
            self.end()
            return
        while True:
            self.end()  # drop the reference from the previous round
            if self.index >= self.num_fences:
                return
            fence, self.fence_usage = fences.table[self.index]
            self.index += 1
            got = fence.get_unless_zero()  # dma_fence_get_rcu()
            if got is None:
                self._restart_unlocked()
                fences = self.fences
                if not isinstance(fences, _FenceList):
                    return
                continue
            self.fence = got
            if not got.is_signaled() and self.usage >= self.fence_usage:
                return

    def first_unlocked(self) -> DmaFence | None:
        """First unsignalled fence, without the lock — ``dma_resv_iter_first_unlocked()``.

        Context: no lock needed. Returns: the fence (held by the cursor) or None.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_iter_first_unlocked().
        """
        while True:
            self._restart_unlocked()
            self._walk_unlocked()
            if self.obj._fences is self.fences:
                return self.fence

    def next_unlocked(self) -> DmaFence | None:
        """Next unsignalled fence — ``dma_resv_iter_next_unlocked()``.

        Restarts from the beginning (``is_restarted`` True) if the object's list is not the one
        being walked.

        Context: no lock needed. Returns: the fence (held by the cursor) or None.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_iter_next_unlocked().
        """
        self.is_restarted = False
        restart = self.obj._fences is not self.fences
        while True:
            if restart:
                self._restart_unlocked()
            self._walk_unlocked()
            restart = True
            if self.obj._fences is self.fences:
                return self.fence

    def for_each_unlocked(self) -> Iterator[DmaFence]:
        """Iterate :meth:`first_unlocked` / :meth:`next_unlocked` —
        ``dma_resv_for_each_fence_unlocked(cursor, fence)``.

        Check ``is_restarted`` on each step. Call :meth:`end` afterwards (or use the cursor as
        a context manager).

        Kernel: include/linux/dma-resv.h, dma_resv_for_each_fence_unlocked().
        """
        fence = self.first_unlocked()
        while fence is not None:
            yield fence
            fence = self.next_unlocked()

    # locked --------------------------------------------------------------------------------
    def first(self) -> DmaFence | None:
        """First fence with usage <= the query, lock held — ``dma_resv_iter_first()``.

        Context: lock held (asserted). Returns: the fence (no reference taken) or None.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_iter_first().
        """
        self.obj.assert_held()
        self.index = 0
        self.fences = self.obj._fences
        fence = self.next()
        self.is_restarted = True
        return fence

    def next(self) -> DmaFence | None:
        """Next fence, lock held — ``dma_resv_iter_next()``.

        Context: lock held (asserted). Returns: the fence or None.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_iter_next().
        """
        self.obj.assert_held()
        self.is_restarted = False
        fences = self.fences
        while True:
            if not isinstance(fences, _FenceList) or self.index >= fences.num_fences:
                return None
            fence, self.fence_usage = fences.table[self.index]
            self.index += 1
            if self.fence_usage <= self.usage:
                return fence

    def for_each(self) -> Iterator[DmaFence]:
        """Iterate :meth:`first` / :meth:`next` — ``dma_resv_for_each_fence(cursor, ...)``.

        Context: the resv lock must be held (dma_resv_assert_held()).
        Kernel: include/linux/dma-resv.h, dma_resv_for_each_fence().
        """
        fence = self.first()
        while fence is not None:
            yield fence
            fence = self.next()
