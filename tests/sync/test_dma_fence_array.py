"""Unit tests of dmabuf.sync.dma_fence_array: signal on all / any, errors, enable_signaling."""

from __future__ import annotations

import errno

import pytest

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.sched import explore
from dmabuf.sync.dma_fence import DmaFence, DmaFenceCb, DmaFenceOps
from dmabuf.sync.dma_fence_array import (
    PENDING_ERROR,
    DmaFenceArray,
    dma_fence_array_create,
    dma_fence_array_first,
    dma_fence_array_next,
    dma_fence_is_array,
    dma_fence_match_context,
    to_dma_fence_array,
)
from dmabuf.sync.dma_fence_chain import DmaFenceChain

OPS = DmaFenceOps("mock", "mock")


def leaves(m: Machine, n: int) -> list[DmaFence]:
    return [DmaFence(OPS, m.fence_context_alloc(1), 1, machine=m) for _ in range(n)]


def test_fields_and_names(machine: Machine) -> None:
    fs = leaves(machine, 3)
    a = dma_fence_array_create(fs, 99, 5)
    assert (a.context, a.seqno, a.num_fences, a.signal_on_any) == (99, 5, 3, False)
    assert a.fences == tuple(fs) and a.num_pending == 3
    assert (a.driver_name(), a.timeline_name()) == ("dma_fence_array", "unbound")
    assert a.LOCK_CLASS == "dma_fence_array_lock" and a.IS_CONTAINER
    assert a.error == PENDING_ERROR and a.get_status() == 0
    assert dma_fence_is_array(a) and not dma_fence_is_array(fs[0])
    assert to_dma_fence_array(a) is a and to_dma_fence_array(fs[0]) is None
    assert dma_fence_array_first(a) is fs[0] and dma_fence_array_next(a, 2) is fs[2]
    assert dma_fence_array_next(a, 3) is None and dma_fence_array_first(fs[1]) is fs[1]
    assert dma_fence_array_first(None) is None and dma_fence_array_next(fs[0], 0) is None
    a.put()


def test_signal_on_all(machine: Machine) -> None:
    fs = leaves(machine, 3)
    a = DmaFenceArray(fs, 9, 1)
    seen: list[int] = []
    assert a.add_callback(DmaFenceCb(), lambda f, cb: seen.append(f.get_status_locked())) == 0
    assert a.num_pending == 3
    fs[2].signal()
    fs[0].signal()
    assert not a.is_signaled() and a.num_pending == 1
    fs[1].signal()
    assert a.is_signaled() and seen == [1] and a.error == 0 and a.get_status() == 1


def test_signal_on_any(machine: Machine) -> None:
    fs = leaves(machine, 3)
    a = DmaFenceArray(fs, 9, 1, signal_on_any=True)
    a.enable_sw_signaling()
    fs[1].signal()
    assert a.is_signaled() and a.get_status() == 1
    fs[0].signal()
    fs[2].signal()
    assert a.num_pending == -2


def test_first_error_propagates(machine: Machine) -> None:
    fs = leaves(machine, 3)
    a = DmaFenceArray(fs, 9, 1)
    a.enable_sw_signaling()
    fs[1].set_error(-errno.EIO)
    fs[1].signal()
    fs[0].set_error(-errno.ENOMEM)
    fs[0].signal()
    assert a.error == -errno.EIO and a.get_status() == 0
    fs[2].signal()
    assert a.get_status() == -errno.EIO


def test_error_of_already_signalled_child_at_enable(machine: Machine) -> None:
    fs = leaves(machine, 2)
    fs[0].set_error(-errno.ETIME)
    fs[0].signal()
    a = DmaFenceArray(fs, 9, 1)
    a.enable_sw_signaling()
    assert not a.is_signaled() and a.error == -errno.ETIME
    fs[1].signal()
    assert a.get_status() == -errno.ETIME


def test_all_children_signalled_before_enable(machine: Machine) -> None:
    fs = leaves(machine, 2)
    for f in fs:
        f.signal()
    a = DmaFenceArray(fs, 9, 1)
    cb = DmaFenceCb()
    assert a.add_callback(cb, lambda f, c: None) == -errno.ENOENT
    assert a.is_signaled() and a.get_status() == 1 and a.error == 0


def test_peek_without_enable(machine: Machine) -> None:
    fs = leaves(machine, 2)
    a = DmaFenceArray(fs, 9, 1)
    fs[0].signal()
    assert a.is_signaled() is False
    fs[1].signal()
    assert a.is_signaled() is True and a.get_status() == 1
    any_a = DmaFenceArray(leaves(machine, 2), 9, 2, signal_on_any=True)
    any_a.fences[1].signal()
    assert any_a.is_signaled()


def test_release_puts_children(machine: Machine) -> None:
    fs = leaves(machine, 3)
    for f in fs:
        f.get()
    a = DmaFenceArray(fs, 9, 1)
    a.enable_sw_signaling()
    assert a.refcount == 4  # one per armed child callback
    for f in fs:
        f.signal()
    assert a.refcount == 1 and a.is_signaled()
    a.put()
    assert a.refcount == 0 and all(f.refcount == 1 for f in fs)


def test_bad_input(machine: Machine) -> None:
    with pytest.raises(ContractViolation, match="at least one"):
        DmaFenceArray([], 1, 1)
    with pytest.raises(TypeError):
        DmaFenceArray(["x"], 1, 1)  # type: ignore[list-item]
    inner = DmaFenceArray(leaves(machine, 1), 5, 1)
    with pytest.raises(ContractViolation, match="container"):
        DmaFenceArray([inner], 6, 1)
    chain = DmaFenceChain(None, leaves(machine, 1)[0], 1)
    with pytest.raises(ContractViolation, match="container"):
        DmaFenceArray([chain], 6, 1)
    with pytest.raises(DmaBufError):
        DmaFenceArray(leaves(machine, 1), -1, 1)


def test_match_context(machine: Machine) -> None:
    f1 = DmaFence(OPS, 4, 1)
    f2 = DmaFence(OPS, 4, 2)
    assert dma_fence_match_context(DmaFenceArray([f1, f2], 9, 1), 4)
    assert not dma_fence_match_context(DmaFenceArray([f1.get(), DmaFence(OPS, 5, 1)], 9, 2), 4)
    assert dma_fence_match_context(f1, 4) and not dma_fence_match_context(f1, 5)


class Deadline(DmaFenceOps):
    def __init__(self) -> None:
        super().__init__("d", "d")
        self.deadlines: list[float] = []

    def set_deadline(self, fence: DmaFence, deadline: float) -> None:
        self.deadlines.append(deadline)


def test_set_deadline_forwarded(machine: Machine) -> None:
    ops = Deadline()
    a = DmaFenceArray([DmaFence(ops, 1, 1), DmaFence(ops, 2, 1)], 9, 1)
    a.set_deadline(3.0)
    assert ops.deadlines == [3.0, 3.0]


def test_wait_on_array() -> None:
    def scenario(m: Machine) -> None:
        fs = leaves(m, 4)
        a = DmaFenceArray(fs, m.fence_context_alloc(1), 1)
        t = m.sched.spawn(a.wait_timeout, False, 10.0)
        for i, f in enumerate(fs):
            m.sched.sleep(1.0)
            if i == 2:
                f.set_error(-errno.EIO)
            f.signal()
        assert t.join(1.0) and t.result() == pytest.approx(6.0)
        assert a.get_status() == -errno.EIO and a.refcount == 1

    explore(scenario, 30)
