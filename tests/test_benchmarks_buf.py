"""Smoke test: the dma-buf protocol benchmark runs in quick mode with finite, positive figures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from dmabuf.bench import BenchResult

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_buf.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("_bench_buf_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_buf_benchmark_quick() -> None:
    mod = _load()
    results = mod.bench_map_unmap(True)  # type: ignore[attr-defined]
    assert [r.name for r in results] == ["buf.map_unmap.physvec", "buf.map_unmap.sgtable",
                                         "buf.map_unmap.physvec_bytes_per_range"]
    for r in results:
        assert isinstance(r, BenchResult)
        for v in (r.figure, r.baseline, r.ratio):
            assert math.isfinite(v) and v > 0, r
    assert results[0].details["bytes_per_range"] == 16.0
    assert results[0].details["ranges"] == results[1].details["ranges"] == 1024
