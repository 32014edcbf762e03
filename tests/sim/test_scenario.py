"""Scenario files (dmabuf.sim.scenario): parsing, defaults, and every bad input with file:line."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from dmabuf.errors import DmaBufError
from dmabuf.sim.scenario import (
    ScenarioError,
    load_demo,
    load_scenario,
    loads_scenario,
    parse_duration,
)

from .helpers import gpu_nic_scenario

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

BASE = gpu_nic_scenario(name="t", seed=3, act_mode="dynamic", count=4, spaced=True)


def test_small_example_parses_with_every_field() -> None:
    s = load_scenario(EXAMPLES / "small.toml")
    assert s.name == "small" and s.seed == 7 and len(s.hosts) == 1
    h = s.hosts[0]
    assert [d.name for d in h.devices] == ["gpu0", "nic0", "nic1"]
    gpu = h.device("gpu0")
    assert gpu.bdf == "0000:03:00.0" and gpu.kind == "gpu" and gpu.memory == 128 << 20
    assert gpu.params == {"vram": 128 << 20}
    act = h.buffer("act")
    assert (act.exporter, act.size, act.placement, act.fill) == ("gpu0", 16 << 20, "vram",
                                                                 "random")
    assert h.buffer("sink").placement == "ram"
    imp = h.import_of("act", "nic0")
    assert imp is not None and (imp.mode, imp.repr, imp.expect) == ("dynamic", "sgtable", None)
    st = h.streams[0]
    assert (st.device, st.buffer, st.direction, st.peer, st.peer_buffer) == (
        "nic0", "act", "read", "nic1", "sink")
    assert (st.size, st.count, st.concurrency, st.start, st.gap) == (1 << 20, 24, 2, 0.0, 0.0)
    assert st.total_bytes == 24 << 20 and s.total_bytes == 24 << 20
    assert [(e.action, e.buffer, e.at) for e in h.events] == [("evict", "act", 100e-6),
                                                              ("restore", "act", 400e-6)]
    assert h.events[0].line == 62 and h.events[0].label == "evict act"
    assert h.topology.iommu == "lazy" and h.topology.ram == 1 << 30
    assert h.topo.device("gpu0").bdf == "0000:03:00.0"


def test_demo_parses_two_hosts_and_matches_the_example_copy() -> None:
    s = load_demo()
    assert [h.name for h in s.hosts] == ["zen", "broadwell"]
    zen, bw = s.hosts
    assert {d.kind for d in zen.devices} == {"gpu", "nic", "accel", "nvme", "vfio"}
    assert {e.action for e in zen.events} == {"pressure", "reset", "restore"}
    assert bw.topo.cpu.vendor_id == "GenuineIntel"
    assert bw.topology.source.endswith("[topology.inline]")
    data = ROOT / "src" / "dmabuf" / "data" / "demo.toml"
    assert (EXAMPLES / "demo.toml").read_text() == data.read_text()


def test_defaults_and_seed_override() -> None:
    s = loads_scenario(BASE, path="t.toml")
    assert s.run.policy == "random" and s.run.verify is True and s.run.wall_timeout == 300.0
    assert s.with_seed(9).seed == 9 and s.seed == 3
    with pytest.raises(ValueError):
        s.with_seed(-1)


@pytest.mark.parametrize(("value", "seconds"), [
    (0.5, 0.5), (2, 2.0), ("10us", 10e-6), ("1.5ms", 1.5e-3), ("2s", 2.0), ("3µs", 3e-6),
    ("250ns", 250e-9), ("1e-3", 1e-3)])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["-1us", "soon", True, float("nan"), -2, [1]])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="x"):
        parse_duration(value, "x")


def _replace(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# (description, scenario text, expected line, text the message must contain)
BAD: list[tuple[str, str, int, str]] = [
    ("syntax", BASE + "[[device]\n", 49, "invalid TOML"),
    ("format", _replace("format = 1", "format = 2"), 1, "format = 2"),
    ("unknown top key", _replace("seed = 3", "seed = 3\ncolour = 'red'"), 4, "unknown key "
     "'colour'"),
    ("unknown device key", _replace('vram = "128MiB"', 'vram = "128MiB"\nspeed = 3'), 12,
     "unknown key 'speed'"),
    ("unknown kind", _replace('kind = "nic"', 'kind = "fpga"'), 15, "'fpga' is not one of"),
    ("unknown endpoint", _replace('name = "nic1"\nkind', 'name = "nic9"\nkind'), 18,
     "unknown endpoint 'nic9'"),
    ("impossible binding", _replace('name = "nic1"\nkind = "nic"', 'name = "nic1"\n'
                                    'kind = "gpu"'), 19, "impossible binding"),
    ("bridge", _replace('name = "nic1"\nkind = "nic"', 'name = "x"\nendpoint = "sw0"\n'
                        'kind = "vfio"'), 19, "it is a switch upstream"),
    ("two drivers on one function", _replace('name = "nic1"\nkind = "nic"',
                                             'name = "n2"\nendpoint = "nic0"\nkind = "nic"'),
     19, "already bound"),
    ("negative size", _replace('size = "16MiB"', "size = -4096"), 24, "cannot be negative"),
    ("negative size string", _replace('size = "16MiB"', 'size = "-4KiB"'), 24,
     "cannot be negative"),
    ("zero size", _replace('size = "16MiB"', "size = 0"), 24, "must be > 0"),
    ("not a page multiple", _replace('size = "16MiB"', "size = 1000"), 24, "page size"),
    ("buffer larger than VRAM", _replace('size = "16MiB"', 'size = "256MiB"'), 24,
     "larger than gpu0's VRAM"),
    ("buffer larger than RAM", _replace('size = "16MiB"\n\n[[import]]', 'size = "2GiB"\n\n'
                                        '[[import]]'), 29, "larger than the host's RAM"),
    ("vram larger than the BAR", _replace('vram = "128MiB"', 'vram = "128GiB"'), 11,
     "larger than gpu0"),
    ("unknown exporter", _replace('exporter = "gpu0"', 'exporter = "gpu7"'), 23,
     "unknown exporter 'gpu7'"),
    ("exporter that cannot export", _replace('exporter = "gpu0"', 'exporter = "nic0"'), 23,
     "does not export"),
    ("duplicate buffer", _replace('name = "sink"', 'name = "act"'), 27,
     "duplicate buffer name 'act'"),
    ("import of unknown buffer", _replace('buffer = "sink"\ndevice = "nic1"',
                                          'buffer = "nope"\ndevice = "nic1"'), 37,
     "unknown buffer 'nope'"),
    ("mode the device cannot do", _replace('mode = "dynamic"', 'mode = "static"'), 34,
     "cannot import in mode 'static'"),
    ("unknown mode", _replace('mode = "dynamic"', 'mode = "lazy"'), 34,
     "'lazy' is not one of"),
    ("stream without import", _replace('buffer = "act"\npeer', 'buffer = "sink"\npeer'), 44,
     "nic0 does not import 'sink'"),
    ("stream larger than its buffer", _replace('size = "1MiB"', 'size = "32MiB"'), 47,
     "larger than buffer 'act'"),
    ("concurrency above count", _replace("count = 4", "count = 4\nconcurrency = 8"), 49,
     "more than count"),
    ("nic stream without peer", _replace('peer = "nic1"\npeer_buffer = "sink"\n', ''), 43,
     "give peer"),
    ("negative start", _replace("count = 4", 'count = 4\nstart = "-3us"'), 49,
     "as a duration"),
    ("event action", BASE + '\n[[event]]\nat = "1us"\naction = "explode"\n', 52,
     "'explode' is not one of"),
    ("event missing key", BASE + '\n[[event]]\nat = "1us"\naction = "evict"\n', 50,
     "evict needs buffer"),
    ("event on the wrong device", BASE + '\n[[event]]\naction = "reset"\ndevice = "gpu0"\n', 52,
     "reset revokes a vfio-pci"),
    ("event on unknown buffer", BASE + '\n[[event]]\naction = "evict"\nbuffer = "zz"\n', 52,
     "unknown buffer 'zz'"),
    ("pressure larger than VRAM", BASE + '\n[[event]]\naction = "pressure"\ndevice = "gpu0"\n'
     'bytes = "1GiB"\n', 53, "more than gpu0's VRAM"),
    ("acs port without capability", BASE + '\n[[event]]\naction = "acs"\nport = "gpu0"\n'
     'ctrl = ["RR"]\n', 52, "has no ACS capability"),
    ("timing key", _replace('ram = "1GiB"', 'ram = "1GiB"\n\n[timing]\nswitch_speed = 2'), 9,
     "switch_speed"),
    ("timing value", _replace('ram = "1GiB"', 'ram = "1GiB"\n\n[timing]\nswitch_efficiency = '
                              '2.0'), 9, "efficiency"),
    ("topology file", _replace('ram = "1GiB"', 'ram = "1GiB"\nsource = "nowhere.toml"'), 7,
     "no such topology file"),
    ("iommu mode", _replace('ram = "1GiB"', 'ram = "1GiB"\niommu = "maybe"'), 7,
     "'maybe' is not one of"),
]


@pytest.mark.parametrize(("what", "text", "line", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_file_and_line(tmp_path: Path, what: str, text: str, line: int,
                                       needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as ei:
        load_scenario(path)
    e = ei.value
    assert e.errno == errno.EINVAL
    assert e.path == str(path)
    assert e.line == line, str(e)
    assert str(e.strerror).startswith(f"{path}:{line}: ")
    assert needle in str(e), str(e)


def test_writers_of_one_buffer_conflict() -> None:
    text = BASE + """
