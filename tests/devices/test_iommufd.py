"""Tests of dmabuf.devices.iommufd: IOMMU_IOAS_MAP_FILE of a VFIO dma-buf, revoke, release."""

from __future__ import annotations

import errno
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from dmabuf.buf.dma_buf import DmaBuf
from dmabuf.devices import Device, Platform
from dmabuf.devices.accel import Accel
from dmabuf.devices.iommufd import (
    IOMMU_IOAS_MAP_FIXED_IOVA,
    IOMMU_IOAS_MAP_READABLE,
    IOMMU_IOAS_MAP_WRITEABLE,
    IommufdCtx,
)
from dmabuf.devices.vfio import VfioPciDevice
from dmabuf.dma.iommu import MSI_IOVA_BASE
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.mm.ranges import RANGE_DTYPE
from dmabuf.sync.sw_sync import SwSyncTimeline

KiB = 1 << 10
MiB = 1 << 20
BAR = 3
RW = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE
U64_MAX = (1 << 64) - 1


@pytest.fixture
def plat(machine: Machine) -> Iterator[Platform]:
    with Platform(machine=machine) as p:
        yield p


@pytest.fixture
def vdev(plat: Platform) -> VfioPciDevice:
    v = plat.bind(VfioPciDevice, "gpu1")
    v.open_device()
    v.hw_write(BAR, 0, np.random.default_rng(5).integers(0, 256, 2 * MiB, dtype=np.uint8))
    return v


@pytest.fixture
def guest(plat: Platform) -> Device:
    return plat.bind(Device, "gpu0")


@pytest.fixture
def ctx(plat: Platform) -> Iterator[IommufdCtx]:
    with IommufdCtx(plat) as c:
        yield c


def win(iova: int, n: int) -> np.ndarray:
    return np.array([(iova, n)], dtype=RANGE_DTYPE)


def attached(ctx: IommufdCtx, dev: Device) -> int:
    ioas = ctx.ioas_alloc()
    ctx.device_attach(ctx.device_bind(dev), ioas)
    return ioas


def no_iommufd_attachment(buf: DmaBuf) -> bool:
    return all(a.dev.name != "iommufd" for a in buf.attachments)


# ---------------------------------------------------------------- map and real bytes


def test_map_file_fd_and_dma_through_the_ioas(vdev: VfioPciDevice, guest: Device,
                                              ctx: IommufdCtx, machine: Machine) -> None:
    from dmabuf.buf.file import current_process
    fd = vdev.feature_dma_buf(BAR, [(1 * MiB, 1 * MiB)])
    ioas = attached(ctx, guest)
    iova = ctx.ioas_map_file(ioas, fd, 256 * KiB, 512 * KiB)
    assert iova % (256 * KiB) == 0                   # aligned like the file offset
    a = ctx.ioas(ioas).areas[0]
    assert (a.iova, a.length, a.pages.start) == (iova, 512 * KiB, 256 * KiB)
    assert a.pages.attach is not None and a.pages.attach.pin_count == 1
    want = vdev.hw_read(BAR, 1 * MiB + 256 * KiB, 512 * KiB).tobytes()
    assert guest.dma_checksum(win(iova, 512 * KiB), owner=None) == zlib.crc32(want)
    guest.dma_write(win(iova + 4096, 4096), b"\x77" * 4096, owner=None)
    assert vdev.hw_read(BAR, 1 * MiB + 256 * KiB + 4096, 4096).tobytes() == b"\x77" * 4096
    # the guest device's translation is the IOAS's: the domain maps the BAR's CPU address
    hwpt = ctx.ioas(ioas).hwpts[0]
    assert hwpt.domain.iova_to_phys(iova) == vdev.bar_region(BAR).base + 1 * MiB + 256 * KiB
    current_process(machine).fds.close(fd)           # the area keeps its own reference
    buf = a.pages.dmabuf
    assert not buf.released
    assert ctx.ioas_unmap(ioas, iova, 512 * KiB) == 512 * KiB
    assert buf.released                              # unmap released attachment and reference


