"""drivers/dma-buf/dma-fence-array.c: a fence that aggregates fences to be waited together.

A :class:`DmaFenceArray` owns references to N fences and signals when all of them have
signalled — or when any one has, with ``signal_on_any``. It has its own context and seqno (the
creator chooses them, usually a fresh context) and reports the error of the first child that
failed.

How it signals. Nothing happens until someone needs the array to signal (a callback, a wait,
``enable_sw_signaling``): then ``enable_signaling`` adds one callback per child, taking an extra
reference on the array for each. A child's callback records its error (the first one wins,
while the array is pending), drops the pending count and, when it reaches zero, queues the
signal of the array as deferred work (the kernel's ``irq_work``) so the array's lock is never
taken inside the child's lock. ``signaled`` (the peek) counts signalled children when signalling
was never enabled.

Error reporting: ``error`` is the kernel's ``PENDING_ERROR`` (1) while the array has not
signalled; the first child error replaces it (cmpxchg), and it is cleared to 0 if none came.

Rules: an array must not contain another container (array or chain): flatten with
:func:`dma_fence_unwrap_merge` instead (the kernel WARNs; the model raises ContractViolation).
The array's lock has its own lockdep class (``dma_fence_array_lock``), as in v7.1, because
``enable_signaling`` nests the children's locks inside it.

Kernel: drivers/dma-buf/dma-fence-array.c, include/linux/dma-fence-array.h.
"""

from __future__ import annotations

from collections.abc import Sequence

from dmabuf.errors import ContractViolation
from dmabuf.machine import Machine
from dmabuf.sync.dma_fence import (
    DmaFence,
    DmaFenceCb,
    DmaFenceFlag,
    DmaFenceOps,
    _check_u64,
    irq_work_queue,
)

__all__ = [
    "DmaFenceArray",
    "dma_fence_array_create",
    "dma_fence_array_first",
    "dma_fence_array_next",
    "dma_fence_is_array",
    "dma_fence_match_context",
    "to_dma_fence_array",
]

#: ``array->base.error`` while the array has not signalled (kernel: ``#define PENDING_ERROR 1``).
PENDING_ERROR = 1
_ENABLE_SIGNAL = 1 << DmaFenceFlag.ENABLE_SIGNAL


class _ArrayCb(DmaFenceCb):
    """struct dma_fence_array_cb: one per child."""

    __slots__ = ("array",)

    def __init__(self, array: DmaFenceArray) -> None:
        super().__init__()
        self.array = array


class _ArrayOps(DmaFenceOps):
    """dma_fence_array_ops."""

    def get_driver_name(self, fence: DmaFence) -> str:
        return "dma_fence_array"

    def get_timeline_name(self, fence: DmaFence) -> str:
        return "unbound"

    def enable_signaling(self, fence: DmaFence) -> bool:
        assert isinstance(fence, DmaFenceArray)
        return fence._enable_signaling()

    def signaled(self, fence: DmaFence) -> bool:
        assert isinstance(fence, DmaFenceArray)
        return fence._signaled()

    def release(self, fence: DmaFence) -> None:
        assert isinstance(fence, DmaFenceArray)
        for f in fence.fences:
            f.put()

    def set_deadline(self, fence: DmaFence, deadline: float) -> None:
        assert isinstance(fence, DmaFenceArray)
        for f in fence.fences:
            f.set_deadline(deadline)


_ARRAY_OPS = _ArrayOps()


def _array_cb_func(f: DmaFence, cb: DmaFenceCb) -> None:
    """dma_fence_array_cb_func(): runs in the child's signalling path (child lock held)."""
    assert isinstance(cb, _ArrayCb)
    array = cb.array
    array._set_pending_error(f.error)
    if array._dec_and_test():
        irq_work_queue(array._irq_work, machine=array.machine)
    else:
        array.put()


