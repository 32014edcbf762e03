"""Port of kernel/locking/test-ww_mutex.c, run for both classes as the kernel does since 2025.

The kernel module runs ``run_tests(&ww_class)`` (Wound-Wait) then ``run_tests(&wd_class)``
(Wait-Die); every test here is parametrised over the two classes (ids ``ww`` / ``wd``). Each
kernel scenario is written once as a function of a :class:`~dmabuf.machine.Machine` and runs

* in **free mode** (real threads, real time: the autouse machine of tests/conftest.py), and,
  for the racy ones (test_abba, test_cycle, stress), also
* in **controlled mode** under many seeds with :func:`dmabuf.sched.explore` — every seed is one
  interleaving, a failure names the seed that replays it.

Porting notes: completions are scheduler events; ``queue_work`` + ``flush_work`` are
``sched.spawn`` + a bounded ``join``; jiffies budgets are scaled down (TIMEOUT HZ/16 -> 20 ms,
the stress budget 2*HZ -> 0.25 s of real time, or virtual time in controlled mode);
``usleep_range(1000, 2000)`` (dummy_load) is a 1 ms scheduler sleep; ``ncpus`` is 2.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from typing import Any

import pytest

from dmabuf.errors import DeadlockDetected, DmaBufError
from dmabuf.machine import Machine
from dmabuf.sched import ExplorationFailure, Task, explore, replay
from dmabuf.sync.ww_mutex import WwAcquireCtx, WwClass, WwMutex

NCPUS = 2
EDEADLK = -errno.EDEADLK
EALREADY = -errno.EALREADY
JOIN = 60.0  # seconds a free-mode worker may take before the test fails (never reached)


@pytest.fixture(params=[False, True], ids=["ww", "wd"])
def wd(request: pytest.FixtureRequest) -> bool:
    """Wait-Die (``wd_class``) or Wound-Wait (``ww_class``)."""
    return bool(request.param)


def make_class(wait_die: bool) -> WwClass:
    return WwClass("wd_class" if wait_die else "ww_class", wait_die=wait_die)


def lock_err(lock: WwMutex, ctx: WwAcquireCtx | None) -> int:
    """``ww_mutex_lock()`` with the kernel's int return."""
    try:
        lock.lock(ctx)
    except DmaBufError as e:
        return -e.errno
    return 0


def join_all(tasks: list[Task], timeout: float = JOIN) -> list[Any]:
    """``flush_workqueue``: every task finished in time; their results (re-raising errors)."""
    for t in tasks:
        assert t.join(timeout), f"{t.name} did not finish within {timeout} s (deadlock?)"
    return [t.result() for t in tasks]


# ----------------------------------------------------------------------------------------------
# __test_mutex / test_mutex
# ----------------------------------------------------------------------------------------------

TEST_MTX_SPIN, TEST_MTX_TRY, TEST_MTX_CTX = 1, 2, 4


def scenario_test_mutex(m: Machine, wait_die: bool, flags: int, timeout: float) -> int:
    """``__test_mutex(class, flags)``: 0 on success, -EINVAL on a mutual exclusion failure."""
    cls = make_class(wait_die)
    s = m.sched
    mutex = WwMutex(cls, name="mtx")
    ready, go, done = s.event("ready"), s.event("go"), s.event("done")

    def test_mutex_work() -> None:
        ready.set()
        go.wait(None, "wait_for_completion(go)")
        if flags & TEST_MTX_TRY:
            while not mutex.trylock(None):
                s.sleep(0.0005)  # cond_resched(), letting (virtual) time pass
        else:
            mutex.lock(None)
        done.set()
        mutex.unlock()

    ctx = WwAcquireCtx(cls) if flags & TEST_MTX_CTX else None
    work = s.spawn(test_mutex_work, name="test_mutex_work")
    ready.wait(None, "wait_for_completion(ready)")
    mutex.lock(ctx)
    go.set()
    if flags & TEST_MTX_SPIN:
        end = s.now() + timeout
        ret = 0
        while s.now() < end:
            if done.is_set():
                ret = -errno.EINVAL
                break
            s.sleep(timeout / 8)  # cond_resched(), letting (virtual) time pass
    else:
        ret = -errno.EINVAL if done.wait(timeout, "wait_for_completion_timeout(done)") else 0
    mutex.unlock()
    if ctx is not None:
        ctx.fini()
    join_all([work])
    return ret


