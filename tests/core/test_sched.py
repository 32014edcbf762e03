"""The scheduler interface: free mode, controlled mode, deadlock reports, replay, exploration."""

from __future__ import annotations

import errno
import threading

import pytest

from dmabuf.errors import ContractViolation, DeadlockDetected, DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.sched import (
    ControlledScheduler,
    ExplorationFailure,
    FreeScheduler,
    explore,
    replay,
)


def _handoff(m: Machine) -> list[str]:
    """Producer/consumer over a condition variable; returns the order of events."""
    lk = m.sched.lock("box")
    cond = m.sched.condition(lk)
    box: list[int] = []
    log: list[str] = []

    def consumer() -> int:
        with cond:
            while not box:
                cond.wait(what="waiting for the box")
            log.append("consumed")
            return box.pop()

    t = m.sched.spawn(consumer, name="consumer")
    with cond:
        box.append(42)
        log.append("produced")
        cond.notify_all()
    assert t.join(5.0)
    assert t.result() == 42
    return log


def test_free_mode_handoff() -> None:
    m = Machine(sched=FreeScheduler())
    assert _handoff(m) == ["produced", "consumed"]


def test_controlled_mode_handoff_under_many_seeds() -> None:
    res = explore(_handoff, 40)
    assert res.seeds == 40
    assert res.switches > 0
    assert res.virtual_time == 0.0


def _order_of_two(m: Machine) -> list[str]:
    out: list[str] = []

    def worker(tag: str) -> None:
        for i in range(3):
            m.sched.checkpoint()
            out.append(f"{tag}{i}")

    a = m.sched.spawn(worker, "a", name="a")
    b = m.sched.spawn(worker, "b", name="b")
    assert a.join() and b.join()
    return out


def test_same_seed_replays_the_same_interleaving() -> None:
    first = replay(_order_of_two, seed=7)
    assert replay(_order_of_two, seed=7) == first
    orders = {tuple(replay(_order_of_two, seed=s)) for s in range(30)}
    assert len(orders) > 1, "different seeds must explore different interleavings"
    for order in orders:
        assert [x for x in order if x[0] == "a"] == ["a0", "a1", "a2"]


def _abba(m: Machine) -> None:
    a, b = m.sched.lock("A"), m.sched.lock("B")

    def t1() -> None:
        with a:
            m.sched.checkpoint()
            with b:
                pass

    def t2() -> None:
        with b:
            m.sched.checkpoint()
            with a:
                pass

    x, y = m.sched.spawn(t1, name="t1"), m.sched.spawn(t2, name="t2")
    x.join()
    y.join()


def test_deadlock_reported_with_wait_points_and_replayed() -> None:
    with pytest.raises(ExplorationFailure) as ei:
        explore(_abba, 200)
    seed = ei.value.seed
    err = ei.value.error
    assert isinstance(err, DeadlockDetected)
    assert err.seed == seed
    assert set(err.waits) == {"main", "t1", "t2"}
    assert err.waits["t1"] == "acquire B (held by t2)"
    assert err.waits["t2"] == "acquire A (held by t1)"
    with pytest.raises(DeadlockDetected) as again:
        replay(_abba, seed=seed)
    assert again.value.waits == err.waits


def test_virtual_clock_jumps_to_timeouts() -> None:
    def scenario(m: Machine) -> tuple[float, bool, float]:
        ev = m.sched.event("never")
        t0 = m.sched.now()
        got = ev.wait(2.5, what="timed wait")
        t1 = m.sched.now()
        m.sched.sleep(0.5)
        return t1 - t0, got, m.sched.now()

    assert replay(scenario, seed=0) == (2.5, False, 3.0)


def test_condition_wait_timeout_returns_false_and_reacquires() -> None:
    def scenario(m: Machine) -> tuple[bool, bool]:
        lk = m.sched.lock()
        cond = m.sched.condition(lk)
        with cond:
            r = cond.wait(1.0)
            return r, lk.locked()

    assert replay(scenario, seed=3) == (False, True)


def test_lock_timeout_in_controlled_mode() -> None:
    def scenario(m: Machine) -> tuple[bool, float]:
        lk = m.sched.lock("L")
        done = m.sched.event()

        def holder() -> None:
            with lk:
                done.wait(what="holder parks")

        t = m.sched.spawn(holder)
        while not lk.locked():
            m.sched.checkpoint()
        got = lk.acquire(timeout=0.25)
        done.set()
        assert t.join(1.0)
        return got, m.sched.now()

    assert replay(scenario, seed=1) == (False, 0.25)


def test_exception_in_thread_fails_run_with_seed_note() -> None:
    def scenario(m: Machine) -> None:
        def bad() -> None:
            raise ValueError("boom")

        t = m.sched.spawn(bad, name="bad")
        t.join()

    with pytest.raises(ValueError, match="boom") as ei:
        replay(scenario, seed=11)
    assert any("seed=11" in n for n in getattr(ei.value, "__notes__", []))


def test_primitive_used_outside_run_is_a_contract_violation() -> None:
    s = ControlledScheduler(0)
    lk = s.lock("x")
    with pytest.raises(ContractViolation, match="not part of its run"):
        lk.acquire()


def test_scheduler_runs_once() -> None:
    s = ControlledScheduler(0)
    assert s.run(lambda: 5) == 5
    with pytest.raises(RuntimeError, match="runs once"):
        s.run(lambda: 6)


def test_unknown_policy_rejected() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        ControlledScheduler(0, policy="lifo")


def test_negative_timeouts_are_einval() -> None:
    def scenario(m: Machine) -> None:
        with pytest.raises(DmaBufError) as ei:
            m.sched.event().wait(-1.0)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(DmaBufError):
            m.sched.sleep(-0.1)

    replay(scenario, seed=0)
    with pytest.raises(DmaBufError):
        FreeScheduler().sleep(-1)


def test_spawned_threads_inherit_current_machine() -> None:
    m = Machine(name="inherit")
    seen: list[Machine] = []
    with m:
        t = m.sched.spawn(lambda: seen.append(current_machine()))
        assert t.join(5.0)
    assert seen == [m]


def test_wall_timeout_reports_stuck_thread() -> None:
    blocker = threading.Event()

    def scenario() -> None:
        blocker.wait(2.0)  # a raw primitive the scheduler cannot see

    s = ControlledScheduler(0, wall_timeout=0.2)
    with pytest.raises(RuntimeError, match="stuck"):
        s.run(scenario)
    blocker.set()


def test_fifo_policy_is_deterministic() -> None:
    order = replay(_order_of_two, seed=0, policy="fifo")
    assert order == ["a0", "a1", "a2", "b0", "b1", "b2"]
