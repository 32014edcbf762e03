"""drivers/gpu/drm/amd/amdgpu/amdgpu_dma_buf.c + TTM (drivers/gpu/drm/ttm): a GPU exporter.

:class:`Gpu` is an amdgpu-like driver: VRAM and GTT buffer objects (:class:`GpuBo`) with their
own reservation objects, TTM-style placement, LRU eviction and moves done by the GPU's own copy
engine, and a **dynamic** dma-buf exporter (``amdgpu_dmabuf_ops``: attach, pin/unpin, map/unmap,
release, begin_cpu_access, mmap, vmap/vunmap).

**Memory model — VRAM, the BAR window, GTT.** VRAM is device memory (``MemKind.DEVICE``
regions of the platform's :class:`~dmabuf.mm.phys.PhysMemory`, sparse: a 16 GiB VRAM costs
nothing until touched). Only its first ``visible_vram_size`` bytes are reachable over PCIe: the
GPU's VRAM BAR (by default its largest prefetchable memory BAR) decodes ``bar.start + offset`` to
VRAM offset ``offset`` — amdgpu's ``adev->gmc.aper_base + vram offset``. The model makes that
decode real by giving the visible VRAM region the *same bytes and page-owner table* as the first
``visible_vram_size`` bytes of the BAR's MMIO region (numpy views of one backing), so a peer's
DMA to a BAR address reads and writes exactly the VRAM bytes the GPU sees, and a freed (poisoned)
VRAM page is poisoned through the BAR too. VRAM beyond the window is a second region no bus
address reaches (``"<gpu>.vram.invisible"``); BAR space beyond the VRAM decodes to nothing (its
pages have no owner: a DMA there with an owner check faults). GTT is system RAM of the GPU's NUMA
node, allocated in extents of at most ``gtt_extent`` bytes (TTM pool pages up to 2 MiB) and
DMA-mapped for the GPU itself (``ttm_tt`` ``dma_address``, through its IOMMU domain); the GPU's
engines reach GTT through that mapping and VRAM directly.

**Placement (TTM).** A BO has ``preferred_domains`` and ``allowed_domains`` (amdgpu adds GTT to a
VRAM-only BO), a ``mem_type`` (``TTM_PL_VRAM`` / ``TTM_PL_TT``) and a ``pin_count``.
``_validate(bo, domains)`` keeps the BO where it is when that is compatible with ``domains``
(as ``ttm_bo_validate`` does), otherwise moves it to the first domain that can be allocated —
VRAM (evicting others if needed, CPU-visible part only when ``cpu_access_required``), then GTT.

**Moves (ttm_bo_handle_move_mem + amdgpu_bo_move).** A move of a BO (resv held): allocate the
new pages; ``amdgpu_bo_move_notify`` — if the BO is exported, ``dma_buf_invalidate_mappings``;
submit a copy job on the GPU's ``sdma`` ring that depends on every fence of the BO's resv
(BOOKKEEP) and copies the bytes old → new with the GPU's engine (ownership checked on both
sides); add the job's fence to the resv as ``DMA_RESV_USAGE_KERNEL``; switch the BO to the new
pages at once (pipelined, like TTM's ghost objects): the old pages are freed — and poisoned, so a
stale importer DMA faults — by the copy job itself when it completes. Importers remapping after
the invalidation get the new placement and must wait for the KERNEL fences before DMA (the core
does it for static importers).

**Eviction.** :meth:`Gpu.alloc_bo` (and any move into VRAM) that finds VRAM full evicts least
recently used VRAM BOs to GTT: pinned BOs and BOs whose resv cannot be trylocked are skipped
(TTM's LRU walk); when nothing can be evicted the allocation fails with ``ENOMEM``. An eviction
(``_evict_locked``, also :meth:`Gpu.evict` / :meth:`Gpu.evict_vram`) runs under the victim's
resv lock: ``dma_buf_invalidate_mappings``, a wait for all BOOKKEEP fences (in-flight importer
and GPU work retire), the move to GTT, and a wait for the move fence, so the VRAM pages are free
(and poisoned) when it returns.

**Exporter ops** follow amdgpu (spec p2p §4.1): ``attach`` clears ``attach.peer2peer`` when
``pci_p2pdma_distance(gpu, importer) < 0``; ``pin`` drops VRAM from the domains if any attachment
cannot do P2P and pins (moving if needed); ``map_dma_buf`` of an unpinned BO validates it into
GTT, or VRAM|GTT with CPU access required when the attachment can do P2P and VRAM is preferred —
this is where a BO migrates to GTT for a non-P2P importer (the staging fallback) — then returns,
for VRAM, ``dma_buf_phys_vec_to_sgt`` of the BAR ranges (bus addresses for ``BUS_ADDR``, IOVA or
CPU physical addresses for ``THRU_HOST_BRIDGE``) and, for GTT, the pages as an sg_table mapped for
the importer (``dma_map_sgtable``; ``-EBUSY`` on failure, as amdgpu). ``begin_cpu_access`` for
reads moves an unpinned BO to GTT; ``mmap`` and ``vmap`` give a :class:`GpuBoMapping` that
resolves the BO's current CPU-visible pages on every access (TTM's fault handler: a move zaps the
mapping and the next access re-faults at the new place).

**GPU work.** :meth:`Gpu.fill`, :meth:`Gpu.write`, :meth:`Gpu.read`, :meth:`Gpu.copy`,
:meth:`Gpu.checksum` and :meth:`Gpu.compute` are command submissions (``amdgpu_cs``): lock the
BOs' resvs (ww acquire context with back-off), take the implicit-sync fences as dependencies
(``dma_resv_usage_rw``), queue the job on the ``gfx`` (or ``sdma``) ring, add its fence to every
resv (WRITE or READ; BOOKKEEP with ``implicit_sync=False``), unlock. The body runs later on the
GPU worker and touches the placement captured at submission (a move of the BO waits for the job's
fence first).

Locking: the VRAM manager lock (``Gpu._mm_lock``, a scheduler lock) protects the LRU, the GTT
accounting and BO lists; it is never held while waiting, moving or locking a resv (order: resv →
mm lock). Eviction victims are trylocked, so two threads making room cannot deadlock.

Kernel: drivers/gpu/drm/amd/amdgpu/amdgpu_dma_buf.c (amdgpu_dma_buf_attach, _pin, _unpin, _map,
_unmap, _begin_cpu_access, _vmap, amdgpu_gem_prime_export), amdgpu_object.c (amdgpu_bo_create,
amdgpu_bo_pin, amdgpu_bo_move_notify, amdgpu_bo_validate_size), amdgpu_vram_mgr.c
(amdgpu_vram_mgr_alloc_sgt), amdgpu_ttm.c (amdgpu_bo_move, amdgpu_move_blit),
drivers/gpu/drm/ttm/ttm_bo.c (ttm_bo_validate, ttm_bo_evict, ttm_bo_handle_move_mem).
"""

from __future__ import annotations

import enum
import errno
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.buf.device import DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufExportInfo,
    DmaBufOps,
    MapResult,
    Vma,
    dma_buf_export,
)
from dmabuf.buf.file import O_RDWR
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import SgTable
from dmabuf.devices.base import Device
from dmabuf.dma.defs import DmaDataDirection as DmaDirection
from dmabuf.dma.device import DmaDevice
from dmabuf.dma.dma_buf_mapping import dma_buf_free_sgt, dma_buf_phys_vec_to_sgt
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault, WouldDeadlock
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE, MemKind, PhysRegion
from dmabuf.mm.ranges import as_ranges, empty_ranges, slice_ranges
from dmabuf.pci import p2pdma
from dmabuf.pci.topology import PciDev
from dmabuf.sync.dma_fence import DmaFence
from dmabuf.sync.dma_resv import DmaResv, DmaResvUsage, reservation_ww_class, usage_rw
from dmabuf.sync.ww_mutex import WwAcquireCtx

if TYPE_CHECKING:
    from dmabuf.devices.platform import Platform

__all__ = ["AmdgpuDomain", "Gpu", "GpuBo", "GpuBoMapping", "GpuDmaBufOps", "TtmPl"]

_GIB = 1 << 30
_MIB = 1 << 20


class AmdgpuDomain(enum.IntFlag):
    """GEM domains — ``AMDGPU_GEM_DOMAIN_*`` (include/uapi/drm/amdgpu_drm.h)."""

    CPU = 0x1
    GTT = 0x2
    VRAM = 0x4


