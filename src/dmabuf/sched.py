"""The scheduler interface: every place where model code blocks, wakes a thread or reads the time.

The model is ordinary blocking code — ``fence.wait(timeout)``, ``resv.lock(ctx)`` — running on
real threads. What makes it testable is that it never touches ``threading`` or ``time`` directly:
it asks its :class:`Scheduler` for locks, condition variables, events, the clock, sleeps and
threads. There are two schedulers with the same interface.

**Free mode** (:class:`FreeScheduler`) hands out real ``threading`` primitives and reads the
monotonic clock. It is what benchmarks, the uAPI backends and stress tests run on: real
concurrency, real time.

**Controlled mode** (:class:`ControlledScheduler`) runs the same code on the same kind of real
threads, but only one of them runs at a time. Each blocking or waking operation is a *scheduling
point*: the running thread hands a baton to the thread a seeded policy picks among the runnable
ones. Time is a virtual clock that only moves when every thread is blocked, and then jumps to the
earliest pending timeout. If every thread is blocked and no timeout is pending, the run is a
deadlock: it is reported with each thread's wait point and the seed, and every blocked thread is
unwound. Because every choice comes from the seed, a failing run replays exactly with
:func:`replay`; :func:`explore` runs a scenario under many seeds (schedule exploration).

Contract for code running under a controlled scheduler: it must block only through the scheduler
(a raw ``threading.Lock`` held across a scheduling point would stall the run; the wall-clock
watchdog then reports which thread is stuck).

Design note (deliberate difference from a kernel): preemption happens only at scheduling points —
every lock acquire and release, condition wait/notify, event set/wait, spawn, join, sleep and
explicit :meth:`Scheduler.checkpoint`. Kernel-faithful code protects shared state with locks, so
the interleavings that matter are those at lock boundaries; :meth:`checkpoint` adds others.

Kernel: none directly; this plays the role of the kernel's scheduler, wait queues and jiffies.
"""

from __future__ import annotations

import contextvars
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from dmabuf.errors import ContractViolation, DeadlockDetected

__all__ = [
    "ControlledScheduler",
    "ExplorationFailure",
    "FreeScheduler",
    "SchedCondition",
    "SchedEvent",
    "SchedLock",
    "Scheduler",
    "Task",
    "explore",
    "replay",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


@runtime_checkable
class SchedLock(Protocol):
    """A non-reentrant mutex (``threading.Lock`` semantics)."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...
    def release(self) -> None: ...
    def locked(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None, /) -> None: ...


@runtime_checkable
class SchedCondition(Protocol):
    """A condition variable bound to a :class:`SchedLock` (``threading.Condition`` semantics).

    ``wait`` takes an extra ``what``: the wait point reported if the run deadlocks.
    """

    def wait(self, timeout: float | None = None, what: str = "") -> bool: ...
    def notify(self, n: int = 1) -> None: ...
    def notify_all(self) -> None: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None, /) -> None: ...


@runtime_checkable
class SchedEvent(Protocol):
    """A one-shot flag threads can wait for (``threading.Event`` semantics)."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    def clear(self) -> None: ...
    def wait(self, timeout: float | None = None, what: str = "") -> bool: ...


class Task(Protocol):
    """A thread started with :meth:`Scheduler.spawn`."""

    name: str
    #: The OS thread running the task (for per-thread state such as pending interrupts).
    thread: threading.Thread | None

    @property
    def done(self) -> bool: ...
    def join(self, timeout: float | None = None) -> bool: ...
    def result(self) -> Any: ...


class Scheduler(Protocol):
    """What model code may use to block, wake, read time and start threads."""

    #: True for :class:`ControlledScheduler` (virtual time, one thread at a time).
    controlled: bool

    def now(self) -> float: ...
    def lock(self, name: str = "") -> SchedLock: ...
    def condition(self, lock: SchedLock, name: str = "") -> SchedCondition: ...
    def event(self, name: str = "") -> SchedEvent: ...
    def sleep(self, seconds: float) -> None: ...
    def checkpoint(self, what: str = "") -> None: ...
    def spawn(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Task: ...


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        import errno

        from dmabuf.errors import DmaBufError

        raise DmaBufError(errno.EINVAL, f"negative timeout {timeout!r}: use None to wait forever "
                          "or 0 to poll")


# --------------------------------------------------------------------------------------------
# Free mode
# --------------------------------------------------------------------------------------------


class _FreeCondition(threading.Condition):
    def wait(self, timeout: float | None = None, what: str = "") -> bool:
        return super().wait(timeout)


class _FreeEvent(threading.Event):
    def wait(self, timeout: float | None = None, what: str = "") -> bool:
        return super().wait(timeout)


class _FreeTask:
    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], name: str) -> None:
        self.name = name
        self._value: Any = None
        self._exc: BaseException | None = None
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._body, fn, args), name=name,
                                        daemon=True)
        self.thread: threading.Thread | None = self._thread
        self._thread.start()

    def _body(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:  # reported by result()
            self._exc = e

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self) -> Any:
        if self._thread.is_alive():
            raise RuntimeError(f"task {self.name} has not finished: join() it first")
        if self._exc is not None:
            raise self._exc
        return self._value


