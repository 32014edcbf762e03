"""Test doubles for the uAPI bindings on a host without dma-buf exporters.

:class:`SyncRecordingBackend` is the running kernel (a real :class:`KernelBackend`) except that
``DMA_BUF_IOCTL_SYNC`` on fds it was told about is recorded and succeeds: a memfd then stands
in for a dma-buf (``lseek(SEEK_END)`` gives its size, ``mmap`` works), which is enough to check
the binding's own logic — the SYNC bracket of ``cpu_access``, view release and revocation.
It is also a small demonstration that the backend interface is pluggable.
"""

from __future__ import annotations

import errno
import os
import struct

from dmabuf.uapi.backend import KernelBackend
from dmabuf.uapi.dma_buf import DMA_BUF_IOCTL_SYNC, DMA_BUF_SYNC_END, DmaBufFile
from dmabuf.uapi.memfd import Memfd


class SyncRecordingBackend(KernelBackend):
    """KernelBackend that fakes DMA_BUF_IOCTL_SYNC on registered fds (and records the flags)."""

    def __init__(self) -> None:
        self.fake_fds: set[int] = set()
        self.sync_calls: list[int] = []
        self.fail_start: int | None = None  # errno for SYNC START
        self.fail_end: int | None = None  # errno for SYNC END

    def ioctl(self, fd: int, request: int, arg: bytearray) -> int:
        if fd in self.fake_fds and request == DMA_BUF_IOCTL_SYNC:
            (flags,) = struct.unpack("<Q", bytes(arg[:8]))
            self.sync_calls.append(flags)
            fail = self.fail_end if flags & DMA_BUF_SYNC_END else self.fail_start
            if fail is not None:
                raise OSError(fail, os.strerror(fail))
            return 0
        return super().ioctl(fd, request, arg)

    def close(self, fd: int) -> None:
        self.fake_fds.discard(fd)
        super().close(fd)


def fake_dmabuf(backend: SyncRecordingBackend, size: int,
                content: bytes = b"") -> tuple[DmaBufFile, Memfd]:
    """A memfd of ``size`` bytes posing as a dma-buf; returns (buffer, memfd view of it)."""
    m = Memfd.create("fake-dmabuf", size, backend=backend)
    if content:
        m.write(0, content)
    fd = backend.dup(m.fileno())
    backend.fake_fds.add(fd)
    return DmaBufFile(fd, backend), m


def open_fd_count() -> int:
    """Number of fds this process has open."""
    return len(os.listdir("/proc/self/fd"))


__all__ = ["SyncRecordingBackend", "errno", "fake_dmabuf", "open_fd_count"]
