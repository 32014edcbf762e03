"""Smoke test: the uapi.share benchmark runs in quick mode and reports finite, positive figures.

It forks a child (bounded: every wait has a timeout, the child is killed if it does not stop)
and shares a 16 MiB host memfd, a shared_memory segment and a pickled array with it.
"""

from __future__ import annotations

import importlib.util
import math
import multiprocessing
from pathlib import Path

from dmabuf.bench import BenchResult

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_uapi_share.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location("_bench_uapi_share_smoke", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_uapi_share_benchmark_quick() -> None:
    before = {p.pid for p in multiprocessing.active_children()}
    out = _load().bench_share(True)  # type: ignore[attr-defined]
    assert [r.name for r in out] == ["uapi.share.vs_pickle", "uapi.share.vs_shared_memory"]
    for r in out:
        assert isinstance(r, BenchResult)
        for v in (r.figure, r.baseline, r.ratio):
            assert math.isfinite(v) and v > 0, r
        assert r.unit == "ms" and r.details["bytes"] == 16 << 20
        assert r.target is not None
    assert out[0].figure == out[1].figure            # one fd-passing time, two baselines
    assert {p.pid for p in multiprocessing.active_children()} == before   # child reaped