def test_auto_iova_avoids_reserved_ranges(vdev: VfioPciDevice, guest: Device,
                                          ctx: IommufdCtx) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 2 * MiB)])
    ioas = attached(ctx, guest)
    r = ctx.ioas(ioas)
    assert any(lo <= MSI_IOVA_BASE <= hi for lo, hi in r.reserved)
    iovas = [ctx.ioas_map_file(ioas, buf, i * 64 * KiB, 64 * KiB) for i in range(4)]
    assert iovas == sorted(iovas) and len(set(iovas)) == 4
    for iova in iovas:
        assert r._reserved_hit(iova, iova + 64 * KiB - 1) is None
    # fixed IOVAs: reserved -> EINVAL, overlap -> EEXIST, unaligned -> EINVAL
    bar0 = vdev.pdev.bar(0)
    assert bar0 is not None
    for iova, want in ((MSI_IOVA_BASE, errno.EINVAL), (bar0.bus_start, errno.EINVAL),
                       (iovas[1], errno.EEXIST), (0x4000_0100, errno.EINVAL)):
        with pytest.raises(DmaBufError) as ei:
            ctx.ioas_map_file(ioas, buf, 0, 64 * KiB, iova=iova,
                              flags=RW | IOMMU_IOAS_MAP_FIXED_IOVA)
        assert ei.value.errno == want, hex(iova)
    assert len(buf.attachments) == 4                 # failures left no attachment behind
    assert ctx.ioas_unmap(ioas, 0, U64_MAX) == 4 * 64 * KiB
    assert buf.attachments == []
    buf.put()


def test_readonly_mapping(vdev: VfioPciDevice, guest: Device, ctx: IommufdCtx) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 64 * KiB)])
    ioas = attached(ctx, guest)
    iova = ctx.ioas_map_file(ioas, buf, 0, 64 * KiB, flags=IOMMU_IOAS_MAP_READABLE)
    guest.dma_read(win(iova, 64), owner=None)
    with pytest.raises(IommuFault):
        guest.dma_write(win(iova, 64), b"\x00" * 64, owner=None)
    ctx.ioas_unmap(ioas, iova, 64 * KiB)
    buf.put()


def test_domain_attached_after_the_map_is_filled(vdev: VfioPciDevice, guest: Device,
                                                 ctx: IommufdCtx) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 64 * KiB)])
    ioas = ctx.ioas_alloc()
    iova = ctx.ioas_map_file(ioas, buf, 0, 64 * KiB)
    dev_id = ctx.device_bind(guest)
    old = guest.dma.iommu
    ctx.device_attach(dev_id, ioas)
    assert guest.dma_checksum(win(iova, 64 * KiB), owner=None) == \
        zlib.crc32(vdev.hw_read(BAR, 0, 64 * KiB).tobytes())
    ctx.device_detach(dev_id)
    assert guest.dma.iommu is old and ctx.ioas(ioas).hwpts == []
    ctx.ioas_unmap(ioas, iova, 64 * KiB)
    buf.put()


# ---------------------------------------------------------------- errnos


def test_map_file_argument_errnos(vdev: VfioPciDevice, ctx: IommufdCtx) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 64 * KiB)])
    ioas = ctx.ioas_alloc()
    count = buf.file.count
    cases = [
        (dict(flags=RW | (1 << 3)), errno.EOPNOTSUPP),
        (dict(iova=U64_MAX, flags=RW | IOMMU_IOAS_MAP_FIXED_IOVA), errno.EOVERFLOW),
        (dict(length=U64_MAX), errno.EOVERFLOW),
        (dict(flags=IOMMU_IOAS_MAP_FIXED_IOVA), errno.EINVAL),   # neither R nor W
        (dict(ioas_id=999), errno.ENOENT),
        (dict(length=0), errno.EINVAL),
        (dict(start=U64_MAX - PAGE_SIZE + 1, length=2 * PAGE_SIZE), errno.EOVERFLOW),
        (dict(start=32 * KiB, length=64 * KiB), errno.EINVAL),   # beyond the buffer
        (dict(start=100, length=32 * KiB), errno.EINVAL),       # sub-page offset
        (dict(length=4000), errno.EINVAL),
    ]
    for kw, want in cases:
        args = dict(ioas_id=ioas, fd=buf, start=0, length=64 * KiB, iova=0, flags=RW)
        args.update(kw)
        with pytest.raises(DmaBufError) as ei:
            ctx.ioas_map_file(args["ioas_id"], args["fd"], args["start"], args["length"],
                              iova=args["iova"], flags=args["flags"])
        assert ei.value.errno == want, kw
        assert buf.file.count == count and buf.attachments == []
    buf.put()


