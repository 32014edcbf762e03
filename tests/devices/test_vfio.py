"""Tests of dmabuf.devices.vfio: VFIO PCI MMIO dma-buf export, attach rules and revoke."""

from __future__ import annotations

import errno
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from dmabuf.buf.dma_buf import DmaBuf, DmaBufAttachOps
from dmabuf.buf.file import current_process
from dmabuf.buf.sg_table import SG_DMA_BUS_ADDRESS, SgTable
from dmabuf.devices import Device, Platform
from dmabuf.devices.iommufd import IommufdCtx
from dmabuf.devices.vfio import (
    PCI_COMMAND_MEMORY,
    PCI_D0,
    PCI_D3HOT,
    VFIO_DEVICE_FEATURE_DMA_BUF,
    VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_PROBE,
    VFIO_DEVICE_FEATURE_SET,
    VfioDeviceFeatureDmaBuf,
    VfioPciDevice,
)
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm.ranges import RANGE_DTYPE
from dmabuf.sched import explore
from dmabuf.sync.dma_fence import DmaFence
from dmabuf.sync.dma_resv import DmaResvUsage

KiB = 1 << 10
MiB = 1 << 20
BIDI = 0
BAR = 3          # gpu1's 32 MiB prefetchable BAR (device memory: survives a reset)
REGS = 0         # gpu1's 16 MiB register BAR (cleared by a reset)


class Importer:
    """A dynamic, revocable P2P importer on a :class:`Device` (the test's "NIC").

    It maps on demand, keeps the DMA addresses the hardware would hold (``hw``), publishes a
    BOOKKEEP fence for every DMA job, and on ``invalidate_mappings`` lets its in-flight DMA
    retire and unmaps — synchronously in the callback, or from a worker thread (``async_unmap``).
    ``ignore`` makes it a buggy importer that never unmaps.
    """

    def __init__(self, dev: Device, buf: DmaBuf, *, async_unmap: bool = False,
                 ignore: bool = False, p2p: bool = True, revocable: bool = True) -> None:
        self.dev = dev
        self.buf = buf
        self.async_unmap = async_unmap
        self.ignore = ignore
        self.table: SgTable | None = None
        self.hw: np.ndarray | None = None
        self.last: DmaFence | None = None
        self.invalidations = 0
        self.tasks: list[Any] = []
        ops = DmaBufAttachOps(p2p, invalidate_mappings=self._invalidate if revocable else None)
        self.attach = buf.dynamic_attach(dev.dma, ops, self)

    def _invalidate(self, attach: Any) -> None:       # resv held
        self.invalidations += 1
        t, self.table = self.table, None
        if t is None or self.ignore:
            if self.ignore:
                self.table = t
            return
        last = self.last.get() if self.last is not None else None
        if not self.async_unmap:
            if last is not None:
                last.wait(False)
                last.put()
            attach.unmap(t, BIDI)
            return

        def unmapper() -> None:
            if last is not None:
                last.wait(False)
                last.put()
            self.buf.resv.lock(None)
            try:
                attach.unmap(t, BIDI)
            finally:
                self.buf.resv.unlock()
        m = self.buf.machine
        self.tasks.append(m.sched.spawn(unmapper, name=f"{self.dev.name}-unmap"))

    def map_locked(self) -> SgTable:
        if self.table is None:
            t = self.attach.map(BIDI)
            assert isinstance(t, SgTable)
            self.table = t
            self.hw = t.dma_ranges()
        return self.table

    def map(self) -> SgTable:
        self.buf.resv.lock(None)
        try:
            return self.map_locked()
        finally:
            self.buf.resv.unlock()

    def submit_write(self, data: bytes, offset: int = 0) -> DmaFence:
        """Map if needed and queue a DMA write, fenced in the buffer's resv (BOOKKEEP)."""
        resv = self.buf.resv
        resv.lock(None)
        try:
            self.map_locked()
            hw = self.hw
            assert hw is not None
            resv.reserve_fences(1)
            f = self.dev.submit(lambda: self.dev.dma_write(hw, data, owner=None, offset=offset),
                                name="p2p_write")
            resv.add_fence(f, DmaResvUsage.BOOKKEEP)
            if self.last is not None:
                self.last.put()
            self.last = f.get()
            return f
        finally:
            resv.unlock()

    def checksum(self, length: int | None = None) -> int:
        t = self.map()
        return self.dev.dma_checksum(t, owner=None, length=length)

    def stale_read(self, n: int = 16) -> np.ndarray:
        """The hardware reads through the addresses it held (no remap): faults after a revoke."""
        assert self.hw is not None
        return self.dev.dma_read(self.hw, owner=None, length=n)

    def join(self) -> None:
        for t in self.tasks:
            assert t.join(10.0)
            t.result()
        self.tasks.clear()

    def close(self) -> None:
        self.join()
        if self.last is not None:
            self.last.wait(False)
            self.last.put()
            self.last = None
        if self.table is not None:
            self.attach.unmap_unlocked(self.table, BIDI)
            self.table = None
        self.attach.detach()


