"""Physical address lists — ``struct phys_vec[]`` of drivers/dma-buf/dma-buf-mapping.c (the "phyr").

MMIO exporters (vfio-pci, nvgrace-gpu) describe their memory not with ``struct page`` but with an
array of ``struct phys_vec {phys_addr_t paddr; size_t len;}`` — 16 bytes per range — which the
dma-buf helper ``dma_buf_phys_vec_to_sgt()`` maps for an importer, and which the proposed
"Physical Address List" mapping type (Jason Gunthorpe's RFC, ``struct dma_buf_phys_list``) hands
to iommufd directly. The threads call this idea a *phyr* (physical range): a list of ranges with
no per-page metadata, the replacement for ``struct scatterlist`` Matthew Wilcox and Jason have
argued for since 2022.

:class:`PhysVec` is that list as one numpy structured array of
:data:`~dmabuf.mm.ranges.RANGE_DTYPE` (``addr``, ``len`` as ``<u8``): exactly 16 bytes per range,
never a Python object per range. It is immutable (operations return new lists) and offers the
operations the model's exporters, importers and DMA engines need — coalescing, slicing by byte
offset and length, splitting at a segment limit, iteration in ranges or in chunks of ranges, the
total length and its memory footprint.

The same type carries DMA addresses (a mapped phys_vec is a ``dma_vec``) — the dtype does not say
which address space a list lives in; the code that produced it does.

Kernel: include/linux/types.h (struct phys_vec, formerly struct dma_buf_phys_vec in
include/linux/dma-buf.h), drivers/dma-buf/dma-buf-mapping.c, drivers/vfio/pci/vfio_pci_dmabuf.c
(vfio_pci_dma_buf_fill_phys_vec), RFC include/linux/dma-buf-mapping.h (struct dma_buf_phys_list).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.mm.ranges import (
    RANGE_DTYPE,
    as_ranges,
    coalesce,
    empty_ranges,
    make_ranges,
    range_starts,
    ranges_aligned,
    slice_ranges,
    split_ranges,
)

__all__ = ["PHYS_LIST_HEADER_BYTES", "PHYS_VEC_BYTES", "PhysVec", "PhysView"]

#: ``sizeof(struct phys_vec)``: ``phys_addr_t paddr`` + ``size_t len``.
PHYS_VEC_BYTES = 16
#: ``sizeof(struct dma_buf_phys_list)`` header (``size_t length``) before the flexible array.
PHYS_LIST_HEADER_BYTES = 8
_U64_MAX = (1 << 64) - 1


class PhysVec:
    """An immutable list of ``(addr, len)`` ranges — ``struct phys_vec[]``, 16 bytes per range.

    Args:
        ranges: a ``RANGE_DTYPE`` array (used without copying when it is already contiguous;
            the PhysVec marks its own array read-only), an iterable of ``(addr, len)`` pairs, or
            None for an empty list.

    Raises:
        TypeError: not a range list.
        DmaBufError(EINVAL): negative values.  DmaBufError(EOVERFLOW): a range wraps past 2^64
            (the check ``vfio_pci_dma_buf_fill_phys_vec`` makes with ``check_add_overflow``).

    Kernel: include/linux/types.h, struct phys_vec.
    """

    __slots__ = ("_r",)
    _r: np.ndarray

    def __init__(self, ranges: Any = None) -> None:
        if ranges is None:
            r = empty_ranges()
        elif isinstance(ranges, PhysVec):
            r = ranges._r
        else:
            r = as_ranges(ranges)
            if r.flags.writeable:
                r = r.copy()  # never freeze (or alias) the caller's array
        r = np.ascontiguousarray(r, dtype=RANGE_DTYPE)
        r.flags.writeable = False
        self._r = r

    @classmethod
    def _own(cls, r: np.ndarray) -> PhysVec:
        """Wrap a freshly built array nobody else holds (no copy)."""
        pv = cls.__new__(cls)
        r = np.ascontiguousarray(r, dtype=RANGE_DTYPE)
        r.flags.writeable = False
        pv._r = r
        return pv

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_addrs(cls, addrs: Any, lens: Any) -> PhysVec:
        """Build a list from parallel address and length sequences (a scalar length broadcasts).

        Raises: see :func:`dmabuf.mm.ranges.make_ranges`.
        Kernel: drivers/vfio/pci/vfio_pci_dmabuf.c, vfio_pci_dma_buf_fill_phys_vec().
        """
        return cls._own(make_ranges(addrs, lens))

    @classmethod
    def contiguous(cls, addr: int, length: int) -> PhysVec:
        """A one-range list ``[(addr, length)]`` (a whole BAR, a CMA block).

        Model-only: constructor of the model's phys_vec array.
        """
        return cls._own(make_ranges([addr], [length]))

    # ------------------------------------------------------------------ views

    @property
    def ranges(self) -> np.ndarray:
        """The read-only ``RANGE_DTYPE`` array itself (no copy)."""
        return self._r

    @property
    def addrs(self) -> np.ndarray:
        """Read-only ``uint64`` view of the addresses."""
        return self._r["addr"]

    @property
    def lens(self) -> np.ndarray:
        """Read-only ``uint64`` view of the lengths."""
        return self._r["len"]

    @property
    def nr_ranges(self) -> int:
        """Number of ranges — ``nr_ranges`` of the kernel helpers."""
        return int(self._r.size)

    def __len__(self) -> int:
        return int(self._r.size)

    @property
    def total_len(self) -> int:
        """Bytes described (Σ len) — the ``size`` argument of ``dma_buf_phys_vec_to_sgt``."""
        if self._r.size == 0:
            return 0
        return int(self._r["len"].sum(dtype=np.uint64))

    size = total_len

    @property
    def nbytes(self) -> int:
        """Memory footprint of the list: 16 bytes per range (the numpy array, as the kernel's)."""
        return int(self._r.nbytes)

    def kernel_nbytes(self, *, phys_list: bool = False) -> int:
        """Bytes the kernel spends on this list: ``16 * n``, plus the 8-byte
        ``struct dma_buf_phys_list`` header when ``phys_list`` (the RFC's PAL type).

        Model-only: memory-footprint arithmetic for benchmarks.
        """
        return PHYS_VEC_BYTES * self.nr_ranges + (PHYS_LIST_HEADER_BYTES if phys_list else 0)

    def starts(self) -> np.ndarray:
        """Byte offset of each range inside the buffer the list describes (uint64).

        Model-only: prefix sum over the model's phys_vec array.
        """
        return range_starts(self._r)

    def aligned(self, align: int = PAGE_SIZE) -> bool:
        """True when every address and length is a multiple of ``align`` (vfio requires
        PAGE_SIZE alignment of what it exports).

        Model-only: alignment check on the model's phys_vec array (vfio checks it inline).
        """
        return ranges_aligned(self._r, align)

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Yield ``(addr, len)`` as Python ints, range by range (cold paths and tests only)."""
        return zip(self._r["addr"].tolist(), self._r["len"].tolist(), strict=True)

    def iter_chunks(self, max_ranges: int = 4096) -> Iterator[np.ndarray]:
        """Yield read-only sub-arrays of at most ``max_ranges`` ranges (batched hot-path walk).

        Raises: DmaBufError(EINVAL): ``max_ranges <= 0``.

        Model-only: batched walk for numpy hot paths.
        """
        if isinstance(max_ranges, bool) or not isinstance(max_ranges, int) or max_ranges <= 0:
            raise DmaBufError(errno.EINVAL, "iter_chunks: max_ranges must be a positive int")
        for i in range(0, self._r.size, max_ranges):
            yield self._r[i:i + max_ranges]

    def __getitem__(self, key: int | slice) -> Any:
        """``pv[i]`` is ``(addr, len)``; ``pv[a:b]`` is a PhysVec of those ranges."""
        if isinstance(key, slice):
            return PhysVec._own(self._r[key])
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError("PhysVec indices must be integers or slices")
        e = self._r[int(key)]
        return (int(e["addr"]), int(e["len"]))

    # ------------------------------------------------------------------ transformations

    def coalesce(self, *, max_len: int | None = None) -> PhysVec:
        """Merge physically adjacent neighbours, drop empty ranges (order kept).

        Args:
            max_len: cap on a merged range (a segment limit); longer input ranges stay as they
                are — use :meth:`split` to enforce a limit.
        Returns: a new PhysVec.
        Kernel: lib/scatterlist.c segment merging (same rule).
        """
        return PhysVec._own(coalesce(self._r, max_len=max_len))

    def slice(self, offset: int, length: int) -> PhysVec:
        """The sub-list describing bytes ``[offset, offset + length)`` of the buffer.

        Raises:
            DmaBufError(EINVAL): negative values, or beyond :attr:`total_len`.
        Kernel: the offset walk of iommufd's ``iopt_map_dmabuf`` / rdma's umem over a list.
        """
        return PhysVec._own(slice_ranges(self._r, offset, length))

    def split(self, max_len: int) -> PhysVec:
        """Split every range into pieces of at most ``max_len`` bytes.

        Raises: DmaBufError(EINVAL): ``max_len <= 0``.
        Kernel: drivers/dma-buf/dma-buf-mapping.c, fill_sg_entry() (UINT_MAX pieces).
        """
        return PhysVec._own(split_ranges(self._r, max_len))

    def offset_by(self, delta: int) -> PhysVec:
        """Every address shifted by ``delta`` (e.g. CPU physical → PCI bus address).

        Raises: DmaBufError(EOVERFLOW / EINVAL): a shifted range leaves 0..2^64.

        Model-only: arithmetic on the model's phys_vec array (e.g. the CPU-to-bus offset of
        pci_p2pdma_bus_addr_map()).
        """
        if isinstance(delta, bool) or not isinstance(delta, (int, np.integer)):
            raise TypeError("offset_by: delta must be an int")
        delta = int(delta)
        r = self._r
        if r.size == 0 or delta == 0:
            return self
        a = r["addr"]
        if delta > 0:
            if delta > _U64_MAX or bool(np.any(a + r["len"] > np.uint64(_U64_MAX - delta))):
                raise DmaBufError(errno.EOVERFLOW, f"offset_by({delta:#x}): a range would "
                                  "wrap past 2^64")
            na = a + np.uint64(delta)
        else:
            if -delta > int(a.min()):
                raise DmaBufError(errno.EINVAL, f"offset_by({delta:#x}): an address would "
                                  "become negative")
            na = a - np.uint64(-delta)
        out = np.empty(r.size, dtype=RANGE_DTYPE)
        out["addr"] = na
        out["len"] = r["len"]
        return PhysVec._own(out)

    # ------------------------------------------------------------------ comparison, describe

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PhysVec):
            return NotImplemented
        return bool(np.array_equal(self._r, other._r))

    def __hash__(self) -> int:
        return hash(self._r.tobytes())

    def __repr__(self) -> str:
        head = ", ".join(f"({a:#x}, {n:#x})" for a, n in zip(
            self._r["addr"][:3].tolist(), self._r["len"][:3].tolist(), strict=True))
        more = f", … {self.nr_ranges - 3} more" if self.nr_ranges > 3 else ""
        return f"PhysVec([{head}{more}], total={self.total_len:#x})"

    def describe(self) -> dict[str, Any]:
        """Snapshot: number of ranges, total bytes, footprint, first and last range.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {
            "nr_ranges": self.nr_ranges,
            "total_len": self.total_len,
            "nbytes": self.nbytes,
            "first": self[0] if self.nr_ranges else None,
            "last": self[self.nr_ranges - 1] if self.nr_ranges else None,
        }


