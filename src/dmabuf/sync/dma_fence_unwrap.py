"""drivers/dma-buf/dma-fence-unwrap.c: iterate over and merge fence containers.

:func:`dma_fence_unwrap_for_each` flattens a fence that may be a chain of arrays: for every
chain node (walked with garbage collection, so nodes already signalled may be skipped) its
contained fence, and if that is an array, the array's elements. Containers nest only one level
each way (arrays hold no containers, chains contain no chains), so this yields leaves.

:func:`dma_fence_unwrap_merge` builds one fence that signals when all the given fences have:

1. count the unsignalled leaves, and the latest timestamp of the signalled ones;
2. none unsignalled → a fresh *private stub* already signalled at that latest timestamp;
3. exactly one → that fence itself (new reference) — the common fast path;
4. otherwise collect the leaves, sort by context (within a context the later fence first) and
   keep only the latest per context (:func:`dma_fence_dedup_array`); one left → it, more → a new
   :class:`~dmabuf.sync.dma_fence_array.DmaFenceArray` on a fresh context, seqno 1.

This is what ``SYNC_IOC_MERGE`` and ``DMA_BUF_IOCTL_IMPORT_SYNC_FILE`` use: merging two fences of
one timeline keeps only the later one.

Kernel: drivers/dma-buf/dma-fence-unwrap.c, include/linux/dma-fence-unwrap.h.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import DmaFence, dma_fence_allocate_private_stub
from dmabuf.sync.dma_fence_array import (
    DmaFenceArray,
    dma_fence_array_first,
    dma_fence_array_next,
)
from dmabuf.sync.dma_fence_chain import dma_fence_chain_contained, dma_fence_chain_walk

__all__ = [
    "dma_fence_dedup_array",
    "dma_fence_unwrap_for_each",
    "dma_fence_unwrap_merge",
]


def dma_fence_unwrap_for_each(head: DmaFence) -> Iterator[DmaFence]:
    """Yield the leaf fences of ``head`` — dma_fence_unwrap_for_each().

    Args:
        head: a fence, array, chain, or chain of arrays (the caller holds a reference).
    Yields: the leaves; no reference is passed: ``get()`` one to keep it.
    Context: walks chains with garbage collection (may signal fences whose ``ops.signaled``
        reports completion).
    Kernel: drivers/dma-buf/dma-fence-unwrap.c, dma_fence_unwrap_first(), dma_fence_unwrap_next().
    """
    if not isinstance(head, DmaFence):
        raise TypeError(f"head must be a DmaFence, not {type(head).__name__}")
    chain: DmaFence | None = head.get()
    try:
        array: DmaFence | None = dma_fence_chain_contained(chain) if chain is not None else None
        index = 0
        tmp = dma_fence_array_first(array)
        while tmp is not None:
            yield tmp
            index += 1
            tmp = dma_fence_array_next(array, index)
            if tmp is None:
                assert chain is not None
                chain = dma_fence_chain_walk(chain)
                array = dma_fence_chain_contained(chain) if chain is not None else None
                index = 0
                tmp = dma_fence_array_first(array)
    finally:
        if chain is not None:
            chain.put()


def _fence_cmp(a: DmaFence, b: DmaFence) -> int:
    """fence_cmp(): by context, then the later fence first."""
    if a.context < b.context:
        return -1
    if a.context > b.context:
        return 1
    if b.is_later(a):
        return 1
    if a.is_later(b):
        return -1
    return 0


def dma_fence_dedup_array(fences: list[DmaFence]) -> list[DmaFence]:
    """Sort by context and keep the latest fence per context — dma_fence_dedup_array().

    Args:
        fences: fences with a reference each; the references of dropped duplicates are put.
    Returns: the remaining fences (sorted by context), references passed to the caller.
    Kernel: drivers/dma-buf/dma-fence-unwrap.c, dma_fence_dedup_array().
    """
    if not fences:
        return []
    s = sorted(fences, key=functools.cmp_to_key(_fence_cmp))
    out = [s[0]]
    for f in s[1:]:
        if f.context == out[-1].context:
            f.put()
        else:
            out.append(f)
    return out


def dma_fence_unwrap_merge(*fences: DmaFence, machine: Machine | None = None) -> DmaFence:
    """One fence that signals when all of ``fences`` have — dma_fence_unwrap_merge().

    Args:
        fences: one or more fences/containers; the caller keeps its references.
        machine: for a new array or stub (default: the first fence's machine).
    Returns: a new reference: a signalled private stub (all signalled, latest timestamp), the
        single unsignalled leaf itself, or a new array of the latest unsignalled leaf per
        context (sorted by context; fresh context, seqno 1).
    Raises: TypeError if called without fences or with a non-fence.
    Kernel: drivers/dma-buf/dma-fence-unwrap.c, __dma_fence_unwrap_merge().
    """
    if not fences:
        raise TypeError("dma_fence_unwrap_merge() needs at least one fence")
    for f in fences:
        if not isinstance(f, DmaFence):
            raise TypeError(f"fences must be DmaFence objects, got {type(f).__name__}")
    m = machine or fences[0].machine
    timestamp = 0.0
    count = 0
    unsignaled: DmaFence | None = None
    for head in fences:
        for tmp in dma_fence_unwrap_for_each(head):
            if not tmp.is_signaled():
                if unsignaled is not None:
                    unsignaled.put()
                unsignaled = tmp.get()
                count += 1
            else:
                t = tmp.timestamp
                if t is not None and t > timestamp:
                    timestamp = t
    if count == 0:
        return dma_fence_allocate_private_stub(timestamp, machine=m)
    if count == 1:
        assert unsignaled is not None
        return unsignaled
    assert unsignaled is not None
    unsignaled.put()

    array: list[DmaFence] = []
    for head in fences:
        for tmp in dma_fence_unwrap_for_each(head):
            if not tmp.is_signaled():
                array.append(tmp.get())
            else:
                t = tmp.timestamp
                if t is not None and t > timestamp:
                    timestamp = t
    if len(array) == 0:
        return dma_fence_allocate_private_stub(timestamp, machine=m)
    if len(array) == 1:
        return array[0]
    array = dma_fence_dedup_array(array)
    if len(array) > 1:
        return DmaFenceArray(array, m.fence_context_alloc(1), 1, False, machine=m)
    return array[0]