@pytest.mark.parametrize("flags", range(8))
def test_mutex(machine: Machine, wd: bool, flags: int) -> None:
    """test_mutex(): the worker must not get the mutex while main holds it (flags SPIN/TRY/CTX).

    Kernel: kernel/locking/test-ww_mutex.c, __test_mutex() / test_mutex().
    """
    assert scenario_test_mutex(machine, wd, flags, 0.02) == 0


@pytest.mark.parametrize("flags", range(8))
def test_mutex_controlled(wd: bool, flags: int) -> None:
    """test_mutex() under the controlled scheduler (virtual time), 10 seeds per flag set.

    Kernel: kernel/locking/test-ww_mutex.c, __test_mutex().
    """
    def scenario(m: Machine) -> None:
        assert scenario_test_mutex(m, wd, flags, 0.0625) == 0

    assert explore(scenario, 10).seeds == 10


# ----------------------------------------------------------------------------------------------
# test_aa
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trylock", [False, True], ids=["lock", "trylock"])
def test_aa(wd: bool, trylock: bool) -> None:
    """test_aa(): no self-trylock with or without ctx; relocking with the ctx is -EALREADY.

    Kernel: kernel/locking/test-ww_mutex.c, test_aa().
    """
    cls = make_class(wd)
    mutex = WwMutex(cls)
    ctx = WwAcquireCtx(cls)
    if not trylock:
        assert lock_err(mutex, ctx) == 0, "initial lock failed!"
    else:
        assert mutex.trylock(ctx) is True, "initial trylock failed!"
    assert mutex.ctx is ctx
    assert ctx.acquired == 1
    assert mutex.trylock(None) is False, "trylocked itself without context"
    assert mutex.trylock(ctx) is False, "trylocked itself with context"
    assert lock_err(mutex, ctx) == EALREADY, "missed deadlock for recursing"
    assert ctx.acquired == 1  # -EALREADY changes nothing
    mutex.unlock()
    assert ctx.acquired == 0
    assert not mutex.is_locked()
    ctx.fini()


# ----------------------------------------------------------------------------------------------
# test_abba
# ----------------------------------------------------------------------------------------------


def scenario_test_abba(m: Machine, wait_die: bool, trylock: bool, resolve: bool,
                       mutex_cls: type[WwMutex] = WwMutex) -> tuple[int, int]:
    """``test_abba(class, trylock, resolve)``: returns (main's err, worker's result)."""
    cls = make_class(wait_die)
    s = m.sched
    a_mutex = mutex_cls(cls, name="A")
    b_mutex = mutex_cls(cls, name="B")
    a_ready, b_ready = s.event("a_ready"), s.event("b_ready")

    def test_abba_work() -> int:
        ctx = WwAcquireCtx(cls)  # ww_acquire_init_noinject: the model never injects
        if not trylock:
            b_mutex.lock(ctx)
        else:
            assert b_mutex.trylock(ctx)
        assert b_mutex.ctx is ctx
        b_ready.set()
        a_ready.wait(None, "wait_for_completion(a_ready)")
        err = lock_err(a_mutex, ctx)
        if resolve and err == EDEADLK:
            b_mutex.unlock()
            a_mutex.lock_slow(ctx)
            err = lock_err(b_mutex, ctx)
        if not err:
            a_mutex.unlock()
        b_mutex.unlock()
        ctx.fini()
        return err

    work = s.spawn(test_abba_work, name="test_abba_work")
    ctx = WwAcquireCtx(cls)
    if not trylock:
        a_mutex.lock(ctx)
    else:
        assert a_mutex.trylock(ctx)
    assert a_mutex.ctx is ctx
    a_ready.set()
    b_ready.wait(None, "wait_for_completion(b_ready)")
    err = lock_err(b_mutex, ctx)
    if resolve and err == EDEADLK:
        a_mutex.unlock()
        b_mutex.lock_slow(ctx)
        err = lock_err(a_mutex, ctx)
    if not err:
        b_mutex.unlock()
    a_mutex.unlock()
    ctx.fini()
    (result,) = join_all([work])
    return err, result


