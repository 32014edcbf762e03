"""Smoke test: the HMM benchmarks run in quick mode and report finite, positive figures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from dmabuf.bench import BenchResult

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mm_hmm.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("_bench_mm_hmm_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("fn", ["bench_range_fault", "bench_first_touch"])
def test_mm_hmm_benchmark_quick(fn: str) -> None:
    mod = _load()
    out = getattr(mod, fn)(True)
    results = out if isinstance(out, list) else [out]
    assert results
    for r in results:
        assert isinstance(r, BenchResult)
        for v in (r.figure, r.baseline, r.ratio):
            assert math.isfinite(v) and v > 0, r
        assert r.name.startswith("mm.hmm.")
        assert r.details["pages"] == r.details["bytes"] // 4096
