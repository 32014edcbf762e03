"""Unit tests of dmabuf.sync.dma_fence beyond the kernel's selftest (bad input, contracts, waits,
interrupts, wait_any, ordering, tracing, lockdep annotations)."""

from __future__ import annotations

import errno
import math

import pytest

from dmabuf.errors import ERESTARTSYS, ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.sched import explore
from dmabuf.sync.dma_fence import (
    MAX_ERRNO,
    DmaFence,
    DmaFenceCb,
    DmaFenceFlag,
    DmaFenceOps,
    Interrupts,
    dma_fence_allocate_private_stub,
    dma_fence_begin_signalling,
    dma_fence_context_alloc,
    dma_fence_end_signalling,
    dma_fence_get_stub,
    dma_fence_is_later,
    dma_fence_is_later_or_same,
    dma_fence_later,
    dma_fence_wait_any_timeout,
    dma_fence_was_initialized,
    irq_work_queue,
)

OPS = DmaFenceOps("drv", "tl")


def fence(m: Machine | None = None, ctx: int = 1, seqno: int = 1, **kw: object) -> DmaFence:
    return DmaFence(OPS, ctx, seqno, machine=m, **kw)  # type: ignore[arg-type]


class Recorder(DmaFenceOps):
    """Ops that record which members were called."""

    def __init__(self, enable_result: bool = True, peek: bool = False) -> None:
        super().__init__("rec-drv", "rec-tl")
        self.calls: list[str] = []
        self.enable_result = enable_result
        self.peek = peek

    def enable_signaling(self, fence: DmaFence) -> bool:
        self.calls.append("enable_signaling")
        return self.enable_result

    def signaled(self, fence: DmaFence) -> bool:
        self.calls.append("signaled")
        return self.peek

    def set_deadline(self, fence: DmaFence, deadline: float) -> None:
        self.calls.append(f"set_deadline:{deadline}")


class WithRelease(DmaFenceOps):
    def __init__(self) -> None:
        super().__init__("rel-drv", "rel-tl")
        self.released: list[DmaFence] = []

    def release(self, fence: DmaFence) -> None:
        self.released.append(fence)


# ---- construction ---------------------------------------------------------------------------


def test_init_flags_and_fields(machine: Machine) -> None:
    f = fence(machine, ctx=7, seqno=9)
    assert (f.context, f.seqno, f.error, f.refcount, f.timestamp) == (7, 9, 0, 1, None)
    assert f.flags == (1 << DmaFenceFlag.INITIALIZED) | (1 << DmaFenceFlag.INLINE_LOCK)
    assert f.was_initialized() and dma_fence_was_initialized(f)
    assert dma_fence_was_initialized(None) is False
    shared = machine.sched.lock()
    g = fence(machine, lock=shared)
    assert not g.test_bit(DmaFenceFlag.INLINE_LOCK) and g.spinlock() is shared
    h = DmaFence.init64(OPS, 1, 2, machine=machine)
    assert h.test_bit(DmaFenceFlag.SEQNO64) and not f.test_bit(DmaFenceFlag.SEQNO64)


def test_flag_bit_numbers() -> None:
    assert [int(b) for b in DmaFenceFlag] == [0, 1, 2, 3, 4, 5, 6]
    assert [b.name for b in DmaFenceFlag] == ["INITIALIZED", "INLINE_LOCK", "SEQNO64", "SIGNALED",
                                              "TIMESTAMP", "ENABLE_SIGNAL", "USER_BITS"]


@pytest.mark.parametrize("bad", [None, "ops", object()])
def test_init_rejects_non_ops(bad: object) -> None:
    with pytest.raises(TypeError, match="DmaFenceOps"):
        DmaFence(bad, 0, 0)  # type: ignore[arg-type]


