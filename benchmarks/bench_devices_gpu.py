"""Benchmark of the GPU exporter (dmabuf.devices.gpu): a TTM eviction VRAM -> GTT with real bytes.

``devices.gpu.evict`` — one ``Gpu.evict(bo)`` of a **256 MiB** buffer object (16 MiB in quick
mode) from VRAM to GTT, through everything the model does for it: the BO's reservation lock,
``dma_buf_invalidate_mappings`` of an exported BO with one dynamic importer, the BOOKKEEP wait,
allocation of the GTT pages (2 MiB extents) and their DMA mapping for the GPU through its IOMMU
domain, the copy job on the GPU's ``sdma`` worker thread (translation + ownership checks on both
sides, then the bytes), the move fence added to the resv as KERNEL, and the freeing — with page
poisoning — of the old VRAM pages. Between rounds (not timed) the BO is validated back to VRAM.

Baseline: one raw ``np.copyto`` of the same number of bytes between two pre-touched arrays — the
memory bandwidth floor. The ratio is ``baseline_time / model_time`` (bigger is better). The
model moves the bytes once and writes the poison once, so ~0.5 is the ceiling without skipping
the poisoning; ``details`` also reports the same eviction with ``poison_on_free=False``.

Claim: an eviction costs at most ~4x a raw copy of its bytes (ratio >= 0.25).
"""

from __future__ import annotations

import numpy as np

from dmabuf.bench import BenchResult, benchmark, measure
from dmabuf.buf.dma_buf import DmaBufAttachOps
from dmabuf.devices import Device, Gpu, Platform, TtmPl
from dmabuf.machine import Machine

MiB = 1 << 20
GiB = 1 << 30


def _evict_time(size: int, *, poison: bool, repeat: int) -> float:
    with Machine(debug=False, name="bench-gpu") as m:
        p = Platform(machine=m, ram_size=4 * GiB, poison_on_free=poison)
        gpu = p.bind(Gpu, "gpu0", vram_size=2 * size)
        nic = p.bind(Device, "nic0")
        bo = gpu.alloc_bo(size)
        f = gpu.fill(bo, 0x5A)
        f.wait()
        buf = gpu.export(bo)
        att = buf.dynamic_attach(nic.dma, DmaBufAttachOps(True, invalidate_mappings=lambda a: None))
        gpu.evict(bo)                         # warm-up: touches the GTT pages once
        gpu.validate(bo)

        def back() -> None:
            if bo.mem_type is not TtmPl.VRAM:
                gpu.validate(bo)

        t = measure(lambda: gpu.evict(bo), repeat=repeat, setup=back)
        assert bo.mem_type is TtmPl.TT and gpu.read(bo, 0, 4).tolist() == [0x5A] * 4
        att.detach()
        buf.put()
        p.close()
        return t


@benchmark("devices.gpu.evict",
           claim="evicting a BO VRAM->GTT (invalidate, wait, copy engine, poison) costs <= 4x a "
                 "raw np.copyto of its bytes")
def bench_evict(quick: bool) -> BenchResult:
    size = 16 * MiB if quick else 256 * MiB
    repeat = 3 if quick else 5
    src = np.full(size, 1, dtype=np.uint8)
    dst = np.zeros(size, dtype=np.uint8)
    np.copyto(dst, src)
    raw = measure(lambda: np.copyto(dst, src), repeat=repeat)
    model = _evict_time(size, poison=True, repeat=repeat)
    nopoison = _evict_time(size, poison=False, repeat=repeat)
    gbs = size / model / 1e9
    return BenchResult(
        name="devices.gpu.evict",
        figure=gbs, unit="GB/s", baseline=size / raw / 1e9, baseline_name="np.copyto GB/s",
        ratio=raw / model, target=0.25, target_text=">= 0.25 (<= 4x a raw copy)",
        details={"bytes": size, "model_s": model, "raw_s": raw,
                 "model_no_poison_s": nopoison, "ratio_no_poison": raw / nopoison})