def test_map_file_exporter_errnos(plat: Platform, vdev: VfioPciDevice, ctx: IommufdCtx,
                                  machine: Machine) -> None:
    ioas = ctx.ioas_alloc()
    # a dma-buf that is not VFIO's: attach and pin succeed, the private interconnect refuses
    acc = plat.bind(Accel, "acc0")
    abuf = acc.export_dmabuf(acc.mem_map(acc.mem_alloc(MiB)), MiB)
    with pytest.raises(DmaBufError) as ei:
        ctx.ioas_map_file(ioas, abuf, 0, MiB)
    assert ei.value.errno == errno.EOPNOTSUPP
    assert abuf.attachments == [] and abuf.file.count == 1
    abuf.put()
    # several ranges: EOPNOTSUPP
    multi = vdev.export_dma_buf(BAR, [(0, 4096), (8192, 4096)])
    with pytest.raises(DmaBufError) as ei:
        ctx.ioas_map_file(ioas, multi, 0, 8192)
    assert ei.value.errno == errno.EOPNOTSUPP and multi.attachments == []
    multi.put()
    # revoked: ENODEV (VFIO refuses the attach)
    buf = vdev.export_dma_buf(BAR, [(0, 4096)])
    vdev.set_memory_enable(False)
    with pytest.raises(DmaBufError) as ei:
        ctx.ioas_map_file(ioas, buf, 0, 4096)
    assert ei.value.errno == errno.ENODEV
    vdev.set_memory_enable(True)
    buf.put()
    # fds: not open -> EBADF; a file that is not a dma-buf -> EOPNOTSUPP (memfd path)
    with pytest.raises(DmaBufError) as ei:
        ctx.ioas_map_file(ioas, 1000, 0, 4096)
    assert ei.value.errno == errno.EBADF
    from dmabuf.buf.dma_buf_file import install_sync_file
    from dmabuf.buf.file import current_process
    tl = SwSyncTimeline(machine=machine)
    fd = install_sync_file(tl.create_sync_file(1, "pt"))
    with pytest.raises(DmaBufError) as ei:
        ctx.ioas_map_file(ioas, fd, 0, 4096)
    assert ei.value.errno == errno.EOPNOTSUPP
    current_process(machine).fds.close(fd)
    tl.inc(1)
    tl.close()


def test_unmap_and_object_errnos(vdev: VfioPciDevice, guest: Device, ctx: IommufdCtx) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 256 * KiB)])
    ioas = attached(ctx, guest)
    iova = ctx.ioas_map_file(ioas, buf, 0, 128 * KiB)
    for i, n, want in ((iova, 64 * KiB, errno.ENOENT),            # only part of the area
                       (iova + 1 * MiB, 4096, errno.ENOENT),      # nothing there
                       (iova, 0, errno.EINVAL),
                       (U64_MAX, 4096, errno.EOVERFLOW)):
        with pytest.raises(DmaBufError) as ei:
            ctx.ioas_unmap(ioas, i, n)
        assert ei.value.errno == want, (i, n)
    with pytest.raises(DmaBufError) as ei:
        ctx.access_rw(ioas, iova, 16)                # dma-buf pages: no CPU access
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as ei:
        ctx.destroy(ioas)                            # a device is attached
    assert ei.value.errno == errno.EBUSY
    with pytest.raises(DmaBufError) as ei:
        ctx.device_bind(guest)
    assert ei.value.errno == errno.EBUSY
    with pytest.raises(DmaBufError) as ei:
        ctx.ioas_unmap(12345, 0, 4096)
    assert ei.value.errno == errno.ENOENT
    ctx.close()                                      # releases everything
    assert buf.attachments == []
    with pytest.raises(DmaBufError) as ei:
        ctx.ioas_alloc()
    assert ei.value.errno == errno.EBADF
    buf.put()


