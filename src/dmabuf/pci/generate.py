"""Programmatic topologies — large, regular fabrics for benchmarks and property tests.

:func:`generate_topology` builds ``endpoints`` functions spread over as many host bridges as
needed: each host bridge has a root-complex function at 00.0 and ``root_ports`` root ports; each
root port carries a tree of PCIe switches ``switch_depth`` levels deep with ``fanout`` downstream
ports per switch (``switch_depth = 0`` puts one endpoint straight on each root port). Every
endpoint sits alone on its own secondary bus (as on a real link) and has one 64-bit prefetchable
BAR. Bus numbers are assigned depth-first as firmware does; a host bridge gets its own PCI domain
(segment) so that no domain runs out of its 256 buses.

Optional knobs: ACS redirect on a random fraction of the ports (seeded ``numpy`` generator), and
a published p2pmem pool on every k-th endpoint.

Kernel: none (a generator); bus numbering follows drivers/pci/probe.c pci_scan_bridge().
"""

from __future__ import annotations

import errno

import numpy as np

from dmabuf.errors import DmaBufError
from dmabuf.pci.pci_regs import (
    IORESOURCE_MEM,
    IORESOURCE_MEM_64,
    IORESOURCE_PREFETCH,
    PCI_ACS_CR,
    PCI_ACS_EC,
    PCI_ACS_RR,
    PCI_ACS_SV,
    PCI_ACS_UF,
    PcieType,
)
from dmabuf.pci.topology import Acs, Bar, CpuInfo, Link, PciDev, Topology, format_bdf

__all__ = ["generate_topology"]

_ACS_CAP = PCI_ACS_SV | PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_UF | PCI_ACS_EC
_REDIR = PCI_ACS_SV | PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_UF


