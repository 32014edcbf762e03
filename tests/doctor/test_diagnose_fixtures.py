"""The doctor on every captured root of shared/fixtures/sysfs-roots (real 6.12 kernel).

Ground truth: each root's ``expected.json`` (the real kernel's P2P outcome per provider/client
pair and its log lines) and its ``proc/config.gz`` (read independently here).
"""

from __future__ import annotations

import re

import pytest

from dmabuf.doctor import DoctorReport, Severity, diagnose
from dmabuf.doctor.kconfig import OPTIONS

from .helpers import ROOTS, config_values, expected, needs_fixtures, root_of

pytestmark = needs_fixtures

_CACHE: dict[str, DoctorReport] = {}


def report(case: str) -> DoctorReport:
    if case not in _CACHE:
        _CACHE[case] = diagnose(root_of(case))
    return _CACHE[case]


def pair_map(r: DoctorReport) -> dict[frozenset[str], dict[str, object]]:
    return {frozenset((p["provider"], p["client"])): p for p in r.sections["p2p"]["pairs"]}


@pytest.mark.parametrize("case", ROOTS)
def test_kernel_and_config_from_the_capture(case: str) -> None:
    r = report(case)
    assert r.live is False
    assert r.finding("kernel.version").title == "Linux 6.12.107"
    assert r.sections["kernel"]["version"] == [6, 12, 107]
    # 6.12 lacks the 6.19 and 7.1 interfaces, has everything older
    feats = r.finding("kernel.features").evidence
    assert feats["missing"] == ["vfio_dmabuf", "iommufd_dmabuf", "invalidate_mappings"]
    assert r.finding("kernel.features").severity == Severity.INFO
    vals = config_values(root_of(case) / "proc" / "config.gz")
    for spec in OPTIONS:
        f = r.finding(f"config.{spec.name}")
        assert f.evidence["value"] == vals.get(spec.name, "absent"), spec.name
        assert f.section == "config"
    assert r.finding("config.source").severity == Severity.OK
    # this kernel was built for P2P tests: the key options are on
    for name in ("DMA_SHARED_BUFFER", "SYNC_FILE", "SW_SYNC", "UDMABUF", "DMABUF_HEAPS",
                 "DMABUF_HEAPS_SYSTEM", "DMABUF_MOVE_NOTIFY", "PCI_P2PDMA", "ZONE_DEVICE",
                 "HMM_MIRROR", "INFINIBAND", "INFINIBAND_USER_MEM", "DRM_VGEM"):
        assert r.finding(f"config.{name}").severity == Severity.OK, name
    assert r.finding("config.MODULES").severity == Severity.INFO
    assert r.finding("config.MODULES").evidence["value"] == "n"
    assert r.finding("config.VFIO").evidence["value"] == "n"
    assert r.finding("config.DEVICE_PRIVATE").severity == Severity.INFO
    assert r.sections["config"]["options"]["CONFIG_PCI_P2PDMA"] == "y"


@pytest.mark.parametrize("case", ROOTS)
def test_not_captured_items_are_unknown_not_absent(case: str) -> None:
    r = report(case)
    assert r.finding("devnode.source").severity == Severity.INFO
    assert not r.has("devnode.udmabuf")
    assert r.finding("modules.list").title == "loaded modules unknown"
    assert r.capabilities["udmabuf"]["available"] is None
    assert r.capabilities["dma_heap"]["available"] is None
    assert r.capabilities["dma_buf"]["available"] is True
    assert r.capabilities["pci_p2pdma"]["available"] is True
    assert any("Not determinable" in v for v in r.verdict)
    assert r.sections["modules"]["pci_drivers"]["nvme"]


@pytest.mark.parametrize("case", ROOTS)
def test_cmdline_read_from_the_capture(case: str) -> None:
    r = report(case)
    exp = expected(case)
    assert r.sections["cmdline"]["raw"] == exp["cmdline"].strip()
    assert r.finding("cmdline.line").severity == Severity.OK


