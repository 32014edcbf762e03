"""Benchmarks of layer 1 (dmabuf.sync) locking: reservation lock fast path, ww_mutex throughput.

* ``sync.resv_lock`` — an uncontended ``DmaResv.lock()`` / ``unlock()`` pair (no context, lock
  tracker off: ``Machine(debug=False)``, free scheduler) against a ``threading.Lock``
  ``acquire()`` / ``release()`` pair, both through pre-bound methods in the same kind of loop.
  Claim: at most 3x the raw lock, i.e. ratio = lock_time / resv_time >= 0.333. The figure is
  the median of per-round ratios, each round timing both loops back to back in alternating
  order (machines are noisy; a ratio measured within one round is not).
* ``sync.ww_stress.<n>t`` — transactions per second of n real threads (2 and 8), each
  transaction locking 4 random ww_mutexes out of 64 (Wait-Die class) in random order with the
  full back-off protocol (``-EDEADLK`` -> unlock all -> ``lock_slow``), doing 50 µs of work
  while holding them (a ``time.sleep``: the kernel test's dummy_load, scaled down; it releases
  the GIL, so transactions really overlap and contend), then unlocking them. Baseline: the
  same transactions (same random choices, same work) serialised by one global
  ``threading.Lock``. Ratio = model_tps / baseline_tps; no claim: it shows what fine-grained
  ww locking buys over one big lock once the critical sections do real work.
"""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np

from dmabuf.bench import BenchResult, benchmark
from dmabuf.errors import WouldDeadlock
from dmabuf.machine import Machine
from dmabuf.sync.dma_resv import DmaResv
from dmabuf.sync.ww_mutex import WwAcquireCtx, WwClass, WwMutex

NLOCKS = 64
PER_TXN = 4
WORK = 50e-6  # seconds of work inside each transaction's critical section


def _time_lock_pairs(n: int) -> float:
    lk = threading.Lock()
    acquire, release = lk.acquire, lk.release
    t0 = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    return (time.perf_counter() - t0) / n


def _time_resv_pairs(resv: DmaResv, n: int) -> float:
    lock, unlock = resv.lock, resv.unlock
    t0 = time.perf_counter()
    for _ in range(n):
        lock()
        unlock()
    return (time.perf_counter() - t0) / n


@benchmark("sync.resv_lock",
           claim="uncontended DmaResv lock+unlock <= 3x threading.Lock acquire+release")
def bench_resv_lock(quick: bool) -> BenchResult:
    n = 20_000 if quick else 200_000
    rounds = 5 if quick else 9
    m = Machine(debug=False, name="bench-resv")
    resv = DmaResv(machine=m)
    _time_resv_pairs(resv, n // 10)  # warm up
    _time_lock_pairs(n // 10)
    ratios, model_t, base_t = [], [], []
    for r in range(rounds):
        if r % 2:
            b = _time_lock_pairs(n)
            t = _time_resv_pairs(resv, n)
        else:
            t = _time_resv_pairs(resv, n)
            b = _time_lock_pairs(n)
        ratios.append(b / t)
        model_t.append(t)
        base_t.append(b)
    assert not resv.is_locked()
    t_med, b_med = statistics.median(model_t), statistics.median(base_t)
    return BenchResult(
        name="sync.resv_lock", figure=t_med * 1e9, unit="ns per lock+unlock",
        baseline=b_med * 1e9, baseline_name="threading.Lock acquire+release (ns)",
        ratio=statistics.median(ratios), target=1 / 3, target_text=">= 0.333 (<= 3x)",
        details={"pairs_per_round": n, "rounds": rounds, "lockdep": False})


def _choices(seed: int, ntxn: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(NLOCKS, PER_TXN, replace=False) for _ in range(ntxn)])


def _ww_worker(m: Machine, cls: WwClass, locks: list[WwMutex], sel: np.ndarray,
               stats: list[int]) -> None:
    backoffs = 0
    for row in sel.tolist():
        ctx = WwAcquireCtx(cls, machine=m)
        todo = [locks[i] for i in row]
        held: list[WwMutex] = []
        contended: WwMutex | None = None
        while todo:
            lk = todo[0]
            try:
                if lk is contended:
                    lk.lock_slow(ctx)
                else:
                    lk.lock(ctx)
            except WouldDeadlock:
                backoffs += 1
                for h in held:
                    h.unlock()
                todo = [lk, *held, *todo[1:]]
                held = []
                contended = lk
                continue
            held.append(lk)
            del todo[0]
        time.sleep(WORK)
        for h in held:
            h.unlock()
        ctx.fini()
    stats.append(backoffs)


def _global_worker(glock: threading.Lock, touched: list[int], sel: np.ndarray) -> None:
    for row in sel.tolist():
        with glock:
            for i in row:  # the same per-transaction work as the model: visit each lock
                touched[i] += 1
            time.sleep(WORK)


def _run_threads(targets: list[threading.Thread]) -> float:
    t0 = time.perf_counter()
    for t in targets:
        t.start()
    for t in targets:
        t.join(600)
        if t.is_alive():
            raise RuntimeError("benchmark thread did not finish in 600 s")
    return time.perf_counter() - t0


@benchmark("sync.ww_stress",
           claim="ww_mutex transactions/s (2 and 8 threads, 4 of 64 locks) vs one global lock")
def bench_ww_stress(quick: bool) -> list[BenchResult]:
    per_thread = 30 if quick else 400
    results = []
    for nthreads in (2, 8):
        m = Machine(debug=False, name="bench-ww")
        cls = WwClass("bench_ww_class", wait_die=True)
        locks = [WwMutex(cls, name=f"l{i}", machine=m) for i in range(NLOCKS)]
        sels = [_choices(1000 * nthreads + k, per_thread) for k in range(nthreads)]
        stats: list[int] = []
        ww_time = _run_threads([threading.Thread(target=_ww_worker, args=(m, cls, locks, s, stats))
                                for s in sels])
        assert not any(lk.is_locked() for lk in locks) and len(stats) == nthreads
        glock = threading.Lock()
        touched = [0] * NLOCKS
        g_time = _run_threads([threading.Thread(target=_global_worker, args=(glock, touched, s))
                               for s in sels])
        assert sum(touched) == nthreads * per_thread * PER_TXN
        total = nthreads * per_thread
        ww_tps, g_tps = total / ww_time, total / g_time
        results.append(BenchResult(
            name=f"sync.ww_stress.{nthreads}t", figure=ww_tps, unit="transactions/s",
            baseline=g_tps, baseline_name="same transactions under one global threading.Lock",
            ratio=ww_tps / g_tps, target=None, target_text="report only",
            details={"threads": nthreads, "locks": NLOCKS, "locks_per_txn": PER_TXN,
                     "transactions": total, "backoffs": sum(stats), "class": "wait-die",
                     "work_s": WORK}))
    return results
