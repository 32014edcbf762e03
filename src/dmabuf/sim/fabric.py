"""The abstract fabric the timing model runs on: nodes, full-duplex links, paths.

Kernel: none. The PCI hierarchy itself (ports, switches, ACS, the P2PDMA map type) is
``dmabuf.pci``'s; this module describes only what carries bytes and how fast, so the timing model
stays independent of how a topology was built. A PCI topology, a TOML scenario or a test converts
itself into a :class:`Fabric`.

Vocabulary
    A :class:`Node` is something data passes through or ends at: an ``ENDPOINT`` (GPU, NIC,
    NVMe function), a ``SWITCH``, a ``ROOT_COMPLEX`` (the host bridge with its root ports and
    its IOMMU), a ``MEMORY`` (host DRAM, a GPU's HBM, an SSD's media) or a ``NETWORK`` (the far
    side of a NIC port). A :class:`Link` joins two nodes ``a`` (upstream) and ``b``
    (downstream) and is described by a :class:`LinkSpec`: bandwidth **per direction** in bytes/s,
    latency in seconds, and whether it is full duplex (PCIe, NIC ports, xGMI: each direction has
    the whole bandwidth) or shared (a memory: reads and writes share one bandwidth). A direction
    is :attr:`Direction.DOWN` (``a`` → ``b``) or :attr:`Direction.UP` (``b`` → ``a``).

    Each direction of a full-duplex link, and each shared link, is one **channel**: the unit of
    capacity that concurrent flows share. Channels are numbered in the order links were added
    and never renumbered, so a fabric may grow while simulations hold channel indices.

    A **path** is a sequence of hops ``(link name, direction)`` that must be contiguous (each hop
    starts where the previous one ended). :meth:`Fabric.route` finds the shortest one between two
    nodes (optionally through a given node, e.g. the root complex when ACS redirects P2P
    upstream). :meth:`Fabric.resolve_path` turns a path into what the timing model needs: its
    channels, its narrowest capacity, its efficiency (from the switches and root complexes it
    crosses), its latency and whether it is translated by an IOMMU.

Builders
    :func:`pcie_link` (generation x width, real per-lane rates and encodings, a protocol
    efficiency), :func:`nic_link` (100/200/400 Gb/s line rates), :func:`memory_link` (HBM,
    GDDR, host DRAM, SSD media), :func:`interconnect_link` (xGMI). :func:`default_fabric` builds
    the spec's default single-socket machine (kernel-p2p-dma.md §6.2).

Locking: a Fabric is built single-threaded, before simulations use it; adding links later is
allowed (channels only grow) but not concurrently with :meth:`Fabric.add_link`.
"""

from __future__ import annotations

import enum
import errno
import math
import numbers
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dmabuf.errors import DmaBufError
from dmabuf.sim.params import (
    H100_SXM5_HBM_BANDWIDTH,
    HOST_DDR5_12CH_4800_BANDWIDTH,
    NVME_GEN5_PM1753_BANDWIDTH,
    PCIE_GENERATIONS,
    XGMI_BANDWIDTH,
    TimingParams,
)

__all__ = [
    "PCIE_WIDTHS",
    "Direction",
    "Fabric",
    "FlowKind",
    "Hop",
    "Link",
    "LinkKind",
    "LinkSpec",
    "Node",
    "NodeKind",
    "PathInfo",
    "default_fabric",
    "interconnect_link",
    "memory_link",
    "nic_link",
    "pcie_link",
]

#: Link widths PCIe defines (x12 and x32 exist in the base spec but are rare).
PCIE_WIDTHS = (1, 2, 4, 8, 12, 16, 32)


class Direction(enum.Enum):
    """Which way a hop crosses a link: ``DOWN`` is ``a`` → ``b`` (away from the root), ``UP``
    is ``b`` → ``a``."""

    DOWN = "down"
    UP = "up"

    @classmethod
    def parse(cls, value: object) -> Direction:
        """Parse a direction — no kernel counterpart.

        Args:
            value: a :class:`Direction` or its value, any case (``"down"``, ``"UP"``).
        Context: pure; never blocks.
        Returns: the :class:`Direction`.
        Raises: DmaBufError(EINVAL) for anything else.
        Kernel: none.
        """
        if isinstance(value, Direction):
            return value
        if isinstance(value, str):
            v = value.strip().lower()
            for d in cls:
                if v == d.value:
                    return d
        raise DmaBufError(errno.EINVAL, f"direction {value!r}: use Direction.DOWN ('down', a->b) "
                          "or Direction.UP ('up', b->a)")


