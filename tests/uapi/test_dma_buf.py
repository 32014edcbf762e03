"""DmaBufFile on the host: the SYNC bracket of cpu_access, flag checks, ENOTTY messages.

This machine has the dma-buf core but no exporter, so a memfd stands in for the buffer through
:class:`fakes.SyncRecordingBackend` (the real kernel, with DMA_BUF_IOCTL_SYNC faked on chosen
fds); the ENOTTY tests use the real kernel unmodified.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from dmabuf.errors import DmaBufError
from dmabuf.uapi import DmaBufFile, Memfd
from dmabuf.uapi.dma_buf import (
    DMA_BUF_SYNC_END,
    DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW,
    DMA_BUF_SYNC_START,
    DMA_BUF_SYNC_WRITE,
    check_sync_file_flags,
    check_sync_flags,
    is_dmabuf_link,
)

from .fakes import SyncRecordingBackend, fake_dmabuf, open_fd_count

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def fb() -> SyncRecordingBackend:
    return SyncRecordingBackend()


def test_cpu_access_brackets_with_sync_start_and_end(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, 2 * PAGE)
    with buf, mem:
        with buf.cpu_access(read=True, write=True) as view:
            assert fb.sync_calls == [DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW]
            assert len(view) == 2 * PAGE and not view.readonly
            view[10:14] = b"ABCD"
        assert fb.sync_calls == [DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW,
                                 DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW]
        assert mem.read(10, 4) == b"ABCD"
        with pytest.raises(ValueError, match="released"):
            view[0]


@pytest.mark.parametrize(("read", "write", "flags"), [(True, False, DMA_BUF_SYNC_READ),
                                                      (False, True, DMA_BUF_SYNC_WRITE),
                                                      (True, True, DMA_BUF_SYNC_RW)])
def test_cpu_access_flags_follow_read_write(fb: SyncRecordingBackend, read: bool, write: bool,
                                            flags: int) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem:
        with buf.cpu_access(read=read, write=write) as view:
            assert view.readonly is (not write)
        assert fb.sync_calls == [DMA_BUF_SYNC_START | flags, DMA_BUF_SYNC_END | flags]


def test_read_only_view_refuses_writes(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE, b"xyz")
    with buf, mem, buf.cpu_access(read=True) as view:
        assert bytes(view[:3]) == b"xyz"
        with pytest.raises(TypeError):
            view[0] = 1


def test_sync_end_issued_when_block_raises(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem:
        with pytest.raises(KeyError), buf.cpu_access(read=False, write=True):
            raise KeyError("inside")
        assert fb.sync_calls[-1] == DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE
        assert len(fb.sync_calls) == 2


def test_sync_end_failure_is_raised_after_release(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem:
        fb.fail_end = errno.EIO
        with pytest.raises(DmaBufError) as ei, buf.cpu_access(write=True) as view:
            pass
        assert ei.value.errno == errno.EIO
        with pytest.raises(ValueError, match="released"):
            view[0]


def test_inner_exception_wins_over_end_failure(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem:
        fb.fail_end = errno.EIO
        with pytest.raises(KeyError), buf.cpu_access(write=True):
            raise KeyError("inside")


def test_start_failure_unmaps_and_raises(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem:
        before = open_fd_count()
        fb.fail_start = errno.ERESTART
        with pytest.raises(DmaBufError) as ei, buf.cpu_access():
            pytest.fail("the block must not run when SYNC START fails")
        assert ei.value.errno == errno.ERESTART
        assert open_fd_count() == before  # mmap's dup of the fd was closed


def test_sync_retries_eintr(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    attempts = []
    real = fb.ioctl

    def flaky(fd: int, request: int, arg: bytearray) -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise InterruptedError(errno.EINTR, "interrupted")
        return real(fd, request, arg)

    fb.ioctl = flaky  # type: ignore[method-assign]
    with buf, mem:
        buf.sync_start()
    assert len(attempts) == 3


def test_offset_view_and_page_unaligned_ranges(fb: SyncRecordingBackend) -> None:
    content = bytes(range(256)) * (3 * PAGE // 256)
    buf, mem = fake_dmabuf(fb, 3 * PAGE, content)
    with buf, mem:
        with buf.cpu_access(offset=PAGE + 5, length=10) as v:
            assert bytes(v) == content[PAGE + 5: PAGE + 15]
        with buf.cpu_access(offset=3 * PAGE - 1) as v:
            assert bytes(v) == content[-1:]


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, 0), (0, 3 * PAGE + 1),
                                                (3 * PAGE, 1), (PAGE, -5)])
def test_out_of_range_is_einval_without_sync(fb: SyncRecordingBackend, offset: int,
                                             length: int) -> None:
    buf, mem = fake_dmabuf(fb, 3 * PAGE)
    with buf, mem:
        with pytest.raises(DmaBufError) as ei, buf.cpu_access(offset=offset, length=length):
            pass
        assert ei.value.errno == errno.EINVAL and "not inside" in str(ei.value)
        assert fb.sync_calls == []


def test_neither_read_nor_write_is_einval(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem, pytest.raises(DmaBufError, match="read=True"), \
            buf.cpu_access(read=False, write=False):
        pass


def test_numpy_view_is_readonly_and_revoked_after_block(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem:
        with buf.cpu_access(write=True, dtype=np.uint32) as arr:
            assert arr.shape == (PAGE // 4,) and arr.flags.writeable
            arr[:2] = [7, 9]
        assert not arr.flags.writeable
        assert np.frombuffer(mem.read(0, 8), np.uint32).tolist() == [7, 9]
        # The array outlived its bracket: its mapping no longer reaches the buffer.
        assert int(arr[0]) == 0 and int(arr[1]) == 0
        mem.write(0, b"\x01\x00\x00\x00")
        assert int(arr[0]) == 0


def test_kept_memoryview_slice_cannot_reach_buffer(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE, b"KEEP")
    with buf, mem:
        with buf.cpu_access(write=True) as view:
            kept = view[:4]
        kept[:4] = b"XXXX"  # private memory now
        assert mem.read(0, 4) == b"KEEP"
        assert bytes(kept) == b"XXXX"


def test_no_fd_leak_over_many_accesses(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem:
        before = open_fd_count()
        for i in range(200):
            with buf.cpu_access(write=True) as v:
                v[0] = i % 256
        assert open_fd_count() == before
        assert mem.read(0, 1) == bytes([199])


def test_sync_on_memfd_is_enotty_with_a_helpful_message() -> None:
    """This kernel's dma-buf core answers ENOTTY for DMA_BUF_IOCTL_SYNC on a non-dma-buf."""
    with Memfd.create("not-a-dmabuf", PAGE) as m:
        fake = DmaBufFile(os.dup(m.fileno()))
        with fake:
            with pytest.raises(DmaBufError) as ei:
                fake.sync_start(read=True)
            assert ei.value.errno == errno.ENOTTY
            msg = str(ei.value)
            assert "not a dma-buf" in msg and "/memfd:not-a-dmabuf" in msg
            before = open_fd_count()
            with pytest.raises(DmaBufError) as ei2, fake.cpu_access():
                pass
            assert ei2.value.errno == errno.ENOTTY
            assert open_fd_count() == before