class TtmPl(enum.IntEnum):
    """Memory types — ``TTM_PL_SYSTEM`` / ``TTM_PL_TT`` / ``TTM_PL_VRAM`` (drm/ttm/ttm_placement.h).

    The model's BOs are always in TT (GTT pages) or VRAM; SYSTEM (unpopulated / swapped) is not
    modelled.
    """

    SYSTEM = 0
    TT = 1
    VRAM = 2


_ids = itertools.count(1)


@dataclass(frozen=True)
class _Placement:
    """Where a BO's bytes are, as a job sees it: memory type, page extents, GPU DMA addresses."""

    mem_type: TtmPl
    pages: np.ndarray          # physical extents, buffer order
    gpu_dma: np.ndarray | None  # GTT only: the GPU's own DMA addresses of the pages
    owner: int


class GpuBo:
    """A buffer object — ``struct amdgpu_bo`` / ``ttm_buffer_object``. Made by :meth:`Gpu.alloc_bo`.

    Attributes:
        gpu: the owning :class:`Gpu`.
        id / name: identity (``name`` shows up in fault messages as the page owner).
        size: bytes (a multiple of ``PAGE_SIZE``).
        resv: its own :class:`~dmabuf.sync.dma_resv.DmaResv` (shared with the dma-buf).
        owner: the PhysMemory owner id of its pages (kept across moves: a DMA through a stale
            mapping reaches pages that are free or someone else's and faults).
        preferred_domains / allowed_domains: :class:`AmdgpuDomain` masks.
        cpu_access_required: ``AMDGPU_GEM_CREATE_CPU_ACCESS_REQUIRED``: VRAM placements must be
            in the CPU/peer-visible window.
        mem_type: current :class:`TtmPl` (VRAM or TT).
        pin_count: ``tbo.pin_count``; a pinned BO never moves.
        moves: number of moves so far (statistics).
        dmabuf: the exported :class:`~dmabuf.buf.dma_buf.DmaBuf`, or None.

    Locking: placement fields change only under ``resv`` (the GPU's jobs read a snapshot).
    """

    def __init__(self, gpu: Gpu, size: int, name: str | None, preferred: AmdgpuDomain,
                 allowed: AmdgpuDomain, cpu_access_required: bool) -> None:
        self.gpu = gpu
        self.id = next(_ids)
        self.name = name or f"bo{self.id}"
        self.size = size
        self.resv = DmaResv(machine=gpu.machine)
        self.owner = gpu.phys.new_owner(f"{gpu.name} bo {self.name}")
        self.preferred_domains = preferred
        self.allowed_domains = allowed
        self.cpu_access_required = cpu_access_required
        self.mem_type = TtmPl.SYSTEM
        self.pages: np.ndarray = empty_ranges()
        self.gpu_dma: np.ndarray | None = None
        self.pin_count = 0
        self.moves = 0
        self.dmabuf: DmaBuf | None = None
        self._refcount = 1
        self._freed = False

    def __repr__(self) -> str:
        return (f"<GpuBo {self.name} {self.size:#x} {self.mem_type.name}"
                f"{' pinned' if self.pin_count else ''}{' freed' if self._freed else ''}>")

    # ------------------------------------------------------------------ views
    @property
    def freed(self) -> bool:
        """True once the last reference is gone and the pages were freed."""
        return self._freed

    @property
    def in_vram(self) -> bool:
        """``mem_type == TTM_PL_VRAM``."""
        return self.mem_type is TtmPl.VRAM

    @property
    def visible(self) -> bool:
        """True when every page is reachable through the BAR (``amdgpu_bo_in_cpu_visible_vram``)."""
        return self.in_vram and self.gpu._all_visible(self.pages)

    def bar_ranges(self) -> np.ndarray:
        """CPU physical (BAR) addresses of the BO's VRAM pages — ``aper_base + vram offset``.

        Raises: DmaBufError(EINVAL): not in VRAM, or not entirely in the visible window.

        Kernel: drivers/gpu/drm/amd/amdgpu/amdgpu_vram_mgr.c, amdgpu_vram_mgr_alloc_sgt() (aper_base
        + VRAM offset).
        """
        if not self.in_vram:
            raise DmaBufError(errno.EINVAL, f"{self!r} is not in VRAM")
        return self.gpu._to_bar(self.pages)

    def cpu_ranges(self) -> np.ndarray:
        """The CPU physical ranges the BO's bytes are reachable at (GTT pages or BAR window).

        Raises: DmaBufError(EINVAL): in invisible VRAM (fault it in with a CPU mapping first).

        Model-only: where the BO's bytes live in the model's physical memory (GTT pages or the BAR
        window).
        """
        if self.mem_type is TtmPl.TT:
            return self.pages.copy()
        return self.bar_ranges()

    def placement(self) -> _Placement:
        """Snapshot of the current placement (for a job queued now).

        Kernel: include/drm/ttm/ttm_bo.h, ttm_buffer_object.resource (mem_type and start).
        """
        return _Placement(self.mem_type, self.pages,
                          None if self.gpu_dma is None else self.gpu_dma, self.owner)

    # ------------------------------------------------------------------ lifetime
    def get(self) -> GpuBo:
        """Take a reference — ``drm_gem_object_get()``.

        Kernel: include/drm/drm_gem.h, drm_gem_object_get().
        """
        self._check_alive("get")
        self._refcount += 1
        return self

    def put(self) -> None:
        """Drop a reference — ``drm_gem_object_put()``; the last one frees the BO.

        Freeing waits for every fence of the resv (TTM's delayed destroy), then frees (and
        poisons) the pages. Context: may block; must not hold the resv.

        Kernel: include/drm/drm_gem.h, drm_gem_object_put().
        """
        self._check_alive("put")
        self._refcount -= 1
        if self._refcount == 0:
            self.gpu._destroy(self)

    @property
    def refcount(self) -> int:
        """References held (the allocation's, the dma-buf's, users' ``get``)."""
        return self._refcount

    def _check_alive(self, what: str) -> None:
        if self._freed:
            raise ContractViolation("amdgpu_bo", f"{what} on freed {self!r} (use after free)")

    def describe(self) -> dict[str, Any]:
        """Snapshot: size, placement, domains, pins, moves, export state.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"name": self.name, "size": self.size, "mem_type": self.mem_type.name,
                "visible": self.visible if self.in_vram else None,
                "preferred": self.preferred_domains.name, "allowed": self.allowed_domains.name,
                "cpu_access_required": self.cpu_access_required, "pin_count": self.pin_count,
                "moves": self.moves, "exported": self.dmabuf is not None,
                "extents": int(self.pages.size), "freed": self._freed}


class GpuBoMapping:
    """A CPU mapping of (part of) a BO — the ``mmap``/``vmap`` view, faulting like TTM.

    Every access resolves the BO's *current* CPU-visible pages (GTT pages or the BAR window), so
    a move in between is seen as a re-fault at the new place, as with ``ttm_bo_vm_fault``. An
    access while the BO sits in invisible VRAM moves it (to visible VRAM without evicting, else
    GTT — ``amdgpu_bo_fault_reserve_notify``) and waits for the move, under the BO's resv lock.

    Args:
        bo: the BO. offset / length: the window (page-aligned offset).

    Raises (on access): DmaBufError(EFAULT): the BO was freed (SIGBUS); EINVAL: out of range.
    """

    def __init__(self, bo: GpuBo, offset: int = 0, length: int | None = None) -> None:
        if length is None:
            length = bo.size - offset
        if offset < 0 or length < 0 or offset + length > bo.size:
            raise DmaBufError(errno.EINVAL, f"mapping [{offset}, {offset + length}) outside the "
                              f"{bo.size}-byte BO")
        self.bo = bo
        self.offset = offset
        self.length = length
        self.faults = 0

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<GpuBoMapping {self.bo.name} +{self.offset:#x} {self.length:#x}>"

    def _ranges(self, offset: int, length: int) -> np.ndarray:
        bo = self.bo
        if bo.freed:
            raise DmaBufError(errno.EFAULT, f"CPU access to freed {bo!r} (SIGBUS)")
        if offset < 0 or length < 0 or offset + length > self.length:
            raise DmaBufError(errno.EINVAL, f"access [{offset}, {offset + length}) outside the "
                              f"{self.length}-byte mapping")
        bo.resv.lock(None)
        try:
            if bo.in_vram and not bo.visible:
                self.faults += 1
                bo.gpu._cpu_fault_locked(bo)
            # ttm_bo_vm_fault_idle(): wait for the KERNEL fences (pending moves)
            bo.resv.wait_timeout(DmaResvUsage.KERNEL, False, None)
            cpu = bo.cpu_ranges()
        finally:
            bo.resv.unlock()
        return slice_ranges(cpu, self.offset + offset, length)

    def read(self, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Copy ``length`` bytes at ``offset`` out of the mapping (a CPU load).

        Model-only: CPU load through the model's BO mapping object.
        """
        if length is None:
            length = self.length - offset
        return self.bo.gpu.phys.read(self._ranges(offset, length))

    def write(self, offset: int, data: Any) -> None:
        """Store ``data`` at ``offset`` (a CPU store).

        Model-only: CPU store through the model's BO mapping object.
        """
        arr = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) \
            if not isinstance(data, np.ndarray) else np.ascontiguousarray(data).view(np.uint8)
        self.bo.gpu.phys.write(self._ranges(offset, int(arr.size)), arr)

    def tobytes(self) -> bytes:
        """The whole window as bytes.

        Model-only: CPU load of the whole model BO mapping object.
        """
        return bytes(self.read())


