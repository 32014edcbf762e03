"""Port of drivers/dma-buf/st-dma-fence-chain.c (KUnit suite ``dma-buf-fence-chain``).

Mocks as in the kernel file: ``mock_fence()`` has an external per-fence lock and a ``release``
op (so its ops do not detach on signal), context 0, seqno 0; ``mock_chain(prev, fence, seqno)``
is ``dma_fence_chain_init(chain, get(prev), get(fence), seqno)``; ``fence_chains_init()`` builds
``count`` nodes and enables signalling on each.

Sizes: the kernel uses CHAIN_SZ = 4096 everywhere. The wait tests keep 4096 for the forward
and random orders; the backward order makes every node re-walk the chain (quadratic work, fine in
C, minutes in Python), so it uses 512 — the same code paths at a smaller size. test_find_race
runs for 1 s instead of up to 5 s. The wait tests and the race also run under the controlled
scheduler over many seeds, with smaller chains.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable

from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.sched import explore
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps
from dmabuf.sync.dma_fence_chain import DmaFenceChain, dma_fence_chain_find_seqno

CHAIN_SZ = 4 << 10
CHAIN_SZ_QUADRATIC = 512
SEEDS = 30


class MockOps(DmaFenceOps):
    """mock_ops: names + release (kmem_cache_free); release keeps the ops attached."""

    def __init__(self) -> None:
        super().__init__("mock", "mock")
        self.released = 0

    def release(self, fence: DmaFence) -> None:
        self.released += 1


def mock_fence(m: Machine) -> DmaFence:
    """mock_fence(): external per-fence spinlock, context 0, seqno 0."""
    return DmaFence(MockOps(), 0, 0, lock=m.sched.lock("mock_fence.lock"), machine=m)


def mock_chain(prev: DmaFence | None, fence: DmaFence, seqno: int) -> DmaFenceChain:
    """mock_chain(): dma_fence_chain_init(f, dma_fence_get(prev), dma_fence_get(fence), seqno)."""
    return DmaFenceChain(prev.get() if prev is not None else None, fence.get(), seqno)


def seqno_inc(i: int) -> int:
    return i + 1


def seqno_inc2(i: int) -> int:
    return 2 * i + 2


class FenceChains:
    """struct fence_chains + fence_chains_init() / fence_chains_fini()."""

    def __init__(self, m: Machine, count: int, seqno_fn: Callable[[int], int]) -> None:
        self.fences: list[DmaFence] = []
        self.chains: list[DmaFenceChain] = []
        self.tail: DmaFenceChain | None = None
        for i in range(count):
            f = mock_fence(m)
            self.fences.append(f)
            c = mock_chain(self.tail, f, seqno_fn(i))
            self.chains.append(c)
            self.tail = c
            c.enable_sw_signaling()
        self.chain_length = count

    def get_tail(self) -> DmaFence:
        assert self.tail is not None
        return self.tail.get()

    def fini(self) -> None:
        for f in self.fences:
            f.signal()
            f.put()
        for c in self.chains:
            c.put()


def find(fence: DmaFence, seqno: int) -> tuple[int, DmaFence | None]:
    """dma_fence_chain_find_seqno(&fence, seqno) as (err, fence): the kernel's calling shape."""
    try:
        return 0, dma_fence_chain_find_seqno(fence, seqno)
    except DmaBufError as e:
        return -e.errno, fence


def put(f: DmaFence | None) -> None:
    if f is not None:
        f.put()