class FlowKind(enum.Enum):
    """What a flow's initiator does: ``WRITE`` (posted memory writes, the data flows from the
    initiator) or ``READ`` (non-posted reads: completions carry the data back). Only the
    root-complex P2P efficiency depends on it (reads through a root complex are slower)."""

    WRITE = "write"
    READ = "read"

    @classmethod
    def parse(cls, value: object) -> FlowKind:
        """Parse a flow kind — no kernel counterpart.

        Args:
            value: a :class:`FlowKind` or its value (``"write"``, ``"read"``).
        Context: pure; never blocks.
        Returns: the :class:`FlowKind`.
        Raises: DmaBufError(EINVAL) for anything else.
        Kernel: none.
        """
        if isinstance(value, FlowKind):
            return value
        if isinstance(value, str):
            for k in cls:
                if value.strip().lower() == k.value:
                    return k
        raise DmaBufError(errno.EINVAL, f"flow kind {value!r}: use FlowKind.WRITE or "
                          "FlowKind.READ")


class NodeKind(enum.Enum):
    """What a node is; it decides the efficiency and latency a flow pays to cross it."""

    ENDPOINT = "endpoint"
    SWITCH = "switch"
    ROOT_COMPLEX = "root_complex"
    MEMORY = "memory"
    NETWORK = "network"


class LinkKind(enum.Enum):
    """What a link is; it decides which root-complex efficiency applies next to it."""

    PCIE = "pcie"
    NETWORK = "network"
    MEMORY = "memory"
    INTERCONNECT = "interconnect"
    OTHER = "other"


@dataclass(frozen=True)
class Node:
    """A point data passes through or ends at.

    ``efficiency`` / ``latency`` override the :class:`TimingParams` figure for crossing this
    node (None: use the params). ``iommu`` (root complexes only; None: ``params.iommu_enabled``)
    says whether DMA crossing it is translated.
    """

    name: str
    kind: NodeKind
    efficiency: float | None = None
    latency: float | None = None
    iommu: bool | None = None


@dataclass(frozen=True)
class LinkSpec:
    """How fast a link is: ``bandwidth`` bytes/s per direction, ``latency`` s, duplex or shared.

    ``duplex=False`` (memories) means both directions share one ``bandwidth``. ``description``
    says where the figure comes from (``"PCIe Gen5 x16"``).
    """

    bandwidth: float
    latency: float = 0.0
    duplex: bool = True
    kind: LinkKind = LinkKind.OTHER
    description: str = ""

    def __post_init__(self) -> None:
        _check_positive_finite("bandwidth", self.bandwidth, "bytes/s per direction")
        if (isinstance(self.latency, bool) or not isinstance(self.latency, numbers.Real)
                or not math.isfinite(self.latency) or self.latency < 0):
            raise DmaBufError(errno.EINVAL, f"link latency {self.latency!r}: must be a finite "
                              "number of seconds >= 0")
        if not isinstance(self.kind, LinkKind):
            raise DmaBufError(errno.EINVAL, f"link kind {self.kind!r}: must be a LinkKind")


@dataclass(frozen=True)
class Link:
    """A :class:`LinkSpec` placed between nodes ``a`` (upstream) and ``b`` (downstream).

    ``channels`` are the indices of its capacity channels: ``(down, up)`` for a full-duplex
    link, ``(shared, shared)`` for a shared one.
    """

    name: str
    a: str
    b: str
    spec: LinkSpec
    channels: tuple[int, int]

    @property
    def bandwidth(self) -> float:
        """Bytes/s per direction (the spec's)."""
        return self.spec.bandwidth

    def ends(self, direction: Direction) -> tuple[str, str]:
        """The nodes a hop over this link leaves and reaches — no kernel counterpart.

        Args:
            direction: the hop's :class:`Direction`.
        Context: pure; never blocks.
        Returns: ``(from, to)`` node names.
        Raises: nothing.
        Kernel: none.
        """
        return (self.a, self.b) if direction is Direction.DOWN else (self.b, self.a)


Hop = tuple[str, Direction]


