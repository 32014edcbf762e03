"""kernel/locking/ww_mutex.h, mutex.c, include/linux/ww_mutex.h — wound/wait mutexes.

A *ww_mutex* lets one thread take an unordered set of locks of one *class* without deadlock. Each
transaction carries a :class:`WwAcquireCtx` whose *stamp* (taken from the class's counter at
init) is its age: a smaller stamp is older and wins. When two transactions contend, the younger
one backs off: its ``lock()`` raises :class:`~dmabuf.errors.WouldDeadlock` (``-EDEADLK``), it
drops every lock it holds, sleeps on the contended one with :meth:`WwMutex.lock_slow`, and retries
— keeping its stamp, so it ages and eventually wins. A transaction that holds no lock never backs
off (I-W1). Two algorithms, chosen per class (:class:`WwClass`, ``wait_die=``):

* **Wait-Die** (``DEFINE_WD_CLASS``; the reservation class of :mod:`dmabuf.sync.dma_resv`): a
  younger transaction that must wait for an older holder, or queue behind an older waiter, dies.
  Younger waiters that hold locks are woken so they can die.
* **Wound-Wait** (``DEFINE_WW_CLASS``): an older transaction that must wait for a younger holder
  *wounds* it (sets ``ctx.wounded`` and wakes it); the wounded transaction dies lazily, at its
  next lock attempt that would have to wait while it holds locks. An unwounded transaction
  simply waits.

The model follows ``__mutex_lock_common`` step by step: a fast path (try the lock), a wait list
ordered by stamp with context-less waiters interspersed FIFO (``__ww_mutex_add_waiter``), a wait
loop that re-tries, checks for signals and for death/wounds (``__ww_mutex_check_kill``) before
each sleep, the fixups after a steal (``__ww_mutex_check_waiters``) and the HANDOFF protocol that
stops newcomers from starving the first waiter. Each blocked waiter sleeps on its own scheduler
event (the task's ``wake_up_process`` target), so a wound from another lock's wait list wakes
exactly that thread, and a deadlock found by the controlled scheduler names every wait as
``ww_mutex_lock(<name>, ctx stamp 5) waiting for stamp 3``.

Contract (what ``CONFIG_DEBUG_WW_MUTEXES`` + lockdep check; here each raises
:class:`~dmabuf.errors.ContractViolation`): locking after :meth:`WwAcquireCtx.done`, a lock or ctx
of another class, a second ``done()`` or ``fini()``, ``fini()`` with locks still held, taking a
different lock than the contended one (or any lock while still holding others) after
``-EDEADLK``, ``lock_slow`` without a prior ``-EDEADLK``, unlocking a mutex that is not locked,
using a ctx from a thread other than the one that created it (lockdep on). Lock order and
recursion go through the machine's :class:`~dmabuf.debug.LockTracker` (``mutex_acquire_nest``:
locks of one class under one ctx are exempt from ordering).

Signals: the ``_interruptible`` variants check the machine's
:class:`~dmabuf.sync.dma_fence.Interrupts` (``signal_pending()``) before each sleep and are woken
by ``Interrupts.send()``; they fail with ``DmaBufError(EINTR)`` as ``mutex_lock_interruptible``.

Locking: each WwMutex has a base mutex (the owner word; its fast path is one non-blocking
acquire) and a ``wait_lock`` guarding the wait list, the ctx pointer and the handoff state. No
code path holds two wait_locks at once.

Deliberate differences from the kernel (see docs/model-vs-kernel.md): no optimistic spinning;
no ``CONFIG_DEBUG_WW_MUTEX_SLOWPATH`` deadlock injection; stamps are unbounded Python ints (no
wrap-around compare); the RT-priority ordering of ``WW_RT`` is not modelled; DEBUG_LOCKS_WARN_ON
misuse raises instead of warning once.

Kernel: kernel/locking/ww_mutex.h, kernel/locking/mutex.c (__mutex_lock_common,
ww_mutex_trylock, __mutex_unlock_slowpath), include/linux/ww_mutex.h,
Documentation/locking/ww-mutex-design.rst.
"""

