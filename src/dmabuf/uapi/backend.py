"""The system-call boundary of the uAPI bindings: one small interface, two implementations.

Every ``dmabuf.uapi`` object performs its system calls through a :class:`UapiBackend` — never
``os``/``fcntl``/``mmap`` directly — so the same user-facing API (``DmaHeap.open("system")``,
``buf.cpu_access()``, ``sync_file.merge()``…) runs against

* :class:`KernelBackend` (the default): the real kernel, through ``os``, ``fcntl.ioctl``,
  ``mmap``, ``select.poll`` and ``socket``;
* a *model backend* (``dmabuf.backends``, written later): the pydmabuf model, which implements
  the same calls against its own file table — ``/dev/dma_heap/system``, ``/dev/udmabuf``, vgem,
  ``/proc/self/fdinfo`` — and decodes the very same ioctl argument bytes.

The interface is deliberately at the **system-call level**, with the kernel's ABI as its
contract: ``ioctl`` receives the request number and a mutable buffer holding the argument
structure exactly as the kernel would see it (the model decodes it with the same ``ctypes``
layouts); pointers embedded in a structure (``sync_file_info.sync_fence_info``,
``drm_version.name``) are real addresses in this process, which a model backend reads and
writes with ``ctypes``. Errors are reported as :class:`OSError` with the Linux errno (a model
backend raises :class:`dmabuf.errors.DmaBufError`, a subclass); the bindings above turn them
into :class:`~dmabuf.errors.DmaBufError` with a message saying what to check.

Contract of :meth:`UapiBackend.mmap`: the returned region supports the buffer protocol and
``close()``, and ``close()`` raises :class:`BufferError` while a view of it is still exported —
the property :meth:`dmabuf.uapi.dma_buf.DmaBufFile.cpu_access` relies on to guarantee that no
view outlives its ``DMA_BUF_IOCTL_SYNC`` bracket. ``mmap.mmap`` behaves so.

Kernel: the system calls themselves (fs/ioctl.c, mm/mmap.c, fs/select.c, fs/read_write.c,
mm/memfd.c, net/core/scm.c).
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import functools
import mmap
import os
import select
import socket
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["KernelBackend", "MappedRegion", "UapiBackend", "default_backend"]


@runtime_checkable
class MappedRegion(Protocol):
    """A mapping returned by :meth:`UapiBackend.mmap` (``mmap.mmap`` is one).

    It must support the buffer protocol (``memoryview(region)``), and ``close()`` must raise
    :class:`BufferError` while exported views exist.
    """

    @property
    def closed(self) -> bool:
        """True once ``close()`` succeeded."""

    def close(self) -> None:
        """Unmap; raise BufferError while views are exported."""

    def __len__(self) -> int:
        """Mapped length in bytes."""


class UapiBackend(Protocol):
    """Every system call the uAPI bindings make (the kernel ABI is the contract).

    All methods raise :class:`OSError` (or :class:`~dmabuf.errors.DmaBufError`) carrying a Linux
    errno on failure. Paths are the kernel's (``/dev/dma_heap/system``,
    ``/proc/self/fdinfo/7``); a model backend serves its own view of them.
    """

    #: Bytes per page (PAGE_SIZE) of the kernel behind the backend.
    page_size: int

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """open(2): return a new file descriptor."""

    def close(self, fd: int) -> None:
        """close(2)."""

    def dup(self, fd: int) -> int:
        """dup(2) with O_CLOEXEC (F_DUPFD_CLOEXEC)."""

    def ioctl(self, fd: int, request: int, arg: bytearray) -> int:
        """ioctl(2) with a pointer to ``arg``; the kernel's copy-back lands in ``arg``.

        Returns the ioctl's non-negative return value (a new fd for UDMABUF_CREATE).
        """

    def mmap(self, fd: int, length: int, *, prot: int, flags: int,
             offset: int = 0) -> MappedRegion:
        """mmap(2) of ``length`` bytes at file ``offset`` (page-aligned)."""

    def poll(self, fds: Sequence[tuple[int, int]], timeout_ms: int | None) -> list[tuple[int, int]]:
        """poll(2): ``[(fd, events)]`` -> ``[(fd, revents)]`` of the ready ones.

        ``timeout_ms`` None blocks; 0 does not block.
        """

    def lseek(self, fd: int, offset: int, whence: int) -> int:
        """lseek(2): return the resulting offset."""

    def fstat(self, fd: int) -> os.stat_result:
        """fstat(2)."""

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        """fcntl(2) with an integer argument (F_ADD_SEALS, F_GET_SEALS, F_GETFL, F_GETFD)."""

    def memfd_create(self, name: str, flags: int) -> int:
        """memfd_create(2)."""

    def ftruncate(self, fd: int, length: int) -> None:
        """ftruncate(2)."""

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        """pread(2)."""

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """pwrite(2)."""

    def read_text(self, path: str) -> str:
        """Read a whole procfs/sysfs/debugfs text file (fdinfo, bufinfo, module parameters)."""

    def readlink(self, path: str) -> str:
        """readlink(2) (``/proc/self/fd/N`` names a dma-buf ``/dmabuf:<name>``)."""

    def listdir(self, path: str) -> list[str]:
        """The entries of a directory (``/dev/dma_heap``, ``/dev/dri``)."""

    def revoke(self, region: MappedRegion) -> None:
        """Cut a mapping off from its file while views of it are still exported.

        Afterwards every access through a stale view reaches private anonymous memory (zeros),
        never the buffer; the region is unmapped for good when its last view goes away.
        (Kernel backend: ``mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS)`` over the range.)
        """

    def send_fds(self, sock: socket.socket, data: bytes, fds: Sequence[int]) -> int:
        """sendmsg(2) with SCM_RIGHTS; return the bytes sent."""

    def recv_fds(self, sock: socket.socket, bufsize: int,
                 maxfds: int) -> tuple[bytes, list[int], int]:
        """recvmsg(2) with SCM_RIGHTS: ``(data, fds, msg_flags)`` (fds are O_CLOEXEC)."""


class KernelBackend:
    """The running kernel: :class:`UapiBackend` over ``os``, ``fcntl``, ``mmap``, ``select``.

    Stateless; one instance (:func:`default_backend`) serves everybody.
    """

    page_size: int = mmap.PAGESIZE

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        """open(2) via ``os.open``."""
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        """close(2) via ``os.close``."""
        os.close(fd)

    def dup(self, fd: int) -> int:
        """F_DUPFD_CLOEXEC via ``fcntl.fcntl``."""
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)

    def ioctl(self, fd: int, request: int, arg: bytearray) -> int:
        """``fcntl.ioctl(fd, request, arg, True)`` — the GIL is released while it blocks."""
        return fcntl.ioctl(fd, request, arg, True)

    def mmap(self, fd: int, length: int, *, prot: int, flags: int,
             offset: int = 0) -> MappedRegion:
        """``mmap.mmap(fd, length, flags, prot, offset=offset)``."""
        return mmap.mmap(fd, length, flags, prot, offset=offset)

    def poll(self, fds: Sequence[tuple[int, int]], timeout_ms: int | None) -> list[tuple[int, int]]:
        """``select.poll``; EINTR is retried by Python (PEP 475)."""
        p = select.poll()
        for fd, ev in fds:
            p.register(fd, ev)
        return p.poll(timeout_ms)

    def lseek(self, fd: int, offset: int, whence: int) -> int:
        """``os.lseek``."""
        return os.lseek(fd, offset, whence)

    def fstat(self, fd: int) -> os.stat_result:
        """``os.fstat``."""
        return os.fstat(fd)

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        """``fcntl.fcntl`` with an int argument."""
        return fcntl.fcntl(fd, cmd, arg)

    def memfd_create(self, name: str, flags: int) -> int:
        """``os.memfd_create``."""
        return os.memfd_create(name, flags)

    def ftruncate(self, fd: int, length: int) -> None:
        """``os.ftruncate``."""
        os.ftruncate(fd, length)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        """``os.pread``."""
        return os.pread(fd, length, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """``os.pwrite``."""
        return os.pwrite(fd, data, offset)

    def read_text(self, path: str) -> str:
        """Read a text file in one go (procfs files are generated on read)."""
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def readlink(self, path: str) -> str:
        """``os.readlink``."""
        return os.readlink(path)

    def listdir(self, path: str) -> list[str]:
        """``os.listdir``."""
        return os.listdir(path)

    def revoke(self, region: MappedRegion) -> None:
        """Replace the mapping's pages by anonymous memory — ``mmap(MAP_FIXED)`` via libc."""
        import numpy as np

        length = len(region)
        addr = int(np.frombuffer(region, dtype=np.uint8).ctypes.data)  # type: ignore[call-overload]
        libc = _libc()
        res = libc.mmap(ctypes.c_void_p(addr), ctypes.c_size_t(length),
                        mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED, -1, 0)
        if res != addr:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap(MAP_FIXED) over a dma-buf mapping failed: "
                               f"{os.strerror(err)}")

    def send_fds(self, sock: socket.socket, data: bytes, fds: Sequence[int]) -> int:
        """``socket.send_fds``."""
        return socket.send_fds(sock, [data], list(fds))

    def recv_fds(self, sock: socket.socket, bufsize: int,
                 maxfds: int) -> tuple[bytes, list[int], int]:
        """recvmsg(2) with ``MSG_CMSG_CLOEXEC``, so received fds are not inherited by children.

        (``socket.recv_fds`` does not pass that flag.)
        """
        fds = array.array("i")
        data, anc, flags, _addr = sock.recvmsg(
            bufsize, socket.CMSG_LEN(maxfds * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        return data, list(fds), flags


_MAP_FIXED = 0x10  # include/uapi/asm-generic/mman-common.h


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    return libc


_DEFAULT = KernelBackend()


def default_backend() -> KernelBackend:
    """The backend used when none is given: the running kernel (:class:`KernelBackend`)."""
    return _DEFAULT