@pytest.fixture
def plat(machine: Machine) -> Iterator[Platform]:
    with Platform(machine=machine) as p:
        yield p


@pytest.fixture
def vdev(plat: Platform) -> VfioPciDevice:
    v = plat.bind(VfioPciDevice, "gpu1")
    v.open_device()
    return v


@pytest.fixture
def nic(plat: Platform) -> Device:
    return plat.bind(Device, "nic1")


def pattern(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def bar_crc(v: VfioPciDevice, ranges: list[tuple[int, int]], index: int = BAR) -> int:
    return zlib.crc32(b"".join(v.hw_read(index, o, n).tobytes() for o, n in ranges))


# ---------------------------------------------------------------- export and real bytes


def test_export_two_ranges_end_to_end(vdev: VfioPciDevice, nic: Device, machine: Machine) -> None:
    vdev.hw_write(BAR, 0, pattern(2 * MiB))
    ranges = [(64 * KiB, 256 * KiB), (1 * MiB, 128 * KiB)]
    fd = vdev.feature_dma_buf(BAR, ranges)
    assert current_process(machine).fds.is_cloexec(fd)
    from dmabuf.buf.dma_buf import dma_buf_get
    buf = dma_buf_get(fd)
    assert buf.size == 384 * KiB and buf.exp_name == "vfio-pci" and not buf.is_dynamic
    imp = Importer(nic, buf)
    t = imp.map()
    assert t.is_dma_only and t.nents == 1            # one IOVA range through the host bridge
    assert imp.checksum() == bar_crc(vdev, ranges)
    f = imp.submit_write(b"\x5a" * 8192, offset=256 * KiB - 4096)   # spans both ranges
    f.wait(False)
    assert f.error == 0
    f.put()
    assert vdev.hw_read(BAR, 64 * KiB + 252 * KiB, 4096).tobytes() == b"\x5a" * 4096
    assert vdev.hw_read(BAR, 1 * MiB, 4096).tobytes() == b"\x5a" * 4096
    imp.close()
    buf.put()
    assert len(vdev.dmabufs) == 1
    current_process(machine).fds.close(fd)
    assert vdev.dmabufs == []                        # release removed it from the device list


def test_bus_address_importer_through_the_switch(plat: Platform) -> None:
    v = plat.bind(VfioPciDevice, "gpu0")             # gpu0 and nic0 share a switch: BUS_ADDR
    v.open_device()
    nic0 = plat.bind(Device, "nic0")
    v.hw_write(3, 0, pattern(64 * KiB, seed=9))
    buf = v.export_dma_buf(3, [(0, 64 * KiB)])
    imp = Importer(nic0, buf)
    t = imp.map()
    assert int(t.dma_flags()[0]) & SG_DMA_BUS_ADDRESS
    assert imp.checksum() == bar_crc(v, [(0, 64 * KiB)], 3)
    imp.close()
    buf.put()


def test_feature_ioctl_shape(vdev: VfioPciDevice) -> None:
    F = VFIO_DEVICE_FEATURE_DMA_BUF
    assert vdev.device_feature(F | VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET) == 0
    arg = VfioDeviceFeatureDmaBuf(BAR, [(0, 4096)])
    fd = vdev.device_feature(F | VFIO_DEVICE_FEATURE_GET, arg)
    current_process(vdev.machine).fds.close(fd)
    for flags, want in [(F | VFIO_DEVICE_FEATURE_SET, errno.EINVAL),
                        (F | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET, errno.EINVAL),
                        (F, errno.EINVAL),
                        (F | (1 << 20), errno.EINVAL),
                        (7 | VFIO_DEVICE_FEATURE_GET, errno.ENOTTY)]:
        with pytest.raises(DmaBufError) as ei:
            vdev.device_feature(flags, arg)
        assert ei.value.errno == want, hex(flags)
    with pytest.raises(DmaBufError) as ei:
        vdev.device_feature(F | VFIO_DEVICE_FEATURE_GET, None)
    assert ei.value.errno == errno.EINVAL


@pytest.mark.parametrize(("region", "ranges", "flags", "want"), [
    (BAR, [], 0, errno.EINVAL),                              # nr_ranges == 0
    (BAR, [(0, 4096)], 1, errno.EINVAL),                     # flags != 0
    (6, [(0, 4096)], 0, errno.ENODEV),                       # the ROM / not a BAR
    (BAR, [(0, 0)], 0, errno.EINVAL),                        # empty range
    (BAR, [(100, 4096)], 0, errno.EINVAL),                   # unaligned offset
    (BAR, [(0, 4000)], 0, errno.EINVAL),                     # unaligned length
    (BAR, [(1 << 63, 1 << 63)], 0, errno.EINVAL),            # total has bit 63 set
    (BAR, [(0, (1 << 64) - 4096), (0, 8192)], 0, errno.EINVAL),   # total overflows size_t
    (2, [(0, 4096)], 0, errno.EINVAL),                       # BAR 2 not implemented: no provider
    (BAR, [(32 * MiB - 4096, 8192)], 0, errno.EINVAL),       # past the end of the BAR
    (BAR, [(0, 4096), (32 * MiB, 4096)], 0, errno.EINVAL),
    (BAR, [((1 << 64) - 4096, 4096)], 0, errno.EOVERFLOW),   # bar_start + offset wraps
])
def test_export_validation(vdev: VfioPciDevice, region: int, ranges: list[tuple[int, int]],
                           flags: int, want: int) -> None:
    with pytest.raises(DmaBufError) as ei:
        vdev.feature_dma_buf(region, ranges, flags=flags)
    assert ei.value.errno == want
    assert vdev.dmabufs == []


def test_export_needs_open_and_a_live_device(plat: Platform) -> None:
    v = plat.bind(VfioPciDevice, "gpu1")
    with pytest.raises(DmaBufError) as ei:
        v.export_dma_buf(BAR, [(0, 4096)])
    assert ei.value.errno == errno.EBADF
    v.open_device()
    buf = v.export_dma_buf(BAR, [(0, 4096)])
    plat.unbind("gpu1")                              # remove closes: the buffer is revoked
    assert buf.priv.revoked and buf.priv.vdev is None
    with pytest.raises(DmaBufError) as ei:
        v.export_dma_buf(BAR, [(0, 4096)])
    assert ei.value.errno == errno.ENODEV
    buf.put()


# ---------------------------------------------------------------- attach / map rules


def test_attach_rules(vdev: VfioPciDevice, nic: Device) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 64 * KiB)])
    with pytest.raises(DmaBufError) as ei:
        buf.attach(nic.dma)                          # static: no peer2peer
    assert ei.value.errno == errno.EOPNOTSUPP
    with pytest.raises(DmaBufError) as ei:
        Importer(nic, buf, p2p=False)
    assert ei.value.errno == errno.EOPNOTSUPP
    with pytest.raises(DmaBufError) as ei:
        Importer(nic, buf, revocable=False)          # pinned-only importer (no invalidate op)
    assert ei.value.errno == errno.EOPNOTSUPP
    assert buf.attachments == []
    imp = Importer(nic, buf)
    vdev.set_memory_enable(False)
    with pytest.raises(DmaBufError) as ei:
        Importer(nic, buf)                           # revoked: attach -ENODEV
    assert ei.value.errno == errno.ENODEV
    with pytest.raises(DmaBufError) as ei:
        imp.map()                                    # revoked: map -ENODEV
    assert ei.value.errno == errno.ENODEV
    vdev.set_memory_enable(True)
    imp.map()
    imp.close()
    buf.put()


