"""The modelled computer: memory, PCI fabric, IOMMU, DMA views and bound drivers.

The kernel has no single "platform" object: what this module gathers is spread over the boot of
a machine — ``memblock`` registering system RAM per NUMA node (mm/memblock.c), the PCI core
assigning BARs (drivers/pci/setup-res.c), the IOMMU core creating one default domain per IOMMU
group (drivers/iommu/iommu.c, ``iommu_group_alloc_default_domain()``), ``pci_setup_device()``
giving every function a ``struct device`` with a 32-bit DMA mask, and the driver core binding
drivers to devices (drivers/base/dd.c, ``driver_probe_device()``; ``/sys/bus/pci/drivers/*/bind``).

:class:`Platform` builds that state from a :class:`~dmabuf.pci.topology.Topology` (which also *is*
the :class:`~dmabuf.dma.fabric.P2PFabric` the DMA layer asks P2P questions through):

* one :class:`~dmabuf.mm.phys.PhysMemory` with one system-RAM region per NUMA node
  (``"ram<node>"``, placed from 4 GiB up, above the PCI hole, avoiding every BAR) and every
  page-aligned MEM BAR of the topology registered as an MMIO region (``Topology.attach_memory``,
  regions named ``"<bdf> BAR<n>"``);
* one :class:`~dmabuf.dma.iommu.Iommu` (default domain type from ``iommu=``) or none;
* one :class:`~dmabuf.dma.device.DmaDevice` per PCI function (``DmaDevice.from_fabric``): in
  its IOMMU group's default domain when the platform has an IOMMU and the function a group,
  dma-direct otherwise; the kernel's default 32-bit mask until a driver raises it;
* a registry of drivers bound to endpoints: :meth:`Platform.bind` ``(driver_cls, "gpu0",
  **params)`` constructs the driver (its ``__init__`` is the probe), :meth:`Platform.device`
  finds it by name or BDF, :meth:`Platform.unbind` / :meth:`Platform.close` remove them in
  reverse order.

Contract: a platform is built on one machine (``machine=`` or the current one) and every object
it makes uses that machine. Build it inside the controlled scheduler's run when exploring
schedules. Teardown (:meth:`close`, or the context manager) removes the drivers, newest first;
a driver whose ``remove`` fails is still unbound and the first error is re-raised after the
others were removed.

Locking: the driver registry is protected by an internal lock held only inside ``bind`` /
``unbind`` bookkeeping (never across a driver's probe or remove, which may block).

Kernel: mm/memblock.c (memblock_add_node), drivers/pci/setup-res.c, drivers/pci/probe.c
(pci_setup_device: 32-bit default DMA mask), drivers/iommu/iommu.c (default domains, iommu.strict,
iommu.passthrough), drivers/base/dd.c (driver_probe_device, device_release_driver).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from dmabuf.dma.device import DmaDevice
from dmabuf.dma.iommu import Iommu, IommuDomainType
from dmabuf.errors import DmaBufError
from dmabuf.machine import Machine, current_machine
from dmabuf.mm.phys import PAGE_SIZE, MemKind, PhysMemory, PhysRegion
from dmabuf.pci.topology import PciDev, Topology

if TYPE_CHECKING:
    from dmabuf.devices.base import Device

__all__ = ["DEFAULT_RAM_SIZE", "Platform"]

_GIB = 1 << 30
#: System RAM of a platform unless ``ram_size`` says otherwise (sparse: costs nothing untouched).
DEFAULT_RAM_SIZE = 64 * _GIB
#: Lowest address of system RAM: above the 32-bit PCI hole, as on x86 machines with > 4 GiB.
_RAM_BASE = 4 * _GIB

_IOMMU_MODES: dict[str, IommuDomainType | None] = {
    "off": None, "none": None,
    "lazy": IommuDomainType.DMA_FQ, "dma-fq": IommuDomainType.DMA_FQ,
    "strict": IommuDomainType.DMA, "dma": IommuDomainType.DMA,
    "passthrough": IommuDomainType.IDENTITY, "identity": IommuDomainType.IDENTITY,
}

D = TypeVar("D", bound="Device")


def _iommu_type(iommu: object) -> IommuDomainType | None:
    if iommu is None or iommu is False:
        return None
    if isinstance(iommu, IommuDomainType):
        if iommu in (IommuDomainType.BLOCKED, IommuDomainType.UNMANAGED):
            raise DmaBufError(errno.EINVAL, f"iommu={iommu.name}: a default domain is DMA, DMA_FQ "
                              "or IDENTITY (UNMANAGED/BLOCKED domains are attached by VFIO/"
                              "iommufd later)")
        return iommu
    if isinstance(iommu, str) and iommu.lower() in _IOMMU_MODES:
        return _IOMMU_MODES[iommu.lower()]
    raise DmaBufError(errno.EINVAL, f"iommu={iommu!r}: use 'lazy' (DMA_FQ, the x86 default), "
                      "'strict' (DMA), 'passthrough' (IDENTITY), 'off' (no IOMMU: dma-direct) or "
                      "an IommuDomainType")


class Platform:
    """One modelled computer: RAM, BARs, IOMMU, per-function DMA views, bound drivers.

    Args:
        topology: the PCI fabric — a :class:`~dmabuf.pci.topology.Topology`, a path to a
            topology TOML file or to a sysfs root directory, or None for the embedded
            reference fabric (:func:`dmabuf.pci.default_topology`).
        machine: the machine (default: :func:`~dmabuf.machine.current_machine`).
        ram_size: bytes of system RAM in all, split evenly over the NUMA nodes the topology
            names (node 0 only when it names none); a positive multiple of ``PAGE_SIZE`` per
            node. Sparse: untouched RAM costs nothing.
        iommu: default domain type — ``"lazy"`` (``DMA_FQ``, default, the x86 default),
            ``"strict"`` (``DMA``, ``iommu.strict=1``), ``"passthrough"`` (``IDENTITY``,
            ``iommu.passthrough=1``), ``"off"``/None (no IOMMU: every device does dma-direct),
            or an :class:`~dmabuf.dma.iommu.IommuDomainType`. Functions without an IOMMU group
            do dma-direct either way.
        poison_on_free: PhysMemory page poisoning on free (default True).

    Attributes:
        machine, topology (also :attr:`fabric`), phys, iommu (None when off), ram (regions by
        NUMA node), bars (MMIO regions by name ``"<bdf> BAR<n>"``).

    Context: builds everything at once; never blocks.
    Raises: DmaBufError(EINVAL): bad ``ram_size``/``iommu``; DmaBufError(ENOENT/EINVAL): a
        topology file/sysfs root that cannot be loaded; TypeError for wrong types.
    Kernel: see the module docstring.
    """

    def __init__(self, topology: Topology | str | Path | None = None, *,
                 machine: Machine | None = None, ram_size: int = DEFAULT_RAM_SIZE,
                 iommu: IommuDomainType | str | None = "lazy",
                 poison_on_free: bool = True) -> None:
        m = machine if machine is not None else current_machine()
        if not isinstance(m, Machine):
            raise TypeError(f"machine must be a Machine, not {type(m).__name__}")
        self.machine = m
        self.topology = _load_topology(topology)
        if isinstance(ram_size, bool) or not isinstance(ram_size, int):
            raise TypeError(f"ram_size must be an int (bytes), not {type(ram_size).__name__}")
        nodes = self._numa_nodes()
        if ram_size <= 0 or ram_size % (PAGE_SIZE * len(nodes)):
            raise DmaBufError(errno.EINVAL, f"ram_size {ram_size:#x} must be a positive multiple "
                              f"of PAGE_SIZE x {len(nodes)} NUMA node(s)")
        dom_type = _iommu_type(iommu)
        self.phys = PhysMemory(m, poison_on_free=poison_on_free)
        #: MMIO regions of the BARs, by region name (``"0000:03:00.0 BAR1"``).
        self.bars: dict[str, PhysRegion] = self.topology.attach_memory(self.phys)
        #: System RAM regions by NUMA node.
        self.ram: dict[int, PhysRegion] = {}
        per_node = ram_size // len(nodes)
        for node in nodes:
            base = self._free_base(per_node)
            self.ram[node] = self.phys.add_region(f"ram{node}", per_node, MemKind.RAM,
                                                  base=base, numa_node=node)
        self.iommu: Iommu | None = None
        if dom_type is not None:
            self.iommu = Iommu(dom_type, machine=m)
        self._dma: dict[str, DmaDevice] = {}
        for pdev in self.topology.devices:
            self._dma[pdev.bdf] = DmaDevice.from_fabric(pdev.bdf, self.phys, self.topology,
                                                        self.iommu, machine=m)
        self._lock = threading.Lock()
        self._bound: dict[str, Device] = {}
        self._order: list[str] = []
        self._saved_driver: dict[str, str | None] = {}
        self._closed = False
        m.trace.emit("platform_init", topology=self.topology.source,
                     functions=len(self._dma), ram=ram_size,
                     iommu=None if dom_type is None else dom_type.value)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def default(cls, **kwargs: Any) -> Platform:
        """A platform on the embedded reference fabric (spec p2p §6.2); kwargs: constructor.

        Model-only: builds the modelled computer on the project's reference fabric.
        """
        return cls(None, **kwargs)

    def _numa_nodes(self) -> list[int]:
        nodes = {n for n in (d.numa_node for d in self.topology.devices)
                 if n is not None and n >= 0}
        nodes |= {h.numa_node for h in self.topology.host_bridges
                  if h.numa_node is not None and h.numa_node >= 0}
        return sorted(nodes) or [0]

    def _free_base(self, size: int) -> int:
        """Lowest 1 GiB-aligned address >= 4 GiB where ``size`` bytes overlap no region."""
        base = _RAM_BASE
        for r in sorted(self.phys.regions, key=lambda r: r.base):
            if base < r.end and r.base < base + size:
                base = -(-r.end // _GIB) * _GIB
        return base

    # ------------------------------------------------------------------ lookups
    @property
    def fabric(self) -> Topology:
        """The P2P fabric (the topology implements :class:`~dmabuf.dma.fabric.P2PFabric`)."""
        return self.topology

    def pci_dev(self, ref: str | PciDev) -> PciDev:
        """The PCI function called ``ref`` (name or BDF) — ``pci_get_domain_bus_and_slot()``.

        Raises: DmaBufError(ENODEV): unknown (the message lists candidates).

        Kernel: drivers/pci/search.c, pci_get_domain_bus_and_slot().
        """
        return self.topology.device(ref)

    def dma_device(self, ref: str | PciDev) -> DmaDevice:
        """The DMA view (``struct device``) of the function ``ref`` (name or BDF).

        Raises: DmaBufError(ENODEV): unknown function.

        Model-only: lookup of a function's struct device (DMA view) in the modelled computer.
        """
        return self._dma[self.topology.device(ref).bdf]

    @property
    def dma_devices(self) -> dict[str, DmaDevice]:
        """Every function's DMA view, by BDF (a copy)."""
        return dict(self._dma)

    def numa_node_of(self, ref: str | PciDev) -> int:
        """NUMA node of a function's memory: its own, else its host bridge's, else the first.

        Kernel: include/linux/device.h, dev_to_node() (with the model's fallbacks).
        """
        pdev = self.topology.device(ref)
        for n in (pdev.numa_node,
                  pdev.host_bridge.numa_node if pdev.host_bridge is not None else None):
            if n is not None and n in self.ram:
                return n
        return next(iter(self.ram))

    # ------------------------------------------------------------------ system memory
    def alloc_ram(self, nbytes: int, label: str, *, node: int | None = None,
                  max_extent: int | None = None, contiguous: bool = False, zero: bool = False,
                  rng: np.random.Generator | None = None) -> tuple[int, np.ndarray]:
        """Allocate system RAM pages for a new owner — ``alloc_pages_node()``.

        Args:
            nbytes: bytes (> 0; rounded up to pages).
            label: owner label (shown in fault messages).
            node: NUMA node (default: the first).
            max_extent / contiguous / zero / rng: as :meth:`PhysMemory.alloc`.
        Context: never blocks.
        Returns: ``(owner id, RANGE_DTYPE page extents)``.
        Raises: DmaBufError(EINVAL): bad size or unknown node; DmaBufError(ENOMEM): RAM full.
        Kernel: mm/page_alloc.c, __alloc_pages_node().
        """
        region = self._ram_region(node)
        owner = self.phys.new_owner(label)
        ranges = self.phys.alloc(region, nbytes, owner, max_extent=max_extent,
                                 contiguous=contiguous, zero=zero, rng=rng)
        return owner, ranges

    def _ram_region(self, node: int | None) -> PhysRegion:
        if node is None:
            return next(iter(self.ram.values()))
        if node not in self.ram:
            raise DmaBufError(errno.EINVAL, f"no NUMA node {node!r}; nodes: {sorted(self.ram)}")
        return self.ram[node]

    def free_ram(self, ranges: np.ndarray) -> None:
        """Free pages from :meth:`alloc_ram` (poisoned) — ``__free_pages()``.

        Kernel: mm/page_alloc.c, __free_pages().
        """
        self.phys.free(ranges)

    # ------------------------------------------------------------------ driver binding
    def bind(self, driver_cls: type[D], ref: str | PciDev, **params: Any) -> D:
        """Bind a driver to an endpoint and probe it — ``driver_probe_device()``.

        The driver's constructor is its probe: ``driver_cls(platform, pdev, **params)``. As
        ``really_probe()`` sets ``dev->driver`` before calling ``drv->probe``, ``pdev.driver``
        is the driver's name while the probe runs (its ``dev_printk`` lines read
        ``"<driver> <bdf>: ..."``); if the probe fails it is put back as it was (the kernel
        clears it: the model restores what a captured topology recorded).

        Args:
            driver_cls: a :class:`~dmabuf.devices.base.Device` subclass.
            ref: name (``"gpu0"``) or BDF of the function.
            **params: driver parameters (module parameters / probe options).
        Context: may block (the probe may); takes the registry lock briefly.
        Returns: the bound driver instance.
        Raises:
            DmaBufError(ENODEV): unknown function, not an endpoint (a bridge or the root
                complex), or the driver does not match it (``driver_cls.match``: the kernel's
                ``pci_match_device`` failing, which makes sysfs bind return -ENODEV); the platform
                is closed.
            DmaBufError(EBUSY): a driver is already bound to it.
            TypeError: ``driver_cls`` is not a Device subclass.
            what the probe raises (nothing is left bound then).
        Kernel: drivers/base/dd.c, driver_probe_device(); drivers/pci/pci-driver.c,
            pci_match_device(), pci_device_probe().
        """
        from dmabuf.devices.base import Device
        if not (isinstance(driver_cls, type) and issubclass(driver_cls, Device)):
            raise TypeError(f"driver_cls must be a Device subclass, not {driver_cls!r}")
        pdev = self.topology.device(ref)
        if not pdev.is_endpoint:
            raise DmaBufError(errno.ENODEV, f"{pdev.label} is a {pdev.kind()}: device drivers "
                              "bind to endpoints")
        if not driver_cls.match(pdev):
            raise DmaBufError(errno.ENODEV, f"{driver_cls.driver_name} does not drive "
                              f"{pdev.label} (vendor {pdev.vendor:04x}, class "
                              f"{pdev.class_code:06x}); {driver_cls.match_text()}")
        with self._lock:
            if self._closed:
                raise DmaBufError(errno.ENODEV, "the platform is closed; make a new one")
            if pdev.bdf in self._bound or pdev.bdf in self._saved_driver:
                cur = self._bound.get(pdev.bdf)
                raise DmaBufError(errno.EBUSY, f"{pdev.label} is already bound to "
                                  f"{cur.driver_name if cur else 'a probing driver'}; unbind it "
                                  "first")
            self._saved_driver[pdev.bdf] = pdev.driver   # reserve the slot during the probe
            pdev.driver = driver_cls.driver_name         # really_probe(): dev->driver = drv
        try:
            dev = driver_cls(self, pdev, **params)
        except BaseException:
            with self._lock:
                pdev.driver = self._saved_driver.pop(pdev.bdf, None)
            raise
        with self._lock:
            self._bound[pdev.bdf] = dev
            self._order.append(pdev.bdf)
        self.machine.trace.emit("driver_bind", device=pdev.bdf, dev_name=dev.name,
                                driver=driver_cls.driver_name)
        return dev

    def device(self, ref: str | PciDev) -> Device:
        """The driver instance bound to ``ref`` (name or BDF) — ``dev_get_drvdata()``.

        Raises: DmaBufError(ENODEV): unknown function, or no driver bound to it.

        Kernel: include/linux/device.h, dev_get_drvdata().
        """
        pdev = self.topology.device(ref)
        dev = self._bound.get(pdev.bdf)
        if dev is None:
            bound = ", ".join(d.name for d in self._bound.values()) or "none"
            raise DmaBufError(errno.ENODEV, f"no driver is bound to {pdev.label}; bound: {bound}")
        return dev

    @property
    def devices(self) -> dict[str, Device]:
        """Bound drivers by device name, in bind order (a copy)."""
        with self._lock:
            return {self._bound[b].name: self._bound[b] for b in self._order}

    def __iter__(self) -> Iterator[Device]:
        return iter(list(self.devices.values()))

    def unbind(self, ref: str | PciDev) -> None:
        """Remove the driver bound to ``ref`` — ``device_release_driver()``.

        Calls the driver's :meth:`~dmabuf.devices.base.Device.remove`; the function is free to
        be bound again afterwards (even if ``remove`` raised).

        Raises: DmaBufError(ENODEV): nothing bound; what ``remove`` raised.
        Kernel: drivers/base/dd.c, device_release_driver(); pci_device_remove().
        """
        dev = self.device(ref)
        try:
            dev.remove()
        finally:
            with self._lock:
                self._bound.pop(dev.bdf, None)
                if dev.bdf in self._order:
                    self._order.remove(dev.bdf)
                dev.pdev.driver = self._saved_driver.pop(dev.bdf, None)
            self.machine.trace.emit("driver_unbind", device=dev.bdf, dev_name=dev.name)

    def close(self) -> None:
        """Unbind every driver, newest first; later binds fail. Idempotent.

        Raises: the first error a driver's ``remove`` raised (after all were removed).

        Model-only: tears down the modelled computer (the kernel's analogue is shutdown/unbind of
        every driver).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            order = list(reversed(self._order))
        first: BaseException | None = None
        for bdf in order:
            try:
                self.unbind(bdf)
            except BaseException as e:  # remove the others, report the first
                if first is None:
                    first = e
        if first is not None:
            raise first

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ introspection
    def describe(self) -> dict[str, Any]:
        """Snapshot: topology, RAM per node, BAR regions, IOMMU groups, bound drivers.

        Model-only: introspection snapshot; the kernel has no such call.
        """
        return {
            "topology": self.topology.source,
            "ram": {n: {"base": r.base, "size": r.size, "free_pages": r.free_pages}
                    for n, r in self.ram.items()},
            "bars": sorted(self.bars),
            "iommu": None if self.iommu is None else self.iommu.default_type.value,
            "iommu_groups": sorted(self.iommu.groups) if self.iommu is not None else [],
            "drivers": {d.name: d.describe() for d in self},
            "closed": self._closed,
        }

    def __repr__(self) -> str:
        return (f"<Platform {self.topology.source}: {len(self._dma)} functions, "
                f"{len(self._bound)} bound{' closed' if self._closed else ''}>")


def _load_topology(topology: Topology | str | Path | None) -> Topology:
    from dmabuf.pci import default_topology, load_sysfs, load_toml
    if topology is None:
        return default_topology()
    if isinstance(topology, Topology):
        return topology
    if isinstance(topology, (str, Path)):
        p = Path(topology)
        if p.is_dir():
            return load_sysfs(p)
        if p.is_file():
            return load_toml(str(p))
        raise DmaBufError(errno.ENOENT, f"topology {str(p)!r}: no such file or sysfs root")
    raise TypeError(f"topology must be a Topology, a path or None, not {type(topology).__name__}")
