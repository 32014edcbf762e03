"""dmabuf.backends.model: the uAPI bindings on the model kernel — every ioctl's error paths.

The parity table (tests/parity) compares the model with the real kernel; these tests go beyond
it: each ioctl the model serves (dma-buf, sync_file, dma-heap, udmabuf, vgem/DRM) with bad
arguments, short or read-only argument buffers, wrong file types and closed fds, and the
system calls around them (mmap, poll, lseek, fstat, fcntl, procfs, fd passing, fork, revoke).
Errors are asserted by errno; what the kernel would do is cited per test.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import mmap
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from dmabuf.backends import ModelBackend, ModelMapping, model_uapi_backend
from dmabuf.backends.model import MODEL_RELEASE
from dmabuf.machine import Machine
from dmabuf.uapi import (
    DmaBufFile,
    DmaHeap,
    Memfd,
    SyncFile,
    Udmabuf,
    VgemDevice,
    process_dmabufs,
    read_bufinfo,
    read_fdinfo,
    recv_dmabuf,
    recv_fds,
    send_dmabuf,
    send_fds,
)
from dmabuf.uapi.dma_buf import (
    DMA_BUF_IOCTL_EXPORT_SYNC_FILE,
    DMA_BUF_IOCTL_IMPORT_SYNC_FILE,
    DMA_BUF_IOCTL_SYNC,
    DMA_BUF_SET_NAME_A,
    DMA_BUF_SET_NAME_B,
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
)
from dmabuf.uapi.dma_heap import dma_heap_ioctl_alloc
from dmabuf.uapi.ioctl import IOW, IOWR
from dmabuf.uapi.memfd import F_SEAL_SHRINK, F_SEAL_WRITE
from dmabuf.uapi.sync_file import (
    SYNC_IOC_FILE_INFO,
    SYNC_IOC_MERGE,
    SYNC_IOC_SET_DEADLINE,
    SyncFileInfoStruct,
    SyncMergeData,
    SyncSetDeadline,
)
from dmabuf.uapi.udmabuf import (
    UDMABUF_CREATE,
    UDMABUF_CREATE_LIST,
    udmabuf_ioctl_create,
    udmabuf_ioctl_create_list,
)
from dmabuf.uapi.vgem import (
    DRM_IOCTL_GEM_CLOSE,
    DRM_IOCTL_MODE_CREATE_DUMB,
    DRM_IOCTL_MODE_MAP_DUMB,
    DRM_IOCTL_PRIME_FD_TO_HANDLE,
    DRM_IOCTL_PRIME_HANDLE_TO_FD,
    DRM_IOCTL_VERSION,
    DRM_IOCTL_VGEM_FENCE_SIGNAL,
    DrmModeMapDumb,
    DrmPrimeHandle,
    drm_driver_name,
)

PAGE = 4096


def code(fn: Callable[[], object]) -> str:
    """``"ok"`` or the errno name ``fn`` raised."""
    try:
        fn()
    except OSError as e:
        return errno.errorcode[e.errno or 0]
    return "ok"


@pytest.fixture
def be(machine: Machine) -> Iterator[ModelBackend]:
    """A model backend on the test's machine; no WARN and no timer thread left afterwards."""
    b = model_uapi_backend(machine, ram_size=256 << 20)
    yield b
    assert b.shutdown(10.0)
    assert machine.warnings == []


@pytest.fixture
def ubuf(be: ModelBackend) -> Iterator[tuple[DmaBufFile, Memfd]]:
    """A 4-page udmabuf over a sealed memfd."""
    with Memfd.create("t", 4 * PAGE, backend=be) as m:
        m.seal_for_udmabuf()
        with Udmabuf.open(be) as dev, dev.create(m) as buf:
            yield buf, m


# ------------------------------------------------------------------------------------------
# the factory and the kernel


def test_factory_boots_once_per_machine(machine: Machine) -> None:
    """Two backends on one machine share its kernel (one system heap, one RAM region)."""
    a = model_uapi_backend(machine, ram_size=64 << 20)
    b = model_uapi_backend(machine, ram_size=128 << 20)
    assert a.kernel is b.kernel
    assert a.kernel.ram.size == 64 << 20
    assert a.listdir("/dev/dma_heap") == ["system"]
    assert a.read_text("/proc/sys/kernel/osrelease") == MODEL_RELEASE + "\n"
    assert a.listdir("/dev/dri") == ["card0", "renderD128"]
    assert a.page_size == PAGE


def test_factory_rejects_bad_arguments(machine: Machine) -> None:
    with pytest.raises(TypeError):
        ModelBackend("not a machine")  # type: ignore[arg-type]
    assert code(lambda: model_uapi_backend(Machine(), ram_size=PAGE + 1)) == "EINVAL"


def test_default_machine_is_the_current_one(machine: Machine) -> None:
    assert model_uapi_backend().machine is machine


# ------------------------------------------------------------------------------------------
# DMA_BUF_IOCTL_SYNC, SET_NAME, EXPORT/IMPORT_SYNC_FILE


