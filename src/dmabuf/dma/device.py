"""A device's DMA view — the DMA fields of ``struct device`` and the requester side of a DMA.

:class:`DmaDevice` is what the DMA API is called with: the device's name (its PCI BDF), its DMA
masks, its IOMMU domain (``None`` or an ``IDENTITY`` domain: dma-direct), the P2P fabric it sits
on and the machine's :class:`~dmabuf.mm.phys.PhysMemory`.

It is also the **requester** every simulated DMA engine goes through. A device emits DMA addresses;
:meth:`DmaDevice.translate` resolves them the way the hardware does, in this order:

1. the device's DMA mask — address bits above it do not exist on the wire (fault);
2. the PCIe switch: an address inside the bus window of a peer BAR that this device reaches with
   ``BUS_ADDR`` is routed to the peer (``phys = bus - bus_offset``, the kernel's sign), bypassing
   the IOMMU;
3. otherwise the TLP goes up to the root complex: through the IOMMU page table when the device is
   in a translating domain (unmapped IOVA -> :class:`~dmabuf.errors.IommuFault`, recorded in the
   domain's fault log), or unchanged (dma-direct: DMA address = physical address);
4. the target must be real memory, and a peer BAR the fabric says is ``NOT_SUPPORTED`` from this
   device faults (the host bridge would drop the request).

:meth:`dma_read`, :meth:`dma_write` and :meth:`dma_copy` then move real bytes through
:class:`PhysMemory`; with ``expect_owner`` they first check that every page still belongs to the
buffer the mapping was made for, so a DMA through a stale mapping (after free, migration or
revoke) faults instead of silently touching someone else's memory.

Bus windows come from the fabric: exactly from ``bus_windows()`` when it implements the optional
:class:`~dmabuf.dma.fabric.P2PFabricWindows` extension (cached until its ``p2p_generation`` or
:attr:`PhysMemory.generation <dmabuf.mm.phys.PhysMemory.generation>` changes), otherwise from
``provider_at`` at the base of every MMIO region (re-probed on every use: such a fabric cannot say
when a provider appears) — plus every bus address the mapping functions hand out; see
:meth:`DmaDevice.note_bus_window`. Knowing a window asks the fabric nothing: the P2P decision
(``p2p_map_type(provider, self)``) is asked only when an emitted address actually falls in a
provider's window, so a device never fills the decision cache (or the kernel log) for providers
it does not reach — as in the kernel, where the decision is made only by ``pci_p2pdma_state()``
for a page being mapped. :meth:`DmaDevice.bus_address_mask` answers, for the buffer layer
(``SG_DMA_BUS_ADDRESS``) and RDMA umems, which DMA ranges are such bus addresses.

The physical list a translation produces is coalesced, then cut at region edges
(:meth:`PhysMemory.split_at_regions <dmabuf.mm.phys.PhysMemory.split_at_regions>`): an IOMMU
mapping may link the last page of one region and the first of a physically adjacent one.

Kernel: include/linux/device.h (dma_mask, coherent_dma_mask, bus_dma_limit, dma_parms,
iommu_group), include/linux/dma-map-ops.h (dev_is_dma_coherent), drivers/iommu/iommu.c
(report_iommu_fault()).
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmabuf.dma.defs import dma_bit_mask
from dmabuf.dma.fabric import P2PFabric, PciP2pdmaMapType, fabric_p2p_generation
from dmabuf.dma.iommu import IommuDomain, IommuDomainType, IommuFaultRecord
from dmabuf.errors import DmaBufError, IommuFault
from dmabuf.mm.phys import MemKind, PhysMemory
from dmabuf.mm.ranges import RANGE_DTYPE, as_ranges, coalesce

__all__ = ["DmaDevice"]

_NO_WINDOWS = np.zeros(0, dtype=np.uint64)


@dataclass(frozen=True)
class _BusWindow:
    """A peer BAR on the bus: ``[bus_start, bus_start + size)``; ``phys = bus - bus_offset``
    (``bus_offset`` with the kernel's sign)."""

    bus_start: int
    size: int
    bus_offset: int
    provider: str


class DmaDevice:
    """The DMA side of one device — ``struct device`` as the DMA API sees it.

    Args:
        name: the device name; a PCI BDF (``"0000:03:00.0"``) when it is on a fabric.
        phys: the machine's physical memory.
        fabric: the P2P fabric (``dmabuf.pci`` topology), or ``None`` for no P2P knowledge.
        iommu: the IOMMU domain of the device's group; ``None`` or an ``IDENTITY`` domain means
            dma-direct.
        dma_mask: streaming DMA mask. The kernel's default for a PCI device is 32 bits
            (``pci_setup_device``); drivers raise it with ``dma_set_mask_and_coherent()``.
            ``None`` models a device without a DMA mask (every mapping fails).
        coherent_dma_mask: defaults to ``dma_mask``.
        bus_dma_limit: bus/interconnect limit (0 = none), ``min_not_zero``-combined with the mask.
        max_seg_size: ``dma_get_max_seg_size()`` (kernel default without dma_parms: 64 KiB).
        seg_boundary_mask: ``dma_get_seg_boundary()`` (default 4 GiB - 1).
        coherent: cache-coherent DMA (x86 PCI: always).
        machine: the machine (WARN log, clock, trace); default :func:`current_machine`.

    Kernel: include/linux/device.h; drivers/pci/probe.c, pci_setup_device() (32-bit default).
    """

    def __init__(self, name: str, phys: PhysMemory, *, fabric: P2PFabric | None = None,
                 iommu: IommuDomain | None = None, dma_mask: int | None = (1 << 32) - 1,
                 coherent_dma_mask: int | None = None, bus_dma_limit: int = 0,
                 max_seg_size: int = 1 << 16, seg_boundary_mask: int = (1 << 32) - 1,
                 coherent: bool = True, machine: Any = None) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("device name must be a non-empty str")
        if not isinstance(phys, PhysMemory):
            raise TypeError(f"phys must be a PhysMemory, not {type(phys).__name__}")
        if iommu is not None and not isinstance(iommu, IommuDomain):
            raise TypeError(f"iommu must be an IommuDomain or None, not {type(iommu).__name__}")
        if fabric is not None and not isinstance(fabric, P2PFabric):
            raise TypeError("fabric must implement dmabuf.dma.fabric.P2PFabric")
        for v, nm in ((dma_mask, "dma_mask"), (coherent_dma_mask, "coherent_dma_mask")):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                  or not 0 <= v <= dma_bit_mask(64)):
                raise DmaBufError(errno.EINVAL, f"{nm} {v!r} must be an int in 0..2^64-1")
        if max_seg_size <= 0:
            raise DmaBufError(errno.EINVAL, "max_seg_size must be positive")
        if machine is None:
            from dmabuf.machine import current_machine
            machine = current_machine()
        self.machine = machine
        self.name = name
        self.phys = phys
        self.fabric = fabric
        self.iommu: IommuDomain | None = None
        self.dma_mask = dma_mask
        self.coherent_dma_mask = dma_mask if coherent_dma_mask is None else coherent_dma_mask
        self.bus_dma_limit = bus_dma_limit
        self.max_seg_size = max_seg_size
        self.seg_boundary_mask = seg_boundary_mask
        self.coherent = coherent
        #: iommu_dma_alloc_iova tries 32-bit IOVAs first for PCI devices until that fails once.
        self.pci_32bit_workaround = True
        #: Faults this device caused (all paths; the domain keeps its own log too).
        self.faults: list[IommuFaultRecord] = []
        #: dma-debug: live single mappings, dma_addr -> [(size, dir, attrs), ...].
        self.debug_maps: dict[int, list[tuple[int, int, int]]] = {}
        #: dma-debug: live range mappings (dma_map_phys_ranges), by id.
        self.debug_range_maps: dict[int, Any] = {}
        #: dma_buf_phys_vec_to_sgt wrappers, by id of the returned table.
        self.dma_buf_dma: dict[int, Any] = {}
        self.stats = {"direct_maps": 0, "iommu_maps": 0, "bus_addr_maps": 0,
                      "bytes_read": 0, "bytes_written": 0}
        self._lock = threading.Lock()
        self._noted_windows: dict[tuple[int, int], _BusWindow] = {}
        #: ((phys generation, fabric generation), windows sorted by bus_start, their starts and
        #: ends as uint64 arrays) — valid while both generations hold.
        self._window_cache: tuple[tuple[int, int], list[_BusWindow], np.ndarray,
                                  np.ndarray] | None = None
        #: provider -> "reached by bus address" (p2p_map_type is BUS_ADDR), asked lazily; reset
        #: with the window cache.
        self._bus_reach: dict[str, bool] = {}
        self._by_dma: dict[tuple[bytes, int], list[Any]] = {}
        if iommu is not None:
            self.attach_domain(iommu)

    # ------------------------------------------------------------------ configuration
    def attach_domain(self, domain: IommuDomain | None) -> None:
        """Put the device in ``domain`` (None: no IOMMU) — ``iommu_attach_group()``.

        Kernel: drivers/iommu/iommu.c, iommu_attach_group().
        """
        if self.iommu is not None and self.name in self.iommu.devices:
            self.iommu.devices.remove(self.name)
        self.iommu = domain
        if domain is not None:
            domain.devices.append(self.name)

    @classmethod
    def from_fabric(cls, name: str, phys: PhysMemory, fabric: P2PFabric, iommu: Any = None,
                    **kwargs: Any) -> DmaDevice:
        """Create the DMA view of a fabric device, in its IOMMU group's default domain.

        Args:
            iommu: an :class:`~dmabuf.dma.iommu.Iommu` (the domain is chosen by
                ``fabric.iommu_group(name)``) or ``None`` (IOMMU off: dma-direct).

        Model-only: constructor glue from the fabric model; the kernel sets this up in device probe.
        """
        domain = None
        if iommu is not None:
            group = fabric.iommu_group(name)
            if group is not None:
                domain = iommu.group_domain(group)
        return cls(name, phys, fabric=fabric, iommu=domain, **kwargs)

    @property
    def uses_dma_iommu(self) -> bool:
        """``use_dma_iommu(dev)``: the device is in a DMA-API managed (DMA / DMA_FQ) domain."""
        return self.iommu is not None and self.iommu.is_dma_api

    @property
    def dma_direct(self) -> bool:
        """True when DMA addresses are physical addresses (no domain, or identity)."""
        return self.iommu is None or self.iommu.type is IommuDomainType.IDENTITY

    def effective_mask(self) -> int:
        """``min_not_zero(*dev->dma_mask, dev->bus_dma_limit)``.

        Kernel: kernel/dma/direct.c, dma_capable() (min_not_zero(*dev->dma_mask,
        dev->bus_dma_limit)).
        """
        mask = self.dma_mask if self.dma_mask is not None else 0
        if self.bus_dma_limit and (not mask or self.bus_dma_limit < mask):
            return self.bus_dma_limit
        return mask

    def warn(self, rule: str, message: str) -> None:
        """Record a kernel WARN on the machine's log.

        Model-only: records a WARN() on the machine log, standing in for dmesg.
        """
        self.machine.warn(rule, f"{self.name}: {message}")

    # ------------------------------------------------------------------ bus windows
    def note_bus_window(self, provider: str, paddr: int, bus_offset: int) -> None:
        """Remember the bus window of the MMIO region holding ``paddr`` (called by mappers).

        The mapping functions call it for every ``BUS_ADDR`` address they hand out, so
        :meth:`translate` decodes the bus address even on a fabric that cannot list its
        windows (no :class:`~dmabuf.dma.fabric.P2PFabricWindows`) or for a BAR no provider
        lookup covers.

        Args:
            provider: BDF of the peer owning the BAR.
            paddr: a CPU physical address in the BAR's MMIO region.
            bus_offset: the provider's ``bus_offset`` with the kernel's sign,
                ``bus = paddr + bus_offset`` (``P2pdmaMapState.provider_bus_offset``).

        Context:
            Takes the device's small lock; never blocks.

        Raises:
            IommuFault: ``paddr`` is in no region.

        Kernel: none — the switch's address decode of the peer BAR (the model learns it from
        the mappings; see the module docstring).
        """
        region = self.phys.region_at(paddr)
        key = (region.base, int(bus_offset))
        if key not in self._noted_windows:
            with self._lock:
                self._noted_windows[key] = _BusWindow(region.base + int(bus_offset), region.size,
                                                      int(bus_offset), provider)
                self._window_cache = None

    def _windows(self) -> tuple[list[_BusWindow], np.ndarray, np.ndarray]:
        """Every candidate peer BAR window on the bus, sorted by ``bus_start``, with their
        starts and ends — *without* asking the fabric any P2P decision (see
        :meth:`_reaches_by_bus`)."""
        fabric = self.fabric
        if fabric is None:
            return [], _NO_WINDOWS, _NO_WINDOWS
        gen = fabric_p2p_generation(fabric)
        cache = self._window_cache
        if gen is not None and cache is not None and cache[0] == (self.phys.generation, gen):
            return cache[1], cache[2], cache[3]
        found: dict[tuple[int, int], _BusWindow] = {}
        if gen is not None:
            for w in fabric.bus_windows():  # type: ignore[attr-defined]
                off = int(w.bus_offset)
                found.setdefault((int(w.cpu_start), off),
                                 _BusWindow(int(w.cpu_start) + off, int(w.size), off,
                                            str(w.provider)))
        else:
            for reg in self.phys.regions:
                if reg.kind is not MemKind.MMIO:
                    continue
                hit = fabric.provider_at(reg.base)
                if hit is None:
                    continue
                prov, off = hit
                found.setdefault((reg.base, int(off)),
                                 _BusWindow(reg.base + int(off), reg.size, int(off), prov))
        # Windows learnt from mappings, unless the fabric already describes that bus range.
        known = [(w.bus_start, w.bus_start + w.size) for w in found.values()]
        for key, w in list(self._noted_windows.items()):
            if key in found or any(s < w.bus_start + w.size and w.bus_start < e
                                   for s, e in known):
                continue
            found[key] = w
        wins = sorted(found.values(), key=lambda w: w.bus_start)
        ws = np.array([w.bus_start for w in wins], dtype=np.uint64)
        we = np.array([w.bus_start + w.size for w in wins], dtype=np.uint64)
        with self._lock:
            self._bus_reach = {}
            if gen is not None:
                self._window_cache = (self.phys.generation, gen), wins, ws, we
        return wins, ws, we

    def _reaches_by_bus(self, w: _BusWindow) -> bool:
        """Whether this device reaches ``w``'s provider by bus address (``BUS_ADDR``).

        Asks the fabric only now — for a window an emitted address falls in — and remembers
        the answer with the window cache (a fabric without ``p2p_generation`` is asked again
        on every translation, as its windows are)."""
        hit = self._bus_reach.get(w.provider)
        if hit is not None:
            return hit
        fabric = self.fabric
        assert fabric is not None
        try:
            ok = fabric.p2p_map_type(w.provider, self.name) is PciP2pdmaMapType.BUS_ADDR
        except DmaBufError:
            ok = False
        self._bus_reach[w.provider] = ok
        return ok

    def _window_of(self, r: np.ndarray, wins: list[_BusWindow], ws: np.ndarray,
                   we: np.ndarray) -> np.ndarray:
        """Per range: the index of the window its first byte is in *and* whose provider this
        device reaches by bus address, else -1."""
        if not wins:
            return np.full(r.size, -1, dtype=np.int64)
        idx = np.searchsorted(ws, r["addr"], side="right").astype(np.int64) - 1
        inside = (idx >= 0) & (r["addr"] < we[np.maximum(idx, 0)])
        idx = np.where(inside, idx, -1)
        if bool(inside.any()):
            for i in np.unique(idx[inside]).tolist():
                if not self._reaches_by_bus(wins[i]):
                    idx[idx == i] = -1
        return idx

    def bus_address_mask(self, dma_ranges: Any) -> np.ndarray:
        """Which DMA ranges are PCI bus addresses — the ``SG_DMA_BUS_ADDRESS`` decision.

        Implements the optional :class:`dmabuf.buf.device.DmaDevBusAddress` extension of the
        ``DmaDev`` protocol: :meth:`SgTable.map <dmabuf.buf.sg_table.SgTable.map>` marks the
        entries it returns True for, as ``dma_map_sgtable()`` marks the ``BUS_ADDR`` segments
        with ``sg_dma_mark_bus_address()``.

        Args:
            dma_ranges: ``RANGE_DTYPE`` DMA ranges of this device.

        Context:
            Never blocks; takes the device's small lock.

        Returns:
            A new bool array, one per range. For a list :meth:`map_ranges` returned and that
            is still mapped, the mapping's own record (exact). Otherwise (a table built from
            ``dma_map_resource`` / ``dma_map_phys`` results, or an unmapped list) the bus
            decode :meth:`translate` applies: the range starts in the BAR window of a peer
            this device reaches with ``BUS_ADDR``.

        Kernel: include/linux/scatterlist.h, sg_dma_is_bus_address(); kernel/dma/direct.c and
        drivers/iommu/dma-iommu.c, the ``PCI_P2PDMA_MAP_BUS_ADDR`` case of ``*_map_sg()``.
        """
        r = as_ranges(dma_ranges)
        key = r.tobytes()
        with self._lock:
            for d in (0, 1, 2):
                lst = self._by_dma.get((key, d))
                if lst:
                    return np.asarray(lst[-1].bus_address, dtype=bool).copy()
        wins, ws, we = self._windows()
        return self._window_of(r, wins, ws, we) >= 0

    # ------------------------------------------------------------------ translation
    def _record(self, fault: IommuFault, access: str, reason: str | None = None) -> None:
        dom = self.iommu
        now = float(self.machine.sched.now())
        rec = IommuFaultRecord(now, self.name, int(fault.dma_addr or 0), access,
                               reason or (fault.strerror or ""))
        with self._lock:
            self.faults.append(rec)
        if dom is not None and not dom.translates:
            dom.faults.append(rec)
        trace = self.machine.trace
        if trace.active:
            trace.emit("dma_fault", device=self.name, dma_addr=rec.dma_addr, access=access,
                       reason=rec.reason)

    def _fault(self, dma_addr: int, access: str, reason: str) -> IommuFault:
        f = IommuFault(f"{self.name}: DMA {access} at {dma_addr:#x}: {reason}",
                       dma_addr=dma_addr, device=self.name)
        self._record(f, access, reason)
        return f

    def translate(self, dma_ranges: Any, access: str | None = None) -> np.ndarray:
        """Resolve DMA addresses emitted by this device to physical ranges (see module doc).

        Args:
            dma_ranges: ``RANGE_DTYPE`` DMA ranges as handed out by the mapping functions.
            access: ``"read"`` (device reads memory: needs a mapping with IOMMU_READ),
                ``"write"`` (device writes memory: IOMMU_WRITE) or ``None`` (any mapping; what
                the buffer layer's ``DmaDev.translate(dma)`` uses).

        Context:
            Never blocks; takes no lock the caller could hold.

        Returns:
            Physical ranges, coalesced, in the byte order of ``dma_ranges``.

        Raises:
            IommuFault (EFAULT): an address beyond the DMA mask, an unmapped / wrong-permission /
                unsynced IOVA, no memory behind the address, or a peer the fabric does not let
                this device reach. Every fault is appended to :attr:`faults` (and to the
                domain's log).

        Kernel: the IOMMU page walk and PCIe routing; drivers/iommu/iommu.c,
        report_iommu_fault().
        """
        if access not in ("read", "write", None):
            raise ValueError(f"access must be 'read', 'write' or None, not {access!r}")
        acc = access or "access"
        r = as_ranges(dma_ranges)
        r = r[r["len"] != 0]
        if r.size == 0:
            return np.zeros(0, dtype=RANGE_DTYPE)
        mask = self.effective_mask()
        last = r["addr"] + (r["len"] - np.uint64(1))
        over = (last > np.uint64(mask)) | (last < r["addr"])
        if bool(over.any()):
            i = int(np.argmax(over))
            raise self._fault(int(r["addr"][i]), acc,
                              f"address beyond the device DMA mask {mask:#x}")
        wins, ws, we = self._windows()
        if r.size == 1:
            return self._translate_one(r, wins, access, acc)
        cls = self._classify(r, wins, ws, we, acc)
        pieces: list[np.ndarray] = []
        # runs of consecutive ranges with the same class keep the byte order
        bounds = np.flatnonzero(np.diff(cls)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [r.size]))
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            run = r[s:e]
            c = int(cls[s])
            if c >= 0:
                w = wins[c]
                out = run.copy()
                out["addr"] = run["addr"] - np.uint64(w.bus_offset) if w.bus_offset >= 0 else \
                    run["addr"] + np.uint64(-w.bus_offset)
                pieces.append(out)
            elif self.iommu is not None and self.iommu.translates:
                try:
                    pieces.append(self.iommu.translate(run, access, device=self.name))
                except IommuFault as f:
                    with self._lock:
                        self.faults.append(self.iommu.faults[-1])
                    raise f from None
            else:
                pieces.append(run.copy())
        phys = coalesce(np.concatenate(pieces)) if len(pieces) > 1 else coalesce(pieces[0])
        phys = self.phys.split_at_regions(phys)
        self._check_target(phys, acc)
        return phys

    def _translate_one(self, r: np.ndarray, wins: list[_BusWindow], access: str | None,
                       acc: str) -> np.ndarray:
        """``translate`` of a single range with plain ints (the common DMA-engine case)."""
        a, n = r.tolist()[0]
        for w in wins:
            if w.bus_start <= a < w.bus_start + w.size and self._reaches_by_bus(w):
                if a + n > w.bus_start + w.size:
                    raise self._fault(a, acc, f"range runs past the end of peer BAR window of "
                                      f"{w.provider}")
                phys = np.array([(a - w.bus_offset, n)], dtype=RANGE_DTYPE)
                break
        else:
            if self.iommu is not None and self.iommu.translates:
                try:
                    phys = self.iommu.translate(r, access, device=self.name)
                except IommuFault as f:
                    with self._lock:
                        self.faults.append(self.iommu.faults[-1])
                    raise f from None
            else:
                phys = r.copy()
        phys = self.phys.split_at_regions(phys)
        self._check_target(phys, acc)
        return phys

    def _classify(self, r: np.ndarray, wins: list[_BusWindow], ws: np.ndarray, we: np.ndarray,
                  access: str) -> np.ndarray:
        """Window index per range (-1: not a bus address of a BUS_ADDR peer)."""
        idx = self._window_of(r, wins, ws, we)
        inside = idx >= 0
        if bool(inside.any()):
            partial = inside & (r["addr"] + r["len"] > we[np.maximum(idx, 0)])
            if bool(partial.any()):
                i = int(np.argmax(partial))
                raise self._fault(int(r["addr"][i]), access,
                                  f"range runs past the end of peer BAR window of "
                                  f"{wins[int(idx[i])].provider}")
        return idx

    def _check_target(self, phys: np.ndarray, access: str) -> None:
        """Fault if a piece has no memory behind it or is an unreachable peer BAR."""
        try:
            ridx = self.phys.region_indices(phys)
        except IommuFault as f:
            raise self._fault(int(f.dma_addr or 0), access,
                              "no memory or device behind this physical address") from None
        fabric = self.fabric
        if fabric is None or ridx.size == 0:
            return
        regions = self.phys.regions
        uniq = [int(ridx[0])] if ridx.size == 1 else np.unique(ridx).tolist()
        for ri in uniq:
            reg = regions[ri]
            if reg.kind is not MemKind.MMIO:
                continue
            first = int(phys["addr"][int(np.argmax(ridx == ri))])
            hit = fabric.provider_at(first)
            if hit is None:
                continue
            mt = fabric.p2p_map_type(hit[0], self.name)
            if mt is PciP2pdmaMapType.NOT_SUPPORTED:
                raise self._fault(first, access,
                                  f"peer-to-peer from {self.name} to {hit[0]} is not supported "
                                  "by the fabric (the host bridge drops the request)")

    # ------------------------------------------------------------------ buf-layer DmaDev protocol
    def map_ranges(self, phys: np.ndarray, direction: int, *, mmio: bool = False) -> np.ndarray:
        """Map CPU physical ranges for this device — ``dma_map_sgtable()`` (``DmaDev`` protocol).

        Implements :class:`dmabuf.buf.device.DmaDev` with
        :func:`~dmabuf.dma.mapping.dma_map_phys_ranges` (per-segment P2P state, one IOVA range
        behind an IOMMU). ``mmio=True`` adds ``DMA_ATTR_MMIO``.

        Returns:
            The DMA ranges (a new array); undo with :meth:`unmap_ranges` passing the same array
            (or an equal one) and direction.

        Raises:
            DmaBufError(EREMOTEIO): unsupported P2P. DmaBufError(EIO/ENOMEM/EINVAL): see
            ``dma_map_phys_ranges``. ContractViolation: invalid direction.

        Kernel: kernel/dma/mapping.c, dma_map_sgtable().
        """
        from dmabuf.dma.defs import DMA_ATTR_MMIO, valid_dma_direction
        from dmabuf.dma.mapping import dma_map_phys_ranges
        d = valid_dma_direction(direction)
        m = dma_map_phys_ranges(self, phys, d, DMA_ATTR_MMIO if mmio else 0)
        key = (m.dma.tobytes(), int(m.direction))
        with self._lock:
            self._by_dma.setdefault(key, []).append(m)
        return m.dma.copy()

    def unmap_ranges(self, dma: np.ndarray, direction: int) -> None:
        """Undo one :meth:`map_ranges` — ``dma_unmap_sgtable()`` (``DmaDev`` protocol).

        Raises:
            ContractViolation("dma_debug"): no live mapping with that DMA list and direction.

        Kernel: kernel/dma/mapping.c, dma_unmap_sgtable().
        """
        from dmabuf.dma.defs import valid_dma_direction
        from dmabuf.dma.mapping import dma_unmap_phys_ranges
        from dmabuf.errors import ContractViolation
        d = valid_dma_direction(direction)
        key = (as_ranges(dma).tobytes(), int(d))
        with self._lock:
            lst = self._by_dma.get(key)
            m = lst.pop() if lst else None
            if lst is not None and not lst:
                del self._by_dma[key]
        if m is None:
            raise ContractViolation("dma_debug", f"{self.name}: unmap_ranges of a DMA list (or "
                                    "direction) that is not mapped on this device")
        dma_unmap_phys_ranges(self, m)

    # ------------------------------------------------------------------ data movement
    def dma_read(self, dma_ranges: Any, *, expect_owner: int | None = None) -> np.ndarray:
        """The device reads memory at ``dma_ranges`` (DMA_TO_DEVICE data flow).

        Args:
            dma_ranges: DMA addresses as handed to the device.
            expect_owner: if given, every physical page must belong to this owner id.

        Returns:
            A new ``uint8`` array with the bytes.

        Raises:
            IommuFault: translation fault, or a page not owned by ``expect_owner``.

        Model-only: the bus-master read is hardware behaviour, not kernel code.
        """
        phys = self.translate(dma_ranges, "read")
        self._check_owner(phys, expect_owner, "read")
        data = self.phys.read(phys)
        self.stats["bytes_read"] += int(data.size)
        return data

    def dma_write(self, dma_ranges: Any, data: Any, *, expect_owner: int | None = None) -> None:
        """The device writes ``data`` to memory at ``dma_ranges`` (DMA_FROM_DEVICE data flow).

        Raises:
            IommuFault: translation fault or ownership mismatch (nothing is written then).
            DmaBufError(EINVAL): length mismatch.

        Model-only: the bus-master write is hardware behaviour, not kernel code.
        """
        phys = self.translate(dma_ranges, "write")
        self._check_owner(phys, expect_owner, "write")
        self.phys.write(phys, data)
        self.stats["bytes_written"] += int(phys["len"].sum()) if phys.size else 0

    def dma_copy(self, dst_dev: DmaDevice | None, dst_ranges: Any, src_ranges: Any, *,
                 src_owner: int | None = None, dst_owner: int | None = None,
                 expect_owner: int | None = None) -> int:
        """A copy engine moves bytes from ``src_ranges`` to ``dst_ranges``.

        The source is read through this device's view; the destination is written through
        ``dst_dev``'s view (``None``: this device — one engine, one requester ID).

        Args:
            dst_dev: whose DMA addresses ``dst_ranges`` are (None: self).
            dst_ranges, src_ranges: DMA ranges of equal total length.
            src_owner, dst_owner: expected owners of the source / destination pages.
            expect_owner: default for both ``src_owner`` and ``dst_owner`` (one buffer copied
                within itself, or the same owner on both sides).

        Returns:
            Bytes copied.

        Raises:
            IommuFault: translation or ownership fault on either side (nothing copied then).
            DmaBufError(EINVAL): the lengths differ.

        Model-only: a device's DMA engine doing the transfer is hardware, not kernel code.
        """
        dst_dev = self if dst_dev is None else dst_dev
        if src_owner is None:
            src_owner = expect_owner
        if dst_owner is None:
            dst_owner = expect_owner
        src = self.translate(src_ranges, "read")
        dst = dst_dev.translate(dst_ranges, "write")
        self._check_owner(src, src_owner, "read")
        dst_dev._check_owner(dst, dst_owner, "write")
        self.phys.copy(dst, src)
        n = int(src["len"].sum()) if src.size else 0
        self.stats["bytes_read"] += n
        dst_dev.stats["bytes_written"] += n
        return n

    def _check_owner(self, phys: np.ndarray, owner: int | None, access: str) -> None:
        if owner is None:
            return
        try:
            self.phys.check_owned(phys, owner)
        except IommuFault as f:
            self._record(f, access)
            raise

    # ------------------------------------------------------------------ introspection
    def describe(self) -> dict[str, Any]:
        """Snapshot of the device's DMA configuration and counters.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {
            "name": self.name,
            "dma_mask": self.dma_mask,
            "coherent_dma_mask": self.coherent_dma_mask,
            "bus_dma_limit": self.bus_dma_limit,
            "domain": None if self.iommu is None else self.iommu.name,
            "domain_type": None if self.iommu is None else self.iommu.type.value,
            "live_single_mappings": sum(len(v) for v in self.debug_maps.values()),
            "live_range_mappings": len(self.debug_range_maps),
            "faults": len(self.faults),
            **self.stats,
        }

    def __repr__(self) -> str:
        mode = "direct" if self.dma_direct else f"iommu:{self.iommu.name if self.iommu else ''}"
        return f"DmaDevice({self.name!r}, {mode}, mask={self.effective_mask():#x})"
