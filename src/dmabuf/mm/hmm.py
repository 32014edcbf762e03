"""Heterogeneous memory management: mirroring CPU page tables — mm/hmm.c, include/linux/hmm.h.

A device that shares a process's address space (an SVM GPU, an RDMA NIC with on-demand paging)
keeps its own page table of that range and fills it from the CPU's with :func:`hmm_range_fault`:
one ``uint64`` per page (:class:`HmmRange` ``.hmm_pfns``), in on input the request flags
(``HMM_PFN_REQ_FAULT``: make the page valid, faulting it in; ``HMM_PFN_REQ_WRITE``: make it
writable), on output the page frame number and ``HMM_PFN_VALID`` / ``HMM_PFN_WRITE`` /
``HMM_PFN_ERROR``. The sticky bits (``HMM_PFN_DMA_MAPPED``, ``HMM_PFN_P2PDMA``,
``HMM_PFN_P2PDMA_BUS``) of the DMA helpers are carried from input to output.

The walk is vectorised: per VMA, one snapshot of the page-table slice, the "need fault" test of
``hmm_pte_need_fault()`` on the whole array (``(req & pfn_flags_mask) | default_flags`` against the
CPU flags), outputs written with numpy, and the first page that needs something (a fault, a wait
on a migration entry, an error) found with ``argmax``. Pages before it are final; the fault is
taken for every page of the VMA chunk that needs one (a batch instead of the kernel's page or
PMD at a time) and the walk restarts at that page, exactly as the kernel's ``-EBUSY`` /
``hmm_vma_walk->last`` loop does. Before every pass :func:`mmu_interval_check_retry` is asked:
if the caller's notifier saw an invalidation (another thread's munmap, or the COW that this
very fault caused), the call fails with ``-EBUSY`` and the caller restarts from
:func:`~dmabuf.mm.mmu_notifier.mmu_interval_read_begin`.

Rules reproduced from mm/hmm.c:

* VMAs with ``VM_IO | VM_PFNMAP`` or without ``VM_READ`` are unsupported (``hmm_vma_walk_test``):
  a requested fault there is ``-EFAULT``, otherwise the slots read ``HMM_PFN_ERROR`` — a raw BAR
  mmap is invisible to HMM; p2pmem inserted with ``vm_insert_page`` is not;
* no VMA: ``-EFAULT`` if a fault is requested, else ``HMM_PFN_ERROR``;
* a write fault on a VMA without ``VM_WRITE`` → ``-EPERM``;
* present PTE: ``VALID`` (+ ``WRITE``); a special PTE that is not the zero page →
  ``HMM_PFN_ERROR`` (or ``-EFAULT`` if a fault was requested);
* device-private entry of ``range.dev_private_owner`` → reported as ``VALID`` (+``WRITE``) with
  the device pfn, no fault; of another owner → faulted (``migrate_to_ram``) when requested,
  else 0;
* migration entry → wait for the migration, then rescan (when a fault is requested);
* a failed fault (``VM_FAULT_ERROR``) → ``-EFAULT``.

``hmm_range_fault`` requires ``mmap_lock`` held (lockdep checks it) and may sleep.

Deliberate differences: no huge mappings (the order field is always 0); faults are batched per
VMA chunk (the same pages end up faulted, notifiers may see one larger range instead of several
small ones); an unaligned or mis-sized range is ``-EINVAL`` (the kernel trusts the caller).
The DMA half of mm/hmm.c (``hmm_dma_map_*``) needs the DMA API (layer 4) and lives with the
devices that use it (see docs/devices.md, "HMM and the VMA path").

Kernel: mm/hmm.c (hmm_range_fault, hmm_vma_walk_test, hmm_vma_walk_hole, hmm_vma_handle_pte,
hmm_pte_need_fault, hmm_range_need_fault, hmm_vma_fault), include/linux/hmm.h (enum hmm_pfn_flags,
struct hmm_range, hmm_pfn_to_page, hmm_pfn_to_map_order, HMM_RANGE_DEFAULT_TIMEOUT).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.mmu_notifier import MmuIntervalNotifier, mmu_interval_check_retry
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.vma import (
    PTE_DEVICE_PRIVATE,
    PTE_MIGRATION,
    PTE_PRESENT,
    PTE_SPECIAL,
    PTE_WRITE,
    PTE_ZERO,
    VM_FAULT_ERROR,
    VM_IO,
    VM_PFNMAP,
    VM_READ,
    VM_WRITE,
    MmStruct,
    Vma,
)

__all__ = [
    "HMM_PFN_DMA_MAPPED",
    "HMM_PFN_ERROR",
    "HMM_PFN_FLAGS",
    "HMM_PFN_INOUT_FLAGS",
    "HMM_PFN_ORDER_SHIFT",
    "HMM_PFN_P2PDMA",
    "HMM_PFN_P2PDMA_BUS",
    "HMM_PFN_REQ_FAULT",
    "HMM_PFN_REQ_WRITE",
    "HMM_PFN_VALID",
    "HMM_PFN_WRITE",
    "HMM_RANGE_DEFAULT_TIMEOUT",
    "HmmRange",
    "hmm_pfn_to_map_order",
    "hmm_pfn_to_phys",
    "hmm_range_fault",
]

HMM_PFN_VALID = 1 << 63
HMM_PFN_WRITE = 1 << 62
HMM_PFN_ERROR = 1 << 61
HMM_PFN_DMA_MAPPED = 1 << 60
HMM_PFN_P2PDMA = 1 << 59
HMM_PFN_P2PDMA_BUS = 1 << 58
HMM_PFN_ORDER_SHIFT = 53
#: Sticky flags carried from input to output (``HMM_PFN_INOUT_FLAGS``).
HMM_PFN_INOUT_FLAGS = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS
#: Every flag bit (``~((1 << HMM_PFN_ORDER_SHIFT) - 1)``).
HMM_PFN_FLAGS = ((1 << 64) - 1) & ~((1 << HMM_PFN_ORDER_SHIFT) - 1)
#: Input: make the page valid (fault it in).
HMM_PFN_REQ_FAULT = HMM_PFN_VALID
#: Input: make the page writable.
HMM_PFN_REQ_WRITE = HMM_PFN_WRITE
#: Milliseconds drivers keep retrying ``-EBUSY`` (``HMM_RANGE_DEFAULT_TIMEOUT``).
HMM_RANGE_DEFAULT_TIMEOUT = 1000

_V = np.uint64(HMM_PFN_VALID)
_W = np.uint64(HMM_PFN_WRITE)
_E = np.uint64(HMM_PFN_ERROR)
_INOUT = np.uint64(HMM_PFN_INOUT_FLAGS)
_PFN_MASK = np.uint64((1 << HMM_PFN_ORDER_SHIFT) - 1)
_ORDER_MASK = np.uint64(0x1F << HMM_PFN_ORDER_SHIFT)
_U = np.uint64(PAGE_SHIFT)


@dataclass
class HmmRange:
    """One mirroring request — ``struct hmm_range``.

    Attributes:
        notifier: the driver's interval notifier on the mm (the mm is ``notifier.mm``).
        notifier_seq: the value :func:`mmu_interval_read_begin` returned.
        start, end: ``[start, end)``, page aligned.
        hmm_pfns: ``uint64`` array, one entry per page (input flags / output pfns); allocated
            zeroed when not given.
        default_flags: request flags applied to every page.
        pfn_flags_mask: which per-page input bits are honoured (0: only ``default_flags``).
        dev_private_owner: the driver's pgmap owner (its device-private pages are reported,
            not faulted).
    """

    notifier: MmuIntervalNotifier
    notifier_seq: int
    start: int
    end: int
    hmm_pfns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    default_flags: int = 0
    pfn_flags_mask: int = 0
    dev_private_owner: Any = None

    def __post_init__(self) -> None:
        if self.hmm_pfns.size == 0 and self.end > self.start:
            self.hmm_pfns = np.zeros((self.end - self.start) // PAGE_SIZE, dtype=np.uint64)

    @property
    def npages(self) -> int:
        """Pages in the range."""
        return (self.end - self.start) >> PAGE_SHIFT


def hmm_pfn_to_phys(hmm_pfns: Any) -> Any:
    """Physical address of each output entry (``hmm_pfn_to_page`` → ``page_to_phys``).

    Entries without ``HMM_PFN_VALID`` give 0.

    Kernel: include/linux/hmm.h, hmm_pfn_to_page() followed by page_to_phys().
    """
    a = np.asarray(hmm_pfns, dtype=np.uint64)
    out = np.where((a & _V) != 0, (a & _PFN_MASK) << _U, np.uint64(0))
    return int(out) if out.ndim == 0 else out


def hmm_pfn_to_map_order(hmm_pfns: Any) -> Any:
    """``hmm_pfn_to_map_order()``: the CPU mapping order (always 0 in the model).

    Kernel: include/linux/hmm.h, hmm_pfn_to_map_order().
    """
    a = np.asarray(hmm_pfns, dtype=np.uint64)
    out = (a & _ORDER_MASK) >> np.uint64(HMM_PFN_ORDER_SHIFT)
    return int(out) if out.ndim == 0 else out


class _Again(Exception):
    """``-EBUSY`` from the walk: restart at ``last``."""

    def __init__(self, last: int) -> None:
        super().__init__(last)
        self.last = last


def _need(req: np.ndarray, valid: np.ndarray, write: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``hmm_pte_need_fault()`` vectorised: (need fault, need write fault)."""
    reqf = (req & _V) != 0
    reqw = reqf & ((req & _W) != 0)
    need_w = reqw & ~write
    need = (reqf & ~valid) | need_w
    return need, need_w


