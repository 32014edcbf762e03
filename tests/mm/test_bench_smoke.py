"""Smoke test: the coalesce / check_owned benchmarks of bench_mm.py run in quick mode."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from dmabuf.bench import BenchResult

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_mm.py"


@pytest.mark.parametrize("fn", ["bench_coalesce", "bench_check_owned"])
def test_mm_consolidation_benchmarks_quick(fn: str) -> None:
    spec = importlib.util.spec_from_file_location("_bench_mm_smoke2", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = getattr(mod, fn)(True)
    results = out if isinstance(out, list) else [out]
    assert results
    for r in results:
        assert isinstance(r, BenchResult) and r.name.startswith("mm.")
        for v in (r.figure, r.baseline, r.ratio):
            assert math.isfinite(v) and v > 0, r
