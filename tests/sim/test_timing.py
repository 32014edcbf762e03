"""The fluid timing model (dmabuf.sim.timing): allocation, the event-driven simulator, and
transfers that block controlled-scheduler threads for their modelled durations."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.sched import FreeScheduler, explore, replay
from dmabuf.sim import (
    GIB,
    Direction,
    Fabric,
    FlowKind,
    FlowSimulator,
    FlowSpec,
    LinkSpec,
    NodeKind,
    TimingParams,
    allocate,
    default_fabric,
    fabric_clock,
    memory_link,
    pcie_link,
    transfer,
)

GEN5X16 = pcie_link(5, 16).bandwidth     # 56.08 GB/s with the default protocol efficiency
GEN5X8 = pcie_link(5, 8).bandwidth
NO_LATENCY = TimingParams(switch_latency=0.0, rc_latency=0.0)


def _star(bw: dict[str, float], params: TimingParams = NO_LATENCY, hub: str = "sw",
          hub_kind: NodeKind = NodeKind.SWITCH) -> Fabric:
    """A hub with one link per leaf: ``bw`` maps leaf name -> link bandwidth."""
    f = Fabric(params)
    f.add_node(hub, hub_kind)
    for leaf, b in bw.items():
        f.add_node(leaf, NodeKind.ENDPOINT)
        f.add_link(f"l{leaf}", hub, leaf, LinkSpec(b))
    return f


def _line(caps: list[float]) -> Fabric:
    """n0 -L1- n1 -L2- n2 ... with endpoint nodes (efficiency 1, no latency)."""
    f = Fabric(NO_LATENCY)
    for i in range(len(caps) + 1):
        f.add_node(f"n{i}", NodeKind.ENDPOINT)
    for i, c in enumerate(caps):
        f.add_link(f"L{i + 1}", f"n{i}", f"n{i + 1}", LinkSpec(c))
    return f


# --------------------------------------------------------------------------------------------
# Allocation
# --------------------------------------------------------------------------------------------


def test_single_flow_gen5_x16_switch_path_gets_narrowest_link() -> None:
    f = Fabric()
    f.add_node("sw0", NodeKind.SWITCH)
    f.add_node("gpu0", NodeKind.ENDPOINT)
    f.add_node("nic0", NodeKind.ENDPOINT)
    f.add_pcie_link("dsp0", "sw0", "gpu0", 5, 16)
    f.add_pcie_link("dsp1", "sw0", "nic0", 5, 8)
    path = f.route("gpu0", "nic0")
    a = allocate(f, [FlowSpec("p2p", path, GIB)])
    assert a.rates == {"p2p": GEN5X8}
    assert a.bottleneck == {"p2p": "dsp1:down"}
    sim = FlowSimulator(f)
    sim.add(FlowSpec("p2p", path, GIB))
    res = sim.run().flows["p2p"]
    assert res.drain_end == GIB / GEN5X8
    assert res.complete == res.end == GIB / GEN5X8 + 115e-9
    assert res.iommu is False and res.setup == 0.0 and res.teardown == 0.0
    # On the spec's default machine: GPU0 -> NIC0 through SW0 gets a full Gen5 x16.
    d = default_fabric()
    assert allocate(d, [FlowSpec("x", d.route("gpu0", "nic0"), GIB)]).rates["x"] == GEN5X16
    assert round(GEN5X16) == 56_083_692_308


def test_two_flows_sharing_a_link_split_it_fairly() -> None:
    d = default_fabric()
    # GPU0's BAR and its HBM both stream to NIC0: they share sw0.dsp0 up and sw0.dsp1 down.
    flows = [FlowSpec("bar", d.route("gpu0", "nic0"), GIB),
             FlowSpec("hbm", d.route("gpu0.mem", "nic0"), GIB)]
    a = allocate(d, flows)
    assert a.rates == {"bar": GEN5X16 / 2, "hbm": GEN5X16 / 2}
    assert a.bottleneck == {"bar": "sw0.dsp0:up", "hbm": "sw0.dsp0:up"}
    sim = FlowSimulator(d)
    sim.add_flows(flows)
    out = sim.run()
    assert out.flows["bar"].drain_end == out.flows["hbm"].drain_end == GIB / (GEN5X16 / 2)
    assert out.timeline.bytes_through("sw0.dsp1", "down") == pytest.approx(2 * GIB, rel=1e-12)
    # A third flow from the other side of the switch takes a third of NIC0's port.
    b = allocate(d, [*flows, FlowSpec("gpu1", d.route("gpu1", "nic0"), GIB)])
    assert b.rates["gpu1"] == pytest.approx(GEN5X16 / 3, rel=1e-12)


def test_three_flows_with_different_bottlenecks_get_max_min() -> None:
    f = _line([10e9, 6e9, 2e9])
    flows = [FlowSpec("A", f.route("n0", "n2"), GIB),   # L1 + L2
             FlowSpec("B", f.route("n0", "n1"), GIB),   # L1
             FlowSpec("C", f.route("n1", "n3"), GIB)]   # L2 + L3
    a = allocate(f, flows)
    assert a.rates == {"A": 4e9, "B": 6e9, "C": 2e9}
    assert a.bottleneck == {"A": "L2:down", "B": "L1:down", "C": "L3:down"}
    assert a.utilisation[[f.channel("L1", "down"), f.channel("L2", "down"),
                          f.channel("L3", "down")]].tolist() == [1.0, 1.0, 1.0]
    assert a.load[f.channel("L1", "up")] == 0.0


def test_flow_through_root_complex_gets_configured_efficiency() -> None:
    p = TimingParams(rc_p2p_write_efficiency=0.75, rc_p2p_read_efficiency=0.3,
                     rc_memory_efficiency=0.9, iommu_enabled=False)
    d = default_fabric(p)
    a = allocate(d, [FlowSpec("w", d.route("gpu1", "nic1"), GIB)])
    assert a.rates == {"w": 0.75 * GEN5X16}
    assert a.bottleneck == {"w": "ceiling (rc0 efficiency)"}
    r = allocate(d, [FlowSpec("r", d.route("gpu1", "nic1"), GIB, kind=FlowKind.READ)])
    assert r.rates == {"r": 0.3 * GEN5X16}
    m = allocate(d, [FlowSpec("m", d.route("gpu1", "ram0"), GIB)])
    assert m.rates == {"m": 0.9 * GEN5X16}
    # A switch-local flow is not affected by root-complex figures.
    s = allocate(d, [FlowSpec("s", d.route("gpu0", "nic0"), GIB)])
    assert s.rates == {"s": GEN5X16}
    # The default Zen-like root complex forwards P2P writes at full link rate.
    z = default_fabric(TimingParams(iommu_enabled=False))
    assert allocate(z, [FlowSpec("w", z.route("gpu1", "nic1"), GIB)]).rates["w"] == GEN5X16
    # The NVMe flow stops at its own ceiling (0.75 x Gen4 x4); the two GPU flows, held below
    # theirs by the shared root port, split what it leaves.
    three = allocate(d, [FlowSpec("w", d.route("gpu1", "nic1"), GIB),
                         FlowSpec("w2", d.route("gpu1.mem", "nic1"), GIB),
                         FlowSpec("x", d.route("nvme1", "nic1"), GIB)])
    x_rate = 0.75 * pcie_link(4, 4).bandwidth
    assert three.rates["x"] == x_rate
    assert three.rates["w"] == three.rates["w2"] == pytest.approx((GEN5X16 - x_rate) / 2,
                                                                  rel=1e-12)
    assert three.bottleneck == {"w": "rp2:down", "w2": "rp2:down",
                                "x": "ceiling (rc0 efficiency)"}


def test_iova_path_pays_iommu_costs_bus_addr_path_does_not() -> None:
    p = TimingParams(switch_latency=0.0, rc_latency=0.0)
    d = default_fabric(p)
    n = 64 << 20
    bus = FlowSpec("bus", d.route("gpu0", "nic0"), n, map_ranges=1)       # BUS_ADDR: switch
    iova = FlowSpec("iova", d.route("gpu1", "nic1"), n, map_ranges=1)     # through rc0 + IOMMU
    pt = FlowSpec("pt", d.route("gpu1", "nic1"), n, map_ranges=1, iommu=False)  # passthrough
    huge = FlowSpec("huge", d.route("gpu1", "nic1"), n, map_ranges=1, page_size=2 << 20)
    out = {}
    for fl in (bus, iova, pt, huge):
        sim = FlowSimulator(d)
        sim.add(fl)
        out[fl.name] = sim.run().flows[fl.name]
    b, i = out["bus"], out["iova"]
    assert (b.iommu, b.setup, b.teardown) == (False, 0.0, 0.0)
    assert b.duration == n / GEN5X16
    pages = n // 4096
    assert i.iommu is True
    assert i.setup == p.map_cost(pages, 1, iommu=True) == 0.1e-6 + pages * 0.3e-6 + 3e-6
    assert i.teardown == p.unmap_cost(pages, 1, iommu=True)
    expected_extra = (p.map_cost(pages, 1, iommu=True) + p.unmap_cost(pages, 1, iommu=True)
                      + p.iotlb_miss_time(n))
    assert i.duration - b.duration == pytest.approx(expected_extra, rel=1e-9)
    assert p.iotlb_miss_time(n) == pages * 40.96e-9
    assert out["pt"].duration == b.duration
    hp = n // (2 << 20)
    assert out["huge"].duration - b.duration == pytest.approx(
        p.map_cost(hp, 1, iommu=True) + p.unmap_cost(hp, 1, iommu=True)
        + p.iotlb_miss_time(n, 2 << 20), rel=1e-9)


# --------------------------------------------------------------------------------------------
# The event-driven simulator
# --------------------------------------------------------------------------------------------


def test_arrival_and_departure_reallocate() -> None:
    f = _star({"a": 2e9, "b": 2e9, "c": 1e9})
    sim = FlowSimulator(f)
    sim.add(FlowSpec("A", f.route("a", "c"), 3_000_000_000))
    sim.add(FlowSpec("B", f.route("b", "c"), 1_000_000_000, start_time=1.0))
    res = sim.run()
    A, B = res.flows["A"], res.flows["B"]
    # 0-1 s: A alone at 1 GB/s; 1-3 s: 0.5 GB/s each, B done; 3-4 s: A alone again.
    assert (B.data_start, B.drain_end, B.end) == (1.0, 3.0, 3.0)
    assert (A.data_start, A.drain_end, A.end) == (0.0, 4.0, 4.0)
    assert A.throughput == 0.75e9 and B.throughput == 0.5e9
    assert (res.events, res.allocations) == (4, 3)
    t, u = res.timeline.utilisation("lc", Direction.DOWN)
    assert t.tolist() == [0.0, 1.0, 3.0, 4.0]
    assert u.tolist() == [1.0, 1.0, 1.0]
    t, u = res.timeline.utilisation("la", "up")
    assert u.tolist() == [0.5, 0.25, 0.5]
    assert res.timeline.bytes_through("lb", "up") == 1e9
    assert res.timeline.mean_utilisation("lc", "down") == 1.0
    assert res.makespan == 4.0


def test_drain_and_arrival_at_the_same_time_are_one_event() -> None:
    f = _star({"a": 1e9, "b": 1e9, "c": 1e9})
    sim = FlowSimulator(f)
    sim.add(FlowSpec("A", f.route("a", "c"), 10**9))
    sim.add(FlowSpec("B", f.route("b", "c"), 10**9, start_time=1.0))
    sim.add(FlowSpec("C", f.route("a", "c"), 10**9, start_time=1.0))
    res = sim.run()
    assert res.flows["A"].drain_end == 1.0
    assert res.flows["B"].drain_end == res.flows["C"].drain_end == 3.0
    assert (res.events, res.allocations) == (3, 2)
    assert res.timeline.times.tolist() == [0.0, 1.0, 3.0]
    assert res.timeline.utilisation("la", "up")[1].tolist() == [1.0, 0.5]


def test_run_until_a_horizon_reports_unfinished_bytes() -> None:
    f = _star({"a": 2e9, "b": 2e9, "c": 1e9})
    sim = FlowSimulator(f)
    sim.add(FlowSpec("A", f.route("a", "c"), 3_000_000_000))
    sim.add(FlowSpec("B", f.route("b", "c"), 1_000_000_000, start_time=1.0))
    sim.add(FlowSpec("late", f.route("b", "c"), 5, start_time=10.0))
    r2 = sim.run(until=2.0)
    assert r2.flows == {}
    assert r2.unfinished == {"A": 1.5e9, "B": 0.5e9, "late": 5.0}
    assert r2.timeline.times.tolist() == [0.0, 1.0, 2.0]
    r3 = sim.run(until=3.0)
    assert list(r3.flows) == ["B"] and r3.flows["B"].end == 3.0
    assert r3.unfinished == {"A": 1e9, "late": 5.0}
    assert sim.run(until=0.0).unfinished == {"A": 3e9, "B": 1e9, "late": 5.0}
    assert sim.run().unfinished == {}
    for bad in (-1.0, float("inf"), "soon"):
        with pytest.raises(DmaBufError) as ei:
            sim.run(until=bad)  # type: ignore[arg-type]
        assert ei.value.errno == errno.EINVAL


def test_departure_frees_capacity_for_flows_bottlenecked_elsewhere() -> None:
    f = _line([10e9, 6e9, 2e9])
    sim = FlowSimulator(f)
    # C (2 GB/s) is done at 1 s; then A and B split L1 (5 + 5, L2 has room); A done at 2 s;
    # B alone on L1 until 3 s.
    sim.add_flows([FlowSpec("A", f.route("n0", "n2"), 9_000_000_000),
                   FlowSpec("B", f.route("n0", "n1"), 21_000_000_000),
                   FlowSpec("C", f.route("n1", "n3"), 2_000_000_000)])
    res = sim.run()
    assert [res.flows[k].end for k in "ABC"] == [2.0, 3.0, 1.0]
    t, u = res.timeline.utilisation("L2", "down")
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert u.tolist() == [1.0, 5 / 6, 0.0]


def test_setup_delays_activation_and_latency_delays_completion() -> None:
    f = _star({"a": 1e9, "b": 1e9, "c": 1e9}, TimingParams(switch_latency=0.25))
    sim = FlowSimulator(f)
    sim.add(FlowSpec("A", f.route("a", "c"), 2_000_000_000, setup=1.0))
    sim.add(FlowSpec("B", f.route("b", "c"), 2_000_000_000))
    res = sim.run()
    # B alone 0-1 s (1e9 bytes), then both at 0.5 GB/s: B done at 3, A alone until 4.
    assert (res.flows["B"].drain_end, res.flows["B"].complete) == (3.0, 3.25)
    assert res.flows["A"].data_start == 1.0
    assert (res.flows["A"].drain_end, res.flows["A"].end) == (4.0, 4.25)
    assert res.flows["A"].transfer_rate == 2e9 / 3.0


def test_zero_byte_flow_completes_after_latency() -> None:
    f = _star({"a": 1e9, "c": 1e9}, TimingParams(switch_latency=1e-6))
    sim = FlowSimulator(f)
    sim.add(FlowSpec("z", f.route("a", "c"), 0, start_time=2.0))
    r = sim.run().flows["z"]
    assert (r.data_start, r.drain_end, r.end) == (2.0, 2.0, 2.000001)
    assert r.throughput == 0.0 and r.transfer_rate == 0.0


def test_simulation_is_deterministic_and_conserves_bytes() -> None:
    d = default_fabric()
    rng = np.random.default_rng(7)
    ends = ["gpu0.mem", "gpu1.mem", "nvme0.mem", "nvme1.mem", "net0", "net1", "ram0"]
    flows = []
    for k in range(120):
        s, t = rng.choice(len(ends), 2, replace=False)
        flows.append(FlowSpec(f"f{k}", d.route(ends[s], ends[t]), int(rng.integers(1, 64)) << 20,
                              start_time=float(rng.integers(0, 50)) * 1e-4,
                              kind=FlowKind.READ if k % 3 == 0 else FlowKind.WRITE,
                              map_ranges=int(k % 2)))
    sim = FlowSimulator(d)
    sim.add_flows(flows)
    r1, r2 = sim.run(), sim.run()
    assert r1.flows == r2.flows
    assert np.array_equal(r1.timeline.load, r2.timeline.load)
    # Every flow ends after it starts, and each link carried exactly the bytes routed over it.
    for fl in flows:
        res = r1.flows[fl.name]
        assert res.start <= res.data_start < res.drain_end <= res.complete <= res.end
    for lk in d.links.values():
        dirs = [None] if not lk.spec.duplex else [Direction.DOWN, Direction.UP]
        for dr in dirs:
            expected = sum(fl.bytes * sum(1 for h in fl.path if h[0] == lk.name
                                          and (dr is None or h[1] is dr)) for fl in flows)
            assert r1.timeline.bytes_through(lk.name, dr) == pytest.approx(expected, rel=1e-9,
                                                                           abs=1e-3)
    assert np.all(r1.timeline.peak_utilisation() <= 1 + 1e-9)
    assert r1.timeline.busiest(1)[0][2] > 0


def test_bad_input_is_einval_with_a_clear_message() -> None:
    d = default_fabric()
    path = d.route("gpu0", "nic0")
    with pytest.raises(DmaBufError) as ei:
        FlowSpec("neg", path, -4096)
    assert ei.value.errno == errno.EINVAL and "negative size" in str(ei.value)
    with pytest.raises(DmaBufError) as ei:
        FlowSimulator(d).add(FlowSpec("bad", [("sw0.dsp9", "up")], 4096))
    assert ei.value.errno == errno.EINVAL and "unknown link 'sw0.dsp9'" in str(ei.value)
    with pytest.raises(DmaBufError) as ei:
        Fabric().add_link("l", "a", "b", LinkSpec(0.0))
    assert ei.value.errno == errno.EINVAL and "zero bandwidth" in str(ei.value)
    with pytest.raises(DmaBufError) as ei:
        FlowSimulator(d).add(FlowSpec("gap", [("sw0.dsp0", "up"), ("rp2", "down")], 1))
    assert ei.value.errno == errno.EINVAL and "not contiguous" in str(ei.value)
    for kwargs, needle in (({"bytes": 1.5}, "must be an int"), ({"bytes": True}, "int"),
                           ({"start_time": -1.0}, "start_time"),
                           ({"setup": float("nan")}, "setup"),
                           ({"kind": "scribble"}, "flow kind"),
                           ({"iommu": "yes"}, "iommu"), ({"page_size": 0}, "page_size"),
                           ({"map_ranges": -1}, "map_ranges"), ({"name": ""}, "flow name"),
                           ({"path": 5}, "path"), ({"path": [("sw0.dsp0",)]}, "hop 0"),
                           ({"path": [(3, "up")]}, "hop 0"),
                           ({"path": [("sw0.dsp0", "sideways")]}, "direction")):
        args: dict[str, object] = {"name": "x", "path": path, "bytes": 1}
        args.update(kwargs)
        with pytest.raises(DmaBufError) as ei:
            FlowSpec(**args)  # type: ignore[arg-type]
        assert ei.value.errno == errno.EINVAL and needle in str(ei.value)
    sim = FlowSimulator(d)
    sim.add(FlowSpec("dup", path, 1))
    with pytest.raises(DmaBufError) as ei:
        sim.add(FlowSpec("dup", path, 1))
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(DmaBufError, match="FlowSpec"):
        sim.add(("dup", path, 1))  # type: ignore[arg-type]
    with pytest.raises(DmaBufError, match="Fabric"):
        FlowSimulator(object())  # type: ignore[arg-type]
    with pytest.raises(DmaBufError) as ei:
        allocate(d, [FlowSpec("a", path, 1), FlowSpec("a", path, 1)])
    assert ei.value.errno == errno.EEXIST
    # The simulator still runs the flow it accepted.
    assert sim.run().flows["dup"].bytes == 1


def test_timeline_queries_and_rows() -> None:
    f = _star({"a": 2e9, "c": 1e9})
    f.add_node("m", NodeKind.MEMORY)
    f.add_link("lm", "sw", "m", memory_link(4e9))
    sim = FlowSimulator(f)
    sim.add(FlowSpec("x", f.route("a", "c"), 10**9))
    sim.add(FlowSpec("y", f.route("a", "m"), 10**9))
    res = sim.run()
    tl = res.timeline
    assert tl.bytes_through("lm") == 1e9            # a shared link needs no direction
    assert tl.bytes_through("lm", "up") == 1e9      # ... and ignores one
    with pytest.raises(DmaBufError, match="full duplex"):
        tl.utilisation("la")
    with pytest.raises(DmaBufError, match="unknown link"):
        tl.utilisation("nope", "up")
    with pytest.raises(DmaBufError, match="unknown link"):
        tl.utilisation("nope")
    assert tl.channels[f.channel("la", "up")] == ("la", Direction.UP)
    rows = res.rows()
    assert [r["name"] for r in rows] == ["x", "y"]
    assert rows[0]["throughput"] == 1e9 and rows[0]["drain_end"] == 1.0
    assert res.flows["y"].as_dict()["transfer_rate"] == 1e9


def test_empty_simulation() -> None:
    res = FlowSimulator(default_fabric()).run()
    assert res.flows == {} and res.makespan == 0.0 and res.timeline.span == 0.0
    assert res.timeline.busiest() == [] and res.rows() == []


# --------------------------------------------------------------------------------------------
# Transfers on the scheduler's clock
# --------------------------------------------------------------------------------------------


def _two_transfers(m: Machine) -> tuple[float, float, float, float]:
    f = _star({"a": 2e9, "b": 2e9, "c": 1e9})
    fabric_clock(m, f)

    def worker(name: str, src: str, nbytes: int, start: float) -> float:
        return transfer(m, FlowSpec(name, f.route(src, "c"), nbytes, start_time=start)).end

    ta = m.sched.spawn(worker, "A", "a", 3_000_000_000, 0.0, name="A")
    tb = m.sched.spawn(worker, "B", "b", 1_000_000_000, 1.0, name="B")
    assert ta.join(10.0) and tb.join(10.0)
    clock = fabric_clock(m)
    assert clock.timeline().bytes_through("lc", "down") == 4e9
    return ta.result(), tb.result(), m.sched.now(), len(clock.results)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_controlled_two_threads_finish_at_max_min_times(seed: int) -> None:
    # Same scenario as test_arrival_and_departure_reallocate, on threads in virtual time.
    assert replay(_two_transfers, seed=seed) == (4.0, 3.0, 4.0, 2)


def _three_transfers(m: Machine) -> list[float]:
    f = _line([10e9, 6e9, 2e9])
    fabric_clock(m, f)
    specs = [FlowSpec("A", f.route("n0", "n2"), 9_000_000_000),
             FlowSpec("B", f.route("n0", "n1"), 21_000_000_000),
             FlowSpec("C", f.route("n1", "n3"), 2_000_000_000)]
    tasks = [m.sched.spawn(transfer, m, s, name=s.name) for s in specs]
    for t in tasks:
        assert t.join(10.0)
    return [t.result().end for t in tasks]


def test_controlled_threads_match_the_simulator_under_many_seeds() -> None:
    res = explore(_three_transfers, seeds=8)
    assert res.seeds == 8
    assert replay(_three_transfers, seed=11) == [2.0, 3.0, 1.0]


def test_transfer_sleeps_setup_latency_and_teardown() -> None:
    def scenario(m: Machine) -> tuple[float, float, float, float, float]:
        p = TimingParams(switch_latency=0.5)
        f = _star({"a": 1e9, "c": 1e9}, p, hub="rc", hub_kind=NodeKind.ROOT_COMPLEX)
        fabric_clock(m, f)
        m.sched.sleep(1.0)
        with m.trace.record("fabric_transfer") as events:
            r = transfer(m, FlowSpec("x", f.route("a", "c"), 4096 * 1000, map_ranges=1,
                                     start_time=2.0, setup=0.25))
        assert [e.name for e in events] == ["fabric_transfer_start", "fabric_transfer_end"]
        return r.start, r.data_start, r.drain_end, r.end, m.sched.now()

    p = TimingParams(switch_latency=0.5)
    start, data_start, drain_end, end, now = replay(scenario, seed=0)
    map_cost = p.map_cost(1000, 1, iommu=True)
    assert start == 2.0
    assert data_start == 2.25 + map_cost
    rate = 1 / (1 / 1e9 + 40.96e-9 / 4096)
    assert drain_end == pytest.approx(data_start + 4096 * 1000 / rate, rel=1e-12)
    assert end == pytest.approx(drain_end + 0.36e-6 + p.unmap_cost(1000, 1, iommu=True),
                                rel=1e-12)
    assert now == end


def test_transfer_without_fabric_and_attach_while_busy() -> None:
    m = Machine()
    with pytest.raises(DmaBufError, match="no fabric attached"):
        transfer(m, FlowSpec("x", [("l", "up")], 1))
    with pytest.raises(DmaBufError, match="no fabric attached"):
        fabric_clock(m).timeline()
    with pytest.raises(DmaBufError, match="Fabric"):
        fabric_clock(m, object())  # type: ignore[arg-type]

    def scenario(m: Machine) -> int:
        f = _star({"a": 1e9, "c": 1e9})
        clock = fabric_clock(m, f)
        t = m.sched.spawn(transfer, m, FlowSpec("x", f.route("a", "c"), 10**9), name="x")
        m.sched.sleep(0.5)
        with pytest.raises(DmaBufError) as ei:
            clock.attach(f)
        assert t.join(5.0)
        clock.attach(f)  # fine once idle
        return int(ei.value.errno or 0)

    assert replay(scenario, seed=0) == errno.EBUSY


def test_free_mode_transfer_takes_real_time() -> None:
    m = Machine(sched=FreeScheduler())
    f = _star({"a": 1e9, "c": 1e9})
    fabric_clock(m, f)
    r = transfer(m, FlowSpec("x", f.route("a", "c"), 2_000_000))  # 2 ms at 1 GB/s
    assert r.drain_end - r.data_start >= 2e-3 * (1 - 1e-9)
    assert r.transfer_rate <= 1e9 * (1 + 1e-9)
    assert fabric_clock(m).results == [r]


def test_fabric_clock_grows_with_the_fabric() -> None:
    def scenario(m: Machine) -> float:
        f = _star({"a": 1e9, "c": 1e9})
        fabric_clock(m, f)
        transfer(m, FlowSpec("x", f.route("a", "c"), 10**9))
        f.add_node("d", NodeKind.MEMORY)
        f.add_link("ld", "sw", "d", memory_link(4e9))
        r = transfer(m, FlowSpec("y", f.route("a", "d"), 10**9))
        tl = fabric_clock(m).timeline()
        assert tl.bytes_through("ld") == 1e9
        return r.end

    assert replay(scenario, seed=0) == 2.0


def test_zero_byte_transfer_on_the_clock() -> None:
    def scenario(m: Machine) -> tuple[float, float]:
        f = _star({"a": 1e9, "c": 1e9}, TimingParams(switch_latency=0.5))
        fabric_clock(m, f)
        r = transfer(m, FlowSpec("z", f.route("a", "c"), 0, start_time=1.0))
        return r.drain_end, r.end

    assert replay(scenario, seed=0) == (1.0, 1.5)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.sampled_from([1e9, 2e9, 4e9]), min_size=3, max_size=4),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 8),
                          st.integers(0, 4)), min_size=1, max_size=5),
       st.integers(0, 1000))
def test_clock_threads_match_the_simulator(bws: list[float],
                                           raw: list[tuple[int, int, int, int]],
                                           seed: int) -> None:
    """Random transfers on a star: threads on the fabric clock end exactly when the
    event-driven simulator says they do, whatever the interleaving."""
    leaves = {f"e{i}": bw for i, bw in enumerate(bws)}
    names = list(leaves)
    f = _star(leaves, TimingParams(switch_latency=1e-3))
    n = len(names)
    flows = [FlowSpec(f"f{k}", f.route(names[s % n], names[(s + 1 + d % (n - 1)) % n]),
                      size * 250_000_000, start_time=start * 0.25)
             for k, (s, d, size, start) in enumerate(raw)]
    sim = FlowSimulator(f)
    sim.add_flows(flows)
    expected = {k: r.end for k, r in sim.run().flows.items()}

    def scenario(m: Machine) -> dict[str, float]:
        fabric_clock(m, f)
        tasks = [m.sched.spawn(transfer, m, fl, name=fl.name) for fl in flows]
        for t in tasks:
            assert t.join(1e6)
        return {fl.name: t.result().end for fl, t in zip(flows, tasks, strict=True)}

    got = replay(scenario, seed=seed)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-9, abs=1e-12)


def test_long_runs_of_sequential_flows_stay_exact() -> None:
    """3,000 back-to-back flows (the fluid forgets drained flows' entries on the way)."""
    f = _star({"a": 1e9, "b": 1e9, "c": 1e9})
    sim = FlowSimulator(f, record=False)
    n = 3000
    sim.add_flows(FlowSpec(f"f{k}", f.route("a" if k % 2 else "b", "c"), 1_000_000,
                           start_time=k * 1e-3) for k in range(n))
    res = sim.run()
    ends = np.array([res.flows[f"f{k}"].drain_end for k in range(n)])
    np.testing.assert_allclose(ends, (np.arange(n) + 1) * 1e-3, rtol=1e-12)
    assert res.events == n + 1
    assert res.timeline.times.size == 0  # record=False
