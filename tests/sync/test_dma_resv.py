"""Unit tests of dmabuf.sync.dma_resv beyond the st-dma-resv port: usage filtering, same-context
replacement, slot budget and garbage collection, restarts, queries, waits, misuse."""

from __future__ import annotations

import errno
import math

import pytest

from dmabuf.debug import RESV_CLASS
from dmabuf.errors import ERESTARTSYS, ContractViolation, DmaBufError, WouldDeadlock
from dmabuf.machine import Machine
from dmabuf.sched import explore
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps, Interrupts
from dmabuf.sync.dma_fence_array import DmaFenceArray
from dmabuf.sync.dma_resv import (
    DmaResv,
    DmaResvIter,
    DmaResvUsage,
    kmalloc_size_roundup,
    reservation_ww_class,
    usage_rw,
)
from dmabuf.sync.ww_mutex import WwAcquireCtx

K, W, R, B = DmaResvUsage.KERNEL, DmaResvUsage.WRITE, DmaResvUsage.READ, DmaResvUsage.BOOKKEEP
OPS = DmaFenceOps("mock", "timeline")


def fence(context: int, seqno: int = 1) -> DmaFence:
    return DmaFence(OPS, context, seqno)


def entries(resv: DmaResv) -> list[tuple[DmaFence, DmaResvUsage]]:
    return list(resv.for_each_fence(B))


def locked_resv(n: int = 0) -> DmaResv:
    resv = DmaResv()
    resv.lock()
    if n:
        resv.reserve_fences(n)
    return resv


# ---------------------------------------------------------------------------------------------
# usage and the class
# ---------------------------------------------------------------------------------------------


def test_usage_order_and_rw() -> None:
    assert K < W < R < B
    assert [int(u) for u in (K, W, R, B)] == [0, 1, 2, 3]
    assert usage_rw(True) is R  # a writer waits for readers and writers
    assert usage_rw(False) is W  # a reader waits for writers only
    with pytest.raises(TypeError):
        usage_rw(1)  # type: ignore[arg-type]


def test_reservation_class_is_wait_die_per_machine(machine: Machine) -> None:
    cls = reservation_ww_class()
    assert cls is reservation_ww_class(machine)
    assert cls.is_wait_die and cls.name == "reservation_ww_class"
    assert cls.mutex_name == RESV_CLASS
    with Machine() as other:
        assert reservation_ww_class() is not cls
        assert reservation_ww_class(other) is reservation_ww_class()
    resv = DmaResv()
    assert resv.ww_mutex.ww_class is cls


def test_kmalloc_roundup() -> None:
    assert [kmalloc_size_roundup(n) for n in (1, 8, 9, 56, 65, 97, 129, 193, 257, 8192)] == \
        [8, 8, 16, 64, 96, 128, 192, 256, 512, 8192]
    assert kmalloc_size_roundup(8193) == 16384
    assert kmalloc_size_roundup(3 * 4096 + 1) == 16384


# ---------------------------------------------------------------------------------------------
# locking
# ---------------------------------------------------------------------------------------------


def test_lock_unlock_trylock_and_ctx(machine: Machine) -> None:
    a, b = DmaResv(), DmaResv()
    assert not a.is_locked() and a.locking_ctx() is None
    assert a.trylock() and a.is_locked() and a.held()
    assert not a.trylock()
    a.unlock()
    ctx = WwAcquireCtx(reservation_ww_class())
    a.lock(ctx)
    b.lock_interruptible(ctx)
    assert a.locking_ctx() is ctx and b.locking_ctx() is ctx and ctx.acquired == 2
    with pytest.raises(DmaBufError) as e:
        a.lock(ctx)
    assert e.value.errno == errno.EALREADY
    a.assert_held()
    b.unlock()
    a.unlock()
    ctx.fini()
    with pytest.raises(ContractViolation, match="dma_resv_assert_held"):
        a.assert_held()
    with pytest.raises(ContractViolation, match="not locked"):
        a.unlock()


def test_unlock_not_locked_fast_path() -> None:
    with Machine(debug=False):
        r = DmaResv()
        with pytest.raises(ContractViolation, match="not locked"):
            r.unlock()
        r.lock()
        r.unlock()
        assert not r.is_locked()