def test_export_while_memory_disabled_is_born_revoked(vdev: VfioPciDevice, nic: Device) -> None:
    vdev.config_write_command(0)
    with pytest.raises(DmaBufError) as ei:
        vdev.region_read(BAR, 0, 16)
    assert ei.value.errno == errno.EIO
    buf = vdev.export_dma_buf(BAR, [(0, 4096)])
    assert buf.priv.revoked
    with pytest.raises(DmaBufError) as ei:
        Importer(nic, buf)
    assert ei.value.errno == errno.ENODEV
    vdev.config_write_command(PCI_COMMAND_MEMORY)
    assert not buf.priv.revoked
    imp = Importer(nic, buf)
    imp.map()
    imp.close()
    buf.put()


# ---------------------------------------------------------------- revoke triggers


@pytest.mark.parametrize("async_unmap", [False, True])
def test_memory_disable_revokes_and_waits_for_unmap(vdev: VfioPciDevice, nic: Device,
                                                    machine: Machine, async_unmap: bool) -> None:
    vdev.hw_write(BAR, 0, pattern(64 * KiB, seed=5))
    crc = bar_crc(vdev, [(0, 64 * KiB)])
    buf = vdev.export_dma_buf(BAR, [(0, 64 * KiB)])
    imp = Importer(nic, buf, async_unmap=async_unmap)
    assert imp.checksum() == crc
    f = imp.submit_write(b"\x11" * 4096, offset=8192)
    with machine.trace.record("dma_buf") as events:
        vdev.set_memory_enable(False)                # revoke: invalidate, fences, unmaps
    assert f.is_signaled() and f.error == 0          # in-flight DMA retired before the revoke
    f.put()
    assert imp.invalidations == 1 and imp.attach.live_mappings == 0
    assert buf.priv.revoker.live == 0 and buf.priv.revoker.timeouts == 0
    names = [e.name for e in events]
    assert names.index("dma_buf_revoke_begin") < names.index("dma_buf_unmap_attachment") \
        < names.index("dma_buf_revoke_end")
    with pytest.raises(IommuFault):
        imp.stale_read()                             # the IOVA is gone: nothing reaches the BAR
    with pytest.raises(DmaBufError) as ei:
        vdev.region_write(BAR, 0, b"x")
    assert ei.value.errno == errno.EIO
    vdev.set_memory_enable(True)                     # un-revoke: mapping works again
    assert vdev.hw_read(BAR, 8192, 4096).tobytes() == b"\x11" * 4096
    assert imp.checksum() == bar_crc(vdev, [(0, 64 * KiB)])
    imp.close()
    buf.put()