class GpuDmaBufOps(DmaBufOps):
    """``amdgpu_dmabuf_ops`` — the GPU's dma-buf exporter callbacks (see the module docstring).

    ``dmabuf.priv`` is the :class:`GpuBo`. Kernel: amdgpu_dma_buf.c.
    """

    def attach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        """``amdgpu_dma_buf_attach``: clear ``peer2peer`` if the importer cannot reach the GPU.

        ``pci_p2pdma_distance(adev->pdev, attach->dev, false) < 0`` → no P2P; a non-PCI importer
        (not in the topology) counts as unreachable. Never fails: the fallback is GTT.
        Context: unlocked. Kernel: amdgpu_dma_buf.c, amdgpu_dma_buf_attach().
        """
        bo: GpuBo = dmabuf.priv
        gpu = bo.gpu
        if attach.peer2peer:
            dist = p2pdma.pci_p2pdma_distance(gpu.pdev, attach.dev.name, verbose=False)
            if dist < 0:
                attach.peer2peer = False
        gpu.machine.trace.emit("amdgpu_dma_buf_attach", bo=bo.name, dev=attach.dev.name,
                               peer2peer=attach.peer2peer)

    def pin(self, attach: DmaBufAttachment) -> None:
        """``amdgpu_dma_buf_pin``: pin into VRAM only if every attachment can do P2P.

        domains = allowed; drop VRAM if any attachment has ``peer2peer == False``; if VRAM
        remains, require CPU access (visible window); WARN + ``-EINVAL`` if nothing remains;
        ``amdgpu_bo_pin`` (may move). Context: resv held.
        Raises: DmaBufError(EINVAL/ENOMEM). Kernel: amdgpu_dma_buf_pin().
        """
        bo: GpuBo = attach.dmabuf.priv
        domains = bo.allowed_domains
        if any(not a.peer2peer for a in attach.dmabuf.attachments):
            domains &= ~AmdgpuDomain.VRAM
        if domains & AmdgpuDomain.VRAM:
            bo.cpu_access_required = True
        if not domains & (AmdgpuDomain.VRAM | AmdgpuDomain.GTT):
            bo.gpu.machine.warn("amdgpu_dma_buf_pin", f"{bo!r}: no domain left to pin into")
            raise DmaBufError(errno.EINVAL, f"amdgpu_dma_buf_pin: {bo.name} has no allowed "
                              "domain an importer could reach")
        bo.gpu._pin_locked(bo, domains)

    def unpin(self, attach: DmaBufAttachment) -> None:
        """``amdgpu_dma_buf_unpin`` → ``amdgpu_bo_unpin``. Context: resv held."""
        bo: GpuBo = attach.dmabuf.priv
        bo.gpu._unpin_locked(bo)

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> MapResult:
        """``amdgpu_dma_buf_map``: place (maybe migrate), then map for ``attach.dev``.

        Unpinned: domains = GTT, plus VRAM (visible) if VRAM is preferred and the attachment
        can do P2P; ``ttm_bo_validate`` keeps a compatible placement, else moves (a VRAM BO moves
        to GTT for a non-P2P importer). VRAM: ``dma_buf_phys_vec_to_sgt`` of the BAR ranges
        (BUS_ADDR bus addresses, IOVA or CPU physical). GTT: the pages mapped with
        ``dma_map_sgtable`` for the importer.
        Context: resv held. Returns: a DMA-mapped SgTable.
        Raises: DmaBufError(EBUSY): the importer cannot map the GTT pages; (EINVAL): pinned in
            VRAM outside the window, or a VRAM mapping for an importer that cannot reach the BAR;
            (ENOMEM): no memory to migrate into.
        Kernel: amdgpu_dma_buf.c, amdgpu_dma_buf_map(); amdgpu_vram_mgr.c,
            amdgpu_vram_mgr_alloc_sgt(); drivers/dma-buf/dma-buf-mapping.c.
        """
        bo: GpuBo = attach.dmabuf.priv
        gpu = bo.gpu
        bo._check_alive("map_dma_buf")
        if not bo.pin_count:
            domains = AmdgpuDomain.GTT
            if bo.preferred_domains & AmdgpuDomain.VRAM and attach.peer2peer:
                domains |= AmdgpuDomain.VRAM
                bo.cpu_access_required = True
            gpu._validate_locked(bo, domains, wait=False)
        gpu._lru_touch(bo)
        if bo.in_vram:
            if not bo.visible:
                raise DmaBufError(errno.EINVAL, f"{bo.name} is pinned in VRAM outside the "
                                  "CPU/peer-visible window; it cannot be mapped over PCIe")
            dev = attach.dev
            if not isinstance(dev, DmaDevice):
                raise DmaBufError(errno.EINVAL, f"{dev.name} is not a PCI device of the fabric: "
                                  "it cannot map VRAM through the BAR")
            phys = PhysVec(bo.bar_ranges())
            sgt = dma_buf_phys_vec_to_sgt(dev, gpu.bdf, phys, bo.size, DmaDirection(int(direction)))
        else:
            sgt = SgTable.from_pages(bo.pages)
            try:
                sgt.map_or_free(attach.dev, direction)
            except DmaBufError as e:
                raise DmaBufError(errno.EBUSY, f"amdgpu_dma_buf_map: dma_map_sgtable for "
                                  f"{attach.dev.name} failed: {e}") from e
        gpu.machine.trace.emit("amdgpu_dma_buf_map", bo=bo.name, dev=attach.dev.name,
                               mem_type=bo.mem_type.name, peer2peer=attach.peer2peer)
        return sgt

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: MapResult,
                      direction: DmaDataDirection) -> None:
        """``amdgpu_dma_buf_unmap``: ``dma_unmap_sgtable`` + free (GTT) or
        ``amdgpu_vram_mgr_free_sgt`` (VRAM: ``dma_buf_free_sgt``). Context: resv held."""
        if not isinstance(table, SgTable):
            raise ContractViolation("amdgpu_dma_buf_unmap", "not a table amdgpu handed out")
        if table.is_dma_only:
            dev = attach.dev
            assert isinstance(dev, DmaDevice)
            dma_buf_free_sgt(dev, table, DmaDirection(int(direction)))
        else:
            table.unmap_and_free(attach.dev, direction)

    def release(self, dmabuf: DmaBuf) -> None:
        """``drm_gem_dmabuf_release``: drop the export's BO reference. Context: unlocked."""
        bo: GpuBo = dmabuf.priv
        bo.dmabuf = None
        bo.put()

    def begin_cpu_access(self, dmabuf: DmaBuf, direction: DmaDataDirection) -> None:
        """``amdgpu_dma_buf_begin_cpu_access``: for reads, move an unpinned BO to GTT.

        Context: unlocked (takes the resv). Kernel: amdgpu_dma_buf_begin_cpu_access().
        """
        bo: GpuBo = dmabuf.priv
        reads = direction in (DmaDataDirection.BIDIRECTIONAL, DmaDataDirection.FROM_DEVICE)
        if not reads or not bo.allowed_domains & AmdgpuDomain.GTT:
            return
        bo.resv.lock(None)
        try:
            if not bo.pin_count:
                bo.gpu._validate_locked(bo, AmdgpuDomain.GTT, wait=False)
        finally:
            bo.resv.unlock()

    def mmap(self, dmabuf: DmaBuf, vma: Vma) -> None:
        """``drm_gem_dmabuf_mmap`` → TTM mmap: ``vma.view`` is a faulting :class:`GpuBoMapping`."""
        bo: GpuBo = dmabuf.priv
        vma.view = GpuBoMapping(bo, vma.pgoff << PAGE_SHIFT, vma.length)

    def vmap(self, dmabuf: DmaBuf) -> Any:
        """``amdgpu_dma_buf_vmap``: pin (GTT|VRAM) and map the whole BO. Context: resv held."""
        bo: GpuBo = dmabuf.priv
        bo.gpu._pin_locked(bo, AmdgpuDomain.GTT | AmdgpuDomain.VRAM)
        return GpuBoMapping(bo)

    def vunmap(self, dmabuf: DmaBuf, vmap: Any) -> None:
        """``amdgpu_dma_buf_vunmap``: unpin. Context: resv held."""
        bo: GpuBo = dmabuf.priv
        bo.gpu._unpin_locked(bo)