class FreeScheduler:
    """Real threads, real ``threading`` primitives and the monotonic clock."""

    controlled = False

    def now(self) -> float:
        return time.monotonic()

    def lock(self, name: str = "") -> SchedLock:
        return threading.Lock()

    def condition(self, lock: SchedLock, name: str = "") -> SchedCondition:
        return _FreeCondition(lock)  # type: ignore[arg-type]

    def event(self, name: str = "") -> SchedEvent:
        return _FreeEvent()

    def sleep(self, seconds: float) -> None:
        _check_timeout(seconds)
        time.sleep(seconds)

    def checkpoint(self, what: str = "") -> None:
        return None

    def spawn(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Task:
        return _FreeTask(fn, args, name or str(getattr(fn, "__name__", "task")))

    def __repr__(self) -> str:
        return "FreeScheduler()"


# --------------------------------------------------------------------------------------------
# Controlled mode
# --------------------------------------------------------------------------------------------

_RUNNABLE, _BLOCKED, _DONE = "runnable", "blocked", "done"


class _Aborted(BaseException):
    """Unwinds a controlled thread after the run failed (deadlock or another thread's error)."""


class _CTask:
    def __init__(self, sched: ControlledScheduler, tid: int, name: str) -> None:
        self.sched = sched
        self.tid = tid
        self.name = name
        self.baton = threading.Lock()
        self.baton.acquire()
        self.state = _RUNNABLE
        self.what = ""
        self.deadline: float | None = None
        self.timed_out = False
        self.abort = False
        self.joiners: list[_CTask] = []
        self.value: Any = None
        self.exc: BaseException | None = None
        self.thread: threading.Thread | None = None

    # Task protocol ---------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state == _DONE

    def join(self, timeout: float | None = None) -> bool:
        s = self.sched
        cur = s._current_task("join")
        _check_timeout(timeout)
        if self.state != _DONE:
            deadline = None if timeout is None else s._clock + timeout
            self.joiners.append(cur)
            s._block(cur, f"join({self.name})", deadline)
            if cur in self.joiners:
                self.joiners.remove(cur)
        return self.state == _DONE

    def result(self) -> Any:
        if self.state != _DONE:
            raise RuntimeError(f"task {self.name} has not finished: join() it first")
        if self.exc is not None:
            raise self.exc
        return self.value

    def __repr__(self) -> str:
        return f"<task {self.name} {self.state} {self.what}>"


class _CLock:
    def __init__(self, sched: ControlledScheduler, name: str) -> None:
        self._s = sched
        self.name = name or "lock"
        self.owner: _CTask | None = None
        self.waiters: list[_CTask] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        s = self._s
        cur = s._current_task("lock.acquire")
        s._switch_point(cur)
        if self.owner is None:
            self.owner = cur
            return True
        if not blocking:
            return False
        deadline = None if timeout is None or timeout < 0 else s._clock + timeout
        while self.owner is not None:
            self.waiters.append(cur)
            timed_out = s._block(cur, f"acquire {self.name} (held by {self.owner.name})",
                                 deadline)
            if cur in self.waiters:
                self.waiters.remove(cur)
            if timed_out and self.owner is not None:
                return False
        self.owner = cur
        return True

    def _release_nopreempt(self) -> None:
        if self.owner is None or self.owner is not self._s._current_task("lock.release"):
            if getattr(self._s._tls, "task", None) is not None and self._s._tls.task.abort:
                return  # unwinding after the run failed: lock state no longer matters
            if self.owner is None:
                raise RuntimeError(f"release of unlocked {self.name}")
        self.owner = None
        for w in self.waiters:
            self._s._wake(w)
        self.waiters.clear()

    def release(self) -> None:
        self._release_nopreempt()
        s = self._s
        s._switch_point(s._current_task("lock.release"))

    def locked(self) -> bool:
        return self.owner is not None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None, /) -> None:
        self.release()


