"""The doctor on this machine's real root: every assertion is computed here from /proc, /sys and
/dev, never a guess about what the machine has."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from dmabuf.doctor import DoctorReport, Severity, diagnose
from dmabuf.doctor.devnodes import NODE_GROUPS
from dmabuf.doctor.kconfig import OPTIONS

from .helpers import config_values, run

HAVE_SYS = Path("/sys/bus/pci").is_dir() or Path("/sys/kernel").is_dir()
pytestmark = pytest.mark.skipif(not HAVE_SYS, reason="no sysfs on this machine")


@pytest.fixture(scope="module")
def live() -> DoctorReport:
    return diagnose("/")


def _config() -> dict[str, str] | None:
    p = Path("/proc/config.gz")
    if p.is_file():
        return config_values(p)
    b = Path(f"/boot/config-{os.uname().release}")
    if b.is_file():
        from dmabuf.doctor.kconfig import parse_config
        return parse_config(b.read_text())
    return None


def test_kernel_release_and_config(live: DoctorReport) -> None:
    assert live.live is True and live.root == "/"
    assert live.finding("kernel.version").title == f"Linux {os.uname().release}"
    cfg = _config()
    if cfg is None:
        assert live.finding("config.source").severity == Severity.WARN
        return
    for spec in OPTIONS:
        f = live.finding(f"config.{spec.name}")
        assert f.evidence["value"] == cfg.get(spec.name, "absent"), spec.name
        on = cfg.get(spec.name) in ("y", "m")
        if on and spec.name != "DMABUF_MOVE_NOTIFY":
            assert f.severity in (Severity.OK, Severity.ERROR), spec.name
    core = cfg.get("DMA_SHARED_BUFFER") == "y"
    assert live.capabilities["dma_buf"]["available"] is core
    assert live.capabilities["pci_p2pdma"]["available"] is (cfg.get("PCI_P2PDMA") == "y")
    assert live.finding("config.PCI_P2PDMA").severity == (
        Severity.OK if cfg.get("PCI_P2PDMA") == "y" else Severity.WARN)


def test_device_nodes_match_dev(live: DoctorReport) -> None:
    assert live.sections["devices"]["source"] == "live"
    assert live.sections["devices"]["user"]["uid"] == os.geteuid()
    for g in NODE_GROUPS:
        f = live.finding(f"devnode.{g.key}")
        if g.key == "nvidia":
            present = any(n.startswith("nvidia") for n in os.listdir("/dev"))
        else:
            p = Path("/" + g.path)
            present = p.exists() and (not p.is_dir() or any(
                (not g.prefixes or n.startswith(g.prefixes)) for n in os.listdir(p)))
        recorded = live.sections["devices"]["nodes"][g.key]
        if not present:
            assert "absent" in f.title or "missing" in f.title, (g.key, f.title)
            assert [n for n in recorded if n["kind"] == "chr"] == []
        else:
            assert recorded, g.key
    heaps = Path("/dev/dma_heap")
    usable = heaps.is_dir() and any(os.access(heaps / n, os.R_OK | os.W_OK)
                                    for n in os.listdir(heaps))
    assert live.capabilities["dma_heap"]["available"] is usable
    ud = Path("/dev/udmabuf")
    assert live.capabilities["udmabuf"]["available"] is (ud.exists() and os.access(
        ud, os.R_OK | os.W_OK))
    if os.geteuid() == 0:
        assert live.finding("devnode.user").severity == Severity.INFO
        assert "root" in live.finding("devnode.user").title


def test_modules_match_proc_modules(live: DoctorReport) -> None:
    f = live.finding("modules.list")
    p = Path("/proc/modules")
    if p.exists():
        n = len([x for x in p.read_text().splitlines() if x.strip()])
        assert f.title.startswith(f"{n} modules loaded")
        assert live.sections["modules"]["available"] is True
    else:
        assert live.sections["modules"]["available"] is False
        cfg = _config()
        if cfg is not None and cfg.get("MODULES", "absent") == "n":
            assert f.title == "no loadable modules (CONFIG_MODULES is off)"
            assert f.severity == Severity.INFO


def test_cmdline_iommu_and_pci_match(live: DoctorReport) -> None:
    assert live.sections["cmdline"]["raw"] == Path("/proc/cmdline").read_text().strip()
    groups = Path("/sys/kernel/iommu_groups")
    n = len([g for g in os.listdir(groups) if g.isdigit()]) if groups.is_dir() else 0
    assert live.sections["iommu"]["groups"] == n
    assert (live.sections["iommu"]["mode"] == "off") is (n == 0)
    devs = Path("/sys/bus/pci/devices")
    if devs.is_dir():
        assert live.sections["pci"]["functions"] == len(os.listdir(devs))
        assert live.topology is not None
        with open("/proc/cpuinfo") as fh:
            vendor = next((ln.split(":", 1)[1].strip() for ln in fh
                           if ln.startswith("vendor_id")), "")
        assert live.sections["pci"]["cpu"]["vendor_id"] == vendor
    cfg = _config()
    if cfg is not None and cfg.get("PCI_P2PDMA") != "y" and live.sections["p2p"]["pairs"]:
        # P2P off: the pair findings are hypothetical information, never ok or warn
        for f in live.by_section("p2p"):
            if f.id in ("p2p.bus_addr", "p2p.thru_host_bridge", "p2p.acs_redirect",
                        "p2p.not_supported"):
                assert f.severity == Severity.INFO and f.evidence["hypothetical"] is True
                assert f.title.startswith("if P2PDMA were on: ")
        assert any("CONFIG_PCI_P2PDMA" in v and "impossible" in v for v in live.verdict)


def test_config_gz_is_really_gzip() -> None:
    p = Path("/proc/config.gz")
    if not p.is_file():
        pytest.skip("no /proc/config.gz on this machine")
    assert gzip.decompress(p.read_bytes()).startswith(b"#")


def test_cli_on_this_machine_human_and_json() -> None:
    r = run()
    assert r.exit_code == 0, r.output
    assert "Verdict" in r.output and "Kernel configuration" in r.output
    assert f"Linux {os.uname().release}" in r.output
    assert "CONFIG_PCI_P2PDMA" in r.output and "Summary:" in r.output
    j = run("--json")
    assert j.exit_code == 0
    import json
    d = json.loads(j.output)
    assert d["live"] is True and d["root"] == "/"
    assert d["sections"]["kernel"]["release"] == os.uname().release
