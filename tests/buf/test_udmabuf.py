"""Tests of dmabuf.buf.udmabuf: memfd files, UDMABUF_CREATE(_LIST) checks, zero copy, DMA."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from dmabuf.buf.device import DirectDev, DmaDataDirection
from dmabuf.buf.dma_buf import Vma, dma_buf_get
from dmabuf.buf.dma_engine import DmaEngine
from dmabuf.buf.file import SEEK_END, SEEK_SET, current_process
from dmabuf.buf.udmabuf import (
    UDMABUF_CREATE,
    UDMABUF_CREATE_LIST,
    UDMABUF_FLAGS_CLOEXEC,
    memfd_add_seals,
    memfd_create,
    memfd_get_seals,
    memfd_of,
    udmabuf_device,
)
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.machine import Machine
from dmabuf.mm import OWNER_POISON, PAGE_SIZE, MemKind, PhysMemory
from dmabuf.mm.memfd import (
    F_SEAL_FUTURE_WRITE,
    F_SEAL_GROW,
    F_SEAL_SHRINK,
    F_SEAL_WRITE,
    MFD_ALLOW_SEALING,
    MFD_CLOEXEC,
)
from dmabuf.mm.vma import PROT_READ, VM_SHARED, VM_WRITE

MiB = 1 << 20


@pytest.fixture
def pm(machine: Machine) -> Iterator[PhysMemory]:
    p = PhysMemory()
    p.add_region("ram0", 128 * MiB, MemKind.RAM)
    yield p
    current_process().fds.close_all()


def _sealed(pm: PhysMemory, npages: int, seals: int = F_SEAL_SHRINK) -> int:
    fd = memfd_create(pm, "t", MFD_ALLOW_SEALING)
    memfd_of(fd).ftruncate(npages * PAGE_SIZE)
    memfd_add_seals(fd, seals)
    return fd


def _size(fd: int) -> int:
    b = dma_buf_get(fd)
    try:
        return b.size
    finally:
        b.put()


def _errno(fn: object) -> int:
    with pytest.raises(DmaBufError) as e:
        fn()  # type: ignore[operator]
    return int(e.value.errno)


def test_memfd_file(pm: PhysMemory) -> None:
    fds = current_process().fds
    fd = memfd_create(pm, "file", MFD_ALLOW_SEALING | MFD_CLOEXEC)
    assert fds.is_cloexec(fd)
    f = fds.lookup(fd)
    memfd_of(fd).ftruncate(5 * PAGE_SIZE)
    assert f.llseek(0, SEEK_END) == 5 * PAGE_SIZE              # lseek(SEEK_END) gives the size
    assert f.llseek(0, SEEK_SET) == 0
    memfd_add_seals(fd, F_SEAL_GROW)
    assert memfd_get_seals(fd) == F_SEAL_GROW
    dev_fd = udmabuf_device().open()
    assert _errno(lambda: memfd_get_seals(dev_fd)) == errno.EINVAL   # not a memfd
    assert _errno(lambda: memfd_add_seals(dev_fd, F_SEAL_SHRINK)) == errno.EINVAL
    assert _errno(lambda: memfd_of(dev_fd)) == errno.EINVAL
    assert _errno(lambda: memfd_get_seals(999)) == errno.EBADF
    m = memfd_of(fd)
    m.pwrite(b"x", 0)
    fds.close(fd)                                                  # last close: pages freed
    assert m.released and m.resident_pages == 0


def test_seal_requirements(pm: PhysMemory) -> None:
    dev = udmabuf_device()
    size = 4 * PAGE_SIZE
    unsealed = memfd_create(pm, "u", MFD_ALLOW_SEALING)
    memfd_of(unsealed).ftruncate(size)
    assert _errno(lambda: dev.create(unsealed, 0, size)) == errno.EINVAL     # no SHRINK seal
    for extra in (F_SEAL_WRITE, F_SEAL_FUTURE_WRITE):
        fd = _sealed(pm, 4, F_SEAL_SHRINK | extra)
        assert _errno(lambda fd=fd: dev.create(fd, 0, size)) == errno.EINVAL
    ok = _sealed(pm, 4, F_SEAL_SHRINK | F_SEAL_GROW)
    buf = dev.create(ok, 0, size)
    assert buf >= 3
    assert memfd_of(ok).pinned_pages == 4
    # Pinned pages refuse F_SEAL_WRITE afterwards (memfd_wait_for_pins).
    assert _errno(lambda: memfd_add_seals(ok, F_SEAL_WRITE)) == errno.EBUSY


@pytest.mark.parametrize(("offset", "size", "err"), [
    (PAGE_SIZE // 2, PAGE_SIZE, errno.EINVAL),      # offset not aligned
    (0, PAGE_SIZE // 2, errno.EINVAL),              # size not a page multiple
    (0, 0, errno.EINVAL),                           # no pages
    (2 * PAGE_SIZE, 4 * PAGE_SIZE, errno.EINVAL),   # beyond the memfd size
    (8 * PAGE_SIZE, PAGE_SIZE, errno.EINVAL),       # starts beyond the memfd
])
def test_create_range_checks(pm: PhysMemory, offset: int, size: int, err: int) -> None:
    fd = _sealed(pm, 4)
    assert _errno(lambda: udmabuf_device().create(fd, offset, size)) == err
    assert memfd_of(fd).pinned_pages == 0                          # nothing left pinned


def test_create_fd_checks(pm: PhysMemory) -> None:
    dev = udmabuf_device()
    assert _errno(lambda: dev.create(1234, 0, PAGE_SIZE)) == errno.EBADFD
    dev_fd = dev.open()
    assert _errno(lambda: dev.create(dev_fd, 0, PAGE_SIZE)) == errno.EBADFD


def test_size_and_list_limits(pm: PhysMemory) -> None:
    dev = udmabuf_device()
    fd = _sealed(pm, (64 * MiB) // PAGE_SIZE + 1)
    assert _errno(lambda: dev.create(fd, 0, 64 * MiB + PAGE_SIZE)) == errno.EINVAL
    big = dev.create(fd, 0, 64 * MiB)                               # exactly the limit
    assert _size(big) == 64 * MiB
    small = _sealed(pm, 1)
    assert _errno(lambda: dev.create_list([(small, 0, PAGE_SIZE)] * 1025)) == errno.EINVAL
    fdl = dev.create_list([(small, 0, PAGE_SIZE)] * 3)              # the same page 3 times
    assert _size(fdl) == 3 * PAGE_SIZE
    assert memfd_of(small).pinned_pages == 1
    dev.list_limit = 2                                              # module parameter
    assert _errno(lambda: dev.create_list([(small, 0, PAGE_SIZE)] * 3)) == errno.EINVAL
    assert _errno(lambda: dev.create_list([])) == errno.EINVAL


def test_list_failure_unpins_earlier_items(pm: PhysMemory) -> None:
    good = _sealed(pm, 4)
    bad = _sealed(pm, 4, F_SEAL_SHRINK | F_SEAL_WRITE)
    with pytest.raises(DmaBufError):
        udmabuf_device().create_list([(good, 0, 4 * PAGE_SIZE), (bad, 0, PAGE_SIZE)])
    assert memfd_of(good).pinned_pages == 0


def test_flags(pm: PhysMemory) -> None:
    fds = current_process().fds
    fd = _sealed(pm, 1)
    dev = udmabuf_device()
    assert fds.is_cloexec(dev.create(fd, 0, PAGE_SIZE, UDMABUF_FLAGS_CLOEXEC))
    assert not fds.is_cloexec(dev.create(fd, 0, PAGE_SIZE, 0))
    assert not fds.is_cloexec(dev.create(fd, 0, PAGE_SIZE, 0x10))   # unknown bits ignored


def test_zero_copy_and_release(pm: PhysMemory) -> None:
    fds = current_process().fds
    mfd = _sealed(pm, 16)
    mem = memfd_of(mfd)
    fd = udmabuf_device().create_list([(mfd, 8 * PAGE_SIZE, 4 * PAGE_SIZE),
                                       (mfd, 0, 2 * PAGE_SIZE)])
    buf = dma_buf_get(fd)
    assert buf.exp_name == "udmabuf" and buf.size == 6 * PAGE_SIZE
    assert buf.file.f_mode & 0x3 == 0x3                              # O_RDWR
    # Writes through the memfd are visible through the dma-buf mmap, and vice versa.
    mem.pwrite(b"first", 8 * PAGE_SIZE)
    mem.pwrite(b"second", 0)
    vma = Vma(length=6 * PAGE_SIZE)
    fds.lookup(fd).mmap(vma)
    assert vma.view.read(0, 5).tobytes() == b"first"
    assert vma.view.read(4 * PAGE_SIZE, 6).tobytes() == b"second"
    vma.view.write(4 * PAGE_SIZE + 1, b"E")
    assert mem.pread(6, 0) == b"sEcond"
    priv = Vma.for_mmap(PAGE_SIZE, shared=False)
    with pytest.raises(DmaBufError) as e:
        fds.lookup(fd).mmap(priv)
    assert e.value.errno == errno.EINVAL
    v = buf.vmap_unlocked()
    assert v.read(0, 5).tobytes() == b"first"
    buf.vunmap_unlocked(v)
    # A device DMA through a mapping sees the same bytes.
    dev = DirectDev("nic0", pm)
    a = buf.attach(dev)
    t = a.map_unlocked(DmaDataDirection.BIDIRECTIONAL)
    eng = DmaEngine(dev)
    assert eng.read(t, owner=buf.priv.owner, length=5).tobytes() == b"first"
    eng.write(t, b"DMA!", owner=buf.priv.owner, offset=4 * PAGE_SIZE)
    assert mem.pread(6, 0) == b"DMA!nd"
    buf.begin_cpu_access(DmaDataDirection.BIDIRECTIONAL)
    assert buf.priv.cpu_syncs == 1
    stale = t.dma_ranges()
    a.unmap_unlocked(t, DmaDataDirection.BIDIRECTIONAL)
    a.detach()
    pages = buf.priv.pages
    buf.put()
    fds.close(mfd)                                                   # the memfd goes first
    assert (pm.owners_of(pages) == mem.owner).all()                  # still pinned by udmabuf
    fds.close(fd)                                                    # last ref: unpin
    assert buf.released
    assert (pm.owners_of(pages) == OWNER_POISON).all()
    with pytest.raises(IommuFault):
        DmaEngine(DirectDev("late", pm, check_mapped=False)).read(stale, owner=mem.owner)


def test_multiple_memfds_owner_tuple(pm: PhysMemory) -> None:
    a, b = _sealed(pm, 2), _sealed(pm, 2)
    fd = udmabuf_device().create_list([(a, 0, 2 * PAGE_SIZE), (b, 0, 2 * PAGE_SIZE)])
    buf = dma_buf_get(fd)
    owners = buf.priv.owner
    assert isinstance(owners, tuple) and len(owners) == 2
    dev = DirectDev("nic0", pm)
    att = buf.attach(dev)
    t = att.map_unlocked(0)
    data = np.full(4 * PAGE_SIZE, 7, dtype=np.uint8)
    DmaEngine(dev).write(t, data, owner=owners)
    assert memfd_of(b).pread(2, 0) == b"\x07\x07"
    att.unmap_unlocked(t, 0)
    att.detach()
    buf.put()


def test_device_file_ioctls(pm: PhysMemory) -> None:
    fds = current_process().fds
    mfd = _sealed(pm, 8)
    f = fds.lookup(udmabuf_device().open())
    fd = f.ioctl(UDMABUF_CREATE, bytearray(struct.pack("<IIQQ", mfd, 1, PAGE_SIZE,
                                                       2 * PAGE_SIZE)))
    assert fds.is_cloexec(fd)
    b = dma_buf_get(fd)
    assert b.size == 2 * PAGE_SIZE
    b.put()
    raw = struct.pack("<II", 0, 2) + struct.pack("<IIQQ", mfd, 0, 0, PAGE_SIZE) + \
        struct.pack("<IIQQ", mfd, 0, 4 * PAGE_SIZE, PAGE_SIZE)
    fd2 = f.ioctl(UDMABUF_CREATE_LIST, bytearray(raw))
    b2 = dma_buf_get(fd2)
    assert b2.size == 2 * PAGE_SIZE
    b2.put()
    with pytest.raises(DmaBufError) as e:                 # list shorter than count says
        f.ioctl(UDMABUF_CREATE_LIST, bytearray(raw[:-8]))
    assert e.value.errno == errno.EFAULT
    with pytest.raises(DmaBufError) as e:
        f.ioctl(UDMABUF_CREATE_LIST, bytearray(struct.pack("<II", 0, 1025)))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(DmaBufError) as e:
        f.ioctl(0x1234, bytearray(24))
    assert e.value.errno == errno.ENOTTY
    with pytest.raises(DmaBufError) as e:
        f.ioctl(UDMABUF_CREATE, None)
    assert e.value.errno == errno.EFAULT


def test_end_cpu_access_before_any_begin_is_einval(pm: PhysMemory) -> None:
    """end_cpu_udmabuf(): no ubuf->sg before the first begin -> EINVAL (seen on real 6.12)."""
    from dmabuf.buf.dma_buf_file import (
        DMA_BUF_IOCTL_SYNC,
        DMA_BUF_SYNC_END,
        DMA_BUF_SYNC_RW,
        DMA_BUF_SYNC_START,
        DmaBufSyncArg,
    )

    fd = udmabuf_device().create(_sealed(pm, 2), 0, 2 * PAGE_SIZE)
    f = current_process().fds.lookup(fd)
    buf = dma_buf_get(fd)
    ubuf = buf.priv
    assert ubuf.sg is None
    assert _errno(lambda: buf.end_cpu_access(DmaDataDirection.TO_DEVICE)) == errno.EINVAL
    end = DmaBufSyncArg(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW)
    assert _errno(lambda: f.ioctl(DMA_BUF_IOCTL_SYNC, end)) == errno.EINVAL
    f.ioctl(DMA_BUF_IOCTL_SYNC, DmaBufSyncArg(DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW))
    sg = ubuf.sg
    assert sg is not None and sg.size == 2 * PAGE_SIZE and not sg.dma_mapped
    f.ioctl(DMA_BUF_IOCTL_SYNC, end)
    f.ioctl(DMA_BUF_IOCTL_SYNC, end)                   # the table stays: END again is fine
    buf.begin_cpu_access(DmaDataDirection.FROM_DEVICE)
    assert ubuf.sg is sg                               # created once
    buf.put()
    current_process().fds.close(fd)                    # release_udmabuf(): table freed
    assert buf.released and ubuf.sg is None and sg.freed


def test_memfd_file_mmap(pm: PhysMemory) -> None:
    """shmem_mmap(): shared pages, pinned while mapped, the write-seal rules, EOF handling."""
    fds = current_process().fds
    fd = memfd_create(pm, "map", MFD_ALLOW_SEALING)
    m = memfd_of(fd)
    m.ftruncate(2 * PAGE_SIZE + 10)
    f = fds.lookup(fd)
    vma = Vma(length=3 * PAGE_SIZE)
    f.mmap(vma)
    assert vma.file is f and m.pinned_pages == 2       # the partial page at EOF is not in view
    assert len(vma.view) == 2 * PAGE_SIZE
    vma.view.write(5, b"abc")
    assert m.pread(3, 5) == b"abc"                     # zero copy
    m.pwrite(b"Z", PAGE_SIZE)
    assert vma.view.read(PAGE_SIZE, 1).tobytes() == b"Z"
    assert _errno(lambda: memfd_add_seals(fd, F_SEAL_WRITE)) == errno.EBUSY
    assert vma.vm_ops is not None and vma.vm_ops.close is not None
    vma.close()                                        # vm_ops->close: unpin, munmap
    assert m.pinned_pages == 0
    memfd_add_seals(fd, F_SEAL_WRITE)
    w = Vma(length=PAGE_SIZE)
    assert w.vm_flags & (VM_WRITE | VM_SHARED) == VM_WRITE | VM_SHARED      # the default
    assert _errno(lambda: f.mmap(w)) == errno.EPERM    # writable shared of a sealed memfd
    for ok in (Vma.for_mmap(PAGE_SIZE, shared=False),
               Vma.for_mmap(PAGE_SIZE, prot=PROT_READ)):
        assert ok.writable != ok.shared
        f.mmap(ok)
        assert ok.view.read(5, 3).tobytes() == b"abc"
        ok.close()
    past = Vma.for_mmap(PAGE_SIZE, pgoff=3, shared=False)
    f.mmap(past)                                       # beyond EOF: no pages in the view
    assert len(past.view) == 0 and m.pinned_pages == 0
    past.close()
    assert _errno(lambda: f.mmap(Vma(length=0))) == errno.EINVAL
    fds.close(fd)
    assert m.released