class PhysView:
    """A CPU view of the bytes a range list describes — the model's ``vmap()`` / user mapping.

    The kernel makes scattered pages look contiguous with page tables (``vmap``,
    ``remap_pfn_range``); numpy cannot alias scattered memory, so a PhysView offers byte-level
    access (``read``/``write``/``fill``, slicing) that gathers and scatters through
    :class:`~dmabuf.mm.phys.PhysMemory` — one ``np.copyto`` per contiguous piece — and, when the
    ranges are one contiguous piece of one region, a true zero-copy numpy view (:attr:`array`).
    Accesses go to the pages the view was made with, so writes through it are visible to DMA
    and to every other mapping of the same pages (zero copy).

    After :meth:`close` (``vunmap``/``munmap``) any access is a ContractViolation
    (``"vunmap"``): the kernel would fault on the stale virtual address.

    Args:
        phys: the physical memory.
        ranges: the pages, in view order (``RANGE_DTYPE`` or :class:`PhysVec`).
        writable: False for a read-only mapping (writes raise ``DmaBufError(EFAULT)``).

    Kernel: mm/vmalloc.c (vmap, vm_map_ram), mm/memory.c (remap_pfn_range),
    include/linux/iosys-map.h.
    """

    def __init__(self, phys: Any, ranges: Any, *, writable: bool = True) -> None:
        self.phys = phys
        r = ranges.ranges if isinstance(ranges, PhysVec) else as_ranges(ranges)
        self._r = coalesce(r)
        self._len = int(self._r["len"].sum(dtype=np.uint64)) if self._r.size else 0
        self.writable = writable
        self.closed = False

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"<PhysView {self._len:#x} bytes in {self._r.size} piece(s)"
                f"{' closed' if self.closed else ''}>")

    @property
    def ranges(self) -> np.ndarray:
        """The physical ranges behind the view (a copy)."""
        return self._r.copy()

    @property
    def array(self) -> np.ndarray | None:
        """A zero-copy ``uint8`` numpy view when the view is one contiguous piece, else None."""
        self._check(0, 0)
        if self._r.size != 1:
            return None
        v: np.ndarray = self.phys.view(int(self._r["addr"][0]), self._len)
        if not self.writable:
            v = v.view()
            v.flags.writeable = False
        return v

    def _check(self, offset: int, length: int) -> None:
        if self.closed:
            raise ContractViolation("vunmap", "access through a closed mapping (after vunmap/"
                                    "munmap): the virtual address is gone")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or isinstance(
                length, bool) or not isinstance(length, (int, np.integer)):
            raise TypeError("offset and length must be ints")
        if offset < 0 or length < 0 or offset + length > self._len:
            raise DmaBufError(errno.EFAULT, f"access [{offset:#x}, {offset + length:#x}) outside "
                              f"the {self._len:#x}-byte mapping (SIGSEGV/SIGBUS)")

    def read(self, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Copy ``length`` bytes from ``offset`` out of the mapping (a new ``uint8`` array).

        Model-only: load through the model's mapping object.
        """
        if length is None:
            length = self._len - offset
        self._check(offset, length)
        if length == 0:
            return np.zeros(0, dtype=np.uint8)
        return self.phys.read(slice_ranges(self._r, offset, length))

    def write(self, offset: int, data: Any) -> None:
        """Store ``data`` at ``offset`` through the mapping.

        Raises: DmaBufError(EFAULT): read-only mapping or out of bounds.

        Model-only: store through the model's mapping object.
        """
        src = data if isinstance(data, np.ndarray) else np.frombuffer(
            memoryview(data).cast("B"), dtype=np.uint8)
        src = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        self._check(offset, int(src.size))
        if not self.writable:
            raise DmaBufError(errno.EFAULT, "store through a read-only mapping (SIGSEGV)")
        if src.size:
            self.phys.write(slice_ranges(self._r, offset, int(src.size)), src)

    def fill(self, byte: int, offset: int = 0, length: int | None = None) -> None:
        """memset ``length`` bytes from ``offset`` to ``byte``.

        Raises: DmaBufError(EFAULT) through a read-only mapping (the kernel's SIGSEGV).
        Model-only: memset through the model's mapping object.
        """
        if length is None:
            length = self._len - offset
        self._check(offset, length)
        if not self.writable:
            raise DmaBufError(errno.EFAULT, "store through a read-only mapping (SIGSEGV)")
        if length:
            self.phys.fill(slice_ranges(self._r, offset, length), byte)

    def tobytes(self) -> bytes:
        """The whole mapping as bytes.

        Model-only: load of the whole model mapping object.
        """
        return self.read().tobytes()

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(self._len)
            if step != 1:
                raise ValueError("PhysView slices must be contiguous (step 1)")
            return self.read(start, max(0, stop - start))
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError("PhysView indices must be ints or slices")
        i = int(key) + (self._len if key < 0 else 0)
        return int(self.read(i, 1)[0])

    def __setitem__(self, key: slice, data: Any) -> None:
        if not isinstance(key, slice):
            raise TypeError("assign to a slice of a PhysView: view[a:b] = data")
        start, stop, step = key.indices(self._len)
        if step != 1:
            raise ValueError("PhysView slices must be contiguous (step 1)")
        if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
            self.fill(int(data), start, max(0, stop - start))
            return
        src = data if isinstance(data, np.ndarray) else np.frombuffer(
            memoryview(data).cast("B"), dtype=np.uint8)
        if src.nbytes != max(0, stop - start):
            raise ValueError(f"cannot assign {src.nbytes} bytes to a {stop - start}-byte slice")
        self.write(start, src)

    def close(self) -> None:
        """Unmap (``vunmap``/``munmap``); idempotent.

        Kernel: mm/vmalloc.c, vunmap() (or munmap(2) for a user view).
        """
        self.closed = True
