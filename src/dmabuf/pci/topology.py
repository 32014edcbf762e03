"""The PCI hierarchy — include/linux/pci.h (struct pci_dev, pci_host_bridge), drivers/pci/probe.c.

A :class:`Topology` is the model's PCI device tree: host bridges (one root bus each, with the
"root device" the P2PDMA allow-list looks at), and under them functions — root ports, switch
upstream/downstream ports, endpoints, multi-function devices and SR-IOV virtual functions — with
what the P2P decision and the DMA layer need to know about each: vendor/device/class, BARs
(CPU physical address, size, prefetchable, 64-bit, bus offset), the ACS capability and control
words, link speed/width, NUMA node, IOMMU group and bound driver. The CPU vendor and family are
kept too (the AMD Zen rule of ``cpu_supports_p2pdma()``).

Design:

* Devices are addressed by their ``pci_name()`` — ``"0000:03:00.0"`` — or by a user-given name
  (``"gpu0"``) from the topology file; :meth:`Topology.device` resolves either and lists the
  candidates when it cannot.
* ``PciDev.parent`` is the bridge whose secondary bus the function sits on (``bus->self``);
  ``None`` on a root bus. :meth:`PciDev.upstream_bridge` is ``pci_upstream_bridge()``: it first
  goes to the physical function of a VF (``pci_physfn()``), as the kernel does.
* Topologies are built by loaders (:mod:`dmabuf.pci.topo_toml`, :mod:`dmabuf.pci.topo_sysfs`,
  :mod:`dmabuf.pci.generate`) through :meth:`Topology.add_host_bridge` /
  :meth:`Topology.add_device` and sealed with :meth:`Topology.finalize`, which checks the tree:
  unknown parents, cycles, duplicate addresses, bus numbers, overlapping BARs.
* The topology implements :class:`dmabuf.dma.fabric.P2PFabric` (the DMA layer's view) by
  delegating to :mod:`dmabuf.pci.p2pdma`; every P2P decision and ``pci_warn``/``pci_info`` line
  lands in :attr:`Topology.log`, the model's dmesg.

Locking: the tree is immutable after :meth:`finalize` except for ACS control words
(:meth:`Topology.set_acs_ctrl`, a config-space write) and the per-provider p2pdma state, which
has its own lock. Reads take no lock, like the kernel's walks under a device reference.

Kernel: include/linux/pci.h (struct pci_dev, pci_upstream_bridge(), pci_physfn(), pci_name(),
pci_dev_id()), drivers/pci/probe.c (pci_scan_*), drivers/pci/host-bridge.c
(pci_find_host_bridge()), drivers/pci/iov.c (pci_iov_virtfn_bus/devfn).
"""

from __future__ import annotations

import difflib
import errno
import itertools
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dmabuf.dma.fabric import P2PBusWindow, PciP2pdmaMapType
from dmabuf.errors import DmaBufError
from dmabuf.pci.pci_regs import (
    IORESOURCE_IO,
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
    PCI_ACS_CR,
    PCI_ACS_EC,
    PCI_ACS_RR,
    PCI_STD_NUM_BARS,
    PcieType,
    acs_names,
)

if TYPE_CHECKING:
    from dmabuf.mm.phys import PhysMemory, PhysRegion
    from dmabuf.pci.p2pdma import P2pExplanation, P2pMatrix, PciP2pdma

__all__ = [
    "Acs",
    "Bar",
    "CpuInfo",
    "HostBridge",
    "Link",
    "PciDev",
    "Topology",
    "TopologyError",
    "format_bdf",
    "parse_bdf",
]

_BDF_RE = re.compile(r"^(?:([0-9a-fA-F]{4,5}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
_HB_RE = re.compile(r"^pci([0-9a-fA-F]{4,5}):([0-9a-fA-F]{2})$")

_KIND = {PcieType.ENDPOINT: "endpoint", PcieType.LEG_END: "legacy endpoint",
         PcieType.ROOT_PORT: "root port", PcieType.UPSTREAM: "switch upstream",
         PcieType.DOWNSTREAM: "switch downstream", PcieType.PCI_BRIDGE: "PCIe-PCI bridge",
         PcieType.PCIE_BRIDGE: "PCI-PCIe bridge", PcieType.RC_END: "RCiEP",
         PcieType.RC_EC: "RC event collector"}

#: PCI class codes (upper 16 bits of the 24-bit class) the tree and the CLI care about.
CLASS_BRIDGE_HOST = 0x0600
CLASS_BRIDGE_PCI = 0x0604


class TopologyError(DmaBufError):
    """A topology is malformed; ``device`` names the offending device (BDF or name) if any.

    Loaders catch it to prefix the file and line of that device's entry.
    """

    def __init__(self, err: int, message: str, *, device: str | None = None,
                 key: str | None = None) -> None:
        super().__init__(err, message)
        self.device = device
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errno, self.strerror or ""), {"device": self.device,
                                                                 "key": self.key})


def parse_bdf(text: str) -> tuple[int, int, int, int]:
    """Parse ``"0000:03:00.0"`` (or ``"03:00.0"``, domain 0) into (domain, bus, slot, function).

    Raises:
        DmaBufError(EINVAL): not a PCI address; slot above 0x1f.

    Model-only: parses pci_name() text back into (domain, bus, slot, function).
    """
    if not isinstance(text, str):
        raise DmaBufError(errno.EINVAL, f"PCI address must be a string like '0000:03:00.0', "
                          f"not {type(text).__name__}")
    m = _BDF_RE.match(text.strip())
    if not m:
        raise DmaBufError(errno.EINVAL, f"{text!r} is not a PCI address; write "
                          "domain:bus:slot.function in hex, e.g. '0000:03:00.0'")
    dom = int(m.group(1), 16) if m.group(1) else 0
    bus, slot, fn = int(m.group(2), 16), int(m.group(3), 16), int(m.group(4))
    if slot > 0x1F:
        raise DmaBufError(errno.EINVAL, f"{text!r}: slot {slot:#x} is above 0x1f (32 devices "
                          "per bus)")
    return dom, bus, slot, fn