def test_sanitycheck(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_sanitycheck(): chain(NULL, f, 1), enable, signal, put."""
    f = mock_fence(machine)
    chain = mock_chain(None, f, 1)
    chain.enable_sw_signaling()
    f.signal()
    f.put()
    assert chain.is_signaled()
    chain.put()
    assert chain.refcount == 0 and f.refcount == 0


def test_find_seqno(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_find_seqno(): find each point, self, future and previous."""
    fc = FenceChains(machine, 64, seqno_inc)
    try:
        err, fence = find(fc.get_tail(), 0)
        put(fence)
        assert err == 0, f"Reported {err} for find_seqno(0)!"
        assert fence is fc.tail
        for i in range(fc.chain_length):
            err, fence = find(fc.get_tail(), i + 1)
            put(fence)
            assert err == 0, f"Reported {err} for find_seqno({fc.chain_length + 1}:{i + 1})!"
            assert fence is fc.chains[i], "Incorrect fence reported by find_seqno"

            assert fence is not None
            err, fence = find(fence.get(), i + 1)
            put(fence)
            assert err == 0, "Error reported for finding self"
            assert fence is fc.chains[i], "Incorrect fence reported by find self"

            assert fence is not None
            err, fence = find(fence.get(), i + 2)
            put(fence)
            assert err == -errno.EINVAL, f"Error not reported for future fence: {i + 1}:{i + 2}"

            assert fence is not None
            err, fence = find(fence.get(), i)
            put(fence)
            assert err == 0, "Error reported for previous fence!"
            if i > 0:
                assert fence is fc.chains[i - 1], f"Incorrect fence by find_seqno({i + 1}:{i})"
    finally:
        fc.fini()


def test_find_signaled(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_find_signaled(): a completed point gives NULL or chains[0]."""
    fc = FenceChains(machine, 2, seqno_inc)
    try:
        fc.fences[0].signal()
        err, fence = find(fc.get_tail(), 1)
        put(fence)
        assert err == 0, f"Reported {err} for find_seqno()!"
        assert fence is None or fence is fc.chains[0], \
            f"Incorrect chain-fence.seqno:{fence.seqno if fence else 0} for completed seqno:1"
    finally:
        fc.fini()


def test_find_out_of_order(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_find_out_of_order(): waiting for 2 means waiting for 1."""
    fc = FenceChains(machine, 3, seqno_inc)
    try:
        fc.fences[1].signal()
        err, fence = find(fc.get_tail(), 2)
        put(fence)
        assert err == 0, f"Reported {err} for find_seqno()!"
        assert fence is fc.chains[0], \
            f"Incorrect chain-fence.seqno:{fence.seqno if fence else 0} for completed seqno:2"
    finally:
        fc.fini()


def test_find_gap(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_find_gap(): seqnos 2,4,…; an odd point maps to the next node."""
    fc = FenceChains(machine, 64, seqno_inc2)
    try:
        for i in range(fc.chain_length):
            err, fence = find(fc.get_tail(), 2 * i + 1)
            put(fence)
            assert err == 0, f"Reported {err} for find_seqno({2 * i + 1})!"
            assert fence is fc.chains[i], f"Incorrect fence by find_seqno({2 * i + 1})"
            assert fence is not None
            err, fence = find(fence.get(), 2 * i + 2)
            put(fence)
            assert err == 0, "Error reported for finding self"
            assert fence is fc.chains[i], "Incorrect fence reported by find self"
    finally:
        fc.fini()


def _find_race_worker(fc: FenceChains, rng: random.Random, should_stop: Callable[[], bool],
                      max_iter: int | None, m: Machine) -> int:
    """__find_race(): find random points while signalling random fences."""
    it = 0
    while not should_stop() and (max_iter is None or it < max_iter):
        it += 1
        fence: DmaFence | None = fc.get_tail()
        seqno = rng.randint(1, fc.chain_length)
        assert fence is not None
        err, fence = find(fence, seqno)
        if err:
            put(fence)
            raise AssertionError(f"Failed to find fence seqno:{seqno}")
        if fence is not None:
            if fence.seqno == seqno:
                err, fence = find(fence, seqno)
                if err:
                    put(fence)
                    raise AssertionError(f"Reported an invalid fence for find-self:{seqno}")
            put(fence)
        fc.fences[rng.randrange(fc.chain_length - 1)].signal()
        m.sched.checkpoint("cond_resched")
    return it


def test_find_race(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_find_race(): concurrent find_seqno while fences signal.

    Free mode: 2 threads (kernel: one per online CPU) on a 4096-node chain for 1 s. Controlled
    mode: 2 threads, 64 nodes, 40 iterations each, over many seeds.
    """
    fc = FenceChains(machine, CHAIN_SZ, seqno_inc)
    try:
        stop = machine.sched.event("kthread_should_stop")
        tasks = [machine.sched.spawn(_find_race_worker, fc, random.Random(i), stop.is_set, None,
                                     machine, name=f"dmabuf/{i}") for i in range(2)]
        stop.wait(1.0)  # the run's duration (the kernel waits up to 5 s), not a synchronisation
        stop.set()
        assert all(t.join(30.0) for t in tasks), "find_race thread did not stop"
        iterations = [t.result() for t in tasks]
        assert all(n > 0 for n in iterations)
        completed = sum(1 for f in fc.fences if f.is_signaled())
        assert 0 < completed <= CHAIN_SZ - 1
    finally:
        fc.fini()

    def scenario(m: Machine) -> None:
        fc = FenceChains(m, 64, seqno_inc)
        rng = m.rng("find_race")
        tasks = [m.sched.spawn(_find_race_worker, fc, random.Random(int(rng.integers(1 << 30))),
                               lambda: False, 40, m) for _ in range(2)]
        assert all(t.join(60.0) for t in tasks)
        assert [t.result() for t in tasks] == [40, 40]
        fc.fini()

    explore(scenario, SEEDS)


def test_signal_forward(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_signal_forward(): node i signals with fence i, not before."""
    fc = FenceChains(machine, 64, seqno_inc)
    try:
        for i in range(fc.chain_length):
            fc.fences[i].signal()
            assert fc.chains[i].is_signaled(), f"chain[{i}] not signaled!"
            if i + 1 < fc.chain_length:
                assert not fc.chains[i + 1].is_signaled(), f"chain[{i}] is signaled!"
    finally:
        fc.fini()


def test_signal_backward(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_signal_backward(): nodes wait for all earlier fences."""
    fc = FenceChains(machine, 64, seqno_inc)
    try:
        for i in range(fc.chain_length - 1, -1, -1):
            fc.fences[i].signal()
            if i > 0:
                assert not fc.chains[i].is_signaled(), f"chain[{i}] is signaled!"
        for i in range(fc.chain_length):
            assert fc.chains[i].is_signaled(), f"chain[{i}] was not signaled!"
    finally:
        fc.fini()


def _wait_fence_chains(fc: FenceChains) -> int:
    """__wait_fence_chains(): dma_fence_wait(tail) must return 0, else -EIO."""
    assert fc.tail is not None
    try:
        fc.tail.wait(False)
    except DmaBufError:
        return -errno.EIO
    return 0


def _wait_test(m: Machine, count: int, order: str, rng: random.Random) -> None:
    fc = FenceChains(m, count, seqno_inc)
    try:
        if order == "random":  # randomise_fences(): Fisher-Yates
            for c in range(fc.chain_length - 1, 0, -1):
                swp = rng.randrange(c + 1)
                fc.fences[c], fc.fences[swp] = fc.fences[swp], fc.fences[c]
        tsk = m.sched.spawn(_wait_fence_chains, fc, name="dmabuf/wait")
        m.sched.checkpoint("yield_to")
        seq = fc.fences if order != "backward" else list(reversed(fc.fences))
        for f in seq:
            f.signal()
        assert tsk.join(60.0), "waiter did not finish"  # kthread_stop_put()
        assert tsk.result() == 0
        assert fc.tail is not None and fc.tail.is_signaled()
    finally:
        fc.fini()


def test_wait_forward(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_wait_forward(): a waiter on the tail, fences signalled in order.

    Free mode with 4096 nodes; controlled mode with 32 nodes over many seeds.
    """
    _wait_test(machine, CHAIN_SZ, "forward", random.Random(0))
    explore(lambda m: _wait_test(m, 32, "forward", random.Random(1)), SEEDS)


def test_wait_backward(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_wait_backward(): fences signalled in reverse order.

    Free mode with 512 nodes (quadratic re-walks); controlled mode with 32 nodes, many seeds.
    """
    _wait_test(machine, CHAIN_SZ_QUADRATIC, "backward", random.Random(0))
    explore(lambda m: _wait_test(m, 32, "backward", random.Random(1)), SEEDS)


def test_wait_random(machine: Machine) -> None:
    """st-dma-fence-chain.c, test_wait_random(): fences signalled in a shuffled order.

    Free mode with 4096 nodes; controlled mode with 32 nodes and a per-machine seeded shuffle.
    """
    _wait_test(machine, CHAIN_SZ, "random", random.Random(0))

    def scenario(m: Machine) -> None:
        _wait_test(m, 32, "random", random.Random(int(m.rng("shuffle").integers(1 << 30))))

    explore(scenario, SEEDS)
