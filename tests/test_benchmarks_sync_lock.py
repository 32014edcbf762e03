"""Smoke test: the sync locking benchmarks run in quick mode and report finite, positive figures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from dmabuf.bench import BenchResult

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sync_lock.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("_bench_sync_lock_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(r: BenchResult) -> None:
    assert isinstance(r, BenchResult)
    for v in (r.figure, r.baseline, r.ratio):
        assert math.isfinite(v) and v > 0, r
    assert r.name.startswith("sync.")


def test_resv_lock_benchmark_quick() -> None:
    r = _load().bench_resv_lock(True)  # type: ignore[attr-defined]
    _check(r)
    assert r.name == "sync.resv_lock"
    assert r.target is not None and abs(r.target - 1 / 3) < 1e-9
    assert r.details["lockdep"] is False


def test_ww_stress_benchmark_quick() -> None:
    rs = _load().bench_ww_stress(True)  # type: ignore[attr-defined]
    assert [r.name for r in rs] == ["sync.ww_stress.2t", "sync.ww_stress.8t"]
    for r in rs:
        _check(r)
        assert r.details["transactions"] == r.details["threads"] * 30
