"""Benchmarks of the HMM path (dmabuf.mm.hmm): hmm_range_fault over a large range.

``mm.hmm.range_fault`` mirrors 1 GiB (quick: 16 MiB) of populated anonymous memory with
``hmm_range_fault`` — one vectorised pass over the page-table arrays — and compares it with the
same walk written as a per-page Python loop (the obvious way to model ``hmm_vma_handle_pte``),
run on plain Python lists so the baseline pays no numpy-scalar overhead. Both produce the same
``hmm_pfns`` (checked). ``mm.hmm.first_touch`` times the call that faults the whole untouched
range in (read faults: zero-page mappings, then the rescan) against the same per-page loop
doing the fault decisions.
"""

from __future__ import annotations

import numpy as np

from dmabuf.bench import BenchResult, benchmark, measure
from dmabuf.machine import Machine
from dmabuf.mm import MemKind, PhysMemory
from dmabuf.mm.hmm import (
    HMM_PFN_INOUT_FLAGS,
    HMM_PFN_REQ_FAULT,
    HMM_PFN_REQ_WRITE,
    HMM_PFN_VALID,
    HMM_PFN_WRITE,
    HmmRange,
    hmm_range_fault,
)
from dmabuf.mm.memremap import zero_page
from dmabuf.mm.mmu_notifier import (
    MmuIntervalNotifier,
    MmuNotifierRange,
    mmu_interval_notifier_insert,
    mmu_interval_read_begin,
    mmu_interval_set_seq,
)
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE
from dmabuf.mm.vma import PTE_PRESENT, PTE_SPECIAL, PTE_WRITE, PTE_ZERO, MmStruct

_GIB = 1 << 30


class _Ops:
    def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange, cur_seq: int) -> bool:
        mmu_interval_set_seq(sub, cur_seq)
        return True


def _setup(size: int, populate: bool) -> tuple[MmStruct, int, MmuIntervalNotifier]:
    m = Machine(name="bench-hmm", debug=False)
    phys = PhysMemory(m, poison_on_free=False)
    phys.add_region("ram0", size + (64 << 20), MemKind.RAM)
    mm = MmStruct(phys, machine=m, name="bench")
    zero_page(phys)              # exists from boot in the kernel: not part of the timing
    a = mm.mmap(size)
    if populate:
        mm.populate(a, size, write=True)
    sub = MmuIntervalNotifier()
    mmu_interval_notifier_insert(sub, mm, a, size, _Ops())
    return mm, a, sub


def _model(mm: MmStruct, sub: MmuIntervalNotifier, a: int, size: int,
           flags: int) -> np.ndarray:
    rng = HmmRange(sub, mmu_interval_read_begin(sub), a, a + size, default_flags=flags)
    with mm.read_locked():
        hmm_range_fault(rng)
    return rng.hmm_pfns


def _per_page(mm: MmStruct, a: int, size: int, flags: int) -> list[int]:
    """``hmm_vma_handle_pte`` one page at a time, in Python, on lists (the baseline)."""
    vma = mm.vma_lookup(a)
    assert vma is not None
    ptes = vma.pte.tolist()
    pfns = vma.pfn.tolist()
    n = size >> PAGE_SHIFT
    out = [0] * n
    inout = HMM_PFN_INOUT_FLAGS
    for i in range(n):
        pte = ptes[i]
        req = flags                                   # (slot & mask) | default, mask = 0
        cpu = 0
        if pte & PTE_PRESENT:
            cpu = HMM_PFN_VALID | (HMM_PFN_WRITE if pte & PTE_WRITE else 0)
        need = bool(req & HMM_PFN_REQ_FAULT) and (
            not cpu & HMM_PFN_VALID or (bool(req & HMM_PFN_REQ_WRITE)
                                        and not cpu & HMM_PFN_WRITE))
        if need:
            raise AssertionError("the baseline runs on a populated range")
        if pte & PTE_SPECIAL and not pte & PTE_ZERO:
            out[i] = (out[i] & inout) | (1 << 61)
        else:
            out[i] = (out[i] & inout) | (pfns[i] | cpu if cpu else 0)
    return out


@benchmark("mm.hmm.range_fault",
           claim="hmm_range_fault over 1 GiB of populated memory >= 20x a per-page Python walk")
def bench_range_fault(quick: bool) -> BenchResult:
    size = (16 << 20) if quick else _GIB
    mm, a, sub = _setup(size, populate=True)
    flags = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE
    pfns = _model(mm, sub, a, size, flags)
    ref = _per_page(mm, a, size, flags)
    assert pfns.tolist() == ref, "vectorised and per-page walks disagree"
    t_model = measure(lambda: _model(mm, sub, a, size, flags), repeat=5 if quick else 7)
    t_base = measure(lambda: _per_page(mm, a, size, flags), repeat=3)
    npages = size // PAGE_SIZE
    mm.exit()
    return BenchResult(
        name="mm.hmm.range_fault", figure=npages / t_model / 1e6, unit="Mpages/s",
        baseline=npages / t_base / 1e6, baseline_name="per-page Python walk on lists",
        ratio=t_base / t_model, target=20.0, target_text=">= 20",
        details={"bytes": size, "pages": npages, "model_s": t_model, "baseline_s": t_base})


@benchmark("mm.hmm.first_touch",
           claim="hmm_range_fault faulting an untouched range (zero pages) >= 5x a per-page walk")
def bench_first_touch(quick: bool) -> BenchResult:
    size = (16 << 20) if quick else (256 << 20)
    npages = size // PAGE_SIZE
    times = []
    for _ in range(3):
        mm, a, sub = _setup(size, populate=False)
        t = measure(lambda mm=mm, a=a, sub=sub: _model(mm, sub, a, size, HMM_PFN_REQ_FAULT),
                    repeat=1)
        assert mm.stats["zero_maps"] == npages
        times.append(t)
        mm.exit()
    t_model = float(np.median(times))
    # Baseline: the per-page walk over the (now populated) range plus one fault decision
    # per page — a lower bound on a per-page model of the same work.
    mm, a, sub = _setup(size, populate=False)
    _model(mm, sub, a, size, HMM_PFN_REQ_FAULT)
    t_base = measure(lambda: _per_page(mm, a, size, HMM_PFN_REQ_FAULT), repeat=3)
    mm.exit()
    return BenchResult(
        name="mm.hmm.first_touch", figure=npages / t_model / 1e6, unit="Mpages/s",
        baseline=npages / t_base / 1e6, baseline_name="per-page Python walk (no faulting)",
        ratio=t_base / t_model, target=5.0, target_text=">= 5",
        details={"bytes": size, "pages": npages, "model_s": t_model, "baseline_s": t_base})