def test_init_requires_names() -> None:
    with pytest.raises(ContractViolation, match="get_driver_name"):
        DmaFence(DmaFenceOps(), 0, 0)
    with pytest.raises(ContractViolation):
        DmaFence(DmaFenceOps("only-driver"), 0, 0)


@pytest.mark.parametrize(("ctx", "seqno", "exc"), [
    (-1, 0, DmaBufError), (0, -1, DmaBufError), (1 << 64, 0, DmaBufError),
    (0, 1 << 64, DmaBufError), ("0", 0, TypeError), (0, 1.5, TypeError), (True, 0, TypeError)])
def test_init_bad_numbers(ctx: object, seqno: object, exc: type) -> None:
    with pytest.raises(exc) as ei:
        DmaFence(OPS, ctx, seqno)  # type: ignore[arg-type]
    if exc is DmaBufError:
        assert ei.value.errno == errno.EINVAL


def test_init_bad_lock() -> None:
    with pytest.raises(TypeError, match="lock"):
        DmaFence(OPS, 0, 0, lock="spin")  # type: ignore[arg-type]


def test_ops_provides() -> None:
    r = Recorder()
    assert r.provides("enable_signaling") and r.provides("signaled")
    assert not r.provides("wait") and not r.provides("release")
    assert r.provides("get_driver_name")
    assert not DmaFenceOps().provides("get_driver_name")
    assert WithRelease.provided == frozenset({"release"})
    with pytest.raises(ValueError):
        r.provides("bogus")


def test_context_alloc(machine: Machine) -> None:
    a = dma_fence_context_alloc(3)
    b = dma_fence_context_alloc(1)
    assert a >= 1 and b == a + 3
    with pytest.raises(DmaBufError) as ei:
        dma_fence_context_alloc(0)
    assert ei.value.errno == errno.EINVAL


# ---- refcount / release ---------------------------------------------------------------------


def test_refcount_and_release_op(machine: Machine) -> None:
    ops = WithRelease()
    f = DmaFence(ops, 0, 0)
    assert f.get() is f and f.refcount == 2
    f.put()
    assert ops.released == []
    f.put()
    assert ops.released == [f] and f.refcount == 0
    assert f.get_unless_zero() is None
    with pytest.raises(ContractViolation, match="use-after-free"):
        f.get()
    with pytest.raises(ContractViolation, match="underflow"):
        f.put()


def test_release_with_pending_callbacks_warns_and_signals_edeadlk(machine: Machine) -> None:
    f = fence(machine)
    seen: list[int] = []
    assert f.add_callback(DmaFenceCb(), lambda fe, cb: seen.append(fe.get_status_locked())) == 0
    f.put()
    assert seen == [-errno.EDEADLK]
    assert f.error == -errno.EDEADLK and f.test_signaled_flag()
    assert len(machine.warnings) == 1
    rule, msg = machine.warnings[0]
    assert rule == "dma_fence_release"
    assert msg == "Fence drv:tl:1:1 released with pending signals!"


def test_release_without_callbacks_is_quiet(machine: Machine) -> None:
    f = fence(machine)
    f.enable_sw_signaling()
    f.put()
    assert machine.warnings == [] and not f.test_signaled_flag()


# ---- signalling -----------------------------------------------------------------------------


def test_signal_idempotent_and_check_and_signal(machine: Machine) -> None:
    f = fence(machine)
    order: list[int] = []
    f.add_callback(DmaFenceCb(), lambda fe, cb: order.append(1))
    assert f.check_and_signal() is False
    ts = f.timestamp
    f.signal()
    f.signal_timestamp(123.0)
    assert f.check_and_signal() is True
    assert order == [1] and f.timestamp == ts
    assert f.test_bit(DmaFenceFlag.SIGNALED) and f.test_bit(DmaFenceFlag.TIMESTAMP)