def test_sync_errors(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    """dma_buf_ioctl(SYNC): flags checked (EINVAL), struct copied (EFAULT), fd checked."""
    buf, m = ubuf
    fd = buf.fileno()
    assert code(lambda: buf.sync(0x10, validate=False)) == "EINVAL"
    assert code(lambda: buf.sync(DMA_BUF_SYNC_END, validate=False)) == "EINVAL"
    assert code(lambda: be.ioctl(fd, DMA_BUF_IOCTL_SYNC, bytearray(4))) == "EFAULT"
    assert code(lambda: be.ioctl(fd, DMA_BUF_IOCTL_SYNC, None)) == "EFAULT"  # type: ignore
    # udmabuf: END before the first START has no own mapping to sync (udmabuf.c).
    assert code(lambda: buf.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW)) == "EINVAL"
    buf.sync(DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW)
    buf.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW)
    assert code(lambda: buf.sync(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW)) == "ok"
    flags = struct.pack("<Q", DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW)
    assert code(lambda: be.ioctl(m.fileno(), DMA_BUF_IOCTL_SYNC, bytearray(flags))) == "ENOTTY"
    assert code(lambda: be.ioctl(999, DMA_BUF_IOCTL_SYNC, bytearray(flags))) == "EBADF"
    assert code(lambda: be.ioctl(fd, IOW("b", 9, 8), bytearray(8))) == "ENOTTY"


