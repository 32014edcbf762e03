"""mm/memfd.c — anonymous shmem files and their seals, the memory behind a udmabuf.

``memfd_create(2)`` gives an fd of an anonymous shmem (or hugetlbfs) file; ``fcntl(F_ADD_SEALS)``
forbids later operations on it. udmabuf turns such a file's pages into a dma-buf, and it has
two rules about seals (drivers/dma-buf/udmabuf.c, ``check_memfd_seals()``):

* ``F_SEAL_SHRINK`` **must** be set — the pages a dma-buf hands to devices must not be
  truncated away under them;
* ``F_SEAL_WRITE`` and ``F_SEAL_FUTURE_WRITE`` **must not** be set — a dma-buf is writable by
  devices, so a write-sealed file would break its promise.

:meth:`Memfd.seal_for_udmabuf` applies exactly that (SHRINK only), and
:func:`check_udmabuf_seals` checks a memfd before the ioctl, with a message instead of the
kernel's bare ``EINVAL``. A memfd needs ``MFD_ALLOW_SEALING`` for any seal to be added (without
it the file starts with ``F_SEAL_SEAL``).

Kernel: mm/memfd.c (memfd_create(), memfd_add_seals(), memfd_get_seals());
include/uapi/linux/memfd.h; include/uapi/linux/fcntl.h (F_SEAL_*).
"""

from __future__ import annotations

import errno

from dmabuf.errors import DmaBufError
from dmabuf.uapi.backend import UapiBackend, default_backend
from dmabuf.uapi.fd import FdObject, os_error

__all__ = [
    "F_ADD_SEALS",
    "F_GET_SEALS",
    "F_SEAL_FUTURE_WRITE",
    "F_SEAL_GROW",
    "F_SEAL_SEAL",
    "F_SEAL_SHRINK",
    "F_SEAL_WRITE",
    "MFD_ALLOW_SEALING",
    "MFD_CLOEXEC",
    "MFD_HUGETLB",
    "Memfd",
    "check_udmabuf_seals",
    "seal_names",
]

# include/uapi/linux/fcntl.h
F_LINUX_SPECIFIC_BASE = 1024
F_ADD_SEALS = F_LINUX_SPECIFIC_BASE + 9
F_GET_SEALS = F_LINUX_SPECIFIC_BASE + 10
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010
F_SEAL_EXEC = 0x0020
# include/uapi/linux/memfd.h
MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_HUGETLB = 0x0004

_SEAL_NAMES = ((F_SEAL_SEAL, "SEAL"), (F_SEAL_SHRINK, "SHRINK"), (F_SEAL_GROW, "GROW"),
               (F_SEAL_WRITE, "WRITE"), (F_SEAL_FUTURE_WRITE, "FUTURE_WRITE"),
               (F_SEAL_EXEC, "EXEC"))
#: udmabuf.c SEALS_WANTED / SEALS_DENIED.
UDMABUF_SEALS_WANTED = F_SEAL_SHRINK
UDMABUF_SEALS_DENIED = F_SEAL_WRITE | F_SEAL_FUTURE_WRITE


def seal_names(seals: int) -> list[str]:
    """Name the bits of a seal mask (``[\"SHRINK\", \"GROW\"]``)."""
    return [n for bit, n in _SEAL_NAMES if seals & bit] + (
        [hex(seals & ~sum(b for b, _ in _SEAL_NAMES))] if seals & ~sum(
            b for b, _ in _SEAL_NAMES) else [])