def test_power_state_d3hot_revokes(vdev: VfioPciDevice, nic: Device) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 4096)])
    imp = Importer(nic, buf)
    imp.map()
    vdev.set_power_state(PCI_D3HOT)
    assert buf.priv.revoked and imp.table is None
    with pytest.raises(DmaBufError) as ei:
        vdev.region_read(BAR, 0, 4)
    assert ei.value.errno == errno.EIO
    vdev.set_power_state(PCI_D0)
    assert not buf.priv.revoked
    imp.map()
    imp.close()
    buf.put()


def test_reset_revokes_resets_and_unrevokes(vdev: VfioPciDevice, nic: Device) -> None:
    vdev.hw_write(REGS, 0, b"\xff" * 4096)
    vdev.hw_write(BAR, 0, pattern(4096, seed=11))
    crc = bar_crc(vdev, [(0, 4096)])
    buf = vdev.export_dma_buf(BAR, [(0, 4096)])
    imp = Importer(nic, buf)
    imp.checksum()
    seen: dict[str, Any] = {}

    def during_reset() -> None:
        seen["revoked"] = buf.priv.revoked
        seen["live"] = buf.priv.revoker.live
        try:
            imp.stale_read()
        except IommuFault as e:
            seen["fault"] = e.errno
    vdev.reset_hook = during_reset
    vdev.reset()
    assert seen == {"revoked": True, "live": 0, "fault": errno.EFAULT}
    assert vdev.resets == 1 and not buf.priv.revoked
    assert vdev.hw_read(REGS, 0, 4096).tobytes() == bytes(4096)   # registers reset
    assert imp.checksum() == crc                     # device memory kept; a new mapping works
    imp.close()
    buf.put()
    vdev.reset_works = False
    with pytest.raises(DmaBufError) as ei:
        vdev.reset()
    assert ei.value.errno == errno.EINVAL


