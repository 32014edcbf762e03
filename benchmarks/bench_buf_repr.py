"""Benchmarks of layer 3's representations: the DMA engine, PhysVec and SgTable.

* ``buf_repr.dma_copy`` — the test DMA engine copying 256 MiB from one mapped buffer to another
  (translate through the device, ownership check of every page, one ``np.copyto`` per
  contiguous piece) against raw ``np.copyto`` of the same memory: ``contiguous`` — both buffers
  one extent, baseline one ``np.copyto`` call; ``1MiB-blocks`` — buffers of system-heap-like
  1 MiB blocks scattered over a fragmented region, baseline one ``np.copyto`` per block (the
  cost of scattered memory itself is not the model's overhead).
* ``buf_repr.ranges`` — describing 1 GiB of scattered 4 KiB pages and walking it: a
  :class:`PhysVec`, an :class:`SgTable` (from_pages + the CPU walk), against a per-page Python
  list of ``(addr, len)`` tuples. Bytes per range are reported too.
"""

from __future__ import annotations

import sys

import numpy as np

from dmabuf.bench import BenchResult, benchmark, interleaved, measure
from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.dma_engine import DmaEngine
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import SgTable
from dmabuf.machine import Machine
from dmabuf.mm import PAGE_SIZE, MemKind, PhysMemory, make_ranges

MiB = 1 << 20


@benchmark("buf_repr.dma_copy",
           claim="DMA engine copy of 256 MiB through a mapping >= 0.9x raw np.copyto")