@dataclass(frozen=True, eq=False)
class PathInfo:
    """A resolved path: what the timing model needs to know about it.

    ``channels``/``counts``: distinct channel indices crossed and how many times each (a flow
    that goes up and back down a shared link uses it twice). ``min_capacity``: the narrowest
    capacity along the path, per unit of flow rate. ``efficiency``: the lowest efficiency of the
    bridges crossed (1.0 when none); ``bottleneck_node`` names it. ``latency``: links plus
    crossed nodes. ``iommu``: the path crosses a translating root complex.
    """

    hops: tuple[Hop, ...]
    nodes: tuple[str, ...]
    channels: np.ndarray
    counts: np.ndarray
    min_capacity: float
    efficiency: float
    bottleneck_node: str | None
    latency: float
    iommu: bool


@dataclass(eq=False, repr=False)
class Fabric:
    """A set of nodes and links, plus the :class:`TimingParams` flows on it are timed with.

    Args:
        params: timing parameters (default: :class:`TimingParams` defaults). PCIe links added
            with :meth:`add_pcie_link` take their protocol efficiency from here.
        name: shown in reports.
    """

    params: TimingParams = field(default_factory=TimingParams)
    name: str = "fabric"
    nodes: dict[str, Node] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)
    _capacity: list[float] = field(default_factory=list, repr=False)
    _channel_names: list[tuple[str, Direction | None]] = field(default_factory=list, repr=False)
    _adj: dict[str, list[tuple[str, str, Direction]]] = field(default_factory=dict, repr=False)
    _cap_array: np.ndarray | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (f"<Fabric {self.name} nodes={len(self.nodes)} links={len(self.links)} "
                f"channels={self.n_channels}>")

    def __post_init__(self) -> None:
        if not isinstance(self.params, TimingParams):
            raise DmaBufError(errno.EINVAL, f"params must be a TimingParams, not "
                              f"{type(self.params).__name__}")

    # building ---------------------------------------------------------------------------------
    def add_node(self, name: str, kind: NodeKind | str, *, efficiency: float | None = None,
                 latency: float | None = None, iommu: bool | None = None) -> Node:
        """Add a node — no kernel counterpart (a PCI function, bridge or memory).

        Args:
            name: unique node name.
            kind: a :class:`NodeKind` (or its value).
            efficiency: override of the crossing efficiency in (0, 1] (None: from params).
            latency: override of the crossing latency, seconds >= 0 (None: from params).
            iommu: for a root complex, whether DMA through it is translated (None: params).
        Context: build time; never blocks.
        Returns: the :class:`Node`.
        Raises: DmaBufError(EEXIST) if the name is taken; EINVAL for a bad kind or value.
        Kernel: none.
        """
        _check_name("node", name)
        if name in self.nodes:
            raise DmaBufError(errno.EEXIST, f"node {name!r} already exists in {self.name}")
        if isinstance(kind, str):
            try:
                kind = NodeKind(kind)
            except ValueError:
                raise DmaBufError(errno.EINVAL, f"node kind {kind!r}: use one of "
                                  f"{[k.value for k in NodeKind]}") from None
        if not isinstance(kind, NodeKind):
            raise DmaBufError(errno.EINVAL, f"node kind {kind!r}: must be a NodeKind")
        if efficiency is not None and (isinstance(efficiency, bool)
                                       or not isinstance(efficiency, numbers.Real)
                                       or not 0.0 < efficiency <= 1.0):
            raise DmaBufError(errno.EINVAL, f"node {name!r}: efficiency {efficiency!r} must be "
                              "in (0, 1]")
        if latency is not None and (isinstance(latency, bool)
                                    or not isinstance(latency, numbers.Real)
                                    or not math.isfinite(latency) or latency < 0):
            raise DmaBufError(errno.EINVAL, f"node {name!r}: latency {latency!r} must be a "
                              "finite number of seconds >= 0")
        if iommu is not None and not isinstance(iommu, bool):
            raise DmaBufError(errno.EINVAL, f"node {name!r}: iommu must be True, False or None")
        node = Node(name, kind, efficiency, latency, iommu)
        self.nodes[name] = node
        self._adj[name] = []
        return node

    def add_link(self, name: str, a: str, b: str, spec: LinkSpec) -> Link:
        """Join nodes ``a`` (upstream) and ``b`` (downstream) with a link — no kernel counterpart.

        Args:
            name: unique link name (flows name it in their paths).
            a: upstream node (must exist).
            b: downstream node (must exist, different from ``a``).
            spec: the :class:`LinkSpec` (see :func:`pcie_link` and friends).
        Context: build time; never blocks.
        Returns: the :class:`Link` with its channel indices.
        Raises: DmaBufError(EEXIST) if the name is taken; EINVAL for an unknown node, a loop or
            a spec that is not a LinkSpec.
        Kernel: none.
        """
        _check_name("link", name)
        if name in self.links:
            raise DmaBufError(errno.EEXIST, f"link {name!r} already exists in {self.name}")
        if not isinstance(spec, LinkSpec):
            raise DmaBufError(errno.EINVAL, f"link {name!r}: spec must be a LinkSpec (build one "
                              f"with pcie_link(), nic_link(), memory_link()), not {spec!r}")
        for end in (a, b):
            if end not in self.nodes:
                raise DmaBufError(errno.EINVAL, f"link {name!r}: unknown node {end!r}; add it "
                                  "with add_node() first")
        if a == b:
            raise DmaBufError(errno.EINVAL, f"link {name!r} joins node {a!r} to itself")
        first = len(self._capacity)
        if spec.duplex:
            self._capacity += [float(spec.bandwidth), float(spec.bandwidth)]
            self._channel_names += [(name, Direction.DOWN), (name, Direction.UP)]
            chans = (first, first + 1)
        else:
            self._capacity.append(float(spec.bandwidth))
            self._channel_names.append((name, None))
            chans = (first, first)
        link = Link(name, a, b, spec, chans)
        self.links[name] = link
        self._adj[a].append((b, name, Direction.DOWN))
        self._adj[b].append((a, name, Direction.UP))
        self._cap_array = None
        return link

    def add_pcie_link(self, name: str, a: str, b: str, gen: int, width: int, *,
                      latency: float | None = None) -> Link:
        """Add a PCIe link of generation ``gen`` and width ``width`` (see :func:`pcie_link`).

        The protocol efficiency and default latency come from :attr:`params`.

        Args / Raises: as :meth:`add_link` and :func:`pcie_link`.
        Context: build time; never blocks.
        Returns: the :class:`Link`.
        Kernel: none (include/uapi/linux/pci_regs.h PCI_EXP_LNKSTA_CLS/NLW describe the same).
        """
        spec = pcie_link(gen, width, protocol_efficiency=self.params.protocol_efficiency,
                         latency=self.params.pcie_link_latency if latency is None else latency)
        return self.add_link(name, a, b, spec)

    # queries ----------------------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        """Number of capacity channels (grows as links are added)."""
        return len(self._capacity)

    @property
    def capacity(self) -> np.ndarray:
        """Capacity of every channel, bytes/s (float64, read-only view)."""
        if self._cap_array is None or self._cap_array.size != len(self._capacity):
            arr = np.asarray(self._capacity, dtype=np.float64)
            arr.setflags(write=False)
            self._cap_array = arr
        return self._cap_array

    def channel_name(self, index: int) -> tuple[str, Direction | None]:
        """Name a channel — no kernel counterpart.

        Args:
            index: channel index, ``0 <= index < n_channels``.
        Context: pure; never blocks.
        Returns: ``(link name, direction)``; direction None for a shared link.
        Raises: IndexError for an index out of range.
        Kernel: none.
        """
        return self._channel_names[index]

    def channel(self, link: str, direction: Direction | str | None = None) -> int:
        """Index of the channel of ``link`` in ``direction`` — no kernel counterpart.

        Args:
            link: link name.
            direction: :class:`Direction` or ``"down"``/``"up"``; required for a full-duplex
                link, ignored for a shared one.
        Context: pure; never blocks.
        Returns: the channel index.
        Raises: DmaBufError(EINVAL) for an unknown link or a missing direction on a duplex link.
        Kernel: none.
        """
        lk = self._link(link)
        if not lk.spec.duplex:
            return lk.channels[0]
        if direction is None:
            raise DmaBufError(errno.EINVAL, f"link {link!r} is full duplex: say which direction "
                              "('down' a->b or 'up' b->a)")
        return lk.channels[0] if Direction.parse(direction) is Direction.DOWN else lk.channels[1]

    def _link(self, name: object) -> Link:
        try:
            return self.links[name]  # type: ignore[index]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self.links)[:12])
            more = "…" if len(self.links) > 12 else ""
            raise DmaBufError(errno.EINVAL, f"unknown link {name!r} in {self.name}; known links: "
                              f"{known}{more}") from None

    def route(self, src: str, dst: str, *, via: str | None = None) -> tuple[Hop, ...]:
        """Shortest path of hops from node ``src`` to node ``dst`` (breadth-first, deterministic).

        Args:
            src: source node (where the data is).
            dst: destination node.
            via: a node the path must cross (e.g. the root complex, for P2P that ACS redirects
                upstream): the route is ``route(src, via) + route(via, dst)``.
        Context: never blocks.
        Returns: tuple of ``(link name, Direction)`` hops; empty when ``src == dst``.
        Raises: DmaBufError(EINVAL) for an unknown node; EHOSTUNREACH when no path exists.
        Kernel: none (drivers/pci/p2pdma.c walks the same tree to the common upstream bridge).
        """
        if via is not None:
            return self.route(src, via) + self.route(via, dst)
        for n in (src, dst):
            if n not in self.nodes:
                raise DmaBufError(errno.EINVAL, f"unknown node {n!r} in {self.name}")
        if src == dst:
            return ()
        prev: dict[str, tuple[str, str, Direction]] = {}
        seen = {src}
        todo = deque([src])
        while todo:
            cur = todo.popleft()
            if cur == dst:
                break
            for nxt, lname, d in self._adj[cur]:
                if nxt not in seen:
                    seen.add(nxt)
                    prev[nxt] = (cur, lname, d)
                    todo.append(nxt)
        if dst not in prev:
            raise DmaBufError(errno.EHOSTUNREACH, f"no path from {src!r} to {dst!r} in "
                              f"{self.name}")
        hops: list[Hop] = []
        cur = dst
        while cur != src:
            p, lname, d = prev[cur]
            hops.append((lname, d))
            cur = p
        return tuple(reversed(hops))

    def resolve_path(self, hops: Iterable[Any], kind: FlowKind | str = FlowKind.WRITE,
                     *, what: str = "path") -> PathInfo:
        """Validate a path and compute its channels, capacity, efficiency, latency and IOMMU use.

        Efficiency: every node crossed *between* two hops is a bridge the flow goes through. A
        switch gives ``switch_efficiency``; a root complex gives ``rc_memory_efficiency`` when
        one side is a memory link, ``cross_socket_efficiency`` when one side is an interconnect
        link, else the P2P efficiency for the flow's kind (``rc_p2p_write_efficiency`` /
        ``rc_p2p_read_efficiency``); a node's own ``efficiency`` overrides. The path's efficiency
        is the **lowest** of them (choice: each is a rate ceiling set by that bridge, so a path
        through a switch and a root complex is limited by the slower, and a path that crosses
        the same switch twice is not penalised twice).

        Args:
            hops: ``(link name, direction)`` pairs, direction a :class:`Direction` or
                ``"down"``/``"up"``.
            kind: the flow's :class:`FlowKind`.
            what: how to name the path in error messages (the flow's name).
        Context: never blocks.
        Returns: a :class:`PathInfo`.
        Raises: DmaBufError(EINVAL) for an empty path, a malformed hop, an unknown link or a
            path that is not contiguous.
        Kernel: none.
        """
        kind = FlowKind.parse(kind)
        p = self.params
        parsed: list[tuple[Link, Direction]] = []
        try:
            items = list(hops)
        except TypeError:
            raise DmaBufError(errno.EINVAL, f"{what}: the path must be a sequence of "
                              "(link, direction) hops") from None
        if not items:
            raise DmaBufError(errno.EINVAL, f"{what}: empty path; a flow crosses at least one "
                              "link (Fabric.route(src, dst) builds one)")
        for i, h in enumerate(items):
            if not isinstance(h, Sequence) or isinstance(h, str) or len(h) != 2:
                raise DmaBufError(errno.EINVAL, f"{what}: hop {i} is {h!r}; each hop is a "
                                  "(link name, direction) pair")
            parsed.append((self._link(h[0]), Direction.parse(h[1])))
        nodes: list[str] = [parsed[0][0].ends(parsed[0][1])[0]]
        for i, (lk, d) in enumerate(parsed):
            frm, to = lk.ends(d)
            if frm != nodes[-1]:
                raise DmaBufError(errno.EINVAL, f"{what}: path is not contiguous: hop {i} "
                                  f"({lk.name} {d.value}) leaves node {frm!r} but the previous "
                                  f"hop arrived at {nodes[-1]!r}")
            nodes.append(to)
        chan_list = [lk.channels[0] if d is Direction.DOWN else lk.channels[1]
                     for lk, d in parsed]
        chans, counts = np.unique(np.asarray(chan_list, dtype=np.int64), return_counts=True)
        cap = self.capacity
        min_capacity = float(np.min(cap[chans] / counts))
        latency = 0.0
        for lk, _ in parsed:
            latency += lk.spec.latency
        efficiency = 1.0
        bottleneck: str | None = None
        iommu = False
        for i in range(1, len(parsed)):
            node = self.nodes[nodes[i]]
            left, right = parsed[i - 1][0].spec.kind, parsed[i][0].spec.kind
            eff, lat = self._crossing(node, left, right, kind, p)
            latency += lat
            if eff < efficiency:
                efficiency, bottleneck = eff, node.name
            if node.kind is NodeKind.ROOT_COMPLEX:
                iommu = iommu or (p.iommu_enabled if node.iommu is None else node.iommu)
        return PathInfo(tuple((lk.name, d) for lk, d in parsed), tuple(nodes), chans,
                        counts.astype(np.float64), min_capacity, efficiency, bottleneck, latency,
                        iommu)

    @staticmethod
    def _crossing(node: Node, left: LinkKind, right: LinkKind, kind: FlowKind,
                  p: TimingParams) -> tuple[float, float]:
        if node.kind is NodeKind.SWITCH:
            eff, lat = p.switch_efficiency, p.switch_latency
        elif node.kind is NodeKind.ROOT_COMPLEX:
            lat = p.rc_latency
            if LinkKind.MEMORY in (left, right):
                eff = p.rc_memory_efficiency
            elif LinkKind.INTERCONNECT in (left, right):
                eff = p.cross_socket_efficiency
            elif kind is FlowKind.READ:
                eff = p.rc_p2p_read_efficiency
            else:
                eff = p.rc_p2p_write_efficiency
        else:
            eff, lat = 1.0, 0.0
        if node.efficiency is not None:
            eff = float(node.efficiency)
        if node.latency is not None:
            lat = float(node.latency)
        return eff, lat

    def describe(self) -> dict[str, Any]:
        """Snapshot of the fabric for reports and ``--json`` — no kernel counterpart.

        Context: pure; never blocks.
        Returns: ``{"name", "nodes": [...], "links": [...], "params": {...}}`` of plain values.
        Raises: nothing.
        Kernel: none.
        """
        return {
            "name": self.name,
            "nodes": [{"name": n.name, "kind": n.kind.value, "efficiency": n.efficiency,
                       "latency": n.latency, "iommu": n.iommu} for n in self.nodes.values()],
            "links": [{"name": lk.name, "a": lk.a, "b": lk.b, "bandwidth": lk.spec.bandwidth,
                       "latency": lk.spec.latency, "duplex": lk.spec.duplex,
                       "kind": lk.spec.kind.value, "description": lk.spec.description}
                      for lk in self.links.values()],
            "params": self.params.as_dict(),
        }