def test_assert_held_from_other_thread(machine: Machine) -> None:
    r = DmaResv()
    r.lock()
    t = machine.sched.spawn(r.assert_held)
    assert t.join(10)
    with pytest.raises(ContractViolation, match="must be held"):
        t.result()
    t2 = machine.sched.spawn(r.held)
    assert t2.join(10) and t2.result() is False
    r.unlock()


def test_multi_object_locking_with_backoff() -> None:
    """The dma_resv ww protocol on two objects taken in opposite orders by two threads:
    every interleaving ends with both transactions done (Wait-Die back-off)."""
    def scenario(m: Machine) -> None:
        objs = [DmaResv(), DmaResv(), DmaResv()]
        done: list[str] = []

        def transaction(name: str, order: list[int]) -> None:
            ctx = WwAcquireCtx(reservation_ww_class())
            todo = [objs[i] for i in order]
            held: list[DmaResv] = []
            contended: DmaResv | None = None
            while todo:
                obj = todo[0]
                try:
                    if obj is contended:
                        obj.lock_slow(ctx)
                    else:
                        obj.lock(ctx)
                except WouldDeadlock:
                    for h in held:
                        h.unlock()
                    todo = [obj] + [o for o in (held + todo) if o is not obj]
                    held = []
                    contended = obj
                    continue
                held.append(obj)
                todo.pop(0)
            ctx.done()
            for o in held:
                o.reserve_fences(1)
                o.add_fence(fence(m.fence_context_alloc()), W)
            for o in held:
                o.unlock()
            ctx.fini()
            done.append(name)

        ts = [m.sched.spawn(transaction, "x", [0, 1, 2], name="x"),
              m.sched.spawn(transaction, "y", [2, 1, 0], name="y"),
              m.sched.spawn(transaction, "z", [1, 0, 2], name="z")]
        for t in ts:
            assert t.join(10)
            t.result()
        assert sorted(done) == ["x", "y", "z"]
        assert [o.num_fences for o in objs] == [3, 3, 3]

    assert explore(scenario, 40).seeds == 40


def test_lock_interruptible_eintr() -> None:
    def scenario(m: Machine) -> None:
        r = DmaResv()
        r.lock()
        out: list[int] = []

        def victim() -> None:
            try:
                r.lock_interruptible()
            except DmaBufError as e:
                out.append(e.errno)
            Interrupts.of(m).clear()

        t = m.sched.spawn(victim, name="victim")
        while not r.ww_mutex._waiters:
            m.sched.sleep(0.001)
        Interrupts.of(m).send(t)
        assert t.join(10)
        t.result()
        assert out == [errno.EINTR]
        r.unlock()

    explore(scenario, 5)


# ---------------------------------------------------------------------------------------------
# slot budget
# ---------------------------------------------------------------------------------------------


def test_reserve_capacity_follows_kmalloc() -> None:
    r = locked_resv()
    assert (r.num_fences, r.max_fences) == (0, 0)
    r.reserve_fences(1)  # max(4, 1) slots -> 24 + 32 = 56 bytes -> kmalloc-64 -> 5 slots
    assert r.max_fences == 5
    r.reserve_fences(5)  # fits: no reallocation
    assert r.max_fences == 5
    for i in range(5):
        r.add_fence(fence(100 + i), R)
    r.reserve_fences(1)  # max(5 + 1, 2 * 5) = 10 -> 104 -> kmalloc-128 -> 13 slots
    assert (r.num_fences, r.max_fences) == (5, 13)
    r.reserve_fences(20)  # max(25, 26) = 26 -> 232 -> 256 -> 29 slots
    assert r.max_fences == 29
    r.unlock()


def test_add_without_reserve_is_a_bug() -> None:
    r = locked_resv()
    f = fence(7)
    with pytest.raises(ContractViolation, match="without reserve_fences"):
        r.add_fence(f, W)
    r.reserve_fences(1)
    for i in range(5):
        r.add_fence(fence(10 + i), W)
    with pytest.raises(ContractViolation, match="no reserved slot left"):
        r.add_fence(f, W)
    assert f.refcount == 1  # no reference leaked by the failed adds
    r.unlock()


