"""Run a scenario: the machine, its drivers, real DMA, modelled time — and the report's data.

Kernel: none. The runner is the "user space plus hardware" around the kernel-faithful layers:
it builds each host of a :class:`~dmabuf.sim.scenario.Scenario`, binds the drivers, creates and
shares the buffers, runs the workload and measures it.

Time
    Everything runs in the scheduler's **controlled mode**
    (:class:`~dmabuf.sched.ControlledScheduler`): one thread at a time, every choice from the
    seed, and a virtual clock that is the modelled hardware time. A transfer blocks its thread
    for the time the fluid timing model gives it (:class:`~dmabuf.sim.timing.FabricClock`:
    max-min fair sharing of every link by the transfers in flight, bridge efficiencies, IOTLB
    misses on translated paths, none on BUS_ADDR paths); mapping, remapping, invalidation and
    fault costs (:class:`~dmabuf.sim.params.TimingParams`) are slept where they happen. The same
    seed gives the same schedule, the same virtual times and the same report (only wall times
    differ).

    Devices (layer 5) cannot see the timing model (layer 6), so the time of a device's own
    copies is charged here: when a GPU moves a buffer (trace point ``ttm_bo_move``: an eviction,
    a restore, the staging of a buffer into GTT for a non-P2P importer) the thread doing the
    move — holding the buffer's reservation, as TTM does — sleeps the modelled duration of the
    copy over the fabric (VRAM -> host memory or back). That is the adapter this layer needs
    instead of a change to the drivers.

Bytes
    Every transfer moves real bytes: the initiating device's DMA engine reads (or writes) the
    buffer through the DMA addresses its importer mapping holds — bus addresses, IOVAs through
    the IOMMU page table, or host physical addresses — with the page-owner check on; an RDMA
    transfer's peer writes them into its own buffer the same way. They are verified end to end
    (:mod:`dmabuf.sim.verify`): the bytes read must have the expected per-page digests of the
    buffer, bytes written are read back through the exporter's own view of its pages. Each DMA
    is bracketed by a fence in the buffer's reservation object (:meth:`Import.begin` /
    :meth:`Import.end`), so an exporter that moves or revokes the buffer waits for it.
    The real-bytes part of each transfer runs under one runner lock, so concurrent streams over
    the same buffer verify against a consistent expectation. HMM importers (``mode = "hmm"``,
    :mod:`dmabuf.sim.svm`) have no fences: their mirror's notifier and lock keep them coherent;
    a transfer with an HMM end moves its bytes through each end's own translation.

Results
    :func:`run_scenario` returns the report as a plain dict (``docs/report-schema.json``):
    per attachment the map type, distance and path; per stream bytes moved and verified, the
    combined CRC-32, modelled throughput; per link bytes and utilisation; events with their
    outcome; DMA faults; modelled and wall time. ``ok`` is false when a checksum failed or an
    unexpected error or fault happened, and ``failures`` says which.
"""

from __future__ import annotations

import errno
import importlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmabuf.buf.sg_table import SgTable
from dmabuf.devices.base import Device
from dmabuf.devices.platform import Platform
from dmabuf.errors import DmaBufError, IommuFault, errno_name
from dmabuf.machine import Machine
from dmabuf.mm.ranges import slice_ranges
from dmabuf.sched import ControlledScheduler
from dmabuf.sim.actors import (
    CmbExport,
    Export,
    Import,
    Mapping,
    MrImport,
    P2pmemImport,
    make_export,
    region_node_map,
)
from dmabuf.sim.fabric import Direction, FlowKind, Hop
from dmabuf.sim.pci_fabric import PciFabric, fabric_from_topology
from dmabuf.sim.scenario import KINDS, EventSpec, HostSpec, Scenario, StreamSpec
from dmabuf.sim.svm import HmmImport, mr_access
from dmabuf.sim.timing import FabricClock, FlowResult, FlowSpec, fabric_clock
from dmabuf.sim.verify import BufferTruth, StreamChecksum, fill_bytes, page_digests
from dmabuf.sync.dma_resv import DmaResvUsage
from dmabuf.trace import TraceEvent

__all__ = ["REPORT_SCHEMA", "HostRun", "ProgressFn", "run_scenario"]

#: Identifies the report format (``docs/report-schema.json``).
REPORT_SCHEMA = "pydmabuf.report/1"

#: ``progress(host, done_bytes, total_bytes)`` — called after every transfer.
ProgressFn = Callable[[str, int, int], None]

#: How each scenario device parameter is passed to its driver.
_PARAM_NAMES = {"gpu": {"vram": "vram_size", "gtt": "gtt_size"},
                "accel": {"hbm": "dram_size"}}

#: Importer modes the runner can drive with the dma-buf core alone (others need the driver).
_GENERIC_MODES = ("static", "pinned", "dynamic", "revocable")


def _reverse(hops: tuple[Hop, ...]) -> tuple[Hop, ...]:
    return tuple((lk, Direction.UP if d is Direction.DOWN else Direction.DOWN)
                 for lk, d in reversed(hops))


def _load_driver(kind: str) -> tuple[type[Device] | None, str]:
    """The driver class of a kind, or None and why not."""
    mod_name, _, cls_name = KINDS[kind].driver.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        return None, f"driver module {mod_name} is not available ({e})"
    cls = getattr(mod, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Device)):
        return None, f"{mod_name} has no driver class {cls_name}"
    return cls, ""


def missing_drivers(scenario: Scenario) -> dict[str, str]:
    """Device kinds the scenario uses whose driver is not available: kind -> reason."""
    out: dict[str, str] = {}
    for h in scenario.hosts:
        for d in h.devices:
            if d.kind not in out:
                cls, why = _load_driver(d.kind)
                if cls is None:
                    out[d.kind] = why
    return {k: v for k, v in out.items() if v}


@dataclass
class _StreamState:
    spec: StreamSpec
    checksum: StreamChecksum = field(default_factory=StreamChecksum)
    transfers: int = 0
    bytes: int = 0
    verified: int = 0
    first: float = math.inf
    last: float = 0.0
    flows: list[tuple[float, float]] = field(default_factory=list)
    rate_sum: float = 0.0
    errors: list[str] = field(default_factory=list)
    stopped: str | None = None
    status: str = "ok"
    checked: bool = False