# ----------------------------------------------------------------------------------------------
# Link builders
# ----------------------------------------------------------------------------------------------


def pcie_link(gen: int, width: int, *, protocol_efficiency: float | None = None,
              latency: float | None = None) -> LinkSpec:
    """A PCIe link's spec from its generation and width — the LNKSTA speed/width a port trains to.

    ``bandwidth = transfer_rate * encoding / 8 * width * protocol_efficiency`` bytes/s per
    direction: Gen1/2 8b/10b, Gen3-5 128b/130b, Gen6 PAM4 FLIT 242/256 (see
    :data:`~dmabuf.sim.params.PCIE_GENERATIONS` for the rates and their sources). Gen5 x16 is
    63.015 GB/s encoded, 56.08 GB/s with the default protocol efficiency 0.89.

    Args:
        gen: PCIe generation 1..6.
        width: lanes, one of :data:`PCIE_WIDTHS`.
        protocol_efficiency: payload share after TLP/DLLP overhead, in (0, 1] (default
            ``TimingParams().protocol_efficiency``); 1.0 gives the encoded line rate.
        latency: seconds per traversal (default ``TimingParams().pcie_link_latency``).
    Context: pure; never blocks.
    Returns: a full-duplex :class:`LinkSpec` of kind PCIE.
    Raises: DmaBufError(EINVAL) for an unknown generation or width, or a bad efficiency.
    Kernel: none (include/uapi/linux/pci_regs.h PCI_EXP_LNKSTA_CLS_*GB / PCI_EXP_LNKSTA_NLW).
    """
    if isinstance(gen, bool) or not isinstance(gen, numbers.Integral) or gen not in \
            PCIE_GENERATIONS:
        raise DmaBufError(errno.EINVAL, f"PCIe generation {gen!r}: use one of "
                          f"{sorted(PCIE_GENERATIONS)}")
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width not in \
            PCIE_WIDTHS:
        raise DmaBufError(errno.EINVAL, f"PCIe width x{width!r}: use one of {PCIE_WIDTHS}")
    d = TimingParams()
    eff = d.protocol_efficiency if protocol_efficiency is None else protocol_efficiency
    if isinstance(eff, bool) or not isinstance(eff, numbers.Real) or not 0.0 < eff <= 1.0:
        raise DmaBufError(errno.EINVAL, f"protocol_efficiency {eff!r}: must be in (0, 1]")
    g = PCIE_GENERATIONS[int(gen)]
    bw = g.lane_bandwidth * int(width) * float(eff)
    lat = d.pcie_link_latency if latency is None else latency
    return LinkSpec(bw, lat, True, LinkKind.PCIE,
                    f"PCIe Gen{gen} x{width} ({g.transfer_rate / 1e9:g} GT/s, "
                    f"{g.encoding_name}, protocol efficiency {eff:g})")