def test_reservation_lost_on_unlock_in_debug_mode() -> None:
    """dma_resv_reset_max_fences(): in debug mode an add after relocking needs a new reserve."""
    r = locked_resv(1)
    r.add_fence(fence(1), W)
    r.unlock()
    assert r.max_fences == r.num_fences == 1
    r.lock()
    with pytest.raises(ContractViolation, match="no reserved slot left"):
        r.add_fence(fence(2), W)
    r.reserve_fences(1)
    r.add_fence(fence(2), W)
    r.unlock()


def test_reservation_survives_unlock_without_debug() -> None:
    with Machine(debug=False):
        r = locked_resv(1)
        r.add_fence(fence(1), W)
        r.unlock()
        assert r.max_fences == 5
        r.lock()
        r.add_fence(fence(2), W)  # the spare slots of the list are still there
        r.unlock()
        assert r.num_fences == 2


def test_reserve_collects_signalled_fences() -> None:
    r = locked_resv(1)
    fs = [fence(20 + i) for i in range(5)]
    for f in fs:
        r.add_fence(f, R)
    fs[1].signal()
    fs[3].signal()
    assert r.num_fences == 5
    r.reserve_fences(1)  # reallocates: the two signalled entries are dropped, order kept
    assert [f for f, _ in entries(r)] == [fs[0], fs[2], fs[4]]
    assert [f.refcount for f in fs] == [2, 1, 2, 1, 2]
    r.unlock()


def test_reserve_bad_input() -> None:
    r = locked_resv()
    with pytest.raises(DmaBufError) as e:
        r.reserve_fences(-1)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        r.reserve_fences("2")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        r.reserve_fences(True)
    r.unlock()
    with pytest.raises(ContractViolation, match="dma_resv_assert_held"):
        r.reserve_fences(1)


# ---------------------------------------------------------------------------------------------
# add_fence replacement rules
# ---------------------------------------------------------------------------------------------


def test_same_context_later_fence_replaces() -> None:
    r = locked_resv(4)
    f1, f2 = fence(5, 1), fence(5, 2)
    r.add_fence(f1, W)
    r.add_fence(f2, W)
    assert entries(r) == [(f2, W)]
    assert f1.refcount == 1 and f2.refcount == 2  # old reference dropped
    r.unlock()


def test_same_context_older_fence_is_appended() -> None:
    r = locked_resv(4)
    f1, f2 = fence(5, 2), fence(5, 1)
    r.add_fence(f1, W)
    r.add_fence(f2, W)  # not later or same: kept beside
    assert entries(r) == [(f1, W), (f2, W)]
    r.unlock()


def test_promotion_replaces_degradation_keeps_both() -> None:
    r = locked_resv(4)
    f = fence(9)
    r.add_fence(f, B)
    r.add_fence(f, R)  # promotion BOOKKEEP -> READ: same fence, old usage >= new: replaced
    assert entries(r) == [(f, R)]
    r.add_fence(f, B)  # degradation: both kept, the fence is never degraded
    assert entries(r) == [(f, R), (f, B)]
    assert f.refcount == 3
    assert r.get_fences(W) == []
    assert [x for x, _ in r.for_each_fence(R)] == [f]
    r.unlock()


def test_write_then_read_same_context_keeps_both() -> None:
    r = locked_resv(4)
    w, rd = fence(3, 1), fence(3, 2)
    r.add_fence(w, W)
    r.add_fence(rd, R)  # higher usage: does not replace the writer
    assert entries(r) == [(w, W), (rd, R)]
    r.unlock()


def test_signalled_entry_is_reused() -> None:
    r = locked_resv(4)
    a, b, c = fence(1), fence(2), fence(3)
    r.add_fence(a, K)
    r.add_fence(b, W)
    a.signal()
    r.add_fence(c, B)  # takes a's slot
    assert entries(r) == [(c, B), (b, W)]
    assert a.refcount == 1
    r.unlock()


def test_signalled_slot_before_same_context_entry() -> None:
    """The scan stops at the first match: a signalled slot in front wins over the same-context
    entry behind it, which stays (I-R1 holds only for the entries scanned before)."""
    r = locked_resv(4)
    s, g, f = fence(1), fence(2, 1), fence(2, 2)
    r.add_fence(s, W)
    r.add_fence(g, W)
    s.signal()
    r.add_fence(f, W)
    assert entries(r) == [(f, W), (g, W)]
    r.unlock()


