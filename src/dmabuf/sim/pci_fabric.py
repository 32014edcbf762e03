"""A PCI topology as a timing-model fabric, and the paths DMA takes through it.

Kernel: none. :mod:`dmabuf.pci` knows the hierarchy and decides P2P (map type, distance);
:mod:`dmabuf.sim.fabric` knows links and bandwidth. This module builds the second from the first
so a scenario on *any* topology (the reference fabric, a TOML file, a captured sysfs tree) can be
timed, and computes the path a transfer's bytes take for a given decision.

The conversion (:func:`fabric_from_topology`)
    * each host bridge is a ``ROOT_COMPLEX`` node (its label, ``hb0``, else ``pciDDDD:BB``) with
      its root ports folded in; host DRAM of each NUMA node hangs off the first host bridge of
      that node (``ram<N>``, :data:`~dmabuf.sim.params.HOST_DDR5_12CH_4800_BANDWIDTH`); host
      bridges are joined by inter-socket links (xGMI figure) in a chain;
    * a switch (its upstream port) is a ``SWITCH`` node; its downstream ports are folded in;
      other bridges are switches too;
    * every endpoint slot is an ``ENDPOINT`` node (functions of one slot share it; a VF shares
      its PF's node — they share the physical link);
    * the PCIe link above a device is named after the port it hangs from (``rp0``, ``dsp1``;
      ``<device>.up`` for a conventional bridge) and runs at the slower of the two ends' trained
      speed and width (Gen5 x16 when the topology does not say);
    * an endpoint with a memory BAR gets a ``MEMORY`` node ``<name>.mem`` behind a shared link
      ``<name>.memlink`` — HBM for GPUs and accelerators (base classes 0x03, 0x12, 0x0b), SSD
      media for NVMe (0x01), otherwise a memory no slower than the device's PCIe link;
    * every NIC (base class 0x02) gets a port ``<name>.port`` (400 Gb/s by default) to one
      ``NETWORK`` node ``net``: NIC-to-NIC RDMA goes over it.

Paths (:meth:`PciFabric.path`)
    The tree path between two nodes climbs to their lowest common ancestor and descends — the
    route of a BUS_ADDR (switch-local) P2P transfer. With ``via_rc=True`` it climbs to the root
    complex first, as a transfer does when ACS redirects it upstream (THRU_HOST_BRIDGE) or when
    the data is staged in host memory. Network hops are added explicitly by
    :meth:`PciFabric.rdma_path`; the tree walk never shortcuts through the network.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from dmabuf.errors import DmaBufError
from dmabuf.pci.pci_regs import PcieType
from dmabuf.pci.topology import HostBridge, PciDev, Topology
from dmabuf.sim.fabric import Direction, Fabric, Hop, NodeKind
from dmabuf.sim.fabric import Link as FabricLink
from dmabuf.sim.params import (
    H100_SXM5_HBM_BANDWIDTH,
    HOST_DDR5_12CH_4800_BANDWIDTH,
    NVME_GEN5_PM1753_BANDWIDTH,
    TimingParams,
)

__all__ = ["NIC_GBPS", "PciFabric", "fabric_from_topology"]

#: Line rate of a NIC port unless the scenario says otherwise (ConnectX-7, spec §6.1).
NIC_GBPS = 400.0
_HBM_CLASSES = (0x03, 0x12, 0x0B)


def _hb_name(hb: HostBridge) -> str:
    return hb.label or hb.name


@dataclass
class PciFabric:
    """A :class:`~dmabuf.sim.fabric.Fabric` built from a topology, with the maps to use it.

    Attributes:
        fabric: the fabric.
        topology: the topology it was built from.
        node_of: BDF -> fabric node of the function (VFs and sibling functions share a node).
        mem_of: BDF -> memory node of the function's BARs (absent without a memory BAR).
        ram_of: NUMA node -> host DRAM node.
        rc_of: fabric node -> its root-complex node.
        net: the network node (None without NICs).
        port_of: NIC fabric node -> its port link name.
    """

    fabric: Fabric
    topology: Topology
    node_of: dict[str, str] = field(default_factory=dict)
    mem_of: dict[str, str] = field(default_factory=dict)
    ram_of: dict[int, str] = field(default_factory=dict)
    rc_of: dict[str, str] = field(default_factory=dict)
    net: str | None = None
    port_of: dict[str, str] = field(default_factory=dict)
    _up: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    # -- lookups --------------------------------------------------------------------------------
    def node(self, ref: str | PciDev) -> str:
        """Fabric node of a PCI function (name or BDF).

        Raises: DmaBufError(ENODEV) for an unknown function.
        """
        pdev = self.topology.device(ref)
        return self.node_of[pdev.bdf]

    def memory(self, ref: str | PciDev) -> str:
        """Memory node of a function's BARs.

        Raises: DmaBufError(ENODEV) when the function has no memory BAR in the fabric.
        """
        pdev = self.topology.device(ref)
        try:
            return self.mem_of[pdev.bdf]
        except KeyError:
            raise DmaBufError(errno.ENODEV, f"{pdev.label} has no device memory in the fabric"
                              ) from None

    def ram(self, numa_node: int | None = None) -> str:
        """Host DRAM node of ``numa_node`` (default: the first)."""
        if numa_node is not None and numa_node in self.ram_of:
            return self.ram_of[numa_node]
        return next(iter(self.ram_of.values()))

    def root_complex(self, node: str) -> str:
        """The root-complex node above ``node``."""
        return self.rc_of[node]

    # -- paths ----------------------------------------------------------------------------------
    def _ancestors(self, node: str) -> list[str]:
        out = [node]
        while out[-1] in self._up:
            out.append(self._up[out[-1]][0])
        return out

    def _climb(self, a: str, stop: str) -> list[Hop]:
        hops: list[Hop] = []
        cur = a
        while cur != stop:
            parent, link = self._up[cur]
            hops.append((link, Direction.UP))
            cur = parent
        return hops

    def path(self, src: str, dst: str, *, via_rc: bool = False) -> tuple[Hop, ...]:
        """Hops from fabric node ``src`` to ``dst`` through the PCI tree.

        Args:
            src: where the bytes are (a memory or endpoint node).
            dst: where they go.
            via_rc: climb to the root complex first (ACS redirect, staging in host memory).
        Context: pure.
        Returns: the hops; empty when ``src == dst``.
        Raises: DmaBufError(EINVAL) for an unknown node; EHOSTUNREACH when the nodes are in
            different trees (cannot happen for a topology's nodes).
        Kernel: none (drivers/pci/p2pdma.c walks the same tree to the common upstream bridge).
        """
        for n in (src, dst):
            if n not in self.fabric.nodes:
                raise DmaBufError(errno.EINVAL, f"unknown fabric node {n!r}")
        if src == dst:
            return ()
        sa = self._ancestors(src)
        da = self._ancestors(dst)
        if via_rc:
            top = sa[-1]
            if da[-1] != top:
                raise DmaBufError(errno.EHOSTUNREACH, f"{src!r} and {dst!r} are in different "
                                  "trees")
            rc = self.rc_of.get(src, top)
            up = self._climb(src, rc)
            down = list(reversed(self._climb(dst, rc)))
            return tuple(up + [(lk, Direction.DOWN) for lk, _ in down])
        dset = set(da)
        lca = next((n for n in sa if n in dset), None)
        if lca is None:
            raise DmaBufError(errno.EHOSTUNREACH, f"no path from {src!r} to {dst!r}")
        up = self._climb(src, lca)
        down = list(reversed(self._climb(dst, lca)))
        return tuple(up + [(lk, Direction.DOWN) for lk, _ in down])

    def crosses_rc(self, hops: tuple[Hop, ...]) -> bool:
        """Whether a path passes through a root complex (so the IOMMU sees it)."""
        info = self.fabric.resolve_path(hops) if hops else None
        if info is None:
            return False
        return any(self.fabric.nodes[n].kind is NodeKind.ROOT_COMPLEX for n in info.nodes[1:-1])

    def rdma_path(self, src_nic: str, dst_nic: str) -> tuple[Hop, ...]:
        """The network hops from one NIC to another (``<nic>.port`` down, then up).

        Raises: DmaBufError(EINVAL) when either is not a NIC of the fabric.
        """
        for n in (src_nic, dst_nic):
            if n not in self.port_of:
                raise DmaBufError(errno.EINVAL, f"{n!r} is not a NIC with a network port")
        return ((self.port_of[src_nic], Direction.DOWN), (self.port_of[dst_nic], Direction.UP))

    def nodes_of(self, hops: tuple[Hop, ...]) -> list[str]:
        """Node names a path visits, in order."""
        if not hops:
            return []
        return list(self.fabric.resolve_path(hops).nodes)


def _slot_key(d: PciDev) -> PciDev:
    """The function whose fabric node ``d`` shares: its PF for a VF, function 0 of its slot."""
    if d.physfn is not None:
        return _slot_key(d.physfn)
    return d


def _pcie_link_args(a: PciDev | None, b: PciDev) -> tuple[int, int]:
    gens = []
    widths = []
    for d in (a, b):
        if d is None:
            continue
        g = d.link.gen_of(d.link.speed)
        if g:
            gens.append(g)
        if d.link.width:
            widths.append(d.link.width)
    return (min(gens) if gens else 5, min(widths) if widths else 16)


def fabric_from_topology(topo: Topology, params: TimingParams | None = None, *,
                         nic_gbps: dict[str, float] | None = None) -> PciFabric:
    """Build the timing-model fabric of a PCI topology — see the module docstring.

    Args:
        topo: a finalized topology.
        params: timing parameters of the fabric (default: the defaults).
        nic_gbps: line rate per NIC (name or BDF) in Gb/s; default :data:`NIC_GBPS`.
    Context: pure; never blocks.
    Returns: a :class:`PciFabric`.
    Raises: DmaBufError(EINVAL) for a topology without host bridges.
    Kernel: none.
    """
    from dmabuf.sim.fabric import interconnect_link, memory_link, nic_link

    p = params or TimingParams()
    f = Fabric(p, f"pci:{topo.source}")
    pf = PciFabric(f, topo)
    if not topo.host_bridges:
        raise DmaBufError(errno.EINVAL, f"topology {topo.source} has no host bridge")
    used: set[str] = set()

    def unique(name: str) -> str:
        n, k = name, 1
        while n in used:
            k += 1
            n = f"{name}#{k}"
        used.add(n)
        return n

    def add_link(name: str, a: str, b: str, spec: object) -> FabricLink:
        from dmabuf.sim.fabric import LinkSpec
        assert isinstance(spec, LinkSpec)
        lk = f.add_link(unique(name), a, b, spec)
        pf._up[b] = (a, lk.name)
        return lk

    prev_hb: str | None = None
    for hb in topo.host_bridges:
        rc = unique(_hb_name(hb))
        f.add_node(rc, NodeKind.ROOT_COMPLEX)
        pf.rc_of[rc] = rc
        numa = hb.numa_node if hb.numa_node is not None else 0
        if numa not in pf.ram_of:
            ram = unique(f"ram{numa}")
            f.add_node(ram, NodeKind.MEMORY)
            add_link(f"{ram}.bus", rc, ram,
                     memory_link(HOST_DDR5_12CH_4800_BANDWIDTH, latency=p.memory_latency,
                                 description="host DDR5 (12 x DDR5-4800, 460.8 GB/s)"))
            pf.ram_of[numa] = ram
            pf.rc_of[ram] = rc
        if prev_hb is not None:
            add_link(f"{prev_hb}-{rc}", prev_hb, rc, interconnect_link(latency=None))
        prev_hb = prev_hb or rc
        for d in hb.devices:
            _add_subtree(pf, d, rc, rc, None, add_link, unique)
    # Functions that share a node (VFs, other functions of a slot) map to it.
    for d in topo.devices:
        if d.bdf not in pf.node_of:
            key = _slot_key(d)
            if key.bdf in pf.node_of:
                pf.node_of[d.bdf] = pf.node_of[key.bdf]
                if key.bdf in pf.mem_of:
                    pf.mem_of.setdefault(d.bdf, pf.mem_of[key.bdf])
    # NICs and the network.
    nics = [d for d in topo.devices if d.is_endpoint and (d.class_code >> 16) == 0x02
            and d.physfn is None and d.bdf in pf.node_of]
    if nics:
        net = unique("net")
        f.add_node(net, NodeKind.NETWORK)
        pf.net = net
        for d in nics:
            node = pf.node_of[d.bdf]
            if node in pf.port_of:
                continue
            gbps = NIC_GBPS
            if nic_gbps:
                gbps = nic_gbps.get(d.name or "", nic_gbps.get(d.bdf, NIC_GBPS))
            lk = f.add_link(unique(f"{node}.port"), node, net,
                            nic_link(gbps, efficiency=p.network_efficiency,
                                     latency=p.network_latency))
            pf.port_of[node] = lk.name
    return pf


def _add_subtree(pf: PciFabric, d: PciDev, parent_node: str, rc: str, port: PciDev | None,
                 add_link: object, unique: object) -> None:
    """Add ``d`` (hanging below ``parent_node`` through ``port``) and everything under it."""
    from collections.abc import Callable

    from dmabuf.sim.fabric import memory_link, pcie_link

    assert callable(add_link) and callable(unique)
    al: Callable[..., FabricLink] = add_link
    un: Callable[[str], str] = unique
    f = pf.fabric
    p = f.params
    if d.is_host_bridge_function or d.physfn is not None:
        return
    if d.pcie_type in (PcieType.ROOT_PORT, PcieType.DOWNSTREAM):
        # A port is folded into the node above; its children hang from it through a link named
        # after the port.
        pf.node_of[d.bdf] = parent_node
        for c in d.children:
            _add_subtree(pf, c, parent_node, rc, d, add_link, unique)
        return
    if d.func != 0 and d.is_endpoint:
        sib = _sibling_node(pf, d)
        if sib is not None:
            pf.node_of[d.bdf] = sib
            return
    name = un(d.name or d.bdf)
    kind = NodeKind.ENDPOINT if d.is_endpoint else NodeKind.SWITCH
    f.add_node(name, kind)
    pf.node_of[d.bdf] = name
    pf.rc_of[name] = rc
    gen, width = _pcie_link_args(port, d)
    lname = port.name if port is not None and port.name else (
        port.bdf if port is not None else f"{name}.up")
    if port is None and d.parent is None:
        lname = f"{name}.up"   # a root-complex integrated device
    al(lname, parent_node, name, pcie_link(gen, width,
                                           protocol_efficiency=p.protocol_efficiency,
                                           latency=p.pcie_link_latency))
    if d.is_endpoint:
        bars = [b for b in d.bars.values() if b.is_mem and b.size >= 4096]
        if bars:
            base = d.class_code >> 16
            if base in _HBM_CLASSES:
                spec = memory_link(H100_SXM5_HBM_BANDWIDTH, latency=p.memory_latency,
                                   description="device HBM 3.35 TB/s")
            elif base == 0x01:
                spec = memory_link(NVME_GEN5_PM1753_BANDWIDTH, latency=p.memory_latency,
                                   description="NVMe CMB/media 14.5 GB/s")
            else:
                bw = pcie_link(gen, width).bandwidth * 2
                spec = memory_link(bw, latency=p.memory_latency,
                                   description="device memory (not a bottleneck)")
            mem = un(f"{name}.mem")
            f.add_node(mem, NodeKind.MEMORY)
            al(f"{name}.memlink", name, mem, spec)
            pf.mem_of[d.bdf] = mem
            pf.rc_of[mem] = rc
        return
    for c in d.children:
        _add_subtree(pf, c, name, rc, None if d.pcie_type is PcieType.UPSTREAM else d,
                     add_link, unique)


def _sibling_node(pf: PciFabric, d: PciDev) -> str | None:
    """The node of another function in the same slot (same parent, bus and device number)."""
    for other in (d.parent.children if d.parent is not None else
                  (d.host_bridge.devices if d.host_bridge is not None else [])):
        if other is d or other.physfn is not None:
            continue
        if other.bus == d.bus and other.slot == d.slot and other.bdf in pf.node_of \
                and other.is_endpoint:
            return pf.node_of[other.bdf]
    return None