class _CCondition:
    def __init__(self, sched: ControlledScheduler, lock: SchedLock, name: str) -> None:
        if not isinstance(lock, _CLock):
            raise TypeError("condition() needs a lock made by the same ControlledScheduler")
        self._s = sched
        self._lock = lock
        self.name = name or f"cond({lock.name})"
        self.waiters: list[_CTask] = []

    def wait(self, timeout: float | None = None, what: str = "") -> bool:
        s = self._s
        cur = s._current_task("condition.wait")
        _check_timeout(timeout)
        if self._lock.owner is not cur:
            raise RuntimeError("cannot wait on un-acquired lock")
        self.waiters.append(cur)
        self._lock._release_nopreempt()
        deadline = None if timeout is None else s._clock + timeout
        try:
            timed_out = s._block(cur, what or f"wait {self.name}", deadline)
        finally:
            if cur in self.waiters:
                self.waiters.remove(cur)
            if not cur.abort:
                self._lock.acquire()
        return not timed_out

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        s = self._s
        end = None if timeout is None else s._clock + timeout
        result = predicate()
        while not result:
            remaining = None if end is None else end - s._clock
            if remaining is not None and remaining <= 0:
                break
            self.wait(remaining)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        s = self._s
        cur = s._current_task("condition.notify")
        if self._lock.owner is not cur:
            raise RuntimeError("cannot notify on un-acquired lock")
        woken, self.waiters = self.waiters[:n], self.waiters[n:]
        for w in woken:
            s._wake(w)

    def notify_all(self) -> None:
        self.notify(len(self.waiters))

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None, /) -> None:
        self._lock.release()


class _CEvent:
    def __init__(self, sched: ControlledScheduler, name: str) -> None:
        self._s = sched
        self.name = name or "event"
        self._flag = False
        self.waiters: list[_CTask] = []

    def set(self) -> None:
        s = self._s
        cur = s._current_task("event.set")
        self._flag = True
        for w in self.waiters:
            s._wake(w)
        self.waiters.clear()
        s._switch_point(cur)

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False

    def wait(self, timeout: float | None = None, what: str = "") -> bool:
        s = self._s
        cur = s._current_task("event.wait")
        _check_timeout(timeout)
        s._switch_point(cur)
        if self._flag:
            return True
        deadline = None if timeout is None else s._clock + timeout
        self.waiters.append(cur)
        try:
            s._block(cur, what or f"wait {self.name}", deadline)
        finally:
            if cur in self.waiters:
                self.waiters.remove(cur)
        return self._flag


