"""IGT ``tests/intel/prime_self_import.c``: ``basic-llseek-size``, ``basic-llseek-bad`` (and the
fd-lifetime facts they rely on), ported to the model's dma-buf file.

``prime_get_size(fd)`` is ``lseek(fd, 0, SEEK_END)`` followed by ``lseek(fd, 0, SEEK_SET)``. The
GEM handle is closed *before* the size is read: the dma-buf fd alone keeps the buffer alive.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "buf"))
from dmabuf_mocks import MiB, MockExporter, make_phys

from dmabuf.buf.dma_buf import dma_buf_get
from dmabuf.buf.file import SEEK_END, SEEK_SET, current_process
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine

BO_SIZE = 65536


def lseek(fd: int, off: int, whence: int) -> int:
    return current_process().fds.lookup(fd).llseek(off, whence)


def prime_get_size(fd: int) -> int:
    size = lseek(fd, 0, SEEK_END)
    assert lseek(fd, 0, SEEK_SET) == 0
    return size


def gem_create_and_export(phys, size: int) -> tuple[MockExporter, int]:
    e = MockExporter(phys, size, region="ram0")
    b = e.export(exp_name="drm")
    fd = b.get().fd()             # prime_handle_to_fd
    b.put()                       # gem_close(handle)
    return e, fd


def test_basic_llseek_size(machine: Machine) -> None:
    phys = make_phys(4 * MiB, 4 * MiB)
    for i in range(10):
        bufsz = 4096 << i
        e, fd = gem_create_and_export(phys, bufsz)
        assert prime_get_size(fd) == bufsz
        current_process().fds.close(fd)
        assert e.released == 1


@pytest.mark.parametrize("off,whence", [
    (-1, SEEK_END), (1, SEEK_SET), (BO_SIZE, SEEK_SET), (BO_SIZE + 1, SEEK_SET),
    (BO_SIZE - 1, SEEK_SET)])
def test_basic_llseek_bad(machine: Machine, off: int, whence: int) -> None:
    phys = make_phys(MiB, MiB)
    e, fd = gem_create_and_export(phys, BO_SIZE)
    assert lseek(fd, 0, SEEK_END) >= 0           # igt_require: llseek is supported
    with pytest.raises(DmaBufError) as ei:
        lseek(fd, off, whence)
    assert ei.value.errno == errno.EINVAL
    current_process().fds.close(fd)
    assert e.released == 1


def test_basic_with_fd_dup(machine: Machine) -> None:
    """``basic-with_fd_dup``: a dup'ed fd names the same buffer; closing one keeps it alive."""
    phys = make_phys(MiB, MiB)
    e, fd = gem_create_and_export(phys, BO_SIZE)
    fds = current_process().fds
    fd2 = fds.dup(fd)
    b1, b2 = dma_buf_get(fd), dma_buf_get(fd2)
    assert b1 is b2 and b1.file.count == 4
    b1.put()
    b2.put()
    fds.close(fd)
    assert prime_get_size(fd2) == BO_SIZE and e.released == 0
    fds.close(fd2)
    assert e.released == 1