def format_bdf(domain: int, bus: int, devfn: int) -> str:
    """``pci_name()``: ``"%04x:%02x:%02x.%d"`` of domain, bus, PCI_SLOT(devfn), PCI_FUNC(devfn).

    Kernel: include/linux/pci.h, pci_name().
    """
    return f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"


def is_bdf(text: str) -> bool:
    """True when ``text`` looks like a PCI address (with or without domain).

    Model-only: input-format check for the CLI.
    """
    return bool(_BDF_RE.match(text.strip()))


def host_bridge_name(domain: int, bus: int) -> str:
    """The sysfs name of a host bridge's root bus device: ``pci0000:00``.

    Kernel: drivers/pci/probe.c, pci_register_host_bridge() (the "pci%04x:%02x" name).
    """
    return f"pci{domain:04x}:{bus:02x}"


@dataclass
class Bar:
    """One BAR — a ``struct resource`` of ``pdev->resource[index]``.

    Attributes:
        index: BAR number 0..5.
        start: CPU physical address of the first byte (``pci_resource_start()``).
        size: length in bytes (``pci_resource_len()``).
        flags: ``IORESOURCE_*`` bits (``IORESOURCE_MEM``, ``_PREFETCH``, ``_MEM_64``, ``_IO``).
        bus_offset: ``pci_bus_address() - pci_resource_start()`` — the kernel's sign: the PCI bus
            address is ``cpu_addr + bus_offset`` (0 on x86; non-zero when the host bridge
            translates).
    """

    index: int
    start: int
    size: int
    flags: int
    bus_offset: int = 0

    @property
    def is_mem(self) -> bool:
        """``IORESOURCE_MEM``: a memory BAR (the only kind P2PDMA can use)."""
        return bool(self.flags & IORESOURCE_MEM)

    @property
    def is_io(self) -> bool:
        """``IORESOURCE_IO``: an I/O-port BAR."""
        return bool(self.flags & IORESOURCE_IO)

    @property
    def prefetchable(self) -> bool:
        """``IORESOURCE_PREFETCH``."""
        return bool(self.flags & IORESOURCE_PREFETCH)

    @property
    def mem64(self) -> bool:
        """``IORESOURCE_MEM_64``: a 64-bit BAR (occupies this slot and the next)."""
        return bool(self.flags & IORESOURCE_MEM_64)

    @property
    def end(self) -> int:
        """First CPU address after the BAR."""
        return self.start + self.size

    @property
    def bus_start(self) -> int:
        """``pci_bus_address(pdev, bar)``."""
        return self.start + self.bus_offset

    def describe(self) -> dict[str, Any]:
        """JSON-friendly snapshot.

        Model-only: JSON snapshot for the CLI.
        """
        return {"index": self.index, "start": self.start, "size": self.size,
                "flags": self.flags, "mem": self.is_mem, "io": self.is_io,
                "prefetchable": self.prefetchable, "mem64": self.mem64,
                "bus_offset": self.bus_offset}


@dataclass
class Acs:
    """The ACS extended capability of a port or function: capability and control words.

    Kernel: drivers/pci/pci.c (pdev->acs_cap, pci_enable_acs(), pci_bridge_has_acs_redir()).
    """

    cap: int
    ctrl: int

    @property
    def redirects(self) -> bool:
        """``pci_bridge_has_acs_redir()``: control has RR, CR or EC set."""
        return bool(self.ctrl & (PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_EC))

    def describe(self) -> dict[str, Any]:
        """JSON-friendly snapshot with bit names.

        Model-only: JSON snapshot for the CLI.
        """
        return {"cap": self.cap, "ctrl": self.ctrl, "cap_bits": acs_names(self.cap),
                "ctrl_bits": acs_names(self.ctrl), "redirects": self.redirects}


@dataclass
class Link:
    """PCIe link of a function: current and maximum speed (GT/s) and width (lanes)."""

    speed: float | None = None
    width: int | None = None
    max_speed: float | None = None
    max_width: int | None = None

    @staticmethod
    def gen_of(speed: float | None) -> int | None:
        """PCIe generation of a GT/s figure (2.5 -> 1 … 64 -> 6).

        Model-only: GT/s-to-generation lookup for display.
        """
        gens = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6}
        return gens.get(speed) if speed is not None else None

    def text(self) -> str:
        """``"Gen5 x16"`` (current), or ``""`` when unknown.

        Model-only: display text, like lspci's LnkSta line.
        """
        if self.speed is None and self.width is None:
            return ""
        g = self.gen_of(self.speed)
        sp = f"Gen{g}" if g else (f"{self.speed:g} GT/s" if self.speed else "?")
        return f"{sp} x{self.width}" if self.width else sp

    def bandwidth_gbs(self) -> float | None:
        """Per-direction payload bandwidth in GB/s (128b/130b from Gen3, 8b/10b before).

        Model-only: link-rate arithmetic for the simulator (the kernel's pcie_bandwidth_available()
        works in Mb/s).
        """
        if self.speed is None or self.width is None:
            return None
        enc = 0.8 if self.speed <= 5.0 else 128 / 130
        return self.speed * enc / 8 * self.width

    def describe(self) -> dict[str, Any]:
        """JSON-friendly snapshot.

        Model-only: JSON snapshot for the CLI.
        """
        return {"speed_gts": self.speed, "width": self.width, "max_speed_gts": self.max_speed,
                "max_width": self.max_width, "text": self.text(),
                "bandwidth_gbs": self.bandwidth_gbs()}


