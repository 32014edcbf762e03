"""net/core/scm.c — passing dma-buf (and other) fds between processes with SCM_RIGHTS.

A dma-buf is shared with another process by sending its fd over a Unix-domain socket as
``SCM_RIGHTS`` ancillary data: the receiver gets a *new* fd for the *same* file (the dma-buf's
``count`` in fdinfo goes up by one), so a write through the receiver's mapping is visible to
the sender. The sender keeps its own fd and may close it at once.

:func:`send_fds` accepts binding objects or raw fds; :func:`recv_fds` returns raw fds (made
O_CLOEXEC) and :func:`recv_dmabuf` wraps the first as a :class:`~dmabuf.uapi.dma_buf.DmaBufFile`.
A message with more fds than the receiver allowed is truncated by the kernel (``MSG_CTRUNC``),
which closes the extra fds; that is reported as an error rather than silently dropped.

Kernel: net/core/scm.c (scm_fp_copy(), scm_detach_fds()); net/unix/af_unix.c.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from dmabuf.errors import DmaBufError
from dmabuf.uapi.backend import UapiBackend, default_backend
from dmabuf.uapi.dma_buf import DmaBufFile
from dmabuf.uapi.fd import FdObject, os_error

__all__ = ["SCM_MAX_FD", "recv_dmabuf", "recv_fds", "send_dmabuf", "send_fds"]

#: The kernel's limit of fds per SCM_RIGHTS message (include/net/scm.h).
SCM_MAX_FD = 253


def send_fds(sock: socket.socket, fds: Sequence[FdObject | int], data: bytes = b"\0", *,
             backend: UapiBackend | None = None) -> int:
    """Send fds (and at least one byte of data) over a Unix socket — ``SCM_RIGHTS``.

    Args:
        sock: a connected ``AF_UNIX`` socket.
        fds: binding objects or raw fds (they stay owned by the sender).
        data: the payload (SCM_RIGHTS must ride on at least one byte).
        backend: None for the running kernel.

    Context:
        May block if the socket buffer is full.

    Returns:
        The number of data bytes sent.

    Raises:
        DmaBufError: EINVAL for no fds, empty data or more than SCM_MAX_FD (253) fds; EBADF
            for a closed fd; errors of sendmsg(2).

    Kernel: net/core/scm.c, scm_fp_copy().
    """
    be = backend if backend is not None else default_backend()
    nums = [f.fileno() if isinstance(f, FdObject) else int(f) for f in fds]
    if not nums or not data:
        raise DmaBufError(errno.EINVAL, "send_fds needs at least one fd and one byte of data")
    if len(nums) > SCM_MAX_FD:
        raise DmaBufError(errno.EINVAL, f"{len(nums)} fds in one message; the kernel takes at "
                                        f"most SCM_MAX_FD={SCM_MAX_FD}: send several messages")
    try:
        return be.send_fds(sock, bytes(data), nums)
    except OSError as e:
        raise os_error(e, f"sendmsg(SCM_RIGHTS, {len(nums)} fds)", {
            errno.EBADF: "one of the fds is not open",
            errno.ETOOMANYREFS: "too many fds in flight: the receiver must read them"}) from e


def recv_fds(sock: socket.socket, maxfds: int = 1, bufsize: int = 16, *,
             backend: UapiBackend | None = None) -> tuple[bytes, list[int]]:
    """Receive data and fds sent with :func:`send_fds` (fds are O_CLOEXEC, owned by the caller).

    Args:
        sock: a connected ``AF_UNIX`` socket.
        maxfds: the most fds expected.
        bufsize: the most data bytes expected.
        backend: None for the running kernel.

    Context:
        Blocks until a message arrives (per the socket's timeout).

    Returns:
        ``(data, fds)``; ``data`` empty means the peer closed the connection.

    Raises:
        DmaBufError: EMSGSIZE when the kernel truncated the fds (MSG_CTRUNC; the extra fds were
            closed) — raise ``maxfds``; errors of recvmsg(2).

    Kernel: net/core/scm.c, scm_detach_fds().
    """
    be = backend if backend is not None else default_backend()
    try:
        data, fds, flags = be.recv_fds(sock, bufsize, maxfds)
    except OSError as e:
        raise os_error(e, "recvmsg(SCM_RIGHTS)") from e
    if flags & socket.MSG_CTRUNC or len(fds) > maxfds:
        for fd in fds:
            be.close(fd)
        raise DmaBufError(errno.EMSGSIZE, (
            f"the message carried more than maxfds={maxfds} fds; the kernel closed the extra "
            "ones (MSG_CTRUNC): receive with a larger maxfds"))
    return data, fds


def send_dmabuf(sock: socket.socket, buf: DmaBufFile, data: bytes = b"\0") -> int:
    """Send one dma-buf over a Unix socket (the sender keeps its fd) — ``SCM_RIGHTS``.

    Kernel: net/core/scm.c, scm_fp_copy().
    """
    return send_fds(sock, [buf], data, backend=buf.backend)


def recv_dmabuf(sock: socket.socket, *, backend: UapiBackend | None = None,
                check: bool = True) -> DmaBufFile:
    """Receive one dma-buf sent with :func:`send_dmabuf`.

    Args:
        sock: a connected ``AF_UNIX`` socket.
        backend: None for the running kernel.
        check: verify that the received fd is a dma-buf.

    Returns:
        The owned :class:`~dmabuf.uapi.dma_buf.DmaBufFile`.

    Raises:
        DmaBufError: EPIPE if the peer closed without sending; ENOTTY if the fd is not a
            dma-buf (it is closed); EMSGSIZE if more than one fd came.

    Kernel: net/core/scm.c, scm_detach_fds().
    """
    be = backend if backend is not None else default_backend()
    data, fds = recv_fds(sock, 1, backend=be)
    if not fds:
        raise DmaBufError(errno.EPIPE, "no fd received (the peer sent none or closed the socket)"
                          if data else "the peer closed the socket without sending a dma-buf")
    try:
        return DmaBufFile.from_fd(fds[0], be, check=check)
    except DmaBufError:
        be.close(fds[0])
        raise
