"""Unit tests of dmabuf.sync.ww_mutex: the two algorithms step by step, wait-list order, signals,
and every contract check (misuse must raise at once, never hang)."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

import pytest

from dmabuf.errors import ContractViolation, DmaBufError, WouldDeadlock
from dmabuf.machine import Machine
from dmabuf.sched import explore, replay
from dmabuf.sync.dma_fence import Interrupts
from dmabuf.sync.ww_mutex import WwAcquireCtx, WwClass, WwMutex


@pytest.fixture(params=[False, True], ids=["ww", "wd"])
def cls(request: pytest.FixtureRequest) -> WwClass:
    return WwClass("test_class", wait_die=bool(request.param))


def wait_until(m: Machine, cond: Callable[[], bool], what: str) -> None:
    """Controlled mode only: let virtual time pass until ``cond()`` (bounded)."""
    for _ in range(1000):
        if cond():
            return
        m.sched.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------------------
# classes and contexts
# ---------------------------------------------------------------------------------------------


def test_class_stamps_and_kinds() -> None:
    wd = WwClass("reservation_ww_class", wait_die=True)
    ww = WwClass("some_ww_class", wait_die=False)
    assert wd.is_wait_die and not ww.is_wait_die
    assert wd.mutex_name == "reservation_ww_class_mutex"
    stamps = [WwAcquireCtx(wd).stamp for _ in range(3)]
    assert stamps == [1, 2, 3]  # atomic_long_inc_return: per class, from 1
    assert WwAcquireCtx(ww).stamp == 1
    c = WwAcquireCtx(wd)
    assert (c.acquired, c.wounded, c.is_wait_die, c.done_acquire) == (0, False, True, False)
    assert "wait-die" in repr(wd) and "wound-wait" in repr(ww)


@pytest.mark.parametrize("bad", [None, "", 3])
def test_class_bad_name(bad: object) -> None:
    with pytest.raises(TypeError):
        WwClass(bad, wait_die=True)  # type: ignore[arg-type]


def test_class_wait_die_must_be_bool() -> None:
    with pytest.raises(TypeError):
        WwClass("x", wait_die=1)  # type: ignore[arg-type]


def test_bad_types(cls: WwClass) -> None:
    with pytest.raises(TypeError):
        WwAcquireCtx("class")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        WwMutex(None)  # type: ignore[arg-type]
    m = WwMutex(cls)
    with pytest.raises(TypeError):
        m.lock("ctx")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.trylock(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.lock_slow(None)  # type: ignore[arg-type]
    assert not m.is_locked()


def test_ctx_misuse(cls: WwClass) -> None:
    a, b = WwMutex(cls, name="a"), WwMutex(cls, name="b")
    ctx = WwAcquireCtx(cls)
    a.lock(ctx)
    ctx.done()
    with pytest.raises(ContractViolation, match="ww_acquire_done"):
        b.lock(ctx)
    with pytest.raises(ContractViolation, match="ww_acquire_done"):
        b.trylock(ctx)
    with pytest.raises(ContractViolation, match="done\\(\\) called twice"):
        ctx.done()
    with pytest.raises(ContractViolation, match="still held"):
        ctx.fini()
    assert not b.is_locked()
    a.unlock()
    ctx.fini()
    with pytest.raises(ContractViolation, match="fini\\(\\) called twice"):
        ctx.fini()
    with pytest.raises(ContractViolation, match="ww_acquire_fini"):
        a.lock(ctx)
    assert not a.is_locked()


def test_ctx_as_context_manager(cls: WwClass) -> None:
    a = WwMutex(cls)
    with WwAcquireCtx(cls) as ctx:
        a.lock(ctx)
        a.unlock()
    with pytest.raises(ContractViolation):
        ctx.done()


def test_mixing_classes_is_refused(cls: WwClass) -> None:
    other = WwClass("other", wait_die=not cls.is_wait_die)
    m = WwMutex(other)
    ctx = WwAcquireCtx(cls)
    with pytest.raises(ContractViolation, match="ww_class"):
        m.lock(ctx)
    with pytest.raises(ContractViolation, match="ww_class"):
        m.trylock(ctx)
    assert not m.is_locked()
    ctx.fini()


def test_ctx_belongs_to_its_thread(machine: Machine, cls: WwClass) -> None:
    ctx = WwAcquireCtx(cls)
    m = WwMutex(cls)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            m.lock(ctx)
        except ContractViolation as e:
            errors.append(e)

    t = machine.sched.spawn(other)
    assert t.join(10)
    assert len(errors) == 1 and errors[0].rule == "ww_acquire_ctx_task"  # type: ignore[attr-defined]
    assert not m.is_locked()
    ctx.fini()


def test_unlock_not_locked_raises(cls: WwClass) -> None:
    m = WwMutex(cls, name="lonely")
    with pytest.raises(ContractViolation, match="lonely, which is not locked"):
        m.unlock()
    with Machine(debug=False):
        m2 = WwMutex(cls)
        with pytest.raises(ContractViolation, match="not locked"):
            m2.unlock()


def test_unlock_by_other_thread_is_caught(machine: Machine, cls: WwClass) -> None:
    m = WwMutex(cls)
    m.lock(None)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            m.unlock()
        except ContractViolation as e:
            errors.append(e)

    t = machine.sched.spawn(other)
    assert t.join(10)
    assert len(errors) == 1 and "bad_unlock_balance" in str(errors[0])
    assert m.is_locked()
    m.unlock()


def test_recursive_lock_without_ctx_is_reported_not_hung(cls: WwClass) -> None:
    m = WwMutex(cls)
    m.lock(None)
    with pytest.raises(ContractViolation, match="lockdep_recursive_locking"):
        m.lock(None)
    m.unlock()


def test_assert_held(machine: Machine, cls: WwClass) -> None:
    m = WwMutex(cls)
    with pytest.raises(ContractViolation, match="not locked"):
        m.assert_held()
    m.lock()
    m.assert_held()
    t = machine.sched.spawn(m.assert_held)
    assert t.join(10)
    with pytest.raises(ContractViolation, match="must be held"):
        t.result()
    m.unlock()


def test_lock_slow_requires_prior_edeadlk(cls: WwClass) -> None:
    m = WwMutex(cls)
    ctx = WwAcquireCtx(cls)
    with pytest.raises(ContractViolation, match="without a prior -EDEADLK"):
        m.lock_slow(ctx)
    with pytest.raises(ContractViolation, match="without a prior -EDEADLK"):
        m.lock_slow_interruptible(ctx)
    assert not m.is_locked()
    ctx.fini()


def test_ealready_and_trylock(cls: WwClass) -> None:
    m = WwMutex(cls)
    ctx = WwAcquireCtx(cls)
    assert m.trylock(ctx)
    assert (m.ctx, ctx.acquired) == (ctx, 1)
    with pytest.raises(DmaBufError) as e:
        m.lock(ctx)
    assert e.value.errno == errno.EALREADY
    with pytest.raises(DmaBufError) as e:
        m.lock_interruptible(ctx)
    assert e.value.errno == errno.EALREADY
    assert m.trylock(ctx) is False  # never -EALREADY
    assert m.trylock(None) is False
    m.unlock()
    assert (m.ctx, ctx.acquired) == (None, 0)
    assert m.trylock(None) is True
    assert m.ctx is None
    m.unlock()
    ctx.fini()


# ---------------------------------------------------------------------------------------------
# the algorithms (controlled mode: exact interleavings)
# ---------------------------------------------------------------------------------------------


def _young_with_lock_vs_old_holder(m: Machine, cls: WwClass) -> list[str]:
    """An older ctx holds L; a younger ctx holding another lock contends for L."""
    s = m.sched
    L, other = WwMutex(cls, name="L"), WwMutex(cls, name="other")
    old = WwAcquireCtx(cls)
    L.lock(old)
    log: list[str] = []

    def young_fn() -> None:
        young = WwAcquireCtx(cls)
        assert young.stamp > old.stamp
        other.lock(young)
        try:
            L.lock(young)
            log.append("young got L")
            L.unlock()
        except WouldDeadlock:
            log.append("young died")
            assert young.contending_lock is L
            assert L.ctx is not young
            other.unlock()
            L.lock_slow(young)
            log.append("young got L slow")
            L.unlock()
        else:
            other.unlock()
        young.fini()

    t = s.spawn(young_fn, name="young")
    if not cls.is_wait_die:
        wait_until(m, lambda: len(L._waiters) == 1, "young queued")
        log.append("old unlocks")
    L.unlock()
    old.fini()
    assert t.join(10)
    t.result()
    return log


def test_wait_die_younger_with_locks_dies(cls: WwClass) -> None:
    """Wait-Die: a younger ctx holding locks that needs a lock held by an older one dies;
    Wound-Wait: it simply waits (the holder is older: nobody is wounded)."""
    def scenario(m: Machine) -> None:
        log = _young_with_lock_vs_old_holder(m, cls)
        if cls.is_wait_die:
            assert log in (["young died", "young got L slow"], ["young got L"])
        else:
            assert log == ["old unlocks", "young got L"]

    explore(scenario, 20)


def test_wait_die_deterministic_death() -> None:
    """Wait-Die: with the older holder still holding the lock the younger dies at once.

    Both contexts live in this one thread, which lockdep forbids: lock tracker off here."""
    with Machine(debug=False):
        _wait_die_deterministic_death()


def _wait_die_deterministic_death() -> None:
    cls = WwClass("wd", wait_die=True)
    L, other = WwMutex(cls), WwMutex(cls)
    old, young = WwAcquireCtx(cls), WwAcquireCtx(cls)
    L.lock(old)
    other.lock(young)
    with pytest.raises(WouldDeadlock) as e:
        L.lock(young)
    assert e.value.errno == errno.EDEADLK
    assert "back off" in str(e.value)
    assert young.contending_lock is L and young.acquired == 1
    assert L.ctx is old
    with pytest.raises(ContractViolation, match="unlocked before"):
        L.lock(young)  # still holding `other` after -EDEADLK
    with pytest.raises(ContractViolation, match="take that lock next"):
        other2 = WwMutex(cls)
        other2.trylock(young)
    other.unlock()
    with pytest.raises(ContractViolation, match="take that lock next"):
        other.lock(young)  # a different lock than the contended one
    L.unlock()
    L.lock_slow(young)
    assert young.contending_lock is None and young.acquired == 1
    L.unlock()
    young.fini()
    old.fini()


def test_no_locks_never_dies(cls: WwClass) -> None:
    """I-W1: a transaction holding no locks never gets -EDEADLK, whatever its age."""
    def scenario(m: Machine) -> None:
        L = WwMutex(cls, name="L")
        old = WwAcquireCtx(cls)
        L.lock(old)

        def young_fn() -> str:
            young = WwAcquireCtx(cls)
            L.lock(young)  # must wait, not die
            L.unlock()
            young.fini()
            return "ok"

        t = m.sched.spawn(young_fn)
        wait_until(m, lambda: len(L._waiters) == 1, "young queued")
        L.unlock()
        old.fini()
        assert t.join(10) and t.result() == "ok"

    explore(scenario, 10)


def test_wound_wait_is_lazy() -> None:
    """Wound-Wait: an older ctx waiting for a lock of a younger one wounds it; the wounded
    ctx still takes free locks, and dies only at its next lock that would have to wait."""
    cls = WwClass("ww", wait_die=False)

    def scenario(m: Machine) -> list[str]:
        s = m.sched
        A, B, C = (WwMutex(cls, name=n) for n in "ABC")
        log: list[str] = []
        old_ready, young_holds_a = s.event("old_ready"), s.event("young_holds_a")

        def old_fn() -> None:
            old = WwAcquireCtx(cls)
            B.lock(old)
            old_ready.set()
            young_holds_a.wait(None, "young holds A")
            A.lock(old)  # waits for the younger holder: wounds it
            log.append("old got A")
            A.unlock()
            B.unlock()
            old.fini()

        t = s.spawn(old_fn, name="old")
        old_ready.wait(None, "old holds B")
        young = WwAcquireCtx(cls)  # created after the old one: younger
        A.lock(young)
        young_holds_a.set()
        wait_until(m, lambda: young.wounded, "old to wound young")
        log.append("young wounded")
        C.lock(young)  # free: succeeds although wounded (lazy)
        log.append("young got free C")
        with pytest.raises(WouldDeadlock):
            B.lock(young)  # contended (old holds B): the wounded ctx dies now
        log.append("young died")
        C.unlock()
        A.unlock()
        B.lock_slow(young)
        assert not young.wounded  # reset: a ctx without locks cannot stay wounded
        log.append("young got B slow")
        B.unlock()
        young.fini()
        assert t.join(10)
        t.result()
        return log

    for seed in range(10):
        assert replay(scenario, seed) == ["young wounded", "young got free C", "young died",
                                          "old got A", "young got B slow"]


def test_wounded_waiter_is_woken_and_dies() -> None:
    """Wound-Wait: a younger ctx sleeping on one lock is woken by a wound sent through another
    lock's wait list (``wake_up_process(owner)``) and backs off."""
    cls = WwClass("ww", wait_die=False)

    def scenario(m: Machine) -> list[str]:
        s = m.sched
        A, B, X = WwMutex(cls, name="A"), WwMutex(cls, name="B"), WwMutex(cls, name="X")
        log: list[str] = []
        old = WwAcquireCtx(cls)
        B.lock(old)
        x_held, x_release = s.event("x_held"), s.event("x_release")

        def x_holder() -> None:  # a context-less holder the young ctx will sleep on
            X.lock(None)
            x_held.set()
            x_release.wait(None, "release X")
            X.unlock()

        h = s.spawn(x_holder, name="x_holder")
        x_held.wait(None, "X held")

        def young_fn() -> None:
            young = WwAcquireCtx(cls)
            A.lock(young)
            try:
                X.lock(young)  # sleeps (X held without ctx) ... until wounded
                log.append("young got X")
                X.unlock()
            except WouldDeadlock:
                log.append("young woken and died")
                A.unlock()
                X.lock_slow(young)
                X.unlock()
            else:
                A.unlock()
            young.fini()

        t = s.spawn(young_fn, name="young")
        wait_until(m, lambda: len(X._waiters) == 1, "young asleep on X")
        A.lock(old)  # older waits for the young holder: wounds + wakes it
        log.append("old got A")
        A.unlock()
        B.unlock()
        old.fini()
        x_release.set()
        assert t.join(10) and h.join(10)
        t.result()
        return log

    for seed in range(10):
        assert replay(scenario, seed) == ["young woken and died", "old got A"]


