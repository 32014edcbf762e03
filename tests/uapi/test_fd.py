"""FdObject lifetime rules: idempotent close, context manager, detach, finalize safety net."""

from __future__ import annotations

import errno
import gc
import os

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.uapi import FdObject, Memfd


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as e:
        assert e.errno == errno.EBADF
        return False
    return True


def test_close_is_idempotent_and_fileno_fails_after() -> None:
    obj = FdObject(os.open("/dev/null", os.O_RDONLY), what="null")
    fd = obj.fileno()
    obj.close()
    obj.close()
    assert obj.closed and not _fd_open(fd)
    with pytest.raises(DmaBufError) as ei:
        obj.fileno()
    assert ei.value.errno == errno.EBADF and "closed" in str(ei.value)
    assert "closed" in repr(obj)


def test_context_manager_closes() -> None:
    with FdObject(os.open("/dev/null", os.O_RDONLY)) as obj:
        fd = obj.fileno()
        assert _fd_open(fd) and f"fd={fd}" in repr(obj)
    assert not _fd_open(fd)


def test_context_manager_on_closed_object_raises() -> None:
    obj = FdObject(os.open("/dev/null", os.O_RDONLY))
    obj.close()
    with pytest.raises(DmaBufError), obj:
        pass


def test_detach_hands_over_ownership() -> None:
    obj = FdObject(os.open("/dev/null", os.O_RDONLY))
    fd = obj.detach()
    obj.close()
    assert _fd_open(fd)
    os.close(fd)
    with pytest.raises(DmaBufError):
        obj.detach()


def test_finalizer_closes_a_dropped_object() -> None:
    m = Memfd.create("dropped", 4096)
    fd = m.fileno()
    del m
    gc.collect()
    assert not _fd_open(fd)


def test_exception_during_use_still_closes() -> None:
    with pytest.raises(RuntimeError), Memfd.create("x", 4096) as m:
        fd = m.fileno()
        raise RuntimeError("boom")
    assert not _fd_open(fd)


@pytest.mark.parametrize("bad", [-1, "3", 2.0, True])
def test_rejects_non_fd(bad: object) -> None:
    with pytest.raises(DmaBufError) as ei:
        FdObject(bad)  # type: ignore[arg-type]
    assert ei.value.errno == errno.EBADF


def test_close_error_is_reported_once() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    obj = FdObject(fd)
    os.close(fd)  # the misuse the docs warn about
    with pytest.raises(DmaBufError) as ei:
        obj.close()
    assert ei.value.errno == errno.EBADF
    obj.close()  # idempotent even after a failed close
