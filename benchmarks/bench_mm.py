"""Benchmarks of layer 2 (dmabuf.mm): PhysMemory byte movement against raw numpy."""

from __future__ import annotations

import numpy as np

from dmabuf.bench import BenchResult, benchmark, interleaved, measure
from dmabuf.mm import MemKind, PhysMemory, split_ranges


def _setup(size: int, extent: int | None) -> tuple[PhysMemory, np.ndarray, np.ndarray]:
    pm = PhysMemory()
    pm.add_region("ram0", size + (64 << 20), MemKind.RAM)
    pm.add_region("vram0", size + (64 << 20), MemKind.DEVICE)
    owner = pm.new_owner("bench")
    src = pm.alloc("ram0", size, owner, contiguous=True)
    dst = pm.alloc("vram0", size, owner, contiguous=True)
    if extent is not None:
        src = split_ranges(src, extent)
        # Shift the destination's cut points so every piece boundary differs from the source's.
        half = extent // 2
        dst = np.concatenate((split_ranges(dst[:1].copy(), half)[:1],
                              split_ranges(_tail(dst, half), extent)))
    pm.fill(src, 0x5A)
    pm.fill(dst, 0)  # fault the pages in before timing
    return pm, src, dst


def _tail(r: np.ndarray, skip: int) -> np.ndarray:
    t = r.copy()
    t["addr"][0] += np.uint64(skip)
    t["len"][0] -= np.uint64(skip)
    return t


@benchmark("mm.copy", claim="PhysMemory.copy of 256 MiB between two regions >= 0.9x raw np.copyto")
def bench_copy(quick: bool) -> list[BenchResult]:
    size = (16 << 20) if quick else (256 << 20)
    repeat = 5 if quick else 9
    results = []
    for label, extent in (("contiguous", None), ("2MiB-extents", 2 << 20)):
        pm, src, dst = _setup(size, extent)
        # Baseline: one raw np.copyto between the very same memory (both regions' backing
        # views), so the ratio is the model's own overhead (range walk, cut points, checks).
        a = pm.view(pm.region("vram0").base, size)
        b = pm.view(pm.region("ram0").base, size)
        model, raw, ratio = interleaved(lambda pm=pm, src=src, dst=dst: pm.copy(dst, src),
                                         lambda a=a, b=b: np.copyto(a, b), repeat)
        assert bool(np.all(pm.read(dst[:1]) == 0x5A))
        results.append(BenchResult(
            name=f"mm.copy.{label}", figure=size / model / 1e9, unit="GB/s",
            baseline=size / raw / 1e9, baseline_name="np.copyto, same memory, one call",
            ratio=ratio, target=0.9, target_text=">= 0.9",
            details={"bytes": size, "src_ranges": int(src.size), "dst_ranges": int(dst.size)}))
    return results


@benchmark("mm.checksum", claim="PhysMemory.checksum (crc32 piecewise) vs zlib.crc32 on one buffer")
def bench_checksum(quick: bool) -> BenchResult:
    import zlib
    size = (16 << 20) if quick else (256 << 20)
    pm, src, _ = _setup(size, 2 << 20)
    b = np.full(size, 0x5A, dtype=np.uint8)
    raw = measure(lambda: zlib.crc32(b.data), repeat=3)
    model = measure(lambda: pm.checksum(src), repeat=3)
    return BenchResult(name="mm.checksum", figure=size / model / 1e9, unit="GB/s",
                       baseline=size / raw / 1e9, baseline_name="zlib.crc32 over one buffer",
                       ratio=raw / model, target=0.9, target_text=">= 0.9",
                       details={"bytes": size, "ranges": int(src.size)})


@benchmark("mm.alloc",
           claim="alloc+free of 16 MiB buffers in 4 KiB pages vs a per-page Python free list")
