"""Property tests of dmabuf.sync.dma_resv against a reference model (spec §10, I-R1..I-R5).

The reference (:class:`RefResv`) is a plain list of ``[key, usage]`` entries written from the
specification text of ``dma_resv_add_fence`` / ``dma_resv_reserve_fences`` /
``dma_resv_reset_max_fences``; it knows fences only by their ``(context, seqno)`` key and keeps
its own set of signalled keys. After any sequence of locked batches (reserve, adds with random
contexts / seqnos / usages, re-adds of the same fence) and signals, the model must return, for
each usage U, exactly the reference's unsignalled fences of usage <= U, in list order — and
satisfy the invariants:

* I-R1: right after ``add_fence(f, u)`` no unsignalled entry scanned before f's slot has f's
  context, a usage >= u and a fence f is later than or equal to;
* I-R2: ``num_fences <= max_fences``; an add without a reserved slot raises ContractViolation;
* I-R3: the unlocked iterator yields only unsignalled fences of usage <= U;
* I-R4: ``test_signaled(U)`` ⇔ ``get_fences(U) == []`` ⇔ ``wait_timeout(U, _, 0) == 1``;
* I-R5: fences(KERNEL) ⊆ fences(WRITE) ⊆ fences(READ) ⊆ fences(BOOKKEEP).

At the end ``fini()`` must leave every fence with only the test's own reference (no leak, no
extra put).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dmabuf.errors import ContractViolation
from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps
from dmabuf.sync.dma_resv import DmaResv, DmaResvUsage, kmalloc_size_roundup

OPS = DmaFenceOps("prop", "prop")
USAGES = list(DmaResvUsage)
Key = tuple[int, int]


class RefResv:
    """Reference model of one reservation object's fence list (debug mode)."""

    def __init__(self) -> None:
        self.entries: list[list] = []  # [key, usage]
        self.max: int | None = None  # None: no list allocated yet
        self.signalled: set[Key] = set()

    @staticmethod
    def capacity(n: int) -> int:
        return (kmalloc_size_roundup(24 + 8 * n) - 24) // 8

    def reserve(self, n: int) -> None:
        if self.max:  # a list with a non-zero capacity
            if len(self.entries) + n <= self.max:
                return
            new = max(len(self.entries) + n, 2 * self.max)
        else:
            new = max(4, 1 << max(0, (n - 1).bit_length()))
        self.max = self.capacity(new)
        self.entries = [e for e in self.entries if e[0] not in self.signalled]

    def add(self, key: Key, usage: DmaResvUsage) -> int:
        """Returns the index the fence went to."""
        for i, (k, u) in enumerate(self.entries):
            # one fence object per key, small seqnos (no wrap-around): "is_later_or_same" is
            # a plain >= on the seqno
            if (k[0] == key[0] and u >= usage and key[1] >= k[1]) or k in self.signalled:
                self.entries[i] = [key, usage]
                return i
        assert self.max is not None and len(self.entries) < self.max
        self.entries.append([key, usage])
        return len(self.entries) - 1

    def unlock(self) -> None:
        if self.max is not None:
            self.max = len(self.entries)

    def slots(self) -> int:
        return 0 if self.max is None else self.max - len(self.entries)

    def fences(self, usage: DmaResvUsage) -> list[Key]:
        return [k for k, u in self.entries if u <= usage and k not in self.signalled]


def key_of(f: DmaFence) -> Key:
    return (f.context, f.seqno)


def check_against_reference(resv: DmaResv, ref: RefResv) -> None:
    """Equality with the reference plus I-R2..I-R5 (quiescent state)."""
    assert resv.num_fences == len(ref.entries)
    assert resv.num_fences <= resv.max_fences  # I-R2
    if ref.max is not None:
        assert resv.max_fences == ref.max
    previous: set[Key] = set()
    for usage in USAGES:
        got = resv.get_fences(usage)
        keys = [key_of(f) for f in got]
        for f in got:
            f.put()
        assert keys == ref.fences(usage), f"usage {usage.name}"
        # I-R3: the unlocked iterator yields only unsignalled fences of usage <= U
        walked = list(resv.for_each_fence_unlocked(usage))
        assert all(u <= usage and not f.test_signaled_flag() for f, u in walked)
        assert [key_of(f) for f, _ in walked] == keys
        # I-R4
        none = not keys
        assert resv.test_signaled(usage) is none
        assert (resv.wait_timeout(usage, False, 0) == 1) is none
        # I-R5
        assert previous <= set(keys)
        previous = set(keys)


def check_ir1(resv: DmaResv, f: DmaFence, usage: DmaResvUsage) -> None:
    """I-R1 for the entries scanned before f's slot."""
    for g, v in resv.for_each_fence(DmaResvUsage.BOOKKEEP):
        if g is f and v == usage:
            return
        if not g.test_signaled_flag():
            assert not (g.context == f.context and v >= usage and f.is_later_or_same(g)), \
                f"I-R1: {g!r}/{v.name} should have been replaced by {f!r}/{usage.name}"
    raise AssertionError(f"{f!r} with usage {usage.name} not found after add_fence")


