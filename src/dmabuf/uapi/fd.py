"""File descriptors owned by Python objects — the lifetime rules of every ``dmabuf.uapi`` handle.

A dma-buf, a heap, a sync_file, a memfd: each is a file descriptor, and leaking them is the
second most reported problem of the dma-buf ecosystem ("Too many open files",
ecosystem-and-users.md §1.15). Every binding object therefore **owns** exactly one fd:

* ``close()`` closes it and is idempotent (a second call does nothing);
* the object is a context manager (``with DmaHeap.open() as heap: …``);
* a :func:`weakref.finalize` closes the fd if the object is garbage-collected while open — a
  safety net, not a substitute for ``close()`` (CPython collects promptly; other runtimes may
  not);
* ``detach()`` hands the raw fd to the caller, who then owns it (no close, no finalizer);
* ``fileno()`` lends it (``select``, ``socket.send_fds``); using it after ``close()`` raises
  ``DmaBufError(EBADF)`` instead of touching whatever fd number the kernel reuses next.

Do not ``os.close(obj.fileno())``: the object would later close a *reused* fd number. Use
``detach()``. Objects are not safe against a concurrent ``close()`` from another thread.

Kernel: fs/file.c (close_fd(), the fd table), fs/file_table.c (fput()).
"""

from __future__ import annotations

import errno
import os
import weakref
from types import TracebackType
from typing import Self

from dmabuf.errors import DmaBufError, errno_name
from dmabuf.uapi.backend import UapiBackend, default_backend

__all__ = ["FdObject", "os_error"]


def _close_quietly(backend: UapiBackend, fd: int) -> None:
    try:
        backend.close(fd)
    except OSError:  # pragma: no cover - the fd is gone either way
        pass


def os_error(e: OSError, what: str, hints: dict[int, str] | None = None) -> DmaBufError:
    """Turn an ``OSError`` from a system call into a :class:`DmaBufError` that says what to check.

    Args:
        e: the error (its ``errno`` is kept).
        what: what was attempted (``"DMA_BUF_IOCTL_SYNC on fd 5"``).
        hints: errno -> advice for this call; a generic hint is used for others.

    Returns:
        The error to raise (``raise os_error(e, ...) from e``).
    """
    if isinstance(e, DmaBufError) and not hints:
        return e  # already explained (a model backend raises DmaBufError itself)
    code = e.errno if e.errno is not None else errno.EIO
    hint = (hints or {}).get(code) or _GENERIC_HINTS.get(code, "")
    msg = f"{what} failed: {errno_name(code)} ({e.strerror or os.strerror(code)})"
    if hint:
        msg += f": {hint}"
    return DmaBufError(code, msg)


_GENERIC_HINTS = {
    errno.ENOTTY: "the fd does not support this ioctl (is it really a dma-buf / the right "
                  "device? ENOTTY is what a non-dma-buf fd answers)",
    errno.EBADF: "the fd is not open (closed already, or a number reused after close)",
    errno.EACCES: "permission denied: check the device node's owner and mode",
    errno.EPERM: "operation not permitted: needs root or a capability",
    errno.ENOMEM: "the kernel could not allocate memory for the request",
}


class FdObject:
    """Base of every binding object: owns one fd (idempotent close, context manager, finalizer).

    Args:
        fd: the file descriptor to own (ownership is taken even if the constructor of a
            subclass fails later: it is closed by ``close()`` or the finalizer).
        backend: the backend that created it (None: the running kernel).
        what: a short description for messages (``"dma-buf"``, ``"/dev/dma_heap/system"``).
    """

    def __init__(self, fd: int, backend: UapiBackend | None = None, *, what: str = "fd") -> None:
        if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
            raise DmaBufError(errno.EBADF, f"{what}: {fd!r} is not a file descriptor number")
        self._fd = fd
        self._backend: UapiBackend = backend if backend is not None else default_backend()
        self._what = what
        self._finalizer = weakref.finalize(self, _close_quietly, self._backend, fd)

    @property
    def backend(self) -> UapiBackend:
        """The backend whose fd this is."""
        return self._backend

    @property
    def closed(self) -> bool:
        """True after ``close()`` or ``detach()``."""
        return not self._finalizer.alive

    def fileno(self) -> int:
        """Lend the fd number (it stays owned by this object).

        Raises:
            DmaBufError: EBADF if the object was closed or detached.
        """
        if not self._finalizer.alive:
            raise DmaBufError(errno.EBADF, f"{self._what} is closed (fd {self._fd} was released)")
        return self._fd

    def close(self) -> None:
        """Close the fd — ``close(2)``; idempotent.

        Context:
            Does not block (closing the last reference of a dma-buf runs the exporter's release
            in the kernel, which does not wait for fences).

        Raises:
            DmaBufError: never for a second call; EIO-class errors of close(2) are reported.

        Kernel: fs/file.c, close_fd(); fs/file_table.c, fput().
        """
        if self._finalizer.detach() is not None:
            try:
                self._backend.close(self._fd)
            except OSError as e:
                raise os_error(e, f"close of {self._what} fd {self._fd}") from e

    def detach(self) -> int:
        """Give up ownership and return the raw fd (the caller must close it).

        Raises:
            DmaBufError: EBADF if already closed or detached.

        Kernel: fs/file.c (the fd table entry changes hands).
        """
        fd = self.fileno()
        self._finalizer.detach()
        return fd

    def __enter__(self) -> Self:
        self.fileno()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<{type(self).__name__} {self._what} {state}>"
