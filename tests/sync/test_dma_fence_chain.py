"""Unit tests of dmabuf.sync.dma_fence_chain: context/seqno rules, walk GC, release, bad input."""

from __future__ import annotations

import errno

import pytest

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import DmaFence, DmaFenceFlag, DmaFenceOps
from dmabuf.sync.dma_fence_array import DmaFenceArray
from dmabuf.sync.dma_fence_chain import (
    DmaFenceChain,
    dma_fence_chain_contained,
    dma_fence_chain_find_seqno,
    dma_fence_chain_for_each,
    dma_fence_chain_init,
    dma_fence_chain_walk,
    dma_fence_is_chain,
    to_dma_fence_chain,
)

OPS = DmaFenceOps("mock", "mock")


def leaf(m: Machine) -> DmaFence:
    return DmaFence(OPS, m.fence_context_alloc(1), 1, machine=m)


def test_new_chain_fields(machine: Machine) -> None:
    f = leaf(machine)
    c = dma_fence_chain_init(None, f, 5)
    assert c.seqno == 5 and c.prev is None and c.fence is f and c.prev_seqno == 0
    assert c.test_bit(DmaFenceFlag.SEQNO64)
    assert (c.driver_name(), c.timeline_name()) == ("dma_fence_chain", "unbound")
    assert c.LOCK_CLASS == "dma_fence_chain_lock" and c.IS_CONTAINER
    assert dma_fence_is_chain(c) and not dma_fence_is_chain(f) and not dma_fence_is_chain(None)
    assert to_dma_fence_chain(c) is c and to_dma_fence_chain(f) is None
    assert dma_fence_chain_contained(c) is f and dma_fence_chain_contained(f) is f
    assert c.contained() is f


def test_context_reused_when_later(machine: Machine) -> None:
    c1 = DmaFenceChain(None, leaf(machine), 1)
    c2 = DmaFenceChain(c1, leaf(machine), 2)
    assert c2.context == c1.context and c2.prev_seqno == 1 and c2.seqno == 2


def test_new_context_and_max_seqno_when_not_later(machine: Machine) -> None:
    c1 = DmaFenceChain(None, leaf(machine), 10)
    c2 = DmaFenceChain(c1, leaf(machine), 3)
    assert c2.context != c1.context and c2.seqno == 10 and c2.prev_seqno == 0
    c3 = DmaFenceChain(c2, leaf(machine), 10)  # same seqno: not later either
    assert c3.context != c2.context and c3.seqno == 10


def test_plain_prev_gets_new_context_and_keeps_seqno(machine: Machine) -> None:
    p = DmaFence(OPS, 7, 100)
    c = DmaFenceChain(p, leaf(machine), 3)
    assert c.context != 7 and c.seqno == 3 and c.prev_seqno == 0


def test_seqno64_compare_for_context_reuse(machine: Machine) -> None:
    c1 = DmaFenceChain(None, leaf(machine), 0xFFFFFFFF)
    c2 = DmaFenceChain(c1, leaf(machine), 0x1_00000000)  # later in 64 bits
    assert c2.context == c1.context and c2.prev_seqno == 0xFFFFFFFF


def test_bad_input(machine: Machine) -> None:
    c = DmaFenceChain(None, leaf(machine), 1)
    with pytest.raises(ContractViolation, match="prev only"):
        DmaFenceChain(None, c, 2)
    with pytest.raises(TypeError):
        DmaFenceChain(None, "fence", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        DmaFenceChain("prev", leaf(machine), 1)  # type: ignore[arg-type]
    with pytest.raises(DmaBufError):
        DmaFenceChain(None, leaf(machine), -1)


def test_find_seqno_errors(machine: Machine) -> None:
    f = leaf(machine)
    with pytest.raises(DmaBufError) as ei:
        dma_fence_chain_find_seqno(f, 1)
    assert ei.value.errno == errno.EINVAL and f.refcount == 1
    assert dma_fence_chain_find_seqno(f, 0) is f  # seqno 0: no-op
    c = DmaFenceChain(None, leaf(machine), 4)
    with pytest.raises(DmaBufError, match="not reached"):
        dma_fence_chain_find_seqno(c, 5)
    assert c.refcount == 1


def test_walk_garbage_collects_signalled_nodes(machine: Machine) -> None:
    fs = [leaf(machine) for _ in range(4)]
    chains: list[DmaFenceChain] = []
    tail: DmaFenceChain | None = None
    for i, f in enumerate(fs):
        tail = DmaFenceChain(tail.get() if tail else None, f.get(), i + 1)
        chains.append(tail)
    assert tail is not None
    fs[1].signal()
    fs[2].signal()
    nxt = dma_fence_chain_walk(tail.get())
    assert nxt is chains[0]  # nodes 2 and 3 collected
    assert tail.prev is chains[0]
    assert nxt is not None
    nxt.put()
    fs[0].signal()
    assert dma_fence_chain_walk(tail.get()) is None and tail.prev is None
    assert dma_fence_chain_walk(fs[3].get()) is None  # not a chain: put, NULL


def test_for_each_yields_nodes_and_releases(machine: Machine) -> None:
    a = DmaFence(OPS, 3, 1)
    c1 = DmaFenceChain(a, leaf(machine), 1)
    c2 = DmaFenceChain(c1, leaf(machine), 2)
    seen = list(dma_fence_chain_for_each(c2))
    assert seen == [c2, c1, a]
    assert c2.refcount == 1 and c1.refcount == 1 and a.refcount == 1
    gen = dma_fence_chain_for_each(c2)
    assert next(gen) is c2 and c2.refcount == 2  # the iterator's reference
    gen.close()  # breaking out early drops it
    assert c2.refcount == 1


def test_chain_signal_waits_for_earlier_points(machine: Machine) -> None:
    f1, f2 = leaf(machine), leaf(machine)
    c1 = DmaFenceChain(None, f1.get(), 1)
    c2 = DmaFenceChain(c1.get(), f2.get(), 2)
    c2.enable_sw_signaling()
    f2.signal()
    assert not c2.test_signaled_flag() and not c2.is_signaled()
    f1.signal()
    assert c2.test_signaled_flag()  # signalled by the re-armed callback (irq_work)
    assert c2.get_status() == 1


def test_chain_does_not_propagate_errors(machine: Machine) -> None:
    f = leaf(machine)
    c = DmaFenceChain(None, f.get(), 1)
    c.enable_sw_signaling()
    f.set_error(-errno.EIO)
    f.signal()
    assert c.test_signaled_flag() and c.get_status() == 1


def test_chain_of_arrays_signals(machine: Machine) -> None:
    fs = [leaf(machine) for _ in range(4)]
    a1 = DmaFenceArray([fs[0].get(), fs[1].get()], machine.fence_context_alloc(1), 1)
    a2 = DmaFenceArray([fs[2].get(), fs[3].get()], machine.fence_context_alloc(1), 1)
    c1 = DmaFenceChain(None, a1, 1)
    c2 = DmaFenceChain(c1, a2, 2)
    c2.enable_sw_signaling()
    for f in reversed(fs):
        assert not c2.test_signaled_flag()
        f.signal()
    assert c2.test_signaled_flag()
    c2.put()
    assert all(f.refcount == 1 for f in fs)


def test_long_chain_release_is_iterative(machine: Machine) -> None:
    tail: DmaFenceChain | None = None
    fences = []
    for i in range(5000):  # deeper than Python's recursion limit
        f = leaf(machine)
        fences.append(f)
        tail = DmaFenceChain(tail, f.get(), i + 1)
    assert tail is not None
    tail.put()
    assert all(f.refcount == 1 for f in fences)
