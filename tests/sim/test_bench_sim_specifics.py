"""Smoke test: the scenario-runner benchmarks (benchmarks/bench_sim.py) run in quick mode."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sim.py"


def _module() -> ModuleType:
    name = "_dmabuf_bench_bench_sim"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod




def test_quick_scenario_has_100_flows_and_full_one_1000() -> None:
    mod = _module()
    assert mod.scenario(10).total_bytes == 100 * (256 << 10)
    full = mod.scenario(100)
    assert sum(s.count for s in full.hosts[0].streams) == 1000


def test_benchmarks_are_registered() -> None:
    from dmabuf.bench import registry

    _module()
    assert {"sim.runner.events", "sim.runner.bytes", "sim.demo.wall"} <= set(registry())


def test_events_figure_is_the_runners_own_clock_count() -> None:
    mod = _module()
    r = mod.bench_events(True)
    # 100 flows: at least one activation and one drain event per batch of flows
    assert r.details["events"] > 0 and r.details["simulator_events"] > 0
    assert r.details["flows"] == 100


def test_demo_wall_meets_the_30_second_claim() -> None:
    r = _module().bench_demo_wall(True)
    assert 0 < r.figure < 30 and r.ratio == pytest.approx(30 / r.figure) and r.met is True
