"""Unit tests of dmabuf.sync.sync_file and dmabuf.sync.sw_sync."""

from __future__ import annotations

import errno

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.sched import explore
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps, dma_fence_get_stub
from dmabuf.sync.dma_fence_array import DmaFenceArray
from dmabuf.sync.sw_sync import SW_SYNC_HAS_DEADLINE_BIT, SwSyncPt, SwSyncTimeline
from dmabuf.sync.sync_file import (
    EPOLLIN,
    SyncFenceInfo,
    SyncFile,
    sync_file_create,
    sync_file_get_fence,
)

# ---- sw_sync --------------------------------------------------------------------------------


def test_timeline_create_and_inc_signals_in_order(machine: Machine) -> None:
    tl = SwSyncTimeline("tl")
    pts = [tl.create_fence(v) for v in (3, 1, 2, 5)]
    assert [p.seqno for p in tl.pending] == [1, 2, 3, 5]
    assert all(p.context == tl.context for p in pts) and isinstance(pts[0], SwSyncPt)
    order: list[int] = []
    from dmabuf.sync.dma_fence import DmaFenceCb
    for p in pts:
        p.add_callback(DmaFenceCb(), lambda f, cb: order.append(f.seqno))
    tl.inc(2)
    assert order == [1, 2] and tl.value == 2
    assert [p.is_signaled() for p in pts] == [False, True, True, False]
    tl.inc(3)
    assert order == [1, 2, 3, 5] and tl.pending == []
    assert pts[0].ops is not None  # sw_sync has release: no detach
    assert (pts[0].driver_name(), pts[0].timeline_name()) == ("sw_sync", "tl")


def test_create_below_counter_is_signalled(machine: Machine) -> None:
    tl = SwSyncTimeline()
    tl.inc(5)
    p = tl.create_fence(4)
    assert p.test_signaled_flag() and tl.pending == []
    assert tl.create_fence(5).is_signaled()


def test_same_value_returns_existing_point(machine: Machine) -> None:
    tl = SwSyncTimeline()
    a = tl.create_fence(7)
    b = tl.create_fence(7)
    assert a is b and a.refcount == 2 and len(tl.pending) == 1


def test_release_unlinks_pending_point(machine: Machine) -> None:
    tl = SwSyncTimeline()
    a = tl.create_fence(7)
    a.put()
    assert tl.pending == [] and a.refcount == 0
    b = tl.create_fence(7)
    assert b is not a


def test_32bit_wraparound(machine: Machine) -> None:
    tl = SwSyncTimeline()
    tl.inc(0xFFFFFFF0)
    p = tl.create_fence(5)  # "after" 0xfffffff0 modulo 2**32
    assert not p.is_signaled()
    tl.inc(0x10)
    assert tl.value == 0 and not p.is_signaled()
    tl.inc(5)
    assert p.is_signaled()


def test_inc_above_int_max(machine: Machine) -> None:
    tl = SwSyncTimeline()
    p = tl.create_fence(0x90000000)
    tl.inc(0x90000000)
    assert tl.value == 0x90000000 and p.is_signaled()


def test_close_signals_pending_with_enoent(machine: Machine) -> None:
    with SwSyncTimeline() as tl:
        p = tl.create_fence(1)
        q = tl.create_fence(2)
    assert p.get_status() == -errno.ENOENT and q.get_status() == -errno.ENOENT
    tl.close()
    with pytest.raises(DmaBufError) as ei:
        tl.inc(1)
    assert ei.value.errno == errno.EBADF
    with pytest.raises(DmaBufError):
        tl.create_fence(3)


def test_deadline(machine: Machine) -> None:
    tl = SwSyncTimeline()
    p = tl.create_fence(1)
    with pytest.raises(DmaBufError) as ei:
        tl.get_deadline(p)
    assert ei.value.errno == errno.ENOENT
    p.set_deadline(5.0)
    p.set_deadline(9.0)
    p.set_deadline(2.0)
    assert tl.get_deadline(p) == 2.0 and p.test_bit(SW_SYNC_HAS_DEADLINE_BIT)
    with pytest.raises(DmaBufError) as ei:
        tl.get_deadline(DmaFence(DmaFenceOps("x", "y"), 1, 1))
    assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize(("value", "exc"), [(-1, DmaBufError), (1 << 32, DmaBufError),
                                            ("1", TypeError), (1.0, TypeError)])