def test_container_warns_but_is_added(machine: Machine) -> None:
    r = locked_resv(2)
    arr = DmaFenceArray([fence(1), fence(2)], machine.fence_context_alloc(), 1)
    r.add_fence(arr, R)
    assert [rule for rule, _ in machine.warnings] == ["dma_resv_add_fence"]
    assert entries(r) == [(arr, R)]
    r.unlock()


def test_add_fence_bad_input() -> None:
    r = locked_resv(1)
    with pytest.raises(TypeError):
        r.add_fence("fence", W)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        r.add_fence(fence(1), "READ")  # type: ignore[arg-type]
    with pytest.raises(DmaBufError) as e:
        r.add_fence(fence(1), 7)  # type: ignore[arg-type]
    assert e.value.errno == errno.EINVAL
    r.add_fence(fence(1), 2)  # type: ignore[arg-type]  # an int usage is accepted
    assert entries(r)[0][1] is R
    r.unlock()
    with pytest.raises(ContractViolation, match="dma_resv_assert_held"):
        r.add_fence(fence(1), W)


def test_replace_fences() -> None:
    r = locked_resv(4)
    a1, a2, other, repl = fence(4, 1), fence(4, 2), fence(5), fence(6)
    r.add_fence(a1, W)
    r.add_fence(other, R)
    r.add_fence(a2, B)
    r.replace_fences(4, repl, K)
    assert entries(r) == [(repl, K), (other, R), (repl, K)]
    assert (a1.refcount, a2.refcount, repl.refcount) == (1, 1, 3)
    with pytest.raises(TypeError):
        r.replace_fences("4", repl, K)  # type: ignore[arg-type]
    r.unlock()


# ---------------------------------------------------------------------------------------------
# iteration and queries
# ---------------------------------------------------------------------------------------------


def _four_usages() -> tuple[DmaResv, list[DmaFence]]:
    r = locked_resv(4)
    fs = [fence(30 + u) for u in range(4)]
    for f, u in zip(fs, (K, W, R, B)):
        r.add_fence(f, u)
    return r, fs


@pytest.mark.parametrize("usage", [K, W, R, B])
def test_usage_filtering(usage: DmaResvUsage) -> None:
    """A query for U sees exactly the fences of usage <= U (st-dma-resv porting note)."""
    r, fs = _four_usages()
    want = fs[: usage + 1]
    assert [f for f, _ in r.for_each_fence(usage)] == want
    got = r.get_fences(usage)
    assert got == want
    for f in got:
        f.put()
    assert [f for f, _ in r.for_each_fence_unlocked(usage)] == want
    assert not r.test_signaled(usage)
    for f in want:
        f.signal()
    assert r.test_signaled(usage)
    r.unlock()


def test_locked_iteration_includes_signalled_unlocked_does_not() -> None:
    r, fs = _four_usages()
    fs[1].signal()
    assert [f for f, _ in r.for_each_fence(B)] == fs
    assert [f for f, _ in r.for_each_fence_unlocked(B)] == [fs[0], fs[2], fs[3]]
    cursor = DmaResvIter(r, B)
    assert cursor.first() is fs[0] and cursor.is_restarted
    assert cursor.next() is fs[1] and not cursor.is_restarted
    r.unlock()
    with pytest.raises(ContractViolation):
        cursor.next()


def test_unlocked_iteration_restarts_when_list_is_replaced() -> None:
    r, fs = _four_usages()
    r.unlock()
    cursor = DmaResvIter(r, B)
    seen: list[tuple[DmaFence, bool]] = []
    try:
        for f in cursor.for_each_unlocked():
            seen.append((f, cursor.is_restarted))
            if len(seen) == 2:
                r.lock()
                fs[0].signal()
                r.reserve_fences(10)  # reallocates the list: the walk restarts
                r.unlock()
    finally:
        cursor.end()
    assert seen == [(fs[0], True), (fs[1], False), (fs[1], True), (fs[2], False),
                    (fs[3], False)]
    assert [f.refcount for f in fs] == [1, 2, 2, 2]