def check_abba(resolve: bool, err: int, result: int) -> None:
    if resolve:
        assert (err, result) == (0, 0), \
            f"failed to resolve ABBA deadlock, A err={err}, B err={result}"
    else:
        assert EDEADLK in (err, result), f"missed ABBA deadlock, A err={err}, B err={result}"
        assert {err, result} <= {0, EDEADLK}


ABBA = [(t, r) for r in (False, True) for t in (False, True)]  # i = 0..3: trylock=i&1, resolve=i&2
ABBA_IDS = [f"{'trylock' if t else 'lock'}-{'resolve' if r else 'detect'}" for t, r in ABBA]


@pytest.mark.parametrize(("trylock", "resolve"), ABBA, ids=ABBA_IDS)
def test_abba(machine: Machine, wd: bool, trylock: bool, resolve: bool) -> None:
    """test_abba(): an ABBA pair is detected (-EDEADLK on one side) or, with the back-off
    protocol, resolved (both sides succeed). Free mode.

    Kernel: kernel/locking/test-ww_mutex.c, test_abba() / test_abba_work().
    """
    check_abba(resolve, *scenario_test_abba(machine, wd, trylock, resolve))


@pytest.mark.parametrize(("trylock", "resolve"), ABBA, ids=ABBA_IDS)
def test_abba_controlled(wd: bool, trylock: bool, resolve: bool) -> None:
    """test_abba() under 100 seeds of the controlled scheduler: every interleaving detects or
    resolves the ABBA pair.

    Kernel: kernel/locking/test-ww_mutex.c, test_abba().
    """
    def scenario(m: Machine) -> None:
        check_abba(resolve, *scenario_test_abba(m, wd, trylock, resolve))

    assert explore(scenario, 100).seeds == 100


class NoBackoffWwMutex(WwMutex):
    """TEST ONLY: a ww_mutex without deadlock avoidance — never -EDEADLK, it just waits."""

    _backoff = False


@pytest.mark.parametrize("trylock", [False, True], ids=["lock", "trylock"])
def test_abba_without_backoff_deadlocks_and_replays(wd: bool, trylock: bool) -> None:
    """A ww_mutex with its back-off removed deadlocks on ABBA: the controlled scheduler reports
    DeadlockDetected with both wait points, and the reported seed replays the same deadlock.

    Kernel: kernel/locking/test-ww_mutex.c, test_abba() (what the ww algorithm prevents).
    """
    def scenario(m: Machine) -> None:
        scenario_test_abba(m, wd, trylock, False, NoBackoffWwMutex)

    with pytest.raises(ExplorationFailure) as info:
        explore(scenario, 5)
    failure = info.value
    assert isinstance(failure.error, DeadlockDetected)
    waits = failure.error.waits
    assert set(waits) == {"main", "test_abba_work"}
    assert waits["main"].startswith("ww_mutex_lock(B, ctx stamp ")
    assert waits["test_abba_work"].startswith("ww_mutex_lock(A, ctx stamp ")
    with pytest.raises(DeadlockDetected) as again:
        replay(scenario, failure.seed)
    assert again.value.seed == failure.seed
    # Same interleaving: the same locks are waited for (stamps differ run to run: the class is
    # shared by the runs of this test, so each run takes fresh stamps).
    assert {k: v.split(", ctx")[0] for k, v in again.value.waits.items()} == \
        {k: v.split(", ctx")[0] for k, v in waits.items()}


# ----------------------------------------------------------------------------------------------
# test_cycle
# ----------------------------------------------------------------------------------------------


