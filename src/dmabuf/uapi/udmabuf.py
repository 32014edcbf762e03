"""include/uapi/linux/udmabuf.h — dma-bufs made of a memfd's pages (``/dev/udmabuf``).

``UDMABUF_CREATE`` turns a page-aligned range of a sealed memfd into a dma-buf; the dma-buf's
pages *are* the memfd's (zero copy: a write through the dma-buf mapping is visible with
``pread`` on the memfd and vice versa). ``UDMABUF_CREATE_LIST`` concatenates several ranges
(of one or more memfds) into one buffer. Kernel rules (udmabuf.c, ``udmabuf_create()``):

* every ``offset`` and ``size`` must be a multiple of PAGE_SIZE, the total non-zero and at most
  ``size_limit_mb`` (module parameter, default 64 MiB) — else ``EINVAL``;
* ``count`` at most ``list_limit`` (default 1024) — else ``EINVAL``;
* the memfd must be shmem or hugetlbfs — else ``EBADFD`` (``EBADF``-like, 77) — sealed with
  ``F_SEAL_SHRINK`` and **not** ``F_SEAL_WRITE``/``F_SEAL_FUTURE_WRITE`` — else ``EINVAL``
  (see :mod:`dmabuf.uapi.memfd`);
* ``flags`` may hold ``UDMABUF_FLAGS_CLOEXEC``; the new fd is the ioctl's return value.

:class:`Udmabuf` checks alignment, range and seals *before* the ioctl, so the answer is a
sentence rather than a bare ``EINVAL`` (the raw :func:`udmabuf_ioctl_create` skips them, for
conformance tests). Note the out-of-tree "u-dma-buf" driver (``/dev/udmabuf0``) is a different
thing.

Kernel: drivers/dma-buf/udmabuf.c (udmabuf_ioctl_create(), udmabuf_ioctl_create_list(),
udmabuf_create(), check_memfd_seals()); include/uapi/linux/udmabuf.h.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Sequence

from dmabuf.errors import DmaBufError
from dmabuf.uapi.backend import UapiBackend, default_backend
from dmabuf.uapi.dma_buf import DmaBufFile
from dmabuf.uapi.fd import FdObject, os_error
from dmabuf.uapi.ioctl import IOW
from dmabuf.uapi.memfd import F_GET_SEALS, Memfd, check_udmabuf_seals

__all__ = [
    "UDMABUF_CREATE",
    "UDMABUF_CREATE_LIST",
    "UDMABUF_FLAGS_CLOEXEC",
    "UDMABUF_PATH",
    "Udmabuf",
    "UdmabufCreate",
    "UdmabufCreateItem",
    "UdmabufCreateList",
    "udmabuf_ioctl_create",
    "udmabuf_ioctl_create_list",
]


class UdmabufCreate(ctypes.Structure):
    """``struct udmabuf_create`` (24 bytes)."""

    _fields_ = [("memfd", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("offset", ctypes.c_uint64), ("size", ctypes.c_uint64)]


class UdmabufCreateItem(ctypes.Structure):
    """``struct udmabuf_create_item`` (24 bytes)."""

    _fields_ = [("memfd", ctypes.c_uint32), ("__pad", ctypes.c_uint32),
                ("offset", ctypes.c_uint64), ("size", ctypes.c_uint64)]


class UdmabufCreateList(ctypes.Structure):
    """``struct udmabuf_create_list`` header (8 bytes), followed by ``count`` items."""

    _fields_ = [("flags", ctypes.c_uint32), ("count", ctypes.c_uint32)]


UDMABUF_FLAGS_CLOEXEC = 0x01
UDMABUF_CREATE = IOW("u", 0x42, UdmabufCreate)
UDMABUF_CREATE_LIST = IOW("u", 0x43, UdmabufCreateList)
UDMABUF_PATH = "/dev/udmabuf"

MemfdLike = Memfd | int


def _fdnum(m: MemfdLike) -> int:
    return m.fileno() if isinstance(m, FdObject) else int(m)


def udmabuf_ioctl_create(backend: UapiBackend, dev_fd: int, memfd: int, offset: int, size: int,
                         flags: int = UDMABUF_FLAGS_CLOEXEC) -> int:
    """The raw ``UDMABUF_CREATE`` (no checks). Returns the new fd; raises the kernel's OSError.

    Kernel: drivers/dma-buf/udmabuf.c, udmabuf_ioctl_create().
    """
    buf = bytearray(ctypes.sizeof(UdmabufCreate))
    arg = UdmabufCreate.from_buffer(buf)
    arg.memfd = memfd & 0xFFFFFFFF
    arg.flags = flags & 0xFFFFFFFF
    arg.offset = offset & 0xFFFFFFFFFFFFFFFF
    arg.size = size & 0xFFFFFFFFFFFFFFFF
    return backend.ioctl(dev_fd, UDMABUF_CREATE, buf)


def udmabuf_ioctl_create_list(backend: UapiBackend, dev_fd: int,
                              items: Sequence[tuple[int, int, int]],
                              flags: int = UDMABUF_FLAGS_CLOEXEC,
                              count: int | None = None) -> int:
    """The raw ``UDMABUF_CREATE_LIST`` with ``(memfd, offset, size)`` items (no checks).

    ``count`` overrides the header's count (to test the list limit). Returns the new fd.

    Kernel: drivers/dma-buf/udmabuf.c, udmabuf_ioctl_create_list().
    """
    head = ctypes.sizeof(UdmabufCreateList)
    isz = ctypes.sizeof(UdmabufCreateItem)
    buf = bytearray(head + isz * len(items))
    h = UdmabufCreateList.from_buffer(buf)
    h.flags = flags & 0xFFFFFFFF
    h.count = (len(items) if count is None else count) & 0xFFFFFFFF
    for i, (fd, off, size) in enumerate(items):
        it = UdmabufCreateItem.from_buffer(buf, head + i * isz)
        it.memfd = fd & 0xFFFFFFFF
        it.offset = off & 0xFFFFFFFFFFFFFFFF
        it.size = size & 0xFFFFFFFFFFFFFFFF
    return backend.ioctl(dev_fd, UDMABUF_CREATE_LIST, buf)


class Udmabuf(FdObject):
    """``/dev/udmabuf`` (owned fd): :meth:`create` and :meth:`create_list` make dma-bufs."""

    def __init__(self, fd: int, backend: UapiBackend | None = None) -> None:
        super().__init__(fd, backend, what=UDMABUF_PATH)

    @classmethod
    def open(cls, backend: UapiBackend | None = None, *, path: str = UDMABUF_PATH) -> Udmabuf:
        """Open ``/dev/udmabuf``.

        Raises:
            DmaBufError: ENOENT naming CONFIG_UDMABUF / ``modprobe udmabuf``; EACCES naming
                the device's group (``kvm`` on many distributions).

        Kernel: drivers/dma-buf/udmabuf.c, udmabuf_misc (misc device "udmabuf").
        """
        be = backend if backend is not None else default_backend()
        try:
            fd = be.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise os_error(e, f"open {path}", {
                errno.ENOENT: ("no /dev/udmabuf: the kernel lacks CONFIG_UDMABUF, or the module "
                               "is not loaded (modprobe udmabuf); check with: "
                               "zgrep UDMABUF /proc/config.gz"),
                errno.EACCES: (f"{path} is not accessible to this user (it is often "
                               "root:kvm 0660): add the user to that group or run as root"),
                errno.ENODEV: "the udmabuf driver is not registered"}) from e
        return cls(fd, be)

    def _check_range(self, memfd: MemfdLike, offset: int, size: int | None,
                     what: str) -> tuple[int, int]:
        """Check one range in the kernel's order: alignment, size, memfd-ness, seals, extent."""
        page = self._backend.page_size
        fd = _fdnum(memfd)
        try:
            st_size: int | None = self._backend.fstat(fd).st_size
        except OSError as e:
            if e.errno != errno.EBADF:
                raise os_error(e, f"{what}: fstat of memfd {fd}") from e
            st_size = None
        if size is None:
            size = (st_size or 0) - offset
        for label, v in (("offset", offset), ("size", size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise DmaBufError(errno.EINVAL, f"{what}: {label} must be an int >= 0, got {v!r}")
            if v % page:
                lo, hi = v - v % page, v - v % page + page
                raise DmaBufError(errno.EINVAL, (
                    f"{what}: {label} {v} is not page-aligned (PAGE_SIZE {page}); udmabuf maps "
                    f"whole pages: use {lo} or {hi}"))
        if size == 0:
            raise DmaBufError(errno.EINVAL, f"{what}: size is 0; a udmabuf needs at least one "
                                            "page")
        if st_size is None:
            raise DmaBufError(errno.EBADFD, f"{what}: fd {fd} is not open")
        try:
            seals = self._backend.fcntl(fd, F_GET_SEALS)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise DmaBufError(errno.EBADFD, (
                    f"{what}: fd {fd} is not a memfd (shmem/hugetlbfs file); udmabuf only takes "
                    "memfd_create() files (Memfd.create())")) from e
            raise os_error(e, f"{what}: F_GET_SEALS on fd {fd}") from e
        check_udmabuf_seals(seals, what=f"{what}: memfd {fd}")
        if offset + size > st_size:
            raise DmaBufError(errno.EINVAL, (
                f"{what}: range [{offset}, {offset + size}) exceeds the memfd's {st_size} bytes; "
                "make the memfd large enough before sealing it"))
        return offset, size

    def _size_hint(self) -> str:
        try:
            mb = self._backend.read_text("/sys/module/udmabuf/parameters/size_limit_mb").strip()
        except OSError:
            mb = "64 (default)"
        return (f"the total must be at most size_limit_mb={mb} MiB (module parameter "
                "udmabuf.size_limit_mb) and every range inside its memfd")

    def create(self, memfd: MemfdLike, offset: int = 0, size: int | None = None, *,
               cloexec: bool = True) -> DmaBufFile:
        """Make a dma-buf of ``memfd[offset:offset+size]`` — ``UDMABUF_CREATE``.

        Args:
            memfd: a :class:`~dmabuf.uapi.memfd.Memfd` (or its fd) sealed with F_SEAL_SHRINK
                (:meth:`~dmabuf.uapi.memfd.Memfd.seal_for_udmabuf`).
            offset: page-aligned start.
            size: page-aligned length (default: to the end of the memfd).
            cloexec: UDMABUF_FLAGS_CLOEXEC on the new fd.

        Context:
            Blocks while the pages are allocated and pinned.

        Returns:
            The new :class:`DmaBufFile` (exporter ``udmabuf``).

        Raises:
            DmaBufError: EINVAL (alignment, empty or out-of-range size, missing F_SEAL_SHRINK,
                write seals, over size_limit_mb) — checked here first with a precise message;
                EBADFD if the fd is not a memfd.

        Kernel: drivers/dma-buf/udmabuf.c, udmabuf_ioctl_create(), udmabuf_create().
        """
        off, sz = self._check_range(memfd, offset, size, "UDMABUF_CREATE")
        try:
            fd = udmabuf_ioctl_create(self._backend, self.fileno(), _fdnum(memfd), off, sz,
                                      UDMABUF_FLAGS_CLOEXEC if cloexec else 0)
        except OSError as e:
            raise os_error(e, f"UDMABUF_CREATE of {sz} bytes at {off}", {
                errno.EINVAL: self._size_hint(),
                errno.EBADFD: "the fd is not a memfd (shmem or hugetlbfs)"}) from e
        return DmaBufFile(fd, self._backend)

    def create_list(self, items: Sequence[tuple[MemfdLike, int, int]], *,
                    cloexec: bool = True) -> DmaBufFile:
        """Concatenate memfd ranges into one dma-buf — ``UDMABUF_CREATE_LIST``.

        Args:
            items: ``(memfd, offset, size)`` ranges, each page-aligned and sealed as for
                :meth:`create`; at most ``list_limit`` (1024 by default).
            cloexec: UDMABUF_FLAGS_CLOEXEC.

        Returns:
            The new :class:`DmaBufFile` whose size is the sum of the sizes.

        Raises:
            DmaBufError: as :meth:`create`, and EINVAL for an empty list.

        Kernel: drivers/dma-buf/udmabuf.c, udmabuf_ioctl_create_list().
        """
        if not items:
            raise DmaBufError(errno.EINVAL, "UDMABUF_CREATE_LIST needs at least one range")
        raw: list[tuple[int, int, int]] = []
        for i, (m, off, sz) in enumerate(items):
            off, sz = self._check_range(m, off, sz, f"UDMABUF_CREATE_LIST item {i}")
            raw.append((_fdnum(m), off, sz))
        try:
            fd = udmabuf_ioctl_create_list(self._backend, self.fileno(), raw,
                                           UDMABUF_FLAGS_CLOEXEC if cloexec else 0)
        except OSError as e:
            raise os_error(e, f"UDMABUF_CREATE_LIST of {len(raw)} ranges", {
                errno.EINVAL: self._size_hint() + "; at most list_limit (1024) ranges",
                errno.EBADFD: "one of the fds is not a memfd"}) from e
        return DmaBufFile(fd, self._backend)
