"""SCM_RIGHTS fd passing (net/core/scm.c) with a real child process on this machine."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.uapi import Memfd, recv_dmabuf, recv_fds, send_fds
from dmabuf.uapi.scm import SCM_MAX_FD


def _wait_child(pid: int, timeout: float = 10.0) -> int:
    pidfd = os.pidfd_open(pid)
    try:
        p = select.poll()
        p.register(pidfd, select.POLLIN)
        if not p.poll(int(timeout * 1000)):  # a pidfd polls readable when the child exits
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("child did not exit in time")
    finally:
        os.close(pidfd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_memfd_passed_to_a_child_is_the_same_file() -> None:
    a, b = socket.socketpair()
    with a, b, Memfd.create("shared", 4096) as m:
        pid = os.fork()
        if pid == 0:  # child: receive, write through the received fd, report, exit
            code = 1
            try:
                a.close()
                data, fds = recv_fds(b, 1)
                cloexec = fcntl.fcntl(fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
                os.pwrite(fds[0], b"from-child", 0)
                os.close(fds[0])
                code = 0 if data == b"tag" and cloexec else 2
            finally:
                os._exit(code)
        assert send_fds(a, [m], b"tag") == 3
        assert _wait_child(pid) == 0
        assert m.read(0, 10) == b"from-child"


def test_recv_dmabuf_rejects_a_non_dmabuf_and_closes_it() -> None:
    a, b = socket.socketpair()
    with a, b, Memfd.create("not-dmabuf", 4096) as m:
        send_fds(a, [m.fileno()])
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(DmaBufError) as ei:
            recv_dmabuf(b)
        assert ei.value.errno == errno.ENOTTY and "not a dma-buf" in str(ei.value)
        assert len(os.listdir("/proc/self/fd")) == before


def test_recv_dmabuf_on_closed_peer_is_epipe() -> None:
    a, b = socket.socketpair()
    a.close()
    with b, pytest.raises(DmaBufError) as ei:
        recv_dmabuf(b)
    assert ei.value.errno == errno.EPIPE


def test_truncated_fds_are_reported_and_closed() -> None:
    a, b = socket.socketpair()
    with a, b, Memfd.create("x", 0) as m1, Memfd.create("y", 0) as m2:
        send_fds(a, [m1, m2])
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(DmaBufError) as ei:
            recv_fds(b, maxfds=1)
        assert ei.value.errno == errno.EMSGSIZE and "maxfds" in str(ei.value)
        assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(("fds", "data"), [([], b"x"), ([0], b""), ([0] * (SCM_MAX_FD + 1),
                                                                    b"x")])
def test_send_fds_argument_checks(fds: list[int], data: bytes) -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(DmaBufError) as ei:
        send_fds(a, fds, data)
    assert ei.value.errno == errno.EINVAL


def test_send_closed_fd_is_ebadf() -> None:
    a, b = socket.socketpair()
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    with a, b, pytest.raises(DmaBufError) as ei:
        send_fds(a, [fd])
    assert ei.value.errno == errno.EBADF