def test_from_fd_checks_the_fd_is_a_dmabuf() -> None:
    with Memfd.create("mfd", PAGE) as m:
        with pytest.raises(DmaBufError) as ei:
            DmaBufFile.from_fd(m.fileno())
        assert ei.value.errno == errno.ENOTTY and "heap" in str(ei.value)
        os.fstat(m.fileno())  # left open for its owner
    with pytest.raises(DmaBufError) as ei:
        DmaBufFile.from_fd(987654)
    assert ei.value.errno == errno.ENOENT


@pytest.mark.parametrize(("flags", "text"), [
    (0xDEAD0000, "unknown bits"), (DMA_BUF_SYNC_START, "neither READ nor WRITE"),
    (DMA_BUF_SYNC_END, "neither READ nor WRITE"), (8, "unknown bits"), (-1, "non-negative")])
def test_check_sync_flags(flags: int, text: str) -> None:
    with pytest.raises(DmaBufError, match=text) as ei:
        check_sync_flags(flags)
    assert ei.value.errno == errno.EINVAL


def test_valid_sync_flags_pass() -> None:
    for f in (1, 2, 3, 5, 6, 7):
        check_sync_flags(f)
    for f in (1, 2, 3):
        check_sync_file_flags(f)
    for f in (0, 4, 8, 7):
        with pytest.raises(DmaBufError):
            check_sync_file_flags(f)


def test_invalid_flags_never_reach_the_kernel(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem:
        with pytest.raises(DmaBufError):
            buf.sync(0)
        assert fb.sync_calls == []
        buf.sync(0, validate=False)
        assert fb.sync_calls == [0]


def test_set_name_checks_length_and_nul_before_the_ioctl() -> None:
    with Memfd.create("n", PAGE) as m, DmaBufFile(os.dup(m.fileno())) as fake:
        with pytest.raises(DmaBufError, match="at most 31") as ei:
            fake.set_name("x" * 32)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(DmaBufError, match="NUL"):
            fake.set_name("a\0b")
        with pytest.raises(DmaBufError) as ei:
            fake.set_name("x" * 31)  # valid: reaches the kernel, which says ENOTTY
        assert ei.value.errno == errno.ENOTTY


def test_export_flags_checked_before_the_ioctl() -> None:
    with Memfd.create("n", PAGE) as m, DmaBufFile(os.dup(m.fileno())) as fake:
        with pytest.raises(DmaBufError, match="READ \\(1\\), WRITE \\(2\\)"):
            fake.export_sync_file_flags(4)
        with pytest.raises(DmaBufError) as ei:
            fake.export_sync_file()
        assert ei.value.errno == errno.ENOTTY


def test_is_dmabuf_link() -> None:
    assert is_dmabuf_link("/dmabuf:")
    assert is_dmabuf_link("/dmabuf:name")
    assert is_dmabuf_link("anon_inode:dmabuf")
    assert not is_dmabuf_link("/memfd:x (deleted)")
    assert not is_dmabuf_link("anon_inode:sync_file")


def test_size_is_seek_end_and_cached(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, 5 * PAGE)
    with buf, mem:
        assert buf.size == 5 * PAGE
        mem.truncate(6 * PAGE)
        assert buf.size == 5 * PAGE  # a dma-buf's size never changes: cached
        with buf.dup() as d:
            assert d.size == 5 * PAGE and d.inode == buf.inode


def test_numpy_dtype_must_divide_the_length(fb: SyncRecordingBackend) -> None:
    buf, mem = fake_dmabuf(fb, PAGE)
    with buf, mem:
        with pytest.raises(DmaBufError, match="multiple of uint64") as ei, \
                buf.cpu_access(length=12, dtype=np.uint64):
            pass
        assert ei.value.errno == errno.EINVAL and fb.sync_calls == []
        with buf.cpu_access(length=16, dtype="<u8") as a:
            assert a.shape == (2,)
