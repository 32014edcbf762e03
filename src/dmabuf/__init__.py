"""pydmabuf: Linux DMA-BUF, P2PDMA and the DMA API, modelled in user space with real memory.

Public tiers: ``dmabuf`` (users of scenarios, devices, the uAPI bindings and the doctor),
``dmabuf.lowlevel`` (people writing exporters, importers and devices), ``dmabuf.testing``
(test kits). A name is exported from one tier only. Names that exist both in the model and in the
real-kernel bindings (``DmaHeap``, ``Udmabuf``, ``SyncFile``) are the bindings' here; the model's
are ``dmabuf.buf.DmaHeap``, ``dmabuf.buf.Udmabuf`` and ``dmabuf.sync.SyncFile``.
"""

from __future__ import annotations

from dmabuf.devices import Accel as Accel
from dmabuf.devices import Gpu as Gpu
from dmabuf.devices import HmmMirror as HmmMirror
from dmabuf.devices import IommufdCtx as IommufdCtx
from dmabuf.devices import Nvme as Nvme
from dmabuf.devices import Platform as Platform
from dmabuf.devices import RdmaNic as RdmaNic
from dmabuf.devices import VfioPciDevice as VfioPciDevice
from dmabuf.devices import VirtioBlk as VirtioBlk
from dmabuf.devices.rdma import verbs as verbs
from dmabuf.doctor import DoctorReport as DoctorReport
from dmabuf.doctor import Finding as Finding
from dmabuf.doctor import Severity as Severity
from dmabuf.doctor import capture_root as capture_root
from dmabuf.doctor import diagnose as diagnose
from dmabuf.errors import ContractViolation as ContractViolation
from dmabuf.errors import DeadlockDetected as DeadlockDetected
from dmabuf.errors import DmaBufError as DmaBufError
from dmabuf.errors import IommuFault as IommuFault
from dmabuf.errors import WouldDeadlock as WouldDeadlock
from dmabuf.machine import Machine as Machine
from dmabuf.machine import current_machine as current_machine
from dmabuf.pci import PciP2pdmaMapType as PciP2pdmaMapType
from dmabuf.pci import Topology as Topology
from dmabuf.pci import TopologyError as TopologyError
from dmabuf.pci import default_topology as default_topology
from dmabuf.pci import explain as explain
from dmabuf.pci import load_sysfs as load_sysfs
from dmabuf.pci import load_toml as load_toml
from dmabuf.pci import p2p_matrix as p2p_matrix
from dmabuf.sim import FlowSimulator as FlowSimulator
from dmabuf.sim import FlowSpec as FlowSpec
from dmabuf.sim import Scenario as Scenario
from dmabuf.sim import ScenarioError as ScenarioError
from dmabuf.sim import SimResult as SimResult
from dmabuf.sim import TimingParams as TimingParams
from dmabuf.sim import load_scenario as load_scenario
from dmabuf.sim import run_scenario as run_scenario
from dmabuf.sync import DmaResvUsage as DmaResvUsage
from dmabuf.uapi import BufInfo as BufInfo
from dmabuf.uapi import DmaBufFdInfo as DmaBufFdInfo
from dmabuf.uapi import DmaBufFile as DmaBufFile
from dmabuf.uapi import DmaHeap as DmaHeap
from dmabuf.uapi import KernelBackend as KernelBackend
from dmabuf.uapi import Memfd as Memfd
from dmabuf.uapi import SyncFile as SyncFile
from dmabuf.uapi import SyncFileInfo as SyncFileInfo
from dmabuf.uapi import UapiBackend as UapiBackend
from dmabuf.uapi import Udmabuf as Udmabuf
from dmabuf.uapi import VgemDevice as VgemDevice
from dmabuf.uapi import list_heaps as list_heaps
from dmabuf.uapi import process_dmabufs as process_dmabufs
from dmabuf.uapi import read_bufinfo as read_bufinfo
from dmabuf.uapi import read_fdinfo as read_fdinfo
from dmabuf.uapi import recv_dmabuf as recv_dmabuf
from dmabuf.uapi import send_dmabuf as send_dmabuf

__version__ = "0.1.0"

__all__ = [
    "Accel",
    "BufInfo",
    "ContractViolation",
    "DeadlockDetected",
    "DmaBufError",
    "DmaBufFdInfo",
    "DmaBufFile",
    "DmaHeap",
    "DmaResvUsage",
    "DoctorReport",
    "Finding",
    "FlowSimulator",
    "FlowSpec",
    "Gpu",
    "HmmMirror",
    "IommuFault",
    "IommufdCtx",
    "KernelBackend",
    "Machine",
    "Memfd",
    "Nvme",
    "PciP2pdmaMapType",
    "Platform",
    "RdmaNic",
    "Scenario",
    "ScenarioError",
    "Severity",
    "SimResult",
    "SyncFile",
    "SyncFileInfo",
    "TimingParams",
    "Topology",
    "TopologyError",
    "UapiBackend",
    "Udmabuf",
    "VfioPciDevice",
    "VgemDevice",
    "VirtioBlk",
    "WouldDeadlock",
    "capture_root",
    "current_machine",
    "default_topology",
    "diagnose",
    "explain",
    "list_heaps",
    "load_scenario",
    "load_sysfs",
    "load_toml",
    "p2p_matrix",
    "process_dmabufs",
    "read_bufinfo",
    "read_fdinfo",
    "recv_dmabuf",
    "run_scenario",
    "send_dmabuf",
    "verbs",
]
