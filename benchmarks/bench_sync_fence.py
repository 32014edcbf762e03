"""Benchmarks of layer 1 (dmabuf.sync): fence signal -> waiter wake-up latency.

The figure is a ping-pong between two real threads (free scheduler, lock tracker off): the main
thread signals fence ``a[i]``, a worker blocked in ``a[i].wait()`` wakes up and signals ``b[i]``,
which the main thread waits for. One round trip is two signal -> wake-up hand-offs. The baseline
is the same ping-pong on ``threading.Event`` objects, measured in the same run; the ratio is
``event_time / fence_time`` (bigger is better; the claim is that a fence hand-off costs at most
1.5x an Event hand-off, i.e. ratio >= 0.667): the median of per-round ratios, each round timing
both ping-pongs back to back in alternating order.
"""

from __future__ import annotations

import statistics
import threading
import time

from dmabuf.bench import BenchResult, benchmark
from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps

_OPS = DmaFenceOps("bench", "pingpong")


def _event_round_trips(n: int) -> float:
    a = [threading.Event() for _ in range(n)]
    b = [threading.Event() for _ in range(n)]

    def worker() -> None:
        for i in range(n):
            a[i].wait()
            b[i].set()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    t0 = time.perf_counter()
    for i in range(n):
        a[i].set()
        b[i].wait()
    dt = time.perf_counter() - t0
    t.join(30.0)
    if t.is_alive():
        raise RuntimeError("event ping-pong worker did not finish")
    return dt / n


def _fence_round_trips(n: int) -> float:
    with Machine(debug=False, name="bench") as m:
        ctx_a = m.fence_context_alloc(2)
        ctx_b = ctx_a + 1
        a = [DmaFence(_OPS, ctx_a, i + 1, machine=m) for i in range(n)]
        b = [DmaFence(_OPS, ctx_b, i + 1, machine=m) for i in range(n)]

        def worker() -> None:
            for i in range(n):
                a[i].wait_timeout(False, None)
                b[i].signal()

        task = m.sched.spawn(worker, name="pingpong")
        t0 = time.perf_counter()
        for i in range(n):
            a[i].signal()
            b[i].wait_timeout(False, None)
        dt = time.perf_counter() - t0
        if not task.join(30.0):
            raise RuntimeError("fence ping-pong worker did not finish")
        task.result()
        assert all(f.test_signaled_flag() for f in a + b)
        return dt / n


@benchmark("sync.fence_wakeup",
           claim="fence signal -> waiter wake-up within 1.5x of a threading.Event round trip")
def bench_fence_wakeup(quick: bool) -> BenchResult:
    n = 300 if quick else 1500
    rounds = 5 if quick else 15
    ev_times, fence_times, ratios = [], [], []
    for r in range(rounds):
        # Paired, alternating order: each ratio compares runs made moments apart, so load
        # from other processes drifting over the run cancels out.
        if r % 2:
            fe = _fence_round_trips(n)
            ev = _event_round_trips(n)
        else:
            ev = _event_round_trips(n)
            fe = _fence_round_trips(n)
        ev_times.append(ev)
        fence_times.append(fe)
        ratios.append(ev / fe)
    return BenchResult(
        name="sync.fence_wakeup", figure=statistics.median(fence_times) * 1e6,
        unit="us/round trip", baseline=statistics.median(ev_times) * 1e6,
        baseline_name="threading.Event ping-pong round trip",
        ratio=statistics.median(ratios), target=1 / 1.5,
        target_text=">= 0.667 (fence <= 1.5x Event)",
        details={"round_trips": n, "rounds": rounds,
                 "ratios": [round(x, 3) for x in ratios]})
