"""The scenario runner's actors: exporters and importers of a scenario, over real drivers.

Kernel: none of its own — every buffer operation goes through the dma-buf core
(:mod:`dmabuf.buf.dma_buf`) and the device drivers of layer 5; this module is the glue a
scenario needs around them: *which* driver call makes a scenario's buffer, *how* an importer in a
given mode attaches, maps, follows invalidations and brackets each DMA with a fence.

Exporters (:class:`Export`) wrap one buffer of a scenario:

* :class:`SystemExport` — a system-heap dma-buf (:func:`dmabuf.buf.heaps.system_heap_create`);
* :class:`GpuExport` — a :class:`dmabuf.devices.gpu.Gpu` BO in VRAM or GTT, exported dynamic
  (``amdgpu_gem_prime_export``); evict / restore / memory pressure go through the GPU's TTM;
* :class:`AccelExport` — :class:`dmabuf.devices.accel.Accel` device memory (alloc, map, export):
  static and pinned, never moves.

Every exporter gives the runner a *truth view* — the buffer's current CPU physical pages, read
without any importer's translation — so a write can be read back independently.

Importers (:class:`Import`) attach a device to a buffer in one of the scenario modes:

* ``static`` — ``dma_buf_attach`` (no importer ops, ``peer2peer`` false): the core pins a movable
  exporter around each mapping; a GPU therefore places the buffer in GTT (host memory);
* ``pinned`` — dynamic attach with ``allow_peer2peer`` and no ``invalidate_mappings``, then
  ``dma_buf_pin`` (v7.1: a pinned-only importer); the buffer never moves;
* ``dynamic`` — dynamic attach with ``invalidate_mappings``: the callback (exporter's thread,
  resv held) unmaps; the next DMA remaps under the resv and waits for the exporter's KERNEL
  (move) fences first;
* ``revocable`` — like dynamic, but an invalidation of a pinned attachment is a revoke: the
  importer stops for good.

Modes a device implements itself belong to its driver: RDMA MRs (:class:`MrImport`, the mlx5
model's own registration paths) and HMM mirrors (:mod:`dmabuf.sim.svm`: the dmirror model of
``dmabuf.devices.hmm_mirror`` on the device's PCI function, standing for amdgpu's SVM and mlx5's
ODP on user memory; a buffer they import is process memory, :class:`~dmabuf.sim.svm.SvmExport`).
The runner reports a mode as missing when no driver model provides it — it never imitates a
driver it does not have.

Each DMA is bracketed: :meth:`Import.begin` (resv held: remap if needed, wait for KERNEL fences,
add an unsignalled fence of this importer's timeline to the resv with the usage of the access)
and :meth:`Import.end` (signal it). An exporter that wants to move the buffer invalidates, then
waits for those fences: the in-flight DMA finishes on the old pages, the next one maps the new.

Representations (``repr``): what the importer *holds* for its DMA addresses, measured from the
objects themselves (``nbytes``), never modelled:

* ``sgtable`` — the exporter's ``map_dma_buf`` result as it came (every exporter of the model
  returns a :class:`~dmabuf.buf.sg_table.SgTable`; ``SgTable.nbytes``);
* ``physvec`` — a :class:`~dmabuf.buf.phys_vec.PhysVec` (16 bytes per range). A dma-buf importer
  gets one only when the exporter produces it: the core accepts a ``PhysVec`` from
  ``map_dma_buf``, and the proposed mapping-type negotiation
  (:mod:`dmabuf.buf.mapping_type`, behind ``machine.state(MappingTypeConfig).enabled``) lets an
  importer ask for a Physical Address List. The importer asks (:meth:`Import.probe_pal`, the
  RFC's ``dma_buf_mapping_attach`` with ``DMA_BUF_IMAPPING_PAL``); no exporter of the model
  offers one, so it keeps the exporter's SgTable and the report says ``n/a: exporter X only
  returns SgTable``. The in-kernel p2pmem user (:class:`P2pmemImport`) maps its physical ranges
  itself and really keeps a PhysVec of DMA addresses;
* ``iova`` — one contiguous IOVA range the importer linked itself (``dma_iova_try_alloc`` +
  ``dma_iova_link`` per physical range + one ``dma_iova_sync``). Only an importer that holds
  *physical* ranges can do that: :class:`P2pmemImport` (behind a DMA-API IOMMU and not
  ``BUS_ADDR``: bus addresses bypass the IOMMU), and HMM mirrors (``hmm_dma_map_alloc`` is one
  IOVA window, :mod:`dmabuf.sim.svm`). A dma-buf importer receives DMA addresses the exporter
  mapped: ``n/a``, with the reason.

The representation held decides the mapping memory reported and the ranges the modelled mapping
cost counts; the bytes always move through the DMA addresses the importer really holds.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dmabuf.buf.device import DmaDataDirection
from dmabuf.buf.dma_buf import DmaBuf, DmaBufAttachment, DmaBufAttachOps
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import SgTable
from dmabuf.devices.base import Device, DeviceFenceOps
from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import MemKind
from dmabuf.mm.ranges import RANGE_DTYPE, as_ranges, slice_ranges
from dmabuf.sync.dma_fence import DmaFence, dma_fence_begin_signalling, dma_fence_end_signalling
from dmabuf.sync.dma_resv import DmaResvUsage

if TYPE_CHECKING:
    from dmabuf.sim.runner import HostRun
    from dmabuf.sim.scenario import BufferSpec, ImportSpec

__all__ = ["AccelExport", "Export", "GpuExport", "Import", "SystemExport", "make_export"]

_MIB = 1 << 20


def _ranges_len(r: np.ndarray) -> int:
    return int(r["len"].sum(dtype=np.uint64)) if r.size else 0


# ----------------------------------------------------------------------------------------------
# Exporters
# ----------------------------------------------------------------------------------------------


class Export:
    """One exported buffer of a scenario (subclasses per exporter)."""

    kind = "export"

    def __init__(self, hr: HostRun, spec: BufferSpec) -> None:
        self.hr = hr
        self.spec = spec
        self.name = spec.name
        self.size = spec.size
        self.dmabuf: DmaBuf | None = None
        self.moves = 0
        self.revoked = False

    # what the runner needs ---------------------------------------------------------------
    def truth_ranges(self) -> np.ndarray:
        """The buffer's current CPU physical pages, as its exporter knows them — no kernel
        symbol (a GPU's ``bo->tbo.resource``, a heap buffer's pages, a BAR window).

        Context: call with the buffer's resv held when the exporter can move it.
        Returns: ``RANGE_DTYPE`` ranges covering the buffer in order.
        Raises: NotImplementedError in the base class.
        Kernel: none (the runner's truth view).
        """
        raise NotImplementedError

    def location(self) -> str:
        """Where the bytes are now — no kernel symbol.

        Context: pure. Returns: ``vram``, ``gtt``, ``hbm``, ``ram``, ``cmb``, ``barN``.
        Raises: nothing. Kernel: none.
        """
        return self.spec.placement

    def write_initial(self, data: np.ndarray) -> None:
        """Fill the buffer with its initial content, as its producer would (a GPU job, the
        device's own logic, a CPU mapping) — no kernel symbol.

        Args: data: ``size`` bytes.
        Context: may block (a GPU job's fence).
        Returns: None. Raises: DmaBufError from the device. Kernel: none.
        """
        self.hr.phys.write(self.truth_ranges(), data)

    def read_back(self, offset: int, length: int) -> np.ndarray:
        """The bytes at ``offset`` through the exporter's own pages, placement held stable.

        Takes the resv, waits for the exporter's KERNEL (move) fences, reads, unlocks — so a
        move cannot switch the pages between finding and reading them.
        """
        dmabuf = self.dmabuf
        assert dmabuf is not None
        dmabuf.resv.lock(None)
        try:
            dmabuf.resv.wait_timeout(DmaResvUsage.KERNEL, False, None)
            return self.hr.phys.read(slice_ranges(self.truth_ranges(), offset, length))
        finally:
            dmabuf.resv.unlock()

    def evict(self) -> str:
        """Move the buffer out of device memory — ``ttm_bo_evict()`` for a GPU BO.

        Context: may block (invalidation, fences, the copy).
        Returns: what happened, for the report.
        Raises: DmaBufError(EOPNOTSUPP) for an exporter that cannot; EBUSY when pinned.
        Kernel: drivers/gpu/drm/ttm/ttm_bo.c, ttm_bo_evict().
        """
        raise DmaBufError(errno.EOPNOTSUPP, f"{self.name}: this exporter cannot evict")

    def restore(self) -> str:
        """Move the buffer back into device memory — ``ttm_bo_validate()`` into VRAM.

        Context/Returns/Raises: as :meth:`evict`.
        Kernel: drivers/gpu/drm/ttm/ttm_bo.c, ttm_bo_validate().
        """
        raise DmaBufError(errno.EOPNOTSUPP, f"{self.name}: this exporter cannot move buffers")

    def release(self) -> None:
        """Drop the exporter's references at the end of the run — ``dma_buf_put()`` (and the
        driver's own free).

        Context: may block (the last put releases; a GPU BO waits for its fences).
        Returns: None. Raises: DmaBufError from the driver.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_put().
        """
        if self.dmabuf is not None and not self.dmabuf.released:
            self.dmabuf.put()


class SystemExport(Export):
    """A system-heap buffer (``exporter = "system"``)."""

    kind = "system-heap"

    def __init__(self, hr: HostRun, spec: BufferSpec) -> None:
        super().__init__(hr, spec)
        self.dmabuf = hr.system_heap().allocate(spec.size)
        self.priv = self.dmabuf.priv

    def truth_ranges(self) -> np.ndarray:
        return as_ranges(self.priv.pages)

    def location(self) -> str:
        return "ram"


class GpuExport(Export):
    """A GPU BO exported as a dynamic dma-buf."""

    kind = "amdgpu"

    def __init__(self, hr: HostRun, spec: BufferSpec, gpu: Any) -> None:
        super().__init__(hr, spec)
        from dmabuf.devices.gpu import AmdgpuDomain

        self.gpu = gpu
        dom = AmdgpuDomain.VRAM if spec.placement == "vram" else AmdgpuDomain.GTT
        self.bo = gpu.alloc_bo(spec.size, domain=dom, cpu_access_required=True, name=spec.name)
        self.dmabuf = gpu.export(self.bo)

    def truth_ranges(self) -> np.ndarray:
        return np.asarray(self.bo.cpu_ranges())

    def location(self) -> str:
        return "vram" if self.bo.in_vram else "gtt"

    def write_initial(self, data: np.ndarray) -> None:
        fence = self.gpu.write(self.bo, data)
        try:
            fence.wait(False)
            if fence.error:
                raise DmaBufError(-fence.error, f"{self.name}: initial GPU write failed")
        finally:
            fence.put()

    def evict(self) -> str:
        if not self.bo.in_vram:
            return f"{self.name} already in GTT"
        self.gpu.evict(self.bo)
        return f"{self.name} evicted VRAM -> GTT"

    def restore(self) -> str:
        from dmabuf.devices.gpu import AmdgpuDomain

        if self.bo.in_vram:
            return f"{self.name} already in VRAM"
        self.gpu.validate(self.bo, AmdgpuDomain.VRAM)
        return f"{self.name} moved GTT -> VRAM"

    @property
    def moved(self) -> int:
        return int(self.bo.moves)

    def release(self) -> None:
        super().release()
        if not self.bo.freed:
            self.gpu.free_bo(self.bo)


class AccelExport(Export):
    """Accelerator device memory exported as a static, pinned dma-buf."""

    kind = "habanalabs"

    def __init__(self, hr: HostRun, spec: BufferSpec, acc: Any) -> None:
        super().__init__(hr, spec)
        self.acc = acc
        page = int(acc.page_size)
        alloc = -(-spec.size // page) * page
        self.handle = acc.mem_alloc(alloc)
        self.va = acc.mem_map(self.handle)
        self.dmabuf = acc.export_dmabuf(self.va, spec.size)

    def truth_ranges(self) -> np.ndarray:
        bar = np.asarray(self.acc.resolve(self.va, self.size))
        return bar

    def location(self) -> str:
        return "hbm"

    def release(self) -> None:
        super().release()
        try:
            self.acc.mem_unmap(self.va)
            self.acc.mem_free(self.handle)
        except DmaBufError:
            pass


class VfioExport(Export):
    """A range of a vfio-pci function's BAR, exported with ``VFIO_DEVICE_FEATURE_DMA_BUF``.

    The device is opened and its memory decode enabled (what the VMM does) before the export.
    """

    kind = "vfio-pci"

    def __init__(self, hr: HostRun, spec: BufferSpec, vdev: Any) -> None:
        super().__init__(hr, spec)
        self.vdev = vdev
        if not vdev.is_open:
            vdev.open_device()
        vdev.set_memory_enable(True)
        bar = hr.host.device(spec.exporter).params.get("bar")
        if bar is None:
            mem = [(i, r) for i, r in sorted(vdev.bar_regions.items())]
            pref = [(i, r) for i, r in mem
                    if (b := vdev.pdev.bar(i)) is not None and b.prefetchable]
            bar = max(pref or mem, key=lambda ir: ir[1].size)[0]
        self.bar = int(bar)
        self.dmabuf = vdev.export_dma_buf(self.bar, [(0, spec.size)])
        self.priv = self.dmabuf.priv

    def truth_ranges(self) -> np.ndarray:
        r = self.vdev.bar_region(self.bar)
        out = np.zeros(1, dtype=RANGE_DTYPE)
        out["addr"] = r.base
        out["len"] = self.size
        return out

    def location(self) -> str:
        return f"bar{self.bar}"

    @property
    def revoked(self) -> bool:
        return bool(getattr(self.priv, "revoked", False))

    @revoked.setter
    def revoked(self, value: bool) -> None:
        pass

    def write_initial(self, data: np.ndarray) -> None:
        self.vdev.hw_write(self.bar, 0, data)


class CmbExport(Export):
    """P2P memory from an NVMe controller's CMB — ``pci_alloc_p2pmem()``, as nvmet allocates
    its P2P staging buffers. Not a dma-buf (the kernel has no dma-buf exporter for p2pmem):
    importers map it with the DMA API (``dma_map_sgtable`` of P2PDMA pages), see
    :class:`P2pmemImport`."""

    kind = "p2pmem"

    def __init__(self, hr: HostRun, spec: BufferSpec, nvme: Any) -> None:
        super().__init__(hr, spec)
        from dmabuf.pci.p2pdma import pci_alloc_p2pmem

        self.nvme = nvme
        addr = pci_alloc_p2pmem(nvme.pdev, spec.size)
        if addr is None:
            raise DmaBufError(errno.ENOMEM, f"{nvme.name}: the CMB pool cannot supply "
                              f"{spec.size} bytes of p2pmem")
        self.addr = int(addr)

    def truth_ranges(self) -> np.ndarray:
        out = np.zeros(1, dtype=RANGE_DTYPE)
        out["addr"] = self.addr
        out["len"] = self.size
        return out

    def location(self) -> str:
        return "cmb"

    def read_back(self, offset: int, length: int) -> np.ndarray:
        return self.hr.phys.read(slice_ranges(self.truth_ranges(), offset, length))

    def release(self) -> None:
        from dmabuf.pci.p2pdma import pci_free_p2pmem

        pci_free_p2pmem(self.nvme.pdev, self.addr, self.size)


def make_export(hr: HostRun, spec: BufferSpec) -> Export:
    """The exporter adapter of a buffer spec (its device must be bound); a buffer imported
    through HMM is process memory (:class:`~dmabuf.sim.svm.SvmExport`), not a dma-buf.

    Raises: DmaBufError from the driver (ENOMEM…); KeyError for an exporter kind without one.
    """
    if any(i.mode == "hmm" for i in hr.host.imports if i.buffer == spec.name):
        from dmabuf.sim.svm import SvmExport

        return SvmExport(hr, spec, hr.devices[spec.exporter] if spec.exporter != "system"
                         else None)
    if spec.exporter == "system":
        return SystemExport(hr, spec)
    dev = hr.devices[spec.exporter]
    kind = hr.host.device(spec.exporter).kind
    if kind == "gpu":
        return GpuExport(hr, spec, dev)
    if kind == "accel":
        return AccelExport(hr, spec, dev)
    if kind == "vfio":
        return VfioExport(hr, spec, dev)
    if kind == "nvme":
        return CmbExport(hr, spec, dev)
    factory = hr.export_factories.get(kind)
    if factory is None:
        raise KeyError(kind)
    return factory(hr, spec, dev)


# ----------------------------------------------------------------------------------------------
# Importers
# ----------------------------------------------------------------------------------------------


@dataclass
class Mapping:
    """One mapping an importer holds: the exporter's result and what the runner derived."""

    table: Any
    dma: np.ndarray
    owners: frozenset[int]
    memory: str
    location: str
    map_type: str
    path_nodes: list[str]
    iommu: bool
    entries: int
    ranges: int
    repr_bytes: int
    repr_used: str = "sgtable"
    repr_note: str = ""
    inflight: int = 0


@dataclass
class ImportStats:
    """Counters of one import (what the report shows per attachment)."""

    maps: int = 0
    remaps: int = 0
    invalidations: int = 0
    faults: int = 0
    map_time: float = 0.0
    remap_time: float = 0.0
    invalidate_time: float = 0.0
    dmas: int = 0
    locations: list[str] = field(default_factory=list)


class Import:
    """A device attached to a buffer in a scenario mode — see the module docstring.

    Args:
        hr: the host run.
        spec: the import spec.
        export: the buffer's exporter adapter.
        dev: the importing device's driver.
    """

    def __init__(self, hr: HostRun, spec: ImportSpec, export: Export, dev: Device) -> None:
        self.hr = hr
        self.spec = spec
        self.export = export
        self.dev = dev
        self.name = f"{spec.buffer}@{spec.device}"
        self.mode = spec.mode
        self.stats = ImportStats()
        self.attach: DmaBufAttachment | None = None
        self.mapping: Mapping | None = None
        self.valid = False
        self.revoked = False
        self.pinned = False
        self.first: Mapping | None = None
        #: Mappings invalidated while DMA through them was in flight: unmapped once it retired.
        self.stale: list[Mapping] = []
        self.ops = DeviceFenceOps(dev.driver_name, f"{dev.name}.dmabuf-import")
        self.context = hr.machine.fence_context_alloc(1)
        self._seqno = 0
        self.direction = DmaDataDirection.BIDIRECTIONAL
        self.error: DmaBufError | None = None
        #: ``attach->peer2peer`` as the exporter left it (recorded at map time).
        self.peer2peer: bool | None = None
        #: The P2P decision, distance and PCI path at the first mapping.
        self.decision: dict[str, Any] | None = None
        #: Why the importer could not get the representation it asked for ("" when it did).
        self.repr_refused = ""

    # ------------------------------------------------------------------ representation
    def probe_pal(self) -> str:
        """Ask the exporter for a Physical Address List — ``dma_buf_mapping_attach()`` with
        ``DMA_BUF_IMAPPING_PAL()`` [proposed mapping-type RFC].

        The negotiation is switched on for the probe only
        (``machine.state(MappingTypeConfig).enabled``) and runs before any attachment exists:
        an exporter without a PAL offer fails the match (``EINVAL``) and nothing is created.

        Context: may block (takes the buffer's resv for the match).
        Returns: why the importer keeps the exporter's SgTable (the report's ``repr_note``).
        Raises: nothing (every outcome is a note).
        Kernel: RFC drivers/dma-buf/dma-buf.c, dma_buf_mapping_attach();
            drivers/dma-buf/dma-buf-mapping.c, dma_buf_match_mapping().
        """
        from dmabuf.buf.mapping_type import MappingTypeConfig, imapping_pal, mapping_attach

        dmabuf = self.export.dmabuf
        if dmabuf is None:
            return f"n/a: {self.export.kind} is not a dma-buf"
        cfg = self.hr.machine.state(MappingTypeConfig)
        prev = cfg.enabled
        cfg.enabled = True
        try:
            at = mapping_attach(dmabuf, [imapping_pal()])
        except DmaBufError as e:
            if e.errno == errno.EINVAL:
                return (f"n/a: exporter {dmabuf.exp_name} only returns SgTable (no Physical "
                        "Address List offer in the mapping-type negotiation)")
            return f"n/a: mapping-type negotiation with {dmabuf.exp_name} failed: {e}"
        finally:
            cfg.enabled = prev
        dmabuf.detach(at)
        return (f"n/a: exporter {dmabuf.exp_name} offers a Physical Address List, which the "
                f"{self.dev.driver_name} importer of the model does not negotiate")

    def repr_info(self, table: Any, dma: np.ndarray, iommu: bool = True
                  ) -> tuple[str, str, int, int]:
        """What the importer holds for ``table`` — no kernel symbol.

        Args: table: the exporter's map result (SgTable or PhysVec); dma: its DMA ranges;
            iommu: whether those addresses are translated by the IOMMU.
        Context: pure. Raises: nothing. Kernel: none.
        Returns: ``(repr used, note, bytes of the objects held, entries)``.
        """
        if isinstance(table, PhysVec):
            used, nbytes, entries = "physvec", table.nbytes, table.nr_ranges
        elif isinstance(table, SgTable):
            used, nbytes, entries = "sgtable", table.nbytes, int(table.nents)
        else:
            arr = np.asarray(table)
            used, nbytes, entries = "physvec", int(arr.nbytes), int(arr.size)
        note = ""
        if used != self.spec.repr:
            note = self.repr_refused or (f"n/a: exporter {self.export.kind} returned "
                                         f"{'an SgTable' if used == 'sgtable' else 'a PhysVec'}")
        return used, note, int(nbytes), int(entries)

    # ------------------------------------------------------------------ attach / map
    def do_attach(self) -> None:
        """Attach in the scenario's mode — ``dma_buf_attach()`` / ``dma_buf_dynamic_attach()``
        (+ ``dma_buf_pin()`` for ``pinned``).

        Context: may block; takes the buffer's resv for the pin.
        Returns: None.
        Raises: DmaBufError from the exporter's attach or pin (EOPNOTSUPP, ENODEV, EBUSY…).
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_dynamic_attach(), dma_buf_pin().
        """
        dmabuf = self.export.dmabuf
        assert dmabuf is not None
        dma = self.dev.dma
        if self.spec.repr != "sgtable":
            self.repr_refused = self.probe_pal()
        if self.mode == "static":
            self.attach = dmabuf.attach(dma)
        elif self.mode == "pinned":
            self.attach = dmabuf.dynamic_attach(dma, DmaBufAttachOps(allow_peer2peer=True),
                                                self)
            dmabuf.resv.lock(None)
            try:
                if dmabuf.is_dynamic:
                    self.attach.pin()
                    self.pinned = True
            finally:
                dmabuf.resv.unlock()
        elif self.mode in ("dynamic", "revocable"):
            self.attach = dmabuf.dynamic_attach(
                dma, DmaBufAttachOps(allow_peer2peer=True,
                                     invalidate_mappings=self._invalidate), self)
        else:  # pragma: no cover - the runner only builds supported modes
            raise DmaBufError(errno.EOPNOTSUPP, f"mode {self.mode} has no generic importer")
        self.hr.machine.trace.emit("scenario_attach", buffer=self.spec.buffer,
                                   device=self.spec.device, mode=self.mode)

    def _map_locked(self, *, remap: bool) -> None:
        """Map under the resv and derive everything the runner needs (path, cost, repr)."""
        assert self.attach is not None
        dmabuf = self.export.dmabuf
        assert dmabuf is not None
        table = self.attach.map(self.direction)
        # The exporter may have started a move to place the buffer for us (staging into GTT):
        # wait for its KERNEL fences before the first DMA, as ib_umem_dmabuf_map_pages does.
        dmabuf.resv.wait_timeout(DmaResvUsage.KERNEL, False, None)
        m = self.hr.describe_mapping(self, table)
        self.mapping = m
        self.valid = True
        cost = self.hr.map_cost(m, remap=remap)
        if remap:
            self.stats.remaps += 1
            self.stats.remap_time += cost
        else:
            self.stats.maps += 1
            self.stats.map_time += cost
        if not self.stats.locations or self.stats.locations[-1] != m.location:
            self.stats.locations.append(m.location)
        if self.first is None:
            self.first = m
        if cost > 0:
            self.hr.machine.sched.sleep(cost)

    def map_initial(self) -> None:
        """The first map — ``dma_buf_map_attachment()`` under the resv, then a wait for the
        exporter's KERNEL fences; charges the modelled mapping cost.

        Context: may block; takes the buffer's resv.
        Returns: None.
        Raises: DmaBufError from the exporter (EPERM for a refused P2P, EBUSY, ENODEV…).
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_map_attachment().
        """
        dmabuf = self.export.dmabuf
        assert dmabuf is not None
        dmabuf.resv.lock(None)
        try:
            self._map_locked(remap=False)
        finally:
            dmabuf.resv.unlock()

    def _unmap_locked(self, m: Mapping | None = None) -> None:
        if m is None:
            m = self.mapping
            self.mapping = None
            self.valid = False
        if m is not None and self.attach is not None:
            self.attach.unmap(m.table, self.direction)

    def _reap_locked(self) -> None:
        """Unmap invalidated mappings whose in-flight DMA has retired (resv held)."""
        keep = []
        for m in self.stale:
            if m.inflight:
                keep.append(m)
            else:
                self._unmap_locked(m)
        self.stale = keep

    def _invalidate(self, attach: DmaBufAttachment) -> None:
        """``invalidate_mappings`` (exporter's thread, resv held): stop issuing DMA through the
        mapping; unmap it now if no DMA through it is in flight, else once that DMA retired
        (its fence is in the resv, so the exporter waits for it before moving the pages)."""
        self.stats.invalidations += 1
        cost = self.hr.params.invalidate_cost(1)
        self.stats.invalidate_time += cost
        if self.mode == "revocable" and (self.pinned or self.export.revoked):
            self.revoked = True
        m = self.mapping
        self.mapping = None
        self.valid = False
        if m is not None:
            if m.inflight:
                self.stale.append(m)
            else:
                self._unmap_locked(m)
        self.hr.machine.trace.emit("scenario_invalidate", buffer=self.spec.buffer,
                                   device=self.spec.device)
        if cost > 0:
            self.hr.machine.sched.sleep(cost)

    # ------------------------------------------------------------------ DMA bracketing
    def begin(self, write: bool) -> tuple[Mapping, DmaFence]:
        """Prepare one DMA as an importer driver does before submitting it — no single kernel
        symbol: under the resv, unmap mappings whose DMA retired, remap after an
        invalidation (``dma_buf_map_attachment``), wait for KERNEL fences, and add this
        importer's fence with the access's usage (``dma_resv_add_fence``).

        Args: write: the DMA writes the buffer (usage WRITE, else READ).
        Context: may block; takes and releases the buffer's resv.
        Returns: the mapping to use and the fence to signal with :meth:`end`.
        Raises: DmaBufError(ENODEV) when revoked; the exporter's map errors.
        Kernel: drivers/dma-buf/dma-resv.c, dma_resv_add_fence(); dma-buf.c map.
        """
        dmabuf = self.export.dmabuf
        assert dmabuf is not None
        resv = dmabuf.resv
        resv.lock(None)
        try:
            self._reap_locked()
            if self.revoked or self.export.revoked:
                raise DmaBufError(errno.ENODEV, f"{self.name}: the buffer was revoked; DMA "
                                  "stopped")
            if not self.valid:
                self._map_locked(remap=True)
            else:
                resv.wait_timeout(DmaResvUsage.KERNEL, False, None)
            self._seqno += 1
            fence = DmaFence(self.ops, self.context, self._seqno, machine=self.hr.machine)
            resv.reserve_fences(1)
            resv.add_fence(fence, DmaResvUsage.WRITE if write else DmaResvUsage.READ)
            assert self.mapping is not None
            self.stats.dmas += 1
            self.mapping.inflight += 1
            return self.mapping, fence
        finally:
            resv.unlock()

    def end(self, mapping: Mapping, fence: DmaFence, error: int = 0) -> None:
        """The DMA through ``mapping`` finished — ``dma_fence_signal()`` of its fence (with
        ``dma_fence_set_error`` first when it failed), in a signalling section.

        Args: mapping: what :meth:`begin` returned; fence: its fence; error: ``-errno`` or 0.
        Context: never blocks on the resv. Returns: None. Raises: nothing.
        Kernel: drivers/dma-buf/dma-fence.c, dma_fence_signal().
        """
        mapping.inflight -= 1
        m = self.hr.machine
        cookie = dma_fence_begin_signalling(m)
        try:
            if error:
                fence.set_error(error)
            fence.signal()
        finally:
            dma_fence_end_signalling(cookie, m)
        fence.put()

    # ------------------------------------------------------------------ real bytes
    def dma_read(self, m: Mapping, offset: int, length: int) -> np.ndarray:
        """The device's DMA engine reads ``length`` bytes at ``offset`` through the mapping's
        DMA addresses (real bytes; page owners checked) — hardware, no kernel symbol.

        Returns: the bytes. Raises: IommuFault for an untranslated or stale address.
        Context: never blocks. Kernel: none.
        """
        return self.dev.engine.read(slice_ranges(m.dma, offset, length), owner=m.owners)

    def dma_write(self, m: Mapping, offset: int, data: np.ndarray) -> None:
        """The device's DMA engine writes ``data`` at ``offset`` through the mapping — as
        :meth:`dma_read`.

        Returns: None. Raises: IommuFault. Context: never blocks. Kernel: none.
        """
        self.dev.engine.write(slice_ranges(m.dma, offset, int(data.size)), data,
                              owner=m.owners)

    # ------------------------------------------------------------------ teardown
    def detach(self) -> None:
        """End of run: ``dma_buf_unmap_attachment()``, ``dma_buf_unpin()``,
        ``dma_buf_detach()``.

        Context: may block; takes the buffer's resv. Returns: None.
        Raises: DmaBufError from the exporter (the caller reports it).
        Kernel: drivers/dma-buf/dma-buf.c.
        """
        dmabuf = self.export.dmabuf
        if self.attach is None or dmabuf is None or dmabuf.released:
            return
        dmabuf.resv.lock(None)
        try:
            self._reap_locked()
            if self.mapping is not None:
                self._unmap_locked()
            if self.pinned:
                self.attach.unpin()
                self.pinned = False
        finally:
            dmabuf.resv.unlock()
        dmabuf.detach(self.attach)
        self.attach = None


class MrImport(Import):
    """An RDMA NIC importing a buffer as a dma-buf memory region (its own driver's path).

    ``pinned`` → :attr:`MrKind.PINNED`, ``dynamic`` → ``DYNAMIC`` (mapped at registration,
    ZAPped on invalidation, re-faulted by the HCA), ``odp`` → ``ODP`` (nothing mapped until the
    first access faults it in), ``revocable`` → ``PINNED_REVOCABLE``. The HCA moves the bytes
    (:meth:`RdmaNic.hca`); invalidation, ZAP and page faults are the driver's — the runner
    reads its counters and charges their modelled cost.
    """

    KINDS: ClassVar[dict[str, str]] = {"pinned": "pinned", "dynamic": "dynamic",
                                       "odp": "odp", "revocable": "pinned_revocable"}

    def __init__(self, hr: HostRun, spec: ImportSpec, export: Export, dev: Device) -> None:
        super().__init__(hr, spec, export, dev)
        self.mr: Any = None
        self._seen_maps = -1
        self._faults_charged = 0

    def do_attach(self) -> None:
        from dmabuf.devices.rdma.ib_verbs import IbAccess
        from dmabuf.devices.rdma.mr import mlx5_ib_reg_user_mr_dmabuf

        dmabuf = self.export.dmabuf
        assert dmabuf is not None
        if self.spec.repr != "sgtable":
            self.repr_refused = self.probe_pal()
        pd = self.hr.nic_pd(self.dev)
        access = int(IbAccess.LOCAL_WRITE | IbAccess.REMOTE_WRITE | IbAccess.REMOTE_READ)
        self.mr = mlx5_ib_reg_user_mr_dmabuf(pd, 0, self.export.size, 0, dmabuf, access,
                                            self.KINDS[self.mode])
        self.attach = self.mr.umem.attach
        self.pinned = self.mode in ("pinned", "revocable")

    def map_initial(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Describe the MR's current mapping when it changed (a fault remapped it)."""
        u = self.mr.umem
        if u.sgt is None or u.maps == self._seen_maps:
            self.valid = u.sgt is not None
            return
        first = self._seen_maps < 0 and self.first is None
        self._seen_maps = u.maps
        m = self.hr.describe_mapping(self, u.sgt)
        self.mapping = m
        self.valid = True
        if not self.stats.locations or self.stats.locations[-1] != m.location:
            self.stats.locations.append(m.location)
        if self.first is None:
            self.first = m
        cost = self.hr.map_cost(m, remap=not first)
        if first and self.stats.maps == 0:
            self.stats.maps += 1
            self.stats.map_time += cost
        else:
            self.stats.remaps += 1
            self.stats.remap_time += cost
        if cost > 0:
            self.hr.machine.sched.sleep(cost)

    def repr_info(self, table: Any, dma: np.ndarray, iommu: bool = True
                  ) -> tuple[str, str, int, int]:
        """As :meth:`Import.repr_info`; an MR holds the exporter's table and the umem's window
        of it (``ib_umem_dmabuf_map_pages``), both counted."""
        used, note, nbytes, entries = super().repr_info(table, dma, iommu)
        window = getattr(self.mr.umem, "dma", None) if self.mr is not None else None
        if isinstance(window, np.ndarray):
            nbytes += int(window.nbytes)
        return used, note, nbytes, entries

    def sync_stats(self) -> float:
        """Copy the driver's counters; return the modelled seconds of new page faults."""
        mr = self.mr
        p = self.hr.params
        new_inv = int(mr.invalidations) - self.stats.invalidations
        self.stats.invalidations = int(mr.invalidations)
        inv_cost = p.invalidate_cost(new_inv) if new_inv > 0 else 0.0
        self.stats.invalidate_time += inv_cost
        new = int(mr.faults) - self._faults_charged
        self._faults_charged = int(mr.faults)
        self.stats.faults = int(mr.faults)
        self.revoked = bool(mr.umem.revoked)
        return (p.odp_fault_cost(new) if new > 0 else 0.0) + inv_cost

    def detach(self) -> None:
        from dmabuf.devices.rdma.mr import mlx5_ib_dereg_mr

        if self.mr is not None and not self.mr.deregistered:
            mlx5_ib_dereg_mr(self.mr)
        self.attach = None


class P2pmemImport(Import):
    """A device's in-kernel DMA mapping of p2pmem — ``pci_p2pdma_map_sg()`` through
    ``dma_map_sgtable`` (nvmet-rdma maps its P2P staging SGL for the RDMA device so). The
    mapping is static: p2pmem never moves.

    The importer holds the physical ranges (``pci_alloc_p2pmem``), so it can keep any
    representation: ``sgtable`` (``sg_alloc_table`` + ``dma_map_sgtable``), ``physvec`` (one
    ``dma_map_phys`` per range: a ``phys_vec`` of DMA addresses) or ``iova`` (one IOVA range:
    ``dma_iova_try_alloc`` + ``dma_iova_link`` with ``DMA_ATTR_MMIO`` + ``dma_iova_sync``) —
    except that a ``BUS_ADDR`` peer has no IOVA (its bus addresses bypass the IOMMU) and a device
    without a DMA-API IOMMU cannot allocate one; it then keeps a PhysVec and says why.
    """

    def __init__(self, hr: HostRun, spec: ImportSpec, export: Export, dev: Device) -> None:
        super().__init__(hr, spec, export, dev)
        self.held: Any = None
        self.dma_map: Any = None
        self.iova_state: Any = None
        self.iova_len = 0
        self.iova_attrs = 0

    def do_attach(self) -> None:
        self.pinned = True

    def _map_iova(self, phys: np.ndarray) -> np.ndarray | None:
        """Link the ranges into one IOVA range, or None (and why in ``repr_refused``)."""
        from dmabuf.dma.defs import DMA_ATTR_MMIO
        from dmabuf.dma.dma_iommu import (
            DmaIovaState,
            dma_iova_link,
            dma_iova_sync,
            dma_iova_try_alloc,
        )
        from dmabuf.dma.fabric import PciP2pdmaMapType
        from dmabuf.dma.pci_p2pdma import pci_p2pdma_state

        dev = self.dev.dma
        st = pci_p2pdma_state(dev, int(phys["addr"][0]))
        if st.map is PciP2pdmaMapType.BUS_ADDR:
            self.repr_refused = ("n/a: BUS_ADDR P2P uses PCI bus addresses, which bypass the "
                                 "IOMMU: there is no IOVA to link")
            return None
        total = _ranges_len(phys)
        state = DmaIovaState()
        if not dma_iova_try_alloc(dev, state, 0, total):
            self.repr_refused = (f"n/a: {self.dev.name} is not behind a DMA-API IOMMU "
                                 "(dma_iova_try_alloc fails: dma_map_phys per range)")
            return None
        attrs = DMA_ATTR_MMIO if st.map is PciP2pdmaMapType.THRU_HOST_BRIDGE else 0
        off = 0
        for a, n in zip(phys["addr"].tolist(), phys["len"].tolist(), strict=True):
            dma_iova_link(dev, state, int(a), off, int(n), DmaDataDirection.BIDIRECTIONAL,
                          attrs)
            off += int(n)
        dma_iova_sync(dev, state, 0, total)
        self.iova_state, self.iova_len, self.iova_attrs = state, total, attrs
        out = np.zeros(1, dtype=RANGE_DTYPE)
        out["addr"] = state.addr
        out["len"] = total
        return out

    def map_initial(self) -> None:
        """Map the p2pmem for the device in the requested representation (see the class).

        Context: never blocks except for the modelled mapping cost.
        Raises: DmaBufError(EREMOTEIO) when the fabric refuses the P2P path; mapping errors.
        Kernel: drivers/pci/p2pdma.c (pci_p2pdma_map_sg via dma_map_sgtable);
            drivers/iommu/dma-iommu.c (dma_iova_try_alloc, dma_iova_link, dma_iova_sync).
        """
        from dmabuf.dma.mapping import dma_map_phys_ranges

        phys = self.export.truth_ranges()
        rep = self.spec.repr
        dma: np.ndarray | None = None
        if rep == "sgtable":
            sgt = SgTable.from_ranges(phys)
            sgt.map(self.dev.dma, DmaDataDirection.BIDIRECTIONAL)
            self.held = sgt
            dma = sgt.dma_ranges()
        elif rep == "iova":
            dma = self._map_iova(phys)
            if dma is not None:
                self.held = dma
        if dma is None:
            self.dma_map = dma_map_phys_ranges(self.dev.dma, phys,
                                               DmaDataDirection.BIDIRECTIONAL)
            self.held = PhysVec(self.dma_map.dma)
            dma = np.asarray(self.dma_map.dma)
        m = self.hr.describe_mapping(self, self.held)
        self.mapping = self.first = m
        self.valid = True
        self.stats.maps += 1
        self.stats.locations.append(m.location)
        cost = self.hr.map_cost(m, remap=False)
        self.stats.map_time += cost
        if cost > 0:
            self.hr.machine.sched.sleep(cost)

    def repr_info(self, table: Any, dma: np.ndarray, iommu: bool = True
                  ) -> tuple[str, str, int, int]:
        if self.iova_state is not None:
            used, nbytes, entries = "iova", int(np.asarray(table).nbytes), 1
        elif isinstance(table, SgTable):
            used, nbytes, entries = "sgtable", table.nbytes, int(table.nents)
        else:
            pv = table if isinstance(table, PhysVec) else PhysVec(table)
            used, nbytes, entries = "physvec", pv.nbytes, pv.nr_ranges
        note = self.repr_refused if used != self.spec.repr else ""
        return used, note, int(nbytes), int(entries)

    def detach(self) -> None:
        from dmabuf.dma.dma_iommu import dma_iova_destroy
        from dmabuf.dma.mapping import dma_unmap_phys_ranges

        if self.dma_map is not None:
            dma_unmap_phys_ranges(self.dev.dma, self.dma_map)
            self.dma_map = None
        if self.iova_state is not None:
            dma_iova_destroy(self.dev.dma, self.iova_state, self.iova_len,
                             DmaDataDirection.BIDIRECTIONAL, self.iova_attrs)
            self.iova_state = None
        if isinstance(self.held, SgTable):
            self.held.unmap()
            self.held.free()
        self.held = None


def region_node_map(hr: HostRun) -> Callable[[int], tuple[str, str]]:
    """A function: physical address -> (fabric memory node, location label)."""
    phys = hr.phys
    pf = hr.pf
    by_region: dict[str, tuple[str, str]] = {}
    names = {d.name: d for d in hr.devices.values() if d is not None}
    for r in phys.regions:
        node: str | None = None
        label = r.kind.value if hasattr(r.kind, "value") else str(r.kind)
        if r.kind is MemKind.RAM:
            node = pf.ram(r.numa_node)
            label = "ram"
        elif " BAR" in r.name:
            bdf = r.name.split(" BAR", 1)[0]
            node = pf.mem_of.get(bdf)
            label = "bar"
        elif r.name.endswith(" devmem"):          # an SVM device's DEVICE_PRIVATE pool
            node = pf.mem_of.get(r.name[:-len(" devmem")])
            label = "vram"
        else:
            for n, d in names.items():
                if r.name == n or r.name.startswith(n + "."):
                    node = pf.mem_of.get(d.bdf)
                    label = r.name[len(n) + 1:] or "device"
                    break
        if node is not None:
            by_region[r.name] = (node, label)

    def lookup(paddr: int) -> tuple[str, str]:
        reg = phys.region_at(paddr)
        return by_region.get(reg.name, (pf.ram(None), reg.name))

    return lookup


__all__ += ["CmbExport", "ImportStats", "Mapping", "MrImport", "P2pmemImport", "VfioExport",
            "region_node_map"]
