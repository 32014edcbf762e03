"""Port of drivers/dma-buf/st-dma-fence.c (KUnit suite ``dma-buf-fence``), case by case.

Mock fences are as in the current file: ``dma_fence_init(f, &mock_ops, NULL, 0, 0)`` — names-only
ops (so they detach on signal) and the inline lock. Time: one jiffy is modelled as 1 ms
(HZ = 1000); timeouts are in seconds.

The wait tests and the race test run in free mode (real threads) and also under the controlled
scheduler over many seeds (``dmabuf.sched.explore``), where time is virtual and every
interleaving choice is seeded.
"""

from __future__ import annotations

import errno

import pytest

from dmabuf.machine import Machine
from dmabuf.sched import explore
from dmabuf.sync.dma_fence import (
    DmaFence,
    DmaFenceCb,
    DmaFenceOps,
    dma_fence_get_stub,
)

JIFFY = 0.001
HZ = 1000 * JIFFY
MOCK_OPS = DmaFenceOps("mock", "mock")
SEEDS = 60


def mock_fence(machine: Machine | None = None) -> DmaFence:
    """st-dma-fence.c mock_fence(): names-only ops, inline lock, context 0, seqno 0."""
    return DmaFence(MOCK_OPS, 0, 0, machine=machine)


class SimpleCb(DmaFenceCb):
    """struct simple_cb { struct dma_fence_cb cb; bool seen; }."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False


def simple_callback(f: DmaFence, cb: DmaFenceCb) -> None:
    assert isinstance(cb, SimpleCb)
    cb.seen = True


def test_sanitycheck() -> None:
    """st-dma-fence.c, test_sanitycheck(): create, enable, signal, put."""
    f = mock_fence()
    assert f is not None
    f.enable_sw_signaling()
    f.signal()
    f.put()
    assert f.refcount == 0


def test_signaling() -> None:
    """st-dma-fence.c, test_signaling(): states around check_and_signal; ops detach (v7.1)."""
    f = mock_fence()
    f.enable_sw_signaling()
    assert f.is_signaled() is False, "Fence unexpectedly signaled on creation"
    assert f.check_and_signal() is False, "Fence reported being already signaled"
    assert f.is_signaled() is True, "Fence not reporting signaled"
    assert f.test_signaled_flag() is True, "Fence reported not being already signaled"
    assert f.ops is None, "Fence ops not cleared on signal"
    f.put()


def test_add_callback() -> None:
    """st-dma-fence.c, test_add_callback(): add (0), signal, callback seen."""
    cb = SimpleCb()
    f = mock_fence()
    assert f.add_callback(cb, simple_callback) == 0, "Failed to add callback"
    f.signal()
    assert cb.seen is True, "Callback failed!"
    f.put()


def test_late_add_callback() -> None:
    """st-dma-fence.c, test_late_add_callback(): add after signal fails, never runs."""
    cb = SimpleCb()
    f = mock_fence()
    f.enable_sw_signaling()
    f.signal()
    assert f.add_callback(cb, simple_callback) == -errno.ENOENT, \
        "Added callback, but fence was already signaled!"
    f.signal()
    assert cb.seen is False, "Callback called after failed attachment!"
    f.put()


def test_rm_callback() -> None:
    """st-dma-fence.c, test_rm_callback(): removed callback does not run."""
    cb = SimpleCb()
    f = mock_fence()
    assert f.add_callback(cb, simple_callback) == 0
    assert f.remove_callback(cb) is True, "Failed to remove callback!"
    f.signal()
    assert cb.seen is False, "Callback still signaled after removal!"
    f.put()


def test_late_rm_callback() -> None:
    """st-dma-fence.c, test_late_rm_callback(): removal after execution returns false."""
    cb = SimpleCb()
    f = mock_fence()
    assert f.add_callback(cb, simple_callback) == 0
    f.signal()
    assert cb.seen is True, "Callback failed!"
    assert f.remove_callback(cb) is False, "Callback removal succeeded after being executed!"
    f.put()


def test_status() -> None:
    """st-dma-fence.c, test_status(): 0 before signal, 1 after."""
    f = mock_fence()
    f.enable_sw_signaling()
    assert f.get_status() == 0, "Fence unexpectedly has signaled status on creation"
    f.signal()
    assert f.get_status() == 1, "Fence not reporting signaled status"
    f.put()


def test_error() -> None:
    """st-dma-fence.c, test_error(): the error shows only after signal."""
    f = mock_fence()
    f.enable_sw_signaling()
    f.set_error(-errno.EIO)
    assert f.get_status() == 0, "Fence unexpectedly has error status before signal"
    f.signal()
    assert f.get_status() == -errno.EIO, "Fence not reporting error status"
    f.put()


def _wait_body(m: Machine) -> None:
    f = mock_fence(m)
    f.enable_sw_signaling()
    assert f.wait_timeout(False, 0) == 0, "Wait reported complete before being signaled"
    f.signal()
    assert f.wait_timeout(False, 0) == 1, "Wait reported incomplete after being signaled"
    f.signal()
    f.put()


def test_wait(machine: Machine) -> None:
    """st-dma-fence.c, test_wait(): 0-timeout wait is 0 before and 1 after signal.

    Also runs under the controlled scheduler for many seeds.
    """
    _wait_body(machine)
    explore(_wait_body, SEEDS)


def _wait_timeout_body(m: Machine) -> str:
    """The kernel test, with the timer modelled as a task that sleeps one jiffy then signals."""
    f = mock_fence(m)
    f.enable_sw_signaling()
    assert f.wait_timeout(False, JIFFY) == 0, "Wait reported complete before being signaled"

    def wait_timer() -> None:  # the timer_list callback, armed for jiffies + 1
        m.sched.sleep(JIFFY)
        f.signal()

    timer = m.sched.spawn(wait_timer, name="wait_timer")
    outcome = "ok"
    if f.wait_timeout(False, HZ) == 0:
        outcome = "skip" if not timer.done else "fail"
    assert timer.join(10.0), "timer task did not finish"  # timer_delete_sync()
    f.signal()
    f.put()
    return outcome


def test_wait_timeout(machine: Machine) -> None:
    """st-dma-fence.c, test_wait_timeout(): 1-jiffy wait times out; a timer signals within HZ.

    Free mode first (real time: skipped, like the kernel, if the timer did not fire within
    one HZ), then under the controlled scheduler where time is virtual and exact.
    """
    results: list[str] = []

    def scenario(m: Machine) -> None:
        r = _wait_timeout_body(m)
        assert r == "ok", f"Wait reported incomplete after timeout ({r})"
        results.append(r)

    explore(scenario, SEEDS)
    assert results == ["ok"] * SEEDS
    outcome = _wait_timeout_body(machine)
    if outcome == "skip":
        pytest.skip("Timer did not fire within one HZ (free mode, loaded machine)")
    assert outcome == "ok", "Wait reported incomplete after timeout"


def test_stub() -> None:
    """st-dma-fence.c, test_stub(): 64 stub references, all signalled."""
    f = []
    for _ in range(64):
        s = dma_fence_get_stub()
        f.append(s)
        assert s.is_signaled() is True, "Obtained unsignaled stub fence!"
    assert all(s is f[0] for s in f)
    assert f[0].context == 0 and f[0].seqno == 0
    for s in reversed(f):
        s.put()


# ---- Now off to the races! ----------------------------------------------------------------


def _wait_for_callbacks(f: DmaFence) -> None:
    """__wait_for_callbacks(): take and drop the fence lock so running callbacks finish."""
    f.lock_irqsave()
    f.unlock_irqrestore()


def _thread_signal_callback(m: Machine, fences: list[DmaFence | None], tid: int, before: bool,
                            should_stop: object, max_passes: int | None) -> tuple[int, int]:
    """thread_signal_callback(): returns (passes, misses); raises on a lost callback."""
    sched = m.sched
    stop = should_stop.is_set  # type: ignore[attr-defined]
    passes = misses = 0
    while not stop() and (max_passes is None or passes < max_passes):
        f1 = mock_fence(m)
        f1.enable_sw_signaling()
        fences[tid] = f1
        while True:  # dma_fence_get_rcu_safe(&t->fences[!t->id]) until non-NULL or stop
            other = fences[1 - tid]
            f2 = other.get_unless_zero() if other is not None else None
            if f2 is not None or stop():
                break
            sched.checkpoint("spin for the other thread's fence")
        if before:
            f1.signal()
        cb = SimpleCb()
        if f2 is None or f2.add_callback(cb, simple_callback):
            misses += 1
            cb.seen = True
        if not before:
            f1.signal()
        if not cb.seen:
            assert f2 is not None
            f2.wait(False)
            _wait_for_callbacks(f2)
        assert cb.seen, (f"Callback not seen on thread {tid}, pass {passes} ({misses} misses), "
                         f"signaling {'before' if before else 'after'} add_callback")
        if f2 is not None:
            f2.put()
        fences[tid] = None
        f1.put()
        passes += 1
    return passes, misses


def _race(m: Machine, duration: float | None, max_passes: int | None) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for before in (False, True):
        fences: list[DmaFence | None] = [None, None]
        stop = m.sched.event("kthread_should_stop")
        tasks = [m.sched.spawn(_thread_signal_callback, m, fences, i, before, stop, max_passes,
                               name=f"dma-fence:{i}") for i in range(2)]
        if duration is not None:
            m.sched.sleep(duration)  # msleep(50): the test's running time, not a synchronisation
            stop.set()
        joined = [t.join(30.0) for t in tasks]
        stop.set()
        assert all(joined), "race thread did not stop"
        out.extend(t.result() for t in tasks)
    return out


def test_race_signal_callback(machine: Machine) -> None:
    """st-dma-fence.c, test_race_signal_callback(): no callback is lost racing signal/add.

    Free mode: two real threads per pass (before = 0, 1) for 50 ms each, as in the kernel.
    Controlled mode: the same threads, bounded to a few passes, explored over many seeds; a
    thread that finishes stops the other's spin (kthread_should_stop).
    """
    results = _race(machine, 0.05, None)
    assert len(results) == 4 and all(p > 0 for p, _ in results)

    def scenario(m: Machine) -> None:
        for before in (False, True):
            fences: list[DmaFence | None] = [None, None]
            stop = m.sched.event("kthread_should_stop")

            def body(tid: int, before: bool = before, fences: list[DmaFence | None] = fences,
                     stop: object = stop) -> tuple[int, int]:
                try:
                    return _thread_signal_callback(m, fences, tid, before, stop, 3)
                finally:
                    stop.set()  # type: ignore[attr-defined]

            tasks = [m.sched.spawn(body, i, name=f"dma-fence:{i}") for i in range(2)]
            assert all(t.join(30.0) for t in tasks)
            for t in tasks:
                passes, misses = t.result()
                assert passes >= 1 and 0 <= misses <= passes

    explore(scenario, SEEDS)
