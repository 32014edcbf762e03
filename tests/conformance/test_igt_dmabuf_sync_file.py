"""IGT ``tests/dmabuf_sync_file.c`` (7 subtests), ported to the model.

IGT uses vgem as the exporter (``vgem_fence_attach`` adds a READ fence, or a WRITE fence with
``VGEM_FENCE_WRITE``, to the bo's reservation object; ``vgem_fence_signal`` signals it) and
sw_sync timelines for imported fences. Here the exporter is a mock over real pages with the
same fence semantics, sw_sync is :class:`dmabuf.sync.sw_sync.SwSyncTimeline`, and every helper
of IGT's ``lib/dmabuf_sync_file.c`` goes through the model's file descriptors and ioctls:

* ``dmabuf_busy(fd, flags)`` — ``poll()`` with timeout 0 for ``POLLOUT`` (WRITE) or ``POLLIN``
  (READ) and "busy" when nothing is ready;
* ``sync_file_busy(fd)`` — ``poll(POLLIN)`` with timeout 0 on the sync_file fd;
* ``dmabuf_sync_file_busy(fd, flags)`` — export a sync_file with ``flags``, check it, close it;
* ``dmabuf_import_timeline_fence(fd, flags, timeline, seqno)`` — a sw_sync fence fd imported
  with ``DMA_BUF_IOCTL_IMPORT_SYNC_FILE``, then closed.

Source: igt-gpu-tools tests/dmabuf_sync_file.c, lib/dmabuf_sync_file.c (2022, Jason Ekstrand).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "buf"))
from dmabuf_mocks import MockExporter, make_phys

from dmabuf.buf.dma_buf_file import (
    DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
    DMA_BUF_IOCTL_IMPORT_SYNC_FILE,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_WRITE,
    DmaBufExportSyncFileArg,
    DmaBufImportSyncFileArg,
    dma_buf_poll_wait,
    install_sync_file,
)
from dmabuf.buf.file import EPOLLIN, EPOLLOUT, current_process
from dmabuf.machine import Machine
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.sync.dma_fence import DmaFence, DmaFenceOps
from dmabuf.sync.dma_resv import DmaResvUsage
from dmabuf.sync.sw_sync import SwSyncTimeline

VGEM_FENCE_WRITE = 0x1
_VGEM_OPS = DmaFenceOps("vgem", "file")


class Vgem:
    """The slice of vgem IGT uses: a 1x1x32bpp bo exported as a dma-buf fd, and fences."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self.phys = make_phys(PAGE_SIZE * 16, PAGE_SIZE * 16)
        self.context = machine.fence_context_alloc(1)
        self.seqno = 0
        self.fences: dict[int, DmaFence] = {}
        self.exporter = MockExporter(self.phys, PAGE_SIZE, region="ram0")
        self.dmabuf = self.exporter.export(machine=machine, exp_name="vgem")

    def prime_handle_to_fd(self) -> int:
        return self.dmabuf.get().fd()

    def fence_attach(self, flags: int) -> int:
        """DRM_IOCTL_VGEM_FENCE_ATTACH."""
        self.seqno += 1
        f = DmaFence(_VGEM_OPS, self.context, self.seqno, machine=self.m)
        resv = self.dmabuf.resv
        resv.lock(None)
        try:
            resv.reserve_fences(1)
            usage = DmaResvUsage.WRITE if flags & VGEM_FENCE_WRITE else DmaResvUsage.READ
            resv.add_fence(f, usage)
        finally:
            resv.unlock()
        self.fences[self.seqno] = f
        return self.seqno

    def fence_signal(self, handle: int) -> None:
        """DRM_IOCTL_VGEM_FENCE_SIGNAL."""
        f = self.fences.pop(handle)
        f.signal()
        f.put()

    def close(self) -> None:
        for h in list(self.fences):
            self.fence_signal(h)
        self.dmabuf.put()            # gem_close: the bo's reference


# lib/dmabuf_sync_file.c -------------------------------------------------------------------------


def close(fd: int) -> None:
    current_process().fds.close(fd)


def dmabuf_busy(dmabuf: int, flags: int) -> bool:
    events = EPOLLOUT if flags & DMA_BUF_SYNC_WRITE else EPOLLIN if flags & DMA_BUF_SYNC_READ \
        else 0
    file = current_process().fds.lookup(dmabuf)
    return dma_buf_poll_wait(file, events, 0) == 0