def _walk(rng: HmmRange, mm: MmStruct, last: int) -> None:
    """``walk_page_range(mm, last, end)`` with hmm_walk_ops; raises _Again / DmaBufError."""
    pfns = rng.hmm_pfns
    mask = np.uint64(rng.pfn_flags_mask)
    dflt = np.uint64(rng.default_flags)
    may_fault = bool((rng.default_flags | rng.pfn_flags_mask) & HMM_PFN_REQ_FAULT)
    pos = last
    end = rng.end
    while pos < end:
        vma = mm.find_vma(pos)
        hole_end = end if vma is None else min(end, vma.start)
        if hole_end > pos:
            k0, k1 = (pos - rng.start) >> PAGE_SHIFT, (hole_end - rng.start) >> PAGE_SHIFT
            s = pfns[k0:k1]
            if may_fault and bool(np.any(((s & mask) | dflt) & _V)):
                raise DmaBufError(errno.EFAULT, f"hmm_range_fault: no VMA at {pos:#x} and a "
                                  "fault was requested")
            s &= _INOUT
            s |= _E
            pos = hole_end
            continue
        assert vma is not None
        hi = min(end, vma.end)
        k0, k1 = (pos - rng.start) >> PAGE_SHIFT, (hi - rng.start) >> PAGE_SHIFT
        _walk_vma(rng, mm, vma, pos, hi, pfns[k0:k1], mask, dflt, may_fault)
        pos = hi


