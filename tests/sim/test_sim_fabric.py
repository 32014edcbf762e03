"""The abstract fabric of dmabuf.sim: nodes, links, channels, routes and path resolution."""

from __future__ import annotations

import errno

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.sim import (
    Direction,
    Fabric,
    FlowKind,
    LinkKind,
    LinkSpec,
    NodeKind,
    TimingParams,
    default_fabric,
    memory_link,
    pcie_link,
)

DOWN, UP = Direction.DOWN, Direction.UP
GEN5X16 = pcie_link(5, 16).bandwidth


def test_default_fabric_routes() -> None:
    f = default_fabric()
    assert f.route("gpu0", "nic0") == (("sw0.dsp0", UP), ("sw0.dsp1", DOWN))
    assert f.route("gpu1", "nic1") == (("rp1", UP), ("rp2", DOWN))
    assert f.route("gpu0.mem", "net0") == (("gpu0.hbm", UP), ("sw0.dsp0", UP),
                                           ("sw0.dsp1", DOWN), ("nic0.port", DOWN))
    # P2P redirected upstream by ACS: up to the root complex and back down the same port.
    assert f.route("gpu0", "nic0", via="rc0") == (("sw0.dsp0", UP), ("rp0", UP), ("rp0", DOWN),
                                                  ("sw0.dsp1", DOWN))
    assert f.route("gpu0", "gpu0") == ()
    assert f.n_channels == 2 * 7 + 4 + 2 * 2 + 1


def test_switch_path_bus_addr_resolution() -> None:
    f = default_fabric()
    info = f.resolve_path(f.route("gpu0", "nic0"))
    assert info.nodes == ("gpu0", "sw0", "nic0")
    assert info.min_capacity == GEN5X16
    assert info.efficiency == 1.0
    assert info.latency == 115e-9
    assert info.iommu is False
    assert info.channels.tolist() == sorted([f.channel("sw0.dsp0", "up"),
                                             f.channel("sw0.dsp1", "down")])
    assert info.counts.tolist() == [1.0, 1.0]


def test_root_complex_path_resolution() -> None:
    f = default_fabric(TimingParams(rc_p2p_write_efficiency=0.8, rc_p2p_read_efficiency=0.4))
    w = f.resolve_path(f.route("gpu1", "nic1"))
    assert (w.efficiency, w.bottleneck_node, w.latency, w.iommu) == (0.8, "rc0", 0.36e-6, True)
    r = f.resolve_path(f.route("gpu1", "nic1"), FlowKind.READ)
    assert r.efficiency == 0.4
    acs = f.resolve_path(f.route("gpu0", "nic0", via="rc0"), "write")
    assert acs.latency == pytest.approx(2 * 115e-9 + 0.36e-6, rel=1e-15)
    assert acs.efficiency == 0.8
    assert acs.iommu is True
    # DMA to host memory through the root complex uses rc_memory_efficiency.
    mem = f.resolve_path(f.route("nic1", "ram0"), "read")
    assert mem.efficiency == 1.0
    assert mem.iommu is True


def test_lowest_bridge_efficiency_wins() -> None:
    p = TimingParams(switch_efficiency=0.9, rc_p2p_write_efficiency=0.95)
    f = default_fabric(p)
    info = f.resolve_path(f.route("gpu0", "gpu1"))
    assert (info.efficiency, info.bottleneck_node) == (0.9, "sw0")


def test_node_overrides() -> None:
    f = Fabric()
    f.add_node("rc", NodeKind.ROOT_COMPLEX, efficiency=0.6, latency=1e-6, iommu=False)
    f.add_node("a", "endpoint")
    f.add_node("b", "endpoint")
    f.add_link("la", "rc", "a", pcie_link(4, 16))
    f.add_link("lb", "rc", "b", pcie_link(4, 8))
    info = f.resolve_path([("la", "up"), ("lb", "down")], "read")
    assert (info.efficiency, info.latency, info.iommu) == (0.6, 1e-6, False)
    assert info.min_capacity == pcie_link(4, 8).bandwidth


def test_shared_memory_link_used_twice_counts_twice() -> None:
    f = Fabric()
    f.add_node("gpu", NodeKind.ENDPOINT)
    f.add_node("hbm", NodeKind.MEMORY)
    lk = f.add_link("mem", "gpu", "hbm", memory_link(2e12))
    assert lk.channels[0] == lk.channels[1]
    info = f.resolve_path([("mem", UP), ("mem", DOWN)])  # a device-local copy
    assert info.counts.tolist() == [2.0]
    assert info.min_capacity == 1e12
    assert f.channel("mem") == lk.channels[0]
    assert f.channel_name(lk.channels[0]) == ("mem", None)


