"""drivers/dma-buf/dma-fence.c + include/linux/dma-fence.h (v7.1): the DMA fence.

A :class:`DmaFence` is a one-shot completion event on a *timeline* (``context``) at a position
(``seqno``). It goes from unsignalled to signalled exactly once; callbacks registered before
that run once, in registration order, in the signalling thread; waiters wake up. A driver
describes its fences with a :class:`DmaFenceOps` table (two mandatory name callbacks, the rest
optional).

State machine (spec §2.1)::

    init ──► UNSIGNALED ──(enable_sw_signaling | add_callback | wait)──► ENABLE_SIGNAL
                 │ signal*                                                  │ signal*
                 ▼                                                          ▼
              SIGNALED (+TIMESTAMP): callbacks run once, FIFO; waiters wake;
              v7.1: ops := None unless the ops define ``release`` or ``wait``.

Contract (kernel DOC "fence cross-driver contract" and "fence signalling annotation"):

* the error may only be set (negative errno) *before* signalling;
* code that signals a fence must not wait for fences: :meth:`DmaFence.signal` runs inside a
  signalling section (``machine.lockdep.begin_signalling``), and every wait starts with
  ``machine.lockdep.might_wait_fence()``, so ``lock(A); wait(f)`` versus ``lock(A)`` inside a
  signalling section is reported;
* the fence lock is a *spinlock*: callbacks and ``ops.enable_signaling`` run with it held and
  must not block (the lock tracker flags any wait while it is held).

Locking. Every fence has a lock: either an *inline* per-fence lock (``lock=None``, the v7.1
default, flag ``INLINE_LOCK``) or a shared lock passed by the driver (the kernel's
``spinlock_t *lock``; "legacy use cases when multiple fences need to be prevented from signaling
out of order", e.g. the sw_sync timeline). Take it with :meth:`DmaFence.lock_irqsave` /
:meth:`DmaFence.unlock_irqrestore` (``dma_fence_lock_irqsave()``), never on the raw lock: the
``_locked`` functions assert through the lock tracker that the caller holds it.

Waiting. As the kernel's ``dma_fence_default_wait``, a waiter queues a callback that wakes it
(``default_wait_cb`` → ``wake_up_state(task)``). The "task" is modelled by a per-thread *wake
token*: a lock from ``machine.sched`` that its thread holds at rest; sleeping is acquiring it
again, waking is releasing it. That is the cheapest blocking primitive both schedulers offer
(no per-fence condition variable; a fence nobody waits for costs no wake-up machinery), and in
controlled mode a stuck wait shows as ``acquire dma_fence_wait(ctx:seqno)`` in the deadlock
report. Time is the machine scheduler's clock, in **seconds** (the kernel counts jiffies);
``timeout=None`` (or ``math.inf``) is ``MAX_SCHEDULE_TIMEOUT``.

Interruptible waits. The kernel's ``signal_pending(current)`` is modelled by :class:`Interrupts`,
one per machine (``Interrupts.of(machine)``): ``Interrupts.of(m).send(task)`` marks a thread as
having a signal pending and wakes it if it sleeps in an interruptible fence wait, which then
raises ``DmaBufError(ERESTARTSYS)``. As in the kernel the signal stays pending (every further
interruptible wait of that thread fails at once) until it is handled: :meth:`Interrupts.clear`
(the model of returning to user space and running the signal handler).

Containers (dma_fence_array, dma_fence_chain) are signalled from their children's callbacks
through a deferred-work queue (the kernel's ``irq_work``): :func:`irq_work_queue` runs the work
as soon as the queuing thread holds no fence lock any more, so a container lock is never taken
inside a child's lock on the signalling path (the kernel needs irq_work for the same reason).

Kernel: drivers/dma-buf/dma-fence.c, include/linux/dma-fence.h, include/trace/events/dma_fence.h.
"""

from __future__ import annotations

import collections
import enum
import errno
import math
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from dmabuf.errors import ERESTARTSYS, ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine

if TYPE_CHECKING:
    from dmabuf.debug import LockTracker
    from dmabuf.sched import SchedLock
    from dmabuf.trace import TraceBus

__all__ = [
    "MAX_ERRNO",
    "MAX_SCHEDULE_TIMEOUT",
    "DmaFence",
    "DmaFenceCb",
    "DmaFenceFlag",
    "DmaFenceOps",
    "Interrupts",
    "dma_fence_allocate_private_stub",
    "dma_fence_begin_signalling",
    "dma_fence_context_alloc",
    "dma_fence_end_signalling",
    "dma_fence_get_stub",
    "dma_fence_is_container",
    "dma_fence_is_later",
    "dma_fence_is_later_or_same",
    "dma_fence_later",
    "dma_fence_wait_any_timeout",
    "dma_fence_was_initialized",
    "irq_work_queue",
    "spin_lock_irqsave",
    "spin_unlock_irqrestore",
]

#: ``MAX_SCHEDULE_TIMEOUT``: wait forever (``None`` means the same).
MAX_SCHEDULE_TIMEOUT = math.inf
#: Largest errno magnitude ``dma_fence_set_error`` accepts (include/linux/err.h MAX_ERRNO).
MAX_ERRNO = 4095
_U64 = 1 << 64
#: Remaining time reported when a wait succeeds exactly at its deadline (see wait_timeout).
_MIN_REMAINING = 1e-9
#: Longest single blocking call (threading.TIMEOUT_MAX); longer waits loop.
_TIMEOUT_MAX = threading.TIMEOUT_MAX


class DmaFenceFlag(enum.IntEnum):
    """Bit numbers of ``DmaFence.flags`` — ``enum dma_fence_flag_bits`` (v7.1 order).

    ``USER_BITS`` is the first bit drivers may use for their own purposes
    (:meth:`DmaFence.set_bit` / :meth:`DmaFence.test_and_set_bit`).
    """

    INITIALIZED = 0
    INLINE_LOCK = 1
    SEQNO64 = 2
    SIGNALED = 3
    TIMESTAMP = 4
    ENABLE_SIGNAL = 5
    USER_BITS = 6


_INITIALIZED = 1 << DmaFenceFlag.INITIALIZED
_INLINE_LOCK = 1 << DmaFenceFlag.INLINE_LOCK
_SEQNO64 = 1 << DmaFenceFlag.SEQNO64
_SIGNALED = 1 << DmaFenceFlag.SIGNALED
_TIMESTAMP = 1 << DmaFenceFlag.TIMESTAMP
_ENABLE_SIGNAL = 1 << DmaFenceFlag.ENABLE_SIGNAL

_OPTIONAL_OPS = ("enable_signaling", "signaled", "wait", "release", "set_deadline")


# --------------------------------------------------------------------------------------------
# Ops table
# --------------------------------------------------------------------------------------------


