"""mm/mmu_notifier.c: interval notifiers, the seq/retry protocol, classic notifiers, lockdep."""

from __future__ import annotations

import errno

import pytest

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm import MemKind, PhysMemory
from dmabuf.mm.mmu_notifier import (
    MmuIntervalNotifier,
    MmuNotifier,
    MmuNotifierOps,
    MmuNotifierRange,
    MmuNotifyEvent,
    mmu_interval_check_retry,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_insert_locked,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_interval_set_seq,
    mmu_notifier_invalidate_range_end,
    mmu_notifier_invalidate_range_start,
    mmu_notifier_invalidate_range_start_nonblock,
    mmu_notifier_register,
    mmu_notifier_unregister,
)
from dmabuf.mm.vma import MmStruct
from dmabuf.sched import replay

MiB = 1 << 20


@pytest.fixture
def mm(machine: Machine) -> MmStruct:
    phys = PhysMemory(machine)
    phys.add_region("ram0", 64 * MiB, MemKind.RAM)
    return MmStruct(phys, name="proc")


class Recorder:
    """An interval notifier user: records callbacks, sets the seq like a driver must."""

    def __init__(self, ret: bool = True, set_seq: bool = True) -> None:
        self.calls: list[tuple[str, int, int, int]] = []
        self.ret = ret
        self.set_seq = set_seq

    def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange, cur_seq: int) -> bool:
        self.calls.append((rng.event.name, rng.start, rng.end, cur_seq))
        if self.set_seq:
            mmu_interval_set_seq(sub, cur_seq)
        return self.ret


def _inv(mm: MmStruct, start: int, end: int,
         event: MmuNotifyEvent = MmuNotifyEvent.MMU_NOTIFY_CLEAR) -> MmuNotifierRange:
    rng = MmuNotifierRange(mm, start, end, event)
    mmu_notifier_invalidate_range_start(rng)
    mmu_notifier_invalidate_range_end(rng)
    return rng


def test_sequence_numbers_follow_the_kernel(mm: MmStruct) -> None:
    rec = Recorder()
    sub = MmuIntervalNotifier()
    mmu_interval_notifier_insert(sub, mm, 0x10000, 0x4000, rec)
    subs = mm.notifier_subscriptions(create=False)
    assert subs is not None and subs.invalidate_seq == 2
    # a subscription that was never invalidated: mm seq - 1 (odd, never a future mm seq)
    assert sub.invalidate_seq == 1
    seq = mmu_interval_read_begin(sub)
    assert seq == 1 and not mmu_interval_read_retry(sub, seq)
    _inv(mm, 0x12000, 0x13000)
    assert rec.calls == [("MMU_NOTIFY_CLEAR", 0x12000, 0x13000, 3)]
    assert subs.invalidate_seq == 4          # odd during, even again after the last end
    assert sub.invalidate_seq == 3
    assert mmu_interval_read_retry(sub, seq) and mmu_interval_check_retry(sub, seq)
    seq2 = mmu_interval_read_begin(sub)
    assert seq2 == 3 and not mmu_interval_read_retry(sub, seq2)


def test_non_overlapping_invalidation_does_not_touch_the_subscription(mm: MmStruct) -> None:
    rec = Recorder()
    sub = MmuIntervalNotifier()
    mmu_interval_notifier_insert(sub, mm, 0x10000, 0x4000, rec)
    seq = mmu_interval_read_begin(sub)
    _inv(mm, 0x0, 0x10000)          # ends exactly at start: no overlap
    _inv(mm, 0x14000, 0x20000)      # starts exactly past last
    assert rec.calls == []
    subs = mm.notifier_subscriptions(create=False)
    assert subs is not None and subs.invalidate_seq == 2 and subs.invalidations == 2
    assert not mmu_interval_read_retry(sub, seq)
    _inv(mm, 0x13FFF & ~0xFFF, 0x14000)   # the last page
    assert len(rec.calls) == 1 and mmu_interval_read_retry(sub, seq)


def test_only_overlapping_subscriptions_are_called_in_address_order(mm: MmStruct) -> None:
    order: list[str] = []

    class Named(Recorder):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange,
                       cur_seq: int) -> bool:
            order.append(self.name)
            return super().invalidate(sub, rng, cur_seq)

    subs = [MmuIntervalNotifier() for _ in range(3)]
    mmu_interval_notifier_insert(subs[0], mm, 0x30000, 0x1000, Named("c"))
    mmu_interval_notifier_insert(subs[1], mm, 0x10000, 0x1000, Named("a"))
    mmu_interval_notifier_insert(subs[2], mm, 0x20000, 0x1000, Named("b"))
    _inv(mm, 0x0, 0x40000)
    assert order == ["a", "b", "c"]
    order.clear()
    _inv(mm, 0x20000, 0x21000)
    assert order == ["b"]