def check_udmabuf_seals(seals: int, *, what: str = "memfd") -> None:
    """Check a seal mask against udmabuf's rules — ``check_memfd_seals()`` before the ioctl.

    Args:
        seals: the file's ``F_GET_SEALS`` value.
        what: names the file in the message.

    Raises:
        DmaBufError: EINVAL when F_SEAL_SHRINK is missing or a write seal is present (the
            kernel's answer), with what to do.

    Kernel: drivers/dma-buf/udmabuf.c, check_memfd_seals().
    """
    if seals & UDMABUF_SEALS_DENIED:
        raise DmaBufError(errno.EINVAL, (
            f"{what} is write-sealed ({'|'.join(seal_names(seals & UDMABUF_SEALS_DENIED))}): "
            "udmabuf refuses F_SEAL_WRITE/F_SEAL_FUTURE_WRITE because devices may write the "
            "buffer; seals cannot be removed, so create a new memfd and seal it with "
            "F_SEAL_SHRINK only (Memfd.seal_for_udmabuf())"))
    if (seals & UDMABUF_SEALS_WANTED) != UDMABUF_SEALS_WANTED:
        hint = ("it was created without MFD_ALLOW_SEALING (it carries F_SEAL_SEAL only); "
                "create it with Memfd.create(..., allow_sealing=True)"
                if seals & F_SEAL_SEAL and not seals & F_SEAL_SHRINK else
                "call Memfd.seal_for_udmabuf() (fcntl(F_ADD_SEALS, F_SEAL_SHRINK)) first")
        raise DmaBufError(errno.EINVAL, (
            f"{what} lacks F_SEAL_SHRINK (seals: {'|'.join(seal_names(seals)) or 'none'}): "
            f"udmabuf requires it so the pages cannot be truncated under a device; {hint}"))


