"""pydmabuf: Linux DMA-BUF, P2PDMA and the DMA API, modelled in user space with real memory.

Public tiers: ``dmabuf`` (users of scenarios, the uAPI bindings and the CLI's building blocks),
``dmabuf.lowlevel`` (people writing exporters, importers and devices), ``dmabuf.testing``.
"""

from __future__ import annotations

from dmabuf.errors import ContractViolation as ContractViolation
from dmabuf.errors import DeadlockDetected as DeadlockDetected
from dmabuf.errors import DmaBufError as DmaBufError
from dmabuf.errors import IommuFault as IommuFault
from dmabuf.errors import WouldDeadlock as WouldDeadlock
from dmabuf.machine import Machine as Machine
from dmabuf.machine import current_machine as current_machine

__version__ = "0.1.0"

__all__ = [
    "ContractViolation",
    "DeadlockDetected",
    "DmaBufError",
    "IommuFault",
    "Machine",
    "WouldDeadlock",
    "current_machine",
]