def test_callbacks_run_once_in_fifo_order(machine: Machine) -> None:
    f = fence(machine)
    order: list[int] = []
    cbs = [DmaFenceCb() for _ in range(5)]
    for i, cb in enumerate(cbs):
        assert f.add_callback(cb, lambda fe, c, i=i: order.append(i)) == 0
    assert f.pending_callbacks() == 5
    assert f.remove_callback(cbs[2]) is True
    f.signal()
    f.signal()
    assert order == [0, 1, 3, 4]
    assert all(not cb.queued for cb in cbs) and f.pending_callbacks() == 0


def test_callback_exception_reported_after_all_ran(machine: Machine) -> None:
    f = fence(machine)
    ran: list[str] = []

    def boom(fe: DmaFence, cb: DmaFenceCb) -> None:
        ran.append("boom")
        raise ValueError("callback bug")

    f.add_callback(DmaFenceCb(), boom)
    f.add_callback(DmaFenceCb(), lambda fe, cb: ran.append("after"))
    with pytest.raises(ValueError, match="callback bug"):
        f.signal()
    assert ran == ["boom", "after"] and f.is_signaled()
    assert f.get_status() == 1  # the lock was released despite the exception


def test_signal_timestamp_and_ns(machine: Machine) -> None:
    f = fence(machine)
    assert f.timestamp_ns == 0
    f.signal_timestamp(1.5)
    assert f.timestamp == 1.5 and f.timestamp_ns == 1_500_000_000
    with pytest.raises(TypeError):
        fence(machine).signal_timestamp("now")  # type: ignore[arg-type]


def test_signal_locked_requires_lock(machine: Machine) -> None:
    f = fence(machine)
    with pytest.raises(ContractViolation, match="dma_fence_assert_held"):
        f.signal_locked()
    assert not f.is_signaled()
    f.lock_irqsave()
    try:
        f.assert_held()
        assert f.check_and_signal_locked() is False
        assert f.is_signaled_locked() and f.get_status_locked() == 1
    finally:
        f.unlock_irqrestore()
    with pytest.raises(ContractViolation, match="bad_unlock_balance"):
        f.unlock_irqrestore()


def test_shared_lock_signals_both(machine: Machine) -> None:
    lock = machine.sched.lock("timeline")
    a, b = fence(machine, lock=lock), fence(machine, seqno=2, lock=lock)
    a.lock_irqsave()
    try:
        a.signal_locked()
        b.signal_locked()  # the same lock is held: allowed
    finally:
        a.unlock_irqrestore()
    assert a.is_signaled() and b.is_signaled()


# ---- error / status -------------------------------------------------------------------------


@pytest.mark.parametrize("err", [0, 1, errno.EIO, -MAX_ERRNO - 1])
def test_set_error_rejects_non_negative_errno(machine: Machine, err: int) -> None:
    f = fence(machine)
    with pytest.raises(DmaBufError) as ei:
        f.set_error(err)
    assert ei.value.errno == errno.EINVAL and f.error == 0


@pytest.mark.parametrize("err", [None, "EIO", -5.0, True])
def test_set_error_rejects_wrong_type(machine: Machine, err: object) -> None:
    with pytest.raises(TypeError):
        fence(machine).set_error(err)  # type: ignore[arg-type]


def test_set_error_after_signal_is_contract_violation(machine: Machine) -> None:
    f = fence(machine)
    f.signal()
    with pytest.raises(ContractViolation, match="already signalled"):
        f.set_error(-errno.EIO)
    assert f.get_status() == 1 and f.error == 0


def test_status_values(machine: Machine) -> None:
    f = fence(machine)
    f.set_error(-MAX_ERRNO)
    assert f.get_status() == 0
    f.signal()
    assert f.get_status() == -MAX_ERRNO


# ---- add/remove callback bad input ----------------------------------------------------------


