"""memfd: anonymous shmem files with seals — mm/memfd.c, mm/shmem.c (the slice udmabuf needs).

``memfd_create(2)`` returns a file backed by shmem pages: it can be grown with ``ftruncate``,
written, mapped, and *sealed* with ``fcntl(F_ADD_SEALS)`` so that whoever holds it can rely on
its size (``F_SEAL_SHRINK``/``F_SEAL_GROW``) or contents (``F_SEAL_WRITE``,
``F_SEAL_FUTURE_WRITE``) not changing. udmabuf turns a sealed memfd's pages into a dma-buf
without copying: it *pins* the pages (``memfd_pin_folios``) and exports them.

:class:`MemFd` is the inode side of a memfd (``struct shmem_inode_info`` + its page cache) with
real pages in :class:`~dmabuf.mm.phys.PhysMemory` RAM:

* the page cache is one ``int64`` per page index holding the page's physical address (0 = hole;
  8 bytes per page, like the kernel's xarray slot); pages are allocated on first touch (write,
  mmap access, read, pin), zero-filled (``__GFP_ZERO`` / ``clear_highpage``), from one owner id
  per memfd (``"memfd:<name>"``) so a DMA through a stale udmabuf mapping is caught;
* seals follow ``memfd_add_seals()`` / ``memfd_get_seals()`` exactly: ``EINVAL`` for unknown
  bits, ``EPERM`` once ``F_SEAL_SEAL`` is set (memfds created without ``MFD_ALLOW_SEALING`` start
  with it), ``EBUSY`` for ``F_SEAL_WRITE`` while writable shared mappings exist or pages are
  pinned (``mapping_deny_writable`` / ``memfd_wait_for_pins``); writes, growth and shrinking
  against a seal fail with ``EPERM`` as ``shmem_file_write_iter`` / ``shmem_setattr`` do;
* pins (:meth:`MemFd.pin_pages`) hold pages alive across truncation and the memfd's release: a
  truncated or released page that is still pinned is freed only when its last pin goes (the
  folio refcount), so udmabuf's pages outlive the memfd exactly as in the kernel;
* the page cache is open to the mm layer's fault path: :meth:`MemFd.filemap_lookup`
  (``filemap_get_entry``) and :meth:`MemFd.filemap_get` (``shmem_get_folio``, allocating
  holes); a mapping's :attr:`MemFdMapping.on_truncate` hook is run when truncation drops pages,
  after they left the page cache and before they are freed (``unmap_mapping_range`` in
  ``truncate_pagecache``), so page tables never point at a freed page.

The file-descriptor side (``memfd_create`` returning an fd, ``fcntl`` on the fd) lives in
:mod:`dmabuf.buf.udmabuf`, since files are a layer-3 concept.

Locking: one internal lock (``inode_lock`` + the mapping's i_pages lock) held only inside one
call; byte copies run outside it, like page-cache copies.

Deliberate differences: ``MFD_HUGETLB`` is refused with ``ENOSYS`` (the model has no hugetlbfs,
as a kernel without CONFIG_HUGETLBFS); reading a hole allocates a zeroed page (the kernel maps the
shared zero page) — observable only in memory accounting.

Kernel: mm/memfd.c (memfd_create, memfd_add_seals, memfd_get_seals, memfd_wait_for_pins,
memfd_pin_folios), mm/shmem.c (shmem_setattr, shmem_file_write_iter, shmem_mmap),
include/uapi/linux/memfd.h (MFD_*), include/uapi/linux/fcntl.h (F_SEAL_*).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.phys import (
    PAGE_SHIFT,
    PAGE_SIZE,
    MemKind,
    PhysMemory,
    PhysRegion,
    as_bytes_array,
)
from dmabuf.mm.ranges import RANGE_DTYPE, coalesce

__all__ = [
    "F_SEAL_EXEC",
    "F_SEAL_FUTURE_WRITE",
    "F_SEAL_GROW",
    "F_SEAL_SEAL",
    "F_SEAL_SHRINK",
    "F_SEAL_WRITE",
    "MAX_LFS_FILESIZE",
    "MFD_ALLOW_SEALING",
    "MFD_CLOEXEC",
    "MFD_EXEC",
    "MFD_HUGETLB",
    "MFD_NAME_MAX",
    "MFD_NOEXEC_SEAL",
    "MemFd",
    "MemFdMapping",
    "MemFdPin",
]

# include/uapi/linux/memfd.h
MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_HUGETLB = 0x0004
MFD_NOEXEC_SEAL = 0x0008
MFD_EXEC = 0x0010
_MFD_ALL = MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_NOEXEC_SEAL | MFD_EXEC
#: ``NAME_MAX - strlen("memfd:")``.
MFD_NAME_MAX = 249

# include/uapi/linux/fcntl.h
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010
F_SEAL_EXEC = 0x0020
_F_ALL_SEALS = (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE
                | F_SEAL_EXEC)
#: Largest file size (include/linux/fs.h, 64-bit).
MAX_LFS_FILESIZE = (1 << 63) - 1


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return int(value)


def _page_ranges(addrs: np.ndarray) -> np.ndarray:
    """One page-sized range per physical page address, merged where contiguous."""
    r = np.empty(addrs.size, dtype=RANGE_DTYPE)
    r["addr"] = addrs.astype(np.uint64)
    r["len"] = PAGE_SIZE
    return coalesce(r)


class MemFdPin:
    """A pin on some pages of a memfd — the folio references ``memfd_pin_folios()`` takes.

    Attributes:
        memfd: the file the pages came from.
        first: index of the first pinned page.
        addrs: physical address of every pinned page, in order (``int64``).
    """

    def __init__(self, memfd: MemFd, first: int, addrs: np.ndarray) -> None:
        self.memfd = memfd
        self.first = first
        self.addrs = addrs
        self.released = False

    @property
    def npages(self) -> int:
        """Number of pinned pages."""
        return int(self.addrs.size)

    def ranges(self) -> np.ndarray:
        """The pinned pages as physical ranges (``RANGE_DTYPE``, merged where contiguous).

        Model-only: the pinned folios as physical ranges, the model's form of the folio array
        memfd_pin_folios() returns.
        """
        return _page_ranges(self.addrs)

    def unpin(self) -> None:
        """Drop the pins — ``unpin_folio()`` per folio. Idempotent misuse is a violation.

        Raises: ContractViolation("unpin_folio"): unpinned twice.

        Kernel: mm/gup.c, unpin_folio() per folio.
        """
        self.memfd._unpin(self)

    def __repr__(self) -> str:
        return f"<MemFdPin {self.memfd.name!r} pages {self.first}+{self.npages}>"


class MemFdMapping:
    """A ``mmap()`` of a memfd window: byte access through the page cache (``shmem_fault``).

    Pages are looked up on every access, so the mapping always shows the file's current pages
    (shared mapping semantics). Accesses beyond EOF raise ``SIGBUS`` as
    ``DmaBufError(EFAULT)``. Private (``MAP_PRIVATE``) mappings are not modelled.
    """

    def __init__(self, memfd: MemFd, offset: int, length: int, writable: bool) -> None:
        self.memfd = memfd
        self.offset = offset
        self.length = length
        self.writable = writable
        self.closed = False
        #: Set by whoever maps the window into page tables (the mm layer's VMAs): called with
        #: the first file page index dropped when truncation (or release) removes pages, before
        #: they are freed — ``unmap_mapping_range()``. Runs without the memfd's lock held; it
        #: may block (MMU notifiers).
        self.on_truncate: Callable[[int], None] | None = None

    def _check(self, off: int, n: int) -> None:
        if self.closed:
            raise ContractViolation("munmap", "access through an unmapped memfd mapping")
        off = _check_int(off, "offset")
        n = _check_int(n, "length")
        if off < 0 or n < 0 or off + n > self.length:
            raise DmaBufError(errno.EFAULT, f"access [{off}, {off + n}) outside the {self.length}"
                              "-byte mapping (SIGSEGV)")

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Load bytes through the mapping (faults pages in).

        Kernel: mm/shmem.c, shmem_fault() (CPU loads through a shared mapping).
        """
        if length is None:
            length = self.length - offset
        self._check(offset, length)
        return self.memfd._access(self.offset + offset, length, None, mapping=True)

    def write(self, offset: int, data: Any) -> None:
        """Store bytes through the mapping (faults pages in).

        Raises: DmaBufError(EFAULT): read-only mapping (SIGSEGV) or beyond EOF (SIGBUS).

        Kernel: mm/shmem.c, shmem_fault() (CPU stores through a shared mapping).
        """
        src = as_bytes_array(data)
        self._check(offset, int(src.size))
        if not self.writable:
            raise DmaBufError(errno.EFAULT, "store through a read-only mapping (SIGSEGV)")
        self.memfd._access(self.offset + offset, int(src.size), src, mapping=True)

    def munmap(self) -> None:
        """``munmap()``; idempotent.

        Kernel: mm/vma.c, do_vmi_munmap() (munmap(2)).
        """
        if not self.closed:
            self.closed = True
            self.memfd._unmapped(self)

    def __enter__(self) -> MemFdMapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.munmap()


