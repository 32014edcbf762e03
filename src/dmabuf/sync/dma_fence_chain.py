"""drivers/dma-buf/dma-fence-chain.c: chain fences together in a timeline.

A :class:`DmaFenceChain` node wraps one fence (``fence``) and points at the previous node
(``prev``): a linked list of points on a *timeline* (the model of a timeline syncobj). A node
with seqno N counts as signalled when its own fence and every earlier fence in the chain have
signalled.

Context and seqno (``dma_fence_chain_init``): the node reuses the previous node's context only
if ``prev`` is a chain node and ``seqno`` is later than ``prev.seqno`` (64-bit compare: chains
are initialised with ``dma_fence_init64``); then ``prev_seqno = prev.seqno``. Otherwise it
starts a new context, and if ``prev`` is a chain its seqno is raised to ``max(prev.seqno,
seqno)``.

Walking (:func:`dma_fence_chain_walk`) moves to the previous node and garbage-collects nodes
whose fence already signalled, by compare-and-exchange of ``prev``; so a walk from the tail
skips completed history. :func:`dma_fence_chain_find_seqno` uses it to find the node that will
signal a given point.

Signalling: ``enable_signaling`` walks back from the node and arms the node's single callback
on the first unsignalled contained fence; when that fires, deferred work (the kernel's
``irq_work``) re-arms on the next unsignalled one or signals the node.

Rules: a chain's contained ``fence`` must not itself be a chain (chains link through ``prev``
only; flatten into an array instead) — the kernel WARNs, the model raises ContractViolation.
The node's lock has its own lockdep class (``dma_fence_chain_lock``), as in v7.1.

Kernel: drivers/dma-buf/dma-fence-chain.c, include/linux/dma-fence-chain.h.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import (
    DmaFence,
    DmaFenceCb,
    DmaFenceFlag,
    DmaFenceOps,
    _check_u64,
    _seqno_later,
    irq_work_queue,
)

__all__ = [
    "DmaFenceChain",
    "dma_fence_chain_contained",
    "dma_fence_chain_find_seqno",
    "dma_fence_chain_for_each",
    "dma_fence_chain_init",
    "dma_fence_chain_walk",
    "dma_fence_is_chain",
    "to_dma_fence_chain",
]

_SEQNO64 = 1 << DmaFenceFlag.SEQNO64


class _ChainOps(DmaFenceOps):
    """dma_fence_chain_ops."""

    def get_driver_name(self, fence: DmaFence) -> str:
        return "dma_fence_chain"

    def get_timeline_name(self, fence: DmaFence) -> str:
        return "unbound"

    def enable_signaling(self, fence: DmaFence) -> bool:
        assert isinstance(fence, DmaFenceChain)
        return _chain_enable_signaling(fence)

    def signaled(self, fence: DmaFence) -> bool:
        assert isinstance(fence, DmaFenceChain)
        return _chain_signaled(fence)

    def release(self, fence: DmaFence) -> None:
        assert isinstance(fence, DmaFenceChain)
        fence._chain_release()

    def set_deadline(self, fence: DmaFence, deadline: float) -> None:
        it: DmaFence | None = fence.get()
        while it is not None:
            dma_fence_chain_contained(it).set_deadline(deadline)
            it = dma_fence_chain_walk(it)


_CHAIN_OPS = _ChainOps()


class _ChainCb(DmaFenceCb):
    __slots__ = ("chain",)

    def __init__(self, chain: DmaFenceChain) -> None:
        super().__init__()
        self.chain = chain


class DmaFenceChain(DmaFence):
    """One point of a fence timeline — struct dma_fence_chain, ``dma_fence_chain_init()``.

    Args:
        prev: the previous point (a chain node, a plain fence, or None); the node takes over the
            caller's reference.
        fence: the fence of this point; the node takes over the caller's reference. Must not be
            a chain.
        seqno: the point's seqno (see the module docstring for context reuse).
        machine: default: ``fence``'s machine.
    Context: never blocks.
    Raises: ContractViolation if ``fence`` is a chain (kernel: WARN_ON(dma_fence_is_chain()));
        TypeError for non-fences; DmaBufError(EINVAL) for a seqno outside u64.
    Kernel: drivers/dma-buf/dma-fence-chain.c, dma_fence_chain_init().
    """

    __slots__ = ("cb", "fence", "prev", "prev_seqno")

    LOCK_CLASS = "dma_fence_chain_lock"
    IS_CONTAINER = True

    def __init__(self, prev: DmaFence | None, fence: DmaFence, seqno: int, *,
                 machine: Machine | None = None) -> None:
        if prev is not None and not isinstance(prev, DmaFence):
            raise TypeError(f"prev must be a DmaFence or None, not {type(prev).__name__}")
        if not isinstance(fence, DmaFence):
            raise TypeError(f"fence must be a DmaFence, not {type(fence).__name__}")
        if isinstance(fence, DmaFenceChain):
            raise ContractViolation(
                "dma_fence_chain_init", "the contained fence is a dma_fence_chain: chains link "
                "through prev only; flatten the fences into an array instead")
        _check_u64(seqno, "seqno")
        m = machine or fence.machine
        #: The previous point (RCU pointer in the kernel; changed by the walk's GC).
        self.prev: DmaFence | None = prev
        #: The fence of this point.
        self.fence: DmaFence = fence
        #: Seqno of the previous node if the context was reused, else 0.
        self.prev_seqno = 0
        #: The node's single callback (armed on the first pending contained fence).
        self.cb = _ChainCb(self)
        if isinstance(prev, DmaFenceChain) and _seqno_later(prev.flags, seqno, prev.seqno):
            context = prev.context
            self.prev_seqno = prev.seqno
        else:
            context = m.fence_context_alloc(1)
            if isinstance(prev, DmaFenceChain):
                seqno = max(prev.seqno, seqno)
        super().__init__(_CHAIN_OPS, context, seqno, machine=m, _flags=_SEQNO64)

    def _chain_release(self) -> None:
        """dma_fence_chain_release(): unlink iteratively to avoid deep recursion."""
        prev = self.prev
        while prev is not None:
            if prev.refcount > 1 or not isinstance(prev, DmaFenceChain):
                break
            # We hold the last reference to prev: no atomics needed (as in the kernel).
            self.prev = prev.prev
            prev.prev = None
            prev.put()
            prev = self.prev
        if prev is not None:
            prev.put()
        self.prev = None
        self.fence.put()

    def _irq_work(self) -> None:
        """dma_fence_chain_irq_work(): re-arm on the next pending fence, or signal."""
        if not _chain_enable_signaling(self):
            self.signal()
        self.put()

    def contained(self) -> DmaFence:
        """The fence of this point — dma_fence_chain_contained().

        Kernel: include/linux/dma-fence-chain.h, dma_fence_chain_contained().
        """
        return self.fence


def dma_fence_chain_init(prev: DmaFence | None, fence: DmaFence, seqno: int, *,
                         machine: Machine | None = None) -> DmaFenceChain:
    """Create a chain node — dma_fence_chain_alloc() + dma_fence_chain_init().

    See :class:`DmaFenceChain`. Takes over the references to ``prev`` and ``fence``.
    Kernel: drivers/dma-buf/dma-fence-chain.c, dma_fence_chain_init().
    """
    return DmaFenceChain(prev, fence, seqno, machine=machine)


def dma_fence_is_chain(fence: DmaFence | None) -> bool:
    """Whether ``fence`` is a chain node — dma_fence_is_chain().

    Kernel: include/linux/dma-fence-chain.h, dma_fence_is_chain().
    """
    return isinstance(fence, DmaFenceChain)


def to_dma_fence_chain(fence: DmaFence | None) -> DmaFenceChain | None:
    """``fence`` as a chain node, or None — to_dma_fence_chain().

    Kernel: include/linux/dma-fence-chain.h, to_dma_fence_chain().
    """
    return fence if isinstance(fence, DmaFenceChain) else None


def dma_fence_chain_contained(fence: DmaFence) -> DmaFence:
    """A chain node's fence, or ``fence`` itself — dma_fence_chain_contained().

    Kernel: include/linux/dma-fence-chain.h, dma_fence_chain_contained().
    """
    return fence.fence if isinstance(fence, DmaFenceChain) else fence


def _get_prev(chain: DmaFenceChain) -> DmaFence | None:
    """dma_fence_chain_get_prev(): a reference to chain.prev, read atomically."""
    with chain._core.atomic:
        prev = chain.prev
        if prev is not None:
            # chain holds a reference to prev while it is linked, so the count is > 0.
            prev._refcount += 1
    return prev


def dma_fence_chain_walk(fence: DmaFence) -> DmaFence | None:
    """Move to the previous node, garbage-collecting signalled ones — dma_fence_chain_walk().

    Args:
        fence: the current node; the caller's reference is consumed.
    Context: may signal fences whose ``ops.signaled`` reports completion (takes their locks).
    Returns: a reference to the previous node whose fence has not signalled (or the plain fence
        at the start of the chain), or None at the end. Not a chain → puts ``fence``, None.
    Kernel: drivers/dma-buf/dma-fence-chain.c, dma_fence_chain_walk().
    """
    if not isinstance(fence, DmaFenceChain):
        fence.put()
        return None
    chain = fence
    atomic = chain._core.atomic
    while True:
        prev = _get_prev(chain)
        if prev is None:
            break
        replacement: DmaFence | None
        if isinstance(prev, DmaFenceChain):
            if not prev.fence.is_signaled():
                break
            replacement = _get_prev(prev)
        else:
            if not prev.is_signaled():
                break
            replacement = None
        with atomic:  # cmpxchg(&chain->prev, prev, replacement)
            tmp = chain.prev
            if tmp is prev:
                chain.prev = replacement
        if tmp is prev:
            tmp.put()
        elif replacement is not None:
            replacement.put()
        prev.put()
    fence.put()
    return prev


def dma_fence_chain_for_each(head: DmaFence) -> Iterator[DmaFence]:
    """Iterate over a chain from ``head`` backwards — dma_fence_chain_for_each().

    Yields each node (or the plain fence ending the chain), walking with GC. The iterator holds
    the reference to the current node; ``get()`` a yielded fence to keep it beyond the next step.
    Breaking out early drops the iterator's reference.
    Kernel: include/linux/dma-fence-chain.h, dma_fence_chain_for_each().
    """
    it: DmaFence | None = head.get()
    try:
        while it is not None:
            yield it
            it = dma_fence_chain_walk(it)
    finally:
        if it is not None:
            it.put()


def dma_fence_chain_find_seqno(fence: DmaFence, seqno: int) -> DmaFence | None:
    """The node that will signal timeline point ``seqno`` — dma_fence_chain_find_seqno().

    Args:
        fence: where to start (a chain node); on success the caller's reference is consumed.
        seqno: the point; 0 is a no-op.
    Returns: a reference to the node that signals ``seqno``, or None if everything up to it has
        signalled and been collected. ``seqno == 0`` returns ``fence`` itself (reference
        unchanged, as the kernel leaves ``*pfence`` alone).
    Raises: DmaBufError(EINVAL) if ``fence`` is not a chain node or ``seqno`` is later than
        its seqno (not reached yet); the caller keeps its reference then.
    Kernel: drivers/dma-buf/dma-fence-chain.c, dma_fence_chain_find_seqno().
    """
    _check_u64(seqno, "seqno")
    if not seqno:
        return fence
    chain = fence if isinstance(fence, DmaFenceChain) else None
    if chain is None or chain.seqno < seqno:
        raise DmaBufError(errno.EINVAL, f"dma_fence_chain_find_seqno({seqno}): "
                          f"{'not a chain node' if chain is None else 'point not reached yet'}"
                          f" (fence {fence.context}:{fence.seqno})")
    it: DmaFence | None = chain.get()
    while it is not None:
        node = it if isinstance(it, DmaFenceChain) else None
        if it.context != chain.context or node is None or node.prev_seqno < seqno:
            break
        it = dma_fence_chain_walk(it)
    chain.put()
    return it


def _chain_cb(f: DmaFence, cb: DmaFenceCb) -> None:
    """dma_fence_chain_cb(): the contained fence signalled; re-arm later (irq_work)."""
    assert isinstance(cb, _ChainCb)
    chain = cb.chain
    irq_work_queue(chain._irq_work, machine=chain.machine)
    f.put()


def _chain_enable_signaling(head: DmaFenceChain) -> bool:
    """dma_fence_chain_enable_signaling(): arm the callback on the first pending fence."""
    head.get()
    cb = head.cb
    it: DmaFence | None = head.get()
    while it is not None:
        f = dma_fence_chain_contained(it)
        f.get()
        if not f.add_callback(cb, _chain_cb):
            it.put()
            return True
        f.put()
        it = dma_fence_chain_walk(it)
    head.put()
    return False


def _chain_signaled(fence: DmaFenceChain) -> bool:
    """dma_fence_chain_signaled(): all contained fences up the chain signalled."""
    it: DmaFence | None = fence.get()
    while it is not None:
        if not dma_fence_chain_contained(it).is_signaled():
            it.put()
            return False
        it = dma_fence_chain_walk(it)
    return True
