"""Port of drivers/dma-buf/st-dma-resv.c — KUnit suite ``dma-buf-resv``.

Each KUnit case is one test with the original's name; the parametrised ones run for the four
usages (KUNIT_ARRAY_PARAM ``dma_resv_usage``: kernel, write, read, bookkeep). ``KUNIT_FAIL`` /
``goto err`` become assertions; the cleanup paths (unlock, fini, put) are kept and, beyond the
original, the fence reference counts are checked at the end (no leaked or extra put).

``alloc_fence()`` initialises the fence with names-only ops ("selftest") on a shared static
spinlock (``fence_lock``), context 0, seqno 0, and the tests enable signalling at once.
"""

from __future__ import annotations

import pytest

from dmabuf.machine import Machine
from dmabuf.sched import SchedLock
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps
from dmabuf.sync.dma_resv import DmaResv, DmaResvIter, DmaResvUsage

USAGES = [DmaResvUsage.KERNEL, DmaResvUsage.WRITE, DmaResvUsage.READ, DmaResvUsage.BOOKKEEP]
USAGE_IDS = ["kernel", "write", "read", "bookkeep"]

fence_ops = DmaFenceOps("selftest", "selftest")


@pytest.fixture
def fence_lock(machine: Machine) -> SchedLock:
    """``static DEFINE_SPINLOCK(fence_lock)`` — one per test machine."""
    return machine.sched.lock("st-dma-resv fence_lock")


def alloc_fence(lock: SchedLock) -> DmaFence:
    """``alloc_fence()``: ``dma_fence_init(f, &fence_ops, &fence_lock, 0, 0)``."""
    return DmaFence(fence_ops, 0, 0, lock=lock)


def test_sanitycheck(fence_lock: SchedLock) -> None:
    """test_sanitycheck: a signalled, released fence; init, lock(NULL) == 0, unlock, fini.

    Kernel: drivers/dma-buf/st-dma-resv.c, test_sanitycheck().
    """
    f = alloc_fence(fence_lock)
    f.enable_sw_signaling()
    f.signal()
    f.put()
    assert f.refcount == 0

    resv = DmaResv()
    assert resv.lock(None) is None  # r == 0: "Resv locking failed" otherwise
    resv.unlock()
    resv.fini()


@pytest.mark.parametrize("usage", USAGES, ids=USAGE_IDS)
def test_signaling(fence_lock: SchedLock, usage: DmaResvUsage) -> None:
    """test_signaling: test_signaled(usage) is false while the fence is pending, true after.

    Kernel: drivers/dma-buf/st-dma-resv.c, test_signaling().
    """
    f = alloc_fence(fence_lock)
    f.enable_sw_signaling()
    resv = DmaResv()
    resv.lock(None)
    try:
        resv.reserve_fences(1)
        resv.add_fence(f, usage)
        assert not resv.test_signaled(usage), "Resv unexpectedly signaled"
        f.signal()
        assert resv.test_signaled(usage), "Resv not reporting signaled"
    finally:
        resv.unlock()
        resv.fini()
        f.put()
    assert f.refcount == 0


@pytest.mark.parametrize("usage", USAGES, ids=USAGE_IDS)
def test_for_each(fence_lock: SchedLock, usage: DmaResvUsage) -> None:
    """test_for_each: the locked iterator yields exactly the one fence, with its usage.

    Kernel: drivers/dma-buf/st-dma-resv.c, test_for_each() (dma_resv_for_each_fence).
    """
    f = alloc_fence(fence_lock)
    f.enable_sw_signaling()
    resv = DmaResv()
    resv.lock(None)
    try:
        resv.reserve_fences(1)
        resv.add_fence(f, usage)
        found = 0
        cursor = DmaResvIter(resv, usage)
        for fence in cursor.for_each():
            assert found == 0, "More than one fence found"
            assert fence is f, "Unexpected fence"
            assert cursor.fence_usage == usage, "Unexpected fence usage"
            found += 1
        assert found == 1, "No fence found"
        f.signal()
    finally:
        resv.unlock()
        resv.fini()
        f.put()
    assert f.refcount == 0


@pytest.mark.parametrize("usage", USAGES, ids=USAGE_IDS)
def test_for_each_unlocked(fence_lock: SchedLock, usage: DmaResvUsage) -> None:
    """test_for_each_unlocked: the unlocked iterator yields the fence with is_restarted set;
    poisoning ``cursor.fences`` (the kernel test stores ``(void*)~0``) forces a restart, which
    yields the same fence again, restarted; then the walk ends (exactly two yields).

    Kernel: drivers/dma-buf/st-dma-resv.c, test_for_each_unlocked().
    """
    f = alloc_fence(fence_lock)
    f.enable_sw_signaling()
    resv = DmaResv()
    resv.lock(None)
    resv.reserve_fences(1)
    resv.add_fence(f, usage)
    resv.unlock()

    r = "ENOENT"
    yields = 0
    cursor = DmaResvIter(resv, usage)  # dma_resv_iter_begin
    try:
        for fence in cursor.for_each_unlocked():
            yields += 1
            assert r != "OK", "More than one fence found"
            assert cursor.is_restarted, "No restart flag"
            assert fence is f, "Unexpected fence"
            assert cursor.fence_usage == usage, "Unexpected fence usage"
            assert f.refcount == 3  # ours, the resv's, the cursor's
            # We use r as state here
            if r == "ENOENT":
                r = "EINVAL"
                cursor.fences = ~0  # That should trigger an restart
            elif r == "EINVAL":
                r = "OK"
        assert r == "OK"  # KUNIT_EXPECT_EQ(test, r, 0)
        assert yields == 2
    finally:
        cursor.end()  # dma_resv_iter_end
        f.signal()
        resv.fini()
        f.put()
    assert f.refcount == 0


@pytest.mark.parametrize("usage", USAGES, ids=USAGE_IDS)
def test_get_fences(fence_lock: SchedLock, usage: DmaResvUsage) -> None:
    """test_get_fences: get_fences(usage) returns exactly [f], with a reference.

    Kernel: drivers/dma-buf/st-dma-resv.c, test_get_fences().
    """
    f = alloc_fence(fence_lock)
    f.enable_sw_signaling()
    resv = DmaResv()
    resv.lock(None)
    resv.reserve_fences(1)
    resv.add_fence(f, usage)
    resv.unlock()

    fences = resv.get_fences(usage)
    try:
        assert len(fences) == 1 and fences[0] is f, "get_fences returned unexpected fence"
        assert f.refcount == 3
        f.signal()
    finally:
        for g in fences:
            g.put()
        resv.fini()
        f.put()
    assert f.refcount == 0
