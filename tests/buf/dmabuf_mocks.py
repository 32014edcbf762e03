"""Mock exporters and importers for the dma-buf protocol tests — they move REAL bytes.

* :class:`MockExporter` — system-memory (or "VRAM") pages from a PhysMemory, mapped for the
  importer's device with ``SgTable.from_pages(...).map(dev)`` or as a ``PhysVec``; optionally
  dynamic (pin/unpin), movable (:meth:`MockExporter.migrate`), revocable (a ``Revoker``), with
  mmap/vmap/CPU access. Every callback records the resv lock state on entry.
* :class:`MockImporter` — a dynamic (or static) importer with a DMA engine: caches one mapping,
  runs DMAs tracked by fences in the resv, obeys (or, when told, ignores) invalidation.

Not a test module (no ``test_`` prefix); imported by the tests in this directory.
"""

from __future__ import annotations

import errno
import itertools
from typing import Any

import numpy as np

from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBuf,
    DmaBufAttachment,
    DmaBufAttachOps,
    DmaBufExportInfo,
    DmaBufOps,
    Vma,
    dma_buf_export,
)
from dmabuf.buf.dma_engine import DmaEngine
from dmabuf.buf.file import O_RDWR
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.revoke import Revoker, invalidate_and_wait
from dmabuf.buf.sg_table import SgTable
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.mm.phys import PAGE_SIZE, MemKind, PhysMemory
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps
from dmabuf.sync.dma_resv import DmaResvUsage

BIDI = DmaDataDirection.BIDIRECTIONAL
MiB = 1 << 20


def make_phys(ram: int = 64 * MiB, vram: int = 64 * MiB) -> PhysMemory:
    """A PhysMemory with a RAM region ``ram0`` and a device-memory region ``vram0``."""
    phys = PhysMemory()
    phys.add_region("ram0", ram, MemKind.RAM)
    phys.add_region("vram0", vram, MemKind.DEVICE)
    return phys


