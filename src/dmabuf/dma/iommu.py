"""IOMMU domains: page tables, IOTLB, flush queue, faults — drivers/iommu/iommu.c, io-pgtable.

An :class:`IommuDomain` is the translation context shared by every device of one IOMMU group
(``struct iommu_domain``). Its type decides how the DMA API uses it, as in the kernel:

* ``DMA`` — DMA-API managed, **strict**: every unmap is followed by an IOTLB invalidation.
* ``DMA_FQ`` — DMA-API managed, **lazy**: unmaps of ``dma_unmap_*`` / ``dma_iova_destroy`` queue
  the IOVA on a flush queue; one IOTLB flush later (queue full: 256 entries, or 10 ms) frees the
  whole batch. Until then the IOVA is not reusable. (``dma_iova_unlink`` always syncs at once.)
* ``UNMANAGED`` — driven directly with :meth:`IommuDomain.map` / :meth:`IommuDomain.unmap` by
  iommufd / VFIO; no IOVA allocator.
* ``IDENTITY`` — passthrough: DMA addresses are physical addresses (dma-direct is used).
* ``BLOCKED`` — every DMA faults.

The page table is a two-level table at 4 KiB granule: a dict from the 1 GiB-aligned IOVA block to
two numpy leaves (``pfn + 1`` as int64, 0 = not present; a ``prot`` byte). Mapping and unmapping
are slice assignments; translating a range list is a handful of vectorised numpy operations over
the pages it touches. Not modelled: large-page PTEs (the IOTLB reach they buy is a timing matter
for the simulator, not a correctness one).

**IOTLB model.** The model keeps the page table authoritative: a DMA through an unmapped IOVA
always faults, even when real hardware could still hit a stale IOTLB entry of a queued (lazy)
unmap — the fault record then says so (``stale_iotlb=True``), which is exactly the window the
flush queue trades for speed. A mapping made with ``map(..., sync=False)`` (``iommu_map_nosync``,
what ``dma_iova_link`` does) is marked *pending* until ``iotlb_sync_map`` covers it; with
``strict_sync_map`` (default) a DMA through a pending PTE faults ("missing dma_iova_sync"), which
real hardware does whenever it caches non-present entries (VT-d caching mode, virtio-iommu).

Counters (:class:`IommuStats`): ``map_calls``/``unmap_calls`` (page-table operations),
``sync_map`` (``iotlb_sync_map``: one per ``iommu_map``, one per ``dma_iova_sync``),
``iotlb_flushes`` (invalidations after unmaps: one per strict unmap, one per flush-queue flush),
``fq_queued``, ``fq_flushes``, ``translations``, ``faults``.

Locking: one internal lock (the page-table lock + the flush-queue lock), held only inside a call
and never across a scheduling point; warnings and trace events are emitted after releasing it.

Kernel: drivers/iommu/iommu.c (iommu_map(), iommu_map_nosync(), iommu_sync_map(), iommu_unmap(),
iommu_unmap_fast(), iommu_iotlb_sync(), iommu_iova_to_phys(), report_iommu_fault()),
drivers/iommu/dma-iommu.c (flush queue: IOVA_DEFAULT_FQ_SIZE, IOVA_DEFAULT_FQ_TIMEOUT,
queue_iova(), fq_flush_timeout()), include/linux/iommu.h (IOMMU_READ..IOMMU_PRIV, domain types).
"""

from __future__ import annotations

import enum
import errno
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

import numpy as np

from dmabuf.dma.iova import IovaDomain
from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.ranges import RANGE_DTYPE, as_ranges, coalesce

__all__ = [
    "IOMMU_CACHE",
    "IOMMU_MMIO",
    "IOMMU_NOEXEC",
    "IOMMU_PRIV",
    "IOMMU_READ",
    "IOMMU_WRITE",
    "IOVA_DEFAULT_FQ_SIZE",
    "IOVA_DEFAULT_FQ_TIMEOUT",
    "IOVA_SINGLE_FQ_SIZE",
    "IOVA_SINGLE_FQ_TIMEOUT",
    "MSI_IOVA_BASE",
    "MSI_IOVA_LENGTH",
    "Iommu",
    "IommuDomain",
    "IommuDomainType",
    "IommuFaultRecord",
    "IommuStats",
]

IOMMU_READ = 1 << 0
IOMMU_WRITE = 1 << 1
IOMMU_CACHE = 1 << 2
IOMMU_NOEXEC = 1 << 3
IOMMU_MMIO = 1 << 4
IOMMU_PRIV = 1 << 5
#: Model-only PTE bit: mapped with iommu_map_nosync() and not yet covered by iotlb_sync_map().
_PTE_PENDING = 1 << 7

IOVA_DEFAULT_FQ_SIZE = 256
IOVA_DEFAULT_FQ_TIMEOUT = 0.010
IOVA_SINGLE_FQ_SIZE = 32768
IOVA_SINGLE_FQ_TIMEOUT = 1.0