[[buffer]]
name = "src2"
exporter = "system"
size = "16MiB"

[[import]]
buffer = "src2"
device = "nic0"
mode = "pinned"

[[stream]]
name = "tx2"
device = "nic0"
buffer = "src2"
peer = "nic1"
peer_buffer = "sink"
size = "1MiB"
count = 2
"""
    with pytest.raises(ScenarioError, match=r"t.toml:60: stream 'tx' writes buffer 'sink', "
                                            "which stream 'tx2' also uses"):
        loads_scenario(text, path="t.toml")


def test_inline_topology_errors_point_into_the_scenario() -> None:
    text = _replace('[topology]\nram = "1GiB"', '[topology]\nram = "1GiB"\ninline = """\n'
                    'format = 1\n[cpu]\nvendor_id = "AuthenticAMD"\nfamily = "x"\n"""')
    with pytest.raises(ScenarioError) as ei:
        loads_scenario(text, path="s.toml")
    # family = "x" is line 4 of the inline text, which starts on line 8 of the scenario
    assert ei.value.line == 11 and "inline topology" in str(ei.value) \
        and "cpu.family" in str(ei.value)


def test_vfio_buffers_need_revocable_importers() -> None:
    text = BASE.replace('[[buffer]]\nname = "act"', '[[device]]\nname = "nvme1"\nkind = "vfio"'
                        '\n\n[[buffer]]\nname = "db"\nexporter = "nvme1"\nsize = "16KiB"\n\n'
                        '[[import]]\nbuffer = "db"\ndevice = "nic1"\nmode = "pinned"\n\n'
                        '[[buffer]]\nname = "act"', 1)
    with pytest.raises(ScenarioError, match="revocable importers"):
        loads_scenario(text, path="t.toml")
    ok = text.replace('device = "nic1"\nmode = "pinned"\n\n[[buffer]]\nname = "act"',
                      'device = "nic1"\nmode = "pinned"\nexpect = "EOPNOTSUPP"\n\n[[buffer]]\n'
                      'name = "act"')
    s = loads_scenario(ok, path="t.toml")
    imp = s.hosts[0].import_of("db", "nic1")
    assert imp is not None and imp.expect == "EOPNOTSUPP"


