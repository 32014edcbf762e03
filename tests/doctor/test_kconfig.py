"""dmabuf.doctor.kconfig: version and config parsing, option severities in context."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmabuf.doctor import Finding, Severity, diagnose
from dmabuf.doctor.kconfig import (
    DoctorContext,
    KConfig,
    KernelInfo,
    config_findings,
    kernel_findings,
    parse_config,
    parse_release,
)

from .helpers import needs_fixtures, synthetic


def _ctx(values: dict[str, str] | None, release: str = "6.12.0", amdgpu: bool = False
         ) -> DoctorContext:
    k = KernelInfo(release, parse_release(release), None, "test")
    return DoctorContext(KConfig(values, "test") if values is not None else None, k,
                         amdgpu=amdgpu)


def _by_id(ctx: DoctorContext) -> dict[str, Finding]:
    return {f.id: f for f in config_findings(ctx, "test")}


def test_parse_release() -> None:
    assert parse_release("6.18.44-fc-v669") == (6, 18, 44)
    assert parse_release("7.1") == (7, 1, 0)
    assert parse_release("7.1.0-rc3+") == (7, 1, 0)
    assert parse_release("garbage") is None
    assert parse_release(None) is None


def test_parse_config() -> None:
    text = ("#\n# comment\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n"
            'CONFIG_D="str"\nCONFIG_E=0x10\n  CONFIG_F=y  \n')
    assert parse_config(text) == {"A": "y", "B": "m", "C": "n", "D": '"str"', "E": "0x10",
                                  "F": "y"}
    c = KConfig(parse_config(text), "t")
    assert c.get("Z") == "absent" and c.enabled("B") and not c.enabled("C")


def test_move_notify_depends_on_version_and_amdgpu() -> None:
    f = _by_id(_ctx({"DMABUF_MOVE_NOTIFY": "n"}))["config.DMABUF_MOVE_NOTIFY"]
    assert f.severity == Severity.INFO and "GTT" in f.reason
    f = _by_id(_ctx({"DMABUF_MOVE_NOTIFY": "n"}, amdgpu=True))["config.DMABUF_MOVE_NOTIFY"]
    assert f.severity == Severity.WARN
    assert "amdgpu device is present" in f.reason
    assert "CONFIG_DMABUF_MOVE_NOTIFY=y" in f.remedy
    f = _by_id(_ctx({}, release="7.1.0"))["config.DMABUF_MOVE_NOTIFY"]
    assert f.severity == Severity.OK and "removed in Linux 7.1" in f.reason
    assert f.remedy is None
    f = _by_id(_ctx({"DMABUF_MOVE_NOTIFY": "y"}, release="7.2.0"))["config.DMABUF_MOVE_NOTIFY"]
    assert f.severity == Severity.INFO and "vendor kernel" in f.reason


def test_dependent_options_are_not_double_warnings() -> None:
    d = _by_id(_ctx({"DMABUF_HEAPS": "n", "INFINIBAND": "n"}))
    assert d["config.DMABUF_HEAPS"].severity == Severity.WARN
    assert d["config.DMABUF_HEAPS_SYSTEM"].severity == Severity.INFO
    assert d["config.INFINIBAND_USER_MEM"].severity == Severity.INFO
    d = _by_id(_ctx({"DMABUF_HEAPS": "y", "DMABUF_HEAPS_SYSTEM": "n", "INFINIBAND": "m",
                     "INFINIBAND_USER_MEM": "n"}))
    assert d["config.DMABUF_HEAPS_SYSTEM"].severity == Severity.WARN
    assert d["config.INFINIBAND_USER_MEM"].severity == Severity.WARN
    assert d["config.INFINIBAND"].severity == Severity.OK


def test_module_option_without_module_support_is_an_error() -> None:
    d = _by_id(_ctx({"UDMABUF": "m", "MODULES": "n"}))
    f = d["config.UDMABUF"]
    assert f.severity == Severity.ERROR
    assert f.remedy == "CONFIG_UDMABUF=y"


def test_core_missing_is_an_error_and_unknown_is_info() -> None:
    d = _by_id(_ctx({"DMA_SHARED_BUFFER": "n"}))
    assert d["config.DMA_SHARED_BUFFER"].severity == Severity.ERROR
    d = _by_id(_ctx(None))
    assert d["config.source"].severity == Severity.WARN
    f = d["config.PCI_P2PDMA"]
    assert f.severity == Severity.INFO and f.evidence["value"] == "unknown"
    assert f.remedy is None


def test_kernel_features_by_version() -> None:
    fs = {f.id: f for f in kernel_findings(KernelInfo("5.10.0", (5, 10, 0), None, "t"))}
    f = fs["kernel.features"]
    assert f.severity == Severity.WARN      # no RDMA dma-buf MRs, no sync_file ioctls
    assert f.evidence["missing"][:2] == ["rdma_dmabuf_mr", "sync_file_ioctls"]
    assert f.evidence["available"] == ["udmabuf", "dma_heap"]
    fs = {f.id: f for f in kernel_findings(KernelInfo("7.1.3", (7, 1, 3), None, "t"))}
    assert fs["kernel.features"].severity == Severity.OK
    fs = {f.id: f for f in kernel_findings(KernelInfo(None, None, None, "nothing"))}
    assert fs["kernel.version"].severity == Severity.WARN and "kernel.features" not in fs


@needs_fixtures
def test_boot_config_fallback_and_bad_gzip(tmp_path: Path) -> None:
    root = synthetic(tmp_path)
    (root / "proc" / "config.gz").unlink()
    (root / "boot").mkdir()
    (root / "boot" / "config-6.12.107").write_text("CONFIG_PCI_P2PDMA=y\n# CONFIG_UDMABUF is "
                                                    "not set\n")
    r = diagnose(root)
    assert r.finding("config.source").title == "kernel config read from boot/config-6.12.107"
    assert r.finding("config.UDMABUF").evidence["value"] == "n"
    assert r.finding("config.UDMABUF").severity == Severity.WARN
    assert r.finding("config.DRM").evidence["value"] == "absent"
    (root / "proc" / "config.gz").write_bytes(b"not gzip")
    r = diagnose(root)
    assert r.finding("config.source").severity == Severity.WARN
    assert "not a gzip file" in r.finding("config.source").reason


@pytest.mark.parametrize("text,rel", [("Linux host 6.1.0-18-amd64 #1 SMP x86_64 GNU/Linux",
                                        "6.1.0-18-amd64"), ("6.9.3\n", "6.9.3")])
def test_release_from_uname_file(tmp_path: Path, text: str, rel: str) -> None:
    (tmp_path / "sys").mkdir()
    (tmp_path / "uname").write_text(text)
    r = diagnose(tmp_path)
    assert r.sections["kernel"]["release"] == rel


def test_release_from_osrelease_and_proc_version(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    (tmp_path / "proc" / "sys" / "kernel").mkdir(parents=True)
    (tmp_path / "proc" / "version").write_text("Linux version 5.15.0-91-generic (b@x) #101\n")
    assert diagnose(tmp_path).sections["kernel"]["release"] == "5.15.0-91-generic"
    (tmp_path / "proc" / "sys" / "kernel" / "osrelease").write_text("6.6.6\n")
    r = diagnose(tmp_path)
    assert r.sections["kernel"]["release"] == "6.6.6"
    assert r.sections["kernel"]["source"].endswith("proc/sys/kernel/osrelease")


def test_remedies_respect_module_support() -> None:
    d = _by_id(_ctx({"UDMABUF": "n", "MODULES": "y"}))
    assert d["config.UDMABUF"].remedy == "CONFIG_UDMABUF=y, or =m and 'modprobe udmabuf'"
    d = _by_id(_ctx({"UDMABUF": "n", "MODULES": "n"}))
    assert d["config.UDMABUF"].remedy == ("rebuild with CONFIG_UDMABUF=y (this kernel cannot "
                                          "load modules, so =m is no option)")
    assert d["config.PCI_P2PDMA"].remedy == ("rebuild with CONFIG_PCI_P2PDMA=y (needs "
                                             "ZONE_DEVICE and 64BIT)")