def generate_topology(endpoints: int = 1000, *, root_ports: int = 8, switch_depth: int = 1,
                      fanout: int = 8, cpu: CpuInfo | None = None,
                      host_bridge_id: tuple[int, int] = (0x1022, 0x14A4),
                      acs_redirect_fraction: float = 0.0,
                      rng: np.random.Generator | None = None, p2pmem_every: int = 0,
                      bar_size: int = 32 << 20) -> Topology:
    """Build a regular fabric with ``endpoints`` endpoint functions.

    Args:
        endpoints: number of endpoints (> 0).
        root_ports: root ports per host bridge (1..31).
        switch_depth: switch levels below each root port (0..3).
        fanout: downstream ports per switch (1..32).
        cpu: the CPU (default: AMD family 0x19, so the AMD Zen rule applies).
        host_bridge_id: vendor/device of every host bridge's 00.0 function.
        acs_redirect_fraction: share of root/downstream ports given ACS RR+CR (0..1).
        rng: seeded generator; required when ``acs_redirect_fraction > 0``.
        p2pmem_every: give every k-th endpoint a published p2pmem pool over its BAR (0 = none).
        bar_size: BAR0 size of every endpoint (power of two, >= 2 MiB when p2pmem is used).

    Returns:
        A finalized :class:`Topology` named ``generated:<n>``.

    Raises:
        DmaBufError(EINVAL): bad parameters.

    Model-only: synthetic fabrics for benchmarks and property tests; the kernel enumerates real
    hardware.
    """
    if not isinstance(endpoints, int) or endpoints <= 0:
        raise DmaBufError(errno.EINVAL, f"endpoints must be a positive int, got {endpoints!r}")
    if not 1 <= root_ports <= 31 or not 0 <= switch_depth <= 3 or not 1 <= fanout <= 32:
        raise DmaBufError(errno.EINVAL, "root_ports must be 1..31, switch_depth 0..3, "
                          "fanout 1..32")
    if not 0.0 <= acs_redirect_fraction <= 1.0:
        raise DmaBufError(errno.EINVAL, "acs_redirect_fraction must be within 0..1")
    if acs_redirect_fraction > 0 and rng is None:
        raise DmaBufError(errno.EINVAL, "acs_redirect_fraction needs an explicit seeded rng")
    if bar_size <= 0 or bar_size & (bar_size - 1):
        raise DmaBufError(errno.EINVAL, f"bar_size {bar_size:#x} must be a power of two")
    per_rp = fanout ** switch_depth if switch_depth else 1
    per_hb = per_rp * root_ports
    # buses per root port: one per switch level internal bus + one per endpoint link
    buses_per_rp = sum(fanout ** k for k in range(switch_depth)) * 2 + per_rp \
        if switch_depth else 1
    if 1 + buses_per_rp * root_ports > 256:
        need = 1 + buses_per_rp * root_ports
        raise DmaBufError(errno.EINVAL, f"one host bridge would need {need} buses (> 256); "
                          "lower root_ports, fanout or switch_depth")
    topo = Topology(cpu=cpu or CpuInfo("AuthenticAMD", 0x19, "generated AMD Zen 4"),
                    source=f"generated:{endpoints}",
                    description=f"{endpoints} endpoints, {root_ports} root ports per host bridge,"
                                f" switch depth {switch_depth}, fanout {fanout}")
    n_hb = -(-endpoints // per_hb)
    gen = _Builder(topo, switch_depth, fanout, acs_redirect_fraction, rng, bar_size)
    for h in range(n_hb):
        topo.add_host_bridge(h, 0, numa_node=h % 2, label=f"hb{h}")
        topo.add_device(format_bdf(h, 0, 0), vendor=host_bridge_id[0],
                        device=host_bridge_id[1], class_code=0x060000, numa_node=h % 2)
        gen.bus = 1
        for r in range(root_ports):
            if gen.made >= endpoints:
                break
            rp = topo.add_device(format_bdf(h, 0, (r + 1) << 3), vendor=0x1022, device=0x14AB,
                                 class_code=0x060400, pcie_type=PcieType.ROOT_PORT,
                                 header_type=1, acs=gen.acs(), link=Link(32.0, 16, 32.0, 16),
                                 numa_node=h % 2, driver="pcieport")
            leaves: list[tuple[PciDev, int]] = []
            gen.build(rp, 0, h, leaves)
            for port, sec in leaves:
                if gen.made >= endpoints:
                    break
                gen.endpoint(port, h, sec)
    topo.finalize()
    if p2pmem_every:
        from dmabuf.pci import p2pdma

        for k, ep in enumerate(topo.endpoints()):
            if k % p2pmem_every == 0:
                p2pdma.pci_p2pdma_add_resource(ep, 0)
                p2pdma.pci_p2pmem_publish(ep, True)
    return topo


class _Builder:
    """Bus numbers, BAR addresses and IOMMU groups handed out while building."""

    def __init__(self, topo: Topology, depth: int, fanout: int, frac: float,
                 rng: np.random.Generator | None, bar_size: int) -> None:
        self.topo = topo
        self.depth = depth
        self.fanout = fanout
        self.frac = frac
        self.rng = rng
        self.bar_size = bar_size
        self.bus = 1
        self.made = 0
        self.next_addr = 1 << 40

    def acs(self) -> Acs:
        redirect = (self.rng is not None and self.frac > 0
                    and float(self.rng.random()) < self.frac)
        return Acs(cap=_ACS_CAP, ctrl=_REDIR if redirect else 0)

    def build(self, port: PciDev, level: int, dom: int,
              leaves: list[tuple[PciDev, int]]) -> None:
        """Give ``port`` a secondary bus; below it a switch, or a leaf slot at the last level."""
        sec = self.bus
        self.bus += 1
        node = dom % 2
        if level == self.depth:
            leaves.append((port, sec))
            return
        usp = self.topo.add_device(format_bdf(dom, sec, 0), parent=port.bdf, vendor=0x1000,
                                   device=0xC030, class_code=0x060400,
                                   pcie_type=PcieType.UPSTREAM, header_type=1,
                                   link=Link(32.0, 16, 32.0, 16), driver="pcieport",
                                   numa_node=node)
        dsp_bus = self.bus
        self.bus += 1
        for k in range(self.fanout):
            dsp = self.topo.add_device(format_bdf(dom, dsp_bus, k << 3), parent=usp.bdf,
                                       vendor=0x1000, device=0xC030, class_code=0x060400,
                                       pcie_type=PcieType.DOWNSTREAM, header_type=1,
                                       acs=self.acs(), link=Link(32.0, 16, 32.0, 16),
                                       driver="pcieport", numa_node=node)
            self.build(dsp, level + 1, dom, leaves)

    def endpoint(self, port: PciDev, dom: int, sec: int) -> None:
        """One endpoint alone on bus ``sec`` below ``port``, with a 64-bit BAR0."""
        addr = -(-self.next_addr // self.bar_size) * self.bar_size
        self.next_addr = addr + self.bar_size
        self.topo.add_device(
            format_bdf(dom, sec, 0), parent=port.bdf, vendor=0x10DE, device=0x2331,
            class_code=0x030200, pcie_type=PcieType.ENDPOINT, name=f"ep{self.made}",
            bars=[Bar(0, addr, self.bar_size,
                      IORESOURCE_MEM | IORESOURCE_MEM_64 | IORESOURCE_PREFETCH)],
            link=Link(32.0, 16, 32.0, 16), numa_node=dom % 2, iommu_group=self.made,
            driver="generic")
        self.made += 1
