"""Trace events: the model's tracepoints, free when nobody listens.

State transitions (fence init/signal/wait, attach, map, invalidate, revoke, DMA, IOMMU fault…)
call :meth:`TraceBus.emit`. With no listener that is one attribute test. Listeners are plain
callables ``fn(event: TraceEvent)``; :meth:`TraceBus.record` collects events in a list for tests
and reports.

Kernel: include/trace/events/dma_fence.h and the tracepoints of the other subsystems (concept).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TraceBus", "TraceEvent"]


@dataclass(frozen=True)
class TraceEvent:
    """One trace event: its name (``dma_fence_signaled``), the time, the thread, its fields."""

    name: str
    time: float
    thread: str
    fields: dict[str, Any] = field(default_factory=dict)


class TraceBus:
    """Where trace events go. ``clock`` gives the timestamp (the machine's scheduler clock)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        #: The listeners. Hot paths test ``if bus.listeners:`` before building an event's
        #: fields; never mutate it directly (use :meth:`subscribe`).
        self.listeners: list[Callable[[TraceEvent], None]] = []
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True when somebody listens (callers may skip building expensive fields otherwise)."""
        return bool(self.listeners)

    def emit(self, name: str, **fields: Any) -> None:
        """Send one event to every listener (nothing happens when nobody listens)."""
        if not self.listeners:
            return
        ev = TraceEvent(name, self._clock(), threading.current_thread().name, fields)
        for fn in list(self.listeners):
            fn(ev)

    def subscribe(self, fn: Callable[[TraceEvent], None]) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        with self._lock:
            self.listeners.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self.listeners:
                    self.listeners.remove(fn)

        return unsubscribe

    @contextmanager
    def record(self, prefix: str = "") -> Iterator[list[TraceEvent]]:
        """Collect the events whose name starts with ``prefix`` while the block runs."""
        events: list[TraceEvent] = []
        lock = threading.Lock()

        def listener(ev: TraceEvent) -> None:
            if ev.name.startswith(prefix):
                with lock:
                    events.append(ev)

        unsubscribe = self.subscribe(listener)
        try:
            yield events
        finally:
            unsubscribe()