def bench_alloc(quick: bool) -> BenchResult:
    n = 8 if quick else 48
    pages = 4096
    pm = PhysMemory(poison_on_free=False)
    pm.add_region("ram0", 1 << 30, MemKind.RAM)
    owner = pm.new_owner("bench")
    rng = np.random.default_rng(1)

    def model() -> None:
        bufs = [pm.alloc("ram0", pages * 4096, owner, max_extent=4096, rng=rng) for _ in range(n)]
        for b in bufs:
            pm.free(b)

    def baseline() -> None:
        # A per-page Python list allocator: what the model must beat.
        free = list(range(1 << 18))
        bufs = [[free.pop() for _ in range(pages)] for _ in range(n)]
        for b in bufs:
            free.extend(b)

    t_model = measure(model, repeat=3)
    t_base = measure(baseline, repeat=3)
    return BenchResult(name="mm.alloc", figure=n * 2 / t_model, unit="alloc+free/s",
                       baseline=n * 2 / t_base, baseline_name="per-page Python free list",
                       ratio=t_base / t_model, target=None, target_text="",
                       details={"buffers": n, "bytes_each": pages * 4096})


def _page_list(count: int, break_every: float, seed: int = 1) -> np.ndarray:
    """``count`` 4 KiB ranges, physically contiguous except for a random gap with probability
    ``break_every`` before each range (what a fragmented allocation hands out page by page)."""
    from dmabuf.mm import make_ranges
    rng = np.random.default_rng(seed)
    gaps = np.cumsum(rng.random(count) < break_every).astype(np.uint64) * np.uint64(8192)
    return make_ranges(np.arange(count, dtype=np.uint64) * np.uint64(4096) + gaps, 4096)


@benchmark("mm.coalesce",
           claim="coalesce of 262,144 4 KiB ranges in well under 2 ms (vectorised, any shape)")
def bench_coalesce(quick: bool) -> list[BenchResult]:
    from dmabuf.mm import coalesce
    count = (1 << 15) if quick else (1 << 18)
    r = _page_list(count, 0.3)
    repeat = 5 if quick else 15
    results = []
    caps: tuple[tuple[str, int | None], ...] = (("merge", None), ("max_len-64KiB", 1 << 16))
    for label, cap in caps:
        def model(cap: int | None = cap) -> object:
            return coalesce(r, max_len=cap)

        t_model = measure(model, repeat=repeat)
        t_copy = measure(lambda: r.view(np.uint64).copy(), repeat=repeat)
        results.append(BenchResult(
            name=f"mm.coalesce.{label}", figure=count / t_model / 1e6, unit="M ranges/s",
            baseline=count / t_copy / 1e6, baseline_name="one copy of the 16-byte range list",
            ratio=t_copy / t_model, target=None,
            target_text="< 2 ms per 262,144 ranges" if not quick else "",
            details={"ranges": count, "ms": t_model * 1e3,
                     "merged_ranges": int(coalesce(r, max_len=cap).size)}))
    return results


@benchmark("mm.check_owned",
           claim="check_owned of 256 spans of 64 pages as fast as owners_of + compare")
def bench_check_owned(quick: bool) -> BenchResult:
    spans = 64 if quick else 256
    pm = PhysMemory(poison_on_free=False)
    pm.add_region("ram0", 256 << 20, MemKind.RAM)
    owner = pm.new_owner("bench")
    r = pm.alloc("ram0", spans * 64 * 4096, owner, max_extent=64 * 4096,
                 rng=np.random.default_rng(3))
    repeat = 20 if quick else 200
    t_model = measure(lambda: pm.check_owned(r, owner), repeat=repeat)
    t_base = measure(lambda: bool((pm.owners_of(r) != owner).any()), repeat=repeat)
    return BenchResult(name="mm.check_owned", figure=spans / t_model / 1e6, unit="M spans/s",
                       baseline=spans / t_base / 1e6,
                       baseline_name="owners_of (one gather) + compare",
                       ratio=t_base / t_model, target=1.0, target_text=">= 1.0",
                       details={"spans": int(r.size), "pages_per_span": 64,
                                "us": t_model * 1e6})
