"""What an exporter needs from the importing device — include/linux/device.h, dma-mapping.h.

In the kernel an exporter's ``map_dma_buf`` receives ``attach->dev`` (a ``struct device``) and
maps its memory *for that device* with the DMA API (``dma_map_sgtable``, ``dma_map_phys``,
``dma_iova_link``). The dma-buf layer (layer 3 of the model) must not import the DMA layer
(layer 4), so this module defines the slice of a device the buffer layer may use, as a typed
:class:`DmaDev` Protocol:

* ``name`` — ``dev_name(dev)``;
* ``phys`` — the machine's :class:`~dmabuf.mm.phys.PhysMemory` the device reaches;
* ``map_ranges(phys, direction, mmio=False)`` — map CPU physical ranges, return DMA ranges (the
  role of ``dma_map_sgtable`` / ``dma_map_phys``; ``mmio=True`` is ``DMA_ATTR_MMIO``);
* ``unmap_ranges(dma, direction)`` — undo exactly one earlier ``map_ranges``;
* ``translate(dma)`` — what the device's DMA actually reaches: the CPU physical ranges behind DMA
  addresses (the IOMMU page walk / bus decode), faulting on untranslated addresses.

Optional extension — :class:`DmaDevBusAddress`: ``bus_address_mask(dma)`` says which ranges a
``map_ranges`` returned are PCI bus addresses (P2P ``BUS_ADDR``, routed by a switch, bypassing the
IOMMU). :meth:`SgTable.map <dmabuf.buf.sg_table.SgTable.map>` marks those entries
``SG_DMA_BUS_ADDRESS``, as ``dma_map_sgtable()`` does; a device without the method has none
(:func:`dma_bus_address_mask` is the probe).

The DMA layer's ``DmaDevice`` (IOMMU domains, IOVA allocation, P2P map types) implements the same
Protocol and the extension; :class:`DirectDev` here is the smallest faithful implementation —
**dma-direct without an IOMMU** (kernel/dma/direct.c): the DMA address of a page is its physical
address, mapping never allocates anything, and an address above the device's DMA mask fails
(``DMA_MAPPING_ERROR``, which ``dma_map_sgtable`` reports as ``-EIO``) because the model has no
swiotlb bounce buffers.

:class:`DirectDev` also plays CONFIG_DMA_API_DEBUG (kernel/dma/debug.c): it keeps the set of live
mappings, so unmapping something never mapped, or with another direction, is a
:class:`~dmabuf.errors.ContractViolation`, and (with ``check_mapped=True``, the default) a DMA
through an address that is no longer mapped faults in :meth:`DirectDev.translate` — real
dma-direct hardware would silently reach the memory; the model reports the use-after-unmap.

Directions are ``enum dma_data_direction`` (include/linux/dma-direction.h) —
:class:`DmaDataDirection`.

Locking: a device's mapping bookkeeping is protected by an internal lock held only inside one
call (never across a scheduling point); ``map_ranges``/``unmap_ranges`` never sleep.

Kernel: include/linux/dma-mapping.h, include/linux/dma-direction.h, kernel/dma/direct.c
(dma_direct_map_phys), kernel/dma/debug.c (check_unmap), drivers/dma-buf/dma-buf.c (attach->dev).
"""

from __future__ import annotations

import enum
import errno
import threading
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dmabuf.errors import ContractViolation, DmaBufError, IommuFault
from dmabuf.mm.phys import MemKind, PhysMemory
from dmabuf.mm.ranges import as_ranges

__all__ = ["DirectDev", "DmaDataDirection", "DmaDev", "DmaDevBusAddress", "check_direction",
           "dma_bus_address_mask"]


class DmaDataDirection(enum.IntEnum):
    """Direction of a DMA transfer — ``enum dma_data_direction``.

    Values are the kernel's: ``DMA_BIDIRECTIONAL`` 0, ``DMA_TO_DEVICE`` 1 (the device reads
    memory), ``DMA_FROM_DEVICE`` 2 (the device writes memory), ``DMA_NONE`` 3 (debugging only;
    mapping with it is a BUG).

    Kernel: include/linux/dma-direction.h.
    """

    BIDIRECTIONAL = 0
    TO_DEVICE = 1
    FROM_DEVICE = 2
    NONE = 3
    # The kernel's own spellings, as aliases of the same members (the DMA layer uses them).
    DMA_BIDIRECTIONAL = 0
    DMA_TO_DEVICE = 1
    DMA_FROM_DEVICE = 2
    DMA_NONE = 3