@pytest.mark.parametrize("case", ROOTS)
def test_p2p_pairs_match_the_real_kernel(case: str) -> None:
    """Every provider/client pair the real kernel decided, among the doctor's candidates, has
    the kernel's map type and distance."""
    r = report(case)
    pairs = pair_map(r)
    cands = {d["bdf"] for d in r.sections["p2p"]["devices"]}
    checked = 0
    for p in expected(case)["pairs"]:
        if p["provider"] == p["client"]:
            continue
        key = frozenset((p["provider"], p["client"]))
        if not key <= cands:
            assert not p["client_p2pdma_queue"], f"{key} is an NVMe pair but not a candidate"
            continue
        got = pairs[key]
        assert got["map_type"] == p["expected_map_type"], key
        assert got["distance"] == p["expected_distance"], key
        assert got["p2pdma_distance"] == p["expected_p2pdma_distance"], key
        checked += 1
    assert checked >= 1
    # every NVMe (class 0x0108) is a candidate; virtio devices are not
    assert all(d["role"].startswith("nvme") for d in r.sections["p2p"]["devices"])
    assert r.sections["p2p"]["selection"] == "classes"
    assert r.finding("p2p.enabled").severity == Severity.OK
    provs = {x.split()[1] for x in expected(case)["providers"]}
    assert {p["bdf"] for p in r.sections["p2p"]["providers"]} == provs
    assert r.finding("p2p.p2pmem").evidence["providers"][0]["size"] == 16777216


def test_a_switch_intel() -> None:
    r = report("a_switch_intel")
    ba = r.finding("p2p.bus_addr")
    assert ba.severity == Severity.OK
    assert [(p["provider"], p["client"], p["distance"]) for p in ba.evidence["pairs"]] == [
        ("0000:04:00.0", "0000:03:00.0", 4)]
    assert ba.evidence["pairs"][0]["common_upstream"] == "0000:01:00.0"
    ns = r.finding("p2p.not_supported")
    assert ns.severity == Severity.WARN
    assert sorted((p["provider"], p["client"], p["distance"]) for p in ns.evidence["pairs"]) == [
        ("0000:04:00.0", "0000:05:00.0", 6), ("0000:05:00.0", "0000:03:00.0", 6)]
    assert ns.title.endswith("(within one host bridge)")
    assert "[8086:29c0] is not in pci_p2pdma_whitelist" in ns.reason
    assert "not AMD Zen" in ns.reason
    assert ns.remedy is not None and "under one PCIe switch" in ns.remedy
    assert "pci_p2pdma_whitelist[]" in ns.remedy
    # the kernel's own log line for the first refused pair, word for word
    first = ns.evidence["pairs"][0]
    exp = next(p for p in expected("a_switch_intel")["pairs"]
           if (p["provider"], p["client"]) == (first["provider"], first["client"]))
    assert ns.evidence["kernel_log"] == exp["dmesg"] == [
        "nvme 0000:03:00.0: cannot be used for peer-to-peer DMA as the client and provider "
        "(0000:05:00.0) do not share an upstream bridge or whitelisted host bridge"]
    assert not r.has("p2p.acs_redirect") and not r.has("p2p.thru_host_bridge")
    assert r.sections["p2p"]["counts"] == {"bus_addr": 1, "thru_host_bridge": 0,
                                           "acs_redirect": 0, "not_supported": 2}
    io = r.finding("iommu.state")
    assert io.severity == Severity.INFO and io.evidence["mode"] == "off"
    assert "INTEL_IOMMU_DEFAULT_ON is not set" in io.evidence["why_off"]
    acs = r.finding("pci.acs")
    assert acs.title == "2 function(s) with ACS, 0 redirecting P2P"
    assert r.sections["pci"]["functions"] == 14
    assert r.capabilities["p2p_pairs"]["available"] is True


def test_b_switch_epyc_allows_the_host_bridge() -> None:
    r = report("b_switch_epyc")
    th = r.finding("p2p.thru_host_bridge")
    assert th.severity == Severity.OK
    assert {frozenset((p["provider"], p["client"])) for p in th.evidence["pairs"]} == {
        frozenset(("0000:04:00.0", "0000:05:00.0")), frozenset(("0000:05:00.0", "0000:03:00.0"))}
    assert len(th.evidence["pairs"]) == 2
    assert "AMD Zen" in th.reason and th.evidence["basis"].startswith("the CPU is AMD Zen")
    assert not r.has("p2p.not_supported")
    assert r.finding("p2p.bus_addr").evidence["pairs"][0]["distance"] == 4
    assert r.sections["pci"]["cpu"]["cpu_supports_p2pdma"] is True
    assert "found no hardware" in r.finding("iommu.state").evidence["why_off"]
    assert all(f.severity.rank < 2 for f in r.findings)