def test_cross_socket_efficiency() -> None:
    from dmabuf.sim import interconnect_link

    f = Fabric()
    for n in ("rc0", "rc1"):
        f.add_node(n, NodeKind.ROOT_COMPLEX)
    f.add_node("g0", NodeKind.ENDPOINT)
    f.add_node("g1", NodeKind.ENDPOINT)
    f.add_link("x", "rc0", "rc1", interconnect_link())
    f.add_pcie_link("p0", "rc0", "g0", 5, 16)
    f.add_pcie_link("p1", "rc1", "g1", 5, 16)
    info = f.resolve_path(f.route("g0", "g1"))
    assert info.efficiency == 0.90
    assert info.latency == pytest.approx(2 * 0.36e-6 + 0.08e-6, rel=1e-15)


@pytest.mark.parametrize(("hops", "err", "needle"), [
    ([], errno.EINVAL, "empty path"),
    ([("nope", "up")], errno.EINVAL, "unknown link 'nope'"),
    ([("sw0.dsp0", "sideways")], errno.EINVAL, "direction"),
    ([("sw0.dsp0", "up"), ("rp1", "down")], errno.EINVAL, "not contiguous"),
    (["sw0.dsp0"], errno.EINVAL, "hop 0"),
    ([("sw0.dsp0",)], errno.EINVAL, "hop 0"),
    (42, errno.EINVAL, "sequence"),
])
def test_bad_paths(hops: object, err: int, needle: str) -> None:
    f = default_fabric()
    with pytest.raises(DmaBufError) as ei:
        f.resolve_path(hops)  # type: ignore[arg-type]
    assert ei.value.errno == err
    assert needle in str(ei.value)


def test_bad_fabric_building() -> None:
    f = Fabric()
    f.add_node("a", NodeKind.ENDPOINT)
    with pytest.raises(DmaBufError) as ei:
        f.add_node("a", NodeKind.ENDPOINT)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(DmaBufError, match="node kind"):
        f.add_node("b", "blender")
    with pytest.raises(DmaBufError, match="efficiency"):
        f.add_node("b", NodeKind.SWITCH, efficiency=0.0)
    with pytest.raises(DmaBufError, match="latency"):
        f.add_node("b", NodeKind.SWITCH, latency=-1.0)
    with pytest.raises(DmaBufError, match="unknown node 'zz'"):
        f.add_link("l", "a", "zz", LinkSpec(1e9))
    f.add_node("b", NodeKind.ENDPOINT)
    with pytest.raises(DmaBufError, match="itself"):
        f.add_link("l", "a", "a", LinkSpec(1e9))
    with pytest.raises(DmaBufError, match="LinkSpec"):
        f.add_link("l", "a", "b", 1e9)  # type: ignore[arg-type]
    f.add_link("l", "a", "b", LinkSpec(1e9))
    with pytest.raises(DmaBufError) as ei:
        f.add_link("l", "a", "b", LinkSpec(1e9))
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(DmaBufError, match="full duplex"):
        f.channel("l")
    f.add_node("island", NodeKind.ENDPOINT)
    with pytest.raises(DmaBufError) as ei:
        f.route("a", "island")
    assert ei.value.errno == errno.EHOSTUNREACH
    with pytest.raises(DmaBufError, match="unknown node"):
        f.route("a", "mars")
    with pytest.raises(DmaBufError, match="TimingParams"):
        Fabric(params={})  # type: ignore[arg-type]


def test_channels_only_grow_and_capacity_tracks_them() -> None:
    f = Fabric()
    f.add_node("a", NodeKind.ENDPOINT)
    f.add_node("b", NodeKind.ENDPOINT)
    f.add_link("l1", "a", "b", LinkSpec(1e9))
    first = f.capacity
    f.add_link("l2", "a", "b", memory_link(5e9))
    assert f.capacity.tolist() == [1e9, 1e9, 5e9]
    assert first.tolist() == [1e9, 1e9]
    assert f.channel("l1", "up") == 1
    with pytest.raises(ValueError):
        f.capacity[0] = 0.0  # read-only view


def test_describe_snapshot() -> None:
    d = default_fabric().describe()
    assert d["name"] == "default"
    kinds = {n["name"]: n["kind"] for n in d["nodes"]}
    assert kinds["rc0"] == "root_complex" and kinds["sw0"] == "switch"
    links = {lk["name"]: lk for lk in d["links"]}
    assert links["rp3"]["description"].startswith("PCIe Gen4 x4")
    assert links["ram0.bus"]["duplex"] is False
    assert links["nic0.port"]["bandwidth"] == 50e9
    assert links["nic0.port"]["kind"] == LinkKind.NETWORK.value
    assert d["params"]["rc_latency"] == 0.36e-6