def test_wait_list_order_by_stamp(cls: WwClass) -> None:
    """Waiters with a ctx are ordered by stamp (oldest first); ctx-less ones stay FIFO among
    them (``__ww_mutex_add_waiter``), and the lock is handed on in that order."""
    def scenario(m: Machine) -> list[str]:
        s = m.sched
        L = WwMutex(cls, name="L")
        L.lock(None)
        order: list[str] = []
        stamps: dict[str, int] = {}
        ready = {n: s.event(f"{n} ready") for n in ("c1", "c2", "c3", "a")}
        go = {n: s.event(f"{n} go") for n in ("c1", "c2", "c3", "a")}

        def waiter(name: str) -> None:
            ctx = WwAcquireCtx(cls) if name != "a" else None
            if ctx is not None:
                stamps[name] = ctx.stamp
            ready[name].set()
            go[name].wait(None, f"{name} go")
            L.lock(ctx)  # no lock held: queues, never dies
            order.append(name)
            L.unlock()
            if ctx is not None:
                ctx.fini()

        tasks = []
        for name in ("c1", "c2", "c3", "a"):  # stamps: c1 oldest
            tasks.append(s.spawn(waiter, name, name=name))
            ready[name].wait(None, f"{name} ready")
        for n, name in enumerate(("c3", "c1", "a", "c2"), 1):  # arrival order
            go[name].set()
            wait_until(m, lambda n=n: len(L._waiters) == n, f"{name} queued")
        assert [w.ctx.stamp if w.ctx else None for w in L._waiters] == [
            stamps["c1"], stamps["c2"], stamps["c3"], None]
        L.unlock()
        for t in tasks:
            assert t.join(10)
            t.result()
        return order

    for seed in range(5):
        assert replay(scenario, seed) == ["c1", "c2", "c3", "a"]


