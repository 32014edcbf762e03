"""Contract checking: a lockdep-lite lock tracker and the fence-signalling annotations.

The kernel finds locking bugs with lockdep — which locks each task holds, in which order lock
classes were ever taken, ``lockdep_assert_held()`` at function entry — and fence deadlocks with
the ``dma_fence_begin_signalling()``/``end_signalling()`` annotations (a "fence wait" is modelled
as a pseudo-lock, so ``lock(A); wait(fence)`` in one place and ``lock(A)`` inside a signalling
section in another are flagged as a deadlock before it ever happens).

:class:`LockTracker` is that checker for the model, one per :class:`dmabuf.machine.Machine`:

* per thread, the stack of held locks (with their class and whether they are spinning locks);
* the order graph between lock classes: taking class B while holding class A records A→B; taking
  A while holding B when A→…→B is already known raises :class:`ContractViolation`
  ("possible circular locking dependency"). Locks of one ww class taken under one acquire
  context are exempt (the ww_mutex protocol orders them), like lockdep's ``nest_lock``;
* ``assert_held``/``assert_not_held`` — ``dma_resv_assert_held()`` and friends;
* ``might_sleep`` — blocking while holding a spinning lock (a fence's spinlock) is a bug;
* signalling sections (per thread, nesting): waiting for a fence inside one, or taking a lock
  class inside one that some thread held while waiting for a fence, is a violation; the
  reservation ww class is primed as "waited under" as the kernel's ``dma_resv_lockdep()`` does.

It is on in tests and cheap when off: every entry point returns at once when ``enabled`` is
false. Violations raise at the offending call, so the test that provoked one fails at that line.

Kernel: kernel/locking/lockdep.c (concept), include/linux/lockdep.h, drivers/dma-buf/dma-fence.c
(DOC: fence signalling annotation, dma_fence_begin_signalling(), __dma_fence_might_wait()),
drivers/dma-buf/dma-resv.c (dma_resv_lockdep()).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from dmabuf.errors import ContractViolation

__all__ = ["RESV_CLASS", "HeldLock", "LockTracker"]

#: Name of the lock class every reservation object's ww_mutex belongs to.
RESV_CLASS = "reservation_ww_class_mutex"
#: The pseudo-lock that models "waiting for a dma_fence".
FENCE_WAIT = "dma_fence_map"


@dataclass
class HeldLock:
    """One lock a thread holds: the object, its class, and whether it spins."""

    lock: object
    cls: str
    spin: bool = False
    ctx: object | None = None


@dataclass
class _ThreadState:
    held: list[HeldLock] = field(default_factory=list)
    signalling: int = 0


class LockTracker:
    """Lockdep-lite for one machine. See the module docstring for the rules it enforces."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._tls = threading.local()
        self._graph_lock = threading.Lock()
        self._after: dict[str, set[str]] = {}
        self._waited_under: set[str] = {RESV_CLASS}
        self._taken_in_signalling: set[str] = set()
        #: Violations seen (also raised); tests can assert on them.
        self.violations: list[str] = []

    # per-thread ------------------------------------------------------------------------------
    def _state(self) -> _ThreadState:
        st: _ThreadState | None = getattr(self._tls, "st", None)
        if st is None:
            st = _ThreadState()
            self._tls.st = st
        return st

    def held(self) -> list[HeldLock]:
        """The locks the calling thread holds, oldest first (a copy)."""
        if not self.enabled:
            return []
        return list(self._state().held)

    def _violation(self, rule: str, message: str) -> ContractViolation:
        self.violations.append(f"{rule}: {message}")
        return ContractViolation(rule, message)

    # lock events -----------------------------------------------------------------------------
    def acquire(self, lock: object, cls: str, *, spin: bool = False,
                ctx: object | None = None, trylock: bool = False) -> None:
        """Record that the calling thread now holds ``lock`` of class ``cls``.

        Call it *before* blocking on the lock (as lockdep's ``lock_acquire`` does) so an
        ordering bug is reported instead of deadlocking; a trylock cannot deadlock and only
        records the lock. ``ctx`` is the ww acquire context for ww_mutexes.
        """
        if not self.enabled:
            return
        st = self._state()
        for h in st.held:
            if h.lock is lock:
                raise self._violation("lockdep_recursive_locking",
                                      f"thread {threading.current_thread().name} takes "
                                      f"{cls} {lock!r} it already holds")
        if st.signalling and cls in self._waited_under and not trylock:
            raise self._violation(
                "dma_fence_begin_signalling",
                f"{cls} taken inside a fence-signalling section, but fences are waited for "
                f"while holding it: a fence that needs this lock to signal can deadlock")
        if st.signalling:
            self._taken_in_signalling.add(cls)
        if not trylock:
            with self._graph_lock:
                for h in st.held:
                    if h.cls == cls and ctx is not None and h.ctx is ctx:
                        continue  # ww locks of one class under one acquire context
                    if h.cls == cls:
                        raise self._violation(
                            "lockdep_nesting",
                            f"{cls} taken while holding another {cls} without a common ww "
                            "acquire context")
                    if self._reaches(cls, h.cls):
                        raise self._violation(
                            "lockdep_circular_locking",
                            f"taking {cls} while holding {h.cls}, but {cls} was taken before "
                            f"{h.cls} elsewhere: possible circular locking dependency")
                    self._after.setdefault(h.cls, set()).add(cls)
        st.held.append(HeldLock(lock, cls, spin, ctx))

    def _reaches(self, src: str, dst: str) -> bool:
        seen: set[str] = set()
        todo = [src]
        while todo:
            n = todo.pop()
            if n == dst:
                return True
            if n in seen:
                continue
            seen.add(n)
            todo.extend(self._after.get(n, ()))
        return False

    def release(self, lock: object, cls: str = "lock") -> None:
        """Record that the calling thread released ``lock``; releasing a lock it does not hold
        is a :class:`ContractViolation` (``lockdep: bad unlock balance``)."""
        if not self.enabled:
            return
        st = self._state()
        for i in range(len(st.held) - 1, -1, -1):
            if st.held[i].lock is lock:
                del st.held[i]
                return
        raise self._violation("lockdep_bad_unlock_balance",
                              f"thread {threading.current_thread().name} releases {cls} "
                              f"{lock!r} it does not hold")

    def is_held(self, lock: object) -> bool:
        """Whether the calling thread holds ``lock`` (always False when disabled)."""
        if not self.enabled:
            return False
        return any(h.lock is lock for h in self._state().held)

    def assert_held(self, lock: object, rule: str = "lockdep_assert_held",
                    what: str = "") -> None:
        """``lockdep_assert_held()``: raise unless the calling thread holds ``lock``."""
        if not self.enabled:
            return
        if not any(h.lock is lock for h in self._state().held):
            raise self._violation(rule, f"{what or repr(lock)} must be held by the caller "
                                        f"(thread {threading.current_thread().name})")

    def assert_not_held(self, lock: object, rule: str = "lockdep_assert_not_held",
                        what: str = "") -> None:
        """Raise if the calling thread holds ``lock`` (a function that takes it itself)."""
        if not self.enabled:
            return
        if any(h.lock is lock for h in self._state().held):
            raise self._violation(rule, f"{what or repr(lock)} must NOT be held by the caller "
                                        "(the function takes it itself)")

    def might_sleep(self, what: str = "") -> None:
        """``might_sleep()``: blocking while holding a spinning lock is a bug."""
        if not self.enabled:
            return
        for h in self._state().held:
            if h.spin:
                raise self._violation("might_sleep",
                                      f"{what or 'a blocking call'} while holding spinlock "
                                      f"{h.cls}")

    # fence signalling --------------------------------------------------------------------------
    def begin_signalling(self) -> int:
        """``dma_fence_begin_signalling()``: enter a section that must not wait for fences.

        Returns a cookie for :meth:`end_signalling`. Sections nest.
        """
        if not self.enabled:
            return 0
        st = self._state()
        st.signalling += 1
        return st.signalling

    def end_signalling(self, cookie: int) -> None:
        """``dma_fence_end_signalling()``: leave the section entered with ``cookie``."""
        if not self.enabled:
            return
        st = self._state()
        if st.signalling != cookie or cookie <= 0:
            raise self._violation("dma_fence_end_signalling",
                                  f"unbalanced signalling annotation (cookie {cookie}, depth "
                                  f"{st.signalling})")
        st.signalling -= 1

    def in_signalling(self) -> bool:
        """Whether the calling thread is inside a fence-signalling section."""
        return self.enabled and self._state().signalling > 0

    def might_wait_fence(self, what: str = "dma_fence_wait") -> None:
        """``__dma_fence_might_wait()``: checks before a thread waits for a fence.

        Inside a signalling section this is a violation; otherwise every lock class held now is
        recorded as "fences are waited for under it" (and if such a class was ever taken inside
        a signalling section, that is the inverse deadlock and also a violation).
        """
        if not self.enabled:
            return
        st = self._state()
        if st.signalling:
            raise self._violation("dma_fence_begin_signalling",
                                  f"{what} inside a fence-signalling section: the fence may "
                                  "need this very section to complete (deadlock)")
        for h in st.held:
            if h.spin:
                raise self._violation("might_sleep", f"{what} while holding spinlock {h.cls}")
            if h.cls in self._taken_in_signalling:
                raise self._violation(
                    "dma_fence_begin_signalling",
                    f"{what} while holding {h.cls}, which is taken inside fence-signalling "
                    "sections: deadlock if the fence waits for that section")
            self._waited_under.add(h.cls)
