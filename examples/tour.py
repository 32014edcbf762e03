"""The README's tour, runnable: the wait-die back-off protocol explored under 200 interleavings.

Two threads lock the same two reservation objects in opposite orders — the classic ABBA. With
the ww_mutex protocol (back off on -EDEADLK, then lock_slow the contended lock) every
interleaving completes; the controlled scheduler tries 200 of them, each replayable by its seed.
"""

from __future__ import annotations

from dmabuf import Machine, WouldDeadlock
from dmabuf.lowlevel import DmaResv, WwAcquireCtx, explore, reservation_ww_class


def lock_all(m: Machine, objs: list[DmaResv]) -> None:
    """Lock every object with back-off, as drm_exec / ttm_eu_reserve_buffers do."""
    ctx = WwAcquireCtx(reservation_ww_class(m), machine=m)
    held: list[DmaResv] = []
    slow: DmaResv | None = None  # taken with lock_slow after the last back-off
    while True:
        failed: DmaResv | None = None
        try:
            for obj in objs:
                if obj is slow:
                    continue
                failed = obj
                obj.lock(ctx)
                held.append(obj)
            break
        except WouldDeadlock:  # -EDEADLK: an older transaction holds `failed`
            for obj in held:
                obj.unlock()
            assert failed is not None
            failed.lock_slow(ctx)  # sleep until it is ours, holding nothing else
            held, slow = [failed], failed
    ctx.done()
    for obj in held:
        obj.unlock()
    ctx.fini()


def scenario(m: Machine) -> None:
    a, b = DmaResv(m), DmaResv(m)
    t1 = m.sched.spawn(lock_all, m, [a, b], name="t1")
    t2 = m.sched.spawn(lock_all, m, [b, a], name="t2")
    assert t1.join(10.0) and t2.join(10.0)
    t1.result()
    t2.result()


if __name__ == "__main__":
    result = explore(scenario, seeds=200)
    print(f"{result.seeds} interleavings, {result.switches} thread switches, no deadlock")