def test_multi_host_rejects_top_level_host_keys() -> None:
    text = "format = 1\n[[device]]\nname='gpu0'\nkind='gpu'\n[[host]]\nname='a'\n"
    with pytest.raises(ScenarioError, match=r"m.toml:2: top level: device at top level next to"):
        loads_scenario(text, path="m.toml")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DmaBufError) as ei:
        load_scenario(tmp_path / "nope.toml")
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(DmaBufError) as ei:
        load_scenario(tmp_path)
    assert ei.value.errno == errno.EISDIR


def test_sysfs_source_loads_a_captured_tree(tmp_path: Path) -> None:
    fixtures = Path("/work/shared/fixtures/sysfs-roots")
    roots = sorted(p for p in fixtures.glob("*") if p.is_dir()) if fixtures.is_dir() else []
    if not roots:
        pytest.skip("no captured sysfs trees in /work/shared/fixtures/sysfs-roots")
    text = f'format = 1\n[topology]\nsource = "sysfs:{roots[0] / "root"}"\nram = "1GiB"\n'
    s = loads_scenario(text, path=str(tmp_path / "s.toml"))
    assert s.hosts[0].topology.path == str(roots[0] / "root") and len(s.hosts[0].topo.devices) > 0
    bad = 'format = 1\n[topology]\nsource = "sysfs:/no/such/dir"\n'
    with pytest.raises(ScenarioError, match=r"s.toml:3: .*not a directory"):
        loads_scenario(bad, path="s.toml")


def test_the_toml_locator_is_public_and_the_old_name_an_alias() -> None:
    from dmabuf.pci import topo_toml
    from dmabuf.sim import scenario

    assert "TomlLocator" in topo_toml.__all__
    assert topo_toml._Locator is topo_toml.TomlLocator
    assert scenario.TomlLocator is topo_toml.TomlLocator
    loc = topo_toml.TomlLocator("a = 1\n[x]\nb = 2\n[[y]]\nc = 3\n[[y]]\nc = 4\n")
    assert (loc.table("x"), loc.table("y", 1), loc.key(loc.table("y", 1), "c")) == (2, 6, 7)
