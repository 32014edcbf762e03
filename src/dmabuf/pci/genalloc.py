"""A special-purpose memory pool with a page bitmap — lib/genalloc.c as used by P2PDMA.

``pci_p2pdma_add_resource()`` hands a BAR range to a ``gen_pool`` created with
``gen_pool_create(PAGE_SHIFT, node)``: allocation granule one page, first-fit. Each added range is
a *chunk* with its own bitmap (one bit per page) and an owner cookie (the pagemap's percpu ref in
the kernel). The kernel adds new chunks at the head of the chunk list, so the most recently added
range is searched first; the model keeps that order.

In the kernel a chunk maps a kernel virtual address range (the ``devm_memremap_pages()`` KVA) to
a "physical" address — for P2PDMA that is the PCI **bus** address, which is why
``pci_p2pmem_virt_to_bus()`` is ``gen_pool_virt_to_phys()``. The model has no kernel virtual
addresses: a chunk's "virtual" side is the CPU physical address of the BAR range, so
:meth:`GenPool.alloc_owner` returns CPU physical addresses and :meth:`GenPool.virt_to_phys` turns
one into the bus address.

Bitmaps are numpy ``bool`` arrays; a first-fit search is one vectorised run-length scan, never a
Python loop over pages.

Locking: one lock per pool held for the duration of a call (the kernel's bitmap ops are lockless
with cmpxchg; the observable behaviour — no two allocations share a page — is the same).

Kernel: lib/genalloc.c (gen_pool_create(), gen_pool_add_owner(), gen_pool_alloc_owner(),
gen_pool_free_owner(), gen_pool_first_fit(), gen_pool_virt_to_phys(), gen_pool_size(),
gen_pool_avail()).
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError

__all__ = ["GenPool", "GenPoolChunk"]


@dataclass
class GenPoolChunk:
    """One range added to the pool — ``struct gen_pool_chunk``.

    Attributes:
        start_addr: first "virtual" address (CPU physical address in the model).
        end_addr: last address (inclusive, as in the kernel).
        phys_addr: the address :meth:`GenPool.virt_to_phys` maps ``start_addr`` to (bus address).
        bits: one ``bool`` per granule, ``True`` = allocated.
        owner: opaque cookie returned by alloc/free (the pagemap in the model).
    """

    start_addr: int
    end_addr: int
    phys_addr: int
    bits: np.ndarray
    owner: Any

    @property
    def size(self) -> int:
        """Bytes in the chunk."""
        return self.end_addr - self.start_addr + 1


def _first_fit(bits: np.ndarray, nr: int) -> int:
    """Index of the first run of ``nr`` clear bits, or -1 — ``bitmap_find_next_zero_area()``."""
    free = np.concatenate(([False], ~bits, [False]))
    edges = np.diff(free.astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    ok = np.flatnonzero(ends - starts >= nr)
    return int(starts[ok[0]]) if ok.size else -1


class GenPool:
    """A first-fit pool of fixed-granule allocations over added chunks — ``struct gen_pool``.

    Args:
        min_alloc_order: log2 of the granule (``PAGE_SHIFT`` = 12 for P2PDMA).
        nid: NUMA node (informational).

    Kernel: lib/genalloc.c, gen_pool_create().
    """

    def __init__(self, min_alloc_order: int = 12, nid: int = -1) -> None:
        if not isinstance(min_alloc_order, int) or not 0 <= min_alloc_order < 40:
            raise DmaBufError(errno.EINVAL, f"min_alloc_order {min_alloc_order!r} out of range")
        self.min_alloc_order = min_alloc_order
        self.nid = nid
        self.chunks: list[GenPoolChunk] = []   # head first, like pool->chunks
        self._lock = threading.Lock()

    @property
    def granule(self) -> int:
        """Bytes per bitmap bit."""
        return 1 << self.min_alloc_order

    def add_owner(self, virt: int, phys: int, size: int, owner: Any = None) -> GenPoolChunk:
        """Add ``[virt, virt + size)`` mapping to ``phys`` — ``gen_pool_add_owner()``.

        Raises:
            DmaBufError(EINVAL): size not a positive multiple of the granule, or overlap with a
                chunk already in the pool.

        Kernel: lib/genalloc.c, gen_pool_add_owner().
        """
        g = self.granule
        if size <= 0 or size % g or virt < 0 or virt % g:
            raise DmaBufError(errno.EINVAL, f"gen_pool_add: range {virt:#x}+{size:#x} must be "
                              f"positive and aligned to the {g}-byte granule")
        with self._lock:
            for c in self.chunks:
                if virt <= c.end_addr and c.start_addr < virt + size:
                    raise DmaBufError(errno.EINVAL, f"gen_pool_add: {virt:#x}+{size:#x} overlaps "
                                      f"the chunk at {c.start_addr:#x}")
            chunk = GenPoolChunk(virt, virt + size - 1, phys, np.zeros(size // g, dtype=bool),
                                 owner)
            self.chunks.insert(0, chunk)
        return chunk

    def alloc_owner(self, size: int) -> tuple[int, Any]:
        """First-fit allocation of ``size`` bytes — ``gen_pool_alloc_owner()``.

        Returns:
            ``(addr, owner)``; ``(0, None)`` when ``size`` is 0 or no chunk has room (the
            kernel's NULL).

        Raises: DmaBufError(EINVAL) when ``size`` is not a non-negative int.
        Kernel: lib/genalloc.c, gen_pool_alloc_owner().
        """
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
            raise DmaBufError(errno.EINVAL, f"gen_pool_alloc: size must be a non-negative int, "
                              f"not {size!r}")
        if size == 0:
            return 0, None
        nr = -(-int(size) // self.granule)
        with self._lock:
            for c in self.chunks:
                if c.bits.size - int(np.count_nonzero(c.bits)) < nr:
                    continue
                i = _first_fit(c.bits, nr)
                if i < 0:
                    continue
                c.bits[i:i + nr] = True
                return c.start_addr + i * self.granule, c.owner
        return 0, None

    def free_owner(self, addr: int, size: int) -> Any:
        """Return ``size`` bytes at ``addr`` to the pool — ``gen_pool_free_owner()``.

        Returns:
            The chunk's owner cookie.

        Raises:
            ContractViolation("gen_pool_free"): ``addr`` is in no chunk, the range runs past the
                chunk, or some of its pages are not allocated (the kernel ``BUG_ON``s).

        Kernel: lib/genalloc.c, gen_pool_free_owner().
        """
        nr = -(-int(size) // self.granule)
        with self._lock:
            for c in self.chunks:
                if c.start_addr <= addr <= c.end_addr:
                    i = (addr - c.start_addr) // self.granule
                    if (addr - c.start_addr) % self.granule or i + nr > c.bits.size or nr <= 0:
                        raise ContractViolation("gen_pool_free", f"free of {addr:#x}+{size:#x} "
                                                "is misaligned or runs past its chunk")
                    if not bool(c.bits[i:i + nr].all()):
                        raise ContractViolation("gen_pool_free", f"free of {addr:#x}+{size:#x} "
                                                "covers pages that are not allocated (double "
                                                "free?)")
                    c.bits[i:i + nr] = False
                    return c.owner
        raise ContractViolation("gen_pool_free", f"address {addr:#x} is not in this pool")

    def virt_to_phys(self, addr: int) -> int:
        """The chunk "physical" (bus) address of ``addr``; -1 if none — gen_pool_virt_to_phys().

        Kernel: lib/genalloc.c, gen_pool_virt_to_phys().
        """
        for c in self.chunks:
            if c.start_addr <= addr <= c.end_addr:
                return c.phys_addr + (addr - c.start_addr)
        return -1

    def has_addr(self, addr: int, size: int) -> bool:
        """``gen_pool_has_addr()``: the whole range lies in one chunk.

        Kernel: lib/genalloc.c, gen_pool_has_addr().
        """
        end = addr + size - 1
        return any(c.start_addr <= addr and end <= c.end_addr for c in self.chunks)

    def size(self) -> int:
        """Total bytes of all chunks — ``gen_pool_size()``.

        Kernel: lib/genalloc.c, gen_pool_size().
        """
        return sum(c.size for c in self.chunks)

    def avail(self) -> int:
        """Free bytes — ``gen_pool_avail()``.

        Kernel: lib/genalloc.c, gen_pool_avail().
        """
        return sum(int(c.bits.size - np.count_nonzero(c.bits)) * self.granule
                   for c in self.chunks)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly snapshot.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {"size": self.size(), "available": self.avail(), "granule": self.granule,
                "chunks": [{"start": c.start_addr, "size": c.size, "phys": c.phys_addr,
                            "used_pages": int(np.count_nonzero(c.bits))} for c in self.chunks]}