class MemFd:
    """The shmem inode behind a memfd: size, seals, page cache of real pages, pins.

    Args:
        phys: the physical memory pages come from.
        name: the memfd's name (at most ``MFD_NAME_MAX`` bytes; shown as ``memfd:<name>``).
        flags: ``MFD_*`` flags of ``memfd_create``.
        region: the RAM region to allocate from (default: the first RAM region).

    Raises:
        TypeError: wrong types.
        DmaBufError(EINVAL): unknown flags, ``MFD_EXEC`` with ``MFD_NOEXEC_SEAL``, a name too long
            or containing NUL, no RAM region.
        DmaBufError(ENOSYS): ``MFD_HUGETLB`` (no hugetlbfs in the model).

    Kernel: mm/memfd.c, memfd_create(), alloc_file(); mm/shmem.c, shmem_file_setup().
    """

    def __init__(self, phys: PhysMemory, name: str = "", flags: int = MFD_ALLOW_SEALING, *,
                 region: PhysRegion | str | None = None) -> None:
        if not isinstance(phys, PhysMemory):
            raise TypeError(f"phys must be a PhysMemory, not {type(phys).__name__}")
        if not isinstance(name, str):
            raise TypeError("memfd name must be a str")
        flags = _check_int(flags, "flags")
        if flags & ~_MFD_ALL:
            raise DmaBufError(errno.EINVAL, f"memfd_create: unknown flags {flags & ~_MFD_ALL:#x}")
        if (flags & MFD_EXEC) and (flags & MFD_NOEXEC_SEAL):
            raise DmaBufError(errno.EINVAL, "memfd_create: MFD_EXEC and MFD_NOEXEC_SEAL are "
                              "mutually exclusive")
        if len(name.encode()) > MFD_NAME_MAX or "\0" in name:
            raise DmaBufError(errno.EINVAL, f"memfd_create: name must be at most {MFD_NAME_MAX} "
                              "bytes without NUL")
        if flags & MFD_HUGETLB:
            raise DmaBufError(errno.ENOSYS, "memfd_create(MFD_HUGETLB): the model has no "
                              "hugetlbfs (as a kernel without CONFIG_HUGETLBFS)")
        if region is None:
            rams = [r for r in phys.regions if r.kind is MemKind.RAM]
            if not rams:
                raise DmaBufError(errno.EINVAL, "memfd: the physical memory has no RAM region; "
                                  "add one with PhysMemory.add_region(..., MemKind.RAM)")
            region = rams[0]
        elif isinstance(region, str):
            region = phys.region(region)
        if region.kind is not MemKind.RAM:
            raise DmaBufError(errno.EINVAL, f"memfd pages must come from RAM, not {region.name} "
                              f"({region.kind.value})")
        self.phys = phys
        self.region = region
        self.name = name
        self.flags = flags
        seals = 0 if flags & (MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL) else F_SEAL_SEAL
        if flags & MFD_NOEXEC_SEAL:
            seals |= F_SEAL_EXEC
        self._seals = seals
        self.owner = phys.new_owner(f"memfd:{name}")
        self._lock = threading.Lock()
        self._size = 0
        self._pages = np.zeros(0, dtype=np.int64)   # physical address per page index, 0 = hole
        self._pins = np.zeros(0, dtype=np.int32)    # pin count per page index
        self._orphans: dict[int, int] = {}          # truncated/released pinned page -> pins
        self._writable_maps = 0
        self._maps: list[MemFdMapping] = []
        self.released = False

    def __repr__(self) -> str:
        return f"<MemFd memfd:{self.name} size={self._size} seals={self._seals:#x}>"

    # ------------------------------------------------------------------ attributes

    @property
    def size(self) -> int:
        """``i_size``: the file size in bytes (``lseek(fd, 0, SEEK_END)``)."""
        return self._size

    @property
    def resident_pages(self) -> int:
        """Pages allocated in the page cache (not holes)."""
        return int(np.count_nonzero(self._pages))

    @property
    def pinned_pages(self) -> int:
        """Pages with at least one pin (in the file or orphaned)."""
        return int(np.count_nonzero(self._pins)) + len(self._orphans)

    def _check_live(self, what: str) -> None:
        if self.released:
            raise ContractViolation("memfd", f"{what} on a released memfd (the file was closed)")

    # ------------------------------------------------------------------ seals

    def get_seals(self) -> int:
        """``fcntl(fd, F_GET_SEALS)`` — ``memfd_get_seals()``: the seal bits.

        Kernel: mm/memfd.c, memfd_get_seals() (fcntl F_GET_SEALS).
        """
        return self._seals

    def add_seals(self, seals: int, *, writable_file: bool = True) -> None:
        """``fcntl(fd, F_ADD_SEALS, seals)`` — ``memfd_add_seals()``.

        Args:
            seals: ``F_SEAL_*`` bits to add.
            writable_file: whether the fd was opened for writing (sealing needs ``FMODE_WRITE``).
        Context: takes the inode lock; never sleeps in the model (the kernel may wait up to
            ~150 ms for transient page references in ``memfd_wait_for_pins``).
        Raises:
            DmaBufError(EPERM): the fd is not writable, or ``F_SEAL_SEAL`` is already set.
            DmaBufError(EINVAL): unknown seal bits.
            DmaBufError(EBUSY): ``F_SEAL_WRITE`` while writable shared mappings exist or pages
                are pinned.
        Kernel: mm/memfd.c, memfd_add_seals(), memfd_wait_for_pins(); mm/filemap.c,
            mapping_deny_writable().
        """
        seals = _check_int(seals, "seals")
        self._check_live("F_ADD_SEALS")
        if not writable_file:
            raise DmaBufError(errno.EPERM, "F_ADD_SEALS needs a file opened for writing")
        if seals & ~_F_ALL_SEALS:
            raise DmaBufError(errno.EINVAL, f"F_ADD_SEALS: unknown seal bits "
                              f"{seals & ~_F_ALL_SEALS:#x}")
        with self._lock:
            if self._seals & F_SEAL_SEAL:
                raise DmaBufError(errno.EPERM, "F_ADD_SEALS: the memfd is sealed against "
                                  "further sealing (F_SEAL_SEAL, or created without "
                                  "MFD_ALLOW_SEALING)")
            if (seals & F_SEAL_WRITE) and not (self._seals & F_SEAL_WRITE):
                if self._writable_maps:
                    raise DmaBufError(errno.EBUSY, f"F_SEAL_WRITE: {self._writable_maps} "
                                      "writable shared mapping(s) exist; munmap them first")
                if bool(np.any(self._pins)) or self._orphans:
                    raise DmaBufError(errno.EBUSY, "F_SEAL_WRITE: pages are pinned (e.g. by a "
                                      "udmabuf); memfd_wait_for_pins gave up")
            self._seals |= seals

    # ------------------------------------------------------------------ size

    def ftruncate(self, length: int) -> None:
        """``ftruncate(fd, length)`` — ``shmem_setattr()``.

        Growing adds holes; shrinking drops the pages past the end (freed and poisoned, or kept
        alive until unpinned when pinned).

        Raises:
            DmaBufError(EINVAL): negative or above ``MAX_LFS_FILESIZE``.
            DmaBufError(EPERM): growing with ``F_SEAL_GROW`` or shrinking with ``F_SEAL_SHRINK``.
        Kernel: mm/shmem.c, shmem_setattr(); mm/truncate.c.
        """
        length = _check_int(length, "length")
        self._check_live("ftruncate")
        if not 0 <= length <= MAX_LFS_FILESIZE:
            raise DmaBufError(errno.EINVAL, f"ftruncate({length}): length must be in "
                              f"0..{MAX_LFS_FILESIZE}")
        to_free: np.ndarray | None = None
        hooks: list[Callable[[int], None]] = []
        with self._lock:
            if length > self._size and self._seals & F_SEAL_GROW:
                raise DmaBufError(errno.EPERM, "ftruncate: the memfd is sealed against growing "
                                  "(F_SEAL_GROW)")
            if length < self._size and self._seals & F_SEAL_SHRINK:
                raise DmaBufError(errno.EPERM, "ftruncate: the memfd is sealed against shrinking "
                                  "(F_SEAL_SHRINK)")
            npages = -(-length // PAGE_SIZE)
            if npages < self._pages.size:
                to_free = self._drop_pages_locked(npages)
                hooks = self._truncate_hooks_locked()
            elif npages > self._pages.size:
                self._pages = np.concatenate((self._pages,
                                              np.zeros(npages - self._pages.size, np.int64)))
                self._pins = np.concatenate((self._pins,
                                             np.zeros(npages - self._pins.size, np.int32)))
            self._size = length
        for hook in hooks:                  # truncate_pagecache(): unmap_mapping_range()
            hook(npages)
        if to_free is not None and to_free.size:
            self.phys.free(_page_ranges(to_free))
        # Zero the tail of the new last page (truncate_inode_pages_range zeroes partial pages).
        if length % PAGE_SIZE and length // PAGE_SIZE < self._pages.size:
            a = int(self._pages[length // PAGE_SIZE])
            if a:
                self.phys.view(a + length % PAGE_SIZE, PAGE_SIZE - length % PAGE_SIZE)[:] = 0

    def _truncate_hooks_locked(self) -> list[Callable[[int], None]]:
        return [m.on_truncate for m in self._maps if m.on_truncate is not None]

    def _drop_pages_locked(self, keep: int) -> np.ndarray:
        """Remove page indices >= keep; return the unpinned pages to free (pinned ones orphan)."""
        gone = self._pages[keep:]
        pins = self._pins[keep:]
        pinned = (gone != 0) & (pins > 0)
        for a, c in zip(gone[pinned].tolist(), pins[pinned].tolist(), strict=True):
            self._orphans[a] = self._orphans.get(a, 0) + c
        free = gone[(gone != 0) & (pins == 0)].copy()
        self._pages = self._pages[:keep].copy()
        self._pins = self._pins[:keep].copy()
        return free

    # ------------------------------------------------------------------ page cache

    def filemap_lookup(self, index: Any) -> np.ndarray:
        """Page-cache page of each file page index, allocating nothing — ``filemap_get_entry()``.

        Args:
            index: file page indices (an int array; any order, repeats allowed).
        Context: takes the memfd's lock briefly; never blocks otherwise.
        Returns: a new ``uint64`` array of physical page addresses, 0 for a hole or an index at
            or beyond EOF (or negative).
        Kernel: mm/filemap.c, filemap_get_entry().
        """
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.zeros(idx.size, dtype=np.uint64)
        with self._lock:
            ok = (idx >= 0) & (idx < self._pages.size)
            out[ok] = self._pages[idx[ok]].astype(np.uint64)
        return out

    def filemap_get(self, index: Any) -> np.ndarray:
        """Page-cache page of each index, allocating (zeroed) holes — ``shmem_get_folio()``.

        What a fault on a mapping of the memfd does (``shmem_fault`` with ``SGP_CACHE``).

        Args:
            index: file page indices.
        Context: takes the memfd's lock; may allocate pages.
        Returns: a new ``uint64`` array of physical page addresses; 0 for an index at or beyond
            EOF (the caller's ``SIGBUS``) or negative — such indices allocate nothing.
        Raises: DmaBufError(ENOMEM): RAM exhausted.
        Kernel: mm/shmem.c, shmem_get_folio() / shmem_fault() (beyond i_size: VM_FAULT_SIGBUS).
        """
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        out = np.zeros(idx.size, dtype=np.uint64)
        if idx.size == 0:
            return out
        with self._lock:
            ok = (idx >= 0) & (idx < self._pages.size)
            if bool(ok.any()):
                good = idx[ok]
                self._fill_holes_locked(np.unique(good[self._pages[good] == 0]))
                out[ok] = self._pages[good].astype(np.uint64)
        return out

    def _populate_locked(self, first: int, last: int) -> None:
        """Allocate (zeroed) every hole among page indices ``[first, last)``."""
        self._fill_holes_locked(np.flatnonzero(self._pages[first:last] == 0) + first)

    def _fill_holes_locked(self, holes: np.ndarray) -> None:
        """Allocate (zeroed) pages for the hole indices ``holes`` (sorted, unique)."""
        if holes.size == 0:
            return
        ext = self.phys.alloc(self.region, int(holes.size) << PAGE_SHIFT, self.owner, zero=True)
        counts = (ext["len"] >> np.uint64(PAGE_SHIFT)).astype(np.int64)
        starts = ext["addr"].astype(np.int64)
        offs = np.zeros(counts.size, dtype=np.int64)
        if counts.size > 1:
            np.cumsum(counts[:-1], out=offs[1:])
        addrs = np.repeat(starts - (offs << PAGE_SHIFT), counts) + (
            np.arange(int(counts.sum()), dtype=np.int64) << PAGE_SHIFT)
        self._pages[holes] = addrs

    def _window_ranges(self, offset: int, length: int) -> np.ndarray:
        """Physical ranges of file bytes ``[offset, offset + length)`` (pages populated)."""
        first = offset >> PAGE_SHIFT
        last = -(-(offset + length) // PAGE_SIZE)
        with self._lock:
            self._populate_locked(first, last)
            addrs = self._pages[first:last].copy()
        r = np.empty(addrs.size, dtype=RANGE_DTYPE)
        r["addr"] = addrs.astype(np.uint64)
        r["len"] = PAGE_SIZE
        head = offset - (first << PAGE_SHIFT)
        r["addr"][0] += np.uint64(head)
        r["len"][0] -= np.uint64(head)
        tail = (last << PAGE_SHIFT) - (offset + length)
        r["len"][-1] -= np.uint64(tail)
        return coalesce(r)

    def _access(self, offset: int, length: int, data: np.ndarray | None, *,
                mapping: bool = False) -> bytes:
        if length == 0:
            return b""
        # A mapping reaches the whole page holding EOF (the bytes past EOF read as zero);
        # beyond that page an access is SIGBUS (shmem_fault past i_size).
        limit = -(-self._size // PAGE_SIZE) * PAGE_SIZE if mapping else self._size
        if offset + length > limit:
            raise DmaBufError(errno.EFAULT, f"access [{offset}, {offset + length}) beyond the "
                              f"end of the {self._size}-byte memfd (SIGBUS)")
        r = self._window_ranges(offset, length)
        if data is None:
            return self.phys.read(r).tobytes()
        self.phys.write(r, data)
        return b""

    def pwrite(self, data: Any, offset: int) -> int:
        """``pwrite(fd, data, offset)`` — ``shmem_file_write_iter()``; extends the file.

        Returns: bytes written.
        Raises:
            DmaBufError(EPERM): ``F_SEAL_WRITE``/``F_SEAL_FUTURE_WRITE`` set, or growth with
                ``F_SEAL_GROW``.
            DmaBufError(EINVAL): negative offset.
        Kernel: mm/shmem.c, shmem_file_write_iter(), shmem_write_begin() (seal checks).
        """
        src = as_bytes_array(data)
        offset = _check_int(offset, "offset")
        self._check_live("write")
        if offset < 0:
            raise DmaBufError(errno.EINVAL, "pwrite: negative offset")
        if self._seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
            raise DmaBufError(errno.EPERM, "write to a memfd sealed with F_SEAL_WRITE / "
                              "F_SEAL_FUTURE_WRITE")
        end = offset + int(src.size)
        if end > self._size:
            if self._seals & F_SEAL_GROW:
                raise DmaBufError(errno.EPERM, "write past EOF of a memfd sealed with "
                                  "F_SEAL_GROW")
            self.ftruncate(end)
        self._access(offset, int(src.size), src)
        return int(src.size)

    def pread(self, length: int, offset: int) -> bytes:
        """``pread(fd, length, offset)``: up to ``length`` bytes (short at EOF).

        Raises: DmaBufError(EINVAL) for a negative length or offset.
        Kernel: mm/shmem.c, shmem_file_read_iter() (pread(2)).
        """
        length = _check_int(length, "length")
        offset = _check_int(offset, "offset")
        self._check_live("read")
        if length < 0 or offset < 0:
            raise DmaBufError(errno.EINVAL, "pread: negative length or offset")
        n = max(0, min(length, self._size - offset))
        return self._access(offset, n, None)

    def mmap(self, offset: int = 0, length: int | None = None, *,
             writable: bool = True) -> MemFdMapping:
        """``mmap(NULL, length, PROT_READ[|PROT_WRITE], MAP_SHARED, fd, offset)`` — shmem_mmap.

        Raises:
            DmaBufError(EINVAL): unaligned offset, zero length.
            DmaBufError(EPERM): writable shared mapping of a memfd sealed with ``F_SEAL_WRITE`` /
                ``F_SEAL_FUTURE_WRITE`` (``seal_check_write``).
        Kernel: mm/shmem.c, shmem_mmap(); mm/memfd.c, memfd_check_seals_mmap().
        """
        offset = _check_int(offset, "offset")
        self._check_live("mmap")
        if length is None:
            length = self._size - offset
        length = _check_int(length, "length")
        if offset < 0 or offset % PAGE_SIZE or length <= 0:
            raise DmaBufError(errno.EINVAL, "mmap: offset must be page aligned and length > 0")
        with self._lock:
            if writable and self._seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
                raise DmaBufError(errno.EPERM, "mmap(PROT_WRITE, MAP_SHARED) of a memfd sealed "
                                  "against writes")
            m = MemFdMapping(self, offset, length, writable)
            self._maps.append(m)
            if writable:
                self._writable_maps += 1
        return m

    def _unmapped(self, m: MemFdMapping) -> None:
        with self._lock:
            if m in self._maps:
                self._maps.remove(m)
                if m.writable:
                    self._writable_maps -= 1

    # ------------------------------------------------------------------ pins (udmabuf)

    def pin_pages(self, offset: int, length: int) -> MemFdPin:
        """Pin the pages of ``[offset, offset + length)`` — ``memfd_pin_folios()``.

        Missing pages are allocated (zeroed) first, as ``shmem_get_folio(SGP_WRITE)`` does.

        Args:
            offset, length: page-aligned window inside the file.
        Returns: a :class:`MemFdPin` (its ``ranges()`` are the physical pages, in file order).
        Raises:
            DmaBufError(EINVAL): unaligned, empty, or beyond the file size.
        Kernel: mm/gup.c, memfd_pin_folios() (FOLL_PIN | FOLL_LONGTERM).
        """
        offset = _check_int(offset, "offset")
        length = _check_int(length, "length")
        self._check_live("memfd_pin_folios")
        if offset < 0 or length <= 0 or (offset | length) % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, "memfd_pin_folios: offset and length must be page "
                              "aligned and length > 0")
        if offset + length > self._size:
            raise DmaBufError(errno.EINVAL, f"memfd_pin_folios: [{offset:#x}, "
                              f"{offset + length:#x}) is beyond the {self._size:#x}-byte memfd")
        first = offset >> PAGE_SHIFT
        last = (offset + length) >> PAGE_SHIFT
        with self._lock:
            self._populate_locked(first, last)
            self._pins[first:last] += 1
            addrs = self._pages[first:last].copy()
        return MemFdPin(self, first, addrs)

    def _unpin(self, pin: MemFdPin) -> None:
        if pin.released:
            raise ContractViolation("unpin_folio", f"{pin!r} unpinned twice")
        free: list[int] = []
        with self._lock:
            pin.released = True
            n = pin.npages
            end = min(pin.first + n, self._pages.size)
            cur = self._pages[pin.first:end] if pin.first < end else np.zeros(0, np.int64)
            same = np.zeros(n, dtype=bool)
            same[:cur.size] = cur == pin.addrs[:cur.size]
            idx = np.flatnonzero(same) + pin.first
            self._pins[idx] -= 1
            for a in pin.addrs[~same].tolist():
                c = self._orphans[a] - 1
                if c:
                    self._orphans[a] = c
                else:
                    del self._orphans[a]
                    free.append(a)
        if free:
            self.phys.free(_page_ranges(np.asarray(free, dtype=np.int64)))

    # ------------------------------------------------------------------ release

    def release(self) -> None:
        """The last reference to the file went away — ``shmem_evict_inode()``.

        Unpinned pages are freed (poisoned); pinned pages survive until their last unpin.
        Idempotent.

        Kernel: mm/shmem.c, shmem_evict_inode().
        """
        with self._lock:
            if self.released:
                return
            self.released = True
            free = self._drop_pages_locked(0)
            hooks = self._truncate_hooks_locked()
            self._size = 0
        for hook in hooks:
            hook(0)
        if free.size:
            self.phys.free(_page_ranges(free))

    def describe(self) -> dict[str, Any]:
        """Snapshot: name, size, seals, resident/pinned pages, mappings.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"name": f"memfd:{self.name}", "size": self._size, "seals": self._seals,
                "resident_pages": self.resident_pages, "pinned_pages": self.pinned_pages,
                "mappings": len(self._maps), "released": self.released}