def test_insert_validates_arguments(mm: MmStruct) -> None:
    sub = MmuIntervalNotifier()
    with pytest.raises(DmaBufError) as e:
        mmu_interval_notifier_insert(sub, mm, 0x1000, 0, Recorder())
    assert e.value.errno == errno.EOVERFLOW
    with pytest.raises(DmaBufError) as e:
        mmu_interval_notifier_insert(sub, mm, (1 << 64) - 0x1000, 0x2000, Recorder())
    assert e.value.errno == errno.EOVERFLOW
    with pytest.raises(TypeError):
        mmu_interval_notifier_insert(sub, mm, 0x1000, 0x1000, object())
    mmu_interval_notifier_insert(sub, mm, 0x1000, 0x1000, Recorder())
    with pytest.raises(ContractViolation):
        mmu_interval_notifier_insert(sub, mm, 0x1000, 0x1000, Recorder())
    mmu_interval_notifier_remove(sub)
    with pytest.raises(ContractViolation):
        mmu_interval_notifier_remove(sub)
    with pytest.raises(ContractViolation):
        mmu_interval_read_begin(sub)
    mm.exit()
    with pytest.raises(DmaBufError) as e:
        mmu_interval_notifier_insert(MmuIntervalNotifier(), mm, 0x1000, 0x1000, Recorder())
    assert e.value.errno == errno.EINVAL


def test_insert_locked_requires_the_mmap_lock(mm: MmStruct) -> None:
    with pytest.raises(ContractViolation):
        mmu_interval_notifier_insert_locked(MmuIntervalNotifier(), mm, 0, 0x1000, Recorder())
    sub = MmuIntervalNotifier()
    with mm.write_locked():
        mmu_interval_notifier_insert_locked(sub, mm, 0, 0x1000, Recorder())
    assert sub.invalidate_seq == 1


def test_insert_during_invalidation_is_deferred_and_marks_the_new_sub_busy(
        mm: MmStruct) -> None:
    a = MmuIntervalNotifier()
    mmu_interval_notifier_insert(a, mm, 0x10000, 0x1000, Recorder())
    rng = MmuNotifierRange(mm, 0x10000, 0x11000)
    mmu_notifier_invalidate_range_start(rng)
    subs = mm.notifier_subscriptions(create=False)
    assert subs is not None and subs.invalidate_seq == 3
    b = MmuIntervalNotifier()
    rec_b = Recorder()
    mmu_interval_notifier_insert(b, mm, 0x10000, 0x1000, rec_b)
    assert b.deferred and not b.in_tree and b.invalidate_seq == 3
    mmu_notifier_invalidate_range_end(rng)
    assert b.in_tree and not b.deferred and subs.invalidate_seq == 4
    # the deferred sub's seq (3) differs from the idle mm seq: read_begin does not block
    assert mmu_interval_read_begin(b) == 3
    _inv(mm, 0x10000, 0x11000)
    assert rec_b.calls == [("MMU_NOTIFY_CLEAR", 0x10000, 0x11000, 5)]


def test_insert_while_a_non_overlapping_range_is_active_starts_invalidating(
        mm: MmStruct) -> None:
    rng = MmuNotifierRange(mm, 0x90000, 0x91000)
    mmu_interval_notifier_insert(MmuIntervalNotifier(), mm, 0x0, 0x1000, Recorder())
    mmu_notifier_invalidate_range_start(rng)          # overlaps nothing: seq stays even
    subs = mm.notifier_subscriptions(create=False)
    assert subs is not None and subs.invalidate_seq == 2
    b = MmuIntervalNotifier()
    mmu_interval_notifier_insert(b, mm, 0x50000, 0x1000, Recorder())
    assert subs.invalidate_seq == 3 and b.invalidate_seq == 3 and b.in_tree
    mmu_notifier_invalidate_range_end(rng)
    assert subs.invalidate_seq == 4


def test_remove_during_invalidation_waits_for_the_end() -> None:
    def scenario(m: Machine) -> None:
        phys = PhysMemory(m)
        phys.add_region("ram0", 16 * MiB, MemKind.RAM)
        mm = MmStruct(phys, name="p")
        sub = MmuIntervalNotifier()
        mmu_interval_notifier_insert(sub, mm, 0, 0x1000, Recorder())
        rng = MmuNotifierRange(mm, 0, 0x1000)
        mmu_notifier_invalidate_range_start(rng)
        done: list[bool] = []
        t = m.sched.spawn(lambda: (mmu_interval_notifier_remove(sub), done.append(True)),
                          name="remover")
        m.sched.sleep(1.0)               # virtual time: the remover is blocked by now
        assert not done and not t.done
        mmu_notifier_invalidate_range_end(rng)
        assert t.join(5.0) and done == [True]
        subs = mm.notifier_subscriptions(create=False)
        assert subs is not None and subs.itree == []

    replay(scenario, seed=0)


