"""An HMM mirroring device (SVM): lib/test_hmm.c ("dmirror") and the DMA half of mm/hmm.c.

The kernel's HMM test driver ``dmirror`` is the reference user of the HMM API: it mirrors a range
of a process address space in a device page table, keeps it coherent through an interval MMU
notifier, and migrates pages to and from its own device-private memory. :class:`HmmMirror` is
that driver on a PCI function of a :class:`~dmabuf.devices.platform.Platform`, with one difference
that matters for this project: its accesses are **real DMA** — the mirrored pages are mapped for
the device with ``hmm_dma_map_pfn`` (one IOVA window per mirror behind an IOMMU, ``dma_map_phys``
per page otherwise, bus addresses for ``BUS_ADDR`` P2P pages) and the device's engine moves the
bytes through that translation, checking that every page still belongs to the owner it had when
it was mapped. A mirror that missed an invalidation therefore faults (``IommuFault``) instead of
reading stale data.

* :meth:`HmmMirror.mirror` — open a mirror of ``[start, end)`` of an mm (``dmirror_fops_open`` +
  ``mmu_interval_notifier_insert``).
* :meth:`Mirror.fault` — the canonical driver loop (Documentation/mm/hmm.rst): ``read_begin``,
  ``mmap_read_lock``, ``hmm_range_fault`` (retry on ``-EBUSY`` until
  ``HMM_RANGE_DEFAULT_TIMEOUT``), take the mirror lock, ``read_retry`` (again if invalidated),
  then program the device page table (``hmm_dma_map_pfn``) under the lock.
* the notifier's ``invalidate`` takes the mirror lock, ``mmu_interval_set_seq``, and unmaps
  (``hmm_dma_unmap_pfn``) the device entries of the range; invalidations the device caused itself
  (``MMU_NOTIFY_MIGRATE`` with ``owner`` = this device) are skipped, as dmirror does.
* :meth:`Mirror.read` / :meth:`Mirror.write` — device DMA through the mirror (faulting what is
  missing, like a device page fault), under the mirror lock.
* device-private memory (``devmem_size``): a ``MemKind.DEVICE`` region given
  ``MEMORY_DEVICE_PRIVATE`` pages (owner = the device); :meth:`Mirror.migrate_to_device` runs
  ``migrate_vma_setup/pages/finalize`` with the device's copy engine; a CPU touch of such a page
  calls ``migrate_to_ram`` which migrates it back (``dmirror_devmem_fault``); freed device pages
  return to the device (``folio_free``).

``hmm_dma_map_alloc`` / ``hmm_dma_map_pfn`` / ``hmm_dma_unmap_pfn`` / ``hmm_dma_map_free`` are
mm/hmm.c functions; they live here because they need the DMA API (layer 4), which the ``mm``
layer must not import.

Deliberate differences: the device page table is the ``HmmDmaMap`` arrays (one entry per page of
the mirror) rather than dmirror's xarray; the copy engine moves device-private data through the
device's view of RAM (``dma_map_phys_ranges``) and writes its own memory directly; no
``migrate_device_range`` eviction, no device-exclusive entries, no snapshot ioctl.

Kernel: lib/test_hmm.c (dmirror_range_fault, dmirror_interval_invalidate, dmirror_fault,
dmirror_migrate_to_device, dmirror_devmem_fault, dmirror_devmem_free), mm/hmm.c
(hmm_dma_map_alloc, hmm_dma_map_free, hmm_dma_map_pfn, hmm_dma_unmap_pfn).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dmabuf.devices.base import Device
from dmabuf.dma.defs import DMA_ATTR_MMIO, DmaDataDirection
from dmabuf.dma.device import DmaDevice
from dmabuf.dma.dma_iommu import (
    DmaIovaState,
    dma_iova_free,
    dma_iova_link,
    dma_iova_sync,
    dma_iova_try_alloc,
    dma_iova_unlink,
    dma_use_iova,
)
from dmabuf.dma.fabric import PciP2pdmaMapType
from dmabuf.dma.mapping import (
    dma_addressing_limited,
    dma_map_phys,
    dma_map_phys_ranges,
    dma_unmap_phys,
    dma_unmap_phys_ranges,
)
from dmabuf.dma.pci_p2pdma import pci_p2pdma_bus_addr_map, pci_p2pdma_state
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.hmm import (
    HMM_PFN_DMA_MAPPED,
    HMM_PFN_INOUT_FLAGS,
    HMM_PFN_P2PDMA,
    HMM_PFN_P2PDMA_BUS,
    HMM_PFN_REQ_FAULT,
    HMM_PFN_REQ_WRITE,
    HMM_PFN_VALID,
    HMM_PFN_WRITE,
    HMM_RANGE_DEFAULT_TIMEOUT,
    HmmRange,
    hmm_pfn_to_phys,
    hmm_range_fault,
)
from dmabuf.mm.memremap import (
    DevPagemap,
    DevPagemapOps,
    MemoryType,
    memremap_pages,
    memremap_registry,
    page_ranges,
    pages_of_ranges,
)
from dmabuf.mm.migrate import (
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    MigrateVma,
    alloc_page_vma,
    migrate_pfn,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from dmabuf.mm.mmu_notifier import (
    MmuIntervalNotifier,
    MmuNotifierRange,
    MmuNotifyEvent,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_interval_set_seq,
    mmu_notifier_range_blockable,
)
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE, MemKind
from dmabuf.mm.ranges import RANGE_DTYPE, coalesce
from dmabuf.mm.vma import VM_FAULT_SIGBUS, MmStruct, VmFault
from dmabuf.pci.topology import PciDev

if TYPE_CHECKING:
    from dmabuf.devices.platform import Platform

__all__ = [
    "HmmDmaMap",
    "HmmMirror",
    "Mirror",
    "hmm_dma_map_alloc",
    "hmm_dma_map_free",
    "hmm_dma_map_pfns",
    "hmm_dma_unmap_pfns",
]

_U = np.uint64(PAGE_SHIFT)
_VALID = np.uint64(HMM_PFN_VALID)
_WRITE = np.uint64(HMM_PFN_WRITE)
_MAPPED = np.uint64(HMM_PFN_DMA_MAPPED)
_P2P = np.uint64(HMM_PFN_P2PDMA)
_BUS = np.uint64(HMM_PFN_P2PDMA_BUS)
_BIDIR = DmaDataDirection.DMA_BIDIRECTIONAL


# ------------------------------------------------------------------------------------------------
# mm/hmm.c: DMA mapping of HMM pfns
# ------------------------------------------------------------------------------------------------


@dataclass
class HmmDmaMap:
    """``struct hmm_dma_map``: IOVA state, the pfn list (= ``range.hmm_pfns``) and DMA addresses.

    Attributes:
        state: the IOVA transaction (``dma_use_iova(state)`` when behind a DMA-API IOMMU).
        pfn_list: ``uint64`` HMM pfns with the sticky ``DMA_MAPPED``/``P2PDMA``/``P2PDMA_BUS``.
        dma_list: ``uint64`` DMA address per entry (valid where ``DMA_MAPPED``).
        dma_entry_size: bytes per entry (``PAGE_SIZE``).
    """

    state: DmaIovaState = field(default_factory=DmaIovaState)
    pfn_list: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    dma_list: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    dma_entry_size: int = PAGE_SIZE


def hmm_dma_map_alloc(dev: DmaDevice, nr_entries: int,
                      dma_entry_size: int = PAGE_SIZE) -> HmmDmaMap:
    """Allocate the pfn/DMA lists and one IOVA window for ``nr_entries`` pages.

    Context: never sleeps.
    Returns: an :class:`HmmDmaMap`.
    Raises:
        DmaBufError(EOPNOTSUPP): the device needs DMA syncs (not coherent) or is addressing
            limited (swiotlb would break HMM's no-ownership-transfer rule).
        DmaBufError(EINVAL): bad sizes.
    Kernel: mm/hmm.c, hmm_dma_map_alloc().
    """
    if isinstance(nr_entries, bool) or not isinstance(nr_entries, int) or nr_entries <= 0:
        raise DmaBufError(errno.EINVAL, f"hmm_dma_map_alloc: nr_entries {nr_entries!r}")
    if dma_entry_size != PAGE_SIZE:
        raise DmaBufError(errno.EINVAL, "hmm_dma_map_alloc: the model supports PAGE_SIZE "
                          "entries only")
    if not dev.coherent:
        raise DmaBufError(errno.EOPNOTSUPP, f"{dev.name}: HMM DMA mapping needs a coherent "
                          "device (no dma_sync)")
    if dma_addressing_limited(dev):
        raise DmaBufError(errno.EOPNOTSUPP, f"{dev.name} is DMA addressing limited (swiotlb "
                          "bouncing is not allowed for HMM)")
    m = HmmDmaMap(pfn_list=np.zeros(nr_entries, dtype=np.uint64),
                  dma_list=np.zeros(nr_entries, dtype=np.uint64))
    dma_iova_try_alloc(dev, m.state, 0, nr_entries * dma_entry_size)
    return m


def hmm_dma_map_free(dev: DmaDevice, m: HmmDmaMap) -> None:
    """Free the IOVA window and the lists — ``hmm_dma_map_free()`` (unmap every entry first).

    Raises: ContractViolation: entries are still mapped (the IOVA layer checks it).
    Kernel: mm/hmm.c, hmm_dma_map_free().
    """
    if dma_use_iova(m.state):
        dma_iova_free(dev, m.state)
    m.pfn_list = np.zeros(0, dtype=np.uint64)
    m.dma_list = np.zeros(0, dtype=np.uint64)


def _runs(idx: np.ndarray, paddr: np.ndarray, attrs: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted entries into runs of consecutive indices with contiguous pages."""
    if idx.size == 0:
        return []
    brk = (np.diff(idx) != 1) | (np.diff(paddr.astype(np.int64)) != PAGE_SIZE) | \
        (np.diff(attrs) != 0)
    starts = np.concatenate(([0], np.flatnonzero(brk) + 1))
    ends = np.concatenate((starts[1:], [idx.size]))
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def hmm_dma_map_pfns(dev: DmaDevice, m: HmmDmaMap, idxs: Any) -> np.ndarray:
    """Map entries ``idxs`` (valid HMM pfns) for ``dev`` — ``hmm_dma_map_pfn()`` per entry.

    Per page, ``pci_p2pdma_state()`` decides: ordinary memory is mapped (IOVA link or
    ``dma_map_phys``); ``THRU_HOST_BRIDGE`` P2P is mapped with ``DMA_ATTR_MMIO`` and marked
    ``HMM_PFN_P2PDMA``; ``BUS_ADDR`` uses the bus address (``HMM_PFN_P2PDMA_BUS``, no IOMMU
    entry). Entries already ``DMA_MAPPED`` keep their address. Consecutive pages are linked in
    one call (the same IOVA layout as per-entry links).

    Returns: the DMA address of each entry.
    Raises:
        DmaBufError(EREMOTEIO): a P2P page the fabric does not let ``dev`` reach (the kernel
            returns ``DMA_MAPPING_ERROR``; the model names the reason).
        DmaBufError(ENOMEM): the mapping failed.
        ContractViolation: an entry is not ``HMM_PFN_VALID``.
    Kernel: mm/hmm.c, hmm_dma_map_pfn().
    """
    idx = np.atleast_1d(np.asarray(idxs, dtype=np.int64))
    pf = m.pfn_list[idx]
    if bool(np.any((pf & _VALID) == 0)):
        raise ContractViolation("hmm_dma_map_pfn", "entry is not HMM_PFN_VALID")
    todo = (pf & _MAPPED) == 0
    out = m.dma_list[idx].copy()
    if not bool(todo.any()):
        return out
    ti = idx[todo]
    paddr = hmm_pfn_to_phys(m.pfn_list[ti])
    kinds = np.zeros(ti.size, dtype=np.int8)       # 0 normal, 1 MMIO (host bridge), 2 bus
    bus = np.zeros(ti.size, dtype=np.uint64)
    regions = dev.phys.regions
    bases = np.array([r.base for r in regions], dtype=np.uint64)
    is_mmio = np.array([r.kind is MemKind.MMIO for r in regions] + [False], dtype=bool)
    ri = np.searchsorted(bases, paddr, side="right").astype(np.int64) - 1
    for k in np.flatnonzero(is_mmio[ri]).tolist():       # ri == -1 selects the trailing False
        a = int(paddr[k])
        st = pci_p2pdma_state(dev, a)
        if st.map is PciP2pdmaMapType.NONE:
            kinds[k] = 1
        elif st.map is PciP2pdmaMapType.THRU_HOST_BRIDGE:
            kinds[k] = 1
            m.pfn_list[ti[k]] |= _P2P
        elif st.map is PciP2pdmaMapType.BUS_ADDR:
            kinds[k] = 2
            bus[k] = np.uint64(pci_p2pdma_bus_addr_map(st, a))
            dev.note_bus_window(st.provider or "", a, st.provider_bus_offset)
        else:
            raise DmaBufError(errno.EREMOTEIO, f"hmm_dma_map_pfn: {dev.name} cannot reach P2P "
                              f"page {a:#x} of {st.provider} ({st.map.name})")
    isbus = kinds == 2
    m.dma_list[ti[isbus]] = bus[isbus]
    m.pfn_list[ti[isbus]] |= _BUS | _MAPPED
    rest = ~isbus
    r_i, r_p, r_k = ti[rest], paddr[rest], kinds[rest]
    order = np.argsort(r_i, kind="stable")
    r_i, r_p, r_k = r_i[order], r_p[order], r_k[order]
    es = m.dma_entry_size
    if dma_use_iova(m.state):
        for s, e in _runs(r_i, r_p, r_k):
            attrs = DMA_ATTR_MMIO if r_k[s] == 1 else 0
            off = int(r_i[s]) * es
            dma_iova_link(dev, m.state, int(r_p[s]), off, (e - s) * es, _BIDIR, attrs)
            dma_iova_sync(dev, m.state, off, (e - s) * es)
        m.dma_list[r_i] = np.uint64(m.state.addr) + r_i.astype(np.uint64) * np.uint64(es)
    else:
        for k in range(r_i.size):
            attrs = DMA_ATTR_MMIO if r_k[k] == 1 else 0
            m.dma_list[r_i[k]] = dma_map_phys(dev, int(r_p[k]), es, _BIDIR, attrs)
    m.pfn_list[r_i] |= _MAPPED
    return m.dma_list[idx].copy()


def hmm_dma_unmap_pfns(dev: DmaDevice, m: HmmDmaMap, idxs: Any) -> int:
    """Unmap entries — ``hmm_dma_unmap_pfn()`` per entry; returns how many were mapped.

    Entries that are not ``VALID | DMA_MAPPED`` are skipped (the kernel returns false); bus
    addresses need nothing; the sticky bits are cleared.

    Kernel: mm/hmm.c, hmm_dma_unmap_pfn().
    """
    idx = np.atleast_1d(np.asarray(idxs, dtype=np.int64))
    if idx.size == 0:
        return 0
    pf = m.pfn_list[idx]
    mapped = (pf & (_VALID | _MAPPED)) == (_VALID | _MAPPED)
    idx = idx[mapped]
    if idx.size == 0:
        return 0
    pf = m.pfn_list[idx]
    isbus = (pf & _BUS) != 0
    rest = np.sort(idx[~isbus])
    es = m.dma_entry_size
    if rest.size:
        mmio = ((m.pfn_list[rest] & _P2P) != 0).astype(np.int8)
        if dma_use_iova(m.state):
            for s, e in _runs(rest, rest.astype(np.uint64) * np.uint64(PAGE_SIZE), mmio):
                attrs = DMA_ATTR_MMIO if mmio[s] else 0
                dma_iova_unlink(dev, m.state, int(rest[s]) * es, (e - s) * es, _BIDIR, attrs)
        else:
            for k in range(rest.size):
                attrs = DMA_ATTR_MMIO if mmio[k] else 0
                dma_unmap_phys(dev, int(m.dma_list[rest[k]]), es, _BIDIR, attrs)
    m.pfn_list[idx] &= ~np.uint64(HMM_PFN_INOUT_FLAGS)
    m.dma_list[idx] = 0
    return int(idx.size)


# ------------------------------------------------------------------------------------------------
# lib/test_hmm.c: the dmirror device
# ------------------------------------------------------------------------------------------------


class _MirrorOps:
    """``dmirror_mrn_ops``."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror

    def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange, cur_seq: int) -> bool:
        """``dmirror_interval_invalidate()``."""
        return self.mirror._invalidate(rng, cur_seq)


class Mirror:
    """One mirrored range of one process — ``struct dmirror`` (see the module docstring).

    Attributes:
        dev: the :class:`HmmMirror`.
        mm: the address space; ``start``/``end`` the mirrored range.
        notifier: the interval notifier.
        dmap: the device page table (:class:`HmmDmaMap`).
        local: mask of entries that are this device's own private pages (no DMA mapping).
        owners: PhysMemory owner id of each mapped page at map time (checked at every DMA).
        stats: ``faults``, ``hmm_retries``, ``invalidations``, ``dma_bytes``.
    """

    def __init__(self, dev: HmmMirror, mm: MmStruct, start: int, end: int) -> None:
        self.dev = dev
        self.mm = mm
        self.start = start
        self.end = end
        n = (end - start) >> PAGE_SHIFT
        self.lock = dev.machine.sched.lock(f"{dev.name}.dmirror.mutex")
        self.dmap = hmm_dma_map_alloc(dev.dma, n)
        self.local = np.zeros(n, dtype=bool)
        self.owners = np.zeros(n, dtype=np.int64)
        self.notifier = MmuIntervalNotifier()
        self.stats = {"faults": 0, "hmm_retries": 0, "invalidations": 0, "dma_bytes": 0}
        self.closed = False
        mmu_interval_notifier_insert(self.notifier, mm, start, end - start, _MirrorOps(self))

    def __repr__(self) -> str:
        return f"<Mirror {self.dev.name} [{self.start:#x}, {self.end:#x}) of {self.mm.name}>"

    @property
    def npages(self) -> int:
        """Pages mirrored."""
        return (self.end - self.start) >> PAGE_SHIFT

    def _lock(self) -> None:
        self.dev.machine.lockdep.acquire(self.lock, "dmirror.mutex")
        self.lock.acquire()

    def _unlock(self) -> None:
        self.lock.release()
        self.dev.machine.lockdep.release(self.lock, "dmirror.mutex")

    # ------------------------------------------------------------------ invalidation
    def _invalidate(self, rng: MmuNotifierRange, cur_seq: int) -> bool:
        if rng.event is MmuNotifyEvent.MMU_NOTIFY_MIGRATE and rng.owner is self.dev:
            return True
        if mmu_notifier_range_blockable(rng):
            self._lock()
        elif not self.lock.acquire(blocking=False):
            return False
        else:
            self.dev.machine.lockdep.acquire(self.lock, "dmirror.mutex", trylock=True)
        try:
            mmu_interval_set_seq(self.notifier, cur_seq)
            lo = max(rng.start, self.start)
            hi = min(rng.end, self.end)
            if lo < hi:
                self.stats["invalidations"] += 1
                self._zap((lo - self.start) >> PAGE_SHIFT, (hi - self.start) >> PAGE_SHIFT)
        finally:
            self._unlock()
        return True

    def _zap(self, i0: int, i1: int) -> None:
        """``dmirror_do_update``: drop device entries ``[i0, i1)`` (mirror lock held)."""
        idx = np.arange(i0, i1, dtype=np.int64)
        hmm_dma_unmap_pfns(self.dev.dma, self.dmap, idx)
        self.dmap.pfn_list[i0:i1] = 0
        self.local[i0:i1] = False
        self.owners[i0:i1] = 0

    # ------------------------------------------------------------------ faults
    def fault(self, addr: int, npages: int, write: bool = False,
              timeout_ms: int = HMM_RANGE_DEFAULT_TIMEOUT) -> None:
        """Mirror ``npages`` pages from ``addr`` — ``dmirror_fault()`` / ``dmirror_range_fault()``.

        Context: may sleep; takes ``mmap_lock`` (read) and the mirror lock (not together).
        Raises:
            DmaBufError(EBUSY): still invalidated after ``timeout_ms`` of retries.
            DmaBufError(EFAULT/EPERM): from :func:`hmm_range_fault`.
            DmaBufError(EREMOTEIO): a P2P page this device cannot reach.
            DmaBufError(EINVAL): outside the mirror.
        Kernel: lib/test_hmm.c, dmirror_fault(), dmirror_range_fault(); Documentation/mm/hmm.rst.
        """
        start = addr & ~(PAGE_SIZE - 1)
        end = start + npages * PAGE_SIZE
        if npages <= 0 or start < self.start or end > self.end:
            raise DmaBufError(errno.EINVAL, f"{self!r}: fault of [{start:#x}, {end:#x}) is "
                              "outside the mirror")
        sched = self.dev.machine.sched
        deadline = sched.now() + timeout_ms / 1000.0
        i0 = (start - self.start) >> PAGE_SHIFT
        flags = HMM_PFN_REQ_FAULT | (HMM_PFN_REQ_WRITE if write else 0)
        while True:
            if sched.now() > deadline:
                raise DmaBufError(errno.EBUSY, f"{self!r}: range kept being invalidated for "
                                  f"{timeout_ms} ms")
            seq = mmu_interval_read_begin(self.notifier)
            rng = HmmRange(self.notifier, seq, start, end,
                           hmm_pfns=np.zeros(npages, dtype=np.uint64), default_flags=flags,
                           dev_private_owner=self.dev)
            with self.mm.read_locked():
                try:
                    hmm_range_fault(rng)
                except DmaBufError as e:
                    if e.errno == errno.EBUSY:
                        self.stats["hmm_retries"] += 1
                        sched.checkpoint("dmirror hmm retry")
                        continue
                    raise
            self._lock()
            try:
                if mmu_interval_read_retry(self.notifier, seq):
                    self.stats["hmm_retries"] += 1
                    continue
                self._program(i0, rng.hmm_pfns)
            finally:
                self._unlock()
            self.stats["faults"] += 1
            return

    def _program(self, i0: int, pfns: np.ndarray) -> None:
        """Install fresh HMM pfns in the device page table (mirror lock held)."""
        n = pfns.size
        sl = slice(i0, i0 + n)
        old = self.dmap.pfn_list[sl]
        valid = (pfns & _VALID) != 0
        changed = (old & ~np.uint64(HMM_PFN_INOUT_FLAGS)) != pfns
        stale = np.flatnonzero(changed & ((old & _MAPPED) != 0)) + i0
        if stale.size:
            hmm_dma_unmap_pfns(self.dev.dma, self.dmap, stale)
        self.dmap.pfn_list[sl] = (self.dmap.pfn_list[sl] & np.uint64(HMM_PFN_INOUT_FLAGS)) | pfns
        paddr = hmm_pfn_to_phys(pfns)
        local = valid & (self.dev.remap_types(paddr) == int(MemoryType.MEMORY_DEVICE_PRIVATE))
        self.local[sl] = local
        owners = np.zeros(n, dtype=np.int64)
        if bool(valid.any()):
            owners[valid] = self.dev.phys.owners_of(page_ranges(paddr[valid])).astype(np.int64)
        self.owners[sl] = owners
        mapidx = np.flatnonzero(valid & ~local) + i0
        if mapidx.size:
            hmm_dma_map_pfns(self.dev.dma, self.dmap, mapidx)

    # ------------------------------------------------------------------ device DMA
    def _ensure(self, start: int, end: int, write: bool) -> tuple[int, int]:
        i0 = (start - self.start) >> PAGE_SHIFT
        i1 = ((end - 1 - self.start) >> PAGE_SHIFT) + 1
        for _ in range(1000):
            self._lock()
            pf = self.dmap.pfn_list[i0:i1]
            ok = (pf & _VALID) != 0
            if write:
                ok &= (pf & _WRITE) != 0
            if bool(ok.all()):
                return i0, i1                       # returns with the mirror lock held
            self._unlock()
            self.fault(start, i1 - i0, write)
        raise DmaBufError(errno.EBUSY, f"{self!r}: could not keep the range mirrored")

    def _access(self, addr: int, length: int, write: bool, data: np.ndarray | None) -> Any:
        if length <= 0 or addr < self.start or addr + length > self.end:
            raise DmaBufError(errno.EINVAL, f"{self!r}: access [{addr:#x}, +{length}) outside "
                              "the mirror")
        start = addr & ~(PAGE_SIZE - 1)
        end = -(-(addr + length) // PAGE_SIZE) * PAGE_SIZE
        i0, i1 = self._ensure(start, end, write)
        try:
            dma = self.dmap.dma_list[i0:i1]
            local = self.local[i0:i1]
            # device addresses: DMA addresses for mapped pages, physical for local memory
            addrs = np.where(local, hmm_pfn_to_phys(self.dmap.pfn_list[i0:i1]), dma)
            r = np.empty(i1 - i0, dtype=RANGE_DTYPE)
            r["addr"] = addrs
            r["len"] = PAGE_SIZE
            head = addr - start
            owners = tuple(sorted({int(o) for o in self.owners[i0:i1].tolist()}))
            eng = self.dev.engine
            if bool(local.any()):
                return self._access_mixed(r, local, head, length, write, data, owners)
            rr = coalesce(r)
            self.dev_stats(length)
            if write:
                assert data is not None
                eng.write(rr, data, owner=owners, offset=head)
                return None
            return eng.read(rr, owner=owners, offset=head, length=length)
        finally:
            self._unlock()

    def _access_mixed(self, r: np.ndarray, local: np.ndarray, head: int, length: int,
                      write: bool, data: np.ndarray | None, owners: tuple[int, ...]) -> Any:
        """Pages of this device's own memory are reached directly, others through DMA."""
        eng = self.dev.engine
        phys = self.dev.phys
        out = np.empty(length, dtype=np.uint8) if not write else None
        pos = 0
        for k in range(r.size):
            lo = head if k == 0 else 0
            n = min(PAGE_SIZE - lo, length - pos)
            if n <= 0:
                break
            one = r[k:k + 1]
            if local[k]:
                seg = np.array([(int(one["addr"][0]) + lo, n)], dtype=RANGE_DTYPE)
                phys.check_owned(seg, self.dev.devmem_owner)
                if write:
                    assert data is not None
                    phys.write(seg, data[pos:pos + n])
                else:
                    assert out is not None
                    out[pos:pos + n] = phys.read(seg)
            elif write:
                assert data is not None
                eng.write(one, data[pos:pos + n], owner=owners, offset=lo)
            else:
                assert out is not None
                out[pos:pos + n] = eng.read(one, owner=owners, offset=lo, length=n)
            pos += n
        self.dev_stats(length)
        return out

    def dev_stats(self, n: int) -> None:
        """Count device bytes moved.

        Model-only: a byte counter for tests (lib/test_hmm.c counts pages, not bytes).
        """
        self.stats["dma_bytes"] += n

    def read(self, addr: int, length: int) -> np.ndarray:
        """The device reads ``length`` bytes of the process at ``addr`` (``dmirror_read``).

        Missing entries are faulted first (a device page fault); the DMA then runs under the
        mirror lock, so no invalidation can slip between the check and the transfer.
        Raises: see :meth:`fault`; IommuFault when a page changed owner behind the mirror.
        Kernel: lib/test_hmm.c, dmirror_read(), dmirror_do_read().
        """
        out: np.ndarray = self._access(addr, length, False, None)
        return out

    def write(self, addr: int, data: Any) -> None:
        """The device writes ``data`` at ``addr`` of the process (``dmirror_write``).

        Raises: as :meth:`read` (write faults: ``EPERM`` on a read-only VMA).
        Kernel: lib/test_hmm.c, dmirror_write(), dmirror_do_write().
        """
        src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) \
            if not isinstance(data, np.ndarray) else np.ascontiguousarray(data).view(np.uint8)
        self._access(addr, int(src.size), True, src.reshape(-1))

    def mirrored(self) -> np.ndarray:
        """Mask of pages currently valid in the device page table.

        Model-only: introspection of dmirror's page-table xarray (lib/test_hmm.c, dmirror->pt).
        """
        return (self.dmap.pfn_list & _VALID) != 0

    # ------------------------------------------------------------------ migration
    def migrate_to_device(self, addr: int, npages: int) -> int:
        """Move pages to device-private memory — ``dmirror_migrate_to_device()``.

        Returns: pages migrated.
        Context: takes ``mmap_lock`` for reading; may sleep.
        Raises: DmaBufError(EINVAL): outside the mirror / no VMA / no device memory;
            DmaBufError(ENOMEM): device memory full.
        Kernel: lib/test_hmm.c, dmirror_migrate_to_device(), dmirror_migrate_alloc_and_copy(),
            dmirror_migrate_finalize_and_map().
        """
        dev = self.dev
        if dev.pgmap is None:
            raise DmaBufError(errno.EINVAL, f"{dev.name} has no device-private memory "
                              "(devmem_size=0)")
        start = addr & ~(PAGE_SIZE - 1)
        end = start + npages * PAGE_SIZE
        if npages <= 0 or start < self.start or end > self.end:
            raise DmaBufError(errno.EINVAL, "migrate_to_device outside the mirror")
        with self.mm.read_locked():
            vma = self.mm.vma_lookup(start)
            if vma is None or end > vma.end:
                raise DmaBufError(errno.EINVAL, f"no single VMA covers [{start:#x}, {end:#x})")
            args = MigrateVma(vma, start, end, pgmap_owner=dev, flags=MIGRATE_VMA_SELECT_SYSTEM)
            migrate_vma_setup(args)
            dev._zap_mirrors(self.mm, start, end)
            try:
                dev._alloc_and_copy_to_device(args)
            except BaseException:
                migrate_vma_finalize(args)
                raise
            migrate_vma_pages(args)
            migrate_vma_finalize(args)
        moved = int(np.count_nonzero((args.src & np.uint64(MIGRATE_PFN_MIGRATE)) != 0))
        # dmirror_migrate_finalize_and_map: the device maps its new pages at once
        self.fault(start, npages, write=False)
        return moved

    def close(self) -> None:
        """Release the mirror: remove the notifier, unmap every entry, free the IOVA window.

        Context: may sleep (waits for an invalidation in progress). Idempotent.
        Kernel: lib/test_hmm.c, dmirror_fops_release() → mmu_interval_notifier_remove().
        """
        if self.closed:
            return
        self.closed = True
        mmu_interval_notifier_remove(self.notifier)
        self._lock()
        try:
            self._zap(0, self.npages)
            hmm_dma_map_free(self.dev.dma, self.dmap)
        finally:
            self._unlock()
        if self in self.dev.mirrors:
            self.dev.mirrors.remove(self)