class DmaFenceOps:
    """The driver's operations on its fences — ``struct dma_fence_ops``.

    Subclass it and override what you provide. ``get_driver_name`` and ``get_timeline_name``
    are mandatory (``__dma_fence_init`` BUGs without them); for simple cases pass the names to
    the constructor instead: ``DmaFenceOps("mock", "timeline")``. Every other member is optional:
    a member not overridden counts as *not provided* (the kernel's NULL pointer), see
    :meth:`provides`. The table is constant once fences use it.

    Members (who calls them, in which state):

    * ``get_driver_name(fence) -> str`` / ``get_timeline_name(fence) -> str`` — mandatory;
      called by :meth:`DmaFence.driver_name`, tracing, ``describe()``, sync_file info. Only
      while the ops are attached (v7.1: not after a detaching signal).
    * ``enable_signaling(fence) -> bool`` — optional; called at most once, with the fence lock
      held (must not block), the first time someone needs the fence to signal (callback, wait,
      ``enable_sw_signaling``). Return False if the fence has already passed: it is then
      signalled at once.
    * ``signaled(fence) -> bool`` — optional peek, called by :meth:`DmaFence.is_signaled`
      without the lock (by ``is_signaled_locked`` with it); True makes the caller signal.
    * ``wait(fence, intr, timeout) -> float`` — optional, deprecated custom wait, called without
      locks instead of the default wait; same return/raise contract as
      :meth:`DmaFence.wait_timeout`. Providing it keeps the ops attached after signal.
    * ``release(fence) -> None`` — optional; called when the last reference is put, instead of
      the default free. Providing it keeps the ops attached after signal.
    * ``set_deadline(fence, deadline) -> None`` — optional hint (``deadline`` on the scheduler
      clock, seconds); called without locks while unsignalled.

    Kernel: include/linux/dma-fence.h, struct dma_fence_ops.
    """

    #: Names of the optional members this ops class overrides (computed per subclass).
    provided: ClassVar[frozenset[str]] = frozenset()
    _has_enable: ClassVar[bool] = False
    _has_signaled: ClassVar[bool] = False
    _has_wait: ClassVar[bool] = False
    _has_release: ClassVar[bool] = False
    _has_deadline: ClassVar[bool] = False
    _detaches: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = frozenset(n for n in _OPTIONAL_OPS
                          if getattr(cls, n) is not getattr(DmaFenceOps, n))
        cls.provided = names
        cls._has_enable = "enable_signaling" in names
        cls._has_signaled = "signaled" in names
        cls._has_wait = "wait" in names
        cls._has_release = "release" in names
        cls._has_deadline = "set_deadline" in names
        cls._detaches = not (cls._has_wait or cls._has_release)

    def __init__(self, driver_name: str | None = None,
                 timeline_name: str | None = None) -> None:
        if driver_name is not None and not isinstance(driver_name, str):
            raise TypeError(f"driver_name must be a str, not {type(driver_name).__name__}")
        if timeline_name is not None and not isinstance(timeline_name, str):
            raise TypeError(f"timeline_name must be a str, not {type(timeline_name).__name__}")
        self.driver_name = driver_name
        self.timeline_name = timeline_name

    def provides(self, member: str) -> bool:
        """Whether the optional ``member`` is provided (the kernel's ``ops->member != NULL``).

        Model-only: the kernel tests ``ops->member != NULL`` inline; Python needs a helper.
        """
        if member in ("get_driver_name", "get_timeline_name"):
            return self._has_names()
        if member not in _OPTIONAL_OPS:
            raise ValueError(f"{member!r} is not a dma_fence_ops member")
        return member in self.provided

    def _has_names(self) -> bool:
        cls = type(self)
        drv = cls.get_driver_name is not DmaFenceOps.get_driver_name or self.driver_name
        tl = cls.get_timeline_name is not DmaFenceOps.get_timeline_name or self.timeline_name
        return bool(drv) and bool(tl)

    # mandatory ------------------------------------------------------------------------------
    def get_driver_name(self, fence: DmaFence) -> str:
        """The name of the driver that issued ``fence`` (mandatory).

        Context: any; may be called under the fence lock; must not block.
        Raises: ContractViolation (the kernel WARNs) when no name was given.
        Kernel: include/linux/dma-fence.h, struct dma_fence_ops.get_driver_name.
        """
        if self.driver_name is None:
            raise ContractViolation("dma_fence_ops", "get_driver_name is mandatory")
        return self.driver_name

    def get_timeline_name(self, fence: DmaFence) -> str:
        """The name of the timeline ``fence`` is on (mandatory).

        Context: any; may be called under the fence lock; must not block.
        Raises: ContractViolation (the kernel WARNs) when no name was given.
        Kernel: include/linux/dma-fence.h, struct dma_fence_ops.get_timeline_name.
        """
        if self.timeline_name is None:
            raise ContractViolation("dma_fence_ops", "get_timeline_name is mandatory")
        return self.timeline_name

    # optional (the base versions are never called: they mark "not provided") ---------------
    def enable_signaling(self, fence: DmaFence) -> bool:
        """Start signalling ``fence`` (fence lock held); False = already passed. Optional.

        Context: called with the fence lock held (irqs off); must not block.
        Kernel: include/linux/dma-fence.h, struct dma_fence_ops.enable_signaling.
        """
        return True

    def signaled(self, fence: DmaFence) -> bool:
        """Peek whether ``fence`` has passed. Optional.

        Context: may be called with or without the fence lock; must not block.
        Kernel: include/linux/dma-fence.h, struct dma_fence_ops.signaled.
        """
        return False

    def wait(self, fence: DmaFence, intr: bool, timeout: float) -> float:
        """Custom (deprecated) wait; contract of :meth:`DmaFence.wait_timeout`. Optional.

        Context: may block (interruptible when ``intr``).
        Kernel: include/linux/dma-fence.h, struct dma_fence_ops.wait (dma_fence_wait_timeout()).
        """
        return fence._default_wait(intr, timeout)

    def release(self, fence: DmaFence) -> None:
        """Free ``fence`` (last reference gone). Optional.

        Context: called from the final dma_fence_put(); must not block.
        Kernel: include/linux/dma-fence.h, struct dma_fence_ops.release (dma_fence_release()).
        """

    def set_deadline(self, fence: DmaFence, deadline: float) -> None:
        """Deadline hint. Optional.

        Context: called without the fence lock; must not block.
        Kernel: include/linux/dma-fence.h, struct dma_fence_ops.set_deadline
        (dma_fence_set_deadline()).
        """

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} driver={self.driver_name!r} "
                f"timeline={self.timeline_name!r} provides={sorted(self.provided)}>")


class _StubOps(DmaFenceOps):
    """dma_fence_stub_ops: names only ("stub"), so stubs detach on signal."""

    def __init__(self) -> None:
        super().__init__("stub", "stub")


_STUB_OPS = _StubOps()


# --------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------


class DmaFenceCb:
    """A callback slot — ``struct dma_fence_cb``.

    Owned by the caller; registered on at most one fence at a time with
    :meth:`DmaFence.add_callback`. ``func(fence, cb)`` runs once, in the signalling thread, with
    the fence lock held (it must not block; it may ``put`` references). Subclass it to carry
    data (the kernel's ``container_of`` idiom).
    """

    __slots__ = ("__dict__", "_fence", "func")

    def __init__(self, func: Callable[[DmaFence, DmaFenceCb], None] | None = None) -> None:
        self.func = func
        #: The fence this callback is queued on (the kernel's non-empty ``cb->node``).
        self._fence: DmaFence | None = None

    @property
    def queued(self) -> bool:
        """Whether the callback is queued (``!list_empty(&cb->node)``)."""
        return self._fence is not None

    def __repr__(self) -> str:
        return f"<DmaFenceCb func={getattr(self.func, '__name__', self.func)} queued={self.queued}>"


class _WakeCb(DmaFenceCb):
    """default_wait_cb: wakes the waiting thread by releasing its wake token.

    The token is a lock from ``machine.sched`` that its thread holds at rest; waiting is
    acquiring it again (blocks until someone releases it), waking is releasing it. It is the
    kernel's ``wake_up_state(task)`` with the cheapest blocking primitive the scheduler has.
    """

    __slots__ = ("tok",)

    def __init__(self, tok: SchedLock) -> None:
        super().__init__(_wake_cb)
        self.tok = tok

    def wake(self) -> None:
        """Wake the token's thread (idempotent)."""
        try:
            self.tok.release()
        except RuntimeError:  # already released: the thread is being woken anyway
            pass


def _wake_cb(fence: DmaFence, cb: DmaFenceCb) -> None:
    """dma_fence_default_wait_cb(): wake_up_state(wait->task)."""
    try:
        cb.tok.release()  # type: ignore[attr-defined]
    except RuntimeError:
        pass


# --------------------------------------------------------------------------------------------
# Per-machine state: deferred work (irq_work), the stub fence
# --------------------------------------------------------------------------------------------


class _CpuLocal(threading.local):
    """Per-thread ("per-CPU") state: fence locks held and pending irq_work."""

    def __init__(self) -> None:
        self.depth = 0
        self.running = False
        self.work: collections.deque[Callable[[], None]] = collections.deque()
        #: The thread's wait callback and wake-up event (the kernel's task wake-up), lazily made.
        self.wait_cb: _WakeCb | None = None


