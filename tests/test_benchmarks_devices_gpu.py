"""Smoke test: the GPU eviction benchmark runs in quick mode with finite, positive figures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from dmabuf.bench import BenchResult

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_devices_gpu.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("_bench_devices_gpu_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_devices_gpu_benchmark_quick() -> None:
    mod = _load()
    r = mod.bench_evict(True)  # type: ignore[attr-defined]
    assert isinstance(r, BenchResult) and r.name == "devices.gpu.evict" and r.unit == "GB/s"
    for v in (r.figure, r.baseline, r.ratio, r.details["model_s"], r.details["raw_s"],
              r.details["ratio_no_poison"]):
        assert math.isfinite(v) and v > 0, r
    assert r.details["bytes"] == 16 << 20
