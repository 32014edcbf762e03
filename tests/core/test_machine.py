"""Machine: kernel globals per machine, current machine, per-layer state, WARN log."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.errors import DmaBufError, IommuFault, WouldDeadlock, errno_name
from dmabuf.machine import Machine, current_machine


def test_fence_contexts_start_at_one_and_are_per_machine() -> None:
    m1, m2 = Machine(), Machine()
    assert m1.fence_context_alloc(1) == 1
    assert m1.fence_context_alloc(3) == 2
    assert m1.fence_context_alloc(1) == 5
    assert m2.fence_context_alloc(1) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_fence_context_alloc_bad_input(bad: object) -> None:
    with pytest.raises(DmaBufError) as ei:
        Machine().fence_context_alloc(bad)  # type: ignore[arg-type]
    assert ei.value.errno == errno.EINVAL


def test_current_machine_nesting(machine: Machine) -> None:
    assert current_machine() is machine
    other = Machine(name="other")
    with other:
        assert current_machine() is other
    assert current_machine() is machine


def test_state_registry_is_per_machine() -> None:
    class Registry:
        def __init__(self, m: Machine) -> None:
            self.m = m

    m1, m2 = Machine(), Machine()
    r1 = m1.state(Registry)
    assert m1.state(Registry) is r1 and r1.m is m1
    assert m2.state(Registry) is not r1


def test_warn_log_and_trace() -> None:
    m = Machine()
    with m.trace.record("warn") as evs:
        m.warn("dma_buf_release", "attachments remain")
    assert m.warnings == [("dma_buf_release", "attachments remain")]
    assert [e.fields["rule"] for e in evs] == ["dma_buf_release"]


def test_rng_streams_are_seeded() -> None:
    a = Machine(seed=5).rng("p2p").integers(0, 1 << 30, 4)
    b = Machine(seed=5).rng("p2p").integers(0, 1 << 30, 4)
    c = Machine(seed=6).rng("p2p").integers(0, 1 << 30, 4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_errors_carry_errno_and_read_well() -> None:
    e = DmaBufError(-errno.EINVAL, "size must be page aligned")
    assert e.errno == errno.EINVAL and isinstance(e, OSError)
    assert str(e) == "[EINVAL] size must be page aligned"
    assert WouldDeadlock().errno == errno.EDEADLK
    f = IommuFault("unmapped IOVA 0x1000", dma_addr=0x1000, device="0000:03:00.0")
    assert f.errno == errno.EFAULT and f.dma_addr == 0x1000
    assert errno_name(512) == "ERESTARTSYS" and errno_name(-errno.ENODEV) == "ENODEV"
    import pickle

    g = pickle.loads(pickle.dumps(f))
    assert isinstance(g, IommuFault) and g.dma_addr == 0x1000


def test_two_threads_enter_one_machine_and_leave_out_of_order() -> None:
    import threading

    m = Machine(name="shared")
    entered = [threading.Event(), threading.Event()]
    leave = [threading.Event(), threading.Event()]
    seen: list[object] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with m:
                entered[i].set()
                assert leave[i].wait(5.0)
                seen.append(current_machine())
        except BaseException as e:  # reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in ts:
        t.start()
    assert entered[0].wait(5.0) and entered[1].wait(5.0)
    leave[1].set()          # the second to enter leaves first
    leave[0].set()
    for t in ts:
        t.join(5.0)
        assert not t.is_alive()
    assert errors == [] and seen == [m, m]


def test_leaving_a_machine_never_entered_is_a_violation() -> None:
    from dmabuf.errors import ContractViolation

    with pytest.raises(ContractViolation, match="did not enter"):
        Machine().__exit__(None, None, None)