def _build_luts() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-PTE-value tables for the uniform-request fast path (no device-private entries).

    ``cpu[pte]``: output flags; ``pfnmask[pte]``: all ones where the pfn is reported;
    ``act[r][pte]``: True where the page needs a fault / wait / error for request class ``r``
    (0: nothing, 1: REQ_FAULT, 2: REQ_FAULT|REQ_WRITE). Built from the same rules as the
    general path (``_walk_vma``), which handles every page whose ``act`` is set.
    """
    v = np.arange(1 << 9, dtype=np.uint16)
    present = (v & PTE_PRESENT) != 0
    special_bad = present & ((v & PTE_SPECIAL) != 0) & ((v & PTE_ZERO) == 0)
    writable = present & ((v & PTE_WRITE) != 0)
    migr = (v & PTE_MIGRATION) != 0
    ok = present & ~special_bad
    cpu = np.where(ok, _V, np.uint64(0)) | np.where(ok & writable, _W, np.uint64(0)) | \
        np.where(special_bad, _E, np.uint64(0))
    pfnmask = np.where(ok, np.uint64((1 << 64) - 1), np.uint64(0))
    devpriv = (v & PTE_DEVICE_PRIVATE) != 0
    acts = []
    for reqf, reqw in ((False, False), (True, False), (True, True)):
        need = (reqf & ~present) | (reqw & ~writable)
        # device-private entries depend on their pgmap owner: always the general path
        acts.append((need & ~migr) | (migr & reqf) | (special_bad & ~need & reqf) | devpriv)
    return cpu, pfnmask, np.array(acts)


_LUT_CPU, _LUT_PFNMASK, _LUT_ACT = _build_luts()
#: Entries whose action needs the general path (waits, errors, owner checks).
_LUT_HARD = np.array([bool(v & (PTE_MIGRATION | PTE_DEVICE_PRIVATE))
                      or (bool(v & PTE_PRESENT) and bool(v & PTE_SPECIAL)
                          and not v & PTE_ZERO) for v in range(1 << 9)], dtype=bool)


def _walk_vma(rng: HmmRange, mm: MmStruct, vma: Vma, lo: int, hi: int, s: np.ndarray,
              mask: np.uint64, dflt: np.uint64, may_fault: bool) -> None:
    """One VMA chunk ``[lo, hi)``; ``s`` is the slice of hmm_pfns (written in place)."""
    uniform = int(mask) & (HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE) == 0
    req: np.ndarray | np.uint64 = dflt if uniform else (s & mask) | dflt
    if (vma.flags & (VM_IO | VM_PFNMAP)) or not (vma.flags & VM_READ):
        # hmm_vma_walk_test(): unsupported VMA
        if may_fault and bool(np.any(np.asarray(req) & _V)):
            raise DmaBufError(errno.EFAULT, f"hmm_range_fault: {vma!r} is VM_IO/VM_PFNMAP or "
                              "unreadable: it has no struct pages HMM can mirror (use dma-buf)")
        s &= _INOUT
        s |= _E
        return
    i0, i1 = vma.index(lo), vma.index(hi - 1) + 1
    if vma.kind == "file":
        mm._revalidate_file(vma, i0, i1)
    if uniform:
        d = int(dflt)
        rc = 0 if not d & HMM_PFN_REQ_FAULT else (2 if d & HMM_PFN_REQ_WRITE else 1)
        with mm.pt_locked():
            vp = vma.pte[i0:i1]
            act_u = _LUT_ACT[rc][vp]
            if not bool(act_u.any()):
                # fast path: every page is final; outputs by table lookup, under the PTL
                s &= _INOUT
                s |= (vma.pfn[i0:i1] & _LUT_PFNMASK[vp]) | _LUT_CPU[vp]
                return
            simple = not bool((_LUT_HARD[vp] & act_u).any())
            if simple:
                first = int(np.argmax(act_u))
                sf = s[:first]
                sf &= _INOUT
                sf |= (vma.pfn[i0:i0 + first] & _LUT_PFNMASK[vp[:first]]) | \
                    _LUT_CPU[vp[:first]]
        if simple:
            # every pending action is a plain fault: fault them all, then rescan (-EBUSY)
            addr = lo + (first << PAGE_SHIFT)
            write = rc == 2
            if write and not vma.flags & VM_WRITE:
                raise DmaBufError(errno.EPERM, f"hmm_range_fault: write fault requested on "
                                  f"read-only {vma!r} at {addr:#x}")
            ret = mm._fault_pages(vma, np.flatnonzero(act_u) + i0, write)
            if ret & VM_FAULT_ERROR:
                raise DmaBufError(errno.EFAULT, f"hmm_range_fault: handle_mm_fault failed at "
                                  f"{addr:#x}")
            raise _Again(addr)
    with mm.pt_locked():
        pte = vma.pte[i0:i1].copy()
        pfn = vma.pfn[i0:i1].copy()
    req = np.broadcast_to(np.asarray(req, dtype=np.uint64), s.shape)
    present = (pte & PTE_PRESENT) != 0
    devpriv = (pte & PTE_DEVICE_PRIVATE) != 0
    mine = np.zeros(pte.size, dtype=bool)
    if bool(devpriv.any()):
        remap = mm.remap
        idx = remap.lookup(pfn << _U)
        owner = rng.dev_private_owner
        match = np.array([owner is not None and (p.owner is owner or p.owner == owner)
                          for p in remap.pgmaps] + [False], dtype=bool)
        mine = devpriv & match[idx]
    valid = present | mine
    writable = valid & ((pte & PTE_WRITE) != 0)
    need, need_w = _need(req, valid, writable)
    migr = (pte & PTE_MIGRATION) != 0
    reqf = (req & _V) != 0
    special_bad = present & ((pte & PTE_SPECIAL) != 0) & ((pte & PTE_ZERO) == 0)
    act_fault = need & ~migr
    act_wait = migr & reqf
    act_efault = special_bad & ~need & reqf
    act = act_fault | act_wait | act_efault
    first = int(np.argmax(act)) if bool(act.any()) else pte.size
    # outputs for the pages before `first`
    out = np.zeros(first, dtype=np.uint64)
    ok = valid[:first] & ~special_bad[:first]
    out[ok] = pfn[:first][ok] | _V
    out[writable[:first] & ok] |= _W
    out[special_bad[:first]] = _E
    sf = s[:first]
    sf &= _INOUT
    sf |= out
    if first == pte.size:
        return
    addr = lo + (first << PAGE_SHIFT)
    if act_efault[first]:
        raise DmaBufError(errno.EFAULT, f"hmm_range_fault: {addr:#x} maps a PFN without a "
                          "struct page (special PTE) and a fault was requested")
    if act_wait[first]:
        with mm.pt_locked():
            while int(vma.pte[i0 + first]) & PTE_MIGRATION:
                mm.stats["migration_waits"] += 1
                mm._ptl_wait(f"hmm migration_entry_wait({mm.name})")
        raise _Again(addr)
    # fault every page of this chunk that needs it, up to the next wait / error page
    stop = act_wait | act_efault
    stop[:first + 1] = False
    upto = int(np.argmax(stop)) if bool(stop.any()) else pte.size
    sel = np.zeros(pte.size, dtype=bool)
    sel[first:upto] = act_fault[first:upto]
    if bool((need_w & sel).any()) and not vma.flags & VM_WRITE:
        raise DmaBufError(errno.EPERM, f"hmm_range_fault: write fault requested on read-only "
                          f"{vma!r} at {addr:#x}")
    wsel = sel & need_w
    rsel = sel & ~need_w
    for group, write in ((wsel, True), (rsel, False)):
        if bool(group.any()):
            ret = mm._fault_pages(vma, np.flatnonzero(group) + i0, write)
            if ret & VM_FAULT_ERROR:
                raise DmaBufError(errno.EFAULT, f"hmm_range_fault: handle_mm_fault failed at "
                                  f"{addr:#x}")
    raise _Again(addr)


def hmm_range_fault(rng: HmmRange) -> None:
    """Fill ``rng.hmm_pfns`` from the CPU page table, faulting as requested — the kernel function.

    Args:
        rng: the request (see :class:`HmmRange`); ``rng.notifier`` must be inserted on the mm.
    Context: the caller holds ``notifier.mm``'s ``mmap_lock`` (read); may sleep (faults,
        migration waits, notifier callbacks of faults it causes).
    Returns: None; ``rng.hmm_pfns`` holds the output for every page.
    Raises:
        DmaBufError(EBUSY): the notifier saw an invalidation since ``notifier_seq`` (restart
            with ``mmu_interval_read_begin``).
        DmaBufError(EPERM): write fault requested on a VMA without ``VM_WRITE``.
        DmaBufError(EFAULT): fault requested where no page can be made valid (no VMA, VM_IO /
            VM_PFNMAP, special PTE, SIGBUS/SIGSEGV from the fault handler).
        DmaBufError(EINVAL): unaligned/empty range, ``hmm_pfns`` of the wrong size or dtype.
        ContractViolation("mmap_assert_locked"): the mmap lock is not held (lockdep on).
    Kernel: mm/hmm.c, hmm_range_fault().
    """
    if not isinstance(rng, HmmRange):
        raise TypeError(f"range must be an HmmRange, not {type(rng).__name__}")
    sub = rng.notifier
    mm = sub.mm
    if mm is None:
        raise ContractViolation("hmm_range_fault", "the range's notifier is not inserted")
    start, end = int(rng.start), int(rng.end)
    if start % PAGE_SIZE or end % PAGE_SIZE or start >= end:
        raise DmaBufError(errno.EINVAL, f"hmm_range_fault: [{start:#x}, {end:#x}) must be a "
                          "non-empty page-aligned range")
    if not isinstance(rng.hmm_pfns, np.ndarray) or rng.hmm_pfns.dtype != np.uint64 \
            or rng.hmm_pfns.shape != ((end - start) >> PAGE_SHIFT,):
        raise DmaBufError(errno.EINVAL, "hmm_range_fault: hmm_pfns must be a uint64 array with "
                          "one entry per page of the range")
    mm.assert_locked("mmap_lock (hmm_range_fault)")
    last = start
    for _ in range(1_000_000):
        if mmu_interval_check_retry(sub, rng.notifier_seq):
            raise DmaBufError(errno.EBUSY, "hmm_range_fault: the range was invalidated; "
                              "restart from mmu_interval_read_begin()")
        try:
            _walk(rng, mm, last)
        except _Again as a:
            last = a.last
            continue
        return
    raise ContractViolation("hmm_range_fault", "no progress")  # pragma: no cover