def test_bind_needs_an_iommu(machine: Machine) -> None:
    with Platform(machine=machine, iommu="off") as p:
        d = p.bind(Device, "gpu0")
        with IommufdCtx(p) as c, pytest.raises(DmaBufError) as ei:
            c.device_bind(d)
        assert ei.value.errno == errno.ENODEV


def test_msi_window_conflict_on_attach(vdev: VfioPciDevice, guest: Device,
                                       ctx: IommufdCtx) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 64 * KiB)])
    ioas = ctx.ioas_alloc()                          # no device yet: the MSI window is free
    ctx.ioas_map_file(ioas, buf, 0, 64 * KiB, iova=MSI_IOVA_BASE,
                      flags=RW | IOMMU_IOAS_MAP_FIXED_IOVA)
    with pytest.raises(DmaBufError) as ei:
        ctx.device_attach(ctx.device_bind(guest), ioas)
    assert ei.value.errno == errno.EADDRINUSE
    ctx.ioas_unmap(ioas, MSI_IOVA_BASE, 64 * KiB)
    buf.put()


# ---------------------------------------------------------------- revoke


def test_revoke_unmaps_every_domain_and_never_remaps(plat: Platform, vdev: VfioPciDevice,
                                                     guest: Device, ctx: IommufdCtx) -> None:
    other = plat.bind(Device, "nvme1")
    buf = vdev.export_dma_buf(BAR, [(0, 128 * KiB)])
    io1 = attached(ctx, guest)
    io2 = attached(ctx, other)
    v1 = ctx.ioas_map_file(io1, buf, 0, 128 * KiB)
    v2 = ctx.ioas_map_file(io2, buf, 0, 64 * KiB)
    crc = zlib.crc32(vdev.hw_read(BAR, 0, 64 * KiB).tobytes())
    assert guest.dma_checksum(win(v1, 64 * KiB), owner=None) == crc
    assert other.dma_checksum(win(v2, 64 * KiB), owner=None) == crc
    vdev.set_memory_enable(False)                    # revoke: both areas unmapped at once
    for dev, iova in ((guest, v1), (other, v2)):
        with pytest.raises(IommuFault):
            dev.dma_read(win(iova, 16), owner=None)
    assert ctx.ioas(io1).areas[0].pages.revoked and ctx.ioas(io2).areas[0].pages.revoked
    assert buf.priv.revoker.live == 0                # iommufd never held a map_attachment
    vdev.set_memory_enable(True)                     # un-revoke: iommufd does not remap
    with pytest.raises(IommuFault):
        guest.dma_read(win(v1, 16), owner=None)
    # a domain attached now skips the revoked area
    late = plat.bind(Device, "nic1")
    late_id = ctx.device_bind(late)
    ctx.device_attach(late_id, io1)                  # joins io1's existing HWPT
    with pytest.raises(IommuFault):
        late.dma_read(win(v1, 16), owner=None)
    # the user re-maps: works again
    ctx.ioas_unmap(io1, v1, 128 * KiB)
    v1b = ctx.ioas_map_file(io1, buf, 0, 128 * KiB)
    assert guest.dma_checksum(win(v1b, 64 * KiB), owner=None) == crc
    assert late.dma_checksum(win(v1b, 64 * KiB), owner=None) == crc
    ctx.close()
    assert buf.attachments == []
    buf.put()
    assert buf.released


def test_vfio_close_revokes_iommufd_mapping(vdev: VfioPciDevice, guest: Device,
                                            ctx: IommufdCtx) -> None:
    buf = vdev.export_dma_buf(BAR, [(0, 64 * KiB)])
    ioas = attached(ctx, guest)
    iova = ctx.ioas_map_file(ioas, buf, 0, 64 * KiB)
    vdev.close_device()
    with pytest.raises(IommuFault):
        guest.dma_read(win(iova, 16), owner=None)
    ctx.ioas_unmap(ioas, iova, 64 * KiB)
    vdev.open_device()
    with pytest.raises(DmaBufError) as ei:             # revoked for good
        ctx.ioas_map_file(ioas, buf, 0, 64 * KiB)
    assert ei.value.errno == errno.ENODEV
    buf.put()