def check_direction(direction: Any) -> DmaDataDirection:
    """Validate a mapping direction — ``valid_dma_direction()`` (``BUG_ON`` in the kernel).

    Args:
        direction: an int or :class:`DmaDataDirection`.
    Context: pure.
    Returns: the direction as a :class:`DmaDataDirection`.
    Raises:
        TypeError: not an int.
        ContractViolation("valid_dma_direction"): ``DMA_NONE`` or a value outside the enum.
    Kernel: include/linux/dma-direction.h, valid_dma_direction(); kernel/dma/mapping.c BUG_ON.
    """
    if isinstance(direction, bool) or not isinstance(direction, (int, np.integer)):
        raise TypeError(f"direction must be a DmaDataDirection/int, not {type(direction).__name__}")
    d = int(direction)
    if d not in (0, 1, 2):
        raise ContractViolation("valid_dma_direction",
                                f"direction {d} is not BIDIRECTIONAL(0), TO_DEVICE(1) or "
                                "FROM_DEVICE(2); DMA_NONE must never be mapped")
    return DmaDataDirection(d)


@runtime_checkable
class DmaDev(Protocol):
    """The importing device as the buffer layer sees it — ``struct device`` + the DMA API.

    Members (all mandatory):

    * ``name`` — ``dev_name()``, shown in messages, fdinfo and traces.
    * ``phys`` — the :class:`PhysMemory` whose regions the device's DMA reaches.
    * ``map_ranges(phys, direction, *, mmio=False)`` — map CPU physical ranges
      (``RANGE_DTYPE``) for DMA by this device and return the DMA ranges, in buffer order,
      covering the same bytes (possibly merged or split differently — an IOMMU may merge a whole
      list into one IOVA range). ``mmio=True`` is ``DMA_ATTR_MMIO`` (the ranges are a peer's
      BAR, no struct page, no cache maintenance). Never blocks. Raises ``DmaBufError(EREMOTEIO)``
      when the device cannot reach peer memory (P2P not supported on the path),
      ``DmaBufError(EIO)`` when the mapping fails (DMA mask, IOVA space exhausted),
      ``DmaBufError(EINVAL)`` for malformed ranges, ``ContractViolation`` for an invalid
      direction.
    * ``unmap_ranges(dma, direction)`` — undo one ``map_ranges`` exactly (same DMA list, same
      direction — ``dma_unmap_sgtable``); anything else is a ``ContractViolation``.
    * ``translate(dma)`` — the CPU physical ranges the device's DMA to ``dma`` reaches (the IOMMU
      walk / bus decode), in order; raises :class:`~dmabuf.errors.IommuFault` for an address
      with no translation. Used by DMA engines, never by exporters.

    Kernel: include/linux/device.h (struct device), include/linux/dma-mapping.h.
    """

    name: str
    phys: PhysMemory

    def map_ranges(self, phys: np.ndarray, direction: int, *,
                   mmio: bool = False) -> np.ndarray:
        """Map CPU physical ranges for DMA by this device — ``dma_map_sgtable()``.

        Context: never blocks. Raises: DmaBufError(EREMOTEIO) when P2P is not supported on the
        path, DmaBufError(EIO) when the mapping fails, DmaBufError(EINVAL) for malformed ranges,
        ContractViolation for an invalid direction.
        Kernel: kernel/dma/mapping.c, dma_map_sgtable() (dma_map_resource() when ``mmio``).
        """
        ...

    def unmap_ranges(self, dma: np.ndarray, direction: int) -> None:
        """Undo one :meth:`map_ranges` exactly — ``dma_unmap_sgtable()``.

        Raises: ContractViolation for a list or direction that does not match a mapping.
        Kernel: kernel/dma/mapping.c, dma_unmap_sgtable().
        """
        ...

    def translate(self, dma: np.ndarray) -> np.ndarray:
        """CPU physical ranges this device's DMA to ``dma`` reaches — ``iommu_iova_to_phys()``.

        Raises: IommuFault for an address with no translation.
        Kernel: drivers/iommu/iommu.c, iommu_iova_to_phys() (the IOMMU walk / bus decode).
        """
        ...


