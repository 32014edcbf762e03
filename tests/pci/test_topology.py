"""The Topology data model: building, lookup, validation, attach_memory."""

from __future__ import annotations

import errno

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.mm.phys import MemKind, PhysMemory
from dmabuf.pci import Bar, CpuInfo, PcieType, Topology, TopologyError, default_topology
from dmabuf.pci.pci_regs import IORESOURCE_MEM
from dmabuf.pci.topology import Link, format_bdf, parse_bdf


def small() -> Topology:
    t = Topology(cpu=CpuInfo("AuthenticAMD", 0x19), source="small")
    t.add_host_bridge(0, 0, label="hb0")
    t.add_device("0000:00:00.0", vendor=0x1022, device=0x14A4, class_code=0x060000)
    t.add_device("0000:00:01.0", name="rp", vendor=0x1022, device=0x14AB, class_code=0x060400,
                 pcie_type=PcieType.ROOT_PORT)
    t.add_device("0000:01:00.0", parent="rp", name="ep", vendor=1, device=2,
                 class_code=0x010802, pcie_type=PcieType.ENDPOINT,
                 bars=[Bar(0, 0xF000_0000, 1 << 20, IORESOURCE_MEM)], numa_node=1)
    return t.finalize()


def test_bdf_parse_and_format() -> None:
    assert parse_bdf("0000:03:1f.7") == (0, 3, 0x1F, 7)
    assert parse_bdf("03:00.1") == (0, 3, 0, 1)
    assert parse_bdf("10000:e0:06.0") == (0x10000, 0xE0, 6, 0)
    assert format_bdf(0, 3, (0x1F << 3) | 7) == "0000:03:1f.7"
    for bad in ("0000:03:00", "zz:00.0", "0000:03:00.8", "0000:03:20.0"):
        with pytest.raises(DmaBufError) as ei:
            parse_bdf(bad)
        assert ei.value.errno == errno.EINVAL


def test_lookup_by_name_bdf_short_bdf_and_errors() -> None:
    t = small()
    ep = t.device("ep")
    assert t.device("0000:01:00.0") is ep and t.device("01:00.0") is ep
    assert t.device(ep) is ep
    assert t.host_bridge("hb0") is t.host_bridge("pci0000:00")
    with pytest.raises(DmaBufError) as ei:
        t.device("epp")
    assert ei.value.errno == errno.ENODEV
    assert "did you mean ep" in str(ei.value) and "candidates: ep, rp" in str(ei.value)
    with pytest.raises(DmaBufError):
        t.host_bridge("hb9")
    with pytest.raises(DmaBufError) as ei:
        default_topology().device(ep)
    assert ei.value.errno == errno.ENODEV


def test_tree_shape_and_describe() -> None:
    t = small()
    ep, rp = t.device("ep"), t.device("rp")
    assert ep.parent is rp and rp.children == [ep] and ep.host_bridge is t.host_bridges[0]
    assert ep.chain() == [ep, rp]
    assert [d.bdf for d in t.endpoints()] == ["0000:01:00.0"]
    assert t.host_bridges[0].root_dev() is t.device("0000:00:00.0")
    d = ep.describe()
    assert (d["kind"], d["parent"], d["numa_node"], d["class"]) == ("endpoint", rp.bdf, 1,
                                                                    "010802")
    assert t.describe()["cpu"]["cpu_supports_p2pdma"] is True
    with pytest.raises(TopologyError) as ei:
        t.add_device("0000:02:00.0", vendor=1, device=1, class_code=0)
    assert ei.value.errno == errno.EBUSY


def test_children_of_one_bridge_share_a_bus() -> None:
    t = Topology()
    t.add_host_bridge(0, 0)
    t.add_device("0000:00:01.0", name="rp", vendor=1, device=1, class_code=0x060400,
                 pcie_type=PcieType.ROOT_PORT)
    t.add_device("0000:01:00.0", parent="rp", vendor=1, device=1, class_code=0)
    t.add_device("0000:02:00.0", parent="rp", vendor=1, device=1, class_code=0)
    with pytest.raises(TopologyError) as ei:
        t.finalize()
    assert "several buses" in str(ei.value) and ei.value.device == "0000:00:01.0"


def test_duplicates_and_bad_ids() -> None:
    t = Topology()
    t.add_host_bridge(0, 0, label="x")
    with pytest.raises(TopologyError) as ei:
        t.add_host_bridge(0, 0)
    assert ei.value.errno == errno.EEXIST
    t.add_device("0000:00:01.0", name="a", vendor=1, device=1, class_code=0)
    with pytest.raises(TopologyError) as ei:
        t.add_device("00:01.0", vendor=1, device=1, class_code=0)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(TopologyError) as ei:
        t.add_device("0000:00:02.0", name="a", vendor=1, device=1, class_code=0)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(TopologyError) as ei:
        t.add_device("0000:00:03.0", vendor=-1, device=1, class_code=0)
    assert ei.value.errno == errno.EINVAL and ei.value.key == "vendor"


def test_set_acs_ctrl_validation() -> None:
    t = default_topology()
    t.set_acs_ctrl("dsp0", 0x0C)
    acs = t.device("dsp0").acs
    assert acs is not None and acs.redirects and acs.describe()["ctrl_bits"] == ["RR", "CR"]
    for ref, val in (("gpu0", 1), ("dsp0", 0x10000), ("dsp0", True)):
        with pytest.raises(DmaBufError) as ei:
            t.set_acs_ctrl(ref, val)
        assert ei.value.errno == errno.EINVAL


def test_link_text_and_bandwidth() -> None:
    assert Link(32.0, 16).text() == "Gen5 x16"
    assert Link(2.5, 1).text() == "Gen1 x1"
    assert Link().text() == ""
    bw = Link(32.0, 16).bandwidth_gbs()
    assert bw is not None and round(bw, 2) == 63.02
    assert Link(5.0, 4).bandwidth_gbs() == 2.0


def test_attach_memory_registers_bar_apertures() -> None:
    t = default_topology()
    phys = PhysMemory()
    regions = t.attach_memory(phys)
    gpu_bar1 = regions["0000:03:00.0 BAR1"]
    assert gpu_bar1.kind == MemKind.MMIO and gpu_bar1.base == 0x100_0000_0000
    assert gpu_bar1.size == 64 << 30 and gpu_bar1.numa_node == 0
    assert phys.region_at(0x110_4000_0000 + 4096).name == "0000:05:00.0 BAR2"
    assert len(regions) == 14
    with pytest.raises(DmaBufError):
        t.attach_memory(phys)           # same names again