from __future__ import annotations

import errno
import itertools
import threading
from typing import TYPE_CHECKING

from dmabuf.errors import ContractViolation, DmaBufError, WouldDeadlock
from dmabuf.machine import Machine, current_machine
from dmabuf.sync.dma_fence import Interrupts

if TYPE_CHECKING:
    from dmabuf.sched import SchedEvent

__all__ = ["WwAcquireCtx", "WwClass", "WwMutex"]


class WwClass:
    """A ww lock class: algorithm and stamp counter — ``DEFINE_WW_CLASS`` / ``DEFINE_WD_CLASS``.

    Args:
        name: the class name (the kernel's C identifier, e.g. ``"reservation_ww_class"``); the
            lock-tracker class of its mutexes is ``f"{name}_mutex"`` as lockdep names it.
        wait_die: True for Wait-Die (``DEFINE_WD_CLASS``), False for Wound-Wait
            (``DEFINE_WW_CLASS``). Keyword-only and required: the choice matters.
    Context: any; never blocks.
    Raises: TypeError for a non-str name or non-bool wait_die.
    Kernel: include/linux/ww_mutex.h, struct ww_class, __WW_CLASS_INITIALIZER.
    """

    __slots__ = ("_stamp", "is_wait_die", "mutex_name", "name")

    def __init__(self, name: str, *, wait_die: bool) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"WwClass name must be a non-empty str, got {name!r}")
        if not isinstance(wait_die, bool):
            raise TypeError(f"WwClass wait_die must be a bool, got {wait_die!r}")
        self.name = name
        self.is_wait_die = wait_die
        #: lockdep class name of the mutexes of this class (``<name>_mutex``).
        self.mutex_name = f"{name}_mutex"
        # atomic_long_t stamp; itertools.count.__next__ is atomic under the GIL.
        self._stamp = itertools.count(1)

    def next_stamp(self) -> int:
        """Return the next transaction stamp — ``atomic_long_inc_return(&class->stamp)``.

        Context: any; never blocks. Returns: a stamp larger than every stamp handed out before.
        Kernel: include/linux/ww_mutex.h, ww_acquire_init().
        """
        return next(self._stamp)

    def __repr__(self) -> str:
        kind = "wait-die" if self.is_wait_die else "wound-wait"
        return f"<WwClass {self.name} {kind}>"


def _ctx_less(a: WwAcquireCtx, b: WwAcquireCtx) -> bool:
    """``__ww_ctx_less(a, b)``: a is younger (lower priority) than b — bigger stamp is younger."""
    return a.stamp > b.stamp