class Memfd(FdObject):
    """An anonymous shmem file — ``memfd_create(2)`` — with sealing helpers.

    Create with :meth:`create`; wrap an existing fd with ``Memfd(fd)`` (ownership is taken).
    """

    def __init__(self, fd: int, backend: UapiBackend | None = None, *, name: str = "") -> None:
        super().__init__(fd, backend, what=f"memfd {name!r}" if name else "memfd")
        self.name = name

    @classmethod
    def create(cls, name: str, size: int = 0, *, allow_sealing: bool = True,
               cloexec: bool = True, hugetlb: bool = False,
               backend: UapiBackend | None = None) -> Memfd:
        """Create a memfd of ``size`` bytes — ``memfd_create(2)`` + ``ftruncate(2)``.

        Args:
            name: the debugging name (``/proc/self/fd/N`` shows ``/memfd:<name>``).
            size: initial size in bytes (>= 0); udmabuf needs whole pages.
            allow_sealing: MFD_ALLOW_SEALING (needed for udmabuf).
            cloexec: MFD_CLOEXEC.
            hugetlb: MFD_HUGETLB (needs reserved huge pages).
            backend: None for the running kernel.

        Context:
            Does not block.

        Returns:
            The new :class:`Memfd`.

        Raises:
            DmaBufError: EINVAL for a negative size or a bad name; errors of memfd_create(2)
                (EMFILE, ENOMEM; ENOSYS without CONFIG_MEMFD_CREATE).

        Kernel: mm/memfd.c, sys_memfd_create().
        """
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DmaBufError(errno.EINVAL, f"memfd size must be an int >= 0, got {size!r}")
        be = backend if backend is not None else default_backend()
        flags = (MFD_ALLOW_SEALING if allow_sealing else 0) | (MFD_CLOEXEC if cloexec else 0) \
            | (MFD_HUGETLB if hugetlb else 0)
        try:
            fd = be.memfd_create(name, flags)
        except OSError as e:
            raise os_error(e, f"memfd_create({name!r})", {
                errno.ENOSYS: "the kernel lacks CONFIG_MEMFD_CREATE",
                errno.EINVAL: "bad name (at most 249 bytes, no NUL) or flags",
                errno.EMFILE: "too many open files: close fds you no longer need"}) from e
        m = cls(fd, be, name=name)
        if size:
            try:
                m.truncate(size)
            except BaseException:
                m.close()
                raise
        return m

    @property
    def size(self) -> int:
        """Current size in bytes — ``fstat(2).st_size``."""
        try:
            return self._backend.fstat(self.fileno()).st_size
        except OSError as e:
            raise os_error(e, f"fstat of {self._what}") from e

    def truncate(self, size: int) -> None:
        """Set the size — ``ftruncate(2)``.

        Raises:
            DmaBufError: EPERM when F_SEAL_SHRINK/GROW forbid it; EINVAL for size < 0.

        Kernel: mm/shmem.c, shmem_setattr() (seal checks).
        """
        if not isinstance(size, int) or size < 0:
            raise DmaBufError(errno.EINVAL, f"size must be an int >= 0, got {size!r}")
        try:
            self._backend.ftruncate(self.fileno(), size)
        except OSError as e:
            raise os_error(e, f"ftruncate({self._what}, {size})", {
                errno.EPERM: "a seal (F_SEAL_SHRINK or F_SEAL_GROW) forbids resizing"}) from e

    @property
    def seals(self) -> int:
        """The seal mask — ``fcntl(F_GET_SEALS)``.

        Raises:
            DmaBufError: EINVAL if the fd is not a shmem/hugetlbfs file.

        Kernel: mm/memfd.c, memfd_get_seals().
        """
        try:
            return self._backend.fcntl(self.fileno(), F_GET_SEALS)
        except OSError as e:
            raise os_error(e, f"F_GET_SEALS on {self._what}",
                           {errno.EINVAL: "the file is not a memfd (shmem/hugetlbfs)"}) from e

    def add_seals(self, seals: int) -> None:
        """Add seals — ``fcntl(F_ADD_SEALS)`` (seals can never be removed).

        Raises:
            DmaBufError: EPERM when F_SEAL_SEAL is set (or MFD_ALLOW_SEALING was not given);
                EBUSY for F_SEAL_WRITE while writable shared mappings exist.

        Kernel: mm/memfd.c, memfd_add_seals().
        """
        try:
            self._backend.fcntl(self.fileno(), F_ADD_SEALS, seals)
        except OSError as e:
            raise os_error(e, f"F_ADD_SEALS {'|'.join(seal_names(seals))} on {self._what}", {
                errno.EPERM: "F_SEAL_SEAL is set (the memfd was created without "
                             "MFD_ALLOW_SEALING, or sealing was closed)",
                errno.EBUSY: "F_SEAL_WRITE needs all writable shared mappings gone"}) from e

    def seal_for_udmabuf(self) -> None:
        """Seal as udmabuf requires: add F_SEAL_SHRINK, never F_SEAL_WRITE.

        Idempotent. Refuses a memfd that is already write-sealed (udmabuf would reject it).

        Raises:
            DmaBufError: EINVAL for a write-sealed memfd; EPERM without MFD_ALLOW_SEALING.

        Kernel: drivers/dma-buf/udmabuf.c, check_memfd_seals() (SEALS_WANTED/SEALS_DENIED).
        """
        seals = self.seals
        if seals & UDMABUF_SEALS_DENIED:
            check_udmabuf_seals(seals, what=self._what)
        if not seals & F_SEAL_SHRINK:
            if seals & F_SEAL_SEAL:
                raise DmaBufError(errno.EPERM, (
                    f"{self._what} cannot be sealed: it was created without MFD_ALLOW_SEALING "
                    "(or F_SEAL_SEAL was added); create it with Memfd.create(allow_sealing="
                    "True)"))
            self.add_seals(F_SEAL_SHRINK)

    def read(self, offset: int, length: int) -> bytes:
        """Read bytes at ``offset`` — ``pread(2)`` (no mapping needed)."""
        try:
            return self._backend.pread(self.fileno(), length, offset)
        except OSError as e:
            raise os_error(e, f"pread of {self._what}") from e

    def write(self, offset: int, data: bytes) -> int:
        """Write bytes at ``offset`` — ``pwrite(2)``; returns the count written."""
        try:
            return self._backend.pwrite(self.fileno(), bytes(data), offset)
        except OSError as e:
            raise os_error(e, f"pwrite of {self._what}",
                           {errno.EPERM: "F_SEAL_WRITE or F_SEAL_GROW forbids it"}) from e
