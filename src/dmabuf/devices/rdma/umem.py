"""drivers/infiniband/core/umem.c: pinned user memory for RDMA (``ib_umem_get``) and user memory.

A classic (non-dma-buf) memory region covers a range of a process's virtual memory:
``ib_umem_get()`` pins the pages with ``pin_user_pages_fast(FOLL_LONGTERM)`` and maps them for the
device with ``ib_dma_map_sgtable_attrs``; the pages then stay put until ``ib_umem_release()``.

The model has no MMU, so this module also models the piece of ``mm`` the umem needs:
:class:`UserMemory` is the process's anonymous memory — page-aligned virtual ranges
(:class:`UserBuffer`, one per ``mmap``/``posix_memalign``) backed by system-RAM pages of a
:class:`~dmabuf.mm.phys.PhysMemory` with their own owner id. ``ib_umem_get`` looks the virtual
range up (``-EFAULT`` when it is not inside one mapping, as ``pin_user_pages`` failing), pins
the buffer (an unmapped buffer keeps its pages until the last pin goes — the long-term pin),
and maps the pages for the device.

Kernel: drivers/infiniband/core/umem.c (ib_umem_get, ib_umem_release), mm/gup.c
(pin_user_pages_fast, FOLL_LONGTERM), include/rdma/ib_umem.h.
"""

from __future__ import annotations

import bisect
import errno
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from dmabuf.buf.device import DmaDataDirection
from dmabuf.devices.rdma.ib_verbs import IbAccess, ib_access_writable
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.mm.phys import PAGE_SHIFT, PAGE_SIZE, PhysMemory, PhysRegion
from dmabuf.mm.ranges import slice_ranges

if TYPE_CHECKING:
    from dmabuf.devices.rdma.mlx5_ib import RdmaNic

__all__ = ["IbUmem", "UserBuffer", "UserMemory", "ib_umem_get", "ib_umem_release"]

_U64 = 1 << 64
_PAGE_MASK = PAGE_SIZE - 1
#: First virtual address handed out (a typical x86-64 mmap base).
USER_VA_BASE = 0x7F00_0000_0000


class UserBuffer:
    """One anonymous mapping of the process: virtual range + RAM pages (see module docs).

    Attributes:
        va: start virtual address (page aligned).
        length: bytes (page aligned).
        phys: the physical memory.
        pages: ``RANGE_DTYPE`` physical extents, in virtual order.
        owner: the owner id of the pages.
        pins: long-term pins (``ib_umem_get``) outstanding.
        mapped: False after :meth:`munmap`.
    """

    def __init__(self, mm: UserMemory, va: int, length: int, phys: PhysMemory,
                 pages: np.ndarray, owner: int) -> None:
        self.mm = mm
        self.va = va
        self.length = length
        self.phys = phys
        self.pages = pages
        self.owner = owner
        self.pins = 0
        self.mapped = True
        self._freed = False

    def __repr__(self) -> str:
        return (f"<UserBuffer {self.va:#x}+{self.length:#x} pins={self.pins}"
                f"{'' if self.mapped else ' unmapped'}>")

    def _window(self, offset: int, length: int) -> np.ndarray:
        if self._freed:
            raise DmaBufError(errno.EFAULT, f"user buffer at {self.va:#x} was unmapped")
        if offset < 0 or length < 0 or offset + length > self.length:
            raise DmaBufError(errno.EFAULT, f"[{offset:#x}, {offset + length:#x}) is outside the "
                              f"{self.length:#x}-byte buffer at {self.va:#x}")
        return slice_ranges(self.pages, offset, length)

    def write(self, offset: int, data: Any) -> None:
        """CPU store of ``data`` at ``va + offset`` (``memcpy`` into the mapping).

        Model-only: a user-space CPU store.
        """
        buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) \
            if not isinstance(data, np.ndarray) else data.view(np.uint8).reshape(-1)
        self.phys.write(self._window(offset, int(buf.size)), buf)

    def read(self, offset: int, length: int) -> np.ndarray:
        """CPU load of ``length`` bytes at ``va + offset`` (a copy).

        Model-only: a user-space CPU load.
        """
        return self.phys.read(self._window(offset, length))

    def munmap(self) -> None:
        """``munmap()``: the range disappears; pinned pages are freed when the last pin goes.

        Kernel: mm/vma.c, do_vmi_munmap() (munmap(2)).
        """
        if not self.mapped:
            return
        self.mapped = False
        self.mm._remove(self)
        if self.pins == 0:
            self._free()

    def _free(self) -> None:
        if not self._freed:
            self._freed = True
            self.phys.free(self.pages)