def test_close_revokes_for_good(vdev: VfioPciDevice, nic: Device) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 4096)])
    imp = Importer(nic, buf)
    imp.map()
    vdev.close_device()
    assert buf.priv.revoked and buf.priv.vdev is None and imp.table is None
    assert vdev.dmabufs == []
    vdev.open_device()                               # memory enabled again: still revoked
    assert vdev.memory_enabled and buf.priv.revoked
    with pytest.raises(DmaBufError) as ei:
        imp.map()
    assert ei.value.errno == errno.ENODEV
    imp.close()
    buf.put()
    with pytest.raises(DmaBufError) as ei:
        vdev.close_device()
        vdev.close_device()
    assert ei.value.errno == errno.EBADF


def test_importer_that_ignores_invalidation_is_reported(plat: Platform, nic: Device,
                                                        machine: Machine) -> None:
    v = plat.bind(VfioPciDevice, "gpu1", unmap_timeout=0.05)
    v.open_device()
    buf = v.export_dma_buf(BAR, [(0, 4096)])
    bad = Importer(nic, buf, ignore=True)
    bad.map()
    v.set_memory_enable(False)
    assert buf.priv.revoker.timeouts == 1
    assert [r for r, _ in machine.warnings] == ["dma_buf_revoke"]
    assert nic.dma.name in machine.warnings[0][1]
    machine.warnings.clear()
    bad.close()
    buf.put()


# ---------------------------------------------------------------- acceptance


