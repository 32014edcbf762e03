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