def sync_file_busy(sync_file: int) -> bool:
    return current_process().fds.lookup(sync_file).poll(EPOLLIN) == 0


def dmabuf_export_sync_file(dmabuf: int, flags: int) -> int:
    arg = DmaBufExportSyncFileArg(flags)
    current_process().fds.lookup(dmabuf).ioctl(DMA_BUF_IOCTL_EXPORT_SYNC_FILE, arg)
    return arg.fd


def dmabuf_sync_file_busy(dmabuf: int, flags: int) -> bool:
    sync_file = dmabuf_export_sync_file(dmabuf, flags)
    busy = sync_file_busy(sync_file)
    close(sync_file)
    return busy


def dmabuf_import_sync_file(dmabuf: int, flags: int, sync_fd: int) -> None:
    arg = DmaBufImportSyncFileArg(flags, sync_fd)
    current_process().fds.lookup(dmabuf).ioctl(DMA_BUF_IOCTL_IMPORT_SYNC_FILE, arg)


def dmabuf_import_timeline_fence(dmabuf: int, flags: int, timeline: SwSyncTimeline,
                                 seqno: int) -> None:
    fence = install_sync_file(timeline.create_sync_file(seqno))   # sw_sync_timeline_create_fence
    dmabuf_import_sync_file(dmabuf, flags, fence)
    close(fence)


@pytest.fixture
def vgem(machine: Machine) -> Iterator[Vgem]:
    v = Vgem(machine)
    yield v
    v.close()
    assert v.exporter.released == 1          # every fd closed: released exactly once
    assert machine.warnings == []


def _all(dmabuf: int, want: bool) -> None:
    for flags in (DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW):
        assert dmabuf_busy(dmabuf, flags) is want
        assert dmabuf_sync_file_busy(dmabuf, flags) is want


# subtests -----------------------------------------------------------------------------------------


def test_export_basic(vgem: Vgem) -> None:
    dmabuf = vgem.prime_handle_to_fd()
    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_WRITE)
    assert not dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert not dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_WRITE)

    fence = vgem.fence_attach(0)
    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert dmabuf_busy(dmabuf, DMA_BUF_SYNC_WRITE)
    assert dmabuf_busy(dmabuf, DMA_BUF_SYNC_RW)
    assert not dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_WRITE)
    assert dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_RW)

    vgem.fence_signal(fence)
    _all(dmabuf, False)

    fence = vgem.fence_attach(VGEM_FENCE_WRITE)
    _all(dmabuf, True)

    vgem.fence_signal(fence)
    _all(dmabuf, False)
    close(dmabuf)


def test_export_before_signal(vgem: Vgem) -> None:
    dmabuf = vgem.prime_handle_to_fd()
    assert not dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert not dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_WRITE)

    fence = vgem.fence_attach(0)
    read_fd = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_READ)
    write_fd = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_WRITE)
    assert not sync_file_busy(read_fd)
    assert sync_file_busy(write_fd)
    vgem.fence_signal(fence)
    assert not sync_file_busy(read_fd)
    assert not sync_file_busy(write_fd)
    close(read_fd)
    close(write_fd)

    fence = vgem.fence_attach(VGEM_FENCE_WRITE)
    read_fd = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_READ)
    write_fd = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_WRITE)
    assert sync_file_busy(read_fd)
    assert sync_file_busy(write_fd)
    vgem.fence_signal(fence)
    assert not sync_file_busy(read_fd)
    assert not sync_file_busy(write_fd)
    close(read_fd)
    close(write_fd)
    close(dmabuf)


def test_export_multiwait(vgem: Vgem) -> None:
    dmabuf = vgem.prime_handle_to_fd()
    fence1 = vgem.fence_attach(0)
    fence2 = vgem.fence_attach(0)
    sync_file = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_WRITE)
    fence3 = vgem.fence_attach(0)
    assert sync_file_busy(sync_file)
    vgem.fence_signal(fence1)
    assert sync_file_busy(sync_file)
    vgem.fence_signal(fence2)
    assert not sync_file_busy(sync_file)       # fence3 came after the export: not waited on
    vgem.fence_signal(fence3)
    close(sync_file)
    close(dmabuf)


