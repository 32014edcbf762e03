"""Physical memory — the model's ``memblock`` / ``struct page`` / page allocator, with real bytes.

The machine's physical address space is a set of non-overlapping :class:`PhysRegion` s: system RAM,
device memory (a GPU's VRAM, an accelerator's HBM: ``ZONE_DEVICE``-capable) and MMIO apertures
(a PCI BAR). Each region is backed by an anonymous, private, ``MAP_NORESERVE`` mmap viewed as a
numpy ``uint8`` array, so an 80 GiB VRAM costs nothing until its pages are touched, and every
simulated DMA really moves bytes.

Per page the model keeps one ``int32`` **owner** (the role of ``struct page`` flags + refcount +
``page->mapping`` for our purposes): ``0`` — free, never used; ``-1`` (:data:`OWNER_POISON`) —
freed and poisoned; ``> 0`` — allocated to the owner id handed out by :meth:`PhysMemory.new_owner`
(a buffer object, a migration target...). Freeing a page poisons it like ``SLAB_POISON`` /
``page_poisoning`` do: the owner becomes ``-1`` and every byte ``0x6b`` (``POISON_FREE``), so a DMA
through a stale mapping reads recognisable garbage, and :meth:`PhysMemory.check_owned` — which the
DMA engines call with ``expect_owner`` — turns it into an :class:`~dmabuf.errors.IommuFault`
naming who owns the page now.

**Backing and aliases.** A region normally gets its own anonymous mapping; ``add_region(...,
backing=fd_or_buffer)`` backs it with a given shared mapping instead (a host ``memfd``, so that
user-space mappings alias model pages). :meth:`PhysMemory.add_alias` creates a second physical
address window onto part of an existing region — same bytes, same owner table — the way a GPU's
VRAM BAR decodes to the first ``visible_vram_size`` bytes of VRAM. The aliased window is
*reserved* in the target's allocator (``memblock_reserve``-like): pages there are allocated and
freed through the alias only, so the two windows never hand out the same page twice.

Allocation is page-granular first-fit over a sorted list of free extents (numpy arrays of page
index + length per region), with realistic fragmentation: non-contiguous requests take the first
free extents in address order (or in a seeded random order) and may return several extents;
``contiguous=True`` needs one extent (``CMA`` / ``alloc_contig_range``) or fails with ``-ENOMEM``.

Contract / locking: allocator state (free extents, owners) is protected by one internal lock held
only for the duration of a call — the zone lock; it never blocks on anything else and is never
held across a scheduling point. Byte accessors (``view/read/write/copy/fill/checksum``) take no
lock, like a DMA engine: concurrent writers race exactly as hardware would.

Data movement is vectorised: a copy between two range lists of different shapes iterates over
the merged cut points, one ``np.copyto`` per contiguous piece, never per page. Neighbouring ranges
are merged into one piece only inside one region: two regions may be physically adjacent, but
their backings are separate arrays. Ownership checks are vectorised too (one ``reduceat`` or one
gather per region, never a Python loop per span of moderate size).

Kernel: mm/page_alloc.c (__alloc_pages, free_pages), mm/memblock.c, include/linux/poison.h
(POISON_FREE 0x6b), mm/page_poison.c, include/linux/mm_types.h (struct page), mm/cma.c.
"""

from __future__ import annotations

import bisect
import enum
import errno
import mmap
import os
import sys
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm.ranges import RANGE_DTYPE, as_ranges, coalesce, split_ranges

__all__ = [
    "OWNER_FREE",
    "OWNER_POISON",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "POISON_FREE",
    "MemKind",
    "PhysMemory",
    "PhysRegion",
    "as_bytes_array",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
#: Byte written over freed memory (include/linux/poison.h, POISON_FREE).
POISON_FREE = 0x6B
#: Owner value of a page that was never allocated.
OWNER_FREE = 0
#: Owner value of a freed (poisoned) page, until it is reallocated.
OWNER_POISON = -1

_GIB = 1 << 30
#: Lowest base chosen automatically: physical address 0 is never valid memory in the model, so a
#: forgotten or zeroed address faults instead of silently hitting the first region.
_AUTO_BASE_MIN = _GIB
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
#: Above this many pages in one call, owner updates loop over slices instead of expanding indices.
_EXPAND_LIMIT = 1 << 22


class MemKind(enum.Enum):
    """What a physical region is — decides how the DMA API may reach it.

    * ``RAM`` — system memory (``memblock`` / ``ZONE_NORMAL``); mapped with ``dma_map_phys``.
    * ``DEVICE`` — device-local memory (VRAM, HBM); can be exposed through a BAR, or to the CPU as
      ``MEMORY_DEVICE_PRIVATE`` pages for HMM migration.
    * ``MMIO`` — a PCI BAR aperture; DMA to it is P2P and needs ``DMA_ATTR_MMIO``.

    Kernel: include/linux/memremap.h (enum memory_type), include/linux/ioport.h (IORESOURCE_MEM).
    """

    RAM = "ram"
    DEVICE = "device"
    MMIO = "mmio"


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
    return int(value)


class PhysRegion:
    """One contiguous range of CPU physical addresses with real, sparse backing memory.

    Attributes:
        name: unique name (``"ram0"``, ``"gpu0.vram"``, ``"0000:03:00.0 BAR0"``).
        kind: :class:`MemKind`.
        base: CPU physical address of the first byte (page aligned).
        size: bytes (a multiple of ``PAGE_SIZE``).
        numa_node: NUMA node (``-1`` = ``NUMA_NO_NODE``).
        backing: writable ``uint8`` array of ``size`` bytes over an anonymous private mmap, a
            mapping given to ``add_region(backing=...)``, or (alias) a window of another region's.
        owner: ``int32`` per page (``0`` free, ``-1`` poisoned, ``> 0`` an owner id); an alias
            shares its target's table (a view).
        alias_of: the region this one aliases (:meth:`PhysMemory.add_alias`), else ``None``.
        alias_offset: byte offset of the alias window in ``alias_of`` (0 when not an alias).

    Regions are created by :meth:`PhysMemory.add_region` / :meth:`PhysMemory.add_alias`, never
    directly by users. Never reassign ``backing`` or ``owner``: use an alias or a given backing.

    Kernel: include/linux/ioport.h (struct resource), include/linux/mmzone.h (struct zone).
    """

    def __init__(self, name: str, kind: MemKind, base: int, size: int, numa_node: int,
                 hugepages: bool = True, *, mapping: Any = None,
                 alias_of: PhysRegion | None = None, alias_offset: int = 0) -> None:
        self.name = name
        self.kind = kind
        self.base = base
        self.size = size
        self.numa_node = numa_node
        self.alias_of = alias_of
        self.alias_offset = alias_offset if alias_of is not None else 0
        #: Alias windows reserved in this region's allocator: (first page, pages, alias).
        self._alias_windows: list[tuple[int, int, PhysRegion]] = []
        if alias_of is not None:
            self._mmap: Any = alias_of._mmap
            self.backing: np.ndarray = alias_of.backing[alias_offset:alias_offset + size]
            self.owner: np.ndarray = alias_of.owner[alias_offset >> PAGE_SHIFT:
                                                    (alias_offset + size) >> PAGE_SHIFT]
        else:
            if mapping is None:
                mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                                    | _MAP_NORESERVE)
                if hugepages and hasattr(mmap, "MADV_HUGEPAGE"):
                    # Transparent huge pages where the host allows them: copies run at np.copyto
                    # speed (fewer TLB misses). Still sparse: untouched 2 MiB blocks cost nothing.
                    try:
                        mapping.madvise(mmap.MADV_HUGEPAGE)
                    except OSError:
                        pass
                self.backing = np.frombuffer(mapping, dtype=np.uint8)
            else:
                self.backing = np.frombuffer(mapping, dtype=np.uint8, count=size)
            self._mmap = mapping
            # np.zeros uses calloc: pages of the owner table are not touched until written either.
            self.owner = np.zeros(size >> PAGE_SHIFT, dtype=np.int32)
        # Free extents in page units, sorted by start, never adjacent (always merged).
        self._free_start = np.zeros(1, dtype=np.int64)
        self._free_len = np.full(1, size >> PAGE_SHIFT, dtype=np.int64)

    @property
    def npages(self) -> int:
        """Number of 4 KiB pages in the region."""
        return self.size >> PAGE_SHIFT

    @property
    def end(self) -> int:
        """First physical address after the region."""
        return self.base + self.size

    @property
    def free_pages(self) -> int:
        """Pages currently free (never used or poisoned)."""
        return int(self._free_len.sum())

    @property
    def largest_free_extent(self) -> int:
        """Pages in the largest free extent (what ``contiguous=True`` can still get)."""
        return int(self._free_len.max()) if self._free_len.size else 0

    @property
    def free_extents(self) -> int:
        """Number of free extents: 1 when unfragmented."""
        return int(self._free_len.size)

    def contains(self, paddr: int, length: int = 1) -> bool:
        """True when ``[paddr, paddr + length)`` lies entirely inside the region.

        Model-only: bounds test on the model's region.
        """
        paddr = _check_int(paddr, "paddr")
        length = _check_int(length, "length")
        if length < 0:
            return False
        return self.base <= paddr and paddr + length <= self.end

    def describe(self) -> dict[str, Any]:
        """Snapshot for ``dmabuf`` introspection (the ``/proc/iomem`` + buddyinfo view).

        An alias also reports ``alias_of`` (target name) and ``alias_offset``.

        Model-only: introspection snapshot (the /proc/iomem + buddyinfo view).
        """
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "base": self.base,
            "size": self.size,
            "numa_node": self.numa_node,
            "npages": self.npages,
            "free_pages": self.free_pages,
            "free_extents": self.free_extents,
            "largest_free_extent_pages": self.largest_free_extent,
        }
        if self.alias_of is not None:
            d["alias_of"] = self.alias_of.name
            d["alias_offset"] = self.alias_offset
        return d

    def __repr__(self) -> str:
        alias = (f", alias of {self.alias_of.name!r}+{self.alias_offset:#x}"
                 if self.alias_of is not None else "")
        return (f"PhysRegion({self.name!r}, {self.kind.name}, base={self.base:#x}, "
                f"size={self.size:#x}, node={self.numa_node}{alias})")


