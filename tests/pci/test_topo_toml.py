"""The native TOML topology format: the default fabric, and line-numbered errors."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from dmabuf.dma.fabric import PciP2pdmaMapType
from dmabuf.errors import DmaBufError
from dmabuf.pci import default_topology, default_topology_path, load_toml, loads_toml
from dmabuf.pci.pci_regs import PcieType
from dmabuf.pci.topo_toml import parse_size

BUS = PciP2pdmaMapType.BUS_ADDR
THB = PciP2pdmaMapType.THRU_HOST_BRIDGE

GOOD = """\
format = 1
description = "tiny"

[cpu]
vendor_id = "GenuineIntel"
family = 6

[[host_bridge]]
name = "hb0"
vendor = 0x8086
device = 0x2020

[[device]]
bdf = "0000:00:02.0"
name = "rp0"
type = "root_port"
vendor = 0x8086
device = 0x2030
link = "Gen4 x16"
acs = { cap = ["SV", "RR", "CR", "UF"], ctrl = 0x1d }

[[device]]
bdf = "0000:01:00.0"
name = "nvme0"
parent = "rp0"
vendor = 0x144d
device = 0xa808
class = 0x010802
driver = "nvme"
numa_node = 0
iommu_group = 7

  [[device.bar]]
  index = 0
  size = "16KiB"

  [[device.bar]]
  index = 2
  size = "8MiB"
  address = 0xfe000000
  mem64 = false

  [[device.p2pmem]]
  bar = 2
  size = "4MiB"
  offset = "2MiB"
  in_use = "128KiB"