class UserMemory:
    """The process's anonymous memory: a virtual address space of :class:`UserBuffer` s.

    One per machine (``machine.state(UserMemory)``; :meth:`of`). Virtual addresses are bump
    allocated from :data:`USER_VA_BASE` with a guard page between mappings.

    Locking: an internal lock protects the mapping list (held only inside one call).
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._lock = threading.Lock()
        self._next = USER_VA_BASE
        self._starts: list[int] = []
        self._bufs: list[UserBuffer] = []

    @classmethod
    def of(cls, machine: Machine | None = None) -> UserMemory:
        """The machine's user memory (created on first use).

        Model-only: per-machine lookup of the simulated user address space.
        """
        return (machine or current_machine()).state(cls)

    def mmap(self, phys: PhysMemory, region: PhysRegion | str, length: int,
             label: str = "user buffer") -> UserBuffer:
        """Map ``length`` bytes of fresh zeroed RAM (``mmap(MAP_ANONYMOUS)`` + first touch).

        Raises: DmaBufError(EINVAL): length <= 0; DmaBufError(ENOMEM): RAM exhausted.

        Kernel: mm/mmap.c, do_mmap() with MAP_ANONYMOUS (plus first touch).
        """
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError("length must be an int")
        if length <= 0:
            raise DmaBufError(errno.EINVAL, f"mmap length {length} must be > 0")
        size = (length + _PAGE_MASK) & ~_PAGE_MASK
        owner = phys.new_owner(label)
        pages = phys.alloc(region, size, owner, zero=True)
        with self._lock:
            va = self._next
            self._next += size + PAGE_SIZE
            buf = UserBuffer(self, va, size, phys, pages, owner)
            i = bisect.bisect_left(self._starts, va)
            self._starts.insert(i, va)
            self._bufs.insert(i, buf)
        return buf

    def _remove(self, buf: UserBuffer) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, buf.va)
            if i < len(self._bufs) and self._bufs[i] is buf:
                del self._starts[i]
                del self._bufs[i]

    def lookup(self, va: int, length: int) -> UserBuffer:
        """The mapping holding ``[va, va + length)`` — the VMA walk of GUP.

        Raises: DmaBufError(EFAULT): not entirely inside one mapping.

        Kernel: mm/gup.c, the VMA walk of __get_user_pages() (vma_lookup()).
        """
        with self._lock:
            i = bisect.bisect_right(self._starts, va) - 1
            buf = self._bufs[i] if i >= 0 else None
        if buf is None or not buf.va <= va or va + length > buf.va + buf.length:
            raise DmaBufError(errno.EFAULT, f"[{va:#x}, {va + length:#x}) is not inside one "
                              "mapping of the process (pin_user_pages fails)")
        return buf


class IbUmem:
    """Pinned user pages mapped for an RDMA device — ``struct ib_umem``.

    Attributes:
        ibdev: the device. address: the user virtual address. length: bytes.
        writable: ``ib_access_writable(access)``. buffer: the :class:`UserBuffer`.
        dma: ``RANGE_DTYPE`` DMA ranges of the page-aligned window, from ``ALIGN_DOWN(address)``.
        owner: owner id of the pages (the HCA's DMA checks it).
    """

    def __init__(self, ibdev: RdmaNic, address: int, length: int, access: int,
                 buffer: UserBuffer, dma: np.ndarray) -> None:
        self.ibdev = ibdev
        self.address = address
        self.length = length
        self.access = access
        self.writable = ib_access_writable(access)
        self.buffer = buffer
        self.dma = dma
        self.owner = buffer.owner
        self.released = False

    def __repr__(self) -> str:
        return f"<IbUmem {self.ibdev.name} {self.address:#x}+{self.length:#x}>"

    @property
    def npages(self) -> int:
        """``ib_umem_num_pages()``."""
        return ((((self.address + self.length + _PAGE_MASK) & ~_PAGE_MASK)
                 - (self.address & ~_PAGE_MASK)) >> PAGE_SHIFT)


def ib_umem_get(ibdev: RdmaNic, addr: int, size: int, access: int) -> IbUmem:
    """Pin and DMA-map user memory — ``ib_umem_get()``.

    Args:
        ibdev: the RDMA device (its ``dma`` is the mapping device).
        addr: user virtual address (u64). size: bytes.
        access: ``IB_ACCESS_*``.
    Context: may block (GUP); never holds locks across calls.
    Returns: the :class:`IbUmem`.
    Raises:
        DmaBufError(EINVAL): ``addr + size`` overflows (or its page alignment does); zero pages.
        DmaBufError(EOPNOTSUPP): ``IB_ACCESS_ON_DEMAND`` (ODP umems use ``ib_umem_odp_get``).
        DmaBufError(EFAULT): the range is not mapped (``pin_user_pages_fast``).
        DmaBufError(...): from the DMA mapping (EIO, ENOMEM).
    Kernel: drivers/infiniband/core/umem.c, ib_umem_get().
    """
    for v, nm in ((addr, "addr"), (size, "size")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < _U64:
            raise DmaBufError(errno.EINVAL, f"{nm} {v!r} must be a 64-bit unsigned int")
    addr, size = int(addr), int(size)
    end = addr + size
    if end >= _U64 or ((end + _PAGE_MASK) & ~_PAGE_MASK) >= _U64:
        raise DmaBufError(errno.EINVAL, f"[{addr:#x} + {size:#x}) overflows the address space")
    if access & IbAccess.ON_DEMAND:
        raise DmaBufError(errno.EOPNOTSUPP, "ib_umem_get: ON_DEMAND memory is registered with "
                          "ib_umem_odp_get (not modelled)")
    start = addr & ~_PAGE_MASK
    stop = (end + _PAGE_MASK) & ~_PAGE_MASK
    if stop == start:
        raise DmaBufError(errno.EINVAL, "ib_umem_get: the range covers no page (length 0)")
    buf = UserMemory.of(ibdev.machine).lookup(start, stop - start)
    buf.pins += 1
    try:
        pages = slice_ranges(buf.pages, start - buf.va, stop - start)
        dma = ibdev.dma.map_ranges(pages, DmaDataDirection.BIDIRECTIONAL)
    except BaseException:
        buf.pins -= 1
        raise
    return IbUmem(ibdev, addr, size, access, buf, dma)


def ib_umem_release(umem: IbUmem) -> None:
    """Unmap and unpin — ``ib_umem_release()``; an unmapped buffer's pages are freed now.

    Raises: ContractViolation("ib_umem_release"): released twice.
    Kernel: drivers/infiniband/core/umem.c, ib_umem_release(), __ib_umem_release().
    """
    if umem.released:
        raise ContractViolation("ib_umem_release", f"{umem!r} released twice")
    umem.released = True
    umem.ibdev.dma.unmap_ranges(umem.dma, DmaDataDirection.BIDIRECTIONAL)
    buf = umem.buffer
    buf.pins -= 1
    if buf.pins == 0 and not buf.mapped:
        buf._free()