@runtime_checkable
class DmaDevBusAddress(Protocol):
    """Optional :class:`DmaDev` extension: which DMA ranges are PCI bus addresses.

    * ``bus_address_mask(dma)`` — for DMA ranges this device's ``map_ranges`` returned, a bool
      array (one per range): True where the range is a PCI bus address of a peer BAR reached
      through a switch (``PCI_P2PDMA_MAP_BUS_ADDR``: not an IOVA, never translated by the
      IOMMU). Never blocks; pure with respect to the mapping.

    Kernel: include/linux/scatterlist.h, sg_dma_mark_bus_address() / sg_dma_is_bus_address()
    (what ``dma_map_sgtable()`` records per segment).
    """

    def bus_address_mask(self, dma: np.ndarray) -> np.ndarray:
        """Which DMA ranges are PCI bus addresses — ``sg_dma_is_bus_address()``.

        Context: never blocks.
        Kernel: include/linux/scatterlist.h, sg_dma_is_bus_address().
        """
        ...


def dma_bus_address_mask(dev: DmaDev, dma: np.ndarray) -> np.ndarray:
    """Per DMA range, is it a PCI bus address — asks :class:`DmaDevBusAddress` when implemented.

    Args:
        dev: the device that mapped ``dma``.
        dma: ``RANGE_DTYPE`` ranges ``dev.map_ranges`` returned.
    Context: never blocks.
    Returns: a new bool array, one per range; all False for a device without the extension
        (dma-direct without a fabric, e.g. :class:`DirectDev`: no bus addresses).
    Raises:
        ContractViolation("sg_dma_mark_bus_address"): the device answered with a mask of the
            wrong shape.
    Kernel: kernel/dma/mapping.c, dma_map_sgtable() (the bus-address marking of the
        ``*_map_sg()`` implementations).
    """
    r = as_ranges(dma)
    fn = getattr(dev, "bus_address_mask", None)
    if not callable(fn):
        return np.zeros(r.size, dtype=bool)
    mask = np.asarray(fn(r), dtype=bool)
    if mask.shape != (r.size,):
        raise ContractViolation("sg_dma_mark_bus_address",
                                f"{dev.name}: bus_address_mask returned shape {mask.shape} for "
                                f"{r.size} DMA ranges")
    return mask.copy()