class WwAcquireCtx:
    """One transaction: stamp, count of locks held, wounded flag — ``struct ww_acquire_ctx``.

    Creating it is ``ww_acquire_init()``; also usable as a context manager whose exit is
    :meth:`fini`.

    Args:
        ww_class: the class every lock taken with this context must belong to.
        machine: the machine whose lock tracker checks the thread rule (default: current).
    Context: any; never blocks. The context belongs to the creating thread.
    Raises: TypeError if ``ww_class`` is not a :class:`WwClass`.
    Kernel: include/linux/ww_mutex.h, ww_acquire_init().
    """

    __slots__ = ("_debug", "_finished", "_waiter", "acquired", "contending_lock", "done_acquire",
                 "is_wait_die", "stamp", "task", "wounded", "ww_class")

    def __init__(self, ww_class: WwClass, *, machine: Machine | None = None) -> None:
        if not isinstance(ww_class, WwClass):
            raise TypeError(f"WwAcquireCtx needs a WwClass, got {type(ww_class).__name__}")
        m = machine if machine is not None else current_machine()
        self.ww_class = ww_class
        self.stamp = ww_class.next_stamp()
        #: number of ww_mutexes this context holds (I-W3).
        self.acquired = 0
        #: Wound-Wait: set by an older transaction that waits for a lock this one holds.
        self.wounded = False
        self.is_wait_die = ww_class.is_wait_die
        #: debug: set by :meth:`done`; any later lock with this context is a bug.
        self.done_acquire = False
        #: debug: the lock whose ``-EDEADLK`` this context must resolve with lock_slow.
        self.contending_lock: WwMutex | None = None
        #: the thread that initialised the context (``ctx->task``).
        self.task = threading.get_ident()
        self._debug = m.lockdep.enabled
        self._finished = False
        # The waiter this context sleeps on right now (the target of a wound's wake-up).
        self._waiter: _Waiter | None = None

    def __repr__(self) -> str:
        return (f"<WwAcquireCtx {self.ww_class.name} stamp {self.stamp} acquired {self.acquired}"
                f"{' wounded' if self.wounded else ''}>")

    def _check_usable(self, lock: WwMutex, what: str) -> None:
        """The DEBUG_WW_MUTEXES checks that precede taking ``lock`` with this context."""
        if self._finished:
            raise ContractViolation("ww_acquire_fini", f"{what}: {self!r} was already finalised "
                                    "with fini(); start a new WwAcquireCtx")
        if self.done_acquire:
            raise ContractViolation("ww_acquire_done", f"{what}: {self!r} is marked done(); no "
                                    "more locks may be taken with it")
        if lock.ww_class is not self.ww_class:
            raise ContractViolation("ww_class", f"{what}: {lock.name} is of class "
                                    f"{lock.ww_class.name} but the context is of class "
                                    f"{self.ww_class.name}; mixing classes is undefined")
        if self._debug and self.task != threading.get_ident():
            raise ContractViolation("ww_acquire_ctx_task", f"{what}: {self!r} belongs to "
                                    f"another thread (ident {self.task}); a ctx is per task")

    def _check_acquire(self, lock: WwMutex, what: str) -> None:
        """``ww_mutex_lock_acquired`` debug checks, done before the attempt instead of after."""
        cl = self.contending_lock
        if cl is not None:
            if cl is not lock:
                raise ContractViolation(
                    "ww_mutex_lock", f"{what}: after -EDEADLK on {cl.name} the context must "
                    f"take that lock next (lock_slow), not {lock.name}")
            if self.acquired > 0:
                raise ContractViolation(
                    "ww_mutex_lock", f"{what}: after -EDEADLK every lock of the context must be "
                    f"unlocked before taking {lock.name} again ({self.acquired} still held)")

    def done(self) -> None:
        """Mark the acquire phase finished — ``ww_acquire_done()``.

        Context: the owning thread. Returns: None.
        Raises: ContractViolation if called twice or after :meth:`fini`.
        Kernel: include/linux/ww_mutex.h, ww_acquire_done().
        """
        if self._finished:
            raise ContractViolation("ww_acquire_done", f"{self!r} used after fini()")
        if self.done_acquire:
            raise ContractViolation("ww_acquire_done", f"{self!r}: done() called twice")
        self.done_acquire = True

    def fini(self) -> None:
        """Release the context — ``ww_acquire_fini()``.

        Context: the owning thread; every lock taken with the context must be unlocked first.
        Returns: None.
        Raises: ContractViolation if locks are still held, or on a second fini().
        Kernel: include/linux/ww_mutex.h, ww_acquire_fini().
        """
        if self._finished:
            raise ContractViolation("ww_acquire_fini", f"{self!r}: fini() called twice")
        if self.acquired:
            raise ContractViolation("ww_acquire_fini", f"{self!r}: fini() with {self.acquired} "
                                    "lock(s) still held; unlock them first")
        self._finished = True
        self.done_acquire = True

    def __enter__(self) -> WwAcquireCtx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fini()


class _Waiter:
    """``struct mutex_waiter``: one blocked thread on one lock's wait list."""

    __slots__ = ("ctx", "event")

    def __init__(self, ctx: WwAcquireCtx | None, event: SchedEvent) -> None:
        self.ctx = ctx
        self.event = event


