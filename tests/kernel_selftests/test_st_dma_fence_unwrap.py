"""Port of drivers/dma-buf/st-dma-fence-unwrap.c (KUnit suite ``dma-buf-fence-unwrap``).

Helpers as in the kernel file: ``__mock_fence(ctx, seqno)`` (names-only ops), ``mock_fence()``
on a fresh context with seqno 1, ``mock_array(f…)`` = ``dma_fence_array_create(n, fences,
new context, 1, false)`` consuming the references, ``mock_chain(prev, f)`` =
``dma_fence_chain_init(chain, prev, f, 1)`` consuming them too. Every test enables sw signalling
on its base fences.
"""

from __future__ import annotations

from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps, dma_fence_get_stub
from dmabuf.sync.dma_fence_array import DmaFenceArray
from dmabuf.sync.dma_fence_chain import DmaFenceChain
from dmabuf.sync.dma_fence_unwrap import dma_fence_unwrap_for_each, dma_fence_unwrap_merge

MOCK_OPS = DmaFenceOps("mock", "mock")


def __mock_fence(m: Machine, context: int, seqno: int) -> DmaFence:
    f = DmaFence(MOCK_OPS, context, seqno, machine=m)
    f.enable_sw_signaling()
    return f


def mock_fence(m: Machine) -> DmaFence:
    return __mock_fence(m, m.fence_context_alloc(1), 1)


def mock_array(m: Machine, *fences: DmaFence) -> DmaFenceArray:
    return DmaFenceArray(list(fences), m.fence_context_alloc(1), 1, False)


def mock_chain(prev: DmaFence | None, fence: DmaFence) -> DmaFenceChain:
    return DmaFenceChain(prev, fence, 1)


def unwrapped(f: DmaFence) -> list[DmaFence]:
    return list(dma_fence_unwrap_for_each(f))


def test_sanitycheck(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_sanitycheck(): f → array(1, f) → chain(NULL, array); put."""
    f = mock_fence(machine)
    array = mock_array(machine, f)
    chain = mock_chain(None, array)
    assert unwrapped(chain) == [f]
    chain.put()
    assert chain.refcount == 0 and array.refcount == 0 and f.refcount == 0


def test_unwrap_array(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_unwrap_array(): array(f1, f2) yields exactly f1 and f2."""
    f1, f2 = mock_fence(machine), mock_fence(machine)
    array = mock_array(machine, f1, f2)
    seen = unwrapped(array)
    assert sorted(map(id, seen)) == sorted([id(f1), id(f2)]), "Unexpected or missing fences"
    assert len(seen) == 2
    array.put()


def test_unwrap_chain(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_unwrap_chain(): chain(f1, f2) yields exactly f1 and f2."""
    f1, f2 = mock_fence(machine), mock_fence(machine)
    chain = mock_chain(f1, f2)
    seen = unwrapped(chain)
    assert len(seen) == 2 and {id(x) for x in seen} == {id(f1), id(f2)}
    chain.put()


def test_unwrap_chain_array(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_unwrap_chain_array(): chain(NULL, array(f1, f2))."""
    f1, f2 = mock_fence(machine), mock_fence(machine)
    chain = mock_chain(None, mock_array(machine, f1, f2))
    seen = unwrapped(chain)
    assert len(seen) == 2 and {id(x) for x in seen} == {id(f1), id(f2)}
    chain.put()


def test_unwrap_merge(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_unwrap_merge(): merge(f1, f2) yields exactly f1 and f2."""
    f1, f2 = mock_fence(machine), mock_fence(machine)
    f3 = dma_fence_unwrap_merge(f1, f2)
    assert f3 is not None
    assert unwrapped(f3) == [f1, f2]
    f3.put()
    f2.put()
    f1.put()
    assert f1.refcount == 0 and f2.refcount == 0


def test_unwrap_merge_duplicate(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_unwrap_merge_duplicate(): merge(f1, f1) yields only f1."""
    f1 = mock_fence(machine)
    f2 = dma_fence_unwrap_merge(f1, f1)
    assert unwrapped(f2) == [f1]
    assert f2 is f1  # one unsignalled leaf after dedup: the fence itself
    f2.put()
    f1.put()
    assert f1.refcount == 0


def test_unwrap_merge_seqno(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_unwrap_merge_seqno(): f3 then f2; f1 (older, ctx1) dropped."""
    ctx0 = machine.fence_context_alloc(1)
    ctx1 = machine.fence_context_alloc(1)
    f1 = __mock_fence(machine, ctx1, 1)
    f2 = __mock_fence(machine, ctx1, 2)
    f3 = __mock_fence(machine, ctx0, 1)
    f4 = dma_fence_unwrap_merge(f1, f2, f3)
    assert unwrapped(f4) == [f3, f2]
    for f in (f4, f3, f2, f1):
        f.put()


def test_unwrap_merge_order(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_unwrap_merge_order(): array and reversed chain → f1, f2."""
    f1, f2 = mock_fence(machine), mock_fence(machine)
    a1 = mock_array(machine, f1, f2)
    c1 = mock_chain(None, f1.get())
    c2 = mock_chain(c1, f2.get())
    a2 = dma_fence_unwrap_merge(a1, c2)
    assert unwrapped(a2) == [f1, f2], "Unexpected order!"
    a2.put()
    a1.put()
    c2.put()
    assert f1.refcount == 0 and f2.refcount == 0


def test_unwrap_merge_complex(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_unwrap_merge_complex(): the stub is filtered; {f1, f2}."""
    f1, f2 = mock_fence(machine), mock_fence(machine)
    f3 = dma_fence_unwrap_merge(f1, f2)
    f4 = mock_array(machine, f2.get(), f1.get())  # the fences in reverse
    stub = dma_fence_get_stub()
    f5 = dma_fence_unwrap_merge(f3, f4, stub)
    stub.put()
    seen = unwrapped(f5)
    assert len(seen) == 2 and {id(x) for x in seen} == {id(f1), id(f2)}
    for f in (f5, f4, f3, f2, f1):
        f.put()
    assert f1.refcount == 0 and f2.refcount == 0


def test_unwrap_merge_complex_seqno(machine: Machine) -> None:
    """st-dma-fence-unwrap.c, test_unwrap_merge_complex_seqno(): latest per context: f1, f4."""
    ctx0 = machine.fence_context_alloc(1)
    ctx1 = machine.fence_context_alloc(1)
    f1 = __mock_fence(machine, ctx0, 2)
    f2 = __mock_fence(machine, ctx1, 1)
    f3 = __mock_fence(machine, ctx0, 1)
    f4 = __mock_fence(machine, ctx1, 2)
    f5 = mock_array(machine, f1.get(), f2.get())
    f6 = mock_array(machine, f3.get(), f4.get())
    f7 = dma_fence_unwrap_merge(f5, f6)
    assert unwrapped(f7) == [f1, f4]
    for f in (f7, f6, f5, f4, f3, f2, f1):
        f.put()
    assert all(f.refcount == 0 for f in (f1, f2, f3, f4))