def scenario_test_cycle(m: Machine, wait_die: bool, nthreads: int) -> list[int]:
    """``__test_cycle(class, nthreads)``: the results of the workers."""
    cls = make_class(wait_die)
    s = m.sched
    a_mutex = [WwMutex(cls, name=f"a{n}") for n in range(nthreads)]
    b_signal = [s.event(f"b_signal{n}") for n in range(nthreads)]
    last = nthreads - 1

    def test_cycle_work(n: int) -> int:
        a = a_mutex[n]
        b = a_mutex[0] if n == last else a_mutex[n + 1]
        a_signal = b_signal[last] if n == 0 else b_signal[n - 1]
        ctx = WwAcquireCtx(cls)
        a.lock(ctx)
        a_signal.set()
        b_signal[n].wait(None, f"wait_for_completion(b_signal{n})")
        err = lock_err(b, ctx)
        erra = 0
        if err == EDEADLK:
            for _attempt in range(5):  # max_attempts
                err = 0
                a.unlock()
                b.lock_slow(ctx)
                erra = lock_err(a, ctx)
                if erra != EDEADLK:
                    break
                erra = 0
                b.unlock()
                a.lock_slow(ctx)
                err = lock_err(b, ctx)
                if err != EDEADLK:
                    break
        if not err:
            b.unlock()
        if not erra:
            a.unlock()
        ctx.fini()
        return err or erra

    tasks = [s.spawn(test_cycle_work, n, name=f"cycle{n}") for n in range(nthreads)]
    return join_all(tasks)


@pytest.mark.parametrize("nthreads", range(2, NCPUS + 3))
def test_cycle(machine: Machine, wd: bool, nthreads: int) -> None:
    """test_cycle(): a ring of n workers each holding a[i] and wanting a[i+1] always resolves.

    Kernel: kernel/locking/test-ww_mutex.c, __test_cycle() / test_cycle_work().
    """
    assert scenario_test_cycle(machine, wd, nthreads) == [0] * nthreads


@pytest.mark.parametrize("nthreads", range(2, NCPUS + 3))
def test_cycle_controlled(wd: bool, nthreads: int) -> None:
    """test_cycle() under 100 seeds of the controlled scheduler.

    Kernel: kernel/locking/test-ww_mutex.c, __test_cycle().
    """
    def scenario(m: Machine) -> None:
        assert scenario_test_cycle(m, wd, nthreads) == [0] * nthreads

    assert explore(scenario, 100).seeds == 100


# ----------------------------------------------------------------------------------------------
# stress
# ----------------------------------------------------------------------------------------------

STRESS_INORDER, STRESS_REORDER, STRESS_ONE = 1, 2, 4
STRESS_ALL = STRESS_INORDER | STRESS_REORDER | STRESS_ONE


