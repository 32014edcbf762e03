"""Unit tests of dmabuf.sync.dma_fence_unwrap beyond the kernel selftest."""

from __future__ import annotations

import pytest

from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps, dma_fence_get_stub
from dmabuf.sync.dma_fence_array import DmaFenceArray
from dmabuf.sync.dma_fence_chain import DmaFenceChain
from dmabuf.sync.dma_fence_unwrap import (
    dma_fence_dedup_array,
    dma_fence_unwrap_for_each,
    dma_fence_unwrap_merge,
)

OPS = DmaFenceOps("mock", "mock")


def test_merge_all_signalled_gives_private_stub_with_latest_timestamp(machine: Machine) -> None:
    a = DmaFence(OPS, 5, 1)
    b = DmaFence(OPS, 6, 1)
    a.signal_timestamp(3.0)
    b.signal_timestamp(7.5)
    m = dma_fence_unwrap_merge(a, b)
    assert m is not a and m is not b
    assert (m.context, m.seqno, m.is_signaled(), m.timestamp) == (0, 0, True, 7.5)
    assert m.refcount == 1
    stub = dma_fence_get_stub()
    m2 = dma_fence_unwrap_merge(stub, a)
    assert m2 is not stub and m2.timestamp == stub.timestamp  # the stub's is the latest


def test_merge_single_unsignalled_returns_it(machine: Machine) -> None:
    a = DmaFence(OPS, 5, 1)
    s = DmaFence(OPS, 6, 1)
    s.signal()
    m = dma_fence_unwrap_merge(a, s)
    assert m is a and a.refcount == 2


def test_merge_same_context_keeps_later(machine: Machine) -> None:
    early, late = DmaFence(OPS, 5, 10), DmaFence(OPS, 5, 11)
    assert dma_fence_unwrap_merge(late, early) is late
    other = DmaFence(OPS, 3, 1)
    m = dma_fence_unwrap_merge(early, other, late)
    assert isinstance(m, DmaFenceArray) and m.fences == (other, late)
    assert m.seqno == 1 and m.context >= 1 and not m.signal_on_any
    assert early.refcount == 1  # the dropped duplicate's extra reference was put


def test_merge_type_errors(machine: Machine) -> None:
    with pytest.raises(TypeError):
        dma_fence_unwrap_merge()
    with pytest.raises(TypeError):
        dma_fence_unwrap_merge(DmaFence(OPS, 1, 1), "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        list(dma_fence_unwrap_for_each("x"))  # type: ignore[arg-type]


def test_unwrap_skips_signalled_chain_nodes(machine: Machine) -> None:
    f1, f2, f3 = (DmaFence(OPS, machine.fence_context_alloc(1), 1) for _ in range(3))
    c = DmaFenceChain(DmaFenceChain(DmaFenceChain(None, f1, 1), f2, 2), f3, 3)
    f2.signal()
    assert list(dma_fence_unwrap_for_each(c)) == [f3, f1]  # node 2 garbage-collected


def test_unwrap_plain_fence_and_refcounts(machine: Machine) -> None:
    f = DmaFence(OPS, 1, 1)
    assert list(dma_fence_unwrap_for_each(f)) == [f] and f.refcount == 1
    gen = dma_fence_unwrap_for_each(f)
    next(gen)
    assert f.refcount == 2
    gen.close()
    assert f.refcount == 1


def test_dedup_array(machine: Machine) -> None:
    a1, a2, b1 = DmaFence(OPS, 2, 1), DmaFence(OPS, 2, 2), DmaFence(OPS, 1, 9)
    out = dma_fence_dedup_array([a1, b1, a2])
    assert out == [b1, a2] and a1.refcount == 0
    assert dma_fence_dedup_array([]) == []
