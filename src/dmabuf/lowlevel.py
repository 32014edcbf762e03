"""The tier for people writing exporters, importers and devices on the model.

Everything here is stable API for driver writers: the scheduler and lock tracker, fences and
reservation objects, physical memory, the dma-buf protocol, the DMA API, the PCI fabric.
Users of scenarios and the uAPI bindings need only :mod:`dmabuf`.
"""

from __future__ import annotations

from dmabuf.debug import LockTracker as LockTracker
from dmabuf.sched import ControlledScheduler as ControlledScheduler
from dmabuf.sched import ExplorationFailure as ExplorationFailure
from dmabuf.sched import FreeScheduler as FreeScheduler
from dmabuf.sched import Scheduler as Scheduler
from dmabuf.sched import explore as explore
from dmabuf.sched import replay as replay
from dmabuf.trace import TraceBus as TraceBus
from dmabuf.trace import TraceEvent as TraceEvent

__all__ = [
    "ControlledScheduler",
    "ExplorationFailure",
    "FreeScheduler",
    "LockTracker",
    "Scheduler",
    "TraceBus",
    "TraceEvent",
    "explore",
    "replay",
]