class _FenceCore:
    """Per-machine fence state (``machine.state(_FenceCore)``)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.cpu = _CpuLocal()
        # Plays the role of atomic instructions (kref, set_bit): held for a few bytecodes,
        # never across a scheduling point, so it is safe under the controlled scheduler.
        self.atomic = threading.Lock()
        self.now = machine.sched.now
        self.stub_lock = machine.sched.lock("dma_fence_stub_lock")
        self.stub: DmaFence | None = None


def _thread_wait_cb(cpu: _CpuLocal, machine: Machine) -> _WakeCb:
    """The calling thread's wait callback and wake token, made on its first wait."""
    tok = machine.sched.lock(f"wake({threading.current_thread().name})")
    tok.acquire()  # held at rest
    cb = cpu.wait_cb = _WakeCb(tok)
    return cb


def _core(machine: Machine) -> _FenceCore:
    return machine.state(_FenceCore)


def _run_irq_work(cpu: _CpuLocal) -> None:
    # Not re-entered: work queued by work runs from the outer loop (bounded stack depth).
    if cpu.running:
        return
    cpu.running = True
    try:
        while cpu.work and not cpu.depth:
            cpu.work.popleft()()
    finally:
        cpu.running = False


def irq_work_queue(fn: Callable[[], None], *, machine: Machine | None = None) -> None:
    """Queue ``fn`` to run once the calling thread holds no fence lock — irq_work_queue().

    Containers use it to signal themselves from a child's callback without nesting fence
    locks. If the thread holds no fence lock, ``fn`` runs at once.

    Args:
        fn: the work.
        machine: whose per-thread queue (default: the current machine).
    Context: any; never blocks itself (``fn`` must not block either: it stands for irq context).
    Returns: None.
    Kernel: kernel/irq_work.c, irq_work_queue() (the kernel runs the work in hard-irq context
    soon after; the model runs it in the same thread right after the last fence lock is
    dropped).
    """
    cpu = _core(machine or current_machine()).cpu
    cpu.work.append(fn)
    if not cpu.depth:
        _run_irq_work(cpu)


# --------------------------------------------------------------------------------------------
# Interrupts: signal_pending(current)
# --------------------------------------------------------------------------------------------


class _IntrState:
    __slots__ = ("pending", "waker")

    def __init__(self) -> None:
        self.pending = False
        self.waker: Callable[[], None] | None = None


