"""Layer 6: simulation — the timing model (more to come: scenarios, workloads, reports).

Kernel: none. Everything below this layer is kernel-faithful *behaviour*; this layer adds *time*:
how long the DMA those layers perform would take on a real fabric.

* :mod:`dmabuf.sim.params` — :class:`TimingParams`, every hardware figure (spec §6, sources in
  docs/timing-model.md), overridable; the PCIe generation table.
* :mod:`dmabuf.sim.fabric` — the abstract :class:`Fabric` of nodes and full-duplex links the
  model runs on; link builders (:func:`pcie_link`, :func:`nic_link`, :func:`memory_link`,
  :func:`interconnect_link`); :func:`default_fabric` (the spec's §6.2 machine).
* :mod:`dmabuf.sim.fairshare` — max-min fair sharing by vectorised progressive filling.
* :mod:`dmabuf.sim.timing` — :class:`FlowSpec`, the event-driven :class:`FlowSimulator`, and
  :class:`FabricClock` / :func:`transfer` that block scheduler threads for modelled durations.
"""

from __future__ import annotations

from dmabuf.sim.fabric import (
    PCIE_WIDTHS,
    Direction,
    Fabric,
    FlowKind,
    Hop,
    Link,
    LinkKind,
    LinkSpec,
    Node,
    NodeKind,
    PathInfo,
    default_fabric,
    interconnect_link,
    memory_link,
    nic_link,
    pcie_link,
)
from dmabuf.sim.fairshare import (
    MaxMin,
    max_min_fair,
    max_min_fair_matrix,
    max_min_fair_reference,
)
from dmabuf.sim.params import (
    GB,
    GIB,
    H100_PCIE_HBM_BANDWIDTH,
    H100_SXM5_HBM_BANDWIDTH,
    H200_HBM_BANDWIDTH,
    HOST_DDR5_12CH_4800_BANDWIDTH,
    NVME_GEN5_PM1753_BANDWIDTH,
    PCIE_GENERATIONS,
    XGMI_BANDWIDTH,
    PcieGeneration,
    TimingParams,
)
from dmabuf.sim.timing import (
    Allocation,
    FabricClock,
    FlowResult,
    FlowSimulator,
    FlowSpec,
    SimResult,
    Timeline,
    allocate,
    fabric_clock,
    transfer,
)

__all__ = [
    "GB",
    "GIB",
    "H100_PCIE_HBM_BANDWIDTH",
    "H100_SXM5_HBM_BANDWIDTH",
    "H200_HBM_BANDWIDTH",
    "HOST_DDR5_12CH_4800_BANDWIDTH",
    "NVME_GEN5_PM1753_BANDWIDTH",
    "PCIE_GENERATIONS",
    "PCIE_WIDTHS",
    "XGMI_BANDWIDTH",
    "Allocation",
    "Direction",
    "Fabric",
    "FabricClock",
    "FlowKind",
    "FlowResult",
    "FlowSimulator",
    "FlowSpec",
    "Hop",
    "Link",
    "LinkKind",
    "LinkSpec",
    "MaxMin",
    "Node",
    "NodeKind",
    "PathInfo",
    "PcieGeneration",
    "SimResult",
    "Timeline",
    "TimingParams",
    "allocate",
    "default_fabric",
    "fabric_clock",
    "interconnect_link",
    "max_min_fair",
    "max_min_fair_matrix",
    "max_min_fair_reference",
    "memory_link",
    "nic_link",
    "pcie_link",
    "transfer",
]

# --- scenarios, the runner, reports and pictures (issue #7) -----------------------------------
# dmabuf.sim.scenario (the TOML format, docs/scenarios.md), dmabuf.sim.pci_fabric (a PCI topology
# as a timing fabric), dmabuf.sim.verify (end-to-end byte checks), dmabuf.sim.actors and
# dmabuf.sim.runner (running a scenario on the controlled scheduler with the device drivers),
# dmabuf.sim.report (the report, its schema check, rich tables), dmabuf.sim.plot (PNG timeline,
# DOT fabric), dmabuf.sim.compare (importer modes x representations).
from dmabuf.sim.pci_fabric import PciFabric, fabric_from_topology
from dmabuf.sim.report import render, strip_wall_times, to_json, validate_report
from dmabuf.sim.runner import run_scenario
from dmabuf.sim.scenario import (
    Scenario,
    ScenarioError,
    load_demo,
    load_scenario,
    loads_scenario,
)

__all__ += [
    "PciFabric",
    "Scenario",
    "ScenarioError",
    "fabric_from_topology",
    "load_demo",
    "load_scenario",
    "loads_scenario",
    "render",
    "run_scenario",
    "strip_wall_times",
    "to_json",
    "validate_report",
]