def test_export_wait_after_attach(vgem: Vgem) -> None:
    dmabuf = vgem.prime_handle_to_fd()
    read_sync_file = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_READ)
    write_sync_file = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_WRITE)
    fence1 = vgem.fence_attach(VGEM_FENCE_WRITE)
    assert not sync_file_busy(read_sync_file)
    assert not sync_file_busy(write_sync_file)
    close(read_sync_file)
    close(write_sync_file)

    # These wait on fence1
    read_sync_file = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_READ)
    write_sync_file = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_WRITE)
    assert sync_file_busy(read_sync_file)
    assert sync_file_busy(write_sync_file)

    vgem.fence_signal(fence1)
    fence2 = vgem.fence_attach(VGEM_FENCE_WRITE)
    # fence1 has signaled
    assert not sync_file_busy(read_sync_file)
    assert not sync_file_busy(write_sync_file)
    # fence2 has not
    assert dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_WRITE)
    vgem.fence_signal(fence2)
    close(read_sync_file)
    close(write_sync_file)
    close(dmabuf)


def test_import_basic(vgem: Vgem, machine: Machine) -> None:
    dmabuf = vgem.prime_handle_to_fd()
    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_WRITE)
    timeline = SwSyncTimeline("igt", machine=machine)

    dmabuf_import_timeline_fence(dmabuf, DMA_BUF_SYNC_READ, timeline, 1)
    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert dmabuf_busy(dmabuf, DMA_BUF_SYNC_WRITE)
    assert dmabuf_busy(dmabuf, DMA_BUF_SYNC_RW)
    assert not dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_WRITE)
    assert dmabuf_sync_file_busy(dmabuf, DMA_BUF_SYNC_RW)

    timeline.inc(1)
    _all(dmabuf, False)

    dmabuf_import_timeline_fence(dmabuf, DMA_BUF_SYNC_WRITE, timeline, 2)
    _all(dmabuf, True)
    timeline.inc(1)
    _all(dmabuf, False)

    dmabuf_import_timeline_fence(dmabuf, DMA_BUF_SYNC_RW, timeline, 3)
    _all(dmabuf, True)
    timeline.inc(1)
    _all(dmabuf, False)
    close(dmabuf)
    timeline.close()


@pytest.mark.parametrize("write", [False, True],
                         ids=["import-multiple-read-only", "import-multiple-read-write"])
def test_import_multiple(vgem: Vgem, machine: Machine, write: bool) -> None:
    dmabuf = vgem.prime_handle_to_fd()
    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_WRITE)
    read_timelines = []
    for i in range(32):
        tl = SwSyncTimeline(f"read{i}", machine=machine)
        read_timelines.append(tl)
        dmabuf_import_timeline_fence(dmabuf, DMA_BUF_SYNC_READ, tl, 1)
    write_timeline = None
    if write:
        write_timeline = SwSyncTimeline("write", machine=machine)
        dmabuf_import_timeline_fence(dmabuf, DMA_BUF_SYNC_WRITE, write_timeline, 1)

    read_sync_file = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_READ)
    write_sync_file = dmabuf_export_sync_file(dmabuf, DMA_BUF_SYNC_WRITE)

    for tl in reversed(read_timelines):
        assert dmabuf_busy(dmabuf, DMA_BUF_SYNC_READ) is write
        assert sync_file_busy(read_sync_file) is write
        assert dmabuf_busy(dmabuf, DMA_BUF_SYNC_WRITE)
        assert sync_file_busy(write_sync_file)
        tl.inc(1)

    assert dmabuf_busy(dmabuf, DMA_BUF_SYNC_READ) is write
    assert sync_file_busy(read_sync_file) is write
    assert dmabuf_busy(dmabuf, DMA_BUF_SYNC_WRITE) is write
    assert sync_file_busy(write_sync_file) is write

    if write_timeline is not None:
        write_timeline.inc(1)

    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_READ)
    assert not sync_file_busy(read_sync_file)
    assert not dmabuf_busy(dmabuf, DMA_BUF_SYNC_WRITE)
    assert not sync_file_busy(write_sync_file)
    for fd in (read_sync_file, write_sync_file, dmabuf):
        close(fd)
    for tl in read_timelines + ([write_timeline] if write_timeline else []):
        tl.close()