def test_acquired_counts_match_locks(cls: WwClass) -> None:
    """I-W3: ctx.acquired equals the number of mutexes whose ctx is it."""
    locks = [WwMutex(cls) for _ in range(6)]
    ctx = WwAcquireCtx(cls)
    for i, lk in enumerate(locks):
        (lk.lock if i % 2 else lk.trylock)(ctx)
        assert ctx.acquired == sum(x.ctx is ctx for x in locks) == i + 1
    for i, lk in enumerate(reversed(locks)):
        lk.unlock()
        assert ctx.acquired == sum(x.ctx is ctx for x in locks) == 5 - i
    ctx.fini()


# ---------------------------------------------------------------------------------------------
# interruptible locking
# ---------------------------------------------------------------------------------------------


def test_lock_interruptible_eintr(cls: WwClass) -> None:
    """A signal sent to a thread sleeping in lock_interruptible aborts it with -EINTR; the
    lock is not taken and the waiter is gone; a pending signal does not stop an uncontended
    lock (the kernel checks signals only before sleeping)."""
    def scenario(m: Machine) -> None:
        s = m.sched
        L = WwMutex(cls, name="L")
        L.lock(None)
        result: list[int] = []

        def victim() -> None:
            ctx = WwAcquireCtx(cls)
            try:
                L.lock_interruptible(ctx)
            except DmaBufError as e:
                result.append(e.errno)
            assert ctx.acquired == 0
            assert m.lockdep.held() == []
            # still pending: a contended interruptible lock fails at once
            try:
                L.lock_interruptible(None)
            except DmaBufError as e:
                result.append(e.errno)
            Interrupts.of(m).clear()
            ctx.fini()

        t = s.spawn(victim, name="victim")
        wait_until(m, lambda: len(L._waiters) == 1, "victim asleep")
        Interrupts.of(m).send(t)
        assert t.join(10)
        t.result()
        assert result == [errno.EINTR, errno.EINTR]
        assert L._waiters == []
        L.unlock()
        # pending signal, uncontended: succeeds
        Interrupts.of(m).send(threading.current_thread())
        L.lock_interruptible(None)
        L.unlock()
        Interrupts.of(m).clear()

    explore(scenario, 10)