def nic_link(gbps: float, *, efficiency: float | None = None,
             latency: float | None = None) -> LinkSpec:
    """A NIC port's spec from its line rate in Gb/s (100, 200, 400: 12.5, 25, 50 GB/s).

    Args:
        gbps: line rate in 10^9 bits/s (> 0).
        efficiency: payload share of the line rate, in (0, 1] (default
            ``TimingParams().network_efficiency`` = 1.0).
        latency: seconds per traversal (default ``TimingParams().network_latency``).
    Context: pure; never blocks.
    Returns: a full-duplex :class:`LinkSpec` of kind NETWORK.
    Raises: DmaBufError(EINVAL) for a non-positive rate or a bad efficiency.
    Kernel: none (ConnectX-7: 400 Gb/s NDR/400GbE, spec §6.1).
    """
    _check_positive_finite("NIC line rate", gbps, "Gb/s")
    d = TimingParams()
    eff = d.network_efficiency if efficiency is None else efficiency
    if isinstance(eff, bool) or not isinstance(eff, numbers.Real) or not 0.0 < eff <= 1.0:
        raise DmaBufError(errno.EINVAL, f"network efficiency {eff!r}: must be in (0, 1]")
    lat = d.network_latency if latency is None else latency
    return LinkSpec(gbps * 1e9 / 8.0 * eff, lat, True, LinkKind.NETWORK,
                    f"{gbps:g} Gb/s NIC port (efficiency {eff:g})")