class DmaFenceArray(DmaFence):
    """A fence signalled when all (or any) of its fences signal — struct dma_fence_array.

    Create with :func:`dma_fence_array_create` (kernel spelling) or the constructor.

    Args:
        fences: the child fences; the array takes over the caller's references (it puts them
            on release).
        context: the array's own context (usually ``dma_fence_context_alloc(1)``).
        seqno: its seqno on that context.
        signal_on_any: signal when the first child signals instead of the last.
        machine: default: the first child's machine.
    Context: never blocks.
    Raises: ContractViolation if ``fences`` is empty (WARN_ON(!num_fences)) or contains a
        container (array or chain; kernel: WARN_ON(dma_fence_is_container())); TypeError for
        non-fences.
    Kernel: drivers/dma-buf/dma-fence-array.c, dma_fence_array_create(), dma_fence_array_init().
    """

    __slots__ = ("_callbacks", "_num_pending", "fences", "num_fences", "signal_on_any")

    LOCK_CLASS = "dma_fence_array_lock"
    IS_CONTAINER = True

    def __init__(self, fences: Sequence[DmaFence], context: int, seqno: int,
                 signal_on_any: bool = False, *, machine: Machine | None = None) -> None:
        fl = tuple(fences)
        if not fl:
            raise ContractViolation("dma_fence_array_init", "an array needs at least one fence "
                                    "(WARN_ON(!num_fences)); it would never signal")
        for f in fl:
            if not isinstance(f, DmaFence):
                raise TypeError(f"fences must be DmaFence objects, got {type(f).__name__}")
        for f in fl:
            if f.IS_CONTAINER:
                raise ContractViolation(
                    "dma_fence_array_init", f"{f!r} is a fence container; arrays must not "
                    "contain arrays or chains: flatten them with dma_fence_unwrap_merge()")
        _check_u64(context, "context")
        _check_u64(seqno, "seqno")
        super().__init__(_ARRAY_OPS, context, seqno, machine=machine or fl[0].machine)
        #: The child fences (``array->fences``); the array holds a reference on each.
        self.fences: tuple[DmaFence, ...] = fl
        self.num_fences = len(fl)
        self.signal_on_any = bool(signal_on_any)
        self._num_pending = 1 if signal_on_any else len(fl)
        self._callbacks: list[_ArrayCb] | None = None
        self.error = PENDING_ERROR

    # atomics ----------------------------------------------------------------------------------
    def _set_pending_error(self, error: int) -> None:
        """dma_fence_array_set_pending_error(): first error wins, only while pending."""
        if error:
            with self._core.atomic:
                if self.error == PENDING_ERROR:
                    self.error = error

    def _clear_pending_error(self) -> None:
        with self._core.atomic:
            if self.error == PENDING_ERROR:
                self.error = 0

    def _dec_and_test(self) -> bool:
        with self._core.atomic:
            self._num_pending -= 1
            return self._num_pending == 0

    @property
    def num_pending(self) -> int:
        """Children still awaited (``atomic_read(&array->num_pending)``)."""
        return self._num_pending

    # ops ---------------------------------------------------------------------------------------
    def _irq_work(self) -> None:
        """irq_dma_fence_array_work()."""
        self._clear_pending_error()
        self.signal()
        self.put()

    def _enable_signaling(self) -> bool:
        """dma_fence_array_enable_signaling(); array lock held."""
        cbs = self._callbacks = [_ArrayCb(self) for _ in self.fences]
        for f, cb in zip(self.fences, cbs, strict=True):
            # One reference per armed callback: the core only holds the array until it signals.
            self.get()
            if f.add_callback(cb, _array_cb_func):
                self._set_pending_error(f.error)
                self.put()
                if self._dec_and_test():
                    self._clear_pending_error()
                    return False
        return True

    def _signaled(self) -> bool:
        """dma_fence_array_signaled()."""
        num_pending = self._num_pending
        if self.flags & _ENABLE_SIGNAL:
            if num_pending <= 0:
                self._clear_pending_error()
                return True
            return False
        for f in self.fences:
            if f.is_signaled():
                num_pending -= 1
                if not num_pending:
                    self._clear_pending_error()
                    return True
        return False

    def first(self) -> DmaFence | None:
        """The first child — dma_fence_array_first().

        Kernel: drivers/dma-buf/dma-fence-array.c, dma_fence_array_first().
        """
        return self.fences[0] if self.fences else None

    def next(self, index: int) -> DmaFence | None:
        """Child ``index``, or None past the end — dma_fence_array_next().

        Kernel: drivers/dma-buf/dma-fence-array.c, dma_fence_array_next().
        """
        return self.fences[index] if 0 <= index < len(self.fences) else None


def dma_fence_array_create(fences: Sequence[DmaFence], context: int, seqno: int,
                           signal_on_any: bool = False, *,
                           machine: Machine | None = None) -> DmaFenceArray:
    """Create a fence array — dma_fence_array_create(); see :class:`DmaFenceArray`.

    The kernel's ``num_fences`` is ``len(fences)``. Takes over the references in ``fences``.
    Returns: the array with one reference.
    Kernel: drivers/dma-buf/dma-fence-array.c, dma_fence_array_create().
    """
    return DmaFenceArray(fences, context, seqno, signal_on_any, machine=machine)


def dma_fence_is_array(fence: DmaFence | None) -> bool:
    """Whether ``fence`` is a fence array — dma_fence_is_array().

    Kernel: include/linux/dma-fence-array.h, dma_fence_is_array().
    """
    return isinstance(fence, DmaFenceArray)


def to_dma_fence_array(fence: DmaFence | None) -> DmaFenceArray | None:
    """``fence`` as an array, or None if it is not one — to_dma_fence_array().

    Kernel: include/linux/dma-fence-array.h, to_dma_fence_array().
    """
    return fence if isinstance(fence, DmaFenceArray) else None


def dma_fence_array_first(head: DmaFence | None) -> DmaFence | None:
    """First fence of ``head`` if an array, ``head`` itself otherwise — dma_fence_array_first().

    Kernel: drivers/dma-buf/dma-fence-array.c, dma_fence_array_first().
    """
    if head is None:
        return None
    if isinstance(head, DmaFenceArray):
        return head.first()
    return head


def dma_fence_array_next(head: DmaFence | None, index: int) -> DmaFence | None:
    """Fence ``index`` of ``head`` if an array, None otherwise — dma_fence_array_next().

    Kernel: drivers/dma-buf/dma-fence-array.c, dma_fence_array_next().
    """
    if isinstance(head, DmaFenceArray):
        return head.next(index)
    return None


def dma_fence_match_context(fence: DmaFence, context: int) -> bool:
    """Whether ``fence`` (or every fence of an array) is on ``context`` — dma_fence_match_context().

    Kernel: drivers/dma-buf/dma-fence-array.c, dma_fence_match_context().
    """
    if isinstance(fence, DmaFenceArray):
        return all(f.context == context for f in fence.fences)
    return fence.context == context