def test_acceptance_reset_with_nic_and_iommufd(plat: Platform, nic: Device,
                                               machine: Machine) -> None:
    """A VFIO reset while a NIC and iommufd both import the BAR: both are invalidated, the reset
    waits for their unmaps, nothing reaches the BAR while it is revoked, and afterwards a new
    mapping works (the NIC remaps itself; iommufd only after the user maps again)."""
    v = plat.bind(VfioPciDevice, "gpu1")
    v.open_device()
    guest_dev = plat.bind(Device, "gpu0")            # the device the VM drives through iommufd
    size = 256 * KiB
    v.hw_write(BAR, 0, pattern(size, seed=21))
    buf = v.export_dma_buf(BAR, [(0, size)])
    nicimp = Importer(nic, buf, async_unmap=True)
    ctx = IommufdCtx(plat)
    ioas = ctx.ioas_alloc()
    ctx.device_attach(ctx.device_bind(guest_dev), ioas)
    iova = ctx.ioas_map_file(ioas, buf, 0, size)
    guest = np.array([(iova, size)], dtype=RANGE_DTYPE)

    crc0 = bar_crc(v, [(0, size)])
    assert nicimp.checksum() == crc0
    assert guest_dev.dma_checksum(guest, owner=None) == crc0
    nic_fence = nicimp.submit_write(b"\x42" * 4096, offset=0)
    guest_dev.dma_write(guest, b"\x24" * 4096, owner=None, offset=4096)

    bar_at_reset: dict[str, Any] = {}

    def during_reset() -> None:
        # revoked, every importer unmapped; any access now must fault, never reach the BAR
        bar_at_reset["crc"] = bar_crc(v, [(0, size)])
        bar_at_reset["live"] = buf.priv.revoker.live
        for what, fn in (("nic", lambda: nicimp.stale_read()),
                         ("guest_read", lambda: guest_dev.dma_read(guest, owner=None)),
                         ("guest_write", lambda: guest_dev.dma_write(guest, b"\x99" * 64,
                                                                     owner=None))):
            try:
                fn()
                bar_at_reset[what] = "reached the BAR"
            except IommuFault:
                bar_at_reset[what] = "fault"
        bar_at_reset["crc_after"] = bar_crc(v, [(0, size)])

    v.reset_hook = during_reset
    v.reset()
    nicimp.join()
    assert nic_fence.is_signaled() and nic_fence.error == 0
    nic_fence.put()
    assert nicimp.invalidations == 1 and nicimp.attach.live_mappings == 0
    assert bar_at_reset["live"] == 0
    assert {k: bar_at_reset[k] for k in ("nic", "guest_read", "guest_write")} == \
        {"nic": "fault", "guest_read": "fault", "guest_write": "fault"}
    assert bar_at_reset["crc"] == bar_at_reset["crc_after"]
    pages = ctx.ioas(ioas).areas[0].pages
    assert pages.revoked and pages.revokes == 1
    assert buf.priv.revoker.timeouts == 0 and machine.warnings == []

    # after the un-revoke: the NIC maps again; iommufd stays unmapped until the user re-maps
    expect = v.hw_read(BAR, 0, size).tobytes()
    assert expect[:4096] == b"\x42" * 4096 and expect[4096:8192] == b"\x24" * 4096
    assert nicimp.checksum() == zlib.crc32(expect)
    with pytest.raises(IommuFault):
        guest_dev.dma_read(guest, owner=None)
    ctx.ioas_unmap(ioas, iova, size)
    iova2 = ctx.ioas_map_file(ioas, buf, 0, size, iova=iova, flags=7)
    assert iova2 == iova
    assert guest_dev.dma_checksum(guest, owner=None) == zlib.crc32(expect)
    nicimp.close()
    ctx.close()
    buf.put()
    assert buf.released


# ---------------------------------------------------------------- revoke vs DMA race


def _race(m: Machine) -> None:
    with Platform(machine=m, ram_size=1 << 30) as p:
        v = p.bind(VfioPciDevice, "gpu1")
        v.open_device()
        nic = p.bind(Device, "nic1")
        v.hw_write(BAR, 0, bytes(16 * KiB))
        buf = v.export_dma_buf(BAR, [(0, 16 * KiB)])
        imp = Importer(nic, buf, async_unmap=True)
        results: list[str] = []

        def dma_loop() -> None:
            for i in range(4):
                try:
                    f = imp.submit_write(bytes([i + 1]) * 4096, offset=4096 * i)
                except DmaBufError as e:
                    assert e.errno == errno.ENODEV
                    results.append("enodev")
                    continue
                f.wait(False)
                results.append("ok" if f.error == 0 else f"error {f.error}")
                f.put()

        def revoker() -> None:
            v.set_memory_enable(False)
            assert imp.attach.live_mappings == 0 and buf.priv.revoker.live == 0
            v.set_memory_enable(True)

        t1 = m.sched.spawn(dma_loop, name="dma")
        t2 = m.sched.spawn(revoker, name="revoke")
        assert t1.join(30.0) and t2.join(30.0)
        t1.result()
        t2.result()
        imp.join()
        assert len(results) == 4 and all(r in ("ok", "enodev") for r in results), results
        assert nic.faults == [] and buf.priv.revoker.timeouts == 0
        for i, r in enumerate(results):             # every DMA that ran landed in the BAR
            if r == "ok":
                assert v.hw_read(BAR, 4096 * i, 4096).tobytes() == bytes([i + 1]) * 4096
        imp.close()
        buf.put()


def test_revoke_vs_dma_race_explored() -> None:
    res = explore(_race, seeds=range(5))
    assert res.seeds == 5 and res.switches > 0