class WwMutex:
    """A wound/wait mutex — ``struct ww_mutex`` (``ww_mutex_init``).

    Args:
        ww_class: its class (algorithm and stamps).
        name: shown in deadlock reports and errors (default ``<class>@0x<id>``).
        machine: the machine whose scheduler and lock tracker it uses (default: current).
    Context: any; never blocks.
    Raises: TypeError if ``ww_class`` is not a :class:`WwClass`.
    Kernel: include/linux/ww_mutex.h, ww_mutex_init().
    """

    #: TEST HOOK, never set in the model: a subclass with ``_backoff = False`` never returns
    #: -EDEADLK and just waits (a ww_mutex without its deadlock avoidance), to show that the
    #: controlled scheduler catches the resulting ABBA deadlock.
    _backoff = True

    __slots__ = ("__weakref__", "_handoff", "_handoff_to", "_lockdep", "_m", "_machine", "_wait",
                 "_waiters", "ctx", "lock_class", "name", "ww_class")

    def __init__(self, ww_class: WwClass, *, name: str | None = None,
                 machine: Machine | None = None) -> None:
        if not isinstance(ww_class, WwClass):
            raise TypeError(f"WwMutex needs a WwClass, got {type(ww_class).__name__}")
        m = machine if machine is not None else current_machine()
        self._machine = m
        self.ww_class = ww_class
        self.name = name if name is not None else f"{ww_class.name}@{id(self):#x}"
        self.lock_class = ww_class.mutex_name
        #: the acquire context of the holder, or None (``ww->ctx``).
        self.ctx: WwAcquireCtx | None = None
        self._lockdep = m.lockdep
        sched = m.sched
        self._m = sched.lock(f"{self.name}.owner")        # the owner word
        self._wait = sched.lock(f"{self.name}.wait_lock")  # lock->wait_lock
        self._waiters: list[_Waiter] = []                   # lock->wait_list
        self._handoff = False                               # MUTEX_FLAG_HANDOFF
        self._handoff_to: _Waiter | None = None             # MUTEX_FLAG_PICKUP target

    def __repr__(self) -> str:
        state = "unlocked"
        if self._m.locked():
            state = f"locked by ctx stamp {self.ctx.stamp}" if self.ctx else "locked"
        return f"<WwMutex {self.name} {state}, {len(self._waiters)} waiter(s)>"

    # ---------------------------------------------------------------------------------------
    # public API
    # ---------------------------------------------------------------------------------------
    def lock(self, ctx: WwAcquireCtx | None = None) -> None:
        """Acquire the mutex, blocking — ``ww_mutex_lock()``.

        Args:
            ctx: the transaction, or None for a plain mutex lock (no deadlock avoidance).
        Context: may block (might_sleep); process context.
        Returns: None once the lock is held (the kernel's 0).
        Raises: WouldDeadlock (EDEADLK) — only when ``ctx`` already holds locks (I-W1): back off
            (unlock all, then :meth:`lock_slow`); DmaBufError(EALREADY) if ``ctx`` already holds
            this lock; ContractViolation on ctx misuse (see module docstring).
        Kernel: kernel/locking/mutex.c, ww_mutex_lock(), __mutex_lock_common().
        """
        if ctx is None:
            ld = self._lockdep
            if ld.enabled:
                ld.might_sleep("ww_mutex_lock")
                ld.acquire(self, self.lock_class)
            if self._m.acquire(False):
                return
            self._slowpath(None, False)
            return
        self._lock_ctx(ctx, False, "ww_mutex_lock")

    def lock_interruptible(self, ctx: WwAcquireCtx | None = None) -> None:
        """Acquire the mutex, blocking but interruptible — ``ww_mutex_lock_interruptible()``.

        A signal (:class:`dmabuf.sync.dma_fence.Interrupts`, shared with interruptible fence
        waits) pending when the lock is contended, or arriving while the thread sleeps, aborts
        the wait; an uncontended lock succeeds regardless (the kernel checks signals only on
        the way to sleep).

        Args:
            ctx: the transaction, or None.
        Context: may block (might_sleep).
        Returns: None once the lock is held.
        Raises: DmaBufError(EINTR) when interrupted (the lock is not held); WouldDeadlock;
            DmaBufError(EALREADY); ContractViolation — as :meth:`lock`.
        Kernel: kernel/locking/mutex.c, ww_mutex_lock_interruptible().
        """
        if ctx is None:
            ld = self._lockdep
            if ld.enabled:
                ld.might_sleep("ww_mutex_lock_interruptible")
                ld.acquire(self, self.lock_class)
            if self._m.acquire(False):
                return
            self._slowpath(None, True)
            return
        self._lock_ctx(ctx, True, "ww_mutex_lock_interruptible")

    def lock_slow(self, ctx: WwAcquireCtx) -> None:
        """Sleep until the contended lock is acquired after a back-off — ``ww_mutex_lock_slow()``.

        Args:
            ctx: the transaction that got -EDEADLK on this very lock and dropped every lock.
        Context: may block; the context must hold no locks.
        Returns: None (never fails: a context without locks never dies).
        Raises: ContractViolation without a prior -EDEADLK on this lock, or with locks held.
        Kernel: include/linux/ww_mutex.h, ww_mutex_lock_slow().
        """
        self._check_slow(ctx, "ww_mutex_lock_slow")
        self._lock_ctx(ctx, False, "ww_mutex_lock_slow")

    def lock_slow_interruptible(self, ctx: WwAcquireCtx) -> None:
        """Interruptible :meth:`lock_slow` — ``ww_mutex_lock_slow_interruptible()``.

        Args:
            ctx: as :meth:`lock_slow`.
        Context: may block; the context must hold no locks.
        Returns: None once the lock is held.
        Raises: DmaBufError(EINTR) when interrupted; ContractViolation as :meth:`lock_slow`.
        Kernel: include/linux/ww_mutex.h, ww_mutex_lock_slow_interruptible().
        """
        self._check_slow(ctx, "ww_mutex_lock_slow_interruptible")
        self._lock_ctx(ctx, True, "ww_mutex_lock_slow_interruptible")

    def trylock(self, ctx: WwAcquireCtx | None = None) -> bool:
        """Try to acquire without blocking — ``ww_mutex_trylock()``.

        Never reports -EALREADY (as the kernel): a trylock of a lock the context already holds
        returns False. No deadlock handling is done.

        Args:
            ctx: the transaction to record the lock in (``acquired += 1``), or None.
        Context: any; never blocks.
        Returns: True if the lock is now held, False if it was contended.
        Raises: ContractViolation on ctx misuse.
        Kernel: kernel/locking/mutex.c, ww_mutex_trylock().
        """
        if ctx is None:
            if self._m.acquire(False):
                ld = self._lockdep
                if ld.enabled:
                    ld.acquire(self, self.lock_class, trylock=True)
                return True
            return False
        if not isinstance(ctx, WwAcquireCtx):
            raise TypeError(f"ww_mutex_trylock: ctx must be a WwAcquireCtx or None, got "
                            f"{type(ctx).__name__}")
        ctx._check_usable(self, "ww_mutex_trylock")
        if ctx.acquired == 0:
            ctx.wounded = False
        if self.ctx is ctx:
            return False
        ctx._check_acquire(self, "ww_mutex_trylock")
        if not self._m.acquire(False):
            return False
        self._set_context_fastpath(ctx)
        ld = self._lockdep
        if ld.enabled:
            ld.acquire(self, self.lock_class, ctx=ctx, trylock=True)
        return True

    def unlock(self) -> None:
        """Release the mutex — ``ww_mutex_unlock()``.

        Context: the holder; never blocks. Wakes the first waiter (handing the lock to it
        directly when it asked for a handoff).
        Returns: None.
        Raises: ContractViolation if the mutex is not locked, or (lock tracker on) if the
            calling thread does not hold it.
        Kernel: kernel/locking/mutex.c, ww_mutex_unlock(), __mutex_unlock_slowpath().
        """
        m = self._m
        ld = self._lockdep
        if ld.enabled:
            if not m.locked():
                raise self._not_locked()
            ld.release(self, self.lock_class)
        ctx = self.ctx
        if ctx is not None:
            if ctx.acquired > 0:
                ctx.acquired -= 1
            self.ctx = None
        if not self._waiters:
            try:
                m.release()
            except RuntimeError:
                raise self._not_locked() from None
            if self._waiters:
                self._wake_first()
            return
        with self._wait:
            if not m.locked():
                raise self._not_locked()
            if self._waiters:
                first = self._waiters[0]
                if self._handoff:
                    # __mutex_handoff(): ownership goes to the first waiter (MUTEX_FLAG_PICKUP)
                    self._handoff = False
                    self._handoff_to = first
                else:
                    m.release()
                first.event.set()
            else:
                m.release()

    def _wake_first(self) -> None:
        """A waiter queued after the unlocker found the list empty: it re-tries the base mutex
        after queueing, but wake it anyway (a spurious wake-up is harmless, a lost one is
        not)."""
        with self._wait:
            if self._waiters:
                self._waiters[0].event.set()

    def _not_locked(self) -> ContractViolation:
        return ContractViolation("ww_mutex_unlock", f"unlock of {self.name}, which is not "
                                 "locked")

    def is_locked(self) -> bool:
        """Whether the mutex is held by anyone — ``ww_mutex_is_locked()``.

        Context: any; never blocks. Returns: True if locked.
        Kernel: include/linux/ww_mutex.h, ww_mutex_is_locked().
        """
        return self._m.locked()

    def destroy(self) -> None:
        """Check the mutex may be freed — ``ww_mutex_destroy()`` (``mutex_destroy`` debug check).

        Context: any. Returns: None.
        Raises: ContractViolation if it is locked or has waiters.
        Kernel: include/linux/ww_mutex.h, ww_mutex_destroy(); kernel/locking/mutex-debug.c.
        """
        if self._m.locked() or self._waiters:
            raise ContractViolation("mutex_destroy", f"{self.name} destroyed while locked or "
                                    "waited for")

    def assert_held(self) -> None:
        """Raise unless the calling thread holds the mutex — ``lockdep_assert_held(&lock->base)``.

        Context: any. Returns: None. Raises: ContractViolation (lock tracker on; with it off
        only "not locked at all" is detected).
        Kernel: include/linux/lockdep.h, lockdep_assert_held().
        """
        if not self._m.locked():
            raise ContractViolation("lockdep_assert_held", f"{self.name} must be held by the "
                                    "caller but is not locked")
        self._lockdep.assert_held(self, what=self.name)

    # ---------------------------------------------------------------------------------------
    # the algorithm
    # ---------------------------------------------------------------------------------------
    def _check_slow(self, ctx: WwAcquireCtx, what: str) -> None:
        if not isinstance(ctx, WwAcquireCtx):
            raise TypeError(f"{what}: ctx must be a WwAcquireCtx, got {type(ctx).__name__}")
        if ctx.contending_lock is None:
            raise ContractViolation(what, f"{what}({self.name}) without a prior -EDEADLK: "
                                    "lock_slow is only for the back-off path")
        if ctx.acquired:
            raise ContractViolation(what, f"{what}({self.name}) with {ctx.acquired} lock(s) "
                                    "still held: unlock every lock of the context first")

    def _lock_ctx(self, ctx: WwAcquireCtx, interruptible: bool, what: str) -> None:
        if not isinstance(ctx, WwAcquireCtx):
            raise TypeError(f"{what}: ctx must be a WwAcquireCtx or None, got "
                            f"{type(ctx).__name__}")
        ctx._check_usable(self, what)
        if self.ctx is ctx:
            raise DmaBufError(errno.EALREADY, f"{what}({self.name}): the context (stamp "
                              f"{ctx.stamp}) already holds this lock")
        ctx._check_acquire(self, what)
        # Reset the wounded flag after a kill: nobody can wound a ctx that holds no lock.
        if ctx.acquired == 0:
            ctx.wounded = False
        ld = self._lockdep
        if ld.enabled:
            ld.might_sleep(what)
            ld.acquire(self, self.lock_class, ctx=ctx)
        if self._m.acquire(False):
            self._set_context_fastpath(ctx)
            return
        self._slowpath(ctx, interruptible)

    def _acquired(self, ctx: WwAcquireCtx) -> None:
        """``ww_mutex_lock_acquired()``: associate the lock with the context."""
        ctx.contending_lock = None
        ctx.acquired += 1
        self.ctx = ctx

    def _set_context_fastpath(self, ctx: WwAcquireCtx) -> None:
        """``ww_mutex_set_context_fastpath()``: record ctx; if we raced with waiters, let the
        ones that must die or wound us know."""
        self._acquired(ctx)
        if self._waiters:
            with self._wait:
                self._check_waiters(ctx)

    def _kill(self, ctx: WwAcquireCtx) -> bool:
        """``__ww_mutex_kill()``: die (-EDEADLK) if the context holds locks."""
        if ctx.acquired > 0 and self._backoff:
            ctx.contending_lock = self
            return True
        return False

    def _die(self, waiter: _Waiter, ctx: WwAcquireCtx) -> bool:
        """``__ww_mutex_die()``: Wait-Die — wake a younger waiter holding locks so it dies."""
        if not ctx.is_wait_die:
            return False
        wctx = waiter.ctx
        assert wctx is not None
        if wctx.acquired > 0 and _ctx_less(wctx, ctx):
            waiter.event.set()
        return True

    def _wound(self, ctx: WwAcquireCtx, hold_ctx: WwAcquireCtx | None) -> bool:
        """``__ww_mutex_wound()``: Wound-Wait — an older ``ctx`` holding locks wounds the younger
        holder and wakes it wherever it sleeps (``wake_up_process(owner)``)."""
        if hold_ctx is None or not self._m.locked():
            return False
        if ctx.acquired > 0 and _ctx_less(hold_ctx, ctx):
            hold_ctx.wounded = True
            w = hold_ctx._waiter
            if w is not None:
                w.event.set()
            return True
        return False

    def _check_waiters(self, ctx: WwAcquireCtx) -> None:
        """``__ww_mutex_check_waiters()``: we just took the lock with ``ctx``; waiters with
        more important contexts may need to die or to wound us. Called with wait_lock held."""
        for cur in self._waiters:
            cctx = cur.ctx
            if cctx is None:
                continue
            if self._die(cur, ctx) or self._wound(cctx, ctx):
                break

    def _add_waiter(self, waiter: _Waiter, ctx: WwAcquireCtx) -> bool:
        """``__ww_mutex_add_waiter()``: queue in stamp order; Wait-Die may die at once (returns
        True), Wound-Wait wounds a younger holder. Called with wait_lock held."""
        waiters = self._waiters
        is_wait_die = ctx.is_wait_die
        pos: int | None = None
        for i in range(len(waiters) - 1, -1, -1):
            cur = waiters[i]
            cctx = cur.ctx
            if cctx is None:
                continue
            if _ctx_less(ctx, cctx):
                # Wait-Die: an older context waits already: no point queueing behind it.
                if is_wait_die and self._kill(ctx):
                    return True
                break
            pos = i
            self._die(cur, ctx)  # Wait-Die: make the younger waiters die
        if pos is None:
            waiters.append(waiter)
        else:
            waiters.insert(pos, waiter)
        if not is_wait_die:
            self._wound(ctx, self.ctx)
        return False

    def _check_kill(self, waiter: _Waiter, ctx: WwAcquireCtx) -> bool:
        """``__ww_mutex_check_kill()``: must this waiting context die now?"""
        if ctx.acquired == 0:
            return False
        if not ctx.is_wait_die:
            return ctx.wounded and self._kill(ctx)
        hold_ctx = self.ctx
        if hold_ctx is not None and _ctx_less(ctx, hold_ctx):
            return self._kill(ctx)
        # a context waiter in front of us is older: die
        for cur in self._waiters:
            if cur is waiter:
                break
            if cur.ctx is not None:
                return self._kill(ctx)
        return False

    def _wait_what(self, ctx: WwAcquireCtx | None, op: str) -> str:
        me = f"ctx stamp {ctx.stamp}" if ctx is not None else "no ctx"
        hold = self.ctx
        holder = f"stamp {hold.stamp}" if hold is not None else "a holder without ctx"
        return f"{op}({self.name}, {me}) waiting for {holder}"

    def _slowpath(self, ctx: WwAcquireCtx | None, interruptible: bool) -> None:
        """The contended part of ``__mutex_lock_common()``. The lock tracker entry is made."""
        wait = self._wait
        wait.acquire()
        # After waiting for the wait_lock, try again.
        if self._m.acquire(False):
            if ctx is not None:
                self._check_waiters(ctx)
                self._acquired(ctx)
            wait.release()
            return
        waiter = _Waiter(ctx, self._machine.sched.event(f"{self.name}.waiter"))
        if ctx is None:
            self._waiters.append(waiter)
        else:
            if self._add_waiter(waiter, ctx):
                wait.release()
                self._fail(errno.EDEADLK, ctx)
            ctx._waiter = waiter
        # signal_pending_state(): the machine's Interrupts (shared with interruptible fence
        # waits); a signal sent while we sleep wakes this waiter.
        sig = Interrupts.of(self._machine)._arm(waiter.event.set) if interruptible else None
        op = "ww_mutex_lock_interruptible" if interruptible else "ww_mutex_lock"
        err = 0
        got = False
        first = False
        not_first = False
        try:
            while True:
                waiter.event.clear()  # set_current_state(): a wake-up from now on is not lost
                if self._handoff_to is waiter:
                    self._handoff_to = None  # picked up the handoff (MUTEX_FLAG_PICKUP)
                    got = True
                elif self._m.acquire(False):
                    got = True
                if got:
                    # Not the first waiter any more (an older context queued in front of us, or
                    # we stole the lock): see the Wound-Wait fixup below.
                    not_first = self._waiters[0] is not waiter
                    break
                if first:
                    self._handoff = True  # __mutex_trylock_or_handoff(): ask for a handoff
                if sig is not None and sig.pending:
                    err = errno.EINTR
                    break
                if ctx is not None and self._check_kill(waiter, ctx):
                    err = errno.EDEADLK
                    break
                what = self._wait_what(ctx, op)
                wait.release()
                try:
                    waiter.event.wait(None, what)
                finally:
                    wait.acquire()
                first = self._waiters[0] is waiter
            if got and ctx is not None and not ctx.is_wait_die and not_first:
                # Wound-Wait: we were not the first waiter when we got the lock; an older
                # context queued while the lock had no ctx recorded (e.g. during a handoff)
                # could not wound us then: check the waiters now.
                self._check_waiters(ctx)
        finally:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._handoff = False
            if ctx is not None:
                ctx._waiter = None
            if sig is not None:
                sig.waker = None
            if got and ctx is not None:
                self._acquired(ctx)
            wait.release()
        if err:
            self._fail(err, ctx)

    def _fail(self, err: int, ctx: WwAcquireCtx | None) -> None:
        """Error exit of a lock attempt: drop the tracker entry and raise."""
        ld = self._lockdep
        if ld.enabled:
            ld.release(self, self.lock_class)
        if err == errno.EDEADLK:
            assert ctx is not None
            hold = self.ctx
            holder = f"stamp {hold.stamp}" if hold is not None else "another transaction"
            raise WouldDeadlock(
                f"ww_mutex_lock({self.name}): context stamp {ctx.stamp} must back off "
                f"({'wait-die' if ctx.is_wait_die else 'wounded'}; contended with {holder}): "
                f"unlock all {ctx.acquired} lock(s) it holds, then lock_slow() this one")
        raise DmaBufError(err, f"ww_mutex_lock_interruptible({self.name}): interrupted by a "
                          "signal while waiting; the lock is not held")