def scenario_stress(m: Machine, wait_die: bool, nlocks: int, nthreads: int, flags: int,
                    budget: float, seed: int) -> list[tuple[int, int]]:
    """``stress(class, nlocks, nthreads, flags)``: per worker (result, transactions done).

    Beyond the kernel, every transaction checks that it really holds the locks it took
    (``lock.ctx is ctx``: mutual exclusion) and each worker counts its transactions.
    """
    cls = make_class(wait_die)
    s = m.sched
    locks = [WwMutex(cls, name=f"l{n}") for n in range(nlocks)]
    rng = random.Random(seed)

    def get_random_order(count: int) -> list[int]:
        order = list(range(count))
        rng.shuffle(order)
        return order

    def dummy_load() -> None:
        s.sleep(0.001)  # usleep_range(1000, 2000)

    def stress_inorder_work(timeout: float) -> tuple[int, int]:
        order = get_random_order(nlocks)
        attempts_after_tmout = 10000
        done = 0
        err = 0
        while True:
            contended = -1
            ctx = WwAcquireCtx(cls)
            while True:  # retry:
                err = 0
                n = 0
                while n < nlocks:
                    if n != contended:
                        err = lock_err(locks[order[n]], ctx)
                        if err < 0:
                            break
                    n += 1
                if not err:
                    assert all(lk.ctx is ctx for lk in locks), "mutual exclusion failure"
                    dummy_load()
                    done += 1
                if contended > n:
                    locks[order[contended]].unlock()
                contended = n
                while n:
                    n -= 1
                    locks[order[n]].unlock()
                if err == EDEADLK and (s.now() <= timeout or attempts_after_tmout > 0):
                    if s.now() > timeout:
                        attempts_after_tmout -= 1
                    locks[order[contended]].lock_slow(ctx)
                    continue
                break
            ctx.fini()
            if err:
                break
            if s.now() > timeout:
                break
        return err, done

    def stress_reorder_work(timeout: float) -> tuple[int, int]:
        ll = [locks[i] for i in get_random_order(nlocks)]
        err = 0
        done = 0
        while True:
            ctx = WwAcquireCtx(cls)
            i = 0
            while i < len(ll):
                err = lock_err(ll[i], ctx)
                if not err:
                    i += 1
                    continue
                for held in reversed(ll[:i]):
                    held.unlock()
                assert err == EDEADLK, f"stress (reorder) failed with {err}"
                ll[i].lock_slow(ctx)
                ll.insert(0, ll.pop(i))  # list_move(): restarts the iteration
                i = 1
            assert all(lk.ctx is ctx for lk in ll), "mutual exclusion failure"
            dummy_load()
            done += 1
            for lk in ll:
                lk.unlock()
            ctx.fini()
            if s.now() > timeout:
                break
        return err, done

    def stress_one_work(timeout: float) -> tuple[int, int]:
        lock = locks[rng.randrange(nlocks)]
        done = 0
        while True:
            err = lock_err(lock, None)
            if err:
                return err, done
            assert lock.ctx is None
            dummy_load()
            done += 1
            lock.unlock()
            if s.now() > timeout:
                return 0, done

    tasks = []
    n = 0
    while nthreads:
        fn: Callable[[float], tuple[int, int]] | None = None
        if n & 3 == 0 and flags & STRESS_INORDER:
            fn = stress_inorder_work
        elif n & 3 == 1 and flags & STRESS_REORDER:
            fn = stress_reorder_work
        elif n & 3 == 2 and flags & STRESS_ONE:
            fn = stress_one_work
        n += 1
        if fn is None:
            continue
        tasks.append(s.spawn(fn, s.now() + budget, name=f"{fn.__name__}-{len(tasks)}"))
        nthreads -= 1
    results: list[tuple[int, int]] = join_all(tasks)
    assert not any(lk.is_locked() for lk in locks)
    return results


STRESS = [(16, 2 * NCPUS, STRESS_INORDER), (16, 2 * NCPUS, STRESS_REORDER),
          (2046, 3 * NCPUS, STRESS_ALL)]
STRESS_IDS = ["inorder", "reorder", "all"]


@pytest.mark.parametrize(("nlocks", "nthreads", "flags"), STRESS, ids=STRESS_IDS)
def test_stress(machine: Machine, wd: bool, nlocks: int, nthreads: int, flags: int) -> None:
    """stress(): workers taking many locks in random orders with the back-off protocol (plus
    context-less single-lock workers) for a time budget: no deadlock, no lost wake-up (every
    worker finishes), no error, every worker makes progress. Free mode, real threads.

    Kernel: kernel/locking/test-ww_mutex.c, stress(), stress_inorder_work(),
    stress_reorder_work(), stress_one_work().
    """
    # 2046 locks held at once make the lock tracker's per-acquire scan quadratic: the big
    # variant runs with the tracker off (the 16-lock ones keep it on).
    m = machine if nlocks <= 64 else Machine(debug=False, name="stress")
    with m:
        results = scenario_stress(m, wd, nlocks, nthreads, flags, 0.25, seed=1)
    assert len(results) == nthreads
    assert [err for err, _ in results] == [0] * nthreads
    assert all(done > 0 for _, done in results), results


@pytest.mark.parametrize(("nlocks", "nthreads", "flags"),
                         [(6, 4, STRESS_INORDER), (6, 4, STRESS_REORDER), (5, 3, STRESS_ALL)],
                         ids=STRESS_IDS)
def test_stress_controlled(wd: bool, nlocks: int, nthreads: int, flags: int) -> None:
    """stress() shrunk to a few locks, 20 ms of virtual time, under many seeds of the controlled
    scheduler (30 seeds): every interleaving terminates without error.

    Kernel: kernel/locking/test-ww_mutex.c, stress().
    """
    def scenario(m: Machine) -> None:
        results = scenario_stress(m, wd, nlocks, nthreads, flags, 0.02, seed=1)
        assert [err for err, _ in results] == [0] * nthreads
        assert all(done > 0 for _, done in results), results

    assert explore(scenario, 30).seeds == 30