#: x86 interrupt-remapping window, reserved in every DMA domain (IOMMU_RESV_MSI).
MSI_IOVA_BASE = 0xFEE0_0000
MSI_IOVA_LENGTH = 0x10_0000

_LEAF_SHIFT = 18                      # pages per leaf: 2**18 x 4 KiB = 1 GiB of IOVA
_LEAF_PAGES = 1 << _LEAF_SHIFT
_LEAF_MASK = _LEAF_PAGES - 1


class IommuDomainType(enum.Enum):
    """``IOMMU_DOMAIN_*`` — how a domain is used (include/linux/iommu.h)."""

    BLOCKED = "blocked"
    IDENTITY = "identity"
    UNMANAGED = "unmanaged"
    DMA = "dma"
    DMA_FQ = "dma-fq"


@dataclass(frozen=True)
class IommuFaultRecord:
    """One entry of a domain's fault log — what ``report_iommu_fault()`` would print."""

    time: float
    device: str
    dma_addr: int
    access: str
    reason: str
    stale_iotlb: bool = False


@dataclass
class IommuStats:
    """Operation counters of a domain (see the module docstring)."""

    map_calls: int = 0
    map_bytes: int = 0
    unmap_calls: int = 0
    unmap_bytes: int = 0
    sync_map: int = 0
    iotlb_flushes: int = 0
    fq_queued: int = 0
    fq_flushes: int = 0
    translations: int = 0
    faults: int = 0


@dataclass
class _FqEntry:
    pfn: int
    pages: int
    time: float
    free: Callable[[int], object] | None = field(default=None, repr=False)