"""


def err(text: str) -> str:
    with pytest.raises(DmaBufError) as ei:
        loads_toml(text, path="t.toml")
    assert ei.value.errno == errno.EINVAL
    return str(ei.value)


def test_good_file_loads_everything() -> None:
    t = loads_toml(GOOD, path="t.toml")
    assert t.description == "tiny" and t.source == "t.toml"
    rc = t.device("hb0.rc")
    assert rc.bdf == "0000:00:00.0" and (rc.vendor, rc.device) == (0x8086, 0x2020)
    rp = t.device("rp0")
    assert rp.pcie_type == PcieType.ROOT_PORT and rp.is_bridge
    assert rp.link.speed == 16.0 and rp.link.width == 16
    assert rp.acs is not None and (rp.acs.cap, rp.acs.ctrl) == (0x1D, 0x1D)
    nv = t.device("0000:01:00.0")
    assert nv is t.device("nvme0") is t.device("01:00.0")
    assert (nv.class_code, nv.driver, nv.numa_node, nv.iommu_group) == (0x010802, "nvme", 0, 7)
    b0 = nv.bar(0)
    assert b0 is not None and b0.start == 0xE000_0000 and not b0.mem64   # auto-placed
    assert nv.p2pdma is not None
    info = nv.p2pdma.describe()
    assert (info["size"], info["published"]) == (4 << 20, 1)
    assert info["available"] == (4 << 20) - (128 << 10)
    assert t.log == ["nvme 0000:01:00.0: added peer-to-peer DMA memory 0xfe200000-0xfe5fffff"]


def test_load_toml_file_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "fab.toml"
    p.write_text(GOOD)
    assert load_toml(p).source == str(p)
    with pytest.raises(DmaBufError) as ei:
        load_toml(tmp_path / "nope.toml")
    assert ei.value.errno == errno.ENOENT
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DmaBufError) as ei:
        load_toml(tmp_path / "bin.toml")
    assert ei.value.errno == errno.EINVAL and "bin.toml:1:" in str(ei.value)


def test_default_topology_matches_spec_6_2() -> None:
    t = default_topology()
    assert Path(default_topology_path()).is_file()
    assert t.cpu.supports_p2pdma
    assert t.calc_map_type_and_dist("gpu0", "nic0") == (BUS, 4)
    assert t.calc_map_type_and_dist("nvme0", "nic0") == (BUS, 4)
    assert t.calc_map_type_and_dist("gpu0", "gpu1") == (THB, 6)
    assert t.calc_map_type_and_dist("gpu1", "nic1") == (THB, 4)
    assert t.calc_map_type_and_dist("nic0", "nic0vf0") == (BUS, 2)
    assert t.calc_map_type_and_dist("acc0", "nvme1") == (THB, 4)
    assert t.log == ["nvme 0000:05:00.0: added peer-to-peer DMA memory "
                     "0x11040000000-0x1107fffffff"]
    nvme0 = t.device("nvme0")
    assert nvme0.p2pdma is not None and nvme0.p2pdma.p2pmem_published
    for name in ("gpu0", "gpu1", "acc0"):
        assert t.device(name).p2pdma is not None
    assert t.provider_at(0x100_0000_0000 + 123) == ("0000:03:00.0", 0)
    assert t.device("gpu0").bar(1).size == 64 << 30      # type: ignore[union-attr]
    t.set_acs_ctrl("dsp0", 0x000C)
    assert t.calc_map_type_and_dist("gpu0", "nic0") == (THB, 4)
    assert default_topology().calc_map_type_and_dist("gpu0", "nic0") == (BUS, 4)   # fresh copy


@pytest.mark.parametrize("value, expect", [(4096, 4096), ("4KiB", 4096), ("4K", 4096),
                                           ("16 MiB", 16 << 20), ("1GiB", 1 << 30),
                                           ("0x1000", 4096), ("2T", 2 << 40), ("512", 512)])
def test_parse_size(value: object, expect: int) -> None:
    assert parse_size(value, "x") == expect


@pytest.mark.parametrize("value", ["4 lumps", "1.5", -1, True, 3.0, "K"])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value, "x")


# ------------------------------------------------------------------ errors name file and line
def line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def test_syntax_error_has_tomllib_line() -> None:
    bad = GOOD.replace('name = "nvme0"', 'name = "nvme0')
    ln = line_of(bad, 'name = "nvme0')
    assert err(bad).startswith(f"[EINVAL] t.toml:{ln}: invalid TOML")


def test_unknown_key_named_with_line() -> None:
    bad = GOOD.replace('driver = "nvme"', 'drvier = "nvme"')
    msg = err(bad)
    assert f"t.toml:{line_of(bad, 'drvier')}:" in msg and "unknown key 'drvier'" in msg
    assert "driver" in msg


def test_unknown_parent_lists_candidates() -> None:
    bad = GOOD.replace('parent = "rp0"', 'parent = "rp9"')
    msg = err(bad)
    assert f"t.toml:{line_of(bad, 'rp9')}:" in msg and "'rp9'" in msg
    assert "did you mean rp0" in msg


def test_cycle_detected() -> None:
    text = GOOD + """
[[device]]
bdf = "0000:05:00.0"
name = "a"
type = "downstream_port"
parent = "b"
vendor = 1
device = 1

