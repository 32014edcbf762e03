"""Benchmarks of layer 6's timing model (dmabuf.sim): max-min allocation and the fluid simulator.

Both run on a generated fabric: one root complex with host memory, 16 Gen5 x16 root ports each
leading to a switch, 16 endpoints under each switch on mixed Gen4/Gen5 x4..x16 links — 273
links, 545 channels. Flows go between random endpoints or to host memory, reads and writes,
1..255 MiB, issued over 10 ms (seeded, the same every run).
"""

from __future__ import annotations

import math
import time

import numpy as np

from dmabuf.bench import BenchResult, benchmark, measure
from dmabuf.sim import (
    Fabric,
    FlowKind,
    FlowSimulator,
    FlowSpec,
    NodeKind,
    max_min_fair,
    max_min_fair_reference,
    memory_link,
)

_LINKS = [(5, 16), (4, 16), (5, 8), (4, 4)]


def generated_fabric(switches: int = 16, per_switch: int = 16) -> tuple[Fabric, list[str]]:
    """A two-level tree: rc -> switches -> endpoints, plus host memory on the root complex."""
    f = Fabric(name=f"generated-{switches}x{per_switch}")
    f.add_node("rc", NodeKind.ROOT_COMPLEX)
    f.add_node("ram", NodeKind.MEMORY)
    f.add_link("ram.bus", "rc", "ram", memory_link(460.8e9))
    eps = []
    for s in range(switches):
        sw = f"sw{s}"
        f.add_node(sw, NodeKind.SWITCH)
        f.add_pcie_link(f"rp{s}", "rc", sw, 5, 16)
        for e in range(per_switch):
            ep = f"ep{s}.{e}"
            f.add_node(ep, NodeKind.ENDPOINT)
            gen, width = _LINKS[(s * per_switch + e) % len(_LINKS)]
            f.add_pcie_link(f"dsp{s}.{e}", sw, ep, gen, width)
            eps.append(ep)
    return f, eps


