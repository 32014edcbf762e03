"""Benchmarks of the dma-buf protocol core (dmabuf.buf.dma_buf): map + unmap through the full path.

``buf.map_unmap`` — one ``map_unlocked`` + ``unmap_unlocked`` cycle of a **1 GiB** buffer (64 MiB
in quick mode) by a static importer, through every layer a real importer goes through: the
locking-convention checks, the reservation lock, the KERNEL-fence wait, the exporter's
``map_dma_buf`` (which maps the pages for the importer's device: ``DirectDev.map_ranges``, with
dma-debug bookkeeping) and the matching unmap. The buffer is laid out like a system-heap buffer:
scattered 64 KiB chunks (16,384 ranges for 1 GiB). Three exporters of the same pages:

* ``physvec`` — returns a :class:`PhysVec` of DMA ranges (16 bytes per range);
* ``sgtable`` — returns an :class:`SgTable` (``from_pages`` + ``dma_map_sgtable``, 32 bytes per
  scatterlist entry), handed to the importer as the CONFIG_DMABUF_DEBUG DMA-only copy;
* baseline — the per-page Python list a naive model would build: one ``(dma_addr, len)`` tuple per
  4 KiB page (262,144 for 1 GiB), built by "mapping" each page and then dropped — measured
  *without* the dma-buf path, so the ratios understate the model's advantage.

Claims: the PhysVec cycle is >= 20x faster than the per-page baseline, and a PhysVec costs <= 16
bytes per range (``struct phys_vec``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from dmabuf.bench import BenchResult, benchmark, interleaved
from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.dma_buf import (
    DmaBufAttachment,
    DmaBufExportInfo,
    DmaBufOps,
    DmaBufRegistry,
    dma_buf_export,
)
from dmabuf.buf.file import O_RDWR
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.buf.sg_table import SgTable
from dmabuf.machine import Machine
from dmabuf.mm import PAGE_SIZE, MemKind, PhysMemory

MiB = 1 << 20
GiB = 1 << 30
CHUNK = 64 * 1024
BIDI = DmaDataDirection.BIDIRECTIONAL


class _Exporter(DmaBufOps):
    """A system-heap-like exporter returning either a PhysVec or an SgTable."""

    def __init__(self, pages: np.ndarray, mode: str) -> None:
        super().__init__()
        self.pages = pages
        self.mode = mode

    def map_dma_buf(self, attach: DmaBufAttachment, direction: DmaDataDirection) -> Any:
        if self.mode == "physvec":
            return PhysVec(attach.dev.map_ranges(self.pages, direction))
        return SgTable.from_pages(self.pages).map(attach.dev, direction)

    def unmap_dma_buf(self, attach: DmaBufAttachment, table: Any,
                      direction: DmaDataDirection) -> None:
        if isinstance(table, PhysVec):
            attach.dev.unmap_ranges(table.ranges, direction)
        else:
            table.unmap(attach.dev, direction)
            table.free()

    def release(self, dmabuf: Any) -> None:
        pass


def _layout(size: int) -> tuple[PhysMemory, np.ndarray]:
    pm = PhysMemory(poison_on_free=False)
    pm.add_region("ram0", 2 * size, MemKind.RAM)
    owner = pm.new_owner("bench-heap")
    filler = pm.new_owner("filler")
    rng = np.random.default_rng(11)
    # Fragment the region: fill it with 64 KiB chunks and free every other one, so the buffer's
    # chunks (taken in random order) are never physically adjacent — nothing merges.
    chunks = pm.alloc("ram0", 2 * size, filler, max_extent=CHUNK)
    pm.free(chunks[::2])
    pages = pm.alloc("ram0", size, owner, max_extent=CHUNK, rng=rng)
    return pm, pages


def _per_page_cycle(pages_list: list[tuple[int, int]]) -> Callable[[], int]:
    def cycle() -> int:
        mapped = []
        for addr, n in pages_list:                 # "map": one DMA address per page
            for off in range(0, n, PAGE_SIZE):
                mapped.append((addr + off, PAGE_SIZE))
        count = len(mapped)
        mapped.clear()                             # "unmap"
        return count
    return cycle


@benchmark("buf.map_unmap",
           claim="dma-buf map+unmap of 1 GiB: PhysVec >= 20x faster than a per-page Python "
                 "list; <= 16 bytes per range")
def bench_map_unmap(quick: bool) -> list[BenchResult]:
    size = 64 * MiB if quick else GiB
    rounds = 3 if quick else 5
    npages = size // PAGE_SIZE
    results: list[BenchResult] = []
    with Machine(name="bench-buf", debug=False) as m:
        m.state(DmaBufRegistry).debug_wrap = True        # importers get DMA-only copies
        pm, pages = _layout(size)
        dev = DirectDev("importer0", pm)
        page_list = [(int(a), int(n)) for a, n in zip(pages["addr"].tolist(),
                                                       pages["len"].tolist(), strict=True)]
        baseline = _per_page_cycle(page_list)
        assert baseline() == npages
        for mode in ("physvec", "sgtable"):
            ops = _Exporter(pages, mode)
            b = dma_buf_export(DmaBufExportInfo("bench", ops, size, O_RDWR, priv=ops), m)
            a = b.attach(dev)

            def cycle(a: DmaBufAttachment = a) -> int:
                t = a.map_unlocked(BIDI)
                n = len(t) if isinstance(t, PhysVec) else t.nents
                a.unmap_unlocked(t, BIDI)
                return n

            t_model, t_base, ratio = interleaved(cycle, baseline, rounds)
            t = a.map_unlocked(BIDI)
            if isinstance(t, PhysVec):
                nranges = len(t)
                bpr = t.nbytes / nranges
                kernel_bpr = t.kernel_nbytes() / nranges
            else:
                nranges = t.nents
                bpr = t.nbytes / nranges
                kernel_bpr = t.kernel_nbytes() / nranges
            a.unmap_unlocked(t, BIDI)
            a.detach()
            b.put()
            assert dev.live_mappings == 0
            results.append(BenchResult(
                name=f"buf.map_unmap.{mode}", figure=t_model * 1e3, unit="ms/cycle",
                baseline=t_base * 1e3, baseline_name="per-page Python list (map + drop)",
                ratio=ratio, target=20.0 if mode == "physvec" else None,
                target_text=">= 20x" if mode == "physvec" else "",
                details={"bytes": size, "pages": npages, "ranges": nranges,
                         "bytes_per_range": bpr, "kernel_bytes_per_range": kernel_bpr,
                         "python_list_bytes_per_page": _list_bytes(page_list[:64])}))
        pv_bpr = results[0].details["bytes_per_range"]
        results.append(BenchResult(
            name="buf.map_unmap.physvec_bytes_per_range", figure=float(pv_bpr),
            unit="B/range", baseline=16.0, baseline_name="struct phys_vec (16 bytes)",
            ratio=16.0 / float(pv_bpr), target=1.0, target_text="<= 16 B/range",
            details={"python_list_bytes_per_page": results[0].details[
                "python_list_bytes_per_page"]}))
    return results


def _list_bytes(sample: list[tuple[int, int]]) -> float:
    """Bytes per entry of a Python list of ``(addr, len)`` tuples (list slot + tuple + ints)."""
    total = sys.getsizeof(sample)
    for tup in sample:
        total += sys.getsizeof(tup) + sum(sys.getsizeof(x) for x in tup)
    return total / max(1, len(sample))