def test_read_begin_sleeps_while_its_range_is_being_invalidated() -> None:
    def scenario(m: Machine) -> int:
        phys = PhysMemory(m)
        phys.add_region("ram0", 16 * MiB, MemKind.RAM)
        mm = MmStruct(phys, name="p")
        rec = Recorder()
        sub = MmuIntervalNotifier()
        mmu_interval_notifier_insert(sub, mm, 0, 0x4000, rec)
        rng = MmuNotifierRange(mm, 0x1000, 0x2000)
        mmu_notifier_invalidate_range_start(rng)     # callback ran: sub seq == mm seq (odd)
        got: list[int] = []
        t = m.sched.spawn(lambda: got.append(mmu_interval_read_begin(sub)), name="reader")
        m.sched.sleep(1.0)
        assert not t.done and got == []              # still waiting for range_end
        mmu_notifier_invalidate_range_end(rng)
        assert t.join(5.0)
        assert got == [3]
        return got[0]

    assert replay(scenario, seed=3) == 3


def test_classic_notifier_start_end_release_and_nonblock(mm: MmStruct) -> None:
    log: list[str] = []

    class Ops(MmuNotifierOps):
        refuse = False

        def invalidate_range_start(self, sub: MmuNotifier, rng: MmuNotifierRange) -> int:
            log.append(f"start {rng.event.name} {rng.start:#x}")
            return -errno.EAGAIN if self.refuse else 0

        def invalidate_range_end(self, sub: MmuNotifier, rng: MmuNotifierRange) -> None:
            log.append(f"end {rng.start:#x}")

        def release(self, sub: MmuNotifier, m: MmStruct) -> None:
            log.append("release")

    ops = Ops()
    sub = MmuNotifier(ops)
    mmu_notifier_register(sub, mm)
    with pytest.raises(ContractViolation):
        mmu_notifier_register(sub, mm)
    a = mm.mmap(0x4000)
    mm.munmap(a, 0x4000)
    assert log == [f"start MMU_NOTIFY_UNMAP {a:#x}", f"end {a:#x}"]
    ops.refuse = True
    rng = MmuNotifierRange(mm, 0, 0x1000)
    with pytest.raises(DmaBufError) as e:
        mmu_notifier_invalidate_range_start_nonblock(rng)
    assert e.value.errno == errno.EAGAIN
    # a blockable range must not fail: the core WARNs and goes on
    log.clear()
    _inv(mm, 0, 0x1000)
    assert any(r == "mmu_notifier" for r, _ in mm.machine.warnings)
    assert log == ["start MMU_NOTIFY_CLEAR 0x0", "end 0x0"]
    mm.exit()
    assert log[-1] == "release"
    mmu_notifier_unregister(sub, mm)          # already released: no second release
    assert log.count("release") == 1


def test_interval_callback_refusing_a_nonblockable_range_gives_eagain(mm: MmStruct) -> None:
    sub = MmuIntervalNotifier()
    mmu_interval_notifier_insert(sub, mm, 0, 0x1000, Recorder(ret=False))
    with pytest.raises(DmaBufError) as e:
        mmu_notifier_invalidate_range_start_nonblock(MmuNotifierRange(mm, 0, 0x1000))
    assert e.value.errno == errno.EAGAIN
    subs = mm.notifier_subscriptions(create=False)
    assert subs is not None and subs.active_invalidate_ranges == 0
    assert subs.invalidate_seq == 4            # the failed range was ended by the core


def test_lockdep_catches_read_begin_under_the_user_lock(mm: MmStruct) -> None:
    user_lock = mm.machine.sched.lock("driver.user_lock")
    ld = mm.machine.lockdep

    class Driver:
        def invalidate(self, sub: MmuIntervalNotifier, rng: MmuNotifierRange,
                       cur_seq: int) -> bool:
            ld.acquire(user_lock, "driver.user_lock")
            with user_lock:
                mmu_interval_set_seq(sub, cur_seq)
            ld.release(user_lock, "driver.user_lock")
            return True

    sub = MmuIntervalNotifier()
    mmu_interval_notifier_insert(sub, mm, 0, 0x1000, Driver())
    _inv(mm, 0, 0x1000)               # records range_start -> user_lock
    ld.acquire(user_lock, "driver.user_lock")
    try:
        with pytest.raises(ContractViolation) as e:
            mmu_interval_read_begin(sub)   # user_lock -> range_start: circular
        assert e.value.rule == "lockdep_circular_locking"
    finally:
        ld.release(user_lock, "driver.user_lock")
