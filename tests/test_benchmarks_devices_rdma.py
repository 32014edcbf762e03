"""Smoke test: the RDMA NIC benchmarks run in quick mode and report finite, positive figures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest

from dmabuf.bench import BenchResult

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_devices_rdma.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_devices_rdma_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("fn", ["bench_rdma_write", "bench_invalidation_storm"])
def test_devices_rdma_benchmark_quick(fn: str) -> None:
    out = getattr(_load(), fn)(True)
    results = out if isinstance(out, list) else [out]
    assert results
    for r in results:
        assert isinstance(r, BenchResult)
        for x in (r.figure, r.baseline, r.ratio):
            assert math.isfinite(x) and x > 0, r
        assert r.name.startswith("devices.rdma.")
        assert r.target == 0.8
    if fn == "bench_rdma_write":
        assert results[0].details["data_ok"] is True
        assert (results[0].details["src_path"], results[0].details["dst_path"]) == ("bus",
                                                                                   "iommu")