@dataclass(frozen=True)
class _Located:
    """Ranges resolved to (region index, offset in region) — vectorised, validated."""

    region: np.ndarray   # int64 index into PhysMemory._regions
    offset: np.ndarray   # uint64 byte offset inside that region
    length: np.ndarray   # uint64 length
    addr: np.ndarray     # uint64 physical address


class PhysMemory:
    """The machine's physical address space: regions, page allocator, ownership, byte access.

    One instance hangs off the ``Machine``; tests create their own. See the module docstring for
    the ownership and poisoning rules.

    Args:
        machine: optional owning :class:`~dmabuf.machine.Machine` (so that
            ``machine.state(PhysMemory)`` gives one physical memory per machine).
        poison_on_free: write ``POISON_FREE`` over freed pages (default True, as with
            ``page_poison=1``). Turning it off keeps freed memory untouched (cheaper for huge
            benchmark buffers) but the owner is still set to ``OWNER_POISON``.
        hugepages: ask for transparent huge pages on the backing (``MADV_HUGEPAGE``): faster
            copies; a touched byte then costs up to 2 MiB of RSS instead of 4 KiB.

    Kernel: mm/memblock.c, mm/page_alloc.c.
    """

    def __init__(self, machine: Any = None, *, poison_on_free: bool = True,
                 hugepages: bool = True) -> None:
        self._regions: list[PhysRegion] = []
        self._by_name: dict[str, PhysRegion] = {}
        self._bases = np.zeros(0, dtype=np.uint64)
        self._ends = np.zeros(0, dtype=np.uint64)
        self._base_list: list[int] = []
        #: Sorted region bases and ends (for split_at_regions).
        self._edges: list[int] = []
        self._owner_labels: dict[int, str] = {}
        self._next_owner = 1
        self._lock = threading.Lock()
        self._generation = 0
        self.poison_on_free = poison_on_free
        self.hugepages = hugepages
        #: The machine this memory belongs to (``machine.state(PhysMemory)`` passes it); unused
        #: by the allocator itself.
        self.machine = machine

    # ------------------------------------------------------------------ regions

    @property
    def generation(self) -> int:
        """Counter bumped by every :meth:`add_region` / :meth:`add_alias` (the memory map changed).

        Caches derived from :attr:`regions` (a device's bus windows, an IOVA reservation) compare
        it instead of the number of regions.
        """
        return self._generation

    def add_region(self, name: str, size: int, kind: MemKind, *, base: int | None = None,
                   numa_node: int = -1, backing: Any = None) -> PhysRegion:
        """Add a region of physical memory — ``memblock_add()`` / ``request_mem_region()``.

        Args:
            name: unique region name.
            size: bytes, a positive multiple of ``PAGE_SIZE``.
            kind: :class:`MemKind`.
            base: CPU physical address, page aligned. ``None`` picks the first 1 GiB-aligned
                address above every existing region (and at least 1 GiB, so address 0 is never
                memory).
            numa_node: NUMA node, ``-1`` for none.
            backing: where the bytes live. ``None`` (default): a new anonymous private
                ``MAP_NORESERVE`` mapping. A host file descriptor (an ``int``, or an object with
                ``fileno()``, e.g. a ``memfd`` of at least ``size`` bytes): mapped ``MAP_SHARED``
                read-write from offset 0, so other mappings of that file see the region's bytes
                (the model uAPI backend's RAM). The fd stays the caller's (the mapping holds its
                own reference; closing the fd afterwards is fine). Any other object must export a
                writable, C-contiguous buffer of at least ``size`` bytes (an ``mmap.mmap``, a
                ``bytearray``, a ``uint8`` array): the region views its first ``size`` bytes and
                keeps the object alive.

        Context:
            Takes the allocator lock briefly; never blocks otherwise.

        Returns:
            The new :class:`PhysRegion` (its backing is sparse: no memory is used until touched).

        Raises:
            TypeError: wrong argument types (including a ``backing`` that is neither an fd nor a
                buffer).
            DmaBufError(EINVAL): bad size/base alignment, overlap with an existing region; a
                ``backing`` that is read-only, not contiguous, or smaller than ``size``.
            DmaBufError(EEXIST): a region of that name exists.
            DmaBufError(ENOMEM): the host refused the backing mmap (or the errno of the host's
                ``mmap`` of a given fd, e.g. ``EACCES`` for an fd not open read-write).

        Kernel: mm/memblock.c, memblock_add(); kernel/resource.c, request_mem_region().
        """
        mapping = None
        if backing is not None:
            mapping = _backing_mapping(name, _valid_size(name, size), backing)
        return self._insert(name, size, kind, base, numa_node,
                            lambda b: PhysRegion(name, kind, b, size, numa_node, self.hugepages,
                                                 mapping=mapping))

    def add_alias(self, name: str, target: PhysRegion | str, offset: int, size: int,
                  kind: MemKind, *, base: int | None = None,
                  numa_node: int | None = None) -> PhysRegion:
        """Add a second physical window onto part of a region — a BAR decoding to device memory.

        The new region has its own physical addresses (``base``) but *shares* the bytes and the
        page-owner table of ``target[offset:offset + size]``: a write through either window is
        seen through the other, and a page allocated or poisoned through one is allocated or
        poisoned through the other. This is how the GPU driver makes its visible VRAM and its
        VRAM BAR the same memory (amdgpu: BAR address ``aper_base + off`` = VRAM offset ``off``).

        The window is reserved in ``target``'s allocator (``memblock_reserve()``-like): ``alloc``
        on ``target`` never returns it, ``free`` of its pages through ``target`` is refused;
        allocate and free them through the alias. An alias of an alias is allowed (its window is
        then reserved in the first alias).

        Args:
            name: unique region name.
            target: the region (or its name) whose memory the alias shows.
            offset: byte offset of the window in ``target`` (page aligned).
            size: bytes (a positive multiple of ``PAGE_SIZE``; ``offset + size <= target.size``).
            kind: :class:`MemKind` of the new window (e.g. ``DEVICE`` for VRAM seen through an
                ``MMIO`` BAR target).
            base: physical address of the alias, as for :meth:`add_region` (``None``: automatic).
            numa_node: NUMA node, default the target's.

        Context:
            Takes the allocator lock briefly; never blocks otherwise.

        Returns:
            The new :class:`PhysRegion` (``alias_of`` is ``target``).

        Raises:
            TypeError: wrong argument types.
            DmaBufError(EINVAL): ``target`` is not a region of this PhysMemory, bad alignment,
                the window runs past ``target``, overlap of the alias' addresses with a region.
            DmaBufError(EEXIST): a region of that name exists.
            DmaBufError(EBUSY): a page of the window is allocated in ``target`` or already
                reserved by another alias (``request_mem_region()`` failing on a busy range).

        Kernel: kernel/resource.c, request_mem_region() (a second resource over the same
        memory); mm/memblock.c, memblock_reserve(); drivers/gpu/drm/amd/amdgpu/amdgpu_gmc.c
        (aper_base / visible_vram_size).
        """
        if isinstance(target, str):
            target = self.region(target)
        if not isinstance(target, PhysRegion) or self._by_name.get(target.name) is not target:
            raise DmaBufError(errno.EINVAL, f"alias {name!r}: {target!r} is not a region of this "
                              "PhysMemory")
        offset = _check_int(offset, "offset")
        size = _check_int(size, "size")
        if offset < 0 or offset % PAGE_SIZE:
            raise DmaBufError(errno.EINVAL, f"alias {name!r}: offset {offset:#x} must be a "
                              "non-negative multiple of PAGE_SIZE")
        if size > 0 and offset + size > target.size:
            raise DmaBufError(errno.EINVAL, f"alias {name!r}: window [{offset:#x}, "
                              f"{offset + size:#x}) runs past {target.name!r} ({target.size:#x} "
                              "bytes)")
        node = target.numa_node if numa_node is None else numa_node
        tgt = target

        def make(b: int) -> PhysRegion:
            p0, cnt = offset >> PAGE_SHIFT, size >> PAGE_SHIFT
            fs, fl = tgt._free_start, tgt._free_len
            i = int(np.searchsorted(fs, p0, side="right")) - 1
            if i < 0 or int(fs[i]) + int(fl[i]) < p0 + cnt:
                raise DmaBufError(errno.EBUSY, f"alias {name!r}: pages of {tgt.name!r} "
                                  f"[{tgt.base + offset:#x}, {tgt.base + offset + size:#x}) are "
                                  "allocated or reserved by another alias; free them first")
            region = PhysRegion(name, kind, b, size, node, self.hugepages, alias_of=tgt,
                                alias_offset=offset)
            head = p0 - int(fs[i])
            tail = int(fs[i]) + int(fl[i]) - (p0 + cnt)
            keep_s = [int(fs[i])] if head else []
            keep_l = [head] if head else []
            if tail:
                keep_s.append(p0 + cnt)
                keep_l.append(tail)
            tgt._free_start = np.concatenate((fs[:i], np.array(keep_s, dtype=np.int64),
                                              fs[i + 1:]))
            tgt._free_len = np.concatenate((fl[:i], np.array(keep_l, dtype=np.int64),
                                            fl[i + 1:]))
            tgt._alias_windows.append((p0, cnt, region))
            return region

        return self._insert(name, size, kind, base, node, make)

    def _insert(self, name: str, size: int, kind: MemKind, base: int | None, numa_node: int,
                make: Any) -> PhysRegion:
        """Validate name/size/base, build the region with ``make(base)`` and index it."""
        if not isinstance(name, str) or not name:
            raise TypeError("region name must be a non-empty str")
        if not isinstance(kind, MemKind):
            raise TypeError(f"kind must be a MemKind, not {type(kind).__name__}")
        size = _valid_size(name, size)
        numa_node = _check_int(numa_node, "numa_node")
        with self._lock:
            if name in self._by_name:
                raise DmaBufError(errno.EEXIST, f"a region named {name!r} already exists")
            if base is None:
                top = max([r.end for r in self._regions], default=0)
                base = max(_AUTO_BASE_MIN, -(-top // _GIB) * _GIB)
            else:
                base = _check_int(base, "base")
                if base < 0 or base % PAGE_SIZE:
                    raise DmaBufError(errno.EINVAL, f"region {name!r}: base {base:#x} must be a "
                                      "non-negative multiple of PAGE_SIZE")
            if base + size > (1 << 64):
                raise DmaBufError(errno.EINVAL, f"region {name!r} ends beyond 2^64")
            for r in self._regions:
                if base < r.end and r.base < base + size:
                    raise DmaBufError(errno.EINVAL,
                                      f"region {name!r} [{base:#x}, {base + size:#x}) overlaps "
                                      f"{r.name!r} [{r.base:#x}, {r.end:#x}); choose another "
                                      "base or let add_region pick one (base=None)")
            try:
                region = make(base)
            except DmaBufError:
                raise
            except (OSError, OverflowError, ValueError) as e:
                raise DmaBufError(errno.ENOMEM, f"cannot back region {name!r} of {size:#x} "
                                  f"bytes: {e}") from e
            self._regions.append(region)
            self._regions.sort(key=lambda r: r.base)
            self._by_name[name] = region
            self._bases = np.array([r.base for r in self._regions], dtype=np.uint64)
            self._ends = np.array([r.end for r in self._regions], dtype=np.uint64)
            self._base_list = [r.base for r in self._regions]
            self._edges = sorted({r.base for r in self._regions} | {r.end for r in self._regions})
            self._generation += 1
        return region

    def region(self, name: str) -> PhysRegion:
        """Return the region called ``name``.

        Raises:
            DmaBufError(ENOENT): no such region.

        Model-only: lookup of a named memory region of the model's machine.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise DmaBufError(errno.ENOENT, f"no physical region named {name!r}; known: "
                              f"{sorted(self._by_name)}") from None

    @property
    def regions(self) -> tuple[PhysRegion, ...]:
        """All regions, by ascending base address."""
        return tuple(self._regions)

    def region_at(self, paddr: int) -> PhysRegion:
        """Return the region containing the physical address ``paddr`` — ``pfn_valid()`` + zone.

        Raises:
            IommuFault (EFAULT): no region contains ``paddr`` (a DMA there would hit nothing).

        Kernel: include/linux/mmzone.h, pfn_valid() and page_zone().
        """
        if type(paddr) is not int:
            paddr = _check_int(paddr, "paddr")
        i = bisect.bisect_right(self._base_list, paddr) - 1
        if paddr < 0 or i < 0 or paddr >= self._regions[i].end:
            raise IommuFault(f"physical address {paddr:#x} is not in any memory region",
                             dma_addr=paddr)
        return self._regions[i]

    def region_indices(self, ranges: Any) -> np.ndarray:
        """Index into :attr:`regions` of every non-empty range (vectorised ``region_at``).

        Raises:
            IommuFault (EFAULT): a range is not inside one region.

        Kernel: include/linux/mmzone.h, pfn_valid() and page_zone() (vectorised).
        """
        return self._locate(ranges).region.copy()

    def split_at_regions(self, ranges: Any) -> np.ndarray:
        """Cut every range at the region edges it crosses (physically adjacent regions).

        Two regions may be adjacent in the physical address space (``ram0`` ending where
        ``vram0`` begins), so a list coalesced without knowing the regions — the output of an
        IOMMU page walk, a device's DMA list — can hold a range running from one into the
        next. Every other method takes ranges that each lie inside one region; this returns the
        list cut at region boundaries, same bytes, same order. Ranges (or parts) outside every
        region are kept as they are, so the caller's next access faults on them.

        Args:
            ranges: a range list.

        Context:
            Lock-free; never blocks.

        Returns:
            ``ranges`` (validated, not copied) when nothing crosses an edge (the common case),
            else a new list.

        Raises:
            TypeError / DmaBufError(EOVERFLOW): not a valid range list.

        Model-only: range-list surgery so each piece lies in one region.
        """
        r = as_ranges(ranges)
        edges = self._edges
        if r.size == 0 or len(edges) <= 1:
            return r
        if r.size == 1:
            a0, n0 = r.tolist()[0]
            i = bisect.bisect_right(edges, a0)
            if i >= len(edges) or edges[i] >= a0 + n0:
                return r
        a = r["addr"]
        e = a + r["len"]
        ed = np.asarray(edges, dtype=np.uint64)
        lo = np.searchsorted(ed, a, side="right")
        hi = np.searchsorted(ed, e, side="left")
        cuts = np.maximum(hi - lo, 0).astype(np.int64)
        if not bool(cuts.any()):
            return r
        pieces = cuts + 1
        total = int(pieces.sum())
        owner = np.repeat(np.arange(r.size, dtype=np.int64), pieces)
        base = np.zeros(r.size, dtype=np.int64)
        np.cumsum(pieces[:-1], out=base[1:])
        k = np.arange(total, dtype=np.int64) - base[owner]        # piece number in its range
        has_cut = cuts[owner] > 0
        # piece k of range i starts at edge lo[i] + k - 1 (k >= 1) and ends at edge lo[i] + k
        start = a[owner].copy()
        j = (lo[owner] + k - 1)[has_cut & (k > 0)]
        start[has_cut & (k > 0)] = ed[j]
        stop = e[owner].copy()
        last = k == pieces[owner] - 1
        j2 = (lo[owner] + k)[~last]
        stop[~last] = ed[j2]
        out = np.empty(total, dtype=RANGE_DTYPE)
        out["addr"] = start
        out["len"] = stop - start
        return out

    # ------------------------------------------------------------------ owners

    def new_owner(self, label: str) -> int:
        """Hand out a new positive owner id for pages (a buffer object, a process...).

        Args:
            label: human-readable name shown in fault messages.

        Returns:
            A positive int, unique in this PhysMemory.

        Model-only: owner ids exist only for the model's page-ownership checks.
        """
        if not isinstance(label, str):
            raise TypeError("owner label must be a str")
        with self._lock:
            oid = self._next_owner
            self._next_owner += 1
            self._owner_labels[oid] = label
        return oid

    def owner_label(self, owner: int) -> str:
        """Label of an owner id (``"free"`` for 0, ``"poisoned (freed)"`` for -1).

        Model-only: display text for the model's page-ownership checks.
        """
        owner = int(owner)
        if owner == OWNER_FREE:
            return "free"
        if owner == OWNER_POISON:
            return "poisoned (freed)"
        return self._owner_labels.get(owner, f"unknown owner {owner}")

    def _check_owner_id(self, owner: int) -> int:
        owner = _check_int(owner, "owner")
        if owner not in self._owner_labels:
            raise DmaBufError(errno.EINVAL, f"owner {owner} was not issued by new_owner(); "
                              "get one with PhysMemory.new_owner(label)")
        return owner

    # ------------------------------------------------------------------ location helpers

    def _locate(self, ranges: Any) -> _Located:
        """Resolve every non-empty range to its region; fault if any is outside all regions."""
        r = as_ranges(ranges)
        if r.size == 1:
            a0, n0 = r.tolist()[0]
            if n0:
                i = bisect.bisect_right(self._base_list, a0) - 1
                if i >= 0 and a0 + n0 <= self._regions[i].end:
                    return _Located(np.array([i], dtype=np.int64),
                                    np.array([a0 - self._regions[i].base], dtype=np.uint64),
                                    r["len"].copy(), r["addr"].copy())
        r = r[r["len"] != 0]
        addr = r["addr"]
        length = r["len"]
        if r.size == 0:
            z = np.zeros(0, dtype=np.uint64)
            return _Located(np.zeros(0, dtype=np.int64), z, z, z)
        idx = np.searchsorted(self._bases, addr, side="right").astype(np.int64) - 1
        bad = idx < 0
        safe = np.where(bad, 0, idx)
        if self._ends.size == 0:
            bad = np.ones(r.size, dtype=bool)
        else:
            bad |= (addr + length) > self._ends[safe]
        if bool(bad.any()):
            i = int(np.flatnonzero(bad)[0])
            a, n = int(addr[i]), int(length[i])
            where = ""
            if not (idx[i] < 0 or self._ends.size == 0) and a < int(self._ends[safe[i]]):
                name = self._regions[int(safe[i])].name
                where = f" (it starts in {name!r} but runs past its end)"
            raise IommuFault(f"physical range [{a:#x}, {a + n:#x}) is not inside one memory "
                             f"region{where}", dma_addr=a)
        return _Located(safe, addr - self._bases[safe], length, addr)

    def _page_spans(self, loc: _Located) -> tuple[np.ndarray, np.ndarray]:
        """First page index (in region) and page count of every located byte range."""
        first = (loc.offset >> np.uint64(PAGE_SHIFT)).astype(np.int64)
        last = ((loc.offset + loc.length - np.uint64(1)) >> np.uint64(PAGE_SHIFT)).astype(np.int64)
        return first, last - first + 1

    def _owner_values(self, region: PhysRegion, first: np.ndarray,
                      count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(page indices, owner values) of the pages spanned, expanded (only for moderate sizes)."""
        pages = _expand(first, count)
        return pages, region.owner[pages]

    def _spans_by_region(self, loc: _Located) -> list[tuple[PhysRegion, np.ndarray, np.ndarray]]:
        first, count = self._page_spans(loc)
        if loc.region.size and int(loc.region.min()) == int(loc.region.max()):
            return [(self._regions[int(loc.region[0])], first, count)]
        out = []
        for ri in np.unique(loc.region).tolist():
            m = loc.region == ri
            out.append((self._regions[ri], first[m], count[m]))
        return out

    def _locate_merged(self, ranges: Any) -> _Located:
        """``_locate`` then merge neighbours that are contiguous *inside one region*.

        Coalescing before locating would merge the last range of a region with the first of a
        physically adjacent region and fault the result as running past the first one's end.
        """
        loc = self._locate(ranges)
        k = loc.region.size
        if k <= 1:
            return loc
        reg = loc.region
        off = loc.offset
        ends = off + loc.length
        join = (reg[1:] == reg[:-1]) & (off[1:] == ends[:-1])
        brk = np.flatnonzero(~join)
        if brk.size == k - 1:
            return loc
        first = np.empty(brk.size + 1, dtype=np.int64)
        first[0] = 0
        np.add(brk, 1, out=first[1:])
        last_end = np.empty(first.size, dtype=np.uint64)
        last_end[:-1] = ends[first[1:] - 1]
        last_end[-1] = ends[-1]
        o = off[first]
        return _Located(reg[first], o, last_end - o, loc.addr[first])

    # ------------------------------------------------------------------ allocator

    def alloc(self, region: PhysRegion | str, nbytes: int, owner: int, *,
              contiguous: bool = False, max_extent: int | None = None,
              rng: np.random.Generator | None = None, zero: bool = False) -> np.ndarray:
        """Allocate pages to ``owner`` — ``alloc_pages()`` / ``alloc_contig_range()``.

        Args:
            region: the region (or its name) to allocate from.
            nbytes: bytes wanted; rounded up to whole pages.
            owner: an id from :meth:`new_owner`.
            contiguous: one physically contiguous extent (CMA-like) or ``-ENOMEM``.
            max_extent: when not contiguous, cap every returned extent at this many bytes (a
                multiple of ``PAGE_SIZE``; e.g. ``PAGE_SIZE`` for order-0 pages, ``2 MiB`` for
                THP-sized folios).
            rng: seeded generator; when given, the free extent used (contiguous) or the order in
                which free extents are consumed (non-contiguous) is random instead of first-fit,
                giving scattered, realistic physical layouts.
            zero: clear the pages (``__GFP_ZERO``). Without it a reused page still holds
                ``POISON_FREE`` bytes, as freed memory does in the kernel with page poisoning.

        Context:
            Takes the allocator lock; never sleeps (the model never reclaims).

        Returns:
            A ``RANGE_DTYPE`` array of page-aligned physical extents, in the order the buffer
            uses them (adjacent extents are merged unless ``max_extent`` forbids it).

        Raises:
            TypeError: wrong types.
            DmaBufError(EINVAL): ``nbytes <= 0``, bad ``max_extent``, unknown owner, a region of
                another PhysMemory.
            DmaBufError(ENOMEM): not enough free pages (or no extent large enough when
                contiguous); the message gives the free pages and the largest extent.

        Every kind of region is allocatable, ``MMIO`` included: the page allocator here stands
        for whatever allocator owns the region, and for a BAR that is its driver — habanalabs
        carves its HBM out of the DRAM BAR's region (``devices.accel``), the GPU allocates VRAM
        from its ``DEVICE`` region, which aliases the BAR window. Generic P2P memory
        (``pci_alloc_p2pmem``) comes from the ``pci`` genpool, not from here. Model choice: the
        kernel's buddy allocator never sees BAR memory at all; refusing MMIO here would break
        the drivers that model their own BAR allocators with it. Pages of an alias window
        (:meth:`add_alias`) are allocated through the alias, never through its target.

        Kernel: mm/page_alloc.c, __alloc_pages(); mm/cma.c, cma_alloc().
        """
        if isinstance(region, str):
            region = self.region(region)
        if not isinstance(region, PhysRegion) or self._by_name.get(region.name) is not region:
            raise DmaBufError(errno.EINVAL, f"{region!r} is not a region of this PhysMemory")
        nbytes = _check_int(nbytes, "nbytes")
        owner = self._check_owner_id(owner)
        if nbytes <= 0:
            raise DmaBufError(errno.EINVAL, f"alloc of {nbytes} bytes: size must be positive")
        if max_extent is not None:
            max_extent = _check_int(max_extent, "max_extent")
            if max_extent <= 0 or max_extent % PAGE_SIZE:
                raise DmaBufError(errno.EINVAL, f"max_extent {max_extent:#x} must be a positive "
                                  "multiple of PAGE_SIZE")
        npages = -(-nbytes // PAGE_SIZE)
        with self._lock:
            fs, fl = region._free_start, region._free_len
            free = int(fl.sum())
            if contiguous:
                cand = np.flatnonzero(fl >= npages)
                if cand.size == 0:
                    raise DmaBufError(errno.ENOMEM,
                                      f"{region.name}: no free extent of {npages} contiguous pages "
                                      f"({nbytes:#x} bytes): {free} pages free in {fl.size} "
                                      f"extents, the largest is {region.largest_free_extent} "
                                      "pages; free memory or allocate non-contiguously")
                i = int(cand[0] if rng is None else cand[int(rng.integers(cand.size))])
                starts = np.array([fs[i]], dtype=np.int64)
                counts = np.array([npages], dtype=np.int64)
                fs[i] += npages
                fl[i] -= npages
                keep = fl > 0
                region._free_start, region._free_len = fs[keep], fl[keep]
            else:
                if free < npages:
                    raise DmaBufError(errno.ENOMEM,
                                      f"{region.name}: cannot allocate {npages} pages "
                                      f"({nbytes:#x} bytes): only {free} pages free of "
                                      f"{region.npages}; free memory or use another region")
                order = np.arange(fl.size) if rng is None else rng.permutation(fl.size)
                cum = np.cumsum(fl[order])
                k = int(np.searchsorted(cum, npages, side="left"))  # last extent index used
                used = order[:k + 1]
                counts = fl[used].copy()
                counts[-1] -= int(cum[k]) - npages
                starts = fs[used].copy()
                # Consume: whole extents removed, the last one shrunk from its start.
                fs = fs.copy()
                fl = fl.copy()
                last = int(used[-1])
                fs[last] += counts[-1]
                fl[last] -= counts[-1]
                fl[used[:-1]] = 0
                keep = fl > 0
                region._free_start, region._free_len = fs[keep], fl[keep]
            self._assign(region, starts, counts, owner)
        if zero:
            for s, c in zip(starts.tolist(), counts.tolist(), strict=True):
                region.backing[s << PAGE_SHIFT:(s + c) << PAGE_SHIFT] = 0
        out = np.empty(starts.size, dtype=RANGE_DTYPE)
        out["addr"] = (starts.astype(np.uint64) << np.uint64(PAGE_SHIFT)) + np.uint64(region.base)
        out["len"] = counts.astype(np.uint64) << np.uint64(PAGE_SHIFT)
        out = coalesce(out)
        if max_extent is not None:
            out = split_ranges(out, max_extent)
        return out

    def _assign(self, region: PhysRegion, starts: np.ndarray, counts: np.ndarray,
                value: int) -> None:
        """Set the owner of pages ``[starts, starts + counts)`` (region page indices)."""
        total = int(counts.sum())
        if starts.size <= 16 or total > _EXPAND_LIMIT or total >= 64 * starts.size:
            for s, c in zip(starts.tolist(), counts.tolist(), strict=True):
                region.owner[s:s + c] = value
        else:
            region.owner[_expand(starts, counts)] = value

    def free(self, ranges: Any) -> None:
        """Return pages to the allocator and poison them — ``__free_pages()`` + page poisoning.

        Owners become ``OWNER_POISON`` (-1) and, with ``poison_on_free``, every byte ``0x6b``
        until the page is allocated again.

        Args:
            ranges: page-aligned ranges previously returned by :meth:`alloc` (any split or merge
                of them; they may span several regions).

        Context:
            Takes the allocator lock; never sleeps.

        Raises:
            DmaBufError(EINVAL): a range is not page aligned.
            IommuFault (EFAULT): a range is outside every region.
            ContractViolation("free_pages"): a page is not allocated (double free, never
                allocated) or listed twice — the kernel's "Bad page state" BUG; or a page of an
                alias window freed through the aliased region (free it through the alias).

        Kernel: mm/page_alloc.c, __free_pages(), free_pages_prepare(); mm/page_poison.c.
        """
        r = as_ranges(ranges)
        if r.size and bool(np.any((r["addr"] | r["len"]) & np.uint64(PAGE_SIZE - 1))):
            raise DmaBufError(errno.EINVAL, "free: ranges must be page aligned (addr and len "
                              "multiples of PAGE_SIZE), as returned by alloc()")
        loc = self._locate(r)
        if loc.region.size == 0:
            return
        with self._lock:
            groups = self._spans_by_region(loc)
            for region, first, count in groups:
                order = np.argsort(first, kind="stable")
                s, c = first[order], count[order]
                if s.size > 1 and bool(np.any(s[1:] < s[:-1] + c[:-1])):
                    j = int(np.flatnonzero(s[1:] < s[:-1] + c[:-1])[0]) + 1
                    raise ContractViolation("free_pages", f"{region.name}: page "
                                            f"{region.base + (int(s[j]) << PAGE_SHIFT):#x} is "
                                            "listed twice in one free() call")
                self._check_pages(region, s, c, None, rule="free_pages")
                for w0, wn, alias in region._alias_windows:
                    inside = (s < w0 + wn) & (s + c > w0)
                    if bool(inside.any()):
                        j = int(np.argmax(inside))
                        page = max(int(s[j]), w0)
                        raise ContractViolation("free_pages", f"{region.name}: page "
                                                f"{region.base + (page << PAGE_SHIFT):#x} is in "
                                                f"the window aliased by {alias.name!r}; free it "
                                                "through the alias (its allocator owns it)")
            for region, first, count in groups:
                self._assign(region, first, count, OWNER_POISON)
                fs = np.concatenate((region._free_start, first))
                fl = np.concatenate((region._free_len, count))
                region._free_start, region._free_len = _merge_extents(fs, fl)
        if self.poison_on_free:
            self.fill(r, POISON_FREE)

    def _check_pages(self, region: PhysRegion, first: np.ndarray, count: np.ndarray,
                     owner: int | None, *, rule: str = "") -> None:
        """Raise if a page is not owned by ``owner`` (None: not allocated to anyone)."""
        k = _first_bad_span(region.owner, first, count, owner)
        bad_page = -1
        bad_val = 0
        if k >= 0:
            s0 = int(first[k])
            vals = region.owner[s0:s0 + int(count[k])]
            m = vals <= 0 if owner is None else vals != owner
            j = int(np.argmax(m))
            bad_page, bad_val = s0 + j, int(vals[j])
        if bad_page < 0:
            return
        paddr = region.base + (bad_page << PAGE_SHIFT)
        who = self.owner_label(bad_val)
        if owner is None:
            raise ContractViolation(rule or "free_pages",
                                    f"{region.name}: page {paddr:#x} (pfn {paddr >> PAGE_SHIFT:#x})"
                                    f" is not allocated ({who}): double free or never allocated")
        if bad_val > 0:
            state = f"is owned by {who!r} (owner {bad_val})"
        else:
            state = f"is {who}"
        raise IommuFault(f"{region.name}: page {paddr:#x} (pfn {paddr >> PAGE_SHIFT:#x}) {state}, "
                         f"not by {self.owner_label(owner)!r} (owner {owner}): stale mapping "
                         "after free, migration or revoke", dma_addr=paddr)

    def set_owner(self, ranges: Any, owner: int) -> None:
        """Transfer allocated pages to another owner (migration, buffer hand-over).

        Args:
            ranges: page-aligned allocated ranges.
            owner: an id from :meth:`new_owner`.

        Context:
            Takes the allocator lock; never sleeps.

        Raises:
            DmaBufError(EINVAL): unaligned ranges or unknown owner.
            IommuFault: range outside every region.
            ContractViolation("set_owner"): a page is free or poisoned.

        Kernel: mm/migrate.c, folio_migrate_mapping() (the page changes hands).
        """
        owner = self._check_owner_id(owner)
        r = as_ranges(ranges)
        if r.size and bool(np.any((r["addr"] | r["len"]) & np.uint64(PAGE_SIZE - 1))):
            raise DmaBufError(errno.EINVAL, "set_owner: ranges must be page aligned")
        loc = self._locate(r)
        with self._lock:
            groups = self._spans_by_region(loc)
            for region, first, count in groups:
                self._check_pages(region, first, count, None, rule="set_owner")
            for region, first, count in groups:
                self._assign(region, first, count, owner)

    def check_owned(self, ranges: Any, owner: int) -> None:
        """Fault unless every page touched by ``ranges`` belongs to ``owner``.

        The model's stand-in for the IOMMU / memory-controller noticing a DMA through a stale
        translation: DMA engines call it with ``expect_owner`` before moving bytes.

        Args:
            ranges: byte ranges (need not be page aligned; every page they touch is checked).
            owner: the expected owner id.

        Context:
            Lock-free read of the owner table; never blocks.

        Raises:
            IommuFault (EFAULT): the first page not owned by ``owner``, saying who owns it or that
                it is free/poisoned; also for ranges outside every region.

        Model-only: page-ownership check that turns a stray access into a fault; real memory has no
        owners.
        """
        owner = _check_int(owner, "owner")
        loc = self._locate(ranges)
        for region, first, count in self._spans_by_region(loc):
            self._check_pages(region, first, count, owner)

    def owners_of(self, ranges: Any) -> np.ndarray:
        """Owner id of every page touched by ``ranges``, in list order (one entry per page).

        A page touched by two ranges appears twice. Vectorised: one gather per region over
        ``np.repeat``-built page indices (slices per range only beyond 4 Mi pages).

        Raises:
            IommuFault (EFAULT): a range outside every region.

        Model-only: query for the model's page-ownership checks.
        """
        loc = self._locate(ranges)
        first, count = self._page_spans(loc)
        k = loc.region.size
        if k == 0:
            return np.zeros(0, dtype=np.int32)
        regs = self._regions
        if k == 1:
            f, c = int(first[0]), int(count[0])
            return regs[int(loc.region[0])].owner[f:f + c].copy()
        total = int(count.sum())
        if total > _EXPAND_LIMIT:
            return np.concatenate([regs[ri].owner[f:f + c] for ri, f, c in
                                   zip(loc.region.tolist(), first.tolist(), count.tolist(),
                                       strict=True)])
        lo, hi = int(loc.region.min()), int(loc.region.max())
        if lo == hi:
            return regs[lo].owner[_expand(first, count)]
        out = np.empty(total, dtype=np.int32)
        pos = np.zeros(k, dtype=np.int64)
        np.cumsum(count[:-1], out=pos[1:])
        for ri in np.unique(loc.region).tolist():
            m = loc.region == ri
            out[_expand(pos[m], count[m])] = regs[ri].owner[_expand(first[m], count[m])]
        return out

    # ------------------------------------------------------------------ bytes

    def view(self, paddr: int, length: int) -> np.ndarray:
        """Writable ``uint8`` view of ``[paddr, paddr + length)`` — ``phys_to_virt`` / ``kmap``.

        Raises:
            DmaBufError(EINVAL): negative length.
            IommuFault (EFAULT): the range is not inside one region.

        Kernel: include/linux/highmem.h, kmap_local_page() / phys_to_virt().
        """
        if type(paddr) is not int:
            paddr = _check_int(paddr, "paddr")
        if type(length) is not int:
            length = _check_int(length, "length")
        if length < 0:
            raise DmaBufError(errno.EINVAL, "view: length must be >= 0")
        region = self.region_at(paddr)
        off = paddr - region.base
        if off + length > region.size:
            raise IommuFault(f"[{paddr:#x}, {paddr + length:#x}) runs past the end of region "
                             f"{region.name!r} ({region.end:#x})", dma_addr=paddr)
        return region.backing[off:off + length]

    def _pieces(self, ranges: Any) -> list[tuple[np.ndarray, int, int]]:
        loc = self._locate_merged(ranges)
        regs = self._regions
        return [(regs[ri].backing, o, n) for ri, o, n in
                zip(loc.region.tolist(), loc.offset.tolist(), loc.length.tolist(), strict=True)]

    def read(self, ranges: Any) -> np.ndarray:
        """Gather the bytes of ``ranges`` into a new ``uint8`` array.

        Raises:
            IommuFault (EFAULT): a range outside every region.

        Kernel: include/linux/string.h, memcpy() from kernel mappings of the ranges.
        """
        pieces = self._pieces(ranges)
        out = np.empty(sum(n for _, _, n in pieces), dtype=np.uint8)
        pos = 0
        for backing, o, n in pieces:
            np.copyto(out[pos:pos + n], backing[o:o + n])
            pos += n
        return out

    def write(self, ranges: Any, data: Any) -> None:
        """Scatter ``data`` (bytes-like or ndarray) over ``ranges``.

        Raises:
            DmaBufError(EINVAL): ``len(data)`` differs from the total length of ``ranges``.
            IommuFault (EFAULT): a range outside every region.

        Kernel: include/linux/string.h, memcpy() to kernel mappings of the ranges.
        """
        src = as_bytes_array(data)
        pieces = self._pieces(ranges)
        total = sum(n for _, _, n in pieces)
        if src.size != total:
            raise DmaBufError(errno.EINVAL, f"write: {src.size} bytes of data for ranges of "
                              f"{total} bytes")
        pos = 0
        for backing, o, n in pieces:
            np.copyto(backing[o:o + n], src[pos:pos + n])
            pos += n

    def fill(self, ranges: Any, byte: int) -> None:
        """Set every byte of ``ranges`` to ``byte`` (0..255) — ``memset``.

        Raises:
            DmaBufError(EINVAL): byte out of range.  IommuFault: range outside every region.

        Kernel: include/linux/string.h, memset() over kernel mappings of the ranges.
        """
        byte = _check_int(byte, "byte")
        if not 0 <= byte <= 255:
            raise DmaBufError(errno.EINVAL, f"fill: byte {byte} is not in 0..255")
        for backing, o, n in self._pieces(ranges):
            backing[o:o + n] = byte

    def checksum(self, ranges: Any) -> int:
        """CRC-32 (zlib) of the bytes of ``ranges`` in list order, computed piecewise.

        Raises:
            IommuFault (EFAULT): a range outside every region.

        Model-only: test helper over the model's backing bytes.
        """
        crc = 0
        for backing, o, n in self._pieces(ranges):
            crc = zlib.crc32(backing[o:o + n].data, crc)
        return crc

    def copy(self, dst_ranges: Any, src_ranges: Any) -> None:
        """Copy the bytes of ``src_ranges`` to ``dst_ranges`` (same total, any shapes).

        The two lists are cut at the union of their boundaries (``np.union1d`` of the prefix
        sums) and each resulting piece is one ``np.copyto`` — never per page. Overlapping
        source and destination pieces behave like ``memmove`` (numpy handles overlap).

        Raises:
            DmaBufError(EINVAL): different total lengths.
            IommuFault (EFAULT): a range outside every region.

        Kernel: include/linux/string.h, memcpy() over kernel mappings of the ranges.
        """
        dl = self._locate_merged(dst_ranges)
        sl = self._locate_merged(src_ranges)
        dtot = int(dl.length.sum()) if dl.length.size else 0
        stot = int(sl.length.sum()) if sl.length.size else 0
        if dtot != stot:
            raise DmaBufError(errno.EINVAL, f"copy: destination has {dtot} bytes, source "
                              f"{stot}; the lists must describe the same length")
        if dtot == 0:
            return
        regs = self._regions
        if dl.region.size == 1 and sl.region.size == 1:
            np.copyto(regs[int(dl.region[0])].backing[int(dl.offset[0]):int(dl.offset[0]) + dtot],
                      regs[int(sl.region[0])].backing[int(sl.offset[0]):int(sl.offset[0]) + dtot])
            return
        dstart = _starts(dl.length)
        sstart = _starts(sl.length)
        cuts = np.union1d(dstart, sstart)
        plen = np.diff(np.append(cuts, np.uint64(dtot)))
        di = np.searchsorted(dstart, cuts, side="right") - 1
        si = np.searchsorted(sstart, cuts, side="right") - 1
        doff = dl.offset[di] + (cuts - dstart[di])
        soff = sl.offset[si] + (cuts - sstart[si])
        dreg = dl.region[di]
        sreg = sl.region[si]
        for dr, do, sr, so, n in zip(dreg.tolist(), doff.tolist(), sreg.tolist(), soff.tolist(),
                                     plen.tolist(), strict=True):
            np.copyto(regs[dr].backing[do:do + n], regs[sr].backing[so:so + n])

    # ------------------------------------------------------------------ introspection

    def describe(self) -> dict[str, Any]:
        """Snapshot of every region (``/proc/iomem`` + ``/proc/buddyinfo`` in one).

        Model-only: introspection combining /proc/iomem and /proc/buddyinfo.
        """
        return {"regions": [r.describe() for r in self._regions],
                "owners": len(self._owner_labels)}

    def __repr__(self) -> str:
        return f"PhysMemory({len(self._regions)} regions)"


def _starts(lengths: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum (uint64): offset of each piece in the concatenated buffer."""
    out = np.zeros(lengths.size, dtype=np.uint64)
    if lengths.size > 1:
        np.cumsum(lengths[:-1], out=out[1:])
    return out


def _first_bad_span(table: np.ndarray, first: np.ndarray, count: np.ndarray,
                    want: int | None) -> int:
    """Index of the first span (list order) holding a page whose owner is not ``want``.

    ``want=None`` means "allocated to someone" (owner > 0). Returns -1 when every page is good.
    Vectorised for any number of spans: a dense set of spans (sorted, little gap between them)
    is checked with one ``np.minimum/maximum.reduceat`` over the owner table itself; a sparse
    one with one gather over ``np.repeat``-built page indices; only more than 4 Mi pages fall
    back to one slice per span (then each slice is large and the loop costs nothing).
    """
    k = first.size
    if k == 0:
        return -1
    if k <= 4:
        for i, (s, c) in enumerate(zip(first.tolist(), count.tolist(), strict=True)):
            v = table[s:s + c]
            if bool((v.min() <= 0) if want is None else ((v.min() != want) | (v.max() != want))):
                return i
        return -1
    first = first.astype(np.int64, copy=False)
    count = count.astype(np.int64, copy=False)
    ends = first + count
    total = int(count.sum())
    if bool(np.all(first[1:] >= first[:-1])):
        order = None
        fs, es = first, ends
    else:
        order = np.argsort(first, kind="stable")
        fs, es = first[order], ends[order]
    span = int(es.max()) - int(fs[0])
    if span <= 2 * total + 1024:
        # Dense: reduce over [fs[i], es[i]) of the table itself (cut at the last page used, so
        # the trailing slice is bounded too); the odd slices between two spans are cheap
        # (little gap) and ignored. reduceat needs every index < len(table): a span ending at
        # the cut is reduced up to the last page, then that page is added.
        n = int(es.max())
        table = table[:n]
        idx = np.empty(2 * k, dtype=np.int64)
        idx[0::2] = fs
        np.minimum(es, n - 1, out=idx[1::2])
        at_end = es == n
        lo = np.minimum.reduceat(table, idx)[0::2]
        if bool(at_end.any()):
            np.minimum(lo, table[n - 1], out=lo, where=at_end)
        if want is None:
            bad = lo <= 0
        else:
            hi = np.maximum.reduceat(table, idx)[0::2]
            if bool(at_end.any()):
                np.maximum(hi, table[n - 1], out=hi, where=at_end)
            bad = (lo != want) | (hi != want)
        if not bool(bad.any()):
            return -1
        hits = np.flatnonzero(bad)
        return int(hits.min() if order is None else order[hits].min())
    if total <= _EXPAND_LIMIT:
        vals = table[_expand(first, count)]
        badp = vals <= 0 if want is None else vals != want
        if not bool(badp.any()):
            return -1
        j = int(np.argmax(badp))
        pos = np.cumsum(count)
        return int(np.searchsorted(pos, j, side="right"))
    for i, (s, c) in enumerate(zip(first.tolist(), count.tolist(), strict=True)):
        v = table[s:s + c]
        if bool((v.min() <= 0) if want is None else ((v.min() != want) | (v.max() != want))):
            return i
    return -1


def _expand(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Page indices ``first[i] .. first[i] + count[i] - 1`` for every i, concatenated."""
    first = first.astype(np.int64)
    count = count.astype(np.int64)
    total = int(count.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.zeros(count.size, dtype=np.int64)
    if count.size > 1:
        np.cumsum(count[:-1], out=offs[1:])
    return np.repeat(first - offs, count) + np.arange(total, dtype=np.int64)


def _merge_extents(fs: np.ndarray, fl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort free extents by start and merge the adjacent ones."""
    order = np.argsort(fs, kind="stable")
    s = fs[order]
    n = fl[order]
    if s.size <= 1:
        return s, n
    begin = np.concatenate(([True], s[1:] != s[:-1] + n[:-1]))
    idx = np.flatnonzero(begin)
    return s[idx], np.add.reduceat(n, idx)


def as_bytes_array(data: Any) -> np.ndarray:
    """``data`` as a flat ``uint8`` array, without a copy where possible (what the model's byte
    writers accept: bytes-like objects or any numpy array, viewed as its raw bytes).

    Raises: TypeError: neither bytes-like nor an ndarray.

    Model-only: argument normalisation for the byte-moving helpers.
    """
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        raise TypeError(f"data must be bytes-like or a numpy array, not "
                        f"{type(data).__name__}") from None



def _valid_size(name: Any, size: Any) -> int:
    size = _check_int(size, "size")
    if size <= 0 or size % PAGE_SIZE:
        raise DmaBufError(errno.EINVAL, f"region {name!r}: size {size:#x} must be a positive "
                          f"multiple of PAGE_SIZE ({PAGE_SIZE}); round it up")
    return size


def _backing_mapping(name: str, size: int, backing: Any) -> Any:
    """The buffer object a region given ``backing=`` views (see ``PhysMemory.add_region``)."""
    if isinstance(backing, bool):
        raise TypeError("backing must be a file descriptor or a writable buffer, not bool")
    fd: int | None = None
    if isinstance(backing, (int, np.integer)):
        fd = int(backing)
    elif hasattr(backing, "fileno") and not isinstance(backing, (mmap.mmap, np.ndarray)):
        fd = int(backing.fileno())
    if fd is not None:
        try:
            have = os.fstat(fd).st_size
        except OSError as e:
            raise DmaBufError(e.errno or errno.EBADF, f"region {name!r}: backing fd {fd}: "
                              f"{e.strerror}") from None
        if have < size:
            raise DmaBufError(errno.EINVAL, f"region {name!r}: backing file of fd {fd} has "
                              f"{have:#x} bytes, the region needs {size:#x}; ftruncate it first")
        try:
            return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise DmaBufError(e.errno or errno.ENOMEM, f"region {name!r}: cannot map backing fd "
                              f"{fd} shared read-write: {e.strerror}") from None
        except (OverflowError, ValueError) as e:
            raise DmaBufError(errno.EINVAL, f"region {name!r}: cannot map backing fd {fd}: "
                              f"{e}") from None
    try:
        mv = memoryview(backing)
    except TypeError:
        raise TypeError(f"backing must be a file descriptor or a writable buffer, not "
                        f"{type(backing).__name__}") from None
    if mv.readonly or not mv.c_contiguous:
        raise DmaBufError(errno.EINVAL, f"region {name!r}: backing buffer must be writable and "
                          "C-contiguous")
    if mv.nbytes < size:
        raise DmaBufError(errno.EINVAL, f"region {name!r}: backing buffer has {mv.nbytes:#x} "
                          f"bytes, the region needs {size:#x}")
    return backing if isinstance(backing, mmap.mmap) else mv.cast("B")
