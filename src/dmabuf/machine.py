"""The Machine: everything the kernel keeps globally, for one modelled computer.

The kernel has global state — the fence context counter, the list of dma-bufs, lockdep's graph,
the IOVA spaces, the PCI hierarchy. The model keeps all of it on a :class:`Machine`, never in
module globals, so tests are independent and two machines can coexist (the demo runs the same
workload on two fabrics side by side).

The layer-0 Machine knows only layer-0 things: its scheduler (:mod:`dmabuf.sched`), its lock
tracker (:mod:`dmabuf.debug`), its trace bus (:mod:`dmabuf.trace`), the WARN log, seeded random
streams and the fence context counter. Higher layers keep their per-machine state in a registry
keyed by the state's class: ``machine.state(BufRegistry)`` constructs ``BufRegistry(machine)`` on
first use and returns the same object afterwards — the Machine never imports a higher layer.

Which machine? Model objects take an explicit ``machine=`` argument; when it is omitted they use
:func:`current_machine`: the innermost ``with machine:`` of this thread (threads started through
the scheduler inherit it), or else one process-wide default machine with a free scheduler and
the lock tracker off (``DMABUF_DEBUG=1`` turns it on).

Kernel: drivers/dma-buf/dma-fence.c (dma_fence_context_alloc(), dma_fence_context_counter),
include/asm-generic/bug.h (WARN_ON).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from dmabuf.debug import LockTracker
from dmabuf.sched import FreeScheduler, Scheduler
from dmabuf.trace import TraceBus

__all__ = ["Machine", "current_machine"]

S = TypeVar("S")
log = logging.getLogger("dmabuf")

_current: contextvars.ContextVar[Machine | None] = contextvars.ContextVar(
    "dmabuf_current_machine", default=None)
_default: Machine | None = None
_default_lock = threading.Lock()


class Machine:
    """One modelled computer: scheduler, lock tracker, trace bus, WARN log, kernel counters.

    Args:
        sched: the scheduler (default: a new :class:`~dmabuf.sched.FreeScheduler`).
        debug: turn the lock tracker on (default: on if ``DMABUF_DEBUG=1`` in the environment).
        seed: root seed of :meth:`rng` streams.
        name: shown in reports.
    """

    def __init__(self, *, sched: Scheduler | None = None, debug: bool | None = None,
                 seed: int = 0, name: str = "machine") -> None:
        if debug is None:
            debug = os.environ.get("DMABUF_DEBUG", "") not in ("", "0")
        self.name = name
        self.seed = seed
        self.sched: Scheduler = sched if sched is not None else FreeScheduler()
        self.lockdep = LockTracker(enabled=debug)
        self.trace = TraceBus(self.sched.now)
        #: WARN_ON log: (rule, message) pairs, in order. Tests assert on it.
        self.warnings: list[tuple[str, str]] = []
        self._counter_lock = threading.Lock()
        # Kernel: static atomic64_t dma_fence_context_counter = ATOMIC64_INIT(1); context 0 is
        # the stub fence's.
        self._fence_context = 1
        self._state: dict[type, Any] = {}
        self._tokens = threading.local()  # per thread: a stack of ContextVar tokens

    def __repr__(self) -> str:
        return f"<Machine {self.name} {self.sched!r}>"

    # kernel globals -------------------------------------------------------------------------
    def fence_context_alloc(self, num: int = 1) -> int:
        """Allocate ``num`` consecutive fence contexts — dma_fence_context_alloc().

        Args:
            num: how many contexts (> 0).
        Context: any; never blocks.
        Returns: the first context number (contexts start at 1; 0 is the stub fence's).
        Raises: DmaBufError(EINVAL) if ``num`` is not a positive int (the kernel WARN_ONs).
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_context_alloc().
        """
        if not isinstance(num, int) or isinstance(num, bool) or num <= 0:
            import errno

            from dmabuf.errors import DmaBufError

            raise DmaBufError(errno.EINVAL, f"fence_context_alloc(num={num!r}): num must be a "
                                            "positive int")
        with self._counter_lock:
            first = self._fence_context
            self._fence_context += num
            return first

    def warn(self, rule: str, message: str) -> None:
        """Record a kernel WARN (a recoverable contract breach the kernel logs and survives)."""
        self.warnings.append((rule, message))
        log.warning("WARNING: %s: %s", rule, message)
        self.trace.emit("warn", rule=rule, message=message)

    def rng(self, stream: str) -> np.random.Generator:
        """A seeded generator for ``stream``: same machine seed and stream → same numbers."""
        digest = int.from_bytes(stream.encode()[:16].ljust(16, b"\0"), "little")
        return np.random.default_rng([self.seed, digest, len(stream)])

    # per-layer state --------------------------------------------------------------------------
    def state(self, cls: type[S], factory: Callable[[Machine], S] | None = None) -> S:
        """The per-machine instance of a higher layer's state class (created on first use).

        The factory runs under a raw lock: it must not block or reach a scheduling point.
        """
        try:
            return self._state[cls]
        except KeyError:
            pass
        with self._counter_lock:
            if cls not in self._state:
                self._state[cls] = (factory or cls)(self)  # type: ignore[call-arg]
            return self._state[cls]

    # current machine ------------------------------------------------------------------------
    def __enter__(self) -> Machine:
        stack: list[contextvars.Token[Machine | None]] | None = getattr(self._tokens, "stack",
                                                                        None)
        if stack is None:
            stack = self._tokens.stack = []
        stack.append(_current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        stack = getattr(self._tokens, "stack", None)
        if not stack:
            from dmabuf.errors import ContractViolation

            raise ContractViolation("machine", f"{self!r} left on a thread that did not enter it")
        _current.reset(stack.pop())


def current_machine() -> Machine:
    """The machine model objects use when none is passed explicitly (see module docstring)."""
    m = _current.get()
    if m is not None:
        return m
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Machine(name="default")
    return _default