def test_acceptance_reset_with_rdma_pinned_revocable_mr_and_iommufd(
        plat: Platform, machine: Machine) -> None:
    """The same reset with the RDMA engineer's NIC: a pinned-revocable dma-buf MR over the BAR
    (RDMA WRITEs from it) and iommufd. The MR is revoked for good (its WQEs complete in error
    while the device resets and after); a new MR registered after the un-revoke works."""
    v = pytest.importorskip("dmabuf.devices.rdma.verbs",
                            reason="the RDMA NIC model (dmabuf.devices.rdma) is not available")
    from .test_rdma_support import rc_pair, rdma_write

    L, RW, RR = v.IBV_ACCESS_LOCAL_WRITE, v.IBV_ACCESS_REMOTE_WRITE, v.IBV_ACCESS_REMOTE_READ
    vd = plat.bind(VfioPciDevice, "gpu1")
    vd.open_device()
    guest_dev = plat.bind(Device, "gpu0")
    size = 64 * KiB
    vd.hw_write(BAR, 0, pattern(size, seed=33))
    bar0 = vd.hw_read(BAR, 0, size).tobytes()
    buf = vd.export_dma_buf(BAR, [(0, size)])
    ctx_nic = v.Context(plat, "nic1")
    pair = rc_pair(ctx_nic, ctx_nic)
    src = v.DmaBufMR(pair.pd_a, size, L | RW | RR, dmabuf=buf, kind="pinned_revocable")
    dst = v.MR(pair.pd_b, size, L | RW)
    assert rdma_write(pair, src, dst, 4096).status == v.IBV_WC_SUCCESS
    assert dst.read(4096) == bar0[:4096]
    ictx = IommufdCtx(plat)
    ioas = ictx.ioas_alloc()
    ictx.device_attach(ictx.device_bind(guest_dev), ioas)
    iova = ictx.ioas_map_file(ioas, buf, 0, size)
    guest = np.array([(iova, size)], dtype=RANGE_DTYPE)
    assert guest_dev.dma_checksum(guest, owner=None) == zlib.crc32(bar0)

    seen: dict[str, Any] = {}

    def during_reset() -> None:
        seen["live"] = buf.priv.revoker.live
        seen["wc"] = rdma_write(pair, src, dst, 4096, wr_id=2).status
        try:
            guest_dev.dma_write(guest, b"\x99" * 64, owner=None)
            seen["guest"] = "reached the BAR"
        except IommuFault:
            seen["guest"] = "fault"
    vd.reset_hook = during_reset
    vd.reset()
    assert seen == {"live": 0, "wc": v.IBV_WC_LOC_PROT_ERR, "guest": "fault"}
    assert src.mr.umem.revoked and not src.mr.mmkey.enabled
    assert vd.hw_read(BAR, 0, size).tobytes() == bar0     # nothing reached the BAR
    assert buf.priv.revoker.timeouts == 0 and machine.warnings == []
    # the failed WQE moved the QP to the error state: later WRs flush
    assert rdma_write(pair, src, dst, 4096, wr_id=3).status == v.IBV_WC_WR_FLUSH_ERR
    # un-revoked: a pinned-revocable MR gives up for good; a new registration works
    pair2 = rc_pair(ctx_nic, ctx_nic, pd_a=pair.pd_a, pd_b=pair.pd_b)
    assert rdma_write(pair2, src, dst, 4096, wr_id=4).status == v.IBV_WC_LOC_PROT_ERR
    pair3 = rc_pair(ctx_nic, ctx_nic, pd_a=pair.pd_a, pd_b=pair.pd_b)
    src2 = v.DmaBufMR(pair.pd_a, size, L | RW | RR, dmabuf=buf, kind="pinned_revocable")
    assert rdma_write(pair3, src2, dst, 4096, src_off=4096, wr_id=5).status == v.IBV_WC_SUCCESS
    assert dst.read(4096) == bar0[4096:8192]
    ictx.ioas_unmap(ioas, iova, size)
    ictx.ioas_map_file(ioas, buf, 0, size, iova=iova, flags=7)
    assert guest_dev.dma_checksum(guest, owner=None) == zlib.crc32(bar0)
    for o in (src, src2, dst):
        o.close()
    for pr in (pair, pair2, pair3):
        pr.close()
    ctx_nic.close()
    ictx.close()
    buf.put()
