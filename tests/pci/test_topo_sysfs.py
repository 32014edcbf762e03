"""The sysfs loader on every captured root, on this machine's /sys, and on damaged trees."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from dmabuf.dma.fabric import PciP2pdmaMapType
from dmabuf.errors import DmaBufError
from dmabuf.pci import (
    PcieType,
    calc_map_type_and_dist,
    load_sysfs,
    pci_p2pdma_distance,
)
from dmabuf.testing.paths import sysfs_roots_dir

FIXTURES = sysfs_roots_dir()
CASES = sorted(p.parent.name for p in FIXTURES.glob("*/expected.json"))
needs_fixtures = pytest.mark.skipif(not CASES, reason=f"fixtures not found at {FIXTURES}")


def _pairs() -> list[Any]:
    out = []
    for case in CASES:
        exp = json.loads((FIXTURES / case / "expected.json").read_text())
        for pair in exp["pairs"]:
            out.append(pytest.param(case, pair, id=f"{case}:{pair['provider']}->"
                                                   f"{pair['client']}"))
    return out


@needs_fixtures
@pytest.mark.parametrize("case, pair", _pairs())
def test_fixture_pair_matches_kernel(case: str, pair: dict[str, Any]) -> None:
    topo = load_sysfs(FIXTURES / case / "root")
    prov, cli = topo.device(pair["provider"]), topo.device(pair["client"])
    boot = len(topo.log)
    mt = topo.p2p_map_type(prov.bdf, cli.bdf)            # the cached, verbose path
    lines = topo.log[boot:]
    assert mt.name == pair["expected_map_type"]
    _mt2, dist = calc_map_type_and_dist(prov, cli, verbose=False, _store=False, _log=[])
    assert dist == pair["expected_distance"]
    assert pci_p2pdma_distance(prov, cli) == pair["expected_p2pdma_distance"]
    if pair["client_p2pdma_queue"]:
        # the kernel's own words, in order, on the first decision
        assert lines == pair["dmesg"]
        assert (mt == PciP2pdmaMapType.NOT_SUPPORTED) == (pair["real_result"] == "EREMOTEIO")
    else:
        assert pair["real_result"] == "EREMOTEIO"         # refused by the block layer first
    deriv = pair["derivation"]
    assert [d.bdf for d in prov.chain()] == deriv["provider_chain"]
    assert [d.bdf for d in cli.chain()] == deriv["client_chain"]
    ex = topo.explain(prov, cli)
    assert ex.common_upstream == deriv["common_upstream"]
    assert ex.acs_redirect_devices == deriv["acs_redirect_devices"]
    assert ex.cpu["cpu_supports_p2pdma"] == deriv["cpu_supports_p2pdma"]


@needs_fixtures
@pytest.mark.parametrize("case", CASES)
def test_fixture_root_loads_with_providers(case: str) -> None:
    exp = json.loads((FIXTURES / case / "expected.json").read_text())
    topo = load_sysfs(FIXTURES / case / "root")
    assert topo.cpu.vendor_id == exp["cpu"]["vendor_id"]
    assert topo.cpu.family == exp["cpu"]["family"]
    assert topo.cpu.supports_p2pdma == exp["cpu"]["cpu_supports_p2pdma"]
    for line in exp["providers"]:
        _, bdf, size, avail, pub = line.split()
        d = topo.device(bdf)
        assert d.p2pdma is not None
        info = d.p2pdma.describe()
        assert f"size={info['size']}" == size
        assert f"available={info['available']}" == avail
        assert f"published={info['published']}" == pub
    added = [ln for ln in exp["boot_dmesg_acs_p2p"] if "added peer-to-peer" in ln]
    assert sorted(topo.log) == sorted(added)
    m = topo.matrix()
    assert m.map_type.shape == (len(topo.endpoints()),) * 2


@needs_fixtures
def test_fixture_details_g_iommu() -> None:
    topo = load_sysfs(FIXTURES / "g_iommu_intel" / "root")
    rp = topo.device("0000:00:04.0")
    assert rp.pcie_type == PcieType.ROOT_PORT
    assert rp.acs is not None and (rp.acs.cap, rp.acs.ctrl) == (0x5F, 0x1D)
    assert rp.driver == "pcieport" and rp.iommu_group is not None
    assert rp.link.speed == 2.5 and rp.link.max_speed == 16.0 and rp.link.max_width == 32
    f0 = topo.device("0000:06:00.0")
    assert f0.multifunction and f0.parent is rp and f0.driver == "nvme"
    bar2 = f0.bar(2)
    assert bar2 is not None and bar2.prefetchable and bar2.mem64 and bar2.size == 16 << 20
    usp = topo.device("0000:01:00.0")
    assert usp.pcie_type == PcieType.UPSTREAM and usp.acs is None
    assert topo.host_bridges[0].root_dev() is topo.device("0000:00:00.0")


@needs_fixtures
def test_fixture_pxb_second_host_bridge_has_numa_node() -> None:
    topo = load_sysfs(FIXTURES / "d_pxb_intel" / "root")
    assert [h.name for h in topo.host_bridges] == ["pci0000:00", "pci0000:40"]
    hb1 = topo.host_bridges[1]
    assert hb1.numa_node == 1
    root = hb1.root_dev()
    assert root is not None and (root.vendor, root.device) == (0x1B36, 0x000C)


def test_running_machine_sysfs_loads() -> None:
    if not Path("/sys/bus/pci/devices").is_dir():
        pytest.skip("this machine has no /sys/bus/pci")
    topo = load_sysfs("/")
    assert len(topo) == len(os.listdir("/sys/bus/pci/devices"))
    assert topo.source == "sysfs:/"
    for d in topo:
        assert d.host_bridge is not None
    topo.matrix()


# ------------------------------------------------------------------ damaged trees
@pytest.fixture
def root(tmp_path: Path) -> Path:
    if not CASES:
        pytest.skip(f"fixtures not found at {FIXTURES}")
    dst = tmp_path / "root"
    shutil.copytree(FIXTURES / "a_switch_intel" / "root", dst, symlinks=True)
    return dst


def _devdir(root: Path, bdf: str) -> Path:
    link = root / "sys" / "bus" / "pci" / "devices" / bdf
    tgt = os.readlink(link) if link.is_symlink() else link.read_text().strip()
    return Path(os.path.normpath(link.parent / tgt))


def _err(root: Path) -> DmaBufError:
    with pytest.raises(DmaBufError) as ei:
        load_sysfs(root)
    return ei.value


def test_real_symlinks_load_the_same(root: Path) -> None:
    devs = root / "sys" / "bus" / "pci" / "devices"
    for p in devs.iterdir():
        tgt = p.read_text().strip()
        p.unlink()
        p.symlink_to(tgt)
    drv = _devdir(root, "0000:03:00.0") / "driver"
    tgt = drv.read_text().strip()
    drv.unlink()
    drv.symlink_to(tgt)          # dangling in the copy: only the basename matters
    topo = load_sysfs(root)
    assert topo.device("0000:03:00.0").driver == "nvme"
    assert topo.calc_map_type_and_dist("0000:04:00.0", "0000:03:00.0") == (
        PciP2pdmaMapType.BUS_ADDR, 4)


def test_missing_devices_dir(tmp_path: Path) -> None:
    e = _err(tmp_path)
    assert e.errno == errno.ENOENT and "sys/bus/pci/devices" in str(e)


def test_missing_vendor_file(root: Path) -> None:
    (_devdir(root, "0000:03:00.0") / "vendor").unlink()
    e = _err(root)
    assert e.errno == errno.ENOENT and "0000:03:00.0/vendor" in str(e)


def test_malformed_hex(root: Path) -> None:
    (_devdir(root, "0000:03:00.0") / "device").write_text("0xzz12\n")
    e = _err(root)
    assert e.errno == errno.EINVAL and "0000:03:00.0/device" in str(e) and "hex" in str(e)


def test_dangling_device_link(root: Path) -> None:
    shutil.rmtree(_devdir(root, "0000:05:00.0"))
    e = _err(root)
    assert e.errno == errno.ENOENT and "0000:05:00.0" in str(e)


def test_entry_that_is_not_an_address(root: Path) -> None:
    (root / "sys" / "bus" / "pci" / "devices" / "bogus").write_text("../x")
    e = _err(root)
    assert e.errno == errno.EINVAL and "bogus" in str(e)


def test_link_to_the_wrong_function(root: Path) -> None:
    link = root / "sys" / "bus" / "pci" / "devices" / "0000:05:00.0"
    link.write_text("../../../devices/pci0000:00/0000:00:03.0")
    e = _err(root)
    assert e.errno == errno.EINVAL and "0000:05:00.0" in str(e)


def test_short_config_hides_acs_with_a_note(root: Path) -> None:
    cfg = _devdir(root, "0000:00:02.0") / "config"
    cfg.write_bytes(cfg.read_bytes()[:64])
    topo = load_sysfs(root)
    assert topo.device("0000:00:02.0").acs is None
    assert any("ACS state of 0000:00:02.0 unknown" in n for n in topo.notes)


def test_truncated_config_is_an_error(root: Path) -> None:
    cfg = _devdir(root, "0000:00:02.0") / "config"
    cfg.write_bytes(cfg.read_bytes()[:20])
    e = _err(root)
    assert e.errno == errno.EINVAL and "0000:00:02.0/config" in str(e)


def test_bad_resource_line(root: Path) -> None:
    (_devdir(root, "0000:03:00.0") / "resource").write_text("0x1 0x2\n")
    e = _err(root)
    assert e.errno == errno.EINVAL and "resource" in str(e) and "line 1" in str(e)


def test_parent_directory_of_unknown_kind(root: Path) -> None:
    d = _devdir(root, "0000:05:00.0")
    new = d.parent.parent / "weird" / d.name
    new.parent.mkdir()
    d.rename(new)
    (root / "sys" / "bus" / "pci" / "devices" / "0000:05:00.0").write_text(
        "../../../devices/pci0000:00/weird/0000:05:00.0")
    e = _err(root)
    assert e.errno == errno.EINVAL and "weird" in str(e)


def test_no_cpuinfo_is_a_note(root: Path) -> None:
    (root / "proc" / "cpuinfo").unlink()
    topo = load_sysfs(root)
    assert topo.cpu.vendor_id == "" and not topo.cpu.supports_p2pdma
    assert any("cpuinfo" in n for n in topo.notes)


# ------------------------------------------------------------------ a synthetic tree with VFs
def _mkdev(devices: Path, bdf_path: str, *, vendor: int, device: int, klass: int,
           cfg: bytes, resource: str = "", extra_links: dict[str, str] | None = None) -> Path:
    d = devices / bdf_path
    d.mkdir(parents=True)
    (d / "vendor").write_text(f"{vendor:#06x}\n")
    (d / "device").write_text(f"{device:#06x}\n")
    (d / "class").write_text(f"{klass:#08x}\n")
    (d / "numa_node").write_text("0\n")
    (d / "config").write_bytes(cfg)
    (d / "resource").write_text(resource or "0x0 0x0 0x0\n" * 7)
    for name, tgt in (extra_links or {}).items():
        (d / name).symlink_to(tgt)
    return d


def test_synthetic_tree_with_vfs_and_symlinks(tmp_path: Path) -> None:
    from .test_pci_regs import make_cfg

    sysdev = tmp_path / "sys" / "devices"
    rp_cfg = make_cfg(pcie_type=4, acs=(0x5F, 0))
    ep_cfg = make_cfg(pcie_type=0, acs=None)
    res = ("0x00000000f0000000 0x00000000f0ffffff 0x0000000000140204\n"
           + "0x0 0x0 0x0\n" * 6)
    vf_res = ("0x00000000f1000000 0x00000000f10fffff 0x0000000000140204\n"
              + "0x0 0x0 0x0\n" * 6)
    _mkdev(sysdev, "pci0000:00/0000:00:00.0", vendor=0x1022, device=0x14A4, klass=0x060000,
           cfg=make_cfg(pcie_type=None, acs=None, size=256))
    _mkdev(sysdev, "pci0000:00/0000:00:01.1", vendor=0x1022, device=0x14AB, klass=0x060400,
           cfg=rp_cfg, extra_links={"iommu_group": "../../../kernel/iommu_groups/3",
                                    "driver": "../../../bus/pci/drivers/pcieport"})
    _mkdev(sysdev, "pci0000:00/0000:00:01.1/0000:01:00.0", vendor=0x15B3, device=0x1021,
           klass=0x020700, cfg=ep_cfg, resource=res,
           extra_links={"driver": "../../../../bus/pci/drivers/mlx5_core"})
    for k in (1, 2):
        _mkdev(sysdev, f"pci0000:00/0000:00:01.1/0000:01:00.{k}", vendor=0x15B3, device=0x101E,
               klass=0x020700, cfg=ep_cfg, resource=vf_res.replace("f10", f"f1{k}"),
               extra_links={"physfn": "../0000:01:00.0"})
    links = tmp_path / "sys" / "bus" / "pci" / "devices"
    links.mkdir(parents=True)
    for d in sorted(sysdev.rglob("0000:*")):
        (links / d.name).symlink_to(os.path.relpath(d, links))
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                                               "cpu family\t: 25\nmodel name\t: EPYC\n\n"
                                               "processor\t: 1\nvendor_id\t: GenuineIntel\n")
    topo = load_sysfs(tmp_path)
    assert (topo.cpu.vendor_id, topo.cpu.family) == ("AuthenticAMD", 25)
    rp, pf = topo.device("0000:00:01.1"), topo.device("0000:01:00.0")
    vf1, vf2 = topo.device("0000:01:00.1"), topo.device("0000:01:00.2")
    assert rp.iommu_group == 3 and rp.driver == "pcieport" and rp.acs is not None
    assert vf1.physfn is pf and vf2.physfn is pf and pf.virtfns == [vf1, vf2]
    assert vf1.parent is rp and vf1.upstream_bridge() is rp
    assert calc_map_type_and_dist(vf1, vf2, verbose=False) == (PciP2pdmaMapType.BUS_ADDR, 2)
    assert rp.link.max_speed == 32.0 and rp.link.speed == 8.0       # from config space
    assert topo.host_bridges[0].numa_node == 0
    bar = vf2.bar(0)
    assert bar is not None and bar.start == 0xF120_0000 and bar.size == 1 << 20
    # a second link to the same function is a duplicate
    (links / "0000:01:00.3").symlink_to(os.path.relpath(sysdev / "pci0000:00/0000:00:01.1/"
                                                        "0000:01:00.2", links))
    e = _err(tmp_path)
    assert e.errno == errno.EINVAL and "0000:01:00.3" in str(e)