class MockExporter(DmaBufOps):
    """A configurable exporter over real pages (see the module docstring).

    Args:
        phys: the physical memory.
        size: bytes (page multiple).
        region: where the pages start ("vram0" or "ram0").
        mode: "sgt" (SgTable) or "physvec" (PhysVec of DMA addresses).
        revoker: a Revoker to consult (revocable exporter), or None.
        fail_attach / fail_pin / fail_map: errno to raise from that op (None: succeed).
    """

    def __init__(self, phys: PhysMemory, size: int = MiB, *, region: str = "vram0",
                 mode: str = "sgt", revoker: Revoker | None = None,
                 fail_attach: int | None = None, fail_pin: int | None = None,
                 fail_map: int | None = None) -> None:
        super().__init__()
        self.phys = phys
        self.size = size
        self.region = region
        self.mode = mode
        self.revoker = revoker
        self.fail_attach = fail_attach
        self.fail_pin = fail_pin
        self.fail_map = fail_map
        self.owner = phys.new_owner("mock-exporter")
        self.pages = phys.alloc(region, size, self.owner, zero=True)
        self.pins = 0
        self.calls: list[tuple[str, bool]] = []     # (op, resv held on entry)
        self.maps = 0
        self.unmaps = 0
        self.released = 0
        self.moves = 0
        self.dmabuf: DmaBuf | None = None
        self.vmaps = 0

    def _rec(self, op: str, dmabuf: DmaBuf | None = None) -> None:
        b = dmabuf if dmabuf is not None else self.dmabuf
        assert b is not None
        self.calls.append((op, b.resv.held()))

    # ops --------------------------------------------------------------------------------
    def attach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        self._rec("attach", dmabuf)
        if self.fail_attach is not None:
            raise DmaBufError(self.fail_attach, "mock exporter rejects the attachment")
        if self.revoker is not None:
            self.revoker.check_attach(attach)

    def detach(self, dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
        self._rec("detach")

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> Any:
        self._rec("map_dma_buf")
        if self.fail_map is not None:
            raise DmaBufError(self.fail_map, "mock exporter cannot map")
        if self.revoker is not None:
            self.revoker.map_get(attach)
        try:
            if self.mode == "physvec":
                dma = attach.dev.map_ranges(self.pages, direction)
                t: Any = PhysVec(dma)
            else:
                t = SgTable.from_pages(self.pages).map(attach.dev, direction)
        except BaseException:
            if self.revoker is not None:
                self.revoker.map_undo()
            raise
        self.maps += 1
        return t

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: Any,
                      direction: DmaDataDirection) -> None:
        self._rec("unmap_dma_buf")
        if isinstance(table, PhysVec):
            attach.dev.unmap_ranges(table.ranges, direction)
        else:
            table.unmap(attach.dev, direction)
            table.free()
        self.unmaps += 1
        if self.revoker is not None:
            self.revoker.map_put(attach)

    def release(self, dmabuf: DmaBuf) -> None:
        self._rec("release", dmabuf)
        self.released += 1

    def begin_cpu_access(self, dmabuf: DmaBuf, direction: DmaDataDirection) -> None:
        self._rec("begin_cpu_access")

    def end_cpu_access(self, dmabuf: DmaBuf, direction: DmaDataDirection) -> None:
        self._rec("end_cpu_access")

    def mmap(self, dmabuf: DmaBuf, vma: Vma) -> None:
        self._rec("mmap")
        start = vma.pgoff * PAGE_SIZE
        # one contiguous allocation in these mocks: view the bytes directly
        base = int(self.pages["addr"][0])
        assert self.pages.size == 1
        vma.view = self.phys.view(base + start, vma.length)

    def vmap(self, dmabuf: DmaBuf) -> Any:
        self._rec("vmap")
        self.vmaps += 1
        base = int(self.pages["addr"][0])
        return self.phys.view(base, self.size)

    def vunmap(self, dmabuf: DmaBuf, vmap: Any) -> None:
        self._rec("vunmap")
        self.vmaps -= 1

    # exporter-side actions ---------------------------------------------------------------
    def export(self, *, flags: int = O_RDWR, resv: Any = None,
               machine: Machine | None = None, exp_name: str = "mock") -> DmaBuf:
        b = dma_buf_export(DmaBufExportInfo(exp_name, self, self.size, flags, resv, priv=self),
                           machine)
        self.dmabuf = b
        if self.revoker is not None:
            self.revoker.bind(b)
        return b

    def read_back(self) -> np.ndarray:
        """The buffer's bytes as the exporter (CPU) sees them now."""
        return self.phys.read(self.pages)

    def migrate(self, to_region: str) -> None:
        """Move the storage (movable flow): invalidate, wait fences, copy bytes, free old pages.

        Takes the resv lock; the old pages are freed (poisoned) so a stale mapping faults.
        """
        assert self.dmabuf is not None
        resv = self.dmabuf.resv
        resv.lock(None)
        try:
            if self.pins:
                raise DmaBufError(errno.EBUSY, "storage is pinned: it cannot move")
            assert invalidate_and_wait(self.dmabuf)
            new = self.phys.alloc(to_region, self.size, self.owner)
            self.phys.copy(new, self.pages)
            old, self.pages = self.pages, new
            self.phys.free(old)
            self.region = to_region
            self.moves += 1
        finally:
            resv.unlock()


    def take_away(self) -> None:
        """The storage goes (device reset, hot-unplug): free and poison the pages."""
        self.phys.free(self.pages)
        self.pages = self.pages[:0]

    def give_back(self) -> None:
        """The storage comes back (fresh, zeroed pages)."""
        self.pages = self.phys.alloc(self.region, self.size, self.owner, zero=True)


class DynamicMockExporter(MockExporter):
    """A MockExporter with pin/unpin: a *dynamic* exporter (dma_buf_is_dynamic)."""

    def pin(self, attach: DmaBufAttachment) -> None:
        self._rec("pin")
        if self.fail_pin is not None:
            raise DmaBufError(self.fail_pin, "mock exporter refuses to pin")
        self.pins += 1

    def unpin(self, attach: DmaBufAttachment) -> None:
        self._rec("unpin")
        self.pins -= 1


class _MockFenceOps(DmaFenceOps):
    def __init__(self) -> None:
        super().__init__("mock-importer", "dma")


_FENCE_OPS = _MockFenceOps()