def memory_link(bandwidth: float = H100_SXM5_HBM_BANDWIDTH, *, latency: float | None = None,
                description: str = "") -> LinkSpec:
    """A memory's spec: one bandwidth shared by reads and writes (not full duplex).

    Args:
        bandwidth: bytes/s (default: H100 SXM5 HBM3, 3.35 TB/s). Use
            :data:`~dmabuf.sim.params.HOST_DDR5_12CH_4800_BANDWIDTH` for host DRAM,
            :data:`~dmabuf.sim.params.NVME_GEN5_PM1753_BANDWIDTH` for SSD media.
        latency: seconds (default ``TimingParams().memory_latency``).
        description: where the figure comes from.
    Context: pure; never blocks.
    Returns: a shared (``duplex=False``) :class:`LinkSpec` of kind MEMORY.
    Raises: DmaBufError(EINVAL) for a non-positive bandwidth.
    Kernel: none.
    """
    lat = TimingParams().memory_latency if latency is None else latency
    return LinkSpec(bandwidth, lat, False, LinkKind.MEMORY,
                    description or f"memory {bandwidth / 1e9:g} GB/s")


def interconnect_link(bandwidth: float = XGMI_BANDWIDTH, *,
                      latency: float | None = None) -> LinkSpec:
    """An inter-socket link's spec (AMD xGMI; default 192 GB/s per direction, spec §6.1).

    Args:
        bandwidth: bytes/s per direction.
        latency: seconds (default ``TimingParams().interconnect_latency``, 0.08 µs).
    Context: pure; never blocks.
    Returns: a full-duplex :class:`LinkSpec` of kind INTERCONNECT.
    Raises: DmaBufError(EINVAL) for a non-positive bandwidth.
    Kernel: none.
    """
    lat = TimingParams().interconnect_latency if latency is None else latency
    return LinkSpec(bandwidth, lat, True, LinkKind.INTERCONNECT,
                    f"inter-socket link {bandwidth / 1e9:g} GB/s")


