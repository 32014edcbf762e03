"""Lockdep-lite: held locks, ordering, assertions, fence-signalling sections."""

from __future__ import annotations

import pytest

from dmabuf.debug import RESV_CLASS, LockTracker
from dmabuf.errors import ContractViolation


class L:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def test_held_and_release() -> None:
    t = LockTracker()
    a, b = L("a"), L("b")
    t.acquire(a, "A")
    t.acquire(b, "B")
    assert [h.cls for h in t.held()] == ["A", "B"]
    t.assert_held(a)
    t.release(a, "A")
    assert [h.cls for h in t.held()] == ["B"]
    with pytest.raises(ContractViolation, match="lockdep_bad_unlock_balance"):
        t.release(a, "A")


def test_circular_dependency_detected() -> None:
    t = LockTracker()
    a, b = L("a"), L("b")
    t.acquire(a, "A")
    t.acquire(b, "B")
    t.release(b)
    t.release(a)
    t.acquire(b, "B")
    with pytest.raises(ContractViolation, match="lockdep_circular_locking"):
        t.acquire(a, "A")
    assert len(t.violations) == 1


def test_same_class_needs_common_ww_ctx() -> None:
    t = LockTracker()
    x, y, ctx = L("x"), L("y"), object()
    t.acquire(x, RESV_CLASS, ctx=ctx)
    t.acquire(y, RESV_CLASS, ctx=ctx)
    t.release(y)
    with pytest.raises(ContractViolation, match="lockdep_nesting"):
        t.acquire(y, RESV_CLASS)


def test_recursive_locking() -> None:
    t = LockTracker()
    a = L("a")
    t.acquire(a, "A")
    with pytest.raises(ContractViolation, match="recursive"):
        t.acquire(a, "A")


def test_assert_not_held_and_might_sleep() -> None:
    t = LockTracker()
    a, s = L("a"), L("spin")
    t.acquire(a, "A")
    with pytest.raises(ContractViolation, match="must NOT be held"):
        t.assert_not_held(a)
    t.acquire(s, "fence_lock", spin=True)
    with pytest.raises(ContractViolation, match="might_sleep"):
        t.might_sleep("mutex_lock")


def test_wait_inside_signalling_section() -> None:
    t = LockTracker()
    c = t.begin_signalling()
    assert t.in_signalling()
    with pytest.raises(ContractViolation, match="dma_fence_begin_signalling"):
        t.might_wait_fence()
    t.end_signalling(c)
    assert not t.in_signalling()
    t.might_wait_fence()  # fine outside


def test_resv_lock_inside_signalling_section_is_primed() -> None:
    """dma_resv_lockdep() primes: fences are waited for under the resv lock."""
    t = LockTracker()
    c = t.begin_signalling()
    with pytest.raises(ContractViolation, match="inside a fence-signalling section"):
        t.acquire(L("resv"), RESV_CLASS)
    t.end_signalling(c)


def test_inverse_order_lock_in_signalling_then_wait_under_it() -> None:
    t = LockTracker()
    a = L("a")
    c = t.begin_signalling()
    t.acquire(a, "driver_lock")
    t.release(a)
    t.end_signalling(c)
    t.acquire(a, "driver_lock")
    with pytest.raises(ContractViolation, match="taken inside fence-signalling"):
        t.might_wait_fence()


def test_unbalanced_end_signalling() -> None:
    t = LockTracker()
    with pytest.raises(ContractViolation, match="unbalanced"):
        t.end_signalling(1)


def test_disabled_tracker_checks_nothing() -> None:
    t = LockTracker(enabled=False)
    a = L("a")
    t.release(a)
    t.assert_held(a)
    c = t.begin_signalling()
    t.might_wait_fence()
    t.end_signalling(c)
    assert t.held() == [] and t.violations == []
