"""``dmabuf doctor --capture``: round trips, fidelity to capture-sysfs.sh, and write safety."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dmabuf.doctor import MANIFEST, DoctorReport, capture_root, diagnose
from dmabuf.doctor.capture import ATTRS, CaptureResult, _Writer
from dmabuf.errors import DmaBufError
from dmabuf.testing.paths import shared_dir

from .helpers import ROOTS, needs_fixtures, root_of, run

SCRIPT = shared_dir() / "kernel" / "scripts" / "guest" / "capture-sysfs.sh"
HAVE_PCI = Path("/sys/bus/pci/devices").is_dir()


def _signature(r: DoctorReport) -> list[tuple[str, str, str]]:
    return [(f.id, f.severity.value, f.title) for f in r.findings]


def _tree(root: Path) -> dict[str, tuple[str, bytes | str | None]]:
    """Relative path -> ("f", bytes) / ("l", target) / ("d", None), without following links."""
    out: dict[str, tuple[str, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d", None)
            else:
                out[rel] = ("f", p.read_bytes())
    return out


@pytest.mark.skipif(not HAVE_PCI, reason="no PCI sysfs on this machine")
def test_live_round_trip_doctor_and_topo(tmp_path: Path) -> None:
    cap = tmp_path / "cap"
    r = run("--capture", str(cap))
    assert r.exit_code == 0, r.output
    assert "captured" in r.output and "PCI functions" in r.output
    live, copy = diagnose("/"), diagnose(cap)
    assert copy.live is False
    assert _signature(copy) == _signature(live)
    assert copy.verdict == live.verdict
    assert copy.capabilities == live.capabilities
    assert copy.sections["devices"]["source"] == "capture manifest"
    assert copy.sections["p2p"]["pairs"] == live.sections["p2p"]["pairs"]
    man = json.loads((cap / MANIFEST).read_text())
    assert man["format"] == "pydmabuf.capture/1"
    assert {"dev", "proc/modules", "sys/class", "sys/module"} <= set(man["captured"])
    assert man["release"] == os.uname().release
    assert man["user"]["uid"] == os.geteuid()
    assert (cap / "uname").read_text().split()[2] == os.uname().release
    # attributes are byte copies, links are symlinks with the kernel's relative targets
    for name in os.listdir("/sys/bus/pci/devices"):
        link = cap / "sys/bus/pci/devices" / name
        assert link.is_symlink()
        assert os.readlink(link) == os.readlink(f"/sys/bus/pci/devices/{name}")
        src = Path(f"/sys/bus/pci/devices/{name}")
        for a in ("vendor", "device", "class"):
            assert (link / a).read_bytes() == (src / a).read_bytes()
        if (src / "driver").is_symlink():
            assert os.readlink(link / "driver") == os.readlink(src / "driver")
    t = run("--sysfs-root", str(cap))
    assert t.exit_code == 0, t.output
    from click.testing import CliRunner

    from dmabuf.cli import main
    topo = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["topo", "show", "--sysfs-root",
                                                            str(cap), "--json"])
    assert topo.exit_code == 0, topo.output
    assert sorted(d["bdf"] for d in json.loads(topo.output)["devices"]) == sorted(
        os.listdir("/sys/bus/pci/devices"))


@pytest.mark.skipif(not (HAVE_PCI and SCRIPT.is_file() and shutil.which("sh")),
                    reason="capture-sysfs.sh or sh not available")
def test_same_files_as_capture_sysfs_sh(tmp_path: Path) -> None:
    """Everything the reference script writes, the doctor writes identically; the doctor's
    extras are only the documented ones."""
    ref, mine = tmp_path / "ref", tmp_path / "mine"
    subprocess.run(["sh", str(SCRIPT), str(ref)], check=True, capture_output=True, timeout=60)
    capture_root(mine)
    a, b = _tree(ref), _tree(mine)
    for rel, val in a.items():
        assert rel in b, f"{rel} missing from the doctor's capture"
        if rel == "proc/cpuinfo" or rel.endswith(("/current_link_speed", "/current_link_width")):
            assert b[rel][0] == val[0]      # may change between two reads (cpu MHz, ASPM)
            continue
        assert b[rel] == val, rel
    extras = sorted(set(b) - set(a))
    allowed = ("pydmabuf-capture.json", "proc/modules", "proc/sys", "proc/version", "sys/class",
               "sys/module", "proc/driver", "boot", "sys/kernel/mm")
    for rel in extras:
        assert rel.startswith(allowed) or rel.endswith(("/physfn", "/type")), rel


@needs_fixtures
@pytest.mark.parametrize("case", ROOTS)
def test_recapture_of_each_fixture_round_trips(tmp_path: Path, case: str) -> None:
    cap = tmp_path / case
    res = capture_root(cap, root_of(case))
    assert isinstance(res, CaptureResult)
    src = root_of(case)
    n_src = sum(1 for _ in (src / "sys/bus/pci/devices").iterdir())
    assert res.functions == n_src
    assert res.captured == []    # a capture without manifest gives nothing beyond the script's set
    assert _signature(diagnose(cap)) == _signature(diagnose(src))
    # flattened links of the fixture became real symlinks with the same relative target
    for name in os.listdir(src / "sys/bus/pci/devices"):
        if name.startswith("."):
            continue
        link = cap / "sys/bus/pci/devices" / name
        assert link.is_symlink()
        assert os.readlink(link) == (src / "sys/bus/pci/devices" / name).read_text().strip()
    for g in os.listdir(src / "sys/kernel/iommu_groups"):
        if g.startswith("."):
            continue
        for m in os.listdir(src / "sys/kernel/iommu_groups" / g / "devices"):
            assert (cap / "sys/kernel/iommu_groups" / g / "devices" / m).is_symlink()
    some = next(p for p in (cap / "sys/devices").rglob("config"))
    rel = some.relative_to(cap)
    assert some.read_bytes() == (src / rel).read_bytes()
    assert (cap / "proc/config.gz").read_bytes() == (src / "proc/config.gz").read_bytes()
    # never read or invented: the side-effect attributes
    names = {p.name for p in cap.rglob("*")}
    assert not names & {"reset", "remove", "rescan", "rom", "allocate", "driver_override",
                        "resource0"}
    assert set(ATTRS) >= {p.name for p in (cap / "sys/devices").rglob("*")
                          if p.is_file() and p.parent.name != "p2pmem"}


def test_dest_must_be_new_or_empty(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    r = run("--capture", str(tmp_path / "full"))
    assert r.exit_code == 1
    assert "not empty" in r.output
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    (tmp_path / "afile").write_text("")
    r = run("--capture", str(tmp_path / "afile"))
    assert r.exit_code == 1 and "not a directory" in r.output
    with pytest.raises(DmaBufError) as ei:
        capture_root("/sys/kernel/pydmabuf-never")
    assert ei.value.errno == errno.EINVAL


def test_writer_refuses_to_leave_dest(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, dest / "sys")
    w = _Writer(dest, CaptureResult(str(dest)))
    with pytest.raises(DmaBufError) as ei:
        w.mkdir("sys/devices")
    assert ei.value.errno == errno.EXDEV
    with pytest.raises(DmaBufError):
        w.write("sys/evil", b"x")
    with pytest.raises(DmaBufError):
        w.write("../evil", b"x")
    assert list(outside.iterdir()) == []
    w.write("ok", b"fine")
    assert (dest / "ok").read_bytes() == b"fine"
    with pytest.raises(DmaBufError) as ei:
        w.write("ok", b"again")
    assert ei.value.errno == errno.EEXIST


@needs_fixtures
def test_capture_json_output(tmp_path: Path) -> None:
    r = run("--capture", str(tmp_path / "c"), "--sysfs-root", str(root_of("g_iommu_intel")),
            "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["functions"] == 17 and d["links"] > 17 and d["dest"] == str(tmp_path / "c")
    assert d["captured"] == []