def default_fabric(params: TimingParams | None = None) -> Fabric:
    """The spec's default single-socket machine (kernel-p2p-dma.md §6.2) as a fabric.

    ::

        rc0 ─ rp0 (Gen5 x16) ─ sw0 ─ sw0.dsp0 (Gen5 x16) ─ gpu0 ─ gpu0.hbm ─ gpu0.mem (3.35TB/s)
            │                     ├ sw0.dsp1 (Gen5 x16) ─ nic0 ─ nic0.port ─ net0 (400Gb/s)
            │                     └ sw0.dsp2 (Gen5 x4) ─ nvme0 ─ nvme0.media ─ nvme0.mem (14.5GB/s)
            ├ rp1 (Gen5 x16) ─ gpu1 ─ gpu1.hbm ─ gpu1.mem
            ├ rp2 (Gen5 x16) ─ nic1 ─ nic1.port ─ net1
            ├ rp3 (Gen4 x4)  ─ nvme1 ─ nvme1.media ─ nvme1.mem
            └ ram0.bus ─ ram0 (host DDR5, 460.8 GB/s)

    Root ports are folded into ``rc0`` (one root-complex node); the NVMe links are x4 (the
    spec gives the SSD's rate, not its width; Gen5 SSDs are x4).

    Args:
        params: timing parameters (default: the defaults).
    Context: pure; never blocks.
    Returns: a new :class:`Fabric` named ``"default"``.
    Raises: nothing.
    Kernel: none.
    """
    f = Fabric(params or TimingParams(), "default")
    f.add_node("rc0", NodeKind.ROOT_COMPLEX)
    f.add_node("sw0", NodeKind.SWITCH)
    f.add_node("ram0", NodeKind.MEMORY)
    for ep in ("gpu0", "nic0", "nvme0", "gpu1", "nic1", "nvme1"):
        f.add_node(ep, NodeKind.ENDPOINT)
    for mem in ("gpu0.mem", "gpu1.mem", "nvme0.mem", "nvme1.mem"):
        f.add_node(mem, NodeKind.MEMORY)
    for net in ("net0", "net1"):
        f.add_node(net, NodeKind.NETWORK)
    f.add_pcie_link("rp0", "rc0", "sw0", 5, 16)
    f.add_pcie_link("sw0.dsp0", "sw0", "gpu0", 5, 16)
    f.add_pcie_link("sw0.dsp1", "sw0", "nic0", 5, 16)
    f.add_pcie_link("sw0.dsp2", "sw0", "nvme0", 5, 4)
    f.add_pcie_link("rp1", "rc0", "gpu1", 5, 16)
    f.add_pcie_link("rp2", "rc0", "nic1", 5, 16)
    f.add_pcie_link("rp3", "rc0", "nvme1", 4, 4)
    hbm = memory_link(H100_SXM5_HBM_BANDWIDTH, latency=f.params.memory_latency,
                      description="H100 SXM5 HBM3 3.35 TB/s")
    f.add_link("gpu0.hbm", "gpu0", "gpu0.mem", hbm)
    f.add_link("gpu1.hbm", "gpu1", "gpu1.mem", hbm)
    media = memory_link(NVME_GEN5_PM1753_BANDWIDTH, latency=f.params.memory_latency,
                        description="PM1753 Gen5 NVMe 14.5 GB/s")
    f.add_link("nvme0.media", "nvme0", "nvme0.mem", media)
    f.add_link("nvme1.media", "nvme1", "nvme1.mem", media)
    port = nic_link(400, efficiency=f.params.network_efficiency, latency=f.params.network_latency)
    f.add_link("nic0.port", "nic0", "net0", port)
    f.add_link("nic1.port", "nic1", "net1", port)
    f.add_link("ram0.bus", "rc0", "ram0",
               memory_link(HOST_DDR5_12CH_4800_BANDWIDTH, latency=f.params.memory_latency,
                           description="12 x DDR5-4800 460.8 GB/s"))
    return f


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _check_name(what: str, name: object) -> None:
    if not isinstance(name, str) or not name:
        raise DmaBufError(errno.EINVAL, f"{what} name {name!r}: must be a non-empty str")


def _check_positive_finite(what: str, v: object, unit: str) -> None:
    if (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v))
            or float(v) <= 0):
        raise DmaBufError(errno.EINVAL, f"{what} {v!r}: must be a finite number of {unit} > 0 "
                          "(zero bandwidth would never finish a transfer)")
