"""Smoke test: the timing-model benchmarks (benchmarks/bench_sim_timing.py) run in quick mode."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sim_timing.py"


def _module() -> ModuleType:
    name = "_dmabuf_bench_bench_sim_timing"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod




def test_benchmarks_are_registered() -> None:
    from dmabuf.bench import registry

    _module()
    reg = registry()
    assert {"sim.timing.maxmin", "sim.timing.events"} <= set(reg)
    assert "1,000 flows" in reg["sim.timing.maxmin"][1]


def test_naive_baseline_agrees_with_the_simulator_on_event_count() -> None:
    mod = _module()
    f, eps = mod.generated_fabric(4, 4)
    flows = mod.generated_flows(f, eps, 30)
    sim = mod.FlowSimulator(f)
    sim.add_flows(flows)
    full = sim.run()
    _, _, _, dem, paths = mod._incidence(f, flows)
    n = mod._naive_simulation([fl.start_time for fl in flows], [float(fl.bytes) for fl in flows],
                              paths, f.capacity.tolist(), dem.tolist(), math.inf)
    assert n == full.events == 60