[[device]]
bdf = "0000:06:00.0"
name = "b"
type = "downstream_port"
parent = "a"
vendor = 1
device = 1
"""
    msg = err(text)
    assert "cycle" in msg and "a (0000:05:00.0)" in msg
    ln = line_of(text, 'parent = "b"')
    assert f"t.toml:{ln}:" in msg


def test_duplicate_bdf() -> None:
    text = GOOD + '\n[[device]]\nbdf = "0000:01:00.0"\nparent = "rp0"\nvendor = 1\ndevice = 2\n'
    msg = err(text)
    assert "duplicate PCI address 0000:01:00.0" in msg
    assert f"t.toml:{len(text.splitlines()) - 3}:" in msg


@pytest.mark.parametrize("old, new, fragment", [
    ('format = 1', 'format = 2', "format = 2"),
    ('type = "root_port"', 'type = "router"', "type 'router'"),
    ('size = "8MiB"', 'size = "lots"', "cannot read 'lots'"),
    ('size = "8MiB"', 'size = "6MiB"', "power of two"),
    ('address = 0xfe000000', 'address = 0x1fe000000', "below 4 GiB"),
    ('address = 0xfe000000', 'address = 0xfe001000', "not aligned"),
    ('offset = "2MiB"', 'offset = "1MiB"', "2 MiB aligned"),
    ('in_use = "128KiB"', 'in_use = "8MiB"', "does not fit"),
    ('link = "Gen4 x16"', 'link = "fast"', "link 'fast'"),
    ('link = "Gen4 x16"', 'link = "Gen4 x3"', "x3"),
    ('ctrl = 0x1d', 'ctrl = ["RR", "ZZ"]', "unknown ACS bit 'ZZ'"),
    ('ctrl = 0x1d', 'ctrl = ["EC"]', "EC which acs.cap does not offer"),
    ('name = "nvme0"', 'name = "0000:09:00.0"', "not a PCI address"),
    ('bdf = "0000:01:00.0"', 'bdf = "0000:01:20.0"', "slot 0x20"),
    ('bdf = "0000:01:00.0"', 'bdf = "0000:00:00.0"', "duplicate PCI address"),
    ('bdf = "0000:01:00.0"', 'bdf = "0000:00:05.0"', "on the bridge's own bus"),
    ('vendor = 0x144d', 'vendor = 0x1144d', "out of range"),
    ('vendor = 0x144d', 'vendor = "samsung"', "must be an integer"),
    ('numa_node = 0', 'numa_node = -1', "out of range"),
    ('family = 6', 'family = "six"', "must be an integer"),
])
def test_bad_values_named_with_line(old: str, new: str, fragment: str) -> None:
    bad = GOOD.replace(old, new, 1)
    assert bad != GOOD
    msg = err(bad)
    assert fragment in msg, msg
    first_line = int(msg.split(":")[1])
    assert 1 <= first_line <= len(bad.splitlines())
    if fragment != "on the bridge's own bus":
        assert new.split("=")[0].strip() in bad.splitlines()[first_line - 1] or \
            "[[" in bad.splitlines()[first_line - 1] or new in bad.splitlines()[first_line - 1], msg


def test_overlapping_bars() -> None:
    text = GOOD + """
[[device]]
bdf = "0000:00:03.0"
name = "ep2"
vendor = 1
device = 1
  [[device.bar]]
  index = 0
  size = "4MiB"
  address = 0xfe400000
"""
    msg = err(text)
    assert "overlaps BAR2 of nvme0" in msg


def test_parent_must_be_a_bridge_and_root_bus_must_exist() -> None:
    text = GOOD + '\n[[device]]\nbdf = "0000:02:00.0"\nparent = "nvme0"\nvendor = 1\ndevice = 1\n'
    assert "not a bridge" in err(text)
    text2 = GOOD + '\n[[device]]\nbdf = "0000:07:00.0"\nvendor = 1\ndevice = 1\n'
    assert "no host bridge with root bus 0000:07" in err(text2)


def test_vf_parent_must_match_pf() -> None:
    text = GOOD + """
[[device]]
bdf = "0000:01:00.1"
physfn = "nvme0"
parent = "hb0"
vendor = 0x144d
device = 0xa809
"""
    assert "a VF sits below its PF's upstream bridge" in err(text)
    ok = loads_toml(text.replace('parent = "hb0"\n', ""), path="t.toml")
    vf = ok.device("0000:01:00.1")
    assert vf.is_virtfn and vf.parent is ok.device("rp0")


def test_missing_required_pieces() -> None:
    assert "no [[host_bridge]]" in err("format = 1\n")
    assert "missing bdf" in err(GOOD.replace('bdf = "0000:01:00.0"\n', ""))
    assert "missing device" in err(GOOD.replace("device = 0xa808\n", ""))
    assert "index and size are required" in err(GOOD.replace('  index = 0\n', "", 1))
    assert "bar = <index> is required" in err(GOOD.replace("  bar = 2\n", ""))
