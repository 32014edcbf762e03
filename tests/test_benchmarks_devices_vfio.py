"""Smoke test: the VFIO revoke benchmark runs in quick mode and reports finite, positive figures."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from dmabuf.bench import BenchResult

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_devices_vfio.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("_bench_devices_vfio_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vfio_revoke_benchmark_quick() -> None:
    mod = _load()
    out = mod.bench_revoke(True)  # type: ignore[attr-defined]
    assert isinstance(out, list)
    assert [r.name for r in out] == ["devices.vfio.revoke_n1", "devices.vfio.revoke_n10",
                                     "devices.vfio.revoke_n100", "devices.vfio.revoke_linearity"]
    for r in out:
        assert isinstance(r, BenchResult)
        for v in (r.figure, r.baseline, r.ratio):
            assert math.isfinite(v) and v > 0, r
    assert out[0].ratio == 1.0
    assert out[-1].target == 0.5
