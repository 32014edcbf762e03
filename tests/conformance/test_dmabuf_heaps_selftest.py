"""Port of tools/testing/selftests/dmabuf-heaps/dmabuf-heap.c against the model's system heap.

The selftest runs, for every heap in ``/dev/dma_heap``, ``test_alloc_and_import``,
``test_alloc_zeroed`` (4 KiB and 1 MiB), ``test_alloc_compat`` and ``test_alloc_errors``. The
port drives the model exactly as the C program drives the kernel: it opens the heap device,
issues ``DMA_HEAP_IOCTL_ALLOC`` with a raw ``struct dma_heap_allocation_data`` (smaller and bigger
variants for the compat test), ``mmap``s the dma-buf fd, brackets CPU access with
``DMA_BUF_IOCTL_SYNC``, and closes fds. One pytest test per C test function (the zeroed test is
parametrised by size, as the C program calls it twice).

Substitution: the C test imports the buffer into vgem when present (and skips that part
otherwise); the model has no vgem, so the import is a model device attaching and mapping the
buffer, which additionally checks the bytes the importer's DMA sees.

Kernel: tools/testing/selftests/dmabuf-heaps/dmabuf-heap.c; spec ecosystem-and-users.md §2.2.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.dma_buf import Vma, dma_buf_get
from dmabuf.buf.dma_buf_file import (
    DMA_BUF_IOCTL_SYNC,
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DmaBufSyncArg,
)
from dmabuf.buf.dma_engine import DmaEngine
from dmabuf.buf.file import O_CLOEXEC, O_RDWR, current_process
from dmabuf.buf.heaps import DMA_HEAP_IOCTL_ALLOC, DmaHeapRegistry, system_heap_create
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine
from dmabuf.mm import MemKind, PhysMemory

ONE_MEG = 1024 * 1024
DMA_HEAP_IOC_MAGIC = ord("H")


def _iowr(nr: int, size: int) -> int:
    """``_IOWR(DMA_HEAP_IOC_MAGIC, nr, size)``."""
    return (3 << 30) | (size << 16) | (DMA_HEAP_IOC_MAGIC << 8) | nr


@dataclass
class Ctx:
    machine: Machine
    phys: PhysMemory


@pytest.fixture
def ctx(machine: Machine) -> Iterator[Ctx]:
    phys = PhysMemory()
    phys.add_region("ram0", 128 << 20, MemKind.RAM)
    system_heap_create(phys)
    yield Ctx(machine, phys)
    current_process().fds.close_all()


def _heap_names(ctx: Ctx) -> list[str]:
    """``opendir(/dev/dma_heap)``."""
    return ctx.machine.state(DmaHeapRegistry).names()


def dmabuf_heap_open(ctx: Ctx, name: str) -> int:
    """``open(/dev/dma_heap/<name>, O_RDWR)``."""
    heap = ctx.machine.state(DmaHeapRegistry).find(name)
    assert heap is not None
    return heap.open(O_RDWR)


def _ioctl(fd: int, cmd: int, arg: bytearray) -> int:
    ret: int = current_process().fds.lookup(fd).ioctl(cmd, arg)
    return ret


def dmabuf_heap_alloc_fdflags(fd: int, length: int, fd_flags: int, heap_flags: int) -> int:
    """``dmabuf_heap_alloc_fdflags()``: returns the dma-buf fd (raises on error)."""
    data = bytearray(struct.pack("<QIIQ", length, 0, fd_flags, heap_flags))
    assert _ioctl(fd, DMA_HEAP_IOCTL_ALLOC, data) == 0
    return int(struct.unpack("<QIIQ", data)[1])


def dmabuf_heap_alloc(fd: int, length: int, flags: int) -> int:
    """``dmabuf_heap_alloc()``: fd_flags ``O_RDWR | O_CLOEXEC``."""
    return dmabuf_heap_alloc_fdflags(fd, length, O_RDWR | O_CLOEXEC, flags)


def dmabuf_sync(fd: int, start_stop: int) -> int:
    """``dmabuf_sync()``: ``DMA_BUF_IOCTL_SYNC`` with ``start_stop | DMA_BUF_SYNC_RW``."""
    ret: int = current_process().fds.lookup(fd).ioctl(
        DMA_BUF_IOCTL_SYNC, DmaBufSyncArg(start_stop | DMA_BUF_SYNC_RW))
    return ret


def _mmap(fd: int, length: int) -> object:
    vma = Vma(length=length)
    current_process().fds.lookup(fd).mmap(vma)
    return vma.view


def test_alloc_and_import(ctx: Ctx) -> None:
    """dmabuf-heap.c test_alloc_and_import: allocate 1 MiB, mmap it, fill under SYNC_START/END,
    import it (vgem → a model importer, see the module docstring), and SYNC_START/END must still
    succeed while it is imported."""
    for name in _heap_names(ctx):
        heap_fd = dmabuf_heap_open(ctx, name)
        dmabuf_fd = dmabuf_heap_alloc(heap_fd, ONE_MEG, 0)
        p = _mmap(dmabuf_fd, ONE_MEG)
        dmabuf_sync(dmabuf_fd, DMA_BUF_SYNC_START)
        p[0:ONE_MEG // 2] = 1                         # type: ignore[index]
        p[ONE_MEG // 2:ONE_MEG] = 0                   # type: ignore[index]
        dmabuf_sync(dmabuf_fd, DMA_BUF_SYNC_END)

        # The import: a device attaches, maps, and its DMA sees the CPU's pattern.
        dmabuf = dma_buf_get(dmabuf_fd)
        importer = DirectDev("importer", ctx.phys)
        attach = dmabuf.attach(importer)
        table = attach.map_unlocked(DmaDataDirection.BIDIRECTIONAL)
        seen = DmaEngine(importer).read(table, owner=dmabuf.priv.owner)
        assert int(seen[:ONE_MEG // 2].min()) == 1 and int(seen[ONE_MEG // 2:].max()) == 0

        assert dmabuf_sync(dmabuf_fd, DMA_BUF_SYNC_START) == 0
        p[0:ONE_MEG] = 0xFF                           # type: ignore[index]
        assert dmabuf_sync(dmabuf_fd, DMA_BUF_SYNC_END) == 0
        assert dmabuf.priv.cpu_syncs == 2             # begin/end synced the mapped importer

        attach.unmap_unlocked(table, DmaDataDirection.BIDIRECTIONAL)   # close_handle()
        attach.detach()
        dmabuf.put()
        current_process().fds.close(dmabuf_fd)
        current_process().fds.close(heap_fd)
        assert dmabuf.released


@pytest.mark.parametrize("size", [4096, ONE_MEG], ids=["4k", "1M"])
def test_alloc_zeroed(ctx: Ctx, size: int) -> None:
    """dmabuf-heap.c test_alloc_zeroed(size): allocate 32 buffers, fill each with 0xff through
    mmap under SYNC, close them; 32 new buffers must read back all zeroes (no data leaks between
    allocations)."""
    for name in _heap_names(ctx):
        heap_fd = dmabuf_heap_open(ctx, name)
        fds = [dmabuf_heap_alloc(heap_fd, size, 0) for _ in range(32)]
        for fd in fds:
            p = _mmap(fd, size)
            dmabuf_sync(fd, DMA_BUF_SYNC_START)
            p[0:size] = 0xFF                          # type: ignore[index]
            dmabuf_sync(fd, DMA_BUF_SYNC_END)
            current_process().fds.close(fd)
        fds = [dmabuf_heap_alloc(heap_fd, size, 0) for _ in range(32)]
        for fd in fds:
            p = _mmap(fd, size)
            dmabuf_sync(fd, DMA_BUF_SYNC_START)
            data = p.read()                           # type: ignore[attr-defined]
            assert data.size == size
            assert int(np.count_nonzero(data)) == 0, "leaked data from a previous buffer"
            dmabuf_sync(fd, DMA_BUF_SYNC_END)
            current_process().fds.close(fd)
        current_process().fds.close(heap_fd)


def test_alloc_compat(ctx: Ctx) -> None:
    """dmabuf-heap.c test_alloc_compat: an ALLOC ioctl with a smaller structure (no heap_flags,
    ``_IOWR('H', 0, 16 bytes)``) and one with a bigger structure with trailing garbage (48
    bytes) both succeed and return an fd."""
    for name in _heap_names(ctx):
        heap_fd = dmabuf_heap_open(ctx, name)
        older = bytearray(struct.pack("<QII", ONE_MEG, 0, O_RDWR | O_CLOEXEC))
        assert _ioctl(heap_fd, _iowr(0, 16), older) == 0
        fd_old = struct.unpack("<QII", older)[1]
        buf = dma_buf_get(fd_old)
        assert buf.size == ONE_MEG and buf.exp_name == name
        buf.put()
        current_process().fds.close(fd_old)

        newer = bytearray(struct.pack("<QIIQQQQ", ONE_MEG, 0, O_RDWR | O_CLOEXEC, 0,
                                      0xFFFFFFFF, 0x88888888, 0x11111111))
        assert _ioctl(heap_fd, _iowr(0, 48), newer) == 0
        fields = struct.unpack("<QIIQQQQ", newer)
        assert fields[1] >= 3
        assert fields[4:] == (0xFFFFFFFF, 0x88888888, 0x11111111)   # copied back untouched
        current_process().fds.close(fields[1])
        current_process().fds.close(heap_fd)


def test_alloc_errors(ctx: Ctx) -> None:
    """dmabuf-heap.c test_alloc_errors: an invalid heap fd (0), heap_flags 0x111111 and fd_flags
    ``~(O_RDWR | O_CLOEXEC)`` must each fail."""
    for name in _heap_names(ctx):
        heap_fd = dmabuf_heap_open(ctx, name)
        with pytest.raises(DmaBufError) as e:
            dmabuf_heap_alloc(0, ONE_MEG, 0x111111)
        assert e.value.errno == errno.EBADF
        with pytest.raises(DmaBufError) as e:
            dmabuf_heap_alloc(heap_fd, ONE_MEG, 0x111111)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(DmaBufError) as e:
            dmabuf_heap_alloc_fdflags(heap_fd, ONE_MEG, ~(O_RDWR | O_CLOEXEC) & 0xFFFFFFFF, 0)
        assert e.value.errno == errno.EINVAL
        assert current_process().fds.fds() == [heap_fd]      # nothing leaked
        current_process().fds.close(heap_fd)
