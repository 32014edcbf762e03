"""TimingParams, the PCIe generation table and the link builders of dmabuf.sim."""

from __future__ import annotations

import errno

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.sim import (
    GIB,
    PCIE_GENERATIONS,
    Fabric,
    FlowSpec,
    LinkKind,
    LinkSpec,
    NodeKind,
    TimingParams,
    allocate,
    interconnect_link,
    memory_link,
    nic_link,
    pcie_link,
)


@pytest.mark.parametrize(("gen", "width", "bytes_per_s"), [
    (1, 1, 250_000_000),            # 2.5 GT/s, 8b/10b
    (2, 4, 2_000_000_000),          # 5 GT/s, 8b/10b
    (3, 16, 15_753_846_154),        # 8 GT/s, 128b/130b: spec §6.1 "15.75 GB/s"
    (4, 16, 31_507_692_308),        # 16 GT/s: "31.5 GB/s"
    (5, 16, 63_015_384_615),        # 32 GT/s: "63.0 GB/s"
    (5, 8, 31_507_692_308),
    (6, 16, 121_000_000_000),       # 64 GT/s PAM4, FLIT 242/256: "~121 GB/s"
])
def test_pcie_encoded_rates_per_direction(gen: int, width: int, bytes_per_s: int) -> None:
    spec = pcie_link(gen, width, protocol_efficiency=1.0)
    assert round(spec.bandwidth) == bytes_per_s
    assert spec.duplex is True
    assert spec.kind is LinkKind.PCIE
    assert f"Gen{gen} x{width}" in spec.description


def test_pcie_default_protocol_efficiency_is_089() -> None:
    assert TimingParams().protocol_efficiency == 0.89
    assert round(pcie_link(5, 16).bandwidth) == 56_083_692_308
    assert round(pcie_link(5, 16, protocol_efficiency=0.5).bandwidth) == 31_507_692_308
    assert PCIE_GENERATIONS[6].encoding == 242 / 256
    assert PCIE_GENERATIONS[3].encoding_name == "128b/130b"


def test_fabric_pcie_link_takes_protocol_efficiency_from_params() -> None:
    f = Fabric(TimingParams(protocol_efficiency=1.0))
    f.add_node("a", NodeKind.ENDPOINT)
    f.add_node("b", NodeKind.ENDPOINT)
    lk = f.add_pcie_link("l", "a", "b", 4, 16)
    assert round(lk.bandwidth) == 31_507_692_308
    assert f.capacity.tolist() == [lk.bandwidth, lk.bandwidth]


@pytest.mark.parametrize(("gbps", "bw"), [(100, 12.5e9), (200, 25e9), (400, 50e9)])
def test_nic_line_rates(gbps: int, bw: float) -> None:
    spec = nic_link(gbps)
    assert spec.bandwidth == bw
    assert spec.kind is LinkKind.NETWORK
    assert nic_link(gbps, efficiency=0.5).bandwidth == bw / 2


def test_memory_and_interconnect_links() -> None:
    hbm = memory_link()
    assert hbm.bandwidth == 3.35e12
    assert hbm.duplex is False
    assert memory_link(460.8e9).bandwidth == 460.8e9
    x = interconnect_link()
    assert (x.bandwidth, x.latency, x.duplex, x.kind) == (192e9, 0.08e-6, True,
                                                          LinkKind.INTERCONNECT)


@pytest.mark.parametrize(("call", "needle"), [
    (lambda: pcie_link(7, 16), "generation"),
    (lambda: pcie_link(0, 16), "generation"),
    (lambda: pcie_link(5, 3), "width"),
    (lambda: pcie_link(True, 16), "generation"),
    (lambda: pcie_link(5, 16, protocol_efficiency=0.0), "protocol_efficiency"),
    (lambda: pcie_link(5, 16, protocol_efficiency=1.5), "protocol_efficiency"),
    (lambda: nic_link(0), "line rate"),
    (lambda: nic_link(-100), "line rate"),
    (lambda: LinkSpec(0.0), "zero bandwidth"),
    (lambda: LinkSpec(float("inf")), "bandwidth"),
    (lambda: LinkSpec(1e9, latency=-1.0), "latency"),
    (lambda: memory_link(0), "bandwidth"),
])
def test_bad_link_specs_are_einval(call, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DmaBufError) as ei:
        call()
    assert ei.value.errno == errno.EINVAL
    assert needle in str(ei.value)


