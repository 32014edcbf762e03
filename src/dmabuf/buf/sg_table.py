"""Scatter-gather tables — lib/scatterlist.c, include/linux/scatterlist.h, as dma-buf uses them.

``struct sg_table`` is what ``map_dma_buf`` returns: a list of ``struct scatterlist`` entries, each
with a **CPU part** (``page_link``, ``offset``, ``length`` — which pages hold the bytes) and a
**DMA part** (``dma_address``, ``dma_length``, ``dma_flags`` — what the importing device must put
on the bus). ``orig_nents`` counts CPU entries, ``nents`` the DMA entries that ``dma_map_sg``
produced (an IOMMU may merge, so ``nents <= orig_nents``); the DMA part lives in the first
``nents`` entries. Importers must use only the DMA part (``for_each_sgtable_dma_sg``); dma-buf
has long fought importers that reach for ``sg_page()``.

:class:`SgTable` keeps the entries as **one numpy structured array** of :data:`SG_DTYPE`, laid
out like ``struct scatterlist`` with CONFIG_NEED_SG_DMA_LENGTH and CONFIG_NEED_SG_DMA_FLAGS —
32 bytes per entry — never a Python object per entry. ``page_link`` holds the page-aligned CPU
physical address of the entry's first page (the model's ``struct page *``).

Constructors and producers:

* :meth:`SgTable.from_pages` — ``sg_alloc_table_from_pages_segment()``: page-aligned physical
  extents are merged while contiguous and cut at ``max_segment`` (aligned down to ``PAGE_SIZE``;
  ``UINT_MAX`` gives ``0xfffff000``, the default of ``sg_alloc_table_from_pages``); ``offset``
  and ``size`` trim the first and last entry.
* :meth:`SgTable.dma_only` — a table **with no CPU list**, as ``dma_buf_phys_vec_to_sgt()``
  builds for MMIO (``orig_nents = 0``, every page NULL, DMA ranges cut into ``UINT_MAX``-byte
  entries by ``fill_sg_entry()``).
* :meth:`SgTable.wrap_dma_only` — the ``CONFIG_DMABUF_DEBUG`` wrapper of ``dma_buf_map_attachment``
  (``dma_buf_wrap_sg_table()``): a copy with ``nents`` entries whose page, offset and length are
  cleared and only the DMA part is kept; the original is remembered for the unmap.
* :meth:`SgTable.map` / :meth:`SgTable.unmap` — ``dma_map_sgtable()`` / ``dma_unmap_sgtable()``
  through a :class:`~dmabuf.buf.device.DmaDev`; :meth:`SgTable.map_phys_vec` — the DMA half of
  ``dma_buf_phys_vec_to_sgt()`` (``dma_map_phys(..., DMA_ATTR_MMIO)`` per range).

Any attempt to reach CPU pages of a DMA-only table (:meth:`SgTable.sg_page`,
:meth:`SgTable.cpu_ranges`, :meth:`SgTable.for_each_sg`) raises
:class:`~dmabuf.errors.ContractViolation` (rule ``"dma_buf_sg_page"``): in the kernel the importer
would dereference NULL. Using a table after :meth:`SgTable.free` is also a violation.

Memory: :attr:`SgTable.nbytes` is the model's footprint (the numpy array);
:meth:`SgTable.kernel_nbytes` is what the kernel allocates — 16 bytes of ``struct sg_table`` plus
32 per scatterlist entry, in chunks of ``SG_MAX_SINGLE_ALLOC`` (128) entries whose last slot is a
chain link when more follow (127 usable).

Locking: an SgTable is owned by one party at a time (exporter, then importer until unmap), like the
kernel's; it takes no locks.

Kernel: include/linux/scatterlist.h (struct scatterlist, struct sg_table, SG_MAX_SINGLE_ALLOC,
sg_dma_address/sg_dma_len, SG_DMA_BUS_ADDRESS), lib/scatterlist.c (sg_alloc_table,
sg_alloc_append_table_from_pages), kernel/dma/mapping.c (dma_map_sgtable),
drivers/dma-buf/dma-buf.c (dma_buf_wrap_sg_table), drivers/dma-buf/dma-buf-mapping.c
(fill_sg_entry, calc_sg_nents, dma_buf_phys_vec_to_sgt, dma_buf_free_sgt).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import numpy as np

from dmabuf.buf.device import DmaDataDirection, DmaDev, check_direction, dma_bus_address_mask
from dmabuf.buf.phys_vec import PhysVec
from dmabuf.errors import ContractViolation, DmaBufError
from dmabuf.mm.phys import PAGE_SIZE
from dmabuf.mm.ranges import RANGE_DTYPE, as_ranges, split_ranges

__all__ = [
    "SCATTERLIST_BYTES",
    "SG_CHUNK_USABLE",
    "SG_DMA_BUS_ADDRESS",
    "SG_DMA_SWIOTLB",
    "SG_DTYPE",
    "SG_MAX_SINGLE_ALLOC",
    "SG_TABLE_BYTES",
    "UINT_MAX",
    "SgTable",
]

#: ``UINT_MAX``: the largest ``sg->length`` / ``sg_dma_len`` (32-bit fields).
UINT_MAX = (1 << 32) - 1
#: One ``struct scatterlist`` with DMA length and DMA flags (spec p2p §2.7): 32 bytes.
SG_DTYPE = np.dtype([
    ("page_link", "<u8"),    # model: page-aligned CPU physical address of the first page (0: none)
    ("offset", "<u4"),
    ("length", "<u4"),
    ("dma_address", "<u8"),
    ("dma_length", "<u4"),
    ("dma_flags", "<u4"),
])
SCATTERLIST_BYTES = 32
#: ``sizeof(struct sg_table)``: ``sgl`` pointer + ``nents`` + ``orig_nents``.
SG_TABLE_BYTES = 16
#: ``SG_MAX_SINGLE_ALLOC``: scatterlist entries per 4 KiB chunk.
SG_MAX_SINGLE_ALLOC = PAGE_SIZE // SCATTERLIST_BYTES
#: Usable entries in a non-final chunk (the last one is the chain link).
SG_CHUNK_USABLE = SG_MAX_SINGLE_ALLOC - 1
#: ``SG_DMA_BUS_ADDRESS``: the DMA address is a PCI bus address (P2P ``BUS_ADDR``), not an IOVA.
SG_DMA_BUS_ADDRESS = 1 << 0
#: ``SG_DMA_SWIOTLB``: the entry was bounced through swiotlb.
SG_DMA_SWIOTLB = 1 << 1

_PAGE_MASK = np.uint64(PAGE_SIZE - 1)
assert SG_DTYPE.itemsize == SCATTERLIST_BYTES


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return int(value)


def _kernel_entries(n: int) -> int:
    """Scatterlist slots ``sg_alloc_table(n)`` allocates, counting chain links."""
    if n <= SG_MAX_SINGLE_ALLOC:
        return n
    # __sg_alloc_table: while more than SG_MAX_SINGLE_ALLOC entries are left, a chunk holds
    # SG_MAX_SINGLE_ALLOC - 1 entries and a chain link; the last chunk holds the rest (<= 128).
    full = -(-(n - SG_MAX_SINGLE_ALLOC) // SG_CHUNK_USABLE)
    return full * SG_MAX_SINGLE_ALLOC + (n - full * SG_CHUNK_USABLE)


class SgTable:
    """A scatter-gather table — ``struct sg_table`` with its ``struct scatterlist`` entries.

    Build one with :meth:`from_pages`, :meth:`dma_only` or :meth:`wrap_dma_only`; never
    directly. See the module docstring for the model.

    Attributes:
        orig_nents: CPU entries (0 for a DMA-only table).
        nents: DMA entries (``0`` until mapped for a table built from pages).

    Kernel: include/linux/scatterlist.h, struct sg_table.
    """

    __slots__ = ("_dma_only", "_freed", "_mapping", "_sg", "nents", "orig_nents", "original")

    def __init__(self, sg: np.ndarray, orig_nents: int, nents: int, *, dma_only: bool,
                 _token: object = None) -> None:
        if _token is not _TOKEN:
            raise TypeError("build an SgTable with SgTable.from_pages(), SgTable.dma_only() or "
                            "SgTable.wrap_dma_only()")
        self._sg = sg
        self.orig_nents = orig_nents
        self.nents = nents
        self._dma_only = dma_only
        self._freed = False
        #: (device, direction, dma ranges as returned by map_ranges) while DMA-mapped by us.
        self._mapping: tuple[DmaDev, DmaDataDirection, np.ndarray] | None = None
        #: For a CONFIG_DMABUF_DEBUG wrapper: the exporter's table it hides.
        self.original: SgTable | None = None

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pages(cls, pages: Any, *, offset: int = 0, size: int | None = None,
                   max_segment: int = UINT_MAX) -> SgTable:
        """Build the CPU list from physical pages — ``sg_alloc_table_from_pages_segment()``.

        Contiguous pages are merged into one entry up to ``max_segment`` bytes (aligned down to
        ``PAGE_SIZE``); a discontinuity or the limit starts a new entry. The DMA part is empty
        until :meth:`map`.

        Args:
            pages: page-aligned physical extents (``RANGE_DTYPE`` or a :class:`PhysVec`) in
                buffer order — the compressed form of the kernel's ``struct page **`` array.
            offset: byte offset into the first page where the buffer starts (``< PAGE_SIZE``).
            size: valid bytes after ``offset`` (default: everything).
            max_segment: maximum entry length; ``UINT_MAX`` for ``sg_alloc_table_from_pages``,
                ``dma_max_mapping_size()``/``dma_get_max_seg_size()`` for drivers that pass it.
        Context: pure; never blocks (the kernel allocates with the caller's gfp).
        Returns: a new SgTable with ``orig_nents == nents == entries`` (``sg_alloc_table`` sets
            both; ``nents`` becomes the DMA count after :meth:`map`).
        Raises:
            TypeError: wrong types.
            DmaBufError(EINVAL): no pages, unaligned pages, ``max_segment < PAGE_SIZE`` after
                alignment (the kernel WARNs), ``offset``/``size`` outside the pages.
            DmaBufError(EOVERFLOW): a range wraps past 2^64.
        Kernel: lib/scatterlist.c, sg_alloc_append_table_from_pages(),
            sg_alloc_table_from_pages_segment(); include/linux/scatterlist.h,
            sg_alloc_table_from_pages() (``max_segment = UINT_MAX``).
        """
        r = pages.ranges if isinstance(pages, PhysVec) else as_ranges(pages)
        offset = _check_int(offset, "offset")
        max_segment = _check_int(max_segment, "max_segment")
        max_segment = min(max_segment, UINT_MAX) & ~(PAGE_SIZE - 1)
        if max_segment < PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, "sg_alloc_table_from_pages_segment: max_segment "
                              f"rounds down to {max_segment} < PAGE_SIZE (WARN_ON in the kernel)")
        addr = np.ascontiguousarray(r["addr"])
        ln = np.ascontiguousarray(r["len"])
        if r.size and not bool(ln.all()):
            keep = ln != 0
            addr, ln = addr[keep], ln[keep]
        if addr.size == 0:
            raise DmaBufError(errno.EINVAL, "sg_alloc_table_from_pages: no pages (sg_alloc_table "
                              "of 0 entries fails)")
        if bool(np.bitwise_or.reduce((addr | ln) & _PAGE_MASK)):
            raise DmaBufError(errno.EINVAL, "sg_alloc_table_from_pages: pages must be page-aligned "
                              "extents (addr and len multiples of PAGE_SIZE); use offset/size to "
                              "describe a partial first/last page")
        total = int(ln.sum(dtype=np.uint64))
        if size is None:
            size = total - offset
        size = _check_int(size, "size")
        if not 0 <= offset < PAGE_SIZE or size <= 0 or offset + size > total:
            raise DmaBufError(errno.EINVAL, f"sg_alloc_table_from_pages: offset {offset} and size "
                              f"{size} must satisfy 0 <= offset < PAGE_SIZE, size > 0 and "
                              f"offset + size <= {total} (the pages given)")
        # Merge physically contiguous neighbours (vectorised), then cut at max_segment.
        if addr.size > 1:
            joins = addr[1:] == (addr[:-1] + ln[:-1])
            if bool(joins.any()):
                begin = np.empty(addr.size, dtype=bool)
                begin[0] = True
                np.logical_not(joins, out=begin[1:])
                idx = np.flatnonzero(begin)
                addr, ln = addr[idx], np.add.reduceat(ln, idx)
        if bool((ln > np.uint64(max_segment)).any()):
            tmp = np.empty(addr.size, dtype=RANGE_DTYPE)
            tmp["addr"] = addr
            tmp["len"] = ln
            tmp = split_ranges(tmp, max_segment)
            addr = np.ascontiguousarray(tmp["addr"])
            ln = np.ascontiguousarray(tmp["len"])
        end = offset + size
        if end != total:
            # Trim: drop whole chunks after the end, then the tail of the last one.
            ends = np.cumsum(ln, dtype=np.uint64)
            last = int(np.searchsorted(ends, np.uint64(end), side="left"))
            addr = addr[:last + 1]
            ln = ln[:last + 1].copy()
            ln[-1] -= np.uint64(int(ends[last]) - end)
        n = int(addr.size)
        sg = np.zeros(n, dtype=SG_DTYPE)
        sg["page_link"] = addr
        sg["length"] = ln
        sg["offset"][0] = offset
        sg["length"][0] -= offset
        return cls(sg, n, n, dma_only=False, _token=_TOKEN)

    @classmethod
    def from_ranges(cls, ranges: Any) -> SgTable:
        """One CPU entry per range, never merged — ``sg_alloc_table(n)`` + ``sg_set_page()``.

        What the system heap builds: one entry per compound page (1 MiB, 64 KiB, 4 KiB
        blocks). Each entry's page is the range's address rounded down to ``PAGE_SIZE`` and its
        offset the remainder.

        Args:
            ranges: physical ranges (``RANGE_DTYPE`` or :class:`PhysVec`), each non-empty and at
                most ``UINT_MAX`` bytes.
        Context: pure.
        Returns: a new, unmapped SgTable with ``orig_nents == len(ranges)``.
        Raises:
            DmaBufError(EINVAL): no ranges, an empty range, or a range longer than ``UINT_MAX``
                (``sg->length`` is 32 bits).
        Kernel: lib/scatterlist.c, sg_alloc_table(); include/linux/scatterlist.h, sg_set_page().
        """
        r = ranges.ranges if isinstance(ranges, PhysVec) else as_ranges(ranges)
        if r.size == 0:
            raise DmaBufError(errno.EINVAL, "sg_alloc_table: 0 entries")
        if bool(np.any(r["len"] == 0)) or bool(np.any(r["len"] > np.uint64(UINT_MAX))):
            raise DmaBufError(errno.EINVAL, "sg_set_page: every range must be 1..UINT_MAX bytes "
                              "(sg->length is 32 bits); split longer ranges")
        sg = np.zeros(r.size, dtype=SG_DTYPE)
        sg["page_link"] = r["addr"] & ~_PAGE_MASK
        sg["offset"] = r["addr"] & _PAGE_MASK
        sg["length"] = r["len"]
        return cls(sg, int(r.size), int(r.size), dma_only=False, _token=_TOKEN)

    @classmethod
    def dma_only(cls, dma: Any, *, bus_address: bool = False,
                 max_len: int = UINT_MAX) -> SgTable:
        """A table with only a DMA list — the shape ``dma_buf_phys_vec_to_sgt()`` returns.

        Every entry has a NULL page, offset 0 and length 0; ranges longer than ``max_len`` are
        cut into ``max_len``-byte entries (``fill_sg_entry()``: ``UINT_MAX``, so after the first
        4 GiB − 1 the entries are no longer page aligned, exactly as in the kernel).
        ``orig_nents`` is 0, the kernel's "DMA list only" mark.

        Args:
            dma: DMA ranges (``RANGE_DTYPE`` or :class:`PhysVec`), non-empty.
            bus_address: mark every entry ``SG_DMA_BUS_ADDRESS`` (P2P through a switch:
                ``pci_p2pdma_bus_addr_map``).
            max_len: entry limit (at most ``UINT_MAX``).
        Context: pure.
        Returns: a new DMA-only SgTable.
        Raises:
            DmaBufError(EINVAL): empty list, or ``max_len`` outside ``1..UINT_MAX``.
        Kernel: drivers/dma-buf/dma-buf-mapping.c, fill_sg_entry(), calc_sg_nents().
        """
        r = dma.ranges if isinstance(dma, PhysVec) else as_ranges(dma)
        max_len = _check_int(max_len, "max_len")
        if not 0 < max_len <= UINT_MAX:
            raise DmaBufError(errno.EINVAL, f"dma_only: max_len {max_len} must be in "
                              "1..UINT_MAX (sg_dma_len is 32 bits)")
        r = split_ranges(r, max_len)
        if r.size == 0:
            raise DmaBufError(errno.EINVAL, "dma_only: no DMA ranges (sg_alloc_table of 0 entries "
                              "fails)")
        sg = np.zeros(r.size, dtype=SG_DTYPE)
        sg["dma_address"] = r["addr"]
        sg["dma_length"] = r["len"]
        if bus_address:
            sg["dma_flags"] = SG_DMA_BUS_ADDRESS
        return cls(sg, 0, int(r.size), dma_only=True, _token=_TOKEN)

    @classmethod
    def map_phys_vec(cls, dev: DmaDev, phys: Any, direction: int) -> SgTable:
        """Map an MMIO ``phys_vec[]`` for ``dev`` and wrap it — ``dma_buf_phys_vec_to_sgt()``.

        The model's DMA half of the helper: ``dev.map_ranges(phys, dir, mmio=True)`` (the role
        of ``dma_map_phys(..., DMA_ATTR_MMIO)`` / ``dma_iova_link``), then a DMA-only table cut
        at ``UINT_MAX``. The provider / P2P map-type choice (BUS_ADDR vs THRU_HOST_BRIDGE, the
        IOVA state) belongs to the device implementing :class:`DmaDev` (layer 4). Undo with
        :meth:`unmap` (``dma_buf_free_sgt``).

        Args:
            dev: the importing device (``dma_buf_sgt_dma_device(attach)``).
            phys: the exporter's ``phys_vec`` (``RANGE_DTYPE`` or :class:`PhysVec`).
            direction: mapping direction.
        Context: the kernel requires the dma-buf's resv held (the caller's job); never blocks.
        Returns: a DMA-only SgTable, mapped (``orig_nents == 0``).
        Raises:
            DmaBufError(EREMOTEIO / EIO / EINVAL): from ``dev.map_ranges``.
            ContractViolation: bad direction.
        Kernel: drivers/dma-buf/dma-buf-mapping.c, dma_buf_phys_vec_to_sgt().
        """
        d = check_direction(direction)
        r = phys.ranges if isinstance(phys, PhysVec) else as_ranges(phys)
        dma = dev.map_ranges(r, d, mmio=True)
        try:
            t = cls.dma_only(dma)
        except BaseException:
            dev.unmap_ranges(dma, d)
            raise
        t._mapping = (dev, d, dma)
        return t

    def wrap_dma_only(self) -> SgTable:
        """The CONFIG_DMABUF_DEBUG copy handed to importers — ``dma_buf_wrap_sg_table()``.

        A new table of ``nents`` entries (``orig_nents == nents``, as ``sg_alloc_table`` sets)
        whose page links are NULL and offset/length 0, with the DMA address and length copied.
        :attr:`original` points back to this table (``dma_buf_unwrap_sg_table`` restores it
        before the exporter's ``unmap_dma_buf``).

        Raises:
            ContractViolation("dma_buf_wrap_sg_table"): the table is not DMA-mapped (nothing to
                copy) or freed.
        Kernel: drivers/dma-buf/dma-buf.c, dma_buf_wrap_sg_table() (CONFIG_DMABUF_DEBUG; later
            CONFIG_DEBUG).
        """
        self._check_live("wrap_dma_only")
        if not self.dma_mapped:
            raise ContractViolation("dma_buf_wrap_sg_table", "the exporter returned a table "
                                    "without DMA addresses; map_dma_buf must dma_map it")
        n = self.nents
        sg = np.zeros(n, dtype=SG_DTYPE)
        sg["dma_address"] = self._sg["dma_address"][:n]
        sg["dma_length"] = self._sg["dma_length"][:n]
        sg["dma_flags"] = self._sg["dma_flags"][:n]
        t = SgTable(sg, n, n, dma_only=True, _token=_TOKEN)
        t.original = self
        return t

    # ------------------------------------------------------------------ state

    def _check_live(self, what: str) -> None:
        if self._freed:
            raise ContractViolation("sg_free_table", f"SgTable.{what} after sg_free_table(): the "
                                    "table belongs to nobody any more (use after free)")

    @property
    def is_dma_only(self) -> bool:
        """True when the table has no CPU list (``sg_page`` is NULL everywhere)."""
        return self._dma_only

    @property
    def dma_mapped(self) -> bool:
        """True when the DMA part is valid (mapped by :meth:`map`, or built DMA-only)."""
        return self._dma_only or self._mapping is not None

    @property
    def mapping(self) -> tuple[DmaDev, DmaDataDirection] | None:
        """``(device, direction)`` of the live :meth:`map`, or None."""
        return None if self._mapping is None else (self._mapping[0], self._mapping[1])

    @property
    def freed(self) -> bool:
        """True after :meth:`free`."""
        return self._freed

    @property
    def entries(self) -> np.ndarray:
        """Read-only view of the raw scatterlist array (``SG_DTYPE``; tests and describe)."""
        v = self._sg.view()
        v.flags.writeable = False
        return v

    # ------------------------------------------------------------------ CPU side (exporter only)

    def sg_page(self, i: int) -> int:
        """CPU physical address of entry ``i``'s first page — ``sg_page()``.

        Raises:
            ContractViolation("dma_buf_sg_page"): a DMA-only table (the kernel would hand the
                importer a NULL page).
            IndexError: ``i`` outside ``0..orig_nents-1``.
        Kernel: include/linux/scatterlist.h, sg_page().
        """
        self._check_live("sg_page")
        self._check_cpu("sg_page")
        i = _check_int(i, "i")
        if not 0 <= i < self.orig_nents:
            raise IndexError(f"sg_page({i}): table has {self.orig_nents} CPU entries")
        return int(self._sg["page_link"][i])

    def _check_cpu(self, what: str) -> None:
        if self._dma_only:
            raise ContractViolation("dma_buf_sg_page", f"{what} on a DMA-only sg_table: importers "
                                    "must not touch the CPU list (struct page) of a dma-buf "
                                    "mapping; use the DMA addresses (for_each_dma)")

    def cpu_ranges(self) -> np.ndarray:
        """The CPU list as physical ranges ``(page + offset, length)`` — ``sg_phys()`` of all.

        Raises: ContractViolation("dma_buf_sg_page") for a DMA-only table.
        Kernel: include/linux/scatterlist.h, sg_phys(), for_each_sgtable_sg().
        """
        self._check_live("cpu_ranges")
        self._check_cpu("cpu_ranges")
        n = self.orig_nents
        out = np.empty(n, dtype=RANGE_DTYPE)
        out["addr"] = self._sg["page_link"][:n] + self._sg["offset"][:n]
        out["len"] = self._sg["length"][:n]
        return out

    def for_each_sg(self) -> Iterator[tuple[int, int, int]]:
        """Yield ``(page, offset, length)`` of each CPU entry — ``for_each_sgtable_sg()``.

        Raises: ContractViolation("dma_buf_sg_page") for a DMA-only table (at the first step).

        Kernel: include/linux/scatterlist.h, for_each_sgtable_sg().
        """
        self._check_live("for_each_sg")
        self._check_cpu("for_each_sg")
        n = self.orig_nents
        return zip(self._sg["page_link"][:n].tolist(), self._sg["offset"][:n].tolist(),
                   self._sg["length"][:n].tolist(), strict=True)

    # ------------------------------------------------------------------ DMA side (importers)

    def dma_ranges(self) -> np.ndarray:
        """The DMA list as a new ``RANGE_DTYPE`` array (``sg_dma_address``, ``sg_dma_len``).

        Raises:
            ContractViolation("dma_map_sgtable"): the table was never DMA-mapped (an importer
                would use zero addresses).
        Kernel: include/linux/scatterlist.h, for_each_sgtable_dma_sg(), sg_dma_address().
        """
        self._check_live("dma_ranges")
        if not self.dma_mapped:
            raise ContractViolation("dma_map_sgtable", "DMA addresses of an sg_table that was "
                                    "never dma-mapped; map it for the importing device first")
        n = self.nents
        out = np.empty(n, dtype=RANGE_DTYPE)
        out["addr"] = self._sg["dma_address"][:n]
        out["len"] = self._sg["dma_length"][:n]
        return out

    def for_each_dma(self) -> Iterator[tuple[int, int]]:
        """Yield ``(dma_address, dma_len)`` per DMA entry — ``for_each_sgtable_dma_sg()``.

        Raises: ContractViolation("dma_map_sgtable") when not mapped.

        Kernel: include/linux/scatterlist.h, for_each_sgtable_dma_sg().
        """
        r = self.dma_ranges()
        return zip(r["addr"].tolist(), r["len"].tolist(), strict=True)

    def dma_flags(self) -> np.ndarray:
        """``sg_dma_flags`` of the DMA entries (``SG_DMA_BUS_ADDRESS``…), uint32, a copy.

        Kernel: include/linux/scatterlist.h, sg_dma_is_bus_address() / sg->dma_flags.
        """
        self._check_live("dma_flags")
        return self._sg["dma_flags"][:self.nents].copy()

    @property
    def size(self) -> int:
        """Bytes described: Σ DMA lengths when mapped, else Σ CPU lengths."""
        if self.dma_mapped:
            return int(self._sg["dma_length"][:self.nents].sum(dtype=np.uint64))
        return int(self._sg["length"][:self.orig_nents].sum(dtype=np.uint64))

    @property
    def nbytes(self) -> int:
        """Model memory footprint: the scatterlist array (32 bytes per entry)."""
        return int(self._sg.nbytes)

    def kernel_nbytes(self) -> int:
        """Bytes the kernel allocates for this table: ``struct sg_table`` + scatterlist chunks
        (``SG_MAX_SINGLE_ALLOC`` entries each, chain links counted).

        Model-only: memory-footprint arithmetic for benchmarks (sg_alloc_table() chunk sizes).
        """
        return SG_TABLE_BYTES + SCATTERLIST_BYTES * _kernel_entries(int(self._sg.size))

    # ------------------------------------------------------------------ DMA mapping

    def map(self, dev: DmaDev, direction: int, *, mmio: bool = False) -> SgTable:
        """DMA-map the CPU list for ``dev`` — ``dma_map_sgtable(dev, sgt, dir, attrs)``.

        Fills ``dma_address``/``dma_length`` of the first ``nents`` entries from
        ``dev.map_ranges`` and sets ``nents``. DMA ranges longer than ``UINT_MAX`` are stored in
        several entries. Entries the device reports as PCI bus addresses
        (:func:`~dmabuf.buf.device.dma_bus_address_mask`, a P2P ``BUS_ADDR`` peer) get
        ``SG_DMA_BUS_ADDRESS`` in ``dma_flags``, as ``sg_dma_mark_bus_address()``. Model choice:
        if the device returns more ranges than ``orig_nents`` (the kernel's IOMMU code never
        does) the array grows rather than failing.

        Args:
            dev: the device to map for.
            direction: :class:`DmaDataDirection` (not NONE).
            mmio: ``DMA_ATTR_MMIO``.
        Context: never blocks.
        Returns: self (mapped).
        Raises:
            ContractViolation("dma_map_sgtable"): already mapped, or a DMA-only table.
            DmaBufError(EREMOTEIO / EIO / EINVAL): from the device; the table stays unmapped.
        Kernel: kernel/dma/mapping.c, dma_map_sgtable().
        """
        self._check_live("map")
        d = check_direction(direction)
        if self._dma_only:
            raise ContractViolation("dma_map_sgtable", "a DMA-only sg_table has no CPU list to "
                                    "map")
        if self._mapping is not None:
            raise ContractViolation("dma_map_sgtable", "sg_table is already DMA-mapped (for "
                                    f"{self._mapping[0].name}); unmap it first or use a copy per "
                                    "attachment (dup_sg_table)")
        dma = dev.map_ranges(self.cpu_ranges(), d, mmio=mmio)
        try:
            r = as_ranges(dma)
            bus = dma_bus_address_mask(dev, r)
        except BaseException:
            dev.unmap_ranges(dma, d)
            raise
        stored = split_ranges(r, UINT_MAX)
        n = int(stored.size)
        if n > self._sg.size:
            grown = np.zeros(n, dtype=SG_DTYPE)
            grown[:self._sg.size] = self._sg
            self._sg = grown
        self._sg["dma_address"][:n] = stored["addr"]
        self._sg["dma_length"][:n] = stored["len"]
        # one flag per stored piece (split_ranges drops empty ranges and cuts at UINT_MAX)
        keep = r["len"] != 0
        pieces = (r["len"][keep] + np.uint64(UINT_MAX - 1)) // np.uint64(UINT_MAX)
        self._sg["dma_flags"][:n] = np.repeat(
            np.where(bus[keep], SG_DMA_BUS_ADDRESS, 0).astype(np.uint32), pieces.astype(np.int64))
        self._sg["dma_address"][n:] = 0
        self._sg["dma_length"][n:] = 0
        self._sg["dma_flags"][n:] = 0
        self.nents = n
        self._mapping = (dev, d, dma)
        return self

    def map_or_free(self, dev: DmaDev, direction: int, *, mmio: bool = False) -> SgTable:
        """:meth:`map`, freeing the table if that fails — an exporter's ``get_sg_table`` +
        ``dma_map_sgtable`` (``sg_free_table`` + ``kfree`` on the error path).

        Args / Context: as :meth:`map`.
        Returns: self (mapped).
        Raises: what :meth:`map` raises; the table is freed then.
        Kernel: drivers/gpu/drm/drm_prime.c, drm_gem_map_dma_buf(); drivers/dma-buf/udmabuf.c,
            get_sg_table().
        """
        try:
            return self.map(dev, direction, mmio=mmio)
        except BaseException:
            self.free()
            raise

    def unmap_and_free(self, dev: DmaDev | None = None, direction: int | None = None) -> None:
        """:meth:`unmap` then :meth:`free` — an exporter's ``unmap_dma_buf`` of a table it built.

        Args / Raises: as :meth:`unmap` (the table is not freed if the unmap is refused).
        Kernel: drivers/gpu/drm/drm_prime.c, drm_gem_unmap_dma_buf(); drivers/dma-buf/udmabuf.c,
            put_sg_table().
        """
        self.unmap(dev, direction)
        self.free()

    def unmap(self, dev: DmaDev | None = None, direction: int | None = None) -> None:
        """Undo :meth:`map`/:meth:`map_phys_vec` — ``dma_unmap_sgtable()``, ``dma_buf_free_sgt()``.

        Args:
            dev, direction: optional; when given they must be the ones mapped with (the kernel
                passes them again; dma-debug checks them).
        Raises:
            ContractViolation("dma_unmap_sgtable"): not mapped by this table, or a different
                device/direction.
        Kernel: kernel/dma/mapping.c, dma_unmap_sgtable();
            drivers/dma-buf/dma-buf-mapping.c, dma_buf_free_sgt().
        """
        self._check_live("unmap")
        if self._mapping is None:
            raise ContractViolation("dma_unmap_sgtable", "sg_table is not DMA-mapped (unmapped "
                                    "twice, or never mapped through this table)")
        mdev, md, dma = self._mapping
        if dev is not None and dev is not mdev:
            raise ContractViolation("dma_unmap_sgtable", f"unmap for {dev.name}, but mapped for "
                                    f"{mdev.name}")
        if direction is not None and check_direction(direction) != md:
            raise ContractViolation("dma_unmap_sgtable", f"unmap with direction "
                                    f"{DmaDataDirection(int(direction)).name}, mapped with "
                                    f"{md.name}")
        mdev.unmap_ranges(dma, md)
        self._mapping = None
        if not self._dma_only:
            self._sg["dma_address"] = 0
            self._sg["dma_length"] = 0
            self._sg["dma_flags"] = 0
            self.nents = self.orig_nents

    def free(self) -> None:
        """Release the table — ``sg_free_table()``; later use is a ContractViolation.

        Raises:
            ContractViolation("sg_free_table"): freed twice, or still DMA-mapped through
                :meth:`map` (the mapping would leak: dma-debug reports it).

        Kernel: lib/scatterlist.c, sg_free_table().
        """
        self._check_live("free")
        if self._mapping is not None:
            raise ContractViolation("sg_free_table", f"freeing an sg_table still DMA-mapped for "
                                    f"{self._mapping[0].name}; unmap it first")
        self._freed = True

    def dup(self) -> SgTable:
        """An unmapped copy of the CPU list — the heaps' ``dup_sg_table()`` per attachment.

        Raises: ContractViolation("dma_buf_sg_page") for a DMA-only table.
        Kernel: drivers/dma-buf/heaps/system_heap.c, dup_sg_table().
        """
        self._check_live("dup")
        self._check_cpu("dup")
        sg = np.zeros(self.orig_nents, dtype=SG_DTYPE)
        for f in ("page_link", "offset", "length"):
            sg[f] = self._sg[f][:self.orig_nents]
        return SgTable(sg, self.orig_nents, self.orig_nents, dma_only=False, _token=_TOKEN)

    # ------------------------------------------------------------------ describe

    def describe(self) -> dict[str, Any]:
        """Snapshot: entry counts, sizes, footprints, DMA-only and mapping state.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {
            "orig_nents": self.orig_nents,
            "nents": self.nents,
            "dma_only": self._dma_only,
            "dma_mapped": self.dma_mapped,
            "mapped_for": self._mapping[0].name if self._mapping else None,
            "size": self.size if not self._freed else 0,
            "nbytes": self.nbytes,
            "kernel_nbytes": self.kernel_nbytes(),
            "freed": self._freed,
        }

    def __repr__(self) -> str:
        kind = "dma-only" if self._dma_only else "pages"
        state = "freed" if self._freed else ("mapped" if self.dma_mapped else "unmapped")
        return f"<SgTable {kind} orig_nents={self.orig_nents} nents={self.nents} {state}>"


_TOKEN = object()