def test_add_callback_bad_input(machine: Machine) -> None:
    f = fence(machine)
    with pytest.raises(DmaBufError) as ei:
        f.add_callback(DmaFenceCb(), None)  # type: ignore[arg-type]
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        f.add_callback("cb", lambda a, b: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        f.add_callback(DmaFenceCb(), 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        f.remove_callback(None)  # type: ignore[arg-type]
    assert f.pending_callbacks() == 0


def test_add_callback_on_signalled_returns_enoent_and_never_runs(machine: Machine) -> None:
    f = fence(machine)
    f.signal()
    ran: list[int] = []
    cb = DmaFenceCb()
    assert f.add_callback(cb, lambda fe, c: ran.append(1)) == -errno.ENOENT
    f.signal()
    assert ran == [] and not cb.queued and f.remove_callback(cb) is False


def test_callback_on_one_fence_at_a_time(machine: Machine) -> None:
    f, g = fence(machine), fence(machine, seqno=2)
    cb = DmaFenceCb()
    assert f.add_callback(cb, lambda fe, c: None) == 0
    with pytest.raises(ContractViolation, match="one fence at a time"):
        g.add_callback(cb, lambda fe, c: None)
    with pytest.raises(ContractViolation, match="queued on fence"):
        g.remove_callback(cb)
    assert f.remove_callback(cb) is True
    assert g.add_callback(cb, lambda fe, c: None) == 0
    g.signal()
    assert not cb.queued


# ---- enable_signaling / signaled ops --------------------------------------------------------


def test_enable_signaling_called_once(machine: Machine) -> None:
    ops = Recorder()
    f = DmaFence(ops, 1, 1)
    f.enable_sw_signaling()
    f.enable_sw_signaling()
    f.add_callback(DmaFenceCb(), lambda fe, c: None)
    assert f.wait_timeout(False, 0) == 0
    assert ops.calls == ["enable_signaling"]
    assert f.test_bit(DmaFenceFlag.ENABLE_SIGNAL)
    f.signal()
    assert f.ops is None  # neither release nor wait: detached at signal (I-F5)
    assert ops.calls == ["enable_signaling"]


def test_enable_signaling_false_signals_immediately(machine: Machine) -> None:
    ops = Recorder(enable_result=False)
    f = DmaFence(ops, 1, 1)
    cb = DmaFenceCb()
    assert f.add_callback(cb, lambda fe, c: None) == -errno.ENOENT
    assert f.is_signaled() and not cb.queued
    g = DmaFence(ops, 1, 2)
    g.enable_sw_signaling()
    assert g.is_signaled()
    assert ops.calls == ["enable_signaling", "enable_signaling"]


def test_enable_signaling_never_after_signal(machine: Machine) -> None:
    ops = Recorder()
    f = DmaFence(ops, 1, 1)
    f.signal()
    f.enable_sw_signaling()
    assert f.add_callback(DmaFenceCb(), lambda fe, c: None) == -errno.ENOENT
    assert f.wait_timeout(False, 0) == 1
    assert ops.calls == []
    assert f.test_bit(DmaFenceFlag.ENABLE_SIGNAL)


def test_is_signaled_peek_signals(machine: Machine) -> None:
    ops = Recorder(peek=False)
    f = DmaFence(ops, 1, 1)
    ran: list[int] = []
    f.add_callback(DmaFenceCb(), lambda fe, c: ran.append(1))
    assert f.is_signaled() is False and ran == []
    ops.peek = True
    assert f.is_signaled() is True and ran == [1] and f.test_signaled_flag()
    assert ops.calls == ["enable_signaling", "signaled", "signaled"]


def test_ops_detach_and_names(machine: Machine) -> None:
    f = fence(machine)
    assert (f.driver_name(), f.timeline_name()) == ("drv", "tl")
    f.signal()
    assert f.ops is None
    assert (f.driver_name(), f.timeline_name()) == ("detached-driver", "signaled-timeline")
    rel = WithRelease()
    g = DmaFence(rel, 1, 1)
    g.signal()
    assert g.ops is rel and g.driver_name() == "rel-drv"


def test_set_deadline(machine: Machine) -> None:
    ops = Recorder()
    f = DmaFence(ops, 1, 1)
    f.set_deadline(4.0)
    f.signal()
    f.set_deadline(5.0)
    assert [c for c in ops.calls if c.startswith("set_deadline")] == ["set_deadline:4.0"]
    fence(machine).set_deadline(1.0)  # not provided: no-op


# ---- describe / names -----------------------------------------------------------------------


def test_describe_format(machine: Machine) -> None:
    f = fence(machine, ctx=12, seqno=34)
    assert f.describe() == "12:34 tl drv unsignalled\n"
    f.signal()
    assert f.describe() == "12:34   signalled\n"
    assert repr(f) == "<DmaFence 12:34 signaled>"


# ---- ordering -------------------------------------------------------------------------------


def test_is_later_32bit_wraparound(machine: Machine) -> None:
    a = fence(machine, ctx=5, seqno=0xFFFFFFFF)
    b = fence(machine, ctx=5, seqno=0x1_00000001)  # low 32 bits: 1, i.e. 2 after a (wrapped)
    assert dma_fence_is_later(b, a) and not dma_fence_is_later(a, b)
    c = fence(machine, ctx=5, seqno=0x80000000)
    d = fence(machine, ctx=5, seqno=0)
    # A difference of exactly 2**31 is INT_MIN as (int): neither is later.
    assert not c.is_later(d) and not d.is_later(c)
    assert dma_fence_is_later_or_same(a, a) and not a.is_later(a)


def test_is_later_seqno64(machine: Machine) -> None:
    a = DmaFence.init64(OPS, 5, 0xFFFFFFFF)
    b = DmaFence.init64(OPS, 5, 0x1_00000001)
    assert b.is_later(a) and not a.is_later(b)
    small = DmaFence.init64(OPS, 5, 1)
    assert not small.is_later(a)  # 64-bit: 1 < 0xffffffff even though 32-bit wrap says later
    assert fence(machine, ctx=5, seqno=1).is_later(a)  # 32-bit compare (flag of the first)


def test_is_later_different_contexts_is_contract_violation(machine: Machine) -> None:
    with pytest.raises(ContractViolation, match="different contexts"):
        fence(machine, ctx=1).is_later(fence(machine, ctx=2))
    with pytest.raises(ContractViolation):
        dma_fence_later(fence(machine, ctx=1), fence(machine, ctx=2))
    with pytest.raises(TypeError):
        fence(machine).is_later("x")  # type: ignore[arg-type]


def test_dma_fence_later(machine: Machine) -> None:
    a, b = fence(machine, ctx=3, seqno=1), fence(machine, ctx=3, seqno=2)
    assert dma_fence_later(a, b) is b and dma_fence_later(b, a) is b
    b.signal()
    assert dma_fence_later(a, b) is None


# ---- stubs ----------------------------------------------------------------------------------


def test_stub(machine: Machine) -> None:
    s = dma_fence_get_stub()
    assert (s.context, s.seqno, s.is_signaled(), s.ops) == (0, 0, True, None)
    assert s.test_bit(DmaFenceFlag.ENABLE_SIGNAL) and s.timestamp is not None
    assert dma_fence_get_stub() is s and s.refcount == 3
    other = Machine(debug=True)
    assert dma_fence_get_stub(other) is not s


def test_private_stub(machine: Machine) -> None:
    p = dma_fence_allocate_private_stub(42.25)
    q = dma_fence_allocate_private_stub(1.0)
    assert p is not q and p.timestamp == 42.25 and p.timestamp_ns == 42_250_000_000
    assert (p.context, p.seqno, p.is_signaled(), p.refcount) == (0, 0, True, 1)


# ---- waits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -0.001, -math.inf, math.nan])
def test_wait_negative_timeout_einval(machine: Machine, bad: float) -> None:
    f = fence(machine)
    with pytest.raises(DmaBufError) as ei:
        f.wait_timeout(False, bad)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError):
        dma_fence_wait_any_timeout([f], False, bad)


@pytest.mark.parametrize("bad", ["1", [1], True])
def test_wait_timeout_wrong_type(machine: Machine, bad: object) -> None:
    with pytest.raises(TypeError):
        fence(machine).wait_timeout(False, bad)  # type: ignore[arg-type]


def test_wait_timeout_zero_rule(machine: Machine) -> None:
    """I-F4: timeout 0 returns 0 on a pending fence (without blocking) and 1 once signalled."""
    f = fence(machine)
    assert f.wait_timeout(False, 0) == 0
    assert f.wait_timeout(True, 0) == 0
    f.signal()
    assert f.wait_timeout(False, 0) == 1
    assert f.wait_timeout(False, 2.5) == 2.5  # already signalled: the full timeout
    assert f.wait_timeout(False, None) == math.inf
    assert f.wait(False) is None


def test_wait_free_mode_woken_by_thread(machine: Machine) -> None:
    f = fence(machine)
    go = machine.sched.event()

    def signaller() -> None:
        assert go.wait(10.0)
        f.signal()

    t = machine.sched.spawn(signaller)
    go.set()
    ret = f.wait_timeout(False, 10.0)
    assert t.join(10.0)
    t.result()
    assert 0 < ret <= 10.0 and f.is_signaled()


def test_wait_controlled_exact_times() -> None:
    def scenario(m: Machine) -> None:
        f = fence(m)
        assert f.wait_timeout(False, 2.0) == 0 and m.sched.now() == 2.0

        def later() -> None:
            m.sched.sleep(1.0)
            f.signal()

        t = m.sched.spawn(later)
        assert f.wait_timeout(False, 5.0) == pytest.approx(4.0)
        assert f.timestamp == 3.0 and m.sched.now() == 3.0
        assert t.join(1.0)
        g = fence(m, seqno=2)
        t2 = m.sched.spawn(lambda: (m.sched.sleep(0.5), g.signal()))
        assert g.wait_timeout(False, None) == math.inf
        assert t2.join(1.0)

    explore(scenario, 40)


def test_wait_many_waiters_all_woken() -> None:
    def scenario(m: Machine) -> None:
        f = fence(m)
        ts = [m.sched.spawn(f.wait_timeout, False, 100.0) for _ in range(4)]
        m.sched.checkpoint()
        f.signal()
        assert all(t.join(1.0) for t in ts)
        assert all(t.result() == 100.0 for t in ts)  # no virtual time passed
        assert f.pending_callbacks() == 0

    explore(scenario, 40)


def test_timed_out_wait_leaves_no_callback() -> None:
    def scenario(m: Machine) -> None:
        f = fence(m)
        assert f.wait_timeout(False, 1.0) == 0
        assert f.pending_callbacks() == 0
        f.signal()  # the stale wake-up must not confuse the next wait
        g = fence(m, seqno=2)
        assert g.wait_timeout(False, 1.0) == 0 and m.sched.now() == 2.0

    explore(scenario, 20)


class CustomWait(DmaFenceOps):
    def __init__(self) -> None:
        super().__init__("cw", "cw")
        self.args: list[tuple[bool, float]] = []

    def wait(self, fence: DmaFence, intr: bool, timeout: float) -> float:
        self.args.append((intr, timeout))
        return 0.25


def test_custom_wait_op_used_and_keeps_ops(machine: Machine) -> None:
    ops = CustomWait()
    f = DmaFence(ops, 1, 1)
    assert f.wait_timeout(True, 3.0) == 0.25
    assert f.wait_timeout(False, None) == 0.25
    assert ops.args == [(True, 3.0), (False, math.inf)]
    f.signal()
    assert f.ops is ops


# ---- interrupts -----------------------------------------------------------------------------


def test_interruptible_wait_interrupted() -> None:
    def scenario(m: Machine) -> None:
        f = fence(m)
        irq = Interrupts.of(m)

        def waiter() -> int:
            try:
                f.wait(True)
            except DmaBufError as e:
                return e.errno
            return 0

        t = m.sched.spawn(waiter)
        m.sched.sleep(1.0)
        irq.send(t)
        assert t.join(5.0)
        assert t.result() == ERESTARTSYS
        assert irq.pending(t)
        assert f.pending_callbacks() == 0 and not f.is_signaled()

    explore(scenario, 40)


def test_uninterruptible_wait_ignores_interrupts() -> None:
    def scenario(m: Machine) -> None:
        f = fence(m)
        t = m.sched.spawn(f.wait_timeout, False, 10.0)
        m.sched.sleep(1.0)
        Interrupts.of(m).send(t)
        m.sched.sleep(1.0)
        assert not t.done
        f.signal()
        assert t.join(5.0)
        assert t.result() == pytest.approx(8.0)

    explore(scenario, 40)


def test_pending_signal_fails_next_interruptible_wait_until_cleared(machine: Machine) -> None:
    import threading

    irq = Interrupts.of(machine)
    me = threading.current_thread()
    irq.send(me)
    assert irq.pending()
    f = fence(machine)
    with pytest.raises(DmaBufError) as ei:
        f.wait_timeout(True, 5.0)
    assert ei.value.errno == ERESTARTSYS and str(ei.value).startswith("[ERESTARTSYS]")
    with pytest.raises(DmaBufError):
        dma_fence_wait_any_timeout([f], True, 5.0)
    assert f.wait_timeout(False, 0) == 0  # uninterruptible: unaffected
    f.signal()
    assert f.wait_timeout(True, 5.0) == 5.0  # signalled is checked first
    irq.clear()
    assert not irq.pending()
    g = fence(machine, seqno=2)
    assert g.wait_timeout(True, 0) == 0
    with pytest.raises(TypeError, match="thread"):
        irq.send("somebody")


def test_wait_any_interrupted() -> None:
    def scenario(m: Machine) -> None:
        fs = [fence(m, seqno=i) for i in range(3)]

        def waiter() -> int:
            try:
                dma_fence_wait_any_timeout(fs, True, None)
            except DmaBufError as e:
                return e.errno
            return 0

        t = m.sched.spawn(waiter)
        m.sched.sleep(1.0)
        Interrupts.of(m).send(t)
        assert t.join(5.0) and t.result() == ERESTARTSYS
        assert all(f.pending_callbacks() == 0 for f in fs)

    explore(scenario, 30)


# ---- wait_any -------------------------------------------------------------------------------


def test_wait_any_bad_input(machine: Machine) -> None:
    with pytest.raises(DmaBufError) as ei:
        dma_fence_wait_any_timeout([], False, 1.0)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        dma_fence_wait_any_timeout([fence(machine), "x"], False, 1.0)  # type: ignore[list-item]


def test_wait_any_poll_and_already_signalled(machine: Machine) -> None:
    fs = [fence(machine, seqno=i) for i in range(3)]
    assert dma_fence_wait_any_timeout(fs, False, 0) == (0.0, None)
    fs[1].signal()
    assert dma_fence_wait_any_timeout(fs, False, 0) == (1.0, 1)
    assert dma_fence_wait_any_timeout(fs, False, 7.0) == (7.0, 1)
    assert all(f.pending_callbacks() == 0 for f in fs)


def test_wait_any_controlled() -> None:
    def scenario(m: Machine) -> None:
        fs = [fence(m, seqno=i) for i in range(3)]
        assert dma_fence_wait_any_timeout(fs, False, 1.5) == (0.0, None)
        assert m.sched.now() == 1.5
        t = m.sched.spawn(lambda: (m.sched.sleep(2.0), fs[2].signal()))
        rem, idx = dma_fence_wait_any_timeout(fs, False, 10.0)
        assert idx == 2 and rem == pytest.approx(8.0)
        assert t.join(1.0)
        assert all(f.pending_callbacks() == 0 for f in fs)
        assert dma_fence_wait_any_timeout(fs, False, None) == (math.inf, 2)

    explore(scenario, 30)


# ---- lockdep annotations --------------------------------------------------------------------


def test_wait_inside_signalling_section_is_violation(machine: Machine) -> None:
    f = fence(machine)
    cookie = dma_fence_begin_signalling()
    try:
        with pytest.raises(ContractViolation, match="signalling section"):
            f.wait_timeout(False, 0)
    finally:
        dma_fence_end_signalling(cookie)
    assert f.wait_timeout(False, 0) == 0


def test_wait_under_fence_lock_is_violation(machine: Machine) -> None:
    f, g = fence(machine), fence(machine, seqno=2)
    f.lock_irqsave()
    try:
        with pytest.raises(ContractViolation, match="might_sleep"):
            g.wait_timeout(False, 0)
    finally:
        f.unlock_irqrestore()


def test_callback_that_waits_is_violation(machine: Machine) -> None:
    f, g = fence(machine), fence(machine, seqno=2)
    f.add_callback(DmaFenceCb(), lambda fe, cb: g.wait(False))
    with pytest.raises(ContractViolation):
        f.signal()
    assert f.is_signaled()


def test_recursive_fence_lock_is_violation(machine: Machine) -> None:
    f = fence(machine)
    f.lock_irqsave()
    try:
        with pytest.raises(ContractViolation, match="recursive"):
            f.lock_irqsave()
    finally:
        f.unlock_irqrestore()


# ---- flags, irq_work, trace -----------------------------------------------------------------


def test_user_bits(machine: Machine) -> None:
    f = fence(machine)
    u = DmaFenceFlag.USER_BITS
    assert f.test_and_set_bit(u) is False and f.test_and_set_bit(u) is True
    f.clear_bit(u)
    assert not f.test_bit(u)
    f.set_bit(u + 1)
    assert f.test_bit(u + 1)
    with pytest.raises(ContractViolation):
        f.clear_bit(DmaFenceFlag.SIGNALED)


def test_irq_work_deferred_until_lock_dropped(machine: Machine) -> None:
    ran: list[str] = []
    irq_work_queue(lambda: ran.append("now"))
    assert ran == ["now"]
    f = fence(machine)
    f.lock_irqsave()
    irq_work_queue(lambda: ran.append("deferred"))
    assert ran == ["now"]
    f.unlock_irqrestore()
    assert ran == ["now", "deferred"]


def test_trace_events(machine: Machine) -> None:
    ops = Recorder()
    with machine.trace.record("dma_fence") as ev:
        f = DmaFence(ops, 4, 2)
        f.enable_sw_signaling()
        f.signal()
        f.wait_timeout(False, 0)
        f.put()
    assert [e.name for e in ev] == ["dma_fence_init", "dma_fence_enable_signal",
                                    "dma_fence_signaled", "dma_fence_wait_start",
                                    "dma_fence_wait_end", "dma_fence_destroy"]
    assert ev[0].fields["driver"] == "rec-drv" and ev[0].fields["context"] == 4
    assert ev[2].fields["timeline"] == "rec-tl"  # traced before the ops detach
    assert ev[-1].fields["driver"] == "detached-driver"


def test_huge_finite_timeout_does_not_overflow(machine: Machine) -> None:
    f = fence(machine)
    t = machine.sched.spawn(f.wait_timeout, False, 1e300)
    f.signal()
    assert t.join(10.0)
    assert t.result() > 1e299
    g = fence(machine, seqno=2)
    t2 = machine.sched.spawn(dma_fence_wait_any_timeout, [g], False, 1e300)
    g.signal()
    assert t2.join(10.0) and t2.result()[1] == 0