def test_params_replace_and_from_mapping() -> None:
    p = TimingParams().replace(rc_p2p_read_efficiency=0.3, iotlb_sync=1e-6)
    assert (p.rc_p2p_read_efficiency, p.iotlb_sync) == (0.3, 1e-6)
    assert p.switch_efficiency == 1.0
    q = TimingParams.from_mapping({"switch_efficiency": 0.963, "rc_latency": 0})
    assert (q.switch_efficiency, q.rc_latency) == (0.963, 0)
    assert q.as_dict()["switch_efficiency"] == 0.963


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"no_such_figure": 1.0}, "unknown timing parameter"),
    ({"switch_efficiency": 0.0}, "(0, 1]"),
    ({"rc_p2p_write_efficiency": 1.2}, "(0, 1]"),
    ({"rc_latency": -1e-6}, "negative"),
    ({"iotlb_sync": float("nan")}, "finite"),
    ({"iommu_page_size": 0}, "positive int"),
    ({"iommu_fq_size": 2.5}, "positive int"),
    ({"iommu_enabled": 1}, "True or False"),
    ({"switch_latency": "fast"}, "number"),
])
def test_bad_params_are_einval(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(DmaBufError) as ei:
        TimingParams().replace(**kwargs)
    assert ei.value.errno == errno.EINVAL
    assert needle in str(ei.value)
    with pytest.raises(DmaBufError):
        TimingParams.from_mapping(kwargs)


def test_unknown_key_message_lists_valid_names() -> None:
    with pytest.raises(DmaBufError, match=r"valid names: .*switch_efficiency"):
        TimingParams.from_mapping({"switch_eff": 1.0})
    with pytest.raises(DmaBufError, match="mapping"):
        TimingParams.from_mapping([("a", 1)])  # type: ignore[arg-type]


def test_map_and_unmap_costs_exact() -> None:
    p = TimingParams()
    assert p.map_cost(256, 2, iommu=True) == 2 * 0.1e-6 + 256 * 0.3e-6 + 3e-6
    assert p.map_cost(256, 2, iommu=False) == 0.0
    assert p.map_cost(0, 0, iommu=True) == 0.0
    # lazy domain: the IOTLB sync is amortised over the 256-entry flush queue
    assert p.unmap_cost(256, 2, iommu=True) == 2 * 0.1e-6 + 256 * 0.3e-6 + 3e-6 * 2 / 256
    strict = p.replace(iommu_strict=True)
    assert strict.unmap_cost(256, 2, iommu=True) == 2 * 0.1e-6 + 256 * 0.3e-6 + 3e-6
    assert p.unmap_cost(256, 2, iommu=False) == 0.0
    bus = p.replace(bus_addr_map_per_range=1e-7)
    assert bus.map_cost(256, 3, iommu=False) == 3e-7


def test_iotlb_miss_time_and_hugepages() -> None:
    p = TimingParams()
    assert p.iotlb_miss_time(1 << 20) == 256 * 40.96e-9
    assert p.iotlb_miss_time(1 << 21, page_size=2 << 20) == 40.96e-9
    assert p.iotlb_miss_time(0) == 0.0


def test_fault_and_invalidation_costs_exact() -> None:
    p = TimingParams()
    assert p.invalidate_cost(3) == 3 * 3e-6
    assert p.remap_cost(4) == 4 * 1e-6
    assert p.odp_fault_cost(2) == 2 * 20e-6
    assert p.invalidate_cost(0) == 0.0


@pytest.mark.parametrize("call", [
    lambda p: p.map_cost(-1, 1, iommu=True),
    lambda p: p.map_cost(1, -1, iommu=True),
    lambda p: p.map_cost(1.5, 1, iommu=True),
    lambda p: p.unmap_cost(1, True, iommu=True),
    lambda p: p.iotlb_miss_time(-1),
    lambda p: p.iotlb_miss_time(10, page_size=0),
    lambda p: p.invalidate_cost(-2),
    lambda p: p.remap_cost(None),
    lambda p: p.odp_fault_cost(-1),
])
def test_bad_cost_arguments_are_einval(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DmaBufError) as ei:
        call(TimingParams())
    assert ei.value.errno == errno.EINVAL


def test_iotlb_penalty_calibration_costs_20_percent_at_200_gbps() -> None:
    """The default penalty is calibrated on Farshin et al.: a 25 GB/s stream over 4 KiB pages
    through the IOMMU loses exactly 20 %; 2 MiB pages recover almost all of it."""
    p = TimingParams(rc_latency=0.0)
    f = Fabric(p)
    f.add_node("rc", NodeKind.ROOT_COMPLEX)
    f.add_node("ram", NodeKind.MEMORY)
    f.add_node("nic", NodeKind.ENDPOINT)
    f.add_link("dram", "rc", "ram", memory_link(460.8e9))
    f.add_link("rp", "rc", "nic", LinkSpec(25e9, kind=LinkKind.PCIE))
    path = f.route("nic", "ram")
    a = allocate(f, [FlowSpec("rx", path, GIB),
                     FlowSpec("huge", f.route("nic", "ram"), GIB, page_size=2 << 20)])
    # Two flows share the 25 GB/s link: each below its ceiling.
    assert a.rates["rx"] == pytest.approx(12.5e9, rel=1e-12)
    alone = allocate(f, [FlowSpec("rx", path, GIB)])
    assert alone.rates["rx"] == pytest.approx(0.8 * 25e9, rel=1e-12)
    assert alone.bottleneck["rx"] == "ceiling (IOTLB misses)"
    huge = allocate(f, [FlowSpec("huge", path, GIB, page_size=2 << 20)])
    assert huge.rates["huge"] == pytest.approx(1 / (1 / 25e9 + 40.96e-9 / (2 << 20)), rel=1e-12)