class HostRun:
    """One host of a scenario, run inside a controlled scheduler (see the module docstring).

    Args:
        scenario: the scenario.
        host: the host to run.
        machine: its machine (controlled scheduler, seeded).
        progress: optional progress callback.
        allow_missing: run what can run when a driver is missing (its elements are reported
            as ``missing``) instead of failing.
    """

    def __init__(self, scenario: Scenario, host: HostSpec, machine: Machine,
                 progress: ProgressFn | None = None, allow_missing: bool = False) -> None:
        self.scenario = scenario
        self.host = host
        self.machine = machine
        self.progress = progress
        self.allow_missing = allow_missing
        self.params = host.timing
        self.devices: dict[str, Device] = {}
        self.missing: dict[str, str] = {}
        self.exports: dict[str, Export] = {}
        self.buffer_status: dict[str, str] = {}
        self.imports: dict[tuple[str, str], Import] = {}
        self.import_status: dict[tuple[str, str], tuple[str, str]] = {}
        self.truths: dict[str, BufferTruth] = {}
        self.streams: dict[str, _StreamState] = {}
        self.events: list[dict[str, Any]] = []
        self.moves: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.export_factories: dict[str, Callable[..., Export]] = {}
        self.done_bytes = 0
        self.total_bytes = host.total_bytes
        self._heap: Any = None
        self._pressure: list[Any] = []
        self._lookup: Callable[[int], tuple[str, str]] | None = None
        self._pds: dict[str, Any] = {}
        self._qps: dict[str, tuple[Any, Any, Any, Any]] = {}
        self._attached: dict[tuple[str, str], Any] = {}
        self._mm: Any = None
        self._svm: dict[str, Any] = {}
        self._workers: list[Any] = []
        #: Device resets begun, per vfio device (a write verified after one is not checkable).
        self.reset_epoch: dict[str, int] = {}
        self.t0 = 0.0
        self.event_handlers: dict[str, Callable[[HostRun, EventSpec], str]] = {
            "reset": _vfio_reset, "revoke": _vfio_revoke, "unrevoke": _vfio_unrevoke}

    # ------------------------------------------------------------------ helpers for actors
    def system_heap(self) -> Any:
        """The machine's system heap (registered on first use)."""
        if self._heap is None:
            from dmabuf.buf.heaps import system_heap_create

            self._heap = system_heap_create(self.phys, machine=self.machine)
        return self._heap

    def app_mm(self) -> Any:
        """The host's application address space (``MmStruct``), created on first use: where
        SVM buffers live (:mod:`dmabuf.sim.svm`)."""
        if self._mm is None:
            from dmabuf.mm.vma import MmStruct

            self._mm = MmStruct(self.phys, machine=self.machine, name=f"{self.host.name}.app")
        return self._mm

    def svm_device(self, name: str) -> Any:
        """The HMM half (:class:`~dmabuf.sim.svm.SvmDevice`) of device ``name``'s driver, on
        the same PCI function; created on first use with a device-private pool the size of the
        SVM buffers the device exports."""
        dev = self._svm.get(name)
        if dev is None:
            from dmabuf.sim.svm import SvmDevice

            svm_bufs = {i.buffer for i in self.host.imports if i.mode == "hmm"}
            pool = sum(b.size for b in self.host.buffers
                       if b.exporter == name and b.name in svm_bufs
                       and self.host.device(name).kind == "gpu")
            main = self.devices[name]
            dev = SvmDevice(self.platform, main.pdev, name=main.name, devmem_size=pool, hr=self)
            self._svm[name] = dev
        return dev

    def charge_device_copy(self, dev: Any, nbytes: int, to_vram: bool, label: str, *,
                           evict: bool = False, svm: bool = False) -> None:
        """Sleep the modelled time of a device's own copy between its memory and host RAM
        (a TTM move, an SVM migration) and record it in ``moves`` — no kernel symbol.

        Context: blocks the calling thread for the modelled time (the caller holds what the
            driver holds during its copy).
        """
        mem = self.pf.mem_of.get(dev.bdf)
        if mem is None or nbytes <= 0:
            return
        ram = self.pf.ram(self.platform.numa_node_of(dev.pdev))
        path = self.pf.path(ram, mem) if to_vram else self.pf.path(mem, ram)
        src, dst = ("RAM", "VRAM") if to_vram else ("VRAM", "RAM")
        if not svm:
            src, dst = ("TT", "VRAM") if to_vram else ("VRAM", "TT")
        t0 = self.machine.sched.now()
        self.clock.transfer(FlowSpec(f"move {label} {src}->{dst}", path, int(nbytes),
                                     kind=FlowKind.READ if to_vram else FlowKind.WRITE,
                                     iommu=bool(dev.dma.uses_dma_iommu)))
        end = self.machine.sched.now()
        last = self.moves[-1] if self.moves else None
        if svm and last is not None and last["buffer"] == label and last["from"] == src \
                and last["to"] == dst and abs(last["end"] - t0) < 1e-12:
            last["bytes"] += int(nbytes)        # one migration in several granules
            last["end"] = end
            return
        self.moves.append({"buffer": label, "device": dev.name, "from": src, "to": dst,
                           "evict": evict, "bytes": int(nbytes), "start": t0, "end": end})

    def describe_mapping(self, imp: Import, table: Any) -> Mapping:
        """Derive everything the runner needs from an importer's map result."""
        if isinstance(table, SgTable):
            dma = np.asarray(table.dma_ranges())
        elif isinstance(table, np.ndarray):
            dma = table
        else:
            dma = np.asarray(table.ranges)
        dev = imp.dev
        if imp.attach is not None:
            imp.peer2peer = bool(imp.attach.peer2peer)
        if imp.decision is None:
            imp.decision = self._decision(imp)
        phys_r = dev.dma.translate(dma)
        owners = frozenset(int(o) for o in np.unique(self.phys.owners_of(phys_r)))
        if self._lookup is None:
            self._lookup = region_node_map(self)
        mem, _label = self._lookup(int(phys_r["addr"][0]))
        devnode = self.pf.node(dev.bdf)
        exp_dev = self.host.device(imp.export.spec.exporter) if \
            imp.export.spec.exporter != "system" else None
        on_ram = mem in self.pf.ram_of.values()
        uses_iommu = bool(dev.dma.uses_dma_iommu)
        if on_ram:
            hops = self.pf.path(mem, devnode)
            map_type = "HOST_MEMORY"
            iommu = uses_iommu
            if exp_dev is not None and exp_dev.kind == "gpu":
                decision = self.topo.p2p_map_type(exp_dev.bdf, dev.bdf)
                if decision.name != "BUS_ADDR" and decision.name != "THRU_HOST_BRIDGE":
                    map_type = "STAGED_HOST_MEMORY"
                elif not imp.attach or not imp.attach.peer2peer:
                    map_type = "HOST_MEMORY (importer not P2P)"
        else:
            provider = exp_dev.bdf if exp_dev is not None else dev.bdf
            mt = self.topo.p2p_map_type(provider, dev.bdf)
            map_type = mt.name
            hops = self.pf.path(mem, devnode, via_rc=mt.name != "BUS_ADDR")
            iommu = uses_iommu and mt.name != "BUS_ADDR"
        used, note, nbytes, entries = imp.repr_info(table, dma, iommu)
        loc = imp.export.location()
        return Mapping(table, dma, owners, mem, loc, map_type, self.pf.nodes_of(hops), iommu,
                       entries, int(dma.size), nbytes, used, note)

    def _decision(self, imp: Import) -> dict[str, Any]:
        """The P2P decision for (exporter, importer) as the kernel has it cached *now* (the
        attach asked it), with the distance and PCI path — recorded at the first mapping, so a
        later ACS change does not rewrite history in the report."""
        exp = imp.export.spec.exporter
        if exp == "system":
            return {}
        prov = self.host.device(exp).bdf
        cli = imp.dev.bdf
        out: dict[str, Any] = {"p2p_decision": self.topo.p2p_map_type(prov, cli).name}
        try:
            ex = self.topo.explain(prov, cli)
            out["distance"] = int(ex.p2pdma_distance) if out["p2p_decision"] != \
                "NOT_SUPPORTED" else -1
            names = []
            for p in ex.path:
                try:
                    d = self.topo.device(p)
                    names.append(d.name or d.bdf)
                except DmaBufError:
                    names.append(p)
            out["pci_path"] = names
        except DmaBufError as e:
            out["detail"] = f"explain failed: {e}"
        return out

    def _path_cache(self, imp: Import, m: Mapping) -> tuple[Hop, ...]:
        key = tuple(m.path_nodes)
        cached = self._paths.get(key)
        if cached is None:
            cached = self._nodes_to_hops(m.path_nodes)
            self._paths[key] = cached
        return cached

    def _nodes_to_hops(self, nodes: list[str]) -> tuple[Hop, ...]:
        f = self.pf.fabric
        hops: list[Hop] = []
        for a, b in itertools.pairwise(nodes):
            for lk in f.links.values():
                if lk.a == a and lk.b == b:
                    hops.append((lk.name, Direction.DOWN))
                    break
                if lk.b == a and lk.a == b:
                    hops.append((lk.name, Direction.UP))
                    break
            else:
                raise DmaBufError(errno.EHOSTUNREACH, f"no link between {a} and {b}")
        return tuple(hops)

    def map_cost(self, m: Mapping, *, remap: bool) -> float:
        """Modelled seconds of a (re)map: DMA mapping (IOMMU or bus address) + UMR for NICs."""
        pages = -(-int(m.dma["len"].sum(dtype=np.uint64)) // self.params.iommu_page_size) \
            if m.dma.size else 0
        cost = self.params.map_cost(pages, m.ranges, iommu=m.iommu)
        if remap:
            cost += self.params.remap_cost(m.ranges)
        return float(cost)

    # ------------------------------------------------------------------ RDMA plumbing
    def nic_pd(self, nic: Any) -> Any:
        """The protection domain the runner uses on ``nic`` (allocated once)."""
        pd = self._pds.get(nic.name)
        if pd is None:
            pd = nic.alloc_pd()
            self._pds[nic.name] = pd
        return pd

    def qp_pair(self, key: str, a: Any, b: Any) -> tuple[Any, Any, Any, Any]:
        """A connected RC QP pair ``a`` <-> ``b`` for one stream worker: (qp_a, cq_a, qp_b,
        cq_b), created and moved to RTS on first use (ibv_create_qp + ibv_modify_qp)."""
        got = self._qps.get(key)
        if got is not None:
            return got
        from dmabuf.devices.rdma.ib_verbs import IbAccess, IbQpAttrMask, IbQpState
        from dmabuf.devices.rdma.qp import IbAhAttr, IbQpAttr, IbQpCap, IbQpInitAttr

        M = IbQpAttrMask
        made = []
        for nic in (a, b):
            cq = nic.create_cq(64)
            qp = nic.create_qp(self.nic_pd(nic), IbQpInitAttr(
                send_cq=cq, recv_cq=cq, cap=IbQpCap(max_send_wr=8, max_recv_wr=8)))
            made.append((nic, qp, cq))
        access = int(IbAccess.LOCAL_WRITE | IbAccess.REMOTE_WRITE | IbAccess.REMOTE_READ)
        for (_nic, qp, _cq), (peer, pqp, _pcq) in ((made[0], made[1]), (made[1], made[0])):
            qp.modify(IbQpAttr(qp_state=IbQpState.INIT, pkey_index=0, port_num=1,
                               qp_access_flags=access),
                      M.STATE | M.PKEY_INDEX | M.PORT | M.ACCESS_FLAGS)
            qp.modify(IbQpAttr(qp_state=IbQpState.RTR, path_mtu=5, dest_qp_num=pqp.qp_num,
                               rq_psn=0, max_dest_rd_atomic=1, min_rnr_timer=12,
                               ah_attr=IbAhAttr(dlid=peer.ports[1].lid, port_num=1)),
                      M.STATE | M.AV | M.PATH_MTU | M.DEST_QPN | M.RQ_PSN
                      | M.MAX_DEST_RD_ATOMIC | M.MIN_RNR_TIMER)
            qp.modify(IbQpAttr(qp_state=IbQpState.RTS, timeout=14, retry_cnt=7, rnr_retry=7,
                               sq_psn=0, max_rd_atomic=1),
                      M.STATE | M.TIMEOUT | M.RETRY_CNT | M.RNR_RETRY | M.SQ_PSN
                      | M.MAX_QP_RD_ATOMIC)
        res = (made[0][1], made[0][2], made[1][1], made[1][2])
        self._qps[key] = res
        return res

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Build, run and tear down the host; return its report section."""
        m = self.machine
        host = self.host
        t_wall = time.perf_counter()
        self._paths: dict[tuple[str, ...], tuple[Hop, ...]] = {}
        self.topo = host.load_topology()
        for port, ctrl in host.topology.acs:
            self.topo.set_acs_ctrl(port, ctrl)
        self.platform = Platform(self.topo, machine=m, ram_size=host.topology.ram,
                                 iommu=host.topology.iommu)
        self.phys = self.platform.phys
        nic_rates = {d.endpoint: float(d.params.get("gbps", 400.0)) for d in host.devices
                     if d.kind == "nic"}
        self.pf: PciFabric = fabric_from_topology(self.topo, self.params, nic_gbps=nic_rates)
        self.clock: FabricClock = fabric_clock(m, self.pf.fabric)
        unsubscribe = m.trace.subscribe(self._on_trace)
        try:
            self._setup()
            self.t0 = m.sched.now()
            for i in host.imports:    # before any thread starts: workers wait on these
                if i.at > 0:
                    self._attached[i.key] = m.sched.event(f"import.{i.buffer}@{i.device}")
            tasks = []
            for st in host.streams:
                state = self.streams[st.name]
                if state.status != "ok":
                    continue
                for k in range(st.concurrency):
                    tasks.append(m.sched.spawn(self._worker, st, k, name=f"{st.name}.{k}"))
            for ev in host.events:
                tasks.append(m.sched.spawn(self._event, ev, name=f"event{ev.index}"))
            for i in host.imports:
                if i.at > 0:
                    tasks.append(m.sched.spawn(self._late_import, i,
                                               name=f"import.{i.buffer}@{i.device}"))
            for t in tasks:
                t.join()
            for t in tasks:
                t.result()
            while self._workers:                  # SVM eviction workers started meanwhile
                w = self._workers.pop(0)
                w.join()
                w.result()
            modelled = m.sched.now()
            for imp in self.imports.values():
                if isinstance(imp, MrImport) and imp.mr is not None:
                    imp.sync_stats()
            self._final_checks()
        finally:
            unsubscribe()
            self._teardown()
        return self._report(modelled, time.perf_counter() - t_wall)

    def _setup(self) -> None:
        host = self.host
        for d in host.devices:
            cls, why = _load_driver(d.kind)
            if cls is None:
                self.missing[d.name] = why
                continue
            names = _PARAM_NAMES.get(d.kind, {})
            params = {names.get(k, k): v for k, v in d.params.items()}
            self.devices[d.name] = self.platform.bind(cls, d.endpoint, name=d.name, **params)
        for b in host.buffers:
            if b.exporter != "system" and b.exporter not in self.devices:
                self.buffer_status[b.name] = f"missing: exporter {b.exporter}: " \
                    f"{self.missing.get(b.exporter, 'not bound')}"
                continue
            try:
                exp = make_export(self, b)
            except KeyError:
                self.buffer_status[b.name] = (f"missing: no exporter adapter for "
                                              f"{host.device(b.exporter).kind}")
                continue
            data = fill_bytes(self.machine.rng(f"buffer:{b.name}"), b.size, b.fill)
            exp.write_initial(data)
            self.truths[b.name] = BufferTruth(b.name, data)
            self.exports[b.name] = exp
            self.buffer_status[b.name] = "ok"
        for i in host.imports:
            if i.at > 0:
                self.import_status[i.key] = ("pending", f"attaches at {i.at * 1e6:g} us")
                continue
            self._attach_import(i)
        for st in host.streams:
            state = _StreamState(st)
            self.streams[st.name] = state
            late = [i for i in host.imports if i.at > 0 and i.key in (
                (st.buffer, st.device), (st.peer_buffer, st.peer))]
            if not late:
                self._check_stream_imports(state)

    def _attach_import(self, i: Any) -> None:
        """Attach and first-map one ``[[import]]``; record its status."""
        host = self.host
        key = i.key
        if i.buffer not in self.exports:
            self.import_status[key] = ("missing", f"buffer {i.buffer}: "
                                       f"{self.buffer_status.get(i.buffer)}")
            return
        if i.device not in self.devices:
            self.import_status[key] = ("missing", f"device {i.device}: "
                                       f"{self.missing.get(i.device)}")
            return
        kind = host.device(i.device).kind
        imp_cls: type[Import] = Import
        if i.mode == "hmm":
            from dmabuf.sim.svm import HmmImport

            imp_cls = HmmImport
        elif isinstance(self.exports[i.buffer], CmbExport):
            imp_cls = P2pmemImport
        elif kind == "nic":
            imp_cls = MrImport
        elif i.mode not in _GENERIC_MODES:
            self.import_status[key] = ("missing", f"mode {i.mode} needs the {kind} "
                                       "driver's own support, which the model lacks")
            return
        imp = imp_cls(self, i, self.exports[i.buffer], self.devices[i.device])
        try:
            imp.do_attach()
            imp.map_initial()
        except DmaBufError as e:
            name = errno_name(e.errno or 0)
            if i.expect == name:
                self.import_status[key] = ("expected-error", str(e))
            else:
                self.import_status[key] = ("error", str(e))
                self.failures.append(f"{imp.name}: attach/map failed: {e}")
            imp.error = e
            self.imports[key] = imp
            return
        if i.expect is not None:
            self.import_status[key] = ("error", f"expected {i.expect}, but it succeeded")
            self.failures.append(f"{imp.name}: expected {i.expect}, but the attach and map "
                                 "succeeded")
        else:
            self.import_status[key] = ("ok", "")
        self.imports[key] = imp

    def _late_import(self, i: Any) -> None:
        """Attach an import at its ``at`` time (its own thread)."""
        sched = self.machine.sched
        now = sched.now()
        if self.t0 + i.at > now:
            sched.sleep(self.t0 + i.at - now)
        try:
            self._attach_import(i)
        finally:
            self._attached[i.key].set()

    def _check_stream_imports(self, state: _StreamState) -> bool:
        """Whether the stream's imports are usable; waits for late ones to attach. Records
        the reason once when they are not."""
        st = state.spec
        keys = [(st.buffer, st.device)] + ([(st.peer_buffer, st.peer)]
                                           if st.peer and st.peer_buffer else [])
        for key in keys:
            ev = self._attached.get((key[0], key[1]))
            if ev is not None:
                ev.wait(what=f"import {key[0]}@{key[1]} attaching")
        if state.checked:
            return state.status == "ok" and not state.stopped
        state.checked = True
        for key in keys:
            status, why = self.import_status.get((key[0], key[1]), ("missing", "?"))
            if status != "ok":
                state.status = "missing" if status == "missing" else "error"
                state.stopped = f"import {key[0]}@{key[1]} is {status}: {why}"
                if status != "missing":
                    self.failures.append(f"stream {st.name}: {state.stopped}")
                return False
        return True

    # ------------------------------------------------------------------ streams
    def _worker(self, st: StreamSpec, k: int) -> None:
        sched = self.machine.sched
        now = sched.now()
        if self.t0 + st.start > now:
            sched.sleep(self.t0 + st.start - now)
        state = self.streams[st.name]
        if state.status == "ok" and not state.stopped and not self._check_stream_imports(state):
            return
        for i in range(k, st.count, st.concurrency):
            if state.stopped:
                return
            self._transfer(state, i)
            if st.gap > 0:
                sched.sleep(st.gap)

    def _flow_path(self, st: StreamSpec, m: Mapping, pm: Mapping | None,
                   imp: Import, peer: Import | None) -> tuple[tuple[Hop, ...], FlowKind, bool]:
        here = self._path_cache(imp, m)       # buffer memory -> device
        dev_node = self.pf.node(imp.dev.bdf)
        if peer is not None and pm is not None:
            there = self._path_cache(peer, pm)   # peer buffer memory -> peer
            peer_node = self.pf.node(peer.dev.bdf)
            if st.direction == "read":
                path = here + self.pf.rdma_path(dev_node, peer_node) + _reverse(there)
                read_leg = here
            else:
                path = there + self.pf.rdma_path(peer_node, dev_node) + _reverse(here)
                read_leg = there
            iommu = m.iommu or pm.iommu
        else:
            sink: tuple[Hop, ...] = ()
            if dev_node in self.pf.port_of:
                sink = ((self.pf.port_of[dev_node], Direction.DOWN),)
            elif imp.dev.bdf in self.pf.mem_of:
                sink = self.pf.path(dev_node, self.pf.mem_of[imp.dev.bdf])
            if st.direction == "read":
                path = here + sink
                read_leg = here
            else:
                path = _reverse(sink) + _reverse(here)
                read_leg = ()
            iommu = m.iommu
        crosses = self.pf.crosses_rc(read_leg) if read_leg else False
        return path, (FlowKind.READ if crosses else FlowKind.WRITE), iommu

    def _transfer(self, state: _StreamState, i: int) -> None:
        st = state.spec
        m = self.machine
        imp = self.imports[(st.buffer, st.device)]
        other = self.imports.get((st.peer_buffer, st.peer)) if st.peer and st.peer_buffer \
            else None
        if isinstance(imp, HmmImport) or isinstance(other, HmmImport):
            self._transfer_hmm(state, i, imp, other)
            return
        if isinstance(imp, P2pmemImport):
            self._transfer_p2pmem(state, i, imp)
            return
        if isinstance(imp, MrImport):
            self._transfer_rdma(state, i, imp)
            return
        peer = self.imports[(st.peer_buffer, st.peer)] if st.peer and st.peer_buffer else None
        here_writes = st.direction == "write"
        # Begin in a canonical order (by buffer name) so two transfers over the same pair of
        # buffers never wait for each other's fences in a cycle.
        parts: list[tuple[Import, bool]] = [(imp, here_writes)]
        if peer is not None:
            parts.append((peer, not here_writes))
        parts.sort(key=lambda p: p[0].spec.buffer)
        begun: dict[int, tuple[Mapping, Any, np.ndarray]] = {}
        try:
            for p, w in parts:
                mp, fence = p.begin(w)
                begun[id(p)] = (mp, fence, p.export.truth_ranges())
        except DmaBufError as e:
            for p, _w in parts:
                if id(p) in begun:
                    p.end(begun[id(p)][0], begun[id(p)][1])
            revoked = any(p.revoked or p.export.revoked for p, _ in parts)
            if revoked:
                state.stopped = f"stopped at {m.sched.now() * 1e6:.1f} us: buffer revoked " \
                                f"({errno_name(e.errno or 0)})"
                if state.status == "ok":
                    state.status = "revoked"
            else:
                state.errors.append(f"#{i}: {e}")
                state.stopped = f"error: {e}"
                state.status = "error"
                self.failures.append(f"stream {st.name} #{i}: {e}")
            return
        mm, _f, truth_here = begun[id(imp)]
        pm = begun[id(peer)][0] if peer is not None else None
        truth_peer = begun[id(peer)][2] if peer is not None else None
        err = 0
        try:
            path, kind, iommu = self._flow_path(st, mm, pm, imp, peer)
            res = self.clock.transfer(FlowSpec(f"{st.name}#{i}", path, st.size, kind=kind,
                                               iommu=iommu))
            err = self._move_bytes(state, i, imp, mm, truth_here, peer, pm, truth_peer)
            state.transfers += 1
            state.bytes += st.size
            state.first = min(state.first, res.start)
            state.last = max(state.last, res.end)
            state.flows.append((res.start, res.end))
            state.rate_sum += res.transfer_rate
        finally:
            for p, _w in parts:
                p.end(begun[id(p)][0], begun[id(p)][1], err)
        self.done_bytes += st.size
        if self.progress is not None:
            self.progress(self.host.name, self.done_bytes, self.total_bytes)

    def _transfer_rdma(self, state: _StreamState, i: int, imp: MrImport) -> None:
        """One RDMA WRITE (``read`` stream: the device's buffer goes to the peer's) or RDMA
        READ (``write`` stream: the peer's buffer comes into the device's), executed by the
        HCA through the two MRs; then the modelled time of the flow and of any page faults."""
        from dmabuf.devices.rdma.ib_verbs import IbSendFlags, IbWcStatus, IbWrOpcode, wc_status_str
        from dmabuf.devices.rdma.qp import IbSendWr, IbSge

        st = state.spec
        sched = self.machine.sched
        assert st.peer is not None and st.peer_buffer is not None
        peer = self.imports[(st.peer_buffer, st.peer)]
        assert isinstance(peer, MrImport)
        off = self._offset(st.buffer, st.size, i)
        poff = self._offset(st.peer_buffer, st.size, i)
        k = i % st.concurrency
        qp, cq, _pqp, _pcq = self.qp_pair(f"{st.name}.{k}", imp.dev, peer.dev)
        t_start = sched.now()
        if st.direction == "read":
            wr = IbSendWr(wr_id=i, opcode=IbWrOpcode.RDMA_WRITE, send_flags=IbSendFlags.SIGNALED,
                          sg_list=[IbSge(imp.mr.iova + off, st.size, imp.mr.lkey)],
                          remote_addr=peer.mr.iova + poff, rkey=peer.mr.rkey)
            src, soff, dst, doff = st.buffer, off, st.peer_buffer, poff
        else:
            wr = IbSendWr(wr_id=i, opcode=IbWrOpcode.RDMA_READ, send_flags=IbSendFlags.SIGNALED,
                          sg_list=[IbSge(imp.mr.iova + off, st.size, imp.mr.lkey)],
                          remote_addr=peer.mr.iova + poff, rkey=peer.mr.rkey)
            src, soff, dst, doff = st.peer_buffer, poff, st.buffer, off
        if imp.revoked or peer.revoked:
            state.stopped = f"stopped at {self._us(t_start)}: MR revoked"
            if state.status == "ok":
                state.status = "revoked"
            return
        epoch = self._epoch(dst)
        try:
            qp.post_send([wr])
            wcs = cq.poll(1)
        except DmaBufError as e:
            wcs = []
            state.errors.append(f"#{i}: post_send: {e}")
        fault_time = imp.sync_stats() + peer.sync_stats()
        if not wcs or wcs[0].status != IbWcStatus.SUCCESS:
            status = wc_status_str(wcs[0].status) if wcs else "no completion"
            if imp.revoked or peer.revoked:
                state.stopped = f"stopped at {self._us(t_start)}: MR revoked ({status})"
                if state.status == "ok":
                    state.status = "revoked"
                return
            self._bad(state, i, f"RDMA {IbWrOpcode(wr.opcode).name} completed with {status}")
            state.stopped = "error"
            return
        imp.refresh()
        peer.refresh()
        if fault_time > 0:
            sched.sleep(fault_time)
        m, pm = imp.mapping, peer.mapping
        assert m is not None and pm is not None
        path, kind, iommu = self._flow_path(st, m, pm, imp, peer)
        res = self.clock.transfer(FlowSpec(f"{st.name}#{i}", path, st.size, kind=kind,
                                           iommu=iommu))
        if self._epoch(dst) != epoch:
            self._unverifiable(state, i, dst, res, t_start)
            return
        data = self.exports[dst].read_back(doff, st.size)
        bad = self.truths[src].check(soff, data)
        if bad:
            self._bad(state, i, f"RDMA into {dst!r} at {doff:#x}: {bad}")
            return
        self.truths[dst].update(doff, data)
        self._account(state, res, t_start, (i, data))

    def _side(self, imp: Import, offset: int, length: int, write: bool,
              data: np.ndarray | None = None) -> tuple[np.ndarray | None, float]:
        """One end of a transfer that has an HMM end: a DMA through that end's own translation
        (the mirror, the MR's MKey, the p2pmem DMA mapping). Returns (bytes read or None,
        modelled seconds of faults to charge)."""
        if isinstance(imp, HmmImport):
            return imp.access(offset, length, write, data)
        if isinstance(imp, MrImport):
            try:
                out = mr_access(imp, offset, length, write, data)
            finally:
                cost = imp.sync_stats()
            imp.refresh()
            return out, cost
        if isinstance(imp, P2pmemImport) and imp.mapping is not None:
            rng = slice_ranges(imp.mapping.dma, offset, length)
            if write:
                assert data is not None
                imp.dev.engine.write(rng, data, owner=None)
                return None, 0.0
            return imp.dev.engine.read(rng, owner=None), 0.0
        raise DmaBufError(errno.EOPNOTSUPP, f"{imp.name}: no DMA path for a transfer with an "
                          "HMM end")

    def _transfer_hmm(self, state: _StreamState, i: int, imp: Import,
                      peer: Import | None) -> None:
        """One transfer with an HMM end (:mod:`dmabuf.sim.svm`): read the source through its
        end's translation (faulting what is missing), check it, write it through the other
        end's, read it back through the exporter's pages; a CMB target is then committed to
        the namespace. The bytes first, then the modelled flow (faults and migrations first)."""
        st = state.spec
        sched = self.machine.sched
        off = self._offset(st.buffer, st.size, i)
        poff = self._offset(st.peer_buffer, st.size, i) if st.peer_buffer else 0
        t_start = sched.now()
        ends = [p for p in (imp, peer) if p is not None]
        if any(p.revoked for p in ends):
            state.stopped = f"stopped at {self._us(t_start)}: MR revoked"
            if state.status == "ok":
                state.status = "revoked"
            return
        here = (imp, st.buffer, off)
        there = (peer, st.peer_buffer, poff) if peer is not None and st.peer_buffer else None
        src, dst = (here, there) if st.direction == "read" else (there, here)
        cost = 0.0
        back: np.ndarray | None = None
        epoch = self._epoch(dst[1]) if dst is not None else 0
        unverifiable = False
        try:
            if src is not None:
                got, c = self._side(src[0], src[2], st.size, False)
                cost += c
                assert got is not None
                data = got
                bad = self.truths[src[1]].check(src[2], data)
                if bad:
                    self._bad(state, i, f"read by {src[0].dev.name}: {bad}")
                    state.stopped = "error"
                    return
            else:
                data = self._generated(st, i)
            if dst is not None:
                _none, c = self._side(dst[0], dst[2], st.size, True, data)
                cost += c
                exp = self.exports[dst[1]]
                back = exp.read_back(dst[2], st.size)
                unverifiable = self._epoch(dst[1]) != epoch
                if not unverifiable:
                    if not np.array_equal(page_digests(back), page_digests(data)):
                        self._bad(state, i, f"bytes written into {dst[1]!r} at {dst[2]:#x} do "
                                  "not read back through the exporter's pages")
                        state.stopped = "error"
                        return
                    self.truths[dst[1]].update(dst[2], data)
                nvme = getattr(exp, "nvme", None) or (
                    getattr(exp, "dev", None) if getattr(exp, "exp_kind", "") == "nvme" else None)
                if nvme is not None and not self._nvme_commit(state, i, exp, nvme, dst[2], back):
                    return
        except IommuFault as e:
            self._bad(state, i, f"DMA fault: {e}")
            state.stopped = "error"
            return
        except DmaBufError as e:
            if any(p.revoked for p in ends):
                state.stopped = f"stopped at {self._us(t_start)}: MR revoked " \
                                f"({errno_name(e.errno or 0)})"
                if state.status == "ok":
                    state.status = "revoked"
                return
            self._bad(state, i, f"DMA failed: {e}", -(e.errno or errno.EIO))
            state.stopped = "error"
            return
        if cost > 0:
            sched.sleep(cost)
        m = imp.mapping
        pm = peer.mapping if peer is not None else None
        if m is None or (peer is not None and pm is None):
            self._bad(state, i, "a mapping is missing")
            state.stopped = "error"
            return
        path, kind, iommu = self._flow_path(st, m, pm, imp, peer)
        res = self.clock.transfer(FlowSpec(f"{st.name}#{i}", path, st.size, kind=kind,
                                           iommu=iommu))
        if unverifiable and dst is not None:
            self._unverifiable(state, i, dst[1], res, t_start)
            return
        self._account(state, res, t_start, (i, data))

    def _nvme_commit(self, state: _StreamState, i: int, exp: Export, nvme: Any, off: int,
                     back: np.ndarray) -> bool:
        """nvmet's second half: the controller writes the CMB staging bytes to its namespace
        (``submit_bio`` of the P2P pages); verified by reading the media. False on failure."""
        st = state.spec
        disk = nvme.disk
        lba = (i * st.size) % max(st.size, disk.capacity - disk.capacity % st.size)
        disk.submit_bio(True, lba, slice_ranges(exp.truth_ranges(), off, st.size))
        stored = disk.media.read(lba, st.size)
        if not np.array_equal(page_digests(stored), page_digests(back)):
            self._bad(state, i, f"namespace of {nvme.name} at {lba:#x} differs from the CMB it "
                      "was written from")
            return False
        return True

    def _transfer_p2pmem(self, state: _StreamState, i: int, imp: P2pmemImport) -> None:
        """nvmet-rdma's P2P write: the host's data (the peer's buffer, read by the peer NIC
        through its MR's translation) lands in the target's p2pmem staging buffer (written by
        the local NIC through its DMA-API mapping of the CMB — BUS_ADDR through a switch), then
        the NVMe controller writes the staging buffer to its namespace (``submit_bio`` of the
        P2P pages). Verified: the CMB read back, then the namespace."""
        st = state.spec
        sched = self.machine.sched
        assert st.peer is not None and st.peer_buffer is not None
        peer = self.imports[(st.peer_buffer, st.peer)]
        assert isinstance(peer, MrImport)
        off = self._offset(st.buffer, st.size, i)
        poff = self._offset(st.peer_buffer, st.size, i)
        t_start = sched.now()
        peer.refresh()
        if peer.mapping is None:
            # an ODP MR maps nothing until the HCA touches it: the first access faults it in
            try:
                mr_access(peer, poff, st.size, False)
            except DmaBufError as e:
                self._bad(state, i, f"page fault on {peer.name} failed: {e}")
                state.stopped = "error"
                return
            fault_time = peer.sync_stats()
            peer.refresh()
            if fault_time > 0:
                sched.sleep(fault_time)
        m, pm = imp.mapping, peer.mapping
        if m is None or pm is None:
            self._bad(state, i, "a mapping is missing")
            state.stopped = "error"
            return
        path, kind, iommu = self._flow_path(st, m, pm, imp, peer)
        res = self.clock.transfer(FlowSpec(f"{st.name}#{i}", path, st.size, kind=kind,
                                           iommu=iommu))
        exp = self.exports[st.buffer]
        assert isinstance(exp, CmbExport)
        try:
            pdma, owners = peer.mr.umem_dma()
            data = peer.dev.engine.read(slice_ranges(pdma, poff, st.size), owner=owners)
            imp.dev.engine.write(slice_ranges(m.dma, off, st.size), data, owner=None)
            back = exp.read_back(off, st.size)
            bad = self.truths[st.peer_buffer].check(poff, back)
            if bad:
                self._bad(state, i, f"into the CMB at {off:#x}: {bad}")
                return
            self.truths[st.buffer].update(off, back)
            if not self._nvme_commit(state, i, exp, exp.nvme, off, back):
                return
        except IommuFault as e:
            self._bad(state, i, f"DMA fault: {e}")
            return
        except DmaBufError as e:
            self._bad(state, i, f"nvmet P2P write failed: {e}")
            return
        self._account(state, res, t_start, (i, back))

    def _epoch(self, buffer: str) -> int:
        """Resets begun on the device exporting ``buffer`` (0 for other exporters)."""
        vdev = getattr(self.exports.get(buffer), "vdev", None)
        return self.reset_epoch.get(vdev.name, 0) if vdev is not None else 0

    def _unverifiable(self, state: _StreamState, i: int, buffer: str, res: Any,
                      t_start: float) -> None:
        """The write landed, then a device reset cleared the target before it could be read
        back: the bytes moved, nothing is left to verify (not a failure)."""
        st = state.spec
        self.notes.append(f"stream {st.name} #{i}: written into {buffer!r}, which a device "
                          "reset cleared before the read-back; not verified")
        self._account(state, res, t_start)

    def _account(self, state: _StreamState, res: FlowResult, t_start: float,
                 verified: tuple[int, np.ndarray] | None = None) -> None:
        """Book one finished transfer of ``state``'s stream: its bytes, its flow interval
        (``t_start`` to the flow's end) and rate, the run's progress; with ``verified`` (the
        transfer index and the bytes read back), also the stream's checksum and verified bytes.
        """
        st = state.spec
        if verified is not None:
            state.checksum.add(*verified)
            state.verified += st.size
        state.transfers += 1
        state.bytes += st.size
        state.first = min(state.first, t_start)
        state.last = max(state.last, res.end)
        state.flows.append((t_start, res.end))
        state.rate_sum += res.transfer_rate
        self.done_bytes += st.size
        if self.progress is not None:
            self.progress(self.host.name, self.done_bytes, self.total_bytes)

    def _us(self, t: float) -> str:
        return f"{(t - self.t0) * 1e6:.1f} us"

    def _offset(self, buffer: str, size: int, i: int) -> int:
        slots = max(1, self.host.buffer(buffer).size // size)
        return (i % slots) * size

    def _move_bytes(self, state: _StreamState, i: int, imp: Import, m: Mapping,
                    truth_here: np.ndarray, peer: Import | None, pm: Mapping | None,
                    truth_peer: np.ndarray | None) -> int:
        """The real DMA of transfer ``i``; returns a negative errno on failure (0: ok)."""
        st = state.spec
        off = self._offset(st.buffer, st.size, i)
        try:
            if st.direction == "read":
                data = imp.dma_read(m, off, st.size)
                bad = self.truths[st.buffer].check(off, data)
                if bad:
                    return self._bad(state, i, f"read by {imp.dev.name} through its mapping: "
                                     f"{bad}")
                if peer is not None and pm is not None and truth_peer is not None:
                    assert st.peer_buffer is not None
                    poff = self._offset(st.peer_buffer, st.size, i)
                    peer.dma_write(pm, poff, data)
                    err = self._check_written(state, i, st.peer_buffer, truth_peer, poff, data)
                    if err:
                        return err
            else:
                if peer is not None and pm is not None:
                    assert st.peer_buffer is not None
                    poff = self._offset(st.peer_buffer, st.size, i)
                    data = peer.dma_read(pm, poff, st.size)
                    bad = self.truths[st.peer_buffer].check(poff, data)
                    if bad:
                        return self._bad(state, i, f"read by {peer.dev.name}: {bad}")
                else:
                    data = self._generated(st, i)
                imp.dma_write(m, off, data)
                err = self._check_written(state, i, st.buffer, truth_here, off, data)
                if err:
                    return err
        except IommuFault as e:
            return self._bad(state, i, f"DMA fault: {e}", -errno.EFAULT)
        except DmaBufError as e:
            return self._bad(state, i, f"DMA failed: {e}", -(e.errno or errno.EIO))
        state.checksum.add(i, data)
        state.verified += st.size
        return 0

    def _check_written(self, state: _StreamState, i: int, buffer: str, truth: np.ndarray,
                       off: int, data: np.ndarray) -> int:
        back = self.phys.read(slice_ranges(truth, off, int(data.size)))
        if not np.array_equal(page_digests(back), page_digests(data)):
            return self._bad(state, i, f"bytes written into {buffer!r} at {off:#x} do not read "
                             "back through the exporter's pages")
        self.truths[buffer].update(off, data)
        return 0

    def _bad(self, state: _StreamState, i: int, msg: str, err: int = -errno.EIO) -> int:
        state.errors.append(f"#{i}: {msg}")
        state.status = "error"
        self.failures.append(f"stream {state.spec.name} #{i}: {msg}")
        return err

    def _generated(self, st: StreamSpec, i: int) -> np.ndarray:
        base = self._gen_cache.get(st.name) if hasattr(self, "_gen_cache") else None
        if base is None:
            if not hasattr(self, "_gen_cache"):
                self._gen_cache: dict[str, np.ndarray] = {}
            base = fill_bytes(self.machine.rng(f"stream:{st.name}"), st.size, "random")
            self._gen_cache[st.name] = base
        return (base.view(np.uint64) ^ np.uint64(i + 1)).view(np.uint8)

    # ------------------------------------------------------------------ events
    def _event(self, ev: EventSpec) -> None:
        """One event, in its own thread: sleep until its time, act, record the outcome."""
        sched = self.machine.sched
        now = sched.now()
        if self.t0 + ev.at > now:
            sched.sleep(self.t0 + ev.at - now)
        t0 = sched.now()
        rec: dict[str, Any] = {"at": ev.at, "time": t0, "action": ev.action,
                               "target": ev.device or ev.buffer or ev.port or "",
                               "label": ev.label, "note": ev.note, "line": ev.line}
        try:
            rec["outcome"] = "ok"
            rec["detail"] = self._do_event(ev)
        except _Missing as e:
            rec["outcome"] = "missing"
            rec["detail"] = str(e)
        except DmaBufError as e:
            rec["outcome"] = "error"
            rec["detail"] = str(e)
            self.failures.append(f"event {ev.label} at {ev.at * 1e6:g} us: {e}")
        rec["duration"] = sched.now() - t0
        self.events.append(rec)
        self.events.sort(key=lambda r: (r["time"], r["line"]))

    def _do_event(self, ev: EventSpec) -> str:
        if ev.action == "acs":
            assert ev.port is not None and ev.ctrl is not None
            from dmabuf.pci.pci_regs import acs_names

            self.topo.set_acs_ctrl(ev.port, ev.ctrl)
            return (f"ACS ctrl of {ev.port} = {' '.join(acs_names(ev.ctrl)) or '-'}; decisions "
                    "already cached per (provider, client) are kept (kernel xarray cache)")
        if ev.action == "pressure":
            assert ev.device is not None and ev.bytes is not None
            gpu: Any = self.devices.get(ev.device)
            if gpu is None:
                raise _Missing(f"{ev.device}: {self.missing.get(ev.device)}")
            from dmabuf.devices.gpu import AmdgpuDomain

            self._reap_svm(ev.device)
            before = gpu.evictions
            bo = gpu.alloc_bo(ev.bytes, domain=AmdgpuDomain.VRAM, name=f"pressure{ev.index}")
            self._pressure.append((gpu, bo))
            return (f"allocated {ev.bytes >> 20} MiB of VRAM on {ev.device}: "
                    f"{gpu.evictions - before} BO(s) evicted to GTT")
        if ev.action in ("evict", "restore"):
            assert ev.buffer is not None
            exp = self.exports.get(ev.buffer)
            if exp is None:
                raise _Missing(f"buffer {ev.buffer}: {self.buffer_status.get(ev.buffer)}")
            return exp.evict() if ev.action == "evict" else exp.restore()
        handler = self.event_handlers.get(ev.action)
        if handler is None:
            raise _Missing(f"{ev.action}: the vfio-pci driver this needs is not available")
        return str(handler(self, ev))

    def _reap_svm(self, device: str) -> None:
        """Free the svm_bos of ``device``'s SVM buffers that left VRAM (deferred frees)."""
        for exp in self.exports.values():
            if exp.spec.exporter == device and hasattr(exp, "reap"):
                exp.reap()

    # ------------------------------------------------------------------ device copies
    def _on_trace(self, ev: TraceEvent) -> None:
        if ev.name != "ttm_bo_move":
            return
        f = ev.fields
        gpu: Any = self.devices.get(str(f.get("device")))
        if gpu is None:
            return
        name = str(f.get("bo"))
        if name.startswith("svm:"):
            # TTM evicted an SVM range's svm_bo: its eviction worker migrates the range to RAM
            # (in its own thread: mmap_lock must not be taken under the BO's reservation). The
            # placeholder's own copy is not charged: the migration is.
            exp = self.exports.get(name[4:])
            if f.get("new") != "VRAM" and exp is not None and hasattr(exp, "svm_bo_evicted"):
                self._workers.append(self.machine.sched.spawn(
                    exp.svm_bo_evicted, name=f"svm_evict.{exp.name}"))
            return
        size = None
        for exp in self.exports.values():
            bo = getattr(exp, "bo", None)
            if bo is not None and bo.name == name and getattr(exp, "gpu", None) is gpu:
                size = bo.size
                break
        if size is None:
            for g, bo in self._pressure:
                if g is gpu and bo.name == name:
                    size = bo.size
        if size is None:
            return
        self.charge_device_copy(gpu, int(size), f.get("new") == "VRAM", name,
                                evict=bool(f.get("evict")))

    # ------------------------------------------------------------------ end of run
    def _final_checks(self) -> None:
        for name, exp in self.exports.items():
            resv = exp.dmabuf.resv if exp.dmabuf is not None else None
            if resv is not None:
                resv.wait_timeout(DmaResvUsage.BOOKKEEP, False, None)
            try:
                data = self.phys.read(exp.truth_ranges())
            except DmaBufError as e:
                self.buffer_status[name] = f"error: cannot read back: {e}"
                self.failures.append(f"buffer {name}: final read-back failed: {e}")
                continue
            bad = self.truths[name].check(0, data)
            if bad:
                self.buffer_status[name] = f"error: {bad}"
                self.failures.append(f"buffer {name}: final content check: {bad}")

    def _teardown(self) -> None:
        for imp in self.imports.values():
            try:
                imp.detach()
            except DmaBufError as e:
                self.notes.append(f"detach {imp.name}: {e}")
        for gpu, bo in self._pressure:
            try:
                gpu.free_bo(bo)
            except DmaBufError as e:
                self.notes.append(f"free pressure BO: {e}")
        for exp in self.exports.values():
            try:
                exp.release()
            except DmaBufError as e:
                self.notes.append(f"release {exp.name}: {e}")
        for svm in self._svm.values():
            try:
                svm.remove()
            except DmaBufError as e:
                self.notes.append(f"remove the HMM half of {svm.name}: {e}")
        if self._mm is not None:
            self._mm.exit()
        try:
            self.platform.close()
        except DmaBufError as e:
            self.notes.append(f"platform close: {e}")

    # ------------------------------------------------------------------ report
    def _report(self, modelled: float, wall: float) -> dict[str, Any]:
        from dmabuf.sim.report import host_section

        return host_section(self, modelled, wall)


class _Missing(Exception):
    """An element needs a driver this installation lacks."""


def _vfio_of(hr: HostRun, ev: EventSpec) -> tuple[Any, list[Export]]:
    if ev.device is not None:
        name = ev.device
    else:
        assert ev.buffer is not None
        name = hr.host.buffer(ev.buffer).exporter
    vdev = hr.devices.get(name)
    if vdev is None:
        raise _Missing(f"{name}: {hr.missing.get(name, 'not bound')}")
    exps = [e for e in hr.exports.values() if getattr(e, "vdev", None) is vdev]
    return vdev, exps


def _after_reset(hr: HostRun, vdev: Any, exps: list[Export]) -> str:
    cleared = []
    for e in exps:
        if getattr(e, "bar", None) in vdev.reset_clears:
            hr.truths[e.name] = BufferTruth(e.name, np.zeros(e.size, np.uint8))
            cleared.append(e.name)
    return f"; BAR contents reset ({', '.join(cleared)})" if cleared else ""


def _vfio_reset(hr: HostRun, ev: EventSpec) -> str:
    """``VFIO_DEVICE_RESET``: revoke every dma-buf of the device, reset, un-revoke."""
    vdev, exps = _vfio_of(hr, ev)
    hr.reset_epoch[vdev.name] = hr.reset_epoch.get(vdev.name, 0) + 1
    vdev.reset()
    revoked = [imp.name for imp in hr.imports.values() if imp.export in exps and (
        imp.revoked or bool(getattr(getattr(getattr(imp, "mr", None), "umem", None), "revoked",
                                    False)))]
    return (f"{vdev.name} reset: its dma-bufs were revoked (importers invalidated, fences "
            f"waited) and un-revoked; revocable importers stopped: "
            f"{', '.join(revoked) or 'none'}{_after_reset(hr, vdev, exps)}")


def _vfio_revoke(hr: HostRun, ev: EventSpec) -> str:
    """Memory decode off (``PCI_COMMAND``): revoke the device's dma-bufs."""
    vdev, _exps = _vfio_of(hr, ev)
    vdev.set_memory_enable(False)
    return f"{vdev.name}: memory decode disabled; its dma-bufs are revoked"


def _vfio_unrevoke(hr: HostRun, ev: EventSpec) -> str:
    """Memory decode on again: un-revoke (importers map again when they choose to)."""
    vdev, _exps = _vfio_of(hr, ev)
    vdev.set_memory_enable(True)
    return f"{vdev.name}: memory decode enabled; its dma-bufs are usable again"


def run_scenario(scenario: Scenario, *, seed: int | None = None,
                 progress: ProgressFn | None = None, allow_missing: bool = False,
                 keep_timeline: bool = True) -> dict[str, Any]:
    """Run every host of a scenario under the controlled scheduler and report.

    Args:
        scenario: a validated scenario.
        seed: override the scenario's seed.
        progress: ``progress(host, done_bytes, total_bytes)`` after every transfer.
        allow_missing: run what can run when a driver is missing (reported as ``missing``);
            otherwise a missing driver is an error before anything runs.
        keep_timeline: keep each host's link-utilisation timeline in the report (for plots).
    Context: runs threads of its own (one controlled scheduler per host, one after the other);
        call it from an ordinary thread, not from inside another controlled run.
    Returns: the report dict (``docs/report-schema.json``).
    Raises: DmaBufError(EOPNOTSUPP) for a missing driver without ``allow_missing``;
        DeadlockDetected or RuntimeError when the run itself breaks (a bug; the seed replays it).
    Kernel: none.
    """
    from dmabuf.sim.report import scenario_report

    s = scenario if seed is None else scenario.with_seed(seed)
    miss = missing_drivers(s)
    if miss and not allow_missing:
        lines = "; ".join(f"{k}: {v}" for k, v in miss.items())
        raise DmaBufError(errno.EOPNOTSUPP, f"scenario {s.name} needs drivers this installation "
                          f"lacks ({lines}); pass allow_missing to run the rest")
    t0 = time.perf_counter()
    hosts: list[dict[str, Any]] = []
    for idx, host in enumerate(s.hosts):
        sched = ControlledScheduler(s.seed * 1_000_003 + idx, policy=s.run.policy,
                                    wall_timeout=s.run.wall_timeout, max_steps=50_000_000)
        holder: dict[str, Any] = {}

        def main(host: HostSpec = host, sched: ControlledScheduler = sched,
                 holder: dict[str, Any] = holder) -> None:
            with Machine(sched=sched, seed=s.seed, name=host.name) as m:
                hr = HostRun(s, host, m, progress, allow_missing)
                holder["hr"] = hr
                holder["report"] = hr.run()

        sched.run(main, name=f"{host.name}.main")
        report = holder["report"]
        if not keep_timeline:
            report.pop("timeline", None)
        hosts.append(report)
    return scenario_report(s, hosts, time.perf_counter() - t0)