def test_lock_slow_interruptible(cls: WwClass) -> None:
    """lock_slow_interruptible: -EINTR when interrupted, else the lock."""
    def scenario(m: Machine) -> None:
        s = m.sched
        A, B = WwMutex(cls, name="A"), WwMutex(cls, name="B")
        old = WwAcquireCtx(cls)
        B.lock(old)
        res: list[object] = []

        def young_fn() -> None:
            young = WwAcquireCtx(cls)
            A.lock(young)
            try:
                B.lock(young)
            except WouldDeadlock:
                A.unlock()
                try:
                    B.lock_slow_interruptible(young)
                    res.append("got B")
                    B.unlock()
                except DmaBufError as e:
                    res.append(e.errno)
                    Interrupts.of(m).clear()
            else:
                res.append("no death")
                B.unlock()
                A.unlock()
            young.fini()

        t = s.spawn(young_fn, name="young")
        if cls.is_wait_die:
            wait_until(m, lambda: len(B._waiters) == 1, "young in lock_slow")
            Interrupts.of(m).send(t)
        else:
            # wound-wait: young waits on B; wound it by contending for A
            wait_until(m, lambda: len(B._waiters) == 1, "young waiting on B")
            A.lock(old)
            A.unlock()
            wait_until(m, lambda: len(B._waiters) == 1 and A.ctx is None, "young in lock_slow")
            Interrupts.of(m).send(t)
        assert t.join(10)
        t.result()
        assert res == [errno.EINTR]
        B.unlock()
        old.fini()

    explore(scenario, 10)


