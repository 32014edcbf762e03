"""``dmabuf topo show|matrix|explain`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dmabuf.cli import main
from dmabuf.testing.paths import sysfs_roots_dir

FIX = sysfs_roots_dir()
needs_fixtures = pytest.mark.skipif(not (FIX / "f3b_fakedsp_acs_intel").is_dir(),
                                    reason=f"fixtures not found at {FIX}")


def run(*args: str) -> tuple[int, str]:
    r = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["topo", *args])
    return r.exit_code, r.output


def test_show_json_default_topology() -> None:
    code, out = run("show", "--topology", "default", "--json")
    assert code == 0, out
    d = json.loads(out)
    assert d["cpu"]["cpu_supports_p2pdma"] is True
    by = {x["name"]: x for x in d["devices"]}
    assert by["dsp0"]["acs"]["ctrl_bits"] == [] and by["rp0"]["acs"]["redirects"] is True
    assert by["nvme0"]["p2pdma"]["size"] == 1 << 30 and by["nvme0"]["p2pdma"]["published"] == 1
    assert by["nic0vf0"]["physfn"] == "0000:04:00.0"


def test_show_human_tree() -> None:
    code, out = run("show", "--topology", "default")
    assert code == 0, out
    assert "pci0000:00" in out and "gpu0" in out and "ACS[SV RR CR UF]" in out


@needs_fixtures
def test_show_matrix_explain_on_a_fixture_root(tmp_path: Path) -> None:
    root = str(FIX / "f3b_fakedsp_acs_intel" / "root")
    code, out = run("show", "--sysfs-root", root, "--json")
    assert code == 0 and json.loads(out)["cpu"]["vendor_id"] == "GenuineIntel"
    code, out = run("matrix", "--sysfs-root", root, "--json")
    assert code == 0, out
    m = json.loads(out)
    names = [x["bdf"] for x in m["devices"]]
    i, j = names.index("0000:04:00.0"), names.index("0000:03:00.0")
    assert (m["map_type"][i][j], m["distance"][i][j]) == ("NOT_SUPPORTED", 4)
    dot = tmp_path / "p.dot"
    code, out = run("explain", "0000:04:00.0", "03:00.0", "--sysfs-root", root, "--json",
                    "--dot", str(dot))
    assert code == 0, out
    e = json.loads(out)
    assert (e["provider"], e["client"], e["map_type"], e["distance"]) == (
        "0000:04:00.0", "0000:03:00.0", "NOT_SUPPORTED", 4)
    assert e["path"] == ["0000:04:00.0", "0000:02:01.0", "0000:01:00.0", "0000:02:00.0",
                         "0000:03:00.0"]
    assert e["acs_redirect_devices"] == ["0000:02:01.0"]
    assert any("ACS redirect on 0000:02:01.0" in r for r in e["reasons"])
    assert any("pci=disable_acs_redir=0000:02:01.0" in r for r in e["remedies"])
    assert e["kernel_log"][2] == "pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:29c0"
    text = dot.read_text()
    assert text.startswith("digraph pci {")
    assert '"0000:01:00.0" -> "0000:02:01.0" [color=red, penwidth=3];' in text
    assert '"0000:00:02.0" -> "0000:01:00.0";' in text       # not on the path


def test_matrix_and_explain_on_a_toml_file(tmp_path: Path) -> None:
    from .test_topo_toml import GOOD

    f = tmp_path / "fab.toml"
    f.write_text(GOOD + '\n[[device]]\nbdf = "0000:00:03.0"\nname = "rp1"\ntype = "root_port"\n'
                 'vendor = 0x8086\ndevice = 0x2031\n\n[[device]]\nbdf = "0000:02:00.0"\n'
                 'name = "nic"\nparent = "rp1"\nvendor = 0x15b3\ndevice = 0x1021\n')
    code, out = run("matrix", "--topology", str(f), "--json")
    assert code == 0, out
    m = json.loads(out)
    assert [x["name"] for x in m["devices"]] == ["nvme0", "nic"]
    assert m["map_type"] == [["BUS_ADDR", "THRU_HOST_BRIDGE"], ["THRU_HOST_BRIDGE", "BUS_ADDR"]]
    assert m["distance"] == [[0, 4], [4, 0]]
    assert "B<n>" in m["legend"]
    code, out = run("explain", "nvme0", "nic", "--topology", str(f), "--json")
    e = json.loads(out)
    assert (e["map_type"], e["distance"], e["p2pdma_distance"]) == ("THRU_HOST_BRIDGE", 4, 4)
    assert any("allow-listed (Intel Skylake-E)" in r for r in e["reasons"])
    assert e["path"] == ["0000:01:00.0", "0000:00:02.0", "pci0000:00", "0000:00:03.0",
                         "0000:02:00.0"]
    code, out = run("matrix", "--topology", str(f))
    assert code == 0 and "H4" in out and "Legend" in out
    code, out = run("explain", "nvme0", "nic", "--topology", str(f))
    assert code == 0 and "THRU_HOST_BRIDGE, distance 4" in out


def test_unknown_device_lists_candidates() -> None:
    code, out = run("explain", "gpu9", "nic0", "--topology", "default")
    assert code == 1
    assert "no PCI device 'gpu9'" in out and "did you mean" in out and "gpu0" in out
    code, out = run("matrix", "gpu0", "bogus", "--topology", "default")
    assert code == 1 and "'bogus'" in out


def test_bad_inputs_are_clean_errors(tmp_path: Path) -> None:
    code, out = run("show", "--topology", "default", "--sysfs-root", "/")
    assert code == 2 and "not both" in out
    code, out = run("show", "--topology", str(tmp_path / "missing.toml"))
    assert code == 1 and "no such topology file" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("format = 1\n[[host_bridge]]\nnmae = 1\n")
    code, out = run("show", "--topology", str(bad))
    assert code == 1 and f"{bad}:3: host_bridge #1: unknown key 'nmae'" in out
    code, out = run("show", "--sysfs-root", str(tmp_path))
    assert code == 1 and "sys/bus/pci/devices" in out


def test_show_running_machine() -> None:
    if not Path("/sys/bus/pci/devices").is_dir():
        pytest.skip("no /sys/bus/pci on this machine")
    code, out = run("show", "--json")
    assert code == 0 and json.loads(out)["source"] == "sysfs:/"
    code, out = run("matrix", "--json")
    assert code == 0 and "map_type" in json.loads(out)
