"""Smoke test: the fence wake-up benchmark runs in quick mode with finite, positive figures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from dmabuf.bench import BenchResult

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sync_fence.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("_bench_sync_fence_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sync_fence_benchmark_quick() -> None:
    mod = _load()
    r = mod.bench_fence_wakeup(True)  # type: ignore[attr-defined]
    assert isinstance(r, BenchResult)
    assert r.name == "sync.fence_wakeup" and r.unit == "us/round trip"
    for v in (r.figure, r.baseline, r.ratio):
        assert math.isfinite(v) and v > 0, r
    assert r.target is not None and abs(r.target - 1 / 1.5) < 1e-12
    assert r.details["rounds"] == 5 and len(r.details["ratios"]) == 5
    assert r.details["round_trips"] == 300