_DMABUF_OPS = GpuDmaBufOps()


class Gpu(Device):
    """An amdgpu-like GPU: VRAM + GTT BOs, TTM moves and eviction, dynamic dma-buf exporter.

    Bind with ``platform.bind(Gpu, "gpu0", vram_size=16 << 30)``.

    Args:
        platform, pdev, name: see :class:`~dmabuf.devices.base.Device`.
        vram_size: bytes of VRAM (> 0, page multiple). Default 16 GiB (sparse).
        visible_vram_size: bytes of VRAM reachable through the BAR (default: ``min(vram_size,
            BAR size)``; at most both). Small-BAR systems: 256 MiB.
        vram_bar: index of the VRAM BAR (default: the largest prefetchable memory BAR).
        gtt_size: bytes of system RAM the GPU may use for GTT (default: 3/4 of its NUMA node's
            RAM, amdgpu's default ``gttsize``).
        gtt_extent: largest physically contiguous GTT extent (default 2 MiB: TTM pool orders).

    Rings: ``"gfx"`` (compute/graphics jobs) and ``"sdma"`` (copies, moves).

    Raises:
        DmaBufError(EINVAL): bad sizes; no usable memory BAR; DmaBufError(EOPNOTSUPP): the BARs
            cannot be P2P providers (``pcim_p2pdma_init``).
    Kernel: amdgpu_device_init(), amdgpu_ttm_init(), amdgpu_gmc (aper_base / visible_vram_size).
    """

    driver_name = "amdgpu"
    rings = ("gfx", "sdma")
    class_codes = (0x03,)   # PCI_BASE_CLASS_DISPLAY: VGA and 3D controllers

    def __init__(self, platform: Platform, pdev: PciDev, *, name: str | None = None,
                 vram_size: int = 16 * _GIB, visible_vram_size: int | None = None,
                 vram_bar: int | None = None, gtt_size: int | None = None,
                 gtt_extent: int = 2 * _MIB) -> None:
        super().__init__(platform, pdev, name=name)
        vram_size = _check_size(vram_size, "vram_size")
        gtt_extent = _check_size(gtt_extent, "gtt_extent")
        bar = self._pick_bar(pdev, vram_bar)
        region = platform.bars.get(f"{pdev.bdf} BAR{bar.index}")
        if region is None:
            raise DmaBufError(errno.EINVAL, f"{pdev.label} BAR{bar.index} is not registered as "
                              "MMIO memory (not page aligned?)")
        if visible_vram_size is None:
            visible_vram_size = min(vram_size, region.size)
        visible_vram_size = _check_size(visible_vram_size, "visible_vram_size")
        if visible_vram_size > min(vram_size, region.size):
            raise DmaBufError(errno.EINVAL, f"visible_vram_size {visible_vram_size:#x} exceeds "
                              f"VRAM ({vram_size:#x}) or the BAR ({region.size:#x})")
        self.vram_size = vram_size
        self.visible_vram_size = visible_vram_size
        self.bar = bar
        self.bar_region = region
        node = platform.numa_node_of(pdev)
        self.gtt_region: PhysRegion = platform.ram[node]
        if gtt_size is None:
            gtt_size = (self.gtt_region.size * 3 // 4) & ~(PAGE_SIZE - 1)
        self.gtt_size = _check_size(gtt_size, "gtt_size")
        self.gtt_extent = gtt_extent
        self.gtt_used = 0
        # VRAM: the visible part aliases the BAR window (same bytes, same page owners).
        self.vram_visible = self._vram_region(f"{self.name}.vram", visible_vram_size,
                                              region.numa_node, alias_of=region)
        self.vram_invisible: PhysRegion | None = None
        if vram_size > visible_vram_size:
            self.vram_invisible = self._vram_region(f"{self.name}.vram.invisible",
                                                    vram_size - visible_vram_size,
                                                    region.numa_node)
        # P2P provider state for the BARs (dma_buf_phys_vec_to_sgt needs a p2pdma_provider).
        self._own_p2pdma = pdev.p2pdma is None
        if self._own_p2pdma:
            p2pdma.pcim_p2pdma_init(pdev)
        self._mm_lock = self.machine.sched.lock(f"{self.name}.vram_mgr")
        self._lru: OrderedDict[int, GpuBo] = OrderedDict()
        self._bos: dict[int, GpuBo] = {}
        self.evictions = 0
        self.machine.trace.emit("amdgpu_init", device=self.name, vram=vram_size,
                                visible=visible_vram_size, bar=bar.index)

    def _vram_region(self, name: str, size: int, node: int,
                     alias_of: PhysRegion | None = None) -> PhysRegion:
        """A VRAM region: new, or the one a previous binding of this GPU left (regions are
        never removed from the physical address space, like memory that stays in the resource
        tree); it must have the same size and no page in use. With ``alias_of`` it is an alias
        of that region's first ``size`` bytes (``PhysMemory.add_alias``)."""
        phys = self.phys
        try:
            old = phys.region(name)
        except DmaBufError:
            if alias_of is not None:
                return phys.add_alias(name, alias_of, 0, size, MemKind.DEVICE, numa_node=node)
            return phys.add_region(name, size, MemKind.DEVICE, numa_node=node)
        if old.kind is not MemKind.DEVICE or old.size != size or old.free_pages != old.npages \
                or old.alias_of is not alias_of:
            raise DmaBufError(errno.EBUSY, f"VRAM region {name!r} exists with another size or "
                              "pages in use (rebind with the same vram sizes)")
        return old

    @staticmethod
    def _pick_bar(pdev: PciDev, index: int | None) -> Any:
        if index is not None:
            b = pdev.bar(index)
            if b is None or not b.is_mem:
                raise DmaBufError(errno.EINVAL, f"{pdev.label} has no memory BAR{index}")
            return b
        mem = [b for b in pdev.bars.values() if b.is_mem and b.size >= PAGE_SIZE]
        if not mem:
            raise DmaBufError(errno.EINVAL, f"{pdev.label} has no memory BAR to expose VRAM")
        return max(mem, key=lambda b: (b.prefetchable, b.size))

    # ------------------------------------------------------------------ address helpers
    def _all_visible(self, pages: np.ndarray) -> bool:
        r = as_ranges(pages)
        if r.size == 0:
            return False
        v = self.vram_visible
        return bool(np.all((r["addr"] >= np.uint64(v.base))
                           & (r["addr"] + r["len"] <= np.uint64(v.end))))

    def _to_bar(self, pages: np.ndarray) -> np.ndarray:
        if not self._all_visible(pages):
            raise DmaBufError(errno.EINVAL, f"{self.name}: VRAM pages outside the visible "
                              f"window ({self.visible_vram_size:#x} bytes) have no bus address")
        out = as_ranges(pages).copy()
        out["addr"] = out["addr"] - np.uint64(self.vram_visible.base) + np.uint64(self.bar.start)
        return out

    # ------------------------------------------------------------------ BO creation
    def alloc_bo(self, size: int, *, domain: AmdgpuDomain = AmdgpuDomain.VRAM,
                 cpu_access_required: bool = False, name: str | None = None,
                 zero: bool = False) -> GpuBo:
        """Create a buffer object and place it — ``amdgpu_bo_create()``.

        VRAM placement evicts least-recently-used unpinned BOs to GTT when VRAM is full.
        ``allowed_domains`` is ``domain`` plus GTT for a VRAM-only BO (as amdgpu does).

        Args:
            size: bytes (> 0; rounded up to pages).
            domain: preferred :class:`AmdgpuDomain` (VRAM, GTT, or both: VRAM tried first).
            cpu_access_required: VRAM placements must be CPU/peer visible (in the BAR window).
            name: label (default ``bo<id>``).
            zero: clear the memory (``AMDGPU_GEM_CREATE_VRAM_CLEARED``); otherwise it holds
                whatever freed pages held (``POISON_FREE`` bytes).
        Context: may block (evictions wait for fences); must not hold a resv lock of this GPU's
            BOs with a ww context (victims are trylocked).
        Returns: the new :class:`GpuBo` (one reference: :meth:`GpuBo.put` / :meth:`free_bo`).
        Raises:
            TypeError: non-int size; DmaBufError(EINVAL): size <= 0, no VRAM/GTT in ``domain``.
            DmaBufError(ENOMEM): larger than the domain's total memory
                (``amdgpu_bo_validate_size``), or no room even after evicting every unpinned BO.
        Kernel: amdgpu_object.c, amdgpu_bo_create(), amdgpu_bo_validate_size();
            ttm_bo.c, ttm_bo_init_reserved().
        """
        self._check_alive("alloc_bo")
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"BO size must be an int, not {type(size).__name__}")
        if size <= 0:
            raise DmaBufError(errno.EINVAL, f"BO size {size} must be > 0")
        if not isinstance(domain, AmdgpuDomain) or not domain & (AmdgpuDomain.VRAM
                                                                 | AmdgpuDomain.GTT):
            raise DmaBufError(errno.EINVAL, f"domain {domain!r} must include VRAM or GTT")
        size = -(-size // PAGE_SIZE) * PAGE_SIZE
        limit_vram = self.visible_vram_size if cpu_access_required else self.vram_size
        if domain == AmdgpuDomain.VRAM and size > limit_vram:
            raise DmaBufError(errno.ENOMEM, f"BO size {size:#x} > total memory in domain VRAM "
                              f"({limit_vram:#x}{' visible' if cpu_access_required else ''}) "
                              "(amdgpu_bo_validate_size)")
        if domain == AmdgpuDomain.GTT and size > self.gtt_size:
            raise DmaBufError(errno.ENOMEM, f"BO size {size:#x} > total memory in domain GTT "
                              f"({self.gtt_size:#x}) (amdgpu_bo_validate_size)")
        allowed = domain | AmdgpuDomain.GTT if domain == AmdgpuDomain.VRAM else domain
        bo = GpuBo(self, size, name, domain, allowed, bool(cpu_access_required))
        bo.resv.lock(None)
        try:
            pages, mem = self._alloc_for(bo, domain, evict=True)
            self._install(bo, mem, pages)
        except BaseException:
            bo.resv.unlock()
            bo.resv.fini()
            raise
        bo.resv.unlock()
        if zero:
            self.phys.fill(pages, 0)
        with self._mm_lock:
            self._bos[bo.id] = bo
            if mem is TtmPl.VRAM:
                self._lru[bo.id] = bo
        self.machine.trace.emit("amdgpu_bo_create", device=self.name, bo=bo.name, size=size,
                                mem_type=mem.name)
        return bo

    def free_bo(self, bo: GpuBo) -> None:
        """Drop the allocation's reference — ``amdgpu_bo_unref()`` (see :meth:`GpuBo.put`).

        Kernel: drivers/gpu/drm/amd/amdgpu/amdgpu_object.c, amdgpu_bo_unref().
        """
        self._check_bo(bo)
        bo.put()

    def _check_bo(self, bo: Any) -> GpuBo:
        if not isinstance(bo, GpuBo):
            raise TypeError(f"expected a GpuBo, not {type(bo).__name__}")
        if bo.gpu is not self:
            raise DmaBufError(errno.EINVAL, f"{bo!r} belongs to {bo.gpu.name}, not {self.name}")
        bo._check_alive("use")
        return bo

    def _destroy(self, bo: GpuBo) -> None:
        if bo.pin_count:
            self.machine.warn("amdgpu_bo_unref", f"{bo!r} freed while pinned")
        # TTM delayed destroy: the pages go when every fence retired.
        bo.resv.wait_timeout(DmaResvUsage.BOOKKEEP, False, None)
        with self._mm_lock:
            self._lru.pop(bo.id, None)
            self._bos.pop(bo.id, None)
        self._release_pages(bo.mem_type, bo.pages, bo.gpu_dma)
        bo.pages = empty_ranges()
        bo.gpu_dma = None
        bo._freed = True
        if not bo.resv.is_locked():
            bo.resv.fini()
        self.machine.trace.emit("amdgpu_bo_free", device=self.name, bo=bo.name)

    # ------------------------------------------------------------------ page allocation
    def _alloc_for(self, bo: GpuBo, domains: AmdgpuDomain, *, evict: bool,
                   visible: bool | None = None) -> tuple[np.ndarray, TtmPl]:
        """Allocate pages for ``bo`` in the first domain of ``domains`` that has room."""
        if visible is None:
            visible = bo.cpu_access_required
        err: DmaBufError | None = None
        if domains & AmdgpuDomain.VRAM:
            try:
                return self._alloc_vram(bo, visible, evict=evict), TtmPl.VRAM
            except DmaBufError as e:
                if e.errno != errno.ENOMEM:
                    raise
                err = e
        if domains & AmdgpuDomain.GTT:
            return self._alloc_gtt(bo), TtmPl.TT
        assert err is not None
        raise err

    def _alloc_vram(self, bo: GpuBo, visible_only: bool, *, evict: bool) -> np.ndarray:
        phys = self.phys
        need = bo.size >> PAGE_SHIFT
        if need > (self.visible_vram_size if visible_only else self.vram_size) >> PAGE_SHIFT:
            raise DmaBufError(errno.ENOMEM, f"{bo.name}: {bo.size:#x} bytes do not fit in VRAM")
        while True:
            vis = self.vram_visible
            inv = self.vram_invisible
            free_vis = vis.free_pages
            free_inv = 0 if (visible_only or inv is None) else inv.free_pages
            if free_vis + free_inv >= need:
                parts = []
                take_inv = min(free_inv, need)
                if take_inv and inv is not None:   # invisible first (TOPDOWN for no-CPU BOs)
                    parts.append(phys.alloc(inv, take_inv << PAGE_SHIFT, bo.owner))
                if need - take_inv:
                    try:
                        parts.append(phys.alloc(vis, (need - take_inv) << PAGE_SHIFT, bo.owner))
                    except DmaBufError:
                        if parts:
                            phys.free(parts[0])
                        raise
                return np.concatenate(parts) if len(parts) > 1 else parts[0]
            if not evict:
                raise DmaBufError(errno.ENOMEM, f"{self.name}: no VRAM for {bo.name} "
                                  f"({bo.size:#x} bytes) without evicting")
            victim = self._pick_victim(bo, visible_only)
            if victim is None:
                raise DmaBufError(errno.ENOMEM, f"{self.name}: VRAM full: cannot place "
                                  f"{bo.name} ({bo.size:#x} bytes); {free_vis + free_inv} pages "
                                  f"free, every other VRAM BO is pinned or busy (nothing can be "
                                  "evicted)")
            try:
                self._evict_locked(victim)
            finally:
                victim.resv.unlock()

    def _alloc_gtt(self, bo: GpuBo) -> np.ndarray:
        with self._mm_lock:
            if self.gtt_used + bo.size > self.gtt_size:
                raise DmaBufError(errno.ENOMEM, f"{self.name}: GTT full ({self.gtt_used:#x} of "
                                  f"{self.gtt_size:#x} bytes used); cannot place {bo.name}")
            self.gtt_used += bo.size
        try:
            return self.phys.alloc(self.gtt_region, bo.size, bo.owner,
                                   max_extent=self.gtt_extent)
        except BaseException:
            with self._mm_lock:
                self.gtt_used -= bo.size
            raise

    def _install(self, bo: GpuBo, mem: TtmPl, pages: np.ndarray) -> None:
        """Make ``pages`` the BO's placement; GTT pages get the GPU's own DMA mapping."""
        gpu_dma = None
        if mem is TtmPl.TT:
            try:
                gpu_dma = self.dma.map_ranges(pages, DmaDataDirection.BIDIRECTIONAL)
            except BaseException:
                self._release_pages(TtmPl.TT, pages, None)
                raise
        bo.mem_type = mem
        bo.pages = pages
        bo.gpu_dma = gpu_dma

    def _release_pages(self, mem: TtmPl, pages: np.ndarray, gpu_dma: np.ndarray | None) -> None:
        if gpu_dma is not None:
            self.dma.unmap_ranges(gpu_dma, DmaDataDirection.BIDIRECTIONAL)
        if pages.size:
            self.phys.free(pages)
            if mem is TtmPl.TT:
                with self._mm_lock:
                    self.gtt_used -= int(pages["len"].sum(dtype=np.uint64))

    # ------------------------------------------------------------------ LRU / eviction
    def _lru_touch(self, bo: GpuBo) -> None:
        with self._mm_lock:
            if bo.id in self._lru:
                self._lru.move_to_end(bo.id)

    def _pick_victim(self, exclude: GpuBo | None, visible_only: bool) -> GpuBo | None:
        """LRU walk: the first unpinned VRAM BO whose resv trylocks (returned locked)."""
        with self._mm_lock:
            cands = [b for b in self._lru.values() if b is not exclude]
        for b in cands:
            if b.pin_count or not b.in_vram:
                continue
            if visible_only and not self._touches_visible(b.pages):
                continue
            if not b.resv.trylock():
                continue
            if b.pin_count or not b.in_vram or b.freed:    # re-check under the lock
                b.resv.unlock()
                continue
            return b
        return None

    def _touches_visible(self, pages: np.ndarray) -> bool:
        r = as_ranges(pages)
        v = self.vram_visible
        return bool(np.any((r["addr"] < np.uint64(v.end))
                           & (r["addr"] + r["len"] > np.uint64(v.base))))

    def evict(self, bo: GpuBo) -> DmaFence | None:
        """Evict one BO from VRAM to GTT — ``ttm_bo_evict()`` on request.

        Takes the BO's resv, invalidates importers' mappings, waits for every BOOKKEEP fence,
        copies the bytes to GTT and waits for the copy; the VRAM pages are free (poisoned) when
        this returns.

        Args: bo: a BO of this GPU.
        Context: may block; must not hold ``bo.resv``.
        Returns: the move fence (signalled), or None if the BO was not in VRAM.
        Raises: DmaBufError(EBUSY): the BO is pinned (pinned BOs never move);
            DmaBufError(ENOMEM): GTT full.
        Kernel: ttm_bo.c, ttm_bo_evict(); amdgpu_ttm.c, amdgpu_evict_flags() (VRAM → GTT).
        """
        self._check_alive("evict")
        self._check_bo(bo)
        bo.resv.lock(None)
        try:
            if bo.pin_count:
                raise DmaBufError(errno.EBUSY, f"{bo.name} is pinned ({bo.pin_count}); pinned "
                                  "BOs are never evicted")
            if not bo.in_vram:
                return None
            return self._evict_locked(bo)
        finally:
            bo.resv.unlock()

    def evict_vram(self, nbytes: int | None = None) -> int:
        """Evict LRU BOs until ``nbytes`` of VRAM are free (all evictable BOs when None) —
        ``amdgpu_ttm_evict_resources()`` / TTM's LRU walk.

        Returns: the number of BOs evicted.
        Raises: DmaBufError(ENOMEM): ``nbytes`` cannot be freed (pinned or busy BOs remain);
            DmaBufError(EINVAL): ``nbytes`` <= 0.
        Context: may block.

        Kernel: drivers/gpu/drm/amd/amdgpu/amdgpu_ttm.c, amdgpu_ttm_evict_resources().
        """
        self._check_alive("evict_vram")
        if nbytes is not None:
            nbytes = _check_size(nbytes, "nbytes")
        n = 0
        while True:
            free = self.vram_free
            if nbytes is not None and free >= nbytes:
                return n
            victim = self._pick_victim(None, False)
            if victim is None:
                if nbytes is None:
                    return n
                raise DmaBufError(errno.ENOMEM, f"{self.name}: only {free:#x} bytes of VRAM can "
                                  f"be freed, {nbytes:#x} wanted (the rest is pinned or busy)")
            try:
                self._evict_locked(victim)
            finally:
                victim.resv.unlock()
            n += 1

    def _evict_locked(self, bo: GpuBo) -> DmaFence:
        """Evict ``bo`` (resv held, not pinned, in VRAM) to GTT and wait until it is done."""
        bo.resv.assert_held()
        if bo.pin_count:
            raise ContractViolation("ttm_bo_evict", f"evicting pinned {bo!r}")
        self.evictions += 1
        self.machine.trace.emit("ttm_bo_evict", device=self.name, bo=bo.name)
        fence = self._move_locked(bo, AmdgpuDomain.GTT, evict=True)
        fence.wait(False)
        fence.put()
        return fence

    # ------------------------------------------------------------------ validate / pin / move
    def _compatible(self, bo: GpuBo, domains: AmdgpuDomain) -> bool:
        if bo.mem_type is TtmPl.TT:
            return bool(domains & AmdgpuDomain.GTT)
        if bo.mem_type is TtmPl.VRAM:
            if not domains & AmdgpuDomain.VRAM:
                return False
            return not bo.cpu_access_required or bo.visible
        return False

    def _validate_locked(self, bo: GpuBo, domains: AmdgpuDomain, *, wait: bool) -> None:
        """``ttm_bo_validate``: keep a compatible placement, else move (resv held)."""
        bo.resv.assert_held()
        if self._compatible(bo, domains):
            return
        if bo.pin_count:
            raise DmaBufError(errno.EINVAL, f"{bo.name} is pinned in {bo.mem_type.name}; it "
                              f"cannot move to {domains!r}")
        fence = self._move_locked(bo, domains, evict=False)
        if wait:
            fence.wait(False)
        fence.put()

    def _pin_locked(self, bo: GpuBo, domains: AmdgpuDomain) -> None:
        """``amdgpu_bo_pin``: validate into ``domains`` (unless pinned already), pin_count++."""
        bo.resv.assert_held()
        bo._check_alive("amdgpu_bo_pin")
        if bo.pin_count:
            if not self._compatible(bo, domains):
                raise DmaBufError(errno.EINVAL, f"{bo.name} is already pinned in "
                                  f"{bo.mem_type.name}, incompatible with {domains!r}")
        else:
            self._validate_locked(bo, domains, wait=False)
        bo.pin_count += 1
        self.machine.trace.emit("amdgpu_bo_pin", device=self.name, bo=bo.name,
                                mem_type=bo.mem_type.name)

    def _unpin_locked(self, bo: GpuBo) -> None:
        """``amdgpu_bo_unpin``: pin_count-- (WARN on underflow)."""
        bo.resv.assert_held()
        if bo.pin_count <= 0:
            self.machine.warn("amdgpu_bo_unpin", f"{bo!r} not pinned")
            return
        bo.pin_count -= 1

    def pin(self, bo: GpuBo, domain: AmdgpuDomain = AmdgpuDomain.VRAM) -> None:
        """Pin a BO into ``domain`` (driver-internal users: scanout…) — ``amdgpu_bo_pin()``.

        Context: takes the resv; may block. Raises: DmaBufError(EINVAL/ENOMEM).

        Kernel: drivers/gpu/drm/amd/amdgpu/amdgpu_object.c, amdgpu_bo_pin().
        """
        self._check_bo(bo)
        bo.resv.lock(None)
        try:
            self._pin_locked(bo, domain)
        finally:
            bo.resv.unlock()

    def unpin(self, bo: GpuBo) -> None:
        """Undo :meth:`pin` — ``amdgpu_bo_unpin()``. Context: takes the resv.

        Kernel: drivers/gpu/drm/amd/amdgpu/amdgpu_object.c, amdgpu_bo_unpin().
        """
        self._check_bo(bo)
        bo.resv.lock(None)
        try:
            self._unpin_locked(bo)
        finally:
            bo.resv.unlock()

    def validate(self, bo: GpuBo, domain: AmdgpuDomain | None = None, *,
                 wait: bool = True) -> None:
        """Move an unpinned BO into ``domain`` (default: its preferred domains), as a command
        submission does before using it — ``amdgpu_cs_bo_validate`` / ``ttm_bo_validate``.

        Context: takes the resv; may block (evictions; ``wait`` waits for the move).
        Raises: DmaBufError(ENOMEM): no room; DmaBufError(EINVAL): pinned elsewhere.

        Kernel: drivers/gpu/drm/ttm/ttm_bo.c, ttm_bo_validate().
        """
        self._check_alive("validate")
        self._check_bo(bo)
        bo.resv.lock(None)
        try:
            self._validate_locked(bo, bo.preferred_domains if domain is None else domain,
                                  wait=wait)
        finally:
            bo.resv.unlock()

    def _cpu_fault_locked(self, bo: GpuBo) -> None:
        """``amdgpu_bo_fault_reserve_notify``: bring an invisible-VRAM BO where the CPU reaches."""
        try:
            pages = self._alloc_vram(bo, True, evict=False)
            self._do_move_locked(bo, TtmPl.VRAM, pages, evict=False).put()
        except DmaBufError as e:
            if e.errno != errno.ENOMEM:
                raise
            self._move_locked(bo, AmdgpuDomain.GTT, evict=False).put()

    def _move_locked(self, bo: GpuBo, domains: AmdgpuDomain, *, evict: bool) -> DmaFence:
        """Allocate the new placement in ``domains`` and move there (resv held)."""
        bo.resv.assert_held()
        visible = bo.cpu_access_required
        pages, mem = self._alloc_for(bo, domains, evict=not evict, visible=visible)
        return self._do_move_locked(bo, mem, pages, evict=evict)

    def _do_move_locked(self, bo: GpuBo, mem: TtmPl, pages: np.ndarray, *,
                        evict: bool) -> DmaFence:
        """``ttm_bo_handle_move_mem`` + ``amdgpu_bo_move`` (see the module docstring)."""
        resv = bo.resv
        gpu_dma = None
        if mem is TtmPl.TT:
            try:
                gpu_dma = self.dma.map_ranges(pages, DmaDataDirection.BIDIRECTIONAL)
            except BaseException:
                self._release_pages(TtmPl.TT, pages, None)
                raise
        old = bo.placement()
        try:
            # amdgpu_bo_move_notify(): exported BOs tell their importers before every move
            if bo.dmabuf is not None and not bo.dmabuf.released:
                bo.dmabuf.invalidate_mappings()
            if evict:
                # the eviction path waits for in-flight work of importers and the GPU
                resv.wait_timeout(DmaResvUsage.BOOKKEEP, False, None)
        except BaseException:
            self._release_pages(mem, pages, gpu_dma)     # the move did not happen
            raise
        deps = resv.get_fences(DmaResvUsage.BOOKKEEP)
        new = _Placement(mem, pages, gpu_dma, bo.owner)
        name = f"move {bo.name} {old.mem_type.name}->{mem.name}"

        def body() -> None:
            try:
                src = self._resolve(old, "read", "move.src")
                dst = self._resolve(new, "write", "move.dst")
                self.phys.copy(dst, src)
            finally:
                self._release_pages(old.mem_type, old.pages, old.gpu_dma)

        try:
            fence = self.submit(body, ring="sdma", deps=deps, name=name,
                                propagate_errors=False)
        except BaseException:
            self._release_pages(mem, pages, gpu_dma)     # e.g. ENODEV: the GPU was removed
            raise
        finally:
            for d in deps:
                d.put()
        resv.reserve_fences(1)
        resv.add_fence(fence, DmaResvUsage.KERNEL)
        bo.mem_type = mem
        bo.pages = pages
        bo.gpu_dma = gpu_dma
        bo.moves += 1
        with self._mm_lock:
            if mem is TtmPl.VRAM:
                self._lru[bo.id] = bo
                self._lru.move_to_end(bo.id)
            else:
                self._lru.pop(bo.id, None)
        self.machine.trace.emit("ttm_bo_move", device=self.name, bo=bo.name,
                                old=old.mem_type.name, new=mem.name, evict=evict,
                                seqno=fence.seqno)
        return fence

    # ------------------------------------------------------------------ the GPU's engines
    def _resolve(self, p: _Placement, access: str, op: str, offset: int = 0,
                 length: int | None = None) -> np.ndarray:
        """Physical ranges a GPU engine reaches for a placement (VRAM direct, GTT via GART)."""
        if length is None:
            length = int(p.pages["len"].sum(dtype=np.uint64)) - offset if p.pages.size else 0
        try:
            if p.mem_type is TtmPl.VRAM:
                phys = slice_ranges(p.pages, offset, length)
            else:
                assert p.gpu_dma is not None
                phys = self.dma.translate(slice_ranges(p.gpu_dma, offset, length), access)
            if phys.size:
                self.phys.check_owned(phys, p.owner)
        except IommuFault as e:
            raise self.record_fault(op, e, p.owner) from None
        return phys

    def _lock_bos(self, bos: Sequence[GpuBo]) -> WwAcquireCtx | None:
        """Lock every BO's resv: one plainly, several with a ww acquire context and back-off."""
        uniq: list[GpuBo] = []
        for b in bos:
            if all(b is not u for u in uniq):
                uniq.append(b)
        if len(uniq) == 1:
            uniq[0].resv.lock(None)
            return None
        ctx = WwAcquireCtx(reservation_ww_class(self.machine), machine=self.machine)
        locked: list[DmaResv] = []
        contended: DmaResv | None = None
        while True:
            try:
                if contended is not None:
                    contended.lock_slow(ctx)
                    locked.append(contended)
                for b in uniq:
                    if any(b.resv is r for r in locked):
                        continue
                    try:
                        b.resv.lock(ctx)
                    except WouldDeadlock:
                        contended = b.resv
                        raise
                    locked.append(b.resv)
                break
            except WouldDeadlock:
                for r in locked:
                    r.unlock()
                locked = []
        ctx.done()
        return ctx

    def _unlock_bos(self, bos: Sequence[GpuBo], ctx: WwAcquireCtx | None) -> None:
        done: list[DmaResv] = []
        for b in bos:
            if all(b.resv is not r for r in done):
                b.resv.unlock()
                done.append(b.resv)
        if ctx is not None:
            ctx.fini()

    def compute(self, accesses: Sequence[tuple[GpuBo, bool]],
                body: Callable[[list[np.ndarray]], Any], *, ring: str = "gfx",
                name: str = "cs", duration: float = 0.0,
                implicit_sync: bool = True) -> DmaFence:
        """Submit a job that reads/writes BOs — ``amdgpu_cs_ioctl`` (+ drm_sched).

        Locks the BOs' resvs, collects the implicit-sync dependencies
        (``dma_resv_usage_rw(write)``: a writer waits for readers and writers, a reader for
        writers; KERNEL fences always), queues ``body`` on ``ring`` and adds the job's fence to
        each resv with usage WRITE or READ (BOOKKEEP with ``implicit_sync=False``).

        Args:
            accesses: ``(bo, write)`` pairs.
            body: called on the GPU worker with the physical ranges of each BO (in
                ``accesses`` order), already translated and ownership-checked; it moves bytes
                with the platform's PhysMemory. Its return value is the job result.
            ring: ``"gfx"`` or ``"sdma"``. name / duration: see
                :meth:`~dmabuf.devices.base.WorkQueue.submit`.
            implicit_sync: honour and publish implicit-sync fences (default True).
        Context: takes and releases the resvs (must not hold them); never waits for the job.
        Returns: the job's fence (caller's reference). A fault in the body sets ``-EFAULT``.
        Raises: DmaBufError(ENODEV): GPU removed; TypeError: not this GPU's BOs.
        Kernel: amdgpu_cs.c (amdgpu_cs_parser_bos, amdgpu_cs_sync_rings,
            amdgpu_cs_submit); dma-resv.h (dma_resv_usage_rw).
        """
        self._check_alive("compute")
        if not accesses:
            raise DmaBufError(errno.EINVAL, "a command submission needs at least one BO")
        bos = [self._check_bo(b) for b, _ in accesses]
        ctx = self._lock_bos(bos)
        try:
            deps: list[DmaFence] = []
            for b, w in accesses:
                usage = usage_rw(bool(w)) if implicit_sync else DmaResvUsage.KERNEL
                deps.extend(b.resv.get_fences(usage))
            snaps = [b.placement() for b in bos]
            writes = [bool(w) for _, w in accesses]

            def job() -> Any:
                ranges = [self._resolve(s, "write" if w else "read", name)
                          for s, w in zip(snaps, writes, strict=True)]
                return body(ranges)

            try:
                fence = self.submit(job, ring=ring, deps=deps, name=name, duration=duration)
            finally:
                for d in deps:
                    d.put()
            done: list[DmaResv] = []
            for b, w in accesses:
                if any(b.resv is r for r in done):
                    continue
                done.append(b.resv)
                b.resv.reserve_fences(1)
                usage = (DmaResvUsage.WRITE if w else DmaResvUsage.READ) if implicit_sync \
                    else DmaResvUsage.BOOKKEEP
                b.resv.add_fence(fence, usage)
        finally:
            self._unlock_bos(bos, ctx)
        for b in bos:
            self._lru_touch(b)
        return fence

    def fill(self, bo: GpuBo, byte: int, **kw: Any) -> DmaFence:
        """GPU memset of the whole BO — ``amdgpu_fill_buffer()`` as a WRITE job.

        Args: bo: the BO; byte: 0..255; ``**kw``: :meth:`compute` options (ring, duration…).
        Context: takes/releases the resv. Returns: the job's fence.
        Kernel: amdgpu_ttm.c, amdgpu_fill_buffer().
        """
        def body(r: list[np.ndarray]) -> None:
            self.phys.fill(r[0], byte)
        return self.compute([(bo, True)], body, name=kw.pop("name", f"fill {bo.name}"), **kw)

    def write(self, bo: GpuBo, data: Any, offset: int = 0, **kw: Any) -> DmaFence:
        """GPU writes ``data`` into the BO at ``offset`` (a WRITE job, e.g. a shader store).

        Args: bo; data: bytes-like or ndarray (copied at submission); offset: byte offset.
        Context: takes/releases the resv. Returns: the job's fence.
        Raises: DmaBufError(EINVAL): the data runs past the BO.
        Kernel: amdgpu_cs.c (a submission writing the BO).
        """
        arr = np.array(np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
                       if not isinstance(data, np.ndarray) else
                       np.ascontiguousarray(data).view(np.uint8).reshape(-1))
        if offset < 0 or offset + arr.size > bo.size:
            raise DmaBufError(errno.EINVAL, f"write of {arr.size} bytes at {offset} runs past "
                              f"the {bo.size}-byte BO")

        def body(r: list[np.ndarray]) -> None:
            self.phys.write(slice_ranges(r[0], offset, int(arr.size)), arr)
        return self.compute([(bo, True)], body, name=kw.pop("name", f"write {bo.name}"), **kw)

    def copy(self, dst: GpuBo, src: GpuBo, **kw: Any) -> DmaFence:
        """GPU copies ``src`` into ``dst`` on the sdma ring — ``amdgpu_copy_buffer()``.

        Args: dst, src: BOs of the same size; ``**kw``: :meth:`compute` options.
        Context: takes/releases both resvs (ww acquire context). Returns: the job's fence.
        Raises: DmaBufError(EINVAL): different sizes, or ``dst is src``.
        Kernel: amdgpu_ttm.c, amdgpu_copy_buffer().
        """
        if dst is src:
            raise DmaBufError(errno.EINVAL, "copy of a BO onto itself")
        if dst.size != src.size:
            raise DmaBufError(errno.EINVAL, f"copy: sizes differ ({dst.size} != {src.size})")

        def body(r: list[np.ndarray]) -> None:
            self.phys.copy(r[0], r[1])
        kw.setdefault("ring", "sdma")
        return self.compute([(dst, True), (src, False)], body,
                            name=kw.pop("name", f"copy {src.name}->{dst.name}"), **kw)

    def read(self, bo: GpuBo, offset: int = 0, length: int | None = None,
             timeout: float | None = None) -> np.ndarray:
        """GPU reads the BO (a READ job) and returns the bytes; waits for the job.

        Args: bo; offset/length: byte window; timeout: seconds (None: no limit).
        Context: may block. Returns: a new uint8 array.
        Raises: DmaBufError(EFAULT): the job faulted; DmaBufError(ETIMEDOUT): ``timeout``.
        Kernel: amdgpu_cs.c (a submission reading the BO).
        """
        n = bo.size - offset if length is None else length
        out: list[np.ndarray] = []

        def body(r: list[np.ndarray]) -> None:
            out.append(self.phys.read(slice_ranges(r[0], offset, n)))
        self._wait_job(self.compute([(bo, False)], body, name=f"read {bo.name}"), timeout)
        return out[0]

    def checksum(self, bo: GpuBo, timeout: float | None = None) -> int:
        """CRC-32 of the BO as the GPU reads it (a READ job; waits for it).

        Context: may block. Returns: zlib CRC-32. Raises: as :meth:`read`.
        Kernel: amdgpu_cs.c (a submission reading the BO).
        """
        out: list[int] = []

        def body(r: list[np.ndarray]) -> None:
            out.append(self.phys.checksum(r[0]))
        self._wait_job(self.compute([(bo, False)], body, name=f"checksum {bo.name}"), timeout)
        return out[0]

    def _wait_job(self, fence: DmaFence, timeout: float | None) -> None:
        try:
            if fence.wait_timeout(False, timeout) <= 0:
                raise DmaBufError(errno.ETIMEDOUT, f"{self.name}: job {fence!r} still running")
            if fence.error:
                raise DmaBufError(-fence.error, f"{self.name}: job failed ({fence.error})")
        finally:
            fence.put()

    # ------------------------------------------------------------------ export
    def export(self, bo: GpuBo, *, flags: int = O_RDWR) -> DmaBuf:
        """Export a BO as a dynamic dma-buf — ``amdgpu_gem_prime_export()``.

        The dma-buf shares the BO's resv and holds a BO reference (dropped on release). A BO
        exported twice returns the same dma-buf with a new reference (``obj->dma_buf``).

        Returns: the :class:`~dmabuf.buf.dma_buf.DmaBuf` (caller's reference).
        Raises: DmaBufError(ENODEV): GPU removed.
        Kernel: amdgpu_dma_buf.c, amdgpu_gem_prime_export(); drm_prime.c, drm_gem_prime_export().
        """
        self._check_alive("export")
        self._check_bo(bo)
        if bo.dmabuf is not None and not bo.dmabuf.released:
            return bo.dmabuf.get()
        info = DmaBufExportInfo(exp_name=self.driver_name, ops=_DMABUF_OPS, size=bo.size,
                                flags=flags, resv=bo.resv, priv=bo)
        bo.get()
        try:
            dmabuf = dma_buf_export(info, machine=self.machine)
        except BaseException:
            bo._refcount -= 1
            raise
        bo.dmabuf = dmabuf
        return dmabuf

    # ------------------------------------------------------------------ introspection
    @property
    def vram_free(self) -> int:
        """Free VRAM bytes (visible + invisible)."""
        n = self.vram_visible.free_pages
        if self.vram_invisible is not None:
            n += self.vram_invisible.free_pages
        return n << PAGE_SHIFT

    @property
    def bos(self) -> list[GpuBo]:
        """Live BOs (a snapshot)."""
        with self._mm_lock:
            return list(self._bos.values())

    @property
    def lru(self) -> list[GpuBo]:
        """VRAM BOs from least to most recently used (a snapshot)."""
        with self._mm_lock:
            return list(self._lru.values())

    def remove(self) -> None:
        """Unbind the GPU: drain the rings, free remaining BOs, release the P2P provider state.

        Kernel: drivers/gpu/drm/amd/amdgpu/amdgpu_drv.c, amdgpu_pci_remove().
        """
        if self.removed:
            return
        try:
            super().remove()
        finally:
            for bo in self.bos:
                if not bo.freed and bo.dmabuf is None:
                    bo._refcount = 1
                    bo.pin_count = 0
                    bo.put()
            if self._own_p2pdma:
                p2pdma.pci_p2pdma_release(self.pdev)

    def describe(self) -> dict[str, Any]:
        """Snapshot: the base fields plus VRAM/GTT usage, BOs and evictions.

        Model-only: introspection snapshot (the kernel shows similar data in amdgpu debugfs).
        """
        d = super().describe()
        d.update({"vram_size": self.vram_size, "visible_vram_size": self.visible_vram_size,
                  "vram_free": self.vram_free, "gtt_size": self.gtt_size,
                  "gtt_used": self.gtt_used, "bar": self.bar.index,
                  "evictions": self.evictions, "bos": [b.describe() for b in self.bos]})
        return d


def _check_size(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int (bytes), not {type(value).__name__}")
    if value <= 0 or value % PAGE_SIZE:
        raise DmaBufError(errno.EINVAL, f"{what} {value:#x} must be a positive multiple of "
                          f"PAGE_SIZE ({PAGE_SIZE})")
    return value