class MockImporter:
    """An importer device with a DMA engine (see the module docstring).

    Args:
        dmabuf: the buffer to import.
        dev: the device (default: a DirectDev named ``name`` on the exporter's phys).
        dynamic: dynamic attachment with invalidate_mappings (else static).
        revocable: provide invalidate_mappings (dynamic only).
        p2p: allow_peer2peer.
        obey: unmap on invalidate (False: an importer that ignores invalidation).
    """

    _ctx = itertools.count(1)

    def __init__(self, dmabuf: DmaBuf, phys: PhysMemory, name: str = "importer", *,
                 dynamic: bool = True, revocable: bool = True, p2p: bool = True,
                 obey: bool = True, machine: Machine | None = None) -> None:
        self.machine = machine if machine is not None else current_machine()
        self.dmabuf = dmabuf
        self.dev = DirectDev(name, phys)
        self.engine = DmaEngine(self.dev, machine=self.machine)
        self.obey = obey
        self.table: Any = None
        self.invalidated = 0
        self.inflight: DmaFence | None = None
        self.stale = False
        self.context = self.machine.fence_context_alloc(1)
        self.seqno = 0
        ops = None
        if dynamic:
            ops = DmaBufAttachOps(p2p, invalidate_mappings=self._invalidate if revocable
                                  else None)
        self.attach = dmabuf.dynamic_attach(self.dev, ops, self)

    def _invalidate(self, attach: DmaBufAttachment) -> None:
        # Called with the resv lock held.
        self.invalidated += 1
        if not self.obey:
            return
        if self.table is None:
            return
        self.stale = True
        if self.inflight is None or self.inflight.is_signaled():
            self._drop_locked()
        # else: the DMA completion path unmaps once its fence signalled

    def _drop_locked(self) -> None:
        if self.table is not None:
            self.attach.unmap(self.table, BIDI)
            self.table = None
        self.stale = False

    def map_locked(self) -> Any:
        """Resv held: (re)map if needed; wait for KERNEL+WRITE fences (dynamic importers)."""
        if self.table is None or self.stale:
            if self.table is not None:
                self._drop_locked()
            self.table = self.attach.map(BIDI)
        if self.attach.is_dynamic:
            self.dmabuf.resv.wait_timeout(DmaResvUsage.WRITE, False, None)
        return self.table

    def begin_dma(self) -> tuple[Any, DmaFence]:
        """Lock, map, publish a write fence for the DMA about to run, unlock.

        Returns (table, fence); finish with :meth:`end_dma`.
        """
        resv = self.dmabuf.resv
        resv.lock(None)
        try:
            table = self.map_locked()
            self.seqno += 1
            fence = DmaFence(_FENCE_OPS, self.context, self.seqno, machine=self.machine)
            resv.reserve_fences(1)
            resv.add_fence(fence, DmaResvUsage.WRITE)
            self.inflight = fence
        finally:
            resv.unlock()
        return table, fence

    def end_dma(self, fence: DmaFence) -> None:
        """Signal the DMA's fence; if invalidated meanwhile, unmap now (lock taken)."""
        fence.signal()
        self.inflight = None
        if self.stale:
            resv = self.dmabuf.resv
            resv.lock(None)
            try:
                if self.stale:
                    self._drop_locked()
            finally:
                resv.unlock()
        fence.put()

    def write(self, data: np.ndarray, owner: int | None) -> None:
        """One DMA write of ``data`` at offset 0, tracked by a fence."""
        table, fence = self.begin_dma()
        try:
            self.engine.write(table, data, owner=owner)
        finally:
            self.end_dma(fence)

    def read(self, n: int, owner: int | None) -> np.ndarray:
        """One DMA read of ``n`` bytes at offset 0, tracked by a fence."""
        table, fence = self.begin_dma()
        try:
            return self.engine.read(table, owner=owner, length=n)
        finally:
            self.end_dma(fence)

    def release(self) -> None:
        """Unmap (if mapped) and detach."""
        if self.table is not None:
            self.dmabuf.resv.lock(None)
            try:
                self._drop_locked()
            finally:
                self.dmabuf.resv.unlock()
        self.dmabuf.detach(self.attach)


def errno_of(exc: BaseException) -> int:
    assert isinstance(exc, OSError), exc
    return exc.errno or 0


__all__ = ["BIDI", "DynamicMockExporter", "MiB", "MockExporter", "MockImporter", "errno",
           "errno_of", "make_phys"]