class Interrupts:
    """Pending signals per thread — the model of ``signal_pending(current)``.

    One per machine: ``Interrupts.of(machine)``. :meth:`send` marks a thread as having a signal
    pending and wakes it if it sleeps in an interruptible fence wait (``intr=True``); that wait
    then raises ``DmaBufError(ERESTARTSYS)``. The signal stays pending until :meth:`clear`
    (in the kernel, until the return to user space delivers it), so every interruptible wait of
    that thread fails at once meanwhile. Uninterruptible waits ignore it.

    Threads are identified by a :class:`threading.Thread` or a task from
    ``machine.sched.spawn()`` (both schedulers' tasks are accepted).
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._threads: weakref.WeakKeyDictionary[threading.Thread, _IntrState] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()  # dict access only; never held across a scheduling point

    @classmethod
    def of(cls, machine: Machine | None = None) -> Interrupts:
        """The machine's interrupt facility (default: the current machine).

        Model-only: per-machine lookup of the signal facility; the kernel's is per task_struct.
        """
        return (machine or current_machine()).state(Interrupts)

    @staticmethod
    def _thread_of(target: object | None) -> threading.Thread:
        if target is None:
            return threading.current_thread()
        if isinstance(target, threading.Thread):
            return target
        for attr in ("thread", "_thread"):
            th = getattr(target, attr, None)
            if isinstance(th, threading.Thread):
                return th
        raise TypeError(f"cannot find the thread of {target!r}: pass a threading.Thread or a "
                        "task returned by machine.sched.spawn()")

    def _state(self, th: threading.Thread) -> _IntrState:
        with self._lock:
            st = self._threads.get(th)
            if st is None:
                st = _IntrState()
                self._threads[th] = st
            return st

    def send(self, target: object) -> None:
        """Send a signal to ``target``'s thread (``kill()``/``send_sig()``): pending + wake-up.

        Args:
            target: a ``threading.Thread`` or a scheduler task.
        Context: may take the lock of the fence the target sleeps on (a scheduling point).
        Raises: TypeError if the thread cannot be identified.

        Kernel: kernel/signal.c, send_sig() / signal_wake_up().
        """
        st = self._state(self._thread_of(target))
        st.pending = True
        waker = st.waker
        if waker is not None:
            waker()

    def pending(self, target: object | None = None) -> bool:
        """``signal_pending()``: whether ``target`` (default: the calling thread) has one.

        Kernel: include/linux/sched/signal.h, signal_pending().
        """
        with self._lock:
            st = self._threads.get(self._thread_of(target))
        return st is not None and st.pending

    def clear(self, target: object | None = None) -> None:
        """Handle (drop) the pending signal of ``target`` (default: the calling thread).

        Kernel: kernel/signal.c, dequeue_signal() (the pending bit of signal_pending()).
        """
        with self._lock:
            st = self._threads.get(self._thread_of(target))
        if st is not None:
            st.pending = False

    # used by waits -------------------------------------------------------------------------
    def _arm(self, waker: Callable[[], None]) -> _IntrState:
        st = self._state(threading.current_thread())
        st.waker = waker
        return st


def _restartsys(what: str) -> DmaBufError:
    return DmaBufError(ERESTARTSYS, f"{what} interrupted by a signal (Interrupts.send); "
                                    "return to the caller, handle it (Interrupts.clear) and "
                                    "restart the wait")


def _check_timeout(timeout: float | None, what: str) -> float:
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{what}: timeout must be a number of seconds or None, not "
                        f"{type(timeout).__name__}")
    t = float(timeout)
    if not t >= 0:  # also catches NaN
        raise DmaBufError(errno.EINVAL, f"{what}: negative timeout {timeout!r}; use 0 to poll "
                                        "or None to wait forever")
    return t


def _check_u64(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value < _U64:
        raise DmaBufError(errno.EINVAL, f"{what}={value} is outside the u64 range [0, 2**64)")
    return value


# --------------------------------------------------------------------------------------------
# The fence
# --------------------------------------------------------------------------------------------


class DmaFence:
    """A DMA fence — ``struct dma_fence`` initialised by ``dma_fence_init()``.

    Args:
        ops: the driver's :class:`DmaFenceOps` (names mandatory).
        context: the timeline (from :func:`dma_fence_context_alloc`; 0 for stubs and mocks).
        seqno: position on the timeline (u64).
        lock: a shared fence lock from ``machine.sched.lock()`` (the kernel's external
            ``spinlock_t *``), or None for the inline per-fence lock (v7.1 default).
        machine: the machine (default: the current one).
    Context: never blocks. The new fence holds one reference.
    Raises: TypeError for wrong types; DmaBufError(EINVAL) for out-of-range context/seqno;
        ContractViolation if the ops lack the mandatory name callbacks (BUG_ON).
    Kernel: drivers/dma-buf/dma-fence.c, dma_fence_init() / __dma_fence_init().
    """

    __slots__ = ("__weakref__", "_cbs", "_core", "_cpu", "_lock", "_lockdep",
                 "_refcount", "_trace", "context", "error", "flags", "machine", "ops", "seqno",
                 "timestamp")

    #: lockdep class of this fence type's lock (containers use their own class, as in v7.1).
    LOCK_CLASS: ClassVar[str] = "dma_fence_lock"
    #: True for fence containers (dma_fence_array, dma_fence_chain): dma_fence_is_container().
    IS_CONTAINER: ClassVar[bool] = False

    def __init__(self, ops: DmaFenceOps, context: int, seqno: int, *,
                 lock: SchedLock | None = None, machine: Machine | None = None,
                 _flags: int = 0) -> None:
        if not isinstance(ops, DmaFenceOps):
            raise TypeError(f"ops must be a DmaFenceOps, not {type(ops).__name__}")
        if not ops._has_names():
            raise ContractViolation("dma_fence_init", "ops must provide get_driver_name and "
                                    "get_timeline_name (BUG_ON in __dma_fence_init)")
        m = machine if machine is not None else current_machine()
        self.machine = m
        self.context = _check_u64(context, "context")
        self.seqno = _check_u64(seqno, "seqno")
        #: The ops, or None once detached by a signal (v7.1).
        self.ops: DmaFenceOps | None = ops
        self._core = core = _core(m)
        self._cpu = core.cpu
        self._lockdep: LockTracker = m.lockdep
        self._trace: TraceBus = m.trace
        flags = _flags | _INITIALIZED
        if lock is None:
            lock = m.sched.lock("dma_fence.inline_lock")
            flags |= _INLINE_LOCK
        elif not (hasattr(lock, "acquire") and hasattr(lock, "release")):
            raise TypeError(f"lock must be a lock from machine.sched.lock() or None, not "
                            f"{type(lock).__name__}")
        self._lock: SchedLock = lock
        #: ``enum dma_fence_flag_bits`` as a bitmask; see :class:`DmaFenceFlag`.
        self.flags = flags
        #: Negative errno set with :meth:`set_error` before signalling, else 0.
        self.error = 0
        #: When it signalled, on the machine's scheduler clock (seconds); None before.
        self.timestamp: float | None = None
        self._cbs: dict[DmaFenceCb, None] | None = None
        self._refcount = 1
        if self._trace.listeners:
            self._emit("dma_fence_init")

    @classmethod
    def init64(cls, ops: DmaFenceOps, context: int, seqno: int, *,
               lock: SchedLock | None = None, machine: Machine | None = None) -> DmaFence:
        """Create a fence with 64-bit seqno comparison (SEQNO64) — dma_fence_init64().

        Args/Raises: as the constructor.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_init64().
        """
        return cls(ops, context, seqno, lock=lock, machine=machine, _flags=_SEQNO64)

    def __repr__(self) -> str:
        state = "signaled" if self.flags & _SIGNALED else "unsignaled"
        return (f"<{type(self).__name__} {self.context}:{self.seqno} {state}"
                f"{' err=' + str(self.error) if self.error else ''}>")

    # trace --------------------------------------------------------------------------------
    def _emit(self, event: str, **extra: Any) -> None:
        ops = self.ops
        if ops is not None:
            driver, timeline = ops.get_driver_name(self), ops.get_timeline_name(self)
        else:
            driver, timeline = "detached-driver", "signaled-timeline"
        self._trace.emit(event, fence=self, driver=driver, timeline=timeline,
                         context=self.context, seqno=self.seqno, **extra)

    # lock --------------------------------------------------------------------------------
    def spinlock(self) -> SchedLock:
        """The lock protecting this fence — dma_fence_spinlock().

        Returns: the inline or the shared lock. Take it with :meth:`lock_irqsave`, not directly.
        Kernel: include/linux/dma-fence.h, dma_fence_spinlock().
        """
        return self._lock

    def lock_irqsave(self) -> None:
        """Take the fence lock — dma_fence_lock_irqsave().

        Context: spins (a scheduling point); while held, nothing may block (lockdep spin lock).
        Raises: ContractViolation (lock tracker on) for recursive or inverted lock order.
        Kernel: include/linux/dma-fence.h, dma_fence_lock_irqsave().
        """
        ld = self._lockdep
        if ld.enabled:
            ld.acquire(self._lock, self.LOCK_CLASS, spin=True)
        self._lock.acquire()
        self._cpu.depth += 1

    def unlock_irqrestore(self) -> None:
        """Release the fence lock — dma_fence_unlock_irqrestore().

        Runs deferred work (:func:`irq_work_queue`) once the thread holds no fence lock.
        Raises: ContractViolation (lock tracker on) if the caller does not hold it.
        Kernel: include/linux/dma-fence.h, dma_fence_unlock_irqrestore().
        """
        ld = self._lockdep
        if ld.enabled:
            ld.release(self._lock, self.LOCK_CLASS)
        cpu = self._cpu
        cpu.depth -= 1
        self._lock.release()
        if cpu.work and not cpu.depth:
            _run_irq_work(cpu)

    def assert_held(self) -> None:
        """``dma_fence_assert_held()``: raise unless the caller holds the fence lock.

        Kernel: include/linux/dma-fence.h, dma_fence_assert_held()
        (lockdep_assert_held(fence->lock)).
        """
        ld = self._lockdep
        if ld.enabled:
            ld.assert_held(self._lock, "dma_fence_assert_held",
                           f"the lock of fence {self.context}:{self.seqno}")

    # refcount ------------------------------------------------------------------------------
    def get(self) -> DmaFence:
        """Take a reference — dma_fence_get().

        Returns: ``self``. Raises: ContractViolation if the fence was already released
        (refcount_t "addition on 0; use-after-free").
        Kernel: include/linux/dma-fence.h, dma_fence_get().
        """
        with self._core.atomic:
            if self._refcount <= 0:
                raise ContractViolation("refcount_t", f"dma_fence_get on released fence "
                                        f"{self.context}:{self.seqno} (use-after-free)")
            self._refcount += 1
        return self

    def get_unless_zero(self) -> DmaFence | None:
        """Take a reference unless the fence is being released — dma_fence_get_rcu().

        Returns: ``self``, or None if the refcount already dropped to zero.
        Kernel: include/linux/dma-fence.h, dma_fence_get_rcu() (kref_get_unless_zero).
        """
        with self._core.atomic:
            if self._refcount <= 0:
                return None
            self._refcount += 1
        return self

    def put(self) -> None:
        """Drop a reference; the last one releases the fence — dma_fence_put().

        Context: the release runs in the caller (``ops.release`` or the default free).
        Raises: ContractViolation on an unbalanced put (refcount underflow).
        Kernel: include/linux/dma-fence.h, dma_fence_put(); dma-fence.c, dma_fence_release().
        """
        with self._core.atomic:
            if self._refcount <= 0:
                raise ContractViolation("refcount_t", f"dma_fence_put underflow on fence "
                                        f"{self.context}:{self.seqno}")
            self._refcount -= 1
            last = self._refcount == 0
        if last:
            self._release()

    @property
    def refcount(self) -> int:
        """Current reference count (``kref_read``); 0 once released."""
        return self._refcount

    def _release(self) -> None:
        if self._trace.listeners:
            self._emit("dma_fence_destroy")
        if self._cbs and not self.flags & _SIGNALED:
            self.machine.warn(
                "dma_fence_release",
                f"Fence {self.driver_name()}:{self.timeline_name()}:{self.context:x}:"
                f"{self.seqno:x} released with pending signals!")
            self.lock_irqsave()
            try:
                self.error = -errno.EDEADLK
                self.signal_locked()
            finally:
                self.unlock_irqrestore()
        ops = self.ops
        if ops is not None and ops._has_release:
            ops.release(self)
        # else: dma_fence_free() — nothing to do in Python beyond the zero refcount.

    # flags ---------------------------------------------------------------------------------
    def test_bit(self, bit: int) -> bool:
        """``test_bit(bit, &fence->flags)``.

        Kernel: include/linux/dma-fence.h, test_bit() on dma_fence.flags.
        """
        return bool(self.flags & (1 << bit))

    def set_bit(self, bit: int) -> None:
        """``set_bit(bit, &fence->flags)`` (atomic).

        Kernel: include/linux/dma-fence.h, set_bit() on dma_fence.flags.
        """
        with self._core.atomic:
            self.flags |= 1 << bit

    def clear_bit(self, bit: int) -> None:
        """``clear_bit(bit, &fence->flags)`` (atomic); only for driver bits >= USER_BITS.

        Raises: ContractViolation for a core bit (below ``USER_BITS``).
        Kernel: include/linux/dma-fence.h, clear_bit() on dma_fence.flags.
        """
        if bit < DmaFenceFlag.USER_BITS:
            raise ContractViolation("dma_fence_flags", f"bit {bit} belongs to the core; "
                                    "drivers may only clear bits >= USER_BITS")
        with self._core.atomic:
            self.flags &= ~(1 << bit)

    def test_and_set_bit(self, bit: int) -> bool:
        """``test_and_set_bit(bit, &fence->flags)`` (atomic): the old value.

        Kernel: include/linux/dma-fence.h, test_and_set_bit() on dma_fence.flags.
        """
        with self._core.atomic:
            old = self.flags
            self.flags = old | (1 << bit)
        return bool(old & (1 << bit))

    def _test_and_set(self, mask: int) -> int:
        with self._core.atomic:
            old = self.flags
            self.flags = old | mask
        return old

    def was_initialized(self) -> bool:
        """Whether the fence was initialised — dma_fence_was_initialized().

        Kernel: include/linux/dma-fence.h, dma_fence_was_initialized() (v7.1).
        """
        return bool(self.flags & _INITIALIZED)

    def test_signaled_flag(self) -> bool:
        """Whether the SIGNALED bit is set (no ops call) — dma_fence_test_signaled_flag().

        Kernel: include/linux/dma-fence.h, dma_fence_test_signaled_flag().
        """
        return bool(self.flags & _SIGNALED)

    # names ---------------------------------------------------------------------------------
    def driver_name(self) -> str:
        """The driver name, or ``"detached-driver"`` once detached — dma_fence_driver_name().

        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_driver_name() (v7.1, under RCU).
        """
        ops = self.ops
        return ops.get_driver_name(self) if ops is not None else "detached-driver"

    def timeline_name(self) -> str:
        """The timeline name, or ``"signaled-timeline"`` once detached — dma_fence_timeline_name().

        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_timeline_name() (v7.1, under RCU).
        """
        ops = self.ops
        return ops.get_timeline_name(self) if ops is not None else "signaled-timeline"

    # signalling ----------------------------------------------------------------------------
    def signal_timestamp_locked(self, timestamp: float) -> None:
        """Signal with ``timestamp``; the lock must be held — dma_fence_signal_timestamp_locked().

        Idempotent: only the first signal has an effect. Order (v7.1): set SIGNALED (the model
        publishes the timestamp and TIMESTAMP in the same atomic step), trace, detach the ops
        (no ``release``/``wait``), stash the callback list, run the callbacks in registration
        order (waiters are woken by theirs).

        Args:
            timestamp: signal time on the scheduler clock (seconds).
        Context: fence lock held (asserted); must not block; callbacks run here.
        Raises: ContractViolation if the lock is not held (lock tracker on); the first
            exception a callback raised, after all callbacks ran and the state is consistent.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_signal_timestamp_locked().
        """
        ld = self._lockdep
        if ld.enabled:
            ld.assert_held(self._lock, "dma_fence_assert_held",
                           f"the lock of fence {self.context}:{self.seqno}")
        self._signal_ts_locked(timestamp)

    def _signal_ts_locked(self, timestamp: float) -> None:
        """signal_timestamp_locked() without the lock assertion (callers hold the lock)."""
        with self._core.atomic:  # test_and_set_bit(SIGNALED)
            old = self.flags
            if not old & _SIGNALED:
                # The timestamp and TIMESTAMP bit are published together with SIGNALED here
                # (the kernel sets them a few lines later; readers spin on TIMESTAMP anyway).
                self.timestamp = timestamp
                self.flags = old | _SIGNALED | _TIMESTAMP
        if old & _SIGNALED:
            return
        if self._trace.listeners:
            self._emit("dma_fence_signaled")
        ops = self.ops
        if ops is not None and ops._detaches:
            self.ops = None
        cbs = self._cbs
        self._cbs = None
        first_exc: BaseException | None = None
        if cbs:
            for cb in cbs:
                cb._fence = None
                func = cb.func
                try:
                    func(self, cb)  # type: ignore[misc]
                except Exception as e:  # keep the fence consistent; report after
                    if first_exc is None:
                        first_exc = e
        if first_exc is not None:
            raise first_exc

    def signal_locked(self) -> None:
        """Signal now; the lock must be held — dma_fence_signal_locked().

        Context/Raises: as :meth:`signal_timestamp_locked`.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_signal_locked().
        """
        self.signal_timestamp_locked(self._core.now())

    def signal_timestamp(self, timestamp: float) -> None:
        """Signal with ``timestamp`` — dma_fence_signal_timestamp().

        Context: takes the fence lock; never sleeps.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_signal_timestamp().
        """
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            raise TypeError(f"timestamp must be a number (seconds), not {type(timestamp).__name__}")
        self.lock_irqsave()
        try:
            self.signal_timestamp_locked(float(timestamp))
        finally:
            self.unlock_irqrestore()

    def signal(self) -> None:
        """Signal the fence: run its callbacks, wake its waiters — dma_fence_signal().

        Returns nothing (v7.0+): signalling twice is harmless; use :meth:`check_and_signal` to
        learn whether it was already signalled.

        Context: inside a fence-signalling section (lockdep annotation); takes the fence lock;
            never sleeps; callbacks run in the calling thread.
        Raises: the first exception a callback raised (after all ran).
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_signal().
        """
        # Hot path: lock_irqsave()/unlock_irqrestore() inlined.
        ld = self._lockdep
        lock = self._lock
        cookie = 0
        if ld.enabled:
            cookie = ld.begin_signalling()
            ld.acquire(lock, self.LOCK_CLASS, spin=True)
        lock.acquire()
        cpu = self._cpu
        cpu.depth += 1
        try:
            self._signal_ts_locked(self._core.now())
        finally:
            if ld.enabled:
                ld.release(lock, self.LOCK_CLASS)
            cpu.depth -= 1
            lock.release()
            if cpu.work and not cpu.depth:
                _run_irq_work(cpu)
            if cookie:
                ld.end_signalling(cookie)

    def check_and_signal_locked(self) -> bool:
        """Signal unless signalled; lock held — dma_fence_check_and_signal_locked().

        Returns: True if the fence was already signalled, False if this call signalled it.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_check_and_signal_locked().
        """
        ret = bool(self.flags & _SIGNALED)
        self.signal_locked()
        return ret

    def check_and_signal(self) -> bool:
        """Signal unless already signalled, race-free — dma_fence_check_and_signal().

        Context: takes the fence lock.
        Returns: True if the fence was already signalled, False if this call signalled it.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_check_and_signal().
        """
        self.lock_irqsave()
        try:
            return self.check_and_signal_locked()
        finally:
            self.unlock_irqrestore()

    def is_signaled_locked(self) -> bool:
        """Signalled check with the lock held — dma_fence_is_signaled_locked().

        If ``ops.signaled`` reports completion the fence is signalled (``signal_locked``).
        Kernel: include/linux/dma-fence.h, dma_fence_is_signaled_locked().
        """
        return bool(self.flags & _SIGNALED) or self._ops_signaled(self.signal_locked)

    def is_signaled(self) -> bool:
        """Whether the fence has signalled — dma_fence_is_signaled().

        True if the SIGNALED bit is set, or if ``ops.signaled`` says so — in which case the
        fence is signalled now (side effect, as in the kernel).
        Context: may take the fence lock (to signal).
        Kernel: include/linux/dma-fence.h, dma_fence_is_signaled().
        """
        return bool(self.flags & _SIGNALED) or self._ops_signaled(self.signal)

    def _ops_signaled(self, signal: Callable[[], None]) -> bool:
        """``ops->signaled(fence)``: if the driver says done, signal with ``signal``."""
        ops = self.ops
        if ops is not None and ops._has_signaled and ops.signaled(self):
            signal()
            return True
        return False

    # error / status ------------------------------------------------------------------------
    def set_error(self, error: int) -> None:
        """Record a negative errno to report once signalled — dma_fence_set_error().

        Args:
            error: a negative errno (``-errno.EIO``), ``-MAX_ERRNO <= error < 0``.
        Context: before signalling; any locking.
        Raises: TypeError if not an int; DmaBufError(EINVAL) if ``error >= 0`` or below
            ``-MAX_ERRNO`` (the kernel WARNs); ContractViolation if the fence already signalled
            (the kernel WARNs: the error would be invisible or racy).
        Kernel: include/linux/dma-fence.h, dma_fence_set_error().
        """
        if isinstance(error, bool) or not isinstance(error, int):
            raise TypeError(f"error must be a negative errno int, not {type(error).__name__}")
        if error >= 0 or error < -MAX_ERRNO:
            raise DmaBufError(errno.EINVAL, f"dma_fence_set_error({error}): the error must be a "
                                            f"negative errno in [-{MAX_ERRNO}, -1], e.g. "
                                            "-errno.EIO")
        if self.flags & _SIGNALED:
            raise ContractViolation("dma_fence_set_error", f"fence {self.context}:{self.seqno} "
                                    "already signalled: set the error before signalling")
        self.error = error

    def get_status_locked(self) -> int:
        """Status with the lock held — dma_fence_get_status_locked().

        Returns: 0 if unsignalled, 1 if signalled without error, the negative error otherwise.
        Kernel: include/linux/dma-fence.h, dma_fence_get_status_locked().
        """
        if self.is_signaled_locked():
            return self.error or 1
        return 0

    def get_status(self) -> int:
        """Completion status — dma_fence_get_status().

        Context: takes the fence lock.
        Returns: 0 pending, 1 signalled ok, negative errno if signalled with an error.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_get_status().
        """
        self.lock_irqsave()
        try:
            return self.get_status_locked()
        finally:
            self.unlock_irqrestore()

    @property
    def timestamp_ns(self) -> int:
        """The signal timestamp in integer ns (``ktime_to_ns``); 0 while unsignalled."""
        ts = self.timestamp
        return 0 if ts is None or not self.flags & _TIMESTAMP else round(ts * 1e9)

    # callbacks -----------------------------------------------------------------------------
    def _enable_signaling_locked(self) -> bool:
        """__dma_fence_enable_signaling(): True if still unsignalled afterwards."""
        old = self._test_and_set(_ENABLE_SIGNAL)
        if self.flags & _SIGNALED:
            return False
        ops = self.ops
        if not old & _ENABLE_SIGNAL and ops is not None and ops._has_enable:
            if self._trace.listeners:
                self._emit("dma_fence_enable_signal")
            if not ops.enable_signaling(self):
                self.signal_locked()
                return False
        return True

    def enable_sw_signaling(self) -> None:
        """Ask the driver to signal the fence soon — dma_fence_enable_sw_signaling().

        Sets ENABLE_SIGNAL; ``ops.enable_signaling`` is called only the first time (fence lock
        held); if it returns False the fence is signalled at once.
        Context: takes the fence lock (skipped when there is no ``enable_signaling`` to call,
            which is observably the same).
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_enable_sw_signaling().
        """
        flags = self.flags
        ops = self.ops
        if flags & _SIGNALED or ops is None or not ops._has_enable:
            # Nothing to call: setting the bit is all the kernel does under the lock.
            if not flags & _ENABLE_SIGNAL:
                self._test_and_set(_ENABLE_SIGNAL)
            return
        self.lock_irqsave()
        try:
            self._enable_signaling_locked()
        finally:
            self.unlock_irqrestore()

    def add_callback(self, cb: DmaFenceCb,
                     func: Callable[[DmaFence, DmaFenceCb], None]) -> int:
        """Run ``func(fence, cb)`` when the fence signals — dma_fence_add_callback().

        Enables signalling. The callback runs once, in the signalling thread, with the fence
        lock held (must not block), after the callbacks added before it.

        Args:
            cb: the caller's :class:`DmaFenceCb` (not queued anywhere else).
            func: the function.
        Context: takes the fence lock.
        Returns: 0 if queued; ``-errno.ENOENT`` if the fence is already signalled (``func`` is
            NOT called) — a value callers branch on, so it is returned, not raised.
        Raises: DmaBufError(EINVAL) if ``func`` is None (kernel: WARN + -EINVAL); TypeError for
            a ``cb`` that is not a DmaFenceCb or a non-callable ``func``; ContractViolation if
            ``cb`` is still queued on a fence (list corruption in the kernel).
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_add_callback().
        """
        if not isinstance(cb, DmaFenceCb):
            raise TypeError(f"cb must be a DmaFenceCb, not {type(cb).__name__}")
        if func is None:
            raise DmaBufError(errno.EINVAL, "dma_fence_add_callback: func is NULL; pass the "
                                            "function to call on signal")
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        if cb._fence is not None:
            raise ContractViolation("dma_fence_add_callback", f"{cb!r} is still queued on "
                                    f"fence {cb._fence.context}:{cb._fence.seqno}; a callback "
                                    "can be registered to one fence at a time")
        if self.flags & _SIGNALED:
            return -errno.ENOENT
        self.lock_irqsave()
        try:
            if self._enable_signaling_locked():
                cb.func = func
                cbs = self._cbs
                if cbs is None:
                    cbs = self._cbs = {}
                cbs[cb] = None
                cb._fence = self
                return 0
            return -errno.ENOENT
        finally:
            self.unlock_irqrestore()

    def remove_callback(self, cb: DmaFenceCb) -> bool:
        """Unqueue a callback — dma_fence_remove_callback().

        Context: takes the fence lock (so a running callback has finished when it returns
            False).
        Returns: True if ``cb`` was still queued (it will never run); False if it already ran
            (or was never queued).
        Raises: ContractViolation if ``cb`` is queued on another fence (undefined behaviour).
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_remove_callback().
        """
        if not isinstance(cb, DmaFenceCb):
            raise TypeError(f"cb must be a DmaFenceCb, not {type(cb).__name__}")
        self.lock_irqsave()
        try:
            owner = cb._fence
            if owner is None:
                return False
            if owner is not self:
                raise ContractViolation("dma_fence_remove_callback", f"{cb!r} is queued on "
                                        f"fence {owner.context}:{owner.seqno}, not on "
                                        f"{self.context}:{self.seqno}")
            cbs = self._cbs
            if cbs is not None:
                cbs.pop(cb, None)
            cb._fence = None
            return True
        finally:
            self.unlock_irqrestore()

    def pending_callbacks(self) -> int:
        """Number of callbacks queued (introspection; the kernel's cb_list length).

        Model-only: introspection of the length of dma_fence.cb_list, which the kernel never counts.
        """
        cbs = self._cbs
        return len(cbs) if cbs else 0

    # waiting -------------------------------------------------------------------------------
    def _default_wait(self, intr: bool, timeout: float) -> float:
        """dma_fence_default_wait(): see :meth:`wait_timeout` (timeout already checked).

        As in the kernel, the waiter queues a callback that wakes it (``default_wait_cb``):
        here by releasing the calling thread's wake token (a ``machine.sched`` lock the thread
        holds at rest; :class:`Interrupts` releases it too). Like the kernel's fast path on the
        SIGNALED bit, a waiter may return while the signalling thread still runs later
        callbacks; take and release the fence lock to wait for those.
        """
        ret = timeout if timeout else 1.0
        if self.flags & _SIGNALED:
            return ret
        cpu = self._cpu
        cb = cpu.wait_cb
        if cb is None:
            cb = _thread_wait_cb(cpu, self.machine)
        tok = cb.tok
        intr_state: _IntrState | None = None
        ld = self._lockdep
        lock = self._lock
        if ld.enabled:
            ld.acquire(lock, self.LOCK_CLASS, spin=True)
        lock.acquire()  # lock_irqsave() inlined (hot path)
        cpu.depth += 1
        try:
            if self.flags & _SIGNALED:
                return ret
            if intr:
                intr_state = Interrupts.of(self.machine)._arm(cb.wake)
                if intr_state.pending:
                    intr_state.waker = None
                    raise _restartsys("dma_fence_wait")
            if not timeout:
                return 0.0
            tok.acquire(False)  # re-take the token if a stale wake-up released it
            cbs = self._cbs
            if cbs is None:
                cbs = self._cbs = {}
            cbs[cb] = None
            cb._fence = self
        finally:
            if ld.enabled:
                ld.release(lock, self.LOCK_CLASS)
            cpu.depth -= 1
            lock.release()
            if cpu.work and not cpu.depth:
                _run_irq_work(cpu)
        sched = self.machine.sched
        forever = timeout == math.inf
        now = self._core.now
        deadline = math.inf if forever else now() + timeout
        if sched.controlled:  # what a deadlock report shows for this thread
            tok.name = f"dma_fence_wait({self.context}:{self.seqno})"  # type: ignore[attr-defined]
        interrupted = False
        try:
            while True:
                # Sleep: re-acquire the token we hold; a wake-up releases it. Afterwards we hold
                # it again (ready for the next wait), or still hold it after a timeout.
                if forever:
                    tok.acquire()
                else:
                    remaining = deadline - now()
                    if remaining <= 0:
                        break
                    tok.acquire(True, min(remaining, _TIMEOUT_MAX))
                if intr_state is not None and intr_state.pending:
                    interrupted = True
                    break
                if self.flags & _SIGNALED:
                    break
                # Spurious wake-up (an interrupt for an uninterruptible wait, a stale wake).
        finally:
            if intr_state is not None:
                intr_state.waker = None
            if cb._fence is not None:
                # Timed out or interrupted: unqueue the callback under the lock. (When the
                # signaller already dequeued it, the kernel re-takes the lock too; skipping
                # that is the same as the kernel's fast path on the SIGNALED bit.)
                self.lock_irqsave()
                try:
                    if cb._fence is self:
                        cbs = self._cbs
                        if cbs is not None:
                            cbs.pop(cb, None)
                        cb._fence = None
                finally:
                    self.unlock_irqrestore()
        if interrupted:
            raise _restartsys("dma_fence_wait")
        if not self.flags & _SIGNALED:
            return 0.0
        if forever:
            return math.inf
        # Signalled: the remaining time. At the exact deadline the kernel may report 0 (jiffy
        # granularity); the model reports success, since the fence did signal.
        return max(deadline - sched.now(), _MIN_REMAINING)

    def wait_timeout(self, intr: bool, timeout: float | None) -> float:
        """Sleep until the fence signals or ``timeout`` elapses — dma_fence_wait_timeout().

        Enables signalling, then uses ``ops.wait`` if provided (deprecated) or the default wait.

        Args:
            intr: interruptible (a signal sent with :class:`Interrupts` aborts the wait).
            timeout: seconds (``0`` polls, ``None``/``math.inf`` = MAX_SCHEDULE_TIMEOUT).
        Context: may sleep; must not be called inside a fence-signalling section or with a
            spinlock held (checked: ``might_sleep`` / ``__dma_fence_might_wait``).
        Returns: the remaining time (> 0) if the fence signalled — ``timeout`` itself if it was
            already signalled, and ``1`` when ``timeout == 0`` (I-F4); ``math.inf`` for an
            infinite timeout; ``0`` if it timed out (a 0 timeout never blocks).
        Raises: DmaBufError(EINVAL) for a negative (or NaN) timeout; TypeError for a
            non-number; DmaBufError(ERESTARTSYS) if interrupted; ContractViolation from the
            lock tracker.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_wait_timeout(), dma_fence_default_wait().
        """
        t = math.inf if timeout is None else _check_timeout(timeout, "dma_fence_wait_timeout")
        ld = self._lockdep
        if ld.enabled:
            ld.might_sleep("dma_fence_wait_timeout")
            ld.might_wait_fence("dma_fence_wait_timeout")
        if not self.flags & _ENABLE_SIGNAL:
            self.enable_sw_signaling()
        # (Already enabled: the kernel takes and drops the lock; nothing else happens.)
        listeners = self._trace.listeners  # plain attribute: no property call on the hot path
        if listeners:
            self._emit("dma_fence_wait_start")
        try:
            ops = self.ops
            if ops is not None and ops._has_wait:
                return ops.wait(self, intr, t)
            return self._default_wait(intr, t)
        finally:
            if self._trace.listeners:
                self._emit("dma_fence_wait_end")

    def wait(self, intr: bool = False) -> None:
        """Sleep until the fence signals — dma_fence_wait().

        Args:
            intr: interruptible (see :class:`Interrupts`).
        Context: as :meth:`wait_timeout`.
        Returns: None (the kernel's 0).
        Raises: DmaBufError(ERESTARTSYS) if interrupted; what a custom ``ops.wait`` raises.
        Kernel: include/linux/dma-fence.h, dma_fence_wait().
        """
        self.wait_timeout(intr, None)

    def set_deadline(self, deadline: float) -> None:
        """Hint when the waiter needs the fence — dma_fence_set_deadline().

        Calls ``ops.set_deadline`` if provided and the fence is not signalled.
        Args: deadline: absolute time on the scheduler clock (seconds).
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_set_deadline().
        """
        ops = self.ops
        if ops is not None and ops._has_deadline and not self.is_signaled():
            ops.set_deadline(self, deadline)

    # ordering ------------------------------------------------------------------------------
    def is_later(self, other: DmaFence) -> bool:
        """Whether ``self`` is later on the timeline than ``other`` — dma_fence_is_later().

        SEQNO64 on ``self``: plain 64-bit compare; otherwise a 32-bit wrap-around compare of the
        low 32 bits (``(int)(lo32(f1) - lo32(f2)) > 0``).
        Raises: ContractViolation if the contexts differ (kernel: WARN + false).
        Kernel: include/linux/dma-fence.h, dma_fence_is_later(), __dma_fence_is_later().
        """
        if not isinstance(other, DmaFence):
            raise TypeError(f"other must be a DmaFence, not {type(other).__name__}")
        if self.context != other.context:
            raise ContractViolation("dma_fence_is_later", f"fences of different contexts "
                                    f"({self.context} vs {other.context}) are not ordered")
        return _seqno_later(self.flags, self.seqno, other.seqno)

    def is_later_or_same(self, other: DmaFence) -> bool:
        """``self is other or self.is_later(other)`` — dma_fence_is_later_or_same().

        Kernel: include/linux/dma-fence.h, dma_fence_is_later_or_same().
        """
        return self is other or self.is_later(other)

    # introspection -------------------------------------------------------------------------
    def describe(self) -> str:
        """One line of debugfs text — dma_fence_describe().

        Returns: ``"%llu:%llu %s %s %ssignalled\\n"`` (context, seqno, timeline, driver, "un"
            when pending); the names are empty once signalled, as in the kernel.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_describe().
        """
        timeline = driver = signaled = ""
        if not self.is_signaled():
            timeline = self.timeline_name()
            driver = self.driver_name()
            signaled = "un"
        return f"{self.context}:{self.seqno} {timeline} {driver} {signaled}signalled\n"


def spin_lock_irqsave(lock: SchedLock, lock_class: str, machine: Machine) -> None:
    """Take a fence-protecting spinlock that is not reached through a fence (e.g. a timeline's).

    Same bookkeeping as :meth:`DmaFence.lock_irqsave` (lock tracker with ``spin=True``, deferred
    irq_work), so ``signal_locked()`` of fences sharing ``lock`` sees it held.
    Kernel: include/linux/spinlock.h, spin_lock_irqsave().
    """
    ld = machine.lockdep
    if ld.enabled:
        ld.acquire(lock, lock_class, spin=True)
    lock.acquire()
    _core(machine).cpu.depth += 1


def spin_unlock_irqrestore(lock: SchedLock, lock_class: str, machine: Machine) -> None:
    """Release a lock taken with :func:`spin_lock_irqsave`; runs deferred irq_work.

    Kernel: include/linux/spinlock.h, spin_unlock_irqrestore().
    """
    ld = machine.lockdep
    if ld.enabled:
        ld.release(lock, lock_class)
    cpu = _core(machine).cpu
    cpu.depth -= 1
    lock.release()
    if cpu.work and not cpu.depth:
        _run_irq_work(cpu)


def dma_fence_is_container(fence: DmaFence) -> bool:
    """Whether ``fence`` is a dma_fence_array or dma_fence_chain — dma_fence_is_container().

    Kernel: include/linux/dma-fence.h, dma_fence_is_container().
    """
    return fence.IS_CONTAINER


def _seqno_later(flags: int, f1: int, f2: int) -> bool:
    """__dma_fence_is_later(): 64-bit if SEQNO64, else signed 32-bit difference > 0."""
    if flags & _SEQNO64:
        return f1 > f2
    diff = ((f1 & 0xFFFFFFFF) - (f2 & 0xFFFFFFFF)) & 0xFFFFFFFF
    return 0 < diff < 0x80000000


# --------------------------------------------------------------------------------------------
# Module-level kernel API
# --------------------------------------------------------------------------------------------


def dma_fence_context_alloc(num: int = 1, *, machine: Machine | None = None) -> int:
    """First of ``num`` new fence contexts — dma_fence_context_alloc().

    Raises: DmaBufError(EINVAL) if ``num`` is not a positive int.
    Kernel: drivers/dma-buf/dma-fence.c, dma_fence_context_alloc().
    """
    return (machine or current_machine()).fence_context_alloc(num)


def dma_fence_is_later(f1: DmaFence, f2: DmaFence) -> bool:
    """``f1.is_later(f2)`` — dma_fence_is_later().

    Kernel: include/linux/dma-fence.h, dma_fence_is_later().
    """
    return f1.is_later(f2)


def dma_fence_is_later_or_same(f1: DmaFence, f2: DmaFence) -> bool:
    """``f1.is_later_or_same(f2)`` — dma_fence_is_later_or_same().

    Kernel: include/linux/dma-fence.h, dma_fence_is_later_or_same().
    """
    return f1.is_later_or_same(f2)


def dma_fence_later(f1: DmaFence, f2: DmaFence) -> DmaFence | None:
    """The later of two fences of one context, or None if it already signalled — dma_fence_later().

    Raises: ContractViolation if the contexts differ (kernel: WARN + NULL).
    Kernel: include/linux/dma-fence.h, dma_fence_later().
    """
    if f1.is_later(f2):
        return None if f1.is_signaled() else f1
    return None if f2.is_signaled() else f2


def dma_fence_was_initialized(fence: DmaFence | None) -> bool:
    """``fence`` is not None and was initialised — dma_fence_was_initialized() (v7.1).

    Kernel: include/linux/dma-fence.h, dma_fence_was_initialized().
    """
    return fence is not None and fence.was_initialized()


def dma_fence_get_stub(machine: Machine | None = None) -> DmaFence:
    """A reference to the machine's signalled stub fence — dma_fence_get_stub().

    Context 0, seqno 0, names "stub", signalled when first used (the kernel signals it at
    boot); ops detached, as for any names-only fence.
    Context: may take the stub lock the first time.
    Returns: the stub with a new reference (``put()`` it).
    Kernel: drivers/dma-buf/dma-fence.c, dma_fence_get_stub(), dma_fence_init_stub().
    """
    m = machine if machine is not None else current_machine()
    core = _core(m)
    stub = core.stub
    if stub is None:
        with core.stub_lock:
            stub = core.stub
            if stub is None:
                stub = DmaFence(_STUB_OPS, 0, 0, machine=m)
                stub._test_and_set(_ENABLE_SIGNAL)
                stub.signal()
                core.stub = stub
    return stub.get()


def dma_fence_allocate_private_stub(timestamp: float,
                                    machine: Machine | None = None) -> DmaFence:
    """A new fence already signalled at ``timestamp`` — dma_fence_allocate_private_stub().

    Args:
        timestamp: signal time on the scheduler clock (seconds).
    Returns: a fresh fence (context 0, seqno 0, names "stub") holding one reference.
    Kernel: drivers/dma-buf/dma-fence.c, dma_fence_allocate_private_stub().
    """
    f = DmaFence(_STUB_OPS, 0, 0, machine=machine)
    f._test_and_set(_ENABLE_SIGNAL)
    f.signal_timestamp(timestamp)
    return f


def dma_fence_begin_signalling(machine: Machine | None = None) -> int:
    """Enter a fence-signalling section — dma_fence_begin_signalling(); returns the cookie.

    Kernel: drivers/dma-buf/dma-fence.c, dma_fence_begin_signalling().
    """
    return (machine or current_machine()).lockdep.begin_signalling()


def dma_fence_end_signalling(cookie: int, machine: Machine | None = None) -> None:
    """Leave the section entered with ``cookie`` — dma_fence_end_signalling().

    Kernel: drivers/dma-buf/dma-fence.c, dma_fence_end_signalling().
    """
    (machine or current_machine()).lockdep.end_signalling(cookie)


def dma_fence_wait_any_timeout(fences: Sequence[DmaFence], intr: bool,
                               timeout: float | None) -> tuple[float, int | None]:
    """Sleep until any of ``fences`` signals — dma_fence_wait_any_timeout().

    Args:
        fences: non-empty sequence of fences (the caller holds references).
        intr: interruptible (see :class:`Interrupts`).
        timeout: seconds; 0 polls; None/inf waits forever.
    Context: may sleep (checked like :meth:`DmaFence.wait_timeout`; the kernel does not annotate
        this function — the model is stricter).
    Returns: ``(remaining, index)``: remaining time > 0 and the index of the first signalled
        fence found; ``(1, index)`` for a 0 timeout with one signalled; ``(timeout, index)`` if
        one was already signalled when the callbacks were added; ``(0, None)`` on timeout.
    Raises: DmaBufError(EINVAL) for an empty list or negative timeout; TypeError for non-fences;
        DmaBufError(ERESTARTSYS) if interrupted.
    Kernel: drivers/dma-buf/dma-fence.c, dma_fence_wait_any_timeout().
    """
    t = _check_timeout(timeout, "dma_fence_wait_any_timeout")
    fl = list(fences) if fences is not None else []
    if not fl:
        raise DmaBufError(errno.EINVAL, "dma_fence_wait_any_timeout: no fences given")
    for f in fl:
        if not isinstance(f, DmaFence):
            raise TypeError(f"fences must be DmaFence objects, got {type(f).__name__}")
    if t == 0:
        for i, f in enumerate(fl):
            if f.is_signaled():
                return 1.0, i
        return 0.0, None
    m = fl[0].machine
    ld = m.lockdep
    if ld.enabled:
        ld.might_sleep("dma_fence_wait_any_timeout")
        ld.might_wait_fence("dma_fence_wait_any_timeout")
    sched = m.sched
    cpu = _core(m).cpu
    wcb = cpu.wait_cb or _thread_wait_cb(cpu, m)
    tok = wcb.tok
    tok.acquire(False)  # re-take the token if a stale wake-up released it
    cbs: list[tuple[DmaFence, DmaFenceCb]] = []
    intr_state: _IntrState | None = None
    ret = t
    idx: int | None = None
    try:
        for i, f in enumerate(fl):
            cb = _WakeCb(tok)
            if f.add_callback(cb, _wake_cb):
                return ret, i  # already signalled
            cbs.append((f, cb))
        if intr:
            intr_state = Interrupts.of(m)._arm(wcb.wake)
        if sched.controlled:
            tok.name = "dma_fence_wait_any"  # type: ignore[attr-defined]
        deadline = sched.now() + t
        while True:
            for i, f in enumerate(fl):
                if f.flags & _SIGNALED:
                    idx = i
                    break
            if idx is not None:
                break
            if intr_state is not None and intr_state.pending:
                raise _restartsys("dma_fence_wait_any_timeout")
            if deadline == math.inf:
                tok.acquire()
            else:
                remaining = deadline - sched.now()
                if remaining <= 0:
                    return 0.0, None
                tok.acquire(True, min(remaining, _TIMEOUT_MAX))
        if deadline == math.inf:
            return math.inf, idx
        return max(deadline - sched.now(), _MIN_REMAINING), idx
    finally:
        if intr_state is not None:
            intr_state.waker = None
        for f, qcb in cbs:
            f.remove_callback(qcb)