def test_oldest_transaction_never_backs_off(cls: WwClass) -> None:
    """I-W2: with everybody following the back-off protocol all transactions complete, and
    the oldest one never gets -EDEADLK (it is never younger than a holder under Wait-Die, and
    never wounded under Wound-Wait)."""
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]]

    def scenario(m: Machine) -> None:
        s = m.sched
        locks = [WwMutex(cls, name=f"L{i}") for i in range(4)]
        go = s.event("go")
        deaths: dict[int, int] = {}
        stamps: list[int] = []

        def worker(order: list[int], ready: object) -> None:
            ctx = WwAcquireCtx(cls)
            stamps.append(ctx.stamp)
            deaths[ctx.stamp] = 0
            ready.set()  # type: ignore[attr-defined]
            go.wait(None, "go")
            todo = [locks[i] for i in order]
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
                    deaths[ctx.stamp] += 1
                    for h in held:
                        h.unlock()
                    todo = [lk, *held, *todo[1:]]
                    held, contended = [], lk
                    continue
                held.append(lk)
                del todo[0]
                s.checkpoint()
            assert sum(lk.ctx is ctx for lk in locks) == ctx.acquired == 4  # I-W3
            for h in held:
                h.unlock()
            ctx.fini()

        tasks = []
        for k, order in enumerate(orders):
            ready = s.event(f"ready{k}")
            tasks.append(s.spawn(worker, order, ready, name=f"t{k}"))
            ready.wait(None, f"ready{k}")
        go.set()
        for t in tasks:
            assert t.join(10)
            t.result()
        assert deaths[min(stamps)] == 0, deaths
        assert not any(lk.is_locked() for lk in locks)

    assert explore(scenario, 60).seeds == 60