def test_bad_values(machine: Machine, value: object, exc: type) -> None:
    tl = SwSyncTimeline()
    with pytest.raises(exc):
        tl.create_fence(value)  # type: ignore[arg-type]
    with pytest.raises(exc):
        tl.inc(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SwSyncTimeline(3)  # type: ignore[arg-type]


def test_wait_on_sw_sync_point() -> None:
    def scenario(m: Machine) -> None:
        tl = SwSyncTimeline("w", machine=m)
        p = tl.create_fence(2)
        t = m.sched.spawn(p.wait_timeout, False, 10.0)
        m.sched.sleep(1.0)
        tl.inc(1)
        m.sched.sleep(1.0)
        tl.inc(1)
        assert t.join(1.0) and t.result() == pytest.approx(8.0)

    explore(scenario, 30)


# ---- sync_file ------------------------------------------------------------------------------


def test_create_get_fence_and_close(machine: Machine) -> None:
    tl = SwSyncTimeline("tl")
    p = tl.create_fence(1)
    sf = sync_file_create(p)
    assert p.refcount == 2 and sf.fence is p
    g = sf.get_fence()
    assert g is p and p.refcount == 3
    g.put()
    assert sync_file_get_fence("not a sync file") is None
    sf.close()
    sf.close()
    assert sf.closed and p.refcount == 1 and sync_file_get_fence(sf) is None
    for call in (sf.get_fence, sf.info, sf.poll, sf.get_name):
        with pytest.raises(DmaBufError) as ei:
            call()
        assert ei.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        SyncFile("fence")  # type: ignore[arg-type]


def test_snapshot_semantics(machine: Machine) -> None:
    tl = SwSyncTimeline("tl")
    p1 = tl.create_fence(1)
    sf = SyncFile(p1)
    p2 = tl.create_fence(2)  # later work on the timeline does not enter the sync file
    tl.inc(1)
    assert sf.poll() == EPOLLIN and not p2.is_signaled()
    assert sf.info().num_fences == 1


def test_name(machine: Machine) -> None:
    tl = SwSyncTimeline("mytl")
    p = tl.create_fence(42)
    sf = SyncFile(p)
    assert sf.get_name() == f"sw_sync-mytl{tl.context}-42"
    long = SyncFile(p, "x" * 40)
    assert long.get_name() == "x" * 31


def test_merge_same_timeline_keeps_later(machine: Machine) -> None:
    tl = SwSyncTimeline("tl")
    a = SyncFile(tl.create_fence(1))
    b = SyncFile(tl.create_fence(2))
    m = a.merge(b, "merged")
    info = m.info()
    assert info.name == "merged" and info.num_fences == 1 and m.fence is b.fence
    assert not a.closed and not b.closed


def test_merge_orders_by_context(machine: Machine) -> None:
    t1, t2 = SwSyncTimeline("one"), SwSyncTimeline("two")
    a = SyncFile(t2.create_fence(1))
    b = SyncFile(t1.create_fence(1))
    m = a.merge(b)
    assert isinstance(m.fence, DmaFenceArray)
    info = m.info()
    assert [f.obj_name for f in info.fences] == ["one", "two"]
    assert m.get_name().startswith("dma_fence_array-unbound")
    with pytest.raises(DmaBufError) as ei:
        a.merge("b")  # type: ignore[arg-type]
    assert ei.value.errno == errno.ENOENT


def test_merge_signalled_gives_stub(machine: Machine) -> None:
    tl = SwSyncTimeline("tl")
    a = SyncFile(tl.create_fence(1))
    b = SyncFile(dma_fence_get_stub())
    tl.inc(1)
    m = a.merge(b)
    assert m.fence.context == 0 and m.poll() == EPOLLIN


def test_info_fields_and_status(machine: Machine) -> None:
    t1, t2 = SwSyncTimeline("one"), SwSyncTimeline("two")
    p1, p2 = t1.create_fence(1), t2.create_fence(1)
    m = SyncFile(p1).merge(SyncFile(p2), "m")
    i0 = m.info(0)
    assert (i0.name, i0.status, i0.flags, i0.num_fences, i0.fences) == ("m", 0, 0, 2, ())
    with pytest.raises(DmaBufError) as ei:
        m.info(1)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError):
        m.info(-1)
    with pytest.raises(TypeError):
        m.info("2")  # type: ignore[arg-type]
    info = m.info(2)
    assert info.status == 0
    assert info.fences[0] == SyncFenceInfo("one", "sw_sync", 0, 0, 0)
    t1.inc(1)
    info = m.info()
    assert info.status == 0  # the second is still pending
    assert info.fences[0].status == 1 and info.fences[0].timestamp_ns == p1.timestamp_ns > 0
    p2.lock_irqsave()
    try:
        p2.set_error(-errno.EIO)
    finally:
        p2.unlock_irqrestore()
    t2.inc(1)
    info = m.info()
    assert info.status == -errno.EIO and info.fences[1].status == -errno.EIO
    # Kernel quirk, reproduced: the merged array never had signalling enabled, so it completes
    # through dma_fence_array_signaled(), which clears PENDING_ERROR without reading the
    # children's errors: the file's overall status is 1.
    assert m.info(0).status == 1


def test_poll_and_poll_wait() -> None:
    def scenario(m: Machine) -> None:
        tl = SwSyncTimeline("p", machine=m)
        sf = tl.create_sync_file(1)
        assert sf.poll() == 0
        assert sf.poll_wait(2.0) == 0 and m.sched.now() == 2.0
        t = m.sched.spawn(lambda: (m.sched.sleep(1.0), tl.inc(1)))
        assert sf.poll_wait(None) == EPOLLIN and m.sched.now() == 3.0
        assert t.join(1.0)
        assert sf.poll() == EPOLLIN
        sf.close()

    explore(scenario, 30)


def test_poll_on_signalled_fence(machine: Machine) -> None:
    sf = SyncFile(dma_fence_get_stub())
    assert sf.poll() == EPOLLIN and sf.poll_wait(0) == EPOLLIN
    with pytest.raises(DmaBufError) as ei:
        sf.poll_wait(-1)
    assert ei.value.errno == errno.EINVAL


def test_set_deadline_reaches_sw_sync(machine: Machine) -> None:
    tl = SwSyncTimeline()
    sf = tl.create_sync_file(3)
    sf.set_deadline(1.25)
    assert tl.get_deadline(sf.fence) == 1.25