def test_unlocked_cursor_holds_a_reference() -> None:
    r, fs = _four_usages()
    r.unlock()
    with DmaResvIter(r, B) as cursor:
        assert cursor.first_unlocked() is fs[0]
        assert fs[0].refcount == 3
        assert cursor.next_unlocked() is fs[1]
        assert (fs[0].refcount, fs[1].refcount) == (2, 3)
    assert fs[1].refcount == 2


def test_get_fences_restart_drops_partial_result(machine: Machine) -> None:
    """get_fences() restarts from scratch when the list changes, dropping what it collected."""
    r, fs = _four_usages()
    r.unlock()
    calls = 0
    orig = DmaResvIter.next_unlocked

    def next_unlocked(self: DmaResvIter) -> DmaFence | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            self.fences = object()  # as st-dma-resv: poison -> restart
        return orig(self)

    DmaResvIter.next_unlocked = next_unlocked  # type: ignore[method-assign]
    try:
        got = r.get_fences(B)
    finally:
        DmaResvIter.next_unlocked = orig  # type: ignore[method-assign]
    assert got == fs
    assert [f.refcount for f in fs] == [3, 3, 3, 3]
    for f in got:
        f.put()


def test_get_singleton(machine: Machine) -> None:
    r = locked_resv(4)
    assert r.get_singleton(B) is None
    a, b = fence(40), fence(41)
    r.add_fence(a, W)
    single = r.get_singleton(B)
    assert single is a and a.refcount == 3
    a.put()
    r.add_fence(b, R)
    assert r.get_singleton(W) is a
    a.put()
    arr = r.get_singleton(R)
    assert isinstance(arr, DmaFenceArray)
    assert arr.fences == (a, b) and arr.seqno == 1 and not arr.signal_on_any
    assert arr.context >= 1 and arr.context not in (40, 41)
    assert not arr.is_signaled()
    a.signal()
    b.signal()
    assert arr.is_signaled()
    arr.put()
    r.unlock()


def test_copy_fences() -> None:
    src, fs = _four_usages()
    fs[2].signal()
    src.unlock()
    dst = locked_resv(1)
    old = fence(99)
    dst.add_fence(old, K)
    dst.copy_fences(src)
    assert entries(dst) == [(fs[0], K), (fs[1], W), (fs[3], B)]
    assert old.refcount == 1
    assert [f.refcount for f in fs] == [3, 3, 2, 3]
    empty = DmaResv()
    dst.copy_fences(empty)
    assert entries(dst) == [] and dst.max_fences == 0
    assert [f.refcount for f in fs] == [2, 2, 2, 2]
    with pytest.raises(TypeError):
        dst.copy_fences("src")  # type: ignore[arg-type]
    dst.unlock()
    with pytest.raises(ContractViolation):
        dst.copy_fences(src)


def test_describe(machine: Machine) -> None:
    r, fs = _four_usages()
    fs[0].signal()
    text = r.describe()
    assert text == ("\tkernel fence:30:1   signalled\n"
                    "\twrite fence:31:1 timeline mock unsignalled\n"
                    "\tread fence:32:1 timeline mock unsignalled\n")
    r.unlock()
    with pytest.raises(ContractViolation):
        r.describe()


def test_fini_drops_references() -> None:
    r, fs = _four_usages()
    with pytest.raises(ContractViolation, match="while it is locked"):
        r.fini()
    r.unlock()
    r.fini()
    assert [f.refcount for f in fs] == [1, 1, 1, 1]
    assert r.num_fences == 0


# ---------------------------------------------------------------------------------------------
# waiting
# ---------------------------------------------------------------------------------------------


def test_wait_timeout_poll_and_signalled() -> None:
    r, fs = _four_usages()
    r.unlock()
    assert r.wait_timeout(B, False, 0) == 0  # poll: something pending
    assert r.wait_timeout(K, False, 0.001) == 0  # times out
    fs[0].signal()
    assert r.wait_timeout(K, False, 0) == 1  # nothing pending: 1 for a 0 timeout (I-R4)
    assert r.wait_timeout(K, False, 5.0) == 5.0
    assert r.wait_timeout(K, False, None) == math.inf


def test_wait_timeout_bad_input() -> None:
    r = DmaResv()
    with pytest.raises(DmaBufError) as e:
        r.wait_timeout(R, False, -1)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        r.wait_timeout(R, False, "1")  # type: ignore[arg-type]
    with pytest.raises(DmaBufError):
        r.wait_timeout(9, False, 1)  # type: ignore[arg-type]