@dataclass
class CpuInfo:
    """The boot CPU's vendor and family — ``cpu_data(0).x86_vendor`` / ``.x86``.

    Attributes:
        vendor_id: ``/proc/cpuinfo`` ``vendor_id`` (``AuthenticAMD``, ``GenuineIntel``,
            ``HygonGenuine``…); ``""`` on non-x86 machines.
        family: ``cpu family`` (``0x17`` Zen, ``0x19`` Zen 3/4, ``0x1a`` Zen 5; Intel ``6``).
        model_name: free text.
    """

    vendor_id: str = ""
    family: int = 0
    model_name: str = ""

    @property
    def supports_p2pdma(self) -> bool:
        """``cpu_supports_p2pdma()``: AMD (not Hygon) and family >= 0x17 (Zen and newer)."""
        return self.vendor_id == "AuthenticAMD" and self.family >= 0x17

    def describe(self) -> dict[str, Any]:
        """JSON-friendly snapshot.

        Model-only: JSON snapshot for the CLI.
        """
        return {"vendor_id": self.vendor_id, "family": self.family,
                "family_hex": hex(self.family), "model_name": self.model_name,
                "cpu_supports_p2pdma": self.supports_p2pdma}


class HostBridge:
    """A PCI host bridge and its root bus — ``struct pci_host_bridge``.

    Attributes:
        name: ``pciDDDD:BB`` (its sysfs directory name) — also usable as a user name.
        domain / bus: PCI domain (segment) and root bus number.
        numa_node: NUMA node of the root complex, ``None`` if unknown.
        devices: functions on the root bus, in scan order (ascending devfn).
        label: optional user-given name (``"hb0"``).

    Kernel: include/linux/pci.h, struct pci_host_bridge; drivers/pci/host-bridge.c.
    """

    def __init__(self, domain: int, bus: int, *, numa_node: int | None = None,
                 label: str | None = None) -> None:
        self.domain = domain
        self.bus = bus
        self.name = host_bridge_name(domain, bus)
        self.numa_node = numa_node
        self.label = label
        self.devices: list[PciDev] = []

    def root_dev(self) -> PciDev | None:
        """The device the allow-list checks — ``pci_host_bridge_dev()``.

        The first device of the root bus if it is devfn 00.0 or a PCIe Root Port, else ``None``.

        Kernel: drivers/pci/p2pdma.c, pci_host_bridge_dev().
        """
        if not self.devices:
            return None
        root = self.devices[0]
        if root.devfn == 0 or root.pcie_type == PcieType.ROOT_PORT:
            return root
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly snapshot.

        Model-only: JSON snapshot for the CLI.
        """
        root = self.root_dev()
        return {"name": self.name, "label": self.label, "domain": self.domain, "bus": self.bus,
                "numa_node": self.numa_node,
                "root_device": root.bdf if root else None,
                "root_id": f"{root.vendor:04x}:{root.device:04x}" if root else None}

    def __repr__(self) -> str:
        return f"<HostBridge {self.name}{' ' + self.label if self.label else ''}>"


class PciDev:
    """One PCI function — ``struct pci_dev``.

    Created by :meth:`Topology.add_device`; attributes are plain data (see the module docstring).
    Identity is the object: two functions compare equal only if they are the same function.

    Kernel: include/linux/pci.h, struct pci_dev.
    """

    def __init__(self, topology: Topology, domain: int, bus: int, devfn: int, *,
                 vendor: int, device: int, class_code: int, name: str | None = None,
                 pcie_type: PcieType | None = None, header_type: int = 0,
                 multifunction: bool = False, revision: int = 0,
                 subsystem_vendor: int = 0, subsystem_device: int = 0,
                 bars: Iterable[Bar] = (), acs: Acs | None = None, link: Link | None = None,
                 numa_node: int | None = None, iommu_group: int | None = None,
                 driver: str | None = None, non_mappable_bars: bool = False,
                 sysfs_path: str | None = None) -> None:
        self.topology = topology
        self.domain = domain
        self.bus = bus
        self.devfn = devfn
        self.bdf = format_bdf(domain, bus, devfn)
        self.name = name
        self.vendor = vendor
        self.device = device
        self.class_code = class_code
        self.pcie_type = pcie_type
        self.header_type = header_type
        self.multifunction = multifunction
        self.revision = revision
        self.subsystem_vendor = subsystem_vendor
        self.subsystem_device = subsystem_device
        self.bars: dict[int, Bar] = {b.index: b for b in bars}
        self.acs = acs
        self.link = link or Link()
        self.numa_node = numa_node
        self.iommu_group = iommu_group
        self.driver = driver
        self.non_mappable_bars = non_mappable_bars
        self.sysfs_path = sysfs_path
        #: Upstream bridge (``bus->self``); ``None`` on a root bus. Set by the topology.
        self.parent: PciDev | None = None
        #: Host bridge of this function's hierarchy (``pci_find_host_bridge()``).
        self.host_bridge: HostBridge | None = None
        #: Physical function of a VF (``pci_physfn()`` when ``is_virtfn``), else ``None``.
        self.physfn: PciDev | None = None
        self.virtfns: list[PciDev] = []
        self.children: list[PciDev] = []
        #: ``pdev->p2pdma`` — set by :func:`dmabuf.pci.p2pdma.pcim_p2pdma_init`.
        self.p2pdma: PciP2pdma | None = None
        self._parent_ref: str | None = None
        self._physfn_ref: str | None = None

    # -- identity ----------------------------------------------------------------------------
    @property
    def slot(self) -> int:
        """``PCI_SLOT(devfn)``."""
        return self.devfn >> 3

    @property
    def func(self) -> int:
        """``PCI_FUNC(devfn)``."""
        return self.devfn & 7

    @property
    def dev_id(self) -> int:
        """``pci_dev_id()``: ``bus << 8 | devfn``."""
        return (self.bus << 8) | self.devfn

    @property
    def is_virtfn(self) -> bool:
        """``pdev->is_virtfn``."""
        return self.physfn is not None

    @property
    def is_bridge(self) -> bool:
        """A bridge forwarding to a secondary bus (type-1 header or a bridge port type)."""
        if self.pcie_type is not None and self.pcie_type.is_bridge:
            return True
        return self.header_type == 1 or (self.class_code >> 8) == CLASS_BRIDGE_PCI

    @property
    def is_host_bridge_function(self) -> bool:
        """A host-bridge function on a root bus (class 0x0600), like the 00.0 root complex."""
        return (self.class_code >> 8) == CLASS_BRIDGE_HOST and self.parent is None

    @property
    def is_endpoint(self) -> bool:
        """Not a bridge and not a host-bridge function: something that does DMA."""
        return not self.is_bridge and not self.is_host_bridge_function

    @property
    def label(self) -> str:
        """``name (bdf)`` when named, else the BDF."""
        return f"{self.name} ({self.bdf})" if self.name else self.bdf

    def kind(self) -> str:
        """Short role text: ``root port``, ``switch upstream``, ``endpoint``, ``VF``…

        Kernel: include/linux/pci.h, pci_pcie_type() (as short text).
        """
        if self.is_virtfn:
            return "VF"
        if self.pcie_type is not None:
            return _KIND[self.pcie_type]
        if self.is_host_bridge_function:
            return "host bridge"
        return "PCI bridge" if self.is_bridge else "PCI device"

    # -- tree walks --------------------------------------------------------------------------
    def upstream_bridge(self) -> PciDev | None:
        """``pci_upstream_bridge()``: the bridge above, via the PF for a VF; ``None`` on a root bus.

        Kernel: include/linux/pci.h, pci_upstream_bridge() (``dev = pci_physfn(dev)`` first).
        """
        dev = self.physfn if self.physfn is not None else self
        return dev.parent

    def chain(self) -> list[PciDev]:
        """This function and every ``pci_upstream_bridge()`` above it, nearest first.

        Kernel: include/linux/pci.h, pci_upstream_bridge() (walked to the root).
        """
        out: list[PciDev] = []
        d: PciDev | None = self
        while d is not None:
            out.append(d)
            d = d.upstream_bridge()
        return out

    def bar(self, index: int) -> Bar | None:
        """``pdev->resource[index]`` if the BAR is implemented (non-zero size).

        Kernel: include/linux/pci.h, pci_resource_len() / pdev->resource[].
        """
        return self.bars.get(index)

    def dev_printk_prefix(self) -> str:
        """``dev_driver_string()`` + ``dev_name()``: ``"nvme 0000:03:00.0"``, ``"pci …"``.

        Kernel: drivers/base/core.c, dev_driver_string() and dev_name().
        """
        return f"{self.driver or 'pci'} {self.bdf}"

    def describe(self) -> dict[str, Any]:
        """JSON-friendly snapshot (what ``dmabuf topo show --json`` prints).

        Model-only: JSON snapshot for ``dmabuf topo show --json``.
        """
        p2p = self.p2pdma.describe() if self.p2pdma is not None else None
        return {
            "bdf": self.bdf, "name": self.name, "kind": self.kind(),
            "vendor": f"{self.vendor:04x}", "device": f"{self.device:04x}",
            "class": f"{self.class_code:06x}",
            "pcie_type": self.pcie_type.name if self.pcie_type is not None else None,
            "parent": self.parent.bdf if self.parent else None,
            "host_bridge": self.host_bridge.name if self.host_bridge else None,
            "physfn": self.physfn.bdf if self.physfn else None,
            "multifunction": self.multifunction,
            "bars": [b.describe() for _, b in sorted(self.bars.items())],
            "acs": self.acs.describe() if self.acs else None,
            "link": self.link.describe(), "numa_node": self.numa_node,
            "iommu_group": self.iommu_group, "driver": self.driver, "p2pdma": p2p,
        }

    def __repr__(self) -> str:
        return f"<PciDev {self.label} {self.vendor:04x}:{self.device:04x} {self.kind()}>"


class Topology:
    """A modelled PCI hierarchy, its CPU, and the P2PDMA state of its providers.

    Implements :class:`dmabuf.dma.fabric.P2PFabric`. Build with the ``add_*`` methods and seal
    with :meth:`finalize`, or use a loader (:func:`dmabuf.pci.load_toml`,
    :func:`dmabuf.pci.load_sysfs`, :func:`dmabuf.pci.default_topology`,
    :func:`dmabuf.pci.generate_topology`).

    Args:
        cpu: the boot CPU (vendor/family for the AMD Zen rule).
        source: where the topology came from (a file, a sysfs root), for messages.
        description: free text.

    Attributes:
        log: kernel log lines (``pci_warn``/``pci_info``), in order — the model's dmesg.
        notes: loader notes (e.g. "config space truncated: ACS unknown").
    """

    def __init__(self, *, cpu: CpuInfo | None = None, source: str = "<memory>",
                 description: str = "") -> None:
        self.cpu = cpu or CpuInfo()
        self.source = source
        self.description = description
        self.log: list[str] = []
        self.notes: list[str] = []
        self.host_bridges: list[HostBridge] = []
        self._hb_by_key: dict[tuple[int, int], HostBridge] = {}
        self._by_bdf: dict[str, PciDev] = {}
        self._by_name: dict[str, PciDev | HostBridge] = {}
        self._devices: list[PciDev] = []
        self._finalized = False
        #: Serialises provider set-up and pool operations (the kernel's devm/genpool locks).
        self.lock = threading.RLock()
        #: CPU-address-sorted MEM BARs of initialised providers (see p2pdma.provider_at).
        self._provider_index: Any = None
        #: Bumped whenever the provider index is rebuilt (P2PFabricWindows.p2p_generation).
        self._p2p_generation = 0
        #: The machine memory the BARs live in, set by :meth:`attach_memory` (p2pmem ranges
        #: get their ZONE_DEVICE pages in it).
        self.phys: PhysMemory | None = None

    # -- building ----------------------------------------------------------------------------
    def add_host_bridge(self, domain: int, bus: int, *, numa_node: int | None = None,
                        label: str | None = None) -> HostBridge:
        """Add a host bridge with root bus ``domain:bus`` — ``pci_create_root_bus()``.

        Raises:
            TopologyError(EEXIST): the root bus exists; (EINVAL) bad numbers or label.

        Kernel: drivers/pci/probe.c, pci_create_root_bus().
        """
        self._check_open()
        if not (0 <= domain <= 0xFFFFF) or not (0 <= bus <= 0xFF):
            raise TopologyError(errno.EINVAL, f"host bridge {domain:#x}:{bus:#x}: domain must be "
                                "0..0xfffff and bus 0..0xff", device=label)
        key = (domain, bus)
        if key in self._hb_by_key:
            raise TopologyError(errno.EEXIST, f"host bridge {host_bridge_name(domain, bus)} is "
                                "declared twice; give each root bus one entry", device=label)
        hb = HostBridge(domain, bus, numa_node=numa_node, label=label)
        if label is not None:
            self._add_name(label, hb)
        self._add_name(hb.name, hb)
        self.host_bridges.append(hb)
        self._hb_by_key[key] = hb
        return hb

    def _add_name(self, name: str, obj: PciDev | HostBridge) -> None:
        if name in self._by_name and self._by_name[name] is not obj:
            raise TopologyError(errno.EEXIST, f"name {name!r} is used twice; names must be "
                                "unique", device=name)
        self._by_name[name] = obj

    def add_device(self, bdf: str, *, parent: str | None = None, physfn: str | None = None,
                   **attrs: Any) -> PciDev:
        """Add a function; ``parent`` is its upstream bridge (BDF or name), ``None`` on a root bus.

        Args:
            bdf: ``pci_name()`` of the function.
            parent: upstream bridge, resolved at :meth:`finalize` (forward references allowed).
            physfn: the PF of a VF (BDF or name); a VF inherits the PF's parent.
            attrs: :class:`PciDev` keyword attributes (vendor, device, class_code, name, …).

        Raises:
            TopologyError(EEXIST): duplicate BDF or name; (EINVAL) malformed values.

        Model-only: builds the tree the kernel discovers in drivers/pci/probe.c, pci_scan_device().
        """
        self._check_open()
        dom, bus, slot, fn = parse_bdf(bdf)
        devfn = (slot << 3) | fn
        norm = format_bdf(dom, bus, devfn)
        if norm in self._by_bdf:
            raise TopologyError(errno.EEXIST, f"duplicate PCI address {norm}: every function "
                                "needs its own domain:bus:slot.function", device=norm)
        for key in ("vendor", "device", "class_code"):
            v = attrs.get(key)
            limit = 0xFFFFFF if key == "class_code" else 0xFFFF
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
                raise TopologyError(errno.EINVAL, f"{norm}: {key} must be an integer 0..{limit:#x}"
                                    f", got {v!r}", device=norm, key=key)
        name = attrs.get("name")
        if name is not None and (not isinstance(name, str) or not name or is_bdf(name)
                                 or _HB_RE.match(name)):
            raise TopologyError(errno.EINVAL, f"{norm}: name {name!r} must be a non-empty "
                                "string that is not a PCI address", device=norm, key="name")
        dev = PciDev(self, dom, bus, devfn, **attrs)
        if name is not None:
            self._add_name(name, dev)
        dev._parent_ref = parent
        dev._physfn_ref = physfn
        self._by_bdf[norm] = dev
        self._devices.append(dev)
        return dev

    def _check_open(self) -> None:
        if self._finalized:
            raise TopologyError(errno.EBUSY, "topology is finalized; build a new one to change "
                                "its shape")

    def _ref(self, ref: str, what: str, dev: PciDev) -> PciDev | HostBridge:
        obj = self._by_name.get(ref)
        if obj is None and is_bdf(ref):
            dom, bus, slot, fn = parse_bdf(ref)
            obj = self._by_bdf.get(format_bdf(dom, bus, (slot << 3) | fn))
        if obj is None:
            raise TopologyError(errno.ENOENT, f"{dev.label}: {what} {ref!r} is not a device or "
                                f"host bridge of this topology; {self._candidates(ref)}",
                                device=dev.bdf, key=what)
        return obj

    def _attach(self, dev: PciDev) -> None:
        ref = dev._parent_ref
        if ref is None:
            hb = self._hb_by_key.get((dev.domain, dev.bus))
            if hb is None:
                raise TopologyError(errno.ENOENT, f"{dev.label}: no parent given and no host "
                                    f"bridge with root bus {dev.domain:04x}:{dev.bus:02x}; set "
                                    "parent to its upstream bridge or declare the host bridge",
                                    device=dev.bdf, key="parent")
            obj: PciDev | HostBridge = hb
        else:
            obj = self._ref(ref, "parent", dev)
        if isinstance(obj, HostBridge):
            if (dev.domain, dev.bus) != (obj.domain, obj.bus):
                raise TopologyError(errno.EINVAL, f"{dev.label} is on root bus {obj.name} but "
                                    f"its address says bus {dev.domain:04x}:{dev.bus:02x}; "
                                    f"use {obj.domain:04x}:{obj.bus:02x}:ss.f",
                                    device=dev.bdf, key="bdf")
            dev.parent = None
            dev.host_bridge = obj
            obj.devices.append(dev)
            return
        if obj is dev:
            raise TopologyError(errno.ELOOP, f"{dev.label} is its own parent",
                                device=dev.bdf, key="parent")
        if obj.physfn is not None:
            raise TopologyError(errno.EINVAL, f"{dev.label}: parent {obj.label} is a VF; VFs "
                                "are never bridges", device=dev.bdf, key="parent")
        if not obj.is_bridge:
            raise TopologyError(errno.EINVAL, f"{dev.label}: parent {obj.label} is a "
                                f"{obj.kind()}, not a bridge; only root ports, switch "
                                "ports and PCI bridges have devices below them",
                                device=dev.bdf, key="parent")
        dev.parent = obj
        obj.children.append(dev)

    def finalize(self) -> Topology:
        """Resolve references and check the tree; after this the shape is fixed.

        Checks: parents exist and are bridges (or host bridges), no cycles, a VF's PF exists and
        is not a VF, children of one bridge share one bus number different from the bridge's,
        root-bus functions carry the host bridge's domain and bus, 64-bit BARs do not collide with
        the next BAR, MEM BARs do not overlap each other.

        Returns:
            ``self``.

        Raises:
            TopologyError: with ``device`` set to the offending function.

        Model-only: validation of a hand-built tree; the kernel's tree is correct by construction.
        """
        self._check_open()
        # 1. resolve physfn links (VFs)
        for dev in self._devices:
            if dev._physfn_ref is not None:
                pf = self._ref(dev._physfn_ref, "physfn", dev)
                if not isinstance(pf, PciDev) or pf is dev:
                    raise TopologyError(errno.EINVAL, f"{dev.label}: physfn must be another PCI "
                                        "function (the PF)", device=dev.bdf, key="physfn")
                dev.physfn = pf
                pf.virtfns.append(dev)
        for dev in self._devices:
            if dev.physfn is not None and dev.physfn.physfn is not None:
                raise TopologyError(errno.EINVAL, f"{dev.label}: its PF {dev.physfn.label} is "
                                    "itself a VF; VFs cannot have VFs", device=dev.bdf,
                                    key="physfn")
        # 2. resolve parents of ordinary functions, then of VFs (which follow their PF)
        for dev in self._devices:
            if dev.physfn is None:
                self._attach(dev)
        for dev in self._devices:
            if dev.physfn is None:
                continue
            pf = dev.physfn
            if dev._parent_ref is not None:
                obj = self._ref(dev._parent_ref, "parent", dev)
                want: PciDev | HostBridge | None = pf.parent if pf.parent is not None else None
                if obj is not want and not (want is None and obj is pf.host_bridge):
                    raise TopologyError(errno.EINVAL, f"{dev.label}: a VF sits below its PF's "
                                        f"upstream bridge; parent {dev._parent_ref!r} differs from "
                                        f"{pf.label}'s; drop the VF's parent", device=dev.bdf,
                                        key="parent")
            if dev.domain != pf.domain:
                raise TopologyError(errno.EINVAL, f"{dev.label}: a VF is in its PF's PCI domain "
                                    f"({pf.domain:04x})", device=dev.bdf, key="bdf")
            dev.parent = pf.parent
            if pf.parent is not None:
                pf.parent.children.append(dev)
            else:
                dev.host_bridge = pf.host_bridge
                if pf.host_bridge is not None and dev.bus == pf.host_bridge.bus:
                    pf.host_bridge.devices.append(dev)
        # 3. cycles (parent links only; host bridges terminate chains)
        for dev in self._devices:
            seen: list[PciDev] = []
            d: PciDev | None = dev
            while d is not None:
                if d in seen:
                    cyc = [*seen[seen.index(d):], d]
                    raise TopologyError(errno.ELOOP, "parent cycle: " + " -> ".join(
                        x.label for x in cyc) + "; every chain must end at a host bridge",
                        device=dev.bdf, key="parent")
                seen.append(d)
                d = d.parent
            top = seen[-1]
            dev.host_bridge = top.host_bridge
        # 4. bus numbers
        for dev in self._devices:
            if dev.children:
                buses = {(c.domain, c.bus) for c in dev.children if c.physfn is None}
                if len(buses) > 1:
                    names = sorted(f"{d:04x}:{b:02x}" for d, b in buses)
                    raise TopologyError(errno.EINVAL, f"bridge {dev.label} has children on "
                                        f"several buses {names}"
                                        "; all functions below one bridge share its secondary bus",
                                        device=dev.bdf, key="bdf")
                for c in dev.children:
                    if c.physfn is None and (c.domain, c.bus) == (dev.domain, dev.bus):
                        raise TopologyError(errno.EINVAL, f"{c.label} is below bridge {dev.label} "
                                            "but on the bridge's own bus; give it the bridge's "
                                            "secondary bus number", device=c.bdf, key="bdf")
                    if c.domain != dev.domain:
                        raise TopologyError(errno.EINVAL, f"{c.label} is below {dev.label} but in "
                                            "another PCI domain", device=c.bdf, key="bdf")
        # 5. BARs
        mem: list[tuple[int, int, PciDev, Bar]] = []
        for dev in self._devices:
            for b in dev.bars.values():
                if not 0 <= b.index < PCI_STD_NUM_BARS:
                    raise TopologyError(errno.EINVAL, f"{dev.label}: BAR index {b.index} is not "
                                        "0..5", device=dev.bdf, key="bar")
                if b.size <= 0 or b.start < 0:
                    raise TopologyError(errno.EINVAL, f"{dev.label}: BAR{b.index} needs a "
                                        "positive size and a non-negative address",
                                        device=dev.bdf, key="bar")
                if b.mem64 and b.index + 1 in dev.bars:
                    raise TopologyError(errno.EINVAL, f"{dev.label}: BAR{b.index} is 64-bit and "
                                        f"uses slot {b.index + 1} too; remove BAR{b.index + 1}",
                                        device=dev.bdf, key="bar")
                if b.mem64 and b.index == PCI_STD_NUM_BARS - 1:
                    raise TopologyError(errno.EINVAL, f"{dev.label}: BAR5 cannot be 64-bit",
                                        device=dev.bdf, key="bar")
                if b.is_mem:
                    mem.append((b.start, b.end, dev, b))
        mem.sort(key=lambda t: t[0])
        for (s0, e0, d0, b0), (s1, _e1, d1, b1) in itertools.pairwise(mem):
            if s1 < e0:
                raise TopologyError(errno.EINVAL, f"BAR{b1.index} of {d1.label} "
                                    f"[{s1:#x}, {b1.end:#x}) overlaps BAR{b0.index} of {d0.label} "
                                    f"[{s0:#x}, {e0:#x}); give them disjoint addresses",
                                    device=d1.bdf, key="bar")
        # 6. order: pci_get_device() order = bus scan order (domain, bus, devfn)
        self._devices.sort(key=lambda d: (d.domain, d.bus, d.devfn))
        self.host_bridges.sort(key=lambda h: (h.domain, h.bus))
        for hb in self.host_bridges:
            # scan order; VFs are added to the bus list after the scan (pci_iov_add_virtfn)
            hb.devices.sort(key=lambda d: (d.is_virtfn, d.devfn))
        for dev in self._devices:
            dev.children.sort(key=lambda d: (d.bus, d.devfn))
            dev.virtfns.sort(key=lambda d: (d.bus, d.devfn))
        self._finalized = True
        return self

    # -- lookup ------------------------------------------------------------------------------
    @property
    def devices(self) -> list[PciDev]:
        """All functions in ``for_each_pci_dev()`` order."""
        return list(self._devices)

    def __iter__(self) -> Iterator[PciDev]:
        return iter(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    def endpoints(self) -> list[PciDev]:
        """Functions that are not bridges nor root-complex host-bridge functions.

        Model-only: a filtered device list for the CLI and simulator.
        """
        return [d for d in self._devices if d.is_endpoint]

    def _candidates(self, ref: str, limit: int = 12) -> str:
        names = sorted(n for n, o in self._by_name.items() if isinstance(o, PciDev))
        bdfs = [d.bdf for d in self._devices]
        close = difflib.get_close_matches(ref, names + bdfs, n=5, cutoff=0.5)
        allc = names + [b for b in bdfs if self._by_bdf[b].name is None]
        shown = ", ".join(allc[:limit]) + (f", … ({len(allc)} in all)" if len(allc) > limit
                                           else "")
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return f"{hint}candidates: {shown or '(none)'}"

    def has_device(self, ref: str) -> bool:
        """True when ``ref`` (name or BDF) resolves to a function.

        Model-only: existence check for the CLI.
        """
        try:
            self.device(ref)
        except DmaBufError:
            return False
        return True

    def device(self, ref: str | PciDev) -> PciDev:
        """Resolve a BDF (``"0000:03:00.0"`` or ``"03:00.0"``) or a name to its function.

        Raises:
            DmaBufError(ENODEV): unknown; the message lists close matches and candidates.

        Kernel: drivers/pci/search.c, pci_get_domain_bus_and_slot() (also resolves model names).
        """
        if isinstance(ref, PciDev):
            if ref.topology is not self:
                raise DmaBufError(errno.ENODEV, f"{ref.label} belongs to another topology")
            return ref
        if not isinstance(ref, str):
            raise DmaBufError(errno.EINVAL, f"device must be a name or PCI address string, not "
                              f"{type(ref).__name__}")
        dev = self._by_bdf.get(ref)
        if dev is not None:
            return dev
        obj = self._by_name.get(ref)
        if isinstance(obj, PciDev):
            return obj
        if is_bdf(ref):
            dom, bus, slot, fn = parse_bdf(ref)
            dev = self._by_bdf.get(format_bdf(dom, bus, (slot << 3) | fn))
            if dev is not None:
                return dev
        raise DmaBufError(errno.ENODEV, f"no PCI device {ref!r} in topology {self.source}; "
                          f"{self._candidates(ref)}")

    def host_bridge(self, ref: str) -> HostBridge:
        """Resolve ``pciDDDD:BB`` or a host-bridge label.

        Raises:
            DmaBufError(ENODEV): unknown.

        Model-only: lookup of a host bridge by label or root-bus name.
        """
        obj = self._by_name.get(ref)
        if isinstance(obj, HostBridge):
            return obj
        raise DmaBufError(errno.ENODEV, f"no host bridge {ref!r} in topology {self.source}; "
                          f"host bridges: {', '.join(h.name for h in self.host_bridges)}")

    # -- mutation after finalize: config writes ------------------------------------------------
    def set_acs_ctrl(self, ref: str | PciDev, ctrl: int) -> None:
        """Write a port's ACS control word — ``pci_write_config_word(dev, pos + PCI_ACS_CTRL)``.

        Decisions already cached per (provider, client) are *not* re-evaluated, exactly as the
        kernel's xarray cache (see :func:`dmabuf.pci.p2pdma.pci_p2pdma_map_type`).

        Raises:
            DmaBufError(ENODEV): unknown device; (EINVAL) the function has no ACS capability or
                ``ctrl`` is not a 16-bit value.

        Kernel: drivers/pci/access.c, pci_write_config_word() at pos + PCI_ACS_CTRL.
        """
        dev = self.device(ref)
        if not isinstance(ctrl, int) or isinstance(ctrl, bool) or not 0 <= ctrl <= 0xFFFF:
            raise DmaBufError(errno.EINVAL, f"ACS control must be a 16-bit integer, got {ctrl!r}")
        if dev.acs is None:
            raise DmaBufError(errno.EINVAL, f"{dev.label} has no ACS capability; the write would "
                              "go nowhere (pick a port that has one)")
        dev.acs.ctrl = ctrl

    # -- P2PFabric -----------------------------------------------------------------------------
    def p2p_map_type(self, provider: str, client: str) -> PciP2pdmaMapType:
        """The cached P2P decision for (provider, client) — ``pci_p2pdma_map_type()``.

        Args:
            provider: BDF or name of the provider function (whose BAR is the target).
            client: BDF or name of the DMA-ing function. A client that is not a PCI function of
                this topology gets ``NOT_SUPPORTED`` (the kernel's ``!dev_is_pci(dev)``).

        Context:
            Never blocks. Computes and caches on the first query (logging with verbose=true).

        Returns:
            ``BUS_ADDR``, ``THRU_HOST_BRIDGE`` or ``NOT_SUPPORTED`` (also when the provider has no
            p2pdma state: call :func:`~dmabuf.pci.p2pdma.pcim_p2pdma_init` or
            :func:`~dmabuf.pci.p2pdma.pci_p2pdma_add_resource` first).

        Raises:
            DmaBufError(ENODEV): the provider is not in the topology.

        Kernel: drivers/pci/p2pdma.c, pci_p2pdma_map_type().
        """
        from dmabuf.pci import p2pdma

        pdev = self.device(provider)
        try:
            cdev = self.device(client)
        except DmaBufError:
            return PciP2pdmaMapType.NOT_SUPPORTED
        return p2pdma.pci_p2pdma_map_type_dev(pdev, cdev)

    def provider_at(self, paddr: int) -> tuple[str, int] | None:
        """Which initialised provider's MEM BAR contains ``paddr`` (see P2PFabric.provider_at).

        Returns:
            ``(bdf, bus_offset)`` with the kernel's sign, ``bus_addr = paddr + bus_offset``
            (``p2pdma_provider.bus_offset``), per the P2PFabric contract — or ``None``.

        Kernel: drivers/pci/p2pdma.c (p2pdma_provider, pci_p2pdma_bus_addr_map()).
        """
        from dmabuf.pci import p2pdma

        hit = p2pdma.find_provider(self, paddr)
        if hit is None:
            return None
        return hit.owner.bdf, hit.bus_offset

    @property
    def p2p_generation(self) -> int:
        """Changes whenever providers are set up or released (``P2PFabricWindows``).

        Bumped by ``pcim_p2pdma_init()`` / ``pci_p2pdma_add_resource()`` (first call for a
        device) and ``pci_p2pdma_release()``; a DMA device compares it to know its cached peer
        windows are stale.
        """
        return self._p2p_generation

    def bus_windows(self) -> list[P2PBusWindow]:
        """Every MEM BAR of every initialised provider, by CPU address (``P2PFabricWindows``).

        Context:
            Never blocks (reads the provider index; no lock, like ``provider_at``).

        Returns:
            :class:`~dmabuf.dma.fabric.P2PBusWindow` (provider BDF, CPU start, size, kernel-sign
            ``bus_offset``) per BAR.

        Kernel: drivers/pci/p2pdma.c, ``pdev->p2pdma->mem[]`` (the whole-BAR providers).
        """
        idx = self._provider_index
        if idx is None:
            return []
        return [P2PBusWindow(prov.owner.bdf, start, end - start, prov.bus_offset)
                for start, end, prov in idx[1]]

    def iommu_group(self, device: str) -> int | None:
        """The IOMMU group id of a function, ``None`` when it has none — ``iommu_group_id()``.

        Raises:
            DmaBufError(ENODEV): unknown device.

        Kernel: drivers/iommu/iommu.c, iommu_group_id().
        """
        return self.device(device).iommu_group

    # -- P2P conveniences (implemented in dmabuf.pci.p2pdma) ----------------------------------
    def calc_map_type_and_dist(self, provider: str | PciDev, client: str | PciDev, *,
                               verbose: bool = True) -> tuple[PciP2pdmaMapType, int]:
        """Compute (and cache) the decision — ``calc_map_type_and_dist()``; see p2pdma.

        Kernel: drivers/pci/p2pdma.c, calc_map_type_and_dist().
        """
        from dmabuf.pci import p2pdma

        return p2pdma.calc_map_type_and_dist(self.device(provider), self.device(client),
                                             verbose=verbose)

    def distance(self, provider: str | PciDev, clients: str | PciDev | list[str | PciDev], *,
                 verbose: bool = False) -> int:
        """``pci_p2pdma_distance_many()`` for one or several clients (-1 if any is refused).

        Kernel: drivers/pci/p2pdma.c, pci_p2pdma_distance_many().
        """
        from dmabuf.pci import p2pdma

        lst = clients if isinstance(clients, list) else [clients]
        return p2pdma.pci_p2pdma_distance_many(self.device(provider),
                                               [self.device(c) for c in lst], verbose=verbose)

    def explain(self, provider: str | PciDev, client: str | PciDev) -> P2pExplanation:
        """The kernel's decision for (provider, client), step by step; see p2pdma.explain.

        Kernel: drivers/pci/p2pdma.c, calc_map_type_and_dist() (verbose, step by step).
        """
        from dmabuf.pci import p2pdma

        return p2pdma.explain(self.device(provider), self.device(client))

    def matrix(self, devices: Sequence[str | PciDev] | None = None) -> P2pMatrix:
        """Map type and distance of every pair (vectorised); see p2pdma.p2p_matrix.

        Kernel: drivers/pci/p2pdma.c, calc_map_type_and_dist() (every pair, vectorised).
        """
        from dmabuf.pci import p2pdma

        devs = [self.device(d) for d in devices] if devices is not None else self.endpoints()
        return p2pdma.p2p_matrix(self, devs)

    def attach_memory(self, phys: PhysMemory) -> dict[str, PhysRegion]:
        """Register every page-aligned MEM BAR as an MMIO region of ``phys``.

        Region names are ``"<bdf> BAR<n>"``; NUMA node is the function's (``-1`` if unknown).
        BARs smaller than a page or not page-aligned are skipped (they can never be P2P memory:
        the pool granule is a page). Then ``phys`` becomes the topology's memory
        (:attr:`phys`): the p2pmem ranges added so far get their ``MEMORY_DEVICE_PCI_P2PDMA``
        page maps (``devm_memremap_pages``), and later ``pci_p2pdma_add_resource`` calls get
        theirs at once.

        Returns:
            ``{region name: PhysRegion}`` of the regions added.

        Raises:
            DmaBufError(EINVAL/EEXIST): from ``PhysMemory.add_region`` (overlap with RAM, …).

        Kernel: drivers/pci/setup-res.c (pci_assign_resource), kernel/resource.c.
        """
        from dmabuf.mm.phys import PAGE_SIZE, MemKind

        out: dict[str, PhysRegion] = {}
        for dev in self._devices:
            for b in sorted(dev.bars.values(), key=lambda b: b.index):
                if not b.is_mem or b.size < PAGE_SIZE or b.size % PAGE_SIZE or b.start % PAGE_SIZE:
                    continue
                name = f"{dev.bdf} BAR{b.index}"
                node = dev.numa_node if dev.numa_node is not None else -1
                out[name] = phys.add_region(name, b.size, MemKind.MMIO, base=b.start,
                                            numa_node=node)
        from dmabuf.pci.p2pdma import p2pdma_attach_memory
        self.phys = phys
        p2pdma_attach_memory(self, phys)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-friendly snapshot of the whole topology.

        Model-only: JSON snapshot for the CLI.
        """
        return {"source": self.source, "description": self.description,
                "cpu": self.cpu.describe(),
                "host_bridges": [h.describe() for h in self.host_bridges],
                "devices": [d.describe() for d in self._devices], "notes": list(self.notes)}

    def __repr__(self) -> str:
        return (f"<Topology {self.source}: {len(self.host_bridges)} host bridges, "
                f"{len(self._devices)} functions>")