def _expand_pages(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    total = int(count.sum())
    offs = np.zeros(count.size, dtype=np.int64)
    if count.size > 1:
        np.cumsum(count[:-1], out=offs[1:])
    return np.repeat(first - offs, count) + np.arange(total, dtype=np.int64)


class IommuDomain:
    """One IOMMU translation domain — ``struct iommu_domain`` (+ its DMA cookie when managed).

    Args:
        name: shown in faults and ``describe()`` (e.g. ``"group 7"``).
        type: :class:`IommuDomainType`; ``DMA_FQ`` (lazy) is the x86 default.
        machine: for the clock (flush-queue timeout), WARN log and trace (default: current).
        aperture_bits: width of the IOVA space (48 for a 4-level table).
        fq_size / fq_timeout: flush-queue depth and timeout (256 / 10 ms like the per-CPU
            queues; ``IOVA_SINGLE_FQ_SIZE`` / ``_TIMEOUT`` for the single-queue mode).
        strict_sync_map: fault on DMA through PTEs not yet synced (see module docstring).
        reserve_msi: reserve the x86 MSI window 0xfee00000-0xfeefffff in the IOVA space.

    Kernel: include/linux/iommu.h (struct iommu_domain), drivers/iommu/dma-iommu.c
    (iommu_dma_init_domain(), iova_reserve_iommu_regions()).
    """

    def __init__(self, name: str = "domain", type: IommuDomainType = IommuDomainType.DMA_FQ, *,
                 machine: Any = None, aperture_bits: int = 48,
                 fq_size: int = IOVA_DEFAULT_FQ_SIZE, fq_timeout: float = IOVA_DEFAULT_FQ_TIMEOUT,
                 strict_sync_map: bool = True, reserve_msi: bool = True) -> None:
        if not isinstance(type, IommuDomainType):
            raise TypeError(f"type must be an IommuDomainType, not {type!r}")
        if not 32 <= aperture_bits <= 64:
            raise DmaBufError(errno.EINVAL, f"aperture_bits {aperture_bits} not in 32..64")
        if machine is None:
            from dmabuf.machine import current_machine
            machine = current_machine()
        self.machine = machine
        self.name = name
        self.type = type
        self.aperture_end = (1 << aperture_bits) - 1
        self.granule = PAGE_SIZE
        self.fq_size = fq_size
        self.fq_timeout = fq_timeout
        self.strict_sync_map = strict_sync_map
        self.stats = IommuStats()
        self.faults: list[IommuFaultRecord] = []
        self.devices: list[str] = []
        self._table: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._fq: list[_FqEntry] = []
        #: PCI windows (MMIO regions) already reserved in the IOVA space: (base, size) seen.
        self.reserved_windows: set[tuple[int, int]] = set()
        self.iovad: IovaDomain | None = None
        if type in (IommuDomainType.DMA, IommuDomainType.DMA_FQ):
            self.iovad = IovaDomain(PAGE_SIZE, 1)
            if reserve_msi:
                self.iovad.reserve_iova(MSI_IOVA_BASE >> PAGE_SHIFT,
                                        (MSI_IOVA_BASE + MSI_IOVA_LENGTH - 1) >> PAGE_SHIFT)

    # ------------------------------------------------------------------ properties
    @property
    def is_dma_api(self) -> bool:
        """True for ``DMA`` / ``DMA_FQ`` domains — what ``use_dma_iommu()`` tests."""
        return self.type in (IommuDomainType.DMA, IommuDomainType.DMA_FQ)

    @property
    def lazy(self) -> bool:
        """True when unmaps are flushed through the flush queue (``cookie->fq_domain`` set)."""
        return self.type is IommuDomainType.DMA_FQ

    @property
    def translates(self) -> bool:
        """True when DMA goes through this page table (not identity)."""
        return self.type is not IommuDomainType.IDENTITY

    def _now(self) -> float:
        return float(self.machine.sched.now())

    def _emit(self, name: str, **fields: Any) -> None:
        trace = self.machine.trace
        if trace.active:
            trace.emit(name, domain=self.name, **fields)

    # ------------------------------------------------------------------ page table
    def _leaf(self, idx: int, create: bool) -> tuple[np.ndarray, np.ndarray] | None:
        leaf = self._table.get(idx)
        if leaf is None and create:
            leaf = (np.zeros(_LEAF_PAGES, dtype=np.int64), np.zeros(_LEAF_PAGES, dtype=np.uint8))
            self._table[idx] = leaf
        return leaf

    def _spans(self, pfn: int, npages: int) -> list[tuple[int, int, int, int]]:
        """(leaf index, start in leaf, end in leaf, offset into the request) per leaf touched."""
        s = pfn & _LEAF_MASK
        if s + npages <= _LEAF_PAGES:
            return [(pfn >> _LEAF_SHIFT, s, s + npages, 0)]
        out = []
        done = 0
        while done < npages:
            p = pfn + done
            idx = p >> _LEAF_SHIFT
            s = p & _LEAF_MASK
            n = min(_LEAF_PAGES - s, npages - done)
            out.append((idx, s, s + n, done))
            done += n
        return out

    def _check_args(self, iova: int, paddr: int, size: int, what: str) -> None:
        if not (type(iova) is int and type(paddr) is int and type(size) is int):
            for v, nm in ((iova, "iova"), (paddr, "paddr"), (size, "size")):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"{what}: {nm} must be an int")
        if size <= 0:
            raise DmaBufError(errno.EINVAL, f"{what}: size {size:#x} must be positive")
        if (iova | paddr | size) & (self.granule - 1):
            raise DmaBufError(errno.EINVAL, f"{what}: unaligned: iova {iova:#x} pa {paddr:#x} "
                              f"size {size:#x} min_pagesz {self.granule:#x}")
        if iova + size - 1 > self.aperture_end:
            raise DmaBufError(errno.EINVAL, f"{what}: iova {iova:#x}+{size:#x} is beyond the "
                              f"domain aperture ({self.aperture_end:#x})")

    def map(self, iova: int, paddr: int, size: int, prot: int, *, sync: bool = True) -> None:
        """Map ``[iova, iova + size)`` to ``paddr`` — ``iommu_map()`` (``sync=False``: ``_nosync``).

        Args:
            iova, paddr, size: granule-aligned.
            prot: ``IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE | IOMMU_MMIO | IOMMU_PRIV`` bits.
            sync: call ``iotlb_sync_map`` afterwards (``iommu_map``); ``False`` is
                ``iommu_map_nosync`` and leaves the PTEs pending until :meth:`iotlb_sync_map`.

        Context:
            Takes the domain lock; never blocks (GFP_ATOMIC in the kernel).

        Raises:
            DmaBufError(EINVAL): unaligned, empty, beyond the aperture, identity/blocked domain.
            DmaBufError(EEXIST): part of the range is already mapped (io-pgtable's WARN + -EEXIST);
                nothing is mapped then.

        Kernel: drivers/iommu/iommu.c, iommu_map(), iommu_map_nosync(), iommu_sync_map().
        """
        self._check_args(iova, paddr, size, "iommu_map")
        if not self.translates or self.type is IommuDomainType.BLOCKED:
            raise DmaBufError(errno.EINVAL, f"iommu_map on a {self.type.value} domain")
        pfn = iova >> PAGE_SHIFT
        npages = size >> PAGE_SHIFT
        ppfn = paddr >> PAGE_SHIFT
        bits = (int(prot) & 0x3F) | (0 if sync else _PTE_PENDING)
        with self._lock:
            spans = self._spans(pfn, npages)
            for idx, s, e, _ in spans:
                leaf = self._leaf(idx, False)
                if leaf is None:
                    continue
                if (leaf[0][s] != 0) if e - s == 1 else bool(leaf[0][s:e].any()):
                    j = int(np.flatnonzero(leaf[0][s:e])[0])
                    addr = ((idx << _LEAF_SHIFT) + s + j) << PAGE_SHIFT
                    raise DmaBufError(errno.EEXIST, f"iommu_map: IOVA {addr:#x} is already mapped "
                                      "(unmap it first)")
            for idx, s, e, off in spans:
                leaf = self._leaf(idx, True)
                assert leaf is not None
                if e - s == 1:
                    leaf[0][s] = ppfn + off + 1
                    leaf[1][s] = bits
                else:
                    leaf[0][s:e] = np.arange(ppfn + off + 1, ppfn + off + 1 + (e - s),
                                             dtype=np.int64)
                    leaf[1][s:e] = bits
            self.stats.map_calls += 1
            self.stats.map_bytes += size
            if sync:
                self.stats.sync_map += 1
        self._emit("iommu_map", iova=iova, paddr=paddr, size=size, prot=prot, sync=sync)

    def map_many(self, iovas: np.ndarray, paddrs: np.ndarray, sizes: np.ndarray,
                 prots: np.ndarray, *, sync: bool = True) -> None:
        """Map many segments in one pass — ``iommu_map_sg()`` (vectorised).

        Counts one ``map_calls`` per segment and, with ``sync``, a single ``sync_map`` for all
        of them. All-or-nothing: if any page is already mapped nothing is mapped.

        Args:
            iovas, paddrs, sizes: int64 arrays, granule aligned.
            prots: prot bits per segment.
            sync: one ``iotlb_sync_map`` at the end (else the PTEs stay pending).

        Raises:
            DmaBufError(EINVAL): unaligned / empty segments or beyond the aperture.
            DmaBufError(EEXIST): a page is already mapped (or two segments overlap).

        Kernel: drivers/iommu/iommu.c, iommu_map_sg().
        """
        iovas = np.asarray(iovas, dtype=np.int64).reshape(-1)
        paddrs = np.asarray(paddrs, dtype=np.int64).reshape(-1)
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        prots = np.asarray(prots).astype(np.uint8).reshape(-1)
        if not (iovas.size == paddrs.size == sizes.size == prots.size) or iovas.size == 0:
            raise DmaBufError(errno.EINVAL, "map_many: need equal, non-empty arrays")
        if not self.translates or self.type is IommuDomainType.BLOCKED:
            raise DmaBufError(errno.EINVAL, f"iommu_map on a {self.type.value} domain")
        if bool(np.any(sizes <= 0)) or bool(np.any((iovas | paddrs | sizes) & (self.granule - 1))):
            raise DmaBufError(errno.EINVAL, "iommu_map_sg: unaligned or empty segment "
                              f"(min_pagesz {self.granule:#x})")
        if int((iovas + sizes).max()) - 1 > self.aperture_end or int(iovas.min()) < 0:
            raise DmaBufError(errno.EINVAL, "iommu_map_sg: beyond the domain aperture")
        counts = sizes >> PAGE_SHIFT
        ipages = _expand_pages(iovas >> PAGE_SHIFT, counts)
        ppages = _expand_pages(paddrs >> PAGE_SHIFT, counts)
        pbits = np.repeat(prots & np.uint8(0x3F), counts)
        if not sync:
            pbits |= np.uint8(_PTE_PENDING)
        if np.unique(ipages).size != ipages.size:
            raise DmaBufError(errno.EEXIST, "iommu_map_sg: segments overlap in IOVA")
        leaf_idx = ipages >> _LEAF_SHIFT
        groups = [(int(li), leaf_idx == li) for li in np.unique(leaf_idx).tolist()]
        with self._lock:
            for li, m in groups:
                leaf = self._leaf(li, False)
                if leaf is not None:
                    sub = ipages[m] & _LEAF_MASK
                    hit = leaf[0][sub] != 0
                    if bool(hit.any()):
                        addr = int(ipages[m][int(np.argmax(hit))]) << PAGE_SHIFT
                        raise DmaBufError(errno.EEXIST, f"iommu_map_sg: IOVA {addr:#x} is "
                                          "already mapped")
            for li, m in groups:
                leaf = self._leaf(li, True)
                assert leaf is not None
                sub = ipages[m] & _LEAF_MASK
                leaf[0][sub] = ppages[m] + 1
                leaf[1][sub] = pbits[m]
            self.stats.map_calls += int(iovas.size)
            self.stats.map_bytes += int(sizes.sum())
            if sync:
                self.stats.sync_map += 1
        self._emit("iommu_map_sg", nents=int(iovas.size), size=int(sizes.sum()), sync=sync)

    def iotlb_sync_map(self, iova: int, size: int) -> None:
        """Make new PTEs of ``[iova, iova + size)`` visible — ``iommu_sync_map()``.

        Counts one ``sync_map`` whatever the size: this is the single sync of a
        ``dma_iova_link`` transaction.

        Kernel: drivers/iommu/iommu.c, iommu_sync_map() -> ops->iotlb_sync_map().
        """
        if size <= 0:
            raise DmaBufError(errno.EINVAL, "iotlb_sync_map: size must be positive")
        first = iova >> PAGE_SHIFT
        last = (iova + size - 1) >> PAGE_SHIFT
        with self._lock:
            for idx, s, e, _ in self._spans(first, last - first + 1):
                leaf = self._leaf(idx, False)
                if leaf is not None:
                    leaf[1][s:e] &= np.uint8(0xFF & ~_PTE_PENDING)
            self.stats.sync_map += 1
        self._emit("iommu_sync_map", iova=iova, size=size)

    def unmap(self, iova: int, size: int, *, sync: bool = True) -> int:
        """Unmap ``[iova, iova + size)`` — ``iommu_unmap()`` (``sync=False``: ``iommu_unmap_fast``).

        Stops at the first hole, like the io-pgtable walkers, and returns the bytes unmapped.

        Args:
            iova, size: granule-aligned.
            sync: flush the IOTLB now (``iommu_unmap`` = unmap_fast + ``iommu_iotlb_sync``).
                With ``False`` the caller must call :meth:`iotlb_sync` or queue the range.

        Context:
            Takes the domain lock; never blocks.

        Returns:
            Bytes unmapped (< ``size`` if a hole was met).

        Raises:
            DmaBufError(EINVAL): unaligned or empty range.

        Kernel: drivers/iommu/iommu.c, iommu_unmap(), iommu_unmap_fast(), __iommu_unmap().
        """
        self._check_args(iova, 0, size, "iommu_unmap")
        pfn = iova >> PAGE_SHIFT
        npages = size >> PAGE_SHIFT
        unmapped = 0
        with self._lock:
            for idx, s, e, _ in self._spans(pfn, npages):
                leaf = self._leaf(idx, False)
                if leaf is None:
                    break
                if e - s == 1:
                    n = 1 if leaf[0][s] != 0 else 0
                else:
                    present = leaf[0][s:e] != 0
                    n = e - s if bool(present.all()) else int(np.argmin(present))
                leaf[0][s:s + n] = 0
                leaf[1][s:s + n] = 0
                unmapped += n
                if n < e - s:
                    break
            self.stats.unmap_calls += 1
            self.stats.unmap_bytes += unmapped << PAGE_SHIFT
            if sync:
                self.stats.iotlb_flushes += 1
        self._emit("iommu_unmap", iova=iova, size=size, unmapped=unmapped << PAGE_SHIFT,
                   sync=sync)
        return unmapped << PAGE_SHIFT

    def iotlb_sync(self) -> None:
        """Invalidate the IOTLB after ``unmap(sync=False)`` — ``iommu_iotlb_sync()``.

        Kernel: include/linux/iommu.h, iommu_iotlb_sync().
        """
        with self._lock:
            self.stats.iotlb_flushes += 1
        self._emit("iommu_iotlb_sync")

    def flush_iotlb_all(self) -> None:
        """Invalidate everything — ``iommu_flush_iotlb_all()``.

        Kernel: include/linux/iommu.h, iommu_flush_iotlb_all().
        """
        self.iotlb_sync()

    def iova_to_phys(self, iova: int) -> int:
        """Physical address an IOVA translates to, or 0 — ``iommu_iova_to_phys()``.

        Kernel: drivers/iommu/iommu.c, iommu_iova_to_phys().
        """
        if not self.translates:
            return iova
        leaf = self._table.get((iova >> PAGE_SHIFT) >> _LEAF_SHIFT)
        if leaf is None:
            return 0
        v = int(leaf[0][(iova >> PAGE_SHIFT) & _LEAF_MASK])
        return 0 if v == 0 else ((v - 1) << PAGE_SHIFT) | (iova & (PAGE_SIZE - 1))

    def mapped_bytes(self, iova: int, size: int) -> int:
        """Bytes of ``[iova, iova+size)`` (granule aligned) that are currently mapped.

        Model-only: page-table introspection for tests and describe().
        """
        first = iova >> PAGE_SHIFT
        last = (iova + max(size, 1) - 1) >> PAGE_SHIFT
        total = 0
        with self._lock:
            for idx, s, e, _ in self._spans(first, last - first + 1):
                leaf = self._leaf(idx, False)
                if leaf is not None:
                    total += int(np.count_nonzero(leaf[0][s:e]))
        return total << PAGE_SHIFT

    # ------------------------------------------------------------------ flush queue
    def queue_iova(self, pfn: int, pages: int, free: Callable[[int], object]) -> None:
        """Defer freeing an unmapped IOVA range until the next IOTLB flush — ``queue_iova()``.

        Flushes first when the queue is full; also flushes entries older than ``fq_timeout``
        (the kernel's 10 ms timer, checked here on every queue operation against the machine
        clock).

        Kernel: drivers/iommu/dma-iommu.c, queue_iova(), fq_flush_iotlb(), fq_ring_free().
        """
        now = self._now()
        with self._lock:
            if len(self._fq) >= self.fq_size or (self._fq and
                                                  now - self._fq[0].time >= self.fq_timeout):
                batch = self._take_fq_locked()
            else:
                batch = []
            self._fq.append(_FqEntry(pfn, pages, now, free))
            self.stats.fq_queued += 1
        self._free_batch(batch)

    def _take_fq_locked(self) -> list[_FqEntry]:
        batch = self._fq
        self._fq = []
        self.stats.iotlb_flushes += 1
        self.stats.fq_flushes += 1
        return batch

    @staticmethod
    def _free_batch(batch: list[_FqEntry]) -> None:
        for ent in batch:
            if ent.free is not None:
                ent.free(ent.pfn)

    def flush_queue(self) -> int:
        """Flush the IOTLB and free every queued IOVA now — ``fq_flush_timeout()``.

        Returns:
            The number of IOVA ranges freed.

        Kernel: drivers/iommu/dma-iommu.c, fq_flush_timeout().
        """
        with self._lock:
            if not self._fq:
                return 0
            batch = self._take_fq_locked()
        self._free_batch(batch)
        self._emit("iommu_fq_flush", entries=len(batch))
        return len(batch)

    def poll_flush_queue(self) -> int:
        """Run the flush-queue timer if it expired (``fq_timeout`` since the oldest entry).

        Kernel: drivers/iommu/dma-iommu.c, fq_flush_timeout() (the model has no timer, so callers
        poll).
        """
        with self._lock:
            expired = bool(self._fq) and self._now() - self._fq[0].time >= self.fq_timeout
        return self.flush_queue() if expired else 0

    @property
    def fq_pending(self) -> int:
        """IOVA ranges waiting on the flush queue."""
        return len(self._fq)

    def _queued_covers(self, addr: int) -> bool:
        pfn = addr >> PAGE_SHIFT
        return any(e.pfn <= pfn < e.pfn + e.pages for e in self._fq)

    # ------------------------------------------------------------------ translation
    def translate(self, ranges: Any, access: str | None, *, device: str = "") -> np.ndarray:
        """Translate DMA (IOVA) ranges to physical ranges, as the IOMMU does for each TLP.

        Args:
            ranges: ``RANGE_DTYPE`` IOVA ranges (any alignment).
            access: ``"read"`` (the device reads memory; needs IOMMU_READ), ``"write"``
                (needs IOMMU_WRITE) or ``None`` (presence only, no permission check).
            device: requester name for the fault log.

        Context:
            Lock-free read of the page table (like a hardware walk); never blocks.

        Returns:
            Physical ranges (coalesced), byte-for-byte in the order of ``ranges``.

        Raises:
            IommuFault: first unmapped / wrong-permission / unsynced page, recorded in
                :attr:`faults` (``report_iommu_fault()``).

        Kernel: drivers/iommu/iommu.c, report_iommu_fault(); the hardware page walk.
        """
        if access not in ("read", "write", None):
            raise ValueError(f"access must be 'read', 'write' or None, not {access!r}")
        acc = access or "access"
        r = as_ranges(ranges)
        if r.size == 1 and self.translates and self.type is not IommuDomainType.BLOCKED:
            fast = self._translate_small(r, access, acc, device)
            if fast is not None:
                return fast
        r = r[r["len"] != 0]
        if r.size == 0:
            return np.zeros(0, dtype=RANGE_DTYPE)
        if self.type is IommuDomainType.BLOCKED:
            self._fault(device, int(r["addr"][0]), acc, "domain is BLOCKED")
        if not self.translates:
            return coalesce(r)
        if int(r["addr"].max()) >= (1 << 62):
            self._fault(device, int(r["addr"].max()), acc, "address beyond the IOVA aperture")
        addr = r["addr"].astype(np.int64)
        length = r["len"].astype(np.int64)
        end = addr + length
        if int(end.max()) - 1 > self.aperture_end:
            i = int(np.argmax(end - 1 > self.aperture_end))
            self._fault(device, int(addr[i]), acc, "address beyond the IOVA aperture")
        need = {"read": IOMMU_READ, "write": IOMMU_WRITE, None: 0}[access]
        bad_bits = np.uint8(need | (_PTE_PENDING if self.strict_sync_map else 0))
        self.stats.translations += 1
        first = addr >> PAGE_SHIFT
        count = ((end - 1) >> PAGE_SHIFT) - first + 1
        if r.size <= 32:
            return self._translate_slices(addr, end, first, count, need, bad_bits, device, acc)
        pages = _expand_pages(first, count)
        owner = np.repeat(np.arange(r.size), count)
        leaf_idx = pages >> _LEAF_SHIFT
        pfn1 = np.zeros(pages.size, dtype=np.int64)
        prot = np.zeros(pages.size, dtype=np.uint8)
        lo_leaf, hi_leaf = int(leaf_idx.min()), int(leaf_idx.max())
        if lo_leaf == hi_leaf:
            leaf = self._table.get(lo_leaf)
            if leaf is not None:
                sub = pages & _LEAF_MASK
                pfn1 = leaf[0][sub]
                prot = leaf[1][sub]
        else:
            for li in np.unique(leaf_idx).tolist():
                leaf = self._table.get(li)
                if leaf is None:
                    continue
                m = leaf_idx == li
                sub = pages[m] & _LEAF_MASK
                pfn1[m] = leaf[0][sub]
                prot[m] = leaf[1][sub]
        bad = (pfn1 == 0) | (((prot ^ np.uint8(need)) & bad_bits) != 0)
        if bool(bad.any()):
            j = int(np.argmax(bad))
            fault_addr = max(int(pages[j]) << PAGE_SHIFT, int(addr[owner[j]]))
            self._fault(device, fault_addr, acc, self._why(int(pfn1[j]), int(prot[j]), acc))
        page_va = pages << PAGE_SHIFT
        lo = np.maximum(page_va, addr[owner])
        hi = np.minimum(page_va + PAGE_SIZE, end[owner])
        out = np.empty(pages.size, dtype=RANGE_DTYPE)
        out["addr"] = ((pfn1 - 1) << PAGE_SHIFT) + (lo - page_va)
        out["len"] = hi - lo
        return coalesce(out)

    def _translate_small(self, r: np.ndarray, access: str | None, acc: str,
                         device: str) -> np.ndarray | None:
        """One range of at most 64 pages inside one leaf, with plain ints (None: not eligible)."""
        a, n = r.tolist()[0]
        if n == 0 or a + n - 1 > self.aperture_end:
            return None
        p0 = a >> PAGE_SHIFT
        p1 = (a + n - 1) >> PAGE_SHIFT
        if p1 - p0 >= 64 or (p0 >> _LEAF_SHIFT) != (p1 >> _LEAF_SHIFT):
            return None
        leaf = self._table.get(p0 >> _LEAF_SHIFT)
        if leaf is None:
            self._fault(device, a, acc, self._why(0, 0, acc))
        s = p0 & _LEAF_MASK
        t = (p1 & _LEAF_MASK) + 1
        pfs = leaf[0][s:t].tolist()
        prs = leaf[1][s:t].tolist()
        need = {"read": IOMMU_READ, "write": IOMMU_WRITE, None: 0}[access]
        bad_bits = need | (_PTE_PENDING if self.strict_sync_map else 0)
        self.stats.translations += 1
        runs: list[list[int]] = []
        for j, (pf, pr) in enumerate(zip(pfs, prs, strict=True)):
            if pf == 0 or (pr ^ need) & bad_bits:
                self._fault(device, max(a, (p0 + j) << PAGE_SHIFT), acc, self._why(pf, pr, acc))
            pa = (pf - 1) << PAGE_SHIFT
            if runs and runs[-1][0] + runs[-1][1] == pa:
                runs[-1][1] += PAGE_SIZE
            else:
                runs.append([pa, PAGE_SIZE])
        head = a - (p0 << PAGE_SHIFT)
        runs[0][0] += head
        runs[0][1] -= head
        runs[-1][1] -= ((p1 + 1) << PAGE_SHIFT) - (a + n)
        return np.array([tuple(x) for x in runs], dtype=RANGE_DTYPE)

    def _why(self, pfn1: int, prot: int, acc: str) -> str:
        if pfn1 == 0:
            return "IOVA not mapped (never mapped, or unmapped)"
        if prot & _PTE_PENDING and self.strict_sync_map:
            return "PTE not yet synced: missing dma_iova_sync() / iommu_sync_map()"
        return (f"permission: {acc} through a mapping with prot {prot & 0x3F:#x} (mapped for "
                "the other direction)")

    def _translate_slices(self, addr: np.ndarray, end: np.ndarray, first: np.ndarray,
                          count: np.ndarray, need: int, bad_bits: np.uint8, device: str,
                          acc: str) -> np.ndarray:
        """Few ranges: walk leaf slices directly and cut runs of contiguous pfns (no per-page
        index arrays), so one large mapping translates at memory speed."""
        pending = bool(int(bad_bits) & _PTE_PENDING)
        out_a: list[np.ndarray] = []
        out_n: list[np.ndarray] = []
        for a, e, p0, npg in zip(addr.tolist(), end.tolist(), first.tolist(), count.tolist(),
                                 strict=True):
            ra: list[np.ndarray] = []
            rn: list[np.ndarray] = []
            for li, s, t, off in self._spans(p0, npg):
                leaf = self._table.get(li)
                if leaf is None:
                    self._fault(device, max(a, (p0 + off) << PAGE_SHIFT), acc,
                                self._why(0, 0, acc))
                pf = leaf[0][s:t]
                pr = leaf[1][s:t]
                if t - s == 1:
                    starts = np.zeros(1, dtype=np.int64)
                    lens = np.ones(1, dtype=np.int64)
                else:
                    brk = np.flatnonzero(pf[1:] != pf[:-1] + 1) + 1
                    starts = np.concatenate(([0], brk))
                    lens = np.diff(np.concatenate((starts, [t - s])))
                first_pf = pf[starts]
                # The checks, with one pass over the PTEs at most: an absent PTE (pfn 0) always
                # starts a run (its predecessor is never pfn -1), so the run starts show it; the
                # permission bits are AND/OR-reduced. Only a failure builds the per-page mask.
                if int(first_pf.min()) == 0 or int(np.bitwise_and.reduce(pr)) & need != need or (
                        pending and int(np.bitwise_or.reduce(pr)) & _PTE_PENDING):
                    bad = (pf == 0) | (((pr ^ np.uint8(need)) & bad_bits) != 0)
                    j = int(np.argmax(bad))
                    self._fault(device, max(a, (p0 + off + j) << PAGE_SHIFT), acc,
                                self._why(int(pf[j]), int(pr[j]), acc))
                ra.append((first_pf - 1) << PAGE_SHIFT)
                rn.append(lens << PAGE_SHIFT)
            pa = np.concatenate(ra) if len(ra) > 1 else ra[0]
            pn = np.concatenate(rn) if len(rn) > 1 else rn[0]
            head = a - (p0 << PAGE_SHIFT)
            tail = ((p0 + npg) << PAGE_SHIFT) - e
            pa[0] += head
            pn[0] -= head
            pn[-1] -= tail
            out_a.append(pa)
            out_n.append(pn)
        out = np.empty(sum(x.size for x in out_a), dtype=RANGE_DTYPE)
        out["addr"] = np.concatenate(out_a)
        out["len"] = np.concatenate(out_n)
        return coalesce(out)

    def _fault(self, device: str, dma_addr: int, access: str, reason: str) -> NoReturn:
        stale = self.lazy and self._queued_covers(dma_addr)
        if stale:
            reason += ("; its IOTLB flush is still queued (lazy mode): real hardware could hit "
                       "a stale IOTLB entry and reach freed memory")
        rec = IommuFaultRecord(self._now(), device, dma_addr, access, reason, stale)
        with self._lock:
            self.faults.append(rec)
            self.stats.faults += 1
        self._emit("iommu_fault", device=device, dma_addr=dma_addr, access=access, reason=reason)
        raise IommuFault(f"{self.name}: DMA {access} by {device or '?'} at IOVA {dma_addr:#x}: "
                         f"{reason}", dma_addr=dma_addr, device=device)

    # ------------------------------------------------------------------ introspection
    def check_unmapped(self, iova: int, size: int, rule: str) -> None:
        """ContractViolation(rule) if any page of the range is still mapped.

        Raises: ContractViolation(rule) when any page of the range is still mapped.
        Model-only: a leak check for tests; the kernel has no equivalent assertion.
        """
        n = self.mapped_bytes(iova, size)
        if n:
            raise ContractViolation(rule, f"{n:#x} bytes of IOVA [{iova:#x}, {iova + size:#x}) "
                                    "are still mapped")

    def describe(self) -> dict[str, Any]:
        """Snapshot: type, devices, counters, IOVA usage, flush queue, recent faults.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {
            "name": self.name,
            "type": self.type.value,
            "devices": list(self.devices),
            "stats": asdict(self.stats),
            "iova_allocated_bytes": (self.iovad.allocated_granules() * PAGE_SIZE
                                     if self.iovad else 0),
            "fq_pending": len(self._fq),
            "faults": [asdict(f) for f in self.faults[-16:]],
        }

    def __repr__(self) -> str:
        return f"IommuDomain({self.name!r}, {self.type.name})"


class Iommu:
    """The machine's IOMMU: one default domain per IOMMU group.

    Devices of one group share a domain (``iommu_group->default_domain``), created on first use
    with the configured default type: ``DMA_FQ`` (lazy, the x86 default), ``DMA``
    (``iommu.strict=1``) or ``IDENTITY`` (``iommu.passthrough=1``). iommufd/VFIO replace a
    group's domain with an ``UNMANAGED`` one through :meth:`set_group_domain`.

    Args:
        default_type: type of the default domains.
        machine: the machine (default: current).
        **domain_kwargs: passed to every :class:`IommuDomain` created.

    Kernel: drivers/iommu/iommu.c (iommu_group_alloc_default_domain(), iommu_def_domain_type,
    iommu.strict / iommu.passthrough command-line options, iommu_attach_group()).
    """

    def __init__(self, default_type: IommuDomainType = IommuDomainType.DMA_FQ, *,
                 machine: Any = None, **domain_kwargs: Any) -> None:
        if not isinstance(default_type, IommuDomainType):
            raise TypeError("default_type must be an IommuDomainType")
        if machine is None:
            from dmabuf.machine import current_machine
            machine = current_machine()
        self.machine = machine
        self.default_type = default_type
        self._kwargs = domain_kwargs
        self._groups: dict[int, IommuDomain] = {}
        self._lock = threading.Lock()

    def group_domain(self, group: int) -> IommuDomain:
        """The current domain of IOMMU group ``group`` (its default domain on first use).

        Kernel: drivers/iommu/iommu.c, iommu_get_domain_for_dev() (group->domain).
        """
        with self._lock:
            dom = self._groups.get(group)
            if dom is None:
                dom = IommuDomain(f"group {group}", self.default_type, machine=self.machine,
                                  **self._kwargs)
                self._groups[group] = dom
            return dom

    def set_group_domain(self, group: int, domain: IommuDomain) -> None:
        """Attach ``domain`` to the group (devices attached later use it) — iommu_attach_group().

        Kernel: drivers/iommu/iommu.c, iommu_attach_group().
        """
        with self._lock:
            self._groups[group] = domain

    @property
    def groups(self) -> dict[int, IommuDomain]:
        """group id -> current domain (a copy)."""
        with self._lock:
            return dict(self._groups)
