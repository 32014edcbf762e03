"""Tests of dmabuf.devices.platform (Platform) and dmabuf.devices.base (Device, WorkQueue)."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from dmabuf.buf.dma_engine import DmaFaultLog
from dmabuf.devices import Device, DeviceFenceOps, Platform, WorkQueue
from dmabuf.dma import IommuDomainType, PciP2pdmaMapType
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm import PAGE_SIZE, MemKind
from dmabuf.pci.topology import PciDev
from dmabuf.sched import explore
from dmabuf.sync.sw_sync import SwSyncTimeline
from dmabuf.testing.paths import sysfs_roots_dir

GiB = 1 << 30
MiB = 1 << 20
FIXTURES = sysfs_roots_dir()
NEEDS_FIXTURES = pytest.mark.skipif(not FIXTURES.is_dir(),
                                    reason="shared sysfs fixture roots not present")


# --------------------------------------------------------------------------- construction


def test_default_platform_layout(machine: Machine) -> None:
    p = Platform(ram_size=8 * GiB)
    assert p.machine is machine
    assert p.fabric is p.topology
    # one RAM region on node 0, above the PCI hole, not overlapping any BAR
    assert list(p.ram) == [0]
    ram = p.ram[0]
    assert (ram.name, ram.kind, ram.base, ram.size) == ("ram0", MemKind.RAM, 4 * GiB, 8 * GiB)
    for r in p.bars.values():
        assert r.kind is MemKind.MMIO
        assert not (r.base < ram.end and ram.base < r.end)
    assert p.bars["0000:03:00.0 BAR1"].base == 0x100_0000_0000
    assert p.bars["0000:03:00.0 BAR1"].size == 64 * GiB
    assert len(p.bars) == 14
    # one DMA view per PCI function, named by BDF, 32-bit mask until a driver probes
    assert len(p.dma_devices) == len(p.topology) == 19
    nic = p.dma_device("nic0")
    assert nic.name == "0000:04:00.0" and nic.dma_mask == (1 << 32) - 1
    assert nic.iommu is not None and nic.iommu.name == "group 11"
    assert nic.iommu.type is IommuDomainType.DMA_FQ
    assert p.dma_device("0000:04:00.0") is nic
    assert p.iommu is not None and p.iommu.default_type is IommuDomainType.DMA_FQ
    d = p.describe()
    assert d["iommu"] == "dma-fq" and d["ram"][0]["size"] == 8 * GiB and d["drivers"] == {}


@pytest.mark.parametrize(("mode", "dtype", "direct"), [
    ("off", None, True), (None, None, True), ("strict", IommuDomainType.DMA, False),
    ("lazy", IommuDomainType.DMA_FQ, False), ("passthrough", IommuDomainType.IDENTITY, True),
    (IommuDomainType.DMA, IommuDomainType.DMA, False),
])
def test_iommu_modes(mode: object, dtype: IommuDomainType | None, direct: bool) -> None:
    p = Platform(iommu=mode)  # type: ignore[arg-type]
    dev = p.dma_device("gpu0")
    assert dev.dma_direct is direct
    if dtype is None:
        assert p.iommu is None and dev.iommu is None
    else:
        assert dev.iommu is not None and dev.iommu.type is dtype


def test_bad_platform_arguments() -> None:
    with pytest.raises(DmaBufError) as e:
        Platform(ram_size=0)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        Platform(ram_size=GiB + 1)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        Platform(ram_size="1G")  # type: ignore[arg-type]
    with pytest.raises(DmaBufError) as e:
        Platform(iommu="sometimes")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        Platform(iommu=IommuDomainType.UNMANAGED)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        Platform("/nonexistent/topology.toml")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(TypeError):
        Platform(42)  # type: ignore[arg-type]


@NEEDS_FIXTURES
def test_platform_on_sysfs_fixture() -> None:
    p = Platform(FIXTURES / "a_switch_intel" / "root", ram_size=GiB)
    assert p.topology.source.startswith("sysfs:")
    assert len(p.dma_devices) == len(p.topology) == 14
    # no IOMMU groups captured: every function does dma-direct even with iommu="lazy"
    assert all(d.dma_direct for d in p.dma_devices.values())
    ram = p.ram[next(iter(p.ram))]
    assert ram.base == 4 * GiB
    assert "0000:04:00.0 BAR2" in p.bars and p.bars["0000:04:00.0 BAR2"].size == 16 * MiB
    # the captured decisions: same switch BUS_ADDR, across root ports NOT_SUPPORTED (Intel)
    assert p.fabric.p2p_map_type("0000:04:00.0", "0000:03:00.0") is PciP2pdmaMapType.BUS_ADDR
    assert p.fabric.p2p_map_type("0000:05:00.0", "0000:03:00.0") is \
        PciP2pdmaMapType.NOT_SUPPORTED
    dev = p.bind(Device, "0000:03:00.0")
    assert dev.name == "0000:03:00.0" and dev.dma.dma_mask == (1 << 64) - 1
    # a real DMA round trip through system RAM
    owner, pages = p.alloc_ram(64 * 1024, "host buffer", max_extent=PAGE_SIZE)
    dma = dev.dma.map_ranges(pages, 0)
    data = np.arange(64 * 1024, dtype=np.uint32).view(np.uint8)[:64 * 1024]
    dev.dma_write(dma, data, owner=owner)
    assert np.array_equal(p.phys.read(pages), data)
    assert np.array_equal(dev.dma_read(dma, owner=owner), data)
    dev.dma.unmap_ranges(dma, 0)
    p.free_ram(pages)
    p.close()


@NEEDS_FIXTURES
def test_platform_on_sysfs_fixture_with_iommu_groups() -> None:
    p = Platform(str(FIXTURES / "g_iommu_intel" / "root"), ram_size=GiB, iommu="strict")
    dev = p.dma_device("0000:04:00.0")
    assert dev.iommu is not None and dev.iommu.name == "group 9"
    assert dev.iommu.type is IommuDomainType.DMA
    # two functions of one group share the domain
    assert p.dma_device("0000:06:00.0").iommu is p.dma_device("0000:06:00.1").iommu


# --------------------------------------------------------------------------- binding


def test_bind_lookup_unbind(machine: Machine) -> None:
    p = Platform()
    assert p.pci_dev("nic0").driver == "mlx5_core"
    with machine.trace.record("driver_") as events:
        nic = p.bind(Device, "nic0")
    assert [e.name for e in events] == ["driver_bind"]
    assert isinstance(nic, Device) and nic.name == "nic0" and nic.bdf == "0000:04:00.0"
    assert p.device("nic0") is nic and p.device("0000:04:00.0") is nic
    assert p.pci_dev("nic0").driver == "pci-device"
    assert list(p.devices) == ["nic0"] and list(p) == [nic]
    assert nic.dma.dma_mask == (1 << 64) - 1 and nic.dma.coherent_dma_mask == (1 << 64) - 1
    named = p.bind(Device, "nic1", name="rdma1")
    assert named.name == "rdma1" and p.device("nic1") is named
    p.unbind("nic0")
    assert nic.removed and p.pci_dev("nic0").driver == "mlx5_core"
    with pytest.raises(DmaBufError) as e:
        p.device("nic0")
    assert e.value.errno == errno.ENODEV
    again = p.bind(Device, "nic0")          # free to bind again
    assert again is not nic
    p.close()
    assert p.closed and again.removed and named.removed
    p.close()                               # idempotent
    with pytest.raises(DmaBufError) as e:
        p.bind(Device, "nic0")
    assert e.value.errno == errno.ENODEV


def test_bind_errors() -> None:
    with Platform() as p:
        with pytest.raises(DmaBufError) as e:
            p.bind(Device, "no-such-device")
        assert e.value.errno == errno.ENODEV and "candidates" in str(e.value)
        with pytest.raises(DmaBufError) as e:
            p.bind(Device, "dsp0")          # a switch port
        assert e.value.errno == errno.ENODEV and "endpoints" in str(e.value)
        p.bind(Device, "nvme0")
        with pytest.raises(DmaBufError) as e:
            p.bind(Device, "nvme0")
        assert e.value.errno == errno.EBUSY
        with pytest.raises(TypeError):
            p.bind(object, "nvme1")  # type: ignore[type-var]
        with pytest.raises(DmaBufError) as e:
            p.device("nvme1")
        assert e.value.errno == errno.ENODEV

        class NetOnly(Device):
            driver_name = "netonly"
            class_codes = (0x02,)

        with pytest.raises(DmaBufError) as e:
            p.bind(NetOnly, "nvme1")
        assert e.value.errno == errno.ENODEV and "0x02" in str(e.value)
        assert p.bind(NetOnly, "nic1").driver_name == "netonly"


def test_failed_probe_leaves_nothing_bound() -> None:
    seen: list[str | None] = []

    class Broken(Device):
        driver_name = "broken"

        def __init__(self, platform: Platform, pdev: PciDev, **kw: object) -> None:
            seen.append(pdev.driver)           # really_probe(): dev->driver set before probe
            raise DmaBufError(errno.EIO, "firmware did not load")

    p = Platform()
    with pytest.raises(DmaBufError) as e:
        p.bind(Broken, "nic0")
    assert e.value.errno == errno.EIO and seen == ["broken"]
    assert p.devices == {} and p.pci_dev("nic0").driver == "mlx5_core"
    assert p.bind(Device, "nic0").name == "nic0"
    p.close()


def test_ram_allocation_helpers() -> None:
    p = Platform(ram_size=GiB)
    owner, pages = p.alloc_ram(3 * PAGE_SIZE + 1, "buf", node=0, zero=True)
    assert int(pages["len"].sum()) == 4 * PAGE_SIZE
    assert set(p.phys.owners_of(pages).tolist()) == {owner}
    assert not p.phys.read(pages).any()
    with pytest.raises(DmaBufError) as e:
        p.alloc_ram(PAGE_SIZE, "x", node=7)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        p.alloc_ram(2 * GiB, "too big")
    assert e.value.errno == errno.ENOMEM
    p.free_ram(pages)
    assert set(p.phys.owners_of(pages).tolist()) == {-1}


# --------------------------------------------------------------------------- device DMA


def test_device_dma_faults_are_recorded(machine: Machine) -> None:
    p = Platform()
    nic = p.bind(Device, "nic0")
    owner, pages = p.alloc_ram(2 * PAGE_SIZE, "rx ring")
    dma = nic.dma.map_ranges(pages, 0)
    nic.dma_fill(dma, 0x5A, owner=owner)
    assert nic.dma_checksum(dma, owner=owner) == p.phys.checksum(pages)
    nic.dma.unmap_ranges(dma, 0)
    nic.dma.iommu.flush_queue()  # type: ignore[union-attr]
    with pytest.raises(IommuFault) as f:
        nic.dma_read(dma, owner=owner)
    assert f.value.errno == errno.EFAULT and f.value.device == "0000:04:00.0"
    assert len(nic.faults) == 1 and nic.faults[0].op == "read"
    assert len(machine.state(DmaFaultLog)) == 1
    # a page freed (poisoned) behind a live mapping faults on the ownership check
    dma = nic.dma.map_ranges(pages, 0)
    p.free_ram(pages)
    with pytest.raises(IommuFault) as f:
        nic.dma_read(dma, owner=owner)
    assert "poisoned" in str(f.value)
    assert len(nic.faults) == 2


# --------------------------------------------------------------------------- work queues


def test_work_queue_fences_and_order(machine: Machine) -> None:
    p = Platform()

    class TwoRings(Device):
        driver_name = "tworings"
        rings = ("gfx", "copy")

    dev = p.bind(TwoRings, "gpu1")
    gfx, copy = dev.queue("gfx"), dev.queue("copy")
    assert dev.queue() is gfx and isinstance(gfx, WorkQueue)
    assert gfx.context != copy.context
    assert gfx.timeline_name == "gpu1.gfx" and copy.timeline_name == "gpu1.copy"
    order: list[int] = []
    fences = [dev.submit(lambda i=i: order.append(i), ring="gfx", name=f"j{i}")  # type: ignore[misc]
              for i in range(5)]
    assert [f.seqno for f in fences] == [1, 2, 3, 4, 5]
    assert all(f.context == gfx.context for f in fences)
    for f in fences:
        assert f.wait_timeout(False, 10.0) > 0
    assert order == [0, 1, 2, 3, 4]
    f = fences[0]
    assert f.get_status() == 1
    assert isinstance(gfx.ops, DeviceFenceOps)
    assert gfx.ops.get_driver_name(f) == "tworings" and gfx.ops.get_timeline_name(f) == "gpu1.gfx"
    assert gfx.wait_idle(10.0) and gfx.completed == 5 and gfx.failed == 0 and gfx.pending == 0
    with pytest.raises(DmaBufError) as e:
        dev.queue("compute")
    assert e.value.errno == errno.EINVAL
    p.close()
    with pytest.raises(DmaBufError) as e:
        dev.submit(lambda: None)
    assert e.value.errno == errno.ENODEV


def test_work_queue_dependencies_and_errors(machine: Machine) -> None:
    p = Platform()
    dev = p.bind(Device, "nic0")
    tl = SwSyncTimeline("test", machine=machine)
    gate = tl.create_fence(1)
    ran: list[str] = []
    f1 = dev.submit(lambda: ran.append("after-gate"), deps=[gate])
    assert not f1.wait_timeout(False, 0.05) and ran == []       # blocked on the sw_sync fence
    tl.inc(1)
    assert f1.wait_timeout(False, 10.0) > 0 and ran == ["after-gate"]

    def io_error() -> None:
        raise DmaBufError(errno.EIO, "device timeout")

    bad = dev.submit(io_error)
    assert bad.wait_timeout(False, 10.0) > 0 and bad.error == -errno.EIO
    # the error propagates to a dependent job, whose body does not run
    dep = dev.submit(lambda: ran.append("never"), deps=[bad])
    assert dep.wait_timeout(False, 10.0) > 0 and dep.error == -errno.EIO
    # ... unless the job runs whatever happened before (memory management jobs)
    mm = dev.submit(lambda: ran.append("moved"), deps=[bad], propagate_errors=False)
    assert mm.wait_timeout(False, 10.0) > 0 and mm.error == 0
    assert ran == ["after-gate", "moved"]

    def bug() -> None:
        raise KeyError("oops")

    b = dev.submit(bug, name="buggy")
    assert b.wait_timeout(False, 10.0) > 0 and b.error == -errno.EIO
    q = dev.queue()
    assert len(q.exceptions) == 1 and isinstance(q.exceptions[0], KeyError)
    assert machine.warnings[-1][0] == "device_job" and "buggy" in machine.warnings[-1][1]
    assert q.failed == 3 and q.completed == 2
    with pytest.raises(TypeError):
        dev.submit("not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        dev.submit(lambda: None, deps=["x"])  # type: ignore[list-item]
    with pytest.raises(DmaBufError) as e:
        dev.submit(lambda: None, duration=-1)
    assert e.value.errno == errno.EINVAL
    tl.close()
    p.close()


def test_job_body_runs_in_signalling_section(machine: Machine) -> None:
    """A job body that waits for a fence is a lockdep violation (run_job may not wait)."""
    p = Platform()
    dev = p.bind(Device, "nic0")
    tl = SwSyncTimeline("t", machine=machine)
    other = tl.create_fence(1)
    f = dev.submit(lambda: other.wait_timeout(False, 0))
    assert f.wait_timeout(False, 10.0) > 0 and f.error == -errno.EIO
    assert "dma_fence_begin_signalling" in str(dev.queue().exceptions[0])
    tl.close()
    p.close()


def test_work_queue_under_controlled_scheduler() -> None:
    """Jobs, dependencies and simulated durations in virtual time, explored over seeds."""

    def scenario(m: Machine) -> None:
        p = Platform(machine=m)
        dev = p.bind(Device, "nic0")
        seen: list[int] = []
        t0 = m.sched.now()
        fs = [dev.submit(lambda i=i: seen.append(i), duration=0.001)  # type: ignore[misc]
              for i in range(3)]
        last = dev.submit(lambda: seen.append(99), deps=fs)
        assert last.wait_timeout(False, 5.0) > 0
        assert seen == [0, 1, 2, 99]
        assert m.sched.now() - t0 >= 0.003 - 1e-9       # three jobs of 1 ms each
        assert [f.get_status() for f in fs] == [1, 1, 1]
        p.close()

    res = explore(scenario, 6)
    assert res.seeds == 6 and res.virtual_time > 0


def test_idle_worker_exits_and_restarts(machine: Machine) -> None:
    p = Platform()
    dev = p.bind(Device, "nic0")
    q = dev.queue()
    assert dev.submit(lambda: 1).wait_timeout(False, 10.0) > 0
    # after idle_timeout the worker exits; the next submit starts another
    for t in list(q._tasks):
        assert t.join(5.0)
    assert dev.submit(lambda: 2).wait_timeout(False, 10.0) > 0
    assert q.completed == 2
    p.close()