# ---------------------------------------------------------------------------------------------
# sequences of batches
# ---------------------------------------------------------------------------------------------

add_st = st.tuples(st.integers(1, 3), st.integers(1, 6), st.sampled_from(USAGES))
batch_st = st.tuples(st.integers(0, 4), st.lists(add_st, max_size=4),
                     st.lists(st.integers(0, 50), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(batch_st, max_size=10))
def test_resv_matches_reference(batches: list[tuple[int, list, list[int]]]) -> None:
    with Machine(debug=True, name="prop"):
        resv = DmaResv()
        ref = RefResv()
        fences: dict[Key, DmaFence] = {}
        for reserve, adds, signals in batches:
            resv.lock()
            resv.reserve_fences(reserve)
            ref.reserve(reserve)
            for ctx, seqno, usage in adds:
                f = fences.get((ctx, seqno))
                if f is None:
                    f = fences[(ctx, seqno)] = DmaFence(OPS, ctx, seqno)
                if ref.slots() == 0 and not any(
                        k in ref.signalled or (k[0] == ctx and u >= usage and seqno >= k[1])
                        for k, u in ref.entries):
                    with pytest.raises(ContractViolation):  # I-R2: no reserved slot
                        resv.add_fence(f, usage)
                    continue
                resv.add_fence(f, usage)
                ref.add((ctx, seqno), usage)
                check_ir1(resv, f, usage)
            resv.unlock()
            ref.unlock()
            keys = sorted(fences)
            for i in signals:
                if keys:
                    k = keys[i % len(keys)]
                    fences[k].signal()
                    ref.signalled.add(k)
            check_against_reference(resv, ref)
        resv.fini()
        assert all(f.refcount == 1 for f in fences.values())


# ---------------------------------------------------------------------------------------------
# a state machine: lock / reserve / add / signal / unlock in any order
# ---------------------------------------------------------------------------------------------


class ResvMachine(RuleBasedStateMachine):
    """The reservation object driven rule by rule, checked against RefResv after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.m = Machine(debug=True, name="resv-sm")
        self.m.__enter__()
        self.resv = DmaResv()
        self.ref = RefResv()
        self.fences: dict[Key, DmaFence] = {}
        self.locked = False

    def teardown(self) -> None:
        if self.locked:
            self.resv.unlock()
        self.resv.fini()
        assert all(f.refcount == 1 for f in self.fences.values())
        self.m.__exit__(None, None, None)

    @precondition(lambda self: not self.locked)
    @rule()
    def lock(self) -> None:
        self.resv.lock()
        self.locked = True

    @precondition(lambda self: self.locked)
    @rule()
    def unlock(self) -> None:
        self.resv.unlock()
        self.ref.unlock()
        self.locked = False

    @precondition(lambda self: self.locked)
    @rule(n=st.integers(0, 6))
    def reserve(self, n: int) -> None:
        self.resv.reserve_fences(n)
        self.ref.reserve(n)

    def _fence(self, ctx: int, seqno: int) -> DmaFence:
        f = self.fences.get((ctx, seqno))
        if f is None:
            f = self.fences[(ctx, seqno)] = DmaFence(OPS, ctx, seqno)
        return f

    def _would_replace(self, ctx: int, seqno: int, usage: DmaResvUsage) -> bool:
        return any(k in self.ref.signalled or (k[0] == ctx and u >= usage and seqno >= k[1])
                   for k, u in self.ref.entries)

    @precondition(lambda self: self.locked)
    @rule(ctx=st.integers(1, 3), seqno=st.integers(1, 5), usage=st.sampled_from(USAGES))
    def add(self, ctx: int, seqno: int, usage: DmaResvUsage) -> None:
        f = self._fence(ctx, seqno)
        if self.ref.slots() == 0 and not self._would_replace(ctx, seqno, usage):
            with pytest.raises(ContractViolation):
                self.resv.add_fence(f, usage)
            return
        self.resv.add_fence(f, usage)
        self.ref.add((ctx, seqno), usage)
        check_ir1(self.resv, f, usage)

    @rule(i=st.integers(0, 100))
    def signal(self, i: int) -> None:
        if self.fences:
            keys = sorted(self.fences)
            k = keys[i % len(keys)]
            self.fences[k].signal()
            self.ref.signalled.add(k)

    @precondition(lambda self: not self.locked)
    @rule()
    def add_unlocked_is_refused(self) -> None:
        with pytest.raises(ContractViolation, match="dma_resv_assert_held"):
            self.resv.add_fence(self._fence(1, 1), DmaResvUsage.READ)

    @invariant()
    def matches_reference(self) -> None:
        check_against_reference(self.resv, self.ref)


ResvMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                         deadline=None)
TestResvMachine = ResvMachine.TestCase
