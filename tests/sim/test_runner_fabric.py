"""A PCI topology as a timing fabric (dmabuf.sim.pci_fabric) and the paths through it."""

from __future__ import annotations

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.pci import default_topology
from dmabuf.sim import default_fabric
from dmabuf.sim.fabric import Direction, NodeKind
from dmabuf.sim.pci_fabric import PciFabric, fabric_from_topology


@pytest.fixture(scope="module")
def pf() -> PciFabric:
    return fabric_from_topology(default_topology())


def test_reference_topology_matches_the_timing_models_default_fabric(pf: PciFabric) -> None:
    ref = default_fabric()
    f = pf.fabric
    # same link rates where both name the link (root ports) or the same endpoint link
    for ours, theirs in (("rp0", "rp0"), ("rp1", "rp1"), ("rp2", "rp2"), ("rp3", "rp3"),
                         ("dsp0", "sw0.dsp0"), ("dsp1", "sw0.dsp1"), ("dsp2", "sw0.dsp2"),
                         ("ram0.bus", "ram0.bus"), ("nic0.port", "nic0.port")):
        assert f.links[ours].spec.bandwidth == pytest.approx(ref.links[theirs].spec.bandwidth)
    assert f.nodes["hb0"].kind is NodeKind.ROOT_COMPLEX
    assert f.nodes["sw0"].kind is NodeKind.SWITCH
    assert f.nodes["gpu0.mem"].kind is NodeKind.MEMORY
    assert f.links["gpu0.memlink"].spec.bandwidth == ref.links["gpu0.hbm"].spec.bandwidth
    # the accelerator is in the topology but not in the hand-built default fabric
    assert "acc0" in f.nodes and "acc0" not in ref.nodes


def test_functions_share_their_slot_and_vfs_their_pf(pf: PciFabric) -> None:
    assert pf.node("nic0vf0") == pf.node("nic0") == "nic0"
    assert pf.node("0000:02:00.0") == "sw0"     # a downstream port is folded into its switch
    assert pf.node("rp0") == "hb0"              # a root port into its root complex
    assert pf.memory("gpu0") == "gpu0.mem" and pf.ram(0) == "ram0"
    with pytest.raises(DmaBufError):
        pf.memory("sw0")


def test_paths(pf: PciFabric) -> None:
    d, u = Direction.DOWN, Direction.UP
    p2p = pf.path("gpu0.mem", "nic0")
    assert p2p == (("gpu0.memlink", u), ("dsp0", u), ("dsp1", d))
    assert not pf.crosses_rc(p2p)
    redirected = pf.path("gpu0.mem", "nic0", via_rc=True)
    assert redirected == (("gpu0.memlink", u), ("dsp0", u), ("rp0", u), ("rp0", d), ("dsp1", d))
    assert pf.crosses_rc(redirected)
    cross = pf.path("gpu1.mem", "nic1")
    assert cross == (("gpu1.memlink", u), ("rp1", u), ("rp2", d)) and pf.crosses_rc(cross)
    assert pf.rdma_path("nic0", "nic1") == (("nic0.port", d), ("nic1.port", u))
    assert pf.nodes_of(cross) == ["gpu1.mem", "gpu1", "hb0", "nic1"]
    assert pf.path("nic0", "nic0") == ()
    with pytest.raises(DmaBufError):
        pf.rdma_path("gpu0", "nic1")
    with pytest.raises(DmaBufError):
        pf.path("nowhere", "nic0")


def test_nvme_link_width_is_the_narrower_end(pf: PciFabric) -> None:
    # DSP2 trains Gen5 x16 but NVMe0 is x4: the link runs x4 (14.02 GB/s after protocol)
    assert pf.fabric.links["dsp2"].spec.bandwidth == pytest.approx(63.015e9 / 4 * 0.89, rel=1e-3)
    assert pf.fabric.links["rp3"].spec.bandwidth < pf.fabric.links["dsp2"].spec.bandwidth