def test_d_pxb_intel_across_host_bridges() -> None:
    r = report("d_pxb_intel")
    ns = r.finding("p2p.not_supported")
    assert "1 across host bridges" in ns.title
    assert [p["distance"] for p in ns.evidence["pairs"]] == [4]
    assert {h["name"] for h in ns.evidence["host_bridges"]} == {"pci0000:00", "pci0000:40"}
    assert all(not h["whitelisted"] for h in ns.evidence["host_bridges"])
    assert len(r.sections["pci"]["host_bridges"]) == 2


def test_e_multifunction_bus_addr_distance_2() -> None:
    r = report("e_multifunction_intel")
    ba = r.finding("p2p.bus_addr")
    assert [(p["distance"], p["common_upstream"]) for p in ba.evidence["pairs"]] == [
        (2, "0000:00:02.0")]
    assert [f.id for f in r.by_section("p2p") if f.severity.rank >= 2] == []


def test_f3b_acs_redirect_names_the_port_and_the_parameter() -> None:
    r = report("f3b_fakedsp_acs_intel")
    f = r.finding("p2p.acs_redirect")
    assert f.severity == Severity.WARN
    assert f.evidence["ports"] == ["0000:02:01.0"]
    assert f.evidence["kernel_parameter"] == "pci=disable_acs_redir=0000:02:01.0"
    assert f.remedy is not None and "pci=disable_acs_redir=0000:02:01.0" in f.remedy
    assert "ACS ctrl RR CR" in f.reason
    assert "1 refused" in f.title
    exp = next(p for p in expected("f3b_fakedsp_acs_intel")["pairs"]
           if p["client"] == "0000:03:00.0")
    assert f.evidence["kernel_log"] == exp["dmesg"]
    assert [(p["provider"], p["client"], p["map_type"]) for p in f.evidence["pairs"]] == [
        ("0000:04:00.0", "0000:03:00.0", "NOT_SUPPORTED")]
    c = r.finding("cmdline.config_acs")
    assert c.evidence["value"] == "xx11xx@0000:00:02.0/00.0/01.0"
    assert r.finding("pci.acs").title == "3 function(s) with ACS, 1 redirecting P2P"
    assert r.sections["pci"]["acs_redirect_ports"] == ["0000:02:01.0"]


def test_g_iommu_intel_groups_and_acs_on_root_ports() -> None:
    r = report("g_iommu_intel")
    st = r.finding("iommu.state")
    assert st.severity == Severity.OK and st.evidence["mode"] == "translated"
    assert st.title == "IOMMU active (translated)"
    assert "12 IOMMU groups" in st.reason and "pci_request_acs" not in st.reason
    assert "0000:00:04.0" in st.reason
    assert r.sections["iommu"]["groups"] == 12
    assert r.sections["iommu"]["cmdline"] == {"intel_iommu": "on"}
    assert r.sections["iommu"]["group_of"]["0000:06:00.1"] == 11
    g = r.finding("iommu.groups")
    assert g.evidence["shared_by_relevant"]["11"] == ["0000:06:00.0", "0000:06:00.1"]
    assert g.evidence["shared_by_relevant"]["8"] == ["0000:02:00.0", "0000:03:00.0"]
    f = r.finding("p2p.acs_redirect")
    assert f.evidence["kernel_parameter"] == "pci=disable_acs_redir=0000:00:04.0"
    assert "pci_request_acs" in f.reason
    exp = next(p for p in expected("g_iommu_intel")["pairs"]
           if (p["provider"], p["client"]) == ("0000:06:00.0", "0000:06:00.1"))
    assert f.evidence["kernel_log"] == exp["dmesg"]
    assert f.evidence["pairs"][0]["distance"] == 2
    assert f.evidence["iommu_mode"] == "translated"
    ns = r.finding("p2p.not_supported")
    assert len(ns.evidence["pairs"]) == 8
    assert r.finding("pci.acs").title == "3 function(s) with ACS, 3 redirecting P2P"


@pytest.mark.parametrize("case", ROOTS)
def test_severities_ids_and_sections_are_well_formed(case: str) -> None:
    r = report(case)
    ids = [f.id for f in r.findings]
    assert len(ids) == len(set(ids))
    order = [f.section for f in r.findings]
    from dmabuf.doctor import SECTIONS
    assert order == sorted(order, key=SECTIONS.index)
    for f in r.findings:
        assert re.fullmatch(r"[a-z0-9_]+\.[A-Za-z0-9_.]+", f.id), f.id
        if f.severity.rank >= 2:
            assert f.remedy, f"{f.id} is a {f.severity.value} without a remedy"
    assert r.counts()["error"] == 0