class ControlledScheduler:
    """One thread at a time, a seeded choice at each scheduling point, a virtual clock.

    Args:
        seed: seeds the policy; the same seed replays the same interleaving.
        policy: ``"random"`` (uniform choice among runnable threads at every scheduling point) or
            ``"fifo"`` (keep running the current thread while it can; then the oldest runnable).
        wall_timeout: real seconds a run may take before it is reported as stuck (a thread blocked
            outside the scheduler, or an endless loop without scheduling points).
        max_steps: scheduling points a run may take before it is reported as a livelock.
    """

    controlled = True

    def __init__(self, seed: int = 0, *, policy: str = "random", wall_timeout: float = 60.0,
                 max_steps: int = 2_000_000) -> None:
        if policy not in ("random", "fifo"):
            raise ValueError(f"unknown policy {policy!r}: use 'random' or 'fifo'")
        self.seed = seed
        self.policy = policy
        self.wall_timeout = wall_timeout
        self.max_steps = max_steps
        self._rng = random.Random(seed)
        self._clock = 0.0
        self._tasks: list[_CTask] = []
        self._tls = threading.local()
        self._finished = threading.Event()
        self._failure: BaseException | None = None
        self._running = False
        self._next_tid = 0
        self.steps = 0
        self.switches = 0

    def __repr__(self) -> str:
        return f"ControlledScheduler(seed={self.seed}, policy={self.policy!r})"

    # interface ---------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock

    def lock(self, name: str = "") -> SchedLock:
        return _CLock(self, name)

    def condition(self, lock: SchedLock, name: str = "") -> SchedCondition:
        return _CCondition(self, lock, name)

    def event(self, name: str = "") -> SchedEvent:
        return _CEvent(self, name)

    def sleep(self, seconds: float) -> None:
        _check_timeout(seconds)
        cur = self._current_task("sleep")
        self._block(cur, f"sleep({seconds:g})", self._clock + seconds)

    def checkpoint(self, what: str = "") -> None:
        self._switch_point(self._current_task("checkpoint"))

    def spawn(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> Task:
        cur = self._current_task("spawn")
        task = self._new_task(fn, args, name)
        self._switch_point(cur)
        return task

    # running ------------------------------------------------------------------------------
    def run(self, fn: Callable[..., T], *args: Any, name: str = "main") -> T:
        """Run ``fn(*args)`` as the first controlled thread; return its result.

        Returns when every thread started in the run has finished. Raises the first exception
        any thread raised (annotated with the seed), :class:`DeadlockDetected` when all threads
        blocked with no pending timeout, or ``RuntimeError`` when the run is stuck (wall
        timeout) or livelocked (``max_steps``).
        """
        if self._running or self._tasks:
            raise RuntimeError("a ControlledScheduler runs once; make a new one (same seed "
                               "replays)")
        self._running = True
        main = self._new_task(fn, args, name)
        main.baton.release()
        if not self._finished.wait(self.wall_timeout):
            stuck = [t for t in self._tasks if t.state == _RUNNABLE]
            raise RuntimeError(
                f"controlled run (seed={self.seed}) stuck for {self.wall_timeout} s of wall "
                f"time; threads not at a scheduling point: {stuck}. A thread is probably blocked "
                "on a primitive that does not come from the scheduler, or loops without one.")
        for t in self._tasks:
            if t.thread is not None:
                t.thread.join(5.0)
        if self._failure is not None:
            raise self._failure
        return main.result()

    def _new_task(self, fn: Callable[..., Any], args: tuple[Any, ...],
                  name: str | None) -> _CTask:
        tid = self._next_tid
        self._next_tid += 1
        task = _CTask(self, tid, name or f"{getattr(fn, '__name__', 'task')}-{tid}")
        self._tasks.append(task)
        ctx = contextvars.copy_context()
        task.thread = threading.Thread(target=ctx.run, args=(self._body, task, fn, args),
                                       name=f"ctl-{task.name}", daemon=True)
        task.thread.start()
        return task

    def _body(self, task: _CTask, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        task.baton.acquire()
        self._tls.task = task
        try:
            if task.abort:
                raise _Aborted()
            task.value = fn(*args)
        except _Aborted:
            pass
        except BaseException as e:
            task.exc = e
            if self._failure is None:
                try:
                    e.add_note(f"controlled run failed in thread {task.name!r} with "
                               f"seed={self.seed}; replay with dmabuf.sched.replay(fn, "
                               f"seed={self.seed})")
                except AttributeError:  # pragma: no cover
                    pass
                self._failure = e
                self._abort_all()
        finally:
            task.state = _DONE
            task.what = ""
            for j in task.joiners:
                self._wake(j)
            task.joiners.clear()
            self._exit(task)

    # core ------------------------------------------------------------------------------
    def _current_task(self, op: str) -> _CTask:
        task = getattr(self._tls, "task", None)
        if task is None:
            raise ContractViolation(
                "sched", f"{op}: a primitive of {self!r} was used by a thread that is not part "
                "of its run; create model objects inside ControlledScheduler.run()")
        return task

    def _wake(self, task: _CTask) -> None:
        if task.state == _BLOCKED:
            task.state = _RUNNABLE
            task.deadline = None
            task.timed_out = False

    def _abort_all(self) -> None:
        for t in self._tasks:
            if t.state != _DONE:
                t.abort = True
                if t.state == _BLOCKED:
                    t.state = _RUNNABLE

    def _pick(self, cur: _CTask | None) -> _CTask | None:
        runnable = [t for t in self._tasks if t.state == _RUNNABLE]
        if not runnable:
            timed = [t for t in self._tasks if t.state == _BLOCKED and t.deadline is not None]
            if not timed:
                blocked = [t for t in self._tasks if t.state == _BLOCKED]
                if not blocked:
                    return None
                waits = {t.name: t.what for t in blocked}
                lines = "\n".join(f"  {n}: {w}" for n, w in waits.items())
                if self._failure is None:
                    self._failure = DeadlockDetected(
                        f"deadlock (seed={self.seed}, virtual time {self._clock:.6f}s): every "
                        f"thread is blocked and no timeout is pending:\n{lines}\nreplay with "
                        f"dmabuf.sched.replay(fn, seed={self.seed})", seed=self.seed,
                        waits=waits)
                self._abort_all()
                runnable = [t for t in self._tasks if t.state == _RUNNABLE]
            else:
                when = min(t.deadline for t in timed if t.deadline is not None)
                self._clock = max(self._clock, when)
                for t in timed:
                    if t.deadline is not None and t.deadline <= self._clock:
                        t.state = _RUNNABLE
                        t.timed_out = True
                        t.deadline = None
                runnable = [t for t in self._tasks if t.state == _RUNNABLE]
        if self.policy == "fifo" and cur is not None and cur in runnable:
            return cur
        if self.policy == "fifo":
            return runnable[0]
        return runnable[self._rng.randrange(len(runnable))] if len(runnable) > 1 else runnable[0]

    def _transfer(self, cur: _CTask) -> None:
        """Pick the next thread; if it is not ``cur``, hand it the baton and wait to be resumed."""
        self.steps += 1
        if self.steps > self.max_steps and self._failure is None:
            self._failure = RuntimeError(
                f"livelock suspected (seed={self.seed}): more than {self.max_steps} scheduling "
                "points in one run")
            self._abort_all()
        nxt = self._pick(cur)
        if nxt is None:  # cannot happen while cur is alive: cur is blocked or runnable
            raise RuntimeError("controlled scheduler has nothing to run")  # pragma: no cover
        if nxt is not cur:
            self.switches += 1
            nxt.baton.release()
            cur.baton.acquire()
        if cur.abort:
            raise _Aborted()

    def _switch_point(self, cur: _CTask) -> None:
        if cur.abort:
            raise _Aborted()
        self._transfer(cur)

    def _block(self, cur: _CTask, what: str, deadline: float | None) -> bool:
        """Block ``cur`` until woken or ``deadline``; return True when it timed out."""
        if cur.abort:
            raise _Aborted()
        cur.state = _BLOCKED
        cur.what = what
        cur.deadline = deadline
        cur.timed_out = False
        self._transfer(cur)
        cur.what = ""
        timed_out = cur.timed_out
        cur.timed_out = False
        return timed_out

    def _exit(self, task: _CTask) -> None:
        if all(t.state == _DONE for t in self._tasks):
            self._finished.set()
            return
        nxt = self._pick(None)
        if nxt is None:
            self._finished.set()
            return
        self.switches += 1
        nxt.baton.release()


# --------------------------------------------------------------------------------------------
# Schedule exploration
# --------------------------------------------------------------------------------------------


class ExplorationFailure(AssertionError):
    """A scenario failed under one seed of :func:`explore`; ``seed`` replays it."""

    def __init__(self, seed: int, error: BaseException) -> None:
        super().__init__(f"scenario failed with seed={seed}: {type(error).__name__}: {error}\n"
                         f"replay it with dmabuf.sched.replay(scenario, seed={seed})")
        self.seed = seed
        self.error = error


@dataclass
class ExploreResult:
    """What :func:`explore` saw: seeds run and scheduling statistics."""

    seeds: int
    steps: int
    switches: int
    virtual_time: float


def replay(scenario: Callable[..., T], seed: int, *, policy: str = "random",
           wall_timeout: float = 60.0, machine_factory: Callable[[Scheduler], Any] | None = None,
           ) -> T:
    """Run ``scenario`` once under a controlled scheduler with ``seed``; return its result.

    The scenario is called with a fresh :class:`dmabuf.machine.Machine` whose scheduler is the
    controlled one, made current for every thread of the run (pass ``machine_factory`` to build
    something else from the scheduler).
    """
    sched = ControlledScheduler(seed, policy=policy, wall_timeout=wall_timeout)
    return sched.run(_with_machine, scenario, sched, machine_factory)


def _with_machine(scenario: Callable[..., T], sched: Scheduler,
                  factory: Callable[[Scheduler], Any] | None) -> T:
    if factory is not None:
        return scenario(factory(sched))
    from dmabuf.machine import Machine  # same layer; imported late to keep sched standalone

    with Machine(sched=sched, debug=True) as m:
        return scenario(m)


def explore(scenario: Callable[..., Any], seeds: Iterable[int] | int = 50, *,
            policy: str = "random", wall_timeout: float = 60.0,
            machine_factory: Callable[[Scheduler], Any] | None = None) -> ExploreResult:
    """Run ``scenario(machine)`` under a controlled scheduler once per seed.

    Raises :class:`ExplorationFailure` (carrying the seed) on the first seed whose run raises or
    deadlocks; otherwise returns the totals.
    """
    seq = range(seeds) if isinstance(seeds, int) else seeds
    total = ExploreResult(0, 0, 0, 0.0)
    for seed in seq:
        sched = ControlledScheduler(seed, policy=policy, wall_timeout=wall_timeout)
        try:
            sched.run(_with_machine, scenario, sched, machine_factory)
        except Exception as e:
            raise ExplorationFailure(seed, e) from e
        total.seeds += 1
        total.steps += sched.steps
        total.switches += sched.switches
        total.virtual_time += sched.now()
    return total