def test_wait_timeout_waits_for_each_fence_in_turn() -> None:
    """Signalled by another thread at t=1 and t=2 (virtual): the wait returns the remaining
    time of the shared budget; a budget that is too short returns 0."""
    def scenario(m: Machine) -> None:
        r = locked_resv(2)
        a, b = fence(m.fence_context_alloc()), fence(m.fence_context_alloc())
        r.add_fence(a, W)
        r.add_fence(b, R)
        r.unlock()

        def signaller() -> None:
            m.sched.sleep(1.0)
            a.signal()
            m.sched.sleep(1.0)
            b.signal()

        t = m.sched.spawn(signaller, name="signaller")
        assert r.wait_timeout(W, False, 1.5) == pytest.approx(0.5)
        assert r.wait_timeout(R, False, 0.5) == 0
        assert r.wait_timeout(R, False, 10.0) == pytest.approx(9.5)
        assert m.sched.now() == pytest.approx(2.0)
        assert t.join(10)

    explore(scenario, 5)


def test_wait_timeout_interruptible() -> None:
    def scenario(m: Machine) -> None:
        r = locked_resv(1)
        f = fence(m.fence_context_alloc())
        r.add_fence(f, W)
        r.unlock()
        out: list[int] = []

        def waiter() -> None:
            try:
                r.wait_timeout(W, True, None)
            except DmaBufError as e:
                out.append(e.errno)
            Interrupts.of(m).clear()

        t = m.sched.spawn(waiter, name="waiter")
        m.sched.sleep(0.5)
        Interrupts.of(m).send(t)
        assert t.join(10)
        t.result()
        assert out == [ERESTARTSYS]
        f.signal()

    explore(scenario, 5)


def test_set_deadline_reaches_fences(machine: Machine) -> None:
    seen: list[float] = []

    class DeadlineOps(DmaFenceOps):
        def set_deadline(self, fence: DmaFence, deadline: float) -> None:
            seen.append(deadline)

    ops = DeadlineOps("mock", "tl")
    r = locked_resv(2)
    r.add_fence(DmaFence(ops, 1, 1), W)
    r.add_fence(DmaFence(ops, 2, 1), B)
    r.set_deadline(W, 3.0)
    assert seen == [3.0]
    r.unlock()


def _readers_vs_writer(m: Machine, rounds: int, nreaders: int) -> list[DmaFence]:
    """One writer adds/signals/reallocates, readers walk without the lock."""
    r = DmaResv()
    made: list[DmaFence] = []
    usages = [K, W, R, B]

    def writer() -> None:
        ctxs = [m.fence_context_alloc() for _ in range(3)]
        for i in range(rounds):
            r.lock()
            r.reserve_fences(2)
            for j in range(2):
                f = DmaFence(OPS, ctxs[(i + j) % 3], i + 1)
                made.append(f)
                r.add_fence(f, usages[(i + j) % 4])
            r.unlock()
            if i % 3 == 0:
                for f in made[-4:]:
                    f.signal()
            m.sched.checkpoint()

    def reader(usage: DmaResvUsage) -> int:
        seen = 0
        for _ in range(rounds):
            got = r.get_fences(usage)
            for f in got:
                assert f.refcount >= 2
                f.put()
            for _f, u in r.for_each_fence_unlocked(usage):
                assert u <= usage
                seen += 1
            r.test_signaled(usage)
            m.sched.checkpoint()
        return seen

    ts = [m.sched.spawn(writer, name="writer")]
    ts += [m.sched.spawn(reader, usages[k % 4], name=f"reader{k}") for k in range(nreaders)]
    for t in ts:
        assert t.join(60)
        t.result()
    r.fini()
    return made


def test_unlocked_readers_vs_writer_free(machine: Machine) -> None:
    """Real threads: unlocked readers never see a released fence, never leak a reference."""
    made = _readers_vs_writer(machine, 300, 3)
    assert all(f.refcount == 1 for f in made)


def test_unlocked_readers_vs_writer_controlled() -> None:
    def scenario(m: Machine) -> None:
        made = _readers_vs_writer(m, 12, 2)
        assert all(f.refcount == 1 for f in made)

    explore(scenario, 25)