class DirectDev:
    """A device doing dma-direct without an IOMMU: DMA address == CPU physical address.

    Args:
        name: ``dev_name()``.
        phys: the physical memory the device reaches.
        dma_mask_bits: the device's DMA mask width (``dma_set_mask(dev, DMA_BIT_MASK(n))``);
            mapping an address at or above ``2**bits`` fails with ``EIO`` (no swiotlb in the
            model). Default 64.
        p2p: whether the device can reach peer memory (``MemKind.MMIO`` regions, e.g. a BAR).
            With ``False`` mapping such a range raises ``EREMOTEIO``, as
            ``PCI_P2PDMA_MAP_NOT_SUPPORTED`` does. Default True.
        check_mapped: CONFIG_DMA_API_DEBUG-style check that :meth:`translate` only resolves
            addresses inside a live mapping (default True). With False the device behaves like
            real dma-direct hardware and reaches any memory.

    Attributes:
        map_calls, unmap_calls: how many times :meth:`map_ranges` / :meth:`unmap_ranges`
            succeeded (tests assert on them: "no mapping on attach", "unmapped once").

    Kernel: kernel/dma/direct.c (dma_direct_map_phys, dma_capable), kernel/dma/debug.c.
    """

    def __init__(self, name: str, phys: PhysMemory, *, dma_mask_bits: int = 64,
                 p2p: bool = True, check_mapped: bool = True) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("DirectDev name must be a non-empty str")
        if not isinstance(phys, PhysMemory):
            raise TypeError(f"phys must be a PhysMemory, not {type(phys).__name__}")
        if isinstance(dma_mask_bits, bool) or not isinstance(dma_mask_bits, int) \
                or not 12 <= dma_mask_bits <= 64:
            raise DmaBufError(errno.EIO, f"dma_mask_bits {dma_mask_bits!r} must be an int in "
                              "12..64 (dma_set_mask fails otherwise)")
        self.name = name
        self.phys = phys
        self.dma_mask_bits = dma_mask_bits
        self.p2p = bool(p2p)
        self.check_mapped = bool(check_mapped)
        self.map_calls = 0
        self.unmap_calls = 0
        self._lock = threading.Lock()
        # Live mappings, keyed by the bytes of the DMA list: (direction, refcount, ranges).
        self._live: dict[bytes, tuple[DmaDataDirection, int, np.ndarray]] = {}
        # Cached union of live mappings (sorted, merged), or None when stale.
        self._union: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"DirectDev({self.name!r}, live={len(self._live)})"

    # ---------------------------------------------------------------- helpers

    def _region_kinds(self, r: np.ndarray) -> np.ndarray:
        """Index of the region of each range (checked to lie inside it); IommuFault if none."""
        regions = self.phys.regions
        bases = np.array([x.base for x in regions], dtype=np.uint64)
        ends = np.array([x.end for x in regions], dtype=np.uint64)
        if r.size == 0:
            return np.zeros(0, dtype=np.int64)
        idx = np.searchsorted(bases, r["addr"], side="right").astype(np.int64) - 1
        bad = idx < 0
        safe = np.where(bad, 0, idx)
        if ends.size == 0:
            bad = np.ones(r.size, dtype=bool)
        else:
            bad |= (r["addr"] + r["len"]) > ends[safe]
        if bool(bad.any()):
            i = int(np.flatnonzero(bad)[0])
            a, n = int(r["addr"][i]), int(r["len"][i])
            raise IommuFault(f"{self.name}: [{a:#x}, {a + n:#x}) is not inside one physical "
                             "memory region", dma_addr=a, device=self.name)
        return safe

    @property
    def live_mappings(self) -> int:
        """Number of live (mapped, not yet unmapped) mapping calls — dma-debug's entry count."""
        with self._lock:
            return sum(c for _, c, _ in self._live.values())

    @property
    def mapped_bytes(self) -> int:
        """Bytes covered by live mappings (counting each mapping call once)."""
        with self._lock:
            return sum(c * int(r["len"].sum(dtype=np.uint64)) for _, c, r in self._live.values())

    # ---------------------------------------------------------------- DmaDev

    def map_ranges(self, phys: np.ndarray, direction: int, *, mmio: bool = False) -> np.ndarray:
        """Map physical ranges for DMA by this device — ``dma_map_sgtable()`` / ``dma_map_phys()``.

        dma-direct: every DMA address equals the physical address (``phys_to_dma`` with no
        offset), and the returned list has the same ranges as the input.

        Args:
            phys: ``RANGE_DTYPE`` CPU physical ranges (non-empty ranges inside regions).
            direction: :class:`DmaDataDirection` (not ``NONE``).
            mmio: ``DMA_ATTR_MMIO`` — the ranges are MMIO (a BAR); required for ``MemKind.MMIO``
                regions, forbidden for RAM.
        Context: any; never blocks. Takes the device's bookkeeping lock.
        Returns: a new ``RANGE_DTYPE`` array of DMA ranges.
        Raises:
            TypeError: not a range list.
            DmaBufError(EINVAL): empty list or a zero-length range (``dma_map_sgtable`` with
                ``nents == 0`` fails).
            DmaBufError(EIO): an address beyond the DMA mask (``dma_capable()`` false).
            DmaBufError(EREMOTEIO): MMIO memory and ``p2p=False``.
            IommuFault: a range outside every physical region.
            ContractViolation("valid_dma_direction" / "DMA_ATTR_MMIO"): bad direction; MMIO
                attribute on RAM or missing for a BAR.
        Kernel: kernel/dma/mapping.c, dma_map_sgtable(), dma_map_phys();
            kernel/dma/direct.h, dma_direct_map_phys().
        """
        d = check_direction(direction)
        r = as_ranges(phys).copy()
        if r.size == 0 or bool(np.any(r["len"] == 0)):
            raise DmaBufError(errno.EINVAL, f"{self.name}: map_ranges needs a non-empty list of "
                              "non-empty ranges (dma_map_sgtable of 0 entries fails)")
        idx = self._region_kinds(r)
        kinds = [self.phys.regions[i].kind for i in np.unique(idx).tolist()]
        is_mmio = [k is MemKind.MMIO for k in kinds]
        if any(is_mmio) and not mmio:
            raise ContractViolation("DMA_ATTR_MMIO", f"{self.name}: ranges in an MMIO region "
                                    "(a BAR, no struct page) must be mapped with mmio=True "
                                    "(DMA_ATTR_MMIO)")
        if mmio and not all(is_mmio):
            raise ContractViolation("DMA_ATTR_MMIO", f"{self.name}: mmio=True (DMA_ATTR_MMIO) on "
                                    "RAM/device memory: the attribute is only for MMIO ranges")
        if mmio and not self.p2p:
            raise DmaBufError(errno.EREMOTEIO, f"{self.name}: peer-to-peer DMA to MMIO is not "
                              "supported on this device's path (PCI_P2PDMA_MAP_NOT_SUPPORTED)")
        if self.dma_mask_bits < 64:
            limit = np.uint64(1 << self.dma_mask_bits)
            ends = r["addr"] + r["len"]
            if bool(np.any(ends > limit)):
                i = int(np.flatnonzero(ends > limit)[0])
                raise DmaBufError(errno.EIO, f"{self.name}: [{int(r['addr'][i]):#x}, "
                                  f"{int(ends[i]):#x}) is beyond the {self.dma_mask_bits}-bit DMA "
                                  "mask and there is no swiotlb: use a device with a wider mask")
        key = r.tobytes()
        with self._lock:
            if key in self._live:
                od, c, arr = self._live[key]
                self._live[key] = (od, c + 1, arr)
            else:
                self._live[key] = (d, 1, r)
            self._union = None
            self.map_calls += 1
        return r.copy()

    def unmap_ranges(self, dma: np.ndarray, direction: int) -> None:
        """Unmap one earlier mapping — ``dma_unmap_sgtable()`` / ``dma_unmap_phys()``.

        Args:
            dma: the exact list :meth:`map_ranges` returned.
            direction: the direction it was mapped with.
        Context: any; never blocks.
        Raises:
            ContractViolation("dma_debug_unmap"): the list was never mapped (or already
                unmapped), or the direction differs — what CONFIG_DMA_API_DEBUG reports.
        Kernel: kernel/dma/mapping.c, dma_unmap_sgtable(); kernel/dma/debug.c, check_unmap().
        """
        d = check_direction(direction)
        key = as_ranges(dma).tobytes()
        with self._lock:
            ent = self._live.get(key)
            if ent is None:
                raise ContractViolation("dma_debug_unmap", f"{self.name}: unmapping DMA ranges "
                                        "that are not mapped (never mapped, unmapped twice, or "
                                        "split differently from the mapping)")
            od, c, arr = ent
            if od != d:
                raise ContractViolation("dma_debug_unmap", f"{self.name}: unmap with direction "
                                        f"{d.name}, mapped with {od.name}")
            if c == 1:
                del self._live[key]
            else:
                self._live[key] = (od, c - 1, arr)
            self._union = None
            self.unmap_calls += 1

    def _live_union(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._union is not None:
                return self._union
            parts = [r for _, _, r in self._live.values()]
            if not parts:
                z = np.zeros(0, dtype=np.uint64)
                self._union = (z, z)
                return self._union
            allr = np.concatenate(parts)
            order = np.argsort(allr["addr"], kind="stable")
            s = allr["addr"][order]
            e = s + allr["len"][order]
            run_end = np.maximum.accumulate(e)
            begin = np.ones(s.size, dtype=bool)
            begin[1:] = s[1:] > run_end[:-1]
            idx = np.flatnonzero(begin)
            starts = s[idx]
            ends = np.maximum.reduceat(e, idx)
            self._union = (starts, ends)
            return self._union

    def translate(self, dma: np.ndarray) -> np.ndarray:
        """Resolve DMA ranges to CPU physical ranges — the (absent) IOMMU walk of dma-direct.

        Identity translation; with ``check_mapped`` every byte must lie inside a live mapping
        (dma-debug's view of a DMA through an unmapped address).

        Args:
            dma: ``RANGE_DTYPE`` DMA ranges.
        Context: any; never blocks.
        Returns: the same ranges as CPU physical ranges (a new array).
        Raises:
            IommuFault: a range not covered by one live mapping (``check_mapped``), or outside
                every physical region.
        Kernel: kernel/dma/direct.h, dma_to_phys().
        """
        r = as_ranges(dma)
        r = r[r["len"] != 0].copy()
        if r.size == 0:
            return r
        if self.check_mapped:
            starts, ends = self._live_union()
            i = np.searchsorted(starts, r["addr"], side="right").astype(np.int64) - 1
            ok = i >= 0
            safe = np.where(ok, i, 0)
            if starts.size:
                ok &= (r["addr"] + r["len"]) <= ends[safe]
            else:
                ok[:] = False
            if not bool(ok.all()):
                j = int(np.flatnonzero(~ok)[0])
                a = int(r["addr"][j])
                raise IommuFault(f"{self.name}: DMA to [{a:#x}, {a + int(r['len'][j]):#x}) which "
                                 "is not mapped for this device (use after unmap, or never "
                                 "mapped)", dma_addr=a, device=self.name)
        self._region_kinds(r)
        return r
