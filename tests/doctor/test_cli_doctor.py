"""``dmabuf doctor`` through click's CliRunner: JSON schema stability, human output, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dmabuf.doctor import SCHEMA, SECTIONS

from .helpers import ROOTS, needs_fixtures, root_of, run

TOP_KEYS = {"schema", "tool", "root", "live", "summary", "verdict", "capabilities", "findings",
            "sections"}
FINDING_KEYS = {"id", "severity", "section", "title", "reason", "remedy", "evidence"}
SECTION_KEYS = {
    "kernel": {"release", "version", "uname", "source", "root", "root_kind"},
    "config": {"source", "note", "options"},
    "devices": {"source", "user", "nodes"},
    "modules": {"available", "source", "loaded", "relevant_loaded", "builtin_relevant",
                "memory_peers", "nvidia_version", "pci_drivers"},
    "cmdline": {"raw", "params", "pci", "relevant", "init_args", "source"},
    "iommu": {"mode", "basis", "groups", "group_of", "group_types", "units", "cmdline",
              "why_off"},
    "pci": {"source", "cpu", "host_bridges", "functions", "bridges", "endpoints", "acs_ports",
            "acs_redirect_ports", "devices", "notes", "error"},
    "p2p": {"p2pdma_config", "enabled", "selection", "devices", "matrix", "pairs",
            "pairs_truncated", "providers", "counts", "allowed_pairs"},
}
CAPABILITIES = {"dma_buf", "sync_file", "dma_heap", "udmabuf", "drm_prime", "rdma_verbs",
                "pci_p2pdma", "vfio", "iommufd", "rdma_dmabuf_mr", "p2p_pairs"}
PAIR_KEYS = {"provider", "client", "map_type", "distance", "p2pdma_distance", "cause",
             "common_upstream", "acs_redirect_devices", "path"}

#: The finding ids for a_switch_intel, in order: a change here is a schema change.
A_SWITCH_IDS = [
    "kernel.version", "kernel.features", "config.source", "config.DMA_SHARED_BUFFER",
    "config.SYNC_FILE", "config.SW_SYNC", "config.UDMABUF", "config.DMABUF_HEAPS",
    "config.DMABUF_HEAPS_SYSTEM", "config.DMABUF_HEAPS_CMA", "config.DMABUF_MOVE_NOTIFY",
    "config.PCI_P2PDMA", "config.ZONE_DEVICE", "config.HMM_MIRROR", "config.DEVICE_PRIVATE",
    "config.INFINIBAND", "config.INFINIBAND_USER_ACCESS", "config.INFINIBAND_USER_MEM",
    "config.INFINIBAND_ON_DEMAND_PAGING", "config.VFIO", "config.VFIO_PCI", "config.IOMMUFD",
    "config.IOMMU_SUPPORT", "config.DRM", "config.DRM_VGEM", "config.DEBUG_FS",
    "config.MODULES", "devnode.source", "modules.list", "cmdline.line", "iommu.state",
    "pci.topology", "pci.acs", "p2p.enabled", "p2p.devices", "p2p.p2pmem", "p2p.bus_addr",
    "p2p.not_supported"]


def _json(*args: str) -> dict:  # type: ignore[type-arg]
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output
    d: dict = json.loads(r.output)  # type: ignore[type-arg]
    return d


def _check_schema(d: dict) -> None:  # type: ignore[type-arg]
    assert set(d) == TOP_KEYS
    assert d["schema"] == SCHEMA == "pydmabuf.doctor/1"
    assert d["tool"]["name"] == "pydmabuf"
    assert set(d["sections"]) == set(SECTIONS)
    for sec, keys in SECTION_KEYS.items():
        assert set(d["sections"][sec]) == keys, sec
    assert set(d["capabilities"]) == CAPABILITIES
    for c in d["capabilities"].values():
        assert set(c) == {"available", "basis"} and c["available"] in (True, False, None)
    counts = {"ok": 0, "info": 0, "warn": 0, "error": 0}
    for f in d["findings"]:
        assert set(f) == FINDING_KEYS
        assert f["severity"] in counts and f["section"] in SECTIONS
        assert isinstance(f["evidence"], dict) and f["title"] and f["reason"]
        counts[f["severity"]] += 1
    worst = max((s for s in counts if counts[s]), key=list(counts).index)
    assert d["summary"] == {**counts, "worst": worst}
    for p in d["sections"]["p2p"]["pairs"]:
        assert set(p) == PAIR_KEYS
    assert isinstance(d["verdict"], list) and all(isinstance(v, str) for v in d["verdict"])


@needs_fixtures
@pytest.mark.parametrize("case", ROOTS)
def test_json_schema_on_every_root(case: str) -> None:
    d = _json("--sysfs-root", str(root_of(case)))
    _check_schema(d)
    assert d["live"] is False and d["root"] == str(root_of(case))


def test_json_schema_on_this_machine() -> None:
    _check_schema(_json())


@needs_fixtures
def test_finding_ids_are_stable() -> None:
    d = _json("--sysfs-root", str(root_of("a_switch_intel")))
    assert [f["id"] for f in d["findings"]] == A_SWITCH_IDS
    m = d["sections"]["p2p"]["matrix"]
    assert [x["bdf"] for x in m["devices"]] == ["0000:03:00.0", "0000:04:00.0", "0000:05:00.0"]
    assert m["map_type"][0][1] == "BUS_ADDR" and m["distance"][0][1] == 4
    assert m["map_type"][0][2] == "NOT_SUPPORTED" and m["distance"][0][2] == 6


@needs_fixtures
def test_human_report_f3b() -> None:
    r = run("--sysfs-root", str(root_of("f3b_fakedsp_acs_intel")))
    assert r.exit_code == 0, r.output
    out = r.output
    for s in ("Verdict", "Kernel configuration", "PCI topology", "Peer-to-peer DMA",
              "What to fix", "pci=disable_acs_redir=0000:02:01.0", "ACS[RR CR]", "P2P matrix",
              "Summary:", "device nodes not captured", "pci=config_acs=xx11xx@0000:00:02.0"):
        assert s in out, s
    assert "N4" in out      # the refused same-switch pair, distance 4


@needs_fixtures
def test_verbose_shows_every_reason() -> None:
    quiet = run("--sysfs-root", str(root_of("b_switch_epyc"))).output
    loud = run("--sysfs-root", str(root_of("b_switch_epyc")), "-v").output
    assert "the dma-buf core: drivers and processes" in loud
    assert "the dma-buf core: drivers and processes" not in quiet
    assert "What to fix" not in quiet      # nothing to fix on the EPYC capture


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    r = run("--sysfs-root", str(tmp_path / "nope"))
    assert r.exit_code == 1
    assert "no such directory" in r.output and str(tmp_path / "nope") in r.output


def test_root_without_sys_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    r = run("--sysfs-root", str(tmp_path))
    assert r.exit_code == 1
    assert "/sys: missing" in r.output and "not a root laid out like /" in r.output


def test_root_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    r = run("--sysfs-root", str(f))
    assert r.exit_code == 1 and "not a directory" in r.output


def test_bad_manifest_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    (tmp_path / "pydmabuf-capture.json").write_text("{not json")
    r = run("--sysfs-root", str(tmp_path))
    assert r.exit_code == 1 and "not a valid capture manifest" in r.output


def test_minimal_root_reports_without_failing(tmp_path: Path) -> None:
    """A root with an empty sys/ only: everything unknown, no PCI, exit 0."""
    (tmp_path / "sys").mkdir()
    d = _json("--sysfs-root", str(tmp_path))
    _check_schema(d)
    ids = {f["id"]: f for f in d["findings"]}
    assert ids["kernel.version"]["severity"] == "warn"
    assert ids["config.source"]["severity"] == "warn"
    assert ids["config.PCI_P2PDMA"]["evidence"]["value"] == "unknown"
    assert ids["pci.topology"]["title"] == "no PCI bus"
    assert ids["cmdline.line"]["title"] == "kernel command line unknown"
    assert d["capabilities"]["pci_p2pdma"]["available"] is None


@needs_fixtures
def test_damaged_pci_tree_is_a_finding(tmp_path: Path) -> None:
    from dmabuf.doctor import capture_root

    cap = tmp_path / "cap"
    capture_root(cap, root_of("a_switch_intel"))
    vendor = next(cap.joinpath("sys/devices").rglob("vendor"))
    vendor.write_text("not-hex\n")
    d = _json("--sysfs-root", str(cap))
    f = next(x for x in d["findings"] if x["id"] == "pci.topology")
    assert f["severity"] == "error" and "expected a hex number" in f["reason"]
    assert d["sections"]["pci"]["error"] is not None
    assert d["summary"]["worst"] == "error"


def test_usage_error_exit_2() -> None:
    r = run("--no-such-option")
    assert r.exit_code == 2