class _DevmemOps(DevPagemapOps):
    """``dmirror_devmem_ops``."""

    def __init__(self, dev: HmmMirror) -> None:
        self.dev = dev

    def folio_free(self, pgmap: DevPagemap, paddrs: np.ndarray) -> None:
        """``dmirror_devmem_free()``: the page returns to the device's free pool."""
        self.dev._devmem_free(paddrs)

    def migrate_to_ram(self, vmf: VmFault) -> int:
        """``dmirror_devmem_fault()``: migrate the faulting page back to system RAM."""
        return self.dev._devmem_fault(vmf)


class HmmMirror(Device):
    """A dmirror-like SVM device on a PCI function (see the module docstring).

    ``platform.bind(HmmMirror, "gpu1", devmem_size=64 MiB)``.

    Args:
        devmem_size: bytes of device-private memory (0: none).

    Attributes:
        mirrors: open :class:`Mirror` s.
        pgmap: the DEVICE_PRIVATE page map (None without device memory).
        devmem_owner: PhysMemory owner of device pages in use.
        stats: ``migrate_to_device`` / ``migrate_to_ram`` pages.

    Kernel: lib/test_hmm.c (dmirror_device_init, dmirror_allocate_chunk).
    """

    driver_name: ClassVar[str] = "hmm_dmirror"
    rings: ClassVar[tuple[str, ...]] = ("copy",)

    def __init__(self, platform: Platform, pdev: PciDev, *, name: str | None = None,
                 devmem_size: int = 0) -> None:
        if isinstance(devmem_size, bool) or not isinstance(devmem_size, int) or devmem_size < 0 \
                or devmem_size % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"devmem_size {devmem_size!r} must be a page "
                              "multiple >= 0")
        super().__init__(platform, pdev, name=name)
        self.mirrors: list[Mirror] = []
        self.pgmap: DevPagemap | None = None
        self.devmem_owner = self.phys.new_owner(f"{self.name} device-private memory")
        self.stats = {"migrate_to_device": 0, "migrate_to_ram": 0}
        if devmem_size:
            rname = f"{self.bdf} devmem"
            try:
                region = self.phys.region(rname)
                if region.size != devmem_size:
                    raise DmaBufError(errno.EBUSY, f"{rname} exists with another size")
            except DmaBufError as e:
                if e.errno != errno.ENOENT:
                    raise
                region = self.phys.add_region(rname, devmem_size, MemKind.DEVICE,
                                              numa_node=platform.numa_node_of(pdev))
            self.devmem = region
            self.pgmap = DevPagemap(MemoryType.MEMORY_DEVICE_PRIVATE, region.base, region.size,
                                    owner=self, ops=_DevmemOps(self), name=f"{self.name} devmem")
            memremap_pages(self.phys, self.pgmap)

    def remap_types(self, paddrs: np.ndarray) -> np.ndarray:
        """ZONE_DEVICE type of each physical address (0: ordinary).

        Kernel: include/linux/memremap.h, page_pgmap(page)->type, vectorised.
        """
        return memremap_registry(self.phys).types(paddrs)

    def mirror(self, mm: MmStruct, start: int, length: int) -> Mirror:
        """Open a mirror of ``[start, start + length)`` of ``mm`` (page aligned).

        Context: may sleep (takes ``mmap_lock`` the first time the mm gets notifiers).
        Raises: DmaBufError(EINVAL): unaligned or empty; what the notifier insert raises.
        Kernel: lib/test_hmm.c, dmirror_fops_open(), mmu_interval_notifier_insert().
        """
        if start % PAGE_SIZE or length <= 0 or length % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, "mirror range must be page aligned and non-empty")
        self._check_alive("mirror")
        mr = Mirror(self, mm, start, start + length)
        self.mirrors.append(mr)
        return mr

    # ------------------------------------------------------------------ device memory
    def _devmem_alloc(self, n: int) -> np.ndarray:
        assert self.pgmap is not None
        r = self.phys.alloc(self.devmem, n * PAGE_SIZE, self.devmem_owner)
        pages = pages_of_ranges(r)
        self.pgmap.page_init(pages)
        return pages

    def _devmem_free(self, paddrs: np.ndarray) -> None:
        self.phys.free(page_ranges(np.sort(paddrs)))

    def _copy_from_ram(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Copy engine: RAM pages (DMA through this device's view) → own device pages."""
        m = dma_map_phys_ranges(self.dma, page_ranges(src), _BIDIR)
        try:
            data = self.engine.read(m.dma, owner=None)
        finally:
            dma_unmap_phys_ranges(self.dma, m)
        self.phys.write(page_ranges(dst), data)          # its own memory: no translation

    def _copy_to_ram(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Copy engine: own device pages → RAM pages (DMA write through this device's view)."""
        data = self.phys.read(page_ranges(src))
        m = dma_map_phys_ranges(self.dma, page_ranges(dst), _BIDIR)
        try:
            self.engine.write(m.dma, data, owner=None)
        finally:
            dma_unmap_phys_ranges(self.dma, m)

    def _zap_mirrors(self, mm: MmStruct, start: int, end: int) -> None:
        """Drop device entries of ``[start, end)`` in every mirror of ``mm`` (migration paths
        skip their own MMU_NOTIFY_MIGRATE invalidation, as dmirror does)."""
        for mr in list(self.mirrors):
            if mr.mm is not mm:
                continue
            lo, hi = max(start, mr.start), min(end, mr.end)
            if lo < hi:
                mr._lock()
                try:
                    mr._zap((lo - mr.start) >> PAGE_SHIFT, (hi - mr.start) >> PAGE_SHIFT)
                finally:
                    mr._unlock()

    def _alloc_and_copy_to_device(self, args: MigrateVma) -> None:
        """``dmirror_migrate_alloc_and_copy()``."""
        mig = (args.src & np.uint64(MIGRATE_PFN_MIGRATE)) != 0
        n = int(np.count_nonzero(mig))
        if n == 0:
            return
        dpages = self._devmem_alloc(n)
        src_pa = args.src_paddrs()[mig]
        has = src_pa != 0
        if bool(has.any()):
            self._copy_from_ram(src_pa[has], dpages[has])
        if bool((~has).any()):
            for a in dpages[~has].tolist():
                self.phys.fill(np.array([(a, PAGE_SIZE)], dtype=RANGE_DTYPE), 0)
        dst = migrate_pfn(dpages >> _U) | np.uint64(MIGRATE_PFN_WRITE)
        args.dst[mig] = dst
        self.stats["migrate_to_device"] += n

    def _devmem_fault(self, vmf: VmFault) -> int:
        """``dmirror_devmem_fault()``: migrate one device page back to RAM."""
        vma = vmf.vma
        args = MigrateVma(vma, vmf.address, vmf.address + PAGE_SIZE, pgmap_owner=self,
                          flags=MIGRATE_VMA_SELECT_DEVICE_PRIVATE, fault_page=vmf.page)
        try:
            migrate_vma_setup(args)
        except DmaBufError:
            return VM_FAULT_SIGBUS
        self._zap_mirrors(vma.mm, args.start, args.end)
        mig = (args.src & np.uint64(MIGRATE_PFN_MIGRATE)) != 0
        if bool(mig.any()):
            src = args.src_paddrs()[mig]
            dst = alloc_page_vma(vma, int(src.size))
            self._copy_to_ram(src, dst)
            args.dst[mig] = migrate_pfn(dst >> _U) | np.uint64(MIGRATE_PFN_VALID)
            self.stats["migrate_to_ram"] += int(src.size)
        migrate_vma_pages(args)
        migrate_vma_finalize(args)
        return 0

    def remove(self) -> None:
        """Close every mirror, then the base teardown (device memory stays registered).

        Model-only: driver unbind of the modelled dmirror device (lib/test_hmm.c tears down in
        hmm_dmirror_exit(), which also frees device memory).
        """
        for mr in list(self.mirrors):
            mr.close()
        super().remove()

    def describe(self) -> dict[str, Any]:
        """Snapshot: mirrors, device memory, migrations.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        d = super().describe()
        d.update({"mirrors": [repr(m) for m in self.mirrors],
                  "devmem": None if self.pgmap is None else self.pgmap.describe(),
                  "migrations": dict(self.stats)})
        return d
