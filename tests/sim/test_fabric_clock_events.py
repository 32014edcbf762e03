"""FabricClock.events counts timing-model events as FlowSimulator does."""

from __future__ import annotations

from dmabuf.machine import Machine
from dmabuf.sched import replay
from dmabuf.sim.fabric import Fabric, LinkSpec, NodeKind
from dmabuf.sim.params import TimingParams
from dmabuf.sim.timing import FlowSimulator, FlowSpec, fabric_clock, transfer

NO_LATENCY = TimingParams(switch_latency=0.0, rc_latency=0.0)


def _star() -> Fabric:
    f = Fabric(NO_LATENCY)
    f.add_node("sw", NodeKind.SWITCH)
    for leaf, bw in (("a", 2e9), ("b", 2e9), ("c", 1e9)):
        f.add_node(leaf, NodeKind.ENDPOINT)
        f.add_link(f"l{leaf}", "sw", leaf, LinkSpec(bw))
    return f


def _flows(f: Fabric) -> list[FlowSpec]:
    return [FlowSpec("A", f.route("a", "c"), 3_000_000_000, start_time=0.0),
            FlowSpec("B", f.route("b", "c"), 1_000_000_000, start_time=1.0)]


def test_clock_events_equal_the_simulators_on_the_same_flows() -> None:
    f = _star()
    sim = FlowSimulator(f)
    sim.add_flows(_flows(f))
    expected = sim.run().events

    def scenario(m: Machine) -> tuple[int, int]:
        clock = fabric_clock(m, f)
        before = clock.events
        tasks = [m.sched.spawn(transfer, m, fl, name=fl.name) for fl in _flows(f)]
        for t in tasks:
            assert t.join(100.0)
        return before, clock.events

    # A starts (t=0), B starts (t=1), B drains (t=3), A drains (t=4)
    assert expected == 4
    assert replay(scenario, seed=0) == (0, expected)


def test_a_clock_without_fabric_has_no_events() -> None:
    with Machine() as m:
        assert fabric_clock(m).events == 0
