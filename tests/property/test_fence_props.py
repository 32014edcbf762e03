"""Property tests of dmabuf.sync.dma_fence against the invariants of spec §10 (I-F1..I-F6).

A hypothesis state machine drives a handful of fences, each with a different kind of ops
(names only; with ``release``; with a custom ``wait``; with ``enable_signaling`` that may report
the fence as already passed), through random sequences of add/remove callback, set_error,
enable, wait(0), status queries, peeks and signals, and checks after every step:

* I-F1: SIGNALED is never cleared; callbacks registered before the signal ran exactly once, in
  registration order, during the first signal; a callback whose add failed (-ENOENT) never runs;
  a removed callback never runs;
* I-F2: a non-zero error was set before SIGNALED (set_error after signal is refused);
  ``get_status() == 0`` ⇔ not signalled, and otherwise ``error or 1``;
* I-F3: ``enable_signaling`` is called at most once per fence, and never once the fence was
  seen signalled;
* I-F4: ``wait_timeout(f, _, 0)`` is 1 on a signalled fence, 0 (without blocking) otherwise;
* I-F5: after the signal, ``ops is None`` unless the ops define ``release`` or ``wait``;
* I-F6 (separate ``@given`` tests): ``is_later`` is antisymmetric within a context, matches
  the 64-bit or 32-bit wrap-around order, and is refused across contexts.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dmabuf.errors import ContractViolation
from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import DmaFence, DmaFenceCb, DmaFenceFlag, DmaFenceOps

N_FENCES = 4
ERRNOS = [-errno.EIO, -errno.ENOMEM, -errno.ETIME, -errno.ECANCELED]


class NamesOnly(DmaFenceOps):
    def __init__(self) -> None:
        super().__init__("p", "names")


class WithRelease(DmaFenceOps):
    def __init__(self) -> None:
        super().__init__("p", "release")

    def release(self, fence: DmaFence) -> None:
        pass


class WithWait(DmaFenceOps):
    def __init__(self) -> None:
        super().__init__("p", "wait")

    def wait(self, fence: DmaFence, intr: bool, timeout: float) -> float:
        return fence._default_wait(intr, timeout)


class WithEnable(DmaFenceOps):
    """enable_signaling that records its calls and may say "already passed"."""

    def __init__(self, result: bool) -> None:
        super().__init__("p", "enable")
        self.result = result
        self.calls: list[bool] = []  # was SIGNALED set when called?

    def enable_signaling(self, fence: DmaFence) -> bool:
        self.calls.append(fence.test_signaled_flag())
        return self.result


class FenceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Machine(debug=True, name="props")
        self.ops: list[DmaFenceOps] = [NamesOnly(), WithRelease(), WithWait(),
                                       WithEnable(True), WithEnable(False)][:N_FENCES + 1]
        self.fences = [DmaFence(o, 1, i + 1, machine=self.m) for i, o in enumerate(self.ops)]
        n = len(self.fences)
        self.ran: list[list[int]] = [[] for _ in range(n)]      # callback ids, in run order
        self.queued: list[list[int]] = [[] for _ in range(n)]   # model of the cb list
        self.cbs: dict[int, DmaFenceCb] = {}
        self.rejected: set[int] = set()                          # add returned -ENOENT
        self.removed: set[int] = set()
        self.expected_run: list[list[int]] = [[] for _ in range(n)]
        self.signalled = [False] * n
        self.seen_signalled = [False] * n
        self.error = [0] * n
        self.next_id = 0

    fence_idx = st.integers(0, 4)

    def _sync_signal(self, i: int) -> None:
        """Record a signal the model now expects to have happened."""
        if not self.signalled[i]:
            self.signalled[i] = True
            self.expected_run[i] = list(self.queued[i])
            self.queued[i] = []

    def _observe(self, i: int) -> None:
        f = self.fences[i]
        if f.test_signaled_flag():
            self._sync_signal(i)
            self.seen_signalled[i] = True

    @rule(i=fence_idx)
    def add_callback(self, i: int) -> None:
        cid = self.next_id
        self.next_id += 1
        cb = DmaFenceCb()
        self.cbs[cid] = cb
        was = self.fences[i].test_signaled_flag()
        ret = self.fences[i].add_callback(cb, lambda f, c, cid=cid, i=i: self.ran[i].append(cid))
        self._observe(i)
        if ret == 0:
            assert not was
            self.queued[i].append(cid)
        else:
            assert ret == -errno.ENOENT
            assert self.fences[i].test_signaled_flag()
            self.rejected.add(cid)

    @rule(i=fence_idx, data=st.data())
    def remove_callback(self, i: int, data: st.DataObject) -> None:
        if not self.queued[i]:
            return
        cid = data.draw(st.sampled_from(self.queued[i]))
        assert self.fences[i].remove_callback(self.cbs[cid]) is True
        self.queued[i].remove(cid)
        self.removed.add(cid)

    @rule(i=fence_idx, err=st.sampled_from(ERRNOS))
    def set_error(self, i: int, err: int) -> None:
        f = self.fences[i]
        if f.test_signaled_flag():
            with pytest.raises(ContractViolation):
                f.set_error(err)
        else:
            f.set_error(err)
            self.error[i] = err

    @rule(i=fence_idx)
    def enable(self, i: int) -> None:
        self.fences[i].enable_sw_signaling()
        self._observe(i)

    @rule(i=fence_idx)
    def signal(self, i: int) -> None:
        self.fences[i].signal()
        self._sync_signal(i)
        self.seen_signalled[i] = True

    @rule(i=fence_idx)
    def check_and_signal(self, i: int) -> None:
        was = self.fences[i].test_signaled_flag()
        assert self.fences[i].check_and_signal() is was
        self._sync_signal(i)
        self.seen_signalled[i] = True

    @rule(i=fence_idx)
    def wait_zero(self, i: int) -> None:
        f = self.fences[i]
        ret = f.wait_timeout(False, 0)  # I-F4: never blocks
        self._observe(i)
        assert ret == (1 if f.test_signaled_flag() else 0)

    @rule(i=fence_idx)
    def status(self, i: int) -> None:
        st_ = self.fences[i].get_status()
        self._observe(i)
        if self.signalled[i]:
            assert st_ == (self.error[i] or 1)
        else:
            assert st_ == 0

    @invariant()
    def fence_invariants(self) -> None:
        for i, f in enumerate(self.fences):
            self._observe(i)
            # I-F1: never cleared; exactly-once, FIFO, no rejected/removed callbacks
            if self.signalled[i]:
                assert f.test_signaled_flag() and f.test_bit(DmaFenceFlag.TIMESTAMP)
                assert self.ran[i] == self.expected_run[i]
            else:
                assert self.ran[i] == []
            assert not (set(self.ran[i]) & (self.rejected | self.removed))
            # I-F2
            assert f.error == self.error[i]
            # I-F3
            ops = self.ops[i]
            if isinstance(ops, WithEnable):
                assert len(ops.calls) <= 1 and ops.calls in ([], [False])
            # I-F5
            if f.test_signaled_flag():
                keeps = isinstance(ops, (WithRelease, WithWait))
                assert (f.ops is ops) if keeps else (f.ops is None)
            else:
                assert f.ops is ops


FenceMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=25,
                                          deadline=None)
test_fence_state_machine = FenceMachine.TestCase


U64 = st.integers(0, (1 << 64) - 1)


@settings(max_examples=300, deadline=None)
@given(a=U64, b=U64, seqno64=st.booleans())
def test_is_later_antisymmetric_and_ordered(a: int, b: int, seqno64: bool) -> None:
    """I-F6: antisymmetry; the 64-bit compare, or the signed 32-bit difference."""
    m = Machine(debug=True)
    mk = DmaFence.init64 if seqno64 else DmaFence
    ops = DmaFenceOps("p", "p")
    fa, fb = mk(ops, 3, a, machine=m), mk(ops, 3, b, machine=m)
    ab, ba = fa.is_later(fb), fb.is_later(fa)
    assert not (ab and ba)
    if seqno64:
        assert ab == (a > b) and ba == (b > a)
    else:
        d = ((a & 0xFFFFFFFF) - (b & 0xFFFFFFFF)) & 0xFFFFFFFF
        assert ab == (0 < d < 1 << 31)
        if d not in (0, 1 << 31):
            assert ab != ba  # total within the 2**31 window
    assert fa.is_later_or_same(fa) and not fa.is_later(fa)


@settings(max_examples=100, deadline=None)
@given(c1=st.integers(0, 1000), c2=st.integers(0, 1000), s=U64)
def test_is_later_only_within_a_context(c1: int, c2: int, s: int) -> None:
    """I-F6: comparing fences of different contexts is a contract violation."""
    m = Machine(debug=True)
    ops = DmaFenceOps("p", "p")
    fa, fb = DmaFence(ops, c1, s, machine=m), DmaFence(ops, c2, s, machine=m)
    if c1 == c2:
        assert fa.is_later(fb) is False
    else:
        with pytest.raises(ContractViolation):
            fa.is_later(fb)