def generated_flows(f: Fabric, eps: list[str], n: int, seed: int = 1,
                    span: float = 0.01) -> list[FlowSpec]:
    """``n`` seeded flows between random endpoints (every fifth to host memory)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = eps[int(rng.integers(len(eps)))]
        b = "ram" if k % 5 == 0 else eps[int(rng.integers(len(eps)))]
        if a == b:
            b = "ram"
        out.append(FlowSpec(f"f{k}", f.route(a, b), int(rng.integers(1, 256)) << 20,
                            start_time=float(rng.uniform(0.0, span)),
                            kind=FlowKind.READ if k % 3 == 0 else FlowKind.WRITE))
    return out


def _incidence(f: Fabric, flows: list[FlowSpec]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """COO incidence, ceilings and per-flow channel lists of ``flows`` on ``f``."""
    from dmabuf.sim import allocate

    ceilings = allocate(f, flows).ceilings
    fi: list[int] = []
    ci: list[int] = []
    w: list[float] = []
    paths: list[list[int]] = []
    for k, fl in enumerate(flows):
        info = f.resolve_path(fl.path, fl.kind)
        path: list[int] = []
        for c, cnt in zip(info.channels.tolist(), info.counts.tolist(), strict=True):
            fi.append(k)
            ci.append(c)
            w.append(cnt)
            path += [c] * int(cnt)
        paths.append(path)
    dem = np.array([ceilings[fl.name] for fl in flows])
    return np.array(fi), np.array(ci), np.array(w), dem, paths


@benchmark("sim.timing.maxmin",
           claim="max-min fair allocation of 1,000 flows over 273 links (545 channels): "
                 "vectorised progressive filling >= 5x a pure-Python per-flow loop")
def bench_maxmin(quick: bool) -> BenchResult:
    n = 300 if quick else 1000
    f, eps = generated_fabric()
    flows = generated_flows(f, eps, n)
    fi, ci, w, dem, paths = _incidence(f, flows)
    cap = f.capacity
    caps = cap.tolist()
    dem_l = dem.tolist()
    mm = max_min_fair(fi, ci, cap, n_flows=n, weight=w, demand=dem)
    ref = max_min_fair_reference(paths, caps, dem_l)
    assert np.allclose(mm.rates, ref, rtol=1e-9)
    repeat = 3 if quick else 7
    t_model = measure(lambda: max_min_fair(fi, ci, cap, n_flows=n, weight=w, demand=dem),
                      repeat=repeat, number=3 if quick else 10)
    t_ref = measure(lambda: max_min_fair_reference(paths, caps, dem_l), repeat=repeat)
    return BenchResult(
        name="sim.timing.maxmin", figure=t_model * 1e3, unit="ms per allocation",
        baseline=t_ref * 1e3, baseline_name="pure-Python progressive filling (per-flow loop)",
        ratio=t_ref / t_model, target=5.0, target_text=">= 5",
        details={"flows": n, "links": len(f.links), "channels": f.n_channels,
                 "entries": int(fi.size), "rounds": mm.rounds})


def _naive_simulation(acts: list[float], sizes: list[float], paths: list[list[int]],
                      caps: list[float], dem: list[float], until: float) -> int:
    """The obvious fluid simulator: a dict of remaining bytes, the reference allocator at every
    event. Runs up to simulated time ``until``; returns the number of event times processed."""
    order = sorted(range(len(acts)), key=lambda i: (acts[i], i))
    pend = 0
    remaining: dict[int, float] = {}
    t = 0.0
    events = 0
    while pend < len(order) or remaining:
        ids = sorted(remaining)
        rates = max_min_fair_reference([paths[i] for i in ids], caps,
                                       [dem[i] for i in ids]) if ids else []
        rate = dict(zip(ids, rates, strict=True))
        t_arr = acts[order[pend]] if pend < len(order) else math.inf
        t_drain = min((t + remaining[i] / rate[i] for i in ids), default=math.inf)
        t_next = min(t_arr, t_drain)
        if t_next > until:
            break
        for i in ids:
            left = remaining[i] - rate[i] * (t_next - t)
            if t + remaining[i] / rate[i] <= t_next * (1 + 1e-12):
                del remaining[i]
            else:
                remaining[i] = left
        while pend < len(order) and acts[order[pend]] <= t_next:
            remaining[order[pend]] = sizes[order[pend]]
            pend += 1
        t = t_next
        events += 1
    return events


@benchmark("sim.timing.events",
           claim="FlowSimulator on a 1,000-flow simulation over 273 links: events/s >= 5x a "
                 "naive dict-based fluid simulator using the pure-Python allocator (same window "
                 "of the same simulation)")
def bench_events(quick: bool) -> BenchResult:
    n = 200 if quick else 1000
    f, eps = generated_fabric()
    flows = generated_flows(f, eps, n)
    sim = FlowSimulator(f, record=True)
    sim.add_flows(flows)
    t0 = time.perf_counter()
    full = sim.run()
    t_full = time.perf_counter() - t0
    # The naive simulator is far slower: compare both on the same window of simulated time,
    # its first ``k`` events (the timeline's boundaries are the event times).
    k = 150 if quick else 400
    horizon = float(full.timeline.times[min(k, full.timeline.times.size - 1)])
    t_model = measure(lambda: sim.run(until=horizon), repeat=3)
    part = sim.run(until=horizon)
    _, _, _, dem, paths = _incidence(f, flows)
    acts = [fl.start_time for fl in flows]
    sizes = [float(fl.bytes) for fl in flows]
    t0 = time.perf_counter()
    naive_events = _naive_simulation(acts, sizes, paths, f.capacity.tolist(), dem.tolist(),
                                     horizon)
    t_naive = time.perf_counter() - t0
    model_eps = part.events / t_model
    naive_eps = naive_events / t_naive
    return BenchResult(
        name="sim.timing.events", figure=model_eps, unit="events/s", baseline=naive_eps,
        baseline_name=f"naive fluid simulator, same first {naive_events} events",
        ratio=t_naive / t_model, target=5.0, target_text=">= 5",
        details={"flows": n, "window_s": horizon, "window_events_model": part.events,
                 "window_events_naive": naive_events, "full_events": full.events,
                 "full_allocations": full.allocations, "full_seconds": t_full,
                 "full_events_per_s": full.events / t_full,
                 "simulated_makespan_s": full.makespan,
                 "timeline_segments": int(full.timeline.load.shape[0])})