def test_set_name_errors(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    """SET_NAME_A/B read a NUL-terminated string of at most 32 bytes (strndup_user)."""
    buf, _ = ubuf
    fd = buf.fileno()
    assert code(lambda: be.ioctl(fd, DMA_BUF_SET_NAME_B, bytearray(b"x" * 32))) == "EINVAL"
    assert code(lambda: be.ioctl(fd, DMA_BUF_SET_NAME_B, bytearray(b"x" * 32 + b"\0"))) \
        == "EINVAL"
    assert code(lambda: be.ioctl(fd, DMA_BUF_SET_NAME_B, None)) == "EFAULT"  # type: ignore
    be.ioctl(fd, DMA_BUF_SET_NAME_A, bytearray(b"cut\0ignored"))
    assert buf.name == "cut"
    assert be.readlink(f"/proc/self/fd/{fd}") == "/dmabuf:cut"


def test_export_sync_file_errors(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    buf, _ = ubuf
    fd = buf.fileno()
    for flags in (0, 4, 8, 1 << 31):
        assert code(lambda f=flags: buf.export_sync_file_flags(f, validate=False)) == "EINVAL"
    assert code(lambda: be.ioctl(fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, bytearray(4))) == "EFAULT"
    arg = bytes(struct.pack("<Ii", 3, -1))
    assert code(lambda: be.ioctl(fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, arg)) == "EFAULT"  # type: ignore
    out = bytearray(struct.pack("<Ii", 3, -1))
    be.ioctl(fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, out)
    sfd = struct.unpack("<Ii", out)[1]
    assert be.readlink(f"/proc/self/fd/{sfd}") == "anon_inode:sync_file"
    be.close(sfd)


def test_import_sync_file_errors(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    buf, m = ubuf
    with buf.export_sync_file() as sf:
        for flags in (0, 4, 8):
            assert code(lambda f=flags: buf.import_sync_file_flags(sf, f, validate=False)) \
                == "EINVAL"
        assert code(lambda: buf.import_sync_file(m.fileno())) == "EINVAL"
        assert code(lambda: buf.import_sync_file(1234)) == "EINVAL"
        assert code(lambda: be.ioctl(buf.fileno(), DMA_BUF_IOCTL_IMPORT_SYNC_FILE,
                                     bytearray(7))) == "EFAULT"
        buf.import_sync_file(sf, read=True, write=False)


# ------------------------------------------------------------------------------------------
# sync_file ioctls


@pytest.fixture
def sf(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> Iterator[SyncFile]:
    with ubuf[0].export_sync_file() as s:
        yield s


def test_merge_errors(be: ModelBackend, sf: SyncFile, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    """sync_file_ioctl_merge(): flags/pad EINVAL, fd2 not a sync_file ENOENT, EFAULT."""
    fd = sf.fileno()

    def merge(**fields: int) -> None:
        buf = bytearray(ctypes.sizeof(SyncMergeData))
        d = SyncMergeData.from_buffer(buf)
        d.name = b"m"
        d.fd2 = fields.get("fd2", fd)
        d.flags = fields.get("flags", 0)
        d.pad = fields.get("pad", 0)
        be.ioctl(fd, SYNC_IOC_MERGE, buf)
        be.close(SyncMergeData.from_buffer(buf).fence)

    assert code(merge) == "ok"
    assert code(lambda: merge(flags=1)) == "EINVAL"
    assert code(lambda: merge(pad=1)) == "EINVAL"
    assert code(lambda: merge(fd2=ubuf[0].fileno())) == "ENOENT"
    assert code(lambda: merge(fd2=777)) == "ENOENT"
    assert code(lambda: be.ioctl(fd, SYNC_IOC_MERGE, bytearray(40))) == "EFAULT"
    assert code(lambda: sf.merge(sf, "n" * 32)) == "EINVAL"   # the binding's check
    with sf.merge(sf, "x" * 31) as m2:
        assert m2.info().name == "x" * 31


def test_file_info_errors(be: ModelBackend, sf: SyncFile) -> None:
    """FILE_INFO: flags/pad EINVAL, too few slots EINVAL, NULL array EFAULT."""
    fd = sf.fileno()

    def info(**fields: int) -> SyncFileInfoStruct:
        buf = bytearray(ctypes.sizeof(SyncFileInfoStruct))
        s = SyncFileInfoStruct.from_buffer(buf)
        for k, v in fields.items():
            setattr(s, k, v)
        be.ioctl(fd, SYNC_IOC_FILE_INFO, buf)
        return SyncFileInfoStruct.from_buffer_copy(buf)

    assert info().num_fences == 1
    assert code(lambda: info(flags=1)) == "EINVAL"
    assert code(lambda: info(pad=1)) == "EINVAL"
    assert code(lambda: info(num_fences=1, sync_fence_info=0)) == "EFAULT"
    with sf.merge(sf) as same:
        assert same.info().num_fences == 1
    assert code(lambda: be.ioctl(fd, SYNC_IOC_FILE_INFO, bytearray(8))) == "EFAULT"
    assert code(lambda: be.ioctl(fd, IOWR(">", 9, 8), bytearray(8))) == "ENOTTY"


def test_file_info_too_few_slots(be: ModelBackend) -> None:
    """A merged sync_file of two contexts refuses num_fences=1 (EINVAL)."""
    with VgemDevice.open(be) as dev, dev.create_dumb(8, 8) as a, dev.create_dumb(8, 8) as b, \
            a.export() as da, b.export() as db:
        fa, fb = a.attach_fence(write=True), b.attach_fence(write=True)
        with da.export_sync_file() as s1, db.export_sync_file() as s2, s1.merge(s2) as m:
            buf = bytearray(ctypes.sizeof(SyncFileInfoStruct))
            SyncFileInfoStruct.from_buffer(buf).num_fences = 1
            arr = ctypes.create_string_buffer(80)
            SyncFileInfoStruct.from_buffer(buf).sync_fence_info = ctypes.addressof(arr)
            assert code(lambda: be.ioctl(m.fileno(), SYNC_IOC_FILE_INFO, buf)) == "EINVAL"
            assert m.info().num_fences == 2
        fa.signal()
        fb.signal()


def test_set_deadline_errors(be: ModelBackend, sf: SyncFile) -> None:
    buf = bytearray(ctypes.sizeof(SyncSetDeadline))
    SyncSetDeadline.from_buffer(buf).pad = 1
    assert code(lambda: be.ioctl(sf.fileno(), SYNC_IOC_SET_DEADLINE, buf)) == "EINVAL"
    assert code(lambda: be.ioctl(sf.fileno(), SYNC_IOC_SET_DEADLINE, bytearray(8))) == "EFAULT"
    sf.set_deadline(1)


# ------------------------------------------------------------------------------------------
# DMA_HEAP_IOCTL_ALLOC


def test_heap_alloc_errors(be: ModelBackend) -> None:
    """dma_heap_ioctl(): nr, size compatibility, fd/fd_flags/heap_flags/len checks."""
    with DmaHeap.open("system", be) as heap, Memfd.create("h", PAGE, backend=be) as m:
        hfd = heap.fileno()
        assert code(lambda: dma_heap_ioctl_alloc(be, hfd, PAGE, fd_in=1)) == "EINVAL"
        assert code(lambda: dma_heap_ioctl_alloc(be, hfd, PAGE, fd_flags=os.O_APPEND)) \
            == "EINVAL"
        assert code(lambda: dma_heap_ioctl_alloc(be, hfd, PAGE, heap_flags=1)) == "EINVAL"
        assert code(lambda: dma_heap_ioctl_alloc(be, hfd, 0)) == "EINVAL"
        assert code(lambda: dma_heap_ioctl_alloc(be, hfd, (1 << 64) - 1)) == "EINVAL"
        assert code(lambda: be.ioctl(hfd, IOWR("H", 2, 24), bytearray(24))) == "EINVAL"
        assert code(lambda: be.ioctl(hfd, IOWR("H", 0, 24), bytearray(16))) == "EFAULT"
        assert code(lambda: dma_heap_ioctl_alloc(be, m.fileno(), PAGE)) == "ENOTTY"
        assert code(lambda: heap.alloc(1 << 40)) == "ENOMEM"
        fd = dma_heap_ioctl_alloc(be, hfd, PAGE + 1, fd_flags=os.O_RDONLY)
        with DmaBufFile(fd, be) as b:
            assert b.size == 2 * PAGE
            assert (be.fcntl(fd, 1), b.fdinfo().flags) == (0, os.O_RDONLY)
    assert code(lambda: DmaHeap.open("nope", be)) == "ENOENT"
    assert code(lambda: be.open("/dev/dma_heap", os.O_RDONLY)) == "EISDIR"


# ------------------------------------------------------------------------------------------
# UDMABUF_CREATE(_LIST)


def test_udmabuf_create_errors(be: ModelBackend) -> None:
    """udmabuf_create(): alignment, size, memfd type, seals, extent, limits (raw ioctls)."""
    with Memfd.create("u", 8 * PAGE, backend=be) as m, Udmabuf.open(be) as dev, \
            Memfd.create("unsealed", PAGE, backend=be) as un, \
            Memfd.create("w", PAGE, backend=be) as ws:
        m.seal_for_udmabuf()
        ws.add_seals(F_SEAL_SHRINK | F_SEAL_WRITE)
        d, mf = dev.fileno(), m.fileno()

        def raw(fd: int, off: int, size: int) -> str:
            got: list[int] = []
            r = code(lambda: got.append(udmabuf_ioctl_create(be, d, fd, off, size)))
            for x in got:
                be.close(x)
            return r

        assert raw(mf, 1, PAGE) == "EINVAL"
        assert raw(mf, 0, PAGE + 1) == "EINVAL"
        assert raw(mf, 0, 0) == "EINVAL"
        assert raw(mf, 8 * PAGE, PAGE) == "EINVAL"
        assert raw(mf, 0, 65 << 20) == "EINVAL"
        assert raw(d, 0, PAGE) == "EBADFD"        # the device itself is no memfd
        assert raw(555, 0, PAGE) == "EBADFD"      # closed fd
        assert raw(un.fileno(), 0, PAGE) == "EINVAL"
        assert raw(ws.fileno(), 0, PAGE) == "EINVAL"
        assert raw(mf, 0, 8 * PAGE) == "ok"
        assert code(lambda: be.ioctl(d, UDMABUF_CREATE, bytearray(16))) == "EFAULT"
        assert code(lambda: be.ioctl(d, IOW("u", 0x45, 8), bytearray(8))) == "ENOTTY"
        assert code(lambda: be.ioctl(mf, UDMABUF_CREATE, bytearray(24))) == "ENOTTY"


def test_udmabuf_create_list_errors(be: ModelBackend) -> None:
    with Memfd.create("l", 4 * PAGE, backend=be) as m, Udmabuf.open(be) as dev:
        m.seal_for_udmabuf()
        d, mf = dev.fileno(), m.fileno()

        def raw(items: list[tuple[int, int, int]], count: int | None = None) -> str:
            got: list[int] = []
            r = code(lambda: got.append(udmabuf_ioctl_create_list(be, d, items, count=count)))
            for x in got:
                be.close(x)
            return r

        assert raw([]) == "EINVAL"
        assert raw([(mf, 0, PAGE)], count=1025) == "EINVAL"
        assert raw([(mf, 0, PAGE), (mf, 1, PAGE)]) == "EINVAL"
        assert raw([(mf, 0, PAGE), (d, 0, PAGE)]) == "EBADFD"
        assert raw([(mf, 0, PAGE)], count=2) == "EFAULT"     # the second item is missing
        assert code(lambda: be.ioctl(d, UDMABUF_CREATE_LIST, bytearray(4))) == "EFAULT"
        assert raw([(mf, 0, PAGE), (mf, 3 * PAGE, PAGE)]) == "ok"
        # pins taken for an item are released when a later item fails: the memfd has no pin
        # left once the good list is closed, so F_SEAL_WRITE (EBUSY while pinned) works
        m.add_seals(F_SEAL_WRITE)
        assert m.seals & F_SEAL_WRITE


# ------------------------------------------------------------------------------------------
# vgem / DRM


@pytest.fixture
def dev(be: ModelBackend) -> Iterator[VgemDevice]:
    with VgemDevice.open(be) as d:
        yield d


def test_drm_version_and_unknown_ioctls(be: ModelBackend, dev: VgemDevice,
                                        ubuf: tuple[DmaBufFile, Memfd]) -> None:
    assert drm_driver_name(dev.fileno(), be) == "vgem"
    assert code(lambda: drm_driver_name(ubuf[0].fileno(), be)) == "ENOTTY"
    assert code(lambda: be.ioctl(dev.fileno(), IOWR("d", 0x0C, 16), bytearray(16))) == "EINVAL"
    assert code(lambda: be.ioctl(dev.fileno(), IOWR("d", 0x43, 8), bytearray(8))) == "EINVAL"
    assert code(lambda: be.ioctl(dev.fileno(), DRM_IOCTL_VERSION, bytearray(8))) == "EFAULT"
    assert code(lambda: be.ioctl(dev.fileno(), DRM_IOCTL_VERSION, bytes(64))) == "EFAULT"  # type: ignore
    assert "drm-driver:\tvgem" in be.read_text(f"/proc/self/fdinfo/{dev.fileno()}")


def test_create_and_map_dumb_errors(be: ModelBackend, dev: VgemDevice) -> None:
    assert code(lambda: dev.create_dumb(0, 8)) == "EINVAL"
    assert code(lambda: dev.create_dumb(8, 0)) == "EINVAL"
    assert code(lambda: dev.create_dumb(8, 8, 0)) == "EINVAL"
    assert code(lambda: dev.create_dumb(1 << 30, 1 << 30, 32)) == "EINVAL"
    assert code(lambda: dev.create_dumb(8, 8, 0xFFFFFFF9)) == "EINVAL"
    assert code(lambda: be.ioctl(dev.fileno(), DRM_IOCTL_MODE_CREATE_DUMB, bytearray(16))) \
        == "EFAULT"
    buf = bytearray(ctypes.sizeof(DrmModeMapDumb))
    DrmModeMapDumb.from_buffer(buf).handle = 42
    assert code(lambda: be.ioctl(dev.fileno(), DRM_IOCTL_MODE_MAP_DUMB, buf)) == "ENOENT"
    with dev.create_dumb(64, 64, 32) as bo:
        assert (bo.size, bo.pitch, bo.handle) == (16384, 256, 1)
        DrmModeMapDumb.from_buffer(buf).handle = bo.handle
        be.ioctl(dev.fileno(), DRM_IOCTL_MODE_MAP_DUMB, buf)
        off = DrmModeMapDumb.from_buffer(buf).offset
        assert off == 1 << 32
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        assert code(lambda: be.mmap(dev.fileno(), PAGE, prot=rw, flags=mmap.MAP_SHARED,
                                    offset=off + PAGE)) == "EINVAL"
        assert code(lambda: be.mmap(dev.fileno(), 5 * PAGE, prot=rw, flags=mmap.MAP_SHARED,
                                    offset=off)) == "EINVAL"
        assert code(lambda: be.mmap(dev.fileno(), PAGE, prot=rw, flags=mmap.MAP_PRIVATE,
                                    offset=off)) == "EINVAL"
        with bo.export() as d, d.cpu_access(write=True) as v:
            assert code(lambda: be.mmap(d.fileno(), PAGE, prot=rw,
                                        flags=mmap.MAP_PRIVATE)) == "EINVAL"
            v[:3] = b"abc"
        with dev.map_dumb(bo) as mv:
            assert bytes(mv[:3]) == b"abc"


def test_gem_close_and_prime_errors(be: ModelBackend, dev: VgemDevice,
                                    ubuf: tuple[DmaBufFile, Memfd]) -> None:
    fd = dev.fileno()
    assert code(lambda: dev.gem_close(1)) == "EINVAL"
    assert code(lambda: dev.export(7)) == "ENOENT"
    assert code(lambda: dev.import_dmabuf(999)) == "EBADF"
    assert code(lambda: dev.import_dmabuf(ubuf[1].fileno())) == "EINVAL"
    buf = bytearray(ctypes.sizeof(DrmPrimeHandle))
    p = DrmPrimeHandle.from_buffer(buf)
    with dev.create_dumb(8, 8) as bo:
        p.handle, p.flags = bo.handle, 1 << 20
        assert code(lambda: be.ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, buf)) == "EINVAL"
        assert code(lambda: be.ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, bytearray(8))) \
            == "EFAULT"
        assert code(lambda: be.ioctl(fd, DRM_IOCTL_PRIME_FD_TO_HANDLE, bytearray(4))) \
            == "EFAULT"
        assert code(lambda: be.ioctl(fd, DRM_IOCTL_GEM_CLOSE, bytearray(4))) == "EFAULT"
        with bo.export(rdwr=False) as d:
            assert d.fdinfo().flags is not None and d.fdinfo().flags & os.O_ACCMODE == 0
            assert code(lambda: d.cpu_access(write=True).__enter__()) == "EACCES"
        # the handle closed: GEM_CLOSE again is EINVAL
    assert code(lambda: dev.gem_close(1)) == "EINVAL"


def test_prime_import_of_foreign_buffer_counts(be: ModelBackend, dev: VgemDevice) -> None:
    """Import attaches + maps for vgem and holds three references until GEM_CLOSE."""
    with DmaHeap.open("system", be) as heap, heap.alloc(PAGE) as h:
        handle = dev.import_dmabuf(h)
        assert dev.import_dmabuf(h) == handle
        assert h.fdinfo().count == 4
        o = read_bufinfo(be).find(h.inode)
        assert o is not None and o.attached_devices == ("vgem",)
        buf = bytearray(ctypes.sizeof(DrmModeMapDumb))
        DrmModeMapDumb.from_buffer(buf).handle = handle
        assert code(lambda: be.ioctl(dev.fileno(), DRM_IOCTL_MODE_MAP_DUMB, buf)) == "EINVAL"
        with dev.export(handle) as again:          # re-export of an import: the same buffer
            assert again.inode == h.inode
        dev.gem_close(handle)
        assert h.fdinfo().count == 1
        o = read_bufinfo(be).find(h.inode)
        assert o is not None and o.attached_devices == ()


def test_fence_attach_and_signal_errors(be: ModelBackend, dev: VgemDevice) -> None:
    with dev.create_dumb(8, 8) as bo:
        assert code(lambda: dev.attach_fence(bo, flags=2)) == "EINVAL"
        assert code(lambda: dev.attach_fence(bo, pad=1)) == "EINVAL"
        assert code(lambda: dev.attach_fence(99)) == "ENOENT"
        w = bo.attach_fence(write=True)
        assert code(lambda: bo.attach_fence(write=False)) == "EBUSY"
        assert code(lambda: bo.attach_fence(write=True)) == "EBUSY"
        assert code(lambda: dev.signal_fence(w.id, flags=1)) == "EINVAL"
        assert code(lambda: dev.signal_fence(w.id + 10)) == "ENOENT"
        assert code(lambda: be.ioctl(dev.fileno(), DRM_IOCTL_VGEM_FENCE_SIGNAL,
                                     bytearray(4))) == "EFAULT"
        w.signal()
        assert code(w.signal) == "ENOENT"
        r = bo.attach_fence(write=False)
        assert r.id == w.id + 1
        r.signal()


def test_fence_timeout_gives_etimedout(be: ModelBackend, dev: VgemDevice) -> None:
    """A fence left alone is signalled by its timer; signalling it then is ETIMEDOUT."""
    be.kernel.vgem.fence_timeout = 0.2
    with dev.create_dumb(8, 8) as bo, bo.export() as d:
        f = bo.attach_fence(write=True)
        assert d.busy(read=True)
        assert d.wait(write=False, timeout=10.0)      # the timer signals it
        assert code(f.signal) == "ETIMEDOUT"
        assert code(f.signal) == "ENOENT"


def test_closing_the_drm_file_releases_everything(be: ModelBackend) -> None:
    dev = VgemDevice.open(be)
    bo = dev.create_dumb(8, 8)
    d = bo.export()
    assert d.fdinfo().count == 3
    bo.attach_fence(write=True)
    dev.close()
    with d:
        assert d.fdinfo().count == 1          # the export cache and PRIME entry are gone
        assert not d.busy(write=True)
        with d.cpu_access(write=True) as v:   # the object lives on through the dma-buf
            v[:2] = b"ok"


# ------------------------------------------------------------------------------------------
# mmap, revoke, zero copy


def test_mmap_errors(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    buf, _ = ubuf
    fd = buf.fileno()
    rw = mmap.PROT_READ | mmap.PROT_WRITE
    assert code(lambda: be.mmap(fd, 0, prot=rw, flags=mmap.MAP_SHARED)) == "EINVAL"
    assert code(lambda: be.mmap(fd, PAGE, prot=rw, flags=mmap.MAP_SHARED, offset=1)) == "EINVAL"
    assert code(lambda: be.mmap(fd, PAGE, prot=rw, flags=0)) == "EINVAL"
    assert code(lambda: be.mmap(fd, 5 * PAGE, prot=rw, flags=mmap.MAP_SHARED)) == "EINVAL"
    assert code(lambda: be.mmap(fd, PAGE, prot=rw, flags=mmap.MAP_PRIVATE)) == "EINVAL"
    assert code(lambda: be.mmap(777, PAGE, prot=rw, flags=mmap.MAP_SHARED)) == "EBADF"
    with buf.export_sync_file() as sf:
        # a sync_file is O_RDONLY: do_mmap refuses a shared writable map before f_op->mmap
        assert code(lambda: be.mmap(sf.fileno(), PAGE, prot=rw, flags=mmap.MAP_SHARED)) \
            == "EACCES"
        assert code(lambda: be.mmap(sf.fileno(), PAGE, prot=mmap.PROT_READ,
                                    flags=mmap.MAP_SHARED)) == "ENODEV"
    with Udmabuf.open(be) as dev:
        assert code(lambda: be.mmap(dev.fileno(), PAGE, prot=rw, flags=mmap.MAP_SHARED)) \
            == "ENODEV"
    assert buf.fdinfo().count == 1      # nothing leaked by the failures


def test_readonly_heap_buffer_maps_read_only(be: ModelBackend) -> None:
    with DmaHeap.open("system", be) as heap, \
            heap.alloc(PAGE, fd_flags=os.O_RDONLY | os.O_CLOEXEC) as b:
        assert code(lambda: be.mmap(b.fileno(), PAGE, prot=mmap.PROT_WRITE | mmap.PROT_READ,
                                    flags=mmap.MAP_SHARED)) == "EACCES"
        r = be.mmap(b.fileno(), PAGE, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED)
        assert memoryview(r).readonly
        r.close()
        # a private writable mapping needs only read access (copy on write)
        p = be.mmap(b.fileno(), PAGE, prot=mmap.PROT_WRITE | mmap.PROT_READ,
                    flags=mmap.MAP_PRIVATE)
        memoryview(p)[0] = 7
        p.close()
        with b.cpu_access(read=True) as v:
            assert v[0] == 0


def test_mapping_is_the_model_pages(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    """The host mapping aliases the model's physical pages (zero copy both ways)."""
    buf, m = ubuf
    region = be.mmap(buf.fileno(), 4 * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                     flags=mmap.MAP_SHARED)
    assert isinstance(region, ModelMapping)
    dmabuf = region.file.private_data
    phys = be.kernel.phys
    pages = dmabuf.priv.pages
    memoryview(region)[PAGE:PAGE + 4] = b"HOST"
    assert bytes(phys.read(pages)[PAGE:PAGE + 4]) == b"HOST"
    from dmabuf.mm.ranges import slice_ranges

    phys.write(slice_ranges(pages, 0, 1), b"\x09")   # a "device" writes the first byte
    assert memoryview(region)[0] == 9
    assert m.read(PAGE, 4) == b"HOST"
    assert buf.fdinfo().count == 3                   # fd + VMA + CPython's dup
    region.close()
    assert buf.fdinfo().count == 1


def test_close_with_views_raises_buffererror_and_revoke_cuts_off(
        be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    buf, m = ubuf
    region = be.mmap(buf.fileno(), PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                     flags=mmap.MAP_SHARED)
    view = memoryview(region)
    with pytest.raises(BufferError):
        region.close()
    assert buf.fdinfo().count == 3
    be.revoke(region)
    assert isinstance(region, ModelMapping) and region.revoked
    view[:4] = b"gone"
    assert m.read(0, 4) == b"\0\0\0\0"
    assert buf.fdinfo().count == 2                   # the dup lives until the object dies
    view.release()
    del view, region
    gc.collect()
    assert buf.fdinfo().count == 1
    with pytest.raises(TypeError):
        be.revoke(mmap.mmap(-1, PAGE))


def test_memfd_mmap(be: ModelBackend) -> None:
    """The memfd file's mmap: shared pages, write-seal rules, zeros past the last whole page."""
    with Memfd.create("mm", 2 * PAGE + 10, backend=be) as m:
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        r = be.mmap(m.fileno(), 2 * PAGE, prot=rw, flags=mmap.MAP_SHARED)
        memoryview(r)[5:8] = b"abc"
        assert m.read(5, 3) == b"abc"
        m.write(PAGE, b"Z")
        assert memoryview(r)[PAGE] == ord("Z")
        assert code(lambda: m.add_seals(F_SEAL_WRITE)) == "EBUSY"
        r.close()
        m.add_seals(F_SEAL_WRITE)
        assert code(lambda: be.mmap(m.fileno(), PAGE, prot=rw, flags=mmap.MAP_SHARED)) \
            == "EPERM"
        ro = be.mmap(m.fileno(), 3 * PAGE, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED)
        assert bytes(memoryview(ro)[5:8]) == b"abc"
        m_size = m.size
        assert m_size == 2 * PAGE + 10
        assert bytes(memoryview(ro)[2 * PAGE:2 * PAGE + 4]) == b"\0" * 4
        ro.close()
        assert code(lambda: be.mmap(m.fileno(), PAGE, prot=mmap.PROT_READ,
                                    flags=mmap.MAP_SHARED, offset=3 * PAGE)) == "ok"


# ------------------------------------------------------------------------------------------
# poll, lseek, fstat, fcntl, paths


def test_poll_lseek_fstat_fcntl(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    buf, m = ubuf
    assert be.poll([(555, select.POLLIN)], 0) == [(555, 0x20)]       # POLLNVAL
    both = select.POLLIN | select.POLLOUT
    assert be.poll([(buf.fileno(), both), (m.fileno(), select.POLLIN)], 0) == [
        (buf.fileno(), both), (m.fileno(), select.POLLIN)]
    with buf.export_sync_file() as sf:
        assert be.poll([(sf.fileno(), select.POLLIN)], None) == [(sf.fileno(), select.POLLIN)]
        assert code(lambda: be.lseek(sf.fileno(), 0, os.SEEK_SET)) == "ESPIPE"
    assert be.lseek(m.fileno(), 0, os.SEEK_END) == 4 * PAGE
    assert code(lambda: be.lseek(buf.fileno(), 0, os.SEEK_CUR)) == "EINVAL"
    st = be.fstat(buf.fileno())
    assert (st.st_size, st.st_ino) == (4 * PAGE, buf.inode)
    assert be.fstat(m.fileno()).st_size == 4 * PAGE
    assert code(lambda: be.fstat(555)) == "EBADF"
    assert be.fcntl(buf.fileno(), 1) == 1                             # F_GETFD: FD_CLOEXEC
    assert be.fcntl(buf.fileno(), 3) & os.O_ACCMODE == os.O_RDWR      # F_GETFL
    dupfd = be.fcntl(buf.fileno(), 0)                                 # F_DUPFD
    assert be.fcntl(dupfd, 1) == 0
    be.close(dupfd)
    assert code(lambda: be.fcntl(buf.fileno(), 1033, 1)) == "EINVAL"  # F_ADD_SEALS
    assert code(lambda: be.fcntl(buf.fileno(), 1034)) == "EINVAL"     # F_GET_SEALS
    assert code(lambda: be.fcntl(buf.fileno(), 4, 0)) == "EINVAL"     # F_SETFL: not modelled
    assert code(lambda: be.fcntl(555, 1)) == "EBADF"
    assert code(lambda: be.close(555)) == "EBADF"
    assert code(lambda: be.ftruncate(buf.fileno(), 0)) == "EINVAL"
    assert code(lambda: be.pread(buf.fileno(), 1, 0)) == "EINVAL"
    assert code(lambda: m.truncate(PAGE)) == "EPERM"                  # F_SEAL_SHRINK


def test_lseek_moves_f_pos_only_where_the_file_says(be: ModelBackend,
                                                     ubuf: tuple[DmaBufFile, Memfd]) -> None:
    """A memfd's lseek moves ``pos`` (generic_file_llseek); a dma-buf's never does."""
    buf, m = ubuf
    assert be.lseek(m.fileno(), 123, os.SEEK_SET) == 123
    assert be.read_text(f"/proc/self/fdinfo/{m.fileno()}").startswith("pos:\t123\n")
    assert be.lseek(buf.fileno(), 0, os.SEEK_END) == 4 * PAGE
    assert buf.fdinfo().pos == 0


def test_two_threads_in_one_model_process(be: ModelBackend,
                                          ubuf: tuple[DmaBufFile, Memfd]) -> None:
    """Threads of one forked child enter and leave it in any order (per-thread tokens)."""
    buf, _ = ubuf
    child = be.fork_process("threads")
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    pids: list[int] = []
    errors: list[BaseException] = []

    def worker(first: bool) -> None:
        # a enters, b enters, a leaves, b leaves: not LIFO across the two threads
        try:
            if not first:
                assert a_in.wait(5.0)
            with child:
                pids.append(be.process.pid)
                (a_in if first else b_in).set()
                assert (b_in if first else a_out).wait(5.0)
            pids.append(be.process.pid)
        except BaseException as e:
            errors.append(e)
        finally:
            for ev in (a_in, b_in) if not first else (a_out,):
                ev.set()
            if first:
                a_in.set()

    threads = [threading.Thread(target=worker, args=(f,)) for f in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10.0)
        assert not t.is_alive()
    assert errors == []
    assert sorted(pids) == [1, 1, child.pid, child.pid]
    assert buf.fdinfo().count == 2                       # the child's copy
    be.exit_process(child)
    assert buf.fdinfo().count == 1
    assert code(lambda: be.read_text(f"/proc/{child.pid}/fdinfo/3")) == "ENOENT"


def test_paths(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    buf, m = ubuf
    assert code(lambda: be.open("/dev/null", os.O_RDONLY)) == "ENOENT"
    assert code(lambda: be.read_text("/proc/self/fdinfo/555")) == "ENOENT"
    assert code(lambda: be.read_text("/proc/self/fdinfo/x")) == "ENOENT"
    assert code(lambda: be.read_text("/proc/99999/fdinfo/3")) == "ENOENT"
    assert code(lambda: be.read_text("/etc/passwd")) == "ENOENT"
    assert code(lambda: be.readlink("/proc/self/fd/555")) == "ENOENT"
    assert code(lambda: be.readlink("/tmp")) == "ENOENT"
    assert code(lambda: be.listdir("/etc")) == "ENOENT"
    assert be.readlink(f"/proc/self/fd/{m.fileno()}") == "/memfd:t (deleted)"
    assert be.readlink(f"/proc/1/fd/{buf.fileno()}") == "/dmabuf:"
    assert be.read_text("/sys/module/udmabuf/parameters/size_limit_mb") == "64\n"
    assert be.read_text("/sys/module/udmabuf/parameters/list_limit") == "1024\n"
    assert sorted(process_dmabufs("self", be)) == [buf.fileno()]
    assert code(lambda: read_fdinfo(m.fileno(), be)) == "ENOTTY"


def test_model_prints_v71_fence_lines(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    """The model prints v7.1's ``context:seqno timeline driver`` fence lines."""
    buf, _ = ubuf
    with buf.export_sync_file() as sf:
        buf.import_sync_file(sf, write=True)
    text = be.read_text("/sys/kernel/debug/dma_buf/bufinfo")
    assert "\twrite fence:0:0   signalled\n" in text


def test_binding_parses_v71_bufinfo(be: ModelBackend, dev: VgemDevice) -> None:
    """read_bufinfo() parses v7.1's lines: context, names while pending, none once signalled."""
    with dev.create_dumb(32, 32, 32) as bo, bo.export() as d:
        f = bo.attach_fence(write=False)
        o = read_bufinfo(be).find(d.inode)
        assert o is not None and len(o.fences) == 1
        pending = o.fences[0]
        assert (pending.usage, pending.driver, pending.timeline, pending.seqno,
                pending.signalled) == ("read", "vgem", "unbound", 1, False)
        assert isinstance(pending.context, int) and pending.context > 0
        f.signal()
        o = read_bufinfo(be).find(d.inode)
        assert o is not None
        assert [(x.usage, x.driver, x.timeline, x.seqno, x.signalled, x.context)
                for x in o.fences] == [("read", "", "", 1, True, pending.context)]


# ------------------------------------------------------------------------------------------
# fd passing, fork


def test_fd_passing_and_truncation(be: ModelBackend, ubuf: tuple[DmaBufFile, Memfd]) -> None:
    buf, m = ubuf
    a, b = socket.socketpair()
    with a, b:
        assert code(lambda: send_fds(a, [555], backend=be)) == "EBADF"
        send_fds(a, [buf, m], backend=be)
        assert buf.fdinfo().count == 2                       # one reference in flight
        assert code(lambda: recv_fds(b, 1, backend=be)) == "EMSGSIZE"
        assert be.kernel.inflight.sweep() == 0
        assert buf.fdinfo().count == 1                       # truncated: released
        send_dmabuf(a, buf)
        with recv_dmabuf(b, backend=be) as got:
            assert got.inode == buf.inode
            assert be.fcntl(got.fileno(), 1) == 1            # O_CLOEXEC
            assert buf.fdinfo().count == 2
        send_fds(a, [m], backend=be)
        assert code(lambda: recv_dmabuf(b, backend=be)) == "ENOTTY"
        r, w = os.pipe()
        try:
            socket.send_fds(a, [b"x"], [r])                  # a host fd, not a model file
            assert code(lambda: recv_fds(b, 1, backend=be)) == "EINVAL"
        finally:
            os.close(r)
            os.close(w)
        send_dmabuf(a, buf)
    assert be.kernel.inflight.sweep() == 1                   # the socket died unread
    assert buf.fdinfo().count == 1


def test_fork_copies_the_fd_table(be: ModelBackend) -> None:
    m = Memfd.create("f", PAGE, backend=be)
    m.seal_for_udmabuf()
    with Udmabuf.open(be) as dev:
        buf = dev.create(m)
    extra = be.dup(buf.fileno())
    mfd = m.detach()
    be.close(mfd)                         # a hole below ``extra``: numbers must be kept
    parent_fds = be.process.fds.fds()
    seen: dict[str, object] = {}

    def child() -> int:
        seen["fds"] = be.process.fds.fds()
        seen["pid"] = be.process.pid
        seen["count"] = buf.fdinfo().count
        seen["cloexec"] = be.fcntl(buf.fileno(), 1)
        return 7

    assert be.run_child(child) == 7
    assert seen["fds"] == parent_fds
    assert extra in parent_fds and mfd not in parent_fds
    assert seen["pid"] != 1 and seen["count"] == 4 and seen["cloexec"] == 1
    assert buf.fdinfo().count == 2                           # the child exited
    be.close(extra)
    assert code(lambda: be.read_text(f"/proc/{seen['pid']}/fdinfo/3")) == "ENOENT"

    def boom() -> int:
        raise RuntimeError("child failed")

    assert be.run_child(boom) == 99
    buf.close()
    gate = threading.Event()
    with pytest.raises(TimeoutError) as ei:
        be.run_child(lambda: int(gate.wait(5.0)), timeout=0.05)
    gate.set()
    ei.value.thread.join(5.0)                 # type: ignore[attr-defined]
    assert not ei.value.thread.is_alive()     # type: ignore[attr-defined]


def test_dma_engine_sees_cpu_writes_through_the_binding(be: ModelBackend) -> None:
    """A write through cpu_access is what a model device reads by DMA (same pages)."""
    from dmabuf.buf.device import DirectDev, DmaDataDirection
    from dmabuf.buf.dma_buf import dma_buf_get
    from dmabuf.buf.sg_table import SgTable

    with DmaHeap.open("system", be) as heap, heap.alloc(2 * PAGE) as b:
        with b.cpu_access(write=True, dtype=np.uint32) as words:
            words[:] = np.arange(2 * PAGE // 4, dtype=np.uint32)
        dmabuf = dma_buf_get(b.fileno(), be.machine)
        dev = DirectDev("probe", be.kernel.phys)
        attach = dmabuf.attach(dev)
        sgt = attach.map_unlocked(DmaDataDirection.BIDIRECTIONAL)
        assert isinstance(sgt, SgTable)
        got = be.kernel.phys.read(dev.translate(sgt.dma_ranges())).view(np.uint32)
        assert np.array_equal(got, np.arange(2 * PAGE // 4, dtype=np.uint32))
        attach.unmap_unlocked(sgt, DmaDataDirection.BIDIRECTIONAL)
        dmabuf.detach(attach)
        dmabuf.put()