def bench_dma_copy(quick: bool) -> list[BenchResult]:
    size = (16 * MiB) if quick else (256 * MiB)
    rounds = 5 if quick else 9
    results = []
    for label, block in (("1MiB-blocks", MiB), ("contiguous", None)):
        with Machine(name="bench") as m:
            pm = PhysMemory(poison_on_free=False)
            region = pm.add_region("ram0", 4 * size + 64 * MiB, MemKind.RAM)
            oa, ob = pm.new_owner("src"), pm.new_owner("dst")
            rng = np.random.default_rng(7)
            if block is None:
                a = pm.alloc(region, size, oa, contiguous=True)
                b = pm.alloc(region, size, ob, contiguous=True)
            else:
                # Fragment the region first (allocate it all in blocks, free a random half), so
                # the buffers are scattered blocks in random order, as on a busy machine.
                junk = pm.new_owner("junk")
                blocks = pm.alloc(region, region.size, junk, max_extent=block)
                pm.free(blocks[rng.permutation(blocks.size)[:blocks.size // 2 + 1]])
                a = pm.alloc(region, size, oa, max_extent=block, rng=rng)
                b = pm.alloc(region, size, ob, max_extent=block, rng=rng)
            pm.fill(a, 0x5A)
            pm.fill(b, 0)                         # fault every page in before timing
            dev = DirectDev("bench-dev", pm)
            ta = SgTable.from_ranges(a).map(dev, DmaDataDirection.BIDIRECTIONAL)
            tb = SgTable.from_ranges(b).map(dev, DmaDataDirection.BIDIRECTIONAL)
            eng = DmaEngine(dev, machine=m)
            if block is None:
                # Baseline: one np.copyto between the very same (contiguous) memory.
                x = pm.view(int(a["addr"][0]), size)
                y = pm.view(int(b["addr"][0]), size)

                def raw(x: np.ndarray = x, y: np.ndarray = y) -> None:
                    np.copyto(y, x)

                raw_name = "np.copyto, same memory, one call"
            else:
                # Baseline: raw np.copyto over the same scattered blocks (what scattering costs
                # the memory system is not the model's overhead).
                assert bool(np.all(a["len"] == b["len"]))
                pairs = [(pm.view(int(sa), int(n)), pm.view(int(da), int(n))) for sa, n, da in
                         zip(a["addr"].tolist(), a["len"].tolist(), b["addr"].tolist(),
                             strict=True)]

                def raw(pairs: list[tuple[np.ndarray, np.ndarray]] = pairs) -> None:
                    for src, dst in pairs:
                        np.copyto(dst, src)

                raw_name = "np.copyto per block, same memory"

            def model(eng: DmaEngine = eng, ta: SgTable = ta, tb: SgTable = tb,
                      oa: int = oa, ob: int = ob) -> None:
                eng.copy(tb, ta, dst_owner=ob, src_owner=oa)

            t_model, t_raw, ratio = interleaved(model, raw, rounds)
            assert int(pm.read(b[:1])[0]) == 0x5A
            results.append(BenchResult(
                name=f"buf_repr.dma_copy.{label}", figure=size / t_model / 1e9, unit="GB/s",
                baseline=size / t_raw / 1e9, baseline_name=raw_name,
                ratio=ratio, target=0.9, target_text=">= 0.9",
                details={"bytes": size, "src_entries": ta.nents, "dst_entries": tb.nents}))
            ta.unmap()
            tb.unmap()
    return results


def _python_list_bytes(pages: list[tuple[int, int]]) -> float:
    """Approximate bytes per element of a list of (addr, len) tuples (slot + tuple + ints)."""
    sample = pages[len(pages) // 2]
    per = 8 + sys.getsizeof(sample) + sys.getsizeof(sample[0]) + sys.getsizeof(sample[1])
    return float(per)


@benchmark("buf_repr.ranges",
           claim="PhysVec / SgTable build+walk of 1 GiB of 4 KiB pages vs a per-page Python list")
def bench_ranges(quick: bool) -> list[BenchResult]:
    npages = (1 << 15) if quick else (1 << 18)           # 128 MiB or 1 GiB of 4 KiB pages
    repeat = 3
    rng = np.random.default_rng(3)
    # Scattered pages: every other page frame, shuffled — nothing merges (the worst case).
    addrs = (rng.permutation(npages).astype(np.uint64) * np.uint64(2 * PAGE_SIZE)
             + np.uint64(1 << 32))
    addr_list = addrs.tolist()

    def python_list() -> int:
        pages = [(a, PAGE_SIZE) for a in addr_list]
        total = 0
        for _a, n in pages:
            total += n
        return total

    def phys_vec() -> int:
        pv = PhysVec.from_addrs(addrs, PAGE_SIZE)
        total = 0
        for chunk in pv.iter_chunks(65536):
            total += int(chunk["len"].sum(dtype=np.uint64))
        return total

    def sg_table() -> int:
        t = SgTable.from_pages(make_ranges(addrs, PAGE_SIZE))
        return int(t.cpu_ranges()["len"].sum(dtype=np.uint64))

    expect = npages * PAGE_SIZE
    assert python_list() == phys_vec() == sg_table() == expect
    t_list = measure(python_list, repeat=repeat)
    t_pv = measure(phys_vec, repeat=repeat)
    t_sg = measure(sg_table, repeat=repeat)
    list_bpr = _python_list_bytes([(a, PAGE_SIZE) for a in addr_list[:1024]])
    pv = PhysVec.from_addrs(addrs, PAGE_SIZE)
    sg = SgTable.from_pages(make_ranges(addrs, PAGE_SIZE))
    common = {"pages": npages, "bytes_described": expect,
              "python_list_bytes_per_range": list_bpr,
              "python_list_build_walk_s": t_list}
    return [
        BenchResult(name="buf_repr.ranges.phys_vec", figure=npages / t_pv, unit="ranges/s",
                    baseline=npages / t_list, baseline_name="per-page Python list of tuples",
                    ratio=t_list / t_pv, target=None, target_text="",
                    details={**common, "bytes_per_range": pv.nbytes / npages,
                             "kernel_bytes_per_range": pv.kernel_nbytes() / npages}),
        BenchResult(name="buf_repr.ranges.sg_table", figure=npages / t_sg, unit="ranges/s",
                    baseline=npages / t_list, baseline_name="per-page Python list of tuples",
                    ratio=t_list / t_sg, target=None, target_text="",
                    details={**common, "bytes_per_range": sg.nbytes / npages,
                             "kernel_bytes_per_range": sg.kernel_nbytes() / npages}),
    ]
